//! MMU notifiers (`mm/mmu_notifier.c`, `include/linux/mmu_notifier.h`): how a secondary MMU (KVM)
//! learns that user mappings of an address space are about to go away.
//!
//! A subscriber registers a [`MmuNotifierOps`] trait object on an [`crate::vma::Mm`]
//! (`mmu_notifier_register`); every operation that unmaps or zaps user pages of a range (munmap,
//! `MADV_DONTNEED`, `MADV_REMOVE`) brackets the zap with
//! [`MmuNotifierOps::invalidate_range_start`] and [`MmuNotifierOps::invalidate_range_end`], with
//! `mmap_lock` held, before the pages are freed. Process exit calls [`MmuNotifierOps::release`]
//! on every subscriber and unhooks them all (`__mmu_notifier_release` in `exit_mmap`).
//!
//! The subscription list is read under SRCU, as the kernel's (`srcu` in `mmu_notifier.c`, one per
//! address space here); `mmu_notifier_unregister` calls `release` if the subscription is still
//! hooked, unhooks it, then waits for a grace period, so no callback runs once it returns.
//!
//! Truncating, punching or memory-failing a file through its descriptor reaches the address
//! spaces that map it through the file's reverse map (`i_mmap`, see [`crate::filemap`]): each
//! mapping VMA gets an `MMU_NOTIFY_CLEAR` invalidation of the folio's span on its own mm, with
//! the invalidate lock, the folio lock and `i_mmap_rwsem` held but not `mmap_lock`.
//!
//! Not modelled: `clear_young` and friends (no accessed-bit aging); `invalidate_range_start`
//! failing for non-blockable ranges (every range here is blockable).

use gmem_sync::{Arc, LockClass, Mutex, Srcu};
use std::fmt;

static SUBSCRIPTIONS_LOCK: LockClass = LockClass::new("mm->notifier_subscriptions->lock");

/// `enum mmu_notifier_event`: why a range is invalidated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmuNotifyEvent {
    /// `MMU_NOTIFY_UNMAP`: munmap.
    Unmap,
    /// `MMU_NOTIFY_CLEAR`: the PTEs are cleared (MADV_DONTNEED, hole punching through a mapping).
    Clear,
}

/// `struct mmu_notifier_range`: `[start, end)` in user virtual addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmuNotifierRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// The event.
    pub event: MmuNotifyEvent,
}

/// `struct mmu_notifier_ops`, the callbacks a secondary MMU provides. Called inside the
/// subscription list's SRCU read section, with `mmap_lock` held (munmap, MADV_DONTNEED) or with
/// `i_mmap_rwsem` held (the reverse-map walks of truncation and memory failure); they must take
/// neither.
#[doc(alias = "mmu_notifier_ops")]
pub trait MmuNotifierOps: Send + Sync + fmt::Debug {
    /// `invalidate_range_start`: from now until the matching end, the pages of the range may be
    /// unmapped and freed; the secondary MMU must drop its mappings of them and not create new
    /// ones.
    fn invalidate_range_start(&self, range: &MmuNotifierRange);
    /// `invalidate_range_end`: the primary MMU's PTEs of the range are gone.
    fn invalidate_range_end(&self, range: &MmuNotifierRange);
    /// `release`: the address space is being torn down (or the subscription unregistered).
    fn release(&self) {}
}

/// `struct mmu_notifier_subscriptions`: an address space's subscribers.
pub struct MmuNotifierSubscriptions {
    list: Mutex<Vec<(u64, Arc<dyn MmuNotifierOps>)>>,
    next_id: Mutex<u64>,
    srcu: Srcu,
}

impl fmt::Debug for MmuNotifierSubscriptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MmuNotifierSubscriptions").field("subscribers", &self.list.lock().len()).finish()
    }
}

impl Default for MmuNotifierSubscriptions {
    fn default() -> Self {
        MmuNotifierSubscriptions::new()
    }
}

impl MmuNotifierSubscriptions {
    /// No subscribers.
    pub fn new() -> MmuNotifierSubscriptions {
        MmuNotifierSubscriptions {
            list: Mutex::new(&SUBSCRIPTIONS_LOCK, Vec::new()),
            next_id: Mutex::new(&SUBSCRIPTIONS_LOCK, 0),
            srcu: Srcu::new("mmu_notifier srcu"),
        }
    }

    /// How many subscribers are hooked.
    pub fn len(&self) -> usize {
        self.list.lock().len()
    }

    /// Whether nobody is subscribed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `mmu_notifier_register` (the caller holds a reference on the subscriptions, as
    /// `mmgrab` does).
    pub fn register(self: &Arc<Self>, ops: Arc<dyn MmuNotifierOps>) -> MmuNotifierHandle {
        let id = {
            let mut next = self.next_id.lock();
            *next += 1;
            *next
        };
        self.list.lock().push((id, ops));
        MmuNotifierHandle { subscriptions: self.clone(), id }
    }

    fn snapshot(&self) -> Vec<Arc<dyn MmuNotifierOps>> {
        self.list.lock().iter().map(|(_, ops)| ops.clone()).collect()
    }

    /// `mmu_notifier_invalidate_range_start`.
    #[doc(alias = "mmu_notifier_invalidate_range_start")]
    pub fn invalidate_range_start(&self, range: &MmuNotifierRange) {
        let _srcu = self.srcu.read_lock();
        for ops in self.snapshot() {
            ops.invalidate_range_start(range);
        }
    }

    /// `mmu_notifier_invalidate_range_end`.
    #[doc(alias = "mmu_notifier_invalidate_range_end")]
    pub fn invalidate_range_end(&self, range: &MmuNotifierRange) {
        let _srcu = self.srcu.read_lock();
        for ops in self.snapshot() {
            ops.invalidate_range_end(range);
        }
    }

    /// `__mmu_notifier_release` (exit_mmap): `release` on every subscriber, each unhooked.
    #[doc(alias = "__mmu_notifier_release")]
    pub fn release_all(&self) {
        let srcu = self.srcu.read_lock();
        for ops in self.snapshot() {
            ops.release();
        }
        drop(srcu);
        self.list.lock().clear();
        self.srcu.synchronize();
    }
}

/// A registration (`struct mmu_notifier` as hooked on one `mm`); [`MmuNotifierHandle::unregister`]
/// ends it.
pub struct MmuNotifierHandle {
    subscriptions: Arc<MmuNotifierSubscriptions>,
    id: u64,
}

impl fmt::Debug for MmuNotifierHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MmuNotifierHandle").field("id", &self.id).finish()
    }
}

impl MmuNotifierHandle {
    /// Whether the subscription is still hooked (process exit unhooks every subscription).
    pub fn is_registered(&self) -> bool {
        self.subscriptions.list.lock().iter().any(|(id, _)| *id == self.id)
    }

    /// `mmu_notifier_unregister`: `release` if still hooked, unhook, wait for every callback in
    /// flight (`synchronize_srcu`), drop the reference on the address space (`mmdrop`).
    #[doc(alias = "mmu_notifier_unregister")]
    pub fn unregister(self) {
        let ops = self.subscriptions.list.lock().iter().find(|(id, _)| *id == self.id).map(|(_, ops)| ops.clone());
        if let Some(ops) = ops {
            let srcu = self.subscriptions.srcu.read_lock();
            ops.release();
            drop(srcu);
            self.subscriptions.list.lock().retain(|(id, _)| *id != self.id);
        }
        self.subscriptions.srcu.synchronize();
    }
}
