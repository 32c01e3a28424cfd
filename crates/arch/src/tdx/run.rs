//! KVM's TDX run path (`arch/x86/kvm/vmx/tdx.c`, Linux 6.18.44): what `KVM_RUN` does for a TD's
//! vCPU around the generic entry of [`gmem_kvm::vcpu`].
//!
//! | kernel | here |
//! |---|---|
//! | `tdx_vcpu_pre_run` | [`TdxVm::tdx_vcpu_pre_run`] ([`KvmArch::vcpu_pre_run`](gmem_kvm::arch::KvmArch::vcpu_pre_run)) |
//! | `tdx_vcpu_run`, `tdx_vcpu_enter_exit`, `tdx_exit_handlers_fastpath` | [`TdxVm::tdx_vcpu_run`] ([`KvmArch::vcpu_run`](gmem_kvm::arch::KvmArch::vcpu_run)); the TD exit is [`KvmArch::vcpu_run_exit`](gmem_kvm::arch::KvmArch::vcpu_run_exit) |
//! | the TDX module's checks of a private access (S-EPT walk: #VE, pending EPT violation, #MC) | [`TdxVm::tdx_guest_access_check`] ([`KvmArch::guest_access_check`](gmem_kvm::arch::KvmArch::guest_access_check)) |
//! | `tdx_handle_ept_violation`, `tdx_is_sept_violation_unexpected_pending` (`tdx_handle_exit`'s `EXIT_REASON_EPT_VIOLATION`) | [`TdxVm::tdx_handle_ept_violation`] ([`KvmArch::handle_guest_fault`](gmem_kvm::arch::KvmArch::handle_guest_fault)) |
//! | `handle_tdvmcall` (`EXIT_REASON_TDCALL`), `tdx_emulate_vmcall` (`EXIT_REASON_VMCALL`), `tdx_get_td_vm_call_info` | [`TdxVm::handle_tdvmcall`] |
//! | `tdx_map_gpa`, `__tdx_map_gpa`, `tdx_complete_vmcall_map_gpa`, `complete_hypercall_exit` | [`TdxVm::tdx_map_gpa`], [`TdxVm::tdx_complete_userspace_io`] |
//!
//! # Entering the TD
//!
//! `KVM_RUN` on a TD's vCPU is refused (EINVAL) until the vCPU was initialised
//! (`KVM_TDX_INIT_VCPU`) and the TD finalised (`KVM_TDX_FINALIZE_VM`). Each entry runs in guest
//! mode (`vcpu->mode == IN_GUEST_MODE`, after the request check): while `wait_for_sept_zap` is
//! set (a zap SEAMCALL is being retried with every vCPU kept out, T6) `tdx_vcpu_run` returns
//! `EXIT_FASTPATH_EXIT_HANDLED` without entering, and the vCPU goes round `vcpu_run`'s loop and
//! tries again; otherwise `TDH.VP.ENTER` puts the vCPU in the TD in the current TD epoch. A
//! busy TD lock (`TDX_OPERAND_BUSY`: a TRACK holds the epoch) is also an exit without entry.
//! The TD exit that ends the entry (after the guest's access) takes the vCPU out of the epoch
//! tracking, as does the IPI of a kick ([`KvmArch::kick_vcpu`](gmem_kvm::arch::KvmArch::kick_vcpu)),
//! so `TDH.MEM.TRACK` and `tdx_track`'s kick see real vCPUs. A `TDH.VP.ENTER` failure other
//! than BUSY cannot happen once `tdx_vcpu_pre_run` passed; the kernel would exit with
//! `KVM_EXIT_INTERNAL_ERROR`, which the model does not have: it is EIO here.
//!
//! # Private accesses and EPT violations
//!
//! The hardware walks the S-EPT for a private gpa (no shared bit) and the shared EPT (KVM's
//! direct root) for a shared one. The model translates through the vCPU's TLB, or a walk of the
//! root the gpa selects (the mirror root stands for the S-EPT's shape: T5 keeps them equal), and
//! then has the TDX module check a private access against the S-EPT itself
//! ([`TdxModule::guest_private_access`](crate::tdx::module::TdxModule)): a MAPPED leaf completes
//! (a read of a line the host poisoned is a machine check, `#MC` to the guest here); a PENDING
//! leaf is a #VE in the guest, or, when the TD has `SEPT_VE_DISABLE`, the "pending" EPT
//! violation; a FREE or blocked entry is an EPT violation.
//!
//! An EPT violation's exit qualification and extended exit qualification travel in one error
//! code ([`tdx_ept_violation_code`]: the model's packing). `tdx_handle_ept_violation` then
//! follows the kernel: a private gpa's "unexpected pending" violation (`pr_warn` "Guest access
//! before accepting", which is not a WARN) kills the VM (`kvm_vm_dead`) and `KVM_RUN` fails
//! with EIO; any other private violation is a write fault with `PFERR_PRIVATE_ACCESS`, retried
//! locally (without re-entering the TD) while it returns `RET_PF_RETRY`, until the vCPU has an
//! event to take (re-enter to deliver it), a signal is pending (EINTR), the VM is dead (EIO) or
//! the gfn's memslot is being deleted or moved (upstream 2bc2694fe20b, in v6.18: re-enter, so
//! the vCPU leaves `kvm->srcu`, which it holds while handling the exit, and the memslot update's
//! `synchronize_srcu` can finish). The model bounds the local retries at
//! [`FAULT_RETRY_LIMIT`] with a WARN and EINTR (the kernel spins until a signal). A shared gpa's
//! violation is an ordinary fault with the access's own kind, not retried locally; an
//! instruction fetch from shared memory (a `KVM_BUG_ON` in the kernel) is outside the model,
//! whose guests make loads and stores only.
//!
//! # TDVMCALL
//!
//! A `TDG.VP.VMCALL` is a TD exit (`EXIT_REASON_TDCALL`) with the guest's registers:
//! [`TdvmcallArgs`] in, [`TdvmcallResult`] (R10, the status; R11) out. R10 non-zero on entry is
//! a KVM hypercall (`tdx_emulate_vmcall`: R10 is its number, R11..R14 its arguments, the result
//! goes back in R10). Otherwise R11 selects the leaf: `MapGPA` and `GetTdVmCallInfo` (leaf 0)
//! are modelled, an unknown leaf is `TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED`; the leaves that exit
//! to user space with `KVM_EXIT_TDX` or `KVM_EXIT_SYSTEM_EVENT` (`ReportFatalError`, `GetQuote`,
//! `SetupEventNotifyInterrupt`, `GetTdVmCallInfo` leaf 1) need exits the model does not have
//! and are EOPNOTSUPP.
//!
//! `MapGPA(gpa, size)` (the guest's private/shared conversion request) checks, in the kernel's
//! order: user space enabled the `KVM_HC_MAP_GPA_RANGE` exit (else
//! `TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED`); the range does not wrap, both ends are legal gpas
//! (below `MAXPHYADDR`, [`TD_MAXPHYADDR`] here) and on the same side of the shared bit (else
//! `TDVMCALL_STATUS_INVALID_OPERAND`); gpa and size are page aligned (else
//! `TDVMCALL_STATUS_ALIGN_ERROR`); a failure puts the gpa in R11. Then the range goes to user
//! space in chunks of at most 2 MiB, each a `KVM_EXIT_HYPERCALL` (`KVM_HC_MAP_GPA_RANGE`,
//! `args[0]` the chunk's gpa without the shared bit, `args[1]` its pages, `args[2]`
//! `KVM_MAP_GPA_RANGE_ENCRYPTED` for a private gpa and `..._DECRYPTED` for a shared one,
//! `hypercall.ret` zeroed). The next `KVM_RUN` completes the chunk with the VMM's
//! `hypercall.ret`: non-zero is `TDVMCALL_STATUS_INVALID_OPERAND` with R11 = the chunk's gpa;
//! otherwise the next chunk, unless the range is done (success) or the vCPU has an event to
//! take (`TDVMCALL_STATUS_RETRY` with R11 = the next gpa: the guest asks again from there).

