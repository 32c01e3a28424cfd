//! `gmem-sim run`: the full-system workload. A [`Vmm`] runs one VM on the simulator; vCPU
//! threads make guest accesses with locality while a control thread converts memory between
//! private and shared, punches holes, deletes and re-adds memslots, injects memory failures and
//! closes guest_memfds under running vCPUs, all at once, on real threads.
//!
//! # SEV-SNP
//!
//! With `--vm-type SEV_SNP` the VMM sets the VM up as QEMU's SNP machine does and launches it
//! with a boot image over the first sixteenth of memory ([`Config::image_pages`]; each image
//! page starts with a record of its own, so the guest knows what it holds). The vCPU threads
//! then act as a Linux SNP guest (`run/snp.rs`): each makes its last page its GHCB (shared, never
//! touched by the workload), validates a private page before its first use, accesses pages
//! private or shared by its own view of them, and converts its own pages through page-state
//! changes (the mix's `convert` weight moves from the control thread to the vCPUs). A #VC for a
//! page that is not validated, after a destructive host operation, is recovered from by
//! validating the page again. The control thread punches, changes memslots, injects memory
//! failures and closes guest_memfds as for any VM with private memory.
//!
//! # TDX
//!
//! With `--vm-type TDX` the run builds an Intel host (`kvm_intel` with the TDX module; a
//! profile without TDX VMs is refused) and the VMM sets the VM up as QEMU's `tdx-guest` machine
//! does, without `SEPT_VE_DISABLE`, and launches it (`KVM_TDX_INIT_MEM_REGION` of the boot image
//! over the first sixteenth of memory, measured, then `KVM_TDX_FINALIZE_VM`). Every guest entry
//! is a `TDH.VP.ENTER`. The vCPU threads act as a Linux TD guest (`run/tdx.rs`): each accepts a
//! private page (`TDG.MEM.PAGE.ACCEPT`) before its first use unless the launch added it,
//! accesses pages private or shared by its own view of them (a shared access uses the gpa with
//! the shared bit), and converts its own pages with `TDG.VP.VMCALL<MapGPA>` (to shared: MapGPA,
//! then use; to private: MapGPA, then ACCEPT each page), whose 2 MiB `KVM_EXIT_HYPERCALL`
//! chunks the VMM converts. A #VE on a page the guest had accepted, after a destructive host
//! operation (the page came back PENDING), is recovered from by accepting it again; a #VE with
//! no destructive operation on the page since its ACCEPT is an integrity error. Deleting and
//! re-adding a memslot is destructive for a TD's private pages (KVM removes them from the
//! S-EPT and clears them), so for a TD it is bracketed as such. Contention between the vCPUs'
//! faults and ACCEPTs and the zaps (`TDX_OPERAND_BUSY` from the module's try-locks) arises on
//! its own and is counted.
//!
//! # Determinism
//!
//! Every thread draws its operations from its own stream ([`VcpuStream`], [`ControlStream`]),
//! seeded from `--seed`; [`generate`] returns the streams' first operations without running
//! them. The interleaving is up to the scheduler, so a failure prints the command that replays
//! the same streams ([`Config::reproduce_command`]).
//!
//! # Data integrity
//!
//! Each vCPU writes and reads only the pages it owns (`page % vcpus == vcpu`), 16-byte records
//! holding its id, the page and a sequence number. Destructive operations (conversions, punches,
//! memory failures, closing a guest_memfd; a conversion a vCPU makes for a
//! `KVM_EXIT_MEMORY_FAULT`; an SNP guest's or a TD's conversion of its own pages; for a TD,
//! deleting and re-adding a memslot) bracket the pages they
//! touch in [`PageEpoch`]: `active` counts
//! destructive operations in flight, `gen` is bumped when one starts and when it ends. An access
//! is *stable* if no destructive operation overlapped it (same `gen` before and after, `active`
//! zero). A stable read of a page whose last write was stable at the same `gen` must return
//! exactly what was written; any other read must return zero or a record this vCPU wrote to
//! that page (or, for an SNP guest or a TD, the page's image record until the page is first
//! written or made shared), never anything else. Deleting and re-adding a memslot is not
//! destructive, except for a TD's private pages: the data must survive it. For an SNP guest the
//! validation must survive too: a #VC on a page the guest validated with no destructive
//! operation on the page since is an integrity error; likewise a TD's #VE on a page it accepted.
//!
//! # Checks
//!
//! Invariants (`gmem_kvm::invariants::check`) run after every control operation in debug builds
//! and every [`INVARIANT_EVERY`] control operations in release builds (where a check of a large
//! VM costs as much as many operations) with every vCPU paused between accesses, and at the end; the machine's WARN registry is read
//! at the end. The exit status is 1 if there is any warning, violation, integrity error or
//! unexpected VMM error.
//!
//! # The watchdog
//!
//! A broken model must not hang the run. Every wait of the model that can block (a contended
//! lock, an SRCU grace period, a remote TLB flush waiting for a vCPU, the memslot swap waiting
//! for MMU notifiers, a folio lock, a fault retrying behind an invalidation) registers, once it
//! blocks, in the run's `gmem_sync::waits::WaitDomain`, which every worker thread joins. A
//! watchdog thread ends the run when, for [`Config::watchdog`] (`--watchdog`, default
//! [`DEFAULT_WATCHDOG`]), either no operation made progress (control operations, and vCPU
//! operations the model did not give up on with EINTR after its fault-retry bound; an
//! invariant check and a panic being reported stop the clock) or one thread stayed in one wait.
//! It first takes the diagnosis from lock-free reads (the registered waits with their age; each
//! thread's phase and operation, regenerated from its stream; the VM's
//! `mmu_invalidate_in_progress`, range and sequence; `kvm->srcu`'s index and readers), then
//! stops the run and aborts the domain's waits: each unwinds its thread (the vCPU threads and
//! the control loop catch it), releasing its locks. The state dump (the `dump` verb's text) is
//! taken after the threads are gone. The summary is not `ok`, its first failure says why the
//! watchdog fired, and [`Summary::diagnosis`] holds the rest; the CLI prints them and the
//! replay command and exits 1. If some thread does not unwind (a wait that does not poll), a
//! fuse prints the report and the replay command and exits the process with status 1 after
//! `UNWIND_GRACE` (at least the watchdog's bound): the run never hangs.
//!
//! A panic in a vCPU thread or the control loop is caught: a failure with its message, the
//! other threads stopped (their waits aborted), the same diagnosis and state dump, exit 1.
//!
//! [`Config::breakage`] (`--break`, simulator-only) breaks a run on purpose to show both:
//! `stuck-invalidation` leaves an MMU invalidation over all of guest memory open (what a
//! missing `kvm_gmem_invalidate_end` leaves), `stuck-srcu-reader` leaves a `kvm->srcu` reader
//! inside (the next memslot change waits for it forever), `vcpu-panic` panics vCPU 0 after
//! [`BREAK_PANIC_AFTER`] operations.
//!
//! # Where things are
//!
//! This module sets the VM up, spawns the threads and collects the summary. `control.rs` is the
//! control thread (pacing, the invariant checks at pause points, the progress bar), `config.rs` holds what the flags set and the checks of it,
//! `streams.rs` the operation streams, `integrity.rs` the records and the per-page brackets of
//! destructive operations, `workers.rs` what the threads share and what each does, `snp.rs` and
//! `tdx.rs` the confidential guests' own loops, `watchdog.rs` the watchdog, `summary.rs` the
//! figures printed at the end. The streams' generator is [`crate::rng`], the progress bar
//! [`crate::progress`].
//!
//! # Output
//!
//! A table (or, with `--json`, one JSON object) of the figures of one typed [`Summary`], which
//! serde serialises once for both (`summary.rs`); its fields are the keys, in this order:
//! `seed`, `kernel`, `vm_type`, `memory`, `vcpus`, `mix`, `ops`, `guest_accesses`,
//! `control_ops`, `seconds`, `ops_per_sec`, `faults`, `faults_fixed`, `faults_spurious`,
//! `fault_retries`, `huge_mappings` (2M/1G leaves installed), `sptes_zapped`, `zap_all_fast`, `tlb_flushes` (remote flush requests),
//! `vcpu_tlb_flushes` (flushes the vCPUs carried out), `exits_memory_fault`, `exits_mmio`, `exits_hwpoison`, `exits_unresolved`,
//! `conversions_to_private`, `conversions_to_shared`, `punches`, `memslot_changes`,
//! `memory_failures`, `gmem_closes`; an SNP guest's figures (`n/a` for other VM types):
//! `guest_conversions` (conversion operations the vCPUs made), `psc_requests` (page-state change
//! requests), `psc_exits` (the `KVM_HC_MAP_GPA_RANGE` exits the VMM handled), `psc_errors`
//! (requests answered with an error or not taken, then retried), `psc_incomplete`
//! (conversions left unknown after every retry), `conversions_aborted` (given up before the
//! request: a rescind could not reach its page), `vc_exceptions`, `pvalidates`,
//! `launched_pages`, `rmp_assigned_at_end`, `rmp_leaked_pages` (`guest_conversions` and
//! `launched_pages` are a TD's too); a TD's figures (`n/a` for other VM types): `tdx_accepts`
//! (`TDG.MEM.PAGE.ACCEPT` calls), `tdx_accept_busy` (ACCEPTs the module found busy, repeated),
//! `map_gpa_requests` (MapGPA TDVMCALLs), `map_gpa_exits` (the `KVM_EXIT_HYPERCALL` chunks the
//! VMM handled), `map_gpa_retries` (MapGPAs answered `TDVMCALL_STATUS_RETRY`), `map_gpa_errors`
//! (conversions whose MapGPA failed and was repeated), `tdx_conversions_incomplete`,
//! `ve_exceptions`, `tdx_events_posted` (interrupts that arrived during MapGPA exits),
//! `vp_enters`, `entries_deferred` (entries not made while `wait_for_sept_zap` was set),
//! `ept_violations`, `ept_local_retries`, `aug_busy`, `block_busy`, `track_busy`, `remove_busy`
//! (S-EPT SEAMCALLs that found the module busy), `tdx_leaked_pages`, `pamt_pages_owned_at_end`
//! (frames the TD owns in the PAMT when the run ends); then `invariant_checks`,
//! `invariant_violations`, `warnings`, `integrity_errors`, `vmm_errors`, `ok`. `guest_accesses`
//! counts loads and stores only; `ops` is their sum with `guest_conversions` and `control_ops`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use gmem_mm::PAGE_SIZE;
use gmem_sync::waits::WaitDomain;
use gmem_sync::CachePadded;
use gmem_uapi::{SimHost, Vmm, VmmConfig};

