//! [`Kvm`], [`VmFd`] and [`VcpuFd`]: the kvm-ioctls-shaped handles over a [`SimHost`].

use crate::run::{
    Guest, GuestOp, GuestOutcome, GuestProgram, KvmRun, RunBounds, VcpuExit, VcpuSignal, DEFAULT_RUN_OP_LIMIT,
};
use crate::{Result, SevError, SimHost, TdxError};
use gmem_arch::tdx::kvm::{kvm_tdx_capabilities, kvm_tdx_cmd, kvm_tdx_init_mem_region, kvm_tdx_init_vm};
use gmem_kvm::KernelProfile;
use gmem_sync::Arc;
use kvm_bindings::{
    kvm_cpuid_entry2, kvm_create_guest_memfd, kvm_memory_attributes, kvm_sev_cmd, kvm_sev_init,
    kvm_sev_snp_launch_finish, kvm_sev_snp_launch_start, kvm_sev_snp_launch_update, kvm_userspace_memory_region2,
};
use std::os::raw::c_ulong;
use std::os::unix::io::{AsRawFd, RawFd};

/// `/dev/kvm`, opened by a process on a simulated kernel (mirrors `kvm_ioctls::Kvm`). Unlike
/// kvm-ioctls' it holds no descriptor (the simulated process's table has only VM files and
/// guest_memfds), so it does not implement `AsRawFd`.
#[derive(Debug, Clone)]
pub struct Kvm {
    host: Arc<SimHost>,
}

impl Kvm {
    /// Boots a simulated machine with the default profile (`v6.18`) and opens `/dev/kvm` on it.
    pub fn new() -> Result<Kvm> {
        Ok(Kvm::with_profile(KernelProfile::default()))
    }

    /// Boots a simulated machine with `profile`.
    pub fn with_profile(profile: KernelProfile) -> Kvm {
        Kvm { host: Arc::new(SimHost::new(profile)) }
    }

    /// Boots a simulated Intel machine with `profile` ([`SimHost::new_intel`]: `kvm_intel` with
    /// the TDX module; TDX VMs exist when the profile lists them, as `v6.18` does).
    pub fn new_intel(profile: KernelProfile) -> Kvm {
        Kvm { host: Arc::new(SimHost::new_intel(profile)) }
    }

    /// The process the handles live in (for the file system calls: fallocate, mmap, ...).
    pub fn host(&self) -> &Arc<SimHost> {
        &self.host
    }

    /// `KVM_CHECK_EXTENSION` with a raw capability number.
    pub fn check_extension_raw(&self, c: c_ulong) -> i32 {
        self.host.check_extension(c) as i32
    }

    /// `KVM_CREATE_VM` with the default type.
    pub fn create_vm(&self) -> Result<VmFd> {
        self.create_vm_with_type(0)
    }

    /// `KVM_CREATE_VM` with a machine type (`KVM_X86_SW_PROTECTED_VM`, ...).
    pub fn create_vm_with_type(&self, vm_type: u64) -> Result<VmFd> {
        let fd = self.host.create_vm(vm_type)?;
        Ok(VmFd { host: self.host.clone(), fd })
    }
}

/// A VM file descriptor (mirrors `kvm_ioctls::VmFd`). Dropping it closes the descriptor.
#[derive(Debug)]
pub struct VmFd {
    host: Arc<SimHost>,
    fd: RawFd,
}

/// The descriptor number, through the trait as in kvm-ioctls (there is no inherent `as_raw_fd`,
/// so VMM code that imports `AsRawFd` for kvm-ioctls compiles unchanged).
impl AsRawFd for VmFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd
    }
}

impl VmFd {
    /// `KVM_CHECK_EXTENSION` on the VM.
    pub fn check_extension_raw(&self, c: c_ulong) -> i32 {
        self.host.vm_check_extension(self.fd, c).unwrap_or(0) as i32
    }

