//! The system calls scripts issue on descriptors and mappings, with the generic kernel checks in
//! the kernel's order (`fs/open.c`, `fs/read_write.c`, `fs/stat.c`, `mm/mmap.c`,
//! `mm/madvise.c`, `arch/x86/kernel/sys_x86_64.c`). A file's own operation runs only after the
//! generic checks pass, so errno precedence matches the real kernel (for example the VFS
//! EINVAL/EOPNOTSUPP/EFBIG checks of fallocate come before guest_memfd's own).
//!
//! Every system call ends with [`gmem_sync::task::task_work_run`]: the return to user space, where
//! deferred `fput` work (a file's `->release`) runs.

use crate::errno::{Errno, KResult};
use crate::fdtable::FdTable;
use crate::file::{alloc_file_pseudo, FileRef, EMPTY_FOPS, FMODE_CAN_READ, FMODE_CAN_WRITE, FMODE_LSEEK};
use crate::file::{FMODE_PREAD, FMODE_PWRITE, FMODE_READ, FMODE_WRITE, O_RDWR};
use crate::filemap::EMPTY_AOPS;
use crate::huge_memory::HPAGE_PMD_SIZE;
use crate::inode::{
    InodeInit, Kstat, EMPTY_IOPS, MAX_LFS_FILESIZE, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFMT, S_IFREG,
};
use crate::machine::{Machine, VfsVersion};
use crate::shmem::shmem_zero_file;
use crate::types::{PgOff, PAGE_SHIFT, PAGE_SIZE};
use crate::vma::{AccessSignal, Mm, Vma, TASK_SIZE, VM_EXEC, VM_HUGEPAGE, VM_LOCKED, VM_MAYEXEC, VM_MAYREAD};
use crate::vma::{VM_MAYSHARE, VM_MAYWRITE, VM_NOHUGEPAGE, VM_READ, VM_SHARED, VM_WRITE};
use gmem_sync::{task, Arc};

/// `FALLOC_FL_KEEP_SIZE`.
pub const FALLOC_FL_KEEP_SIZE: i32 = 0x01;
/// `FALLOC_FL_PUNCH_HOLE`.
pub const FALLOC_FL_PUNCH_HOLE: i32 = 0x02;
/// `FALLOC_FL_NO_HIDE_STALE` (reserved).
pub const FALLOC_FL_NO_HIDE_STALE: i32 = 0x04;
/// `FALLOC_FL_COLLAPSE_RANGE`.
pub const FALLOC_FL_COLLAPSE_RANGE: i32 = 0x08;
/// `FALLOC_FL_ZERO_RANGE`.
pub const FALLOC_FL_ZERO_RANGE: i32 = 0x10;
/// `FALLOC_FL_INSERT_RANGE`.
pub const FALLOC_FL_INSERT_RANGE: i32 = 0x20;
/// `FALLOC_FL_UNSHARE_RANGE`.
pub const FALLOC_FL_UNSHARE_RANGE: i32 = 0x40;
/// `FALLOC_FL_WRITE_ZEROES` (v6.17+).
pub const FALLOC_FL_WRITE_ZEROES: i32 = 0x80;

/// `PROT_READ`.
pub const PROT_READ: u64 = 0x1;
/// `PROT_WRITE`.
pub const PROT_WRITE: u64 = 0x2;
/// `PROT_EXEC`.
pub const PROT_EXEC: u64 = 0x4;
/// `MAP_SHARED`.
pub const MAP_SHARED: u64 = 0x01;
/// `MAP_PRIVATE`.
pub const MAP_PRIVATE: u64 = 0x02;
/// `MAP_SHARED_VALIDATE`.
pub const MAP_SHARED_VALIDATE: u64 = 0x03;
/// `MAP_TYPE`.
pub const MAP_TYPE: u64 = 0x0f;
/// `MAP_FIXED`.
pub const MAP_FIXED: u64 = 0x10;
/// `MAP_ANONYMOUS`.
pub const MAP_ANONYMOUS: u64 = 0x20;
/// `MAP_GROWSDOWN`.
pub const MAP_GROWSDOWN: u64 = 0x0100;
/// `MAP_32BIT` (x86: place the mapping in the first 2 GiB; the model does not place it there,
/// addresses are not part of any result).
pub const MAP_32BIT: u64 = 0x40;
/// `MAP_LOCKED`.
pub const MAP_LOCKED: u64 = 0x2000;
/// `MAP_NORESERVE`.
pub const MAP_NORESERVE: u64 = 0x4000;
/// `MAP_POPULATE`.
pub const MAP_POPULATE: u64 = 0x8000;
/// `MAP_NONBLOCK`.
pub const MAP_NONBLOCK: u64 = 0x10000;
/// `MAP_STACK`.
pub const MAP_STACK: u64 = 0x20000;
/// `MAP_HUGETLB`.
pub const MAP_HUGETLB: u64 = 0x40000;
/// `MAP_SYNC`.
pub const MAP_SYNC: u64 = 0x80000;
/// `MAP_FIXED_NOREPLACE`.
pub const MAP_FIXED_NOREPLACE: u64 = 0x100000;
/// `MAP_HUGE_2MB` (`21 << MAP_HUGE_SHIFT`).
pub const MAP_HUGE_2MB: u64 = 21 << 26;
/// `MAP_HUGE_1GB` (`30 << MAP_HUGE_SHIFT`).
pub const MAP_HUGE_1GB: u64 = 30 << 26;
/// `LEGACY_MAP_MASK`: the flags plain MAP_SHARED silently accepts (measured: `MAP_32BIT` with
/// `MAP_SHARED_VALIDATE` is accepted, `MAP_SYNC` is EOPNOTSUPP).
pub const LEGACY_MAP_MASK: u64 = MAP_SHARED
    | MAP_PRIVATE
    | MAP_FIXED
    | MAP_ANONYMOUS
    | 0x0800
    | 0x1000
    | 0x4000000
    | MAP_GROWSDOWN
    | 0x2000
    | 0x4000
    | 0x8000
    | 0x10000
    | 0x20000
    | MAP_HUGETLB
    | MAP_32BIT
    | MAP_HUGE_2MB
    | MAP_HUGE_1GB;

