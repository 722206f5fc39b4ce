//! Runs the pull jobs of [`super::store`].
//!
//! A job finds the study's CT series on the PACS by QIDO-RS (one series with `series=`;
//! series ldct made itself are skipped), fetches each by WADO-RS, denoises every slice
//! (a chunk of slices is queued to the batcher at once, so they batch), puts the derived
//! instances in the spool and waits until the push worker has stored them all on the
//! PACS.

use std::sync::Arc;
use std::time::Duration;

use actix_web::web::{self, Bytes};
use ldct_imaging::instance::is_uid;
use tokio::sync::Semaphore;

use super::store::{JobResult, JobState, Progress, SeriesResult};
use crate::audit::Origin;
use crate::dicomweb::client::{PacsClient, PacsError};
use crate::dicomweb::process::{self, FailureReason, Rejected};
use crate::dicomweb::rules::Verdict;
use crate::dicomweb::service::DicomWeb;
use crate::dicomweb::spool::Status;
use crate::error::ServeError;
use crate::inference::model::LoadedModel;
use crate::metrics::metrics;
use crate::state::AppState;

/// Jobs that fetch and denoise at the same time (more wait in `queued`).
pub const CONCURRENT_JOBS: usize = 2;

/// Runs the queued jobs, [`CONCURRENT_JOBS`] at a time, on the current (actix) runtime.
pub async fn run(state: AppState) {
    let Some(dw) = state.dicomweb.clone() else {
        return;
    };
    let Some(mut rx) = dw.jobs.take_receiver() else {
        return;
    };
    let permits = Arc::new(Semaphore::new(CONCURRENT_JOBS));
    while let Some(id) = rx.recv().await {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (state, dw) = (state.clone(), dw.clone());
        actix_web::rt::spawn(async move {
            let pushing = run_job(&state, &dw, &id).await;
            drop(permit);
            if pushing {
                wait_pushed(&dw, &id).await;
            }
        });
    }
}

/// Runs a queued job up to `pushing`; `true` when it is (now) waiting for the push.
async fn run_job(state: &AppState, dw: &Arc<DicomWeb>, id: &str) -> bool {
    let Some(job) = dw.jobs.get(id) else {
        return false;
    };
    match job.state {
        JobState::Pushing => true,
        JobState::Queued | JobState::Running => match fetch_and_denoise(state, dw, id).await {
            Ok(()) => true,
            Err(message) => {
                tracing::warn!(job = %id, "pull job failed (GET /v1/jobs/{{id}} says why)");
                tracing::debug!(job = %id, error = %message, "pull job failed");
                metrics().jobs.with_label_values(&["failed"]).inc();
                dw.jobs.update(id, |j| {
                    j.state = JobState::Failed;
                    j.error = Some(message);
                });
                false
            }
        },
        JobState::Succeeded | JobState::Failed => false,
    }
}

/// A failed PACS call as the job's error: what was asked and the kind and status of
/// the failure, never the PACS's own message (it may name studies or patients, and
/// callers of `GET /v1/jobs/{id}` read the job), which goes to the debug log.
fn pacs_failure(id: &str, what: &str, e: &PacsError) -> String {
    tracing::debug!(job = %id, error = %e, "{what} failed");
    format!("{what}: {}", e.summary())
}

/// Retries a PACS call on transient errors (1, 2, 4, 8 s).
async fn with_retries<T, F, Fut>(mut call: F) -> Result<T, PacsError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, PacsError>>,
{
    let mut wait = Duration::from_secs(1);
    for _ in 0..4 {
        match call().await {
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e.summary(), "PACS request failed; retrying in {wait:?}");
                actix_web::rt::time::sleep(wait).await;
                wait *= 2;
            }
            other => return other,
        }
    }
    call().await
}

