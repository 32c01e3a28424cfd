//! The SEV-SNP verbs on the simulator backend, looked at behind the script: `populate` of an SNP
//! VM is an SNP launch update through `/dev/sev` (measured by the firmware), the memory and
//! descriptors a verb uses for one call are gone afterwards, and the firmware-error injection
//! reaches the firmware.

use gmem_arch::sev::firmware::SevCmd;
use gmem_arch::sev::kvm::SvmVm;
use gmem_arch::sev::measure::SnpPageType;
use gmem_kvm::KernelProfile;
use gmem_sim::backends::sim::SimBackend;
use gmem_sim::runner::{run_program, RunOptions};
use gmem_sim::script::parse;

/// An SNP VM (descriptor 3) after INIT2 with a 2M guest_memfd memslot whose first 1M is private,
/// and LAUNCH_START through `/dev/sev` (bound to `sev`).
const LAUNCHING: &str = "vm = create_vm type=SEV_SNP
sev_init2 vm
g = create_guest_memfd vm size=2M
set_user_memory_region2 vm slot=0 flags=GUEST_MEMFD gpa=0 size=2M guest_memfd=g
set_memory_attributes vm address=0 size=1M attributes=PRIVATE
sev = open_dev_sev
snp_launch_start vm
";

/// Runs `source` on `backend` and returns the result of each line. Each call is a script of its
/// own (so later ones name `/dev/sev` by its number, 5).
fn run(backend: &mut SimBackend, source: &str) -> Vec<String> {
    let program = parse("t.gms", source).unwrap_or_else(|error| panic!("{error}"));
    let mut out = Vec::new();
    let lines = run_program(&program, backend, RunOptions::default(), false, &mut out).expect("runs");
    lines.into_iter().map(|line| line.result).collect()
}

/// The pages the VM's guest context has had launched: `(gpa, type)`.
fn launched(backend: &SimBackend) -> Vec<(u64, SnpPageType)> {
    let kvm = backend.host().vm(3).expect("the VM is descriptor 3");
    let vm = SvmVm::of(&kvm).expect("an SEV VM");
    let context = vm.host().firmware().context(vm.snp_context().expect("launching")).expect("a context");
    context.updates.iter().map(|record| (record.gpa, record.page_type)).collect()
}

fn open_fds(backend: &SimBackend) -> Vec<i32> {
    backend.host().process().files.open_fds()
}

#[test]
fn populate_of_an_snp_vm_is_a_launch_update() {
    let mut backend = SimBackend::new(KernelProfile::v6_18());
    let setup = run(&mut backend, LAUNCHING);
    assert!(setup.iter().all(|result| result == "ok"), "{setup:?}");
    let fds = open_fds(&backend);
    let updates_before = backend.host().snp_host().unwrap().firmware().executed(SevCmd::SnpLaunchUpdate);
    let results = run(&mut backend, "populate 3 gpa=0 npages=2 bytes=6b65726e656c\npopulate 3 gpa=0x2000 npages=1\n");
    assert_eq!(results, ["ok 2", "ok 1"]);
    // NORMAL pages from the bytes, a ZERO page without: measured by the firmware, in order.
    assert_eq!(
        launched(&backend),
        [(0, SnpPageType::Normal), (0x1000, SnpPageType::Normal), (0x2000, SnpPageType::Zero)]
    );
    let updates = backend.host().snp_host().unwrap().firmware().executed(SevCmd::SnpLaunchUpdate);
    assert_eq!(updates - updates_before, 3);
    // The script's /dev/sev was used: no descriptor was opened or left behind.
    assert_eq!(open_fds(&backend), fds);
    // Populating a launched page again is the launch update's error.
    assert_eq!(run(&mut backend, "populate 3 gpa=0 npages=1 bytes=00\n"), ["EIO"]);
}

#[test]
fn populate_opens_dev_sev_for_the_call_when_the_script_has_none_open() {
    let mut backend = SimBackend::new(KernelProfile::v6_18());
    run(&mut backend, LAUNCHING);
    // The script's /dev/sev closed, and its number reused by a guest_memfd.
    let results = run(&mut backend, "close 5\nh = create_guest_memfd 3 size=4K\n");
    assert_eq!(results, ["ok", "ok"]);
    let fds = open_fds(&backend);
    assert!(fds.contains(&5), "{fds:?}");
    assert_eq!(run(&mut backend, "populate 3 gpa=0x4000 npages=1 bytes=2a\n"), ["ok 1"]);
    assert_eq!(launched(&backend), [(0x4000, SnpPageType::Normal)]);
    // The descriptor opened for the call is closed again.
    assert_eq!(open_fds(&backend), fds);
}

#[test]
fn staged_sources_are_unmapped_after_the_call() {
    let mut backend = SimBackend::new(KernelProfile::v6_18());
    run(&mut backend, LAUNCHING);
    // The first encrypt op maps the staging page of the command itself; count after it.
    let vmas = backend.host().process().mm.vmas().len();
    let results = run(
        &mut backend,
        "snp_launch_update 3 sev_fd=5 gfn_start=0 len=8K bytes=01\n\
         snp_launch_update 3 sev_fd=5 gfn_start=0 len=4K bytes=01\n\
         snp_launch_finish 3 sev_fd=5 id_block=00\n",
    );
    assert_eq!(results, ["ok gfn_start=2 len=0 uaddr=bytes+0x2000", "EIO", "EIO fw_error=BAD_MEASUREMENT"]);
    assert_eq!(backend.host().process().mm.vmas().len(), vmas);
}

#[test]
fn injected_firmware_errors_fail_the_named_command() {
    let mut backend = SimBackend::new(KernelProfile::v6_18());
    run(&mut backend, LAUNCHING);
    let results = run(
        &mut backend,
        "inject snp_fw cmd=LAUNCH_UPDATE ret=INVALID_PAGE_STATE after=1 count=1\n\
         snp_launch_update 3 sev_fd=5 gfn_start=0 len=4K type=ZERO\n\
         snp_launch_update 3 sev_fd=5 gfn_start=1 len=4K type=ZERO\n\
         snp_launch_update 3 sev_fd=5 gfn_start=2 len=4K type=ZERO\n\
         inject snp_fw cmd=LAUNCH_FINISH ret=POLICY_FAILURE\n\
         snp_launch_finish 3 sev_fd=5\n\
         warnings\n",
    );
    assert_eq!(
        results,
        [
            "ok",
            "ok gfn_start=1 len=0 uaddr=0x0",
            "EIO fw_error=INVALID_PAGE_STATE",
            "ok gfn_start=3 len=0 uaddr=0x0",
            "ok",
            "EIO fw_error=POLICY_FAILURE",
            "ok 0",
        ]
    );
    assert_eq!(launched(&backend), [(0, SnpPageType::Zero), (0x2000, SnpPageType::Zero)]);
}

#[test]
fn without_sev_the_device_is_missing_and_the_commands_are_enotty() {
    let mut backend = SimBackend::new(KernelProfile::v6_18_pvm());
    let results = run(
        &mut backend,
        "vm = create_vm\n\
         sev = open_dev_sev\n\
         sev_init2 vm\n\
         snp_launch_start vm\n\
         g = create_guest_memfd vm size=4K\n",
    );
    assert_eq!(results, ["ok", "ENOENT", "ENOTTY", "ENOTTY", "ok"]);
    // The failed open used no descriptor: the guest_memfd is 4, right after the VM.
    assert_eq!(open_fds(&backend), [0, 1, 2, 3, 4]);
}
