//! Server configuration from flags and `LDCT_*` environment variables.
//!
//! Every flag has an environment variable of the same name in upper case with an
//! `LDCT_` prefix (`--max-batch` is `LDCT_MAX_BATCH`); a flag given on the command
//! line wins over the environment.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use ldct_imaging::limits::SliceLimits;

use crate::jobs::store::Keep;

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

/// `--max-inflight-bytes` when not given (or the largest body limit, if larger).
pub const DEFAULT_INFLIGHT_BYTES: usize = 256 << 20;

/// How the CUDA memory arena grows (ONNX Runtime's `arena_extend_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ArenaStrategy {
    NextPowerOfTwo,
    SameAsRequested,
}

/// How the CUDA execution provider picks each convolution's cuDNN algorithm
/// (ONNX Runtime's `cudnn_conv_algo_search`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConvAlgoSearch {
    /// cuDNN's heuristics (mode A): no benchmark when a batch's shape changes.
    Heuristic,
    /// Benchmark every candidate (mode B). ONNX Runtime runs the benchmark again
    /// whenever a convolution's input shape differs from its previous run, so a
    /// batcher whose batch sizes vary pays it over and over.
    Exhaustive,
    /// cuDNN's fallback algorithms.
    Default,
}

/// How log lines are written (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (colour on a terminal).
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields.message`, the span's
    /// fields such as `request_id`), for log collectors.
    Json,
}

/// `--version-policy`: which versions of a model are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionPolicy {
    /// The N highest versions.
    Latest(usize),
    All,
    /// These versions (by the manifest's `version`).
    Specific(Vec<String>),
}

fn parse_version_policy(s: &str) -> Result<VersionPolicy, String> {
    let s = s.trim();
    let bad = || format!("{s:?} is not a version policy: latest:N, all or specific:V1,V2");
    match s.split_once(':') {
        None if s == "all" => Ok(VersionPolicy::All),
        Some(("latest", n)) => match n.trim().parse::<usize>() {
            Ok(n) if n >= 1 => Ok(VersionPolicy::Latest(n)),
            _ => Err(bad()),
        },
        Some(("specific", list)) => {
            let v: Vec<String> = list
                .split(',')
                .map(|x| x.trim().to_owned())
                .filter(|x| !x.is_empty())
                .collect();
            if v.is_empty() {
                Err(bad())
            } else {
                Ok(VersionPolicy::Specific(v))
            }
        }
        _ => Err(bad()),
    }
}

/// `--warmup-sizes`: slice sides, without repeats (empty: no warmup).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmupSizes(pub Vec<usize>);

#[derive(Debug, Clone, Parser)]
#[command(name = "ldct-serve", version, about = "ldct inference server")]
pub struct Config {
    /// Folder of model folders (each holds model.onnx + manifest.json).
    #[arg(long, env = "LDCT_MODELS", default_value = "models")]
    pub models: PathBuf,
    /// Serve the one model under this name instead of its manifest's (a KServe
    /// InferenceService's name): --models is then one model folder, or a folder holding
    /// exactly one.
    #[arg(long, env = "LDCT_MODEL_NAME", value_parser = parse_model_name)]
    pub model_name: Option<String>,
    /// Which versions of a model are served when it has several
    /// (`--models DIR/NAME/VERSION/`): `latest:N` (the N highest versions), `all`, or
    /// `specific:V1,V2`. Requests without a version get the highest served one.
    #[arg(long, env = "LDCT_VERSION_POLICY", default_value = "latest:1",
          value_parser = parse_version_policy)]
    pub version_policy: VersionPolicy,
    /// Address to listen on.
    #[arg(long, env = "LDCT_BIND", default_value = "127.0.0.1:8080")]
    pub bind: String,
    /// Also serve the Open Inference Protocol over gRPC on this address (e.g.
    /// 127.0.0.1:8081): tritonclient.grpc and KServe's grpc-v2. Plain HTTP/2 only (no
    /// TLS on this port: refused together with --tls-cert).
    #[arg(long, env = "LDCT_GRPC_BIND", conflicts_with = "tls_cert")]
    pub grpc_bind: Option<String>,
    /// Log lines as text or one JSON object per line; the level comes from `RUST_LOG`
    /// (default `info`).
    #[arg(long, env = "LDCT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
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
    /// How the CUDA execution provider chooses convolution algorithms. `heuristic`
    /// (the default) because ONNX Runtime re-runs the exhaustive benchmark each time
    /// a convolution's input shape changes, and the batcher's batch size changes with
    /// the load: on an H200 with the default model, `exhaustive` made every batch of
    /// a concurrency-4 load take about 0.64 s instead of milliseconds (docs/PERFORMANCE.md).
    #[arg(long, env = "LDCT_CUDNN_CONV_ALGO_SEARCH", value_enum,
          default_value_t = ConvAlgoSearch::Heuristic)]
    pub cudnn_conv_algo_search: ConvAlgoSearch,
    /// Never shrink ONNX Runtime's CPU memory arena: the memory of the largest batch run
    /// so far stays with the process, whatever its size. Without it the arena keeps the
    /// memory of batches up to --cpu-arena-keep-pixels and shrinks after larger ones.
    #[arg(long, env = "LDCT_CPU_ARENA")]
    pub cpu_arena: bool,
    /// The CPU arena keeps the memory of batches up to this many pixels (slices x padded
    /// height x width; default 8 x 512 x 512, the largest production batch), so they run
    /// without allocating; after a larger batch (a 2048x2048 slice) it returns the memory
    /// to the system. 0 shrinks after every batch (slower: every run page-faults its
    /// tensors afresh).
    #[arg(long, env = "LDCT_CPU_ARENA_KEEP_PIXELS", default_value_t = 8 * 512 * 512)]
    pub cpu_arena_keep_pixels: u64,
    /// ONNX Runtime intra-op threads per session (0: ONNX Runtime's default, one per
    /// physical core).
    #[arg(long, env = "LDCT_INTRA_THREADS", default_value_t = 0)]
    pub intra_threads: usize,
    /// Let ONNX Runtime's intra-op threads spin-wait for work between operators (its
    /// default): lower latency per run, but the spinning threads take CPU from the
    /// request handling beside them. `false` makes them sleep.
    #[arg(long, env = "LDCT_INTRA_OP_SPINNING", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub intra_op_spinning: bool,
    /// Inference threads (each with its own session per model). Inference never runs on
    /// the HTTP worker threads.
    #[arg(long, env = "LDCT_INFERENCE_WORKERS", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub inference_workers: u32,
    /// Largest batch one inference call runs.
    #[arg(long, env = "LDCT_MAX_BATCH", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_batch: u32,
    /// Most pixels one batch runs (slices x padded height x width): 1024x1024 slices
    /// run 2 at a time and 2048x2048 slices alone under the default, 512x512 slices
    /// up to --max-batch, so a batch's inference memory stays bounded.
    #[arg(long, env = "LDCT_MAX_BATCH_PIXELS", default_value_t = 8 * 512 * 512,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_batch_pixels: u64,
    /// Slice sides every model runs before it is published and /v2/health/ready says
    /// ready (comma-separated, e.g. 512,1024; `none` for no warmup): each padded side at
    /// batch 1 and at the largest batch --max-batch and --max-batch-pixels allow, on
    /// every inference thread's session, so the first request does not pay ONNX
    /// Runtime's first-run cost. A model that fails its warmup is rejected.
    #[arg(long, env = "LDCT_WARMUP_SIZES", default_value = "512", value_parser = parse_warmup_sizes)]
    pub warmup_sizes: WarmupSizes,
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
    /// Request-body bytes the server holds at once, all requests together: a request
    /// that would exceed it gets 503 with Retry-After before its body is read (from its
    /// Content-Length) or as soon as it would (chunked). At least the largest body
    /// limit in force; default 256 MiB, or that limit when it is larger.
    #[arg(long, env = "LDCT_MAX_INFLIGHT_BYTES")]
    pub max_inflight_bytes: Option<usize>,
    /// Most rows or columns of one slice (413 beyond it), checked from the DICOM header,
    /// the .npy header or the declared tensor shape before any pixel is decoded.
    #[arg(long, env = "LDCT_MAX_SLICE_SIDE", default_value_t = 2048,
          value_parser = clap::value_parser!(u32).range(16..=65535))]
    pub max_slice_side: u32,
    /// Most pixels (rows x columns) of one slice (413 beyond it), checked like
    /// --max-slice-side.
    #[arg(long, env = "LDCT_MAX_SLICE_PIXELS", default_value_t = 2048 * 2048,
          value_parser = clap::value_parser!(u64).range(256..=(1 << 32)))]
    pub max_slice_pixels: u64,
    /// Longest time to receive a request body, in seconds (408 beyond it): a client that
    /// sends slowly cannot hold a connection and its buffer open.
    #[arg(long, env = "LDCT_BODY_TIMEOUT", default_value_t = 60.0,
          value_parser = parse_seconds)]
    pub body_timeout: f64,
    /// The derived series' Series Number is the source's plus this (this when the
    /// source has none), so the two never share a number in a study list.
    #[arg(long, env = "LDCT_DERIVED_SERIES_NUMBER_OFFSET",
          default_value_t = ldct_imaging::derived::SERIES_NUMBER_OFFSET)]
    pub derived_series_number_offset: i32,
    /// Written first in each derived instance's Image Comments (the source's comments
    /// follow); empty writes none.
    #[arg(long, env = "LDCT_DERIVED_DISCLAIMER",
          default_value = ldct_imaging::derived::DEFAULT_DISCLAIMER)]
    pub derived_disclaimer: String,
    /// Default denoising strength, from 0 (the input's pixels as they are) to 1 (the
    /// model's full output); requests override it (`?strength=`, the OIP parameter
    /// `strength`, a pull job's `strength`).
    #[arg(long, env = "LDCT_STRENGTH", default_value_t = 1.0, value_parser = parse_strength)]
    pub strength: f32,
    /// Longest wait for an inference result, in seconds (504 beyond it).
    #[arg(long, env = "LDCT_REQUEST_TIMEOUT", default_value_t = 30.0,
          value_parser = parse_seconds)]
    pub request_timeout: f64,
    /// When set, every route but /v2/health/* and /metrics needs
    /// `Authorization: Bearer <token>`. Empty is refused (leave it unset for no auth).
    #[arg(
        long,
        env = "LDCT_API_TOKEN",
        hide_env_values = true,
        conflicts_with = "api_token_file"
    )]
    pub api_token: Option<String>,
    /// A file holding the API token (read once at start, one trailing newline
    /// trimmed): how a mounted Kubernetes secret reaches the server.
    #[arg(long, env = "LDCT_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
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
    /// A file holding the PACS password (as --api-token-file).
    #[arg(
        long,
        env = "LDCT_PACS_PASSWORD_FILE",
        conflicts_with = "pacs_password",
        requires = "pacs_user"
    )]
    pub pacs_password_file: Option<PathBuf>,
    /// Bearer token for the PACS (`Authorization: Bearer ...`).
    #[arg(
        long,
        env = "LDCT_PACS_TOKEN",
        hide_env_values = true,
        conflicts_with = "pacs_token_file"
    )]
    pub pacs_token: Option<String>,
    /// A file holding the PACS bearer token (as --api-token-file).
    #[arg(long, env = "LDCT_PACS_TOKEN_FILE", conflicts_with = "pacs_user")]
    pub pacs_token_file: Option<PathBuf>,
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
    /// How long finished pull jobs are kept: an age (`7d`, `12h`, `30m`, `90s`) or a
    /// count of the most recently finished (`100`); older ones are deleted.
    #[arg(long, env = "LDCT_JOBS_KEEP", default_value = "7d")]
    pub jobs_keep: Keep,
    /// Most pull jobs queued, running or pushing at once; a new one beyond it gets 429
    /// with Retry-After (the same study asked again joins its active job instead).
    #[arg(long, env = "LDCT_MAX_ACTIVE_JOBS", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_active_jobs: u32,
    /// Largest STOW-RS request body in bytes (413 beyond it).
    #[arg(long, env = "LDCT_DICOMWEB_MAX_BODY_BYTES", default_value_t = 512 << 20)]
    pub dicomweb_max_body_bytes: usize,
    /// Push derived instances to this DICOM node by C-STORE instead of STOW-RS:
    /// `HOST:PORT:AET` (e.g. `pacs.local:104:PACS`), calling as --dimse-ae-title. The
    /// spool, retries and `failed/` folder are those of STOW-RS. With --pacs-url as
    /// well, pull jobs still search and fetch by DICOMweb there.
    #[arg(long, env = "LDCT_PACS_DIMSE", value_parser = parse_dimse_peer)]
    pub pacs_dimse: Option<crate::dimse::access::DimsePeer>,
    /// Also accept DICOM networking on this address (e.g. 0.0.0.0:11112): a C-ECHO and
    /// C-STORE SCP for CT Image Storage. Each received instance is denoised and its
    /// derived instance spooled for the PACS before the C-STORE response says success.
    /// Needs --pacs-url or --pacs-dimse (where derived instances go). DICOM TLS with
    /// --tls-cert/--tls-key.
    #[arg(long, env = "LDCT_DIMSE_BIND")]
    pub dimse_bind: Option<String>,
    /// This server's AE title: associations must call it; C-STOREs to --pacs-dimse come
    /// from it.
    #[arg(long, env = "LDCT_DIMSE_AE_TITLE", default_value = "LDCT",
          value_parser = crate::dimse::access::parse_ae_title)]
    pub dimse_ae_title: String,
    /// Who may open associations (comma-separated): calling AE titles and/or IP
    /// addresses or networks, e.g. `CT01,CT02,10.20.0.0/16`. A caller must match one of
    /// the AE titles when any is listed, and one of the networks when any is listed.
    /// Empty: anyone (refused on a non-loopback --dimse-bind unless
    /// --allow-unauthenticated).
    #[arg(long, env = "LDCT_DIMSE_ALLOWED_CALLERS", value_delimiter = ',')]
    pub dimse_allowed_callers: Vec<String>,
    /// Largest PDU received (bytes), as announced to peers.
    #[arg(long, env = "LDCT_DIMSE_MAX_PDU", default_value_t = 65_536,
          value_parser = clap::value_parser!(u32).range(4096..=1_048_576))]
    pub dimse_max_pdu: u32,
    /// Most DIMSE associations at once; beyond it new ones are refused (transient,
    /// local limit exceeded) before any data is sent.
    #[arg(long, env = "LDCT_DIMSE_MAX_ASSOCIATIONS", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub dimse_max_associations: u32,
    /// Refuse new associations (transient, temporary congestion) while the spool holds
    /// more than this fraction of --spool-max-bytes: senders retry later rather than
    /// have instances refused after sending them.
    #[arg(long, env = "LDCT_DIMSE_SPOOL_WATERMARK", default_value_t = 0.9,
          value_parser = parse_fraction)]
    pub dimse_spool_watermark: f64,
    /// Longest wait for a DIMSE peer's next PDU, and for a C-STORE response from
    /// --pacs-dimse (seconds).
    #[arg(long, env = "LDCT_DIMSE_TIMEOUT", default_value_t = 60.0, value_parser = parse_seconds)]
    pub dimse_timeout: f64,
    /// What STOW-RS and DIMSE do with localizers (Image Type LOCALIZER): `pass` them to
    /// the PACS unchanged, `refuse` them, or `denoise` them. Pull jobs skip what is not
    /// denoised.
    #[arg(long, env = "LDCT_RULE_LOCALIZER", value_enum, default_value = "pass")]
    pub rule_localizer: crate::dicomweb::rules::Action,
    /// What STOW-RS and DIMSE do with non-axial images (normal more than 45 degrees from
    /// the patient's z axis: coronal and sagittal reformats).
    #[arg(long, env = "LDCT_RULE_NON_AXIAL", value_enum, default_value = "pass")]
    pub rule_non_axial: crate::dicomweb::rules::Action,
    /// Denoise only slices this thick (`MIN-MAX` in mm, e.g. `0.5-5`); others get
    /// --rule-thickness-action. Default: any thickness.
    #[arg(long, env = "LDCT_RULE_THICKNESS_MM", value_parser = crate::dicomweb::rules::parse_thickness)]
    pub rule_thickness_mm: Option<(f64, f64)>,
    /// What happens to slices outside --rule-thickness-mm.
    #[arg(
        long,
        env = "LDCT_RULE_THICKNESS_ACTION",
        value_enum,
        default_value = "pass"
    )]
    pub rule_thickness_action: crate::dicomweb::rules::Action,
    /// Append one JSON line per derived instance (time, route, caller, source and
    /// derived UIDs, model name/version/SHA-256, strength, outcome; never patient
    /// attributes) to this file; `-` is standard output.
    #[arg(long, env = "LDCT_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,
    /// Serve the DICOMweb routes (`--pacs-url`) on a non-loopback address without
    /// `--api-token`: refused unless given, since anyone who reaches the port could
    /// then push to and pull from the PACS through the server.
    #[arg(long, env = "LDCT_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,
    /// Load ONNX Runtime and the models, print what was loaded and exit without serving
    /// (exit status 1 when a model folder was rejected).
    #[arg(long)]
    pub check: bool,
}

/// `--warmup-sizes`: comma-separated slice sides (16 to 65535), or `none` (or empty) for
/// no warmup.
fn parse_warmup_sizes(s: &str) -> Result<WarmupSizes, String> {
    let s = s.trim();
    if s.is_empty() || s.eq_ignore_ascii_case("none") {
        return Ok(WarmupSizes(Vec::new()));
    }
    let mut sides = Vec::new();
    for part in s.split(',') {
        let side: usize = part.trim().parse().map_err(|_| {
            format!("{part:?} is not a slice side: give sides like 512,1024, or none")
        })?;
        if !(16..=65535).contains(&side) {
            return Err(format!("warmup side {side} is outside 16 to 65535"));
        }
        if !sides.contains(&side) {
            sides.push(side);
        }
    }
    Ok(WarmupSizes(sides))
}

/// `--model-name`: 1 to 64 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit
/// (it appears in URLs such as `/v2/models/{name}/infer`).
fn parse_model_name(s: &str) -> Result<String, String> {
    let ok = (1..=64).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a model name: 1 to 64 letters, digits, '.', '_' or '-', starting \
             with a letter or digit"
        ))
    }
}

fn parse_strength(s: &str) -> Result<f32, String> {
    let v: f32 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is outside [0, 1]"))
    }
}

fn parse_dimse_peer(s: &str) -> Result<crate::dimse::access::DimsePeer, String> {
    s.parse()
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 1.0 => Ok(v),
        _ => Err(format!("{s:?} must be a fraction in (0, 1]")),
    }
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

/// A secret flag that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{flag} {path}: {source}")]
    Read {
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{flag} is empty: give a value, or leave it unset{hint}")]
    Empty {
        flag: &'static str,
        hint: &'static str,
    },
    #[error(
        "--pacs-url with --bind {bind} (not a loopback address) and no --api-token: anyone \
         who reaches the port could use the PACS through this server; set --api-token \
         (or --api-token-file), bind to 127.0.0.1, or pass --allow-unauthenticated"
    )]
    Unauthenticated { bind: String },
}

/// Whether `--bind` listens on loopback only (an IP address, or `localhost`).
pub fn bind_is_loopback(bind: &str) -> bool {
    match bind.parse::<std::net::SocketAddr>() {
        Ok(addr) => addr.ip().is_loopback(),
        Err(_) => bind
            .rsplit_once(':')
            .is_some_and(|(host, _)| host.eq_ignore_ascii_case("localhost")),
    }
}

/// Largest secret file read (a token or password, not a document).
const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// A secret file's value: at most [`MAX_SECRET_BYTES`], one trailing `\n` or `\r\n`
/// trimmed (what `echo` and editors leave), nothing else changed.
fn read_secret(flag: &'static str, path: &std::path::Path) -> Result<String, SecretError> {
    use std::io::Read;
    let err = |source| SecretError::Read {
        flag,
        path: path.to_owned(),
        source,
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(err)?
        .take(MAX_SECRET_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(err)?;
    if text.len() as u64 > MAX_SECRET_BYTES {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("longer than {MAX_SECRET_BYTES} bytes: not a secret file"),
        )));
    }
    let value = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    Ok(value.to_owned())
}

impl Config {
    /// Reads the `*_file` secrets into their values (once, at start) and refuses empty
    /// secrets: an empty `--api-token` would otherwise switch authentication off
    /// without a word.
    pub fn load_secrets(&mut self) -> Result<(), SecretError> {
        if let Some(path) = self.api_token_file.take() {
            self.api_token = Some(read_secret("--api-token-file", &path)?);
        }
        if let Some(path) = self.pacs_password_file.take() {
            self.pacs_password = Some(read_secret("--pacs-password-file", &path)?);
        }
        if let Some(path) = self.pacs_token_file.take() {
            self.pacs_token = Some(read_secret("--pacs-token-file", &path)?);
        }
        let checks: [(&'static str, &Option<String>, &'static str); 3] = [
            (
                "--api-token",
                &self.api_token,
                " to serve without authentication",
            ),
            ("--pacs-password", &self.pacs_password, ""),
            ("--pacs-token", &self.pacs_token, ""),
        ];
        for (flag, value, hint) in checks {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                return Err(SecretError::Empty { flag, hint });
            }
        }
        if self.pacs_configured()
            && self.api_token.is_none()
            && !self.allow_unauthenticated
            && !bind_is_loopback(&self.bind)
        {
            return Err(SecretError::Unauthenticated {
                bind: self.bind.clone(),
            });
        }
        Ok(())
    }

    /// Whether a PACS is configured (`--pacs-url` not blank, or `--pacs-dimse`): the
    /// spool, STOW-RS and (with `--pacs-url`) pull jobs on.
    pub fn pacs_configured(&self) -> bool {
        self.pacs_dimse.is_some()
            || self
                .pacs_url
                .as_deref()
                .is_some_and(|u| !u.trim().is_empty())
    }

    /// The largest body a request may send: `--max-body-bytes`, and with `--pacs-url`
    /// (STOW-RS) `--dicomweb-max-body-bytes`.
    pub fn largest_body(&self) -> usize {
        if self.pacs_configured() {
            self.max_body_bytes.max(self.dicomweb_max_body_bytes)
        } else {
            self.max_body_bytes
        }
    }

    /// The body budget of all requests together (`--max-inflight-bytes`, see there).
    pub fn inflight_bytes(&self) -> Result<usize, String> {
        let largest = self.largest_body();
        match self.max_inflight_bytes {
            None => Ok(largest.max(DEFAULT_INFLIGHT_BYTES)),
            Some(n) if n >= largest => Ok(n),
            Some(n) => Err(format!(
                "--max-inflight-bytes ({n}) is below the largest body a request may send \
                 ({largest} bytes: --max-body-bytes, or --dicomweb-max-body-bytes with \
                 --pacs-url): such a request could never be admitted"
            )),
        }
    }

    /// The warmup sides (`--warmup-sizes`), each within the slice limits (a side the
    /// server would refuse is never worth warming up).
    pub fn warmup_sides(&self) -> Result<Vec<usize>, String> {
        let limits = self.slice_limits();
        match self
            .warmup_sizes
            .0
            .iter()
            .find(|&&s| s > limits.max_side || s.saturating_mul(s) > limits.max_pixels)
        {
            Some(s) => Err(format!(
                "--warmup-sizes {s} is beyond the largest slice served (--max-slice-side \
                 {}, --max-slice-pixels {})",
                limits.max_side, limits.max_pixels
            )),
            None => Ok(self.warmup_sizes.0.clone()),
        }
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.request_timeout)
    }

    pub fn body_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.body_timeout)
    }

    /// The largest slice accepted (`--max-slice-side`, `--max-slice-pixels`).
    pub fn slice_limits(&self) -> SliceLimits {
        SliceLimits {
            max_side: self.max_slice_side as usize,
            max_pixels: usize::try_from(self.max_slice_pixels).unwrap_or(usize::MAX),
        }
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
    fn the_inflight_budget_holds_the_largest_body_in_force() {
        let parse = |args: &[&str]| {
            Config::try_parse_from([&["ldct-serve"], args].concat())
                .unwrap()
                .inflight_bytes()
        };
        assert_eq!(parse(&[]), Ok(DEFAULT_INFLIGHT_BYTES));
        // STOW-RS bodies (512 MiB by default) count only with a PACS.
        let pacs = ["--pacs-url", "http://127.0.0.1:8042/dicom-web"];
        assert_eq!(parse(&pacs), Ok(512 << 20));
        assert_eq!(
            parse(&["--max-inflight-bytes", "100000000"]),
            Ok(100_000_000)
        );
        let e = parse(&["--max-inflight-bytes", "1000"]).unwrap_err();
        assert!(e.contains("--max-inflight-bytes (1000)"), "{e}");
        let e = parse(&[&pacs[..], &["--max-inflight-bytes", "300000000"]].concat()).unwrap_err();
        assert!(e.contains("--pacs-url"), "{e}");
    }

    #[test]
    fn sides_parse_and_none_turns_warmup_off() {
        assert_eq!(parse_warmup_sizes("512"), Ok(WarmupSizes(vec![512])));
        assert_eq!(
            parse_warmup_sizes(" 512, 1024,512 "),
            Ok(WarmupSizes(vec![512, 1024]))
        );
        assert_eq!(parse_warmup_sizes("none"), Ok(WarmupSizes(vec![])));
        assert_eq!(parse_warmup_sizes(""), Ok(WarmupSizes(vec![])));
        assert!(parse_warmup_sizes("512x512")
            .unwrap_err()
            .contains("512x512"));
        assert!(parse_warmup_sizes("8").unwrap_err().contains("16 to 65535"));
    }

    #[test]
    fn version_policies_parse() {
        assert_eq!(
            parse_version_policy("latest:1"),
            Ok(VersionPolicy::Latest(1))
        );
        assert_eq!(parse_version_policy("all"), Ok(VersionPolicy::All));
        assert_eq!(
            parse_version_policy("specific:1.0.0, 2.0.0"),
            Ok(VersionPolicy::Specific(vec![
                "1.0.0".into(),
                "2.0.0".into()
            ]))
        );
        for bad in ["latest:0", "latest:x", "specific:", "newest", ""] {
            assert!(parse_version_policy(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn warmup_sides_must_be_servable_and_names_plain() {
        let c = |args: &[&str]| Config::try_parse_from([&["ldct-serve"], args].concat());
        assert_eq!(c(&[]).unwrap().warmup_sides(), Ok(vec![512]));
        let e = c(&["--warmup-sizes", "1024", "--max-slice-side", "512"])
            .unwrap()
            .warmup_sides()
            .unwrap_err();
        assert!(e.contains("--max-slice-side 512"), "{e}");
        assert_eq!(
            c(&["--model-name", "ct-denoiser.v2"]).unwrap().model_name,
            Some("ct-denoiser.v2".into())
        );
        for bad in ["", "-x", "a/b", "a b", "é"] {
            assert!(c(&["--model-name", bad]).is_err(), "{bad:?}");
        }
    }

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
            "--cudnn-conv-algo-search",
            "exhaustive",
        ])
        .unwrap();
        assert_eq!(c.cudnn_conv_algo_search, ConvAlgoSearch::Exhaustive);
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
        for bad in [
            &["--pacs-dimse", "pacs:104"][..],
            &["--dimse-ae-title", "A_TITLE_OF_17_CHR"],
            &["--dimse-spool-watermark", "0"],
            &["--dimse-spool-watermark", "1.5"],
            &["--dimse-max-pdu", "100"],
            &["--dimse-max-associations", "0"],
        ] {
            let args = [&["ldct-serve"][..], bad].concat();
            assert!(Config::try_parse_from(args).is_err(), "{bad:?}");
        }
        let c = Config::try_parse_from([
            "ldct-serve",
            "--pacs-dimse",
            "pacs.local:104:PACS",
            "--dimse-allowed-callers",
            "CT01,10.0.0.0/8",
        ])
        .unwrap();
        assert!(c.pacs_configured());
        assert_eq!(c.pacs_dimse.unwrap().ae_title, "PACS");
        assert_eq!(c.dimse_allowed_callers, ["CT01", "10.0.0.0/8"]);
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
        assert_eq!(c.jobs_keep, Keep::Age(Duration::from_secs(7 * 86_400)));
        let c = Config::try_parse_from(["ldct-serve", "--jobs-keep", "50"]).unwrap();
        assert_eq!(c.jobs_keep, Keep::Count(50));
        assert!(Config::try_parse_from(["ldct-serve", "--jobs-keep", "soon"]).is_err());
    }

    fn secret_file(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn secrets_come_from_files_with_one_newline_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let token = secret_file(dir.path(), "token", "s3cret\n");
        let password = secret_file(dir.path(), "password", "p a ss\r\n");
        let mut c = Config::try_parse_from([
            "ldct-serve",
            "--api-token-file",
            token.to_str().unwrap(),
            "--pacs-user",
            "u",
            "--pacs-password-file",
            password.to_str().unwrap(),
        ])
        .unwrap();
        c.load_secrets().unwrap();
        assert_eq!(c.api_token.as_deref(), Some("s3cret"));
        assert_eq!(c.pacs_password.as_deref(), Some("p a ss"));
        assert!(c.api_token_file.is_none() && c.pacs_password_file.is_none());
        // Only one trailing newline goes; inner and leading text stays.
        let two = secret_file(dir.path(), "two", " x\n\n");
        let mut c =
            Config::try_parse_from(["ldct-serve", "--pacs-token-file", two.to_str().unwrap()])
                .unwrap();
        c.load_secrets().unwrap();
        assert_eq!(c.pacs_token.as_deref(), Some(" x\n"));
    }

    #[test]
    fn empty_missing_or_huge_secrets_are_refused_with_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config::try_parse_from(["ldct-serve", "--api-token", ""]).unwrap();
        let e = c.load_secrets().unwrap_err().to_string();
        assert!(
            e.contains("--api-token is empty") && e.contains("without authentication"),
            "{e}"
        );
        let blank = secret_file(dir.path(), "blank", "\n");
        let mut c =
            Config::try_parse_from(["ldct-serve", "--api-token-file", blank.to_str().unwrap()])
                .unwrap();
        assert!(c
            .load_secrets()
            .unwrap_err()
            .to_string()
            .contains("--api-token is empty"));
        let missing = dir.path().join("nope");
        let mut c =
            Config::try_parse_from(["ldct-serve", "--api-token-file", missing.to_str().unwrap()])
                .unwrap();
        let e = c.load_secrets().unwrap_err().to_string();
        assert!(
            e.starts_with("--api-token-file ") && e.contains("nope"),
            "{e}"
        );
        let huge = secret_file(dir.path(), "huge", &"x".repeat(70_000));
        let mut c =
            Config::try_parse_from(["ldct-serve", "--api-token-file", huge.to_str().unwrap()])
                .unwrap();
        assert!(c
            .load_secrets()
            .unwrap_err()
            .to_string()
            .contains("not a secret file"));
        // A value and a file for the same secret is a usage error.
        assert!(Config::try_parse_from([
            "ldct-serve",
            "--api-token",
            "a",
            "--api-token-file",
            blank.to_str().unwrap()
        ])
        .is_err());
        // No secrets at all is fine.
        Config::try_parse_from(["ldct-serve"])
            .unwrap()
            .load_secrets()
            .unwrap();
    }

    #[test]
    fn a_pacs_on_an_open_port_needs_a_token_or_an_explicit_opt_out() {
        let parse = |extra: &[&str]| {
            let mut args = vec!["ldct-serve", "--pacs-url", "http://pacs:8042/dicom-web"];
            args.extend_from_slice(extra);
            Config::try_parse_from(args).unwrap().load_secrets()
        };
        let e = parse(&["--bind", "0.0.0.0:8080"]).unwrap_err().to_string();
        assert!(
            e.contains("--bind 0.0.0.0:8080") && e.contains("--allow-unauthenticated"),
            "{e}"
        );
        assert!(parse(&["--bind", "[::]:8080"]).is_err());
        assert!(parse(&["--bind", "ldct.example:8080"]).is_err());
        parse(&["--bind", "0.0.0.0:8080", "--api-token", "t"]).unwrap();
        parse(&["--bind", "0.0.0.0:8080", "--allow-unauthenticated"]).unwrap();
        for loopback in ["127.0.0.1:8080", "[::1]:8080", "localhost:8080"] {
            parse(&["--bind", loopback]).unwrap();
        }
        // Without a PACS nothing changes.
        let mut c = Config::try_parse_from(["ldct-serve", "--bind", "0.0.0.0:8080"]).unwrap();
        c.load_secrets().unwrap();
    }
}
