//! KVM's SEV code for SNP guests (`arch/x86/kvm/svm/sev.c`), function by function: the
//! `KVM_MEMORY_ENCRYPT_OP` commands of an SNP launch, the four guest_memfd hooks, the RMP
//! nested-fault handler and the VM and vCPU lifecycle.
//!
//! | kernel | here |
//! |---|---|
//! | `sev_mem_enc_ioctl` | [`sev_mem_enc_ioctl`] |
//! | `__sev_guest_init`, `sev_guest_init2` | [`SvmVm::sev_guest_init2`] |
//! | `snp_launch_start`, `snp_context_create`, `snp_bind_asid` | [`SvmVm::snp_launch_start`] |
//! | `snp_launch_update`, `sev_gmem_post_populate` | [`SvmVm::snp_launch_update`], [`sev_gmem_post_populate`] |
//! | `snp_launch_finish`, `snp_launch_update_vmsa` | [`SvmVm::snp_launch_finish`] |
//! | `snp_decommission_context`, `sev_vm_destroy` | [`SvmVm::snp_decommission_context`], [`KvmArch::vm_destroy`] |
//! | `sev_gmem_prepare` | [`SvmVm::sev_gmem_prepare`] |
//! | `sev_gmem_invalidate` | [`sev_gmem_invalidate`] |
//! | `sev_private_max_mapping_level` (v6.18: `sev_gmem_max_mapping_level`) | [`SvmVm::sev_gmem_max_mapping_level`] |
//! | `sev_handle_rmp_fault`, `snp_rmptable_psmash` | [`SvmVm::sev_handle_rmp_fault`], [`snp_rmptable_psmash`] |
//! | `kvm_rmp_make_shared`, `snp_page_reclaim` | [`SvmVm::kvm_rmp_make_shared`], [`SvmVm::snp_page_reclaim`] |
//! | `sev_asid_new`, `sev_asid_free`, `sev_flush_asids` | [`SevModule`] |
//! | `svm_vcpu_create` (the VMSA page), `sev_free_vcpu` | [`KvmArch::vcpu_create`], [`KvmArch::vcpu_free`] |
//! | `pre_sev_run` | [`KvmArch::vcpu_pre_run`] |
//!
//! Every VM of a host with SEV enabled gets an [`SvmVm`]: `sev_mem_enc_ioctl` serves all of them
//! (a DEFAULT VM's `KVM_SEV_INIT2` is EINVAL, its SNP commands ENOTTY), and the guest_memfd hooks
//! are SNP's only once `KVM_SEV_INIT2` made the VM an SNP guest (`sev_snp_guest(kvm)`);
//! before that, and for the other VM types, they are the vendor-less ones. The legacy SEV and
//! SEV-ES launch commands are outside the model: they answer ENOTTY, as on a host whose
//! firmware does not run them, and say so in the log.

use crate::sev::firmware::{SevRet, SnpLaunchFinishData, SnpLaunchUpdateData, SNP_POLICY_MASK_RSVD_MBO};
use crate::sev::host::SnpHost;
use crate::sev::measure::SnpPageType;
use crate::sev::psp::SevCommand;
use crate::sev::rmp::{RmpError, PAGES_PER_2M};
use crate::uapi::{copy_struct_from_user, copy_struct_to_user, UapiStruct};
use gmem_kvm::arch::{
    Current, GuestAccess, GuestFault, KvmArch, PgLevel, PopulateSource, PFERR_GUEST_ENC_MASK, PFERR_GUEST_RMP_MASK,
};
use gmem_kvm::guest_memfd::{kvm_gmem_get_pfn, kvm_gmem_populate};
use gmem_kvm::profile::{Fix, KernelVersion};
use gmem_kvm::vcpu::{KvmVcpu, RunError, VcpuExit, FAULT_RETRY_LIMIT};
use gmem_kvm::{Gfn, Kvm, VmType};
use gmem_mm::folio::Folio;
use gmem_mm::types::{PAGE_SHIFT, PAGE_SIZE};
use gmem_mm::{Errno, KResult, Pfn};
use gmem_sync::atomic::{AtomicBool, AtomicU32, Ordering};
use gmem_sync::warn::WarnKind;
use gmem_sync::{Arc, LockClass, Mutex};
use kvm_bindings::{
    kvm_sev_cmd, kvm_sev_init, kvm_sev_snp_launch_finish, kvm_sev_snp_launch_start, kvm_sev_snp_launch_update,
};
use std::any::Any;
use std::fmt;

/// `KVM_SEV_INIT2`.
pub const KVM_SEV_INIT2: u32 = kvm_bindings::sev_cmd_id_KVM_SEV_INIT2;
/// `KVM_SEV_SNP_LAUNCH_START`.
pub const KVM_SEV_SNP_LAUNCH_START: u32 = kvm_bindings::sev_cmd_id_KVM_SEV_SNP_LAUNCH_START;
/// `KVM_SEV_SNP_LAUNCH_UPDATE`.
pub const KVM_SEV_SNP_LAUNCH_UPDATE: u32 = kvm_bindings::sev_cmd_id_KVM_SEV_SNP_LAUNCH_UPDATE;
/// `KVM_SEV_SNP_LAUNCH_FINISH`.
pub const KVM_SEV_SNP_LAUNCH_FINISH: u32 = kvm_bindings::sev_cmd_id_KVM_SEV_SNP_LAUNCH_FINISH;
/// `KVM_SEV_INIT`.
pub const KVM_SEV_INIT: u32 = kvm_bindings::sev_cmd_id_KVM_SEV_INIT;
/// `KVM_SEV_ES_INIT`.
pub const KVM_SEV_ES_INIT: u32 = kvm_bindings::sev_cmd_id_KVM_SEV_ES_INIT;

/// `SVM_SEV_FEAT_SNP_ACTIVE`.
pub const SVM_SEV_FEAT_SNP_ACTIVE: u64 = 1 << 0;
/// `SVM_SEV_FEAT_DEBUG_SWAP`: the one VMSA feature the model's host supports.
pub const SVM_SEV_FEAT_DEBUG_SWAP: u64 = 1 << 5;
/// `GHCB_VERSION_MAX`.
pub const GHCB_VERSION_MAX: u16 = 2;
/// `GHCB_VERSION_DEFAULT`.
pub const GHCB_VERSION_DEFAULT: u16 = 2;
/// `GHCB_VERSION_MIN`.
pub const GHCB_VERSION_MIN: u16 = 1;

/// `SNP_POLICY_MASK_VALID`: API minor and major, SMT, the must-be-one bit, DEBUG, SINGLE_SOCKET.
pub const SNP_POLICY_MASK_VALID: u64 =
    0xff | (0xff << 8) | (1 << 16) | SNP_POLICY_MASK_RSVD_MBO | (1 << 19) | (1 << 20);
/// `INITIAL_VMSA_GPA`: the GPA the launch VMSAs are measured at.
pub const INITIAL_VMSA_GPA: u64 = 0xFFFF_FFFF_F000;
/// `KVM_SEV_SNP_ID_BLOCK_SIZE`.
pub const KVM_SEV_SNP_ID_BLOCK_SIZE: usize = 96;
/// `KVM_SEV_SNP_ID_AUTH_SIZE`.
pub const KVM_SEV_SNP_ID_AUTH_SIZE: usize = 4096;
/// `SEV_RET_INVALID_PARAM`, the firmware's answer to a CPUID page it rejects.
const SEV_RET_INVALID_PARAM: u32 = 0x16;

// SAFETY: repr(C) integers only (kvm-bindings), no padding.
unsafe impl UapiStruct for kvm_sev_cmd {}
// SAFETY: repr(C) integers only (kvm-bindings), no padding.
unsafe impl UapiStruct for kvm_sev_init {}
// SAFETY: repr(C) integers only (kvm-bindings), no padding.
unsafe impl UapiStruct for kvm_sev_snp_launch_start {}
// SAFETY: repr(C) integers only (kvm-bindings), no padding.
unsafe impl UapiStruct for kvm_sev_snp_launch_update {}
// SAFETY: repr(C) integers only (kvm-bindings), no padding.
unsafe impl UapiStruct for kvm_sev_snp_launch_finish {}

/// The raw bytes of a uAPI structure (for callers that stage one in user memory).
pub fn uapi_bytes<T: Copy + Default + 'static>(value: &T) -> Vec<u8> {
    assert!(
        std::any::TypeId::of::<T>() == std::any::TypeId::of::<kvm_sev_cmd>()
            || std::any::TypeId::of::<T>() == std::any::TypeId::of::<kvm_sev_init>()
            || std::any::TypeId::of::<T>() == std::any::TypeId::of::<kvm_sev_snp_launch_start>()
            || std::any::TypeId::of::<T>() == std::any::TypeId::of::<kvm_sev_snp_launch_update>()
            || std::any::TypeId::of::<T>() == std::any::TypeId::of::<kvm_sev_snp_launch_finish>(),
        "uapi_bytes is for the SEV uAPI structures"
    );
    // SAFETY: one of the plain-old-data kvm-bindings structures checked above.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), std::mem::size_of::<T>()) }.to_vec()
}

