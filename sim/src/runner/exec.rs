//! Executes [`Op`]s on a backend, resolving names to descriptors and addresses and binding
//! the handles verbs return.

use std::collections::BTreeMap;

use crate::backend::{
    BResult, Backend, Completion, Failure, GhcbAnswer, LaunchUpdated, MemoryRegion2, Stat, TdvmcallAnswer,
    TdxRegionDone, Violation,
};
use crate::script::{CpuidEntry, Handle, LaunchSource, Line, Op, UserAddr};
use gmem_arch::tdx::kvm::{kvm_tdx_init_mem_region, kvm_tdx_init_vm, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};
use kvm_bindings::{
    kvm_cpuid_entry2, kvm_sev_init, kvm_sev_snp_launch_finish, kvm_sev_snp_launch_start, kvm_sev_snp_launch_update,
};

/// `MAP_FAILED`: what a name bound by a failed `mmap` holds.
pub(crate) const MAP_FAILED: u64 = u64::MAX;

/// What a name stands for while a script runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bound {
    /// A VM, guest_memfd or vCPU descriptor (-1 after a failed call).
    Descriptor(i32),
    /// A mapping: its address (`MAP_FAILED` after a failed call) and the length asked for.
    Mapping { addr: u64, len: u64 },
}

impl Bound {
    /// The number the name stands for: the descriptor (sign-extended) or the address.
    fn number(self) -> u64 {
        match self {
            Bound::Descriptor(fd) => i64::from(fd) as u64,
            Bound::Mapping { addr, .. } => addr,
        }
    }
}

/// What a verb gave back on success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Success {
    /// Nothing to report.
    Unit,
    /// A handle, bound to the line's name.
    Handle(Bound),
    /// An unsigned count, size or offset.
    Count(u64),
    /// A signed value (`check_extension`).
    Signed(i64),
    /// Bytes loaded.
    Bytes(Vec<u8>),
    /// `fstat`'s record.
    Stat(Stat),
    /// `dump`'s lines.
    Dump(Vec<String>),
    /// `check_invariants`' violations (empty: all hold).
    Invariants(Vec<Violation>),
    /// A record: `ok key=value ...`, values already formatted.
    Record(Vec<(&'static str, String)>),
    /// KVM's answer to a VMGEXIT it completed.
    Ghcb(GhcbAnswer),
    /// A TDX module status a TDCALL returned (`TDG.MEM.PAGE.ACCEPT`): `ok NAME`.
    TdxStatus(u64),
    /// KVM's answer to a `TDG.VP.VMCALL`: `ok status=NAME r11=0xN`.
    Tdvmcall(TdvmcallAnswer),
}

/// The result of one line.
pub(crate) type Outcome = Result<Success, Failure>;

/// The names bound so far.
#[derive(Debug, Default)]
struct Env {
    names: BTreeMap<String, Bound>,
}

impl Env {
    /// The number `handle` stands for (-1 for a name the parser would have rejected).
    fn number(&self, handle: &Handle) -> u64 {
        match handle {
            Handle::Number(number) => *number,
            Handle::Name(name) => self.names.get(name).map_or(u64::MAX, |b| b.number()),
        }
    }

    /// A descriptor argument: the low 32 bits of the number.
    fn fd(&self, handle: &Handle) -> i32 {
        self.number(handle) as i32
    }

    /// The address and length of the mapping bound to `name`.
    fn mapping(&self, name: &str) -> (u64, u64) {
        match self.names.get(name) {
            Some(Bound::Mapping { addr, len }) => (*addr, *len),
            Some(other) => (other.number(), 0),
            None => (MAP_FAILED, 0),
        }
    }
}

/// Runs the lines of one script on one backend.
pub(crate) struct Executor<'b> {
    backend: &'b mut dyn Backend,
    env: Env,
    /// The descriptor the most recent `open_dev_sev` returned (-1 if it failed): the default
    /// `sev_fd=`.
    last_dev_sev: i32,
}

impl<'b> Executor<'b> {
    pub fn new(backend: &'b mut dyn Backend) -> Self {
        Executor { backend, env: Env::default(), last_dev_sev: -1 }
    }

