//! The simulator backend: every verb runs on a fresh simulated kernel (one [`SimHost`] per
//! script file, dropped, and so fully released, at the end of the file).

use super::Host;
use crate::backend::{
    staging_len, BResult, Backend, Completion, Failure, GhcbAnswer, LaunchUpdated, MemoryRegion2, Signal, Stat,
    TdvmcallAnswer, TdxCaps, TdxRegionDone, TdxVmState, VcpuExit, Violation,
};
use gmem_arch::sev::firmware::{SevCmd, SevRet};
use gmem_arch::sev::ghcb::{GhcbResponse, PscEntry};
use gmem_arch::sev::measure::SnpPageType;
use gmem_arch::tdx::kvm::{
    kvm_tdx_cmd, kvm_tdx_init_mem_region, kvm_tdx_init_vm, TdState, TdxVm, KVM_TDX_CAPABILITIES, KVM_TDX_FINALIZE_VM,
    KVM_TDX_INIT_MEM_REGION, KVM_TDX_INIT_VCPU, KVM_TDX_INIT_VM,
};
use gmem_arch::tdx::status::{SeamcallLeaf, TdxStatus};
use gmem_kvm::guest_memfd::gmem_of_file;
use gmem_kvm::invariants;
use gmem_kvm::vcpu::{self, RunError, KVM_MEMORY_EXIT_FLAG_PRIVATE};
use gmem_kvm::{KernelProfile, VmType};
use gmem_mm::file::FileRef;
use gmem_mm::vma::AccessSignal;
use gmem_mm::Errno;
use gmem_sync::inject::FaultPoint;
use gmem_sync::Arc;
use gmem_uapi::{
    kvm_create_guest_memfd, kvm_memory_attributes, kvm_sev_init, kvm_sev_snp_launch_finish, kvm_sev_snp_launch_start,
    kvm_sev_snp_launch_update, SevError, SimHost,
};
use kvm_bindings::kvm_cpuid_entry2;
use std::collections::BTreeMap;

/// The largest `load` a script may ask for (its bytes are printed as hex).
const LOAD_LEN_MAX: u64 = 16 << 20;

/// The size of a page.
const PAGE: u64 = 4096;

/// The room kept free on either side of every mapping a script makes (`docs/script-format.md`,
/// "Address space"): the kvm backend reserves it above each mapping, so an access or madvise
/// that runs past a mapping's end meets a hole on both backends.
pub const GUARD_GAP: u64 = 4 << 20;

/// The simulator backend.
#[derive(Debug)]
pub struct SimBackend {
    host: SimHost,
    /// The descriptor of the most recent successful `open_dev_sev` (`populate` of an SNP VM
    /// uses it while it is still `/dev/sev`).
    dev_sev: Option<i32>,
}

impl SimBackend {
    /// A fresh simulated kernel booted with `profile`, on the default (AMD) host.
    pub fn new(profile: KernelProfile) -> SimBackend {
        SimBackend::on(Host::Amd, profile)
    }

    /// A fresh simulated kernel booted with `profile` on `host` (AMD with SEV-SNP, or Intel with
    /// TDX).
    pub fn on(host: Host, profile: KernelProfile) -> SimBackend {
        let host = match host {
            Host::Amd => SimHost::new(profile),
            Host::Intel => SimHost::new_intel(profile),
        };
        SimBackend { host, dev_sev: None }
    }

    /// The host (for tests that look behind the script).
    pub fn host(&self) -> &SimHost {
        &self.host
    }

    /// Keeps [`GUARD_GAP`] bytes below and above the new mapping `[addr, addr + len)` out of
    /// later placements: below, so the next mapping (placed top-down) ends a gap below this
    /// one; above, so nothing is placed in a hole just past its end.
    fn keep_guard_gaps(&self, addr: u64, len: u64) {
        let mm = &self.host.process().mm;
        let end = addr.saturating_add(len.saturating_add(PAGE - 1) & !(PAGE - 1));
        mm.retire(addr.saturating_sub(GUARD_GAP), addr);
        mm.retire(end, end.saturating_add(GUARD_GAP));
    }

