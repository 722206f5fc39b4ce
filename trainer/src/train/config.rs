//! The training configuration: one TOML file, every field optional with a
//! documented default (`ldct-train fit --config FILE.toml`). The resolved
//! configuration (defaults filled in) is written to the run folder as
//! `train.toml`, so a run is reproducible from its own folder.

use std::path::{Path, PathBuf};

use ldct_proto::arch::{PatchganConfig, Preset, ResnetConfig, UnetConfig};
use ldct_proto::manifest::Method;
use serde::{Deserialize, Serialize};

use super::disc_view::DiscView;
use crate::model::Init;
use crate::nn::ConvBackend;

/// Errors reading or checking a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// A whole training configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// `supervised` (paired L1/MSE), `cyclegan` or `iscl` (unpaired). Default
    /// `supervised`.
    pub method: Method,
    /// Seed of the initialisation, the patch sampler and the image pool. Default 1.
    pub seed: u64,
    pub data: DataConfig,
    pub model: ModelConfig,
    pub optim: OptimConfig,
    pub schedule: ScheduleConfig,
    pub supervised: SupervisedConfig,
    pub cyclegan: CycleganConfig,
    pub iscl: IsclConfig,
    pub noise2score: Noise2scoreConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            method: Method::Supervised,
            seed: 1,
            data: DataConfig::default(),
            model: ModelConfig::default(),
            optim: OptimConfig::default(),
            schedule: ScheduleConfig::default(),
            supervised: SupervisedConfig::default(),
            cyclegan: CycleganConfig::default(),
            iscl: IsclConfig::default(),
            noise2score: Noise2scoreConfig::default(),
        }
    }
}

/// Where the slices come from and how patches are cut.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// A dataset in the AAPM layout (`ROOT/{train,test}/{fd,qd}/*.npy`, as
    /// `ldct-train dataset import` writes). Paired: supervised training uses the
    /// pairs, CycleGAN draws its low- and full-dose slices independently.
    /// Default `data/invesalius-quarter`. Ignored when `low` and `full` are set.
    pub root: Option<PathBuf>,
    /// Unpaired data for CycleGAN: low-dose slices (any input `ldct-train
    /// convert` reads: a DICOM series folder, a `.npy` file or folder). Default unset.
    pub low: Option<PathBuf>,
    /// Unpaired data for CycleGAN: full-dose slices. Default unset.
    pub full: Option<PathBuf>,
    /// The validation split of `root`, evaluated at the end of every epoch on
    /// whole slices (monitoring only: nothing is selected on it). Default `test`;
    /// `""` turns validation off.
    pub val_split: String,
    /// At most this many validation slices (evenly spaced). Default 8.
    pub val_slices: usize,
    /// HU window mapped to [-1, 1]. Default [-1000, 1000].
    pub window: [f32; 2],
    /// Square patch side (a multiple of the generator's spatial multiple). Default 64.
    pub patch: usize,
    /// Patches per step. Default 4.
    pub batch: usize,
    /// Random flips and 90-degree rotations. Default true.
    pub augment: bool,
    /// A crop is redrawn (up to 20 times) while fewer than this fraction of its
    /// pixels are above -900 HU (mostly air). Default 0.25.
    pub min_tissue: f32,
    /// Batches prepared ahead on a background thread. Default 4.
    pub prefetch: usize,
    /// Train at noise levels drawn log-uniformly from `[lo, hi]` HU: each patch's
    /// low-dose partner is `fd + s * (qd - fd)`, the pair's own noise realisation
    /// scaled to the drawn level (`s = level / the pair's noise level`; noise variance
    /// is proportional to 1 / dose, so this is the pair at another dose). Paired
    /// supervised data only. Default unset: the pairs as stored.
    pub noise_hu: Option<[f32; 2]>,
    /// With `noise_hu`: use `-(qd - fd)` for half of the patches (an equally likely
    /// realisation for noise symmetric about zero). Default true.
    pub noise_flip: bool,
    /// Validate at these noise levels (HU), each validation pair's noise rescaled
    /// as for `noise_hu`; the reported figures are the means over slices and levels.
    /// Default empty: the validation pairs as stored.
    pub val_noise_hu: Vec<f32>,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            root: None,
            low: None,
            full: None,
            val_split: "test".into(),
            val_slices: 8,
            window: [-1000.0, 1000.0],
            patch: 64,
            batch: 4,
            augment: true,
            min_tissue: 0.25,
            prefetch: 4,
            noise_hu: None,
            noise_flip: true,
            val_noise_hu: Vec::new(),
        }
    }
}

