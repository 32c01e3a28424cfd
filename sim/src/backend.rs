//! The interface every script backend implements: the simulator and the real `/dev/kvm`.
//!
//! A backend executes one verb at a time and answers with a typed result; the runner
//! ([`crate::runner`]) formats it. Integer arguments arrive as the raw values the script
//! wrote (already truncated where the kernel field is 32-bit), so out-of-range values reach
//! the backend unchanged. A backend lives for one script file and releases everything it
//! created (VMs, descriptors, mappings) when it is dropped.

use gmem_arch::tdx::kvm::{kvm_tdx_init_mem_region, kvm_tdx_init_vm};
use gmem_mm::Errno;
use kvm_bindings::{
    kvm_cpuid_entry2, kvm_sev_init, kvm_sev_snp_launch_finish, kvm_sev_snp_launch_start, kvm_sev_snp_launch_update,
};

/// A signal raised by a host access through a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// `SIGBUS`: the mapping exists but the page cannot be provided.
    Sigbus,
    /// `SIGSEGV`: no mapping, or the access violates its protection.
    Sigsegv,
}

impl Signal {
    /// The name the script output uses (`"SIGBUS"`).
    pub fn name(self) -> &'static str {
        match self {
            Signal::Sigbus => "SIGBUS",
            Signal::Sigsegv => "SIGSEGV",
        }
    }
}

/// A vCPU exit, preformatted: reason `"MEMORY_FAULT"`,
/// fields `[("gpa","0x2000"),("size","0x1000"),("flags","PRIVATE")]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcpuExit {
    /// The exit reason without its `KVM_EXIT_` prefix.
    pub reason: String,
    /// The exit's fields in the order they print, values already formatted.
    pub fields: Vec<(String, String)>,
}

/// Why a verb did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The call failed with this errno.
    Errno(Errno),
    /// A host access raised this signal.
    Signal(Signal),
    /// A vCPU stopped with this exit.
    Exit(VcpuExit),
    /// The hardware delivered an exception to the guest instead of completing its access (an
    /// SEV-SNP `#VC` for a page the guest has not validated, a TD's `#VE` for a page it has not
    /// accepted, `#UD` for a TDCALL outside a TD). Prints `guest #VC gpa=... reason=...`.
    GuestException {
        /// `"#VC"`, `"#VE"`, ...
        vector: String,
        /// The fields in the order they print, values already formatted.
        fields: Vec<(String, String)>,
    },
    /// A `KVM_MEMORY_ENCRYPT_OP` command failed with this errno, and left this firmware status
    /// (`SEV_RET_*`, 0 when the firmware was not involved) in `kvm_sev_cmd.error`. Prints the
    /// errno, then ` fw_error=NAME` when the status is not 0 (`EIO fw_error=INVALID_PARAM`).
    Sev {
        /// The ioctl's errno.
        errno: Errno,
        /// `kvm_sev_cmd.error`.
        fw_error: u32,
    },
    /// A TDX `KVM_MEMORY_ENCRYPT_OP` command failed with this errno and left this SEAMCALL status
    /// in `kvm_tdx_cmd.hw_error` (0 when none). Prints the errno, then ` hw_error=STATUS` when the
    /// status is not 0 (`EBUSY hw_error=OPERAND_BUSY|SEPT`), then `fields` (INIT_MEM_REGION's
    /// region when the kernel advanced it before failing).
    Tdx {
        /// The ioctl's errno.
        errno: Errno,
        /// `kvm_tdx_cmd.hw_error`.
        hw_error: u64,
        /// Further fields, in the order they print, values already formatted.
        fields: Vec<(String, String)>,
    },
    /// This backend cannot run the verb; the text says why.
    Skip(String),
}

impl Failure {
    /// A failed TDX command without further fields.
    pub fn tdx(errno: Errno, hw_error: u64) -> Failure {
        Failure::Tdx { errno, hw_error, fields: Vec::new() }
    }
}

/// What KVM answered a guest's VMGEXIT it completed (without an exit to user space).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GhcbAnswer {
    /// `SW_EXITINFO2` of the GHCB: a page-state change's status (0 or `VMGEXIT_PSC_ERROR_*`),
    /// an AP creation's GHCB error. Prints `ok status=0xN`.
    Status(u64),
    /// The new GHCB MSR value (MSR protocol). Prints `ok msr=0xN`.
    Msr(u64),
    /// KVM resumed the guest without handling the request (no GHCB it could map). Prints
    /// `ok ignored`.
    Ignored,
}