    /// Every file the process can reach: its descriptors and its mappings.
    fn reachable_files(&self) -> Vec<(Option<i32>, FileRef)> {
        let process = self.host.process();
        let mut files: Vec<(Option<i32>, FileRef)> =
            process.files.open_fds().into_iter().filter_map(|fd| Some((Some(fd), process.files.fget(fd)?))).collect();
        for vma in process.mm.vmas() {
            if let Some(file) = &vma.file {
                files.push((None, file.clone()));
            }
        }
        files
    }

    fn vms(&self) -> Vec<(i32, Arc<gmem_kvm::Kvm>)> {
        let process = self.host.process();
        process.files.open_fds().into_iter().filter_map(|fd| Some((fd, self.host.vm(fd).ok()?))).collect()
    }

    /// Maps fresh anonymous memory of the process for a `len`-byte source and copies `bytes` to
    /// its start: `(address, size)`.
    fn stage(&self, bytes: &[u8], len: u64) -> BResult<(u64, u64)> {
        let size = staging_len(len, bytes.len());
        let addr = errno(self.host.process().mmap_anonymous(size))?;
        if let Err(failure) = signal(self.host.store(addr, bytes)) {
            self.unstage(addr, size);
            return Err(failure);
        }
        Ok((addr, size))
    }

    /// Removes a mapping made by [`SimBackend::stage`].
    fn unstage(&self, addr: u64, size: u64) {
        let _ = self.host.process().munmap(addr, size);
    }

    /// The `/dev/sev` descriptor for an SNP `populate`: the script's most recent one while it is
    /// still open on `/dev/sev`, else one opened for the call (`true`: close it afterwards).
    fn dev_sev_for_call(&self) -> BResult<(i32, bool)> {
        if let Some(fd) = self.dev_sev {
            let still_dev_sev = self.host.process().fget(fd).is_ok_and(|file| gmem_arch::sev::psp::is_dev_sev(&file));
            if still_dev_sev {
                return Ok((fd, false));
            }
        }
        errno(self.host.open_dev_sev()).map(|fd| (fd, true))
    }

    /// `populate` of an SNP VM: `KVM_SEV_SNP_LAUNCH_UPDATE` of `npages` pages from `gpa`, NORMAL
    /// pages from `bytes` (staged in the process) or ZERO pages without. Returns the pages done.
    fn snp_populate(&mut self, vm: i32, gpa: u64, npages: u64, bytes: Option<&[u8]>) -> BResult<u64> {
        let (sev_fd, opened) = self.dev_sev_for_call()?;
        let page_type = if bytes.is_some() { SnpPageType::Normal } else { SnpPageType::Zero };
        let params = kvm_sev_snp_launch_update {
            gfn_start: gpa >> 12,
            len: npages.wrapping_mul(PAGE),
            type_: page_type as u8,
            ..Default::default()
        };
        let result = self.snp_launch_update(vm, sev_fd, &params, bytes);
        if opened {
            let _ = self.host.close(sev_fd);
        }
        result.map(|updated| params.len.wrapping_sub(updated.len) / PAGE)
    }
}

impl SimBackend {
    /// A TDX `KVM_MEMORY_ENCRYPT_OP` with `id`, `flags` and `data` (used as given when `params` is
    /// empty, else pointed at `params` staged in the process) on descriptor `fd`: the vCPU ioctl
    /// if `fd` is a vCPU, else the VM ioctl (which answers ENOTTY or EBADF for anything else), as
    /// the kernel dispatches on the file. `params` comes back as the kernel left it.
    fn tdx_command(&self, fd: i32, id: u32, flags: u32, data: u64, params: &mut [u8]) -> Result<(), Failure> {
        let vcpu = self.host.vcpu(fd).is_ok();
        let mut cmd = kvm_tdx_cmd { id, flags, data, hw_error: 0 };
        let result = self.host.tdx_op_staged(fd, vcpu, &mut cmd, params);
        result.map_err(|errno| Failure::tdx(errno, cmd.hw_error))
    }
}

