//! The training loop and its run folder (see [`crate::train`] for the layout).

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use ldct_imaging::png::{write_comparison, Panel};
use ldct_imaging::window::{Normaliser, Window};
use ldct_proto::arch::{Arch, Op};
use ldct_proto::manifest::Method as MethodKind;
use ndarray::Array2;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::config::{ConfigError, TrainConfig};
use super::cyclegan::CycleGan;
use super::data::{self, DataError, Prefetcher, Sampler, SliceSet};
use super::ema::Ema;
use super::eval::{self, EvalError};
use super::iscl::Iscl;
use super::method::Method;
use super::noise2score::{self, Noise2Score};
use super::plot;
use super::supervised::Supervised;
use crate::model::{default_device, ModelError, Network};
use crate::run_dir::{
    run_dose, DataRecord, RunRecord, CHECKPOINT_DIR, CONFIG_FILE, LOG_FILE, LOSS_PNG, METRICS_FILE,
    RUN_FILE, RUN_SCHEMA_VERSION, SAMPLES_DIR, STATE_FILE,
};
use crate::simulate::dose::derive_seed;

/// Errors of a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Eval(#[from] EvalError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Imaging(#[from] ldct_imaging::ImagingError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Run(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// How to run [`fit`].
#[derive(Debug, Clone, Default)]
pub struct FitOptions {
    pub run: PathBuf,
    /// Continue the run in `run` from its checkpoint (its own `train.toml`).
    pub resume: bool,
    /// Stop (with a checkpoint) once this many steps of the schedule are done.
    pub max_steps: Option<u64>,
    /// Draw a progress bar (on a terminal).
    pub progress: bool,
    /// Set (e.g. by Ctrl-C) to stop after the current step with a checkpoint.
    pub stop: Option<Arc<AtomicBool>>,
}

/// What a call to [`fit`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct FitOutcome {
    /// Steps of the schedule done (in total, resumed ones included).
    pub steps_done: u64,
    pub total_steps: u64,
    /// Stopped by the stop flag.
    pub interrupted: bool,
    /// Validation PSNR at the report's first window after the last epoch, if any.
    pub last_val_psnr: Option<f64>,
}

/// `checkpoint/state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    step: u64,
    /// Loss sums of the epoch in progress, and how many steps they cover.
    epoch_sums: Vec<f64>,
    epoch_count: u64,
    elapsed_s: f64,
}

