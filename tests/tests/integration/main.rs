//! The integration tests of gmem-sim, one module per area, linked into one test binary (each
//! test binary is a link step of its own). Two stay binaries of their own because they read
//! state that is global to a process: `harness_lockdep.rs` provokes a lockdep report (lockdep's
//! graph is global to a binary, and the report would fail every [`CheckedHost`] check here), and
//! `kvm_backend_releases.rs` counts the process's descriptors and mappings.
//!
//! One module: `cargo test -p gmem-tests --test integration <module>::` (for example
//! `conformance::`, `seed_errors::bind::`).
//!
//! [`CheckedHost`]: gmem_tests::CheckedHost

mod conformance;
mod file_rmap;
mod harness;
mod huge;
mod mirror;
mod mmu;
mod mmu_notifier;
mod parity;
mod proptest_memslots;
mod seed_bugs;
mod seed_errors;
mod snp;
mod snp_bugs;
mod snp_invariants;
mod tdx;
mod tdx_fixes;
mod tdx_guest;
mod thp;
mod tlb;
mod use_after_free;
