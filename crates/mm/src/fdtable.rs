//! The per-process file descriptor table (`fs/file.c`: `get_unused_fd_flags`, `fd_install`,
//! `fget`, `close_fd`).
//!
//! Descriptors are allocated lowest-free first, as Linux does, so scripts that check fd reuse
//! behave identically on the simulator and on the real kernel.

use crate::errno::{Errno, KResult};
use crate::file::FileRef;
use gmem_sync::map::ConcurrentMap;
use gmem_sync::{LockClass, Mutex};

static FDTABLE_LOCK: LockClass = LockClass::new("files->file_lock");

/// `RLIMIT_NOFILE`'s usual soft limit.
pub const NR_OPEN_DEFAULT: usize = 1024;

/// A descriptor table.
#[derive(Debug)]
pub struct FdTable {
    files: ConcurrentMap<i32, FileRef>,
    /// `open_fds`: reserved or installed descriptors.
    open_fds: Mutex<Vec<bool>>,
}

impl Default for FdTable {
    fn default() -> Self {
        FdTable::new()
    }
}

impl FdTable {
    /// An empty table.
    pub fn new() -> FdTable {
        FdTable { files: ConcurrentMap::new(), open_fds: Mutex::new(&FDTABLE_LOCK, vec![false; NR_OPEN_DEFAULT]) }
    }

    /// `get_unused_fd_flags`: reserves the lowest free descriptor (EMFILE if none).
    #[doc(alias = "get_unused_fd_flags")]
    pub fn get_unused_fd(&self) -> KResult<i32> {
        let mut open = self.open_fds.lock();
        let fd = open.iter().position(|used| !used).ok_or(Errno::EMFILE)?;
        open[fd] = true;
        Ok(fd as i32)
    }

    /// `put_unused_fd`: gives back a reserved descriptor that was never installed.
    pub fn put_unused_fd(&self, fd: i32) {
        self.open_fds.lock()[fd as usize] = false;
    }

    /// `fd_install`: publishes `file` at a reserved descriptor.
    pub fn fd_install(&self, fd: i32, file: FileRef) {
        let old = self.files.insert(fd, file);
        assert!(old.is_none(), "fd_install over an installed descriptor {fd}");
    }

    /// Reserves a descriptor and installs `file` there.
    pub fn install(&self, file: FileRef) -> KResult<i32> {
        let fd = self.get_unused_fd()?;
        self.fd_install(fd, file);
        Ok(fd)
    }

    /// `fget`: a new reference to the file at `fd`, or `None` (the caller's EBADF).
    pub fn fget(&self, fd: i32) -> Option<FileRef> {
        if fd < 0 {
            return None;
        }
        self.files.get(&fd)
    }

    /// `close_fd`: removes the descriptor and drops the table's reference (EBADF if not open).
    #[doc(alias = "close_fd")]
    pub fn close(&self, fd: i32) -> KResult<()> {
        if fd < 0 {
            return Err(Errno::EBADF);
        }
        let file = self.files.remove(&fd).ok_or(Errno::EBADF)?;
        self.open_fds.lock()[fd as usize] = false;
        drop(file);
        Ok(())
    }

    /// Every open descriptor, ascending.
    pub fn open_fds(&self) -> Vec<i32> {
        let mut fds = self.files.keys();
        fds.sort_unstable();
        fds
    }

    /// Closes everything (process exit).
    pub fn close_all(&self) {
        for fd in self.open_fds() {
            let _ = self.close(fd);
        }
    }
}
