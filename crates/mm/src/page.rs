//! Physical frames: the memmap (`struct page`) and a page allocator.
//!
//! Every frame has a permanent [`Page`] descriptor, as in the kernel's memmap: a descriptor is
//! never freed, only its refcount drops to zero and the frame goes back to the allocator. That is
//! what makes the lock-free page-cache lookup (`folio_try_get` on a frame that may have just been
//! freed, then a recheck) safe in the kernel, and it is what makes it safe here.
//!
//! Frames carry contents so that data integrity can be checked. A frame's contents survive being
//! freed and reallocated (the kernel does not clear pages on free either), so code that forgets
//! to zero a page before handing it out leaks stale data in the model just as it would on
//! hardware. Storage for contents is allocated the first time a frame is written; until then the
//! frame reads as zero.
//!
//! Each descriptor has a generation that changes whenever the frame is freed. A holder of
//! `(pfn, generation)` can therefore tell exactly whether the frame it refers to is still the one
//! it looked up, which is how stale SPTEs and TLB entries are detected.
//!
//! Writes come in two kinds. A *host* write ([`PhysMem::write`], [`PhysMem::clear`],
//! [`PhysMem::copy`]) is the CPU running kernel or user code; a platform memory protection
//! installed with [`PhysMem::set_host_write_check`] (the SEV-SNP RMP) is consulted first, and a
//! write it forbids is an oops recorded in the machine's WARN registry, with the frame left
//! unchanged (the faulting store never retires). A write that is not the host CPU's
//! ([`PhysMem::write_unchecked`]) skips that check: a vCPU in guest mode, whose checks its own
//! page walk already made, or the platform's security processor (the SEV firmware), which the
//! RMP does not police.

use crate::errno::{Errno, KResult};
use crate::types::{Pfn, PAGE_SIZE};
use gmem_sync::atomic::{AtomicI32, AtomicPtr, AtomicU64, AtomicU8, Ordering};
use gmem_sync::freed::Poison;
use gmem_sync::inject::{FaultInjector, FaultPoint};
use gmem_sync::warn::{WarnKind, WarnRegistry};
use gmem_sync::{Arc, LockClass, Mutex};
use std::fmt;
use std::sync::OnceLock;

/// Frames per memmap chunk. Small under loom, where every atomic is tracked by the checker.
#[cfg(not(gmem_loom))]
const CHUNK_PAGES: u64 = 512;
#[cfg(gmem_loom)]
const CHUNK_PAGES: u64 = 4;

const WORDS_PER_PAGE: usize = (PAGE_SIZE / 8) as usize;

/// `PG_locked`: the folio lock.
pub(crate) const PG_LOCKED: u64 = 1 << 0;
/// `PG_uptodate`: the contents are valid (for guest_memfd: zeroed and prepared).
pub(crate) const PG_UPTODATE: u64 = 1 << 1;
/// `PG_hwpoison`: memory failure hit this page.
pub(crate) const PG_HWPOISON: u64 = 1 << 2;
/// Model-only: the frame is allocated (not in the free pool).
pub(crate) const PG_ALLOCATED: u64 = 1 << 3;
/// Model-only evidence for INV-UPTODATE-PREPARED: every page of the folio was cleared since it
/// was allocated.
pub(crate) const PG_MODEL_ZEROED: u64 = 1 << 8;
/// Model-only: a populate callback initialised the folio.
pub(crate) const PG_MODEL_POPULATED: u64 = 1 << 9;
/// Model-only: the arch prepare hook ran on the folio and succeeded.
pub(crate) const PG_MODEL_ARCH_PREPARED: u64 = 1 << 10;

static PAGE_ALLOC_LOCK: LockClass = LockClass::new("zone->lock");

/// The largest order the allocator hands out (`MAX_PAGE_ORDER` is 10 on x86; the model needs 9).
pub const MAX_ORDER: u8 = 10;

/// The contents of one frame, as words so that concurrent accesses are data-race free.
struct FrameData([AtomicU64; WORDS_PER_PAGE]);

