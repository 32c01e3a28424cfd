//! Parity of gmem-uapi with kvm-ioctls 0.25 and kvm-bindings 0.14, checked by the compiler.
//!
//! gmem-uapi promises that VMM code written against `kvm_ioctls::{Kvm, VmFd}` runs on the
//! simulator by changing the import. That holds only while its argument structs *are*
//! kvm-bindings' structs, its constants have the uAPI values, and each mirrored method keeps
//! kvm-ioctls' name, receiver, argument types, `Ok` type and `unsafe`-ness. No run-time test would
//! notice such a drift, so everything below is a type check or a `const` assertion. If parity breaks,
//! this file stops compiling, and the error names the item that drifted. This module has no
//! `#[test]` at all, because every check has already run in the compiler.
//!
//! To extend it when gmem-uapi mirrors another kvm-ioctls call, add one `same_shape!` line. It
//! gives the method path and its signature once, written with `Kvm`, `VmFd`, `VcpuFd` and `E` (the
//! error type). The macro resolves those names once to gmem-uapi's types and once to kvm-ioctls' types,
//! and coerces both crates' method to that `fn` type. So the signatures must match exactly except
//! for the error type, which is `gmem_uapi::Errno` on one side and `kvm_ioctls::Error` on the other.
//! For an `unsafe fn` it also checks that both methods are `unsafe`. Each other kind of item has its
//! own macro below:
//! * a new uAPI struct: a `same_type!` entry;
//! * a re-exported constant: a `same_const!` entry;
//! * a constant kvm-bindings lacks: an assertion in `LOCAL_CONSTANTS_HAVE_THE_UAPI_VALUES`;
//! * a new uAPI-struct conversion: a round trip next to the memslot one;
//! * a trait implemented by a handle or by the error type: a `same_traits!` bound;
//! * a new `Errno`: a `same_errno!` entry.
//!
//! Deliberately not mirrored (if gmem-uapi gains one of these, move it to a `same_shape!` line):
//! * `check_extension(Cap)` and `check_extension_int(Cap)` on `Kvm` and `VmFd`, because `Cap` is
//!   kvm-ioctls' own type and gmem-uapi does not depend on kvm-ioctls (it is Linux-only). Use
//!   `check_extension_raw`.
//! * `AsRawFd for Kvm`, because the simulated `Kvm` opens no `/dev/kvm` descriptor in the simulated
//!   process.
//! * `Kvm::new_with_path`, `Kvm::open_with_cloexec`, `FromRawFd`, every device, irqchip and
//!   dirty-log call, and every vCPU call but `create_vcpu`, `run` and `set_kvm_immediate_exit`
//!   (registers, MSRs, `get_kvm_run`, ...), because the simulator has no counterpart.
//! * The `VcpuExit` variants the simulator never produces (port I/O, debug, system events, MSR
//!   exits, ...). The ones it has are checked by `same_exit_shapes!`: each exists in kvm-ioctls
//!   with the same fields and types, and the simulator has no variant kvm-ioctls lacks. Its
//!   simulator-only calls `VcpuFd::set_guest` and `take_guest_outcomes` (the guest workload
//!   `run` executes), `signal` (a VMM signals the vCPU thread instead) and `set_run_op_limit`
//!   have no counterpart.
//! * `VmFd::encrypt_op<T>(*mut T)`, because a pointer into the caller's memory means nothing to the
//!   simulated kernel, which reads user memory of the simulated process. `encrypt_op_sev` is
//!   mirrored; its `kvm_sev_cmd.data` is an address in the simulated process. kvm-ioctls has no
//!   typed TDX call (a VMM issues `kvm_tdx_cmd` through `encrypt_op`, on the VM or, with its own
//!   ioctl, on the vCPU), so gmem-uapi's `VmFd::encrypt_op_tdx` and `VcpuFd::encrypt_op_tdx`
//!   have no counterpart to compare with.
//!
//! gmem-uapi's typed SEV-SNP helpers (`VmFd::sev_init2`, `snp_launch_start`, `snp_launch_update`,
//! `snp_launch_finish`) and TDX helpers (`VmFd::tdx_capabilities`, `tdx_init_vm`,
//! `tdx_finalize_vm`, `VcpuFd::tdx_init_vcpu`, `tdx_init_mem_region`) have no kvm-ioctls
//! counterpart and are not listed here.
//!
//! The TDX uAPI structures (`kvm_tdx_cmd`, `kvm_tdx_capabilities`, `kvm_tdx_init_vm`,
//! `kvm_tdx_init_mem_region`) and command ids are not in kvm-bindings 0.14 (it has only
//! `KVM_X86_TDX_VM`, checked below), so there is nothing to compare them with here:
//! `gmem_arch::tdx::kvm` defines them with the uAPI layout of `arch/x86/include/uapi/asm/kvm.h`
//! and asserts their sizes and offsets at compile time. When kvm-bindings gains them, they become
//! `same_type!` and `same_const!` entries. The CPUID entries they carry are kvm-bindings'
//! `kvm_cpuid_entry2` (checked below).
#![cfg(target_os = "linux")]

