//! The `gmem-sim` command line. See the crate documentation of `gmem_sim`.

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use gmem_sim::backends::{self, Host, BACKENDS, DEFAULT_KERNEL, HOSTS};
use gmem_sim::diff;
use gmem_sim::progress::Progress;
use gmem_sim::rng;
use gmem_sim::run;
use gmem_sim::runner::{self, RunOptions};
use gmem_sim::script::{self, Program};

/// Exit status for usage, parse and setup errors.
const USAGE_ERROR: u8 = 2;

/// Simulates Linux KVM guest_memfd and runs scenario scripts.
#[derive(Debug, Parser)]
#[command(name = "gmem-sim", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run scenario scripts (.gms) and print one result per line.
    Script(ScriptArgs),
    /// Run every bundled example script under the profile its `# profile:` line names (on the
    /// host its `# host:` line names, AMD without one), with `--check`, and print a summary per
    /// file.
    Examples(ExamplesArgs),
    /// Differential fuzzing: run random host-side sequences on /dev/kvm and on the simulator,
    /// compare every result, and print each divergence shrunk to a minimal script. The last
    /// line is `N sequences, M operations, D divergences`; exit 1 if D > 0.
    Diff(DiffArgs),
    /// The full-system workload: a VMM runs a VM whose vCPU threads access guest memory while a
    /// control thread converts, punches, changes memslots, injects memory failures and closes
    /// guest_memfds; data integrity and invariants are checked. An SEV_SNP guest is launched
    /// with a measured image, and its vCPUs validate their pages and convert them themselves
    /// (page-state changes the VMM answers); a TDX guest likewise accepts its pages and converts
    /// them with MapGPA. Exit 1 on any warning, invariant violation or integrity error, on a
    /// panic, and when the watchdog ends a run that stopped making progress (`--watchdog`).
    Run(RunArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The VM type: SW_PROTECTED (private memory, conversions), DEFAULT, SEV_SNP (an SEV-SNP
    /// guest, on the v6.18 and v6.14 profiles) or TDX (a TD on an Intel host, v6.18).
    #[arg(long, env = "GMEM_VM_TYPE", default_value = "SW_PROTECTED", value_parser = run::parse_vm_type)]
    vm_type: u64,
    /// Guest memory (bytes, or with a K, M or G suffix).
    #[arg(long, default_value = "64M", value_parser = run::parse_size)]
    memory: u64,
    /// vCPU threads.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    vcpus: u32,
    /// Operations in all (guest accesses and control operations, split by the mix).
    #[arg(long, value_name = "N", conflicts_with = "duration", value_parser = clap::value_parser!(u64).range(1..))]
    ops: Option<u64>,
    /// Run for this many seconds instead of a fixed number of operations.
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    duration: Option<f64>,
    /// Operation weights, e.g. `access=80,convert=5,punch=5,memslot=3,memfail=1,close=1`
    /// (unlisted operations weigh 0). Default: that one; `access=95,memslot=5` for DEFAULT VMs.
    #[arg(long, value_parser = run::Mix::parse)]
    mix: Option<run::Mix>,
    /// The kernel profile.
    #[arg(long, env = "GMEM_KERNEL", default_value = "v6.18", value_parser = parse_kernel)]
    kernel: String,
    /// The seed of every operation stream (decimal or 0x hexadecimal). Random if not given.
    #[arg(long, value_name = "S", env = "GMEM_SEED", value_parser = parse_seed)]
    seed: Option<u64>,
    /// Print the summary as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// The watchdog: if no operation makes progress, or one thread waits in one wait (a lock,
    /// an SRCU grace period, an invalidation to end, a vCPU to leave guest mode), for this many
    /// seconds, the run ends with exit status 1, a diagnosis (who waits on what, each thread's
    /// last operation, the MMU invalidation and SRCU state), the state dump and the replay
    /// command.
    #[arg(long, value_name = "SECS", env = "GMEM_WATCHDOG", default_value = "5", value_parser = run::parse_watchdog)]
    watchdog: std::time::Duration,
    /// Break the run on purpose, to see the watchdog or the panic handling at work:
    /// `stuck-invalidation` (an MMU invalidation is begun and never ended), `stuck-srcu-reader`
    /// (a kvm->srcu reader never leaves, so the next memslot change waits forever) or
    /// `vcpu-panic` (vCPU 0 panics after 100 operations). Simulator-only; for kernel developers checking
    /// what a broken model reports.
    #[arg(long = "break", value_name = "WHAT", value_parser = run::Breakage::parse)]
    breakage: Option<run::Breakage>,
}

fn parse_duration(value: &str) -> Result<f64, String> {
    value
        .parse::<f64>()
        .ok()
        .filter(|secs| secs.is_finite() && *secs > 0.0 && *secs <= 86_400.0)
        .ok_or_else(|| format!("`{value}` is not a number of seconds in (0, 86400]"))
}

#[derive(Debug, Args)]
struct DiffArgs {
    /// How many sequences to run.
    #[arg(long, value_name = "N")]
    cases: u64,
    /// The seed (decimal or 0x hexadecimal); case i uses seed + i * 0x9e3779b97f4a7c15, so
    /// `--cases 1 --seed X` re-runs one case. Random if not given (printed on the first line).
    #[arg(long, value_name = "S", env = "GMEM_SEED", value_parser = parse_seed)]
    seed: Option<u64>,
    /// The most operations in one sequence.
    #[arg(long, value_name = "K", default_value_t = diff::DEFAULT_OPS_MAX as u64,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    ops_max: u64,
    /// The reference backend: `kvm` (this machine's /dev/kvm) or `sim:PROFILE` (the simulator
    /// under another profile, to test the fuzzer itself).
    #[arg(long, value_name = "BACKEND", default_value = diff::DEFAULT_REFERENCE, value_parser = parse_reference)]
    reference: String,
    /// The simulator's kernel profile.
    #[arg(long, default_value = diff::DEFAULT_KERNEL, value_parser = parse_kernel)]
    kernel: String,
    /// The most candidate sequences run while shrinking one divergence.
    #[arg(long, value_name = "N", default_value_t = diff::DEFAULT_SHRINK_ITERS)]
    shrink_iters: u32,
}

#[derive(Debug, Args)]
struct ExamplesArgs {
    /// The directory of `.gms` files (default: the repository's `examples/`).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Print every result line, not only mismatches.
    #[arg(long)]
    verbose: bool,
}

#[derive(Debug, Args)]
struct ScriptArgs {
    /// The scripts to run, each from a fresh state.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Where to run them.
    #[arg(long, env = "GMEM_BACKEND", default_value = "sim", value_parser = BACKENDS.to_vec())]
    backend: String,
    /// The kernel profile the simulator models: v6.14, v6.18 or v6.18-pvm, optionally with
    /// upstream fixes toggled (`v6.14+F1`, `v6.18-F2`).
    #[arg(long, env = "GMEM_KERNEL", default_value = DEFAULT_KERNEL, value_parser = parse_kernel)]
    kernel: String,
    /// The simulated host: `amd` (kvm_amd with SEV-SNP) or `intel` (kvm_intel with TDX). Default:
    /// the host a file's `# host:` line names, else amd; a file that names another host is an
    /// error. On the kvm backend the host is this machine (the name is only checked).
    #[arg(long, env = "GMEM_HOST", value_parser = HOSTS.to_vec())]
    host: Option<String>,
    /// Compare results with `=> EXPECTED` and exit 1 on any mismatch.
    #[arg(long)]
    check: bool,
}

/// Validates `--kernel` up front so a typo is a usage error, not a failure per file.
fn parse_kernel(value: &str) -> Result<String, String> {
    gmem_kvm::KernelProfile::by_name(value).map(|_| value.to_string())
}

/// Parses `--seed`: decimal or `0x` hexadecimal.
fn parse_seed(value: &str) -> Result<u64, String> {
    let parsed = match value.strip_prefix("0x").or_else(|| value.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    parsed.map_err(|_| format!("`{value}` is not a 64-bit seed (decimal or 0x hexadecimal)"))
}

fn parse_reference(value: &str) -> Result<String, String> {
    diff::check_reference(value).map(|_| value.to_string())
}

/// `GMEM_LOG` (a tracing filter such as `debug` or `gmem_kvm=trace`) turns on the spans every
/// uAPI entry point opens, printed on standard error so script output stays clean.
fn init_tracing() {
    if let Ok(filter) = std::env::var("GMEM_LOG") {
        let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|error| {
            eprintln!("gmem-sim: ignoring GMEM_LOG={filter}: {error}");
            tracing_subscriber::EnvFilter::new("off")
        });
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(io::stderr)
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::ENTER)
            .init();
    }
}