/// What a TD guest finds in R10 and R11 when its `TDG.VP.VMCALL` returns. Prints
/// `ok status=NAME r11=0xN` (R10 by its `TDVMCALL_STATUS_*` name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TdvmcallAnswer {
    /// R10: the TDVMCALL status.
    pub r10: u64,
    /// R11: the leaf's output (MapGPA: the gpa to retry from, or the failing one).
    pub r11: u64,
}

/// What the guest gets when KVM completes a `KVM_EXIT_HYPERCALL` user space handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// An SEV-SNP guest's VMGEXIT.
    Ghcb(GhcbAnswer),
    /// A TD guest's `TDG.VP.VMCALL`.
    Tdvmcall(TdvmcallAnswer),
}

/// `KVM_SEV_SNP_LAUNCH_UPDATE`'s parameters as the kernel left them, and the `uaddr` passed in
/// (the runner prints the new `uaddr` relative to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchUpdated {
    /// `gfn_start`, advanced past the pages done.
    pub gfn_start: u64,
    /// `len`, the bytes left.
    pub len: u64,
    /// `uaddr`, advanced past the pages done (not for ZERO pages).
    pub uaddr: u64,
    /// The `uaddr` the call was given.
    pub uaddr_in: u64,
}

/// What `KVM_TDX_CAPABILITIES` answered (the fields `tdx_capabilities` prints).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TdxCaps {
    /// `supported_attrs`.
    pub supported_attrs: u64,
    /// `supported_xfam`.
    pub supported_xfam: u64,
    /// `cpuid.nent`: the number of configurable CPUID leaves.
    pub nent: u32,
}

impl TdxCaps {
    /// The most CPUID entries a request provides room for (`KVM_MAX_CPUID_ENTRIES`).
    const CPUID_ROOM_MAX: u32 = 256;

    /// The user buffer of a `KVM_TDX_CAPABILITIES` request: `struct kvm_tdx_capabilities` with
    /// `cpuid.nent` set, followed by room for `nent` entries (at most 256).
    pub fn request(nent: u32) -> Vec<u8> {
        use gmem_arch::tdx::kvm::{kvm_tdx_capabilities, KvmCpuid2Header};
        let header = kvm_tdx_capabilities { cpuid: KvmCpuid2Header { nent, padding: 0 }, ..Default::default() };
        let room = nent.min(Self::CPUID_ROOM_MAX) as usize * std::mem::size_of::<kvm_bindings::kvm_cpuid_entry2>();
        let mut bytes = gmem_arch::uapi::as_bytes(&header).to_vec();
        bytes.resize(std::mem::size_of::<kvm_tdx_capabilities>() + room, 0);
        bytes
    }

    /// What the kernel wrote back into a [`TdxCaps::request`] buffer.
    pub fn from_reply(bytes: &[u8]) -> TdxCaps {
        use gmem_arch::tdx::kvm::kvm_tdx_capabilities;
        let caps: kvm_tdx_capabilities =
            gmem_arch::uapi::from_bytes(&bytes[..std::mem::size_of::<kvm_tdx_capabilities>()]);
        TdxCaps { supported_attrs: caps.supported_attrs, supported_xfam: caps.supported_xfam, nent: caps.cpuid.nent }
    }
}

/// `KVM_TDX_INIT_MEM_REGION`'s region as the kernel left it in user memory, the `source_addr`
/// the call was given (the runner prints the new one relative to it), and the call's errno and
/// `hw_error` if it failed (the kernel copies the region back after a partial failure too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TdxRegionDone {
    /// The region after the call.
    pub region: kvm_tdx_init_mem_region,
    /// The `source_addr` passed in.
    pub source_in: u64,
    /// The failure: errno and `kvm_tdx_cmd.hw_error`.
    pub error: Option<(Errno, u64)>,
}

