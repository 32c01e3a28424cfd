//! The reverse map of file mappings (`mapping->i_mmap`): truncating, punching or memory-failing a
//! file through its descriptor unmaps the page from every address space that maps it, inside an
//! `MMU_NOTIFY_CLEAR` invalidation, so KVM drops the shared SPTEs it installed through the HVA
//! before the frame is freed. Every call is checked by [`CheckedHost`] (INV-NO-STALE-PFN among the
//! invariants, no WARN, no lockdep report).
//!
//! The setup is the v6.18 one where this matters: an `MMAP | INIT_SHARED` guest_memfd mapped into
//! the VMM and passed as the `userspace_addr` of a plain memslot, so a guest access resolves the
//! pfn through `get_user_pages` on the mapping (a present PTE) and installs a shared SPTE; the
//! guest_memfd has no binding, so its own invalidation (`kvm_gmem_invalidate_begin`) reaches no
//! VM and only the reverse map can tell KVM.

use gmem_kvm::invariants::INV_NO_STALE_PFN;
use gmem_kvm::mmu::{AttrFilter, KvmGfnRange, MmuEvent};
use gmem_kvm::vcpu::RunError;
use gmem_kvm::{Gfn, KernelProfile};
use gmem_mm::filemap::MfResult;
use gmem_mm::vfs::{FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, MADV_DONTNEED, MADV_HWPOISON, MAP_SHARED};
use gmem_mm::vfs::{PROT_READ, PROT_WRITE};
use gmem_mm::vma::AccessSignal;
use gmem_mm::Errno;
use gmem_tests::*;

const PAGES: u64 = 8;
const GPA: u64 = 0x10_0000;
const GFN: u64 = GPA >> 12;
const PUNCH: i32 = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;

/// A DEFAULT VM whose memslot 0 (plain, 8 pages at [`GPA`]) is backed by a shared mapping of an
/// `MMAP | INIT_SHARED` guest_memfd, with one vCPU.
fn setup(host: CheckedHost) -> Guest {
    GuestBuilder::on(host).vm_type(DEFAULT_VM).memory(Memory::GmemMapping).pages(PAGES).gpa(GPA).build()
}

fn setup_v6_18() -> Guest {
    setup(CheckedHost::new(KernelProfile::v6_18()))
}

/// The present file PTE of the mapping at page `page`.
fn pte(s: &Guest, page: u64) -> Option<gmem_mm::Pfn> {
    let addr = s.uaddr() + page * PAGE;
    s.host.process().mm.find(addr).and_then(|vma| vma.file_pte(addr))
}

/// The number of mappings of the guest_memfd (its `i_mmap` tree).
fn i_mmap_len(s: &Guest) -> usize {
    s.host.gmem_file(s.gmem()).inode().mapping().i_mmap_len()
}

#[test]
fn a_guest_access_through_the_mapping_makes_the_pte_present_and_a_shared_spte() {
    let s = setup_v6_18();
    assert_eq!(i_mmap_len(&s), 1, "mmap linked the VMA into i_mmap");
    assert_eq!(pte(&s, 1), None);
    s.host.guest_store(s.vcpu(), GPA + PAGE, &[0x42], None).unwrap();
    let pfn = s.spte_pfn(GFN + 1).expect("a shared SPTE through the HVA");
    assert_eq!(pte(&s, 1), Some(pfn), "GUP faulted the page in: the PTE maps the SPTE's frame");
    assert_eq!(s.host.load(s.uaddr() + PAGE, 1).unwrap(), vec![0x42]);
}

#[test]
fn punching_the_file_through_its_descriptor_zaps_the_shared_spte() {
    let s = setup_v6_18();
    s.host.guest_store(s.vcpu(), GPA + PAGE, &[0x11], None).unwrap();
    s.host.guest_store(s.vcpu(), GPA + 3 * PAGE, &[0x33], None).unwrap();
    let old = s.spte_pfn(GFN + 1).unwrap();
    let generation = s.host.machine().mem.generation(old);
    let seq = s.invalidate_seq();
    // CheckedHost checks INV-NO-STALE-PFN right after the punch freed the frame.
    s.host.fallocate(s.gmem(), PUNCH, PAGE as i64, PAGE as i64).unwrap();
    assert_eq!(s.spte_pfn(GFN + 1), None, "the SPTE of the punched page is gone");
    assert!(s.spte_pfn(GFN + 3).is_some(), "the other SPTE stays");
    assert_eq!(pte(&s, 1), None, "the PTE was zapped");
    assert!(pte(&s, 3).is_some());
    assert_eq!(s.invalidate_seq(), seq + 1, "KVM saw one invalidation (one mapped folio, one VMA)");
    s.assert_balanced();
    assert_ne!(s.host.machine().mem.generation(old), generation, "the punch freed the frame");
    // The guest faults a fresh, zeroed page in.
    assert_eq!(s.host.guest_load(s.vcpu(), GPA + PAGE, 1, None).unwrap(), vec![0]);
    assert_eq!(s.host.guest_load(s.vcpu(), GPA + 3 * PAGE, 1, None).unwrap(), vec![0x33]);
}

