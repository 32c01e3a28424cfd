//! kvm_gmem_get_pfn: EFAULT (file gone), EIO (binding mismatch), ENOMEM, EHWPOISON; success
//! prepares once. Called directly, under SRCU, as the MMU would.

use super::*;

#[test]
fn get_pfn_efault_once_the_file_is_released() {
    for profile in both_versions() {
        let (host, vm, gmem) = setup_bound(profile, 4);
        let kvm = host.kvm(vm);
        host.close(gmem).unwrap();
        assert_errno(get_pfn(&kvm, GFN, GFN), EFAULT, "released file");
        host.check("get_pfn after release");
    }
}

#[test]
fn get_pfn_eio_for_an_index_bound_to_another_memslot_or_unbound() {
    // Not reachable through the uAPI: a live memslot's range is always wholly bound to it
    // (INV-BIND), and the MMU only asks for gfns inside the slot. The branch is reached by
    // calling get_pfn with a gfn outside the slot it passes, which maps to another index.
    for profile in both_versions() {
        let (host, vm, gmem) = setup(profile, 8, 0);
        host.set_user_memory_region2(vm, &gmem_region(1, GPA, 2 * PAGE, gmem, 0)).unwrap();
        host.set_user_memory_region2(vm, &gmem_region(2, 0x20_0000, 2 * PAGE, gmem, 2 * PAGE)).unwrap();
        let kvm = host.kvm(vm);
        assert_errno(get_pfn(&kvm, GFN, GFN + 6), EIO, "index 6 is unbound");
        host.check("get_pfn on an unbound index (no WARN)");
        assert_errno(get_pfn(&kvm, GFN, GFN + 2), EIO, "index 2 is bound to slot 2");
        let warnings = host.take_warnings();
        assert!(
            warnings.len() == 1 && warnings[0].kind == WarnKind::WarnOnce && warnings[0].detail.contains("bound to"),
            "WARN_ON_ONCE(xa_load(...)) when another slot is bound there: {warnings:#?}"
        );
        host.check("get_pfn on another slot's index");
    }
}

#[test]
fn get_pfn_enomem_when_the_folio_cannot_be_allocated() {
    for profile in both_versions() {
        let (host, vm, _gmem) = setup_bound(profile, 4);
        let kvm = host.kvm(vm);
        host.machine().inject.arm(FaultPoint::AllocFolio, 0, 1);
        assert_errno(get_pfn(&kvm, GFN, GFN), ENOMEM, "allocation failure");
        host.check("get_pfn ENOMEM");
    }
}

#[test]
fn get_pfn_ehwpoison_after_memory_failure() {
    for profile in both_versions() {
        let (host, vm, gmem) = setup_bound(profile, 4);
        let kvm = host.kvm(vm);
        host.fallocate(gmem, KEEP, PAGE as i64, PAGE as i64).unwrap();
        assert_eq!(host.inject_memory_failure(gmem, PAGE), Ok(MfResult::Delayed));
        assert_errno(get_pfn(&kvm, GFN, GFN + 1), EHWPOISON, "poisoned folio");
        assert_errno(host.inject_memory_failure(gmem, PAGE), EHWPOISON, "already poisoned");
        assert_eq!(nrpages(&host, gmem), 1, "the poisoned folio stays in the page cache");
        // The neighbours are unaffected.
        let ok = get_pfn(&kvm, GFN, GFN).expect("page 0 is fine");
        ok.page.put();
        host.check("get_pfn EHWPOISON");
        // A private fault on it exits to user space with the errno (kvm_mmu_faultin_pfn_gmem).
        host.set_memory_attributes(vm, &attrs(GPA, 4 * PAGE, PRIVATE)).unwrap();
        let vcpu = host.create_vcpu(vm, 0).unwrap();
        let exit = VcpuExit::MemoryFault {
            gpa: GPA + PAGE,
            size: PAGE,
            flags: KVM_MEMORY_EXIT_FLAG_PRIVATE,
            errno: EHWPOISON,
        };
        assert_eq!(host.guest_load(vcpu, GPA + PAGE, 1, None), Err(RunError::Exit(exit)));
        host.check("a private fault on a poisoned folio");
    }
}

