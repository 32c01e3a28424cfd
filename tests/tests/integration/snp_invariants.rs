//! The SEV-SNP invariants (arch-and-mmu.md §5.2, S1–S12) and the guest-VMSA part of
//! INV-NO-STALE-PFN: a launched guest going through its ordinary life (launch, faults,
//! validation, page-state changes both ways, AP creation with a guest VMSA) violates none of
//! them, and one negative control per invariant breaks the state (or the call) on purpose and
//! shows the checker, or the WARN at the call, naming it. Where the hardware model makes a
//! violation impossible (S5, S7, and the hardware halves of S3 and S4), the control shows the
//! hardware refusing.

use gmem_arch::sev::firmware::{LaunchUpdateRecord, SevRet};
use gmem_arch::sev::ghcb::{self, PscEntry, PSC_OP_SHARED, SVM_VMGEXIT_AP_CREATE};
use gmem_arch::sev::invariants::*;
use gmem_arch::sev::kvm::SvmVm;
use gmem_arch::sev::measure::SnpPageType;
use gmem_arch::sev::rmp::{RmpError, RmpState, PAGES_PER_2M};
use gmem_kvm::arch::{GuestFault, PgLevel, PFERR_GUEST_RMP_MASK};
use gmem_kvm::invariants::{Violation, INV_NO_STALE_PFN};
use gmem_kvm::tdp_mmu::Spte;
use gmem_kvm::vcpu::RunError;
use gmem_kvm::{Gfn, KernelProfile};
use gmem_mm::folio::Folio;
use gmem_mm::Errno;
use gmem_sync::warn::{WarnKind, Warning};
use gmem_tests::*;

/// The guest's GHCB: a shared page (the second MiB is shared).
const GHCB: u64 = (1 << 20) + PAGE;

/// The violations of invariant `name`.
fn violations_named(guest: &SnpGuest, name: &str) -> Vec<Violation> {
    guest.host.violations().into_iter().filter(|violation| violation.invariant == name).collect()
}

/// Asserts that the checker reports `name` with a detail containing `needle`.
#[track_caller]
fn assert_violation(guest: &SnpGuest, name: &str, needle: &str) {
    let all = guest.host.violations();
    assert!(
        all.iter().any(|violation| violation.invariant == name && violation.detail.contains(needle)),
        "expected a {name} violation mentioning {needle:?}, got:\n  {}",
        all.iter().map(|violation| violation.to_string()).collect::<Vec<_>>().join("\n  ")
    );
}

/// Takes the recorded warnings and asserts one of `kind` contains `needle`.
#[track_caller]
fn assert_warning(guest: &SnpGuest, kind: WarnKind, needle: &str) -> Vec<Warning> {
    let warnings = guest.host.take_warnings();
    assert!(
        warnings.iter().any(|warning| warning.kind == kind && warning.detail.contains(needle)),
        "expected a {kind:?} warning mentioning {needle:?}, got {warnings:#?}"
    );
    warnings
}

/// The guest (vCPU 0) validates the private page at `gpa` (faulting it in).
#[track_caller]
fn validate(guest: &SnpGuest, gpa: u64) {
    assert_eq!(guest.host.unchecked().snp_pvalidate(guest.vcpus[0], gpa, false, true), Ok(0), "PVALIDATE {gpa:#x}");
}

