//! The MMU requests of punch hole, release and memslot deletion.

use super::*;

#[test]
fn punch_hole_unmaps_each_binding_piece_with_the_profile_filter_then_flushes_once() {
    let cases = [
        (KernelProfile::v6_14(), SW_PROTECTED_VM, 0, AttrFilter::Private),
        (KernelProfile::v6_18(), SW_PROTECTED_VM, 0, AttrFilter::Private),
        (KernelProfile::v6_18(), DEFAULT_VM, MMAP, AttrFilter::Private),
        (KernelProfile::v6_18(), DEFAULT_VM, INIT_SHARED, AttrFilter::Shared),
        (KernelProfile::v6_18(), DEFAULT_VM, MMAP | INIT_SHARED, AttrFilter::Shared),
    ];
    for (profile, vm_type, flags, filter) in cases {
        let what = format!("{} flags {flags}", label(&profile, vm_type));
        let host = CheckedHost::with_recording_mmu(profile);
        let (vm, gmem) = host.vm_and_gmem(vm_type, 8 * PAGE, flags);
        let gpa2 = 0x20_0000;
        host.set_user_memory_region2(vm, &gmem_region(1, GPA, 4 * PAGE, gmem, 0)).unwrap();
        host.set_user_memory_region2(vm, &gmem_region(2, gpa2, 4 * PAGE, gmem, 4 * PAGE)).unwrap();
        host.fallocate(gmem, KEEP, 0, 8 * PAGE as i64).unwrap();
        let kvm = host.kvm(vm);
        let seq = kvm.mmu_invalidate_seq();
        host.take_mmu_events();
        // Offsets [2, 6): the end of slot 1 and the start of slot 2 (each bound as one piece).
        host.fallocate(gmem, PUNCH, 2 * PAGE as i64, 4 * PAGE as i64).unwrap();
        assert_eq!(
            host.take_mmu_events(),
            [unmap(GFN + 2, GFN + 4, 1, filter), unmap(0x200, 0x202, 2, filter), MmuEvent::FlushRemoteTlbs],
            "{what}"
        );
        assert_eq!(kvm.mmu_invalidate_seq(), seq + 1, "{what}: one invalidation per guest_memfd");
        assert_eq!(nrpages(&host, gmem), 4, "{what}: the four punched pages are gone");
    }
}

#[test]
fn punch_hole_unmaps_once_per_stored_piece_of_an_unaligned_binding() {
    for profile in both_versions() {
        let host = CheckedHost::with_recording_mmu(profile);
        let (vm, gmem) = host.vm_and_gmem(SW_PROTECTED_VM, 128 * PAGE, 0);
        // Offsets [60, 70) cross a 64-index xarray node: xa_store_range stores two pieces, and
        // xa_for_each_range visits each of them.
        host.set_user_memory_region2(vm, &gmem_region(1, GPA, 10 * PAGE, gmem, 60 * PAGE)).unwrap();
        let pieces: Vec<u64> = bindings(&host, gmem).iter().map(|(index, _)| *index).collect();
        assert_eq!(pieces, [60, 64], "one piece per xarray node");
        host.take_mmu_events();
        host.fallocate(gmem, PUNCH, 0, 128 * PAGE as i64).unwrap();
        let whole = unmap(GFN, GFN + 10, 1, AttrFilter::Private);
        assert_eq!(
            host.take_mmu_events(),
            [whole.clone(), whole, MmuEvent::FlushRemoteTlbs],
            "each piece zaps the slot's whole part of the range"
        );
        // A punch that touches only the second piece zaps only the slot's part of the hole.
        host.fallocate(gmem, PUNCH, 66 * PAGE as i64, 2 * PAGE as i64).unwrap();
        assert_eq!(
            host.take_mmu_events(),
            [unmap(GFN + 6, GFN + 8, 1, AttrFilter::Private), MmuEvent::FlushRemoteTlbs]
        );
    }
}