/// A uAPI structure from its raw bytes (the counterpart of [`uapi_bytes`]).
pub fn uapi_from_bytes<T: Copy + Default + 'static>(bytes: &[u8]) -> T {
    let _ = uapi_bytes(&T::default());
    assert_eq!(bytes.len(), std::mem::size_of::<T>(), "uapi_from_bytes: wrong length");
    // SAFETY: checked above that `T` is one of the plain-old-data SEV structures and that
    // `bytes` holds exactly its size.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) }
}

/// `sev_bitmap_lock`.
static SEV_BITMAP_LOCK: LockClass = LockClass::new("sev_bitmap_lock");
/// The lock of one VM's `kvm_sev_info` (the kernel protects it with `kvm->lock`, which
/// `sev_mem_enc_ioctl` holds; the model's own leaf lock makes the reads of the hot paths safe).
static SEV_INFO_LOCK: LockClass = LockClass::new("kvm_sev_info");
/// `svm->sev_es.snp_vmsa_mutex` and the rest of a vCPU's SEV-ES state.
static SEV_VCPU_LOCK: LockClass = LockClass::new("vcpu->sev_es");
/// A vCPU's page-state-change state, which the kernel keeps in `svm->sev_es` without taking
/// `snp_vmsa_mutex` (only the vCPU's own thread touches it). A class of its own: it is held while
/// the GHCB's buffer is read through the VMM's mm (`mmap_lock`), which the MMU notifier holds
/// around `mmu_lock`, which the F11 VMSA reload holds around the SEV-ES state; one class for
/// both would make that chain a false lockdep cycle.
static SEV_VCPU_PSC_LOCK: LockClass = LockClass::new("vcpu->sev_es.psc");

/// KVM's module-level SEV state (the statics of `sev.c`): what the host supports and the ASIDs.
///
/// The model's host has [`SevModule::MAX_SEV_ASID`] ASIDs, the first
/// `MIN_SEV_ASID - 1` of them for SEV-ES and SNP guests (`min_sev_asid` from CPUID
/// 0x8000001F). A freed ASID is only reused after `sev_flush_asids` (WBINVD and `SNP_DF_FLUSH`).
#[doc(alias = "__sev_recycle_asids")]
pub struct SevModule {
    /// `sev_enabled`.
    pub sev_enabled: bool,
    /// `sev_es_enabled`.
    pub sev_es_enabled: bool,
    /// `sev_snp_enabled`.
    pub sev_snp_enabled: bool,
    /// `sev_supported_vmsa_features`.
    pub supported_vmsa_features: u64,
    asids: Mutex<AsidBitmaps>,
}

struct AsidBitmaps {
    /// `sev_asid_bitmap`.
    used: Vec<bool>,
    /// `sev_reclaim_asid_bitmap`.
    reclaim: Vec<bool>,
}

impl fmt::Debug for SevModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SevModule")
            .field("sev_enabled", &self.sev_enabled)
            .field("sev_snp_enabled", &self.sev_snp_enabled)
            .finish_non_exhaustive()
    }
}

impl SevModule {
    /// `max_sev_asid` of the model's host.
    pub const MAX_SEV_ASID: u32 = 64;
    /// `min_sev_asid`: ASIDs below it are for SEV-ES and SNP guests.
    pub const MIN_SEV_ASID: u32 = 33;

    /// `sev_hardware_setup` on a host with SEV, SEV-ES and SEV-SNP (`enabled`), or without.
    pub fn new(enabled: bool) -> SevModule {
        let nr_asids = SevModule::MAX_SEV_ASID as usize + 1;
        SevModule {
            sev_enabled: enabled,
            sev_es_enabled: enabled,
            sev_snp_enabled: enabled,
            supported_vmsa_features: if enabled { SVM_SEV_FEAT_DEBUG_SWAP } else { 0 },
            asids: Mutex::new(
                &SEV_BITMAP_LOCK,
                AsidBitmaps { used: vec![false; nr_asids], reclaim: vec![false; nr_asids] },
            ),
        }
    }

    /// `sev_asid_new`: the lowest free ASID of the guest's range (SEV-ES/SNP: `1..min_sev_asid`),
    /// recycling reclaimed ASIDs once (`__sev_recycle_asids`) when the range is full; EBUSY if
    /// none is free after that.
    fn sev_asid_new(&self, host: &SnpHost, es_active: bool) -> KResult<u32> {
        let (min_asid, max_asid) = if es_active {
            (1, SevModule::MIN_SEV_ASID - 1)
        } else {
            (SevModule::MIN_SEV_ASID, SevModule::MAX_SEV_ASID)
        };
        if min_asid > max_asid {
            return Err(Errno::ENOTTY);
        }
        let mut bitmaps = self.asids.lock();
        let mut retry = true;
        loop {
            if let Some(asid) = (min_asid..=max_asid).find(|&asid| !bitmaps.used[asid as usize]) {
                bitmaps.used[asid as usize] = true;
                return Ok(asid);
            }
            if retry && SevModule::sev_flush_asids(&mut bitmaps, host, min_asid, max_asid) {
                retry = false;
                continue;
            }
            return Err(Errno::EBUSY);
        }
    }

    /// `sev_flush_asids` + `__sev_recycle_asids` (called with `sev_bitmap_lock`): if any ASID of
    /// the range awaits reclaim, WBINVD and `SNP_DF_FLUSH`, then every reclaimed ASID is free.
    fn sev_flush_asids(bitmaps: &mut AsidBitmaps, host: &SnpHost, min_asid: u32, max_asid: u32) -> bool {
        if !(min_asid..=max_asid).any(|asid| bitmaps.reclaim[asid as usize]) {
            return false;
        }
        let mut error = 0;
        if let Err(errno) = host.sev_do_cmd(&SevCommand::DfFlush, &mut error) {
            tracing::error!("SEV-SNP: DF_FLUSH failed, ret={}, error={error:#x}", errno.name());
            return false;
        }
        for asid in 0..bitmaps.used.len() {
            if bitmaps.reclaim[asid] {
                bitmaps.used[asid] = false;
                bitmaps.reclaim[asid] = false;
            }
        }
        true
    }

    /// `sev_asid_free`: the ASID waits in the reclaim bitmap for the next flush.
    fn sev_asid_free(&self, asid: u32) {
        self.asids.lock().reclaim[asid as usize] = true;
    }

    /// ASIDs in use (allocated and not yet reclaimed), for invariants.
    pub fn asids_in_use(&self) -> Vec<u32> {
        let bitmaps = self.asids.lock();
        (0..bitmaps.used.len() as u32)
            .filter(|&asid| bitmaps.used[asid as usize] && !bitmaps.reclaim[asid as usize])
            .collect()
    }
}

/// `struct kvm_sev_info`.
#[derive(Debug, Default)]
struct SevInfo {
    need_init: bool,
    active: bool,
    es_active: bool,
    asid: u32,
    vmsa_features: u64,
    ghcb_version: u16,
    policy: u64,
    /// `snp_context`: the guest context page.
    snp_context: Option<Pfn>,
    /// `sev->fd`: the `/dev/sev` descriptor LAUNCH_START was given.
    fd: i32,
    /// `guest_req_buf` (`snp_guest_req_init`): a plain page.
    guest_req_buf: Option<Pfn>,
    /// `guest_resp_buf`: a firmware page.
    guest_resp_buf: Option<Pfn>,
}

/// A vCPU's SEV-ES state (`struct vcpu_sev_es_state` and the VMCB fields it drives).
#[derive(Debug, Default)]
pub struct SevVcpuState {
    /// `svm->sev_es.vmsa`: the VMSA page KVM allocated (SEV-ES and SNP guests).
    pub vmsa: Option<Pfn>,
    /// `svm->vmcb->control.vmsa_pa`: the VMSA the vCPU runs with (`None`: `INVALID_PAGE`).
    pub vmsa_pa: Option<Pfn>,
    /// `vcpu->arch.guest_state_protected`: the VMSA was launched (encrypted).
    pub guest_state_protected: bool,
    /// `svm->sev_es.snp_vmsa_gpa`: the VMSA GPA an AP Creation request named.
    pub snp_vmsa_gpa: Option<u64>,
    /// `svm->sev_es.snp_ap_waiting_for_reset`.
    pub snp_ap_waiting_for_reset: bool,
    /// `svm->sev_es.snp_has_guest_vmsa`: the VMSA is a guest page (from guest_memfd).
    pub snp_has_guest_vmsa: bool,
    /// `KVM_REQ_UPDATE_PROTECTED_GUEST_STATE` is pending.
    pub update_protected_guest_state: bool,
    /// The vCPU has entered the guest since `vmsa_pa` was set (the hardware holds the VMSA).
    pub vmsa_loaded: bool,
    /// Model-only statistic: reloads of the guest VMSA that found an invalidation of its gfn
    /// and made the request again (upstream fix F11).
    pub vmsa_reload_retries: u64,
}

