//! The TDX fix toggles of v6.19 (`upstream-fixes.md` F15, F16), each shown by a scenario that
//! goes wrong on v6.18 without the fix and right with it.

use gmem_arch::tdx::kvm::{
    kvm_tdx_cmd, kvm_tdx_init_mem_region, TdxVm, KVM_TDX_INIT_VCPU, KVM_TDX_MEASURE_MEMORY_REGION,
    TDX_TD_ATTR_SEPT_VE_DISABLE,
};
use gmem_arch::tdx::module::TdLock;
use gmem_arch::tdx::status::{SeamcallLeaf, TdxStatus, TDX_OPERAND_BUSY, TDX_OPERAND_ID_SEPT};
use gmem_kvm::KernelProfile;
use gmem_mm::Errno;
use gmem_tests::*;
use std::sync::mpsc;
use std::time::Duration;

/// A TD after INIT_VM with `vcpus` vCPUs (the first initialised), a 2M guest_memfd memslot at
/// gpa 0 whose first 1M is PRIVATE, and one page of image in user memory.
fn td(profile: KernelProfile, vcpus: u64) -> (CheckedHost, i32, Vec<i32>, u64) {
    let TdGuest { host, vm, vcpus, .. } = TdGuest::new(profile, TDX_TD_ATTR_SEPT_VE_DISABLE, 2 << 20, 1 << 20, vcpus);
    host.tdx_init_vcpu(vcpus[0], 0).unwrap();
    let image = host.mmap_anonymous(PAGE).unwrap();
    host.store(image, b"kernel").unwrap();
    (host, vm, vcpus, image)
}

/// F15: a PAGE.ADD that meets a busy S-EPT. v6.18 has premapped the mirror leaf already and
/// gives up with EBUSY: the leaf stays premapped, the folio is prepared (a retry is EEXIST) and
/// FINALIZE is refused: the launch cannot complete without zapping the page first. With F15 the
/// ADD is the set hook's: the BUSY restores the mirror SPTE and the fault retries.
fn launch_survives_a_busy_page_add(profile: KernelProfile) -> bool {
    let (host, vm, vcpus, image) = td(profile, 1);
    let module = host.unchecked().tdx_host().unwrap().module().clone();
    module.inject(SeamcallLeaf::MemPageAdd, TdxStatus::new(TDX_OPERAND_BUSY, TDX_OPERAND_ID_SEPT), 0, 1);
    let mut region = kvm_tdx_init_mem_region { source_addr: image, gpa: 0, nr_pages: 1 };
    let first = host.tdx_init_mem_region(vcpus[0], &mut region, KVM_TDX_MEASURE_MEMORY_REGION);
    if let Err(error) = first {
        assert_eq!(error.errno, Errno::EBUSY);
        assert_eq!(TdxVm::of(&host.kvm(vm)).unwrap().nr_premapped(), 1);
        let mut again = kvm_tdx_init_mem_region { source_addr: image, gpa: 0, nr_pages: 1 };
        let retry = host.tdx_init_mem_region(vcpus[0], &mut again, KVM_TDX_MEASURE_MEMORY_REGION);
        assert_eq!(retry.unwrap_err().errno, Errno::EEXIST);
    }
    let finalized = host.tdx_finalize_vm(vm).is_ok();
    host.check("finalize");
    finalized
}

#[test]
fn f15_a_busy_page_add_does_not_strand_a_premapped_leaf() {
    assert!(!launch_survives_a_busy_page_add(KernelProfile::v6_18()), "v6.18 strands the page");
    assert!(launch_survives_a_busy_page_add(profile("v6.18+F15")), "F15 retries the fault");
}

/// F16: `KVM_TDX_INIT_VCPU` on vCPU 1 while `KVM_TDX_INIT_MEM_REGION` runs on vCPU 0. A fault
/// hook stops INIT_MEM_REGION in its fault (after the pfn is resolved) and, holding the TD's
/// TDR lock shared as the PAGE.ADD / MR.EXTEND it issues next does on its CPU, lets the other
/// thread's INIT_VCPU run: v6.18 takes only vCPU 1's mutex there, so TDH.VP.CREATE (TDR
/// exclusive) meets the busy TDR: `KVM_BUG_ON`, the VM is dead. With F16 INIT_VCPU waits for
/// the state-transition locks INIT_MEM_REGION holds, and runs after it. Returns whether the VM
/// survived, with both calls successful.
fn concurrent_init_vcpu_and_init_mem_region(profile: KernelProfile) -> bool {
    let (host, vm, vcpus, image) = td(profile, 2);
    let kvm = host.kvm(vm);
    let tdr = TdxVm::of(&kvm).unwrap().tdr().unwrap();
    let module = host.unchecked().tdx_host().unwrap().module().clone();
    let td = module.td(tdr).unwrap();
    // INIT_VCPU's command in its own page (the typed helpers share one staging area, which
    // would serialise the two calls by itself).
    let cmd_page = host.mmap_anonymous(PAGE).unwrap();
    let cmd = kvm_tdx_cmd { id: KVM_TDX_INIT_VCPU, ..Default::default() };
    host.store(cmd_page, gmem_arch::uapi::as_bytes(&cmd)).unwrap();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    kvm.tdp_mmu().unwrap().set_fault_hook(move |_kvm| {
        let held = td.try_hold(TdLock::TdrShared).expect("the TDR lock is free");
        go_tx.send(()).unwrap();
        // v6.18: INIT_VCPU finishes meanwhile; with F16 it waits for our locks.
        let _ = done_rx.recv_timeout(Duration::from_millis(500));
        drop(held);
    });
    let (init_vcpu, init_mem) = std::thread::scope(|scope| {
        let host = &host;
        let vcpu = vcpus[1];
        let other = scope.spawn(move || {
            go_rx.recv().unwrap();
            let result = host.unchecked().vcpu_memory_encrypt_op(vcpu, cmd_page);
            let _ = done_tx.send(());
            result
        });
        let mut region = kvm_tdx_init_mem_region { source_addr: image, gpa: 0, nr_pages: 1 };
        let init_mem = host.unchecked().tdx_init_mem_region(vcpus[0], &mut region, KVM_TDX_MEASURE_MEMORY_REGION);
        (other.join().unwrap(), init_mem)
    });
    let survived = !kvm.is_dead() && init_vcpu.is_ok() && init_mem.is_ok();
    if survived {
        host.check("both transitions");
    } else {
        assert_eq!(init_vcpu.unwrap_err(), Errno::EIO);
        let warnings = host.take_warnings();
        assert!(warnings.iter().any(|w| w.to_string().contains("TDH_VP_CREATE")), "{warnings:?}");
    }
    survived
}

#[test]
fn f16_state_transitions_are_serialised() {
    assert!(!concurrent_init_vcpu_and_init_mem_region(KernelProfile::v6_18()), "v6.18 contends: KVM_BUG_ON");
    assert!(concurrent_init_vcpu_and_init_mem_region(profile("v6.18+F16")), "F16 serialises");
}
