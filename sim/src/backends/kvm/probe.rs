//! Host loads and stores that may fault, performed where a signal cannot kill the runner.
//!
//! A script's `store` or `load` through a guest_memfd mapping may raise `SIGBUS` (no page can
//! be provided: past `i_size`, a hole of a file that refuses to fill it) or `SIGSEGV` (no
//! mapping, or the protection forbids it). Those are the results the script wants to see, so
//! the access must run in a context whose death by signal the runner can observe and survive.
//!
//! The copy runs in a child created with `CLONE_VM | CLONE_VFORK`: it shares this process's
//! address space, so it faults exactly as the runner itself would (same VMAs, same page
//! tables, same files; a store to a private mapping is visible to the runner afterwards),
//! while a fatal signal ends only the child. The parent is suspended until the child exits
//! (vfork semantics), then reads the child's fate from `waitpid`. This is how `posix_spawn`
//! uses the same primitive. The child runs on its own small stack and does nothing but reset
//! its copies of the SIGBUS and SIGSEGV handlers (the runner's are inherited, not shared,
//! without `CLONE_SIGHAND`) and copy bytes with volatile accesses.

use std::os::raw::{c_int, c_void};
use std::ptr;

use crate::backend::Signal;

/// The child's stack size: the copy loop needs a few hundred bytes.
const CHILD_STACK: usize = 64 * 1024;

/// What the child copies: `len` bytes from `src` to `dst`, one volatile byte at a time, so
/// the fault happens at the first byte that cannot be accessed.
struct CopyJob {
    dst: *mut u8,
    src: *const u8,
    len: usize,
}

extern "C" fn copy_in_child(arg: *mut c_void) -> c_int {
    // SAFETY: the parent passes a pointer to a `CopyJob` that outlives the child (the parent is
    // suspended until the child exits). `signal` is async-signal-safe, and the child's signal
    // handlers are its own copies (no CLONE_SIGHAND), so the runner's handlers are unaffected.
    // The volatile copy faults if an address is not accessible, which is the point: the fatal
    // signal ends the child and the parent reports it.
    unsafe {
        libc::signal(libc::SIGSEGV, libc::SIG_DFL);
        libc::signal(libc::SIGBUS, libc::SIG_DFL);
        let job = &*(arg as *const CopyJob);
        for i in 0..job.len {
            ptr::write_volatile(job.dst.add(i), ptr::read_volatile(job.src.add(i)));
        }
    }
    0
}

/// Why a probe could not be run at all (not a result of the access).
#[derive(Debug)]
pub struct ProbeError(pub String);

/// Runs `job` in a `CLONE_VM | CLONE_VFORK` child and reports how it ended.
fn run(job: &CopyJob) -> Result<Result<(), Signal>, ProbeError> {
    let mut stack = vec![0u8; CHILD_STACK];
    // The stack grows down: pass its (16-byte aligned) top.
    let top = (stack.as_mut_ptr() as usize + CHILD_STACK) & !15;
    let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD;
    // SAFETY: `copy_in_child` only touches `job` and the addresses it names, runs on `stack`
    // (alive until after the wait below), and the parent does not run until the child has
    // exited (CLONE_VFORK), so nothing else uses that stack or `job` concurrently.
    let pid = unsafe { libc::clone(copy_in_child, top as *mut c_void, flags, job as *const CopyJob as *mut c_void) };
    if pid < 0 {
        return Err(ProbeError(format!("clone failed: {}", std::io::Error::last_os_error())));
    }
    let mut status: c_int = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer; `pid` is our own child.
        let ret = unsafe { libc::waitpid(pid, &mut status, 0) };
        if ret == pid {
            break;
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(ProbeError(format!("waitpid failed: {error}")));
        }
    }
    drop(stack);
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        return Ok(Ok(()));
    }
    if libc::WIFSIGNALED(status) {
        match libc::WTERMSIG(status) {
            libc::SIGBUS => return Ok(Err(Signal::Sigbus)),
            libc::SIGSEGV => return Ok(Err(Signal::Sigsegv)),
            _ => {}
        }
    }
    Err(ProbeError(format!("the access child ended with wait status {status:#x}")))
}

/// Stores `bytes` at `addr` in this process, reporting a fatal signal as the result.
///
/// # Safety
///
/// `addr..addr + bytes.len()` must not overlap memory the runner uses (its heap, stacks,
/// code): the store really happens. Addresses that are unmapped or protected only fault.
pub unsafe fn store(addr: u64, bytes: &[u8]) -> Result<Result<(), Signal>, ProbeError> {
    run(&CopyJob { dst: addr as *mut u8, src: bytes.as_ptr(), len: bytes.len() })
}

/// Loads `len` bytes at `addr` in this process, reporting a fatal signal as the result.
///
/// Loads have side effects only through the fault they cause (a page allocated on first
/// touch), never on the runner's own data, so this is safe for any address.
pub fn load(addr: u64, len: usize) -> Result<Result<Vec<u8>, Signal>, ProbeError> {
    let mut out = vec![0u8; len];
    let result = run(&CopyJob { dst: out.as_mut_ptr(), src: addr as *const u8, len })?;
    Ok(result.map(|()| out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_of_unmapped_memory_is_sigsegv_and_the_runner_survives() {
        assert_eq!(load(8, 1).unwrap(), Err(Signal::Sigsegv));
        assert_eq!(load(0xffff_8000_0000_0000, 4).unwrap(), Err(Signal::Sigsegv));
    }

    #[test]
    fn a_store_is_visible_to_the_runner_and_a_load_reads_it() {
        let mut buffer = vec![0u8; 16];
        let addr = buffer.as_mut_ptr() as u64;
        // SAFETY: the range is our own buffer, alive for the call.
        unsafe { store(addr + 4, &[1, 2, 3]).unwrap().unwrap() };
        assert_eq!(&buffer[3..8], &[0, 1, 2, 3, 0]);
        assert_eq!(load(addr + 4, 3).unwrap().unwrap(), vec![1, 2, 3]);
    }

    #[test]
    fn a_store_to_a_read_only_mapping_is_sigsegv_and_leaves_it_unchanged() {
        // SAFETY: a fresh anonymous read-only page, unmapped below.
        let page = unsafe {
            libc::mmap(ptr::null_mut(), 4096, libc::PROT_READ, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
        };
        assert_ne!(page, libc::MAP_FAILED);
        // SAFETY: the page is ours and read-only, so the store can only fault.
        assert_eq!(unsafe { store(page as u64, &[7]) }.unwrap(), Err(Signal::Sigsegv));
        assert_eq!(load(page as u64, 1).unwrap().unwrap(), vec![0]);
        // SAFETY: unmapping the page mapped above.
        unsafe { libc::munmap(page, 4096) };
    }
}
