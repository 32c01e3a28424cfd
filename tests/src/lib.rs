//! gmem-tests: shared helpers for the integration tests.
//!
//! The centre piece is [`CheckedHost`], a [`SimHost`] whose every forwarded uAPI call is followed
//! by a full check of the simulated kernel's state:
//!
//! * [`gmem_kvm::invariants::check`] over every VM and guest_memfd the process can reach (its
//!   descriptors and its mappings) finds no violation (INV-BIND, INV-REFCOUNT,
//!   INV-UPTODATE-PREPARED, INV-NO-STALE-PFN, the MMU invariants, and the vendor's: SEV-SNP's
//!   S1–S12);
//! * the machine's WARN registry is empty (no `WARN_ON`, `KVM_BUG_ON` or KASAN-style report);
//! * lockdep has no report involving one of this project's lock classes (lockdep is global to the
//!   test binary, so reports are filtered by class name);
//! * the call returned to user space with no task work left queued (a deferred `fput` that never
//!   ran would hide a release).
//!
//! A failure names the call (with its arguments and result) and prints every violation. Tests
//! that break an invariant on purpose (the seed bugs) go through [`CheckedHost::unchecked`], which
//! returns the raw [`SimHost`], and may call [`CheckedHost::check`] again once the state is clean,
//! or [`CheckedHost::take_warnings`] to consume the warnings they expected.
//!
//! [`SnpGuest`] builds an SEV-SNP guest on a checked host (launch steps, the VMM's answer to a
//! page-state change) for the SNP tests, [`TdGuest`] a TD up to its vCPUs' initialisation for the
//! TDX tests; [`Guest`] (built by [`GuestBuilder`]) is the VM with vCPUs and memslots most other
//! tests start from.

use gmem_kvm::invariants::{self, Violation};
use gmem_kvm::memslot::{MemslotEntry, KVM_MEM_GUEST_MEMFD};
use gmem_kvm::mmu::{KvmMmu, MmuEvent, RecordingMmu};
use gmem_kvm::vcpu::RunError;
use gmem_kvm::vm::VmMmu;
use gmem_kvm::{KernelProfile, Kvm, KvmSystem};
use gmem_mm::file::FileRef;
use gmem_mm::filemap::MfResult;
use gmem_mm::vma::AccessSignal;
use gmem_mm::{Errno, KResult, Machine};
use gmem_sync::warn::Warning;
use gmem_sync::Arc;
use gmem_uapi::{SimHost, Stat};
use kvm_bindings::{kvm_create_guest_memfd, kvm_memory_attributes, kvm_userspace_memory_region2};
use std::fmt;

mod guest;

pub use guest::{memory_fault, Guest, GuestBuilder, Memory};

pub use gmem_kvm::guest_memfd::{GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP};
pub use gmem_kvm::VmType;

/// How long a test waits for another thread to reach a point (a retry counted, an entry
/// deferred) before failing with what it waited for: far beyond the milliseconds it takes, so
/// only a broken model reaches it, and then as a failure rather than a hang
/// (`gmem_sync::thread::wait_until_within`).
pub const TEST_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// `PAGE_SIZE`.
pub const PAGE: u64 = gmem_mm::PAGE_SIZE;

/// `KVM_X86_DEFAULT_VM`.
pub const DEFAULT_VM: u64 = VmType::Default as u64;
/// `KVM_X86_SW_PROTECTED_VM`.
pub const SW_PROTECTED_VM: u64 = VmType::SwProtected as u64;

/// The lock classes of this project (exact names), for filtering the global lockdep reports.
pub const PROJECT_LOCK_CLASSES: &[&str] = &[
    "kvm->lock",
    "kvm->slots_lock",
    "kvm->slots_arch_lock",
    "kvm->mmu_lock",
    "vcpu->tlb",
    "recording_mmu->events",
    "slab->lock",
    "xa_lock",
    "zone->lock",
    "files->file_lock",
    "mapping.invalidate_lock",
    "mm->mmap_lock",
    "anon_vma->lock",
    "srcu->sync",
    "fault injector",
    "warn registry",
];

/// Name prefixes of lock classes this project may add later (kernel-style names of the objects
/// the simulator models); a report on such a class counts as well.
const PROJECT_LOCK_PREFIXES: &[&str] =
    &["kvm", "vcpu", "mm->", "files->", "mapping", "xa_", "srcu", "slab", "zone", "folio"];

/// Whether a lock class name belongs to this project.
pub fn is_project_lock_class(name: &str) -> bool {
    PROJECT_LOCK_CLASSES.contains(&name) || PROJECT_LOCK_PREFIXES.iter().any(|prefix| name.starts_with(prefix))
}

/// The lockdep reports (global to the test binary) that involve a lock class of this project.
pub fn project_lockdep_reports() -> Vec<gmem_sync::lockdep::InversionReport> {
    gmem_sync::lockdep::reports()
        .into_iter()
        .filter(|report| {
            is_project_lock_class(report.held)
                || is_project_lock_class(report.acquired)
                || report.chain.iter().any(|edge| is_project_lock_class(edge.from) || is_project_lock_class(edge.to))
        })
        .collect()
}

