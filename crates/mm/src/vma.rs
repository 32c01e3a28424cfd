//! VMAs, `vm_operations_struct` and host (user) accesses through mappings (`mm/mmap.c`,
//! `mm/memory.c`, `mm/madvise.c`).
//!
//! The model keeps no user page tables: every host load or store through a mapping goes through
//! the VMA's fault handler (or, for anonymous memory, the VMA's own pages). For guest_memfd this
//! is observably the same as the kernel, because its fault handler is the only place that
//! decides what a user access sees, and truncation zaps any PTE anyway.
//!
//! What the model does keep of a file mapping's page tables is whether a PTE is *present*, and
//! for which frame ([`Vma::file_pte`]): a user access or GUP that faults a file page in sets it
//! (`finish_fault`), a zap (`unmap_mapping_range`, `MADV_DONTNEED`, munmap, exit) clears it. That
//! is what `folio_mapped()` decides on, and so whether truncation and memory failure walk the
//! file's reverse map (`mapping->i_mmap`, [`crate::filemap::AddressSpace`]) and notify the
//! address spaces that map the page. A present PTE holds no folio reference in the model (the
//! kernel's does): the page cache's own reference outlives every present PTE, because removal
//! from the page cache zaps them first.

use crate::errno::{Errno, KResult};
use crate::file::FileRef;
use crate::folio::Folio;
use crate::huge_memory::{Pmd, HPAGE_PMD_SIZE};
use crate::machine::Machine;
use crate::mmu_notifier::{
    MmuNotifierHandle, MmuNotifierOps, MmuNotifierRange, MmuNotifierSubscriptions, MmuNotifyEvent,
};
use crate::types::{Pfn, PgOff, PAGE_SHIFT, PAGE_SIZE};
use gmem_sync::atomic::{AtomicBool, Ordering};
use gmem_sync::{Arc, LockClass, Mutex, RwSem};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// `VM_READ`.
pub const VM_READ: u64 = 0x1;
/// `VM_WRITE`.
pub const VM_WRITE: u64 = 0x2;
/// `VM_EXEC`.
pub const VM_EXEC: u64 = 0x4;
/// `VM_SHARED`.
pub const VM_SHARED: u64 = 0x8;
/// `VM_MAYREAD`.
pub const VM_MAYREAD: u64 = 0x10;
/// `VM_MAYWRITE`.
pub const VM_MAYWRITE: u64 = 0x20;
/// `VM_MAYEXEC`.
pub const VM_MAYEXEC: u64 = 0x40;
/// `VM_MAYSHARE`.
pub const VM_MAYSHARE: u64 = 0x80;
/// `VM_LOCKED`: `MAP_LOCKED` (or `mlock`): the pages stay resident, and the madvise advice that
/// would drop them (`MADV_DONTNEED`, `MADV_FREE`, `MADV_REMOVE`, `MADV_COLD`, `MADV_PAGEOUT`,
/// `MADV_GUARD_INSTALL`) is refused with EINVAL.
pub const VM_LOCKED: u64 = 0x2000;
/// `VM_HUGEPAGE`: `MADV_HUGEPAGE` was given.
pub const VM_HUGEPAGE: u64 = 0x2000_0000;
/// `VM_NOHUGEPAGE`: `MADV_NOHUGEPAGE` was given.
pub const VM_NOHUGEPAGE: u64 = 0x4000_0000;

/// `TASK_SIZE` on x86-64 with 4-level paging: the end of user space.
pub const TASK_SIZE: u64 = 0x7fff_ffff_f000;
/// Where top-down mmap placement starts (below the stack).
pub const MMAP_BASE: u64 = 0x7fff_0000_0000;

static MMAP_LOCK: LockClass = LockClass::new("mm->mmap_lock");
static ANON_LOCK: LockClass = LockClass::new("anon_vma->lock");
/// The PMD level of an address space's page tables (`pmd_lock`; one per mm in the model).
static PMD_LOCK: LockClass = LockClass::new("mm->pmd_lock");
/// The page-table lock of a VMA's file PTEs (`pte_lockptr`; one per VMA in the model).
static PTL: LockClass = LockClass::new("mm->page_table_lock");
/// The runner's retired ranges (a leaf).
static RETIRED_LOCK: LockClass = LockClass::new("mm->retired_ranges");
/// The guard markers of a VMA's PTEs (part of its page tables in the kernel; a leaf here).
static GUARD_LOCK: LockClass = LockClass::new("mm->guard_markers");

/// `access_ok(addr, size)` on x86-64.
pub fn access_ok(addr: u64, size: u64) -> bool {
    size <= TASK_SIZE && addr <= TASK_SIZE - size
}

/// Why a fault handler could not provide a page (`VM_FAULT_*` error bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmFaultError {
    /// `VM_FAULT_SIGBUS`.
    Sigbus,
    /// `VM_FAULT_OOM`.
    Oom,
    /// `VM_FAULT_RETRY`.
    Retry,
    /// `VM_FAULT_HWPOISON`.
    Hwpoison,
}

/// `vmf_error(errno)`: the fault code for an errno.
pub fn vmf_error(errno: Errno) -> VmFaultError {
    if errno == Errno::ENOMEM {
        VmFaultError::Oom
    } else {
        VmFaultError::Sigbus
    }
}

/// `struct vm_fault`, the parts fault handlers read.
#[derive(Debug)]
pub struct VmFault<'a> {
    /// The faulting VMA.
    pub vma: &'a Vma,
    /// `vmf->pgoff`: the file page index of the faulting address.
    pub pgoff: PgOff,
    /// Whether the access is a write.
    pub write: bool,
}

/// `struct vm_operations_struct`.
#[derive(Debug)]
pub struct VmOperations {
    /// For diagnostics.
    pub name: &'static str,
    /// `fault`: returns the page locked and referenced (`VM_FAULT_LOCKED`), or an error code.
    pub fault: for<'a> fn(&'a VmFault<'a>) -> Result<Folio<'a>, VmFaultError>,
}

/// A signal a host access raised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessSignal {
    /// `SIGBUS`.
    Sigbus,
    /// `SIGSEGV`.
    Sigsegv,
}

