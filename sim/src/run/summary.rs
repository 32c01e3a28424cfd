//! The result of a run: one typed [`Summary`] holding every figure `gmem-sim run` prints, and
//! the failures, replay command and diagnosis printed beside them.
//!
//! The figures are serialised with serde, once: `--json` is that serialisation
//! ([`Summary::to_json`]) and the table is rendered from the same serialised fields
//! ([`Summary::rows`]), so the two cannot disagree on a key, its order or its value. A figure
//! a VM type does not have (an SEV-SNP counter on a TD, the TDP MMU's counters on a VM without
//! one) is `None` and printed `n/a`, in the JSON as the string `"n/a"`. Fractional figures
//! (`seconds`) are printed with three decimals in both.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gmem_arch::tdx::kvm::{TdxStats, TdxVm};
use gmem_kvm::invariants::Violation;
use gmem_uapi::Vmm;
use serde::{Serialize, Serializer};

use super::config::{vm_type_name, Config, Mix};
use super::workers::Shared;

/// The result of a run. Serialised, the figures' fields give the keys and order of the JSON
/// object and of the table; the failures, the replay command and the diagnosis are not
/// figures and are printed apart.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// The seed of every stream (printed `0x...`).
    #[serde(serialize_with = "hexadecimal")]
    pub seed: u64,
    /// The kernel profile.
    pub kernel: String,
    /// `DEFAULT`, `SW_PROTECTED`, `SEV_SNP` or `TDX`.
    pub vm_type: &'static str,
    /// Guest memory in bytes.
    pub memory: u64,
    /// vCPU threads.
    pub vcpus: u32,
    /// The operation weights.
    #[serde(serialize_with = "displayed")]
    pub mix: Mix,
    /// Operations done: `guest_accesses`, the guest's own conversions and `control_ops`.
    pub ops: u64,
    /// Guest loads and stores.
    pub guest_accesses: u64,
    /// Control operations.
    pub control_ops: u64,
    /// Wall-clock time of the workload.
    pub seconds: f64,
    /// `ops` per second of `seconds`, rounded.
    pub ops_per_sec: u64,
    /// Page faults the vCPUs took (`pf_taken`).
    pub faults: u64,
    /// Faults that installed an SPTE (`pf_fixed`).
    pub faults_fixed: u64,
    /// Faults that found the SPTE already there (`pf_spurious`).
    pub faults_spurious: u64,
    /// Faults that returned `RET_PF_RETRY`.
    pub fault_retries: u64,
    /// 2M and 1G leaves installed (the TDP MMU's; `n/a` without one).
    #[serde(serialize_with = "count_or_not_applicable")]
    pub huge_mappings: Option<u64>,
    /// SPTEs zapped.
    #[serde(serialize_with = "count_or_not_applicable")]
    pub sptes_zapped: Option<u64>,
    /// `kvm_mmu_zap_all_fast` calls.
    #[serde(serialize_with = "count_or_not_applicable")]
    pub zap_all_fast: Option<u64>,
    /// Remote TLB flush requests.
    #[serde(serialize_with = "count_or_not_applicable")]
    pub tlb_flushes: Option<u64>,
    /// TLB flushes the vCPUs carried out.
    pub vcpu_tlb_flushes: u64,
    /// `KVM_EXIT_MEMORY_FAULT` exits the VMM handled.
    pub exits_memory_fault: u64,
    /// Accesses that exited to MMIO (their memslot was being changed).
    pub exits_mmio: u64,
    /// Accesses that exited with hardware poison.
    pub exits_hwpoison: u64,
    /// Accesses left unresolved after their retries.
    pub exits_unresolved: u64,
    /// Conversions to private the VMM made.
    pub conversions_to_private: u64,
    /// Conversions to shared the VMM made.
    pub conversions_to_shared: u64,
    /// Hole punches.
    pub punches: u64,
    /// Memslot deletions and re-adds.
    pub memslot_changes: u64,
    /// Memory failures injected.
    pub memory_failures: u64,
    /// guest_memfds closed under running vCPUs.
    pub gmem_closes: u64,
    /// An SEV-SNP guest's figures.
    #[serde(flatten)]
    pub snp: SnpFigures,
    /// A TD's figures.
    #[serde(flatten)]
    pub tdx: TdxFigures,
    /// Invariant checks made.
    pub invariant_checks: u64,
    /// Invariant violations found.
    pub invariant_violations: u64,
    /// Warnings (WARN, KVM_BUG_ON) the machine recorded.
    pub warnings: u64,
    /// Integrity errors.
    pub integrity_errors: u64,
    /// Unexpected VMM errors.
    pub vmm_errors: u64,
    /// No warning, violation, integrity error or VMM error, no panic, and the watchdog did not
    /// end the run.
    pub ok: bool,
    /// Integrity errors and unexpected VMM errors (at most 20 kept), then warnings, then
    /// invariant violations, as printable lines.
    #[serde(skip)]
    pub failures: Vec<String>,
    /// The replay command.
    #[serde(skip)]
    pub reproduce: String,
    /// When the watchdog ended the run or a thread panicked (why is in `failures`): who waited
    /// on what, what each thread was doing, the MMU invalidation and SRCU state, and the state
    /// dump.
    #[serde(skip)]
    pub diagnosis: Option<String>,
}

