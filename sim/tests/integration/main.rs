//! The integration tests of `gmem-sim`, one module per former test file, linked into one test
//! binary (each test binary is a link step of its own). `diff_kvm.rs` stays a binary of its own:
//! it drives the kvm backend on real descriptors of the test process, which the tests here
//! (spawning the command, opening files) would share.
//!
//! One module: `cargo test -p gmem-sim --test integration <module>::` (for example `runner::`).

mod cli;
mod diff;
mod examples;
mod parser_no_panic;
mod run;
mod runner;
mod snp_verbs;
mod tdx_verbs;