/// `MADV_NORMAL`.
pub const MADV_NORMAL: i32 = 0;
/// `MADV_RANDOM`.
pub const MADV_RANDOM: i32 = 1;
/// `MADV_SEQUENTIAL`.
pub const MADV_SEQUENTIAL: i32 = 2;
/// `MADV_WILLNEED`.
pub const MADV_WILLNEED: i32 = 3;
/// `MADV_DONTNEED`.
pub const MADV_DONTNEED: i32 = 4;
/// `MADV_FREE`.
pub const MADV_FREE: i32 = 8;
/// `MADV_REMOVE`.
pub const MADV_REMOVE: i32 = 9;
/// `MADV_DONTFORK`.
pub const MADV_DONTFORK: i32 = 10;
/// `MADV_DOFORK`.
pub const MADV_DOFORK: i32 = 11;
/// `MADV_MERGEABLE`.
pub const MADV_MERGEABLE: i32 = 12;
/// `MADV_UNMERGEABLE`.
pub const MADV_UNMERGEABLE: i32 = 13;
/// `MADV_HUGEPAGE`.
pub const MADV_HUGEPAGE: i32 = 14;
/// `MADV_NOHUGEPAGE`.
pub const MADV_NOHUGEPAGE: i32 = 15;
/// `MADV_DONTDUMP`.
pub const MADV_DONTDUMP: i32 = 16;
/// `MADV_DODUMP`.
pub const MADV_DODUMP: i32 = 17;
/// `MADV_WIPEONFORK`.
pub const MADV_WIPEONFORK: i32 = 18;
/// `MADV_KEEPONFORK`.
pub const MADV_KEEPONFORK: i32 = 19;
/// `MADV_COLD`.
pub const MADV_COLD: i32 = 20;
/// `MADV_PAGEOUT`.
pub const MADV_PAGEOUT: i32 = 21;
/// `MADV_POPULATE_READ`.
pub const MADV_POPULATE_READ: i32 = 22;
/// `MADV_POPULATE_WRITE`.
pub const MADV_POPULATE_WRITE: i32 = 23;
/// `MADV_DONTNEED_LOCKED`.
pub const MADV_DONTNEED_LOCKED: i32 = 24;
/// `MADV_COLLAPSE`.
pub const MADV_COLLAPSE: i32 = 25;
/// `MADV_HWPOISON`.
pub const MADV_HWPOISON: i32 = 100;
/// `MADV_SOFT_OFFLINE`.
pub const MADV_SOFT_OFFLINE: i32 = 101;
/// `MADV_GUARD_INSTALL`.
pub const MADV_GUARD_INSTALL: i32 = 102;
/// `MADV_GUARD_REMOVE`.
pub const MADV_GUARD_REMOVE: i32 = 103;

/// `SEEK_MAX` (SEEK_HOLE).
pub const SEEK_MAX: i32 = 4;

/// A process: a descriptor table and an address space on one machine.
#[derive(Debug)]
pub struct Process {
    machine: Arc<Machine>,
    /// `current->files`.
    pub files: FdTable,
    /// `current->mm`.
    pub mm: Mm,
    /// Whether the process has `CAP_IPC_LOCK` (it then locks memory beyond `RLIMIT_MEMLOCK`).
    cap_ipc_lock: bool,
    /// `RLIMIT_MEMLOCK` in bytes.
    rlimit_memlock: u64,
}

/// The `RLIMIT_MEMLOCK` of a process on the measured machine (`ulimit -l`: 8192 KiB).
pub const RLIMIT_MEMLOCK_DEFAULT: u64 = 8 << 20;

/// The operations of the standard-stream terminal files (descriptors 0, 1 and 2).
static TTY_FOPS: crate::file::FileOperations = crate::file::FileOperations { name: "tty", ..EMPTY_FOPS };

impl Process {
    /// A process with descriptors 0, 1 and 2 open on a terminal (a character device with no
    /// operations the model implements), so the first new descriptor is 3, as in a real process.
    pub fn new(machine: Arc<Machine>) -> Process {
        // The scripts' reference runs as root on the measured machine, so the process has
        // CAP_IPC_LOCK and MAP_LOCKED is not bounded by RLIMIT_MEMLOCK.
        let process = Process {
            files: FdTable::new(),
            mm: Mm::new(machine.clone()),
            machine,
            cap_ipc_lock: true,
            rlimit_memlock: RLIMIT_MEMLOCK_DEFAULT,
        };
        for _ in 0..3 {
            let tty = alloc_file_pseudo(
                &process.machine,
                "/dev/pts/0",
                &TTY_FOPS,
                O_RDWR,
                InodeInit {
                    mode: S_IFCHR | 0o620,
                    size: 0,
                    i_private: 0,
                    i_op: &EMPTY_IOPS,
                    a_ops: &EMPTY_AOPS,
                    a_private: None,
                    noexec: false,
                },
                None,
            );
            process.files.install(tty).expect("a new table has room");
        }
        process
    }

    /// The same process without `CAP_IPC_LOCK` and with `RLIMIT_MEMLOCK` = `limit` bytes (an
    /// unprivileged user's).
    pub fn without_cap_ipc_lock(mut self, limit: u64) -> Process {
        self.cap_ipc_lock = false;
        self.rlimit_memlock = limit;
        self
    }

    /// The machine the process runs on.
    pub fn machine(&self) -> &Arc<Machine> {
        &self.machine
    }

    /// The return to user space: runs pending task work (deferred `fput`).
    pub fn syscall_exit<T>(&self, result: T) -> T {
        task::task_work_run();
        result
    }

    /// `fget(fd)` or EBADF.
    pub fn fget(&self, fd: i32) -> KResult<FileRef> {
        self.files.fget(fd).ok_or(Errno::EBADF)
    }

    /// `close(2)`.
    pub fn close(&self, fd: i32) -> KResult<()> {
        let _span = tracing::trace_span!("close", fd).entered();
        self.syscall_exit(self.files.close(fd))
    }

    /// `fallocate(2)`: `ksys_fallocate` → `vfs_fallocate` → `f_op->fallocate`.
    pub fn fallocate(&self, fd: i32, mode: i32, offset: i64, len: i64) -> KResult<()> {
        let _span = tracing::trace_span!("fallocate", fd, mode, offset, len).entered();
        let result = self.fget(fd).and_then(|file| self.vfs_fallocate(&file, mode, offset, len));
        self.syscall_exit(result)
    }

    /// `vfs_fallocate`: the generic checks, in the order of the modelled kernel version.
    pub fn vfs_fallocate(&self, file: &FileRef, mode: i32, offset: i64, len: i64) -> KResult<()> {
        if offset < 0 || len <= 0 {
            return Err(Errno::EINVAL);
        }
        match self.machine.config.vfs {
            VfsVersion::V6_14 => check_fallocate_mode_v6_14(mode)?,
            VfsVersion::V6_18 => check_fallocate_mode_v6_18(mode)?,
        }
        if file.f_mode() & FMODE_WRITE == 0 {
            return Err(Errno::EBADF);
        }
        let inode = file.inode();
        match inode.mode() & S_IFMT {
            S_IFIFO => return Err(Errno::ESPIPE),
            S_IFDIR => return Err(Errno::from_raw(21)), // EISDIR
            S_IFBLK => {}
            _ if inode.is_reg() => {}
            _ => return Err(Errno::ENODEV),
        }
        // Wraparound, then `sum > s_maxbytes`: s_maxbytes is MAX_LFS_FILESIZE (i64::MAX), so on
        // 64-bit only the wrap can fire.
        offset.checked_add(len).ok_or(Errno::EFBIG)?;
        let fallocate = file.f_op().fallocate.ok_or(Errno::EOPNOTSUPP)?;
        fallocate(file, mode, offset, len)
    }

    /// `read(2)`: `vfs_read` needs FMODE_READ (EBADF) and a read operation (EINVAL).
    #[doc(alias("ksys_read", "vfs_read"))]
    pub fn read(&self, fd: i32, _len: u64) -> KResult<u64> {
        let _span = tracing::trace_span!("read", fd).entered();
        self.plain_io(fd, FMODE_READ, FMODE_CAN_READ)
    }

    /// `write(2)`: `vfs_write` needs FMODE_WRITE (EBADF) and a write operation (EINVAL).
    #[doc(alias = "vfs_write")]
    pub fn write(&self, fd: i32, _len: u64) -> KResult<u64> {
        let _span = tracing::trace_span!("write", fd).entered();
        self.plain_io(fd, FMODE_WRITE, FMODE_CAN_WRITE)
    }