#[test]
fn punch_hole_outside_every_binding_asks_nothing_of_the_mmu() {
    for profile in both_versions() {
        let host = CheckedHost::with_recording_mmu(profile);
        let (vm, gmem) = host.vm_and_gmem(SW_PROTECTED_VM, 8 * PAGE, 0);
        host.set_user_memory_region2(vm, &gmem_region(1, GPA, 4 * PAGE, gmem, 0)).unwrap();
        host.fallocate(gmem, KEEP, 0, 8 * PAGE as i64).unwrap();
        let kvm = host.kvm(vm);
        let seq = kvm.mmu_invalidate_seq();
        host.take_mmu_events();
        host.fallocate(gmem, PUNCH, 4 * PAGE as i64, 4 * PAGE as i64).unwrap();
        assert_eq!(host.take_mmu_events(), []);
        assert_eq!(kvm.mmu_invalidate_seq(), seq);
        assert_eq!(nrpages(&host, gmem), 4);
    }
}

#[test]
fn release_of_a_bound_guest_memfd_unmaps_every_binding_with_the_profile_filter() {
    let cases = [
        (KernelProfile::v6_14(), SW_PROTECTED_VM, 0, AttrFilter::Private),
        (KernelProfile::v6_18(), SW_PROTECTED_VM, 0, AttrFilter::Private),
        (KernelProfile::v6_18(), DEFAULT_VM, MMAP | INIT_SHARED, AttrFilter::Shared),
    ];
    for (profile, vm_type, flags, filter) in cases {
        let what = format!("{} flags {flags}", label(&profile, vm_type));
        let host = CheckedHost::with_recording_mmu(profile);
        let (vm, gmem) = host.vm_and_gmem(vm_type, 8 * PAGE, flags);
        host.set_user_memory_region2(vm, &gmem_region(1, GPA, 4 * PAGE, gmem, 0)).unwrap();
        host.set_user_memory_region2(vm, &gmem_region(2, 0x20_0000, 4 * PAGE, gmem, 4 * PAGE)).unwrap();
        let kvm = host.kvm(vm);
        let seq = kvm.mmu_invalidate_seq();
        host.take_mmu_events();
        host.close(gmem).unwrap();
        assert_eq!(
            host.take_mmu_events(),
            [unmap(GFN, GFN + 4, 1, filter), unmap(0x200, 0x204, 2, filter), MmuEvent::FlushRemoteTlbs],
            "{what}"
        );
        assert_eq!(kvm.mmu_invalidate_seq(), seq + 1);
        // Deleting the orphaned slot only zaps it as a memslot.
        host.set_user_memory_region2(vm, &delete_region(1, GUEST_MEMFD)).unwrap();
        assert_eq!(
            host.take_mmu_events(),
            [MmuEvent::FlushShadowMemslot { slot_id: 1, base_gfn: Gfn(GFN), npages: 4 }],
            "{what}"
        );
    }
}

#[test]
fn release_of_an_unbound_guest_memfd_asks_nothing_of_the_mmu() {
    for profile in both_versions() {
        let host = CheckedHost::with_recording_mmu(profile);
        let (_vm, gmem) = host.vm_and_gmem(SW_PROTECTED_VM, 8 * PAGE, 0);
        host.fallocate(gmem, KEEP, 0, PAGE as i64).unwrap();
        host.close(gmem).unwrap();
        assert_eq!(host.take_mmu_events(), []);
    }
}

#[test]
fn deleting_a_live_guest_memfd_memslot_zaps_it_as_a_memslot_and_unbinds_it() {
    for profile in both_versions() {
        let host = CheckedHost::with_recording_mmu(profile);
        let (vm, gmem) = host.vm_and_gmem(SW_PROTECTED_VM, 8 * PAGE, 0);
        host.set_user_memory_region2(vm, &gmem_region(1, GPA, 4 * PAGE, gmem, 0)).unwrap();
        host.take_mmu_events();
        host.set_user_memory_region2(vm, &delete_region(1, GUEST_MEMFD)).unwrap();
        assert_eq!(
            host.take_mmu_events(),
            [MmuEvent::FlushShadowMemslot { slot_id: 1, base_gfn: Gfn(GFN), npages: 4 }]
        );
        assert!(bindings(&host, gmem).is_empty());
        host.close(gmem).unwrap();
        assert_eq!(host.take_mmu_events(), [], "nothing left to zap at release");
    }
}
