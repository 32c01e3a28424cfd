//! `struct inode` and `struct inode_operations`.
//!
//! Every guest_memfd file has its own anonymous inode (`anon_inode_create_getfile` with a
//! "secure" inode), which owns the page cache. The inode's lifetime is its `i_count`: the file
//! holds one reference (through its dentry) and drops it in `__fput` after `->release`. When it
//! reaches zero the inode is evicted *at that moment*, which empties the page cache and runs the
//! `free_folio` hooks, exactly where the kernel would run them. The Rust `Arc` around an inode
//! only owns the memory.

use crate::errno::{Errno, KResult};
use crate::filemap::{AddressSpace, AddressSpaceOperations};
use crate::machine::Machine;
use gmem_sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use gmem_sync::Arc;
use std::any::Any;
use std::fmt;

/// `S_IFMT`.
pub const S_IFMT: u32 = 0o170000;
/// `S_IFREG`: a regular file.
pub const S_IFREG: u32 = 0o100000;
/// `S_IFCHR`: a character device.
pub const S_IFCHR: u32 = 0o020000;
/// `S_IFIFO`.
pub const S_IFIFO: u32 = 0o010000;
/// `S_IFDIR`.
pub const S_IFDIR: u32 = 0o040000;
/// `S_IFBLK`.
pub const S_IFBLK: u32 = 0o060000;

/// `MAX_LFS_FILESIZE` on 64-bit: the superblock's `s_maxbytes` for the anonymous-inode fs.
pub const MAX_LFS_FILESIZE: i64 = i64::MAX;

/// The attributes `fstat` reports (`struct kstat`, the part scripts see).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Kstat {
    /// `st_ino`.
    pub ino: u64,
    /// `st_mode`.
    pub mode: u32,
    /// `st_nlink`.
    pub nlink: u32,
    /// `st_size`.
    pub size: i64,
    /// `st_blksize`.
    pub blksize: i64,
    /// `st_blocks`.
    pub blocks: i64,
    /// `st_mtime`, as the machine's logical clock.
    pub mtime: u64,
    /// `st_ctime`.
    pub ctime: u64,
    /// `st_atime`.
    pub atime: u64,
}

/// `struct iattr`: what a setattr call asks to change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Iattr {
    /// `ATTR_SIZE` with the new size.
    pub size: Option<i64>,
    /// `ATTR_MODE`.
    pub mode: Option<u32>,
    /// `ATTR_MTIME | ATTR_CTIME` (truncate sets them).
    pub times: bool,
}

/// `struct inode_operations`: a `None` hook behaves as the kernel's NULL does at its call site.
#[derive(Debug)]
pub struct InodeOperations {
    /// For diagnostics.
    pub name: &'static str,
    /// `getattr`; `None` means `generic_fillattr`.
    pub getattr: Option<fn(&Inode) -> Kstat>,
    /// `setattr`; `None` means `simple_setattr`-like acceptance (the model only needs the hook).
    pub setattr: Option<fn(&Inode, &Iattr) -> KResult<()>>,
}

/// Inodes with no operations of their own.
pub static EMPTY_IOPS: InodeOperations = InodeOperations { name: "empty_iops", getattr: None, setattr: None };

/// What a new inode starts with (the kernel fills these in just after allocating the inode,
/// before anyone else can see it; the model sets them at construction).
#[derive(Debug)]
pub struct InodeInit {
    /// `i_mode`.
    pub mode: u32,
    /// `i_size`.
    pub size: i64,
    /// `i_private` (guest_memfd: its creation flags).
    pub i_private: u64,
    /// `i_op`.
    pub i_op: &'static InodeOperations,
    /// `i_mapping->a_ops`.
    pub a_ops: &'static AddressSpaceOperations,
    /// Context for the a_ops hooks.
    pub a_private: Option<Arc<dyn Any + Send + Sync>>,
    /// Whether the filesystem is mounted noexec (`path_noexec`): true for the anonymous-inode
    /// filesystem from the 2025 "anon_inode: raise SB_I_NODEV and SB_I_NOEXEC" fix on.
    pub noexec: bool,
}

/// `struct inode`.
pub struct Inode {
    ino: u64,
    i_mode: AtomicU32,
    i_size: AtomicI64,
    i_private: AtomicU64,
    i_mtime: AtomicU64,
    i_ctime: AtomicU64,
    i_atime: AtomicU64,
    i_count: AtomicI64,
    i_op: &'static InodeOperations,
    noexec: bool,
    i_mapping: AddressSpace,
}