/// `struct kvm_create_guest_memfd` with `size` and `flags`.
pub fn gmem_args(size: u64, flags: u64) -> kvm_create_guest_memfd {
    kvm_create_guest_memfd { size, flags, ..Default::default() }
}

/// `struct kvm_userspace_memory_region2`.
pub fn region(
    slot: u32,
    flags: u32,
    gpa: u64,
    size: u64,
    uaddr: u64,
    fd: u32,
    offset: u64,
) -> kvm_userspace_memory_region2 {
    kvm_userspace_memory_region2 {
        slot,
        flags,
        guest_phys_addr: gpa,
        memory_size: size,
        userspace_addr: uaddr,
        guest_memfd_offset: offset,
        guest_memfd: fd,
        ..Default::default()
    }
}

/// A guest_memfd memslot (`KVM_MEM_GUEST_MEMFD`, `userspace_addr` 0).
pub fn gmem_region(slot: u32, gpa: u64, size: u64, fd: i32, offset: u64) -> kvm_userspace_memory_region2 {
    region(slot, KVM_MEM_GUEST_MEMFD, gpa, size, 0, fd as u32, offset)
}

/// The deletion of a memslot (size 0; fd and offset are ignored by the kernel).
pub fn delete_region(slot: u32, flags: u32) -> kvm_userspace_memory_region2 {
    region(slot, flags, 0, 0, 0, u32::MAX, 0)
}

/// `struct kvm_memory_attributes`.
pub fn attrs(address: u64, size: u64, attributes: u64) -> kvm_memory_attributes {
    kvm_memory_attributes { address, size, attributes, flags: 0 }
}

/// A profile by name (`"v6.14+F1"`), panicking on an unknown name.
pub fn profile(name: &str) -> KernelProfile {
    KernelProfile::by_name(name).unwrap_or_else(|err| panic!("{err}"))
}

/// The two kernels whose shared behaviour most tests assert on both.
pub fn both_versions() -> [KernelProfile; 2] {
    [KernelProfile::v6_14(), KernelProfile::v6_18()]
}

/// A [`SimHost`] that checks the whole simulated kernel after every call it forwards.
pub struct CheckedHost {
    host: SimHost,
    mmu: Option<Arc<RecordingMmu>>,
}

impl fmt::Debug for CheckedHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckedHost").field("host", &self.host).field("recording", &self.mmu.is_some()).finish()
    }
}

impl CheckedHost {
    /// A new machine booted with `profile` (each VM gets its own software TDP MMU).
    pub fn new(profile: KernelProfile) -> CheckedHost {
        CheckedHost { host: SimHost::new(profile), mmu: None }
    }

    /// A new Intel machine booted with `profile` (`kvm_intel` with TDX: [`SimHost::new_intel`]).
    pub fn new_intel(profile: KernelProfile) -> CheckedHost {
        CheckedHost { host: SimHost::new_intel(profile), mmu: None }
    }

    /// `KVM_TDX_INIT_VM` with `cpuid` ([`SimHost::tdx_init_vm`]).
    #[track_caller]
    pub fn tdx_init_vm(
        &self,
        vm_fd: i32,
        init_vm: &gmem_uapi::kvm_tdx_init_vm,
        cpuid: &[kvm_bindings::kvm_cpuid_entry2],
    ) -> Result<(), gmem_uapi::TdxError> {
        let result = self.host.tdx_init_vm(vm_fd, init_vm, cpuid);
        self.checked(|| format!("tdx_init_vm({vm_fd})"), result)
    }

    /// `KVM_TDX_FINALIZE_VM`.
    #[track_caller]
    pub fn tdx_finalize_vm(&self, vm_fd: i32) -> Result<(), gmem_uapi::TdxError> {
        let result = self.host.tdx_finalize_vm(vm_fd);
        self.checked(|| format!("tdx_finalize_vm({vm_fd})"), result)
    }

    /// `KVM_TDX_INIT_VCPU`.
    #[track_caller]
    pub fn tdx_init_vcpu(&self, vcpu_fd: i32, rcx: u64) -> Result<(), gmem_uapi::TdxError> {
        let result = self.host.tdx_init_vcpu(vcpu_fd, rcx);
        self.checked(|| format!("tdx_init_vcpu({vcpu_fd})"), result)
    }

    /// `KVM_TDX_INIT_MEM_REGION` (`region` comes back advanced).
    #[track_caller]
    pub fn tdx_init_mem_region(
        &self,
        vcpu_fd: i32,
        region: &mut gmem_uapi::kvm_tdx_init_mem_region,
        flags: u32,
    ) -> Result<(), gmem_uapi::TdxError> {
        let result = self.host.tdx_init_mem_region(vcpu_fd, region, flags);
        self.checked(|| format!("tdx_init_mem_region({vcpu_fd}, {region:?}, {flags})"), result)
    }

    /// A process on an existing kernel (a [`KvmSystem`] built with a back-end or MMU of the
    /// test's own).
    pub fn with_system(system: Arc<KvmSystem>) -> CheckedHost {
        CheckedHost { host: SimHost::with_system(system), mmu: None }
    }

