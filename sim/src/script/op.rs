//! The typed program: one [`Op`] variant per verb, with defaults already applied.

/// A handle argument: a bound name (standing for its descriptor or address) or a number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handle {
    /// A name bound by an earlier line; resolved when the line runs.
    Name(String),
    /// An integer literal, as its raw 64-bit pattern.
    Number(u64),
}

/// The `uaddr=` of `set_user_memory_region2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserAddr {
    /// `uaddr=auto` (the default): fresh anonymous memory of the slot's size.
    Auto,
    /// A name (its address or descriptor) or a number.
    Given(Handle),
}

/// Where `snp_launch_update` takes its source pages from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaunchSource {
    /// `uaddr=MAP|N` (default `0`): an address of the process, passed as `uaddr`.
    Address(Handle),
    /// `bytes=HEX`: the runner maps fresh memory for the call, copies the bytes to its start
    /// (the rest reads as zeros) and passes its address; the mapping is removed afterwards.
    Bytes(Vec<u8>),
}

/// One CPUID entry of `tdx_init_vm cpuid=`: `FUNCTION[.INDEX][:EAX[:EBX[:ECX[:EDX]]]]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuidEntry {
    /// `function`.
    pub function: u32,
    /// `index`; given, the entry has `KVM_CPUID_FLAG_SIGNIFCANT_INDEX`.
    pub index: Option<u32>,
    /// `eax`, `ebx`, `ecx`, `edx`.
    pub regs: [u32; 4],
}

/// What kind of handle a verb returns, and so what a name bound to it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandleKind {
    /// A VM descriptor (`create_vm`).
    Vm,
    /// A guest_memfd descriptor (`create_guest_memfd`).
    GuestMemfd,
    /// A mapping: its address and length (`mmap`).
    Mapping,
    /// A vCPU descriptor (`create_vcpu`).
    Vcpu,
    /// A `/dev/sev` descriptor (`open_dev_sev`).
    DevSev,
}

