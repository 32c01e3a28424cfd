//! The TDX module: the firmware that runs in SEAM mode and answers the host's SEAMCALLs
//! (`arch-and-mmu.md` §2.1–§2.2, §2.9). One [`TdxModule`] per host machine holds what is
//! host-wide (the PAMT, the key ownership table, the TDs by their TDR page); each TD's state (its
//! control pages, HKID, lifecycle, operation state, S-EPT, MRTD, epoch and vCPUs) hangs off it.
//!
//! Each SEAMCALL KVM uses is one method named after the kernel's wrapper (`tdh_mem_page_aug`)
//! taking the wrapper's operands: host pages as frames, `gpa` and `level` as the wrapper takes
//! them (the method composes RCX = `gpa | level` and decodes it as the module does, so bad
//! operands get `TDX_OPERAND_INVALID`, never a panic). It returns the outputs the kernel reads
//! on success, or a [`SeamcallError`]: the status with the extended error information (the
//! S-EPT entry and its level and state) the kernel reads on failure.
//!
//! # Phases (T2)
//!
//! A TD's key lifecycle is `HKID_ASSIGNED` (MNG.CREATE) → `KEYS_CONFIGURED` (MNG.KEY.CONFIG) →
//! `BLOCKED` (MNG.VPFLUSHDONE) → `TEARDOWN` (MNG.KEY.FREEID); its operation state is
//! `UNINITIALIZED` → `INITIALIZED` (MNG.INIT, once every TDCS page was added) → `RUNNABLE`
//! (MR.FINALIZE). PAGE.ADD and MR.EXTEND need `INITIALIZED`; PAGE.AUG and VP.ENTER need
//! `RUNNABLE`; every S-EPT SEAMCALL needs the keys configured; PHYMEM.PAGE.RECLAIM of a TD's page
//! needs `TEARDOWN` (the HKID released).
//!
//! # TLB tracking (T4)
//!
//! RANGE.BLOCK records the TD epoch in the blocked page's PAMT entry (`BEPOCH`); TRACK increments
//! the epoch, and is refused while a vCPU is still inside the TD with an epoch before the
//! current one; PAGE.REMOVE of a blocked page needs its tracking done: the epoch moved past
//! BEPOCH and no vCPU that entered at BEPOCH or before is still inside (the module's
//! `is_tlb_tracked`). Before MR.FINALIZE no vCPU has run, so REMOVE needs neither the block nor
//! the tracking (as the module's `op_state_is_tlb_tracking_required`).
//!
//! A TRACK refused because a vCPU is still in the previous epoch returns
//! `TDX_PREVIOUS_TLB_EPOCH_BUSY`, the module's code for it. The kernel's `tdx_track` handles only
//! `TDX_OPERAND_BUSY` (it kicks every vCPU out and retries once) and treats anything else as a
//! `KVM_BUG_ON`: KVM's protocol (kick every vCPU out after each TRACK) means the previous epoch
//! is always empty when it tracks again, so the model's `PREVIOUS_TLB_EPOCH_BUSY` is a KVM bug
//! surfacing where the kernel would hit it. `TDX_OPERAND_BUSY` on `TD_EPOCH` is what TRACK
//! returns when it cannot take the epoch lock (a concurrent TRACK, or a VP.ENTER holding it).
//!
//! # Contention
//!
//! The module takes its locks without waiting and returns `TDX_OPERAND_BUSY` with the operand
//! whose lock is held, changing nothing. The model has the module's three per-TD locks, each a
//! `gmem_sync` lock taken with `try_*`:
//!
//! * the TDR lock: shared by the memory SEAMCALLs and the vCPU ones that name a TDVPR
//!   (VP.ADDCX, VP.INIT, VP.FLUSH, VP.ENTER), exclusive for the management ones (KEY.CONFIG,
//!   MNG.ADDCX, MNG.INIT, VP.CREATE, MR.FINALIZE, VPFLUSHDONE, KEY.FREEID, RECLAIM of the TDR).
//!   The TD's lifecycle and operation state change only under it held exclusively. An explicit
//!   TDR operand is
//!   reported by its register (`RCX` or `RDX`, as the module does); an implicit one (found
//!   through a TDVPR or a reclaimed page's owner) as `TDX_OPERAND_ID_TDR`;
//! * the S-EPT tree lock (`TDX_OPERAND_ID_SEPT`): shared by SEPT.ADD, PAGE.ADD, PAGE.AUG,
//!   PAGE.REMOVE, MR.EXTEND and the guest's ACCEPT; exclusive for RANGE.BLOCK and SEPT.REMOVE
//!   (and, in the real module, TDH.VP.ENTER's zero-step mitigation: [`Td::try_hold`] models it);
//! * the epoch lock (`TDX_OPERAND_ID_TD_EPOCH`): exclusive for TRACK, shared for VP.ENTER.
//!
//! The data behind them (the TD's control state, its S-EPT, its epoch, the PAMT) is kept under
//! short blocking locks, and no SEAMCALL holds one of those while it takes a modelled lock: a
//! memory SEAMCALL copies the TD's state it checks (stable while it holds the TDR lock shared)
//! and lets go of it, so two concurrent SEAMCALLs really meet on the modelled locks. Under the
//! modelled locks a SEAMCALL's checks and effect are atomic. A per-entry S-EPT lock is not
//! modelled: two SEAMCALLs on one entry under the shared tree lock are serialised instead of
//! one of them seeing BUSY on `RCX`.
//!
//! # What else the model decides
//!
//! * **KeyIDs**: the platform has `nr_keyids` TDX KeyIDs from `keyid_start`; the first is the
//!   module's global KeyID, the rest are for TDs. The kernel's allocator of TD KeyIDs
//!   (`tdx_guest_keyid_alloc` / `_free`, an IDA in the host kernel) is here too
//!   ([`TdxModule::guest_keyid_alloc`]); the module's key ownership table is separate and is
//!   what MNG.CREATE and KEY.FREEID change.
//! * **One package**: MNG.KEY.CONFIG and PHYMEM.CACHE.WB act on the whole machine once. CACHE.WB
//!   writes back the lines of every TD that passed VPFLUSHDONE and can be made to return
//!   `TDX_INTERRUPTED_RESUMABLE` ([`TdxModule::set_cache_wb_interruptions`]); resuming without an
//!   interrupted one is `TDX_WBCACHE_RESUME_ERROR`; with nothing to write back it returns
//!   `TDX_NO_HKID_READY_TO_WBCACHE`, which the kernel treats as success.
//! * **Which status for which refusal** where KVM treats every failure alike (`KVM_BUG_ON`): a
//!   SEAMCALL that needs the keys before KEY.CONFIG gets `TDX_TD_KEYS_NOT_CONFIGURED`, after
//!   VPFLUSHDONE `TDX_LIFECYCLE_STATE_INCORRECT`; one in the wrong operation state
//!   `TDX_OP_STATE_INCORRECT`; a frame outside memory `TDX_OPERAND_ADDR_RANGE_ERROR`; a frame the
//!   host allocator never handed out `TDX_OPERAND_INVALID` (the kernel only passes pages it
//!   allocated, and the model has no memory behind the others); a page that is not `PT_NDA` where
//!   one is donated, or not the right type where one is named, `TDX_PAGE_METADATA_INCORRECT`;
//!   VP.FLUSH of a vCPU inside the TD `TDX_VCPU_STATE_INCORRECT`.
//! * **2M leaves** are not modelled: PAGE.AUG, RANGE.BLOCK of a leaf and PAGE.REMOVE at level 1
//!   return `TDX_OPERAND_INVALID` on `RCX` (KVM maps private memory at 4K only).
//! * **PAGE.ADD's source** is read with the host's KeyID: a source page a TD owns reads as zeros.
//! * Every SEAMCALL can be made to fail on purpose ([`TdxModule::inject`]): the next calls of a
//!   leaf return the given status and change nothing.

use crate::tdx::measure::{Mrtd, MrtdRecord, MRTD_SIZE, MR_EXTEND_CHUNK};
use crate::tdx::pamt::{FrameState, PageSize, PageType, Pamt, PamtEntry};
use crate::tdx::sept::{
    level_bytes, level_state, LeafState, SeptEntry, SeptTree, WalkFailure, SEPT_ROOT_LEVEL, TDX_SHARED_BIT,
};
use crate::tdx::status::*;
use gmem_mm::types::PAGE_SIZE;
use gmem_mm::{Machine, Pfn};
use gmem_sync::atomic::{AtomicU64, Ordering};
use gmem_sync::{Arc, LockClass, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The module's host-wide state: the KOT, KeyIDs, injected faults, counters, CACHE.WB progress.
static TDX_MODULE_LOCK: LockClass = LockClass::new("tdx module");
/// The PAMT.
static TDX_PAMT_LOCK: LockClass = LockClass::new("tdx PAMT");
/// The TDs by TDR, and the vCPUs by TDVPR (the model's lookup tables; leaves).
static TDX_TDS_LOCK: LockClass = LockClass::new("tdx TDs");
static TDX_VCPUS_LOCK: LockClass = LockClass::new("tdx vCPUs");
/// The module's per-TD locks (taken with try only).
static TDX_TDR_LOCK: LockClass = LockClass::new("tdx TDR lock");
static TDX_SEPT_TREE_LOCK: LockClass = LockClass::new("tdx secure_ept_lock");
static TDX_EPOCH_LOCK: LockClass = LockClass::new("tdx epoch_lock");
/// The data behind them, taken after the locks above and in this order: S-EPT → epoch → TD state
/// → PAMT → module → the lookup tables.
static TDX_TD_STATE_LOCK: LockClass = LockClass::new("tdx TDR/TDCS state");
static TDX_SEPT_LOCK: LockClass = LockClass::new("tdx S-EPT");
static TDX_EPOCH_STATE_LOCK: LockClass = LockClass::new("tdx TD epoch");

/// The platform's TDX configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TdxConfig {
    /// The first TDX KeyID (`tdx_keyid_start`: after the MKTME KeyIDs). It is the module's
    /// global KeyID; TDs get the ones after it.
    pub keyid_start: u16,
    /// How many TDX KeyIDs the platform has (`nr_tdx_keyids`, the global one included).
    pub nr_keyids: u16,
    /// TDCS pages per TD (`tdcs_nr_pages`): MNG.ADDCX calls before MNG.INIT.
    pub tdcs_pages: usize,
    /// TDCX pages per vCPU besides its TDVPR (`tdcx_nr_pages`): VP.ADDCX calls before VP.INIT.
    pub tdcx_pages: usize,
    /// `MAX_VCPUS_PER_TD`.
    pub max_vcpus_per_td: u32,
}

impl Default for TdxConfig {
    fn default() -> Self {
        TdxConfig { keyid_start: 32, nr_keyids: 16, tdcs_pages: 6, tdcx_pages: 5, max_vcpus_per_td: 1024 }
    }
}

/// The parts of `TD_PARAMS` (MNG.INIT) the model reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TdParams {
    /// `MAX_VCPUS`.
    pub max_vcpus: u32,
    /// `ATTRIBUTES.SEPT_VE_DISABLE`: a guest access to a PENDING page is an EPT violation the host
    /// sees (and KVM kills the TD for), not a #VE in the guest.
    pub sept_ve_disable: bool,
}

impl Default for TdParams {
    fn default() -> Self {
        TdParams { max_vcpus: 8, sept_ve_disable: true }
    }
}

/// A TD's key lifecycle (`TDR.LIFECYCLE_STATE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TdLifecycle {
    /// `TD_HKID_ASSIGNED`: after MNG.CREATE.
    HkidAssigned,
    /// `TD_KEYS_CONFIGURED`: after MNG.KEY.CONFIG; the TD can be built and run.
    KeysConfigured,
    /// `TD_BLOCKED`: after MNG.VPFLUSHDONE; waiting for CACHE.WB and KEY.FREEID.
    Blocked,
    /// `TD_TEARDOWN`: after MNG.KEY.FREEID; the HKID is released, pages can be reclaimed.
    Teardown,
}

/// A TD's operation state (`TDCS.OP_STATE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TdOpState {
    /// Before MNG.INIT.
    Uninitialized,
    /// After MNG.INIT: the image is being built (PAGE.ADD, MR.EXTEND).
    Initialized,
    /// After MR.FINALIZE: MRTD is frozen; vCPUs can run; PAGE.AUG.
    Runnable,
}

/// What PHYMEM.PAGE.RECLAIM returns: RCX, RDX and R8 (the kernel prints them on failure).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReclaimOut {
    /// The page's type before the reclaim.
    pub page_type: PageType,
    /// Its owner TD's TDR.
    pub owner: Pfn,
    /// Its size.
    pub size: PageSize,
}

/// A vCPU as [`TdxModule::td_info`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VcpuInfo {
    /// Its TDVPR page.
    pub tdvpr: Pfn,
    /// Its TDCX pages.
    pub tdcx: Vec<Pfn>,
    /// VP.INIT ran.
    pub initialized: bool,
    /// A logical processor holds it (VP.INIT or VP.ENTER since the last VP.FLUSH).
    pub associated: bool,
    /// The epoch it entered the TD with, while it is inside.
    pub in_td_epoch: Option<u64>,
}

/// What `TDH.VP.ENTER` did besides entering: the TD epoch the vCPU now runs in, and whether the
/// module flushed the vCPU's translations of the TD's private memory first. The module tracks
/// TLB epochs per TD (`TDH.MEM.TRACK` advances the epoch); an entry in a later epoch than the
/// vCPU's previous entry flushes the private translations it may still cache (the flush that
/// makes a BLOCK + TRACK + kick sufficient before `TDH.MEM.PAGE.REMOVE`). The caller applies it
/// to the vCPU's TLB, which the model keeps outside the module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VpEntry {
    /// The TD epoch of this entry.
    pub epoch: u64,
    /// The vCPU's private translations were flushed (first entry, or the epoch moved since its
    /// last entry).
    pub flush_private_tlb: bool,
}

/// A machine check a TD took reading a line the host poisoned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TdMachineCheck {
    /// The GPA read.
    pub gpa: u64,
    /// The frame.
    pub pfn: Pfn,
}

/// One TD as [`TdxModule::td_info`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TdInfo {
    /// Its TDR page.
    pub tdr: Pfn,
    /// Its HKID (kept after KEY.FREEID, for reports).
    pub hkid: u16,
    /// The key lifecycle.
    pub lifecycle: TdLifecycle,
    /// The operation state.
    pub op_state: TdOpState,
    /// The TD epoch.
    pub epoch: u64,
    /// The TDCS pages added so far.
    pub tdcs: Vec<Pfn>,
    /// The TD_PARAMS of MNG.INIT.
    pub params: Option<TdParams>,
    /// The vCPUs, by TDVPR.
    pub vcpus: Vec<VcpuInfo>,
    /// MRTD, once finalised.
    pub mrtd: Option<[u8; MRTD_SIZE]>,
    /// Whether CACHE.WB wrote its key's lines back since VPFLUSHDONE.
    pub wbcache_done: bool,
    /// The machine checks it took.
    pub machine_checks: Vec<TdMachineCheck>,
    /// Guest accesses to a PENDING page that exited as the "pending" EPT violation (with
    /// `SEPT_VE_DISABLE`; without it the guest takes a #VE instead).
    pub pending_violations: u64,
}

/// A vCPU's control state.
#[derive(Clone, Debug, Default)]
pub(crate) struct Vcpu {
    pub(crate) tdcx: Vec<Pfn>,
    pub(crate) initialized: bool,
    pub(crate) associated: bool,
    /// The TD epoch of its last TD entry (`None` before the first): an entry in a later epoch
    /// flushes the vCPU's private translations first.
    pub(crate) last_entry_epoch: Option<u64>,
}

/// The TDR and TDCS of one TD (what the model keeps of them).
#[derive(Clone, Debug)]
pub(crate) struct TdState {
    pub(crate) hkid: u16,
    pub(crate) lifecycle: TdLifecycle,
    pub(crate) op_state: TdOpState,
    pub(crate) tdcs: Vec<Pfn>,
    pub(crate) params: Option<TdParams>,
    pub(crate) mrtd: Mrtd,
    /// How many records MRTD had when MR.FINALIZE froze it (T10).
    pub(crate) records_at_finalize: Option<usize>,
    pub(crate) vcpus: BTreeMap<u64, Vcpu>,
    pub(crate) wbcache_done: bool,
    pub(crate) machine_checks: Vec<TdMachineCheck>,
    /// Guest accesses to a PENDING page that exited as the "pending" EPT violation (the TD has
    /// `SEPT_VE_DISABLE`): each one is fatal for the TD (T7).
    pub(crate) pending_violations: u64,
}

/// The epoch tracking state of one TD (`TDCS.EPOCH_TRACKING`).
#[derive(Clone, Debug, Default)]
pub(crate) struct EpochState {
    pub(crate) epoch: u64,
    /// The vCPUs inside the TD (TDVPR → the epoch they entered with).
    pub(crate) in_td: BTreeMap<u64, u64>,
}

