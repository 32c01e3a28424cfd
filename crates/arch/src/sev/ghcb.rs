//! KVM's side of the GHCB protocol for SNP guests (`arch/x86/kvm/svm/sev.c`): page-state
//! changes (the MSR protocol and the PSC buffer), GHCB registration, and AP creation with the
//! guest-provided VMSA it installs.
//!
//! | kernel | here |
//! |---|---|
//! | `sev_handle_vmgexit_msr_protocol` (`GHCB_MSR_REG_GPA_REQ`, `GHCB_MSR_PSC_REQ`) | [`snp_register_ghcb_gpa`], [`snp_begin_psc_msr`] |
//! | `snp_complete_psc_msr` | [`sev_complete_userspace_io`] |
//! | `sev_handle_vmgexit` (`SVM_VMGEXIT_PSC`), `setup_vmgexit_scratch`, `snp_begin_psc` | [`snp_vmgexit_psc`], [`snp_begin_psc`] |
//! | `snp_complete_one_psc`, `__snp_complete_one_psc`, `snp_complete_psc` | [`sev_complete_userspace_io`] |
//! | `sev_snp_ap_creation` | [`sev_snp_ap_creation`] |
//! | `sev_snp_init_protected_guest_state` | [`sev_snp_init_protected_guest_state`] |
//!
//! KVM does not change the RMP for a page-state change: it forwards each range to user space as
//! `KVM_EXIT_HYPERCALL` (`KVM_HC_MAP_GPA_RANGE`), and the VMM converts the memory (attributes,
//! then a hole punch of guest_memfd, whose `free_folio` makes the frames shared). The answer
//! comes back with the next `KVM_RUN` (the `complete_userspace_io` callback,
//! [`sev_complete_userspace_io`] here), which either moves on to the next range (another exit)
//! or completes the request for the guest.
//!
//! The PSC buffer lives in the guest's GHCB (a shared page): KVM reads and updates it in place
//! through the host mapping of that page, and copies the header's indices once per range, so a
//! guest that rewrites the buffer meanwhile cannot make KVM index out of bounds (S12).

use crate::sev::kvm::{SevVcpu, SvmVm};
use gmem_kvm::caps::KVM_HC_MAP_GPA_RANGE;
use gmem_kvm::guest_memfd::kvm_gmem_get_pfn;
use gmem_kvm::mmu::KvmGfnRange;
use gmem_kvm::profile::Fix;
use gmem_kvm::vcpu::{KvmVcpu, RunError, VcpuExit, KVM_EXIT_HYPERCALL_LONG_MODE, KVM_MAP_GPA_RANGE_ENCRYPTED};
use gmem_kvm::{Gfn, Kvm};
use gmem_mm::types::{PAGE_SHIFT, PAGE_SIZE};
use gmem_mm::vma::Mm;
use gmem_mm::{Errno, Pfn};

/// `GHCB_MSR_REG_GPA_REQ`.
pub const GHCB_MSR_REG_GPA_REQ: u64 = 0x012;
/// `GHCB_MSR_REG_GPA_RESP`.
pub const GHCB_MSR_REG_GPA_RESP: u64 = 0x013;
/// `GHCB_MSR_PSC_REQ`.
pub const GHCB_MSR_PSC_REQ: u64 = 0x014;
/// `GHCB_MSR_PSC_RESP`.
pub const GHCB_MSR_PSC_RESP: u64 = 0x015;
/// `GHCB_MSR_PSC_RESP_ERROR`: the response with a non-zero error field (bits 63:32).
pub const GHCB_MSR_PSC_RESP_ERROR: u64 = (0xffff_ffff << 32) | GHCB_MSR_PSC_RESP;
/// `GHCB_MSR_INFO_MASK`.
pub const GHCB_MSR_INFO_MASK: u64 = 0xfff;

/// `SNP_PAGE_STATE_PRIVATE` / `VMGEXIT_PSC_OP_PRIVATE`.
pub const PSC_OP_PRIVATE: u8 = 1;
/// `SNP_PAGE_STATE_SHARED` / `VMGEXIT_PSC_OP_SHARED`.
pub const PSC_OP_SHARED: u8 = 2;
/// `SNP_PAGE_STATE_PSMASH`.
pub const PSC_OP_PSMASH: u8 = 3;
/// `SNP_PAGE_STATE_UNSMASH`.
pub const PSC_OP_UNSMASH: u8 = 4;

