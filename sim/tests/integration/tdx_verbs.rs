//! The TDX verbs on the simulator backend, looked at behind the script: the commands reach the TD
//! the script built (its state, its MRTD, the module's counters), the source pages a verb stages
//! are gone afterwards, `inject tdx` arms the named SEAMCALL, a descriptor decides which handler
//! runs (VM, vCPU or neither), and after a teardown `check_invariants` still checks the TDX module.

use gmem_arch::tdx::kvm::TdxVm;
use gmem_arch::tdx::pamt::{FrameState, PageType, PamtEntry};
use gmem_arch::tdx::status::SeamcallLeaf;
use gmem_kvm::KernelProfile;
use gmem_mm::Pfn;
use gmem_sim::backends::sim::SimBackend;
use gmem_sim::backends::Host;
use gmem_sim::runner::{run_program, RunOptions};
use gmem_sim::script::parse;

/// A TD (descriptor 3) after INIT_VM with a 2M guest_memfd memslot (4) whose first 1M is private
/// and one initialised vCPU (5).
const TD: &str = "vm = create_vm type=TDX
tdx_init_vm vm
g = create_guest_memfd vm size=2M
set_user_memory_region2 vm slot=0 flags=GUEST_MEMFD gpa=0 size=2M guest_memfd=g
set_memory_attributes vm address=0 size=1M attributes=PRIVATE
v = create_vcpu vm
tdx_init_vcpu v
";

/// Runs `source` on `backend` and returns the result of each line. Each call is a script of its
/// own (so later ones name the TD by its descriptors: VM 3, guest_memfd 4, vCPU 5).
fn run(backend: &mut SimBackend, source: &str) -> Vec<String> {
    let program = parse("t.gms", source).unwrap_or_else(|error| panic!("{error}"));
    let mut out = Vec::new();
    let lines = run_program(&program, backend, RunOptions::default(), false, &mut out).expect("runs");
    lines.into_iter().map(|line| line.result).collect()
}

fn intel() -> SimBackend {
    SimBackend::on(Host::Intel, KernelProfile::v6_18())
}

fn launching() -> SimBackend {
    let mut backend = intel();
    let setup = run(&mut backend, TD);
    assert!(setup.iter().all(|result| result == "ok"), "{setup:?}");
    backend
}

fn executed(backend: &SimBackend, leaf: SeamcallLeaf) -> u64 {
    backend.host().tdx_host().expect("an Intel host").module().executed(leaf)
}

#[test]
fn a_launch_reaches_the_td_and_measures_its_image() {
    let mut backend = launching();
    let adds = executed(&backend, SeamcallLeaf::MemPageAdd);
    let extends = executed(&backend, SeamcallLeaf::MrExtend);
    let results = run(
        &mut backend,
        "tdx_init_mem_region 5 gpa=0 size=8K measure=1 bytes=6b65726e656c\n\
         tdx_init_mem_region 5 gpa=0x2000 size=4K\n\
         tdx_finalize_vm 3\n\
         tdx_state 3\n",
    );
    assert_eq!(
        results,
        [
            "ok source_addr=bytes+0x2000 gpa=0x2000 nr_pages=0",
            "ok source_addr=bytes+0x1000 gpa=0x3000 nr_pages=0",
            "ok",
            "ok state=RUNNABLE nr_premapped=0 hkid_assigned=1 leaked=0 bugged=0",
        ]
    );
    // Three PAGE.ADDs, and 16 MR.EXTENDs (one per 256 bytes) for each of the two measured pages.
    assert_eq!(executed(&backend, SeamcallLeaf::MemPageAdd) - adds, 3);
    assert_eq!(executed(&backend, SeamcallLeaf::MrExtend) - extends, 32);
    let kvm = backend.host().vm(3).unwrap();
    let td = TdxVm::of(&kvm).unwrap();
    let info = td.module().td_info(td.tdr().unwrap()).unwrap();
    assert!(info.mrtd.is_some(), "MR.FINALIZE froze the measurement");
}

