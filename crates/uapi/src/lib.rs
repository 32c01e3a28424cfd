//! gmem-uapi: the API a VMM calls, shaped like kvm-ioctls, over the simulated kernel.
//!
//! A [`SimHost`] is one process on one simulated kernel: its descriptor table holds `/dev/kvm`
//! VM files and guest_memfds exactly as a real process's would, and every call goes through the
//! same path a system call takes (descriptor lookup, the ioctl's own checks, the return to user
//! space that runs deferred `fput` work). On top of it, [`Kvm`], [`VmFd`] and [`VcpuFd`] mirror
//! `kvm_ioctls::Kvm`, `kvm_ioctls::VmFd` and `kvm_ioctls::VcpuFd`: same method names,
//! kvm-bindings argument structs, errno results. `VcpuFd::run` is `KVM_RUN` over a guest
//! workload the caller supplies ([`run`]), returning kvm-ioctls' `VcpuExit` shapes. The SEV-SNP
//! and TDX launch commands have typed helpers on them besides the raw `encrypt_op_sev` /
//! `encrypt_op_tdx`. The constants kvm-bindings lacks (Linux 6.18's guest_memfd flags and
//! capability, the TDX commands, `KVM_HC_MAP_GPA_RANGE`) are in [`consts`].
//! `tests/tests/integration/parity.rs` (crate gmem-tests) fails to compile if a mirrored method's
//! signature, an exit's shape, a struct or a constant drifts from kvm-ioctls/kvm-bindings.
//!
//! Every entry point opens a `tracing` span named after its kernel counterpart.
#![deny(missing_docs)]

pub mod consts;
mod convert;
mod host;
pub mod run;
mod vmfd;
pub mod vmm;

pub use convert::{memory_attributes, userspace_memory_region2};
pub use gmem_arch::tdx::kvm::{kvm_tdx_capabilities, kvm_tdx_cmd, kvm_tdx_init_mem_region, kvm_tdx_init_vm};
pub use gmem_mm::{Errno, KResult};
pub use host::{SevError, SimHost, Stat, TdxError};
pub use kvm_bindings::{
    kvm_cpuid_entry2, kvm_create_guest_memfd, kvm_memory_attributes, kvm_sev_cmd, kvm_sev_init,
    kvm_sev_snp_launch_finish, kvm_sev_snp_launch_start, kvm_sev_snp_launch_update, kvm_userspace_memory_region2,
};
pub use run::{
    GuestOp, GuestOutcome, GuestProgram, GuestSequence, HypercallExit, VcpuExit, VcpuSignal, DEFAULT_RUN_OP_LIMIT,
};
pub use vmfd::{Kvm, VcpuFd, VmFd};
pub use vmm::{Vmm, VmmConfig};

/// The result type of every call (`kvm_ioctls::Result` carries an errno the same way).
pub type Result<T> = std::result::Result<T, Errno>;