/// `GHCB_MSR_PSC_REQ_GFN(gfn, op)`: the MSR value of a 4K page-state-change request.
pub fn ghcb_msr_psc_req(gfn: u64, op: u8) -> u64 {
    (u64::from(op & 0xf) << 52) | ((gfn & ((1 << 40) - 1)) << 12) | GHCB_MSR_PSC_REQ
}

/// `VMGEXIT_PSC_MAX_COUNT`: entries a PSC buffer holds (the header's `end_entry` must be below).
pub const VMGEXIT_PSC_MAX_COUNT: u16 = 253;
/// `VMGEXIT_PSC_ERROR_GENERIC`.
pub const VMGEXIT_PSC_ERROR_GENERIC: u64 = 0x100 << 32;
/// `VMGEXIT_PSC_ERROR_INVALID_HDR`.
pub const VMGEXIT_PSC_ERROR_INVALID_HDR: u64 = (1 << 32) | 1;
/// `VMGEXIT_PSC_ERROR_INVALID_ENTRY`.
pub const VMGEXIT_PSC_ERROR_INVALID_ENTRY: u64 = (1 << 32) | 2;
/// `offsetof(struct ghcb, shared_buffer)`: where the guest puts the PSC buffer.
pub const GHCB_SHARED_BUFFER_OFFSET: u64 = 0x800;
/// `offsetof(struct ghcb, reserved_0xff0)`: the end of the shared buffer.
pub const GHCB_SHARED_BUFFER_END: u64 = 0xff0;
/// `KVM_MAP_GPA_RANGE_PAGE_SZ_2M`.
pub const KVM_MAP_GPA_RANGE_PAGE_SZ_2M: u64 = 1;
/// `KVM_MAP_GPA_RANGE_PAGE_SZ_4K`.
pub const KVM_MAP_GPA_RANGE_PAGE_SZ_4K: u64 = 0;

/// `SVM_VMGEXIT_AP_CREATE_ON_INIT`.
pub const SVM_VMGEXIT_AP_CREATE_ON_INIT: u32 = 0;
/// `SVM_VMGEXIT_AP_CREATE`.
pub const SVM_VMGEXIT_AP_CREATE: u32 = 1;
/// `SVM_VMGEXIT_AP_DESTROY`.
pub const SVM_VMGEXIT_AP_DESTROY: u32 = 2;

/// One entry of a PSC buffer (`struct psc_entry`: `cur_page:12, gfn:40, operation:4,
/// pagesize:1`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PscEntry {
    /// Pages of the entry already done.
    pub cur_page: u16,
    /// The first gfn.
    pub gfn: u64,
    /// `VMGEXIT_PSC_OP_*`.
    pub operation: u8,
    /// A 2M entry.
    pub pagesize_2m: bool,
}

impl PscEntry {
    /// The raw 64-bit entry.
    pub fn encode(&self) -> u64 {
        u64::from(self.cur_page & 0xfff)
            | ((self.gfn & ((1 << 40) - 1)) << 12)
            | (u64::from(self.operation & 0xf) << 52)
            | (u64::from(self.pagesize_2m) << 56)
    }

    /// An entry from its raw value.
    pub fn decode(raw: u64) -> PscEntry {
        PscEntry {
            cur_page: (raw & 0xfff) as u16,
            gfn: (raw >> 12) & ((1 << 40) - 1),
            operation: ((raw >> 52) & 0xf) as u8,
            pagesize_2m: (raw >> 56) & 1 != 0,
        }
    }
}

/// What a forwarded request waits for (`vcpu->arch.complete_userspace_io`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pending {
    /// `snp_complete_psc_msr`.
    Msr,
    /// `snp_complete_one_psc` for the PSC buffer at this GPA.
    Buffer { scratch: u64 },
}

/// A vCPU's page-state-change state (`svm->sev_es.psc_*`, the registered GHCB, the pending
/// completion).
#[derive(Debug, Default)]
pub struct PscState {
    /// `ghcb_registered_gpa`.
    pub ghcb_registered_gpa: Option<u64>,
    /// `psc_idx`: the first in-flight entry.
    pub psc_idx: u16,
    /// `psc_inflight`: entries merged into the exit user space is handling.
    pub psc_inflight: u16,
    /// `psc_2m`.
    pub psc_2m: bool,
    pub(crate) pending: Option<Pending>,
    /// Ranges forwarded to user space (for statistics).
    pub exits: u64,
}

