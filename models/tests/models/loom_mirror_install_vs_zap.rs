//! Loom model of a private fault that installs a mirror SPTE racing a zap of the same gfn, on a
//! TDX-typed VM, running the real gmem-kvm / gmem-mm code; and of the F17 race of a local-retry
//! install against a fault.
//!
//! Kernel functions covered: the guest access (TLB, the walk of the mirror root that treats a
//! FROZEN SPTE as not present), `kvm_mmu_page_fault` → `kvm_tdp_mmu_page_fault`
//! (`mmu_topup_memory_caches` with the external-SPT cache, the `mmu_invalidate_seq` snapshot,
//! `kvm_gmem_get_pfn`, `is_page_fault_stale` under `mmu_lock` held for read) →
//! `kvm_tdp_mmu_map` in the mirror root (`tdp_mmu_map_handle_target_level` →
//! `tdp_mmu_set_spte_atomic` → `set_external_spte_present`: the freeze cmpxchg to FROZEN, the
//! vendor's `set_external_spte` without the SPTE lock, then the new value or the old one
//! restored and `RET_PF_RETRY`); `fallocate(PUNCH_HOLE)` → `kvm_gmem_punch_hole`
//! (`kvm_gmem_invalidate_begin` → `kvm_mmu_unmap_gfn_range` with `KVM_FILTER_PRIVATE` under
//! `mmu_lock` held for write → `tdp_mmu_zap_leafs` on the mirror root → `remove_external_spte`,
//! the flush, `truncate_inode_pages_range`, `kvm_gmem_invalidate_end`).
//!
//! Set-up (unexplored; `common::mirror`): a tiny machine, a TDX VM on a test back-end
//! (`MirrorBackend`: a mirror root, 4K private mappings, and hooks that keep the external page
//! table's leaves, assert the mirror SPTE is FROZEN while `set_external_spte` runs, and answer
//! `EBUSY` (the TDX module's `TDX_OPERAND_BUSY`) as many times as told), the shared bit set, a
//! 2-page guest_memfd bound at the memslot, both gfns PRIVATE, and the second gfn faulted in so
//! that the mirror tables are linked and the race is about the first gfn's leaf.
//!
//! **Install vs zap.** T1 is vCPU 0 loading the page (it faults; the load must succeed); T2
//! punches the page out of the guest_memfd. Checked after both joined, in every interleaving: no
//! WARN or `KVM_BUG_ON`; no FROZEN SPTE left; every invariant holds, T5 among them with the
//! back-end's side (the mirror root's leaves and the external leaves are the same map: present in
//! the mirror ⇔ the back-end maps it, to the same frame) and INV-NO-STALE-PFN over the mirror
//! leaves; the fault counters add up. With the back-end told to answer one `EBUSY`: it was
//! answered, the fault returned `RET_PF_RETRY`, and the fault that followed found the SPTE
//! restored to not present (asserted by the TDP MMU's fault hook, which runs between the pfn
//! and `mmu_lock`). Since the zap needs `mmu_lock` for write, it can never meet the FROZEN SPTE:
//! the model shows that rather than assuming it (the back-end asserts FROZEN during the hook,
//! the zap would WARN on a FROZEN SPTE, and T5 is checked at the end).
//!
//! It runs on `v6.18+F17` without `EBUSY`, and on `v6.18` (F17 off, as v6.18 is) with one
//! `EBUSY`: one fault against one zap cannot make the freeze cmpxchg fail (the zap holds
//! `mmu_lock` for write, excluding the install), so F17 changes nothing here, as upstream said
//! of the bug (the `EBUSY` run on `v6.18+F17` explores the very same executions; it was
//! measured, not kept). The negative control weakens the protocol (`ProtocolWeakening::NoRetryCheck`:
//! the fault skips `is_page_fault_stale`) and must fail: loom finds the fault that resolved the
//! page before the punch and installs it, and has the back-end map it, after the invalidation
//! began (the M1 WARN "stale install").
//!
//! **Local-retry install vs fault (F17).** T1 installs the leaf through the test-only
//! `TdpMmu::map_mirror_leaf_local_retry_for_test` (the local `retry:` of `clear_dirty_gfn_range`
//! and `wrprot_gfn_range`, which no kernel path runs on a mirror root); T2 is vCPU 1 loading the
//! page. The leaf was faulted in once and zapped by a conversion, so both install the same
//! guest_memfd page. With F17 (`v6.18+F17`) every interleaving ends with the leaf present, the
//! back-end agreeing, and no WARN: a local retry whose freeze cmpxchg lost to the fault restarts
//! from the fault's leaf (spurious), and a fault whose cmpxchg lost to the local retry returns
//! `RET_PF_RETRY` and finds the leaf. Without F17 (`v6.18`) loom finds the interleaving where
//! the fault installs between the local retry's walk and its cmpxchg: the retry starts from the
//! stale non-present value (the detector's WARN "the local retry starts from a stale value").
//!
//! The positive models also assert that loom reached each outcome they are about (`Coverage`).
//!
//! Results (release build, 2 cores, `--test-threads 1`, bound 2, with another build running):
//! install vs zap on `v6.18+F17`, 19,984 executions in ~23–29 s (791 install first and are
//! zapped, 19,193 install a fresh page after the punch, 19,566 retry for the invalidation: the
//! retry loop's yields are where most executions come from); with one `EBUSY` on `v6.18`,
//! 22,234 executions in ~30 s (the same count on `v6.18+F17`); the negative control fails in
//! execution 599 (~1 s). Local retry vs fault on `v6.18+F17`: 108 executions in ~0.15 s (65
//! installed by the local retry, 33 spurious after losing to the fault, 10 gave up on the
//! fault's FROZEN SPTE, 24 with the fault retrying); on `v6.18` it fails in execution 19. About
//! 60 s for the file. (The counts move as the underlying code changes.)
//!
//! Run: `RUSTFLAGS="--cfg gmem_loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p gmem-models --release
//! --target-dir target/loom --test models loom_mirror_install_vs_zap::`.

