//! Loom model of a vCPU fault on a private guest_memfd page racing `fallocate(PUNCH_HOLE)`,
//! running the real gmem-kvm / gmem-mm code.
//!
//! Kernel functions covered: the guest access (`vcpu_enter_guest` entry with its request check,
//! TLB, SPTE walk), `kvm_mmu_page_fault` → `kvm_tdp_mmu_page_fault` (`mmu_invalidate_seq`
//! snapshot, `kvm_gmem_get_pfn`, `is_page_fault_stale` under `mmu_lock`, `kvm_tdp_mmu_map`);
//! `fallocate` → `kvm_gmem_punch_hole` (`kvm_gmem_invalidate_begin` with the zap and
//! `kvm_flush_remote_tlbs`, `truncate_inode_pages_range`, `kvm_gmem_invalidate_end`).
//!
//! Thread roles (set-up unexplored: a tiny machine, a SW_PROTECTED VM on v6.18 with the TDP MMU, a
//! 1-page guest_memfd bound to memslot 0, the gfn PRIVATE, one vCPU, nothing faulted in): T1 is the
//! vCPU loading the page (it faults); T2 punches the page. A fault hook records whether the
//! folio the fault resolved had already been truncated when the fault went for `mmu_lock`.
//!
//! Checked: right after the punch returns (in T2), no SPTE and no TLB entry without a pending
//! flush maps a freed frame; after both threads joined, every invariant holds (INV-NO-STALE-PFN
//! over SPTEs and TLBs, M2-M5), no WARN (no M1 stale install, no access through a freed frame),
//! the fault counters add up, and a fault whose folio was truncated under it retried.
//! The negative control skips the `is_page_fault_stale` check and must fail.
//!
//! Run: `RUSTFLAGS="--cfg gmem_loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p gmem-models --release
//! --target-dir target/loom --test loom_fault_vs_punch`.
//!
//! Status: ignored. Under loom the first execution exceeds the branch limit with the flusher
//! spinning in `make_all_cpus_request`'s wait for a kicked vCPU; the vCPU's progress in that
//! schedule has not been diagnosed yet (the threaded tests in `tests/tests/tlb.rs` pass).
#![cfg(gmem_loom)]

mod common;

use common::{check, guest, Guest};
use gmem_kvm::tlb::ProtocolWeakening;
use gmem_kvm::vcpu::guest_access;
use gmem_mm::folio::Folio;
use gmem_mm::vfs::{FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE};
use gmem_mm::PAGE_SIZE;
use gmem_sync::model::{explore, stop_exploring};
use gmem_sync::{thread, Arc};
use std::sync::atomic::{AtomicBool, Ordering};

fn model(weakening: ProtocolWeakening) {
    check(move || {
        let g: Arc<Guest> = Arc::new(guest(false));
        g.tdp().weaken_for_test(weakening);
        // Bookkeeping outside the model (plain std atomics): did the fault's folio get truncated
        // before the fault took mmu_lock?
        let truncated_under_fault = Arc::new(AtomicBool::new(false));
        {
            let truncated_under_fault = Arc::clone(&truncated_under_fault);
            g.tdp().set_fault_hook_pfn(move |kvm, _gfn, pfn| {
                let folio = Folio::from_pfn(&kvm.machine().mem, pfn);
                truncated_under_fault.store(folio.mapping_ino() == 0, Ordering::Relaxed);
            });
        }
        explore();

        let vcpu = {
            let g = Arc::clone(&g);
            thread::spawn(move || {
                let mut buf = [0u8; 1];
                guest_access(&g.kvm, &g.vcpu, &g.host.process().mm, common::GPA, &mut buf, false, None)
                    .expect("the load succeeds");
            })
        };
        let puncher = {
            let g = Arc::clone(&g);
            thread::spawn(move || {
                g.host
                    .fallocate(g.gmem_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, PAGE_SIZE as i64)
                    .expect("punch hole");
                // After the punch returns, nothing translates to a freed frame.
                g.assert_nothing_stale("after the punch returned");
            })
        };
        vcpu.join().unwrap();
        puncher.join().unwrap();
        stop_exploring();

        g.assert_quiescent_state();
        let stat = &g.vcpu.stat;
        let (taken, fixed, spurious, retry) = (
            stat.pf_taken.load(Ordering::Relaxed),
            stat.pf_fixed.load(Ordering::Relaxed),
            stat.pf_spurious.load(Ordering::Relaxed),
            stat.pf_retry.load(Ordering::Relaxed),
        );
        assert_eq!(taken, fixed + spurious + retry, "every fault ended fixed, spurious or retried");
        if truncated_under_fault.load(Ordering::Relaxed) {
            assert!(retry >= 1, "the fault's folio was truncated under it, yet it did not retry");
        }
    });
}

/// The kernel's protocol: in every interleaving the punch leaves nothing stale behind.
#[test]
#[ignore = "open: under loom the flusher's wait for a kicked vCPU does not end (max branches); see the module docs"]
fn fault_vs_punch_hole() {
    model(ProtocolWeakening::None);
}

/// Negative control: without the `is_page_fault_stale` check a fault that resolved the folio
/// before the punch installs it after, and the frame is freed under the SPTE.
#[test]
#[ignore = "open: under loom the flusher's wait for a kicked vCPU does not end (max branches); see the module docs"]
#[should_panic(expected = "stale")]
fn fault_vs_punch_hole_without_retry_check_fails() {
    model(ProtocolWeakening::NoRetryCheck);
}
