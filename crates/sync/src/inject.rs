//! Fault injection: the kernel's failslab / fail_page_alloc and a pending signal, as points the
//! simulator evaluates where the real code can fail, so tests can drive every error path
//! (ENOMEM from folio or xarray allocation, EINTR from an interruptible wait, EIO from the arch
//! prepare hook of guest_memfd).

use std::fmt;

use crate::atomic::{AtomicU32, Ordering};
use crate::lock::{LockClass, Mutex};

/// The injector's lock; a leaf.
static FAULT_INJECTOR: LockClass = LockClass::new("fault injector");

/// A place where the simulated kernel can fail.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultPoint {
    /// Allocating a folio for the page cache (`filemap_alloc_folio()`): ENOMEM.
    AllocFolio,
    /// Allocating xarray nodes (`xa_store()` with GFP_KERNEL): ENOMEM.
    AllocXarray,
    /// `signal_pending(current)` in an interruptible wait or loop: EINTR / ERESTARTSYS.
    SignalPending,
    /// The arch prepare hook (`kvm_arch_gmem_prepare()`, called from `kvm_gmem_prepare_folio()`)
    /// fails for any VM type: EIO, as a failing hook would report.
    GmemPrepare,
}

const ALL: [FaultPoint; 4] =
    [FaultPoint::AllocFolio, FaultPoint::AllocXarray, FaultPoint::SignalPending, FaultPoint::GmemPrepare];

impl FaultPoint {
    /// Short name, as used on command lines and in scenario files.
    pub fn name(self) -> &'static str {
        match self {
            FaultPoint::AllocFolio => "alloc_folio",
            FaultPoint::AllocXarray => "alloc_xarray",
            FaultPoint::SignalPending => "signal",
            FaultPoint::GmemPrepare => "gmem_prepare",
        }
    }

    /// Parses [`name`](Self::name); also accepts `"ENOMEM"` (the folio allocation, the usual
    /// meaning) and `"signal_pending"`.
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "alloc_folio" | "ENOMEM" => Some(FaultPoint::AllocFolio),
            "alloc_xarray" => Some(FaultPoint::AllocXarray),
            "signal" | "signal_pending" => Some(FaultPoint::SignalPending),
            "gmem_prepare" => Some(FaultPoint::GmemPrepare),
            _ => None,
        }
    }

    /// Every point, for help texts and exhaustive sweeps.
    pub fn all() -> &'static [FaultPoint] {
        &ALL
    }

    /// One line for help texts.
    pub fn describe(self) -> &'static str {
        match self {
            FaultPoint::AllocFolio => "folio allocation for the page cache fails (ENOMEM)",
            FaultPoint::AllocXarray => "xarray node allocation fails (ENOMEM)",
            FaultPoint::SignalPending => "a signal is pending in an interruptible wait (EINTR)",
            FaultPoint::GmemPrepare => "the arch prepare hook kvm_arch_gmem_prepare fails (EIO)",
        }
    }

    fn bit(self) -> u32 {
        1 << self.index()
    }

    fn index(self) -> usize {
        match self {
            FaultPoint::AllocFolio => 0,
            FaultPoint::AllocXarray => 1,
            FaultPoint::SignalPending => 2,
            FaultPoint::GmemPrepare => 3,
        }
    }
}

impl fmt::Display for FaultPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Copy, Default)]
struct Point {
    /// Evaluations still to pass before failing.
    after: u64,
    /// Failures still to inject (`u64::MAX`: forever).
    count: u64,
    fired: u64,
}

/// Armed fault points (one per simulated machine). `arm(p, after, count)`: the next `after`
/// evaluations of `p` pass, then the following `count` evaluations fail (`count == u64::MAX`:
/// forever).
pub struct FaultInjector {
    /// Bit per point that is armed; the fast path reads only this.
    armed: AtomicU32,
    points: Mutex<[Point; ALL.len()]>,
}

impl Default for FaultInjector {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for FaultInjector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultInjector").finish_non_exhaustive()
    }
}