/// KVM's state of a TD (`struct kvm_tdx`), as `tdx_state` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TdxVmState {
    /// `kvm_tdx->state`: `UNINITIALIZED`, `INITIALIZED` or `RUNNABLE` (`TD_STATE_*`).
    pub state: &'static str,
    /// `kvm_tdx->nr_premapped`.
    pub nr_premapped: i64,
    /// `is_hkid_assigned(kvm_tdx)`.
    pub hkid_assigned: bool,
    /// Pages KVM leaked after a failed release (never handed back to the host).
    pub leaked: usize,
    /// `kvm->vm_bugged`: a `KVM_BUG_ON` killed the VM (every ioctl is EIO).
    pub bugged: bool,
}

/// The fields of `struct stat` a script prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stat {
    /// `st_size`.
    pub size: i64,
    /// `st_blksize`.
    pub blksize: i64,
    /// `st_blocks` (512-byte units).
    pub blocks: i64,
    /// `st_mode` (file type and permission bits).
    pub mode: u32,
}

/// `struct kvm_userspace_memory_region2` without its padding (the simulator's own type, so both
/// backends and the simulator share one definition).
pub use gmem_kvm::memslot::UserspaceMemoryRegion2 as MemoryRegion2;

/// One violated invariant, as `check_invariants` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The invariant's name (`"INV-BIND"`).
    pub name: String,
    /// Human-readable details, one line each.
    pub details: Vec<String>,
}

/// The result of a backend call.
pub type BResult<T> = Result<T, Failure>;

/// The most memory a backend maps for one call's `bytes=` source.
pub const STAGING_MAX: u64 = 1 << 30;

/// How much memory a backend maps to stage `bytes` as the source of a `len`-byte launch update:
/// `len` (at least the bytes), rounded up to pages, so that every page the kernel reads is
/// mapped (those past the bytes read as zeros); only the bytes' pages when that would exceed
/// [`STAGING_MAX`] (a huge `len`, which the call may refuse before reading anything). Never 0.
pub fn staging_len(len: u64, bytes: usize) -> u64 {
    let pages = |n: u64| n.checked_add(4095).map(|n| n & !4095);
    match pages(len.max(bytes as u64)) {
        Some(n) if (1..=STAGING_MAX).contains(&n) => n,
        _ => pages(bytes as u64).filter(|&n| n > 0).unwrap_or(4096),
    }
}

/// The failure the optional verbs return on a backend that does not implement them.
fn unsupported<T>() -> BResult<T> {
    Err(Failure::Skip("not supported by this backend".into()))
}

/// A place scripts run: one method per verb (see `docs/script-format.md`).
///
/// The host-side methods are required; the guest-side and simulator-only ones default to
/// [`Failure::Skip`].
pub trait Backend {
    /// `KVM_CREATE_VM`: returns the VM descriptor.
    fn create_vm(&mut self, vm_type: u64) -> BResult<i32>;
    /// `KVM_CHECK_EXTENSION` on the VM, or on `/dev/kvm` when `vm` is `None`.
    fn check_extension(&mut self, vm: Option<i32>, cap: u64) -> BResult<i64>;
    /// `KVM_CREATE_GUEST_MEMFD`: returns the new descriptor.
    fn create_guest_memfd(&mut self, vm: i32, size: u64, flags: u64) -> BResult<i32>;
    /// `KVM_SET_USER_MEMORY_REGION2`.
    fn set_user_memory_region2(&mut self, vm: i32, region: &MemoryRegion2) -> BResult<()>;
    /// `KVM_SET_MEMORY_ATTRIBUTES`.
    fn set_memory_attributes(&mut self, vm: i32, address: u64, size: u64, attributes: u64, flags: u64) -> BResult<()>;
    /// `fallocate(2)`.
    fn fallocate(&mut self, fd: i32, mode: i32, offset: i64, len: i64) -> BResult<()>;
    /// `fstat(2)`.
    fn fstat(&mut self, fd: i32) -> BResult<Stat>;
    /// `ftruncate(2)`.
    fn ftruncate(&mut self, fd: i32, size: i64) -> BResult<()>;
    /// `read(2)` of `len` bytes: returns the bytes read.
    fn read(&mut self, fd: i32, len: u64) -> BResult<u64>;
    /// `write(2)` of `len` bytes: returns the bytes written.
    fn write(&mut self, fd: i32, len: u64) -> BResult<u64>;
    /// `pread(2)`: returns the bytes read.
    fn pread(&mut self, fd: i32, len: u64, offset: i64) -> BResult<u64>;
    /// `pwrite(2)`: returns the bytes written.
    fn pwrite(&mut self, fd: i32, len: u64, offset: i64) -> BResult<u64>;
    /// `lseek(2)`: returns the new offset.
    fn lseek(&mut self, fd: i32, offset: i64, whence: i32) -> BResult<u64>;
    /// `mmap(2)` with a NULL hint: returns the address.
    fn mmap(&mut self, fd: i32, len: u64, offset: i64, prot: u64, flags: u64) -> BResult<u64>;
    /// `munmap(2)`.
    fn munmap(&mut self, addr: u64, len: u64) -> BResult<()>;
    /// A host store of `bytes` at `addr`.
    fn store(&mut self, addr: u64, bytes: &[u8]) -> BResult<()>;
    /// A host load of `len` bytes at `addr`.
    fn load(&mut self, addr: u64, len: u64) -> BResult<Vec<u8>>;
    /// `madvise(2)`.
    fn madvise(&mut self, addr: u64, len: u64, advice: i32) -> BResult<()>;
    /// `mlock(2)`.
    fn mlock(&mut self, _addr: u64, _len: u64) -> BResult<()> {
        Err(Failure::Skip("mlock is not implemented by this backend".into()))
    }
    /// `munlock(2)`.
    fn munlock(&mut self, _addr: u64, _len: u64) -> BResult<()> {
        Err(Failure::Skip("munlock is not implemented by this backend".into()))
    }
    /// `close(2)`.
    fn close(&mut self, fd: i32) -> BResult<()>;
    /// `uaddr=auto`: fresh page-aligned anonymous memory of `len` bytes that lives until the
    /// script ends.
    fn map_anonymous(&mut self, len: u64) -> BResult<u64>;

