//! Pull jobs: `POST /v1/studies/{StudyInstanceUID}/denoise[?series=UID&model=NAME]`
//! answers 202 with a job; `GET /v1/jobs/{id}` reports it.
//!
//! A job finds the study's CT series on the PACS by QIDO-RS (one series with `series=`;
//! series ldct made itself are skipped), fetches each by WADO-RS, denoises every slice
//! (a chunk of slices is queued to the batcher at once, so they batch), puts the derived
//! instances in the spool and waits until the push worker has stored them all on the
//! PACS. States: `queued` -> `running` -> `pushing` -> `succeeded` | `failed`.
//!
//! Jobs survive a restart: each is a JSON file in `--jobs-dir`, rewritten at every
//! state change and every chunk. On start, a job that was `queued` or `running` is run
//! again from the beginning (its derived UIDs are deterministic and the spool holds each
//! UID once, so nothing is duplicated); after [`MAX_RESTARTS`] interrupted runs it is
//! marked `failed` with the reason. A `pushing` job goes back to waiting for the spool.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use actix_web::http::header;
use actix_web::web::{self, Bytes};
use actix_web::HttpResponse;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, Semaphore};

use crate::app::AppState;
use crate::dicomweb::client::{PacsClient, PacsError};
use crate::dicomweb::process::{self, FailureReason, Rejected};
use crate::dicomweb::spool::Status;
use crate::dicomweb::DicomWeb;
use crate::error::ServeError;
use crate::instance::is_uid;
use crate::metrics::metrics;

/// Interrupted runs (server restarts) after which a job is given up.
pub const MAX_RESTARTS: u32 = 3;
/// Jobs that fetch and denoise at the same time (more wait in `queued`).
pub const CONCURRENT_JOBS: usize = 2;
/// Error messages kept per job.
const MAX_ERRORS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Pushing,
    Succeeded,
    Failed,
}

impl JobState {
    pub fn is_active(self) -> bool {
        matches!(
            self,
            JobState::Queued | JobState::Running | JobState::Pushing
        )
    }
}

/// Slices done (denoised or failed) of the slices found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesResult {
    pub source_series_instance_uid: String,
    /// The one derived series of this source series and model version.
    pub derived_series_instance_uid: Option<String>,
    pub instances: usize,
    pub denoised: usize,
    pub failed: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResult {
    pub series: Vec<SeriesResult>,
    /// Slices denoised and spooled.
    pub denoised: usize,
    /// Slices that could not be denoised.
    pub failed: usize,
    /// Derived instances stored on the PACS, and refused by it.
    pub pushed: usize,
    pub push_failed: usize,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub state: JobState,
    pub study_instance_uid: String,
    pub series_instance_uid: Option<String>,
    pub model: String,
    pub model_version: Option<String>,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
    pub progress: Progress,
    pub result: JobResult,
    /// Why the job failed.
    pub error: Option<String>,
    /// Runs interrupted by a server restart.
    pub restarts: u32,
    /// Derived SOP Instance UIDs spooled by this run (until they are pushed).
    #[serde(default)]
    pub pending: Vec<String>,
}

impl Job {
    /// The JSON of `GET /v1/jobs/{id}`.
    pub fn view(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Some(o) = v.as_object_mut() {
            o.remove("pending");
            o.insert(
                "href".into(),
                Value::String(format!("/v1/jobs/{}", self.id)),
            );
        }
        v
    }

