//! The SEV-SNP firmware running on the AMD Secure Processor: guest contexts, the launch
//! commands and page reclaim, as the SEV-SNP Firmware ABI defines them. KVM reaches it through
//! the PSP driver ([`crate::sev::psp`]); this module is what answers.
//!
//! The firmware keeps one *guest context* per SNP guest, in a page the hypervisor donated
//! (`SNP_GCTX_CREATE`; the page is firmware-owned in the RMP). A context moves through
//! GSTATE_INIT → GSTATE_LAUNCH (`SNP_LAUNCH_START`) → GSTATE_RUNNING (`SNP_LAUNCH_FINISH`); it is
//! bound to an ASID by `SNP_ACTIVATE` and destroyed by `SNP_DECOMMISSION`. While the context is
//! launching, `SNP_LAUNCH_UPDATE` takes pages the hypervisor made Pre-Guest (assigned to the
//! guest's ASID, immutable), initialises them by type, extends the launch digest
//! ([`crate::sev::measure`]) and leaves them Guest-Valid.
//!
//! What the model decides where the ABI leaves it to the firmware's implementation (documented
//! in `docs/FIDELITY.md`):
//!
//! * the SECRETS page is filled with bytes derived from the context (not real keys);
//! * CPUID validation: a table with more than [`SNP_CPUID_COUNT_MAX`] entries, or an entry whose
//!   reserved field is not zero, is rejected with `INVALID_PARAM`, and the firmware writes the
//!   table it would accept (those entries' reserved fields cleared) back into the page;
//! * an ID block is checked against the launch digest and the policy (`BAD_MEASUREMENT`,
//!   `POLICY_FAILURE`); its signature is not verified.
//!
//! Every command can be made to fail on purpose ([`SnpFirmware::inject`]): the next calls of
//! that command return the given firmware status without changing anything, as a firmware
//! error would.

use crate::sev::measure::{LaunchDigest, SnpPageType};
use crate::sev::rmp::{FirmwareTransition, Rmp};
use gmem_mm::types::PAGE_SIZE;
use gmem_mm::{Machine, Pfn};
use gmem_sync::{Arc, LockClass, Mutex};
use std::collections::BTreeMap;
use std::fmt;

/// The firmware's own lock (the PSP processes one command at a time).
static SNP_FIRMWARE_LOCK: LockClass = LockClass::new("sev firmware");

/// `SEV_RET_*`: the firmware's status codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
#[allow(missing_docs)]
pub enum SevRet {
    InvalidPlatformState = 0x01,
    InvalidGuestState = 0x02,
    InvalidConfig = 0x03,
    InvalidLen = 0x04,
    AlreadyOwned = 0x05,
    InvalidCertificate = 0x06,
    PolicyFailure = 0x07,
    Inactive = 0x08,
    InvalidAddress = 0x09,
    BadSignature = 0x0a,
    BadMeasurement = 0x0b,
    AsidOwned = 0x0c,
    InvalidAsid = 0x0d,
    WbinvdRequired = 0x0e,
    DfflushRequired = 0x0f,
    InvalidGuest = 0x10,
    InvalidCommand = 0x11,
    Active = 0x12,
    HwsevRetPlatform = 0x13,
    HwsevRetUnsafe = 0x14,
    Unsupported = 0x15,
    InvalidParam = 0x16,
    ResourceLimit = 0x17,
    SecureDataInvalid = 0x18,
    InvalidPageSize = 0x19,
    InvalidPageState = 0x1a,
    InvalidMdataEntry = 0x1b,
    InvalidPageOwner = 0x1c,
    AeadOflow = 0x1d,
    RmpInitRequired = 0x20,
}

impl SevRet {
    /// Every status, for parsing and help texts.
    pub const ALL: [SevRet; 30] = [
        SevRet::InvalidPlatformState,
        SevRet::InvalidGuestState,
        SevRet::InvalidConfig,
        SevRet::InvalidLen,
        SevRet::AlreadyOwned,
        SevRet::InvalidCertificate,
        SevRet::PolicyFailure,
        SevRet::Inactive,
        SevRet::InvalidAddress,
        SevRet::BadSignature,
        SevRet::BadMeasurement,
        SevRet::AsidOwned,
        SevRet::InvalidAsid,
        SevRet::WbinvdRequired,
        SevRet::DfflushRequired,
        SevRet::InvalidGuest,
        SevRet::InvalidCommand,
        SevRet::Active,
        SevRet::HwsevRetPlatform,
        SevRet::HwsevRetUnsafe,
        SevRet::Unsupported,
        SevRet::InvalidParam,
        SevRet::ResourceLimit,
        SevRet::SecureDataInvalid,
        SevRet::InvalidPageSize,
        SevRet::InvalidPageState,
        SevRet::InvalidMdataEntry,
        SevRet::InvalidPageOwner,
        SevRet::AeadOflow,
        SevRet::RmpInitRequired,
    ];

