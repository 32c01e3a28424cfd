//! gmem-models: loom models of the kernel protocols gmem-sim reproduces.
//!
//! The models live in `models/tests/models/loom_<protocol>.rs` (one test binary) and only build
//! under `--cfg gmem_loom`.
