//! The `gmem-sim` command line: usage and parse errors exit 2 without running anything.

use std::path::PathBuf;
use std::process::{Command, Output};

/// Writes `source` to a fresh file in the temporary directory and returns its path.
fn script(name: &str, source: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gmem-sim-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, source).expect("write script");
    path
}

fn gmem_sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gmem-sim")).args(args).output().expect("gmem-sim runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn parse_errors_in_any_file_stop_everything_with_status_2() {
    let good = script("good.gms", "vm = create_vm\n");
    let bad = script("bad.gms", "vm = create_vm\nbogus vm\n");
    let worse = script("worse.gms", "create_vm size=1\n");
    let (good, bad, worse) = (good.to_str().unwrap(), bad.to_str().unwrap(), worse.to_str().unwrap());
    let output = gmem_sim(&["script", good, bad, worse, "--check"]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(text(&output.stdout), "");
    assert_eq!(
        text(&output.stderr),
        format!("{bad}:2:1: unknown verb `bogus`\n{worse}:1:11: unknown key `size` for create_vm\n")
    );
}

#[test]
fn an_unreadable_file_exits_2() {
    let missing = std::env::temp_dir().join("gmem-sim-cli-does-not-exist.gms");
    let output = gmem_sim(&["script", missing.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).starts_with("gmem-sim: cannot read "), "{}", text(&output.stderr));
}

#[test]
fn usage_errors_exit_2_without_panicking() {
    let good = script("usage.gms", "create_vm\n");
    let good = good.to_str().unwrap();
    let cases: [&[&str]; 6] = [
        &["script", good, "--kernel", "v5.0"],
        &["script", good, "--backend", "qemu"],
        &["script", good, "--frobnicate"],
        &["script"],
        &["run", good],
        &[],
    ];
    for args in cases {
        let output = gmem_sim(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert_eq!(text(&output.stdout), "", "{args:?}");
        let stderr = text(&output.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(stderr.contains("error") || stderr.contains("Usage"), "{args:?}: {stderr}");
    }
}

#[test]
fn help_lists_the_script_options() {
    let output = gmem_sim(&["script", "--help"]);
    assert_eq!(output.status.code(), Some(0));
    let help = text(&output.stdout);
    for option in ["--backend", "--kernel", "--check", "sim", "kvm", "v6.14", "v6.18-pvm"] {
        assert!(help.contains(option), "{option} missing from:\n{help}");
    }
}
