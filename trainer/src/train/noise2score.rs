//! Noise2Score (Kim & Ye 2021): a score network trained on noisy images alone by
//! AR-DAE, and a Tweedie formula that turns the score into a denoiser.
//!
//! # Training (low-dose slices only)
//!
//! The score network `s` is `model.generator` with `tanh = false` and
//! `global_residual = false` (a `resnet` or `unet`). It outputs `r = c * s(y)`: the
//! score of the noisy images in units of `1 / c`, where `c` is the noise scale (the
//! Gaussian noise sigma of the low-dose data in the normalised range, see below), so
//! that its output is O(1) whatever the noise level. For a low-dose patch `y`, a
//! standard normal `u` and a sigma per sample `sigma_a = rho * c`, the AR-DAE loss is
//!
//! ```text
//! loss = mean || sigma_a * s(y + sigma_a u) + u ||^2 = mean || rho * r(y + rho c u) + u ||^2
//! ```
//!
//! whose minimiser is the score of the noisy images smoothed by `N(0, sigma_a^2)`;
//! it tends to the score of `y` as `sigma_a -> 0`. `rho` is annealed linearly from
//! `sigma_max` to `sigma_min` over `anneal_steps` (`annealed`), drawn per sample
//! from `U[0, sigma_max]` (`uniform`), or `sigma_max` at every step (`fixed`). With `antithetic`, every patch is used with
//! `u` and with `-u` (both are AR-DAE samples): the term `2 sigma_a s(y) . u`, which
//! has mean zero but dominates the gradient's variance at small `sigma_a`, cancels
//! to first order. The full-dose slices are never used (the patch sampler draws
//! low-dose crops on their own; validation and `eval` alone read full dose).
//!
//! # Denoising (Tweedie)
//!
//! With `s = r / c`:
//!
//! - `gaussian` (`y = x + N(0, sigma^2)` in the normalised range):
//!   `x = y + (sigma^2 + a^2) s(y)` with `a = rho_end c`, the AR-DAE smoothing of
//!   the last training steps. The network learns the score of `y + a u`, the data
//!   convolved with `N(0, sigma^2 + a^2)`, and for that score this is Tweedie's
//!   posterior mean `E[x | y]` exactly (under noise of variance `sigma^2 + a^2`);
//!   `a -> 0` gives the textbook `y + sigma^2 s(y)`. `rho_end` is `sigma_max`
//!   (`fixed`), `sigma_min` (`annealed`) or, for `uniform`, `sqrt(0.6) sigma_max`:
//!   the loss weights each `rho` by `rho^2`, so to first order the learnt score is
//!   smoothed by `E[rho^4] / E[rho^2] = 0.6 sigma_max^2` (an approximation).
//!   `Resolved::smoothing` records `a`; `poisson` and `gamma` below do not use it.
//! - `correlated` (`y = x + N(0, sigma^2 C)`, CT noise after filtered
//!   back-projection; `sigma` the pixel sigma, `C` the correlation, both estimated by
//!   [`crate::train::noise_correlation`]): the AR-DAE perturbation is `a C^{1/2} u`
//!   and its target `C^{1/2} u`, so the network learns `r = c C grad log p(y~)` (the
//!   score preconditioned by the noise covariance), and Tweedie's
//!   `x = y + (sigma^2 + a^2) C grad log p` is the same node as `gaussian`:
//!   `x = y + ((sigma^2 + a^2) / c) r`.
//! - `poisson` and `gamma` need a non-negative intensity. They act on
//!   `t = (y + 1) / 2` in `[0, 1]` (at the default window `[-1000, 1000]` HU,
//!   `t = (HU + 1000) / 2000`, proportional to the attenuation coefficient), whose
//!   score is `s_t(t) = 2 s(y)`; the result is mapped back with `x = 2 x_t - 1`.
//!   - `poisson` (`t = eta * Poisson(x_t / eta)`): `x_t = (t + eta/2) exp(eta s_t(t))`.
//!     This is `exp(E[log x_t | t])` (Tweedie for the natural parameter
//!     `log(x_t / eta)`) with `psi(k + 1) ~ log(k + 1/2)` for the base measure, as
//!     the authors' code computes it.
//!   - `gamma` (`t = x_t * Gamma(k, 1/k)`, mean `x_t`): `x_t = k t / ((k - 1) - t s_t(t))`,
//!     exactly `1 / E[1 / x_t | t]`.
//!
//! The deployable denoiser ([`Method::generator`]) is one graph: the score
//! network's nodes prefixed `score.` (parameters `score.{name}`, the same Candle
//! variables as the trained network) followed by `tweedie.*` nodes made of
//! `Affine`, `Exp`, `Mul`, `Div` and `Add` ([`denoiser_arch`]). Eval, denoise, the
//! exporter and the server see a plain "noisy in, denoised out" network.
//!
//! # Noise parameters
//!
//! Each of `sigma`, `eta`, `k` is taken from the configuration or, when unset,
//! estimated from the training low-dose slices ([`estimate_noise`]): over the
//! non-overlapping 2x2 blocks whose four pixels lie inside the window and above
//! -900 HU (no clipping, no air), the finest Haar diagonal detail
//! `d = (a - b - c + d) / 2` (it cancels locally linear images; for white noise of
//! variance `v` it has variance `v`) and the block's intensity `t = (mean + 1) / 2`
//! give Donoho's robust MAD estimates (`0.6745 = Phi^-1(3/4)`):
//!
//! ```text
//! sigma = median |d| / 0.6745                       (normalised range)
//! eta   = (median(|d/2| / sqrt(t)) / 0.6745)^2      (Var t = eta t)
//! k     = (0.6745 / median(|d/2| / t))^2            (Var t = t^2 / k)
//! ```
//!
//! The noise scale `c` is `sigma` (given or estimated) for `gaussian` and the
//! estimated `sigma` otherwise, unless `noise_scale` is set. For CT the
//! reconstructed noise is spatially correlated, so the Haar estimate is the sigma of
//! white noise with the same finest-scale power, not the pixel standard deviation.
//! Everything resolved is written to `run.json` (`method_record`), `train.log` and
//! the checkpoint (`noise2score.json`, which `--resume` restores).

