//! Loom model of upstream fix F16 ("KVM: TDX: Guard VM state transitions with "all" the locks",
//! v6.19): `KVM_TDX_INIT_VCPU` on vCPU 1 racing `KVM_TDX_INIT_MEM_REGION` on vCPU 0 of a TD
//! being built, running the real gmem-kvm / gmem-arch / gmem-mm code and the TDX module's locks.
//!
//! Kernel functions covered: `KVM_MEMORY_ENCRYPT_OP` on a vCPU → `kvm_vcpu_ioctl` (`vcpu->mutex`;
//! with F16 the unlocked path instead) → `tdx_vcpu_ioctl` (with F16: `kvm->lock`,
//! `kvm_lock_all_vcpus`, `slots_lock`, the TD-state checks under them) →
//! `tdx_vcpu_init_mem_region` (`slots_lock` in v6.18) → `kvm_gmem_populate` →
//! `tdx_gmem_post_populate` (`get_user_pages_fast` of the source, `kvm_tdp_map_page` into the
//! mirror root: three `TDH.MEM.SEPT.ADD` from `tdx_sept_link_private_spt`, the premap of the
//! leaf; `TDH.MEM.PAGE.ADD`; `TDH.MR.EXTEND` of each of the 16 chunks); and `tdx_vcpu_init`
//! (the TDVPR and TDCX pages, `TDH.VP.CREATE`, `TDH.VP.ADDCX` for each TDCX page,
//! `TDH.VP.INIT`). In the TDX module (`gmem_arch::tdx::module`) every SEAMCALL takes its locks
//! with `try_*` and returns `TDX_OPERAND_BUSY` if one is held: the TDR lock shared for SEPT.ADD,
//! PAGE.ADD, MR.EXTEND, VP.ADDCX and VP.INIT, exclusive for VP.CREATE. Those locks are
//! `gmem_sync::RwLock`s, loom's under `gmem_loom`: every try is a point loom can switch threads at,
//! and a SEAMCALL holds its locks across the loom accesses of its body.
//!
//! Set-up (unexplored): a tiny Intel machine (`X86Host::setup_intel`: KVM's TDX and the TDX
//! module), a TD after `KVM_TDX_INIT_VM`, a one-page guest_memfd memslot at [`GPA`] whose gfn is
//! PRIVATE, vCPU 0 initialised (`KVM_TDX_INIT_VCPU`), vCPU 1 created, one page of image in user
//! memory (faulted in), and the two commands staged in user memory, each in its own slot (the
//! typed `SimHost` helpers share one staging area under a lock, which would serialise the ioctls
//! by itself). T1 runs `KVM_TDX_INIT_MEM_REGION` on vCPU 0 (one page, `MEASURE`); T2 runs
//! `KVM_TDX_INIT_VCPU` on vCPU 1. The main thread joins and checks.
//!
//! Checked in every interleaving: no WARN and no `KVM_BUG_ON` (the VM is alive), and every
//! invariant holds, the TDX ones included (T1 PAMT ownership, T10 MRTD a replay of its
//! records, T2, T3, T4, T5 mirror root ⇔ S-EPT with v6.18's premap count, T6). With F16
//! (`v6.18+F16`) also: both ioctls succeed; INIT_VCPU never runs inside INIT_MEM_REGION (the
//! TDP MMU's fault hook, between INIT_MEM_REGION's pfn and its first SEAMCALL, finds vCPU 1
//! either not started or initialised, never with a TDVPR and not initialised); no SEAMCALL met a
//! busy lock (each was issued exactly once: 3 SEPT.ADD, 1 PAGE.ADD, 16 MR.EXTEND, one VP.CREATE
//! for vCPU 1); the page is added (`nr_premapped` 0); and after the threads, FINALIZE succeeds
//! and MRTD is the value of the one measured page (PAGE.ADD and 16 MR.EXTEND records replayed
//! by hand). The model also asserts that loom reached both orders (`Coverage`).
//!
//! The negative control runs the same model on `v6.18` (F16 off: each ioctl holds only its own
//! vCPU's `vcpu->mutex`, plus `slots_lock` for INIT_MEM_REGION) and must fail with the
//! `KVM_BUG_ON` "SEAMCALL TDH_VP_CREATE failed: TDX_OPERAND_BUSY": loom finds T2's
//! `TDH.VP.CREATE` (TDR exclusive) running while T1's last `TDH.MR.EXTEND` holds the TDR lock
//! shared, the contention the fix's commit message names; it needs one preemption of T1 inside
//! the SEAMCALL. The failure message says how far INIT_MEM_REGION had got. Run on past the first
//! failure (measured once, not kept; stopped after more than 11,000 executions and ten minutes),
//! v6.18 also met the TDR lock the other way round, with the VM alive: T1's SEPT.ADD (BUSY,
//! retried by the fault), its PAGE.ADD (EBUSY to user space) or one of its MR.EXTENDs (EIO)
//! against T2's VP.CREATE.
//!
//! The TD is never torn down (the `Arc` is leaked, under 100 KB an execution): loom keeps each
//! thread's clock in a `u16`, and the TDX teardown's page clears (`tdx_clear_page` of about 20
//! TD pages, two loom accesses per byte in `PhysMem`) take the main thread past 65,535 accesses,
//! after which loom's causality checks report a false "Concurrent load and mut accesses".
//!
//! Results (release build, 2 cores, `--test-threads 1`, bound 2, with other builds running):
//! on `v6.18+F16`, 862 executions in ~11–20 s (215 with INIT_VCPU done before INIT_MEM_REGION's
//! fault, 647 with it not started yet); on `v6.18` the negative control fails in execution 680
//! (~4–8 s), INIT_MEM_REGION having issued 3 SEPT.ADD, 1 PAGE.ADD and 16 MR.EXTEND. About
//! 16–27 s for the file. (The counts move as the underlying code changes.)
//!
//! Run: `RUSTFLAGS="--cfg gmem_loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p gmem-models --release
//! --target-dir target/loom --test models loom_tdx_state_transitions::`.

