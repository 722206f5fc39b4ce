//! The audit trail (`--audit-log`): one JSON line per derived instance that STOW-RS,
//! a pull job or a DIMSE C-STORE produced or failed to produce: when, through which
//! route and from whom (peer address; calling AE title for DIMSE), the source's and the
//! derived instance's UIDs, the model (name, version, SHA-256 of its file), the
//! strength and the outcome. UIDs only: never a patient's name, ID or any other
//! attribute of the data set.
//!
//! Lines are appended to the file (created; `-` is standard output) and flushed one by
//! one, so a line is complete or absent; a write that fails is logged and counted
//! (`ldct_audit_write_errors_total`) and never fails the request.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;

use crate::metrics::metrics;

/// Where a request came from.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Origin {
    /// `stow-rs`, `job` or `dimse`.
    pub route: &'static str,
    /// Peer address (`ip:port`), or for DIMSE `AE_TITLE@ip:port`.
    pub caller: String,
}

impl Origin {
    pub fn new(route: &'static str, caller: impl Into<String>) -> Self {
        Self {
            route,
            caller: caller.into(),
        }
    }
}

/// The model of a record.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ModelRef<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub sha256: &'a str,
}

/// One derived instance (or the failure to make one).
#[derive(Debug, Clone, Serialize)]
pub struct Record<'a> {
    /// RFC 3339, UTC, microseconds.
    pub time: String,
    pub route: &'a str,
    pub caller: &'a str,
    pub source_sop_instance_uid: Option<&'a str>,
    pub source_series_instance_uid: Option<&'a str>,
    pub derived_sop_instance_uid: Option<&'a str>,
    pub derived_series_instance_uid: Option<&'a str>,
    pub model: ModelRef<'a>,
    pub strength: f32,
    /// `accepted` (denoised and in the spool) or `failed`.
    pub outcome: &'a str,
    /// The failure status (e.g. `0xA700`) when failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// The audit log's sink.
pub struct AuditLog {
    out: Mutex<Sink>,
    target: String,
}

enum Sink {
    File(File),
    Stdout,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("target", &self.target)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("--audit-log {path}: {source}")]
pub struct AuditError {
    path: String,
    source: std::io::Error,
}

impl AuditLog {
    /// Opens `path` for appending (created, parent folders too); `-` is standard output.
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        let target = path.display().to_string();
        if target == "-" {
            return Ok(AuditLog {
                out: Mutex::new(Sink::Stdout),
                target,
            });
        }
        let err = |source| AuditError {
            path: target.clone(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(err)?;
        Ok(AuditLog {
            out: Mutex::new(Sink::File(file)),
            target,
        })
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    /// Appends one line (the record's JSON and a newline, in one write).
    pub fn write(&self, record: &Record<'_>) {
        let mut line = match serde_json::to_vec(record) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode an audit record");
                metrics().audit_write_errors.inc();
                return;
            }
        };
        line.push(b'\n');
        let Ok(mut out) = self.out.lock() else {
            metrics().audit_write_errors.inc();
            return;
        };
        let written = match &mut *out {
            Sink::File(f) => f.write_all(&line),
            Sink::Stdout => {
                let mut s = std::io::stdout().lock();
                s.write_all(&line).and_then(|_| s.flush())
            }
        };
        if let Err(e) = written {
            tracing::error!(target = %self.target, error = %e, "cannot write to the audit log");
            metrics().audit_write_errors.inc();
        }
    }
}

/// Now, as the records state it.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_appended_one_json_line_each() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        let model = ModelRef {
            name: "default",
            version: "2.2.0",
            sha256: "ab",
        };
        for outcome in ["accepted", "failed"] {
            log.write(&Record {
                time: now(),
                route: "dimse",
                caller: "CT01@127.0.0.1:5000",
                source_sop_instance_uid: Some("1.2.3"),
                source_series_instance_uid: Some("1.2"),
                derived_sop_instance_uid: (outcome == "accepted").then_some("2.25.1"),
                derived_series_instance_uid: None,
                model: model.clone(),
                strength: 1.0,
                outcome,
                status: (outcome == "failed").then(|| "0xA700".into()),
            });
        }
        // Reopened: appended, not truncated.
        drop(log);
        let log = AuditLog::open(&path).unwrap();
        log.write(&Record {
            time: now(),
            route: "stow-rs",
            caller: "127.0.0.1:1",
            source_sop_instance_uid: None,
            source_series_instance_uid: None,
            derived_sop_instance_uid: None,
            derived_series_instance_uid: None,
            model,
            strength: 0.5,
            outcome: "failed",
            status: None,
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["outcome"], "accepted");
        assert_eq!(lines[0]["model"]["version"], "2.2.0");
        assert!(lines[0].get("status").is_none());
        assert_eq!(lines[1]["status"], "0xA700");
        assert_eq!(lines[2]["route"], "stow-rs");
        assert!(lines[0]["time"].as_str().unwrap().ends_with('Z'));
    }
}
