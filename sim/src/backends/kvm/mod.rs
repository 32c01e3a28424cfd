//! The real-kernel backend: every host-side verb on this machine's `/dev/kvm`.
//!
//! KVM calls go through kvm-ioctls (`Kvm::create_vm_with_type`, `VmFd::create_guest_memfd`,
//! `VmFd::set_user_memory_region2`, `VmFd::set_memory_attributes`,
//! `check_extension_raw`); a descriptor that is not the kind the wrapper's type promises
//! (a guest_memfd used as a VM, a closed descriptor) gets the same ioctl raw, so the kernel
//! gives its own answer. File and memory calls are plain libc calls.
//!
//! What this backend adds around the kernel, and why:
//! - `fds`: script descriptor numbers are translated, because the script format fixes
//!   them (lowest free, 0 to 2 open) and the runner's process has others open;
//! - `probe`: loads and stores run in a `CLONE_VM` child, so SIGBUS and SIGSEGV are results
//!   rather than the end of the runner;
//! - `memory`: stores, `munmap` and `madvise` never reach the runner's own memory;
//! - resource guards: a memslot the kernel would accept costs about 10 bytes of kernel memory
//!   per 4 KiB page here, so calls that would create very large ones (or allocate many GiB of
//!   guest_memfd) are not performed.
//!
//! A verb not performed prints `skip` with the reason, and the line is not compared. Guest
//! verbs skip: on this machine's PVM backend a guest reads the memslot's `userspace_addr`,
//! not guest_memfd (`../shared/reference/kernel-semantics.md` §0.2). The vCPU's host ioctls are
//! real: `create_vcpu` is `KVM_CREATE_VCPU` (kvm-ioctls' `VmFd::create_vcpu`), so descriptor numbers
//! agree on both backends after it, and `pre_fault_memory` is `KVM_PRE_FAULT_MEMORY`; the
//! vCPU-scope `KVM_MEMORY_ENCRYPT_OP` commands use the descriptor too. Nothing here runs the
//! vCPU (`KVM_RUN`). Simulator-only verbs skip.
//!
//! The SEV-SNP host verbs are real calls: `open_dev_sev` opens `/dev/sev` (absent here: ENOENT),
//! and the launch commands issue `KVM_MEMORY_ENCRYPT_OP` (`VmFd::encrypt_op_sev`) with their
//! parameters in this process's memory (`bytes=` and `id_block=` staged in memory mapped for the
//! call). So are the TDX host verbs: `KVM_MEMORY_ENCRYPT_OP` with a `struct kvm_tdx_cmd` on the
//! VM (kvm-ioctls' `VmFd::encrypt_op`) or on the vCPU (the raw ioctl; kvm-ioctls' `VcpuFd` has no
//! wrapper), the parameters in this process's memory; `tdx_state`, `inject tdx` and `queue_event`
//! are simulator-only. The guests' own steps skip like the other guest verbs: the SNP guest's
//! instructions and VMGEXITs, the TD guest's TDCALLs (`tdx_accept`, `tdx_map_gpa`), the
//! completion of their exits (`complete_hypercall`), and `shared=1` (a TD's shared bit).
//!
//! The backend owns what it creates: dropping it closes every descriptor and unmaps every
//! mapping, so thousands of scripts in one process do not grow its descriptors or memory.

mod fds;
mod memory;
mod probe;
mod sys;

use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};

use gmem_mm::Errno;
use kvm_bindings::{
    kvm_create_guest_memfd, kvm_enable_cap, kvm_memory_attributes, kvm_sev_cmd, kvm_sev_init,
    kvm_sev_snp_launch_finish, kvm_sev_snp_launch_start, kvm_sev_snp_launch_update, kvm_userspace_memory_region2,
    sev_cmd_id_KVM_SEV_INIT2, sev_cmd_id_KVM_SEV_SNP_LAUNCH_FINISH, sev_cmd_id_KVM_SEV_SNP_LAUNCH_START,
    sev_cmd_id_KVM_SEV_SNP_LAUNCH_UPDATE, KVM_SEV_SNP_ID_AUTH_SIZE, KVM_SEV_SNP_ID_BLOCK_SIZE,
    KVM_SEV_SNP_PAGE_TYPE_CPUID,
};
use kvm_ioctls::Kvm;

use crate::backend::{
    staging_len, BResult, Backend, Completion, Failure, GhcbAnswer, LaunchUpdated, MemoryRegion2, Signal, Stat,
    TdvmcallAnswer, TdxCaps, TdxRegionDone, TdxVmState,
};
use fds::{FdTable, Object};
use gmem_arch::tdx::kvm::{
    kvm_tdx_cmd, kvm_tdx_init_mem_region, kvm_tdx_init_vm, KVM_TDX_CAPABILITIES, KVM_TDX_FINALIZE_VM,
    KVM_TDX_INIT_MEM_REGION, KVM_TDX_INIT_VCPU, KVM_TDX_INIT_VM,
};
use kvm_bindings::kvm_cpuid_entry2;
use memory::{page_align, RegionKind, Regions, PAGE_SIZE};

/// Why guest-side verbs skip here (issue text and `../shared/reference/kernel-semantics.md` §0.2).
pub const GUEST_SKIP: &str = "guest access not compared on this host";

/// Why simulator-only verbs skip here.
pub const SIMULATOR_ONLY: &str = "simulator only";

/// Why calls on descriptors 0 to 2 that would read their identity skip here.
const STREAM_SKIP: &str = "the standard streams differ between hosts (the simulator models a terminal)";

/// The largest `load` a script may ask for (the simulator's limit too).
const LOAD_LEN_MAX: u64 = 16 << 20;

/// The largest memslot this backend creates in one call: 64 GiB costs about 170 MiB of
/// kernel memory on the measured kernel.
const MEMSLOT_BYTES_MAX: u64 = 64 << 30;

