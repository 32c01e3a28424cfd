//! The loom models, one module per protocol, linked into one test binary (one link step instead
//! of one per model). They only build under `--cfg gmem_loom`; without it the binary is empty.
//!
//! Run them all: `RUSTFLAGS="--cfg gmem_loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p gmem-models
//! --release --target-dir target/loom`; one model: add `--test models <module>::` (for
//! example `--test models loom_srcu::`). Each model's module documentation says what it explores.
#![cfg(gmem_loom)]

mod common;

mod loom_fault_vs_punch;
mod loom_folio_uaf;
mod loom_gmem_release_unbind;
mod loom_memslots_uaf;
mod loom_mirror_install_vs_zap;
mod loom_snp_prefault_vs_launch_update;
mod loom_srcu;
mod loom_tdx_state_transitions;
mod loom_tdx_track_vs_vcpu_entry;
mod loom_tlb_flush;
