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
use crate::inode::{InodeInit, Kstat, EMPTY_IOPS, MAX_LFS_FILESIZE, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFMT};
use crate::machine::{Machine, VfsVersion};
use crate::types::{PgOff, PAGE_SHIFT, PAGE_SIZE};
use crate::vma::{AccessSignal, Mm, Vma, TASK_SIZE, VM_EXEC, VM_MAYEXEC, VM_MAYREAD, VM_MAYSHARE};
use crate::vma::{VM_MAYWRITE, VM_READ, VM_SHARED, VM_WRITE};
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
/// `MAP_HUGETLB`.
pub const MAP_HUGETLB: u64 = 0x40000;
/// `MAP_FIXED_NOREPLACE`.
pub const MAP_FIXED_NOREPLACE: u64 = 0x100000;
/// `LEGACY_MAP_MASK`: the flags plain MAP_SHARED silently accepts.
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
    | MAP_HUGETLB;

/// `MADV_DONTNEED`.
pub const MADV_DONTNEED: i32 = 4;
/// `MADV_REMOVE`.
pub const MADV_REMOVE: i32 = 9;
/// `MADV_HUGEPAGE`.
pub const MADV_HUGEPAGE: i32 = 14;
/// `MADV_NOHUGEPAGE`.
pub const MADV_NOHUGEPAGE: i32 = 15;
/// `MADV_HWPOISON`.
pub const MADV_HWPOISON: i32 = 100;

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
}

/// The operations of the standard-stream terminal files (descriptors 0, 1 and 2).
static TTY_FOPS: crate::file::FileOperations = crate::file::FileOperations { name: "tty", ..EMPTY_FOPS };