impl EpochState {
    /// `is_tlb_tracked(bepoch)`: a TRACK followed the block and no vCPU that could hold a
    /// translation from before it is still inside.
    pub(crate) fn is_tracked(&self, bepoch: u64) -> bool {
        if bepoch.saturating_add(1) < self.epoch {
            return true;
        }
        bepoch.saturating_add(1) == self.epoch && self.in_td.values().all(|&entered| entered > bepoch)
    }
}

/// One TD inside the module. Opaque: reach its state through [`TdxModule::td_info`]; hold one
/// of its locks (to model a concurrent SEAMCALL or TDCALL) with [`Td::try_hold`].
pub struct Td {
    tdr: Pfn,
    tdr_lock: RwLock<()>,
    pub(crate) state: Mutex<TdState>,
    sept_lock: RwLock<()>,
    pub(crate) sept: Mutex<SeptTree>,
    epoch_lock: RwLock<()>,
    pub(crate) epoch: Mutex<EpochState>,
}

impl fmt::Debug for Td {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Td").field("tdr", &self.tdr).finish()
    }
}

/// One of a TD's module locks, for [`Td::try_hold`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TdLock {
    /// The TDR lock, shared (a memory SEAMCALL in flight).
    TdrShared,
    /// The TDR lock, exclusive (a management SEAMCALL in flight).
    TdrExclusive,
    /// The S-EPT tree lock, shared (a guest ACCEPT in flight).
    SeptShared,
    /// The S-EPT tree lock, exclusive (VP.ENTER's zero-step mitigation, RANGE.BLOCK).
    SeptExclusive,
    /// The epoch lock, shared (a VP.ENTER in flight).
    EpochShared,
    /// The epoch lock, exclusive (a TRACK in flight).
    EpochExclusive,
}

/// A held module lock; released when dropped.
pub struct HeldTdLock<'a> {
    _guard: HeldGuard<'a>,
}

enum HeldGuard<'a> {
    Read(#[allow(dead_code)] RwLockReadGuard<'a, ()>),
    Write(#[allow(dead_code)] RwLockWriteGuard<'a, ()>),
}

impl fmt::Debug for HeldTdLock<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self._guard {
            HeldGuard::Read(_) => "shared",
            HeldGuard::Write(_) => "exclusive",
        };
        f.debug_struct("HeldTdLock").field("mode", &mode).finish()
    }
}

/// What a memory SEAMCALL reads of the TD's control state: copied under the state lock and used
/// after it is released. The fields only change under the TDR lock held exclusively, which a
/// memory SEAMCALL excludes by holding it shared.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TdView {
    pub(crate) hkid: u16,
    pub(crate) lifecycle: TdLifecycle,
    pub(crate) op_state: TdOpState,
    pub(crate) params: Option<TdParams>,
}

impl Td {
    pub(crate) fn view(&self) -> TdView {
        let state = self.state.lock();
        TdView { hkid: state.hkid, lifecycle: state.lifecycle, op_state: state.op_state, params: state.params }
    }

    fn new(tdr: Pfn, hkid: u16) -> Td {
        Td {
            tdr,
            tdr_lock: RwLock::new(&TDX_TDR_LOCK, ()),
            state: Mutex::new(
                &TDX_TD_STATE_LOCK,
                TdState {
                    hkid,
                    lifecycle: TdLifecycle::HkidAssigned,
                    op_state: TdOpState::Uninitialized,
                    tdcs: Vec::new(),
                    params: None,
                    mrtd: Mrtd::new(),
                    records_at_finalize: None,
                    vcpus: BTreeMap::new(),
                    wbcache_done: false,
                    machine_checks: Vec::new(),
                    pending_violations: 0,
                },
            ),
            sept_lock: RwLock::new(&TDX_SEPT_TREE_LOCK, ()),
            sept: Mutex::new(&TDX_SEPT_LOCK, SeptTree::new()),
            epoch_lock: RwLock::new(&TDX_EPOCH_LOCK, ()),
            epoch: Mutex::new(&TDX_EPOCH_STATE_LOCK, EpochState::default()),
        }
    }

    /// The TD's TDR page.
    pub fn tdr(&self) -> Pfn {
        self.tdr
    }

    /// Takes one of the TD's module locks as a concurrent SEAMCALL or TDCALL would hold it, if
    /// it is free (`None` if not): SEAMCALLs that need it see `TDX_OPERAND_BUSY` until the
    /// returned guard is dropped.
    pub fn try_hold(&self, lock: TdLock) -> Option<HeldTdLock<'_>> {
        let guard = match lock {
            TdLock::TdrShared => HeldGuard::Read(self.tdr_lock.try_read()?),
            TdLock::TdrExclusive => HeldGuard::Write(self.tdr_lock.try_write()?),
            TdLock::SeptShared => HeldGuard::Read(self.sept_lock.try_read()?),
            TdLock::SeptExclusive => HeldGuard::Write(self.sept_lock.try_write()?),
            TdLock::EpochShared => HeldGuard::Read(self.epoch_lock.try_read()?),
            TdLock::EpochExclusive => HeldGuard::Write(self.epoch_lock.try_write()?),
        };
        Some(HeldTdLock { _guard: guard })
    }
}

/// An armed fault: after `after` more calls of `leaf`, the next `count` return `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct InjectedFault {
    leaf: SeamcallLeaf,
    status: TdxStatus,
    after: u32,
    count: u32,
}

#[derive(Debug, Default)]
struct ModuleState {
    /// The key ownership table: HKID → the TDR of the TD that holds it.
    kot: BTreeMap<u16, Pfn>,
    /// The kernel's allocated TD KeyIDs (`tdx_guest_keyid_pool`).
    keyids_allocated: BTreeSet<u16>,
    faults: Vec<InjectedFault>,
    executed: BTreeMap<SeamcallLeaf, u64>,
    /// CACHE.WB calls still to interrupt.
    cache_wb_interruptions: u32,
    /// A CACHE.WB was interrupted and may be resumed.
    cache_wb_interrupted: bool,
}

/// The TDX module of one host.
pub struct TdxModule {
    machine: Arc<Machine>,
    config: TdxConfig,
    state: Mutex<ModuleState>,
    pub(crate) pamt: Mutex<Pamt>,
    /// `pamt.tracked()`, readable without the lock (the host-write check's fast path).
    pub(crate) pamt_tracked: AtomicU64,
    tds: Mutex<BTreeMap<u64, Arc<Td>>>,
    /// TDVPR → TDR.
    vcpus: Mutex<BTreeMap<u64, Pfn>>,
}

impl fmt::Debug for TdxModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One lock at a time: the PAMT is taken before the TD table elsewhere.
        let pamt = format!("{:?}", *self.pamt.lock());
        let tds = self.tds.lock().len();
        f.debug_struct("TdxModule").field("config", &self.config).field("tds", &tds).field("pamt", &pamt).finish()
    }
}

fn fail(class: u64, operand: u32) -> SeamcallError {
    SeamcallError::new(TdxStatus::new(class, operand))
}

fn busy(operand: u32) -> SeamcallError {
    fail(TDX_OPERAND_BUSY, operand)
}

/// `TDX_EPT_WALK_FAILED` on RCX with the entry the walk stopped at.
fn walk_failed(failure: WalkFailure) -> SeamcallError {
    SeamcallError {
        status: TdxStatus::new(TDX_EPT_WALK_FAILED, TDX_OPERAND_ID_RCX),
        entry: failure.entry.arch_entry(failure.level),
        level_state: level_state(failure.level, failure.entry.state()),
    }
}

/// `class` on RCX with `entry` (at `level`) as the extended information.
fn entry_error(class: u64, entry: SeptEntry, level: u8) -> SeamcallError {
    SeamcallError {
        status: TdxStatus::new(class, TDX_OPERAND_ID_RCX),
        entry: entry.arch_entry(level),
        level_state: level_state(level, entry.state()),
    }
}

/// The TD must have its keys configured and not be on its way out.
fn need_keys(lifecycle: TdLifecycle) -> SeamcallResult<()> {
    match lifecycle {
        TdLifecycle::KeysConfigured => Ok(()),
        TdLifecycle::HkidAssigned => Err(fail(TDX_TD_KEYS_NOT_CONFIGURED, 0)),
        TdLifecycle::Blocked | TdLifecycle::Teardown => Err(fail(TDX_LIFECYCLE_STATE_INCORRECT, 0)),
    }
}

/// The TD's operation state must be one of `allowed`.
fn need_op(op_state: TdOpState, allowed: &[TdOpState]) -> SeamcallResult<()> {
    if allowed.contains(&op_state) {
        Ok(())
    } else {
        Err(fail(TDX_OP_STATE_INCORRECT, 0))
    }
}

const BUILT: &[TdOpState] = &[TdOpState::Initialized, TdOpState::Runnable];

/// Decodes the page-info operand RCX = `gpa | level` as the module's `verify_page_info_input`:
/// the level in bits 2:0 within `min..=max`, bits 11:3 and 63:52 clear, the GPA aligned to the
/// level and private (below the shared bit). Returns `(gpa, level)`.
pub(crate) fn page_info(gpa: u64, level: u64, min: u8, max: u8) -> SeamcallResult<(u64, u8)> {
    let invalid = || fail(TDX_OPERAND_INVALID, TDX_OPERAND_ID_RCX);
    let rcx = gpa | level;
    if level > 7 || gpa & 0xfff != 0 || rcx & 0xff8 != 0 {
        return Err(invalid());
    }
    let level = (rcx & 7) as u8;
    let gpa = rcx & !0xfff;
    if level < min || level > max || gpa & (level_bytes(level) - 1) != 0 || gpa >= TDX_SHARED_BIT {
        return Err(invalid());
    }
    Ok((gpa, level))
}

impl TdxModule {
    /// The TDX module of `machine`, loaded and initialised (`tdx_enable`: TDMRs over all of
    /// memory, every convertible frame `PT_NDA`), with the default platform configuration.
    pub fn new(machine: &Arc<Machine>) -> Arc<TdxModule> {
        TdxModule::with_config(machine, TdxConfig::default())
    }

    /// The TDX module of `machine` on a platform configured as `config`.
    pub fn with_config(machine: &Arc<Machine>, config: TdxConfig) -> Arc<TdxModule> {
        Arc::new(TdxModule {
            machine: machine.clone(),
            state: Mutex::new(&TDX_MODULE_LOCK, ModuleState::default()),
            pamt: Mutex::new(&TDX_PAMT_LOCK, Pamt::new(machine.mem.total_pages())),
            pamt_tracked: AtomicU64::new(0),
            tds: Mutex::new(&TDX_TDS_LOCK, BTreeMap::new()),
            vcpus: Mutex::new(&TDX_VCPUS_LOCK, BTreeMap::new()),
            config,
        })
    }

    /// The machine.
    pub fn machine(&self) -> &Arc<Machine> {
        &self.machine
    }

    /// The platform configuration.
    pub fn config(&self) -> &TdxConfig {
        &self.config
    }

    /// The module's global KeyID (`tdx_global_keyid`).
    #[doc(alias = "tdx_global_keyid")]
    pub fn global_keyid(&self) -> u16 {
        self.config.keyid_start
    }

    /// Whether `keyid` is a TD KeyID of the platform.
    pub fn is_guest_keyid(&self, keyid: u16) -> bool {
        keyid > self.config.keyid_start
            && u32::from(keyid) < u32::from(self.config.keyid_start) + u32::from(self.config.nr_keyids)
    }

    /// `tdx_guest_keyid_alloc`: the lowest free TD KeyID (the kernel's IDA), or `None` when all
    /// are taken (the kernel's `-ENOSPC`).
    #[doc(alias = "tdx_guest_keyid_alloc")]
    pub fn guest_keyid_alloc(&self) -> Option<u16> {
        let mut state = self.state.lock();
        let first = self.config.keyid_start.checked_add(1)?;
        let keyid = (first..self.config.keyid_start.saturating_add(self.config.nr_keyids))
            .find(|keyid| !state.keyids_allocated.contains(keyid))?;
        state.keyids_allocated.insert(keyid);
        Some(keyid)
    }

    /// `tdx_guest_keyid_free`. False if `keyid` was not allocated (an `ida_free` of a free id,
    /// which the kernel WARNs about).
    #[doc(alias = "tdx_guest_keyid_free")]
    pub fn guest_keyid_free(&self, keyid: u16) -> bool {
        self.state.lock().keyids_allocated.remove(&keyid)
    }

    /// Arms a fault: after `after` more calls of `leaf`, the next `count` return `status` and
    /// change nothing.
    pub fn inject(&self, leaf: SeamcallLeaf, status: TdxStatus, after: u32, count: u32) {
        self.state.lock().faults.push(InjectedFault { leaf, status, after, count });
    }

    /// Disarms every fault.
    pub fn clear_injected(&self) {
        self.state.lock().faults.clear();
    }

    /// How many times `leaf` was called (successfully or not).
    pub fn executed(&self, leaf: SeamcallLeaf) -> u64 {
        self.state.lock().executed.get(&leaf).copied().unwrap_or(0)
    }

    /// Makes the next `count` TDH.PHYMEM.CACHE.WB calls that have work to do return
    /// `TDX_INTERRUPTED_RESUMABLE` instead of finishing it.
    pub fn set_cache_wb_interruptions(&self, count: u32) {
        self.state.lock().cache_wb_interruptions = count;
    }

    /// Counts the call and consumes an armed fault for `leaf`, if one fires now.
    fn begin(&self, leaf: SeamcallLeaf) -> SeamcallResult<()> {
        let mut state = self.state.lock();
        *state.executed.entry(leaf).or_default() += 1;
        let mut fired = None;
        for fault in state.faults.iter_mut().filter(|fault| fault.leaf == leaf && fault.count > 0) {
            if fault.after > 0 {
                fault.after -= 1;
                continue;
            }
            fault.count -= 1;
            fired = Some(fault.status);
            break;
        }
        state.faults.retain(|fault| fault.count > 0);
        match fired {
            Some(status) => {
                tracing::debug!("TDX module: injected {status} for {leaf}");
                Err(SeamcallError::new(status))
            }
            None => Ok(()),
        }
    }

    /// Logs a failed SEAMCALL (at debug level: KVM logs the ones it does not expect).
    fn traced<T>(leaf: SeamcallLeaf, result: SeamcallResult<T>) -> SeamcallResult<T> {
        if let Err(error) = &result {
            tracing::debug!("TDX module: {leaf} failed: {error}");
        }
        result
    }

    /// A host frame operand: inside memory (else `TDX_OPERAND_ADDR_RANGE_ERROR`).
    fn hpa_check(&self, pfn: Pfn, operand: u32) -> SeamcallResult<()> {
        if pfn.0 >= self.machine.mem.total_pages() {
            return Err(fail(TDX_OPERAND_ADDR_RANGE_ERROR, operand));
        }
        Ok(())
    }

    /// A host page the module will own or read: inside memory, and a frame the host allocator
    /// has handed out (frame 0, reserved, is left to the PAMT check).
    fn page_check(&self, pfn: Pfn, operand: u32) -> SeamcallResult<()> {
        self.hpa_check(pfn, operand)?;
        if pfn.0 != 0 && !self.machine.mem.is_valid_pfn(pfn) {
            return Err(fail(TDX_OPERAND_INVALID, operand));
        }
        Ok(())
    }

    fn pamt_entry_of(&self, pfn: Pfn) -> PamtEntry {
        self.pamt.lock().entry(pfn).unwrap_or(PamtEntry { pt: PageType::Rsvd, ..PamtEntry::default() })
    }

    /// The TD whose TDR is the explicit operand `tdr` (in register `operand`).
    fn explicit_td(&self, tdr: Pfn, operand: u32) -> SeamcallResult<Arc<Td>> {
        self.hpa_check(tdr, operand)?;
        if self.pamt_entry_of(tdr).pt != PageType::Tdr {
            return Err(fail(TDX_PAGE_METADATA_INCORRECT, operand));
        }
        self.td(tdr).ok_or_else(|| fail(TDX_PAGE_METADATA_INCORRECT, operand))
    }

    /// The TD of the vCPU whose TDVPR is `tdvpr` (in register `operand`).
    fn vcpu_td(&self, tdvpr: Pfn, operand: u32) -> SeamcallResult<Arc<Td>> {
        self.hpa_check(tdvpr, operand)?;
        let entry = self.pamt_entry_of(tdvpr);
        if entry.pt != PageType::Tdvpr {
            return Err(fail(TDX_PAGE_METADATA_INCORRECT, operand));
        }
        self.td(entry.owner).ok_or_else(|| fail(TDX_PAGE_METADATA_INCORRECT, operand))
    }

