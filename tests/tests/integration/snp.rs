//! An SEV-SNP guest end to end on the simulated host: launch (INIT2, LAUNCH_START, LAUNCH_UPDATE
//! from user memory, LAUNCH_FINISH), the RMP states each step leaves, the launch digest, and the
//! guest's first accesses (launched pages are validated, a lazily faulted page is not: #VC until
//! PVALIDATE).

use gmem_arch::sev::guest;
use gmem_arch::sev::kvm::SvmVm;
use gmem_arch::sev::measure::{LaunchDigest, SnpPageType};
use gmem_kvm::attributes::KVM_MEMORY_ATTRIBUTE_PRIVATE;
use gmem_kvm::vcpu::RunError;
use gmem_kvm::KernelProfile;
use gmem_mm::Pfn;
use gmem_tests::*;
use kvm_bindings::{kvm_sev_init, kvm_sev_snp_launch_update};

/// An SNP VM after KVM_SEV_INIT2 with one vCPU, a 2M guest_memfd memslot at gpa 0 whose first
/// 1M is PRIVATE, and `/dev/sev` open: a [`SnpGuest`], with what these tests look at.
struct Snp(SnpGuest);

impl std::ops::Deref for Snp {
    type Target = SnpGuest;

    fn deref(&self) -> &SnpGuest {
        &self.0
    }
}

impl Snp {
    fn new(profile: KernelProfile) -> Snp {
        Snp(SnpGuest::new(profile, 2 << 20, 1 << 20, 1))
    }

    /// The only vCPU.
    fn vcpu(&self) -> i32 {
        self.vcpus[0]
    }

    fn vm_back_end(&self) -> (gmem_sync::Arc<gmem_kvm::Kvm>, gmem_sync::Arc<gmem_kvm::vcpu::KvmVcpu>) {
        self.host.unchecked().vcpu(self.vcpu()).unwrap()
    }

    fn gmem_pfn(&self, gfn: u64) -> Pfn {
        let kvm = self.host.kvm(self.vm);
        let tdp = kvm.tdp_mmu().unwrap();
        tdp.lookup(gmem_kvm::Gfn(gfn)).expect("mapped").pfn
    }
}

