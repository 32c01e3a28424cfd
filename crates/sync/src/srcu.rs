//! Sleepable RCU (`kernel/rcu/srcutiny.c` / `srcutree.c` reduced to one counter pair), used by
//! KVM for `kvm->srcu` (memslots) and by guest_memfd's bindings.
//!
//! This is the kernel's two-index algorithm, not a refcount: a reader increments the counter half
//! selected by the current index and decrements the same half when it leaves; the updater waits
//! for the *other* half to drain (stragglers that sampled the index before an earlier flip),
//! flips the index so new readers use the other half, then waits for the old half to drain. Only
//! readers that could have started before `synchronize()` are waited for; readers that arrive
//! after the flip never delay it, which is what lets SRCU readers be long without starving
//! updaters.
//!
//! Memory ordering: the kernel's `smp_mb()`s (B and C in `srcu_read_lock()` /
//! `srcu_read_unlock()`, and the ones around the flip in `srcu_flip()` and
//! `srcu_readers_active_idx_check()`) are `fence(SeqCst)` here. They must be *fences*: loom
//! treats `SeqCst` accesses as `AcqRel` (loom issue #180), so `SeqCst` loads and stores would
//! hide the store-buffering outcome the fences exist to forbid, while loom does model `SeqCst`
//! fences.
//!
//! Not modelled: per-CPU counters (one shared pair instead), separate lock/unlock counts,
//! expedited grace periods, `call_srcu()`, `srcu_down_read()`/`srcu_up_read()` (a guard here is
//! not `Send`).

use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;

use crate::atomic::{fence, AtomicUsize, Ordering};
use crate::lock::{LockClass, Mutex};
use crate::{lockdep, thread, CachePadded};

/// Serialises concurrent `synchronize()` callers, as `srcu_gp_mutex` does.
static SRCU_SYNC: LockClass = LockClass::new("srcu->sync");

/// Unique ids for the checked-build self-deadlock detection (bookkeeping, not modelled state).
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// An `srcu_struct`: sleepable RCU, modelled explicitly. `read_lock` returns the index (the
/// counter half the reader entered on); `synchronize` waits until every reader that started
/// before it has left. This is not a refcount in disguise: it is the kernel's two-index
/// algorithm, so the models check the real grace-period logic.
pub struct Srcu {
    name: &'static str,
    /// Grace-period index; bit 0 selects the counter half new readers use. Incremented by each
    /// flip, as the kernel's `srcu_idx` is.
    idx: AtomicUsize,
    /// Readers currently inside, per half.
    readers: [CachePadded<AtomicUsize>; 2],
    sync: Mutex<()>,
    id: u64,
}

/// An SRCU read-side critical section; dropping it is `srcu_read_unlock(ssp, idx)`. Not `Send`:
/// `srcu_read_unlock()` must run in the task that locked (lockdep tracks it there).
#[must_use = "dropping the guard ends the read-side critical section at once"]
#[doc(alias = "srcu_read_unlock")]
pub struct SrcuReadGuard<'a> {
    srcu: &'a Srcu,
    index: usize,
    tracked: bool,
    _not_send: lockdep::NotSend,
}