/// Default dataset when neither `root` nor `low`/`full` is given.
pub const DEFAULT_DATA_ROOT: &str = "data/invesalius-quarter";

/// The networks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// The generator / denoiser (both CycleGAN generators use it). Default
    /// `{ kind = "resnet", ngf = 32, n_blocks = 6 }` (instance norm, tanh, global
    /// residual).
    pub generator: Preset,
    /// The discriminators of `cyclegan` and `iscl`. Default `{ kind = "patchgan",
    /// ndf = 32, n_layers = 3 }`.
    pub discriminator: Preset,
    /// What the discriminators see: `image` (the seeds' recipe) or `highpass`
    /// (`d_highpass_gain * (x - mean3x3(x))`, a fixed differentiable layer in
    /// front of every discriminator; see [`crate::train::disc_view`]). Default `image`.
    pub d_view: DiscView,
    /// Gain of the `highpass` view. Default 10.
    pub d_highpass_gain: f64,
    /// Weight initialisation. Default `{ kind = "normal", std = 0.02 }`.
    pub init: Init,
    /// Convolution implementation: `fast` (the trainer's CPU kernels, Candle's
    /// ops on a GPU) or `candle` (the reference). Default `fast`.
    pub conv_backend: ConvBackend,
    /// Start the generators at the identity: the weights and bias of their last
    /// convolution are zero, so with a global residual `out = input + tanh(0)` at
    /// step 0 (ReZero-style; the first update makes them non-zero). Default false.
    pub zero_head: bool,
    /// Start the generator from trained weights instead of `init` (fine-tuning): a
    /// model folder (its `model.onnx`, float32), an `.onnx` file, a run folder or a
    /// `.safetensors` file, with exactly this generator's parameters. Relative paths are
    /// from the working directory. Default none.
    pub init_from: Option<PathBuf>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            generator: Preset::Resnet(ResnetConfig {
                ngf: 32,
                n_blocks: 6,
                ..ResnetConfig::default()
            }),
            discriminator: Preset::Patchgan(PatchganConfig {
                ndf: 32,
                ..PatchganConfig::default()
            }),
            d_view: DiscView::Image,
            d_highpass_gain: 10.0,
            init: Init::default(),
            conv_backend: ConvBackend::default(),
            zero_head: false,
            init_from: None,
        }
    }
}

/// Adam.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    /// Learning rate. Default 2e-4 (CycleGAN).
    pub lr: f64,
    /// Default 0.5 (CycleGAN).
    pub beta1: f64,
    /// Default 0.999.
    pub beta2: f64,
    /// Default 1e-8.
    pub eps: f64,
    /// Decay of an exponential moving average of the deployed network's weights
    /// ([`super::ema`]), e.g. 0.999; 0 (the default) for none, the last weights.
    pub ema: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 2e-4,
            beta1: 0.5,
            beta2: 0.999,
            eps: 1e-8,
            ema: 0.0,
        }
    }
}

/// How long, and the learning-rate schedule: constant for `epochs -
/// decay_epochs` epochs, then linear decay towards 0 over the last
/// `decay_epochs` (CycleGAN's `linear` policy).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Default 10.
    pub epochs: usize,
    /// Steps (batches) per epoch. Default 100.
    pub steps_per_epoch: usize,
    /// Default 5.
    pub decay_epochs: usize,
    /// A checkpoint every this many epochs (and always at the end or on Ctrl-C).
    /// Default 1.
    pub checkpoint_every: usize,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            epochs: 10,
            steps_per_epoch: 100,
            decay_epochs: 5,
            checkpoint_every: 1,
        }
    }
}

impl ScheduleConfig {
    pub fn total_steps(&self) -> u64 {
        (self.epochs * self.steps_per_epoch) as u64
    }