use crate::tdx::guest::TdExit;
use crate::tdx::kvm::{TdState, TdxStats, TdxVcpu, TdxVm};
use crate::tdx::status::TDX_OPERAND_BUSY;
use gmem_kvm::arch::{GuestAccess, GuestException, GuestFault, GuestFaultExit, VcpuRunEntry};
use gmem_kvm::caps::KVM_HC_MAP_GPA_RANGE;
use gmem_kvm::memslot::KVM_MEMSLOT_INVALID;
use gmem_kvm::page_fault::kvm_mmu_page_fault;
use gmem_kvm::vcpu::{
    KvmVcpu, RetPf, RunError, VcpuExit, FAULT_RETRY_LIMIT, KVM_EXIT_HYPERCALL_LONG_MODE, KVM_MAP_GPA_RANGE_DECRYPTED,
    KVM_MAP_GPA_RANGE_ENCRYPTED,
};
use gmem_kvm::{Gfn, Kvm};
use gmem_mm::vma::Mm;
use gmem_mm::Errno;
use gmem_sync::atomic::Ordering;
use gmem_sync::warn::WarnKind;

/// `EPT_VIOLATION_ACC_READ`: the access was a read.
pub const EPT_VIOLATION_ACC_READ: u64 = 1 << 0;
/// `EPT_VIOLATION_ACC_WRITE`: the access was a write.
pub const EPT_VIOLATION_ACC_WRITE: u64 = 1 << 1;
/// `EPT_VIOLATION_ACC_INSTR`: the access was an instruction fetch.
pub const EPT_VIOLATION_ACC_INSTR: u64 = 1 << 2;
/// `EPT_VIOLATION_PROT_MASK`: the permissions (RWX) of the entry the walk ended at.
pub const EPT_VIOLATION_PROT_MASK: u64 = 0b111 << 3;
/// `EPT_VIOLATION_EXEC_FOR_RING3_LIN`.
pub const EPT_VIOLATION_EXEC_FOR_RING3_LIN: u64 = 1 << 6;
/// `TDX_EXT_EXIT_QUAL_TYPE_MASK`.
pub const TDX_EXT_EXIT_QUAL_TYPE_MASK: u64 = 0xf;
/// `TDX_EXT_EXIT_QUAL_TYPE_PENDING_EPT_VIOLATION`: the access touched a PENDING page of a TD
/// with `SEPT_VE_DISABLE`.
pub const TDX_EXT_EXIT_QUAL_TYPE_PENDING_EPT_VIOLATION: u64 = 6;