/// `struct page`: the descriptor of one physical frame (the head page of a folio carries the
/// folio's state).
pub struct Page {
    pub(crate) flags: AtomicU64,
    pub(crate) refcount: AtomicI32,
    pub(crate) order: AtomicU8,
    /// `folio->mapping`: the inode number of the owning page cache, 0 when none.
    pub(crate) mapping: AtomicU64,
    /// `folio->index`: the page index in the owning file.
    pub(crate) index: AtomicU64,
    /// `compound_head`: the head page's pfn for a tail page of a large folio, 0 otherwise.
    pub(crate) head: AtomicU64,
    generation: AtomicU64,
    contents: AtomicPtr<FrameData>,
    /// The frame's own number: constant, so that a [`Folio`](crate::folio::Folio) handle can be
    /// the descriptor itself (`page_to_pfn`).
    pfn: u64,
    /// KASAN's page poisoning (checked builds): set when the frame is freed, with what it was
    /// and who freed it, cleared when it is allocated. The folio operations a holder of a
    /// reference performs check it (see [`crate::folio`]). Zero-sized in release builds.
    pub(crate) poison: Poison<FrameIdentity>,
}

/// What a folio's head frame was last known as, for a use-after-free report: the page cache it
/// was added to (the descriptor's `mapping` and `index` are cleared when it leaves, before it
/// is freed).
#[derive(Clone, Copy, Debug)]
pub(crate) struct FrameIdentity {
    /// `folio->mapping`, as the owning inode number.
    pub(crate) ino: u64,
    /// `folio->index`.
    pub(crate) index: u64,
}

impl Page {
    fn new(pfn: u64) -> Page {
        Page {
            pfn,
            flags: AtomicU64::new(0),
            refcount: AtomicI32::new(0),
            order: AtomicU8::new(0),
            mapping: AtomicU64::new(0),
            index: AtomicU64::new(0),
            head: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            contents: AtomicPtr::new(std::ptr::null_mut()),
            poison: Poison::default(),
        }
    }

    /// `page_to_pfn`.
    #[inline]
    pub fn pfn(&self) -> Pfn {
        Pfn(self.pfn)
    }
}

impl fmt::Debug for Page {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Page")
            .field("flags", &self.flags.load(Ordering::Relaxed))
            .field("refcount", &self.refcount.load(Ordering::Relaxed))
            .field("mapping", &self.mapping.load(Ordering::Relaxed))
            .field("index", &self.index.load(Ordering::Relaxed))
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .finish()
    }
}

#[derive(Debug, Default)]
struct FreePool {
    /// Freed frames, reused last-in first-out so that a stale pfn is reused as soon as possible
    /// (which is when a use-after-free does the most damage, and is easiest to catch).
    free: Vec<u64>,
    /// The first frame never handed out yet.
    next_fresh: u64,
}

/// A platform memory protection the CPU applies to host (not guest) writes: the SEV-SNP RMP
/// check of a hypervisor write. Implemented by the hardware model in the arch layer.
pub trait HostWriteCheck: Send + Sync {
    /// `None` if a host write to `pfn` is allowed; otherwise the text of the fault the hardware
    /// raises (the oops the kernel prints: which check failed, and the entry that made it fail).
    fn check_host_write(&self, pfn: Pfn) -> Option<String>;
}

/// Physical memory: the memmap plus the allocator.
pub struct PhysMem {
    total_pages: u64,
    /// One memmap chunk per `CHUNK_PAGES` frames: the first descriptor of a leaked
    /// `Box<[Page]>` of exactly `CHUNK_PAGES` descriptors, or null until a frame in it is first
    /// handed out. A flat pointer (not a pointer to a box of a slice) so that [`PhysMem::page`]
    /// is one dependent load and one bounds check: it is on every folio operation.
    chunks: Box<[AtomicPtr<Page>]>,
    pool: Mutex<FreePool>,
    allocated: AtomicU64,
    inject: Arc<FaultInjector>,
    /// Where a forbidden host write is reported (the machine's registry).
    warnings: Arc<WarnRegistry>,
    /// The platform's host-write check, installed once when the machine boots its platform.
    host_write_check: OnceLock<Arc<dyn HostWriteCheck>>,
}