    fn plain_io(&self, fd: i32, opened_for: u32, can: u32) -> KResult<u64> {
        let result = self.fget(fd).and_then(|file| {
            if file.f_mode() & opened_for == 0 {
                return Err(Errno::EBADF);
            }
            if file.f_mode() & can == 0 {
                return Err(Errno::EINVAL);
            }
            unreachable_io(&file)
        });
        self.syscall_exit(result)
    }

    /// `pread64(2)`: a negative position is EINVAL before the descriptor is even looked up; a
    /// file without FMODE_PREAD is ESPIPE.
    #[doc(alias = "ksys_pread64")]
    pub fn pread(&self, fd: i32, len: u64, pos: i64) -> KResult<u64> {
        self.positioned_io(fd, len, pos, FMODE_PREAD)
    }

    /// `pwrite64(2)`.
    #[doc(alias = "ksys_pwrite64")]
    pub fn pwrite(&self, fd: i32, len: u64, pos: i64) -> KResult<u64> {
        self.positioned_io(fd, len, pos, FMODE_PWRITE)
    }

    fn positioned_io(&self, fd: i32, _len: u64, pos: i64, needed: u32) -> KResult<u64> {
        let _span = tracing::trace_span!("positioned_io", fd, pos).entered();
        if pos < 0 {
            return Err(Errno::EINVAL);
        }
        let result = self.fget(fd).and_then(|file| {
            if file.f_mode() & needed == 0 {
                return Err(Errno::ESPIPE);
            }
            unreachable_io(&file)
        });
        self.syscall_exit(result)
    }

    /// `lseek(2)`: EINVAL for an unknown whence, ESPIPE without FMODE_LSEEK, else the file's
    /// `llseek`.
    #[doc(alias = "ksys_lseek")]
    pub fn lseek(&self, fd: i32, offset: i64, whence: i32) -> KResult<u64> {
        let _span = tracing::trace_span!("lseek", fd, whence).entered();
        let result = self.fget(fd).and_then(|file| {
            if !(0..=SEEK_MAX).contains(&whence) {
                return Err(Errno::EINVAL);
            }
            match file.f_op().llseek {
                Some(llseek) if file.f_mode() & FMODE_LSEEK != 0 => llseek(&file, offset, whence),
                _ => Err(Errno::ESPIPE),
            }
        });
        self.syscall_exit(result)
    }

    /// `ftruncate(2)`: `do_sys_ftruncate` → `do_truncate` → `notify_change` → `i_op->setattr`.
    #[doc(alias("do_sys_ftruncate", "do_truncate"))]
    pub fn ftruncate(&self, fd: i32, length: i64) -> KResult<()> {
        let _span = tracing::trace_span!("ftruncate", fd, length).entered();
        if length < 0 {
            return Err(Errno::EINVAL);
        }
        let result = self.fget(fd).and_then(|file| {
            let inode = file.inode();
            if !inode.is_reg() || file.f_mode() & FMODE_WRITE == 0 {
                return Err(Errno::EINVAL);
            }
            inode.setattr(&crate::inode::Iattr { size: Some(length), mode: None, times: true })
        });
        self.syscall_exit(result)
    }

    /// `fstat(2)`.
    #[doc(alias = "vfs_fstat")]
    pub fn fstat(&self, fd: i32) -> KResult<Kstat> {
        let _span = tracing::trace_span!("fstat", fd).entered();
        let result = self.fget(fd).map(|file| file.inode().getattr());
        self.syscall_exit(result)
    }

    /// `mmap(2)` without an address hint (x86 `sys_mmap` → `ksys_mmap_pgoff` → `vm_mmap_pgoff`
    /// → `do_mmap` → `mmap_region` → `f_op->mmap`, then `mm_populate` for `MAP_POPULATE` and
    /// `MAP_LOCKED`), of a descriptor or, with `MAP_ANONYMOUS`, of anonymous memory (the
    /// descriptor is then ignored).
    #[doc(alias("ksys_mmap_pgoff", "sys_mmap", "vm_mmap_pgoff"))]
    pub fn mmap(&self, len: u64, prot: u64, flags: u64, fd: i32, offset: i64) -> KResult<u64> {
        let _span = tracing::trace_span!("mmap", fd, len, prot, flags, offset).entered();
        if offset as u64 & (PAGE_SIZE - 1) != 0 {
            return Err(Errno::EINVAL);
        }
        let pgoff = (offset as u64) >> PAGE_SHIFT;
        let result = if flags & MAP_ANONYMOUS != 0 {
            if flags & MAP_HUGETLB != 0 {
                // ksys_mmap_pgoff sets up a hugetlbfs file: hugetlb pages are not modelled.
                Err(Errno::ENOSYS)
            } else {
                self.do_mmap(None, len, prot, flags, pgoff)
            }
        } else {
            self.fget(fd).and_then(|file| {
                if flags & MAP_HUGETLB != 0 {
                    return Err(Errno::EINVAL);
                }
                self.do_mmap(Some(&file), len, prot, flags, pgoff)
            })
        };
        self.syscall_exit(result)
    }

    /// `do_mmap` in the kernel's order, then `vm_mmap_pgoff`'s `mm_populate`.
    fn do_mmap(&self, file: Option<&FileRef>, len: u64, prot: u64, mut flags: u64, mut pgoff: u64) -> KResult<u64> {
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        let len = len.checked_add(PAGE_SIZE - 1).map(|l| l & !(PAGE_SIZE - 1)).filter(|&l| l != 0);
        let len = len.ok_or(Errno::ENOMEM)?;
        if pgoff.checked_add(len >> PAGE_SHIFT).is_none() {
            return Err(Errno::EOVERFLOW);
        }
        let mut vm_flags = calc_vm_prot_bits(prot) | calc_vm_flag_bits(flags) | VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC;
        if flags & (MAP_FIXED | MAP_FIXED_NOREPLACE) != 0 {
            // Scripts give no address: a fixed mapping at 0 is below mmap_min_addr
            // (security_mmap_addr, for a process without CAP_SYS_RAWIO).
            return Err(Errno::EPERM);
        }
        let addr = match file {
            // Private anonymous memory goes through thp_get_unmapped_area_vmflags; shared
            // anonymous memory through shmem_get_unmapped_area, which with shmem THP off
            // (`shmem_enabled=never`) does not align.
            None if flags & MAP_TYPE == MAP_PRIVATE => self.mm.get_unmapped_area_anon(len)?,
            _ => self.mm.get_unmapped_area(len)?,
        };
        if flags & MAP_LOCKED != 0 && !self.can_do_mlock() {
            return Err(Errno::EPERM);
        }
        if !self.mlock_future_ok(vm_flags, len) {
            return Err(Errno::EAGAIN);
        }
        let file = match file {
            Some(file) => {
                self.check_file_mapping(file, len, prot, &mut flags, pgoff, &mut vm_flags)?;
                file.clone()
            }
            None => {
                match flags & MAP_TYPE {
                    MAP_SHARED => {
                        if vm_flags & VM_GROWSDOWN != 0 {
                            return Err(Errno::EINVAL);
                        }
                        pgoff = 0;
                        vm_flags |= VM_SHARED | VM_MAYSHARE;
                    }
                    // MAP_SHARED_VALIDATE is not a type anonymous memory takes.
                    MAP_PRIVATE => pgoff = addr >> PAGE_SHIFT,
                    _ => return Err(Errno::EINVAL),
                }
                if vm_flags & VM_SHARED == 0 {
                    self.mm.insert(Vma::new(addr, addr + len, pgoff, vm_flags, None));
                    self.populate_after_mmap(addr, len, flags, vm_flags);
                    return Ok(addr);
                }
                // shmem_zero_setup: shared anonymous memory is a shmem object of the mapping's
                // size.
                shmem_zero_file(&self.machine, len)
            }
        };
        let addr = self.mmap_region(&file, addr, len, vm_flags, pgoff)?;
        self.populate_after_mmap(addr, len, flags, vm_flags);
        Ok(addr)
    }

