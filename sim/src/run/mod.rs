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
//! # Output
//!
//! A table (or, with `--json`, one JSON object) with the keys of [`Summary::fields`]:
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

use std::collections::HashSet;
use std::fmt;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gmem_kvm::vcpu::{RunError, VcpuExit};
use gmem_kvm::KernelProfile;
use gmem_kvm::VmType;
use gmem_mm::{Errno, PAGE_SIZE};
use gmem_uapi::vmm::{KVM_X86_DEFAULT_VM, KVM_X86_SNP_VM, KVM_X86_SW_PROTECTED_VM, KVM_X86_TDX_VM};
use gmem_uapi::{SimHost, Vmm, VmmConfig};

mod snp;
mod tdx;
mod watchdog;
use gmem_sync::waits::{self, WaitDomain};
use gmem_sync::CachePadded;
use snp::SnpGuest;
use tdx::{TdxCounters, TdxGuest};
use watchdog::{phase, Status};

/// Control operations between two invariant checks in release builds (throughput runs).
pub const INVARIANT_EVERY: u64 = 64;
/// Debug builds check after every control operation (continuous checking while developing).
const CHECK_EVERY_CONTROL_OP: bool = cfg!(debug_assertions);
/// The default operation count (a few seconds on a 2-vCPU machine, release build).
pub const DEFAULT_OPS: u64 = 1_000_000;
/// The default mix for VMs with private memory.
pub const DEFAULT_MIX: &str = "access=80,convert=5,punch=5,memslot=3,memfail=1,close=1";
/// The default mix for DEFAULT VMs (no private memory: only accesses and memslot changes).
pub const DEFAULT_MIX_NO_PRIVATE: &str = "access=95,memslot=5";
/// Regions (memslots) guest memory is split into.
pub const REGIONS: u32 = 4;
/// The most pages a conversion or punch covers.
const MAX_RANGE_PAGES: u64 = 16;
/// Retries of one access after its exit was handled.
const ACCESS_RETRIES: u32 = 4;
/// Integrity errors kept for printing.
const MAX_REPORTED: usize = 20;

/// Operation weights (`--mix`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mix {
    /// Guest accesses (vCPU threads).
    pub access: u32,
    /// Private/shared conversions.
    pub convert: u32,
    /// Hole punches on a guest_memfd.
    pub punch: u32,
    /// Memslot delete and re-add.
    pub memslot: u32,
    /// Memory failures on guest_memfd pages.
    pub memfail: u32,
    /// Closing a guest_memfd under running vCPUs (then replacing it).
    pub close: u32,
}

const MIX_KEYS: [&str; 6] = ["access", "convert", "punch", "memslot", "memfail", "close"];

impl Mix {
    /// Parses `access=80,convert=5,...`: every key at most once, weights 0..=1000000, unlisted
    /// keys are 0, at least one weight non-zero.
    pub fn parse(text: &str) -> Result<Mix, String> {
        let mut mix = Mix::default();
        let mut seen = HashSet::new();
        for item in text.split(',').map(str::trim).filter(|item| !item.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| format!("`{item}` is not KEY=WEIGHT (keys: {})", MIX_KEYS.join(", ")))?;
            let (key, value) = (key.trim(), value.trim());
            let weight: u32 = value
                .parse()
                .ok()
                .filter(|w| *w <= 1_000_000)
                .ok_or_else(|| format!("weight `{value}` of `{key}` is not an integer in 0..=1000000"))?;
            if !seen.insert(key.to_string()) {
                return Err(format!("`{key}` is given twice"));
            }
            *mix.weight_mut(key)
                .ok_or_else(|| format!("unknown operation `{key}` (expected one of: {})", MIX_KEYS.join(", ")))? =
                weight;
        }
        if mix.total() == 0 {
            return Err("the mix has no operation with a non-zero weight".to_string());
        }
        Ok(mix)
    }

    fn weight_mut(&mut self, key: &str) -> Option<&mut u32> {
        Some(match key {
            "access" => &mut self.access,
            "convert" => &mut self.convert,
            "punch" => &mut self.punch,
            "memslot" => &mut self.memslot,
            "memfail" => &mut self.memfail,
            "close" => &mut self.close,
            _ => return None,
        })
    }

    fn weights(&self) -> [u32; 6] {
        [self.access, self.convert, self.punch, self.memslot, self.memfail, self.close]
    }

    fn control_total(&self) -> u64 {
        self.weights()[1..].iter().map(|&w| u64::from(w)).sum()
    }

    fn total(&self) -> u64 {
        u64::from(self.access) + self.control_total()
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = MIX_KEYS.iter().zip(self.weights()).map(|(k, w)| format!("{k}={w}")).collect();
        f.write_str(&parts.join(","))
    }
}

/// How long a run lasts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Length {
    /// This many operations in all (guest accesses and control operations, split by the mix).
    Ops(u64),
    /// This long.
    Duration(Duration),
}

/// A run's configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `KVM_CREATE_VM`'s type.
    pub vm_type: u64,
    /// Guest memory in bytes.
    pub memory: u64,
    /// vCPU threads.
    pub vcpus: u32,
    /// How long it runs.
    pub length: Length,
    /// Operation weights.
    pub mix: Mix,
    /// The kernel profile's name.
    pub kernel: String,
    /// The seed of every stream.
    pub seed: u64,
    /// The watchdog's bound on time without progress (see [the module docs](self#the-watchdog)).
    pub watchdog: Duration,
    /// A deliberate breakage of the run, to see the watchdog and the panic handling work
    /// (`--break`); `None` in every real run.
    pub breakage: Option<Breakage>,
}

/// The default [`Config::watchdog`]: far above any legitimate pause (an invariant check of a
/// 4 GiB VM is suspended from it, a fault retry lasts at most about half a second), short
/// enough that a hung run is reported while its developer still waits for it.
pub const DEFAULT_WATCHDOG: Duration = Duration::from_secs(5);

