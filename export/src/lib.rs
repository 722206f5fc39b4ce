//! ldct-export: trained networks as ONNX model folders, and their checks.
//!
//! - [`onnx_writer`]: the ONNX graph of a `proto::arch` network (fp32 or fp16).
//! - [`manifest`]: the model card of an export, filled from the run folder.
//! - [`parity`]: ONNX Runtime (the `ort` crate) against the Candle forward.
//! - [`export`]: run folder -> `model.onnx` + `manifest.json`, parity proven.
//! - [`check`]: verify a model folder (manifest, checksum, loads and runs in ONNX
//!   Runtime with the ldct pixel contract).

pub mod check;
pub mod export;
pub mod manifest;
pub mod onnx_writer;
pub mod parity;

pub use export::{export_network, export_run, ExportError, ExportOptions, ExportReport};
pub use onnx_writer::Precision;
