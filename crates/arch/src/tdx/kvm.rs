//! KVM's TDX code (`arch/x86/kvm/vmx/tdx.c`, Linux 6.18.44), function by function: the
//! `KVM_MEMORY_ENCRYPT_OP` commands of a TD launch (VM and vCPU scope), the four S-EPT hooks the
//! TDP MMU's mirror root drives, and the TD's teardown, on top of the TDX module model
//! ([`crate::tdx::module::TdxModule`]).
//!
//! | kernel | here |
//! |---|---|
//! | `tdx_vm_ioctl` | [`TdxVm::tdx_vm_ioctl`] |
//! | `tdx_get_capabilities`, `init_kvm_tdx_caps`, `td_init_cpuid_entry2` | [`TdxVm::tdx_get_capabilities`], [`TdConf`] |
//! | `tdx_td_init`, `setup_tdparams`, `setup_tdparams_eptp_controls`, `setup_tdparams_cpuids` | [`TdxVm::tdx_td_init`], [`TdxVm::setup_tdparams`] |
//! | `__tdx_td_init`, `tdx_do_tdh_mng_key_config` | `TdxVm::__tdx_td_init` |
//! | `tdx_td_finalize` | [`TdxVm::tdx_td_finalize`] |
//! | `tdx_vcpu_ioctl` (v6.19: `tdx_vcpu_unlocked_ioctl`) | [`TdxVm::tdx_vcpu_ioctl`] |
//! | `tdx_vcpu_init`, `tdx_td_vcpu_init` | [`TdxVm::tdx_vcpu_init`] |
//! | `tdx_vcpu_init_mem_region`, `tdx_gmem_post_populate` | [`TdxVm::tdx_vcpu_init_mem_region`], [`TdxVm::tdx_gmem_post_populate`] |
//! | `tdx_sept_link_private_spt` | [`KvmArch::link_external_spt`] |
//! | `tdx_sept_set_private_spte`, `tdx_mem_page_aug`, `tdx_mem_page_record_premap_cnt` | [`TdxVm::tdx_sept_set_private_spte`] |
//! | `tdx_sept_remove_private_spte`, `tdx_sept_zap_private_spte`, `tdx_track`, `tdx_sept_drop_private_spte`, `tdx_is_sept_zap_err_due_to_premap` | [`TdxVm::tdx_sept_remove_private_spte`] and the functions it calls |
//! | `tdx_no_vcpus_enter_start` / `_stop` | [`TdxVm::tdx_no_vcpus_enter_start`], [`TdxVm::tdx_no_vcpus_enter_stop`] |
//! | `tdx_sept_free_private_spt`, `tdx_reclaim_page`, `tdx_clear_page` | [`KvmArch::free_external_spt`], [`TdxVm::tdx_reclaim_page`] |
//! | `tdx_mmu_release_hkid`, `tdx_flush_vp`, `smp_func_do_phymem_cache_wb` | [`TdxVm::tdx_mmu_release_hkid`] |
//! | `tdx_vm_destroy`, `tdx_reclaim_td_control_pages`, `tdx_vcpu_free` | [`KvmArch::vm_destroy`], [`KvmArch::vcpu_free`] |
//! | `tdx_vm_init`, `tdx_vcpu_create` | [`TdxVm::new`], [`KvmArch::vcpu_create`] |
//! | `tdx_vcpu_pre_run`, `tdx_vcpu_run` and the rest of the run path | [`crate::tdx::run`] |
//! | `tdx_gmem_private_max_mapping_level` | [`KvmArch::gmem_max_mapping_level`] |
//!
//! # The v6.18 populate scheme (`nr_premapped`)
//!
//! `KVM_TDX_INIT_MEM_REGION` populates one page at a time: `kvm_gmem_populate` hands
//! `tdx_gmem_post_populate` the guest_memfd page, which faults it into the mirror root through
//! the ordinary TDP fault path (`kvm_tdp_map_page`); the S-EPT set hook only counts the leaf
//! (`nr_premapped++`, the *premap*), and `TDH.MEM.PAGE.ADD` follows outside `mmu_lock`, then
//! `nr_premapped--`. Zapping a premapped leaf that was never ADDed meets an empty S-EPT leaf:
//! `TDH.MEM.RANGE.BLOCK` fails with `TDX_EPT_ENTRY_STATE_INCORRECT` on RCX, which the remove hook
//! recognises (`tdx_is_sept_zap_err_due_to_premap`) and turns into `nr_premapped--` and success.
//! `KVM_TDX_FINALIZE_VM` is refused (EINVAL) while `nr_premapped != 0`. Upstream fix F15 (v6.19)
//! replaces all of it: PAGE.ADD in the set hook, under `mmu_lock`.
//!
//! # Error policy
//!
//! As v6.18: `TDX_OPERAND_BUSY` from a mapping SEAMCALL is `-EBUSY` (the fault retries); any
//! other failure of an S-EPT SEAMCALL, of the vCPU SEAMCALLs, of KEY.CONFIG, MR.FINALIZE,
//! VPFLUSHDONE or KEY.FREEID is `KVM_BUG_ON` (the VM is dead: every later VM and vCPU ioctl is
//! EIO). A page whose release failed is leaked (its folio reference kept, never cleared, never
//! handed back), never given to the host half-released.
//!
//! # Locks
//!
//! The kernel's: `tdx_vm_ioctl` holds `kvm->lock`; a vCPU's `KVM_MEMORY_ENCRYPT_OP` holds its
//! `vcpu->mutex` (`kvm_vcpu_ioctl`); INIT_MEM_REGION and FINALIZE take `slots_lock`; `tdx_lock`
//! serialises the SEAMCALLs that take the module globally (MNG.CREATE, VPFLUSHDONE and
//! CACHE.WB). With upstream fix F16 the four state transitions hold `kvm->lock`, every
//! `vcpu->mutex` and `slots_lock` instead (v6.19's `tdx_vm_state_guard`).

use crate::tdx::module::{TdParams, TdxModule};
use crate::tdx::pamt::PageType;
use crate::tdx::sept::{SEPT_RWX, TDX_SHARED_BIT};
use crate::tdx::status::*;
use crate::uapi::{copy_struct_from_user, copy_struct_to_user, UapiStruct};
use gmem_kvm::arch::{
    Current, GuestAccess, GuestFault, GuestFaultExit, KvmArch, PgLevel, PopulateSource, SpteLevel, VcpuRunEntry,
    PFERR_GUEST_FINAL_MASK, PFERR_PRIVATE_ACCESS,
};
use gmem_kvm::guest_memfd::kvm_gmem_populate;
use gmem_kvm::invariants::Violation;
use gmem_kvm::profile::Fix;
use gmem_kvm::vcpu::{kvm_tdp_map_page, KvmVcpu, RunError, KVM_MAX_VCPUS};
use gmem_kvm::{Gfn, Kvm, VmType};
use gmem_mm::folio::Folio;
use gmem_mm::types::{PAGE_SHIFT, PAGE_SIZE};
use gmem_mm::vma::Mm;
use gmem_mm::{Errno, KResult, Pfn};
use gmem_sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering};
use gmem_sync::{Arc, LockClass, Mutex};
use kvm_bindings::kvm_cpuid_entry2;
use std::any::Any;
use std::fmt;

// ---------------------------------------------------------------------------------------------
// The uAPI (`arch/x86/include/uapi/asm/kvm.h`): kvm-bindings 0.14 has none of the TDX structures.

/// `KVM_TDX_CAPABILITIES`.
pub const KVM_TDX_CAPABILITIES: u32 = 0;
/// `KVM_TDX_INIT_VM`.
pub const KVM_TDX_INIT_VM: u32 = 1;
/// `KVM_TDX_INIT_VCPU`.
pub const KVM_TDX_INIT_VCPU: u32 = 2;
/// `KVM_TDX_INIT_MEM_REGION`.
pub const KVM_TDX_INIT_MEM_REGION: u32 = 3;
/// `KVM_TDX_FINALIZE_VM`.
pub const KVM_TDX_FINALIZE_VM: u32 = 4;
/// `KVM_TDX_GET_CPUID` (not modelled: answers EINVAL, as an unknown command does).
pub const KVM_TDX_GET_CPUID: u32 = 5;
/// `KVM_TDX_MEASURE_MEMORY_REGION`: INIT_MEM_REGION extends MRTD with the pages' contents.
pub const KVM_TDX_MEASURE_MEMORY_REGION: u32 = 1 << 0;
/// `KVM_MAX_CPUID_ENTRIES`.
pub const KVM_MAX_CPUID_ENTRIES: u32 = 256;
/// `KVM_CPUID_FLAG_SIGNIFCANT_INDEX`.
pub const KVM_CPUID_FLAG_SIGNIFCANT_INDEX: u32 = 1 << 0;
/// `TDX_TD_ATTR_DEBUG`.
pub const TDX_TD_ATTR_DEBUG: u64 = 1 << 0;
/// `TDX_TD_ATTR_SEPT_VE_DISABLE`: a guest access to a PENDING page is an EPT violation KVM
/// sees (and kills the TD for), not a #VE in the guest.
pub const TDX_TD_ATTR_SEPT_VE_DISABLE: u64 = 1 << 28;
/// `KVM_SUPPORTED_TD_ATTRS`.
pub const KVM_SUPPORTED_TD_ATTRS: u64 = TDX_TD_ATTR_SEPT_VE_DISABLE;
/// `TDX_SHARED_BIT_PWL_4`: the shared bit as a gfn bit with a 4-level EPT (GPAW 48: gpa bit 47).
pub const TDX_SHARED_BIT_PWL_4: u64 = TDX_SHARED_BIT >> PAGE_SHIFT;
/// `TDX_SHARED_BIT_PWL_5`: the same with a 5-level EPT (GPAW 52: gpa bit 51).
pub const TDX_SHARED_BIT_PWL_5: u64 = 1 << (51 - PAGE_SHIFT);
/// `TDX_EXTENDMR_CHUNKSIZE`.
pub const TDX_EXTENDMR_CHUNKSIZE: u64 = 256;
/// `TDVMCALLINFO_SETUP_EVENT_NOTIFY_INTERRUPT`.
pub const TDVMCALLINFO_SETUP_EVENT_NOTIFY_INTERRUPT: u64 = 1 << 1;
/// `TDX_SEAMCALL_RETRIES`: the bound of `smp_func_do_phymem_cache_wb`'s resume loop.
pub const TDX_SEAMCALL_RETRIES: u32 = 10000;
/// `KVM_TDX_CPUID_NO_SUBLEAF`.
pub const KVM_TDX_CPUID_NO_SUBLEAF: u32 = u32::MAX;

/// The header of `struct kvm_cpuid2` (`nent`, `padding`), followed in user memory by `nent`
/// `struct kvm_cpuid_entry2`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvmCpuid2Header {
    /// `nent`.
    pub nent: u32,
    /// `padding` (must be 0).
    pub padding: u32,
}

/// `struct kvm_tdx_cmd`.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct kvm_tdx_cmd {
    /// `enum kvm_tdx_cmd_id`: one of the `KVM_TDX_*` sub-commands.
    #[doc(alias = "kvm_tdx_cmd_id")]
    pub id: u32,
    /// Flags of the sub-command.
    pub flags: u32,
    /// An immediate or a user pointer to the sub-command's data.
    pub data: u64,
    /// The TDX SEAMCALL status the sub-command may leave (user space must pass 0).
    pub hw_error: u64,
}

/// `struct kvm_tdx_capabilities` (followed in user memory by `cpuid.nent` CPUID entries).
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct kvm_tdx_capabilities {
    /// `supported_attrs`.
    pub supported_attrs: u64,
    /// `supported_xfam`.
    pub supported_xfam: u64,
    /// `kernel_tdvmcallinfo_1_r11`.
    pub kernel_tdvmcallinfo_1_r11: u64,
    /// `user_tdvmcallinfo_1_r11`.
    pub user_tdvmcallinfo_1_r11: u64,
    /// `kernel_tdvmcallinfo_1_r12`.
    pub kernel_tdvmcallinfo_1_r12: u64,
    /// `user_tdvmcallinfo_1_r12`.
    pub user_tdvmcallinfo_1_r12: u64,
    /// `reserved[250]`.
    pub reserved: [u64; 250],
    /// `cpuid`: the configurable CPUID bits.
    pub cpuid: KvmCpuid2Header,
}

