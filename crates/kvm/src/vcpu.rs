//! vCPUs, guest accesses and pre-faulting (`virt/kvm/kvm_main.c`: `kvm_vm_ioctl_create_vcpu`,
//! `kvm_vcpu_pre_fault_memory`; `arch/x86/kvm/x86.c`: `vcpu_enter_guest`, `vcpu_run`;
//! `arch/x86/kvm/mmu/mmu.c`: `kvm_tdp_map_page`, `kvm_arch_vcpu_pre_fault_memory`). The fault
//! path itself is [`crate::page_fault`].
//!
//! A vCPU here is only what guest memory accesses need: its id, its fault counters, and its mode,
//! requests and TLB ([`crate::tlb`]). A guest access runs in guest mode and goes TLB → SPTE walk
//! ([`crate::tdp_mmu`], filling the TLB) → fault → exit; a missing or read-only leaf is an EPT/NPT
//! violation that leaves guest mode and runs the kernel's fault path: snapshot `mmu_invalidate_seq`, check the access
//! kind against the gfn's PRIVATE attribute (a mismatch is `KVM_EXIT_MEMORY_FAULT`), resolve the
//! pfn (guest_memfd for private faults and for v6.18 `GMEM_ONLY` slots, the memslot's
//! `userspace_addr` through the process's page tables otherwise), then under `mmu_lock` for read
//! check for a racing invalidation and install the leaf or retry.
//!
//! Whether a default access is private follows the VM type: a DEFAULT VM's accesses are shared;
//! a SW_PROTECTED VM's are private exactly when the gfn is PRIVATE (`kvm_mmu_page_fault`
//! synthesises `PFERR_PRIVATE_ACCESS` from the attributes, so such a guest never mismatches on
//! its own). An explicit access kind stands for the vendor's error code (SNP's C-bit, TDX's
//! shared bit) and can mismatch.

use crate::arch::{
    GuestAccess, GuestException, GuestFault, GuestFaultExit, PgLevel, VcpuRunEntry, PFERR_GUEST_FINAL_MASK,
    PFERR_PRIVATE_ACCESS, PFERR_WRITE_MASK,
};
use crate::attributes::KVM_MEMORY_ATTRIBUTE_PRIVATE;
use crate::page_fault::kvm_mmu_do_page_fault;
use crate::profile::Fix;
use crate::tdp_mmu::TdpMmu;
use crate::tlb::VcpuTlb;
use crate::types::{Gfn, Gpa};
use crate::vm::Kvm;
use gmem_mm::folio::Folio;
use gmem_mm::types::{PAGE_SHIFT, PAGE_SIZE};
use gmem_mm::vma::Mm;
use gmem_mm::{Errno, KResult, Pfn};
use gmem_sync::atomic::{AtomicU32, AtomicU64, Ordering};
use gmem_sync::warn::WarnKind;
use gmem_sync::{Arc, LockClass, Mutex};
use std::any::Any;

/// `KVM_MAX_VCPUS` on x86 with `MAXSMP` (the TDP profiles'; each profile has its own in
/// [`KernelConfig::max_vcpus`](crate::profile::KernelConfig)).
pub const KVM_MAX_VCPUS: u32 = 4096;
/// `KVM_VCPU_ID_RATIO`: `KVM_MAX_VCPU_IDS` is `KVM_MAX_VCPUS` times this.
pub const KVM_VCPU_ID_RATIO: u64 = 4;
/// `KVM_MEMORY_EXIT_FLAG_PRIVATE`.
pub const KVM_MEMORY_EXIT_FLAG_PRIVATE: u64 = 1 << 3;
/// How many times one access may re-fault before the model reports a vCPU that cannot make
/// progress (the kernel would spin in `KVM_RUN` until a signal).
pub const FAULT_RETRY_LIMIT: u32 = 1000;

/// `struct kvm_vcpu`, the parts guest memory accesses need.
pub struct KvmVcpu {
    vcpu_id: u32,
    vcpu_idx: u32,
    /// `vcpu->stat`, the page-fault counters.
    pub stat: VcpuStat,
    /// `vcpu->mode`, `vcpu->requests` and the TLB.
    pub(crate) tlb: VcpuTlb,
    /// The vendor's per-vCPU state ([`KvmArch::vcpu_create`](crate::arch::KvmArch::vcpu_create)).
    arch: Box<dyn Any + Send + Sync>,
    /// `vcpu->arch.mmu_external_spt_cache`: pages for the external page tables of new mirror
    /// tables, topped up before a fault takes `mmu_lock` (VMs with a mirror root only).
    mmu_external_spt_cache: Mutex<Vec<Pfn>>,
    /// `vcpu->mutex`: taken by `kvm_vcpu_ioctl` around the ioctls that need it (in the model:
    /// `KVM_MEMORY_ENCRYPT_OP` on a vCPU) and by `kvm_lock_all_vcpus`
    /// ([`Kvm::with_all_vcpus_locked`]). Lock order: `kvm->lock` → `vcpu->mutex` → `kvm->slots_lock`.
    pub mutex: Mutex<()>,
    /// Events waiting to be injected (interrupts, NMIs: what `kvm_vcpu_has_events` looks for),
    /// delivered at the next guest entry ([`KvmVcpu::queue_event`]).
    pending_events: AtomicU32,
}

/// `vcpu->mutex`.
pub static VCPU_MUTEX: LockClass = LockClass::new("vcpu->mutex");

/// `vcpu->arch.mmu_external_spt_cache` (taken alone, under `mmu_lock` or outside it).
static EXTERNAL_SPT_CACHE_LOCK: LockClass = LockClass::new("vcpu->arch.mmu_external_spt_cache");

/// `PT64_ROOT_MAX_LEVEL`: a fault needs at most one new table per level below the root.
pub const PT64_ROOT_MAX_LEVEL: usize = 5;