/// The model's error code of a TD's EPT violation: the exit qualification in the low 32 bits,
/// the extended exit qualification above (what `tdx_vcpu_enter_exit` reads from RCX and RDX).
pub const fn tdx_ept_violation_code(exit_qual: u64, ext_exit_qual: u64) -> u64 {
    (exit_qual & 0xffff_ffff) | (ext_exit_qual << 32)
}

/// The exit qualification of an error code made by [`tdx_ept_violation_code`].
pub const fn tdx_exit_qual(error_code: u64) -> u64 {
    error_code & 0xffff_ffff
}

/// The extended exit qualification of an error code made by [`tdx_ept_violation_code`].
pub const fn tdx_ext_exit_qual(error_code: u64) -> u64 {
    error_code >> 32
}

/// `tdx_is_sept_violation_unexpected_pending(vcpu)`: the extended exit qualification says
/// "pending EPT violation" and the exit qualification has neither permissions nor
/// `EXEC_FOR_RING3_LIN`.
pub const fn tdx_is_sept_violation_unexpected_pending(exit_qual: u64, ext_exit_qual: u64) -> bool {
    if ext_exit_qual & TDX_EXT_EXIT_QUAL_TYPE_MASK != TDX_EXT_EXIT_QUAL_TYPE_PENDING_EPT_VIOLATION {
        return false;
    }
    exit_qual & EPT_VIOLATION_PROT_MASK == 0 && exit_qual & EPT_VIOLATION_EXEC_FOR_RING3_LIN == 0
}