/// The vendor state of one vCPU of an [`SvmVm`].
pub struct SevVcpu {
    /// `svm->sev_es` (under `snp_vmsa_mutex`).
    pub state: Mutex<SevVcpuState>,
    /// The model's page-state-change protocol state ([`crate::sev::ghcb`]).
    pub psc: Mutex<crate::sev::ghcb::PscState>,
}

impl fmt::Debug for SevVcpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SevVcpu").field("state", &*self.state.lock()).finish_non_exhaustive()
    }
}

/// `struct sev_gmem_populate_args`: the `opaque` of `sev_gmem_post_populate`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SevGmemPopulateArgs {
    /// `type`: the SNP page type.
    pub page_type: u8,
    /// `sev_fd`.
    pub sev_fd: i32,
    /// `fw_error`: the firmware status of a failed LAUNCH_UPDATE.
    pub fw_error: u32,
}

/// One VM on an SEV host: `struct kvm_sev_info` and the `kvm_x86_ops` SEV hooks.
pub struct SvmVm {
    module: Arc<SevModule>,
    host: Arc<SnpHost>,
    vm_type: VmType,
    /// The vendor-less hooks, for what is not SNP's (SW_PROTECTED's populate, a VM before
    /// `KVM_SEV_INIT2`).
    generic: Arc<dyn KvmArch>,
    info: Mutex<SevInfo>,
    /// `sev->asid`, readable without the lock (the RMP checks of every guest access).
    asid: AtomicU32,
    /// `sev_snp_guest(kvm)`: `KVM_SEV_INIT2` made the VM an SNP guest.
    snp_active: AtomicBool,
    /// SNP_LAUNCH_FINISH succeeded (the model's record, for the S8 assertion in
    /// [`SvmVm::sev_gmem_prepare`]; the kernel's trace of it is `pre_fault_allowed`).
    launch_finished: AtomicBool,
}

impl fmt::Debug for SvmVm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SvmVm")
            .field("vm_type", &self.vm_type)
            .field("asid", &self.asid.load(Ordering::Relaxed))
            .field("snp_active", &self.snp_active.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// `snp_rmptable_psmash(pfn)`: PSMASH the 2M region of `pfn`, retrying while another processor
/// updates it (`FAIL_INUSE`); the kernel's loop is unbounded, the model's gives up with a WARN
/// after [`crate::sev::host::RMPUPDATE_RETRY_LIMIT`] tries.
pub fn snp_rmptable_psmash(host: &SnpHost, pfn: Pfn) -> KResult<Result<(), RmpError>> {
    let aligned = Pfn(pfn.0 & !(PAGES_PER_2M - 1));
    let mut attempts = 0;
    loop {
        match host.psmash(aligned)? {
            Err(RmpError::FailInuse) if attempts < crate::sev::host::RMPUPDATE_RETRY_LIMIT => {
                attempts += 1;
                gmem_sync::thread::backoff(attempts);
            }
            Err(RmpError::FailInuse) => {
                host.machine().warnings.report(
                    WarnKind::Warn,
                    format!(
                        "snp_rmptable_psmash: PSMASH of PFN {:#x} stayed FAIL_INUSE (the kernel would spin)",
                        aligned.0
                    ),
                );
                return Ok(Err(RmpError::FailInuse));
            }
            other => return Ok(other),
        }
    }
}

/// `sev_gmem_invalidate(start, end)`: guest_memfd frees the folio `[start, end)`; give its frames
/// back to the hypervisor in the RMP (PSMASH a 2M entry the range only partly covers), and flush
/// the guest's cache lines. Not per VM: it only looks at the RMP. Failures are WARNs (the folio is
/// freed anyway, and the next host write to a frame left assigned is an RMP #PF).
pub fn sev_gmem_invalidate(host: &SnpHost, start: Pfn, end: Pfn) {
    let warnings = &host.machine().warnings;
    let mut pfn = start.0;
    while pfn < end.0 {
        let mut use_2m_update = false;
        if let Ok((true, rmp_level)) = host.snp_lookup_rmpentry(Pfn(pfn)) {
            {
                use_2m_update = pfn % PAGES_PER_2M == 0 && end.0 >= pfn + PAGES_PER_2M && rmp_level > PgLevel::Level4K;
                // If an unaligned PFN corresponds to a 2M region assigned as a large page in the
                // RMP table, PSMASH the region into individual 4K RMP entries before attempting
                // to convert a 4K sub-page.
                if !use_2m_update && rmp_level > PgLevel::Level4K {
                    let rc = snp_rmptable_psmash(host, Pfn(pfn));
                    warnings.warn_on_once(!matches!(rc, Ok(Ok(()))), || {
                        format!("SEV: Failed to PSMASH RMP entry for PFN {pfn:#x} error {rc:?}")
                    });
                }
                let level = if use_2m_update { PgLevel::Level2M } else { PgLevel::Level4K };
                let rc = host.rmp_make_shared(Pfn(pfn), level);
                if !warnings.warn_on_once(rc.is_err(), || {
                    format!(
                        "SEV: Failed to update RMP entry for PFN {pfn:#x} error {rc:?}: {}",
                        host.dump_rmpentry(Pfn(pfn))
                    )
                }) {
                    host.clflush_cache_range(Pfn(pfn), if use_2m_update { PAGES_PER_2M } else { 1 });
                }
            }
        }
        pfn += if use_2m_update { PAGES_PER_2M } else { 1 };
    }
}

/// `sev_gmem_post_populate(kvm, gfn_start, pfn, src, order, opaque)`: for each page of the chunk,
/// check it is still hypervisor-owned, copy the source in (a host write: legal while the page is
/// shared), make it Pre-Guest (private, immutable) and have the firmware launch it. A firmware
/// failure reclaims the page (and, for a CPUID page the firmware rejected, copies the table it
/// would accept back to the source); every page made private earlier in this call goes back to
/// shared. `current` is the task whose ioctl this is (its `/dev/sev` descriptor and memory).
#[allow(clippy::too_many_arguments)]
pub fn sev_gmem_post_populate(
    vm: &SvmVm,
    kvm: &Kvm,
    current: Current<'_>,
    gfn_start: Gfn,
    pfn: Pfn,
    src: &PopulateSource<'_>,
    order: u8,
    args: &mut SevGmemPopulateArgs,
) -> KResult<()> {
    let host = &vm.host;
    let mem = &host.machine().mem;
    let npages = 1u64 << order;
    if kvm.machine().warnings.warn_on_once(args.page_type != SnpPageType::Zero as u8 && !src.is_some(), || {
        "sev_gmem_post_populate: no source for a page that needs one".into()
    }) {
        return Err(Errno::EINVAL);
    }
    let asid = vm.asid.load(Ordering::Acquire);
    let gctx = vm.info.lock().snp_context;
    let mut n_private = 0u64;
    let mut i = 0u64;
    let result = 'pages: {
        while i < npages {
            let gfn = gfn_start.offset(i);
            let page = pfn.offset(i);
            match host.snp_lookup_rmpentry(page) {
                Ok((false, _)) => {}
                lookup => {
                    tracing::debug!(
                        "sev_gmem_post_populate: Failed to ensure GFN {gfn} RMP entry is initial shared state: {lookup:?}"
                    );
                    break 'pages Err(if lookup.is_err() { Errno::EINVAL } else { Errno::EEXIST });
                }
            }
            if src.is_some() {
                let map = crate::sev::kmap::kmap_local_pfn(page);
                let mut buf = [0u8; PAGE_SIZE as usize];
                if src.read_page(i, &mut buf).is_err() {
                    // Upstream fix F8: the kernel's copy-failure path skipped kunmap_local().
                    if kvm.profile().has_fix(Fix::F8PostPopulateKunmap) {
                        crate::sev::kmap::kunmap_local(map);
                    }
                    break 'pages Err(Errno::EFAULT);
                }
                mem.write(page, 0, &buf);
                crate::sev::kmap::kunmap_local(map);
            }
            if let Err(errno) = host.rmp_make_private(page, gfn.to_gpa().0, PgLevel::Level4K, asid, true) {
                break 'pages Err(errno);
            }
            n_private += 1;
            let command = SevCommand::LaunchUpdate(SnpLaunchUpdateData {
                gctx: gctx.unwrap_or(Pfn(0)),
                page,
                page_size: 0,
                page_type: args.page_type,
            });
            let mut fw_error = 0;
            if let Err(errno) = vm.sev_issue_cmd_fd(current, args.sev_fd, &command, &mut fw_error) {
                args.fw_error = fw_error;
                // If the firmware command failed handle the reclaim and cleanup of that PFN
                // specially vs. prior pages which can be cleaned up below without needing to
                // reclaim in advance. When invalid CPUID function entries are detected, the
                // firmware writes the expected values into the page and leaves it unencrypted:
                // copy it back into the source buffer so user space can see what failed.
                if vm.snp_page_reclaim(kvm, page).is_ok()
                    && args.page_type == SnpPageType::Cpuid as u8
                    && args.fw_error == SEV_RET_INVALID_PARAM
                {
                    let map = crate::sev::kmap::kmap_local_pfn(page);
                    let mut buf = [0u8; PAGE_SIZE as usize];
                    mem.read(page, 0, &mut buf);
                    if src.write_page(i, &buf).is_err() {
                        tracing::debug!("Failed to write CPUID page back to userspace");
                    }
                    crate::sev::kmap::kunmap_local(map);
                }
                // pfn + i is hypervisor-owned now, so skip the cleanup below for it.
                n_private -= 1;
                break 'pages Err(errno);
            }
            check_launched(kvm, host, page, asid, gfn.to_gpa().0, false);
            i += 1;
        }
        Ok(())
    };
    if let Err(errno) = result {
        tracing::debug!(
            "sev_gmem_post_populate: exiting with error {errno} (fw_error {:#x}), restoring {n_private} gmem PFNs to shared",
            args.fw_error
        );
        for j in 0..n_private {
            let _ = vm.kvm_rmp_make_shared(kvm, pfn.offset(j), PgLevel::Level4K);
        }
        return Err(errno);
    }
    Ok(())
}

