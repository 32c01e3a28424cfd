//! The SEAMCALL interface's numbers: the leaf functions KVM calls, the status codes the TDX module
//! returns in RAX, and the operand ids that qualify them.
//!
//! A status is 64 bits: the upper 32 are the class (bit 63 "error", bit 62 "non-recoverable",
//! then a category and a code), the lower 32 name the operand the status is about (a register,
//! `TDX_OPERAND_ID_RCX`, or an implicit object, `TDX_OPERAND_ID_SEPT`). The kernel compares only
//! the class (`status & TDX_SEAMCALL_STATUS_MASK`) except where it needs the operand (the
//! "premapped but never PAGE.ADDed" signature of `tdx_is_sept_zap_err_due_to_premap`, which
//! compares the whole value with `TDX_EPT_ENTRY_STATE_INCORRECT | TDX_OPERAND_ID_RCX`).
//!
//! Sources: the classes the kernel names are those of `arch/x86/kvm/vmx/tdx_errno.h` (v6.18;
//! moved to `arch/x86/include/asm/shared/tdx_errno.h` later, same values), the leaf numbers those
//! of `arch/x86/virt/vmx/tdx/tdx.h`. The classes and operand ids the kernel does not name
//! (`TDX_TLB_TRACKING_NOT_DONE`, `TDX_GPA_RANGE_NOT_BLOCKED`, `TDX_LIFECYCLE_STATE_INCORRECT`,
//! `TDX_OPERAND_ID_TDCX`, ...) and `TDH.MEM.SEPT.REMOVE` (leaf 30, which v6.18 no longer calls)
//! are the TDX module ABI's, as the module's own sources define them.

use std::fmt;

/// `TDX_SEAMCALL_STATUS_MASK`: the class part of a status.
pub const TDX_SEAMCALL_STATUS_MASK: u64 = 0xFFFF_FFFF_0000_0000;