impl Process {
    /// A process with descriptors 0, 1 and 2 open on a terminal (a character device with no
    /// operations the model implements), so the first new descriptor is 3, as in a real process.
    pub fn new(machine: Arc<Machine>) -> Process {
        let process = Process { files: FdTable::new(), mm: Mm::new(machine.clone()), machine };
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
    pub fn read(&self, fd: i32, _len: u64) -> KResult<u64> {
        let _span = tracing::trace_span!("read", fd).entered();
        self.plain_io(fd, FMODE_READ, FMODE_CAN_READ)
    }

    /// `write(2)`: `vfs_write` needs FMODE_WRITE (EBADF) and a write operation (EINVAL).
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
    pub fn pread(&self, fd: i32, len: u64, pos: i64) -> KResult<u64> {
        self.positioned_io(fd, len, pos, FMODE_PREAD)
    }

    /// `pwrite64(2)`.
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
    pub fn fstat(&self, fd: i32) -> KResult<Kstat> {
        let _span = tracing::trace_span!("fstat", fd).entered();
        let result = self.fget(fd).map(|file| file.inode().getattr());
        self.syscall_exit(result)
    }

    /// `mmap(2)` of a descriptor (x86 `sys_mmap` → `ksys_mmap_pgoff` → `vm_mmap_pgoff` →
    /// `do_mmap` → `mmap_region` → `f_op->mmap`).
    pub fn mmap(&self, len: u64, prot: u64, flags: u64, fd: i32, offset: i64) -> KResult<u64> {
        let _span = tracing::trace_span!("mmap", fd, len, prot, flags, offset).entered();
        if offset as u64 & (PAGE_SIZE - 1) != 0 {
            return Err(Errno::EINVAL);
        }
        let pgoff = (offset as u64) >> PAGE_SHIFT;
        let result = if flags & MAP_ANONYMOUS != 0 {
            if flags & MAP_TYPE == MAP_PRIVATE || flags & MAP_TYPE == MAP_SHARED {
                self.do_mmap_anonymous(len, flags & MAP_TYPE == MAP_PRIVATE)
            } else {
                Err(Errno::EINVAL)
            }
        } else {
            self.fget(fd).and_then(|file| {
                if flags & MAP_HUGETLB != 0 {
                    return Err(Errno::EINVAL);
                }
                self.do_mmap_file(&file, len, prot, flags, pgoff)
            })
        };
        self.syscall_exit(result)
    }

    fn do_mmap_file(&self, file: &FileRef, len: u64, prot: u64, mut flags: u64, pgoff: u64) -> KResult<u64> {
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        let len = len.checked_add(PAGE_SIZE - 1).map(|l| l & !(PAGE_SIZE - 1)).filter(|&l| l != 0);
        let len = len.ok_or(Errno::ENOMEM)?;
        if pgoff.checked_add(len >> PAGE_SHIFT).is_none() {
            return Err(Errno::EOVERFLOW);
        }
        if flags & (MAP_FIXED | MAP_FIXED_NOREPLACE) != 0 {
            // Address 0 is below mmap_min_addr (security_mmap_addr); scripts have no address.
            return Err(Errno::EPERM);
        }
        let addr = self.mm.get_unmapped_area(len)?;
        let mut vm_flags = calc_vm_prot_bits(prot) | VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC;
        if flags & MAP_GROWSDOWN != 0 {
            vm_flags |= VM_GROWSDOWN;
        }
        let inode = file.inode();
        // file_mmap_ok: regular files may map up to MAX_LFS_FILESIZE (not limited by i_size).
        let maxsize = MAX_LFS_FILESIZE as u64;
        if len > maxsize || pgoff > (maxsize - len) >> PAGE_SHIFT {
            return Err(Errno::EOVERFLOW);
        }
        match flags & MAP_TYPE {
            MAP_SHARED | MAP_SHARED_VALIDATE => {
                if flags & MAP_TYPE == MAP_SHARED {
                    flags &= LEGACY_MAP_MASK;
                }
                if flags & !LEGACY_MAP_MASK != 0 {
                    return Err(Errno::EOPNOTSUPP);
                }
                if prot & PROT_WRITE != 0 && file.f_mode() & FMODE_WRITE == 0 {
                    return Err(Errno::EACCES);
                }
                vm_flags |= VM_SHARED | VM_MAYSHARE;
                if file.f_mode() & FMODE_WRITE == 0 {
                    vm_flags &= !(VM_MAYWRITE | VM_SHARED);
                }
                self.check_private_mapping(file, &mut vm_flags)?;
            }
            MAP_PRIVATE => self.check_private_mapping(file, &mut vm_flags)?,
            _ => return Err(Errno::EINVAL),
        }
        let _ = inode;
        self.mmap_region(file, addr, len, vm_flags, pgoff)
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

    /// `mmap_region`: builds the VMA, lets the file's mmap hook adjust it, links it.
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
        self.do_mmap_anonymous(len, true)
    }

    /// An anonymous mapping; a private one whose length is a multiple of 2M is placed
    /// 2M-aligned (`thp_get_unmapped_area_vmflags`), a shared one goes through
    /// `shmem_get_unmapped_area`, which with shmem THP off (`shmem_enabled=never`) does not
    /// align. (The model maps shared anonymous memory as private anonymous memory otherwise.)
    fn do_mmap_anonymous(&self, len: u64, private: bool) -> KResult<u64> {
        let _span = tracing::trace_span!("mmap_anonymous", len).entered();
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        let len = len.checked_add(PAGE_SIZE - 1).ok_or(Errno::ENOMEM)? & !(PAGE_SIZE - 1);
        let addr = if private { self.mm.get_unmapped_area_anon(len)? } else { self.mm.get_unmapped_area(len)? };
        let vm_flags = VM_READ | VM_WRITE | VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC;
        self.mm.insert(Vma::new(addr, addr + len, addr >> PAGE_SHIFT, vm_flags, None));
        Ok(addr)
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

    /// `madvise(2)` for the advice values the model implements: DONTNEED, REMOVE, HWPOISON,
    /// HUGEPAGE and NOHUGEPAGE (`VM_HUGEPAGE` / `VM_NOHUGEPAGE`, see [`crate::huge_memory`]), and
    /// the hints that change nothing observable here (NORMAL, RANDOM, SEQUENTIAL, WILLNEED, COLD,
    /// PAGEOUT, DONTDUMP, DODUMP). MADV_COLLAPSE is EINVAL (khugepaged's collapse is not
    /// modelled; guest_memfd refuses it on the real kernel too). Other valid advice values return
    /// ENOSYS: *not modelled*, never a pretend success.
    pub fn madvise(&self, start: u64, len_in: u64, advice: i32) -> KResult<()> {
        let _span = tracing::trace_span!("madvise", start, len_in, advice).entered();
        let result = self.do_madvise(start, len_in, advice);
        self.syscall_exit(result)
    }

    fn do_madvise(&self, start: u64, len_in: u64, advice: i32) -> KResult<()> {
        let known = matches!(advice, 0..=4 | 8..=25 | 100..=103);
        let hwpoison_ok = advice != MADV_HWPOISON && advice != 101 || self.machine.config.memory_failure;
        if !known || !hwpoison_ok {
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
            MADV_HUGEPAGE | MADV_NOHUGEPAGE => {
                let hole = self.mm.madvise_hugepage(start, end, advice == MADV_HUGEPAGE);
                return if hole { Err(Errno::ENOMEM) } else { Ok(()) };
            }
            0..=3 | 16 | 17 | 20 | 21 => return self.require_mapped(start, end),
            25 => return Err(Errno::EINVAL),
            MADV_DONTNEED | MADV_REMOVE | MADV_HWPOISON => {}
            _ => return Err(Errno::ENOSYS),
        }
        let (vmas, hole) = self.mm.overlapping(start, end);
        for vma in &vmas {
            let from = start.max(vma.start);
            let to = end.min(vma.end);
            match advice {
                MADV_DONTNEED => self.mm.dontneed(vma, from, to),
                MADV_REMOVE => self.madvise_remove(vma, from, to)?,
                _ => self.madvise_hwpoison(vma, from, to)?,
            }
        }
        if hole {
            return Err(Errno::ENOMEM);
        }
        Ok(())
    }

    fn require_mapped(&self, start: u64, end: u64) -> KResult<()> {
        let (_, hole) = self.mm.overlapping(start, end);
        if hole {
            Err(Errno::ENOMEM)
        } else {
            Ok(())
        }
    }

    /// `madvise_remove`: punch the file range behind a shared writable mapping.
    fn madvise_remove(&self, vma: &Vma, start: u64, end: u64) -> KResult<()> {
        let file = vma.file.as_ref().ok_or(Errno::EINVAL)?;
        if vma.vm_flags & (VM_SHARED | VM_WRITE) != (VM_SHARED | VM_WRITE)
            && vma.vm_flags & (VM_MAYSHARE | VM_MAYWRITE) != (VM_MAYSHARE | VM_MAYWRITE)
        {
            return Err(Errno::EACCES);
        }
        let offset = ((start - vma.start) + (vma.pgoff << PAGE_SHIFT)) as i64;
        let mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
        // No zap here: the punch (truncate_inode_pages_range → truncate_cleanup_folio) unmaps
        // each mapped folio from every VMA of the file's i_mmap, this one included, under an
        // MMU_NOTIFY_CLEAR invalidation of each mapping address space.
        self.vfs_fallocate(file, mode, offset, (end - start) as i64)
    }

    /// `MADV_HWPOISON`: memory failure on each file page of the range (`memory_failure`).
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
