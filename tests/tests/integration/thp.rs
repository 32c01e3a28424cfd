//! Transparent huge pages for anonymous memory (`enabled=madvise`): when a fault maps a PMD,
//! what `Mm::host_mapping_order` reports, how a partial munmap or MADV_DONTNEED splits the PMD
//! and the folio and frees exactly the unmapped subpages, and which MMU notifier ranges that
//! raises. Calls go through [`CheckedHost`] (every invariant, no WARN, no lockdep report).

use gmem_kvm::KernelProfile;
use gmem_mm::huge_memory::HPAGE_PMD_SIZE as HUGE;
use gmem_mm::mmu_notifier::{MmuNotifierOps, MmuNotifierRange, MmuNotifyEvent};
use gmem_mm::vfs::{MADV_DONTNEED, MADV_HUGEPAGE, MADV_NOHUGEPAGE};
use gmem_mm::Errno;
use gmem_sync::{Arc, Mutex};
use gmem_tests::*;

fn host() -> CheckedHost {
    CheckedHost::new(KernelProfile::v6_18())
}

fn allocated(host: &CheckedHost) -> u64 {
    host.machine().mem.allocated_pages()
}

fn order(host: &CheckedHost, addr: u64) -> u8 {
    host.process().mm.host_mapping_order(addr)
}

/// A 2M-aligned anonymous mapping of `len` with MADV_HUGEPAGE.
fn huge_mapping(host: &CheckedHost, len: u64) -> u64 {
    let addr = host.mmap_anonymous(len).unwrap();
    assert_eq!(addr % HUGE, 0, "a 2M-multiple anonymous mapping is THP-aligned");
    host.madvise(addr, len, MADV_HUGEPAGE).unwrap();
    addr
}

#[test]
fn anonymous_mappings_of_2m_multiples_are_2m_aligned_and_others_are_not() {
    let host = host();
    let small = host.mmap_anonymous(8 * PAGE).unwrap();
    let big = host.mmap_anonymous(2 * HUGE).unwrap();
    assert_eq!(big % HUGE, 0);
    // __thp_get_unmapped_area asked for len + 2M below `small`; top-down, the padded area ends
    // at `small`, and the aligned start is the first 2M boundary in it.
    assert!(big + 2 * HUGE <= small && small - (big + 2 * HUGE) < HUGE + PAGE, "{big:#x} {small:#x}");
    let odd = host.mmap_anonymous(HUGE + PAGE).unwrap();
    assert_eq!(odd + HUGE + PAGE, big, "not a 2M multiple: the plain top-down search");
}

#[test]
fn a_write_fault_maps_a_thp_only_in_a_vm_hugepage_range_fully_inside_the_vma() {
    let host = host();
    // Without MADV_HUGEPAGE (enabled=madvise): 4K.
    let plain = host.mmap_anonymous(HUGE).unwrap();
    let before = allocated(&host);
    host.store(plain + 5 * PAGE, &[1]).unwrap();
    assert_eq!(allocated(&host), before + 1);
    assert_eq!(order(&host, plain + 5 * PAGE), 0);

    // With it: one zeroed order-9 folio, mapped by the PMD.
    let addr = huge_mapping(&host, 2 * HUGE);
    let before = allocated(&host);
    host.store(addr + 7 * PAGE + 3, &[0xab]).unwrap();
    assert_eq!(allocated(&host), before + 512);
    assert_eq!(order(&host, addr), 9);
    assert_eq!(order(&host, addr + HUGE - 1), 9);
    assert_eq!(order(&host, addr + HUGE), 0, "the next PMD is still empty");
    assert_eq!(host.load(addr + 7 * PAGE, 5).unwrap(), vec![0, 0, 0, 0xab, 0]);
    assert_eq!(host.load(addr + 300 * PAGE, 2).unwrap(), vec![0, 0], "zeroed");
    host.store(addr + 511 * PAGE, &[2]).unwrap();
    assert_eq!(allocated(&host), before + 512, "the same folio");

    // A read fault maps the huge zero page: order 9, nothing allocated; a write then falls back
    // to 4K pages (do_huge_pmd_wp_page splits the huge zero PMD).
    assert_eq!(host.load(addr + HUGE + PAGE, 1).unwrap(), vec![0]);
    assert_eq!(order(&host, addr + HUGE), 9);
    assert_eq!(allocated(&host), before + 512);
    host.store(addr + HUGE + PAGE, &[3]).unwrap();
    assert_eq!(allocated(&host), before + 513);
    assert_eq!(order(&host, addr + HUGE), 0);
    assert_eq!(host.load(addr + HUGE + 2 * PAGE, 1).unwrap(), vec![0]);

    // A range once faulted at 4K keeps its PTE table: MADV_HUGEPAGE afterwards does not help.
    host.madvise(plain, HUGE, MADV_HUGEPAGE).unwrap();
    let before = allocated(&host);
    host.store(plain + 9 * PAGE, &[1]).unwrap();
    assert_eq!(allocated(&host), before + 1);
    assert_eq!(order(&host, plain), 0);

    // MADV_HUGEPAGE on part of the 2M range: the VMA part does not cover it, 4K.
    let part = host.mmap_anonymous(HUGE).unwrap();
    host.madvise(part, HUGE / 2, MADV_HUGEPAGE).unwrap();
    let before = allocated(&host);
    host.store(part, &[1]).unwrap();
    assert_eq!(allocated(&host), before + 1);
    assert_eq!(order(&host, part), 0);

    // MADV_NOHUGEPAGE wins back.
    let no = huge_mapping(&host, HUGE);
    host.madvise(no, HUGE, MADV_NOHUGEPAGE).unwrap();
    let before = allocated(&host);
    host.store(no, &[1]).unwrap();
    assert_eq!(allocated(&host), before + 1);
    assert_eq!(order(&host, no), 0);
}

