//! The kvm backend owns what it creates: a thousand scripts in one process leave no
//! descriptor and no mapping behind.
//!
//! This is the only test of its binary: it counts the process's descriptors and mappings, which
//! tests running in parallel threads of the same process would change. Without `/dev/kvm` it
//! prints why and passes; `GMEM_REQUIRE_KVM=1` makes that a failure.

use gmem_sim::backends::{self, kvm_or_skip};
use gmem_sim::runner::{self, RunOptions};
use gmem_sim::script;

/// Counts this process's open descriptors.
fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("procfs").count()
}

/// This process's mappings (one line each in `/proc/self/maps`).
fn mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps").expect("procfs").lines().count()
}

#[test]
fn a_thousand_scripts_on_the_kernel_leave_no_descriptor_or_mapping_behind() {
    if !kvm_or_skip("a_thousand_scripts_on_the_kernel_leave_no_descriptor_or_mapping_behind") {
        return;
    }
    // A script that creates every kind of object the backend owns, including some it then
    // releases itself and some it leaves for the end of the script.
    let source = "\
vm = create_vm
g = create_guest_memfd vm size=2M flags=MMAP|INIT_SHARED
h = create_guest_memfd vm size=1M flags=MMAP
set_user_memory_region2 vm slot=0 flags=GUEST_MEMFD gpa=0 size=1M guest_memfd=g
set_user_memory_region2 vm slot=1 gpa=1M size=1M
m = mmap g len=2M
n = mmap h len=1M
store m offset=0x1000 bytes=2a
load m offset=0x1000 len=1 => ok 2a
load n offset=0 len=1 => SIGBUS
munmap n
load n offset=0 len=1 => SIGSEGV
close h
";
    let program = script::parse("leak.gms", source).expect("parses");
    let run_once = || {
        let mut factory = || backends::open("kvm", "v6.18-pvm");
        let options = RunOptions { check: true, skip_is_pass: false };
        let mut output = Vec::new();
        let report = runner::run(std::slice::from_ref(&program), &mut factory, options, &mut output)
            .expect("the kvm backend opens");
        assert_eq!(report.failed(), 0, "{:?}", report.lines);
    };
    run_once();
    let (fds_before, maps_before) = (open_descriptors(), mappings());
    for _ in 0..1000 {
        run_once();
    }
    let (fds_after, maps_after) = (open_descriptors(), mappings());
    assert_eq!(fds_after, fds_before, "descriptors left behind over 1000 scripts");
    assert_eq!(maps_after, maps_before, "mappings left behind over 1000 scripts");
}