#[test]
fn the_invalidation_covers_the_folio_span_in_the_vma_with_the_shared_filter() {
    let s = setup(CheckedHost::with_recording_mmu(KernelProfile::v6_18()));
    // The recording MMU installs nothing; a host access makes the PTE present.
    s.host.store(s.uaddr() + 2 * PAGE, &[7]).unwrap();
    s.host.take_mmu_events();
    s.host.fallocate(s.gmem(), PUNCH, 0, (PAGES * PAGE) as i64).unwrap();
    let unmap = KvmGfnRange {
        start: Gfn(GFN + 2),
        end: Gfn(GFN + 3),
        slot_id: 0,
        attr_filter: AttrFilter::Shared,
        may_block: true,
    };
    // guest_memfd's own invalidation reaches no VM (no binding): only the reverse map's.
    assert_eq!(s.host.take_mmu_events(), vec![MmuEvent::Unmap(unmap), MmuEvent::FlushRemoteTlbs]);
}

#[test]
fn a_folio_without_a_present_pte_is_truncated_without_notifying() {
    // truncate_cleanup_folio calls unmap_mapping_folio only for a mapped folio: a page that is in
    // the page cache but was never faulted through the mapping notifies nobody.
    let s = setup(CheckedHost::with_recording_mmu(KernelProfile::v6_18()));
    s.host.fallocate(s.gmem(), FALLOC_FL_KEEP_SIZE, 0, (PAGES * PAGE) as i64).unwrap();
    s.host.take_mmu_events();
    let seq = s.invalidate_seq();
    s.host.fallocate(s.gmem(), PUNCH, 0, (PAGES * PAGE) as i64).unwrap();
    assert_eq!(s.host.take_mmu_events(), vec![]);
    assert_eq!(s.invalidate_seq(), seq);
    // After MADV_DONTNEED the PTE is gone too: again nothing to notify at the punch.
    s.host.store(s.uaddr(), &[1]).unwrap();
    s.host.madvise(s.uaddr(), PAGE, MADV_DONTNEED).unwrap();
    assert_eq!(pte(&s, 0), None);
    s.host.take_mmu_events();
    s.host.fallocate(s.gmem(), PUNCH, 0, PAGE as i64).unwrap();
    assert_eq!(s.host.take_mmu_events(), vec![]);
}

#[test]
fn every_mapping_vma_is_unmapped_and_munmap_unlinks() {
    let s = setup_v6_18();
    // A second mapping of the same file, and a partial munmap splitting the first one.
    let other = s.host.mmap(s.gmem(), PAGES * PAGE, 0, PROT_READ | PROT_WRITE, MAP_SHARED).unwrap();
    assert_eq!(i_mmap_len(&s), 2);
    s.host.store(other + 5 * PAGE, &[5]).unwrap();
    s.host.guest_store(s.vcpu(), GPA + 5 * PAGE, &[6], None).unwrap();
    s.host.munmap(s.uaddr() + 7 * PAGE, PAGE).unwrap();
    assert_eq!(i_mmap_len(&s), 2, "the tail left, the head stays linked");
    s.host.munmap(s.uaddr() + 2 * PAGE, PAGE).unwrap();
    assert_eq!(i_mmap_len(&s), 3, "split: both parts are linked");
    let other_vma = s.host.process().mm.find(other).unwrap();
    assert!(other_vma.file_pte(other + 5 * PAGE).is_some());
    assert!(pte(&s, 5).is_some(), "the PTE moved with the split part");
    let seq = s.invalidate_seq();
    s.host.fallocate(s.gmem(), PUNCH, 5 * PAGE as i64, PAGE as i64).unwrap();
    assert_eq!(other_vma.file_pte(other + 5 * PAGE), None, "the other mapping was zapped too");
    assert_eq!(pte(&s, 5), None);
    assert_eq!(s.spte_pfn(GFN + 5), None);
    // Two VMAs overlap the index and were notified; only the memslot's one opens an
    // invalidation in KVM.
    assert_eq!(s.invalidate_seq(), seq + 1);
    assert_eq!(s.host.load(other + 5 * PAGE, 1).unwrap(), vec![0]);
    s.host.munmap(other, PAGES * PAGE).unwrap();
    s.host.munmap(s.uaddr(), PAGES * PAGE).unwrap();
    assert_eq!(i_mmap_len(&s), 0);
}

