//! gmem-sim: scenario scripts for Linux KVM guest_memfd, run on the simulator or on `/dev/kvm`.
//!
//! A scenario script (`.gms`, specified in `docs/script-format.md`) lists the system calls
//! and ioctls a VMM would issue against KVM and guest_memfd, one per line, with the result
//! each must give. This crate reads such scripts, runs them on a [`backend::Backend`], and
//! prints results in the format the spec fixes, so the same script can be compared across
//! backends and kernel profiles. The `gmem-sim` binary (`src/main.rs`) is its command line:
//! `gmem-sim script FILE... [--backend sim|kvm] [--kernel PROFILE] [--host amd|intel] [--check]`,
//! and `gmem-sim examples`, `gmem-sim diff` and `gmem-sim run` for the modules below.
//!
//! Modules:
//! - [`script`]: the `.gms` language: lexer, parser, and the typed program ([`script::Op`],
//!   one variant per verb) with `FILE:LINE:COLUMN` parse errors;
//! - [`backend`]: the [`backend::Backend`] trait every backend implements, and its result
//!   types ([`backend::Failure`], [`backend::Stat`], ...);
//! - [`runner`]: executes programs on fresh backends, binds names, formats results and
//!   checks expectations, returning a structured [`runner::Report`];
//! - [`backends`]: opens a backend by name and kernel profile for the command line;
//! - [`diff`]: the differential fuzzer (`gmem-sim diff`): random host-side sequences run on
//!   `/dev/kvm` and on the simulator, compared line by line, divergences shrunk to scripts;
//! - [`run`]: the full-system workload (`gmem-sim run`): a VMM, vCPU threads and a control
//!   thread on the simulator, with data-integrity and invariant checks;
//! - [`rng`]: the seeded generator `run` and `diff` draw from;
//! - [`progress`]: the progress bar long commands draw on a terminal.

#![warn(missing_docs)]

pub mod backend;
pub mod backends;
pub mod diff;
pub mod progress;
pub mod rng;
pub mod run;
pub mod runner;
pub mod script;

/// The environment variables that give the command line's most repeated options their default
/// (an option given on the command line wins): `GMEM_SEED` (`run`, `diff`), `GMEM_KERNEL`
/// (`run`, `script`; `diff` keeps its own default, the profile of this machine's kernel),
/// `GMEM_VM_TYPE` and `GMEM_WATCHDOG` (`run`), `GMEM_BACKEND` and `GMEM_HOST` (`script`).
/// Tests that start `gmem-sim` remove them so a developer's settings cannot change the result.
pub const ENV_DEFAULTS: &[&str] =
    &["GMEM_SEED", "GMEM_KERNEL", "GMEM_VM_TYPE", "GMEM_WATCHDOG", "GMEM_BACKEND", "GMEM_HOST"];
