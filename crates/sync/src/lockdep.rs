//! A small lockdep: the kernel's runtime lock-order validator, reduced to what the simulator
//! needs to catch the deadlocks the real code would have.
//!
//! * Each thread keeps a stack of the locks it holds (class, instance, mode and the source
//!   location of the acquisition, recorded through `#[track_caller]`). Guards pop their entry when
//!   dropped, in any order.
//! * A global graph has an edge `H -> N` for every class `N` ever acquired (blocking) while a lock
//!   of class `H` was held; each edge remembers the two acquisition sites that first established
//!   it.
//! * A new edge `H -> N` whose target already reaches `H` closes a cycle: an
//!   [`InversionReport`] names the sites of the new edge and of every edge of the existing path,
//!   and goes to `tracing::error!`. The checker never panics, and the offending edge is not added
//!   (the graph stays acyclic; each inversion is reported once).
//! * Taking a class the thread already holds is recursion (a self-deadlock) when both holds are
//!   exclusive, or when the same lock instance is re-taken with either hold exclusive. Nested
//!   shared holds are allowed. The kernel's nesting annotations (`mutex_lock_nested()`,
//!   subclasses) are not modelled: nesting two locks of one class exclusively is reported.
//! * Shared (read) acquisitions create ordinary edges: a `rw_semaphore` reader blocks behind a
//!   waiting writer, so read-side inversions deadlock too. Irq-safety is not modelled.
//!
//! Cost: when disabled, one `Relaxed` load per acquisition. When enabled, a thread-local push and
//! pop, plus a thread-local cache of edges already in the graph so that the global graph lock is
//! only taken for an edge this thread has not seen before.
//!
//! On by default in debug builds, off in release builds, and always off under `gmem_loom` (loom
//! runs model threads as coroutines on one OS thread, so the thread-local stacks would be shared).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::marker::PhantomData;
use std::panic::Location;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex as StdMutex, MutexGuard as StdMutexGuard, PoisonError};

use crate::lock::LockClass;

static ENABLED: AtomicBool = AtomicBool::new(cfg!(debug_assertions));

/// Whether acquisitions are being recorded, so callers can skip expensive consistency checks
/// that only make sense with the checker on. On by default in debug builds
/// (`cfg(debug_assertions)`), off in release builds, always off under `gmem_loom`.
#[inline]
pub fn enabled() -> bool {
    !cfg!(gmem_loom) && ENABLED.load(Ordering::Relaxed)
}

/// Turns the checker on or off at run time (e.g. on for a release-mode stress run). Best called
/// before any lock is taken: locks taken while it was off are not on the held stack, so
/// [`lockdep_assert_held`](crate::lockdep_assert_held) would not see them. Ignored under
/// `gmem_loom`, where the checker cannot work.
pub fn set_enabled(on: bool) {
    if !cfg!(gmem_loom) {
        ENABLED.store(on, Ordering::Relaxed);
    }
}

/// What kind of problem an [`InversionReport`] describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReportKind {
    /// AB-BA: the existing path from the acquired class back to the held class is one edge.
    Inversion,
    /// A cycle through three or more classes (`chain` has two or more edges).
    Cycle,
    /// A class taken again while already held exclusively (or the same lock re-taken with either
    /// hold exclusive): a guaranteed self-deadlock, or an unannotated nesting.
    Recursion,
}

/// One edge of the lock-order graph with the two acquisition sites that first established it:
/// `from` was taken at `from_at`, then, still holding it, `to` was taken at `to_at`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DependencyEdge {
    /// Class held first.
    pub from: &'static str,
    /// Where `from` was acquired.
    pub from_at: &'static Location<'static>,
    /// Class acquired while `from` was held.
    pub to: &'static str,
    /// Where `to` was acquired.
    pub to_at: &'static Location<'static>,
}

