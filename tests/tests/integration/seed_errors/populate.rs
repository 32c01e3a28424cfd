//! kvm_gmem_populate: npages (per version), the slot, the file, then per folio EINTR, get_pfn
//! errors, EEXIST, the PRIVATE attribute; partial progress is returned as a count.

use super::*;

#[test]
fn populate_v6_14_negative_npages_is_einval_and_zero_npages_returns_zero() {
    let (host, vm, _gmem) = setup_private(KernelProfile::v6_14());
    assert_errno(host.populate(vm, GPA, u64::MAX, None), EINVAL, "npages -1");
    assert_errno(host.populate(vm, GPA, 1 << 63, None), EINVAL, "npages i64::MIN");
    assert_eq!(host.populate(vm, GPA, 0, None), Ok(0));
    // npages 0 still looks the memslot up first.
    assert_errno(host.populate(vm, 0x80_0000, 0, None), EINVAL, "npages 0 without a memslot");
}

#[test]
fn populate_v6_18_nonpositive_npages_warns_and_is_einval() {
    let (host, vm, _gmem) = setup_private(KernelProfile::v6_18());
    assert_errno(host.unchecked().populate(vm, GPA, 0, None), EINVAL, "npages 0");
    let warnings = host.take_warnings();
    assert!(
        warnings.len() == 1 && warnings[0].kind == WarnKind::WarnOnce && warnings[0].detail.contains("npages <= 0"),
        "WARN_ON_ONCE(npages <= 0): {warnings:#?}"
    );
    assert_errno(host.unchecked().populate(vm, GPA, u64::MAX, None), EINVAL, "npages -1");
    assert!(host.take_warnings().is_empty(), "the WARN_ON_ONCE site is spent");
    host.check("populate with npages <= 0");
}

#[test]
fn populate_einval_without_a_guest_memfd_memslot() {
    for profile in both_versions() {
        let (host, vm, _gmem) = setup_private(profile);
        assert_errno(host.populate(vm, 0x80_0000, 1, None), EINVAL, "no memslot");
        host.set_user_memory_region2(vm, &region(2, 0, 0x40_0000, 4 * PAGE, 0, 0, 0)).unwrap();
        assert_errno(host.populate(vm, 0x40_0000, 1, None), EINVAL, "not a guest_memfd memslot");
    }
}

#[test]
fn populate_efault_once_the_file_is_released() {
    for profile in both_versions() {
        let (host, vm, gmem) = setup_private(profile);
        host.close(gmem).unwrap();
        assert_errno(host.populate(vm, GPA, 1, None), EFAULT, "released file");
    }
}

#[test]
fn populate_einval_when_the_range_is_not_private() {
    for profile in both_versions() {
        let (host, vm, gmem) = setup_bound(profile, 4);
        assert_errno(host.populate(vm, GPA, 4, None), EINVAL, "shared range");
        // The folio was grabbed for the first page, then left unprepared.
        let file = host.gmem_file(gmem);
        let folio = file.inode().mapping().get_folio(PgOff(0)).expect("allocated by __kvm_gmem_get_pfn");
        assert!(!folio.test_uptodate());
        folio.put();
        // Private on the first page only: one page done.
        host.set_memory_attributes(vm, &attrs(GPA, PAGE, PRIVATE)).unwrap();
        assert_eq!(host.populate(vm, GPA, 4, None), Ok(1));
    }
}

#[test]
fn populate_eexist_for_an_already_prepared_folio() {
    for profile in both_versions() {
        let (host, vm, _gmem) = setup_private(profile);
        assert_eq!(host.populate(vm, GPA, 1, None), Ok(1));
        assert_errno(host.populate(vm, GPA, 1, None), EEXIST, "populated twice");
        let kvm = host.kvm(vm);
        get_pfn(&kvm, GFN, GFN + 1).unwrap().page.put();
        assert_errno(host.populate(vm, GPA + PAGE, 1, None), EEXIST, "prepared by get_pfn");
    }
}

#[test]
fn populate_returns_partial_progress_clamps_to_the_slot_and_copies_the_source() {
    for profile in both_versions() {
        let (host, vm, gmem) = setup_private(profile);
        let kvm = host.kvm(vm);
        get_pfn(&kvm, GFN, GFN + 2).unwrap().page.put();
        let source: Vec<u8> = (0..4 * PAGE).map(|i| (i / PAGE) as u8 + 1).collect();
        assert_eq!(host.populate(vm, GPA, 4, Some(&source)), Ok(2), "stops at the prepared page 2");
        let file = host.gmem_file(gmem);
        for index in 0..2u64 {
            let folio = file.inode().mapping().get_folio(PgOff(index)).unwrap();
            let mut bytes = [0u8; 16];
            host.machine().mem.read(folio.pfn(), 0, &mut bytes);
            assert_eq!(bytes, [index as u8 + 1; 16], "page {index} holds its source page");
            assert!(folio.test_uptodate());
            folio.put();
        }
        assert_eq!(host.populate(vm, GPA + 3 * PAGE, 10, None), Ok(1), "clamped to the slot's last page");
    }
}

#[test]
fn populate_returns_get_pfns_errno_for_the_first_page_and_partial_progress_after_it() {
    // __kvm_gmem_get_pfn failing inside the loop: a poisoned folio (EHWPOISON) or one that cannot
    // be allocated (ENOMEM). `ret && !i ? ret : i`: the errno only when no page was done.
    for profile in both_versions() {
        let name = profile.name.clone();
        let (host, vm, gmem) = setup_private(profile);
        host.fallocate(gmem, KEEP, PAGE as i64, PAGE as i64).unwrap();
        assert_eq!(host.inject_memory_failure(gmem, PAGE), Ok(MfResult::Delayed));
        assert_errno(host.populate(vm, GPA + PAGE, 1, None), EHWPOISON, "a poisoned first page");
        assert_eq!(host.populate(vm, GPA, 2, None), Ok(1), "{name}: stops at the poisoned page 1");
        let inject = &host.machine().inject;
        inject.arm(FaultPoint::AllocFolio, 0, 1);
        assert_errno(host.populate(vm, GPA + 2 * PAGE, 2, None), ENOMEM, "the first folio cannot be allocated");
        inject.arm(FaultPoint::AllocFolio, 1, 1);
        assert_eq!(host.populate(vm, GPA + 2 * PAGE, 2, None), Ok(1), "{name}: the second cannot be allocated");
        assert_eq!(nrpages(&host, gmem), 3, "{name}: pages 0 and 2 populated, page 1 poisoned, page 3 never allocated");
        host.check("populate with __kvm_gmem_get_pfn errors");
    }
}

#[test]
fn populate_eintr_when_a_signal_is_pending() {
    for profile in both_versions() {
        let (host, vm, _gmem) = setup_private(profile);
        host.machine().inject.arm(FaultPoint::SignalPending, 0, 1);
        assert_errno(host.populate(vm, GPA, 2, None), EINTR, "signal before the first page");
        host.machine().inject.arm(FaultPoint::SignalPending, 1, 1);
        assert_eq!(host.populate(vm, GPA, 2, None), Ok(1), "signal after one page: partial progress");
    }
}