use std::borrow::Cow;
use std::path::Path;

use candle_core::{DType, Device, Result, Tensor};
use ldct_proto::arch::{Arch, ArchError, Node, Op, Preset, ARCH_SCHEMA_VERSION, INPUT};
use ndarray::Array2;
use rand::rngs::StdRng;
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use super::adam::Adam;
use super::config::{ConfigError, Noise2scoreConfig, NoiseModel, SigmaSchedule, TrainConfig};
use super::method::{named_trainable, scalar, Method};
use super::noise_correlation::{
    estimate_correlation, estimator_range, ColoredNoise, NoiseCorrelation, BLOCK, MIN_NPS_BLOCKS,
};
use crate::model::{shared_varmap, Init, ModelError, Network, WEIGHTS_FILE};

/// `Phi^-1(3/4)`: median |N(0, 1)|.
const MAD_Z: f64 = 0.674_489_750_196_081_7;
/// Blocks with a pixel below this HU are air (skipped by the estimator).
pub const ESTIMATOR_AIR_HU: f32 = -900.0;
/// Fewer usable blocks than this: no estimate.
pub const MIN_BLOCKS: usize = 256;
/// Prefix of the score network's nodes in the denoiser graph.
pub const SCORE_PREFIX: &str = "score";

const NET_DIR: &str = "score";
const OPTIM_FILE: &str = "optim.safetensors";
const RESOLVED_FILE: &str = "noise2score.json";

/// The noise model and its parameter, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "noise", rename_all = "lowercase")]
pub enum Tweedie {
    /// `y = x + N(0, sigma^2)`, sigma in the normalised range.
    Gaussian { sigma: f64 },
    /// `t = eta * Poisson(x_t / eta)` on `t = (y + 1) / 2`.
    Poisson { eta: f64 },
    /// `t = x_t * Gamma(k, 1/k)` on `t = (y + 1) / 2`.
    Gamma { k: f64 },
    /// `y = x + N(0, sigma^2 C)`: Gaussian noise of pixel sigma `sigma` and
    /// correlation `C` ([`Resolved::correlation`]); the score network is trained
    /// with perturbations of the same correlation and outputs `c C grad log p`.
    Correlated { sigma: f64 },
}

/// Where a resolved value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Config,
    Estimated,
}