/// `TDX_HYPERCALL_STANDARD`: R10 of a `TDG.VP.VMCALL` the GHCI defines (else a KVM hypercall).
pub const TDX_HYPERCALL_STANDARD: u64 = 0;
/// `TDVMCALL_GET_TD_VM_CALL_INFO`.
pub const TDVMCALL_GET_TD_VM_CALL_INFO: u64 = 0x10000;
/// `TDVMCALL_MAP_GPA`.
pub const TDVMCALL_MAP_GPA: u64 = 0x10001;
/// `TDVMCALL_GET_QUOTE`.
pub const TDVMCALL_GET_QUOTE: u64 = 0x10002;
/// `TDVMCALL_REPORT_FATAL_ERROR`.
pub const TDVMCALL_REPORT_FATAL_ERROR: u64 = 0x10003;
/// `TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT`.
pub const TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT: u64 = 0x10004;
/// `TDVMCALL_STATUS_SUCCESS`.
pub const TDVMCALL_STATUS_SUCCESS: u64 = 0;
/// `TDVMCALL_STATUS_RETRY`: the guest asks again from the gpa in R11.
pub const TDVMCALL_STATUS_RETRY: u64 = 1;
/// `TDVMCALL_STATUS_INVALID_OPERAND`.
pub const TDVMCALL_STATUS_INVALID_OPERAND: u64 = 0x8000_0000_0000_0000;
/// `TDVMCALL_STATUS_ALIGN_ERROR`.
pub const TDVMCALL_STATUS_ALIGN_ERROR: u64 = 0x8000_0000_0000_0002;
/// `TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED`.
pub const TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED: u64 = 0x8000_0000_0000_0003;
/// `TDX_MAP_GPA_MAX_LEN`: MapGPA goes to user space in chunks of at most this many bytes.
pub const TDX_MAP_GPA_MAX_LEN: u64 = 2 << 20;
/// The `MAXPHYADDR` of a TD's vCPUs (`kvm_vcpu_is_legal_gpa`): the model host's, which QEMU
/// gives its vCPUs (`host-phys-bits`).
pub const TD_MAXPHYADDR: u32 = 52;

/// The registers of a `TDG.VP.VMCALL` the guest makes (`vp_enter_args` at the TD exit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TdvmcallArgs {
    /// R10: [`TDX_HYPERCALL_STANDARD`], or a KVM hypercall number.
    pub r10: u64,
    /// R11: the TDVMCALL leaf (`TDVMCALL_*`).
    pub r11: u64,
    /// R12.
    pub r12: u64,
    /// R13.
    pub r13: u64,
    /// R14.
    pub r14: u64,
}

/// What the guest finds in R10 and R11 when the TDVMCALL returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TdvmcallResult {
    /// R10: the status (`TDVMCALL_STATUS_*`; a KVM hypercall's result).
    pub r10: u64,
    /// R11: the leaf's output (MapGPA: the gpa to retry from, or the failing one).
    pub r11: u64,
}

/// What a vCPU's `KVM_EXIT_HYPERCALL` waits for (`vcpu->arch.complete_userspace_io`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TdvmcallPending {
    /// `tdx_complete_vmcall_map_gpa`.
    MapGpa,
    /// `complete_hypercall_exit` (a KVM hypercall the guest made with `TDG.VP.VMCALL`).
    Hypercall,
}

/// A vCPU's TDVMCALL state: `tdx->map_gpa_next`, `tdx->map_gpa_end`, the guest's R11 and the
/// completion user space owes.
#[derive(Clone, Copy, Debug, Default)]
pub struct TdvmcallState {
    map_gpa_next: u64,
    map_gpa_end: u64,
    r11: u64,
    pending: Option<TdvmcallPending>,
}

/// The exit qualification of a load or store whose walk found no permission.
const fn access_exit_qual(write: bool) -> u64 {
    if write {
        EPT_VIOLATION_ACC_WRITE
    } else {
        EPT_VIOLATION_ACC_READ
    }
}

impl TdxVm {
    /// `tdx_vcpu_pre_run(vcpu)`: EINVAL unless the vCPU is initialised and the TD runnable.
    pub fn tdx_vcpu_pre_run(&self, _kvm: &Kvm, vcpu: &KvmVcpu) -> Result<(), RunError> {
        let initialized = vcpu.arch::<TdxVcpu>().is_some_and(TdxVcpu::initialized);
        if !initialized || self.td_state() != TdState::Runnable {
            return Err(RunError::Errno(Errno::EINVAL));
        }
        Ok(())
    }

