//! Deterministic parameter initialisation.
//!
//! Candle's CPU random generator cannot be seeded, so parameters are drawn here:
//! each from its own `StdRng` seeded by the network seed and the parameter's name
//! (FNV-1a). The same seed gives the same weights on every run and machine, and
//! adding a layer does not change the other layers' draws.

use candle_core::{DType, Device, Result, Tensor};
use ldct_proto::arch::{Op, ParamKind, ParamSpec};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

/// How fresh parameters are drawn. Biases start at 0, batch norm running means
/// at 0 and running variances at 1 in every scheme.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Init {
    /// CycleGAN's `init_weights('normal', 0.02)`: convolution weights
    /// `N(0, std^2)`, norm scales `N(1, std^2)`. The default, with std 0.02.
    Normal { std: f64 },
    /// He (Kaiming) normal for ReLU networks: convolution weights
    /// `N(0, 2 / fan_in)` with `fan_in = in * k * k` (`out * k * k` for a
    /// transposed convolution, whose weight is `[in, out, k, k]`, as PyTorch);
    /// norm scales 1.
    Kaiming,
}

impl Default for Init {
    fn default() -> Self {
        Init::Normal { std: 0.02 }
    }
}

impl Init {
    fn std(self) -> Option<f64> {
        match self {
            Init::Normal { std } => Some(std),
            Init::Kaiming => None,
        }
    }
}

/// FNV-1a of a parameter name.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A random tensor that looks trained, for tests of exporters and kernels: conv
/// weights Kaiming-normal, biases `N(0, 0.1^2)`, norm scales `N(1, 0.2^2)`,
/// running means `N(0, 0.2^2)`, running variances uniform in [0.5, 1.5].
pub(crate) fn trained_looking_tensor(
    spec: &ParamSpec,
    op: &Op,
    seed: u64,
    device: &Device,
    dtype: DType,
) -> Result<Tensor> {
    let is_conv = matches!(op, Op::Conv2d { .. } | Op::ConvTranspose2d { .. });
    let mut rng = StdRng::seed_from_u64(seed ^ name_hash(&spec.name) ^ 0x5eed);
    let (mean, std) = match spec.kind {
        ParamKind::Weight if is_conv => {
            return init_tensor(spec, op, Init::Kaiming, seed ^ 0x5eed, device, dtype)
        }
        ParamKind::Weight => (1.0, 0.2),
        ParamKind::Bias => (0.0, 0.1),
        ParamKind::RunningMean => (0.0, 0.2),
        ParamKind::RunningVar => {
            let u = rand_distr::Uniform::new(0.5, 1.5)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            let v: Vec<f64> = (0..spec.numel()).map(|_| u.sample(&mut rng)).collect();
            return Tensor::from_vec(v, spec.shape.as_slice(), device)?.to_dtype(dtype);
        }
    };
    let dist = Normal::new(mean, std).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let v: Vec<f64> = (0..spec.numel()).map(|_| dist.sample(&mut rng)).collect();
    Tensor::from_vec(v, spec.shape.as_slice(), device)?.to_dtype(dtype)
}

/// A fresh tensor for `spec` (owned by a node with op `op`).
pub(crate) fn init_tensor(
    spec: &ParamSpec,
    op: &Op,
    init: Init,
    seed: u64,
    device: &Device,
    dtype: DType,
) -> Result<Tensor> {
    let n = spec.numel();
    let shape = spec.shape.as_slice();
    let mut rng = StdRng::seed_from_u64(seed ^ name_hash(&spec.name));
    let mut normal = |mean: f64, std: f64| -> Result<Tensor> {
        let dist = Normal::new(mean, std)
            .map_err(|e| candle_core::Error::Msg(format!("init of {}: {e}", spec.name)))?;
        let v: Vec<f64> = (0..n).map(|_| dist.sample(&mut rng)).collect();
        Tensor::from_vec(v, shape, device)?.to_dtype(dtype)
    };
    let is_conv = matches!(op, Op::Conv2d { .. } | Op::ConvTranspose2d { .. });
    match spec.kind {
        ParamKind::Weight if is_conv => match init.std() {
            Some(std) => normal(0.0, std),
            None => {
                // dims 1.. of the weight: [in, k, k] for a conv, [out, k, k] for a transposed one.
                let fan_in: usize = spec.shape[1..].iter().product();
                normal(0.0, (2.0 / fan_in.max(1) as f64).sqrt())
            }
        },
        ParamKind::Weight => match init.std() {
            Some(std) => normal(1.0, std),
            None => Tensor::ones(shape, dtype, device),
        },
        ParamKind::Bias | ParamKind::RunningMean => Tensor::zeros(shape, dtype, device),
        ParamKind::RunningVar => Tensor::ones(shape, dtype, device),
    }
}
