//! Per-vCPU TLBs, `vcpu->mode`, `vcpu->requests` and the remote-flush protocol
//! (`virt/kvm/kvm_main.c`: `kvm_make_all_cpus_request_except`, `kvm_make_vcpu_request`,
//! `kvm_request_needs_ipi`, `kvm_kick_many_cpus`, `kvm_flush_remote_tlbs`;
//! `include/linux/kvm_host.h`: `kvm_vcpu_exiting_guest_mode`, `kvm_check_request`;
//! `arch/x86/kvm/x86.c`: `vcpu_enter_guest`, `kvm_vcpu_flush_tlb_all`).
//!
//! A guest access runs "in the guest": the vCPU services its pending requests (a
//! `KVM_REQ_TLB_FLUSH` empties its TLB), stores `IN_GUEST_MODE`, issues a full barrier and checks
//! the requests again (a request that came in between cancels the entry), then translates through
//! its TLB, on a miss walks the SPTE and fills the TLB from it (gfn → pfn, writable, private, the
//! frame's generation), and leaves with `OUTSIDE_GUEST_MODE`. A missing SPTE is an EPT violation:
//! the vCPU leaves guest mode and the fault path runs outside it, as in the kernel.
//!
//! `kvm_flush_remote_tlbs` is `kvm_make_all_cpus_request(KVM_REQ_TLB_FLUSH)`, which carries
//! `KVM_REQUEST_WAIT`: the request is set on every vCPU, every vCPU not `OUTSIDE_GUEST_MODE` is
//! kicked (`IN_GUEST_MODE` → `EXITING_GUEST_MODE` by cmpxchg) and the caller waits until each kicked
//! vCPU has left guest mode (the IPI of `smp_call_function_many(.., wait=1)` is only handled once
//! the target is out of the guest). Together with the entry-side barrier this is a Dekker pair:
//! either the flusher sees the vCPU in guest mode and waits for it, or the vCPU sees the request
//! before it can translate. So when the flush returns no vCPU can translate through an entry that
//! was zapped before it, and the frame may be freed.
//!
//! Not modelled: `READING_SHADOW_PAGE_TABLES` (shadow paging only; the constant exists), halted
//! vCPUs and `kvm_vcpu_wake_up` (a vCPU here is either running an access or outside the guest),
//! partial flushes (`KVM_REQ_TLB_FLUSH_GUEST`, ranged flushes): every flush empties the whole TLB.

use crate::arch::PgLevel;
use crate::tdp_mmu::Spte;
use crate::types::Gfn;
use crate::vcpu::KvmVcpu;
use crate::vm::Kvm;
use gmem_mm::Pfn;
use gmem_sync::atomic::{fence, AtomicU64, AtomicU8, Ordering};
use gmem_sync::{LockClass, Mutex};
use std::collections::BTreeMap;
use std::fmt;

/// `OUTSIDE_GUEST_MODE`.
pub const OUTSIDE_GUEST_MODE: u8 = 0;
/// `IN_GUEST_MODE`.
pub const IN_GUEST_MODE: u8 = 1;
/// `EXITING_GUEST_MODE`: kicked, leaving.
pub const EXITING_GUEST_MODE: u8 = 2;
/// `READING_SHADOW_PAGE_TABLES` (shadow paging's lockless walks; unused with TDP).
pub const READING_SHADOW_PAGE_TABLES: u8 = 3;

/// `KVM_REQUEST_MASK`: the request number bits.
pub const KVM_REQUEST_MASK: u32 = 0xff;
/// `KVM_REQUEST_NO_WAKEUP`.
pub const KVM_REQUEST_NO_WAKEUP: u32 = 1 << 8;
/// `KVM_REQUEST_WAIT`: the requester waits until every kicked vCPU acknowledged the kick.
pub const KVM_REQUEST_WAIT: u32 = 1 << 9;
/// `KVM_REQUEST_NO_ACTION`.
pub const KVM_REQUEST_NO_ACTION: u32 = 1 << 10;
/// `KVM_REQ_TLB_FLUSH` = `0 | KVM_REQUEST_WAIT | KVM_REQUEST_NO_WAKEUP`.
pub const KVM_REQ_TLB_FLUSH: u32 = KVM_REQUEST_WAIT | KVM_REQUEST_NO_WAKEUP;
/// `KVM_REQ_OUTSIDE_GUEST_MODE` = `KVM_REQUEST_NO_ACTION | KVM_REQUEST_WAIT |
/// KVM_REQUEST_NO_WAKEUP`: no request bit, only the kick and the wait for every vCPU in guest
/// mode to leave it (TDX's `tdx_track` and `tdx_no_vcpus_enter_start`).
pub const KVM_REQ_OUTSIDE_GUEST_MODE: u32 = KVM_REQUEST_NO_ACTION | KVM_REQUEST_WAIT | KVM_REQUEST_NO_WAKEUP;

