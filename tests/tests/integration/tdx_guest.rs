//! A TD's vCPUs in `KVM_RUN` (`arch/x86/kvm/vmx/tdx.c` v6.18: `tdx_vcpu_pre_run`,
//! `tdx_vcpu_run`, `tdx_handle_ept_violation`) on a simulated Intel host: the entry checks,
//! `TDH.VP.ENTER` at every guest entry and the TD exit after it (so the TD epochs and the kicks
//! see the vCPUs), no entry while `wait_for_sept_zap` keeps the vCPUs out; private accesses
//! checked by the TDX module (a PENDING page: the TD killed with `SEPT_VE_DISABLE`, a #VE
//! without), EPT violations retried locally and bounded (an event, a signal, a dead VM, an
//! invalid memslot end the local retries); the guest's TDCALLs: `TDG.MEM.PAGE.ACCEPT` (KVM AUGs
//! the page on the ACCEPT's EPT violation, ACCEPT zeroes it) and `TDG.VP.VMCALL<MapGPA>` (every
//! status code, 2 MiB `KVM_EXIT_HYPERCALL` chunks, RETRY on a pending event, a VMM error as
//! INVALID_OPERAND with R11); and the QEMU-shaped VMM's TD (`Vmm`: setup, launch and MRTD, a
//! private → shared → private round trip through MapGPA exits and ACCEPT). Every checked call
//! is followed by the invariants (T1–T6, T10 and the core ones) and a check that no WARN was
//! recorded; the VMM tests check them after each step.

use gmem_arch::tdx::kvm::{kvm_tdx_init_mem_region, TdxVm, TDX_TD_ATTR_SEPT_VE_DISABLE};
use gmem_arch::tdx::module::TdxModule;
use gmem_arch::tdx::sept::{LeafState, SeptEntry};
use gmem_arch::tdx::status::{
    SeamcallLeaf, TdxStatus, TDX_OPERAND_BUSY, TDX_OPERAND_ID_RCX, TDX_OPERAND_ID_SEPT, TDX_OPERAND_INVALID,
    TDX_PAGE_ALREADY_ACCEPTED,
};
use gmem_kvm::arch::GuestException;
use gmem_kvm::caps::{KVM_CAP_EXIT_HYPERCALL, KVM_HC_MAP_GPA_RANGE};
use gmem_kvm::vcpu::{
    RunError, VcpuExit, FAULT_RETRY_LIMIT, KVM_ENOSYS, KVM_EXIT_HYPERCALL_LONG_MODE, KVM_MAP_GPA_RANGE_DECRYPTED,
    KVM_MAP_GPA_RANGE_ENCRYPTED, KVM_MEMORY_EXIT_FLAG_PRIVATE,
};
use gmem_kvm::KernelProfile;
use gmem_mm::Errno;
use gmem_sync::atomic::Ordering;
use gmem_sync::inject::FaultPoint;
use gmem_sync::Arc;
use gmem_tests::*;
use gmem_uapi::vmm::{
    TdvmcallArgs, TdvmcallResult, Vmm, VmmConfig, GUEST_MEMORY_BASE, KVM_X86_TDX_VM, TDVMCALL_MAP_GPA,
    TDVMCALL_STATUS_ALIGN_ERROR, TDVMCALL_STATUS_INVALID_OPERAND, TDVMCALL_STATUS_RETRY,
    TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED, TDVMCALL_STATUS_SUCCESS,
};

/// The shared bit of a TD with GPAW 48 (gpa bit 47).
const SHARED: u64 = 1 << 47;
/// Guest memory: one guest_memfd memslot of this size at gpa 0.
const MEMORY: u64 = 8 << 20;

/// A TD on a checked Intel host: one memslot of [`MEMORY`] at gpa 0 backed by a guest_memfd
/// and anonymous shared memory, all of it PRIVATE, and vCPUs.
struct Td {
    host: CheckedHost,
    vm: i32,
    vcpus: Vec<i32>,
    /// The shared backing (the memslot's `userspace_addr`).
    uaddr: u64,
}

impl Td {
    /// The TD after INIT_VM with `attributes` and `nr_vcpus` vCPUs created (not initialised).
    fn created(attributes: u64, nr_vcpus: u64) -> Td {
        let TdGuest { host, vm, vcpus, uaddr, .. } =
            TdGuest::new(KernelProfile::v6_18(), attributes, MEMORY, MEMORY, nr_vcpus);
        Td { host, vm, vcpus, uaddr }
    }

    /// Every vCPU initialised, the page at gpa 0 added to the image (measured), FINALIZE.
    fn finalized(attributes: u64, nr_vcpus: u64) -> Td {
        let td = Td::created(attributes, nr_vcpus);
        for &vcpu in &td.vcpus {
            td.host.tdx_init_vcpu(vcpu, 0).unwrap();
        }
        td.add_image_page();
        td.host.tdx_finalize_vm(td.vm).unwrap();
        td
    }

    /// INIT_MEM_REGION of one page at gpa 0 saying "kernel".
    fn add_image_page(&self) {
        let image = self.host.mmap_anonymous(PAGE).unwrap();
        self.host.store(image, b"kernel").unwrap();
        let mut region = kvm_tdx_init_mem_region { source_addr: image, gpa: 0, nr_pages: 1 };
        self.host.tdx_init_mem_region(self.vcpus[0], &mut region, 0).unwrap();
    }

    fn kvm(&self) -> Arc<gmem_kvm::Kvm> {
        self.host.kvm(self.vm)
    }

    fn module(&self) -> Arc<TdxModule> {
        self.host.unchecked().tdx_host().unwrap().module().clone()
    }

    fn tdx(&self) -> Arc<gmem_kvm::Kvm> {
        let kvm = self.kvm();
        assert!(TdxVm::of(&kvm).is_some());
        kvm
    }

    fn sept_leaf(&self, gpa: u64) -> SeptEntry {
        let tdr = vm_of(&self.kvm()).tdr().unwrap();
        self.module().sept_entry(tdr, gpa, 0).unwrap().unwrap_or(SeptEntry::Free)
    }

