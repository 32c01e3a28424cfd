//! uAPI constants: the ones kvm-bindings (generated from Linux 6.15) lacks, defined from
//! Linux 6.18's `include/uapi/linux/kvm.h`, plus re-exports of those it has.

pub use kvm_bindings::{
    KVM_CAP_GUEST_MEMFD, KVM_CAP_MEMORY_ATTRIBUTES, KVM_CAP_MEMORY_FAULT_INFO, KVM_CAP_PRE_FAULT_MEMORY,
    KVM_CAP_USER_MEMORY2, KVM_CAP_VM_TYPES, KVM_MEMORY_ATTRIBUTE_PRIVATE, KVM_MEMORY_EXIT_FLAG_PRIVATE,
    KVM_MEM_GUEST_MEMFD, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY, KVM_X86_DEFAULT_VM, KVM_X86_SEV_ES_VM,
    KVM_X86_SEV_VM, KVM_X86_SNP_VM, KVM_X86_SW_PROTECTED_VM, KVM_X86_TDX_VM,
};

/// The `KVM_MEMORY_ENCRYPT_OP` command ids of an SEV-SNP launch (`enum sev_cmd_id`) and the SNP
/// launch constants, as kvm-bindings names them.
pub use kvm_bindings::{
    sev_cmd_id_KVM_SEV_INIT2, sev_cmd_id_KVM_SEV_SNP_LAUNCH_FINISH, sev_cmd_id_KVM_SEV_SNP_LAUNCH_START,
    sev_cmd_id_KVM_SEV_SNP_LAUNCH_UPDATE, KVM_CAP_EXIT_HYPERCALL, KVM_SEV_SNP_ID_AUTH_SIZE, KVM_SEV_SNP_ID_BLOCK_SIZE,
    KVM_SEV_SNP_PAGE_TYPE_CPUID, KVM_SEV_SNP_PAGE_TYPE_NORMAL, KVM_SEV_SNP_PAGE_TYPE_SECRETS,
    KVM_SEV_SNP_PAGE_TYPE_UNMEASURED, KVM_SEV_SNP_PAGE_TYPE_ZERO,
};

/// The `KVM_MEMORY_ENCRYPT_OP` command ids of a TDX launch (`enum kvm_tdx_cmd_id`) and the TDX
/// uAPI constants (kvm-bindings 0.14 has none of them), from Linux 6.18's
/// `arch/x86/include/uapi/asm/kvm.h`.
pub use gmem_arch::tdx::kvm::{
    KVM_TDX_CAPABILITIES, KVM_TDX_FINALIZE_VM, KVM_TDX_GET_CPUID, KVM_TDX_INIT_MEM_REGION, KVM_TDX_INIT_VCPU,
    KVM_TDX_INIT_VM, KVM_TDX_MEASURE_MEMORY_REGION, TDX_TD_ATTR_DEBUG, TDX_TD_ATTR_SEPT_VE_DISABLE,
};

/// `GUEST_MEMFD_FLAG_MMAP` (Linux 6.18).
pub const GUEST_MEMFD_FLAG_MMAP: u64 = 1 << 0;
/// `GUEST_MEMFD_FLAG_INIT_SHARED` (Linux 6.18).
pub const GUEST_MEMFD_FLAG_INIT_SHARED: u64 = 1 << 1;
/// `KVM_CAP_GUEST_MEMFD_FLAGS` (Linux 6.18).
pub const KVM_CAP_GUEST_MEMFD_FLAGS: u32 = 244;
/// `KVM_HC_MAP_GPA_RANGE` (`include/uapi/linux/kvm_para.h`): the guest's conversion request,
/// `hypercall.nr` of its `KVM_EXIT_HYPERCALL`; `KVM_CAP_EXIT_HYPERCALL`'s `args[0]` enables the
/// exit with bit `1 << KVM_HC_MAP_GPA_RANGE`.
pub const KVM_HC_MAP_GPA_RANGE: u64 = 12;
/// `KVM_MAP_GPA_RANGE_ENCRYPTED` (`KVM_MAP_GPA_RANGE_ENC_STAT(1)`, `kvm_para.h`): in
/// `hypercall.args[2]`, the range becomes private; without it, shared.
pub const KVM_MAP_GPA_RANGE_ENCRYPTED: u64 = 1 << 4;
/// `KVM_CAP_NR_MEMSLOTS`.
pub const KVM_CAP_NR_MEMSLOTS: u32 = kvm_bindings::KVM_CAP_NR_MEMSLOTS;