    /// Donates `pfn` (the operand in `operand`) as `entry` under `key`.
    fn donate(&self, pfn: Pfn, entry: PamtEntry, key: u16, operand: u32) -> SeamcallResult<()> {
        let mut pamt = self.pamt.lock();
        let result = pamt.assign(pfn, entry, key).map_err(|_| fail(TDX_PAGE_METADATA_INCORRECT, operand));
        self.pamt_tracked.store(pamt.tracked() as u64, Ordering::Release);
        result
    }

    /// Gives `pfn` back to `PT_NDA`.
    fn release(&self, pfn: Pfn) -> PamtEntry {
        let mut pamt = self.pamt.lock();
        let old = pamt.release(pfn);
        self.pamt_tracked.store(pamt.tracked() as u64, Ordering::Release);
        old
    }

    /// The TD whose TDR is `tdr`, as a handle (to hold its locks with [`Td::try_hold`]).
    pub fn td(&self, tdr: Pfn) -> Option<Arc<Td>> {
        self.tds.lock().get(&tdr.0).cloned()
    }

    /// Every TD, by TDR.
    pub fn tds(&self) -> Vec<Arc<Td>> {
        self.tds.lock().values().cloned().collect()
    }

    /// A snapshot of the TD whose TDR is `tdr`.
    pub fn td_info(&self, tdr: Pfn) -> Option<TdInfo> {
        let td = self.td(tdr)?;
        let state = td.state.lock().clone();
        let epoch = td.epoch.lock().clone();
        Some(TdInfo {
            tdr,
            hkid: state.hkid,
            lifecycle: state.lifecycle,
            op_state: state.op_state,
            epoch: epoch.epoch,
            tdcs: state.tdcs.clone(),
            params: state.params,
            vcpus: state
                .vcpus
                .iter()
                .map(|(&tdvpr, vcpu)| VcpuInfo {
                    tdvpr: Pfn(tdvpr),
                    tdcx: vcpu.tdcx.clone(),
                    initialized: vcpu.initialized,
                    associated: vcpu.associated,
                    in_td_epoch: epoch.in_td.get(&tdvpr).copied(),
                })
                .collect(),
            mrtd: state.mrtd.value(),
            wbcache_done: state.wbcache_done,
            machine_checks: state.machine_checks.clone(),
            pending_violations: state.pending_violations,
        })
    }

    /// The TD's MRTD records so far (what PAGE.ADD and MR.EXTEND measured), and its current
    /// value (the final one once finalised).
    pub fn mrtd(&self, tdr: Pfn) -> Option<(Vec<MrtdRecord>, [u8; MRTD_SIZE])> {
        let td = self.td(tdr)?;
        let state = td.state.lock();
        Some((state.mrtd.records().to_vec(), state.mrtd.value().unwrap_or_else(|| state.mrtd.current())))
    }

    /// The S-EPT entry at `level` translating `gpa` in the TD, or where the walk to it stops;
    /// `None` if there is no such TD.
    pub fn sept_entry(&self, tdr: Pfn, gpa: u64, level: u8) -> Option<Result<SeptEntry, WalkFailure>> {
        let td = self.td(tdr)?;
        let sept = td.sept.lock();
        Some(sept.entry(gpa, level.min(SEPT_ROOT_LEVEL)))
    }

    /// A copy of the TD's S-EPT.
    pub fn sept(&self, tdr: Pfn) -> Option<SeptTree> {
        Some(self.td(tdr)?.sept.lock().clone())
    }

    /// The PAMT entry of `pfn` (`TDH.PHYMEM.PAGE.RDMD`); `None` outside memory.
    pub fn pamt_entry(&self, pfn: Pfn) -> Option<PamtEntry> {
        self.pamt.lock().entry(pfn)
    }

    /// The PAMT entry of `pfn` with what the model tracks of its cache lines and contents.
    pub fn frame_state(&self, pfn: Pfn) -> Option<FrameState> {
        self.pamt.lock().frame(pfn)
    }

    /// Every frame the PAMT has an entry for (TD-owned, or carrying residue), in pfn order.
    pub fn pamt_frames(&self) -> Vec<(Pfn, FrameState)> {
        self.pamt.lock().frames()
    }

    /// How many frames TDs own.
    pub fn td_owned_frames(&self) -> usize {
        self.pamt.lock().owned_count()
    }

    /// Test-only: overwrites a frame's PAMT state without any check (to seed invariant
    /// violations).
    #[doc(hidden)]
    pub fn forge_pamt_for_test(&self, pfn: Pfn, frame: FrameState) {
        let mut pamt = self.pamt.lock();
        pamt.forge(pfn, frame);
        self.pamt_tracked.store(pamt.tracked() as u64, Ordering::Release);
    }

    /// Test-only: measures `record` into the TD's MRTD hash without logging it, or logs it
    /// without measuring (`log_only`), even after MR.FINALIZE. False if there is no such TD.
    #[doc(hidden)]
    pub fn forge_mrtd_for_test(&self, tdr: Pfn, record: MrtdRecord, log_only: bool) -> bool {
        let Some(td) = self.td(tdr) else { return false };
        td.state.lock().mrtd.forge(record, log_only);
        true
    }

    /// Test-only: overwrites an S-EPT entry without any check. False if there is no such TD or
    /// the walk to the entry fails.
    #[doc(hidden)]
    pub fn forge_sept_for_test(&self, tdr: Pfn, gpa: u64, level: u8, entry: SeptEntry) -> bool {
        let Some(td) = self.td(tdr) else { return false };
        let mut sept = td.sept.lock();
        sept.set_entry(gpa, level.min(SEPT_ROOT_LEVEL), entry).is_ok()
    }
}

/// TD management: creation, keys, control pages, vCPUs, teardown.
impl TdxModule {
    /// `TDH.MNG.CREATE(tdr, hkid)`: the page `tdr` becomes the TDR of a new TD that will use
    /// `hkid`. Needs a `PT_NDA` page (else `PAGE_METADATA_INCORRECT` on RCX), a TD KeyID (else
    /// `OPERAND_INVALID` on RDX) no other TD holds (else `HKID_NOT_FREE` on RDX).
    pub fn tdh_mng_create(&self, tdr: Pfn, hkid: u16) -> SeamcallResult<()> {
        let leaf = SeamcallLeaf::MngCreate;
        self.begin(leaf)?;
        Self::traced(leaf, self.mng_create(tdr, hkid))
    }

    fn mng_create(&self, tdr: Pfn, hkid: u16) -> SeamcallResult<()> {
        self.page_check(tdr, TDX_OPERAND_ID_RCX)?;
        if !self.is_guest_keyid(hkid) {
            return Err(fail(TDX_OPERAND_INVALID, TDX_OPERAND_ID_RDX));
        }
        // PAMT → module (KOT) → the TD table, as everywhere.
        let mut pamt = self.pamt.lock();
        if pamt.entry(tdr).map(|entry| entry.pt) != Some(PageType::Nda) {
            return Err(fail(TDX_PAGE_METADATA_INCORRECT, TDX_OPERAND_ID_RCX));
        }
        let mut state = self.state.lock();
        if state.kot.contains_key(&hkid) {
            return Err(fail(TDX_HKID_NOT_FREE, TDX_OPERAND_ID_RDX));
        }
        pamt.assign(tdr, PamtEntry::owned(PageType::Tdr, tdr), self.global_keyid())
            .map_err(|_| fail(TDX_PAGE_METADATA_INCORRECT, TDX_OPERAND_ID_RCX))?;
        self.pamt_tracked.store(pamt.tracked() as u64, Ordering::Release);
        state.kot.insert(hkid, tdr);
        self.tds.lock().insert(tdr.0, Arc::new(Td::new(tdr, hkid)));
        Ok(())
    }

    /// `TDH.MNG.KEY.CONFIG(tdr)`: programs the TD's key on the package. A second call returns
    /// `TDX_KEY_CONFIGURED`; after VPFLUSHDONE, `TDX_KEY_STATE_INCORRECT`.
    pub fn tdh_mng_key_config(&self, tdr: Pfn) -> SeamcallResult<()> {
        let leaf = SeamcallLeaf::MngKeyConfig;
        self.begin(leaf)?;
        Self::traced(leaf, self.mng_key_config(tdr))
    }

    fn mng_key_config(&self, tdr: Pfn) -> SeamcallResult<()> {
        let td = self.explicit_td(tdr, TDX_OPERAND_ID_RCX)?;
        let _tdr = td.tdr_lock.try_write().ok_or_else(|| busy(TDX_OPERAND_ID_RCX))?;
        let mut state = td.state.lock();
        match state.lifecycle {
            TdLifecycle::HkidAssigned => {
                state.lifecycle = TdLifecycle::KeysConfigured;
                Ok(())
            }
            TdLifecycle::KeysConfigured => Err(fail(TDX_KEY_CONFIGURED, 0)),
            TdLifecycle::Blocked | TdLifecycle::Teardown => Err(fail(TDX_KEY_STATE_INCORRECT, 0)),
        }
    }

    /// `TDH.MNG.ADDCX(tdr, page)`: adds a TDCS page, before MNG.INIT.
    pub fn tdh_mng_addcx(&self, tdr: Pfn, page: Pfn) -> SeamcallResult<()> {
        let leaf = SeamcallLeaf::MngAddcx;
        self.begin(leaf)?;
        Self::traced(leaf, self.mng_addcx(tdr, page))
    }

    fn mng_addcx(&self, tdr: Pfn, page: Pfn) -> SeamcallResult<()> {
        let td = self.explicit_td(tdr, TDX_OPERAND_ID_RDX)?;
        let _tdr = td.tdr_lock.try_write().ok_or_else(|| busy(TDX_OPERAND_ID_RDX))?;
        let mut state = td.state.lock();
        need_keys(state.lifecycle)?;
        need_op(state.op_state, &[TdOpState::Uninitialized])?;
        if state.tdcs.len() >= self.config.tdcs_pages {
            return Err(fail(TDX_TDCX_NUM_INCORRECT, TDX_OPERAND_ID_RCX));
        }
        self.page_check(page, TDX_OPERAND_ID_RCX)?;
        self.donate(page, PamtEntry::owned(PageType::Tdcx, tdr), state.hkid, TDX_OPERAND_ID_RCX)?;
        state.tdcs.push(page);
        Ok(())
    }

    /// `TDH.MNG.INIT(tdr, td_params)`: every TDCS page added, the TD is initialised: the S-EPT
    /// root exists, MRTD starts.
    pub fn tdh_mng_init(&self, tdr: Pfn, params: &TdParams) -> SeamcallResult<()> {
        let leaf = SeamcallLeaf::MngInit;
        self.begin(leaf)?;
        Self::traced(leaf, self.mng_init(tdr, params))
    }

    fn mng_init(&self, tdr: Pfn, params: &TdParams) -> SeamcallResult<()> {
        let td = self.explicit_td(tdr, TDX_OPERAND_ID_RCX)?;
        let _tdr = td.tdr_lock.try_write().ok_or_else(|| busy(TDX_OPERAND_ID_RCX))?;
        let mut state = td.state.lock();
        need_keys(state.lifecycle)?;
        need_op(state.op_state, &[TdOpState::Uninitialized])?;
        if state.tdcs.len() != self.config.tdcs_pages {
            return Err(fail(TDX_TDCS_NOT_ALLOCATED, 0));
        }
        if params.max_vcpus == 0 || params.max_vcpus > self.config.max_vcpus_per_td {
            return Err(fail(TDX_OPERAND_INVALID, TDX_OPERAND_ID_RDX));
        }
        state.params = Some(*params);
        state.op_state = TdOpState::Initialized;
        state.mrtd = Mrtd::new();
        drop(state);
        // The TDR lock is held exclusively: nothing walks the tree meanwhile.
        *td.sept.lock() = SeptTree::new();
        Ok(())
    }

    /// `TDH.VP.CREATE(tdr, tdvpr)`: the page `tdvpr` becomes a new vCPU's TDVPR.
    pub fn tdh_vp_create(&self, tdr: Pfn, tdvpr: Pfn) -> SeamcallResult<()> {
        let leaf = SeamcallLeaf::VpCreate;
        self.begin(leaf)?;
        Self::traced(leaf, self.vp_create(tdr, tdvpr))
    }

    fn vp_create(&self, tdr: Pfn, tdvpr: Pfn) -> SeamcallResult<()> {
        let td = self.explicit_td(tdr, TDX_OPERAND_ID_RDX)?;
        let _tdr = td.tdr_lock.try_write().ok_or_else(|| busy(TDX_OPERAND_ID_RDX))?;
        let mut state = td.state.lock();
        need_keys(state.lifecycle)?;
        need_op(state.op_state, BUILT)?;
        let max = state.params.map_or(0, |params| params.max_vcpus);
        if state.vcpus.len() as u64 >= u64::from(max) {
            return Err(fail(TDX_MAX_VCPUS_EXCEEDED, 0));
        }
        self.page_check(tdvpr, TDX_OPERAND_ID_RCX)?;
        self.donate(tdvpr, PamtEntry::owned(PageType::Tdvpr, tdr), state.hkid, TDX_OPERAND_ID_RCX)?;
        state.vcpus.insert(tdvpr.0, Vcpu::default());
        self.vcpus.lock().insert(tdvpr.0, tdr);
        Ok(())
    }

    /// `TDH.VP.ADDCX(tdvpr, page)`: adds a TDCX page to a vCPU not yet initialised.
    pub fn tdh_vp_addcx(&self, tdvpr: Pfn, page: Pfn) -> SeamcallResult<()> {
        let leaf = SeamcallLeaf::VpAddcx;
        self.begin(leaf)?;
        Self::traced(leaf, self.vp_addcx(tdvpr, page))
    }

    fn vp_addcx(&self, tdvpr: Pfn, page: Pfn) -> SeamcallResult<()> {
        let td = self.vcpu_td(tdvpr, TDX_OPERAND_ID_RDX)?;
        let _tdr = td.tdr_lock.try_read().ok_or_else(|| busy(TDX_OPERAND_ID_TDR))?;
        let mut state = td.state.lock();
        need_keys(state.lifecycle)?;
        let hkid = state.hkid;
        let vcpu =
            state.vcpus.get_mut(&tdvpr.0).ok_or_else(|| fail(TDX_PAGE_METADATA_INCORRECT, TDX_OPERAND_ID_RDX))?;
        if vcpu.initialized {
            return Err(fail(TDX_VCPU_STATE_INCORRECT, 0));
        }
        if vcpu.tdcx.len() >= self.config.tdcx_pages {
            return Err(fail(TDX_TDCX_NUM_INCORRECT, TDX_OPERAND_ID_RCX));
        }
        self.page_check(page, TDX_OPERAND_ID_RCX)?;
        self.donate(page, PamtEntry::owned(PageType::Tdcx, td.tdr), hkid, TDX_OPERAND_ID_RCX)?;
        vcpu.tdcx.push(page);
        Ok(())
    }

    /// `TDH.VP.INIT(tdvpr, initial_rcx, x2apic_id)`: every TDCX page added, the vCPU is
    /// initialised (and associated with the calling logical processor).
    pub fn tdh_vp_init(&self, tdvpr: Pfn, initial_rcx: u64, x2apic_id: u32) -> SeamcallResult<()> {
        let leaf = SeamcallLeaf::VpInit;
        self.begin(leaf)?;
        let _ = (initial_rcx, x2apic_id);
        Self::traced(leaf, self.vp_init(tdvpr))
    }

    fn vp_init(&self, tdvpr: Pfn) -> SeamcallResult<()> {
        let td = self.vcpu_td(tdvpr, TDX_OPERAND_ID_RCX)?;
        let _tdr = td.tdr_lock.try_read().ok_or_else(|| busy(TDX_OPERAND_ID_TDR))?;
        let mut state = td.state.lock();
        need_keys(state.lifecycle)?;
        need_op(state.op_state, BUILT)?;
        let vcpu =
            state.vcpus.get_mut(&tdvpr.0).ok_or_else(|| fail(TDX_PAGE_METADATA_INCORRECT, TDX_OPERAND_ID_RCX))?;
        if vcpu.initialized {
            return Err(fail(TDX_VCPU_STATE_INCORRECT, 0));
        }
        if vcpu.tdcx.len() != self.config.tdcx_pages {
            return Err(fail(TDX_TDCX_NUM_INCORRECT, TDX_OPERAND_ID_RCX));
        }
        vcpu.initialized = true;
        vcpu.associated = true;
        Ok(())
    }

    /// `TDH.VP.FLUSH(tdvpr)`: the logical processor holding the vCPU lets go of it
    /// (`TDX_VCPU_NOT_ASSOCIATED` if none does, which the kernel ignores).
    pub fn tdh_vp_flush(&self, tdvpr: Pfn) -> SeamcallResult<()> {
        let leaf = SeamcallLeaf::VpFlush;
        self.begin(leaf)?;
        Self::traced(leaf, self.vp_flush(tdvpr))
    }

