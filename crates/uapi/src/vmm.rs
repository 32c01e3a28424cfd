//! [`Vmm`]: a minimal virtual machine monitor over [`SimHost`], shaped after QEMU's handling of
//! confidential guest memory (`accel/kvm/kvm-all.c`, `system/physmem.c`; see
//! `arch-and-mmu.md` §4).
//!
//! Guest memory is split into equal regions. Each region is one memslot
//! (`KVM_SET_USER_MEMORY_REGION2`) with a shared backing (an anonymous mapping at its
//! `userspace_addr`, QEMU's RAMBlock host memory) and, for VM types with private memory, a
//! guest_memfd of its own (QEMU creates one per RAMBlock: `ram_block_add` →
//! `kvm_create_guest_memfd`). As in QEMU, a private-memory VM's whole memory starts PRIVATE
//! (`kvm_set_phys_mem` sets the attribute on every new guest_memfd memslot).
//!
//! Conversions follow `kvm_convert_memory`: set the attributes first
//! (`KVM_SET_MEMORY_ATTRIBUTES`, which zaps the old kind's SPTEs so a vCPU cannot fault it back
//! in), then discard the now-stale backing: the shared backing (`ram_block_discard_range`,
//! `MADV_DONTNEED`) when converting to private, the guest_memfd range
//! (`ram_block_discard_guest_memfd_range`, `fallocate(PUNCH_HOLE|KEEP_SIZE)`) when converting to
//! shared. A `KVM_EXIT_MEMORY_FAULT` is handled the same way (`kvm_cpu_exec`: convert to the
//! kind the guest asked for, then re-enter), and so is the guest's explicit conversion request,
//! the `KVM_HC_MAP_GPA_RANGE` hypercall, whose exit the VMM enables for VMs with private memory
//! (`KVM_CAP_EXIT_HYPERCALL`) and handles in [`Vmm::guest_map_gpa_range`]
//! (`kvm_handle_hc_map_gpa_range`).
//!
//! Guest RAM is one 2M-aligned anonymous block madvised `MADV_HUGEPAGE` (`qemu_ram_mmap`,
//! `ram_block_add`), each region at its gpa's offset in it, so shared memory can be mapped with
//! 2M leaves where the memslot allows.
//!
//! An SEV-SNP VM (`KVM_X86_SNP_VM`) is set up as QEMU's `sev-snp-guest` machine sets it up
//! (`target/i386/sev.c`): `/dev/sev` is opened and `KVM_SEV_INIT2` issued right after
//! `KVM_CREATE_VM` (`sev_common_kvm_init`), then `KVM_SEV_SNP_LAUNCH_START` with the policy
//! (`sev_snp_launch_start`), before any memslot or vCPU exists; the hypercall exit is enabled
//! and the memory starts PRIVATE as for any guest_memfd VM. Once the vCPUs exist,
//! [`Vmm::launch`] measures the boot image into private memory (`KVM_SEV_SNP_LAUNCH_UPDATE`,
//! looping on partial progress as `sev_snp_launch_update` does) and finishes the launch
//! (`KVM_SEV_SNP_LAUNCH_FINISH`, which also measures the vCPUs' VMSAs): that is QEMU's
//! `sev_snp_launch_finish`, run when the machine starts. The guest's page-state changes (the
//! GHCB MSR protocol and the PSC buffer) reach the VMM as `KVM_EXIT_HYPERCALL`
//! (`KVM_HC_MAP_GPA_RANGE`); [`Vmm::snp_psc_msr`] and [`Vmm::snp_vmgexit_psc`] run the vCPU
//! until KVM answers the guest, handling each exit with [`Vmm::handle_hypercall`] and
//! re-entering with `hypercall.ret` as `kvm_cpu_exec` does. The GHCB is the guest's choice of
//! page, not the VMM's.
//!
//! A TDX VM (`KVM_X86_TDX_VM`, on an Intel host: [`SimHost::new_intel`]) is set up as QEMU's
//! `tdx-guest` machine sets it up (`target/i386/kvm/tdx.c`): `tdx_kvm_init` reads
//! `KVM_TDX_CAPABILITIES` (growing the CPUID buffer while the kernel answers E2BIG) and refuses
//! attributes the platform does not offer, the hypercall exit is enabled and the memory starts
//! PRIVATE as for any guest_memfd VM; `KVM_TDX_INIT_VM` (the TD's attributes, by default
//! [`TDX_TD_ATTR_SEPT_VE_DISABLE`] as Linux guests require; CPUID leaf 0x80000008 with GPAW 48)
//! comes before the first vCPU is created (`tdx_pre_create_vcpu`). [`Vmm::launch`] is QEMU's
//! `tdx_finalize_vm`, run when the machine starts: `KVM_TDX_INIT_VCPU` on every vCPU, the boot
//! image into private memory with `KVM_TDX_INIT_MEM_REGION` and
//! `KVM_TDX_MEASURE_MEMORY_REGION` (repeated while it makes partial progress), then
//! `KVM_TDX_FINALIZE_VM`; MRTD is [`Vmm::mrtd`]. The guest's conversions
//! (`TDG.VP.VMCALL<MapGPA>`) reach the VMM as `KVM_EXIT_HYPERCALL` (`KVM_HC_MAP_GPA_RANGE`, one
//! per 2 MiB chunk) and are handled by [`Vmm::handle_hypercall`] in QEMU's order, the vCPU
//! re-entered with `hypercall.ret` ([`Vmm::tdx_map_gpa`], [`Vmm::tdx_enc_status_changed`]). A
//! TD's shared accesses use the gpa with the shared bit ([`Vmm::shared_bit`]).
//!
//! VMM-level operations (conversions, hole punching, memslot changes, closing a guest_memfd)
//! are serialised by one lock, as QEMU runs them under the BQL; guest accesses
//! ([`Vmm::guest_access`]) take no VMM lock, as vCPU threads run `KVM_RUN` outside it.
//!
//! Discarding shared backing (`MADV_DONTNEED`) reaches KVM through the MMU notifier of the VM
//! owner's address space, as in the kernel; QEMU's order (attributes first) means the
//! attribute change has already zapped the shared SPTEs of a range converted to private.

use crate::host::{SevError, SimHost, TdxError};
use crate::Result;
use gmem_arch::sev::measure::SnpPageType;
use gmem_arch::tdx::kvm::{
    kvm_tdx_init_mem_region, kvm_tdx_init_vm, TdxVm, KVM_MAX_CPUID_ENTRIES, KVM_TDX_MEASURE_MEMORY_REGION,
};
use gmem_kvm::attributes::KVM_MEMORY_ATTRIBUTE_PRIVATE;
use gmem_kvm::caps::{KVM_CAP_EXIT_HYPERCALL, KVM_EXIT_HYPERCALL_VALID_MASK, KVM_HC_MAP_GPA_RANGE};
use gmem_kvm::invariants::{self, Violation};
use gmem_kvm::memslot::{UserspaceMemoryRegion2, KVM_MEM_GUEST_MEMFD};
use gmem_kvm::profile::VmType;
use gmem_kvm::tdp_mmu::TdpMmuStats;
use gmem_kvm::vcpu::{RunError, VcpuExit, VcpuStatValues, KVM_MAP_GPA_RANGE_ENCRYPTED, KVM_MEMORY_EXIT_FLAG_PRIVATE};
use gmem_mm::filemap::MfResult;
use gmem_mm::types::{PAGE_SHIFT, PAGE_SIZE};
use gmem_mm::vfs::{FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, MADV_DONTNEED, MADV_HUGEPAGE};
use gmem_mm::Errno;
use gmem_sync::atomic::{AtomicU64, Ordering};
use gmem_sync::{LockClass, Mutex};
use kvm_bindings::{
    kvm_create_guest_memfd, kvm_memory_attributes, kvm_sev_init, kvm_sev_snp_launch_finish, kvm_sev_snp_launch_start,
    kvm_sev_snp_launch_update,
};

pub use gmem_arch::sev::ghcb::{
    GhcbResponse, PscEntry, GHCB_MSR_PSC_RESP, GHCB_MSR_PSC_RESP_ERROR, PSC_OP_PRIVATE, PSC_OP_SHARED,
    VMGEXIT_PSC_ERROR_GENERIC, VMGEXIT_PSC_MAX_COUNT,
};
pub use gmem_arch::sev::guest::{PVALIDATE_FAIL_INPUT, PVALIDATE_FAIL_NOUPDATE, PVALIDATE_FAIL_SIZEMISMATCH};
pub use gmem_arch::tdx::kvm::TDX_TD_ATTR_SEPT_VE_DISABLE;
pub use gmem_arch::tdx::run::{
    TdvmcallArgs, TdvmcallResult, TDVMCALL_MAP_GPA, TDVMCALL_STATUS_ALIGN_ERROR, TDVMCALL_STATUS_INVALID_OPERAND,
    TDVMCALL_STATUS_RETRY, TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED, TDVMCALL_STATUS_SUCCESS,
};
pub use gmem_arch::tdx::status::{TdxStatus, TDX_PAGE_ALREADY_ACCEPTED};

/// The VMM's big lock (QEMU's BQL): outermost, taken around every VMM-level operation.
static VMM_LOCK: LockClass = LockClass::new("vmm->bql");

/// `KVM_X86_DEFAULT_VM`.
pub const KVM_X86_DEFAULT_VM: u64 = 0;
/// `KVM_X86_SW_PROTECTED_VM`.
pub const KVM_X86_SW_PROTECTED_VM: u64 = 1;

/// `KVM_X86_SNP_VM`.
pub const KVM_X86_SNP_VM: u64 = 4;
/// `KVM_X86_TDX_VM`.
pub const KVM_X86_TDX_VM: u64 = 5;

