//! The run's threads: what they share ([`Shared`]), the vCPU thread's loop (an operation from
//! its stream, the access, and the integrity check of what it returned), the control thread's
//! operations, and the deliberate breakages. The run's orchestration (setting the VM up,
//! spawning these threads, pacing the control thread, the invariant checks at pause points)
//! is in the parent module; what the threads count is read by the summary.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use gmem_kvm::vcpu::{RunError, VcpuExit};
use gmem_mm::{Errno, PAGE_SIZE};
use gmem_sync::waits::{self, WaitDomain};
use gmem_sync::CachePadded;
use gmem_uapi::Vmm;

use super::config::{Breakage, Config, BREAK_PANIC_AFTER, REGIONS};
use super::integrity::{image_record, is_earlier_record, record, PageEpoch, Shadow};
use super::snp::{SnpCounters, SnpGuest};
use super::streams::{ControlOp, VcpuAction, VcpuStream};
use super::tdx::{TdxCounters, TdxGuest};
use super::watchdog::{phase, Status};

/// Retries of one access after its exit was handled.
pub(super) const ACCESS_RETRIES: u32 = 4;
/// Integrity errors kept for printing.
const MAX_REPORTED: usize = 20;

/// Everything the threads share.
pub(super) struct Shared<'a> {
    pub(super) config: &'a Config,
    pub(super) vmm: &'a Vmm,
    pub(super) pages: Vec<PageEpoch>,
    /// Per region: bumped when a memslot change starts and when it ends (odd: in progress).
    pub(super) slot_gens: Vec<AtomicU64>,
    pub(super) stop: AtomicBool,
    pub(super) pause: AtomicBool,
    pub(super) paused: AtomicUsize,
    pub(super) finished: AtomicUsize,
    /// vCPU operations done (accesses, and an SNP guest's conversions).
    pub(super) vcpu_ops_done: AtomicU64,
    pub(super) exits_mmio: AtomicU64,
    pub(super) exits_hwpoison: AtomicU64,
    pub(super) exits_unresolved: AtomicU64,
    /// Conversion operations the vCPUs of an SNP guest or a TD made (each a conversion of the
    /// pages not already in the state asked for; nothing if there were none).
    pub(super) guest_conversions: AtomicU64,
    pub(super) snp: SnpCounters,
    pub(super) tdx: TdxCounters,
    pub(super) errors: Mutex<Vec<String>>,
    pub(super) integrity_errors: AtomicU64,
    pub(super) vmm_errors: AtomicU64,
    /// What each vCPU thread is doing, and its operations that made progress (all but those
    /// the model gave up on with EINTR after its fault-retry bound).
    pub(super) vcpus: Vec<CachePadded<Status>>,
    /// What the control thread is doing, and its operations.
    pub(super) control: CachePadded<Status>,
    /// The run's threads, for the wait registry and the abort.
    pub(super) domain: Arc<WaitDomain>,
    /// The origin of the [`Status`] timestamps.
    pub(super) epoch: Instant,
    /// Panics of the run's threads, as failure lines.
    pub(super) panics: Mutex<Vec<String>>,
}

