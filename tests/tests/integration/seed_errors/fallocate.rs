//! kvm_gmem_fallocate: EOPNOTSUPP (no KEEP_SIZE, other modes), EINVAL (unaligned), then
//! kvm_gmem_allocate (EINVAL past EOF, EINTR, ENOMEM) or kvm_gmem_punch_hole (always 0);
//! file_modified only on success.

use super::*;

#[test]
fn fallocate_eopnotsupp_without_keep_size_even_when_unaligned() {
    for profile in both_versions() {
        let (host, _vm, gmem) = setup(profile, 4, 0);
        assert_errno(host.fallocate(gmem, 0, 0, PAGE as i64), EOPNOTSUPP, "mode 0");
        assert_errno(host.fallocate(gmem, 0, 1, 1), EOPNOTSUPP, "mode 0, unaligned: the mode is checked first");
        assert_errno(host.fallocate(gmem, 0, 8 * PAGE as i64, PAGE as i64), EOPNOTSUPP, "mode 0, past EOF");
    }
}

#[test]
fn fallocate_eopnotsupp_for_modes_other_than_keep_size_and_punch_hole() {
    for profile in both_versions() {
        let (host, _vm, gmem) = setup(profile.clone(), 4, 0);
        for mode in [
            FALLOC_FL_ZERO_RANGE | KEEP,
            FALLOC_FL_UNSHARE_RANGE | KEEP,
            FALLOC_FL_ZERO_RANGE,
            FALLOC_FL_UNSHARE_RANGE,
            FALLOC_FL_COLLAPSE_RANGE,
            FALLOC_FL_INSERT_RANGE,
        ] {
            assert_errno(
                host.fallocate(gmem, mode, 0, PAGE as i64),
                EOPNOTSUPP,
                &format!("{}: mode {mode:#x}", profile.name),
            );
        }
        assert_eq!(nrpages(&host, gmem), 0);
    }
}

#[test]
fn fallocate_einval_for_unaligned_offset_or_length() {
    let p = PAGE as i64;
    for profile in both_versions() {
        let (host, _vm, gmem) = setup(profile, 4, 0);
        let cases =
            [(0, 1), (0, p - 1), (0, p + 1), (1, 1), (1, p - 1), (1, p), (1, p + 1), (p, 1), (p, p - 1), (p, p + 1)];
        for (offset, len) in cases {
            assert_errno(host.fallocate(gmem, PUNCH, offset, len), EINVAL, &format!("punch {offset} {len}"));
            assert_errno(host.fallocate(gmem, KEEP, offset, len), EINVAL, &format!("allocate {offset} {len}"));
        }
        assert_eq!(nrpages(&host, gmem), 0);
    }
}

#[test]
fn fallocate_einval_allocating_past_eof_while_punching_past_eof_succeeds() {
    // The selftest sequence T14.8 a-i on one descriptor.
    let p = PAGE as i64;
    let total = 4 * p;
    for profile in both_versions() {
        let (host, _vm, gmem) = setup(profile, 4, 0);
        assert_eq!(host.fallocate(gmem, KEEP, 0, total), Ok(()));
        assert_eq!(nrpages(&host, gmem), 4);
        assert_errno(host.fallocate(gmem, PUNCH, p - 1, p), EINVAL, "b");
        assert_errno(host.fallocate(gmem, KEEP, total, p), EINVAL, "c: allocation past i_size");
        assert_errno(host.fallocate(gmem, KEEP, total + p, p), EINVAL, "d");
        assert_errno(host.fallocate(gmem, KEEP, total - p, 2 * p), EINVAL, "allocation straddling i_size");
        assert_eq!(host.fallocate(gmem, PUNCH, total, p), Ok(()), "e: punch past EOF");
        assert_eq!(host.fallocate(gmem, PUNCH, total + p, p), Ok(()), "f");
        assert_errno(host.fallocate(gmem, PUNCH, p, p - 1), EINVAL, "g");
        assert_eq!(host.fallocate(gmem, PUNCH, p, p), Ok(()), "h");
        assert_eq!(nrpages(&host, gmem), 3);
        assert_eq!(host.fallocate(gmem, KEEP, p, p), Ok(()), "i: refill the hole");
        assert_eq!(nrpages(&host, gmem), 4);
    }
}