/// The TD attributes QEMU's `tdx-guest` uses by default: `SEPT_VE_DISABLE` (Linux TD guests
/// refuse to run without it: a #VE on a private page they did not accept is fatal to them).
pub const TDX_DEFAULT_ATTRIBUTES: u64 = TDX_TD_ATTR_SEPT_VE_DISABLE;

/// The SNP guest policy QEMU's `sev-snp-guest` uses by default (`DEFAULT_SEV_SNP_POLICY`,
/// 0x30000): SMT allowed (bit 16) and the reserved must-be-one bit (bit 17).
pub const SNP_POLICY: u64 = (1 << 17) | (1 << 16);

/// The most `KVM_EXIT_HYPERCALL` exits one guest request can produce: a PSC buffer holds at
/// most [`VMGEXIT_PSC_MAX_COUNT`] entries and every exit completes at least one of them.
const MAX_EXITS_PER_REQUEST: u32 = VMGEXIT_PSC_MAX_COUNT as u32;

/// Where guest memory starts (above the first MiB, as a PC's RAM above the legacy hole).
pub const GUEST_MEMORY_BASE: u64 = 1 << 20;

/// A PMD-mapped huge page: the alignment of the RAM block.
const HPAGE_SIZE: u64 = 2 << 20;

/// How a [`Vmm`] lays out its VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmmConfig {
    /// `KVM_CREATE_VM`'s type.
    pub vm_type: u64,
    /// Guest memory in bytes (a multiple of `regions` pages).
    pub memory: u64,
    /// How many regions (memslots, and guest_memfds for private-memory VMs) it is split into.
    pub regions: u32,
}

/// One region of guest memory: a memslot, its shared backing and its guest_memfd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// The memslot id.
    pub slot: u32,
    /// The first guest physical address.
    pub gpa: u64,
    /// Its size in bytes.
    pub size: u64,
    /// The shared backing (`userspace_addr`).
    pub hva: u64,
    /// The guest_memfd descriptor, `None` for a VM without private memory or after
    /// [`Vmm::close_guest_memfd`].
    pub gmem_fd: Option<i32>,
    /// Whether the memslot is installed.
    pub present: bool,
}

impl Region {
    fn contains(&self, gpa: u64, size: u64) -> bool {
        gpa >= self.gpa && gpa.saturating_add(size) <= self.gpa + self.size
    }
}

/// Counters of what the VMM did.
#[derive(Debug, Default)]
pub struct VmmStats {
    /// `kvm_convert_memory` calls that succeeded, to private.
    pub to_private: AtomicU64,
    /// `kvm_convert_memory` calls that succeeded, to shared.
    pub to_shared: AtomicU64,
    /// `KVM_EXIT_MEMORY_FAULT` exits handled (each is a conversion).
    pub memory_fault_exits: AtomicU64,
    /// Hole punches on a guest_memfd (conversions to shared and explicit punches).
    pub punches: AtomicU64,
    /// Shared-backing discards (`MADV_DONTNEED`).
    pub discards: AtomicU64,
    /// Memslots deleted or added.
    pub memslot_changes: AtomicU64,
    /// Memory failures injected.
    pub memory_failures: AtomicU64,
    /// guest_memfds closed under a bound memslot.
    pub gmem_closes: AtomicU64,
    /// `KVM_EXIT_HYPERCALL` exits for `KVM_HC_MAP_GPA_RANGE` handled (each is a conversion).
    pub map_gpa_range_exits: AtomicU64,
    /// Of those, the ones whose conversion failed (answered to the guest with a non-zero
    /// `hypercall.ret` by [`Vmm::handle_hypercall`]; [`Vmm::guest_map_gpa_range`] returns the exit).
    pub map_gpa_range_failures: AtomicU64,
    /// `KVM_SEV_SNP_LAUNCH_UPDATE` (TDX: `KVM_TDX_INIT_MEM_REGION`) calls (one per partial step).
    pub launch_updates: AtomicU64,
    /// Pages measured into the guest by `KVM_SEV_SNP_LAUNCH_UPDATE` (TDX:
    /// `KVM_TDX_INIT_MEM_REGION`).
    pub launched_pages: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The VMM: one VM, its memory layout and its vCPUs, on a [`SimHost`].
#[derive(Debug)]
pub struct Vmm {
    host: SimHost,
    vm_fd: i32,
    private_mem: bool,
    /// `/dev/sev` (`sev_common->sev_fd`) for an SEV-SNP VM.
    sev_fd: Option<i32>,
    /// A TDX VM's attributes for `KVM_TDX_INIT_VM` (`None` for other VM types).
    tdx_attributes: Option<u64>,
    /// A TD's shared bit as a gpa bit, once `KVM_TDX_INIT_VM` set it (0 before, and for other
    /// VM types).
    shared_bit: AtomicU64,
    regions: Mutex<Vec<Region>>,
    vcpu_fds: Mutex<Vec<i32>>,
    /// What the VMM did.
    pub stats: VmmStats,
}

impl Vmm {
    /// Creates the VM and its memory (QEMU's machine init: `kvm_init` → `KVM_CREATE_VM`, then
    /// `ram_block_add` and `kvm_set_phys_mem` per region). A TDX VM gets
    /// [`TDX_DEFAULT_ATTRIBUTES`] ([`Vmm::new_tdx`] chooses others).
    pub fn new(host: SimHost, config: VmmConfig) -> Result<Vmm> {
        Vmm::with_tdx_attributes(host, config, TDX_DEFAULT_ATTRIBUTES)
    }

    /// A TDX VM (`config.vm_type` must be [`KVM_X86_TDX_VM`], else EINVAL) whose TD has
    /// `attributes` (QEMU's `tdx-guest` `attributes` / `sept-ve-disable` properties): 0 lets the
    /// guest take a #VE for a private page it did not accept, where
    /// [`TDX_TD_ATTR_SEPT_VE_DISABLE`] makes such an access fatal for the TD.
    pub fn new_tdx(host: SimHost, config: VmmConfig, attributes: u64) -> Result<Vmm> {
        if config.vm_type != KVM_X86_TDX_VM {
            return Err(Errno::EINVAL);
        }
        Vmm::with_tdx_attributes(host, config, attributes)
    }

    fn with_tdx_attributes(host: SimHost, config: VmmConfig, attributes: u64) -> Result<Vmm> {
        let regions = config.regions.max(1) as u64;
        if config.memory == 0 || config.memory % (regions * PAGE_SIZE) != 0 {
            return Err(Errno::EINVAL);
        }
        let vm_type = VmType::from_raw(config.vm_type);
        let private_mem = vm_type.is_some_and(|t| t.has_private_mem());
        let vm_fd = host.create_vm(config.vm_type)?;
        let mut vmm = Vmm {
            host,
            vm_fd,
            private_mem,
            sev_fd: None,
            tdx_attributes: (vm_type == Some(VmType::Tdx)).then_some(attributes),
            shared_bit: AtomicU64::new(0),
            regions: Mutex::new(&VMM_LOCK, Vec::new()),
            vcpu_fds: Mutex::new(&VMM_LOCK, Vec::new()),
            stats: VmmStats::default(),
        };
        if vm_type == Some(VmType::SevSnp) {
            // sev_common_kvm_init: open the SEV device, KVM_SEV_INIT2 (default VMSA features and
            // GHCB version), before any memory or vCPU.
            let sev_fd = vmm.host.open_dev_sev()?;
            vmm.sev_fd = Some(sev_fd);
            vmm.host.sev_init2(vm_fd, &kvm_sev_init::default()).map_err(sev_errno)?;
        }
        if let Some(attributes) = vmm.tdx_attributes {
            // tdx_kvm_init → get_tdx_capabilities: grow the CPUID buffer while it is too small.
            let mut nent = 6;
            let caps = loop {
                match vmm.host.tdx_capabilities(vm_fd, nent) {
                    Err(Errno::E2BIG) if nent < KVM_MAX_CPUID_ENTRIES => nent *= 2,
                    other => break other?.0,
                }
            };
            // tdx_kvm_init: "Invalid attributes".
            if attributes & !caps.supported_attrs != 0 {
                return Err(Errno::EINVAL);
            }
        }
        if private_mem {
            // Confidential guests convert with KVM_HC_MAP_GPA_RANGE: QEMU enables its exit
            // (sev_kvm_init / tdx_kvm_init: KVM_CAP_EXIT_HYPERCALL, KVM_EXIT_HYPERCALL_VALID_MASK).
            let cap = kvm_bindings::kvm_enable_cap {
                cap: KVM_CAP_EXIT_HYPERCALL as u32,
                args: [KVM_EXIT_HYPERCALL_VALID_MASK, 0, 0, 0],
                ..Default::default()
            };
            vmm.host.enable_cap(vmm.vm_fd, &cap)?;
        }
        if let Some(sev_fd) = vmm.sev_fd {
            // sev_common_kvm_init → sev_snp_launch_start: the guest context, with the policy.
            let start = kvm_sev_snp_launch_start { policy: SNP_POLICY, ..Default::default() };
            vmm.host.snp_launch_start(vm_fd, sev_fd, &start).map_err(sev_errno)?;
        }
        let size = config.memory / regions;
        // qemu_ram_mmap: one host block for all of guest RAM, 2M-aligned (QEMU_VMALLOC_ALIGN),
        // so every gpa and its hva agree modulo 2M and KVM may map huge pages (lpage_info
        // disallows them where gfn and hva disagree). The block starts at gpa 0; the legacy
        // first MiB below GUEST_MEMORY_BASE is not a memslot. A length that is a multiple of
        // 2M is placed 2M-aligned by the kernel.
        let block_len = (GUEST_MEMORY_BASE + config.memory).next_multiple_of(HPAGE_SIZE);
        let block = vmm.host.process().mmap_anonymous(block_len)?;
        // ram_block_add: qemu_madvise(QEMU_MADV_HUGEPAGE). The host runs THP in `madvise` mode,
        // so guest RAM gets THPs and shared memory can be mapped with 2M leaves.
        vmm.host.process().madvise(block, block_len, MADV_HUGEPAGE)?;
        let mut list = vmm.regions.lock();
        for slot in 0..regions as u32 {
            // ram_block_add: the shared backing and the guest_memfd.
            let gpa = GUEST_MEMORY_BASE + slot as u64 * size;
            let hva = block + gpa;
            let gmem_fd = if private_mem { Some(vmm.create_gmem(size)?) } else { None };
            let mut region = Region { slot, gpa, size, hva, gmem_fd, present: false };
            vmm.add_memslot_locked(&mut region)?;
            if private_mem {
                // kvm_set_phys_mem: a new guest_memfd region starts private.
                vmm.set_attributes(region.gpa, size, true)?;
            }
            list.push(region);
        }
        drop(list);
        Ok(vmm)
    }

