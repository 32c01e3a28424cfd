//! `KVM_RUN` on the simulator: [`VcpuFd::run`](crate::VcpuFd::run) and the guest it runs.
//!
//! A real vCPU executes guest code; the simulated one executes a *guest workload* its caller
//! supplies ([`GuestProgram`]): a sequence of guest operations ([`GuestOp`]: loads, stores, and
//! the guest's requests to convert memory). `run()` executes them through the simulated kernel's
//! own paths (the TDP MMU's fault path for accesses, `kvm_emulate_hypercall` for
//! `KVM_HC_MAP_GPA_RANGE`, the GHCB MSR protocol of an SEV-SNP guest, `TDG.VP.VMCALL<MapGPA>` of
//! a TD) until one of them exits to user space, and returns that exit shaped as kvm-ioctls'
//! `VcpuExit`, borrowing the vCPU's own `kvm_run` fields (the MMIO data, `hypercall.ret`) as
//! kvm-ioctls borrows the mmap'ed `struct kvm_run`. What the VMM writes into them is consumed by
//! the next `run()`, as KVM's `complete_userspace_io` consumes `kvm_run`: MMIO read data
//! completes the guest's load, `hypercall.ret` is what the guest finds in RAX (or what the
//! page-state change or MapGPA reports to it).
//!
//! How each operation runs depends on the VM type, as a Linux guest of that type would do it:
//!
//! | VM type | access kind | conversion request |
//! |---|---|---|
//! | `DEFAULT`, `SW_PROTECTED` | the page's attribute unless given | `VMCALL(KVM_HC_MAP_GPA_RANGE)`: one exit, RAX = `hypercall.ret` |
//! | `SEV_SNP` | the C-bit (private unless given) | per 4K page, `early_set_pages_state`: rescind (`PVALIDATE` 0) before a conversion to shared, the GHCB MSR protocol's page-state change (one `KVM_HC_MAP_GPA_RANGE` exit), `PVALIDATE` after a conversion to private |
//! | `TDX` | the shared bit (private unless given; MMIO exits name the address without it, as `tdx_emulate_mmio` does) | `tdx_map_gpa`: `TDG.VP.VMCALL<MapGPA>` (one exit per 2 MiB chunk, `TDVMCALL_STATUS_RETRY` followed from R11), then `tdx_accept_memory` after a conversion to private |
//!
//! An SEV-SNP or TDX vCPU runs only once its VM is launched (`KVM_SEV_SNP_LAUNCH_FINISH`,
//! `KVM_TDX_FINALIZE_VM`); before, the kernel refuses the entry and `run()` returns its error.

use crate::{Result, SimHost};
use gmem_arch::sev::ghcb::{GhcbResponse, GHCB_MSR_PSC_RESP, PSC_OP_PRIVATE, PSC_OP_SHARED};
use gmem_arch::sev::guest::PVALIDATE_FAIL_NOUPDATE;
use gmem_arch::tdx::run::{TdvmcallResult, TDVMCALL_STATUS_RETRY};
pub use gmem_kvm::arch::GuestException;
use gmem_kvm::caps::KVM_HC_MAP_GPA_RANGE;
use gmem_kvm::profile::VmType;
use gmem_kvm::vcpu::{RunError, VcpuExit as KernelExit, KVM_MAP_GPA_RANGE_ENCRYPTED};
use gmem_mm::types::{PAGE_SHIFT, PAGE_SIZE};
use gmem_mm::Errno;

/// One guest operation: what one guest instruction (an access) or one guest routine (a
/// conversion request) does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestOp {
    /// A load of `len` bytes (1 to 8, within one page: one instruction) at `gpa`. `private` is
    /// the access kind (an SNP guest's C-bit, a TD's absence of the shared bit, which `run()`
    /// adds to `gpa` for a shared access); `None` is the VM type's default (on `SW_PROTECTED`
    /// the page's attribute, on SNP and TDX private).
    Load {
        /// The guest physical address.
        gpa: u64,
        /// Bytes to load.
        len: usize,
        /// The access kind, `None` for the VM type's default.
        private: Option<bool>,
    },
    /// A store of `data` (1 to 8 bytes, within one page) at `gpa`; `private` as for
    /// [`GuestOp::Load`].
    Store {
        /// The guest physical address.
        gpa: u64,
        /// The bytes stored.
        data: Vec<u8>,
        /// The access kind, `None` for the VM type's default.
        private: Option<bool>,
    },
    /// The guest asks the host to convert `[gpa, gpa + size)` to private (`to_private`) or
    /// shared: the `KVM_HC_MAP_GPA_RANGE` hypercall, or the SNP or TDX protocol that ends in its
    /// exit (see the module docs). `size` is a multiple of 4 KiB.
    MapGpaRange {
        /// The first guest physical address (a TD's private gpa, without the shared bit).
        gpa: u64,
        /// Bytes to convert.
        size: u64,
        /// Convert to private (else to shared).
        to_private: bool,
    },
}

/// How a [`GuestOp`] ended, as the guest sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestOutcome {
    /// The load completed with these bytes (from memory, or from the VMM's MMIO read data).
    Loaded(Vec<u8>),
    /// The store completed (to memory, or handed to the VMM as an MMIO write).
    Stored,
    /// The conversion request completed with `ret`, what the guest's protocol reports: RAX of
    /// `KVM_HC_MAP_GPA_RANGE` (0, the VMM's `hypercall.ret`, or the kernel's own `-KVM_ENOSYS` /
    /// `-KVM_EINVAL`); for SNP 0 or the first page-state change response that was not
    /// `GHCB_MSR_PSC_RESP` (such as `GHCB_MSR_PSC_RESP_ERROR`); for a TD MapGPA's R10
    /// (`TDVMCALL_STATUS_*`, 0 on success).
    Mapped {
        /// The status the guest got.
        ret: u64,
    },
    /// The guest's own instruction in a conversion failed: `PVALIDATE`'s result code, or a
    /// `TDG.MEM.PAGE.ACCEPT` that did not succeed (code 0: Linux's `tdx_accept_memory` reports
    /// only failure), or a MapGPA retry that made no progress (code: R11).
    GuestFailed {
        /// The instruction (`"PVALIDATE"`, `"TDG.MEM.PAGE.ACCEPT"`, `"MapGPA retry"`).
        instruction: &'static str,
        /// Its result code.
        code: u64,
    },
    /// The hardware delivered an exception to the guest instead of completing the access (an
    /// SNP #VC for a page the guest has not validated, a TD's #VE for one it has not accepted):
    /// the guest's handler sees it, not the VMM.
    Exception(GuestException),
}

/// The guest workload a vCPU runs ([`VcpuFd::set_guest`](crate::VcpuFd::set_guest)).
///
/// `next_op` is asked for the guest's next operation each time the previous one completed,
/// with that one's outcome (`None` the first time); `None` ends the workload and the vCPU
/// halts (`VcpuExit::Hlt`). It is implemented by closures of that shape and by
/// [`GuestSequence`] (a fixed list).
pub trait GuestProgram: Send + Sync {
    /// The next operation, given how the previous one ended.
    fn next_op(&mut self, last: Option<&GuestOutcome>) -> Option<GuestOp>;
}

impl<F> GuestProgram for F
where
    F: FnMut(Option<&GuestOutcome>) -> Option<GuestOp> + Send + Sync,
{
    fn next_op(&mut self, last: Option<&GuestOutcome>) -> Option<GuestOp> {
        self(last)
    }
}