impl fmt::Debug for PhysMem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PhysMem")
            .field("total_pages", &self.total_pages)
            .field("allocated", &self.allocated_pages())
            .finish()
    }
}

impl PhysMem {
    /// Memory of `total_pages` frames. Frame 0 is reserved and never allocated, so that a zero
    /// pfn can mean "none" in the model's own encodings. Forbidden host writes are reported to
    /// `warnings`.
    pub fn new(total_pages: u64, inject: Arc<FaultInjector>, warnings: Arc<WarnRegistry>) -> PhysMem {
        let total_pages = total_pages.max(2);
        let chunk_count = total_pages.div_ceil(CHUNK_PAGES);
        let chunks = (0..chunk_count).map(|_| AtomicPtr::new(std::ptr::null_mut())).collect();
        PhysMem {
            total_pages,
            chunks,
            pool: Mutex::new(&PAGE_ALLOC_LOCK, FreePool { free: Vec::new(), next_fresh: 1 }),
            allocated: AtomicU64::new(0),
            inject,
            warnings,
            host_write_check: OnceLock::new(),
        }
    }

    /// Installs the platform's host-write check (once per machine; a second call is a
    /// programming error of the platform set-up and panics).
    pub fn set_host_write_check(&self, check: Arc<dyn HostWriteCheck>) {
        assert!(self.host_write_check.set(check).is_ok(), "a host-write check is already installed");
    }

    /// Whether a host write to `pfn` may retire: asks the platform's check, and reports a
    /// forbidden write as an oops.
    #[inline]
    fn host_may_write(&self, pfn: Pfn) -> bool {
        let Some(check) = self.host_write_check.get() else { return true };
        match check.check_host_write(pfn) {
            None => true,
            Some(fault) => {
                self.warnings.report(WarnKind::Oops, fault);
                false
            }
        }
    }

    /// Total frames.
    pub fn total_pages(&self) -> u64 {
        self.total_pages
    }

    /// Frames currently allocated.
    pub fn allocated_pages(&self) -> u64 {
        self.allocated.load(Ordering::Relaxed)
    }

    /// The descriptor of `pfn`. The frame must have been handed out at some point (a pfn the
    /// model never produced is a programming error).
    #[inline]
    pub fn page(&self, pfn: Pfn) -> &Page {
        let chunk = self.chunks[(pfn.0 / CHUNK_PAGES) as usize].load(Ordering::Acquire);
        assert!(!chunk.is_null(), "{pfn:?} was never allocated");
        // SAFETY: chunks are installed once (under the pool lock, with Release) as the first of
        // `CHUNK_PAGES` descriptors and freed only when `self` is dropped, so a non-null chunk
        // pointer stays valid for `&self`, and `pfn % CHUNK_PAGES` is in bounds.
        unsafe { &*chunk.add((pfn.0 % CHUNK_PAGES) as usize) }
    }

    /// Whether `pfn` is a frame this memory has ever handed out.
    pub fn is_valid_pfn(&self, pfn: Pfn) -> bool {
        pfn.0 != 0
            && pfn.0 < self.total_pages
            && !self.chunks[(pfn.0 / CHUNK_PAGES) as usize].load(Ordering::Acquire).is_null()
    }

    /// The frame's generation: it changes every time the frame is freed.
    pub fn generation(&self, pfn: Pfn) -> u64 {
        self.page(pfn).generation.load(Ordering::Acquire)
    }

    /// Whether the frame is currently allocated.
    pub fn is_allocated(&self, pfn: Pfn) -> bool {
        self.page(pfn).flags.load(Ordering::Acquire) & PG_ALLOCATED != 0
    }

