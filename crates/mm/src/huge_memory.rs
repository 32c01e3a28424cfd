//! Transparent huge pages for anonymous memory (`mm/huge_memory.c`, the THP half of
//! `mm/memory.c` and `mm/madvise.c`), as this project's machines run them: `enabled=madvise`,
//! `defrag=madvise`, `use_zero_page=1`.
//!
//! * `MADV_HUGEPAGE` / `MADV_NOHUGEPAGE` (`hugepage_madvise`) set `VM_HUGEPAGE` (clearing
//!   `VM_NOHUGEPAGE`) or the reverse; a range that covers part of a VMA splits it
//!   (`madvise_update_vma`), and a split at an address that is not PMD-aligned first splits a
//!   huge PMD there (`vma_adjust_trans_huge`). The model does not merge VMAs back.
//! * An anonymous fault in a `VM_HUGEPAGE` VMA whose PMD-aligned 2M range lies inside the VMA,
//!   with no page table under that PMD yet (`pmd_none`), is `do_huge_pmd_anonymous_page`: a write
//!   (or GUP, which the model always faults as a write: it has no shared zero page) allocates a
//!   zeroed order-9 folio and maps it with the PMD; a read maps the huge zero page (reads see
//!   zeroes, nothing is allocated). A write to the huge zero page falls back
//!   (`do_huge_pmd_wp_page` → `__split_huge_pmd`) to 4K pages. A failed order-9 allocation falls
//!   back to the 4K path (`VM_FAULT_FALLBACK`). The 4K path allocates the PTE table, and the
//!   kernel keeps an empty PTE table after its pages are zapped, so a range once faulted at 4K
//!   stays 4K until munmap frees the table (the model frees a table when no VMA overlaps its 2M
//!   range any more; khugepaged and `CONFIG_PT_RECLAIM` are not modelled).
//! * A zap (MADV_DONTNEED, munmap) that covers a whole huge PMD clears it and drops the folio's
//!   mapping reference (`zap_huge_pmd`); one that covers part of it first splits the PMD
//!   (`__split_huge_pmd`, inside its own `MMU_NOTIFY_CLEAR` invalidation of the whole 2M range):
//!   every subpage becomes PTE-mapped, each PTE holding a folio reference. The now partially
//!   mapped folio goes on the deferred split queue in the kernel and is split under memory
//!   pressure or by the shrinker; the model splits it at once (`split_folio`, if nothing but its
//!   mappings holds it, as `can_split_folio` requires), so the unmapped subpages are freed right
//!   after the zap. A folio pinned at that moment stays whole (the model does not retry).
//!
//! Page tables are the address space's, not a VMA's: the PMD level lives in
//! [`Mm`]'s `pmds` (2M-aligned address → PMD entry); PTE-mapped anonymous pages stay in each VMA.

use crate::errno::KResult;
use crate::folio::Folio;
use crate::mmu_notifier::MmuNotifyEvent;
use crate::types::{Pfn, PAGE_SHIFT};
use crate::vma::{Mm, Vma, VM_HUGEPAGE, VM_NOHUGEPAGE};
use gmem_sync::Arc;
use std::collections::BTreeMap;

/// `HPAGE_PMD_ORDER`.
pub const HPAGE_PMD_ORDER: u8 = 9;
/// `HPAGE_PMD_NR`.
pub const HPAGE_PMD_NR: u64 = 1 << HPAGE_PMD_ORDER;
/// `HPAGE_PMD_SIZE`.
pub const HPAGE_PMD_SIZE: u64 = HPAGE_PMD_NR << PAGE_SHIFT;
/// `HPAGE_PMD_MASK`.
pub const HPAGE_PMD_MASK: u64 = !(HPAGE_PMD_SIZE - 1);

/// One PMD entry of an address space (`pmd_none` is its absence).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pmd {
    /// A PTE table: the range is mapped (or was) with 4K pages.
    Table,
    /// A PMD-mapped anonymous THP, by its head frame; the PMD holds one folio reference.
    Huge(Pfn),
    /// The huge zero page, mapped read-only by a read fault.
    HugeZero,
}

