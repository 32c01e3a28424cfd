//! Loom model of SRCU's grace period, running gmem-sync's real `Srcu`.
//!
//! Kernel functions modelled: `srcu_read_lock()`, `srcu_read_unlock()` and `synchronize_srcu()`
//! (the two-index algorithm of `kernel/rcu/srcutree.c` reduced to one counter pair, with its
//! `smp_mb()`s as `SeqCst` fences), as used for `kvm->srcu` around memslot updates.
//!
//! Invariant: after `synchronize()` returns, no reader that could have observed the old pointer
//! is still inside its read-side critical section, so retiring (freeing) the old object is safe.
//!
//! Thread roles: one reader thread enters a read section, loads the published generation, checks
//! that generation has not been retired, and leaves. The main thread is the updater: it publishes
//! a new generation, calls `synchronize()`, then marks the old generation retired. The second
//! model (`two_grace_periods`) runs two read sections against two updates, which exercises the
//! index flip twice and the wait for stragglers on the other counter half.
//!
//! Preemption bound: `LOOM_MAX_PREEMPTIONS` (default 2), which covers the store-buffering and
//! late-increment interleavings the fences exist for. A control model replaces `synchronize()`
//! by a bare fence and must fail, showing the model detects a missing grace period.
//!
//! Run: `RUSTFLAGS="--cfg gmem_loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p gmem-models --release
//! --target-dir target/loom --test models loom_srcu::`.

use gmem_sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use gmem_sync::{thread, Arc, Srcu};

/// Number of generations a model may publish (generation 0 is never used).
const GENERATIONS: usize = 4;

struct State {
    srcu: Srcu,
    /// The "pointer" readers dereference: the current generation number.
    current: AtomicUsize,
    /// `retired[g]`: generation `g` has been freed by the updater.
    retired: [AtomicBool; GENERATIONS],
}

impl State {
    fn new() -> Arc<Self> {
        Arc::new(State {
            srcu: Srcu::new("loom_srcu"),
            current: AtomicUsize::new(1),
            retired: std::array::from_fn(|_| AtomicBool::new(false)),
        })
    }

    /// A read-side critical section: dereference the published generation.
    fn read(&self) {
        let guard = self.srcu.read_lock();
        let generation = self.current.load(Ordering::Acquire);
        assert!(
            !self.retired[generation].load(Ordering::Relaxed),
            "reader (index {}) uses generation {generation} after it was retired",
            guard.index()
        );
        drop(guard);
    }

    /// The updater: publish `next`, wait for a grace period with `grace_period`, retire the old.
    fn update(&self, next: usize, grace_period: impl FnOnce(&Srcu)) {
        let old = self.current.swap(next, Ordering::AcqRel);
        grace_period(&self.srcu);
        self.retired[old].store(true, Ordering::Relaxed);
    }
}

use gmem_sync::model::builder;

#[test]
fn synchronize_waits_for_readers() {
    builder().check(|| {
        let state = State::new();
        let reader = {
            let state = Arc::clone(&state);
            thread::spawn(move || state.read())
        };
        state.update(2, Srcu::synchronize);
        reader.join().unwrap();
    });
}

#[test]
fn two_grace_periods() {
    builder().check(|| {
        let state = State::new();
        let reader = {
            let state = Arc::clone(&state);
            thread::spawn(move || {
                state.read();
                state.read();
            })
        };
        state.update(2, Srcu::synchronize);
        state.update(3, Srcu::synchronize);
        reader.join().unwrap();
    });
}

/// Control: a "grace period" that is only a fence. The reader can load generation 1, the updater
/// retire it, and the reader then see it retired; the model must find that.
#[test]
#[should_panic(expected = "after it was retired")]
fn missing_grace_period_is_caught() {
    builder().check(|| {
        let state = State::new();
        let reader = {
            let state = Arc::clone(&state);
            thread::spawn(move || state.read())
        };
        state.update(2, |_| fence(Ordering::SeqCst));
        reader.join().unwrap();
    });
}