impl Default for kvm_tdx_capabilities {
    fn default() -> Self {
        kvm_tdx_capabilities {
            supported_attrs: 0,
            supported_xfam: 0,
            kernel_tdvmcallinfo_1_r11: 0,
            user_tdvmcallinfo_1_r11: 0,
            kernel_tdvmcallinfo_1_r12: 0,
            user_tdvmcallinfo_1_r12: 0,
            reserved: [0; 250],
            cpuid: KvmCpuid2Header::default(),
        }
    }
}

/// `struct kvm_tdx_init_vm` (followed in user memory by `cpuid.nent` CPUID entries).
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct kvm_tdx_init_vm {
    /// `attributes`.
    pub attributes: u64,
    /// `xfam`.
    pub xfam: u64,
    /// `mrconfigid` (SHA-384).
    pub mrconfigid: [u64; 6],
    /// `mrowner` (SHA-384).
    pub mrowner: [u64; 6],
    /// `mrownerconfig` (SHA-384).
    pub mrownerconfig: [u64; 6],
    /// `reserved[12]` (must be 0).
    pub reserved: [u64; 12],
    /// `cpuid`: the TD's CPUID configuration.
    pub cpuid: KvmCpuid2Header,
}

impl kvm_tdx_init_vm {
    /// The bytes a VMM hands `KVM_TDX_INIT_VM`: the structure with `cpuid.nent` set to the
    /// number of `cpuid` entries, followed by those entries (the flexible array of its
    /// `struct kvm_cpuid2`).
    pub fn with_cpuid(&self, cpuid: &[kvm_cpuid_entry2]) -> Vec<u8> {
        let mut init_vm = *self;
        init_vm.cpuid.nent = cpuid.len() as u32;
        let mut bytes = crate::uapi::as_bytes(&init_vm).to_vec();
        for entry in cpuid {
            bytes.extend_from_slice(crate::uapi::as_bytes(entry));
        }
        bytes
    }
}

/// `struct kvm_tdx_init_mem_region`.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct kvm_tdx_init_mem_region {
    /// `source_addr`: the user address of the initial contents.
    pub source_addr: u64,
    /// `gpa`: the private GPA of the first page.
    pub gpa: u64,
    /// `nr_pages`.
    pub nr_pages: u64,
}

// The uAPI layout (`BUILD_BUG_ON(sizeof(*init_vm) != 256 + sizeof_field(..., cpuid))`).
const _: () = {
    assert!(std::mem::size_of::<kvm_tdx_cmd>() == 24);
    assert!(std::mem::size_of::<kvm_tdx_capabilities>() == 6 * 8 + 250 * 8 + 8);
    assert!(std::mem::offset_of!(kvm_tdx_capabilities, cpuid) == 2048);
    assert!(std::mem::size_of::<kvm_tdx_init_vm>() == 256 + 8);
    assert!(std::mem::offset_of!(kvm_tdx_init_vm, cpuid) == 256);
    assert!(std::mem::size_of::<kvm_tdx_init_mem_region>() == 24);
    assert!(std::mem::size_of::<kvm_cpuid_entry2>() == 40);
};

// SAFETY: repr(C) integers only, no padding (the layout is asserted above).
unsafe impl UapiStruct for kvm_tdx_cmd {}
// SAFETY: repr(C) integers and integer arrays only, no padding.
unsafe impl UapiStruct for kvm_tdx_capabilities {}
// SAFETY: repr(C) integers and integer arrays only, no padding.
unsafe impl UapiStruct for kvm_tdx_init_vm {}
// SAFETY: repr(C) integers only, no padding.
unsafe impl UapiStruct for kvm_tdx_init_mem_region {}
// SAFETY: repr(C) integers and an integer array only (kvm-bindings), no padding.
unsafe impl UapiStruct for kvm_cpuid_entry2 {}

// ---------------------------------------------------------------------------------------------
// Host-wide state.

/// `tdx_lock`: serialises the SEAMCALLs that take the TDX module globally.
static TDX_LOCK: LockClass = LockClass::new("tdx_lock");
/// `kvm_tdx->td` (the control pages' bookkeeping; a leaf, never held across a SEAMCALL).
static KVM_TDX_PAGES_LOCK: LockClass = LockClass::new("kvm_tdx->td");
/// The model's record of the pages a TD leaked (a leaf).
static KVM_TDX_LEAKED_LOCK: LockClass = LockClass::new("kvm_tdx->leaked");
/// The model's record of the fatal SEAMCALL failures of the mapping and zap paths (a leaf).
static KVM_TDX_FATAL_LOCK: LockClass = LockClass::new("kvm_tdx->fatal_seamcalls");
/// The model's record of the pages a TD pinned (a leaf).
static KVM_TDX_PINS_LOCK: LockClass = LockClass::new("kvm_tdx->pins");
/// `tdx->vp` (a vCPU's control pages' bookkeeping; a leaf).
static VCPU_TDX_LOCK: LockClass = LockClass::new("vcpu_tdx->vp");
/// `tdx->map_gpa_*` and the pending completion of a vCPU's TDVMCALL (a leaf).
static VCPU_TDX_TDVMCALL_LOCK: LockClass = LockClass::new("vcpu_tdx->tdvmcall");
/// The model's record of T6 breaches (a leaf).
static KVM_TDX_T6_LOCK: LockClass = LockClass::new("kvm_tdx->t6_breaches");

/// The parts of `tdx_sysinfo->td_conf` KVM reads: what a TD may be configured with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TdConf {
    /// `attributes_fixed0`: attribute bits that may be 1.
    pub attributes_fixed0: u64,
    /// `attributes_fixed1`: attribute bits that must be 1.
    pub attributes_fixed1: u64,
    /// `xfam_fixed0`: XFAM bits that may be 1.
    pub xfam_fixed0: u64,
    /// `xfam_fixed1`: XFAM bits that must be 1.
    pub xfam_fixed1: u64,
    /// `cpuid_config_leaves[i]`: `function | index << 32` (`KVM_TDX_CPUID_NO_SUBLEAF` for a leaf
    /// without sub-leaves).
    pub cpuid_config_leaves: Vec<u64>,
    /// `cpuid_config_values[i]`: the configurable bits, `[ebx:eax, edx:ecx]`.
    pub cpuid_config_values: Vec<[u64; 2]>,
}

/// The model host's `kvm_caps.supported_xcr0` (x87, SSE, AVX, the AVX-512 state, PKRU).
pub const HOST_SUPPORTED_XCR0: u64 = 0x2e7;
/// The model host's `kvm_caps.supported_xss`.
pub const HOST_SUPPORTED_XSS: u64 = 0;
/// The model host's `num_present_cpus()` (`tdx_vm_init` caps `kvm->max_vcpus` with it).
pub const HOST_PRESENT_CPUS: u32 = 64;

impl Default for TdConf {
    /// The model platform: DEBUG, SEPT_VE_DISABLE and PKS configurable; x87 and SSE fixed on;
    /// five configurable CPUID leaves (1, 7.0, 0xd.0, 0xd.1, 0x80000008), leaf 7 reporting the
    /// TSX and WAITPKG bits KVM clears.
    fn default() -> Self {
        let leaf = |function: u32, index: u32| u64::from(function) | u64::from(index) << 32;
        TdConf {
            attributes_fixed0: TDX_TD_ATTR_DEBUG | TDX_TD_ATTR_SEPT_VE_DISABLE | 1 << 30,
            attributes_fixed1: 0,
            xfam_fixed0: 0x0006_1aff,
            xfam_fixed1: 0x3,
            cpuid_config_leaves: vec![
                leaf(0x1, KVM_TDX_CPUID_NO_SUBLEAF),
                leaf(0x7, 0),
                leaf(0xd, 0),
                leaf(0xd, 1),
                leaf(0x8000_0008, KVM_TDX_CPUID_NO_SUBLEAF),
            ],
            cpuid_config_values: vec![
                [0x00ff_0000_0000_0000, 0xffff_ffff_ffff_ffff],
                [0x0000_0800_0000_0810 << 4 | 0xffff_0000_0000_0000, 0x0000_0000_0040_0020],
                [0x0000_0000_0000_02e7, 0],
                [0x0000_0000_0000_000f, 0],
                [0x0000_0000_00ff_ffff, 0],
            ],
        }
    }
}

/// `tdx_get_supported_attrs(td_conf)`: 0 if a must-be-one attribute is not one KVM supports.
pub fn tdx_get_supported_attrs(td_conf: &TdConf) -> u64 {
    let val = KVM_SUPPORTED_TD_ATTRS;
    if val & td_conf.attributes_fixed1 != td_conf.attributes_fixed1 {
        return 0;
    }
    val & td_conf.attributes_fixed0
}

/// `tdx_get_supported_xfam(td_conf)`.
pub fn tdx_get_supported_xfam(td_conf: &TdConf) -> u64 {
    let val = HOST_SUPPORTED_XCR0 | HOST_SUPPORTED_XSS;
    if val & td_conf.xfam_fixed1 != td_conf.xfam_fixed1 {
        return 0;
    }
    val & td_conf.xfam_fixed0
}

/// `TDX_FEATURE_TSX`: HLE (CPUID.7.0:EBX\[4\]) and RTM (EBX\[11\]).
const TDX_FEATURE_TSX: u32 = 1 << 4 | 1 << 11;
/// `X86_FEATURE_WAITPKG`: CPUID.7.0:ECX\[5\].
const FEATURE_WAITPKG: u32 = 1 << 5;

/// `tdx_unsupported_cpuid`: TSX or WAITPKG asked for.
fn tdx_unsupported_cpuid(entry: &kvm_cpuid_entry2) -> bool {
    entry.function == 7 && entry.index == 0 && (entry.ebx & TDX_FEATURE_TSX != 0 || entry.ecx & FEATURE_WAITPKG != 0)
}

/// `tdx_set_guest_phys_addr_bits(eax, bits)`.
fn tdx_set_guest_phys_addr_bits(eax: u32, bits: u32) -> u32 {
    (eax & !0x00ff_0000) | (bits & 0xff) << 16
}

/// `td_init_cpuid_entry2(&entry, idx)`: configurable leaf `idx` as a CPUID entry (the GPAW bits
/// of 0x80000008 reported configurable; TSX and WAITPKG cleared).
pub fn td_init_cpuid_entry2(td_conf: &TdConf, idx: usize) -> kvm_cpuid_entry2 {
    let leaf = td_conf.cpuid_config_leaves[idx];
    let values = td_conf.cpuid_config_values[idx];
    let mut entry = kvm_cpuid_entry2 {
        function: leaf as u32,
        index: (leaf >> 32) as u32,
        eax: values[0] as u32,
        ebx: (values[0] >> 32) as u32,
        ecx: values[1] as u32,
        edx: (values[1] >> 32) as u32,
        ..Default::default()
    };
    if entry.index == KVM_TDX_CPUID_NO_SUBLEAF {
        entry.index = 0;
    }
    if entry.function == 0x8000_0008 {
        entry.eax = tdx_set_guest_phys_addr_bits(entry.eax, 0xff);
    }
    // tdx_clear_unsupported_cpuid.
    if entry.function == 7 && entry.index == 0 {
        entry.ebx &= !TDX_FEATURE_TSX;
        entry.ecx &= !FEATURE_WAITPKG;
    }
    entry
}