#[cfg(test)]
mod tests {
    /// The simulator's own constants must agree with the uAPI numbers.
    #[test]
    fn simulator_constants_match_the_uapi() {
        use gmem_kvm::{attributes, caps, guest_memfd, memslot};
        assert_eq!(super::GUEST_MEMFD_FLAG_MMAP, guest_memfd::GUEST_MEMFD_FLAG_MMAP);
        assert_eq!(super::GUEST_MEMFD_FLAG_INIT_SHARED, guest_memfd::GUEST_MEMFD_FLAG_INIT_SHARED);
        assert_eq!(super::KVM_CAP_GUEST_MEMFD_FLAGS as u64, caps::KVM_CAP_GUEST_MEMFD_FLAGS);
        assert_eq!(super::KVM_CAP_GUEST_MEMFD as u64, caps::KVM_CAP_GUEST_MEMFD);
        assert_eq!(super::KVM_CAP_VM_TYPES as u64, caps::KVM_CAP_VM_TYPES);
        assert_eq!(super::KVM_CAP_MEMORY_ATTRIBUTES as u64, caps::KVM_CAP_MEMORY_ATTRIBUTES);
        assert_eq!(super::KVM_CAP_USER_MEMORY2 as u64, caps::KVM_CAP_USER_MEMORY2);
        assert_eq!(super::KVM_CAP_PRE_FAULT_MEMORY as u64, caps::KVM_CAP_PRE_FAULT_MEMORY);
        assert_eq!(super::KVM_CAP_NR_MEMSLOTS as u64, caps::KVM_CAP_NR_MEMSLOTS);
        assert_eq!(super::KVM_MEM_GUEST_MEMFD, memslot::KVM_MEM_GUEST_MEMFD);
        assert_eq!(super::KVM_MEM_READONLY, memslot::KVM_MEM_READONLY);
        assert_eq!(super::KVM_MEMORY_ATTRIBUTE_PRIVATE as u64, attributes::KVM_MEMORY_ATTRIBUTE_PRIVATE);
        assert_eq!(super::KVM_X86_SW_PROTECTED_VM as u64, gmem_kvm::VmType::SwProtected as u64);
        assert_eq!(super::KVM_X86_TDX_VM as u64, gmem_kvm::VmType::Tdx as u64);
        assert_eq!(super::KVM_CAP_EXIT_HYPERCALL as u64, caps::KVM_CAP_EXIT_HYPERCALL);
        assert_eq!(super::KVM_HC_MAP_GPA_RANGE, caps::KVM_HC_MAP_GPA_RANGE);
        assert_eq!(super::KVM_MAP_GPA_RANGE_ENCRYPTED, gmem_kvm::vcpu::KVM_MAP_GPA_RANGE_ENCRYPTED);
        assert_eq!(super::KVM_MEMORY_EXIT_FLAG_PRIVATE as u64, gmem_kvm::vcpu::KVM_MEMORY_EXIT_FLAG_PRIVATE);
        use gmem_arch::sev::kvm as sev;
        assert_eq!(super::sev_cmd_id_KVM_SEV_INIT2, sev::KVM_SEV_INIT2);
        assert_eq!(super::sev_cmd_id_KVM_SEV_SNP_LAUNCH_START, sev::KVM_SEV_SNP_LAUNCH_START);
        assert_eq!(super::sev_cmd_id_KVM_SEV_SNP_LAUNCH_UPDATE, sev::KVM_SEV_SNP_LAUNCH_UPDATE);
        assert_eq!(super::sev_cmd_id_KVM_SEV_SNP_LAUNCH_FINISH, sev::KVM_SEV_SNP_LAUNCH_FINISH);
        assert_eq!(super::KVM_SEV_SNP_ID_BLOCK_SIZE as usize, sev::KVM_SEV_SNP_ID_BLOCK_SIZE);
        assert_eq!(super::KVM_SEV_SNP_ID_AUTH_SIZE as usize, sev::KVM_SEV_SNP_ID_AUTH_SIZE);
        use gmem_arch::sev::measure::SnpPageType;
        assert_eq!(super::KVM_SEV_SNP_PAGE_TYPE_NORMAL, SnpPageType::Normal as u32);
        assert_eq!(super::KVM_SEV_SNP_PAGE_TYPE_ZERO, SnpPageType::Zero as u32);
        assert_eq!(super::KVM_SEV_SNP_PAGE_TYPE_UNMEASURED, SnpPageType::Unmeasured as u32);
        assert_eq!(super::KVM_SEV_SNP_PAGE_TYPE_SECRETS, SnpPageType::Secrets as u32);
        assert_eq!(super::KVM_SEV_SNP_PAGE_TYPE_CPUID, SnpPageType::Cpuid as u32);
    }
}
