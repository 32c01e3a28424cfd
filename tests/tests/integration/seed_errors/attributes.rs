//! KVM_SET_MEMORY_ATTRIBUTES: ENOTTY without the config, then flags, attributes, range; a no-op
//! opens no invalidation; a change zaps the old kind of mapping per memslot.

use super::*;

#[test]
fn attributes_enotty_without_generic_memory_attributes_on_v6_18_pvm() {
    let host = CheckedHost::new(KernelProfile::v6_18_pvm());
    let vm = host.create_vm(DEFAULT_VM).unwrap();
    for attributes in [PRIVATE, 0] {
        assert_errno(host.set_memory_attributes(vm, &attrs(0, PAGE, attributes)), ENOTTY, "no such ioctl");
    }
    let mut bad = attrs(1, 0, 1 << 0);
    bad.flags = 1;
    assert_errno(host.set_memory_attributes(vm, &bad), ENOTTY, "ENOTTY before any argument check");
}

#[test]
fn attributes_einval_for_nonzero_flags_or_unsupported_attributes() {
    for profile in both_versions() {
        let host = CheckedHost::with_recording_mmu(profile);
        let vm = host.create_vm(SW_PROTECTED_VM).unwrap();
        let mut bad = attrs(0, PAGE, PRIVATE);
        bad.flags = 1;
        assert_errno(host.set_memory_attributes(vm, &bad), EINVAL, "flags");
        for attributes in [1 << 0, 1 << 4, PRIVATE | 1] {
            assert_errno(host.set_memory_attributes(vm, &attrs(0, PAGE, attributes)), EINVAL, "unsupported bit");
        }
        let default_vm = host.create_vm(DEFAULT_VM).unwrap();
        assert_errno(host.set_memory_attributes(default_vm, &attrs(0, PAGE, PRIVATE)), EINVAL, "PRIVATE on DEFAULT");
        assert_eq!(host.set_memory_attributes(default_vm, &attrs(0, PAGE, 0)), Ok(()), "0 on DEFAULT: a no-op");
        assert_eq!(host.take_mmu_events(), []);
    }
}

#[test]
fn attributes_einval_for_empty_wrapping_or_unaligned_ranges() {
    for profile in both_versions() {
        let host = CheckedHost::new(profile);
        let vm = host.create_vm(SW_PROTECTED_VM).unwrap();
        let cases =
            [(0, 0), (LAST_PAGE, 2 * PAGE), (PAGE, LAST_PAGE), (1, PAGE), (0, PAGE + 1), (0, 1), (PAGE / 2, PAGE / 2)];
        for (address, size) in cases {
            assert_errno(
                host.set_memory_attributes(vm, &attrs(address, size, PRIVATE)),
                EINVAL,
                &format!("address {address:#x} size {size:#x}"),
            );
        }
        assert!(!host.kvm(vm).mem_is_private(Gfn(0)));
    }
}

#[test]
fn attributes_no_op_request_opens_no_invalidation() {
    for profile in both_versions() {
        let host = CheckedHost::with_recording_mmu(profile);
        let (vm, gmem) = host.vm_and_gmem(SW_PROTECTED_VM, 4 * PAGE, 0);
        host.set_user_memory_region2(vm, &gmem_region(1, GPA, 4 * PAGE, gmem, 0)).unwrap();
        let kvm = host.kvm(vm);
        host.take_mmu_events();
        let seq = kvm.mmu_invalidate_seq();
        host.set_memory_attributes(vm, &attrs(GPA, 4 * PAGE, 0)).unwrap();
        assert_eq!(host.take_mmu_events(), [], "shared to shared");
        host.set_memory_attributes(vm, &attrs(GPA, 2 * PAGE, PRIVATE)).unwrap();
        host.take_mmu_events();
        let seq_after_change = kvm.mmu_invalidate_seq();
        assert_eq!(seq_after_change, seq + 1);
        host.set_memory_attributes(vm, &attrs(GPA, 2 * PAGE, PRIVATE)).unwrap();
        host.set_memory_attributes(vm, &attrs(GPA + PAGE, PAGE, PRIVATE)).unwrap();
        assert_eq!(host.take_mmu_events(), [], "private to private");
        assert_eq!(kvm.mmu_invalidate_seq(), seq_after_change, "no invalidation was opened");
    }
}

