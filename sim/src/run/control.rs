//! The control thread of a run: it draws control operations (conversions, punches, memslot
//! changes, memory failures, guest_memfd closes) from its stream, paces them against the vCPUs'
//! accesses, pauses the vCPUs between accesses to check the invariants, and moves the progress
//! bar. It runs on the thread that called [`run`](super::run), inside the run's wait domain.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use gmem_kvm::invariants::Violation;
use gmem_kvm::Kvm;

use super::watchdog::phase;
use super::workers::{control_op, leave_an_invalidation_open, leave_an_srcu_reader_inside, Shared};
use super::{Breakage, ControlStream, CHECK_EVERY_CONTROL_OP, INVARIANT_EVERY};
use crate::progress::Progress;

/// The control thread's state: what it has done so far, and what it paces and reports against.
pub(super) struct ControlThread<'r, 's> {
    shared: &'r Shared<'s>,
    /// The VM, for the deliberate breakages (`--break`).
    kvm: Option<&'r Kvm>,
    progress: &'r Progress,
    started: Instant,
    /// The end of a timed run.
    deadline: Option<Instant>,
    /// Control operations done.
    pub(super) done: u64,
    /// Invariant checks made.
    pub(super) checks: u64,
    /// What they found.
    pub(super) violations: Vec<Violation>,
}

impl<'r, 's> ControlThread<'r, 's> {
    pub(super) fn new(
        shared: &'r Shared<'s>,
        kvm: Option<&'r Kvm>,
        progress: &'r Progress,
        started: Instant,
        deadline: Option<Instant>,
    ) -> Self {
        ControlThread { shared, kvm, progress, started, deadline, done: 0, checks: 0, violations: Vec::new() }
    }

    /// Runs control operations until `limit` are done, the stream ends or the run stops (the
    /// deadline, the watchdog, a panic). Paced so that the control operations spread over the
    /// vCPUs' accesses as the mix's weights say.
    pub(super) fn run_ops(&mut self, limit: Option<u64>) {
        let config = self.shared.config;
        let mut stream = ControlStream::new(config);
        // vCPU operations per control operation.
        let control_total = config.control_mix().control_total();
        let ratio = if control_total == 0 { 0.0 } else { config.vcpu_weight() as f64 / control_total as f64 };
        loop {
            if self.done == 0 {
                self.break_on_purpose();
            }
            if limit.is_some_and(|limit| self.done >= limit) || self.stopped() {
                break;
            }
            let Some(op) = stream.next() else { break };
            self.set_phase(phase::PACING);
            self.wait_for_vcpu_share((self.done as f64 * ratio) as u64);
            self.set_phase(phase::IN_OP);
            control_op(self.shared, op);
            self.done += 1;
            self.shared.control.moved();
            self.tick();
            if CHECK_EVERY_CONTROL_OP || self.done % INVARIANT_EVERY == 0 {
                self.pause_and_check();
            }
        }
    }

    /// After the operations: waits for every vCPU thread to finish, keeping the bar and the
    /// deadline going.
    pub(super) fn wait_for_vcpus(&self) {
        if !matches!(self.shared.control.phase(), phase::PANICKED | phase::ABORTED) {
            self.set_phase(phase::FINAL_WAIT);
        }
        while self.shared.finished.load(Ordering::SeqCst) < self.vcpus() {
            self.tick();
            std::thread::sleep(Duration::from_millis(1));
        }
        if self.shared.control.phase() == phase::FINAL_WAIT {
            self.set_phase(phase::FINISHED);
        }
    }

    /// `--break`: what the run is told to break, before its first control operation.
    fn break_on_purpose(&self) {
        let (Some(breakage), Some(kvm)) = (self.shared.config.breakage, self.kvm) else { return };
        match breakage {
            Breakage::StuckInvalidation => leave_an_invalidation_open(kvm, self.shared.config),
            Breakage::StuckSrcuReader => leave_an_srcu_reader_inside(kvm),
            Breakage::VcpuPanic => {}
        }
    }

    /// Waits until the vCPUs made `due` accesses (or all finished, or the run stopped).
    fn wait_for_vcpu_share(&self, due: u64) {
        let shared = self.shared;
        while shared.vcpu_ops_done.load(Ordering::Relaxed) < due
            && shared.finished.load(Ordering::SeqCst) < self.vcpus()
            && !self.stopped()
        {
            self.tick();
            std::thread::yield_now();
        }
    }

    /// Pauses every vCPU between two accesses, checks the invariants, and lets them go.
    fn pause_and_check(&mut self) {
        let shared = self.shared;
        self.set_phase(phase::PAUSING);
        shared.pause.store(true, Ordering::SeqCst);
        while shared.paused.load(Ordering::SeqCst) + shared.finished.load(Ordering::SeqCst) < self.vcpus()
            && !self.stopped()
        {
            std::thread::yield_now();
        }
        if !self.stopped() {
            self.set_phase(phase::CHECKING);
            self.checks += 1;
            self.violations.extend(shared.vmm.check_invariants());
        }
        shared.pause.store(false, Ordering::SeqCst);
        while shared.paused.load(Ordering::SeqCst) != 0 {
            std::thread::yield_now();
        }
    }

    /// Moves the bar (operations, or for a timed run milliseconds) and stops a timed run at its
    /// deadline.
    fn tick(&self) {
        let shared = self.shared;
        if self.progress.is_shown() {
            let done = shared.vcpu_ops_done.load(Ordering::Relaxed) + self.done;
            let position = if self.deadline.is_some() { self.started.elapsed().as_millis() as u64 } else { done };
            self.progress.update(position, || format!("{done} operations"));
        }
        if self.deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            shared.stop.store(true, Ordering::SeqCst);
        }
    }

    fn set_phase(&self, phase: u8) {
        self.shared.control.set(self.shared.epoch, phase, self.done);
    }

    fn stopped(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    fn vcpus(&self) -> usize {
        self.shared.config.vcpus as usize
    }
}