/// `TDX_SUCCESS`.
pub const TDX_SUCCESS: u64 = 0;
/// `TDX_NON_RECOVERABLE_VCPU`.
pub const TDX_NON_RECOVERABLE_VCPU: u64 = 0x4000_0001_0000_0000;
/// `TDX_NON_RECOVERABLE_TD` (the kernel's value).
pub const TDX_NON_RECOVERABLE_TD: u64 = 0x4000_0002_0000_0000;
/// `TDX_INTERRUPTED_RESUMABLE`: a long operation (CACHE.WB) was interrupted; call it again with
/// the resume flag.
pub const TDX_INTERRUPTED_RESUMABLE: u64 = 0x8000_0003_0000_0000;
/// `TDX_OPERAND_INVALID`.
pub const TDX_OPERAND_INVALID: u64 = 0xC000_0100_0000_0000;
/// `TDX_OPERAND_ADDR_RANGE_ERROR`: a physical address outside the TDX-convertible memory.
pub const TDX_OPERAND_ADDR_RANGE_ERROR: u64 = 0xC000_0101_0000_0000;
/// `TDX_OPERAND_BUSY`: a lock the SEAMCALL needs is held by a concurrent SEAMCALL or TDCALL.
pub const TDX_OPERAND_BUSY: u64 = 0x8000_0200_0000_0000;
/// `TDX_PREVIOUS_TLB_EPOCH_BUSY`: TRACK while a vCPU still runs in the epoch before the current.
pub const TDX_PREVIOUS_TLB_EPOCH_BUSY: u64 = 0x8000_0201_0000_0000;
/// `TDX_SYS_BUSY`.
pub const TDX_SYS_BUSY: u64 = 0x8000_0202_0000_0000;
/// `TDX_PAGE_METADATA_INCORRECT`: a page's PAMT entry is not what the SEAMCALL needs (a donated
/// page that is not PT_NDA, a TDR operand that is not PT_TDR, ...).
pub const TDX_PAGE_METADATA_INCORRECT: u64 = 0xC000_0300_0000_0000;
/// `TDX_TD_ASSOCIATED_PAGES_EXIST`: RECLAIM of a TDR while the TD still owns pages.
pub const TDX_TD_ASSOCIATED_PAGES_EXIST: u64 = 0xC000_0400_0000_0000;
/// `TDX_TDCS_NOT_ALLOCATED`: MNG.INIT before every TDCS page was added.
pub const TDX_TDCS_NOT_ALLOCATED: u64 = 0xC000_0606_0000_0000;
/// `TDX_LIFECYCLE_STATE_INCORRECT`: the TD's key lifecycle (TDR) forbids the SEAMCALL.
pub const TDX_LIFECYCLE_STATE_INCORRECT: u64 = 0xC000_0607_0000_0000;
/// `TDX_OP_STATE_INCORRECT`: the TD's operation state (TDCS) forbids the SEAMCALL.
pub const TDX_OP_STATE_INCORRECT: u64 = 0xC000_0608_0000_0000;
/// `TDX_TDCX_NUM_INCORRECT`: VP.INIT before every TDCX page of the vCPU was added, or one too
/// many ADDCX.
pub const TDX_TDCX_NUM_INCORRECT: u64 = 0xC000_0610_0000_0000;
/// `TDX_VCPU_STATE_INCORRECT`.
pub const TDX_VCPU_STATE_INCORRECT: u64 = 0xC000_0700_0000_0000;
/// `TDX_VCPU_NOT_ASSOCIATED`: VP.FLUSH of a vCPU no logical processor holds (the kernel ignores it).
pub const TDX_VCPU_NOT_ASSOCIATED: u64 = 0x8000_0702_0000_0000;
/// `TDX_MAX_VCPUS_EXCEEDED`.
pub const TDX_MAX_VCPUS_EXCEEDED: u64 = 0xC000_0705_0000_0000;
/// `TDX_KEY_GENERATION_FAILED`.
pub const TDX_KEY_GENERATION_FAILED: u64 = 0x8000_0800_0000_0000;
/// `TDX_TD_KEYS_NOT_CONFIGURED`: a SEAMCALL that needs the TD's key before KEY.CONFIG.
pub const TDX_TD_KEYS_NOT_CONFIGURED: u64 = 0x8000_0810_0000_0000;
/// `TDX_KEY_STATE_INCORRECT`.
pub const TDX_KEY_STATE_INCORRECT: u64 = 0xC000_0811_0000_0000;
/// `TDX_KEY_CONFIGURED`: KEY.CONFIG of a key already configured on the package (not an error).
pub const TDX_KEY_CONFIGURED: u64 = 0x0000_0815_0000_0000;
/// `TDX_WBCACHE_NOT_COMPLETE`: KEY.FREEID before CACHE.WB wrote the TD's key's lines back.
pub const TDX_WBCACHE_NOT_COMPLETE: u64 = 0x8000_0817_0000_0000;
/// `TDX_HKID_NOT_FREE`: MNG.CREATE with a KeyID another TD holds.
pub const TDX_HKID_NOT_FREE: u64 = 0xC000_0820_0000_0000;
/// `TDX_NO_HKID_READY_TO_WBCACHE`: CACHE.WB with no released key to write back (the kernel
/// treats it as success).
pub const TDX_NO_HKID_READY_TO_WBCACHE: u64 = 0x0000_0821_0000_0000;
/// `TDX_WBCACHE_RESUME_ERROR`: CACHE.WB resumed with nothing interrupted.
pub const TDX_WBCACHE_RESUME_ERROR: u64 = 0xC000_0823_0000_0000;
/// `TDX_FLUSHVP_NOT_DONE`: VPFLUSHDONE while a vCPU is still associated with a logical processor.
pub const TDX_FLUSHVP_NOT_DONE: u64 = 0x8000_0824_0000_0000;
/// `TDX_EPT_WALK_FAILED`: the S-EPT walk to the requested level met a non-present entry.
pub const TDX_EPT_WALK_FAILED: u64 = 0xC000_0B00_0000_0000;
/// `TDX_GPA_RANGE_NOT_BLOCKED`: REMOVE (or SEPT.REMOVE) of an entry that was not blocked.
pub const TDX_GPA_RANGE_NOT_BLOCKED: u64 = 0xC000_0B06_0000_0000;
/// `TDX_GPA_RANGE_ALREADY_BLOCKED`: RANGE.BLOCK of a blocked entry (not an error).
pub const TDX_GPA_RANGE_ALREADY_BLOCKED: u64 = 0x0000_0B07_0000_0000;
/// `TDX_TLB_TRACKING_NOT_DONE`: REMOVE of a blocked entry before a TRACK after the block and the
/// exit of every vCPU that was in the TD then.
pub const TDX_TLB_TRACKING_NOT_DONE: u64 = 0xC000_0B08_0000_0000;
/// `TDX_PAGE_ALREADY_ACCEPTED`: TDG.MEM.PAGE.ACCEPT of a MAPPED page (not an error).
pub const TDX_PAGE_ALREADY_ACCEPTED: u64 = 0x0000_0B0A_0000_0000;
/// `TDX_EPT_ENTRY_STATE_INCORRECT`: the S-EPT entry's state forbids the SEAMCALL.
pub const TDX_EPT_ENTRY_STATE_INCORRECT: u64 = 0xC000_0B0D_0000_0000;
/// `TDX_EPT_PAGE_NOT_FREE`: SEPT.REMOVE of a table that still has entries.
pub const TDX_EPT_PAGE_NOT_FREE: u64 = 0xC000_0B0E_0000_0000;
/// `TDX_METADATA_FIELD_NOT_READABLE`.
pub const TDX_METADATA_FIELD_NOT_READABLE: u64 = 0xC000_0C02_0000_0000;