    /// `alloc_pages(gfp, order)`: `1 << order` naturally aligned, contiguous frames as one folio
    /// with refcount 1 on the head; tail pages point at the head (`compound_head`). The
    /// `alloc_folio` fault-injection point and exhaustion both give ENOMEM. Order 0 takes the
    /// most recently freed frame; a large order takes never-used frames (aligning the fresh
    /// cursor, the frames skipped go to the free pool), else an aligned run that is wholly free
    /// in the pool. There is no compaction: a fragmented pool fails a large order with ENOMEM, as
    /// `__GFP_NORETRY` THP allocations fail on a fragmented zone.
    #[doc(alias = "alloc_pages")]
    pub fn alloc(&self, order: u8) -> KResult<Pfn> {
        if order > MAX_ORDER || self.inject.should_fail(FaultPoint::AllocFolio) {
            return Err(Errno::ENOMEM);
        }
        let nr = 1u64 << order;
        let pfn = {
            let mut pool = self.pool.lock();
            if order == 0 {
                match pool.free.pop() {
                    Some(pfn) => pfn,
                    None if pool.next_fresh < self.total_pages => {
                        let pfn = pool.next_fresh;
                        pool.next_fresh += 1;
                        self.ensure_chunk(pfn);
                        pfn
                    }
                    None => return Err(Errno::ENOMEM),
                }
            } else {
                self.alloc_run(&mut pool, nr).ok_or(Errno::ENOMEM)?
            }
        };
        for i in 0..nr {
            let page = self.page(Pfn(pfn + i));
            page.order.store(if i == 0 { order } else { 0 }, Ordering::Relaxed);
            page.mapping.store(0, Ordering::Relaxed);
            page.index.store(0, Ordering::Relaxed);
            page.head.store(if i == 0 { 0 } else { pfn }, Ordering::Relaxed);
            page.refcount.store(if i == 0 { 1 } else { 0 }, Ordering::Relaxed);
            page.poison.unpoison();
            page.flags.store(PG_ALLOCATED, Ordering::Release);
        }
        self.allocated.fetch_add(nr, Ordering::Relaxed);
        Ok(Pfn(pfn))
    }

    /// An aligned run of `nr` free frames, taken out of the pool (called with the pool lock).
    fn alloc_run(&self, pool: &mut FreePool, nr: u64) -> Option<u64> {
        let aligned = pool.next_fresh.div_ceil(nr) * nr;
        if aligned + nr <= self.total_pages {
            for skipped in pool.next_fresh..aligned {
                self.ensure_chunk(skipped);
                pool.free.push(skipped);
            }
            for pfn in (aligned..aligned + nr).step_by(CHUNK_PAGES.min(nr) as usize) {
                self.ensure_chunk(pfn);
            }
            pool.next_fresh = aligned + nr;
            return Some(aligned);
        }
        let free: std::collections::HashSet<u64> = pool.free.iter().copied().collect();
        let start = free
            .iter()
            .copied()
            .filter(|&pfn| pfn % nr == 0 && pfn != 0)
            .filter(|&pfn| (pfn..pfn + nr).all(|p| free.contains(&p)))
            .min()?;
        pool.free.retain(|&pfn| pfn < start || pfn >= start + nr);
        Some(start)
    }

    /// `split_folio_to_order(folio, 0)` on the frames of the large folio at `head`, whose
    /// references are exactly one per mapped subpage (`mapped[i]`): each subpage becomes an
    /// order-0 folio, a mapped one with its PTE's reference, an unmapped one freed. The
    /// references are frozen first (`folio_ref_freeze`: a compare-and-swap from that count to
    /// zero), so a reference taken since the caller counted makes the split fail (false), as
    /// `-EAGAIN` does in the kernel, instead of being lost.
    pub(crate) fn split_folio(&self, head: Pfn, mapped: &[bool]) -> bool {
        let page = self.page(head);
        let nr = 1u64 << page.order.load(Ordering::Relaxed);
        assert_eq!(mapped.len() as u64, nr, "one entry per subpage");
        let expected = mapped.iter().filter(|&&m| m).count() as i32;
        if page.refcount.compare_exchange(expected, 0, Ordering::AcqRel, Ordering::Relaxed).is_err() {
            return false;
        }
        let flags = page.flags.load(Ordering::Relaxed);
        // Tails first, the head last: a lookup that still resolves a tail to the head finds the
        // head's references frozen (a try-get fails and retries) until every tail is a folio of
        // its own; the head's own count is the unfreeze (page_ref_unfreeze).
        for i in (1..nr).chain(std::iter::once(0)) {
            let sub = self.page(head.offset(i));
            sub.flags.store(flags & !PG_LOCKED, Ordering::Relaxed);
            sub.order.store(0, Ordering::Relaxed);
            if i == 0 {
                sub.refcount.store(i32::from(mapped[0]), Ordering::Release);
            } else {
                sub.refcount.store(i32::from(mapped[i as usize]), Ordering::Relaxed);
                sub.head.store(0, Ordering::Release);
            }
        }
        for i in 0..nr {
            if !mapped[i as usize] {
                self.free(head.offset(i));
            }
        }
        true
    }

