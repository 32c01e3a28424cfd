//! `struct folio`: a reference-counted, lockable group of pages (order 0, or order 9 for
//! anonymous transparent huge pages).
//!
//! A [`Folio`] is a *handle* to the head page's descriptor, not an owned reference: like the
//! kernel's `struct folio *`, copying it does not take a reference. References are taken and
//! dropped explicitly with [`Folio::get`], [`Folio::try_get`] and [`Folio::put`], because the
//! protocol under test is exactly who holds which reference when (INV-REFCOUNT checks that none
//! leaks). The last `put` frees the frames.
//!
//! A handle outlives its folio easily (it is a pointer, not a reference), and the descriptor it
//! points at is permanent, so the model cannot crash on it; what the kernel's KASAN reports, an
//! access to a freed page, is checked instead: in checked builds (`gmem_sync::freed`) a free
//! poisons each frame with what it was, and the operations only a holder of a reference or of
//! the lock may perform (reading or writing the contents, locking, marking uptodate, the
//! model's evidence flags) panic on a poisoned frame, naming the folio (pfn, index, inode,
//! order), the caller and its thread, and the `folio_put` that freed it. Lookups that may meet a
//! freed folio by design (`folio_try_get`, the refcount, `folio->mapping` and `->index` read
//! for a recheck) are not checked, as KASAN does not check `struct page` either.
//!
//! The handle is the head page's descriptor itself (descriptors are permanent, see
//! [`crate::page`]), resolved once when the handle is made, so the folio operations on the fault
//! path do not each repeat the memmap lookup. It stays two words, so that an `Option<Folio>` is
//! returned in registers.

use crate::page::PG_UPTODATE;
use crate::page::{Page, PhysMem, PG_HWPOISON, PG_LOCKED, PG_MODEL_ARCH_PREPARED, PG_MODEL_POPULATED, PG_MODEL_ZEROED};
use crate::types::{Pfn, PgOff, PAGE_SIZE};
use gmem_sync::atomic::{fence, Ordering};
use std::fmt;

/// A handle to a folio (its head page) in `mem`.
#[derive(Clone, Copy)]
pub struct Folio<'m> {
    mem: &'m PhysMem,
    /// `mem.page(pfn)`.
    page: &'m Page,
}

impl PartialEq for Folio<'_> {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.mem, other.mem) && self.pfn() == other.pfn()
    }
}

impl Eq for Folio<'_> {}

impl fmt::Debug for Folio<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let page = self.page;
        f.debug_struct("Folio")
            .field("pfn", &self.pfn())
            .field("index", &page.index.load(Ordering::Relaxed))
            .field("refcount", &page.refcount.load(Ordering::Relaxed))
            .field("flags", &page.flags.load(Ordering::Relaxed))
            .finish()
    }
}

impl<'m> Folio<'m> {
    /// The check of an operation that needs the folio allocated (its caller holds a reference
    /// or the lock): KASAN's report of an access to a freed page, in checked builds, naming the
    /// folio as it was and the accessor (see [`crate::page::Page::poison`]).
    #[inline]
    #[cfg_attr(any(debug_assertions, gmem_loom), track_caller)]
    fn check_allocated(self) {
        self.page.poison.check(|identity| match identity {
            Some(was) => format!("folio at pfn {:#x} index {} of inode {}", self.pfn().0, was.index, was.ino),
            None => format!("folio at pfn {:#x} (in no page cache)", self.pfn().0),
        });
    }