/// What the TD guest finds in R10 and R11, as a script result.
fn tdvmcall_answer(result: gmem_arch::tdx::run::TdvmcallResult) -> TdvmcallAnswer {
    TdvmcallAnswer { r10: result.r10, r11: result.r11 }
}

/// A failed `KVM_MEMORY_ENCRYPT_OP` as a script result.
fn sev<T>(result: Result<T, SevError>) -> BResult<T> {
    result.map_err(|error| Failure::Sev { errno: error.errno, fw_error: error.fw_error })
}

/// KVM's answer to a VMGEXIT as a script result.
fn ghcb_answer(response: GhcbResponse) -> GhcbAnswer {
    match response {
        GhcbResponse::ExitInfo2(status) => GhcbAnswer::Status(status),
        GhcbResponse::Msr(value) => GhcbAnswer::Msr(value),
        GhcbResponse::Ignored => GhcbAnswer::Ignored,
    }
}

fn errno<T>(result: Result<T, Errno>) -> BResult<T> {
    result.map_err(Failure::Errno)
}

/// A failed guest access as a script result.
fn run<T>(result: Result<T, RunError>) -> BResult<T> {
    result.map_err(|error| match error {
        RunError::Errno(errno) => Failure::Errno(errno),
        RunError::Sigbus => Failure::Signal(Signal::Sigbus),
        RunError::GuestException(exception) => Failure::GuestException {
            vector: exception.vector.to_string(),
            fields: vec![
                ("gpa".to_string(), format!("{:#x}", exception.gpa)),
                ("reason".to_string(), exception.reason.to_string()),
            ],
        },
        RunError::Exit(vcpu::VcpuExit::MemoryFault { gpa, size, flags, errno }) => {
            let flags = match flags {
                KVM_MEMORY_EXIT_FLAG_PRIVATE => "PRIVATE".to_string(),
                0 => "0".to_string(),
                other => format!("{other:#x}"),
            };
            let mut fields = vec![
                ("gpa".to_string(), format!("{gpa:#x}")),
                ("size".to_string(), format!("{size:#x}")),
                ("flags".to_string(), flags),
            ];
            // The documented ABI is -EFAULT; other errors (EHWPOISON, ENOMEM) say so.
            if errno != Errno::EFAULT {
                fields.push(("errno".to_string(), errno.name().to_string()));
            }
            Failure::Exit(VcpuExit { reason: "MEMORY_FAULT".into(), fields })
        }
        RunError::Exit(vcpu::VcpuExit::Mmio { phys_addr, len, is_write }) => Failure::Exit(VcpuExit {
            reason: "MMIO".into(),
            fields: vec![
                ("phys_addr".to_string(), format!("{phys_addr:#x}")),
                ("len".to_string(), format!("{len:#x}")),
                ("is_write".to_string(), u8::from(is_write).to_string()),
            ],
        }),
        RunError::Exit(vcpu::VcpuExit::FailEntry { reason }) => Failure::Exit(VcpuExit {
            reason: "FAIL_ENTRY".into(),
            fields: vec![("hardware_entry_failure_reason".to_string(), format!("{reason:#x}"))],
        }),
        // A page-state change KVM forwards to user space (`psc`, `psc_msr`, `tdx_map_gpa`,
        // `complete_hypercall`).
        RunError::Exit(vcpu::VcpuExit::Hypercall { nr, args, flags }) => Failure::Exit(VcpuExit {
            reason: "HYPERCALL".into(),
            fields: vec![
                ("nr".to_string(), nr.to_string()),
                ("args".to_string(), format!("{:#x},{:#x},{:#x}", args[0], args[1], args[2])),
                ("flags".to_string(), format!("{flags:#x}")),
            ],
        }),
    })
}