/// Robust noise statistics of a set of slices (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NoiseStats {
    /// Gaussian sigma, normalised range.
    pub sigma: f64,
    /// Poisson scale on `t = (y + 1) / 2`.
    pub eta: f64,
    /// Gamma shape on `t`.
    pub k: f64,
    /// 2x2 blocks used.
    pub blocks: usize,
}

/// Everything the method resolved before training: what `run.json` records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resolved {
    pub tweedie: Tweedie,
    /// Where the Tweedie parameter came from.
    pub parameter_source: Source,
    /// The noise scale `c` (normalised range): the score network outputs `c * s`
    /// and the AR-DAE sigmas are `rho * c`.
    pub noise_scale: f64,
    pub noise_scale_source: Source,
    /// The estimate from the training low-dose slices, when one was made.
    pub estimate: Option<NoiseStats>,
    /// `sigma` (normalised) in HU at the run's window: `sigma * (hi - lo) / 2`.
    pub sigma_hu: Option<f64>,
    /// Steps over which `rho` goes from `sigma_max` to `sigma_min` (annealed).
    pub anneal_steps: u64,
    /// `a = rho_end * c` (normalised range): the AR-DAE smoothing of the last
    /// training steps, added in quadrature to `sigma` in the Gaussian Tweedie step
    /// (see the module docs). 0 in records written before it existed.
    #[serde(default)]
    pub smoothing: f64,
    /// `correlated`: the noise's correlation estimated from the training
    /// low-dose slices (its `sigma` is the pixel sigma); the AR-DAE perturbations
    /// are drawn with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation: Option<NoiseCorrelation>,
}

impl Resolved {
    /// The Tweedie nodes' parameters: for `gaussian`, the step variance
    /// `sigma^2 + smoothing^2` (as `Gaussian { sigma: sqrt(..) }`); the others as
    /// resolved.
    pub fn denoiser_tweedie(&self) -> Tweedie {
        match self.tweedie {
            Tweedie::Gaussian { sigma } => Tweedie::Gaussian {
                sigma: sigma.hypot(self.smoothing),
            },
            Tweedie::Correlated { sigma } => Tweedie::Correlated {
                sigma: sigma.hypot(self.smoothing),
            },
            other => other,
        }
    }
}

/// The relative AR-DAE sigma of the last training steps under `schedule`.
pub fn rho_end(c: &Noise2scoreConfig) -> f64 {
    match c.schedule {
        SigmaSchedule::Annealed => c.sigma_min,
        SigmaSchedule::Fixed => c.sigma_max,
        SigmaSchedule::Uniform => (0.6f64).sqrt() * c.sigma_max,
    }
}

/// Errors of resolving the noise parameters.
#[derive(Debug, thiserror::Error)]
pub enum Noise2scoreError {
    #[error("noise2score: {0}")]
    Estimate(String),
}

impl From<Noise2scoreError> for ConfigError {
    fn from(e: Noise2scoreError) -> Self {
        ConfigError::Invalid(e.to_string())
    }
}

/// The robust Haar-MAD statistics of normalised slices (values in `[-1, 1]`,
/// window `[lo, hi]` HU); `None` with fewer than [`MIN_BLOCKS`] usable blocks.
pub fn estimate_noise(slices: &[Array2<f32>], window: [f32; 2]) -> Option<NoiseStats> {
    let (lo, hi) = estimator_range(window, ESTIMATOR_AIR_HU);
    let mut d_abs = Vec::new();
    let mut d_sqrt = Vec::new();
    let mut d_rel = Vec::new();
    for img in slices {
        let (h, w) = img.dim();
        for r in (0..h.saturating_sub(1)).step_by(2) {
            for c in (0..w.saturating_sub(1)).step_by(2) {
                let (a, b, cc, d) = (
                    img[(r, c)],
                    img[(r, c + 1)],
                    img[(r + 1, c)],
                    img[(r + 1, c + 1)],
                );
                if [a, b, cc, d].iter().any(|&v| !(v > lo && v < hi)) {
                    continue;
                }
                let detail = f64::from(a - b - cc + d) / 2.0;
                let t = (f64::from(a + b + cc + d) / 4.0 + 1.0) / 2.0;
                // Intensity-domain detail: t = (y + 1) / 2 halves it.
                let dt = detail.abs() / 2.0;
                d_abs.push(detail.abs());
                d_sqrt.push(dt / t.sqrt());
                d_rel.push(dt / t);
            }
        }
    }
    if d_abs.len() < MIN_BLOCKS {
        return None;
    }
    let blocks = d_abs.len();
    let sigma = median(&mut d_abs) / MAD_Z;
    let eta = (median(&mut d_sqrt) / MAD_Z).powi(2);
    let k = (MAD_Z / median(&mut d_rel)).powi(2);
    Some(NoiseStats {
        sigma,
        eta,
        k,
        blocks,
    })
}