    /// Executes `line` and binds its name: to the handle, or to an invalid one on failure.
    pub fn run_line(&mut self, line: &Line) -> Outcome {
        let outcome = self.execute(&line.op);
        if let Some(name) = &line.binding {
            let bound = match &outcome {
                Ok(Success::Handle(bound)) => *bound,
                _ => invalid_handle(&line.op),
            };
            self.env.names.insert(name.clone(), bound);
        }
        outcome
    }

    fn execute(&mut self, op: &Op) -> Outcome {
        // Every verb is handled by exactly one of these; the final default is unreachable.
        self.execute_vm(op)
            .or_else(|| self.execute_file(op))
            .or_else(|| self.execute_mapping(op))
            .or_else(|| self.execute_sev(op))
            .or_else(|| self.execute_tdx(op))
            .or_else(|| self.execute_guest(op))
            .or_else(|| self.execute_snp_guest(op))
            .or_else(|| self.execute_tdx_guest(op))
            .or_else(|| self.execute_simulator(op))
            .unwrap_or(Ok(Success::Unit))
    }

    /// A `sev_fd=` argument: the given descriptor, or the script's most recent `open_dev_sev`.
    fn sev_fd(&self, sev_fd: &Option<Handle>) -> i32 {
        sev_fd.as_ref().map_or(self.last_dev_sev, |fd| self.env.fd(fd))
    }

    fn execute_sev(&mut self, op: &Op) -> Option<Outcome> {
        Some(match op {
            Op::OpenDevSev => {
                let result = self.backend.open_dev_sev();
                self.last_dev_sev = *result.as_ref().unwrap_or(&-1);
                result.map(descriptor)
            }
            Op::SevInit2 { vm, vmsa_features, ghcb_version, flags } => {
                let params = kvm_sev_init {
                    vmsa_features: *vmsa_features,
                    flags: *flags,
                    ghcb_version: *ghcb_version,
                    ..Default::default()
                };
                self.backend.sev_init2(self.env.fd(vm), &params).map(unit)
            }
            Op::SnpLaunchStart { vm, sev_fd, policy, flags } => {
                let params = kvm_sev_snp_launch_start { policy: *policy, flags: *flags, ..Default::default() };
                let (vm, sev_fd) = (self.env.fd(vm), self.sev_fd(sev_fd));
                self.backend.snp_launch_start(vm, sev_fd, &params).map(unit)
            }
            Op::SnpLaunchUpdate { vm, sev_fd, gfn_start, len, page_type, source, flags } => {
                let (uaddr, bytes) = match source {
                    LaunchSource::Address(handle) => (self.env.number(handle), None),
                    LaunchSource::Bytes(bytes) => (0, Some(bytes.as_slice())),
                };
                let params = kvm_sev_snp_launch_update {
                    gfn_start: *gfn_start,
                    uaddr,
                    len: *len,
                    type_: *page_type,
                    flags: *flags,
                    ..Default::default()
                };
                let (vm, sev_fd) = (self.env.fd(vm), self.sev_fd(sev_fd));
                let updated = self.backend.snp_launch_update(vm, sev_fd, &params, bytes);
                updated.map(|updated| launch_updated(&updated, source))
            }
            Op::SnpLaunchFinish { vm, sev_fd, host_data, id_block, flags } => {
                let mut params = kvm_sev_snp_launch_finish { flags: *flags, ..Default::default() };
                for (to, from) in params.host_data.iter_mut().zip(host_data) {
                    *to = *from;
                }
                let (vm, sev_fd) = (self.env.fd(vm), self.sev_fd(sev_fd));
                self.backend.snp_launch_finish(vm, sev_fd, &params, id_block.as_deref()).map(unit)
            }
            _ => return None,
        })
    }

