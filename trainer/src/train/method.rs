//! What every training method provides to the loop ([`crate::train::fit`]): one
//! optimisation step on a batch, the generator that denoises, and saving /
//! restoring its full state (networks, optimisers, pools) for `--resume`.

use std::path::Path;

use candle_core::{Result, Tensor};
use rand::rngs::StdRng;

use crate::model::{ModelError, Network};

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