    /// `KVM_ENABLE_CAP` on a VM.
    fn enable_cap(&mut self, _vm: i32, _cap: u32, _flags: u32, _args: [u64; 4]) -> BResult<()> {
        unsupported()
    }
    /// `open("/dev/sev", O_RDWR)`: returns the descriptor.
    fn open_dev_sev(&mut self) -> BResult<i32> {
        unsupported()
    }
    /// `KVM_MEMORY_ENCRYPT_OP(KVM_SEV_INIT2)`.
    fn sev_init2(&mut self, _vm: i32, _params: &kvm_sev_init) -> BResult<()> {
        unsupported()
    }
    /// `KVM_MEMORY_ENCRYPT_OP(KVM_SEV_SNP_LAUNCH_START)` through the `/dev/sev` descriptor
    /// `sev_fd`.
    fn snp_launch_start(&mut self, _vm: i32, _sev_fd: i32, _params: &kvm_sev_snp_launch_start) -> BResult<()> {
        unsupported()
    }
    /// `KVM_MEMORY_ENCRYPT_OP(KVM_SEV_SNP_LAUNCH_UPDATE)`. With `bytes`, the backend maps fresh
    /// memory of `params.len` bytes (page-rounded), copies `bytes` to its start and passes its
    /// address as `uaddr` instead, removing the mapping after the call.
    fn snp_launch_update(
        &mut self,
        _vm: i32,
        _sev_fd: i32,
        _params: &kvm_sev_snp_launch_update,
        _bytes: Option<&[u8]>,
    ) -> BResult<LaunchUpdated> {
        unsupported()
    }
    /// `KVM_MEMORY_ENCRYPT_OP(KVM_SEV_SNP_LAUNCH_FINISH)`. With `id_block` (at most 96 bytes,
    /// zero-padded), the backend stages the ID block and a zeroed ID authentication structure
    /// and sets `id_block_en`.
    fn snp_launch_finish(
        &mut self,
        _vm: i32,
        _sev_fd: i32,
        _params: &kvm_sev_snp_launch_finish,
        _id_block: Option<&[u8]>,
    ) -> BResult<()> {
        unsupported()
    }