/// The lock of one vCPU's TLB (a model-only lock: hardware TLBs need none; only the vCPU fills
/// and flushes its TLB, the lock lets the invariant checker read it).
static TLB_LOCK: LockClass = LockClass::new("vcpu->tlb");

/// One TLB entry, filled from an SPTE by a walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlbEntry {
    /// The host frame.
    pub pfn: Pfn,
    /// Writable.
    pub writable: bool,
    /// Filled from a private SPTE.
    pub private: bool,
    /// The frame's generation when the SPTE was installed.
    pub generation: u64,
    /// The level of the nested leaf the translation came from (the entry itself is a 4K piece
    /// of it), which the hardware's page-size checks compare with the RMP.
    pub level: PgLevel,
}

impl From<&Spte> for TlbEntry {
    fn from(spte: &Spte) -> TlbEntry {
        TlbEntry {
            pfn: spte.pfn,
            writable: spte.writable,
            private: spte.private,
            generation: spte.generation,
            level: spte.level,
        }
    }
}

/// One vCPU's translation state: `vcpu->mode`, `vcpu->requests` and its TLB.
pub struct VcpuTlb {
    mode: AtomicU8,
    requests: AtomicU64,
    entries: Mutex<BTreeMap<u64, TlbEntry>>,
}

impl fmt::Debug for VcpuTlb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VcpuTlb")
            .field("mode", &self.mode.load(Ordering::Relaxed))
            .field("requests", &self.requests.load(Ordering::Relaxed))
            .finish()
    }
}

impl Default for VcpuTlb {
    fn default() -> Self {
        VcpuTlb::new()
    }
}

impl VcpuTlb {
    /// An empty TLB, outside guest mode, no requests.
    pub fn new() -> VcpuTlb {
        VcpuTlb {
            mode: AtomicU8::new(OUTSIDE_GUEST_MODE),
            requests: AtomicU64::new(0),
            entries: Mutex::new(&TLB_LOCK, BTreeMap::new()),
        }
    }

    /// `vcpu->mode`.
    pub fn mode(&self) -> u8 {
        self.mode.load(Ordering::Acquire)
    }

    /// `kvm_test_request(req, vcpu)`.
    #[doc(alias = "kvm_test_request")]
    pub fn test_request(&self, req: u32) -> bool {
        self.requests.load(Ordering::Acquire) & (1 << (req & KVM_REQUEST_MASK)) != 0
    }

    /// Every cached translation, by gfn.
    pub fn entries(&self) -> Vec<(Gfn, TlbEntry)> {
        self.entries.lock().iter().map(|(&gfn, &entry)| (Gfn(gfn), entry)).collect()
    }

    /// The cached translation of `gfn` usable for the access (a write needs a writable entry).
    pub(crate) fn lookup(&self, gfn: Gfn, write: bool) -> Option<TlbEntry> {
        self.entries.lock().get(&gfn.0).copied().filter(|entry| entry.writable || !write)
    }

    /// Caches a translation (after a walk that hit `spte`).
    pub(crate) fn fill(&self, gfn: Gfn, spte: &Spte) {
        self.entries.lock().insert(gfn.0, TlbEntry::from(spte));
    }

    /// A flush the hardware makes on its own, outside KVM's request protocol: every cached
    /// translation whose gfn `selects` is dropped, and their number returned. The TDX module
    /// flushes a vCPU's translations of the TD's private memory when the vCPU enters the TD in a
    /// later TLB epoch than its previous entry (after a `TDH.MEM.TRACK`).
    pub fn flush_translations(&self, selects: impl Fn(Gfn) -> bool) -> usize {
        let mut entries = self.entries.lock();
        let before = entries.len();
        entries.retain(|&gfn, _| !selects(Gfn(gfn)));
        before - entries.len()
    }

    /// `kvm_make_request`: `smp_wmb()` then `set_bit`.
    #[doc(alias = "kvm_make_request")]
    fn make_request(&self, req: u32) {
        self.requests.fetch_or(1 << (req & KVM_REQUEST_MASK), Ordering::SeqCst);
    }