    /// The raw status (what lands in `kvm_sev_cmd.error`).
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The name without its `SEV_RET_` prefix (`INVALID_PARAM`).
    pub fn name(self) -> &'static str {
        match self {
            SevRet::InvalidPlatformState => "INVALID_PLATFORM_STATE",
            SevRet::InvalidGuestState => "INVALID_GUEST_STATE",
            SevRet::InvalidConfig => "INVALID_CONFIG",
            SevRet::InvalidLen => "INVALID_LEN",
            SevRet::AlreadyOwned => "ALREADY_OWNED",
            SevRet::InvalidCertificate => "INVALID_CERTIFICATE",
            SevRet::PolicyFailure => "POLICY_FAILURE",
            SevRet::Inactive => "INACTIVE",
            SevRet::InvalidAddress => "INVALID_ADDRESS",
            SevRet::BadSignature => "BAD_SIGNATURE",
            SevRet::BadMeasurement => "BAD_MEASUREMENT",
            SevRet::AsidOwned => "ASID_OWNED",
            SevRet::InvalidAsid => "INVALID_ASID",
            SevRet::WbinvdRequired => "WBINVD_REQUIRED",
            SevRet::DfflushRequired => "DFFLUSH_REQUIRED",
            SevRet::InvalidGuest => "INVALID_GUEST",
            SevRet::InvalidCommand => "INVALID_COMMAND",
            SevRet::Active => "ACTIVE",
            SevRet::HwsevRetPlatform => "HWSEV_RET_PLATFORM",
            SevRet::HwsevRetUnsafe => "HWSEV_RET_UNSAFE",
            SevRet::Unsupported => "UNSUPPORTED",
            SevRet::InvalidParam => "INVALID_PARAM",
            SevRet::ResourceLimit => "RESOURCE_LIMIT",
            SevRet::SecureDataInvalid => "SECURE_DATA_INVALID",
            SevRet::InvalidPageSize => "INVALID_PAGE_SIZE",
            SevRet::InvalidPageState => "INVALID_PAGE_STATE",
            SevRet::InvalidMdataEntry => "INVALID_MDATA_ENTRY",
            SevRet::InvalidPageOwner => "INVALID_PAGE_OWNER",
            SevRet::AeadOflow => "AEAD_OFLOW",
            SevRet::RmpInitRequired => "RMP_INIT_REQUIRED",
        }
    }

    /// Looks a status up by its name (with or without `SEV_RET_`) or its number.
    pub fn from_name(name: &str) -> Option<SevRet> {
        let bare = name.strip_prefix("SEV_RET_").unwrap_or(name);
        SevRet::ALL.into_iter().find(|ret| ret.name().eq_ignore_ascii_case(bare)).or_else(|| {
            let code = match bare.strip_prefix("0x") {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => bare.parse().ok()?,
            };
            SevRet::ALL.into_iter().find(|ret| ret.code() == code)
        })
    }
}

impl fmt::Display for SevRet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:#x})", self.name(), self.code())
    }
}

/// The firmware commands the model implements (`SEV_CMD_SNP_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum SevCmd {
    /// `SEV_CMD_SNP_INIT_EX`: initialise the SNP platform.
    SnpInitEx = 0x85,
    /// `SEV_CMD_SNP_DF_FLUSH`.
    SnpDfFlush = 0x84,
    /// `SEV_CMD_SNP_DECOMMISSION`: destroy a guest context.
    SnpDecommission = 0x90,
    /// `SEV_CMD_SNP_ACTIVATE`: bind an ASID to a guest context.
    SnpActivate = 0x91,
    /// `SEV_CMD_SNP_GCTX_CREATE`: create a guest context in a firmware page.
    SnpGctxCreate = 0x93,
    /// `SEV_CMD_SNP_LAUNCH_START`.
    SnpLaunchStart = 0xa0,
    /// `SEV_CMD_SNP_LAUNCH_UPDATE`.
    SnpLaunchUpdate = 0xa1,
    /// `SEV_CMD_SNP_LAUNCH_FINISH`.
    SnpLaunchFinish = 0xa2,
    /// `SEV_CMD_SNP_PAGE_RECLAIM`.
    SnpPageReclaim = 0xc7,
}

