//! The TD guest's side: the `TDCALL`s a TD's vCPU makes (`TDG.MEM.PAGE.ACCEPT`, handled by the
//! TDX module inside the TD; `TDG.VP.VMCALL`, a TD exit to KVM) as steps of `KVM_RUN`, and the
//! conversion routines of a Linux TD guest built on them (`arch/x86/coco/tdx/tdx.c`:
//! `tdx_map_gpa`, `tdx_enc_status_changed`; `arch/x86/coco/tdx/tdx-shared.c`:
//! `try_accept_one`, `tdx_accept_memory`), which the VMM, its tests and `gmem-sim run` use.
//!
//! Each function is one step of a vCPU in `KVM_RUN`, as [`crate::sev::guest`]'s are: the
//! vendor's entry checks and `TDH.VP.ENTER` run first ([`gmem_kvm::vcpu::guest_page_op`],
//! [`gmem_kvm::vcpu::guest_run_to_exit`]), and an exit KVM forwards to user space comes back as
//! `Err(RunError::Exit(..))`, to be answered with [`complete_userspace_io`]. On a VM that is not
//! a TD the CPU raises #UD in the guest.
//!
//! | guest | here |
//! |---|---|
//! | `TDG.MEM.PAGE.ACCEPT` (`__tdcall(TDG_MEM_PAGE_ACCEPT, ..)`) | [`tdg_mem_page_accept`] |
//! | `TDG.VP.VMCALL` (`__tdx_hypercall`), `TDG.VP.VMCALL<MapGPA>` | [`tdg_vp_vmcall`], [`tdg_vp_vmcall_map_gpa`] |
//! | `try_accept_one`, `tdx_accept_memory` | [`try_accept_one`], [`tdx_accept_memory`] |
//! | `tdx_map_gpa` (the guest's), `tdx_enc_status_changed` | [`tdx_map_gpa`], [`tdx_enc_status_changed`] |

use crate::tdx::guest::TdExit;
use crate::tdx::kvm::TdxVm;
use crate::tdx::module::page_info;
use crate::tdx::run::{
    tdx_ept_violation_code, TdvmcallArgs, TdvmcallResult, EPT_VIOLATION_ACC_WRITE, TDVMCALL_MAP_GPA,
    TDVMCALL_STATUS_RETRY, TDX_HYPERCALL_STANDARD, TDX_MAP_GPA_MAX_LEN,
};
use crate::tdx::status::TdxStatus;
use gmem_kvm::arch::{GuestException, GuestFault};
use gmem_kvm::vcpu::{guest_page_op, guest_run_to_exit, KvmVcpu, RunError};
use gmem_kvm::Kvm;
use gmem_mm::types::{PAGE_SHIFT, PAGE_SIZE};
use gmem_mm::vma::Mm;
use gmem_mm::Errno;
use gmem_sync::warn::WarnKind;

/// `TDX_PS_4K`, `TDX_PS_2M`, `TDX_PS_1G`: the page-size field of ACCEPT's RCX.
pub const TDX_PS_4K: u64 = 0;
/// `TDX_PS_2M`.
pub const TDX_PS_2M: u64 = 1;
/// `TDX_PS_1G`.
pub const TDX_PS_1G: u64 = 2;
/// The most `KVM_EXIT_HYPERCALL`s one `TDG.VP.VMCALL` gets before KVM answers the guest: one
/// per 2 MiB chunk of the range. A guest loop that sees more is answered EIO (the model's bound).
fn max_exits(size: u64) -> u64 {
    size.div_ceil(TDX_MAP_GPA_MAX_LEN) + 1
}

/// The VM's TDX back-end, for an instruction only a TD has: on any other VM the CPU raises #UD
/// in the guest.
fn td(kvm: &Kvm) -> Result<&TdxVm, RunError> {
    TdxVm::of(kvm).ok_or(RunError::GuestException(GuestException { vector: "#UD", gpa: 0, reason: "not-a-td" }))
}

/// The shared bit of the TD's gpas (what the guest's `cc_mkdec` sets): gpa bit `GPAW - 1`.
#[doc(alias = "cc_mkdec")]
pub fn shared_bit(kvm: &Kvm) -> u64 {
    kvm.gfn_direct_bits() << PAGE_SHIFT
}