/// `kvm_find_cpuid_entry2(entries, nent, function, index)`: the first entry of `function` whose
/// index matches or is not significant.
fn kvm_find_cpuid_entry2(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> Option<&kvm_cpuid_entry2> {
    entries.iter().find(|entry| {
        entry.function == function && (entry.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0 || entry.index == index)
    })
}

/// KVM's TDX state of the host (the statics of `tdx.c`: `tdx_sysinfo`, `tdx_lock`,
/// `nr_configured_hkid`) and the TDX module it drives.
#[doc(alias("tdx_bringup", "tdx_lock"))]
pub struct TdxHost {
    module: Arc<TdxModule>,
    td_conf: TdConf,
    /// `tdx_lock`.
    tdx_lock: Mutex<()>,
    /// `nr_configured_hkid`.
    nr_configured_hkid: AtomicU32,
}

impl fmt::Debug for TdxHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TdxHost")
            .field("nr_configured_hkid", &self.nr_configured_hkid.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl TdxHost {
    /// `tdx_bringup` on a host whose TDX module is `module`, with the platform's TD
    /// configuration `td_conf`.
    pub fn new(module: Arc<TdxModule>, td_conf: TdConf) -> TdxHost {
        TdxHost { module, td_conf, tdx_lock: Mutex::new(&TDX_LOCK, ()), nr_configured_hkid: AtomicU32::new(0) }
    }

    /// The TDX module.
    pub fn module(&self) -> &Arc<TdxModule> {
        &self.module
    }

    /// `tdx_sysinfo->td_conf`.
    pub fn td_conf(&self) -> &TdConf {
        &self.td_conf
    }

    /// `nr_configured_hkid`: TDs holding a KeyID.
    pub fn nr_configured_hkid(&self) -> u32 {
        self.nr_configured_hkid.load(Ordering::Acquire)
    }
}

// ---------------------------------------------------------------------------------------------
// Per-VM and per-vCPU state.

/// `enum kvm_tdx_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
#[doc(alias = "kvm_tdx_state")]
pub enum TdState {
    /// `TD_STATE_UNINITIALIZED`: before `KVM_TDX_INIT_VM`.
    Uninitialized = 0,
    /// `TD_STATE_INITIALIZED`: building the image.
    Initialized = 1,
    /// `TD_STATE_RUNNABLE`: after `KVM_TDX_FINALIZE_VM`.
    Runnable = 2,
}

impl TdState {
    fn from_raw(raw: u8) -> TdState {
        match raw {
            1 => TdState::Initialized,
            2 => TdState::Runnable,
            _ => TdState::Uninitialized,
        }
    }
}

/// `kvm_tdx->td`: the TD's control pages as KVM holds them.
#[derive(Debug, Default)]
struct TdPages {
    /// `td.tdr_page`.
    tdr: Option<Pfn>,
    /// `td.tdcs_pages` (set once every page was allocated; an entry is `None` once freed).
    tdcs: Option<Vec<Option<Pfn>>>,
}

/// `struct vcpu_tdx`: a vCPU's TDX state.
#[doc(alias = "vcpu_tdx")]
pub struct TdxVcpu {
    /// `tdx->state == VCPU_TD_STATE_INITIALIZED`.
    initialized: AtomicBool,
    /// `tdx->vp.tdvpr_page` as a frame number (0: none), readable without the lock (the kick).
    tdvpr: AtomicU64,
    /// `tdx->vp.tdcx_pages`.
    tdcx: Mutex<Option<Vec<Option<Pfn>>>>,
    /// `tdx->map_gpa_next`, `tdx->map_gpa_end` and the TDVMCALL waiting for user space
    /// (`vcpu->arch.complete_userspace_io`).
    pub(crate) tdvmcall: Mutex<crate::tdx::run::TdvmcallState>,
}

impl fmt::Debug for TdxVcpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TdxVcpu")
            .field("initialized", &self.initialized.load(Ordering::Relaxed))
            .field("tdvpr", &self.tdvpr())
            .finish_non_exhaustive()
    }
}

impl TdxVcpu {
    /// `tdx->vp.tdvpr_page`.
    pub fn tdvpr(&self) -> Option<Pfn> {
        match self.tdvpr.load(Ordering::Acquire) {
            0 => None,
            pfn => Some(Pfn(pfn)),
        }
    }

    /// `tdx->state == VCPU_TD_STATE_INITIALIZED` (`KVM_TDX_INIT_VCPU` succeeded).
    pub fn initialized(&self) -> bool {
        self.initialized.load(Ordering::Acquire)
    }
}

/// `struct kvm_tdx`: one TD's KVM state and the `kvm_x86_ops` TDX hooks.
#[doc(alias = "kvm_tdx")]
pub struct TdxVm {
    host: Arc<TdxHost>,
    /// `kvm_tdx->state`.
    state: AtomicU8,
    /// `kvm_tdx->hkid` (-1: none; `is_hkid_assigned` is `hkid > 0`).
    hkid: AtomicI64,
    /// `td.tdr_page` as a frame number (0: none), readable without the lock (every SEAMCALL).
    tdr: AtomicU64,
    pages: Mutex<TdPages>,
    /// `kvm_tdx->attributes`.
    attributes: AtomicU64,
    /// `kvm_tdx->xfam`.
    xfam: AtomicU64,
    /// `kvm_tdx->nr_premapped`.
    nr_premapped: AtomicI64,
    /// `kvm_tdx->wait_for_sept_zap`.
    wait_for_sept_zap: AtomicBool,
    /// `kvm_tdx->page_add_src` (v6.19, upstream fix F15): the source page of the PAGE.ADD the
    /// set hook issues, as a frame number (0: none); written under `slots_lock`.
    page_add_src: AtomicU64,
    /// The `KVM_BUG_ON`s of this VM that left a page the host may not reuse (model only: what
    /// the invariants know was leaked on purpose).
    leaked: Mutex<Vec<Pfn>>,
    /// The SEAMCALL failures of the mapping and zap paths (AUG, SEPT.ADD, BLOCK other than the
    /// premap signature, TRACK, REMOVE, WBINVD with the HKID) that v6.18 answers with
    /// `KVM_BUG_ON`, for T11 (model only).
    fatal_seamcalls: Mutex<Vec<String>>,
    /// The pages pinned by `tdx_sept_set_private_spte` (v6.18's `get_page`), with the count of
    /// pins (model only: for INV-REFCOUNT, [`KvmArch::gmem_page_pins`]).
    pins: Mutex<std::collections::BTreeMap<u64, i32>>,
    /// What the TD's vCPUs and S-EPT hooks did (model only).
    pub stats: TdxStats,
    /// vCPUs found inside the TD after `tdx_no_vcpus_enter_start` kicked them all out (T6;
    /// model only: reported by the invariants).
    t6_breaches: Mutex<Vec<String>>,
    /// Test-only: `tdx_track` skips its kick ([`TdxVm::skip_track_kick_for_test`]).
    skip_track_kick: AtomicBool,
}

/// Counters of a TD's run path and S-EPT hooks (model only; `gmem-sim run` prints them).
#[derive(Debug, Default)]
pub struct TdxStats {
    /// `TDH.VP.ENTER` calls that entered the TD.
    pub vp_enters: AtomicU64,
    /// `TDH.VP.ENTER` calls that found a TD lock busy (`tdx_exit_handlers_fastpath`: no entry).
    pub vp_enter_busy: AtomicU64,
    /// Entries `tdx_vcpu_run` did not make because `wait_for_sept_zap` was set.
    pub entries_deferred: AtomicU64,
    /// Cached private translations the module flushed at `TDH.VP.ENTER` because the TD epoch
    /// moved (a `TDH.MEM.TRACK`) since the vCPU's previous entry.
    pub entry_tlb_flushes: AtomicU64,
    /// EPT violations handled (`tdx_handle_ept_violation`).
    pub ept_violations: AtomicU64,
    /// Of the private ones, the faults retried without re-entering the TD (local retries).
    pub local_retries: AtomicU64,
    /// Local retries ended because the gfn's memslot is being deleted or moved (upstream
    /// 2bc2694fe20b, in v6.18).
    pub local_retry_invalid_slot: AtomicU64,
    /// Local retries ended because the vCPU has an event to take.
    pub local_retry_events: AtomicU64,
    /// `TDH.MEM.PAGE.AUG` that found the S-EPT busy (the fault retries).
    pub aug_busy: AtomicU64,
    /// `TDH.MEM.SEPT.ADD` that found the S-EPT busy (the fault retries).
    pub sept_add_busy: AtomicU64,
    /// `TDH.MEM.RANGE.BLOCK` that found the S-EPT busy (retried with the vCPUs kept out).
    pub block_busy: AtomicU64,
    /// `TDH.MEM.TRACK` that found the epoch busy (retried with the vCPUs kept out).
    pub track_busy: AtomicU64,
    /// `TDH.MEM.PAGE.REMOVE` that found the S-EPT busy (retried with the vCPUs kept out).
    pub remove_busy: AtomicU64,
    /// `TDVMCALL<MapGPA>` requests the guest made.
    pub map_gpa_requests: AtomicU64,
    /// `KVM_EXIT_HYPERCALL` exits MapGPA produced (one per chunk of at most 2 MiB).
    pub map_gpa_exits: AtomicU64,
    /// MapGPA requests answered `TDVMCALL_STATUS_RETRY` (an event was pending between chunks).
    pub map_gpa_retries: AtomicU64,
}

impl TdxStats {
    /// Adds one to `counter`.
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl fmt::Debug for TdxVm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TdxVm")
            .field("state", &self.td_state())
            .field("hkid", &self.hkid.load(Ordering::Relaxed))
            .field("tdr", &self.tdr())
            .field("nr_premapped", &self.nr_premapped())
            .finish_non_exhaustive()
    }
}

/// `tdx_operand_busy(err)`.
fn tdx_operand_busy(status: TdxStatus) -> bool {
    status.class() == TDX_OPERAND_BUSY
}

/// `pg_level_to_tdx_sept_level(level)`.
fn tdx_sept_level(level: SpteLevel) -> u64 {
    level as u64 - 1
}

/// The TDX status of a SEAMCALL result (`TDX_SUCCESS` on success).
fn status_of<T>(result: &SeamcallResult<T>) -> TdxStatus {
    match result {
        Ok(_) => TdxStatus::SUCCESS,
        Err(error) => error.status,
    }
}

/// The `opaque` of `tdx_gmem_post_populate` (`struct tdx_gmem_post_populate_arg`).
#[derive(Debug)]
pub struct TdxGmemPostPopulateArg {
    /// `vcpu`.
    pub vcpu: Arc<KvmVcpu>,
    /// `flags` (`KVM_TDX_MEASURE_MEMORY_REGION`).
    pub flags: u32,
}

impl TdxVm {
    /// `tdx_vm_init`: a TD in `TD_STATE_UNINITIALIZED`, without a KeyID.
    #[doc(alias = "tdx_vm_init")]
    pub fn new(host: Arc<TdxHost>) -> TdxVm {
        TdxVm {
            host,
            state: AtomicU8::new(TdState::Uninitialized as u8),
            hkid: AtomicI64::new(-1),
            tdr: AtomicU64::new(0),
            pages: Mutex::new(&KVM_TDX_PAGES_LOCK, TdPages::default()),
            attributes: AtomicU64::new(0),
            xfam: AtomicU64::new(0),
            nr_premapped: AtomicI64::new(0),
            wait_for_sept_zap: AtomicBool::new(false),
            page_add_src: AtomicU64::new(0),
            leaked: Mutex::new(&KVM_TDX_LEAKED_LOCK, Vec::new()),
            fatal_seamcalls: Mutex::new(&KVM_TDX_FATAL_LOCK, Vec::new()),
            pins: Mutex::new(&KVM_TDX_PINS_LOCK, std::collections::BTreeMap::new()),
            stats: TdxStats::default(),
            t6_breaches: Mutex::new(&KVM_TDX_T6_LOCK, Vec::new()),
            skip_track_kick: AtomicBool::new(false),
        }
    }

    /// Test-only, not a kernel knob: with `skip`, `tdx_track` leaves out the kick that follows
    /// `TDH.MEM.TRACK` (`kvm_make_all_cpus_request(kvm, KVM_REQ_OUTSIDE_GUEST_MODE)`), so that
    /// the loom model `loom_tdx_track_vs_vcpu_entry` can show what the kick is for: without it
    /// a vCPU that entered the TD in the epoch of the block may still be inside, holding the
    /// translation, when `TDH.MEM.PAGE.REMOVE` runs.
    #[doc(hidden)]
    pub fn skip_track_kick_for_test(&self, skip: bool) {
        self.skip_track_kick.store(skip, Ordering::Relaxed);
    }

