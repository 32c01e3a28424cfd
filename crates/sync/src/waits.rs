//! Who waits on what: a registry of the simulator's unbounded waits, and a cooperative abort.
//!
//! The model has waits the kernel has too and that only another thread can end: a contended
//! lock, an SRCU grace period (`synchronize_srcu` waiting for readers), a remote TLB flush
//! waiting for a vCPU to leave guest mode, a memslot swap waiting for MMU-notifier
//! invalidations to end, a folio lock, a fault retrying while an invalidation is in progress.
//! If the model is broken (an invalidation that never ends, a reader that never leaves), such a
//! wait never returns and the program hangs without saying why. This module lets a supervisor
//! (the `gmem-sim run` watchdog) see every such wait and end it:
//!
//! * A [`WaitDomain`] is one supervised group of threads (one run). A thread joins it with
//!   [`WaitDomain::enter`]; threads outside any domain (tests, scripts, loom models) pay one
//!   thread-local read on the slow path and nothing else.
//! * A wait registers itself with [`waiting`] only once it is about to block (after a failed
//!   try-lock, after the first spins), so the fast paths (`kvm_gmem_get_pfn`, uncontended
//!   locks) are unchanged. The registration says what is waited for (`kind`: "lock (write)",
//!   "SRCU grace period"; `object`: the lock class, the srcu_struct, the gpa) and since when;
//!   [`WaitDomain::waits`] lists them, nested waits included (a lock taken inside a wait's
//!   condition).
//! * [`WaitDomain::abort`] makes every registered wait of the domain give up at its next poll:
//!   the waiting thread unwinds with an [`Aborted`] payload (through `resume_unwind`, so the
//!   panic hook does not print it as a crash), its guards release their locks on the way, and
//!   the supervisor can join it. Only waits that poll can be aborted; all of the simulator's do
//!   (locks are taken with a timed try-lock in a loop once contended).
//!
//! Under `--cfg gmem_loom` nothing registers and nothing aborts: loom runs every model thread
//! on one OS thread (thread-locals would be shared), and loom explores every schedule itself.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How often a contended wait polls the abort flag (locks park this long at a time).
pub const POLL: Duration = Duration::from_millis(5);

/// One supervised group of threads (see the module docs).
#[derive(Default)]
pub struct WaitDomain {
    aborted: AtomicBool,
    /// Panics that began in the domain's threads ([`note_panic`]).
    panics: AtomicU32,
    reason: Mutex<String>,
    threads: Mutex<Vec<Arc<ThreadSlot>>>,
}

struct ThreadSlot {
    name: String,
    /// The waits in progress, outermost first.
    waits: Mutex<Vec<Entry>>,
}

struct Entry {
    kind: &'static str,
    object: Cow<'static, str>,
    since: Instant,
}

/// A registered wait as a diagnosis lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaitReport {
    /// The waiting thread's name in its domain.
    pub thread: String,
    /// What kind of wait: `"lock (write)"`, `"SRCU grace period"`, `"fault retry"`...
    pub kind: &'static str,
    /// What it waits on: the lock class, the srcu_struct's name and half, the gpa...
    pub object: String,
    /// How long it has waited so far.
    pub waited: Duration,
}

impl fmt::Display for WaitReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} waits on {} {} for {:.3} s", self.thread, self.kind, self.object, self.waited.as_secs_f64())
    }
}

/// The unwind payload of a wait its domain aborted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Aborted {
    /// The domain's abort reason.
    pub reason: String,
    /// What the thread was waiting on (`kind object`), if it was in a registered wait.
    pub waiting_on: Option<String>,
}

impl fmt::Display for Aborted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "aborted by {}", self.reason)?;
        if let Some(what) = &self.waiting_on {
            write!(f, " while waiting on {what}")?;
        }
        Ok(())
    }
}

thread_local! {
    static CURRENT: RefCell<Option<(Arc<WaitDomain>, Arc<ThreadSlot>)>> = const { RefCell::new(None) };
}