    fn execute_tdx(&mut self, op: &Op) -> Option<Outcome> {
        let (b, env) = (&mut *self.backend, &self.env);
        Some(match op {
            Op::TdxCapabilities { vm, nent, flags } => b.tdx_capabilities(env.fd(vm), *nent, *flags).map(|caps| {
                Success::Record(vec![
                    ("supported_attrs", format!("{:#x}", caps.supported_attrs)),
                    ("supported_xfam", format!("{:#x}", caps.supported_xfam)),
                    ("nent", caps.nent.to_string()),
                ])
            }),
            Op::TdxInitVm { vm, attributes, xfam, gpaw, cpuid, flags } => {
                let init_vm = kvm_tdx_init_vm { attributes: *attributes, xfam: *xfam, ..Default::default() };
                let entries = tdx_cpuid(*gpaw, cpuid);
                b.tdx_init_vm(env.fd(vm), *flags, &init_vm, &entries).map(unit)
            }
            Op::TdxInitVcpu { vcpu, rcx, flags } => b.tdx_init_vcpu(env.fd(vcpu), *flags, *rcx).map(unit),
            Op::TdxInitMemRegion { vcpu, gpa, nr_pages, source, flags } => {
                let (source_addr, bytes) = match source {
                    LaunchSource::Address(handle) => (env.number(handle), None),
                    LaunchSource::Bytes(bytes) => (0, Some(bytes.as_slice())),
                };
                let region = kvm_tdx_init_mem_region { source_addr, gpa: *gpa, nr_pages: *nr_pages };
                b.tdx_init_mem_region(env.fd(vcpu), *flags, &region, bytes)
                    .and_then(|done| region_done(&done, *nr_pages, source))
            }
            Op::TdxFinalizeVm { vm, flags } => b.tdx_finalize_vm(env.fd(vm), *flags).map(unit),
            Op::TdxState { vm } => b.tdx_state(env.fd(vm)).map(|td| {
                Success::Record(vec![
                    ("state", td.state.to_string()),
                    ("nr_premapped", td.nr_premapped.to_string()),
                    ("hkid_assigned", u8::from(td.hkid_assigned).to_string()),
                    ("leaked", td.leaked.to_string()),
                    ("bugged", u8::from(td.bugged).to_string()),
                ])
            }),
            Op::InjectTdx { leaf, status, count, after } => b.inject_tdx(*leaf, *status, *count, *after).map(unit),
            _ => return None,
        })
    }

    fn execute_snp_guest(&mut self, op: &Op) -> Option<Outcome> {
        let (b, env) = (&mut *self.backend, &self.env);
        Some(match op {
            Op::Pvalidate { vcpu, gpa, size_2m, validate } => {
                b.pvalidate(env.fd(vcpu), *gpa, *size_2m, *validate).map(Success::Count)
            }
            Op::Rmpadjust { vcpu, gpa, vmsa } => b.rmpadjust(env.fd(vcpu), *gpa, *vmsa).map(Success::Count),
            Op::GhcbRegister { vcpu, gpa } => b.ghcb_register(env.fd(vcpu), *gpa).map(Success::Ghcb),
            Op::Psc { vcpu, ghcb, gpa, npages, op, size_2m } => {
                b.psc(env.fd(vcpu), *ghcb, *gpa, *npages, *op, *size_2m).map(Success::Ghcb)
            }
            Op::PscMsr { vcpu, gpa, op } => b.psc_msr(env.fd(vcpu), *gpa, *op).map(Success::Ghcb),
            Op::CompleteHypercall { vcpu, ret } => b.complete_hypercall(env.fd(vcpu), *ret).map(|done| match done {
                Completion::Ghcb(answer) => Success::Ghcb(answer),
                Completion::Tdvmcall(answer) => Success::Tdvmcall(answer),
            }),
            Op::ApCreate { vcpu, apic_id, gpa, request, sev_features } => {
                b.ap_create(env.fd(vcpu), *apic_id, *gpa, *request, *sev_features).map(Success::Ghcb)
            }
            _ => return None,
        })
    }

