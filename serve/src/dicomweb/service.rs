//! The PACS side of the server, from the flags: the DICOMweb PACS, where derived
//! instances are pushed, the spool, the pull jobs and the push policy (present with
//! `--pacs-url` or `--pacs-dimse`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::client::{PacsAuth, PacsConfig, PacsConfigError};
use super::push::{PushPolicy, PushTarget};
use super::rules::SeriesRules;
use super::spool::{Spool, SpoolError};
use crate::config::Config;
use crate::dimse::scu::StoreScu;
use crate::jobs::store::{Jobs, JobsError};

/// The PACS side of the server (present with `--pacs-url` or `--pacs-dimse`).
pub struct DicomWeb {
    /// The DICOMweb PACS (`--pacs-url`): pull jobs search and fetch there, and derived
    /// instances go there by STOW-RS unless `--pacs-dimse` is given.
    pub pacs: Option<PacsConfig>,
    /// Where derived instances are pushed.
    pub target: PushTarget,
    /// Which received instances are denoised, passed through or refused.
    pub rules: SeriesRules,
    pub spool: Arc<Spool>,
    pub jobs: Arc<Jobs>,
    pub push: PushPolicy,
    /// Largest STOW-RS request body.
    pub max_body_bytes: usize,
}

impl std::fmt::Debug for DicomWeb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DicomWeb")
            .field("pacs", &self.pacs)
            .field("target", &self.target.to_string())
            .field("spool", &self.spool)
            .field("push", &self.push)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DicomWebError {
    #[error(transparent)]
    Pacs(#[from] PacsConfigError),
    #[error("spool {dir}: {source}")]
    Spool {
        dir: PathBuf,
        #[source]
        source: SpoolError,
    },
    #[error(transparent)]
    Jobs(#[from] JobsError),
    #[error("{0}")]
    Config(String),
}

fn non_empty(s: &Option<String>) -> Option<String> {
    s.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

impl DicomWeb {
    /// From the flags: `None` without `--pacs-url`. Opens the spool and the jobs folder
    /// (resuming what a previous run left).
    pub fn from_config(config: &Config) -> Result<Option<DicomWeb>, DicomWebError> {
        let url = non_empty(&config.pacs_url);
        if url.is_none() && config.pacs_dimse.is_none() {
            return Ok(None);
        }
        let auth = match (
            non_empty(&config.pacs_user),
            config.pacs_password.clone(),
            non_empty(&config.pacs_token),
        ) {
            (Some(_), _, Some(_)) => {
                return Err(DicomWebError::Config(
                    "give --pacs-user/--pacs-password or --pacs-token, not both".into(),
                ))
            }
            (Some(user), password, None) => PacsAuth::Basic {
                user,
                password: password.unwrap_or_default(),
            },
            (None, _, Some(token)) => PacsAuth::Bearer(token),
            (None, _, None) => PacsAuth::None,
        };
        let pacs = match url {
            Some(url) => Some(PacsConfig::new(
                &url,
                auth,
                Duration::from_secs_f64(config.pacs_timeout),
                config.pacs_max_fetch_bytes,
                config.pacs_ca_cert.as_deref(),
            )?),
            None => None,
        };
        let target = match (&config.pacs_dimse, &pacs) {
            (Some(peer), _) => PushTarget::Dimse(StoreScu {
                peer: peer.clone(),
                calling_ae_title: config.dimse_ae_title.clone(),
                timeout: Duration::from_secs_f64(config.dimse_timeout),
                max_pdu: config.dimse_max_pdu,
            }),
            (None, Some(p)) => PushTarget::Stow(p.clone()),
            (None, None) => return Ok(None),
        };
        let spool = Spool::open(&config.spool_dir, config.spool_max_bytes).map_err(|source| {
            DicomWebError::Spool {
                dir: config.spool_dir.clone(),
                source,
            }
        })?;
        let jobs_dir = config
            .jobs_dir
            .clone()
            .unwrap_or_else(|| config.spool_dir.join("jobs"));
        let jobs = Jobs::open(&jobs_dir, config.jobs_keep)?
            .with_max_active(config.max_active_jobs as usize);
        let retry_min = Duration::from_secs_f64(config.pacs_retry_min);
        Ok(Some(DicomWeb {
            pacs,
            target,
            rules: SeriesRules {
                localizer: config.rule_localizer,
                non_axial: config.rule_non_axial,
                thickness_mm: config.rule_thickness_mm,
                thickness_action: config.rule_thickness_action,
            },
            spool: Arc::new(spool),
            jobs: Arc::new(jobs),
            push: PushPolicy {
                batch: config.pacs_batch as usize,
                batch_bytes: 64 << 20,
                retry_min,
                retry_max: Duration::from_secs_f64(config.pacs_retry_max).max(retry_min),
            },
            max_body_bytes: config.dicomweb_max_body_bytes,
        }))
    }
}