/// A fixed list of guest operations, run in order whatever their outcomes.
#[derive(Clone, Debug, Default)]
pub struct GuestSequence {
    ops: std::collections::VecDeque<GuestOp>,
}

impl GuestSequence {
    /// The operations `ops`, in order.
    pub fn new(ops: impl IntoIterator<Item = GuestOp>) -> GuestSequence {
        GuestSequence { ops: ops.into_iter().collect() }
    }
}

impl GuestProgram for GuestSequence {
    fn next_op(&mut self, _last: Option<&GuestOutcome>) -> Option<GuestOp> {
        self.ops.pop_front()
    }
}

/// The exit `KVM_RUN` returned (mirrors `kvm_ioctls::VcpuExit`, the variants the simulator
/// produces, with the same names and fields). The borrowed buffers are the vCPU's `kvm_run`
/// fields: write them before the next [`VcpuFd::run`](crate::VcpuFd::run).
#[derive(Debug)]
pub enum VcpuExit<'a> {
    /// `KVM_EXIT_MMIO`, a read: the guest loaded from `address`, which no memslot backs. Fill
    /// the slice before the next `run()`; the guest's load completes with it.
    MmioRead(u64, &'a mut [u8]),
    /// `KVM_EXIT_MMIO`, a write: the guest stored these bytes at `address`.
    MmioWrite(u64, &'a [u8]),
    /// `KVM_EXIT_HYPERCALL`: a hypercall user space enabled the exit for
    /// (`KVM_CAP_EXIT_HYPERCALL`), here always `KVM_HC_MAP_GPA_RANGE`.
    Hypercall(HypercallExit<'a>),
    /// `KVM_EXIT_HLT`: the guest workload ended (the guest halted with nothing left to run).
    Hlt,
    /// `KVM_EXIT_FAIL_ENTRY`: the hardware refused to enter the guest
    /// (`hardware_entry_failure_reason`, `cpu`; the simulator has no physical CPUs, `cpu` is 0).
    FailEntry(u64, u32),
    /// `KVM_EXIT_MEMORY_FAULT` (`KVM_RUN` failed with EFAULT or EHWPOISON and this exit reason,
    /// which kvm-ioctls returns as `Ok`): the guest's access kind disagrees with the range's
    /// attribute (`flags & KVM_MEMORY_EXIT_FLAG_PRIVATE`: the guest wants it private), or
    /// guest_memfd could not provide the page. The access is retried at the next `run()`.
    MemoryFault {
        /// `memory_fault.flags`.
        flags: u64,
        /// `memory_fault.gpa`.
        gpa: u64,
        /// `memory_fault.size`.
        size: u64,
    },
}

/// A `KVM_EXIT_HYPERCALL` (mirrors `kvm_ioctls::HypercallExit`).
#[derive(Debug)]
pub struct HypercallExit<'a> {
    /// `hypercall.nr`.
    pub nr: u64,
    /// `hypercall.args` (`KVM_HC_MAP_GPA_RANGE`: gpa, number of 4K pages, attributes).
    pub args: [u64; 6],
    /// `hypercall.ret`, zeroed by KVM before the exit: what the guest gets when the vCPU runs
    /// again (0 for success).
    pub ret: &'a mut u64,
    /// `hypercall.longmode` (the guest was in 64-bit mode).
    pub longmode: u32,
}

/// The fields of `struct kvm_run` an exit hands to user space and the next `KVM_RUN` reads back.
#[derive(Debug, Default)]
pub(crate) struct KvmRun {
    /// `mmio.data`.
    pub(crate) mmio_data: [u8; 8],
    /// `hypercall.ret`.
    pub(crate) hypercall_ret: u64,
}

/// How many guest operations one `run()` executes without an exit to user space before it
/// returns EINTR (see [`VcpuFd::set_run_op_limit`](crate::VcpuFd::set_run_op_limit)).
pub const DEFAULT_RUN_OP_LIMIT: u64 = 1 << 20;

/// A signal for a vCPU thread ([`VcpuFd::signal`](crate::VcpuFd::signal)): what a VMM sends
/// (`pthread_kill` with a handler) to take a vCPU out of a guest that does not exit by itself.
/// Raising it makes the vCPU's `run()` return EINTR (`KVM_EXIT_INTR`) at its next guest entry,
/// before the next guest operation; each raise is taken once. `Send` and `Sync`: it is meant for
/// another thread.
#[derive(Clone, Debug, Default)]
pub struct VcpuSignal {
    pending: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl VcpuSignal {
    /// Sends the signal.
    pub fn raise(&self) {
        self.pending.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether a signal is pending (not yet taken by a `run()`).
    pub fn is_pending(&self) -> bool {
        self.pending.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Takes a pending signal (`signal_pending` at a guest entry, and the handler run).
    pub(crate) fn take(&self) -> bool {
        self.pending.swap(false, std::sync::atomic::Ordering::AcqRel)
    }
}

/// What bounds one `run()`: `kvm_run.immediate_exit`, the vCPU's signal, and the operation limit.
pub(crate) struct RunBounds<'a> {
    /// `kvm_run.immediate_exit` is non-zero.
    pub(crate) immediate_exit: bool,
    pub(crate) signal: &'a VcpuSignal,
    pub(crate) op_limit: u64,
}

/// An exit as `run()` found it, before it is lent out as a [`VcpuExit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    MmioRead { addr: u64, len: usize },
    MmioWrite { addr: u64, len: usize },
    Hypercall { nr: u64, args: [u64; 6], flags: u64 },
    Hlt,
    FailEntry(u64),
    MemoryFault { flags: u64, gpa: u64, size: u64 },
}

impl Exit {
    /// The kvm-ioctls-shaped view, borrowing `run` as kvm-ioctls borrows the `kvm_run` page.
    pub(crate) fn view(self, run: &mut KvmRun) -> VcpuExit<'_> {
        match self {
            Exit::MmioRead { addr, len } => VcpuExit::MmioRead(addr, &mut run.mmio_data[..len]),
            Exit::MmioWrite { addr, len } => VcpuExit::MmioWrite(addr, &run.mmio_data[..len]),
            Exit::Hypercall { nr, args, flags } => {
                VcpuExit::Hypercall(HypercallExit { nr, args, ret: &mut run.hypercall_ret, longmode: flags as u32 })
            }
            Exit::Hlt => VcpuExit::Hlt,
            Exit::FailEntry(reason) => VcpuExit::FailEntry(reason, 0),
            Exit::MemoryFault { flags, gpa, size } => VcpuExit::MemoryFault { flags, gpa, size },
        }
    }
}

/// Where a running [`GuestOp`] stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpState {
    /// Not started, or to be executed again (after a memory fault, a failed entry, an error).
    Start,
    /// An MMIO exit waits for the VMM (`complete_emulated_mmio`).
    Mmio { len: usize, is_write: bool },
    /// A `KVM_HC_MAP_GPA_RANGE` exit waits for `hypercall.ret` (`complete_hypercall_exit`).
    Hypercall,
    /// SNP: page `page` of the range is at `phase`.
    Snp { page: u64, phase: SnpPhase },
    /// TDX: MapGPA of the range from `next` (a private gpa); `waiting` while its exit waits for
    /// `hypercall.ret`; `stalls` retries without progress so far.
    TdxMapGpa { next: u64, waiting: bool, stalls: u32 },
    /// TDX: MapGPA succeeded; the guest accepts the range (a conversion to private).
    TdxAccept,
}