#[cfg(target_arch = "x86_64")] // kvm-ioctls' gate of encrypt_op_sev
use kvm_bindings::kvm_sev_cmd;
use kvm_bindings::{kvm_create_guest_memfd, kvm_memory_attributes, kvm_userspace_memory_region2};
use std::error::Error as StdError;
use std::fmt::Debug;
use std::marker::PhantomData;
use std::os::raw::c_ulong;
use std::os::unix::io::{AsRawFd, RawFd};

/// The gmem-uapi side of every signature.
mod sim {
    pub use gmem_uapi::{Errno as E, HypercallExit, Kvm, VcpuExit, VcpuFd, VmFd};
}

/// The kvm-ioctls side of every signature.
mod real {
    pub use kvm_ioctls::{Error as E, HypercallExit, Kvm, VcpuExit, VcpuFd, VmFd};
}

/// `same_shape!(PATH, SIGNATURE)`: `PATH` coerces to the `fn` type `SIGNATURE` both with `Kvm`,
/// `VmFd`, `VcpuFd` and `E` taken from gmem-uapi and with them taken from kvm-ioctls. For an `unsafe fn`
/// signature, the method must also not be a safe fn on either side. (A safe fn coerces to an
/// `unsafe fn` pointer too, so the check is separate: only a safe fn item implements `Fn`, which
/// makes `must_be_unsafe` ambiguous.)
macro_rules! same_shape {
    ($method:expr, unsafe fn($($arg:ty),* $(,)?) -> $ret:ty) => {
        same_shape!(@each sim, $method, unsafe fn($($arg),*) -> $ret);
        same_shape!(@each real, $method, unsafe fn($($arg),*) -> $ret);
        same_shape!(@unsafe sim, $method, ($($arg),*) -> $ret);
        same_shape!(@unsafe real, $method, ($($arg),*) -> $ret);
    };
    ($method:expr, fn($($arg:ty),* $(,)?) -> $ret:ty) => {
        same_shape!(@each sim, $method, fn($($arg),*) -> $ret);
        same_shape!(@each real, $method, fn($($arg),*) -> $ret);
    };
    (@each $side:ident, $method:expr, $($sig:tt)+) => {
        const _: () = {
            #[allow(unused_imports)]
            use $side::{Kvm, VcpuExit, VcpuFd, VmFd, E};
            let _: $($sig)+ = $method;
        };
    };
    (@unsafe $side:ident, $method:expr, ($($arg:ty),*) -> $ret:ty) => {
        const _: fn() = || {
            #[allow(unused_imports)]
            use $side::{Kvm, VcpuFd, VmFd, E};
            trait AmbiguousIfSafe<Marker> {}
            impl<F> AmbiguousIfSafe<()> for F {}
            struct Safe;
            impl<F: Fn($($arg),*) -> $ret> AmbiguousIfSafe<Safe> for F {}
            fn must_be_unsafe<F: AmbiguousIfSafe<Marker>, Marker>(_: F) {}
            must_be_unsafe($method);
        };
    };
}