/// `TDX_OPERAND_ID_RCX`.
pub const TDX_OPERAND_ID_RCX: u32 = 0x01;
/// `TDX_OPERAND_ID_RDX`.
pub const TDX_OPERAND_ID_RDX: u32 = 0x02;
/// `TDX_OPERAND_ID_R8`.
pub const TDX_OPERAND_ID_R8: u32 = 0x08;
/// `TDX_OPERAND_ID_R9`.
pub const TDX_OPERAND_ID_R9: u32 = 0x09;
/// `TDX_OPERAND_ID_TDR`: the TD's root page when it is an implicit operand (found through a
/// TDVPR, or the owner of a reclaimed page); an explicit TDR operand is named by its register.
pub const TDX_OPERAND_ID_TDR: u32 = 0x80;
/// `TDX_OPERAND_ID_TDCX`.
pub const TDX_OPERAND_ID_TDCX: u32 = 0x81;
/// `TDX_OPERAND_ID_TDVPR`.
pub const TDX_OPERAND_ID_TDVPR: u32 = 0x82;
/// `TDX_OPERAND_ID_TDCS`.
pub const TDX_OPERAND_ID_TDCS: u32 = 0x90;
/// `TDX_OPERAND_ID_SEPT` (the module's `OPERAND_ID_SEPT_TREE`): the TD's S-EPT tree lock.
pub const TDX_OPERAND_ID_SEPT: u32 = 0x92;
/// `TDX_OPERAND_ID_TD_EPOCH`: the TD's epoch lock (TRACK, VP.ENTER).
pub const TDX_OPERAND_ID_TD_EPOCH: u32 = 0xa9;
/// `TDX_OPERAND_ID_KOT`: the module's key ownership table.
pub const TDX_OPERAND_ID_KOT: u32 = 0xba;

