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
    let mut command = Command::new(env!("CARGO_BIN_EXE_gmem-sim"));
    for knob in gmem_sim::ENV_DEFAULTS {
        command.env_remove(knob);
    }
    command.args(args).output().expect("gmem-sim runs")
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

#[test]
fn environment_variables_give_defaults_and_the_command_line_wins() {
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_gmem-sim"));
        for knob in gmem_sim::ENV_DEFAULTS {
            command.env_remove(knob);
        }
        command.envs(env.iter().copied()).args(args).output().expect("gmem-sim runs")
    };
    let small = ["run", "--ops", "2000", "--memory", "1M", "--json"];
    let output = run(&[("GMEM_SEED", "0x5eed"), ("GMEM_KERNEL", "v6.14")], &small);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let json = text(&output.stdout);
    assert!(json.contains(r#""seed":"0x5eed""#) && json.contains(r#""kernel":"v6.14""#), "{json}");
    let mut explicit = small.to_vec();
    explicit.extend(["--seed", "7", "--kernel", "v6.18"]);
    let json = text(&run(&[("GMEM_SEED", "0x5eed"), ("GMEM_KERNEL", "v6.14")], &explicit).stdout);
    assert!(json.contains(r#""seed":"0x7""#) && json.contains(r#""kernel":"v6.18""#), "the flags win: {json}");
    // A bad value in the environment is a usage error naming the variable's option.
    let output = run(&[("GMEM_KERNEL", "v9.99")], &small);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("--kernel"), "{}", text(&output.stderr));
    // Every variable is shown in the help of the commands it applies to.
    let help: String = ["run", "script", "diff"].iter().map(|cmd| text(&gmem_sim(&[cmd, "--help"]).stdout)).collect();
    for knob in gmem_sim::ENV_DEFAULTS {
        assert!(help.contains(&format!("env: {knob}")), "{knob} in --help");
    }
}