/// An SEV-SNP guest's figures: `None` (`n/a`) for other VM types, except the two a TD has too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SnpFigures {
    /// Conversion operations the vCPUs of an SNP guest or a TD made.
    #[serde(serialize_with = "count_or_not_applicable")]
    pub guest_conversions: Option<u64>,
    /// Page-state change requests.
    #[serde(serialize_with = "count_or_not_applicable")]
    pub psc_requests: Option<u64>,
    /// The `KVM_HC_MAP_GPA_RANGE` exits the VMM handled.
    #[serde(serialize_with = "count_or_not_applicable")]
    pub psc_exits: Option<u64>,
    /// Requests answered with an error or not taken, then retried.
    #[serde(serialize_with = "count_or_not_applicable")]
    pub psc_errors: Option<u64>,
    /// Conversions left unknown after every retry.
    #[serde(serialize_with = "count_or_not_applicable")]
    pub psc_incomplete: Option<u64>,
    /// Conversions given up before the request (a rescind could not reach its page).
    #[serde(serialize_with = "count_or_not_applicable")]
    pub conversions_aborted: Option<u64>,
    /// #VC exceptions the guest recovered from.
    #[serde(serialize_with = "count_or_not_applicable")]
    pub vc_exceptions: Option<u64>,
    /// PVALIDATE instructions.
    #[serde(serialize_with = "count_or_not_applicable")]
    pub pvalidates: Option<u64>,
    /// Pages the launch measured (an SNP guest's or a TD's).
    #[serde(serialize_with = "count_or_not_applicable")]
    pub launched_pages: Option<u64>,
    /// RMP entries assigned when the run ends.
    #[serde(serialize_with = "count_or_not_applicable")]
    pub rmp_assigned_at_end: Option<u64>,
    /// Pages the host leaked (their RMP state could not be restored).
    #[serde(serialize_with = "count_or_not_applicable")]
    pub rmp_leaked_pages: Option<u64>,
}

