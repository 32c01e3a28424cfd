//! What the loom models share: the loom builder ([`check`]), per-model coverage counters
//! ([`Coverage`]), for the TLB models a one-page private guest on the real code ([`guest`]), and
//! for the SEV-SNP models a one-page SNP guest between LAUNCH_START and LAUNCH_FINISH
//! ([`snp_guest`]), and for the TDX models a launched one-page TD ([`td_guest`]).
//!
//! The mirror-root models also use [`mirror`] (a TDX-typed guest on a test back-end).

pub mod mirror;

use gmem_kvm::invariants;
use gmem_kvm::memslot::KVM_MEM_GUEST_MEMFD;
use gmem_kvm::tdp_mmu::TdpMmu;
use gmem_kvm::tlb::KVM_REQ_TLB_FLUSH;
use gmem_kvm::vcpu::{guest_access, KvmVcpu};
use gmem_kvm::vm::MmuFactory;
use gmem_kvm::{KernelProfile, Kvm, KvmSystem, VmType};
use gmem_mm::{Machine, MachineConfig, PAGE_SIZE};
use gmem_sync::Arc;
use gmem_uapi::{kvm_create_guest_memfd, kvm_memory_attributes, kvm_userspace_memory_region2, SimHost};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// The memslot's guest physical address (gfn 0x100) and host virtual address.
pub const GPA: u64 = 0x10_0000;
const HVA: u64 = 0x7f00_0000_0000;
/// `KVM_MEMORY_ATTRIBUTE_PRIVATE`.
const PRIVATE: u64 = 1 << 3;

/// Runs `f` under loom and prints how many executions it took and how long.
///
/// The preemption bound is `LOOM_MAX_PREEMPTIONS` (default 2). Every atomic access of the real
/// code is a branch, the unexplored set-up included, hence the raised `max_branches` (unless
/// `LOOM_MAX_BRANCHES` is set). The set-up is not explored: exploration starts at the model's
/// `explore()`, just before it spawns its threads. With `LOOM_LOG` set (an `EnvFilter`, e.g.
/// `loom::rt::execution=info,gmem_kvm=debug,gmem_mm=trace`, or `trace` with `LOOM_LOCATION=1`),
/// loom's thread switches and the kernel functions' span entries are logged; the end of the log is
/// the failing schedule.
pub fn check(f: impl Fn() + Send + Sync + 'static) {
    let mut builder = gmem_sync::model::builder();
    if std::env::var("LOOM_MAX_BRANCHES").is_err() {
        builder.max_branches = 100_000;
    }
    builder.expect_explicit_explore = true;
    let _log = std::env::var("LOOM_LOG").ok().map(|filter| {
        use tracing_subscriber::util::SubscriberInitExt;
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::ENTER)
            .with_test_writer()
            .without_time()
            .with_ansi(false)
            .finish()
            .set_default()
    });
    let executions = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        builder.check({
            let executions = Arc::clone(&executions);
            move || {
                executions.fetch_add(1, Ordering::Relaxed);
                f();
            }
        })
    }));
    let (executions, elapsed) = (executions.load(Ordering::Relaxed), start.elapsed());
    match result {
        Ok(()) => eprintln!("explored {executions} executions in {elapsed:?}"),
        Err(panic) => {
            eprintln!("failed in execution {executions} after {elapsed:?}");
            std::panic::resume_unwind(panic);
        }
    }
}

/// How many executions of a model reached each named outcome: bookkeeping outside the model
/// (plain std types, not loom objects), so that a model can show loom reached the interleavings
/// it is about and not only the easy ones.
#[derive(Debug, Default)]
pub struct Coverage {
    counts: std::sync::Mutex<BTreeMap<&'static str, usize>>,
}

impl Coverage {
    /// Records whether this execution reached `outcome`.
    pub fn record(&self, outcome: &'static str, reached: bool) {
        *self.counts.lock().unwrap().entry(outcome).or_default() += usize::from(reached);
    }

    /// Prints the counts and asserts that every outcome was reached in some execution.
    pub fn assert_all_reached(&self) {
        let counts = self.counts.lock().unwrap();
        eprintln!("executions per outcome: {counts:#?}");
        let missed: Vec<&str> = counts.iter().filter(|(_, &n)| n == 0).map(|(&outcome, _)| outcome).collect();
        assert!(!counts.is_empty() && missed.is_empty(), "no execution reached: {missed:?}");
    }
}