    /// The file half of `do_mmap`'s checks, in order: `file_mmap_ok` (EOVERFLOW), the mapping
    /// type (EOPNOTSUPP for a flag `MAP_SHARED_VALIDATE` does not know, EACCES for a write
    /// mapping of a file not opened for writing), then the `MAP_PRIVATE` arm.
    fn check_file_mapping(
        &self,
        file: &FileRef,
        len: u64,
        prot: u64,
        flags: &mut u64,
        pgoff: u64,
        vm_flags: &mut u64,
    ) -> KResult<()> {
        if !file_mmap_ok(file, pgoff, len) {
            return Err(Errno::EOVERFLOW);
        }
        match *flags & MAP_TYPE {
            MAP_SHARED | MAP_SHARED_VALIDATE => {
                // MAP_SHARED silently drops the flags it does not know; MAP_SHARED_VALIDATE
                // refuses them (no modelled file has FOP_MMAP_SYNC, so MAP_SYNC is one of them).
                if *flags & MAP_TYPE == MAP_SHARED {
                    *flags &= LEGACY_MAP_MASK;
                }
                if *flags & !LEGACY_MAP_MASK != 0 {
                    return Err(Errno::EOPNOTSUPP);
                }
                if prot & PROT_WRITE != 0 && file.f_mode() & FMODE_WRITE == 0 {
                    return Err(Errno::EACCES);
                }
                *vm_flags |= VM_SHARED | VM_MAYSHARE;
                if file.f_mode() & FMODE_WRITE == 0 {
                    *vm_flags &= !(VM_MAYWRITE | VM_SHARED);
                }
                self.check_private_mapping(file, vm_flags)
            }
            MAP_PRIVATE => self.check_private_mapping(file, vm_flags),
            _ => Err(Errno::EINVAL),
        }
    }

    /// `can_do_mlock`: a memlock limit above 0, or `CAP_IPC_LOCK`.
    fn can_do_mlock(&self) -> bool {
        self.rlimit_memlock != 0 || self.cap_ipc_lock
    }

    /// `mlock_future_ok`: a locked mapping of `len` more bytes fits under `RLIMIT_MEMLOCK`, or the
    /// process has `CAP_IPC_LOCK`.
    fn mlock_future_ok(&self, vm_flags: u64, len: u64) -> bool {
        if vm_flags & VM_LOCKED == 0 || self.cap_ipc_lock {
            return true;
        }
        let locked = (len >> PAGE_SHIFT) + self.mm.locked_vm();
        locked <= self.rlimit_memlock >> PAGE_SHIFT
    }

    /// `vm_mmap_pgoff`'s `mm_populate`, for a locked mapping or `MAP_POPULATE` without
    /// `MAP_NONBLOCK`; its failures are ignored.
    fn populate_after_mmap(&self, addr: u64, len: u64, flags: u64, vm_flags: u64) {
        if vm_flags & VM_LOCKED != 0 || flags & (MAP_POPULATE | MAP_NONBLOCK) == MAP_POPULATE {
            // mmap has succeeded: populate's failures are ignored.
            let _ = self.mm.mm_populate(addr, addr + len, true);
        }
    }

    /// The `MAP_PRIVATE` arm of do_mmap's switch (MAP_SHARED falls through into it).
    fn check_private_mapping(&self, file: &FileRef, vm_flags: &mut u64) -> KResult<()> {
        if file.f_mode() & FMODE_READ == 0 {
            return Err(Errno::EACCES);
        }
        if file.inode().noexec() {
            if *vm_flags & VM_EXEC != 0 {
                return Err(Errno::EPERM);
            }
            *vm_flags &= !VM_MAYEXEC;
        }
        if file.f_op().mmap.is_none() {
            return Err(Errno::ENODEV);
        }
        if *vm_flags & VM_GROWSDOWN != 0 {
            return Err(Errno::EINVAL);
        }
        Ok(())
    }

    /// `mmap_region`: builds the VMA, lets the file's mmap hook adjust it, links it. A locked
    /// VMA stays locked (`__mmap_complete` clears `VM_LOCKED` only for `VM_SPECIAL`, DAX and
    /// hugetlb VMAs, none of which is modelled).
    fn mmap_region(&self, file: &FileRef, addr: u64, len: u64, vm_flags: u64, pgoff: u64) -> KResult<u64> {
        let mut vma = Vma::new(addr, addr + len, pgoff, vm_flags, Some(file.clone()));
        let mmap = file.f_op().mmap.expect("checked by do_mmap");
        mmap(file, &mut vma)?;
        self.mm.insert(vma);
        Ok(addr)
    }

    /// An anonymous, private, read-write mapping (`mmap(NULL, len, PROT_READ|PROT_WRITE,
    /// MAP_PRIVATE|MAP_ANONYMOUS, -1, 0)`), for memslot backing.
    pub fn mmap_anonymous(&self, len: u64) -> KResult<u64> {
        let _span = tracing::trace_span!("mmap_anonymous", len).entered();
        self.do_mmap(None, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, 0)
    }

    /// `mlock(2)` (`do_mlock` without flags): EPERM without a memlock limit or `CAP_IPC_LOCK`;
    /// the range widened to whole pages (a length that wraps when rounded locks nothing); ENOMEM
    /// beyond `RLIMIT_MEMLOCK` without `CAP_IPC_LOCK`; `VM_LOCKED` on every VMA of the range
    /// (ENOMEM at a hole, the VMAs before it stay locked); then the range is populated, its
    /// failures mapped as `__mlock_posix_error_return` does (EFAULT, a page that cannot be faulted
    /// in or a `PROT_NONE` VMA, is ENOMEM; ENOMEM is EAGAIN), the VMAs staying locked.
    pub fn mlock(&self, start: u64, len: u64) -> KResult<()> {
        let _span = tracing::trace_span!("mlock", start, len).entered();
        let result = self.do_mlock(start, len);
        self.syscall_exit(result)
    }

    fn do_mlock(&self, start: u64, len: u64) -> KResult<()> {
        if !self.can_do_mlock() {
            return Err(Errno::EPERM);
        }
        let (start, len) = page_range(start, len);
        if !self.cap_ipc_lock {
            let locked = (len >> PAGE_SHIFT) + self.mm.locked_vm();
            if locked > self.rlimit_memlock >> PAGE_SHIFT {
                // The kernel first discounts the pages of the range already locked.
                let already = self.mm.locked_pages_within(start, start.wrapping_add(len));
                if locked - already > self.rlimit_memlock >> PAGE_SHIFT {
                    return Err(Errno::ENOMEM);
                }
            }
        }
        self.mm.apply_vma_lock_flags(start, len, true)?;
        if len == 0 {
            return Ok(());
        }
        self.mm.mm_populate(start, start + len, false).map_err(|errno| match errno {
            Errno::EFAULT => Errno::ENOMEM,
            Errno::ENOMEM => Errno::EAGAIN,
            other => other,
        })
    }