    fn execute_tdx_guest(&mut self, op: &Op) -> Option<Outcome> {
        let (b, env) = (&mut *self.backend, &self.env);
        Some(match op {
            Op::TdxAccept { vcpu, gpa, level, shared } => {
                let vcpu = env.fd(vcpu);
                guest_gpa(b, vcpu, *gpa, *shared)
                    .and_then(|gpa| b.tdx_accept(vcpu, gpa | level))
                    .map(Success::TdxStatus)
            }
            Op::TdxMapGpa { vcpu, gpa, size, shared } => {
                let vcpu = env.fd(vcpu);
                guest_gpa(b, vcpu, *gpa, *shared).and_then(|gpa| b.tdx_map_gpa(vcpu, gpa, *size)).map(Success::Tdvmcall)
            }
            _ => return None,
        })
    }

    fn execute_vm(&mut self, op: &Op) -> Option<Outcome> {
        let (b, env) = (&mut *self.backend, &self.env);
        Some(match op {
            Op::CreateVm { vm_type } => b.create_vm(*vm_type).map(descriptor),
            Op::CheckExtension { vm, cap } => {
                let vm = vm.as_ref().map(|vm| env.fd(vm));
                b.check_extension(vm, *cap).map(Success::Signed)
            }
            Op::CreateGuestMemfd { vm, size, flags } => b.create_guest_memfd(env.fd(vm), *size, *flags).map(descriptor),
            Op::SetUserMemoryRegion2 { vm, slot, flags, gpa, size, uaddr, guest_memfd, guest_memfd_offset } => {
                let region = MemoryRegion2 {
                    slot: *slot,
                    flags: *flags,
                    guest_phys_addr: *gpa,
                    memory_size: *size,
                    userspace_addr: 0, // filled in by set_user_memory_region2
                    guest_memfd_offset: *guest_memfd_offset,
                    guest_memfd: env.number(guest_memfd) as u32,
                };
                let vm = env.fd(vm);
                self.set_user_memory_region2(vm, region, uaddr)
            }
            Op::SetMemoryAttributes { vm, address, size, attributes, flags } => {
                b.set_memory_attributes(env.fd(vm), *address, *size, *attributes, *flags).map(unit)
            }
            Op::EnableCap { vm, cap, flags, args } => b.enable_cap(env.fd(vm), *cap, *flags, *args).map(unit),
            _ => return None,
        })
    }

    /// Resolves `uaddr` (mapping fresh memory for `auto`) and issues the ioctl.
    fn set_user_memory_region2(&mut self, vm: i32, mut region: MemoryRegion2, uaddr: &UserAddr) -> Outcome {
        region.userspace_addr = self.user_addr(uaddr, region.memory_size)?;
        self.backend.set_user_memory_region2(vm, &region).map(unit)
    }

    /// `uaddr=`: `auto` maps fresh anonymous memory of the slot's size (none for size 0). A size
    /// no mapping can hold (the mmap fails: past `TASK_SIZE`, or no room) passes 0, so the ioctl
    /// gives its own answer for the size (out-of-range values are passed through).
    fn user_addr(&mut self, uaddr: &UserAddr, size: u64) -> BResult<u64> {
        match uaddr {
            UserAddr::Auto if size == 0 => Ok(0),
            UserAddr::Auto => match self.backend.map_anonymous(size) {
                Err(Failure::Errno(_)) => Ok(0),
                other => other,
            },
            UserAddr::Given(handle) => Ok(self.env.number(handle)),
        }
    }

    fn execute_file(&mut self, op: &Op) -> Option<Outcome> {
        let (b, env) = (&mut *self.backend, &self.env);
        Some(match op {
            Op::Fallocate { fd, mode, offset, len } => {
                b.fallocate(env.fd(fd), *mode as i32, *offset as i64, *len as i64).map(unit)
            }
            Op::Fstat { fd } => b.fstat(env.fd(fd)).map(Success::Stat),
            Op::Ftruncate { fd, size } => b.ftruncate(env.fd(fd), *size as i64).map(unit),
            Op::Read { fd, len } => b.read(env.fd(fd), *len).map(Success::Count),
            Op::Write { fd, len } => b.write(env.fd(fd), *len).map(Success::Count),
            Op::Pread { fd, len, offset } => b.pread(env.fd(fd), *len, *offset as i64).map(Success::Count),
            Op::Pwrite { fd, len, offset } => b.pwrite(env.fd(fd), *len, *offset as i64).map(Success::Count),
            Op::Lseek { fd, offset, whence } => b.lseek(env.fd(fd), *offset as i64, *whence as i32).map(Success::Count),
            Op::Close { handle } => b.close(env.fd(handle)).map(unit),
            _ => return None,
        })
    }

