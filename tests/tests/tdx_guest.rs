//! A TD's vCPUs in `KVM_RUN` (`arch/x86/kvm/vmx/tdx.c` v6.18: `tdx_vcpu_pre_run`,
//! `tdx_vcpu_run`) on a simulated Intel host: the entry checks, `TDH.VP.ENTER` at every guest
//! entry and the TD exit after it (so the TD epochs and the kicks see the vCPUs), and no entry
//! while `wait_for_sept_zap` keeps the vCPUs out. Every checked call is followed by the
//! invariants (T1–T6, T10 and the core ones) and a check that no WARN was recorded.

use gmem_arch::tdx::kvm::{kvm_tdx_init_mem_region, kvm_tdx_init_vm, TdxVm, TDX_TD_ATTR_SEPT_VE_DISABLE};
use gmem_arch::tdx::module::TdxModule;
use gmem_arch::tdx::status::SeamcallLeaf;
use gmem_kvm::attributes::KVM_MEMORY_ATTRIBUTE_PRIVATE;
use gmem_kvm::memslot::KVM_MEM_GUEST_MEMFD;
use gmem_kvm::vcpu::RunError;
use gmem_kvm::KernelProfile;
use gmem_mm::Errno;
use gmem_sync::atomic::Ordering;
use gmem_sync::inject::FaultPoint;
use gmem_sync::Arc;
use gmem_tests::*;
use kvm_bindings::kvm_cpuid_entry2;

const TDX_VM: u64 = VmType::Tdx as u64;
/// The shared bit of a TD with GPAW 48 (gpa bit 47).
const SHARED: u64 = 1 << 47;
/// Guest memory: one guest_memfd memslot of this size at gpa 0.
const MEMORY: u64 = 4 << 20;

/// The CPUID a VMM passes to INIT_VM: leaf 0x80000008 with GPAW 48.
fn cpuid() -> Vec<kvm_cpuid_entry2> {
    vec![kvm_cpuid_entry2 { function: 0x8000_0008, eax: 48 << 16, ..Default::default() }]
}

/// A TD on a checked Intel host: one memslot of [`MEMORY`] at gpa 0 backed by a guest_memfd
/// and anonymous shared memory, all of it PRIVATE, and vCPUs.
struct Td {
    host: CheckedHost,
    vm: i32,
    vcpus: Vec<i32>,
    /// The shared backing (the memslot's `userspace_addr`).
    uaddr: u64,
}

impl Td {
    /// The TD after INIT_VM with `attributes` and `nr_vcpus` vCPUs created (not initialised).
    fn created(attributes: u64, nr_vcpus: u64) -> Td {
        let host = CheckedHost::new_intel(KernelProfile::v6_18());
        let vm = host.create_vm(TDX_VM).unwrap();
        host.tdx_init_vm(vm, &kvm_tdx_init_vm { attributes, ..Default::default() }, &cpuid()).unwrap();
        let gmem = host.create_guest_memfd(vm, MEMORY, 0).unwrap();
        let uaddr = host.mmap_anonymous(MEMORY).unwrap();
        host.set_user_memory_region2(vm, &region(0, KVM_MEM_GUEST_MEMFD, 0, MEMORY, uaddr, gmem as u32, 0)).unwrap();
        host.set_memory_attributes(vm, &attrs(0, MEMORY, KVM_MEMORY_ATTRIBUTE_PRIVATE)).unwrap();
        let vcpus = (0..nr_vcpus).map(|id| host.create_vcpu(vm, id).unwrap()).collect();
        Td { host, vm, vcpus, uaddr }
    }

    /// Every vCPU initialised, the page at gpa 0 added to the image (measured), FINALIZE.
    fn finalized(attributes: u64, nr_vcpus: u64) -> Td {
        let td = Td::created(attributes, nr_vcpus);
        for &vcpu in &td.vcpus {
            td.host.tdx_init_vcpu(vcpu, 0).unwrap();
        }
        td.add_image_page();
        td.host.tdx_finalize_vm(td.vm).unwrap();
        td
    }

    /// INIT_MEM_REGION of one page at gpa 0 saying "kernel".
    fn add_image_page(&self) {
        let image = self.host.mmap_anonymous(PAGE).unwrap();
        self.host.store(image, b"kernel").unwrap();
        let mut region = kvm_tdx_init_mem_region { source_addr: image, gpa: 0, nr_pages: 1 };
        self.host.tdx_init_mem_region(self.vcpus[0], &mut region, 0).unwrap();
    }

    fn kvm(&self) -> Arc<gmem_kvm::Kvm> {
        self.host.kvm(self.vm)
    }

    fn module(&self) -> Arc<TdxModule> {
        self.host.unchecked().tdx_host().unwrap().module().clone()
    }

    fn tdx(&self) -> Arc<gmem_kvm::Kvm> {
        let kvm = self.kvm();
        assert!(TdxVm::of(&kvm).is_some());
        kvm
    }

    /// Makes `[gpa, gpa + size)` shared (the attributes only, as a conversion's first step).
    fn make_shared(&self, gpa: u64, size: u64) {
        self.host.set_memory_attributes(self.vm, &attrs(gpa, size, 0)).unwrap();
    }
}