    fn vp_flush(&self, tdvpr: Pfn) -> SeamcallResult<()> {
        let td = self.vcpu_td(tdvpr, TDX_OPERAND_ID_RCX)?;
        let _tdr = td.tdr_lock.try_read().ok_or_else(|| busy(TDX_OPERAND_ID_TDR))?;
        if td.epoch.lock().in_td.contains_key(&tdvpr.0) {
            return Err(fail(TDX_VCPU_STATE_INCORRECT, 0));
        }
        let mut state = td.state.lock();
        let vcpu =
            state.vcpus.get_mut(&tdvpr.0).ok_or_else(|| fail(TDX_PAGE_METADATA_INCORRECT, TDX_OPERAND_ID_RCX))?;
        if !vcpu.associated {
            return Err(fail(TDX_VCPU_NOT_ASSOCIATED, 0));
        }
        vcpu.associated = false;
        Ok(())
    }

    /// `TDH.MNG.VPFLUSHDONE(tdr)`: no vCPU is associated any more (else
    /// `TDX_FLUSHVP_NOT_DONE`); the TD is blocked: its key's lines wait for CACHE.WB.
    pub fn tdh_mng_vpflushdone(&self, tdr: Pfn) -> SeamcallResult<()> {
        let leaf = SeamcallLeaf::MngVpflushdone;
        self.begin(leaf)?;
        Self::traced(leaf, self.mng_vpflushdone(tdr))
    }

    fn mng_vpflushdone(&self, tdr: Pfn) -> SeamcallResult<()> {
        let td = self.explicit_td(tdr, TDX_OPERAND_ID_RCX)?;
        let _tdr = td.tdr_lock.try_write().ok_or_else(|| busy(TDX_OPERAND_ID_RCX))?;
        let mut state = td.state.lock();
        if state.lifecycle != TdLifecycle::KeysConfigured {
            return Err(fail(TDX_LIFECYCLE_STATE_INCORRECT, 0));
        }
        if state.vcpus.values().any(|vcpu| vcpu.associated) {
            return Err(fail(TDX_FLUSHVP_NOT_DONE, 0));
        }
        state.lifecycle = TdLifecycle::Blocked;
        state.wbcache_done = false;
        Ok(())
    }

    /// `TDH.PHYMEM.CACHE.WB(resume)`: writes back and invalidates the cache lines of every TD
    /// key blocked by VPFLUSHDONE (see the module docs for the interruption).
    pub fn tdh_phymem_cache_wb(&self, resume: bool) -> SeamcallResult<()> {
        let leaf = SeamcallLeaf::PhymemCacheWb;
        self.begin(leaf)?;
        Self::traced(leaf, self.phymem_cache_wb(resume))
    }

    fn phymem_cache_wb(&self, resume: bool) -> SeamcallResult<()> {
        let pending: Vec<Arc<Td>> = self
            .tds()
            .into_iter()
            .filter(|td| {
                let state = td.state.lock();
                state.lifecycle == TdLifecycle::Blocked && !state.wbcache_done
            })
            .collect();
        {
            let mut state = self.state.lock();
            if resume && !state.cache_wb_interrupted {
                return Err(fail(TDX_WBCACHE_RESUME_ERROR, 0));
            }
            if pending.is_empty() && !state.cache_wb_interrupted {
                return Err(fail(TDX_NO_HKID_READY_TO_WBCACHE, 0));
            }
            if state.cache_wb_interruptions > 0 {
                state.cache_wb_interruptions -= 1;
                state.cache_wb_interrupted = true;
                return Err(fail(TDX_INTERRUPTED_RESUMABLE, 0));
            }
            state.cache_wb_interrupted = false;
        }
        let mut keys = Vec::new();
        for td in pending {
            let mut state = td.state.lock();
            if state.lifecycle == TdLifecycle::Blocked {
                state.wbcache_done = true;
                keys.push(state.hkid);
            }
        }
        let mut pamt = self.pamt.lock();
        pamt.writeback_keys(&keys);
        self.pamt_tracked.store(pamt.tracked() as u64, Ordering::Release);
        Ok(())
    }

    /// `TDH.MNG.KEY.FREEID(tdr)`: after VPFLUSHDONE and CACHE.WB (else
    /// `TDX_WBCACHE_NOT_COMPLETE`), the HKID is released and the TD is in teardown.
    pub fn tdh_mng_key_freeid(&self, tdr: Pfn) -> SeamcallResult<()> {
        let leaf = SeamcallLeaf::MngKeyFreeid;
        self.begin(leaf)?;
        Self::traced(leaf, self.mng_key_freeid(tdr))
    }

    fn mng_key_freeid(&self, tdr: Pfn) -> SeamcallResult<()> {
        let td = self.explicit_td(tdr, TDX_OPERAND_ID_RCX)?;
        let _tdr = td.tdr_lock.try_write().ok_or_else(|| busy(TDX_OPERAND_ID_RCX))?;
        let mut state = td.state.lock();
        if state.lifecycle != TdLifecycle::Blocked {
            return Err(fail(TDX_LIFECYCLE_STATE_INCORRECT, 0));
        }
        if !state.wbcache_done {
            return Err(fail(TDX_WBCACHE_NOT_COMPLETE, 0));
        }
        state.lifecycle = TdLifecycle::Teardown;
        let mut module = self.state.lock();
        if module.kot.get(&state.hkid) == Some(&tdr) {
            module.kot.remove(&state.hkid);
        }
        Ok(())
    }

    /// `TDH.PHYMEM.PAGE.RECLAIM(page)`: a page of a TD in teardown (any type: private, S-EPT,
    /// control; the TDR last, once the TD owns nothing else) goes back to `PT_NDA`. Before the
    /// HKID is released: `TDX_LIFECYCLE_STATE_INCORRECT`.
    pub fn tdh_phymem_page_reclaim(&self, page: Pfn) -> SeamcallResult<ReclaimOut> {
        let leaf = SeamcallLeaf::PhymemPageReclaim;
        self.begin(leaf)?;
        Self::traced(leaf, self.phymem_page_reclaim(page))
    }

    fn phymem_page_reclaim(&self, page: Pfn) -> SeamcallResult<ReclaimOut> {
        self.hpa_check(page, TDX_OPERAND_ID_RCX)?;
        let entry = self.pamt_entry_of(page);
        if !entry.pt.is_td_owned() {
            return Err(fail(TDX_PAGE_METADATA_INCORRECT, TDX_OPERAND_ID_RCX));
        }
        let out = ReclaimOut { page_type: entry.pt, owner: entry.owner, size: entry.size };
        let td = self.td(entry.owner).ok_or_else(|| fail(TDX_PAGE_METADATA_INCORRECT, TDX_OPERAND_ID_RCX))?;
        if entry.pt == PageType::Tdr {
            let _tdr = td.tdr_lock.try_write().ok_or_else(|| busy(TDX_OPERAND_ID_RCX))?;
            if td.state.lock().lifecycle != TdLifecycle::Teardown {
                return Err(fail(TDX_LIFECYCLE_STATE_INCORRECT, 0));
            }
            let mut pamt = self.pamt.lock();
            if pamt.entry(page) != Some(entry) {
                return Err(fail(TDX_PAGE_METADATA_INCORRECT, TDX_OPERAND_ID_RCX));
            }
            if pamt.owned_by(page).iter().any(|(pfn, _)| *pfn != page) {
                return Err(fail(TDX_TD_ASSOCIATED_PAGES_EXIST, 0));
            }
            pamt.release(page);
            self.pamt_tracked.store(pamt.tracked() as u64, Ordering::Release);
            drop(pamt);
            self.tds.lock().remove(&page.0);
            return Ok(out);
        }
        let _tdr = td.tdr_lock.try_read().ok_or_else(|| busy(TDX_OPERAND_ID_TDR))?;
        if td.view().lifecycle != TdLifecycle::Teardown {
            return Err(fail(TDX_LIFECYCLE_STATE_INCORRECT, 0));
        }
        // Data locks in the order S-EPT → TD state → PAMT.
        let mut sept = td.sept.lock();
        let mut state = td.state.lock();
        let mut pamt = self.pamt.lock();
        if pamt.entry(page) != Some(entry) {
            return Err(fail(TDX_PAGE_METADATA_INCORRECT, TDX_OPERAND_ID_RCX));
        }
        match entry.pt {
            PageType::Reg => {
                sept.forget_leaf(page);
            }
            PageType::Ept => {
                sept.forget_table(page);
            }
            PageType::Tdcx => {
                state.tdcs.retain(|pfn| *pfn != page);
                for vcpu in state.vcpus.values_mut() {
                    vcpu.tdcx.retain(|pfn| *pfn != page);
                }
            }
            PageType::Tdvpr => {
                state.vcpus.remove(&page.0);
                self.vcpus.lock().remove(&page.0);
            }
            PageType::Nda | PageType::Rsvd | PageType::Tdr => {}
        }
        pamt.release(page);
        self.pamt_tracked.store(pamt.tracked() as u64, Ordering::Release);
        Ok(out)
    }

    /// `TDH.PHYMEM.PAGE.WBINVD(page | hkid << keyid_shift)`: writes back and invalidates the
    /// page's cache lines tagged with `hkid` (a TDX KeyID: a TD's, or the global one for a TDR).
    #[doc(alias("tdh_phymem_page_wbinvd_hkid", "tdh_phymem_page_wbinvd_tdr"))]
    pub fn tdh_phymem_page_wbinvd(&self, page: Pfn, hkid: u16) -> SeamcallResult<()> {
        let leaf = SeamcallLeaf::PhymemPageWbinvd;
        self.begin(leaf)?;
        Self::traced(leaf, self.phymem_page_wbinvd(page, hkid))
    }

    fn phymem_page_wbinvd(&self, page: Pfn, hkid: u16) -> SeamcallResult<()> {
        self.hpa_check(page, TDX_OPERAND_ID_RCX)?;
        if hkid != self.global_keyid() && !self.is_guest_keyid(hkid) {
            return Err(fail(TDX_OPERAND_INVALID, TDX_OPERAND_ID_RCX));
        }
        let mut pamt = self.pamt.lock();
        pamt.wbinvd(page, hkid);
        self.pamt_tracked.store(pamt.tracked() as u64, Ordering::Release);
        Ok(())
    }
}

/// Building the TD: the S-EPT, the initial image, the measurement.
impl TdxModule {
    /// `TDH.MEM.SEPT.ADD(tdr, gpa | level, page)`: links the `PT_NDA` page `page` as a new S-EPT
    /// table under the FREE entry at `level` (1–3) translating `gpa`, whose parents must be
    /// present (else `TDX_EPT_WALK_FAILED`; an entry that is not FREE:
    /// `TDX_EPT_ENTRY_STATE_INCORRECT`).
    pub fn tdh_mem_sept_add(&self, tdr: Pfn, gpa: u64, level: u64, page: Pfn) -> SeamcallResult<()> {
        let leaf = SeamcallLeaf::MemSeptAdd;
        self.begin(leaf)?;
        Self::traced(leaf, self.mem_sept_add(tdr, gpa, level, page))
    }

    fn mem_sept_add(&self, tdr: Pfn, gpa: u64, level: u64, page: Pfn) -> SeamcallResult<()> {
        let td = self.explicit_td(tdr, TDX_OPERAND_ID_RDX)?;
        let _tdr = td.tdr_lock.try_read().ok_or_else(|| busy(TDX_OPERAND_ID_RDX))?;
        let state = td.view();
        need_keys(state.lifecycle)?;
        need_op(state.op_state, BUILT)?;
        let (gpa, level) = page_info(gpa, level, 1, SEPT_ROOT_LEVEL)?;
        let _sept_lock = td.sept_lock.try_read().ok_or_else(|| busy(TDX_OPERAND_ID_SEPT))?;
        let mut sept = td.sept.lock();
        let entry = sept.entry(gpa, level).map_err(walk_failed)?;
        if entry != SeptEntry::Free {
            return Err(entry_error(TDX_EPT_ENTRY_STATE_INCORRECT, entry, level));
        }
        self.page_check(page, TDX_OPERAND_ID_R8)?;
        self.donate(page, PamtEntry::owned(PageType::Ept, tdr), state.hkid, TDX_OPERAND_ID_R8)?;
        if let Err(failure) = sept.link_table(gpa, level, page) {
            // Checked above under the same locks: cannot happen. Undo the donation.
            self.release(page);
            return Err(walk_failed(failure));
        }
        Ok(())
    }

    /// `TDH.MEM.PAGE.ADD(tdr, gpa, page, source)`: before MR.FINALIZE, copies the host page
    /// `source` into the `PT_NDA` page `page` (encrypting it with the TD's key), maps it MAPPED
    /// at the FREE 4K leaf for `gpa`, and extends MRTD with the page's GPA.
    pub fn tdh_mem_page_add(&self, tdr: Pfn, gpa: u64, page: Pfn, source: Pfn) -> SeamcallResult<()> {
        let leaf = SeamcallLeaf::MemPageAdd;
        self.begin(leaf)?;
        Self::traced(leaf, self.mem_page_add(tdr, gpa, page, source))
    }

    fn mem_page_add(&self, tdr: Pfn, gpa: u64, page: Pfn, source: Pfn) -> SeamcallResult<()> {
        let td = self.explicit_td(tdr, TDX_OPERAND_ID_RDX)?;
        let _tdr = td.tdr_lock.try_read().ok_or_else(|| busy(TDX_OPERAND_ID_RDX))?;
        let state = td.view();
        need_keys(state.lifecycle)?;
        need_op(state.op_state, &[TdOpState::Initialized])?;
        let (gpa, _) = page_info(gpa, 0, 0, 0)?;
        let _sept_lock = td.sept_lock.try_read().ok_or_else(|| busy(TDX_OPERAND_ID_SEPT))?;
        let mut sept = td.sept.lock();
        let entry = sept.entry(gpa, 0).map_err(walk_failed)?;
        if entry != SeptEntry::Free {
            return Err(entry_error(TDX_EPT_ENTRY_STATE_INCORRECT, entry, 0));
        }
        self.page_check(page, TDX_OPERAND_ID_R8)?;
        self.page_check(source, TDX_OPERAND_ID_R9)?;
        if source.0 == 0 {
            return Err(fail(TDX_OPERAND_INVALID, TDX_OPERAND_ID_R9));
        }
        let mut contents = vec![0u8; PAGE_SIZE as usize];
        // The module reads the source with the host's KeyID: a TD's private page reads as zeros.
        if !self.pamt_entry_of(source).pt.is_td_owned() {
            self.machine.mem.read(source, 0, &mut contents);
        }
        self.donate(page, PamtEntry::private(tdr, gpa), state.hkid, TDX_OPERAND_ID_R8)?;
        self.machine.mem.write_unchecked(page, 0, &contents);
        sept.set_entry(gpa, 0, SeptEntry::Leaf { pfn: page, state: LeafState::Mapped }).map_err(walk_failed)?;
        td.state.lock().mrtd.extend(MrtdRecord::PageAdd { gpa });
        Ok(())
    }

    /// `TDH.MR.EXTEND(tdr, gpa)`: before MR.FINALIZE, extends MRTD with the 256-byte chunk at
    /// `gpa` (256-byte aligned) of a page PAGE.ADD mapped.
    pub fn tdh_mr_extend(&self, tdr: Pfn, gpa: u64) -> SeamcallResult<()> {
        let leaf = SeamcallLeaf::MrExtend;
        self.begin(leaf)?;
        Self::traced(leaf, self.mr_extend(tdr, gpa))
    }

    fn mr_extend(&self, tdr: Pfn, gpa: u64) -> SeamcallResult<()> {
        let td = self.explicit_td(tdr, TDX_OPERAND_ID_RDX)?;
        let _tdr = td.tdr_lock.try_read().ok_or_else(|| busy(TDX_OPERAND_ID_RDX))?;
        let state = td.view();
        need_keys(state.lifecycle)?;
        need_op(state.op_state, &[TdOpState::Initialized])?;
        if gpa % MR_EXTEND_CHUNK as u64 != 0 || gpa >= TDX_SHARED_BIT {
            return Err(fail(TDX_OPERAND_INVALID, TDX_OPERAND_ID_RCX));
        }
        let page_gpa = gpa & !(PAGE_SIZE - 1);
        let _sept_lock = td.sept_lock.try_read().ok_or_else(|| busy(TDX_OPERAND_ID_SEPT))?;
        let sept = td.sept.lock();
        let entry = sept.entry(page_gpa, 0).map_err(walk_failed)?;
        let SeptEntry::Leaf { pfn, state: LeafState::Mapped } = entry else {
            return Err(entry_error(TDX_EPT_ENTRY_STATE_INCORRECT, entry, 0));
        };
        let mut chunk = Box::new([0u8; MR_EXTEND_CHUNK]);
        self.machine.mem.read(pfn, (gpa - page_gpa) as usize, &mut chunk[..]);
        td.state.lock().mrtd.extend(MrtdRecord::MrExtend { gpa, chunk });
        Ok(())
    }