    fn execute_mapping(&mut self, op: &Op) -> Option<Outcome> {
        let (b, env) = (&mut *self.backend, &self.env);
        Some(match op {
            Op::Mmap { fd, len, offset, prot, flags } => b
                .mmap(env.fd(fd), *len, *offset as i64, *prot, *flags)
                .map(|addr| Success::Handle(Bound::Mapping { addr, len: *len })),
            Op::Munmap { map } => {
                let (addr, len) = env.mapping(map);
                b.munmap(addr, len).map(unit)
            }
            Op::Store { map, offset, bytes } => b.store(env.mapping(map).0.wrapping_add(*offset), bytes).map(unit),
            Op::Load { map, offset, len } => b.load(env.mapping(map).0.wrapping_add(*offset), *len).map(Success::Bytes),
            Op::Madvise { map, offset, len, advice } => {
                let addr = env.mapping(map).0.wrapping_add(*offset);
                b.madvise(addr, *len, *advice as i32).map(unit)
            }
            Op::Mlock { map, offset, len } => b.mlock(env.mapping(map).0.wrapping_add(*offset), *len).map(unit),
            Op::Munlock { map, offset, len } => b.munlock(env.mapping(map).0.wrapping_add(*offset), *len).map(unit),
            _ => return None,
        })
    }

    fn execute_guest(&mut self, op: &Op) -> Option<Outcome> {
        let (b, env) = (&mut *self.backend, &self.env);
        Some(match op {
            Op::CreateVcpu { vm, id } => b.create_vcpu(env.fd(vm), *id).map(descriptor),
            Op::GuestStore { vcpu, gpa, bytes, private, shared } => {
                let vcpu = env.fd(vcpu);
                guest_gpa(b, vcpu, *gpa, *shared).and_then(|gpa| b.guest_store(vcpu, gpa, bytes, *private)).map(unit)
            }
            Op::GuestLoad { vcpu, gpa, len, private, shared } => {
                let vcpu = env.fd(vcpu);
                guest_gpa(b, vcpu, *gpa, *shared)
                    .and_then(|gpa| b.guest_load(vcpu, gpa, *len, *private))
                    .map(Success::Bytes)
            }
            Op::PreFaultMemory { vcpu, gpa, size } => b.pre_fault_memory(env.fd(vcpu), *gpa, *size).map(Success::Count),
            _ => return None,
        })
    }

    fn execute_simulator(&mut self, op: &Op) -> Option<Outcome> {
        let (b, env) = (&mut *self.backend, &self.env);
        Some(match op {
            Op::Populate { vm, gpa, npages, bytes } => {
                b.populate(env.fd(vm), *gpa, *npages, bytes.as_deref()).map(Success::Count)
            }
            Op::InjectMemoryFailure { fd, offset } => b.inject_memory_failure(env.fd(fd), *offset).map(unit),
            Op::Inject { fault, count, after } => b.inject(fault, *count, *after).map(unit),
            Op::InjectSnpFirmware { cmd, ret, count, after } => {
                b.inject_snp_firmware(*cmd, *ret, *count, *after).map(unit)
            }
            Op::SnpLaunchDigest { vm } => b.snp_launch_digest(env.fd(vm)).map(Success::Bytes),
            Op::QueueEvent { vcpu } => b.queue_event(env.fd(vcpu)).map(unit),
            Op::Warnings => b.warnings().map(Success::Count),
            Op::CheckInvariants => b.check_invariants().map(Success::Invariants),
            Op::Dump { target } => {
                let target = target.as_ref().map(|t| env.fd(t));
                b.dump(target).map(Success::Dump)
            }
            _ => return None,
        })
    }
}