/// Every class the model knows by name: `(value, name without the TDX_ prefix)`.
const CLASSES: [(u64, &str); 35] = [
    (TDX_SUCCESS, "SUCCESS"),
    (TDX_NON_RECOVERABLE_VCPU, "NON_RECOVERABLE_VCPU"),
    (TDX_NON_RECOVERABLE_TD, "NON_RECOVERABLE_TD"),
    (TDX_INTERRUPTED_RESUMABLE, "INTERRUPTED_RESUMABLE"),
    (TDX_OPERAND_INVALID, "OPERAND_INVALID"),
    (TDX_OPERAND_ADDR_RANGE_ERROR, "OPERAND_ADDR_RANGE_ERROR"),
    (TDX_OPERAND_BUSY, "OPERAND_BUSY"),
    (TDX_PREVIOUS_TLB_EPOCH_BUSY, "PREVIOUS_TLB_EPOCH_BUSY"),
    (TDX_SYS_BUSY, "SYS_BUSY"),
    (TDX_PAGE_METADATA_INCORRECT, "PAGE_METADATA_INCORRECT"),
    (TDX_TD_ASSOCIATED_PAGES_EXIST, "TD_ASSOCIATED_PAGES_EXIST"),
    (TDX_TDCS_NOT_ALLOCATED, "TDCS_NOT_ALLOCATED"),
    (TDX_LIFECYCLE_STATE_INCORRECT, "LIFECYCLE_STATE_INCORRECT"),
    (TDX_OP_STATE_INCORRECT, "OP_STATE_INCORRECT"),
    (TDX_TDCX_NUM_INCORRECT, "TDCX_NUM_INCORRECT"),
    (TDX_VCPU_STATE_INCORRECT, "VCPU_STATE_INCORRECT"),
    (TDX_VCPU_NOT_ASSOCIATED, "VCPU_NOT_ASSOCIATED"),
    (TDX_MAX_VCPUS_EXCEEDED, "MAX_VCPUS_EXCEEDED"),
    (TDX_KEY_GENERATION_FAILED, "KEY_GENERATION_FAILED"),
    (TDX_TD_KEYS_NOT_CONFIGURED, "TD_KEYS_NOT_CONFIGURED"),
    (TDX_KEY_STATE_INCORRECT, "KEY_STATE_INCORRECT"),
    (TDX_KEY_CONFIGURED, "KEY_CONFIGURED"),
    (TDX_WBCACHE_NOT_COMPLETE, "WBCACHE_NOT_COMPLETE"),
    (TDX_HKID_NOT_FREE, "HKID_NOT_FREE"),
    (TDX_NO_HKID_READY_TO_WBCACHE, "NO_HKID_READY_TO_WBCACHE"),
    (TDX_WBCACHE_RESUME_ERROR, "WBCACHE_RESUME_ERROR"),
    (TDX_FLUSHVP_NOT_DONE, "FLUSHVP_NOT_DONE"),
    (TDX_EPT_WALK_FAILED, "EPT_WALK_FAILED"),
    (TDX_GPA_RANGE_NOT_BLOCKED, "GPA_RANGE_NOT_BLOCKED"),
    (TDX_GPA_RANGE_ALREADY_BLOCKED, "GPA_RANGE_ALREADY_BLOCKED"),
    (TDX_TLB_TRACKING_NOT_DONE, "TLB_TRACKING_NOT_DONE"),
    (TDX_PAGE_ALREADY_ACCEPTED, "PAGE_ALREADY_ACCEPTED"),
    (TDX_EPT_ENTRY_STATE_INCORRECT, "EPT_ENTRY_STATE_INCORRECT"),
    (TDX_EPT_PAGE_NOT_FREE, "EPT_PAGE_NOT_FREE"),
    (TDX_METADATA_FIELD_NOT_READABLE, "METADATA_FIELD_NOT_READABLE"),
];

/// Every operand id the model knows by name.
const OPERANDS: [(u32, &str); 12] = [
    (TDX_OPERAND_ID_RCX, "RCX"),
    (TDX_OPERAND_ID_RDX, "RDX"),
    (TDX_OPERAND_ID_R8, "R8"),
    (TDX_OPERAND_ID_R9, "R9"),
    (TDX_OPERAND_ID_TDR, "TDR"),
    (TDX_OPERAND_ID_TDCX, "TDCX"),
    (TDX_OPERAND_ID_TDVPR, "TDVPR"),
    (TDX_OPERAND_ID_TDCS, "TDCS"),
    (TDX_OPERAND_ID_SEPT, "SEPT"),
    (TDX_OPERAND_ID_TD_EPOCH, "TD_EPOCH"),
    (TDX_OPERAND_ID_KOT, "KOT"),
    (0, "NONE"),
];

/// A SEAMCALL (or TDCALL) status: RAX on return.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TdxStatus(pub u64);

impl TdxStatus {
    /// `TDX_SUCCESS`.
    pub const SUCCESS: TdxStatus = TdxStatus(TDX_SUCCESS);

    /// The status of class `class` (an upper-32-bit value) about operand `operand`.
    pub const fn new(class: u64, operand: u32) -> TdxStatus {
        TdxStatus((class & TDX_SEAMCALL_STATUS_MASK) | operand as u64)
    }

    /// The raw 64-bit value.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// The class (`status & TDX_SEAMCALL_STATUS_MASK`).
    pub const fn class(self) -> u64 {
        self.0 & TDX_SEAMCALL_STATUS_MASK
    }

    /// The operand id (the lower 32 bits).
    pub const fn operand(self) -> u32 {
        self.0 as u32
    }

    /// The same class about another operand.
    pub const fn with_operand(self, operand: u32) -> TdxStatus {
        TdxStatus::new(self.0, operand)
    }

    /// Whether the status is `TDX_SUCCESS`.
    pub const fn is_success(self) -> bool {
        self.0 == TDX_SUCCESS
    }