    /// `if (kvm_check_request(KVM_REQ_TLB_FLUSH, vcpu)) kvm_vcpu_flush_tlb_all(vcpu)`. The model
    /// empties the TLB before it clears the bit (the kernel clears, then flushes): the vCPU is
    /// outside guest mode and fills nothing meanwhile, so the only difference is that a request
    /// made in between is absorbed by a TLB that is already empty; in exchange "no flush
    /// pending" implies "flushed", which lets the invariant checker run while vCPUs do.
    #[doc(alias("kvm_check_request", "kvm_vcpu_flush_tlb_all"))]
    fn service_flush(&self) -> bool {
        let bit = 1 << (KVM_REQ_TLB_FLUSH & KVM_REQUEST_MASK);
        if self.requests.load(Ordering::Acquire) & bit == 0 {
            return false;
        }
        self.entries.lock().clear();
        self.requests.fetch_and(!bit, Ordering::SeqCst);
        true
    }

    /// `vcpu->mode = OUTSIDE_GUEST_MODE; smp_wmb()` (on exit, and on a cancelled entry), and with
    /// it the point where the kick's IPI is acknowledged (`local_irq_enable()` after the exit runs
    /// `ack_kick` and `csd_unlock`, a release). An exchange rather than a plain store: a requester
    /// may have turned `IN_GUEST_MODE` into `EXITING_GUEST_MODE` meanwhile, and the exit's store
    /// must come after that cmpxchg in the modification order of `vcpu->mode`, or the requester's
    /// wait for "no longer `EXITING_GUEST_MODE`" would not end. In C11 (and on x86) a plain store
    /// already does, since the cmpxchg's write immediately follows the `IN_GUEST_MODE` store it
    /// read; loom's modification order is only partial and leaves a plain store unordered against
    /// a concurrent read-modify-write it has not read (tokio-rs/loom#282, #389), so the requester
    /// could keep reading its own `EXITING_GUEST_MODE` forever. The exchange reads the latest
    /// value, so its store is ordered after the cmpxchg in loom too, as the kernel's `csd_unlock`
    /// store is ordered after the requester's `csd_lock` it read through the IPI queue.
    #[doc(alias = "csd_unlock")]
    fn leave_guest_mode(&self) {
        self.mode.swap(OUTSIDE_GUEST_MODE, Ordering::Release);
    }

    /// `kvm_vcpu_exiting_guest_mode`: `smp_mb__before_atomic()` then
    /// `cmpxchg(&vcpu->mode, IN_GUEST_MODE, EXITING_GUEST_MODE)`, returning the mode seen. The
    /// barrier keeps the request's `set_bit` before the read of `vcpu->mode`; it pairs with the
    /// full barrier after the entry's store of `IN_GUEST_MODE` (the Dekker pair of the module
    /// docs). It is an explicit `fence(SeqCst)` because the two `SeqCst` accesses alone do not
    /// make that pair under loom, which treats `SeqCst` accesses as `AcqRel` and only
    /// `SeqCst` fences as sequentially consistent: without it loom lets the vCPU's request check
    /// miss a request set before the kick found it outside guest mode.
    #[doc(alias = "kvm_vcpu_exiting_guest_mode")]
    fn exiting_guest_mode(&self) -> u8 {
        fence(Ordering::SeqCst);
        match self.mode.compare_exchange(IN_GUEST_MODE, EXITING_GUEST_MODE, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(old) | Err(old) => old,
        }
    }
}

/// How a test may weaken the flush protocol, to show that the models can fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ProtocolWeakening {
    /// The kernel's protocol.
    None = 0,
    /// `kvm_flush_remote_tlbs` sets the requests but neither kicks nor waits.
    NoKickWait = 1,
    /// The fault path installs without the `is_page_fault_stale` check under `mmu_lock`.
    NoRetryCheck = 2,
}

impl ProtocolWeakening {
    pub(crate) fn from_raw(raw: u8) -> ProtocolWeakening {
        match raw {
            1 => ProtocolWeakening::NoKickWait,
            2 => ProtocolWeakening::NoRetryCheck,
            _ => ProtocolWeakening::None,
        }
    }
}