impl Mm {
    /// `thp_vma_allowable_order(vma, vm_flags, TVA_PAGEFAULT, PMD_ORDER)` with `enabled=madvise`,
    /// plus `thp_vma_suitable_order`: an anonymous VMA with `VM_HUGEPAGE` and not
    /// `VM_NOHUGEPAGE`, whose PMD-aligned range at `haddr` lies inside it.
    #[doc(alias("thp_vma_allowable_order", "thp_vma_suitable_order"))]
    pub(crate) fn thp_allowed(vma: &Vma, haddr: u64) -> bool {
        vma.file.is_none()
            && vma.vm_flags & VM_HUGEPAGE != 0
            && vma.vm_flags & VM_NOHUGEPAGE == 0
            && haddr >= vma.start
            && haddr.checked_add(HPAGE_PMD_SIZE).is_some_and(|end| end <= vma.end)
    }

    /// The anonymous half of `handle_mm_fault` at `addr` of `vma`: the frame mapped there after
    /// the fault, with a folio reference taken while the page table still maps it (as GUP's
    /// `try_grab_folio` under the PTE lock; a CPU access is covered the same way by its TLB
    /// entry until the zap's flush), which the caller puts; or `None` when a read maps a zero
    /// page (the caller reads zeroes). ENOMEM when a 4K page cannot be allocated either.
    #[doc(alias("__pte_alloc", "do_anonymous_page", "do_huge_pmd_anonymous_page", "do_huge_pmd_wp_page"))]
    pub(crate) fn anon_fault(&self, vma: &Vma, addr: u64, write: bool) -> KResult<Option<Pfn>> {
        let haddr = addr & HPAGE_PMD_MASK;
        let subpage = (addr - haddr) >> PAGE_SHIFT;
        let mem = &self.machine.mem;
        // A THP allocated and zeroed outside the PMD lock (vma_alloc_anon_folio_pmd runs
        // folio_zero_user before pmd_lock), installed only if the PMD is still none.
        let mut prepared: Option<Folio<'_>> = None;
        loop {
            let mut pmds = self.pmds.lock();
            match pmds.get(&haddr).copied() {
                Some(Pmd::Huge(head)) => {
                    Folio::from_pfn(mem, head).get();
                    drop(pmds);
                    if let Some(folio) = prepared {
                        folio.put(); // another fault mapped the PMD first
                    }
                    return Ok(Some(head.offset(subpage)));
                }
                Some(Pmd::HugeZero) if !write => return Ok(None),
                Some(Pmd::HugeZero) => {
                    // do_huge_pmd_wp_page on the huge zero page: fall back to PTEs.
                    drop(pmds);
                    self.split_huge_pmd(vma, haddr);
                    continue;
                }
                Some(Pmd::Table) => {}
                None if Self::thp_allowed(vma, haddr) => {
                    if !write {
                        // do_huge_pmd_anonymous_page, read: the huge zero page.
                        pmds.insert(haddr, Pmd::HugeZero);
                        return Ok(None);
                    }
                    if let Some(folio) = prepared.take() {
                        // map_anon_folio_pmd: the PMD's reference, plus the caller's.
                        folio.get();
                        pmds.insert(haddr, Pmd::Huge(folio.pfn()));
                        return Ok(Some(folio.pfn().offset(subpage)));
                    }
                    drop(pmds);
                    if let Ok(folio) = Folio::alloc(mem, HPAGE_PMD_ORDER) {
                        for i in 0..folio.nr_pages() {
                            folio.clear_page(i);
                        }
                        prepared = Some(folio);
                        continue;
                    }
                    // VM_FAULT_FALLBACK: the 4K path below.
                    pmds = self.pmds.lock();
                    if pmds.contains_key(&haddr) {
                        continue;
                    }
                }
                None => {}
            }
            // __pte_alloc: the PTE table stays until munmap frees it.
            pmds.entry(haddr).or_insert(Pmd::Table);
            break;
        }
        if let Some(folio) = prepared {
            folio.put();
        }
        let page = (addr - vma.start) >> PAGE_SHIFT;
        for attempt in 0.. {
            let mut anon = vma.anon.lock();
            let pfn = match anon.get(&page) {
                Some(&pfn) => pfn,
                None if !write => return Ok(None),
                None => {
                    let folio = Folio::alloc(mem, 0)?;
                    folio.clear_page(0);
                    anon.insert(page, folio.pfn());
                    folio.pfn()
                }
            };
            if Self::try_grab(mem, pfn) {
                return Ok(Some(pfn));
            }
            // The PTE maps a subpage of a THP being split (its references are frozen): wait
            // for the split to finish and look again, as GUP retries a failed try_grab_folio.
            drop(anon);
            gmem_sync::thread::backoff(attempt);
        }
        unreachable!("the retry loop only ends by returning")
    }

