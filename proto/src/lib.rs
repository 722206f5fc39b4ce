//! ldct-proto: the contracts every ldct crate shares.
//!
//! - [`arch`]: the network description (a layer graph with named parameters) that
//!   the Candle builder and the ONNX writer both walk.
//! - [`contract`]: the pixel contract of a model (input/output names, the float32
//!   `[N, 1, H, W]` check, the padding rule, the smoke-test image).
//! - [`onnx`]: the subset of the ONNX IR schema that ldct writes (generated from
//!   `onnx.proto` by prost at build time, field numbers per the ONNX spec).
//! - [`manifest`]: the model card (`manifest.json`) written beside every `model.onnx`.
//! - [`model_dir`]: a model folder (`model.onnx` + `manifest.json`), checksum-verified.
//! - [`runtime`] (feature `runtime`): locating and loading the ONNX Runtime shared
//!   library, one environment per process.

pub mod arch;
pub mod contract;
pub mod manifest;
pub mod model_dir;
pub mod onnx;
#[cfg(feature = "runtime")]
pub mod runtime;

pub use manifest::{Manifest, ManifestError};
