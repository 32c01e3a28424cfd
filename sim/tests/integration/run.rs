//! `gmem-sim run`: a small default-mix run is clean, streams are a function of the seed, the
//! JSON summary has the documented keys, and bad flags exit 2. An SEV-SNP guest's run is clean
//! on both SNP profiles, with its guest-side figures, and refused on a profile without SNP; a
//! TD's run is clean on v6.18 with its figures, and refused on a profile without TDX.

use gmem_sim::progress::Progress;
use gmem_sim::run::{self, Config, Length, Mix, VcpuAction};
use gmem_uapi::vmm::{KVM_X86_SNP_VM, KVM_X86_TDX_VM};
use std::process::{Command, Output};

fn gmem_sim(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gmem-sim"));
    for knob in gmem_sim::ENV_DEFAULTS {
        command.env_remove(knob);
    }
    command.args(args).output().expect("gmem-sim runs")
}

fn small(seed: u64) -> Config {
    let mut config = Config::new(seed);
    config.memory = 4 << 20;
    config.length = Length::Ops(20_000);
    config
}

#[test]
fn a_default_mix_run_ends_clean() {
    let summary = run::run(&small(7), &Progress::hidden()).expect("runs");
    assert!(summary.ok, "failures: {:#?}\n{}", summary.failures, summary.table());
    assert_eq!(summary.ops, 20_000);
    for (key, count) in [
        ("warnings", summary.warnings),
        ("invariant_violations", summary.invariant_violations),
        ("integrity_errors", summary.integrity_errors),
        ("vmm_errors", summary.vmm_errors),
    ] {
        assert_eq!(count, 0, "{key}");
    }
    assert_ne!(summary.invariant_checks, 0);
    // A SW_PROTECTED VM has none of a TD's figures, and a TDP MMU's.
    assert_eq!(summary.tdx.vp_enters, None);
    assert!(summary.sptes_zapped.is_some());
}