/// One verb with its typed arguments.
///
/// Field names follow the script's keys; `vm`, `fd`, `vcpu`, `target` and `handle` are the
/// positional handles, `map` is the name of a mapping bound by `mmap`. Integers are the raw
/// 64-bit patterns the script wrote, except `slot` and memslot `flags` (32-bit fields).
#[allow(missing_docs, reason = "fields are the script's keys, documented by the spec and the variant docs")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `create_vm [type=]`: `KVM_CREATE_VM`.
    CreateVm { vm_type: u64 },
    /// `check_extension [VM] CAP`: `KVM_CHECK_EXTENSION` on the VM or on `/dev/kvm`.
    CheckExtension { vm: Option<Handle>, cap: u64 },
    /// `create_guest_memfd VM size= [flags=]`.
    CreateGuestMemfd { vm: Handle, size: u64, flags: u64 },
    /// `set_user_memory_region2 VM slot= [flags=] gpa= size= [uaddr=] [guest_memfd=] [guest_memfd_offset=]`.
    SetUserMemoryRegion2 {
        vm: Handle,
        slot: u32,
        flags: u32,
        gpa: u64,
        size: u64,
        uaddr: UserAddr,
        guest_memfd: Handle,
        guest_memfd_offset: u64,
    },
    /// `set_memory_attributes VM address= size= attributes= [flags=]`.
    SetMemoryAttributes { vm: Handle, address: u64, size: u64, attributes: u64, flags: u64 },
    /// `enable_cap VM CAP [flags=] [arg0=] [arg1=] [arg2=] [arg3=]`: `KVM_ENABLE_CAP`.
    EnableCap { vm: Handle, cap: u32, flags: u32, args: [u64; 4] },
    /// `fallocate FD mode= [offset=] len=`.
    Fallocate { fd: Handle, mode: u64, offset: u64, len: u64 },
    /// `fstat FD`.
    Fstat { fd: Handle },
    /// `ftruncate FD size=`.
    Ftruncate { fd: Handle, size: u64 },
    /// `read FD len=`.
    Read { fd: Handle, len: u64 },
    /// `write FD len=`.
    Write { fd: Handle, len: u64 },
    /// `pread FD len= [offset=]`.
    Pread { fd: Handle, len: u64, offset: u64 },
    /// `pwrite FD len= [offset=]`.
    Pwrite { fd: Handle, len: u64, offset: u64 },
    /// `lseek FD [offset=] whence=`.
    Lseek { fd: Handle, offset: u64, whence: u64 },
    /// `mmap FD len= [offset=] [prot=] [flags=]`.
    Mmap { fd: Handle, len: u64, offset: u64, prot: u64, flags: u64 },
    /// `munmap MAP`: unmaps the whole mapping.
    Munmap { map: String },
    /// `store MAP [offset=] bytes=`: a host store at the mapping's address plus `offset`.
    Store { map: String, offset: u64, bytes: Vec<u8> },
    /// `load MAP [offset=] len=`: a host load at the mapping's address plus `offset`.
    Load { map: String, offset: u64, len: u64 },
    /// `madvise MAP [offset=] len= advice=`.
    Madvise { map: String, offset: u64, len: u64, advice: u64 },
    /// `mlock MAP [offset=] len=`.
    Mlock { map: String, offset: u64, len: u64 },
    /// `munlock MAP [offset=] len=`.
    Munlock { map: String, offset: u64, len: u64 },
    /// `close NAME`.
    Close { handle: Handle },
    /// `open_dev_sev`: `open("/dev/sev", O_RDWR)`.
    OpenDevSev,
    /// `sev_init2 VM [vmsa_features=] [ghcb_version=] [flags=]`: `KVM_SEV_INIT2`.
    SevInit2 { vm: Handle, vmsa_features: u64, ghcb_version: u16, flags: u32 },
    /// `snp_launch_start VM [sev_fd=] [policy=] [flags=]`: `KVM_SEV_SNP_LAUNCH_START`. A
    /// `sev_fd` of `None` is the descriptor of the script's most recent `open_dev_sev`.
    SnpLaunchStart { vm: Handle, sev_fd: Option<Handle>, policy: u64, flags: u16 },
    /// `snp_launch_update VM [sev_fd=] gfn_start= len= [type=] [uaddr=|bytes=] [flags=]`:
    /// `KVM_SEV_SNP_LAUNCH_UPDATE`.
    SnpLaunchUpdate {
        vm: Handle,
        sev_fd: Option<Handle>,
        gfn_start: u64,
        len: u64,
        page_type: u8,
        source: LaunchSource,
        flags: u16,
    },
    /// `snp_launch_finish VM [sev_fd=] [host_data=] [id_block=] [flags=]`:
    /// `KVM_SEV_SNP_LAUNCH_FINISH` (`host_data` at most 32 bytes, `id_block` at most 96, both
    /// zero-padded).
    SnpLaunchFinish { vm: Handle, sev_fd: Option<Handle>, host_data: Vec<u8>, id_block: Option<Vec<u8>>, flags: u16 },
    /// `create_vcpu VM [id=]`.
    CreateVcpu { vm: Handle, id: u64 },
    /// `guest_store VCPU gpa= bytes= [private=|shared=]`; `shared=1` adds a TD's shared bit to
    /// `gpa` when the line runs.
    GuestStore { vcpu: Handle, gpa: u64, bytes: Vec<u8>, private: Option<bool>, shared: bool },
    /// `guest_load VCPU gpa= len= [private=|shared=]`.
    GuestLoad { vcpu: Handle, gpa: u64, len: u64, private: Option<bool>, shared: bool },
    /// `pre_fault_memory VCPU gpa= size=`.
    PreFaultMemory { vcpu: Handle, gpa: u64, size: u64 },
    /// `pvalidate VCPU gpa= [size=] [validate=]`: the SNP guest's PVALIDATE.
    Pvalidate { vcpu: Handle, gpa: u64, size_2m: bool, validate: bool },
    /// `rmpadjust VCPU gpa= vmsa=`: the SNP guest's RMPADJUST making a page a VMSA (or not).
    Rmpadjust { vcpu: Handle, gpa: u64, vmsa: bool },
    /// `ghcb_register VCPU gpa=`: GHCB GPA registration (GHCB MSR protocol).
    GhcbRegister { vcpu: Handle, gpa: u64 },
    /// `psc VCPU ghcb= gpa= npages= op= [size=]`: a PSC buffer of `npages` entries written into
    /// the GHCB, then `VMGEXIT(SVM_VMGEXIT_PSC)`.
    Psc { vcpu: Handle, ghcb: u64, gpa: u64, npages: u16, op: u8, size_2m: bool },
    /// `psc_msr VCPU gpa= op=`: a page-state change by the GHCB MSR protocol.
    PscMsr { vcpu: Handle, gpa: u64, op: u8 },
    /// `complete_hypercall VCPU [ret=]`: `KVM_RUN` after user space handled a
    /// `KVM_EXIT_HYPERCALL`.
    CompleteHypercall { vcpu: Handle, ret: u64 },
    /// `ap_create VCPU apic_id= gpa= [request=] [sev_features=]`:
    /// `VMGEXIT(SVM_VMGEXIT_AP_CREATION)`.
    ApCreate { vcpu: Handle, apic_id: u32, gpa: u64, request: u32, sev_features: u64 },
    /// `tdx_accept VCPU gpa= [size=] [shared=]`: the TD guest's `TDG.MEM.PAGE.ACCEPT` with RCX
    /// = `gpa | level` (`level` 0, 1, 2 for 4K, 2M, 1G).
    TdxAccept { vcpu: Handle, gpa: u64, level: u64, shared: bool },
    /// `tdx_map_gpa VCPU gpa= size= [shared=]`: the TD guest's `TDG.VP.VMCALL<MapGPA>`.
    TdxMapGpa { vcpu: Handle, gpa: u64, size: u64, shared: bool },
    /// `populate VM gpa= npages= [bytes=]`.
    Populate { vm: Handle, gpa: u64, npages: u64, bytes: Option<Vec<u8>> },
    /// `inject_memory_failure FD [offset=]`.
    InjectMemoryFailure { fd: Handle, offset: u64 },
    /// `snp_launch_digest VM`: the SNP guest context's launch digest.
    SnpLaunchDigest { vm: Handle },
    /// `inject FAULT [count=] [after=]`.
    Inject { fault: String, count: u64, after: u64 },
    /// `inject snp_fw cmd= ret= [count=] [after=]`: the next `count` calls of the firmware
    /// command `cmd`, after `after` pass, fail with status `ret`.
    InjectSnpFirmware { cmd: u32, ret: u32, count: u32, after: u32 },
    /// `tdx_capabilities VM [nent=] [flags=]`: `KVM_TDX_CAPABILITIES` with room for `nent` CPUID
    /// entries.
    TdxCapabilities { vm: Handle, nent: u32, flags: u32 },
    /// `tdx_init_vm VM [attributes=] [xfam=] [gpaw=] [cpuid=] [flags=]`: `KVM_TDX_INIT_VM` with a
    /// CPUID of leaf 0x80000008 giving `gpaw` (none for 0), then `cpuid`.
    TdxInitVm { vm: Handle, attributes: u64, xfam: u64, gpaw: u8, cpuid: Vec<CpuidEntry>, flags: u32 },
    /// `tdx_init_vcpu VCPU [rcx=] [flags=]`: `KVM_TDX_INIT_VCPU`.
    TdxInitVcpu { vcpu: Handle, rcx: u64, flags: u32 },
    /// `tdx_init_mem_region VCPU gpa= size=|nr_pages= [measure=] [source=|bytes=] [flags=]`:
    /// `KVM_TDX_INIT_MEM_REGION`; `flags` includes `KVM_TDX_MEASURE_MEMORY_REGION` for
    /// `measure=1`. Without a source, zero-filled pages are staged (`Bytes` of none).
    TdxInitMemRegion { vcpu: Handle, gpa: u64, nr_pages: u64, source: LaunchSource, flags: u32 },
    /// `tdx_finalize_vm VM [flags=]`: `KVM_TDX_FINALIZE_VM`.
    TdxFinalizeVm { vm: Handle, flags: u32 },
    /// `tdx_state VM`: KVM's state of a TD.
    TdxState { vm: Handle },
    /// `queue_event VCPU`: an event (an interrupt) for the vCPU, taken at its next entry.
    QueueEvent { vcpu: Handle },
    /// `inject tdx leaf= status= [count=] [after=]`: the next `count` calls of SEAMCALL `leaf`,
    /// after `after` pass, fail with `status` and change nothing.
    InjectTdx { leaf: u16, status: u64, count: u32, after: u32 },
    /// `warnings`.
    Warnings,
    /// `check_invariants`.
    CheckInvariants,
    /// `dump [VM|FD]`.
    Dump { target: Option<Handle> },
}

