//! What every handler gets: the models, the inference queue, the HTTP limits and, with
//! `--pacs-url`, the DICOMweb side (cheap to clone).

use std::sync::Arc;
use std::time::Duration;

use ldct_imaging::limits::SliceLimits;

use crate::budget::ByteBudget;
use crate::dicomweb::service::DicomWeb;
use crate::inference::batcher::Batcher;
use crate::inference::registry::Registry;

/// Limits and policies of the HTTP layer.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    /// Longest time to receive a body (`--body-timeout`).
    pub body_timeout: Duration,
    /// Request-body bytes held at once, all requests together (`--max-inflight-bytes`).
    pub body_budget: Arc<ByteBudget>,
    /// Largest slice decoded (`--max-slice-side`, `--max-slice-pixels`).
    pub slice: SliceLimits,
    pub request_timeout: Duration,
    pub api_token: Option<Arc<str>>,
}

/// Everything a handler needs (cheap to clone).
#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
    pub batcher: Arc<Batcher>,
    pub limits: Limits,
    /// The default strength of requests that name none (`--strength`).
    pub strength: f32,
    /// STOW-RS, the spool to the PACS and pull jobs (with `--pacs-url`).
    pub dicomweb: Option<Arc<DicomWeb>>,
    /// How derived DICOM series are labelled (`--derived-series-number-offset`,
    /// `--derived-disclaimer`).
    pub derived: Arc<ldct_imaging::derived::SeriesLabels>,
}