fn vm_of(kvm: &gmem_kvm::Kvm) -> &TdxVm {
    TdxVm::of(kvm).expect("a TD")
}

#[test]
fn kvm_run_is_refused_before_init_vcpu_and_before_finalize() {
    let td = Td::created(TDX_TD_ATTR_SEPT_VE_DISABLE, 2);
    let (first, second) = (td.vcpus[0], td.vcpus[1]);
    td.make_shared(0x10000, PAGE);
    let einval = Err(RunError::Errno(Errno::EINVAL));
    // Neither initialised nor finalised.
    assert_eq!(td.host.guest_load(first, SHARED | 0x10000, 1, None), einval);
    td.host.tdx_init_vcpu(first, 0).unwrap();
    // Initialised, the TD not finalised yet.
    assert_eq!(td.host.guest_load(first, SHARED | 0x10000, 1, None), einval);
    td.add_image_page();
    td.host.tdx_finalize_vm(td.vm).unwrap();
    // Runnable: the initialised vCPU runs, the other is still refused (and cannot be
    // initialised any more: INIT_VCPU is refused once the TD is runnable).
    assert_eq!(td.host.guest_load(first, SHARED | 0x10000, 1, None), Ok(vec![0]));
    assert_eq!(td.host.guest_load(second, SHARED | 0x10000, 1, None), einval);
    assert_eq!(td.host.tdx_init_vcpu(second, 0).unwrap_err().errno, Errno::EINVAL);
    assert_eq!(td.module().executed(SeamcallLeaf::VpEnter), 2, "one entry to fault, one to load");
    td.host.check("end");
}

#[test]
fn every_guest_entry_is_a_tdh_vp_enter_and_the_td_exit_leaves_the_epoch() {
    let td = Td::finalized(TDX_TD_ATTR_SEPT_VE_DISABLE, 1);
    let vcpu = td.vcpus[0];
    let kvm = td.tdx();
    let vm = vm_of(&kvm);
    let module = td.module();
    let tdr = vm.tdr().unwrap();
    td.make_shared(0x20000, PAGE);
    td.host.store(td.uaddr + 0x20000, b"shared").unwrap();
    let enters = module.executed(SeamcallLeaf::VpEnter);
    assert_eq!(td.host.guest_load(vcpu, SHARED | 0x20000, 6, None).unwrap(), b"shared");
    // The load faulted once (an EPT violation on the shared alias): two entries.
    assert_eq!(module.executed(SeamcallLeaf::VpEnter), enters + 2);
    assert_eq!(vm.stats.vp_enters.load(Ordering::Relaxed), enters + 2);
    assert_eq!(module.vcpus_in_td(tdr), vec![], "the TD exit ends each entry");
    // The translation is cached now: one entry.
    assert_eq!(td.host.guest_load(vcpu, SHARED | 0x20000, 6, None).unwrap(), b"shared");
    assert_eq!(module.executed(SeamcallLeaf::VpEnter), enters + 3);
    // A TRACK now finds no vCPU in an older epoch.
    let epoch = module.td_epoch(tdr).unwrap();
    module.tdh_mem_track(tdr).unwrap();
    assert_eq!(module.td_epoch(tdr), Some(epoch + 1));
    td.host.check("end");
}

#[test]
fn a_vcpu_does_not_enter_while_wait_for_sept_zap_is_set() {
    let td = Td::finalized(TDX_TD_ATTR_SEPT_VE_DISABLE, 1);
    let vcpu = td.vcpus[0];
    let kvm = td.tdx();
    let vm = vm_of(&kvm);
    let module = td.module();
    td.make_shared(0x30000, PAGE);
    // A zap retry keeps the vCPUs out (the kick finds none inside).
    {
        let _mmu_lock = kvm.mmu_lock_write();
        vm.tdx_no_vcpus_enter_start(&kvm);
    }
    assert!(!vm.may_enter());
    let enters = module.executed(SeamcallLeaf::VpEnter);
    // The vCPU goes round vcpu_run's loop without entering; a signal ends KVM_RUN.
    td.host.machine().inject.arm(FaultPoint::SignalPending, 3, 1);
    let mut buf = [0u8; 1];
    let result = td.host.unchecked().guest_access(vcpu, SHARED | 0x30000, &mut buf, false, None);
    assert_eq!(result, Err(RunError::Errno(Errno::EINTR)));
    assert_eq!(module.executed(SeamcallLeaf::VpEnter), enters, "no TDH.VP.ENTER while the zap is retried");
    assert_eq!(vm.stats.entries_deferred.load(Ordering::Relaxed), 4);
    // The zapper lets the vCPUs in again while one is trying: its access completes.
    std::thread::scope(|scope| {
        scope.spawn(|| {
            gmem_sync::thread::wait_until(|| vm.stats.entries_deferred.load(Ordering::Relaxed) >= 8);
            let _mmu_lock = kvm.mmu_lock_write();
            vm.tdx_no_vcpus_enter_stop(&kvm);
        });
        let result = td.host.unchecked().guest_access(vcpu, SHARED | 0x30000, &mut buf, false, None);
        assert_eq!(result, Ok(()));
    });
    assert!(module.executed(SeamcallLeaf::VpEnter) > enters);
    assert!(vm.t6_breaches().is_empty());
    td.host.check("end");
}