    /// A new machine booted with `profile` whose VMs all share one [`RecordingMmu`] (see
    /// [`CheckedHost::mmu`]) that answers "flush needed" to every unmap.
    pub fn with_recording_mmu(profile: KernelProfile) -> CheckedHost {
        let machine = Machine::new(profile.machine_config());
        let mmu = Arc::new(RecordingMmu::new(true));
        let shared = mmu.clone();
        let factory = Arc::new(move || VmMmu::Other(shared.clone() as Arc<dyn KvmMmu>));
        let system = KvmSystem::with_machine(machine, profile, factory);
        CheckedHost { host: SimHost::with_system(system), mmu: Some(mmu) }
    }

    /// The shared recording MMU (only for [`CheckedHost::with_recording_mmu`]).
    pub fn mmu(&self) -> &Arc<RecordingMmu> {
        self.mmu.as_ref().expect("CheckedHost::with_recording_mmu has a shared recording MMU")
    }

    /// Takes the MMU events recorded so far.
    pub fn take_mmu_events(&self) -> Vec<MmuEvent> {
        self.mmu().take()
    }

    /// The raw host: calls through it are not checked (for tests that break invariants on
    /// purpose).
    pub fn unchecked(&self) -> &SimHost {
        &self.host
    }

    /// The machine.
    pub fn machine(&self) -> &Arc<Machine> {
        self.host.machine()
    }

    /// The process.
    pub fn process(&self) -> &gmem_mm::Process {
        self.host.process()
    }

    /// The kernel profile.
    pub fn profile(&self) -> &KernelProfile {
        self.host.profile()
    }

    /// The VM behind a VM descriptor (panics if it is not one).
    pub fn kvm(&self, vm_fd: i32) -> Arc<Kvm> {
        self.host.vm(vm_fd).unwrap_or_else(|errno| panic!("fd {vm_fd} is not a VM: {errno}"))
    }

    /// Whether the TDP MMU of VM `vm_fd` has an SPTE for `gfn`.
    pub fn spte_present(&self, vm_fd: i32, gfn: u64) -> bool {
        self.kvm(vm_fd).tdp_mmu().expect("the VM has the TDP MMU").lookup(gmem_kvm::Gfn(gfn)).is_some()
    }

    /// A vCPU's fault counters: `(pf_taken, pf_fixed, pf_retry)`.
    pub fn vcpu_faults(&self, vcpu_fd: i32) -> (u64, u64, u64) {
        let (_, vcpu) = self.host.vcpu(vcpu_fd).expect("a vCPU descriptor");
        let stat = vcpu.stat.values();
        (stat.pf_taken, stat.pf_fixed, stat.pf_retry)
    }

    /// The guest_memfd file behind a descriptor (panics if it is not one). Dropping the
    /// reference is an `fput` that is never the last one while the descriptor is open.
    pub fn gmem_file(&self, fd: i32) -> FileRef {
        self.host.guest_memfd(fd).unwrap_or_else(|errno| panic!("fd {fd} is not a guest_memfd: {errno}"))
    }

    /// The published memslots of a VM, with each slot's flags.
    pub fn memslots(&self, vm_fd: i32) -> Vec<(MemslotEntry, u32)> {
        let kvm = self.kvm(vm_fd);
        let slots_lock = kvm.lock_slots();
        let slots = kvm.memslots_locked(&slots_lock);
        slots.iter().map(|entry| (*entry, kvm.memslot(entry).flags())).collect()
    }

    /// The VMs and files user space can reach: every descriptor, every file mapping.
    fn reachable(&self) -> (Vec<Arc<Kvm>>, Vec<FileRef>) {
        let process = self.host.process();
        let mut vms = Vec::new();
        let mut files = Vec::new();
        for fd in process.files.open_fds() {
            if let Some(file) = process.files.fget(fd) {
                files.push(file);
            }
            if let Ok(kvm) = self.host.vm(fd) {
                vms.push(kvm);
            }
        }
        for vma in process.mm.vmas() {
            if let Some(file) = &vma.file {
                files.push(file.clone());
            }
        }
        (vms, files)
    }

    /// The invariant violations over everything reachable.
    pub fn violations(&self) -> Vec<Violation> {
        let (vms, files) = self.reachable();
        invariants::check(&vms, &files)
    }

    /// The warnings recorded so far, clearing the registry (for tests that expect some).
    pub fn take_warnings(&self) -> Vec<Warning> {
        self.machine().warnings.take()
    }

    /// Everything wrong with the simulated kernel right now, one line per problem.
    pub fn problems(&self) -> Vec<String> {
        let mut problems: Vec<String> = self.violations().iter().map(|v| format!("invariant {v}")).collect();
        problems.extend(self.machine().warnings.snapshot().iter().map(|w| format!("warning {w}")));
        problems.extend(project_lockdep_reports().iter().map(|r| format!("lockdep {r}")));
        let pending = gmem_sync::task::task_work_pending();
        if pending != 0 {
            problems.push(format!("task work: {pending} item(s) still queued after the return to user space"));
        }
        problems
    }