    /// Called with the pool lock held.
    fn ensure_chunk(&self, pfn: u64) {
        let slot = &self.chunks[(pfn / CHUNK_PAGES) as usize];
        if slot.load(Ordering::Acquire).is_null() {
            let base = pfn / CHUNK_PAGES * CHUNK_PAGES;
            let pages: Box<[Page]> = (0..CHUNK_PAGES).map(|i| Page::new(base + i)).collect();
            debug_assert_eq!(pages.len() as u64, CHUNK_PAGES);
            let chunk = Box::into_raw(pages).cast::<Page>();
            slot.store(chunk, Ordering::Release);
        }
    }

    /// `__free_pages`: returns the frames of a folio whose refcount reached zero to the pool.
    /// Bumps each frame's generation first, so any holder of an old `(pfn, generation)` sees
    /// the change.
    #[cfg_attr(any(debug_assertions, gmem_loom), track_caller)]
    #[doc(alias = "__free_pages")]
    pub(crate) fn free(&self, pfn: Pfn) {
        let nr = 1u64 << self.page(pfn).order.load(Ordering::Relaxed);
        for i in 0..nr {
            let page = self.page(pfn.offset(i));
            page.poison.poison();
            page.generation.fetch_add(1, Ordering::AcqRel);
            let old_flags = page.flags.swap(0, Ordering::AcqRel);
            assert!(old_flags & PG_ALLOCATED != 0, "double free of {:?}", pfn.offset(i));
            page.mapping.store(0, Ordering::Relaxed);
            page.head.store(0, Ordering::Relaxed);
            page.order.store(0, Ordering::Relaxed);
        }
        self.allocated.fetch_sub(nr, Ordering::Relaxed);
        let mut pool = self.pool.lock();
        // Tails first, so that the head is the first frame order 0 reuses.
        pool.free.extend((0..nr).rev().map(|i| pfn.0 + i));
    }

    /// `compound_head`: the head page's pfn of the folio `pfn` belongs to.
    #[inline]
    pub fn compound_head(&self, pfn: Pfn) -> Pfn {
        match self.page(pfn).head.load(Ordering::Acquire) {
            0 => pfn,
            head => Pfn(head),
        }
    }

    fn contents(&self, pfn: Pfn) -> Option<&FrameData> {
        let data = self.page(pfn).contents.load(Ordering::Acquire);
        // SAFETY: contents are installed once with a compare-exchange and freed only when `self`
        // is dropped.
        (!data.is_null()).then(|| unsafe { &*data })
    }

    fn contents_or_alloc(&self, pfn: Pfn) -> &FrameData {
        if let Some(data) = self.contents(pfn) {
            return data;
        }
        let fresh = Box::into_raw(Box::new(FrameData(std::array::from_fn(|_| AtomicU64::new(0)))));
        let slot = &self.page(pfn).contents;
        match slot.compare_exchange(std::ptr::null_mut(), fresh, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {}
            Err(_) => {
                // SAFETY: `fresh` was never published; we still own it.
                drop(unsafe { Box::from_raw(fresh) });
            }
        }
        self.contents(pfn).expect("installed above")
    }

    /// Reads `buf.len()` bytes of the frame starting at byte `offset`.
    pub fn read(&self, pfn: Pfn, offset: usize, buf: &mut [u8]) {
        assert!(offset + buf.len() <= PAGE_SIZE as usize);
        let Some(data) = self.contents(pfn) else {
            buf.fill(0);
            return;
        };
        for (i, byte) in buf.iter_mut().enumerate() {
            let at = offset + i;
            let word = data.0[at / 8].load(Ordering::Relaxed);
            *byte = (word >> ((at % 8) * 8)) as u8;
        }
    }