fn median(v: &mut [f64]) -> f64 {
    let mid = v.len() / 2;
    let (_, m, _) = v.select_nth_unstable_by(mid, f64::total_cmp);
    *m
}

/// The score network's preset: `model.generator` with tanh and global residual off.
pub fn score_preset(generator: &Preset) -> std::result::Result<Preset, ConfigError> {
    generator.without_image_tail().ok_or_else(|| {
        ConfigError::Invalid(format!(
            "noise2score needs model.generator to be a resnet or unet (its score network is \
             the preset without tanh and global residual), got {}",
            generator.describe()
        ))
    })
}

/// Resolves the noise model, its parameter and the noise scale; `low` gives the
/// training low-dose slices (normalised) when an estimate is needed.
pub fn resolve<'a>(
    config: &TrainConfig,
    low: impl FnOnce() -> std::result::Result<Cow<'a, [Array2<f32>]>, super::TrainError>,
) -> std::result::Result<Resolved, super::TrainError> {
    let c = &config.noise2score;
    let window = config.data.window;
    let parameter_needed = match c.noise {
        NoiseModel::Gaussian | NoiseModel::Correlated => c.sigma.is_none(),
        NoiseModel::Poisson => c.eta.is_none(),
        NoiseModel::Gamma => c.k.is_none(),
    };
    let gaussian_like = matches!(c.noise, NoiseModel::Gaussian | NoiseModel::Correlated);
    let scale_needed = c.noise_scale.is_none() && !(gaussian_like && c.sigma.is_some());
    let correlated = c.noise == NoiseModel::Correlated;
    let needs_estimate = parameter_needed || scale_needed || correlated;
    let (estimate, correlation) = if needs_estimate {
        let slices = low()?;
        let stats = estimate_noise(&slices, window).ok_or_else(|| {
            ConfigError::from(Noise2scoreError::Estimate(format!(
                "fewer than {MIN_BLOCKS} 2x2 blocks of the training low-dose slices lie inside \
                 the window and above {ESTIMATOR_AIR_HU} HU: set the noise parameters in [noise2score]"
            )))
        })?;
        let correlation = if correlated {
            Some(
                estimate_correlation(&slices, window, ESTIMATOR_AIR_HU).ok_or_else(|| {
                    ConfigError::from(Noise2scoreError::Estimate(format!(
                        "the correlated noise model needs at least {MIN_NPS_BLOCKS} blocks of \
                         {BLOCK}x{BLOCK} training low-dose pixels inside the window and above \
                         {ESTIMATOR_AIR_HU} HU (flat enough or not); found fewer"
                    )))
                })?,
            )
        } else {
            None
        };
        (Some(stats), correlation)
    } else {
        (None, None)
    };
    let from = |given: Option<f64>, est: fn(&NoiseStats) -> f64| match (given, &estimate) {
        (Some(v), _) => Ok((v, Source::Config)),
        (None, Some(e)) => Ok((est(e), Source::Estimated)),
        (None, None) => Err(ConfigError::Invalid(
            "noise2score: no estimate made (internal)".into(),
        )),
    };
    let (tweedie, parameter_source) = match c.noise {
        NoiseModel::Gaussian => {
            let (sigma, s) = from(c.sigma, |e| e.sigma)?;
            (Tweedie::Gaussian { sigma }, s)
        }
        NoiseModel::Correlated => match (c.sigma, &correlation) {
            (Some(sigma), _) => (Tweedie::Correlated { sigma }, Source::Config),
            (None, Some(corr)) => (Tweedie::Correlated { sigma: corr.sigma }, Source::Estimated),
            (None, None) => {
                return Err(ConfigError::Invalid(
                    "noise2score: no correlation estimated (internal)".into(),
                )
                .into())
            }
        },
        NoiseModel::Poisson => {
            let (eta, s) = from(c.eta, |e| e.eta)?;
            (Tweedie::Poisson { eta }, s)
        }
        NoiseModel::Gamma => {
            let (k, s) = from(c.k, |e| e.k)?;
            (Tweedie::Gamma { k }, s)
        }
    };
    let (noise_scale, noise_scale_source) = match (c.noise_scale, tweedie) {
        (Some(v), _) => (v, Source::Config),
        (None, Tweedie::Gaussian { sigma } | Tweedie::Correlated { sigma }) => {
            (sigma, parameter_source)
        }
        (None, _) => from(None, |e| e.sigma)?,
    };
    check_parameters(&tweedie, noise_scale)?;
    let sigma = match tweedie {
        Tweedie::Gaussian { sigma } | Tweedie::Correlated { sigma } => Some(sigma),
        _ => estimate.map(|e| e.sigma),
    };
    Ok(Resolved {
        tweedie,
        parameter_source,
        noise_scale,
        noise_scale_source,
        estimate,
        sigma_hu: sigma.map(|s| s * f64::from(window[1] - window[0]) / 2.0),
        anneal_steps: c.anneal_steps.unwrap_or_else(|| {
            let s = &config.schedule;
            let decay = (s.decay_epochs.min(s.epochs) * s.steps_per_epoch) as u64;
            (s.total_steps() - decay).max(1)
        }),
        smoothing: rho_end(c) * noise_scale,
        correlation,
    })
}

