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
    /// The audit trail of derived instances (`--audit-log`).
    pub audit: Option<Arc<crate::audit::AuditLog>>,
}

impl AppState {
    /// What [`crate::dicomweb::process::denoise_and_spool`] needs, writing to `spool`.
    pub fn spooling<'a>(
        &'a self,
        spool: &'a Arc<crate::dicomweb::spool::Spool>,
    ) -> crate::dicomweb::process::Spooling<'a> {
        crate::dicomweb::process::Spooling {
            batcher: &self.batcher,
            timeout: self.limits.request_timeout,
            spool,
            labels: &self.derived,
            audit: self.audit.as_deref(),
        }
    }

    /// Why the server is not ready (no model loaded, inference stalled), or `None`
    /// when it is: what `/v2/health/ready` and gRPC's ServerReady answer.
    pub fn not_ready(&self) -> Option<String> {
        if self.registry.is_empty() {
            Some("no model is loaded".into())
        } else {
            self.batcher.stalled(self.limits.request_timeout)
        }
    }
}
