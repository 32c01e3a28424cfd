//! Loom model of upstream fix F7 ("KVM: x86: disallow pre-fault for SNP VMs before
//! initialization"): `KVM_PRE_FAULT_MEMORY` racing `KVM_SEV_SNP_LAUNCH_UPDATE` on one gfn of an
//! SEV-SNP guest, running the real gmem-kvm / gmem-arch / gmem-mm code.
//!
//! Kernel functions covered: `KVM_MEMORY_ENCRYPT_OP` → `sev_mem_enc_ioctl` (`kvm->lock`, the
//! kmap_local balance check at return) → `snp_launch_update` (`slots_lock`) →
//! `kvm_gmem_populate` (the invalidate lock, `__kvm_gmem_get_pfn`, the folio unlocked before the
//! callback, marked prepared after it) → `sev_gmem_post_populate` (`snp_lookup_rmpentry`,
//! `kmap_local_pfn`, `copy_from_user` into the page, `rmp_make_private` to Pre-Guest, the
//! firmware's `SNP_LAUNCH_UPDATE`); `KVM_PRE_FAULT_MEMORY` → `kvm_vcpu_pre_fault_memory` →
//! `kvm_arch_vcpu_pre_fault_memory` (the `pre_fault_allowed` gate F7 added) → `kvm_tdp_map_page`
//! → `kvm_tdp_mmu_page_fault` → `kvm_gmem_get_pfn` → `kvm_gmem_prepare_folio`
//! (`clear_highpage`, `sev_gmem_prepare`: RMPUPDATE to Guest-Invalid) → the SPTE install.
//!
//! Invariant: INV-NO-HOST-WRITE-PRIVATE. The RMP checks every host write (the copy of the
//! launch, the zeroing of the prepare); a write to an assigned frame is an RMP #PF, recorded as an
//! Oops in the machine's WARN registry (`PhysMem`'s host-write check, installed by the SNP host).
//! After both threads joined: no Oops; with the gate also no WARN, every invariant holds
//! (`gmem_kvm::invariants::check`), the pre-fault was refused (EOPNOTSUPP) and the launch
//! succeeded (the page Guest-Valid). Without the gate a successful pre-fault before
//! LAUNCH_FINISH is S8's violation in every interleaving (tests/tests/integration/snp_bugs.rs
//! asserts that), so the negative control looks only for the host write.
//!
//! Thread roles (set-up unexplored: a tiny machine with the x86 vendor module, an SNP VM after
//! KVM_SEV_INIT2 and SNP_LAUNCH_START, a 1-page guest_memfd bound at the gfn and allocated by
//! `fallocate` (allocation only: the frame is the hypervisor's, the folio not prepared), the gfn
//! PRIVATE, one vCPU, `/dev/sev` open, the image page in user memory): T1 is the VMM launching
//! the page (SNP_LAUNCH_UPDATE, one NORMAL page); T2 is another VMM thread pre-faulting the same
//! gfn before SNP_LAUNCH_FINISH. The main thread joins and checks.
//!
//! The positive model (v6.18, with the gate) also asserts that loom reached the interleavings it
//! is about (`Coverage`), by the RMP state of the page T2 sees right after its pre-fault was
//! refused: still the hypervisor's (T1 before its `rmp_make_private`, which includes the window
//! between `sev_gmem_post_populate`'s RMP check and its copy), Pre-Guest (T1 between
//! `rmp_make_private` and the firmware's update), Guest-Valid (the firmware launched it; T1 may
//! not have marked the folio prepared yet). The negative control runs the same model on
//! `v6.18-F7` (no gate) and must fail with the Oops "RMP #PF: host write". Two interleavings of
//! the race end in that Oops, each needing one preemption of T1 while the folio is unlocked:
//! T2's `sev_gmem_prepare` between T1's RMP check and T1's copy, so the copy writes a
//! Guest-Invalid page (the interleaving of the fix's commit message); or T2's
//! `kvm_gmem_prepare_folio` after the firmware launched the page but before `kvm_gmem_populate`
//! marked the folio prepared, so `clear_highpage` writes a Guest-Valid page. Loom's depth-first
//! search reaches the second first (execution 26); the first is reproduced deterministically by
//! `tests/tests/integration/snp_bugs.rs` (`f7_pre_fault_inside_the_launch_update_window`, which
//! stalls the copy at its `copy_from_user`).
//!
//! Results (release build, 2 cores, `--test-threads 1`, bound 2): 39 executions in ~2.5 s (13
//! with the page still the hypervisor's, 16 Pre-Guest, 10 Guest-Valid when the pre-fault was
//! refused); the negative control fails in execution 26 (~0.2 s). The page copies dominate the
//! cost of an execution (every byte of the source read, the copy and the firmware's read is a
//! loom atomic access). Without the `fallocate` in the set-up, T2 would find the frame through
//! the page cache and loom interleaves those lookups too: 226 executions in ~13 s. (The counts
//! move as the underlying code changes.)
//!
//! Run: `RUSTFLAGS="--cfg gmem_loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p gmem-models --release
//! --target-dir target/loom --test models loom_snp_prefault_vs_launch_update::`.