    /// `KVM_CAP_EXIT_HYPERCALL` for `KVM_HC_MAP_GPA_RANGE`, as a VMM enables it.
    fn enable_map_gpa_exit(&self) {
        let cap = kvm_bindings::kvm_enable_cap {
            cap: KVM_CAP_EXIT_HYPERCALL as u32,
            args: [1 << KVM_HC_MAP_GPA_RANGE, 0, 0, 0],
            ..Default::default()
        };
        self.host.enable_cap(self.vm, &cap).unwrap();
    }

    /// Makes `[gpa, gpa + size)` shared (the attributes only, as a conversion's first step).
    fn make_shared(&self, gpa: u64, size: u64) {
        self.host.set_memory_attributes(self.vm, &attrs(gpa, size, 0)).unwrap();
    }
}

fn vm_of(kvm: &gmem_kvm::Kvm) -> &TdxVm {
    TdxVm::of(kvm).expect("a TD")
}

#[test]
fn kvm_run_is_refused_before_init_vcpu_and_before_finalize() {
    let td = Td::created(TDX_TD_ATTR_SEPT_VE_DISABLE, 2);
    let (first, second) = (td.vcpus[0], td.vcpus[1]);
    td.make_shared(0x10000, PAGE);
    let einval = Err(RunError::Errno(Errno::EINVAL));
    // Neither initialised nor finalised.
    assert_eq!(td.host.guest_load(first, SHARED | 0x10000, 1, None), einval);
    td.host.tdx_init_vcpu(first, 0).unwrap();
    // Initialised, the TD not finalised yet.
    assert_eq!(td.host.guest_load(first, SHARED | 0x10000, 1, None), einval);
    td.add_image_page();
    td.host.tdx_finalize_vm(td.vm).unwrap();
    // Runnable: the initialised vCPU runs, the other is still refused (and cannot be
    // initialised any more: INIT_VCPU is refused once the TD is runnable).
    assert_eq!(td.host.guest_load(first, SHARED | 0x10000, 1, None), Ok(vec![0]));
    assert_eq!(td.host.guest_load(second, SHARED | 0x10000, 1, None), einval);
    assert_eq!(td.host.tdx_init_vcpu(second, 0).unwrap_err().errno, Errno::EINVAL);
    assert_eq!(td.module().executed(SeamcallLeaf::VpEnter), 2, "one entry to fault, one to load");
    td.host.check("end");
}

#[test]
fn every_guest_entry_is_a_tdh_vp_enter_and_the_td_exit_leaves_the_epoch() {
    let td = Td::finalized(TDX_TD_ATTR_SEPT_VE_DISABLE, 1);
    let vcpu = td.vcpus[0];
    let kvm = td.tdx();
    let vm = vm_of(&kvm);
    let module = td.module();
    let tdr = vm.tdr().unwrap();
    td.make_shared(0x20000, PAGE);
    td.host.store(td.uaddr + 0x20000, b"shared").unwrap();
    let enters = module.executed(SeamcallLeaf::VpEnter);
    assert_eq!(td.host.guest_load(vcpu, SHARED | 0x20000, 6, None).unwrap(), b"shared");
    // The load faulted once (an EPT violation on the shared alias): two entries.
    assert_eq!(module.executed(SeamcallLeaf::VpEnter), enters + 2);
    assert_eq!(vm.stats.vp_enters.load(Ordering::Relaxed), enters + 2);
    assert_eq!(module.vcpus_in_td(tdr), vec![], "the TD exit ends each entry");
    // The translation is cached now: one entry.
    assert_eq!(td.host.guest_load(vcpu, SHARED | 0x20000, 6, None).unwrap(), b"shared");
    assert_eq!(module.executed(SeamcallLeaf::VpEnter), enters + 3);
    // A TRACK now finds no vCPU in an older epoch.
    let epoch = module.td_epoch(tdr).unwrap();
    module.tdh_mem_track(tdr).unwrap();
    assert_eq!(module.td_epoch(tdr), Some(epoch + 1));
    td.host.check("end");
}

/// A vCPU inside the TD holds the epoch it entered in: a TRACK moves the epoch on, a second one
/// is refused with `TDX_PREVIOUS_TLB_EPOCH_BUSY` until the vCPU leaves, which the kick's IPI
/// makes it do (`KvmArch::kick_vcpu`, the first half of `tdx_track`'s
/// `KVM_REQ_OUTSIDE_GUEST_MODE`).
#[test]
fn a_vcpu_inside_the_td_holds_its_epoch_until_the_kick() {
    use gmem_arch::tdx::status::TDX_PREVIOUS_TLB_EPOCH_BUSY;
    let td = Td::finalized(TDX_TD_ATTR_SEPT_VE_DISABLE, 1);
    let kvm = td.tdx();
    let vm = vm_of(&kvm);
    let module = td.module();
    let tdr = vm.tdr().unwrap();
    let (_, vcpu) = td.host.unchecked().vcpu(td.vcpus[0]).unwrap();
    let mm = &td.host.process().mm;
    // The launched page at gpa 0: the op runs inside the TD.
    let inside = gmem_kvm::vcpu::guest_page_op(&kvm, &vcpu, mm, 0, false, true, 1, |_| {
        let entered = module.vcpus_in_td(tdr);
        let first = module.tdh_mem_track(tdr).map_err(|e| e.status);
        let second = module.tdh_mem_track(tdr).map_err(|e| e.status);
        kvm.arch().kick_vcpu(&kvm, &vcpu);
        let after_kick = module.tdh_mem_track(tdr).map_err(|e| e.status);
        Ok((entered, first, second, after_kick))
    });
    let (entered, first, second, after_kick) = inside.unwrap();
    assert_eq!(entered.len(), 1, "the vCPU is inside the TD during its access");
    assert_eq!(first, Ok(()));
    assert_eq!(second.map_err(|status| status.class()), Err(TDX_PREVIOUS_TLB_EPOCH_BUSY));
    assert_eq!(after_kick, Ok(()));
    assert_eq!(module.vcpus_in_td(tdr), vec![]);
    td.host.check("end");
}