#[test]
fn an_snp_launch_measures_the_image_and_the_guest_reads_it_validated() {
    for profile in both_versions() {
        let snp = Snp::new(profile.clone());
        snp.launch_start();
        // The image: two pages in user memory, launched at gfn 0.
        let image = snp.host.mmap_anonymous(2 * PAGE).unwrap();
        snp.host.store(image, b"kernel").unwrap();
        snp.host.store(image + PAGE, b"initrd").unwrap();
        let mut update = kvm_sev_snp_launch_update {
            gfn_start: 0,
            uaddr: image,
            len: 2 * PAGE,
            type_: SnpPageType::Normal as u8,
            ..Default::default()
        };
        snp.host.unchecked().snp_launch_update(snp.vm, snp.sev, &mut update).unwrap();
        assert_eq!((update.gfn_start, update.len, update.uaddr), (2, 0, image + 2 * PAGE), "{}", profile.name);
        let mut zero =
            kvm_sev_snp_launch_update { gfn_start: 2, len: PAGE, type_: SnpPageType::Zero as u8, ..Default::default() };
        snp.host.unchecked().snp_launch_update(snp.vm, snp.sev, &mut zero).unwrap();
        // Pre-fault is refused until LAUNCH_FINISH.
        assert_errno(snp.host.pre_fault_memory(snp.vcpu(), 0x10000, PAGE), gmem_mm::Errno::EOPNOTSUPP, "pre-fault");
        snp.launch_finish();
        assert!(snp.host.violations().is_empty(), "{:?}", snp.host.violations());

        // The digest is the chain over the three pages and the VMSA.
        let kvm = snp.host.kvm(snp.vm);
        let vm = SvmVm::of(&kvm).unwrap();
        let context = vm.host().firmware().context(vm.snp_context().unwrap()).unwrap();
        let mut expected = LaunchDigest::new();
        let mut page = [0u8; 4096];
        page[..6].copy_from_slice(b"kernel");
        expected.extend(SnpPageType::Normal, 0, &page);
        page[..6].copy_from_slice(b"initrd");
        expected.extend(SnpPageType::Normal, 0x1000, &page);
        expected.extend(SnpPageType::Zero, 0x2000, &[0; 4096]);
        let vmsa = [0u8; 4096];
        expected.extend(SnpPageType::Vmsa, gmem_arch::sev::kvm::INITIAL_VMSA_GPA, &vmsa);
        assert_eq!(context.digest, expected, "{}", profile.name);

        // Launched pages are Guest-Valid: the guest reads them.
        assert_eq!(snp.host.guest_load(snp.vcpu(), 0x1000, 6, None).unwrap(), b"initrd");
        let entry = vm.host().rmp().read(snp.gmem_pfn(1)).unwrap();
        assert_eq!(entry.state_name(), "Guest-Valid");
        assert_eq!(entry.gpa, 0x1000);
        assert_eq!(entry.asid, vm.asid());

        // A page the launch did not touch is prepared at its first fault: assigned, not
        // validated, so the access is a #VC until the guest validates it.
        let error = snp.host.unchecked().guest_access(snp.vcpu(), 0x5000, &mut [0u8; 8], false, None).unwrap_err();
        assert!(matches!(error, RunError::GuestException(e) if e.vector == "#VC"), "{error:?}");
        assert_eq!(vm.host().rmp().read(snp.gmem_pfn(5)).unwrap().state_name(), "Guest-Invalid");
        let (kvm, vcpu) = snp.vm_back_end();
        assert_eq!(guest::pvalidate(&kvm, &vcpu, &snp.host.process().mm, 0x5000, false, true), Ok(0));
        assert_eq!(
            guest::pvalidate(&kvm, &vcpu, &snp.host.process().mm, 0x5000, false, true),
            Ok(guest::PVALIDATE_FAIL_NOUPDATE)
        );
        snp.host.guest_store(snp.vcpu(), 0x5000, b"private", None).unwrap();
        assert_eq!(snp.host.guest_load(snp.vcpu(), 0x5000, 7, None).unwrap(), b"private");
        assert!(snp.host.machine().warnings.is_empty(), "{:?}", snp.host.machine().warnings.snapshot());
        let _ = snp.uaddr;
    }
}

#[test]
fn a_psc_round_trip_converts_through_the_vmm_and_the_rmp() {
    let snp = Snp::new(KernelProfile::v6_18());
    snp.launch_start();
    snp.launch_finish();
    let host = snp.host.unchecked();
    // The guest's GHCB: a shared page at 1M + 4K.
    let ghcb = (1 << 20) + PAGE;
    let (kvm, vcpu) = snp.vm_back_end();
    let mm = &host.process().mm;
    let cap = kvm_bindings::kvm_enable_cap {
        cap: gmem_kvm::caps::KVM_CAP_EXIT_HYPERCALL as u32,
        args: [gmem_kvm::caps::KVM_EXIT_HYPERCALL_VALID_MASK, 0, 0, 0],
        ..Default::default()
    };
    host.enable_cap(snp.vm, &cap).unwrap();
    guest::register_ghcb(&kvm, &vcpu, ghcb).unwrap();
    // Make gfn 7 private-and-validated first, then shared through PSC.
    assert_eq!(guest::pvalidate(&kvm, &vcpu, mm, 0x7000, false, true), Ok(0));
    let pfn = snp.gmem_pfn(7);
    let vmm = |exit: RunError| -> Result<u64, RunError> {
        let RunError::Exit(gmem_kvm::vcpu::VcpuExit::Hypercall { args, .. }) = exit else { return Err(exit) };
        let private = args[2] & gmem_kvm::vcpu::KVM_MAP_GPA_RANGE_ENCRYPTED != 0;
        host.set_memory_attributes(
            snp.vm,
            &attrs(args[0], args[1] * PAGE, if private { KVM_MEMORY_ATTRIBUTE_PRIVATE } else { 0 }),
        )
        .unwrap();
        if !private {
            host.fallocate(snp.gmem, 3, args[0] as i64, (args[1] * PAGE) as i64).unwrap();
        }
        Ok(0)
    };
    let status = guest::set_pages_state(&kvm, &vcpu, mm, ghcb, 0x7000, 1, false, vmm).unwrap();
    assert_eq!(status, 0);
    let vm = SvmVm::of(&kvm).unwrap();
    assert!(!vm.host().rmp().read(pfn).unwrap().assigned, "the punch gave the frame back");
    snp.host.guest_store(snp.vcpu(), 0x7000, b"shared", None).unwrap();
    assert_eq!(&host.load(snp.uaddr + 0x7000, 6).unwrap(), b"shared");
    // And back to private: validated by the guest after the conversion.
    let status = guest::set_pages_state(&kvm, &vcpu, mm, ghcb, 0x7000, 1, true, vmm).unwrap();
    assert_eq!(status, 0);
    assert_eq!(snp.host.guest_load(snp.vcpu(), 0x7000, 6, None).unwrap(), [0; 6]);
    assert!(snp.host.violations().is_empty(), "{:?}", snp.host.violations());
    assert!(snp.host.machine().warnings.is_empty(), "{:?}", snp.host.machine().warnings.snapshot());
}

