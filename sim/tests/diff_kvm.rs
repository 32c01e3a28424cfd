//! A short `gmem-sim diff` run against this machine's `/dev/kvm`: the simulator's `v6.18-pvm`
//! profile must agree with the real kernel on 50 random sequences.
//!
//! Without `/dev/kvm` (or when the kvm backend cannot open it) the test prints why and passes,
//! unless `GMEM_REQUIRE_KVM=1` is set. It is the only test of this binary: the kvm backend
//! works on real descriptors of the test process, which tests running in parallel threads
//! (spawning processes, opening files) would share.

use gmem_sim::backends;
use gmem_sim::diff::{self, Config};
use gmem_sim::progress::Progress;

#[test]
fn the_simulator_agrees_with_dev_kvm_on_random_sequences() {
    if !backends::kvm_or_skip("the_simulator_agrees_with_dev_kvm_on_random_sequences") {
        return;
    }
    let config = Config::new(50, 0x6d656d);
    let mut reference = || diff::open_reference("kvm", diff::DEFAULT_KERNEL);
    let mut sim = || backends::open("sim", diff::DEFAULT_KERNEL);
    let mut out = Vec::new();
    let summary =
        diff::run(&config, &mut reference, &mut sim, &mut out, &Progress::hidden()).expect("the run completes");
    let output = String::from_utf8_lossy(&out);
    assert_eq!(summary.sequences, 50);
    assert!(summary.divergences.is_empty(), "{output}");
}
