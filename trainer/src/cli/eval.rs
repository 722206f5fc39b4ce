//! `ldct-train eval`: a run's generator on a dataset split (AAPM layout), the
//! low-dose input and the model against full dose, per slice (`RUN/eval.csv`) and
//! on average (`RUN/eval.json`, and a Markdown table on stdout), in the windows
//! [-1000, 1000] and [-160, 240] HU.

use std::path::PathBuf;

use crate::train::{eval, load_generator};
use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use ldct_imaging::aapm::{self, Split};

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Run folder (arch.json + weights.safetensors, train.toml).
    #[arg(long)]
    pub run: PathBuf,
    /// Dataset in the AAPM layout ({train,test}/{fd,qd}/*.npy).
    #[arg(long)]
    pub data: PathBuf,
    /// Split to evaluate.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Output file stem inside the run folder (STEM.csv, STEM.json).
    #[arg(long, default_value = "eval")]
    pub stem: String,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let (net, norm) = load_generator(&args.run)
        .with_context(|| format!("loading the generator of {}", args.run.display()))?;
    let split: Split = args.split.parse()?;
    let pairs = aapm::list_pairs(&args.data, split)?;
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(pairs.len() as u64)
    };
    if let Ok(style) = ProgressStyle::with_template(
        "{wide_bar} {pos}/{len} slices [{elapsed_precise}<{eta_precise}]",
    ) {
        bar.set_style(style);
    }
    let mut loaded = Vec::with_capacity(pairs.len());
    for p in &pairs {
        let (fd, qd) = aapm::load_pair(p, None)?;
        loaded.push((p.name.clone(), qd, fd));
    }
    let rows = eval::evaluate(&net, &norm, loaded, |_| bar.inc(1))?;
    bar.finish_and_clear();
    let desc = format!("{} ({split} split)", args.data.display());
    let summary = eval::write(&args.run, &args.stem, &rows, &desc)
        .with_context(|| format!("writing {}/{}.json", args.run.display(), args.stem))?;
    println!(
        "{}: {} slices of {desc}\n\n{}",
        args.run.display(),
        summary.slices,
        eval::to_markdown(&summary)
    );
    Ok(())
}