impl FaultInjector {
    /// Nothing armed.
    pub fn new() -> Self {
        Self { armed: AtomicU32::new(0), points: Mutex::new(&FAULT_INJECTOR, [Point::default(); ALL.len()]) }
    }

    /// Arms `point`: the next `after` evaluations pass, the following `count` fail. Replaces a
    /// previous arming; the fired count is kept. `count == 0` disarms.
    pub fn arm(&self, point: FaultPoint, after: u64, count: u64) {
        let mut points = self.points.lock();
        let p = &mut points[point.index()];
        p.after = after;
        p.count = count;
        if count == 0 {
            self.armed.fetch_and(!point.bit(), Ordering::Relaxed);
        } else {
            self.armed.fetch_or(point.bit(), Ordering::Relaxed);
        }
    }

    /// Disarms `point`; it passes from now on.
    pub fn disarm(&self, point: FaultPoint) {
        self.arm(point, 0, 0);
    }

    /// Evaluate a point: true means "fail here" (the caller returns ENOMEM, EINTR...). The fast
    /// path when nothing is armed is one Relaxed load.
    pub fn should_fail(&self, point: FaultPoint) -> bool {
        if self.armed.load(Ordering::Relaxed) & point.bit() == 0 {
            return false;
        }
        let mut points = self.points.lock();
        let p = &mut points[point.index()];
        if p.count == 0 {
            return false;
        }
        if p.after > 0 {
            p.after -= 1;
            return false;
        }
        if p.count != u64::MAX {
            p.count -= 1;
            if p.count == 0 {
                self.armed.fetch_and(!point.bit(), Ordering::Relaxed);
            }
        }
        p.fired += 1;
        tracing::debug!(point = point.name(), "fault injected");
        true
    }

    /// `signal_pending(current)`: the [`FaultPoint::SignalPending`] point.
    pub fn signal_pending(&self) -> bool {
        self.should_fail(FaultPoint::SignalPending)
    }

    /// How many times `point` has failed so far.
    pub fn fired(&self, point: FaultPoint) -> u64 {
        self.points.lock()[point.index()].fired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_and_count() {
        crate::check(|| {
            let f = FaultInjector::default();
            assert!(!f.should_fail(FaultPoint::AllocFolio));
            f.arm(FaultPoint::AllocFolio, 2, 3);
            let got: Vec<bool> = (0..7).map(|_| f.should_fail(FaultPoint::AllocFolio)).collect();
            assert_eq!(got, [false, false, true, true, true, false, false]);
            assert_eq!(f.fired(FaultPoint::AllocFolio), 3);
            // Other points are unaffected.
            assert!(!f.should_fail(FaultPoint::AllocXarray));
            assert_eq!(f.fired(FaultPoint::AllocXarray), 0);
        });
    }

    #[test]
    fn forever_and_disarm() {
        crate::check(|| {
            let f = FaultInjector::new();
            f.arm(FaultPoint::SignalPending, 0, u64::MAX);
            for _ in 0..100 {
                assert!(f.signal_pending());
            }
            f.disarm(FaultPoint::SignalPending);
            assert!(!f.signal_pending());
            assert_eq!(f.fired(FaultPoint::SignalPending), 100);
            // Re-arming keeps the fired count.
            f.arm(FaultPoint::SignalPending, 1, 1);
            assert!(!f.signal_pending());
            assert!(f.signal_pending());
            assert!(!f.signal_pending());
            assert_eq!(f.fired(FaultPoint::SignalPending), 101);
        });
    }

    #[test]
    fn names() {
        for &p in FaultPoint::all() {
            assert_eq!(FaultPoint::from_name(p.name()), Some(p));
            assert!(!p.describe().is_empty());
            assert_eq!(p.to_string(), p.name());
        }
        assert_eq!(FaultPoint::all().len(), 4);
        assert_eq!(FaultPoint::from_name("ENOMEM"), Some(FaultPoint::AllocFolio));
        assert_eq!(FaultPoint::from_name("signal"), Some(FaultPoint::SignalPending));
        assert_eq!(FaultPoint::from_name("alloc_xarray"), Some(FaultPoint::AllocXarray));
        assert_eq!(FaultPoint::from_name("nope"), None);
    }
}