    /// `munlock(2)`: the range widened to whole pages, `VM_LOCKED` cleared on every VMA of it
    /// (ENOMEM at a hole).
    pub fn munlock(&self, start: u64, len: u64) -> KResult<()> {
        let _span = tracing::trace_span!("munlock", start, len).entered();
        let (start, len) = page_range(start, len);
        let result = self.mm.apply_vma_lock_flags(start, len, false);
        self.syscall_exit(result)
    }

    /// `munmap(2)`.
    pub fn munmap(&self, addr: u64, len: u64) -> KResult<()> {
        let _span = tracing::trace_span!("munmap", addr, len).entered();
        let result = self.mm.munmap(addr, len);
        self.syscall_exit(result)
    }

    /// A host load through a mapping.
    pub fn load(&self, addr: u64, len: u64) -> Result<Vec<u8>, AccessSignal> {
        let _span = tracing::trace_span!("load", addr, len).entered();
        let mut buf = vec![0u8; len as usize];
        let result = self.mm.access(addr, &mut buf, false).map(|()| buf);
        self.syscall_exit(result)
    }

    /// A host store through a mapping.
    pub fn store(&self, addr: u64, bytes: &[u8]) -> Result<(), AccessSignal> {
        let _span = tracing::trace_span!("store", addr, len = bytes.len()).entered();
        let mut buf = bytes.to_vec();
        let result = self.mm.access(addr, &mut buf, true);
        self.syscall_exit(result)
    }

    /// `madvise(2)` (`mm/madvise.c` of v6.18): every advice the kernel accepts, with the kernel's
    /// checks in its order. `madvise_should_skip` first (an advice the kernel does not know is
    /// EINVAL, even for an empty range; then the alignment and length checks; an empty range
    /// succeeds), then `MADV_POPULATE_*` page by page, memory failure on its own path, and every
    /// other advice through `madvise_walk_vmas`: each VMA of the range in address order, the
    /// first VMA's error returned at once (the VMAs before it keep the advice), ENOMEM at the end
    /// if the range had holes. What each advice checks and does on a VMA is in
    /// `Process::madvise_vma`.
    pub fn madvise(&self, start: u64, len_in: u64, advice: i32) -> KResult<()> {
        let _span = tracing::trace_span!("madvise", start, len_in, advice).entered();
        let result = self.do_madvise(start, len_in, advice);
        self.syscall_exit(result)
    }

    /// `madvise_behavior_valid`: the advice values the kernel knows (this configuration: KSM and
    /// THP built in; the memory-failure advice only with `CONFIG_MEMORY_FAILURE`).
    #[doc(alias = "madvise_should_skip")]
    fn madvise_behavior_valid(&self, advice: i32) -> bool {
        match advice {
            MADV_NORMAL..=MADV_DONTNEED | MADV_FREE..=MADV_COLLAPSE => true,
            MADV_GUARD_INSTALL | MADV_GUARD_REMOVE => true,
            MADV_HWPOISON | MADV_SOFT_OFFLINE => self.machine.config.memory_failure,
            _ => false,
        }
    }

    #[doc(alias("madvise_do_behavior", "madvise_walk_vmas"))]
    fn do_madvise(&self, start: u64, len_in: u64, advice: i32) -> KResult<()> {
        if !self.madvise_behavior_valid(advice) {
            return Err(Errno::EINVAL);
        }
        if start & (PAGE_SIZE - 1) != 0 {
            return Err(Errno::EINVAL);
        }
        let len = len_in.checked_add(PAGE_SIZE - 1).map(|l| l & !(PAGE_SIZE - 1)).unwrap_or(0);
        if len_in != 0 && len == 0 {
            return Err(Errno::EINVAL);
        }
        let end = start.checked_add(len).ok_or(Errno::EINVAL)?;
        if end == start {
            return Ok(());
        }
        match advice {
            MADV_HWPOISON => return self.madvise_hwpoison_range(start, end),
            // Soft offlining migrates a page away from a frame: page migration of user memory
            // is not modelled.
            MADV_SOFT_OFFLINE => return Err(Errno::ENOSYS),
            MADV_POPULATE_READ | MADV_POPULATE_WRITE => {
                return self.mm.madvise_populate(start, end, advice == MADV_POPULATE_WRITE)
            }
            MADV_HUGEPAGE | MADV_NOHUGEPAGE => {
                // hugepage_madvise never fails; madvise_update_vma splits and flags each VMA.
                let hole = self.mm.madvise_hugepage(start, end, advice == MADV_HUGEPAGE);
                return if hole { Err(Errno::ENOMEM) } else { Ok(()) };
            }
            _ => {}
        }
        // madvise_walk_vmas. Advice that drops mmap_lock (REMOVE, WILLNEED) makes the kernel
        // look the next VMA up again; the model's list is taken once, which is the same here
        // because nothing else changes the address space during the call.
        let (vmas, hole) = self.mm.overlapping(start, end);
        for vma in &vmas {
            self.madvise_vma(vma, start.max(vma.start), end.min(vma.end), advice)?;
        }
        if hole {
            return Err(Errno::ENOMEM);
        }
        Ok(())
    }