/// `struct vm_area_struct`.
pub struct Vma {
    /// `vm_start`.
    pub start: u64,
    /// `vm_end` (exclusive).
    pub end: u64,
    /// `vm_pgoff`.
    pub pgoff: u64,
    /// `vm_flags`.
    pub vm_flags: u64,
    /// `vm_file` (holds a file reference for the VMA's lifetime).
    pub file: Option<FileRef>,
    /// `vm_ops`.
    pub vm_ops: Option<&'static VmOperations>,
    /// Anonymous memory mapped with PTEs: frames by page index within the VMA, allocated on
    /// first write; each holds a reference on its folio (a subpage of a PTE-mapped THP holds
    /// one on the large folio).
    pub(crate) anon: Mutex<BTreeMap<u64, Pfn>>,
    /// File mappings: the present PTEs, frame by page index within the VMA.
    file_ptes: Mutex<BTreeMap<u64, Pfn>>,
    /// Guard markers (`MADV_GUARD_INSTALL`, `PTE_MARKER_GUARD`) by page index within the VMA: an
    /// access to such a page is SIGSEGV whatever the VMA maps. They live in the page tables, so
    /// zaps (`MADV_DONTNEED`, hole punching, `MADV_REMOVE`) keep them; munmap and
    /// `MADV_GUARD_REMOVE` drop them.
    guards: Mutex<BTreeSet<u64>>,
    /// `vm_mm`, as far as the reverse map needs it: the owning address space's MMU notifiers
    /// (set when the VMA is linked into an [`Mm`]).
    vm_mm: Option<Arc<MmuNotifierSubscriptions>>,
    /// Whether the VMA is still linked in its file's `i_mmap` (for the WARN at unlink).
    linked: AtomicBool,
}

impl fmt::Debug for Vma {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vma")
            .field("start", &format_args!("{:#x}", self.start))
            .field("end", &format_args!("{:#x}", self.end))
            .field("pgoff", &self.pgoff)
            .field("vm_flags", &format_args!("{:#x}", self.vm_flags))
            .field("file", &self.file.as_ref().map(|file| file.name()))
            .finish()
    }
}

impl Vma {
    /// A VMA before `f_op->mmap` has run (the mmap hook may change `vm_ops` and flags).
    pub fn new(start: u64, end: u64, pgoff: u64, vm_flags: u64, file: Option<FileRef>) -> Vma {
        Vma {
            start,
            end,
            pgoff,
            vm_flags,
            file,
            vm_ops: None,
            anon: Mutex::new(&ANON_LOCK, BTreeMap::new()),
            file_ptes: Mutex::new(&PTL, BTreeMap::new()),
            guards: Mutex::new(&GUARD_LOCK, BTreeSet::new()),
            vm_mm: None,
            linked: AtomicBool::new(false),
        }
    }

    /// `vma_pages`.
    pub fn pages(&self) -> u64 {
        (self.end - self.start) >> PAGE_SHIFT
    }

    /// `vma_last_pgoff`: the file index mapped at the VMA's last page.
    pub fn last_pgoff(&self) -> u64 {
        self.pgoff + self.pages() - 1
    }

    /// The frame of the present file PTE at `addr`, if any.
    pub fn file_pte(&self, addr: u64) -> Option<Pfn> {
        if addr < self.start || addr >= self.end {
            return None;
        }
        self.file_ptes.lock().get(&((addr - self.start) >> PAGE_SHIFT)).copied()
    }

    /// How many file PTEs are present.
    pub fn file_ptes_present(&self) -> usize {
        self.file_ptes.lock().len()
    }

    /// Whether the page at `page` (index within the VMA) holds a guard marker.
    #[doc(alias = "handle_pte_marker")]
    pub fn guarded(&self, page: u64) -> bool {
        self.guards.lock().contains(&page)
    }

    /// Installs guard markers on pages `[from, to)` (indices within the VMA).
    fn install_guards(&self, from: u64, to: u64) {
        self.guards.lock().extend(from..to);
    }

    /// Removes the guard markers of pages `[from, to)`.
    fn remove_guards(&self, from: u64, to: u64) {
        self.guards.lock().retain(|&page| page < from || page >= to);
    }

    /// `set_pte_range` of `finish_fault` (and GUP's fault-in): the PTE at `page` maps `pfn`.
    /// Called with the folio locked, as the kernel installs it, so that truncation (which locks
    /// the folio, then asks `folio_mapped`) either sees the PTE or made the fault retry.
    #[doc(alias = "finish_fault")]
    fn set_file_pte(&self, page: u64, pfn: Pfn) {
        self.file_ptes.lock().insert(page, pfn);
    }

    /// Whether a present file PTE of the file pages `[first, last]` maps a frame of
    /// `[pfn, pfn + nr)` (the model's `folio_mapped`, one VMA at a time).
    pub(crate) fn maps_frames(&self, first: u64, last: u64, pfn: Pfn, nr: u64) -> bool {
        let Some((from, to)) = self.page_span(first, last) else { return false };
        self.file_ptes.lock().range(from..=to).any(|(_, p)| p.0 >= pfn.0 && p.0 < pfn.0 + nr)
    }

    /// The pages within the VMA that map file indices `[first, last]`, clamped.
    fn page_span(&self, first: u64, last: u64) -> Option<(u64, u64)> {
        let first = first.max(self.pgoff);
        let last = last.min(self.last_pgoff());
        (first <= last).then(|| (first - self.pgoff, last - self.pgoff))
    }

    /// `zap_page_range_single` over the file indices `[first, last]` of this VMA, bracketed by an
    /// `MMU_NOTIFY_CLEAR` invalidation of the VMA's address range on its mm (the notifier fires
    /// whether or not a PTE of the range is present, as the kernel's does). With `single_folio`
    /// (`details->single_folio`, as `unmap_mapping_folio` passes it) only PTEs of that folio's
    /// frames go. The caller holds `i_mmap_rwsem` for read.
    pub(crate) fn zap_file_range(&self, first: u64, last: u64, single_folio: Option<(Pfn, u64)>) {
        let Some((from, to)) = self.page_span(first, last) else { return };
        let start = self.start + (from << PAGE_SHIFT);
        let end = self.start + ((to + 1) << PAGE_SHIFT);
        let range = MmuNotifierRange { start, end, event: MmuNotifyEvent::Clear };
        if let Some(notifiers) = &self.vm_mm {
            notifiers.invalidate_range_start(&range);
        }
        self.clear_file_ptes(from, to + 1, single_folio);
        if let Some(notifiers) = &self.vm_mm {
            notifiers.invalidate_range_end(&range);
        }
    }