#[test]
fn staged_sources_are_unmapped_after_the_call() {
    let mut backend = launching();
    // The first encrypt op mapped the staging area of the command itself; count after it.
    let vmas = backend.host().process().mm.vmas().len();
    let results = run(
        &mut backend,
        "tdx_init_mem_region 5 gpa=0 size=8K bytes=01\n\
         tdx_init_mem_region 5 gpa=0 size=4K bytes=01\n\
         tdx_init_mem_region 5 gpa=0xff000 size=8K\n",
    );
    assert_eq!(
        results,
        [
            "ok source_addr=bytes+0x2000 gpa=0x2000 nr_pages=0",
            // The page was populated already (kvm_gmem_populate's EEXIST), before any progress.
            "EEXIST",
            // gpa 1M is shared: the first page is done, and the region says where it stopped.
            "EINVAL source_addr=bytes+0x1000 gpa=0x100000 nr_pages=1",
        ]
    );
    assert_eq!(backend.host().process().mm.vmas().len(), vmas);
}

#[test]
fn injected_seamcall_errors_fail_the_named_leaf() {
    let mut backend = launching();
    let results = run(
        &mut backend,
        "inject tdx leaf=MEM_PAGE_ADD status=OPERAND_BUSY|SEPT after=1\n\
         tdx_init_mem_region 5 gpa=0 size=8K\n\
         inject tdx leaf=MR_FINALIZE status=OPERAND_BUSY|TDR count=2\n\
         tdx_finalize_vm 3\n\
         tdx_finalize_vm 3\n\
         tdx_state 3\n\
         tdx_finalize_vm 3\n\
         warnings\n",
    );
    assert_eq!(
        results,
        [
            "ok",
            // The first page's ADD passes; the second's is BUSY: EBUSY after one page, and the
            // region says so. v6.18 premapped that page first: FINALIZE is refused below.
            "EBUSY source_addr=bytes+0x1000 gpa=0x1000 nr_pages=1",
            "ok",
            "EINVAL",
            "EINVAL",
            "ok state=INITIALIZED nr_premapped=1 hkid_assigned=1 leaked=0 bugged=0",
            "EINVAL",
            "ok 0",
        ]
    );
    assert_eq!(executed(&backend, SeamcallLeaf::MrFinalize), 0, "refused before TDH.MR.FINALIZE");
    // Zapping the premapped page (converting it to shared) lets FINALIZE through: BUSY twice
    // (EBUSY with the status in hw_error, the TD alive), then done.
    let results = run(
        &mut backend,
        "set_memory_attributes 3 address=0x1000 size=4K attributes=0\n\
         tdx_finalize_vm 3\n\
         tdx_finalize_vm 3\n\
         tdx_finalize_vm 3\n\
         tdx_state 3\n",
    );
    assert_eq!(
        results,
        [
            "ok",
            "EBUSY hw_error=OPERAND_BUSY|TDR",
            "EBUSY hw_error=OPERAND_BUSY|TDR",
            "ok",
            "ok state=RUNNABLE nr_premapped=0 hkid_assigned=1 leaked=0 bugged=0",
        ]
    );
    assert_eq!(executed(&backend, SeamcallLeaf::MrFinalize), 3);
}

#[test]
fn a_failed_mr_finalize_kills_the_td() {
    let mut backend = launching();
    let results = run(
        &mut backend,
        "inject tdx leaf=MR_FINALIZE status=OPERAND_INVALID|RCX\n\
         tdx_finalize_vm 3\n\
         tdx_state 3\n\
         tdx_finalize_vm 3\n\
         warnings\n",
    );
    assert_eq!(
        results,
        [
            "ok",
            "EIO hw_error=OPERAND_INVALID|RCX",
            "ok state=INITIALIZED nr_premapped=0 hkid_assigned=1 leaked=0 bugged=1",
            "EIO",
            "ok 1",
        ]
    );
}