impl Shared<'_> {
    pub(super) fn begin(&self, first: u64, npages: u64) {
        for page in &self.pages[first as usize..(first + npages) as usize] {
            page.active.fetch_add(1, Ordering::SeqCst);
            page.gen.fetch_add(1, Ordering::SeqCst);
        }
    }

    pub(super) fn end(&self, first: u64, npages: u64, unpoison: bool) {
        for page in &self.pages[first as usize..(first + npages) as usize] {
            if unpoison {
                page.poisoned.store(false, Ordering::SeqCst);
            }
            page.gen.fetch_add(1, Ordering::SeqCst);
            page.active.fetch_sub(1, Ordering::SeqCst);
        }
    }

    pub(super) fn error(&self, counter: &AtomicU64, message: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if errors.len() < MAX_REPORTED {
            errors.push(message);
        }
    }

    /// The region of a page.
    pub(super) fn region_of(&self, page: u64) -> usize {
        (page / (self.config.pages() / u64::from(REGIONS))) as usize
    }

    /// Waits at the pause barrier if the control thread asked for one (not once the run is
    /// stopping: the control thread may be gone).
    pub(super) fn maybe_pause(&self, status: &Status, index: u64) {
        if self.pause.load(Ordering::SeqCst) {
            status.set(self.epoch, phase::PAUSED, index);
            self.paused.fetch_add(1, Ordering::SeqCst);
            while self.pause.load(Ordering::SeqCst) && !self.stop.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            self.paused.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Panics caught so far (each began in the domain).
    pub(super) fn panics_caught(&self) -> usize {
        self.panics.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// A worker thread (`name`, whose status is `status`) ended with a panic: an abort of its
    /// wait by the run's [`WaitDomain`] is only recorded in its status (the abort's reason is
    /// the run's failure); any other panic is a failure with its message, and stops the run,
    /// aborting the waits of the other threads (which may wait for what the panicked thread
    /// would have done).
    pub(super) fn worker_panicked(&self, name: &str, status: &Status, payload: Box<dyn std::any::Any + Send>) {
        let op = status.op();
        if payload.downcast_ref::<waits::Aborted>().is_some() {
            status.set(self.epoch, phase::ABORTED, op);
            return;
        }
        status.set(self.epoch, phase::PANICKED, op);
        let message = waits::panic_message(&*payload);
        self.panics.lock().unwrap_or_else(|e| e.into_inner()).push(format!("{name} panicked: {message}"));
        self.stop.store(true, Ordering::SeqCst);
        self.domain.abort(&format!("the panic of {name}"));
    }
}

/// One access as a SW_PROTECTED or DEFAULT VM's vCPU makes it: the VM type's default kind,
/// and a `KVM_EXIT_MEMORY_FAULT` handled by the VMM (a conversion of the page, destructive
/// for it) before the access is retried.
pub(super) fn plain_access(
    shared: &Shared<'_>,
    fd: i32,
    page: u64,
    buf: &mut [u8; 16],
    write: bool,
) -> Result<(), RunError> {
    let gpa = Vmm::page_gpa(page);
    let mut outcome = Err(RunError::Errno(Errno::EINTR));
    for _ in 0..ACCESS_RETRIES {
        outcome = shared.vmm.guest_access(fd, gpa, buf, write);
        match outcome {
            Err(RunError::Exit(VcpuExit::MemoryFault { errno: Errno::EFAULT, .. })) => {
                // kvm_convert_memory for the faulting page: destructive for that page.
                shared.begin(page, 1);
                let handled = shared.vmm.handle_exit(outcome.expect_err("an exit"));
                shared.end(page, 1, false);
                if handled.is_err() {
                    break;
                }
            }
            _ => break,
        }
    }
    outcome
}

/// The guest OS of a confidential VM's vCPU thread: it converts its own pages and keeps its
/// view of them.
pub(super) enum CvmGuest<'a> {
    /// A Linux SEV-SNP guest.
    Snp(SnpGuest<'a>),
    /// A Linux TD guest.
    Tdx(TdxGuest<'a>),
}

impl CvmGuest<'_> {
    fn convert(&mut self, page: u64, npages: u64, to_private: bool) {
        match self {
            CvmGuest::Snp(guest) => guest.convert(page, npages, to_private),
            CvmGuest::Tdx(guest) => guest.convert(page, npages, to_private),
        }
    }

    fn access(&mut self, page: u64, buf: &mut [u8; 16], write: bool) -> Option<Result<(), RunError>> {
        match self {
            CvmGuest::Snp(guest) => guest.access(page, buf, write),
            CvmGuest::Tdx(guest) => guest.access(page, buf, write),
        }
    }

    fn image_live(&self, page: u64) -> bool {
        match self {
            CvmGuest::Snp(guest) => guest.image_live(page),
            CvmGuest::Tdx(guest) => guest.image_live(page),
        }
    }

    fn overwritten(&mut self, page: u64) {
        match self {
            CvmGuest::Snp(guest) => guest.overwritten(page),
            CvmGuest::Tdx(guest) => guest.overwritten(page),
        }
    }
}

pub(super) fn vcpu_thread(
    shared: &Shared<'_>,
    vcpu: u32,
    fd: i32,
    count: Option<u64>,
    mut guest: Option<CvmGuest<'_>>,
) {
    let config = shared.config;
    let mut stream = VcpuStream::new(config, vcpu);
    // One entry per page this vCPU owns (`page % vcpus == vcpu`, so index `page / vcpus`).
    let vcpus = u64::from(config.vcpus);
    let owned = config.pages().div_ceil(vcpus) as usize;
    let mut shadow: Vec<Shadow> = vec![Shadow { value: [0; 16], stable_gen: Some(0) }; owned];
    // An SNP guest's boot image is what its pages hold at first.
    for page in (u64::from(vcpu)..config.image_pages()).step_by(config.vcpus as usize) {
        shadow[(page / vcpus) as usize].value = image_record(page);
    }
    let mut index = 0u64;
    let status = &shared.vcpus[vcpu as usize];
    while count.is_none_or(|count| index < count) && !shared.stop.load(Ordering::Relaxed) {
        shared.maybe_pause(status, index);
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        status.set(shared.epoch, phase::IN_OP, index);
        if vcpu == 0 && index == BREAK_PANIC_AFTER && config.breakage == Some(Breakage::VcpuPanic) {
            panic!("deliberate panic of vCPU 0 after {BREAK_PANIC_AFTER} operations (--break vcpu-panic)");
        }
        let op = stream.next().expect("infinite stream");
        if let VcpuAction::Convert { npages, to_private } = op.action {
            if let Some(guest) = guest.as_mut() {
                guest.convert(op.page, npages, to_private);
                shared.guest_conversions.fetch_add(1, Ordering::Relaxed);
            }
            index += 1;
            shared.vcpu_ops_done.fetch_add(1, Ordering::Relaxed);
            status.moved();
            continue;
        }
        let write = op.is_write();
        let gpa = Vmm::page_gpa(op.page);
        let epoch = &shared.pages[op.page as usize];
        let mut buf = if write { record(vcpu, op.page, index) } else { [0u8; 16] };
        let slot_gen = &shared.slot_gens[shared.region_of(op.page)];
        let s1 = slot_gen.load(Ordering::SeqCst);
        let e1 = epoch.gen.load(Ordering::SeqCst);
        let active = epoch.active.load(Ordering::SeqCst);
        let outcome = match guest.as_mut() {
            None => Some(plain_access(shared, fd, op.page, &mut buf, write)),
            Some(guest) => guest.access(op.page, &mut buf, write),
        };
        // Read inside the window the two `gen` reads bound, so a stable access sees the flag
        // as it was during the access, not as a destructive operation after it left it.
        let poisoned = epoch.poisoned.load(Ordering::SeqCst);
        let e2 = epoch.gen.load(Ordering::SeqCst);
        let slots_quiet = s1 % 2 == 0 && slot_gen.load(Ordering::SeqCst) == s1;
        let stable = e1 == e2 && active == 0;
        let what = if write { "store" } else { "load" };
        let image_live = guest.as_ref().is_some_and(|guest| guest.image_live(op.page));
        // EINTR is the model giving up on a fault that retried FAULT_RETRY_LIMIT times (the run
        // injects no signals): the access did nothing, which is no progress.
        let moved = !matches!(outcome, Some(Err(RunError::Errno(Errno::EINTR))));
        match outcome {
            None => {
                // An SNP guest could not finish converting the page (its PSC kept failing while
                // its GHCB's memslot changed): nothing was accessed.
                shared.exits_unresolved.fetch_add(1, Ordering::Relaxed);
            }
            Some(Ok(())) if write => {
                shadow[(op.page / vcpus) as usize] = Shadow { value: buf, stable_gen: stable.then_some(e1) };
                if let Some(guest) = guest.as_mut() {
                    guest.overwritten(op.page);
                }
            }
            Some(Ok(())) => {
                let expected = shadow[(op.page / vcpus) as usize];
                let known = buf == [0; 16]
                    || is_earlier_record(&buf, vcpu, op.page, index)
                    || (image_live && buf == image_record(op.page));
                if stable && expected.stable_gen == Some(e1) {
                    if buf != expected.value {
                        shared.error(
                            &shared.integrity_errors,
                            format!(
                                "vCPU {vcpu} op {index}: load of page {} (gpa {gpa:#x}) read {buf:02x?}, expected {:02x?} (no destructive operation since the store)",
                                op.page, expected.value
                            ),
                        );
                    }
                } else if !known {
                    shared.error(
                        &shared.integrity_errors,
                        format!("vCPU {vcpu} op {index}: load of page {} (gpa {gpa:#x}) read {buf:02x?}, neither zero nor a record this vCPU wrote there", op.page),
                    );
                } else if stable {
                    shadow[(op.page / vcpus) as usize] = Shadow { value: buf, stable_gen: Some(e1) };
                }
            }
            Some(Err(RunError::Exit(VcpuExit::Mmio { .. }))) => {
                // The memslot is being deleted and re-added: the device model gets the access.
                shared.exits_mmio.fetch_add(1, Ordering::Relaxed);
                std::thread::yield_now();
                if slots_quiet {
                    shared.error(
                        &shared.integrity_errors,
                        format!("vCPU {vcpu} op {index}: {what} of page {} (gpa {gpa:#x}) exited to MMIO with its memslot in place", op.page),
                    );
                }
            }
            Some(Err(RunError::Exit(VcpuExit::MemoryFault { errno: Errno::EHWPOISON, .. }))) => {
                shared.exits_hwpoison.fetch_add(1, Ordering::Relaxed);
                if stable && !poisoned {
                    shared.error(
                        &shared.integrity_errors,
                        format!("vCPU {vcpu} op {index}: {what} of page {} (gpa {gpa:#x}) hit hardware poison no memory failure put there", op.page),
                    );
                }
            }
            Some(Err(RunError::Exit(VcpuExit::MemoryFault { errno: Errno::EFAULT, .. }))) => {
                // The region's guest_memfd is closed and not yet replaced, or its memslot is
                // being re-added (a private access with no memslot exits this way): let the
                // control thread finish. (An SNP guest's accesses always match the attributes,
                // so for it this exit never asks for a conversion.)
                shared.exits_unresolved.fetch_add(1, Ordering::Relaxed);
                std::thread::yield_now();
                if stable && slots_quiet {
                    shared.error(
                        &shared.integrity_errors,
                        format!("vCPU {vcpu} op {index}: {what} of page {} (gpa {gpa:#x}) kept exiting with a memory fault while nothing changed it", op.page),
                    );
                }
            }
            Some(Err(RunError::GuestException(exception))) => {
                // An SNP guest validated the page again after each #VC, and each time something
                // took the validation away before the access: only a destructive operation may.
                shared.exits_unresolved.fetch_add(1, Ordering::Relaxed);
                if stable {
                    shared.error(
                        &shared.integrity_errors,
                        format!("vCPU {vcpu} op {index}: {what} of page {} (gpa {gpa:#x}) kept raising {exception:?} with no destructive operation on the page", op.page),
                    );
                }
            }
            Some(Err(error)) => {
                shared.exits_unresolved.fetch_add(1, Ordering::Relaxed);
                shared.error(
                    &shared.vmm_errors,
                    format!("vCPU {vcpu} op {index}: {what} of page {} (gpa {gpa:#x}) failed: {error:?}", op.page),
                );
            }
        }
        index += 1;
        shared.vcpu_ops_done.fetch_add(1, Ordering::Relaxed);
        if moved {
            status.moved();
        }
    }
    status.set(shared.epoch, phase::FINISHED, index);
}

/// Chains a panic hook (once per process) that counts each panic beginning in a run's thread
/// in the run's [`WaitDomain`], so the watchdog does not take a slow panic report for a hang.
pub(super) fn count_panics_in_runs() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            waits::note_panic();
            previous(info);
        }));
    });
}