    /// `TDH.MR.FINALIZE(tdr)`: MRTD is frozen and the TD becomes runnable; PAGE.ADD and MR.EXTEND
    /// are refused from now on.
    pub fn tdh_mr_finalize(&self, tdr: Pfn) -> SeamcallResult<()> {
        let leaf = SeamcallLeaf::MrFinalize;
        self.begin(leaf)?;
        Self::traced(leaf, self.mr_finalize(tdr))
    }

    fn mr_finalize(&self, tdr: Pfn) -> SeamcallResult<()> {
        let td = self.explicit_td(tdr, TDX_OPERAND_ID_RCX)?;
        let _tdr = td.tdr_lock.try_write().ok_or_else(|| busy(TDX_OPERAND_ID_RCX))?;
        let mut state = td.state.lock();
        need_keys(state.lifecycle)?;
        need_op(state.op_state, &[TdOpState::Initialized])?;
        state.mrtd.finalize();
        state.records_at_finalize = Some(state.mrtd.records().len());
        state.op_state = TdOpState::Runnable;
        Ok(())
    }
}

/// The running TD's private memory: AUG, BLOCK, TRACK, REMOVE, SEPT.REMOVE, and vCPU entry.
impl TdxModule {
    /// `TDH.MEM.PAGE.AUG(tdr, gpa | level, page)`: after MR.FINALIZE, maps the `PT_NDA` page
    /// `page` PENDING at the FREE 4K leaf for `gpa`; the guest must accept it.
    pub fn tdh_mem_page_aug(&self, tdr: Pfn, gpa: u64, level: u64, page: Pfn) -> SeamcallResult<()> {
        let leaf = SeamcallLeaf::MemPageAug;
        self.begin(leaf)?;
        Self::traced(leaf, self.mem_page_aug(tdr, gpa, level, page))
    }

    fn mem_page_aug(&self, tdr: Pfn, gpa: u64, level: u64, page: Pfn) -> SeamcallResult<()> {
        let td = self.explicit_td(tdr, TDX_OPERAND_ID_RDX)?;
        let _tdr = td.tdr_lock.try_read().ok_or_else(|| busy(TDX_OPERAND_ID_RDX))?;
        let state = td.view();
        need_keys(state.lifecycle)?;
        need_op(state.op_state, &[TdOpState::Runnable])?;
        let (gpa, _) = page_info(gpa, level, 0, 0)?;
        let _sept_lock = td.sept_lock.try_read().ok_or_else(|| busy(TDX_OPERAND_ID_SEPT))?;
        let mut sept = td.sept.lock();
        let entry = sept.entry(gpa, 0).map_err(walk_failed)?;
        if entry != SeptEntry::Free {
            return Err(entry_error(TDX_EPT_ENTRY_STATE_INCORRECT, entry, 0));
        }
        self.page_check(page, TDX_OPERAND_ID_R8)?;
        self.donate(page, PamtEntry::private(tdr, gpa), state.hkid, TDX_OPERAND_ID_R8)?;
        sept.set_entry(gpa, 0, SeptEntry::Leaf { pfn: page, state: LeafState::Pending }).map_err(walk_failed)?;
        Ok(())
    }

    /// `TDH.MEM.RANGE.BLOCK(tdr, gpa | level)`: blocks the entry at `level` translating `gpa`
    /// (MAPPED → BLOCKED, PENDING → PENDING_BLOCKED, a table link → NL_BLOCKED) so no new
    /// translation is cached, and records the TD epoch in the blocked page's PAMT entry. A FREE
    /// entry: `TDX_EPT_ENTRY_STATE_INCORRECT` on RCX with the entry (KVM's premap signature); a
    /// blocked one: `TDX_GPA_RANGE_ALREADY_BLOCKED`.
    pub fn tdh_mem_range_block(&self, tdr: Pfn, gpa: u64, level: u64) -> SeamcallResult<()> {
        let leaf = SeamcallLeaf::MemRangeBlock;
        self.begin(leaf)?;
        Self::traced(leaf, self.mem_range_block(tdr, gpa, level))
    }

    fn mem_range_block(&self, tdr: Pfn, gpa: u64, level: u64) -> SeamcallResult<()> {
        let td = self.explicit_td(tdr, TDX_OPERAND_ID_RDX)?;
        let _tdr = td.tdr_lock.try_read().ok_or_else(|| busy(TDX_OPERAND_ID_RDX))?;
        let state = td.view();
        need_keys(state.lifecycle)?;
        need_op(state.op_state, BUILT)?;
        let (gpa, level) = page_info(gpa, level, 0, SEPT_ROOT_LEVEL)?;
        let _sept_lock = td.sept_lock.try_write().ok_or_else(|| busy(TDX_OPERAND_ID_SEPT))?;
        let mut sept = td.sept.lock();
        let entry = sept.entry(gpa, level).map_err(walk_failed)?;
        let (blocked, page) = match entry {
            SeptEntry::Leaf { .. } if level > 0 => return Err(fail(TDX_OPERAND_INVALID, TDX_OPERAND_ID_RCX)),
            SeptEntry::Leaf { pfn, state: LeafState::Mapped } => {
                (SeptEntry::Leaf { pfn, state: LeafState::Blocked }, pfn)
            }
            SeptEntry::Leaf { pfn, state: LeafState::Pending } => {
                (SeptEntry::Leaf { pfn, state: LeafState::PendingBlocked }, pfn)
            }
            SeptEntry::Table { table, blocked: false } => (SeptEntry::Table { table, blocked: true }, table),
            SeptEntry::Leaf { .. } | SeptEntry::Table { blocked: true, .. } => {
                return Err(entry_error(TDX_GPA_RANGE_ALREADY_BLOCKED, entry, level));
            }
            SeptEntry::Free => return Err(entry_error(TDX_EPT_ENTRY_STATE_INCORRECT, entry, level)),
        };
        sept.set_entry(gpa, level, blocked).map_err(walk_failed)?;
        // The epoch is sampled after the entry is blocked.
        let epoch = td.epoch.lock().epoch;
        self.pamt.lock().update(page, |entry| entry.bepoch = epoch);
        Ok(())
    }

    /// `TDH.MEM.TRACK(tdr)`: increments the TD epoch. Refused with
    /// `TDX_PREVIOUS_TLB_EPOCH_BUSY` while a vCPU is still inside the TD with an epoch before
    /// the current one, and `TDX_OPERAND_BUSY` on `TD_EPOCH` while the epoch lock is held.
    pub fn tdh_mem_track(&self, tdr: Pfn) -> SeamcallResult<()> {
        let leaf = SeamcallLeaf::MemTrack;
        self.begin(leaf)?;
        Self::traced(leaf, self.mem_track(tdr))
    }

    fn mem_track(&self, tdr: Pfn) -> SeamcallResult<()> {
        let td = self.explicit_td(tdr, TDX_OPERAND_ID_RCX)?;
        let _tdr = td.tdr_lock.try_read().ok_or_else(|| busy(TDX_OPERAND_ID_RCX))?;
        let state = td.view();
        need_keys(state.lifecycle)?;
        need_op(state.op_state, BUILT)?;
        let _epoch_lock = td.epoch_lock.try_write().ok_or_else(|| busy(TDX_OPERAND_ID_TD_EPOCH))?;
        let mut epoch = td.epoch.lock();
        let current = epoch.epoch;
        if epoch.in_td.values().any(|&entered| entered < current) {
            return Err(fail(TDX_PREVIOUS_TLB_EPOCH_BUSY, 0));
        }
        epoch.epoch += 1;
        Ok(())
    }

    /// `TDH.MEM.PAGE.REMOVE(tdr, gpa | level)`: unmaps the 4K leaf for `gpa` and returns its
    /// frame to `PT_NDA` (RCX out: the frame). Once the TD is runnable the leaf must be blocked
    /// (else `TDX_GPA_RANGE_NOT_BLOCKED`) and its TLB tracking done (else
    /// `TDX_TLB_TRACKING_NOT_DONE`).
    pub fn tdh_mem_page_remove(&self, tdr: Pfn, gpa: u64, level: u64) -> SeamcallResult<Pfn> {
        let leaf = SeamcallLeaf::MemPageRemove;
        self.begin(leaf)?;
        Self::traced(leaf, self.mem_page_remove(tdr, gpa, level))
    }

    fn mem_page_remove(&self, tdr: Pfn, gpa: u64, level: u64) -> SeamcallResult<Pfn> {
        let td = self.explicit_td(tdr, TDX_OPERAND_ID_RDX)?;
        let _tdr = td.tdr_lock.try_read().ok_or_else(|| busy(TDX_OPERAND_ID_RDX))?;
        let state = td.view();
        need_keys(state.lifecycle)?;
        need_op(state.op_state, BUILT)?;
        let (gpa, _) = page_info(gpa, level, 0, 0)?;
        let _sept_lock = td.sept_lock.try_read().ok_or_else(|| busy(TDX_OPERAND_ID_SEPT))?;
        let mut sept = td.sept.lock();
        let entry = sept.entry(gpa, 0).map_err(walk_failed)?;
        let SeptEntry::Leaf { pfn, state: leaf_state } = entry else {
            return Err(entry_error(TDX_EPT_ENTRY_STATE_INCORRECT, entry, 0));
        };
        if state.op_state == TdOpState::Runnable {
            if !leaf_state.is_blocked() {
                return Err(entry_error(TDX_GPA_RANGE_NOT_BLOCKED, entry, 0));
            }
            let bepoch = self.pamt_entry_of(pfn).bepoch;
            if !td.epoch.lock().is_tracked(bepoch) {
                return Err(fail(TDX_TLB_TRACKING_NOT_DONE, TDX_OPERAND_ID_RCX));
            }
        }
        sept.set_entry(gpa, 0, SeptEntry::Free).map_err(walk_failed)?;
        self.release(pfn);
        Ok(pfn)
    }

    /// `TDH.MEM.SEPT.REMOVE(tdr, gpa | level)`: unlinks the empty S-EPT table under the entry at
    /// `level` (1–3) translating `gpa` and returns its page to `PT_NDA` (RCX out: the page). A
    /// table with entries: `TDX_EPT_PAGE_NOT_FREE`; once the TD is runnable the link must be
    /// blocked and tracked, as for PAGE.REMOVE.
    pub fn tdh_mem_sept_remove(&self, tdr: Pfn, gpa: u64, level: u64) -> SeamcallResult<Pfn> {
        let leaf = SeamcallLeaf::MemSeptRemove;
        self.begin(leaf)?;
        Self::traced(leaf, self.mem_sept_remove(tdr, gpa, level))
    }

    fn mem_sept_remove(&self, tdr: Pfn, gpa: u64, level: u64) -> SeamcallResult<Pfn> {
        let td = self.explicit_td(tdr, TDX_OPERAND_ID_RDX)?;
        let _tdr = td.tdr_lock.try_read().ok_or_else(|| busy(TDX_OPERAND_ID_RDX))?;
        let state = td.view();
        need_keys(state.lifecycle)?;
        need_op(state.op_state, BUILT)?;
        let (gpa, level) = page_info(gpa, level, 1, SEPT_ROOT_LEVEL)?;
        let _sept_lock = td.sept_lock.try_write().ok_or_else(|| busy(TDX_OPERAND_ID_SEPT))?;
        let mut sept = td.sept.lock();
        let entry = sept.entry(gpa, level).map_err(walk_failed)?;
        let SeptEntry::Table { table, blocked } = entry else {
            return Err(entry_error(TDX_EPT_ENTRY_STATE_INCORRECT, entry, level));
        };
        if sept.table_used(table).unwrap_or(0) != 0 {
            return Err(entry_error(TDX_EPT_PAGE_NOT_FREE, entry, level));
        }
        if state.op_state == TdOpState::Runnable {
            if !blocked {
                return Err(entry_error(TDX_GPA_RANGE_NOT_BLOCKED, entry, level));
            }
            let bepoch = self.pamt_entry_of(table).bepoch;
            if !td.epoch.lock().is_tracked(bepoch) {
                return Err(fail(TDX_TLB_TRACKING_NOT_DONE, TDX_OPERAND_ID_RCX));
            }
        }
        let table = sept.unlink_table(gpa, level).map_err(walk_failed)?;
        self.release(table);
        Ok(table)
    }

    /// `TDH.VP.ENTER(tdvpr)`: the vCPU enters the runnable TD, in the current epoch (it holds
    /// the epoch lock shared while it does: `TDX_OPERAND_BUSY` on `TD_EPOCH` during a TRACK).
    /// The TD runs until [`TdxModule::vp_exit`].
    pub fn tdh_vp_enter(&self, tdvpr: Pfn) -> SeamcallResult<VpEntry> {
        let leaf = SeamcallLeaf::VpEnter;
        self.begin(leaf)?;
        Self::traced(leaf, self.vp_enter(tdvpr))
    }

    fn vp_enter(&self, tdvpr: Pfn) -> SeamcallResult<VpEntry> {
        let td = self.vcpu_td(tdvpr, TDX_OPERAND_ID_RCX)?;
        let _tdr = td.tdr_lock.try_read().ok_or_else(|| busy(TDX_OPERAND_ID_TDR))?;
        let state = td.view();
        need_keys(state.lifecycle)?;
        need_op(state.op_state, &[TdOpState::Runnable])?;
        let initialized = td.state.lock().vcpus.get(&tdvpr.0).map(|vcpu| vcpu.initialized);
        match initialized {
            None => return Err(fail(TDX_PAGE_METADATA_INCORRECT, TDX_OPERAND_ID_RCX)),
            Some(false) => return Err(fail(TDX_VCPU_STATE_INCORRECT, 0)),
            Some(true) => {}
        }
        let _epoch_lock = td.epoch_lock.try_read().ok_or_else(|| busy(TDX_OPERAND_ID_TD_EPOCH))?;
        let mut epoch = td.epoch.lock();
        if epoch.in_td.contains_key(&tdvpr.0) {
            return Err(fail(TDX_VCPU_STATE_INCORRECT, 0));
        }
        let current = epoch.epoch;
        epoch.in_td.insert(tdvpr.0, current);
        drop(epoch);
        drop(_epoch_lock);
        let mut flush_private_tlb = true;
        if let Some(vcpu) = td.state.lock().vcpus.get_mut(&tdvpr.0) {
            vcpu.associated = true;
            flush_private_tlb = vcpu.last_entry_epoch != Some(current);
            vcpu.last_entry_epoch = Some(current);
        }
        Ok(VpEntry { epoch: current, flush_private_tlb })
    }

    /// The vCPU leaves the TD (the TD exit that ends a TDH.VP.ENTER): it no longer holds the
    /// epoch it entered with. False if it was not inside.
    pub fn vp_exit(&self, tdvpr: Pfn) -> bool {
        let Some(td) = self.vcpus.lock().get(&tdvpr.0).copied().and_then(|tdr| self.td(tdr)) else { return false };
        let left = td.epoch.lock().in_td.remove(&tdvpr.0).is_some();
        left
    }

    /// The TD's current epoch.
    pub fn td_epoch(&self, tdr: Pfn) -> Option<u64> {
        Some(self.td(tdr)?.epoch.lock().epoch)
    }

    /// The vCPUs (by TDVPR) inside the TD whose TDR is `tdr` (entered with TDH.VP.ENTER and not
    /// exited since), with the epoch each entered in.
    pub fn vcpus_in_td(&self, tdr: Pfn) -> Vec<(Pfn, u64)> {
        let Some(td) = self.td(tdr) else { return Vec::new() };
        let inside = td.epoch.lock().in_td.iter().map(|(&tdvpr, &epoch)| (Pfn(tdvpr), epoch)).collect();
        inside
    }
}

/// A TD built the way KVM builds one, for the tests of this module's files.
#[cfg(test)]
pub(crate) mod fixture {
    use super::*;
    use gmem_mm::MachineConfig;

    /// A GPA whose S-EPT path the tests build (1G + 2M + 3 pages: indices 1, 1, 3).
    pub(crate) const GPA: u64 = 0x4020_3000;

    pub(crate) struct Fx {
        pub(crate) machine: Arc<Machine>,
        pub(crate) tdx: Arc<TdxModule>,
        pub(crate) tdr: Pfn,
        pub(crate) hkid: u16,
        pub(crate) tdcs: Vec<Pfn>,
        pub(crate) vcpus: Vec<Pfn>,
    }

