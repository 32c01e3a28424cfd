//! The `gmem-sim` command line. See the crate documentation of `gmem_sim`.

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use gmem_sim::backends::{self, BACKENDS, DEFAULT_KERNEL, KERNELS};
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
}

#[derive(Debug, Args)]
struct ScriptArgs {
    /// The scripts to run, each from a fresh state.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Where to run them.
    #[arg(long, default_value = "sim", value_parser = BACKENDS.to_vec())]
    backend: String,
    /// The kernel profile the simulator models.
    #[arg(long, default_value = DEFAULT_KERNEL, value_parser = KERNELS.to_vec())]
    kernel: String,
    /// Compare results with `=> EXPECTED` and exit 1 on any mismatch.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Script(args) => run_scripts(&args),
    }
}

fn run_scripts(args: &ScriptArgs) -> ExitCode {
    let Some(programs) = parse_all(&args.files) else {
        return ExitCode::from(USAGE_ERROR);
    };
    let mut factory = || backends::open(&args.backend, &args.kernel);
    let options = RunOptions { check: args.check, skip_is_pass: false };
    match runner::run(&programs, &mut factory, options, &mut io::stdout().lock()) {
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

/// Reads and parses every file, printing every error; `None` if any failed.
fn parse_all(files: &[PathBuf]) -> Option<Vec<Program>> {
    let parsed: Vec<Result<Program, String>> = files.iter().map(PathBuf::as_path).map(parse_file).collect();
    let mut failed = false;
    for error in parsed.iter().filter_map(|p| p.as_ref().err()) {
        eprintln!("{error}");
        failed = true;
    }
    (!failed).then(|| parsed.into_iter().filter_map(Result::ok).collect())
}

fn parse_file(path: &Path) -> Result<Program, String> {
    let name = path.display().to_string();
    let source = std::fs::read_to_string(path).map_err(|error| format!("gmem-sim: cannot read {name}: {error}"))?;
    script::parse(&name, &source).map_err(|error| error.to_string())
}
