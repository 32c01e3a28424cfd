//! `KVM_CHECK_EXTENSION` (`kvm_vm_ioctl_check_extension_generic` and the x86 arch part) for the
//! capabilities guest_memfd's world depends on. Capabilities outside it are not modelled and
//! read 0: the simulated kernel does not offer them.

use crate::guest_memfd::kvm_gmem_get_supported_flags;
use crate::memslot::KVM_USER_MEM_SLOTS;
use crate::profile::{KernelProfile, KernelVersion};
use crate::vm::Kvm;

/// `KVM_CAP_USER_MEMORY`.
pub const KVM_CAP_USER_MEMORY: u64 = 3;
/// `KVM_CAP_NR_MEMSLOTS`.
pub const KVM_CAP_NR_MEMSLOTS: u64 = 10;
/// `KVM_CAP_CHECK_EXTENSION_VM`.
pub const KVM_CAP_CHECK_EXTENSION_VM: u64 = 105;
/// `KVM_CAP_MULTI_ADDRESS_SPACE`.
pub const KVM_CAP_MULTI_ADDRESS_SPACE: u64 = 118;
/// `KVM_CAP_EXIT_HYPERCALL`.
pub const KVM_CAP_EXIT_HYPERCALL: u64 = 201;
/// `KVM_CAP_USER_MEMORY2`.
pub const KVM_CAP_USER_MEMORY2: u64 = 231;
/// `KVM_CAP_MEMORY_FAULT_INFO`.
pub const KVM_CAP_MEMORY_FAULT_INFO: u64 = 232;
/// `KVM_CAP_MEMORY_ATTRIBUTES`.
pub const KVM_CAP_MEMORY_ATTRIBUTES: u64 = 233;
/// `KVM_CAP_GUEST_MEMFD`.
pub const KVM_CAP_GUEST_MEMFD: u64 = 234;
/// `KVM_CAP_VM_TYPES`.
pub const KVM_CAP_VM_TYPES: u64 = 235;
/// `KVM_CAP_MAX_VCPUS`.
pub const KVM_CAP_MAX_VCPUS: u64 = 66;
/// `KVM_CAP_MAX_VCPU_ID`.
pub const KVM_CAP_MAX_VCPU_ID: u64 = 128;
/// `KVM_CAP_PRE_FAULT_MEMORY`.
pub const KVM_CAP_PRE_FAULT_MEMORY: u64 = 236;
/// `KVM_CAP_GUEST_MEMFD_FLAGS` (v6.18; the number was unassigned in v6.14).
pub const KVM_CAP_GUEST_MEMFD_FLAGS: u64 = 244;

/// `KVM_HC_MAP_GPA_RANGE`, the hypercall `KVM_CAP_EXIT_HYPERCALL` reports.
pub const KVM_HC_MAP_GPA_RANGE: u64 = 12;

/// `KVM_CHECK_EXTENSION` on `/dev/kvm` (`kvm` is `None`) or on a VM.
#[doc(alias("kvm_vm_ioctl_check_extension", "kvm_vm_ioctl_check_extension_generic"))]
pub fn check_extension(profile: &KernelProfile, kvm: Option<&Kvm>, cap: u64) -> i64 {
    let has_private_mem = kvm.is_none_or(|kvm| kvm.has_private_mem());
    match cap {
        KVM_CAP_USER_MEMORY | KVM_CAP_USER_MEMORY2 | KVM_CAP_CHECK_EXTENSION_VM => 1,
        KVM_CAP_NR_MEMSLOTS => KVM_USER_MEM_SLOTS as i64,
        // Compiled only with more than one address space (SMM), which the model does not have.
        KVM_CAP_MULTI_ADDRESS_SPACE => 0,
        KVM_CAP_EXIT_HYPERCALL => 1 << KVM_HC_MAP_GPA_RANGE,
        KVM_CAP_MEMORY_FAULT_INFO => 1,
        // kvm_supported_mem_attributes(kvm)
        KVM_CAP_MEMORY_ATTRIBUTES if profile.config.memory_attributes && has_private_mem => {
            crate::attributes::KVM_MEMORY_ATTRIBUTE_PRIVATE as i64
        }
        KVM_CAP_GUEST_MEMFD => match profile.version {
            KernelVersion::V6_14 => has_private_mem as i64,
            KernelVersion::V6_18 => 1,
        },
        KVM_CAP_GUEST_MEMFD_FLAGS => kvm_gmem_get_supported_flags(profile, kvm) as i64,
        KVM_CAP_VM_TYPES => profile.config.vm_types as i64,
        KVM_CAP_PRE_FAULT_MEMORY => profile.config.pre_fault as i64,
        KVM_CAP_MAX_VCPUS => i64::from(profile.config.max_vcpus),
        // KVM_MAX_VCPU_IDS (x86 reports the build's limit, not a VM's enabled max_vcpu_ids).
        KVM_CAP_MAX_VCPU_ID => i64::from(profile.config.max_vcpus) * crate::vcpu::KVM_VCPU_ID_RATIO as i64,
        _ => 0,
    }
}

/// `KVM_EXIT_HYPERCALL_VALID_MASK`: the hypercalls `KVM_CAP_EXIT_HYPERCALL` can route to user
/// space (x86: only `KVM_HC_MAP_GPA_RANGE`).
pub const KVM_EXIT_HYPERCALL_VALID_MASK: u64 = 1 << KVM_HC_MAP_GPA_RANGE;

impl Kvm {
    /// `KVM_ENABLE_CAP` on a VM (`kvm_vm_ioctl_enable_cap`), for the capabilities the model has:
    /// `KVM_CAP_EXIT_HYPERCALL` (x86 `kvm_vm_ioctl_enable_cap`: non-zero `flags` or a bit
    /// outside `KVM_EXIT_HYPERCALL_VALID_MASK` in `args[0]` is EINVAL; `args[0]` becomes
    /// `kvm->arch.hypercall_exit_enabled`, replacing the previous set).
    ///
    /// Every other capability is EINVAL, what the kernel answers for a capability it does not
    /// offer: the capabilities outside guest_memfd's world are not modelled and read 0 in
    /// `KVM_CHECK_EXTENSION` (a trace event says so).
    #[doc(alias = "kvm_vm_ioctl_enable_cap")]
    pub fn enable_cap(&self, cap: u64, flags: u32, args: [u64; 4]) -> gmem_mm::KResult<()> {
        if flags != 0 {
            return Err(gmem_mm::Errno::EINVAL);
        }
        match cap {
            KVM_CAP_EXIT_HYPERCALL => {
                if args[0] & !KVM_EXIT_HYPERCALL_VALID_MASK != 0 {
                    return Err(gmem_mm::Errno::EINVAL);
                }
                self.hypercall_exit_enabled.store(args[0], gmem_sync::atomic::Ordering::Release);
                Ok(())
            }
            _ => {
                tracing::warn!(cap, "KVM_ENABLE_CAP: capability not modelled (EINVAL)");
                Err(gmem_mm::Errno::EINVAL)
            }
        }
    }

    /// `user_exit_on_hypercall(kvm, nr)`.
    pub fn user_exit_on_hypercall(&self, nr: u64) -> bool {
        nr < 64 && self.hypercall_exit_enabled.load(gmem_sync::atomic::Ordering::Acquire) & (1 << nr) != 0
    }
}
