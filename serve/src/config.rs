//! Server configuration from flags and `LDCT_*` environment variables.
//!
//! Every flag has an environment variable of the same name in upper case with an
//! `LDCT_` prefix (`--max-batch` is `LDCT_MAX_BATCH`); a flag given on the command
//! line wins over the environment.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Where inference runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceChoice {
    /// CUDA when the loaded ONNX Runtime has the CUDA execution provider and an NVIDIA
    /// GPU is present, else CPU.
    Auto,
    /// CUDA only: a model whose CUDA session cannot be created is rejected.
    Cuda,
    /// CPU only.
    Cpu,
}

/// How the CUDA memory arena grows (ONNX Runtime's `arena_extend_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ArenaStrategy {
    NextPowerOfTwo,
    SameAsRequested,
}

#[derive(Debug, Clone, Parser)]
#[command(name = "ldct-serve", version, about = "ldct inference server")]
pub struct Config {
    /// Folder of model folders (each holds model.onnx + manifest.json).
    #[arg(long, env = "LDCT_MODELS", default_value = "models")]
    pub models: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "LDCT_BIND", default_value = "127.0.0.1:8080")]
    pub bind: String,
    /// Inference device.
    #[arg(long, env = "LDCT_DEVICE", value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// CUDA device id (with --device cuda or auto on a GPU).
    #[arg(long, env = "LDCT_CUDA_DEVICE_ID", default_value_t = 0)]
    pub cuda_device_id: i32,
    /// Size limit of the CUDA memory arena in bytes (default: no limit).
    #[arg(long, env = "LDCT_GPU_MEM_LIMIT")]
    pub gpu_mem_limit: Option<usize>,
    /// Growth strategy of the CUDA memory arena.
    #[arg(long, env = "LDCT_ARENA_STRATEGY", value_enum, default_value_t = ArenaStrategy::NextPowerOfTwo)]
    pub arena_strategy: ArenaStrategy,
    /// ONNX Runtime intra-op threads per session (0: ONNX Runtime's default, one per
    /// physical core).
    #[arg(long, env = "LDCT_INTRA_THREADS", default_value_t = 0)]
    pub intra_threads: usize,
    /// Inference threads (each with its own session per model). Inference never runs on
    /// the HTTP worker threads.
    #[arg(long, env = "LDCT_INFERENCE_WORKERS", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub inference_workers: u32,
    /// Largest batch one inference call runs.
    #[arg(long, env = "LDCT_MAX_BATCH", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_batch: u32,
    /// How long the oldest queued slice waits for others of the same model and padded
    /// shape before its batch runs anyway (milliseconds).
    #[arg(long, env = "LDCT_BATCH_TIMEOUT_MS", default_value_t = 2)]
    pub batch_timeout_ms: u64,
    /// Slices that may wait for inference; beyond it requests get 503 with Retry-After.
    #[arg(long, env = "LDCT_QUEUE_CAPACITY", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub queue_capacity: u32,
    /// Largest request body in bytes (413 beyond it).
    #[arg(long, env = "LDCT_MAX_BODY_BYTES", default_value_t = 64 << 20)]
    pub max_body_bytes: usize,
    /// Longest wait for an inference result, in seconds (504 beyond it).
    #[arg(long, env = "LDCT_REQUEST_TIMEOUT", default_value_t = 30.0,
          value_parser = parse_seconds)]
    pub request_timeout: f64,
    /// When set, every route but /v2/health/* and /metrics needs
    /// `Authorization: Bearer <token>`.
    #[arg(long, env = "LDCT_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// PEM certificate chain: serve HTTPS (with --tls-key).
    #[arg(long, env = "LDCT_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for --tls-cert.
    #[arg(long, env = "LDCT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// HTTP worker threads (default: one per physical core).
    #[arg(long, env = "LDCT_HTTP_WORKERS")]
    pub http_workers: Option<usize>,
    /// Seconds to let in-flight requests finish after SIGTERM / SIGINT.
    #[arg(long, env = "LDCT_SHUTDOWN_TIMEOUT", default_value_t = 30)]
    pub shutdown_timeout: u64,
    /// DICOMweb root of the PACS (e.g. http://orthanc:8042/dicom-web): derived instances
    /// are pushed there by STOW-RS, and pull jobs search (QIDO-RS) and fetch (WADO-RS)
    /// there. Without it the DICOMweb routes answer 501.
    #[arg(long, env = "LDCT_PACS_URL")]
    pub pacs_url: Option<String>,
    /// User name for HTTP basic authentication to the PACS (with --pacs-password).
    #[arg(long, env = "LDCT_PACS_USER", conflicts_with = "pacs_token")]
    pub pacs_user: Option<String>,
    /// Password for HTTP basic authentication to the PACS.
    #[arg(
        long,
        env = "LDCT_PACS_PASSWORD",
        hide_env_values = true,
        requires = "pacs_user"
    )]
    pub pacs_password: Option<String>,
    /// Bearer token for the PACS (`Authorization: Bearer ...`).
    #[arg(long, env = "LDCT_PACS_TOKEN", hide_env_values = true)]
    pub pacs_token: Option<String>,
    /// PEM certificates trusted for an https:// PACS, besides the Mozilla roots.
    #[arg(long, env = "LDCT_PACS_CA_CERT")]
    pub pacs_ca_cert: Option<PathBuf>,
    /// Longest wait for one request to the PACS, response body included (seconds).
    #[arg(long, env = "LDCT_PACS_TIMEOUT", default_value_t = 120.0, value_parser = parse_seconds)]
    pub pacs_timeout: f64,
    /// Most instances per STOW-RS request to the PACS.
    #[arg(long, env = "LDCT_PACS_BATCH", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub pacs_batch: u32,
    /// First wait before retrying a failed push (seconds); doubles up to --pacs-retry-max.
    #[arg(long, env = "LDCT_PACS_RETRY_MIN", default_value_t = 0.5, value_parser = parse_seconds)]
    pub pacs_retry_min: f64,
    /// Longest wait between push retries (seconds).
    #[arg(long, env = "LDCT_PACS_RETRY_MAX", default_value_t = 60.0, value_parser = parse_seconds)]
    pub pacs_retry_max: f64,
    /// Largest series a pull job fetches by WADO-RS, in bytes.
    #[arg(long, env = "LDCT_PACS_MAX_FETCH_BYTES", default_value_t = 2 << 30)]
    pub pacs_max_fetch_bytes: usize,
    /// Folder of the spool of derived instances waiting for the PACS (created).
    #[arg(long, env = "LDCT_SPOOL_DIR", default_value = "ldct-spool")]
    pub spool_dir: PathBuf,
    /// Size bound of the spool in bytes; beyond it STOW-RS refuses instances (A700).
    #[arg(long, env = "LDCT_SPOOL_MAX_BYTES", default_value_t = 4 << 30)]
    pub spool_max_bytes: u64,
    /// Folder of the pull jobs' state files (default: <spool-dir>/jobs).
    #[arg(long, env = "LDCT_JOBS_DIR")]
    pub jobs_dir: Option<PathBuf>,
    /// Largest STOW-RS request body in bytes (413 beyond it).
    #[arg(long, env = "LDCT_DICOMWEB_MAX_BODY_BYTES", default_value_t = 512 << 20)]
    pub dicomweb_max_body_bytes: usize,
    /// Load ONNX Runtime and the models, print what was loaded and exit without serving
    /// (exit status 1 when a model folder was rejected).
    #[arg(long)]
    pub check: bool,
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if v.is_finite() && v > 0.0 && v <= 86_400.0 {
        Ok(v)
    } else {
        Err(format!("{s:?} must be between 0 and 86400 seconds"))
    }
}