use crate::common::{check, Coverage, GPA};
use gmem_arch::tdx::kvm::{
    kvm_tdx_cmd, kvm_tdx_init_mem_region, kvm_tdx_init_vm, TdState, TdxVcpu, TdxVm, KVM_TDX_INIT_MEM_REGION,
    KVM_TDX_INIT_VCPU, KVM_TDX_MEASURE_MEMORY_REGION, TDX_TD_ATTR_SEPT_VE_DISABLE,
};
use gmem_arch::tdx::measure::{Mrtd, MrtdRecord, MR_EXTEND_CHUNK};
use gmem_arch::tdx::module::TdxModule;
use gmem_arch::tdx::status::SeamcallLeaf;
use gmem_kvm::invariants;
use gmem_kvm::profile::Fix;
use gmem_kvm::vcpu::KvmVcpu;
use gmem_kvm::{KernelProfile, Kvm, KvmSystem, VmType};
use gmem_mm::{Machine, MachineConfig, PAGE_SIZE};
use gmem_sync::model::{explore, stop_exploring};
use gmem_sync::{thread, Arc};
use gmem_uapi::{kvm_memory_attributes, SimHost};
use kvm_bindings::kvm_cpuid_entry2;

/// `KVM_MEMORY_ATTRIBUTE_PRIVATE`.
const PRIVATE: u64 = 1 << 3;
/// What the image page starts with (the rest is zeros).
const IMAGE: &[u8] = b"the TD's firmware";

/// A TD after `KVM_TDX_INIT_VM` on an Intel host: vCPU 0 initialised, vCPU 1 created but not,
/// a one-page guest_memfd memslot at [`GPA`] (PRIVATE), the image page in user memory, and the
/// two commands staged in user memory, each in its own slot (the typed helpers of `SimHost` share
/// one staging area under a lock, which would serialise the two ioctls by itself).
struct Td {
    host: SimHost,
    machine: Arc<Machine>,
    kvm: Arc<Kvm>,
    vm_fd: i32,
    gmem_fd: i32,
    vcpu0_fd: i32,
    vcpu1_fd: i32,
    vcpu1: Arc<KvmVcpu>,
    /// `struct kvm_tdx_cmd` of INIT_MEM_REGION (its region right after it) and of INIT_VCPU.
    init_mem_region_cmd: u64,
    init_vcpu_cmd: u64,
}