impl std::fmt::Debug for KvmVcpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmVcpu")
            .field("vcpu_id", &self.vcpu_id)
            .field("vcpu_idx", &self.vcpu_idx)
            .field("stat", &self.stat)
            .field("tlb", &self.tlb)
            .finish_non_exhaustive()
    }
}

/// The page-fault counters of `vcpu->stat` (`pf_retry` is the model's own).
#[derive(Debug, Default)]
pub struct VcpuStat {
    /// `pf_taken`: faults the guest took (`kvm_mmu_page_fault`; a pre-fault counts in no field).
    pub pf_taken: AtomicU64,
    /// `pf_fixed`: faults that installed an SPTE.
    pub pf_fixed: AtomicU64,
    /// `pf_spurious`: faults that found the SPTE already there.
    pub pf_spurious: AtomicU64,
    /// `pf_emulate`: faults handed to emulation (MMIO).
    pub pf_emulate: AtomicU64,
    /// Faults that returned `RET_PF_RETRY` (a racing invalidation, an INVALID memslot; the
    /// model's own).
    pub pf_retry: AtomicU64,
    /// Translations served by the TLB (the model's own).
    pub tlb_hits: AtomicU64,
    /// Translations that walked the SPTEs (TLB misses; the model's own).
    pub spte_walks: AtomicU64,
    /// `KVM_REQ_TLB_FLUSH` serviced on entry (`kvm_vcpu_flush_tlb_all`).
    pub tlb_flushes: AtomicU64,
}

/// The values of a [`VcpuStat`]'s counters at one moment (one field per counter, same names), or
/// their sums over vCPUs: what a caller reads, apart from the atomics the vCPU updates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuStatValues {
    /// `pf_taken`: faults the guest took (`kvm_mmu_page_fault`; a pre-fault counts in no field).
    pub pf_taken: u64,
    /// `pf_fixed`: faults that installed an SPTE.
    pub pf_fixed: u64,
    /// `pf_spurious`: faults that found the SPTE already there.
    pub pf_spurious: u64,
    /// `pf_emulate`: faults handed to emulation (MMIO).
    pub pf_emulate: u64,
    /// Faults that returned `RET_PF_RETRY` (a racing invalidation, an INVALID memslot; the
    /// model's own).
    pub pf_retry: u64,
    /// Translations served by the TLB (the model's own).
    pub tlb_hits: u64,
    /// Translations that walked the SPTEs (TLB misses; the model's own).
    pub spte_walks: u64,
    /// `KVM_REQ_TLB_FLUSH` serviced on entry (`kvm_vcpu_flush_tlb_all`).
    pub tlb_flushes: u64,
}

impl VcpuStat {
    /// The counters' values now (each read on its own, relaxed: exact once the vCPU is idle).
    pub fn values(&self) -> VcpuStatValues {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        VcpuStatValues {
            pf_taken: read(&self.pf_taken),
            pf_fixed: read(&self.pf_fixed),
            pf_spurious: read(&self.pf_spurious),
            pf_emulate: read(&self.pf_emulate),
            pf_retry: read(&self.pf_retry),
            tlb_hits: read(&self.tlb_hits),
            spte_walks: read(&self.spte_walks),
            tlb_flushes: read(&self.tlb_flushes),
        }
    }
}

impl std::ops::Add for VcpuStatValues {
    type Output = VcpuStatValues;

    fn add(self, other: VcpuStatValues) -> VcpuStatValues {
        VcpuStatValues {
            pf_taken: self.pf_taken + other.pf_taken,
            pf_fixed: self.pf_fixed + other.pf_fixed,
            pf_spurious: self.pf_spurious + other.pf_spurious,
            pf_emulate: self.pf_emulate + other.pf_emulate,
            pf_retry: self.pf_retry + other.pf_retry,
            tlb_hits: self.tlb_hits + other.tlb_hits,
            spte_walks: self.spte_walks + other.spte_walks,
            tlb_flushes: self.tlb_flushes + other.tlb_flushes,
        }
    }
}

impl std::iter::Sum for VcpuStatValues {
    fn sum<I: Iterator<Item = VcpuStatValues>>(values: I) -> VcpuStatValues {
        values.fold(VcpuStatValues::default(), std::ops::Add::add)
    }
}

impl KvmVcpu {
    /// `vcpu->vcpu_id`.
    pub fn vcpu_id(&self) -> u32 {
        self.vcpu_id
    }

    /// `vcpu->vcpu_idx`.
    pub fn vcpu_idx(&self) -> u32 {
        self.vcpu_idx
    }

    /// The vendor's per-vCPU state (`to_svm(vcpu)`), if it is a `T`.
    pub fn arch<T: Any>(&self) -> Option<&T> {
        self.arch.downcast_ref()
    }

    pub(crate) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// `mmu_topup_memory_caches`' part for a VM with a mirror root:
    /// `kvm_mmu_topup_memory_cache(&vcpu->arch.mmu_external_spt_cache, PT64_ROOT_MAX_LEVEL)`,
    /// before the fault takes `mmu_lock`. ENOMEM if the machine is out of pages.
    #[doc(alias = "kvm_mmu_topup_memory_cache")]
    pub(crate) fn topup_external_spt_cache(&self, kvm: &Kvm) -> KResult<()> {
        let mut cache = self.mmu_external_spt_cache.lock();
        while cache.len() < PT64_ROOT_MAX_LEVEL {
            cache.push(kvm.machine().mem.alloc(0)?);
        }
        Ok(())
    }

    /// `kvm_mmu_memory_cache_alloc(&vcpu->arch.mmu_external_spt_cache)`: a page for a new mirror
    /// table's `external_spt`. An empty cache is a WARN and a direct (atomic) allocation, as in
    /// the kernel; `None` if that fails too.
    #[doc(alias = "kvm_mmu_alloc_external_spt")]
    pub(crate) fn alloc_external_spt(&self, kvm: &Kvm) -> Option<Pfn> {
        let cached = self.mmu_external_spt_cache.lock().pop();
        cached.or_else(|| {
            kvm.machine()
                .warnings
                .warn_on_once(true, || format!("vCPU {}: mmu_external_spt_cache empty under mmu_lock", self.vcpu_id));
            kvm.machine().mem.alloc(0).ok()
        })
    }

