//! `struct kvm` and `/dev/kvm`: VM creation, the VM's locks and lifetime (`virt/kvm/kvm_main.c`,
//! `arch/x86/kvm/x86.c`).
//!
//! The VM's lifetime is its `users_count` (`kvm_get_kvm` / `kvm_put_kvm`): the VM file holds one
//! reference and every guest_memfd holds one, so a guest_memfd keeps its VM alive after the VM fd
//! is closed (measured: fallocate on the gmem still works). When the count reaches zero the VM is
//! destroyed then and there (`kvm_destroy_vm`: memslots freed, which unbinds guest_memfd slots).
//! The Rust `Arc` only owns the memory.

use crate::arch::{ArchFactory, ArchSetup, GenericArchFactory, KvmArch, PgLevel};
use crate::memslot::{KvmMemorySlot, Memslots};
use crate::mmu::{KvmMmu, RecordingMmu};
use crate::profile::{KernelProfile, VmType};
use crate::tdp_mmu::TdpMmu;
use crate::vcpu::KvmVcpu;
use gmem_mm::mmu_notifier::MmuNotifierHandle;
use gmem_mm::slab::Slab;
use gmem_mm::vma::Mm;
use gmem_mm::xarray::XArray;
use gmem_mm::{Errno, KResult, Machine};
use gmem_sync::atomic::{AtomicBool, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, Ordering};
use gmem_sync::freed::{Quarantine, TestSwitch};
use gmem_sync::srcu::SrcuReadGuard;
use gmem_sync::{
    lockdep_assert_held, Arc, LockClass, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard, Srcu,
};
use std::fmt;

/// `kvm->lock`.
pub static KVM_LOCK: LockClass = LockClass::new("kvm->lock");
/// `kvm->slots_lock`.
pub static SLOTS_LOCK: LockClass = LockClass::new("kvm->slots_lock");
/// `kvm->slots_arch_lock`.
pub static SLOTS_ARCH_LOCK: LockClass = LockClass::new("kvm->slots_arch_lock");
/// `kvm->mmu_lock` (an rwlock on x86 with the TDP MMU: `KVM_MMU_LOCK` takes it for write).
pub static MMU_LOCK: LockClass = LockClass::new("kvm->mmu_lock");
/// `kvm->mn_invalidate_lock` (a spinlock).
pub static MN_INVALIDATE_LOCK: LockClass = LockClass::new("kvm->mn_invalidate_lock");
/// The model's slot for `kvm->mmu_notifier` (set once at creation, taken at destruction).
static MMU_NOTIFIER_LOCK: LockClass = LockClass::new("kvm->mmu_notifier");

/// How many freed memslot generations a VM keeps in quarantine (checked builds): a reader
/// that is still inside a generation this many updates later is reported as well; beyond
/// that the memory is really freed, so a VM with memslot churn does not grow without bound.
const MEMSLOTS_QUARANTINE: usize = 64;
/// `kvm->vcpu_array` (its xa_lock; written under `kvm->lock`).
pub static VCPU_ARRAY_LOCK: LockClass = LockClass::new("kvm->vcpu_array");

/// A VM's MMU: the software TDP MMU (`kvm->arch.tdp_mmu_enabled`), which runs guests, or
/// another [`KvmMmu`] (the recording MMU of tests), which only hears the requests. The kernel's
/// TDP MMU is no trait object either: code that walks page tables (the fault path, the
/// invariants, dumps) reaches it through [`Kvm::tdp_mmu`], without a downcast.
#[derive(Clone, Debug)]
pub enum VmMmu {
    /// The software TDP MMU.
    Tdp(Arc<TdpMmu>),
    /// An MMU without page tables.
    Other(Arc<dyn KvmMmu>),
}

/// Builds each new VM's MMU ([`TdpMmu::factory`], or [`RecordingMmu::factory`] for tests).
pub type MmuFactory = Arc<dyn Fn() -> VmMmu + Send + Sync>;

/// `/dev/kvm`: the module-level state of one booted kernel.
pub struct KvmSystem {
    machine: Arc<Machine>,
    profile: Arc<KernelProfile>,
    mmu_factory: MmuFactory,
    arch: Arc<dyn ArchFactory>,
}

impl fmt::Debug for KvmSystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvmSystem").field("profile", &self.profile.name).field("arch", &self.arch).finish()
    }
}

