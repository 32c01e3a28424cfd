//! A VMM's vCPU loop on the simulator, handling guest_memfd conversions the way QEMU does.
//!
//!     cargo run -p gmem-uapi --example vmm_loop                      # every VM type
//!     cargo run -p gmem-uapi --example vmm_loop -- --vm-type TDX     # DEFAULT, SW_PROTECTED, SEV_SNP, TDX
//!
//! For each VM type the VMM sets the machine up as QEMU does (`KVM_CREATE_VM`; for SEV-SNP
//! `KVM_SEV_INIT2` and `KVM_SEV_SNP_LAUNCH_START`, for TDX `KVM_TDX_INIT_VM`; the
//! `KVM_HC_MAP_GPA_RANGE` exit enabled; one memslot with a shared backing and, for VM types with
//! private memory, a guest_memfd, all of it PRIVATE), launches it, and runs one vCPU over a guest
//! workload: the guest converts its pages to private, stores and loads private data, touches a
//! private page as shared, converts a page back to shared, reads and writes a device register.
//! The loop is `kvm_cpu_exec`'s:
//!
//! * `MemoryFault`: `kvm_convert_memory(gpa, size, flags & KVM_MEMORY_EXIT_FLAG_PRIVATE)`, then
//!   run again (the access is retried);
//! * `Hypercall` with `KVM_HC_MAP_GPA_RANGE`: `kvm_handle_hc_map_gpa_range`, the same conversion,
//!   its result in `hypercall.ret` for the guest;
//! * `MmioRead` / `MmioWrite`: the device model (here one 8-byte register);
//! * `Hlt`: the guest is done.
//!
//! `kvm_convert_memory` sets the attributes first (`KVM_SET_MEMORY_ATTRIBUTES`), then discards
//! the side the range left: the shared backing (`madvise(MADV_DONTNEED)`) when it became
//! private, the guest_memfd range (`fallocate(PUNCH_HOLE | KEEP_SIZE)`) when it became shared.
//! At the end it prints what the guest saw and checks it (the conversions' results, private
//! data gone after a conversion to shared, the device's data): any difference, or an exit the
//! loop cannot handle, is exit status 1, so CI runs it as a test. Only the imports and the
//! simulator's own calls (`set_guest`, the process's `mmap`,
//! `madvise`, `fallocate`) differ from a VMM on kvm-ioctls.

use gmem_uapi::consts::{
    KVM_CAP_EXIT_HYPERCALL, KVM_HC_MAP_GPA_RANGE, KVM_MAP_GPA_RANGE_ENCRYPTED, KVM_MEMORY_ATTRIBUTE_PRIVATE,
    KVM_MEMORY_EXIT_FLAG_PRIVATE, KVM_MEM_GUEST_MEMFD, KVM_X86_DEFAULT_VM, KVM_X86_SNP_VM, KVM_X86_SW_PROTECTED_VM,
    KVM_X86_TDX_VM,
};
use gmem_uapi::{
    kvm_create_guest_memfd, kvm_memory_attributes, kvm_sev_init, kvm_sev_snp_launch_finish, kvm_sev_snp_launch_start,
    kvm_userspace_memory_region2, Errno, GuestOp, GuestOutcome, GuestSequence, Kvm, VcpuExit, VcpuFd, VmFd,
};
use std::os::unix::io::RawFd;
use std::process::ExitCode;

/// Guest RAM: 1 MiB at 1 MiB (one memslot).
const RAM_BASE: u64 = 1 << 20;
const RAM_SIZE: u64 = 1 << 20;
const PAGE: u64 = 4096;
/// A device register no memslot backs: its accesses exit as MMIO.
const DEVICE: u64 = 0xfed0_0000;

/// `madvise(MADV_DONTNEED)` and `fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)`.
const MADV_DONTNEED: i32 = 4;
const FALLOC_FL_KEEP_SIZE: i32 = 0x01;
const FALLOC_FL_PUNCH_HOLE: i32 = 0x02;

/// QEMU's `sev-snp-guest` default policy (SMT allowed, the must-be-one bit).
const SNP_POLICY: u64 = 0x30000;

