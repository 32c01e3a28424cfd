//! `struct address_space`: the page cache of one inode (`mm/filemap.c`, `mm/truncate.c`).
//!
//! Lookups are lock-free, as in the kernel: `filemap_get_folio` loads the xarray entry, takes a
//! reference with `folio_try_get` (which fails on a folio whose count already reached zero) and
//! rechecks that the entry still points at the same folio, retrying otherwise. Insertion and
//! removal happen with the folio locked.
//!
//! The reverse map of file mappings is `i_mmap` (`mapping->i_mmap`, an interval tree of the VMAs
//! mapping the file, under `i_mmap_rwsem`): VMAs are linked at mmap and unlinked at munmap,
//! split and exit. Truncation (`truncate_cleanup_folio`) and memory failure
//! (`hwpoison_user_mappings`) walk it for a folio that is mapped (`folio_mapped`) and zap each
//! mapping VMA's PTEs of the folio inside an `MMU_NOTIFY_CLEAR` invalidation of that VMA's
//! address space, so secondary MMUs (KVM's shared SPTEs installed through the HVA) drop the page
//! before it is freed. Lock order: `invalidate_lock` → folio lock → `i_mmap_rwsem` → the page
//! table lock; `mmap_lock` → `i_mmap_rwsem` (link and unlink).
//!
//! The invalidate lock (`mapping->invalidate_lock`, a rw_semaphore) is modelled as an
//! [`RwSem`] that *contains* `i_private_list`: guest_memfd keeps its `struct kvm_gmem` instances
//! on that list and only walks or changes it under the invalidate lock, so the model makes the
//! lock the owner of the data it protects.

use crate::errno::{Errno, KResult};
use crate::folio::Folio;
use crate::machine::Machine;
use crate::types::{PgOff, PAGE_SHIFT, PAGE_SIZE};
use crate::vma::Vma;
use crate::xarray::XArray;
use gmem_sync::atomic::{AtomicBool, AtomicU64, Ordering};
use gmem_sync::thread::spin_hint;
use gmem_sync::{Arc, LockClass, RwLockReadGuard, RwLockWriteGuard, RwSem, Weak};
use std::any::Any;
use std::fmt;

/// The lock class of every mapping's invalidate lock (`mapping.invalidate_lock` in lockdep).
pub static INVALIDATE_LOCK: LockClass = LockClass::new("mapping.invalidate_lock");
/// The lock class of every mapping's `i_mmap_rwsem` (the reverse map of its file mappings).
#[doc(alias = "i_mmap_rwsem")]
pub static I_MMAP_RWSEM: LockClass = LockClass::new("mapping.i_mmap_rwsem");

/// `AS_UNEVICTABLE`.
pub const AS_UNEVICTABLE: u64 = 1 << 0;
/// `AS_INACCESSIBLE`: the kernel must not read or write the pages (guest private memory).
pub const AS_INACCESSIBLE: u64 = 1 << 1;

/// Entries of `i_private_list` (guest_memfd: its `struct kvm_gmem` instances).
pub type PrivateList = Vec<Arc<dyn Any + Send + Sync>>;

/// Result of `error_remove_folio` (`enum mf_result`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MfResult {
    /// `MF_IGNORED`.
    Ignored,
    /// `MF_FAILED`.
    Failed,
    /// `MF_DELAYED`: the owner will handle the error when the memory is next used.
    Delayed,
    /// `MF_RECOVERED`.
    Recovered,
}

/// `migrate_folio(mapping, dst, src, mode)`.
pub type MigrateFolioFn = fn(&AddressSpace, Folio<'_>, Folio<'_>) -> KResult<()>;