/// A TD's figures: the guest's, KVM's TDX counters and the TDX module's state at the end;
/// `None` (`n/a`) for other VM types.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TdxFigures {
    /// `TDG.MEM.PAGE.ACCEPT` calls.
    #[serde(serialize_with = "count_or_not_applicable")]
    pub tdx_accepts: Option<u64>,
    /// ACCEPTs the module found busy, repeated.
    #[serde(serialize_with = "count_or_not_applicable")]
    pub tdx_accept_busy: Option<u64>,
    /// MapGPA TDVMCALLs.
    #[serde(serialize_with = "count_or_not_applicable")]
    pub map_gpa_requests: Option<u64>,
    /// The `KVM_EXIT_HYPERCALL` chunks the VMM handled.
    #[serde(serialize_with = "count_or_not_applicable")]
    pub map_gpa_exits: Option<u64>,
    /// MapGPAs answered `TDVMCALL_STATUS_RETRY`.
    #[serde(serialize_with = "count_or_not_applicable")]
    pub map_gpa_retries: Option<u64>,
    /// Conversions whose MapGPA failed and was repeated.
    #[serde(serialize_with = "count_or_not_applicable")]
    pub map_gpa_errors: Option<u64>,
    /// Conversions left incomplete after every retry.
    #[serde(serialize_with = "count_or_not_applicable")]
    pub tdx_conversions_incomplete: Option<u64>,
    /// #VE exceptions the guest recovered from.
    #[serde(serialize_with = "count_or_not_applicable")]
    pub ve_exceptions: Option<u64>,
    /// Interrupts that arrived during MapGPA exits.
    #[serde(serialize_with = "count_or_not_applicable")]
    pub tdx_events_posted: Option<u64>,
    /// `TDH.VP.ENTER`s.
    #[serde(serialize_with = "count_or_not_applicable")]
    pub vp_enters: Option<u64>,
    /// Entries not made while `wait_for_sept_zap` was set.
    #[serde(serialize_with = "count_or_not_applicable")]
    pub entries_deferred: Option<u64>,
    /// EPT violations.
    #[serde(serialize_with = "count_or_not_applicable")]
    pub ept_violations: Option<u64>,
    /// EPT violations retried locally.
    #[serde(serialize_with = "count_or_not_applicable")]
    pub ept_local_retries: Option<u64>,
    /// `TDH.MEM.PAGE.AUG`s that found the module busy.
    #[serde(serialize_with = "count_or_not_applicable")]
    pub aug_busy: Option<u64>,
    /// `TDH.MEM.RANGE.BLOCK`s that found the module busy.
    #[serde(serialize_with = "count_or_not_applicable")]
    pub block_busy: Option<u64>,
    /// `TDH.MEM.TRACK`s that found the module busy.
    #[serde(serialize_with = "count_or_not_applicable")]
    pub track_busy: Option<u64>,
    /// `TDH.MEM.PAGE.REMOVE`s that found the module busy.
    #[serde(serialize_with = "count_or_not_applicable")]
    pub remove_busy: Option<u64>,
    /// Pages KVM leaked.
    #[serde(serialize_with = "count_or_not_applicable")]
    pub tdx_leaked_pages: Option<u64>,
    /// Frames the TD owns in the PAMT when the run ends.
    #[serde(serialize_with = "count_or_not_applicable")]
    pub pamt_pages_owned_at_end: Option<u64>,
}

/// What the run's orchestration knows when the threads are done, beyond what they counted.
pub(super) struct Ending {
    /// Control operations done.
    pub(super) control_ops: u64,
    /// How long the workload ran.
    pub(super) elapsed: Duration,
    /// Invariant checks made.
    pub(super) invariant_checks: u64,
    /// What they found.
    pub(super) violations: Vec<Violation>,
    /// Panics of the run's threads, as failure lines.
    pub(super) panics: Vec<String>,
    /// Why the watchdog ended the run, if it did.
    pub(super) watchdog_reason: Option<String>,
    /// The diagnosis and state dump after a panic or the watchdog.
    pub(super) diagnosis: Option<String>,
}

