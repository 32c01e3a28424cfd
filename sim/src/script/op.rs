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
    /// `close NAME`.
    Close { handle: Handle },
    /// `create_vcpu VM [id=]`.
    CreateVcpu { vm: Handle, id: u64 },
    /// `guest_store VCPU gpa= bytes= [private=]`.
    GuestStore { vcpu: Handle, gpa: u64, bytes: Vec<u8>, private: Option<bool> },
    /// `guest_load VCPU gpa= len= [private=]`.
    GuestLoad { vcpu: Handle, gpa: u64, len: u64, private: Option<bool> },
    /// `pre_fault_memory VCPU gpa= size=`.
    PreFaultMemory { vcpu: Handle, gpa: u64, size: u64 },
    /// `populate VM gpa= npages= [bytes=]`.
    Populate { vm: Handle, gpa: u64, npages: u64, bytes: Option<Vec<u8>> },
    /// `inject_memory_failure FD [offset=]`.
    InjectMemoryFailure { fd: Handle, offset: u64 },
    /// `inject FAULT [count=] [after=]`.
    Inject { fault: String, count: u64, after: u64 },
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
            Op::Close { .. } => "close",
            Op::CreateVcpu { .. } => "create_vcpu",
            Op::GuestStore { .. } => "guest_store",
            Op::GuestLoad { .. } => "guest_load",
            Op::PreFaultMemory { .. } => "pre_fault_memory",
            Op::Populate { .. } => "populate",
            Op::InjectMemoryFailure { .. } => "inject_memory_failure",
            Op::Inject { .. } => "inject",
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
            _ => None,
        }
    }
}

/// Every verb the script format knows, in the order of the spec.
pub const VERBS: &[&str] = &[
    "create_vm",
    "check_extension",
    "create_guest_memfd",
    "set_user_memory_region2",
    "set_memory_attributes",
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
    "close",
    "create_vcpu",
    "guest_store",
    "guest_load",
    "pre_fault_memory",
    "populate",
    "inject_memory_failure",
    "inject",
    "warnings",
    "check_invariants",
    "dump",
];