    /// A host write of `bytes` into the frame starting at byte `offset` (see the module docs:
    /// the platform's host-write check applies). Concurrent writers of different bytes of one
    /// word do not clobber each other (each byte is merged atomically), as on real memory.
    pub fn write(&self, pfn: Pfn, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= PAGE_SIZE as usize);
        if self.host_may_write(pfn) {
            self.store(pfn, offset, bytes);
        }
    }

    /// A write that is not the host CPU's: a vCPU in guest mode (whose page walk made the
    /// platform's checks) or the platform's firmware.
    pub fn write_unchecked(&self, pfn: Pfn, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= PAGE_SIZE as usize);
        self.store(pfn, offset, bytes);
    }

    /// Writes `bytes` at `offset`: a byte of a partly written word is merged into it, a word
    /// written whole is one store (it keeps no other writer's bytes). Under loom every access
    /// is tracked, and a page written as 8192 read-modify-writes would overflow loom's 16-bit
    /// per-thread clocks in a model that clears a few pages (a TD's teardown clears 16).
    fn store(&self, pfn: Pfn, offset: usize, bytes: &[u8]) {
        let data = self.contents_or_alloc(pfn);
        let mut i = 0;
        while i < bytes.len() {
            let at = offset + i;
            let word = &data.0[at / 8];
            if at % 8 == 0 && bytes.len() - i >= 8 {
                // A whole word: no other byte of it to keep.
                let value = u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
                word.store(value, Ordering::Relaxed);
                i += 8;
                continue;
            }
            let shift = (at % 8) * 8;
            word.fetch_and(!(0xffu64 << shift), Ordering::Relaxed);
            word.fetch_or((bytes[i] as u64) << shift, Ordering::Relaxed);
            i += 1;
        }
    }

    /// `clear_highpage`: the host zeroes the whole frame.
    pub fn clear(&self, pfn: Pfn) {
        if !self.host_may_write(pfn) {
            return;
        }
        if let Some(data) = self.contents(pfn) {
            for word in data.0.iter() {
                word.store(0, Ordering::Relaxed);
            }
        }
    }

    /// `copy_highpage`: the host copies a whole frame.
    pub fn copy(&self, target: Pfn, source: Pfn) {
        let mut buf = vec![0u8; PAGE_SIZE as usize];
        self.read(source, 0, &mut buf);
        self.write(target, 0, &buf);
    }
}

impl Drop for PhysMem {
    fn drop(&mut self) {
        for slot in self.chunks.iter() {
            let chunk = slot.load(Ordering::Acquire);
            if chunk.is_null() {
                continue;
            }
            // SAFETY: `&mut self` means no reader is left; each chunk was made by Box::into_raw of
            // a `Box<[Page]>` of exactly `CHUNK_PAGES` descriptors (ensure_chunk).
            let chunk = unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(chunk, CHUNK_PAGES as usize)) };
            for page in chunk.iter() {
                let data = page.contents.load(Ordering::Acquire);
                if !data.is_null() {
                    // SAFETY: as above, made by Box::into_raw and published once.
                    drop(unsafe { Box::from_raw(data) });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_of_whole_and_partial_words_read_back() {
        let mem = PhysMem::new(8, Arc::new(FaultInjector::new()), Arc::new(WarnRegistry::new()));
        let pfn = mem.alloc(0).unwrap();
        let page: Vec<u8> = (0..PAGE_SIZE as usize).map(|i| (i * 7 + 3) as u8).collect();
        mem.write(pfn, 0, &page);
        let mut back = vec![0u8; PAGE_SIZE as usize];
        mem.read(pfn, 0, &mut back);
        assert_eq!(back, page);
        // Unaligned, spanning a partial word, two whole words and a partial one: the bytes around
        // it are kept.
        mem.write(pfn, 13, &[0xaa; 21]);
        mem.read(pfn, 0, &mut back);
        for (i, (&got, &was)) in back.iter().zip(&page).enumerate() {
            let expected = if (13..34).contains(&i) { 0xaa } else { was };
            assert_eq!(got, expected, "byte {i}");
        }
    }
}