/// What the guest gets back from a VMGEXIT KVM completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GhcbResponse {
    /// The new GHCB MSR value (MSR protocol).
    Msr(u64),
    /// `SW_EXITINFO2` of the GHCB (the PSC status: 0 or `VMGEXIT_PSC_ERROR_*`).
    ExitInfo2(u64),
    /// KVM resumed the guest without handling the request (the GHCB could not be mapped, or
    /// was not registered); the guest sees its GHCB unchanged.
    Ignored,
}

/// The guest's shared memory as KVM reaches it (`kvm_vcpu_map` of a shared gfn: through the
/// memslot's `userspace_addr` in the VM owner's address space).
struct GuestShared<'a> {
    kvm: &'a Kvm,
    mm: &'a Mm,
}

impl GuestShared<'_> {
    fn hva(&self, gpa: u64) -> Option<u64> {
        let srcu = self.kvm.srcu_read_lock();
        let gfn = Gfn(gpa >> PAGE_SHIFT);
        let slot = self.kvm.gfn_to_memslot(&srcu, gfn)?;
        Some(slot.userspace_addr() + ((gfn.0 - slot.base_gfn().0) << PAGE_SHIFT) + (gpa & (PAGE_SIZE - 1)))
    }

    fn read_u64(&self, gpa: u64) -> Option<u64> {
        let mut bytes = [0u8; 8];
        self.mm.access(self.hva(gpa)?, &mut bytes, false).ok()?;
        Some(u64::from_le_bytes(bytes))
    }

    fn write_u64(&self, gpa: u64, value: u64) -> Option<()> {
        let mut bytes = value.to_le_bytes();
        self.mm.access(self.hva(gpa)?, &mut bytes, true).ok()
    }

    fn read_u16(&self, gpa: u64) -> Option<u16> {
        let mut bytes = [0u8; 2];
        self.mm.access(self.hva(gpa)?, &mut bytes, false).ok()?;
        Some(u16::from_le_bytes(bytes))
    }

    fn write_u16(&self, gpa: u64, value: u16) -> Option<()> {
        let mut bytes = value.to_le_bytes();
        self.mm.access(self.hva(gpa)?, &mut bytes, true).ok()
    }
}

fn sev_vcpu(vcpu: &KvmVcpu) -> &SevVcpu {
    vcpu.arch::<SevVcpu>().expect("a vCPU of an SEV VM has SEV state")
}

/// `KVM_EXIT_HYPERCALL` for `KVM_HC_MAP_GPA_RANGE` (with `hypercall.ret` zeroed, as KVM does for
/// QEMU ≤ 9.2).
fn map_gpa_range_exit(gpa: u64, npages: u64, private: bool, size_2m: bool) -> RunError {
    let mut attrs = if private { KVM_MAP_GPA_RANGE_ENCRYPTED } else { 0 };
    attrs |= if size_2m { KVM_MAP_GPA_RANGE_PAGE_SZ_2M } else { KVM_MAP_GPA_RANGE_PAGE_SZ_4K };
    RunError::Exit(VcpuExit::Hypercall {
        nr: KVM_HC_MAP_GPA_RANGE,
        args: [gpa, npages, attrs, 0, 0, 0],
        flags: KVM_EXIT_HYPERCALL_LONG_MODE,
    })
}

/// `GHCB_MSR_REG_GPA_REQ`: the guest registers its GHCB (an SNP guest must, before using it).
/// Returns the response MSR value.
#[doc(alias = "sev_handle_vmgexit_msr_protocol")]
pub fn snp_register_ghcb_gpa(vm: &SvmVm, vcpu: &KvmVcpu, gfn: u64) -> Result<u64, RunError> {
    if !vm.sev_snp_guest() {
        return Err(RunError::Errno(Errno::EINVAL));
    }
    sev_vcpu(vcpu).psc.lock().ghcb_registered_gpa = Some(gfn << PAGE_SHIFT);
    Ok(((gfn & ((1 << 52) - 1)) << 12) | GHCB_MSR_REG_GPA_RESP)
}