    /// `KVM_CREATE_GUEST_MEMFD`: a new guest_memfd descriptor.
    pub fn create_guest_memfd(&self, gmem: kvm_create_guest_memfd) -> Result<RawFd> {
        self.host.create_guest_memfd(self.fd, &gmem)
    }

    /// `KVM_SET_USER_MEMORY_REGION2`.
    ///
    /// # Safety
    ///
    /// The same contract as kvm-ioctls (the memory at `userspace_addr` must stay valid for the
    /// slot's lifetime). The simulator checks everything the kernel checks and cannot be made
    /// unsound by a bad region, but keeping the signature lets VMM code switch between the two
    /// without edits.
    pub unsafe fn set_user_memory_region2(&self, user_memory_region: kvm_userspace_memory_region2) -> Result<()> {
        self.host.set_user_memory_region2(self.fd, &user_memory_region)
    }

    /// `KVM_SET_MEMORY_ATTRIBUTES`.
    pub fn set_memory_attributes(&self, attr: kvm_memory_attributes) -> Result<()> {
        self.host.set_memory_attributes(self.fd, &attr)
    }

    /// `KVM_ENABLE_CAP` on the VM.
    pub fn enable_cap(&self, cap: &kvm_bindings::kvm_enable_cap) -> Result<()> {
        self.host.enable_cap(self.fd, cap)
    }

    /// `KVM_CREATE_VCPU`: a new vCPU with vCPU id `id`.
    pub fn create_vcpu(&self, id: u64) -> Result<VcpuFd> {
        let fd = self.host.create_vcpu(self.fd, id)?;
        Ok(VcpuFd {
            host: self.host.clone(),
            fd,
            kvm_run: KvmRun::default(),
            guest: None,
            immediate_exit: 0,
            signal: VcpuSignal::default(),
            run_op_limit: DEFAULT_RUN_OP_LIMIT,
        })
    }

    /// `KVM_MEMORY_ENCRYPT_OP` with a `struct kvm_sev_cmd` (kvm-ioctls' `encrypt_op_sev`): the
    /// command comes back as the kernel left it, with the firmware status in `op.error`.
    ///
    /// The kernel reads the command's parameters from user memory. Here that is the memory of the
    /// simulated process: `op.data`, and every address inside the parameters (such as
    /// `kvm_sev_snp_launch_update::uaddr` or `kvm_sev_snp_launch_finish::id_block_uaddr`), is an
    /// address in the simulated process, as a memslot's `userspace_addr` is, not a pointer into
    /// the caller's own memory. Put the parameters there first: [`SimHost::encrypt_op_staged`]
    /// copies a parameter block into a page of the process, points `data` at it, issues the
    /// command and copies the block back; the typed helpers [`VmFd::sev_init2`],
    /// [`VmFd::snp_launch_start`], [`VmFd::snp_launch_update`] and [`VmFd::snp_launch_finish`]
    /// (and the same methods of [`SimHost`]) do that for one kvm-bindings struct each. Source
    /// images for LAUNCH_UPDATE live in process memory too (for example a mapping from
    /// `SimHost::process().mmap_anonymous`, filled with `SimHost::store`).
    ///
    /// `op.sev_fd` is a descriptor of the simulated process (`SimHost::open_dev_sev`).
    pub fn encrypt_op_sev(&self, op: &mut kvm_sev_cmd) -> Result<()> {
        self.host.encrypt_op_staged(self.fd, op, &mut [])
    }

    /// `KVM_SEV_INIT2` with `params` staged in the simulated process (a convenience of the
    /// simulator; kvm-ioctls has only [`VmFd::encrypt_op_sev`]).
    pub fn sev_init2(&self, params: &kvm_sev_init) -> std::result::Result<(), SevError> {
        self.host.sev_init2(self.fd, params)
    }

    /// `KVM_SEV_SNP_LAUNCH_START` through the `/dev/sev` descriptor `sev_fd` (a simulator
    /// convenience, see [`VmFd::sev_init2`]).
    pub fn snp_launch_start(
        &self,
        sev_fd: RawFd,
        params: &kvm_sev_snp_launch_start,
    ) -> std::result::Result<(), SevError> {
        self.host.snp_launch_start(self.fd, sev_fd, params)
    }