#[test]
fn a_launched_guest_through_its_life_violates_nothing() {
    for profile in [KernelProfile::v6_14(), KernelProfile::v6_18(), profile("v6.18+F11")] {
        let guest = SnpGuest::launched(profile.clone(), 2);
        let host = guest.host.unchecked();
        // Lazily faulted, validated, written and read.
        validate(&guest, 0x5000);
        guest.host.guest_store(guest.vcpus[0], 0x5000, b"private", None).unwrap();
        assert_eq!(guest.host.guest_load(guest.vcpus[0], 0x1000, 6, None).unwrap(), b"initrd");
        // A page-state change to shared and back.
        guest.enable_psc(GHCB);
        validate(&guest, 0x7000);
        let status = host.snp_set_pages_state(guest.vcpus[0], GHCB, 0x7000, 2, false, |exit| guest.convert(exit));
        assert_eq!(status, Ok(0), "{}", profile.name);
        guest.host.check("PSC to shared");
        let status = host.snp_set_pages_state(guest.vcpus[0], GHCB, 0x7000, 2, true, |exit| guest.convert(exit));
        assert_eq!(status, Ok(0), "{}", profile.name);
        guest.host.check("PSC to private");
        // AP Creation: vCPU 1 runs with a VMSA the guest provides at gfn 9.
        validate(&guest, 0x9000);
        assert_eq!(host.snp_rmpadjust_vmsa(guest.vcpus[0], 0x9000, true), Ok(0));
        let features = SvmVm::of(&guest.kvm()).unwrap().vmsa_features();
        assert_eq!(host.snp_ap_creation(guest.vcpus[0], SVM_VMGEXIT_AP_CREATE, 1, 0x9000, features), Ok(0));
        host.snp_register_ghcb(guest.vcpus[1], GHCB + PAGE).unwrap();
        guest.host.check("AP creation with a guest VMSA");
        let kvm = guest.kvm();
        let vcpu1 = kvm.get_vcpu_by_id(1).unwrap();
        assert_eq!(ghcb::guest_vmsa(&vcpu1).map(|(_, pfn)| pfn), Some(guest.mapped_pfn(9)), "{}", profile.name);
        assert!(guest.host.violations().is_empty(), "{:?}", guest.host.violations());
        assert!(guest.host.machine().warnings.is_empty(), "{:?}", guest.host.machine().warnings.snapshot());
    }
}

#[test]
fn s1_names_frames_assigned_to_nobody_and_frames_in_the_free_pool() {
    let guest = SnpGuest::launched(KernelProfile::v6_18(), 1);
    let snp = guest.snp_host();
    let mem = &guest.host.machine().mem;
    // A host frame given to the guest's ASID that is none of its memory.
    let stray = mem.alloc(0).unwrap();
    snp.rmp_make_private(stray, 0x30_0000, PgLevel::Level4K, guest.asid(), false).unwrap();
    assert_violation(
        &guest,
        S1_OWNERSHIP,
        &format!("{stray:?} is assigned to the SNP guest with ASID {}", guest.asid()),
    );
    // An ASID no live guest holds.
    let orphan = mem.alloc(0).unwrap();
    snp.rmp_make_private(orphan, 0x1000, PgLevel::Level4K, 60, false).unwrap();
    assert_violation(&guest, S1_OWNERSHIP, &format!("{orphan:?}"));
    assert_violation(&guest, S1_OWNERSHIP, "carries ASID 60, which no live SNP guest holds");
    // A firmware-owned page no guest owns.
    let firmware = snp.snp_alloc_firmware_page().unwrap();
    assert_violation(&guest, S1_OWNERSHIP, &format!("{firmware:?}"));
    // An assigned frame freed to the host.
    Folio::from_pfn(mem, stray).put();
    assert_violation(&guest, S1_OWNERSHIP, &format!("{stray:?}"));
    assert_violation(&guest, S1_OWNERSHIP, "is assigned but in the host free pool");
}