#[test]
fn a_non_busy_failure_of_a_vcpu_seamcall_kills_the_td() {
    let mut backend = launching();
    let results = run(
        &mut backend,
        "v1 = create_vcpu 3 id=1\n\
         inject tdx leaf=VP_CREATE status=OPERAND_INVALID|RCX\n\
         tdx_init_vcpu v1\n\
         tdx_state 3\n\
         tdx_init_mem_region 5 gpa=0 size=4K\n\
         tdx_finalize_vm 3\n\
         set_memory_attributes 3 address=0 size=4K attributes=0\n\
         warnings\n",
    );
    assert_eq!(
        results,
        [
            "ok",
            "ok",
            "EIO",
            "ok state=INITIALIZED nr_premapped=0 hkid_assigned=1 leaked=0 bugged=1",
            "EIO",
            "EIO",
            "EIO",
            "ok 1",
        ]
    );
}

#[test]
fn the_descriptor_decides_which_handler_runs() {
    let mut backend = launching();
    let results = run(
        &mut backend,
        "tdx_init_vcpu 3\n\
         tdx_capabilities 5\n\
         tdx_finalize_vm 5\n\
         tdx_capabilities 4\n\
         tdx_init_mem_region 4 gpa=0 size=4K\n\
         tdx_capabilities 99\n\
         tdx_state 4\n\
         tdx_state 99\n",
    );
    // A VM's handler has no INIT_VCPU, a vCPU's no CAPABILITIES or FINALIZE_VM: EINVAL. A
    // guest_memfd has no such ioctl: ENOTTY. Descriptor 99 is not open: EBADF.
    let expected = ["EINVAL", "EINVAL", "EINVAL", "ENOTTY", "ENOTTY", "EBADF", "ENOTTY", "EBADF"];
    assert_eq!(results, expected);
}

#[test]
fn without_tdx_there_is_no_td_and_no_module_to_inject_into() {
    for mut backend in
        [SimBackend::new(KernelProfile::v6_18()), SimBackend::on(Host::Intel, KernelProfile::v6_18_pvm())]
    {
        let results = run(
            &mut backend,
            "create_vm type=TDX\n\
             vm = create_vm\n\
             tdx_state vm\n\
             v = create_vcpu vm\n\
             tdx_init_vcpu v\n\
             tdx_init_mem_region v gpa=0 size=4K\n",
        );
        assert_eq!(results, ["EINVAL", "ok", "EINVAL", "ok", "ENOTTY", "ENOTTY"]);
    }
    // AMD: no TDX module.
    let mut amd = SimBackend::new(KernelProfile::v6_18());
    assert_eq!(run(&mut amd, "inject tdx leaf=MEM_PAGE_ADD status=OPERAND_BUSY\n"), ["EINVAL"]);
}

#[test]
fn after_a_teardown_check_invariants_still_checks_the_module() {
    let mut backend = launching();
    let results =
        run(&mut backend, "tdx_init_mem_region 5 gpa=0 size=4K\nclose 5\nclose 4\nclose 3\ncheck_invariants\n");
    assert_eq!(results, ["ok source_addr=bytes+0x1000 gpa=0x1000 nr_pages=0", "ok", "ok", "ok", "ok"]);
    let module = backend.host().tdx_host().unwrap().module().clone();
    assert_eq!(module.td_owned_frames(), 0);
    // A TD-owned PAMT entry of no TD: T1, found with no VM left to reach the module through.
    let orphan = FrameState {
        entry: PamtEntry::owned(PageType::Reg, Pfn(0x1234)),
        cache_key: None,
        td_keyed: false,
        poisoned: false,
    };
    module.forge_pamt_for_test(Pfn(0x4321), orphan);
    let results = run(&mut backend, "check_invariants\n");
    assert!(results[0].starts_with("VIOLATION T1"), "{results:?}");
}