impl Srcu {
    /// `init_srcu_struct()`; `name` appears in diagnostics.
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            idx: AtomicUsize::new(0),
            readers: [CachePadded::new(AtomicUsize::new(0)), CachePadded::new(AtomicUsize::new(0))],
            sync: Mutex::new(&SRCU_SYNC, ()),
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// The name given at creation.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// `srcu_read_lock()`: enters a read-side critical section on the current index's half.
    pub fn read_lock(&self) -> SrcuReadGuard<'_> {
        let index = self.idx.load(Ordering::Relaxed) & 1;
        self.readers[index].fetch_add(1, Ordering::Relaxed);
        // smp_mb() B: the increment is visible before any load in the critical section, pairs
        // with the updater's fences around the flip.
        fence(Ordering::SeqCst);
        let tracked = lockdep::enabled() && checked::enter(self.id);
        SrcuReadGuard { srcu: self, index, tracked, _not_send: PhantomData }
    }

    /// `synchronize_srcu()`: returns once every reader that entered before the call has left.
    ///
    /// # Panics
    ///
    /// In checked builds (see [`lockdep::enabled`]), if the calling thread is inside a read-side
    /// critical section of this same `Srcu`: that is a guaranteed self-deadlock.
    #[track_caller]
    #[doc(alias = "synchronize_srcu")]
    pub fn synchronize(&self) {
        if lockdep::enabled() && checked::held(self.id) > 0 {
            panic!(
                "synchronize_srcu(\"{}\") called at {} inside a read-side critical section of \
                 the same srcu_struct: self-deadlock (SRCU readers must never wait on \
                 synchronize_srcu)",
                self.name,
                std::panic::Location::caller()
            );
        }
        let _gp = self.sync.lock();
        // Order the caller's updates (e.g. publishing a new pointer) before sampling readers.
        fence(Ordering::SeqCst);
        let old = self.idx.load(Ordering::Relaxed);
        let cur = old & 1;
        // Stragglers: readers that sampled the index before the previous flip but incremented
        // the other half after it. They may have seen the old data; wait for them first.
        self.wait_for_readers(cur ^ 1);
        // srcu_flip(): new readers go to the other half from now on.
        self.idx.store(old.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::SeqCst);
        // Every reader that entered before the flip is on `cur`.
        self.wait_for_readers(cur);
        // Order the readers' critical sections before whatever the caller does next (freeing).
        fence(Ordering::SeqCst);
    }

    fn wait_for_readers(&self, half: usize) {
        thread::wait_for(
            "SRCU grace period",
            || format!("of {} (readers on counter half {half})", self.name).into(),
            || self.readers[half].load(Ordering::Acquire) == 0,
        );
    }

    /// `(index, readers on half 0, readers on half 1)` now, for diagnoses of a stuck grace
    /// period: which half `synchronize` waits for and who is still in it. Racy by nature.
    pub fn state(&self) -> (usize, [usize; 2]) {
        (
            self.idx.load(Ordering::Relaxed),
            [self.readers[0].load(Ordering::Relaxed), self.readers[1].load(Ordering::Relaxed)],
        )
    }

    /// Number of index flips so far (tests use it to know a grace period has started).
    #[cfg(all(test, not(gmem_loom)))]
    fn flips(&self) -> usize {
        self.idx.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for Srcu {
    /// The name only: reading the counters would add loom scheduling points.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Srcu").field("name", &self.name).finish_non_exhaustive()
    }
}

impl SrcuReadGuard<'_> {
    /// The counter half this reader entered on (the value `srcu_read_lock()` returns).
    pub fn index(&self) -> usize {
        self.index
    }
}

impl Drop for SrcuReadGuard<'_> {
    /// `srcu_read_unlock(ssp, idx)`.
    fn drop(&mut self) {
        // smp_mb() C: the critical section's accesses complete before the decrement.
        fence(Ordering::SeqCst);
        self.srcu.readers[self.index].fetch_sub(1, Ordering::Release);
        if self.tracked {
            checked::exit(self.srcu.id);
        }
    }
}

impl fmt::Debug for SrcuReadGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SrcuReadGuard").field("srcu", &self.srcu.name).field("index", &self.index).finish()
    }
}

/// Thread-local count of read sections per `Srcu`, for the self-deadlock check. Only used when
/// lockdep is enabled, hence never under loom.
mod checked {
    use super::RefCell;

    thread_local! {
        static HELD: RefCell<Vec<(u64, usize)>> = const { RefCell::new(Vec::new()) };
    }

    /// Records entry; returns whether it was recorded (so exit knows to undo it).
    pub(super) fn enter(id: u64) -> bool {
        HELD.try_with(|h| {
            let mut h = h.borrow_mut();
            match h.iter_mut().find(|(i, _)| *i == id) {
                Some((_, n)) => *n += 1,
                None => h.push((id, 1)),
            }
        })
        .is_ok()
    }

    pub(super) fn exit(id: u64) {
        let _ = HELD.try_with(|h| {
            let mut h = h.borrow_mut();
            if let Some(pos) = h.iter().position(|(i, _)| *i == id) {
                h[pos].1 -= 1;
                if h[pos].1 == 0 {
                    h.swap_remove(pos);
                }
            }
        });
    }

    pub(super) fn held(id: u64) -> usize {
        HELD.try_with(|h| h.borrow().iter().find(|(i, _)| *i == id).map_or(0, |(_, n)| *n)).unwrap_or(0)
    }
}

#[cfg(all(test, not(gmem_loom)))]
mod tests {
    use super::*;
    use crate::lockdep::tests::checker_on;
    use crate::Arc;
    use std::sync::atomic::AtomicBool;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    const TIMEOUT: Duration = Duration::from_secs(20);