/// Boots a [`KvmSystem`]: the machine, its MMU and its vendor module, each replaceable (tests
/// use a recording MMU or a back-end of their own; `gmem-arch` supplies the SEV-SNP host).
#[must_use]
pub struct KvmSystemBuilder {
    profile: KernelProfile,
    machine: Option<Arc<Machine>>,
    mmu_factory: Option<MmuFactory>,
    arch_setup: Option<ArchSetup>,
}

impl fmt::Debug for KvmSystemBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvmSystemBuilder").field("profile", &self.profile.name).finish_non_exhaustive()
    }
}

impl KvmSystemBuilder {
    /// Runs on an existing machine (default: a new one configured by the profile).
    pub fn machine(mut self, machine: Arc<Machine>) -> Self {
        self.machine = Some(machine);
        self
    }

    /// Gives every VM an MMU from `factory` (default: the software TDP MMU).
    pub fn mmu(mut self, factory: MmuFactory) -> Self {
        self.mmu_factory = Some(factory);
        self
    }

    /// Loads the vendor module `setup` builds on the booted machine (default:
    /// [`GenericArchFactory`], no vendor hardware).
    pub fn arch(mut self, setup: ArchSetup) -> Self {
        self.arch_setup = Some(setup);
        self
    }

    /// Boots. The VM types the kernel reports (`KVM_CAP_VM_TYPES`) are those the profile lists
    /// and the vendor module supports (`kvm_caps.supported_vm_types`).
    pub fn build(self) -> Arc<KvmSystem> {
        let mut profile = self.profile;
        let machine = self.machine.unwrap_or_else(|| Machine::new(profile.machine_config()));
        let setup = self.arch_setup.unwrap_or_else(GenericArchFactory::setup);
        let arch = setup(&machine, &profile);
        for vm_type in VmType::ALL {
            if !arch.supports(vm_type) {
                profile.config.vm_types &= !(1 << vm_type as u32);
            }
        }
        let mmu_factory = self.mmu_factory.unwrap_or_else(crate::tdp_mmu::TdpMmu::factory);
        Arc::new(KvmSystem { machine, profile: Arc::new(profile), mmu_factory, arch })
    }
}

impl KvmSystem {
    /// A builder for a kernel booted with `profile`.
    pub fn builder(profile: KernelProfile) -> KvmSystemBuilder {
        KvmSystemBuilder { profile, machine: None, mmu_factory: None, arch_setup: None }
    }

    /// Boots a machine configured by `profile` with KVM loaded; every VM gets the software TDP
    /// MMU and the vendor-less back-ends ([`GenericArchFactory`]).
    pub fn new(profile: KernelProfile) -> Arc<KvmSystem> {
        KvmSystem::builder(profile).build()
    }

    /// Like [`KvmSystem::new`], with MMUs that only record what they are asked (no page tables,
    /// so no guest can run).
    pub fn new_recording(profile: KernelProfile) -> Arc<KvmSystem> {
        KvmSystem::builder(profile).mmu(RecordingMmu::factory(true)).build()
    }

    /// KVM on an existing machine, with a chosen MMU.
    pub fn with_machine(machine: Arc<Machine>, profile: KernelProfile, mmu_factory: MmuFactory) -> Arc<KvmSystem> {
        KvmSystem::builder(profile).machine(machine).mmu(mmu_factory).build()
    }

    /// The vendor module.
    pub fn arch(&self) -> &Arc<dyn ArchFactory> {
        &self.arch
    }

    /// The machine.
    pub fn machine(&self) -> &Arc<Machine> {
        &self.machine
    }

    /// The kernel profile.
    pub fn profile(&self) -> &Arc<KernelProfile> {
        &self.profile
    }

    /// `kvm_create_vm` on behalf of the process whose address space is `mm` (`current->mm`):
    /// like [`KvmSystem::create_vm`], and `kvm_init_mmu_notifier` subscribes the VM to `mm`'s
    /// invalidations until it is destroyed.
    pub fn create_vm_in(&self, vm_type: u64, mm: &Mm) -> KResult<Arc<Kvm>> {
        let kvm = self.create_vm(vm_type)?;
        crate::mmu_notifier::kvm_init_mmu_notifier(&kvm, mm);
        Ok(kvm)
    }

