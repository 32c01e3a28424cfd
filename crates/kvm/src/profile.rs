//! Kernel profiles: a kernel version's features, a set of named upstream fixes, and a kernel
//! configuration.
//!
//! A profile is data, not a fork of the code: every place where the modelled kernels differ asks
//! the profile (`kvm.profile().version`, `has_fix(Fix::F1...)`, `config.memory_attributes`). Each
//! fix of `../shared/reference/upstream-fixes.md` that the model covers is a toggle, so a
//! historic bug can be switched back on (`v6.14` plus F1 is a valid profile) and a detector shown
//! to catch it.

use gmem_mm::VfsVersion;
use std::fmt;

/// The guest_memfd / KVM generation being modelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KernelVersion {
    /// The seed: v6.14-era guest_memfd.c (flags must be 0, no mmap).
    V6_14,
    /// Linux 6.18.44 as measured (MMAP and INIT_SHARED, `KVM_CAP_GUEST_MEMFD_FLAGS`, mmap).
    V6_18,
}

/// A named upstream fix (upstream-fixes.md) that a profile includes or lacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fix {
    /// F1 "KVM: guest_memfd: Remove bindings on memslot deletion when gmem is dying"
    /// (ae431059e75d): unbind clears the bindings even when the file is already dead.
    F1DyingGmemUnbind,
    /// F2 "KVM: Disallow toggling KVM_MEM_GUEST_MEMFD on an existing memslot" (9935df5333aa):
    /// a modify that changes GUEST_MEMFD is EINVAL.
    F2NoGuestMemfdToggle,
    /// F6 "KVM: guest_memfd: delay kvm_gmem_prepare_folio() until the memory is passed to the
    /// guest" (v6.11): without it, fallocate prepares the folios it allocates (for SNP: makes
    /// them RMP-private), so a later SNP_LAUNCH_UPDATE of them fails.
    F6LazyPrepare,
    /// F7 "KVM: x86: disallow pre-fault for SNP VMs before initialization" (5932ca411e53,
    /// v6.11): `KVM_PRE_FAULT_MEMORY` is EOPNOTSUPP until `kvm->arch.pre_fault_allowed`; without
    /// it a pre-fault racing SNP_LAUNCH_UPDATE makes the host write a private page.
    F7PreFaultGate,
    /// F8 "KVM: SVM: Fix a missing kunmap_local() in sev_gmem_post_populate()" (v7.0): the
    /// copy-failure path of SNP's post_populate unmaps what it mapped.
    F8PostPopulateKunmap,
    /// F11 "KVM: SEV: Forcefully invalidate SNP VMSA if its backing gmem page is zapped"
    /// (linux-next, 2026): a guest_memfd invalidation makes a vCPU whose VMSA is in the range drop
    /// it before the folio is freed.
    F11InvalidateGuestVmsa,
    /// F13 "KVM: x86/mmu: Return -EAGAIN if userspace deletes/moves memslot during prefault"
    /// (3ccbf6f47098, v6.18): a pre-fault (`fault->prefetch`) that meets a memslot being
    /// deleted or moved (`KVM_MEMSLOT_INVALID`) fails with EAGAIN. Without it the fault returns
    /// `RET_PF_RETRY` and `kvm_tdp_map_page` loops inside the `kvm->srcu` read section that the
    /// memslot update's `synchronize_srcu` waits for: neither can go on (the model bounds the
    /// loop, with a WARN and EINTR).
    F13PrefaultInvalidSlot,
    /// F15 "KVM: TDX: ADD pages to the TD image while populating mirror EPT entries"
    /// (6b5b71ffabf9, v6.19): `TDH.MEM.PAGE.ADD` runs inside the S-EPT set hook under
    /// `mmu_lock`, with the source page passed through `kvm_tdx->page_add_src`, so the mirror
    /// EPT and the S-EPT always agree; no `nr_premapped`. Off in v6.18, whose populate premaps
    /// the mirror leaf and ADDs afterwards.
    F15TdxAddWhileMapping,
    /// F16 "KVM: TDX: Guard VM state transitions with "all" the locks" (15945e9ec195, v6.19):
    /// `KVM_TDX_INIT_VM`, `KVM_TDX_FINALIZE_VM`, `KVM_TDX_INIT_VCPU` and
    /// `KVM_TDX_INIT_MEM_REGION` run under `kvm->lock`, every `vcpu->mutex` and `slots_lock`
    /// (the vCPU ones on the unlocked vCPU-ioctl path). Off in v6.18, where INIT_VCPU on one vCPU
    /// and INIT_MEM_REGION on another contend in the TDX module (`TDX_OPERAND_BUSY` →
    /// `KVM_BUG_ON`).
    F16TdxStateLocks,
    /// F17 "KVM: x86/mmu: Update iter->old_spte if cmpxchg64 on mirror SPTE "fails"" (Sean
    /// Christopherson, posted 2026-01-28 as patch 2 of "[RFC PATCH v5 00/45] TDX: Dynamic PAMT +
    /// S-EPT Hugepage", on kvm-x86-next-2026.01.23; Fixes 77ac7079e66d "KVM: x86/tdp_mmu:
    /// Propagate building mirror page tables"). Not in upstream-fixes.md's list, and not in
    /// v6.18: that posting's pre-image still has `set_external_spte_present(..., u64 old_spte,
    /// ...)`. With it `__tdp_mmu_set_spte_atomic` passes `&iter->old_spte`, so a failed freeze
    /// cmpxchg of a mirror SPTE refreshes the iterator's value as the direct-root cmpxchg always
    /// did; without it the refresh lands in `set_external_spte_present`'s copy and the caller
    /// keeps a stale `old_spte`. Benign upstream, and in the model: no caller retries a mirror
    /// SPTE locally from `iter->old_spte` (TDX excludes dirty logging, whose
    /// `clear_dirty_gfn_range` / `wrprot_gfn_range` do, and the model has neither); the fault
    /// path returns `RET_PF_RETRY` and walks again. The toggle is observable through the
    /// test-only local-retry install (`TdpMmu::map_mirror_leaf_local_retry_for_test`), whose
    /// check of the iterator is the detector.
    F17MirrorOldSpteRefresh,
}