    /// `mmu_free_memory_caches` (from `kvm_mmu_destroy` when the vCPU is freed): the pages left
    /// in the external-SPT cache go back to the machine.
    #[doc(alias = "mmu_free_memory_caches")]
    pub(crate) fn free_mmu_caches(&self, kvm: &Kvm) {
        let pages = std::mem::take(&mut *self.mmu_external_spt_cache.lock());
        for pfn in pages {
            Folio::from_pfn(&kvm.machine().mem, pfn).put();
        }
    }

    /// How many pages the external-SPT cache holds.
    pub fn external_spt_cache_len(&self) -> usize {
        self.mmu_external_spt_cache.lock().len()
    }

    /// An event for the vCPU (an interrupt routed to it, an NMI): it stays pending, and
    /// [`KvmVcpu::has_events`] true, until the next guest entry delivers it. The model has no
    /// interrupt controller; this stands for whatever made `kvm_vcpu_has_events` true (tests
    /// and the run post one to make TDX's MapGPA return `TDVMCALL_STATUS_RETRY`, or end an EPT
    /// violation's local retries).
    #[doc(alias = "kvm_check_and_inject_events")]
    pub fn queue_event(&self) {
        self.pending_events.fetch_add(1, Ordering::AcqRel);
    }

    /// `kvm_vcpu_has_events(vcpu)`: an event waits for the next entry.
    #[doc(alias = "kvm_vcpu_has_events")]
    pub fn has_events(&self) -> bool {
        self.pending_events.load(Ordering::Acquire) != 0
    }

    /// The entry's event injection (`kvm_check_and_inject_events`; TDX's posted interrupts):
    /// every pending event reaches the guest.
    fn deliver_events(&self) {
        if self.pending_events.load(Ordering::Relaxed) != 0 {
            self.pending_events.swap(0, Ordering::AcqRel);
        }
    }
}

/// Why `KVM_RUN` (or a vCPU ioctl) returned to user space without finishing the access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuExit {
    /// `KVM_EXIT_MEMORY_FAULT`, returned with `errno` (EFAULT for a private/shared mismatch, the
    /// guest_memfd error otherwise).
    MemoryFault {
        /// `memory_fault.gpa` (page aligned).
        gpa: u64,
        /// `memory_fault.size`.
        size: u64,
        /// `memory_fault.flags`.
        flags: u64,
        /// The ioctl's errno.
        errno: Errno,
    },
    /// `KVM_EXIT_MMIO`: no memslot (or a write to a read-only one); the VMM emulates.
    Mmio {
        /// `mmio.phys_addr`.
        phys_addr: u64,
        /// `mmio.len` (at most 8).
        len: u64,
        /// `mmio.is_write`.
        is_write: bool,
    },
    /// `KVM_EXIT_FAIL_ENTRY`: the hardware refused to enter the guest (SVM: VMRUN exited with
    /// `SVM_EXIT_ERR`, such as an SEV-SNP vCPU whose VMSA the firmware has not launched).
    FailEntry {
        /// `fail_entry.hardware_entry_failure_reason`.
        reason: u64,
    },
    /// `KVM_EXIT_HYPERCALL`: a hypercall user space asked to handle
    /// (`KVM_CAP_EXIT_HYPERCALL`); the VMM completes it with `hypercall.ret`, which the guest
    /// gets in RAX when it resumes (`complete_hypercall_exit`).
    Hypercall {
        /// `hypercall.nr`.
        nr: u64,
        /// `hypercall.args` (`KVM_HC_MAP_GPA_RANGE`: gpa, number of 4K pages, attributes).
        args: [u64; 6],
        /// `hypercall.flags` (`KVM_EXIT_HYPERCALL_LONG_MODE`: the guest was in 64-bit mode).
        flags: u64,
    },
}

/// A failed guest access: an exit, a plain errno, or a signal sent to the vCPU thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunError {
    /// `KVM_RUN` returned with this exit reason.
    Exit(VcpuExit),
    /// `KVM_RUN` failed with this errno (exit reason untouched).
    Errno(Errno),
    /// `kvm_send_hwpoison_signal`: the vCPU thread got SIGBUS (BUS_MCEERR_AR).
    Sigbus,
    /// The hardware delivered an exception to the guest instead of completing its access (an
    /// SEV-SNP #VC for a page the guest has not validated): not an exit, the guest sees it.
    GuestException(GuestException),
}

impl From<Errno> for RunError {
    fn from(errno: Errno) -> Self {
        RunError::Errno(errno)
    }
}

/// `RET_PF_*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetPf {
    /// `RET_PF_RETRY`: let the guest re-fault.
    Retry,
    /// `RET_PF_EMULATE`: MMIO (no memslot, or a write to a read-only slot).
    #[doc(alias = "kvm_handle_noslot_fault")]
    Emulate,
    /// `RET_PF_FIXED`.
    Fixed,
    /// `RET_PF_SPURIOUS`.
    Spurious,
}