/// After the watchdog aborts a run, how long the threads get to unwind (and the state dump to
/// be taken) before the process prints what it has and exits with status 1 anyway.
const UNWIND_GRACE: Duration = Duration::from_secs(2);

/// The vCPU operation after which `--break vcpu-panic` panics vCPU 0.
pub const BREAK_PANIC_AFTER: u64 = 100;

/// A deliberate breakage (`--break`): simulator-only, to show what the watchdog and the panic
/// handling report; the replay command carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Breakage {
    /// Before its first operation the control thread opens an MMU invalidation over all of guest
    /// memory (`kvm_mmu_invalidate_begin` and `_range_add` under `mmu_lock`) and never ends it,
    /// as a `kvm_gmem_invalidate_begin` without its `_end` would leave it: every fault retries
    /// until the model gives up, and nothing progresses.
    StuckInvalidation,
    /// Before its first operation the control thread has an SRCU read-side critical section
    /// of `kvm->srcu` entered and never left (an `srcu_read_unlock` missing): the next memslot
    /// change or guest_memfd close waits in `synchronize_srcu` forever, while the vCPUs go on.
    StuckSrcuReader,
    /// vCPU 0 panics after [`BREAK_PANIC_AFTER`] operations.
    VcpuPanic,
}

impl Breakage {
    /// The `--break` values.
    pub const ALL: [Breakage; 3] = [Breakage::StuckInvalidation, Breakage::StuckSrcuReader, Breakage::VcpuPanic];

    /// The `--break` value.
    pub fn name(self) -> &'static str {
        match self {
            Breakage::StuckInvalidation => "stuck-invalidation",
            Breakage::StuckSrcuReader => "stuck-srcu-reader",
            Breakage::VcpuPanic => "vcpu-panic",
        }
    }

    /// Parses a `--break` value.
    pub fn parse(text: &str) -> Result<Breakage, String> {
        Breakage::ALL.into_iter().find(|b| b.name() == text).ok_or_else(|| {
            let names: Vec<&str> = Breakage::ALL.iter().map(|b| b.name()).collect();
            format!("unknown breakage `{text}` (expected one of: {})", names.join(", "))
        })
    }
}

/// Parses `--watchdog` (seconds, more than 0 and at most a day).
pub fn parse_watchdog(text: &str) -> Result<Duration, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|secs| secs.is_finite() && *secs > 0.0 && *secs <= 86_400.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("`{text}` is not a number of seconds in (0, 86400]"))
}

impl Config {
    /// The defaults, with `seed`.
    pub fn new(seed: u64) -> Config {
        Config {
            vm_type: KVM_X86_SW_PROTECTED_VM,
            memory: 64 << 20,
            vcpus: 2,
            length: Length::Ops(DEFAULT_OPS),
            mix: Mix::parse(DEFAULT_MIX).expect("the default mix parses"),
            kernel: "v6.18".to_string(),
            seed,
            watchdog: DEFAULT_WATCHDOG,
            breakage: None,
        }
    }

    /// The command that replays the same operation streams.
    pub fn reproduce_command(&self) -> String {
        let length = match self.length {
            Length::Ops(n) => format!("--ops {n}"),
            Length::Duration(d) => format!("--duration {}", d.as_secs_f64()),
        };
        let mut command = format!(
            "gmem-sim run --seed {:#x} {length} --vm-type {} --memory {} --vcpus {} --mix {} --kernel {}",
            self.seed,
            vm_type_name(self.vm_type),
            self.memory,
            self.vcpus,
            self.mix,
            self.kernel
        );
        if self.watchdog != DEFAULT_WATCHDOG {
            command.push_str(&format!(" --watchdog {}", self.watchdog.as_secs_f64()));
        }
        if let Some(breakage) = self.breakage {
            command.push_str(&format!(" --break {}", breakage.name()));
        }
        command
    }

    fn pages(&self) -> u64 {
        self.memory / PAGE_SIZE
    }

    /// Whether the VM is an SEV-SNP guest (its vCPUs make the conversions).
    pub fn is_snp(&self) -> bool {
        self.vm_type == KVM_X86_SNP_VM
    }

    /// Whether the VM is a TD (its vCPUs make the conversions).
    pub fn is_tdx(&self) -> bool {
        self.vm_type == KVM_X86_TDX_VM
    }

    /// Whether the guest converts its own pages (SEV-SNP and TDX guests: the VMM only answers).
    pub fn guest_converts(&self) -> bool {
        self.is_snp() || self.is_tdx()
    }

    /// The weight of the vCPU threads' operations: accesses, and for a guest that converts its
    /// own pages (SEV-SNP, TDX) also its conversions.
    fn vcpu_weight(&self) -> u64 {
        u64::from(self.mix.access) + if self.guest_converts() { u64::from(self.mix.convert) } else { 0 }
    }

    /// The mix the control thread draws from (without conversions for SEV-SNP and TDX guests).
    fn control_mix(&self) -> Mix {
        Mix { convert: if self.guest_converts() { 0 } else { self.mix.convert }, ..self.mix }
    }

    /// The pages of the boot image an SNP guest or a TD is launched with (from page 0): a
    /// sixteenth of memory, at least one page, leaving each vCPU a page of its own (an SNP
    /// vCPU's GHCB).
    pub fn image_pages(&self) -> u64 {
        if self.guest_converts() {
            (self.pages() / 16).max(1).min(self.pages() - u64::from(self.vcpus))
        } else {
            0
        }
    }

