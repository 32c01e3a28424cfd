//! For the mirror-root models: a TDX-typed VM on a test back-end without a TDX module
//! ([`MirrorBackend`]: a mirror root, 4K private mappings, and external-SPT hooks that keep the
//! external page table's leaves and can answer `EBUSY` as the TDX module does under contention),
//! set up as a two-page private guest whose page tables are already linked ([`mirror_guest`]).

use super::GPA;
use gmem_kvm::arch::{tdx_gmem_max_mapping_level, ArchFactory, ArchSetup, KvmArch, PgLevel, PopulateSource, SpteLevel};
use gmem_kvm::guest_memfd::KvmGmem;
use gmem_kvm::invariants::{self, Violation, T5_MIRROR};
use gmem_kvm::memslot::KVM_MEM_GUEST_MEMFD;
use gmem_kvm::tdp_mmu::TdpMmu;
use gmem_kvm::vcpu::{guest_access, KvmVcpu};
use gmem_kvm::{Gfn, KernelProfile, Kvm, KvmSystem, VmType};
use gmem_mm::file::FileRef;
use gmem_mm::{Errno, KResult, Machine, MachineConfig, Pfn, PAGE_SIZE};
use gmem_sync::Arc;
use gmem_uapi::{kvm_create_guest_memfd, kvm_memory_attributes, kvm_userspace_memory_region2, SimHost};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// The shared bit of a TD with GPAW 48, as a gfn bit (`kvm_gfn_direct_bits`).
pub const SHARED: u64 = 1 << 35;
/// The gfn the models race on (the memslot's first page, at [`GPA`]).
pub const GFN: Gfn = Gfn(GPA / PAGE_SIZE);
/// `KVM_MEMORY_ATTRIBUTE_PRIVATE`.
const PRIVATE: u64 = 1 << 3;

/// The external page table as the test back-end keeps it, and what it was told to do. Plain std
/// types: bookkeeping of hooks that run under `mmu_lock`, never held across a loom operation.
#[derive(Debug, Default)]
pub struct External {
    /// The leaves of the external page table: gfn → frame (`TDH.MEM.PAGE.AUG` adds one,
    /// `TDH.MEM.PAGE.REMOVE` takes it away).
    pub leaves: Mutex<BTreeMap<u64, Pfn>>,
    /// How many of the next `set_external_spte` calls answer `EBUSY` (the TDX module's
    /// `TDX_OPERAND_BUSY`: no state change).
    pub busy: AtomicUsize,
    /// `set_external_spte` calls, and of those the ones answered `EBUSY`.
    pub sets: AtomicUsize,
    pub busy_returned: AtomicUsize,
    /// An `EBUSY` was answered and no fault started since (for [`arm_after_busy_check`]).
    pub busy_pending: AtomicBool,
    /// The faults that started after an `EBUSY` and found the SPTE not present and nothing
    /// FROZEN.
    pub retried_after_busy: AtomicUsize,
}

/// A TDX-like back-end without a TDX module: a mirror root, 4K private mappings (TDX's
/// `gmem_max_mapping_level`), and hooks that keep [`External`].
pub struct MirrorBackend {
    pub external: std::sync::Arc<External>,
}

impl std::fmt::Debug for MirrorBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MirrorBackend")
    }
}

impl KvmArch for MirrorBackend {
    fn name(&self) -> &'static str {
        "loom-mirror"
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn gmem_max_mapping_level(&self, _kvm: &Kvm, _pfn: Pfn, is_private: bool) -> Option<PgLevel> {
        tdx_gmem_max_mapping_level(is_private)
    }

    fn post_populate(
        &self,
        _kvm: &Kvm,
        _gfn: Gfn,
        _pfn: Pfn,
        _source: &PopulateSource<'_>,
        _order: u8,
        _opaque: &mut dyn std::any::Any,
    ) -> KResult<()> {
        Err(Errno::EINVAL)
    }

    fn has_mirror_root(&self) -> bool {
        true
    }

    fn link_external_spt(&self, _kvm: &Kvm, _gfn: Gfn, _level: SpteLevel, _external_spt: Pfn) -> KResult<()> {
        Ok(())
    }