    /// The learning rate of (0-based) `step`.
    pub fn lr_at(&self, base: f64, step: u64) -> f64 {
        let total = self.total_steps();
        let decay = (self.decay_epochs.min(self.epochs) * self.steps_per_epoch) as u64;
        let start = total - decay;
        if decay == 0 || step < start {
            return base;
        }
        // As CycleGAN: the last step of the schedule still has a small lr.
        let done = (step - start + 1) as f64;
        base * (1.0 - done / (decay as f64 + 1.0))
    }
}

/// Paired training loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Loss {
    #[default]
    L1,
    Mse,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct SupervisedConfig {
    /// `l1` or `mse`. Default `l1`.
    pub loss: Loss,
}

/// The CycleGAN recipe (Zhu et al. 2017).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CycleganConfig {
    /// Weight of the L1 cycle losses. Default 10.
    pub lambda_cycle: f64,
    /// Weight of the L1 identity losses. Default 5.
    pub lambda_identity: f64,
    /// Fakes kept in each discriminator's image pool. Default 50 (0: no pool).
    pub pool_size: usize,
}

impl Default for CycleganConfig {
    fn default() -> Self {
        Self {
            lambda_cycle: 10.0,
            lambda_identity: 5.0,
            pool_size: 50,
        }
    }
}

/// ISCL (Lee & Jeong 2021); weights from the authors' code. See
/// [`crate::train::iscl`] for the losses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IsclConfig {
    /// Weight of the L1 cycle losses `|G(F(y)) - y| + |F(G(x)) - x|`. Default 30.
    pub lambda_cycle: f64,
    /// Weight of the L1 bypass losses `|F(y) - (y - H(y))| + |F(x + H(y)) - x|`.
    /// Default 30.
    pub lambda_bypass: f64,
    /// Generator steps over which the bypass weight ramps linearly from 0 to
    /// `lambda_bypass`. Default 0 (full weight from the first step). With F at the
    /// identity and H at zero (`model.zero_head`), the bypass term is an L1
    /// identity penalty on the noisy images; the ramp lets the adversarial and
    /// cycle terms move F first (trainer/README.md, ISCL).
    pub bypass_warmup: u64,
    /// Weight of the L1 identity losses `|F(x) - x| + |G(y) - y|` (the denoiser
    /// leaves a full-dose patch alone, the noise maker a low-dose one), as
    /// CycleGAN's `lambda_identity`. Default 0 (the authors' code has none).
    pub lambda_identity: f64,
    /// Weight of the discriminators' boosting loss (the bypass images `y - H(y)`
    /// and `x + H(y)` scored as fakes). Default 1 (0: off).
    pub lambda_boost: f64,
    /// The denoiser is `gamma * F(y) + (1 - gamma) * (y - H(y))`, gamma in [0, 1].
    /// Default 0.5.
    pub gamma: f64,
    /// Fakes kept in each discriminator's image pool. Default 0 (no pool, as the
    /// authors' code).
    pub pool_size: usize,
    /// The noise extractor H (noisy -> noise): a `resnet` or `unet` preset
    /// without a global residual. Default unset: `model.generator` with
    /// `tanh = false` and `global_residual = false`.
    pub extractor: Option<Preset>,
}

impl Default for IsclConfig {
    fn default() -> Self {
        Self {
            lambda_cycle: 30.0,
            lambda_bypass: 30.0,
            bypass_warmup: 0,
            lambda_identity: 0.0,
            lambda_boost: 1.0,
            gamma: 0.5,
            pool_size: 0,
            extractor: None,
        }
    }
}

impl IsclConfig {
    /// The extractor preset in use: `extractor`, or the generator's preset with
    /// neither tanh nor global residual.
    pub fn extractor_preset(&self, generator: &Preset) -> Result<Preset, ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        match &self.extractor {
            Some(
                p @ Preset::Resnet(ResnetConfig {
                    global_residual: false,
                    ..
                }),
            )
            | Some(
                p @ Preset::Unet(UnetConfig {
                    global_residual: false,
                    ..
                }),
            ) => Ok(p.clone()),
            Some(p) => bad(format!(
                "iscl.extractor must be a resnet or unet with global_residual = false \
                 (it predicts the noise, not an image), got {}",
                p.describe()
            )),
            None => generator.without_image_tail().ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "iscl.extractor is unset and model.generator ({}) has no variant \
                     without a global residual: set iscl.extractor to a resnet or unet",
                    generator.describe()
                ))
            }),
        }
    }
}