/// `snp_begin_psc_msr(svm, ghcb_msr)`: a one-page request through the GHCB MSR. An unknown
/// operation, or a VMM that did not enable the hypercall exit, is an error response at once;
/// otherwise the request is forwarded (`Err` with the `KVM_EXIT_HYPERCALL`).
pub fn snp_begin_psc_msr(vm: &SvmVm, kvm: &Kvm, vcpu: &KvmVcpu, ghcb_msr: u64) -> Result<GhcbResponse, RunError> {
    if !vm.sev_snp_guest() {
        return Err(RunError::Errno(Errno::EINVAL));
    }
    let gpa = ((ghcb_msr >> 12) & ((1 << 40) - 1)) << PAGE_SHIFT;
    let op = ((ghcb_msr >> 52) & 0xf) as u8;
    if op != PSC_OP_PRIVATE && op != PSC_OP_SHARED {
        return Ok(GhcbResponse::Msr(GHCB_MSR_PSC_RESP_ERROR));
    }
    if !kvm.user_exit_on_hypercall(KVM_HC_MAP_GPA_RANGE) {
        return Ok(GhcbResponse::Msr(GHCB_MSR_PSC_RESP_ERROR));
    }
    let mut psc = sev_vcpu(vcpu).psc.lock();
    psc.pending = Some(Pending::Msr);
    psc.exits += 1;
    Err(map_gpa_range_exit(gpa, 1, op == PSC_OP_PRIVATE, false))
}

/// `SVM_VMGEXIT_PSC` with the GHCB at `ghcb_gpa` and the PSC buffer at `sw_scratch`
/// (`sev_handle_vmgexit` → `setup_vmgexit_scratch` → `snp_begin_psc`). `mm` is the VM owner's
/// address space (the GHCB is a shared page).
#[doc(alias("setup_vmgexit_scratch", "sev_handle_vmgexit"))]
pub fn snp_vmgexit_psc(
    vm: &SvmVm,
    kvm: &Kvm,
    vcpu: &KvmVcpu,
    mm: &Mm,
    ghcb_gpa: u64,
    sw_scratch: u64,
) -> Result<GhcbResponse, RunError> {
    if ghcb_gpa == 0 {
        // Without a GHCB, just return right back to the guest.
        return Ok(GhcbResponse::Ignored);
    }
    let shared = GuestShared { kvm, mm };
    if shared.hva(ghcb_gpa).is_none() {
        tracing::debug!("vmgexit: error mapping GHCB [{ghcb_gpa:#x}] from guest");
        return Ok(GhcbResponse::Ignored);
    }
    // SEV-SNP guest requires that the GHCB GPA must be registered.
    if sev_vcpu(vcpu).psc.lock().ghcb_registered_gpa != Some(ghcb_gpa) {
        tracing::debug!("vmgexit: GHCB GPA [{ghcb_gpa:#x}] is not registered");
        return Err(RunError::Errno(Errno::EINVAL));
    }
    // sev_es_validate_vmgexit: PSC needs an SNP guest and a scratch area.
    if !vm.sev_snp_guest() || sw_scratch == 0 {
        return Ok(GhcbResponse::ExitInfo2(GHCB_ERR_MISSING_INPUT));
    }
    // setup_vmgexit_scratch(svm, true, exit_info_2 = 0): a scratch area that begins in the GHCB
    // must lie in its shared buffer; the PSC buffer is then used in place.
    let in_ghcb = sw_scratch & !(PAGE_SIZE - 1) == ghcb_gpa;
    if !in_ghcb || sw_scratch < ghcb_gpa + GHCB_SHARED_BUFFER_OFFSET || sw_scratch > ghcb_gpa + GHCB_SHARED_BUFFER_END {
        return Ok(GhcbResponse::ExitInfo2(GHCB_ERR_INVALID_SCRATCH_AREA));
    }
    snp_begin_psc(vm, kvm, vcpu, mm, sw_scratch)
}

/// `GHCB_ERR_MISSING_INPUT` in `SW_EXITINFO2` (with `SW_EXITINFO1` = 2: bad input).
pub const GHCB_ERR_MISSING_INPUT: u64 = (2 << 32) | 2;
/// `GHCB_ERR_INVALID_SCRATCH_AREA`.
pub const GHCB_ERR_INVALID_SCRATCH_AREA: u64 = (2 << 32) | 3;
/// `GHCB_ERR_INVALID_INPUT`.
pub const GHCB_ERR_INVALID_INPUT: u64 = (2 << 32) | 5;

