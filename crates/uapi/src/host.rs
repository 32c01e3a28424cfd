//! [`SimHost`]: one process on one simulated kernel, and the ioctl dispatch of its KVM files.

use crate::convert::{memory_attributes, userspace_memory_region2};
use crate::Result;
use gmem_arch::sev::ghcb::{GhcbResponse, PscEntry};
use gmem_arch::sev::guest as snp_guest;
use gmem_arch::sev::kvm::SvmVm;
use gmem_arch::tdx::kvm::{
    kvm_tdx_capabilities, kvm_tdx_cmd, kvm_tdx_init_mem_region, kvm_tdx_init_vm, KvmCpuid2Header, KVM_TDX_CAPABILITIES,
    KVM_TDX_FINALIZE_VM, KVM_TDX_INIT_MEM_REGION, KVM_TDX_INIT_VCPU, KVM_TDX_INIT_VM,
};
use gmem_arch::tdx::run::{TdvmcallArgs, TdvmcallResult};
use gmem_arch::tdx::status::TdxStatus;
use gmem_arch::tdx::tdcall as td_guest;
use gmem_kvm::arch::{Current, PopulateSource};
use gmem_kvm::caps::check_extension;
use gmem_kvm::guest_memfd::{gmem_memory_failure, gmem_of_file, kvm_gmem_create, kvm_gmem_populate};
use gmem_kvm::memslot::UserspaceMemoryRegion2;
use gmem_kvm::vcpu::{guest_access, kvm_vcpu_pre_fault_memory, KvmVcpu, RunError};
use gmem_kvm::{Gpa, KernelProfile, KvmSystem};
use gmem_mm::file::{alloc_file_pseudo, noop_llseek, File, FileOperations, FileRef, EMPTY_FOPS, O_RDWR};
use gmem_mm::filemap::{MfResult, EMPTY_AOPS};
use gmem_mm::inode::{Inode, InodeInit, Kstat, EMPTY_IOPS};
use gmem_mm::types::PAGE_SIZE;
use gmem_mm::types::{PgOff, PAGE_SHIFT};
use gmem_mm::vma::AccessSignal;
use gmem_mm::{Errno, Machine, Process};
use gmem_sync::{Arc, LockClass, Mutex};
use kvm_bindings::{
    kvm_cpuid_entry2, kvm_create_guest_memfd, kvm_memory_attributes, kvm_sev_cmd, kvm_sev_init,
    kvm_sev_snp_launch_finish, kvm_sev_snp_launch_start, kvm_sev_snp_launch_update, kvm_userspace_memory_region2,
};
use std::any::Any;
use std::fmt;

/// What `fstat` reports (the fields scripts print).
pub type Stat = Kstat;

/// `kvm_vm_fops`: a VM file's release drops the VM reference it holds; `llseek` is
/// `noop_llseek` (so `lseek` on a VM succeeds and returns 0, measured on 6.18.44).
static KVM_VM_FOPS: FileOperations =
    FileOperations { name: "kvm_vm_fops", release: Some(kvm_vm_release), llseek: Some(noop_llseek), ..EMPTY_FOPS };

/// `kvm_vcpu_fops`: a vCPU file's release drops the VM reference it holds; `llseek` is
/// `noop_llseek` (measured on 6.18.44: `lseek` on a vCPU returns 0). Its `mmap` (the `kvm_run`
/// page and the PIO and coalesced-MMIO pages) is not modelled: `mmap` of a vCPU is ENODEV here.
static KVM_VCPU_FOPS: FileOperations =
    FileOperations { name: "kvm_vcpu_fops", release: Some(kvm_vcpu_release), llseek: Some(noop_llseek), ..EMPTY_FOPS };

/// `file->private_data` of a vCPU file.
struct VcpuFile {
    kvm: Arc<gmem_kvm::Kvm>,
    vcpu: Arc<KvmVcpu>,
}

/// `kvm_vcpu_release`.
fn kvm_vcpu_release(_inode: &Inode, file: &File) -> i32 {
    let vcpu = file.private::<VcpuFile>().expect("a vCPU file's private_data is its vCPU");
    vcpu.kvm.put_kvm();
    0
}

/// `file->private_data` of a VM file.
struct VmFile {
    kvm: Arc<gmem_kvm::Kvm>,
}

/// `kvm_vm_release`.
fn kvm_vm_release(_inode: &Inode, file: &File) -> i32 {
    let vm = file.private::<VmFile>().expect("a VM file's private_data is its VM");
    vm.kvm.put_kvm();
    0
}

/// One process on a simulated kernel. Dropping it exits the process: every descriptor is closed
/// and every mapping removed, with the releases that implies.
pub struct SimHost {
    system: Arc<KvmSystem>,
    process: Process,
    /// A page of the process's memory where the typed `KVM_MEMORY_ENCRYPT_OP` helpers stage the
    /// command and its parameters (the kernel copies them from user memory), mapped on first use
    /// and held for the length of one call.
    staging: Mutex<Option<u64>>,
}

/// The size of the staging area of the typed `KVM_MEMORY_ENCRYPT_OP` helpers: the command at
/// its start, the parameters from byte 64 (room for `KVM_MAX_CPUID_ENTRIES` CPUID entries).
const STAGING_SIZE: u64 = 4 * PAGE_SIZE;

/// `vmm->sev_staging`: the staging page's lock (a leaf, held around one encrypt op).
static SEV_STAGING_LOCK: LockClass = LockClass::new("vmm->sev_staging");

/// A failed `KVM_MEMORY_ENCRYPT_OP`: the errno, and the firmware status KVM left in
/// `kvm_sev_cmd.error` (0 when the firmware was not involved).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SevError {
    /// The ioctl's errno.
    pub errno: Errno,
    /// `kvm_sev_cmd.error` (`SEV_RET_*`).
    pub fw_error: u32,
}

/// A failed TDX `KVM_MEMORY_ENCRYPT_OP`: the errno, and the SEAMCALL status KVM left in
/// `kvm_tdx_cmd.hw_error` (0 when none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TdxError {
    /// The ioctl's errno.
    pub errno: Errno,
    /// `kvm_tdx_cmd.hw_error`.
    pub hw_error: u64,
}