#[test]
fn madvise_hugepage_checks_as_the_kernel() {
    let host = host();
    let addr = host.mmap_anonymous(HUGE).unwrap();
    assert_errno(host.madvise(addr + 1, PAGE, MADV_HUGEPAGE), Errno::EINVAL, "unaligned start");
    assert_eq!(host.madvise(addr, 0, MADV_HUGEPAGE), Ok(()), "empty range");
    host.munmap(addr + HUGE / 2, PAGE).unwrap();
    // A hole: ENOMEM, but the mapped parts got the flag.
    assert_errno(host.madvise(addr, HUGE, MADV_NOHUGEPAGE), Errno::ENOMEM, "hole");
    let vma = host.process().mm.find(addr).unwrap();
    assert_ne!(vma.vm_flags & gmem_mm::vma::VM_NOHUGEPAGE, 0);
}

#[test]
fn a_partial_munmap_splits_the_thp_and_frees_exactly_the_unmapped_pages() {
    let host = host();
    let addr = huge_mapping(&host, 2 * HUGE);
    let baseline = allocated(&host);
    for (value, page) in [0, 255, 256, 511, 512 + 3].into_iter().enumerate() {
        host.store(addr + page * PAGE, &[value as u8 + 1]).unwrap();
    }
    assert_eq!(allocated(&host), baseline + 1024);
    // munmap one page inside the first THP.
    host.munmap(addr + 256 * PAGE, PAGE).unwrap();
    assert_eq!(allocated(&host), baseline + 1023, "only the unmapped subpage was freed");
    assert_eq!(order(&host, addr), 0, "PTE-mapped now");
    assert_eq!(order(&host, addr + HUGE), 9, "the other THP is untouched");
    assert_eq!(host.load(addr, 1).unwrap(), vec![1], "the data stays in the subpages");
    assert_eq!(host.load(addr + 255 * PAGE, 1).unwrap(), vec![2]);
    assert_eq!(host.load(addr + 511 * PAGE, 1).unwrap(), vec![4]);
    assert_eq!(host.load(addr + 300 * PAGE, 1).unwrap(), vec![0]);
    assert_eq!(allocated(&host), baseline + 1023, "reads of mapped subpages allocate nothing");
    // MADV_DONTNEED of two pages of the second THP.
    host.madvise(addr + HUGE + 2 * PAGE, 2 * PAGE, MADV_DONTNEED).unwrap();
    assert_eq!(allocated(&host), baseline + 1021);
    assert_eq!(order(&host, addr + HUGE), 0);
    assert_eq!(host.load(addr + HUGE + 3 * PAGE, 1).unwrap(), vec![0], "zapped: reads zero again");
    assert_eq!(allocated(&host), baseline + 1021, "a read of a zapped page maps the zero page");
    assert_eq!(host.load(addr + HUGE + 4 * PAGE, 1).unwrap(), vec![0]);
    // The rest goes with the mapping.
    host.munmap(addr, 2 * HUGE).unwrap();
    assert_eq!(allocated(&host), baseline);

    // A whole THP zapped by MADV_DONTNEED goes at once, without a split.
    let addr = huge_mapping(&host, HUGE);
    let baseline = allocated(&host);
    host.store(addr, &[1]).unwrap();
    host.madvise(addr, HUGE, MADV_DONTNEED).unwrap();
    assert_eq!(allocated(&host), baseline);
    assert_eq!(order(&host, addr), 0, "pmd_none again");
    // ...and the next fault maps a THP again.
    host.store(addr, &[1]).unwrap();
    assert_eq!(allocated(&host), baseline + 512);
    assert_eq!(order(&host, addr), 9);
}