    /// Clears the present file PTEs of pages `[from, to)` (of `single_folio` only, if given).
    fn clear_file_ptes(&self, from: u64, to: u64, single_folio: Option<(Pfn, u64)>) {
        let mut ptes = self.file_ptes.lock();
        ptes.retain(|&page, pfn| {
            let in_range = page >= from && page < to;
            let of_folio = single_folio.is_none_or(|(head, nr)| pfn.0 >= head.0 && pfn.0 < head.0 + nr);
            !(in_range && of_folio)
        });
    }

    /// The guard markers of the pages that map file indices `[first, last]` go: the zap of
    /// `unmap_mapping_folio` carries `ZAP_FLAG_DROP_MARKER`, so truncating a folio that some VMA
    /// maps removes the markers at its index in every VMA of the file (measured: a guard on one
    /// mapping disappears when the page, present in another mapping, is punched; a punch of a
    /// page no VMA maps keeps it).
    pub(crate) fn drop_file_guards(&self, first: u64, last: u64) {
        if let Some((from, to)) = self.page_span(first, last) {
            self.remove_guards(from, to + 1);
        }
    }

    /// `try_to_unmap_one` for memory failure (`TTU_HWPOISON`): an `MMU_NOTIFY_CLEAR`
    /// invalidation of the folio's span in this VMA, the PTEs of the folio cleared (the kernel
    /// leaves a hwpoison entry; the model re-faults through the handler, which reports the
    /// poison). The caller holds `i_mmap_rwsem` for read.
    #[doc(alias("try_to_unmap", "unmap_poisoned_folio"))]
    pub(crate) fn try_to_unmap_folio(&self, first: u64, last: u64, pfn: Pfn, nr: u64) {
        self.zap_file_range(first, last, Some((pfn, nr)));
    }

    fn release_anon(&self, machine: &Machine, first_page: u64, end_page: u64) {
        let mut anon = self.anon.lock();
        let pages: Vec<u64> = anon.range(first_page..end_page).map(|(&page, _)| page).collect();
        for page in pages {
            let pfn = anon.remove(&page).expect("listed above");
            Folio::from_pfn(&machine.mem, pfn).put();
        }
    }
}

/// Why a file page fault failed.
enum FileFaultError {
    /// The page is poisoned (`VM_FAULT_HWPOISON`).
    Hwpoison,
    /// The fault handler failed, or kept asking for a retry.
    Failed,
}

/// `struct mm_struct`: the process address space.
#[derive(Debug)]
pub struct Mm {
    pub(crate) machine: Arc<Machine>,
    /// `mmap_lock`, owning the VMA tree (keyed by `vm_start`).
    pub(crate) vmas: RwSem<BTreeMap<u64, Arc<Vma>>>,
    /// The PMD level of the page tables, by 2M-aligned address (see [`crate::huge_memory`]).
    pub(crate) pmds: Mutex<BTreeMap<u64, Pmd>>,
    /// `mm->notifier_subscriptions`.
    notifiers: Arc<MmuNotifierSubscriptions>,
    /// Ranges [`Mm::get_unmapped_area`] does not hand out although nothing is mapped there (see
    /// [`Mm::retire`]).
    retired: Mutex<Vec<(u64, u64)>>,
}

impl Mm {
    /// An empty address space.
    pub fn new(machine: Arc<Machine>) -> Mm {
        Mm {
            machine,
            vmas: RwSem::new(&MMAP_LOCK, BTreeMap::new()),
            pmds: Mutex::new(&PMD_LOCK, BTreeMap::new()),
            notifiers: Arc::new(MmuNotifierSubscriptions::new()),
            retired: Mutex::new(&RETIRED_LOCK, Vec::new()),
        }
    }

    /// Keeps `[start, end)` out of future placements while leaving it unmapped. Not a kernel
    /// mechanism: the script runner's, which keeps a range a script unmapped from being handed
    /// out again while a name may still refer to it (`docs/script-format.md`), so that a stale
    /// access is SIGSEGV and a second munmap unmaps nothing on every backend.
    pub fn retire(&self, start: u64, end: u64) {
        if start < end {
            self.retired.lock().push((start, end));
        }
    }

    /// `mmu_notifier_register(subscription, mm)`: `ops` sees every invalidation of this address
    /// space's user mappings until the handle is unregistered or the process exits.
    pub fn mmu_notifier_register(&self, ops: Arc<dyn MmuNotifierOps>) -> MmuNotifierHandle {
        self.notifiers.register(ops)
    }

    /// `mm->notifier_subscriptions`.
    pub fn notifier_subscriptions(&self) -> &Arc<MmuNotifierSubscriptions> {
        &self.notifiers
    }

    /// `mmu_notifier_invalidate_range_start` over `[start, end)`.
    pub(crate) fn notify_start(&self, start: u64, end: u64, event: MmuNotifyEvent) -> MmuNotifierRange {
        let range = MmuNotifierRange { start, end, event };
        self.notifiers.invalidate_range_start(&range);
        range
    }

    /// `mmu_notifier_invalidate_range_end`.
    pub(crate) fn notify_end(&self, range: &MmuNotifierRange) {
        self.notifiers.invalidate_range_end(range);
    }

    /// `get_unmapped_area` (top-down): the highest gap below [`MMAP_BASE`] that fits `len`, as
    /// Linux's default layout picks, so that an address freed by munmap is reused the same way.
    pub fn get_unmapped_area(&self, len: u64) -> KResult<u64> {
        if len > TASK_SIZE {
            return Err(Errno::ENOMEM);
        }
        let vmas = self.vmas.read();
        let mut taken: Vec<(u64, u64)> = vmas.values().map(|vma| (vma.start, vma.end)).collect();
        taken.extend(self.retired.lock().iter().copied());
        taken.sort_unstable();
        let mut ceiling = MMAP_BASE;
        for &(start, end) in taken.iter().rev() {
            if end <= ceiling && ceiling - end >= len {
                return Ok(ceiling - len);
            }
            ceiling = ceiling.min(start);
        }
        ceiling.checked_sub(len).filter(|&addr| addr >= PAGE_SIZE << 8).ok_or(Errno::ENOMEM)
    }