use crate::common::mirror::{arm_after_busy_check, mirror_guest, MirrorGuest, GFN};
use crate::common::{check, Coverage};
use gmem_kvm::tdp_mmu::MapResult;
use gmem_kvm::tlb::ProtocolWeakening;
use gmem_kvm::KernelProfile;
use gmem_mm::vfs::{FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE};
use gmem_mm::PAGE_SIZE;
use gmem_sync::model::{explore, stop_exploring};
use gmem_sync::{thread, Arc};
use std::sync::atomic::Ordering;

/// The external leaf of [`GFN`] (`None` if the back-end maps nothing there).
fn external_leaf(g: &MirrorGuest) -> Option<gmem_mm::Pfn> {
    g.external.leaves.lock().unwrap().get(&GFN.0).copied()
}

fn install_vs_zap_model(profile: &'static str, busy: usize, weakening: ProtocolWeakening, coverage: Arc<Coverage>) {
    check(move || {
        let g = Arc::new(mirror_guest(KernelProfile::by_name(profile).expect("a profile")));
        g.tdp().weaken_for_test(weakening);
        g.external.busy.store(busy, Ordering::Relaxed);
        arm_after_busy_check(&g.kvm, g.external.clone());
        let zapped = g.tdp().stats().zapped;
        let sets = g.external.sets.load(Ordering::Relaxed);
        let faults = |g: &MirrorGuest| {
            let stat = &g.vcpu.stat;
            [&stat.pf_taken, &stat.pf_fixed, &stat.pf_spurious, &stat.pf_retry].map(|n| n.load(Ordering::Relaxed))
        };
        let before = faults(&g);

        explore();
        let vcpu = {
            let g = Arc::clone(&g);
            thread::spawn(move || g.load(0).expect("the load succeeds"))
        };
        let puncher = {
            let g = Arc::clone(&g);
            thread::spawn(move || {
                g.host
                    .fallocate(g.gmem_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, PAGE_SIZE as i64)
                    .expect("punch hole")
            })
        };
        vcpu.join().unwrap();
        puncher.join().unwrap();
        stop_exploring();

        g.assert_quiescent_state();
        let mirror = g.tdp().lookup_mirror(GFN).map(|spte| spte.pfn);
        assert_eq!(mirror, external_leaf(&g), "present in the mirror root ⇔ mapped by the back-end");
        let after = faults(&g);
        let [taken, fixed, spurious, retry] = [0, 1, 2, 3].map(|i| after[i] - before[i]);
        assert_eq!(taken, fixed + spurious + retry, "every fault ended fixed, spurious or retried");
        let external = &g.external;
        let busy_returned = external.busy_returned.load(Ordering::Relaxed);
        assert_eq!(busy_returned, busy, "the fault reaches set_external_spte until it installs");
        assert_eq!(
            external.retried_after_busy.load(Ordering::Relaxed),
            busy,
            "each BUSY install was followed by a fault that found the SPTE not present"
        );
        assert!(retry >= busy as u64, "a BUSY install is RET_PF_RETRY");
        let installs = external.sets.load(Ordering::Relaxed) - sets - busy_returned;
        assert_eq!(installs as u64, fixed, "one successful set_external_spte per installed leaf");

        // The outcomes the model is about; in every one of them the checks above held.
        let zapped = g.tdp().stats().zapped > zapped;
        coverage.record("the fault installed first; the punch zapped the mirror and external leaves", zapped);
        coverage.record("the punch came first; the fault installed a fresh page", !zapped && mirror.is_some());
        coverage.record("the fault retried for the punch's invalidation", retry > busy as u64);
    });
}

