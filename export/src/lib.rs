//! ldct-export: trained networks as ONNX model folders, and their checks.
//!
//! - [`check`]: verify a model folder (manifest, checksum, loads and runs in ONNX
//!   Runtime with the ldct pixel contract).

pub mod check;