/// One lock-order violation: earlier acquisitions established `acquired -> ... -> held` (the
/// edges in `chain`, each with its two sites); now a thread holding `held` (taken at `held_at`)
/// acquires `acquired` at `acquired_at`. For [`ReportKind::Recursion`] both classes are the same
/// and `chain` is empty. Kept as data so tests can assert on it; `Display` prints every site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InversionReport {
    /// Inversion, longer cycle or recursion.
    pub kind: ReportKind,
    /// Name of the thread that closed the cycle (or `"<unnamed>"`).
    pub thread: String,
    /// Class the thread already holds.
    pub held: &'static str,
    /// Where the thread acquired `held`.
    pub held_at: &'static Location<'static>,
    /// Class the thread is now acquiring.
    pub acquired: &'static str,
    /// Where the thread acquires `acquired`.
    pub acquired_at: &'static Location<'static>,
    /// The existing path `acquired -> ... -> held`, in order.
    pub chain: Vec<DependencyEdge>,
}

impl InversionReport {
    /// Whether the report involves the class named `class`; lockdep is global, so tests filter
    /// reports by their own class names.
    pub fn involves(&self, class: &str) -> bool {
        self.held == class || self.acquired == class || self.chain.iter().any(|e| e.from == class || e.to == class)
    }
}

impl fmt::Display for InversionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ReportKind::Recursion => {
                writeln!(f, "lockdep: possible recursive locking detected in thread '{}':", self.thread)?;
                writeln!(f, "  holding \"{}\" (acquired at {})", self.held, self.held_at)?;
                write!(
                    f,
                    "  and acquiring \"{}\" again at {} (nesting annotations are not modelled)",
                    self.acquired, self.acquired_at
                )
            }
            ReportKind::Inversion | ReportKind::Cycle => {
                writeln!(f, "lockdep: possible circular locking dependency detected in thread '{}':", self.thread)?;
                writeln!(
                    f,
                    "  holding \"{}\" (acquired at {}) and acquiring \"{}\" at {},",
                    self.held, self.held_at, self.acquired, self.acquired_at
                )?;
                write!(f, "  but an earlier acquisition established the reverse order:")?;
                for e in &self.chain {
                    write!(
                        f,
                        "\n    \"{}\" (acquired at {}) -> \"{}\" (acquired at {})",
                        e.from, e.from_at, e.to, e.to_at
                    )?;
                }
                Ok(())
            }
        }
    }
}

/// All reports so far, in order. Global, because lockdep is global in the kernel.
pub fn reports() -> Vec<InversionReport> {
    graph().reports.clone()
}

/// All reports so far, removing them from the global list.
pub fn take_reports() -> Vec<InversionReport> {
    std::mem::take(&mut graph().reports)
}

// ---------------------------------------------------------------------------------------------
// Global graph

#[derive(Clone, Copy)]
struct EdgeSites {
    from_at: &'static Location<'static>,
    to_at: &'static Location<'static>,
}

struct Graph {
    /// `classes[id - 1]` is the class with node number `id`.
    classes: Vec<&'static LockClass>,
    adjacency: HashMap<u32, Vec<u32>>,
    edges: HashMap<(u32, u32), EdgeSites>,
    /// Edges that would have closed a cycle; reported once, never added.
    rejected: HashSet<(u32, u32)>,
    /// Recursion already reported: (class, held site, acquisition site).
    recursion: HashSet<(u32, &'static Location<'static>, &'static Location<'static>)>,
    reports: Vec<InversionReport>,
}

static GRAPH: StdMutex<Option<Graph>> = StdMutex::new(None);