/// `--break stuck-invalidation`: an MMU invalidation over all of guest memory that is begun
/// and never ended, exactly what a `kvm_gmem_invalidate_begin` without its
/// `kvm_gmem_invalidate_end` leaves behind (`mmu_invalidate_in_progress` stays above zero, so
/// every fault in the range retries).
pub(super) fn leave_an_invalidation_open(kvm: &gmem_kvm::Kvm, config: &Config) {
    let start = gmem_kvm::Gpa(Vmm::page_gpa(0)).to_gfn();
    let end = gmem_kvm::Gpa(Vmm::page_gpa(config.pages())).to_gfn();
    let _mmu_lock = kvm.mmu_lock_write();
    kvm.mmu_invalidate_begin();
    kvm.mmu_invalidate_range_add(start, end);
}

/// `--break stuck-srcu-reader`: a read-side critical section of `kvm->srcu` that is never
/// left. Entered on a thread of its own, which then ends: the reader is nobody the run's
/// threads know (in checked builds the control thread's own `synchronize` would otherwise be
/// refused as a self-deadlock, not wait).
pub(super) fn leave_an_srcu_reader_inside(kvm: &gmem_kvm::Kvm) {
    std::thread::scope(|scope| {
        scope.spawn(|| std::mem::forget(kvm.srcu_read_lock()));
    });
}

