//! ldct-serve: the inference server (actix-web + ONNX Runtime).
//!
//! - [`config`]: command-line flags (every flag also an `LDCT_*` environment variable).

pub mod config;