impl Summary {
    /// Reads the figures of a finished run from what its threads counted, the VMM and the
    /// machine, and judges it.
    pub(super) fn collect(config: &Config, vmm: &Vmm, shared: &Shared<'_>, ending: Ending) -> Summary {
        let failed_conversions = vmm.stats.map_gpa_range_failures.load(Ordering::Relaxed);
        if failed_conversions != 0 {
            shared.error(
                &shared.vmm_errors,
                format!(
                    "{failed_conversions} conversions the guest asked for failed in the VMM (answered with an error)"
                ),
            );
        }
        let warnings = vmm.host().machine().warnings.snapshot();
        let Ending { control_ops, elapsed, invariant_checks, violations, panics, watchdog_reason, diagnosis } = ending;
        // A panic first, then why the watchdog ended the run, then what the run found.
        let mut failures = panics;
        failures.extend(watchdog_reason);
        failures.extend(shared.errors.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned());
        failures.extend(warnings.iter().map(|w| w.to_string()));
        failures.extend(violations.iter().map(|v| format!("invariant violated: {v}")));
        let integrity_errors = count(&shared.integrity_errors);
        let vmm_errors = count(&shared.vmm_errors);
        let ok = integrity_errors == 0
            && vmm_errors == 0
            && warnings.is_empty()
            && violations.is_empty()
            && diagnosis.is_none();
        let guest_conversions = count(&shared.guest_conversions);
        let vcpu_ops = count(&shared.vcpu_ops_done);
        let ops = vcpu_ops + control_ops;
        let vcpu = vmm.vcpu_stats();
        let mmu = vmm.mmu_stats();
        let stats = &vmm.stats;
        Summary {
            seed: config.seed,
            kernel: config.kernel.clone(),
            vm_type: vm_type_name(config.vm_type),
            memory: config.memory,
            vcpus: config.vcpus,
            mix: config.mix,
            ops,
            guest_accesses: vcpu_ops - guest_conversions,
            control_ops,
            seconds: elapsed.as_secs_f64(),
            ops_per_sec: (ops as f64 / elapsed.as_secs_f64().max(1e-9)).round() as u64,
            faults: vcpu.pf_taken,
            faults_fixed: vcpu.pf_fixed,
            faults_spurious: vcpu.pf_spurious,
            fault_retries: vcpu.pf_retry,
            huge_mappings: mmu.as_ref().map(|s| s.installed_huge),
            sptes_zapped: mmu.as_ref().map(|s| s.zapped),
            zap_all_fast: mmu.as_ref().map(|s| s.zap_all_fast),
            tlb_flushes: mmu.as_ref().map(|s| s.remote_tlb_flushes),
            vcpu_tlb_flushes: vcpu.tlb_flushes,
            exits_memory_fault: count(&stats.memory_fault_exits),
            exits_mmio: count(&shared.exits_mmio),
            exits_hwpoison: count(&shared.exits_hwpoison),
            exits_unresolved: count(&shared.exits_unresolved),
            conversions_to_private: count(&stats.to_private),
            conversions_to_shared: count(&stats.to_shared),
            punches: count(&stats.punches),
            memslot_changes: count(&stats.memslot_changes),
            memory_failures: count(&stats.memory_failures),
            gmem_closes: count(&stats.gmem_closes),
            snp: SnpFigures::collect(config, vmm, shared, guest_conversions),
            tdx: TdxFigures::collect(config, vmm, shared),
            invariant_checks,
            invariant_violations: violations.len() as u64,
            warnings: warnings.len() as u64,
            integrity_errors,
            vmm_errors,
            ok,
            failures,
            reproduce: config.reproduce_command(),
            diagnosis,
        }
    }

    /// One JSON object with every figure, on one line.
    pub fn to_json(&self) -> String {
        let mut out = Vec::new();
        let mut serializer = serde_json::Serializer::with_formatter(&mut out, ThreeDecimals);
        self.serialize(&mut serializer).expect("a summary serialises");
        String::from_utf8(out).expect("serde_json writes UTF-8")
    }

    /// The table's rows: every figure's key and its value as printed, in order.
    pub fn rows(&self) -> Vec<(String, String)> {
        let serde_json::Value::Object(figures) = serde_json::to_value(self).expect("a summary serialises") else {
            unreachable!("a summary serialises to an object")
        };
        figures
            .into_iter()
            .map(|(key, value)| {
                let shown = match value {
                    serde_json::Value::String(text) => text,
                    serde_json::Value::Number(number) if number.is_f64() => {
                        format!("{:.3}", number.as_f64().expect("an f64"))
                    }
                    other => other.to_string(),
                };
                (key, shown)
            })
            .collect()
    }

    /// The table: one `key  value` line per figure, the values aligned.
    pub fn table(&self) -> String {
        let rows = self.rows();
        let width = rows.iter().map(|(key, _)| key.len()).max().unwrap_or(0);
        rows.iter().map(|(key, value)| format!("{key:<width$}  {value}\n")).collect()
    }
}