/// `struct address_space_operations`: the hooks a filesystem gives its page cache. A `None`
/// hook behaves as the kernel's NULL pointer does at each call site.
#[derive(Debug)]
pub struct AddressSpaceOperations {
    /// For diagnostics.
    pub name: &'static str,
    /// `migrate_folio(mapping, dst, src, mode)`.
    pub migrate_folio: Option<MigrateFolioFn>,
    /// `error_remove_folio(mapping, folio)`: memory failure hit a page-cache folio.
    pub error_remove_folio: Option<fn(&AddressSpace, Folio<'_>) -> MfResult>,
    /// `free_folio(folio)`: the page cache dropped the folio. The kernel hook has no mapping
    /// argument (folio->mapping is already cleared); the model passes the mapping so that the
    /// hook can reach its owner's context (`a_private`), which in the kernel is global
    /// (`kvm_x86_ops`).
    pub free_folio: Option<fn(&AddressSpace, Folio<'_>)>,
}

/// The page cache of files that give no hooks (`empty_aops`).
pub static EMPTY_AOPS: AddressSpaceOperations =
    AddressSpaceOperations { name: "empty_aops", migrate_folio: None, error_remove_folio: None, free_folio: None };

/// `struct address_space`.
pub struct AddressSpace {
    host_ino: u64,
    machine: Arc<Machine>,
    i_pages: XArray<u64>,
    invalidate_lock: RwSem<PrivateList>,
    a_ops: &'static AddressSpaceOperations,
    a_private: Option<Arc<dyn Any + Send + Sync>>,
    flags: AtomicU64,
    nrpages: AtomicU64,
    /// `i_mmap` under `i_mmap_rwsem`: the VMAs mapping this file, ordered by `vm_pgoff` (the
    /// interval tree's order). Weak: a VMA is unlinked before it is freed, and the link must not
    /// keep it (and through its file, this mapping) alive.
    i_mmap: RwSem<Vec<Weak<Vma>>>,
    /// Test-only: truncation skips `unmap_mapping_folio`, so a negative control can show that
    /// INV-NO-STALE-PFN catches the missing reverse-map walk.
    skip_truncate_unmap_for_test: AtomicBool,
}

impl fmt::Debug for AddressSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddressSpace")
            .field("host_ino", &self.host_ino)
            .field("a_ops", &self.a_ops.name)
            .field("nrpages", &self.nrpages())
            .finish()
    }
}

impl AddressSpace {
    /// A new, empty page cache for inode `host_ino`.
    pub fn new(
        machine: Arc<Machine>,
        host_ino: u64,
        a_ops: &'static AddressSpaceOperations,
        a_private: Option<Arc<dyn Any + Send + Sync>>,
    ) -> AddressSpace {
        AddressSpace {
            host_ino,
            i_pages: XArray::with_injector(machine.inject.clone()),
            machine,
            invalidate_lock: RwSem::new(&INVALIDATE_LOCK, Vec::new()),
            a_ops,
            a_private,
            flags: AtomicU64::new(0),
            nrpages: AtomicU64::new(0),
            i_mmap: RwSem::new(&I_MMAP_RWSEM, Vec::new()),
            skip_truncate_unmap_for_test: AtomicBool::new(false),
        }
    }

    /// Test-only negative control: truncation stops calling `unmap_mapping_folio` for mapped
    /// folios (the bug the reverse map fixes), so that a test can show the stale SPTE it leaves.
    pub fn skip_truncate_unmap_for_test(&self) {
        self.skip_truncate_unmap_for_test.store(true, Ordering::Relaxed);
    }

    /// `vma_interval_tree_insert` under `i_mmap_lock_write`.
    #[doc(alias = "vma_link_file")]
    pub(crate) fn i_mmap_insert(&self, vma: &Arc<Vma>) {
        let mut tree = self.i_mmap.write();
        let at = tree
            .iter()
            .position(|other| other.upgrade().is_some_and(|other| (other.pgoff, other.start) > (vma.pgoff, vma.start)))
            .unwrap_or(tree.len());
        tree.insert(at, Arc::downgrade(vma));
    }

    /// `vma_interval_tree_remove` under `i_mmap_lock_write`.
    #[doc(alias = "unlink_file_vma")]
    pub(crate) fn i_mmap_remove(&self, vma: &Vma) {
        let mut tree = self.i_mmap.write();
        let before = tree.len();
        tree.retain(|other| !std::ptr::eq(other.as_ptr(), vma));
        self.machine.warnings.warn_on_once(tree.len() + 1 != before, || "i_mmap: unlinking a VMA not linked".into());
    }