impl SevCmd {
    /// Every command.
    pub const ALL: [SevCmd; 9] = [
        SevCmd::SnpInitEx,
        SevCmd::SnpDfFlush,
        SevCmd::SnpDecommission,
        SevCmd::SnpActivate,
        SevCmd::SnpGctxCreate,
        SevCmd::SnpLaunchStart,
        SevCmd::SnpLaunchUpdate,
        SevCmd::SnpLaunchFinish,
        SevCmd::SnpPageReclaim,
    ];

    /// The name without its `SEV_CMD_SNP_` prefix (`LAUNCH_UPDATE`).
    pub fn name(self) -> &'static str {
        match self {
            SevCmd::SnpInitEx => "INIT_EX",
            SevCmd::SnpDfFlush => "DF_FLUSH",
            SevCmd::SnpDecommission => "DECOMMISSION",
            SevCmd::SnpActivate => "ACTIVATE",
            SevCmd::SnpGctxCreate => "GCTX_CREATE",
            SevCmd::SnpLaunchStart => "LAUNCH_START",
            SevCmd::SnpLaunchUpdate => "LAUNCH_UPDATE",
            SevCmd::SnpLaunchFinish => "LAUNCH_FINISH",
            SevCmd::SnpPageReclaim => "PAGE_RECLAIM",
        }
    }

    /// Looks a command up by its name (with or without `SEV_CMD_SNP_`).
    pub fn from_name(name: &str) -> Option<SevCmd> {
        let bare = name.strip_prefix("SEV_CMD_SNP_").or_else(|| name.strip_prefix("SNP_")).unwrap_or(name);
        SevCmd::ALL.into_iter().find(|cmd| cmd.name().eq_ignore_ascii_case(bare))
    }
}

/// A guest context's state (`GSTATE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestState {
    /// Created, not launching yet.
    Init,
    /// Between LAUNCH_START and LAUNCH_FINISH: LAUNCH_UPDATE is allowed.
    Launch,
    /// Launched: the measurement is final.
    Running,
}

/// One guest context.
#[derive(Clone, Debug)]
pub struct GuestContext {
    /// The state.
    pub state: GuestState,
    /// The guest policy (from LAUNCH_START).
    pub policy: u64,
    /// The ASID bound by ACTIVATE.
    pub asid: Option<u32>,
    /// The launch digest so far.
    pub digest: LaunchDigest,
    /// What each successful LAUNCH_UPDATE measured, in order (the S11 invariant replays it
    /// against `digest`).
    pub updates: Vec<LaunchUpdateRecord>,
    /// How many updates the log held when LAUNCH_FINISH succeeded (`None` before).
    pub updates_at_finish: Option<usize>,
    /// HOST_DATA from LAUNCH_FINISH.
    pub host_data: [u8; 32],
}

/// One successful LAUNCH_UPDATE as the firmware measured it: what it hashed into the launch
/// digest (the PAGE_INFO fields that vary).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct LaunchUpdateRecord {
    /// The GPA measured (the page's RMP entry's; [`crate::sev::measure::VMSA_GPA`] for a VMSA).
    pub gpa: u64,
    /// The page type.
    pub page_type: SnpPageType,
    /// CONTENTS: the SHA-384 of the page for NORMAL and VMSA pages, zeros for the others.
    pub contents: [u8; 48],
}

impl fmt::Debug for LaunchUpdateRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {:#x}", self.page_type, self.gpa)
    }
}

/// `struct sev_data_snp_launch_update` (the parts the model reads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnpLaunchUpdateData {
    /// `gctx_paddr`: the guest context page.
    pub gctx: Pfn,
    /// `address`: the page to initialise.
    pub page: Pfn,
    /// `page_size`: 0 = 4K, 1 = 2M.
    pub page_size: u8,
    /// `page_type`.
    pub page_type: u8,
}

/// `struct sev_data_snp_launch_finish` (the parts the model reads).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnpLaunchFinishData {
    /// `gctx_paddr`: the guest context page.
    pub gctx: Option<Pfn>,
    /// The ID block when `id_block_en`.
    pub id_block: Option<Vec<u8>>,
    /// `host_data`.
    pub host_data: [u8; 32],
}

