//! The SNP guest's side: the instructions an SNP guest executes on its memory (PVALIDATE,
//! RMPADJUST), its VMGEXITs (GHCB registration, page-state changes by MSR or PSC buffer, AP
//! creation), and the conversion routine of a Linux guest (`arch/x86/coco/sev/core.c`:
//! `set_pages_state`, `pvalidate_pages`), which the workload and the VMM examples use.
//!
//! Each function is one step of a vCPU in `KVM_RUN`: the vendor's entry checks run first
//! ([`gmem_kvm::arch::KvmArch::vcpu_pre_run`]), an access goes through the nested page tables
//! and the RMP ([`gmem_kvm::vcpu::guest_page_op`]), and a request KVM forwards to user space
//! comes back as `Err(RunError::Exit(..))`, to be answered with [`complete_userspace_io`].

use crate::sev::ghcb::{
    self, GhcbResponse, PscEntry, GHCB_SHARED_BUFFER_OFFSET, PSC_OP_PRIVATE, PSC_OP_SHARED, VMGEXIT_PSC_MAX_COUNT,
};
use crate::sev::kvm::SvmVm;
use crate::sev::rmp::{PvalidateOutcome, RmpError};
use gmem_kvm::arch::GuestException;
use gmem_kvm::vcpu::{guest_access, guest_page_op, KvmVcpu, RunError};
use gmem_kvm::Kvm;
use gmem_mm::types::PAGE_SHIFT;
use gmem_mm::vma::Mm;
use gmem_mm::Errno;

/// `PVALIDATE_FAIL_INPUT`.
pub const PVALIDATE_FAIL_INPUT: u32 = 1;
/// `PVALIDATE_FAIL_SIZEMISMATCH`.
pub const PVALIDATE_FAIL_SIZEMISMATCH: u32 = 6;
/// `PVALIDATE_FAIL_NOUPDATE`: Linux's code for the instruction's "no update" carry flag.
pub const PVALIDATE_FAIL_NOUPDATE: u32 = 255;

/// The VM's SEV back-end, for an instruction only an SNP guest has: on any other VM the CPU
/// raises #UD in the guest.
fn svm(kvm: &Kvm) -> Result<&SvmVm, RunError> {
    SvmVm::of(kvm).filter(|vm| vm.sev_snp_guest()).ok_or(RunError::GuestException(GuestException {
        vector: "#UD",
        gpa: 0,
        reason: "not-an-snp-guest",
    }))
}

/// PVALIDATE of the page at `gpa` (2M if `size_2m`), validating or rescinding. Returns the
/// instruction's result code (0, [`PVALIDATE_FAIL_INPUT`], [`PVALIDATE_FAIL_SIZEMISMATCH`],
/// [`PVALIDATE_FAIL_NOUPDATE`]). It is a private access: an unmapped page is faulted in first
/// (which, for guest_memfd memory, is where KVM makes it private in the RMP), and a 4K request on
/// a 2M RMP entry is a nested fault KVM resolves with PSMASH before the retry.
pub fn pvalidate(kvm: &Kvm, vcpu: &KvmVcpu, mm: &Mm, gpa: u64, size_2m: bool, validate: bool) -> Result<u32, RunError> {
    let vm = svm(kvm)?;
    let asid = vm.asid();
    let rmp = vm.host().rmp().clone();
    guest_page_op(kvm, vcpu, mm, gpa, true, true, 1, |access| {
        let outcome = rmp.pvalidate(asid, gpa, access.pfn, access.npt_level, size_2m, validate)?;
        Ok(match outcome {
            Ok(PvalidateOutcome::Updated) => 0,
            Ok(PvalidateOutcome::NoUpdate) => PVALIDATE_FAIL_NOUPDATE,
            Err(RmpError::FailSizeMismatch) => PVALIDATE_FAIL_SIZEMISMATCH,
            Err(_) => PVALIDATE_FAIL_INPUT,
        })
    })
}