impl Kvm {
    /// `kvm_vm_ioctl_create_vcpu`: the id checks, `created_vcpus` accounting, the duplicate-id
    /// check, then `install` (which takes the VM reference and makes the vCPU's descriptor, as
    /// `create_vcpu_fd` does under `kvm->lock`); its failure undoes everything.
    #[doc(alias("kvm_arch_vcpu_precreate", "kvm_vm_ioctl_create_vcpu"))]
    pub fn create_vcpu(&self, id: u64, install: impl FnOnce(Arc<KvmVcpu>) -> KResult<i32>) -> KResult<i32> {
        let _span = tracing::debug_span!("kvm_vm_ioctl_create_vcpu", id).entered();
        let max_vcpus = self.profile().config.max_vcpus;
        if id >= u64::from(max_vcpus) * KVM_VCPU_ID_RATIO {
            return Err(Errno::EINVAL);
        }
        {
            let _lock = self.lock.lock();
            if self.created_vcpus.load(Ordering::Relaxed) >= max_vcpus {
                return Err(Errno::EINVAL);
            }
            // kvm_arch_vcpu_precreate: max_vcpu_ids defaults to KVM_MAX_VCPU_IDS (checked above).
            self.created_vcpus.fetch_add(1, Ordering::Relaxed);
        }
        // kvm_arch_vcpu_create → kvm_x86_ops.vcpu_create, outside kvm->lock.
        let arch = match self.arch().vcpu_create(self, id as u32) {
            Ok(arch) => arch,
            Err(errno) => {
                self.created_vcpus.fetch_sub(1, Ordering::Relaxed);
                return Err(errno);
            }
        };
        let lock = self.lock.lock();
        let mut array = self.vcpu_array.lock();
        let vcpu = Arc::new(KvmVcpu {
            vcpu_id: id as u32,
            vcpu_idx: array.len() as u32,
            stat: VcpuStat::default(),
            tlb: VcpuTlb::new(),
            arch,
            mmu_external_spt_cache: Mutex::new(&EXTERNAL_SPT_CACHE_LOCK, Vec::new()),
            mutex: Mutex::new(&VCPU_MUTEX, ()),
            pending_events: AtomicU32::new(0),
        });
        if array.iter().any(|other| other.vcpu_id as u64 == id) {
            drop(array);
            drop(lock);
            // unlock_vcpu_destroy: kvm_arch_vcpu_destroy.
            self.arch().vcpu_free(self, &vcpu);
            self.created_vcpus.fetch_sub(1, Ordering::Relaxed);
            return Err(Errno::EEXIST);
        }
        array.push(vcpu.clone());
        drop(array);
        match install(vcpu.clone()) {
            Ok(fd) => Ok(fd),
            Err(errno) => {
                self.vcpu_array.lock().pop();
                drop(lock);
                self.arch().vcpu_free(self, &vcpu);
                self.created_vcpus.fetch_sub(1, Ordering::Relaxed);
                Err(errno)
            }
        }
    }

    /// `kvm_lock_all_vcpus(kvm)` ... `kvm_unlock_all_vcpus(kvm)` around `f` (the caller holds
    /// `kvm->lock`): every vCPU's `vcpu->mutex`, in `vcpu_idx` order, held while `f` runs. The
    /// kernel takes them with `mutex_lock_killable_nest_lock(..., &kvm->lock)`, whose
    /// `nest_lock` annotation tells lockdep that holding `kvm->lock` serialises everyone who
    /// takes several of them; the model's lockdep has no nesting annotations, so the first is
    /// taken with a plain `mutex_lock` (recording `kvm->lock` → `vcpu->mutex`) and the others
    /// by waiting on `mutex_trylock`, which records no dependency. A closure rather than a list
    /// of guards, so that the guards can borrow the vCPUs they lock.
    #[doc(alias("kvm_lock_all_vcpus", "kvm_unlock_all_vcpus"))]
    pub fn with_all_vcpus_locked<R>(&self, f: impl FnOnce() -> R) -> R {
        gmem_sync::lockdep_assert_held(&crate::vm::KVM_LOCK);
        fn nest<R>(vcpus: &[Arc<KvmVcpu>], first: bool, f: impl FnOnce() -> R) -> R {
            let Some((vcpu, rest)) = vcpus.split_first() else { return f() };
            let _guard = if first {
                vcpu.mutex.lock()
            } else {
                let mut attempt = 0;
                loop {
                    if let Some(guard) = vcpu.mutex.try_lock() {
                        break guard;
                    }
                    attempt += 1;
                    gmem_sync::thread::backoff(attempt);
                }
            };
            nest(rest, false, f)
        }
        nest(&self.vcpus(), true, f)
    }

    /// `kvm->created_vcpus`.
    pub fn created_vcpus(&self) -> u32 {
        self.created_vcpus.load(Ordering::Relaxed)
    }

    /// `atomic_read(&kvm->online_vcpus)`.
    pub fn online_vcpus(&self) -> usize {
        self.vcpu_array.lock().len()
    }

    pub(crate) fn tdp(&self) -> KResult<&TdpMmu> {
        // A VM whose MMU has no page tables (the recording MMU of tests) cannot run a guest.
        self.tdp_mmu().ok_or(Errno::EOPNOTSUPP)
    }

    /// Whether a guest access without an explicit kind is private (see the module docs).
    pub fn default_access_is_private(&self, gfn: Gfn) -> bool {
        self.has_private_mem() && self.get_memory_attributes(gfn) & KVM_MEMORY_ATTRIBUTE_PRIVATE != 0
    }
}

/// A guest load (`write == false`) or store of `buf` at `gpa`, page by page, each through
/// [`guest_page_op`]: the hardware's checks of the back-end
/// ([`KvmArch::guest_access_check`](crate::arch::KvmArch::guest_access_check), the SEV-SNP RMP
/// check), then the data access. `private` is the access kind (the C-bit); `None` is the VM
/// type's default ([`Kvm::default_access_is_private`]).
pub fn guest_access(
    kvm: &Kvm,
    vcpu: &KvmVcpu,
    mm: &Mm,
    gpa: u64,
    buf: &mut [u8],
    write: bool,
    private: Option<bool>,
) -> Result<(), RunError> {
    let mem = &kvm.machine().mem;
    let mut done = 0usize;
    while done < buf.len() {
        let at = gpa.checked_add(done as u64).ok_or(RunError::Errno(Errno::EFAULT))?;
        let in_page = (at & (PAGE_SIZE - 1)) as usize;
        let chunk = (PAGE_SIZE as usize - in_page).min(buf.len() - done);
        let is_private = access_kind(kvm, at, private)?;
        let piece = &mut buf[done..done + chunk];
        guest_page_op(kvm, vcpu, mm, at, write, is_private, chunk, |access| {
            if kvm.arch_checks_guest_accesses() {
                kvm.arch().guest_access_check(kvm, access)?;
            }
            if write {
                mem.write_unchecked(access.pfn, in_page, piece);
            } else {
                mem.read(access.pfn, in_page, piece);
            }
            Ok(())
        })?;
        done += chunk;
    }
    Ok(())
}