#[test]
fn get_pfn_and_a_private_fault_fail_with_the_prepare_hooks_errno_and_the_next_call_prepares_again() {
    // kvm_gmem_prepare_folio's failure branch: kvm_arch_gmem_prepare fails (here through the
    // gmem_prepare injection point, the only way for a SW_PROTECTED VM), the folio is not marked
    // uptodate, the error goes back through __kvm_gmem_get_pfn / kvm_gmem_get_pfn, and the next
    // get_pfn prepares it again (INV-UPTODATE-PREPARED). The fault path turns the errno into
    // KVM_EXIT_MEMORY_FAULT (kvm_mmu_faultin_pfn_gmem -> kvm_mmu_prepare_memory_fault_exit).
    for profile in both_versions() {
        let name = profile.name.clone();
        let (host, vm, gmem) = setup_private(profile);
        let kvm = host.kvm(vm);
        let file = host.gmem_file(gmem);
        let uptodate = |index: u64| {
            let folio = file.inode().mapping().get_folio(PgOff(index)).expect("the folio is in the page cache");
            let uptodate = folio.test_uptodate();
            folio.put();
            uptodate
        };
        let inject = &host.machine().inject;

        // kvm_gmem_get_pfn, called as the MMU would.
        inject.arm(FaultPoint::GmemPrepare, 0, 1);
        assert_errno(get_pfn(&kvm, GFN, GFN), EIO, "injected prepare failure");
        assert_eq!(inject.fired(FaultPoint::GmemPrepare), 1, "{name}: the hook point was evaluated");
        assert_eq!(nrpages(&host, gmem), 1, "{name}: the folio stays in the page cache");
        assert!(!uptodate(0), "{name}: a failed prepare leaves the folio not uptodate");
        host.check("get_pfn with a failing prepare hook (no WARN)");
        let got = get_pfn(&kvm, GFN, GFN).expect("without the injection the next get_pfn prepares");
        assert!(got.page.test_uptodate() && got.page.model_arch_prepared(), "{name}: prepared now");
        got.page.put();
        host.check("get_pfn after the failed prepare");

        // A guest access: the private fault exits to user space with the hook's errno, twice in a
        // row (the first failure did not mark the folio prepared, so the second fault prepares
        // again and fails again); then the access succeeds.
        let vcpu = host.create_vcpu(vm, 0).unwrap();
        let exit = RunError::Exit(VcpuExit::MemoryFault {
            gpa: GPA + PAGE,
            size: PAGE,
            flags: KVM_MEMORY_EXIT_FLAG_PRIVATE,
            errno: EIO,
        });
        inject.arm(FaultPoint::GmemPrepare, 0, 2);
        assert_eq!(host.guest_store(vcpu, GPA + PAGE + 0x10, &[1, 2, 3], None), Err(exit), "{name}");
        assert!(!uptodate(1), "{name}: not prepared after the failed fault");
        assert_eq!(
            host.guest_load(vcpu, GPA + PAGE + 0x10, 3, None),
            Err(exit),
            "{name}: prepared again, failed again"
        );
        assert_eq!(inject.fired(FaultPoint::GmemPrepare), 3, "{name}");
        assert!(!uptodate(1), "{name}: still not prepared");
        assert!(!host.spte_present(vm, GFN + 1), "{name}: nothing was mapped");
        host.guest_store(vcpu, GPA + PAGE + 0x10, &[1, 2, 3], None).expect("the fault prepares and maps the page");
        assert!(uptodate(1), "{name}: prepared by the successful fault");
        assert_eq!(host.guest_load(vcpu, GPA + PAGE + 0x10, 3, None).unwrap(), vec![1, 2, 3]);
        assert_eq!(inject.fired(FaultPoint::GmemPrepare), 3, "{name}: disarmed after count failures");
        host.check("guest accesses around a failing prepare hook");
    }
}

