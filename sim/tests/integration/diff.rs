//! The differential fuzzer (`gmem-sim diff`) without `/dev/kvm`: the simulator against itself
//! (the generator and renderer produce parseable scripts, the harness is deterministic) and
//! against another profile (divergences are found and shrunk to short scripts that still
//! diverge), plus its command line. The run against the real kernel is in `diff_kvm.rs`.

use std::process::{Command, Output};

use gmem_sim::backend::Backend;
use gmem_sim::backends;
use gmem_sim::diff::{self, Config, Summary};
use gmem_sim::progress::Progress;
use gmem_sim::runner::{self, RunOptions};
use gmem_sim::script;

/// Runs `config` with the simulator under `reference` as the reference and under `kernel` as
/// the simulator, returning the summary and the output.
fn run(config: &Config, reference: &str, kernel: &str) -> (Summary, String) {
    let mut reference = || backends::open("sim", reference);
    let mut sim = || backends::open("sim", kernel);
    let mut out = Vec::new();
    let summary =
        diff::run(config, &mut reference, &mut sim, &mut out, &Progress::hidden()).expect("the run completes");
    (summary, String::from_utf8(out).expect("utf-8 output"))
}

fn config(cases: u64, seed: u64, reference: &str) -> Config {
    Config { reference: format!("sim:{reference}"), ..Config::new(cases, seed) }
}

#[test]
fn the_simulator_agrees_with_itself_and_runs_are_reproducible() {
    let config = config(300, 0x5eed, "v6.18-pvm");
    let (summary, output) = run(&config, "v6.18-pvm", "v6.18-pvm");
    assert_eq!(summary.divergences, Vec::new(), "{output}");
    assert_eq!(summary.sequences, 300);
    assert!(summary.operations >= 300 * 20, "{} operations: sequences too short", summary.operations);
    assert_eq!(summary.skipped, 0, "the simulator skips nothing the generator makes");
    assert_eq!(output.lines().last(), Some(summary.last_line().as_str()));
    assert_eq!(summary.last_line(), format!("300 sequences, {} operations, 0 divergences", summary.operations));
    let (_, again) = run(&config, "v6.18-pvm", "v6.18-pvm");
    assert_eq!(output, again, "the same seed gives the same output");
}