impl SnpFigures {
    fn collect(config: &Config, vmm: &Vmm, shared: &Shared<'_>, guest_conversions: u64) -> SnpFigures {
        let launched_pages = config.guest_converts().then(|| count(&vmm.stats.launched_pages));
        let guest_conversions = config.guest_converts().then_some(guest_conversions);
        if !config.is_snp() {
            return SnpFigures { guest_conversions, launched_pages, ..SnpFigures::default() };
        }
        let snp = &shared.snp;
        let snp_host = vmm.host().snp_host();
        SnpFigures {
            guest_conversions,
            psc_requests: Some(count(&snp.psc_requests)),
            psc_exits: Some(count(&vmm.stats.map_gpa_range_exits)),
            psc_errors: Some(count(&snp.psc_errors)),
            psc_incomplete: Some(count(&snp.psc_incomplete)),
            conversions_aborted: Some(count(&snp.conversions_aborted)),
            vc_exceptions: Some(count(&snp.vc_exceptions)),
            pvalidates: Some(count(&snp.pvalidates)),
            launched_pages,
            rmp_assigned_at_end: snp_host.map(|host| host.rmp().assigned_count()),
            rmp_leaked_pages: snp_host.map(|host| host.nr_leaked_pages()),
        }
    }
}

impl TdxFigures {
    fn collect(config: &Config, vmm: &Vmm, shared: &Shared<'_>) -> TdxFigures {
        if !config.is_tdx() {
            return TdxFigures::default();
        }
        let kvm = vmm.host().vm(vmm.vm_fd()).ok();
        let td = kvm.as_deref().and_then(TdxVm::of);
        let td_stat = |counter: fn(&TdxStats) -> &AtomicU64| td.map(|vm| count(counter(&vm.stats)));
        let tdx = &shared.tdx;
        TdxFigures {
            tdx_accepts: Some(count(&tdx.accepts)),
            tdx_accept_busy: Some(count(&tdx.accept_busy)),
            map_gpa_requests: td_stat(|s| &s.map_gpa_requests),
            map_gpa_exits: Some(count(&vmm.stats.map_gpa_range_exits)),
            map_gpa_retries: td_stat(|s| &s.map_gpa_retries),
            map_gpa_errors: Some(count(&tdx.map_gpa_errors)),
            tdx_conversions_incomplete: Some(count(&tdx.conversions_incomplete)),
            ve_exceptions: Some(count(&tdx.ve_exceptions)),
            tdx_events_posted: Some(count(&tdx.events_posted)),
            vp_enters: td_stat(|s| &s.vp_enters),
            entries_deferred: td_stat(|s| &s.entries_deferred),
            ept_violations: td_stat(|s| &s.ept_violations),
            ept_local_retries: td_stat(|s| &s.local_retries),
            aug_busy: td_stat(|s| &s.aug_busy),
            block_busy: td_stat(|s| &s.block_busy),
            track_busy: td_stat(|s| &s.track_busy),
            remove_busy: td_stat(|s| &s.remove_busy),
            tdx_leaked_pages: td.map(|vm| vm.leaked_pages().len() as u64),
            pamt_pages_owned_at_end: td.map(|vm| vm.module().td_owned_frames() as u64),
        }
    }
}

fn count(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// A figure the VM type has, as a number; one it does not have, as the string `n/a`.
fn count_or_not_applicable<S: Serializer>(value: &Option<u64>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(count) => serializer.serialize_u64(*count),
        None => serializer.serialize_str("n/a"),
    }
}

/// The seed as `0x...`, as `--seed` and the replay command write it.
fn hexadecimal<S: Serializer>(value: &u64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&format_args!("{value:#x}"))
}

/// A value as its `Display` writes it (the mix as `--mix` takes it).
fn displayed<S: Serializer, T: std::fmt::Display>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

/// serde_json's compact output, with fractional numbers written with three decimals (as the
/// table writes them) instead of their shortest round-trip form.
struct ThreeDecimals;

impl serde_json::ser::Formatter for ThreeDecimals {
    fn write_f64<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        write!(writer, "{value:.3}")
    }
}