    /// `page_folio(pfn_to_page(pfn))`: the folio the frame `pfn` belongs to (its head page for a
    /// tail of a large folio). The frame must have been handed out at some point (see
    /// [`PhysMem::page`]).
    #[inline]
    #[doc(alias = "page_folio")]
    pub fn from_pfn(mem: &'m PhysMem, pfn: Pfn) -> Folio<'m> {
        let page = mem.page(pfn);
        match page.head.load(Ordering::Acquire) {
            0 => Folio { mem, page },
            head => Folio { mem, page: mem.page(Pfn(head)) },
        }
    }

    /// `folio_alloc`: a new folio with refcount 1 (ENOMEM on failure or injection).
    pub fn alloc(mem: &'m PhysMem, order: u8) -> crate::KResult<Folio<'m>> {
        mem.alloc(order).map(|pfn| Folio::from_pfn(mem, pfn))
    }

    /// The memory this folio lives in.
    pub fn mem(self) -> &'m PhysMem {
        self.mem
    }

    /// `folio_pfn`.
    #[inline]
    pub fn pfn(self) -> Pfn {
        self.page.pfn()
    }

    /// `folio_order`.
    pub fn order(self) -> u8 {
        self.page.order.load(Ordering::Relaxed)
    }

    /// `folio_nr_pages`.
    pub fn nr_pages(self) -> u64 {
        1 << self.order()
    }

    /// `folio->index`.
    pub fn index(self) -> PgOff {
        PgOff(self.page.index.load(Ordering::Acquire))
    }

    /// `folio_next_index`.
    pub fn next_index(self) -> PgOff {
        PgOff(self.index().0 + self.nr_pages())
    }

    /// `folio->mapping`, as the owning inode number (0: not in any page cache).
    pub fn mapping_ino(self) -> u64 {
        self.page.mapping.load(Ordering::Acquire)
    }

    pub(crate) fn set_mapping(self, ino: u64, index: PgOff) {
        let page = self.page;
        if ino != 0 {
            page.poison.identify(|| crate::page::FrameIdentity { ino, index: index.0 });
        }
        page.index.store(index.0, Ordering::Relaxed);
        page.mapping.store(ino, Ordering::Release);
    }

    /// The frame generation of the head page (see [`PhysMem::generation`]).
    pub fn generation(self) -> u64 {
        self.mem.generation(self.pfn())
    }

    /// `folio_file_pfn(folio, index)`: the pfn of the page holding file index `index`.
    #[doc(alias = "folio_file_pfn")]
    pub fn file_pfn(self, index: PgOff) -> Pfn {
        self.pfn().offset(index.0 & (self.nr_pages() - 1))
    }

    /// `folio_ref_count`.
    pub fn refcount(self) -> i32 {
        self.page.refcount.load(Ordering::Acquire)
    }

    /// `folio_get`: takes a reference; the caller must already hold one.
    #[doc(alias = "folio_get")]
    pub fn get(self) {
        let old = self.page.refcount.fetch_add(1, Ordering::Relaxed);
        assert!(old > 0, "folio_get on a free folio {:?}", self.pfn());
    }

    /// `folio_ref_add`.
    #[doc(alias = "folio_ref_add")]
    pub fn ref_add(self, count: i32) {
        let old = self.page.refcount.fetch_add(count, Ordering::Relaxed);
        assert!(old > 0, "folio_ref_add on a free folio {:?}", self.pfn());
    }

    /// `folio_try_get`: takes a reference unless the count is already zero (the folio is being
    /// freed). This is the lock-free lookup's first half; the caller must then recheck that the
    /// folio is still where it found it.
    #[doc(alias = "folio_try_get")]
    pub fn try_get(self) -> bool {
        self.page
            .refcount
            .fetch_update(Ordering::Acquire, Ordering::Relaxed, |count| (count > 0).then_some(count + 1))
            .is_ok()
    }

    /// `folio_put`: drops a reference; the last one frees the frames.
    #[cfg_attr(any(debug_assertions, gmem_loom), track_caller)]
    #[doc(alias = "folio_put")]
    pub fn put(self) {
        self.put_refs(1);
    }

    /// `folio_put_refs`.
    #[inline]
    #[cfg_attr(any(debug_assertions, gmem_loom), track_caller)]
    #[doc(alias = "folio_put_refs")]
    pub fn put_refs(self, count: i32) {
        let old = self.page.refcount.fetch_sub(count, Ordering::Release);
        assert!(old >= count, "folio refcount underflow on {:?}", self.pfn());
        if old == count {
            self.free_last();
        }
    }

    /// The last reference is gone: free the frames. Out of line, so that every `folio_put`
    /// stays a decrement and a test.
    #[cold]
    #[inline(never)]
    #[cfg_attr(any(debug_assertions, gmem_loom), track_caller)]
    fn free_last(self) {
        fence(Ordering::Acquire);
        self.mem.free(self.pfn());
    }

    fn flags(self) -> u64 {
        self.page.flags.load(Ordering::Acquire)
    }

    /// `folio_trylock`.
    #[cfg_attr(any(debug_assertions, gmem_loom), track_caller)]
    #[doc(alias = "folio_trylock")]
    pub fn trylock(self) -> bool {
        self.check_allocated();
        self.page.flags.fetch_or(PG_LOCKED, Ordering::Acquire) & PG_LOCKED == 0
    }

    /// `folio_lock`: sleeps (here: spins with a scheduler hint) until the lock is free.
    /// The first `trylock` is the fast path; the wait registers (see `gmem_sync::waits`) only
    /// once it spins. Under loom this is exactly a trylock-then-yield loop.
    #[cfg_attr(any(debug_assertions, gmem_loom), track_caller)]
    #[doc(alias = "folio_lock")]
    pub fn lock(self) {
        gmem_sync::thread::wait_for("folio lock", || format!("of pfn {:#x}", self.pfn().0).into(), || self.trylock());
    }

    /// `folio_unlock`.
    #[doc(alias = "folio_unlock")]
    pub fn unlock(self) {
        let old = self.page.flags.fetch_and(!PG_LOCKED, Ordering::Release);
        assert!(old & PG_LOCKED != 0, "folio_unlock of an unlocked folio {:?}", self.pfn());
    }

    /// `folio_test_locked`.
    pub fn test_locked(self) -> bool {
        self.flags() & PG_LOCKED != 0
    }

    /// `folio_test_uptodate`.
    #[doc(alias = "folio_test_uptodate")]
    pub fn test_uptodate(self) -> bool {
        self.flags() & PG_UPTODATE != 0
    }

    /// `folio_mark_uptodate`: the Release pairs with the Acquire in `test_uptodate`, as the
    /// kernel's `smp_wmb` in folio_mark_uptodate pairs with `smp_rmb` in folio_test_uptodate.
    #[cfg_attr(any(debug_assertions, gmem_loom), track_caller)]
    #[doc(alias = "folio_mark_uptodate")]
    pub fn mark_uptodate(self) {
        self.check_allocated();
        self.page.flags.fetch_or(PG_UPTODATE, Ordering::Release);
    }

    /// `folio_clear_uptodate`.
    pub fn clear_uptodate(self) {
        self.page.flags.fetch_and(!PG_UPTODATE, Ordering::Release);
    }

    /// `folio_test_hwpoison`.
    #[doc(alias = "folio_test_hwpoison")]
    pub fn test_hwpoison(self) -> bool {
        self.flags() & PG_HWPOISON != 0
    }

    /// `folio_test_set_hwpoison`: sets the flag, returning whether it was already set.
    pub fn test_set_hwpoison(self) -> bool {
        self.page.flags.fetch_or(PG_HWPOISON, Ordering::AcqRel) & PG_HWPOISON != 0
    }

    /// `clear_highpage(folio_page(folio, i))`. Clearing the last page of the folio also records
    /// (model-only) that the whole folio was zeroed, the evidence INV-UPTODATE-PREPARED checks.
    #[cfg_attr(any(debug_assertions, gmem_loom), track_caller)]
    #[doc(alias = "clear_highpage")]
    pub fn clear_page(self, i: u64) {
        self.check_allocated();
        self.mem.clear(self.pfn().offset(i));
        if i + 1 == self.nr_pages() {
            self.set_model_flag(PG_MODEL_ZEROED);
        }
    }

    fn set_model_flag(self, flag: u64) {
        self.page.flags.fetch_or(flag, Ordering::Release);
    }

    /// Model-only: records that a populate callback initialised the folio.
    #[cfg_attr(any(debug_assertions, gmem_loom), track_caller)]
    pub fn note_populated(self) {
        self.check_allocated();
        self.set_model_flag(PG_MODEL_POPULATED);
    }

    /// Model-only: records that the arch prepare hook ran on the folio and succeeded.
    #[cfg_attr(any(debug_assertions, gmem_loom), track_caller)]
    pub fn note_arch_prepared(self) {
        self.check_allocated();
        self.set_model_flag(PG_MODEL_ARCH_PREPARED);
    }

    /// Model-only: whether the folio was zeroed since it was allocated.
    pub fn model_zeroed(self) -> bool {
        self.flags() & PG_MODEL_ZEROED != 0
    }

    /// Model-only: whether a populate callback initialised the folio.
    pub fn model_populated(self) -> bool {
        self.flags() & PG_MODEL_POPULATED != 0
    }

    /// Model-only: whether the arch prepare hook ran on the folio.
    pub fn model_arch_prepared(self) -> bool {
        self.flags() & PG_MODEL_ARCH_PREPARED != 0
    }

    /// `folio_zero_range`.
    #[cfg_attr(any(debug_assertions, gmem_loom), track_caller)]
    #[doc(alias = "folio_zero_range")]
    pub fn zero_range(self, offset: u64, len: u64) {
        self.check_allocated();
        let mut at = offset;
        let end = offset + len;
        while at < end {
            let page = at / PAGE_SIZE;
            let in_page = at % PAGE_SIZE;
            let chunk = (PAGE_SIZE - in_page).min(end - at);
            let zeros = vec![0u8; chunk as usize];
            self.mem.write(self.pfn().offset(page), in_page as usize, &zeros);
            at += chunk;
        }
    }

    /// Reads bytes at `offset` within the folio (any span within it).
    #[cfg_attr(any(debug_assertions, gmem_loom), track_caller)]
    pub fn read(self, offset: u64, buf: &mut [u8]) {
        self.check_allocated();
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let in_page = (at % PAGE_SIZE) as usize;
            let chunk = (PAGE_SIZE as usize - in_page).min(buf.len() - done);
            self.mem.read(self.pfn().offset(at / PAGE_SIZE), in_page, &mut buf[done..done + chunk]);
            done += chunk;
        }
    }

