//! `ldct-export`: model folders for the server.
//!
//! `ldct-export check --model DIR` verifies a model folder (manifest, checksum,
//! ONNX Runtime load and a test run). Exporting trained checkpoints
//! (`--run RUN --out DIR`) arrives with the trainer's architecture description.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "ldct-export", version, about = "ldct model export and checks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Verify a model folder: manifest, SHA-256, loads and runs in ONNX Runtime.
    Check {
        /// Model folder holding model.onnx and manifest.json.
        #[arg(long)]
        model: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Check { model } => {
            let report = ldct_export::check::check_model_dir(&model)
                .with_context(|| format!("checking model folder {}", model.display()))?;
            println!("{}", serde_json::to_string(&report)?);
        }
    }
    Ok(())
}