    /// The VM's back-end, if it is a TD.
    pub fn of(kvm: &Kvm) -> Option<&TdxVm> {
        kvm.arch().as_any().downcast_ref::<TdxVm>()
    }

    /// The TDX module.
    pub fn module(&self) -> &Arc<TdxModule> {
        &self.host.module
    }

    /// KVM's host-wide TDX state.
    pub fn host(&self) -> &Arc<TdxHost> {
        &self.host
    }

    /// `kvm_tdx->state`.
    pub fn td_state(&self) -> TdState {
        TdState::from_raw(self.state.load(Ordering::Acquire))
    }

    fn set_td_state(&self, state: TdState) {
        self.state.store(state as u8, Ordering::Release);
    }

    /// `kvm_tdx->hkid`, if assigned.
    pub fn hkid(&self) -> Option<u16> {
        let hkid = self.hkid.load(Ordering::Acquire);
        (hkid > 0).then_some(hkid as u16)
    }

    /// `is_hkid_assigned(kvm_tdx)`.
    pub fn is_hkid_assigned(&self) -> bool {
        self.hkid.load(Ordering::Acquire) > 0
    }

    /// The TD's TDR page (`kvm_tdx->td.tdr_page`), once `KVM_TDX_INIT_VM` allocated it.
    pub fn tdr(&self) -> Option<Pfn> {
        match self.tdr.load(Ordering::Acquire) {
            0 => None,
            pfn => Some(Pfn(pfn)),
        }
    }

    pub(crate) fn tdr_or_zero(&self) -> Pfn {
        Pfn(self.tdr.load(Ordering::Acquire))
    }

    /// `kvm_tdx->nr_premapped`.
    pub fn nr_premapped(&self) -> i64 {
        self.nr_premapped.load(Ordering::Acquire)
    }

    /// `kvm_tdx->wait_for_sept_zap`: while set, `tdx_vcpu_run` returns without `TDH.VP.ENTER`
    /// (the guest-side code must check [`TdxVm::may_enter`] before entering).
    pub fn wait_for_sept_zap(&self) -> bool {
        self.wait_for_sept_zap.load(Ordering::Acquire)
    }

    /// Whether `tdx_vcpu_run` may issue `TDH.VP.ENTER` now (not while a SEPT zap is being
    /// retried with the vCPUs kept out: T6).
    pub fn may_enter(&self) -> bool {
        !self.wait_for_sept_zap()
    }

    /// `kvm_tdx->attributes`.
    pub fn attributes(&self) -> u64 {
        self.attributes.load(Ordering::Acquire)
    }

    /// `kvm_tdx->xfam`.
    pub fn xfam(&self) -> u64 {
        self.xfam.load(Ordering::Acquire)
    }

    /// Frames this VM leaked on purpose after a failed release (never handed back to the host).
    pub fn leaked_pages(&self) -> Vec<Pfn> {
        self.leaked.lock().clone()
    }

    fn leak(&self, pfn: Pfn) {
        self.leaked.lock().push(pfn);
    }

    /// Notes a SEAMCALL failure of a mapping or zap path that the error policy of v6.18 makes
    /// fatal (T11 then checks that the VM is dead), and returns the message for `KVM_BUG_ON`.
    fn fatal_seamcall(&self, what: String) -> String {
        let mut log = self.fatal_seamcalls.lock();
        if log.len() < 16 {
            log.push(what.clone());
        }
        what
    }

    /// The fatal SEAMCALL failures of the mapping and zap paths so far (T11).
    pub fn fatal_seamcalls(&self) -> Vec<String> {
        self.fatal_seamcalls.lock().clone()
    }

    /// `get_page(pfn_to_page(pfn))` in the S-EPT hooks.
    #[doc(alias = "get_page")]
    fn tdx_pin(&self, kvm: &Kvm, pfn: Pfn) {
        Folio::from_pfn(&kvm.machine().mem, pfn).get();
        *self.pins.lock().entry(pfn.0).or_default() += 1;
    }

    /// `tdx_unpin(kvm, page)`: `put_page`.
    fn tdx_unpin(&self, kvm: &Kvm, pfn: Pfn) {
        {
            let mut pins = self.pins.lock();
            if let Some(count) = pins.get_mut(&pfn.0) {
                *count -= 1;
                if *count == 0 {
                    pins.remove(&pfn.0);
                }
            }
        }
        Folio::from_pfn(&kvm.machine().mem, pfn).put();
    }

    /// `tdx_clear_page`: MOVDIR64B zeroes of the frame (which also clears a poisoned line).
    fn tdx_clear_page(&self, pfn: Pfn) {
        self.module().host_clear_page(pfn);
    }

    fn alloc_page(&self) -> KResult<Pfn> {
        self.module().machine().mem.alloc(0).map_err(|_| Errno::ENOMEM)
    }

    fn free_page(&self, pfn: Pfn) {
        Folio::from_pfn(&self.module().machine().mem, pfn).put();
    }

    // -----------------------------------------------------------------------------------------
    // VM-scope KVM_MEMORY_ENCRYPT_OP.

    /// `tdx_vm_ioctl(kvm, argp)`: copy the command in, refuse a non-zero `hw_error`, run the
    /// command under `kvm->lock` (with upstream fix F16, INIT_VM and FINALIZE also hold every
    /// `vcpu->mutex` and `slots_lock`) and copy the command (its `hw_error`) back.
    pub fn tdx_vm_ioctl(&self, kvm: &Arc<Kvm>, current: Current<'_>, argp: u64) -> KResult<()> {
        let mut cmd: kvm_tdx_cmd = copy_struct_from_user(current, argp)?;
        // Userspace should never set hw_error. It is used to fill hardware-defined error by the
        // kernel.
        if cmd.hw_error != 0 {
            return Err(Errno::EINVAL);
        }
        let locks = kvm.profile().has_fix(Fix::F16TdxStateLocks);
        let _lock = kvm.lock.lock();
        let result = match cmd.id {
            KVM_TDX_CAPABILITIES => self.tdx_get_capabilities(current, &cmd),
            KVM_TDX_INIT_VM if locks => kvm.with_all_vcpus_locked(|| {
                let _slots = kvm.lock_slots();
                self.tdx_td_init(kvm, current, &mut cmd)
            }),
            KVM_TDX_INIT_VM => self.tdx_td_init(kvm, current, &mut cmd),
            KVM_TDX_FINALIZE_VM if locks => kvm.with_all_vcpus_locked(|| {
                let _slots = kvm.lock_slots();
                self.tdx_td_finalize(kvm, &mut cmd)
            }),
            KVM_TDX_FINALIZE_VM => {
                let _slots = kvm.lock_slots();
                self.tdx_td_finalize(kvm, &mut cmd)
            }
            _ => return Err(Errno::EINVAL),
        };
        copy_struct_to_user(current, argp, &cmd)?;
        result
    }

    /// `tdx_get_capabilities(cmd)` (`KVM_TDX_CAPABILITIES`): E2BIG if the user's `cpuid.nent` is
    /// below the module's number of configurable leaves; the capabilities, then the entries.
    #[doc(alias = "init_kvm_tdx_caps")]
    pub fn tdx_get_capabilities(&self, current: Current<'_>, cmd: &kvm_tdx_cmd) -> KResult<()> {
        // flags is reserved for future use.
        if cmd.flags != 0 {
            return Err(Errno::EINVAL);
        }
        let td_conf = &self.host.td_conf;
        let nent_at = cmd.data.wrapping_add(std::mem::offset_of!(kvm_tdx_capabilities, cpuid) as u64);
        let mut nent = [0u8; 4];
        current.copy_from_user(&mut nent, nent_at)?;
        let nr_user_entries = u32::from_ne_bytes(nent);
        let num_cpuid_config = td_conf.cpuid_config_leaves.len() as u32;
        if nr_user_entries < num_cpuid_config {
            return Err(Errno::E2BIG);
        }
        // init_kvm_tdx_caps.
        let mut caps = kvm_tdx_capabilities { supported_attrs: tdx_get_supported_attrs(td_conf), ..Default::default() };
        if caps.supported_attrs == 0 {
            return Err(Errno::EIO);
        }
        caps.supported_xfam = tdx_get_supported_xfam(td_conf);
        if caps.supported_xfam == 0 {
            return Err(Errno::EIO);
        }
        caps.cpuid.nent = num_cpuid_config;
        caps.user_tdvmcallinfo_1_r11 = TDVMCALLINFO_SETUP_EVENT_NOTIFY_INTERRUPT;
        copy_struct_to_user(current, cmd.data, &caps)?;
        let entries_at = cmd.data.wrapping_add(std::mem::size_of::<kvm_tdx_capabilities>() as u64);
        for i in 0..td_conf.cpuid_config_leaves.len() {
            let entry = td_init_cpuid_entry2(td_conf, i);
            copy_struct_to_user(current, entries_at.wrapping_add(i as u64 * 40), &entry)?;
        }
        Ok(())
    }

    /// `tdx_td_init(kvm, cmd)` (`KVM_TDX_INIT_VM`): the checks in the kernel's order, the
    /// TD_PARAMS, `__tdx_td_init`, then `gfn_direct_bits` and `TD_STATE_INITIALIZED`.
    pub fn tdx_td_init(&self, kvm: &Kvm, current: Current<'_>, cmd: &mut kvm_tdx_cmd) -> KResult<()> {
        if self.td_state() != TdState::Uninitialized {
            return Err(Errno::EINVAL);
        }
        if cmd.flags != 0 {
            return Err(Errno::EINVAL);
        }
        let init_vm: kvm_tdx_init_vm = copy_struct_from_user(current, cmd.data)?;
        if init_vm.cpuid.nent > KVM_MAX_CPUID_ENTRIES {
            return Err(Errno::E2BIG);
        }
        let entries_at = cmd.data.wrapping_add(std::mem::size_of::<kvm_tdx_init_vm>() as u64);
        let mut entries = Vec::with_capacity(init_vm.cpuid.nent as usize);
        for i in 0..u64::from(init_vm.cpuid.nent) {
            entries.push(copy_struct_from_user::<kvm_cpuid_entry2>(current, entries_at.wrapping_add(i * 40))?);
        }
        if init_vm.reserved.iter().any(|&word| word != 0) {
            return Err(Errno::EINVAL);
        }
        if init_vm.cpuid.padding != 0 {
            return Err(Errno::EINVAL);
        }
        let (td_params, gpaw52) = self.setup_tdparams(kvm, &init_vm, &entries)?;
        self.__tdx_td_init(kvm, &td_params, &mut cmd.hw_error)?;
        self.attributes.store(init_vm.attributes | self.host.td_conf.attributes_fixed1, Ordering::Release);
        self.xfam.store(init_vm.xfam | self.host.td_conf.xfam_fixed1, Ordering::Release);
        kvm.set_gfn_direct_bits(if gpaw52 { TDX_SHARED_BIT_PWL_5 } else { TDX_SHARED_BIT_PWL_4 });
        self.set_td_state(TdState::Initialized);
        Ok(())
    }