    /// `kvm_create_vm` → `kvm_arch_init_vm`: EINVAL for a type the kernel does not support. The
    /// VM has no owner address space, so no MMU notifier (see [`KvmSystem::create_vm_in`]).
    #[doc(alias("kvm_arch_init_vm", "kvm_create_vm"))]
    pub fn create_vm(&self, vm_type: u64) -> KResult<Arc<Kvm>> {
        let _span = tracing::debug_span!("kvm_create_vm", vm_type).entered();
        // kvm_is_vm_type_supported: type < 32 && supported_vm_types & BIT(type).
        let vm_type = VmType::from_raw(vm_type).filter(|&t| self.profile.supports_vm_type(t)).ok_or(Errno::EINVAL)?;
        let arch = self.arch.vm_init(vm_type)?;
        let (mmu, tdp_mmu): (Arc<dyn KvmMmu>, _) = match (self.mmu_factory)() {
            VmMmu::Tdp(tdp) => (tdp.clone(), Some(tdp)),
            VmMmu::Other(mmu) => (mmu, None),
        };
        Ok(Arc::new(Kvm {
            machine: self.machine.clone(),
            profile: self.profile.clone(),
            vm_type,
            users_count: AtomicI64::new(1),
            lock: Mutex::new(&KVM_LOCK, ()),
            slots_lock: Mutex::new(&SLOTS_LOCK, ()),
            slots_arch_lock: Mutex::new(&SLOTS_ARCH_LOCK, ()),
            srcu: Srcu::new("kvm->srcu"),
            memslots: AtomicPtr::new(Box::into_raw(Box::new(Memslots::empty(0)))),
            retired_memslots: Quarantine::new(MEMSLOTS_QUARANTINE),
            memslot_weakening: TestSwitch::new(),
            gmem_weakening: TestSwitch::new(),
            slot_slab: Slab::new("kvm_memory_slot"),
            nr_memslot_pages: AtomicU64::new(0),
            n_max_mmu_pages: AtomicU64::new(0),
            mem_attr_array: XArray::new(),
            mmu_lock: RwLock::new(&MMU_LOCK, ()),
            mmu_invalidate: MmuInvalidate::default(),
            mmu,
            tdp_mmu,
            guest_access_checks: arch.checks_guest_accesses(),
            mirrored_tdp: arch.has_mirror_root(),
            gfn_direct_bits: AtomicU64::new(0),
            // kvm_arch_init_vm: only VMs whose memory needs no launch may be pre-faulted from
            // the start; SNP sets it at LAUNCH_FINISH, TDX at FINALIZE_VM.
            pre_fault_allowed: AtomicBool::new(arch.init_pre_fault_allowed(vm_type)),
            arch,
            created_vcpus: AtomicU32::new(0),
            vcpu_array: Mutex::new(&VCPU_ARRAY_LOCK, Vec::new()),
            destroyed: AtomicBool::new(false),
            vm_dead: AtomicBool::new(false),
            mn_invalidate_lock: Mutex::new(&MN_INVALIDATE_LOCK, ()),
            mn_active_invalidate_count: AtomicU64::new(0),
            mmu_notifier: Mutex::new(&MMU_NOTIFIER_LOCK, None),
            test_hooks: HugeTestHooks::default(),
            hypercall_exit_enabled: AtomicU64::new(0),
        }))
    }
}

/// The `mmu_invalidate_*` fields of `struct kvm`.
#[derive(Debug, Default)]
pub(crate) struct MmuInvalidate {
    pub(crate) seq: AtomicU64,
    pub(crate) in_progress: AtomicI64,
    pub(crate) range_start: AtomicU64,
    pub(crate) range_end: AtomicU64,
}

/// Test-only overrides of what the huge-page decisions read from outside KVM (see
/// [`Kvm::set_host_mapping_order_for_test`] and its siblings). `u8::MAX` is "no override".
#[derive(Debug)]
pub(crate) struct HugeTestHooks {
    pub(crate) host_mapping_order: AtomicU8,
    pub(crate) gmem_max_order: AtomicU8,
}

impl Default for HugeTestHooks {
    fn default() -> Self {
        HugeTestHooks { host_mapping_order: AtomicU8::new(u8::MAX), gmem_max_order: AtomicU8::new(u8::MAX) }
    }
}