/// The noise model whose Tweedie formula [`crate::train::noise2score`] denoises with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NoiseModel {
    /// Additive Gaussian noise in the normalised range: `x = y + sigma^2 s(y)`.
    #[default]
    Gaussian,
    /// Poisson noise on the intensity `t = (y + 1) / 2`:
    /// `x_t = (t + eta/2) exp(eta s_t(t))`.
    Poisson,
    /// Multiplicative Gamma noise on `t`: `x_t = k t / ((k - 1) - t s_t(t))`.
    Gamma,
    /// Additive Gaussian noise with the spatial correlation of CT noise after
    /// filtered back-projection, estimated from the training low-dose slices:
    /// `x = y + sigma^2 C s(y)`, the AR-DAE perturbed with the same correlation.
    Correlated,
}

/// How the AR-DAE sigma of a step is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SigmaSchedule {
    /// Linear from `sigma_max` to `sigma_min` over `anneal_steps`, then `sigma_min`
    /// (one sigma for the whole batch).
    Annealed,
    /// Per sample, uniform in `[0, sigma_max]`.
    Uniform,
    /// `sigma_max` at every step (`sigma_min` and `anneal_steps` are unused). The
    /// default: on real head CT it measured best (trainer/README.md, Noise2Score).
    #[default]
    Fixed,
}

/// Noise2Score (Kim & Ye 2021): AR-DAE score network + Tweedie denoiser. See
/// [`crate::train::noise2score`]. Sigmas are relative to the noise scale `c`
/// (the Gaussian noise sigma of the low-dose data, normalised range).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Noise2scoreConfig {
    /// `gaussian`, `correlated`, `poisson` or `gamma`. Default `gaussian`.
    pub noise: NoiseModel,
    /// Gaussian noise sigma in the normalised range (HU / half the window width;
    /// `correlated`: the pixel sigma). Default unset: estimated from the training
    /// low-dose slices (Haar MAD; `correlated`: the flat-region NPS).
    pub sigma: Option<f64>,
    /// Poisson scale on `t = (y + 1) / 2`. Default unset: estimated.
    pub eta: Option<f64>,
    /// Gamma shape on `t` (> 1). Default unset: estimated.
    pub k: Option<f64>,
    /// The noise scale `c` (normalised range): the score network outputs `c * s`
    /// and the AR-DAE sigmas are `rho * c`. Default unset: `sigma` for `gaussian`
    /// (given or estimated), the estimated Gaussian sigma otherwise.
    pub noise_scale: Option<f64>,
    /// `fixed`, `annealed` or `uniform`. Default `fixed`. The Gaussian Tweedie
    /// step uses the smoothing of the last steps (see
    /// [`crate::train::noise2score`]): `sigma_min` (annealed), `sigma_max` (fixed),
    /// `sqrt(0.6) sigma_max` (uniform, to first order).
    pub schedule: SigmaSchedule,
    /// Largest relative AR-DAE sigma `rho` (in units of `c`). Default 0.5 (the
    /// authors' 0.05 for noise sigma 25/255).
    pub sigma_max: f64,
    /// Smallest relative AR-DAE sigma (annealed). Default 0.1: the learnt score is
    /// that of the data smoothed by `rho c` (the Gaussian Tweedie step accounts for
    /// it), while the gradient noise grows as `rho` falls.
    pub sigma_min: f64,
    /// Steps of the linear annealing. Default unset: the steps before the learning
    /// rate starts to decay (`(epochs - decay_epochs) * steps_per_epoch`).
    pub anneal_steps: Option<u64>,
    /// Use every patch with `u` and `-u` (twice the compute, far less gradient
    /// noise at small sigma). Default true.
    pub antithetic: bool,
}

impl Default for Noise2scoreConfig {
    fn default() -> Self {
        Self {
            noise: NoiseModel::Gaussian,
            sigma: None,
            eta: None,
            k: None,
            noise_scale: None,
            schedule: SigmaSchedule::Fixed,
            sigma_max: 0.5,
            sigma_min: 0.1,
            anneal_steps: None,
            antithetic: true,
        }
    }
}