    /// Asserts that nothing is wrong; `call` names what just ran.
    #[track_caller]
    pub fn check(&self, call: &str) {
        let problems = self.problems();
        if !problems.is_empty() {
            panic!("after `{call}`: {} problem(s):\n  {}", problems.len(), problems.join("\n  "));
        }
    }

    #[track_caller]
    fn checked<T: fmt::Debug>(&self, call: impl FnOnce() -> String, result: T) -> T {
        let problems = self.problems();
        if !problems.is_empty() {
            panic!("after `{} = {result:?}`: {} problem(s):\n  {}", call(), problems.len(), problems.join("\n  "));
        }
        result
    }

    /// `KVM_CREATE_VM`.
    #[track_caller]
    pub fn create_vm(&self, vm_type: u64) -> KResult<i32> {
        let result = self.host.create_vm(vm_type);
        self.checked(|| format!("create_vm({vm_type})"), result)
    }

    /// `KVM_CHECK_EXTENSION` on `/dev/kvm`.
    #[track_caller]
    pub fn check_extension(&self, cap: u64) -> i64 {
        let result = self.host.check_extension(cap);
        self.checked(|| format!("check_extension({cap})"), result)
    }

    /// `KVM_CHECK_EXTENSION` on a VM.
    #[track_caller]
    pub fn vm_check_extension(&self, vm_fd: i32, cap: u64) -> KResult<i64> {
        let result = self.host.vm_check_extension(vm_fd, cap);
        self.checked(|| format!("vm_check_extension({vm_fd}, {cap})"), result)
    }

    /// `KVM_CREATE_GUEST_MEMFD` with the full argument struct.
    #[track_caller]
    pub fn create_guest_memfd_args(&self, vm_fd: i32, args: &kvm_create_guest_memfd) -> KResult<i32> {
        let result = self.host.create_guest_memfd(vm_fd, args);
        self.checked(|| format!("create_guest_memfd({vm_fd}, {args:?})"), result)
    }

    /// `KVM_CREATE_GUEST_MEMFD`.
    #[track_caller]
    pub fn create_guest_memfd(&self, vm_fd: i32, size: u64, flags: u64) -> KResult<i32> {
        self.create_guest_memfd_args(vm_fd, &gmem_args(size, flags))
    }

    /// `KVM_SET_USER_MEMORY_REGION2`.
    #[track_caller]
    pub fn set_user_memory_region2(&self, vm_fd: i32, region: &kvm_userspace_memory_region2) -> KResult<()> {
        let result = self.host.set_user_memory_region2(vm_fd, region);
        self.checked(
            || {
                format!(
                    "set_user_memory_region2({vm_fd}, slot {:#x} flags {:#x} gpa {:#x} size {:#x} uaddr {:#x} fd {} \
                     offset {:#x})",
                    region.slot,
                    region.flags,
                    region.guest_phys_addr,
                    region.memory_size,
                    region.userspace_addr,
                    region.guest_memfd as i32,
                    region.guest_memfd_offset
                )
            },
            result,
        )
    }

    /// `KVM_SET_MEMORY_ATTRIBUTES`.
    #[track_caller]
    pub fn set_memory_attributes(&self, vm_fd: i32, attrs: &kvm_memory_attributes) -> KResult<()> {
        let result = self.host.set_memory_attributes(vm_fd, attrs);
        self.checked(|| format!("set_memory_attributes({vm_fd}, {attrs:?})"), result)
    }

    /// The arch launch path's populate (`npages` is an `i64` in the kernel: `u64::MAX` is -1).
    #[track_caller]
    pub fn populate(&self, vm_fd: i32, gpa: u64, npages: u64, source: Option<&[u8]>) -> KResult<i64> {
        let result = self.host.populate(vm_fd, gpa, npages, source);
        self.checked(|| format!("populate({vm_fd}, gpa {gpa:#x}, npages {})", npages as i64), result)
    }

    /// Memory failure on the folio at byte `offset` of a guest_memfd.
    #[track_caller]
    pub fn inject_memory_failure(&self, fd: i32, offset: u64) -> KResult<MfResult> {
        let result = self.host.inject_memory_failure(fd, offset);
        self.checked(|| format!("inject_memory_failure({fd}, {offset:#x})"), result)
    }

    /// `fallocate(2)`.
    #[track_caller]
    pub fn fallocate(&self, fd: i32, mode: i32, offset: i64, len: i64) -> KResult<()> {
        let result = self.host.fallocate(fd, mode, offset, len);
        self.checked(|| format!("fallocate({fd}, mode {mode:#x}, offset {offset:#x}, len {len:#x})"), result)
    }

    /// `ftruncate(2)`.
    #[track_caller]
    pub fn ftruncate(&self, fd: i32, length: i64) -> KResult<()> {
        let result = self.host.process().ftruncate(fd, length);
        self.checked(|| format!("ftruncate({fd}, {length})"), result)
    }