/// `snp_launch_update`'s record: `gfn_start` and `len` in decimal; `uaddr` relative to where the
/// source was (`MAP+0xN` for a name, `bytes+0xN` for staged bytes), so both backends print the
/// same; a number given as `uaddr=` prints the new address in hexadecimal.
fn launch_updated(updated: &LaunchUpdated, source: &LaunchSource) -> Success {
    let advanced = updated.uaddr.wrapping_sub(updated.uaddr_in);
    let uaddr = match source {
        LaunchSource::Address(Handle::Name(name)) => format!("{name}+{advanced:#x}"),
        LaunchSource::Bytes(_) => format!("bytes+{advanced:#x}"),
        LaunchSource::Address(Handle::Number(_)) => format!("{:#x}", updated.uaddr),
    };
    Success::Record(vec![
        ("gfn_start", updated.gfn_start.to_string()),
        ("len", updated.len.to_string()),
        ("uaddr", uaddr),
    ])
}

/// `tdx_init_vm`'s CPUID: leaf 0x80000008 with the guest physical address width in EAX\[23:16\]
/// (none for a width of 0), then the script's entries.
fn tdx_cpuid(gpaw: u8, extra: &[CpuidEntry]) -> Vec<kvm_cpuid_entry2> {
    let gpaw_entry = kvm_cpuid_entry2 { function: 0x8000_0008, eax: u32::from(gpaw) << 16, ..Default::default() };
    let extra = extra.iter().map(|entry| {
        let [eax, ebx, ecx, edx] = entry.regs;
        kvm_cpuid_entry2 {
            function: entry.function,
            index: entry.index.unwrap_or(0),
            flags: if entry.index.is_some() { KVM_CPUID_FLAG_SIGNIFCANT_INDEX } else { 0 },
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    });
    (gpaw != 0).then_some(gpaw_entry).into_iter().chain(extra).collect()
}

/// `tdx_init_mem_region`'s result: the region as the kernel copied it back, `source_addr`
/// relative to where the source was (as `snp_launch_update`'s `uaddr`), `gpa` in hexadecimal,
/// `nr_pages` in decimal; on a failure the errno and `hw_error`, with the region only if the
/// kernel advanced it (fewer than `nr_pages_in` pages left).
fn region_done(done: &TdxRegionDone, nr_pages_in: u64, source: &LaunchSource) -> Outcome {
    let advanced = done.region.source_addr.wrapping_sub(done.source_in);
    let source_addr = match source {
        LaunchSource::Address(Handle::Name(name)) => format!("{name}+{advanced:#x}"),
        LaunchSource::Bytes(_) => format!("bytes+{advanced:#x}"),
        LaunchSource::Address(Handle::Number(_)) => format!("{:#x}", done.region.source_addr),
    };
    let fields = vec![
        ("source_addr", source_addr),
        ("gpa", format!("{:#x}", done.region.gpa)),
        ("nr_pages", done.region.nr_pages.to_string()),
    ];
    match done.error {
        None => Ok(Success::Record(fields)),
        Some((errno, hw_error)) => {
            let progressed = done.region.nr_pages != nr_pages_in;
            let fields = match progressed {
                true => fields.into_iter().map(|(key, value)| (key.to_string(), value)).collect(),
                false => Vec::new(),
            };
            Err(Failure::Tdx { errno, hw_error, fields })
        }
    }
}

/// A guest's gpa: `gpa`, with the TD's shared bit added for `shared=1` (the bit decides the
/// access kind on a TD, so a script need not know the TD's GPAW).
fn guest_gpa(b: &mut dyn Backend, vcpu: i32, gpa: u64, shared: bool) -> BResult<u64> {
    match shared {
        true => b.tdx_shared_bit(vcpu).map(|bit| gpa | bit),
        false => Ok(gpa),
    }
}

fn descriptor(fd: i32) -> Success {
    Success::Handle(Bound::Descriptor(fd))
}

fn unit(_: ()) -> Success {
    Success::Unit
}

/// What a name holds after the verb that should have returned its handle failed.
fn invalid_handle(op: &Op) -> Bound {
    match op {
        Op::Mmap { len, .. } => Bound::Mapping { addr: MAP_FAILED, len: *len },
        _ => Bound::Descriptor(-1),
    }
}