    fn wait_for(what: &str, cond: impl Fn() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(start.elapsed() < TIMEOUT, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// A thread that enters a read section, says so, and leaves when told to.
    fn reader(srcu: &Arc<Srcu>) -> (mpsc::Sender<()>, std::thread::JoinHandle<usize>) {
        let (entered_tx, entered_rx) = mpsc::channel();
        let (leave_tx, leave_rx) = mpsc::channel::<()>();
        let srcu = Arc::clone(srcu);
        let handle = std::thread::spawn(move || {
            let g = srcu.read_lock();
            entered_tx.send(()).unwrap();
            leave_rx.recv_timeout(TIMEOUT).unwrap();
            let index = g.index();
            drop(g);
            index
        });
        entered_rx.recv_timeout(TIMEOUT).expect("reader entered its critical section");
        (leave_tx, handle)
    }

    fn synchronizer(srcu: &Arc<Srcu>) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
        let done = Arc::new(AtomicBool::new(false));
        let (srcu, flag) = (Arc::clone(srcu), Arc::clone(&done));
        let handle = std::thread::spawn(move || {
            srcu.synchronize();
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        (done, handle)
    }

    #[test]
    fn synchronize_without_readers_returns() {
        let srcu = Srcu::new("idle");
        srcu.synchronize();
        srcu.synchronize();
        assert_eq!(srcu.flips(), 2);
        let g = srcu.read_lock();
        assert_eq!(g.index(), 0);
        drop(g);
        assert!(format!("{srcu:?}").contains("idle"));
    }

    #[test]
    fn synchronize_waits_for_preexisting_reader() {
        let srcu = Arc::new(Srcu::new("preexisting"));
        let (leave, reader) = reader(&srcu);
        let (done, sync) = synchronizer(&srcu);
        // The grace period has started (index flipped) and must now wait for the reader.
        wait_for("the flip", || srcu.flips() == 1);
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !done.load(std::sync::atomic::Ordering::SeqCst),
            "synchronize() returned while a pre-existing reader was inside"
        );
        leave.send(()).unwrap();
        assert_eq!(reader.join().unwrap(), 0);
        wait_for("synchronize() to return", || done.load(std::sync::atomic::Ordering::SeqCst));
        sync.join().unwrap();
    }

    #[test]
    fn readers_after_the_flip_do_not_block() {
        let srcu = Arc::new(Srcu::new("late readers"));
        let (leave_old, old_reader) = reader(&srcu);
        let (done, sync) = synchronizer(&srcu);
        wait_for("the flip", || srcu.flips() == 1);
        // A reader arriving now uses the other half and stays inside until the end.
        let (leave_new, new_reader) = reader(&srcu);
        leave_old.send(()).unwrap();
        assert_eq!(old_reader.join().unwrap(), 0);
        wait_for("synchronize() to return despite the late reader", || done.load(std::sync::atomic::Ordering::SeqCst));
        sync.join().unwrap();
        // The next grace period must wait for that reader (as a straggler of the old index).
        let (done2, sync2) = synchronizer(&srcu);
        std::thread::sleep(Duration::from_millis(100));
        assert!(!done2.load(std::sync::atomic::Ordering::SeqCst));
        leave_new.send(()).unwrap();
        assert_eq!(new_reader.join().unwrap(), 1);
        sync2.join().unwrap();
        assert_eq!(srcu.flips(), 2);
    }

    #[test]
    fn synchronize_inside_own_read_section_panics() {
        let _on = checker_on();
        let srcu = Srcu::new("self-deadlock");
        let other = Srcu::new("other");
        let g = srcu.read_lock();
        // A different srcu_struct is fine.
        other.synchronize();
        let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| srcu.synchronize()))
            .expect_err("synchronize() inside its own read section must panic");
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("SRCU readers must never wait on synchronize_srcu"), "{msg}");
        drop(g);
        srcu.synchronize();
    }
}

#[cfg(all(test, gmem_loom))]
mod loom_tests {
    use super::*;
    use crate::atomic::AtomicBool;
    use crate::Arc;

    /// A small in-crate model; the full one is models/tests/models/loom_srcu.rs.
    #[test]
    fn grace_period_covers_reader() {
        crate::model::builder().check(|| {
            let srcu = Arc::new(Srcu::new("loom"));
            let retired = Arc::new(AtomicBool::new(false));
            let published = Arc::new(AtomicBool::new(false));
            let t = {
                let (srcu, retired, published) = (Arc::clone(&srcu), Arc::clone(&retired), Arc::clone(&published));
                loom::thread::spawn(move || {
                    let _g = srcu.read_lock();
                    if !published.load(Ordering::Relaxed) {
                        assert!(!retired.load(Ordering::Relaxed), "old object used after free");
                    }
                })
            };
            published.store(true, Ordering::Relaxed);
            srcu.synchronize();
            retired.store(true, Ordering::Relaxed);
            t.join().unwrap();
        });
    }
}