fn signal<T>(result: Result<T, AccessSignal>) -> BResult<T> {
    result.map_err(|signal| {
        Failure::Signal(match signal {
            AccessSignal::Sigbus => Signal::Sigbus,
            AccessSignal::Sigsegv => Signal::Sigsegv,
        })
    })
}

impl Backend for SimBackend {
    fn create_vm(&mut self, vm_type: u64) -> BResult<i32> {
        errno(self.host.create_vm(vm_type))
    }

    fn check_extension(&mut self, vm: Option<i32>, cap: u64) -> BResult<i64> {
        match vm {
            None => Ok(self.host.check_extension(cap)),
            Some(vm) => errno(self.host.vm_check_extension(vm, cap)),
        }
    }

    fn create_guest_memfd(&mut self, vm: i32, size: u64, flags: u64) -> BResult<i32> {
        let args = kvm_create_guest_memfd { size, flags, ..Default::default() };
        errno(self.host.create_guest_memfd(vm, &args))
    }

    fn set_user_memory_region2(&mut self, vm: i32, region: &MemoryRegion2) -> BResult<()> {
        errno(self.host.set_memory_region(vm, region))
    }

    fn set_memory_attributes(&mut self, vm: i32, address: u64, size: u64, attributes: u64, flags: u64) -> BResult<()> {
        let attrs = kvm_memory_attributes { address, size, attributes, flags };
        errno(self.host.set_memory_attributes(vm, &attrs))
    }

    fn fallocate(&mut self, fd: i32, mode: i32, offset: i64, len: i64) -> BResult<()> {
        errno(self.host.fallocate(fd, mode, offset, len))
    }

    fn fstat(&mut self, fd: i32) -> BResult<Stat> {
        let stat = errno(self.host.fstat(fd))?;
        Ok(Stat { size: stat.size, blksize: stat.blksize, blocks: stat.blocks, mode: stat.mode })
    }

    fn ftruncate(&mut self, fd: i32, size: i64) -> BResult<()> {
        errno(self.host.process().ftruncate(fd, size))
    }

    fn read(&mut self, fd: i32, len: u64) -> BResult<u64> {
        errno(self.host.process().read(fd, len))
    }

    fn write(&mut self, fd: i32, len: u64) -> BResult<u64> {
        errno(self.host.process().write(fd, len))
    }

    fn pread(&mut self, fd: i32, len: u64, offset: i64) -> BResult<u64> {
        errno(self.host.process().pread(fd, len, offset))
    }

    fn pwrite(&mut self, fd: i32, len: u64, offset: i64) -> BResult<u64> {
        errno(self.host.process().pwrite(fd, len, offset))
    }

    fn lseek(&mut self, fd: i32, offset: i64, whence: i32) -> BResult<u64> {
        errno(self.host.process().lseek(fd, offset, whence))
    }

    fn mmap(&mut self, fd: i32, len: u64, offset: i64, prot: u64, flags: u64) -> BResult<u64> {
        let addr = errno(self.host.mmap(fd, len, offset, prot, flags))?;
        self.keep_guard_gaps(addr, len);
        Ok(addr)
    }

    fn munmap(&mut self, addr: u64, len: u64) -> BResult<()> {
        // The script contract: a range the script unmapped is not handed out again during the
        // script (the kvm backend keeps it reserved), so a stale name never reaches a newer
        // mapping. What was mapped in the range is what gets retired.
        let process = self.host.process();
        let end = addr.saturating_add(len.saturating_add(PAGE - 1) & !(PAGE - 1));
        let (vmas, _) = process.mm.overlapping(addr, end);
        errno(process.munmap(addr, len))?;
        for vma in vmas {
            process.mm.retire(addr.max(vma.start), end.min(vma.end));
        }
        Ok(())
    }

    fn store(&mut self, addr: u64, bytes: &[u8]) -> BResult<()> {
        signal(self.host.store(addr, bytes))
    }