    /// Checks the configuration against the VM type and profile.
    pub fn validate(&self) -> Result<KernelProfile, String> {
        let profile = KernelProfile::by_name(&self.kernel)?;
        if self.watchdog.is_zero() {
            return Err("--watchdog must be more than 0 seconds".to_string());
        }
        if self.vcpus == 0 || self.vcpus > 64 {
            return Err(format!("--vcpus {} is not in 1..=64", self.vcpus));
        }
        let unit = u64::from(REGIONS) * PAGE_SIZE;
        if self.memory < unit * u64::from(self.vcpus) || self.memory % unit != 0 || self.memory > 4 << 30 {
            return Err(format!(
                "--memory {} must be a multiple of {unit} bytes, at least {} and at most 4G",
                self.memory,
                unit * u64::from(self.vcpus)
            ));
        }
        if self.vm_type == KVM_X86_DEFAULT_VM {
            let m = &self.mix;
            if m.convert + m.punch + m.memfail + m.close != 0 {
                return Err(format!(
                    "a DEFAULT VM has no private memory: convert, punch, memfail and close must be 0 (got {m}); try --mix {DEFAULT_MIX_NO_PRIVATE}"
                ));
            }
        } else if ![KVM_X86_SW_PROTECTED_VM, KVM_X86_SNP_VM, KVM_X86_TDX_VM].contains(&self.vm_type) {
            return Err(format!("unsupported VM type {}", self.vm_type));
        }
        let vm_type = VmType::from_raw(self.vm_type).expect("a VM type checked above");
        if self.is_tdx() && !profile.supports_vm_type(vm_type) {
            return Err(format!(
                "profile {} has no TDX VMs: a TD needs a kernel that offers them (v6.18) on an Intel host with the TDX module",
                self.kernel
            ));
        }
        if !profile.supports_vm_type(vm_type) {
            let supported: Vec<&str> =
                VmType::ALL.iter().filter(|t| profile.supports_vm_type(**t)).map(|t| t.name()).collect();
            return Err(format!(
                "profile {} has no {} VMs (it supports: {})",
                self.kernel,
                vm_type.name(),
                supported.join(", ")
            ));
        }
        if self.mix.memfail != 0 && !profile.config.memory_failure {
            return Err(format!("profile {} does not model memory failure: use memfail=0", self.kernel));
        }
        Ok(profile)
    }
}

/// `DEFAULT`, `SW_PROTECTED`, `SEV_SNP` or `TDX`.
pub fn vm_type_name(vm_type: u64) -> &'static str {
    match vm_type {
        KVM_X86_DEFAULT_VM => "DEFAULT",
        KVM_X86_SNP_VM => "SEV_SNP",
        KVM_X86_TDX_VM => "TDX",
        _ => "SW_PROTECTED",
    }
}

/// Parses `--vm-type`.
pub fn parse_vm_type(text: &str) -> Result<u64, String> {
    match text.to_ascii_uppercase().as_str() {
        "DEFAULT" | "0" => Ok(KVM_X86_DEFAULT_VM),
        "SW_PROTECTED" | "1" => Ok(KVM_X86_SW_PROTECTED_VM),
        "SEV_SNP" | "SNP" | "4" => Ok(KVM_X86_SNP_VM),
        "TDX" | "5" => Ok(KVM_X86_TDX_VM),
        _ => Err(format!("unknown VM type `{text}` (expected DEFAULT, SW_PROTECTED, SEV_SNP or TDX)")),
    }
}

/// Parses a size such as `64M`, `1G`, `65536`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, shift) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 10),
        Some('M') => (&t[..t.len() - 1], 20),
        Some('G') => (&t[..t.len() - 1], 30),
        _ => (t, 0),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("`{text}` is not a size (bytes, or with a K, M or G suffix)"))
}

/// splitmix64: a small, fast, well-mixed generator (no dependency).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for stream `stream` of `seed`.
    pub fn new(seed: u64, stream: u64) -> Rng {
        let mut rng = Rng(seed ^ stream.wrapping_mul(0xd1b5_4a32_d192_ed03));
        rng.next_u64();
        rng
    }

    /// A generator whose state is exactly `state` (the first output mixes `state` plus the
    /// golden-ratio increment).
    pub fn from_state(state: u64) -> Rng {
        Rng(state)
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// What a vCPU does in one operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuAction {
    /// A guest load.
    Load,
    /// A guest store.
    Store,
    /// An SNP guest or a TD converts `npages` of its pages, from the operation's page on and
    /// within its region (the vCPU's pages are every `vcpus`-th, so with more than one vCPU they are
    /// not adjacent), to private or to shared.
    Convert {
        /// Pages (the operation's page and the next ones the vCPU owns).
        npages: u64,
        /// To private (else to shared).
        to_private: bool,
    },
}

/// One vCPU operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuOp {
    /// What it does.
    pub action: VcpuAction,
    /// The page (index into guest memory), one the vCPU owns.
    pub page: u64,
}

impl VcpuOp {
    /// A store.
    pub fn is_write(&self) -> bool {
        self.action == VcpuAction::Store
    }
}

/// A vCPU's operation stream: accesses with locality (mostly a short step from the previous
/// page, sometimes a jump); for an SNP guest also conversions of its own pages, with the
/// mix's `convert` weight against `access`. An SNP vCPU's last page is its GHCB, which the
/// stream leaves alone.
#[derive(Clone, Debug)]
pub struct VcpuStream {
    rng: Rng,
    vcpu: u64,
    vcpus: u64,
    owned: u64,
    cursor: u64,
    /// `(convert weight, access + convert weight)` for an SNP guest or a TD.
    convert: Option<(u64, u64)>,
    region_pages: u64,
}