#[test]
fn generated_scripts_parse_and_depend_only_on_the_case_seed() {
    for index in 0..200 {
        let seed = diff::case_seed(42, index);
        let text = diff::generate(seed, 40).expect("generates");
        let program = script::parse("case.gms", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!((1..=40).contains(&program.lines.len()), "{text}");
        assert_eq!(diff::generate(seed, 40).expect("generates"), text);
        for line in &program.lines {
            use script::Op::*;
            let host_side = !matches!(
                line.op,
                GuestStore { .. }
                    | GuestLoad { .. }
                    | Populate { .. }
                    | InjectMemoryFailure { .. }
                    | Inject { .. }
                    | Warnings
                    | CheckInvariants
                    | Dump { .. }
            );
            assert!(host_side, "line {} is not a host-side verb:\n{text}", line.number);
        }
    }
    assert_eq!(diff::case_seed(7, 0), 7, "case 0 of seed X is the case `--cases 1 --seed X` runs");
}

/// Runs `script` on the simulator under `profile` and returns the last line's result.
fn last_result(script: &str, profile: &str) -> String {
    let program = script::parse("min.gms", script).unwrap_or_else(|e| panic!("{e}\n{script}"));
    let mut backend: Box<dyn Backend> = backends::open("sim", profile).expect("opens");
    let reports = runner::run_program(&program, backend.as_mut(), RunOptions::default(), false, &mut std::io::sink())
        .expect("runs");
    reports.last().expect("one line at least").result.clone()
}

#[test]
fn divergences_between_profiles_are_found_and_shrunk_to_short_scripts() {
    // v6.14 and v6.18-pvm differ (GUEST_MEMFD_FLAGS, the MMAP flag, VM types, ...).
    let config = config(30, 1, "v6.14");
    let (summary, output) = run(&config, "v6.14", "v6.18-pvm");
    assert!(!summary.divergences.is_empty(), "{output}");
    assert_eq!(output.lines().last(), Some(summary.last_line().as_str()));
    for divergence in &summary.divergences {
        assert!(divergence.script_ops <= 6, "not shrunk: {}", divergence.script);
        assert!(output.contains(&divergence.script), "printed: {}", divergence.script);
        assert!(output.contains(&config.reproduce_command(divergence.case_seed)));
        // Re-run, the minimal script still diverges, and expects the reference's result.
        assert_eq!(last_result(&divergence.script, "v6.14"), divergence.reference, "{}", divergence.script);
        assert_eq!(last_result(&divergence.script, "v6.18-pvm"), divergence.sim, "{}", divergence.script);
        assert_ne!(divergence.reference, divergence.sim);
        let program = script::parse("min.gms", &divergence.script).expect("parses");
        let last = program.lines.last().expect("a line");
        assert_eq!(last.expected.as_deref(), Some(divergence.reference.as_str()));
    }
    // One case re-run alone from its seed finds the same divergence.
    let first = &summary.divergences[0];
    let (alone, _) = run(&Config { cases: 1, seed: first.case_seed, ..config.clone() }, "v6.14", "v6.18-pvm");
    assert_eq!(alone.divergences.len(), 1);
    assert_eq!(alone.divergences[0].script, first.script);
}

#[test]
fn the_simulator_gives_the_kernels_answer_where_the_fuzzer_found_it_wrong() {
    // Found by `gmem-sim diff` against Linux 6.18.44: x86 lets a read fault in a PROT_WRITE-only
    // mapping (access_error accepts any of VM_READ|VM_WRITE|VM_EXEC for a read).
    let write_only = |flags: &str| {
        format!(
            "vm0 = create_vm type=DEFAULT\ng0 = create_guest_memfd vm0 size=4K flags={flags}\n\
             m0 = mmap g0 len=4K offset=0 prot=WRITE flags=SHARED\nload m0 offset=0 len=1\n"
        )
    };
    assert_eq!(last_result(&write_only("MMAP"), "v6.18-pvm"), "SIGBUS");
    assert_eq!(last_result(&write_only("MMAP|INIT_SHARED"), "v6.18-pvm"), "ok 00");
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
fn the_command_prints_the_summary_last_and_exits_1_on_divergences() {
    let same = gmem_sim(&["diff", "--cases", "20", "--seed", "0x11", "--reference", "sim:v6.18-pvm"]);
    assert_eq!(same.status.code(), Some(0), "{}", text(&same.stderr));
    let stdout = text(&same.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with("20 sequences, ") && last.ends_with(" operations, 0 divergences"), "{last}");
    assert_eq!(text(&same.stderr), "", "no progress output when stderr is not a terminal");

    let other = gmem_sim(&["diff", "--cases", "20", "--seed", "0x11", "--reference", "sim:v6.14", "--ops-max", "10"]);
    assert_eq!(other.status.code(), Some(1), "{}", text(&other.stderr));
    let stdout = text(&other.stdout);
    assert!(stdout.contains("# reproduce: gmem-sim diff --cases 1 --seed 0x"), "{stdout}");
    assert!(stdout.contains("--ops-max 10 --reference sim:v6.14"), "{stdout}");
}

#[test]
fn bad_arguments_are_usage_errors_with_status_2() {
    let cases: [(&[&str], &str); 7] = [
        (&["diff"], "--cases"),
        (&["diff", "--cases", "x"], "invalid value"),
        (&["diff", "--cases", "1", "--seed", "0xzz"], "not a 64-bit seed"),
        (&["diff", "--cases", "1", "--ops-max", "0"], "--ops-max"),
        (&["diff", "--cases", "1", "--reference", "qemu"], "unknown reference `qemu`"),
        (&["diff", "--cases", "1", "--reference", "sim:v5.0"], "unknown kernel profile"),
        (&["diff", "--cases", "1", "--kernel", "v5.0"], "unknown kernel profile"),
    ];
    for (args, message) in cases {
        let output = gmem_sim(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(text(&output.stderr).contains(message), "{args:?}: {}", text(&output.stderr));
        assert_eq!(text(&output.stdout), "", "{args:?}");
    }
}

#[test]
fn a_reference_that_cannot_open_is_a_setup_error_with_status_2() {
    let mut reference = || Err::<Box<dyn Backend>, String>("cannot open /dev/kvm: No such file or directory".into());
    let mut sim = || backends::open("sim", "v6.18-pvm");
    let mut out = Vec::new();
    let error = diff::run(&Config::new(5, 1), &mut reference, &mut sim, &mut out, &Progress::hidden())
        .expect_err("no reference");
    assert_eq!(
        error.to_string(),
        "cannot open the reference backend `kvm`: cannot open /dev/kvm: No such file or directory"
    );
    assert!(out.is_empty(), "nothing printed before the setup check");
}