    /// The host (process and kernel).
    pub fn host(&self) -> &SimHost {
        &self.host
    }

    /// The VM descriptor.
    pub fn vm_fd(&self) -> i32 {
        self.vm_fd
    }

    /// Whether the VM type has private memory (conversions exist).
    pub fn has_private_mem(&self) -> bool {
        self.private_mem
    }

    /// Whether the VM is an SEV-SNP guest.
    pub fn is_snp(&self) -> bool {
        self.sev_fd.is_some()
    }

    /// Whether the VM is a TD (`KVM_X86_TDX_VM`).
    pub fn is_tdx(&self) -> bool {
        self.tdx_attributes.is_some()
    }

    /// The shared bit of the guest's gpas (a TD's: gpa bit 47 with GPAW 48, known once
    /// `KVM_TDX_INIT_VM` ran); 0 for other VM types.
    pub fn shared_bit(&self) -> u64 {
        self.shared_bit.load(Ordering::Acquire)
    }

    /// The TD's MRTD as the TDX module holds it (frozen by `KVM_TDX_FINALIZE_VM`: what an
    /// attestation report would show); `None` for a VM that is not a finalized TD.
    pub fn mrtd(&self) -> Option<[u8; 48]> {
        let kvm = self.host.vm(self.vm_fd).ok()?;
        let vm = TdxVm::of(&kvm)?;
        vm.module().td_info(vm.tdr()?)?.mrtd
    }

    /// QEMU's `tdx_finalize_vm` (see the module docs): every vCPU's `KVM_TDX_INIT_VCPU`, the
    /// image measured into private memory at [`GUEST_MEMORY_BASE`] by `KVM_TDX_INIT_MEM_REGION`
    /// (from a staging buffer of the VMM process), `KVM_TDX_FINALIZE_VM`. Returns the pages
    /// added.
    fn tdx_launch(&self, image: &[u8]) -> std::result::Result<u64, LaunchError> {
        let vcpus = self.vcpu_fds();
        let Some(&first) = vcpus.first() else { return Err(Errno::EINVAL.into()) };
        for &vcpu in &vcpus {
            // tdx_init_vcpus: RCX is the TD HOB's address for the guest firmware.
            self.host.tdx_init_vcpu(vcpu, GUEST_MEMORY_BASE)?;
        }
        if !image.is_empty() {
            let len = (image.len() as u64).next_multiple_of(PAGE_SIZE);
            let buffer = self.host.process().mmap_anonymous(len)?;
            let result = self
                .host
                .store(buffer, image)
                .map_err(|_| LaunchError::from(Errno::EFAULT))
                .and_then(|()| self.tdx_init_mem_region(first, GUEST_MEMORY_BASE, buffer, len));
            self.host.process().munmap(buffer, len)?;
            result?;
        }
        self.host.tdx_finalize_vm(self.vm_fd)?;
        Ok(image.len().div_ceil(PAGE_SIZE as usize) as u64)
    }

    /// `KVM_TDX_INIT_MEM_REGION` (measured) of `len` bytes at `gpa` from `uaddr`, repeated while
    /// it makes progress and fails with EINTR or EAGAIN (QEMU's loop); a call that does not
    /// advance the region is EIO.
    fn tdx_init_mem_region(&self, vcpu: i32, gpa: u64, uaddr: u64, len: u64) -> std::result::Result<(), LaunchError> {
        let mut region = kvm_tdx_init_mem_region { source_addr: uaddr, gpa, nr_pages: len / PAGE_SIZE };
        for _ in 0..=len / PAGE_SIZE {
            if region.nr_pages == 0 {
                return Ok(());
            }
            let before = region.nr_pages;
            let result = self.host.tdx_init_mem_region(vcpu, &mut region, KVM_TDX_MEASURE_MEMORY_REGION);
            bump(&self.stats.launch_updates);
            self.stats.launched_pages.fetch_add(before - region.nr_pages, Ordering::Relaxed);
            match result {
                Ok(()) => {}
                Err(error) if matches!(error.errno, Errno::EINTR | Errno::EAGAIN) && region.nr_pages < before => {}
                Err(error) => return Err(error.into()),
            }
        }
        if region.nr_pages != 0 {
            return Err(Errno::EIO.into());
        }
        Ok(())
    }

    /// `sev_snp_launch_finish` when the machine starts (after the vCPUs are created): the boot
    /// `image` is measured into private memory from [`GUEST_MEMORY_BASE`] (its last page padded
    /// with zeros), then `KVM_SEV_SNP_LAUNCH_FINISH` measures the vCPUs' VMSAs and seals the
    /// launch. The image is staged in a buffer of the VMM process, as QEMU's firmware loader
    /// holds it, and copied by `KVM_SEV_SNP_LAUNCH_UPDATE` (`sev_snp_launch_update`: the range
    /// is set PRIVATE first, then the call repeats while it makes partial progress). Returns
    /// the pages measured. ENOTTY for a VM that is neither an SNP guest nor a TD; EIO if the
    /// kernel stops making progress or ends the update anywhere but at the image's end. A TD's
    /// launch is QEMU's `tdx_finalize_vm` (see the module docs; MRTD is [`Vmm::mrtd`]).
    pub fn launch(&self, image: &[u8]) -> std::result::Result<u64, LaunchError> {
        if self.is_tdx() {
            return self.tdx_launch(image);
        }
        Ok(self.snp_launch(image)?)
    }

    fn snp_launch(&self, image: &[u8]) -> std::result::Result<u64, SevError> {
        let sev_fd = self.sev_fd.ok_or(Errno::ENOTTY)?;
        if !image.is_empty() {
            let len = (image.len() as u64).next_multiple_of(PAGE_SIZE);
            let buffer = self.host.process().mmap_anonymous(len)?;
            let result = self
                .host
                .store(buffer, image)
                .map_err(|_| SevError::from(Errno::EFAULT))
                .and_then(|()| self.launch_update(sev_fd, GUEST_MEMORY_BASE, buffer, len));
            self.host.process().munmap(buffer, len)?;
            result?;
        }
        self.host.snp_launch_finish(self.vm_fd, sev_fd, &kvm_sev_snp_launch_finish::default())?;
        Ok(image.len().div_ceil(PAGE_SIZE as usize) as u64)
    }

    /// `sev_snp_launch_update` of `len` bytes at `gpa` from the user buffer `uaddr`.
    fn launch_update(&self, sev_fd: i32, gpa: u64, uaddr: u64, len: u64) -> std::result::Result<(), SevError> {
        // KVM_SEV_SNP_LAUNCH_UPDATE requires the range to be PRIVATE already.
        self.set_attributes(gpa, len, true)?;
        let mut update = kvm_sev_snp_launch_update {
            gfn_start: gpa >> PAGE_SHIFT,
            uaddr,
            len,
            type_: SnpPageType::Normal as u8,
            ..Default::default()
        };
        // Every successful call measures at least one page (the kernel returns an error
        // otherwise), so `len / 4K` calls suffice; one that does not advance ends the loop.
        for _ in 0..len / PAGE_SIZE {
            if update.len == 0 {
                break;
            }
            let before = update.len;
            self.host.snp_launch_update(self.vm_fd, sev_fd, &mut update)?;
            bump(&self.stats.launch_updates);
            self.stats.launched_pages.fetch_add((before - update.len) / PAGE_SIZE, Ordering::Relaxed);
            if update.len >= before {
                return Err(Errno::EIO.into());
            }
        }
        if update.len != 0 || update.gfn_start << PAGE_SHIFT != gpa + len {
            return Err(Errno::EIO.into());
        }
        Ok(())
    }

    /// The SNP launch digest as the firmware holds it (what an attestation report would show as
    /// MEASUREMENT); `None` for a VM that is not an SNP guest.
    pub fn launch_digest(&self) -> Option<[u8; 48]> {
        self.host.snp_launch_digest(self.vm_fd).ok().flatten()
    }

    /// A copy of the memory layout.
    pub fn regions(&self) -> Vec<Region> {
        self.regions.lock().clone()
    }

    /// `KVM_CREATE_VCPU` (`kvm_init_vcpu`). For a TD the first one is preceded by
    /// `KVM_TDX_INIT_VM` (`kvm_arch_pre_create_vcpu` → `tdx_pre_create_vcpu`).
    pub fn create_vcpu(&self, id: u64) -> Result<i32> {
        if let Some(attributes) = self.tdx_attributes {
            let kvm = self.host.vm(self.vm_fd)?;
            let initialized = TdxVm::of(&kvm).is_some_and(|vm| vm.tdr().is_some());
            drop(kvm);
            if !initialized {
                // tdx_pre_create_vcpu: the TD's attributes, and CPUID leaf 0x80000008 with
                // GPAW 48 in EAX[23:16].
                let init_vm = kvm_tdx_init_vm { attributes, ..Default::default() };
                let cpuid =
                    [kvm_bindings::kvm_cpuid_entry2 { function: 0x8000_0008, eax: 48 << 16, ..Default::default() }];
                self.host.tdx_init_vm(self.vm_fd, &init_vm, &cpuid).map_err(tdx_errno)?;
                let kvm = self.host.vm(self.vm_fd)?;
                self.shared_bit.store(kvm.gfn_direct_bits() << PAGE_SHIFT, Ordering::Release);
            }
        }
        let fd = self.host.create_vcpu(self.vm_fd, id)?;
        self.vcpu_fds.lock().push(fd);
        Ok(fd)
    }