/// The most memslot bytes one script may create: 256 GiB, about 680 MiB of kernel memory.
const MEMSLOT_BYTES_BUDGET: u64 = 256 << 30;

/// The most guest_memfd memory one `fallocate` may allocate.
const FALLOCATE_ALLOC_MAX: u64 = 4 << 30;

/// The largest buffer `read`/`write` hand to the kernel; larger requests get an address
/// range reserved without memory behind it.
const IO_BUFFER_MAX: u64 = 1 << 20;

/// `x86_64` `KVM_MEM_MAX_NR_PAGES`: memslots of more pages are rejected before any allocation.
const KVM_MEM_MAX_NR_PAGES: u64 = (1 << 31) - 1;

/// The first guest physical address past the largest the measured kernel maps (52 bits).
const GPA_LIMIT: u64 = 1 << 52;

/// `FALLOC_FL_KEEP_SIZE`.
const FALLOC_FL_KEEP_SIZE: i32 = 0x01;

/// mmap flags this backend does not pass: it always maps with a NULL hint, so `MAP_FIXED`
/// and `MAP_FIXED_NOREPLACE` would map at address 0 (the runner runs as root, which may map
/// below `mmap_min_addr`) and could replace the runner's memory.
const MMAP_FLAGS_REFUSED: u64 = (libc::MAP_FIXED | libc::MAP_FIXED_NOREPLACE) as u64;

/// mmap flags that fault the whole mapping in at once (`mm_populate`).
const MMAP_FLAGS_POPULATING: u64 = (libc::MAP_POPULATE | libc::MAP_LOCKED) as u64;

/// The room reserved above every mapping a script makes (the simulator's
/// [`crate::backends::sim::GUARD_GAP`]): an access or madvise running past a mapping's end meets
/// this reservation (SIGSEGV; released around madvise, so a hole) instead of the runner's memory.
const GUARD_GAP: u64 = crate::backends::sim::GUARD_GAP;

/// The longest mapping that gets a guard gap (longer ones are mapped where the kernel chooses).
const GUARD_RESERVE_MAX: u64 = 1 << 40;

/// The largest range this backend populates in one call (`MAP_POPULATE`, `MAP_LOCKED`,
/// `MADV_POPULATE_*`): populating commits real memory of this host.
const POPULATE_BYTES_MAX: u64 = 256 << 20;

/// madvise advice that would poison or offline this host's pages where the kernel has memory
/// failure (`CONFIG_MEMORY_FAILURE`); without it the kernel refuses them (EINVAL) and they are
/// passed.
const MADVISE_MEMORY_FAILURE: [i32; 2] = [libc::MADV_HWPOISON, libc::MADV_SOFT_OFFLINE];

/// The bytes `mlock(addr, len)` and `munlock` act on: the length grown by `addr`'s offset in its
/// page and rounded up to pages, wrapping as the kernel's `PAGE_ALIGN` does (so a length near
/// `u64::MAX` acts on nothing).
fn mlock_reach(addr: u64, len: u64) -> u64 {
    len.wrapping_add(addr & (PAGE_SIZE - 1)).wrapping_add(PAGE_SIZE - 1) & !(PAGE_SIZE - 1)
}

/// Whether this kernel has memory failure: its sysctls exist only with `CONFIG_MEMORY_FAILURE`.
fn kernel_has_memory_failure() -> bool {
    std::path::Path::new("/proc/sys/vm/memory_failure_recovery").exists()
}

