//! The run's watchdog: what each thread is doing, the test for "stuck", the diagnosis, and the
//! last-resort exit (see [the module docs](super#the-watchdog)).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gmem_kvm::Kvm;
use gmem_uapi::Vmm;

use super::streams::{ControlStream, VcpuAction, VcpuStream};
use super::workers::Shared;

/// What a worker thread is doing, for the diagnosis, and how far it got, for the watchdog: a
/// few relaxed stores per operation to a cache line of the thread's own (padded, so vCPUs do
/// not bounce each other's lines).
#[derive(Debug, Default)]
pub(super) struct Status {
    /// Operations that made progress (see [`watch`]).
    moved: AtomicU64,
    /// The index of the operation in progress (or, between operations, of the next one).
    op: AtomicU64,
    phase: AtomicU8,
    /// When the phase began, in nanoseconds since the run started.
    since: AtomicU64,
}

/// The phases of [`Status`].
pub(super) mod phase {
    /// Not started, or between two operations.
    pub const IDLE: u8 = 0;
    /// Running operation `op`.
    pub const IN_OP: u8 = 1;
    /// A vCPU at the pause barrier.
    pub const PAUSED: u8 = 2;
    /// The control thread waiting for the vCPUs to make their share of operations.
    pub const PACING: u8 = 3;
    /// The control thread waiting for every vCPU to reach the pause barrier.
    pub const PAUSING: u8 = 4;
    /// The control thread checking the invariants (the vCPUs paused).
    pub const CHECKING: u8 = 5;
    /// The control thread, done, waiting for the vCPUs to finish.
    pub const FINAL_WAIT: u8 = 6;
    /// The thread's work is over.
    pub const FINISHED: u8 = 7;
    /// The thread panicked.
    pub const PANICKED: u8 = 8;
    /// The thread's wait was aborted (by the watchdog, or after another thread's panic).
    pub const ABORTED: u8 = 9;
}