    /// `try_grab_folio` on the folio of `pfn`: a reference unless the folio's references are
    /// frozen by a split (`folio_ref_freeze`), and only if `pfn` still belongs to that folio
    /// afterwards (a split that finished in between made it a folio of its own).
    fn try_grab(mem: &crate::page::PhysMem, pfn: Pfn) -> bool {
        let folio = Folio::from_pfn(mem, pfn);
        if !folio.try_get() {
            return false;
        }
        if Folio::from_pfn(mem, pfn).pfn() != folio.pfn() {
            folio.put();
            return false;
        }
        true
    }

    /// `__split_huge_pmd(vma, pmd, haddr)`: inside an `MMU_NOTIFY_CLEAR` invalidation of the
    /// whole 2M range, a huge PMD becomes a PTE table mapping each subpage (each PTE holding a
    /// folio reference), and the huge zero page becomes zero-page PTEs. Returns the head of a
    /// folio that was PMD-mapped. Nothing happens (and nothing is notified) without a huge PMD.
    #[doc(alias = "__split_huge_pmd")]
    pub(crate) fn split_huge_pmd(&self, vma: &Vma, haddr: u64) -> Option<Pfn> {
        if !matches!(self.pmds.lock().get(&haddr), Some(Pmd::Huge(_) | Pmd::HugeZero)) {
            return None;
        }
        let range = self.notify_start(haddr, haddr + HPAGE_PMD_SIZE, MmuNotifyEvent::Clear);
        let mut pmds = self.pmds.lock();
        let head = match pmds.get(&haddr).copied() {
            Some(Pmd::Huge(head)) => {
                // __split_huge_pmd_locked: the PMD's reference becomes the first PTE's.
                Folio::from_pfn(&self.machine.mem, head).ref_add(HPAGE_PMD_NR as i32 - 1);
                let first = (haddr - vma.start) >> PAGE_SHIFT;
                let mut anon = vma.anon.lock();
                for i in 0..HPAGE_PMD_NR {
                    anon.insert(first + i, head.offset(i));
                }
                pmds.insert(haddr, Pmd::Table);
                Some(head)
            }
            Some(Pmd::HugeZero) => {
                pmds.insert(haddr, Pmd::Table);
                None
            }
            _ => None,
        };
        drop(pmds);
        self.notify_end(&range);
        head
    }

    /// `vma_adjust_trans_huge` / `split_huge_pmd_address`: before a VMA is split at `addr`, a
    /// huge PMD straddling `addr` is split. Returns the head of a folio that was PMD-mapped.
    #[doc(alias = "vma_adjust_trans_huge")]
    pub(crate) fn split_huge_pmd_address(&self, vma: &Vma, addr: u64) -> Option<Pfn> {
        if addr & !HPAGE_PMD_MASK == 0 || addr <= vma.start || addr >= vma.end {
            return None;
        }
        self.split_huge_pmd(vma, addr & HPAGE_PMD_MASK)
    }