impl Config {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.request_timeout)
    }

    pub fn batch_timeout(&self) -> Duration {
        Duration::from_millis(self.batch_timeout_ms)
    }

    /// A configuration with every default (tests and embedding).
    pub fn with_models(models: impl Into<PathBuf>) -> Self {
        let mut c = Config::parse_from(["ldct-serve"]);
        c.models = models.into();
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_validate() {
        let c = Config::try_parse_from([
            "ldct-serve",
            "--models",
            "m",
            "--device",
            "cpu",
            "--max-batch",
            "4",
            "--request-timeout",
            "2.5s",
            "--arena-strategy",
            "same-as-requested",
        ])
        .unwrap();
        assert_eq!(c.device, DeviceChoice::Cpu);
        assert_eq!(c.max_batch, 4);
        assert_eq!(c.request_timeout(), Duration::from_millis(2500));
        assert_eq!(c.arena_strategy, ArenaStrategy::SameAsRequested);
        assert!(Config::try_parse_from(["ldct-serve", "--max-batch", "0"]).is_err());
        assert!(Config::try_parse_from(["ldct-serve", "--queue-capacity", "0"]).is_err());
        assert!(Config::try_parse_from(["ldct-serve", "--request-timeout", "-1"]).is_err());
        assert!(Config::try_parse_from(["ldct-serve", "--tls-cert", "c.pem"]).is_err());
        assert!(Config::try_parse_from(["ldct-serve", "--device", "tpu"]).is_err());
        assert!(Config::try_parse_from(["ldct-serve", "--pacs-batch", "0"]).is_err());
        assert!(Config::try_parse_from(["ldct-serve", "--pacs-password", "p"]).is_err());
        assert!(
            Config::try_parse_from(["ldct-serve", "--pacs-user", "u", "--pacs-token", "t"])
                .is_err()
        );
        let c = Config::try_parse_from([
            "ldct-serve",
            "--pacs-url",
            "http://orthanc:8042/dicom-web",
            "--pacs-user",
            "u",
            "--pacs-password",
            "p",
            "--spool-max-bytes",
            "1000",
            "--pacs-retry-max",
            "2",
        ])
        .unwrap();
        assert_eq!(c.pacs_url.as_deref(), Some("http://orthanc:8042/dicom-web"));
        assert_eq!(c.spool_max_bytes, 1000);
        assert_eq!(c.pacs_retry_max, 2.0);
        assert_eq!(c.jobs_dir, None);
    }
}