struct GraphGuard(StdMutexGuard<'static, Option<Graph>>);

impl std::ops::Deref for GraphGuard {
    type Target = Graph;
    fn deref(&self) -> &Graph {
        self.0.as_ref().expect("initialised by graph()")
    }
}

impl std::ops::DerefMut for GraphGuard {
    fn deref_mut(&mut self) -> &mut Graph {
        self.0.as_mut().expect("initialised by graph()")
    }
}

fn graph() -> GraphGuard {
    // A panic while the graph lock is held cannot leave it inconsistent enough to matter.
    let mut g = GRAPH.lock().unwrap_or_else(PoisonError::into_inner);
    g.get_or_insert_with(|| Graph {
        classes: Vec::new(),
        adjacency: HashMap::new(),
        edges: HashMap::new(),
        rejected: HashSet::new(),
        recursion: HashSet::new(),
        reports: Vec::new(),
    });
    GraphGuard(g)
}

/// Assigns `class` its node number (called once per class, from `LockClass::id`).
pub(crate) fn register(class: &'static LockClass, id: &AtomicU32) -> u32 {
    let mut g = graph();
    match id.load(Ordering::Acquire) {
        0 => {
            g.classes.push(class);
            let new = u32::try_from(g.classes.len()).expect("fewer than 2^32 lock classes");
            id.store(new, Ordering::Release);
            new
        }
        existing => existing,
    }
}

impl Graph {
    fn name(&self, id: u32) -> &'static str {
        self.classes[id as usize - 1].name()
    }

    /// The path `from -> ... -> to` if there is one (depth-first; the graph is tiny).
    fn path(&self, from: u32, to: u32) -> Option<Vec<u32>> {
        let mut parent: HashMap<u32, u32> = HashMap::new();
        let mut stack = vec![from];
        let mut seen: HashSet<u32> = HashSet::from([from]);
        while let Some(node) = stack.pop() {
            if node == to {
                let mut path = vec![to];
                let mut cur = to;
                while let Some(&p) = parent.get(&cur) {
                    path.push(p);
                    cur = p;
                }
                path.reverse();
                return Some(path);
            }
            for &next in self.adjacency.get(&node).into_iter().flatten() {
                if seen.insert(next) {
                    parent.insert(next, node);
                    stack.push(next);
                }
            }
        }
        None
    }

    /// Adds `held -> acquired` unless it closes a cycle, in which case the report is returned
    /// (and recorded) instead.
    fn add_edge(
        &mut self,
        held: u32,
        held_at: &'static Location<'static>,
        acquired: u32,
        acquired_at: &'static Location<'static>,
    ) -> Option<InversionReport> {
        let key = (held, acquired);
        if self.edges.contains_key(&key) || self.rejected.contains(&key) {
            return None;
        }
        let Some(path) = self.path(acquired, held) else {
            self.edges.insert(key, EdgeSites { from_at: held_at, to_at: acquired_at });
            self.adjacency.entry(held).or_default().push(acquired);
            return None;
        };
        self.rejected.insert(key);
        let chain: Vec<DependencyEdge> = path
            .windows(2)
            .map(|w| {
                let sites = self.edges[&(w[0], w[1])];
                DependencyEdge {
                    from: self.name(w[0]),
                    from_at: sites.from_at,
                    to: self.name(w[1]),
                    to_at: sites.to_at,
                }
            })
            .collect();
        let report = InversionReport {
            kind: if chain.len() == 1 { ReportKind::Inversion } else { ReportKind::Cycle },
            thread: thread_name(),
            held: self.name(held),
            held_at,
            acquired: self.name(acquired),
            acquired_at,
            chain,
        };
        self.reports.push(report.clone());
        Some(report)
    }

    fn add_recursion(
        &mut self,
        class: u32,
        held_at: &'static Location<'static>,
        acquired_at: &'static Location<'static>,
    ) -> Option<InversionReport> {
        if !self.recursion.insert((class, held_at, acquired_at)) {
            return None;
        }
        let report = InversionReport {
            kind: ReportKind::Recursion,
            thread: thread_name(),
            held: self.name(class),
            held_at,
            acquired: self.name(class),
            acquired_at,
            chain: Vec::new(),
        };
        self.reports.push(report.clone());
        Some(report)
    }
}

fn thread_name() -> String {
    std::thread::current().name().unwrap_or("<unnamed>").to_owned()
}

// ---------------------------------------------------------------------------------------------
// Per-thread held stack

/// How a lock is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Mutex, spinlock, write side of a rwlock.
    Exclusive,
    /// Read side of a rwlock / rw_semaphore.
    Shared,
}

struct Held {
    class: &'static LockClass,
    id: u32,
    instance: usize,
    mode: Mode,
    site: &'static Location<'static>,
    token: u64,
}

