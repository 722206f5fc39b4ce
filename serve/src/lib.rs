//! ldct-serve: the inference server (actix-web + ONNX Runtime).
//!
//! - [`config`]: command-line flags (every flag also an `LDCT_*` environment variable).
//! - [`device`]: `--device auto|cuda|cpu`, ONNX Runtime sessions (CUDA EP with
//!   `error_on_failure`).
//! - [`model`]: a loaded model folder with its sessions and pixel contract checks.
//! - [`registry`]: the loaded models, reloaded and swapped atomically.
//! - [`batcher`]: the bounded queue and dynamic batching on inference threads.
//! - [`pixels`]: HU <-> normalised, reflection padding, crop.
//! - [`pipeline`]: submit slices and wait for results (request timeout).
//! - [`oip`]: Open Inference Protocol v2 bodies and the binary tensor extension.
//! - [`app`], [`v1`], [`v2`]: the HTTP application, middleware and routes.
//! - [`error`]: the one error enum -> status code + JSON body.
//! - [`metrics`]: Prometheus metrics.
//! - [`instance`]: an uploaded DICOM instance as a single-frame CT slice.
//! - [`dicomweb`]: STOW-RS receiver, the spool and push worker to the PACS, the DICOMweb
//!   client, `multipart/related`; [`jobs`]: pull jobs (QIDO-RS + WADO-RS from the PACS).
//! - [`tls`], [`server`]: HTTPS and the server's start / graceful stop.

pub mod app;
pub mod batcher;
pub mod config;
pub mod device;
pub mod dicomweb;
pub mod error;
pub mod instance;
pub mod jobs;
pub mod metrics;
pub mod model;
pub mod oip;
pub mod pipeline;
pub mod pixels;
pub mod registry;
pub mod server;
pub mod tls;
pub mod v1;
pub mod v2;
