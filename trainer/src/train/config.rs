//! The training configuration: one TOML file, every field optional with a
//! documented default (`ldct-train fit --config FILE.toml`). The resolved
//! configuration (defaults filled in) is written to the run folder as
//! `train.toml`, so a run is reproducible from its own folder.

use std::path::{Path, PathBuf};

use ldct_proto::arch::{PatchganConfig, Preset, ResnetConfig};
use ldct_proto::manifest::Method;
use serde::{Deserialize, Serialize};

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
    /// `supervised` (paired L1/MSE) or `cyclegan` (unpaired). Default `supervised`.
    pub method: Method,
    /// Seed of the initialisation, the patch sampler and the image pool. Default 1.
    pub seed: u64,
    pub data: DataConfig,
    pub model: ModelConfig,
    pub optim: OptimConfig,
    pub schedule: ScheduleConfig,
    pub supervised: SupervisedConfig,
    pub cyclegan: CycleganConfig,
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
    /// CycleGAN's discriminators. Default `{ kind = "patchgan", ndf = 32, n_layers = 3 }`.
    pub discriminator: Preset,
    /// Weight initialisation. Default `{ kind = "normal", std = 0.02 }`.
    pub init: Init,
    /// Convolution implementation: `fast` (the trainer's CPU kernels, Candle's
    /// ops on a GPU) or `candle` (the reference). Default `fast`.
    pub conv_backend: ConvBackend,
    /// Start the generators at the identity: the weights and bias of their last
    /// convolution are zero, so with a global residual `out = input + tanh(0)` at
    /// step 0 (ReZero-style; the first update makes them non-zero). Default false.
    pub zero_head: bool,
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
            init: Init::default(),
            conv_backend: ConvBackend::default(),
            zero_head: false,
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
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 2e-4,
            beta1: 0.5,
            beta2: 0.999,
            eps: 1e-8,
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

impl TrainConfig {
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
        match self.method {
            Method::Supervised | Method::Cyclegan => {}
            other => {
                return bad(format!(
                    "method `{other}` is not trained by this version of ldct-train (supervised, cyclegan)"
                ))
            }
        }
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
        let o = &self.optim;
        if !(o.lr > 0.0 && o.lr.is_finite()) {
            return bad(format!("optim.lr must be positive, got {}", o.lr));
        }
        if !(0.0..1.0).contains(&o.beta1) || !(0.0..1.0).contains(&o.beta2) {
            return bad("optim.beta1 and optim.beta2 must be in [0, 1)".into());
        }
        if matches!(self.model.discriminator, Preset::Patchgan(_))
            || self.method != Method::Cyclegan
        {
            Ok(())
        } else {
            bad("model.discriminator must be a patchgan".into())
        }
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