/// The maximum number of entries of an SNP CPUID table (`SNP_CPUID_COUNT_MAX`).
pub const SNP_CPUID_COUNT_MAX: u32 = 64;
/// The size of one CPUID table entry (`struct snp_cpuid_fn`).
const SNP_CPUID_FN_SIZE: usize = 48;
/// Where the entries start in the table (`count`, `__reserved1`, `__reserved2`).
const SNP_CPUID_TABLE_HEADER: usize = 16;

/// `SNP_POLICY_MASK_RSVD_MBO`: the policy bit the ABI requires set.
pub const SNP_POLICY_MASK_RSVD_MBO: u64 = 1 << 17;

/// An armed fault: the next `count` calls of `cmd`, after `after` calls pass, fail with `ret`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct InjectedFault {
    cmd: SevCmd,
    ret: SevRet,
    after: u32,
    count: u32,
}

struct State {
    /// `SNP_INIT_EX` ran.
    initialized: bool,
    /// Guest contexts by their page.
    contexts: BTreeMap<u64, GuestContext>,
    /// ASID → the context it is bound to.
    asids: BTreeMap<u32, u64>,
    /// Armed faults.
    faults: Vec<InjectedFault>,
    /// Commands executed, by command (for tests and dumps).
    executed: BTreeMap<u32, u64>,
}

/// The SEV-SNP firmware of one host.
pub struct SnpFirmware {
    machine: Arc<Machine>,
    rmp: Arc<Rmp>,
    state: Mutex<State>,
}

impl fmt::Debug for SnpFirmware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.lock();
        f.debug_struct("SnpFirmware")
            .field("initialized", &state.initialized)
            .field("contexts", &state.contexts.len())
            .finish()
    }
}

impl SnpFirmware {
    /// The firmware of a host whose RMP is `rmp`.
    pub fn new(machine: &Arc<Machine>, rmp: Arc<Rmp>) -> SnpFirmware {
        SnpFirmware {
            machine: machine.clone(),
            rmp,
            state: Mutex::new(
                &SNP_FIRMWARE_LOCK,
                State {
                    initialized: false,
                    contexts: BTreeMap::new(),
                    asids: BTreeMap::new(),
                    faults: Vec::new(),
                    executed: BTreeMap::new(),
                },
            ),
        }
    }

    /// Arms a fault: after `after` more calls of `cmd`, the next `count` fail with `ret` and
    /// change nothing.
    pub fn inject(&self, cmd: SevCmd, ret: SevRet, after: u32, count: u32) {
        self.state.lock().faults.push(InjectedFault { cmd, ret, after, count });
    }

    /// Disarms every fault.
    pub fn clear_injected(&self) {
        self.state.lock().faults.clear();
    }

    /// How many times `cmd` ran (successfully or not).
    pub fn executed(&self, cmd: SevCmd) -> u64 {
        self.state.lock().executed.get(&(cmd as u32)).copied().unwrap_or(0)
    }

    /// A copy of the guest context in `gctx`, if there is one.
    pub fn context(&self, gctx: Pfn) -> Option<GuestContext> {
        self.state.lock().contexts.get(&gctx.0).cloned()
    }

    /// The guest contexts, by page.
    pub fn contexts(&self) -> Vec<(Pfn, GuestContext)> {
        self.state.lock().contexts.iter().map(|(&page, ctx)| (Pfn(page), ctx.clone())).collect()
    }

    /// Whether `SNP_INIT_EX` ran.
    pub fn is_initialized(&self) -> bool {
        self.state.lock().initialized
    }

    /// Counts the call and consumes an armed fault for `cmd`, if one fires now.
    fn begin(state: &mut State, cmd: SevCmd) -> Result<(), SevRet> {
        *state.executed.entry(cmd as u32).or_default() += 1;
        for fault in state.faults.iter_mut().filter(|fault| fault.cmd == cmd && fault.count > 0) {
            if fault.after > 0 {
                fault.after -= 1;
                continue;
            }
            fault.count -= 1;
            let ret = fault.ret;
            state.faults.retain(|fault| fault.count > 0);
            return Err(ret);
        }
        Ok(())
    }

    /// `SNP_INIT_EX`: the platform goes from UNINIT to INIT (idempotent for the model's
    /// purposes: the driver only sends it once).
    pub fn snp_init(&self) -> Result<(), SevRet> {
        let mut state = self.state.lock();
        SnpFirmware::begin(&mut state, SevCmd::SnpInitEx)?;
        if state.initialized {
            return Err(SevRet::InvalidPlatformState);
        }
        state.initialized = true;
        Ok(())
    }