/// The TDX module flushes a vCPU's private translations when it enters the TD in a later TLB
/// epoch than its previous entry: a translation cached before a TRACK cannot be used after it
/// (which is what makes BLOCK, TRACK and the kick enough before PAGE.REMOVE). An entry in the
/// same epoch keeps the TLB; shared-EPT translations are not the module's to flush.
#[test]
fn an_entry_after_a_track_flushes_the_vcpus_private_translations() {
    let td = Td::finalized(TDX_TD_ATTR_SEPT_VE_DISABLE, 1);
    let kvm = td.tdx();
    let vm = vm_of(&kvm);
    let module = td.module();
    let tdr = vm.tdr().unwrap();
    let (_, vcpu) = td.host.unchecked().vcpu(td.vcpus[0]).unwrap();
    let mm = &td.host.process().mm;
    let private_gfn = gmem_kvm::Gfn(0);
    let read = |gpa: u64| gmem_kvm::vcpu::guest_page_op(&kvm, &vcpu, mm, gpa, false, gpa & SHARED == 0, 1, |_| Ok(()));
    // The launched page at gpa 0: the first entry flushes nothing cached, the walk fills the TLB.
    read(0).unwrap();
    let cached = |gfn: gmem_kvm::Gfn| vcpu.tlb().entries().iter().any(|(cached, _)| *cached == gfn);
    assert!(cached(private_gfn), "the walk cached the private translation");
    let flushes = || vm.stats.entry_tlb_flushes.load(Ordering::Relaxed);
    let before = flushes();
    // Another entry in the same epoch: the translation stays and serves the access.
    read(0).unwrap();
    assert!(cached(private_gfn));
    assert_eq!(flushes(), before, "no flush without a TRACK");
    // A TRACK moves the epoch: the next entry drops the cached private translation first.
    module.tdh_mem_track(tdr).unwrap();
    let entered = gmem_kvm::vcpu::guest_page_op(&kvm, &vcpu, mm, 0, false, true, 1, |_| {
        Ok(vcpu.tlb().entries().iter().any(|(gfn, _)| *gfn == private_gfn))
    });
    // The op runs after the walk that refilled it; the flush counter shows the drop.
    assert_eq!(entered, Ok(true));
    assert_eq!(flushes(), before + 1, "the entry after TRACK flushed the cached private translation");
    td.host.check("end");
}

#[test]
fn a_vcpu_does_not_enter_while_wait_for_sept_zap_is_set() {
    let td = Td::finalized(TDX_TD_ATTR_SEPT_VE_DISABLE, 1);
    let vcpu = td.vcpus[0];
    let kvm = td.tdx();
    let vm = vm_of(&kvm);
    let module = td.module();
    td.make_shared(0x30000, PAGE);
    // A zap retry keeps the vCPUs out (the kick finds none inside).
    {
        let _mmu_lock = kvm.mmu_lock_write();
        vm.tdx_no_vcpus_enter_start(&kvm);
    }
    assert!(!vm.may_enter());
    let enters = module.executed(SeamcallLeaf::VpEnter);
    // The vCPU goes round vcpu_run's loop without entering; a signal ends KVM_RUN.
    td.host.machine().inject.arm(FaultPoint::SignalPending, 3, 1);
    let mut buf = [0u8; 1];
    let result = td.host.unchecked().guest_access(vcpu, SHARED | 0x30000, &mut buf, false, None);
    assert_eq!(result, Err(RunError::Errno(Errno::EINTR)));
    assert_eq!(module.executed(SeamcallLeaf::VpEnter), enters, "no TDH.VP.ENTER while the zap is retried");
    assert_eq!(vm.stats.entries_deferred.load(Ordering::Relaxed), 4);
    // The zapper lets the vCPUs in again while one is trying: its access completes.
    std::thread::scope(|scope| {
        scope.spawn(|| {
            gmem_sync::thread::wait_until_within(TEST_WAIT, "8 deferred entries", || {
                vm.stats.entries_deferred.load(Ordering::Relaxed) >= 8
            });
            let _mmu_lock = kvm.mmu_lock_write();
            vm.tdx_no_vcpus_enter_stop(&kvm);
        });
        let result = td.host.unchecked().guest_access(vcpu, SHARED | 0x30000, &mut buf, false, None);
        assert_eq!(result, Ok(()));
    });
    assert!(module.executed(SeamcallLeaf::VpEnter) > enters);
    assert!(vm.t6_breaches().is_empty());
    td.host.check("end");
}

/// `TDX_OPERAND_BUSY` on the S-EPT.
fn busy_sept() -> TdxStatus {
    TdxStatus::new(TDX_OPERAND_BUSY, TDX_OPERAND_ID_SEPT)
}

fn ve(gpa: u64) -> RunError {
    RunError::GuestException(GuestException { vector: "#VE", gpa, reason: "ept-violation-pending-page" })
}

#[test]
fn the_image_is_accepted_and_a_private_first_touch_augs_a_pending_page() {
    let td = Td::finalized(0, 1);
    let vcpu = td.vcpus[0];
    // The launched image is MAPPED: the guest reads it without accepting.
    assert_eq!(td.host.guest_load(vcpu, 0, 6, None).unwrap(), b"kernel");
    // A first touch of any other private page: an EPT violation, KVM AUGs it PENDING, and the
    // re-entered access finds it PENDING: without SEPT_VE_DISABLE the guest gets a #VE.
    assert_eq!(td.host.guest_store(vcpu, 0x40010, b"data", None), Err(ve(0x40000)));
    let pfn = td.kvm().tdp_mmu().unwrap().lookup_mirror(gmem_kvm::Gfn(0x40)).unwrap().pfn;
    assert_eq!(td.sept_leaf(0x40000), SeptEntry::Leaf { pfn, state: LeafState::Pending });
    assert_eq!(td.host.guest_load(vcpu, 0x40000, 4, Some(true)), Err(ve(0x40000)), "again: still PENDING");
    assert!(!td.kvm().is_dead());
    // The guest accepts it: MAPPED, zeroed, and its accesses complete.
    td.host.machine().mem.write_unchecked(pfn, 0, b"stale");
    assert_eq!(td.host.tdx_accept(vcpu, 0x40000), Ok(TdxStatus::SUCCESS));
    assert_eq!(td.sept_leaf(0x40000), SeptEntry::Leaf { pfn, state: LeafState::Mapped });
    assert_eq!(td.host.guest_load(vcpu, 0x40000, 5, None).unwrap(), [0; 5]);
    td.host.guest_store(vcpu, 0x40010, b"data", None).unwrap();
    assert_eq!(td.host.guest_load(vcpu, 0x40010, 4, None).unwrap(), b"data");
    // An explicit kind that contradicts the gpa's shared bit is refused.
    assert_eq!(td.host.guest_load(vcpu, 0x40000, 4, Some(false)), Err(RunError::Errno(Errno::EINVAL)));
    td.host.check("end");
}

