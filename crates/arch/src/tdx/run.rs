//! KVM's TDX run path (`arch/x86/kvm/vmx/tdx.c`, Linux 6.18.44): what `KVM_RUN` does for a TD's
//! vCPU around the generic entry of [`gmem_kvm::vcpu`].
//!
//! | kernel | here |
//! |---|---|
//! | `tdx_vcpu_pre_run` | [`TdxVm::tdx_vcpu_pre_run`] ([`KvmArch::vcpu_pre_run`](gmem_kvm::arch::KvmArch::vcpu_pre_run)) |
//! | `tdx_vcpu_run`, `tdx_vcpu_enter_exit`, `tdx_exit_handlers_fastpath` | [`TdxVm::tdx_vcpu_run`] ([`KvmArch::vcpu_run`](gmem_kvm::arch::KvmArch::vcpu_run)); the TD exit is [`KvmArch::vcpu_run_exit`](gmem_kvm::arch::KvmArch::vcpu_run_exit) |
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

use crate::tdx::kvm::{TdState, TdxStats, TdxVcpu, TdxVm};
use crate::tdx::status::TDX_OPERAND_BUSY;
use gmem_kvm::arch::VcpuRunEntry;
use gmem_kvm::vcpu::{KvmVcpu, RunError};
use gmem_kvm::Kvm;
use gmem_mm::Errno;

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