    /// `KVM_SEV_SNP_LAUNCH_UPDATE` through `sev_fd`: `params.uaddr` is an address in the
    /// simulated process; on success `params` comes back advanced past the pages done (a partial
    /// success leaves `len` non-zero, callers loop). A simulator convenience, see
    /// [`VmFd::sev_init2`].
    pub fn snp_launch_update(
        &self,
        sev_fd: RawFd,
        params: &mut kvm_sev_snp_launch_update,
    ) -> std::result::Result<(), SevError> {
        self.host.snp_launch_update(self.fd, sev_fd, params)
    }

    /// `KVM_SEV_SNP_LAUNCH_FINISH` through `sev_fd` (the ID block addresses, if enabled, are in
    /// the simulated process). A simulator convenience, see [`VmFd::sev_init2`].
    pub fn snp_launch_finish(
        &self,
        sev_fd: RawFd,
        params: &kvm_sev_snp_launch_finish,
    ) -> std::result::Result<(), SevError> {
        self.host.snp_launch_finish(self.fd, sev_fd, params)
    }

    /// `KVM_MEMORY_ENCRYPT_OP` with a `struct kvm_tdx_cmd`, the VM-scope TDX commands
    /// (`KVM_TDX_CAPABILITIES`, `KVM_TDX_INIT_VM`, `KVM_TDX_FINALIZE_VM`): the command comes back
    /// as the kernel left it, with the SEAMCALL status in `cmd.hw_error`. The shape of
    /// [`VmFd::encrypt_op_sev`] (kvm-ioctls has only the untyped `encrypt_op` for TDX), and the
    /// same rule: `cmd.data` is an address in the simulated process (put the parameters there
    /// first, or use the typed helpers [`VmFd::tdx_capabilities`], [`VmFd::tdx_init_vm`] and
    /// [`VmFd::tdx_finalize_vm`]).
    pub fn encrypt_op_tdx(&self, cmd: &mut kvm_tdx_cmd) -> Result<()> {
        self.host.tdx_op_staged(self.fd, false, cmd, &mut [])
    }

    /// `KVM_TDX_CAPABILITIES` with room for `nent` CPUID entries (E2BIG below the module's number
    /// of configurable leaves): the capabilities and the configurable CPUID leaves. A simulator
    /// convenience, see [`VmFd::encrypt_op_tdx`].
    pub fn tdx_capabilities(&self, nent: u32) -> Result<(kvm_tdx_capabilities, Vec<kvm_cpuid_entry2>)> {
        self.host.tdx_capabilities(self.fd, nent)
    }

    /// `KVM_TDX_INIT_VM` with `init_vm` and the TD's CPUID configuration `cpuid` (its
    /// `cpuid.nent` is set to `cpuid.len()`). On failure, `hw_error` holds the SEAMCALL status
    /// KVM reported (TDH.MNG.INIT's, for operands the module refused). A simulator convenience,
    /// see [`VmFd::encrypt_op_tdx`].
    pub fn tdx_init_vm(
        &self,
        init_vm: &kvm_tdx_init_vm,
        cpuid: &[kvm_cpuid_entry2],
    ) -> std::result::Result<(), TdxError> {
        self.host.tdx_init_vm(self.fd, init_vm, cpuid)
    }

    /// `KVM_TDX_FINALIZE_VM` (TDH.MR.FINALIZE's status in `hw_error` on failure). A simulator
    /// convenience, see [`VmFd::encrypt_op_tdx`].
    pub fn tdx_finalize_vm(&self) -> std::result::Result<(), TdxError> {
        self.host.tdx_finalize_vm(self.fd)
    }
}

impl Drop for VmFd {
    fn drop(&mut self) {
        let _ = self.host.close(self.fd);
    }
}