/// Whether the runner has `CAP_IPC_LOCK` (bit 14 of `CapEff` in `/proc/self/status`): without
/// it, `MAP_LOCKED` is bounded by `RLIMIT_MEMLOCK`, which differs between hosts and users.
fn runner_has_cap_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return false };
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|caps| u64::from_str_radix(caps.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// The real-kernel backend for one script.
#[derive(Debug)]
pub struct KvmBackend {
    kvm: Kvm,
    fds: FdTable,
    regions: Regions,
    memslot_bytes: u64,
}

fn errno<T>(result: Result<T, Errno>) -> BResult<T> {
    result.map_err(Failure::Errno)
}

fn kvm_error(error: kvm_ioctls::Error) -> Failure {
    Failure::Errno(Errno::from_raw(error.errno()))
}

fn skip<T>(reason: impl Into<String>) -> BResult<T> {
    Err(Failure::Skip(reason.into()))
}

impl KvmBackend {
    /// Opens `/dev/kvm` and a fresh script descriptor table with 0, 1 and 2 open on
    /// `/dev/null`.
    pub fn open() -> Result<KvmBackend, String> {
        let kvm = Kvm::new().map_err(|error| format!("cannot open /dev/kvm: {error}"))?;
        let mut fds = FdTable::default();
        for _ in 0..3 {
            let null = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map_err(|error| format!("cannot open /dev/null: {error}"))?;
            fds.install(Object::Stream(OwnedFd::from(null)));
        }
        Ok(KvmBackend { kvm, fds, regions: Regions::default(), memslot_bytes: 0 })
    }

    /// The real descriptor for a script descriptor (-1 if closed).
    fn raw(&self, fd: i32) -> i32 {
        self.fds.raw(fd)
    }

    /// `Some(skip)` if `fd` is a standard stream, whose identity differs between hosts.
    fn stream_skip<T>(&self, fd: i32) -> Option<BResult<T>> {
        matches!(self.fds.get(fd), Some(Object::Stream(_))).then(|| skip(STREAM_SKIP))
    }

    /// Whether a memslot call could pass every check the kernel makes before allocating the
    /// slot's metadata (so performing it may cost kernel memory in proportion to its size).
    /// Only decides whether to perform the call; the kernel gives the answer.
    fn memslot_may_allocate(region: &MemoryRegion2) -> bool {
        let size = region.memory_size;
        let gpa = region.guest_phys_addr;
        size != 0
            && size % PAGE_SIZE == 0
            && gpa % PAGE_SIZE == 0
            && size >> 12 <= KVM_MEM_MAX_NR_PAGES
            && gpa.checked_add(size).is_some_and(|end| end <= GPA_LIMIT)
    }

    /// Whether `[offset, offset + len)` lies inside the file's size, so that an allocating
    /// `fallocate` of a guest_memfd would really allocate (guest_memfd refuses ranges past
    /// `i_size` before allocating anything).
    fn fits_in_file(&self, fd: i32, offset: i64, len: i64) -> bool {
        // SAFETY: `stat` is a plain-old-data out-parameter of the right type.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `stat` is a valid out-pointer for the call.
        let known = unsafe { libc::fstat(self.raw(fd), &mut stat) } == 0;
        !known || offset.checked_add(len).is_some_and(|end| offset >= 0 && end <= stat.st_size)
    }

    /// Keeps `[start, start + len)`, just unmapped by the script, reserved with no access, so
    /// nothing of the runner is placed there while the script may still name it.
    fn reserve_unmapped(&mut self, start: u64, len: u64) {
        let addr = sys::mmap_anonymous(Some(start), len, libc::PROT_NONE);
        match addr {
            Ok(addr) if addr == start => self.regions.add(start, len, RegionKind::Unmapped),
            // SAFETY: a kernel without MAP_FIXED_NOREPLACE placed it elsewhere: undo that.
            Ok(elsewhere) => unsafe {
                libc::munmap(elsewhere as *mut libc::c_void, len as usize);
            },
            Err(_) => {}
        }
    }

    /// Runs `call(addr, len)` (madvise, mlock, munlock: calls that act on the VMAs of a range)
    /// where the range holds only this script's memory or nothing, with this backend's
    /// reservations in the range released: the ranges the script unmapped and the guard gaps are
    /// `PROT_NONE` mappings here, which such a call would see where the script's own process has
    /// holes. They are reserved again after the call.
    /// `reach` is the length the call acts on (mlock's rounded length may wrap to 0).
    fn with_holes(&mut self, addr: u64, len: u64, reach: u64, call: impl FnOnce(u64, u64) -> i32) -> BResult<()> {
        if !self.regions.may_touch(addr, reach) {
            return skip("the range holds memory of the runner on this host");
        }
        let end = addr.saturating_add(page_align(reach));
        let released = self.regions.take_unmapped_within(addr & !(PAGE_SIZE - 1), end);
        for &(start, end) in &released {
            // SAFETY: the range is this backend's own PROT_NONE reservation.
            unsafe { libc::munmap(start as *mut libc::c_void, (end - start) as usize) };
        }
        let result = errno(sys::check(i64::from(call(addr, len)))).map(drop);
        for (start, end) in released {
            self.reserve_unmapped(start, end - start);
        }
        result
    }

    /// `read`, `write`, `pread` or `pwrite` of `len` bytes on script descriptor `fd`: `io` gets
    /// the real descriptor and a buffer of `len` bytes. The standard streams skip.
    fn buffered_io(
        &mut self,
        fd: i32,
        len: u64,
        io: impl FnOnce(i32, *mut libc::c_void, usize) -> isize,
    ) -> BResult<u64> {
        if let Some(skipped) = self.stream_skip(fd) {
            return skipped;
        }
        let mut buffer = Self::io_buffer(len)?;
        let ret = io(self.raw(fd), buffer.ptr(), len as usize);
        errno(sys::check(ret as i64)).map(|n| n as u64)
    }

    /// A buffer for `read`/`write` of `len` bytes: memory the kernel may fill or read.
    fn io_buffer(len: u64) -> BResult<IoBuffer> {
        if len <= IO_BUFFER_MAX {
            return Ok(IoBuffer::Heap(vec![0u8; len as usize]));
        }
        let Ok(addr) = sys::mmap_anonymous(None, len, libc::PROT_READ | libc::PROT_WRITE) else {
            return skip(format!("cannot reserve a {len}-byte buffer on this host"));
        };
        let addr = addr as *mut libc::c_void;
        Ok(IoBuffer::Mapped { addr, len: len as usize })
    }
}

impl KvmBackend {
    /// `KVM_MEMORY_ENCRYPT_OP` with `cmd` on script descriptor `vm` (kvm-ioctls'
    /// `encrypt_op_sev` for a VM, the raw ioctl for anything else, so the kernel answers): the
    /// errno with the firmware status the kernel left in `cmd.error`.
    fn encrypt_op(&self, vm: i32, cmd: &mut kvm_sev_cmd) -> BResult<()> {
        let result = match self.fds.get(vm) {
            Some(Object::Vm(vm)) => vm.encrypt_op_sev(cmd).map_err(|error| Errno::from_raw(error.errno())),
            _ => sys::memory_encrypt_op(self.raw(vm), cmd).map(drop),
        };
        result.map_err(|errno| Failure::Sev { errno, fw_error: cmd.error })
    }

    /// A TDX `KVM_MEMORY_ENCRYPT_OP` with `cmd` on script descriptor `fd` (kvm-ioctls'
    /// `encrypt_op` for a VM, the raw ioctl for a vCPU or anything else, so the kernel dispatches
    /// and answers): the errno with the SEAMCALL status the kernel left in `cmd.hw_error`.
    fn tdx_op(&self, fd: i32, cmd: &mut kvm_tdx_cmd) -> BResult<()> {
        let result = match self.fds.get(fd) {
            Some(Object::Vm(vm)) => {
                // SAFETY: `cmd` is a live `struct kvm_tdx_cmd`, which is what
                // KVM_MEMORY_ENCRYPT_OP reads and writes back on a TDX VM; its `data` points at
                // parameters the caller keeps alive for the call (or is an immediate, or 0).
                unsafe { vm.encrypt_op(cmd as *mut kvm_tdx_cmd) }.map_err(|e| Errno::from_raw(e.errno()))
            }
            _ => sys::memory_encrypt_op_tdx(self.raw(fd), cmd).map(drop),
        };
        result.map_err(|errno| Failure::tdx(errno, cmd.hw_error))
    }

    /// The real descriptor for a script's `sev_fd`, as the `u32` of `struct kvm_sev_cmd`.
    fn raw_sev_fd(&self, sev_fd: i32) -> u32 {
        self.raw(sev_fd) as u32
    }
}

/// Memory mapped for one call (a `bytes=` source), unmapped when dropped.
struct Staged {
    addr: u64,
    len: u64,
}

impl Staged {
    /// `len` bytes of fresh memory with `bytes` at the start (`len` >= `bytes.len()`).
    fn new(bytes: &[u8], len: u64) -> BResult<Staged> {
        let Ok(addr) = sys::mmap_anonymous(None, len, libc::PROT_READ | libc::PROT_WRITE) else {
            return skip(format!("cannot map {len} bytes for the source on this host"));
        };
        // SAFETY: the mapping was just made, is `len` >= `bytes.len()` bytes long, writable, and
        // nothing else refers to it.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), addr as *mut u8, bytes.len()) };
        Ok(Staged { addr, len })
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping made in `Staged::new`, which nothing refers to any more.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len as usize) };
    }
}