    /// `__get_unmapped_area` for a private anonymous mapping without a hint (v6.13+, so both
    /// modelled kernels): a length that is a multiple of 2M goes through
    /// `thp_get_unmapped_area_vmflags`, which asks for `len + 2M` and aligns the result to 2M
    /// (top-down: an already aligned gap start moves up by 2M, as `__thp_get_unmapped_area`
    /// does), falling back to the plain search if the padded length does not fit.
    #[doc(alias("__get_unmapped_area", "thp_get_unmapped_area_vmflags"))]
    pub fn get_unmapped_area_anon(&self, len: u64) -> KResult<u64> {
        if len > TASK_SIZE {
            return Err(Errno::ENOMEM);
        }
        if len == 0 || len % HPAGE_PMD_SIZE != 0 {
            return self.get_unmapped_area(len);
        }
        let Some(len_pad) = len.checked_add(HPAGE_PMD_SIZE) else { return self.get_unmapped_area(len) };
        let Ok(ret) = self.get_unmapped_area(len_pad) else { return self.get_unmapped_area(len) };
        let off_sub = 0u64.wrapping_sub(ret) & (HPAGE_PMD_SIZE - 1);
        if off_sub == 0 {
            return Ok(ret + HPAGE_PMD_SIZE);
        }
        Ok(ret + off_sub)
    }

    /// Inserts a VMA (`vma_link`): the range must be free. A file VMA is linked into its file's
    /// `i_mmap` (`vma_link_file`, `i_mmap_rwsem` for write inside `mmap_lock`).
    pub fn insert(&self, mut vma: Vma) -> Arc<Vma> {
        vma.vm_mm = Some(self.notifiers.clone());
        let vma = Arc::new(vma);
        let mut vmas = self.vmas.write();
        assert!(vmas.range(..vma.end).next_back().is_none_or(|(_, other)| other.end <= vma.start), "overlapping VMA");
        vmas.insert(vma.start, vma.clone());
        Self::link_file(&vma);
        drop(vmas);
        vma
    }

    /// `vma_link_file`.
    fn link_file(vma: &Arc<Vma>) {
        if let Some(file) = &vma.file {
            file.inode().mapping().i_mmap_insert(vma);
            vma.linked.store(true, Ordering::Relaxed);
        }
    }

    /// `unlink_file_vma`: the VMA leaves its file's `i_mmap` (munmap, split, exit).
    fn unlink_file(vma: &Vma) {
        if let Some(file) = &vma.file {
            if vma.linked.swap(false, Ordering::Relaxed) {
                file.inode().mapping().i_mmap_remove(vma);
            }
        }
    }

    /// `find_vma` + containment: the VMA containing `addr`.
    pub fn find(&self, addr: u64) -> Option<Arc<Vma>> {
        let vmas = self.vmas.read();
        let (_, vma) = vmas.range(..=addr).next_back()?;
        (addr < vma.end).then(|| vma.clone())
    }

    /// `munmap(addr, len)` (`do_vmi_munmap`): EINVAL for an unaligned address, a zero length or a
    /// range outside user space; unmapping nothing is fine. Partially covered VMAs are split.
    #[doc(alias = "do_vmi_munmap")]
    pub fn munmap(&self, addr: u64, len: u64) -> KResult<()> {
        if addr & (PAGE_SIZE - 1) != 0 || addr > TASK_SIZE || len > TASK_SIZE - addr {
            return Err(Errno::EINVAL);
        }
        let len = len.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        let end = addr + len;
        let mut removed = Vec::new();
        let mut partly_unmapped = Vec::new();
        {
            let mut vmas = self.vmas.write();
            if !vmas.range(..end).any(|(_, vma)| vma.end > addr) {
                // Nothing mapped: no invalidation (do_vmi_munmap returns early).
                return Ok(());
            }
            let overlapping: Vec<u64> =
                vmas.range(..end).filter(|(_, vma)| vma.end > addr).map(|(&start, _)| start).collect();
            // vma_adjust_trans_huge: a huge PMD straddling a split point is split first.
            for boundary in [addr, end] {
                let vma = vmas.range(..boundary).next_back().map(|(_, vma)| vma.clone());
                if let Some(head) = vma.and_then(|vma| self.split_huge_pmd_address(&vma, boundary)) {
                    partly_unmapped.push(head);
                }
            }
            for start in overlapping {
                let vma = vmas.remove(&start).expect("listed above");
                // __split_vma: the parts that stay are linked into i_mmap as VMAs of their own.
                if vma.start < addr {
                    let part = Arc::new(self.split(&vma, vma.start, addr));
                    Self::link_file(&part);
                    vmas.insert(vma.start, part);
                }
                if vma.end > end {
                    let part = Arc::new(self.split(&vma, end, vma.end));
                    Self::link_file(&part);
                    vmas.insert(end, part);
                }
                removed.push((vma, addr.max(start), end));
            }
            // unmap_vmas: one invalidation over the whole range, with mmap_lock held; the
            // secondary MMUs drop their mappings before the pages are freed (tlb_finish_mmu).
            let range = self.notify_start(addr, end, MmuNotifyEvent::Unmap);
            for (vma, from, to) in &removed {
                vma.clear_file_ptes(0, u64::MAX, None);
                // Every huge PMD left in the range lies wholly inside it (split points were
                // split above).
                partly_unmapped.extend(self.zap_huge_pmds(vma, *from, *to));
            }
            self.notify_end(&range);
            // free_pgtables → unlink_file_vma: the VMAs leave i_mmap after their PTEs are gone.
            for (vma, _, _) in &removed {
                Self::unlink_file(vma);
            }
            self.free_pgtables(&vmas);
        }
        for (vma, from, to) in removed {
            let base = vma.start;
            vma.release_anon(&self.machine, (from - base) >> PAGE_SHIFT, (to - base) >> PAGE_SHIFT);
        }
        for head in partly_unmapped {
            self.deferred_split_folio(head);
        }
        Ok(())
    }