async fn fetch_and_denoise(state: &AppState, dw: &Arc<DicomWeb>, id: &str) -> Result<(), String> {
    let job = dw
        .jobs
        .update(id, |j| {
            j.state = JobState::Running;
            j.progress = Progress::default();
            j.result = JobResult::default();
            j.pending.clear();
            j.error = None;
        })
        .ok_or("the job vanished")?;
    let model = state
        .registry
        .get(Some(&job.model))
        .map_err(|e| e.to_string())?;
    dw.jobs
        .update(id, |j| j.model_version = Some(model.version().to_owned()));
    let study = job.study_instance_uid.clone();
    let pacs = dw
        .pacs
        .as_ref()
        .ok_or("pull jobs need a DICOMweb PACS (--pacs-url)")?;
    let client = PacsClient::new(pacs);

    let found = with_retries(|| client.find_ct_series(&study, job.series_instance_uid.as_deref()))
        .await
        .map_err(|e| pacs_failure(id, "QIDO-RS search of the study's CT series", &e))?;
    let series: Vec<_> = found
        .into_iter()
        .filter(|s| {
            job.series_instance_uid
                .as_deref()
                .is_none_or(|want| s.series_instance_uid == want)
        })
        // A UID goes into a WADO-RS URL only when it is one (digits and dots).
        .filter(|s| {
            let ok = is_uid(&s.series_instance_uid);
            if !ok {
                tracing::warn!(job = %id, "the PACS listed a series with an invalid Series Instance UID: skipped");
            }
            ok
        })
        // ldct's own output is not denoised again.
        .filter(|s| {
            !s.description
                .as_deref()
                .is_some_and(|d| d.contains("[ldct "))
        })
        .collect();
    if series.is_empty() {
        return Err(match &job.series_instance_uid {
            Some(s) => format!("the PACS has no CT series {s} in study {study}"),
            None => format!("the PACS has no CT series in study {study} (other than ldct's)"),
        });
    }
    let estimate: usize = series.iter().map(|s| s.instances.unwrap_or(0)).sum();
    dw.jobs.update(id, |j| j.progress.total = estimate);
    tracing::info!(job = %id, series = series.len(), slices = estimate, "pull job running");

    let chunk = process::chunk_size(&state.batcher);
    for s in &series {
        let uid = s.series_instance_uid.clone();
        let parts = with_retries(|| client.retrieve_series(&study, &uid))
            .await
            .map_err(|e| pacs_failure(id, &format!("WADO-RS retrieval of series {uid}"), &e))?;
        let n = parts.len();
        dw.jobs.update(id, |j| {
            j.progress.total =
                j.progress.total + n - s.instances.unwrap_or(0).min(j.progress.total);
            j.result.series.push(SeriesResult {
                source_series_instance_uid: uid.clone(),
                derived_series_instance_uid: None,
                instances: n,
                denoised: 0,
                failed: 0,
                skipped: 0,
            });
        });
        for slices in parts.chunks(chunk) {
            let results = denoise_chunk(
                state,
                dw,
                &model,
                &study,
                slices.to_vec(),
                job.strength,
                &Origin::new("job", format!("job {id}")),
            )
            .await;
            dw.jobs.update(id, |j| {
                let i = j.result.series.len() - 1;
                for r in results {
                    j.progress.done += 1;
                    let r = match r {
                        Slice::Skipped(why) => {
                            tracing::debug!(%why, "slice skipped by a series rule");
                            j.result.skipped += 1;
                            j.result.series[i].skipped += 1;
                            continue;
                        }
                        Slice::Done(r) => r,
                    };
                    match r {
                        Ok(a) => {
                            j.result.denoised += 1;
                            j.result.series[i].denoised += 1;
                            j.result.series[i].derived_series_instance_uid =
                                Some(a.series_instance_uid);
                            j.pending.push(a.sop_instance_uid);
                        }
                        Err(f) => {
                            j.result.failed += 1;
                            j.result.series[i].failed += 1;
                            let sop = f.sop_instance_uid.as_deref().unwrap_or("?");
                            j.error(format!(
                                "series {uid} instance {sop}: {} (0x{:04X})",
                                f.message,
                                f.reason.code()
                            ));
                        }
                    }
                }
            });
        }
    }
    let job = dw
        .jobs
        .update(id, |j| {
            if !j.pending.is_empty() {
                j.state = JobState::Pushing;
            }
        })
        .ok_or("the job vanished")?;
    if job.pending.is_empty() {
        return Err(format!(
            "no slice could be denoised: {}",
            job.result
                .errors
                .first()
                .map(String::as_str)
                .unwrap_or("no slices")
        ));
    }
    tracing::info!(
        job = %id,
        denoised = job.result.denoised,
        failed = job.result.failed,
        "pull job spooled its derived series; waiting for the push"
    );
    Ok(())
}

/// What became of one retrieved slice.
#[derive(Debug, Clone)]
enum Slice {
    Done(Result<process::Accepted, Rejected>),
    /// Not denoised by a series rule (a localizer, a reformat, ...), with the reason.
    Skipped(String),
}