impl From<Errno> for TdxError {
    fn from(errno: Errno) -> Self {
        TdxError { errno, hw_error: 0 }
    }
}

impl From<Errno> for SevError {
    fn from(errno: Errno) -> Self {
        SevError { errno, fw_error: 0 }
    }
}

impl fmt::Debug for SimHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimHost").field("system", &self.system).finish()
    }
}

/// `anon_inode_getfile`: a read-write file on the shared anonymous inode (mode 0600, no
/// operations of its own), as KVM creates VM and vCPU files.
fn anon_inode_getfile(
    machine: &Arc<Machine>,
    name: &'static str,
    fops: &'static FileOperations,
    private_data: Option<Arc<dyn std::any::Any + Send + Sync>>,
) -> FileRef {
    let inode = InodeInit {
        mode: 0o600,
        size: 0,
        i_private: 0,
        i_op: &EMPTY_IOPS,
        a_ops: &EMPTY_AOPS,
        a_private: None,
        noexec: true,
    };
    alloc_file_pseudo(machine, name, fops, O_RDWR, inode, private_data)
}

impl SimHost {
    /// A new machine booted with `profile`, with the simulated host's vendor module
    /// ([`gmem_arch::X86Host`]: SEV-SNP), and a process on it.
    pub fn new(profile: KernelProfile) -> SimHost {
        SimHost::with_system(KvmSystem::builder(profile).arch(gmem_arch::X86Host::setup()).build())
    }

    /// A new machine booted with `profile` whose CPU is Intel's: the vendor module is
    /// `kvm_intel` with TDX ([`gmem_arch::X86Host::setup_intel`]: the TDX module, its
    /// host-write check on the machine), and a process on it. TDX VMs exist when the profile
    /// lists them (`v6.18`); SEV VMs never do on this host.
    pub fn new_intel(profile: KernelProfile) -> SimHost {
        SimHost::with_system(KvmSystem::builder(profile).arch(gmem_arch::X86Host::setup_intel()).build())
    }

    /// A process on an existing kernel.
    pub fn with_system(system: Arc<KvmSystem>) -> SimHost {
        let process = Process::new(system.machine().clone());
        SimHost { system, process, staging: Mutex::new(&SEV_STAGING_LOCK, None) }
    }

    /// The kernel (`/dev/kvm`).
    pub fn system(&self) -> &Arc<KvmSystem> {
        &self.system
    }

    /// The machine.
    pub fn machine(&self) -> &Arc<Machine> {
        self.system.machine()
    }

    /// The process (its system calls: fallocate, mmap, close, ...).
    pub fn process(&self) -> &Process {
        &self.process
    }

    /// The kernel profile.
    pub fn profile(&self) -> &KernelProfile {
        self.system.profile()
    }

    /// `KVM_CHECK_EXTENSION` on `/dev/kvm`.
    pub fn check_extension(&self, cap: u64) -> i64 {
        let _span = tracing::debug_span!("kvm_dev_ioctl_check_extension", cap).entered();
        check_extension(self.profile(), None, cap)
    }

    /// `KVM_CREATE_VM` (`kvm_dev_ioctl_create_vm`): reserve a descriptor, create the VM, install
    /// its file.
    #[doc(alias = "kvm_dev_ioctl_create_vm")]
    pub fn create_vm(&self, vm_type: u64) -> Result<i32> {
        let _span = tracing::debug_span!("kvm_dev_ioctl_create_vm", vm_type).entered();
        let files = &self.process.files;
        let fd = files.get_unused_fd()?;
        let kvm = match self.system.create_vm_in(vm_type, &self.process.mm) {
            Ok(kvm) => kvm,
            Err(errno) => {
                files.put_unused_fd(fd);
                return Err(errno);
            }
        };
        let file = anon_inode_getfile(self.machine(), "kvm-vm", &KVM_VM_FOPS, Some(Arc::new(VmFile { kvm })));
        files.fd_install(fd, file);
        Ok(fd)
    }

    /// The VM behind a descriptor for a VM ioctl: EBADF if it is not open; on a vCPU,
    /// `kvm_vcpu_ioctl` gets the command: EIO once its VM is dead, else EINVAL (the default of
    /// `kvm_arch_vcpu_ioctl`); ENOTTY for any other file (it has no ioctl, or not this one).
    #[doc(alias = "kvm_vcpu_ioctl")]
    pub fn vm(&self, vm_fd: i32) -> Result<Arc<gmem_kvm::Kvm>> {
        let file = self.process.fget(vm_fd)?;
        let vm = if std::ptr::eq(file.f_op(), &KVM_VM_FOPS) {
            Ok(file.private::<VmFile>().expect("VM file").kvm.clone())
        } else if std::ptr::eq(file.f_op(), &KVM_VCPU_FOPS) {
            let vcpu = file.private::<VcpuFile>().expect("vCPU file");
            Err(if vcpu.kvm.is_dead() { Errno::EIO } else { Errno::EINVAL })
        } else {
            Err(Errno::ENOTTY)
        };
        drop(file);
        vm
    }

    /// Runs a VM ioctl and returns to user space.
    fn vm_ioctl<T>(&self, vm_fd: i32, ioctl: impl FnOnce(&Arc<gmem_kvm::Kvm>) -> Result<T>) -> Result<T> {
        // kvm_vm_ioctl: a VM a KVM_BUG_ON killed answers nothing but EIO.
        let result = self.vm(vm_fd).and_then(|kvm| if kvm.is_dead() { Err(Errno::EIO) } else { ioctl(&kvm) });
        self.process.syscall_exit(result)
    }

    /// `KVM_CHECK_EXTENSION` on a VM.
    pub fn vm_check_extension(&self, vm_fd: i32, cap: u64) -> Result<i64> {
        let _span = tracing::debug_span!("kvm_vm_ioctl_check_extension", vm_fd, cap).entered();
        self.vm_ioctl(vm_fd, |kvm| Ok(check_extension(self.profile(), Some(kvm), cap)))
    }

