//! The raw system calls the kvm backend makes where kvm-ioctls has no wrapper (or where the
//! descriptor is not the kind the wrapper's type promises), each returning the kernel's errno.

use std::os::raw::c_ulong;

use gmem_arch::tdx::kvm::kvm_tdx_cmd;
use gmem_mm::Errno;
use kvm_bindings::{
    kvm_create_guest_memfd, kvm_enable_cap, kvm_memory_attributes, kvm_sev_cmd, kvm_userspace_memory_region2,
};

/// `KVMIO`, the ioctl type byte of every KVM ioctl.
const KVMIO: c_ulong = 0xAE;

/// `_IOC(dir, type, nr, size)` as `include/uapi/asm-generic/ioctl.h` defines it.
const fn ioc(dir: c_ulong, nr: c_ulong, size: usize) -> c_ulong {
    (dir << 30) | ((size as c_ulong) << 16) | (KVMIO << 8) | nr
}

const IOC_WRITE: c_ulong = 1;
const IOC_READ: c_ulong = 2;

/// `KVM_CHECK_EXTENSION` = `_IO(KVMIO, 0x03)`.
pub const KVM_CHECK_EXTENSION: c_ulong = ioc(0, 0x03, 0);
/// `KVM_CREATE_VCPU` = `_IO(KVMIO, 0x41)`.
pub const KVM_CREATE_VCPU: c_ulong = ioc(0, 0x41, 0);
/// `KVM_CREATE_GUEST_MEMFD` = `_IOWR(KVMIO, 0xd4, struct kvm_create_guest_memfd)`.
pub const KVM_CREATE_GUEST_MEMFD: c_ulong =
    ioc(IOC_READ | IOC_WRITE, 0xd4, std::mem::size_of::<kvm_create_guest_memfd>());
/// `KVM_SET_USER_MEMORY_REGION2` = `_IOW(KVMIO, 0x49, struct kvm_userspace_memory_region2)`.
pub const KVM_SET_USER_MEMORY_REGION2: c_ulong =
    ioc(IOC_WRITE, 0x49, std::mem::size_of::<kvm_userspace_memory_region2>());
/// `KVM_SET_MEMORY_ATTRIBUTES` = `_IOW(KVMIO, 0xd2, struct kvm_memory_attributes)`.
pub const KVM_SET_MEMORY_ATTRIBUTES: c_ulong = ioc(IOC_WRITE, 0xd2, std::mem::size_of::<kvm_memory_attributes>());

/// `KVM_ENABLE_CAP` = `_IOW(KVMIO, 0xa3, struct kvm_enable_cap)`.
pub const KVM_ENABLE_CAP: c_ulong = ioc(IOC_WRITE, 0xa3, std::mem::size_of::<kvm_enable_cap>());
/// `KVM_MEMORY_ENCRYPT_OP` = `_IOWR(KVMIO, 0xba, unsigned long)`: the size field is the uAPI's
/// `unsigned long`, not the `struct kvm_sev_cmd` the argument points at.
pub const KVM_MEMORY_ENCRYPT_OP: c_ulong = ioc(IOC_READ | IOC_WRITE, 0xba, std::mem::size_of::<c_ulong>());
/// `KVM_PRE_FAULT_MEMORY` = `_IOWR(KVMIO, 0xd5, struct kvm_pre_fault_memory)` (a vCPU ioctl;
/// kvm-ioctls has no wrapper).
pub const KVM_PRE_FAULT_MEMORY: c_ulong =
    ioc(IOC_READ | IOC_WRITE, 0xd5, std::mem::size_of::<kvm_bindings::kvm_pre_fault_memory>());

// The numbers measured on x86-64 (`../shared/reference/kernel-semantics.md` §1).
const _: () = assert!(KVM_CHECK_EXTENSION == 0xAE03);
const _: () = assert!(KVM_CREATE_VCPU == 0xAE41);
const _: () = assert!(KVM_PRE_FAULT_MEMORY == 0xC040_AED5);
const _: () = assert!(KVM_ENABLE_CAP == 0x4068_AEA3);
const _: () = assert!(KVM_MEMORY_ENCRYPT_OP == 0xC008_AEBA);
const _: () = assert!(KVM_CREATE_GUEST_MEMFD == 0xC040_AED4);
const _: () = assert!(KVM_SET_USER_MEMORY_REGION2 == 0x40A0_AE49);
const _: () = assert!(KVM_SET_MEMORY_ATTRIBUTES == 0x4020_AED2);