    /// `SNP_DF_FLUSH`: flush the data fabric write buffers (needed before ASIDs are reused).
    pub fn df_flush(&self) -> Result<(), SevRet> {
        let mut state = self.state.lock();
        SnpFirmware::begin(&mut state, SevCmd::SnpDfFlush)?;
        if !state.initialized {
            return Err(SevRet::InvalidPlatformState);
        }
        Ok(())
    }

    /// Checks that `page` is a firmware page (assigned, ASID 0, immutable).
    fn is_firmware_page(&self, page: Pfn) -> bool {
        self.rmp.read(page).is_some_and(|entry| entry.assigned && entry.immutable && entry.asid == 0)
    }

    /// `SNP_GCTX_CREATE`: a new guest context in the firmware page `gctx`.
    pub fn gctx_create(&self, gctx: Pfn) -> Result<(), SevRet> {
        let mut state = self.state.lock();
        SnpFirmware::begin(&mut state, SevCmd::SnpGctxCreate)?;
        if !state.initialized {
            return Err(SevRet::InvalidPlatformState);
        }
        if !self.is_firmware_page(gctx) {
            return Err(SevRet::InvalidPageState);
        }
        if state.contexts.contains_key(&gctx.0) {
            return Err(SevRet::InvalidPageState);
        }
        state.contexts.insert(
            gctx.0,
            GuestContext {
                state: GuestState::Init,
                policy: 0,
                asid: None,
                digest: LaunchDigest::new(),
                updates: Vec::new(),
                updates_at_finish: None,
                host_data: [0; 32],
            },
        );
        Ok(())
    }

    /// `SNP_LAUNCH_START`: the context starts launching with `policy`.
    pub fn launch_start(&self, gctx: Pfn, policy: u64) -> Result<(), SevRet> {
        let mut state = self.state.lock();
        SnpFirmware::begin(&mut state, SevCmd::SnpLaunchStart)?;
        let context = state.contexts.get_mut(&gctx.0).ok_or(SevRet::InvalidGuest)?;
        if context.state != GuestState::Init {
            return Err(SevRet::InvalidGuestState);
        }
        if policy & SNP_POLICY_MASK_RSVD_MBO == 0 {
            return Err(SevRet::PolicyFailure);
        }
        context.policy = policy;
        context.state = GuestState::Launch;
        Ok(())
    }

    /// `SNP_ACTIVATE`: bind `asid` to the context.
    pub fn activate(&self, gctx: Pfn, asid: u32) -> Result<(), SevRet> {
        let mut state = self.state.lock();
        SnpFirmware::begin(&mut state, SevCmd::SnpActivate)?;
        if asid == 0 {
            return Err(SevRet::InvalidAsid);
        }
        if state.asids.get(&asid).is_some_and(|&owner| owner != gctx.0) {
            return Err(SevRet::AsidOwned);
        }
        let context = state.contexts.get_mut(&gctx.0).ok_or(SevRet::InvalidGuest)?;
        if context.asid.is_some() {
            return Err(SevRet::Active);
        }
        context.asid = Some(asid);
        state.asids.insert(asid, gctx.0);
        Ok(())
    }