    fn load(&mut self, addr: u64, len: u64) -> BResult<Vec<u8>> {
        if len > LOAD_LEN_MAX {
            return Err(Failure::Skip(format!("loads of more than {LOAD_LEN_MAX} bytes are not supported")));
        }
        signal(self.host.load(addr, len))
    }

    fn madvise(&mut self, addr: u64, len: u64, advice: i32) -> BResult<()> {
        errno(self.host.process().madvise(addr, len, advice))
    }

    fn close(&mut self, fd: i32) -> BResult<()> {
        errno(self.host.close(fd))
    }

    fn mlock(&mut self, addr: u64, len: u64) -> BResult<()> {
        errno(self.host.process().mlock(addr, len))
    }

    fn munlock(&mut self, addr: u64, len: u64) -> BResult<()> {
        errno(self.host.process().munlock(addr, len))
    }

    fn map_anonymous(&mut self, len: u64) -> BResult<u64> {
        let addr = errno(self.host.process().mmap_anonymous(len))?;
        self.keep_guard_gaps(addr, len);
        Ok(addr)
    }

    fn enable_cap(&mut self, vm: i32, cap: u32, flags: u32, args: [u64; 4]) -> BResult<()> {
        let cap = kvm_bindings::kvm_enable_cap { cap, flags, args, ..Default::default() };
        errno(self.host.enable_cap(vm, &cap))
    }

    fn open_dev_sev(&mut self) -> BResult<i32> {
        let fd = errno(self.host.open_dev_sev())?;
        self.dev_sev = Some(fd);
        Ok(fd)
    }

    fn sev_init2(&mut self, vm: i32, params: &kvm_sev_init) -> BResult<()> {
        sev(self.host.sev_init2(vm, params))
    }

    fn snp_launch_start(&mut self, vm: i32, sev_fd: i32, params: &kvm_sev_snp_launch_start) -> BResult<()> {
        sev(self.host.snp_launch_start(vm, sev_fd, params))
    }

    fn snp_launch_update(
        &mut self,
        vm: i32,
        sev_fd: i32,
        params: &kvm_sev_snp_launch_update,
        bytes: Option<&[u8]>,
    ) -> BResult<LaunchUpdated> {
        let mut params = *params;
        let staged = match bytes {
            Some(bytes) => {
                let (addr, size) = self.stage(bytes, params.len)?;
                params.uaddr = addr;
                Some((addr, size))
            }
            None => None,
        };
        let uaddr_in = params.uaddr;
        let result = sev(self.host.snp_launch_update(vm, sev_fd, &mut params));
        if let Some((addr, size)) = staged {
            self.unstage(addr, size);
        }
        result.map(|()| LaunchUpdated { gfn_start: params.gfn_start, len: params.len, uaddr: params.uaddr, uaddr_in })
    }

    fn snp_launch_finish(
        &mut self,
        vm: i32,
        sev_fd: i32,
        params: &kvm_sev_snp_launch_finish,
        id_block: Option<&[u8]>,
    ) -> BResult<()> {
        let mut params = *params;
        // The ID block in the first page, a zeroed ID authentication structure in the second.
        let staged = match id_block {
            Some(block) => {
                let (addr, size) = self.stage(block, 2 * PAGE)?;
                params.id_block_en = 1;
                params.id_block_uaddr = addr;
                params.id_auth_uaddr = addr + PAGE;
                Some((addr, size))
            }
            None => None,
        };
        let result = sev(self.host.snp_launch_finish(vm, sev_fd, &params));
        if let Some((addr, size)) = staged {
            self.unstage(addr, size);
        }
        result
    }

    fn tdx_capabilities(&mut self, vm: i32, nent: u32, flags: u32) -> BResult<TdxCaps> {
        let mut bytes = TdxCaps::request(nent);
        self.tdx_command(vm, KVM_TDX_CAPABILITIES, flags, 0, &mut bytes)?;
        Ok(TdxCaps::from_reply(&bytes))
    }