/// The table is rendered from the JSON's fields: the same keys in the same order, the same
/// values (strings unquoted), `n/a` for what the VM type does not have.
#[test]
fn the_table_and_the_json_list_the_same_figures() {
    let summary = run::run(&small(7), &Progress::hidden()).expect("runs");
    let json: serde_json::Value = serde_json::from_str(&summary.to_json()).expect("the JSON parses");
    let object = json.as_object().expect("one object");
    let rows = summary.rows();
    assert_eq!(rows.iter().map(|(key, _)| key.as_str()).collect::<Vec<_>>(), object.keys().collect::<Vec<_>>());
    for (key, shown) in &rows {
        let value = &object[key.as_str()];
        let printed = match (value.as_str(), value.as_f64()) {
            (Some(text), _) => text.to_string(),
            (None, Some(fraction)) if value.is_f64() => format!("{fraction:.3}"),
            _ => value.to_string(),
        };
        assert_eq!(&printed, shown, "{key}");
    }
    assert_eq!(object["psc_requests"], "n/a");
    assert_eq!(object["seed"], "0x7");
    let seconds = summary.to_json().split("\"seconds\":").nth(1).and_then(|rest| rest.split(',').next()).map(str::len);
    assert_eq!(seconds, Some(format!("{:.3}", summary.seconds).len()), "three decimals");
    assert!(summary.table().lines().all(|line| line.split_whitespace().count() >= 2));
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
        &["run", "--vm-type", "SEV_SNP", "--kernel", "v6.18-pvm"],
        &["run", "--vm-type", "TDX", "--kernel", "v6.14"],
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

fn field(summary: &run::Summary, key: &str) -> String {
    summary.rows().into_iter().find(|(k, _)| k == key).map(|(_, v)| v).unwrap_or_else(|| panic!("no field {key}"))
}

fn number(summary: &run::Summary, key: &str) -> u64 {
    field(summary, key).parse().unwrap_or_else(|_| panic!("{key} = {} is not a count", field(summary, key)))
}

/// A small SEV-SNP run on each SNP kernel: launched, booted, converting through PSC under
/// punches, memslot changes, memory failures and guest_memfd closes, and clean. The guest-side
/// figures show each part happened: the launch measured the image (a sixteenth of memory),
/// the vCPUs validated pages and converted their own through PSC exits the VMM handled, and
/// destructive host operations cost them #VCs they recovered from. v6.14 runs with F1: its
/// seed bug (closing a bound guest_memfd, then deleting the memslot) is what the workload's
/// `close` operation does, so without the fix the run finds that bug, for any VM type.
#[test]
fn an_snp_run_ends_clean_on_both_snp_profiles() {
    for kernel in ["v6.18", "v6.14+F1"] {
        let mut config = small(11);
        config.vm_type = KVM_X86_SNP_VM;
        config.kernel = kernel.to_string();
        let summary = run::run(&config, &Progress::hidden()).expect("runs");
        assert!(summary.ok, "{kernel}: failures: {:#?}\n{}", summary.failures, summary.table());
        assert_eq!(field(&summary, "vm_type"), "SEV_SNP");
        assert_eq!(number(&summary, "ops"), 20_000);
        for key in ["warnings", "invariant_violations", "integrity_errors", "vmm_errors", "rmp_leaked_pages"] {
            assert_eq!(number(&summary, key), 0, "{kernel}: {key}");
        }
        assert_eq!(number(&summary, "launched_pages"), (4 << 20) / 4096 / 16);
        for key in ["guest_conversions", "psc_requests", "psc_exits", "pvalidates", "vc_exceptions", "gmem_closes"] {
            assert_ne!(number(&summary, key), 0, "{kernel}: {key}\n{}", summary.table());
        }
        // Every PSC exit was one conversion in the VMM; conversions come only from the guest.
        assert_eq!(
            number(&summary, "psc_exits"),
            number(&summary, "conversions_to_private") + number(&summary, "conversions_to_shared")
        );
        assert_eq!(number(&summary, "exits_memory_fault"), 0, "an SNP guest's accesses match the attributes");
        // The streams' conversions are the vCPUs' conversion operations; the rest are accesses.
        let (_, streams) = run::generate(&config, usize::MAX);
        let conversions =
            streams.iter().flatten().filter(|op| matches!(op.action, VcpuAction::Convert { .. })).count() as u64;
        assert_eq!(number(&summary, "guest_conversions"), conversions);
        assert_eq!(number(&summary, "guest_accesses") + conversions + number(&summary, "control_ops"), 20_000);
    }
}

/// An SNP guest's vCPUs convert only their own pages, within one region (a RAM block of its
/// own), and never touch their GHCB (their last page); the control thread makes no
/// conversions.
#[test]
fn snp_streams_leave_the_ghcb_alone_and_convert_from_the_vcpus() {
    for nr_vcpus in [1u64, 2, 3] {
        let mut config = small(5);
        config.vm_type = KVM_X86_SNP_VM;
        config.vcpus = nr_vcpus as u32;
        let (control, vcpus) = run::generate(&config, 20_000);
        assert!(control.iter().all(|op| !matches!(op, run::ControlOp::Convert { .. })));
        let pages = config.memory / 4096;
        let region_pages = pages / 4;
        let mut conversions = 0;
        for (vcpu, ops) in vcpus.iter().enumerate() {
            let vcpu = vcpu as u64;
            let ghcb = (pages - 1 - vcpu) / nr_vcpus * nr_vcpus + vcpu;
            for op in ops {
                assert_eq!(op.page % nr_vcpus, vcpu);
                let npages = match op.action {
                    VcpuAction::Convert { npages, .. } => {
                        conversions += 1;
                        npages
                    }
                    _ => 1,
                };
                let last = op.page + (npages - 1) * nr_vcpus;
                assert!(npages >= 1 && last < ghcb, "{op:?} reaches the GHCB page {ghcb}");
                assert_eq!(op.page / region_pages, last / region_pages, "{op:?} leaves its region");
            }
        }
        assert_ne!(conversions, 0);
    }
    // SW_PROTECTED streams have no vCPU conversions.
    let (_, plain) = run::generate(&small(5), 20_000);
    assert!(plain.iter().flatten().all(|op| !matches!(op.action, VcpuAction::Convert { .. })));
}

/// The SNP keys are in every summary: counts for an SNP guest, `n/a` otherwise; a profile
/// without SNP refuses the VM type with a clear message.
#[test]
fn snp_keys_and_the_profile_without_snp() {
    let output = gmem_sim(&["run", "--vm-type", "SEV_SNP", "--ops", "3000", "--memory", "2M", "--seed", "3", "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let line = String::from_utf8(output.stdout).expect("utf-8");
    for key in ["psc_requests", "psc_exits", "vc_exceptions", "pvalidates", "rmp_assigned_at_end", "launched_pages"] {
        let needle = format!("\"{key}\":");
        let at = line.find(&needle).unwrap_or_else(|| panic!("missing {key} in {line}"));
        assert!(line[at + needle.len()..].starts_with(|c: char| c.is_ascii_digit()), "{key} in {line}");
    }
    assert!(line.contains("\"vm_type\":\"SEV_SNP\"") && line.contains("\"ok\":true"), "{line}");
    let output = gmem_sim(&["run", "--ops", "2000", "--memory", "2M", "--seed", "3", "--json"]);
    let line = String::from_utf8(output.stdout).expect("utf-8");
    assert!(line.contains("\"vc_exceptions\":\"n/a\""), "{line}");

    let output = gmem_sim(&["run", "--vm-type", "SEV_SNP", "--kernel", "v6.18-pvm"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("v6.18-pvm has no SEV_SNP VMs"), "{stderr}");
}

/// A small TDX run: the TD launched (INIT_MEM_REGION of a sixteenth of memory), its vCPUs
/// accepting pages before their first private use and converting their own through MapGPA
/// exits the VMM handled, under punches, memslot changes, memory failures and guest_memfd
/// closes that cost them #VEs they recovered from; clean, with the TD's figures.
#[test]
fn a_tdx_run_ends_clean() {
    let mut config = small(11);
    config.vm_type = KVM_X86_TDX_VM;
    let summary = run::run(&config, &Progress::hidden()).expect("runs");
    assert!(summary.ok, "failures: {:#?}\n{}", summary.failures, summary.table());
    assert_eq!(field(&summary, "vm_type"), "TDX");
    assert_eq!(number(&summary, "ops"), 20_000);
    for key in ["warnings", "invariant_violations", "integrity_errors", "vmm_errors", "tdx_leaked_pages"] {
        assert_eq!(number(&summary, key), 0, "{key}");
    }
    assert_eq!(number(&summary, "launched_pages"), (4 << 20) / 4096 / 16);
    for key in [
        "guest_conversions",
        "tdx_accepts",
        "map_gpa_requests",
        "map_gpa_exits",
        "ve_exceptions",
        "vp_enters",
        "ept_violations",
        "gmem_closes",
        "memslot_changes",
        "pamt_pages_owned_at_end",
    ] {
        assert_ne!(number(&summary, key), 0, "{key}\n{}", summary.table());
    }
    // Every MapGPA exit was one conversion in the VMM; conversions come only from the guest.
    assert_eq!(
        number(&summary, "map_gpa_exits"),
        number(&summary, "conversions_to_private") + number(&summary, "conversions_to_shared")
    );
    assert_eq!(number(&summary, "exits_memory_fault"), 0, "a TD's accesses match the attributes");
    assert_eq!(field(&summary, "psc_requests"), "n/a");
    let (_, streams) = run::generate(&config, usize::MAX);
    let conversions =
        streams.iter().flatten().filter(|op| matches!(op.action, VcpuAction::Convert { .. })).count() as u64;
    assert_eq!(number(&summary, "guest_conversions"), conversions);
    // Other VM types show `n/a` for the TD's keys; a profile without TDX refuses the VM type.
    let summary = run::run(&small(11), &Progress::hidden()).expect("runs");
    assert_eq!(field(&summary, "ve_exceptions"), "n/a");
    let mut old = small(11);
    old.vm_type = KVM_X86_TDX_VM;
    old.kernel = "v6.14".to_string();
    let error = run::run(&old, &Progress::hidden()).expect_err("no TDX on v6.14");
    assert!(error.contains("v6.14 has no TDX VMs"), "{error}");
}

/// A small run broken on purpose, with a short watchdog.
fn broken(breakage: run::Breakage) -> Config {
    let mut config = small(11);
    config.memory = 1 << 20;
    config.length = Length::Ops(1_000_000);
    config.watchdog = std::time::Duration::from_millis(300);
    config.breakage = Some(breakage);
    config
}

#[test]
fn a_stuck_invalidation_is_ended_by_the_watchdog_with_a_diagnosis() {
    let started = std::time::Instant::now();
    let summary = run::run(&broken(run::Breakage::StuckInvalidation), &Progress::hidden()).expect("runs");
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(10), "the watchdog took {took:?}");
    assert!(!summary.ok);
    assert!(
        summary.failures.first().is_some_and(|f| f.starts_with("the watchdog ended the run: ")),
        "{:#?}",
        summary.failures
    );
    let diagnosis = summary.diagnosis.as_deref().expect("a diagnosis");
    // The invalidation that never ended, over all of guest memory (gfns 0x100..0x200 for 1 MiB
    // at the VMM's base), and a vCPU retrying its fault behind it.
    assert!(diagnosis.contains("MMU invalidation: mmu_invalidate_in_progress=1 range=[0x100, 0x200)"), "{diagnosis}");
    assert!(diagnosis.contains("waits on fault retry (vCPU "), "{diagnosis}");
    assert!(diagnosis.contains("SRCU kvm->srcu: index "), "{diagnosis}");
    // The retrying vCPU's operation (the other may be at the pause barrier: debug builds check
    // invariants after every control operation).
    assert!(
        diagnosis.lines().any(|l| l.starts_with("  vcpu")
            && l.contains(": in operation ")
            && (l.contains("load of page ") || l.contains("store to page "))),
        "{diagnosis}"
    );
    assert!(diagnosis.contains("state dump:\n  vm fd="), "{diagnosis}");
    assert!(summary.reproduce.ends_with("--watchdog 0.3 --break stuck-invalidation"), "{}", summary.reproduce);
}

#[test]
fn a_grace_period_that_never_ends_is_reported_as_the_wait_it_is() {
    let mut config = broken(run::Breakage::StuckSrcuReader);
    // Memslot changes only, so the control thread's first operation waits for the reader.
    config.mix = Mix::parse("access=50,memslot=50").unwrap();
    let started = std::time::Instant::now();
    let summary = run::run(&config, &Progress::hidden()).expect("runs");
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "took {:?}", started.elapsed());
    assert!(!summary.ok);
    let reason = summary.failures.first().expect("a failure");
    assert!(reason.starts_with("the watchdog ended the run: "), "{reason}");
    // The control thread waits for the grace period; a vCPU whose fault met the memslot marked
    // invalid meanwhile may have waited as long (it retries behind the same update).
    let diagnosis = summary.diagnosis.as_deref().expect("a diagnosis");
    assert!(
        diagnosis.contains("\n  control waits on SRCU grace period of kvm->srcu (readers on counter half "),
        "{diagnosis}"
    );
    assert!(diagnosis.contains("control: in control operation 0: Memslot"), "{diagnosis}");
    // The stuck reader is visible in the counters: one reader on a half.
    let srcu = diagnosis.lines().find(|l| l.starts_with("SRCU kvm->srcu: ")).expect("the SRCU line");
    assert!(srcu.contains(": 1"), "{srcu}");
}

#[test]
fn a_panicking_vcpu_is_a_failure_with_its_message() {
    let started = std::time::Instant::now();
    let summary = run::run(&broken(run::Breakage::VcpuPanic), &Progress::hidden()).expect("runs");
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "took {:?}", started.elapsed());
    assert!(!summary.ok);
    assert_eq!(
        summary.failures.first().map(String::as_str),
        Some("vcpu0 panicked: deliberate panic of vCPU 0 after 100 operations (--break vcpu-panic)"),
        "{:#?}",
        summary.failures
    );
    let diagnosis = summary.diagnosis.as_deref().expect("a diagnosis");
    assert!(
        !summary.failures.iter().any(|f| f.contains("watchdog")),
        "not a hang: {:#?}\n{diagnosis}",
        summary.failures
    );
    assert!(diagnosis.contains("vcpu0: panicked in operation 100: "), "{diagnosis}");
    assert!(summary.reproduce.contains("--break vcpu-panic"), "{}", summary.reproduce);
}

#[test]
fn the_cli_reports_a_hang_and_exits_1() {
    let output = gmem_sim(&[
        "run",
        "--memory",
        "1M",
        "--seed",
        "5",
        "--ops",
        "1000000",
        "--watchdog",
        "0.3",
        "--break",
        "stuck-invalidation",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("gmem-sim run: the watchdog ended the run: "), "{stderr}");
    assert!(stderr.contains("mmu_invalidate_in_progress=1"), "{stderr}");
    assert!(stderr.contains("state dump:"), "{stderr}");
    assert!(stderr.contains("reproduce with: gmem-sim run --seed 0x5 "), "{stderr}");
    for bad in [["--watchdog", "0"], ["--watchdog", "x"], ["--break", "nothing"]] {
        let output = gmem_sim(&["run", "--ops", "10", bad[0], bad[1]]);
        assert_eq!(output.status.code(), Some(2), "{bad:?}");
        assert!(!String::from_utf8_lossy(&output.stderr).contains("panicked"), "{bad:?}");
    }
    let help = String::from_utf8_lossy(&gmem_sim(&["run", "--help"]).stdout).to_string();
    assert!(help.contains("--watchdog <SECS>") && help.contains("--break <WHAT>"), "{help}");
}
