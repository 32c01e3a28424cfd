//! Conformance: every bundled example script on the real kernel and on the simulator.
//!
//! Each `examples/*.gms` runs on the kvm backend (this machine's `/dev/kvm`) and on the
//! simulator under `v6.18-pvm`, the profile that models this machine's kernel, on the host the
//! script declares (`# host:`; the kvm backend's host is this machine whatever it declares). Every line the
//! kvm backend does not skip must print byte-identical results on both (with their detail
//! lines). Scripts written for this kernel (`# profile: v6.18-pvm`) must also meet their
//! `=> EXPECTED` lines on both backends; scripts written for another profile describe another
//! kernel, so only their outputs are compared (the `examples` test checks their expectations
//! under their own profile).
//!
//! Without `/dev/kvm` these tests print why and pass; `GMEM_REQUIRE_KVM=1` makes that a
//! failure. The kvm backend's resource test is in `kvm_backend_releases.rs`, a binary of its
//! own, because it counts the process's descriptors and mappings.

use std::path::{Path, PathBuf};

use gmem_sim::backends::{self, kvm_or_skip, Host};
use gmem_sim::runner::{self, LineReport, Report, RunOptions};
use gmem_sim::script::{self, Program};

/// The profile that models the kernel of this project's machines.
const THIS_KERNEL: &str = "v6.18-pvm";

/// An example: its path, declared profile and host, and program.
type Example = (PathBuf, String, Host, Program);

fn examples() -> Vec<Example> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples/ exists")
        .map(|entry| entry.expect("readable entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "gms"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 9, "expected the bundled examples in {}", dir.display());
    paths
        .into_iter()
        .map(|path| {
            let source = std::fs::read_to_string(&path).expect("readable example");
            let profile = source
                .lines()
                .next()
                .and_then(|line| line.strip_prefix("# profile:"))
                .map(|profile| profile.trim().to_string())
                .unwrap_or_else(|| panic!("{}: first line must name the profile", path.display()));
            let host = backends::declared_host(&source).expect("a valid `# host:` line").unwrap_or_default();
            let program = script::parse(&path.display().to_string(), &source).expect("examples parse");
            (path, profile, host, program)
        })
        .collect()
}

fn run(program: &Program, backend: &str, kernel: &str, host: Host, options: RunOptions) -> Report {
    let mut factory = || backends::open_on(backend, kernel, host);
    let mut output = Vec::new();
    runner::run(std::slice::from_ref(program), &mut factory, options, &mut output).expect("the backend opens")
}

fn shown(line: &LineReport) -> String {
    let mut text = format!("{}:{}: {}", line.file, line.line, line.result);
    for detail in &line.details {
        text.push_str(&format!("\n  {detail}"));
    }
    text
}

#[test]
fn every_example_prints_the_same_on_the_kernel_and_the_simulator() {
    if !kvm_or_skip("every_example_prints_the_same_on_the_kernel_and_the_simulator") {
        return;
    }
    let mut mismatches = Vec::new();
    let (mut compared, mut skipped) = (0, 0);
    for (_, _, host, program) in examples() {
        let kvm = run(&program, "kvm", THIS_KERNEL, host, RunOptions::default());
        let sim = run(&program, "sim", THIS_KERNEL, host, RunOptions::default());
        assert_eq!(kvm.lines.len(), sim.lines.len(), "{}: both backends run every line", program.file);
        for (k, s) in kvm.lines.iter().zip(&sim.lines) {
            if k.result.starts_with("skip") {
                skipped += 1;
                continue;
            }
            compared += 1;
            if (&k.result, &k.details) != (&s.result, &s.details) {
                mismatches.push(format!("kvm {}\nsim {}", shown(k), shown(s)));
            }
        }
    }
    eprintln!("conformance: {compared} lines compared, {skipped} skipped by the kvm backend");
    assert!(compared > 500, "too few lines compared ({compared}): is the kvm backend skipping everything?");
    assert!(mismatches.is_empty(), "{} lines differ:\n{}", mismatches.len(), mismatches.join("\n"));
}

#[test]
fn scripts_for_this_kernel_meet_their_expectations_on_both_backends() {
    if !kvm_or_skip("scripts_for_this_kernel_meet_their_expectations_on_both_backends") {
        return;
    }
    let for_this_kernel: Vec<_> = examples().into_iter().filter(|(_, profile, _, _)| profile == THIS_KERNEL).collect();
    assert!(for_this_kernel.len() >= 3, "the measured examples declare `# profile: {THIS_KERNEL}`");
    for (path, _, host, program) in for_this_kernel {
        for (backend, options) in [
            ("kvm", RunOptions { check: true, skip_is_pass: true }),
            ("sim", RunOptions { check: true, skip_is_pass: false }),
        ] {
            let report = run(&program, backend, THIS_KERNEL, host, options);
            let failed: Vec<String> = report
                .lines
                .iter()
                .filter(|line| line.matched == Some(false))
                .map(|line| format!("{} (expected {})", shown(line), line.expected.as_deref().unwrap_or("")))
                .collect();
            // Every expectation is checked: the script ran to its end on this backend.
            let expectations = program.lines.iter().filter(|line| line.expected.is_some()).count();
            assert!(expectations > 0, "{}: a script for this kernel states its expectations", path.display());
            assert_eq!(report.checked(), expectations, "{} on {backend}: every expectation is checked", path.display());
            assert!(failed.is_empty(), "{} on {backend}:\n{}", path.display(), failed.join("\n"));
        }
    }
}