#[test]
fn s2_names_a_private_mapping_whose_rmp_entry_has_another_gpa() {
    let guest = SnpGuest::launched(KernelProfile::v6_18(), 1);
    validate(&guest, 0x5000);
    let pfn = guest.mapped_pfn(5);
    let rmp = guest.snp_host().rmp().clone();
    let entry = rmp.read(pfn).unwrap();
    rmp.set_entry_for_test(pfn, gmem_arch::sev::rmp::RmpEntry { gpa: 0x6000, ..entry });
    assert_violation(&guest, S2_IDENTITY, &format!("gfn 0x5 of the SNP guest with ASID {} maps {pfn:?}", guest.asid()));
    // The hardware refuses the access through it: a nested RMP fault, not data.
    let access = rmp.check_guest_access(guest.asid(), 0x5000, pfn, PgLevel::Level4K, true, false);
    assert!(matches!(access, Err(GuestFault::Npf { .. })), "{access:?}");
    // Another ASID is an identity violation too.
    rmp.set_entry_for_test(pfn, gmem_arch::sev::rmp::RmpEntry { asid: guest.asid() + 1, ..entry });
    assert!(!violations_named(&guest, S2_IDENTITY).is_empty());
}

#[test]
fn s3_names_a_2m_entry_with_a_stray_4k_entry_and_the_hardware_refuses_one() {
    let guest = SnpGuest::launched(KernelProfile::v6_18(), 1);
    let snp = guest.snp_host();
    let rmp = snp.rmp().clone();
    let mem = &guest.host.machine().mem;
    // A 2M folio assigned with one 2M entry: well formed.
    let base = mem.alloc(9).unwrap();
    snp.rmp_make_private(base, 0x20_0000, PgLevel::Level2M, guest.asid(), false).unwrap();
    assert!(violations_named(&guest, S3_OVERLAP).is_empty(), "{:?}", guest.host.violations());
    // The hardware refuses a 4K entry inside it.
    let inside = base.offset(7);
    assert_eq!(rmp.rmpupdate(inside, &RmpState::default()), Err(RmpError::FailOverlap));
    assert_eq!(
        rmp.rmpupdate(inside, &RmpState { gpa: 0x9000, assigned: true, asid: guest.asid(), ..RmpState::default() }),
        Err(RmpError::FailOverlap)
    );
    // Corrupt state: a separately assigned 4K entry inside the 2M entry.
    let entry = rmp.read(inside).unwrap();
    rmp.set_entry_for_test(inside, gmem_arch::sev::rmp::RmpEntry { pagesize_2m: false, gpa: 0x9000, ..entry });
    assert_violation(&guest, S3_OVERLAP, &format!("the 2M RMP entry at {base:?}"));
    assert_violation(&guest, S3_OVERLAP, &format!("covers {inside:?}"));
    // An entry claiming a 2M size in a region without a 2M entry.
    let mut bytes = [0u8; 6];
    guest.host.unchecked().guest_access(guest.vcpus[0], 0x1000, &mut bytes, false, None).unwrap();
    let lone = guest.mapped_pfn(1);
    let entry = rmp.read(lone).unwrap();
    rmp.set_entry_for_test(lone, gmem_arch::sev::rmp::RmpEntry { pagesize_2m: true, ..entry });
    assert_violation(&guest, S3_OVERLAP, &format!("{lone:?}"));
}

#[test]
fn s4_names_a_2m_mapping_over_4k_rmp_entries_and_the_hardware_faults_it() {
    // 4M of memory, so that gfns 0x200..0x400 are one 2M page, all PRIVATE.
    let guest = SnpGuest::new(KernelProfile::v6_18(), 4 << 20, 4 << 20, 1);
    guest.launch_start();
    guest.launch_finish();
    let snp = guest.snp_host();
    let rmp = snp.rmp().clone();
    let kvm = guest.kvm();
    let mem = &guest.host.machine().mem;
    // A 2M frame private at gpa 2M, mapped by a 2M private SPTE (as a 2M guest_memfd folio
    // would be): S4 holds.
    let base = mem.alloc(9).unwrap();
    snp.rmp_make_private(base, 0x20_0000, PgLevel::Level2M, guest.asid(), false).unwrap();
    let spte = Spte {
        pfn: base,
        level: PgLevel::Level2M,
        writable: true,
        private: true,
        accessed: false,
        generation: mem.generation(base),
    };
    kvm.tdp_mmu().unwrap().install_unchecked_for_test(&kvm, Gfn(0x200), spte);
    assert!(violations_named(&guest, S4_NPT_LEVEL).is_empty(), "{:?}", guest.host.violations());
    // PSMASH under the mapping without zapping it: the NPT leaf is now larger than the RMP's.
    assert_eq!(snp.psmash(base), Ok(Ok(())));
    assert_violation(&guest, S4_NPT_LEVEL, "the private 2M SPTE at gfn 0x200");
    // And the hardware faults a private access through it (an RMP nested fault: the leaf is not
    // the entry's size).
    let access = rmp.check_guest_access(guest.asid(), 0x20_1000, base.offset(1), PgLevel::Level2M, true, false);
    assert!(
        matches!(access, Err(GuestFault::Npf { error_code }) if error_code & PFERR_GUEST_RMP_MASK != 0),
        "{access:?}"
    );
}