    fn tdx_init_vm(
        &mut self,
        vm: i32,
        flags: u32,
        init_vm: &kvm_tdx_init_vm,
        cpuid: &[kvm_cpuid_entry2],
    ) -> BResult<()> {
        let mut bytes = init_vm.with_cpuid(cpuid);
        self.tdx_command(vm, KVM_TDX_INIT_VM, flags, 0, &mut bytes)
    }

    fn tdx_init_vcpu(&mut self, vcpu: i32, flags: u32, rcx: u64) -> BResult<()> {
        self.tdx_command(vcpu, KVM_TDX_INIT_VCPU, flags, rcx, &mut [])
    }

    fn tdx_init_mem_region(
        &mut self,
        vcpu: i32,
        flags: u32,
        region: &kvm_tdx_init_mem_region,
        bytes: Option<&[u8]>,
    ) -> BResult<TdxRegionDone> {
        let mut region = *region;
        let staged = match bytes {
            Some(bytes) => {
                let (addr, size) = self.stage(bytes, region.nr_pages.saturating_mul(PAGE))?;
                region.source_addr = addr;
                Some((addr, size))
            }
            None => None,
        };
        let source_in = region.source_addr;
        let mut params = gmem_arch::uapi::as_bytes(&region).to_vec();
        let result = self.tdx_command(vcpu, KVM_TDX_INIT_MEM_REGION, flags, 0, &mut params);
        if let Some((addr, size)) = staged {
            self.unstage(addr, size);
        }
        let error = match result {
            Ok(()) => None,
            Err(Failure::Tdx { errno, hw_error, .. }) => Some((errno, hw_error)),
            Err(other) => return Err(other),
        };
        Ok(TdxRegionDone { region: gmem_arch::uapi::from_bytes(&params), source_in, error })
    }

    fn tdx_finalize_vm(&mut self, vm: i32, flags: u32) -> BResult<()> {
        self.tdx_command(vm, KVM_TDX_FINALIZE_VM, flags, 0, &mut [])
    }

    fn tdx_state(&mut self, vm: i32) -> BResult<TdxVmState> {
        let kvm = errno(self.host.vm(vm))?;
        let td = TdxVm::of(&kvm).ok_or(Failure::Errno(Errno::EINVAL))?;
        let state = match td.td_state() {
            TdState::Uninitialized => "UNINITIALIZED",
            TdState::Initialized => "INITIALIZED",
            TdState::Runnable => "RUNNABLE",
        };
        Ok(TdxVmState {
            state,
            nr_premapped: td.nr_premapped(),
            hkid_assigned: td.is_hkid_assigned(),
            leaked: td.leaked_pages().len(),
            bugged: kvm.is_dead(),
        })
    }

    fn inject_tdx(&mut self, leaf: u16, status: u64, count: u32, after: u32) -> BResult<()> {
        let leaf = SeamcallLeaf::ALL.into_iter().find(|known| known.number() == leaf);
        let (Some(leaf), Some(tdx)) = (leaf, self.host.tdx_host()) else {
            return Err(Failure::Errno(Errno::EINVAL));
        };
        tdx.module().inject(leaf, TdxStatus(status), after, count);
        Ok(())
    }

    fn create_vcpu(&mut self, vm: i32, id: u64) -> BResult<i32> {
        errno(self.host.create_vcpu(vm, id))
    }

    fn guest_store(&mut self, vcpu: i32, gpa: u64, bytes: &[u8], private: Option<bool>) -> BResult<()> {
        let mut buf = bytes.to_vec();
        run(self.host.guest_access(vcpu, gpa, &mut buf, true, private))
    }

    fn guest_load(&mut self, vcpu: i32, gpa: u64, len: u64, private: Option<bool>) -> BResult<Vec<u8>> {
        if len > LOAD_LEN_MAX {
            return Err(Failure::Skip(format!("loads of more than {LOAD_LEN_MAX} bytes are not supported")));
        }
        let mut buf = vec![0u8; len as usize];
        run(self.host.guest_access(vcpu, gpa, &mut buf, false, private)).map(|()| buf)
    }