/// S8 after a successful firmware LAUNCH_UPDATE of `page`: the page is Guest-Valid (assigned to
/// `asid` at `gpa`, not immutable, validated; a VMSA for `vmsa`), else a WARN.
fn check_launched(kvm: &Kvm, host: &SnpHost, page: Pfn, asid: u32, gpa: u64, vmsa: bool) {
    let entry = host.rmp().read(page).unwrap_or_default();
    let launched = entry.assigned
        && !entry.immutable
        && entry.validated
        && entry.asid == asid
        && entry.gpa == gpa
        && entry.vmsa == vmsa;
    kvm.machine().warnings.warn_on(!launched, || {
        format!(
            "S8: SNP_LAUNCH_UPDATE of {page:?} at gpa {gpa:#x} succeeded but left its RMP entry {entry:?}, not {} of ASID {asid}",
            if vmsa { "a Guest-Valid VMSA" } else { "Guest-Valid" }
        )
    });
}

impl SvmVm {
    /// `svm_vm_init` for a VM of `vm_type` on a host whose SEV module is `module`.
    #[doc(alias = "svm_vm_init")]
    pub fn new(module: Arc<SevModule>, host: Arc<SnpHost>, vm_type: VmType, generic: Arc<dyn KvmArch>) -> SvmVm {
        // svm_vm_init: every SEV type needs KVM_SEV_INIT2 (or the legacy INIT).
        let need_init = !matches!(vm_type, VmType::Default | VmType::SwProtected);
        SvmVm {
            module,
            host,
            vm_type,
            generic,
            info: Mutex::new(&SEV_INFO_LOCK, SevInfo { need_init, ..SevInfo::default() }),
            asid: AtomicU32::new(0),
            snp_active: AtomicBool::new(false),
            launch_finished: AtomicBool::new(false),
        }
    }

    /// The host's SEV-SNP platform.
    pub fn host(&self) -> &Arc<SnpHost> {
        &self.host
    }

    /// The VM's back-end, if it is an [`SvmVm`].
    pub fn of(kvm: &Kvm) -> Option<&SvmVm> {
        kvm.arch().as_any().downcast_ref::<SvmVm>()
    }

    /// `sev_snp_guest(kvm)`.
    pub fn sev_snp_guest(&self) -> bool {
        self.snp_active.load(Ordering::Acquire)
    }

    /// `sev_guest(kvm)`.
    pub fn sev_guest(&self) -> bool {
        self.info.lock().active
    }

    /// `sev_es_guest(kvm)`.
    pub fn sev_es_guest(&self) -> bool {
        let info = self.info.lock();
        info.active && info.es_active
    }

    /// `sev->asid` (0 before `KVM_SEV_INIT2`).
    pub fn asid(&self) -> u32 {
        self.asid.load(Ordering::Acquire)
    }

    /// Whether SNP_LAUNCH_FINISH succeeded.
    pub fn launch_finished(&self) -> bool {
        self.launch_finished.load(Ordering::Acquire)
    }

    /// `sev->snp_context`: the guest context page.
    pub fn snp_context(&self) -> Option<Pfn> {
        self.info.lock().snp_context
    }

    /// `sev->policy`.
    pub fn policy(&self) -> u64 {
        self.info.lock().policy
    }

    /// `sev->vmsa_features`.
    pub fn vmsa_features(&self) -> u64 {
        self.info.lock().vmsa_features
    }

    /// The pages the firmware owns for this VM (its guest context and its guest-request
    /// response page), for the ownership invariant.
    pub fn firmware_pages(&self) -> Vec<Pfn> {
        let info = self.info.lock();
        info.snp_context.into_iter().chain(info.guest_resp_buf).collect()
    }

    /// `__sev_issue_cmd(fd, id, data, error)`: the command on behalf of the `/dev/sev` descriptor
    /// `fd` of the calling task (EBADF if it is not open or not `/dev/sev`).
    #[doc(alias("__sev_issue_cmd", "sev_issue_cmd"))]
    fn sev_issue_cmd_fd(&self, current: Current<'_>, fd: i32, command: &SevCommand, error: &mut u32) -> KResult<()> {
        let file = current.files.fget(fd).ok_or(Errno::EBADF)?;
        self.host.sev_issue_cmd_external_user(&file, command, error)
    }

    /// `kvm_rmp_make_shared(kvm, pfn, level)`: give a page back to the hypervisor; if the RMP
    /// refuses, the VM is bugged (`KVM_BUG_ON`: dead, every later ioctl EIO) and the page
    /// leaked. EIO then.
    pub fn kvm_rmp_make_shared(&self, kvm: &Kvm, pfn: Pfn, level: PgLevel) -> KResult<()> {
        let failed = self.host.rmp_make_shared(pfn, level).is_err();
        if kvm.kvm_bug_on(failed, || {
            format!("rmp_make_shared(PFN {:#x}, {level}) failed: {}", pfn.0, self.host.dump_rmpentry(pfn))
        }) {
            self.host.snp_leak_pages(pfn, level.pages());
            return Err(Errno::EIO);
        }
        Ok(())
    }

    /// `snp_page_reclaim(kvm, pfn)`: a page in a firmware state (Pre-Guest, a VMSA) goes back to
    /// the hypervisor: SNP_PAGE_RECLAIM, then `kvm_rmp_make_shared`. A firmware failure bugs the
    /// VM and leaks the page; EIO.
    pub fn snp_page_reclaim(&self, kvm: &Kvm, pfn: Pfn) -> KResult<()> {
        let mut fw_err = 0;
        let rc = self.host.sev_do_cmd(&SevCommand::PageReclaim(pfn), &mut fw_err);
        if kvm.kvm_bug_on(rc.is_err(), || {
            format!("Failed to reclaim PFN {:#x}, rc {:?} fw_err {}", pfn.0, rc, SnpHost::sev_ret_name(fw_err))
        }) {
            self.host.snp_leak_pages(pfn, 1);
            return Err(Errno::EIO);
        }
        self.kvm_rmp_make_shared(kvm, pfn, PgLevel::Level4K)
    }