/// RMPADJUST of the page at `gpa` into a VMSA (or back), as a guest does before AP Creation.
/// Returns 0 or the instruction's failure code.
pub fn rmpadjust_vmsa(kvm: &Kvm, vcpu: &KvmVcpu, mm: &Mm, gpa: u64, vmsa: bool) -> Result<u32, RunError> {
    let vm = svm(kvm)?;
    let asid = vm.asid();
    let rmp = vm.host().rmp().clone();
    guest_page_op(kvm, vcpu, mm, gpa, true, true, 1, |access| {
        Ok(match rmp.rmpadjust_vmsa(asid, gpa, access.pfn, vmsa)? {
            Ok(()) => 0,
            Err(error) => error.code(),
        })
    })
}

/// The GHCB MSR protocol's `GHCB_MSR_REG_GPA_REQ`: register the GHCB at `ghcb_gpa`.
pub fn register_ghcb(kvm: &Kvm, vcpu: &KvmVcpu, ghcb_gpa: u64) -> Result<u64, RunError> {
    let vm = svm(kvm)?;
    kvm.arch().vcpu_pre_run(kvm, vcpu)?;
    ghcb::snp_register_ghcb_gpa(vm, vcpu, ghcb_gpa >> PAGE_SHIFT)
}

/// The GHCB MSR protocol's page-state change of the 4K page at `gpa` (`op`: [`PSC_OP_PRIVATE`],
/// [`PSC_OP_SHARED`] or anything else, which KVM refuses).
pub fn psc_msr(kvm: &Kvm, vcpu: &KvmVcpu, gpa: u64, op: u8) -> Result<GhcbResponse, RunError> {
    let vm = svm(kvm)?;
    kvm.arch().vcpu_pre_run(kvm, vcpu)?;
    ghcb::snp_begin_psc_msr(vm, kvm, vcpu, ghcb::ghcb_msr_psc_req(gpa >> PAGE_SHIFT, op))
}

/// Writes a PSC buffer (`hdr.cur_entry = 0`, `hdr.end_entry = entries - 1`, the entries) into
/// the shared buffer of the guest's GHCB at `ghcb_gpa`, with shared guest stores.
pub fn write_psc_buffer(
    kvm: &Kvm,
    vcpu: &KvmVcpu,
    mm: &Mm,
    ghcb_gpa: u64,
    entries: &[PscEntry],
) -> Result<(), RunError> {
    if entries.is_empty() || entries.len() > usize::from(VMGEXIT_PSC_MAX_COUNT) {
        return Err(RunError::Errno(Errno::EINVAL));
    }
    let mut bytes = Vec::with_capacity(8 + entries.len() * 8);
    bytes.extend_from_slice(&0u16.to_le_bytes());
    bytes.extend_from_slice(&((entries.len() - 1) as u16).to_le_bytes());
    bytes.extend_from_slice(&0u32.to_le_bytes());
    for entry in entries {
        bytes.extend_from_slice(&entry.encode().to_le_bytes());
    }
    guest_access(kvm, vcpu, mm, ghcb_gpa + GHCB_SHARED_BUFFER_OFFSET, &mut bytes, true, Some(false))
}

/// Reads the PSC buffer back from the guest's GHCB: `(cur_entry, end_entry, entries)`.
pub fn read_psc_buffer(
    kvm: &Kvm,
    vcpu: &KvmVcpu,
    mm: &Mm,
    ghcb_gpa: u64,
    count: usize,
) -> Result<(u16, u16, Vec<PscEntry>), RunError> {
    let mut bytes = vec![0u8; 8 + count * 8];
    guest_access(kvm, vcpu, mm, ghcb_gpa + GHCB_SHARED_BUFFER_OFFSET, &mut bytes, false, Some(false))?;
    let cur = u16::from_le_bytes([bytes[0], bytes[1]]);
    let end = u16::from_le_bytes([bytes[2], bytes[3]]);
    let entries = bytes[8..]
        .chunks(8)
        .map(|chunk| PscEntry::decode(u64::from_le_bytes(chunk.try_into().expect("8 bytes"))))
        .collect();
    Ok((cur, end, entries))
}

/// `VMGEXIT(SVM_VMGEXIT_PSC)` with the PSC buffer in the shared buffer of the GHCB at
/// `ghcb_gpa`.
pub fn vmgexit_psc(kvm: &Kvm, vcpu: &KvmVcpu, mm: &Mm, ghcb_gpa: u64) -> Result<GhcbResponse, RunError> {
    let vm = svm(kvm)?;
    kvm.arch().vcpu_pre_run(kvm, vcpu)?;
    ghcb::snp_vmgexit_psc(vm, kvm, vcpu, mm, ghcb_gpa, ghcb_gpa + GHCB_SHARED_BUFFER_OFFSET)
}