fn main() -> ExitCode {
    init_tracing();
    match Cli::parse().command {
        Command::Script(args) => run_scripts(&args),
        Command::Examples(args) => run_examples(&args),
        Command::Diff(args) => run_diff(&args),
        Command::Run(args) => run_run(&args),
    }
}

fn run_diff(args: &DiffArgs) -> ExitCode {
    let config = diff::Config {
        cases: args.cases,
        seed: args.seed.unwrap_or_else(rng::fresh_seed),
        ops_max: usize::try_from(args.ops_max).unwrap_or(usize::MAX),
        shrink_iters: args.shrink_iters,
        reference: args.reference.clone(),
        kernel: args.kernel.clone(),
    };
    let mut reference = || diff::open_reference(&args.reference, &args.kernel);
    let mut sim = || backends::open("sim", &args.kernel);
    let progress = Progress::on_terminal("gmem-sim diff");
    match diff::run(&config, &mut reference, &mut sim, &mut io::stdout().lock(), &progress) {
        Ok(summary) => ExitCode::from(u8::from(!summary.divergences.is_empty())),
        Err(error) => {
            eprintln!("gmem-sim diff: {error}");
            ExitCode::from(USAGE_ERROR)
        }
    }
}

fn run_run(args: &RunArgs) -> ExitCode {
    let mut config = run::Config::new(args.seed.unwrap_or_else(rng::fresh_seed));
    config.vm_type = args.vm_type;
    config.memory = args.memory;
    config.vcpus = args.vcpus;
    config.kernel = args.kernel.clone();
    config.watchdog = args.watchdog;
    config.breakage = args.breakage;
    if let Some(ops) = args.ops {
        config.length = run::Length::Ops(ops);
    } else if let Some(secs) = args.duration {
        config.length = run::Length::Duration(std::time::Duration::from_secs_f64(secs));
    }
    config.mix = match args.mix {
        Some(mix) => mix,
        None if args.vm_type == gmem_uapi::vmm::KVM_X86_DEFAULT_VM => {
            run::Mix::parse(run::DEFAULT_MIX_NO_PRIVATE).expect("the default mix parses")
        }
        None => config.mix,
    };
    // With --json the output is for a program: no bar even on a terminal.
    let progress = if args.json { Progress::hidden() } else { Progress::on_terminal("gmem-sim run") };
    let summary = match run::run(&config, &progress) {
        Ok(summary) => summary,
        Err(error) => {
            eprintln!("gmem-sim run: {error}");
            return ExitCode::from(USAGE_ERROR);
        }
    };
    for failure in &summary.failures {
        eprintln!("gmem-sim run: {failure}");
    }
    if let Some(diagnosis) = &summary.diagnosis {
        eprint!("{diagnosis}");
    }
    if args.json {
        println!("{}", summary.to_json());
    } else {
        print!("{}", summary.table());
    }
    if !summary.ok {
        eprintln!("gmem-sim run: FAILED; reproduce with: {}", summary.reproduce);
    }
    ExitCode::from(u8::from(!summary.ok))
}