impl Fix {
    /// Every fix the model knows.
    pub const ALL: [Fix; 10] = [
        Fix::F1DyingGmemUnbind,
        Fix::F2NoGuestMemfdToggle,
        Fix::F6LazyPrepare,
        Fix::F7PreFaultGate,
        Fix::F8PostPopulateKunmap,
        Fix::F11InvalidateGuestVmsa,
        Fix::F13PrefaultInvalidSlot,
        Fix::F15TdxAddWhileMapping,
        Fix::F16TdxStateLocks,
        Fix::F17MirrorOldSpteRefresh,
    ];

    /// The short name used on the command line and in reports (`F1`, `F2`, ...).
    pub fn short_name(self) -> &'static str {
        match self {
            Fix::F1DyingGmemUnbind => "F1",
            Fix::F2NoGuestMemfdToggle => "F2",
            Fix::F6LazyPrepare => "F6",
            Fix::F7PreFaultGate => "F7",
            Fix::F8PostPopulateKunmap => "F8",
            Fix::F11InvalidateGuestVmsa => "F11",
            Fix::F13PrefaultInvalidSlot => "F13",
            Fix::F15TdxAddWhileMapping => "F15",
            Fix::F16TdxStateLocks => "F16",
            Fix::F17MirrorOldSpteRefresh => "F17",
        }
    }

    /// Looks a fix up by its short name.
    pub fn from_short_name(name: &str) -> Option<Fix> {
        Fix::ALL.into_iter().find(|fix| fix.short_name().eq_ignore_ascii_case(name))
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// A set of fixes.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct FixSet(u32);

impl FixSet {
    /// No fixes.
    pub const NONE: FixSet = FixSet(0);

    /// Whether `fix` is in the set.
    pub fn contains(self, fix: Fix) -> bool {
        self.0 & fix.bit() != 0
    }

    /// The set with `fix` added or removed.
    pub fn with(self, fix: Fix, on: bool) -> FixSet {
        if on {
            FixSet(self.0 | fix.bit())
        } else {
            FixSet(self.0 & !fix.bit())
        }
    }
}

impl fmt::Debug for FixSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(Fix::ALL.iter().filter(|fix| self.contains(**fix)).map(|fix| fix.short_name())).finish()
    }
}