    /// The vCPU descriptors, in creation order.
    pub fn vcpu_fds(&self) -> Vec<i32> {
        self.vcpu_fds.lock().clone()
    }

    /// One guest access by a vCPU within one page (one `KVM_RUN` that executes a load or store),
    /// without handling its exit: see [`Vmm::handle_exit`]. The access is the VM type's default
    /// kind (private where the page's attribute says so on SW_PROTECTED).
    pub fn guest_access(
        &self,
        vcpu_fd: i32,
        gpa: u64,
        buf: &mut [u8],
        write: bool,
    ) -> std::result::Result<(), RunError> {
        let in_page = (gpa & (PAGE_SIZE - 1)) as usize;
        if in_page + buf.len() > PAGE_SIZE as usize {
            return Err(RunError::Errno(Errno::EINVAL));
        }
        self.host.guest_access(vcpu_fd, gpa, buf, write, None)
    }

    /// The guest asks to convert `[gpa, gpa + size)` (the `KVM_HC_MAP_GPA_RANGE` hypercall a
    /// confidential guest issues before it changes a page's encryption) and the VMM handles the
    /// `KVM_EXIT_HYPERCALL` as QEMU's `kvm_handle_hc_map_gpa_range` does:
    /// `kvm_convert_memory(gpa, npages * 4K, attrs & KVM_MAP_GPA_RANGE_ENCRYPTED)`. Returns what
    /// the guest gets in RAX: 0 when the conversion succeeded (the kernel zeroes
    /// `hypercall.ret` before the exit), or the kernel's own answer when it completed the call
    /// without an exit (`-KVM_ENOSYS`, `-KVM_EINVAL`, two's complement). A failed conversion is
    /// returned as the exit: QEMU stops the vCPU (an internal error) rather than answer the
    /// guest. (QEMU 10.1+ then pre-faults the range, ignoring failures; the model does not.)
    #[doc(alias("kvm_convert_memory", "kvm_handle_hc_map_gpa_range", "kvm_handle_hypercall"))]
    pub fn guest_map_gpa_range(
        &self,
        vcpu_fd: i32,
        gpa: u64,
        size: u64,
        to_private: bool,
    ) -> std::result::Result<u64, RunError> {
        let attrs = if to_private { KVM_MAP_GPA_RANGE_ENCRYPTED } else { 0 };
        match self.host.guest_hypercall(vcpu_fd, KVM_HC_MAP_GPA_RANGE, gpa, size >> PAGE_SHIFT, attrs) {
            Ok(rax) => Ok(rax),
            Err(RunError::Exit(VcpuExit::Hypercall { nr, args, .. })) if nr == KVM_HC_MAP_GPA_RANGE => {
                // kvm_handle_hc_map_gpa_range: only for machines that require guest_memfd.
                let exit = RunError::Exit(VcpuExit::Hypercall { nr, args, flags: 0 });
                if !self.private_mem {
                    return Err(exit);
                }
                let (gpa, size, attributes) = (args[0], args[1] << PAGE_SHIFT, args[2]);
                bump(&self.stats.map_gpa_range_exits);
                self.convert(gpa, size, attributes & KVM_MAP_GPA_RANGE_ENCRYPTED != 0).map_err(|_| {
                    bump(&self.stats.map_gpa_range_failures);
                    exit
                })?;
                Ok(0)
            }
            Err(other) => Err(other),
        }
    }

    /// A guest access with an explicit kind: `private` is the C-bit of an SEV-SNP guest's
    /// page-table entry (an SNP guest chooses it per access; the attribute only decides whether
    /// KVM exits for a mismatch), and for a TD the absence of the shared bit, which a shared
    /// access adds to `gpa` here ([`Vmm::shared_bit`]). Otherwise as [`Vmm::guest_access`].
    pub fn guest_access_as(
        &self,
        vcpu_fd: i32,
        gpa: u64,
        buf: &mut [u8],
        write: bool,
        private: bool,
    ) -> std::result::Result<(), RunError> {
        let in_page = (gpa & (PAGE_SIZE - 1)) as usize;
        if in_page + buf.len() > PAGE_SIZE as usize {
            return Err(RunError::Errno(Errno::EINVAL));
        }
        let gpa = if private { gpa } else { gpa | self.shared_bit() };
        self.host.guest_access(vcpu_fd, gpa, buf, write, Some(private))
    }

    /// The TD guest's `TDG.VP.VMCALL<MapGPA>(gpa, size)` run to KVM's answer: every
    /// `KVM_EXIT_HYPERCALL` (one per 2 MiB chunk) handled by [`Vmm::handle_hypercall`] and the
    /// vCPU re-entered with `hypercall.ret`, as `kvm_cpu_exec` does. R10 and R11 as the guest
    /// finds them. Bounded by the number of chunks (more exits: EIO).
    pub fn tdx_map_gpa(&self, vcpu_fd: i32, gpa: u64, size: u64) -> std::result::Result<TdvmcallResult, RunError> {
        let mut step = self.host.tdx_map_gpa(vcpu_fd, gpa, size);
        for _ in 0..=size.div_ceil(gmem_arch::tdx::run::TDX_MAP_GPA_MAX_LEN) {
            match step {
                Err(exit @ RunError::Exit(VcpuExit::Hypercall { .. })) => {
                    let ret = self.handle_hypercall(exit)?;
                    step = self.host.tdx_complete_hypercall(vcpu_fd, ret);
                }
                other => return other,
            }
        }
        Err(RunError::Errno(Errno::EIO))
    }

    /// A Linux TD guest's conversion of `[start, end)` (private gpas) to private (`enc`) or
    /// shared: `tdx_enc_status_changed` (MapGPA with its retries, then ACCEPT of every page when
    /// converting to private), the VMM handling each `KVM_EXIT_HYPERCALL`
    /// ([`Vmm::handle_hypercall`]). True if the guest's routine succeeded.
    pub fn tdx_enc_status_changed(
        &self,
        vcpu_fd: i32,
        start: u64,
        end: u64,
        enc: bool,
    ) -> std::result::Result<bool, RunError> {
        self.host.tdx_enc_status_changed(vcpu_fd, start, end, enc, |exit| self.handle_hypercall(exit))
    }

    /// The TD guest's `TDG.MEM.PAGE.ACCEPT` of the 4K page at `gpa`: the TDCALL's status.
    pub fn tdx_accept(&self, vcpu_fd: i32, gpa: u64) -> std::result::Result<TdxStatus, RunError> {
        self.host.tdx_accept(vcpu_fd, gpa)
    }

    /// `kvm_handle_hypercall` for a `KVM_EXIT_HYPERCALL` the guest's request produced: for
    /// `KVM_HC_MAP_GPA_RANGE`, `kvm_handle_hc_map_gpa_range` → `kvm_convert_memory(args[0],
    /// args[1] * 4K, args[2] & KVM_MAP_GPA_RANGE_ENCRYPTED)` (attributes first, then the
    /// discard; the page-size bit is not looked at). Returns `hypercall.ret` for the re-entry:
    /// 0 when the conversion succeeded, else the negative errno (two's complement), which KVM
    /// turns into an error for the guest (`VMGEXIT_PSC_ERROR_GENERIC` for a PSC buffer, the
    /// MSR protocol's error response), so a failure is never dropped (V3); it is also counted
    /// in [`VmmStats::map_gpa_range_failures`]. (QEMU instead stops the vCPU with an internal
    /// error when `kvm_convert_memory` fails; answering the guest keeps the run going and makes
    /// the failure the guest's to see.) Any other exit, or this one on a VM without private
    /// memory (QEMU: `-EINVAL`, the vCPU stops), is returned.
    pub fn handle_hypercall(&self, exit: RunError) -> std::result::Result<u64, RunError> {
        let RunError::Exit(VcpuExit::Hypercall { nr, args, .. }) = exit else { return Err(exit) };
        if nr != KVM_HC_MAP_GPA_RANGE || !self.private_mem {
            return Err(exit);
        }
        bump(&self.stats.map_gpa_range_exits);
        let result = args[1]
            .checked_mul(PAGE_SIZE)
            .ok_or(Errno::EINVAL)
            .and_then(|size| self.convert(args[0], size, args[2] & KVM_MAP_GPA_RANGE_ENCRYPTED != 0));
        match result {
            Ok(()) => Ok(0),
            Err(errno) => {
                bump(&self.stats.map_gpa_range_failures);
                tracing::debug!("kvm_handle_hc_map_gpa_range: conversion failed: {errno:?}");
                Ok(errno.to_kernel() as u64)
            }
        }
    }