fn check_parameters(t: &Tweedie, scale: f64) -> std::result::Result<(), ConfigError> {
    let bad = |m: String| Err(ConfigError::Invalid(format!("noise2score: {m}")));
    let pos = |v: f64| v > 0.0 && v.is_finite();
    match *t {
        Tweedie::Gaussian { sigma } | Tweedie::Correlated { sigma } if !pos(sigma) => {
            return bad(format!("sigma must be positive, got {sigma}"))
        }
        Tweedie::Poisson { eta } if !pos(eta) => {
            return bad(format!("eta must be positive, got {eta}"))
        }
        Tweedie::Gamma { k } if !(k > 1.0 && k.is_finite()) => {
            return bad(format!("k must be above 1, got {k}"))
        }
        _ => {}
    }
    if !pos(scale) {
        return bad(format!("the noise scale must be positive, got {scale}"));
    }
    Ok(())
}

/// The Tweedie nodes (named `tweedie.*`) that turn the score network's output node
/// `r` (= `noise_scale * s(y)`) and the graph input `y` into the denoised image;
/// the last one is the output.
pub fn tweedie_nodes(tweedie: &Tweedie, r: &str, noise_scale: f64) -> Vec<Node> {
    let n = |name: &str, op: Op, inputs: &[&str]| Node {
        name: format!("tweedie.{name}"),
        op,
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
    };
    let affine = |scale: f64, shift: f64| Op::Affine { scale, shift };
    let c = noise_scale;
    match *tweedie {
        // x = y + sigma^2 s = y + (sigma^2 / c) r; correlated: x = y + sigma^2 C s
        // with r = c C s (what its AR-DAE learns), the same nodes.
        Tweedie::Gaussian { sigma } | Tweedie::Correlated { sigma } => vec![
            n("step", affine(sigma * sigma / c, 0.0), &[r]),
            n("out", Op::Add, &[INPUT, "tweedie.step"]),
        ],
        // x_t = (t + eta/2) exp(eta s_t), t = (y + 1)/2, s_t = 2 r / c; x = 2 x_t - 1.
        Tweedie::Poisson { eta } => vec![
            n("log_gain", affine(2.0 * eta / c, 0.0), &[r]),
            n("gain", Op::Exp, &["tweedie.log_gain"]),
            n("shifted", affine(0.5, 0.5 + eta / 2.0), &[INPUT]),
            n("intensity", Op::Mul, &["tweedie.shifted", "tweedie.gain"]),
            n("out", affine(2.0, -1.0), &["tweedie.intensity"]),
        ],
        // x_t = k t / ((k - 1) - t s_t), t s_t = (y + 1) r / c; x = 2 x_t - 1.
        Tweedie::Gamma { k } => vec![
            n("y_plus_1", affine(1.0 / c, 1.0 / c), &[INPUT]),
            n("t_score", Op::Mul, &["tweedie.y_plus_1", r]),
            n("den", affine(-1.0, k - 1.0), &["tweedie.t_score"]),
            n("num", affine(k / 2.0, k / 2.0), &[INPUT]),
            n("intensity", Op::Div, &["tweedie.num", "tweedie.den"]),
            n("out", affine(2.0, -1.0), &["tweedie.intensity"]),
        ],
    }
}