/// The errno of the last failed call on this thread.
pub fn last_errno() -> Errno {
    Errno::from_raw(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
}

/// Turns a C return value into the value or the errno it signals.
pub fn check(ret: i64) -> Result<i64, Errno> {
    if ret < 0 {
        Err(last_errno())
    } else {
        Ok(ret)
    }
}

/// An ioctl whose argument is a value.
pub fn ioctl_with_val(fd: i32, request: c_ulong, arg: u64) -> Result<i64, Errno> {
    // SAFETY: the argument is passed by value; the kernel does not dereference it for the
    // requests this module issues (KVM_CHECK_EXTENSION, KVM_CREATE_VCPU), and a descriptor that
    // is not a KVM file answers ENOTTY (or EBADF for -1) without touching memory.
    check(i64::from(unsafe { libc::ioctl(fd, request, arg as c_ulong) }))
}

/// An ioctl whose argument is a pointer to `arg`, which the kernel reads (`_IOW`) or reads and
/// writes back (`_IOWR`) with exactly `size_of::<T>()` bytes.
pub fn ioctl_with_mut<T>(fd: i32, request: c_ulong, arg: &mut T) -> Result<i64, Errno> {
    debug_assert_eq!((request >> 16) & 0x3fff, std::mem::size_of::<T>() as c_ulong);
    // SAFETY: `arg` is a live, exclusively borrowed `T` whose size is the one encoded in
    // `request`, so the kernel's copy_from_user/copy_to_user stays inside it.
    check(i64::from(unsafe { libc::ioctl(fd, request, arg as *mut T) }))
}

/// `KVM_MEMORY_ENCRYPT_OP` with a pointer to `cmd`, which the kernel reads and writes back (its
/// `error`); the command's own parameters are at `cmd.data`.
pub fn memory_encrypt_op(fd: i32, cmd: &mut kvm_sev_cmd) -> Result<i64, Errno> {
    // SAFETY: `cmd` is a live, exclusively borrowed `struct kvm_sev_cmd`, the structure
    // sev_mem_enc_ioctl copies in and back out; `cmd.data` is the caller's to keep valid (the
    // kernel copies the parameters from it with copy_from_user, which faults safely otherwise).
    check(i64::from(unsafe { libc::ioctl(fd, KVM_MEMORY_ENCRYPT_OP, cmd as *mut kvm_sev_cmd) }))
}

/// `KVM_MEMORY_ENCRYPT_OP` with a pointer to a TDX command, which the kernel reads and writes
/// back (its `hw_error`); the command's parameters are at `cmd.data` (or `data` is an immediate).
/// On a VM descriptor it is the VM-scope command, on a vCPU descriptor the vCPU-scope one.
pub fn memory_encrypt_op_tdx(fd: i32, cmd: &mut kvm_tdx_cmd) -> Result<i64, Errno> {
    // SAFETY: `cmd` is a live, exclusively borrowed `struct kvm_tdx_cmd`, the structure
    // tdx_vm_ioctl and tdx_vcpu_ioctl copy in and back out; `cmd.data` is the caller's to keep
    // valid (the kernel copies parameters from it with copy_from_user, which faults safely
    // otherwise).
    check(i64::from(unsafe { libc::ioctl(fd, KVM_MEMORY_ENCRYPT_OP, cmd as *mut kvm_tdx_cmd) }))
}

/// A private anonymous mapping of `len` bytes with no swap reservation (`MAP_NORESERVE`), at the
/// kernel's choice of address, or exactly at `at` (`MAP_FIXED_NOREPLACE`, which never replaces
/// an existing mapping). Returns its address.
pub fn mmap_anonymous(at: Option<u64>, len: u64, prot: i32) -> Result<u64, Errno> {
    let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    if at.is_some() {
        flags |= libc::MAP_FIXED_NOREPLACE;
    }
    let hint = at.unwrap_or(0) as *mut libc::c_void;
    // SAFETY: an anonymous mapping either where the kernel finds room or, with
    // MAP_FIXED_NOREPLACE, only where nothing is mapped: no existing memory is replaced.
    let addr = unsafe { libc::mmap(hint, len as usize, prot, flags, -1, 0) };
    if addr == libc::MAP_FAILED {
        return Err(last_errno());
    }
    Ok(addr as u64)
}