#[derive(Default)]
struct ThreadState {
    held: Vec<Held>,
    /// Edges this thread knows to be in the graph (or rejected): no global lock needed for them.
    known: HashSet<(u32, u32)>,
    next_token: u64,
}

thread_local! {
    static THREAD: RefCell<ThreadState> = RefCell::new(ThreadState::default());
}

/// `Sync` but not `Send`, like a lock guard: the held-stack entry must be popped on the thread
/// that pushed it, while sharing `&guard` with scoped threads stays possible.
pub(crate) type NotSend = PhantomData<std::sync::MutexGuard<'static, ()>>;

/// A lock's entry on the current thread's held stack; popping it is the guard's job, so it
/// lives in the guard. Not `Send`: the entry is on this thread's stack.
pub(crate) struct Acquired {
    token: u64,
    _not_send: NotSend,
}

impl Drop for Acquired {
    fn drop(&mut self) {
        let _ = THREAD.try_with(|t| {
            if let Ok(mut t) = t.try_borrow_mut() {
                if let Some(pos) = t.held.iter().rposition(|h| h.token == self.token) {
                    t.held.remove(pos);
                }
            }
        });
    }
}

/// Records an acquisition of a lock of `class` (address `instance`) at `site`. With `check`
/// (blocking acquisitions) the new dependencies are validated first; trylocks pass `false`.
/// Returns the held-stack entry, or `None` when the checker is off.
pub(crate) fn acquire(
    class: &'static LockClass,
    instance: usize,
    mode: Mode,
    site: &'static Location<'static>,
    check: bool,
) -> Option<Acquired> {
    if !enabled() {
        return None;
    }
    let id = class.id();
    let mut reports = Vec::new();
    let token = THREAD
        .try_with(|t| {
            let mut t = t.try_borrow_mut().ok()?;
            if check {
                let mut new_edges: Vec<(u32, &'static Location<'static>)> = Vec::new();
                let mut recursion: Vec<&'static Location<'static>> = Vec::new();
                for h in &t.held {
                    if h.id == id {
                        let exclusive = h.mode == Mode::Exclusive || mode == Mode::Exclusive;
                        let both = h.mode == Mode::Exclusive && mode == Mode::Exclusive;
                        if both || (exclusive && h.instance == instance) {
                            recursion.push(h.site);
                        }
                    } else if !t.known.contains(&(h.id, id)) && !new_edges.iter().any(|&(from, _)| from == h.id) {
                        new_edges.push((h.id, h.site));
                    }
                }
                if !new_edges.is_empty() || !recursion.is_empty() {
                    let mut g = graph();
                    for held_at in recursion {
                        reports.extend(g.add_recursion(id, held_at, site));
                    }
                    for (from, from_at) in new_edges {
                        reports.extend(g.add_edge(from, from_at, id, site));
                        t.known.insert((from, id));
                    }
                }
            }
            let token = t.next_token;
            t.next_token += 1;
            t.held.push(Held { class, id, instance, mode, site, token });
            Some(token)
        })
        .ok()
        .flatten();
    for report in reports {
        tracing::error!("{report}");
    }
    token.map(|token| Acquired { token, _not_send: PhantomData })
}

/// Backs [`lockdep_assert_held`](crate::lockdep_assert_held).
pub(crate) fn assert_held(class: &'static LockClass, caller: &'static Location<'static>) {
    if !enabled() {
        return;
    }
    let id = class.id();
    let held = THREAD.try_with(|t| {
        let t = t.try_borrow().ok()?;
        if t.held.iter().any(|h| h.id == id) {
            return None;
        }
        Some(
            t.held
                .iter()
                .map(|h| format!("\"{}\" (acquired at {})", h.class.name(), h.site))
                .collect::<Vec<_>>()
                .join(", "),
        )
    });
    if let Ok(Some(holding)) = held {
        panic!(
            "lockdep_assert_held(\"{}\") failed at {caller}: this thread does not hold it \
             (it holds: [{holding}])",
            class.name()
        );
    }
}