    /// The rest of `KVM_RUN` after a guest request (`step` is what the first entry returned):
    /// every `KVM_EXIT_HYPERCALL` is handled ([`Vmm::handle_hypercall`]) and the vCPU re-entered
    /// with `hypercall.ret` ([`SimHost::complete_hypercall`]) until KVM answers the guest.
    /// Anything else ends it. Bounded: a request needs at most one exit per PSC entry; more is
    /// EIO.
    fn finish_guest_request(
        &self,
        vcpu_fd: i32,
        mut step: std::result::Result<GhcbResponse, RunError>,
    ) -> std::result::Result<GhcbResponse, RunError> {
        for _ in 0..=MAX_EXITS_PER_REQUEST {
            match step {
                Err(exit @ RunError::Exit(VcpuExit::Hypercall { .. })) => {
                    let ret = self.handle_hypercall(exit)?;
                    step = self.host.complete_hypercall(vcpu_fd, ret);
                }
                other => return other,
            }
        }
        Err(RunError::Errno(Errno::EIO))
    }

    /// The SNP guest's page-state change of the 4K page at `gpa` by the GHCB MSR protocol (what
    /// a Linux guest uses before its GHCB is set up, `early_set_pages_state`), run to KVM's
    /// answer: the MSR value the guest reads back ([`GHCB_MSR_PSC_RESP`] on success).
    pub fn snp_psc_msr(&self, vcpu_fd: i32, gpa: u64, to_private: bool) -> std::result::Result<GhcbResponse, RunError> {
        let op = if to_private { PSC_OP_PRIVATE } else { PSC_OP_SHARED };
        let first = self.host.snp_psc_msr(vcpu_fd, gpa, op);
        self.finish_guest_request(vcpu_fd, first)
    }

    /// The SNP guest's `VMGEXIT(SVM_VMGEXIT_PSC)` with the PSC buffer it wrote into the shared
    /// buffer of its GHCB at `ghcb_gpa`, run to KVM's answer (`SW_EXITINFO2`: 0 or a
    /// `VMGEXIT_PSC_ERROR_*`; or [`GhcbResponse::Ignored`] if KVM could not map the GHCB).
    pub fn snp_vmgexit_psc(&self, vcpu_fd: i32, ghcb_gpa: u64) -> std::result::Result<GhcbResponse, RunError> {
        let first = self.host.snp_vmgexit_psc(vcpu_fd, ghcb_gpa);
        self.finish_guest_request(vcpu_fd, first)
    }

    /// A Linux SNP guest's `set_pages_state` of `npages` contiguous pages from `gpa` with its
    /// GHCB at `ghcb_gpa` (rescind, PSC, validate; [`SimHost::snp_set_pages_state`]), the VMM
    /// handling each exit: the final PSC status.
    pub fn snp_set_pages_state(
        &self,
        vcpu_fd: i32,
        ghcb_gpa: u64,
        gpa: u64,
        npages: u64,
        to_private: bool,
    ) -> std::result::Result<u64, RunError> {
        self.host.snp_set_pages_state(vcpu_fd, ghcb_gpa, gpa, npages, to_private, |exit| self.handle_hypercall(exit))
    }

    /// `kvm_cpu_exec`'s handling of an exit: `KVM_EXIT_MEMORY_FAULT` returned with EFAULT is a
    /// request to convert (`kvm_convert_memory(gpa, size, flags & PRIVATE)`) and re-enter;
    /// anything else is returned to the caller (MMIO is the device model's, a hardware-poison
    /// exit is an MCE for the guest). Returns the exit it could not handle.
    pub fn handle_exit(&self, error: RunError) -> std::result::Result<(), RunError> {
        match error {
            RunError::Exit(VcpuExit::MemoryFault { gpa, size, flags, errno: Errno::EFAULT }) => {
                if flags & !KVM_MEMORY_EXIT_FLAG_PRIVATE != 0 {
                    return Err(error); // unknown flags: QEMU reports an error
                }
                // A region whose memslot is being re-added, or whose guest_memfd was closed, has
                // no guest_memfd-backed memslot: kvm_convert_memory refuses it (step 3).
                let backed = self
                    .regions
                    .lock()
                    .iter()
                    .find(|r| r.contains(gpa, size))
                    .is_some_and(|r| r.present && r.gmem_fd.is_some());
                if !backed {
                    return Err(error);
                }
                bump(&self.stats.memory_fault_exits);
                self.convert(gpa, size, flags & KVM_MEMORY_EXIT_FLAG_PRIVATE != 0).map_err(|_| error)
            }
            other => Err(other),
        }
    }

    /// `kvm_convert_memory(start, size, to_private)`. Each region is a RAM block of its own
    /// (it has its own guest_memfd), so a range that runs from one region into the next is
    /// refused after its attributes changed, as QEMU refuses a range past its RAM block
    /// (`ram_block_attributes_state_change`'s range check in QEMU 10.1+; before it,
    /// `ram_block_discard_range`'s overrun check for a conversion to private).
    pub fn convert(&self, gpa: u64, size: u64, to_private: bool) -> Result<()> {
        // 1. Alignment.
        if gpa & (PAGE_SIZE - 1) != 0 || size & (PAGE_SIZE - 1) != 0 || size == 0 {
            return Err(Errno::EINVAL);
        }
        let end = gpa.checked_add(size).ok_or(Errno::EINVAL)?;
        let regions = self.regions.lock();
        // 2. memory_region_find: the first region the range meets. None → to-shared is
        //    accepted (MMIO holes), to-private not.
        let Some(region) = regions.iter().find(|r| r.gpa < end && gpa < r.gpa + r.size).copied() else {
            return if to_private { Err(Errno::EINVAL) } else { Ok(()) };
        };
        // 3. A region without guest_memfd cannot be converted (QEMU: "Convert non guest_memfd
        //    backed memory region").
        if !self.private_mem {
            return Err(Errno::EINVAL);
        }
        // 4. kvm_set_memory_attributes_private / _shared: attributes first. On failure nothing
        //    is discarded (V1).
        self.set_attributes(gpa, size, to_private)?;
        // 5. The range must lie in the RAM block: nothing is discarded otherwise.
        if !region.contains(gpa, size) {
            return Err(Errno::EINVAL);
        }
        // 6. Discard the stale backing.
        if to_private {
            // ram_block_discard_range on the shared backing: MADV_DONTNEED.
            self.discard_shared(&region, gpa, size)?;
            bump(&self.stats.to_private);
        } else {
            // ram_block_discard_guest_memfd_range: fallocate(PUNCH_HOLE | KEEP_SIZE).
            if region.gmem_fd.is_some() {
                self.punch_locked(&region, gpa, size)?;
            }
            bump(&self.stats.to_shared);
        }
        drop(regions);
        Ok(())
    }

    /// `KVM_SET_MEMORY_ATTRIBUTES` (`kvm_set_memory_attributes`).
    fn set_attributes(&self, gpa: u64, size: u64, private: bool) -> Result<()> {
        let attributes = if private { KVM_MEMORY_ATTRIBUTE_PRIVATE } else { 0 };
        self.host.set_memory_attributes(self.vm_fd, &kvm_memory_attributes { address: gpa, size, attributes, flags: 0 })
    }

    /// `ram_block_discard_range` on anonymous memory: `madvise(MADV_DONTNEED)`.
    fn discard_shared(&self, region: &Region, gpa: u64, size: u64) -> Result<()> {
        bump(&self.stats.discards);
        self.host.process().madvise(region.hva + (gpa - region.gpa), size, MADV_DONTNEED)
    }

    /// `ram_block_discard_guest_memfd_range`: punch `[gpa, gpa + size)` out of the region's
    /// guest_memfd. Also what a VMM does to drop poisoned private memory.
    pub fn punch_hole(&self, gpa: u64, size: u64) -> Result<()> {
        let regions = self.regions.lock();
        let region = regions.iter().find(|r| r.contains(gpa, size)).copied().ok_or(Errno::EINVAL)?;
        self.punch_locked(&region, gpa, size)
    }

    fn punch_locked(&self, region: &Region, gpa: u64, size: u64) -> Result<()> {
        let fd = region.gmem_fd.ok_or(Errno::EBADF)?;
        bump(&self.stats.punches);
        let offset = (gpa - region.gpa) as i64;
        self.host.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, size as i64)
    }

    /// A hardware memory error on the guest_memfd page behind `gpa` (`memory_failure` on the
    /// folio; KVM zaps it and later private faults exit with EHWPOISON).
    pub fn memory_failure(&self, gpa: u64) -> Result<MfResult> {
        let regions = self.regions.lock();
        let region = regions.iter().find(|r| r.contains(gpa, PAGE_SIZE)).copied().ok_or(Errno::EINVAL)?;
        let fd = region.gmem_fd.ok_or(Errno::EBADF)?;
        let result = self.host.inject_memory_failure(fd, (gpa - region.gpa) & !(PAGE_SIZE - 1));
        if result.is_ok() {
            bump(&self.stats.memory_failures);
        }
        result
    }

    /// Deletes region `index`'s memslot (`kvm_set_phys_mem` on a region being removed:
    /// `KVM_SET_USER_MEMORY_REGION2` with size 0). The backing stays.
    pub fn remove_memslot(&self, index: usize) -> Result<()> {
        let mut regions = self.regions.lock();
        let region = regions.get_mut(index).ok_or(Errno::EINVAL)?;
        if !region.present {
            return Ok(());
        }
        let mem = UserspaceMemoryRegion2 { slot: region.slot, guest_phys_addr: region.gpa, ..Default::default() };
        self.host.set_memory_region(self.vm_fd, &mem)?;
        region.present = false;
        bump(&self.stats.memslot_changes);
        Ok(())
    }

    /// Re-adds region `index`'s memslot with its backing (and guest_memfd, creating a new one
    /// if it was closed).
    pub fn add_memslot(&self, index: usize) -> Result<()> {
        let mut regions = self.regions.lock();
        let region = regions.get_mut(index).ok_or(Errno::EINVAL)?;
        if region.present {
            return Ok(());
        }
        if self.private_mem && region.gmem_fd.is_none() {
            region.gmem_fd = Some(self.create_gmem(region.size)?);
        }
        self.add_memslot_locked(region)
    }