    fn pre_fault_memory(&mut self, vcpu: i32, gpa: u64, size: u64) -> BResult<u64> {
        errno(self.host.pre_fault_memory(vcpu, gpa, size))
    }

    fn pvalidate(&mut self, vcpu: i32, gpa: u64, size_2m: bool, validate: bool) -> BResult<u64> {
        run(self.host.snp_pvalidate(vcpu, gpa, size_2m, validate)).map(u64::from)
    }

    fn rmpadjust(&mut self, vcpu: i32, gpa: u64, vmsa: bool) -> BResult<u64> {
        run(self.host.snp_rmpadjust_vmsa(vcpu, gpa, vmsa)).map(u64::from)
    }

    fn ghcb_register(&mut self, vcpu: i32, gpa: u64) -> BResult<GhcbAnswer> {
        run(self.host.snp_register_ghcb(vcpu, gpa)).map(GhcbAnswer::Msr)
    }

    fn psc(&mut self, vcpu: i32, ghcb: u64, gpa: u64, npages: u16, op: u8, size_2m: bool) -> BResult<GhcbAnswer> {
        let step = if size_2m { 512 } else { 1 };
        let entries: Vec<PscEntry> = (0..u64::from(npages))
            .map(|i| PscEntry {
                cur_page: 0,
                gfn: (gpa >> 12).wrapping_add(i * step),
                operation: op,
                pagesize_2m: size_2m,
            })
            .collect();
        run(self.host.snp_write_psc_buffer(vcpu, ghcb, &entries))?;
        run(self.host.snp_vmgexit_psc(vcpu, ghcb)).map(ghcb_answer)
    }

    fn psc_msr(&mut self, vcpu: i32, gpa: u64, op: u8) -> BResult<GhcbAnswer> {
        run(self.host.snp_psc_msr(vcpu, gpa, op)).map(ghcb_answer)
    }

    fn complete_hypercall(&mut self, vcpu: i32, ret: u64) -> BResult<Completion> {
        // KVM_RUN completes what the vCPU's exit waits for: a TD's TDVMCALL, or an SNP VMGEXIT.
        let td = self.host.vcpu(vcpu).is_ok_and(|(kvm, _)| TdxVm::of(&kvm).is_some());
        match td {
            true => run(self.host.tdx_complete_hypercall(vcpu, ret)).map(|r| Completion::Tdvmcall(tdvmcall_answer(r))),
            false => run(self.host.complete_hypercall(vcpu, ret)).map(|r| Completion::Ghcb(ghcb_answer(r))),
        }
    }

    fn tdx_shared_bit(&mut self, vcpu: i32) -> BResult<u64> {
        let (kvm, _) = errno(self.host.vcpu(vcpu))?;
        let bit = TdxVm::of(&kvm).map_or(0, |_| gmem_arch::tdx::tdcall::shared_bit(&kvm));
        match bit {
            0 => Err(Failure::Errno(Errno::EINVAL)),
            bit => Ok(bit),
        }
    }

    fn tdx_accept(&mut self, vcpu: i32, rcx: u64) -> BResult<u64> {
        run(self.host.tdx_accept(vcpu, rcx)).map(|status| status.0)
    }

    fn tdx_map_gpa(&mut self, vcpu: i32, gpa: u64, size: u64) -> BResult<TdvmcallAnswer> {
        run(self.host.tdx_map_gpa(vcpu, gpa, size)).map(tdvmcall_answer)
    }

    fn queue_event(&mut self, vcpu: i32) -> BResult<()> {
        errno(self.host.queue_event(vcpu))
    }

    fn ap_create(&mut self, vcpu: i32, apic_id: u32, gpa: u64, request: u32, sev_features: u64) -> BResult<GhcbAnswer> {
        run(self.host.snp_ap_creation(vcpu, request, apic_id, gpa, sev_features)).map(GhcbAnswer::Status)
    }

