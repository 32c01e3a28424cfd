//! KVM's TDX run path (`arch/x86/kvm/vmx/tdx.c`, Linux 6.18.44): what `KVM_RUN` does for a TD's
//! vCPU around the generic entry of [`gmem_kvm::vcpu`].
//!
//! | kernel | here |
//! |---|---|
//! | `tdx_vcpu_pre_run` | [`TdxVm::tdx_vcpu_pre_run`] ([`KvmArch::vcpu_pre_run`](gmem_kvm::arch::KvmArch::vcpu_pre_run)) |
//! | `tdx_vcpu_run`, `tdx_vcpu_enter_exit`, `tdx_exit_handlers_fastpath` | [`TdxVm::tdx_vcpu_run`] ([`KvmArch::vcpu_run`](gmem_kvm::arch::KvmArch::vcpu_run)); the TD exit is [`KvmArch::vcpu_run_exit`](gmem_kvm::arch::KvmArch::vcpu_run_exit) |
//! | the TDX module's checks of a private access (S-EPT walk: #VE, pending EPT violation, #MC) | [`TdxVm::tdx_guest_access_check`] ([`KvmArch::guest_access_check`](gmem_kvm::arch::KvmArch::guest_access_check)) |
//! | `tdx_handle_ept_violation`, `tdx_is_sept_violation_unexpected_pending` (`tdx_handle_exit`'s `EXIT_REASON_EPT_VIOLATION`) | [`TdxVm::tdx_handle_ept_violation`] ([`KvmArch::handle_guest_fault`](gmem_kvm::arch::KvmArch::handle_guest_fault)) |
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

use crate::tdx::guest::TdExit;
use crate::tdx::kvm::{TdState, TdxStats, TdxVcpu, TdxVm};
use crate::tdx::status::TDX_OPERAND_BUSY;
use gmem_kvm::arch::{GuestAccess, GuestException, GuestFault, GuestFaultExit, VcpuRunEntry};
use gmem_kvm::memslot::KVM_MEMSLOT_INVALID;
use gmem_kvm::vcpu::{kvm_mmu_page_fault, KvmVcpu, RetPf, RunError, FAULT_RETRY_LIMIT};
use gmem_kvm::{Gfn, Kvm};
use gmem_mm::vma::Mm;
use gmem_mm::Errno;
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
    /// `TDX_OPERAND_BUSY` from it is `EXIT_FASTPATH_EXIT_HANDLED` (no entry, try again).
    pub fn tdx_vcpu_run(&self, _kvm: &Kvm, vcpu: &KvmVcpu) -> VcpuRunEntry {
        if self.wait_for_sept_zap() {
            TdxStats::bump(&self.stats.entries_deferred);
            return VcpuRunEntry::NotEntered;
        }
        let Some(tdvpr) = vcpu.arch::<TdxVcpu>().and_then(TdxVcpu::tdvpr) else {
            // tdx_vcpu_pre_run refuses a vCPU without its TDVPR first.
            return VcpuRunEntry::Failed(RunError::Errno(Errno::EIO));
        };
        match self.module().tdh_vp_enter(tdvpr) {
            Ok(()) => {
                TdxStats::bump(&self.stats.vp_enters);
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
            let ret = kvm_mmu_page_fault(kvm, vcpu, mm, gpa, private, write, false)?;
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
