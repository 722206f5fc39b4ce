//! The push worker: drains the spool to the PACS, oldest first, in batches: by STOW-RS
//! (`--pacs-url`) or by DIMSE C-STORE (`--pacs-dimse`, [`crate::dimse::scu`]).
//!
//! - Stored instances are deleted from the spool (`ldct_pacs_push_total{result="ok"}`).
//! - The PACS is unreachable, overloaded, failing or refusing our credentials (network
//!   errors, 401, 403, 404, 408, 429, 5xx; Failure Reason A7xx): nothing is dropped; the
//!   batch is retried after an exponential backoff (`--pacs-retry-min` doubling up to
//!   `--pacs-retry-max`), counted as `result="failed"` per instance and attempt.
//! - The PACS refuses the content (400, 409, 413, 415, 422 for the whole request, or a
//!   non-A7xx Failure Reason for an instance): a batch of several is retried one
//!   instance per request to find the culprit; a single refused instance moves to the
//!   spool's `failed/` folder (`result="rejected"`).
//!
//! Derived UIDs are deterministic, so an instance pushed again after a crash between the
//! PACS's answer and the deletion is the same instance to the PACS, never a duplicate.

use std::sync::Arc;
use std::time::Duration;

use actix_web::web::{self, Bytes};

use super::client::{InstanceOutcome, PacsClient, PacsConfig, PacsError};
use super::spool::{Entry, Spool};
use crate::dimse::scu::{ScuError, StoreScu};
use crate::metrics::metrics;

/// Where derived instances go.
#[derive(Debug, Clone)]
pub enum PushTarget {
    /// STOW-RS to the DICOMweb PACS (`--pacs-url`).
    Stow(PacsConfig),
    /// C-STORE to a DICOM node (`--pacs-dimse`).
    Dimse(StoreScu),
}

impl std::fmt::Display for PushTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PushTarget::Stow(p) => write!(f, "STOW-RS {}", p.root),
            PushTarget::Dimse(s) => write!(f, "C-STORE {}", s.peer),
        }
    }
}

enum Sender {
    Stow(PacsClient),
    Dimse(StoreScu),
}

