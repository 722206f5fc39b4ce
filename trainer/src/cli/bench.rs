//! `ldct-train bench-step`: seconds per training step and peak memory of one
//! configuration, on random patches (no dataset needed). One configuration per
//! process, so the peak RSS is that configuration's; `bench/train_step.py` runs
//! the standard set and prints the table.

use std::time::Instant;

use crate::model::default_device;
use crate::nn::ConvBackend;
use crate::train::{build_method, TrainConfig};
use anyhow::Context;
use candle_core::Tensor;
use clap::{Args, ValueEnum};
use ldct_proto::arch::{Preset, ResnetConfig};
use ldct_proto::manifest::Method as MethodKind;
use rand::rngs::StdRng;
use rand::SeedableRng;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BenchMethod {
    Supervised,
    Cyclegan,
}

#[derive(Debug, Args)]
pub struct BenchStepArgs {
    #[arg(long, value_enum, default_value = "cyclegan")]
    pub method: BenchMethod,
    /// Generator width (resnet ngf; the PatchGAN's ndf is 64 as in CycleGAN).
    #[arg(long, default_value_t = 32)]
    pub ngf: usize,
    /// Residual blocks of the generator.
    #[arg(long, default_value_t = 6)]
    pub blocks: usize,
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Square patch side.
    #[arg(long, default_value_t = 64)]
    pub patch: usize,
    /// Timed steps (after the warm-up).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Convolution implementation.
    #[arg(long, default_value = "candle")]
    pub conv_backend: ConvBackend,
}

pub fn run(args: BenchStepArgs) -> anyhow::Result<()> {
    let device = default_device();
    let mut config = TrainConfig {
        method: match args.method {
            BenchMethod::Supervised => MethodKind::Supervised,
            BenchMethod::Cyclegan => MethodKind::Cyclegan,
        },
        ..TrainConfig::default()
    };
    config.model.generator = Preset::Resnet(ResnetConfig {
        ngf: args.ngf,
        n_blocks: args.blocks,
        ..ResnetConfig::default()
    });
    config.model.discriminator = Preset::Patchgan(Default::default());
    config.model.conv_backend = args.conv_backend;
    config.data.patch = args.patch;
    config.data.batch = args.batch;
    let mut method = build_method(&config, &device, None)?;
    let shape = (args.batch, 1, args.patch, args.patch);
    let low = (Tensor::randn(0f32, 0.3, shape, &device)?.tanh())?;
    let full = (Tensor::randn(0f32, 0.3, shape, &device)?.tanh())?;
    let mut rng = StdRng::seed_from_u64(1);
    for _ in 0..args.warmup {
        method.step(&low, &full, 2e-4, &mut rng)?;
    }
    let mut times = Vec::with_capacity(args.steps);
    for _ in 0..args.steps {
        let t = Instant::now();
        method.step(&low, &full, 2e-4, &mut rng)?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let peak = peak_rss_mib().context("reading the peak RSS")?;
    let line = serde_json::json!({
        "method": format!("{:?}", args.method).to_lowercase(),
        "ngf": args.ngf,
        "blocks": args.blocks,
        "batch": args.batch,
        "patch": args.patch,
        "conv_backend": args.conv_backend.to_string(),
        "device": format!("{device:?}"),
        "threads": rayon::current_num_threads(),
        "steps": args.steps,
        "s_per_step_median": median,
        "s_per_step_mean": mean,
        "s_per_step_min": times[0],
        "peak_rss_mib": peak,
    });
    println!("{line}");
    Ok(())
}

/// The process's peak resident set (VmHWM), MiB (Linux).
fn peak_rss_mib() -> anyhow::Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmHWM in /proc/self/status")?;
    Ok(kb / 1024.0)
}