    /// Writes bytes at `offset` within the folio.
    #[cfg_attr(any(debug_assertions, gmem_loom), track_caller)]
    pub fn write(self, offset: u64, bytes: &[u8]) {
        self.check_allocated();
        let mut done = 0usize;
        while done < bytes.len() {
            let at = offset + done as u64;
            let in_page = (at % PAGE_SIZE) as usize;
            let chunk = (PAGE_SIZE as usize - in_page).min(bytes.len() - done);
            self.mem.write(self.pfn().offset(at / PAGE_SIZE), in_page, &bytes[done..done + chunk]);
            done += chunk;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gmem_sync::inject::FaultInjector;
    use gmem_sync::Arc;

    fn mem() -> PhysMem {
        PhysMem::new(64, Arc::new(FaultInjector::new()), Arc::new(gmem_sync::warn::WarnRegistry::new()))
    }

    #[test]
    fn last_put_frees_and_bumps_generation() {
        let mem = mem();
        let folio = Folio::alloc(&mem, 0).unwrap();
        let generation = folio.generation();
        folio.get();
        folio.put();
        assert!(mem.is_allocated(folio.pfn()));
        folio.put();
        assert!(!mem.is_allocated(folio.pfn()));
        assert_ne!(folio.generation(), generation);
        assert!(!folio.try_get(), "try_get must fail on a freed folio");
    }

    #[test]
    fn contents_survive_free_until_cleared() {
        let mem = mem();
        let folio = Folio::alloc(&mem, 0).unwrap();
        folio.write(10, &[1, 2, 3]);
        let pfn = folio.pfn();
        folio.put();
        let again = Folio::alloc(&mem, 0).unwrap();
        assert_eq!(again.pfn(), pfn, "freed frames are reused first");
        let mut buf = [0u8; 3];
        again.read(10, &mut buf);
        assert_eq!(buf, [1, 2, 3], "stale data stays until someone clears the page");
        again.clear_page(0);
        again.read(10, &mut buf);
        assert_eq!(buf, [0, 0, 0]);
    }

    #[cfg(debug_assertions)]
    #[test]
    fn an_access_to_a_freed_folio_is_reported_naming_the_folio_and_the_accessor() {
        let mem = mem();
        let folio = Folio::alloc(&mem, 0).unwrap();
        folio.set_mapping(3, PgOff(5));
        folio.write(0, &[1]);
        // Leaving the page cache clears the descriptor (page_cache_delete); the report still
        // names the folio as the page cache knew it.
        folio.set_mapping(0, PgOff(0));
        folio.put();
        let freed_line = line!() - 1;
        let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| folio.write(0, &[2])))
            .expect_err("a use-after-free");
        let message = panic.downcast_ref::<String>().expect("a formatted message");
        let expected =
            format!("use-after-free: folio at pfn {:#x} index 5 of inode 3 is read at {}", folio.pfn().0, file!());
        assert!(message.starts_with(&expected), "{message}");
        assert!(
            message.contains(&format!("freed at {}:{freed_line}:", file!())),
            "the folio_put that freed it: {message}"
        );
        // Allocated again, the frame is a new folio, and the access is legitimate.
        let again = Folio::alloc(&mem, 0).unwrap();
        assert_eq!(again.pfn(), folio.pfn());
        again.write(0, &[3]);
    }

    #[test]
    fn lock_and_flags() {
        let mem = mem();
        let folio = Folio::alloc(&mem, 0).unwrap();
        assert!(folio.trylock());
        assert!(!folio.trylock());
        folio.unlock();
        assert!(!folio.test_uptodate());
        folio.mark_uptodate();
        assert!(folio.test_uptodate());
        assert!(!folio.test_set_hwpoison());
        assert!(folio.test_set_hwpoison());
        assert!(folio.test_hwpoison());
    }

    #[test]
    fn allocation_failure_is_enomem() {
        let mem = mem();
        let mut held = Vec::new();
        while let Ok(folio) = Folio::alloc(&mem, 0) {
            held.push(folio);
        }
        assert_eq!(held.len(), 63, "frame 0 is reserved");
        assert_eq!(Folio::alloc(&mem, 0).unwrap_err(), crate::Errno::ENOMEM);
    }
}