    /// `madvise_vma_behavior` on `[start, end)` of `vma`, for the advice the VMA walk handles.
    ///
    /// - DONTNEED, FREE: EINVAL on a `VM_LOCKED` VMA (DONTNEED_LOCKED is allowed there); FREE is
    ///   EINVAL unless the VMA is private anonymous memory (`vma_is_anonymous`), and otherwise
    ///   only marks the pages lazily freeable: they keep their data until reclaim, which the
    ///   model does not do (on the kernel too the data stays until memory pressure).
    /// - REMOVE: EINVAL on a locked VMA or one without a file, EACCES unless shared and
    ///   maywrite; otherwise a hole punch of the file range.
    /// - COLD, PAGEOUT: EINVAL on a locked VMA (`can_madv_lru_vma`); otherwise hints about
    ///   reclaim (LRU lists and swap are not modelled: the data stays).
    /// - GUARD_INSTALL: EINVAL on a locked VMA; zaps the range and installs guard markers.
    ///   GUARD_REMOVE removes them.
    /// - COLLAPSE: EINVAL unless THP may back the VMA (`thp_vma_allowable_order` with the
    ///   measured `enabled=madvise`: never for guest_memfd; private anonymous memory with
    ///   `MADV_HUGEPAGE` and room for an aligned huge page); where it may, the collapse itself is
    ///   not modelled (the data is the same either way; only the PMD mapping would change) and
    ///   the call succeeds. On the kernel the answer then depends on what is populated, and
    ///   shmem VMAs that are PMD-aligned may collapse too; the model refuses shmem (measured,
    ///   `docs/FIDELITY.md`).
    /// - WIPEONFORK: EINVAL on a file or shared VMA. The other VMA flag advice (NORMAL, RANDOM,
    ///   SEQUENTIAL, DONTFORK, DOFORK, KEEPONFORK, DONTDUMP, DODUMP, MERGEABLE, UNMERGEABLE)
    ///   succeeds on every modelled VMA (none is `VM_IO`, `VM_SPECIAL` or droppable, and KSM
    ///   ignores VMAs it cannot merge); the flags they set are not kept, since nothing modelled
    ///   (fork, core dumps, readahead, KSM) reads them.
    /// - WILLNEED: succeeds (readahead of guest_memfd's and shmem's pages does nothing
    ///   observable).
    #[doc(alias(
        "can_madv_lru_vma",
        "ksm_madvise",
        "madvise_cold",
        "madvise_collapse",
        "madvise_dontneed_free",
        "madvise_dontneed_free_valid_vma",
        "madvise_free_single_vma",
        "madvise_pageout",
        "madvise_willneed",
        "thp_vma_allowable_order"
    ))]
    #[doc(alias = "madvise_vma_behavior")]
    fn madvise_vma(&self, vma: &Vma, start: u64, end: u64, advice: i32) -> KResult<()> {
        let locked = vma.vm_flags & VM_LOCKED != 0;
        let anonymous = vma.vm_ops.is_none() && vma.file.is_none();
        match advice {
            MADV_REMOVE => self.madvise_remove(vma, start, end),
            MADV_WILLNEED => Ok(()),
            MADV_COLD | MADV_PAGEOUT if locked => Err(Errno::EINVAL),
            MADV_COLD | MADV_PAGEOUT => Ok(()),
            MADV_DONTNEED | MADV_FREE if locked => Err(Errno::EINVAL),
            MADV_DONTNEED | MADV_DONTNEED_LOCKED => {
                self.mm.dontneed(vma, start, end);
                Ok(())
            }
            MADV_FREE if !anonymous => Err(Errno::EINVAL),
            MADV_FREE => Ok(()),
            MADV_COLLAPSE => {
                // thp_vma_allowable_order: THP for this VMA (private anonymous memory with
                // MADV_HUGEPAGE), and room for a PMD-aligned huge page inside it.
                let room =
                    vma.start.checked_next_multiple_of(HPAGE_PMD_SIZE).is_some_and(|at| at + HPAGE_PMD_SIZE <= vma.end);
                let thp = anonymous && vma.vm_flags & (VM_HUGEPAGE | VM_NOHUGEPAGE) == VM_HUGEPAGE && room;
                if thp {
                    Ok(())
                } else {
                    Err(Errno::EINVAL)
                }
            }
            MADV_GUARD_INSTALL if locked => Err(Errno::EINVAL),
            MADV_GUARD_INSTALL => {
                self.mm.guard_install(vma, start, end);
                Ok(())
            }
            MADV_GUARD_REMOVE => {
                self.mm.guard_remove(vma, start, end);
                Ok(())
            }
            MADV_WIPEONFORK if vma.file.is_some() || vma.vm_flags & VM_SHARED != 0 => Err(Errno::EINVAL),
            _ => Ok(()),
        }
    }

    /// `madvise_remove`: punch the file range behind a shared writable mapping.
    #[doc(alias = "vma_is_shared_maywrite")]
    fn madvise_remove(&self, vma: &Vma, start: u64, end: u64) -> KResult<()> {
        if vma.vm_flags & VM_LOCKED != 0 {
            return Err(Errno::EINVAL);
        }
        let file = vma.file.as_ref().ok_or(Errno::EINVAL)?;
        // vma_is_shared_maywrite.
        if vma.vm_flags & (VM_SHARED | VM_MAYWRITE) != (VM_SHARED | VM_MAYWRITE) {
            return Err(Errno::EACCES);
        }
        let offset = ((start - vma.start) + (vma.pgoff << PAGE_SHIFT)) as i64;
        let mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
        // No zap here: the punch (truncate_inode_pages_range → truncate_cleanup_folio) unmaps
        // each mapped folio from every VMA of the file's i_mmap, this one included, under an
        // MMU_NOTIFY_CLEAR invalidation of each mapping address space.
        self.vfs_fallocate(file, mode, offset, (end - start) as i64)
    }

    /// `MADV_HWPOISON` over `[start, end)` (`madvise_inject_error`): each mapped page in turn;
    /// an address without a VMA is EFAULT (get_user_pages fails), as is anonymous memory (not
    /// modelled: its pages are not in a page cache the model can poison).
    fn madvise_hwpoison_range(&self, start: u64, end: u64) -> KResult<()> {
        let mut addr = start;
        while addr < end {
            let vma = self.mm.find(addr).ok_or(Errno::EFAULT)?;
            let to = end.min(vma.end);
            self.madvise_hwpoison(&vma, addr, to)?;
            addr = to;
        }
        Ok(())
    }

    /// `MADV_HWPOISON`: memory failure on each file page of the range (`memory_failure`).
    #[doc(alias = "madvise_inject_error")]
    fn madvise_hwpoison(&self, vma: &Vma, start: u64, end: u64) -> KResult<()> {
        let Some(file) = vma.file.as_ref() else {
            return Err(Errno::EFAULT);
        };
        let mut addr = start;
        while addr < end {
            let index = PgOff(vma.pgoff + ((addr - vma.start) >> PAGE_SHIFT));
            file.inode().mapping().memory_failure(index)?;
            addr += PAGE_SIZE;
        }
        Ok(())
    }

    /// Closes every descriptor and unmaps everything (process exit), then runs task work.
    pub fn exit(&self) {
        self.mm.unmap_all();
        self.files.close_all();
        task::task_work_run();
    }
}

/// `VM_GROWSDOWN`.
const VM_GROWSDOWN: u64 = 0x0100;
/// `S_IFSOCK`.
const S_IFSOCK: u32 = 0o140000;

/// mlock's range: `start` rounded down to its page, `len` grown by the offset and rounded up to
/// whole pages (wrapping as the kernel's `PAGE_ALIGN` does, so a huge length becomes 0).
fn page_range(start: u64, len: u64) -> (u64, u64) {
    let offset = start & (PAGE_SIZE - 1);
    let len = len.wrapping_add(offset).wrapping_add(PAGE_SIZE - 1) & !(PAGE_SIZE - 1);
    (start - offset, len)
}

/// `calc_vm_flag_bits`: the VMA flags some mmap flags ask for.
fn calc_vm_flag_bits(flags: u64) -> u64 {
    let mut vm_flags = 0;
    if flags & MAP_GROWSDOWN != 0 {
        vm_flags |= VM_GROWSDOWN;
    }
    if flags & MAP_LOCKED != 0 {
        vm_flags |= VM_LOCKED;
    }
    if flags & MAP_STACK != 0 {
        vm_flags |= VM_NOHUGEPAGE;
    }
    vm_flags
}

/// `file_mmap_ok`: the mapping's end in the file must fit in the largest offset the file type
/// allows (`file_mmap_size_max`): `MAX_LFS_FILESIZE` for regular files (guest_memfd, shmem),
/// block devices and sockets, `ULONG_MAX` for everything else (the KVM VM and vCPU files, whose
/// anonymous inodes have no type, character devices). Measured: a guest_memfd mapping of 16 KiB
/// at offset `0x7fffffffffffc000` is EOVERFLOW, a VM descriptor's at `0x7ffffffffffff000` ENODEV.
#[doc(alias = "file_mmap_size_max")]
fn file_mmap_ok(file: &FileRef, pgoff: u64, len: u64) -> bool {
    let mode = file.inode().mode() & S_IFMT;
    let maxsize = match mode {
        S_IFREG | S_IFBLK | S_IFSOCK => MAX_LFS_FILESIZE as u64,
        _ => u64::MAX,
    };
    if len > maxsize {
        return false;
    }
    pgoff <= (maxsize - len) >> PAGE_SHIFT
}