#[test]
fn s5_the_hardware_clears_validated_on_rmpupdate_keeps_it_on_psmash_and_faults_unvalidated_accesses() {
    let guest = SnpGuest::launched(KernelProfile::v6_18(), 1);
    let asid = guest.asid();
    let rmp = guest.snp_host().rmp().clone();
    let mem = &guest.host.machine().mem;
    let private = RmpState { gpa: 0x40_0000, assigned: true, pagesize_2m: true, asid, ..RmpState::default() };
    let base = mem.alloc(9).unwrap();
    rmp.rmpupdate(base, &private).unwrap();
    // A private access before PVALIDATE is a #VC in the guest, never data.
    let access = rmp.check_guest_access(asid, 0x40_0000, base, PgLevel::Level2M, true, false);
    assert!(matches!(access, Err(GuestFault::Exception(e)) if e.vector == "#VC"), "{access:?}");
    assert!(rmp.pvalidate(asid, 0x40_0000, base, PgLevel::Level2M, true, true).unwrap().is_ok());
    // PSMASH keeps Validated in all 512 entries.
    assert_eq!(rmp.psmash(base), Ok(()));
    assert!((0..PAGES_PER_2M).all(|i| rmp.read(base.offset(i)).unwrap().validated));
    // RMPUPDATE clears it, even when it writes the very same state.
    let page = base.offset(3);
    let same = RmpState { gpa: 0x40_3000, pagesize_2m: false, ..private };
    rmp.rmpupdate(page, &same).unwrap();
    assert!(!rmp.read(page).unwrap().validated, "RMPUPDATE cannot leave Validated set");
    assert!(rmp.read(base.offset(4)).unwrap().validated, "its neighbours keep theirs");
    // Give the frames back (the control leaves no other violation behind).
    for i in 0..PAGES_PER_2M {
        rmp.rmpupdate(base.offset(i), &RmpState::default()).unwrap();
    }
    rmp.clflush(base, PAGES_PER_2M);
    Folio::from_pfn(mem, base).put();
    guest.host.check("S5 control");
}

#[test]
fn s6_a_host_write_to_a_private_frame_is_an_rmp_oops() {
    let guest = SnpGuest::launched(KernelProfile::v6_18(), 1);
    assert_eq!(guest.host.guest_load(guest.vcpus[0], 0, 6, None).unwrap(), b"kernel");
    let pfn = guest.mapped_pfn(0);
    guest.host.machine().mem.write(pfn, 0, b"host");
    let warnings = assert_warning(&guest, WarnKind::Oops, &format!("RMP #PF: host write to {pfn:?}"));
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let mut byte = [0u8; 4];
    guest.host.machine().mem.read(pfn, 0, &mut byte);
    assert_ne!(&byte, b"host", "the faulting write did not retire");
}