    /// `tdx_vcpu_run(vcpu, run_flags)` up to the TD entry: no entry while `wait_for_sept_zap`
    /// is set ("Wait until retry of SEPT-zap-related SEAMCALL completes before allowing vCPU
    /// entry to avoid contention with tdh_vp_enter() and TDCALLs"), else `TDH.VP.ENTER`;
    /// `TDX_OPERAND_BUSY` from it is `EXIT_FASTPATH_EXIT_HANDLED` (no entry, try again). An
    /// entry in a later TD epoch than the vCPU's previous one first drops the vCPU's cached
    /// private translations: the TDX module's flush on entry, which is what makes BLOCK,
    /// TRACK and the kick enough before `TDH.MEM.PAGE.REMOVE` (arch-and-mmu.md §2.7).
    #[doc(alias("tdx_exit_handlers_fastpath", "tdx_vcpu_enter_exit"))]
    pub fn tdx_vcpu_run(&self, kvm: &Kvm, vcpu: &KvmVcpu) -> VcpuRunEntry {
        if self.wait_for_sept_zap() {
            TdxStats::bump(&self.stats.entries_deferred);
            return VcpuRunEntry::NotEntered;
        }
        let Some(tdvpr) = vcpu.arch::<TdxVcpu>().and_then(TdxVcpu::tdvpr) else {
            // tdx_vcpu_pre_run refuses a vCPU without its TDVPR first.
            return VcpuRunEntry::Failed(RunError::Errno(Errno::EIO));
        };
        match self.module().tdh_vp_enter(tdvpr) {
            Ok(entry) => {
                TdxStats::bump(&self.stats.vp_enters);
                if entry.flush_private_tlb {
                    // The module's flush on entry in a new TLB epoch: the vCPU's translations of
                    // private gpas (those without the shared bit) go; shared-EPT translations
                    // are KVM's to flush (KVM_REQ_TLB_FLUSH, tdx_flush_tlb_all's INVEPT).
                    let flushed = vcpu.tlb().flush_translations(|gfn| !kvm.is_gfn_alias(gfn));
                    self.stats.entry_tlb_flushes.fetch_add(flushed as u64, Ordering::Relaxed);
                }
                VcpuRunEntry::Entered
            }
            Err(error) if error.status.class() == TDX_OPERAND_BUSY => {
                // tdx_exit_handlers_fastpath: EXIT_FASTPATH_EXIT_HANDLED, so that a kicked vCPU
                // leaves the fastpath with interrupts enabled and the kick's IPI is taken.
                TdxStats::bump(&self.stats.vp_enter_busy);
                VcpuRunEntry::NotEntered
            }
            Err(error) => {
                // tdx_handle_exit: "TD vp_enter_ret", KVM_EXIT_INTERNAL_ERROR.
                tracing::warn!("TD vp_enter_ret {error}");
                VcpuRunEntry::Failed(RunError::Errno(Errno::EIO))
            }
        }
    }
}

impl TdxVm {
    /// `vt_is_tdx_private_gpa(kvm, gpa)`: the gpa lacks the shared bit.
    pub fn is_private_gpa(kvm: &Kvm, gpa: u64) -> bool {
        !kvm.is_gfn_alias(Gfn(gpa >> gmem_mm::types::PAGE_SHIFT))
    }

    /// The TDX module's side of a guest access after the walk: a private access is checked
    /// against the S-EPT (see the module docs); shared accesses are the shared EPT's alone. A
    /// frame that is not the one the walk found means the vCPU translated through a stale
    /// translation (a model bug: reported as a WARN).
    pub fn tdx_guest_access_check(&self, kvm: &Kvm, access: &GuestAccess) -> Result<(), GuestFault> {
        if !access.private {
            return Ok(());
        }
        let gpa = access.gfn.to_gpa().0;
        let plain = tdx_ept_violation_code(access_exit_qual(access.write), 0);
        match self.module().guest_private_access(self.tdr_or_zero(), gpa, access.write) {
            Ok(pfn) => {
                kvm.machine().warnings.warn_on(pfn != access.pfn, || {
                    format!("TD access to gpa {gpa:#x} translated to {:?} but the S-EPT maps {pfn:?}", access.pfn)
                });
                Ok(())
            }
            Err(TdExit::EptViolation { pending: true, .. }) => Err(GuestFault::Npf {
                error_code: tdx_ept_violation_code(
                    access_exit_qual(access.write),
                    TDX_EXT_EXIT_QUAL_TYPE_PENDING_EPT_VIOLATION,
                ),
            }),
            Err(TdExit::EptViolation { .. }) => Err(GuestFault::Npf { error_code: plain }),
            Err(TdExit::VirtualizationException { gpa }) => {
                Err(GuestFault::Exception(GuestException { vector: "#VE", gpa, reason: "ept-violation-pending-page" }))
            }
            Err(TdExit::MachineCheck { gpa, .. }) => {
                Err(GuestFault::Exception(GuestException { vector: "#MC", gpa, reason: "poisoned-line" }))
            }
            Err(exit @ (TdExit::NotPrivate { .. } | TdExit::NoTd)) => {
                // The vCPU entered the TD (TDH.VP.ENTER succeeded) and the gpa is private.
                kvm.machine()
                    .warnings
                    .report(WarnKind::Warn, format!("TD private access to gpa {gpa:#x} inside the TD: {exit:?}"));
                Err(GuestFault::Npf { error_code: plain })
            }
        }
    }

