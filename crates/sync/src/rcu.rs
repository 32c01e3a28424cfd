//! RCU for memory reclamation only: `rcu_read_lock()` pins the current epoch and
//! [`call_rcu_drop`] frees an object once every reader that might still see it has unpinned
//! (crossbeam-epoch). RCU as an *ordering* mechanism (`synchronize_rcu()` as a barrier) is not
//! modelled; code that needs a grace period to order things uses [`Srcu`](crate::Srcu).
//!
//! Under `gmem_loom` there is no reclamation: readers are no-ops and objects are leaked, because
//! loom cannot model crossbeam-epoch reliably (loom issue #252); a leak per model iteration is
//! harmless.

use std::fmt;
#[cfg(gmem_loom)]
use std::marker::PhantomData;

/// An RCU read-side critical section (`rcu_read_lock()` .. `rcu_read_unlock()` on drop): objects
/// passed to [`call_rcu_drop`] after it began stay allocated until it ends. A
/// `crossbeam_epoch::Guard` normally; nothing under loom. Not `Send`, like the kernel's.
#[must_use = "dropping the guard ends the read-side critical section at once"]
pub struct RcuReadGuard {
    #[cfg(not(gmem_loom))]
    _guard: crossbeam_epoch::Guard,
    #[cfg(gmem_loom)]
    _not_send: PhantomData<*const ()>,
}

impl fmt::Debug for RcuReadGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RcuReadGuard").finish_non_exhaustive()
    }
}

/// `rcu_read_lock()`: keeps RCU-freed objects alive while lockless readers may still hold
/// pointers to them.
pub fn rcu_read_lock() -> RcuReadGuard {
    RcuReadGuard {
        #[cfg(not(gmem_loom))]
        _guard: crossbeam_epoch::pin(),
        #[cfg(gmem_loom)]
        _not_send: PhantomData,
    }
}

/// `call_rcu()` with a freeing callback (`kfree_rcu()`): frees `ptr` after every current RCU
/// reader is gone (crossbeam-epoch `defer`), so lockless readers never touch freed memory.
/// Under `gmem_loom` the object is leaked instead (loom cannot model crossbeam-epoch reliably,
/// loom issue #252; a leak per model iteration is harmless). A null `ptr` is ignored.
///
/// # Safety
///
/// `ptr` must come from `Box::<T>::into_raw`, must not be freed by anyone else, and must already
/// be unreachable for new readers (unpublished); only readers inside an [`RcuReadGuard`] that
/// began before this call may still dereference it, and only until their guard drops.
#[doc(alias = "call_rcu")]
pub unsafe fn call_rcu_drop<T: Send + 'static>(ptr: *mut T) {
    if ptr.is_null() {
        return;
    }
    #[cfg(gmem_loom)]
    {
        let _ = ptr;
    }
    #[cfg(not(gmem_loom))]
    {
        /// The pointer moved into the deferred closure; owning a `Box<T>` is `Send` when `T` is.
        struct Owned<T>(*mut T);
        // SAFETY: `Owned` uniquely owns the allocation (caller's contract), like a `Box<T>`,
        // which is `Send` for `T: Send`.
        unsafe impl<T: Send> Send for Owned<T> {}
        impl<T> Owned<T> {
            fn free(self) {
                // SAFETY: the pointer came from `Box::into_raw` and is freed only here, once,
                // after the epoch in which it was retired has passed (no reader can still see it).
                drop(unsafe { Box::from_raw(self.0) });
            }
        }
        let owned = Owned(ptr);
        let guard = crossbeam_epoch::pin();
        guard.defer(move || owned.free());
        guard.flush();
    }
}

#[cfg(all(test, not(gmem_loom)))]
mod tests {
    use super::*;
    use crate::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counted(Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn deferred_drop_eventually_runs() {
        let drops = Arc::new(AtomicUsize::new(0));
        {
            let reader = rcu_read_lock();
            let p = Box::into_raw(Box::new(Counted(Arc::clone(&drops))));
            // SAFETY: fresh Box pointer, never published.
            unsafe { call_rcu_drop(p) };
            // Still pinned by `reader` (pinned before the retire): cannot have been freed.
            assert_eq!(drops.load(Ordering::SeqCst), 0);
            drop(reader);
        }
        for _ in 0..10_000 {
            if drops.load(Ordering::SeqCst) == 1 {
                break;
            }
            let g = crossbeam_epoch::pin();
            g.flush();
            drop(g);
            std::thread::yield_now();
        }
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        // SAFETY: null is explicitly allowed.
        unsafe { call_rcu_drop::<u32>(std::ptr::null_mut()) };
    }
}
