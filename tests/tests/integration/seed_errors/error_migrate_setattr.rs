//! kvm_gmem_error_folio (memory failure), kvm_gmem_migrate_folio, kvm_gmem_setattr.

use super::*;

#[test]
fn memory_failure_einval_without_config_memory_failure_on_v6_18_pvm() {
    let host = CheckedHost::new(KernelProfile::v6_18_pvm());
    let (_vm, gmem) = host.vm_and_gmem(DEFAULT_VM, 4 * PAGE, 0);
    host.fallocate(gmem, KEEP, 0, PAGE as i64).unwrap();
    assert_errno(host.inject_memory_failure(gmem, 0), EINVAL, "no CONFIG_MEMORY_FAILURE");
}

#[test]
fn memory_failure_enoent_without_a_folio() {
    for profile in both_versions() {
        let (host, _vm, gmem) = setup(profile, 4, 0);
        assert_errno(host.inject_memory_failure(gmem, 0), ENOENT, "nothing allocated");
    }
}

#[test]
fn memory_failure_unmaps_exactly_the_folio_range_with_the_profile_filter() {
    let cases = [
        (KernelProfile::v6_14(), SW_PROTECTED_VM, 0, AttrFilter::Private),
        (KernelProfile::v6_18(), SW_PROTECTED_VM, 0, AttrFilter::Private),
        (KernelProfile::v6_18(), DEFAULT_VM, MMAP, AttrFilter::Private),
        (KernelProfile::v6_18(), DEFAULT_VM, MMAP | INIT_SHARED, AttrFilter::Shared),
    ];
    for (profile, vm_type, flags, filter) in cases {
        let what = format!("{} flags {flags}", label(&profile, vm_type));
        let host = CheckedHost::with_recording_mmu(profile);
        let (vm, gmem) = host.vm_and_gmem(vm_type, 4 * PAGE, flags);
        host.set_user_memory_region2(vm, &gmem_region(1, GPA, 4 * PAGE, gmem, 0)).unwrap();
        host.fallocate(gmem, KEEP, 0, 4 * PAGE as i64).unwrap();
        let kvm = host.kvm(vm);
        let seq = kvm.mmu_invalidate_seq();
        host.take_mmu_events();
        assert_eq!(host.inject_memory_failure(gmem, 2 * PAGE), Ok(MfResult::Delayed), "{what}");
        assert_eq!(host.take_mmu_events(), [unmap(GFN + 2, GFN + 3, 1, filter), MmuEvent::FlushRemoteTlbs], "{what}");
        assert_eq!(kvm.mmu_invalidate_seq(), seq + 1, "{what}: one invalidation, ended");
        assert_eq!(kvm.mmu_invalidate_in_progress(), 0);
        assert_eq!(nrpages(&host, gmem), 4, "{what}: memory failure does not truncate");
    }
}

#[test]
fn memory_failure_on_an_unbound_guest_memfd_asks_nothing_of_the_mmu() {
    for profile in both_versions() {
        let host = CheckedHost::with_recording_mmu(profile);
        let (_vm, gmem) = host.vm_and_gmem(SW_PROTECTED_VM, 4 * PAGE, 0);
        host.fallocate(gmem, KEEP, 0, PAGE as i64).unwrap();
        assert_eq!(host.inject_memory_failure(gmem, 0), Ok(MfResult::Delayed));
        assert_eq!(host.take_mmu_events(), []);
    }
}

#[test]
fn migrate_folio_warns_and_is_einval() {
    for profile in both_versions() {
        let (host, _vm, gmem) = setup(profile, 4, 0);
        let file = host.gmem_file(gmem);
        assert_errno(gmem_migrate(&file, PgOff(0)), ENOENT, "no folio to migrate");
        host.fallocate(gmem, KEEP, 0, PAGE as i64).unwrap();
        assert_errno(gmem_migrate(&file, PgOff(0)), EINVAL, "guest_memfd memory is unmovable");
        let warnings = host.take_warnings();
        assert!(
            warnings.len() == 1 && warnings[0].kind == WarnKind::WarnOnce && warnings[0].detail.contains("migrate"),
            "WARN_ON_ONCE in kvm_gmem_migrate_folio: {warnings:#?}"
        );
        host.check("migrate");
    }
}

#[test]
fn ftruncate_is_einval_through_setattr_whatever_the_size() {
    for profile in both_versions() {
        let (host, _vm, gmem) = setup(profile, 4, 0);
        for length in [0, PAGE as i64, 4 * PAGE as i64, 8 * PAGE as i64] {
            assert_errno(host.ftruncate(gmem, length), EINVAL, &format!("ftruncate {length}"));
        }
        assert_errno(host.ftruncate(gmem, -1), EINVAL, "negative length (generic check)");
        assert_eq!(host.fstat(gmem).unwrap().size, 4 * PAGE as i64);
    }
}