#[derive(Debug, thiserror::Error)]
enum PushError {
    #[error(transparent)]
    Stow(#[from] PacsError),
    #[error(transparent)]
    Dimse(#[from] ScuError),
}

impl PushError {
    fn refuses_content(&self) -> bool {
        match self {
            PushError::Stow(e) => e.refuses_content(),
            // C-STORE refusals are per instance; a failed association is retried.
            PushError::Dimse(_) => false,
        }
    }

    fn summary(&self) -> String {
        match self {
            PushError::Stow(e) => e.summary(),
            PushError::Dimse(e) => e.summary(),
        }
    }
}

impl Sender {
    async fn send(
        &self,
        bodies: &[Bytes],
        sops: &[String],
    ) -> Result<Vec<InstanceOutcome>, PushError> {
        match self {
            Sender::Stow(c) => Ok(c.stow(bodies, sops).await?),
            Sender::Dimse(scu) => {
                let started = std::time::Instant::now();
                let r = scu.store(bodies).await;
                metrics()
                    .pacs_request_duration
                    .with_label_values(&["c-store"])
                    .observe(started.elapsed().as_secs_f64());
                Ok(r?)
            }
        }
    }
}

/// Batching and retry settings of the push worker.
#[derive(Debug, Clone, Copy)]
pub struct PushPolicy {
    /// Most instances per STOW-RS request.
    pub batch: usize,
    /// Most bytes per STOW-RS request (a single larger instance still goes alone).
    pub batch_bytes: u64,
    pub retry_min: Duration,
    pub retry_max: Duration,
}

impl Default for PushPolicy {
    fn default() -> Self {
        Self {
            batch: 16,
            batch_bytes: 64 << 20,
            retry_min: Duration::from_millis(500),
            retry_max: Duration::from_secs(60),
        }
    }
}

fn count(result: &str, n: usize) {
    metrics()
        .pacs_push
        .with_label_values(&[result])
        .inc_by(n as u64);
}

/// Runs forever on the current (actix) runtime.
pub async fn run(spool: Arc<Spool>, target: PushTarget, policy: PushPolicy) {
    let client = match &target {
        PushTarget::Stow(pacs) => Sender::Stow(PacsClient::new(pacs)),
        PushTarget::Dimse(scu) => Sender::Dimse(scu.clone()),
    };
    let mut backoff = policy.retry_min;
    // Instances still to send one per request after a refused batch.
    let mut isolate = 0usize;
    tracing::info!(
        target = %target,
        queued = spool.depth(),
        "PACS push worker started"
    );
    loop {
        let limit = if isolate > 0 { 1 } else { policy.batch };
        let batch = spool.next_batch(limit, policy.batch_bytes);
        if batch.is_empty() {
            spool.notified().await;
            continue;
        }
        let Some((entries, bodies)) = read(&spool, batch).await else {
            continue;
        };
        let sops: Vec<String> = entries.iter().map(|e| e.sop_instance_uid.clone()).collect();
        match client.send(&bodies, &sops).await {
            Ok(outcomes) => {
                isolate = isolate.saturating_sub(1);
                let mut retry = false;
                let (mut ok, mut failed, mut rejected) = (0, 0, 0);
                for (entry, outcome) in entries.iter().zip(outcomes) {
                    match outcome {
                        InstanceOutcome::Stored => {
                            spool.remove(entry);
                            ok += 1;
                            tracing::debug!(sop = %entry.sop_instance_uid, "pushed to the PACS");
                        }
                        InstanceOutcome::Retry(reason) => {
                            failed += 1;
                            retry = true;
                            tracing::debug!(sop = %entry.sop_instance_uid, %reason, "PACS out of resources");
                        }
                        InstanceOutcome::Rejected(reason) => {
                            rejected += 1;
                            tracing::debug!(sop = %entry.sop_instance_uid, %reason, "refused by the PACS");
                            spool.fail(entry, &reason);
                        }
                    }
                }
                count("ok", ok);
                count("failed", failed);
                count("rejected", rejected);
                if rejected > 0 {
                    tracing::warn!(
                        rejected,
                        "the PACS refused instances: moved to the spool's failed/ folder"
                    );
                }
                tracing::info!(pushed = ok, queued = spool.depth(), "push to the PACS done");
                if retry {
                    tracing::warn!(
                        failed,
                        "the PACS is out of resources; retrying in {backoff:?}"
                    );
                    actix_web::rt::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(policy.retry_max);
                } else {
                    backoff = policy.retry_min;
                }
            }
            Err(e) if e.refuses_content() => {
                if entries.len() > 1 {
                    tracing::warn!(error = %e.summary(), instances = entries.len(), "the PACS refused a STOW-RS request; retrying its instances one by one");
                    tracing::debug!(error = %e, "STOW-RS refused");
                    isolate = entries.len();
                } else {
                    isolate = isolate.saturating_sub(1);
                    count("rejected", 1);
                    tracing::warn!(error = %e.summary(), "the PACS refused an instance: moved to the spool's failed/ folder");
                    tracing::debug!(sop = %entries[0].sop_instance_uid, error = %e, "STOW-RS refused");
                    for entry in &entries {
                        spool.fail(entry, &e.to_string());
                    }
                }
            }
            Err(e) => {
                count("failed", entries.len());
                tracing::debug!(error = %e, "push to the PACS failed");
                tracing::warn!(
                    error = %e.summary(),
                    queued = spool.depth(),
                    "PACS push failed; retrying in {backoff:?}"
                );
                actix_web::rt::time::sleep(backoff).await;
                backoff = (backoff * 2).min(policy.retry_max);
            }
        }
    }
}

/// Reads the batch's files (on the blocking pool). A file that cannot be read is moved
/// to `failed/`; `None` when nothing is left to send.
async fn read(spool: &Arc<Spool>, batch: Vec<Entry>) -> Option<(Vec<Entry>, Vec<Bytes>)> {
    let s = spool.clone();
    let read = web::block(move || {
        let mut entries = Vec::with_capacity(batch.len());
        let mut bodies = Vec::with_capacity(batch.len());
        for e in batch {
            match std::fs::read(&e.path) {
                Ok(b) => {
                    entries.push(e);
                    bodies.push(Bytes::from(b));
                }
                Err(err) => {
                    tracing::error!(seq = e.seq, error = %err.kind(), "cannot read a spooled instance");
                    s.fail(&e, &format!("cannot read the spooled file: {err}"));
                }
            }
        }
        (entries, bodies)
    })
    .await;
    match read {
        Ok((entries, bodies)) if !entries.is_empty() => Some((entries, bodies)),
        Ok(_) => None,
        Err(_) => {
            // The blocking pool is gone: the server is stopping.
            actix_web::rt::time::sleep(Duration::from_secs(1)).await;
            None
        }
    }
}