    fn create_gmem(&self, size: u64) -> Result<i32> {
        self.host.create_guest_memfd(self.vm_fd, &kvm_create_guest_memfd { size, flags: 0, ..Default::default() })
    }

    fn add_memslot_locked(&self, region: &mut Region) -> Result<()> {
        let mem = UserspaceMemoryRegion2 {
            slot: region.slot,
            flags: if region.gmem_fd.is_some() { KVM_MEM_GUEST_MEMFD } else { 0 },
            guest_phys_addr: region.gpa,
            memory_size: region.size,
            userspace_addr: region.hva,
            guest_memfd_offset: 0,
            guest_memfd: region.gmem_fd.map_or(0, |fd| fd as u32),
        };
        self.host.set_memory_region(self.vm_fd, &mem)?;
        region.present = true;
        bump(&self.stats.memslot_changes);
        Ok(())
    }

    /// Closes region `index`'s guest_memfd while its memslot is still bound (and vCPUs may be
    /// running): the release unbinds it and zaps its private mappings; private faults in the
    /// region then exit with EFAULT until [`Vmm::replace_guest_memfd`].
    pub fn close_guest_memfd(&self, index: usize) -> Result<()> {
        let mut regions = self.regions.lock();
        let region = regions.get_mut(index).ok_or(Errno::EINVAL)?;
        let fd = region.gmem_fd.take().ok_or(Errno::EBADF)?;
        bump(&self.stats.gmem_closes);
        self.host.close(fd)
    }

    /// Recovers a region whose guest_memfd was closed: delete the memslot, create a fresh
    /// guest_memfd and add the memslot back (its private contents are gone).
    pub fn replace_guest_memfd(&self, index: usize) -> Result<()> {
        self.remove_memslot(index)?;
        self.add_memslot(index)
    }

    /// The VM's TDP MMU counters (`None` if it has no software TDP MMU).
    pub fn mmu_stats(&self) -> Option<TdpMmuStats> {
        let kvm = self.host.vm(self.vm_fd).ok()?;
        let stats = kvm.tdp_mmu().map(|tdp| tdp.stats());
        stats
    }

    /// The vCPUs' counters, each summed over the VM's vCPUs.
    pub fn vcpu_stats(&self) -> VcpuStatValues {
        self.vcpu_fds().into_iter().filter_map(|fd| self.host.vcpu(fd).ok()).map(|(_, vcpu)| vcpu.stat.values()).sum()
    }

    /// Checks every named invariant over the VM and its guest_memfds (call at a quiescent
    /// point: no vCPU access and no VMM operation in flight).
    pub fn check_invariants(&self) -> Vec<Violation> {
        let Ok(kvm) = self.host.vm(self.vm_fd) else { return Vec::new() };
        let regions = self.regions.lock();
        let files: Vec<_> =
            regions.iter().filter_map(|r| r.gmem_fd).filter_map(|fd| self.host.guest_memfd(fd).ok()).collect();
        drop(regions);
        let violations = invariants::check(&[kvm], &files);
        drop(files);
        self.host.process().syscall_exit(());
        violations
    }

    /// The guest physical address of page `page` of guest memory.
    pub fn page_gpa(page: u64) -> u64 {
        GUEST_MEMORY_BASE + (page << PAGE_SHIFT)
    }
}

/// A failed launch: the ioctl's errno and the status the firmware (SEV: `kvm_sev_cmd.error`) or
/// the TDX module (`kvm_tdx_cmd.hw_error`) left, 0 when neither was involved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchError {
    /// The ioctl's errno.
    pub errno: Errno,
    /// `kvm_sev_cmd.error` or `kvm_tdx_cmd.hw_error`.
    pub fw_error: u64,
}

impl From<Errno> for LaunchError {
    fn from(errno: Errno) -> Self {
        LaunchError { errno, fw_error: 0 }
    }
}

impl From<SevError> for LaunchError {
    fn from(error: SevError) -> Self {
        LaunchError { errno: error.errno, fw_error: u64::from(error.fw_error) }
    }
}

impl From<TdxError> for LaunchError {
    fn from(error: TdxError) -> Self {
        LaunchError { errno: error.errno, fw_error: error.hw_error }
    }
}

/// The errno of a failed TDX command (the SEAMCALL status is traced).
fn tdx_errno(error: TdxError) -> Errno {
    tracing::debug!("TDX command failed: {:?} (hw_error {:#x})", error.errno, error.hw_error);
    error.errno
}

/// The errno of a failed SEV command (the firmware status is traced).
fn sev_errno(error: SevError) -> Errno {
    tracing::debug!("SEV command failed: {:?} (fw_error {:#x})", error.errno, error.fw_error);
    error.errno
}

#[cfg(test)]
mod tests {
    use super::*;
    use gmem_kvm::KernelProfile;

    fn vmm() -> (Vmm, i32) {
        let host = SimHost::new(KernelProfile::v6_18());
        let vmm = Vmm::new(host, VmmConfig { vm_type: KVM_X86_SW_PROTECTED_VM, memory: 16 * PAGE_SIZE, regions: 2 })
            .expect("VMM");
        let vcpu = vmm.create_vcpu(0).expect("vCPU");
        (vmm, vcpu)
    }

    fn read(vmm: &Vmm, vcpu: i32, gpa: u64) -> [u8; 8] {
        let mut buf = [0u8; 8];
        vmm.guest_access(vcpu, gpa, &mut buf, false).expect("load");
        buf
    }

    /// shared → private → shared, with data written in each state: every conversion sets the
    /// attributes, then discards the backing of the kind left behind, so the guest reads zero
    /// each time and the stale side holds nothing.
    #[test]
    fn conversions_set_attributes_then_discard() {
        let (vmm, vcpu) = vmm();
        let gpa = Vmm::page_gpa(3);
        let region = vmm.regions()[0];
        vmm.convert(gpa, PAGE_SIZE, false).expect("to shared");
        let mut data = *b"shared!!";
        vmm.guest_access(vcpu, gpa, &mut data, true).expect("store shared");
        assert_eq!(&read(&vmm, vcpu, gpa), b"shared!!");
        let hva = region.hva + (gpa - region.gpa);
        assert_eq!(vmm.host().load(hva, 8).expect("host load"), b"shared!!");

        vmm.convert(gpa, PAGE_SIZE, true).expect("to private");
        // The shared backing was discarded (MADV_DONTNEED after the attribute change).
        assert_eq!(vmm.host().load(hva, 8).expect("host load"), [0; 8]);
        assert_eq!(read(&vmm, vcpu, gpa), [0; 8]);
        let mut data = *b"private!";
        vmm.guest_access(vcpu, gpa, &mut data, true).expect("store private");
        assert_eq!(&read(&vmm, vcpu, gpa), b"private!");

        vmm.convert(gpa, PAGE_SIZE, false).expect("to shared again");
        // The guest_memfd page was punched: no folio left behind.
        let file = vmm.host().guest_memfd(region.gmem_fd.expect("gmem")).expect("gmem file");
        let index = (gpa - region.gpa) >> PAGE_SHIFT;
        assert!(file.inode().mapping().folios().into_iter().all(|(i, _)| i.0 != index));
        drop(file);
        assert_eq!(read(&vmm, vcpu, gpa), [0; 8]);
        assert_eq!(vmm.stats.to_private.load(Ordering::Relaxed), 1);
        assert_eq!(vmm.stats.to_shared.load(Ordering::Relaxed), 2);
        assert!(vmm.check_invariants().is_empty());
        assert_eq!(vmm.host().machine().warnings.count(), 0);
    }

    /// A private access to a shared page exits with KVM_EXIT_MEMORY_FAULT; handling it converts
    /// the page, and the re-entered access succeeds.
    #[test]
    fn memory_fault_exit_converts() {
        let (vmm, vcpu) = vmm();
        let gpa = Vmm::page_gpa(1);
        vmm.convert(gpa, PAGE_SIZE, false).expect("to shared");
        let mut buf = [0u8; 8];
        let error = vmm.host().guest_access(vcpu, gpa, &mut buf, false, Some(true)).expect_err("mismatch");
        vmm.handle_exit(error).expect("handled");
        vmm.host().guest_access(vcpu, gpa, &mut buf, false, Some(true)).expect("re-entered");
        assert_eq!(vmm.stats.memory_fault_exits.load(Ordering::Relaxed), 1);
        assert!(vmm.check_invariants().is_empty());
    }

    /// Closing a bound guest_memfd and replacing it leaves a consistent VM.
    #[test]
    fn close_and_replace_guest_memfd() {
        let (vmm, vcpu) = vmm();
        let gpa = Vmm::page_gpa(9);
        let mut data = *b"private!";
        vmm.guest_access(vcpu, gpa, &mut data, true).expect("store");
        vmm.close_guest_memfd(1).expect("close");
        assert!(vmm.guest_access(vcpu, gpa, &mut data, false).is_err());
        vmm.replace_guest_memfd(1).expect("replace");
        assert_eq!(read(&vmm, vcpu, gpa), [0; 8]);
        assert!(vmm.check_invariants().is_empty());
        assert_eq!(vmm.host().machine().warnings.count(), 0);
    }