    /// `setup_tdparams(kvm, td_params, init_vm)` with `setup_tdparams_eptp_controls` and
    /// `setup_tdparams_cpuids`: EBUSY once vCPUs exist; EINVAL for attributes or XFAM bits the
    /// platform does not offer, for a CPUID without leaf 0x80000008 or with a GPAW other than 48
    /// (52 needs a 5-level EPT, which the model's host lacks), for TSX or WAITPKG, and for an
    /// entry the module has no slot for. Returns the TD_PARAMS and whether GPAW is 52.
    #[doc(alias("setup_tdparams_cpuids", "setup_tdparams_eptp_controls"))]
    pub fn setup_tdparams(
        &self,
        kvm: &Kvm,
        init_vm: &kvm_tdx_init_vm,
        entries: &[kvm_cpuid_entry2],
    ) -> KResult<(TdParams, bool)> {
        let td_conf = &self.host.td_conf;
        if kvm.created_vcpus() != 0 {
            return Err(Errno::EBUSY);
        }
        if init_vm.attributes & !tdx_get_supported_attrs(td_conf) != 0 {
            return Err(Errno::EINVAL);
        }
        if init_vm.xfam & !tdx_get_supported_xfam(td_conf) != 0 {
            return Err(Errno::EINVAL);
        }
        let attributes = init_vm.attributes | td_conf.attributes_fixed1;
        // kvm->max_vcpus as tdx_vm_init capped it.
        let max_vcpus = KVM_MAX_VCPUS.min(HOST_PRESENT_CPUS).min(self.module().config().max_vcpus_per_td);
        let params = TdParams { max_vcpus, sept_ve_disable: attributes & TDX_TD_ATTR_SEPT_VE_DISABLE != 0 };
        // setup_tdparams_eptp_controls.
        let entry = kvm_find_cpuid_entry2(entries, 0x8000_0008, 0).ok_or(Errno::EINVAL)?;
        let guest_pa = (entry.eax >> 16) & 0xff;
        if guest_pa != 48 && guest_pa != 52 {
            return Err(Errno::EINVAL);
        }
        // cpu_has_vmx_ept_5levels() is false on the model's host.
        if guest_pa == 52 {
            return Err(Errno::EINVAL);
        }
        // setup_tdparams_cpuids.
        let mut copy_cnt = 0;
        for i in 0..td_conf.cpuid_config_leaves.len() {
            let tmp = td_init_cpuid_entry2(td_conf, i);
            let Some(entry) = kvm_find_cpuid_entry2(entries, tmp.function, tmp.index) else { continue };
            if tdx_unsupported_cpuid(entry) {
                return Err(Errno::EINVAL);
            }
            copy_cnt += 1;
        }
        // "Rely on the TDX module to reject invalid configuration, but it can't check of leafs
        // that don't have a proper slot in td_params->cpuid_values to stick then."
        if copy_cnt != entries.len() {
            return Err(Errno::EINVAL);
        }
        Ok((params, false))
    }