/// A SW_PROTECTED VM on v6.18 with the TDP MMU, a 1-page guest_memfd bound at [`GPA`], the gfn
/// PRIVATE, one vCPU.
pub struct Guest {
    pub host: SimHost,
    pub machine: Arc<Machine>,
    pub kvm: Arc<Kvm>,
    pub vcpu: Arc<KvmVcpu>,
    pub gmem_fd: i32,
}

/// A SW_PROTECTED VM on v6.18 on a tiny machine, with the MMU `mmu` makes and a 1-page
/// guest_memfd bound at [`GPA`] (memslot 0): what the models of one private page start from.
pub struct OnePageVm {
    pub host: SimHost,
    pub machine: Arc<Machine>,
    pub kvm: Arc<Kvm>,
    pub vm_fd: i32,
    pub gmem_fd: i32,
}

/// Builds a [`OnePageVm`].
pub fn one_page_vm(mmu: MmuFactory) -> OnePageVm {
    let profile = KernelProfile::v6_18();
    let machine = Machine::new(MachineConfig { vfs: profile.vfs_version(), ..MachineConfig::tiny(8) });
    let system = KvmSystem::with_machine(machine.clone(), profile, mmu);
    let host = SimHost::with_system(system);
    let vm_fd = host.create_vm(VmType::SwProtected as u64).expect("KVM_CREATE_VM");
    let kvm = host.vm(vm_fd).expect("the VM fd");
    let gmem_fd = bind_one_page(&host, vm_fd, HVA);
    OnePageVm { host, machine, kvm, vm_fd, gmem_fd }
}

/// Creates a 1-page guest_memfd on `vm_fd` and binds it at [`GPA`] as memslot 0, whose shared
/// side is at `uaddr`; returns it.
pub fn bind_one_page(host: &SimHost, vm_fd: i32, uaddr: u64) -> i32 {
    let gmem_fd = host
        .create_guest_memfd(vm_fd, &kvm_create_guest_memfd { size: PAGE_SIZE, flags: 0, ..Default::default() })
        .expect("KVM_CREATE_GUEST_MEMFD");
    let region = kvm_userspace_memory_region2 {
        slot: 0,
        flags: KVM_MEM_GUEST_MEMFD,
        guest_phys_addr: GPA,
        memory_size: PAGE_SIZE,
        userspace_addr: uaddr,
        guest_memfd_offset: 0,
        guest_memfd: gmem_fd as u32,
        ..Default::default()
    };
    host.set_user_memory_region2(vm_fd, &region).expect("KVM_SET_USER_MEMORY_REGION2");
    gmem_fd
}

/// Builds the guest; with `faulted_in`, the vCPU accessed the page once (SPTE and TLB filled).
pub fn guest(faulted_in: bool) -> Guest {
    let OnePageVm { host, machine, kvm, vm_fd, gmem_fd } = one_page_vm(TdpMmu::factory());
    host.set_memory_attributes(
        vm_fd,
        &kvm_memory_attributes { address: GPA, size: PAGE_SIZE, attributes: PRIVATE, ..Default::default() },
    )
    .expect("KVM_SET_MEMORY_ATTRIBUTES");
    let vcpu_fd = host.create_vcpu(vm_fd, 0).expect("KVM_CREATE_VCPU");
    let (_, vcpu) = host.vcpu(vcpu_fd).expect("the vCPU fd");
    if faulted_in {
        let mut buf = [0u8; 1];
        guest_access(&kvm, &vcpu, &host.process().mm, GPA, &mut buf, false, None).expect("first access");
        assert_eq!(vcpu.tlb().entries().len(), 1, "the TLB is filled");
    }
    assert!(machine.warnings.is_empty(), "{:#?}", machine.warnings.snapshot());
    Guest { host, machine, kvm, vcpu, gmem_fd }
}

impl Guest {
    /// The VM's TDP MMU.
    pub fn tdp(&self) -> &TdpMmu {
        self.kvm.tdp_mmu().expect("TDP MMU")
    }

    /// No SPTE, and no TLB entry of a vCPU without a flush pending, maps a freed frame (may run
    /// while the vCPU runs).
    pub fn assert_nothing_stale(&self, when: &str) {
        let mem = &self.machine.mem;
        for (gfn, spte) in self.tdp().sptes() {
            assert_eq!(spte.generation, mem.generation(spte.pfn), "{when}: stale translation: SPTE of gfn {gfn}");
        }
        let tlb = self.vcpu.tlb();
        if !tlb.test_request(KVM_REQ_TLB_FLUSH) {
            for (gfn, entry) in tlb.entries() {
                assert_eq!(
                    entry.generation,
                    mem.generation(entry.pfn),
                    "{when}: stale translation: TLB entry of gfn {gfn} with no flush pending"
                );
            }
        }
    }