#[test]
fn memory_failure_unmaps_the_page_before_error_remove_folio() {
    let s = setup_v6_18();
    s.host.guest_store(s.vcpu(), GPA + 4 * PAGE, &[0x44], None).unwrap();
    s.host.guest_store(s.vcpu(), GPA + 6 * PAGE, &[0x66], None).unwrap();
    let seq = s.invalidate_seq();
    assert_eq!(s.host.inject_memory_failure(s.gmem(), 4 * PAGE).unwrap(), MfResult::Delayed);
    assert_eq!(s.spte_pfn(GFN + 4), None, "hwpoison_user_mappings zapped the shared SPTE");
    assert_eq!(pte(&s, 4), None);
    assert!(s.spte_pfn(GFN + 6).is_some());
    assert_eq!(s.invalidate_seq(), seq + 1);
    s.assert_balanced();
    // The page stays in the file, poisoned: a host access is SIGBUS, and so is the guest's
    // (KVM_PFN_ERR_HWPOISON from GUP).
    assert_eq!(s.host.load(s.uaddr() + 4 * PAGE, 1), Err(AccessSignal::Sigbus));
    assert_eq!(s.host.guest_load(s.vcpu(), GPA + 4 * PAGE, 1, None), Err(RunError::Sigbus));
    // KVM_PRE_FAULT_MEMORY: the SIGBUS is pending when kvm_tdp_map_page retries, so EINTR.
    assert_eq!(s.host.pre_fault_memory(s.vcpu(), GPA + 4 * PAGE, PAGE), Err(Errno::EINTR));
    // MADV_HWPOISON through the mapping takes the same path.
    let seq = s.invalidate_seq();
    s.host.madvise(s.uaddr() + 6 * PAGE, PAGE, MADV_HWPOISON).unwrap();
    assert_eq!(s.spte_pfn(GFN + 6), None);
    assert_eq!(s.invalidate_seq(), seq + 1);
    // Already poisoned: EHWPOISON, nothing unmapped again.
    assert_eq!(s.host.inject_memory_failure(s.gmem(), 4 * PAGE), Err(Errno::EHWPOISON));
    assert_eq!(s.invalidate_seq(), seq + 1);
}

#[test]
fn memory_failure_of_a_page_nobody_maps_notifies_nobody() {
    let s = setup(CheckedHost::with_recording_mmu(KernelProfile::v6_18()));
    s.host.fallocate(s.gmem(), FALLOC_FL_KEEP_SIZE, 0, PAGE as i64).unwrap();
    s.host.take_mmu_events();
    assert_eq!(s.host.inject_memory_failure(s.gmem(), 0).unwrap(), MfResult::Delayed);
    assert_eq!(s.host.take_mmu_events(), vec![]);
}

#[test]
fn negative_control_without_the_unmap_the_punch_leaves_a_stale_spte() {
    let s = setup_v6_18();
    s.host.guest_store(s.vcpu(), GPA + PAGE, &[0x11], None).unwrap();
    s.host.gmem_file(s.gmem()).inode().mapping().skip_truncate_unmap_for_test();
    let seq = s.invalidate_seq();
    s.host.unchecked().fallocate(s.gmem(), PUNCH, PAGE as i64, PAGE as i64).unwrap();
    assert_eq!(s.invalidate_seq(), seq, "nobody told KVM");
    let violations = s.host.violations();
    assert!(
        violations.iter().any(|v| v.invariant == INV_NO_STALE_PFN),
        "INV-NO-STALE-PFN must catch the SPTE left on the freed frame: {violations:?}"
    );
    // Clean up so the host is consistent again: munmap notifies and zaps the stale SPTE.
    s.host.process().munmap(s.uaddr(), PAGES * PAGE).unwrap();
    assert!(s.host.violations().is_empty());
}