    /// Bit 63: the SEAMCALL failed (statuses without it, such as `TDX_KEY_CONFIGURED`, are
    /// warnings of a call that did what it could).
    pub const fn is_error(self) -> bool {
        self.0 & (1 << 63) != 0
    }

    /// `tdx_operand_busy`: the class is `TDX_OPERAND_BUSY`, whatever the operand.
    pub const fn is_busy(self) -> bool {
        self.class() == TDX_OPERAND_BUSY
    }

    /// Whether the class is `class` (an upper-32-bit constant of this module).
    pub const fn is(self, class: u64) -> bool {
        self.class() == class & TDX_SEAMCALL_STATUS_MASK
    }

    /// The class's name without its `TDX_` prefix (`OPERAND_BUSY`), or `UNKNOWN`.
    pub fn name(self) -> &'static str {
        CLASSES.iter().find(|(class, _)| *class == self.class()).map_or("UNKNOWN", |(_, name)| name)
    }

    /// The operand's name (`SEPT`), if the model knows it.
    pub fn operand_name(self) -> Option<&'static str> {
        OPERANDS.iter().find(|(id, _)| *id == self.operand()).map(|(_, name)| *name)
    }

    /// Parses a status for injection: a class name with or without `TDX_`
    /// (`OPERAND_BUSY`, `TDX_EPT_WALK_FAILED`), optionally followed by `|` or `:` and an operand
    /// (a name, `SEPT`, `TDX_OPERAND_ID_TD_EPOCH`, or a number, `0x92`); or the whole 64-bit
    /// value as a number (`0x8000020000000092`). Case-insensitive. `None` if it names nothing.
    pub fn from_name(text: &str) -> Option<TdxStatus> {
        let text = text.trim();
        if let Some(value) = parse_number(text) {
            return Some(TdxStatus(value));
        }
        let (class, operand) = match text.split_once(['|', ':']) {
            Some((class, operand)) => (class.trim(), Some(operand.trim())),
            None => (text, None),
        };
        let bare = strip_prefix_ci(class, "TDX_").unwrap_or(class);
        let class = CLASSES.iter().find(|(_, name)| name.eq_ignore_ascii_case(bare))?.0;
        let operand = match operand {
            None => 0,
            Some(operand) => {
                let bare = strip_prefix_ci(operand, "TDX_OPERAND_ID_")
                    .or_else(|| strip_prefix_ci(operand, "OPERAND_ID_"))
                    .unwrap_or(operand);
                match parse_number(bare) {
                    Some(id) => u32::try_from(id).ok()?,
                    None => OPERANDS.iter().find(|(_, name)| name.eq_ignore_ascii_case(bare))?.0,
                }
            }
        };
        Some(TdxStatus::new(class, operand))
    }
}

fn strip_prefix_ci<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &text[prefix.len()..])
}

fn parse_number(text: &str) -> Option<u64> {
    match strip_prefix_ci(text, "0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None if text.chars().all(|c| c.is_ascii_digit()) && !text.is_empty() => text.parse().ok(),
        None => None,
    }
}

impl fmt::Display for TdxStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TDX_{}", self.name())?;
        match (self.operand(), self.operand_name()) {
            (0, _) => {}
            (_, Some(name)) => write!(f, "|{name}")?,
            (id, None) => write!(f, "|{id:#x}")?,
        }
        write!(f, " ({:#018x})", self.0)
    }
}

impl fmt::Debug for TdxStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A failed SEAMCALL as the kernel sees it: the status in RAX and the extended error
/// information in RCX and RDX (for the S-EPT SEAMCALLs: the offending S-EPT entry in its
/// architectural form, and its level and state; zero when the module reports none).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeamcallError {
    /// RAX.
    pub status: TdxStatus,
    /// RCX out: `entry` (`ext_err1` of the kernel's wrappers).
    pub entry: u64,
    /// RDX out: `level_state` (`ext_err2`): the entry's level in bits 7:0, its state in 15:8.
    pub level_state: u64,
}

impl SeamcallError {
    /// `status` with no extended information.
    pub const fn new(status: TdxStatus) -> SeamcallError {
        SeamcallError { status, entry: 0, level_state: 0 }
    }

    /// `tdx_operand_busy(err)`.
    pub const fn is_busy(&self) -> bool {
        self.status.is_busy()
    }
}

