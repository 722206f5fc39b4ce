//! `ldct-train bench-step`: seconds per training step and peak memory of one
//! configuration, on random patches (no dataset needed). One configuration per
//! process, so the peak RSS is that configuration's; `bench/train_step.py` runs
//! the standard set and prints the table.
//!
//! `--generator resnet` is CycleGAN's ResNet (`--ngf`, `--blocks`); `--generator unet`
//! the default model's U-Net (`--ngf` is its base width, `--depth`, no normalisation,
//! `--noise-map` for the extra noise-level channel as configs/default.toml has it).

use std::time::Instant;

use crate::model::DeviceChoice;
use crate::nn::{profile, ConvBackend};
use crate::train::{build_method, TrainConfig};
use anyhow::Context;
use candle_core::Tensor;
use clap::{Args, ValueEnum};
use ldct_proto::arch::{Norm, Preset, ResnetConfig, UnetConfig};
use ldct_proto::manifest::Method as MethodKind;
use rand::rngs::StdRng;
use rand::SeedableRng;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BenchMethod {
    Supervised,
    Cyclegan,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BenchGenerator {
    Resnet,
    Unet,
}

#[derive(Debug, Args)]
pub struct BenchStepArgs {
    #[arg(long, value_enum, default_value = "cyclegan")]
    pub method: BenchMethod,
    /// Generator architecture.
    #[arg(long, value_enum, default_value = "resnet")]
    pub generator: BenchGenerator,
    /// Generator width (resnet ngf, U-Net base; the PatchGAN's ndf is 64 as in CycleGAN).
    #[arg(long, default_value_t = 32)]
    pub ngf: usize,
    /// Residual blocks of a resnet generator.
    #[arg(long, default_value_t = 6)]
    pub blocks: usize,
    /// Downsamplings of a U-Net generator.
    #[arg(long, default_value_t = 4)]
    pub depth: usize,
    /// A U-Net with a noise-map input channel (the default model's).
    #[arg(long)]
    pub noise_map: bool,
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
    /// Also time each op type over the timed steps (crate::nn::profile) and add
    /// seconds per step by op to the JSON line (`profile`).
    #[arg(long)]
    pub profile: bool,
    /// The device the step runs on (`cuda` needs a build with `--features cuda`).
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceChoice,
}

pub fn run(args: BenchStepArgs) -> anyhow::Result<()> {
    let device = args.device.device()?;
    let mut config = TrainConfig {
        method: match args.method {
            BenchMethod::Supervised => MethodKind::Supervised,
            BenchMethod::Cyclegan => MethodKind::Cyclegan,
        },
        ..TrainConfig::default()
    };
    config.model.generator = match args.generator {
        BenchGenerator::Resnet => Preset::Resnet(ResnetConfig {
            ngf: args.ngf,
            n_blocks: args.blocks,
            ..ResnetConfig::default()
        }),
        BenchGenerator::Unet => Preset::Unet(UnetConfig {
            base: args.ngf,
            depth: args.depth,
            norm: Norm::None,
            noise_map: args.noise_map,
            ..UnetConfig::default()
        }),
    };
    if args.noise_map {
        config.data.noise_hu = Some([5.0, 150.0]);
    }
    config.model.discriminator = Preset::Patchgan(Default::default());
    config.model.conv_backend = args.conv_backend;
    config.data.patch = args.patch;
    config.data.batch = args.batch;
    let mut method = build_method(&config, &device, None)?;
    let shape = (args.batch, 1, args.patch, args.patch);
    let low = (Tensor::randn(0f32, 0.3, shape, &device)?.tanh())?;
    // The noise-level channel: one constant per patch, as the trainer feeds it.
    let low = if config.noise_conditioned() {
        let map = Tensor::rand(0f32, 0.2, (args.batch, 1, 1, 1), &device)?
            .broadcast_as(shape)?
            .contiguous()?;
        Tensor::cat(&[&low, &map], 1)?
    } else {
        low
    };
    let full = (Tensor::randn(0f32, 0.3, shape, &device)?.tanh())?;
    let mut rng = StdRng::seed_from_u64(1);
    for _ in 0..args.warmup {
        crate::nn::pool::on_pool(|| method.step(&low, &full, 2e-4, &mut rng))?;
    }
    device.synchronize()?;
    if args.profile {
        profile::enable();
        profile::take();
    }
    let mut times = Vec::with_capacity(args.steps);
    for _ in 0..args.steps {
        let t = Instant::now();
        profile::time(profile::Op::Step, || {
            crate::nn::pool::on_pool(|| method.step(&low, &full, 2e-4, &mut rng))
        })?;
        // A GPU runs the step's kernels asynchronously: the time is the work's.
        device.synchronize()?;
        times.push(t.elapsed().as_secs_f64());
    }
    let by_op = args.profile.then(|| per_step(profile::take(), args.steps));
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let peak = peak_rss_mib().context("reading the peak RSS")?;
    let line = serde_json::json!({
        "method": format!("{:?}", args.method).to_lowercase(),
        "generator": format!("{:?}", args.generator).to_lowercase(),
        "ngf": args.ngf,
        "blocks": args.blocks,
        "depth": args.depth,
        "noise_map": args.noise_map,
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
        "isa": crate::nn::simd::Isa::detect().name(),
        "profile": by_op,
    });
    println!("{line}");
    Ok(())
}

/// Seconds per step by op (the timers' names), with what the step holds beyond the
/// convolutions, the loss and Adam as `other (element-wise, copies, autograd)`.
fn per_step(rows: Vec<(profile::Op, f64, u64)>, steps: usize) -> serde_json::Value {
    let steps = steps.max(1) as f64;
    let mut map = serde_json::Map::new();
    let (mut conv, mut step, mut accounted) = (0.0, 0.0, 0.0);
    for (op, secs, calls) in rows {
        if calls == 0 {
            continue;
        }
        let per = secs / steps;
        match op {
            profile::Op::Step => step = per,
            profile::Op::Loss | profile::Op::Adam => accounted += per,
            op if op.is_conv() => conv += per,
            _ => {}
        }
        map.insert(op.name().into(), serde_json::json!(per));
    }
    map.insert("conv (all primitives)".into(), serde_json::json!(conv));
    map.insert(
        "other (element-wise, copies, autograd)".into(),
        serde_json::json!((step - conv - accounted).max(0.0)),
    );
    serde_json::Value::Object(map)
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