    /// `fstat(2)`.
    #[track_caller]
    pub fn fstat(&self, fd: i32) -> KResult<Stat> {
        let result = self.host.fstat(fd);
        self.checked(|| format!("fstat({fd})"), result)
    }

    /// `close(2)`.
    #[track_caller]
    pub fn close(&self, fd: i32) -> KResult<()> {
        let result = self.host.close(fd);
        self.checked(|| format!("close({fd})"), result)
    }

    /// `mmap(2)` of a descriptor.
    #[track_caller]
    pub fn mmap(&self, fd: i32, len: u64, offset: i64, prot: u64, flags: u64) -> KResult<u64> {
        let result = self.host.mmap(fd, len, offset, prot, flags);
        self.checked(
            || format!("mmap(fd {fd}, len {len:#x}, offset {offset:#x}, prot {prot:#x}, flags {flags:#x})"),
            result,
        )
    }

    /// An anonymous private read-write mapping (memslot backing).
    #[track_caller]
    pub fn mmap_anonymous(&self, len: u64) -> KResult<u64> {
        let result = self.host.process().mmap_anonymous(len);
        self.checked(|| format!("mmap_anonymous({len:#x})"), result)
    }

    /// `munmap(2)`.
    #[track_caller]
    pub fn munmap(&self, addr: u64, len: u64) -> KResult<()> {
        let result = self.host.process().munmap(addr, len);
        self.checked(|| format!("munmap({addr:#x}, {len:#x})"), result)
    }

    /// `madvise(2)`.
    #[track_caller]
    pub fn madvise(&self, addr: u64, len: u64, advice: i32) -> KResult<()> {
        let result = self.host.process().madvise(addr, len, advice);
        self.checked(|| format!("madvise({addr:#x}, {len:#x}, {advice})"), result)
    }

    /// A host load through a mapping.
    #[track_caller]
    pub fn load(&self, addr: u64, len: u64) -> Result<Vec<u8>, AccessSignal> {
        let result = self.host.load(addr, len);
        self.checked(|| format!("load({addr:#x}, {len})"), result)
    }

    /// A host store through a mapping.
    #[track_caller]
    pub fn store(&self, addr: u64, bytes: &[u8]) -> Result<(), AccessSignal> {
        let result = self.host.store(addr, bytes);
        self.checked(|| format!("store({addr:#x}, {} bytes)", bytes.len()), result)
    }

    /// `KVM_CREATE_VCPU`.
    #[track_caller]
    pub fn create_vcpu(&self, vm_fd: i32, id: u64) -> KResult<i32> {
        let result = self.host.create_vcpu(vm_fd, id);
        self.checked(|| format!("create_vcpu({vm_fd}, {id})"), result)
    }

    /// A guest store by a vCPU.
    #[track_caller]
    pub fn guest_store(&self, vcpu_fd: i32, gpa: u64, bytes: &[u8], private: Option<bool>) -> Result<(), RunError> {
        let mut buf = bytes.to_vec();
        let result = self.host.guest_access(vcpu_fd, gpa, &mut buf, true, private);
        self.checked(|| format!("guest_store({vcpu_fd}, {gpa:#x}, {} bytes, {private:?})", bytes.len()), result)
    }

    /// A guest load by a vCPU.
    #[track_caller]
    pub fn guest_load(&self, vcpu_fd: i32, gpa: u64, len: usize, private: Option<bool>) -> Result<Vec<u8>, RunError> {
        let mut buf = vec![0u8; len];
        let result = self.host.guest_access(vcpu_fd, gpa, &mut buf, false, private).map(|()| buf);
        self.checked(|| format!("guest_load({vcpu_fd}, {gpa:#x}, {len}, {private:?})"), result)
    }

    /// `KVM_PRE_FAULT_MEMORY`: the size left.
    #[track_caller]
    pub fn pre_fault_memory(&self, vcpu_fd: i32, gpa: u64, size: u64) -> KResult<u64> {
        let result = self.host.pre_fault_memory(vcpu_fd, gpa, size);
        self.checked(|| format!("pre_fault_memory({vcpu_fd}, {gpa:#x}, {size:#x})"), result)
    }

    /// `KVM_ENABLE_CAP` on a VM.
    #[track_caller]
    pub fn enable_cap(&self, vm_fd: i32, cap: &kvm_bindings::kvm_enable_cap) -> KResult<()> {
        let result = self.host.enable_cap(vm_fd, cap);
        self.checked(|| format!("enable_cap({vm_fd}, {})", cap.cap), result)
    }

    /// A TD guest's `TDG.MEM.PAGE.ACCEPT` with RCX = `rcx`.
    #[track_caller]
    pub fn tdx_accept(&self, vcpu_fd: i32, rcx: u64) -> Result<gmem_uapi::vmm::TdxStatus, RunError> {
        let result = self.host.tdx_accept(vcpu_fd, rcx);
        self.checked(|| format!("tdx_accept({vcpu_fd}, {rcx:#x})"), result)
    }