/// `snp_complete_psc`: no request in flight any more; the status goes to `SW_EXITINFO2`.
fn snp_complete_psc(sev: &SevVcpu, psc_ret: u64) -> Result<GhcbResponse, RunError> {
    let mut psc = sev.psc.lock();
    psc.psc_inflight = 0;
    psc.psc_idx = 0;
    psc.psc_2m = false;
    psc.pending = None;
    Ok(GhcbResponse::ExitInfo2(psc_ret))
}

/// `snp_begin_psc(svm, psc)`: find the next entry with work left (validating each: a page index
/// past the entry's size or a gfn not aligned to it is `INVALID_ENTRY`), merge the following
/// entries of the same operation and size that continue it, and forward the range. A partly done
/// 2M entry continues as 4K pages. SMASH/UNSMASH ranges are treated as done without an exit.
pub fn snp_begin_psc(vm: &SvmVm, kvm: &Kvm, vcpu: &KvmVcpu, mm: &Mm, scratch: u64) -> Result<GhcbResponse, RunError> {
    let sev = sev_vcpu(vcpu);
    let shared = GuestShared { kvm, mm };
    let entry_gpa = |idx: u16| scratch + 8 + u64::from(idx) * 8;
    if !kvm.user_exit_on_hypercall(KVM_HC_MAP_GPA_RANGE) {
        return snp_complete_psc(sev, VMGEXIT_PSC_ERROR_GENERIC);
    }
    let _ = vm;
    loop {
        // There should be no other PSCs in-flight at this point.
        if kvm
            .machine()
            .warnings
            .warn_on_once(sev.psc.lock().psc_inflight != 0, || "snp_begin_psc: PSC in flight".into())
        {
            return snp_complete_psc(sev, VMGEXIT_PSC_ERROR_GENERIC);
        }
        // The PSC descriptor buffer can be modified by a misbehaved guest after validation, so
        // take care to only use validated copies of values used for things like array indexing.
        let (Some(idx_start), Some(idx_end)) = (shared.read_u16(scratch), shared.read_u16(scratch + 2)) else {
            return snp_complete_psc(sev, VMGEXIT_PSC_ERROR_GENERIC);
        };
        if idx_end >= VMGEXIT_PSC_MAX_COUNT {
            return snp_complete_psc(sev, VMGEXIT_PSC_ERROR_INVALID_HDR);
        }
        // Find the start of the next range which needs processing.
        let mut idx = idx_start;
        let mut found = None;
        while idx <= idx_end {
            let Some(raw) = shared.read_u64(entry_gpa(idx)) else {
                return snp_complete_psc(sev, VMGEXIT_PSC_ERROR_GENERIC);
            };
            let entry_start = PscEntry::decode(raw);
            let mut gfn = entry_start.gfn;
            let mut huge = entry_start.pagesize_2m;
            let mut npages: u64 = if huge { 512 } else { 1 };
            if u64::from(entry_start.cur_page) > npages || gfn % npages != 0 {
                return snp_complete_psc(sev, VMGEXIT_PSC_ERROR_INVALID_ENTRY);
            }
            if entry_start.cur_page != 0 {
                // A partially-completed 2M range: the rest is handled as 4K pages.
                npages -= u64::from(entry_start.cur_page);
                gfn += u64::from(entry_start.cur_page);
                huge = false;
            }
            if npages != 0 {
                found = Some((entry_start, gfn, npages, huge));
                break;
            }
            idx += 1;
            // hdr->cur_entry++ (in the guest's buffer).
            let cur = shared.read_u16(scratch).unwrap_or(0);
            let _ = shared.write_u16(scratch, cur.wrapping_add(1));
        }
        let Some((entry_start, gfn, mut npages, huge)) = found else {
            // Nothing more to process.
            return snp_complete_psc(sev, 0);
        };
        let mut inflight = 1u16;
        let start_idx = idx;
        // Find all subsequent PSC entries that contain adjacent GPA ranges/operations and can be
        // combined into a single KVM_HC_MAP_GPA_RANGE exit.
        idx += 1;
        while idx <= idx_end {
            let Some(raw) = shared.read_u64(entry_gpa(idx)) else { break };
            let entry = PscEntry::decode(raw);
            if entry.operation != entry_start.operation
                || entry.gfn != entry_start.gfn + npages
                || entry.cur_page != 0
                || entry.pagesize_2m != huge
            {
                break;
            }
            inflight += 1;
            npages += if huge { 512 } else { 1 };
            idx += 1;
        }
        {
            let mut psc = sev.psc.lock();
            psc.psc_2m = huge;
            psc.psc_idx = start_idx;
            psc.psc_inflight = inflight;
        }
        match entry_start.operation {
            PSC_OP_PRIVATE | PSC_OP_SHARED => {
                let mut psc = sev.psc.lock();
                psc.pending = Some(Pending::Buffer { scratch });
                psc.exits += 1;
                return Err(map_gpa_range_exit(
                    gfn << PAGE_SHIFT,
                    npages,
                    entry_start.operation == PSC_OP_PRIVATE,
                    entry_start.pagesize_2m,
                ));
            }
            _ => {
                // Only shared/private operations are supported: consider the range completed
                // and move on without exiting.
                __snp_complete_one_psc(sev, &shared, scratch);
            }
        }
    }
}