    /// `mapping_mapped`: whether any VMA maps the file.
    pub fn mapping_mapped(&self) -> bool {
        !self.i_mmap.read().is_empty()
    }

    /// How many VMAs map the file.
    pub fn i_mmap_len(&self) -> usize {
        self.i_mmap.read().len()
    }

    /// The VMAs of `i_mmap` that overlap the file indices `[first, last]`
    /// (`vma_interval_tree_foreach`), in tree order. The caller holds `i_mmap_rwsem`.
    fn vmas_overlapping(tree: &[Weak<Vma>], first: u64, last: u64) -> Vec<Arc<Vma>> {
        tree.iter().filter_map(Weak::upgrade).filter(|vma| vma.pgoff <= last && vma.last_pgoff() >= first).collect()
    }

    /// `folio_mapped`: whether a present PTE of any VMA maps a page of the folio. The model keeps
    /// no `_mapcount`; it asks the reverse map, which is equivalent (every present file PTE is in
    /// a VMA linked in `i_mmap`).
    #[doc(alias = "_mapcount")]
    pub fn folio_mapped(&self, folio: Folio<'_>) -> bool {
        let first = folio.index().0;
        let last = first + folio.nr_pages() - 1;
        let tree = self.i_mmap.read();
        Self::vmas_overlapping(&tree, first, last)
            .iter()
            .any(|vma| vma.maps_frames(first, last, folio.pfn(), folio.nr_pages()))
    }

    /// `unmap_mapping_folio` (mm/memory.c): with the folio locked, zap every PTE that maps it,
    /// in every VMA of `i_mmap` overlapping its indices (`unmap_mapping_range_tree` →
    /// `zap_page_range_single` with `details->single_folio`), each inside an `MMU_NOTIFY_CLEAR`
    /// invalidation of that VMA's address space, under `i_mmap_lock_read`. Its zap has
    /// `ZAP_FLAG_DROP_MARKER`: the guard markers at the folio's indices go too.
    pub fn unmap_mapping_folio(&self, folio: Folio<'_>) {
        debug_assert!(folio.test_locked());
        let first = folio.index().0;
        let last = first + folio.nr_pages() - 1;
        let tree = self.i_mmap.read();
        for vma in Self::vmas_overlapping(&tree, first, last) {
            vma.zap_file_range(first, last, Some((folio.pfn(), folio.nr_pages())));
            vma.drop_file_guards(first, last);
        }
    }

    /// `unmap_mapping_pages(mapping, start, nr, even_cows)`: zap every PTE of file indices
    /// `[start, start + nr)` in every mapping VMA (`nr == 0`: to the end of the file). The
    /// model's file mappings are all shared, so `even_cows` changes nothing.
    pub fn unmap_mapping_pages(&self, start: u64, nr: u64, _even_cows: bool) {
        let last = if nr == 0 { u64::MAX } else { start.saturating_add(nr - 1) };
        if last < start {
            return;
        }
        let tree = self.i_mmap.read();
        for vma in Self::vmas_overlapping(&tree, start, last) {
            vma.zap_file_range(start, last, None);
        }
    }

    /// `unmap_mapping_range(mapping, holebegin, holelen, even_cows)`: the byte range rounded
    /// outwards to pages (`holelen == 0`: to the end of the file).
    #[doc(alias = "unmap_mapping_range_tree")]
    pub fn unmap_mapping_range(&self, holebegin: i64, holelen: i64, even_cows: bool) {
        let hba = holebegin as u64 >> PAGE_SHIFT;
        let mut hlen = ((holelen as u64).wrapping_add(PAGE_SIZE - 1)) >> PAGE_SHIFT;
        // Check for overflow.
        if hba.checked_add(hlen).is_none_or(|end| end > i64::MAX as u64 >> PAGE_SHIFT) {
            hlen = 0;
        }
        self.unmap_mapping_pages(hba, hlen, even_cows);
    }