#[cfg(all(test, not(gmem_loom)))]
pub(crate) mod tests {
    use super::*;
    use crate::{lockdep_assert_held, Mutex, RwLock};
    use std::sync::{Mutex as TestMutex, MutexGuard as TestGuard};

    /// Tests that depend on the global enabled flag run one at a time and see it on.
    static SERIAL: TestMutex<()> = TestMutex::new(());

    pub(crate) struct CheckerOn {
        previous: bool,
        _serial: TestGuard<'static, ()>,
    }

    impl Drop for CheckerOn {
        fn drop(&mut self) {
            set_enabled(self.previous);
        }
    }

    /// Serialises with the other checker tests and turns the checker on (also in release).
    pub(crate) fn checker_on() -> CheckerOn {
        let serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
        let previous = ENABLED.load(Ordering::Relaxed);
        set_enabled(true);
        CheckerOn { previous, _serial: serial }
    }

    fn reports_for(class: &str) -> Vec<InversionReport> {
        reports().into_iter().filter(|r| r.involves(class)).collect()
    }

    fn site(loc: &Location<'_>) -> String {
        format!("{}:{}", loc.file(), loc.line())
    }

    #[test]
    fn abba_inversion_reports_all_four_sites() {
        static A: LockClass = LockClass::new("abba-test A");
        static B: LockClass = LockClass::new("abba-test B");
        let _on = checker_on();
        let a = Mutex::new(&A, ());
        let b = Mutex::new(&B, ());

        let (a1, b1) = {
            let a1 = Location::caller();
            let _ga = a.lock();
            let b1 = Location::caller();
            let _gb = b.lock();
            (a1, b1)
        };
        assert!(reports_for("abba-test A").is_empty());
        let (b2, a2) = {
            let b2 = Location::caller();
            let _gb = b.lock();
            let a2 = Location::caller();
            let _ga = a.lock();
            (b2, a2)
        };
        // Same order again: the inversion is reported once.
        {
            let _gb = b.lock();
            let _ga = a.lock();
        }

        let found = reports_for("abba-test A");
        assert_eq!(found.len(), 1, "{found:#?}");
        let r = &found[0];
        assert_eq!(r.kind, ReportKind::Inversion);
        assert_eq!((r.held, r.acquired), ("abba-test B", "abba-test A"));
        assert_eq!(r.chain.len(), 1);
        let text = r.to_string();
        // `Location::caller()` outside a #[track_caller] fn is the line of that call; the lock
        // call is on the next line.
        for (loc, what) in [(a1, "A first"), (b1, "B first"), (b2, "B second"), (a2, "A second")] {
            let expected = format!("{}:{}", loc.file(), loc.line() + 1);
            assert!(text.contains(&expected), "{what} site {expected} missing from:\n{text}");
        }
        assert_eq!(site(r.chain[0].from_at), format!("{}:{}", a1.file(), a1.line() + 1));
        assert_eq!(site(r.chain[0].to_at), format!("{}:{}", b1.file(), b1.line() + 1));
        assert_eq!(site(r.held_at), format!("{}:{}", b2.file(), b2.line() + 1));
        assert_eq!(site(r.acquired_at), format!("{}:{}", a2.file(), a2.line() + 1));
    }

    #[test]
    fn three_class_cycle_is_reported() {
        static A: LockClass = LockClass::new("cycle-test A");
        static B: LockClass = LockClass::new("cycle-test B");
        static C: LockClass = LockClass::new("cycle-test C");
        let _on = checker_on();
        let a = Mutex::new(&A, ());
        let b = RwLock::new(&B, ());
        let c = Mutex::new(&C, ());
        {
            let _ga = a.lock();
            let _gb = b.read();
        }
        {
            let _gb = b.write();
            let _gc = c.lock();
        }
        assert!(reports_for("cycle-test A").is_empty());
        {
            let _gc = c.lock();
            let _ga = a.lock();
        }
        let found = reports_for("cycle-test A");
        assert_eq!(found.len(), 1, "{found:#?}");
        let r = &found[0];
        assert_eq!(r.kind, ReportKind::Cycle);
        assert_eq!((r.held, r.acquired), ("cycle-test C", "cycle-test A"));
        let path: Vec<_> = r.chain.iter().map(|e| (e.from, e.to)).collect();
        assert_eq!(path, [("cycle-test A", "cycle-test B"), ("cycle-test B", "cycle-test C")]);
    }