/// Memory handed to `read`/`write`.
enum IoBuffer {
    Heap(Vec<u8>),
    Mapped { addr: *mut libc::c_void, len: usize },
}

impl IoBuffer {
    fn ptr(&mut self) -> *mut libc::c_void {
        match self {
            IoBuffer::Heap(vec) => vec.as_mut_ptr().cast(),
            IoBuffer::Mapped { addr, .. } => *addr,
        }
    }
}

impl Drop for IoBuffer {
    fn drop(&mut self) {
        if let IoBuffer::Mapped { addr, len } = *self {
            // SAFETY: unmapping the reservation made in `io_buffer`.
            unsafe { libc::munmap(addr, len) };
        }
    }
}

impl Drop for KvmBackend {
    fn drop(&mut self) {
        for region in self.regions.take_all() {
            // SAFETY: the range was mapped by this backend and nothing else refers to it.
            unsafe { libc::munmap(region.start as *mut libc::c_void, (region.end - region.start) as usize) };
        }
        self.fds.clear();
    }
}

impl Backend for KvmBackend {
    fn create_vm(&mut self, vm_type: u64) -> BResult<i32> {
        let vm = self.kvm.create_vm_with_type(vm_type).map_err(kvm_error)?;
        Ok(self.fds.install(Object::Vm(vm)))
    }

    fn check_extension(&mut self, vm: Option<i32>, cap: u64) -> BResult<i64> {
        match vm {
            None => Ok(i64::from(self.kvm.check_extension_raw(cap as libc::c_ulong))),
            Some(vm) => match self.fds.get(vm) {
                Some(Object::Vm(vm)) => {
                    let value = vm.check_extension_raw(cap as libc::c_ulong);
                    if value < 0 {
                        return Err(Failure::Errno(sys::last_errno()));
                    }
                    Ok(i64::from(value))
                }
                _ => errno(sys::ioctl_with_val(self.raw(vm), sys::KVM_CHECK_EXTENSION, cap)),
            },
        }
    }

    fn create_guest_memfd(&mut self, vm: i32, size: u64, flags: u64) -> BResult<i32> {
        let mut args = kvm_create_guest_memfd { size, flags, ..Default::default() };
        let fd = match self.fds.get(vm) {
            Some(Object::Vm(vm)) => vm.create_guest_memfd(args).map_err(kvm_error)?,
            _ => errno(sys::ioctl_with_mut(self.raw(vm), sys::KVM_CREATE_GUEST_MEMFD, &mut args))? as i32,
        };
        // SAFETY: the kernel just returned this new descriptor and nothing else owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(self.fds.install(Object::GuestMemfd(owned)))
    }

    fn set_user_memory_region2(&mut self, vm: i32, region: &MemoryRegion2) -> BResult<()> {
        let creates = Self::memslot_may_allocate(region);
        if creates && region.memory_size > MEMSLOT_BYTES_MAX {
            return skip(format!(
                "a memslot of {} GiB would cost about {} MiB of kernel memory on this host",
                region.memory_size >> 30,
                ((region.memory_size >> 12) * 10) >> 20
            ));
        }
        if creates && self.memslot_bytes + region.memory_size > MEMSLOT_BYTES_BUDGET {
            return skip(format!(
                "this script's memslots would exceed {} GiB on this host",
                MEMSLOT_BYTES_BUDGET >> 30
            ));
        }
        let guest_memfd = match self.fds.get(region.guest_memfd as i32) {
            Some(object) => object.raw() as u32,
            None => u32::MAX,
        };
        let mut raw = kvm_userspace_memory_region2 {
            slot: region.slot,
            flags: region.flags,
            guest_phys_addr: region.guest_phys_addr,
            memory_size: region.memory_size,
            userspace_addr: region.userspace_addr,
            guest_memfd_offset: region.guest_memfd_offset,
            guest_memfd,
            ..Default::default()
        };
        match self.fds.get(vm) {
            // SAFETY: kvm-ioctls asks that `userspace_addr` stay valid while the slot exists,
            // because a running guest would access it. This backend never runs a vCPU, so KVM
            // never touches that memory; the call only records the slot.
            Some(Object::Vm(vm)) => unsafe { vm.set_user_memory_region2(raw) }.map_err(kvm_error)?,
            _ => {
                errno(sys::ioctl_with_mut(self.raw(vm), sys::KVM_SET_USER_MEMORY_REGION2, &mut raw))?;
            }
        }
        if creates {
            self.memslot_bytes += region.memory_size;
        }
        Ok(())
    }

    fn set_memory_attributes(&mut self, vm: i32, address: u64, size: u64, attributes: u64, flags: u64) -> BResult<()> {
        let mut attrs = kvm_memory_attributes { address, size, attributes, flags };
        match self.fds.get(vm) {
            Some(Object::Vm(vm)) => vm.set_memory_attributes(attrs).map_err(kvm_error),
            _ => errno(sys::ioctl_with_mut(self.raw(vm), sys::KVM_SET_MEMORY_ATTRIBUTES, &mut attrs)).map(drop),
        }
    }

