//! ldct-serve: the inference server (actix-web + ONNX Runtime).
//!
//! Layers, each using only the ones below it (no module cycles: `tests/python/
//! test_module_graph.py` derives the `use crate::...` graph of this folder and fails
//! on a cycle):
//!
//! - [`http`]: the HTTP layer. [`http::app`] composes the application: the
//!   middleware ([`http::middleware`]: bearer token, request metrics), the extractor
//!   settings and body helpers ([`http::extract`]) and one module per protocol, each
//!   `configure`-ing its own scope: [`http::v1`] (denoise, evaluate, models),
//!   [`http::oip`] (the Open Inference Protocol REST API, with its tensor codec
//!   [`http::tensor`] and the model repository extension [`http::repository`]), [`http::dicomweb`] (STOW-RS), [`http::jobs`] (pull jobs),
//!   [`http::ops`] (`/metrics`).
//! - [`grpc`]: the Open Inference Protocol's gRPC service (`--grpc-bind`), beside the
//!   HTTP layer and sharing its inference path ([`http::oip`]).
//! - [`state`]: what a handler gets (registry, batcher, limits, DICOMweb).
//! - [`jobs`]: pull jobs ([`jobs::store`]: the job files, retention; [`jobs::runner`]:
//!   QIDO-RS + WADO-RS from the PACS, denoise, spool).
//! - [`dimse`]: DICOM networking: the C-ECHO / C-STORE SCP (`--dimse-bind`, denoising
//!   through [`dicomweb::process`]) and the C-STORE SCU of `--pacs-dimse`.
//! - [`audit`]: the audit trail of derived instances (`--audit-log`).
//! - [`dicomweb`]: the PACS side: the DICOMweb client, `multipart/related`, the spool
//!   and its push worker, the shared denoise-and-spool steps, the STOW-RS response.
//! - [`inference`]: device and ONNX Runtime sessions, loaded models, the registry, the
//!   batching queue, the pipeline (submit and wait) and the pixel steps of the
//!   pixel contract.
//! - [`durable`]: written, fsynced, renamed, folder fsynced (the spool and the jobs).
//! - [`error`] (the one error enum: status, stable code, type and link, both body
//!   forms), [`metrics`] (Prometheus), [`config`] (flags).
//! - [`server`], [`tls`]: start and graceful stop.

pub mod audit;
pub mod budget;
pub mod config;
pub mod dicomweb;
pub mod dimse;
pub mod durable;
pub mod error;
pub mod grpc;
pub mod http;
pub mod inference;
pub mod jobs;
pub mod metrics;
pub mod server;
pub mod state;
pub mod tls;
pub mod untrusted;
