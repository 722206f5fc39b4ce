//! The pull jobs and their files. States: `queued` -> `running` -> `pushing` ->
//! `succeeded` | `failed` (what each does: [`super::runner`]).
//!
//! Jobs survive a restart: each is a JSON file in `--jobs-dir`, rewritten at every
//! state change and every chunk, durably (written to a temporary file, fsynced, renamed,
//! the folder fsynced: [`crate::durable`], as the spool does). On start, a job that was
//! `queued` or `running` is run again from the beginning (its derived UIDs are
//! deterministic and the spool holds each UID once, so nothing is duplicated); after
//! [`MAX_RESTARTS`] interrupted runs it is marked `failed` with the reason. A `pushing`
//! job goes back to waiting for the spool.
//!
//! Retention ([`Keep`], `--jobs-keep`): finished jobs (`succeeded`, `failed`) are kept
//! for an age (`7d`, `12h`, `30m`, `90s`) or up to a count (`100`, the most recently
//! finished); older ones are deleted, file and all, on start and whenever a job
//! finishes. Active jobs are never deleted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::durable;
use crate::metrics::metrics;

/// Interrupted runs (server restarts) after which a job is given up.
pub const MAX_RESTARTS: u32 = 3;
/// Error messages kept per job.
const MAX_ERRORS: usize = 100;

/// How long finished jobs are kept (`--jobs-keep`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Finished jobs whose last change is at most this old.
    Age(Duration),
    /// The most recently finished jobs, this many.
    Count(usize),
}

impl Default for Keep {
    fn default() -> Self {
        Keep::Age(Duration::from_secs(7 * 86_400))
    }
}

impl FromStr for Keep {
    type Err = String;

    /// `100` (a count), or an age: a number with a unit `s`, `m`, `h` or `d` (`7d`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let bad = || {
            format!(
                "{s:?}: give a count of finished jobs (100) or an age with a unit s, m, h or d (7d)"
            )
        };
        if let Ok(n) = s.parse::<usize>() {
            return Ok(Keep::Count(n));
        }
        let unit = match s.chars().last().ok_or_else(bad)? {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = s[..s.len() - 1].trim().parse().map_err(|_| bad())?;
        n.checked_mul(unit)
            .map(|secs| Keep::Age(Duration::from_secs(secs)))
            .ok_or_else(bad)
    }
}