use crate::progress::Progress;

mod config;
mod control;
mod integrity;
mod snp;
mod streams;
mod summary;
mod tdx;
mod watchdog;
mod workers;

pub use config::{
    parse_size, parse_vm_type, parse_watchdog, vm_type_name, Breakage, Config, Length, Mix, BREAK_PANIC_AFTER,
    DEFAULT_MIX, DEFAULT_MIX_NO_PRIVATE, DEFAULT_OPS, DEFAULT_WATCHDOG, REGIONS,
};
pub use integrity::PageEpoch;
pub use streams::{generate, op_counts, ControlOp, ControlStream, VcpuAction, VcpuOp, VcpuStream};
pub use summary::Summary;

use control::ControlThread;
use integrity::image_record;
use snp::{SnpCounters, SnpGuest};
use tdx::{TdxCounters, TdxGuest};
use workers::{count_panics_in_runs, vcpu_thread, CvmGuest, Shared};

/// Control operations between two invariant checks in release builds (throughput runs).
pub const INVARIANT_EVERY: u64 = 64;
/// Debug builds check after every control operation (continuous checking while developing).
const CHECK_EVERY_CONTROL_OP: bool = cfg!(debug_assertions);

/// Runs the workload, showing its progress on `progress` (operations done, or for a timed run
/// the time gone). `Err` is a setup error (bad configuration, VM creation failed).
pub fn run(config: &Config, progress: &Progress) -> Result<Summary, String> {
    let profile = config.validate()?;
    count_panics_in_runs();
    let vmm_config = VmmConfig { vm_type: config.vm_type, memory: config.memory, regions: REGIONS };
    let vmm = if config.is_tdx() {
        // An Intel host (kvm_intel with the TDX module), and a TD without SEPT_VE_DISABLE: an
        // access to a private page the host took away is a #VE for the guest to recover from.
        Vmm::new_tdx(SimHost::new_intel(profile), vmm_config, 0)
    } else {
        Vmm::new(SimHost::new(profile), vmm_config)
    }
    .map_err(|errno| format!("cannot set up the VM: {errno:?}"))?;
    let fds: Vec<i32> = (0..config.vcpus)
        .map(|id| vmm.create_vcpu(u64::from(id)))
        .collect::<Result<_, _>>()
        .map_err(|errno| format!("KVM_CREATE_VCPU: {errno:?}"))?;
    if config.guest_converts() {
        // The machine starts: the boot image is measured into the first pages.
        let mut image = vec![0u8; (config.image_pages() * PAGE_SIZE) as usize];
        for page in 0..config.image_pages() {
            let at = (page * PAGE_SIZE) as usize;
            image[at..at + 16].copy_from_slice(&image_record(page));
        }
        vmm.launch(&image).map_err(|error| format!("the {} launch failed: {error:?}", vm_type_name(config.vm_type)))?;
    }
    let counts = op_counts(config);
    let shared = Shared {
        config,
        vmm: &vmm,
        pages: (0..config.pages()).map(|_| PageEpoch::default()).collect(),
        slot_gens: (0..REGIONS).map(|_| AtomicU64::new(0)).collect(),
        stop: AtomicBool::new(false),
        pause: AtomicBool::new(false),
        paused: AtomicUsize::new(0),
        finished: AtomicUsize::new(0),
        vcpu_ops_done: AtomicU64::new(0),
        exits_mmio: AtomicU64::new(0),
        exits_hwpoison: AtomicU64::new(0),
        exits_unresolved: AtomicU64::new(0),
        guest_conversions: AtomicU64::new(0),
        snp: SnpCounters::default(),
        tdx: TdxCounters::default(),
        errors: Mutex::new(Vec::new()),
        integrity_errors: AtomicU64::new(0),
        vmm_errors: AtomicU64::new(0),
        vcpus: (0..config.vcpus).map(|_| CachePadded::default()).collect(),
        control: CachePadded::default(),
        domain: WaitDomain::new(),
        epoch: Instant::now(),
        panics: Mutex::new(Vec::new()),
    };
    // An SNP guest's vCPUs boot: each sets up its GHCB. A TD's start with the image accepted.
    let mut guests: Vec<Option<CvmGuest<'_>>> = Vec::new();
    for (v, &fd) in fds.iter().enumerate() {
        guests.push(if config.is_snp() {
            Some(CvmGuest::Snp(SnpGuest::boot(&shared, v as u32, fd)?))
        } else if config.is_tdx() {
            Some(CvmGuest::Tdx(TdxGuest::boot(&shared, v as u32, fd)))
        } else {
            None
        });
    }
    let started = Instant::now();
    let total_ops = counts.as_ref().map(|(per, control)| per.iter().sum::<u64>() + control);
    // Taken now, while nothing can be stuck: the watchdog reads the VM's state lock-free.
    let kvm = vmm.host().vm(vmm.vm_fd()).ok();
    let deadline = match config.length {
        Length::Duration(d) => Some(started + d),
        Length::Ops(_) => None,
    };
    // The bar counts operations, or for a timed run milliseconds.
    progress.start(match (total_ops, config.length) {
        (Some(total), _) => total,
        (None, Length::Duration(d)) => d.as_millis() as u64,
        (None, Length::Ops(total)) => total,
    });
    let (over, watching) = std::sync::mpsc::channel::<()>();
    let mut tripped = None;
    let mut control = ControlThread::new(&shared, kvm.as_deref(), progress, started, deadline);
    std::thread::scope(|scope| {
        for (v, (&fd, guest)) in fds.iter().zip(guests).enumerate() {
            let count = counts.as_ref().map(|(per, _)| per[v]);
            let shared = &shared;
            std::thread::Builder::new()
                .name(format!("vcpu{v}"))
                .spawn_scoped(scope, move || {
                    let _member = shared.domain.enter(format!("vcpu{v}"));
                    let body = AssertUnwindSafe(|| vcpu_thread(shared, v as u32, fd, count, guest));
                    if let Err(payload) = catch_unwind(body) {
                        shared.worker_panicked(&format!("vcpu{v}"), &shared.vcpus[v], payload);
                    }
                    shared.finished.fetch_add(1, Ordering::SeqCst);
                })
                .expect("spawn a vCPU thread");
        }
        let watcher = std::thread::Builder::new()
            .name("watchdog".to_string())
            .spawn_scoped(scope, || {
                let trip = watchdog::watch(&shared, deadline, watching)?;
                // Diagnose before the abort changes what the threads are doing; arm the fuse
                // before anything that could itself hang.
                let reason = trip.reason(config.watchdog);
                let diagnosis = watchdog::diagnose(&shared, kvm.as_deref(), shared.epoch);
                let report = format!("{reason}\n{diagnosis}replay: {}", config.reproduce_command());
                let fuse = watchdog::Fuse::arm(watchdog::grace(config.watchdog), report);
                shared.stop.store(true, Ordering::SeqCst);
                shared.domain.abort("the watchdog");
                Some((reason, diagnosis, fuse))
            })
            .expect("spawn the watchdog thread");
        let member = shared.domain.enter("control");
        let limit = counts.as_ref().map(|(_, control)| *control);
        let run_ops = AssertUnwindSafe(|| control.run_ops(limit));
        if let Err(payload) = catch_unwind(run_ops) {
            shared.worker_panicked("control", &shared.control, payload);
            // vCPUs at the pause barrier see `stop` and leave.
        }
        drop(member);
        control.wait_for_vcpus();
        // Every worker is done: the watchdog stops watching (if it has not tripped meanwhile).
        let _ = over.send(());
        tripped = watcher.join().unwrap_or_else(|payload| std::panic::resume_unwind(payload));
    });
    let panics = shared.panics.lock().unwrap_or_else(|e| e.into_inner()).clone();
    // After an abort or a panic the model's state is whatever the unwound threads left: the
    // report is the diagnosis and the state dump, not an invariant check. Taking the dump may
    // meet something an unwound thread left locked, so a fuse bounds it too.
    let (fuse, reason, diagnosis) = match tripped {
        Some((reason, diagnosis, fuse)) => {
            (Some(fuse), Some(reason), Some(format!("{diagnosis}{}", watchdog::state_dump(&vmm))))
        }
        None if !panics.is_empty() => {
            let report = format!("{}\nreplay: {}", panics.join("\n"), config.reproduce_command());
            let fuse = watchdog::Fuse::arm(watchdog::grace(config.watchdog), report);
            let diagnosis = watchdog::diagnose(&shared, kvm.as_deref(), shared.epoch);
            (Some(fuse), None, Some(format!("{diagnosis}{}", watchdog::state_dump(&vmm))))
        }
        None => (None, None, None),
    };
    let ControlThread { done: control_done, mut checks, mut violations, .. } = control;
    drop(kvm);
    let elapsed = started.elapsed();
    progress.finish(|| format!("{} operations", shared.vcpu_ops_done.load(Ordering::Relaxed) + control_done));
    if fuse.is_none() {
        checks += 1;
        violations.extend(vmm.check_invariants());
    }
    let ending = summary::Ending {
        control_ops: control_done,
        elapsed,
        invariant_checks: checks,
        violations,
        panics,
        watchdog_reason: reason,
        diagnosis,
    };
    let summary = Summary::collect(config, &vmm, &shared, ending);
    // Tearing the VM down (closing every descriptor) may meet what an unwound thread left
    // behind, so it is under the fuse too.
    drop(shared);
    drop(vmm);
    drop(fuse);
    Ok(summary)
}