    /// `__sev_guest_init` for `KVM_SEV_INIT2` (`sev_guest_init2` did the VM type checks): the
    /// checks in the kernel's order, then the ASID, the platform and (SNP) the guest-request
    /// pages.
    fn __sev_guest_init(&self, kvm: &Kvm, error: &mut u32, data: &kvm_sev_init, vm_type: VmType) -> KResult<()> {
        let es_active = vm_type != VmType::Sev;
        let valid_vmsa_features = if es_active { self.module.supported_vmsa_features } else { 0 };
        if kvm.created_vcpus() != 0 {
            return Err(Errno::EINVAL);
        }
        if data.flags != 0 {
            return Err(Errno::EINVAL);
        }
        if data.vmsa_features & !valid_vmsa_features != 0 {
            return Err(Errno::EINVAL);
        }
        if data.ghcb_version > GHCB_VERSION_MAX || (!es_active && data.ghcb_version != 0) {
            return Err(Errno::EINVAL);
        }
        let mut info = self.info.lock();
        if info.active {
            return Err(Errno::EINVAL);
        }
        info.active = true;
        info.es_active = es_active;
        info.vmsa_features = data.vmsa_features;
        info.ghcb_version = data.ghcb_version;
        if info.es_active && info.ghcb_version == 0 {
            info.ghcb_version = GHCB_VERSION_DEFAULT;
        }
        if vm_type == VmType::SevSnp {
            info.vmsa_features |= SVM_SEV_FEAT_SNP_ACTIVE;
        }
        let undo = |info: &mut SevInfo| {
            info.vmsa_features = 0;
            info.es_active = false;
            info.active = false;
        };
        let asid = match self.module.sev_asid_new(&self.host, es_active) {
            Ok(asid) => asid,
            Err(errno) => {
                undo(&mut info);
                return Err(errno);
            }
        };
        info.asid = asid;
        let mut init_error = 0;
        let mut result = self.host.sev_platform_init(&mut init_error);
        // This needs to happen after SEV/SNP firmware initialization.
        if result.is_ok() && vm_type == VmType::SevSnp {
            result = self.snp_guest_req_init(&mut info);
        }
        if let Err(errno) = result {
            *error = init_error;
            self.module.sev_asid_free(asid);
            info.asid = 0;
            undo(&mut info);
            return Err(errno);
        }
        info.need_init = false;
        self.asid.store(asid, Ordering::Release);
        self.snp_active.store(info.es_active && info.vmsa_features & SVM_SEV_FEAT_SNP_ACTIVE != 0, Ordering::Release);
        Ok(())
    }

    /// `snp_guest_req_init`: the bounce pages for SNP guest requests (a plain page for the
    /// request, a firmware page for the response).
    fn snp_guest_req_init(&self, info: &mut SevInfo) -> KResult<()> {
        let mem = &self.host.machine().mem;
        let req = mem.alloc(0).map_err(|_| Errno::ENOMEM)?;
        mem.clear(req);
        let Some(resp) = self.host.snp_alloc_firmware_page() else {
            Folio::from_pfn(mem, req).put();
            return Err(Errno::EIO);
        };
        info.guest_req_buf = Some(req);
        info.guest_resp_buf = Some(resp);
        Ok(())
    }

    /// `snp_guest_req_cleanup`.
    fn snp_guest_req_cleanup(&self, info: &mut SevInfo) {
        if let Some(resp) = info.guest_resp_buf.take() {
            self.host.snp_free_firmware_page(resp);
        }
        if let Some(req) = info.guest_req_buf.take() {
            Folio::from_pfn(&self.host.machine().mem, req).put();
        }
    }

    /// `sev_guest_init2` (`KVM_SEV_INIT2`).
    pub fn sev_guest_init2(&self, kvm: &Kvm, current: Current<'_>, argp: &mut kvm_sev_cmd) -> KResult<()> {
        if !self.info.lock().need_init {
            return Err(Errno::EINVAL);
        }
        if !matches!(kvm.vm_type(), VmType::Sev | VmType::SevEs | VmType::SevSnp) {
            return Err(Errno::EINVAL);
        }
        let data: kvm_sev_init = copy_struct_from_user(current, argp.data)?;
        self.__sev_guest_init(kvm, &mut argp.error, &data, kvm.vm_type())
    }

    /// `snp_context_create`: a firmware page and `SNP_GCTX_CREATE` on it (`None` on failure, the
    /// page freed).
    fn snp_context_create(&self, current: Current<'_>, argp: &mut kvm_sev_cmd) -> Option<Pfn> {
        let context = self.host.snp_alloc_firmware_page()?;
        if let Err(errno) =
            self.sev_issue_cmd_fd(current, argp.sev_fd as i32, &SevCommand::GctxCreate(context), &mut argp.error)
        {
            tracing::warn!("Failed to create SEV-SNP context, rc {} fw_error {:#x}", errno.name(), argp.error);
            self.host.snp_free_firmware_page(context);
            return None;
        }
        Some(context)
    }

    /// `snp_launch_start` (`KVM_SEV_SNP_LAUNCH_START`): the policy checks, one context per VM,
    /// `SNP_GCTX_CREATE`, `SNP_LAUNCH_START` and `SNP_ACTIVATE` (the ASID).
    pub fn snp_launch_start(&self, kvm: &Kvm, current: Current<'_>, argp: &mut kvm_sev_cmd) -> KResult<()> {
        if !self.sev_snp_guest() {
            return Err(Errno::ENOTTY);
        }
        let params: kvm_sev_snp_launch_start = copy_struct_from_user(current, argp.data)?;
        // Don't allow userspace to allocate memory for more than 1 SNP context.
        if self.info.lock().snp_context.is_some() {
            return Err(Errno::EINVAL);
        }
        if params.flags != 0 {
            return Err(Errno::EINVAL);
        }
        if params.policy & !SNP_POLICY_MASK_VALID != 0 {
            return Err(Errno::EINVAL);
        }
        // Check for policy bits that must be set.
        if params.policy & SNP_POLICY_MASK_RSVD_MBO == 0 {
            return Err(Errno::EINVAL);
        }
        self.info.lock().policy = params.policy;
        let context = self.snp_context_create(current, argp).ok_or(Errno::ENOTTY)?;
        self.info.lock().snp_context = Some(context);
        let start = SevCommand::LaunchStart { gctx: context, policy: params.policy };
        let result = self.sev_issue_cmd_fd(current, argp.sev_fd as i32, &start, &mut argp.error).and_then(|()| {
            self.info.lock().fd = argp.sev_fd as i32;
            self.snp_bind_asid(current, &mut argp.error)
        });
        if let Err(errno) = result {
            tracing::debug!("snp_launch_start: failed, rc {}", errno.name());
            let _ = self.snp_decommission_context(kvm);
            return Err(errno);
        }
        Ok(())
    }

    /// `snp_bind_asid`: `SNP_ACTIVATE` through `sev->fd`.
    fn snp_bind_asid(&self, current: Current<'_>, error: &mut u32) -> KResult<()> {
        let (gctx, fd) = {
            let info = self.info.lock();
            (info.snp_context.unwrap_or(Pfn(0)), info.fd)
        };
        let command = SevCommand::Activate { gctx, asid: self.asid() };
        self.sev_issue_cmd_fd(current, fd, &command, error)
    }