/// `same_exit_shapes!(SIDE $(, WILDCARD)?)`: `SIDE::VcpuExit` has the variants the simulator
/// produces, each with kvm-ioctls' fields and types (matched by reference, so every binding's
/// type is named), and `SIDE::HypercallExit` has kvm-ioctls' fields. Without the wildcard the
/// match is exhaustive: the simulator has no variant beyond these.
macro_rules! same_exit_shapes {
    ($side:ident $(, $wildcard:tt)?) => {
        const _: for<'a, 'b> fn(&'b mut $side::VcpuExit<'a>) = |exit| match exit {
            $side::VcpuExit::MmioRead(address, data) => {
                let _: (&mut u64, &mut &mut [u8]) = (address, data);
            }
            $side::VcpuExit::MmioWrite(address, data) => {
                let _: (&mut u64, &mut &[u8]) = (address, data);
            }
            $side::VcpuExit::Hypercall(hypercall) => {
                let _: &mut $side::HypercallExit<'_> = hypercall;
                let $side::HypercallExit { nr, args, ret, longmode } = hypercall;
                let _: (&mut u64, &mut [u64; 6], &mut &mut u64, &mut u32) = (nr, args, ret, longmode);
            }
            $side::VcpuExit::Hlt => {}
            $side::VcpuExit::FailEntry(hardware_entry_failure_reason, cpu) => {
                let _: (&mut u64, &mut u32) = (hardware_entry_failure_reason, cpu);
            }
            $side::VcpuExit::MemoryFault { flags, gpa, size } => {
                let _: (&mut u64, &mut u64, &mut u64) = (flags, gpa, size);
            }
            $(#[allow(unreachable_patterns)] $wildcard => {})?
        };
    };
}

/// `same_traits!(NAME: BOUNDS)`: both crates' `NAME` implement `BOUNDS`.
macro_rules! same_traits {
    ($name:ident: $($bound:tt)+) => {
        const _: fn() = || {
            fn implements<T: $($bound)+>() {}
            implements::<sim::$name>();
            implements::<real::$name>();
        };
    };
}

/// `same_type!(NAME, ...)`: `gmem_uapi::NAME` is `kvm_bindings::NAME` (a re-export, not a copy).
macro_rules! same_type {
    ($($name:ident),* $(,)?) => {
        $(const _: PhantomData<kvm_bindings::$name> = PhantomData::<gmem_uapi::$name>;)*
    };
}

/// `same_const!(NAME, ...)`: `gmem_uapi::consts::NAME` equals `kvm_bindings::NAME`, with the same
/// type (`==` between two integer types does not compile).
macro_rules! same_const {
    ($($name:ident),* $(,)?) => {
        $(const _: () = assert!(
            gmem_uapi::consts::$name == kvm_bindings::$name,
            concat!("gmem_uapi::consts::", stringify!($name), " differs from kvm-bindings"),
        );)*
    };
}

/// `same_errno!(NAME, ...)`: `gmem_uapi::Errno::NAME` has libc's value, the one the real kernel
/// returns and `kvm_ioctls::Error::errno()` reports.
macro_rules! same_errno {
    ($($name:ident),* $(,)?) => {
        $(const _: () = assert!(
            gmem_uapi::Errno::$name.raw() == libc::$name,
            concat!("gmem_uapi::Errno::", stringify!($name), " differs from libc"),
        );)*
    };
}

// ---- Structs: the uAPI structs are kvm-bindings' (the signatures below check kvm-ioctls takes them). ----

same_type!(kvm_create_guest_memfd, kvm_userspace_memory_region2, kvm_memory_attributes);
same_type!(kvm_sev_cmd, kvm_sev_init, kvm_sev_snp_launch_start, kvm_sev_snp_launch_update, kvm_sev_snp_launch_finish);
same_type!(kvm_cpuid_entry2);

// ---- Constants: the re-exports equal kvm-bindings', and the 6.18 ones have the uAPI values. ----

same_const!(
    KVM_CAP_GUEST_MEMFD,
    KVM_CAP_MEMORY_ATTRIBUTES,
    KVM_CAP_MEMORY_FAULT_INFO,
    KVM_CAP_PRE_FAULT_MEMORY,
    KVM_CAP_USER_MEMORY2,
    KVM_CAP_VM_TYPES,
    KVM_CAP_NR_MEMSLOTS,
    KVM_MEMORY_ATTRIBUTE_PRIVATE,
    KVM_MEM_GUEST_MEMFD,
    KVM_MEM_LOG_DIRTY_PAGES,
    KVM_MEM_READONLY,
    KVM_X86_DEFAULT_VM,
    KVM_X86_SEV_ES_VM,
    KVM_X86_SEV_VM,
    KVM_X86_SNP_VM,
    KVM_X86_SW_PROTECTED_VM,
    KVM_X86_TDX_VM,
    KVM_CAP_EXIT_HYPERCALL,
    KVM_MEMORY_EXIT_FLAG_PRIVATE,
    sev_cmd_id_KVM_SEV_INIT2,
    sev_cmd_id_KVM_SEV_SNP_LAUNCH_START,
    sev_cmd_id_KVM_SEV_SNP_LAUNCH_UPDATE,
    sev_cmd_id_KVM_SEV_SNP_LAUNCH_FINISH,
    KVM_SEV_SNP_PAGE_TYPE_NORMAL,
    KVM_SEV_SNP_PAGE_TYPE_ZERO,
    KVM_SEV_SNP_PAGE_TYPE_UNMEASURED,
    KVM_SEV_SNP_PAGE_TYPE_SECRETS,
    KVM_SEV_SNP_PAGE_TYPE_CPUID,
    KVM_SEV_SNP_ID_BLOCK_SIZE,
    KVM_SEV_SNP_ID_AUTH_SIZE,
);

/// Linux 6.18's `include/uapi/linux/kvm.h` values of the constants gmem-uapi defines itself. Both
/// crates are glob-imported, so the day kvm-bindings defines one of these names, its use here is
/// ambiguous and this stops compiling. Then re-export kvm-bindings' constant from
/// `gmem_uapi::consts` and move the name to `same_const!`.
#[deny(ambiguous_glob_imports)] // a hard error, not only a future-compatibility warning
const LOCAL_CONSTANTS_HAVE_THE_UAPI_VALUES: () = {
    use gmem_uapi::consts::*;
    #[allow(unused_imports)] // only there to make a name both crates define ambiguous
    use kvm_bindings::*;
    assert!(GUEST_MEMFD_FLAG_MMAP == 1u64 << 0);
    assert!(GUEST_MEMFD_FLAG_INIT_SHARED == 1u64 << 1);
    assert!(KVM_CAP_GUEST_MEMFD_FLAGS == 244);
    // The same type as kvm-bindings' other capability numbers.
    let _ = [KVM_CAP_GUEST_MEMFD_FLAGS, KVM_CAP_GUEST_MEMFD];
    // enum kvm_tdx_cmd_id and the TDX attribute and INIT_MEM_REGION flags (arch/x86/include/uapi/asm/kvm.h).
    assert!(KVM_TDX_CAPABILITIES == 0);
    assert!(KVM_TDX_INIT_VM == 1);
    assert!(KVM_TDX_INIT_VCPU == 2);
    assert!(KVM_TDX_INIT_MEM_REGION == 3);
    assert!(KVM_TDX_FINALIZE_VM == 4);
    assert!(KVM_TDX_GET_CPUID == 5);
    assert!(KVM_TDX_MEASURE_MEMORY_REGION == 1 << 0);
    assert!(TDX_TD_ATTR_DEBUG == 1 << 0);
    assert!(TDX_TD_ATTR_SEPT_VE_DISABLE == 1 << 28);
    // include/uapi/linux/kvm_para.h (kvm-bindings does not generate it).
    assert!(KVM_HC_MAP_GPA_RANGE == 12);
    assert!(KVM_MAP_GPA_RANGE_ENCRYPTED == 1 << 4);
};
const _: () = LOCAL_CONSTANTS_HAVE_THE_UAPI_VALUES;

// ---- Conversions to the simulator's argument types move every field to its namesake. ----

/// The inverse of `gmem_uapi::userspace_memory_region2`, written without `..` on either struct, so
/// that a field added to either one breaks the build here as well.
const fn region_to_uapi(mem: gmem_kvm::memslot::UserspaceMemoryRegion2) -> kvm_bindings::kvm_userspace_memory_region2 {
    let gmem_kvm::memslot::UserspaceMemoryRegion2 {
        slot,
        flags,
        guest_phys_addr,
        memory_size,
        userspace_addr,
        guest_memfd_offset,
        guest_memfd,
    } = mem;
    kvm_bindings::kvm_userspace_memory_region2 {
        slot,
        flags,
        guest_phys_addr,
        memory_size,
        userspace_addr,
        guest_memfd_offset,
        guest_memfd,
        pad1: 0,
        pad2: [0; 14],
    }
}

/// Field-by-field equality (the derived `PartialEq` is not `const`).
const fn same_region(
    a: &kvm_bindings::kvm_userspace_memory_region2,
    b: &kvm_bindings::kvm_userspace_memory_region2,
) -> bool {
    let mut pads_equal = a.pad1 == b.pad1;
    let mut i = 0;
    while i < a.pad2.len() {
        pads_equal &= a.pad2[i] == b.pad2[i];
        i += 1;
    }
    pads_equal
        && a.slot == b.slot
        && a.flags == b.flags
        && a.guest_phys_addr == b.guest_phys_addr
        && a.memory_size == b.memory_size
        && a.userspace_addr == b.userspace_addr
        && a.guest_memfd_offset == b.guest_memfd_offset
        && a.guest_memfd == b.guest_memfd
}

/// Every field has a different value, so swapping two fields of the same type is caught.
const REGION: kvm_bindings::kvm_userspace_memory_region2 = kvm_bindings::kvm_userspace_memory_region2 {
    slot: (1 << 16) | 3,
    flags: kvm_bindings::KVM_MEM_GUEST_MEMFD,
    guest_phys_addr: 0x1_0000_0000,
    memory_size: 0x20_0000,
    userspace_addr: 0x7f00_0000_0000,
    guest_memfd_offset: 0x4000,
    guest_memfd: 7,
    pad1: 0,
    pad2: [0; 14],
};
const _: () = assert!(
    same_region(&region_to_uapi(gmem_uapi::userspace_memory_region2(&REGION)), &REGION),
    "gmem_uapi::userspace_memory_region2 does not round-trip kvm_userspace_memory_region2",
);

const _: () = {
    let uapi = kvm_bindings::kvm_memory_attributes { address: 0x20_0000, size: 0x1000, attributes: 8, flags: 1 };
    let gmem_kvm::attributes::MemoryAttributes { address, size, attributes, flags } =
        gmem_uapi::memory_attributes(&uapi);
    let back = kvm_bindings::kvm_memory_attributes { address, size, attributes, flags };
    assert!(
        back.address == uapi.address
            && back.size == uapi.size
            && back.attributes == uapi.attributes
            && back.flags == uapi.flags,
        "gmem_uapi::memory_attributes does not round-trip kvm_memory_attributes",
    );
};

// ---- Methods: every mirrored call has kvm-ioctls' signature, up to the error type. ----

same_shape!(Kvm::new, fn() -> Result<Kvm, E>);
same_shape!(Kvm::create_vm, fn(&Kvm) -> Result<VmFd, E>);
same_shape!(Kvm::create_vm_with_type, fn(&Kvm, u64) -> Result<VmFd, E>);
same_shape!(Kvm::check_extension_raw, fn(&Kvm, c_ulong) -> i32);

same_shape!(<VmFd as AsRawFd>::as_raw_fd, fn(&VmFd) -> RawFd);
same_shape!(VmFd::check_extension_raw, fn(&VmFd, c_ulong) -> i32);
same_shape!(VmFd::create_guest_memfd, fn(&VmFd, kvm_create_guest_memfd) -> Result<RawFd, E>);
same_shape!(VmFd::set_user_memory_region2, unsafe fn(&VmFd, kvm_userspace_memory_region2) -> Result<(), E>);
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))] // kvm-ioctls' own gate
same_shape!(VmFd::set_memory_attributes, fn(&VmFd, kvm_memory_attributes) -> Result<(), E>);
same_shape!(VmFd::enable_cap, fn(&VmFd, &kvm_bindings::kvm_enable_cap) -> Result<(), E>);
#[cfg(target_arch = "x86_64")] // kvm-ioctls' own gate
same_shape!(VmFd::encrypt_op_sev, fn(&VmFd, &mut kvm_sev_cmd) -> Result<(), E>);
same_shape!(VmFd::create_vcpu, fn(&VmFd, u64) -> Result<VcpuFd, E>);