#[test]
fn attributes_change_unmaps_each_memslot_part_with_the_old_kinds_filter() {
    for profile in both_versions() {
        let host = CheckedHost::with_recording_mmu(profile);
        let (vm, gmem) = host.vm_and_gmem(SW_PROTECTED_VM, 8 * PAGE, 0);
        host.set_user_memory_region2(vm, &gmem_region(1, GPA, 4 * PAGE, gmem, 0)).unwrap();
        host.set_user_memory_region2(vm, &gmem_region(2, GPA + 8 * PAGE, 4 * PAGE, gmem, 4 * PAGE)).unwrap();
        let kvm = host.kvm(vm);
        host.take_mmu_events();
        // [GFN+2, GFN+10): the end of slot 1, a gap, the start of slot 2.
        host.set_memory_attributes(vm, &attrs(GPA + 2 * PAGE, 8 * PAGE, PRIVATE)).unwrap();
        assert_eq!(
            host.take_mmu_events(),
            [
                unmap(GFN + 2, GFN + 4, 1, AttrFilter::Shared),
                unmap(GFN + 8, GFN + 10, 2, AttrFilter::Shared),
                MmuEvent::FlushRemoteTlbs
            ],
            "to private: zap the shared mappings"
        );
        assert!((GFN + 2..GFN + 10).all(|gfn| kvm.mem_is_private(Gfn(gfn))));
        assert!(!kvm.mem_is_private(Gfn(GFN + 1)) && !kvm.mem_is_private(Gfn(GFN + 10)));
        host.set_memory_attributes(vm, &attrs(GPA + 3 * PAGE, 6 * PAGE, 0)).unwrap();
        assert_eq!(
            host.take_mmu_events(),
            [
                unmap(GFN + 3, GFN + 4, 1, AttrFilter::Private),
                unmap(GFN + 8, GFN + 9, 2, AttrFilter::Private),
                MmuEvent::FlushRemoteTlbs
            ],
            "to shared: zap the private mappings"
        );
        assert_eq!(kvm.mmu_invalidate_in_progress(), 0);
        // Outside every memslot the attributes change without asking the MMU anything.
        let seq = kvm.mmu_invalidate_seq();
        host.set_memory_attributes(vm, &attrs(0x100_0000, PAGE, PRIVATE)).unwrap();
        assert_eq!(host.take_mmu_events(), []);
        assert_eq!(kvm.mmu_invalidate_seq(), seq);
        assert!(kvm.mem_is_private(Gfn(0x1000)));
    }
}

#[test]
fn attributes_enomem_when_the_xarray_cannot_reserve_changes_nothing() {
    for profile in both_versions() {
        let host = CheckedHost::with_recording_mmu(profile);
        let (vm, gmem) = host.vm_and_gmem(SW_PROTECTED_VM, 4 * PAGE, 0);
        host.set_user_memory_region2(vm, &gmem_region(1, GPA, 4 * PAGE, gmem, 0)).unwrap();
        host.take_mmu_events();
        let seq = host.kvm(vm).mmu_invalidate_seq();
        host.machine().inject.arm(FaultPoint::AllocXarray, 0, 1);
        assert_errno(host.set_memory_attributes(vm, &attrs(GPA, 4 * PAGE, PRIVATE)), ENOMEM, "xa_reserve");
        assert_eq!(host.take_mmu_events(), []);
        assert_eq!(host.kvm(vm).mmu_invalidate_seq(), seq, "no invalidation was opened");
        assert!(!host.kvm(vm).mem_is_private(Gfn(GFN)));
    }
}