impl KvmVcpu {
    /// The entry half of `vcpu_enter_guest`: service `KVM_REQ_TLB_FLUSH`
    /// (`kvm_vcpu_flush_tlb_all`), then `vcpu->mode = IN_GUEST_MODE` with `smp_store_mb`, then
    /// the request check that cancels the entry if a request arrived in between. Loops until the
    /// entry sticks (each cancelled entry serviced a request someone made meanwhile).
    #[doc(alias = "vcpu_enter_guest")]
    pub(crate) fn enter_guest(&self) {
        let tlb = &self.tlb;
        loop {
            if tlb.service_flush() {
                self.stat.tlb_flushes.fetch_add(1, Ordering::Relaxed);
            }
            tlb.mode.store(IN_GUEST_MODE, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if tlb.requests.load(Ordering::SeqCst) == 0 {
                return;
            }
            // The entry is cancelled: back to OUTSIDE_GUEST_MODE, service and retry.
            tlb.leave_guest_mode();
        }
    }

    /// The exit half: `vcpu->mode = OUTSIDE_GUEST_MODE` then `smp_wmb()`, then interrupts on (a
    /// pending kick's IPI is acknowledged).
    pub(crate) fn exit_guest(&self) {
        self.tlb.leave_guest_mode();
    }

    /// `vcpu->mode`, requests and TLB.
    pub fn tlb(&self) -> &VcpuTlb {
        &self.tlb
    }
}

impl Kvm {
    /// Every created vCPU (`kvm_for_each_vcpu`).
    pub fn vcpus(&self) -> Vec<gmem_sync::Arc<KvmVcpu>> {
        self.vcpu_array.lock().clone()
    }

    /// `kvm_get_vcpu_by_id`.
    #[doc(alias = "kvm_get_vcpu_by_id")]
    pub fn get_vcpu_by_id(&self, id: u32) -> Option<gmem_sync::Arc<KvmVcpu>> {
        self.vcpu_array.lock().iter().find(|vcpu| vcpu.vcpu_id() == id).cloned()
    }

    /// `kvm_make_all_cpus_request(kvm, req)` (`kvm_make_all_cpus_request_except` with no
    /// exception): set `req` on every vCPU, kick those that need it and, for a
    /// `KVM_REQUEST_WAIT` request, wait until every kicked vCPU left guest mode. Returns whether
    /// any vCPU was kicked. `kick` false is the test-only weakening that skips kick and wait.
    #[doc(alias(
        "kvm_kick_many_cpus",
        "kvm_make_all_cpus_request_except",
        "kvm_make_vcpu_request",
        "kvm_request_needs_ipi"
    ))]
    pub(crate) fn make_all_cpus_request(&self, req: u32, kick: bool) -> bool {
        let vcpus = self.vcpus();
        let mut kicked = Vec::new();
        for vcpu in &vcpus {
            // kvm_make_vcpu_request: a NO_ACTION request sets no bit (it only kicks); both
            // requests the model makes have NO_WAKEUP, so no kvm_vcpu_wake_up.
            if req & KVM_REQUEST_NO_ACTION == 0 {
                vcpu.tlb.make_request(req);
            }
            if !kick {
                continue;
            }
            // kvm_request_needs_ipi.
            let mode = vcpu.tlb.exiting_guest_mode();
            let needs_ipi =
                if req & KVM_REQUEST_WAIT != 0 { mode != OUTSIDE_GUEST_MODE } else { mode == IN_GUEST_MODE };
            if needs_ipi {
                kicked.push(vcpu);
            }
        }
        // kvm_kick_many_cpus(cpus, wait): the IPI (ack_kick) is handled once the target is out of
        // the guest; waiting for it is waiting for the vCPU to leave the session it was kicked in.
        if req & KVM_REQUEST_WAIT != 0 {
            for vcpu in &kicked {
                // csd_lock_wait: smp_cond_load_acquire. The vCPU's exit is an exchange ordered
                // after our cmpxchg (see `leave_guest_mode`), so a load that has seen our
                // EXITING_GUEST_MODE eventually sees what came after it.
                gmem_sync::thread::wait_for(
                    "a remote TLB flush",
                    || format!("(vCPU {} to leave guest mode)", vcpu.vcpu_id()).into(),
                    || vcpu.tlb.mode.load(Ordering::Acquire) != EXITING_GUEST_MODE,
                );
            }
        }
        !kicked.is_empty()
    }

    /// `kvm_make_all_cpus_request(kvm, KVM_REQ_OUTSIDE_GUEST_MODE)`: kick every vCPU in guest
    /// mode and wait until each has left it. Returns whether any vCPU was kicked. The vendor
    /// sees the kicked vCPUs leave its own guest state through
    /// [`KvmArch::kick_vcpu`](crate::arch::KvmArch::kick_vcpu) first (TDX: the TD exit that ends
    /// `TDH.VP.ENTER`).
    pub fn make_all_cpus_request_outside_guest_mode(&self) -> bool {
        for vcpu in self.vcpus() {
            self.arch().kick_vcpu(self, &vcpu);
        }
        self.make_all_cpus_request(KVM_REQ_OUTSIDE_GUEST_MODE, true)
    }
}
