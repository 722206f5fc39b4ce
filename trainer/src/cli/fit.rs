//! `ldct-train fit`: trains a network from a TOML configuration into a run folder
//! (see `crate::train` for the folder's files). Ctrl-C stops after the current
//! step with a checkpoint; `--resume` continues from it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::train::{fit, FitOptions, TrainConfig};
use anyhow::{bail, Context};
use clap::Args;

#[derive(Debug, Args)]
pub struct FitArgs {
    /// Training configuration (TOML; every field optional, see trainer/README.md).
    /// Not needed with --resume (the run's own train.toml is used).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Run folder to create (default: runs/<config file stem>).
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Continue the run in --run from its last checkpoint.
    #[arg(long, requires = "run")]
    pub resume: bool,
    /// Override the configuration's seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Start the generator from these trained weights (overrides the configuration's
    /// `model.init_from`): a model folder, an `.onnx` file, a run folder or a
    /// `.safetensors` file. Recorded in the run's train.toml.
    #[arg(long, conflicts_with = "resume")]
    pub init_from: Option<PathBuf>,
    /// Stop after this many steps of the schedule (with a checkpoint; --resume continues).
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Evaluate the finished run on this dataset's test split afterwards (writes eval.csv/json).
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Only check the configuration and print it resolved (every field), then exit.
    #[arg(long, conflicts_with = "resume")]
    pub check: bool,
}

pub fn run(args: FitArgs) -> anyhow::Result<()> {
    let mut config = match (&args.config, args.resume) {
        (Some(path), _) => TrainConfig::from_file(path)?,
        (None, true) => TrainConfig::default(), // replaced by the run's train.toml
        (None, false) => bail!("--config FILE.toml is needed (or --resume --run RUN)"),
    };
    if args.resume && args.config.is_some() {
        tracing::warn!("--resume uses the run's own train.toml; --config is ignored");
    }
    if let Some(seed) = args.seed {
        if args.resume {
            bail!("--seed cannot change a run being resumed");
        }
        config.seed = seed;
    }
    if let Some(from) = &args.init_from {
        config.model.init_from = Some(from.clone());
    }
    if args.check {
        config.validate()?;
        print!("{}", config.to_toml());
        return Ok(());
    }
    let run_dir = match (&args.run, &args.config) {
        (Some(r), _) => r.clone(),
        (None, Some(c)) => PathBuf::from("runs").join(
            c.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "run".into()),
        ),
        (None, None) => bail!("--run RUN is needed"),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("second Ctrl-C: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!("Ctrl-C: saving a checkpoint after this step (Ctrl-C again to quit now)");
    })
    .context("installing the Ctrl-C handler")?;
    let opts = FitOptions {
        run: run_dir.clone(),
        resume: args.resume,
        max_steps: args.max_steps,
        progress: !args.quiet,
        stop: Some(stop),
    };
    let outcome =
        fit(&config, &opts).with_context(|| format!("training run {}", run_dir.display()))?;
    if outcome.interrupted {
        eprintln!(
            "stopped at step {}/{}; continue with: ldct-train fit --resume --run {}",
            outcome.steps_done,
            outcome.total_steps,
            run_dir.display()
        );
        std::process::exit(130);
    }
    eprintln!(
        "{}: {}/{} steps{}",
        run_dir.display(),
        outcome.steps_done,
        outcome.total_steps,
        outcome
            .last_val_psnr
            .map(|p| format!(", validation PSNR {p:.2} dB"))
            .unwrap_or_default()
    );
    if let Some(data) = args.eval {
        super::eval::run(super::eval::EvalArgs {
            run: run_dir,
            data,
            split: "test".into(),
            stem: "eval".into(),
            quiet: args.quiet,
        })?;
    }
    Ok(())
}
