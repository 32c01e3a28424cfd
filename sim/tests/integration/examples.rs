//! Every bundled example script passes its own expectations on the simulator, under the profile
//! its header names (`# profile: v6.14`), on the host it names (`# host: intel`; AMD without).
//!
//! Method: parse each `examples/*.gms`, read the profile from its first line and the host from its
//! header, run it with `--check` semantics through the library runner on a fresh simulator
//! backend, and require
//! every expectation to match. Output is also run twice to check it is byte-identical
//! (determinism is part of the script contract).

use gmem_sim::backends;
use gmem_sim::runner::{run, RunOptions};
use gmem_sim::script::parse;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples/ exists")
        .map(|entry| entry.expect("readable").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "gms"))
        .collect();
    files.sort();
    files
}

/// The profile a script declares on its first line.
fn declared_profile(text: &str, path: &Path) -> String {
    let first = text.lines().next().unwrap_or_default();
    first
        .strip_prefix("# profile:")
        .map(|profile| profile.trim().to_string())
        .unwrap_or_else(|| panic!("{}: the first line must be `# profile: PROFILE`", path.display()))
}

fn run_checked(path: &Path) -> (String, gmem_sim::runner::Report) {
    let text = std::fs::read_to_string(path).expect("readable");
    let profile = declared_profile(&text, path);
    let host = backends::declared_host(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let program = parse(&path.display().to_string(), &text).unwrap_or_else(|error| panic!("{error}"));
    let mut factory = || backends::open_on("sim", &profile, host.unwrap_or_default());
    let mut out = Vec::new();
    let options = RunOptions { check: true, skip_is_pass: false };
    // A model that waits for nothing (a script runs on one thread) fails the test, not hangs it.
    let supervised = gmem_sync::waits::supervise(&path.display().to_string(), Duration::from_secs(30), || {
        run(std::slice::from_ref(&program), &mut factory, options, &mut out)
    });
    let report = supervised.unwrap_or_else(|stuck| panic!("{} is stuck: {stuck}", path.display())).expect("runs");
    (String::from_utf8(out).expect("utf-8"), report)
}

#[test]
fn every_example_passes_its_expectations_under_its_profile() {
    let files = examples();
    assert!(files.len() >= 9, "the bundled examples are missing");
    let mut failures = Vec::new();
    for path in &files {
        let (output, report) = run_checked(path);
        assert!(report.checked() > 0, "{} checks nothing", path.display());
        if report.failed() > 0 {
            let mismatches: Vec<&str> = output.lines().filter(|line| line.contains("(expected ")).collect();
            failures.push(format!("{}:\n  {}", path.display(), mismatches.join("\n  ")));
        }
    }
    assert!(failures.is_empty(), "expectations failed:\n{}", failures.join("\n"));
}

#[test]
fn example_output_is_deterministic() {
    for path in examples() {
        let (first, _) = run_checked(&path);
        let (second, _) = run_checked(&path);
        assert_eq!(first, second, "{} printed different output on a second run", path.display());
    }
}