/// The 2M paths of the hooks, on a real order-9 allocation (the modelled kernels hand guest_memfd
/// only order-0 folios, so the fault path never reaches them): prepare makes one 2M entry when
/// the whole region is shared, the max mapping level follows it, a partial invalidate PSMASHes
/// and gives back only its pages, a full one gives back the 2M entry at once and flushes.
#[test]
fn the_hooks_take_2m_rmp_entries_when_the_folio_allows() {
    let snp = Snp::new(KernelProfile::v6_18());
    snp.launch_start();
    snp.launch_finish();
    let kvm = snp.host.kvm(snp.vm);
    let vm = SvmVm::of(&kvm).unwrap();
    let mem = &snp.host.machine().mem;
    let head = mem.alloc(9).unwrap();
    let rmp = vm.host().rmp();
    // A pfn inside the folio with the gfn it backs: both aligned down to the 2M entry.
    vm.sev_gmem_prepare(head.offset(3), gmem_kvm::Gfn(0x203), 9).unwrap();
    let entry = rmp.read(head.offset(3)).unwrap();
    assert!(entry.assigned && entry.pagesize_2m && entry.gpa == 0x203000, "{entry:?}");
    assert_eq!(rmp.level(head.offset(100)), Some(gmem_kvm::arch::PgLevel::Level2M));
    assert_eq!(vm.sev_gmem_max_mapping_level(head.offset(7)), Some(gmem_kvm::arch::PgLevel::Level2M));
    // Idempotent: a second prepare leaves the entry alone.
    vm.sev_gmem_prepare(head.offset(5), gmem_kvm::Gfn(0x205), 9).unwrap();
    assert!(rmp.read(head).unwrap().pagesize_2m);
    // A partial invalidate: PSMASH, then 4K updates of the range only.
    gmem_arch::sev::kvm::sev_gmem_invalidate(vm.host(), head.offset(10), head.offset(12));
    assert!(!rmp.read(head.offset(10)).unwrap().assigned);
    let kept = rmp.read(head.offset(12)).unwrap();
    assert!(kept.assigned && !kept.pagesize_2m, "{kept:?}");
    assert_eq!(vm.sev_gmem_max_mapping_level(head.offset(12)), Some(gmem_kvm::arch::PgLevel::Level4K));
    gmem_arch::sev::kvm::sev_gmem_invalidate(vm.host(), head, head.offset(512));
    assert!(rmp.assigned_entries().iter().all(|(pfn, _)| pfn.0 < head.0 || pfn.0 >= head.0 + 512));
    // With 4K folios only, prepare stays 4K even over a shared 2M region.
    let small = mem.alloc(0).unwrap();
    vm.sev_gmem_prepare(small, gmem_kvm::Gfn(0x300), 0).unwrap();
    assert!(!rmp.read(small).unwrap().pagesize_2m);
    gmem_arch::sev::kvm::sev_gmem_invalidate(vm.host(), small, small.offset(1));
    assert!(snp.host.machine().warnings.is_empty(), "{:?}", snp.host.machine().warnings.snapshot());
    gmem_mm::folio::Folio::from_pfn(mem, small).put();
    gmem_mm::folio::Folio::from_pfn(mem, head).put();
}

