//! Kernel WARNs as data. The real code's `WARN_ON()`, `WARN_ON_ONCE()`, `KVM_BUG_ON()` and
//! KASAN-style reports do not stop the kernel, so the simulator does not panic either: it records
//! each one in the machine's [`WarnRegistry`] (and logs it), and tests assert on the list.

use std::collections::HashSet;
use std::fmt;
use std::panic::Location;

use crate::lock::{LockClass, Mutex};

/// The registry's lock; a leaf (nothing is taken under it), so it can be hit with any lock held.
static WARN_REGISTRY: LockClass = LockClass::new("warn registry");

/// Which kernel macro or checker produced a [`Warning`], so tests can tell a tolerated
/// `WARN_ON_ONCE` from a use-after-free.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WarnKind {
    /// `WARN_ON(cond)`.
    Warn,
    /// `WARN_ON_ONCE(cond)`.
    WarnOnce,
    /// `KVM_BUG_ON()` / `BUG_ON()`: the kernel would mark the VM bugged or oops.
    Bug,
    /// A KASAN-style report: access to freed (or never-allocated) simulated memory.
    UseAfterFree,
    /// A simulator-side invariant check that has no single kernel macro.
    Invariant,
    /// A fault the kernel does not recover from (an oops): for example an RMP #PF on a host
    /// write to a guest-owned frame, which kills the host.
    Oops,
}

impl WarnKind {
    /// The kernel spelling, used in `Display`.
    pub fn name(self) -> &'static str {
        match self {
            WarnKind::Warn => "WARN_ON",
            WarnKind::WarnOnce => "WARN_ON_ONCE",
            WarnKind::Bug => "BUG",
            WarnKind::UseAfterFree => "KASAN: use-after-free",
            WarnKind::Invariant => "invariant",
            WarnKind::Oops => "Oops",
        }
    }
}

impl fmt::Display for WarnKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One recorded warning: what fired, where in the simulator source, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// Which macro or checker fired.
    pub kind: WarnKind,
    /// The call site (through `#[track_caller]`), as the kernel's WARN prints file:line.
    pub location: &'static Location<'static>,
    /// Free-form detail (the state that made the condition true).
    pub detail: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WARNING {} at {}:{}: {}", self.kind, self.location.file(), self.location.line(), self.detail)
    }
}

#[derive(Default)]
struct State {
    warnings: Vec<Warning>,
    /// `WARN_ON_ONCE` sites that already fired in this registry.
    once: HashSet<&'static Location<'static>>,
}

/// Every WARN_ON / WARN_ON_ONCE / KVM_BUG_ON / KASAN-style report the model hits, in order. One
/// per simulated machine (tests run in parallel, so it is not global).
pub struct WarnRegistry {
    state: Mutex<State>,
}

impl Default for WarnRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for WarnRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WarnRegistry").finish_non_exhaustive()
    }
}

impl WarnRegistry {
    /// An empty registry for a new machine.
    pub fn new() -> Self {
        Self { state: Mutex::new(&WARN_REGISTRY, State::default()) }
    }

    /// `WARN_ON(cond)`: records (kind [`WarnKind::Warn`]) when `cond` is true; returns `cond`,
    /// like the kernel macro, so it can guard an early return. `detail` is only evaluated when
    /// the warning fires.
    #[track_caller]
    #[doc(alias = "WARN_ON")]
    pub fn warn_on(&self, cond: bool, detail: impl FnOnce() -> String) -> bool {
        if cond {
            self.record(WarnKind::Warn, Location::caller(), detail());
        }
        cond
    }

    /// `WARN_ON_ONCE(cond)`: records only the first time this call site fires in this registry;
    /// returns `cond` every time.
    #[track_caller]
    #[doc(alias = "WARN_ON_ONCE")]
    pub fn warn_on_once(&self, cond: bool, detail: impl FnOnce() -> String) -> bool {
        if cond {
            let location = Location::caller();
            let first = self.state.lock().once.insert(location);
            if first {
                self.record(WarnKind::WarnOnce, location, detail());
            }
        }
        cond
    }

    /// Records a warning of any kind unconditionally (`KVM_BUG_ON` after its test, KASAN).
    #[track_caller]
    #[doc(alias = "KVM_BUG_ON")]
    pub fn report(&self, kind: WarnKind, detail: String) {
        self.record(kind, Location::caller(), detail);
    }

    fn record(&self, kind: WarnKind, location: &'static Location<'static>, detail: String) {
        let warning = Warning { kind, location, detail };
        tracing::warn!("{warning}");
        self.state.lock().warnings.push(warning);
    }

    /// How many warnings were recorded.
    pub fn count(&self) -> usize {
        self.state.lock().warnings.len()
    }

    /// Whether the run was clean.
    pub fn is_empty(&self) -> bool {
        self.count() == 0
    }

    /// A copy of the warnings so far, in order.
    pub fn snapshot(&self) -> Vec<Warning> {
        self.state.lock().warnings.clone()
    }

    /// The warnings so far, clearing the list (the `WARN_ON_ONCE` sites stay spent, as in the
    /// kernel).
    pub fn take(&self) -> Vec<Warning> {
        std::mem::take(&mut self.state.lock().warnings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warn_on_returns_cond_and_records_location() {
        crate::check(|| {
            let w = WarnRegistry::default();
            assert!(w.is_empty());
            assert!(!w.warn_on(false, || unreachable!("detail of a false WARN_ON")));
            assert!(w.is_empty());
            let here = Location::caller();
            assert!(w.warn_on(true, || "refcount underflow".to_owned()));
            let got = w.snapshot();
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].kind, WarnKind::Warn);
            assert_eq!(got[0].location.file(), here.file());
            assert_eq!(got[0].location.line(), here.line() + 1);
            assert_eq!(
                got[0].to_string(),
                format!("WARNING WARN_ON at {}:{}: refcount underflow", here.file(), here.line() + 1)
            );
            w.report(WarnKind::UseAfterFree, "folio 3".into());
            assert_eq!(w.count(), 2);
            assert_eq!(w.take().len(), 2);
            assert!(w.is_empty());
        });
    }

    #[test]
    fn warn_on_once_records_once_per_site() {
        crate::check(|| {
            let w = WarnRegistry::new();
            let site = |w: &WarnRegistry, cond: bool| w.warn_on_once(cond, || "once".into());
            assert!(!site(&w, false));
            for _ in 0..3 {
                assert!(site(&w, true));
            }
            assert_eq!(w.count(), 1);
            // A different call site fires independently.
            assert!(w.warn_on_once(true, || "other".into()));
            assert_eq!(w.count(), 2);
            // Taking the list does not re-arm the site.
            w.take();
            assert!(site(&w, true));
            assert!(w.is_empty());
            // Another registry (another machine) has its own once-state.
            let w2 = WarnRegistry::new();
            assert!(site(&w2, true));
            assert_eq!(w2.snapshot()[0].kind, WarnKind::WarnOnce);
        });
    }
}