/// The kernel's protocol (v6.18 with F17): in every interleaving the mirror root and the
/// back-end agree and nothing stays FROZEN.
#[test]
fn install_vs_zap() {
    let coverage = Arc::new(Coverage::default());
    install_vs_zap_model("v6.18+F17", 0, ProtocolWeakening::None, Arc::clone(&coverage));
    coverage.assert_all_reached();
}

/// v6.18 as it is (F17 off), with the TDX module answering the first `TDH.MEM.PAGE.AUG` with
/// BUSY: the SPTE is restored and the fault retries. One fault against one zap never fails the
/// freeze cmpxchg, so the stale `iter->old_spte` F17 fixes is never made, let alone used (the
/// same run on `v6.18+F17` explores the same executions).
#[test]
fn install_vs_zap_with_a_busy_tdx_module_without_f17() {
    let coverage = Arc::new(Coverage::default());
    install_vs_zap_model("v6.18", 1, ProtocolWeakening::None, Arc::clone(&coverage));
    coverage.assert_all_reached();
}

/// Negative control: without the `is_page_fault_stale` check, a fault that resolved the page
/// before the punch installs it (and the back-end maps it) after the invalidation began.
#[test]
#[should_panic(expected = "stale install")]
fn install_vs_zap_without_retry_check_fails() {
    install_vs_zap_model("v6.18+F17", 0, ProtocolWeakening::NoRetryCheck, Arc::default());
}

fn local_retry_vs_fault_model(profile: &'static str, coverage: Arc<Coverage>) {
    check(move || {
        let g = Arc::new(mirror_guest(KernelProfile::by_name(profile).expect("a profile")));
        g.load(0).expect("the first load");
        let spte = g.tdp().lookup_mirror(GFN).expect("the leaf");
        g.zap_by_conversion();
        assert_eq!((g.tdp().lookup_mirror(GFN), external_leaf(&g)), (None, None));

        explore();
        let installer = {
            let g = Arc::clone(&g);
            thread::spawn(move || {
                g.tdp().map_mirror_leaf_local_retry_for_test(&g.kvm, GFN, spte, || {}).expect("the local-retry install")
            })
        };
        let vcpu = {
            let g = Arc::clone(&g);
            thread::spawn(move || g.load(1).expect("vCPU 1's load succeeds"))
        };
        let installed = installer.join().unwrap();
        vcpu.join().unwrap();
        stop_exploring();

        g.assert_quiescent_state();
        assert_eq!(g.tdp().lookup_mirror(GFN).map(|leaf| leaf.pfn), Some(spte.pfn));
        assert_eq!(external_leaf(&g), Some(spte.pfn));
        let stat = &g.vcpu2.stat;
        let (fixed, retry) = (stat.pf_fixed.load(Ordering::Relaxed), stat.pf_retry.load(Ordering::Relaxed));
        assert_eq!(u64::from(installed == MapResult::Fixed) + fixed, 1, "exactly one of them installed the leaf");

        coverage.record("the local retry installed the leaf", installed == MapResult::Fixed);
        coverage.record("the local retry found the fault's leaf (spurious)", installed == MapResult::Spurious);
        coverage.record("the local retry met the fault's FROZEN SPTE and gave up", installed == MapResult::Retry);
        coverage.record("the fault retried (FROZEN, or it lost the freeze cmpxchg)", retry > 0);
    });
}

/// With F17 the local retry always restarts from what its failed cmpxchg saw.
#[test]
fn local_retry_vs_fault() {
    let coverage = Arc::new(Coverage::default());
    local_retry_vs_fault_model("v6.18+F17", Arc::clone(&coverage));
    coverage.assert_all_reached();
}

/// Without F17 (v6.18) loom finds the fault installing between the local retry's walk and its
/// cmpxchg, and the retry starting from the stale value.
#[test]
#[should_panic(expected = "the local retry starts from a stale value")]
fn local_retry_vs_fault_without_f17_fails() {
    local_retry_vs_fault_model("v6.18", Arc::default());
}