fn td(profile: KernelProfile) -> Td {
    let machine = Machine::new(MachineConfig { vfs: profile.vfs_version(), ..MachineConfig::tiny(64) });
    let system = KvmSystem::builder(profile).machine(machine.clone()).arch(gmem_arch::X86Host::setup_intel()).build();
    let host = SimHost::with_system(system);
    let vm_fd = host.create_vm(VmType::Tdx as u64).expect("KVM_CREATE_VM");
    // GPAW 48 (leaf 0x80000008), SEPT_VE_DISABLE.
    let cpuid = [kvm_cpuid_entry2 { function: 0x8000_0008, eax: 48 << 16, ..Default::default() }];
    let init_vm = kvm_tdx_init_vm { attributes: TDX_TD_ATTR_SEPT_VE_DISABLE, ..Default::default() };
    host.tdx_init_vm(vm_fd, &init_vm, &cpuid).expect("KVM_TDX_INIT_VM");
    let kvm = host.vm(vm_fd).expect("the VM fd");
    // Three pages of user memory: the memslot's shared side, the image, the commands.
    let user = host.process().mmap_anonymous(3 * PAGE_SIZE).expect("mmap");
    let image = user + PAGE_SIZE;
    let gmem_fd = crate::common::bind_one_page(&host, vm_fd, user);
    host.set_memory_attributes(
        vm_fd,
        &kvm_memory_attributes { address: GPA, size: PAGE_SIZE, attributes: PRIVATE, ..Default::default() },
    )
    .expect("KVM_SET_MEMORY_ATTRIBUTES");
    let vcpu0_fd = host.create_vcpu(vm_fd, 0).expect("KVM_CREATE_VCPU 0");
    host.tdx_init_vcpu(vcpu0_fd, 0).expect("KVM_TDX_INIT_VCPU of vCPU 0");
    let vcpu1_fd = host.create_vcpu(vm_fd, 1).expect("KVM_CREATE_VCPU 1");
    let (_, vcpu1) = host.vcpu(vcpu1_fd).expect("vCPU 1's fd");
    host.store(image, IMAGE).expect("the image");

    // The commands, in the third page: INIT_MEM_REGION's at 0 and its region at 64, INIT_VCPU's
    // at 128.
    let commands = user + 2 * PAGE_SIZE;
    let (init_mem_region_cmd, init_vcpu_cmd) = (commands, commands + 128);
    let mem_region = kvm_tdx_init_mem_region { source_addr: image, gpa: GPA, nr_pages: 1 };
    let cmd = kvm_tdx_cmd {
        id: KVM_TDX_INIT_MEM_REGION,
        flags: KVM_TDX_MEASURE_MEMORY_REGION,
        data: commands + 64,
        hw_error: 0,
    };
    host.store(init_mem_region_cmd, gmem_arch::uapi::as_bytes(&cmd)).expect("INIT_MEM_REGION's command");
    host.store(commands + 64, gmem_arch::uapi::as_bytes(&mem_region)).expect("the region");
    let cmd = kvm_tdx_cmd { id: KVM_TDX_INIT_VCPU, flags: 0, data: 0, hw_error: 0 };
    host.store(init_vcpu_cmd, gmem_arch::uapi::as_bytes(&cmd)).expect("INIT_VCPU's command");

    assert!(machine.warnings.is_empty(), "{:#?}", machine.warnings.snapshot());
    Td { host, machine, kvm, vm_fd, gmem_fd, vcpu0_fd, vcpu1_fd, vcpu1, init_mem_region_cmd, init_vcpu_cmd }
}

impl Td {
    fn tdx(&self) -> &TdxVm {
        TdxVm::of(&self.kvm).expect("a TD")
    }

    fn module(&self) -> &Arc<TdxModule> {
        self.tdx().module()
    }