use crate::common::{check, snp_guest, Coverage, SnpGuest};
use gmem_arch::sev::kvm::SvmVm;
use gmem_kvm::profile::Fix;
use gmem_kvm::KernelProfile;
use gmem_mm::{Errno, Pfn};
use gmem_sync::model::{explore, stop_exploring};
use gmem_sync::{thread, Arc};

/// The RMP state of the page's frame as T2 sees it right after its refused pre-fault (one load
/// of the entry, the only access the bookkeeping adds to the model).
fn seen_by_the_pre_fault(g: &SnpGuest, pfn: Pfn) -> &'static str {
    let vm = SvmVm::of(&g.kvm).expect("an SVM VM");
    vm.host().rmp().read(pfn).expect("an RMP entry").state_name()
}

fn model(profile: &'static str, coverage: Arc<Coverage>) {
    check(move || {
        let profile = KernelProfile::by_name(profile).expect("a profile");
        let gated = profile.has_fix(Fix::F7PreFaultGate);
        let g = Arc::new(snp_guest(profile));
        let pfn = g.gmem_pfn().expect("the allocated page");

        explore();
        let launcher = {
            let g = Arc::clone(&g);
            thread::spawn(move || g.launch_update())
        };
        let pre_faulter = {
            let g = Arc::clone(&g);
            thread::spawn(move || {
                let result = g.pre_fault();
                let seen = (result == Err(Errno::EOPNOTSUPP)).then(|| seen_by_the_pre_fault(&g, pfn));
                (result, seen)
            })
        };
        let launched = launcher.join().unwrap();
        let (pre_fault, seen) = pre_faulter.join().unwrap();
        stop_exploring();

        // INV-NO-HOST-WRITE-PRIVATE: no Oops. With the gate every other check holds too; without
        // it a successful pre-fault prepares the page before LAUNCH_FINISH, which S8 names in
        // every such interleaving, so only the host write is the model's question there.
        if gated {
            g.assert_quiescent_state();
        } else {
            g.assert_no_host_write_to_private();
        }
        if gated {
            assert_eq!(pre_fault, Err(Errno::EOPNOTSUPP), "the pre-fault before LAUNCH_FINISH");
            assert_eq!(launched, Ok(()), "SNP_LAUNCH_UPDATE");
            let entry = g.rmp_entry().expect("the launched page");
            assert_eq!(entry.state_name(), "Guest-Valid", "{entry:?}");
        }

        // The outcomes the model is about; in every one of them the checks above held.
        coverage.record("refused with the frame still the hypervisor's", seen == Some("Hypervisor"));
        coverage.record("refused with the page Pre-Guest (before the firmware's update)", seen == Some("Pre-Guest"));
        coverage.record("refused after the firmware launched the page", seen == Some("Guest-Valid"));
    });
}

/// With F7's gate (v6.18): the pre-fault is refused wherever it lands in the launch, and no host
/// write ever reaches a private page.
#[test]
fn pre_fault_vs_launch_update() {
    let coverage = Arc::new(Coverage::default());
    model("v6.18", Arc::clone(&coverage));
    coverage.assert_all_reached();
}

/// Negative control: without the gate (v6.18-F7) the pre-fault prepares the page inside the
/// launch's window and a host write hits the private page.
#[test]
#[should_panic(expected = "RMP #PF: host write")]
fn pre_fault_vs_launch_update_without_the_gate_fails() {
    model("v6.18-F7", Arc::default());
}