impl VcpuStream {
    /// vCPU `vcpu`'s stream.
    pub fn new(config: &Config, vcpu: u32) -> VcpuStream {
        let vcpus = u64::from(config.vcpus);
        let mut owned = (config.pages() - u64::from(vcpu)).div_ceil(vcpus);
        let mut convert = None;
        if config.is_snp() {
            owned -= 1; // the GHCB page
        }
        if config.guest_converts() {
            let weight = u64::from(config.mix.convert);
            if weight != 0 {
                convert = Some((weight, config.vcpu_weight()));
            }
        }
        VcpuStream {
            rng: Rng::new(config.seed, 1 + u64::from(vcpu)),
            vcpu: u64::from(vcpu),
            vcpus,
            owned,
            cursor: 0,
            convert,
            region_pages: config.pages() / u64::from(REGIONS),
        }
    }
}

impl Iterator for VcpuStream {
    type Item = VcpuOp;
    fn next(&mut self) -> Option<VcpuOp> {
        let r = self.rng.next_u64();
        if r % 16 == 0 {
            self.cursor = self.rng.below(self.owned);
        } else {
            let step = (r >> 8) % 9;
            self.cursor = (self.cursor + self.owned + step - 4) % self.owned;
        }
        let page = self.cursor * self.vcpus + self.vcpu;
        if let Some((weight, total)) = self.convert {
            if self.rng.below(total) < weight {
                // The guest's pages from the cursor on, within the page's region: each region is
                // a RAM block of its own, and the VMM refuses a conversion that leaves one (KVM
                // merges adjacent pages into one request, which happens with a single vCPU).
                let region_end = (page / self.region_pages + 1) * self.region_pages;
                let in_region = (region_end - 1 - self.vcpu) / self.vcpus + 1 - self.cursor;
                let npages = (1 + self.rng.below(MAX_RANGE_PAGES)).min(self.owned - self.cursor).min(in_region);
                let to_private = self.rng.below(2) == 0;
                return Some(VcpuOp { action: VcpuAction::Convert { npages, to_private }, page });
            }
        }
        let action = if (r >> 16) % 5 < 2 { VcpuAction::Store } else { VcpuAction::Load };
        Some(VcpuOp { action, page })
    }
}

/// One control operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlOp {
    /// `kvm_convert_memory` of `npages` pages from `page`.
    Convert {
        /// First page.
        page: u64,
        /// Pages.
        npages: u64,
        /// To private (else to shared).
        to_private: bool,
    },
    /// Punch `npages` pages from `page` out of the guest_memfd.
    Punch {
        /// First page.
        page: u64,
        /// Pages.
        npages: u64,
    },
    /// Delete and re-add a region's memslot.
    Memslot {
        /// The region.
        region: usize,
    },
    /// A memory failure on a guest_memfd page.
    MemFail {
        /// The page.
        page: u64,
    },
    /// Close a region's guest_memfd under running vCPUs, then replace it.
    Close {
        /// The region.
        region: usize,
    },
}

/// The control thread's operation stream, drawn with the mix's non-access weights.
#[derive(Clone, Debug)]
pub struct ControlStream {
    rng: Rng,
    mix: Mix,
    pages: u64,
}

impl ControlStream {
    /// The control stream of `config`.
    pub fn new(config: &Config) -> ControlStream {
        ControlStream { rng: Rng::new(config.seed, 0), mix: config.control_mix(), pages: config.pages() }
    }

    fn range(&mut self) -> (u64, u64) {
        let region_pages = self.pages / u64::from(REGIONS);
        let page = self.rng.below(self.pages);
        let left = region_pages - page % region_pages;
        (page, (1 + self.rng.below(MAX_RANGE_PAGES)).min(left))
    }
}

impl Iterator for ControlStream {
    type Item = ControlOp;
    fn next(&mut self) -> Option<ControlOp> {
        let total = self.mix.control_total();
        if total == 0 {
            return None;
        }
        let mut pick = self.rng.below(total);
        let mut kind = 1;
        for (i, w) in self.mix.weights().iter().enumerate().skip(1) {
            if pick < u64::from(*w) {
                kind = i;
                break;
            }
            pick -= u64::from(*w);
        }
        Some(match kind {
            1 => {
                let (page, npages) = self.range();
                ControlOp::Convert { page, npages, to_private: self.rng.below(2) == 0 }
            }
            2 => {
                let (page, npages) = self.range();
                ControlOp::Punch { page, npages }
            }
            3 => ControlOp::Memslot { region: self.rng.below(u64::from(REGIONS)) as usize },
            4 => ControlOp::MemFail { page: self.rng.below(self.pages) },
            _ => ControlOp::Close { region: self.rng.below(u64::from(REGIONS)) as usize },
        })
    }
}

/// How many operations each vCPU makes (guest accesses; an SNP guest's conversions too) and
/// how many control operations run, for `Length::Ops` (`None` for a timed run: unbounded).
pub fn op_counts(config: &Config) -> Option<(Vec<u64>, u64)> {
    let Length::Ops(total) = config.length else { return None };
    let weights = config.mix.total();
    let accesses = (u128::from(total) * u128::from(config.vcpu_weight()) / u128::from(weights)) as u64;
    let vcpus = u64::from(config.vcpus);
    let per = (0..vcpus).map(|v| accesses / vcpus + u64::from(v < accesses % vcpus)).collect();
    Some((per, total - accesses))
}

/// The first operations of every stream (at most `limit` each; for `Length::Ops`, exactly what
/// a run executes): the control stream, then each vCPU's.
pub fn generate(config: &Config, limit: usize) -> (Vec<ControlOp>, Vec<Vec<VcpuOp>>) {
    let (per, control) = op_counts(config).unwrap_or((vec![u64::MAX; config.vcpus as usize], u64::MAX));
    let cap = |n: u64| usize::try_from(n).unwrap_or(usize::MAX).min(limit);
    let control_ops = ControlStream::new(config).take(cap(control)).collect();
    let vcpu_ops = (0..config.vcpus).map(|v| VcpuStream::new(config, v).take(cap(per[v as usize])).collect()).collect();
    (control_ops, vcpu_ops)
}