/// A vCPU file descriptor (mirrors `kvm_ioctls::VcpuFd` as far as the simulator has vCPU
/// ioctls: `KVM_RUN` over a guest workload, the vCPU-scope `KVM_MEMORY_ENCRYPT_OP`). Dropping it
/// closes the descriptor; the vCPU file holds a reference to its VM, as in the kernel, so it may
/// outlive the [`VmFd`].
#[derive(Debug)]
pub struct VcpuFd {
    host: Arc<SimHost>,
    fd: RawFd,
    /// The fields of the vCPU's `struct kvm_run` an exit lends to user space.
    kvm_run: KvmRun,
    /// The guest workload ([`VcpuFd::set_guest`]).
    guest: Option<Guest>,
    /// `kvm_run.immediate_exit` ([`VcpuFd::set_kvm_immediate_exit`]).
    immediate_exit: u8,
    /// The signal other threads send to this vCPU's thread ([`VcpuFd::signal`]).
    signal: VcpuSignal,
    /// Guest operations one `run()` executes without an exit ([`VcpuFd::set_run_op_limit`]).
    run_op_limit: u64,
}

/// The descriptor number, through the trait as in kvm-ioctls.
impl AsRawFd for VcpuFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd
    }
}

impl VcpuFd {
    /// `KVM_RUN` (kvm-ioctls' `run`): completes what the previous exit left to user space (the
    /// guest's MMIO load gets the data written into [`VcpuExit::MmioRead`]'s slice, the guest's
    /// hypercall gets [`HypercallExit::ret`](crate::HypercallExit::ret)), then runs the guest
    /// workload ([`VcpuFd::set_guest`]) until an operation exits to user space, and returns that
    /// exit. [`VcpuExit::Hlt`] once the workload has ended (or when none was set). As in
    /// kvm-ioctls, `KVM_EXIT_MEMORY_FAULT` is `Ok(VcpuExit::MemoryFault { .. })` although the
    /// ioctl failed with EFAULT or EHWPOISON; the faulting access runs again at the next call.
    /// Any other failure is the errno (EINVAL for an operation the workload cannot express: an
    /// access of 0 or more than 8 bytes or across a page, a conversion whose size is not a
    /// non-zero multiple of 4 KiB; EIO once the VM is dead; EINTR after a SIGBUS), and the
    /// operation that failed is executed again at the next call, as a guest instruction that did
    /// not complete is (unless what failed was the completion of its exit: then the guest's
    /// request is abandoned and the workload goes on).
    #[doc(alias("KVM_RUN", "complete_emulated_mmio", "kvm_arch_vcpu_ioctl_run"))]
    pub fn run(&mut self) -> Result<VcpuExit<'_>> {
        let _span = tracing::debug_span!("kvm_arch_vcpu_ioctl_run", vcpu_fd = self.fd).entered();
        let Some(guest) = self.guest.as_mut() else {
            if self.immediate_exit != 0 || self.signal.take() {
                return Err(crate::Errno::EINTR);
            }
            return Ok(VcpuExit::Hlt);
        };
        let bounds =
            RunBounds { immediate_exit: self.immediate_exit != 0, signal: &self.signal, op_limit: self.run_op_limit };
        let exit = guest.run(&self.host, self.fd, &mut self.kvm_run, bounds)?;
        Ok(exit.view(&mut self.kvm_run))
    }

    /// kvm-ioctls' `set_kvm_immediate_exit`: `kvm_run.immediate_exit`. While it is non-zero,
    /// [`VcpuFd::run`] completes what the previous exit left to user space (the MMIO data, the
    /// hypercall's return) and then returns EINTR without entering the guest, as
    /// `kvm_arch_vcpu_ioctl_run` does: how a VMM's signal handler makes sure a vCPU thread
    /// stops before its next entry.
    pub fn set_kvm_immediate_exit(&mut self, val: u8) {
        self.immediate_exit = val;
    }

    /// The vCPU thread's signal, for another thread to take the vCPU out of the guest: once
    /// raised, [`VcpuFd::run`] returns EINTR at its next guest entry (between two guest
    /// operations), the pending exit completed first. A VMM's pause or shutdown path raises it
    /// for a workload that does not exit by itself.
    pub fn signal(&self) -> VcpuSignal {
        self.signal.clone()
    }

    /// How many guest operations one [`VcpuFd::run`] executes without an exit to user space
    /// before it returns EINTR (default [`DEFAULT_RUN_OP_LIMIT`]):
    /// a simulator bound, standing for the signal a VMM's watchdog sends to a vCPU whose guest
    /// never exits, so that such a workload cannot keep the calling thread forever. The next
    /// `run()` goes on with the workload. A limit of 0 is taken as 1.
    pub fn set_run_op_limit(&mut self, limit: u64) {
        self.run_op_limit = limit.max(1);
    }

    /// Gives the vCPU the guest workload it runs from the next [`VcpuFd::run`] on (a simulator
    /// call: a real vCPU runs the guest code in its memory). A [`GuestSequence`] or a closure
    /// `FnMut(Option<&GuestOutcome>) -> Option<GuestOp>` that sees each operation's outcome.
    /// EBUSY while an exit of the current workload waits for its completion (the next `run()`):
    /// the kernel holds that guest request open. A workload whose operations never exit keeps
    /// `run()` in the guest, as a guest that never exits keeps `KVM_RUN` there, until the
    /// vCPU's [`VcpuFd::signal`] is raised or [`VcpuFd::set_run_op_limit`]'s bound is reached
    /// (EINTR both, and the workload goes on at the next `run()`); it ends with `None`.
    ///
    /// [`GuestSequence`]: crate::GuestSequence
    pub fn set_guest(&mut self, program: impl GuestProgram + 'static) -> Result<()> {
        if self.guest.as_ref().is_some_and(Guest::waits_for_completion) {
            return Err(crate::Errno::EBUSY);
        }
        // Outcomes of the old workload not taken yet stay for take_guest_outcomes.
        let mut guest = Guest::new(program);
        if let Some(mut old) = self.guest.take() {
            guest.keep_outcomes(old.take_outcomes());
        }
        self.guest = Some(guest);
        Ok(())
    }

    /// The guest operations completed since the last call, in order, each with how it ended
    /// (the data a load read, the status a conversion request got). They are kept until taken,
    /// also across [`VcpuFd::set_guest`].
    pub fn take_guest_outcomes(&mut self) -> Vec<(GuestOp, GuestOutcome)> {
        self.guest.as_mut().map(Guest::take_outcomes).unwrap_or_default()
    }

    /// `KVM_MEMORY_ENCRYPT_OP` on the vCPU with a `struct kvm_tdx_cmd`, the vCPU-scope TDX
    /// commands (`KVM_TDX_INIT_VCPU`, `KVM_TDX_INIT_MEM_REGION`): the command comes back as the
    /// kernel left it. As for [`VmFd::encrypt_op_tdx`], `cmd.data` is an immediate or an address
    /// in the simulated process; the typed helpers [`VcpuFd::tdx_init_vcpu`] and
    /// [`VcpuFd::tdx_init_mem_region`] stage the parameters themselves.
    pub fn encrypt_op_tdx(&self, cmd: &mut kvm_tdx_cmd) -> Result<()> {
        self.host.tdx_op_staged(self.fd, true, cmd, &mut [])
    }

    /// `KVM_TDX_INIT_VCPU`, with `rcx` handed to the guest's firmware. A simulator convenience,
    /// see [`VcpuFd::encrypt_op_tdx`].
    pub fn tdx_init_vcpu(&self, rcx: u64) -> std::result::Result<(), TdxError> {
        self.host.tdx_init_vcpu(self.fd, rcx)
    }

    /// `KVM_TDX_INIT_MEM_REGION` with `flags` (`KVM_TDX_MEASURE_MEMORY_REGION`):
    /// `region.source_addr` is an address in the simulated process. `region` comes back as the
    /// kernel copied it back, advanced past the pages done, also when the call fails part way (a
    /// VMM resumes from there). A simulator convenience, see [`VcpuFd::encrypt_op_tdx`].
    pub fn tdx_init_mem_region(
        &self,
        region: &mut kvm_tdx_init_mem_region,
        flags: u32,
    ) -> std::result::Result<(), TdxError> {
        self.host.tdx_init_mem_region(self.fd, region, flags)
    }
}