impl Status {
    pub(super) fn set(&self, started: Instant, phase: u8, op: u64) {
        self.op.store(op, Ordering::Relaxed);
        self.since.store(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.phase.store(phase, Ordering::Release);
    }

    /// One more operation made progress.
    pub(super) fn moved(&self) {
        self.moved.store(self.moved.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    /// The operation index last recorded.
    pub(super) fn op(&self) -> u64 {
        self.op.load(Ordering::Relaxed)
    }

    pub(super) fn phase(&self) -> u8 {
        self.phase.load(Ordering::Acquire)
    }

    /// `(phase, op, time in the phase)`.
    fn read(&self, started: Instant) -> (u8, u64, Duration) {
        let phase = self.phase.load(Ordering::Acquire);
        let since = Duration::from_nanos(self.since.load(Ordering::Relaxed));
        (phase, self.op.load(Ordering::Relaxed), started.elapsed().saturating_sub(since))
    }
}

/// Why the watchdog ended a run.
pub(super) enum Trip {
    /// No operation completed for this long.
    NoProgress(Duration),
    /// A thread waited this long in one wait (the wait's report).
    LongWait(String),
}

/// Watches the run until every worker is done (a message on `over`, which also wakes it, so the
/// end of a run waits for no poll interval): progress is the count of
/// operations that did something (vCPU operations the model did not give up on, control
/// operations); the time of an invariant check does not count against it. Returns why it
/// tripped, after aborting the run; `None` if the run ended by itself. Also ends a timed run at
/// its deadline (the control thread's own check cannot if it is stuck).
pub(super) fn watch(shared: &Shared<'_>, deadline: Option<Instant>, over: mpsc::Receiver<()>) -> Option<Trip> {
    let limit = shared.config.watchdog;
    let poll = (limit / 20).clamp(Duration::from_millis(1), Duration::from_millis(50));
    let mut last = u64::MAX;
    let mut last_change = Instant::now();
    loop {
        if let Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) = over.recv_timeout(poll) {
            return None;
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            shared.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        let progress = shared.vcpus.iter().chain([&shared.control]).map(|s| s.moved.load(Ordering::Relaxed)).sum();
        // A panic being reported (its hook may symbolize a backtrace for seconds) is not a
        // hang: the panic is the failure, and the clock restarts once it is caught.
        let reporting_panic = shared.domain.panics_begun() as usize > shared.panics_caught();
        if progress != last || shared.control.phase() == phase::CHECKING || reporting_panic {
            last = progress;
            last_change = now;
        }
        let trip = if let Some(wait) = shared.domain.waits().into_iter().find(|w| w.waited > limit) {
            Some(Trip::LongWait(wait.to_string()))
        } else if now - last_change > limit {
            Some(Trip::NoProgress(now - last_change))
        } else {
            None
        };
        if let Some(trip) = trip {
            return Some(trip);
        }
    }
}

impl Trip {
    /// One line: why the run was ended.
    pub(super) fn reason(&self, limit: Duration) -> String {
        match self {
            Trip::NoProgress(for_) => format!(
                "the watchdog ended the run: no operation made progress for {:.3} s (--watchdog {})",
                for_.as_secs_f64(),
                limit.as_secs_f64()
            ),
            Trip::LongWait(wait) => {
                format!("the watchdog ended the run: {wait}, longer than --watchdog {}", limit.as_secs_f64())
            }
        }
    }
}

/// The diagnosis of a stuck run, from lock-free reads only (a stuck thread may hold any lock):
/// who waits on what, what each thread was doing, the VM's MMU invalidation and SRCU state.
pub(super) fn diagnose(shared: &Shared<'_>, kvm: Option<&Kvm>, started: Instant) -> String {
    let mut out = String::new();
    let waits = shared.domain.waits();
    let _ = writeln!(out, "waits in progress:");
    if waits.is_empty() {
        let _ = writeln!(out, "  none registered (the threads spin or retry without blocking)");
    }
    for wait in &waits {
        let _ = writeln!(out, "  {wait}");
    }
    let _ = writeln!(out, "threads:");
    for (v, status) in shared.vcpus.iter().enumerate() {
        let (phase, op, for_) = status.read(started);
        let what = match phase {
            phase::IN_OP => format!("in operation {op}: {}", describe_vcpu_op(shared, v as u32, op)),
            phase::PAUSED => "at the pause barrier (the control thread checks invariants)".to_string(),
            phase::IDLE => format!("between operations (next: {op})"),
            phase::FINISHED => format!("finished after {op} operations"),
            phase::PANICKED => format!("panicked in operation {op}: {}", describe_vcpu_op(shared, v as u32, op)),
            _ => format!("aborted in operation {op}: {}", describe_vcpu_op(shared, v as u32, op)),
        };
        let _ = writeln!(out, "  vcpu{v}: {what}, for {:.3} s", for_.as_secs_f64());
    }
    let (phase, op, for_) = shared.control.read(started);
    let what = match phase {
        phase::IN_OP => format!("in control operation {op}: {}", describe_control_op(shared, op)),
        phase::PACING => format!("waiting for the vCPUs' share of operations before control operation {op}"),
        phase::PAUSING => format!("waiting for every vCPU to pause after control operation {op}"),
        phase::CHECKING => format!("checking invariants after control operation {op}"),
        phase::FINAL_WAIT => format!("done ({op} control operations), waiting for the vCPUs to finish"),
        phase::FINISHED => format!("finished after {op} control operations"),
        phase::PANICKED => format!("panicked in control operation {op}: {}", describe_control_op(shared, op)),
        phase::ABORTED => format!("aborted in control operation {op}: {}", describe_control_op(shared, op)),
        _ => format!("starting (control operation {op})"),
    };
    let _ = writeln!(out, "  control: {what}, for {:.3} s", for_.as_secs_f64());
    if let Some(kvm) = kvm {
        let (start, end) = kvm.mmu_invalidate_range();
        let _ = writeln!(
            out,
            "MMU invalidation: mmu_invalidate_in_progress={} range=[{start:#x}, {end:#x}) mmu_invalidate_seq={}",
            kvm.mmu_invalidate_in_progress(),
            kvm.mmu_invalidate_seq()
        );
        let (index, readers) = kvm.srcu.state();
        let _ = writeln!(
            out,
            "SRCU {}: index {index} (new readers on half {}), readers on half 0: {}, on half 1: {}",
            kvm.srcu.name(),
            index & 1,
            readers[0],
            readers[1]
        );
    }
    out
}

/// vCPU `vcpu`'s operation `index`, regenerated from its stream (streams are a function of the
/// seed, so nothing is recorded per operation).
fn describe_vcpu_op(shared: &Shared<'_>, vcpu: u32, index: u64) -> String {
    match VcpuStream::new(shared.config, vcpu).nth(index as usize) {
        Some(op) => {
            let gpa = Vmm::page_gpa(op.page);
            match op.action {
                VcpuAction::Load => format!("load of page {} (gpa {gpa:#x})", op.page),
                VcpuAction::Store => format!("store to page {} (gpa {gpa:#x})", op.page),
                VcpuAction::Convert { npages, to_private } => format!(
                    "conversion of {npages} pages from page {} (gpa {gpa:#x}) to {}",
                    op.page,
                    if to_private { "private" } else { "shared" }
                ),
            }
        }
        None => "none".to_string(),
    }
}

fn describe_control_op(shared: &Shared<'_>, index: u64) -> String {
    ControlStream::new(shared.config).nth(index as usize).map_or("none".to_string(), |op| format!("{op:?}"))
}

/// At most this many lines of the state dump go into a report.
const DUMP_LINES: usize = 400;

/// The `dump` verb's text for the run's host, cut to [`DUMP_LINES`].
pub(super) fn state_dump(vmm: &Vmm) -> String {
    let lines = crate::backends::dump::host(vmm.host());
    let mut out = String::from("state dump:\n");
    for line in lines.iter().take(DUMP_LINES) {
        let _ = writeln!(out, "  {line}");
    }
    if lines.len() > DUMP_LINES {
        let _ = writeln!(out, "  ... {} more lines", lines.len() - DUMP_LINES);
    }
    out
}

/// The last resort: unless disarmed (dropped) within `grace`, prints `report` and the replay
/// command on standard error and exits the process with status 1. Armed while the threads of an
/// aborted run unwind and its state is dumped, since a thread in a wait that does not poll
/// (or a lock an unwound thread left behind) would otherwise hang the process.
pub(super) struct Fuse {
    disarm: Option<mpsc::Sender<()>>,
}

impl Fuse {
    pub(super) fn arm(grace: Duration, report: String) -> Fuse {
        let (disarm, disarmed) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("watchdog-fuse".to_string())
            .spawn(move || {
                if let Err(mpsc::RecvTimeoutError::Timeout) = disarmed.recv_timeout(grace) {
                    eprintln!("gmem-sim run: {report}");
                    eprintln!(
                        "gmem-sim run: some thread did not unwind within {:.1} s of the abort; exiting",
                        grace.as_secs_f64()
                    );
                    std::process::exit(1);
                }
            })
            .expect("spawn the watchdog's fuse");
        Fuse { disarm: Some(disarm) }
    }
}

impl Drop for Fuse {
    fn drop(&mut self) {
        if let Some(disarm) = self.disarm.take() {
            let _ = disarm.send(());
        }
    }
}

/// The grace period of [`Fuse`] for a run with watchdog `limit`.
pub(super) fn grace(limit: Duration) -> Duration {
    super::config::UNWIND_GRACE.max(limit)
}