    /// The huge half of `zap_pmd_range` over `[start, end)` of `vma` (inside the caller's
    /// invalidation): a huge PMD wholly inside is cleared and its folio reference dropped
    /// (`zap_huge_pmd`); one partly inside is split. Returns the heads of folios whose PMD was
    /// split, for [`Mm::deferred_split_folio`] once their PTEs in the range are zapped.
    #[doc(alias("zap_huge_pmd", "zap_pmd_range"))]
    pub(crate) fn zap_huge_pmds(&self, vma: &Vma, start: u64, end: u64) -> Vec<Pfn> {
        let huge: Vec<(u64, Pmd)> = self
            .pmds
            .lock()
            .range(start & HPAGE_PMD_MASK..end)
            .filter(|(_, pmd)| matches!(pmd, Pmd::Huge(_) | Pmd::HugeZero))
            .map(|(&haddr, &pmd)| (haddr, pmd))
            .collect();
        let mut split = Vec::new();
        for (haddr, pmd) in huge {
            if start <= haddr && haddr + HPAGE_PMD_SIZE <= end {
                // zap_huge_pmd re-checks the entry under the PMD lock: a fault may have split
                // the huge zero page into a PTE table meanwhile.
                let mut pmds = self.pmds.lock();
                if pmds.get(&haddr) != Some(&pmd) {
                    continue;
                }
                pmds.remove(&haddr);
                drop(pmds);
                if let Pmd::Huge(head) = pmd {
                    Folio::from_pfn(&self.machine.mem, head).put();
                }
            } else if let Some(head) = self.split_huge_pmd(vma, haddr) {
                split.push(head);
            }
        }
        split
    }

    /// The deferred split of a partially unmapped THP, done at once: if the folio at `head` is
    /// still large and nothing but its PTEs holds it (`can_split_folio`), it is split into order-0
    /// folios (`split_folio`); subpages still mapped keep their PTE's reference, the others are
    /// freed. A folio no PTE maps any more was freed by the zap already.
    pub(crate) fn deferred_split_folio(&self, head: Pfn) {
        let vmas: Vec<Arc<Vma>> = self.vmas();
        let mut mapped = vec![false; HPAGE_PMD_NR as usize];
        let mut count = 0i32;
        for vma in &vmas {
            let anon = vma.anon.lock();
            for pfn in anon.values() {
                if pfn.0 >= head.0 && pfn.0 < head.0 + HPAGE_PMD_NR {
                    mapped[(pfn.0 - head.0) as usize] = true;
                    count += 1;
                }
            }
        }
        if count == 0 {
            return;
        }
        let folio = Folio::from_pfn(&self.machine.mem, head);
        if folio.pfn() != head || folio.order() != HPAGE_PMD_ORDER || folio.refcount() != count {
            return;
        }
        // A reference taken since the count (a racing GUP) makes the split fail; the folio then
        // stays whole, as a pinned THP does (the model does not retry the deferred split).
        let _ = self.machine.mem.split_folio(head, &mapped);
    }

    /// `free_pgtables` after munmap: drops the PMD entries (page tables) whose 2M range no VMA
    /// of `vmas` (the tree, `mmap_lock` held for write) overlaps any more.
    pub(crate) fn free_pgtables(&self, vmas: &BTreeMap<u64, Arc<Vma>>) {
        self.pmds.lock().retain(|&haddr, _| {
            let end = haddr + HPAGE_PMD_SIZE;
            vmas.range(..end).next_back().is_some_and(|(_, vma)| vma.end > haddr)
        });
    }