/// `__snp_complete_one_psc`: mark the in-flight entries done in the guest's buffer and advance
/// its `cur_entry`. S12 at the call: there is a range in flight, and it lies inside the buffer
/// (`psc_idx` and `psc_inflight` are KVM's validated copies; completing nothing would rewind the
/// guest's `cur_entry`), else a WARN.
#[doc(alias = "snp_complete_one_psc")]
fn __snp_complete_one_psc(sev: &SevVcpu, shared: &GuestShared<'_>, scratch: u64) {
    let mut psc = sev.psc.lock();
    let (start, inflight) = (psc.psc_idx, psc.psc_inflight);
    shared.kvm.machine().warnings.warn_on(
        inflight == 0 || u32::from(start) + u32::from(inflight) > u32::from(VMGEXIT_PSC_MAX_COUNT),
        || {
            format!(
                "S12: completing PSC entries [{start}, {}) of the buffer at {scratch:#x}: {}",
                u32::from(start) + u32::from(inflight),
                if inflight == 0 { "nothing is in flight" } else { "past the end of the buffer" }
            )
        },
    );
    let mut idx = psc.psc_idx;
    while psc.psc_inflight != 0 {
        let at = scratch + 8 + u64::from(idx) * 8;
        if let Some(raw) = shared.read_u64(at) {
            let mut entry = PscEntry::decode(raw);
            entry.cur_page = if entry.pagesize_2m { 512 } else { 1 };
            let _ = shared.write_u64(at, entry.encode());
        }
        psc.psc_inflight -= 1;
        idx += 1;
    }
    let _ = shared.write_u16(scratch, idx);
}

/// The next `KVM_RUN` after a forwarded page-state change (`complete_userspace_io`), with the
/// VMM's `hypercall.ret`: a failure is an error for the guest; success completes the range and,
/// for a PSC buffer, goes on with the next one (possibly another exit). `None` if nothing was
/// pending (an ordinary `KVM_RUN`).
#[doc(alias = "snp_complete_psc_msr")]
pub fn sev_complete_userspace_io(
    vm: &SvmVm,
    kvm: &Kvm,
    vcpu: &KvmVcpu,
    mm: &Mm,
    ret: u64,
) -> Option<Result<GhcbResponse, RunError>> {
    let sev = sev_vcpu(vcpu);
    let pending = sev.psc.lock().pending.take()?;
    Some(match pending {
        // snp_complete_psc_msr.
        Pending::Msr => Ok(GhcbResponse::Msr(if ret != 0 { GHCB_MSR_PSC_RESP_ERROR } else { GHCB_MSR_PSC_RESP })),
        // snp_complete_one_psc.
        Pending::Buffer { scratch } => {
            if ret != 0 {
                snp_complete_psc(sev, VMGEXIT_PSC_ERROR_GENERIC)
            } else {
                __snp_complete_one_psc(sev, &GuestShared { kvm, mm }, scratch);
                snp_begin_psc(vm, kvm, vcpu, mm, scratch)
            }
        }
    })
}

/// Test-only: overwrites a vCPU's in-flight PSC range (`psc_idx`, `psc_inflight`), as a KVM that
/// lost track of it would (the negative control of S12).
#[doc(hidden)]
pub fn set_psc_in_flight_for_test(vcpu: &KvmVcpu, idx: u16, inflight: u16) {
    let mut psc = sev_vcpu(vcpu).psc.lock();
    psc.psc_idx = idx;
    psc.psc_inflight = inflight;
}

/// Whether a page-state change of `vcpu` waits for user space.
pub fn psc_pending(vcpu: &KvmVcpu) -> bool {
    vcpu.arch::<SevVcpu>().is_some_and(|sev| sev.psc.lock().pending.is_some())
}