    /// `tdx_handle_ept_violation(vcpu)` for the violation `fault` (see the module docs), with
    /// `mm` the VM owner's address space for the shared backing.
    #[doc(alias = "__vmx_handle_ept_violation")]
    pub fn tdx_handle_ept_violation(
        &self,
        kvm: &Kvm,
        vcpu: &KvmVcpu,
        mm: &Mm,
        fault: &GuestFaultExit,
    ) -> Result<RetPf, RunError> {
        TdxStats::bump(&self.stats.ept_violations);
        let gpa = fault.gpa;
        let (exit_qual, ext_exit_qual) = match fault.error_code {
            Some(code) => (tdx_exit_qual(code), tdx_ext_exit_qual(code)),
            None => (access_exit_qual(fault.write), 0),
        };
        let private = TdxVm::is_private_gpa(kvm, gpa);
        let (write, local_retry) = if private {
            if tdx_is_sept_violation_unexpected_pending(exit_qual, ext_exit_qual) {
                tracing::warn!("Guest access before accepting {gpa:#x} on vCPU {}", vcpu.vcpu_id());
                kvm.kvm_vm_dead();
                return Err(RunError::Errno(Errno::EIO));
            }
            // Always treat SEPT violations as write faults: TD private pages are always RWX in
            // the S-EPT, and a read fault could map a CoW page (AUG of one HPA at two GPAs).
            // Only private GPAs trigger the zero-step mitigation: retry locally.
            (true, true)
        } else {
            (exit_qual & EPT_VIOLATION_ACC_WRITE != 0, false)
        };
        // KVM_RUN handles exits inside kvm->srcu (vcpu_run drops it only around the entry).
        let srcu = kvm.srcu_read_lock();
        let mut retries = 0;
        loop {
            // __vmx_handle_ept_violation → kvm_mmu_page_fault.
            let ret = kvm_mmu_page_fault(kvm, vcpu, mm, gpa, private, write)?;
            if ret != RetPf::Retry || !local_retry {
                return Ok(ret);
            }
            if vcpu.has_events() {
                TdxStats::bump(&self.stats.local_retry_events);
                return Ok(ret);
            }
            // vcpu_run then sees the signal: KVM_EXIT_INTR.
            if kvm.machine().signal_pending() {
                return Err(RunError::Errno(Errno::EINTR));
            }
            // kvm_check_request(KVM_REQ_VM_DEAD).
            if kvm.is_dead() {
                return Err(RunError::Errno(Errno::EIO));
            }
            // Bail if the memslot is invalid (being deleted or moved): faulting in cannot succeed,
            // and the memslot update waits for this task to leave kvm->srcu.
            let gfn = Gfn(gpa >> gmem_mm::types::PAGE_SHIFT);
            if kvm.gfn_to_memslot(&srcu, gfn).is_some_and(|slot| slot.flags() & KVM_MEMSLOT_INVALID != 0) {
                TdxStats::bump(&self.stats.local_retry_invalid_slot);
                return Ok(ret);
            }
            retries += 1;
            TdxStats::bump(&self.stats.local_retries);
            if retries > FAULT_RETRY_LIMIT {
                kvm.machine().warnings.report(
                    WarnKind::Warn,
                    format!(
                        "vCPU {}: the EPT violation at gpa {gpa:#x} made no progress in {FAULT_RETRY_LIMIT} local retries",
                        vcpu.vcpu_id()
                    ),
                );
                return Err(RunError::Errno(Errno::EINTR));
            }
            // cond_resched.
            gmem_sync::thread::backoff(retries);
        }
    }
}

impl TdxVm {
    fn tdvmcall_state(vcpu: &KvmVcpu) -> Result<&TdxVcpu, RunError> {
        vcpu.arch::<TdxVcpu>().ok_or(RunError::Errno(Errno::EINVAL))
    }