/// `TDG.MEM.PAGE.ACCEPT` with RCX = `gpa | page size` ([`TDX_PS_4K`]...): the TDCALL's status
/// (success, `TDX_PAGE_ALREADY_ACCEPTED`, `TDX_OPERAND_BUSY` on the S-EPT,
/// `TDX_OPERAND_INVALID` for a bad operand such as a shared gpa or a 2M page the model's
/// module does not map). A page the S-EPT does not map is an EPT violation: KVM AUGs it (a
/// private write fault) and the guest's ACCEPT runs again, on the PENDING page, which it
/// zeroes and maps. An operand the module refuses costs one entry and no fault.
pub fn tdg_mem_page_accept(kvm: &Kvm, vcpu: &KvmVcpu, mm: &Mm, rcx: u64) -> Result<TdxStatus, RunError> {
    let vm = td(kvm)?;
    let (gpa, level) = (rcx & !0xfff, rcx & 0xfff);
    if let Err(error) = page_info(gpa, level, 0, 0) {
        guest_run_to_exit(kvm, vcpu)?;
        return Ok(error.status);
    }
    let module = vm.module().clone();
    let tdr = vm.tdr_or_zero();
    guest_page_op(kvm, vcpu, mm, gpa, true, true, 1, |_access| match module.tdg_mem_page_accept(tdr, gpa, level) {
        Ok(status) => Ok(status),
        Err(TdExit::EptViolation { .. }) => {
            Err(GuestFault::Npf { error_code: tdx_ept_violation_code(EPT_VIOLATION_ACC_WRITE, 0) })
        }
        Err(exit) => {
            // The vCPU is inside the running TD: the module has the TD.
            kvm.machine()
                .warnings
                .report(WarnKind::Warn, format!("TDG.MEM.PAGE.ACCEPT({rcx:#x}) inside the TD: {exit:?}"));
            Err(GuestFault::Npf { error_code: tdx_ept_violation_code(EPT_VIOLATION_ACC_WRITE, 0) })
        }
    })
}

/// `TDG.VP.VMCALL` with `args`: a TD exit KVM handles ([`TdxVm::handle_tdvmcall`]). `Ok` is what
/// the guest finds in R10 and R11 when it resumes; `Err(RunError::Exit(..))` is the exit user
/// space completes ([`complete_userspace_io`]). EINVAL while an earlier exit of the vCPU is
/// still waiting for its completion (a VMM bug the model refuses rather than guess).
pub fn tdg_vp_vmcall(kvm: &Kvm, vcpu: &KvmVcpu, args: TdvmcallArgs) -> Result<TdvmcallResult, RunError> {
    let vm = td(kvm)?;
    if TdxVm::tdvmcall_pending(vcpu) {
        return Err(RunError::Errno(Errno::EINVAL));
    }
    guest_run_to_exit(kvm, vcpu)?;
    vm.handle_tdvmcall(kvm, vcpu, args)
}

/// `TDG.VP.VMCALL<MapGPA>(gpa, size)`: see [`crate::tdx::run`].
pub fn tdg_vp_vmcall_map_gpa(kvm: &Kvm, vcpu: &KvmVcpu, gpa: u64, size: u64) -> Result<TdvmcallResult, RunError> {
    let args = TdvmcallArgs { r10: TDX_HYPERCALL_STANDARD, r11: TDVMCALL_MAP_GPA, r12: gpa, r13: size, r14: 0 };
    tdg_vp_vmcall(kvm, vcpu, args)
}

/// The next `KVM_RUN` after user space handled the `KVM_EXIT_HYPERCALL` of a TDVMCALL, with
/// `hypercall.ret` ([`TdxVm::tdx_complete_userspace_io`]): the guest's R10/R11, or the next
/// exit. `None` if the vCPU waited for nothing (or the VM is not a TD).
pub fn complete_userspace_io(kvm: &Kvm, vcpu: &KvmVcpu, ret: u64) -> Option<Result<TdvmcallResult, RunError>> {
    TdxVm::of(kvm)?.tdx_complete_userspace_io(kvm, vcpu, ret)
}

/// One TDVMCALL run to KVM's answer: every `KVM_EXIT_HYPERCALL` is handed to `handle` (the
/// VMM: `Ok(hypercall.ret)`) and the vCPU re-entered with it, at most `bound` times (then EIO).
fn finish_tdvmcall(
    kvm: &Kvm,
    vcpu: &KvmVcpu,
    mut step: Result<TdvmcallResult, RunError>,
    bound: u64,
    handle: &mut impl FnMut(RunError) -> Result<u64, RunError>,
) -> Result<TdvmcallResult, RunError> {
    for _ in 0..bound {
        match step {
            Err(exit @ RunError::Exit(_)) => {
                let ret = handle(exit)?;
                step = complete_userspace_io(kvm, vcpu, ret).unwrap_or(Err(RunError::Errno(Errno::EINVAL)));
            }
            other => return other,
        }
    }
    match step {
        Err(RunError::Exit(_)) => Err(RunError::Errno(Errno::EIO)),
        other => other,
    }
}