impl HandleKind {
    /// The verb that returns this kind of handle.
    pub fn verb(self) -> &'static str {
        match self {
            HandleKind::Vm => "create_vm",
            HandleKind::GuestMemfd => "create_guest_memfd",
            HandleKind::Mapping => "mmap",
            HandleKind::Vcpu => "create_vcpu",
            HandleKind::DevSev => "open_dev_sev",
        }
    }
}

impl Op {
    /// The verb's name as scripts spell it (`create_guest_memfd`).
    pub fn verb(&self) -> &'static str {
        match self {
            Op::CreateVm { .. } => "create_vm",
            Op::CheckExtension { .. } => "check_extension",
            Op::CreateGuestMemfd { .. } => "create_guest_memfd",
            Op::SetUserMemoryRegion2 { .. } => "set_user_memory_region2",
            Op::SetMemoryAttributes { .. } => "set_memory_attributes",
            Op::EnableCap { .. } => "enable_cap",
            Op::Fallocate { .. } => "fallocate",
            Op::Fstat { .. } => "fstat",
            Op::Ftruncate { .. } => "ftruncate",
            Op::Read { .. } => "read",
            Op::Write { .. } => "write",
            Op::Pread { .. } => "pread",
            Op::Pwrite { .. } => "pwrite",
            Op::Lseek { .. } => "lseek",
            Op::Mmap { .. } => "mmap",
            Op::Munmap { .. } => "munmap",
            Op::Store { .. } => "store",
            Op::Load { .. } => "load",
            Op::Madvise { .. } => "madvise",
            Op::Mlock { .. } => "mlock",
            Op::Munlock { .. } => "munlock",
            Op::Close { .. } => "close",
            Op::OpenDevSev => "open_dev_sev",
            Op::SevInit2 { .. } => "sev_init2",
            Op::SnpLaunchStart { .. } => "snp_launch_start",
            Op::SnpLaunchUpdate { .. } => "snp_launch_update",
            Op::SnpLaunchFinish { .. } => "snp_launch_finish",
            Op::CreateVcpu { .. } => "create_vcpu",
            Op::GuestStore { .. } => "guest_store",
            Op::GuestLoad { .. } => "guest_load",
            Op::PreFaultMemory { .. } => "pre_fault_memory",
            Op::Pvalidate { .. } => "pvalidate",
            Op::Rmpadjust { .. } => "rmpadjust",
            Op::GhcbRegister { .. } => "ghcb_register",
            Op::Psc { .. } => "psc",
            Op::PscMsr { .. } => "psc_msr",
            Op::CompleteHypercall { .. } => "complete_hypercall",
            Op::ApCreate { .. } => "ap_create",
            Op::TdxAccept { .. } => "tdx_accept",
            Op::TdxMapGpa { .. } => "tdx_map_gpa",
            Op::Populate { .. } => "populate",
            Op::InjectMemoryFailure { .. } => "inject_memory_failure",
            Op::SnpLaunchDigest { .. } => "snp_launch_digest",
            Op::TdxCapabilities { .. } => "tdx_capabilities",
            Op::TdxInitVm { .. } => "tdx_init_vm",
            Op::TdxInitVcpu { .. } => "tdx_init_vcpu",
            Op::TdxInitMemRegion { .. } => "tdx_init_mem_region",
            Op::TdxFinalizeVm { .. } => "tdx_finalize_vm",
            Op::TdxState { .. } => "tdx_state",
            Op::QueueEvent { .. } => "queue_event",
            Op::Inject { .. } | Op::InjectSnpFirmware { .. } | Op::InjectTdx { .. } => "inject",
            Op::Warnings => "warnings",
            Op::CheckInvariants => "check_invariants",
            Op::Dump { .. } => "dump",
        }
    }

    /// The kind of handle this verb returns, if it returns one (and so may bind a name).
    pub fn handle_kind(&self) -> Option<HandleKind> {
        match self {
            Op::CreateVm { .. } => Some(HandleKind::Vm),
            Op::CreateGuestMemfd { .. } => Some(HandleKind::GuestMemfd),
            Op::Mmap { .. } => Some(HandleKind::Mapping),
            Op::CreateVcpu { .. } => Some(HandleKind::Vcpu),
            Op::OpenDevSev => Some(HandleKind::DevSev),
            _ => None,
        }
    }

    /// Whether the verb takes its `/dev/sev` descriptor from the script's most recent
    /// `open_dev_sev` (no `sev_fd=` given).
    pub fn uses_default_sev_fd(&self) -> bool {
        matches!(
            self,
            Op::SnpLaunchStart { sev_fd: None, .. }
                | Op::SnpLaunchUpdate { sev_fd: None, .. }
                | Op::SnpLaunchFinish { sev_fd: None, .. }
        )
    }
}

