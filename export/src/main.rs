//! `ldct-export`: model folders for the server.
//!
//! - `ldct-export --run RUN --out models/NAME [--name NAME] [--version V]
//!   [--precision fp32|fp16] [--source-date-epoch S]` exports a training run (`arch.json` +
//!   `weights.safetensors`) as `model.onnx` + `manifest.json` and proves parity
//!   against the Candle forward (non-zero exit when it fails).
//! - `ldct-export export ...` is the same.
//! - `ldct-export check --model DIR` verifies a model folder (manifest, checksum,
//!   ONNX Runtime load and a test run).
//! - `ldct-export gate --candidate DIR --serving DIR [--metric M]
//!   [--min-improvement X]` is the retraining gate: exit 0 and a JSON verdict when
//!   the candidate's eval metric is not worse than the serving model's, exit 1 when
//!   it regresses, exit 2 when the gate cannot decide (missing metric, bad manifest).

mod gate;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use ldct_export::onnx_writer::InstanceNormForm;
use ldct_export::{ExportOptions, Precision};
use ldct_proto::manifest::Method;

#[derive(Debug, Parser)]
#[command(
    name = "ldct-export",
    about = "ldct model export and checks",
    // `--version` is the model version of an export.
    disable_version_flag = true,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    export: Option<ExportArgs>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Export a training run as a model folder (same as the top-level form).
    Export(ExportArgs),
    /// Verify a model folder: manifest, SHA-256, loads and runs in ONNX Runtime.
    Check {
        /// Model folder holding model.onnx and manifest.json.
        #[arg(long)]
        model: PathBuf,
    },
    /// Retraining gate: accept the candidate only when its eval metric (higher is
    /// better) is >= the serving model's + --min-improvement. Exit 0 accepted,
    /// 1 refused, 2 undecidable (missing metric or manifest).
    Gate {
        /// Candidate model folder (manifest.json with metrics).
        #[arg(long)]
        candidate: PathBuf,
        /// Serving model folder; when it has no manifest.json the candidate is
        /// accepted as the first model.
        #[arg(long)]
        serving: PathBuf,
        /// Manifest metric to compare (higher is better).
        #[arg(long, default_value = gate::DEFAULT_METRIC)]
        metric: String,
        /// Required improvement over the serving model (0: no regression).
        #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
        min_improvement: f64,
    },
}

#[derive(Debug, Clone, Args)]
struct ExportArgs {
    /// Run folder with arch.json and weights.safetensors (train.toml, run.json,
    /// metrics.csv, eval.json are read when present).
    #[arg(long)]
    run: PathBuf,
    /// Model folder to write (model.onnx + manifest.json).
    #[arg(long)]
    out: PathBuf,
    /// Model name (default: the out folder's name).
    #[arg(long)]
    name: Option<String>,
    /// Model version.
    #[arg(long, default_value = "1.0.0")]
    version: String,
    /// Weights and computation precision; input and output stay float32.
    #[arg(long, default_value = "fp32", value_parser = parse_precision)]
    precision: Precision,
    /// Instance norm of fp32 graphs: `f32` (two-pass float32 statistics from
    /// elementary ops), `f64` (the same in float64; 3x the layer's memory) or
    /// `native` (the InstanceNormalization op; ONNX Runtime's float32 kernel can
    /// miss the 1e-4 parity on CT slices).
    #[arg(long, default_value = "f32")]
    instance_norm: InstanceNormForm,
    /// Training method when the run folder does not say.
    #[arg(long, default_value = "supervised", value_parser = parse_method)]
    method: Method,
    /// ONNX opset (17 to 21).
    #[arg(long, default_value_t = ldct_proto::onnx::DEFAULT_OPSET)]
    opset: i64,
    /// Real CT slice for the parity check (DICOM, .npy, ...); default: pydicom's
    /// CT_small.dcm from the project venv.
    #[arg(long)]
    parity_slice: Option<PathBuf>,
    /// The manifest's `created` time, in seconds since 1970-01-01 UTC (the
    /// reproducible-builds convention): the same run then exports to the same
    /// bytes. Unset or empty: the time of the export.
    #[arg(long, env = "SOURCE_DATE_EPOCH", value_parser = parse_epoch)]
    source_date_epoch: Option<Epoch>,
}

/// A `--source-date-epoch` value; empty (the variable set to nothing) means unset.
#[derive(Debug, Clone, Copy)]
struct Epoch(Option<chrono::DateTime<chrono::Utc>>);

fn parse_epoch(s: &str) -> Result<Epoch, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(Epoch(None));
    }
    let secs: i64 = s
        .parse()
        .map_err(|_| format!("{s:?}: expected whole seconds since 1970-01-01 UTC"))?;
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| Epoch(Some(t)))
        .ok_or_else(|| format!("{secs} seconds since 1970 is out of range"))
}

fn parse_precision(s: &str) -> Result<Precision, String> {
    s.parse()
}

fn parse_method(s: &str) -> Result<Method, String> {
    serde_json::from_value(serde_json::Value::String(s.to_ascii_lowercase()))
        .map_err(|_| format!("method {s:?}: expected supervised, cyclegan, noise2score or iscl"))
}

fn export(a: ExportArgs) -> anyhow::Result<()> {
    let opts = ExportOptions {
        name: a.name,
        version: a.version,
        precision: a.precision,
        instance_norm: a.instance_norm,
        method: a.method,
        opset: a.opset,
        parity_slice: a.parity_slice,
        created: a.source_date_epoch.and_then(|e| e.0),
        ..ExportOptions::new(a.run, a.out)
    };
    let report = ldct_export::export_run(&opts)
        .with_context(|| format!("exporting {} to {}", opts.run.display(), opts.out.display()))?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match (cli.command, cli.export) {
        (Some(Command::Check { model }), _) => {
            let report = ldct_export::check::check_model_dir(&model)
                .with_context(|| format!("checking model folder {}", model.display()))?;
            println!("{}", serde_json::to_string(&report)?);
        }
        (
            Some(Command::Gate {
                candidate,
                serving,
                metric,
                min_improvement,
            }),
            _,
        ) => {
            let opts = gate::GateOptions {
                metric,
                min_improvement,
                ..gate::GateOptions::new(candidate, serving)
            };
            match gate::gate(&opts) {
                Ok(verdict) => {
                    println!("{}", serde_json::to_string(&verdict)?);
                    eprintln!("gate: {}", verdict.note);
                    if !verdict.accepted {
                        std::process::exit(1);
                    }
                }
                Err(e) => {
                    eprintln!("gate: cannot decide, refusing: {e}");
                    std::process::exit(2);
                }
            }
        }
        (Some(Command::Export(a)), _) | (None, Some(a)) => export(a)?,
        (None, None) => {
            use clap::CommandFactory;
            Cli::command().print_help()?;
            std::process::exit(2);
        }
    }
    Ok(())
}