#[test]
fn an_access_before_accept_with_sept_ve_disable_kills_the_td() {
    let td = Td::finalized(TDX_TD_ATTR_SEPT_VE_DISABLE, 1);
    let vcpu = td.vcpus[0];
    let kvm = td.tdx();
    assert_eq!(td.host.guest_store(vcpu, 0x40000, b"data", None), Err(RunError::Errno(Errno::EIO)));
    // kvm_vm_dead: no WARN (the kernel's pr_warn is not one), and every later ioctl is EIO.
    assert!(kvm.is_dead());
    assert!(td.host.machine().warnings.is_empty());
    assert_eq!(td.host.guest_load(vcpu, 0, 6, None), Err(RunError::Errno(Errno::EIO)));
    assert_eq!(td.host.set_memory_attributes(td.vm, &attrs(0x40000, PAGE, 0)), Err(Errno::EIO));
    assert_eq!(td.host.pre_fault_memory(vcpu, 0x50000, PAGE), Err(Errno::EIO));
    td.host.check("end");
}

#[test]
fn private_ept_violations_are_write_faults_retried_locally() {
    let td = Td::finalized(0, 1);
    let vcpu = td.vcpus[0];
    let kvm = td.tdx();
    let vm = vm_of(&kvm);
    let module = td.module();
    // AUG finds the S-EPT busy five times: the fault is retried without re-entering the TD.
    module.inject(SeamcallLeaf::MemPageAug, busy_sept(), 0, 5);
    let (enters, retries) = (module.executed(SeamcallLeaf::VpEnter), vm.stats.local_retries.load(Ordering::Relaxed));
    // A load: the private violation is handled as a write fault (the AUGed leaf is writable).
    assert_eq!(td.host.guest_load(vcpu, 0x60000, 1, None), Err(ve(0x60000)));
    assert_eq!(vm.stats.local_retries.load(Ordering::Relaxed), retries + 5);
    assert_eq!(vm.stats.aug_busy.load(Ordering::Relaxed), 5);
    assert_eq!(module.executed(SeamcallLeaf::VpEnter), enters + 2, "one entry faults, one finds the page PENDING");
    assert!(td.kvm().tdp_mmu().unwrap().lookup_mirror(gmem_kvm::Gfn(0x60)).unwrap().writable);
    // A pending event ends the local retries: the vCPU re-enters to take it, then faults again.
    module.inject(SeamcallLeaf::MemPageAug, busy_sept(), 0, 3);
    let (_, vcpu_ref) = td.host.unchecked().vcpu(vcpu).unwrap();
    vcpu_ref.queue_event();
    let enters = module.executed(SeamcallLeaf::VpEnter);
    assert_eq!(td.host.guest_load(vcpu, 0x61000, 1, None), Err(ve(0x61000)));
    assert!(!vcpu_ref.has_events(), "delivered at the next entry");
    assert_eq!(vm.stats.local_retry_events.load(Ordering::Relaxed), 0, "the event was taken at the first entry");
    assert_eq!(module.executed(SeamcallLeaf::VpEnter), enters + 2);
    // An event posted while the vCPU is outside the guest, between its exit and the fault.
    module.inject(SeamcallLeaf::MemPageAug, busy_sept(), 0, 3);
    td.kvm().tdp_mmu().unwrap().set_fault_hook(|kvm| {
        for vcpu in kvm.vcpus() {
            vcpu.queue_event();
        }
    });
    let enters = module.executed(SeamcallLeaf::VpEnter);
    assert_eq!(td.host.guest_load(vcpu, 0x62000, 1, None), Err(ve(0x62000)));
    assert_eq!(vm.stats.local_retry_events.load(Ordering::Relaxed), 1);
    assert_eq!(module.executed(SeamcallLeaf::VpEnter), enters + 3, "one more entry, to take the event");
    // A signal ends KVM_RUN with EINTR; nothing is left half done.
    module.inject(SeamcallLeaf::MemPageAug, busy_sept(), 0, 3);
    td.host.machine().inject.arm(FaultPoint::SignalPending, 0, 1);
    assert_eq!(td.host.guest_load(vcpu, 0x63000, 1, None), Err(RunError::Errno(Errno::EINTR)));
    module.clear_injected();
    td.host.check("end");
}

#[test]
fn local_retries_are_bounded_and_reported() {
    let td = Td::finalized(0, 1);
    let vcpu = td.vcpus[0];
    let module = td.module();
    module.inject(SeamcallLeaf::MemPageAug, busy_sept(), 0, u32::MAX);
    let mut buf = [0u8; 1];
    let result = td.host.unchecked().guest_access(vcpu, 0x70000, &mut buf, false, None);
    assert_eq!(result, Err(RunError::Errno(Errno::EINTR)));
    module.clear_injected();
    let warnings = td.host.take_warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].to_string().contains(&format!("no progress in {FAULT_RETRY_LIMIT} local retries")));
    td.host.check("end");
}

/// F13's TDX half (2bc2694fe20b, in v6.18): a vCPU retrying a private fault locally holds
/// kvm->srcu; when the fault's memslot is being deleted it stops retrying locally, so the
/// deletion's synchronize_srcu completes and the access ends with the no-memslot exit.
#[test]
fn local_retries_end_on_an_invalid_memslot() {
    let td = Td::finalized(0, 1);
    let vcpu = td.vcpus[0];
    let kvm = td.tdx();
    let vm = vm_of(&kvm);
    let module = td.module();
    // AUG is busy until the memslot is gone: the vCPU retries locally meanwhile.
    module.inject(SeamcallLeaf::MemPageAug, busy_sept(), 0, u32::MAX);
    std::thread::scope(|scope| {
        let access = scope.spawn(|| {
            let mut buf = [0u8; 1];
            td.host.unchecked().guest_access(vcpu, 0x80000, &mut buf, true, None)
        });
        gmem_sync::thread::wait_until_within(TEST_WAIT, "3 local retries", || {
            vm.stats.local_retries.load(Ordering::Relaxed) >= 3
        });
        td.host.unchecked().set_user_memory_region2(td.vm, &delete_region(0, 0)).unwrap();
        let exit = RunError::Exit(VcpuExit::MemoryFault {
            gpa: 0x80000,
            size: PAGE,
            flags: KVM_MEMORY_EXIT_FLAG_PRIVATE,
            errno: Errno::EFAULT,
        });
        assert_eq!(access.join().unwrap(), Err(exit), "no memslot: a private fault KVM cannot emulate");
    });
    module.clear_injected();
    assert!(vm.stats.local_retry_invalid_slot.load(Ordering::Relaxed) >= 1);
    td.host.check("end");
}

