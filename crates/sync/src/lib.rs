//! gmem-sync: the synchronisation facade of gmem-sim.
//!
//! This is the only crate in the workspace that names `std::sync`, `parking_lot`, `dashmap`,
//! `crossbeam` or `loom`. Every other crate imports its locks, atomics, threads and deferred-free
//! machinery from here, so that one `--cfg gmem_loom` switches the whole simulator onto loom and
//! loom model-checks the real simulator code rather than a hand-written copy of it.
//!
//! # Module map
//!
//! | module | kernel counterpart | normal build | `--cfg gmem_loom` |
//! | --- | --- | --- | --- |
//! | [`atomic`] | `atomic_t`, `smp_mb()` | `std::sync::atomic` | `loom::sync::atomic` |
//! | [`thread`] | kthreads, `cpu_relax()` | `std::thread` | `loom::thread` |
//! | [`lock`] (re-exported at the root) | `struct mutex`, `spinlock_t`, `rwlock_t`, `struct rw_semaphore`, `lockdep_assert_held()` | `parking_lot` + lock-order checker | `loom::sync` (checker off) |
//! | [`lockdep`] | lockdep's lock-order graph | global graph + thread-local held stack | always off |
//! | [`srcu`] | `srcu_read_lock()`, `srcu_read_unlock()`, `synchronize_srcu()` | two-index algorithm on atomics | same code on loom atomics |
//! | [`rcu`] | `rcu_read_lock()`, `call_rcu()` (reclamation only) | `crossbeam-epoch` | nothing; objects are leaked |
//! | [`freed`] | KASAN's use-after-free reports for RCU/SRCU-freed objects | checked in debug builds: poison mark + bounded quarantine | checked, without scheduling points |
//! | [`warn`] | `WARN_ON()`, `WARN_ON_ONCE()`, `KVM_BUG_ON()`, KASAN reports | recorded as data | same |
//! | [`inject`] | fault injection (`should_failslab()`), `signal_pending()` | armed per machine | same |
//! | [`task`] | `task_work_add()`, `task_work_run()` | thread-local queue | `loom::thread_local!` queue |
//! | [`map`] | (none: a simulator-side registry) | `dashmap` | `Mutex<HashMap>` |
//! | [`waits`] | (none: what lockdep's and the hung-task detector's reports show) | who waits on what, cooperative abort | nothing registers |
//! | `model` (only under `gmem_loom`) | (none) | absent | `loom::model` entry points |
//!
//! # What is modelled and what is not
//!
//! Modelled faithfully: mutual exclusion and shared/exclusive locking; the lock-order (ABBA and
//! longer cycle) and recursive-locking checks of lockdep, including the two acquisition sites of
//! every dependency; SRCU's two-index grace-period algorithm (readers pick a counter half, the
//! updater flips the index and waits for each half to drain), with the memory barriers where the
//! kernel has them; `WARN_ON_ONCE`'s once-per-call-site behaviour; `task_work`, so the window
//! between the last `fput()` and `->release()` exists.
//!
//! Not modelled: interrupt contexts and the irq-safety checks of lockdep; lockdep's nesting
//! annotations (`mutex_lock_nested()`, subclasses), so two locks of the same class taken
//! exclusively one inside the other are always reported as recursion; spinning versus sleeping
//! (every lock may block); SRCU's per-CPU counters, expedited grace periods and callbacks
//! (`call_srcu()`); RCU grace periods as an ordering mechanism (the [`rcu`] module is only for
//! deferring frees); preemption and scheduling classes.
//!
//! # How loom mode works
//!
//! Build with `RUSTFLAGS="--cfg gmem_loom"` (and a separate `--target-dir`, e.g. `target/loom`,
//! so the two configurations do not rebuild each other). Then:
//!
//! * [`atomic`], [`thread`], [`Mutex`], [`RwLock`], the [`task`] queue and [`ConcurrentMap`]
//!   become loom's types, so every access is a scheduling point that loom permutes;
//! * [`thread::spin_hint`] becomes `loom::thread::yield_now`, which loom needs in spin loops;
//! * [`Arc`] stays `std::sync::Arc`, because loom's `Arc` cannot unsize to `dyn Trait`;
//! * the lockdep checker is forced off (loom runs every model thread as a coroutine on one OS
//!   thread, so thread-local bookkeeping would be shared between model threads);
//! * [`rcu::call_rcu_drop`] leaks instead of deferring (loom cannot model crossbeam-epoch);
//! * `model` exposes `loom::model` and `loom::model::Builder`.
//!
//! Every object built from loom types must be created inside a `loom::model` closure.

