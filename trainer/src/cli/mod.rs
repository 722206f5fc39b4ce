//! Command-line interface of `ldct-train`: one module per subcommand, each with
//! its clap `Args` and a `run` function.

use clap::{Parser, Subcommand};

pub mod bench;
pub mod convert;
pub mod dataset;
pub mod denoise;
pub mod eval;
pub mod fit;
pub mod metrics;
pub mod simulate;

/// ldct trainer: low-dose CT simulation, datasets, training and evaluation.
#[derive(Debug, Parser)]
#[command(name = "ldct-train", version, about, long_about = None)]
pub struct Cli {
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// PSNR / SSIM / RMSE of a test image against a reference in a HU window (one JSON line).
    Metrics(metrics::MetricsArgs),
    /// Convert a CT image or series (npy, DICOM file or folder, raw) to float32 HU .npy.
    Convert(convert::ConvertArgs),
    /// Simulate low-dose partners: fd/ and qd/ slices (HU .npy) from full-dose CT.
    Simulate(simulate::SimulateArgs),
    /// Build datasets in the AAPM layout ({train,test}/{fd,qd}).
    #[command(subcommand)]
    Dataset(dataset::DatasetCommand),
    /// Train a network (supervised, CycleGAN, Noise2Score or ISCL) from a TOML configuration into a run folder.
    Fit(fit::FitArgs),
    /// Evaluate a run on a dataset split: low-dose input vs model against full dose.
    Eval(eval::EvalArgs),
    /// Denoise a slice or series with a run's generator (Candle, whole slices, HU out).
    Denoise(denoise::DenoiseArgs),
    /// Time training steps: seconds per step and peak memory of one configuration.
    BenchStep(bench::BenchStepArgs),
}

impl Command {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            Command::Metrics(a) => metrics::run(a),
            Command::Convert(a) => convert::run(a),
            Command::Simulate(a) => simulate::run(a),
            Command::Dataset(c) => dataset::run(c),
            Command::Fit(a) => fit::run(a),
            Command::Eval(a) => eval::run(a),
            Command::Denoise(a) => denoise::run(a),
            Command::BenchStep(a) => bench::run(a),
        }
    }
}

/// Logs to stderr; `RUST_LOG` overrides the level chosen by `-v`.
pub fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