    fn fallocate(&mut self, fd: i32, mode: i32, offset: i64, len: i64) -> BResult<()> {
        // guest_memfd allocates only for exactly FALLOC_FL_KEEP_SIZE on a page-aligned range
        // inside the file; every other request fails before allocating anything.
        let allocates = mode == FALLOC_FL_KEEP_SIZE && (offset | len) as u64 % PAGE_SIZE == 0;
        if allocates && len > FALLOCATE_ALLOC_MAX as i64 && self.fits_in_file(fd, offset, len) {
            return skip(format!(
                "allocating more than {} GiB at once is not done on this host",
                FALLOCATE_ALLOC_MAX >> 30
            ));
        }
        // SAFETY: fallocate takes no pointers.
        errno(sys::check(i64::from(unsafe { libc::fallocate(self.raw(fd), mode, offset, len) }))).map(drop)
    }

    fn fstat(&mut self, fd: i32) -> BResult<Stat> {
        if let Some(skipped) = self.stream_skip(fd) {
            return skipped;
        }
        // SAFETY: `stat` is a plain-old-data out-parameter of the right type.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `stat` is a valid out-pointer for the call.
        errno(sys::check(i64::from(unsafe { libc::fstat(self.raw(fd), &mut stat) })))?;
        Ok(Stat { size: stat.st_size, blksize: stat.st_blksize, blocks: stat.st_blocks, mode: stat.st_mode })
    }

    fn ftruncate(&mut self, fd: i32, size: i64) -> BResult<()> {
        // SAFETY: ftruncate takes no pointers.
        errno(sys::check(i64::from(unsafe { libc::ftruncate(self.raw(fd), size) }))).map(drop)
    }

    fn read(&mut self, fd: i32, len: u64) -> BResult<u64> {
        // SAFETY: `buf` holds `len` writable bytes (`buffered_io`).
        self.buffered_io(fd, len, |fd, buf, len| unsafe { libc::read(fd, buf, len) })
    }

    fn write(&mut self, fd: i32, len: u64) -> BResult<u64> {
        // SAFETY: `buf` holds `len` readable bytes (`buffered_io`).
        self.buffered_io(fd, len, |fd, buf, len| unsafe { libc::write(fd, buf, len) })
    }

    fn pread(&mut self, fd: i32, len: u64, offset: i64) -> BResult<u64> {
        // SAFETY: `buf` holds `len` writable bytes (`buffered_io`).
        self.buffered_io(fd, len, |fd, buf, len| unsafe { libc::pread(fd, buf, len, offset) })
    }

    fn pwrite(&mut self, fd: i32, len: u64, offset: i64) -> BResult<u64> {
        // SAFETY: `buf` holds `len` readable bytes (`buffered_io`).
        self.buffered_io(fd, len, |fd, buf, len| unsafe { libc::pwrite(fd, buf, len, offset) })
    }

    fn lseek(&mut self, fd: i32, offset: i64, whence: i32) -> BResult<u64> {
        if let Some(skipped) = self.stream_skip(fd) {
            return skipped;
        }
        // SAFETY: lseek takes no pointers.
        errno(sys::check(unsafe { libc::lseek(self.raw(fd), offset, whence) })).map(|n| n as u64)
    }

    fn mmap(&mut self, fd: i32, len: u64, offset: i64, prot: u64, flags: u64) -> BResult<u64> {
        if flags & MMAP_FLAGS_REFUSED != 0 {
            return skip("MAP_FIXED and MAP_FIXED_NOREPLACE are not passed on this host");
        }
        if flags & MMAP_FLAGS_POPULATING != 0 && len > POPULATE_BYTES_MAX {
            return skip(format!(
                "populating more than {} MiB at once is not done on this host",
                POPULATE_BYTES_MAX >> 20
            ));
        }
        if flags & libc::MAP_LOCKED as u64 != 0 && !runner_has_cap_ipc_lock() {
            return skip("MAP_LOCKED is bounded by this user's RLIMIT_MEMLOCK on this host (no CAP_IPC_LOCK)");
        }
        // The guard gap above the mapping (docs/script-format.md, "Address space"): reserve the
        // mapping's length plus the gap, free the head and pass it as a hint (never MAP_FIXED),
        // so the kernel places the mapping there if nothing took the head meanwhile; the tail
        // stays reserved. A hint changes where the kernel maps, never what it answers.
        let aligned = page_align(len);
        let reserved = (len != 0 && aligned <= GUARD_RESERVE_MAX)
            .then(|| sys::mmap_anonymous(None, aligned + GUARD_GAP, libc::PROT_NONE).ok())
            .flatten();
        if let Some(head) = reserved {
            // SAFETY: the head of this backend's own fresh reservation.
            unsafe { libc::munmap(head as *mut libc::c_void, aligned as usize) };
        }
        let hint = reserved.unwrap_or(0) as *mut libc::c_void;
        // SAFETY: a hint without MAP_FIXED: the kernel maps at the hint only if it is free, else
        // wherever it finds room, so no existing memory of the runner is replaced.
        let addr = unsafe { libc::mmap(hint, len as usize, prot as i32, flags as i32, self.raw(fd), offset) };
        let failed = addr == libc::MAP_FAILED;
        let errno = sys::last_errno();
        if let Some(head) = reserved {
            let tail = head + aligned;
            if !failed && addr as u64 == head {
                self.regions.add(tail, GUARD_GAP, RegionKind::Unmapped);
            } else {
                // SAFETY: the tail of this backend's own reservation, which nothing else maps.
                unsafe { libc::munmap(tail as *mut libc::c_void, GUARD_GAP as usize) };
            }
        }
        if failed {
            return Err(Failure::Errno(errno));
        }
        self.regions.add(addr as u64, len, RegionKind::Mapping);
        Ok(addr as u64)
    }