/// Linux's `try_accept_one(start, len, pg_level)`: ACCEPT one page of `accept_size` bytes
/// (4K, 2M or 1G) at `start` if `start` is aligned to it and `len` covers it. Returns the
/// size accepted, 0 if it did not fit or the TDCALL returned any non-zero status (v6.18's
/// guest treats "already accepted", a warning status, as a failure too).
pub fn try_accept_one(
    kvm: &Kvm,
    vcpu: &KvmVcpu,
    mm: &Mm,
    start: u64,
    len: u64,
    accept_size: u64,
) -> Result<u64, RunError> {
    let page_size = match accept_size {
        PAGE_SIZE => TDX_PS_4K,
        0x20_0000 => TDX_PS_2M,
        0x4000_0000 => TDX_PS_1G,
        _ => return Ok(0),
    };
    if start % accept_size != 0 || len < accept_size {
        return Ok(0);
    }
    let status = tdg_mem_page_accept(kvm, vcpu, mm, start | page_size)?;
    Ok(if status.raw() != 0 { 0 } else { accept_size })
}

/// Linux's `tdx_accept_memory(start, end)`: accept `[start, end)`, trying 1G, then 2M, then 4K
/// at each step. False as soon as a 4K ACCEPT fails.
pub fn tdx_accept_memory(kvm: &Kvm, vcpu: &KvmVcpu, mm: &Mm, start: u64, end: u64) -> Result<bool, RunError> {
    let mut start = start;
    while start < end {
        let len = end - start;
        let mut accept_size = try_accept_one(kvm, vcpu, mm, start, len, 0x4000_0000)?;
        if accept_size == 0 {
            accept_size = try_accept_one(kvm, vcpu, mm, start, len, 0x20_0000)?;
        }
        if accept_size == 0 {
            accept_size = try_accept_one(kvm, vcpu, mm, start, len, PAGE_SIZE)?;
        }
        if accept_size == 0 {
            return Ok(false);
        }
        start += accept_size;
    }
    Ok(true)
}

/// Linux's `tdx_map_gpa(start, end, enc)`: notify the VMM of a conversion of the private range
/// `[start, end)` (to shared unless `enc`: the gpas get the shared bit) with
/// `TDG.VP.VMCALL<MapGPA>`, `handle` answering each `KVM_EXIT_HYPERCALL` as the VMM
/// (`Ok(hypercall.ret)`). `TDVMCALL_STATUS_RETRY` asks again from R11, after checking that R11
/// lies in the range (the VMM is not trusted); three retries without progress give up.
/// True on success.
pub fn tdx_map_gpa(
    kvm: &Kvm,
    vcpu: &KvmVcpu,
    start: u64,
    end: u64,
    enc: bool,
    mut handle: impl FnMut(RunError) -> Result<u64, RunError>,
) -> Result<bool, RunError> {
    // Retrying the hypercall a second time should succeed; use 3 just in case.
    const MAX_RETRIES_PER_PAGE: u32 = 3;
    let (mut start, mut end) = (start, end);
    if !enc {
        // Set the shared (decrypted) bits.
        start |= shared_bit(kvm);
        end |= shared_bit(kvm);
    }
    let mut retry_count = 0;
    while retry_count < MAX_RETRIES_PER_PAGE {
        let size = end.wrapping_sub(start);
        let first = tdg_vp_vmcall_map_gpa(kvm, vcpu, start, size);
        let answer = finish_tdvmcall(kvm, vcpu, first, max_exits(size), &mut handle)?;
        if answer.r10 != TDVMCALL_STATUS_RETRY {
            return Ok(answer.r10 == 0);
        }
        // The guest must retry the operation for the pages in the region starting at the GPA
        // specified in R11. R11 comes from the untrusted VMM. Sanity check it.
        let map_fail_paddr = answer.r11;
        if map_fail_paddr < start || map_fail_paddr >= end {
            return Ok(false);
        }
        // "Consume" a retry without forward progress.
        if map_fail_paddr == start {
            retry_count += 1;
            continue;
        }
        start = map_fail_paddr;
        retry_count = 0;
    }
    Ok(false)
}

/// Linux's `tdx_enc_status_changed` for the physical range `[start, end)`: [`tdx_map_gpa`],
/// then, converting to private, [`tdx_accept_memory`] (shared-to-private memory must be
/// accepted before use). True on success.
#[allow(clippy::too_many_arguments)]
pub fn tdx_enc_status_changed(
    kvm: &Kvm,
    vcpu: &KvmVcpu,
    mm: &Mm,
    start: u64,
    end: u64,
    enc: bool,
    handle: impl FnMut(RunError) -> Result<u64, RunError>,
) -> Result<bool, RunError> {
    if !tdx_map_gpa(kvm, vcpu, start, end, enc, handle)? {
        return Ok(false);
    }
    if enc {
        return tdx_accept_memory(kvm, vcpu, mm, start, end);
    }
    Ok(true)
}