/// `struct kvm`.
pub struct Kvm {
    machine: Arc<Machine>,
    profile: Arc<KernelProfile>,
    vm_type: VmType,
    users_count: AtomicI64,
    /// `kvm->lock`.
    pub lock: Mutex<()>,
    /// `kvm->slots_lock`: serialises memslot and attribute updates and guest_memfd release.
    pub slots_lock: Mutex<()>,
    /// `kvm->slots_arch_lock`.
    pub(crate) slots_arch_lock: Mutex<()>,
    /// `kvm->srcu`: protects the active memslot generation.
    pub srcu: Srcu,
    /// `kvm->memslots[0]`: the active generation, published with Release and read under SRCU.
    pub(crate) memslots: AtomicPtr<Memslots>,
    /// Freed generations, held back in checked builds so that a stale reader is reported
    /// (`gmem_sync::freed`).
    pub(crate) retired_memslots: Quarantine<Memslots>,
    /// Test-only: a [`crate::memslot::MemslotWeakening`].
    pub(crate) memslot_weakening: TestSwitch,
    /// Test-only: a [`crate::guest_memfd::GmemWeakening`].
    pub(crate) gmem_weakening: TestSwitch,
    /// Storage for `struct kvm_memory_slot` (stale pointers are detected, not dereferenced).
    pub(crate) slot_slab: Slab<KvmMemorySlot>,
    pub(crate) nr_memslot_pages: AtomicU64,
    /// `kvm->arch.n_max_mmu_pages`: the shadow MMU's page budget. 0 until the first memslot is
    /// created or deleted (`kvm_arch_commit_memory_region` sizes it then), so a shadow-paging
    /// vCPU cannot load a root before that (`make_mmu_pages_available`: ENOSPC).
    pub(crate) n_max_mmu_pages: AtomicU64,
    /// `kvm->mem_attr_array`.
    pub(crate) mem_attr_array: XArray<u64>,
    /// `kvm->mmu_lock`.
    pub mmu_lock: RwLock<()>,
    pub(crate) mmu_invalidate: MmuInvalidate,
    mmu: Arc<dyn KvmMmu>,
    /// `mmu` when it is the TDP MMU.
    tdp_mmu: Option<Arc<TdpMmu>>,
    arch: Arc<dyn KvmArch>,
    /// `arch.checks_guest_accesses()`, read once: the guest-access hot path asks it.
    guest_access_checks: bool,
    /// `kvm_has_mirrored_tdp(kvm)`: `arch.has_mirror_root()`, read once.
    mirrored_tdp: bool,
    /// `kvm->arch.gfn_direct_bits`: the gfn bits of the direct root's alias of guest memory (TDX:
    /// the shared bit), set by the vendor when the VM is initialised; 0 without a mirror root.
    gfn_direct_bits: AtomicU64,
    /// `kvm->arch.pre_fault_allowed`: `KVM_PRE_FAULT_MEMORY` is refused (EOPNOTSUPP) until set.
    pre_fault_allowed: AtomicBool,
    /// `kvm->created_vcpus` (under `kvm->lock`).
    pub(crate) created_vcpus: AtomicU32,
    /// `kvm->vcpu_array`, indexed by `vcpu_idx` (`online_vcpus` is its length).
    pub(crate) vcpu_array: Mutex<Vec<Arc<KvmVcpu>>>,
    destroyed: AtomicBool,
    /// `kvm->vm_dead` (set with `vm_bugged` by `KVM_BUG_ON`): every later VM and vCPU ioctl is
    /// EIO.
    vm_dead: AtomicBool,
    /// `kvm->mn_invalidate_lock`, protecting `mn_active_invalidate_count`.
    pub(crate) mn_invalidate_lock: Mutex<()>,
    /// `kvm->mn_active_invalidate_count`: MMU-notifier invalidations between start and end;
    /// memslot updates wait for zero before publishing.
    pub(crate) mn_active_invalidate_count: AtomicU64,
    /// `kvm->mmu_notifier` as registered on `kvm->mm` (none for a VM without an owner).
    pub(crate) mmu_notifier: Mutex<Option<MmuNotifierHandle>>,
    pub(crate) test_hooks: HugeTestHooks,
    /// `kvm->arch.hypercall_exit_enabled`: the hypercalls (a bit per number) that exit to
    /// user space, set by `KVM_ENABLE_CAP(KVM_CAP_EXIT_HYPERCALL)`.
    pub(crate) hypercall_exit_enabled: AtomicU64,
}