impl Drop for VcpuFd {
    fn drop(&mut self) {
        let _ = self.host.close(self.fd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Errno;
    use gmem_arch::sev::kvm::KVM_SEV_INIT2;

    /// The policy of QEMU's default SNP guest: the must-be-one bit and SMT allowed.
    const POLICY: u64 = (1 << 17) | (1 << 16);

    #[test]
    fn encrypt_op_sev_reads_its_parameters_from_the_simulated_process() {
        let kvm = Kvm::new().unwrap();
        let vm = kvm.create_vm_with_type(kvm_bindings::KVM_X86_SNP_VM as u64).unwrap();
        let host = kvm.host();
        // The parameters live in the process: a kvm_sev_init with a bad flag, then a good one.
        let data = host.process().mmap_anonymous(4096).unwrap();
        let bad = kvm_sev_init { flags: 1, ..Default::default() };
        host.store(data, &gmem_arch::sev::kvm::uapi_bytes(&bad)).unwrap();
        let mut cmd = kvm_sev_cmd { id: KVM_SEV_INIT2, data, ..Default::default() };
        assert_eq!(vm.encrypt_op_sev(&mut cmd), Err(Errno::EINVAL));
        // `data` is an address of the simulated process: one nothing is mapped at is EFAULT.
        let mut unmapped = kvm_sev_cmd { id: KVM_SEV_INIT2, data: 0x1000, ..Default::default() };
        assert_eq!(vm.encrypt_op_sev(&mut unmapped), Err(Errno::EFAULT));
        host.store(data, &gmem_arch::sev::kvm::uapi_bytes(&kvm_sev_init::default())).unwrap();
        vm.encrypt_op_sev(&mut cmd).unwrap();
        assert_eq!(cmd.error, 0);
        // Once the VM is an SNP guest, only SNP commands are allowed: INIT2 again is EPERM.
        assert_eq!(vm.sev_init2(&kvm_sev_init::default()), Err(Errno::EPERM.into()));
    }

    #[test]
    fn the_typed_helpers_launch_an_snp_guest() {
        let kvm = Kvm::new().unwrap();
        let vm = kvm.create_vm_with_type(kvm_bindings::KVM_X86_SNP_VM as u64).unwrap();
        let host = kvm.host();
        vm.sev_init2(&kvm_sev_init::default()).unwrap();
        let gmem = vm.create_guest_memfd(kvm_create_guest_memfd { size: 1 << 20, ..Default::default() }).unwrap();
        let region = kvm_userspace_memory_region2 {
            flags: kvm_bindings::KVM_MEM_GUEST_MEMFD,
            memory_size: 1 << 20,
            userspace_addr: host.process().mmap_anonymous(1 << 20).unwrap(),
            guest_memfd: gmem as u32,
            ..Default::default()
        };
        // SAFETY: the simulator checks the region like the kernel does; nothing here is unsound.
        unsafe { vm.set_user_memory_region2(region) }.unwrap();
        let private = kvm_memory_attributes {
            size: 1 << 20,
            attributes: kvm_bindings::KVM_MEMORY_ATTRIBUTE_PRIVATE as u64,
            ..Default::default()
        };
        vm.set_memory_attributes(private).unwrap();
        let sev = host.open_dev_sev().unwrap();
        let start = kvm_sev_snp_launch_start { policy: POLICY, ..Default::default() };
        vm.snp_launch_start(sev, &start).unwrap();
        let image = host.process().mmap_anonymous(8192).unwrap();
        host.store(image, b"kernel").unwrap();
        let mut update = kvm_sev_snp_launch_update {
            gfn_start: 0,
            uaddr: image,
            len: 8192,
            type_: kvm_bindings::KVM_SEV_SNP_PAGE_TYPE_NORMAL as u8,
            ..Default::default()
        };
        vm.snp_launch_update(sev, &mut update).unwrap();
        assert_eq!((update.gfn_start, update.len, update.uaddr), (2, 0, image + 8192));
        // The same pages again: already launched, EIO without a firmware status.
        let mut again = kvm_sev_snp_launch_update { uaddr: image, len: 4096, type_: 1, ..Default::default() };
        assert_eq!(vm.snp_launch_update(sev, &mut again), Err(Errno::EIO.into()));
        vm.snp_launch_finish(sev, &kvm_sev_snp_launch_finish::default()).unwrap();
        assert!(host.snp_launch_digest(vm.as_raw_fd()).unwrap().is_some());
    }

    /// The CPUID a VMM passes to INIT_VM: leaf 0x80000008 with GPAW 48.
    fn gpaw48() -> [kvm_cpuid_entry2; 1] {
        [kvm_cpuid_entry2 { function: 0x8000_0008, eax: 48 << 16, ..Default::default() }]
    }

    #[test]
    fn the_typed_helpers_launch_a_td() {
        use crate::consts::{KVM_TDX_MEASURE_MEMORY_REGION, TDX_TD_ATTR_SEPT_VE_DISABLE};
        use gmem_arch::tdx::kvm::{TdState, TdxVm};
        let kvm = Kvm::new_intel(KernelProfile::v6_18());
        let vm = kvm.create_vm_with_type(kvm_bindings::KVM_X86_TDX_VM as u64).unwrap();
        let host = kvm.host();
        let (caps, entries) = vm.tdx_capabilities(16).unwrap();
        assert_eq!((caps.supported_attrs, caps.cpuid.nent, entries.len()), (TDX_TD_ATTR_SEPT_VE_DISABLE, 5, 5));
        assert_eq!(vm.tdx_capabilities(4).unwrap_err(), Errno::E2BIG);
        // No vCPU before INIT_VM (tdx_vcpu_create).
        assert_eq!(vm.create_vcpu(0).unwrap_err(), Errno::EIO);
        let init_vm = kvm_tdx_init_vm { attributes: TDX_TD_ATTR_SEPT_VE_DISABLE, ..Default::default() };
        assert_eq!(vm.tdx_init_vm(&init_vm, &[]), Err(Errno::EINVAL.into()), "no GPAW");
        vm.tdx_init_vm(&init_vm, &gpaw48()).unwrap();
        let gmem = vm.create_guest_memfd(kvm_create_guest_memfd { size: 1 << 20, ..Default::default() }).unwrap();
        let region = kvm_userspace_memory_region2 {
            flags: kvm_bindings::KVM_MEM_GUEST_MEMFD,
            memory_size: 1 << 20,
            userspace_addr: host.process().mmap_anonymous(1 << 20).unwrap(),
            guest_memfd: gmem as u32,
            ..Default::default()
        };
        // SAFETY: the simulator checks the region like the kernel does; nothing here is unsound.
        unsafe { vm.set_user_memory_region2(region) }.unwrap();
        let private = kvm_memory_attributes {
            size: 1 << 20,
            attributes: kvm_bindings::KVM_MEMORY_ATTRIBUTE_PRIVATE as u64,
            ..Default::default()
        };
        vm.set_memory_attributes(private).unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        vcpu.tdx_init_vcpu(0).unwrap();
        let image = host.process().mmap_anonymous(8192).unwrap();
        host.store(image, b"kernel").unwrap();
        // Two pages of image, then one past the memslot: the region comes back advanced past the
        // pages done, with the error of the one that failed.
        let mut region = kvm_tdx_init_mem_region { source_addr: image, gpa: (1 << 20) - 8192, nr_pages: 3 };
        let error = vcpu.tdx_init_mem_region(&mut region, KVM_TDX_MEASURE_MEMORY_REGION).unwrap_err();
        assert_eq!(error, Errno::EINVAL.into(), "the third page is outside the memslot");
        assert_eq!((region.source_addr, region.gpa, region.nr_pages), (image + 8192, 1 << 20, 1));
        vm.tdx_finalize_vm().unwrap();
        let td = kvm.host().vm(vm.as_raw_fd()).unwrap();
        assert_eq!(TdxVm::of(&td).unwrap().td_state(), TdState::Runnable);
        // The raw command: FINALIZE again is EINVAL, INIT_VCPU once the TD runs too.
        let mut cmd = kvm_tdx_cmd { id: crate::consts::KVM_TDX_FINALIZE_VM, ..Default::default() };
        assert_eq!(vm.encrypt_op_tdx(&mut cmd), Err(Errno::EINVAL));
        let mut cmd = kvm_tdx_cmd { id: crate::consts::KVM_TDX_INIT_VCPU, ..Default::default() };
        assert_eq!(vcpu.encrypt_op_tdx(&mut cmd), Err(Errno::EINVAL));
        // The vCPU file holds the VM: closing the VM first leaves the vCPU usable.
        let vcpu_fd = vcpu.as_raw_fd();
        drop(vm);
        assert!(host.vcpu(vcpu_fd).is_ok());
        drop((vcpu, td));
        assert_eq!(host.tdx_host().unwrap().nr_configured_hkid(), 1, "the guest_memfd still holds the TD");
        host.close(gmem).unwrap();
        assert_eq!(host.tdx_host().unwrap().nr_configured_hkid(), 0);
    }

    #[test]
    fn without_tdx_the_tdx_commands_are_enotty_on_the_vm_and_the_vcpu() {
        use crate::consts::KVM_TDX_CAPABILITIES;
        for kvm in [Kvm::new().unwrap(), Kvm::new_intel(KernelProfile::v6_18_pvm())] {
            assert_eq!(kvm.create_vm_with_type(kvm_bindings::KVM_X86_TDX_VM as u64).unwrap_err(), Errno::EINVAL);
            let vm = kvm.create_vm().unwrap();
            let mut cmd = kvm_tdx_cmd { id: KVM_TDX_CAPABILITIES, ..Default::default() };
            assert_eq!(vm.encrypt_op_tdx(&mut cmd), Err(Errno::ENOTTY));
            let vcpu = vm.create_vcpu(0).unwrap();
            assert_eq!(vm.create_vcpu(0).unwrap_err(), Errno::EEXIST);
            assert_eq!(vcpu.tdx_init_vcpu(0), Err(Errno::ENOTTY.into()));
            let mut region = kvm_tdx_init_mem_region { nr_pages: 1, ..Default::default() };
            assert_eq!(vcpu.tdx_init_mem_region(&mut region, 0), Err(Errno::ENOTTY.into()));
        }
    }

    #[test]
    fn without_sev_dev_sev_is_missing_and_the_encrypt_op_is_enotty() {
        let kvm = Kvm::with_profile(KernelProfile::v6_18_pvm());
        let host = kvm.host();
        assert_eq!(host.open_dev_sev(), Err(Errno::ENOENT));
        let vm = kvm.create_vm().unwrap();
        let mut cmd = kvm_sev_cmd { id: KVM_SEV_INIT2, ..Default::default() };
        assert_eq!(vm.encrypt_op_sev(&mut cmd), Err(Errno::ENOTTY));
        assert_eq!(vm.sev_init2(&kvm_sev_init::default()), Err(Errno::ENOTTY.into()));
        // A failed open uses no descriptor: the next one is still the lowest free.
        let gmem = vm.create_guest_memfd(kvm_create_guest_memfd { size: 4096, ..Default::default() });
        assert_eq!(gmem, Ok(vm.as_raw_fd() + 1));
        // With SEV the device opens.
        let sev_host = Kvm::new().unwrap();
        assert!(sev_host.host().open_dev_sev().is_ok());
    }
}