    /// The SEAMCALLs INIT_MEM_REGION issued so far (none of them runs in the set-up).
    fn init_mem_region_progress(&self) -> String {
        let module = self.module();
        let [sept_add, page_add, mr_extend] =
            [SeamcallLeaf::MemSeptAdd, SeamcallLeaf::MemPageAdd, SeamcallLeaf::MrExtend]
                .map(|leaf| module.executed(leaf));
        format!("{sept_add} TDH.MEM.SEPT.ADD, {page_add} TDH.MEM.PAGE.ADD, {mr_extend} TDH.MR.EXTEND")
    }

    /// The WARNs and `KVM_BUG_ON`s recorded so far, one line each.
    fn warnings(&self) -> Vec<String> {
        self.machine.warnings.snapshot().iter().map(ToString::to_string).collect()
    }

    /// Every invariant holds: the core ones and the TDX ones (T1 PAMT ownership, T3, T10 MRTD,
    /// T2, T4, T5, T6).
    fn assert_invariants(&self) {
        let file = self.host.guest_memfd(self.gmem_fd).expect("the guest_memfd");
        let violations = invariants::check(std::slice::from_ref(&self.kvm), &[file]);
        assert!(violations.is_empty(), "{violations:#?}");
    }
}

/// MRTD of a TD whose only measured page is the image at [`GPA`]: PAGE.ADD, then MR.EXTEND of
/// each 256-byte chunk.
fn expected_mrtd() -> [u8; 48] {
    let mut page = vec![0u8; PAGE_SIZE as usize];
    page[..IMAGE.len()].copy_from_slice(IMAGE);
    let mut records = vec![MrtdRecord::PageAdd { gpa: GPA }];
    for (i, chunk) in page.chunks(MR_EXTEND_CHUNK).enumerate() {
        let chunk: Box<[u8; MR_EXTEND_CHUNK]> = Box::new(chunk.try_into().expect("a whole chunk"));
        records.push(MrtdRecord::MrExtend { gpa: GPA + (i * MR_EXTEND_CHUNK) as u64, chunk });
    }
    Mrtd::replay(&records)
}

/// What INIT_MEM_REGION's fault saw of vCPU 1 (read in the TDP MMU's fault hook: after the pfn
/// was resolved, before the fault's first SEAMCALL).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SeenAtFault {
    /// No TDVPR recorded for vCPU 1 yet: INIT_VCPU had not run, or not as far as TDH.VP.CREATE
    /// (with F16 it runs entirely under the locks, so not at all).
    NotStarted,
    /// TDH.VP.CREATE had run, INIT_VCPU was not finished.
    InFlight,
    /// INIT_VCPU was done.
    Done,
}