/// `sev_snp_ap_creation`: the guest asks (from `vcpu`) that the vCPU with `apic_id` run with the
/// VMSA at `vmsa_gpa` (`SVM_VMGEXIT_AP_CREATE[_ON_INIT]`), or stop (`AP_DESTROY`). The target
/// picks the request up at its next entry ([`sev_snp_init_protected_guest_state`]). An invalid
/// request is `Err` (the guest gets `GHCB_ERR_INVALID_INPUT`).
pub fn sev_snp_ap_creation(
    vm: &SvmVm,
    kvm: &Kvm,
    request: u32,
    apic_id: u32,
    vmsa_gpa: u64,
    sev_features: u64,
) -> Result<(), u64> {
    let Some(target) = kvm.get_vcpu_by_id(apic_id) else {
        tracing::debug!("vmgexit: invalid AP APIC ID [{apic_id:#x}] from guest");
        return Err(GHCB_ERR_INVALID_INPUT);
    };
    let target_sev = sev_vcpu(&target);
    let mut state = target_sev.state.lock();
    match request {
        SVM_VMGEXIT_AP_CREATE_ON_INIT | SVM_VMGEXIT_AP_CREATE => {
            if sev_features != vm.vmsa_features() {
                tracing::debug!("vmgexit: mismatched AP sev_features [{sev_features:#x}] from guest");
                return Err(GHCB_ERR_INVALID_INPUT);
            }
            if vmsa_gpa & (PAGE_SIZE - 1) != 0 {
                tracing::debug!("vmgexit: invalid AP VMSA address [{vmsa_gpa:#x}] from guest");
                return Err(GHCB_ERR_INVALID_INPUT);
            }
            // A 2M-aligned VMSA hits the SNP erratum (an RMP violation on a hugepage colliding
            // with the VMSA's RMP entry): refused.
            if vmsa_gpa % (2 << 20) == 0 {
                tracing::debug!("vmgexit: AP VMSA address [{vmsa_gpa:#x}] from guest is unsafe as it is 2M aligned");
                return Err(GHCB_ERR_INVALID_INPUT);
            }
            state.snp_vmsa_gpa = Some(vmsa_gpa);
        }
        SVM_VMGEXIT_AP_DESTROY => state.snp_vmsa_gpa = None,
        _ => {
            tracing::debug!("vmgexit: invalid AP creation request [{request:#x}] from guest");
            return Err(GHCB_ERR_INVALID_INPUT);
        }
    }
    state.snp_ap_waiting_for_reset = true;
    if request != SVM_VMGEXIT_AP_CREATE_ON_INIT {
        state.update_protected_guest_state = true;
    }
    Ok(())
}