    fn snp_launch_digest(&mut self, vm: i32) -> BResult<Vec<u8>> {
        // EINVAL for a VM without an SNP guest context (before LAUNCH_START).
        let digest = errno(self.host.snp_launch_digest(vm))?;
        digest.map(|digest| digest.to_vec()).ok_or(Failure::Errno(Errno::EINVAL))
    }

    fn inject_snp_firmware(&mut self, cmd: u32, ret: u32, count: u32, after: u32) -> BResult<()> {
        let cmd = SevCmd::ALL.into_iter().find(|known| *known as u32 == cmd);
        let ret = SevRet::ALL.into_iter().find(|known| known.code() == ret);
        let (Some(cmd), Some(ret), Some(snp)) = (cmd, ret, self.host.snp_host()) else {
            return Err(Failure::Errno(Errno::EINVAL));
        };
        snp.firmware().inject(cmd, ret, after, count);
        Ok(())
    }

    fn populate(&mut self, vm: i32, gpa: u64, npages: u64, bytes: Option<&[u8]>) -> BResult<u64> {
        // An SNP VM is populated by KVM_SEV_SNP_LAUNCH_UPDATE, through /dev/sev.
        if self.host.vm(vm).is_ok_and(|kvm| kvm.vm_type() == VmType::SevSnp) {
            return self.snp_populate(vm, gpa, npages, bytes);
        }
        // Page i is copied from byte i * 4096 of the source; pages past its end are zeroed.
        errno(self.host.populate(vm, gpa, npages, bytes)).map(|pages| pages as u64)
    }

    fn inject_memory_failure(&mut self, fd: i32, offset: u64) -> BResult<()> {
        errno(self.host.inject_memory_failure(fd, offset)).map(|_| ())
    }

    fn inject(&mut self, fault: &str, count: u64, after: u64) -> BResult<()> {
        let point = FaultPoint::from_name(fault).ok_or(Failure::Errno(Errno::EINVAL))?;
        self.host.machine().inject.arm(point, after, count);
        Ok(())
    }

    fn warnings(&mut self) -> BResult<u64> {
        Ok(self.host.machine().warnings.count() as u64)
    }

    fn check_invariants(&mut self) -> BResult<Vec<Violation>> {
        let vms: Vec<Arc<gmem_kvm::Kvm>> = self.vms().into_iter().map(|(_, kvm)| kvm).collect();
        let files: Vec<FileRef> = self.reachable_files().into_iter().map(|(_, file)| file).collect();
        let mut violations = invariants::check(&vms, &files);
        // The TDX module's own invariants run with the first TD reachable; with none (after a
        // teardown), directly, so that what a destroyed TD left behind is checked too.
        let gmem_vms = files.iter().filter_map(|file| gmem_of_file(file).map(|gmem| gmem.kvm().clone()));
        let any_td = vms.iter().cloned().chain(gmem_vms).any(|kvm| TdxVm::of(&kvm).is_some());
        if let (Some(tdx), false) = (self.host.tdx_host(), any_td) {
            gmem_arch::tdx::invariants::check_module(tdx.module(), &mut violations);
        }
        let mut grouped: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
        for violation in violations {
            grouped.entry(violation.invariant).or_default().push(violation.detail);
        }
        Ok(grouped.into_iter().map(|(name, details)| Violation { name: name.to_string(), details }).collect())
    }

    fn dump(&mut self, target: Option<i32>) -> BResult<Vec<String>> {
        let mut lines = Vec::new();
        for (fd, kvm) in self.vms() {
            if target.is_none_or(|target| target == fd) {
                lines.extend(crate::backends::dump::vm(fd, &kvm));
            }
        }
        for (fd, file) in self.reachable_files() {
            let Some(gmem) = gmem_of_file(&file) else { continue };
            if target.is_none() || target == fd {
                lines.extend(crate::backends::dump::gmem(fd, &file, gmem));
            }
        }
        if let Some(target) = target {
            if lines.is_empty() {
                return errno(self.host.process().fget(target).map(|_| ()).and(Err(Errno::EINVAL)));
            }
        }
        Ok(lines)
    }
}