    /// The part `[start, end)` of `vma` as a VMA of its own (anonymous pages move with it).
    fn split(&self, vma: &Vma, start: u64, end: u64) -> Vma {
        let mut part =
            Vma::new(start, end, vma.pgoff + ((start - vma.start) >> PAGE_SHIFT), vma.vm_flags, vma.file.clone());
        part.vm_ops = vma.vm_ops;
        part.vm_mm = vma.vm_mm.clone();
        let shift = (start - vma.start) >> PAGE_SHIFT;
        let pages = (end - start) >> PAGE_SHIFT;
        let mut ptes = vma.file_ptes.lock();
        let moved: Vec<(u64, Pfn)> = ptes.range(shift..shift + pages).map(|(&page, &pfn)| (page, pfn)).collect();
        let target = part.file_ptes.get_mut();
        for (page, pfn) in moved {
            ptes.remove(&page);
            target.insert(page - shift, pfn);
        }
        drop(ptes);
        let mut guards = vma.guards.lock();
        let moved: Vec<u64> = guards.range(shift..shift + pages).copied().collect();
        let target = part.guards.get_mut();
        for page in moved {
            guards.remove(&page);
            target.insert(page - shift);
        }
        drop(guards);
        let mut anon = vma.anon.lock();
        let moved: Vec<(u64, Pfn)> = anon.range(shift..shift + pages).map(|(&page, &pfn)| (page, pfn)).collect();
        // The new part is not shared yet: no need (and no lockdep nesting) to lock it.
        let target = part.anon.get_mut();
        for (page, pfn) in moved {
            anon.remove(&page);
            target.insert(page - shift, pfn);
        }
        drop(anon);
        part
    }

    /// Removes every mapping (process exit: `exit_mmap` releases the MMU notifiers first).
    #[doc(alias = "exit_mmap")]
    pub fn unmap_all(&self) {
        self.notifiers.release_all();
        let all: Vec<Arc<Vma>> = std::mem::take(&mut *self.vmas.write()).into_values().collect();
        let pmds = std::mem::take(&mut *self.pmds.lock());
        for pmd in pmds.into_values() {
            if let Pmd::Huge(head) = pmd {
                Folio::from_pfn(&self.machine.mem, head).put();
            }
        }
        for vma in all {
            vma.clear_file_ptes(0, u64::MAX, None);
            Self::unlink_file(&vma);
            vma.release_anon(&self.machine, 0, u64::MAX);
        }
    }

    /// Every VMA, ascending.
    pub fn vmas(&self) -> Vec<Arc<Vma>> {
        self.vmas.read().values().cloned().collect()
    }