/// Records every notifier call as `(start?, range)`.
#[derive(Debug)]
struct Recorder {
    calls: Mutex<Vec<(bool, MmuNotifierRange)>>,
}

static RECORDER_LOCK: gmem_sync::LockClass = gmem_sync::LockClass::new("thp test recorder");

impl Recorder {
    fn new() -> Arc<Recorder> {
        Arc::new(Recorder { calls: Mutex::new(&RECORDER_LOCK, Vec::new()) })
    }

    fn take(&self) -> Vec<(bool, MmuNotifierRange)> {
        std::mem::take(&mut *self.calls.lock())
    }
}

impl MmuNotifierOps for Recorder {
    fn invalidate_range_start(&self, range: &MmuNotifierRange) {
        self.calls.lock().push((true, *range));
    }

    fn invalidate_range_end(&self, range: &MmuNotifierRange) {
        self.calls.lock().push((false, *range));
    }
}

fn range(start: u64, end: u64, event: MmuNotifyEvent) -> MmuNotifierRange {
    MmuNotifierRange { start, end, event }
}

#[test]
fn splitting_a_huge_pmd_invalidates_the_whole_2m_range() {
    use MmuNotifyEvent::{Clear, Unmap};
    let host = host();
    let recorder = Recorder::new();
    let handle = host.process().mm.mmu_notifier_register(recorder.clone());
    let addr = huge_mapping(&host, 2 * HUGE);
    host.store(addr, &[1]).unwrap();
    host.store(addr + HUGE, &[1]).unwrap();
    recorder.take();

    // A partial MADV_DONTNEED: its own range, with the PMD split (whole 2M) nested inside.
    let (start, end) = (addr + 4 * PAGE, addr + 6 * PAGE);
    host.madvise(start, 2 * PAGE, MADV_DONTNEED).unwrap();
    let outer = range(start, end, Clear);
    let split = range(addr, addr + HUGE, Clear);
    assert_eq!(recorder.take(), vec![(true, outer), (true, split), (false, split), (false, outer)]);

    // A partial munmap of the second THP: the split at the VMA split point comes first, then
    // the unmap of the range.
    let (start, end) = (addr + HUGE + 8 * PAGE, addr + 2 * HUGE);
    host.munmap(start, end - start).unwrap();
    let split = range(addr + HUGE, addr + 2 * HUGE, Clear);
    let unmap = range(start, end, Unmap);
    assert_eq!(recorder.take(), vec![(true, split), (false, split), (true, unmap), (false, unmap)]);

    // A whole THP: one invalidation, no split.
    let other = huge_mapping(&host, HUGE);
    host.store(other, &[1]).unwrap();
    recorder.take();
    host.madvise(other, HUGE, MADV_DONTNEED).unwrap();
    let whole = range(other, other + HUGE, Clear);
    assert_eq!(recorder.take(), vec![(true, whole), (false, whole)]);
    handle.unregister();
}

#[test]
fn kvm_faults_a_thp_in_through_gup_and_a_split_zaps_the_whole_2m_of_sptes() {
    let host = host();
    let vm = host.create_vm(DEFAULT_VM).unwrap();
    let uaddr = huge_mapping(&host, HUGE);
    let gpa = 0x4000_0000;
    host.set_user_memory_region2(vm, &region(0, 0, gpa, HUGE, uaddr, 0, 0)).unwrap();
    let vcpu = host.create_vcpu(vm, 0).unwrap();
    let before = allocated(&host);
    host.guest_store(vcpu, gpa + 3 * PAGE, &[0x33], None).unwrap();
    host.guest_store(vcpu, gpa + 100 * PAGE, &[0x64], None).unwrap();
    assert!(allocated(&host) >= before + 512, "GUP faulted a THP in");
    assert_eq!(order(&host, uaddr), 9);
    assert_eq!(host.load(uaddr + 3 * PAGE, 1).unwrap(), vec![0x33]);
    let gfn = gpa >> 12;
    assert!(host.spte_present(vm, gfn + 100));
    // MADV_DONTNEED of page 3 splits the PMD: the split's invalidation covers the whole 2M, so
    // KVM drops gfn+100's SPTE as well; the data of page 100 survives in its subpage.
    host.madvise(uaddr + 3 * PAGE, PAGE, MADV_DONTNEED).unwrap();
    assert!(!host.spte_present(vm, gfn + 3));
    assert!(!host.spte_present(vm, gfn + 100));
    assert_eq!(order(&host, uaddr), 0);
    assert_eq!(host.guest_load(vcpu, gpa + 100 * PAGE, 1, None).unwrap(), vec![0x64]);
    assert_eq!(host.guest_load(vcpu, gpa + 3 * PAGE, 1, None).unwrap(), vec![0]);
}