fn calc_vm_prot_bits(prot: u64) -> u64 {
    let mut vm_flags = 0;
    if prot & PROT_READ != 0 {
        vm_flags |= VM_READ;
    }
    if prot & PROT_WRITE != 0 {
        vm_flags |= VM_WRITE;
    }
    if prot & PROT_EXEC != 0 {
        vm_flags |= VM_EXEC;
    }
    vm_flags
}

/// No modelled file implements read, write or llseek, so the generic checks always stop first.
fn unreachable_io(file: &FileRef) -> KResult<u64> {
    panic!("{}: read/write/llseek operations are not modelled", file.name())
}

/// v6.14 `vfs_fallocate` mode checks (before the 6.17 rewrite into a switch). Recalled from the
/// pre-6.17 source rather than read from a pinned v6.14 tree: re-check against one before relying
/// on the EINVAL/EOPNOTSUPP split for mixed COLLAPSE/INSERT/UNSHARE modes.
fn check_fallocate_mode_v6_14(mode: i32) -> KResult<()> {
    let supported = FALLOC_FL_KEEP_SIZE
        | FALLOC_FL_PUNCH_HOLE
        | FALLOC_FL_COLLAPSE_RANGE
        | FALLOC_FL_ZERO_RANGE
        | FALLOC_FL_INSERT_RANGE
        | FALLOC_FL_UNSHARE_RANGE;
    if mode & !supported != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE) == FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE {
        return Err(Errno::EOPNOTSUPP);
    }
    if mode & FALLOC_FL_PUNCH_HOLE != 0 && mode & FALLOC_FL_KEEP_SIZE == 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    if mode & FALLOC_FL_COLLAPSE_RANGE != 0 && mode & !FALLOC_FL_COLLAPSE_RANGE != 0 {
        return Err(Errno::EINVAL);
    }
    if mode & FALLOC_FL_INSERT_RANGE != 0 && mode & !FALLOC_FL_INSERT_RANGE != 0 {
        return Err(Errno::EINVAL);
    }
    if mode & FALLOC_FL_UNSHARE_RANGE != 0 && mode & !(FALLOC_FL_UNSHARE_RANGE | FALLOC_FL_KEEP_SIZE) != 0 {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// v6.18 `vfs_fallocate` mode checks: exactly one mode, KEEP_SIZE only where it makes sense.
fn check_fallocate_mode_v6_18(mode: i32) -> KResult<()> {
    let mode_mask = FALLOC_FL_PUNCH_HOLE
        | FALLOC_FL_COLLAPSE_RANGE
        | FALLOC_FL_ZERO_RANGE
        | FALLOC_FL_INSERT_RANGE
        | FALLOC_FL_UNSHARE_RANGE
        | FALLOC_FL_WRITE_ZEROES;
    if mode & !(mode_mask | FALLOC_FL_KEEP_SIZE) != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    match mode & mode_mask {
        0 | FALLOC_FL_UNSHARE_RANGE | FALLOC_FL_ZERO_RANGE => Ok(()),
        FALLOC_FL_PUNCH_HOLE if mode & FALLOC_FL_KEEP_SIZE == 0 => Err(Errno::EOPNOTSUPP),
        FALLOC_FL_PUNCH_HOLE => Ok(()),
        FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_INSERT_RANGE | FALLOC_FL_WRITE_ZEROES
            if mode & FALLOC_FL_KEEP_SIZE != 0 =>
        {
            Err(Errno::EOPNOTSUPP)
        }
        FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_INSERT_RANGE | FALLOC_FL_WRITE_ZEROES => Ok(()),
        _ => Err(Errno::EOPNOTSUPP),
    }
}

/// Whether `uaddr` of `size` bytes is a valid user range (`access_ok`).
pub fn user_range_ok(uaddr: u64, size: u64) -> bool {
    crate::vma::access_ok(uaddr, size) && uaddr <= TASK_SIZE
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::MachineConfig;

    fn process() -> Process {
        Process::new(Machine::new(MachineConfig::tiny(256)))
    }

    const RW: u64 = PROT_READ | PROT_WRITE;

    #[test]
    fn shared_anonymous_memory_keeps_its_data_across_dontneed_and_loses_it_to_remove() {
        let p = process();
        let a = p.mmap(4 * PAGE_SIZE, RW, MAP_SHARED | MAP_ANONYMOUS, -1, 0).expect("maps");
        p.store(a, &[7]).expect("stores");
        assert_eq!(p.madvise(a, PAGE_SIZE, MADV_DONTNEED), Ok(()));
        assert_eq!(p.load(a, 1), Ok(vec![7]), "shmem keeps the page");
        assert_eq!(p.madvise(a, PAGE_SIZE, MADV_FREE), Err(Errno::EINVAL), "not vma_is_anonymous");
        assert_eq!(p.madvise(a, PAGE_SIZE, MADV_REMOVE), Ok(()));
        assert_eq!(p.load(a, 1), Ok(vec![0]), "the punch freed it");
        assert_eq!(p.load(a + 4 * PAGE_SIZE, 1), Err(AccessSignal::Sigsegv));
    }

    #[test]
    fn anonymous_mappings_enforce_their_protection() {
        let p = process();
        for flags in [MAP_SHARED | MAP_ANONYMOUS, MAP_PRIVATE | MAP_ANONYMOUS] {
            let ro = p.mmap(PAGE_SIZE, PROT_READ, flags, -1, 0).expect("maps");
            assert_eq!(p.load(ro, 1), Ok(vec![0]));
            assert_eq!(p.store(ro, &[1]), Err(AccessSignal::Sigsegv));
            let none = p.mmap(PAGE_SIZE, 0, flags, -1, 0).expect("maps");
            assert_eq!(p.load(none, 1), Err(AccessSignal::Sigsegv));
        }
        assert_eq!(p.mmap(PAGE_SIZE, RW, MAP_SHARED_VALIDATE | MAP_ANONYMOUS, -1, 0), Err(Errno::EINVAL));
        assert_eq!(p.mmap(PAGE_SIZE, RW, MAP_SHARED | MAP_ANONYMOUS | MAP_GROWSDOWN, -1, 0), Err(Errno::EINVAL));
    }

    #[test]
    fn a_locked_mapping_refuses_the_advice_that_drops_pages_and_keeps_its_data() {
        let p = process();
        let a = p.mmap(2 * PAGE_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_LOCKED, -1, 0).expect("maps");
        p.store(a, &[9]).expect("stores");
        for advice in [MADV_DONTNEED, MADV_FREE, MADV_REMOVE, MADV_COLD, MADV_PAGEOUT, MADV_GUARD_INSTALL] {
            assert_eq!(p.madvise(a, PAGE_SIZE, advice), Err(Errno::EINVAL), "advice {advice}");
        }
        assert_eq!(p.load(a, 1), Ok(vec![9]));
        assert_eq!(p.madvise(a, PAGE_SIZE, MADV_DONTNEED_LOCKED), Ok(()));
        assert_eq!(p.load(a, 1), Ok(vec![0]), "DONTNEED_LOCKED drops it");
    }

    #[test]
    fn map_locked_beyond_rlimit_memlock_needs_cap_ipc_lock() {
        let p = process().without_cap_ipc_lock(2 * PAGE_SIZE);
        let flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_LOCKED;
        assert!(p.mmap(2 * PAGE_SIZE, RW, flags, -1, 0).is_ok());
        assert_eq!(p.mmap(PAGE_SIZE, RW, flags, -1, 0), Err(Errno::EAGAIN), "over the limit");
        let p = process().without_cap_ipc_lock(0);
        assert_eq!(p.mmap(PAGE_SIZE, RW, flags, -1, 0), Err(Errno::EPERM), "can_do_mlock");
    }

    #[test]
    fn a_guard_region_faults_with_sigsegv_until_it_is_removed() {
        let p = process();
        let a = p.mmap(2 * PAGE_SIZE, RW, MAP_SHARED | MAP_ANONYMOUS, -1, 0).expect("maps");
        p.store(a, &[5]).expect("stores");
        assert_eq!(p.madvise(a, PAGE_SIZE, MADV_GUARD_INSTALL), Ok(()));
        assert_eq!(p.load(a, 1), Err(AccessSignal::Sigsegv));
        assert_eq!(p.madvise(a, PAGE_SIZE, MADV_DONTNEED), Ok(()));
        assert_eq!(p.load(a, 1), Err(AccessSignal::Sigsegv), "a zap keeps the marker");
        assert_eq!(p.madvise(a, 2 * PAGE_SIZE, MADV_POPULATE_READ), Err(Errno::EFAULT));
        assert_eq!(p.madvise(a, PAGE_SIZE, MADV_GUARD_REMOVE), Ok(()));
        assert_eq!(p.load(a, 1), Ok(vec![5]), "shmem data survives the guard");
    }

    #[test]
    fn the_vma_walk_returns_the_first_vmas_error_else_enomem_for_holes() {
        let p = process();
        let a = p.mmap(2 * PAGE_SIZE, RW, MAP_SHARED | MAP_ANONYMOUS, -1, 0).expect("maps");
        p.munmap(a + PAGE_SIZE, PAGE_SIZE).expect("unmaps");
        assert_eq!(p.madvise(a, 2 * PAGE_SIZE, MADV_DONTNEED), Err(Errno::ENOMEM));
        assert_eq!(p.madvise(a, 2 * PAGE_SIZE, MADV_FREE), Err(Errno::EINVAL));
        assert_eq!(p.madvise(a + PAGE_SIZE, PAGE_SIZE, MADV_COLLAPSE), Err(Errno::ENOMEM));
        assert_eq!(p.madvise(a + PAGE_SIZE, PAGE_SIZE, 26), Err(Errno::EINVAL), "an unknown advice first");
        assert_eq!(p.madvise(a + PAGE_SIZE, 0, MADV_COLLAPSE), Ok(()), "an empty range");
        assert_eq!(p.madvise(a + PAGE_SIZE, PAGE_SIZE, MADV_POPULATE_WRITE), Err(Errno::ENOMEM));
    }

    #[test]
    fn populate_needs_the_access_right_without_forcing_it() {
        let p = process();
        let ro = p.mmap(PAGE_SIZE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0).expect("maps");
        assert_eq!(p.madvise(ro, PAGE_SIZE, MADV_POPULATE_READ), Ok(()));
        assert_eq!(p.madvise(ro, PAGE_SIZE, MADV_POPULATE_WRITE), Err(Errno::EINVAL));
        let wo = p.mmap(PAGE_SIZE, PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0).expect("maps");
        assert_eq!(p.madvise(wo, PAGE_SIZE, MADV_POPULATE_READ), Err(Errno::EINVAL));
        assert_eq!(p.madvise(wo, PAGE_SIZE, MADV_POPULATE_WRITE), Ok(()));
    }

    #[test]
    fn the_mmap_offset_limit_applies_to_regular_files_only() {
        let p = process();
        // Descriptor 0 is a terminal (a character device): ULONG_MAX, then no mmap.
        assert_eq!(p.mmap(4 * PAGE_SIZE, RW, MAP_SHARED, 0, 0x7fff_ffff_ffff_f000), Err(Errno::ENODEV));
        assert_eq!(p.mmap(4 * PAGE_SIZE, RW, MAP_SHARED, 0, -8192), Err(Errno::EOVERFLOW));
    }
}

#[cfg(test)]
mod mlock_tests {
    use super::*;
    use crate::machine::MachineConfig;

    const RW: u64 = PROT_READ | PROT_WRITE;

    #[test]
    fn mlock_locks_the_part_of_the_vma_it_covers_and_munlock_unlocks_it() {
        let p = Process::new(Machine::new(MachineConfig::tiny(256)));
        let a = p.mmap(4 * PAGE_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0).expect("maps");
        assert_eq!(p.mlock(a + PAGE_SIZE + 1, PAGE_SIZE), Ok(()), "widened to pages 1 and 2");
        assert_eq!(p.madvise(a, PAGE_SIZE, MADV_DONTNEED), Ok(()));
        assert_eq!(p.madvise(a + PAGE_SIZE, PAGE_SIZE, MADV_DONTNEED), Err(Errno::EINVAL));
        assert_eq!(p.madvise(a + 2 * PAGE_SIZE, PAGE_SIZE, MADV_DONTNEED), Err(Errno::EINVAL));
        assert_eq!(p.madvise(a + 3 * PAGE_SIZE, PAGE_SIZE, MADV_DONTNEED), Ok(()));
        assert_eq!(p.munlock(a, 4 * PAGE_SIZE), Ok(()));
        assert_eq!(p.madvise(a, 4 * PAGE_SIZE, MADV_DONTNEED), Ok(()));
        assert_eq!(p.mlock(a, u64::MAX), Ok(()), "the rounded length wraps to 0");
    }

    #[test]
    fn mlock_stops_at_a_hole_and_reports_a_failed_population_as_enomem() {
        let p = Process::new(Machine::new(MachineConfig::tiny(256)));
        let a = p.mmap(4 * PAGE_SIZE, RW, MAP_SHARED | MAP_ANONYMOUS, -1, 0).expect("maps");
        p.munmap(a + 2 * PAGE_SIZE, PAGE_SIZE).expect("unmaps");
        assert_eq!(p.mlock(a, 4 * PAGE_SIZE), Err(Errno::ENOMEM));
        assert_eq!(p.madvise(a, PAGE_SIZE, MADV_DONTNEED), Err(Errno::EINVAL), "locked before the hole");
        assert_eq!(p.madvise(a + 3 * PAGE_SIZE, PAGE_SIZE, MADV_DONTNEED), Ok(()), "not after it");
        assert_eq!(p.munlock(a + 2 * PAGE_SIZE, PAGE_SIZE), Err(Errno::ENOMEM), "starts in a hole");
        let none = p.mmap(PAGE_SIZE, 0, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0).expect("maps");
        assert_eq!(p.mlock(none, PAGE_SIZE), Err(Errno::ENOMEM), "PROT_NONE cannot be populated");
        assert_eq!(p.madvise(none, PAGE_SIZE, MADV_DONTNEED), Err(Errno::EINVAL), "but it is locked");
        let p = Process::new(Machine::new(MachineConfig::tiny(256))).without_cap_ipc_lock(PAGE_SIZE);
        let b = p.mmap(2 * PAGE_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0).expect("maps");
        assert_eq!(p.mlock(b, 2 * PAGE_SIZE), Err(Errno::ENOMEM), "over RLIMIT_MEMLOCK");
        assert_eq!(p.mlock(b, PAGE_SIZE), Ok(()));
    }
}