    /// A TD guest's `TDG.VP.VMCALL`.
    #[track_caller]
    pub fn tdx_vmcall(
        &self,
        vcpu_fd: i32,
        args: gmem_uapi::vmm::TdvmcallArgs,
    ) -> Result<gmem_uapi::vmm::TdvmcallResult, RunError> {
        let result = self.host.tdx_vmcall(vcpu_fd, args);
        self.checked(|| format!("tdx_vmcall({vcpu_fd}, {args:x?})"), result)
    }

    /// A TD guest's `TDG.VP.VMCALL<MapGPA>(gpa, size)`.
    #[track_caller]
    pub fn tdx_map_gpa(&self, vcpu_fd: i32, gpa: u64, size: u64) -> Result<gmem_uapi::vmm::TdvmcallResult, RunError> {
        let result = self.host.tdx_map_gpa(vcpu_fd, gpa, size);
        self.checked(|| format!("tdx_map_gpa({vcpu_fd}, {gpa:#x}, {size:#x})"), result)
    }

    /// `KVM_RUN` after a TDVMCALL's `KVM_EXIT_HYPERCALL`, with `hypercall.ret`.
    #[track_caller]
    pub fn tdx_complete_hypercall(&self, vcpu_fd: i32, ret: u64) -> Result<gmem_uapi::vmm::TdvmcallResult, RunError> {
        let result = self.host.tdx_complete_hypercall(vcpu_fd, ret);
        self.checked(|| format!("tdx_complete_hypercall({vcpu_fd}, {ret:#x})"), result)
    }

    /// A Linux TD guest's `tdx_accept_memory(start, end)`.
    #[track_caller]
    pub fn tdx_accept_memory(&self, vcpu_fd: i32, start: u64, end: u64) -> Result<bool, RunError> {
        let result = self.host.tdx_accept_memory(vcpu_fd, start, end);
        self.checked(|| format!("tdx_accept_memory({vcpu_fd}, {start:#x}, {end:#x})"), result)
    }

    /// A VM of `vm_type` and a guest_memfd of `size` bytes with `flags` on it.
    #[track_caller]
    pub fn vm_and_gmem(&self, vm_type: u64, size: u64, flags: u64) -> (i32, i32) {
        let vm = self.create_vm(vm_type).expect("KVM_CREATE_VM");
        let gmem = self.create_guest_memfd(vm, size, flags).expect("KVM_CREATE_GUEST_MEMFD");
        (vm, gmem)
    }
}

/// The VM type whose guest_memfd memslots every profile accepts: SW_PROTECTED where it exists
/// (v6.14 binds guest_memfd only on VMs with private memory), DEFAULT otherwise (v6.18-pvm).
pub fn bindable_vm_type(profile: &KernelProfile) -> u64 {
    if profile.supports_vm_type(VmType::SwProtected) {
        SW_PROTECTED_VM
    } else {
        DEFAULT_VM
    }
}

/// Asserts `result` is the error `expected`, naming `what` on failure.
#[track_caller]
pub fn assert_errno<T: fmt::Debug>(result: KResult<T>, expected: Errno, what: &str) {
    match result {
        Err(errno) if errno == expected => {}
        other => panic!("{what}: expected {expected:?}, got {other:?}"),
    }
}

/// `KVM_X86_SNP_VM`.
pub const SNP_VM: u64 = VmType::SevSnp as u64;

/// The policy [`SnpGuest`] launches with: the must-be-one bit and SMT allowed.
pub const SNP_POLICY: u64 = (1 << 17) | (1 << 16);

/// An SEV-SNP guest on a [`CheckedHost`], built step by step through the uAPI: a VM after
/// `KVM_SEV_INIT2` with its vCPUs, one guest_memfd memslot at gpa 0 whose first part is PRIVATE
/// (the rest shared, backed by anonymous memory at `uaddr`), and `/dev/sev` open. The launch
/// steps go through [`CheckedHost::unchecked`]; tests call [`CheckedHost::check`] (or
/// [`CheckedHost::violations`]) where they want the state checked.
#[derive(Debug)]
pub struct SnpGuest {
    /// The host (checked after every call made through it).
    pub host: CheckedHost,
    /// The VM descriptor.
    pub vm: i32,
    /// The vCPU descriptors, vCPU `i` with id (and APIC id) `i`.
    pub vcpus: Vec<i32>,
    /// The `/dev/sev` descriptor.
    pub sev: i32,
    /// The guest_memfd descriptor.
    pub gmem: i32,
    /// The shared backing of the memslot.
    pub uaddr: u64,
}