    /// The guest's conversion request: `KVM_HC_MAP_GPA_RANGE` exits (the VMM enabled the exit
    /// for a VM with private memory), the VMM converts the range as `kvm_convert_memory` does,
    /// and the guest gets 0. A private access to the page now exits; a shared one does not.
    #[test]
    fn map_gpa_range_hypercall_converts() {
        let (vmm, vcpu) = vmm();
        let gpa = Vmm::page_gpa(2);
        assert_eq!(vmm.guest_map_gpa_range(vcpu, gpa, 2 * PAGE_SIZE, false), Ok(0));
        assert_eq!(vmm.stats.map_gpa_range_exits.load(Ordering::Relaxed), 1);
        assert_eq!(vmm.stats.to_shared.load(Ordering::Relaxed), 1);
        let mut buf = [0u8; 8];
        vmm.host().guest_access(vcpu, gpa + PAGE_SIZE, &mut buf, true, Some(false)).expect("shared store");
        assert!(matches!(
            vmm.host().guest_access(vcpu, gpa, &mut buf, false, Some(true)),
            Err(RunError::Exit(VcpuExit::MemoryFault { flags: KVM_MEMORY_EXIT_FLAG_PRIVATE, .. }))
        ));
        assert_eq!(vmm.guest_map_gpa_range(vcpu, gpa, PAGE_SIZE, true), Ok(0));
        vmm.host().guest_access(vcpu, gpa, &mut buf, false, Some(true)).expect("private load");
        assert_eq!(vmm.stats.to_private.load(Ordering::Relaxed), 1);
        assert!(vmm.check_invariants().is_empty());
        assert_eq!(vmm.host().machine().warnings.count(), 0);
    }

    /// What the kernel answers itself, without an exit: `-KVM_EINVAL` for an unaligned gpa, no
    /// pages or a wrapping range; `-KVM_ENOSYS` for an unknown hypercall, or for
    /// `KVM_HC_MAP_GPA_RANGE` when user space did not enable its exit (a DEFAULT VM).
    #[test]
    fn map_gpa_range_errors_complete_in_the_kernel() {
        use gmem_kvm::vcpu::{KVM_EINVAL, KVM_ENOSYS};
        let (vmm, vcpu) = vmm();
        let einval = Ok(KVM_EINVAL.wrapping_neg());
        let host = vmm.host();
        assert_eq!(host.guest_hypercall(vcpu, KVM_HC_MAP_GPA_RANGE, Vmm::page_gpa(1) + 8, 1, 0), einval);
        assert_eq!(host.guest_hypercall(vcpu, KVM_HC_MAP_GPA_RANGE, Vmm::page_gpa(1), 0, 0), einval);
        assert_eq!(host.guest_hypercall(vcpu, KVM_HC_MAP_GPA_RANGE, Vmm::page_gpa(1), u64::MAX, 0), einval);
        assert_eq!(host.guest_hypercall(vcpu, 99, 0, 0, 0), Ok(KVM_ENOSYS.wrapping_neg()));
        assert_eq!(vmm.stats.map_gpa_range_exits.load(Ordering::Relaxed), 0);

        let host = SimHost::new(KernelProfile::v6_18());
        let vmm =
            Vmm::new(host, VmmConfig { vm_type: KVM_X86_DEFAULT_VM, memory: 16 * PAGE_SIZE, regions: 2 }).expect("VMM");
        let vcpu = vmm.create_vcpu(0).expect("vCPU");
        assert_eq!(vmm.guest_map_gpa_range(vcpu, Vmm::page_gpa(1), PAGE_SIZE, true), Ok(KVM_ENOSYS.wrapping_neg()));
    }

    /// `KVM_ENABLE_CAP(KVM_CAP_EXIT_HYPERCALL)`: flags and bits outside the valid mask are
    /// EINVAL, as is a capability the model does not offer; `args[0]` replaces the set.
    #[test]
    fn enable_cap_exit_hypercall_checks() {
        let (vmm, vcpu) = vmm();
        let host = vmm.host();
        let cap = |flags: u32, arg0: u64| kvm_bindings::kvm_enable_cap {
            cap: KVM_CAP_EXIT_HYPERCALL as u32,
            flags,
            args: [arg0, 0, 0, 0],
            ..Default::default()
        };
        assert_eq!(host.enable_cap(vmm.vm_fd(), &cap(1, KVM_EXIT_HYPERCALL_VALID_MASK)), Err(Errno::EINVAL));
        assert_eq!(host.enable_cap(vmm.vm_fd(), &cap(0, 1 << 5)), Err(Errno::EINVAL));
        let other = kvm_bindings::kvm_enable_cap { cap: 123_456, ..Default::default() };
        assert_eq!(host.enable_cap(vmm.vm_fd(), &other), Err(Errno::EINVAL));
        // On a vCPU it is the vCPU's KVM_ENABLE_CAP, which has no such capability.
        assert_eq!(host.enable_cap(vcpu, &cap(0, 0)), Err(Errno::EINVAL), "not a VM descriptor");
        // Clearing the set turns the exit off: the kernel answers -KVM_ENOSYS itself.
        assert_eq!(host.enable_cap(vmm.vm_fd(), &cap(0, 0)), Ok(()));
        let enosys = Ok(gmem_kvm::vcpu::KVM_ENOSYS.wrapping_neg());
        assert_eq!(vmm.guest_map_gpa_range(vcpu, Vmm::page_gpa(1), PAGE_SIZE, false), enosys);
    }

    fn snp_vmm(profile: KernelProfile, pages: u64) -> (Vmm, i32) {
        let vmm = Vmm::new(
            SimHost::new(profile),
            VmmConfig { vm_type: KVM_X86_SNP_VM, memory: pages * PAGE_SIZE, regions: 2 },
        )
        .expect("SNP VMM");
        let vcpu = vmm.create_vcpu(0).expect("vCPU");
        (vmm, vcpu)
    }

    fn is_vc(result: std::result::Result<(), RunError>) -> bool {
        matches!(result, Err(RunError::GuestException(e)) if e.vector == "#VC")
    }

    fn assert_clean(vmm: &Vmm) {
        assert_eq!(vmm.check_invariants(), Vec::new());
        assert!(vmm.host().machine().warnings.is_empty(), "{:?}", vmm.host().machine().warnings.snapshot());
    }

    /// The guest's GHCB at `gpa`, made shared the way a Linux guest does it before it has a
    /// GHCB: rescind, the MSR-protocol PSC (one exit the VMM handles), then registration.
    fn set_up_ghcb(vmm: &Vmm, vcpu: i32, gpa: u64) {
        let rc = vmm.host().snp_pvalidate(vcpu, gpa, false, false).expect("rescind");
        assert!(rc == 0 || rc == PVALIDATE_FAIL_NOUPDATE, "rescind: {rc}");
        assert_eq!(vmm.snp_psc_msr(vcpu, gpa, false), Ok(GhcbResponse::Msr(GHCB_MSR_PSC_RESP)));
        vmm.host().snp_register_ghcb(vcpu, gpa).expect("GHCB registered");
    }

    /// The SNP machine's setup and launch: INIT2 and LAUNCH_START before the memory and the
    /// vCPUs, then LAUNCH_UPDATE of the image (its last page padded) and LAUNCH_FINISH. The
    /// launch digest is the chain over the image's pages and the VMSA; the guest reads the image
    /// privately without validating it (the firmware left it Guest-Valid), while a page the
    /// launch did not cover is a #VC until the guest validates it, and then reads zero.
    #[test]
    fn snp_launch_measures_the_image_and_the_guest_reads_it() {
        use gmem_arch::sev::measure::LaunchDigest;
        for profile in [KernelProfile::v6_18(), KernelProfile::v6_14()] {
            let (vmm, vcpu) = snp_vmm(profile.clone(), 16);
            assert!(vmm.is_snp() && vmm.has_private_mem());
            let mut image = vec![0u8; 2 * PAGE_SIZE as usize + 7];
            image[..6].copy_from_slice(b"kernel");
            image[PAGE_SIZE as usize..PAGE_SIZE as usize + 6].copy_from_slice(b"initrd");
            image[2 * PAGE_SIZE as usize..].copy_from_slice(b"cmdline");
            assert_eq!(vmm.launch(&image), Ok(3), "{}", profile.name);
            assert_eq!(vmm.stats.launched_pages.load(Ordering::Relaxed), 3);
            assert!(vmm.stats.launch_updates.load(Ordering::Relaxed) >= 1);

            let mut expected = LaunchDigest::new();
            for (i, chunk) in image.chunks(PAGE_SIZE as usize).enumerate() {
                let mut page = [0u8; PAGE_SIZE as usize];
                page[..chunk.len()].copy_from_slice(chunk);
                expected.extend(SnpPageType::Normal, Vmm::page_gpa(i as u64), &page);
            }
            expected.extend(SnpPageType::Vmsa, gmem_arch::sev::kvm::INITIAL_VMSA_GPA, &[0; PAGE_SIZE as usize]);
            assert_eq!(vmm.launch_digest(), Some(*expected.as_bytes()), "{}", profile.name);

            let mut buf = [0u8; 8];
            vmm.guest_access_as(vcpu, Vmm::page_gpa(2), &mut buf, false, true).expect("launched page");
            assert_eq!(&buf[..7], b"cmdline");
            vmm.guest_access_as(vcpu, Vmm::page_gpa(1), &mut buf, false, true).expect("launched page");
            assert_eq!(&buf[..6], b"initrd");
            assert!(is_vc(vmm.guest_access_as(vcpu, Vmm::page_gpa(5), &mut buf, false, true)));
            assert_eq!(vmm.host().snp_pvalidate(vcpu, Vmm::page_gpa(5), false, true), Ok(0));
            vmm.guest_access_as(vcpu, Vmm::page_gpa(5), &mut buf, false, true).expect("validated");
            assert_eq!(buf, [0; 8]);
            // The image was staged outside guest RAM: the shared backing holds none of it.
            let region = vmm.regions()[0];
            assert_eq!(vmm.host().load(region.hva, 6).expect("host load"), [0; 6]);
            assert_clean(&vmm);
        }
        // Only an SNP guest has a launch.
        let (vmm, _) = vmm();
        assert_eq!(vmm.launch(b"image").map_err(|e| e.errno), Err(Errno::ENOTTY));
        assert_eq!(vmm.launch_digest(), None);
    }