    /// A host load or store of `buf.len()` bytes at `addr` (the CPU access plus the page fault
    /// path): SIGSEGV without a VMA or permission, SIGBUS when the fault handler says so.
    #[doc(alias("access_error", "do_user_addr_fault"))]
    pub fn access(&self, addr: u64, buf: &mut [u8], write: bool) -> Result<(), AccessSignal> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = addr.checked_add(done as u64).ok_or(AccessSignal::Sigsegv)?;
            let in_page = (at & (PAGE_SIZE - 1)) as usize;
            let chunk = (PAGE_SIZE as usize - in_page).min(buf.len() - done);
            self.access_page(at, &mut buf[done..done + chunk], write)?;
            done += chunk;
        }
        Ok(())
    }

    /// The order of the host mapping of `addr` (`host_pfn_mapping_level` in KVM's terms, which
    /// walks the process page tables): 0 for a 4K PTE or nothing mapped, 9 for a PMD-mapped huge
    /// page (an anonymous THP, or the huge zero page). KVM never maps a shared gfn larger than
    /// the host maps its HVA.
    ///
    /// KVM calls this under `mmu_lock`, as the kernel walks the page tables locklessly there
    /// (`lookup_address_in_mm` with interrupts off): it reads only the PMD table (its lock is a
    /// leaf) and never `mmap_lock`, which nests outside `mmu_lock`. An unmapped range has no PMD
    /// entry (munmap zaps them), so no VMA lookup is needed.
    pub fn host_mapping_order(&self, addr: u64) -> u8 {
        self.pmd_mapping_order(addr)
    }

    /// `get_user_pages` of one page for KVM (`hva_to_pfn`): the frame mapped at `addr`, faulted in
    /// for a write when `write` (KVM asks for a writable page for any fault on a writable memslot),
    /// with a reference the caller puts. EFAULT without a VMA, without the access right, or when the
    /// fault handler fails; EHWPOISON for a poisoned page (`KVM_PFN_ERR_HWPOISON`). Anonymous memory
    /// is allocated (and zeroed) on first use: the model has no shared zero page.
    #[doc(alias("__kvm_faultin_pfn", "hva_to_pfn"))]
    pub fn get_user_page(&self, addr: u64, write: bool) -> KResult<Pfn> {
        let vma = self.find(addr).ok_or(Errno::EFAULT)?;
        let needed = if write { VM_WRITE } else { VM_READ | VM_WRITE | VM_EXEC };
        if vma.vm_flags & needed == 0 {
            return Err(Errno::EFAULT);
        }
        let page_in_vma = (addr - vma.start) >> PAGE_SHIFT;
        if vma.guarded(page_in_vma) {
            return Err(Errno::EFAULT);
        }
        let Some(ops) = vma.vm_ops else {
            // GUP faults anonymous memory in as a write (the model has no shared zero page), so
            // a VM_HUGEPAGE range gets a THP. The fault's reference is the caller's.
            let pfn = self.anon_fault(&vma, addr, true).map_err(|_| Errno::EFAULT)?;
            return Ok(pfn.expect("a write fault maps a page"));
        };
        match self.fault_file_page(&vma, ops, page_in_vma, write, addr) {
            // The fault's reference becomes the caller's.
            Ok((folio, pfn)) => {
                folio.unlock();
                Ok(pfn)
            }
            Err(FileFaultError::Hwpoison) => Err(Errno::EHWPOISON),
            Err(FileFaultError::Failed) => Err(Errno::EFAULT),
        }
    }

    /// A page fault on a file mapping (`__do_fault` + `finish_fault`), shared by user accesses
    /// and GUP: calls `vm_ops->fault` (retried while it asks for a retry; a bound keeps a
    /// livelock visible as a WARN), refuses a poisoned page (`VM_FAULT_HWPOISON`; guest_memfd's
    /// own fault handler does not check) and marks the PTE present. Returns the folio, locked
    /// and with the fault's reference, and the frame of the faulting page.
    fn fault_file_page<'s>(
        &'s self,
        vma: &Vma,
        ops: &VmOperations,
        page_in_vma: u64,
        write: bool,
        addr: u64,
    ) -> Result<(Folio<'s>, Pfn), FileFaultError> {
        let fault = VmFault { vma, pgoff: PgOff(vma.pgoff + page_in_vma), write };
        for _ in 0..1000 {
            match (ops.fault)(&fault) {
                Ok(folio) if folio.test_hwpoison() => {
                    folio.unlock();
                    folio.put();
                    return Err(FileFaultError::Hwpoison);
                }
                Ok(folio) => {
                    // finish_fault: the PTE is present from now until a zap (set under the
                    // folio lock, which truncation's unmap also takes).
                    let pfn = folio.pfn().offset(fault.pgoff.0 - folio.index().0);
                    vma.set_file_pte(page_in_vma, pfn);
                    // The same folio, named through the machine rather than the fault.
                    return Ok((Folio::from_pfn(&self.machine.mem, folio.pfn()), pfn));
                }
                Err(VmFaultError::Retry) => continue,
                Err(_) => return Err(FileFaultError::Failed),
            }
        }
        self.machine
            .warnings
            .report(gmem_sync::warn::WarnKind::Warn, format!("page fault at {addr:#x} retried 1000 times"));
        Err(FileFaultError::Failed)
    }

    #[doc(alias = "handle_mm_fault")]
    fn access_page(&self, addr: u64, buf: &mut [u8], write: bool) -> Result<(), AccessSignal> {
        let vma = self.find(addr).ok_or(AccessSignal::Sigsegv)?;
        // x86 access_error(): a write needs VM_WRITE; a read of a page that is not present needs
        // any of VM_READ, VM_WRITE or VM_EXEC (vma_is_accessible), because x86 page tables cannot
        // express a writable page that is not readable. The model keeps no page tables, so every
        // access takes the not-present path; a PROT_WRITE-only mapping is readable.
        let needed = if write { VM_WRITE } else { VM_READ | VM_WRITE | VM_EXEC };
        if vma.vm_flags & needed == 0 {
            return Err(AccessSignal::Sigsegv);
        }
        let in_page = addr & (PAGE_SIZE - 1);
        let page_in_vma = (addr - vma.start) >> PAGE_SHIFT;
        // A guard marker: handle_pte_marker answers VM_FAULT_SIGSEGV before any fault handler.
        if vma.guarded(page_in_vma) {
            return Err(AccessSignal::Sigsegv);
        }
        let Some(ops) = vma.vm_ops else {
            return self.access_anon(&vma, addr, in_page, buf, write);
        };
        let (folio, pfn) =
            self.fault_file_page(&vma, ops, page_in_vma, write, addr).map_err(|_| AccessSignal::Sigbus)?;
        let offset = (pfn.0 - folio.pfn().0) * PAGE_SIZE + in_page;
        if write {
            folio.write(offset, buf);
        } else {
            folio.read(offset, buf);
        }
        folio.unlock();
        folio.put();
        Ok(())
    }

    fn access_anon(&self, vma: &Vma, addr: u64, in_page: u64, buf: &mut [u8], write: bool) -> Result<(), AccessSignal> {
        let Some(pfn) = self.anon_fault(vma, addr, write).map_err(|_| AccessSignal::Sigbus)? else {
            // A zero page (4K or huge) is mapped: reads see zeroes.
            buf.fill(0);
            return Ok(());
        };
        if write {
            self.machine.mem.write(pfn, in_page as usize, buf);
        } else {
            self.machine.mem.read(pfn, in_page as usize, buf);
        }
        // The frame stayed allocated during the copy: the fault's reference.
        Folio::from_pfn(&self.machine.mem, pfn).put();
        Ok(())
    }

    /// `MADV_DONTNEED` (`zap_page_range_single` with an `MMU_NOTIFY_CLEAR` invalidation, under
    /// `mmap_lock` for read): on anonymous memory it drops the pages; on file mappings it only
    /// zaps the PTEs, so the data stays in the page cache. Either way the secondary MMUs (KVM)
    /// drop their mappings of the range.
    /// A huge PMD wholly inside the range is zapped, one partly inside is split first (with its
    /// own invalidation of the 2M range, nested in this one), and the THP is then split and its
    /// unmapped subpages freed (see [`crate::huge_memory`]).
    #[doc(alias = "zap_page_range_single")]
    pub(crate) fn dontneed(&self, vma: &Vma, start: u64, end: u64) {
        let mmap_lock = self.vmas.read();
        let range = self.notify_start(start, end, MmuNotifyEvent::Clear);
        let (from, to) = ((start - vma.start) >> PAGE_SHIFT, (end - vma.start) >> PAGE_SHIFT);
        let mut partly_unmapped = Vec::new();
        if vma.file.is_none() {
            partly_unmapped = self.zap_huge_pmds(vma, start, end);
            vma.release_anon(&self.machine, from, to);
        } else {
            vma.clear_file_ptes(from, to, None);
        }
        self.notify_end(&range);
        drop(mmap_lock);
        for head in partly_unmapped {
            self.deferred_split_folio(head);
        }
    }

    /// `MADV_GUARD_INSTALL` on `[start, end)` of `vma` (`madvise_guard_install`): the range is
    /// zapped as `MADV_DONTNEED` zaps it (anonymous pages are freed, file pages stay in the page
    /// cache) and every page gets a guard marker, so an access faults with SIGSEGV.
    #[doc(alias = "madvise_guard_install")]
    pub(crate) fn guard_install(&self, vma: &Vma, start: u64, end: u64) {
        self.dontneed(vma, start, end);
        vma.install_guards((start - vma.start) >> PAGE_SHIFT, (end - vma.start) >> PAGE_SHIFT);
    }

    /// `MADV_GUARD_REMOVE` on `[start, end)` of `vma`: the guard markers go; the pages fault in
    /// again on the next access (the data of file pages is still in the page cache).
    #[doc(alias = "madvise_guard_remove")]
    pub(crate) fn guard_remove(&self, vma: &Vma, start: u64, end: u64) {
        vma.remove_guards((start - vma.start) >> PAGE_SHIFT, (end - vma.start) >> PAGE_SHIFT);
    }

    /// Faults one page of `vma` in as GUP does for `MADV_POPULATE_*` and `mm_populate`
    /// (`faultin_page`): EFAULT for a guard marker or a fault handler's SIGBUS, EHWPOISON for a
    /// poisoned page, ENOMEM when anonymous memory cannot be allocated.
    fn faultin_page(&self, vma: &Vma, addr: u64, write: bool) -> KResult<()> {
        let page_in_vma = (addr - vma.start) >> PAGE_SHIFT;
        if vma.guarded(page_in_vma) {
            return Err(Errno::EFAULT);
        }
        let Some(ops) = vma.vm_ops else {
            if let Some(pfn) = self.anon_fault(vma, addr, write)? {
                Folio::from_pfn(&self.machine.mem, pfn).put();
            }
            return Ok(());
        };
        match self.fault_file_page(vma, ops, page_in_vma, write, addr) {
            Ok((folio, _)) => {
                folio.unlock();
                folio.put();
                Ok(())
            }
            Err(FileFaultError::Hwpoison) => Err(Errno::EHWPOISON),
            Err(FileFaultError::Failed) => Err(Errno::EFAULT),
        }
    }

    /// `madvise_populate` over `[start, end)` (`MADV_POPULATE_READ` / `MADV_POPULATE_WRITE`,
    /// `faultin_page_range` with `FOLL_MADV_POPULATE`): page by page from `start`, ENOMEM where
    /// no VMA maps the address, EINVAL for a VMA without the access right (`check_vma_flags`:
    /// a read needs `VM_READ`, a write `VM_WRITE`; no `FOLL_FORCE`), EFAULT where the fault
    /// fails (SIGBUS, a guard marker), EHWPOISON for a poisoned page. The pages before the
    /// failing one stay populated.
    #[doc(alias("__get_user_pages", "faultin_page_range"))]
    pub(crate) fn madvise_populate(&self, start: u64, end: u64, write: bool) -> KResult<()> {
        let mut addr = start;
        while addr < end {
            let vma = self.find(addr).ok_or(Errno::ENOMEM)?;
            let needed = if write { VM_WRITE } else { VM_READ };
            if vma.vm_flags & needed == 0 {
                return Err(Errno::EINVAL);
            }
            let stop = end.min(vma.end);
            while addr < stop {
                self.faultin_page(&vma, addr, write)?;
                addr += PAGE_SIZE;
            }
        }
        Ok(())
    }

    /// `__mm_populate(start, len, ignore_errors)`: each VMA of the range is faulted in page by
    /// page (`populate_vma_page_range`: a write fault only for a private writable mapping,
    /// reads forced on any accessible mapping; a `PROT_NONE` VMA is not accessible, so GUP
    /// refuses it with EFAULT). Holes are skipped. With `ignore_errors` (mmap's `MAP_POPULATE`
    /// and `MAP_LOCKED`) a failure skips the rest of its VMA and nothing reaches the caller;
    /// without (mlock) the first failure ends the walk with GUP's errno (EFAULT, ENOMEM,
    /// EHWPOISON).
    #[doc(alias("__mm_populate", "populate_vma_page_range"))]
    pub(crate) fn mm_populate(&self, start: u64, end: u64, ignore_errors: bool) -> KResult<()> {
        let (vmas, _) = self.overlapping(start, end);
        for vma in vmas {
            let write = vma.vm_flags & (VM_WRITE | VM_SHARED) == VM_WRITE;
            let accessible = vma.vm_flags & (VM_READ | VM_WRITE | VM_EXEC) != 0;
            let mut addr = start.max(vma.start);
            let mut result = if accessible { Ok(()) } else { Err(Errno::EFAULT) };
            while result.is_ok() && addr < end.min(vma.end) {
                result = self.faultin_page(&vma, addr, write);
                addr += PAGE_SIZE;
            }
            if let Err(errno) = result {
                if !ignore_errors {
                    return Err(errno);
                }
            }
        }
        Ok(())
    }

    /// `apply_vma_lock_flags(start, len, flags)` for `mlock` (`lock`) and `munlock`: from the VMA
    /// containing `start`, each VMA in turn gets or loses `VM_LOCKED` over its part of the range
    /// (`mlock_fixup` splits it at the range's edges), until the range ends or a hole: ENOMEM
    /// (the VMAs before the hole keep the change), also when `start` itself is in a hole.
    /// EINVAL when the range wraps; nothing for an empty one.
    pub(crate) fn apply_vma_lock_flags(&self, start: u64, len: u64, lock: bool) -> KResult<()> {
        let end = start.wrapping_add(len);
        if end < start {
            return Err(Errno::EINVAL);
        }
        if end == start {
            return Ok(());
        }
        let (vmas, _) = self.overlapping(start, end);
        let mut tmp = start;
        for vma in vmas {
            if vma.start > tmp {
                return Err(Errno::ENOMEM);
            }
            let to = end.min(vma.end);
            self.update_vma_flags(&vma, tmp, to, |flags| if lock { flags | VM_LOCKED } else { flags & !VM_LOCKED });
            tmp = to;
        }
        if tmp < end {
            return Err(Errno::ENOMEM);
        }
        Ok(())
    }

    /// `vma_modify_flags` over `[from, to)` of `vma` (inside it): if the flags change, the VMA is
    /// split at the edges (a huge PMD straddling an edge is split first) and the covered part
    /// gets `update(vm_flags)`.
    #[doc(alias("mlock_fixup", "vma_modify_flags"))]
    fn update_vma_flags(&self, vma: &Arc<Vma>, from: u64, to: u64, update: impl Fn(u64) -> u64) {
        let flags = update(vma.vm_flags);
        if flags == vma.vm_flags {
            return;
        }
        // Splitting a PMD without unmapping leaves every subpage mapped: nothing to free.
        for edge in [from, to] {
            self.split_huge_pmd_address(vma, edge);
        }
        let mut vmas = self.vmas.write();
        if vmas.get(&vma.start).is_none_or(|current| !Arc::ptr_eq(current, vma)) {
            return;
        }
        vmas.remove(&vma.start);
        for (part_start, part_end, part_flags) in
            [(vma.start, from, vma.vm_flags), (from, to, flags), (to, vma.end, vma.vm_flags)]
        {
            if part_start < part_end {
                let mut part = self.split(vma, part_start, part_end);
                part.vm_flags = part_flags;
                let part = Arc::new(part);
                Self::link_file(&part);
                vmas.insert(part_start, part);
            }
        }
        Self::unlink_file(vma);
    }

    /// `count_mm_mlocked_page_nr`: the pages of `VM_LOCKED` VMAs inside `[start, end)`.
    pub(crate) fn locked_pages_within(&self, start: u64, end: u64) -> u64 {
        let (vmas, _) = self.overlapping(start, end);
        vmas.iter()
            .filter(|vma| vma.vm_flags & VM_LOCKED != 0)
            .map(|vma| (end.min(vma.end) - start.max(vma.start)) >> PAGE_SHIFT)
            .sum()
    }

    /// `mm->locked_vm`: the pages of `VM_LOCKED` VMAs.
    pub fn locked_vm(&self) -> u64 {
        self.vmas.read().values().filter(|vma| vma.vm_flags & VM_LOCKED != 0).map(|vma| vma.pages()).sum()
    }

    /// `MADV_HUGEPAGE` / `MADV_NOHUGEPAGE` over `[start, end)` (`madvise_vma_behavior` →
    /// `hugepage_madvise` → `madvise_update_vma`, `mmap_lock` for write): each VMA of the range
    /// whose flags change is split at the range's edges (a huge PMD straddling an edge is split
    /// first) and the covered part gets the new flags. Returns whether the range has holes (the
    /// caller's ENOMEM, after the mapped parts were changed).
    #[doc(alias("hugepage_madvise", "madvise_update_vma"))]
    pub(crate) fn madvise_hugepage(&self, start: u64, end: u64, hugepage: bool) -> bool {
        let (_, hole) = self.overlapping(start, end);
        let mut vmas = self.vmas.write();
        let overlapping: Vec<Arc<Vma>> =
            vmas.range(..end).filter(|(_, vma)| vma.end > start).map(|(_, vma)| vma.clone()).collect();
        for vma in overlapping {
            let flags = if hugepage {
                (vma.vm_flags & !VM_NOHUGEPAGE) | VM_HUGEPAGE
            } else {
                (vma.vm_flags & !VM_HUGEPAGE) | VM_NOHUGEPAGE
            };
            if flags == vma.vm_flags {
                continue;
            }
            let (from, to) = (start.max(vma.start), end.min(vma.end));
            // Splitting a PMD without unmapping leaves every subpage mapped: nothing to free.
            for edge in [from, to] {
                self.split_huge_pmd_address(&vma, edge);
            }
            vmas.remove(&vma.start);
            for (part_start, part_end, part_flags) in
                [(vma.start, from, vma.vm_flags), (from, to, flags), (to, vma.end, vma.vm_flags)]
            {
                if part_start < part_end {
                    let mut part = self.split(&vma, part_start, part_end);
                    part.vm_flags = part_flags;
                    let part = Arc::new(part);
                    Self::link_file(&part);
                    vmas.insert(part_start, part);
                }
            }
            Self::unlink_file(&vma);
        }
        drop(vmas);
        hole
    }

    /// The VMAs overlapping `[start, end)`, ascending, and whether the range has holes.
    pub fn overlapping(&self, start: u64, end: u64) -> (Vec<Arc<Vma>>, bool) {
        let vmas = self.vmas.read();
        let mut out = Vec::new();
        let mut expect = start;
        let mut hole = false;
        let first = vmas.range(..=start).next_back().map(|(&s, _)| s).unwrap_or(start);
        for (_, vma) in vmas.range(first..end) {
            if vma.end <= start {
                continue;
            }
            if vma.start > expect {
                hole = true;
            }
            expect = vma.end;
            out.push(vma.clone());
        }
        if expect < end {
            hole = true;
        }
        (out, hole)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::MachineConfig;

    /// An address space with one anonymous VMA of two pages with `vm_flags`, and its start.
    fn mapped(vm_flags: u64) -> (Mm, u64) {
        let mm = Mm::new(Machine::new(MachineConfig::tiny(64)));
        let start = mm.get_unmapped_area(2 * PAGE_SIZE).expect("free range");
        mm.insert(Vma::new(start, start + 2 * PAGE_SIZE, 0, vm_flags, None));
        (mm, start)
    }

    #[test]
    fn x86_reads_need_any_access_right_and_writes_need_write() {
        let mut buf = [0xffu8; 2];
        let (mm, start) = mapped(VM_WRITE);
        assert_eq!(mm.access(start, &mut buf, false), Ok(()), "a PROT_WRITE-only mapping is readable on x86");
        assert_eq!(buf, [0, 0]);
        assert_eq!(mm.access(start, &mut [1, 2], true), Ok(()));
        assert_eq!(mm.access(start, &mut buf, false), Ok(()));
        assert_eq!(buf, [1, 2]);
        let (mm, start) = mapped(VM_READ);
        assert_eq!(mm.access(start, &mut buf, false), Ok(()));
        assert_eq!(mm.access(start, &mut buf, true), Err(AccessSignal::Sigsegv));
        let (mm, start) = mapped(0);
        assert_eq!(mm.access(start, &mut buf, false), Err(AccessSignal::Sigsegv));
        assert_eq!(mm.access(start, &mut buf, true), Err(AccessSignal::Sigsegv));
    }
}
