//! What the TLB models share: the loom builder, and a one-page private guest on the real code.

use gmem_kvm::invariants;
use gmem_kvm::memslot::KVM_MEM_GUEST_MEMFD;
use gmem_kvm::tdp_mmu::TdpMmu;
use gmem_kvm::tlb::KVM_REQ_TLB_FLUSH;
use gmem_kvm::vcpu::{guest_access, KvmVcpu};
use gmem_kvm::{KernelProfile, Kvm, KvmSystem, VmType};
use gmem_mm::{Machine, MachineConfig, PAGE_SIZE};
use gmem_sync::model::Builder;
use gmem_sync::Arc;
use gmem_uapi::{kvm_create_guest_memfd, kvm_memory_attributes, kvm_userspace_memory_region2, SimHost};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// The memslot's guest physical address (gfn 0x100) and host virtual address.
pub const GPA: u64 = 0x10_0000;
const HVA: u64 = 0x7f00_0000_0000;
/// `KVM_MEMORY_ATTRIBUTE_PRIVATE`.
const PRIVATE: u64 = 1 << 3;

/// Runs `f` under loom (preemption bound `LOOM_MAX_PREEMPTIONS`, default 2; set-up unexplored)
/// and prints how many executions it took and how long.
pub fn check(f: impl Fn() + Send + Sync + 'static) {
    let mut builder = Builder::new();
    let bound = std::env::var("LOOM_MAX_PREEMPTIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    builder.preemption_bound = Some(bound);
    if std::env::var("LOOM_MAX_BRANCHES").is_err() {
        builder.max_branches = 100_000;
    }
    builder.expect_explicit_explore = true;
    let executions = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    builder.check({
        let executions = Arc::clone(&executions);
        move || {
            executions.fetch_add(1, Ordering::Relaxed);
            f();
        }
    });
    eprintln!("explored {} executions in {:?}", executions.load(Ordering::Relaxed), start.elapsed());
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

/// Builds the guest; with `faulted_in`, the vCPU accessed the page once (SPTE and TLB filled).
pub fn guest(faulted_in: bool) -> Guest {
    let profile = KernelProfile::v6_18();
    let machine = Machine::new(MachineConfig { vfs: profile.vfs_version(), ..MachineConfig::tiny(8) });
    let system = KvmSystem::with_machine(machine.clone(), profile, TdpMmu::factory());
    let host = SimHost::with_system(system);
    let vm_fd = host.create_vm(VmType::SwProtected as u64).expect("KVM_CREATE_VM");
    let kvm = host.vm(vm_fd).expect("the VM fd");
    let gmem_fd = host
        .create_guest_memfd(vm_fd, &kvm_create_guest_memfd { size: PAGE_SIZE, flags: 0, ..Default::default() })
        .expect("KVM_CREATE_GUEST_MEMFD");
    let region = kvm_userspace_memory_region2 {
        slot: 0,
        flags: KVM_MEM_GUEST_MEMFD,
        guest_phys_addr: GPA,
        memory_size: PAGE_SIZE,
        userspace_addr: HVA,
        guest_memfd_offset: 0,
        guest_memfd: gmem_fd as u32,
        ..Default::default()
    };
    host.set_user_memory_region2(vm_fd, &region).expect("KVM_SET_USER_MEMORY_REGION2");
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
        self.kvm.mmu().as_tdp().expect("TDP MMU")
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