    /// `truncate_cleanup_folio`: a mapped folio is unmapped from every user page table first.
    #[doc(alias("truncate_inode_folio", "truncate_inode_pages_range"))]
    fn truncate_cleanup_folio(&self, folio: Folio<'_>) {
        if self.skip_truncate_unmap_for_test.load(Ordering::Relaxed) {
            return;
        }
        if self.folio_mapped(folio) {
            self.unmap_mapping_folio(folio);
        }
    }

    /// `hwpoison_user_mappings` → `unmap_poisoned_folio` → `try_to_unmap(TTU_HWPOISON)`: nothing
    /// to do if the folio is not mapped; otherwise the file rmap walk (`rmap_walk_file`) calls
    /// `try_to_unmap_one` on each VMA of `i_mmap` overlapping the folio, in tree order, and stops
    /// as soon as the folio is no longer mapped (`rwc->done = folio_not_mapped`). Each call
    /// brackets its work with an `MMU_NOTIFY_CLEAR` invalidation of the folio's span in that VMA.
    /// Killing the processes that mapped the page (`kill_procs`) is not modelled.
    fn hwpoison_user_mappings(&self, folio: Folio<'_>) {
        if !self.folio_mapped(folio) {
            return;
        }
        let first = folio.index().0;
        let last = first + folio.nr_pages() - 1;
        let tree = self.i_mmap.read();
        for vma in Self::vmas_overlapping(&tree, first, last) {
            vma.try_to_unmap_folio(first, last, folio.pfn(), folio.nr_pages());
            if !Self::vmas_overlapping(&tree, first, last)
                .iter()
                .any(|vma| vma.maps_frames(first, last, folio.pfn(), folio.nr_pages()))
            {
                break;
            }
        }
    }

    /// The machine the page cache allocates from.
    pub fn machine(&self) -> &Arc<Machine> {
        &self.machine
    }

    /// `mapping->host->i_ino`.
    pub fn host_ino(&self) -> u64 {
        self.host_ino
    }