#[test]
fn s7_the_hardware_refuses_to_change_an_immutable_entry() {
    let guest = SnpGuest::launched(KernelProfile::v6_18(), 1);
    let snp = guest.snp_host();
    let context = guest.context();
    let before = snp.rmp().read(context).unwrap();
    assert!(before.immutable && before.assigned, "{before:?}");
    assert_eq!(snp.rmp().rmpupdate(context, &RmpState::default()), Err(RmpError::FailPermission));
    assert_eq!(snp.rmp_make_shared(context, PgLevel::Level4K), Err(Errno::EFAULT));
    assert_eq!(snp.rmp().read(context).unwrap(), before, "the entry is unchanged");
    // An immutable 2M entry cannot be PSMASHed either.
    let base = guest.host.machine().mem.alloc(9).unwrap();
    let firmware_2m = RmpState { assigned: true, pagesize_2m: true, immutable: true, ..RmpState::default() };
    snp.rmp().rmpupdate(base, &firmware_2m).unwrap();
    assert_eq!(snp.rmp().psmash(base), Err(RmpError::FailPermission));
    guest.host.take_warnings();
}

#[test]
fn s8_a_prefault_before_launch_finish_is_named_at_the_prepare_and_in_the_state() {
    let guest = SnpGuest::new(KernelProfile::v6_18(), 2 << 20, 1 << 20, 1);
    guest.launch_start();
    guest.launch_update(0, &[b"kernel"], SnpPageType::Normal as u8).unwrap();
    guest.host.check("LAUNCH_UPDATE");
    // Pre-fault is refused before LAUNCH_FINISH...
    assert_errno(guest.host.unchecked().pre_fault_memory(guest.vcpus[0], 0x5000, PAGE), Errno::EOPNOTSUPP, "pre-fault");
    // ... unless the gate is open too early (upstream fix F7's bug).
    guest.kvm().set_pre_fault_allowed(true);
    assert_eq!(guest.host.unchecked().pre_fault_memory(guest.vcpus[0], 0x5000, PAGE), Ok(0));
    assert_warning(&guest, WarnKind::Warn, "S8: sev_gmem_prepare makes");
    assert_violation(&guest, S8_LIFECYCLE, "private 4K SPTE at gfn 0x5");
    assert_violation(&guest, S8_LIFECYCLE, "before SNP_LAUNCH_FINISH, not by LAUNCH_UPDATE");
}

#[test]
fn s8_a_failed_launch_update_gives_its_pages_back_and_a_page_left_private_is_named() {
    let guest = SnpGuest::new(KernelProfile::v6_18(), 2 << 20, 1 << 20, 1);
    guest.launch_start();
    let snp = guest.snp_host();
    // The firmware fails the page: it is reclaimed and given back to the hypervisor.
    snp.firmware().inject(gmem_arch::sev::firmware::SevCmd::SnpLaunchUpdate, SevRet::ResourceLimit, 0, 1);
    let error = guest.launch_update(0, &[b"one"], SnpPageType::Normal as u8).unwrap_err();
    assert_eq!((error.errno, error.fw_error), (Errno::EIO, SevRet::ResourceLimit.code()));
    assert!(guest.host.violations().is_empty(), "{:?}", guest.host.violations());
    // The page's folio is still in the page cache, not prepared; make its frame private again
    // behind KVM's back, as a cleanup that forgot it would leave it.
    let file = guest.host.gmem_file(guest.gmem);
    let folio = file.inode().mapping().folios().into_iter().find(|(index, _)| index.0 == 0).map(|(_, f)| f.pfn());
    drop(file);
    let first = folio.expect("the first page's folio");
    let rmp = snp.rmp().clone();
    let valid = gmem_arch::sev::rmp::RmpEntry {
        assigned: true,
        validated: true,
        asid: guest.asid(),
        gpa: 0,
        ..Default::default()
    };
    rmp.set_entry_for_test(first, valid);
    assert_violation(&guest, S8_LIFECYCLE, "its folio was never prepared or populated");
    // Left Pre-Guest (immutable) instead: named too.
    rmp.set_entry_for_test(first, gmem_arch::sev::rmp::RmpEntry { immutable: true, validated: false, ..valid });
    assert_violation(&guest, S8_LIFECYCLE, "is Pre-Guest");
    guest.host.take_warnings();
}