impl fmt::Debug for Inode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inode")
            .field("ino", &self.ino)
            .field("mode", &format_args!("{:#o}", self.mode()))
            .field("size", &self.size())
            .field("i_count", &self.i_count.load(Ordering::Relaxed))
            .finish()
    }
}

impl Inode {
    /// `new_inode` / `alloc_anon_inode` plus the caller's initialisation. `i_count` starts at 1.
    pub fn new(machine: &Arc<Machine>, init: InodeInit) -> Arc<Inode> {
        let ino = machine.next_ino();
        let now = machine.now();
        Arc::new(Inode {
            ino,
            i_mode: AtomicU32::new(init.mode),
            i_size: AtomicI64::new(init.size),
            i_private: AtomicU64::new(init.i_private),
            i_mtime: AtomicU64::new(now),
            i_ctime: AtomicU64::new(now),
            i_atime: AtomicU64::new(now),
            i_count: AtomicI64::new(1),
            i_op: init.i_op,
            noexec: init.noexec,
            i_mapping: AddressSpace::new(machine.clone(), ino, init.a_ops, init.a_private),
        })
    }

    /// `i_ino`.
    pub fn ino(&self) -> u64 {
        self.ino
    }

    /// `i_mode`.
    pub fn mode(&self) -> u32 {
        self.i_mode.load(Ordering::Relaxed)
    }

    /// `S_ISREG(i_mode)`.
    pub fn is_reg(&self) -> bool {
        self.mode() & S_IFMT == S_IFREG
    }

    /// `i_size_read`.
    pub fn size(&self) -> i64 {
        self.i_size.load(Ordering::Acquire)
    }

    /// `i_private` as the integer guest_memfd stores there.
    pub fn i_private(&self) -> u64 {
        self.i_private.load(Ordering::Relaxed)
    }

    /// `inode->i_mapping`.
    pub fn mapping(&self) -> &AddressSpace {
        &self.i_mapping
    }

    /// `i_op`.
    pub fn i_op(&self) -> &'static InodeOperations {
        self.i_op
    }

    /// `path_noexec(&file->f_path)` for files on this inode's filesystem.
    pub fn noexec(&self) -> bool {
        self.noexec
    }

    /// `generic_fillattr`: what `fstat` reports without a getattr hook.
    pub fn generic_fillattr(&self) -> Kstat {
        Kstat {
            ino: self.ino,
            mode: self.mode(),
            nlink: 1,
            size: self.size(),
            blksize: crate::PAGE_SIZE as i64,
            // i_blocks: the anonymous-inode fs never accounts blocks (measured: always 0).
            blocks: 0,
            mtime: self.i_mtime.load(Ordering::Relaxed),
            ctime: self.i_ctime.load(Ordering::Relaxed),
            atime: self.i_atime.load(Ordering::Relaxed),
        }
    }

    /// `vfs_getattr`: the inode's getattr hook, or `generic_fillattr`.
    pub fn getattr(&self) -> Kstat {
        match self.i_op.getattr {
            Some(getattr) => getattr(self),
            None => self.generic_fillattr(),
        }
    }

    /// `notify_change` → `i_op->setattr`.
    #[doc(alias = "notify_change")]
    pub fn setattr(&self, attr: &Iattr) -> KResult<()> {
        match self.i_op.setattr {
            Some(setattr) => setattr(self, attr),
            None => {
                if let Some(size) = attr.size {
                    if size != self.size() {
                        // simple_setattr would truncate the page cache; no modelled file needs it.
                        return Err(Errno::EOPNOTSUPP);
                    }
                }
                Ok(())
            }
        }
    }

    /// `file_modified` / `inode_update_time`: mtime and ctime move forward.
    pub fn update_time(&self, now: u64) {
        self.i_mtime.store(now, Ordering::Relaxed);
        self.i_ctime.store(now, Ordering::Relaxed);
    }

    /// `ihold`.
    pub fn ihold(&self) {
        let old = self.i_count.fetch_add(1, Ordering::Relaxed);
        assert!(old > 0, "ihold on an evicted inode {}", self.ino);
    }

    /// `iput`: the last reference evicts the inode (`evict` → `truncate_inode_pages_final`),
    /// freeing its page cache now.
    #[doc(alias = "evict")]
    pub fn iput(&self) {
        let old = self.i_count.fetch_sub(1, Ordering::AcqRel);
        assert!(old > 0, "iput underflow on inode {}", self.ino);
        if old == 1 {
            self.i_mapping.truncate_final();
        }
    }

    /// Whether the inode has been evicted.
    pub fn is_evicted(&self) -> bool {
        self.i_count.load(Ordering::Acquire) == 0
    }
}