#![deny(missing_docs)]
#![warn(missing_debug_implementations)]

pub mod freed;
pub mod inject;
pub mod lock;
pub mod lockdep;
pub mod map;
pub mod rcu;
pub mod srcu;
pub mod task;
pub mod waits;
pub mod warn;

/// Reference counting for shared simulator objects. Always `std::sync::Arc`, also under loom:
/// loom's `Arc` cannot unsize to `dyn Trait`, which the simulator relies on (file operations
/// tables), and the kernel refcounts that matter are modelled explicitly with [`atomic`] types.
pub use std::sync::Arc;
/// The weak half of [`Arc`] (a back-pointer that does not keep its target alive).
pub use std::sync::Weak;

/// Pads hot counters (SRCU's reader halves, per-object refcounts) to a cache line, as the
/// kernel's per-CPU and `____cacheline_aligned` data is, so unrelated counters do not
/// false-share in benchmarks. Plain data; the same type under loom.
pub use crossbeam_utils::CachePadded;

pub use lock::{lockdep_assert_held, LockClass, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard, RwSem};
pub use map::ConcurrentMap;
pub use srcu::{Srcu, SrcuReadGuard};
pub use warn::{WarnKind, WarnRegistry, Warning};

/// Atomics and fences: `std::sync::atomic`, or `loom::sync::atomic` under `--cfg gmem_loom` so
/// that loom explores every weak-memory outcome of the simulator's lock-free code (refcounts,
/// flags, SRCU counters).
pub mod atomic {
    #[cfg(gmem_loom)]
    pub use loom::sync::atomic::{
        fence, AtomicBool, AtomicI32, AtomicI64, AtomicPtr, AtomicU16, AtomicU32, AtomicU64, AtomicU8, AtomicUsize,
        Ordering,
    };
    #[cfg(not(gmem_loom))]
    pub use std::sync::atomic::{
        fence, AtomicBool, AtomicI32, AtomicI64, AtomicPtr, AtomicU16, AtomicU32, AtomicU64, AtomicU8, AtomicUsize,
        Ordering,
    };
}

/// Threads of the simulated machine (vCPUs, user-space tasks): `std::thread`, or `loom::thread`
/// under `--cfg gmem_loom` so that loom controls their interleaving.
pub mod thread {
    #[cfg(gmem_loom)]
    pub use loom::thread::{spawn, yield_now, Builder, JoinHandle};
    #[cfg(not(gmem_loom))]
    pub use std::thread::{spawn, yield_now, Builder, JoinHandle};

    /// Busy-wait hint (the kernel's `cpu_relax()`): `std::hint::spin_loop` normally,
    /// `loom::thread::yield_now` under loom, because loom's scheduler needs a yield in every
    /// spin loop or it explores the spinning thread forever.
    #[inline]
    pub fn spin_hint() {
        #[cfg(gmem_loom)]
        loom::thread::yield_now();
        #[cfg(not(gmem_loom))]
        std::hint::spin_loop();
    }

    /// One step of a retry loop that waits for another thread (a vCPU re-faulting while an
    /// invalidation is in progress): a yield, and after `attempt` 64 a sleep of `attempt`
    /// microseconds (at most 1 ms), so a thousand attempts cover about half a second of a
    /// preempted invalidator on a busy two-core host; under loom exactly a yield.
    pub fn backoff(attempt: u32) {
        #[cfg(gmem_loom)]
        let _ = attempt;
        #[cfg(gmem_loom)]
        loom::thread::yield_now();
        // A supervised retry loop gives up at once when its run is aborted (see `waits`).
        #[cfg(not(gmem_loom))]
        crate::waits::check_abort();
        #[cfg(not(gmem_loom))]
        if attempt > 64 {
            std::thread::sleep(std::time::Duration::from_micros(u64::from(attempt.min(1000))));
        } else {
            std::thread::yield_now();
        }
    }