    fn munmap(&mut self, addr: u64, len: u64) -> BResult<()> {
        if !self.regions.may_touch(addr, len) {
            return skip("the range holds memory of the runner on this host");
        }
        let end = addr.saturating_add(page_align(len));
        let owned = self.regions.owned_within(addr, end);
        // SAFETY: `may_touch` found only this script's mappings or nothing in the range.
        errno(sys::check(i64::from(unsafe { libc::munmap(addr as *mut libc::c_void, len as usize) })))?;
        self.regions.remove(addr, end);
        for (start, end) in owned {
            self.reserve_unmapped(start, end - start);
        }
        Ok(())
    }

    fn store(&mut self, addr: u64, bytes: &[u8]) -> BResult<()> {
        if !self.regions.may_touch(addr, bytes.len() as u64) {
            return skip("the range holds memory of the runner on this host");
        }
        // SAFETY: `may_touch` found only this script's mappings or nothing in the range.
        let result = unsafe { probe::store(addr, bytes) }.map_err(|error| Failure::Skip(error.0))?;
        result.map_err(Failure::Signal)
    }

    fn load(&mut self, addr: u64, len: u64) -> BResult<Vec<u8>> {
        if len > LOAD_LEN_MAX {
            return skip(format!("loads of more than {LOAD_LEN_MAX} bytes are not supported"));
        }
        if !self.regions.may_touch(addr, len) {
            return skip("the range holds memory of the runner on this host");
        }
        let result = probe::load(addr, len as usize).map_err(|error| Failure::Skip(error.0))?;
        result.map_err(Failure::Signal)
    }

    fn madvise(&mut self, addr: u64, len: u64, advice: i32) -> BResult<()> {
        if MADVISE_MEMORY_FAILURE.contains(&advice) && kernel_has_memory_failure() {
            return skip("MADV_HWPOISON and MADV_SOFT_OFFLINE are not passed on a host with memory failure");
        }
        let populate = advice == libc::MADV_POPULATE_READ || advice == libc::MADV_POPULATE_WRITE;
        if populate && len > POPULATE_BYTES_MAX {
            return skip(format!(
                "populating more than {} MiB at once is not done on this host",
                POPULATE_BYTES_MAX >> 20
            ));
        }
        // SAFETY: `with_holes` found only this script's mappings or nothing in the range.
        self.with_holes(addr, len, len, |addr, len| unsafe {
            libc::madvise(addr as *mut libc::c_void, len as usize, advice)
        })
    }

    fn mlock(&mut self, addr: u64, len: u64) -> BResult<()> {
        if !runner_has_cap_ipc_lock() {
            return skip("mlock is bounded by this user's RLIMIT_MEMLOCK on this host (no CAP_IPC_LOCK)");
        }
        let reach = mlock_reach(addr, len);
        if reach > POPULATE_BYTES_MAX {
            return skip(format!(
                "locking more than {} MiB at once is not done on this host",
                POPULATE_BYTES_MAX >> 20
            ));
        }
        // SAFETY: `with_holes` found only this script's mappings or nothing in the range.
        self.with_holes(addr, len, reach, |addr, len| unsafe { libc::mlock(addr as *const libc::c_void, len as usize) })
    }

    fn munlock(&mut self, addr: u64, len: u64) -> BResult<()> {
        let reach = mlock_reach(addr, len);
        // SAFETY: `with_holes` found only this script's mappings or nothing in the range.
        self.with_holes(addr, len, reach, |addr, len| unsafe {
            libc::munlock(addr as *const libc::c_void, len as usize)
        })
    }

    fn close(&mut self, fd: i32) -> BResult<()> {
        let raw = match self.fds.remove(fd) {
            Some(object @ (Object::Vm(_) | Object::Vcpu(_))) => {
                // kvm-ioctls' VmFd and VcpuFd close their descriptor when dropped and discard
                // the result. Close a duplicate last instead, so the final close (the one that
                // releases the VM or vCPU) is the one whose result the script sees.
                // SAFETY: dup takes no pointers; the object's descriptor is open.
                let raw = unsafe { libc::dup(object.raw()) };
                drop(object);
                if raw < 0 {
                    return Err(Failure::Errno(sys::last_errno()));
                }
                raw
            }
            Some(Object::Stream(fd) | Object::GuestMemfd(fd) | Object::Device(fd)) => fd.into_raw_fd(),
            None => -1,
        };
        // SAFETY: `raw` is owned here (or -1), and is not used again.
        errno(sys::check(i64::from(unsafe { libc::close(raw) }))).map(drop)
    }

    fn map_anonymous(&mut self, len: u64) -> BResult<u64> {
        let addr = errno(sys::mmap_anonymous(None, len, libc::PROT_READ | libc::PROT_WRITE))?;
        self.regions.add(addr, len, RegionKind::Anonymous);
        Ok(addr)
    }

    fn enable_cap(&mut self, vm: i32, cap: u32, flags: u32, args: [u64; 4]) -> BResult<()> {
        let mut cap = kvm_enable_cap { cap, flags, args, ..Default::default() };
        match self.fds.get(vm) {
            Some(Object::Vm(vm)) => vm.enable_cap(&cap).map_err(kvm_error),
            _ => errno(sys::ioctl_with_mut(self.raw(vm), sys::KVM_ENABLE_CAP, &mut cap)).map(drop),
        }
    }

    fn open_dev_sev(&mut self) -> BResult<i32> {
        let file = std::fs::OpenOptions::new().read(true).write(true).open("/dev/sev");
        match file {
            Ok(file) => Ok(self.fds.install(Object::Device(OwnedFd::from(file)))),
            Err(error) => Err(Failure::Errno(Errno::from_raw(error.raw_os_error().unwrap_or(libc::EIO)))),
        }
    }