impl From<TdxStatus> for SeamcallError {
    fn from(status: TdxStatus) -> Self {
        SeamcallError::new(status)
    }
}

impl fmt::Display for SeamcallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.status)?;
        if self.entry != 0 || self.level_state != 0 {
            write!(f, ", entry {:#x}, level_state {:#x}", self.entry, self.level_state)?;
        }
        Ok(())
    }
}

impl fmt::Debug for SeamcallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What every SEAMCALL of the model returns.
pub type SeamcallResult<T> = Result<T, SeamcallError>;

/// The SEAMCALL leaves KVM uses (`TDH_*` of `arch/x86/virt/vmx/tdx/tdx.h`), plus
/// `TDH.MEM.SEPT.REMOVE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u16)]
pub enum SeamcallLeaf {
    /// `TDH_VP_ENTER` (0).
    VpEnter = 0,
    /// `TDH_MNG_ADDCX` (1).
    MngAddcx = 1,
    /// `TDH_MEM_PAGE_ADD` (2).
    MemPageAdd = 2,
    /// `TDH_MEM_SEPT_ADD` (3).
    MemSeptAdd = 3,
    /// `TDH_VP_ADDCX` (4).
    VpAddcx = 4,
    /// `TDH_MEM_PAGE_AUG` (6).
    MemPageAug = 6,
    /// `TDH_MEM_RANGE_BLOCK` (7).
    MemRangeBlock = 7,
    /// `TDH_MNG_KEY_CONFIG` (8).
    MngKeyConfig = 8,
    /// `TDH_MNG_CREATE` (9).
    MngCreate = 9,
    /// `TDH_VP_CREATE` (10).
    VpCreate = 10,
    /// `TDH_MR_EXTEND` (16).
    MrExtend = 16,
    /// `TDH_MR_FINALIZE` (17).
    MrFinalize = 17,
    /// `TDH_VP_FLUSH` (18).
    VpFlush = 18,
    /// `TDH_MNG_VPFLUSHDONE` (19).
    MngVpflushdone = 19,
    /// `TDH_MNG_KEY_FREEID` (20).
    MngKeyFreeid = 20,
    /// `TDH_MNG_INIT` (21).
    MngInit = 21,
    /// `TDH_VP_INIT` (22).
    VpInit = 22,
    /// `TDH_PHYMEM_PAGE_RECLAIM` (28).
    PhymemPageReclaim = 28,
    /// `TDH_MEM_PAGE_REMOVE` (29).
    MemPageRemove = 29,
    /// `TDH_MEM_SEPT_REMOVE` (30; the module's, not in v6.18's tdx.h).
    MemSeptRemove = 30,
    /// `TDH_MEM_TRACK` (38).
    MemTrack = 38,
    /// `TDH_PHYMEM_CACHE_WB` (40).
    PhymemCacheWb = 40,
    /// `TDH_PHYMEM_PAGE_WBINVD` (41).
    PhymemPageWbinvd = 41,
}

impl SeamcallLeaf {
    /// Every leaf, in number order.
    pub const ALL: [SeamcallLeaf; 23] = [
        SeamcallLeaf::VpEnter,
        SeamcallLeaf::MngAddcx,
        SeamcallLeaf::MemPageAdd,
        SeamcallLeaf::MemSeptAdd,
        SeamcallLeaf::VpAddcx,
        SeamcallLeaf::MemPageAug,
        SeamcallLeaf::MemRangeBlock,
        SeamcallLeaf::MngKeyConfig,
        SeamcallLeaf::MngCreate,
        SeamcallLeaf::VpCreate,
        SeamcallLeaf::MrExtend,
        SeamcallLeaf::MrFinalize,
        SeamcallLeaf::VpFlush,
        SeamcallLeaf::MngVpflushdone,
        SeamcallLeaf::MngKeyFreeid,
        SeamcallLeaf::MngInit,
        SeamcallLeaf::VpInit,
        SeamcallLeaf::PhymemPageReclaim,
        SeamcallLeaf::MemPageRemove,
        SeamcallLeaf::MemSeptRemove,
        SeamcallLeaf::MemTrack,
        SeamcallLeaf::PhymemCacheWb,
        SeamcallLeaf::PhymemPageWbinvd,
    ];

    /// The leaf number (RAX on entry, bits 15:0).
    pub const fn number(self) -> u16 {
        self as u16
    }

