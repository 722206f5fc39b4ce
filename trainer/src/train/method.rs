//! What every training method provides to the loop ([`crate::train::fit`]): one
//! optimisation step on a batch, the generator that denoises, and saving /
//! restoring its full state (networks, optimisers, pools) for `--resume`.

use std::path::Path;

use candle_core::{Device, Result, Tensor};
use rand::rngs::StdRng;

use super::pool::ImagePool;
use crate::model::{ModelError, Network, WEIGHTS_FILE};

/// A training method's state.
pub trait Method {
    /// The names of the losses [`Method::step`] returns, in order (metrics.csv columns).
    fn loss_names(&self) -> &'static [&'static str];

    /// One optimisation step. `low` and `full` are `[B, 1, P, P]` (paired or not,
    /// as the method needs); `rng` is the step's own random stream.
    fn step(&mut self, low: &Tensor, full: &Tensor, lr: f64, rng: &mut StdRng) -> Result<Vec<f64>>;

    /// The low-dose -> full-dose network (what eval, denoise and export use).
    fn generator(&self) -> &Network;

    /// Writes everything `--resume` needs into `dir` (which exists and is empty).
    fn save_checkpoint(&self, dir: &Path) -> std::result::Result<(), ModelError>;

    /// Restores what [`Method::save_checkpoint`] wrote.
    fn load_checkpoint(&mut self, dir: &Path) -> std::result::Result<(), ModelError>;

    /// What the method resolved before training (e.g. an estimated noise
    /// parameter), for `run.json` (`method_record`) and `train.log`.
    fn record(&self) -> Option<serde_json::Value> {
        None
    }
}

/// Mean absolute error.
pub fn l1(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    (a - b)?.abs()?.mean_all()
}

/// Mean squared error.
pub fn mse(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    (a - b)?.sqr()?.mean_all()
}

/// LSGAN loss of discriminator scores against a constant target (1 real, 0 fake).
pub fn lsgan(scores: &Tensor, target: f64) -> Result<Tensor> {
    (scores - target)?.sqr()?.mean_all()
}

/// LSGAN discriminator loss `0.5 * ((D(real) - 1)^2 + D(fake)^2)` from its scores of
/// real and fake images.
pub fn lsgan_discriminator(real_scores: &Tensor, fake_scores: &Tensor) -> Result<Tensor> {
    (lsgan(real_scores, 1.0)? + lsgan(fake_scores, 0.0)?)? * 0.5
}

/// The unpaired methods' identity term `|D(x) - x| + |N(y) - y|` for the denoiser
/// `D` (low -> full) and the noise maker `N` (full -> low), with `low` = y and
/// `full` = x, added to `loss` with weight `lambda`. Returns the term's value (0
/// when `lambda` is 0, and then nothing is computed) and the new total.
pub fn with_identity(
    loss: Tensor,
    lambda: f64,
    denoiser: &Network,
    noise_maker: &Network,
    low: &Tensor,
    full: &Tensor,
) -> Result<(f64, Tensor)> {
    if lambda <= 0.0 {
        return Ok((0.0, loss));
    }
    let idt = (l1(&denoiser.forward(full)?, full)? + l1(&noise_maker.forward(low)?, low)?)?;
    let total = (loss + (&idt * lambda)?)?;
    Ok((scalar(&idt)?, total))
}

pub fn scalar(t: &Tensor) -> Result<f64> {
    t.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()
}

/// `(name, var)` pairs of a network's trainable parameters, names prefixed.
pub fn named_trainable(prefix: &str, net: &Network) -> Vec<(String, candle_core::Var)> {
    net.parameters()
        .filter(|(s, _)| s.trainable())
        .map(|(s, v)| (format!("{prefix}.{}", s.name), v.clone()))
        .collect()
}

/// Saves each `(NAME, network)` of a checkpoint in `dir/NAME/`.
pub fn save_nets(dir: &Path, nets: &[(&str, &Network)]) -> std::result::Result<(), ModelError> {
    for (name, net) in nets {
        net.save_dir(dir.join(name))?;
    }
    Ok(())
}

/// Restores what [`save_nets`] wrote.
pub fn load_nets(dir: &Path, nets: &[(&str, &Network)]) -> std::result::Result<(), ModelError> {
    for (name, net) in nets {
        net.load_safetensors(dir.join(name).join(WEIGHTS_FILE))?;
    }
    Ok(())
}

/// Saves each `(NAME, image pool)` of a checkpoint in `dir/NAME.safetensors`.
pub fn save_pools(dir: &Path, pools: &[(&str, &ImagePool)]) -> Result<()> {
    for (name, pool) in pools {
        pool.save(&dir.join(format!("{name}.safetensors")), POOL_TENSOR)?;
    }
    Ok(())
}

/// Restores what [`save_pools`] wrote.
pub fn load_pools(dir: &Path, pools: &mut [(&str, &mut ImagePool)], device: &Device) -> Result<()> {
    for (name, pool) in pools.iter_mut() {
        pool.load(
            &dir.join(format!("{name}.safetensors")),
            POOL_TENSOR,
            device,
        )?;
    }
    Ok(())
}

/// The tensor name of a saved image pool.
const POOL_TENSOR: &str = "pool";