    /// `snp_launch_update` (`KVM_SEV_SNP_LAUNCH_UPDATE`): the checks, then `kvm_gmem_populate`
    /// with `sev_gmem_post_populate` under `slots_lock`. Partial progress is success: the
    /// parameters come back advanced past what was done, and user space loops until `len` is 0.
    /// Any populate error is EIO, with the firmware status (if any) in `argp.error`.
    pub fn snp_launch_update(&self, kvm: &Kvm, current: Current<'_>, argp: &mut kvm_sev_cmd) -> KResult<()> {
        if !self.sev_snp_guest() || self.info.lock().snp_context.is_none() {
            return Err(Errno::EINVAL);
        }
        let mut params: kvm_sev_snp_launch_update = copy_struct_from_user(current, argp.data)?;
        tracing::debug!(
            "snp_launch_update: GFN start {:#x} length {:#x} type {} flags {}",
            params.gfn_start,
            params.len,
            params.type_,
            params.flags
        );
        let valid_type = matches!(
            SnpPageType::from_raw(params.type_),
            Some(
                SnpPageType::Normal
                    | SnpPageType::Zero
                    | SnpPageType::Unmeasured
                    | SnpPageType::Secrets
                    | SnpPageType::Cpuid
            )
        );
        // v6.18 also refuses an empty update (the fix that made kvm_gmem_populate WARN on
        // npages <= 0 checked `!params.len` here); v6.14 passes it on to kvm_gmem_populate.
        let empty = kvm.profile().version == KernelVersion::V6_18 && params.len == 0;
        if empty || params.len & (PAGE_SIZE - 1) != 0 || params.flags != 0 || !valid_type {
            return Err(Errno::EINVAL);
        }
        let npages = (params.len / PAGE_SIZE) as i64;
        // kvm->slots_lock freezes attributes and memslots while the pre-conditions are checked.
        let slots_lock = kvm.lock_slots();
        let slot_ok = {
            let slots = kvm.memslots_locked(&slots_lock);
            slots.find_gfn(Gfn(params.gfn_start)).is_some_and(|entry| kvm.memslot(entry).has_gmem())
        };
        if !slot_ok {
            return Err(Errno::EINVAL);
        }
        let mut args = SevGmemPopulateArgs { page_type: params.type_, sev_fd: argp.sev_fd as i32, fw_error: 0 };
        let src = if params.type_ == SnpPageType::Zero as u8 {
            PopulateSource::None
        } else {
            PopulateSource::User { current, uaddr: params.uaddr }
        };
        let post_populate = |kvm: &Kvm, gfn, pfn, src: &PopulateSource<'_>, order, opaque: &mut dyn Any| {
            let args = opaque.downcast_mut::<SevGmemPopulateArgs>().expect("SNP populate arguments");
            sev_gmem_post_populate(self, kvm, current, gfn, pfn, src, order, args)
        };
        let count = kvm_gmem_populate(kvm, &slots_lock, Gfn(params.gfn_start), src, npages, &post_populate, &mut args);
        let result = match count {
            Err(errno) => {
                argp.error = args.fw_error;
                tracing::debug!(
                    "snp_launch_update: kvm_gmem_populate failed, ret {errno} (fw_error {:#x})",
                    argp.error
                );
                Err(Errno::EIO)
            }
            Ok(count) => {
                let count = count as u64;
                params.gfn_start += count;
                params.len -= count * PAGE_SIZE;
                if params.type_ != SnpPageType::Zero as u8 {
                    params.uaddr += count * PAGE_SIZE;
                }
                copy_struct_to_user(current, argp.data, &params)
            }
        };
        drop(slots_lock);
        result
    }

    /// `snp_launch_update_vmsa`: for every vCPU, make its VMSA Pre-Guest at `INITIAL_VMSA_GPA` and
    /// launch it (measured); a firmware failure reclaims it.
    fn snp_launch_update_vmsa(&self, kvm: &Kvm, current: Current<'_>, argp: &mut kvm_sev_cmd) -> KResult<()> {
        let gctx = self.info.lock().snp_context.unwrap_or(Pfn(0));
        for vcpu in kvm.vcpus() {
            let Some(sev) = vcpu.arch::<SevVcpu>() else { continue };
            let Some(vmsa) = sev.state.lock().vmsa else { continue };
            // Transition the VMSA page to a firmware state.
            self.host.rmp_make_private(vmsa, INITIAL_VMSA_GPA, PgLevel::Level4K, self.asid(), true)?;
            // Issue the SNP command to encrypt the VMSA.
            let command = SevCommand::LaunchUpdate(SnpLaunchUpdateData {
                gctx,
                page: vmsa,
                page_size: 0,
                page_type: SnpPageType::Vmsa as u8,
            });
            if let Err(errno) = self.sev_issue_cmd_fd(current, argp.sev_fd as i32, &command, &mut argp.error) {
                let _ = self.snp_page_reclaim(kvm, vmsa);
                return Err(errno);
            }
            check_launched(kvm, &self.host, vmsa, self.asid(), INITIAL_VMSA_GPA, true);
            sev.state.lock().guest_state_protected = true;
        }
        Ok(())
    }

    /// `snp_launch_finish` (`KVM_SEV_SNP_LAUNCH_FINISH`): measure the VMSAs, then
    /// `SNP_LAUNCH_FINISH` (with the ID block and its authentication, if enabled); on success
    /// private pages may from now on be faulted in, and `KVM_PRE_FAULT_MEMORY` is allowed.
    pub fn snp_launch_finish(&self, kvm: &Kvm, current: Current<'_>, argp: &mut kvm_sev_cmd) -> KResult<()> {
        if !self.sev_snp_guest() {
            return Err(Errno::ENOTTY);
        }
        let Some(gctx) = self.info.lock().snp_context else { return Err(Errno::EINVAL) };
        let params: kvm_sev_snp_launch_finish = copy_struct_from_user(current, argp.data)?;
        if params.flags != 0 {
            return Err(Errno::EINVAL);
        }
        // Measure all vCPUs using LAUNCH_UPDATE before finalizing the launch flow.
        self.snp_launch_update_vmsa(kvm, current, argp)?;
        let mut data = SnpLaunchFinishData { gctx: Some(gctx), id_block: None, host_data: params.host_data };
        if params.id_block_en != 0 {
            // psp_copy_user_blob: the ID block and its authentication structure.
            let mut id_block = vec![0u8; KVM_SEV_SNP_ID_BLOCK_SIZE];
            current.copy_from_user(&mut id_block, params.id_block_uaddr)?;
            let mut id_auth = vec![0u8; KVM_SEV_SNP_ID_AUTH_SIZE];
            current.copy_from_user(&mut id_auth, params.id_auth_uaddr)?;
            data.id_block = Some(id_block);
        }
        let fd = self.info.lock().fd;
        let ret = self.sev_issue_cmd_fd(current, fd, &SevCommand::LaunchFinish(data), &mut argp.error);
        // Now that there will be no more SNP_LAUNCH_UPDATE ioctls, private pages can be given to
        // the guest simply by marking the RMP entry as private. This can happen on first access
        // and also with KVM_PRE_FAULT_MEMORY.
        if ret.is_ok() {
            self.launch_finished.store(true, Ordering::Release);
            kvm.set_pre_fault_allowed(true);
        }
        ret
    }

    /// `snp_decommission_context`: `SNP_DECOMMISSION` (which unbinds the ASID) and the context
    /// page back to the host. A firmware failure is a WARN and leaves the context.
    pub fn snp_decommission_context(&self, kvm: &Kvm) -> KResult<()> {
        let Some(context) = self.info.lock().snp_context else { return Ok(()) };
        let mut error = 0;
        let ret = self.host.sev_do_cmd(&SevCommand::Decommission(context), &mut error);
        if kvm.machine().warnings.warn_on_once(ret.is_err(), || {
            format!("Failed to release guest context, ret {ret:?} ({})", SnpHost::sev_ret_name(error))
        }) {
            return ret;
        }
        self.host.snp_free_firmware_page(context);
        self.info.lock().snp_context = None;
        Ok(())
    }

    /// `sev_gmem_prepare(kvm, pfn, gfn, max_order)`: the first time a folio is handed to the
    /// guest, make it private in the RMP (Guest-Invalid: the guest must PVALIDATE it): a 2M entry
    /// when the folio is that large and the whole 2M range is hypervisor-owned, else 4K. A page
    /// already assigned is left as it is (idempotent, and the owner is not checked).
    pub fn sev_gmem_prepare(&self, pfn: Pfn, gfn: Gfn, max_order: u8) -> KResult<()> {
        if !self.sev_snp_guest() {
            return Ok(());
        }
        let (assigned, level) = self.host.snp_lookup_rmpentry(pfn).map_err(|errno| {
            tracing::error!("SEV: Failed to look up RMP entry: GFN {gfn} PFN {:#x} error {errno}", pfn.0);
            Errno::ENOENT
        })?;
        if assigned {
            tracing::debug!(
                "sev_gmem_prepare: already assigned: gfn {gfn} pfn {:#x} max_order {max_order} level {level}",
                pfn.0
            );
            return Ok(());
        }
        let (level, pfn_aligned, gfn_aligned) = if self.is_large_rmp_possible(pfn, max_order) {
            (PgLevel::Level2M, Pfn(pfn.0 & !(PAGES_PER_2M - 1)), Gfn(gfn.0 & !(PAGES_PER_2M - 1)))
        } else {
            (PgLevel::Level4K, pfn, gfn)
        };
        let warnings = &self.host.machine().warnings;
        // S8: before LAUNCH_FINISH guest memory reaches an SNP guest only through LAUNCH_UPDATE
        // (pre-fault is refused and no vCPU can run), never through a prepare.
        warnings.warn_on(!self.launch_finished(), || {
            format!("S8: sev_gmem_prepare makes {pfn:?} private for gfn {gfn} before SNP_LAUNCH_FINISH")
        });
        // S10: a 2M entry only for a folio that covers the whole 2M range (max_order is the
        // caller's word for it; the folio is the evidence).
        if level == PgLevel::Level2M {
            let mem = &self.host.machine().mem;
            let folio = mem.is_valid_pfn(pfn).then(|| Folio::from_pfn(mem, pfn));
            let covers = folio.is_some_and(|folio| {
                folio.pfn().0 <= pfn_aligned.0 && folio.pfn().0 + folio.nr_pages() >= pfn_aligned.0 + PAGES_PER_2M
            });
            warnings.warn_on(!covers, || {
                format!(
                    "S10: sev_gmem_prepare chose a 2M RMP entry at {pfn_aligned:?} for gfn {gfn} (max_order {max_order}), \
                     but the folio of {pfn:?} has order {:?} and does not cover the 2M range",
                    folio.map(|folio| folio.order())
                )
            });
        }
        if let Err(errno) = self.host.rmp_make_private(pfn_aligned, gfn_aligned.to_gpa().0, level, self.asid(), false) {
            tracing::error!("SEV: Failed to update RMP entry: GFN {gfn} PFN {:#x} level {level} error {errno}", pfn.0);
            return Err(Errno::EINVAL);
        }
        Ok(())
    }

    /// `is_large_rmp_possible`: a folio of at least 2M whose whole 2M range is shared
    /// (`is_pfn_range_shared`).
    #[doc(alias = "is_pfn_range_shared")]
    fn is_large_rmp_possible(&self, pfn: Pfn, order: u8) -> bool {
        let aligned = pfn.0 & !(PAGES_PER_2M - 1);
        PgLevel::for_order(order) > PgLevel::Level4K
            && (aligned..aligned + PAGES_PER_2M)
                .all(|p| matches!(self.host.snp_lookup_rmpentry(Pfn(p)), Ok((false, _))))
    }

    /// `sev_private_max_mapping_level` (v6.14) / `sev_gmem_max_mapping_level` (v6.18, with an
    /// `is_private` the body does not read): no restriction (0) unless the VM is an SNP guest;
    /// 4K for a frame the RMP cannot look up or that is not assigned; else the RMP level.
    #[doc(alias = "sev_private_max_mapping_level")]
    pub fn sev_gmem_max_mapping_level(&self, pfn: Pfn) -> Option<PgLevel> {
        if !self.sev_snp_guest() {
            return None;
        }
        match self.host.snp_lookup_rmpentry(pfn) {
            Ok((true, level)) => Some(level),
            _ => Some(PgLevel::Level4K),
        }
    }

    /// `sev_handle_rmp_fault(vcpu, gpa, error_code)`: an RMP nested fault the MMU could not
    /// resolve (a 4K nested mapping or PVALIDATE over a 2M RMP entry): PSMASH the entry and zap
    /// the 2M range so it is rebuilt at 4K. Unexpected cases (a shared GPA, no gmem backing, an
    /// unassigned frame) are only logged, as the kernel's ratelimited warnings are.
    pub fn sev_handle_rmp_fault(&self, kvm: &Kvm, gpa: u64, error_code: u64) {
        let gfn = Gfn(gpa >> PAGE_SHIFT);
        // The only time RMP faults occur for shared pages is when the guest is triggering an
        // RMP fault for an implicit page-state change from shared->private, which goes to user
        // space as KVM_EXIT_MEMORY_FAULT instead.
        if !kvm.mem_is_private(gfn) {
            tracing::warn!("SEV: Unexpected RMP fault for non-private GPA {gpa:#x}");
            return;
        }
        let srcu = kvm.srcu_read_lock();
        let Some(slot) = kvm.gfn_to_memslot(&srcu, gfn).filter(|slot| slot.has_gmem()) else {
            tracing::warn!("SEV: Unexpected RMP fault, non-private slot for GPA {gpa:#x}");
            return;
        };
        let Ok(got) = kvm_gmem_get_pfn(kvm, slot, gfn) else {
            tracing::warn!("SEV: Unexpected RMP fault, no backing page for private GPA {gpa:#x}");
            return;
        };
        drop(srcu);
        let pfn = got.pfn;
        match self.host.snp_lookup_rmpentry(pfn) {
            Ok((true, PgLevel::Level4K)) => {
                // Spurious: a concurrent PSMASH already split it.
                tracing::trace!("rmp fault: gpa {gpa:#x} pfn {:#x} error {error_code:#x} level 4K", pfn.0);
            }
            Ok((true, _)) => {
                let ret = snp_rmptable_psmash(&self.host, pfn);
                if !matches!(ret, Ok(Ok(())))
                    && !matches!(self.host.snp_lookup_rmpentry(pfn), Ok((true, PgLevel::Level4K)))
                {
                    tracing::warn!("SEV: Unable to split RMP entry for GPA {gpa:#x} PFN {:#x} ret {ret:?}", pfn.0);
                }
                let base = Gfn(gfn.0 & !(PAGES_PER_2M - 1));
                kvm.zap_gfn_range(base, base.offset(PAGES_PER_2M));
            }
            other => {
                tracing::warn!(
                    "SEV: Unexpected RMP fault, no assigned RMP entry found for GPA {gpa:#x} PFN {:#x} error {other:?}",
                    pfn.0
                );
            }
        }
        // kvm_release_page_unused.
        got.page.put();
    }

    /// `sev_vm_destroy` for an SNP guest: the guest-request pages, `snp_decommission_context`
    /// (which also unbinds the ASID; if it fails the ASID is leaked), then the ASID.
    fn sev_vm_destroy(&self, kvm: &Kvm) {
        if !self.sev_guest() {
            return;
        }
        if self.sev_snp_guest() {
            let mut info = self.info.lock();
            self.snp_guest_req_cleanup(&mut info);
            drop(info);
            if self.snp_decommission_context(kvm).is_err() {
                return;
            }
        }
        let asid = self.asid();
        self.module.sev_asid_free(asid);
    }
}