    /// `mapping->a_ops`.
    pub fn a_ops(&self) -> &'static AddressSpaceOperations {
        self.a_ops
    }

    /// The owner's context for the a_ops hooks (see [`AddressSpaceOperations::free_folio`]).
    pub fn a_private(&self) -> Option<&Arc<dyn Any + Send + Sync>> {
        self.a_private.as_ref()
    }

    /// `filemap_invalidate_lock`: exclusive; gives the `i_private_list` it protects.
    #[track_caller]
    #[doc(alias = "filemap_invalidate_lock")]
    pub fn invalidate_lock(&self) -> RwLockWriteGuard<'_, PrivateList> {
        self.invalidate_lock.write()
    }

    /// `filemap_invalidate_lock_shared`.
    #[track_caller]
    #[doc(alias = "filemap_invalidate_lock_shared")]
    pub fn invalidate_lock_shared(&self) -> RwLockReadGuard<'_, PrivateList> {
        self.invalidate_lock.read()
    }

    /// `mapping_set_unevictable` / `mapping_set_inaccessible` style flag setting.
    pub fn set_flags(&self, flags: u64) {
        self.flags.fetch_or(flags, Ordering::Relaxed);
    }

    /// `mapping_set_inaccessible`: inaccessible mappings are also unevictable (the kernel helper
    /// sets both bits, which is what the seed's `WARN_ON_ONCE(!mapping_unevictable())` relies on).
    #[doc(alias = "mapping_set_inaccessible")]
    pub fn set_inaccessible(&self) {
        self.set_flags(AS_UNEVICTABLE | AS_INACCESSIBLE);
    }

    /// `mapping_unevictable`.
    #[doc(alias = "mapping_unevictable")]
    pub fn unevictable(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & AS_UNEVICTABLE != 0
    }

    /// `mapping_inaccessible`.
    pub fn inaccessible(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & AS_INACCESSIBLE != 0
    }

    /// `mapping->nrpages`.
    pub fn nrpages(&self) -> u64 {
        self.nrpages.load(Ordering::Relaxed)
    }

    fn folio(&self, pfn: u64) -> Folio<'_> {
        Folio::from_pfn(&self.machine.mem, crate::Pfn(pfn))
    }

    /// The folio whose range holds `index` (`xa_load`), without taking a reference: for
    /// checkers that look at the page cache while nothing changes it.
    pub fn peek_folio(&self, index: PgOff) -> Option<Folio<'_>> {
        self.i_pages.load(index.0).map(|pfn| self.folio(pfn))
    }

    /// `filemap_get_folio(mapping, index)` (`filemap_get_entry`): a referenced folio, or `None`.
    /// Lock-free: try_get, then recheck that the entry did not change under us.
    #[doc(alias("filemap_get_entry", "filemap_get_folio"))]
    pub fn get_folio(&self, index: PgOff) -> Option<Folio<'_>> {
        loop {
            let pfn = self.i_pages.load(index.0)?;
            let folio = self.folio(pfn);
            if !folio.try_get() {
                spin_hint();
                continue;
            }
            if self.i_pages.load(index.0) != Some(pfn) {
                folio.put();
                spin_hint();
                continue;
            }
            return Some(folio);
        }
    }

    /// `filemap_grab_folio(mapping, index)` = `__filemap_get_folio(FGP_LOCK | FGP_ACCESSED |
    /// FGP_CREAT)`: the folio at `index`, locked and referenced, allocated and inserted if absent.
    /// ENOMEM when allocation (or xarray node allocation) fails.
    #[doc(alias("__filemap_get_folio", "filemap_grab_folio"))]
    pub fn grab_folio(&self, index: PgOff) -> KResult<Folio<'_>> {
        loop {
            if let Some(folio) = self.get_folio(index) {
                folio.lock();
                // The folio may have been truncated while we waited for its lock.
                if folio.mapping_ino() != self.host_ino || folio.index() != index {
                    folio.unlock();
                    folio.put();
                    continue;
                }
                return Ok(folio);
            }
            if let Some(folio) = self.grab_new_folio(index)? {
                return Ok(folio);
            }
        }
    }

    /// The `FGP_CREAT` half of [`grab_folio`](Self::grab_folio): allocate a locked folio and
    /// insert it at `index`. `Ok(None)`: another inserter won the race, look again. Kept out of
    /// line so that the lookup (the hot path) stays small.
    #[inline(never)]
    fn grab_new_folio(&self, index: PgOff) -> KResult<Option<Folio<'_>>> {
        let folio = Folio::alloc(&self.machine.mem, 0)?;
        // __folio_set_locked: nobody else can see the new folio yet.
        assert!(folio.trylock());
        match self.add_folio(folio, index) {
            Ok(()) => Ok(Some(folio)),
            Err(Errno::EEXIST) => {
                // Lost the race with another inserter: drop ours and look again.
                folio.unlock();
                folio.put();
                Ok(None)
            }
            Err(errno) => {
                folio.unlock();
                folio.put();
                Err(errno)
            }
        }
    }

    /// `filemap_add_folio`: inserts a locked folio; the page cache takes its own reference.
    #[doc(alias = "filemap_add_folio")]
    fn add_folio(&self, folio: Folio<'_>, index: PgOff) -> KResult<()> {
        folio.set_mapping(self.host_ino, index);
        folio.ref_add(1);
        match self.i_pages.insert(index.0, folio.pfn().0) {
            Ok(()) => {
                self.nrpages.fetch_add(folio.nr_pages(), Ordering::Relaxed);
                Ok(())
            }
            Err(errno) => {
                folio.set_mapping(0, PgOff(0));
                folio.put();
                // __filemap_add_folio reports an occupied slot as EEXIST.
                Err(if errno == Errno::EBUSY { Errno::EEXIST } else { errno })
            }
        }
    }

    /// `filemap_remove_folio` + `filemap_free_folio`: the folio must be locked and in this page
    /// cache. Calls `a_ops->free_folio`, then drops the page cache's reference.
    #[doc(alias("filemap_free_folio", "filemap_remove_folio"))]
    fn remove_folio(&self, folio: Folio<'_>) {
        debug_assert!(folio.test_locked());
        let erased = self.i_pages.erase(folio.index().0);
        debug_assert_eq!(erased, Some(folio.pfn().0));
        self.nrpages.fetch_sub(folio.nr_pages(), Ordering::Relaxed);
        folio.set_mapping(0, folio.index());
        if let Some(free_folio) = self.a_ops.free_folio {
            free_folio(self, folio);
        }
        folio.put();
    }

    /// `truncate_inode_pages_range(mapping, lstart, lend)`: removes every folio wholly inside the
    /// byte range `[lstart, lend]` (`lend` inclusive, -1 meaning "to the end") and zeroes the
    /// partial pages at either end.
    pub fn truncate_range(&self, lstart: i64, lend: i64) {
        let lstart = lstart as u64;
        let partial_start = lstart & (PAGE_SIZE - 1);
        let start = (lstart + PAGE_SIZE - 1) >> PAGE_SHIFT;
        // `lend == -1` is "the end of the file"; otherwise the last fully covered page.
        let (end_exclusive, partial_end) = if lend == -1 {
            (u64::MAX, None)
        } else {
            let lend = lend as u64;
            let end = (lend + 1) >> PAGE_SHIFT;
            let tail = (lend + 1) & (PAGE_SIZE - 1);
            (end, (tail != 0).then_some((end, tail)))
        };
        if partial_start != 0 {
            let index = PgOff(lstart >> PAGE_SHIFT);
            let stop = match partial_end {
                Some((end, tail)) if end == index.0 => tail,
                _ => PAGE_SIZE,
            };
            self.zero_partial(index, partial_start, stop - partial_start);
        }
        if let Some((end, tail)) = partial_end {
            if end >= start && !(partial_start != 0 && end == lstart >> PAGE_SHIFT) {
                self.zero_partial(PgOff(end), 0, tail);
            }
        }
        if start < end_exclusive {
            self.remove_range(start, end_exclusive - 1);
        }
    }

    fn zero_partial(&self, index: PgOff, offset: u64, len: u64) {
        if let Some(folio) = self.get_folio(index) {
            folio.lock();
            if folio.mapping_ino() == self.host_ino {
                folio.zero_range(offset, len);
            }
            folio.unlock();
            folio.put();
        }
    }

    /// Removes every folio with an index in `[first, last]`.
    fn remove_range(&self, first: u64, last: u64) {
        let mut index = first;
        while let Some(pfn) = self.i_pages.find(&mut index, last) {
            let folio = self.folio(pfn);
            if folio.try_get() {
                folio.lock();
                if folio.mapping_ino() == self.host_ino && folio.index().0 == index {
                    // truncate_inode_folio: unmap from user page tables, then remove.
                    self.truncate_cleanup_folio(folio);
                    self.remove_folio(folio);
                }
                folio.unlock();
                folio.put();
            }
            match index.checked_add(1) {
                Some(next) if next <= last => index = next,
                _ => break,
            }
        }
    }

    /// `truncate_inode_pages_final`: empties the page cache when the inode is evicted.
    #[doc(alias = "truncate_inode_pages_final")]
    pub fn truncate_final(&self) {
        self.truncate_range(0, -1);
    }

    /// Every folio in the page cache, in index order (for invariants and dumps). The folios are
    /// not referenced; use only where the page cache cannot change concurrently.
    pub fn folios(&self) -> Vec<(PgOff, Folio<'_>)> {
        let mut out = Vec::new();
        self.i_pages.for_each(|index, pfn| out.push((PgOff(index), self.folio(pfn))));
        out
    }

    /// `migrate_folio` through the a_ops hook (the only path guest_memfd has). A mapping without
    /// the hook would use `fallback_migrate_folio`, which the model does not implement.
    #[doc(alias = "move_to_new_folio")]
    pub fn migrate_folio(&self, dst: Folio<'_>, src: Folio<'_>) -> KResult<()> {
        match self.a_ops.migrate_folio {
            Some(migrate) => migrate(self, dst, src),
            None => Err(Errno::EOPNOTSUPP),
        }
    }

    /// `memory_failure()` on the page-cache folio at `index`: sets hwpoison first, as
    /// memory_failure does before it identifies the page's owner; with the folio locked, unmaps
    /// it from every user page table (`hwpoison_user_mappings`), then `me_pagecache_clean` →
    /// `truncate_error_folio` → `a_ops->error_remove_folio`. ENOENT: no folio there.
    #[doc(alias = "truncate_error_folio")]
    pub fn memory_failure(&self, index: PgOff) -> KResult<MfResult> {
        let folio = self.get_folio(index).ok_or(Errno::ENOENT)?;
        if folio.test_set_hwpoison() {
            // "already hardware poisoned": memory_failure returns -EHWPOISON.
            folio.put();
            return Err(Errno::EHWPOISON);
        }
        folio.lock();
        let result = if folio.mapping_ino() != self.host_ino {
            MfResult::Ignored
        } else {
            self.hwpoison_user_mappings(folio);
            match self.a_ops.error_remove_folio {
                Some(error_remove) => error_remove(self, folio),
                None => MfResult::Ignored,
            }
        };
        folio.unlock();
        folio.put();
        Ok(result)
    }
}