/// Decodes, denoises and spools one chunk of WADO-RS parts. Slices refused for lack of
/// resources (spool or inference queue full) are tried again for up to 10 minutes.
async fn denoise_chunk(
    state: &AppState,
    dw: &Arc<DicomWeb>,
    model: &Arc<LoadedModel>,
    study: &str,
    parts: Vec<Bytes>,
    strength: f32,
    origin: &Origin,
) -> Vec<Slice> {
    let mut results: Vec<Option<Slice>> = vec![None; parts.len()];
    let mut todo: Vec<usize> = (0..parts.len()).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        let batch: Vec<Bytes> = todo.iter().map(|&i| parts[i].clone()).collect();
        let expected = study.to_owned();
        let slice = state.limits.slice;
        let decoded = match web::block(move || {
            batch
                .iter()
                .map(|b| process::decode_part(b, None, Some(&expected), &slice))
                .collect::<Vec<_>>()
        })
        .await
        {
            Ok(d) => d,
            Err(e) => {
                let e = ServeError::from(e).to_string();
                for &i in &todo {
                    results[i] = Some(Slice::Done(Err(Rejected::unknown(
                        FailureReason::OutOfResources,
                        &e,
                    ))));
                }
                break;
            }
        };
        let mut sources = Vec::new();
        let mut source_idx = Vec::new();
        for (&i, d) in todo.iter().zip(decoded) {
            match d {
                Ok(s) => match dw.rules.verdict(&s.obj) {
                    Verdict::Denoise => {
                        sources.push(s);
                        source_idx.push(i);
                    }
                    // Already on the PACS: a rule that does not denoise it skips it.
                    Verdict::Pass(why) | Verdict::Refuse(why) => {
                        results[i] = Some(Slice::Skipped(why))
                    }
                },
                Err(r) => results[i] = Some(Slice::Done(Err(r))),
            }
        }
        let out = process::denoise_and_spool(
            &state.spooling(&dw.spool),
            model,
            sources,
            strength,
            origin,
        )
        .await;
        let mut again = Vec::new();
        let retry = tokio::time::Instant::now() < deadline;
        for (i, r) in source_idx.into_iter().zip(out) {
            match r {
                Err(f) if retry && f.reason.is_transient() => again.push(i),
                r => results[i] = Some(Slice::Done(r)),
            }
        }
        if again.is_empty() {
            break;
        }
        tracing::warn!(
            slices = again.len(),
            "out of resources (spool or inference queue full); retrying in 1 s"
        );
        actix_web::rt::time::sleep(Duration::from_secs(1)).await;
        todo = again;
    }
    results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Slice::Done(Err(Rejected::unknown(
                    FailureReason::ProcessingFailure,
                    "not processed",
                )))
            })
        })
        .collect()
}

/// Waits until the job's derived instances have left the spool, then finishes it.
async fn wait_pushed(dw: &Arc<DicomWeb>, id: &str) {
    loop {
        let Some(job) = dw.jobs.get(id) else {
            return;
        };
        if job.state != JobState::Pushing {
            return;
        }
        let (mut queued, mut pushed, mut failed) = (0, 0, Vec::new());
        for sop in &job.pending {
            match dw.spool.status(sop) {
                Status::Queued => queued += 1,
                Status::Failed(reason) => failed.push(format!("derived instance {sop}: {reason}")),
                Status::Absent => pushed += 1,
            }
        }
        if queued == 0 {
            let ok = pushed > 0;
            let job = dw.jobs.update(id, |j| {
                j.result.pushed = pushed;
                j.result.push_failed = failed.len();
                for f in failed {
                    j.error(f);
                }
                j.pending.clear();
                if ok {
                    j.state = JobState::Succeeded;
                } else {
                    j.state = JobState::Failed;
                    j.error = Some("the PACS refused every derived instance".into());
                }
            });
            metrics()
                .jobs
                .with_label_values(&[if ok { "succeeded" } else { "failed" }])
                .inc();
            if let Some(j) = job {
                tracing::info!(job = %id, state = ?j.state, pushed = j.result.pushed, "pull job finished");
            }
            return;
        }
        if job.result.pushed != pushed {
            dw.jobs.update(id, |j| j.result.pushed = pushed);
        }
        actix_web::rt::time::sleep(Duration::from_millis(250)).await;
    }
}