impl WaitDomain {
    /// A domain with no thread and not aborted.
    pub fn new() -> Arc<WaitDomain> {
        Arc::new(WaitDomain::default())
    }

    /// The calling thread joins the domain as `name` until the guard is dropped (a thread is in
    /// at most one domain; entering another replaces it for the guard's life).
    pub fn enter(self: &Arc<Self>, name: impl Into<String>) -> DomainGuard {
        let slot = Arc::new(ThreadSlot { name: name.into(), waits: Mutex::new(Vec::new()) });
        self.threads.lock().unwrap_or_else(PoisonError::into_inner).push(slot.clone());
        let previous = CURRENT.with(|c| c.replace(Some((self.clone(), slot))));
        DomainGuard { previous }
    }

    /// Every registered wait of the domain's threads, longest first.
    pub fn waits(&self) -> Vec<WaitReport> {
        let now = Instant::now();
        let threads = self.threads.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let mut reports: Vec<WaitReport> = threads
            .iter()
            .flat_map(|slot| {
                let waits = slot.waits.lock().unwrap_or_else(PoisonError::into_inner);
                waits
                    .iter()
                    .map(|e| WaitReport {
                        thread: slot.name.clone(),
                        kind: e.kind,
                        object: e.object.to_string(),
                        waited: now.saturating_duration_since(e.since),
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        reports.sort_by_key(|r| std::cmp::Reverse(r.waited));
        reports
    }

    /// Makes every wait of the domain give up (now and from now on) by unwinding with
    /// [`Aborted`]; `reason` says who asked ("the watchdog").
    pub fn abort(&self, reason: &str) {
        *self.reason.lock().unwrap_or_else(PoisonError::into_inner) = reason.to_string();
        self.aborted.store(true, Ordering::SeqCst);
    }

    /// How many panics began in the domain's threads ([`note_panic`]); a supervisor knows a
    /// thread is still reporting one (a panic hook printing a backtrace can take long) while
    /// this is ahead of the panics it caught.
    pub fn panics_begun(&self) -> u32 {
        self.panics.load(Ordering::SeqCst)
    }

    fn reason(&self) -> String {
        self.reason.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Whether [`abort`](Self::abort) was called.
    pub fn is_aborted(&self) -> bool {
        // Acquire: a thread that sees the abort also sees its reason.
        self.aborted.load(Ordering::Acquire)
    }
}

impl fmt::Debug for WaitDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitDomain").field("aborted", &self.is_aborted()).finish_non_exhaustive()
    }
}

/// Membership of the calling thread in a [`WaitDomain`]; leaving restores the previous one.
pub struct DomainGuard {
    previous: Option<(Arc<WaitDomain>, Arc<ThreadSlot>)>,
}

impl Drop for DomainGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        let _ = CURRENT.try_with(|c| c.replace(previous));
    }
}

impl fmt::Debug for DomainGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DomainGuard").finish_non_exhaustive()
    }
}

/// A registered wait; dropping it unregisters (see [`waiting`]). It holds no reference to the
/// domain (the thread-local has it): cloning an `Arc` shared by every thread of the run at each
/// contended lock would make the threads contend on its count.
#[must_use = "the wait is registered only while the guard lives"]
pub struct Waiting {
    supervised: bool,
}

/// Calls `f` with the calling thread's domain and slot, if it is in a domain.
fn with_current<R>(f: impl FnOnce(&WaitDomain, &ThreadSlot) -> R) -> Option<R> {
    CURRENT.try_with(|c| c.borrow().as_ref().map(|(domain, slot)| f(domain, slot))).ok().flatten()
}

/// Registers the calling thread as waiting on `kind` / `object` (built only if the thread is in
/// a domain) until the returned guard is dropped. Call it once the wait is about to block, and
/// call [`Waiting::check_abort`] at every poll of the wait.
pub fn waiting(kind: &'static str, object: impl FnOnce() -> Cow<'static, str>) -> Waiting {
    #[cfg(gmem_loom)]
    {
        let _ = (kind, object);
        Waiting { supervised: false }
    }
    #[cfg(not(gmem_loom))]
    {
        let supervised = with_current(|_, slot| {
            let entry = Entry { kind, object: object(), since: Instant::now() };
            slot.waits.lock().unwrap_or_else(PoisonError::into_inner).push(entry);
        })
        .is_some();
        Waiting { supervised }
    }
}