/// The repository's examples directory, as built.
const EXAMPLES_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");

/// The longest a script's model may wait in one wait (a lock, a grace period, an invalidation
/// to end) before the script is reported as stuck. A script runs on one thread, so such a wait
/// has no one to end it: it is a broken model, never a slow one.
const SCRIPT_WAIT_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

fn run_examples(args: &ExamplesArgs) -> ExitCode {
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from(EXAMPLES_DIR));
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "gms"))
            .collect(),
        Err(error) => {
            eprintln!("gmem-sim: cannot read {}: {error}", dir.display());
            return ExitCode::from(USAGE_ERROR);
        }
    };
    files.sort();
    let Some(scripts) = parse_all(&files) else {
        return ExitCode::from(USAGE_ERROR);
    };
    let (mut checked, mut failed) = (0, 0);
    for (path, script) in files.iter().zip(&scripts) {
        let Some(profile) = script.profile.as_ref().filter(|profile| profile.number == 1) else {
            eprintln!("gmem-sim: {}: the first line must be `# profile: PROFILE`", path.display());
            return ExitCode::from(USAGE_ERROR);
        };
        let (profile, host) = (profile.value.clone(), script.host.unwrap_or_default());
        let mut factory = || backends::open_on("sim", &profile, host);
        let options = RunOptions { check: true, skip_is_pass: false };
        let mut output = Vec::new();
        let supervised = gmem_sync::waits::supervise(&path.display().to_string(), SCRIPT_WAIT_LIMIT, || {
            runner::run(std::slice::from_ref(&script.program), &mut factory, options, &mut output)
        });
        let report = match supervised {
            Ok(Ok(report)) => report,
            Ok(Err(error)) => {
                eprintln!("gmem-sim: {error}");
                return ExitCode::from(USAGE_ERROR);
            }
            Err(stuck) => {
                let text = String::from_utf8_lossy(&output);
                let last = text.lines().last().unwrap_or("(before its first line)");
                println!("{}: STUCK after `{last}`: {stuck}", path.display());
                failed += 1;
                continue;
            }
        };
        let text = String::from_utf8_lossy(&output);
        for line in text.lines().filter(|line| args.verbose || line.contains("(expected ")) {
            println!("  {line}");
        }
        let name = path.file_name().map_or_else(|| path.display().to_string(), |name| name.to_string_lossy().into());
        let shown_host = match script.host {
            Some(host) => format!(", host {}", host.name()),
            None => String::new(),
        };
        println!("{name} [{profile}{shown_host}]: {}", report.summary());
        checked += report.checked();
        failed += report.failed();
    }
    println!("{} files, {checked} expectations checked, {failed} failed", files.len());
    ExitCode::from(u8::from(failed > 0))
}