impl TrainConfig {
    /// Whether the generator takes a noise map (a U-Net with `noise_map = true`).
    pub fn noise_conditioned(&self) -> bool {
        matches!(&self.model.generator, Preset::Unet(c) if c.noise_map)
    }

    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                source,
            },
            other => other,
        })
    }

    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: TrainConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "<config>".into(),
            source: Box::new(e),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The resolved configuration as TOML (every field).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# not serialisable: {e}\n"))
    }

    /// Checks what can be checked without the data.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        // Every method of the manifest (supervised, cyclegan, noise2score, iscl) is
        // trained by this version.
        let d = &self.data;
        if d.patch < 8 {
            return bad(format!("data.patch must be at least 8, got {}", d.patch));
        }
        if d.batch == 0 {
            return bad("data.batch must be at least 1".into());
        }
        if d.window[0].partial_cmp(&d.window[1]) != Some(std::cmp::Ordering::Less) {
            return bad(format!("data.window {:?} must have lo < hi", d.window));
        }
        if !(0.0..=1.0).contains(&d.min_tissue) {
            return bad(format!(
                "data.min_tissue must be in [0, 1], got {}",
                d.min_tissue
            ));
        }
        if d.low.is_some() != d.full.is_some() {
            return bad("data.low and data.full go together (unpaired CycleGAN data)".into());
        }
        if let Some([lo, hi]) = d.noise_hu {
            if !(lo.is_finite() && hi.is_finite() && lo > 0.0 && lo <= hi) {
                return bad(format!(
                    "data.noise_hu [{lo}, {hi}] must be positive levels with lo <= hi"
                ));
            }
            if self.method != Method::Supervised {
                return bad("data.noise_hu rescales paired noise: supervised training only".into());
            }
        }
        if self.noise_conditioned() && d.noise_hu.is_none() {
            return bad(
                "a noise_map generator draws its noise levels from data.noise_hu: set it".into(),
            );
        }
        if d.val_noise_hu.iter().any(|l| !(l.is_finite() && *l > 0.0)) {
            return bad(format!(
                "data.val_noise_hu {:?} must hold positive levels",
                d.val_noise_hu
            ));
        }
        if d.low.is_some() && self.method == Method::Supervised {
            return bad(
                "supervised training needs paired data: set data.root, not data.low/full".into(),
            );
        }
        let s = &self.schedule;
        if s.epochs == 0 || s.steps_per_epoch == 0 {
            return bad("schedule.epochs and schedule.steps_per_epoch must be at least 1".into());
        }
        if s.checkpoint_every == 0 {
            return bad("schedule.checkpoint_every must be at least 1".into());
        }
        let g = self.model.d_highpass_gain;
        if !(g > 0.0 && g.is_finite()) {
            return bad(format!("model.d_highpass_gain must be positive, got {g}"));
        }
        let o = &self.optim;
        if !(o.lr > 0.0 && o.lr.is_finite()) {
            return bad(format!("optim.lr must be positive, got {}", o.lr));
        }
        if !(0.0..1.0).contains(&o.beta1) || !(0.0..1.0).contains(&o.beta2) {
            return bad("optim.beta1 and optim.beta2 must be in [0, 1)".into());
        }
        if !(0.0..1.0).contains(&o.ema) {
            return bad(format!(
                "optim.ema must be in [0, 1) (0: no average), got {}",
                o.ema
            ));
        }
        if self.method == Method::Iscl {
            let c = &self.iscl;
            for (name, v) in [
                ("lambda_cycle", c.lambda_cycle),
                ("lambda_bypass", c.lambda_bypass),
                ("lambda_identity", c.lambda_identity),
                ("lambda_boost", c.lambda_boost),
            ] {
                if !(v >= 0.0 && v.is_finite()) {
                    return bad(format!("iscl.{name} must be finite and >= 0, got {v}"));
                }
            }
            if !(0.0..=1.0).contains(&c.gamma) {
                return bad(format!("iscl.gamma must be in [0, 1], got {}", c.gamma));
            }
            c.extractor_preset(&self.model.generator)?;
        }
        if self.method == Method::Noise2score {
            self.validate_noise2score()?;
        }
        if matches!(self.model.discriminator, Preset::Patchgan(_))
            || !matches!(self.method, Method::Cyclegan | Method::Iscl)
        {
            Ok(())
        } else {
            bad("model.discriminator must be a patchgan".into())
        }
    }

    fn validate_noise2score(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(format!("noise2score.{m}")));
        let c = &self.noise2score;
        let pos = |v: f64| v > 0.0 && v.is_finite();
        for (name, v) in [
            ("sigma", c.sigma),
            ("eta", c.eta),
            ("noise_scale", c.noise_scale),
        ] {
            if let Some(v) = v {
                if !pos(v) {
                    return bad(format!("{name} must be positive, got {v}"));
                }
            }
        }
        if let Some(k) = c.k {
            if !(k > 1.0 && k.is_finite()) {
                return bad(format!("k must be above 1, got {k}"));
            }
        }
        if !pos(c.sigma_max) {
            return bad(format!("sigma_max must be positive, got {}", c.sigma_max));
        }
        if !(c.sigma_min > 0.0
            && (c.sigma_min <= c.sigma_max || c.schedule != SigmaSchedule::Annealed))
        {
            return bad(format!(
                "sigma_min must be in (0, sigma_max = {}], got {}",
                c.sigma_max, c.sigma_min
            ));
        }
        if c.anneal_steps == Some(0) {
            return bad("anneal_steps must be at least 1".into());
        }
        let min_patch = 2 * super::noise_correlation::RADIUS + 1;
        if c.noise == NoiseModel::Correlated && self.data.patch < min_patch {
            return bad(format!(
                "noise = \"correlated\" draws perturbations with lags up to {}: data.patch must \
                 be at least {min_patch}, got {}",
                super::noise_correlation::RADIUS,
                self.data.patch
            ));
        }
        if self.data.low.is_some() {
            return Err(ConfigError::Invalid(
                "noise2score trains on the low-dose slices of data.root (data.low/full are for \
                 unpaired CycleGAN data)"
                    .into(),
            ));
        }
        super::noise2score::score_preset(&self.model.generator).map(|_| ())
    }

    /// The dataset root in use (the default when nothing is set).
    pub fn data_root(&self) -> Option<PathBuf> {
        if self.data.low.is_some() {
            return None;
        }
        Some(
            self.data
                .root
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_ROOT)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_documented_defaults() {
        let c = TrainConfig::from_toml("").unwrap();
        assert_eq!(c, TrainConfig::default());
        assert_eq!(c.data.window, [-1000.0, 1000.0]);
        assert_eq!(c.cyclegan.lambda_cycle, 10.0);
        assert_eq!(c.cyclegan.pool_size, 50);
        // The resolved form parses back to itself.
        assert_eq!(TrainConfig::from_toml(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn presets_and_unknown_fields() {
        let c = TrainConfig::from_toml(
            "method = \"cyclegan\"\n[model]\ngenerator = { kind = \"unet\", base = 8, depth = 2 }\n",
        )
        .unwrap();
        assert_eq!(c.method, Method::Cyclegan);
        assert!(matches!(c.model.generator, Preset::Unet(ref u) if u.base == 8 && u.depth == 2));
        let e = TrainConfig::from_toml("[data]\npatchh = 3\n").unwrap_err();
        assert!(e.to_string().contains("patchh"), "{e}");
        let e = TrainConfig::from_toml("[data]\nbatch = 0\n").unwrap_err();
        assert!(e.to_string().contains("batch"), "{e}");
    }

    #[test]
    fn linear_decay_schedule() {
        let s = ScheduleConfig {
            epochs: 4,
            steps_per_epoch: 10,
            decay_epochs: 2,
            checkpoint_every: 1,
        };
        assert_eq!(s.lr_at(1.0, 0), 1.0);
        assert_eq!(s.lr_at(1.0, 19), 1.0);
        assert!((s.lr_at(1.0, 20) - (1.0 - 1.0 / 21.0)).abs() < 1e-12);
        assert!(s.lr_at(1.0, 39) > 0.0 && s.lr_at(1.0, 39) < 0.05);
    }
}