impl fmt::Debug for Kvm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kvm")
            .field("vm_type", &self.vm_type)
            .field("users_count", &self.users_count.load(Ordering::Relaxed))
            .field("profile", &self.profile.name)
            .finish()
    }
}

impl Kvm {
    /// The machine.
    pub fn machine(&self) -> &Arc<Machine> {
        &self.machine
    }

    /// The kernel profile.
    pub fn profile(&self) -> &KernelProfile {
        &self.profile
    }

    /// `kvm->arch.vm_type`.
    pub fn vm_type(&self) -> VmType {
        self.vm_type
    }

    /// `kvm_arch_has_private_mem`.
    #[doc(alias = "kvm_arch_has_private_mem")]
    pub fn has_private_mem(&self) -> bool {
        self.vm_type.has_private_mem()
    }

    /// The MMU, as the rest of KVM calls it (zaps, flushes, teardown).
    pub fn mmu(&self) -> &Arc<dyn KvmMmu> {
        &self.mmu
    }

    /// The software TDP MMU, unless the VM was built with another MMU (which cannot run a
    /// guest).
    pub fn tdp_mmu(&self) -> Option<&TdpMmu> {
        self.tdp_mmu.as_deref()
    }

    /// The arch back-end.
    pub fn arch(&self) -> &Arc<dyn KvmArch> {
        &self.arch
    }

    /// Whether the back-end checks guest accesses ([`KvmArch::checks_guest_accesses`]).
    #[inline]
    pub fn arch_checks_guest_accesses(&self) -> bool {
        self.guest_access_checks
    }

    /// `kvm_has_mirrored_tdp(kvm)`: the TDP MMU has a mirror root (private faults) next to the
    /// direct root ([`KvmArch::has_mirror_root`]).
    #[inline]
    #[doc(alias = "kvm_has_mirrored_tdp")]
    pub fn has_mirrored_tdp(&self) -> bool {
        self.mirrored_tdp
    }

    /// `kvm_gfn_direct_bits(kvm)`: the gfn bits under which guest memory is mapped in the direct
    /// root (TDX: the shared bit, gfn bit 35 with GPAW 48); 0 for a VM without a mirror root.
    #[inline]
    #[doc(alias("kvm_gfn_direct_bits", "kvm_gfn_root_bits", "tdp_iter_refresh_sptep"))]
    pub fn gfn_direct_bits(&self) -> u64 {
        self.gfn_direct_bits.load(Ordering::Relaxed)
    }

    /// Sets `kvm->arch.gfn_direct_bits` (TDX's `KVM_TDX_INIT_VM`, from the TD's GPAW). WARNs,
    /// and changes nothing, on a VM without a mirror root, or once the direct root maps
    /// anything (the kernel sets the bits before any vCPU runs).
    pub fn set_gfn_direct_bits(&self, bits: u64) {
        let mapped = self.tdp_mmu().is_some_and(|tdp| !tdp.sptes().is_empty());
        if self.machine.warnings.warn_on_once(!self.mirrored_tdp || mapped, || {
            format!(
                "gfn_direct_bits {bits:#x} set on a {} VM {}",
                self.vm_type.name(),
                if mapped { "whose direct root maps gfns" } else { "without a mirror root" }
            )
        }) {
            return;
        }
        self.gfn_direct_bits.store(bits, Ordering::Relaxed);
    }

    /// `kvm_is_addr_direct(kvm, gpa)`: whether an access to `gpa` goes through the direct root
    /// (no direct bits configured, or the gpa has them; otherwise it is private and goes through
    /// the mirror root).
    #[inline]
    #[doc(alias = "kvm_is_addr_direct")]
    pub fn is_addr_direct(&self, gpa: u64) -> bool {
        let gpa_direct_bits = self.gfn_direct_bits() << gmem_mm::types::PAGE_SHIFT;
        gpa_direct_bits == 0 || gpa & gpa_direct_bits != 0
    }

    /// `kvm_is_gfn_alias(kvm, gfn)`: the gfn carries the direct bits (a shared alias of memory
    /// whose memslots and attributes are keyed by the gfn without them).
    #[inline]
    pub fn is_gfn_alias(&self, gfn: crate::types::Gfn) -> bool {
        gfn.0 & self.gfn_direct_bits() != 0
    }

    /// `kvm->arch.pre_fault_allowed`.
    pub fn pre_fault_allowed(&self) -> bool {
        self.pre_fault_allowed.load(Ordering::Acquire)
    }