/// A Linux SNP guest's steps for one page of `early_set_pages_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SnpPhase {
    /// `pvalidate(.., false)` before a conversion to shared.
    Rescind,
    /// The page-state change request (GHCB MSR protocol).
    Psc,
    /// Its `KVM_HC_MAP_GPA_RANGE` exit waits for `hypercall.ret`.
    PscWaiting,
    /// `pvalidate(.., true)` after a conversion to private.
    Validate,
}

/// Linux's `tdx_map_gpa`: retries without progress before the guest gives up.
const TDX_MAX_RETRIES_PER_PAGE: u32 = 3;

/// The guest a vCPU runs: its program and the operation in flight.
pub(crate) struct Guest {
    program: Box<dyn GuestProgram>,
    current: Option<(GuestOp, OpState)>,
    last: Option<GuestOutcome>,
    halted: bool,
    outcomes: Vec<(GuestOp, GuestOutcome)>,
}

impl std::fmt::Debug for Guest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guest").field("current", &self.current).field("halted", &self.halted).finish()
    }
}

/// What one step of the guest produced.
enum Step {
    /// Keep running.
    Continue,
    /// Return this exit to user space.
    Exit(Exit),
}

impl Guest {
    pub(crate) fn new(program: impl GuestProgram + 'static) -> Guest {
        Guest { program: Box::new(program), current: None, last: None, halted: false, outcomes: Vec::new() }
    }

    /// Whether an exit of the operation in flight waits for user space's completion.
    pub(crate) fn waits_for_completion(&self) -> bool {
        self.current.as_ref().is_some_and(|(_, state)| is_waiting(*state))
    }

    /// Starts the outcome log with `outcomes` (those of a replaced workload, not taken yet).
    pub(crate) fn keep_outcomes(&mut self, outcomes: Vec<(GuestOp, GuestOutcome)>) {
        self.outcomes = outcomes;
    }

    /// The completed operations since the last call, with their outcomes.
    pub(crate) fn take_outcomes(&mut self) -> Vec<(GuestOp, GuestOutcome)> {
        std::mem::take(&mut self.outcomes)
    }

    /// `KVM_RUN`: completes what the last exit left pending with `run`'s fields, then executes
    /// the guest until an exit to user space. An error leaves the operation in flight to be
    /// executed again at the next call (the instruction did not complete), except when the
    /// completion of an exit failed: that operation is abandoned.
    ///
    /// Before each guest entry (each operation that is not the completion of an exit), as
    /// `kvm_arch_vcpu_ioctl_run` and `vcpu_run` check: `kvm_run.immediate_exit` set, or the
    /// vCPU's [`VcpuSignal`] raised, is EINTR (`KVM_EXIT_INTR`); so is the `op_limit`-th
    /// operation without an exit, which stands for the signal a VMM's watchdog would send to a
    /// vCPU that never exits (the kernel would stay in the guest).
    pub(crate) fn run(
        &mut self,
        host: &SimHost,
        vcpu_fd: i32,
        run: &mut KvmRun,
        bounds: RunBounds<'_>,
    ) -> Result<Exit> {
        let mut entries = 0u64;
        loop {
            let completing = self.waits_for_completion();
            if !completing {
                if bounds.immediate_exit || bounds.signal.take() {
                    return Err(Errno::EINTR);
                }
                if entries >= bounds.op_limit {
                    tracing::warn!(
                        vcpu_fd,
                        limit = bounds.op_limit,
                        "the guest workload ran {} operations without an exit: KVM_RUN returns EINTR",
                        bounds.op_limit
                    );
                    return Err(Errno::EINTR);
                }
                entries += 1;
            }
            if self.halted {
                return Ok(Exit::Hlt);
            }
            let (op, state) = match self.current.take() {
                Some(current) => current,
                None => match self.program.next_op(self.last.as_ref()) {
                    Some(op) => (op, OpState::Start),
                    None => {
                        self.halted = true;
                        return Ok(Exit::Hlt);
                    }
                },
            };
            let waiting = is_waiting(state);
            let saved = (!waiting).then(|| op.clone());
            match self.step(host, vcpu_fd, run, op, state) {
                Ok(Step::Continue) => {}
                Ok(Step::Exit(exit)) => {
                    if let Exit::Hypercall { .. } = exit {
                        // KVM zeroes hypercall.ret before the exit (for VMMs that do not set it).
                        run.hypercall_ret = 0;
                    }
                    return Ok(exit);
                }
                Err(errno) => {
                    // An instruction that failed before it could park itself is executed again
                    // at the next run; a failed completion abandons its operation.
                    if self.current.is_none() {
                        self.current = saved.map(|op| (op, state));
                    }
                    return Err(errno);
                }
            }
        }
    }

    fn finish(&mut self, op: GuestOp, outcome: GuestOutcome) -> Result<Step> {
        self.outcomes.push((op, outcome.clone()));
        self.last = Some(outcome);
        Ok(Step::Continue)
    }

    /// Leaves `op` in flight at `state` and returns `exit`.
    fn park(&mut self, op: GuestOp, state: OpState, exit: Exit) -> Result<Step> {
        self.current = Some((op, state));
        Ok(Step::Exit(exit))
    }

    fn step(&mut self, host: &SimHost, vcpu_fd: i32, run: &mut KvmRun, op: GuestOp, state: OpState) -> Result<Step> {
        match state {
            OpState::Start => self.start(host, vcpu_fd, run, op),
            OpState::Mmio { len, is_write } => {
                // complete_emulated_mmio: a read completes with the data user space left.
                let outcome =
                    if is_write { GuestOutcome::Stored } else { GuestOutcome::Loaded(run.mmio_data[..len].to_vec()) };
                self.finish(op, outcome)
            }
            // complete_hypercall_exit: RAX = hypercall.ret.
            OpState::Hypercall => self.finish(op, GuestOutcome::Mapped { ret: run.hypercall_ret }),
            OpState::Snp { page, phase } => self.snp(host, vcpu_fd, run, op, page, phase),
            OpState::TdxMapGpa { next, waiting, stalls } => {
                let answer = if waiting {
                    host.tdx_complete_hypercall(vcpu_fd, run.hypercall_ret)
                } else {
                    let GuestOp::MapGpaRange { gpa, size, to_private } = op else { return Err(Errno::EIO) };
                    let shared = if to_private { 0 } else { shared_bit(host, vcpu_fd)? };
                    host.tdx_map_gpa(vcpu_fd, next | shared, gpa + size - next)
                };
                self.tdx_answer(host, vcpu_fd, op, next, stalls, answer)
            }
            OpState::TdxAccept => {
                let GuestOp::MapGpaRange { gpa, size, .. } = op else { return Err(Errno::EIO) };
                match host.tdx_accept_memory(vcpu_fd, gpa, gpa + size) {
                    Ok(true) => self.finish(op, GuestOutcome::Mapped { ret: 0 }),
                    Ok(false) => {
                        self.finish(op, GuestOutcome::GuestFailed { instruction: "TDG.MEM.PAGE.ACCEPT", code: 0 })
                    }
                    Err(error) => self.fail(op, state, error),
                }
            }
        }
    }

