//! `ldct-train metrics`: PSNR / SSIM / RMSE of one slice against a reference.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use ldct_imaging::{metrics, read, Window};

#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Reference slice (.npy in HU, or .dcm).
    #[arg(long)]
    pub reference: PathBuf,
    /// Slice to score (.npy in HU, or .dcm), same size as the reference.
    #[arg(long)]
    pub test: PathBuf,
    /// HU window LO,HI: both images are clipped to it; data range = HI - LO.
    #[arg(long, default_value = "-1000,1000", allow_hyphen_values = true)]
    pub window: Window,
}

pub fn run(args: MetricsArgs) -> anyhow::Result<()> {
    let reference = read::read_slice(&args.reference)
        .with_context(|| format!("reading reference {}", args.reference.display()))?;
    let test = read::read_slice(&args.test)
        .with_context(|| format!("reading test image {}", args.test.display()))?;
    let q = metrics::quality(&reference.hu, &test.hu, args.window).context("computing metrics")?;
    println!("{}", serde_json::to_string(&q)?);
    Ok(())
}