    /// The kernel's name without its `TDH_` prefix (`MEM_PAGE_AUG`).
    pub const fn name(self) -> &'static str {
        match self {
            SeamcallLeaf::VpEnter => "VP_ENTER",
            SeamcallLeaf::MngAddcx => "MNG_ADDCX",
            SeamcallLeaf::MemPageAdd => "MEM_PAGE_ADD",
            SeamcallLeaf::MemSeptAdd => "MEM_SEPT_ADD",
            SeamcallLeaf::VpAddcx => "VP_ADDCX",
            SeamcallLeaf::MemPageAug => "MEM_PAGE_AUG",
            SeamcallLeaf::MemRangeBlock => "MEM_RANGE_BLOCK",
            SeamcallLeaf::MngKeyConfig => "MNG_KEY_CONFIG",
            SeamcallLeaf::MngCreate => "MNG_CREATE",
            SeamcallLeaf::VpCreate => "VP_CREATE",
            SeamcallLeaf::MrExtend => "MR_EXTEND",
            SeamcallLeaf::MrFinalize => "MR_FINALIZE",
            SeamcallLeaf::VpFlush => "VP_FLUSH",
            SeamcallLeaf::MngVpflushdone => "MNG_VPFLUSHDONE",
            SeamcallLeaf::MngKeyFreeid => "MNG_KEY_FREEID",
            SeamcallLeaf::MngInit => "MNG_INIT",
            SeamcallLeaf::VpInit => "VP_INIT",
            SeamcallLeaf::PhymemPageReclaim => "PHYMEM_PAGE_RECLAIM",
            SeamcallLeaf::MemPageRemove => "MEM_PAGE_REMOVE",
            SeamcallLeaf::MemSeptRemove => "MEM_SEPT_REMOVE",
            SeamcallLeaf::MemTrack => "MEM_TRACK",
            SeamcallLeaf::PhymemCacheWb => "PHYMEM_CACHE_WB",
            SeamcallLeaf::PhymemPageWbinvd => "PHYMEM_PAGE_WBINVD",
        }
    }

    /// Looks a leaf up by name (`TDH_MEM_PAGE_AUG`, `MEM_PAGE_AUG`, `TDH.MEM.PAGE.AUG`,
    /// case-insensitive) or number.
    pub fn from_name(text: &str) -> Option<SeamcallLeaf> {
        let text = text.trim();
        if let Some(number) = parse_number(text) {
            return SeamcallLeaf::ALL.into_iter().find(|leaf| u64::from(leaf.number()) == number);
        }
        let normalised = text.replace('.', "_");
        let bare = strip_prefix_ci(&normalised, "TDH_").unwrap_or(&normalised);
        SeamcallLeaf::ALL.into_iter().find(|leaf| leaf.name().eq_ignore_ascii_case(bare))
    }
}