/// `sev_snp_init_protected_guest_state` (`KVM_REQ_UPDATE_PROTECTED_GUEST_STATE`, at entry): a
/// pending AP Creation installs the guest's VMSA, a guest_memfd page found through
/// `kvm_gmem_get_pfn`, as the vCPU's `vmsa_pa`; the page reference is dropped right away (gmem
/// pages do not migrate), which is why an invalidation of that page must also make the vCPU let
/// go of it (upstream fix F11, [`snp_zap_guest_vmsas`]).
///
/// Without F11 (v6.14 to v6.18) the VMSA GPA is forgotten once used and the pfn is installed as
/// soon as guest_memfd returns it. With F11 the GPA is kept (so an invalidation can find the vCPU
/// that uses it), the vCPU counts as having a guest VMSA even if the lookup fails, and the pfn is
/// installed as the APIC-access page's is: the invalidation sequence is snapshotted before the
/// lookup, and the pfn is committed under `mmu_lock` (read) only if no invalidation of the gfn
/// ran or is running meanwhile; otherwise the request is made again. Returns whether the request
/// was made again (the caller must not enter the guest yet and comes back, as `vcpu_run`'s loop
/// does).
pub fn sev_snp_init_protected_guest_state(vm: &SvmVm, kvm: &Kvm, sev: &SevVcpu) -> bool {
    if !vm.sev_snp_guest() {
        return false;
    }
    let fixed = kvm.profile().has_fix(Fix::F11InvalidateGuestVmsa);
    let mut state = sev.state.lock();
    if !std::mem::take(&mut state.update_protected_guest_state) || !state.snp_ap_waiting_for_reset {
        return false;
    }
    state.snp_ap_waiting_for_reset = false;
    // Clear use of the VMSA.
    if let Some(old) = state.vmsa_pa.take() {
        if std::mem::take(&mut state.vmsa_loaded) {
            vm.host().rmp().set_vmsa_in_use(old, false);
        }
    }
    let Some(vmsa_gpa) = state.snp_vmsa_gpa else { return false };
    if fixed {
        // "Mark vCPU as having guest-provided VMSA even if it's invalid" and "Track the GPA of
        // the guest-controlled VMSA".
        state.snp_has_guest_vmsa = true;
    } else {
        state.snp_vmsa_gpa = None;
    }
    let gfn = Gfn(vmsa_gpa >> PAGE_SHIFT);
    // F11: 1. snapshot the invalidation sequence counter.
    let mmu_seq = kvm.mmu_invalidate_seq();
    let srcu = kvm.srcu_read_lock();
    let Some(slot) = kvm.gfn_to_memslot(&srcu, gfn) else { return false };
    // The new VMSA will be private guest memory, so retrieve the PFN from the gmem backend
    // (F11: 2. grab the pfn).
    let Ok(got) = kvm_gmem_get_pfn(kvm, slot, gfn) else { return false };
    drop(srcu);
    if !fixed {
        state.snp_has_guest_vmsa = true;
        state.vmsa_pa = Some(got.pfn);
        got.page.put();
        return false;
    }
    // F11: 3. acquire mmu_lock for read (it nests outside the vCPU's SEV state, as in the
    // invalidation), 4. re-request the reload if an invalidation covered the gfn since the
    // snapshot, else commit.
    drop(state);
    let mmu_lock = kvm.mmu_lock_read();
    let mut state = sev.state.lock();
    let retry = kvm.mmu_invalidate_retry_gfn(mmu_seq, gfn);
    if retry {
        state.snp_ap_waiting_for_reset = true;
        state.update_protected_guest_state = true;
        state.vmsa_reload_retries += 1;
    } else {
        state.vmsa_pa = Some(got.pfn);
    }
    drop(state);
    drop(mmu_lock);
    got.page.put();
    retry
}

/// Upstream fix F11's half in the invalidation (`kvm_gmem_invalidate_begin` →
/// `kvm_mmu_unmap_gfn_range`, `mmu_lock` held for write; upstream's `gmem_invalid_range` hook):
/// a vCPU whose guest-provided VMSA lies in `range` is made to stop using it now (the request
/// and the kick that waits for the vCPU to leave guest mode) and to reload it at its next entry,
/// so the folio's `free_folio` can give the frame back to the hypervisor. Without the fix nothing
/// happens: the VMSA stays in use, RMPUPDATE fails with `FAIL_INUSE`, and the frame is freed
/// still assigned to the guest.
pub fn snp_zap_guest_vmsas(vm: &SvmVm, kvm: &Kvm, range: &KvmGfnRange) {
    if !kvm.profile().has_fix(Fix::F11InvalidateGuestVmsa) || !vm.sev_snp_guest() {
        return;
    }
    for vcpu in kvm.vcpus() {
        let Some(sev) = vcpu.arch::<SevVcpu>() else { continue };
        let mut state = sev.state.lock();
        let Some(gpa) = state.snp_vmsa_gpa else { continue };
        let gfn = Gfn(gpa >> PAGE_SHIFT);
        if !state.snp_has_guest_vmsa || gfn < range.start || gfn >= range.end {
            continue;
        }
        if let Some(pfn) = state.vmsa_pa.take() {
            if std::mem::take(&mut state.vmsa_loaded) {
                vm.host().rmp().set_vmsa_in_use(pfn, false);
            }
        }
        // Reload at the next entry (the VMSA GPA is still the one the guest gave).
        state.snp_ap_waiting_for_reset = true;
        state.update_protected_guest_state = true;
    }
}

/// The guest physical frame of a guest VMSA the vCPU uses (for INV-NO-STALE-PFN over control
/// structures): `(vmsa gpa, frame)`.
pub fn guest_vmsa(vcpu: &KvmVcpu) -> Option<(Option<u64>, Pfn)> {
    let sev = vcpu.arch::<SevVcpu>()?;
    let state = sev.state.lock();
    if !state.snp_has_guest_vmsa {
        return None;
    }
    Some((state.snp_vmsa_gpa, state.vmsa_pa?))
}