/// The x86 VM types (`KVM_X86_*_VM`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u64)]
pub enum VmType {
    /// `KVM_X86_DEFAULT_VM`.
    Default = 0,
    /// `KVM_X86_SW_PROTECTED_VM`: private memory without hardware protection.
    SwProtected = 1,
    /// `KVM_X86_SEV_VM`.
    Sev = 2,
    /// `KVM_X86_SEV_ES_VM`.
    SevEs = 3,
    /// `KVM_X86_SNP_VM`.
    SevSnp = 4,
    /// `KVM_X86_TDX_VM`.
    Tdx = 5,
}

impl VmType {
    /// Every type, in `KVM_X86_*_VM` order.
    pub const ALL: [VmType; 6] =
        [VmType::Default, VmType::SwProtected, VmType::Sev, VmType::SevEs, VmType::SevSnp, VmType::Tdx];

    /// The type for a raw `KVM_CREATE_VM` argument.
    pub fn from_raw(raw: u64) -> Option<VmType> {
        Some(match raw {
            0 => VmType::Default,
            1 => VmType::SwProtected,
            2 => VmType::Sev,
            3 => VmType::SevEs,
            4 => VmType::SevSnp,
            5 => VmType::Tdx,
            _ => return None,
        })
    }

    /// `kvm_arch_has_private_mem`: whether VMs of this type have private (guest_memfd) memory.
    pub fn has_private_mem(self) -> bool {
        matches!(self, VmType::SwProtected | VmType::SevSnp | VmType::Tdx)
    }

    /// The name scripts use.
    pub fn name(self) -> &'static str {
        match self {
            VmType::Default => "DEFAULT",
            VmType::SwProtected => "SW_PROTECTED",
            VmType::Sev => "SEV",
            VmType::SevEs => "SEV_ES",
            VmType::SevSnp => "SEV_SNP",
            VmType::Tdx => "TDX",
        }
    }
}

/// What the kernel was built with (the parts that change guest_memfd's world).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelConfig {
    /// `kvm_caps.supported_vm_types`, as a bit per [`VmType`].
    pub vm_types: u32,
    /// `CONFIG_KVM_GENERIC_MEMORY_ATTRIBUTES`: KVM_SET_MEMORY_ATTRIBUTES exists (else ENOTTY).
    pub memory_attributes: bool,
    /// `CONFIG_MEMORY_FAILURE`.
    pub memory_failure: bool,
    /// `tdp_enabled`: KVM_PRE_FAULT_MEMORY works (`KVM_CAP_PRE_FAULT_MEMORY` = 1).
    pub pre_fault: bool,
    /// The bits of `kvm_mmu_max_gfn`: the host MAXPHYADDR with TDP, a fixed 52 without (shadow
    /// paging). Memslots ending above them are EINVAL. The TDP profiles assume a 52-bit host.
    pub max_phys_bits: u32,
    /// `KVM_MAX_VCPUS` (`CONFIG_KVM_MAX_NR_VCPUS`: 4096 with `MAXSMP`, else 1024), which
    /// `KVM_CAP_MAX_VCPUS` reports; vCPU ids are below `KVM_MAX_VCPU_IDS`, four times as many.
    pub max_vcpus: u32,
}

/// A kernel profile.
#[derive(Clone, PartialEq, Eq)]
pub struct KernelProfile {
    /// The name (`v6.14`, `v6.18`, `v6.18-pvm`, or a derived name such as `v6.14+F1`).
    pub name: String,
    /// The version whose features apply.
    pub version: KernelVersion,
    /// The fixes applied.
    pub fixes: FixSet,
    /// The configuration.
    pub config: KernelConfig,
}

impl fmt::Debug for KernelProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KernelProfile")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("fixes", &self.fixes)
            .field("config", &self.config)
            .finish()
    }
}

const fn types(list: &[VmType]) -> u32 {
    let mut bits = 0;
    let mut i = 0;
    while i < list.len() {
        bits |= 1 << (list[i] as u32);
        i += 1;
    }
    bits
}