    fn sev_init2(&mut self, vm: i32, params: &kvm_sev_init) -> BResult<()> {
        let mut params = *params;
        let mut cmd = kvm_sev_cmd {
            id: sev_cmd_id_KVM_SEV_INIT2,
            data: &mut params as *mut kvm_sev_init as u64,
            sev_fd: u32::MAX,
            ..Default::default()
        };
        self.encrypt_op(vm, &mut cmd)
    }

    fn snp_launch_start(&mut self, vm: i32, sev_fd: i32, params: &kvm_sev_snp_launch_start) -> BResult<()> {
        let mut params = *params;
        let mut cmd = kvm_sev_cmd {
            id: sev_cmd_id_KVM_SEV_SNP_LAUNCH_START,
            data: &mut params as *mut kvm_sev_snp_launch_start as u64,
            sev_fd: self.raw_sev_fd(sev_fd),
            ..Default::default()
        };
        self.encrypt_op(vm, &mut cmd)
    }

    fn snp_launch_update(
        &mut self,
        vm: i32,
        sev_fd: i32,
        params: &kvm_sev_snp_launch_update,
        bytes: Option<&[u8]>,
    ) -> BResult<LaunchUpdated> {
        let mut params = *params;
        let staged = match bytes {
            Some(bytes) => Some(Staged::new(bytes, staging_len(params.len, bytes.len()))?),
            None => None,
        };
        if let Some(staged) = &staged {
            params.uaddr = staged.addr;
        } else if u32::from(params.type_) == KVM_SEV_SNP_PAGE_TYPE_CPUID
            && !self.regions.may_touch(params.uaddr, params.len)
        {
            // A CPUID page the firmware rejects is written back to the source.
            return skip("the range holds memory of the runner on this host");
        }
        let uaddr_in = params.uaddr;
        let mut cmd = kvm_sev_cmd {
            id: sev_cmd_id_KVM_SEV_SNP_LAUNCH_UPDATE,
            data: &mut params as *mut kvm_sev_snp_launch_update as u64,
            sev_fd: self.raw_sev_fd(sev_fd),
            ..Default::default()
        };
        self.encrypt_op(vm, &mut cmd)?;
        drop(staged);
        Ok(LaunchUpdated { gfn_start: params.gfn_start, len: params.len, uaddr: params.uaddr, uaddr_in })
    }

    fn snp_launch_finish(
        &mut self,
        vm: i32,
        sev_fd: i32,
        params: &kvm_sev_snp_launch_finish,
        id_block: Option<&[u8]>,
    ) -> BResult<()> {
        let mut params = *params;
        let mut block = vec![0u8; KVM_SEV_SNP_ID_BLOCK_SIZE as usize];
        let auth = vec![0u8; KVM_SEV_SNP_ID_AUTH_SIZE as usize];
        if let Some(id_block) = id_block {
            for (to, from) in block.iter_mut().zip(id_block) {
                *to = *from;
            }
            params.id_block_en = 1;
            params.id_block_uaddr = block.as_ptr() as u64;
            params.id_auth_uaddr = auth.as_ptr() as u64;
        }
        let mut cmd = kvm_sev_cmd {
            id: sev_cmd_id_KVM_SEV_SNP_LAUNCH_FINISH,
            data: &mut params as *mut kvm_sev_snp_launch_finish as u64,
            sev_fd: self.raw_sev_fd(sev_fd),
            ..Default::default()
        };
        self.encrypt_op(vm, &mut cmd)
    }

    fn tdx_capabilities(&mut self, vm: i32, nent: u32, flags: u32) -> BResult<TdxCaps> {
        let mut bytes = TdxCaps::request(nent);
        let mut cmd = kvm_tdx_cmd { id: KVM_TDX_CAPABILITIES, flags, data: bytes.as_mut_ptr() as u64, hw_error: 0 };
        self.tdx_op(vm, &mut cmd)?;
        Ok(TdxCaps::from_reply(&bytes))
    }

    fn tdx_init_vm(
        &mut self,
        vm: i32,
        flags: u32,
        init_vm: &kvm_tdx_init_vm,
        cpuid: &[kvm_cpuid_entry2],
    ) -> BResult<()> {
        let mut bytes = init_vm.with_cpuid(cpuid);
        let mut cmd = kvm_tdx_cmd { id: KVM_TDX_INIT_VM, flags, data: bytes.as_mut_ptr() as u64, hw_error: 0 };
        self.tdx_op(vm, &mut cmd)
    }

    fn tdx_init_vcpu(&mut self, vcpu: i32, flags: u32, rcx: u64) -> BResult<()> {
        let mut cmd = kvm_tdx_cmd { id: KVM_TDX_INIT_VCPU, flags, data: rcx, hw_error: 0 };
        self.tdx_op(vcpu, &mut cmd)
    }

    fn tdx_init_mem_region(
        &mut self,
        vcpu: i32,
        flags: u32,
        region: &kvm_tdx_init_mem_region,
        bytes: Option<&[u8]>,
    ) -> BResult<TdxRegionDone> {
        let mut region = *region;
        // The kernel only reads the source (a read-only pin), so any address may be passed.
        let staged = match bytes {
            Some(bytes) => {
                Some(Staged::new(bytes, staging_len(region.nr_pages.saturating_mul(PAGE_SIZE), bytes.len()))?)
            }
            None => None,
        };
        if let Some(staged) = &staged {
            region.source_addr = staged.addr;
        }
        let source_in = region.source_addr;
        let mut cmd = kvm_tdx_cmd {
            id: KVM_TDX_INIT_MEM_REGION,
            flags,
            data: &mut region as *mut kvm_tdx_init_mem_region as u64,
            hw_error: 0,
        };
        let error = match self.tdx_op(vcpu, &mut cmd) {
            Ok(()) => None,
            Err(Failure::Tdx { errno, hw_error, .. }) => Some((errno, hw_error)),
            Err(other) => return Err(other),
        };
        drop(staged);
        Ok(TdxRegionDone { region, source_in, error })
    }