    /// Waits until `done()` returns true. Why not a bare `spin_hint` loop: outside loom the
    /// waiter may wait for a thread that is itself waiting for this core (the test machines have
    /// two), so after a short spin it yields and then sleeps briefly, as the kernel's sleeping
    /// waits would. Once it starts yielding the wait is registered in the thread's
    /// [`WaitDomain`](crate::waits::WaitDomain), if any, as a wait for the condition at the
    /// caller's location, and polls the domain's abort. Under loom it is exactly a `spin_hint`
    /// loop. Prefer [`wait_for`], which says what is waited for.
    #[track_caller]
    pub fn wait_until(done: impl FnMut() -> bool) {
        let caller = std::panic::Location::caller();
        wait_for("a condition", || format!("at {caller}").into(), done);
    }

    /// For tests: [`wait_until`], but a condition still false after `limit` is a panic that
    /// says what was waited for, not a hang.
    #[cfg(not(gmem_loom))]
    #[track_caller]
    pub fn wait_until_within(limit: std::time::Duration, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + limit;
        let caller = std::panic::Location::caller();
        wait_for(
            "a test condition",
            || format!("at {caller}").into(),
            || {
                if done() {
                    return true;
                }
                assert!(std::time::Instant::now() < deadline, "{caller}: still waiting for {what} after {limit:?}");
                false
            },
        );
    }

    /// [`wait_until`], registered as waiting on `kind` / `object` (e.g. `"SRCU grace period"`,
    /// the srcu_struct's name) when it starts to block; `object` is only built then.
    pub fn wait_for(
        kind: &'static str,
        object: impl FnOnce() -> std::borrow::Cow<'static, str>,
        mut done: impl FnMut() -> bool,
    ) {
        #[cfg(gmem_loom)]
        {
            let _ = (kind, object);
            while !done() {
                spin_hint();
            }
        }
        #[cfg(not(gmem_loom))]
        {
            let mut spins: u32 = 0;
            let mut object = Some(object);
            let mut registered = None;
            while !done() {
                spin_hint();
                spins = spins.saturating_add(1);
                if spins > 64 {
                    let wait = registered
                        .get_or_insert_with(|| crate::waits::waiting(kind, object.take().expect("registered once")));
                    wait.check_abort();
                    if spins > 1024 {
                        std::thread::sleep(std::time::Duration::from_micros(50));
                    } else {
                        std::thread::yield_now();
                    }
                }
            }
        }
    }
}

/// Loom's entry points, for the models in `models/tests/`. Only present under `--cfg gmem_loom`,
/// so that the models name loom through this facade like everything else.
#[cfg(gmem_loom)]
pub mod model {
    pub use loom::model;
    pub use loom::model::Builder;
    pub use loom::{explore, skip_branch, stop_exploring};

    /// The preemption bound every model runs with: `LOOM_MAX_PREEMPTIONS`, 2 when it is unset
    /// or not a number. Read here only, so that CI's bound (`.ci/run`) holds for every model.
    pub fn preemption_bound() -> usize {
        std::env::var("LOOM_MAX_PREEMPTIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(2)
    }

    /// A loom builder with [`preemption_bound`].
    pub fn builder() -> Builder {
        let mut builder = Builder::new();
        builder.preemption_bound = Some(preemption_bound());
        builder
    }
}

/// Runs a single-threaded test body: directly normally, inside `loom::model` under loom (loom
/// objects can only be created inside a model).
#[cfg(test)]
pub(crate) fn check(f: impl Fn() + Send + Sync + 'static) {
    #[cfg(gmem_loom)]
    loom::model(f);
    #[cfg(not(gmem_loom))]
    f();
}
