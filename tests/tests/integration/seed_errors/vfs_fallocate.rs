//! vfs_fallocate in front of guest_memfd: EBADF (descriptor), EINVAL (offset/len), EOPNOTSUPP or
//! EINVAL (mode, per VFS version), EFBIG (overflow), then the file's own checks.

use super::*;

#[test]
fn vfs_fallocate_ebadf_for_a_closed_descriptor_whatever_the_arguments() {
    for profile in both_versions() {
        let (host, _vm, gmem) = setup(profile, 4, 0);
        host.close(gmem).unwrap();
        assert_errno(host.fallocate(gmem, 0xff00, -1, 0), EBADF, "closed descriptor");
        assert_errno(host.fallocate(-1, KEEP, 0, PAGE as i64), EBADF, "descriptor -1");
    }
}

#[test]
fn vfs_fallocate_einval_for_negative_offset_or_nonpositive_len_before_the_mode() {
    for profile in both_versions() {
        let (host, _vm, gmem) = setup(profile, 4, 0);
        for (offset, len) in [(-1, PAGE as i64), (-(PAGE as i64), PAGE as i64), (0, 0), (0, -(PAGE as i64))] {
            for mode in [0x100, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_COLLAPSE_RANGE | KEEP, PUNCH] {
                assert_errno(
                    host.fallocate(gmem, mode, offset, len),
                    EINVAL,
                    &format!("mode {mode:#x} {offset} {len}"),
                );
            }
        }
    }
}

#[test]
fn vfs_fallocate_efbig_on_overflow_before_guest_memfd_checks() {
    let huge = i64::MAX & !(PAGE as i64 - 1);
    for profile in both_versions() {
        let (host, _vm, gmem) = setup(profile, 4, 0);
        assert_errno(host.fallocate(gmem, PUNCH, PAGE as i64, huge), EFBIG, "punch overflowing loff_t");
        assert_errno(host.fallocate(gmem, KEEP, PAGE as i64, huge), EFBIG, "allocate overflowing loff_t");
        assert_errno(host.fallocate(gmem, 0, PAGE as i64, huge), EFBIG, "EFBIG before gmem's EOPNOTSUPP");
        assert_errno(host.fallocate(gmem, PUNCH, 1, i64::MAX), EFBIG, "EFBIG before gmem's EINVAL");
        assert_eq!(host.fallocate(gmem, PUNCH, 0, huge), Ok(()), "the largest punch that fits");
    }
}

#[test]
fn vfs_fallocate_mode_checks_differ_between_v6_14_and_v6_18() {
    // (mode, v6.14 errno, v6.18 errno) for a well-formed range and for one whose end overflows:
    // the VFS rejects the mode before its EFBIG check, guest_memfd after it.
    type Row = (i32, KResult<()>, KResult<()>, KResult<()>, KResult<()>);
    const OK: KResult<()> = Ok(());
    const NS: KResult<()> = Err(EOPNOTSUPP);
    const IV: KResult<()> = Err(EINVAL);
    const FB: KResult<()> = Err(EFBIG);
    let rows: [Row; 19] = [
        // mode                                      v6.14 ok  v6.14 ovf  v6.18 ok  v6.18 ovf
        (0, NS, FB, NS, FB),
        (KEEP, OK, FB, OK, FB),
        (FALLOC_FL_PUNCH_HOLE, NS, NS, NS, NS),
        (PUNCH, OK, FB, OK, FB),
        (FALLOC_FL_ZERO_RANGE, NS, FB, NS, FB),
        (FALLOC_FL_ZERO_RANGE | KEEP, NS, FB, NS, FB),
        (PUNCH | FALLOC_FL_ZERO_RANGE, NS, NS, NS, NS),
        (FALLOC_FL_COLLAPSE_RANGE, NS, FB, NS, FB),
        (FALLOC_FL_COLLAPSE_RANGE | KEEP, IV, IV, NS, NS),
        (FALLOC_FL_INSERT_RANGE | KEEP, IV, IV, NS, NS),
        (FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_INSERT_RANGE, IV, IV, NS, NS),
        (FALLOC_FL_COLLAPSE_RANGE | PUNCH, IV, IV, NS, NS),
        (FALLOC_FL_UNSHARE_RANGE, NS, FB, NS, FB),
        (FALLOC_FL_UNSHARE_RANGE | KEEP, NS, FB, NS, FB),
        (FALLOC_FL_UNSHARE_RANGE | PUNCH, IV, IV, NS, NS),
        (FALLOC_FL_NO_HIDE_STALE | PUNCH, NS, NS, NS, NS),
        (FALLOC_FL_WRITE_ZEROES, NS, NS, NS, FB),
        (FALLOC_FL_WRITE_ZEROES | KEEP, NS, NS, NS, NS),
        (0x100 | KEEP, NS, NS, NS, NS),
    ];
    let huge = i64::MAX & !(PAGE as i64 - 1);
    for (mode, v14, v14_overflow, v18, v18_overflow) in rows {
        for (profile, in_range, overflow) in
            [(KernelProfile::v6_14(), v14, v14_overflow), (KernelProfile::v6_18(), v18, v18_overflow)]
        {
            let (host, _vm, gmem) = setup(profile.clone(), 4, 0);
            let what = format!("{}: mode {mode:#x}", profile.name);
            assert_eq!(host.fallocate(gmem, mode, 0, PAGE as i64), in_range, "{what}, offset 0 len 4096");
            assert_eq!(host.fallocate(gmem, mode, PAGE as i64, huge), overflow, "{what}, overflowing range");
        }
    }
}