    /// `KVM_ENABLE_CAP` on a VM (`kvm_vm_ioctl_enable_cap`; the model has
    /// `KVM_CAP_EXIT_HYPERCALL`, see [`gmem_kvm::Kvm::enable_cap`]).
    pub fn enable_cap(&self, vm_fd: i32, cap: &kvm_bindings::kvm_enable_cap) -> Result<()> {
        let _span = tracing::debug_span!("kvm_vm_ioctl_enable_cap", vm_fd, cap.cap).entered();
        self.vm_ioctl(vm_fd, |kvm| kvm.enable_cap(u64::from(cap.cap), cap.flags, cap.args))
    }

    /// `KVM_CREATE_GUEST_MEMFD`. `reserved` is not checked (as in the kernel).
    pub fn create_guest_memfd(&self, vm_fd: i32, args: &kvm_create_guest_memfd) -> Result<i32> {
        let _span = tracing::debug_span!("kvm_vm_ioctl_create_guest_memfd", vm_fd, args.size, args.flags).entered();
        self.vm_ioctl(vm_fd, |kvm| kvm_gmem_create(kvm, &self.process.files, args.size, args.flags))
    }

    /// `KVM_SET_USER_MEMORY_REGION2`.
    pub fn set_user_memory_region2(&self, vm_fd: i32, region: &kvm_userspace_memory_region2) -> Result<()> {
        let _span = tracing::debug_span!("kvm_vm_ioctl_set_user_memory_region2", vm_fd, region.slot).entered();
        self.set_memory_region(vm_fd, &userspace_memory_region2(region))
    }

    /// `KVM_SET_USER_MEMORY_REGION2` with the simulator's own argument type (the pads of the
    /// uAPI struct are not checked by the kernel, so nothing is lost).
    pub fn set_memory_region(&self, vm_fd: i32, mem: &UserspaceMemoryRegion2) -> Result<()> {
        self.vm_ioctl(vm_fd, |kvm| kvm.set_user_memory_region2(&self.process.files, mem))
    }

    /// `KVM_SET_MEMORY_ATTRIBUTES`.
    pub fn set_memory_attributes(&self, vm_fd: i32, attrs: &kvm_memory_attributes) -> Result<()> {
        let _span = tracing::debug_span!("kvm_vm_ioctl_set_memory_attributes", vm_fd).entered();
        let attrs = memory_attributes(attrs);
        self.vm_ioctl(vm_fd, |kvm| kvm.set_memory_attributes(&attrs))
    }

    /// `KVM_CREATE_VCPU`: the vCPU's descriptor (`create_vcpu_fd`: `anon_inode_getfd`, holding a
    /// VM reference).
    #[doc(alias = "create_vcpu_fd")]
    pub fn create_vcpu(&self, vm_fd: i32, id: u64) -> Result<i32> {
        let _span = tracing::debug_span!("kvm_vm_ioctl_create_vcpu", vm_fd, id).entered();
        self.vm_ioctl(vm_fd, |kvm| {
            kvm.create_vcpu(id, |vcpu| {
                let files = &self.process.files;
                kvm.get_kvm();
                let fd = match files.get_unused_fd() {
                    Ok(fd) => fd,
                    Err(errno) => {
                        kvm.put_kvm();
                        return Err(errno);
                    }
                };
                let file = anon_inode_getfile(
                    self.machine(),
                    "kvm-vcpu",
                    &KVM_VCPU_FOPS,
                    Some(Arc::new(VcpuFile { kvm: kvm.clone(), vcpu })),
                );
                files.fd_install(fd, file);
                Ok(fd)
            })
        })
    }

    /// The VM and vCPU behind a descriptor for a vCPU ioctl (`kvm_vcpu_ioctl`): EBADF if it is not
    /// open, ENOTTY if it is not a vCPU, EIO if a `KVM_BUG_ON` killed the VM.
    fn vcpu_for_ioctl(&self, vcpu_fd: i32) -> Result<(Arc<gmem_kvm::Kvm>, Arc<KvmVcpu>)> {
        let (kvm, vcpu) = self.vcpu(vcpu_fd)?;
        if kvm.is_dead() {
            return Err(Errno::EIO);
        }
        Ok((kvm, vcpu))
    }

    /// The VM and vCPU behind a descriptor for a vCPU ioctl: EBADF if it is not open, ENOTTY if it
    /// is not a vCPU.
    pub fn vcpu(&self, vcpu_fd: i32) -> Result<(Arc<gmem_kvm::Kvm>, Arc<KvmVcpu>)> {
        let file = self.process.fget(vcpu_fd)?;
        let vcpu = if std::ptr::eq(file.f_op(), &KVM_VCPU_FOPS) {
            let vcpu = file.private::<VcpuFile>().expect("vCPU file");
            Ok((vcpu.kvm.clone(), vcpu.vcpu.clone()))
        } else {
            Err(Errno::ENOTTY)
        };
        drop(file);
        vcpu
    }

    /// A guest load (`write == false`) or store at `gpa` by the vCPU behind `vcpu_fd` (what
    /// `KVM_RUN` does for a guest instruction touching memory). `private` overrides the VM
    /// type's default access kind.
    pub fn guest_access(
        &self,
        vcpu_fd: i32,
        gpa: u64,
        buf: &mut [u8],
        write: bool,
        private: Option<bool>,
    ) -> std::result::Result<(), RunError> {
        let _span = tracing::debug_span!("kvm_vcpu_run", vcpu_fd, gpa, write).entered();
        let result = self
            .vcpu_for_ioctl(vcpu_fd)
            .map_err(RunError::Errno)
            .and_then(|(kvm, vcpu)| guest_access(&kvm, &vcpu, &self.process.mm, gpa, buf, write, private));
        self.process.syscall_exit(result)
    }

    /// A hypercall by the vCPU behind `vcpu_fd` (`KVM_RUN` while the guest executes `VMCALL`
    /// with `nr` and `a0..a2`): `Ok(rax)` when the kernel completed it, or the
    /// `KVM_EXIT_HYPERCALL` exit the VMM must complete. See [`gmem_kvm::vcpu::guest_hypercall`].
    pub fn guest_hypercall(
        &self,
        vcpu_fd: i32,
        nr: u64,
        a0: u64,
        a1: u64,
        a2: u64,
    ) -> std::result::Result<u64, RunError> {
        let _span = tracing::debug_span!("kvm_emulate_hypercall", vcpu_fd, nr, a0, a1, a2).entered();
        let result = self
            .vcpu_for_ioctl(vcpu_fd)
            .map_err(RunError::Errno)
            .and_then(|(kvm, vcpu)| gmem_kvm::vcpu::guest_hypercall(&kvm, &vcpu, nr, a0, a1, a2));
        self.process.syscall_exit(result)
    }