#[test]
fn s8_the_firmware_refuses_launch_update_after_finish_and_a_logged_one_is_named() {
    let guest = SnpGuest::launched(KernelProfile::v6_18(), 1);
    let error = guest.launch_update(4, &[b"late"], SnpPageType::Normal as u8).unwrap_err();
    assert_eq!((error.errno, error.fw_error), (Errno::EIO, SevRet::InvalidGuestState.code()));
    // The page was reclaimed and given back: nothing is left behind.
    assert!(guest.host.violations().is_empty(), "{:?}", guest.host.violations());
    assert!(guest.host.machine().warnings.is_empty(), "{:?}", guest.host.machine().warnings.snapshot());
    // A firmware that logged one anyway.
    let record = LaunchUpdateRecord { gpa: 0x4000, page_type: SnpPageType::Zero, contents: [0; 48] };
    assert!(guest.snp_host().firmware().log_update_for_test(guest.context(), record));
    assert_violation(&guest, S8_LIFECYCLE, "an update after the launch finished");
}

#[test]
fn s9_making_a_mapped_frame_shared_is_a_warn_and_a_write_before_the_flush_an_oops() {
    let guest = SnpGuest::launched(KernelProfile::v6_18(), 1);
    validate(&guest, 0x5000);
    guest.host.guest_store(guest.vcpus[0], 0x5000, b"guest", None).unwrap();
    let pfn = guest.mapped_pfn(5);
    let snp = guest.snp_host();
    // A buggy path gives the frame back while gfn 5 still maps it.
    snp.rmp_make_shared(pfn, PgLevel::Level4K).unwrap();
    assert_warning(
        &guest,
        WarnKind::Warn,
        &format!("S9: RMPUPDATE makes {pfn:?} hypervisor-owned while the 4K SPTE of gfn 0x5"),
    );
    // The host's first write before the cache flush.
    guest.host.machine().mem.write(pfn, 0, b"host");
    assert_warning(&guest, WarnKind::Oops, &format!("S9: host write to {pfn:?}"));
}

#[test]
fn s10_a_2m_entry_for_a_small_folio_is_a_warn_and_a_second_prepare_changes_nothing() {
    let guest = SnpGuest::launched(KernelProfile::v6_18(), 1);
    let kvm = guest.kvm();
    let vm = SvmVm::of(&kvm).unwrap();
    let rmp = guest.snp_host().rmp().clone();
    // Idempotence: preparing a validated frame again leaves its entry alone.
    validate(&guest, 0x5000);
    let pfn = guest.mapped_pfn(5);
    let before = rmp.read(pfn).unwrap();
    vm.sev_gmem_prepare(pfn, Gfn(5), 0).unwrap();
    assert_eq!(rmp.read(pfn).unwrap(), before);
    assert!(before.validated);
    guest.host.check("a second prepare");
    // A 2M-aligned order-0 frame in a region nobody uses, and a caller that claims order 9.
    let mem = &guest.host.machine().mem;
    let block = mem.alloc(9).unwrap();
    Folio::from_pfn(mem, block).put();
    let small = mem.alloc(0).unwrap();
    assert_eq!(small, block, "the allocator hands the freed block's head out first");
    vm.sev_gmem_prepare(small, Gfn(0x200), 9).unwrap();
    assert_warning(&guest, WarnKind::Warn, &format!("S10: sev_gmem_prepare chose a 2M RMP entry at {small:?}"));
    assert_violation(&guest, S3_OVERLAP, "not one folio of at least 2M");
}