/// Trains (or resumes) a run; see [`crate::train`] for what the folder holds.
pub fn fit(config: &TrainConfig, opts: &FitOptions) -> Result<FitOutcome, TrainError> {
    let run = &opts.run;
    let config = if opts.resume {
        let c = TrainConfig::from_file(&run.join(CONFIG_FILE))?;
        if !run.join(CHECKPOINT_DIR).join(STATE_FILE).exists() {
            return Err(TrainError::Run(format!(
                "{}: no checkpoint to resume from (checkpoint/state.json is missing)",
                run.display()
            )));
        }
        c
    } else {
        config.validate()?;
        if run.join(CHECKPOINT_DIR).exists() || run.join(METRICS_FILE).exists() {
            return Err(TrainError::Run(format!(
                "{} already holds a run: continue it with --resume or choose another --run",
                run.display()
            )));
        }
        config.clone()
    };
    std::fs::create_dir_all(run.join(SAMPLES_DIR)).map_err(io(run))?;
    let mut log = RunLog::open(&run.join(LOG_FILE))?;

    let device = default_device();
    let norm = data::normaliser(config.data.window)?;
    let run_data = data::load(&config)?;
    let mut method = build_method(&config, &device, Some(&run_data.train.low))?;
    let total = config.schedule.total_steps();
    let spe = config.schedule.steps_per_epoch as u64;

    let mut state = State {
        step: 0,
        epoch_sums: vec![0.0; method.loss_names().len()],
        epoch_count: 0,
        elapsed_s: 0.0,
    };
    if opts.resume {
        let ck = run.join(CHECKPOINT_DIR);
        let text = std::fs::read_to_string(ck.join(STATE_FILE)).map_err(io(&ck))?;
        state = serde_json::from_str(&text)
            .map_err(|e| TrainError::Run(format!("{}: {e}", ck.join(STATE_FILE).display())))?;
        method.load_checkpoint(&ck)?;
        truncate_metrics(&run.join(METRICS_FILE), state.step)?;
        log.line(&format!("resumed at step {} of {total}", state.step))?;
    } else {
        if let Some(from) = &config.model.init_from {
            method.generator().load_weights_from(from)?;
            log.line(&format!("generator initialised from {}", from.display()))?;
        }
        std::fs::write(run.join(CONFIG_FILE), config.to_toml()).map_err(io(run))?;
        let record = run_record(
            &config,
            &run_data,
            method.generator(),
            &device,
            method.record(),
        );
        let json = serde_json::to_string_pretty(&record).unwrap_or_default();
        std::fs::write(run.join(RUN_FILE), json + "\n").map_err(io(run))?;
        let mut header = String::from("epoch,step,lr");
        for n in method.loss_names() {
            let _ = write!(header, ",{n}");
        }
        header.push_str(",val_psnr,val_ssim,val_rmse_hu,val_input_psnr,elapsed_s\n");
        std::fs::write(run.join(METRICS_FILE), header).map_err(io(run))?;
        log.line(&format!(
            "start: method {}, {} training slices ({}), {} steps of batch {} x {}x{} patches, device {device:?}",
            config.method,
            run_data.train.len(),
            run_data.train.description,
            total,
            config.data.batch,
            config.data.patch,
            config.data.patch
        ))?;
        if let Some(r) = &record.method_record {
            tracing::info!("{}: {r}", config.method);
            log.line(&format!("{}: {r}", config.method))?;
        }
    }

    // The weight average (optim.ema) starts from the weights the run starts from
    // and, on resume, continues from the checkpoint's.
    let mut ema = if config.optim.ema > 0.0 {
        let e = Ema::new(method.generator(), config.optim.ema, state.step)?;
        if opts.resume {
            e.load(&run.join(CHECKPOINT_DIR))?;
        }
        Some(e)
    } else {
        None
    };

    let end = opts.max_steps.map_or(total, |m| m.min(total));
    let d = &config.data;
    let sampler = Sampler::new(
        d.patch,
        d.batch,
        d.augment,
        d.min_tissue,
        &norm,
        derive_seed(config.seed, 0xDA7A),
    );
    let sampler = match d.noise_hu {
        Some([lo, hi]) => sampler.with_noise_levels(lo, hi, d.noise_flip),
        None => sampler,
    };
    let train = Arc::new(run_data.train.clone());
    let prefetch = Prefetcher::start(train, sampler, state.step, end, d.prefetch);
    let bar = progress_bar(opts.progress, total, state.step);
    let started = Instant::now();
    let elapsed_before = state.elapsed_s;
    let shape = (d.batch, 1, d.patch, d.patch);
    let conditioned = config.noise_conditioned();
    let mut last_val = None;
    let mut interrupted = false;
    let mut window_patches = (Instant::now(), 0usize);

    while state.step < end {
        let batch = prefetch
            .next_batch()
            .ok_or_else(|| TrainError::Run("the data thread stopped early".into()))??;
        let low = Tensor::from_vec(batch.low, shape, &device)?;
        let low = if conditioned {
            if batch.noise_map.len() != d.batch {
                return Err(TrainError::Run(
                    "a noise_map generator needs a noise map for every patch".into(),
                ));
            }
            let map = Tensor::from_vec(batch.noise_map, (d.batch, 1, 1, 1), &device)?
                .broadcast_as(shape)?
                .contiguous()?;
            Tensor::cat(&[&low, &map], 1)?
        } else {
            low
        };
        let full = Tensor::from_vec(batch.full, shape, &device)?;
        let lr = config.schedule.lr_at(config.optim.lr, state.step);
        let mut rng =
            StdRng::seed_from_u64(derive_seed(config.seed, state.step ^ 0x9001_0000_0000));
        // On a pool thread: the step's convolutions start without waking one.
        let losses = crate::nn::pool::on_pool(|| method.step(&low, &full, lr, &mut rng))?;
        if let Some(bad) = losses.iter().position(|l| !l.is_finite()) {
            return Err(TrainError::Run(format!(
                "loss `{}` became {} at step {}: lower optim.lr or check the data",
                method.loss_names()[bad],
                losses[bad],
                state.step
            )));
        }
        if let Some(e) = &mut ema {
            e.update(method.generator())?;
        }
        for (s, l) in state.epoch_sums.iter_mut().zip(&losses) {
            *s += l;
        }
        state.epoch_count += 1;
        state.step += 1;
        state.elapsed_s = elapsed_before + started.elapsed().as_secs_f64();
        window_patches.1 += d.batch;
        if let Some(bar) = &bar {
            bar.set_position(state.step);
            let dt = window_patches.0.elapsed().as_secs_f64();
            let mut msg = String::new();
            for (n, l) in method.loss_names().iter().zip(&losses).take(4) {
                let _ = write!(msg, "{n} {l:.4} ");
            }
            if dt > 0.0 {
                let _ = write!(msg, "| {:.1} patches/s", window_patches.1 as f64 / dt);
            }
            if dt > 10.0 {
                window_patches = (Instant::now(), 0);
            }
            bar.set_message(msg);
        }

        let epoch_end = state.step.is_multiple_of(spe);
        let stop = opts.stop.as_ref().is_some_and(|f| f.load(Ordering::SeqCst));
        // What the run deploys: the weight average when there is one.
        let deployed = ema.as_ref().map_or(method.generator(), Ema::network);
        if epoch_end {
            let epoch = state.step / spe;
            let val = match &run_data.val {
                Some(v) => Some(validate(deployed, &norm, v)?),
                None => None,
            };
            let means: Vec<f64> = state
                .epoch_sums
                .iter()
                .map(|s| s / state.epoch_count.max(1) as f64)
                .collect();
            let mut row = format!("{epoch},{},{lr:.6e}", state.step);
            for m in &means {
                let _ = write!(row, ",{m:.6}");
            }
            match val {
                Some((q, input_psnr)) => {
                    let _ = write!(
                        row,
                        ",{:.4},{:.5},{:.3},{input_psnr:.4}",
                        q.psnr, q.ssim, q.rmse_hu
                    );
                    last_val = Some(q.psnr);
                }
                None => row.push_str(",,,,"),
            }
            let _ = writeln!(row, ",{:.1}", state.elapsed_s);
            append(&run.join(METRICS_FILE), &row)?;
            let mut summary = format!("epoch {epoch}: step {} lr {lr:.2e}", state.step);
            for (n, m) in method.loss_names().iter().zip(&means) {
                let _ = write!(summary, " {n} {m:.5}");
            }
            if let Some((q, i)) = val {
                let _ = write!(
                    summary,
                    " | val PSNR {:.2} dB (input {i:.2}) SSIM {:.4}",
                    q.psnr, q.ssim
                );
            }
            tracing::info!("{summary}");
            log.line(&summary)?;
            state.epoch_sums.iter_mut().for_each(|s| *s = 0.0);
            state.epoch_count = 0;
            let sample_set = run_data.val.as_ref().unwrap_or(&run_data.train);
            write_sample(deployed, &norm, sample_set, &run.join(SAMPLES_DIR), epoch)?;
            if let Err(e) = plot::write_loss_png(&run.join(METRICS_FILE), &run.join(LOSS_PNG)) {
                tracing::warn!("loss plot: {e}");
            }
            let every = config.schedule.checkpoint_every as u64;
            if epoch.is_multiple_of(every) || state.step == end || stop {
                checkpoint(run, method.as_ref(), ema.as_ref(), &state, &mut log)?;
            }
        } else if state.step == end || stop {
            checkpoint(run, method.as_ref(), ema.as_ref(), &state, &mut log)?;
        }
        if stop {
            interrupted = true;
            log.line(&format!(
                "interrupted at step {}: continue with `ldct-train fit --resume --run {}`",
                state.step,
                run.display()
            ))?;
            break;
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if state.step == total {
        log.line(&format!(
            "finished: {total} steps in {:.0} s",
            state.elapsed_s
        ))?;
    }
    Ok(FitOutcome {
        steps_done: state.step,
        total_steps: total,
        interrupted,
        last_val_psnr: last_val,
    })
}

/// A run folder's generator (on the default device) and the normaliser of its
/// `train.toml` (the default window when the folder has none): what `eval` and
/// `denoise` run.
pub fn load_generator(run: &Path) -> Result<(Network, Normaliser), TrainError> {
    let config_path = run.join(CONFIG_FILE);
    let window = if config_path.exists() {
        TrainConfig::from_file(&config_path)?.data.window
    } else {
        super::config::DataConfig::default().window
    };
    let norm = data::normaliser(window)?;
    let net = Network::load_dir(run, &default_device(), DType::F32)?;
    Ok((net, norm))
}

/// The networks and optimisers of a configuration's method, freshly initialised.
/// `train_low`: the training low-dose slices (normalised) when the caller has them
/// loaded; Noise2Score estimates its noise from them (and loads them itself
/// otherwise, if it needs an estimate).
pub fn build_method(
    config: &TrainConfig,
    device: &Device,
    train_low: Option<&[Array2<f32>]>,
) -> Result<Box<dyn Method>, TrainError> {
    let m = &config.model;
    let net = |preset: &ldct_proto::arch::Preset, stream: u64| -> Result<Network, TrainError> {
        let arch = Arch::from_preset(preset).map_err(ModelError::from)?;
        let net = Network::new(
            arch,
            device,
            DType::F32,
            m.init,
            derive_seed(config.seed, stream),
        )?;
        Ok(net.with_backend(m.conv_backend))
    };
    let generator = |stream: u64| -> Result<Network, TrainError> {
        let g = net(&m.generator, stream)?;
        if m.zero_head {
            zero_last_conv(&g)?;
        }
        Ok(g)
    };
    let g = generator(1)?;
    let multiple = g.arch().spatial_multiple();
    if !config.data.patch.is_multiple_of(multiple) {
        return Err(TrainError::Config(ConfigError::Invalid(format!(
            "data.patch {} must be a multiple of {multiple} for {}",
            config.data.patch,
            m.generator.describe()
        ))));
    }
    Ok(match config.method {
        MethodKind::Supervised => Box::new(Supervised::new(g, config)?),
        MethodKind::Cyclegan => {
            let f = generator(2)?;
            let d_full = net(&m.discriminator, 3)?;
            let d_low = net(&m.discriminator, 4)?;
            Box::new(CycleGan::new(g, f, d_full, d_low, config)?)
        }
        MethodKind::Iscl => {
            // `g` (stream 1) is F, the noisy -> clean generator; H starts at zero
            // noise under `zero_head` as F and G start at the identity.
            let g_clean2noisy = generator(2)?;
            let extractor = config.iscl.extractor_preset(&m.generator)?;
            let h = net(&extractor, 5)?;
            if m.zero_head {
                zero_last_conv(&h)?;
            }
            if !config
                .data
                .patch
                .is_multiple_of(h.arch().spatial_multiple())
            {
                return Err(TrainError::Config(ConfigError::Invalid(format!(
                    "data.patch {} must be a multiple of {} for iscl.extractor {}",
                    config.data.patch,
                    h.arch().spatial_multiple(),
                    extractor.describe()
                ))));
            }
            let d_full = net(&m.discriminator, 3)?;
            let d_low = net(&m.discriminator, 4)?;
            Box::new(Iscl::new(g, g_clean2noisy, h, d_full, d_low, config)?)
        }
        MethodKind::Noise2score => {
            // The score network (stream 1, as the other methods' denoiser); the
            // noise parameters come from the configuration or the low-dose slices.
            let score = net(&noise2score::score_preset(&m.generator)?, 1)?;
            if m.zero_head {
                zero_last_conv(&score)?;
            }
            let resolved = noise2score::resolve(config, || match train_low {
                Some(low) => Ok(Cow::Borrowed(low)),
                None => Ok(Cow::Owned(data::load(config)?.train.low)),
            })?;
            Box::new(Noise2Score::new(score, config, resolved)?)
        }
    })
}

/// Zeroes the parameters of the network's last convolution (`model.zero_head`).
fn zero_last_conv(net: &Network) -> Result<(), TrainError> {
    let last = net
        .arch()
        .nodes
        .iter()
        .rev()
        .find(|n| matches!(n.op, Op::Conv2d { .. } | Op::ConvTranspose2d { .. }))
        .map(|n| n.name.clone())
        .ok_or_else(|| TrainError::Run(format!("{} has no convolution", net.arch().name)))?;
    for (spec, var) in net.parameters() {
        if spec.node == last {
            var.set(&var.as_tensor().zeros_like()?)?;
        }
    }
    Ok(())
}

/// `run.json`: the dose is the dataset's simulation, with Noise2Score's own noise model
/// (what its Tweedie step assumes) when the method is Noise2Score.
fn run_record(
    config: &TrainConfig,
    data: &data::RunData,
    g: &Network,
    device: &Device,
    method_record: Option<serde_json::Value>,
) -> RunRecord {
    let noise_model =
        match (config.method, &method_record) {
            (MethodKind::Noise2score, Some(r)) => serde_json::from_value::<noise2score::Resolved>(
                r.clone(),
            )
            .ok()
            .map(|r| match r.tweedie {
                noise2score::Tweedie::Gaussian { sigma } => {
                    format!("gaussian (Noise2Score's Tweedie model): sigma {sigma:.5} normalised")
                }
                noise2score::Tweedie::Poisson { eta } => {
                    format!("poisson (Noise2Score's Tweedie model): eta {eta:.5}")
                }
                noise2score::Tweedie::Gamma { k } => {
                    format!("gamma (Noise2Score's Tweedie model): k {k:.3}")
                }
                noise2score::Tweedie::Correlated { sigma } => format!(
                    "correlated gaussian (Noise2Score's Tweedie model): pixel sigma {sigma:.5} \
                     normalised, correlation estimated from the low-dose slices"
                ),
            }),
            _ => None,
        };
    RunRecord {
        schema_version: RUN_SCHEMA_VERSION,
        tool: format!("ldct-train {}", env!("CARGO_PKG_VERSION")),
        method: config.method,
        seed: config.seed,
        data: DataRecord {
            description: data.train.description.clone(),
            slices: data.train.len(),
            sources: data
                .root
                .as_deref()
                .map(crate::run_dir::dataset_sources)
                .unwrap_or_default(),
        },
        dose: {
            let mut dose = run_dose(data.root.as_deref(), noise_model);
            if let Some(range) = config.data.noise_hu {
                dose.noise_hu = Some(range);
                dose.noise = format!(
                    "{}; trained at noise levels {}-{} HU (log-uniform, the pool's noise \
                     realisations rescaled)",
                    dose.noise, range[0], range[1]
                );
            }
            dose
        },
        legacy_dose_fraction: None,
        legacy_i0: None,
        hu_window: config.data.window,
        range: [-1.0, 1.0],
        device: format!("{device:?}"),
        conv_backend: config.model.conv_backend.to_string(),
        total_steps: config.schedule.total_steps(),
        generator_parameters: g.arch().parameter_count(),
        method_record,
    }
}

/// Writes the checkpoint atomically (a temporary folder renamed into place), then
/// the deployed generator (the weight average when there is one) at the top of the
/// run folder.
fn checkpoint(
    run: &Path,
    method: &dyn Method,
    ema: Option<&Ema>,
    state: &State,
    log: &mut RunLog,
) -> Result<(), TrainError> {
    let tmp = run.join("checkpoint.tmp");
    let dst = run.join(CHECKPOINT_DIR);
    let old = run.join("checkpoint.old");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    method.save_checkpoint(&tmp)?;
    if let Some(e) = ema {
        e.save(&tmp)?;
    }
    let json = serde_json::to_string_pretty(state).unwrap_or_default();
    std::fs::write(tmp.join(STATE_FILE), json).map_err(io(&tmp))?;
    let _ = std::fs::remove_dir_all(&old);
    if dst.exists() {
        std::fs::rename(&dst, &old).map_err(io(&dst))?;
    }
    std::fs::rename(&tmp, &dst).map_err(io(&tmp))?;
    let _ = std::fs::remove_dir_all(&old);
    ema.map_or(method.generator(), Ema::network).save_dir(run)?;
    log.line(&format!("checkpoint at step {}", state.step))
}

/// Whole-slice validation at the run's window: mean model quality and mean input PSNR.
fn validate(
    g: &Network,
    norm: &Normaliser,
    set: &SliceSet,
) -> Result<(ldct_imaging::metrics::Quality, f64), TrainError> {
    let pairs = (0..set.len()).map(|i| {
        let mut low = set.low[i].clone();
        let mut full = set.full[i].clone();
        low.mapv_inplace(|v| norm.inverse(v));
        full.mapv_inplace(|v| norm.inverse(v));
        (set.names[i].clone(), low, full)
    });
    let rows = eval::evaluate(g, norm, pairs, |_| {})?;
    let s = eval::summarise(&rows);
    let q = ldct_imaging::metrics::Quality {
        psnr: s.output[0].psnr,
        ssim: s.output[0].ssim,
        rmse_hu: s.output[0].rmse_hu,
        window: s.windows[0],
    };
    Ok((q, s.input[0].psnr))
}

fn write_sample(
    g: &Network,
    norm: &Normaliser,
    set: &SliceSet,
    dir: &Path,
    epoch: u64,
) -> Result<(), TrainError> {
    let i = set.len() / 2;
    let mut low = set.low[i].clone();
    low.mapv_inplace(|v| norm.inverse(v));
    let out = eval::denoise_hu(g, norm, &low)?;
    let mut panels = vec![
        Panel::intensity("low dose", low),
        Panel::intensity(format!("model, epoch {epoch}"), out.clone()),
    ];
    if set.paired {
        let mut full = set.full[i].clone();
        full.mapv_inplace(|v| norm.inverse(v));
        panels.push(Panel::intensity("full dose", full.clone()));
        panels.push(Panel::difference("model - full", &out - &full));
    }
    write_comparison(
        &dir.join(format!("epoch_{epoch:04}.png")),
        &panels,
        Window::ABDOMEN,
    )?;
    Ok(())
}

fn progress_bar(show: bool, total: u64, pos: u64) -> Option<ProgressBar> {
    if !show {
        return None;
    }
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{wide_bar} {pos}/{len} steps [{elapsed_precise}<{eta_precise}] {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_position(pos);
    Some(bar)
}

fn append(path: &Path, text: &str) -> Result<(), TrainError> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(io(path))?;
    f.write_all(text.as_bytes()).map_err(io(path))
}

/// Drops metrics rows past `step` (epochs redone after a resume from an older
/// checkpoint).
fn truncate_metrics(path: &Path, step: u64) -> Result<(), TrainError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let mut out = String::new();
    for (i, line) in text.lines().enumerate() {
        let keep = i == 0
            || line
                .split(',')
                .nth(1)
                .and_then(|s| s.parse::<u64>().ok())
                .is_some_and(|s| s <= step);
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    std::fs::write(path, out).map_err(io(path))
}

/// `train.log`: timestamped lines.
struct RunLog {
    file: std::fs::File,
    path: PathBuf,
}

impl RunLog {
    fn open(path: &Path) -> Result<Self, TrainError> {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(io(path))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    fn line(&mut self, text: &str) -> Result<(), TrainError> {
        let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ");
        writeln!(self.file, "{now} {text}").map_err(io(&self.path))
    }
}