#[test]
fn fallocate_eintr_when_a_signal_is_pending_keeps_partial_progress() {
    for profile in both_versions() {
        let (host, _vm, gmem) = setup(profile, 4, 0);
        let mtime = host.fstat(gmem).unwrap().mtime;
        host.machine().inject.arm(FaultPoint::SignalPending, 0, 1);
        assert_errno(host.fallocate(gmem, KEEP, 0, 4 * PAGE as i64), EINTR, "signal before the first page");
        assert_eq!(nrpages(&host, gmem), 0);
        host.machine().inject.arm(FaultPoint::SignalPending, 2, 1);
        assert_errno(host.fallocate(gmem, KEEP, 0, 4 * PAGE as i64), EINTR, "signal before the third page");
        assert_eq!(nrpages(&host, gmem), 2, "the pages allocated before the signal stay");
        assert_eq!(host.fstat(gmem).unwrap().mtime, mtime, "a failed fallocate does not touch mtime");
        assert_eq!(host.fallocate(gmem, KEEP, 0, 4 * PAGE as i64), Ok(()));
        assert_eq!(host.machine().inject.fired(FaultPoint::SignalPending), 2);
    }
}

#[test]
fn fallocate_enomem_when_folio_allocation_fails() {
    for profile in both_versions() {
        let (host, _vm, gmem) = setup(profile, 4, 0);
        let mtime = host.fstat(gmem).unwrap().mtime;
        host.machine().inject.arm(FaultPoint::AllocFolio, 0, 1);
        assert_errno(host.fallocate(gmem, KEEP, 0, 4 * PAGE as i64), ENOMEM, "first folio");
        assert_eq!(nrpages(&host, gmem), 0);
        host.machine().inject.arm(FaultPoint::AllocFolio, 1, 1);
        assert_errno(host.fallocate(gmem, KEEP, 0, 4 * PAGE as i64), ENOMEM, "second folio");
        assert_eq!(nrpages(&host, gmem), 1);
        assert_eq!(host.fstat(gmem).unwrap().mtime, mtime);
    }
}

#[test]
fn fallocate_changes_mtime_and_ctime_only_on_success() {
    for profile in both_versions() {
        let (host, _vm, gmem) = setup(profile, 4, 0);
        let t0 = host.fstat(gmem).unwrap();
        host.fallocate(gmem, KEEP, 0, PAGE as i64).unwrap();
        let t1 = host.fstat(gmem).unwrap();
        assert!(t1.mtime > t0.mtime && t1.ctime > t0.ctime, "allocate: {t0:?} -> {t1:?}");
        host.fallocate(gmem, PUNCH, 0, PAGE as i64).unwrap();
        let t2 = host.fstat(gmem).unwrap();
        assert!(t2.mtime > t1.mtime && t2.ctime > t1.ctime, "punch: {t1:?} -> {t2:?}");
        let _ = host.fallocate(gmem, KEEP, 8 * PAGE as i64, PAGE as i64);
        let _ = host.fallocate(gmem, 0, 0, PAGE as i64);
        let _ = host.fallocate(gmem, PUNCH, 1, PAGE as i64);
        let _ = host.fallocate(gmem, PUNCH, 0, -1);
        let t3 = host.fstat(gmem).unwrap();
        assert_eq!((t3.mtime, t3.ctime), (t2.mtime, t2.ctime), "failures leave the times alone");
        assert_eq!(t3.atime, t0.atime, "atime never changes");
    }
}

#[test]
fn fallocate_allocates_near_the_end_of_a_one_tib_file_and_fstat_counts_no_blocks() {
    for profile in both_versions() {
        let host = CheckedHost::new(profile);
        let (_vm, gmem) = host.vm_and_gmem(SW_PROTECTED_VM, 1 << 40, 0);
        host.fallocate(gmem, KEEP, (1 << 40) - 2 * PAGE as i64, 2 * PAGE as i64).unwrap();
        assert_eq!(nrpages(&host, gmem), 2);
        assert_eq!(host.fstat(gmem).unwrap().blocks, 0, "st_blocks is always 0");
        host.fallocate(gmem, PUNCH, 0, 1 << 40).unwrap();
        assert_eq!(nrpages(&host, gmem), 0);
    }
}

#[test]
#[ignore = "NOT MODELLED: the first write fault through a MAP_SHARED mapping updates mtime/ctime; the model keeps no user PTEs, so it cannot tell a first write fault from later writes (fstat's times are not part of the script format)"]
fn first_write_fault_through_mmap_changes_mtime_and_ctime() {
    // Measured on 6.18.44 (kernel-semantics.md §2.7, Timestamps): do_shared_fault ->
    // fault_dirty_shared_page dirties the folio (noop_dirty_folio) and calls file_update_time.
    let host = CheckedHost::new(KernelProfile::v6_18());
    let (_vm, gmem) = host.vm_and_gmem(DEFAULT_VM, 4 * PAGE, MMAP | INIT_SHARED);
    let addr = host.mmap(gmem, 4 * PAGE, 0, RW, MAP_SHARED).unwrap();
    let before = host.fstat(gmem).unwrap();
    host.store(addr, &[1]).unwrap();
    let after = host.fstat(gmem).unwrap();
    assert!(after.mtime > before.mtime && after.ctime > before.ctime, "{before:?} -> {after:?}");
}