#[test]
fn accept_after_the_aug_zeroes_the_page_and_maps_it() {
    let td = Td::finalized(TDX_TD_ATTR_SEPT_VE_DISABLE, 1);
    let vcpu = td.vcpus[0];
    let module = td.module();
    // ACCEPT of a page the S-EPT does not map: an EPT violation, KVM AUGs the page, the ACCEPT
    // runs again and maps it.
    let (augs, faults) = (module.executed(SeamcallLeaf::MemPageAug), td.host.vcpu_faults(vcpu).0);
    assert_eq!(td.host.tdx_accept(vcpu, 0x40000), Ok(TdxStatus::SUCCESS));
    assert_eq!(module.executed(SeamcallLeaf::MemPageAug), augs + 1);
    assert_eq!(td.host.vcpu_faults(vcpu).0, faults + 1);
    assert!(matches!(td.sept_leaf(0x40000), SeptEntry::Leaf { state: LeafState::Mapped, .. }));
    assert_eq!(td.host.guest_load(vcpu, 0x40000, 8, None).unwrap(), [0; 8]);
    td.host.guest_store(vcpu, 0x40000, b"private!", None).unwrap();
    assert_eq!(td.host.guest_load(vcpu, 0x40000, 8, None).unwrap(), b"private!");
    // Accepting it again is the module's "already accepted" (a warning status, not an error).
    let already = TdxStatus::new(TDX_PAGE_ALREADY_ACCEPTED, 0);
    assert_eq!(td.host.tdx_accept(vcpu, 0x40000), Ok(already));
    assert!(!already.is_error());
    // A page AUGed (here by a pre-fault) holds whatever the frame held: ACCEPT zeroes it.
    assert_eq!(td.host.pre_fault_memory(vcpu, 0x41000, PAGE), Ok(0));
    let pfn = td.kvm().tdp_mmu().unwrap().lookup_mirror(gmem_kvm::Gfn(0x41)).unwrap().pfn;
    assert_eq!(td.sept_leaf(0x41000), SeptEntry::Leaf { pfn, state: LeafState::Pending });
    td.host.machine().mem.write_unchecked(pfn, 0, b"stale bytes");
    assert_eq!(td.host.tdx_accept(vcpu, 0x41000), Ok(TdxStatus::SUCCESS));
    assert_eq!(td.host.guest_load(vcpu, 0x41000, 11, None).unwrap(), [0; 11]);
    // Operands the module refuses: a shared gpa, a 2M page (not mapped by KVM's TDX), bits 11:3.
    let invalid = TdxStatus::new(TDX_OPERAND_INVALID, TDX_OPERAND_ID_RCX);
    assert_eq!(td.host.tdx_accept(vcpu, SHARED | 0x42000), Ok(invalid));
    assert_eq!(td.host.tdx_accept(vcpu, 0x20_0000 | 1), Ok(invalid));
    assert_eq!(td.host.tdx_accept(vcpu, 0x42000 | 0x8), Ok(invalid));
    assert_eq!(td.host.tdx_accept(vcpu, 0x42000 | 3), Ok(invalid));
    td.host.check("end");
}

#[test]
fn linux_accepts_a_range_page_by_page_and_fails_on_an_accepted_page() {
    let td = Td::finalized(TDX_TD_ATTR_SEPT_VE_DISABLE, 1);
    let vcpu = td.vcpus[0];
    // [2M, 2M + 3 pages): 2M-aligned but shorter than 2M, so 4K ACCEPTs.
    assert_eq!(td.host.tdx_accept_memory(vcpu, 0x20_0000, 0x20_3000), Ok(true));
    for gpa in [0x20_0000, 0x20_1000, 0x20_2000] {
        assert!(matches!(td.sept_leaf(gpa), SeptEntry::Leaf { state: LeafState::Mapped, .. }));
    }
    // v6.18's try_accept_one takes any non-zero status as a failure, "already accepted" too.
    assert_eq!(td.host.tdx_accept_memory(vcpu, 0x20_2000, 0x20_4000), Ok(false));
    // A whole 2M range: the 2M ACCEPT is refused (the model's module maps 4K pages only), then
    // every 4K page is accepted.
    let augs = td.module().executed(SeamcallLeaf::MemPageAug);
    assert_eq!(td.host.tdx_accept_memory(vcpu, 4 << 20, 6 << 20), Ok(true));
    assert_eq!(td.module().executed(SeamcallLeaf::MemPageAug), augs + 512);
    assert!(matches!(td.sept_leaf((6 << 20) - PAGE), SeptEntry::Leaf { state: LeafState::Mapped, .. }));
    // On a VM that is not a TD the TDCALL is #UD.
    let vm = td.host.create_vm(VmType::SwProtected as u64).unwrap();
    let other = td.host.create_vcpu(vm, 0).unwrap();
    let ud = GuestException { vector: "#UD", gpa: 0, reason: "not-a-td" };
    assert_eq!(td.host.tdx_accept(other, 0x1000), Err(RunError::GuestException(ud)));
    td.host.check("end");
}

fn map_gpa_exit(gpa: u64, pages: u64, private: bool) -> RunError {
    let attrs = if private { KVM_MAP_GPA_RANGE_ENCRYPTED } else { KVM_MAP_GPA_RANGE_DECRYPTED };
    RunError::Exit(VcpuExit::Hypercall {
        nr: KVM_HC_MAP_GPA_RANGE,
        args: [gpa, pages, attrs, 0, 0, 0],
        flags: KVM_EXIT_HYPERCALL_LONG_MODE,
    })
}