impl Waiting {
    /// Whether the thread is in a domain (else the wait cannot be aborted and need not poll).
    pub fn supervised(&self) -> bool {
        self.supervised
    }

    /// Unwinds with [`Aborted`] if the thread's domain was aborted.
    pub fn check_abort(&self) {
        if !self.supervised {
            return;
        }
        let aborted = with_current(|domain, slot| {
            domain.is_aborted().then(|| {
                let what = slot.waits.lock().unwrap_or_else(PoisonError::into_inner).last().map(|e| e.to_string());
                (domain.reason(), what)
            })
        })
        .flatten();
        if let Some((reason, waiting_on)) = aborted {
            std::panic::resume_unwind(Box::new(Aborted { reason, waiting_on }));
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.supervised {
            with_current(|_, slot| slot.waits.lock().unwrap_or_else(PoisonError::into_inner).pop());
        }
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.object)
    }
}

impl fmt::Debug for Waiting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Waiting").field("supervised", &self.supervised()).finish()
    }
}

/// Unwinds with [`Aborted`] if the calling thread is in an aborted domain: for retry loops that
/// are bounded but slow (a fault re-faulting with backoff), so an abort ends them at once.
pub fn check_abort() {
    #[cfg(not(gmem_loom))]
    if let Some(Some(reason)) = with_current(|domain, _| domain.is_aborted().then(|| domain.reason())) {
        std::panic::resume_unwind(Box::new(Aborted { reason, waiting_on: None }));
    }
}

/// Counts a panic beginning in the calling thread's domain, if any: call it from a panic hook
/// (aborts unwind with `resume_unwind`, which runs no hook, so they are not counted).
pub fn note_panic() {
    with_current(|domain, _| domain.panics.fetch_add(1, Ordering::SeqCst));
}

/// The message of a caught panic payload: an [`Aborted`]'s text, a `panic!` message, or a
/// placeholder for other payloads.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(aborted) = payload.downcast_ref::<Aborted>() {
        aborted.to_string()
    } else if let Some(text) = payload.downcast_ref::<&'static str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic with a non-text payload".to_string()
    }
}

/// Runs `f` in the calling thread, supervised: a watcher thread aborts `f`'s waits once one of
/// them has lasted `limit`, and `f`'s result is then `Err` with a report of that wait (for
/// single-threaded drivers such as a script runner, where no wait can legitimately last long:
/// nothing else would end it). A real panic in `f` propagates. Not available under loom.
#[cfg(not(gmem_loom))]
pub fn supervise<T>(name: &str, limit: Duration, f: impl FnOnce() -> T) -> Result<T, String> {
    let domain = WaitDomain::new();
    let done = Arc::new(AtomicBool::new(false));
    let found: Arc<Mutex<Option<String>>> = Arc::default();
    let watcher = {
        let (domain, done, found) = (domain.clone(), done.clone(), found.clone());
        let poll = (limit / 20).clamp(Duration::from_millis(1), Duration::from_millis(50));
        std::thread::Builder::new()
            .name(format!("supervisor of {name}"))
            .spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    std::thread::sleep(poll);
                    if let Some(wait) = domain.waits().into_iter().find(|w| w.waited >= limit) {
                        *found.lock().unwrap_or_else(PoisonError::into_inner) = Some(wait.to_string());
                        domain.abort(&format!("the supervisor (a wait longer than {:.1} s)", limit.as_secs_f64()));
                        return;
                    }
                }
            })
            .expect("spawn a supervisor thread")
    };
    let result = {
        let _member = domain.enter(name);
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
    };
    done.store(true, Ordering::SeqCst);
    let _ = watcher.join();
    match result {
        Ok(value) => Ok(value),
        Err(payload) => match payload.downcast::<Aborted>() {
            Ok(aborted) => {
                let wait = found.lock().unwrap_or_else(PoisonError::into_inner).take().unwrap_or_default();
                Err(format!("{wait}: {aborted}"))
            }
            Err(payload) => std::panic::resume_unwind(payload),
        },
    }
}