    /// `TDH.MEM.PAGE.AUG`, called with the mirror SPTE FROZEN (asserted): `EBUSY` while told to,
    /// else the leaf is added; a leaf already there is the module's refusal and, as TDX does for
    /// any error but BUSY, `KVM_BUG_ON`.
    fn set_external_spte(&self, kvm: &Kvm, gfn: Gfn, level: PgLevel, pfn: Pfn) -> KResult<()> {
        let tdp = kvm.tdp_mmu().expect("the TDP MMU");
        assert!(
            tdp.mirror_frozen().iter().any(|frozen| frozen.gfn == gfn),
            "set_external_spte({gfn}) without the mirror SPTE FROZEN"
        );
        let external = &self.external;
        external.sets.fetch_add(1, Ordering::Relaxed);
        let busy = external.busy.load(Ordering::Relaxed);
        if busy > 0 {
            external.busy.store(busy - 1, Ordering::Relaxed);
            external.busy_returned.fetch_add(1, Ordering::Relaxed);
            external.busy_pending.store(true, Ordering::Relaxed);
            return Err(Errno::EBUSY);
        }
        let mut leaves = external.leaves.lock().unwrap();
        if let Some(old) = leaves.get(&gfn.0) {
            kvm.kvm_bug_on(true, || format!("TDH.MEM.PAGE.AUG({gfn}, {level}, {pfn:?}): {old:?} is mapped there"));
            return Err(Errno::EIO);
        }
        leaves.insert(gfn.0, pfn);
        Ok(())
    }

    /// `TDH.MEM.RANGE.BLOCK` .. `TDH.MEM.PAGE.REMOVE`: the leaf must be there, mapping `pfn`.
    fn remove_external_spte(&self, _kvm: &Kvm, gfn: Gfn, _level: PgLevel, pfn: Pfn) -> KResult<()> {
        match self.external.leaves.lock().unwrap().remove(&gfn.0) {
            Some(mapped) if mapped == pfn => Ok(()),
            _ => Err(Errno::EIO),
        }
    }

    fn free_external_spt(&self, _kvm: &Kvm, _gfn: Gfn, _level: SpteLevel, _external_spt: Pfn) -> KResult<()> {
        Ok(())
    }

    /// T5's external side: the mirror root's leaves and the external leaves are the same map.
    fn check_invariants(
        &self,
        kvm: &Kvm,
        _vms: &[&Arc<Kvm>],
        _gmem_files: &[(&FileRef, &KvmGmem)],
        out: &mut Vec<Violation>,
    ) {
        let Some(tdp) = kvm.tdp_mmu() else { return };
        let mirror: BTreeMap<u64, Pfn> = tdp.mirror_sptes().into_iter().map(|(gfn, spte)| (gfn.0, spte.pfn)).collect();
        let external = self.external.leaves.lock().unwrap().clone();
        if mirror != external {
            out.push(Violation {
                invariant: T5_MIRROR,
                detail: format!("mirror leaves {mirror:x?} but external leaves {external:x?}"),
            });
        }
    }
}

/// The vendor module: TDX VMs get a [`MirrorBackend`] sharing one [`External`].
#[derive(Debug)]
struct MirrorHost {
    external: std::sync::Arc<External>,
}

impl ArchFactory for MirrorHost {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn supports(&self, vm_type: VmType) -> bool {
        vm_type == VmType::Tdx
    }

    fn vm_init(&self, vm_type: VmType) -> KResult<Arc<dyn KvmArch>> {
        assert_eq!(vm_type, VmType::Tdx);
        Ok(Arc::new(MirrorBackend { external: self.external.clone() }))
    }
}

/// A TDX VM on `profile` with the shared bit set, a 2-page guest_memfd bound at [`GPA`], both
/// gfns PRIVATE, one vCPU (and a second one for the models that race two vCPUs), and the
/// neighbour gfn [`GFN`] + 1 faulted in, so that the mirror page tables down to the 4K table are
/// linked and a fault on [`GFN`] only sets its leaf.
pub struct MirrorGuest {
    pub host: SimHost,
    pub machine: Arc<Machine>,
    pub kvm: Arc<Kvm>,
    pub vcpu: Arc<KvmVcpu>,
    pub vcpu2: Arc<KvmVcpu>,
    pub vm_fd: i32,
    pub gmem_fd: i32,
    pub external: std::sync::Arc<External>,
}