    /// A PSC round trip through the VMM. The guest makes its GHCB shared with
    /// the MSR protocol, then converts two non-adjacent private pages to shared with one PSC
    /// buffer: KVM forwards each entry as its own KVM_HC_MAP_GPA_RANGE exit, the VMM sets the
    /// attributes and punches guest_memfd (the frames go back to the hypervisor in the RMP), and
    /// re-enters until KVM answers 0. Back to private, the shared backing is discarded and the
    /// guest validates and reads a fresh page.
    #[test]
    fn snp_psc_round_trip_through_the_vmm() {
        let (vmm, vcpu) = snp_vmm(KernelProfile::v6_18(), 16);
        vmm.launch(&[]).expect("launch");
        let ghcb = Vmm::page_gpa(1);
        set_up_ghcb(&vmm, vcpu, ghcb);
        assert_eq!(vmm.stats.to_shared.load(Ordering::Relaxed), 1);
        assert_eq!(vmm.stats.map_gpa_range_exits.load(Ordering::Relaxed), 1);

        let (a, b) = (Vmm::page_gpa(3), Vmm::page_gpa(5));
        let region = vmm.regions()[0];
        let file = vmm.host().guest_memfd(region.gmem_fd.expect("gmem")).expect("gmem file");
        let has_folio = |gpa: u64| {
            let index = (gpa - region.gpa) >> PAGE_SHIFT;
            file.inode().mapping().folios().into_iter().any(|(i, _)| i.0 == index)
        };
        for gpa in [a, b] {
            assert_eq!(vmm.host().snp_pvalidate(vcpu, gpa, false, true), Ok(0));
            vmm.guest_access_as(vcpu, gpa, &mut b"private!".clone(), true, true).expect("private store");
            assert!(has_folio(gpa));
            assert_eq!(vmm.host().snp_pvalidate(vcpu, gpa, false, false), Ok(0), "rescind");
        }
        let entries: Vec<PscEntry> = [a, b]
            .iter()
            .map(|gpa| PscEntry { cur_page: 0, gfn: gpa >> PAGE_SHIFT, operation: PSC_OP_SHARED, pagesize_2m: false })
            .collect();
        vmm.host().snp_write_psc_buffer(vcpu, ghcb, &entries).expect("PSC buffer");
        assert_eq!(vmm.snp_vmgexit_psc(vcpu, ghcb), Ok(GhcbResponse::ExitInfo2(0)));
        assert_eq!(vmm.stats.map_gpa_range_exits.load(Ordering::Relaxed), 3, "one exit per non-adjacent entry");
        assert_eq!(vmm.stats.to_shared.load(Ordering::Relaxed), 3);
        let (cur, end, done) = vmm.host().snp_read_psc_buffer(vcpu, ghcb, 2).expect("read back");
        assert_eq!((cur, end), (2, 1));
        assert!(done.iter().all(|entry| entry.cur_page == 1));
        assert!(!has_folio(a) && !has_folio(b), "punched");
        // A private access to a shared page exits; a shared one reaches the shared backing.
        assert!(matches!(
            vmm.guest_access_as(vcpu, a, &mut [0u8; 8], false, true),
            Err(RunError::Exit(VcpuExit::MemoryFault { flags: KVM_MEMORY_EXIT_FLAG_PRIVATE, .. }))
        ));
        vmm.guest_access_as(vcpu, a, &mut b"shared!!".clone(), true, false).expect("shared store");
        let hva = region.hva + (a - region.gpa);
        assert_eq!(vmm.host().load(hva, 8).expect("host load"), b"shared!!");

        assert_eq!(vmm.snp_set_pages_state(vcpu, ghcb, a, 1, true), Ok(0), "to private and validated");
        assert_eq!(vmm.stats.to_private.load(Ordering::Relaxed), 1);
        assert_eq!(vmm.host().load(hva, 8).expect("host load"), [0; 8], "shared backing discarded");
        let mut buf = [0xffu8; 8];
        vmm.guest_access_as(vcpu, a, &mut buf, false, true).expect("validated private page");
        assert_eq!(buf, [0; 8]);
        assert_eq!(vmm.stats.map_gpa_range_failures.load(Ordering::Relaxed), 0);
        drop(file);
        assert_clean(&vmm);
    }

    /// A conversion the VMM cannot make (to private outside guest RAM: `kvm_convert_memory`
    /// finds no region) is answered with `hypercall.ret != 0`, and the guest sees a PSC error:
    /// the MSR protocol's error response, or `VMGEXIT_PSC_ERROR_GENERIC` with the entries done
    /// before it marked complete and the failed one not. Nothing else changed.
    #[test]
    fn a_failed_conversion_reaches_the_guest_as_a_psc_error() {
        let (vmm, vcpu) = snp_vmm(KernelProfile::v6_18(), 16);
        vmm.launch(&[]).expect("launch");
        let ghcb = Vmm::page_gpa(1);
        set_up_ghcb(&vmm, vcpu, ghcb);
        let outside = Vmm::page_gpa(64);
        assert_eq!(vmm.snp_psc_msr(vcpu, outside, true), Ok(GhcbResponse::Msr(GHCB_MSR_PSC_RESP_ERROR)));
        assert_eq!(vmm.stats.map_gpa_range_failures.load(Ordering::Relaxed), 1);

        let page = Vmm::page_gpa(4);
        assert_eq!(vmm.host().snp_pvalidate(vcpu, page, false, false), Ok(PVALIDATE_FAIL_NOUPDATE));
        let entries = [
            PscEntry { cur_page: 0, gfn: page >> PAGE_SHIFT, operation: PSC_OP_SHARED, pagesize_2m: false },
            PscEntry { cur_page: 0, gfn: outside >> PAGE_SHIFT, operation: PSC_OP_PRIVATE, pagesize_2m: false },
        ];
        vmm.host().snp_write_psc_buffer(vcpu, ghcb, &entries).expect("PSC buffer");
        assert_eq!(vmm.snp_vmgexit_psc(vcpu, ghcb), Ok(GhcbResponse::ExitInfo2(VMGEXIT_PSC_ERROR_GENERIC)));
        assert_eq!(vmm.stats.map_gpa_range_failures.load(Ordering::Relaxed), 2);
        let (cur, _, done) = vmm.host().snp_read_psc_buffer(vcpu, ghcb, 2).expect("read back");
        assert_eq!((cur, done[0].cur_page, done[1].cur_page), (1, 1, 0), "the first entry done, the second not");
        // The first entry's conversion happened: the page is shared now.
        vmm.guest_access_as(vcpu, page, &mut [0u8; 8], false, false).expect("shared load");
        assert_eq!(vmm.stats.to_shared.load(Ordering::Relaxed), 2);
        assert_eq!(vmm.stats.to_private.load(Ordering::Relaxed), 0);
        // The vCPU is not left waiting for user space.
        assert_eq!(vmm.host().complete_hypercall(vcpu, 0), Err(RunError::Errno(Errno::EINVAL)));
        assert_clean(&vmm);
    }

    /// A conversion running from one region (RAM block) into the next changes the attributes
    /// of the whole range, then is refused without discarding anything, as QEMU refuses a
    /// range past its RAM block; one inside a region, or in no region to shared, succeeds.
    #[test]
    fn a_conversion_past_its_region_is_refused_after_the_attributes() {
        let (vmm, vcpu) = vmm();
        let second = vmm.regions()[1];
        let last = second.gpa - PAGE_SIZE;
        let mut data = *b"private!";
        vmm.guest_access(vcpu, last, &mut data, true).expect("private store");
        assert_eq!(vmm.convert(last, 2 * PAGE_SIZE, false), Err(Errno::EINVAL));
        assert_eq!(vmm.convert(last, 2 * PAGE_SIZE, true), Err(Errno::EINVAL));
        assert_eq!(vmm.stats.punches.load(Ordering::Relaxed), 0, "no guest_memfd punched");
        assert_eq!(vmm.stats.discards.load(Ordering::Relaxed), 0, "no shared backing discarded");
        assert_eq!(read(&vmm, vcpu, last), *b"private!", "the private page kept its data");
        vmm.convert(last, 2 * PAGE_SIZE, false).expect_err("still refused");
        // Both pages' attributes changed, each region's part: a private access now exits.
        for gpa in [last, second.gpa] {
            assert!(matches!(
                vmm.host().guest_access(vcpu, gpa, &mut [0u8; 8], false, Some(true)),
                Err(RunError::Exit(VcpuExit::MemoryFault { .. }))
            ));
        }
        assert_eq!(vmm.convert(Vmm::page_gpa(0x10000), PAGE_SIZE, false), Ok(()), "an MMIO hole");
        assert_eq!(vmm.convert(Vmm::page_gpa(0x10000), PAGE_SIZE, true), Err(Errno::EINVAL));
        assert_eq!(vmm.convert(second.gpa, PAGE_SIZE, true), Ok(()));
        assert_eq!(vmm.stats.to_shared.load(Ordering::Relaxed), 0);
        assert_eq!(vmm.stats.to_private.load(Ordering::Relaxed), 1);
    }

    /// An exit that is not `KVM_HC_MAP_GPA_RANGE` is not the VMM's to answer.
    #[test]
    fn handle_hypercall_returns_other_exits() {
        let (vmm, _) = snp_vmm(KernelProfile::v6_18(), 16);
        let other = RunError::Exit(VcpuExit::Hypercall { nr: 99, args: [0; 6], flags: 0 });
        assert_eq!(vmm.handle_hypercall(other), Err(other));
        let mmio = RunError::Errno(Errno::EINTR);
        assert_eq!(vmm.handle_hypercall(mmio), Err(mmio));
        assert_eq!(vmm.stats.map_gpa_range_exits.load(Ordering::Relaxed), 0);
    }
}
