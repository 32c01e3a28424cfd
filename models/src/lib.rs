//! gmem-models: loom models of the kernel protocols gmem-sim reproduces.
//!
//! The models live in `models/tests/loom_<protocol>.rs` and only build under `--cfg gmem_loom`.
