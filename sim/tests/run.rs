//! `gmem-sim run`: a small default-mix run is clean, streams are a function of the seed, the
//! JSON summary has the documented keys, and bad flags exit 2.

use gmem_sim::run::{self, Config, Length, Mix};
use std::process::{Command, Output};

fn gmem_sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gmem-sim")).args(args).output().expect("gmem-sim runs")
}

fn small(seed: u64) -> Config {
    let mut config = Config::new(seed);
    config.memory = 4 << 20;
    config.length = Length::Ops(20_000);
    config
}

#[test]
fn a_default_mix_run_ends_clean() {
    let summary = run::run(&small(7), None).expect("runs");
    assert!(summary.ok, "failures: {:#?}\n{}", summary.failures, summary.table());
    let field = |key: &str| summary.fields.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone()).unwrap();
    assert_eq!(field("ops"), "20000");
    for key in ["warnings", "invariant_violations", "integrity_errors", "vmm_errors"] {
        assert_eq!(field(key), "0", "{key}");
    }
    assert_ne!(field("invariant_checks"), "0");
}

#[test]
fn the_same_seed_gives_the_same_operation_streams() {
    let a = run::generate(&small(42), 5000);
    let b = run::generate(&small(42), 5000);
    assert_eq!(a, b);
    assert!(!a.0.is_empty() && a.1.iter().all(|ops| !ops.is_empty()));
    let c = run::generate(&small(43), 5000);
    assert_ne!(a, c);
    // vCPUs only touch the pages they own.
    for (vcpu, ops) in a.1.iter().enumerate() {
        assert!(ops.iter().all(|op| op.page % 2 == vcpu as u64));
    }
}

#[test]
fn json_is_one_object_with_the_documented_keys() {
    let output = gmem_sim(&["run", "--ops", "5000", "--memory", "2M", "--seed", "3", "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).expect("utf-8");
    let line = text.trim();
    assert!(line.starts_with('{') && line.ends_with('}') && !line.contains('\n'), "{line}");
    let body = &line[1..line.len() - 1];
    let keys: Vec<&str> =
        body.split(',').filter_map(|pair| pair.split_once(':')).map(|(key, _)| key.trim_matches('"')).collect();
    for key in [
        "seed",
        "kernel",
        "vm_type",
        "ops",
        "ops_per_sec",
        "faults",
        "fault_retries",
        "sptes_zapped",
        "tlb_flushes",
        "exits_memory_fault",
        "conversions_to_private",
        "conversions_to_shared",
        "warnings",
        "invariant_violations",
        "integrity_errors",
        "ok",
    ] {
        assert!(keys.contains(&key), "missing {key} in {line}");
    }
    assert!(line.contains("\"ok\":true"));
}

#[test]
fn bad_flags_exit_2() {
    for args in [
        &["run", "--mix", "access=1,bogus=2"][..],
        &["run", "--mix", "access=x"],
        &["run", "--mix", "access=0"],
        &["run", "--mix", "access=1,access=2"],
        &["run", "--vm-type", "SEV"],
        &["run", "--memory", "12Q"],
        &["run", "--ops", "10", "--duration", "1"],
        &["run", "--vm-type", "DEFAULT", "--mix", "access=1,convert=1"],
    ] {
        let output = gmem_sim(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        assert!(!String::from_utf8_lossy(&output.stderr).contains("panicked"), "{args:?}");
    }
}

#[test]
fn mix_parsing() {
    let mix = Mix::parse("access=80, convert=5,close=1").expect("parses");
    assert_eq!((mix.access, mix.convert, mix.punch, mix.close), (80, 5, 0, 1));
    assert_eq!(Mix::parse(&mix.to_string()), Ok(mix));
    assert!(Mix::parse("convert").is_err());
}