#[test]
fn fallocate_before_f6_fails_with_the_prepare_hooks_errno_and_prepares_only_bound_indices() {
    // Without upstream fix F6 (`v6.14-F6`, `v6.18-F6`), kvm_gmem_allocate prepared each folio for
    // every VM whose memslot is bound at its index. A failing hook ends the fallocate with its
    // errno, the folio stays allocated and not uptodate, and the next fallocate prepares it.
    // Indices no memslot binds are allocated but not prepared.
    for name in ["v6.14-F6", "v6.18-F6"] {
        let profile = KernelProfile::by_name(name).unwrap();
        let (host, vm, gmem) = setup(profile, 4, 0);
        host.set_user_memory_region2(vm, &gmem_region(1, GPA, 2 * PAGE, gmem, 0)).unwrap();
        let file = host.gmem_file(gmem);
        let uptodate = |index: u64| {
            let folio = file.inode().mapping().get_folio(PgOff(index)).expect("allocated");
            let uptodate = folio.test_uptodate();
            folio.put();
            uptodate
        };
        let inject = &host.machine().inject;
        inject.arm(FaultPoint::GmemPrepare, 1, 1);
        assert_errno(host.fallocate(gmem, KEEP, 0, 4 * PAGE as i64), EIO, "the second folio's prepare fails");
        assert_eq!(nrpages(&host, gmem), 2, "{name}: the failing folio stays allocated");
        assert!(uptodate(0) && !uptodate(1), "{name}: only the first folio is prepared");
        host.check("fallocate with a failing prepare hook (no WARN)");
        host.fallocate(gmem, KEEP, 0, 4 * PAGE as i64).unwrap();
        assert_eq!(nrpages(&host, gmem), 4, "{name}");
        assert!(uptodate(1), "{name}: prepared by the second fallocate");
        assert!(!uptodate(2) && !uptodate(3), "{name}: unbound indices are allocated, not prepared");
        assert_eq!(inject.fired(FaultPoint::GmemPrepare), 1, "{name}");
        host.check("fallocate after the failed prepare");
    }
}

#[test]
fn get_pfn_prepares_a_zeroed_uptodate_folio_once_and_the_caller_owns_a_reference() {
    for profile in both_versions() {
        let (host, vm, gmem) = setup_bound(profile.clone(), 4);
        let kvm = host.kvm(vm);
        let mem = &host.machine().mem;
        // fallocate allocates without zeroing; dirty the frame to see that prepare zeroes it.
        host.fallocate(gmem, KEEP, 0, PAGE as i64).unwrap();
        let file = host.gmem_file(gmem);
        let folio = file.inode().mapping().get_folio(PgOff(0)).unwrap();
        assert!(!folio.test_uptodate(), "fallocate does not prepare");
        mem.write(folio.pfn(), 0, &[0x55; 64]);
        folio.put();

        let got = get_pfn(&kvm, GFN, GFN).unwrap();
        assert_eq!(got.max_order, 0);
        assert_eq!(got.pfn, got.page.pfn());
        assert!(got.page.test_uptodate(), "prepared = uptodate");
        assert!(got.page.model_arch_prepared(), "{}: arch prepare ran", profile.name);
        assert_eq!(got.page.refcount(), 2, "page cache + the caller's reference");
        let mut bytes = [0xffu8; 64];
        mem.read(got.pfn, 0, &mut bytes);
        assert_eq!(bytes, [0; 64], "prepare zeroes the folio");
        let violations = host.violations();
        assert!(
            violations.iter().any(|v| v.invariant == gmem_kvm::invariants::INV_REFCOUNT),
            "the harness sees the reference the caller still holds: {violations:?}"
        );
        mem.write(got.pfn, 0, &[0x77; 8]);
        got.page.put();
        host.check("get_pfn + put");

        // A second call finds the folio prepared and does not zero it again.
        let again = get_pfn(&kvm, GFN, GFN).unwrap();
        assert_eq!(again.pfn, got.pfn);
        let mut bytes = [0u8; 8];
        mem.read(again.pfn, 0, &mut bytes);
        assert_eq!(bytes, [0x77; 8]);
        again.page.put();
        host.check("second get_pfn + put");
    }
}

#[test]
fn get_pfn_v6_18_keeps_what_a_host_write_through_mmap_made_uptodate() {
    let host = CheckedHost::new(KernelProfile::v6_18());
    let (vm, gmem) = host.vm_and_gmem(DEFAULT_VM, 4 * PAGE, MMAP | INIT_SHARED);
    host.set_user_memory_region2(vm, &gmem_region(1, GPA, 4 * PAGE, gmem, 0)).unwrap();
    let slots = host.memslots(vm);
    assert_ne!(slots[0].1 & KVM_MEMSLOT_GMEM_ONLY, 0);
    let addr = host.mmap(gmem, 4 * PAGE, 0, RW, MAP_SHARED).unwrap();
    host.store(addr + PAGE, &[0xaa; 32]).unwrap();
    let kvm = host.kvm(vm);
    let got = get_pfn(&kvm, GFN, GFN + 1).unwrap();
    let mut bytes = [0u8; 32];
    host.machine().mem.read(got.pfn, 0, &mut bytes);
    assert_eq!(bytes, [0xaa; 32], "the guest sees the host's data: the folio was not zeroed again");
    got.page.put();
    host.check("get_pfn + put");
}