    /// Sets `kvm->arch.pre_fault_allowed` (SNP's LAUNCH_FINISH, TDX's FINALIZE_VM).
    pub fn set_pre_fault_allowed(&self, allowed: bool) {
        self.pre_fault_allowed.store(allowed, Ordering::Release);
    }

    /// `kvm_get_kvm`.
    #[doc(alias = "kvm_get_kvm")]
    pub fn get_kvm(&self) {
        let old = self.users_count.fetch_add(1, Ordering::Relaxed);
        assert!(old > 0, "kvm_get_kvm on a destroyed VM");
    }

    /// `kvm_put_kvm`: the last reference destroys the VM.
    #[doc(alias = "kvm_put_kvm")]
    pub fn put_kvm(&self) {
        let old = self.users_count.fetch_sub(1, Ordering::AcqRel);
        assert!(old > 0, "kvm_put_kvm underflow");
        if old == 1 {
            self.destroy_vm();
        }
    }

    /// `refcount_read(&kvm->users_count)`.
    pub fn users_count(&self) -> i64 {
        self.users_count.load(Ordering::Acquire)
    }

    /// `KVM_BUG_ON(cond, kvm)` / `KVM_BUG(cond, kvm, fmt)` when `cond` holds: record the bug
    /// (kind `Bug`) and `kvm_vm_bugged`: the VM is dead, every later ioctl on it or its vCPUs is
    /// EIO. Returns `cond`.
    #[track_caller]
    pub fn kvm_bug_on(&self, cond: bool, detail: impl FnOnce() -> String) -> bool {
        if cond {
            self.machine.warnings.report(gmem_sync::warn::WarnKind::Bug, format!("KVM_BUG_ON: {}", detail()));
            self.vm_dead.store(true, Ordering::Release);
        }
        cond
    }

    /// `kvm_vm_dead(kvm)`: the VM is dead (`kvm->vm_dead`, `KVM_REQ_VM_DEAD` for every vCPU)
    /// without a WARN: every later VM and vCPU ioctl fails with EIO. TDX uses it for a guest
    /// that touched a page it never accepted.
    pub fn kvm_vm_dead(&self) {
        self.vm_dead.store(true, Ordering::Release);
    }

    /// `kvm->vm_dead`.
    pub fn is_dead(&self) -> bool {
        self.vm_dead.load(Ordering::Acquire)
    }

    /// Whether `kvm_destroy_vm` has run.
    pub fn is_destroyed(&self) -> bool {
        self.destroyed.load(Ordering::Acquire)
    }

    /// `kvm_destroy_vm`, the parts the model keeps: the vendor's `vm_pre_destroy`, the MMU
    /// notifier's release (the direct root), `kvm_arch_destroy_vm` (the vCPUs,
    /// `kvm_mmu_uninit_vm`: every root, the mirror root included, then the vendor's
    /// `vm_destroy`), then every memslot
    /// (guest_memfd slots are unbound: no gmem file can still be alive, since each holds a VM
    /// reference) and the attributes.
    #[doc(alias = "kvm_destroy_vm")]
    fn destroy_vm(&self) {
        let _span = tracing::debug_span!("kvm_destroy_vm").entered();
        self.machine.warnings.warn_on(self.mmu_invalidate_in_progress() != 0, || {
            "kvm_destroy_vm with mmu_invalidate_in_progress".into()
        });
        // kvm_arch_pre_destroy_vm → kvm_x86_call(vm_pre_destroy).
        self.arch.vm_pre_destroy(self);
        let slots = self.memslots.swap(Box::into_raw(Box::new(Memslots::empty(0))), Ordering::AcqRel);
        // SAFETY: the generation was made by Box::into_raw; with users_count at zero nobody can
        // be inside an SRCU read section of this VM any more. It is freed below, after its slots.
        let slots = unsafe { Box::from_raw(slots) };
        // mmu_notifier_unregister: its release (kvm_mmu_notifier_release) drops every mapping,
        // unless the owner's exit already did; a VM without a notifier flushes directly.
        let notifier = self.mmu_notifier.lock().take();
        match notifier {
            Some(handle) => handle.unregister(),
            None => self.mmu.flush_shadow_all(self),
        }
        // kvm_arch_destroy_vm (v6.16+): kvm_destroy_vcpus, then kvm_mmu_uninit_vm, and
        // kvm_x86_call(vm_destroy) last ("vCPUs must be destroyed before any VM state"; TDX
        // reclaims its TDR page there, after every other page of the TD).
        let vcpus = std::mem::take(&mut *self.vcpu_array.lock());
        for vcpu in &vcpus {
            self.arch.vcpu_free(self, vcpu);
            // kvm_mmu_destroy → mmu_free_memory_caches.
            vcpu.free_mmu_caches(self);
        }
        drop(vcpus);
        // kvm_mmu_uninit_vm → kvm_mmu_uninit_tdp_mmu: every root, the mirror root included, is
        // torn down (the MMU notifier's release above only zapped the direct root).
        self.mmu.uninit_vm(self);
        self.arch.vm_destroy(self);
        for entry in slots.iter() {
            self.free_memslot(entry.handle);
        }
        // SAFETY: unpublished above (swapped out of `kvm->memslots`), made by Box::into_raw,
        // freed only here.
        unsafe { self.free_memslots(Box::into_raw(slots)) };
        self.mem_attr_array.destroy();
        self.destroyed.store(true, Ordering::Release);
    }