/// `VMGEXIT(SVM_VMGEXIT_AP_CREATION)`: ask that the vCPU with `apic_id` run with the VMSA at
/// `vmsa_gpa` (`request`: `SVM_VMGEXIT_AP_CREATE`, `..._ON_INIT`, `..._DESTROY`). `Ok(0)` or the
/// GHCB error the guest gets.
pub fn vmgexit_ap_creation(
    kvm: &Kvm,
    vcpu: &KvmVcpu,
    request: u32,
    apic_id: u32,
    vmsa_gpa: u64,
    sev_features: u64,
) -> Result<u64, RunError> {
    let vm = svm(kvm)?;
    kvm.arch().vcpu_pre_run(kvm, vcpu)?;
    Ok(match ghcb::sev_snp_ap_creation(vm, kvm, request, apic_id, vmsa_gpa, sev_features) {
        Ok(()) => 0,
        Err(error) => error,
    })
}

/// The next `KVM_RUN` after an exit user space handled, with `hypercall.ret`: KVM's
/// `complete_userspace_io` (the rest of a page-state change; possibly another exit). `None` if
/// nothing was pending.
pub fn complete_userspace_io(kvm: &Kvm, vcpu: &KvmVcpu, mm: &Mm, ret: u64) -> Option<Result<GhcbResponse, RunError>> {
    let vm = SvmVm::of(kvm)?;
    ghcb::sev_complete_userspace_io(vm, kvm, vcpu, mm, ret)
}

/// One page-state change as a Linux SNP guest makes it (`set_pages_state` for a range of 4K
/// pages): rescind validation first when making pages shared (`pvalidate_pages(.., false)`),
/// then the PSC request, and validate after making them private. `handle` answers each
/// `KVM_EXIT_HYPERCALL` the request produces (the VMM's part) with `hypercall.ret`. Returns the
/// final PSC status (0 on success).
#[allow(clippy::too_many_arguments)]
pub fn set_pages_state(
    kvm: &Kvm,
    vcpu: &KvmVcpu,
    mm: &Mm,
    ghcb_gpa: u64,
    gpa: u64,
    npages: u64,
    private: bool,
    mut handle: impl FnMut(RunError) -> Result<u64, RunError>,
) -> Result<u64, RunError> {
    if !private {
        for page in 0..npages {
            let rc = pvalidate(kvm, vcpu, mm, gpa + (page << PAGE_SHIFT), false, false)?;
            if rc != 0 && rc != PVALIDATE_FAIL_NOUPDATE {
                return Ok(u64::from(rc));
            }
        }
    }
    let op = if private { PSC_OP_PRIVATE } else { PSC_OP_SHARED };
    let entries: Vec<PscEntry> = (0..npages)
        .map(|page| PscEntry { cur_page: 0, gfn: (gpa >> PAGE_SHIFT) + page, operation: op, pagesize_2m: false })
        .collect();
    for chunk in entries.chunks(usize::from(VMGEXIT_PSC_MAX_COUNT)) {
        write_psc_buffer(kvm, vcpu, mm, ghcb_gpa, chunk)?;
        let mut step = vmgexit_psc(kvm, vcpu, mm, ghcb_gpa);
        let status = loop {
            match step {
                Ok(GhcbResponse::ExitInfo2(status)) => break status,
                Ok(GhcbResponse::Msr(value)) => break value,
                Ok(GhcbResponse::Ignored) => break ghcb::VMGEXIT_PSC_ERROR_GENERIC,
                Err(exit @ RunError::Exit(_)) => {
                    let ret = handle(exit)?;
                    step = complete_userspace_io(kvm, vcpu, mm, ret).unwrap_or(Err(RunError::Errno(Errno::EINVAL)));
                }
                Err(other) => return Err(other),
            }
        };
        if status != 0 {
            return Ok(status);
        }
    }
    if private {
        for page in 0..npages {
            let rc = pvalidate(kvm, vcpu, mm, gpa + (page << PAGE_SHIFT), false, true)?;
            if rc != 0 && rc != PVALIDATE_FAIL_NOUPDATE {
                return Ok(u64::from(rc));
            }
        }
    }
    Ok(0)
}