/// `sev_mem_enc_ioctl(kvm, argp)`: `KVM_MEMORY_ENCRYPT_OP` on an SEV host. Copies the command in,
/// takes `kvm->lock`, refuses non-SNP commands on an SNP guest (EPERM), runs the command and
/// copies the command (its `error`) back.
pub fn sev_mem_enc_ioctl(vm: &SvmVm, kvm: &Arc<Kvm>, current: Current<'_>, argp: u64) -> KResult<()> {
    if !vm.module.sev_enabled {
        return Err(Errno::ENOTTY);
    }
    if argp == 0 {
        return Ok(());
    }
    let mut sev_cmd: kvm_sev_cmd = copy_struct_from_user(current, argp)?;
    let _lock = kvm.lock.lock();
    let kmap_mark = crate::sev::kmap::depth();
    // Once KVM_SEV_INIT2 initializes a KVM instance as an SNP guest, only allow the use of
    // SNP-specific commands.
    if vm.sev_snp_guest() && sev_cmd.id < KVM_SEV_SNP_LAUNCH_START {
        return Err(Errno::EPERM);
    }
    let result = match sev_cmd.id {
        KVM_SEV_INIT2 => vm.sev_guest_init2(kvm, current, &mut sev_cmd).inspect(|()| {
            if vm.sev_snp_guest() {
                vm.host.register_guest(kvm);
            }
        }),
        KVM_SEV_SNP_LAUNCH_START => vm.snp_launch_start(kvm, current, &mut sev_cmd),
        KVM_SEV_SNP_LAUNCH_UPDATE => vm.snp_launch_update(kvm, current, &mut sev_cmd),
        KVM_SEV_SNP_LAUNCH_FINISH => vm.snp_launch_finish(kvm, current, &mut sev_cmd),
        id if id < KVM_SEV_INIT2 || id == kvm_bindings::sev_cmd_id_KVM_SEV_SEND_CANCEL => {
            tracing::warn!("KVM_MEMORY_ENCRYPT_OP: legacy SEV command {id} is not modelled (ENOTTY)");
            Err(Errno::ENOTTY)
        }
        _ => return Err(Errno::EINVAL),
    };
    let copied = copy_struct_to_user(current, argp, &sev_cmd);
    crate::sev::kmap::check_balanced(&kvm.machine().warnings, kmap_mark, "sev_mem_enc_ioctl");
    match (result, copied) {
        (_, Err(errno)) => Err(errno),
        (result, Ok(())) => result,
    }
}