/// The kind of a guest access to `gpa`: `private` if given, else the VM type's default
/// ([`Kvm::default_access_is_private`]). On a VM with a mirror root the gpa itself says
/// (TDX: private without the shared bit, `kvm_is_addr_direct`); an explicit kind that
/// contradicts it is EINVAL.
fn access_kind(kvm: &Kvm, gpa: u64, private: Option<bool>) -> Result<bool, RunError> {
    if kvm.has_mirrored_tdp() && kvm.gfn_direct_bits() != 0 {
        let is_private = !kvm.is_addr_direct(gpa);
        return match private {
            Some(kind) if kind != is_private => Err(RunError::Errno(Errno::EINVAL)),
            _ => Ok(is_private),
        };
    }
    Ok(private.unwrap_or_else(|| kvm.default_access_is_private(Gpa(gpa).to_gfn())))
}

/// One guest operation on the page of `gpa` (a load, a store, or an instruction such as SEV-SNP's
/// PVALIDATE), as the hardware runs it: in guest mode, after the vendor's entry
/// ([`KvmArch::vcpu_run`](crate::arch::KvmArch::vcpu_run): TDX's `TDH.VP.ENTER`, or no entry
/// while `wait_for_sept_zap` is set, which is tried again), translate through the TLB or a walk
/// of the SPTEs (filling the TLB), then `op` on the translation. A missing or read-only translation is
/// an EPT/NPT violation: the vCPU leaves guest mode and runs the fault path
/// ([`kvm_mmu_page_fault`](crate::page_fault::kvm_mmu_page_fault), a private fault if `private`). `op` may refuse with a nested fault
/// (handled the same way, then by the vendor's [`KvmArch::handle_npf`](crate::arch::KvmArch::handle_npf))
/// or an exception for the guest (returned as [`RunError::GuestException`]). What the fault path
/// asks to retry is retried, with a bound: a vCPU that cannot make progress is reported as a
/// WARN and the operation fails with EINTR, as a VMM's signal would end the spin. `len` is the
/// size of the access (for an MMIO exit).
#[allow(clippy::too_many_arguments)]
#[doc(alias = "tdx_emulate_mmio")]
pub fn guest_page_op<T>(
    kvm: &Kvm,
    vcpu: &KvmVcpu,
    mm: &Mm,
    gpa: u64,
    write: bool,
    private: bool,
    len: usize,
    mut op: impl FnMut(&GuestAccess) -> Result<T, GuestFault>,
) -> Result<T, RunError> {
    let tdp = kvm.tdp()?;
    let gfn = Gpa(gpa).to_gfn();
    let mut attempts = 0;
    // Registered at the first retry, so a supervisor sees which invalidation a spinning vCPU
    // waits behind (see gmem_sync::waits); unregistered when the access ends.
    let mut retrying = None;
    loop {
        // vcpu_enter_guest: KVM_REQ_VM_DEAD (a KVM_BUG_ON, or kvm_vm_dead) ends the run.
        if kvm.is_dead() {
            return Err(RunError::Errno(Errno::EIO));
        }
        kvm.arch().vcpu_pre_run(kvm, vcpu)?;
        let error_code = match attempt_in_guest(kvm, vcpu, tdp, gfn, write, private, &mut op) {
            Attempt::Done(value) => return Ok(value),
            Attempt::Exception(exception) => return Err(RunError::GuestException(exception)),
            Attempt::Failed(error) => return Err(error),
            Attempt::NotEntered => {
                not_entered(kvm, vcpu, &mut attempts)?;
                continue;
            }
            Attempt::Violation => None,
            Attempt::Npf(error_code) => Some(error_code),
        };
        attempts += 1;
        if attempts > FAULT_RETRY_LIMIT {
            kvm.machine().warnings.report(
                WarnKind::Warn,
                format!("vCPU {} fault at gpa {gpa:#x} made no progress in {FAULT_RETRY_LIMIT} tries", vcpu.vcpu_id),
            );
            return Err(RunError::Errno(Errno::EINTR));
        }
        // The vendor's exit handler (npf_interception, handle_ept_violation,
        // tdx_handle_ept_violation).
        let fault = GuestFaultExit { gpa, write, private, error_code };
        match kvm.arch().handle_guest_fault(kvm, vcpu, mm, &fault)? {
            RetPf::Emulate => {
                // A TD's MMIO reaches user space through its #VE handler's TDVMCALL<MMIO>
                // (folded in here): tdx_emulate_mmio names the address without the shared bit.
                let phys_addr = gpa & !(kvm.gfn_direct_bits() << PAGE_SHIFT);
                return Err(RunError::Exit(VcpuExit::Mmio { phys_addr, len: len.min(8) as u64, is_write: write }));
            }
            ret => {
                // vcpu_enter_guest: a KVM_BUG_ON meanwhile (an external-SPT hook's, say) left
                // KVM_REQ_VM_DEAD, and the re-entry fails with EIO.
                if kvm.is_dead() {
                    return Err(RunError::Errno(Errno::EIO));
                }
                if ret == RetPf::Retry {
                    retrying.get_or_insert_with(|| {
                        gmem_sync::waits::waiting("fault retry", || {
                            let (start, end) = kvm.mmu_invalidate_range();
                            format!(
                                "(vCPU {} at gpa {gpa:#x}; at the first retry mmu_invalidate_in_progress={} range=[{start:#x}, {end:#x}) seq={})",
                                vcpu.vcpu_id,
                                kvm.mmu_invalidate_in_progress(),
                                kvm.mmu_invalidate_seq()
                            )
                            .into()
                        })
                    });
                    // The guest re-faults; the invalidator runs meanwhile (give it the CPU; under
                    // loom a spinning vCPU would otherwise be explored forever).
                    gmem_sync::thread::backoff(attempts);
                }
            }
        }
    }
}