    /// `SNP_LAUNCH_UPDATE`: initialise the Pre-Guest page `data.page` of the launching context
    /// by its type, extend the launch digest, make it Guest-Valid (or, for a VMSA, a VMSA).
    /// On failure the page stays Pre-Guest; for a CPUID page the firmware rejected, the page
    /// holds the table it would accept.
    pub fn launch_update(&self, data: &SnpLaunchUpdateData) -> Result<(), SevRet> {
        let mut state = self.state.lock();
        SnpFirmware::begin(&mut state, SevCmd::SnpLaunchUpdate)?;
        let page_type = SnpPageType::from_raw(data.page_type).ok_or(SevRet::InvalidParam)?;
        let context = state.contexts.get_mut(&data.gctx.0).ok_or(SevRet::InvalidGuest)?;
        if context.state != GuestState::Launch {
            return Err(SevRet::InvalidGuestState);
        }
        let asid = context.asid.ok_or(SevRet::Inactive)?;
        if data.page_size != 0 {
            return Err(SevRet::InvalidPageSize);
        }
        let entry = self.rmp.read(data.page).ok_or(SevRet::InvalidAddress)?;
        if !entry.assigned || !entry.immutable || entry.pagesize_2m {
            return Err(SevRet::InvalidPageState);
        }
        if entry.asid != asid {
            return Err(SevRet::InvalidPageOwner);
        }
        let mem = &self.machine.mem;
        let mut page = [0u8; PAGE_SIZE as usize];
        mem.read(data.page, 0, &mut page);
        match page_type {
            SnpPageType::Normal | SnpPageType::Unmeasured => {}
            SnpPageType::Zero => {
                page.fill(0);
                mem.write_unchecked(data.page, 0, &page);
            }
            SnpPageType::Secrets => {
                page = secrets_page(data.gctx, entry.gpa);
                mem.write_unchecked(data.page, 0, &page);
            }
            SnpPageType::Cpuid => {
                if let Some(accepted) = validate_cpuid_table(&page) {
                    // The firmware writes what it would accept and leaves the page unencrypted,
                    // so the hypervisor can report it.
                    mem.write_unchecked(data.page, 0, &accepted);
                    return Err(SevRet::InvalidParam);
                }
            }
            SnpPageType::Vmsa => {}
        }
        let contents = LaunchDigest::contents_hash(page_type, &page);
        context.digest.extend_hashed(page_type, entry.gpa, &contents);
        context.updates.push(LaunchUpdateRecord { gpa: entry.gpa, page_type, contents });
        let transition = if page_type == SnpPageType::Vmsa {
            FirmwareTransition::VmsaLaunched
        } else {
            FirmwareTransition::LaunchUpdated
        };
        self.rmp.firmware_set(data.page, transition);
        Ok(())
    }

    /// `SNP_LAUNCH_FINISH`: the launch is complete; the digest is final. An ID block must carry
    /// the launch digest and the policy.
    pub fn launch_finish(&self, data: &SnpLaunchFinishData) -> Result<(), SevRet> {
        let mut state = self.state.lock();
        SnpFirmware::begin(&mut state, SevCmd::SnpLaunchFinish)?;
        let gctx = data.gctx.ok_or(SevRet::InvalidAddress)?;
        let context = state.contexts.get_mut(&gctx.0).ok_or(SevRet::InvalidGuest)?;
        if context.state != GuestState::Launch {
            return Err(SevRet::InvalidGuestState);
        }
        if let Some(id_block) = &data.id_block {
            // struct sev_snp_id_block: ld[48], family_id[16], image_id[16], version u32,
            // guest_svn u32, policy u64.
            if id_block.len() < 96 || id_block[..48] != context.digest.as_bytes()[..] {
                return Err(SevRet::BadMeasurement);
            }
            let policy = u64::from_le_bytes(id_block[88..96].try_into().expect("8 bytes"));
            if policy != context.policy {
                return Err(SevRet::PolicyFailure);
            }
        }
        context.host_data = data.host_data;
        context.state = GuestState::Running;
        context.updates_at_finish = Some(context.updates.len());
        Ok(())
    }

    /// Test-only: appends `record` to the update log of the context in `gctx` without measuring
    /// it, as a firmware that logged one thing and hashed another would (the negative controls
    /// of S8 and S11). False if there is no such context.
    #[doc(hidden)]
    pub fn log_update_for_test(&self, gctx: Pfn, record: LaunchUpdateRecord) -> bool {
        let mut state = self.state.lock();
        let Some(context) = state.contexts.get_mut(&gctx.0) else { return false };
        context.updates.push(record);
        true
    }

    /// `SNP_DECOMMISSION`: destroy the context (its ASID is free to bind again after a DF_FLUSH).
    /// The context page stays firmware-owned until the hypervisor reclaims it.
    pub fn decommission(&self, gctx: Pfn) -> Result<(), SevRet> {
        let mut state = self.state.lock();
        SnpFirmware::begin(&mut state, SevCmd::SnpDecommission)?;
        let context = state.contexts.remove(&gctx.0).ok_or(SevRet::InvalidGuest)?;
        if let Some(asid) = context.asid {
            state.asids.remove(&asid);
        }
        Ok(())
    }

    /// `SNP_PAGE_RECLAIM`: a page in a firmware-owned state (Firmware, Pre-Guest, a context
    /// page whose context was decommissioned, a guest's VMSA) becomes one the hypervisor may
    /// change with RMPUPDATE. A page that is a live guest context cannot be reclaimed.
    pub fn page_reclaim(&self, page: Pfn) -> Result<(), SevRet> {
        let mut state = self.state.lock();
        SnpFirmware::begin(&mut state, SevCmd::SnpPageReclaim)?;
        let entry = self.rmp.read(page).ok_or(SevRet::InvalidAddress)?;
        if !entry.assigned || !(entry.immutable || entry.vmsa) {
            return Err(SevRet::InvalidPageState);
        }
        if state.contexts.contains_key(&page.0) {
            return Err(SevRet::InvalidPageState);
        }
        self.rmp.firmware_set(page, FirmwareTransition::Reclaimed);
        Ok(())
    }
}