impl std::fmt::Display for Keep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Keep::Count(n) => write!(f, "{n}"),
            Keep::Age(d) => write!(f, "{}s", d.as_secs()),
        }
    }
}

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

    pub fn is_finished(self) -> bool {
        !self.is_active()
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
    /// Slices a series rule did not denoise (localizers, reformats, ...).
    #[serde(default)]
    pub skipped: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResult {
    pub series: Vec<SeriesResult>,
    /// Slices denoised and spooled.
    pub denoised: usize,
    /// Slices that could not be denoised.
    pub failed: usize,
    /// Slices a series rule did not denoise.
    #[serde(default)]
    pub skipped: usize,
    /// Derived instances stored on the PACS, and refused by it.
    pub pushed: usize,
    pub push_failed: usize,
    pub errors: Vec<String>,
}

fn full_strength() -> f32 {
    1.0
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
    /// The denoising strength in [0, 1] (job files written before it: 1).
    #[serde(default = "full_strength")]
    pub strength: f32,
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

    /// Records a slice's error (the first [`MAX_ERRORS`] are kept).
    pub fn error(&mut self, message: String) {
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
    #[error("{max} pull jobs are already queued or running (--max-active-jobs); retry later")]
    TooManyActive { max: usize },
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
    keep: Keep,
    /// Most jobs queued, running or pushing at once ([`Jobs::with_max_active`]).
    max_active: usize,
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
    /// Opens (creating) the jobs folder, applies the restart rules and the retention
    /// (module docs); the jobs to run are queued for [`super::runner::run`].
    pub fn open(dir: &Path, keep: Keep) -> Result<Jobs, JobsError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let jobs = Jobs {
            max_active: usize::MAX,
            dir: dir.to_path_buf(),
            keep,
            jobs: Mutex::new(BTreeMap::new()),
            tx,
            rx: Mutex::new(Some(rx)),
        };
        let mut loaded = Vec::new();
        for e in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
            let path = e.map_err(|e| io_err(dir, e))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with('.') && name.ends_with(".json.tmp") {
                // A write interrupted before its rename: the job file is the previous one.
                let _ = std::fs::remove_file(&path);
                continue;
            }
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
        jobs.apply_retention();
        Ok(jobs)
    }

    /// The retention rule.
    pub fn keep(&self) -> Keep {
        self.keep
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Deletes the finished jobs that `--jobs-keep` no longer keeps; returns how many.
    pub fn apply_retention(&self) -> usize {
        self.apply_retention_at(Utc::now())
    }

    fn apply_retention_at(&self, now: DateTime<Utc>) -> usize {
        let mut jobs = self.lock();
        let mut finished: Vec<(DateTime<Utc>, String)> = jobs
            .values()
            .filter(|j| j.state.is_finished())
            .map(|j| (j.updated, j.id.clone()))
            .collect();
        // Newest first.
        finished.sort_by(|a, b| b.cmp(a));
        let expired: Vec<String> = match self.keep {
            Keep::Count(n) => finished.into_iter().skip(n).map(|(_, id)| id).collect(),
            Keep::Age(age) => {
                let age = chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
                finished
                    .into_iter()
                    .filter(|(t, _)| now.signed_duration_since(*t) > age)
                    .map(|(_, id)| id)
                    .collect()
            }
        };
        for id in &expired {
            jobs.remove(id);
        }
        drop(jobs);
        for id in &expired {
            let path = self.path(id);
            if let Err(e) = durable::remove(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(file = %path.display(), error = %e, "cannot delete an expired job file");
                }
            }
        }
        if !expired.is_empty() {
            tracing::info!(deleted = expired.len(), keep = %self.keep, "expired pull jobs deleted");
        }
        expired.len()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Job>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the job's file durably (temporary file, fsync, rename, folder fsync).
    fn persist(&self, job: &Job) -> Result<(), JobsError> {
        let path = self.path(&job.id);
        let tmp = self.dir.join(format!(".{}.json.tmp", job.id));
        let json = serde_json::to_vec_pretty(job).map_err(|e| io_err(&path, e))?;
        durable::write_atomic(&tmp, &path, &json).map_err(|e| io_err(&path, e))
    }

    /// Caps the jobs queued, running or pushing at once: a new job beyond it is refused
    /// ([`JobsError::TooManyActive`]); jobs resumed at start are never refused.
    pub fn with_max_active(mut self, max: usize) -> Jobs {
        self.max_active = max.max(1);
        self
    }

    /// A new queued job, or the active one for the same study, series, model and
    /// strength. `true` when it is new.
    pub fn submit(
        &self,
        study: &str,
        series: Option<&str>,
        model: &str,
        strength: f32,
    ) -> Result<(Job, bool), JobsError> {
        let mut jobs = self.lock();
        if let Some(j) = jobs.values().find(|j| {
            j.state.is_active()
                && j.study_instance_uid == study
                && j.series_instance_uid.as_deref() == series
                && j.model == model
                && j.strength == strength
        }) {
            return Ok((j.clone(), false));
        }
        if jobs.values().filter(|j| j.state.is_active()).count() >= self.max_active {
            return Err(JobsError::TooManyActive {
                max: self.max_active,
            });
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
            strength,
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
    /// A job that finishes with this change triggers the retention.
    pub fn update(&self, id: &str, f: impl FnOnce(&mut Job)) -> Option<Job> {
        let mut jobs = self.lock();
        let job = jobs.get_mut(id)?;
        let was_active = job.state.is_active();
        f(job);
        job.updated = Utc::now();
        let job = job.clone();
        drop(jobs);
        if let Err(e) = self.persist(&job) {
            tracing::error!(error = %e, "cannot write a job's state");
        }
        if was_active && job.state.is_finished() {
            self.apply_retention();
        }
        Some(job)
    }

    /// The channel of jobs to run ([`super::runner::run`] takes it once).
    pub fn take_receiver(&self) -> Option<mpsc::UnboundedReceiver<String>> {
        self.rx.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_persist_and_resume_by_the_rules() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = Jobs::open(dir.path(), Keep::default()).unwrap();
        let mut rx = jobs.take_receiver().unwrap();
        let (a, new) = jobs.submit("1.2.3", None, "tiny", 1.0).unwrap();
        assert!(new && is_job_id(&a.id));
        assert_eq!(rx.try_recv().unwrap(), a.id);
        // The same request while active: the same job.
        let (again, new) = jobs.submit("1.2.3", None, "tiny", 1.0).unwrap();
        assert!(!new);
        assert_eq!(again.id, a.id);
        let (b, _) = jobs.submit("1.2.3", Some("1.2.3.4"), "tiny", 1.0).unwrap();
        assert_ne!(b.id, a.id);
        let (c, _) = jobs.submit("1.2.9", None, "tiny", 1.0).unwrap();
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

        let jobs = Jobs::open(dir.path(), Keep::default()).unwrap();
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

    #[test]
    fn keep_parses_counts_and_ages() {
        assert_eq!("100".parse::<Keep>(), Ok(Keep::Count(100)));
        assert_eq!("0".parse::<Keep>(), Ok(Keep::Count(0)));
        assert_eq!(
            "7d".parse::<Keep>(),
            Ok(Keep::Age(Duration::from_secs(604_800)))
        );
        assert_eq!(
            "12h".parse::<Keep>(),
            Ok(Keep::Age(Duration::from_secs(43_200)))
        );
        assert_eq!(
            "30m".parse::<Keep>(),
            Ok(Keep::Age(Duration::from_secs(1_800)))
        );
        assert_eq!(
            "90s".parse::<Keep>(),
            Ok(Keep::Age(Duration::from_secs(90)))
        );
        for bad in ["", "d", "7w", "-1", "1.5h", "x7d"] {
            assert!(bad.parse::<Keep>().is_err(), "{bad}");
        }
    }

    fn finish(jobs: &Jobs, study: &str, state: JobState) -> String {
        let (j, _) = jobs.submit(study, None, "tiny", 1.0).unwrap();
        jobs.update(&j.id, |j| j.state = state);
        j.id
    }

    #[test]
    fn retention_by_count_deletes_the_oldest_finished_jobs_and_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = Jobs::open(dir.path(), Keep::Count(2)).unwrap();
        let active = jobs.submit("1.2.0", None, "tiny", 1.0).unwrap().0.id;
        let mut done = Vec::new();
        for (i, state) in [
            JobState::Succeeded,
            JobState::Failed,
            JobState::Succeeded,
            JobState::Failed,
        ]
        .into_iter()
        .enumerate()
        {
            done.push(finish(&jobs, &format!("1.2.{}", i + 1), state));
            std::thread::sleep(Duration::from_millis(5));
        }
        // Each finish applied the rule: the two newest finished jobs and the active one.
        let files = |d: &Path| {
            let mut v: Vec<String> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            v.sort();
            v
        };
        let mut want: Vec<String> = [&active, &done[2], &done[3]]
            .iter()
            .map(|id| format!("{id}.json"))
            .collect();
        want.sort();
        assert_eq!(files(dir.path()), want);
        assert!(jobs.get(&done[0]).is_none() && jobs.get(&done[1]).is_none());
        assert!(jobs.get(&active).is_some());
        drop(jobs);
        // The same on a restart with a smaller count; the active job is never deleted.
        let jobs = Jobs::open(dir.path(), Keep::Count(0)).unwrap();
        assert_eq!(files(dir.path()), [format!("{active}.json")]);
        assert!(jobs.get(&active).is_some());
    }

    #[test]
    fn retention_by_age_deletes_jobs_finished_longer_ago() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = Jobs::open(dir.path(), Keep::Age(Duration::from_secs(3600))).unwrap();
        let old = finish(&jobs, "1.2.1", JobState::Succeeded);
        let new = finish(&jobs, "1.2.2", JobState::Failed);
        let active = jobs.submit("1.2.3", None, "tiny", 1.0).unwrap().0.id;
        assert_eq!(jobs.apply_retention(), 0);
        // Two hours later `old`'s last change is too old; pretend `new` changed then.
        let later = Utc::now() + chrono::Duration::hours(2);
        jobs.lock().get_mut(&new).unwrap().updated = later;
        jobs.lock().get_mut(&active).unwrap().updated = Utc::now() - chrono::Duration::days(9);
        assert_eq!(jobs.apply_retention_at(later), 1);
        assert!(jobs.get(&old).is_none() && !dir.path().join(format!("{old}.json")).exists());
        assert!(jobs.get(&new).is_some() && jobs.get(&active).is_some());
    }

    #[test]
    fn active_jobs_are_capped_and_a_repeat_joins_its_job() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = Jobs::open(dir.path(), Keep::default())
            .unwrap()
            .with_max_active(2);
        let a = jobs.submit("1.2.1", None, "tiny", 1.0).unwrap();
        assert!(a.1);
        assert!(jobs.submit("1.2.2", None, "tiny", 1.0).unwrap().1);
        assert!(matches!(
            jobs.submit("1.2.3", None, "tiny", 1.0),
            Err(JobsError::TooManyActive { max: 2 })
        ));
        // The same study again is the active job, not a new one.
        let again = jobs.submit("1.2.1", None, "tiny", 1.0).unwrap();
        assert_eq!((again.0.id, again.1), (a.0.id.clone(), false));
        // A finished job frees its place.
        jobs.update(&a.0.id, |j| j.state = JobState::Succeeded);
        assert!(jobs.submit("1.2.3", None, "tiny", 1.0).unwrap().1);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
    }

    #[test]
    fn an_interrupted_write_leaves_the_previous_job_file() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = Jobs::open(dir.path(), Keep::default()).unwrap();
        let (j, _) = jobs.submit("1.2.3", None, "tiny", 1.0).unwrap();
        drop(jobs);
        // A crash between the write of the temporary file and its rename.
        std::fs::write(dir.path().join(format!(".{}.json.tmp", j.id)), b"{ half").unwrap();
        let jobs = Jobs::open(dir.path(), Keep::default()).unwrap();
        assert_eq!(jobs.get(&j.id).unwrap().state, JobState::Queued);
        assert!(!dir.path().join(format!(".{}.json.tmp", j.id)).exists());
    }
}
