//! A run's configuration: what `gmem-sim run`'s flags set ([`Config`], the operation weights
//! [`Mix`], the run's [`Length`], a deliberate [`Breakage`]), their parsers, and the checks
//! that refuse a configuration the chosen kernel profile cannot run, before anything starts.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use gmem_kvm::KernelProfile;
use gmem_kvm::VmType;
use gmem_mm::PAGE_SIZE;
use gmem_uapi::vmm::{KVM_X86_DEFAULT_VM, KVM_X86_SNP_VM, KVM_X86_SW_PROTECTED_VM, KVM_X86_TDX_VM};

/// The default operation count (a few seconds on a 2-vCPU machine, release build).
pub const DEFAULT_OPS: u64 = 1_000_000;
/// The default mix for VMs with private memory.
pub const DEFAULT_MIX: &str = "access=80,convert=5,punch=5,memslot=3,memfail=1,close=1";
/// The default mix for DEFAULT VMs (no private memory: only accesses and memslot changes).
pub const DEFAULT_MIX_NO_PRIVATE: &str = "access=95,memslot=5";
/// Regions (memslots) guest memory is split into.
pub const REGIONS: u32 = 4;

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

    pub(super) fn weights(&self) -> [u32; 6] {
        [self.access, self.convert, self.punch, self.memslot, self.memfail, self.close]
    }

    pub(super) fn control_total(&self) -> u64 {
        self.weights()[1..].iter().map(|&w| u64::from(w)).sum()
    }

    pub(super) fn total(&self) -> u64 {
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
    /// The watchdog's bound on time without progress (see [the module docs](super#the-watchdog)).
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
pub(super) const UNWIND_GRACE: Duration = Duration::from_secs(2);

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

    pub(super) fn pages(&self) -> u64 {
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
    pub(super) fn vcpu_weight(&self) -> u64 {
        u64::from(self.mix.access) + if self.guest_converts() { u64::from(self.mix.convert) } else { 0 }
    }

    /// The mix the control thread draws from (without conversions for SEV-SNP and TDX guests).
    pub(super) fn control_mix(&self) -> Mix {
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