same_shape!(<VcpuFd as AsRawFd>::as_raw_fd, fn(&VcpuFd) -> RawFd);
same_shape!(VcpuFd::run, fn(&mut VcpuFd) -> Result<VcpuExit<'_>, E>);
same_shape!(VcpuFd::set_kvm_immediate_exit, fn(&mut VcpuFd, u8) -> ());

same_exit_shapes!(sim);
same_exit_shapes!(real, _);
same_traits!(HypercallExit: Debug);
same_traits!(VcpuExit: Debug);

same_traits!(Kvm: Debug + Send + Sync);
same_traits!(VmFd: AsRawFd + Debug + Send + Sync);
same_traits!(VcpuFd: AsRawFd + Debug + Send + Sync);

// ---- Errors: both are a plain errno that `?` can box, and the numbers are the kernel's. ----

// Both read the number with `errno()` (gmem-uapi also has `raw()`), by value, as `i32`, and
// both constructors take an `i32`.
same_traits!(E: StdError + Debug + Copy + Eq + Send + Sync + 'static);
const _: fn(gmem_uapi::Errno) -> i32 = gmem_uapi::Errno::raw;
const _: fn(gmem_uapi::Errno) -> i32 = gmem_uapi::Errno::errno;
const _: () = assert!(gmem_uapi::Errno::EBADF.errno() == libc::EBADF);
const _: fn(kvm_ioctls::Error) -> i32 = kvm_ioctls::Error::errno;
const _: fn(i32) -> gmem_uapi::Errno = gmem_uapi::Errno::from_raw;
const _: fn(i32) -> kvm_ioctls::Error = kvm_ioctls::Error::new;
const _: PhantomData<gmem_uapi::Result<()>> = PhantomData::<Result<(), gmem_uapi::Errno>>;

same_errno!(
    EPERM, ENOENT, EINTR, EIO, ENXIO, E2BIG, EBADF, EAGAIN, ENOMEM, EACCES, EFAULT, EBUSY, EEXIST, ENODEV, EINVAL,
    ENFILE, EMFILE, ENOTTY, EFBIG, ENOSPC, ESPIPE, ERANGE, ENOSYS, EOVERFLOW, EOPNOTSUPP, EHWPOISON,
);