/// The deployable denoiser: the score network's nodes prefixed [`SCORE_PREFIX`],
/// then [`tweedie_nodes`]. A [`Preset::Custom`] single-channel graph.
pub fn denoiser_arch(
    score: &Arch,
    tweedie: &Tweedie,
    noise_scale: f64,
) -> std::result::Result<Arch, ArchError> {
    if score.input_channels != 1 || score.output_channels != 1 {
        return Err(ArchError::Invalid {
            node: INPUT.into(),
            reason: format!(
                "a score network maps 1 channel to 1, {} maps {} to {}",
                score.name, score.input_channels, score.output_channels
            ),
        });
    }
    let mut nodes = score.prefixed_nodes(SCORE_PREFIX);
    let r = format!("{SCORE_PREFIX}.{}", score.output_node());
    nodes.extend(tweedie_nodes(tweedie, &r, noise_scale));
    let kind = match tweedie {
        Tweedie::Gaussian { .. } => "gaussian",
        Tweedie::Poisson { .. } => "poisson",
        Tweedie::Gamma { .. } => "gamma",
        Tweedie::Correlated { .. } => "correlated",
    };
    let arch = Arch {
        schema_version: ARCH_SCHEMA_VERSION,
        name: format!("noise2score_{kind}_{}", score.name),
        preset: Preset::Custom,
        input_channels: 1,
        output_channels: 1,
        nodes,
    };
    arch.validate()?;
    Ok(arch)
}

/// A denoiser [`Network`] over `score`'s variables (shared, not copied).
pub fn denoiser_network(
    score: &Network,
    tweedie: &Tweedie,
    noise_scale: f64,
) -> std::result::Result<Network, ModelError> {
    let arch = denoiser_arch(score.arch(), tweedie, noise_scale)?;
    let map = shared_varmap(score.named_vars(Some(SCORE_PREFIX)));
    let net = Network::from_varmap(
        arch,
        &map,
        score.device(),
        score.dtype(),
        Init::default(),
        0,
    )?;
    Ok(net.with_backend(score.backend()))
}

/// The Noise2Score method's state.
pub struct Noise2Score {
    score: Network,
    denoiser: Network,
    opt: Adam,
    config: Noise2scoreConfig,
    resolved: Resolved,
}

impl Noise2Score {
    pub fn new(
        score: Network,
        config: &TrainConfig,
        resolved: Resolved,
    ) -> std::result::Result<Self, ModelError> {
        let o = &config.optim;
        let opt = Adam::new(named_trainable("score", &score), o.beta1, o.beta2, o.eps)?;
        let denoiser =
            denoiser_network(&score, &resolved.denoiser_tweedie(), resolved.noise_scale)?;
        Ok(Self {
            score,
            denoiser,
            opt,
            config: config.noise2score.clone(),
            resolved,
        })
    }

    pub fn resolved(&self) -> &Resolved {
        &self.resolved
    }

    pub fn score_network(&self) -> &Network {
        &self.score
    }

    /// The relative AR-DAE sigma `rho` of (0-based) `step` under `annealed`.
    pub fn annealed_rho(&self, step: u64) -> f64 {
        let c = &self.config;
        let f = (step as f64 / self.resolved.anneal_steps.max(1) as f64).min(1.0);
        c.sigma_max + (c.sigma_min - c.sigma_max) * f
    }

