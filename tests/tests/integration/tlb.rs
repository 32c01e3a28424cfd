//! Per-vCPU TLBs and the remote-flush protocol, through vCPUs, with every invariant
//! (INV-NO-STALE-PFN over TLBs, M2-M5) checked after every call.
//!
//! Goal: a guest access goes TLB → SPTE → fault as a guest sees it; every way memory is taken away
//! (punch hole, conversion) flushes the TLBs, so the next access walks and faults; and vCPUs
//! running concurrently with punches and conversions never translate through a freed frame.

use gmem_kvm::attributes::KVM_MEMORY_ATTRIBUTE_PRIVATE;
use gmem_kvm::tlb::{KVM_REQ_TLB_FLUSH, OUTSIDE_GUEST_MODE};
use gmem_kvm::{invariants, KernelProfile};
use gmem_mm::vfs::{FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE};
use gmem_tests::*;

const PAGES: u64 = 8;

/// A SW_PROTECTED VM on v6.18 with `vcpus` vCPUs and one guest_memfd memslot of 8 pages at gpa
/// 0, backed for shared accesses by anonymous memory, all of it PRIVATE.
fn private_guest(vcpus: u64) -> Guest {
    Guest::builder(KernelProfile::v6_18()).pages(PAGES).private(true).vcpus(vcpus).build()
}

#[test]
fn the_second_access_hits_the_tlb_without_walking() {
    let guest = private_guest(1);
    let host = &guest.host;
    host.guest_store(guest.vcpus[0], 0x1000, &[7], None).unwrap();
    // Miss, walk (nothing), fault, walk again (fills the TLB).
    assert_eq!(guest.tlb_counts(0), (0, 2, 1, 0));
    assert_eq!(host.guest_load(guest.vcpus[0], 0x1000, 1, None).unwrap(), vec![7]);
    assert_eq!(guest.tlb_counts(0), (1, 2, 1, 0), "the load is served by the TLB");
    let entries = guest.kvm_vcpu(0).tlb().entries();
    assert_eq!(entries.len(), 1);
    assert!(entries[0].1.private && entries[0].1.writable);
    assert_eq!(guest.kvm_vcpu(0).tlb().mode(), OUTSIDE_GUEST_MODE);
}

#[test]
fn a_punch_hole_flushes_and_the_next_access_faults() {
    let guest = private_guest(2);
    let host = &guest.host;
    host.guest_store(guest.vcpus[0], 0x2000, &[1], None).unwrap();
    host.guest_load(guest.vcpus[1], 0x2000, 1, None).unwrap();
    host.fallocate(guest.gmem(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0x2000, PAGE as i64).unwrap();
    // Both vCPUs have the flush pending; their stale entries are not used.
    for n in 0..2 {
        assert!(guest.kvm_vcpu(n).tlb().test_request(KVM_REQ_TLB_FLUSH));
    }
    let before = guest.tlb_counts(0);
    assert_eq!(host.guest_load(guest.vcpus[0], 0x2000, 1, None).unwrap(), vec![0], "a fresh, zeroed page");
    let after = guest.tlb_counts(0);
    assert_eq!(after.0, before.0, "no TLB hit");
    assert_eq!(after.2, before.2 + 1, "one fault");
    assert_eq!(after.3, before.3 + 1, "the flush was serviced on entry");
    assert!(!guest.kvm_vcpu(0).tlb().test_request(KVM_REQ_TLB_FLUSH));
}

#[test]
fn a_conversion_flushes_and_the_next_access_faults_shared() {
    let guest = private_guest(1);
    let host = &guest.host;
    host.guest_store(guest.vcpus[0], 0x3000, &[9], None).unwrap();
    host.set_memory_attributes(guest.vm, &attrs(0x3000, PAGE, 0)).unwrap();
    assert!(guest.kvm_vcpu(0).tlb().test_request(KVM_REQ_TLB_FLUSH));
    let before = guest.tlb_counts(0);
    // The gfn is shared now: the default access is shared and faults in the anonymous backing.
    assert_eq!(host.guest_load(guest.vcpus[0], 0x3000, 1, None).unwrap(), vec![0]);
    let after = guest.tlb_counts(0);
    assert_eq!((after.0, after.2, after.3), (before.0, before.2 + 1, before.3 + 1));
    let entries = guest.kvm_vcpu(0).tlb().entries();
    assert_eq!(entries.len(), 1);
    assert!(!entries[0].1.private, "refilled from the shared SPTE");
}

/// Three vCPU threads store and load all over the slot while the main thread punches holes and
/// converts pages back and forth, for a fixed number of operations; afterwards (quiescent) every
/// invariant holds and no WARN was recorded. Run on the raw host: the checked host's per-call
/// checks need quiescence.
#[test]
fn vcpus_racing_punches_and_conversions_keep_every_invariant() {
    const ROUNDS: u64 = 300;
    let guest = private_guest(3);
    let host = guest.host.unchecked();
    // Scoped threads borrow the host (vCPU threads of one process, as a VMM's are).
    std::thread::scope(|scope| {
        let workers: Vec<_> = guest
            .vcpus
            .iter()
            .enumerate()
            .map(|(n, &vcpu)| {
                scope.spawn(move || {
                    for round in 0..ROUNDS {
                        let gpa = ((round * 3 + n as u64) % PAGES) * PAGE + n as u64 * 8;
                        let mut buf = [n as u8 + 1; 8];
                        // A memory-fault exit (the page was converted under the access) is a normal
                        // outcome for a guest; anything else is not.
                        match host.guest_access(vcpu, gpa, &mut buf, round % 2 == 0, None) {
                            Ok(()) | Err(gmem_kvm::vcpu::RunError::Exit(_)) => {}
                            Err(other) => panic!("vCPU {n}: {other:?}"),
                        }
                    }
                })
            })
            .collect();
        for round in 0..ROUNDS {
            let page = (round * 5) % PAGES;
            if round % 3 == 0 {
                let to = if round % 2 == 0 { 0 } else { KVM_MEMORY_ATTRIBUTE_PRIVATE };
                host.set_memory_attributes(guest.vm, &attrs(page * PAGE, PAGE, to)).unwrap();
            } else {
                host.fallocate(
                    guest.gmem(),
                    FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                    (page * PAGE) as i64,
                    PAGE as i64,
                )
                .unwrap();
            }
        }
        for worker in workers {
            worker.join().unwrap();
        }
    });
    let kvm = guest.host.kvm(guest.vm);
    let violations = invariants::check(std::slice::from_ref(&kvm), &[guest.host.gmem_file(guest.gmem())]);
    assert!(violations.is_empty(), "{violations:#?}");
    let warnings = guest.host.machine().warnings.snapshot();
    assert!(warnings.is_empty(), "{warnings:#?}");
    guest.host.check("the stress run");
}