fn answer(r10: u64, r11: u64) -> Result<TdvmcallResult, RunError> {
    Ok(TdvmcallResult { r10, r11 })
}

#[test]
fn map_gpa_checks_each_operand_in_the_kernels_order() {
    let td = Td::finalized(TDX_TD_ATTR_SEPT_VE_DISABLE, 1);
    let vcpu = td.vcpus[0];
    // Without the KVM_HC_MAP_GPA_RANGE exit the VMM cannot implement MapGPA.
    assert_eq!(td.host.tdx_map_gpa(vcpu, 0x1000, PAGE), answer(TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED, 0x1000));
    td.enable_map_gpa_exit();
    let invalid =
        |gpa: u64, size: u64| (td.host.tdx_map_gpa(vcpu, gpa, size), answer(TDVMCALL_STATUS_INVALID_OPERAND, gpa));
    for (gpa, size) in [
        (0x1000, 0),                  // an empty range wraps (gpa + 0 <= gpa)
        (u64::MAX - 0xfff, 0x2000),   // wraps
        (1 << 52, PAGE),              // above MAXPHYADDR
        ((1 << 52) - PAGE, 2 * PAGE), // its last byte above MAXPHYADDR
        (SHARED - PAGE, 2 * PAGE),    // straddles the shared bit
    ] {
        let (got, expected) = invalid(gpa, size);
        assert_eq!(got, expected, "gpa {gpa:#x} size {size:#x}");
    }
    // The range checks come before the alignment checks.
    assert_eq!(td.host.tdx_map_gpa(vcpu, 0x1800, 0), answer(TDVMCALL_STATUS_INVALID_OPERAND, 0x1800));
    assert_eq!(td.host.tdx_map_gpa(vcpu, 0x1800, PAGE), answer(TDVMCALL_STATUS_ALIGN_ERROR, 0x1800));
    assert_eq!(td.host.tdx_map_gpa(vcpu, 0x1000, 0x800), answer(TDVMCALL_STATUS_ALIGN_ERROR, 0x1000));
    // Other TDVMCALLs: GetTdVmCallInfo leaf 0, a bad leaf of it, an unknown TDVMCALL, and a
    // KVM hypercall (R10 non-zero) the kernel completes itself.
    let call =
        |r10: u64, r11: u64, r12: u64| td.host.tdx_vmcall(vcpu, TdvmcallArgs { r10, r11, r12, ..Default::default() });
    assert_eq!(call(0, 0x10000, 0), answer(TDVMCALL_STATUS_SUCCESS, 0));
    assert_eq!(call(0, 0x10000, 7), answer(TDVMCALL_STATUS_INVALID_OPERAND, 0x10000));
    assert_eq!(call(0, 0x12345, 0), answer(TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED, 0x12345));
    assert_eq!(call(99, 1, 2), answer(KVM_ENOSYS.wrapping_neg(), 1));
    assert_eq!(
        call(0, 0x10003, 0),
        Err(RunError::Errno(Errno::EOPNOTSUPP)),
        "ReportFatalError: no such exit in the model"
    );
    // Nothing was waiting for user space.
    assert_eq!(td.host.tdx_complete_hypercall(vcpu, 0), Err(RunError::Errno(Errno::EINVAL)));
    td.host.check("end");
}

#[test]
fn map_gpa_goes_to_user_space_in_2m_chunks() {
    let td = Td::finalized(TDX_TD_ATTR_SEPT_VE_DISABLE, 1);
    let vcpu = td.vcpus[0];
    td.enable_map_gpa_exit();
    let kvm = td.tdx();
    let vm = vm_of(&kvm);
    // 5 MiB to shared from 1M: three exits (2M, 2M, 1M), args[0] without the shared bit.
    let start = 0x10_0000;
    assert_eq!(td.host.tdx_map_gpa(vcpu, SHARED | start, 5 << 20), Err(map_gpa_exit(start, 512, false)));
    // The vCPU waits for user space: another TDVMCALL is refused.
    assert_eq!(td.host.tdx_map_gpa(vcpu, SHARED | start, PAGE), Err(RunError::Errno(Errno::EINVAL)));
    assert_eq!(td.host.tdx_complete_hypercall(vcpu, 0), Err(map_gpa_exit(start + (2 << 20), 512, false)));
    assert_eq!(td.host.tdx_complete_hypercall(vcpu, 0), Err(map_gpa_exit(start + (4 << 20), 256, false)));
    assert_eq!(td.host.tdx_complete_hypercall(vcpu, 0), answer(TDVMCALL_STATUS_SUCCESS, TDVMCALL_MAP_GPA));
    assert_eq!(vm.stats.map_gpa_exits.load(Ordering::Relaxed), 3);
    // To private: ENCRYPTED, one exit.
    assert_eq!(td.host.tdx_map_gpa(vcpu, start, 2 * PAGE), Err(map_gpa_exit(start, 2, true)));
    assert_eq!(td.host.tdx_complete_hypercall(vcpu, 0), answer(TDVMCALL_STATUS_SUCCESS, TDVMCALL_MAP_GPA));
    td.host.check("end");
}

#[test]
fn map_gpa_returns_retry_with_a_pending_event_and_invalid_operand_on_a_vmm_error() {
    let td = Td::finalized(TDX_TD_ATTR_SEPT_VE_DISABLE, 1);
    let vcpu = td.vcpus[0];
    td.enable_map_gpa_exit();
    let kvm = td.tdx();
    let vm = vm_of(&kvm);
    let start = SHARED | 0x10_0000;
    // An interrupt arrives while user space handles the first chunk: KVM stops after it, and
    // the guest asks again from R11.
    assert_eq!(td.host.tdx_map_gpa(vcpu, start, 5 << 20), Err(map_gpa_exit(0x10_0000, 512, false)));
    td.host.unchecked().queue_event(vcpu).unwrap();
    assert_eq!(td.host.tdx_complete_hypercall(vcpu, 0), answer(TDVMCALL_STATUS_RETRY, start + (2 << 20)));
    assert_eq!(vm.stats.map_gpa_retries.load(Ordering::Relaxed), 1);
    // The guest's next entry takes the event; MapGPA resumes from R11.
    let next = start + (2 << 20);
    assert_eq!(td.host.tdx_map_gpa(vcpu, next, 3 << 20), Err(map_gpa_exit(0x30_0000, 512, false)));
    let (_, vcpu_ref) = td.host.unchecked().vcpu(vcpu).unwrap();
    assert!(!vcpu_ref.has_events());
    // The VMM fails the second chunk: INVALID_OPERAND with R11 = that chunk's gpa.
    assert_eq!(td.host.tdx_complete_hypercall(vcpu, 0), Err(map_gpa_exit(0x50_0000, 256, false)));
    let einval = Errno::EINVAL.to_kernel() as u64;
    assert_eq!(
        td.host.tdx_complete_hypercall(vcpu, einval),
        answer(TDVMCALL_STATUS_INVALID_OPERAND, start + (4 << 20))
    );
    td.host.check("end");
}