    /// `KVM_PRE_FAULT_MEMORY`: returns the size left unmapped.
    pub fn pre_fault_memory(&self, vcpu_fd: i32, gpa: u64, size: u64) -> Result<u64> {
        let _span = tracing::debug_span!("kvm_vcpu_ioctl_pre_fault_memory", vcpu_fd, gpa, size).entered();
        let result = self
            .vcpu_for_ioctl(vcpu_fd)
            .and_then(|(kvm, vcpu)| kvm_vcpu_pre_fault_memory(&kvm, &vcpu, &self.process.mm, gpa, size));
        self.process.syscall_exit(result)
    }

    /// The arch launch path's populate (`kvm_gmem_populate` with the VM type's `post_populate`):
    /// `npages` pages from `gpa`, copying from `source` (page `i` from byte `i * 4096`). Returns
    /// the pages populated.
    pub fn populate(&self, vm_fd: i32, gpa: u64, npages: u64, source: Option<&[u8]>) -> Result<i64> {
        let _span = tracing::debug_span!("kvm_gmem_populate", vm_fd, gpa, npages).entered();
        self.vm_ioctl(vm_fd, |kvm| {
            let slots_lock = kvm.lock_slots();
            let arch = kvm.arch().clone();
            let post_populate =
                move |kvm: &gmem_kvm::Kvm, gfn, pfn, src: &PopulateSource<'_>, order, opaque: &mut dyn Any| {
                    arch.post_populate(kvm, gfn, pfn, src, order, opaque)
                };
            let source = source.map_or(PopulateSource::None, PopulateSource::Buffer);
            kvm_gmem_populate(kvm, &slots_lock, Gpa(gpa).to_gfn(), source, npages as i64, &post_populate, &mut ())
        })
    }

    /// `open("/dev/sev", O_RDWR)`: the PSP's SEV device, which the SNP launch commands need.
    ///
    /// The device exists only on a host with SEV (the vendor module's [`SevModule`] enabled, as
    /// in the profiles with SEV-SNP VMs); elsewhere the path lookup fails with ENOENT, as on a
    /// machine without `/dev/sev`. `do_sys_openat2` reserves the descriptor before the lookup, so
    /// a full table is EMFILE first.
    ///
    /// [`SevModule`]: gmem_arch::sev::kvm::SevModule
    pub fn open_dev_sev(&self) -> Result<i32> {
        let _span = tracing::debug_span!("open_dev_sev").entered();
        let sev_enabled = gmem_arch::X86Host::of(&self.system).is_some_and(|host| host.sev().sev_enabled);
        let result = if sev_enabled {
            gmem_arch::sev::psp::open_dev_sev(self.machine(), &self.process.files)
        } else {
            let files = &self.process.files;
            files.get_unused_fd().and_then(|fd| {
                files.put_unused_fd(fd);
                Err(Errno::ENOENT)
            })
        };
        self.process.syscall_exit(result)
    }

    /// `KVM_MEMORY_ENCRYPT_OP` with the user pointer `argp` (a `struct kvm_sev_cmd` in this
    /// process's memory, whose `data` points at the command's parameters): the vendor's
    /// `mem_enc_ioctl` (ENOTTY without one). On a vCPU descriptor the command is the vCPU's
    /// (`kvm_arch_vcpu_ioctl` knows `KVM_MEMORY_ENCRYPT_OP` too: [`Self::vcpu_memory_encrypt_op`]).
    pub fn memory_encrypt_op(&self, vm_fd: i32, argp: u64) -> Result<()> {
        if self.vcpu(vm_fd).is_ok() {
            return self.vcpu_memory_encrypt_op(vm_fd, argp);
        }
        let _span = tracing::debug_span!("kvm_arch_vm_ioctl_memory_encrypt_op", vm_fd, argp).entered();
        let current = Current { mm: &self.process.mm, files: &self.process.files };
        self.vm_ioctl(vm_fd, |kvm| kvm.arch().clone().mem_enc_ioctl(kvm, current, argp))
    }

    /// `KVM_MEMORY_ENCRYPT_OP` with `cmd` and the parameter bytes `params` (empty: `data` is
    /// used as given), both staged in this process's memory for the call; `cmd.error` and the
    /// parameters come back as the kernel left them.
    pub fn encrypt_op_staged(&self, vm_fd: i32, cmd: &mut kvm_sev_cmd, params: &mut [u8]) -> Result<()> {
        self.staged_encrypt_op(cmd, params, |cmd, data| cmd.data = data, |argp| self.memory_encrypt_op(vm_fd, argp))
    }

    /// Stages `cmd` and the parameter bytes `params` in this process's staging page (the
    /// parameters' address goes into the command through `set_data` unless `params` is empty),
    /// runs `ioctl` with the command's address, and copies both back as the kernel left them.
    /// E2BIG if the parameters do not fit (16 KiB less the 64 bytes of the command). The
    /// staging lock is held across the call, so concurrent staged calls do not share the page.
    fn staged_encrypt_op<C: gmem_arch::uapi::UapiStruct>(
        &self,
        cmd: &mut C,
        params: &mut [u8],
        set_data: impl FnOnce(&mut C, u64),
        ioctl: impl FnOnce(u64) -> Result<()>,
    ) -> Result<()> {
        let mut staging = self.staging.lock();
        let page = match *staging {
            Some(page) => page,
            None => {
                let page = self.process.mmap_anonymous(STAGING_SIZE)?;
                *staging = Some(page);
                page
            }
        };
        let params_at = page + 64;
        if params.len() as u64 > STAGING_SIZE - 64 {
            return Err(Errno::E2BIG);
        }
        if !params.is_empty() {
            self.process.mm.access(params_at, params, true).map_err(|_| Errno::EFAULT)?;
            set_data(cmd, params_at);
        }
        let mut cmd_bytes = gmem_arch::uapi::as_bytes(cmd).to_vec();
        self.process.mm.access(page, &mut cmd_bytes, true).map_err(|_| Errno::EFAULT)?;
        let result = ioctl(page);
        self.process.mm.access(page, &mut cmd_bytes, false).map_err(|_| Errno::EFAULT)?;
        *cmd = gmem_arch::uapi::from_bytes(&cmd_bytes);
        if !params.is_empty() {
            self.process.mm.access(params_at, params, false).map_err(|_| Errno::EFAULT)?;
        }
        result
    }

    /// One typed SEV command: `id` with `params` staged as its data, through `sev_fd`.
    fn sev_command<T: Copy + Default + 'static>(
        &self,
        vm_fd: i32,
        id: u32,
        sev_fd: i32,
        params: &mut T,
    ) -> std::result::Result<(), SevError> {
        let mut cmd = kvm_sev_cmd { id, sev_fd: sev_fd as u32, ..Default::default() };
        let mut bytes = gmem_arch::sev::kvm::uapi_bytes(params);
        let result = self.encrypt_op_staged(vm_fd, &mut cmd, &mut bytes);
        *params = gmem_arch::sev::kvm::uapi_from_bytes(&bytes);
        result.map_err(|errno| SevError { errno, fw_error: cmd.error })
    }

    /// `KVM_SEV_INIT2`.
    pub fn sev_init2(&self, vm_fd: i32, params: &kvm_sev_init) -> std::result::Result<(), SevError> {
        let mut params = *params;
        self.sev_command(vm_fd, gmem_arch::sev::kvm::KVM_SEV_INIT2, -1, &mut params)
    }

    /// `KVM_SEV_SNP_LAUNCH_START`.
    pub fn snp_launch_start(
        &self,
        vm_fd: i32,
        sev_fd: i32,
        params: &kvm_sev_snp_launch_start,
    ) -> std::result::Result<(), SevError> {
        let mut params = *params;
        self.sev_command(vm_fd, gmem_arch::sev::kvm::KVM_SEV_SNP_LAUNCH_START, sev_fd, &mut params)
    }

    /// `KVM_SEV_SNP_LAUNCH_UPDATE`: on success `params` has advanced past what was done (a
    /// partial success leaves `len` non-zero; callers loop).
    pub fn snp_launch_update(
        &self,
        vm_fd: i32,
        sev_fd: i32,
        params: &mut kvm_sev_snp_launch_update,
    ) -> std::result::Result<(), SevError> {
        self.sev_command(vm_fd, gmem_arch::sev::kvm::KVM_SEV_SNP_LAUNCH_UPDATE, sev_fd, params)
    }

    /// `KVM_SEV_SNP_LAUNCH_FINISH`.
    pub fn snp_launch_finish(
        &self,
        vm_fd: i32,
        sev_fd: i32,
        params: &kvm_sev_snp_launch_finish,
    ) -> std::result::Result<(), SevError> {
        let mut params = *params;
        self.sev_command(vm_fd, gmem_arch::sev::kvm::KVM_SEV_SNP_LAUNCH_FINISH, sev_fd, &mut params)
    }

    /// Runs `step` as the vCPU behind `vcpu_fd` (a `KVM_RUN` whose guest executes one SNP or TDX
    /// instruction, VMGEXIT or TDCALL), returning to user space afterwards.
    fn vcpu_step<T>(
        &self,
        vcpu_fd: i32,
        step: impl FnOnce(&gmem_kvm::Kvm, &KvmVcpu, &gmem_mm::vma::Mm) -> std::result::Result<T, RunError>,
    ) -> std::result::Result<T, RunError> {
        let result = self
            .vcpu_for_ioctl(vcpu_fd)
            .map_err(RunError::Errno)
            .and_then(|(kvm, vcpu)| step(&kvm, &vcpu, &self.process.mm));
        self.process.syscall_exit(result)
    }

    /// The guest's PVALIDATE of the page at `gpa` (see [`gmem_arch::sev::guest::pvalidate`]):
    /// the instruction's result code.
    pub fn snp_pvalidate(
        &self,
        vcpu_fd: i32,
        gpa: u64,
        size_2m: bool,
        validate: bool,
    ) -> std::result::Result<u32, RunError> {
        let _span = tracing::debug_span!("pvalidate", vcpu_fd, gpa, size_2m, validate).entered();
        self.vcpu_step(vcpu_fd, |kvm, vcpu, mm| snp_guest::pvalidate(kvm, vcpu, mm, gpa, size_2m, validate))
    }

    /// The guest's RMPADJUST of the page at `gpa` into a VMSA (or back).
    pub fn snp_rmpadjust_vmsa(&self, vcpu_fd: i32, gpa: u64, vmsa: bool) -> std::result::Result<u32, RunError> {
        let _span = tracing::debug_span!("rmpadjust", vcpu_fd, gpa, vmsa).entered();
        self.vcpu_step(vcpu_fd, |kvm, vcpu, mm| snp_guest::rmpadjust_vmsa(kvm, vcpu, mm, gpa, vmsa))
    }

    /// The guest registers its GHCB at `ghcb_gpa` (GHCB MSR protocol): the response MSR value.
    pub fn snp_register_ghcb(&self, vcpu_fd: i32, ghcb_gpa: u64) -> std::result::Result<u64, RunError> {
        let _span = tracing::debug_span!("vmgexit_reg_gpa", vcpu_fd, ghcb_gpa).entered();
        self.vcpu_step(vcpu_fd, |kvm, vcpu, _| snp_guest::register_ghcb(kvm, vcpu, ghcb_gpa))
    }

    /// A page-state change of one 4K page by the GHCB MSR protocol (`op` 1 private, 2 shared):
    /// KVM's answer, or the `KVM_EXIT_HYPERCALL` to handle (then [`SimHost::complete_hypercall`]).
    pub fn snp_psc_msr(&self, vcpu_fd: i32, gpa: u64, op: u8) -> std::result::Result<GhcbResponse, RunError> {
        let _span = tracing::debug_span!("vmgexit_psc_msr", vcpu_fd, gpa, op).entered();
        self.vcpu_step(vcpu_fd, |kvm, vcpu, _| snp_guest::psc_msr(kvm, vcpu, gpa, op))
    }

    /// The guest writes `entries` as a PSC buffer into its GHCB at `ghcb_gpa`.
    pub fn snp_write_psc_buffer(
        &self,
        vcpu_fd: i32,
        ghcb_gpa: u64,
        entries: &[PscEntry],
    ) -> std::result::Result<(), RunError> {
        self.vcpu_step(vcpu_fd, |kvm, vcpu, mm| snp_guest::write_psc_buffer(kvm, vcpu, mm, ghcb_gpa, entries))
    }

    /// The guest reads its PSC buffer back: `(cur_entry, end_entry, entries)`.
    pub fn snp_read_psc_buffer(
        &self,
        vcpu_fd: i32,
        ghcb_gpa: u64,
        count: usize,
    ) -> std::result::Result<(u16, u16, Vec<PscEntry>), RunError> {
        self.vcpu_step(vcpu_fd, |kvm, vcpu, mm| snp_guest::read_psc_buffer(kvm, vcpu, mm, ghcb_gpa, count))
    }

    /// `VMGEXIT(SVM_VMGEXIT_PSC)` with the buffer in the GHCB at `ghcb_gpa`: KVM's answer, or the
    /// `KVM_EXIT_HYPERCALL` of the first range.
    pub fn snp_vmgexit_psc(&self, vcpu_fd: i32, ghcb_gpa: u64) -> std::result::Result<GhcbResponse, RunError> {
        let _span = tracing::debug_span!("vmgexit_psc", vcpu_fd, ghcb_gpa).entered();
        self.vcpu_step(vcpu_fd, |kvm, vcpu, mm| snp_guest::vmgexit_psc(kvm, vcpu, mm, ghcb_gpa))
    }

    /// `VMGEXIT(SVM_VMGEXIT_AP_CREATION)`: 0 or the GHCB error the guest gets.
    pub fn snp_ap_creation(
        &self,
        vcpu_fd: i32,
        request: u32,
        apic_id: u32,
        vmsa_gpa: u64,
        sev_features: u64,
    ) -> std::result::Result<u64, RunError> {
        let _span = tracing::debug_span!("vmgexit_ap_creation", vcpu_fd, request, apic_id, vmsa_gpa).entered();
        self.vcpu_step(vcpu_fd, |kvm, vcpu, _| {
            snp_guest::vmgexit_ap_creation(kvm, vcpu, request, apic_id, vmsa_gpa, sev_features)
        })
    }

    /// `KVM_RUN` again after user space handled a `KVM_EXIT_HYPERCALL`, with `hypercall.ret`:
    /// KVM's `complete_userspace_io` (the rest of a page-state change, possibly another exit).
    /// EINVAL if nothing was pending.
    pub fn complete_hypercall(&self, vcpu_fd: i32, ret: u64) -> std::result::Result<GhcbResponse, RunError> {
        let _span = tracing::debug_span!("complete_userspace_io", vcpu_fd, ret).entered();
        self.vcpu_step(vcpu_fd, |kvm, vcpu, mm| {
            snp_guest::complete_userspace_io(kvm, vcpu, mm, ret).unwrap_or(Err(RunError::Errno(Errno::EINVAL)))
        })
    }

    /// A Linux SNP guest's `set_pages_state` over `npages` pages from `gpa` with its GHCB at
    /// `ghcb_gpa` (rescind, PSC, validate), `handle` answering each exit as the VMM: the final
    /// PSC status.
    pub fn snp_set_pages_state(
        &self,
        vcpu_fd: i32,
        ghcb_gpa: u64,
        gpa: u64,
        npages: u64,
        private: bool,
        handle: impl FnMut(RunError) -> std::result::Result<u64, RunError>,
    ) -> std::result::Result<u64, RunError> {
        let _span = tracing::debug_span!("set_pages_state", vcpu_fd, gpa, npages, private).entered();
        self.vcpu_step(vcpu_fd, |kvm, vcpu, mm| {
            snp_guest::set_pages_state(kvm, vcpu, mm, ghcb_gpa, gpa, npages, private, handle)
        })
    }

    /// The SNP VM's launch digest as the firmware holds it (`None` for a VM without a guest
    /// context).
    pub fn snp_launch_digest(&self, vm_fd: i32) -> Result<Option<[u8; 48]>> {
        let kvm = self.vm(vm_fd)?;
        let digest = SvmVm::of(&kvm)
            .and_then(|vm| vm.snp_context().and_then(|gctx| vm.host().firmware().context(gctx)))
            .map(|context| *context.digest.as_bytes());
        Ok(digest)
    }

    /// `KVM_MEMORY_ENCRYPT_OP` on the vCPU behind `vcpu_fd` with the user pointer `argp`
    /// (`kvm_vcpu_ioctl` → `kvm_arch_vcpu_ioctl` → the vendor's `vcpu_mem_enc_ioctl`; ENOTTY
    /// without one). `kvm_vcpu_ioctl` holds `vcpu->mutex` around it, unless the vendor's
    /// handler is the unlocked one (TDX with upstream fix F16).
    #[doc(alias = "kvm_arch_vcpu_ioctl")]
    pub fn vcpu_memory_encrypt_op(&self, vcpu_fd: i32, argp: u64) -> Result<()> {
        let _span = tracing::debug_span!("kvm_arch_vcpu_ioctl_memory_encrypt_op", vcpu_fd, argp).entered();
        let current = Current { mm: &self.process.mm, files: &self.process.files };
        let result = self.vcpu_for_ioctl(vcpu_fd).and_then(|(kvm, vcpu)| {
            let arch = kvm.arch().clone();
            if arch.vcpu_mem_enc_ioctl_unlocked(&kvm) {
                return arch.vcpu_mem_enc_ioctl(&kvm, &vcpu, current, argp);
            }
            let _mutex = vcpu.mutex.lock();
            arch.vcpu_mem_enc_ioctl(&kvm, &vcpu, current, argp)
        });
        self.process.syscall_exit(result)
    }

    /// A TDX `KVM_MEMORY_ENCRYPT_OP` (on the VM behind `fd`, or on the vCPU behind it when
    /// `vcpu`) with `cmd` and the parameter bytes `params` staged in this process's memory
    /// (`cmd.data` points at them unless `params` is empty); `cmd` (its `hw_error`) and the
    /// parameters come back as the kernel left them. E2BIG if the parameters do not fit the
    /// staging area (16 KiB less 64 bytes).
    pub fn tdx_op_staged(&self, fd: i32, vcpu: bool, cmd: &mut kvm_tdx_cmd, params: &mut [u8]) -> Result<()> {
        self.staged_encrypt_op(
            cmd,
            params,
            |cmd, data| cmd.data = data,
            |argp| if vcpu { self.vcpu_memory_encrypt_op(fd, argp) } else { self.memory_encrypt_op(fd, argp) },
        )
    }

    /// One typed TDX command: `id` with `flags`, `data` as given when `params` is empty.
    fn tdx_command(
        &self,
        fd: i32,
        vcpu: bool,
        id: u32,
        flags: u32,
        data: u64,
        params: &mut [u8],
    ) -> std::result::Result<(), TdxError> {
        let mut cmd = kvm_tdx_cmd { id, flags, data, hw_error: 0 };
        self.tdx_op_staged(fd, vcpu, &mut cmd, params).map_err(|errno| TdxError { errno, hw_error: cmd.hw_error })
    }

    /// `KVM_TDX_CAPABILITIES` with room for `nent` CPUID entries: the capabilities and the
    /// configurable CPUID leaves.
    pub fn tdx_capabilities(&self, vm_fd: i32, nent: u32) -> Result<(kvm_tdx_capabilities, Vec<kvm_cpuid_entry2>)> {
        let caps = kvm_tdx_capabilities { cpuid: KvmCpuid2Header { nent, padding: 0 }, ..Default::default() };
        let head = std::mem::size_of::<kvm_tdx_capabilities>();
        let entry_size = std::mem::size_of::<kvm_cpuid_entry2>();
        let mut bytes = gmem_arch::uapi::as_bytes(&caps).to_vec();
        bytes.resize(head + nent as usize * entry_size, 0);
        self.tdx_command(vm_fd, false, KVM_TDX_CAPABILITIES, 0, 0, &mut bytes).map_err(|error| error.errno)?;
        let caps: kvm_tdx_capabilities = gmem_arch::uapi::from_bytes(&bytes[..head]);
        let entries = (0..caps.cpuid.nent.min(nent) as usize)
            .map(|i| gmem_arch::uapi::from_bytes(&bytes[head + i * entry_size..head + (i + 1) * entry_size]))
            .collect();
        Ok((caps, entries))
    }

    /// `KVM_TDX_INIT_VM` with `init_vm` (whose `cpuid.nent` is set to the number of `cpuid`
    /// entries) followed by `cpuid`.
    pub fn tdx_init_vm(
        &self,
        vm_fd: i32,
        init_vm: &kvm_tdx_init_vm,
        cpuid: &[kvm_cpuid_entry2],
    ) -> std::result::Result<(), TdxError> {
        let mut bytes = init_vm.with_cpuid(cpuid);
        self.tdx_command(vm_fd, false, KVM_TDX_INIT_VM, 0, 0, &mut bytes)
    }

    /// `KVM_TDX_FINALIZE_VM`.
    pub fn tdx_finalize_vm(&self, vm_fd: i32) -> std::result::Result<(), TdxError> {
        self.tdx_command(vm_fd, false, KVM_TDX_FINALIZE_VM, 0, 0, &mut [])
    }

    /// `KVM_TDX_INIT_VCPU` on the vCPU behind `vcpu_fd`, with `rcx` for the guest's firmware.
    pub fn tdx_init_vcpu(&self, vcpu_fd: i32, rcx: u64) -> std::result::Result<(), TdxError> {
        self.tdx_command(vcpu_fd, true, KVM_TDX_INIT_VCPU, 0, rcx, &mut [])
    }

    /// `KVM_TDX_INIT_MEM_REGION` on the vCPU behind `vcpu_fd` with `flags`
    /// (`KVM_TDX_MEASURE_MEMORY_REGION`): `region.source_addr` is an address in this process.
    /// `region` comes back advanced past what was done, whatever the result.
    pub fn tdx_init_mem_region(
        &self,
        vcpu_fd: i32,
        region: &mut kvm_tdx_init_mem_region,
        flags: u32,
    ) -> std::result::Result<(), TdxError> {
        let mut bytes = gmem_arch::uapi::as_bytes(region).to_vec();
        let result = self.tdx_command(vcpu_fd, true, KVM_TDX_INIT_MEM_REGION, flags, 0, &mut bytes);
        *region = gmem_arch::uapi::from_bytes(&bytes);
        result
    }

    /// The guest's `TDG.MEM.PAGE.ACCEPT` with RCX = `gpa | page size` on the vCPU behind
    /// `vcpu_fd` (see [`gmem_arch::tdx::tdcall::tdg_mem_page_accept`]): the TDCALL's status.
    pub fn tdx_accept(&self, vcpu_fd: i32, rcx: u64) -> std::result::Result<TdxStatus, RunError> {
        let _span = tracing::debug_span!("tdg_mem_page_accept", vcpu_fd, rcx).entered();
        self.vcpu_step(vcpu_fd, |kvm, vcpu, mm| td_guest::tdg_mem_page_accept(kvm, vcpu, mm, rcx))
    }

    /// The guest's `TDG.VP.VMCALL` with `args` (see [`gmem_arch::tdx::tdcall::tdg_vp_vmcall`]):
    /// R10 and R11 as the guest finds them, or the `KVM_EXIT_HYPERCALL` to complete with
    /// [`SimHost::tdx_complete_hypercall`].
    pub fn tdx_vmcall(&self, vcpu_fd: i32, args: TdvmcallArgs) -> std::result::Result<TdvmcallResult, RunError> {
        let _span = tracing::debug_span!("tdg_vp_vmcall", vcpu_fd, args.r11).entered();
        self.vcpu_step(vcpu_fd, |kvm, vcpu, _| td_guest::tdg_vp_vmcall(kvm, vcpu, args))
    }

    /// The guest's `TDG.VP.VMCALL<MapGPA>(gpa, size)`: KVM's answer, or the first 2 MiB chunk's
    /// `KVM_EXIT_HYPERCALL`.
    pub fn tdx_map_gpa(&self, vcpu_fd: i32, gpa: u64, size: u64) -> std::result::Result<TdvmcallResult, RunError> {
        let _span = tracing::debug_span!("tdg_vp_vmcall_map_gpa", vcpu_fd, gpa, size).entered();
        self.vcpu_step(vcpu_fd, |kvm, vcpu, _| td_guest::tdg_vp_vmcall_map_gpa(kvm, vcpu, gpa, size))
    }

    /// `KVM_RUN` again after user space handled a TDVMCALL's `KVM_EXIT_HYPERCALL`, with
    /// `hypercall.ret`: R10/R11 for the guest, or the next chunk's exit. EINVAL if nothing was
    /// pending.
    pub fn tdx_complete_hypercall(&self, vcpu_fd: i32, ret: u64) -> std::result::Result<TdvmcallResult, RunError> {
        let _span = tracing::debug_span!("complete_userspace_io", vcpu_fd, ret).entered();
        self.vcpu_step(vcpu_fd, |kvm, vcpu, _| {
            td_guest::complete_userspace_io(kvm, vcpu, ret).unwrap_or(Err(RunError::Errno(Errno::EINVAL)))
        })
    }

    /// A Linux TD guest's `tdx_accept_memory(start, end)` on the vCPU behind `vcpu_fd`.
    pub fn tdx_accept_memory(&self, vcpu_fd: i32, start: u64, end: u64) -> std::result::Result<bool, RunError> {
        let _span = tracing::debug_span!("tdx_accept_memory", vcpu_fd, start, end).entered();
        self.vcpu_step(vcpu_fd, |kvm, vcpu, mm| td_guest::tdx_accept_memory(kvm, vcpu, mm, start, end))
    }

    /// A Linux TD guest's `tdx_enc_status_changed` of `[start, end)` (MapGPA, then ACCEPT when
    /// converting to private) on the vCPU behind `vcpu_fd`, `handle` answering each
    /// `KVM_EXIT_HYPERCALL` as the VMM (`Ok(hypercall.ret)`).
    pub fn tdx_enc_status_changed(
        &self,
        vcpu_fd: i32,
        start: u64,
        end: u64,
        enc: bool,
        handle: impl FnMut(RunError) -> std::result::Result<u64, RunError>,
    ) -> std::result::Result<bool, RunError> {
        let _span = tracing::debug_span!("tdx_enc_status_changed", vcpu_fd, start, end, enc).entered();
        self.vcpu_step(vcpu_fd, |kvm, vcpu, mm| {
            td_guest::tdx_enc_status_changed(kvm, vcpu, mm, start, end, enc, handle)
        })
    }

    /// A Linux TD guest's `tdx_map_gpa(start, end, enc)` on the vCPU behind `vcpu_fd`: MapGPA
    /// of the private range `[start, end)` (to shared unless `enc`), asking again from R11 on
    /// `TDVMCALL_STATUS_RETRY`; `handle` answers each `KVM_EXIT_HYPERCALL` as the VMM. True on
    /// success.
    pub fn tdx_guest_map_gpa(
        &self,
        vcpu_fd: i32,
        start: u64,
        end: u64,
        enc: bool,
        handle: impl FnMut(RunError) -> std::result::Result<u64, RunError>,
    ) -> std::result::Result<bool, RunError> {
        let _span = tracing::debug_span!("tdx_map_gpa", vcpu_fd, start, end, enc).entered();
        self.vcpu_step(vcpu_fd, |kvm, vcpu, _| td_guest::tdx_map_gpa(kvm, vcpu, start, end, enc, handle))
    }

    /// An event (an interrupt) for the vCPU behind `vcpu_fd`, delivered at its next entry
    /// ([`KvmVcpu::queue_event`]).
    pub fn queue_event(&self, vcpu_fd: i32) -> Result<()> {
        let (_, vcpu) = self.vcpu(vcpu_fd)?;
        vcpu.queue_event();
        Ok(())
    }

    /// The host's KVM TDX state and TDX module (an Intel host: [`SimHost::new_intel`]).
    pub fn tdx_host(&self) -> Option<&Arc<gmem_arch::tdx::kvm::TdxHost>> {
        gmem_arch::X86Host::of(&self.system).and_then(|host| host.tdx())
    }

    /// The simulated host's SEV-SNP platform (`None` on a system without the x86 vendor module).
    pub fn snp_host(&self) -> Option<&Arc<gmem_arch::sev::host::SnpHost>> {
        gmem_arch::X86Host::of(&self.system).and_then(|host| host.snp())
    }

    /// The guest_memfd behind a descriptor (EBADF if not open, EINVAL if not a guest_memfd).
    pub fn guest_memfd(&self, fd: i32) -> Result<FileRef> {
        let file = self.process.fget(fd)?;
        if gmem_of_file(&file).is_some() {
            Ok(file)
        } else {
            Err(Errno::EINVAL)
        }
    }

    /// Memory failure on the folio at byte `offset` of a guest_memfd.
    pub fn inject_memory_failure(&self, fd: i32, offset: u64) -> Result<MfResult> {
        let result = self.guest_memfd(fd).and_then(|file| gmem_memory_failure(&file, PgOff(offset >> PAGE_SHIFT)));
        self.process.syscall_exit(result)
    }

    /// `fallocate(2)`.
    pub fn fallocate(&self, fd: i32, mode: i32, offset: i64, len: i64) -> Result<()> {
        self.process.fallocate(fd, mode, offset, len)
    }

    /// `fstat(2)`.
    pub fn fstat(&self, fd: i32) -> Result<Stat> {
        self.process.fstat(fd)
    }

    /// `close(2)`.
    pub fn close(&self, fd: i32) -> Result<()> {
        self.process.close(fd)
    }

    /// `mmap(2)` of a descriptor.
    pub fn mmap(&self, fd: i32, len: u64, offset: i64, prot: u64, flags: u64) -> Result<u64> {
        self.process.mmap(len, prot, flags, fd, offset)
    }

    /// A host load through a mapping.
    pub fn load(&self, addr: u64, len: u64) -> std::result::Result<Vec<u8>, AccessSignal> {
        self.process.load(addr, len)
    }

    /// A host store through a mapping.
    pub fn store(&self, addr: u64, bytes: &[u8]) -> std::result::Result<(), AccessSignal> {
        self.process.store(addr, bytes)
    }
}

impl Drop for SimHost {
    fn drop(&mut self) {
        self.process.exit();
    }
}