fn model(profile: &'static str, coverage: Arc<Coverage>) {
    check(move || {
        let profile = KernelProfile::by_name(profile).expect("a profile");
        let serialised = profile.has_fix(Fix::F16TdxStateLocks);
        // Never torn down (leaked): the teardown would overflow loom's clock (module comment).
        let td = std::mem::ManuallyDrop::new(Arc::new(td(profile)));
        let seen = Arc::new(std::sync::Mutex::new(None));
        {
            let (vcpu1, seen) = (Arc::clone(&td.vcpu1), Arc::clone(&seen));
            td.kvm.tdp_mmu().expect("TDP MMU").set_fault_hook(move |_| {
                let tdx = vcpu1.arch::<TdxVcpu>().expect("a TDX vCPU");
                let state = match (tdx.initialized(), tdx.tdvpr()) {
                    (true, _) => SeenAtFault::Done,
                    (false, Some(_)) => SeenAtFault::InFlight,
                    (false, None) => SeenAtFault::NotStarted,
                };
                *seen.lock().unwrap() = Some(state);
            });
        }

        explore();
        let init_mem_region = {
            let td = Arc::clone(&td);
            thread::spawn(move || td.host.vcpu_memory_encrypt_op(td.vcpu0_fd, td.init_mem_region_cmd))
        };
        let init_vcpu = {
            let td = Arc::clone(&td);
            thread::spawn(move || {
                let result = td.host.vcpu_memory_encrypt_op(td.vcpu1_fd, td.init_vcpu_cmd);
                // Bookkeeping on failure only (it adds loom accesses): how far INIT_MEM_REGION
                // had got.
                let progress = result.is_err().then(|| td.init_mem_region_progress());
                (result, progress)
            })
        };
        let init_mem_region = init_mem_region.join().unwrap();
        let (init_vcpu, progress) = init_vcpu.join().unwrap();
        stop_exploring();

        // The question of the model, in both profiles: no SEAMCALL met the module's locks busy
        // where KVM treats that as a bug (the VM would be dead).
        let warnings = td.warnings();
        assert!(
            warnings.is_empty(),
            "WARNs: {warnings:#?}\nINIT_VCPU: {init_vcpu:?}, when INIT_MEM_REGION had issued {}",
            progress.as_deref().unwrap_or("?")
        );
        assert!(!td.kvm.is_dead(), "the VM is dead");
        td.assert_invariants();
        let seen = seen.lock().unwrap().expect("INIT_MEM_REGION faulted the page in");

        if serialised {
            // Serialised: both succeed, and INIT_MEM_REGION ran entirely before or after
            // INIT_VCPU.
            assert_eq!(init_mem_region, Ok(()), "KVM_TDX_INIT_MEM_REGION");
            assert_eq!(init_vcpu, Ok(()), "KVM_TDX_INIT_VCPU");
            assert_ne!(seen, SeenAtFault::InFlight, "INIT_VCPU ran inside INIT_MEM_REGION");
            assert!(td.vcpu1.arch::<TdxVcpu>().expect("a TDX vCPU").initialized(), "vCPU 1 initialised");
            assert_eq!(td.tdx().nr_premapped(), 0, "the page was added");
            // No SEAMCALL met a busy lock: none was issued again (a BUSY TDH.MEM.SEPT.ADD is
            // retried by the fault, silently).
            assert_eq!(
                td.init_mem_region_progress(),
                "3 TDH.MEM.SEPT.ADD, 1 TDH.MEM.PAGE.ADD, 16 TDH.MR.EXTEND",
                "INIT_MEM_REGION's SEAMCALLs"
            );
            assert_eq!(td.module().executed(SeamcallLeaf::VpCreate), 2, "TDH.VP.CREATE, vCPU 0's included");
            // The launch completes, with the MRTD of the one measured page.
            td.host.tdx_finalize_vm(td.vm_fd).expect("KVM_TDX_FINALIZE_VM");
            assert_eq!(td.tdx().td_state(), TdState::Runnable);
            let info = td.module().td_info(td.tdx().tdr().expect("a TDR")).expect("the TD");
            assert_eq!(info.vcpus.len(), 2, "both vCPUs in the module");
            assert_eq!(info.mrtd, Some(expected_mrtd()), "MRTD");
            td.assert_invariants();
            assert!(td.machine.warnings.is_empty(), "{:#?}", td.machine.warnings.snapshot());
        }

        coverage.record("INIT_VCPU done before INIT_MEM_REGION's fault", seen == SeenAtFault::Done);
        coverage.record("INIT_VCPU not started at INIT_MEM_REGION's fault", seen == SeenAtFault::NotStarted);
    });
}

/// With F16 (`v6.18+F16`): the two state transitions are serialised by `kvm->lock`, every
/// `vcpu->mutex` and `slots_lock`; no SEAMCALL meets a busy lock.
#[test]
fn init_vcpu_vs_init_mem_region() {
    let coverage = Arc::new(Coverage::default());
    model("v6.18+F16", Arc::clone(&coverage));
    coverage.assert_all_reached();
}

/// Negative control: v6.18 (F16 off) holds only each vCPU's own `vcpu->mutex`, so TDH.VP.CREATE
/// (TDR exclusive) can run while INIT_MEM_REGION's SEAMCALL holds the TDR lock shared: BUSY,
/// `KVM_BUG_ON`, the VM is dead.
#[test]
#[should_panic(expected = "KVM_BUG_ON: SEAMCALL TDH_VP_CREATE failed: TDX_OPERAND_BUSY")]
fn init_vcpu_vs_init_mem_region_without_f16_fails() {
    model("v6.18", Arc::default());
}