/// The destructive-operation bracket of one page (see the module docs).
#[derive(Debug, Default)]
pub struct PageEpoch {
    gen: AtomicU64,
    active: AtomicU32,
    poisoned: AtomicBool,
}

/// What an SEV-SNP guest's vCPUs did (see [`SnpGuest`]).
#[derive(Debug, Default)]
struct SnpCounters {
    /// Page-state change requests (the boot's MSR-protocol ones, then PSC buffers).
    psc_requests: AtomicU64,
    /// Requests KVM answered with an error, or did not take (its GHCB unreachable): retried.
    psc_errors: AtomicU64,
    /// Conversions whose PSC still failed after every attempt (the pages' state is unknown
    /// to the guest until it converts them again).
    psc_incomplete: AtomicU64,
    /// Conversions given up before their PSC (a rescind exited: no memslot, no guest_memfd,
    /// poison).
    conversions_aborted: AtomicU64,
    /// #VC exceptions for a page that is not validated, after which the vCPU validated the page
    /// again and retried.
    vc_exceptions: AtomicU64,
    /// PVALIDATE instructions (validations and rescissions).
    pvalidates: AtomicU64,
}

/// Everything the threads share.
struct Shared<'a> {
    config: &'a Config,
    vmm: &'a Vmm,
    pages: Vec<PageEpoch>,
    /// Per region: bumped when a memslot change starts and when it ends (odd: in progress).
    slot_gens: Vec<AtomicU64>,
    stop: AtomicBool,
    pause: AtomicBool,
    paused: AtomicUsize,
    finished: AtomicUsize,
    /// vCPU operations done (accesses, and an SNP guest's conversions).
    vcpu_ops_done: AtomicU64,
    exits_mmio: AtomicU64,
    exits_hwpoison: AtomicU64,
    exits_unresolved: AtomicU64,
    /// Conversion operations the vCPUs of an SNP guest or a TD made (each a conversion of the
    /// pages not already in the state asked for; nothing if there were none).
    guest_conversions: AtomicU64,
    snp: SnpCounters,
    tdx: TdxCounters,
    errors: Mutex<Vec<String>>,
    integrity_errors: AtomicU64,
    vmm_errors: AtomicU64,
    /// What each vCPU thread is doing, and its operations that made progress (all but those
    /// the model gave up on with EINTR after its fault-retry bound).
    vcpus: Vec<CachePadded<Status>>,
    /// What the control thread is doing, and its operations.
    control: CachePadded<Status>,
    /// The run's threads, for the wait registry and the abort.
    domain: Arc<WaitDomain>,
    /// The origin of the [`Status`] timestamps.
    epoch: Instant,
    /// Panics of the run's threads, as failure lines.
    panics: Mutex<Vec<String>>,
}