    fn tdx_finalize_vm(&mut self, vm: i32, flags: u32) -> BResult<()> {
        let mut cmd = kvm_tdx_cmd { id: KVM_TDX_FINALIZE_VM, flags, data: 0, hw_error: 0 };
        self.tdx_op(vm, &mut cmd)
    }

    fn tdx_state(&mut self, _vm: i32) -> BResult<TdxVmState> {
        skip(SIMULATOR_ONLY)
    }

    fn inject_tdx(&mut self, _leaf: u16, _status: u64, _count: u32, _after: u32) -> BResult<()> {
        skip(SIMULATOR_ONLY)
    }

    fn create_vcpu(&mut self, vm: i32, id: u64) -> BResult<i32> {
        let object = match self.fds.get(vm) {
            Some(Object::Vm(vm)) => Object::Vcpu(vm.create_vcpu(id).map_err(kvm_error)?),
            _ => {
                let fd = errno(sys::ioctl_with_val(self.raw(vm), sys::KVM_CREATE_VCPU, id))? as i32;
                // SAFETY: the kernel just returned this new descriptor and nothing else owns it.
                Object::Device(unsafe { OwnedFd::from_raw_fd(fd) })
            }
        };
        Ok(self.fds.install(object))
    }

    fn guest_store(&mut self, _vcpu: i32, _gpa: u64, _bytes: &[u8], _private: Option<bool>) -> BResult<()> {
        skip(GUEST_SKIP)
    }

    fn guest_load(&mut self, _vcpu: i32, _gpa: u64, _len: u64, _private: Option<bool>) -> BResult<Vec<u8>> {
        skip(GUEST_SKIP)
    }

    /// The real `KVM_PRE_FAULT_MEMORY` on the vCPU: a host ioctl, run whatever the host's MMU
    /// (on this machine's shadow-paging PVM it is ENOSPC before the first memslot and
    /// EOPNOTSUPP after, as the `v6.18-pvm` profile models). Success is the size left in the
    /// updated `range.size`.
    fn pre_fault_memory(&mut self, vcpu: i32, gpa: u64, size: u64) -> BResult<u64> {
        if let Some(skipped) = self.stream_skip(vcpu) {
            return skipped;
        }
        let mut range = kvm_bindings::kvm_pre_fault_memory { gpa, size, ..Default::default() };
        errno(sys::ioctl_with_mut(self.raw(vcpu), sys::KVM_PRE_FAULT_MEMORY, &mut range))?;
        Ok(range.size)
    }

    fn pvalidate(&mut self, _vcpu: i32, _gpa: u64, _size_2m: bool, _validate: bool) -> BResult<u64> {
        skip(GUEST_SKIP)
    }

    fn rmpadjust(&mut self, _vcpu: i32, _gpa: u64, _vmsa: bool) -> BResult<u64> {
        skip(GUEST_SKIP)
    }

    fn ghcb_register(&mut self, _vcpu: i32, _gpa: u64) -> BResult<GhcbAnswer> {
        skip(GUEST_SKIP)
    }

    fn psc(&mut self, _vcpu: i32, _ghcb: u64, _gpa: u64, _npages: u16, _op: u8, _size_2m: bool) -> BResult<GhcbAnswer> {
        skip(GUEST_SKIP)
    }

    fn psc_msr(&mut self, _vcpu: i32, _gpa: u64, _op: u8) -> BResult<GhcbAnswer> {
        skip(GUEST_SKIP)
    }

    fn complete_hypercall(&mut self, _vcpu: i32, _ret: u64) -> BResult<Completion> {
        skip(GUEST_SKIP)
    }

    fn tdx_shared_bit(&mut self, _vcpu: i32) -> BResult<u64> {
        skip(GUEST_SKIP)
    }

    fn tdx_accept(&mut self, _vcpu: i32, _rcx: u64) -> BResult<u64> {
        skip(GUEST_SKIP)
    }

    fn tdx_map_gpa(&mut self, _vcpu: i32, _gpa: u64, _size: u64) -> BResult<TdvmcallAnswer> {
        skip(GUEST_SKIP)
    }

    fn queue_event(&mut self, _vcpu: i32) -> BResult<()> {
        skip(SIMULATOR_ONLY)
    }

    fn ap_create(
        &mut self,
        _vcpu: i32,
        _apic_id: u32,
        _gpa: u64,
        _request: u32,
        _sev_features: u64,
    ) -> BResult<GhcbAnswer> {
        skip(GUEST_SKIP)
    }

    fn snp_launch_digest(&mut self, _vm: i32) -> BResult<Vec<u8>> {
        skip(SIMULATOR_ONLY)
    }

    fn inject_snp_firmware(&mut self, _cmd: u32, _ret: u32, _count: u32, _after: u32) -> BResult<()> {
        skip(SIMULATOR_ONLY)
    }

    fn populate(&mut self, _vm: i32, _gpa: u64, _npages: u64, _bytes: Option<&[u8]>) -> BResult<u64> {
        skip(SIMULATOR_ONLY)
    }

    fn inject_memory_failure(&mut self, _fd: i32, _offset: u64) -> BResult<()> {
        skip(SIMULATOR_ONLY)
    }

    fn inject(&mut self, _fault: &str, _count: u64, _after: u64) -> BResult<()> {
        skip(SIMULATOR_ONLY)
    }

    fn warnings(&mut self) -> BResult<u64> {
        skip(SIMULATOR_ONLY)
    }

    fn check_invariants(&mut self) -> BResult<Vec<crate::backend::Violation>> {
        skip(SIMULATOR_ONLY)
    }

    fn dump(&mut self, _target: Option<i32>) -> BResult<Vec<String>> {
        skip(SIMULATOR_ONLY)
    }
}

impl From<Signal> for Failure {
    fn from(signal: Signal) -> Self {
        Failure::Signal(signal)
    }
}