impl KvmArch for SvmVm {
    fn name(&self) -> &'static str {
        if self.vm_type == VmType::SevSnp {
            "sev-snp"
        } else {
            "svm"
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn gmem_prepare(&self, kvm: &Kvm, gfn: Gfn, pfn: Pfn, max_order: u8) -> KResult<()> {
        if !self.sev_snp_guest() {
            return self.generic.gmem_prepare(kvm, gfn, pfn, max_order);
        }
        self.sev_gmem_prepare(pfn, gfn, max_order)
    }

    fn gmem_invalidate(&self, start: Pfn, end: Pfn) {
        // static_call(gmem_invalidate) is sev_gmem_invalidate for every VM of an SNP host.
        sev_gmem_invalidate(&self.host, start, end);
    }

    fn gmem_max_mapping_level(&self, kvm: &Kvm, pfn: Pfn, is_private: bool) -> Option<PgLevel> {
        if !self.sev_snp_guest() {
            return self.generic.gmem_max_mapping_level(kvm, pfn, is_private);
        }
        self.sev_gmem_max_mapping_level(pfn)
    }

    fn post_populate(
        &self,
        kvm: &Kvm,
        gfn: Gfn,
        pfn: Pfn,
        source: &PopulateSource<'_>,
        order: u8,
        opaque: &mut dyn Any,
    ) -> KResult<()> {
        if self.vm_type == VmType::SevSnp {
            // An SNP guest is populated by KVM_SEV_SNP_LAUNCH_UPDATE, whose callback needs the
            // calling task (its /dev/sev descriptor): see SvmVm::snp_launch_update.
            return Err(Errno::EINVAL);
        }
        self.generic.post_populate(kvm, gfn, pfn, source, order, opaque)
    }

    fn mem_enc_ioctl(&self, kvm: &Arc<Kvm>, current: Current<'_>, argp: u64) -> KResult<()> {
        sev_mem_enc_ioctl(self, kvm, current, argp)
    }

    fn vcpu_create(&self, _kvm: &Kvm, _vcpu_id: u32) -> KResult<Box<dyn Any + Send + Sync>> {
        let mut state = SevVcpuState::default();
        if self.sev_es_guest() {
            // svm_vcpu_create: snp_safe_alloc_page for the VMSA (never 2M aligned, the SNP
            // erratum); sev_es_init_vmcb points vmsa_pa at it.
            let mem = &self.host.machine().mem;
            let first = mem.alloc(0).map_err(|_| Errno::ENOMEM)?;
            let vmsa = if first.0 % PAGES_PER_2M == 0 {
                let other = mem.alloc(0).map_err(|_| Errno::ENOMEM);
                Folio::from_pfn(mem, first).put();
                other?
            } else {
                first
            };
            mem.clear(vmsa);
            state.vmsa = Some(vmsa);
            state.vmsa_pa = Some(vmsa);
        }
        Ok(Box::new(SevVcpu {
            state: Mutex::new(&SEV_VCPU_LOCK, state),
            psc: Mutex::new(&SEV_VCPU_PSC_LOCK, crate::sev::ghcb::PscState::default()),
        }))
    }

    fn vcpu_free(&self, kvm: &Kvm, vcpu: &KvmVcpu) {
        // sev_free_vcpu.
        let Some(sev) = vcpu.arch::<SevVcpu>() else { return };
        let mut state = sev.state.lock();
        if let Some(pfn) = state.vmsa_pa.take() {
            if state.vmsa_loaded {
                self.host.rmp().set_vmsa_in_use(pfn, false);
            }
        }
        let Some(vmsa) = state.vmsa.take() else { return };
        drop(state);
        // If it's an SNP guest, the VMSA was marked in the RMP table as a guest-owned page:
        // transition it to hypervisor state before releasing it back to the system.
        if self.sev_snp_guest() {
            if matches!(self.host.snp_lookup_rmpentry(vmsa), Ok((true, _))) {
                let reclaimed = self.snp_page_reclaim_if_needed(kvm, vmsa);
                if reclaimed.is_err() {
                    return;
                }
            }
            self.host.clflush_cache_range(vmsa, 1);
        }
        Folio::from_pfn(&self.host.machine().mem, vmsa).put();
    }

    fn vm_destroy(&self, kvm: &Kvm) {
        self.sev_vm_destroy(kvm);
    }

    fn unmap_gfn_range(&self, kvm: &Kvm, range: &gmem_kvm::mmu::KvmGfnRange) {
        crate::sev::ghcb::snp_zap_guest_vmsas(self, kvm, range);
    }

    fn init_pre_fault_allowed(&self, vm_type: VmType) -> bool {
        match vm_type {
            VmType::Default | VmType::SwProtected => true,
            // svm_vm_init: pre_fault_allowed = !has_private_mem.
            other => !other.has_private_mem(),
        }
    }

    fn vcpu_pre_run(&self, kvm: &Kvm, vcpu: &KvmVcpu) -> Result<(), RunError> {
        // svm_vcpu_pre_run: an SEV VM must be initialised (KVM_SEV_INIT2) before it runs.
        if self.info.lock().need_init {
            return Err(RunError::Errno(Errno::EINVAL));
        }
        let Some(sev) = vcpu.arch::<SevVcpu>() else { return Ok(()) };
        if !self.sev_es_guest() {
            return Ok(());
        }
        // KVM_REQ_UPDATE_PROTECTED_GUEST_STATE. A reload that must wait for an invalidation
        // (F11) made the request again: vcpu_enter_guest cancels the entry and vcpu_run comes
        // back (it drops its locks and reschedules); a vCPU that cannot get its VMSA in
        // FAULT_RETRY_LIMIT tries is reported and the run ends with EINTR, as a signal would end
        // the loop.
        let mut attempts = 0;
        while crate::sev::ghcb::sev_snp_init_protected_guest_state(self, kvm, sev) {
            attempts += 1;
            if attempts > FAULT_RETRY_LIMIT {
                kvm.machine().warnings.report(
                    WarnKind::Warn,
                    format!(
                        "vCPU {}: its guest VMSA reload made no progress in {FAULT_RETRY_LIMIT} tries",
                        vcpu.vcpu_id()
                    ),
                );
                return Err(RunError::Errno(Errno::EINTR));
            }
            gmem_sync::thread::backoff(attempts);
        }
        let mut state = sev.state.lock();
        // pre_sev_run: reject KVM_RUN with an invalid VMSA.
        let Some(vmsa_pa) = state.vmsa_pa else { return Err(RunError::Errno(Errno::EINVAL)) };
        // VMRUN of an SNP guest whose VMSA was never launched fails the entry (SVM_EXIT_ERR).
        if self.sev_snp_guest() && !state.guest_state_protected {
            return Err(RunError::Exit(VcpuExit::FailEntry { reason: SVM_EXIT_ERR }));
        }
        // VMRUN checks that a guest-provided VMSA is one in the RMP (the guest's RMPADJUST made
        // it so), owned by this guest.
        if state.snp_has_guest_vmsa {
            let entry = self.host.rmp().read(vmsa_pa).unwrap_or_default();
            if !entry.assigned || !entry.vmsa || entry.asid != self.asid() {
                return Err(RunError::Exit(VcpuExit::FailEntry { reason: SVM_EXIT_ERR }));
            }
        }
        if !state.vmsa_loaded {
            self.host.rmp().set_vmsa_in_use(vmsa_pa, true);
            state.vmsa_loaded = true;
        }
        // VMRUN/#VMEXIT save the guest's state into its VMSA through the guest's key.
        self.host.rmp().note_guest_write(vmsa_pa);
        Ok(())
    }

    fn checks_guest_accesses(&self) -> bool {
        self.vm_type == VmType::SevSnp
    }

    fn guest_access_check(&self, _kvm: &Kvm, access: &GuestAccess) -> Result<(), GuestFault> {
        if !self.sev_snp_guest() {
            return Ok(());
        }
        let rmp = self.host.rmp();
        rmp.check_guest_access(
            self.asid(),
            access.gfn.to_gpa().0,
            access.pfn,
            access.npt_level,
            access.private,
            access.write,
        )?;
        if access.write && access.private {
            // The store goes through the guest's key: its lines for the frame may be dirty.
            rmp.note_guest_write(access.pfn);
        }
        Ok(())
    }

    fn npf_is_private(&self, error_code: u64) -> Option<bool> {
        // npf_interception: an SNP guest's fault is private iff the access was encrypted.
        self.sev_snp_guest().then_some(error_code & PFERR_GUEST_ENC_MASK != 0)
    }

    fn handle_npf(&self, kvm: &Kvm, _vcpu: &KvmVcpu, gpa: u64, error_code: u64) {
        if self.sev_snp_guest() && error_code & PFERR_GUEST_RMP_MASK != 0 {
            self.sev_handle_rmp_fault(kvm, gpa, error_code);
        }
    }

    fn check_invariants(
        &self,
        kvm: &Kvm,
        vms: &[&Arc<Kvm>],
        gmem_files: &[(&gmem_mm::file::FileRef, &gmem_kvm::guest_memfd::KvmGmem)],
        out: &mut Vec<gmem_kvm::invariants::Violation>,
    ) {
        crate::sev::invariants::check(self, kvm, vms, gmem_files, out);
    }
}

impl SvmVm {
    /// A launched VMSA is firmware-owned: reclaim it first; a plain assigned one only needs the
    /// RMPUPDATE (`kvm_rmp_make_shared`).
    fn snp_page_reclaim_if_needed(&self, kvm: &Kvm, pfn: Pfn) -> KResult<()> {
        match self.host.rmp().read(pfn) {
            Some(entry) if entry.immutable || entry.vmsa => self.snp_page_reclaim(kvm, pfn),
            _ => self.kvm_rmp_make_shared(kvm, pfn, PgLevel::Level4K),
        }
    }
}

/// `SVM_EXIT_ERR`: VMRUN's exit code for an invalid guest state.
pub const SVM_EXIT_ERR: u64 = u64::MAX;

/// The firmware status a failed SNP command left in `kvm_sev_cmd.error`, by name.
pub fn fw_error_name(code: u32) -> String {
    SevRet::ALL
        .into_iter()
        .find(|ret| ret.code() == code)
        .map_or_else(|| format!("{code:#x}"), |ret| ret.name().to_string())
}