    /// An operation's first execution (or its re-execution after an exit that did not complete
    /// it).
    fn start(&mut self, host: &SimHost, vcpu_fd: i32, run: &mut KvmRun, op: GuestOp) -> Result<Step> {
        let vm_type = vm_type(host, vcpu_fd)?;
        match &op {
            GuestOp::Load { gpa, len, private } => {
                let (gpa, len, private) = (*gpa, *len, *private);
                check_access(gpa, len)?;
                let mut buf = vec![0u8; len];
                let result = access(host, vcpu_fd, vm_type, gpa, &mut buf, false, private);
                match result {
                    Ok(()) => self.finish(op, GuestOutcome::Loaded(buf)),
                    Err(error) => self.fail(op, OpState::Start, error),
                }
            }
            GuestOp::Store { gpa, data, private } => {
                check_access(*gpa, data.len())?;
                let mut buf = data.clone();
                let result = access(host, vcpu_fd, vm_type, *gpa, &mut buf, true, *private);
                match result {
                    Ok(()) => self.finish(op, GuestOutcome::Stored),
                    Err(error @ RunError::Exit(KernelExit::Mmio { .. })) => {
                        // emulator_write_emulated: the data goes to user space in mmio.data.
                        run.mmio_data[..buf.len()].copy_from_slice(&buf);
                        self.fail(op, OpState::Start, error)
                    }
                    Err(error) => self.fail(op, OpState::Start, error),
                }
            }
            GuestOp::MapGpaRange { gpa, size, to_private } => {
                let (gpa, size, to_private) = (*gpa, *size, *to_private);
                if size == 0 || size % PAGE_SIZE != 0 || gpa.checked_add(size).is_none() {
                    return Err(Errno::EINVAL);
                }
                match vm_type {
                    VmType::SevSnp => {
                        let phase = if to_private { SnpPhase::Psc } else { SnpPhase::Rescind };
                        self.snp(host, vcpu_fd, run, op, 0, phase)
                    }
                    VmType::Tdx => {
                        self.step(host, vcpu_fd, run, op, OpState::TdxMapGpa { next: gpa, waiting: false, stalls: 0 })
                    }
                    _ => {
                        let attrs = if to_private { KVM_MAP_GPA_RANGE_ENCRYPTED } else { 0 };
                        let npages = size >> PAGE_SHIFT;
                        match host.guest_hypercall(vcpu_fd, KVM_HC_MAP_GPA_RANGE, gpa, npages, attrs) {
                            Ok(rax) => self.finish(op, GuestOutcome::Mapped { ret: rax }),
                            Err(error) => self.fail(op, OpState::Start, error),
                        }
                    }
                }
            }
        }
    }

    /// An operation at `state` met `error`: an exit for user space (the operation parked at
    /// the state that exit leads to), an exception for the guest (the operation ends with it),
    /// or an error of `KVM_RUN` (the operation stays at `state`, to run again).
    fn fail(&mut self, op: GuestOp, state: OpState, error: RunError) -> Result<Step> {
        match error {
            RunError::Exit(KernelExit::MemoryFault { gpa, size, flags, errno }) => {
                // kvm-ioctls: MEMORY_FAULT comes with EFAULT or EHWPOISON; any other errno
                // leaves exit_reason stale and is the error.
                self.current = Some((op, state));
                if matches!(errno, Errno::EFAULT | Errno::EHWPOISON) {
                    Ok(Step::Exit(Exit::MemoryFault { flags, gpa, size }))
                } else {
                    Err(errno)
                }
            }
            RunError::Exit(KernelExit::Mmio { phys_addr, len, is_write }) => {
                let len = len as usize;
                let exit = if is_write {
                    Exit::MmioWrite { addr: phys_addr, len }
                } else {
                    Exit::MmioRead { addr: phys_addr, len }
                };
                self.park(op, OpState::Mmio { len, is_write }, exit)
            }
            RunError::Exit(KernelExit::FailEntry { reason }) => self.park(op, state, Exit::FailEntry(reason)),
            RunError::Exit(KernelExit::Hypercall { nr, args, flags }) => {
                let waiting = match state {
                    OpState::Start => OpState::Hypercall,
                    OpState::Snp { page, .. } => OpState::Snp { page, phase: SnpPhase::PscWaiting },
                    OpState::TdxMapGpa { next, stalls, .. } => OpState::TdxMapGpa { next, waiting: true, stalls },
                    // No other state issues a hypercall.
                    _ => return Err(Errno::EIO),
                };
                self.park(op, waiting, Exit::Hypercall { nr, args, flags })
            }
            RunError::GuestException(exception) => self.finish(op, GuestOutcome::Exception(exception)),
            RunError::Errno(errno) => {
                self.current = Some((op, state));
                Err(errno)
            }
            // kvm_send_hwpoison_signal: the SIGBUS is pending, so KVM_RUN ends with EINTR once
            // the thread's handler ran; the access is executed again at the next run.
            RunError::Sigbus => {
                self.current = Some((op, state));
                Err(Errno::EINTR)
            }
        }
    }

    /// One step of an SNP guest's `early_set_pages_state` for page `page` of the range.
    fn snp(
        &mut self,
        host: &SimHost,
        vcpu_fd: i32,
        run: &mut KvmRun,
        op: GuestOp,
        page: u64,
        phase: SnpPhase,
    ) -> Result<Step> {
        let GuestOp::MapGpaRange { gpa, size, to_private } = op else { return Err(Errno::EIO) };
        if page == size >> PAGE_SHIFT {
            return self.finish(op, GuestOutcome::Mapped { ret: 0 });
        }
        let at = gpa + (page << PAGE_SHIFT);
        let state = OpState::Snp { page, phase };
        let next_page = |guest: &mut Guest, op| {
            guest.park_continue(op, OpState::Snp { page: page + 1, phase: first_phase(to_private) })
        };
        match phase {
            SnpPhase::Rescind | SnpPhase::Validate => {
                let validate = phase == SnpPhase::Validate;
                match host.snp_pvalidate(vcpu_fd, at, false, validate) {
                    // Rescinding a page that was never validated changes nothing (NOUPDATE).
                    Ok(rc) if rc == 0 || (!validate && rc == PVALIDATE_FAIL_NOUPDATE) => {
                        if validate {
                            next_page(self, op)
                        } else {
                            self.park_continue(op, OpState::Snp { page, phase: SnpPhase::Psc })
                        }
                    }
                    Ok(rc) => self.finish(op, GuestOutcome::GuestFailed { instruction: "PVALIDATE", code: rc.into() }),
                    Err(error) => self.fail(op, state, error),
                }
            }
            SnpPhase::Psc | SnpPhase::PscWaiting => {
                let answer = if phase == SnpPhase::Psc {
                    host.snp_psc_msr(vcpu_fd, at, if to_private { PSC_OP_PRIVATE } else { PSC_OP_SHARED })
                } else {
                    host.complete_hypercall(vcpu_fd, run.hypercall_ret)
                };
                match answer {
                    Ok(GhcbResponse::Msr(GHCB_MSR_PSC_RESP)) if to_private => {
                        self.park_continue(op, OpState::Snp { page, phase: SnpPhase::Validate })
                    }
                    Ok(GhcbResponse::Msr(GHCB_MSR_PSC_RESP)) => next_page(self, op),
                    Ok(GhcbResponse::Msr(response)) => self.finish(op, GuestOutcome::Mapped { ret: response }),
                    // The MSR protocol answers in the MSR; anything else is not this protocol.
                    Ok(_) => Err(Errno::EIO),
                    Err(error) if phase == SnpPhase::PscWaiting && !matches!(error, RunError::Exit(_)) => {
                        // The completion itself failed: the request is abandoned.
                        Err(run_errno(error))
                    }
                    Err(error) => self.fail(op, OpState::Snp { page, phase: SnpPhase::Psc }, error),
                }
            }
        }
    }