    /// Whether `vcpu` waits for user space to complete a `KVM_EXIT_HYPERCALL` its TDVMCALL made.
    pub fn tdvmcall_pending(vcpu: &KvmVcpu) -> bool {
        vcpu.arch::<TdxVcpu>().is_some_and(|tdx| tdx.tdvmcall.lock().pending.is_some())
    }

    /// `handle_tdvmcall(vcpu)` (with `tdx_emulate_vmcall` for a KVM hypercall): the TD exited
    /// with `TDG.VP.VMCALL` and `args`. `Ok` is what the guest finds when it resumes;
    /// `Err(RunError::Exit(..))` an exit to user space, completed by
    /// [`TdxVm::tdx_complete_userspace_io`] at the next `KVM_RUN`.
    #[doc(alias("tdx_emulate_vmcall", "tdx_get_td_vm_call_info"))]
    pub fn handle_tdvmcall(&self, kvm: &Kvm, vcpu: &KvmVcpu, args: TdvmcallArgs) -> Result<TdvmcallResult, RunError> {
        let tdx = Self::tdvmcall_state(vcpu)?;
        if args.r10 != TDX_HYPERCALL_STANDARD {
            // tdx_emulate_vmcall → __kvm_emulate_hypercall(vcpu, 0, complete_hypercall_exit):
            // RAX = R10 (the number), RBX, RCX, RDX = R11..R13; the result goes to R10.
            return match gmem_kvm::vcpu::guest_hypercall(kvm, vcpu, args.r10, args.r11, args.r12, args.r13) {
                Ok(ret) => Ok(TdvmcallResult { r10: ret, r11: args.r11 }),
                Err(exit @ RunError::Exit(_)) => {
                    let mut state = tdx.tdvmcall.lock();
                    state.r11 = args.r11;
                    state.pending = Some(TdvmcallPending::Hypercall);
                    Err(exit)
                }
                Err(other) => Err(other),
            };
        }
        let done = |r10: u64, r11: u64| Ok(TdvmcallResult { r10, r11 });
        match args.r11 {
            TDVMCALL_MAP_GPA => self.tdx_map_gpa(kvm, vcpu, args.r12, args.r13),
            TDVMCALL_GET_TD_VM_CALL_INFO => match args.r12 {
                0 => done(TDVMCALL_STATUS_SUCCESS, 0),
                // Leaf 1 asks user space (KVM_EXIT_TDX).
                1 => Err(RunError::Errno(Errno::EOPNOTSUPP)),
                _ => done(TDVMCALL_STATUS_INVALID_OPERAND, args.r11),
            },
            // KVM_EXIT_SYSTEM_EVENT and KVM_EXIT_TDX: not modelled.
            TDVMCALL_REPORT_FATAL_ERROR | TDVMCALL_GET_QUOTE | TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT => {
                Err(RunError::Errno(Errno::EOPNOTSUPP))
            }
            _ => done(TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED, args.r11),
        }
    }

    /// `kvm_vcpu_is_legal_gpa(vcpu, gpa)`: no bit at or above [`TD_MAXPHYADDR`].
    fn is_legal_gpa(gpa: u64) -> bool {
        gpa >> TD_MAXPHYADDR == 0
    }

    /// `tdx_map_gpa(vcpu)`: `TDG.VP.VMCALL<MapGPA>(gpa, size)` (see the module docs).
    pub fn tdx_map_gpa(&self, kvm: &Kvm, vcpu: &KvmVcpu, gpa: u64, size: u64) -> Result<TdvmcallResult, RunError> {
        let tdx = Self::tdvmcall_state(vcpu)?;
        TdxStats::bump(&self.stats.map_gpa_requests);
        let error = |ret: u64| Ok(TdvmcallResult { r10: ret, r11: gpa });
        // Converting TDVMCALL_MAP_GPA to KVM_HC_MAP_GPA_RANGE requires user space to enable
        // KVM_CAP_EXIT_HYPERCALL with the KVM_HC_MAP_GPA_RANGE bit set.
        if !kvm.user_exit_on_hypercall(KVM_HC_MAP_GPA_RANGE) {
            return error(TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED);
        }
        let last = gpa.wrapping_add(size).wrapping_sub(1);
        if gpa.wrapping_add(size) <= gpa
            || !Self::is_legal_gpa(gpa)
            || !Self::is_legal_gpa(last)
            || TdxVm::is_private_gpa(kvm, gpa) != TdxVm::is_private_gpa(kvm, last)
        {
            return error(TDVMCALL_STATUS_INVALID_OPERAND);
        }
        if gpa % gmem_mm::PAGE_SIZE != 0 || size % gmem_mm::PAGE_SIZE != 0 {
            return error(TDVMCALL_STATUS_ALIGN_ERROR);
        }
        let mut state = tdx.tdvmcall.lock();
        state.map_gpa_end = gpa + size;
        state.map_gpa_next = gpa;
        state.r11 = TDVMCALL_MAP_GPA;
        Err(self.__tdx_map_gpa(kvm, &mut state))
    }