    /// `KVM_MEMORY_ENCRYPT_OP(KVM_TDX_CAPABILITIES)` on `vm` with room for `nent` CPUID entries
    /// (at most 256 are provided; the header says `nent`). A failure is [`Failure::Tdx`].
    fn tdx_capabilities(&mut self, _vm: i32, _nent: u32, _flags: u32) -> BResult<TdxCaps> {
        unsupported()
    }
    /// `KVM_MEMORY_ENCRYPT_OP(KVM_TDX_INIT_VM)` on `vm` with `init_vm` followed by `cpuid` (its
    /// `cpuid.nent` is `cpuid.len()`). A failure is [`Failure::Tdx`].
    fn tdx_init_vm(
        &mut self,
        _vm: i32,
        _flags: u32,
        _init_vm: &kvm_tdx_init_vm,
        _cpuid: &[kvm_cpuid_entry2],
    ) -> BResult<()> {
        unsupported()
    }
    /// `KVM_MEMORY_ENCRYPT_OP(KVM_TDX_INIT_VCPU)` on `vcpu` with `rcx` as `data`. A failure is
    /// [`Failure::Tdx`].
    fn tdx_init_vcpu(&mut self, _vcpu: i32, _flags: u32, _rcx: u64) -> BResult<()> {
        unsupported()
    }
    /// `KVM_MEMORY_ENCRYPT_OP(KVM_TDX_INIT_MEM_REGION)` on `vcpu`. With `bytes`, the backend maps
    /// fresh memory of `region.nr_pages` pages (see [`staging_len`]), copies `bytes` to its start
    /// and passes its address as `source_addr`, removing the mapping after the call. The
    /// command's failure is in [`TdxRegionDone::error`]; `Err` is for what kept it from running.
    fn tdx_init_mem_region(
        &mut self,
        _vcpu: i32,
        _flags: u32,
        _region: &kvm_tdx_init_mem_region,
        _bytes: Option<&[u8]>,
    ) -> BResult<TdxRegionDone> {
        unsupported()
    }
    /// `KVM_MEMORY_ENCRYPT_OP(KVM_TDX_FINALIZE_VM)` on `vm`. A failure is [`Failure::Tdx`].
    fn tdx_finalize_vm(&mut self, _vm: i32, _flags: u32) -> BResult<()> {
        unsupported()
    }
    /// KVM's state of the TD `vm`.
    fn tdx_state(&mut self, _vm: i32) -> BResult<TdxVmState> {
        unsupported()
    }
    /// Arms a SEAMCALL error: after `after` calls of leaf `leaf` pass, the next `count` fail with
    /// `status` and change nothing.
    fn inject_tdx(&mut self, _leaf: u16, _status: u64, _count: u32, _after: u32) -> BResult<()> {
        unsupported()
    }