impl fmt::Display for SeamcallLeaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TDH_{} ({})", self.name(), self.number())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernels_values() {
        // tdx_errno.h (v6.18) and tdx.h, as read from the kernel source.
        assert_eq!(TDX_SEAMCALL_STATUS_MASK, 0xFFFFFFFF00000000);
        assert_eq!(TDX_OPERAND_BUSY, 0x8000020000000000);
        assert_eq!(TDX_PREVIOUS_TLB_EPOCH_BUSY, 0x8000020100000000);
        assert_eq!(TDX_EPT_ENTRY_STATE_INCORRECT, 0xC0000B0D00000000);
        assert_eq!(TDX_EPT_WALK_FAILED, 0xC0000B0000000000);
        assert_eq!(TDX_INTERRUPTED_RESUMABLE, 0x8000000300000000);
        assert_eq!(TDX_NO_HKID_READY_TO_WBCACHE, 0x0000082100000000);
        assert_eq!(TDX_FLUSHVP_NOT_DONE, 0x8000082400000000);
        assert_eq!(
            (TDX_OPERAND_ID_RCX, TDX_OPERAND_ID_TDR, TDX_OPERAND_ID_SEPT, TDX_OPERAND_ID_TD_EPOCH),
            (1, 0x80, 0x92, 0xa9)
        );
        let numbers: Vec<(u16, &str)> = SeamcallLeaf::ALL.iter().map(|leaf| (leaf.number(), leaf.name())).collect();
        for (number, name) in [
            (1, "MNG_ADDCX"),
            (2, "MEM_PAGE_ADD"),
            (3, "MEM_SEPT_ADD"),
            (4, "VP_ADDCX"),
            (6, "MEM_PAGE_AUG"),
            (7, "MEM_RANGE_BLOCK"),
            (8, "MNG_KEY_CONFIG"),
            (9, "MNG_CREATE"),
            (10, "VP_CREATE"),
            (16, "MR_EXTEND"),
            (17, "MR_FINALIZE"),
            (18, "VP_FLUSH"),
            (19, "MNG_VPFLUSHDONE"),
            (20, "MNG_KEY_FREEID"),
            (21, "MNG_INIT"),
            (22, "VP_INIT"),
            (28, "PHYMEM_PAGE_RECLAIM"),
            (29, "MEM_PAGE_REMOVE"),
            (30, "MEM_SEPT_REMOVE"),
            (38, "MEM_TRACK"),
            (40, "PHYMEM_CACHE_WB"),
            (41, "PHYMEM_PAGE_WBINVD"),
        ] {
            assert!(numbers.contains(&(number, name)), "{name} = {number}");
        }
    }

    #[test]
    fn busy_compares_the_class_only() {
        let sept = TdxStatus::new(TDX_OPERAND_BUSY, TDX_OPERAND_ID_SEPT);
        assert_eq!(sept.raw(), 0x8000020000000092);
        assert!(sept.is_busy() && sept.is_error());
        assert_eq!(sept.operand(), 0x92);
        assert!(!TdxStatus::new(TDX_PREVIOUS_TLB_EPOCH_BUSY, 0).is_busy(), "a different class");
        assert!(!TdxStatus(TDX_KEY_CONFIGURED).is_error());
        assert!(TdxStatus::SUCCESS.is_success());
        assert!(sept.is(TDX_OPERAND_BUSY));
        assert_eq!(sept.with_operand(TDX_OPERAND_ID_TD_EPOCH).raw(), 0x80000200000000a9);
    }

    #[test]
    fn names_print_and_parse() {
        let status = TdxStatus::new(TDX_EPT_ENTRY_STATE_INCORRECT, TDX_OPERAND_ID_RCX);
        assert_eq!(status.name(), "EPT_ENTRY_STATE_INCORRECT");
        assert_eq!(status.to_string(), "TDX_EPT_ENTRY_STATE_INCORRECT|RCX (0xc0000b0d00000001)");
        assert_eq!(TdxStatus(0xC000_0999_0000_0000).name(), "UNKNOWN");
        for (text, value) in [
            ("OPERAND_BUSY", 0x8000020000000000),
            ("tdx_operand_busy|sept", 0x8000020000000092),
            ("OPERAND_BUSY:TD_EPOCH", 0x80000200000000a9),
            ("TDX_OPERAND_BUSY|TDX_OPERAND_ID_TDR", 0x8000020000000080),
            ("EPT_ENTRY_STATE_INCORRECT|0x1", 0xC0000B0D00000001),
            ("0x8000020100000000", TDX_PREVIOUS_TLB_EPOCH_BUSY),
            ("TLB_TRACKING_NOT_DONE", TDX_TLB_TRACKING_NOT_DONE),
        ] {
            assert_eq!(TdxStatus::from_name(text), Some(TdxStatus(value)), "{text}");
        }
        assert_eq!(TdxStatus::from_name("NOT_A_STATUS"), None);
        assert_eq!(TdxStatus::from_name("OPERAND_BUSY|NOT_AN_OPERAND"), None);
        for leaf in SeamcallLeaf::ALL {
            assert_eq!(SeamcallLeaf::from_name(leaf.name()), Some(leaf));
            assert_eq!(SeamcallLeaf::from_name(&format!("TDH_{}", leaf.name())), Some(leaf));
            assert_eq!(SeamcallLeaf::from_name(&leaf.number().to_string()), Some(leaf));
        }
        assert_eq!(SeamcallLeaf::from_name("TDH.MEM.PAGE.AUG"), Some(SeamcallLeaf::MemPageAug));
        assert_eq!(SeamcallLeaf::from_name("5"), None, "leaf 5 (PAGE.RELOCATE) is not modelled");
        let err = SeamcallError { status, entry: 0x8000_0000_0000_0000, level_state: 0 };
        assert!(err.to_string().contains("entry 0x8000000000000000"));
    }
}