    /// The AR-DAE loss of one batch (see the module docs) and the mean `rho`.
    pub fn ardae_loss(&self, low: &Tensor, step: u64, rng: &mut StdRng) -> Result<(Tensor, f64)> {
        let (b, ch, h, w) = low.dims4()?;
        let dev = low.device();
        let dtype = low.dtype();
        let rho: Vec<f64> = match self.config.schedule {
            SigmaSchedule::Annealed => vec![self.annealed_rho(step); b],
            SigmaSchedule::Fixed => vec![self.config.sigma_max; b],
            SigmaSchedule::Uniform => (0..b)
                .map(|_| rng.random::<f64>() * self.config.sigma_max)
                .collect(),
        };
        let n = b * ch * h * w;
        let u: Vec<f32> = match &self.resolved.correlation {
            Some(corr) => ColoredNoise::new(corr, h, w).sample(b * ch, rng),
            None => (0..n)
                .map(|_| {
                    let z: f64 = StandardNormal.sample(rng);
                    z as f32
                })
                .collect(),
        };
        let u = Tensor::from_vec(u, (b, ch, h, w), dev)?.to_dtype(dtype)?;
        let rho_t = |r: &[f64]| -> Result<Tensor> {
            Tensor::from_vec(
                r.iter().map(|&v| v as f32).collect(),
                (r.len(), 1, 1, 1),
                dev,
            )?
            .to_dtype(dtype)
        };
        let (input, target, rho_all) = if self.config.antithetic {
            let rr: Vec<f64> = rho.iter().chain(&rho).copied().collect();
            let uu = Tensor::cat(&[&u, &u.neg()?], 0)?;
            (Tensor::cat(&[low, low], 0)?, uu, rho_t(&rr)?)
        } else {
            (low.clone(), u, rho_t(&rho)?)
        };
        let sigma_abs = (&rho_all * self.resolved.noise_scale)?;
        let noisy = (input + target.broadcast_mul(&sigma_abs)?)?;
        let r = self.score.forward(&noisy)?;
        let loss = (r.broadcast_mul(&rho_all)? + target)?.sqr()?.mean_all()?;
        let mean_rho = rho.iter().sum::<f64>() / b as f64;
        Ok((loss, mean_rho))
    }
}

impl Method for Noise2Score {
    fn loss_names(&self) -> &'static [&'static str] {
        &["ardae", "rho"]
    }

    fn step(
        &mut self,
        low: &Tensor,
        _full: &Tensor,
        lr: f64,
        rng: &mut StdRng,
    ) -> Result<Vec<f64>> {
        let step = self.opt.steps_done();
        let (loss, rho) = self.ardae_loss(low, step, rng)?;
        let grads = loss.backward()?;
        self.opt.step(&grads, lr)?;
        Ok(vec![scalar(&loss)?, rho])
    }

    fn generator(&self) -> &Network {
        &self.denoiser
    }

    fn save_checkpoint(&self, dir: &Path) -> std::result::Result<(), ModelError> {
        self.score.save_dir(dir.join(NET_DIR))?;
        self.opt.save(&dir.join(OPTIM_FILE))?;
        let path = dir.join(RESOLVED_FILE);
        let json = serde_json::to_string_pretty(&self.resolved)
            .map_err(|e| ModelError::Unsupported(format!("noise2score.json: {e}")))?;
        std::fs::write(&path, json).map_err(|source| ModelError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    fn load_checkpoint(&mut self, dir: &Path) -> std::result::Result<(), ModelError> {
        self.score
            .load_safetensors(dir.join(NET_DIR).join(WEIGHTS_FILE))?;
        self.opt.load(&dir.join(OPTIM_FILE))?;
        let path = dir.join(RESOLVED_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let resolved: Resolved = serde_json::from_str(&text)
            .map_err(|e| ModelError::Unsupported(format!("{}: {e}", path.display())))?;
        if resolved != self.resolved {
            self.denoiser = denoiser_network(
                &self.score,
                &resolved.denoiser_tweedie(),
                resolved.noise_scale,
            )?;
            self.resolved = resolved;
        }
        Ok(())
    }

    fn record(&self) -> Option<serde_json::Value> {
        serde_json::to_value(&self.resolved).ok()
    }
}

/// The denoiser of a trained score network on its own (for tests and tools):
/// `score` on `device` in `dtype`.
pub fn denoiser_for(
    score_arch: Arch,
    tweedie: &Tweedie,
    noise_scale: f64,
    device: &Device,
    dtype: DType,
) -> std::result::Result<(Network, Network), ModelError> {
    let score = Network::new(score_arch, device, dtype, Init::default(), 0)?;
    let den = denoiser_network(&score, tweedie, noise_scale)?;
    Ok((score, den))
}