    #[test]
    fn consistent_order_and_non_lifo_release_produce_no_report() {
        static A: LockClass = LockClass::new("order-test A");
        static B: LockClass = LockClass::new("order-test B");
        static C: LockClass = LockClass::new("order-test C");
        let _on = checker_on();
        let a = Mutex::new(&A, ());
        let b = Mutex::new(&B, ());
        let c = Mutex::new(&C, ());
        for _ in 0..3 {
            let ga = a.lock();
            let gb = b.lock();
            drop(ga); // not LIFO
            let gc = c.lock();
            drop(gb);
            drop(gc);
        }
        {
            let _ga = a.lock();
            let _gc = c.lock();
        }
        // Trylocks create no dependency, so a trylock "against" the order is fine.
        {
            let _gc = c.lock();
            let _ga = a.try_lock().expect("free");
        }
        assert!(reports_for("order-test A").is_empty());
        assert!(reports_for("order-test B").is_empty());
        assert!(reports_for("order-test C").is_empty());
    }

    #[test]
    fn disabled_checker_records_nothing() {
        static A: LockClass = LockClass::new("disabled-test A");
        static B: LockClass = LockClass::new("disabled-test B");
        let _on = checker_on();
        set_enabled(false);
        assert!(!enabled());
        let a = Mutex::new(&A, ());
        let b = Mutex::new(&B, ());
        {
            let _ga = a.lock();
            let _gb = b.lock();
        }
        {
            let _gb = b.lock();
            let _ga = a.lock();
        }
        let a2 = Mutex::new(&A, ());
        {
            let _ga = a.lock();
            let _ga2 = a2.lock();
        }
        lockdep_assert_held(&A); // not held, but the checker is off
        assert!(reports_for("disabled-test A").is_empty());
        // Turning it on later does not resurrect the unchecked acquisitions.
        set_enabled(true);
        {
            let _gb = b.lock();
            let _ga = a.lock();
        }
        assert!(reports_for("disabled-test A").is_empty());
    }

    #[test]
    fn same_class_nesting() {
        static INODE: LockClass = LockClass::new("nesting-test inode");
        static MAP: LockClass = LockClass::new("nesting-test mapping");
        let _on = checker_on();
        let i1 = Mutex::new(&INODE, ());
        let i2 = Mutex::new(&INODE, ());
        let m1 = RwLock::new(&MAP, ());
        let m2 = RwLock::new(&MAP, ());
        {
            // shared/shared: allowed, same instance or not
            let _r1 = m1.read();
            let _r2 = m2.read();
            let _r3 = m1.read();
        }
        {
            // shared then exclusive on a different instance: allowed (no nesting annotation)
            let _r1 = m1.read();
            let _w2 = m2.write();
        }
        assert!(reports_for("nesting-test mapping").is_empty());
        {
            let _g1 = i1.lock();
            let _g2 = i2.lock();
        }
        let found = reports_for("nesting-test inode");
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].kind, ReportKind::Recursion);
        assert!(found[0].to_string().contains("recursive locking"));
    }

    #[test]
    fn assert_held_passes_when_held() {
        static A: LockClass = LockClass::new("assert-test held");
        let _on = checker_on();
        let a = Mutex::new(&A, 0);
        let g = a.lock();
        lockdep_assert_held(&A);
        drop(g);
        let l = RwLock::new(&A, 0);
        let r = l.read();
        lockdep_assert_held(&A);
        drop(r);
    }

    #[test]
    #[should_panic(expected = "lockdep_assert_held(\"assert-test not held\") failed")]
    fn assert_held_panics_when_not_held() {
        static A: LockClass = LockClass::new("assert-test not held");
        let _on = checker_on();
        let a = Mutex::new(&A, 0);
        drop(a.lock());
        lockdep_assert_held(&A);
    }
}