/// `KVM_BUG_ON` kills the VM: a LAUNCH_UPDATE whose firmware update fails and whose reclaim of
/// the page fails too bugs the VM (`snp_page_reclaim`), leaks the page, and every later VM and
/// vCPU ioctl is EIO.
#[test]
fn a_failed_reclaim_bugs_the_vm_and_later_ioctls_are_eio() {
    use gmem_arch::sev::firmware::{SevCmd, SevRet};
    let snp = Snp::new(KernelProfile::v6_18());
    snp.launch_start();
    let kvm = snp.host.kvm(snp.vm);
    let vm = SvmVm::of(&kvm).unwrap();
    let firmware = vm.host().firmware();
    firmware.inject(SevCmd::SnpLaunchUpdate, SevRet::ResourceLimit, 0, 1);
    firmware.inject(SevCmd::SnpPageReclaim, SevRet::InvalidPageState, 0, 1);
    let image = snp.host.mmap_anonymous(PAGE).unwrap();
    let mut update = kvm_sev_snp_launch_update {
        gfn_start: 0,
        uaddr: image,
        len: PAGE,
        type_: SnpPageType::Normal as u8,
        ..Default::default()
    };
    let error = snp.host.unchecked().snp_launch_update(snp.vm, snp.sev, &mut update).unwrap_err();
    assert_eq!((error.errno, error.fw_error), (gmem_mm::Errno::EIO, SevRet::ResourceLimit.code()));
    assert!(kvm.is_dead());
    assert_eq!(vm.host().nr_leaked_pages(), 1);
    let warnings = snp.host.take_warnings();
    assert!(
        warnings.iter().any(|w| w.kind == gmem_sync::warn::WarnKind::Bug && w.detail.contains("Failed to reclaim PFN")),
        "{warnings:?}"
    );
    let host = snp.host.unchecked();
    assert_eq!(host.set_memory_attributes(snp.vm, &attrs(0, PAGE, 0)), Err(gmem_mm::Errno::EIO));
    assert_eq!(host.pre_fault_memory(snp.vcpu(), 0, PAGE), Err(gmem_mm::Errno::EIO));
    assert_eq!(host.guest_access(snp.vcpu(), 0, &mut [0u8], false, None), Err(RunError::Errno(gmem_mm::Errno::EIO)));
}