impl SnpGuest {
    /// A guest of `size` bytes of memory whose first `private` bytes are PRIVATE, with `nr_vcpus`
    /// vCPUs, before LAUNCH_START.
    #[track_caller]
    pub fn new(profile: KernelProfile, size: u64, private: u64, nr_vcpus: u64) -> SnpGuest {
        use gmem_kvm::attributes::KVM_MEMORY_ATTRIBUTE_PRIVATE;
        let host = CheckedHost::new(profile);
        let vm = host.create_vm(SNP_VM).expect("KVM_CREATE_VM (SNP)");
        host.unchecked().sev_init2(vm, &kvm_bindings::kvm_sev_init::default()).expect("KVM_SEV_INIT2");
        host.check("KVM_SEV_INIT2");
        let gmem = host.create_guest_memfd(vm, size, 0).expect("KVM_CREATE_GUEST_MEMFD");
        let uaddr = host.mmap_anonymous(size).expect("mmap");
        host.set_user_memory_region2(vm, &region(0, KVM_MEM_GUEST_MEMFD, 0, size, uaddr, gmem as u32, 0))
            .expect("KVM_SET_USER_MEMORY_REGION2");
        if private != 0 {
            host.set_memory_attributes(vm, &attrs(0, private, KVM_MEMORY_ATTRIBUTE_PRIVATE))
                .expect("KVM_SET_MEMORY_ATTRIBUTES");
        }
        let vcpus = (0..nr_vcpus).map(|id| host.create_vcpu(vm, id).expect("KVM_CREATE_VCPU")).collect();
        let sev = host.unchecked().open_dev_sev().expect("open /dev/sev");
        SnpGuest { host, vm, vcpus, sev, gmem, uaddr }
    }

    /// `KVM_SEV_SNP_LAUNCH_START` with [`SNP_POLICY`].
    #[track_caller]
    pub fn launch_start(&self) {
        let start = kvm_bindings::kvm_sev_snp_launch_start { policy: SNP_POLICY, ..Default::default() };
        self.host.unchecked().snp_launch_start(self.vm, self.sev, &start).expect("KVM_SEV_SNP_LAUNCH_START");
    }

    /// `KVM_SEV_SNP_LAUNCH_UPDATE` of `pages` (one slice per page, zero-padded to 4K) from `gfn`
    /// with the page type `page_type` (an SNP page type number), staged in user memory and
    /// repeated until the whole range is done. The error of the first failing call.
    pub fn launch_update(&self, gfn: u64, pages: &[&[u8]], page_type: u8) -> Result<(), gmem_uapi::SevError> {
        let len = pages.len() as u64 * PAGE;
        let staging = self.host.unchecked().process().mmap_anonymous(len.max(PAGE))?;
        for (i, page) in pages.iter().enumerate() {
            self.host
                .unchecked()
                .process()
                .mm
                .access(staging + i as u64 * PAGE, &mut page.to_vec(), true)
                .map_err(|_| Errno::EFAULT)?;
        }
        let mut update = kvm_bindings::kvm_sev_snp_launch_update {
            gfn_start: gfn,
            uaddr: staging,
            len,
            type_: page_type,
            ..Default::default()
        };
        while update.len != 0 {
            self.host.unchecked().snp_launch_update(self.vm, self.sev, &mut update)?;
        }
        Ok(())
    }

    /// `KVM_SEV_SNP_LAUNCH_FINISH` (no ID block).
    #[track_caller]
    pub fn launch_finish(&self) {
        self.host
            .unchecked()
            .snp_launch_finish(self.vm, self.sev, &Default::default())
            .expect("KVM_SEV_SNP_LAUNCH_FINISH");
    }

    /// A launched guest: 2M of memory, the first 1M PRIVATE, `nr_vcpus` vCPUs; two NORMAL pages
    /// (`"kernel"`, `"initrd"`) at gfns 0 and 1 and a ZERO page at gfn 2 launched, then
    /// LAUNCH_FINISH (which measures the vCPUs' VMSAs).
    #[track_caller]
    pub fn launched(profile: KernelProfile, nr_vcpus: u64) -> SnpGuest {
        let guest = SnpGuest::new(profile, 2 << 20, 1 << 20, nr_vcpus);
        guest.launch_start();
        guest.launch_update(0, &[b"kernel", b"initrd"], 1).expect("LAUNCH_UPDATE (NORMAL)");
        guest.launch_update(2, &[b""], 3).expect("LAUNCH_UPDATE (ZERO)");
        guest.launch_finish();
        guest.host.check("the SNP launch");
        guest
    }

    /// The VM.
    pub fn kvm(&self) -> Arc<Kvm> {
        self.host.kvm(self.vm)
    }

    /// The SNP platform of the host.
    pub fn snp_host(&self) -> Arc<gmem_arch::sev::host::SnpHost> {
        self.host.unchecked().snp_host().expect("the SNP host").clone()
    }

    /// The guest's ASID.
    pub fn asid(&self) -> u32 {
        gmem_arch::sev::kvm::SvmVm::of(&self.kvm()).expect("an SVM VM").asid()
    }

    /// The guest's context page (after LAUNCH_START).
    pub fn context(&self) -> gmem_mm::Pfn {
        gmem_arch::sev::kvm::SvmVm::of(&self.kvm()).and_then(|vm| vm.snp_context()).expect("a guest context")
    }

    /// The frame the guest's nested page tables map `gfn` to.
    #[track_caller]
    pub fn mapped_pfn(&self, gfn: u64) -> gmem_mm::Pfn {
        let kvm = self.kvm();
        let (base, spte) = kvm.tdp_mmu().expect("the TDP MMU").covering_leaf(gmem_kvm::Gfn(gfn)).expect("gfn mapped");
        spte.pfn.offset(gfn - base.0)
    }