    /// The order of the host mapping at `addr` (see [`Mm::host_mapping_order`]).
    pub(crate) fn pmd_mapping_order(&self, addr: u64) -> u8 {
        match self.pmds.lock().get(&(addr & HPAGE_PMD_MASK)) {
            Some(Pmd::Huge(_) | Pmd::HugeZero) => HPAGE_PMD_ORDER,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{Machine, MachineConfig};
    use crate::vma::{VM_READ, VM_WRITE};

    #[test]
    fn an_order_9_folio_is_aligned_and_its_tails_resolve_to_the_head() {
        let machine = Machine::new(MachineConfig::tiny(2048));
        let mem = &machine.mem;
        let small = Folio::alloc(mem, 0).unwrap();
        let huge = Folio::alloc(mem, HPAGE_PMD_ORDER).unwrap();
        assert_eq!(huge.pfn().0 % HPAGE_PMD_NR, 0, "naturally aligned");
        assert_eq!(mem.allocated_pages(), 1 + HPAGE_PMD_NR);
        assert_eq!(Folio::from_pfn(mem, huge.pfn().offset(77)), huge, "page_folio of a tail");
        assert!(mem.is_allocated(huge.pfn().offset(511)));
        let generation = mem.generation(huge.pfn().offset(300));
        huge.put();
        assert_eq!(mem.allocated_pages(), 1);
        assert_ne!(mem.generation(huge.pfn().offset(300)), generation, "every frame's generation moved");
        // The freed run is reused for the next large folio (fresh frames run out at 2048).
        let again = Folio::alloc(mem, HPAGE_PMD_ORDER).unwrap();
        let third = Folio::alloc(mem, HPAGE_PMD_ORDER).unwrap();
        let fourth = Folio::alloc(mem, HPAGE_PMD_ORDER).unwrap();
        assert!([again, third, fourth].iter().any(|f| f.pfn() == huge.pfn()), "the freed run comes back");
        assert!(Folio::alloc(mem, HPAGE_PMD_ORDER).is_err(), "no compaction");
        small.put();
    }

    #[test]
    fn split_folio_frees_exactly_the_unmapped_subpages() {
        let machine = Machine::new(MachineConfig::tiny(1024));
        let mem = &machine.mem;
        let huge = Folio::alloc(mem, HPAGE_PMD_ORDER).unwrap();
        let mapped: Vec<bool> = (0..HPAGE_PMD_NR).map(|i| i % 3 == 0).collect();
        let count = mapped.iter().filter(|&&m| m).count() as i32;
        huge.ref_add(count - 1);
        assert!(mem.split_folio(huge.pfn(), &mapped), "nothing else holds the folio");
        assert_eq!(mem.allocated_pages(), count as u64);
        for i in 0..HPAGE_PMD_NR {
            let pfn = huge.pfn().offset(i);
            assert_eq!(mem.is_allocated(pfn), mapped[i as usize], "subpage {i}");
            if mapped[i as usize] {
                let folio = Folio::from_pfn(mem, pfn);
                assert_eq!((folio.pfn(), folio.order(), folio.refcount()), (pfn, 0, 1));
                folio.put();
            }
        }
        assert_eq!(mem.allocated_pages(), 0);
    }

    #[test]
    fn thp_eligibility_needs_vm_hugepage_and_the_whole_pmd_range() {
        let vma = |start, end, flags| Vma::new(start, end, 0, VM_READ | VM_WRITE | flags, None);
        let h = HPAGE_PMD_SIZE;
        assert!(Mm::thp_allowed(&vma(h, 3 * h, VM_HUGEPAGE), 2 * h));
        assert!(!Mm::thp_allowed(&vma(h, 3 * h, 0), 2 * h), "enabled=madvise");
        assert!(!Mm::thp_allowed(&vma(h, 3 * h, VM_HUGEPAGE | VM_NOHUGEPAGE), 2 * h));
        assert!(!Mm::thp_allowed(&vma(h + 4096, 3 * h, VM_HUGEPAGE), h), "starts below the VMA");
        assert!(!Mm::thp_allowed(&vma(h, 3 * h - 4096, VM_HUGEPAGE), 2 * h), "ends past the VMA");
    }
}