    /// `__tdx_td_init(kvm, td_params, seamcall_err)`: a KeyID (ENOSPC when none is left), the
    /// TDR and TDCS pages (ENOMEM), `TDH.MNG.CREATE` under `tdx_lock` (a failure is a WARN and
    /// EIO), `TDH.MNG.KEY.CONFIG` (`KVM_BUG_ON`, EIO), `TDH.MNG.ADDCX` for each TDCS page (WARN,
    /// EIO) and `TDH.MNG.INIT` (`TDX_OPERAND_INVALID`: the status in `hw_error` and EINVAL;
    /// anything else WARN and EIO). After MNG.CREATE a failure tears the TD down with
    /// `tdx_mmu_release_hkid` and `tdx_reclaim_td_control_pages`.
    #[doc(alias = "tdx_do_tdh_mng_key_config")]
    fn __tdx_td_init(&self, kvm: &Kvm, td_params: &TdParams, seamcall_err: &mut u64) -> KResult<()> {
        *seamcall_err = 0;
        let module = self.module().clone();
        let warnings = &module.machine().warnings;
        let hkid = module.guest_keyid_alloc().ok_or(Errno::ENOSPC)?;
        self.hkid.store(i64::from(hkid), Ordering::Release);
        self.host.nr_configured_hkid.fetch_add(1, Ordering::AcqRel);
        let free_hkid = |vm: &TdxVm| vm.tdx_hkid_free();
        let Ok(tdr) = self.alloc_page() else {
            free_hkid(self);
            return Err(Errno::ENOMEM);
        };
        let tdcs_nr_pages = module.config().tdcs_pages;
        let mut tdcs_pages = Vec::with_capacity(tdcs_nr_pages);
        for _ in 0..tdcs_nr_pages {
            match self.alloc_page() {
                Ok(page) => tdcs_pages.push(page),
                Err(errno) => {
                    tdcs_pages.into_iter().chain([tdr]).for_each(|page| self.free_page(page));
                    free_hkid(self);
                    return Err(errno);
                }
            }
        }
        // TDH.MNG.CREATE tries to grab the global TDX module and fails with TDX_OPERAND_BUSY
        // when it fails to grab. Take the global lock to prevent it from failure.
        let created = {
            let _tdx_lock = self.host.tdx_lock.lock();
            self.pages.lock().tdr = Some(tdr);
            self.tdr.store(tdr.0, Ordering::Release);
            module.tdh_mng_create(tdr, hkid)
        };
        if let Err(error) = created {
            warnings.warn_on_once(true, || format!("SEAMCALL TDH_MNG_CREATE failed: {}", error.status));
            tdcs_pages.into_iter().chain([tdr]).for_each(|page| self.free_page(page));
            self.pages.lock().tdr = None;
            self.tdr.store(0, Ordering::Release);
            free_hkid(self);
            return Err(Errno::EIO);
        }
        // Program the key on every package (the model's host has one).
        let mut added = 0;
        let result: KResult<()> = 'init: {
            let status = status_of(&module.tdh_mng_key_config(tdr));
            if kvm.kvm_bug_on(!status.is_success(), || format!("SEAMCALL TDH_MNG_KEY_CONFIG failed: {status}")) {
                break 'init Err(Errno::EIO);
            }
            self.pages.lock().tdcs = Some(tdcs_pages.iter().map(|&page| Some(page)).collect());
            for &page in &tdcs_pages {
                if let Err(error) = module.tdh_mng_addcx(tdr, page) {
                    warnings.warn_on_once(true, || format!("SEAMCALL TDH_MNG_ADDCX failed: {}", error.status));
                    break 'init Err(Errno::EIO);
                }
                added += 1;
            }
            match module.tdh_mng_init(tdr, td_params) {
                Ok(()) => Ok(()),
                Err(error) if error.status.class() == TDX_OPERAND_INVALID => {
                    // Because a user gives operands, don't warn.
                    *seamcall_err = error.status.raw();
                    Err(Errno::EINVAL)
                }
                Err(error) => {
                    warnings.warn_on_once(true, || format!("SEAMCALL TDH_MNG_INIT failed: {}", error.status));
                    Err(Errno::EIO)
                }
            }
        };
        if let Err(errno) = result {
            // teardown: only free pages not yet added.
            let mut pages = self.pages.lock();
            match pages.tdcs.as_mut() {
                Some(tdcs) => {
                    for slot in tdcs.iter_mut().skip(added) {
                        if let Some(page) = slot.take() {
                            self.free_page(page);
                        }
                    }
                }
                None => tdcs_pages.iter().for_each(|&page| self.free_page(page)),
            }
            drop(pages);
            self.tdx_mmu_release_hkid(kvm);
            self.tdx_reclaim_td_control_pages(kvm);
            return Err(errno);
        }
        Ok(())
    }

    /// `tdx_hkid_free`: the KeyID back to the kernel's pool.
    fn tdx_hkid_free(&self) {
        let hkid = self.hkid.swap(-1, Ordering::AcqRel);
        if hkid > 0 {
            self.module().guest_keyid_free(hkid as u16);
            self.host.nr_configured_hkid.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// `tdx_td_finalize(kvm, cmd)` (`KVM_TDX_FINALIZE_VM`, the caller holds `slots_lock`): EINVAL
    /// without a KeyID, once runnable, or (v6.18) while a premapped leaf awaits its PAGE.ADD;
    /// `TDH.MR.FINALIZE` (BUSY: EBUSY; anything else `KVM_BUG_ON`, EIO), then `TD_STATE_RUNNABLE`
    /// and `pre_fault_allowed`.
    pub fn tdx_td_finalize(&self, kvm: &Kvm, cmd: &mut kvm_tdx_cmd) -> KResult<()> {
        gmem_sync::lockdep_assert_held(&gmem_kvm::vm::SLOTS_LOCK);
        if !self.is_hkid_assigned() || self.td_state() == TdState::Runnable {
            return Err(Errno::EINVAL);
        }
        // Pages are pending for KVM_TDX_INIT_MEM_REGION to issue TDH.MEM.PAGE.ADD().
        if !kvm.profile().has_fix(Fix::F15TdxAddWhileMapping) && self.nr_premapped() != 0 {
            return Err(Errno::EINVAL);
        }
        let status = status_of(&self.module().tdh_mr_finalize(self.tdr_or_zero()));
        cmd.hw_error = status.raw();
        if tdx_operand_busy(status) {
            return Err(Errno::EBUSY);
        }
        if kvm.kvm_bug_on(!status.is_success(), || format!("SEAMCALL TDH_MR_FINALIZE failed: {status}")) {
            return Err(Errno::EIO);
        }
        self.set_td_state(TdState::Runnable);
        // TD_STATE_RUNNABLE must be set before 'pre_fault_allowed'.
        kvm.set_pre_fault_allowed(true);
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // vCPU-scope KVM_MEMORY_ENCRYPT_OP.

    /// `tdx_vcpu_ioctl(vcpu, argp)` (v6.18: `vcpu->mutex` held by `kvm_vcpu_ioctl`; with
    /// upstream fix F16, v6.19's `tdx_vcpu_unlocked_ioctl`: `kvm->lock`, every `vcpu->mutex` and
    /// `slots_lock` around the state checks and the command). EINVAL without a KeyID or once the
    /// TD is runnable, checked before the command is copied in (v6.18's order).
    pub fn tdx_vcpu_ioctl(&self, kvm: &Arc<Kvm>, vcpu: &Arc<KvmVcpu>, current: Current<'_>, argp: u64) -> KResult<()> {
        if kvm.profile().has_fix(Fix::F16TdxStateLocks) {
            let cmd: kvm_tdx_cmd = copy_struct_from_user(current, argp)?;
            if cmd.hw_error != 0 {
                return Err(Errno::EINVAL);
            }
            let _lock = kvm.lock.lock();
            return kvm.with_all_vcpus_locked(|| {
                let slots = kvm.lock_slots();
                if !self.is_hkid_assigned() || self.td_state() == TdState::Runnable {
                    return Err(Errno::EINVAL);
                }
                self.tdx_vcpu_cmd(kvm, vcpu, current, cmd, Some(&slots))
            });
        }
        if !self.is_hkid_assigned() || self.td_state() == TdState::Runnable {
            return Err(Errno::EINVAL);
        }
        let cmd: kvm_tdx_cmd = copy_struct_from_user(current, argp)?;
        if cmd.hw_error != 0 {
            return Err(Errno::EINVAL);
        }
        self.tdx_vcpu_cmd(kvm, vcpu, current, cmd, None)
    }

    fn tdx_vcpu_cmd(
        &self,
        kvm: &Kvm,
        vcpu: &Arc<KvmVcpu>,
        current: Current<'_>,
        cmd: kvm_tdx_cmd,
        slots_lock: Option<&gmem_sync::MutexGuard<'_, ()>>,
    ) -> KResult<()> {
        match cmd.id {
            KVM_TDX_INIT_VCPU => self.tdx_vcpu_init(kvm, vcpu, &cmd),
            KVM_TDX_INIT_MEM_REGION => self.tdx_vcpu_init_mem_region(kvm, vcpu, current, &cmd, slots_lock),
            KVM_TDX_GET_CPUID => {
                tracing::warn!("KVM_TDX_GET_CPUID is not modelled (EINVAL)");
                Err(Errno::EINVAL)
            }
            _ => Err(Errno::EINVAL),
        }
    }

    /// `tdx_vcpu_init(vcpu, cmd)` (`KVM_TDX_INIT_VCPU`) with `tdx_td_vcpu_init`: EINVAL for flags
    /// or a vCPU already initialised; the TDVPR and TDCX pages (ENOMEM), `TDH.VP.CREATE`,
    /// `TDH.VP.ADDCX` for each TDCX page and `TDH.VP.INIT(data, vcpu_id)`, each failure a
    /// `KVM_BUG_ON` and EIO. (The x2APIC base the kernel sets first is outside the model.)
    #[doc(alias = "tdx_td_vcpu_init")]
    pub fn tdx_vcpu_init(&self, kvm: &Kvm, vcpu: &KvmVcpu, cmd: &kvm_tdx_cmd) -> KResult<()> {
        if cmd.flags != 0 {
            return Err(Errno::EINVAL);
        }
        let tdx = vcpu.arch::<TdxVcpu>().ok_or(Errno::EINVAL)?;
        if tdx.initialized() {
            return Err(Errno::EINVAL);
        }
        let module = self.module();
        let tdvpr = self.alloc_page()?;
        let tdcx_nr_pages = module.config().tdcx_pages;
        let mut tdcx = Vec::with_capacity(tdcx_nr_pages);
        for _ in 0..tdcx_nr_pages {
            match self.alloc_page() {
                Ok(page) => tdcx.push(page),
                Err(errno) => {
                    tdcx.into_iter().chain([tdvpr]).for_each(|page| self.free_page(page));
                    return Err(errno);
                }
            }
        }
        let status = status_of(&module.tdh_vp_create(self.tdr_or_zero(), tdvpr));
        if kvm.kvm_bug_on(!status.is_success(), || format!("SEAMCALL TDH_VP_CREATE failed: {status}")) {
            tdcx.into_iter().chain([tdvpr]).for_each(|page| self.free_page(page));
            return Err(Errno::EIO);
        }
        tdx.tdvpr.store(tdvpr.0, Ordering::Release);
        *tdx.tdcx.lock() = Some(tdcx.iter().map(|&page| Some(page)).collect());
        for (i, &page) in tdcx.iter().enumerate() {
            let status = status_of(&module.tdh_vp_addcx(tdvpr, page));
            if kvm.kvm_bug_on(!status.is_success(), || format!("SEAMCALL TDH_VP_ADDCX failed: {status}")) {
                // Pages already added are reclaimed by the vcpu_free method, but the rest are
                // freed here.
                let mut pages = tdx.tdcx.lock();
                for slot in pages.iter_mut().flatten().skip(i) {
                    if let Some(page) = slot.take() {
                        self.free_page(page);
                    }
                }
                return Err(Errno::EIO);
            }
        }
        let status = status_of(&module.tdh_vp_init(tdvpr, cmd.data, vcpu.vcpu_id()));
        if kvm.kvm_bug_on(!status.is_success(), || format!("SEAMCALL TDH_VP_INIT failed: {status}")) {
            return Err(Errno::EIO);
        }
        tdx.initialized.store(true, Ordering::Release);
        Ok(())
    }

    /// `tdx_vcpu_init_mem_region(vcpu, cmd)` (`KVM_TDX_INIT_MEM_REGION`): the checks in the
    /// kernel's order (vCPU not initialised, under `slots_lock` a runnable TD, unknown flags:
    /// EINVAL; the region not readable: EFAULT; unaligned source or GPA, no pages, a wrapping
    /// range, a first or last GPA with the shared bit: EINVAL), then one `kvm_gmem_populate` per
    /// page with [`TdxVm::tdx_gmem_post_populate`] (a pending signal: EINTR; a populate error is
    /// returned as is; a populate that did not do its page: EIO). The region, advanced past what
    /// was done, is copied back in every case (EFAULT if that fails). `slots_lock` is the
    /// caller's when it already holds it (upstream fix F16).
    pub fn tdx_vcpu_init_mem_region(
        &self,
        kvm: &Kvm,
        vcpu: &Arc<KvmVcpu>,
        current: Current<'_>,
        cmd: &kvm_tdx_cmd,
        slots_lock: Option<&gmem_sync::MutexGuard<'_, ()>>,
    ) -> KResult<()> {
        let tdx = vcpu.arch::<TdxVcpu>().ok_or(Errno::EINVAL)?;
        if !tdx.initialized() {
            return Err(Errno::EINVAL);
        }
        let own_slots_lock = if slots_lock.is_none() { Some(kvm.lock_slots()) } else { None };
        let slots_lock = slots_lock.or(own_slots_lock.as_ref()).expect("slots_lock is held");
        // Once TD is finalized, the initial guest memory is fixed.
        if self.td_state() == TdState::Runnable {
            return Err(Errno::EINVAL);
        }
        if cmd.flags & !KVM_TDX_MEASURE_MEMORY_REGION != 0 {
            return Err(Errno::EINVAL);
        }
        let mut region: kvm_tdx_init_mem_region = copy_struct_from_user(current, cmd.data)?;
        let end = region.gpa.wrapping_add(region.nr_pages.wrapping_shl(PAGE_SHIFT));
        if region.source_addr & (PAGE_SIZE - 1) != 0
            || region.gpa & (PAGE_SIZE - 1) != 0
            || region.nr_pages == 0
            || end <= region.gpa
            || !self.vt_is_tdx_private_gpa(kvm, region.gpa)
            || !self.vt_is_tdx_private_gpa(kvm, end.wrapping_sub(1))
        {
            return Err(Errno::EINVAL);
        }
        let mut ret = Ok(());
        while region.nr_pages != 0 {
            if kvm.machine().signal_pending() {
                ret = Err(Errno::EINTR);
                break;
            }
            let mut arg = TdxGmemPostPopulateArg { vcpu: vcpu.clone(), flags: cmd.flags };
            let mm = current.mm;
            let post_populate = |kvm: &Kvm, gfn, pfn, src: &PopulateSource<'_>, order, opaque: &mut dyn Any| {
                let arg = opaque.downcast_mut::<TdxGmemPostPopulateArg>().expect("TDX populate arguments");
                self.tdx_gmem_post_populate(kvm, mm, gfn, pfn, src, order, arg)
            };
            let src = PopulateSource::User { current, uaddr: region.source_addr };
            let gfn = Gfn(region.gpa >> PAGE_SHIFT);
            match kvm_gmem_populate(kvm, slots_lock, gfn, src, 1, &post_populate, &mut arg) {
                Err(errno) => {
                    ret = Err(errno);
                    break;
                }
                Ok(1) => {}
                Ok(_) => {
                    ret = Err(Errno::EIO);
                    break;
                }
            }
            region.source_addr += PAGE_SIZE;
            region.gpa += PAGE_SIZE;
            region.nr_pages -= 1;
        }
        copy_struct_to_user(current, cmd.data, &region)?;
        ret
    }

    /// `vt_is_tdx_private_gpa(kvm, gpa)`: the gpa lacks the shared bit.
    fn vt_is_tdx_private_gpa(&self, kvm: &Kvm, gpa: u64) -> bool {
        !kvm.is_gfn_alias(Gfn(gpa >> PAGE_SHIFT))
    }

    /// `tdx_gmem_post_populate(kvm, gfn, pfn, src, order, arg)`: pin the source page
    /// (`get_user_pages_fast`: EFAULT when it is not mapped), fault the private GPA into the
    /// mirror root through the TDP fault path (`kvm_tdp_map_page`: the set hook premaps the
    /// leaf), `TDH.MEM.PAGE.ADD` (BUSY: EBUSY; anything else EIO, without `KVM_BUG_ON`),
    /// `nr_premapped--`, and with `KVM_TDX_MEASURE_MEMORY_REGION` `TDH.MR.EXTEND` for each
    /// 256-byte chunk (a failure: EIO). With upstream fix F15 (v6.19) the source goes to
    /// `page_add_src`, the fault's set hook does the PAGE.ADD, and a failed MR.EXTEND is
    /// `KVM_BUG_ON`. `mm` is the calling process's (the source's address space).
    #[allow(clippy::too_many_arguments)]
    pub fn tdx_gmem_post_populate(
        &self,
        kvm: &Kvm,
        mm: &Mm,
        gfn: Gfn,
        pfn: Pfn,
        src: &PopulateSource<'_>,
        _order: u8,
        arg: &mut TdxGmemPostPopulateArg,
    ) -> KResult<()> {
        let error_code = PFERR_GUEST_FINAL_MASK | PFERR_PRIVATE_ACCESS;
        let gpa = gfn.to_gpa().0;
        let f15 = kvm.profile().has_fix(Fix::F15TdxAddWhileMapping);
        if f15 && kvm.kvm_bug_on(self.page_add_src.load(Ordering::Acquire) != 0, || "page_add_src already set".into()) {
            return Err(Errno::EIO);
        }
        // Get the source page if it has been faulted in.
        let PopulateSource::User { current, uaddr } = *src else { return Err(Errno::EFAULT) };
        let src_page = current.mm.get_user_page(uaddr, false)?;
        let mem = &kvm.machine().mem;
        let ret = 'out: {
            if f15 {
                self.page_add_src.store(src_page.0, Ordering::Release);
                let mapped = kvm_tdp_map_page(kvm, &arg.vcpu, mm, gpa, error_code);
                self.page_add_src.store(0, Ordering::Release);
                if let Err(errno) = mapped {
                    break 'out Err(errno);
                }
                if arg.flags & KVM_TDX_MEASURE_MEMORY_REGION == 0 {
                    break 'out Ok(());
                }
                for offset in (0..PAGE_SIZE).step_by(TDX_EXTENDMR_CHUNKSIZE as usize) {
                    let status = status_of(&self.module().tdh_mr_extend(self.tdr_or_zero(), gpa + offset));
                    if kvm.kvm_bug_on(!status.is_success(), || format!("SEAMCALL TDH_MR_EXTEND failed: {status}")) {
                        break 'out Err(Errno::EIO);
                    }
                }
                break 'out Ok(());
            }
            if let Err(errno) = kvm_tdp_map_page(kvm, &arg.vcpu, mm, gpa, error_code) {
                break 'out Err(errno);
            }
            let status = status_of(&self.module().tdh_mem_page_add(self.tdr_or_zero(), gpa, pfn, src_page));
            if !status.is_success() {
                break 'out Err(if tdx_operand_busy(status) { Errno::EBUSY } else { Errno::EIO });
            }
            if !kvm.kvm_bug_on(self.nr_premapped() == 0, || "nr_premapped is 0 after TDH.MEM.PAGE.ADD".into()) {
                self.nr_premapped.fetch_sub(1, Ordering::AcqRel);
            }
            if arg.flags & KVM_TDX_MEASURE_MEMORY_REGION != 0 {
                for offset in (0..PAGE_SIZE).step_by(TDX_EXTENDMR_CHUNKSIZE as usize) {
                    if self.module().tdh_mr_extend(self.tdr_or_zero(), gpa + offset).is_err() {
                        break 'out Err(Errno::EIO);
                    }
                }
            }
            Ok(())
        };
        // put_page(src_page).
        Folio::from_pfn(mem, src_page).put();
        ret
    }

    // -----------------------------------------------------------------------------------------
    // The S-EPT hooks.

    /// `tdx_sept_set_private_spte(kvm, gfn, level, pfn)`: a 4K leaf only (`KVM_BUG_ON`, EINVAL);
    /// pin the page; a runnable TD gets `TDH.MEM.PAGE.AUG` (`tdx_mem_page_aug`: BUSY unpins and is
    /// EBUSY; anything else unpins, `KVM_BUG_ON`, EIO); before that the leaf is premapped
    /// (`tdx_mem_page_record_premap_cnt`: `KVM_BUG_ON` if pre-faults are already allowed, else
    /// `nr_premapped++`), or with upstream fix F15 added to the image with `TDH.MEM.PAGE.ADD`
    /// from `page_add_src`.
    #[doc(alias = "tdx_mem_page_record_premap_cnt")]
    pub fn tdx_sept_set_private_spte(&self, kvm: &Kvm, gfn: Gfn, level: PgLevel, pfn: Pfn) -> KResult<()> {
        if kvm.kvm_bug_on(level != PgLevel::Level4K, || format!("tdx_sept_set_private_spte at level {level}")) {
            return Err(Errno::EINVAL);
        }
        let gpa = gfn.to_gpa().0;
        if kvm.profile().has_fix(Fix::F15TdxAddWhileMapping) {
            // v6.19: no pin ("Drop superfluous page pinning in S-EPT management").
            if self.td_state() == TdState::Runnable {
                return self.tdx_mem_page_aug(kvm, gpa, pfn, false);
            }
            let src = self.page_add_src.load(Ordering::Acquire);
            if kvm.kvm_bug_on(src == 0, || format!("tdx_mem_page_add of gfn {gfn} without page_add_src")) {
                return Err(Errno::EIO);
            }
            let status = status_of(&self.module().tdh_mem_page_add(self.tdr_or_zero(), gpa, pfn, Pfn(src)));
            if tdx_operand_busy(status) {
                return Err(Errno::EBUSY);
            }
            if kvm.kvm_bug_on(!status.is_success(), || format!("SEAMCALL TDH_MEM_PAGE_ADD failed: {status}")) {
                return Err(Errno::EIO);
            }
            return Ok(());
        }
        // get_page(page): guest_memfd has no migration callback yet.
        self.tdx_pin(kvm, pfn);
        if self.td_state() == TdState::Runnable {
            return self.tdx_mem_page_aug(kvm, gpa, pfn, true);
        }
        // tdx_mem_page_record_premap_cnt.
        if kvm.kvm_bug_on(kvm.pre_fault_allowed(), || format!("premap of gfn {gfn} after pre_fault_allowed")) {
            return Err(Errno::EINVAL);
        }
        self.nr_premapped.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// `tdx_mem_page_aug`.
    fn tdx_mem_page_aug(&self, kvm: &Kvm, gpa: u64, pfn: Pfn, pinned: bool) -> KResult<()> {
        let result = self.module().tdh_mem_page_aug(self.tdr_or_zero(), gpa, 0, pfn);
        let unpin = || {
            if pinned {
                self.tdx_unpin(kvm, pfn);
            }
        };
        match result {
            Ok(()) => Ok(()),
            Err(error) if tdx_operand_busy(error.status) => {
                TdxStats::bump(&self.stats.aug_busy);
                unpin();
                Err(Errno::EBUSY)
            }
            Err(error) => {
                kvm.kvm_bug_on(true, || self.fatal_seamcall(format!("SEAMCALL TDH_MEM_PAGE_AUG failed: {error}")));
                unpin();
                Err(Errno::EIO)
            }
        }
    }

    /// `tdx_no_vcpus_enter_start(kvm)` (`mmu_lock` held for write): `wait_for_sept_zap` keeps
    /// every vCPU from entering the TD, and `KVM_REQ_OUTSIDE_GUEST_MODE` kicks out those inside.
    pub fn tdx_no_vcpus_enter_start(&self, kvm: &Kvm) {
        self.wait_for_sept_zap.store(true, Ordering::Release);
        kvm.make_all_cpus_request_outside_guest_mode();
        // T6 (model only): from here until tdx_no_vcpus_enter_stop no vCPU may be inside the TD.
        let inside = self.module().vcpus_in_td(self.tdr_or_zero());
        if !inside.is_empty() {
            let mut breaches = self.t6_breaches.lock();
            if breaches.len() < 16 {
                breaches.push(format!("vCPUs {inside:?} (TDVPR, epoch) inside the TD after the zap retry's kick"));
            }
        }
    }

    /// The T6 breaches seen so far (vCPUs inside the TD while `wait_for_sept_zap` kept them out).
    pub fn t6_breaches(&self) -> Vec<String> {
        self.t6_breaches.lock().clone()
    }

    /// `tdx_no_vcpus_enter_stop(kvm)`.
    pub fn tdx_no_vcpus_enter_stop(&self, _kvm: &Kvm) {
        self.wait_for_sept_zap.store(false, Ordering::Release);
    }

    /// `tdx_is_sept_zap_err_due_to_premap(kvm_tdx, err, entry, level)`: before the TD runs,
    /// `TDX_EPT_ENTRY_STATE_INCORRECT` on RCX with an entry that is not a present RWX leaf is a
    /// leaf that was premapped but never ADDed.
    fn tdx_is_sept_zap_err_due_to_premap(&self, error: &SeamcallError) -> bool {
        if self.td_state() == TdState::Runnable {
            return false;
        }
        if error.status != TdxStatus::new(TDX_EPT_ENTRY_STATE_INCORRECT, TDX_OPERAND_ID_RCX) {
            return false;
        }
        // is_last_spte(entry, PG_LEVEL_4K) holds for any entry of a page table, so this is
        // "the entry the walk found has no RWX permission".
        error.entry & SEPT_RWX == 0
    }

    /// `tdx_sept_zap_private_spte`: `TDH.MEM.RANGE.BLOCK`, once more with the vCPUs kept out if
    /// BUSY; the premap signature is `nr_premapped--` and "nothing to remove" (`Ok(false)`);
    /// another failure `KVM_BUG_ON`, EIO. `Ok(true)`: blocked.
    fn tdx_sept_zap_private_spte(&self, kvm: &Kvm, gfn: Gfn, pfn: Pfn) -> KResult<bool> {
        let module = self.module();
        let gpa = gfn.to_gpa().0;
        let mut result = module.tdh_mem_range_block(self.tdr_or_zero(), gpa, 0);
        if matches!(&result, Err(error) if tdx_operand_busy(error.status)) {
            TdxStats::bump(&self.stats.block_busy);
            // After no vCPUs enter, the second retry is expected to succeed.
            self.tdx_no_vcpus_enter_start(kvm);
            result = module.tdh_mem_range_block(self.tdr_or_zero(), gpa, 0);
            self.tdx_no_vcpus_enter_stop(kvm);
        }
        let Err(error) = result else { return Ok(true) };
        if !kvm.profile().has_fix(Fix::F15TdxAddWhileMapping)
            && self.tdx_is_sept_zap_err_due_to_premap(&error)
            && !kvm.kvm_bug_on(self.nr_premapped() == 0, || format!("premapped gfn {gfn} zapped with nr_premapped 0"))
        {
            self.nr_premapped.fetch_sub(1, Ordering::AcqRel);
            self.tdx_unpin(kvm, pfn);
            return Ok(false);
        }
        kvm.kvm_bug_on(true, || self.fatal_seamcall(format!("SEAMCALL TDH_MEM_RANGE_BLOCK failed: {error}")));
        Err(Errno::EIO)
    }

    /// `tdx_track(kvm)`: only once the TD runs: `TDH.MEM.TRACK`, once more with the vCPUs kept
    /// out if BUSY (anything else `KVM_BUG_ON`), then every vCPU kicked out of the guest so none
    /// is left in the previous epoch.
    fn tdx_track(&self, kvm: &Kvm) {
        // If TD isn't finalized, it's before any vcpu running.
        if self.td_state() != TdState::Runnable {
            return;
        }
        kvm.assert_mmu_lock_held();
        let module = self.module();
        let mut result = module.tdh_mem_track(self.tdr_or_zero());
        if matches!(&result, Err(error) if tdx_operand_busy(error.status)) {
            TdxStats::bump(&self.stats.track_busy);
            self.tdx_no_vcpus_enter_start(kvm);
            result = module.tdh_mem_track(self.tdr_or_zero());
            self.tdx_no_vcpus_enter_stop(kvm);
        }
        if let Err(error) = result {
            kvm.kvm_bug_on(true, || self.fatal_seamcall(format!("SEAMCALL TDH_MEM_TRACK failed: {error}")));
        }
        if !self.skip_track_kick.load(Ordering::Relaxed) {
            kvm.make_all_cpus_request_outside_guest_mode();
        }
    }

    /// `tdx_sept_drop_private_spte`: `TDH.MEM.PAGE.REMOVE` (once more with the vCPUs kept out if
    /// BUSY), `TDH.PHYMEM.PAGE.WBINVD` with the TD's KeyID, `tdx_clear_page`, unpin. A failure is
    /// `KVM_BUG_ON` and EIO, and the page stays pinned: leaked, never cleared for the host.
    fn tdx_sept_drop_private_spte(&self, kvm: &Kvm, gfn: Gfn, level: PgLevel, pfn: Pfn) -> KResult<()> {
        if kvm.kvm_bug_on(level != PgLevel::Level4K, || format!("tdx_sept_drop_private_spte at level {level}")) {
            return Err(Errno::EINVAL);
        }
        let Some(hkid) = self.hkid() else {
            kvm.kvm_bug_on(true, || "tdx_sept_drop_private_spte without an HKID".into());
            return Err(Errno::EINVAL);
        };
        let module = self.module();
        let gpa = gfn.to_gpa().0;
        let mut result = module.tdh_mem_page_remove(self.tdr_or_zero(), gpa, 0);
        if matches!(&result, Err(error) if tdx_operand_busy(error.status)) {
            TdxStats::bump(&self.stats.remove_busy);
            // The second retry is expected to succeed after kicking off all other vCPUs and
            // prevent them from invoking TDH.VP.ENTER.
            self.tdx_no_vcpus_enter_start(kvm);
            result = module.tdh_mem_page_remove(self.tdr_or_zero(), gpa, 0);
            self.tdx_no_vcpus_enter_stop(kvm);
        }
        if let Err(error) = result {
            kvm.kvm_bug_on(true, || self.fatal_seamcall(format!("SEAMCALL TDH_MEM_PAGE_REMOVE failed: {error}")));
            self.leak(pfn);
            return Err(Errno::EIO);
        }
        if let Err(error) = module.tdh_phymem_page_wbinvd(pfn, hkid) {
            kvm.kvm_bug_on(true, || self.fatal_seamcall(format!("SEAMCALL TDH_PHYMEM_PAGE_WBINVD failed: {error}")));
            self.leak(pfn);
            return Err(Errno::EIO);
        }
        self.tdx_clear_page(pfn);
        if !kvm.profile().has_fix(Fix::F15TdxAddWhileMapping) {
            self.tdx_unpin(kvm, pfn);
        }
        Ok(())
    }

    /// `tdx_sept_remove_private_spte(kvm, gfn, level, pfn)` (`mmu_lock` held for write): no KeyID
    /// is `KVM_BUG_ON` ("HKID is released after all private pages have been removed"), then
    /// block (the premap case ends there), track, and drop.
    pub fn tdx_sept_remove_private_spte(&self, kvm: &Kvm, gfn: Gfn, level: PgLevel, pfn: Pfn) -> KResult<()> {
        if kvm.kvm_bug_on(!self.is_hkid_assigned(), || format!("remove of gfn {gfn} without an HKID")) {
            return Err(Errno::EINVAL);
        }
        if !self.tdx_sept_zap_private_spte(kvm, gfn, pfn)? {
            return Ok(());
        }
        // TDX requires TLB tracking before dropping private page.
        self.tdx_track(kvm);
        self.tdx_sept_drop_private_spte(kvm, gfn, level, pfn)
    }

    /// `__tdx_reclaim_page` + `tdx_clear_page` (`tdx_reclaim_page`): `TDH.PHYMEM.PAGE.RECLAIM`
    /// (a failure is a WARN and EIO: the page is leaked), then the clear.
    pub fn tdx_reclaim_page(&self, page: Pfn) -> KResult<()> {
        self.__tdx_reclaim_page(page)?;
        self.tdx_clear_page(page);
        Ok(())
    }

    fn __tdx_reclaim_page(&self, page: Pfn) -> KResult<()> {
        if let Err(error) = self.module().tdh_phymem_page_reclaim(page) {
            // No need to check for TDX_OPERAND_BUSY; all TD pages are freed before the HKID is
            // released and control pages have also been released at this point.
            self.module()
                .machine()
                .warnings
                .warn_on_once(true, || format!("SEAMCALL TDH_PHYMEM_PAGE_RECLAIM of {page:?} failed: {error}"));
            self.leak(page);
            return Err(Errno::EIO);
        }
        Ok(())
    }

    /// `tdx_reclaim_control_page`: reclaim and free, or leak.
    fn tdx_reclaim_control_page(&self, page: Pfn) {
        if self.tdx_reclaim_page(page).is_ok() {
            self.free_page(page);
        }
    }

    // -----------------------------------------------------------------------------------------
    // Teardown.

    /// `tdx_mmu_release_hkid(kvm)` (`vm_pre_destroy`, and `__tdx_td_init`'s error path): every
    /// initialised vCPU flushed (`TDH.VP.FLUSH`; other than `TDX_VCPU_NOT_ASSOCIATED` a failure is
    /// `KVM_BUG_ON`), then under `tdx_lock` `TDH.MNG.VPFLUSHDONE` (`TDX_FLUSHVP_NOT_DONE`: give up,
    /// the HKID is leaked; another failure `KVM_BUG_ON`), `TDH.PHYMEM.CACHE.WB` resumed while
    /// interrupted (at most [`TDX_SEAMCALL_RETRIES`] times; a failure is a WARN), and
    /// `TDH.MNG.KEY.FREEID` (`KVM_BUG_ON`, the HKID leaked; else the KeyID is freed).
    #[doc(alias("smp_func_do_phymem_cache_wb", "tdx_flush_vp"))]
    pub fn tdx_mmu_release_hkid(&self, kvm: &Kvm) {
        if !self.is_hkid_assigned() {
            return;
        }
        let module = self.module();
        let warnings = &module.machine().warnings;
        for vcpu in kvm.vcpus() {
            let Some(tdx) = vcpu.arch::<TdxVcpu>() else { continue };
            // tdx_flush_vp: no TDH.VP.FLUSH for a vCPU that was never initialised.
            if !tdx.initialized() {
                continue;
            }
            let Some(tdvpr) = tdx.tdvpr() else { continue };
            if let Err(error) = module.tdh_vp_flush(tdvpr) {
                if error.status.class() != TDX_VCPU_NOT_ASSOCIATED {
                    kvm.kvm_bug_on(true, || format!("SEAMCALL TDH_VP_FLUSH failed: {error}"));
                }
            }
        }
        let _tdx_lock = self.host.tdx_lock.lock();
        let tdr = self.tdr_or_zero();
        match module.tdh_mng_vpflushdone(tdr) {
            Ok(()) => {}
            Err(error) if error.status.class() == TDX_FLUSHVP_NOT_DONE => return,
            Err(error) => {
                kvm.kvm_bug_on(true, || {
                    format!("SEAMCALL TDH_MNG_VPFLUSHDONE failed: {error}; HKID {:?} is leaked", self.hkid())
                });
                return;
            }
        }
        // smp_func_do_phymem_cache_wb on one CPU of the (model's only) package.
        let mut status = TdxStatus::SUCCESS;
        let mut done = false;
        for _ in 0..TDX_SEAMCALL_RETRIES {
            let resume = !status.is_success();
            status = status_of(&module.tdh_phymem_cache_wb(resume));
            match status.class() {
                TDX_INTERRUPTED_RESUMABLE => continue,
                // Already done by other thread.
                TDX_NO_HKID_READY_TO_WBCACHE => status = TdxStatus::SUCCESS,
                _ => {}
            }
            done = true;
            break;
        }
        let _ = done;
        warnings.warn_on_once(!status.is_success(), || format!("SEAMCALL TDH_PHYMEM_CACHE_WB failed: {status}"));
        // In the case of error in smp_func_do_phymem_cache_wb(), the following
        // tdh_mng_key_freeid() will fail.
        match module.tdh_mng_key_freeid(tdr) {
            Ok(()) => self.tdx_hkid_free(),
            Err(error) => {
                kvm.kvm_bug_on(true, || {
                    format!("SEAMCALL TDH_MNG_KEY_FREEID failed: {error}; HKID {:?} is leaked", self.hkid())
                });
            }
        }
    }

    /// `tdx_reclaim_td_control_pages(kvm)`: only once the HKID is released: every TDCS page
    /// reclaimed (and freed, or leaked), then the TDR: RECLAIM, `TDH.PHYMEM.PAGE.WBINVD` with
    /// the global KeyID (`KVM_BUG_ON`), clear, free.
    fn tdx_reclaim_td_control_pages(&self, kvm: &Kvm) {
        // tdx_mmu_release_hkid() failed to reclaim HKID. Give up freeing TD pages.
        if self.is_hkid_assigned() {
            return;
        }
        let tdcs = self.pages.lock().tdcs.take();
        for page in tdcs.into_iter().flatten().flatten() {
            self.tdx_reclaim_control_page(page);
        }
        let Some(tdr) = self.pages.lock().tdr else { return };
        if self.__tdx_reclaim_page(tdr).is_err() {
            return;
        }
        let module = self.module();
        if let Err(error) = module.tdh_phymem_page_wbinvd(tdr, module.global_keyid()) {
            kvm.kvm_bug_on(true, || format!("SEAMCALL TDH_PHYMEM_PAGE_WBINVD of the TDR failed: {error}"));
            self.leak(tdr);
            return;
        }
        self.tdx_clear_page(tdr);
        self.free_page(tdr);
        self.pages.lock().tdr = None;
        self.tdr.store(0, Ordering::Release);
    }
}

impl KvmArch for TdxVm {
    fn name(&self) -> &'static str {
        "tdx"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn gmem_max_mapping_level(&self, _kvm: &Kvm, _pfn: Pfn, is_private: bool) -> Option<PgLevel> {
        gmem_kvm::arch::tdx_gmem_max_mapping_level(is_private)
    }

    fn post_populate(
        &self,
        _kvm: &Kvm,
        _gfn: Gfn,
        _pfn: Pfn,
        _source: &PopulateSource<'_>,
        _order: u8,
        _opaque: &mut dyn Any,
    ) -> KResult<()> {
        // A TD is populated by KVM_TDX_INIT_MEM_REGION on a vCPU, whose callback needs the vCPU
        // (its MMU maps the page): see TdxVm::tdx_vcpu_init_mem_region.
        Err(Errno::EINVAL)
    }

    fn mem_enc_ioctl(&self, kvm: &Arc<Kvm>, current: Current<'_>, argp: u64) -> KResult<()> {
        self.tdx_vm_ioctl(kvm, current, argp)
    }

    fn vcpu_mem_enc_ioctl(&self, kvm: &Arc<Kvm>, vcpu: &Arc<KvmVcpu>, current: Current<'_>, argp: u64) -> KResult<()> {
        self.tdx_vcpu_ioctl(kvm, vcpu, current, argp)
    }

    fn vcpu_mem_enc_ioctl_unlocked(&self, kvm: &Kvm) -> bool {
        kvm.profile().has_fix(Fix::F16TdxStateLocks)
    }

    fn kick_vcpu(&self, _kvm: &Kvm, vcpu: &KvmVcpu) {
        // The IPI makes a vCPU inside the TD exit it (TDH.VP.ENTER returns).
        if let Some(tdvpr) = vcpu.arch::<TdxVcpu>().and_then(TdxVcpu::tdvpr) {
            self.module().vp_exit(tdvpr);
        }
    }

    fn vcpu_run(&self, kvm: &Kvm, vcpu: &KvmVcpu) -> VcpuRunEntry {
        self.tdx_vcpu_run(kvm, vcpu)
    }

    fn vcpu_run_exit(&self, _kvm: &Kvm, vcpu: &KvmVcpu) {
        // The TD exit: TDH.VP.ENTER returns (the kick's IPI may have ended it already).
        if let Some(tdvpr) = vcpu.arch::<TdxVcpu>().and_then(TdxVcpu::tdvpr) {
            self.module().vp_exit(tdvpr);
        }
    }

    fn vcpu_create(&self, _kvm: &Kvm, _vcpu_id: u32) -> KResult<Box<dyn Any + Send + Sync>> {
        // tdx_vcpu_create: only between KVM_TDX_INIT_VM and KVM_TDX_FINALIZE_VM.
        if self.td_state() != TdState::Initialized {
            return Err(Errno::EIO);
        }
        Ok(Box::new(TdxVcpu {
            initialized: AtomicBool::new(false),
            tdvpr: AtomicU64::new(0),
            tdcx: Mutex::new(&VCPU_TDX_LOCK, None),
            tdvmcall: Mutex::new(&VCPU_TDX_TDVMCALL_LOCK, crate::tdx::run::TdvmcallState::default()),
        }))
    }

    fn vcpu_free(&self, _kvm: &Kvm, vcpu: &KvmVcpu) {
        // tdx_vcpu_free: it is not possible to reclaim pages while the HKID is assigned.
        if self.is_hkid_assigned() {
            return;
        }
        let Some(tdx) = vcpu.arch::<TdxVcpu>() else { return };
        let tdcx = tdx.tdcx.lock().take();
        for page in tdcx.into_iter().flatten().flatten() {
            self.tdx_reclaim_control_page(page);
        }
        if let Some(tdvpr) = tdx.tdvpr() {
            self.tdx_reclaim_control_page(tdvpr);
            tdx.tdvpr.store(0, Ordering::Release);
        }
        tdx.initialized.store(false, Ordering::Release);
    }

    fn gmem_page_pins(&self, pfn: Pfn) -> i32 {
        self.pins.lock().get(&pfn.0).copied().unwrap_or(0)
    }

    fn vm_pre_destroy(&self, kvm: &Kvm) {
        self.tdx_mmu_release_hkid(kvm);
    }

    fn vm_destroy(&self, kvm: &Kvm) {
        // tdx_vm_destroy.
        self.tdx_reclaim_td_control_pages(kvm);
        self.set_td_state(TdState::Uninitialized);
    }

    fn has_mirror_root(&self) -> bool {
        true
    }

    fn link_external_spt(&self, kvm: &Kvm, gfn: Gfn, level: SpteLevel, external_spt: Pfn) -> KResult<()> {
        // tdx_sept_link_private_spt.
        let gpa = gfn.to_gpa().0;
        match self.module().tdh_mem_sept_add(self.tdr_or_zero(), gpa, tdx_sept_level(level), external_spt) {
            Ok(()) => Ok(()),
            Err(error) if tdx_operand_busy(error.status) => {
                TdxStats::bump(&self.stats.sept_add_busy);
                Err(Errno::EBUSY)
            }
            Err(error) => {
                kvm.kvm_bug_on(true, || self.fatal_seamcall(format!("SEAMCALL TDH_MEM_SEPT_ADD failed: {error}")));
                Err(Errno::EIO)
            }
        }
    }

    fn set_external_spte(&self, kvm: &Kvm, gfn: Gfn, level: PgLevel, pfn: Pfn) -> KResult<()> {
        self.tdx_sept_set_private_spte(kvm, gfn, level, pfn)
    }

    fn remove_external_spte(&self, kvm: &Kvm, gfn: Gfn, level: PgLevel, pfn: Pfn) -> KResult<()> {
        self.tdx_sept_remove_private_spte(kvm, gfn, level, pfn)
    }

    fn free_external_spt(&self, kvm: &Kvm, _gfn: Gfn, _level: SpteLevel, external_spt: Pfn) -> KResult<()> {
        // tdx_sept_free_private_spt: free_external_spt() is only called after hkid is freed when
        // TD is tearing down.
        if kvm.kvm_bug_on(self.is_hkid_assigned(), || "free_external_spt with the HKID assigned".into()) {
            return Err(Errno::EINVAL);
        }
        // The HKID assigned to this TD was already freed and cache was already flushed.
        self.tdx_reclaim_page(external_spt)
    }

    fn init_pre_fault_allowed(&self, _vm_type: VmType) -> bool {
        // Set by KVM_TDX_FINALIZE_VM.
        false
    }

    fn vcpu_pre_run(&self, kvm: &Kvm, vcpu: &KvmVcpu) -> Result<(), RunError> {
        self.tdx_vcpu_pre_run(kvm, vcpu)
    }

    fn checks_guest_accesses(&self) -> bool {
        true
    }

    fn guest_access_check(&self, kvm: &Kvm, access: &GuestAccess) -> Result<(), GuestFault> {
        self.tdx_guest_access_check(kvm, access)
    }

    fn handle_guest_fault(
        &self,
        kvm: &Kvm,
        vcpu: &KvmVcpu,
        mm: &Mm,
        fault: &GuestFaultExit,
    ) -> Result<gmem_kvm::vcpu::RetPf, RunError> {
        self.tdx_handle_ept_violation(kvm, vcpu, mm, fault)
    }

    fn check_invariants(
        &self,
        kvm: &Kvm,
        vms: &[&Arc<Kvm>],
        _gmem_files: &[(&gmem_mm::file::FileRef, &gmem_kvm::guest_memfd::KvmGmem)],
        out: &mut Vec<Violation>,
    ) {
        crate::tdx::invariants::check_kvm(self, kvm, vms, out);
    }
}

/// Whether the PAMT says `pfn` is a private page of the TD whose TDR is `tdr`, mapped at `gpa`.
pub(crate) fn is_private_page_of(module: &TdxModule, tdr: Pfn, pfn: Pfn, gpa: u64) -> bool {
    module.pamt_entry(pfn).is_some_and(|entry| entry.pt == PageType::Reg && entry.owner == tdr && entry.gpa == gpa)
}