impl KernelProfile {
    /// The names of the built-in profiles, default first.
    pub const NAMES: [&'static str; 3] = ["v6.18", "v6.14", "v6.18-pvm"];

    /// `v6.14`: the seed, x86-64 with SW_PROTECTED, SEV, SEV-ES and SEV-SNP VMs, generic memory
    /// attributes and memory failure; without F1 and F2, so the seed's two bugs reproduce, and
    /// with the SNP fixes of v6.11 (F6, F7) but not the later ones (F8, F11, F13, F17). No TDX: KVM's
    /// TDX support was merged in v6.16.
    pub fn v6_14() -> KernelProfile {
        KernelProfile {
            name: "v6.14".into(),
            version: KernelVersion::V6_14,
            fixes: FixSet::NONE.with(Fix::F6LazyPrepare, true).with(Fix::F7PreFaultGate, true),
            config: KernelConfig {
                vm_types: types(&[VmType::Default, VmType::SwProtected, VmType::Sev, VmType::SevEs, VmType::SevSnp]),
                memory_attributes: true,
                memory_failure: true,
                pre_fault: true,
                max_phys_bits: 52,
                max_vcpus: crate::vcpu::KVM_MAX_VCPUS,
            },
        }
    }

    /// `v6.18`: Linux 6.18.44 with the full x86 configuration, F1, F2, F6, F7 and F13 applied (the
    /// default), and TDX VMs besides the v6.14 types (which of them a host offers is its vendor
    /// module's choice: an AMD host has no TDX, an Intel host no SEV). Without the TDX fixes of
    /// v6.19 (F15, F16) and the later mirror-root one (F17).
    pub fn v6_18() -> KernelProfile {
        let mut config = KernelProfile::v6_14().config;
        config.vm_types |= types(&[VmType::Tdx]);
        KernelProfile {
            name: "v6.18".into(),
            version: KernelVersion::V6_18,
            fixes: KernelProfile::v6_14()
                .fixes
                .with(Fix::F1DyingGmemUnbind, true)
                .with(Fix::F2NoGuestMemfdToggle, true)
                .with(Fix::F13PrefaultInvalidSlot, true),
            config,
        }
    }

    /// `v6.18-pvm`: the same kernel as configured on this project's machines (kvm_pvm): DEFAULT
    /// VMs only, no memory-attributes ioctl, no memory failure, no pre-fault (shadow paging),
    /// `KVM_MAX_VCPUS` 1024 (no `MAXSMP`),
    /// so `kvm_mmu_max_gfn` uses its fixed 52 bits (measured: a slot at `(1 << 52) - 4096` is
    /// accepted, one at `1 << 52` is EINVAL). The profile that must agree with `/dev/kvm` here.
    pub fn v6_18_pvm() -> KernelProfile {
        KernelProfile {
            name: "v6.18-pvm".into(),
            config: KernelConfig {
                vm_types: types(&[VmType::Default]),
                memory_attributes: false,
                memory_failure: false,
                pre_fault: false,
                max_phys_bits: 52,
                // Measured: KVM_CAP_MAX_VCPUS 1024, KVM_CAP_MAX_VCPU_ID 4096, id 4096 EINVAL.
                max_vcpus: 1024,
            },
            ..KernelProfile::v6_18()
        }
    }

    /// A built-in profile by name, optionally followed by fix toggles: `v6.14+F1`,
    /// `v6.18-F2`.
    pub fn by_name(spec: &str) -> Result<KernelProfile, String> {
        let base_end = spec.find(['+', '-']).filter(|&i| !spec[..i].is_empty() && spec[i..] != *"-pvm");
        let (base, toggles) = match spec.strip_prefix("v6.18-pvm") {
            Some(rest) => ("v6.18-pvm", rest),
            None => match base_end {
                Some(i) => spec.split_at(i),
                None => (spec, ""),
            },
        };
        let mut profile = match base {
            "v6.14" => KernelProfile::v6_14(),
            "v6.18" => KernelProfile::v6_18(),
            "v6.18-pvm" => KernelProfile::v6_18_pvm(),
            other => {
                return Err(format!("unknown kernel profile `{other}` (known: {})", KernelProfile::NAMES.join(", ")))
            }
        };
        let mut rest = toggles;
        while let Some(sign) = rest.chars().next() {
            let body = &rest[1..];
            let len = body.find(['+', '-']).unwrap_or(body.len());
            let name = &body[..len];
            let fix = Fix::from_short_name(name).ok_or_else(|| {
                let known: Vec<_> = Fix::ALL.iter().map(|fix| fix.short_name()).collect();
                format!("unknown fix `{name}` in profile `{spec}` (known: {})", known.join(", "))
            })?;
            profile.fixes = profile.fixes.with(fix, sign == '+');
            rest = &body[len..];
        }
        profile.name = spec.to_string();
        Ok(profile)
    }

    /// Whether the profile includes `fix`.
    pub fn has_fix(&self, fix: Fix) -> bool {
        self.fixes.contains(fix)
    }

    /// Test-only: the profile with `vm_type` added to `kvm_caps.supported_vm_types`, for a test
    /// that brings a back-end of its own for a VM type the profile does not list (TDX on
    /// `v6.14`, or a recording TDX back-end on a host without the TDX module). The name is
    /// unchanged; the vendor module must support the type too.
    #[doc(hidden)]
    pub fn with_vm_type_for_test(mut self, vm_type: VmType) -> KernelProfile {
        self.config.vm_types |= 1 << vm_type as u32;
        self
    }

    /// Whether VMs of `vm_type` can be created.
    pub fn supports_vm_type(&self, vm_type: VmType) -> bool {
        self.config.vm_types & (1 << vm_type as u32) != 0
    }

    /// The generic VFS behaviour of this kernel.
    pub fn vfs_version(&self) -> VfsVersion {
        match self.version {
            KernelVersion::V6_14 => VfsVersion::V6_14,
            KernelVersion::V6_18 => VfsVersion::V6_18,
        }
    }

    /// The machine configuration this profile boots with.
    pub fn machine_config(&self) -> gmem_mm::MachineConfig {
        gmem_mm::MachineConfig {
            vfs: self.vfs_version(),
            memory_failure: self.config.memory_failure,
            ..gmem_mm::MachineConfig::default()
        }
    }
}

impl Default for KernelProfile {
    fn default() -> Self {
        KernelProfile::v6_18()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_parse_with_fix_toggles() {
        let seed_f1 = KernelProfile::by_name("v6.14+F1").unwrap();
        assert_eq!(seed_f1.version, KernelVersion::V6_14);
        assert!(seed_f1.has_fix(Fix::F1DyingGmemUnbind));
        assert!(!seed_f1.has_fix(Fix::F2NoGuestMemfdToggle));
        let pvm = KernelProfile::by_name("v6.18-pvm").unwrap();
        assert!(!pvm.config.memory_attributes);
        assert!(pvm.has_fix(Fix::F2NoGuestMemfdToggle));
        let no_f2 = KernelProfile::by_name("v6.18-pvm-F2").unwrap();
        assert!(!no_f2.has_fix(Fix::F2NoGuestMemfdToggle));
        let no_f17 = KernelProfile::by_name("v6.18-F17").unwrap();
        assert!(!no_f17.has_fix(Fix::F17MirrorOldSpteRefresh) && no_f17.has_fix(Fix::F2NoGuestMemfdToggle));
        assert!(KernelProfile::by_name("v6.18+F17").unwrap().has_fix(Fix::F17MirrorOldSpteRefresh));
        assert!(!KernelProfile::v6_18().has_fix(Fix::F17MirrorOldSpteRefresh), "posted after v6.18");
        assert!(KernelProfile::by_name("v5.0").is_err());
        assert!(KernelProfile::by_name("v6.14+F9").is_err());
        assert!(KernelProfile::by_name("").is_err());
        let tdx_fixed = KernelProfile::by_name("v6.18+F15+F16").unwrap();
        assert!(tdx_fixed.has_fix(Fix::F15TdxAddWhileMapping) && tdx_fixed.has_fix(Fix::F16TdxStateLocks));
        assert!(!KernelProfile::v6_18().has_fix(Fix::F15TdxAddWhileMapping));
        assert!(!KernelProfile::v6_18().has_fix(Fix::F16TdxStateLocks));
        assert!(KernelProfile::v6_18().supports_vm_type(VmType::Tdx));
        assert!(!KernelProfile::v6_14().supports_vm_type(VmType::Tdx));
        assert!(!KernelProfile::v6_18_pvm().supports_vm_type(VmType::Tdx));
    }
}