impl Shared<'_> {
    fn begin(&self, first: u64, npages: u64) {
        for page in &self.pages[first as usize..(first + npages) as usize] {
            page.active.fetch_add(1, Ordering::SeqCst);
            page.gen.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn end(&self, first: u64, npages: u64, unpoison: bool) {
        for page in &self.pages[first as usize..(first + npages) as usize] {
            if unpoison {
                page.poisoned.store(false, Ordering::SeqCst);
            }
            page.gen.fetch_add(1, Ordering::SeqCst);
            page.active.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn error(&self, counter: &AtomicU64, message: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if errors.len() < MAX_REPORTED {
            errors.push(message);
        }
    }

    /// The region of a page.
    fn region_of(&self, page: u64) -> usize {
        (page / (self.config.pages() / u64::from(REGIONS))) as usize
    }

    /// Waits at the pause barrier if the control thread asked for one (not once the run is
    /// stopping: the control thread may be gone).
    fn maybe_pause(&self, status: &Status, index: u64) {
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
    fn panics_caught(&self) -> usize {
        self.panics.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// A worker thread (`name`, whose status is `status`) ended with a panic: an abort of its
    /// wait by the run's [`WaitDomain`] is only recorded in its status (the abort's reason is
    /// the run's failure); any other panic is a failure with its message, and stops the run,
    /// aborting the waits of the other threads (which may wait for what the panicked thread
    /// would have done).
    fn worker_panicked(&self, name: &str, status: &Status, payload: Box<dyn std::any::Any + Send>) {
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

/// A record: vCPU, page and sequence number, and a check word.
fn record(vcpu: u32, page: u64, seq: u64) -> [u8; 16] {
    let tag = (u64::from(vcpu) << 56) | ((page & 0xff_ffff) << 32) | (seq & 0xffff_ffff);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&tag.to_le_bytes());
    bytes[8..].copy_from_slice(&(tag ^ 0x5a5a_a5a5_0f0f_f0f0).to_le_bytes());
    bytes
}

/// What an SNP guest's boot image holds at the start of page `page` (a check word unlike a
/// record's, so neither passes for the other).
fn image_record(page: u64) -> [u8; 16] {
    let tag = ((page & 0xff_ffff) << 32) | 0x494d_4147;
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&tag.to_le_bytes());
    bytes[8..].copy_from_slice(&(tag ^ 0xa5a5_5a5a_f0f0_0f0f).to_le_bytes());
    bytes
}

/// Whether `bytes` is a record `vcpu` stored to `page` before its operation `index`: the check
/// word holds and the fields match. Only a store writes a record, and a vCPU only stores its
/// own records to its own pages, so these are exactly the records it may legitimately read
/// back there (the stream's last store, or an older one a destructive operation raced with).
fn is_earlier_record(bytes: &[u8; 16], vcpu: u32, page: u64, index: u64) -> bool {
    let tag = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let check = u64::from_le_bytes(bytes[8..].try_into().expect("8 bytes"));
    check == tag ^ 0x5a5a_a5a5_0f0f_f0f0
        && tag >> 56 == u64::from(vcpu)
        && (tag >> 32) & 0xff_ffff == page & 0xff_ffff
        && (index >= 1 << 32 || tag & 0xffff_ffff < index)
}

/// What a vCPU last wrote to one page, and the epoch it was stable at.
#[derive(Clone, Copy, Debug)]
struct Shadow {
    value: [u8; 16],
    stable_gen: Option<u64>,
}

/// One access as a SW_PROTECTED or DEFAULT VM's vCPU makes it: the VM type's default kind,
/// and a `KVM_EXIT_MEMORY_FAULT` handled by the VMM (a conversion of the page, destructive
/// for it) before the access is retried.
fn plain_access(shared: &Shared<'_>, fd: i32, page: u64, buf: &mut [u8; 16], write: bool) -> Result<(), RunError> {
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
enum CvmGuest<'a> {
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

fn vcpu_thread(shared: &Shared<'_>, vcpu: u32, fd: i32, count: Option<u64>, mut guest: Option<CvmGuest<'_>>) {
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

/// The result of a run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// `(key, value)` in output order; values are already formatted (`n/a` where the model
    /// has no such counter).
    pub fields: Vec<(&'static str, String)>,
    /// Integrity errors and unexpected VMM errors (at most 20 kept), then warnings, then
    /// invariant violations, as printable lines.
    pub failures: Vec<String>,
    /// No warning, violation, integrity error or VMM error.
    pub ok: bool,
    /// The replay command.
    pub reproduce: String,
    /// When the watchdog ended the run or a thread panicked (why is in `failures`): who waited
    /// on what, what each thread was doing, the MMU invalidation and SRCU state, and the state
    /// dump.
    pub diagnosis: Option<String>,
}

impl Summary {
    /// One JSON object with every field.
    pub fn to_json(&self) -> String {
        let mut out = String::from("{");
        for (i, (key, value)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let numeric = value.parse::<f64>().is_ok() || value == "true" || value == "false";
            if numeric {
                out.push_str(&format!("\"{key}\":{value}"));
            } else {
                out.push_str(&format!("\"{key}\":\"{}\"", json_escape(value)));
            }
        }
        out.push('}');
        out
    }

    /// The table.
    pub fn table(&self) -> String {
        let width = self.fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        self.fields.iter().map(|(k, v)| format!("{k:<width$}  {v}\n")).collect()
    }
}

fn json_escape(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn progress_line(out: &mut dyn Write, done: u64, total: Option<u64>, started: Instant, length: Length) {
    let fraction = match (total, length) {
        (Some(total), _) => done as f64 / total.max(1) as f64,
        (None, Length::Duration(d)) => started.elapsed().as_secs_f64() / d.as_secs_f64().max(1e-9),
        _ => 0.0,
    }
    .min(1.0);
    let filled = (fraction * 30.0) as usize;
    let _ = write!(
        out,
        "\r[{}{}] {:>3}% {done} ops",
        "#".repeat(filled),
        ".".repeat(30 - filled),
        (fraction * 100.0) as u32
    );
    let _ = out.flush();
}

/// Runs the workload. `Err` is a setup error (bad configuration, VM creation failed).
pub fn run(config: &Config, mut progress: Option<&mut dyn Write>) -> Result<Summary, String> {
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
    let mut control_done = 0u64;
    let mut checks = 0u64;
    let mut violations = Vec::new();
    let total_ops = counts.as_ref().map(|(per, control)| per.iter().sum::<u64>() + control);
    // Taken now, while nothing can be stuck: the watchdog reads the VM's state lock-free.
    let kvm = vmm.host().vm(vmm.vm_fd()).ok();
    let vcpus = config.vcpus as usize;
    let deadline = match config.length {
        Length::Duration(d) => Some(started + d),
        Length::Ops(_) => None,
    };
    let (over, watching) = std::sync::mpsc::channel::<()>();
    let mut tripped = None;
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
        let control_limit = counts.as_ref().map(|(_, control)| *control);
        let mut stream = ControlStream::new(config);
        // vCPU operations per control operation, to spread control operations over the run.
        let control_total = config.control_mix().control_total();
        let ratio = if control_total == 0 { 0.0 } else { config.vcpu_weight() as f64 / control_total as f64 };
        let mut last_progress = Instant::now();
        let mut tick = |shared: &Shared<'_>, control_done: u64, progress: &mut Option<&mut dyn Write>| {
            if let Some(out) = progress.as_deref_mut() {
                if last_progress.elapsed() >= Duration::from_millis(100) {
                    last_progress = Instant::now();
                    let done = shared.vcpu_ops_done.load(Ordering::Relaxed) + control_done;
                    progress_line(out, done, total_ops, started, config.length);
                }
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                shared.stop.store(true, Ordering::SeqCst);
            }
        };
        let member = shared.domain.enter("control");
        let epoch = shared.epoch;
        let control = AssertUnwindSafe(|| loop {
            if let (0, Some(breakage), Some(kvm)) = (control_done, config.breakage, kvm.as_deref()) {
                match breakage {
                    Breakage::StuckInvalidation => leave_an_invalidation_open(kvm, config),
                    Breakage::StuckSrcuReader => leave_an_srcu_reader_inside(kvm),
                    Breakage::VcpuPanic => {}
                }
            }
            if control_limit.is_some_and(|limit| control_done >= limit) || shared.stop.load(Ordering::SeqCst) {
                break;
            }
            let Some(op) = stream.next() else { break };
            // Pace: wait until the vCPUs made their share of accesses.
            shared.control.set(epoch, phase::PACING, control_done);
            let due = (control_done as f64 * ratio) as u64;
            while shared.vcpu_ops_done.load(Ordering::Relaxed) < due
                && shared.finished.load(Ordering::SeqCst) < vcpus
                && !shared.stop.load(Ordering::SeqCst)
            {
                tick(&shared, control_done, &mut progress);
                std::thread::yield_now();
            }
            shared.control.set(epoch, phase::IN_OP, control_done);
            control_op(&shared, op);
            control_done += 1;
            shared.control.moved();
            tick(&shared, control_done, &mut progress);
            if CHECK_EVERY_CONTROL_OP || control_done % INVARIANT_EVERY == 0 {
                shared.control.set(epoch, phase::PAUSING, control_done);
                shared.pause.store(true, Ordering::SeqCst);
                while shared.paused.load(Ordering::SeqCst) + shared.finished.load(Ordering::SeqCst) < vcpus
                    && !shared.stop.load(Ordering::SeqCst)
                {
                    std::thread::yield_now();
                }
                if !shared.stop.load(Ordering::SeqCst) {
                    shared.control.set(epoch, phase::CHECKING, control_done);
                    checks += 1;
                    violations.extend(vmm.check_invariants());
                }
                shared.pause.store(false, Ordering::SeqCst);
                while shared.paused.load(Ordering::SeqCst) != 0 {
                    std::thread::yield_now();
                }
            }
        });
        if let Err(payload) = catch_unwind(control) {
            shared.worker_panicked("control", &shared.control, payload);
            // vCPUs at the pause barrier see `stop` and leave.
        }
        drop(member);
        if !matches!(shared.control.phase(), phase::PANICKED | phase::ABORTED) {
            shared.control.set(epoch, phase::FINAL_WAIT, control_done);
        }
        while shared.finished.load(Ordering::SeqCst) < vcpus {
            tick(&shared, control_done, &mut progress);
            std::thread::sleep(Duration::from_millis(1));
        }
        if shared.control.phase() == phase::FINAL_WAIT {
            shared.control.set(epoch, phase::FINISHED, control_done);
        }
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
    drop(kvm);
    let elapsed = started.elapsed();
    if let Some(out) = progress {
        let done = shared.vcpu_ops_done.load(Ordering::Relaxed) + control_done;
        progress_line(out, done, Some(done), started, config.length);
        let _ = writeln!(out);
    }
    if fuse.is_none() {
        checks += 1;
        violations.extend(vmm.check_invariants());
    }
    let failed_conversions = vmm.stats.map_gpa_range_failures.load(Ordering::Relaxed);
    if failed_conversions != 0 {
        shared.error(
            &shared.vmm_errors,
            format!("{failed_conversions} conversions the guest asked for failed in the VMM (answered with an error)"),
        );
    }
    let warnings = vmm.host().machine().warnings.snapshot();
    // A panic first, then why the watchdog ended the run, then what the run found.
    let mut failures = panics.clone();
    failures.extend(reason);
    failures.extend(shared.errors.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned());
    failures.extend(warnings.iter().map(|w| w.to_string()));
    failures.extend(violations.iter().map(|v| format!("invariant violated: {v}")));
    let integrity = shared.integrity_errors.load(Ordering::Relaxed);
    let vmm_errors = shared.vmm_errors.load(Ordering::Relaxed);
    let ok = integrity == 0 && vmm_errors == 0 && warnings.is_empty() && violations.is_empty() && diagnosis.is_none();
    let snp = &shared.snp;
    let guest_conversions = shared.guest_conversions.load(Ordering::Relaxed);
    let vcpu_ops = shared.vcpu_ops_done.load(Ordering::Relaxed);
    let accesses = vcpu_ops - guest_conversions;
    let ops = vcpu_ops + control_done;
    let vcpu = vmm.vcpu_stats();
    let mmu = vmm.mmu_stats();
    let mmu_field =
        |f: fn(&gmem_kvm::tdp_mmu::TdpMmuStats) -> u64| mmu.as_ref().map_or("n/a".to_string(), |s| f(s).to_string());
    let stat = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed).to_string();
    let s = &vmm.stats;
    let mut fields = vec![
        ("seed", format!("{:#x}", config.seed)),
        ("kernel", config.kernel.clone()),
        ("vm_type", vm_type_name(config.vm_type).to_string()),
        ("memory", config.memory.to_string()),
        ("vcpus", config.vcpus.to_string()),
        ("mix", config.mix.to_string()),
        ("ops", ops.to_string()),
        ("guest_accesses", accesses.to_string()),
        ("control_ops", control_done.to_string()),
        ("seconds", format!("{:.3}", elapsed.as_secs_f64())),
        ("ops_per_sec", format!("{:.0}", ops as f64 / elapsed.as_secs_f64().max(1e-9))),
        ("faults", vcpu[0].to_string()),
        ("faults_fixed", vcpu[1].to_string()),
        ("faults_spurious", vcpu[2].to_string()),
        ("fault_retries", vcpu[4].to_string()),
        ("huge_mappings", mmu_field(|s| s.installed_huge)),
        ("sptes_zapped", mmu_field(|s| s.zapped)),
        ("zap_all_fast", mmu_field(|s| s.zap_all_fast)),
        ("tlb_flushes", mmu_field(|s| s.remote_tlb_flushes)),
        ("vcpu_tlb_flushes", vcpu[5].to_string()),
        ("exits_memory_fault", stat(&s.memory_fault_exits)),
        ("exits_mmio", stat(&shared.exits_mmio)),
        ("exits_hwpoison", stat(&shared.exits_hwpoison)),
        ("exits_unresolved", stat(&shared.exits_unresolved)),
        ("conversions_to_private", stat(&s.to_private)),
        ("conversions_to_shared", stat(&s.to_shared)),
        ("punches", stat(&s.punches)),
        ("memslot_changes", stat(&s.memslot_changes)),
        ("memory_failures", stat(&s.memory_failures)),
        ("gmem_closes", stat(&s.gmem_closes)),
    ];
    // An SEV-SNP guest's own figures (`n/a` for other VM types).
    let snp_host = vmm.host().snp_host();
    let snp_fields: [(&'static str, String); 11] = [
        ("guest_conversions", guest_conversions.to_string()),
        ("psc_requests", stat(&snp.psc_requests)),
        ("psc_exits", stat(&s.map_gpa_range_exits)),
        ("psc_errors", stat(&snp.psc_errors)),
        ("psc_incomplete", stat(&snp.psc_incomplete)),
        ("conversions_aborted", stat(&snp.conversions_aborted)),
        ("vc_exceptions", stat(&snp.vc_exceptions)),
        ("pvalidates", stat(&snp.pvalidates)),
        ("launched_pages", stat(&s.launched_pages)),
        ("rmp_assigned_at_end", snp_host.map_or("n/a".to_string(), |h| h.rmp().assigned_count().to_string())),
        ("rmp_leaked_pages", snp_host.map_or("n/a".to_string(), |h| h.nr_leaked_pages().to_string())),
    ];
    for (key, value) in snp_fields {
        let shown = config.is_snp() || (config.is_tdx() && matches!(key, "guest_conversions" | "launched_pages"));
        fields.push((key, if shown { value } else { "n/a".to_string() }));
    }
    // A TD's own figures (`n/a` for other VM types): the guest's, then KVM's TDX counters and
    // the TDX module's state at the end.
    let kvm = vmm.host().vm(vmm.vm_fd()).ok();
    let td = kvm.as_deref().and_then(gmem_arch::tdx::kvm::TdxVm::of);
    let td_stat = |f: fn(&gmem_arch::tdx::kvm::TdxStats) -> &std::sync::atomic::AtomicU64| {
        td.map_or("n/a".to_string(), |vm| stat(f(&vm.stats)))
    };
    let tdx = &shared.tdx;
    let tdx_fields: [(&'static str, String); 19] = [
        ("tdx_accepts", stat(&tdx.accepts)),
        ("tdx_accept_busy", stat(&tdx.accept_busy)),
        ("map_gpa_requests", td_stat(|s| &s.map_gpa_requests)),
        ("map_gpa_exits", stat(&s.map_gpa_range_exits)),
        ("map_gpa_retries", td_stat(|s| &s.map_gpa_retries)),
        ("map_gpa_errors", stat(&tdx.map_gpa_errors)),
        ("tdx_conversions_incomplete", stat(&tdx.conversions_incomplete)),
        ("ve_exceptions", stat(&tdx.ve_exceptions)),
        ("tdx_events_posted", stat(&tdx.events_posted)),
        ("vp_enters", td_stat(|s| &s.vp_enters)),
        ("entries_deferred", td_stat(|s| &s.entries_deferred)),
        ("ept_violations", td_stat(|s| &s.ept_violations)),
        ("ept_local_retries", td_stat(|s| &s.local_retries)),
        ("aug_busy", td_stat(|s| &s.aug_busy)),
        ("block_busy", td_stat(|s| &s.block_busy)),
        ("track_busy", td_stat(|s| &s.track_busy)),
        ("remove_busy", td_stat(|s| &s.remove_busy)),
        ("tdx_leaked_pages", td.map_or("n/a".to_string(), |vm| vm.leaked_pages().len().to_string())),
        ("pamt_pages_owned_at_end", td.map_or("n/a".to_string(), |vm| vm.module().td_owned_frames().to_string())),
    ];
    for (key, value) in tdx_fields {
        fields.push((key, if config.is_tdx() { value } else { "n/a".to_string() }));
    }
    fields.extend([
        ("invariant_checks", checks.to_string()),
        ("invariant_violations", violations.len().to_string()),
        ("warnings", warnings.len().to_string()),
        ("integrity_errors", integrity.to_string()),
        ("vmm_errors", vmm_errors.to_string()),
        ("ok", ok.to_string()),
    ]);
    let summary = Summary { fields, failures, ok, reproduce: config.reproduce_command(), diagnosis };
    // Tearing the VM down (closing every descriptor) may meet what an unwound thread left
    // behind, so it is under the fuse too.
    drop(shared);
    drop(vmm);
    drop(fuse);
    Ok(summary)
}

/// Chains a panic hook (once per process) that counts each panic beginning in a run's thread
/// in the run's [`WaitDomain`], so the watchdog does not take a slow panic report for a hang.
fn count_panics_in_runs() {
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
fn leave_an_invalidation_open(kvm: &gmem_kvm::Kvm, config: &Config) {
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
fn leave_an_srcu_reader_inside(kvm: &gmem_kvm::Kvm) {
    std::thread::scope(|scope| {
        scope.spawn(|| std::mem::forget(kvm.srcu_read_lock()));
    });
}

/// Lets vCPUs run for a moment (against a deleted memslot or a closed guest_memfd).
fn let_vcpus_run() {
    for _ in 0..8 {
        std::thread::yield_now();
    }
}

fn control_op(shared: &Shared<'_>, op: ControlOp) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_earlier_record_of_this_vcpu_for_this_page_is_known() {
        let written = record(1, 77, 10);
        assert!(is_earlier_record(&written, 1, 77, 11));
        assert!(!is_earlier_record(&written, 1, 77, 10), "not written yet at its own index");
        assert!(!is_earlier_record(&written, 0, 77, 11), "another vCPU's record");
        assert!(!is_earlier_record(&written, 1, 78, 11), "another page's record");
        let mut torn = written;
        torn[12] ^= 1;
        assert!(!is_earlier_record(&torn, 1, 77, 11), "a torn record fails its check word");
        assert!(!is_earlier_record(&[0xff; 16], 1, 77, 11));
    }
}