#[cfg(all(test, not(gmem_loom)))]
mod tests {
    use super::*;
    use crate::lock::{LockClass, Mutex as SimMutex};

    static HELD: LockClass = LockClass::new("waits-test lock");

    #[test]
    fn outside_a_domain_nothing_registers() {
        let wait = waiting("lock (write)", || "x".into());
        assert!(!wait.supervised());
        wait.check_abort();
        check_abort();
    }

    #[test]
    fn a_blocked_lock_is_listed_and_aborted() {
        let domain = WaitDomain::new();
        let lock = SimMutex::new(&HELD, 0u32);
        let held = lock.lock();
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| {
                let _member = domain.enter("waiter");
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| *lock.lock() += 1))
            });
            let deadline = Instant::now() + Duration::from_secs(10);
            while domain.waits().is_empty() {
                assert!(Instant::now() < deadline, "the waiter never registered");
                std::thread::sleep(Duration::from_millis(1));
            }
            let waits = domain.waits();
            assert_eq!(waits.len(), 1, "{waits:?}");
            assert_eq!(waits[0].thread, "waiter");
            assert_eq!(waits[0].kind, "lock (exclusive)");
            assert_eq!(waits[0].object, "waits-test lock");
            domain.abort("the test");
            let payload = waiter.join().expect("joined").expect_err("the wait was aborted");
            let aborted = payload.downcast_ref::<Aborted>().expect("an Aborted payload");
            assert_eq!(aborted.reason, "the test");
            assert_eq!(aborted.waiting_on.as_deref(), Some("lock (exclusive) waits-test lock"));
            assert_eq!(
                panic_message(&*payload),
                "aborted by the test while waiting on lock (exclusive) waits-test lock"
            );
        });
        drop(held);
        assert!(domain.waits().is_empty(), "the aborted wait unregistered while unwinding");
        assert_eq!(*lock.lock(), 0);
    }

    #[test]
    fn supervise_ends_a_wait_that_never_ends() {
        let quick = supervise("quick", Duration::from_secs(5), || 7);
        assert_eq!(quick, Ok(7));
        let started = Instant::now();
        let stuck = supervise("script x.gms", Duration::from_millis(100), || {
            crate::thread::wait_for("MMU notifier invalidations to end", || "(test)".into(), || false)
        });
        assert!(started.elapsed() < Duration::from_secs(5));
        let report = stuck.expect_err("aborted");
        assert!(
            report.starts_with("script x.gms waits on MMU notifier invalidations to end (test) for 0."),
            "{report}"
        );
        assert!(report.ends_with("while waiting on MMU notifier invalidations to end (test)"), "{report}");
    }

    #[test]
    fn a_condition_wait_is_listed_and_aborted() {
        let domain = WaitDomain::new();
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| {
                let _member = domain.enter("vcpu0");
                std::panic::catch_unwind(|| {
                    crate::thread::wait_for("SRCU grace period", || "test-srcu".into(), || false)
                })
            });
            let deadline = Instant::now() + Duration::from_secs(10);
            while domain.waits().is_empty() {
                assert!(Instant::now() < deadline, "the waiter never registered");
                std::thread::sleep(Duration::from_millis(1));
            }
            assert_eq!(
                domain.waits()[0].to_string().split(" for ").next(),
                Some("vcpu0 waits on SRCU grace period test-srcu")
            );
            domain.abort("the watchdog");
            let payload = waiter.join().expect("joined").expect_err("aborted");
            assert_eq!(
                panic_message(&*payload),
                "aborted by the watchdog while waiting on SRCU grace period test-srcu"
            );
        });
    }
}