/// Builds the guest (the set-up runs before the model's `explore()`).
pub fn mirror_guest(profile: KernelProfile) -> MirrorGuest {
    let profile = profile.with_vm_type_for_test(VmType::Tdx);
    let machine = Machine::new(MachineConfig { vfs: profile.vfs_version(), ..MachineConfig::tiny(32) });
    let external = std::sync::Arc::new(External::default());
    let shared = external.clone();
    let setup: ArchSetup =
        Arc::new(move |_, _| Arc::new(MirrorHost { external: shared.clone() }) as Arc<dyn ArchFactory>);
    let system = KvmSystem::builder(profile).machine(machine.clone()).arch(setup).build();
    let host = SimHost::with_system(system);
    let vm_fd = host.create_vm(VmType::Tdx as u64).expect("KVM_CREATE_VM (TDX)");
    let kvm = host.vm(vm_fd).expect("the VM fd");
    assert!(kvm.has_mirrored_tdp());
    // KVM_TDX_INIT_VM's part: the shared bit.
    kvm.set_gfn_direct_bits(SHARED);
    let size = 2 * PAGE_SIZE;
    let gmem_fd = host
        .create_guest_memfd(vm_fd, &kvm_create_guest_memfd { size, flags: 0, ..Default::default() })
        .expect("KVM_CREATE_GUEST_MEMFD");
    let region = kvm_userspace_memory_region2 {
        slot: 0,
        flags: KVM_MEM_GUEST_MEMFD,
        guest_phys_addr: GPA,
        memory_size: size,
        userspace_addr: 0x7f00_0000_0000,
        guest_memfd_offset: 0,
        guest_memfd: gmem_fd as u32,
        ..Default::default()
    };
    host.set_user_memory_region2(vm_fd, &region).expect("KVM_SET_USER_MEMORY_REGION2");
    let attrs = kvm_memory_attributes { address: GPA, size, attributes: PRIVATE, ..Default::default() };
    host.set_memory_attributes(vm_fd, &attrs).expect("KVM_SET_MEMORY_ATTRIBUTES");
    let vcpu_fd = host.create_vcpu(vm_fd, 0).expect("KVM_CREATE_VCPU");
    let (_, vcpu) = host.vcpu(vcpu_fd).expect("the vCPU fd");
    let vcpu2_fd = host.create_vcpu(vm_fd, 1).expect("KVM_CREATE_VCPU");
    let (_, vcpu2) = host.vcpu(vcpu2_fd).expect("the vCPU fd");
    let mut buf = [0u8; 1];
    guest_access(&kvm, &vcpu, &host.process().mm, GPA + PAGE_SIZE, &mut buf, false, None).expect("the neighbour");
    let guest = MirrorGuest { host, machine, kvm, vcpu, vcpu2, vm_fd, gmem_fd, external };
    assert_eq!(guest.tdp().mirror_tables().len(), 4, "the root, PDPT, PD and PT");
    assert_eq!(guest.tdp().mirror_sptes().len(), 1);
    assert!(guest.machine.warnings.is_empty(), "{:#?}", guest.machine.warnings.snapshot());
    guest
}

impl MirrorGuest {
    /// The VM's TDP MMU.
    pub fn tdp(&self) -> &TdpMmu {
        self.kvm.tdp_mmu().expect("TDP MMU")
    }

    /// The vCPU `index` (0 or 1) loads the page at [`GPA`] (a private access).
    pub fn load(&self, index: usize) -> Result<(), gmem_kvm::vcpu::RunError> {
        let vcpu = if index == 0 { &self.vcpu } else { &self.vcpu2 };
        let mut buf = [0u8; 1];
        guest_access(&self.kvm, vcpu, &self.host.process().mm, GPA, &mut buf, false, None)
    }

    /// `[GFN, GFN + 1)` converted to shared and back to private: the mirror leaf goes (the
    /// tables stay, guest_memfd keeps the page, the external leaf is removed).
    pub fn zap_by_conversion(&self) {
        for attributes in [0, PRIVATE] {
            let attrs = kvm_memory_attributes { address: GPA, size: PAGE_SIZE, attributes, ..Default::default() };
            self.host.set_memory_attributes(self.vm_fd, &attrs).expect("KVM_SET_MEMORY_ATTRIBUTES");
        }
    }

    /// No WARN was recorded, nothing is FROZEN, every invariant holds (T5 with the back-end's
    /// external leaves among them), and the threads have joined.
    pub fn assert_quiescent_state(&self) {
        let warnings: Vec<String> = self.machine.warnings.snapshot().iter().map(ToString::to_string).collect();
        assert!(warnings.is_empty(), "WARNs: {warnings:#?}");
        assert_eq!(self.tdp().mirror_frozen(), vec![], "a FROZEN SPTE survived");
        let file = self.host.guest_memfd(self.gmem_fd).expect("the guest_memfd");
        let violations = invariants::check(std::slice::from_ref(&self.kvm), &[file]);
        assert!(violations.is_empty(), "{violations:#?}");
    }
}

/// Arms the TDP MMU's fault hook (it runs in each fault between resolving the pfn and taking
/// `mmu_lock`, and re-arms itself): a fault that starts after the back-end answered `EBUSY`
/// asserts that the SPTE the BUSY install froze was restored to not present, and counts itself
/// in [`External::retried_after_busy`].
pub fn arm_after_busy_check(kvm: &Kvm, external: std::sync::Arc<External>) {
    kvm.tdp_mmu().expect("TDP MMU").set_fault_hook(move |kvm| {
        if external.busy_pending.swap(false, Ordering::Relaxed) {
            let tdp = kvm.tdp_mmu().expect("TDP MMU");
            assert_eq!(tdp.lookup_mirror(GFN), None, "a BUSY install left the SPTE present");
            assert_eq!(tdp.mirror_frozen(), vec![], "a BUSY install left the SPTE FROZEN");
            external.retried_after_busy.fetch_add(1, Ordering::Relaxed);
        }
        arm_after_busy_check(kvm, external.clone());
    });
}