fn tdx_vmm(attributes: u64, pages: u64) -> (Vmm, i32) {
    let host = gmem_uapi::SimHost::new_intel(KernelProfile::v6_18());
    let config = VmmConfig { vm_type: KVM_X86_TDX_VM, memory: pages * PAGE, regions: 2 };
    let vmm = Vmm::new_tdx(host, config, attributes).expect("TDX VMM");
    let vcpu = vmm.create_vcpu(0).expect("vCPU");
    (vmm, vcpu)
}

fn assert_clean(vmm: &Vmm, step: &str) {
    assert_eq!(vmm.check_invariants(), Vec::new(), "after {step}");
    assert!(vmm.host().machine().warnings.is_empty(), "after {step}: {:?}", vmm.host().machine().warnings.snapshot());
}

/// MRTD by hand: SHA-384 over one PAGE.ADD buffer per page, each followed (MEASURE) by 16
/// MR.EXTEND records of the page's 256-byte chunks.
fn expected_mrtd(pages: &[(u64, [u8; 4096])]) -> [u8; 48] {
    use gmem_arch::tdx::measure::{mr_extend_buffer, page_add_buffer};
    use sha2::{Digest, Sha384};
    let mut sha = Sha384::new();
    for (gpa, contents) in pages {
        sha.update(page_add_buffer(*gpa));
        for chunk in 0..16u64 {
            sha.update(mr_extend_buffer(gpa + chunk * 256));
            sha.update(&contents[chunk as usize * 256..(chunk as usize + 1) * 256]);
        }
    }
    sha.finalize().into()
}

#[test]
fn the_vmm_sets_a_td_up_as_qemu_and_its_launch_measures_the_image() {
    let (vmm, vcpu) = tdx_vmm(TDX_TD_ATTR_SEPT_VE_DISABLE, 32);
    assert!(vmm.is_tdx() && vmm.has_private_mem() && !vmm.is_snp());
    assert_eq!(vmm.shared_bit(), SHARED);
    // Before the machine starts the vCPU cannot run.
    assert_eq!(vmm.guest_access(vcpu, Vmm::page_gpa(0), &mut [0u8; 1], false), Err(RunError::Errno(Errno::EINVAL)));
    assert_eq!(vmm.mrtd(), None);
    let mut image = vec![0u8; PAGE as usize + 7];
    image[..6].copy_from_slice(b"kernel");
    image[PAGE as usize..].copy_from_slice(b"cmdline");
    assert_eq!(vmm.launch(&image), Ok(2));
    assert_eq!(vmm.stats.launched_pages.load(std::sync::atomic::Ordering::Relaxed), 2);
    let mut pages = Vec::new();
    for (i, chunk) in image.chunks(PAGE as usize).enumerate() {
        let mut page = [0u8; 4096];
        page[..chunk.len()].copy_from_slice(chunk);
        pages.push((GUEST_MEMORY_BASE + i as u64 * PAGE, page));
    }
    assert_eq!(vmm.mrtd(), Some(expected_mrtd(&pages)));
    // The image is MAPPED: the guest reads it without accepting; other pages need an ACCEPT.
    let mut buf = [0u8; 7];
    vmm.guest_access(vcpu, Vmm::page_gpa(1), &mut buf, false).unwrap();
    assert_eq!(&buf, b"cmdline");
    assert_eq!(vmm.tdx_accept(vcpu, Vmm::page_gpa(3)), Ok(TdxStatus::SUCCESS));
    vmm.guest_access(vcpu, Vmm::page_gpa(3), &mut buf, false).unwrap();
    assert_eq!(buf, [0; 7]);
    assert_clean(&vmm, "launch");
    // The launch happens once.
    assert_eq!(vmm.launch(&image).map_err(|e| e.errno), Err(Errno::EINVAL));
    assert_clean(&vmm, "a second launch");
    // A TD with attributes the platform does not offer is refused.
    let host = gmem_uapi::SimHost::new_intel(KernelProfile::v6_18());
    let config = VmmConfig { vm_type: KVM_X86_TDX_VM, memory: 32 * PAGE, regions: 2 };
    assert_eq!(Vmm::new_tdx(host, config, 1 << 0).err(), Some(Errno::EINVAL), "DEBUG is not offered by KVM");
}