#[test]
fn s11_names_a_digest_that_is_not_the_chain_of_the_logged_updates() {
    let guest = SnpGuest::new(KernelProfile::v6_18(), 2 << 20, 1 << 20, 1);
    guest.launch_start();
    guest.launch_update(0, &[b"kernel"], SnpPageType::Normal as u8).unwrap();
    guest.launch_update(1, &[b"cpuid"], SnpPageType::Unmeasured as u8).unwrap();
    guest.host.check("two LAUNCH_UPDATEs");
    let record = LaunchUpdateRecord { gpa: 0x2000, page_type: SnpPageType::Normal, contents: [7; 48] };
    assert!(guest.snp_host().firmware().log_update_for_test(guest.context(), record));
    assert_violation(&guest, S11_MEASUREMENT, "LAUNCH_UPDATE(s) the firmware logged");
    assert!(violations_named(&guest, S8_LIFECYCLE).is_empty(), "still launching: S8 has nothing to say");
}

#[test]
fn s12_names_a_psc_wait_with_nothing_in_flight_and_warns_when_it_completes() {
    let guest = SnpGuest::launched(KernelProfile::v6_18(), 1);
    guest.enable_psc(GHCB);
    validate(&guest, 0x7000);
    let host = guest.host.unchecked();
    let entry = PscEntry { cur_page: 0, gfn: 7, operation: PSC_OP_SHARED, pagesize_2m: false };
    host.snp_write_psc_buffer(guest.vcpus[0], GHCB, &[entry]).unwrap();
    let exit = host.snp_vmgexit_psc(guest.vcpus[0], GHCB).unwrap_err();
    assert!(matches!(exit, RunError::Exit(_)), "{exit:?}");
    guest.host.check("a PSC range forwarded to user space");
    // KVM loses track of the range it forwarded.
    let (_, vcpu) = host.vcpu(guest.vcpus[0]).unwrap();
    ghcb::set_psc_in_flight_for_test(&vcpu, 0, 0);
    assert_violation(&guest, S12_PSC, "vCPU 0 of the SNP guest");
    guest.convert(exit).unwrap();
    // Completing "nothing" rewinds the guest's cur_entry: the same range goes out again.
    let again = host.complete_hypercall(guest.vcpus[0], 0).unwrap_err();
    assert!(
        matches!(again, RunError::Exit(gmem_kvm::vcpu::VcpuExit::Hypercall { args, .. }) if args[0] == 0x7000),
        "{again:?}"
    );
    assert_warning(&guest, WarnKind::Warn, "S12: completing PSC entries [0, 0)");
}

#[test]
fn a_guest_vmsa_freed_under_its_vcpu_is_a_stale_pfn_without_fix_f11() {
    for (profile, fixed) in [(KernelProfile::v6_18(), false), (profile("v6.18+F11"), true)] {
        let guest = SnpGuest::launched(profile.clone(), 2);
        let host = guest.host.unchecked();
        validate(&guest, 0x9000);
        assert_eq!(host.snp_rmpadjust_vmsa(guest.vcpus[0], 0x9000, true), Ok(0));
        let features = SvmVm::of(&guest.kvm()).unwrap().vmsa_features();
        assert_eq!(host.snp_ap_creation(guest.vcpus[0], SVM_VMGEXIT_AP_CREATE, 1, 0x9000, features), Ok(0));
        host.snp_register_ghcb(guest.vcpus[1], GHCB).unwrap(); // vCPU 1 enters: the guest VMSA is in use
        let vmsa = guest.mapped_pfn(9);
        guest.host.check("AP creation");
        // The VMM punches the VMSA's page out of guest_memfd.
        host.fallocate(guest.gmem, 3, 0x9000, PAGE as i64).unwrap();
        if fixed {
            guest.host.check("the punch, with F11");
            continue;
        }
        assert_warning(&guest, WarnKind::WarnOnce, "SEV: Failed to update RMP entry");
        assert_violation(
            &guest,
            INV_NO_STALE_PFN,
            &format!("vCPU 1 of the SNP guest with ASID {} runs with its guest VMSA at {vmsa:?}", guest.asid()),
        );
        assert_violation(&guest, S1_OWNERSHIP, &format!("{vmsa:?}"));
    }
}