    /// Every invariant holds and no WARN was recorded (the threads have joined).
    pub fn assert_quiescent_state(&self) {
        let warnings: Vec<String> = self.machine.warnings.snapshot().iter().map(ToString::to_string).collect();
        assert!(warnings.is_empty(), "WARNs: {warnings:#?}");
        let file = self.host.guest_memfd(self.gmem_fd).expect("the guest_memfd");
        let violations = invariants::check(std::slice::from_ref(&self.kvm), &[file]);
        assert!(violations.is_empty(), "{violations:#?}");
    }
}

/// The race both MMU models explore, from `explore()` on: T1 is the vCPU loading the page at
/// [`GPA`] (it must succeed), T2 punches that page out of the guest_memfd and then checks that
/// nothing translates to a freed frame (`after` names the moment in the failure message). Both
/// joined, exploring stops and the state at rest is checked.
pub fn race_load_against_punch(g: &Arc<Guest>, after: &'static str) {
    use gmem_mm::vfs::{FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE};
    use gmem_sync::model::{explore, stop_exploring};
    use gmem_sync::thread;

    explore();
    let vcpu = {
        let g = Arc::clone(g);
        thread::spawn(move || {
            let mut buf = [0u8; 1];
            guest_access(&g.kvm, &g.vcpu, &g.host.process().mm, GPA, &mut buf, false, None).expect("the load succeeds");
        })
    };
    let puncher = {
        let g = Arc::clone(g);
        thread::spawn(move || {
            g.host
                .fallocate(g.gmem_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, PAGE_SIZE as i64)
                .expect("punch hole");
            g.assert_nothing_stale(after);
        })
    };
    vcpu.join().unwrap();
    puncher.join().unwrap();
    stop_exploring();
    g.assert_quiescent_state();
}

/// An SEV-SNP VM on the x86 vendor module (the RMP checks every host write), launched up to
/// SNP_LAUNCH_START: a 1-page guest_memfd bound at [`GPA`], the gfn PRIVATE, one vCPU, `/dev/sev`
/// open, and one page of user memory holding the image to launch. The guest_memfd page is
/// allocated (`fallocate`, which with F6 only allocates: the frame is still the hypervisor's and
/// the folio not prepared), so its frame is known before the model runs; nothing is faulted in or
/// populated yet.
pub struct SnpGuest {
    pub host: SimHost,
    pub machine: Arc<Machine>,
    pub kvm: Arc<Kvm>,
    pub vm_fd: i32,
    pub vcpu_fd: i32,
    pub sev_fd: i32,
    pub gmem_fd: i32,
    /// The user address of the image page.
    pub image: u64,
}

/// Builds the SNP guest on `profile` (the set-up runs before the model's `explore()`).
pub fn snp_guest(profile: KernelProfile) -> SnpGuest {
    use kvm_bindings::{kvm_sev_init, kvm_sev_snp_launch_start};
    let machine = Machine::new(MachineConfig { vfs: profile.vfs_version(), ..MachineConfig::tiny(32) });
    let system = KvmSystem::builder(profile).machine(machine.clone()).arch(gmem_arch::X86Host::setup()).build();
    let host = SimHost::with_system(system);
    let vm_fd = host.create_vm(VmType::SevSnp as u64).expect("KVM_CREATE_VM");
    host.sev_init2(vm_fd, &kvm_sev_init::default()).expect("KVM_SEV_INIT2");
    let kvm = host.vm(vm_fd).expect("the VM fd");
    let image = host.process().mmap_anonymous(2 * PAGE_SIZE).expect("mmap");
    let gmem_fd = bind_one_page(&host, vm_fd, image + PAGE_SIZE);
    host.set_memory_attributes(
        vm_fd,
        &kvm_memory_attributes { address: GPA, size: PAGE_SIZE, attributes: PRIVATE, ..Default::default() },
    )
    .expect("KVM_SET_MEMORY_ATTRIBUTES");
    let vcpu_fd = host.create_vcpu(vm_fd, 0).expect("KVM_CREATE_VCPU");
    let sev_fd = host.open_dev_sev().expect("open /dev/sev");
    // The must-be-one policy bit and SMT allowed.
    let start = kvm_sev_snp_launch_start { policy: (1 << 17) | (1 << 16), ..Default::default() };
    host.snp_launch_start(vm_fd, sev_fd, &start).expect("KVM_SEV_SNP_LAUNCH_START");
    host.store(image, b"the guest kernel").expect("the image");
    host.fallocate(gmem_fd, gmem_mm::vfs::FALLOC_FL_KEEP_SIZE, 0, PAGE_SIZE as i64).expect("fallocate");
    let guest = SnpGuest { host, machine, kvm, vm_fd, vcpu_fd, sev_fd, gmem_fd, image };
    let entry = guest.rmp_entry().expect("the allocated page");
    assert!(!entry.assigned, "fallocate only allocates (F6): {entry:?}");
    assert!(guest.machine.warnings.is_empty(), "{:#?}", guest.machine.warnings.snapshot());
    guest
}