    /// Continues `op` at `state` within the same `run()`.
    fn park_continue(&mut self, op: GuestOp, state: OpState) -> Result<Step> {
        self.current = Some((op, state));
        Ok(Step::Continue)
    }

    /// KVM's answer to the TD's MapGPA from `next` (or the exit of one of its chunks).
    fn tdx_answer(
        &mut self,
        host: &SimHost,
        vcpu_fd: i32,
        op: GuestOp,
        next: u64,
        stalls: u32,
        answer: std::result::Result<TdvmcallResult, RunError>,
    ) -> Result<Step> {
        let GuestOp::MapGpaRange { gpa, size, to_private } = op else { return Err(Errno::EIO) };
        let end = gpa + size;
        match answer {
            Ok(TdvmcallResult { r10: TDVMCALL_STATUS_RETRY, r11 }) => {
                // tdx_map_gpa: retry from R11, which comes from the untrusted VMM: it must lie in
                // the range; a retry without progress is counted.
                let shared = if to_private { 0 } else { shared_bit(host, vcpu_fd)? };
                let from = r11 & !shared;
                if r11 & shared != shared || from < next || from >= end {
                    return self.finish(op, GuestOutcome::GuestFailed { instruction: "MapGPA retry", code: r11 });
                }
                let stalls = if from == next { stalls + 1 } else { 0 };
                if stalls >= TDX_MAX_RETRIES_PER_PAGE {
                    return self.finish(op, GuestOutcome::GuestFailed { instruction: "MapGPA retry", code: r11 });
                }
                self.park_continue(op, OpState::TdxMapGpa { next: from, waiting: false, stalls })
            }
            Ok(TdvmcallResult { r10: 0, .. }) if to_private => self.park_continue(op, OpState::TdxAccept),
            Ok(TdvmcallResult { r10, .. }) => self.finish(op, GuestOutcome::Mapped { ret: r10 }),
            Err(error @ RunError::Exit(_)) => self.fail(op, OpState::TdxMapGpa { next, waiting: false, stalls }, error),
            // An entry error: `run` issues MapGPA again from `next` at the next run, unless this
            // was the completion of an exit (then the request is abandoned).
            Err(error) => Err(run_errno(error)),
        }
    }
}

/// Whether an operation at `state` waits for the completion of its exit.
fn is_waiting(state: OpState) -> bool {
    matches!(
        state,
        OpState::Mmio { .. }
            | OpState::Hypercall
            | OpState::Snp { phase: SnpPhase::PscWaiting, .. }
            | OpState::TdxMapGpa { waiting: true, .. }
    )
}

/// The SNP phase a page starts at.
fn first_phase(to_private: bool) -> SnpPhase {
    if to_private {
        SnpPhase::Psc
    } else {
        SnpPhase::Rescind
    }
}

/// The errno a `KVM_RUN` error reaches user space with.
fn run_errno(error: RunError) -> Errno {
    match error {
        RunError::Errno(errno) => errno,
        RunError::Exit(KernelExit::MemoryFault { errno, .. }) => errno,
        RunError::Sigbus => Errno::EINTR,
        _ => Errno::EIO,
    }
}