#[test]
fn a_conversion_round_trip_through_the_vmm_loses_the_data_and_needs_a_new_accept() {
    let (vmm, vcpu) = tdx_vmm(TDX_TD_ATTR_SEPT_VE_DISABLE, 32);
    vmm.launch(&[]).unwrap();
    let gpa = Vmm::page_gpa(5);
    let region = vmm.regions()[0];
    let file = vmm.host().guest_memfd(region.gmem_fd.unwrap()).unwrap();
    let has_folio = |gpa: u64| {
        let index = (gpa - region.gpa) >> gmem_mm::types::PAGE_SHIFT;
        file.inode().mapping().folios().into_iter().any(|(i, _)| i.0 == index)
    };
    assert_eq!(vmm.tdx_accept(vcpu, gpa), Ok(TdxStatus::SUCCESS));
    vmm.guest_access_as(vcpu, gpa, &mut b"private!".to_vec(), true, true).unwrap();
    assert!(has_folio(gpa));
    assert_clean(&vmm, "accept and store");
    // To shared: MapGPA(shared gpa) → one KVM_EXIT_HYPERCALL → attributes, then the punch.
    assert_eq!(vmm.tdx_enc_status_changed(vcpu, gpa, gpa + PAGE, false), Ok(true));
    assert_eq!(vmm.stats.map_gpa_range_exits.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(vmm.stats.to_shared.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert!(!has_folio(gpa), "the guest_memfd page was punched");
    assert_clean(&vmm, "to shared");
    // The guest uses it through the shared alias: the VMM's shared backing.
    vmm.guest_access_as(vcpu, gpa, &mut b"shared!!".to_vec(), true, false).unwrap();
    let hva = region.hva + (gpa - region.gpa);
    assert_eq!(vmm.host().load(hva, 8).unwrap(), b"shared!!");
    // A private access now is a memory-fault exit (the attributes say shared).
    assert!(matches!(
        vmm.guest_access_as(vcpu, gpa, &mut [0u8; 8], false, true),
        Err(RunError::Exit(VcpuExit::MemoryFault { flags: KVM_MEMORY_EXIT_FLAG_PRIVATE, .. }))
    ));
    // Back to private: MapGPA, the shared backing discarded, then ACCEPT of the fresh page.
    assert_eq!(vmm.tdx_enc_status_changed(vcpu, gpa, gpa + PAGE, true), Ok(true));
    assert_eq!(vmm.stats.to_private.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(vmm.host().load(hva, 8).unwrap(), [0; 8], "shared backing discarded");
    let mut buf = [0xffu8; 8];
    vmm.guest_access_as(vcpu, gpa, &mut buf, false, true).unwrap();
    assert_eq!(buf, [0; 8], "the private data is gone");
    assert_eq!(vmm.tdx_accept(vcpu, gpa), Ok(TdxStatus::new(TDX_PAGE_ALREADY_ACCEPTED, 0)), "re-accepted");
    assert_eq!(vmm.stats.map_gpa_range_failures.load(std::sync::atomic::Ordering::Relaxed), 0);
    drop(file);
    assert_clean(&vmm, "round trip");
}

#[test]
fn a_vmm_td_without_sept_ve_disable_gives_the_guest_a_ve() {
    let (vmm, vcpu) = tdx_vmm(0, 32);
    vmm.launch(&[]).unwrap();
    let gpa = Vmm::page_gpa(2);
    assert_eq!(vmm.guest_access(vcpu, gpa, &mut [0u8; 4], false), Err(ve(gpa)));
    assert_eq!(vmm.tdx_accept(vcpu, gpa), Ok(TdxStatus::SUCCESS));
    vmm.guest_access(vcpu, gpa, &mut [0u8; 4], false).unwrap();
    // A MapGPA the VMM cannot carry out (private, outside guest RAM): INVALID_OPERAND, R11.
    let outside = Vmm::page_gpa(64);
    assert_eq!(vmm.tdx_map_gpa(vcpu, outside, PAGE), answer(TDVMCALL_STATUS_INVALID_OPERAND, outside));
    assert_eq!(vmm.stats.map_gpa_range_failures.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_clean(&vmm, "end");
}

/// The named invariants a check over the TD's host reports.
fn reported(td: &Td, invariant: &str) -> Vec<String> {
    td.host.violations().into_iter().filter(|v| v.invariant == invariant).map(|v| v.detail).collect()
}

/// T7: KVM kills a TD with `SEPT_VE_DISABLE` on the "pending" EPT violation, so the invariant
/// holds after the guest's own access; a pending violation the TD survived (here the module's
/// check run directly, without KVM's exit handling) is reported.
#[test]
fn t7_reports_a_pending_violation_the_td_survived() {
    let td = Td::finalized(TDX_TD_ATTR_SEPT_VE_DISABLE, 1);
    let kvm = td.tdx();
    let tdr = vm_of(&kvm).tdr().unwrap();
    // The page at 0x1000 AUGed by a pre-fault and never accepted: PENDING.
    assert_eq!(td.host.pre_fault_memory(td.vcpus[0], 0x1000, PAGE), Ok(0));
    assert!(matches!(td.sept_leaf(0x1000), SeptEntry::Leaf { state: LeafState::Pending, .. }));
    assert!(reported(&td, "T7").is_empty());
    let exit = td.module().guest_private_access(tdr, 0x1000, false);
    assert!(exit.is_err(), "a PENDING page is not accessible: {exit:?}");
    let t7 = reported(&td, "T7");
    assert_eq!(t7.len(), 1, "{t7:?}");
    assert!(t7[0].contains("pending EPT violations"), "{t7:?}");
}

/// T11: an injected non-BUSY failure of `TDH.MEM.PAGE.AUG` is `KVM_BUG_ON`: the VM is dead and
/// T11 holds (the failure is logged, the VM dead); the same log with the VM alive is reported.
#[test]
fn t11_holds_after_a_fatal_aug_and_names_the_failure() {
    let td = Td::finalized(TDX_TD_ATTR_SEPT_VE_DISABLE, 1);
    let kvm = td.tdx();
    td.module().inject(SeamcallLeaf::MemPageAug, TdxStatus::new(TDX_OPERAND_INVALID, TDX_OPERAND_ID_RCX), 0, 1);
    assert_eq!(td.host.unchecked().pre_fault_memory(td.vcpus[0], 0x1000, PAGE), Err(Errno::EIO));
    assert!(kvm.is_dead(), "KVM_BUG_ON killed the TD");
    assert_eq!(vm_of(&kvm).fatal_seamcalls().len(), 1);
    assert!(reported(&td, "T11").is_empty(), "the VM is dead: the policy held");
    td.host.take_warnings();
}

/// T12: the HKID goes only after every private leaf was removed; releasing it with an AUGed
/// page still mapped is reported.
#[test]
fn t12_reports_an_hkid_released_with_private_pages_left() {
    let td = Td::finalized(TDX_TD_ATTR_SEPT_VE_DISABLE, 1);
    let kvm = td.tdx();
    assert_eq!(td.host.pre_fault_memory(td.vcpus[0], 0x1000, PAGE), Ok(0));
    assert!(reported(&td, "T12").is_empty());
    vm_of(&kvm).tdx_mmu_release_hkid(&kvm);
    assert!(!vm_of(&kvm).is_hkid_assigned());
    let t12 = reported(&td, "T12");
    assert_eq!(t12.len(), 1, "{t12:?}");
    assert!(t12[0].contains("HKID is released"), "{t12:?}");
    td.host.take_warnings();
}