/// Every verb the script format knows, in the order of the spec.
pub const VERBS: &[&str] = &[
    "create_vm",
    "check_extension",
    "create_guest_memfd",
    "set_user_memory_region2",
    "set_memory_attributes",
    "enable_cap",
    "fallocate",
    "fstat",
    "ftruncate",
    "read",
    "write",
    "pread",
    "pwrite",
    "lseek",
    "mmap",
    "munmap",
    "store",
    "load",
    "madvise",
    "mlock",
    "munlock",
    "close",
    "open_dev_sev",
    "sev_init2",
    "snp_launch_start",
    "snp_launch_update",
    "snp_launch_finish",
    "tdx_capabilities",
    "tdx_init_vm",
    "tdx_init_vcpu",
    "tdx_init_mem_region",
    "tdx_finalize_vm",
    "create_vcpu",
    "guest_store",
    "guest_load",
    "pre_fault_memory",
    "pvalidate",
    "rmpadjust",
    "ghcb_register",
    "psc",
    "psc_msr",
    "complete_hypercall",
    "ap_create",
    "tdx_accept",
    "tdx_map_gpa",
    "populate",
    "snp_launch_digest",
    "tdx_state",
    "queue_event",
    "inject_memory_failure",
    "inject",
    "warnings",
    "check_invariants",
    "dump",
];