/// An entry the vendor did not make ([`VcpuRunEntry::NotEntered`]): `vcpu_run`'s loop goes
/// round. A pending signal ends `KVM_RUN` with EINTR (`KVM_EXIT_INTR`); the model also gives up,
/// with a WARN and EINTR, after [`FAULT_RETRY_LIMIT`] tries (the kernel would spin until a
/// signal, or until the vendor lets the vCPU in).
fn not_entered(kvm: &Kvm, vcpu: &KvmVcpu, attempts: &mut u32) -> Result<(), RunError> {
    *attempts += 1;
    if kvm.machine().signal_pending() {
        return Err(RunError::Errno(Errno::EINTR));
    }
    if *attempts > FAULT_RETRY_LIMIT {
        kvm.machine().warnings.report(
            WarnKind::Warn,
            format!("vCPU {} could not enter the guest in {FAULT_RETRY_LIMIT} tries", vcpu.vcpu_id),
        );
        return Err(RunError::Errno(Errno::EINTR));
    }
    gmem_sync::thread::backoff(*attempts);
    Ok(())
}

/// How one attempt in guest mode ended.
enum Attempt<T> {
    /// `op` completed.
    Done(T),
    /// No usable translation: an EPT/NPT violation.
    Violation,
    /// `op` raised a nested fault with this error code.
    Npf(u64),
    /// `op` raised an exception for the guest.
    Exception(GuestException),
    /// The vendor did not enter the guest ([`VcpuRunEntry::NotEntered`]).
    NotEntered,
    /// The entry failed ([`VcpuRunEntry::Failed`]).
    Failed(RunError),
}

/// `vcpu_enter_guest` up to the VM entry: guest mode (the TLB flush a request asked for is
/// done first), then the vendor's `vcpu_run` ([`KvmArch::vcpu_run`](crate::arch::KvmArch::vcpu_run)).
/// `Ok(())`: the guest runs, its pending events delivered; the caller ends the entry with
/// [`exit_from_guest`]. Otherwise the vCPU is outside guest mode again.
fn enter_guest_mode(kvm: &Kvm, vcpu: &KvmVcpu) -> Result<(), VcpuRunEntry> {
    vcpu.enter_guest();
    match kvm.arch().vcpu_run(kvm, vcpu) {
        VcpuRunEntry::Entered => {
            vcpu.deliver_events();
            Ok(())
        }
        other => {
            vcpu.exit_guest();
            Err(other)
        }
    }
}

/// The VM exit that ends an entry [`enter_guest_mode`] made: the vendor's part
/// ([`KvmArch::vcpu_run_exit`](crate::arch::KvmArch::vcpu_run_exit)), then
/// `vcpu->mode = OUTSIDE_GUEST_MODE`.
fn exit_from_guest(kvm: &Kvm, vcpu: &KvmVcpu) {
    kvm.arch().vcpu_run_exit(kvm, vcpu);
    vcpu.exit_guest();
}

/// One entry into the guest that ends with an exit the guest asked for (a `VMCALL`, a TDX
/// `TDCALL`): `KVM_RUN`'s entry checks ([`KvmArch::vcpu_pre_run`](crate::arch::KvmArch::vcpu_pre_run)),
/// guest mode, the vendor's entry ([`KvmArch::vcpu_run`](crate::arch::KvmArch::vcpu_run)) and
/// its exit. `Ok(())` once the guest ran and exited: the caller handles the exit. An entry the
/// vendor did not make is tried again as [`guest_page_op`] does (bounded; EINTR on a signal).
/// EIO once the VM is dead.
pub fn guest_run_to_exit(kvm: &Kvm, vcpu: &KvmVcpu) -> Result<(), RunError> {
    let mut attempts = 0;
    loop {
        if kvm.is_dead() {
            return Err(RunError::Errno(Errno::EIO));
        }
        kvm.arch().vcpu_pre_run(kvm, vcpu)?;
        match enter_guest_mode(kvm, vcpu) {
            Ok(()) => {
                exit_from_guest(kvm, vcpu);
                return Ok(());
            }
            Err(VcpuRunEntry::Failed(error)) => return Err(error),
            Err(_) => not_entered(kvm, vcpu, &mut attempts)?,
        }
    }
}

/// One translation and `op` in guest mode (`vcpu_enter_guest` .. exit): the vendor's entry, then
/// the TLB, else a walk that fills it. An access through a translation whose frame was freed
/// since is reported as a use-after-free: that is what the flush protocol exists to prevent.
fn attempt_in_guest<T>(
    kvm: &Kvm,
    vcpu: &KvmVcpu,
    tdp: &TdpMmu,
    gfn: Gfn,
    write: bool,
    private: bool,
    op: &mut impl FnMut(&GuestAccess) -> Result<T, GuestFault>,
) -> Attempt<T> {
    let mem = &kvm.machine().mem;
    match enter_guest_mode(kvm, vcpu) {
        Ok(()) => {}
        Err(VcpuRunEntry::Failed(error)) => return Attempt::Failed(error),
        Err(_) => return Attempt::NotEntered,
    }
    let entry = match vcpu.tlb.lookup(gfn, write) {
        Some(entry) => {
            KvmVcpu::count(&vcpu.stat.tlb_hits);
            Some(entry)
        }
        None => {
            KvmVcpu::count(&vcpu.stat.spte_walks);
            // The EPT walk: with a mirror root, the root the gpa selects.
            let spte = if kvm.has_mirrored_tdp() { tdp.walk_root(kvm, gfn, write) } else { tdp.walk(gfn, write) };
            spte.map(|spte| {
                vcpu.tlb.fill(gfn, &spte);
                crate::tlb::TlbEntry::from(&spte)
            })
        }
    };
    let outcome = match entry {
        None => Attempt::Violation,
        Some(entry) => {
            if entry.generation != mem.generation(entry.pfn) {
                kvm.machine().warnings.report(
                    WarnKind::UseAfterFree,
                    format!("guest access to gfn {gfn} through a stale translation ({:?} was freed)", entry.pfn),
                );
            }
            // The access as the hardware's checks see it: at the memslot gfn (without the
            // direct bits of a VM with a mirror root; `private` tells the alias).
            let gfn = if kvm.has_mirrored_tdp() { Gfn(gfn.0 & !kvm.gfn_direct_bits()) } else { gfn };
            let access = GuestAccess { gfn, pfn: entry.pfn, npt_level: entry.level, write, private };
            match op(&access) {
                Ok(value) => Attempt::Done(value),
                Err(GuestFault::Npf { error_code }) => Attempt::Npf(error_code),
                Err(GuestFault::Exception(exception)) => Attempt::Exception(exception),
            }
        }
    };
    exit_from_guest(kvm, vcpu);
    outcome
}