    /// `KVM_CREATE_VCPU`: returns the vCPU descriptor.
    fn create_vcpu(&mut self, _vm: i32, _id: u64) -> BResult<i32> {
        unsupported()
    }
    /// A guest store at `gpa`; `private` is `None` for the VM type's default.
    fn guest_store(&mut self, _vcpu: i32, _gpa: u64, _bytes: &[u8], _private: Option<bool>) -> BResult<()> {
        unsupported()
    }
    /// A guest load at `gpa`; `private` is `None` for the VM type's default.
    fn guest_load(&mut self, _vcpu: i32, _gpa: u64, _len: u64, _private: Option<bool>) -> BResult<Vec<u8>> {
        unsupported()
    }
    /// `KVM_PRE_FAULT_MEMORY`: returns the bytes left.
    fn pre_fault_memory(&mut self, _vcpu: i32, _gpa: u64, _size: u64) -> BResult<u64> {
        unsupported()
    }
    /// The SNP guest's PVALIDATE of the page at `gpa`: the instruction's result code.
    fn pvalidate(&mut self, _vcpu: i32, _gpa: u64, _size_2m: bool, _validate: bool) -> BResult<u64> {
        unsupported()
    }
    /// The SNP guest's RMPADJUST of the page at `gpa` into a VMSA (or back): 0 or the
    /// instruction's failure code.
    fn rmpadjust(&mut self, _vcpu: i32, _gpa: u64, _vmsa: bool) -> BResult<u64> {
        unsupported()
    }
    /// The guest registers its GHCB at `gpa` (GHCB MSR protocol).
    fn ghcb_register(&mut self, _vcpu: i32, _gpa: u64) -> BResult<GhcbAnswer> {
        unsupported()
    }
    /// The guest writes a PSC buffer of `npages` entries (pages of 4K, or 2M if `size_2m`, from
    /// `gpa`, operation `op`) into its GHCB at `ghcb`, then `VMGEXIT(SVM_VMGEXIT_PSC)`: KVM's
    /// answer, or the `KVM_EXIT_HYPERCALL` (as [`Failure::Exit`]).
    fn psc(&mut self, _vcpu: i32, _ghcb: u64, _gpa: u64, _npages: u16, _op: u8, _size_2m: bool) -> BResult<GhcbAnswer> {
        unsupported()
    }
    /// A page-state change of the 4K page at `gpa` by the GHCB MSR protocol.
    fn psc_msr(&mut self, _vcpu: i32, _gpa: u64, _op: u8) -> BResult<GhcbAnswer> {
        unsupported()
    }
    /// `KVM_RUN` after user space handled a `KVM_EXIT_HYPERCALL`, with `hypercall.ret` = `ret`:
    /// what the guest's VMGEXIT (SEV-SNP) or `TDG.VP.VMCALL` (TDX) returns, or the next exit.
    fn complete_hypercall(&mut self, _vcpu: i32, _ret: u64) -> BResult<Completion> {
        unsupported()
    }
    /// `VMGEXIT(SVM_VMGEXIT_AP_CREATION)`: the GHCB status the guest gets.
    fn ap_create(
        &mut self,
        _vcpu: i32,
        _apic_id: u32,
        _gpa: u64,
        _request: u32,
        _sev_features: u64,
    ) -> BResult<GhcbAnswer> {
        unsupported()
    }
    /// The shared bit of the gpas of the TD `vcpu` belongs to (`shared=1`). EINVAL for a VM that
    /// is not a TD, or a TD without one yet (before `KVM_TDX_INIT_VM`).
    fn tdx_shared_bit(&mut self, _vcpu: i32) -> BResult<u64> {
        unsupported()
    }
    /// The TD guest's `TDG.MEM.PAGE.ACCEPT` with `rcx` (`gpa | level`): the TDX module's status.
    fn tdx_accept(&mut self, _vcpu: i32, _rcx: u64) -> BResult<u64> {
        unsupported()
    }
    /// The TD guest's `TDG.VP.VMCALL<MapGPA>(gpa, size)`: R10 and R11, or the
    /// `KVM_EXIT_HYPERCALL` of the first chunk (as [`Failure::Exit`]).
    fn tdx_map_gpa(&mut self, _vcpu: i32, _gpa: u64, _size: u64) -> BResult<TdvmcallAnswer> {
        unsupported()
    }
    /// An event (an interrupt) for `vcpu`, taken at its next entry (`kvm_vcpu_has_events`).
    fn queue_event(&mut self, _vcpu: i32) -> BResult<()> {
        unsupported()
    }
    /// The SNP guest context's launch digest (48 bytes).
    fn snp_launch_digest(&mut self, _vm: i32) -> BResult<Vec<u8>> {
        unsupported()
    }
    /// Arms an SNP firmware error: after `after` calls of firmware command `cmd` pass, the next
    /// `count` fail with status `ret`.
    fn inject_snp_firmware(&mut self, _cmd: u32, _ret: u32, _count: u32, _after: u32) -> BResult<()> {
        unsupported()
    }

    /// The arch's launch-time populate path: returns the pages populated.
    fn populate(&mut self, _vm: i32, _gpa: u64, _npages: u64, _bytes: Option<&[u8]>) -> BResult<u64> {
        unsupported()
    }
    /// Memory failure on the folio at `offset` of a guest_memfd.
    fn inject_memory_failure(&mut self, _fd: i32, _offset: u64) -> BResult<()> {
        unsupported()
    }
    /// Arms the fault-injection point `fault` to fire `count` times after `after` passes.
    fn inject(&mut self, _fault: &str, _count: u64, _after: u64) -> BResult<()> {
        unsupported()
    }
    /// The number of kernel-style WARNs hit so far.
    fn warnings(&mut self) -> BResult<u64> {
        unsupported()
    }
    /// Runs every invariant check; an empty list means all hold.
    fn check_invariants(&mut self) -> BResult<Vec<Violation>> {
        unsupported()
    }
    /// A human-readable snapshot of the whole state, or of one VM or guest_memfd.
    fn dump(&mut self, _target: Option<i32>) -> BResult<Vec<String>> {
        unsupported()
    }
}