    fn error(&mut self, message: String) {
        if self.result.errors.len() < MAX_ERRORS {
            self.result.errors.push(message);
        } else if self.result.errors.len() == MAX_ERRORS {
            self.result.errors.push("(more errors not listed)".into());
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error("jobs folder {path}: {message}")]
    Io { path: String, message: String },
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> JobsError {
    JobsError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// The jobs, in memory and one JSON file each in the jobs folder.
pub struct Jobs {
    dir: PathBuf,
    jobs: Mutex<BTreeMap<String, Job>>,
    tx: mpsc::UnboundedSender<String>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn new_id(study: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(NEXT_ID.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    h.update(Utc::now().timestamp_nanos_opt().unwrap_or(0).to_le_bytes());
    h.update(study.as_bytes());
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A job id as [`new_id`] makes them (and nothing that could name another file).
pub fn is_job_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Jobs {
    /// Opens (creating) the jobs folder and applies the restart rules (module docs); the
    /// jobs to run are queued for [`run`].
    pub fn open(dir: &Path) -> Result<Jobs, JobsError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let jobs = Jobs {
            dir: dir.to_path_buf(),
            jobs: Mutex::new(BTreeMap::new()),
            tx,
            rx: Mutex::new(Some(rx)),
        };
        let mut loaded = Vec::new();
        for e in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
            let path = e.map_err(|e| io_err(dir, e))?.path();
            if path.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Job>(&b).map_err(|e| e.to_string()))
            {
                Ok(job) if is_job_id(&job.id) => loaded.push(job),
                Ok(_) => {
                    tracing::warn!(file = %path.display(), "ignoring a job file with an invalid id")
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "ignoring an unreadable job file")
                }
            }
        }
        loaded.sort_by_key(|j| j.created);
        for mut job in loaded {
            match job.state {
                JobState::Queued | JobState::Running => {
                    if job.state == JobState::Running {
                        job.restarts += 1;
                    }
                    if job.restarts > MAX_RESTARTS {
                        job.state = JobState::Failed;
                        job.error = Some(format!(
                            "interrupted by {} server restarts while running; not resumed again",
                            job.restarts
                        ));
                        metrics().jobs.with_label_values(&["failed"]).inc();
                    } else {
                        job.state = JobState::Queued;
                    }
                    job.updated = Utc::now();
                    jobs.persist(&job)?;
                }
                JobState::Pushing | JobState::Succeeded | JobState::Failed => {}
            }
            let resume = job.state.is_active();
            let id = job.id.clone();
            jobs.lock().insert(id.clone(), job);
            if resume {
                tracing::info!(job = %id, "resuming a pull job after a restart");
                let _ = jobs.tx.send(id);
            }
        }
        Ok(jobs)
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Job>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn persist(&self, job: &Job) -> Result<(), JobsError> {
        let path = self.dir.join(format!("{}.json", job.id));
        let tmp = self.dir.join(format!(".{}.json.tmp", job.id));
        let json = serde_json::to_vec_pretty(job).map_err(|e| io_err(&path, e))?;
        std::fs::write(&tmp, json).map_err(|e| io_err(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))
    }

    /// A new queued job, or the active one for the same study, series and model.
    /// `true` when it is new.
    pub fn submit(
        &self,
        study: &str,
        series: Option<&str>,
        model: &str,
    ) -> Result<(Job, bool), JobsError> {
        let mut jobs = self.lock();
        if let Some(j) = jobs.values().find(|j| {
            j.state.is_active()
                && j.study_instance_uid == study
                && j.series_instance_uid.as_deref() == series
                && j.model == model
        }) {
            return Ok((j.clone(), false));
        }
        let now = Utc::now();
        let job = Job {
            id: new_id(study),
            state: JobState::Queued,
            study_instance_uid: study.to_owned(),
            series_instance_uid: series.map(str::to_owned),
            model: model.to_owned(),
            model_version: None,
            created: now,
            updated: now,
            progress: Progress::default(),
            result: JobResult::default(),
            error: None,
            restarts: 0,
            pending: Vec::new(),
        };
        self.persist(&job)?;
        jobs.insert(job.id.clone(), job.clone());
        drop(jobs);
        let _ = self.tx.send(job.id.clone());
        Ok((job, true))
    }

    pub fn get(&self, id: &str) -> Option<Job> {
        self.lock().get(id).cloned()
    }

    /// Changes a job and writes it (a write error is logged: the job goes on in memory).
    pub fn update(&self, id: &str, f: impl FnOnce(&mut Job)) -> Option<Job> {
        let mut jobs = self.lock();
        let job = jobs.get_mut(id)?;
        f(job);
        job.updated = Utc::now();
        let job = job.clone();
        drop(jobs);
        if let Err(e) = self.persist(&job) {
            tracing::error!(error = %e, "cannot write a job's state");
        }
        Some(job)
    }

    /// The channel of jobs to run ([`run`] takes it once).
    pub fn take_receiver(&self) -> Option<mpsc::UnboundedReceiver<String>> {
        self.rx.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

#[derive(Debug, Deserialize)]
pub struct PullQuery {
    pub series: Option<String>,
    pub model: Option<String>,
}

/// `POST /v1/studies/{StudyInstanceUID}/denoise[?series=UID&model=NAME]`: 202 with the
/// job (a new one, or the active one for the same study, series and model) and its
/// `Location`.
pub async fn create(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<PullQuery>,
) -> Result<HttpResponse, ServeError> {
    let dw = state
        .dicomweb
        .clone()
        .ok_or(ServeError::PacsNotConfigured)?;
    let study = path.into_inner();
    if !is_uid(&study) {
        return Err(ServeError::BadRequest(format!(
            "{study:?} is not a valid Study Instance UID"
        )));
    }
    let series = query.series.as_deref().filter(|s| !s.is_empty());
    if let Some(s) = series {
        if !is_uid(s) {
            return Err(ServeError::BadRequest(format!(
                "series={s:?} is not a valid Series Instance UID"
            )));
        }
    }
    let model = state.registry.get(query.model.as_deref())?;
    let (job, created) = dw
        .jobs
        .submit(&study, series, model.name())
        .map_err(|e| ServeError::Internal(e.to_string()))?;
    if created {
        tracing::info!(job = %job.id, model = model.name(), "pull job queued");
    }
    Ok(HttpResponse::Accepted()
        .insert_header((header::LOCATION, format!("/v1/jobs/{}", job.id)))
        .json(job.view()))
}

/// `GET /v1/jobs/{id}`.
pub async fn get(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ServeError> {
    let dw = state
        .dicomweb
        .clone()
        .ok_or(ServeError::PacsNotConfigured)?;
    let id = path.into_inner();
    let job = is_job_id(&id)
        .then(|| dw.jobs.get(&id))
        .flatten()
        .ok_or_else(|| ServeError::NotFound(format!("no job {id:?}")))?;
    Ok(HttpResponse::Ok().json(job.view()))
}

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
    let client = PacsClient::new(&dw.pacs);

    let found = with_retries(|| client.find_ct_series(&study, job.series_instance_uid.as_deref()))
        .await
        .map_err(|e| format!("QIDO-RS search of the study's CT series: {e}"))?;
    let series: Vec<_> = found
        .into_iter()
        .filter(|s| {
            job.series_instance_uid
                .as_deref()
                .is_none_or(|want| s.series_instance_uid == want)
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
            .map_err(|e| format!("WADO-RS retrieval of series {uid}: {e}"))?;
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
            });
        });
        for slices in parts.chunks(chunk) {
            let results = denoise_chunk(state, dw, &model, &study, slices.to_vec()).await;
            dw.jobs.update(id, |j| {
                let i = j.result.series.len() - 1;
                for r in results {
                    j.progress.done += 1;
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

/// Decodes, denoises and spools one chunk of WADO-RS parts. Slices refused for lack of
/// resources (spool or inference queue full) are tried again for up to 10 minutes.
async fn denoise_chunk(
    state: &AppState,
    dw: &Arc<DicomWeb>,
    model: &Arc<crate::model::LoadedModel>,
    study: &str,
    parts: Vec<Bytes>,
) -> Vec<Result<process::Accepted, Rejected>> {
    let mut results: Vec<Option<Result<process::Accepted, Rejected>>> = vec![None; parts.len()];
    let mut todo: Vec<usize> = (0..parts.len()).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        let batch: Vec<Bytes> = todo.iter().map(|&i| parts[i].clone()).collect();
        let expected = study.to_owned();
        let decoded = match web::block(move || {
            batch
                .iter()
                .map(|b| process::decode_part(b, None, Some(&expected)))
                .collect::<Vec<_>>()
        })
        .await
        {
            Ok(d) => d,
            Err(e) => {
                let e = ServeError::from(e).to_string();
                for &i in &todo {
                    results[i] = Some(Err(Rejected::unknown(FailureReason::OutOfResources, &e)));
                }
                break;
            }
        };
        let mut sources = Vec::new();
        let mut source_idx = Vec::new();
        for (&i, d) in todo.iter().zip(decoded) {
            match d {
                Ok(s) => {
                    sources.push(s);
                    source_idx.push(i);
                }
                Err(r) => results[i] = Some(Err(r)),
            }
        }
        let out = process::denoise_and_spool(
            &state.batcher,
            state.limits.request_timeout,
            &dw.spool,
            model,
            sources,
        )
        .await;
        let mut again = Vec::new();
        let retry = tokio::time::Instant::now() < deadline;
        for (i, r) in source_idx.into_iter().zip(out) {
            match r {
                Err(f) if retry && f.reason.is_transient() => again.push(i),
                r => results[i] = Some(r),
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
                Err(Rejected::unknown(
                    FailureReason::ProcessingFailure,
                    "not processed",
                ))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_persist_and_resume_by_the_rules() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = Jobs::open(dir.path()).unwrap();
        let mut rx = jobs.take_receiver().unwrap();
        let (a, new) = jobs.submit("1.2.3", None, "tiny").unwrap();
        assert!(new && is_job_id(&a.id));
        assert_eq!(rx.try_recv().unwrap(), a.id);
        // The same request while active: the same job.
        let (again, new) = jobs.submit("1.2.3", None, "tiny").unwrap();
        assert!(!new);
        assert_eq!(again.id, a.id);
        let (b, _) = jobs.submit("1.2.3", Some("1.2.3.4"), "tiny").unwrap();
        assert_ne!(b.id, a.id);
        let (c, _) = jobs.submit("1.2.9", None, "tiny").unwrap();
        jobs.update(&a.id, |j| j.state = JobState::Running);
        jobs.update(&b.id, |j| {
            j.state = JobState::Running;
            j.restarts = MAX_RESTARTS;
        });
        jobs.update(&c.id, |j| {
            j.state = JobState::Pushing;
            j.pending = vec!["2.25.1".into()];
        });
        drop(jobs);

        let jobs = Jobs::open(dir.path()).unwrap();
        let mut rx = jobs.take_receiver().unwrap();
        let a2 = jobs.get(&a.id).unwrap();
        assert_eq!((a2.state, a2.restarts), (JobState::Queued, 1));
        let b2 = jobs.get(&b.id).unwrap();
        assert_eq!(b2.state, JobState::Failed);
        assert!(b2.error.unwrap().contains("server restarts"));
        let c2 = jobs.get(&c.id).unwrap();
        assert_eq!(c2.state, JobState::Pushing);
        assert_eq!(c2.pending, ["2.25.1"]);
        let mut resumed = vec![rx.try_recv().unwrap(), rx.try_recv().unwrap()];
        resumed.sort();
        let mut want = vec![a.id.clone(), c.id.clone()];
        want.sort();
        assert_eq!(resumed, want);
        assert!(rx.try_recv().is_err());
        // The API view hides the internal list.
        let v = c2.view();
        assert!(v.get("pending").is_none());
        assert_eq!(v["state"], "pushing");
        assert!(!is_job_id("../../etc/passwd"));
    }
}