/// Lets vCPUs run for a moment (against a deleted memslot or a closed guest_memfd).
pub(super) fn let_vcpus_run() {
    for _ in 0..8 {
        std::thread::yield_now();
    }
}

pub(super) fn control_op(shared: &Shared<'_>, op: ControlOp) {
    let vmm = shared.vmm;
    let region_pages = shared.config.pages() / u64::from(REGIONS);
    let result = match op {
        ControlOp::Convert { page, npages, to_private } => {
            shared.begin(page, npages);
            let result = vmm.convert(Vmm::page_gpa(page), npages * PAGE_SIZE, to_private);
            shared.end(page, npages, !to_private);
            result
        }
        ControlOp::Punch { page, npages } => {
            shared.begin(page, npages);
            let result = vmm.punch_hole(Vmm::page_gpa(page), npages * PAGE_SIZE);
            shared.end(page, npages, true);
            result
        }
        ControlOp::Memslot { region } => {
            // A TD's private pages do not survive their memslot: its deletion removes them from
            // the S-EPT (and clears them), so after the re-add they are AUGed afresh.
            let first = region as u64 * region_pages;
            let destructive = shared.config.is_tdx();
            if destructive {
                shared.begin(first, region_pages);
            }
            shared.slot_gens[region].fetch_add(1, Ordering::SeqCst);
            let result = vmm.remove_memslot(region).and_then(|()| {
                let_vcpus_run();
                vmm.add_memslot(region)
            });
            shared.slot_gens[region].fetch_add(1, Ordering::SeqCst);
            if destructive {
                shared.end(first, region_pages, false);
            }
            result
        }
        ControlOp::MemFail { page } => {
            shared.begin(page, 1);
            let poisoned = &shared.pages[page as usize].poisoned;
            poisoned.store(true, Ordering::SeqCst);
            let result = match vmm.memory_failure(Vmm::page_gpa(page)) {
                // A folio was poisoned, or already was: say so again now. An SNP guest's
                // conversion of the page to shared may have cleared the flag meanwhile (its
                // punch drops whatever folio was there) and the page may have a new folio by
                // the time the failure reached it.
                Ok(_) | Err(Errno::EHWPOISON) => {
                    poisoned.store(true, Ordering::SeqCst);
                    Ok(())
                }
                // No folio there (a shared page, or never touched).
                Err(Errno::ENOENT) => Ok(()),
                Err(errno) => Err(errno),
            };
            shared.end(page, 1, false);
            result
        }
        ControlOp::Close { region } => {
            let first = region as u64 * region_pages;
            shared.begin(first, region_pages);
            shared.slot_gens[region].fetch_add(1, Ordering::SeqCst);
            let result = vmm.close_guest_memfd(region).and_then(|()| {
                let_vcpus_run();
                vmm.replace_guest_memfd(region)
            });
            shared.slot_gens[region].fetch_add(1, Ordering::SeqCst);
            shared.end(first, region_pages, true);
            result
        }
    };
    if let Err(errno) = result {
        shared.error(&shared.vmm_errors, format!("control {op:?} failed: {errno:?}"));
    }
}