/// `KVM_PRE_FAULT_MEMORY` (`kvm_vcpu_pre_fault_memory` with the x86 hook): map `[gpa, gpa+size)`
/// as faults would, without running the guest. Returns the size left (the ioctl's updated
/// `range.size`) when any progress was made, else the first error.
pub fn kvm_vcpu_pre_fault_memory(kvm: &Kvm, vcpu: &KvmVcpu, mm: &Mm, gpa: u64, size: u64) -> KResult<u64> {
    let _span = tracing::debug_span!("kvm_vcpu_pre_fault_memory", gpa, size).entered();
    if gpa & (PAGE_SIZE - 1) != 0 || size & (PAGE_SIZE - 1) != 0 || gpa.wrapping_add(size) <= gpa {
        return Err(Errno::EINVAL);
    }
    let (mut gpa, mut size) = (gpa, size);
    let full_size = size;
    let mut error = Errno::EIO;
    // The whole loop is one `kvm->srcu` read section: a memslot update waits for it (F13).
    let _srcu = kvm.srcu_read_lock();
    while size != 0 {
        if kvm.machine().signal_pending() {
            error = Errno::EINTR;
            break;
        }
        match kvm_arch_vcpu_pre_fault_memory(kvm, vcpu, mm, gpa, size) {
            Ok(mapped) => {
                size -= mapped;
                gpa += mapped;
            }
            Err(errno) => {
                error = errno;
                break;
            }
        }
    }
    if size == full_size {
        Err(error)
    } else {
        Ok(size)
    }
}

/// x86 `kvm_arch_vcpu_pre_fault_memory` → `kvm_tdp_map_page`.
fn kvm_arch_vcpu_pre_fault_memory(kvm: &Kvm, vcpu: &KvmVcpu, mm: &Mm, gpa: u64, size: u64) -> KResult<u64> {
    // Upstream fix F7 added the gate; without it any VM may be pre-faulted at any time.
    if kvm.profile().has_fix(Fix::F7PreFaultGate) && !kvm.pre_fault_allowed() {
        return Err(Errno::EOPNOTSUPP);
    }
    // Alias gfns (a TDX shared-bit address) are refused: memslots know the gfn without the bits.
    if kvm.has_mirrored_tdp() && kvm.is_gfn_alias(Gpa(gpa).to_gfn()) {
        return Err(Errno::EINVAL);
    }
    kvm_mmu_reload(kvm)?;
    let mut error_code = PFERR_GUEST_FINAL_MASK;
    if kvm.default_access_is_private(Gpa(gpa).to_gfn()) {
        error_code |= PFERR_PRIVATE_ACCESS;
    }
    // A shared pre-fault maps the direct root's alias: `range->gpa | direct_bits`.
    let fault_gpa = if kvm.has_mirrored_tdp() && error_code & PFERR_PRIVATE_ACCESS == 0 {
        gpa | (kvm.gfn_direct_bits() << PAGE_SHIFT)
    } else {
        gpa
    };
    let level = kvm_tdp_map_page(kvm, vcpu, mm, fault_gpa, error_code)?;
    // The end of the page that was mapped, at the fault's goal level.
    let huge_size = level.pages() << PAGE_SHIFT;
    let end = (gpa & !(huge_size - 1)) + huge_size;
    Ok(size.min(end - gpa))
}

/// `kvm_mmu_reload`: load the vCPU's root if it has none. Only its failure is modelled: with
/// shadow paging the root is a shadow page, and `make_mmu_pages_available` refuses it (ENOSPC)
/// while the VM's MMU page budget is still 0, i.e. before any memslot was created
/// (`kvm_arch_commit_memory_region` sizes it). The TDP MMU allocates its roots outside that
/// budget, so a TDP vCPU always loads one.
#[doc(alias = "make_mmu_pages_available")]
fn kvm_mmu_reload(kvm: &Kvm) -> KResult<()> {
    let shadow_paging = !kvm.profile().config.pre_fault;
    if shadow_paging && kvm.n_max_mmu_pages.load(Ordering::Relaxed) == 0 {
        return Err(Errno::ENOSPC);
    }
    Ok(())
}