    /// Enables `KVM_CAP_EXIT_HYPERCALL` for `KVM_HC_MAP_GPA_RANGE` (page-state changes reach the
    /// VMM) and registers vCPU 0's GHCB at `ghcb_gpa` (a shared page).
    #[track_caller]
    pub fn enable_psc(&self, ghcb_gpa: u64) {
        let cap = kvm_bindings::kvm_enable_cap {
            cap: gmem_kvm::caps::KVM_CAP_EXIT_HYPERCALL as u32,
            args: [gmem_kvm::caps::KVM_EXIT_HYPERCALL_VALID_MASK, 0, 0, 0],
            ..Default::default()
        };
        self.host.unchecked().enable_cap(self.vm, &cap).expect("KVM_ENABLE_CAP(EXIT_HYPERCALL)");
        self.host.unchecked().snp_register_ghcb(self.vcpus[0], ghcb_gpa).expect("GHCB registration");
    }

    /// The VMM's answer to a `KVM_HC_MAP_GPA_RANGE` exit: the attributes, then, for a conversion
    /// to shared, a hole punched in the guest_memfd. `hypercall.ret` (0).
    pub fn convert(&self, exit: RunError) -> Result<u64, RunError> {
        use gmem_kvm::attributes::KVM_MEMORY_ATTRIBUTE_PRIVATE;
        let RunError::Exit(gmem_kvm::vcpu::VcpuExit::Hypercall { args, .. }) = exit else { return Err(exit) };
        let private = args[2] & gmem_kvm::vcpu::KVM_MAP_GPA_RANGE_ENCRYPTED != 0;
        let host = self.host.unchecked();
        let attributes = if private { KVM_MEMORY_ATTRIBUTE_PRIVATE } else { 0 };
        host.set_memory_attributes(self.vm, &attrs(args[0], args[1] * PAGE, attributes)).map_err(RunError::Errno)?;
        if !private {
            host.fallocate(self.gmem, 3, args[0] as i64, (args[1] * PAGE) as i64).map_err(RunError::Errno)?;
        }
        Ok(0)
    }
}

/// `KVM_X86_TDX_VM`.
pub const TDX_VM: u64 = VmType::Tdx as u64;

/// The CPUID a VMM passes to `KVM_TDX_INIT_VM`: leaf 0x80000008 with GPAW 48.
pub fn tdx_cpuid() -> Vec<kvm_bindings::kvm_cpuid_entry2> {
    vec![kvm_bindings::kvm_cpuid_entry2 { function: 0x8000_0008, eax: 48 << 16, ..Default::default() }]
}

/// A TD on a checked Intel host, built through the uAPI up to where the TDX tests part ways: a
/// VM after `KVM_TDX_INIT_VM` (GPAW 48), one guest_memfd memslot at gpa 0 whose first part is
/// PRIVATE (the rest shared, backed by anonymous memory at `uaddr`), and its vCPUs created, none
/// initialised (`KVM_TDX_INIT_VCPU`) yet.
#[derive(Debug)]
pub struct TdGuest {
    /// The host (checked after every call made through it).
    pub host: CheckedHost,
    /// The VM descriptor.
    pub vm: i32,
    /// The vCPU descriptors, vCPU `i` with id `i`.
    pub vcpus: Vec<i32>,
    /// The guest_memfd descriptor.
    pub gmem: i32,
    /// The shared backing of the memslot.
    pub uaddr: u64,
}

impl TdGuest {
    /// A TD with the TD `attributes`, `size` bytes of memory whose first `private` bytes are
    /// PRIVATE, and `nr_vcpus` vCPUs.
    #[track_caller]
    pub fn new(profile: KernelProfile, attributes: u64, size: u64, private: u64, nr_vcpus: u64) -> TdGuest {
        use gmem_kvm::attributes::KVM_MEMORY_ATTRIBUTE_PRIVATE;
        let host = CheckedHost::new_intel(profile);
        let vm = host.create_vm(TDX_VM).expect("KVM_CREATE_VM (TDX)");
        let init_vm = gmem_uapi::kvm_tdx_init_vm { attributes, ..Default::default() };
        host.tdx_init_vm(vm, &init_vm, &tdx_cpuid()).expect("KVM_TDX_INIT_VM");
        let gmem = host.create_guest_memfd(vm, size, 0).expect("KVM_CREATE_GUEST_MEMFD");
        let uaddr = host.mmap_anonymous(size).expect("mmap");
        host.set_user_memory_region2(vm, &region(0, KVM_MEM_GUEST_MEMFD, 0, size, uaddr, gmem as u32, 0))
            .expect("KVM_SET_USER_MEMORY_REGION2");
        if private != 0 {
            host.set_memory_attributes(vm, &attrs(0, private, KVM_MEMORY_ATTRIBUTE_PRIVATE))
                .expect("KVM_SET_MEMORY_ATTRIBUTES");
        }
        let vcpus = (0..nr_vcpus).map(|id| host.create_vcpu(vm, id).expect("KVM_CREATE_VCPU")).collect();
        TdGuest { host, vm, vcpus, gmem, uaddr }
    }
}