fn run_scripts(args: &ScriptArgs) -> ExitCode {
    let Some(scripts) = parse_all(&args.files) else {
        return ExitCode::from(USAGE_ERROR);
    };
    // clap has checked the name against HOSTS.
    let flag = args.host.as_deref().and_then(|name| Host::by_name(name).ok());
    let mut hosts = Vec::with_capacity(scripts.len());
    for script in &scripts {
        match backends::choose_host(script.host, flag) {
            Ok(host) => hosts.push(host),
            Err(error) => {
                eprintln!("gmem-sim: {}: {error}", script.program.file);
                return ExitCode::from(USAGE_ERROR);
            }
        }
    }
    let programs: Vec<Program> = scripts.into_iter().map(|script| script.program).collect();
    let mut factory = |program: &Program| {
        let index = programs.iter().position(|p| std::ptr::eq(p, program)).unwrap_or(0);
        backends::open_on(&args.backend, &args.kernel, hosts.get(index).copied().unwrap_or_default())
    };
    let options = RunOptions { check: args.check, skip_is_pass: false };
    let supervised = gmem_sync::waits::supervise("the script", SCRIPT_WAIT_LIMIT, || {
        runner::run_with(&programs, &mut factory, options, &mut io::stdout().lock())
    });
    let Ok(result) = supervised.map_err(|stuck| eprintln!("gmem-sim: STUCK after the last line printed: {stuck}"))
    else {
        return ExitCode::from(1);
    };
    match result {
        Ok(report) => {
            if args.check {
                eprintln!("{}", report.summary());
            }
            ExitCode::from(report.exit_status())
        }
        Err(error) => {
            eprintln!("gmem-sim: {error}");
            ExitCode::from(USAGE_ERROR)
        }
    }
}

/// A parsed script with what its header declares.
struct Script {
    program: Program,
    /// The `# profile:` line.
    profile: Option<script::HeaderLine>,
    /// The host its `# host:` line names.
    host: Option<Host>,
}

/// Reads and parses every file, printing every error; `None` if any failed.
fn parse_all(files: &[PathBuf]) -> Option<Vec<Script>> {
    let parsed: Vec<Result<Script, String>> = files.iter().map(PathBuf::as_path).map(parse_file).collect();
    let mut failed = false;
    for error in parsed.iter().filter_map(|p| p.as_ref().err()) {
        eprintln!("{error}");
        failed = true;
    }
    (!failed).then(|| parsed.into_iter().filter_map(Result::ok).collect())
}

fn parse_file(path: &Path) -> Result<Script, String> {
    let name = path.display().to_string();
    let source = std::fs::read_to_string(path).map_err(|error| format!("gmem-sim: cannot read {name}: {error}"))?;
    let header_error = |error: script::HeaderError| format!("{name}:{}: {}", error.line, error.message);
    let header = script::header(&source).map_err(header_error)?;
    let host = backends::declared_host(&source).map_err(header_error)?;
    let program = script::parse(&name, &source).map_err(|error| error.to_string())?;
    Ok(Script { program, profile: header.profile, host })
}