/// `kvm_tdp_map_page(vcpu, gpa, error_code, &level)`: fault `gpa` in as a prefetch with
/// `error_code` (`PFERR_WRITE_MASK`, `PFERR_PRIVATE_ACCESS`), retrying while the fault returns
/// `RET_PF_RETRY`, and return the level it mapped at. The loop ends with EINTR on a pending
/// signal and EIO once the VM is dead (`KVM_REQ_VM_DEAD`, upstream fix F14, in v6.18); the
/// model also gives up, with a WARN and EINTR, after [`FAULT_RETRY_LIMIT`] retries (the kernel
/// would spin until a signal). `RET_PF_EMULATE` (no memslot) is ENOENT; a memory-fault exit
/// is its errno; a memslot being deleted or moved is EAGAIN (F13). Used by `KVM_PRE_FAULT_MEMORY` and by TDX's `tdx_gmem_post_populate`.
pub fn kvm_tdp_map_page(kvm: &Kvm, vcpu: &KvmVcpu, mm: &Mm, gpa: u64, error_code: u64) -> KResult<PgLevel> {
    // Only a TDP page fault is indexed by GPA: with shadow paging (`tdp_enabled` off, so
    // `KVM_CAP_PRE_FAULT_MEMORY` is 0) the vCPU's MMU has no `kvm_tdp_page_fault`.
    if !kvm.profile().config.pre_fault {
        return Err(Errno::EOPNOTSUPP);
    }
    let is_private = error_code & PFERR_PRIVATE_ACCESS != 0;
    let write = error_code & PFERR_WRITE_MASK != 0;
    let mut attempts = 0;
    loop {
        if kvm.machine().signal_pending() {
            return Err(Errno::EINTR);
        }
        if kvm.is_destroyed() || kvm.is_dead() {
            return Err(Errno::EIO);
        }
        let result = kvm_mmu_do_page_fault(kvm, vcpu, mm, gpa, is_private, write, true);
        match result {
            Ok((RetPf::Retry, _)) => {
                attempts += 1;
                if attempts > FAULT_RETRY_LIMIT {
                    kvm.machine().warnings.report(
                        WarnKind::Warn,
                        format!("kvm_tdp_map_page at gpa {gpa:#x} made no progress in {FAULT_RETRY_LIMIT} tries"),
                    );
                    return Err(Errno::EINTR);
                }
                gmem_sync::thread::backoff(attempts);
            }
            Ok((RetPf::Fixed | RetPf::Spurious, level)) => return Ok(level),
            Ok((RetPf::Emulate, _)) => return Err(Errno::ENOENT),
            Err(RunError::Exit(VcpuExit::MemoryFault { errno, .. })) => return Err(errno),
            Err(RunError::Exit(VcpuExit::Mmio { .. })) => return Err(Errno::ENOENT),
            Err(RunError::Exit(VcpuExit::Hypercall { .. } | VcpuExit::FailEntry { .. })) => return Err(Errno::EIO),
            Err(RunError::Errno(errno)) => return Err(errno),
            // kvm_handle_error_pfn sent SIGBUS (a poisoned shared page) and returned
            // RET_PF_RETRY; kvm_tdp_map_page's loop then finds the signal pending.
            Err(RunError::Sigbus) => return Err(Errno::EINTR),
            // A prefetch fault runs no guest code, so nothing can raise a guest exception.
            Err(RunError::GuestException(_)) => return Err(Errno::EIO),
        }
    }
}

/// `KVM_EXIT_HYPERCALL_LONG_MODE` in `hypercall.flags`.
pub const KVM_EXIT_HYPERCALL_LONG_MODE: u64 = 1 << 0;
/// `KVM_ENOSYS`: a hypercall the host does not handle (the guest sees `-KVM_ENOSYS`).
pub const KVM_ENOSYS: u64 = 1000;
/// `KVM_EINVAL`.
pub const KVM_EINVAL: u64 = 22;
/// `KVM_MAP_GPA_RANGE_ENCRYPTED` (`KVM_MAP_GPA_RANGE_ENC_STAT(1)`): the range becomes private.
pub const KVM_MAP_GPA_RANGE_ENCRYPTED: u64 = 1 << 4;
/// `KVM_MAP_GPA_RANGE_DECRYPTED` (`KVM_MAP_GPA_RANGE_ENC_STAT(0)`): the range becomes shared.
pub const KVM_MAP_GPA_RANGE_DECRYPTED: u64 = 0;

/// A guest `VMCALL` from 64-bit mode at CPL 0 (`kvm_emulate_hypercall` → `____kvm_emulate_hypercall`),
/// with the hypercall number and its first three arguments. `Ok(rax)` is the value the guest
/// gets back when the kernel completes the call itself (`-KVM_ENOSYS` for a number it does not
/// handle, `-KVM_EINVAL` for a bad `KVM_HC_MAP_GPA_RANGE` range, as two's complement);
/// `Err(RunError::Exit(VcpuExit::Hypercall { .. }))` when the call exits to user space, which
/// completes it: the VMM's `hypercall.ret` is what the guest gets.
///
/// Only `KVM_HC_MAP_GPA_RANGE` (the guest's private/shared conversion request) is modelled:
/// `-KVM_ENOSYS` unless user space enabled its exit, `-KVM_EINVAL` if `gpa` is not page aligned,
/// `npages` is 0 or the range wraps, else the exit with `args = [gpa, npages, attrs]`. The
/// kernel's other hypercalls (kick, sched yield, clock pairing) are outside the model and
/// answer `-KVM_ENOSYS`, as an unknown number does.
#[doc(alias("____kvm_emulate_hypercall", "kvm_emulate_hypercall"))]
pub fn guest_hypercall(kvm: &Kvm, vcpu: &KvmVcpu, nr: u64, a0: u64, a1: u64, a2: u64) -> Result<u64, RunError> {
    let _ = vcpu;
    let neg = |code: u64| code.wrapping_neg();
    if nr != crate::caps::KVM_HC_MAP_GPA_RANGE {
        return Ok(neg(KVM_ENOSYS));
    }
    let (gpa, npages, attrs) = (a0, a1, a2);
    if !kvm.user_exit_on_hypercall(crate::caps::KVM_HC_MAP_GPA_RANGE) {
        return Ok(neg(KVM_ENOSYS));
    }
    let gfn = gpa >> PAGE_SHIFT;
    if gpa & (PAGE_SIZE - 1) != 0 || npages == 0 || gfn.wrapping_add(npages) <= gfn {
        return Ok(neg(KVM_EINVAL));
    }
    Err(RunError::Exit(VcpuExit::Hypercall {
        nr,
        args: [gpa, npages, attrs, 0, 0, 0],
        flags: KVM_EXIT_HYPERCALL_LONG_MODE,
    }))
}