impl Drop for AddressSpace {
    fn drop(&mut self) {
        // Eviction normally empties the page cache first (Inode::evict); this only catches
        // mappings that were never attached to an inode.
        if self.nrpages() != 0 {
            self.truncate_final();
        }
        self.i_pages.destroy();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::MachineConfig;

    fn mapping() -> AddressSpace {
        AddressSpace::new(Machine::new(MachineConfig::tiny(64)), 7, &EMPTY_AOPS, None)
    }

    #[test]
    fn grab_inserts_once_and_lookup_finds_it() {
        let mapping = mapping();
        let folio = mapping.grab_folio(PgOff(3)).unwrap();
        assert!(folio.test_locked());
        assert_eq!(folio.refcount(), 2, "page cache + caller");
        folio.unlock();
        folio.put();
        let again = mapping.get_folio(PgOff(3)).unwrap();
        assert_eq!(again, folio);
        again.put();
        assert_eq!(mapping.nrpages(), 1);
        assert!(mapping.get_folio(PgOff(4)).is_none());
    }

    #[test]
    fn truncate_frees_whole_pages_only() {
        let mapping = mapping();
        for index in 0..4 {
            let folio = mapping.grab_folio(PgOff(index)).unwrap();
            folio.write(0, &[0xaa; 16]);
            folio.unlock();
            folio.put();
        }
        // Bytes [4096 + 8, 3 * 4096): page 1 is partial (zeroed from byte 8), page 2 is removed.
        mapping.truncate_range(4096 + 8, 3 * 4096 - 1);
        assert_eq!(mapping.nrpages(), 3);
        assert!(mapping.get_folio(PgOff(2)).is_none());
        let partial = mapping.get_folio(PgOff(1)).unwrap();
        let mut buf = [0u8; 16];
        partial.read(0, &mut buf);
        assert_eq!(&buf[..8], &[0xaa; 8]);
        assert_eq!(&buf[8..], &[0; 8]);
        partial.put();
        mapping.truncate_final();
        assert_eq!(mapping.nrpages(), 0);
        assert_eq!(mapping.machine().mem.allocated_pages(), 0, "every frame went back");
    }

    #[test]
    fn allocation_failure_leaves_no_entry() {
        let mapping = mapping();
        mapping.machine().inject.arm(gmem_sync::inject::FaultPoint::AllocFolio, 0, 1);
        assert_eq!(mapping.grab_folio(PgOff(0)).unwrap_err(), Errno::ENOMEM);
        assert_eq!(mapping.nrpages(), 0);
        let folio = mapping.grab_folio(PgOff(0)).expect("the fault fired once only");
        folio.unlock();
        folio.put();
    }
}