    impl Fx {
        /// A machine, the module, and a TD created and key-configured, not yet initialised.
        pub(crate) fn created() -> Fx {
            let machine = Machine::new(MachineConfig::tiny(4096));
            let tdx = TdxModule::new(&machine);
            let tdr = machine.mem.alloc(0).unwrap();
            let hkid = tdx.guest_keyid_alloc().unwrap();
            tdx.tdh_mng_create(tdr, hkid).unwrap();
            tdx.tdh_mng_key_config(tdr).unwrap();
            Fx { machine, tdx, tdr, hkid, tdcs: Vec::new(), vcpus: Vec::new() }
        }

        /// A TD initialised with `params` (building its image).
        pub(crate) fn initialized_with(params: TdParams) -> Fx {
            let mut fx = Fx::created();
            for _ in 0..fx.tdx.config().tdcs_pages {
                let page = fx.page();
                fx.tdx.tdh_mng_addcx(fx.tdr, page).unwrap();
                fx.tdcs.push(page);
            }
            fx.tdx.tdh_mng_init(fx.tdr, &params).unwrap();
            fx
        }

        pub(crate) fn initialized() -> Fx {
            Fx::initialized_with(TdParams::default())
        }

        /// A finalised TD with one initialised vCPU and the S-EPT path to [`GPA`].
        pub(crate) fn runnable_with(params: TdParams) -> Fx {
            let mut fx = Fx::initialized_with(params);
            fx.add_vcpu();
            fx.tables(GPA);
            fx.tdx.tdh_mr_finalize(fx.tdr).unwrap();
            fx
        }

        pub(crate) fn runnable() -> Fx {
            Fx::runnable_with(TdParams::default())
        }

        pub(crate) fn page(&self) -> Pfn {
            self.machine.mem.alloc(0).unwrap()
        }

        /// VP.CREATE, VP.ADDCX for every TDCX page, VP.INIT.
        pub(crate) fn add_vcpu(&mut self) -> Pfn {
            let tdvpr = self.page();
            self.tdx.tdh_vp_create(self.tdr, tdvpr).unwrap();
            for _ in 0..self.tdx.config().tdcx_pages {
                let page = self.page();
                self.tdx.tdh_vp_addcx(tdvpr, page).unwrap();
            }
            self.tdx.tdh_vp_init(tdvpr, 0, self.vcpus.len() as u32).unwrap();
            self.vcpus.push(tdvpr);
            tdvpr
        }

        /// SEPT.ADD at levels 3, 2 and 1 for `gpa` (the levels that already have a table are
        /// skipped). Returns the pages added.
        pub(crate) fn tables(&self, gpa: u64) -> Vec<Pfn> {
            let mut added = Vec::new();
            for level in [3u64, 2, 1] {
                if matches!(self.tdx.sept_entry(self.tdr, gpa, level as u8), Some(Ok(SeptEntry::Table { .. }))) {
                    continue;
                }
                let page = self.page();
                self.tdx.tdh_mem_sept_add(self.tdr, gpa & !(level_bytes(level as u8) - 1), level, page).unwrap();
                added.push(page);
            }
            added
        }

        /// PAGE.AUG of a fresh page at `gpa` (4K).
        pub(crate) fn aug(&self, gpa: u64) -> Pfn {
            let page = self.page();
            self.tdx.tdh_mem_page_aug(self.tdr, gpa, 0, page).unwrap();
            page
        }

        pub(crate) fn leaf(&self, gpa: u64) -> SeptEntry {
            self.tdx.sept_entry(self.tdr, gpa, 0).unwrap().unwrap()
        }

        pub(crate) fn pt(&self, pfn: Pfn) -> PageType {
            self.tdx.pamt_entry(pfn).unwrap().pt
        }
    }

    /// The status of a failed SEAMCALL.
    pub(crate) fn status<T: fmt::Debug>(result: SeamcallResult<T>) -> TdxStatus {
        result.expect_err("the SEAMCALL should fail").status
    }