impl SnpGuest {
    /// `KVM_SEV_SNP_LAUNCH_UPDATE` of the page at [`GPA`] from the image (a NORMAL page).
    pub fn launch_update(&self) -> Result<(), gmem_uapi::SevError> {
        let mut update = kvm_bindings::kvm_sev_snp_launch_update {
            gfn_start: GPA / PAGE_SIZE,
            uaddr: self.image,
            len: PAGE_SIZE,
            type_: gmem_arch::sev::measure::SnpPageType::Normal as u8,
            ..Default::default()
        };
        self.host.snp_launch_update(self.vm_fd, self.sev_fd, &mut update)
    }

    /// `KVM_PRE_FAULT_MEMORY` of the page at [`GPA`]: the size left.
    pub fn pre_fault(&self) -> gmem_mm::KResult<u64> {
        self.host.pre_fault_memory(self.vcpu_fd, GPA, PAGE_SIZE)
    }

    /// The frame of the guest_memfd page (`None` if the page cache has none).
    pub fn gmem_pfn(&self) -> Option<gmem_mm::Pfn> {
        let file = self.host.guest_memfd(self.gmem_fd).expect("the guest_memfd");
        let folio = file.inode().mapping().get_folio(gmem_mm::types::PgOff(0))?;
        let pfn = folio.pfn();
        folio.put();
        Some(pfn)
    }

    /// The RMP entry of the guest_memfd page's frame (`None` if the page cache has none).
    pub fn rmp_entry(&self) -> Option<gmem_arch::sev::rmp::RmpEntry> {
        let vm = gmem_arch::sev::kvm::SvmVm::of(&self.kvm).expect("an SVM VM");
        vm.host().rmp().read(self.gmem_pfn()?)
    }

    /// INV-NO-HOST-WRITE-PRIVATE alone: no Oops was recorded (an RMP #PF on a host write is one).
    /// For runs that break another rule on purpose (a page prepared before LAUNCH_FINISH without
    /// F7's gate is S8's, by construction).
    pub fn assert_no_host_write_to_private(&self) {
        let oopses: Vec<String> = self
            .machine
            .warnings
            .snapshot()
            .iter()
            .filter(|w| w.kind == gmem_sync::warn::WarnKind::Oops)
            .map(ToString::to_string)
            .collect();
        assert!(oopses.is_empty(), "Oops: {oopses:#?}");
    }

    /// No WARN or Oops was recorded (an RMP #PF on a host write is an Oops: the host does not
    /// survive it) and every invariant holds (the threads have joined).
    pub fn assert_quiescent_state(&self) {
        let warnings: Vec<String> = self.machine.warnings.snapshot().iter().map(ToString::to_string).collect();
        assert!(warnings.is_empty(), "WARNs: {warnings:#?}");
        let file = self.host.guest_memfd(self.gmem_fd).expect("the guest_memfd");
        let violations = invariants::check(std::slice::from_ref(&self.kvm), &[file]);
        assert!(violations.is_empty(), "{violations:#?}");
    }
}

/// A launched TD on an Intel host (v6.18): INIT_VM (`SEPT_VE_DISABLE`, GPAW 48), a 1-page
/// guest_memfd bound at [`GPA`], the gfn PRIVATE, one vCPU after INIT_VCPU, FINALIZE (no image:
/// the TD is runnable and pre-faults are allowed), then the page at [`GPA`] pre-faulted
/// (`KVM_PRE_FAULT_MEMORY`: the mirror leaf, SEPT.ADD of the tables, PAGE.AUG) and accepted by
/// the guest (the module's `TDG.MEM.PAGE.ACCEPT`: MAPPED, zeroed). No guest access ran, so the
/// vCPU's TLB is empty and the vCPU is outside the TD.
pub struct TdGuest {
    pub host: SimHost,
    pub machine: Arc<Machine>,
    pub kvm: Arc<Kvm>,
    pub vcpu: Arc<KvmVcpu>,
    pub module: Arc<gmem_arch::tdx::module::TdxModule>,
    /// The TD's TDR page.
    pub tdr: gmem_mm::Pfn,
    pub vm_fd: i32,
    /// No model reads it yet (they drive `vcpu` directly); kept with the TD's other descriptors.
    #[allow(dead_code)]
    pub vcpu_fd: i32,
    pub gmem_fd: i32,
    /// The private page at [`GPA`].
    pub pfn: gmem_mm::Pfn,
    /// The TD epoch after the set-up.
    pub epoch: u64,
}