/// The model's secrets page for a context: deterministic bytes derived from the context and the
/// GPA (a real firmware writes the VM platform communication keys).
fn secrets_page(gctx: Pfn, gpa: u64) -> [u8; PAGE_SIZE as usize] {
    let mut page = [0u8; PAGE_SIZE as usize];
    let mut state = gctx.0.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ gpa;
    for chunk in page.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes());
    }
    page
}

/// The model's CPUID validation (see the module docs): `None` if the table is accepted, else the
/// table the firmware would accept.
fn validate_cpuid_table(page: &[u8; PAGE_SIZE as usize]) -> Option<[u8; PAGE_SIZE as usize]> {
    let count = u32::from_le_bytes(page[0..4].try_into().expect("4 bytes"));
    let mut accepted = *page;
    let mut rejected = false;
    if count > SNP_CPUID_COUNT_MAX {
        accepted[0..4].copy_from_slice(&SNP_CPUID_COUNT_MAX.to_le_bytes());
        rejected = true;
    }
    for i in 0..count.min(SNP_CPUID_COUNT_MAX) as usize {
        let reserved = SNP_CPUID_TABLE_HEADER + i * SNP_CPUID_FN_SIZE + 40;
        if accepted[reserved..reserved + 8].iter().any(|&byte| byte != 0) {
            accepted[reserved..reserved + 8].fill(0);
            rejected = true;
        }
    }
    rejected.then_some(accepted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sev::rmp::RmpState;
    use gmem_mm::MachineConfig;

    struct Fixture {
        machine: Arc<Machine>,
        rmp: Arc<Rmp>,
        fw: SnpFirmware,
        gctx: Pfn,
    }

    const ASID: u32 = 3;

    fn launching() -> Fixture {
        let machine = Machine::new(MachineConfig::tiny(4096));
        let rmp = Arc::new(Rmp::new(4096));
        let fw = SnpFirmware::new(&machine, rmp.clone());
        fw.snp_init().unwrap();
        let gctx = machine.mem.alloc(0).unwrap();
        rmp.rmpupdate(gctx, &RmpState { assigned: true, immutable: true, ..RmpState::default() }).unwrap();
        fw.gctx_create(gctx).unwrap();
        fw.launch_start(gctx, SNP_POLICY_MASK_RSVD_MBO).unwrap();
        fw.activate(gctx, ASID).unwrap();
        Fixture { machine, rmp, fw, gctx }
    }

    impl Fixture {
        fn pre_guest(&self, gpa: u64, contents: &[u8]) -> Pfn {
            let pfn = self.machine.mem.alloc(0).unwrap();
            self.machine.mem.write(pfn, 0, contents);
            self.rmp
                .rmpupdate(pfn, &RmpState { gpa, assigned: true, immutable: true, asid: ASID, pagesize_2m: false })
                .unwrap();
            pfn
        }

        fn update(&self, page: Pfn, page_type: SnpPageType) -> Result<(), SevRet> {
            self.fw.launch_update(&SnpLaunchUpdateData {
                gctx: self.gctx,
                page,
                page_size: 0,
                page_type: page_type as u8,
            })
        }
    }

    #[test]
    fn launch_update_measures_and_makes_pages_guest_valid() {
        let f = launching();
        let page = f.pre_guest(0x1000, b"kernel");
        f.update(page, SnpPageType::Normal).unwrap();
        assert_eq!(f.rmp.read(page).unwrap().state_name(), "Guest-Valid");
        let mut expected = LaunchDigest::new();
        let mut contents = [0u8; PAGE_SIZE as usize];
        contents[..6].copy_from_slice(b"kernel");
        expected.extend(SnpPageType::Normal, 0x1000, &contents);
        assert_eq!(f.fw.context(f.gctx).unwrap().digest, expected);
        // A page that is not Pre-Guest of this guest is refused and changes nothing.
        assert_eq!(f.update(page, SnpPageType::Normal), Err(SevRet::InvalidPageState));
        let zero = f.pre_guest(0x2000, b"junk");
        f.update(zero, SnpPageType::Zero).unwrap();
        let mut byte = [1u8];
        f.machine.mem.read(zero, 0, &mut byte);
        assert_eq!(byte, [0], "ZERO pages are zeroed by the firmware");
        assert!(
            f.machine.warnings.is_empty(),
            "firmware writes are not host writes: {:?}",
            f.machine.warnings.snapshot()
        );
    }

    #[test]
    fn a_rejected_cpuid_page_holds_the_accepted_table_and_stays_pre_guest() {
        let f = launching();
        let mut table = [0u8; 64];
        table[0..4].copy_from_slice(&1u32.to_le_bytes());
        table[SNP_CPUID_TABLE_HEADER + 40] = 0xff;
        let page = f.pre_guest(0x3000, &table);
        let before = f.fw.context(f.gctx).unwrap().digest;
        assert_eq!(f.update(page, SnpPageType::Cpuid), Err(SevRet::InvalidParam));
        let mut byte = [1u8];
        f.machine.mem.read(page, SNP_CPUID_TABLE_HEADER + 40, &mut byte);
        assert_eq!(byte, [0]);
        assert_eq!(f.rmp.read(page).unwrap().state_name(), "Pre-Guest");
        assert_eq!(f.fw.context(f.gctx).unwrap().digest, before, "a failed update does not extend the digest");
        f.fw.page_reclaim(page).unwrap();
        assert!(!f.rmp.read(page).unwrap().immutable);
    }

    #[test]
    fn injected_faults_fire_once_after_the_given_calls() {
        let f = launching();
        f.fw.inject(SevCmd::SnpLaunchUpdate, SevRet::ResourceLimit, 1, 1);
        let a = f.pre_guest(0x1000, b"a");
        let b = f.pre_guest(0x2000, b"b");
        f.update(a, SnpPageType::Normal).unwrap();
        assert_eq!(f.update(b, SnpPageType::Normal), Err(SevRet::ResourceLimit));
        f.update(b, SnpPageType::Normal).unwrap();
        assert_eq!(f.fw.executed(SevCmd::SnpLaunchUpdate), 3);
    }

    #[test]
    fn lifecycle_states_and_asids() {
        let f = launching();
        assert_eq!(f.fw.launch_start(f.gctx, SNP_POLICY_MASK_RSVD_MBO), Err(SevRet::InvalidGuestState));
        let other = f.machine.mem.alloc(0).unwrap();
        f.rmp.rmpupdate(other, &RmpState { assigned: true, immutable: true, ..RmpState::default() }).unwrap();
        f.fw.gctx_create(other).unwrap();
        assert_eq!(f.fw.launch_start(other, 0), Err(SevRet::PolicyFailure));
        assert_eq!(f.fw.activate(other, ASID), Err(SevRet::AsidOwned));
        let mut id_block = vec![0u8; 96];
        id_block[88..96].copy_from_slice(&SNP_POLICY_MASK_RSVD_MBO.to_le_bytes());
        let finish = SnpLaunchFinishData { gctx: Some(f.gctx), id_block: Some(id_block), host_data: [7; 32] };
        f.fw.launch_finish(&finish).unwrap();
        assert_eq!(f.fw.context(f.gctx).unwrap().state, GuestState::Running);
        let page = f.pre_guest(0x5000, b"late");
        assert_eq!(f.update(page, SnpPageType::Normal), Err(SevRet::InvalidGuestState));
        assert_eq!(f.fw.page_reclaim(f.gctx), Err(SevRet::InvalidPageState), "a live context page");
        f.fw.decommission(f.gctx).unwrap();
        f.fw.page_reclaim(f.gctx).unwrap();
        f.fw.activate(other, ASID).unwrap();
    }

    #[test]
    fn a_wrong_id_block_is_a_bad_measurement() {
        let f = launching();
        let finish = SnpLaunchFinishData { gctx: Some(f.gctx), id_block: Some(vec![1u8; 96]), host_data: [0; 32] };
        assert_eq!(f.fw.launch_finish(&finish), Err(SevRet::BadMeasurement));
        assert_eq!(SevRet::from_name("INVALID_PARAM"), Some(SevRet::InvalidParam));
        assert_eq!(SevRet::from_name("0x16"), Some(SevRet::InvalidParam));
        assert_eq!(SevCmd::from_name("SNP_LAUNCH_UPDATE"), Some(SevCmd::SnpLaunchUpdate));
    }
}