    /// `class` on `operand`.
    pub(crate) fn st(class: u64, operand: u32) -> TdxStatus {
        TdxStatus::new(class, operand)
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::*;
    use super::*;
    use crate::tdx::guest::TdExit;
    use crate::tdx::sept::{SEPT_RWX, SEPT_SUPPRESS_VE};
    use gmem_mm::MachineConfig;
    use std::sync::Barrier;

    #[test]
    fn mng_create_and_key_config() {
        let machine = Machine::new(MachineConfig::tiny(4096));
        let tdx = TdxModule::new(&machine);
        let tdr = machine.mem.alloc(0).unwrap();
        let hkid = tdx.guest_keyid_alloc().unwrap();
        assert_eq!(hkid, tdx.global_keyid() + 1, "TD KeyIDs follow the global one");
        assert_eq!(status(tdx.tdh_mng_create(tdr, tdx.global_keyid())), st(TDX_OPERAND_INVALID, TDX_OPERAND_ID_RDX));
        assert_eq!(status(tdx.tdh_mng_create(tdr, 5)), st(TDX_OPERAND_INVALID, TDX_OPERAND_ID_RDX));
        assert_eq!(status(tdx.tdh_mng_create(Pfn(4096), hkid)), st(TDX_OPERAND_ADDR_RANGE_ERROR, TDX_OPERAND_ID_RCX));
        assert_eq!(
            status(tdx.tdh_mng_create(Pfn(4000), hkid)),
            st(TDX_OPERAND_INVALID, TDX_OPERAND_ID_RCX),
            "never allocated"
        );
        assert_eq!(
            status(tdx.tdh_mng_create(Pfn(0), hkid)),
            st(TDX_PAGE_METADATA_INCORRECT, TDX_OPERAND_ID_RCX),
            "PT_RSVD"
        );
        tdx.tdh_mng_create(tdr, hkid).unwrap();
        assert_eq!(tdx.pamt_entry(tdr).unwrap(), PamtEntry::owned(PageType::Tdr, tdr));
        assert_eq!(status(tdx.tdh_mng_create(tdr, hkid + 1)), st(TDX_PAGE_METADATA_INCORRECT, TDX_OPERAND_ID_RCX));
        let other = machine.mem.alloc(0).unwrap();
        assert_eq!(status(tdx.tdh_mng_create(other, hkid)), st(TDX_HKID_NOT_FREE, TDX_OPERAND_ID_RDX));
        assert_eq!(tdx.pamt_entry(other).unwrap().pt, PageType::Nda, "a failed CREATE changes nothing");
        // The TD needs its key before anything else.
        let page = machine.mem.alloc(0).unwrap();
        assert_eq!(status(tdx.tdh_mng_addcx(tdr, page)), st(TDX_TD_KEYS_NOT_CONFIGURED, 0));
        assert_eq!(status(tdx.tdh_mng_key_config(other)), st(TDX_PAGE_METADATA_INCORRECT, TDX_OPERAND_ID_RCX));
        tdx.tdh_mng_key_config(tdr).unwrap();
        let again = status(tdx.tdh_mng_key_config(tdr));
        assert_eq!(again, st(TDX_KEY_CONFIGURED, 0));
        assert!(!again.is_error(), "KEY_CONFIGURED is a warning");
        let info = tdx.td_info(tdr).unwrap();
        assert_eq!(
            (info.hkid, info.lifecycle, info.op_state),
            (hkid, TdLifecycle::KeysConfigured, TdOpState::Uninitialized)
        );
        assert_eq!(tdx.executed(SeamcallLeaf::MngCreate), 8);
    }

    /// The lock classes of the module.
    const CLASSES: [&str; 10] = [
        "tdx module",
        "tdx PAMT",
        "tdx TDs",
        "tdx vCPUs",
        "tdx TDR lock",
        "tdx secure_ept_lock",
        "tdx epoch_lock",
        "tdx TDR/TDCS state",
        "tdx S-EPT",
        "tdx TD epoch",
    ];

    #[test]
    fn every_path_keeps_one_lock_order() {
        let mut fx = Fx::runnable();
        let tdx = fx.tdx.clone();
        let second = fx.add_vcpu();
        let page = fx.aug(GPA);
        tdx.tdg_mem_page_accept(fx.tdr, GPA, 0).unwrap();
        tdx.guest_private_access(fx.tdr, GPA, false).unwrap();
        tdx.note_host_write(page);
        let _ = tdx.guest_private_access(fx.tdr, GPA, false);
        tdx.tdh_vp_enter(second).unwrap();
        tdx.tdh_mem_range_block(fx.tdr, GPA, 0).unwrap();
        tdx.tdh_mem_track(fx.tdr).unwrap();
        assert!(tdx.vp_exit(second));
        tdx.tdh_mem_page_remove(fx.tdr, GPA, 0).unwrap();
        tdx.tdh_phymem_page_wbinvd(page, fx.hkid).unwrap();
        tdx.host_clear_page(page);
        let _ = format!("{tdx:?} {:?}", tdx.td_info(fx.tdr));
        let _ = crate::tdx::invariants::violations(&tdx);
        for vcpu in [fx.vcpus[0], second] {
            tdx.tdh_vp_flush(vcpu).unwrap();
        }
        tdx.tdh_mng_vpflushdone(fx.tdr).unwrap();
        tdx.tdh_phymem_cache_wb(false).unwrap();
        tdx.tdh_mng_key_freeid(fx.tdr).unwrap();
        for (pfn, frame) in tdx.pamt_frames() {
            if frame.entry.pt.is_td_owned() && pfn != fx.tdr {
                tdx.tdh_phymem_page_reclaim(pfn).unwrap();
            }
        }
        tdx.tdh_phymem_page_reclaim(fx.tdr).unwrap();
        let reports: Vec<String> = gmem_sync::lockdep::reports()
            .into_iter()
            .filter(|report| CLASSES.iter().any(|class| report.involves(class)))
            .map(|report| report.to_string())
            .collect();
        assert!(reports.is_empty(), "{reports:#?}");
    }

    #[test]
    fn keyid_pool_runs_out_and_reuses() {
        let machine = Machine::new(MachineConfig::tiny(64));
        let tdx = TdxModule::with_config(&machine, TdxConfig { nr_keyids: 3, ..TdxConfig::default() });
        let a = tdx.guest_keyid_alloc().unwrap();
        let b = tdx.guest_keyid_alloc().unwrap();
        assert_eq!(tdx.guest_keyid_alloc(), None, "3 KeyIDs: the global one and two for TDs");
        assert!(tdx.guest_keyid_free(a));
        assert!(!tdx.guest_keyid_free(a));
        assert_eq!(tdx.guest_keyid_alloc(), Some(a));
        assert!(tdx.is_guest_keyid(b) && !tdx.is_guest_keyid(b + 1) && !tdx.is_guest_keyid(tdx.global_keyid()));
    }

    #[test]
    fn mng_addcx_and_init() {
        let fx = Fx::created();
        let tdx = &fx.tdx;
        assert_eq!(status(tdx.tdh_mng_init(fx.tdr, &TdParams::default())), st(TDX_TDCS_NOT_ALLOCATED, 0));
        let owned = fx.page();
        tdx.tdh_mng_addcx(fx.tdr, owned).unwrap();
        assert_eq!(status(tdx.tdh_mng_addcx(fx.tdr, owned)), st(TDX_PAGE_METADATA_INCORRECT, TDX_OPERAND_ID_RCX));
        assert_eq!(status(tdx.tdh_mng_addcx(fx.tdr, fx.tdr)), st(TDX_PAGE_METADATA_INCORRECT, TDX_OPERAND_ID_RCX));
        for _ in 1..tdx.config().tdcs_pages {
            tdx.tdh_mng_addcx(fx.tdr, fx.page()).unwrap();
        }
        assert_eq!(status(tdx.tdh_mng_addcx(fx.tdr, fx.page())), st(TDX_TDCX_NUM_INCORRECT, TDX_OPERAND_ID_RCX));
        let bad = TdParams { max_vcpus: 0, ..TdParams::default() };
        assert_eq!(status(tdx.tdh_mng_init(fx.tdr, &bad)), st(TDX_OPERAND_INVALID, TDX_OPERAND_ID_RDX));
        // Nothing but MNG.INIT builds the TD before it runs.
        assert_eq!(status(tdx.tdh_mem_sept_add(fx.tdr, GPA, 3, fx.page())), st(TDX_OP_STATE_INCORRECT, 0));
        tdx.tdh_mng_init(fx.tdr, &TdParams::default()).unwrap();
        assert_eq!(tdx.td_info(fx.tdr).unwrap().op_state, TdOpState::Initialized);
        assert_eq!(status(tdx.tdh_mng_init(fx.tdr, &TdParams::default())), st(TDX_OP_STATE_INCORRECT, 0));
        assert_eq!(status(tdx.tdh_mng_addcx(fx.tdr, fx.page())), st(TDX_OP_STATE_INCORRECT, 0));
        assert_eq!(tdx.td_info(fx.tdr).unwrap().tdcs.len(), tdx.config().tdcs_pages);
    }

    #[test]
    fn vcpu_create_addcx_init_flush() {
        let mut fx = Fx::initialized_with(TdParams { max_vcpus: 2, sept_ve_disable: true });
        let tdx = fx.tdx.clone();
        let tdvpr = fx.page();
        tdx.tdh_vp_create(fx.tdr, tdvpr).unwrap();
        assert_eq!(fx.pt(tdvpr), PageType::Tdvpr);
        assert_eq!(status(tdx.tdh_vp_create(fx.tdr, tdvpr)), st(TDX_PAGE_METADATA_INCORRECT, TDX_OPERAND_ID_RCX));
        assert_eq!(status(tdx.tdh_vp_init(tdvpr, 0, 0)), st(TDX_TDCX_NUM_INCORRECT, TDX_OPERAND_ID_RCX));
        assert_eq!(status(tdx.tdh_vp_addcx(fx.tdr, fx.page())), st(TDX_PAGE_METADATA_INCORRECT, TDX_OPERAND_ID_RDX));
        for _ in 0..tdx.config().tdcx_pages {
            tdx.tdh_vp_addcx(tdvpr, fx.page()).unwrap();
        }
        assert_eq!(status(tdx.tdh_vp_addcx(tdvpr, fx.page())), st(TDX_TDCX_NUM_INCORRECT, TDX_OPERAND_ID_RCX));
        tdx.tdh_vp_init(tdvpr, 0, 0).unwrap();
        assert_eq!(status(tdx.tdh_vp_init(tdvpr, 0, 0)), st(TDX_VCPU_STATE_INCORRECT, 0));
        assert_eq!(status(tdx.tdh_vp_addcx(tdvpr, fx.page())), st(TDX_VCPU_STATE_INCORRECT, 0));
        fx.add_vcpu();
        assert_eq!(status(tdx.tdh_vp_create(fx.tdr, fx.page())), st(TDX_MAX_VCPUS_EXCEEDED, 0));
        let info = tdx.td_info(fx.tdr).unwrap();
        assert_eq!(info.vcpus.len(), 2);
        assert!(info.vcpus.iter().all(|vcpu| vcpu.initialized && vcpu.associated && vcpu.tdcx.len() == 5));
        tdx.tdh_vp_flush(tdvpr).unwrap();
        assert_eq!(status(tdx.tdh_vp_flush(tdvpr)), st(TDX_VCPU_NOT_ASSOCIATED, 0));
        assert_eq!(status(tdx.tdh_vp_flush(fx.tdr)), st(TDX_PAGE_METADATA_INCORRECT, TDX_OPERAND_ID_RCX));
    }

    #[test]
    fn sept_add_needs_present_parents_and_a_free_entry() {
        let fx = Fx::initialized();
        let tdx = &fx.tdx;
        let page = fx.page();
        // Level 1 first: the walk stops at the FREE level-3 entry.
        let err = tdx.tdh_mem_sept_add(fx.tdr, GPA & !0x1f_ffff, 1, page).unwrap_err();
        assert_eq!(err.status, st(TDX_EPT_WALK_FAILED, TDX_OPERAND_ID_RCX));
        assert_eq!((err.entry, err.level_state), (SEPT_SUPPRESS_VE, 3));
        assert_eq!(fx.pt(page), PageType::Nda, "a failed SEPT.ADD donates nothing");
        let l3 = fx.page();
        tdx.tdh_mem_sept_add(fx.tdr, 0, 3, l3).unwrap();
        assert_eq!(tdx.pamt_entry(l3).unwrap(), PamtEntry::owned(PageType::Ept, fx.tdr));
        let err = tdx.tdh_mem_sept_add(fx.tdr, 0, 3, fx.page()).unwrap_err();
        assert_eq!(err.status, st(TDX_EPT_ENTRY_STATE_INCORRECT, TDX_OPERAND_ID_RCX));
        assert_eq!((err.entry, err.level_state), ((l3.0 << 12) | SEPT_RWX, 3 | (5 << 8)), "NL_MAPPED at level 3");
        for (gpa, level) in [(GPA, 0), (GPA, 4), (GPA | 0x1000, 1), (TDX_SHARED_BIT, 3), (GPA & !0x1f_ffff, 9)] {
            assert_eq!(
                status(tdx.tdh_mem_sept_add(fx.tdr, gpa, level, fx.page())),
                st(TDX_OPERAND_INVALID, TDX_OPERAND_ID_RCX),
                "gpa {gpa:#x} level {level}"
            );
        }
        let l2 = fx.page();
        tdx.tdh_mem_sept_add(fx.tdr, GPA & !0x3fff_ffff, 2, l2).unwrap();
        assert_eq!(
            status(tdx.tdh_mem_sept_add(fx.tdr, GPA & !0x1f_ffff, 1, l3)),
            st(TDX_PAGE_METADATA_INCORRECT, TDX_OPERAND_ID_R8)
        );
        assert_eq!(
            status(tdx.tdh_mem_sept_add(fx.tdr, GPA & !0x1f_ffff, 1, Pfn(1 << 20))),
            st(TDX_OPERAND_ADDR_RANGE_ERROR, TDX_OPERAND_ID_R8)
        );
        tdx.tdh_mem_sept_add(fx.tdr, GPA & !0x1f_ffff, 1, page).unwrap();
        let tree = tdx.sept(fx.tdr).unwrap();
        assert_eq!(tree.tables().iter().map(|t| (t.table, t.level)).collect::<Vec<_>>().len(), 3);
        assert_eq!(fx.leaf(GPA), SeptEntry::Free);
        assert_eq!(
            status(tdx.tdh_mem_sept_add(fx.page(), 0, 3, fx.page())),
            st(TDX_PAGE_METADATA_INCORRECT, TDX_OPERAND_ID_RDX)
        );
    }

    #[test]
    fn the_image_path_add_extend_finalize() {
        let fx = Fx::initialized();
        let tdx = &fx.tdx;
        let source = fx.page();
        let image: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
        fx.machine.mem.write(source, 0, &image);
        let page = fx.page();
        let err = tdx.tdh_mem_page_add(fx.tdr, GPA, page, source).unwrap_err();
        assert_eq!((err.status, err.level_state), (st(TDX_EPT_WALK_FAILED, TDX_OPERAND_ID_RCX), 3), "no tables yet");
        fx.tables(GPA);
        assert_eq!(
            status(tdx.tdh_mem_page_add(fx.tdr, GPA | 1, page, source)),
            st(TDX_OPERAND_INVALID, TDX_OPERAND_ID_RCX)
        );
        assert_eq!(status(tdx.tdh_mem_page_add(fx.tdr, GPA, page, Pfn(0))), st(TDX_OPERAND_INVALID, TDX_OPERAND_ID_R9));
        assert_eq!(
            status(tdx.tdh_mem_page_add(fx.tdr, GPA, fx.tdr, source)),
            st(TDX_PAGE_METADATA_INCORRECT, TDX_OPERAND_ID_R8)
        );
        tdx.tdh_mem_page_add(fx.tdr, GPA, page, source).unwrap();
        assert_eq!(fx.leaf(GPA), SeptEntry::Leaf { pfn: page, state: LeafState::Mapped });
        assert_eq!(tdx.pamt_entry(page).unwrap(), PamtEntry::private(fx.tdr, GPA));
        let mut copied = vec![0u8; 4096];
        fx.machine.mem.read(page, 0, &mut copied);
        assert_eq!(copied, image, "the module copied the source into the TD page");
        let err = tdx.tdh_mem_page_add(fx.tdr, GPA, fx.page(), source).unwrap_err();
        assert_eq!(err.status, st(TDX_EPT_ENTRY_STATE_INCORRECT, TDX_OPERAND_ID_RCX));
        assert_eq!(err.entry, (page.0 << 12) | SEPT_RWX);
        // A source page a TD owns reads as zeros.
        let second = fx.page();
        tdx.tdh_mem_page_add(fx.tdr, GPA + 0x1000, second, page).unwrap();
        fx.machine.mem.read(second, 0, &mut copied);
        assert!(copied.iter().all(|&b| b == 0));
        for offset in (0..4096).step_by(256) {
            tdx.tdh_mr_extend(fx.tdr, GPA + offset).unwrap();
        }
        assert_eq!(status(tdx.tdh_mr_extend(fx.tdr, GPA + 0x80)), st(TDX_OPERAND_INVALID, TDX_OPERAND_ID_RCX));
        let err = tdx.tdh_mr_extend(fx.tdr, GPA + 0x2000).unwrap_err();
        assert_eq!((err.status, err.entry), (st(TDX_EPT_ENTRY_STATE_INCORRECT, TDX_OPERAND_ID_RCX), SEPT_SUPPRESS_VE));
        assert_eq!(status(tdx.tdh_mem_page_aug(fx.tdr, GPA + 0x2000, 0, fx.page())), st(TDX_OP_STATE_INCORRECT, 0));
        tdx.tdh_mem_track(fx.tdr).unwrap();
        assert_eq!(tdx.td_epoch(fx.tdr), Some(1), "TRACK is allowed while building");
        tdx.tdh_mr_finalize(fx.tdr).unwrap();
        // MRTD: one PAGE.ADD buffer, one more, then sixteen MR.EXTENDs of the first page.
        let mut expected = Mrtd::new();
        expected.extend(MrtdRecord::PageAdd { gpa: GPA });
        expected.extend(MrtdRecord::PageAdd { gpa: GPA + 0x1000 });
        for (i, chunk) in image.chunks(256).enumerate() {
            let chunk: [u8; 256] = chunk.try_into().unwrap();
            expected.extend(MrtdRecord::MrExtend { gpa: GPA + 256 * i as u64, chunk: Box::new(chunk) });
        }
        let info = tdx.td_info(fx.tdr).unwrap();
        assert_eq!(info.mrtd, Some(expected.finalize()));
        assert_eq!(info.op_state, TdOpState::Runnable);
        // Frozen: PAGE.ADD, MR.EXTEND and FINALIZE are refused, MRTD unchanged.
        assert_eq!(
            status(tdx.tdh_mem_page_add(fx.tdr, GPA + 0x3000, fx.page(), source)),
            st(TDX_OP_STATE_INCORRECT, 0)
        );
        assert_eq!(status(tdx.tdh_mr_extend(fx.tdr, GPA)), st(TDX_OP_STATE_INCORRECT, 0));
        assert_eq!(status(tdx.tdh_mr_finalize(fx.tdr)), st(TDX_OP_STATE_INCORRECT, 0));
        assert_eq!(tdx.td_info(fx.tdr).unwrap().mrtd, info.mrtd);
        assert_eq!(fx.leaf(GPA + 0x3000), SeptEntry::Free);
    }

    #[test]
    fn the_private_page_life_cycle() {
        let fx = Fx::runnable();
        let tdx = &fx.tdx;
        let page = fx.page();
        fx.machine.mem.write(page, 0, b"stale host data");
        assert_eq!(
            status(tdx.tdh_mem_page_aug(fx.tdr, GPA, 1, page)),
            st(TDX_OPERAND_INVALID, TDX_OPERAND_ID_RCX),
            "2M"
        );
        assert_eq!(
            status(tdx.tdh_mem_page_aug(fx.tdr, GPA, 0, fx.tdr)),
            st(TDX_PAGE_METADATA_INCORRECT, TDX_OPERAND_ID_R8)
        );
        tdx.tdh_mem_page_aug(fx.tdr, GPA, 0, page).unwrap();
        assert_eq!(fx.leaf(GPA), SeptEntry::Leaf { pfn: page, state: LeafState::Pending });
        assert_eq!(tdx.pamt_entry(page).unwrap(), PamtEntry::private(fx.tdr, GPA));
        let err = tdx.tdh_mem_page_aug(fx.tdr, GPA, 0, fx.page()).unwrap_err();
        assert_eq!((err.status, err.level_state), (st(TDX_EPT_ENTRY_STATE_INCORRECT, TDX_OPERAND_ID_RCX), 2 << 8));
        // The guest accepts it: MAPPED and zeroed.
        assert_eq!(tdx.tdg_mem_page_accept(fx.tdr, GPA, 0), Ok(TdxStatus::SUCCESS));
        assert_eq!(fx.leaf(GPA), SeptEntry::Leaf { pfn: page, state: LeafState::Mapped });
        let mut bytes = [1u8; 15];
        fx.machine.mem.read(page, 0, &mut bytes);
        assert_eq!(bytes, [0; 15]);
        assert_eq!(tdx.guest_private_access(fx.tdr, GPA + 8, true), Ok(page));
        // Block, track, remove, write back.
        tdx.tdh_mem_range_block(fx.tdr, GPA, 0).unwrap();
        assert_eq!(fx.leaf(GPA), SeptEntry::Leaf { pfn: page, state: LeafState::Blocked });
        assert_eq!(tdx.pamt_entry(page).unwrap().bepoch, 0);
        let err = tdx.tdh_mem_range_block(fx.tdr, GPA, 0).unwrap_err();
        assert_eq!(err.status, st(TDX_GPA_RANGE_ALREADY_BLOCKED, TDX_OPERAND_ID_RCX));
        assert!(matches!(tdx.guest_private_access(fx.tdr, GPA, false), Err(TdExit::EptViolation { .. })));
        assert_eq!(status(tdx.tdh_mem_page_remove(fx.tdr, GPA, 0)), st(TDX_TLB_TRACKING_NOT_DONE, TDX_OPERAND_ID_RCX));
        tdx.tdh_mem_track(fx.tdr).unwrap();
        assert_eq!(tdx.td_epoch(fx.tdr), Some(1));
        assert_eq!(tdx.tdh_mem_page_remove(fx.tdr, GPA, 0), Ok(page));
        assert_eq!(fx.leaf(GPA), SeptEntry::Free);
        assert_eq!(fx.pt(page), PageType::Nda);
        assert!(tdx.host_reuse_hazard(page).unwrap().contains(&format!("KeyID {}", fx.hkid)));
        assert_eq!(status(tdx.tdh_phymem_page_wbinvd(page, 3)), st(TDX_OPERAND_INVALID, TDX_OPERAND_ID_RCX));
        tdx.tdh_phymem_page_wbinvd(page, fx.hkid).unwrap();
        assert!(tdx.host_reuse_hazard(page).unwrap().contains("MOVDIR64B"));
        assert!(!tdx.host_clear_page(page));
        assert_eq!(tdx.host_reuse_hazard(page), None);
        let err = tdx.tdh_mem_page_remove(fx.tdr, GPA, 0).unwrap_err();
        assert_eq!((err.status, err.entry), (st(TDX_EPT_ENTRY_STATE_INCORRECT, TDX_OPERAND_ID_RCX), SEPT_SUPPRESS_VE));
        // The frame can go to the same TD again, at another GPA.
        tdx.tdh_mem_page_aug(fx.tdr, GPA + 0x1000, 0, page).unwrap();
        assert_eq!(
            status(tdx.tdh_mem_page_remove(fx.tdr, GPA + 0x1000, 0)),
            st(TDX_GPA_RANGE_NOT_BLOCKED, TDX_OPERAND_ID_RCX)
        );
        // A PENDING page blocks to PENDING_BLOCKED and is removed the same way.
        tdx.tdh_mem_range_block(fx.tdr, GPA + 0x1000, 0).unwrap();
        assert_eq!(fx.leaf(GPA + 0x1000), SeptEntry::Leaf { pfn: page, state: LeafState::PendingBlocked });
        assert_eq!(tdx.pamt_entry(page).unwrap().bepoch, 1);
        tdx.tdh_mem_track(fx.tdr).unwrap();
        assert_eq!(tdx.tdh_mem_page_remove(fx.tdr, GPA + 0x1000, 0), Ok(page));
    }

    #[test]
    fn block_of_a_free_leaf_is_the_premap_signature() {
        // What KVM's tdx_is_sept_zap_err_due_to_premap looks for: EPT_ENTRY_STATE_INCORRECT on
        // RCX, and an entry that is not a present leaf with RWX.
        let fx = Fx::initialized();
        fx.tables(GPA);
        let err = fx.tdx.tdh_mem_range_block(fx.tdr, GPA, 0).unwrap_err();
        assert_eq!(err.status.raw(), TDX_EPT_ENTRY_STATE_INCORRECT | u64::from(TDX_OPERAND_ID_RCX));
        assert_eq!(err.entry & SEPT_RWX, 0);
        assert_eq!(err.level_state, 0, "level 0, FREE");
        // Before FINALIZE a PAGE.ADDed page can be blocked and removed without tracking.
        let page = fx.page();
        fx.tdx.tdh_mem_page_add(fx.tdr, GPA, page, fx.page()).unwrap();
        fx.tdx.tdh_mem_range_block(fx.tdr, GPA, 0).unwrap();
        assert_eq!(fx.tdx.tdh_mem_page_remove(fx.tdr, GPA, 0), Ok(page));
    }

    #[test]
    fn track_waits_for_vcpus_of_the_previous_epoch() {
        let mut fx = Fx::runnable();
        let tdx = fx.tdx.clone();
        let (a, b) = (fx.vcpus[0], fx.add_vcpu());
        tdx.tdh_vp_enter(a).unwrap();
        assert_eq!(tdx.td_info(fx.tdr).unwrap().vcpus[0].in_td_epoch, Some(0));
        // Epoch 0 → 1 is fine: vCPU a runs in the current epoch.
        tdx.tdh_mem_track(fx.tdr).unwrap();
        // 1 → 2 is not while a is still in epoch 0.
        assert_eq!(status(tdx.tdh_mem_track(fx.tdr)), st(TDX_PREVIOUS_TLB_EPOCH_BUSY, 0));
        assert_eq!(tdx.td_epoch(fx.tdr), Some(1), "a refused TRACK changes nothing");
        tdx.tdh_vp_enter(b).unwrap();
        assert!(tdx.vp_exit(a));
        assert!(!tdx.vp_exit(a));
        tdx.tdh_mem_track(fx.tdr).unwrap();
        assert_eq!(tdx.td_epoch(fx.tdr), Some(2));
        assert_eq!(status(tdx.tdh_mem_track(fx.tdr)), st(TDX_PREVIOUS_TLB_EPOCH_BUSY, 0), "b entered in epoch 1");
        assert!(tdx.vp_exit(b));
        tdx.tdh_mem_track(fx.tdr).unwrap();
    }

    #[test]
    fn remove_waits_until_the_vcpus_of_the_blocked_epoch_have_left() {
        let mut fx = Fx::runnable();
        let tdx = fx.tdx.clone();
        let (a, b) = (fx.vcpus[0], fx.add_vcpu());
        let page = fx.aug(GPA);
        tdx.tdg_mem_page_accept(fx.tdr, GPA, 0).unwrap();
        tdx.tdh_vp_enter(a).unwrap();
        tdx.tdh_mem_range_block(fx.tdr, GPA, 0).unwrap();
        assert_eq!(status(tdx.tdh_mem_page_remove(fx.tdr, GPA, 0)), st(TDX_TLB_TRACKING_NOT_DONE, TDX_OPERAND_ID_RCX));
        tdx.tdh_mem_track(fx.tdr).unwrap();
        // a may still hold the translation: it entered in the epoch of the block.
        assert_eq!(status(tdx.tdh_mem_page_remove(fx.tdr, GPA, 0)), st(TDX_TLB_TRACKING_NOT_DONE, TDX_OPERAND_ID_RCX));
        assert_eq!(fx.leaf(GPA), SeptEntry::Leaf { pfn: page, state: LeafState::Blocked });
        // b entering after the TRACK does not hold it up.
        tdx.tdh_vp_enter(b).unwrap();
        assert!(tdx.vp_exit(a));
        assert_eq!(tdx.tdh_mem_page_remove(fx.tdr, GPA, 0), Ok(page));
    }

    #[test]
    fn vp_enter_rules() {
        let mut fx = Fx::initialized();
        let tdx = fx.tdx.clone();
        let a = fx.add_vcpu();
        assert_eq!(status(tdx.tdh_vp_enter(a)), st(TDX_OP_STATE_INCORRECT, 0), "before FINALIZE");
        let uninitialized = fx.page();
        tdx.tdh_vp_create(fx.tdr, uninitialized).unwrap();
        tdx.tdh_mr_finalize(fx.tdr).unwrap();
        assert_eq!(status(tdx.tdh_vp_enter(uninitialized)), st(TDX_VCPU_STATE_INCORRECT, 0));
        assert_eq!(status(tdx.tdh_vp_enter(fx.tdr)), st(TDX_PAGE_METADATA_INCORRECT, TDX_OPERAND_ID_RCX));
        tdx.tdh_vp_enter(a).unwrap();
        assert_eq!(status(tdx.tdh_vp_enter(a)), st(TDX_VCPU_STATE_INCORRECT, 0), "already inside");
        assert_eq!(status(tdx.tdh_vp_flush(a)), st(TDX_VCPU_STATE_INCORRECT, 0), "inside the TD");
        assert!(tdx.vp_exit(a));
        tdx.tdh_vp_flush(a).unwrap();
        tdx.tdh_vp_enter(a).unwrap();
        assert!(tdx.td_info(fx.tdr).unwrap().vcpus.iter().any(|vcpu| vcpu.tdvpr == a && vcpu.associated));
    }

    #[test]
    fn sept_remove_of_an_empty_blocked_table() {
        let fx = Fx::runnable();
        let tdx = &fx.tdx;
        let pt_gpa = GPA & !0x1f_ffff;
        let table = match tdx.sept_entry(fx.tdr, GPA, 1) {
            Some(Ok(SeptEntry::Table { table, .. })) => table,
            other => panic!("{other:?}"),
        };
        let page = fx.aug(GPA);
        let err = tdx.tdh_mem_sept_remove(fx.tdr, pt_gpa, 1).unwrap_err();
        assert_eq!(err.status, st(TDX_EPT_PAGE_NOT_FREE, TDX_OPERAND_ID_RCX));
        tdx.tdh_mem_range_block(fx.tdr, GPA, 0).unwrap();
        tdx.tdh_mem_track(fx.tdr).unwrap();
        assert_eq!(tdx.tdh_mem_page_remove(fx.tdr, GPA, 0), Ok(page));
        assert_eq!(
            status(tdx.tdh_mem_sept_remove(fx.tdr, pt_gpa, 1)),
            st(TDX_GPA_RANGE_NOT_BLOCKED, TDX_OPERAND_ID_RCX)
        );
        assert_eq!(status(tdx.tdh_mem_sept_remove(fx.tdr, pt_gpa, 0)), st(TDX_OPERAND_INVALID, TDX_OPERAND_ID_RCX));
        tdx.tdh_mem_range_block(fx.tdr, pt_gpa, 1).unwrap();
        assert_eq!(tdx.sept_entry(fx.tdr, GPA, 1), Some(Ok(SeptEntry::Table { table, blocked: true })));
        assert_eq!(tdx.pamt_entry(table).unwrap().bepoch, 1);
        assert_eq!(
            status(tdx.tdh_mem_sept_remove(fx.tdr, pt_gpa, 1)),
            st(TDX_TLB_TRACKING_NOT_DONE, TDX_OPERAND_ID_RCX)
        );
        tdx.tdh_mem_track(fx.tdr).unwrap();
        assert_eq!(tdx.tdh_mem_sept_remove(fx.tdr, pt_gpa, 1), Ok(table));
        assert_eq!(fx.pt(table), PageType::Nda);
        assert_eq!(tdx.sept_entry(fx.tdr, GPA, 1), Some(Ok(SeptEntry::Free)));
        let err = tdx.tdh_mem_sept_remove(fx.tdr, pt_gpa, 1).unwrap_err();
        assert_eq!((err.status, err.level_state), (st(TDX_EPT_ENTRY_STATE_INCORRECT, TDX_OPERAND_ID_RCX), 1));
    }

    /// What `tdx_mmu_release_hkid` and the reclaim paths do, in order.
    #[test]
    fn teardown_returns_every_page_and_the_hkid() {
        let mut fx = Fx::runnable();
        let tdx = fx.tdx.clone();
        let vcpu = fx.vcpus[0];
        let second = fx.add_vcpu();
        let aug = fx.aug(GPA);
        let tables = fx.tables(GPA + (1 << 30));
        let aug2 = fx.aug(GPA + (1 << 30));
        tdx.tdh_vp_enter(vcpu).unwrap();
        assert!(tdx.vp_exit(vcpu));
        assert_eq!(
            status(tdx.tdh_phymem_page_reclaim(aug)),
            st(TDX_LIFECYCLE_STATE_INCORRECT, 0),
            "HKID still assigned"
        );
        assert_eq!(status(tdx.tdh_mng_key_freeid(fx.tdr)), st(TDX_LIFECYCLE_STATE_INCORRECT, 0));
        assert_eq!(status(tdx.tdh_mng_vpflushdone(fx.tdr)), st(TDX_FLUSHVP_NOT_DONE, 0));
        tdx.tdh_vp_flush(vcpu).unwrap();
        tdx.tdh_vp_flush(second).unwrap();
        tdx.tdh_mng_vpflushdone(fx.tdr).unwrap();
        assert_eq!(status(tdx.tdh_mng_vpflushdone(fx.tdr)), st(TDX_LIFECYCLE_STATE_INCORRECT, 0));
        assert_eq!(status(tdx.tdh_mng_key_config(fx.tdr)), st(TDX_KEY_STATE_INCORRECT, 0));
        assert_eq!(
            status(tdx.tdh_mem_page_aug(fx.tdr, GPA + 0x1000, 0, fx.page())),
            st(TDX_LIFECYCLE_STATE_INCORRECT, 0)
        );
        assert_eq!(status(tdx.tdh_mng_key_freeid(fx.tdr)), st(TDX_WBCACHE_NOT_COMPLETE, 0));
        // smp_func_do_phymem_cache_wb: resume after an interruption, bounded.
        assert_eq!(status(tdx.tdh_phymem_cache_wb(true)), st(TDX_WBCACHE_RESUME_ERROR, 0));
        tdx.set_cache_wb_interruptions(1);
        let mut result = Err(SeamcallError::new(TdxStatus::SUCCESS));
        let mut calls = 0;
        for _ in 0..10_000 {
            calls += 1;
            result = tdx.tdh_phymem_cache_wb(result.is_err() && calls > 1);
            match result {
                Err(err) if err.status.is(TDX_INTERRUPTED_RESUMABLE) => continue,
                _ => break,
            }
        }
        assert_eq!((result, calls), (Ok(()), 2));
        assert_eq!(status(tdx.tdh_phymem_cache_wb(false)), st(TDX_NO_HKID_READY_TO_WBCACHE, 0));
        assert!(tdx.td_info(fx.tdr).unwrap().wbcache_done);
        tdx.tdh_mng_key_freeid(fx.tdr).unwrap();
        assert_eq!(tdx.td_info(fx.tdr).unwrap().lifecycle, TdLifecycle::Teardown);
        assert_eq!(status(tdx.tdh_mem_track(fx.tdr)), st(TDX_LIFECYCLE_STATE_INCORRECT, 0));
        // The TDR goes last.
        assert_eq!(status(tdx.tdh_phymem_page_reclaim(fx.tdr)), st(TDX_TD_ASSOCIATED_PAGES_EXIST, 0));
        // A page's owner is an implicit operand: a management SEAMCALL holding the TDR makes
        // RECLAIM busy on TDR.
        let td = tdx.td(fx.tdr).unwrap();
        let barrier = Barrier::new(2);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let held = td.try_hold(TdLock::TdrExclusive).unwrap();
                barrier.wait();
                barrier.wait();
                drop(held);
            });
            barrier.wait();
            assert_eq!(status(tdx.tdh_phymem_page_reclaim(aug)), st(TDX_OPERAND_BUSY, TDX_OPERAND_ID_TDR));
            assert_eq!(fx.pt(aug), PageType::Reg);
            barrier.wait();
        });
        let owned: Vec<(Pfn, PamtEntry)> =
            tdx.pamt_frames().into_iter().map(|(pfn, frame)| (pfn, frame.entry)).collect();
        let mut count_by_type = BTreeMap::new();
        for (pfn, entry) in owned.iter().filter(|(pfn, entry)| entry.pt.is_td_owned() && *pfn != fx.tdr) {
            let out = tdx.tdh_phymem_page_reclaim(*pfn).unwrap();
            assert_eq!((out.page_type, out.owner, out.size), (entry.pt, fx.tdr, PageSize::Size4K));
            *count_by_type.entry(entry.pt).or_insert(0) += 1;
        }
        assert_eq!(count_by_type[&PageType::Reg], 2);
        assert_eq!(count_by_type[&PageType::Ept], 3 + tables.len());
        assert_eq!(count_by_type[&PageType::Tdvpr], 2);
        assert_eq!(count_by_type[&PageType::Tdcx], 6 + 2 * 5);
        assert_eq!(status(tdx.tdh_phymem_page_reclaim(aug2)), st(TDX_PAGE_METADATA_INCORRECT, TDX_OPERAND_ID_RCX));
        let out = tdx.tdh_phymem_page_reclaim(fx.tdr).unwrap();
        assert_eq!(out.page_type, PageType::Tdr);
        tdx.tdh_phymem_page_wbinvd(fx.tdr, tdx.global_keyid()).unwrap();
        // The PAMT is all PT_NDA again, and the TD is gone.
        assert_eq!(tdx.td_owned_frames(), 0);
        assert!(tdx.pamt_frames().iter().all(|(_, frame)| frame.entry.pt == PageType::Nda));
        assert!(tdx.td(fx.tdr).is_none());
        // The HKID is free in the module: a new TD can use it.
        let tdr = fx.page();
        tdx.tdh_mng_create(tdr, fx.hkid).unwrap();
    }

    #[test]
    fn injected_errors_fire_once_and_change_nothing() {
        let fx = Fx::runnable();
        let tdx = &fx.tdx;
        let busy_sept = TdxStatus::new(TDX_OPERAND_BUSY, TDX_OPERAND_ID_SEPT);
        tdx.inject(SeamcallLeaf::MemPageAug, busy_sept, 1, 1);
        fx.aug(GPA);
        let page = fx.page();
        assert_eq!(status(tdx.tdh_mem_page_aug(fx.tdr, GPA + 0x1000, 0, page)), busy_sept);
        assert_eq!((fx.pt(page), fx.leaf(GPA + 0x1000)), (PageType::Nda, SeptEntry::Free));
        tdx.tdh_mem_page_aug(fx.tdr, GPA + 0x1000, 0, page).unwrap();
        assert_eq!(tdx.executed(SeamcallLeaf::MemPageAug), 3);
        tdx.inject(SeamcallLeaf::MemTrack, TdxStatus::from_name("PREVIOUS_TLB_EPOCH_BUSY").unwrap(), 0, 2);
        tdx.clear_injected();
        tdx.tdh_mem_track(fx.tdr).unwrap();
    }

    #[test]
    fn a_held_module_lock_is_busy_for_another_thread() {
        let fx = Fx::runnable();
        let tdx = &fx.tdx;
        let td = tdx.td(fx.tdr).unwrap();
        let page = fx.page();
        let vcpu = fx.vcpus[0];
        let barrier = Barrier::new(2);
        for (lock, expected) in [
            (TdLock::SeptExclusive, st(TDX_OPERAND_BUSY, TDX_OPERAND_ID_SEPT)),
            (TdLock::TdrExclusive, st(TDX_OPERAND_BUSY, TDX_OPERAND_ID_RDX)),
        ] {
            std::thread::scope(|scope| {
                scope.spawn(|| {
                    let held = td.try_hold(lock).unwrap();
                    barrier.wait();
                    barrier.wait();
                    drop(held);
                });
                barrier.wait();
                assert_eq!(status(tdx.tdh_mem_page_aug(fx.tdr, GPA, 0, page)), expected, "{lock:?}");
                assert_eq!((fx.pt(page), fx.leaf(GPA)), (PageType::Nda, SeptEntry::Free), "the loser changed nothing");
                barrier.wait();
            });
        }
        // The zero-step mitigation's exclusive S-EPT lock also holds the guest's ACCEPT off.
        fx.tdx.tdh_mem_page_aug(fx.tdr, GPA, 0, page).unwrap();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let held = td.try_hold(TdLock::SeptExclusive).unwrap();
                barrier.wait();
                barrier.wait();
                drop(held);
            });
            barrier.wait();
            assert_eq!(tdx.tdg_mem_page_accept(fx.tdr, GPA, 0), Ok(st(TDX_OPERAND_BUSY, TDX_OPERAND_ID_SEPT)));
            assert_eq!(fx.leaf(GPA), SeptEntry::Leaf { pfn: page, state: LeafState::Pending });
            barrier.wait();
        });
        // A TRACK in flight holds VP.ENTER and another TRACK off; a VP.ENTER in flight, TRACK.
        for lock in [TdLock::EpochExclusive, TdLock::EpochShared] {
            std::thread::scope(|scope| {
                scope.spawn(|| {
                    let held = td.try_hold(lock).unwrap();
                    barrier.wait();
                    barrier.wait();
                    drop(held);
                });
                barrier.wait();
                assert_eq!(status(tdx.tdh_mem_track(fx.tdr)), st(TDX_OPERAND_BUSY, TDX_OPERAND_ID_TD_EPOCH));
                assert_eq!(tdx.td_epoch(fx.tdr), Some(0));
                if lock == TdLock::EpochExclusive {
                    assert_eq!(status(tdx.tdh_vp_enter(vcpu)), st(TDX_OPERAND_BUSY, TDX_OPERAND_ID_TD_EPOCH));
                    assert!(!tdx.vp_exit(vcpu), "the refused VP.ENTER did not enter");
                }
                barrier.wait();
            });
        }
        tdx.tdh_mem_track(fx.tdr).unwrap();
        assert!(td.try_hold(TdLock::TdrShared).is_some());
    }

    #[test]
    fn track_and_vp_enter_really_contend() {
        let fx = Fx::runnable();
        let tdx = &fx.tdx;
        let vcpu = fx.vcpus[0];
        const ROUNDS: usize = 2000;
        let barrier = Barrier::new(2);
        let (tracked, entered) = std::thread::scope(|scope| {
            let tracker = scope.spawn(|| {
                barrier.wait();
                let mut ok = 0u64;
                for _ in 0..ROUNDS {
                    match tdx.tdh_mem_track(fx.tdr) {
                        Ok(()) => ok += 1,
                        Err(err) => assert!(
                            err.status == st(TDX_OPERAND_BUSY, TDX_OPERAND_ID_TD_EPOCH)
                                || err.status == st(TDX_PREVIOUS_TLB_EPOCH_BUSY, 0),
                            "{err}"
                        ),
                    }
                }
                ok
            });
            barrier.wait();
            let mut entered = 0u64;
            for _ in 0..ROUNDS {
                match tdx.tdh_vp_enter(vcpu) {
                    Ok(_) => {
                        entered += 1;
                        assert!(tdx.vp_exit(vcpu));
                    }
                    Err(err) => {
                        assert_eq!(err.status, st(TDX_OPERAND_BUSY, TDX_OPERAND_ID_TD_EPOCH));
                        assert!(!tdx.vp_exit(vcpu), "a refused VP.ENTER left the vCPU inside");
                    }
                }
            }
            (tracker.join().unwrap(), entered)
        });
        assert_eq!(tdx.td_epoch(fx.tdr), Some(tracked), "only the successful TRACKs moved the epoch");
        assert!(entered + tracked > 0);
        // Nothing was left behind: with the vCPU outside, TRACK succeeds twice in a row.
        tdx.tdh_mem_track(fx.tdr).unwrap();
        tdx.tdh_mem_track(fx.tdr).unwrap();
        assert_eq!(tdx.td_epoch(fx.tdr), Some(tracked + 2));
    }

    #[test]
    fn aug_and_block_really_contend_on_the_sept_lock() {
        let fx = Fx::runnable();
        let tdx = &fx.tdx;
        let target = GPA + 0x10_0000;
        let blocked = fx.aug(target);
        let pages: Vec<Pfn> = (0..255).map(|_| fx.page()).collect();
        let barrier = Barrier::new(2);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                barrier.wait();
                for _ in 0..4000 {
                    match tdx.tdh_mem_range_block(fx.tdr, target, 0) {
                        Ok(()) => {}
                        Err(err) => assert!(
                            err.status == st(TDX_OPERAND_BUSY, TDX_OPERAND_ID_SEPT)
                                || err.status == st(TDX_GPA_RANGE_ALREADY_BLOCKED, TDX_OPERAND_ID_RCX),
                            "{err}"
                        ),
                    }
                }
            });
            barrier.wait();
            for (i, &page) in pages.iter().enumerate() {
                let gpa = GPA + ((i as u64 + 1) << 12);
                let mut done = false;
                for _ in 0..10_000 {
                    match tdx.tdh_mem_page_aug(fx.tdr, gpa, 0, page) {
                        Ok(()) => {
                            done = true;
                            break;
                        }
                        Err(err) => {
                            assert_eq!(err.status, st(TDX_OPERAND_BUSY, TDX_OPERAND_ID_SEPT));
                            assert_eq!((fx.pt(page), fx.leaf(gpa)), (PageType::Nda, SeptEntry::Free));
                            gmem_sync::thread::yield_now();
                        }
                    }
                }
                assert!(done, "AUG of {gpa:#x} kept failing");
            }
        });
        for (i, &page) in pages.iter().enumerate() {
            assert_eq!(fx.leaf(GPA + ((i as u64 + 1) << 12)), SeptEntry::Leaf { pfn: page, state: LeafState::Pending });
        }
        assert_eq!(fx.leaf(target), SeptEntry::Leaf { pfn: blocked, state: LeafState::PendingBlocked });
    }
}