/// The machine a VMM built: the VM, its RAM block and guest_memfd, its vCPU.
struct Machine {
    kvm: Kvm,
    vm: VmFd,
    /// The shared backing of guest RAM (`userspace_addr`).
    hva: u64,
    /// The guest_memfd behind guest RAM (VM types with private memory).
    gmem: Option<RawFd>,
    vcpu: VcpuFd,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let types: Vec<(&str, u64)> = vec![
        ("DEFAULT", KVM_X86_DEFAULT_VM.into()),
        ("SW_PROTECTED", KVM_X86_SW_PROTECTED_VM.into()),
        ("SEV_SNP", KVM_X86_SNP_VM.into()),
        ("TDX", KVM_X86_TDX_VM.into()),
    ];
    let chosen = match args.as_slice() {
        [] => types,
        [flag, name] if flag == "--vm-type" => match types.iter().find(|(n, _)| n == name) {
            Some(&t) => vec![t],
            None => {
                eprintln!("vmm_loop: unknown VM type {name:?} (DEFAULT, SW_PROTECTED, SEV_SNP, TDX)");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("usage: vmm_loop [--vm-type DEFAULT|SW_PROTECTED|SEV_SNP|TDX]");
            return ExitCode::from(2);
        }
    };
    for (name, vm_type) in chosen {
        println!("== {name} ==");
        if let Err(error) = run_one(vm_type) {
            eprintln!("vmm_loop: {name}: {error}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn run_one(vm_type: u64) -> Result<(), String> {
    let mut machine = build(vm_type).map_err(|e| format!("machine setup failed: {e}"))?;
    machine.vcpu.set_guest(workload()).map_err(|e| format!("set_guest: {e}"))?;
    let mut device = *b"device!\n";
    loop {
        // kvm_cpu_exec: run, handle the exit, run again.
        let exit = machine.vcpu.run().map_err(|e| format!("KVM_RUN: {e}"))?;
        match exit {
            VcpuExit::MemoryFault { flags, gpa, size } => {
                if flags & !u64::from(KVM_MEMORY_EXIT_FLAG_PRIVATE) != 0 {
                    return Err(format!("KVM_EXIT_MEMORY_FAULT with unknown flags {flags:#x}"));
                }
                let to_private = flags & u64::from(KVM_MEMORY_EXIT_FLAG_PRIVATE) != 0;
                println!("  exit MEMORY_FAULT gpa={gpa:#x} size={size:#x} -> {}", kind(to_private));
                // Re-entering without converting would fault again: a failure stops the vCPU.
                convert(&machine.kvm, &machine.vm, machine.hva, machine.gmem, gpa, size, to_private)
                    .map_err(|e| format!("kvm_convert_memory: {e}"))?;
            }
            VcpuExit::Hypercall(hypercall) if hypercall.nr == KVM_HC_MAP_GPA_RANGE => {
                let (gpa, npages, attrs) = (hypercall.args[0], hypercall.args[1], hypercall.args[2]);
                let to_private = attrs & KVM_MAP_GPA_RANGE_ENCRYPTED != 0;
                // kvm_handle_hc_map_gpa_range: the result goes back to the guest.
                let result = match npages.checked_mul(PAGE) {
                    Some(size) => convert(&machine.kvm, &machine.vm, machine.hva, machine.gmem, gpa, size, to_private),
                    None => Err(Errno::EINVAL),
                };
                *hypercall.ret = match result {
                    Ok(()) => 0,
                    Err(errno) => (-i64::from(errno.errno())) as u64,
                };
                println!(
                    "  exit HYPERCALL MAP_GPA_RANGE gpa={gpa:#x} pages={npages} -> {}: ret={}",
                    kind(to_private),
                    *hypercall.ret as i64
                );
            }
            VcpuExit::Hypercall(hypercall) => return Err(format!("unexpected hypercall {}", hypercall.nr)),
            VcpuExit::MmioRead(addr, data) => {
                let len = data.len();
                data.copy_from_slice(&device[..len]);
                println!("  exit MMIO read  {addr:#x} len={len} <- {:?}", String::from_utf8_lossy(data));
            }
            VcpuExit::MmioWrite(addr, data) => {
                println!("  exit MMIO write {addr:#x} len={} -> {:?}", data.len(), String::from_utf8_lossy(data));
                device[..data.len()].copy_from_slice(data);
            }
            VcpuExit::Hlt => break,
            VcpuExit::FailEntry(reason, cpu) => return Err(format!("KVM_EXIT_FAIL_ENTRY {reason:#x} on CPU {cpu}")),
        }
    }
    let outcomes = machine.vcpu.take_guest_outcomes();
    for (op, outcome) in &outcomes {
        println!("  guest {} -> {}", describe(op), show(outcome));
    }
    check(&outcomes, machine.gmem.is_some())
}

/// What the guest must have seen: on a VM with private memory its conversions succeeded and
/// page 1's private data was gone once the page became shared (the guest_memfd was punched);
/// on a DEFAULT VM the kernel answered the conversion requests itself (`-KVM_ENOSYS`: the exit
/// is not enabled) and the page kept its data. The device's reads return what the VMM wrote.
fn check(outcomes: &[(GuestOp, GuestOutcome)], private_mem: bool) -> Result<(), String> {
    const KVM_ENOSYS: u64 = 1000;
    let mapped = GuestOutcome::Mapped { ret: if private_mem { 0 } else { KVM_ENOSYS.wrapping_neg() } };
    let loaded = |bytes: &[u8]| GuestOutcome::Loaded(bytes.to_vec());
    let expected = [
        mapped.clone(),
        GuestOutcome::Stored,
        loaded(b"private!"),
        GuestOutcome::Stored,
        loaded(b"shared!!"),
        mapped,
        loaded(if private_mem { &[0; 8] } else { b"private!" }),
        loaded(b"device!\n"),
        GuestOutcome::Stored,
        loaded(b"written\n"),
    ];
    let got: Vec<&GuestOutcome> = outcomes.iter().map(|(_, outcome)| outcome).collect();
    if got.len() != expected.len() || got.iter().zip(&expected).any(|(got, want)| *got != want) {
        return Err(format!("the guest saw {got:?}, expected {expected:?}"));
    }
    Ok(())
}

/// The guest: make the first four pages private (and validated or accepted, on SNP and TDX),
/// store and read back private data, store to a private page as shared (an implicit
/// conversion), convert page 1 back to shared (its private data is gone), read and write the
/// device.
fn workload() -> GuestSequence {
    let page = |n: u64| RAM_BASE + n * PAGE;
    GuestSequence::new([
        GuestOp::MapGpaRange { gpa: page(0), size: 4 * PAGE, to_private: true },
        GuestOp::Store { gpa: page(1), data: b"private!".to_vec(), private: None },
        GuestOp::Load { gpa: page(1), len: 8, private: None },
        GuestOp::Store { gpa: page(2), data: b"shared!!".to_vec(), private: Some(false) },
        GuestOp::Load { gpa: page(2), len: 8, private: Some(false) },
        GuestOp::MapGpaRange { gpa: page(1), size: PAGE, to_private: false },
        GuestOp::Load { gpa: page(1), len: 8, private: Some(false) },
        GuestOp::Load { gpa: DEVICE, len: 8, private: Some(false) },
        GuestOp::Store { gpa: DEVICE, data: b"written\n".to_vec(), private: Some(false) },
        GuestOp::Load { gpa: DEVICE, len: 8, private: Some(false) },
    ])
}

/// QEMU's machine init for `vm_type`, and its launch for SEV-SNP and TDX.
fn build(vm_type: u64) -> Result<Machine, Errno> {
    let kvm = if vm_type == u64::from(KVM_X86_TDX_VM) {
        // TDX exists on an Intel host with the TDX module.
        Kvm::new_intel(gmem_kvm::KernelProfile::v6_18())
    } else {
        Kvm::new()?
    };
    let vm = kvm.create_vm_with_type(vm_type)?;
    let host = kvm.host().clone();
    let snp = vm_type == u64::from(KVM_X86_SNP_VM);
    let tdx = vm_type == u64::from(KVM_X86_TDX_VM);
    let private_mem = vm_type != u64::from(KVM_X86_DEFAULT_VM);
    let sev_fd = if snp {
        // sev_common_kvm_init: /dev/sev, KVM_SEV_INIT2.
        let sev_fd = host.open_dev_sev()?;
        vm.sev_init2(&kvm_sev_init::default()).map_err(|e| e.errno)?;
        Some(sev_fd)
    } else {
        None
    };
    if tdx {
        // tdx_kvm_init / tdx_pre_create_vcpu: KVM_TDX_INIT_VM with GPAW 48 (CPUID 0x80000008).
        let cpuid = [gmem_uapi::kvm_cpuid_entry2 { function: 0x8000_0008, eax: 48 << 16, ..Default::default() }];
        vm.tdx_init_vm(&gmem_uapi::kvm_tdx_init_vm::default(), &cpuid).map_err(|e| e.errno)?;
    }
    if private_mem {
        // Confidential guests convert with KVM_HC_MAP_GPA_RANGE: enable its exit.
        let cap = kvm_bindings::kvm_enable_cap {
            cap: KVM_CAP_EXIT_HYPERCALL,
            args: [1 << KVM_HC_MAP_GPA_RANGE, 0, 0, 0],
            ..Default::default()
        };
        vm.enable_cap(&cap)?;
    }
    if let Some(sev_fd) = sev_fd {
        let start = kvm_sev_snp_launch_start { policy: SNP_POLICY, ..Default::default() };
        vm.snp_launch_start(sev_fd, &start).map_err(|e| e.errno)?;
    }
    // ram_block_add: the shared backing and, with private memory, a guest_memfd.
    let hva = host.process().mmap_anonymous(RAM_SIZE)?;
    let gmem = if private_mem {
        Some(vm.create_guest_memfd(kvm_create_guest_memfd { size: RAM_SIZE, ..Default::default() })?)
    } else {
        None
    };
    let region = kvm_userspace_memory_region2 {
        slot: 0,
        flags: if gmem.is_some() { KVM_MEM_GUEST_MEMFD } else { 0 },
        guest_phys_addr: RAM_BASE,
        memory_size: RAM_SIZE,
        userspace_addr: hva,
        guest_memfd: gmem.map_or(0, |fd| fd as u32),
        ..Default::default()
    };
    // SAFETY: the simulator checks the region as the kernel does; the backing lives as long as
    // the simulated process.
    unsafe { vm.set_user_memory_region2(region) }?;
    if private_mem {
        // kvm_set_phys_mem: guest_memfd-backed RAM starts private.
        set_attributes(&vm, RAM_BASE, RAM_SIZE, true)?;
    }
    let vcpu = vm.create_vcpu(0)?;
    if let Some(sev_fd) = sev_fd {
        // sev_snp_launch_finish (no image to measure here).
        vm.snp_launch_finish(sev_fd, &kvm_sev_snp_launch_finish::default()).map_err(|e| e.errno)?;
    }
    if tdx {
        // tdx_finalize_vm.
        vcpu.tdx_init_vcpu(0).map_err(|e| e.errno)?;
        vm.tdx_finalize_vm().map_err(|e| e.errno)?;
    }
    Ok(Machine { kvm, vm, hva, gmem, vcpu })
}

/// `KVM_SET_MEMORY_ATTRIBUTES`.
fn set_attributes(vm: &VmFd, gpa: u64, size: u64, private: bool) -> Result<(), Errno> {
    let attributes = if private { u64::from(KVM_MEMORY_ATTRIBUTE_PRIVATE) } else { 0 };
    vm.set_memory_attributes(kvm_memory_attributes { address: gpa, size, attributes, flags: 0 })
}

/// QEMU's `kvm_convert_memory(gpa, size, to_private)`: attributes first, then discard the side
/// the range left. A range outside guest RAM may become shared (an MMIO hole), never private.
fn convert(
    kvm: &Kvm,
    vm: &VmFd,
    hva: u64,
    gmem: Option<RawFd>,
    gpa: u64,
    size: u64,
    to_private: bool,
) -> Result<(), Errno> {
    if gpa % PAGE != 0 || size % PAGE != 0 || size == 0 {
        return Err(Errno::EINVAL);
    }
    let end = gpa.checked_add(size).ok_or(Errno::EINVAL)?;
    if end <= RAM_BASE || gpa >= RAM_BASE + RAM_SIZE {
        return if to_private { Err(Errno::EINVAL) } else { Ok(()) };
    }
    // "Convert non guest_memfd backed memory region".
    let Some(gmem) = gmem else { return Err(Errno::EINVAL) };
    if gpa < RAM_BASE || end > RAM_BASE + RAM_SIZE {
        return Err(Errno::EINVAL);
    }
    set_attributes(vm, gpa, size, to_private)?;
    let offset = gpa - RAM_BASE;
    if to_private {
        // ram_block_discard_range: the shared copy is stale.
        kvm.host().process().madvise(hva + offset, size, MADV_DONTNEED)?;
    } else {
        // ram_block_discard_guest_memfd_range: the private copy is stale.
        kvm.host().fallocate(gmem, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset as i64, size as i64)?;
    }
    Ok(())
}

fn kind(private: bool) -> &'static str {
    if private {
        "private"
    } else {
        "shared"
    }
}

fn describe(op: &GuestOp) -> String {
    let access = |private: &Option<bool>| private.map_or("default", kind);
    match op {
        GuestOp::Load { gpa, len, private } => format!("load  {gpa:#x} len={len} ({})", access(private)),
        GuestOp::Store { gpa, data, private } => {
            format!("store {gpa:#x} {:?} ({})", String::from_utf8_lossy(data), access(private))
        }
        GuestOp::MapGpaRange { gpa, size, to_private } => {
            format!("map_gpa_range {gpa:#x} size={size:#x} -> {}", kind(*to_private))
        }
    }
}

fn show(outcome: &GuestOutcome) -> String {
    match outcome {
        GuestOutcome::Loaded(bytes) => format!("loaded {:?}", String::from_utf8_lossy(bytes)),
        GuestOutcome::Stored => "stored".to_string(),
        GuestOutcome::Mapped { ret } => format!("ret {}", *ret as i64),
        GuestOutcome::GuestFailed { instruction, code } => format!("{instruction} failed: {code:#x}"),
        GuestOutcome::Exception(exception) => {
            format!("{} at {:#x} ({})", exception.vector, exception.gpa, exception.reason)
        }
    }
}