/// The RMP fault handler end to end: a 2M RMP entry over guest_memfd pages the guest maps at 4K
/// (as a 2M folio would give, which the modelled kernels do not allocate). PVALIDATE of one 4K
/// page is a nested fault with PFERR_GUEST_SIZEM; `sev_handle_rmp_fault` PSMASHes the entry and
/// zaps the 2M range; the retried PVALIDATE succeeds on the page's 4K entry.
#[test]
fn a_4k_pvalidate_on_a_2m_rmp_entry_is_psmashed_and_retried() {
    let snp = Snp::new(KernelProfile::v6_18());
    snp.launch_start();
    snp.launch_finish();
    let kvm = snp.host.kvm(snp.vm);
    let vm = SvmVm::of(&kvm).unwrap();
    let rmp = vm.host().rmp().clone();
    let mem = &snp.host.machine().mem;
    // Free one 2M-aligned block: the page cache's next 512 order-0 allocations take its frames in
    // order (the allocator reuses the last freed frame first, the head last freed).
    let block = mem.alloc(9).unwrap();
    gmem_mm::folio::Folio::from_pfn(mem, block).put();
    // Fault the whole 2M slot in, private, in gfn order.
    let host = snp.host.unchecked();
    host.set_memory_attributes(snp.vm, &attrs(0, 2 << 20, KVM_MEMORY_ATTRIBUTE_PRIVATE)).unwrap();
    let (kvm2, vcpu) = snp.vm_back_end();
    let mm = &host.process().mm;
    for gfn in 0..0x200u64 {
        assert_eq!(guest::pvalidate(&kvm2, &vcpu, mm, gfn << 12, false, true), Ok(0));
    }
    assert_eq!(snp.gmem_pfn(0), block, "the block's frames back the 2M-aligned gfns");
    assert_eq!(snp.gmem_pfn(0x1ff), block.offset(511));
    // Re-make the 512 4K entries as one 2M entry (Guest-Invalid), as a 2M prepare would, with
    // the mappings zapped first (S9).
    kvm.zap_gfn_range(gmem_kvm::Gfn(0), gmem_kvm::Gfn(0x200));
    for i in 0..512 {
        vm.host().rmp_make_shared(block.offset(i), gmem_kvm::arch::PgLevel::Level4K).unwrap();
    }
    vm.host().rmp_make_private(block, 0, gmem_kvm::arch::PgLevel::Level2M, vm.asid(), false).unwrap();
    let faults_before = snp.host.vcpu_faults(snp.vcpu()).0;
    assert_eq!(guest::pvalidate(&kvm2, &vcpu, mm, 0x5000, false, true), Ok(0));
    let entry = rmp.read(block.offset(5)).unwrap();
    assert!(entry.validated && !entry.pagesize_2m, "{entry:?}");
    assert_eq!(rmp.level(block), Some(gmem_kvm::arch::PgLevel::Level4K), "PSMASHed");
    assert!(snp.host.vcpu_faults(snp.vcpu()).0 >= faults_before + 2, "the fault, then the RMP fault");
    assert!(snp.host.machine().warnings.is_empty(), "{:?}", snp.host.machine().warnings.snapshot());
}

/// `sev_asid_new`: SNP guests share the ASIDs below `min_sev_asid` (32 on the model's host). The
/// 33rd live SNP VM's KVM_SEV_INIT2 is EBUSY; a destroyed VM's ASID waits for reclaim and is
/// reused only after `sev_flush_asids` issues SNP_DF_FLUSH, which happens when the range is full.
#[test]
fn snp_asids_run_out_at_min_sev_asid_and_recycle_through_df_flush() {
    use gmem_arch::sev::firmware::SevCmd;
    use gmem_arch::sev::kvm::SevModule;
    let host = CheckedHost::new(KernelProfile::v6_18());
    let nr_snp_asids = (SevModule::MIN_SEV_ASID - 1) as usize;
    let mut vms = Vec::new();
    for _ in 0..nr_snp_asids {
        let vm = host.create_vm(SNP_VM).unwrap();
        host.unchecked().sev_init2(vm, &kvm_sev_init::default()).unwrap();
        vms.push(vm);
    }
    let asids: Vec<u32> = vms.iter().map(|&vm| SvmVm::of(&host.kvm(vm)).unwrap().asid()).collect();
    assert_eq!(asids, (1..=nr_snp_asids as u32).collect::<Vec<_>>(), "lowest free ASID first");
    let first_kvm = host.kvm(vms[0]);
    let firmware = SvmVm::of(&first_kvm).unwrap().host().firmware();
    let flushes = firmware.executed(SevCmd::SnpDfFlush);

    // Full, and nothing awaits reclaim: EBUSY without a flush.
    let extra = host.create_vm(SNP_VM).unwrap();
    let error = host.unchecked().sev_init2(extra, &kvm_sev_init::default()).unwrap_err();
    assert_eq!(error.errno, gmem_mm::Errno::EBUSY);
    assert_eq!(firmware.executed(SevCmd::SnpDfFlush), flushes);

    // Destroy the VM holding ASID 5: its ASID is reclaimed by a DF_FLUSH and reused.
    host.close(vms.remove(4)).unwrap();
    host.unchecked().sev_init2(extra, &kvm_sev_init::default()).unwrap();
    assert_eq!(SvmVm::of(&host.kvm(extra)).unwrap().asid(), 5);
    assert_eq!(firmware.executed(SevCmd::SnpDfFlush), flushes + 1);
    vms.push(extra);
    for vm in vms {
        host.close(vm).unwrap();
    }
}