    /// `__tdx_map_gpa(tdx)`: the next chunk's `KVM_EXIT_HYPERCALL`, with `tdx_complete_vmcall_map_gpa`
    /// as the completion.
    fn __tdx_map_gpa(&self, kvm: &Kvm, state: &mut TdvmcallState) -> RunError {
        let gpa = state.map_gpa_next;
        let size = (state.map_gpa_end - state.map_gpa_next).min(TDX_MAP_GPA_MAX_LEN);
        let shared_bit = kvm.gfn_direct_bits() << gmem_mm::types::PAGE_SHIFT;
        let attrs =
            if TdxVm::is_private_gpa(kvm, gpa) { KVM_MAP_GPA_RANGE_ENCRYPTED } else { KVM_MAP_GPA_RANGE_DECRYPTED };
        state.pending = Some(TdvmcallPending::MapGpa);
        TdxStats::bump(&self.stats.map_gpa_exits);
        // hypercall.ret is zeroed for QEMU <= 9.2, which assumed KVM never changes it.
        RunError::Exit(VcpuExit::Hypercall {
            nr: KVM_HC_MAP_GPA_RANGE,
            args: [gpa & !shared_bit, size / gmem_mm::PAGE_SIZE, attrs, 0, 0, 0],
            flags: KVM_EXIT_HYPERCALL_LONG_MODE,
        })
    }

    /// The next `KVM_RUN` after user space handled a TDVMCALL's `KVM_EXIT_HYPERCALL`, with its
    /// `hypercall.ret` (`kvm_arch_vcpu_ioctl_run`: `vcpu_pre_run`, then
    /// `complete_userspace_io`): `tdx_complete_vmcall_map_gpa` (an error, the next chunk, done,
    /// or `TDVMCALL_STATUS_RETRY` when the vCPU has an event) or `complete_hypercall_exit`.
    /// `None` if the vCPU waited for nothing.
    #[doc(alias("complete_hypercall_exit", "tdx_complete_vmcall_map_gpa"))]
    pub fn tdx_complete_userspace_io(
        &self,
        kvm: &Kvm,
        vcpu: &KvmVcpu,
        ret: u64,
    ) -> Option<Result<TdvmcallResult, RunError>> {
        let tdx = vcpu.arch::<TdxVcpu>()?;
        if let Err(error) = self.tdx_vcpu_pre_run(kvm, vcpu) {
            return tdx.tdvmcall.lock().pending.is_some().then_some(Err(error));
        }
        let mut state = tdx.tdvmcall.lock();
        let pending = state.pending.take()?;
        Some(match pending {
            TdvmcallPending::Hypercall => Ok(TdvmcallResult { r10: ret, r11: state.r11 }),
            TdvmcallPending::MapGpa => {
                if ret != 0 {
                    return Some(Ok(TdvmcallResult { r10: TDVMCALL_STATUS_INVALID_OPERAND, r11: state.map_gpa_next }));
                }
                state.map_gpa_next += TDX_MAP_GPA_MAX_LEN;
                if state.map_gpa_next >= state.map_gpa_end {
                    return Some(Ok(TdvmcallResult { r10: TDVMCALL_STATUS_SUCCESS, r11: state.r11 }));
                }
                // Stop processing the remaining part if there is a pending interrupt, which
                // could be qualified to deliver.
                if vcpu.has_events() {
                    TdxStats::bump(&self.stats.map_gpa_retries);
                    return Some(Ok(TdvmcallResult { r10: TDVMCALL_STATUS_RETRY, r11: state.map_gpa_next }));
                }
                Err(self.__tdx_map_gpa(kvm, &mut state))
            }
        })
    }
}
