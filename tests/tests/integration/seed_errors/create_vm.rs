//! KVM_CREATE_VM and KVM_CHECK_EXTENSION: what each profile offers guest_memfd.

use super::*;

#[test]
fn create_vm_is_einval_for_a_type_the_profile_does_not_support() {
    for (profile, supported) in [
        (KernelProfile::v6_14(), &[0u64, 1, 2, 3, 4][..]),
        (KernelProfile::v6_18(), &[0, 1, 2, 3, 4][..]),
        (KernelProfile::v6_18_pvm(), &[0][..]),
    ] {
        let host = CheckedHost::new(profile.clone());
        let mask: i64 = supported.iter().map(|t| 1 << t).sum();
        assert_eq!(host.check_extension(gmem_kvm::caps::KVM_CAP_VM_TYPES), mask, "{}", profile.name);
        for vm_type in 0..8u64 {
            let result = host.create_vm(vm_type);
            if supported.contains(&vm_type) {
                host.close(result.unwrap()).unwrap();
            } else {
                assert_errno(result, EINVAL, &format!("{}: type {vm_type}", profile.name));
            }
        }
        assert_errno(host.create_vm(1 << 32), EINVAL, "type beyond 32 bits");
    }
}

#[test]
fn check_extension_reports_guest_memfd_support_per_profile_and_vm_type() {
    use gmem_kvm::caps::{KVM_CAP_GUEST_MEMFD as GMEM, KVM_CAP_GUEST_MEMFD_FLAGS as FLAGS};
    use gmem_kvm::caps::{KVM_CAP_MEMORY_ATTRIBUTES as ATTRS, KVM_CAP_NR_MEMSLOTS, KVM_CAP_PRE_FAULT_MEMORY};
    // (profile, cap, /dev/kvm, DEFAULT VM, SW_PROTECTED VM or None where it cannot be created)
    let rows: [(KernelProfile, u64, i64, i64, Option<i64>); 10] = [
        (KernelProfile::v6_14(), GMEM, 1, 0, Some(1)),
        (KernelProfile::v6_14(), FLAGS, 0, 0, Some(0)),
        (KernelProfile::v6_14(), ATTRS, 8, 0, Some(8)),
        (KernelProfile::v6_18(), GMEM, 1, 1, Some(1)),
        (KernelProfile::v6_18(), FLAGS, 3, 3, Some(1)),
        (KernelProfile::v6_18(), ATTRS, 8, 0, Some(8)),
        (KernelProfile::v6_18_pvm(), GMEM, 1, 1, None),
        (KernelProfile::v6_18_pvm(), FLAGS, 3, 3, None),
        (KernelProfile::v6_18_pvm(), ATTRS, 0, 0, None),
        (KernelProfile::v6_18_pvm(), KVM_CAP_PRE_FAULT_MEMORY, 0, 0, None),
    ];
    for (profile, cap, dev, default_vm, sw_vm) in rows {
        let what = format!("{} cap {cap}", profile.name);
        let host = CheckedHost::new(profile);
        assert_eq!(host.check_extension(cap), dev, "{what} on /dev/kvm");
        let vm = host.create_vm(DEFAULT_VM).unwrap();
        assert_eq!(host.vm_check_extension(vm, cap), Ok(default_vm), "{what} on a DEFAULT VM");
        if let Some(expected) = sw_vm {
            let vm = host.create_vm(SW_PROTECTED_VM).unwrap();
            assert_eq!(host.vm_check_extension(vm, cap), Ok(expected), "{what} on a SW_PROTECTED VM");
        }
        assert_eq!(host.vm_check_extension(vm, KVM_CAP_NR_MEMSLOTS), Ok(32764));
    }
}