    /// `KVM_MMU_LOCK(kvm)`: `mmu_lock` for write.
    #[track_caller]
    pub fn mmu_lock_write(&self) -> RwLockWriteGuard<'_, ()> {
        self.mmu_lock.write()
    }

    /// `read_lock(&kvm->mmu_lock)` (the TDP MMU's fault path).
    #[track_caller]
    pub fn mmu_lock_read(&self) -> RwLockReadGuard<'_, ()> {
        self.mmu_lock.read()
    }

    /// `lockdep_assert_held(&kvm->mmu_lock)` (held in either mode).
    #[track_caller]
    pub fn assert_mmu_lock_held(&self) {
        lockdep_assert_held(&MMU_LOCK);
    }

    /// `mutex_lock(&kvm->slots_lock)`.
    #[track_caller]
    pub fn lock_slots(&self) -> MutexGuard<'_, ()> {
        self.slots_lock.lock()
    }

    /// `kvm->mn_active_invalidate_count`.
    pub fn mn_active_invalidate_count(&self) -> u64 {
        self.mn_active_invalidate_count.load(Ordering::Acquire)
    }

    /// Whether the VM is subscribed to its owner's MMU notifier (process exit unhooks it).
    pub fn has_mmu_notifier(&self) -> bool {
        self.mmu_notifier.lock().as_ref().is_some_and(|handle| handle.is_registered())
    }

    /// Test-only: the host mapping order KVM sees for every hva of this VM's shared memory,
    /// instead of [`Mm::host_mapping_order`] (`None` restores it). Only meaningful over host
    /// memory whose frames really are contiguous and aligned (until the host maps THPs itself).
    #[doc(hidden)]
    pub fn set_host_mapping_order_for_test(&self, order: Option<u8>) {
        self.test_hooks.host_mapping_order.store(order.unwrap_or(u8::MAX), Ordering::Relaxed);
    }

    /// Test-only: the `max_order` guest_memfd reports to faults (the modelled kernels always
    /// report 0: order-0 folios), to reach the arch hook of `kvm_max_private_mapping_level`.
    #[doc(hidden)]
    pub fn set_gmem_max_order_for_test(&self, order: Option<u8>) {
        self.test_hooks.gmem_max_order.store(order.unwrap_or(u8::MAX), Ordering::Relaxed);
    }

    /// `kvm_x86_call(gmem_max_mapping_level)(kvm, pfn, is_private)`: `None` is "no restriction".
    pub fn gmem_max_mapping_level(&self, pfn: gmem_mm::Pfn, is_private: bool) -> Option<PgLevel> {
        self.arch.gmem_max_mapping_level(self, pfn, is_private)
    }

    /// `srcu_read_lock(&kvm->srcu)`.
    pub fn srcu_read_lock(&self) -> SrcuReadGuard<'_> {
        self.srcu.read_lock()
    }
}

impl Drop for Kvm {
    fn drop(&mut self) {
        let slots = self.memslots.load(Ordering::Acquire);
        if !slots.is_null() {
            // SAFETY: made by Box::into_raw; `&mut self` means no reader is left.
            drop(unsafe { Box::from_raw(slots) });
        }
    }
}