/// Builds the TD (the set-up runs before the model's `explore()`).
pub fn td_guest() -> TdGuest {
    use gmem_arch::tdx::kvm::{TdxVm, TDX_TD_ATTR_SEPT_VE_DISABLE};
    use gmem_arch::tdx::sept::{LeafState, SeptEntry};
    use gmem_uapi::kvm_tdx_init_vm;
    let profile = KernelProfile::v6_18();
    let machine = Machine::new(MachineConfig { vfs: profile.vfs_version(), ..MachineConfig::tiny(64) });
    let system = KvmSystem::builder(profile).machine(machine.clone()).arch(gmem_arch::X86Host::setup_intel()).build();
    let host = SimHost::with_system(system);
    let vm_fd = host.create_vm(VmType::Tdx as u64).expect("KVM_CREATE_VM");
    // CPUID leaf 0x80000008 with GPAW 48: the shared bit is gpa bit 47.
    let cpuid = [kvm_bindings::kvm_cpuid_entry2 { function: 0x8000_0008, eax: 48 << 16, ..Default::default() }];
    let init_vm = kvm_tdx_init_vm { attributes: TDX_TD_ATTR_SEPT_VE_DISABLE, ..Default::default() };
    host.tdx_init_vm(vm_fd, &init_vm, &cpuid).expect("KVM_TDX_INIT_VM");
    let kvm = host.vm(vm_fd).expect("the VM fd");
    let gmem_fd = bind_one_page(&host, vm_fd, HVA);
    host.set_memory_attributes(
        vm_fd,
        &kvm_memory_attributes { address: GPA, size: PAGE_SIZE, attributes: PRIVATE, ..Default::default() },
    )
    .expect("KVM_SET_MEMORY_ATTRIBUTES");
    let vcpu_fd = host.create_vcpu(vm_fd, 0).expect("KVM_CREATE_VCPU");
    let (_, vcpu) = host.vcpu(vcpu_fd).expect("the vCPU fd");
    host.tdx_init_vcpu(vcpu_fd, 0).expect("KVM_TDX_INIT_VCPU");
    host.tdx_finalize_vm(vm_fd).expect("KVM_TDX_FINALIZE_VM");
    assert_eq!(host.pre_fault_memory(vcpu_fd, GPA, PAGE_SIZE), Ok(0), "KVM_PRE_FAULT_MEMORY");
    let module = host.tdx_host().expect("an Intel host with TDX").module().clone();
    let tdr = TdxVm::of(&kvm).and_then(TdxVm::tdr).expect("the TDR");
    let accepted = module.tdg_mem_page_accept(tdr, GPA, 0).expect("TDG.MEM.PAGE.ACCEPT");
    assert!(accepted.is_success(), "TDG.MEM.PAGE.ACCEPT: {accepted}");
    let pfn =
        kvm.tdp_mmu().expect("TDP MMU").lookup_mirror(gmem_kvm::Gfn(GPA / PAGE_SIZE)).expect("the mirror leaf").pfn;
    let leaf = module.sept_entry(tdr, GPA, 0).expect("the TD").expect("the S-EPT walk");
    assert_eq!(leaf, SeptEntry::Leaf { pfn, state: LeafState::Mapped });
    assert!(vcpu.tlb().entries().is_empty(), "no guest access ran");
    let epoch = module.td_epoch(tdr).expect("the TD");
    let guest = TdGuest { host, machine, kvm, vcpu, module, tdr, vm_fd, vcpu_fd, gmem_fd, pfn, epoch };
    guest.assert_quiescent_state();
    guest
}

impl TdGuest {
    /// No WARN, KVM_BUG_ON or use-after-free was recorded, the VM is alive and every invariant
    /// holds (the core ones and TDX's T1–T6, T10; the threads have joined).
    pub fn assert_quiescent_state(&self) {
        let warnings: Vec<String> = self.machine.warnings.snapshot().iter().map(ToString::to_string).collect();
        assert!(warnings.is_empty(), "WARNs: {warnings:#?}");
        assert!(!self.kvm.is_dead(), "the VM is dead");
        let file = self.host.guest_memfd(self.gmem_fd).expect("the guest_memfd");
        let violations = invariants::check(std::slice::from_ref(&self.kvm), &[file]);
        assert!(violations.is_empty(), "{violations:#?}");
    }
}