/// One instruction's access: 1 to 8 bytes within one page.
fn check_access(gpa: u64, len: usize) -> Result<()> {
    let in_page = (gpa & (PAGE_SIZE - 1)) as usize;
    if len == 0 || len > 8 || in_page + len > PAGE_SIZE as usize {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// The VM type of the vCPU's VM.
fn vm_type(host: &SimHost, vcpu_fd: i32) -> Result<VmType> {
    let (kvm, _) = host.vcpu(vcpu_fd)?;
    Ok(kvm.vm_type())
}

/// A TD's shared bit as a gpa bit (0 for other VM types, and before `KVM_TDX_INIT_VM`).
fn shared_bit(host: &SimHost, vcpu_fd: i32) -> Result<u64> {
    let (kvm, _) = host.vcpu(vcpu_fd)?;
    Ok(kvm.gfn_direct_bits() << PAGE_SHIFT)
}

/// A guest access of the VM type's kind: SNP and TDX guests access privately unless told
/// otherwise (a TD's shared access carries the shared bit).
fn access(
    host: &SimHost,
    vcpu_fd: i32,
    vm_type: VmType,
    gpa: u64,
    buf: &mut [u8],
    write: bool,
    private: Option<bool>,
) -> std::result::Result<(), RunError> {
    let private = match vm_type {
        VmType::SevSnp | VmType::Tdx => Some(private.unwrap_or(true)),
        _ => private,
    };
    let shared = if vm_type == VmType::Tdx && private == Some(false) {
        shared_bit(host, vcpu_fd).map_err(RunError::Errno)?
    } else {
        0
    };
    // A TD's MMIO exit names the address without the shared bit (the kernel model strips it, as
    // tdx_emulate_mmio does).
    host.guest_access(vcpu_fd, gpa | shared, buf, write, private)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Kvm, VcpuFd, VmFd};
    use gmem_arch::sev::ghcb::GHCB_MSR_PSC_RESP_ERROR;
    use gmem_arch::tdx::run::TDVMCALL_STATUS_INVALID_OPERAND;
    use gmem_kvm::vcpu::{KVM_ENOSYS, KVM_MEMORY_EXIT_FLAG_PRIVATE};
    use gmem_kvm::KernelProfile;
    use kvm_bindings::{
        kvm_create_guest_memfd, kvm_memory_attributes, kvm_sev_init, kvm_sev_snp_launch_finish,
        kvm_sev_snp_launch_start, kvm_userspace_memory_region2,
    };

    const RAM: u64 = 1 << 20;
    const RAM_SIZE: u64 = 1 << 20;
    /// A gpa no memslot backs.
    const HOLE: u64 = 0xfed0_0000;

    fn page(n: u64) -> u64 {
        RAM + n * PAGE_SIZE
    }

    /// The pieces of a QEMU-shaped VM: one memslot of RAM at 1 MiB, a guest_memfd and all of it
    /// PRIVATE for VM types with private memory, the MAP_GPA_RANGE exit enabled, one vCPU; SNP
    /// and TDX launched (`launch`) or left before the launch's end.
    struct Machine {
        kvm: Kvm,
        vm: VmFd,
        gmem: Option<i32>,
        vcpu: VcpuFd,
    }

    fn machine(vm_type: u32, launch: bool) -> Machine {
        let kvm = if vm_type == kvm_bindings::KVM_X86_TDX_VM {
            Kvm::new_intel(KernelProfile::v6_18())
        } else {
            Kvm::new().unwrap()
        };
        let host = kvm.host().clone();
        let vm = kvm.create_vm_with_type(vm_type.into()).unwrap();
        let snp = vm_type == kvm_bindings::KVM_X86_SNP_VM;
        let tdx = vm_type == kvm_bindings::KVM_X86_TDX_VM;
        let private_mem = vm_type != kvm_bindings::KVM_X86_DEFAULT_VM;
        let sev_fd = snp.then(|| host.open_dev_sev().unwrap());
        if snp {
            vm.sev_init2(&kvm_sev_init::default()).unwrap();
        }
        if tdx {
            let cpuid = [kvm_bindings::kvm_cpuid_entry2 { function: 0x8000_0008, eax: 48 << 16, ..Default::default() }];
            vm.tdx_init_vm(&Default::default(), &cpuid).unwrap();
        }
        if private_mem {
            let cap = kvm_bindings::kvm_enable_cap {
                cap: kvm_bindings::KVM_CAP_EXIT_HYPERCALL,
                args: [1 << KVM_HC_MAP_GPA_RANGE, 0, 0, 0],
                ..Default::default()
            };
            vm.enable_cap(&cap).unwrap();
        }
        if let Some(sev_fd) = sev_fd {
            vm.snp_launch_start(sev_fd, &kvm_sev_snp_launch_start { policy: 0x30000, ..Default::default() }).unwrap();
        }
        let gmem = private_mem
            .then(|| vm.create_guest_memfd(kvm_create_guest_memfd { size: RAM_SIZE, ..Default::default() }).unwrap());
        let region = kvm_userspace_memory_region2 {
            flags: if private_mem { kvm_bindings::KVM_MEM_GUEST_MEMFD } else { 0 },
            guest_phys_addr: RAM,
            memory_size: RAM_SIZE,
            userspace_addr: host.process().mmap_anonymous(RAM_SIZE).unwrap(),
            guest_memfd: gmem.map_or(0, |fd| fd as u32),
            ..Default::default()
        };
        // SAFETY: the simulator checks the region as the kernel does; nothing here is unsound.
        unsafe { vm.set_user_memory_region2(region) }.unwrap();
        if private_mem {
            set_private(&vm, RAM, RAM_SIZE, true);
        }
        let vcpu = vm.create_vcpu(0).unwrap();
        if launch {
            if let Some(sev_fd) = sev_fd {
                vm.snp_launch_finish(sev_fd, &kvm_sev_snp_launch_finish::default()).unwrap();
            }
            if tdx {
                vcpu.tdx_init_vcpu(0).unwrap();
                vm.tdx_finalize_vm().unwrap();
            }
        }
        Machine { kvm, vm, gmem, vcpu }
    }

    fn set_private(vm: &VmFd, gpa: u64, size: u64, private: bool) {
        let attributes = if private { u64::from(kvm_bindings::KVM_MEMORY_ATTRIBUTE_PRIVATE) } else { 0 };
        vm.set_memory_attributes(kvm_memory_attributes { address: gpa, size, attributes, flags: 0 }).unwrap();
    }

    fn outcomes(vcpu: &mut VcpuFd) -> Vec<GuestOutcome> {
        vcpu.take_guest_outcomes().into_iter().map(|(_, outcome)| outcome).collect()
    }

    fn load(gpa: u64, len: usize, private: Option<bool>) -> GuestOp {
        GuestOp::Load { gpa, len, private }
    }

    fn store(gpa: u64, data: &[u8], private: Option<bool>) -> GuestOp {
        GuestOp::Store { gpa, data: data.to_vec(), private }
    }

    /// `KVM_HC_MAP_GPA_RANGE` exits with the guest's gpa, page count and attributes, in long
    /// mode, with `ret` zeroed; what the VMM writes into `ret` is the guest's RAX at the next
    /// run (here a failure code, so nothing is converted and the guest sees it).
    #[test]
    fn the_hypercall_exit_hands_ret_to_the_guest() {
        let mut m = machine(kvm_bindings::KVM_X86_SW_PROTECTED_VM, true);
        let ops = [
            GuestOp::MapGpaRange { gpa: page(2), size: 3 * PAGE_SIZE, to_private: false },
            GuestOp::MapGpaRange { gpa: page(2), size: PAGE_SIZE, to_private: true },
        ];
        m.vcpu.set_guest(GuestSequence::new(ops)).unwrap();
        match m.vcpu.run().unwrap() {
            VcpuExit::Hypercall(HypercallExit { nr, args, ret, longmode }) => {
                assert_eq!((nr, args, *ret, longmode), (KVM_HC_MAP_GPA_RANGE, [page(2), 3, 0, 0, 0, 0], 0, 1));
                *ret = 0x1234;
            }
            other => panic!("expected a hypercall exit, got {other:?}"),
        }
        match m.vcpu.run().unwrap() {
            VcpuExit::Hypercall(exit) => {
                assert_eq!(exit.args[..3], [page(2), 1, KVM_MAP_GPA_RANGE_ENCRYPTED]);
                assert_eq!(*exit.ret, 0, "KVM zeroes hypercall.ret before each exit");
            }
            other => panic!("expected a hypercall exit, got {other:?}"),
        }
        assert!(matches!(m.vcpu.run(), Ok(VcpuExit::Hlt)));
        assert_eq!(outcomes(&mut m.vcpu), [GuestOutcome::Mapped { ret: 0x1234 }, GuestOutcome::Mapped { ret: 0 }]);
    }

    /// `immediate_exit`: the next run completes the pending MMIO read with the VMM's data, then
    /// returns EINTR without entering the guest (the store after the load does not run); once
    /// cleared, the guest goes on from the store.
    #[test]
    fn immediate_exit_completes_the_pending_exit_then_returns_eintr() {
        let mut m = machine(kvm_bindings::KVM_X86_DEFAULT_VM, true);
        m.vcpu.set_guest(GuestSequence::new([load(HOLE, 2, None), store(page(0), b"x", None)])).unwrap();
        match m.vcpu.run().unwrap() {
            VcpuExit::MmioRead(_, data) => data.copy_from_slice(b"ok"),
            other => panic!("expected an MMIO read, got {other:?}"),
        }
        m.vcpu.set_kvm_immediate_exit(1);
        assert_eq!(m.vcpu.run().err(), Some(Errno::EINTR));
        assert_eq!(m.vcpu.run().err(), Some(Errno::EINTR), "until user space clears it");
        assert_eq!(outcomes(&mut m.vcpu), [GuestOutcome::Loaded(b"ok".to_vec())], "the load completed, not the store");
        m.vcpu.set_kvm_immediate_exit(0);
        assert!(matches!(m.vcpu.run(), Ok(VcpuExit::Hlt)));
        assert_eq!(outcomes(&mut m.vcpu), [GuestOutcome::Stored]);
    }

    /// A workload that never exits (stores forever) is taken out of the guest by the vCPU's
    /// signal, raised from another thread: EINTR, once per raise, and the workload goes on at
    /// the next run. Without a signal, the operation limit ends the run with EINTR.
    #[test]
    fn a_guest_that_never_exits_ends_its_run_on_a_signal_or_at_the_operation_limit() {
        let mut m = machine(kvm_bindings::KVM_X86_DEFAULT_VM, true);
        let signal = m.vcpu.signal();
        let stores = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (counter, raiser) = (stores.clone(), signal.clone());
        m.vcpu
            .set_guest(move |_: Option<&GuestOutcome>| {
                // The VMM's other thread signals the vCPU while it runs.
                if counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 10 {
                    let raiser = raiser.clone();
                    std::thread::spawn(move || raiser.raise()).join().unwrap();
                }
                Some(store(page(0), b"x", None))
            })
            .unwrap();
        assert_eq!(m.vcpu.run().err(), Some(Errno::EINTR));
        assert!(!signal.is_pending(), "the run took the signal");
        assert_eq!(stores.load(std::sync::atomic::Ordering::Relaxed), 11, "stopped at the entry after the raise");
        m.vcpu.set_run_op_limit(100);
        assert_eq!(m.vcpu.run().err(), Some(Errno::EINTR));
        assert_eq!(stores.load(std::sync::atomic::Ordering::Relaxed), 111, "100 more operations, then EINTR");
        assert_eq!(outcomes(&mut m.vcpu).len(), 111, "every store completed");
        // Without a workload: a raised signal, then a halt.
        let mut idle = machine(kvm_bindings::KVM_X86_DEFAULT_VM, true).vcpu;
        idle.signal().raise();
        assert_eq!(idle.run().err(), Some(Errno::EINTR));
        assert!(matches!(idle.run(), Ok(VcpuExit::Hlt)));
    }

    /// A load from a gpa no memslot backs is `MmioRead` with a slice of the access's length;
    /// the bytes the VMM writes into it are what the guest's load returns. A store is
    /// `MmioWrite` with the guest's bytes.
    #[test]
    fn mmio_read_data_reaches_the_guest_load() {
        let mut m = machine(kvm_bindings::KVM_X86_DEFAULT_VM, true);
        m.vcpu.set_guest(GuestSequence::new([load(HOLE + 4, 4, None), store(HOLE, b"out", None)])).unwrap();
        match m.vcpu.run().unwrap() {
            VcpuExit::MmioRead(addr, data) => {
                assert_eq!((addr, data.len()), (HOLE + 4, 4));
                data.copy_from_slice(b"dev!");
            }
            other => panic!("expected an MMIO read, got {other:?}"),
        }
        match m.vcpu.run().unwrap() {
            VcpuExit::MmioWrite(addr, data) => assert_eq!((addr, data), (HOLE, &b"out"[..])),
            other => panic!("expected an MMIO write, got {other:?}"),
        }
        assert!(matches!(m.vcpu.run(), Ok(VcpuExit::Hlt)));
        assert_eq!(outcomes(&mut m.vcpu), [GuestOutcome::Loaded(b"dev!".to_vec()), GuestOutcome::Stored]);
    }

    /// A private access to a shared page is `MemoryFault` with the private flag, the page's gpa
    /// and size; until the VMM converts, every run repeats it (the access is retried); after
    /// the conversion the access completes and the guest goes on to halt, for good.
    #[test]
    fn a_memory_fault_is_retried_until_the_vmm_converts() {
        let mut m = machine(kvm_bindings::KVM_X86_SW_PROTECTED_VM, true);
        set_private(&m.vm, page(1), PAGE_SIZE, false);
        m.vcpu
            .set_guest(GuestSequence::new([store(page(1) + 8, b"secret", Some(true)), load(page(1) + 8, 6, None)]))
            .unwrap();
        for _ in 0..2 {
            match m.vcpu.run().unwrap() {
                VcpuExit::MemoryFault { flags, gpa, size } => {
                    assert_eq!((flags, gpa, size), (KVM_MEMORY_EXIT_FLAG_PRIVATE, page(1), PAGE_SIZE))
                }
                other => panic!("expected a memory fault, got {other:?}"),
            }
        }
        assert!(outcomes(&mut m.vcpu).is_empty(), "the faulting store did not complete");
        set_private(&m.vm, page(1), PAGE_SIZE, true);
        assert!(matches!(m.vcpu.run(), Ok(VcpuExit::Hlt)));
        assert!(matches!(m.vcpu.run(), Ok(VcpuExit::Hlt)), "a halted guest stays halted");
        assert_eq!(outcomes(&mut m.vcpu), [GuestOutcome::Stored, GuestOutcome::Loaded(b"secret".to_vec())]);
    }

    /// A private access to a poisoned guest_memfd page: `KVM_RUN` fails with EHWPOISON and
    /// `KVM_EXIT_MEMORY_FAULT`, which kvm-ioctls returns as `Ok(MemoryFault)`; the access stays
    /// pending until the VMM replaces the page (here: punches it, as a VMM drops poisoned
    /// memory), then completes on a fresh zeroed page.
    #[test]
    fn a_poisoned_page_is_a_memory_fault_exit_not_an_error() {
        let mut m = machine(kvm_bindings::KVM_X86_SW_PROTECTED_VM, true);
        let gmem = m.gmem.unwrap();
        m.vcpu.set_guest(GuestSequence::new([store(page(3), b"data", None)])).unwrap();
        assert!(matches!(m.vcpu.run(), Ok(VcpuExit::Hlt)));
        m.kvm.host().inject_memory_failure(gmem, 3 * PAGE_SIZE).unwrap();
        m.vcpu.set_guest(GuestSequence::new([load(page(3), 4, None)])).unwrap();
        match m.vcpu.run().unwrap() {
            VcpuExit::MemoryFault { flags, gpa, size } => {
                assert_eq!((flags, gpa, size), (KVM_MEMORY_EXIT_FLAG_PRIVATE, page(3), PAGE_SIZE))
            }
            other => panic!("expected a memory fault, got {other:?}"),
        }
        assert_eq!(outcomes(&mut m.vcpu), [GuestOutcome::Stored]);
        let punch = gmem_mm::vfs::FALLOC_FL_PUNCH_HOLE | gmem_mm::vfs::FALLOC_FL_KEEP_SIZE;
        m.kvm.host().fallocate(gmem, punch, 3 * PAGE_SIZE as i64, PAGE_SIZE as i64).unwrap();
        assert!(matches!(m.vcpu.run(), Ok(VcpuExit::Hlt)));
        assert_eq!(outcomes(&mut m.vcpu), [GuestOutcome::Loaded(vec![0; 4])]);
    }

    /// Without a workload the vCPU halts; a closure workload sees each outcome (here it stores
    /// what it loaded, shifted by one); on a DEFAULT VM, where no exit is enabled, the kernel
    /// answers MAP_GPA_RANGE itself with -KVM_ENOSYS.
    #[test]
    fn closures_see_outcomes_and_the_kernel_answers_without_the_exit() {
        let mut m = machine(kvm_bindings::KVM_X86_DEFAULT_VM, true);
        assert!(matches!(m.vcpu.run(), Ok(VcpuExit::Hlt)));
        let mut step = 0;
        let program = move |last: Option<&GuestOutcome>| {
            step += 1;
            match (step, last) {
                (1, None) => Some(store(page(0), &[41], None)),
                (2, Some(GuestOutcome::Stored)) => Some(load(page(0), 1, None)),
                (3, Some(GuestOutcome::Loaded(bytes))) => Some(store(page(0), &[bytes[0] + 1], None)),
                (4, Some(GuestOutcome::Stored)) => {
                    Some(GuestOp::MapGpaRange { gpa: page(0), size: PAGE_SIZE, to_private: true })
                }
                (5, Some(GuestOutcome::Mapped { .. })) => Some(load(page(0), 1, None)),
                _ => None,
            }
        };
        m.vcpu.set_guest(program).unwrap();
        assert!(matches!(m.vcpu.run(), Ok(VcpuExit::Hlt)));
        let got = outcomes(&mut m.vcpu);
        assert_eq!(got[3], GuestOutcome::Mapped { ret: KVM_ENOSYS.wrapping_neg() });
        assert_eq!(got[4], GuestOutcome::Loaded(vec![42]));
    }

    /// Operations no guest instruction makes are EINVAL and are not consumed (the same error at
    /// the next run); a new workload replaces them. Replacing a workload whose exit waits for
    /// its completion is EBUSY.
    #[test]
    fn bad_operations_and_replacing_a_waiting_workload_are_errors() {
        let mut m = machine(kvm_bindings::KVM_X86_SW_PROTECTED_VM, true);
        let bad = [
            load(page(0), 0, None),
            load(page(0), 9, None),
            load(page(1) - 4, 8, None),
            store(page(0), &[], None),
            GuestOp::MapGpaRange { gpa: page(0), size: 100, to_private: true },
            GuestOp::MapGpaRange { gpa: page(0), size: 0, to_private: true },
            GuestOp::MapGpaRange { gpa: !(PAGE_SIZE - 1), size: 2 * PAGE_SIZE, to_private: true },
        ];
        for op in bad {
            m.vcpu.set_guest(GuestSequence::new([op.clone()])).unwrap();
            assert_eq!(m.vcpu.run().unwrap_err(), Errno::EINVAL, "{op:?}");
            assert_eq!(m.vcpu.run().unwrap_err(), Errno::EINVAL, "{op:?} again");
        }
        let op = GuestOp::MapGpaRange { gpa: page(0), size: PAGE_SIZE, to_private: false };
        m.vcpu.set_guest(GuestSequence::new([op])).unwrap();
        assert!(matches!(m.vcpu.run(), Ok(VcpuExit::Hypercall(_))));
        assert_eq!(m.vcpu.set_guest(GuestSequence::default()).unwrap_err(), Errno::EBUSY);
        assert!(matches!(m.vcpu.run(), Ok(VcpuExit::Hlt)));
        m.vcpu.set_guest(GuestSequence::default()).unwrap();
    }

    /// An SNP guest converts page by page with the GHCB MSR protocol: one exit per page, and a
    /// non-zero `ret` reaches it as the PSC error response, which ends its request. With
    /// success it validates the pages and uses them privately; before LAUNCH_FINISH the
    /// hardware refuses the entry: `FailEntry`.
    #[test]
    fn snp_conversions_exit_per_page_and_ret_reaches_the_guest() {
        let mut m = machine(kvm_bindings::KVM_X86_SNP_VM, true);
        let ops = [
            GuestOp::MapGpaRange { gpa: page(4), size: 2 * PAGE_SIZE, to_private: true },
            store(page(5), b"snp", None),
            load(page(5), 3, None),
            GuestOp::MapGpaRange { gpa: page(6), size: 2 * PAGE_SIZE, to_private: false },
        ];
        m.vcpu.set_guest(GuestSequence::new(ops)).unwrap();
        for gpa in [page(4), page(5)] {
            match m.vcpu.run().unwrap() {
                VcpuExit::Hypercall(exit) => {
                    assert_eq!(
                        (exit.nr, exit.args[..3].to_vec()),
                        (KVM_HC_MAP_GPA_RANGE, vec![gpa, 1, KVM_MAP_GPA_RANGE_ENCRYPTED])
                    );
                    *exit.ret = 0;
                }
                other => panic!("expected a hypercall exit, got {other:?}"),
            }
        }
        match m.vcpu.run().unwrap() {
            VcpuExit::Hypercall(exit) => {
                assert_eq!(exit.args[..3], [page(6), 1, 0]);
                *exit.ret = 1;
            }
            other => panic!("expected a hypercall exit, got {other:?}"),
        }
        assert!(matches!(m.vcpu.run(), Ok(VcpuExit::Hlt)), "the failed request ends before page 7");
        assert_eq!(
            outcomes(&mut m.vcpu),
            [
                GuestOutcome::Mapped { ret: 0 },
                GuestOutcome::Stored,
                GuestOutcome::Loaded(b"snp".to_vec()),
                GuestOutcome::Mapped { ret: GHCB_MSR_PSC_RESP_ERROR },
            ]
        );

        let mut unlaunched = machine(kvm_bindings::KVM_X86_SNP_VM, false);
        unlaunched.vcpu.set_guest(GuestSequence::new([load(page(0), 8, None)])).unwrap();
        assert!(matches!(unlaunched.vcpu.run(), Ok(VcpuExit::FailEntry(_, 0))));
    }

    /// A TD converts with MapGPA: one exit for a range within 2 MiB, the gpa without the shared
    /// bit; a non-zero `ret` reaches the guest as `TDVMCALL_STATUS_INVALID_OPERAND`. After a
    /// successful MapGPA to private the guest accepts the pages and uses them privately; its
    /// shared accesses carry the shared bit.
    #[test]
    fn tdx_map_gpa_exits_and_ret_reaches_the_guest() {
        let mut m = machine(kvm_bindings::KVM_X86_TDX_VM, true);
        let ops = [
            GuestOp::MapGpaRange { gpa: page(0), size: 2 * PAGE_SIZE, to_private: true },
            store(page(1), b"td", None),
            load(page(1), 2, None),
            GuestOp::MapGpaRange { gpa: page(3), size: PAGE_SIZE, to_private: false },
        ];
        m.vcpu.set_guest(GuestSequence::new(ops)).unwrap();
        match m.vcpu.run().unwrap() {
            VcpuExit::Hypercall(exit) => {
                assert_eq!(exit.args[..3], [page(0), 2, KVM_MAP_GPA_RANGE_ENCRYPTED]);
                *exit.ret = 0;
            }
            other => panic!("expected a hypercall exit, got {other:?}"),
        }
        match m.vcpu.run().unwrap() {
            VcpuExit::Hypercall(exit) => {
                assert_eq!(exit.args[..3], [page(3), 1, 0], "the shared bit is stripped");
                *exit.ret = 1;
            }
            other => panic!("expected a hypercall exit, got {other:?}"),
        }
        assert!(matches!(m.vcpu.run(), Ok(VcpuExit::Hlt)));
        assert_eq!(
            outcomes(&mut m.vcpu),
            [
                GuestOutcome::Mapped { ret: 0 },
                GuestOutcome::Stored,
                GuestOutcome::Loaded(b"td".to_vec()),
                GuestOutcome::Mapped { ret: TDVMCALL_STATUS_INVALID_OPERAND },
            ]
        );
        // MMIO from a TD: the address without the shared bit, the read data reaching the guest.
        m.vcpu.set_guest(GuestSequence::new([load(HOLE, 2, Some(false))])).unwrap();
        match m.vcpu.run().unwrap() {
            VcpuExit::MmioRead(addr, data) => {
                assert_eq!(addr, HOLE);
                data.copy_from_slice(b"io");
            }
            other => panic!("expected an MMIO read, got {other:?}"),
        }
        assert!(matches!(m.vcpu.run(), Ok(VcpuExit::Hlt)));
        assert_eq!(outcomes(&mut m.vcpu), [GuestOutcome::Loaded(b"io".to_vec())]);
        // A shared access to a private page: the memory fault names the gfn without the shared
        // bit (kvm_mmu_do_page_fault strips the direct bits), as the VMM's attributes do.
        m.vcpu.set_guest(GuestSequence::new([load(page(1), 2, Some(false))])).unwrap();
        match m.vcpu.run().unwrap() {
            VcpuExit::MemoryFault { flags, gpa, size } => assert_eq!((flags, gpa, size), (0, page(1), PAGE_SIZE)),
            other => panic!("expected a memory fault, got {other:?}"),
        }
    }
}
