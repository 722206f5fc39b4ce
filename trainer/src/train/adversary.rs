//! The discriminator pair of the unpaired adversarial methods (CycleGAN, ISCL):
//! D_full (full dose vs the denoiser's output) and D_low (low dose vs the
//! noise generator's output), LSGAN losses, an image pool per discriminator, one
//! Adam for both, the configured input view (`model.d_view`), and their part of
//! the checkpoint (`d_full/`, `d_low/`, `pool_*.safetensors`, `optim_d.safetensors`).

use std::path::Path;

use candle_core::{Result, Tensor};
use rand::rngs::StdRng;

use super::adam::Adam;
use super::config::TrainConfig;
use super::disc_view::DiscView;
use super::method::{
    load_nets, load_pools, lsgan, lsgan_discriminator, named_trainable, save_nets, save_pools,
};
use super::pool::ImagePool;
use crate::model::{ModelError, Network};

/// Checkpoint sub-folders of the two discriminators.
pub const NETS: [&str; 2] = ["d_full", "d_low"];

pub struct Discriminators {
    d_full: Network,
    d_low: Network,
    opt: Adam,
    pool_full: ImagePool,
    pool_low: ImagePool,
    view: DiscView,
    highpass_gain: f64,
}

impl Discriminators {
    /// The pair with one Adam over both (`config.optim`), pools of `pool_size`
    /// fakes and the view of `config.model`.
    pub fn new(
        d_full: Network,
        d_low: Network,
        config: &TrainConfig,
        pool_size: usize,
    ) -> Result<Self> {
        let o = &config.optim;
        let mut vars = named_trainable("d_full", &d_full);
        vars.extend(named_trainable("d_low", &d_low));
        Ok(Self {
            opt: Adam::new(vars, o.beta1, o.beta2, o.eps)?,
            d_full,
            d_low,
            pool_full: ImagePool::new(pool_size),
            pool_low: ImagePool::new(pool_size),
            view: config.model.d_view,
            highpass_gain: config.model.d_highpass_gain,
        })
    }

    /// Frozen: gradients flow through the discriminators to their inputs, none to
    /// their weights (the generators' step).
    pub fn set_frozen(&mut self, frozen: bool) {
        self.d_full.set_frozen(frozen);
        self.d_low.set_frozen(frozen);
    }

    /// D_full's scores of `x`, through the view.
    pub fn score_full(&self, x: &Tensor) -> Result<Tensor> {
        self.view.score(&self.d_full, x, self.highpass_gain)
    }

    /// D_low's scores of `x`, through the view.
    pub fn score_low(&self, x: &Tensor) -> Result<Tensor> {
        self.view.score(&self.d_low, x, self.highpass_gain)
    }

    /// The generators' LSGAN loss: `(D_full(fake_full) - 1)^2 + (D_low(fake_low) - 1)^2`.
    pub fn generator_loss(&self, fake_full: &Tensor, fake_low: &Tensor) -> Result<Tensor> {
        lsgan(&self.score_full(fake_full)?, 1.0)? + lsgan(&self.score_low(fake_low)?, 1.0)?
    }

    /// Adds this step's fakes to the pools and returns the discriminators' LSGAN
    /// losses `(D_full, D_low)`, each `0.5 * ((D(real) - 1)^2 + D(pool(fake))^2)`.
    pub fn losses(
        &mut self,
        full: &Tensor,
        low: &Tensor,
        fake_full: &Tensor,
        fake_low: &Tensor,
        rng: &mut StdRng,
    ) -> Result<(Tensor, Tensor)> {
        let pooled_full = self.pool_full.query(fake_full, rng)?;
        let pooled_low = self.pool_low.query(fake_low, rng)?;
        let d_full = lsgan_discriminator(&self.score_full(full)?, &self.score_full(&pooled_full)?)?;
        let d_low = lsgan_discriminator(&self.score_low(low)?, &self.score_low(&pooled_low)?)?;
        Ok((d_full, d_low))
    }

    /// One Adam step of both discriminators on `loss`.
    pub fn step(&mut self, loss: &Tensor, lr: f64) -> Result<()> {
        let grads = loss.backward()?;
        self.opt.step(&grads, lr)
    }

    pub fn save(&self, dir: &Path) -> std::result::Result<(), ModelError> {
        save_nets(dir, &[(NETS[0], &self.d_full), (NETS[1], &self.d_low)])?;
        save_pools(
            dir,
            &[("pool_full", &self.pool_full), ("pool_low", &self.pool_low)],
        )?;
        self.opt.save(&dir.join("optim_d.safetensors"))?;
        Ok(())
    }

    pub fn load(&mut self, dir: &Path) -> std::result::Result<(), ModelError> {
        load_nets(dir, &[(NETS[0], &self.d_full), (NETS[1], &self.d_low)])?;
        let dev = self.d_full.device().clone();
        load_pools(
            dir,
            &mut [
                ("pool_full", &mut self.pool_full),
                ("pool_low", &mut self.pool_low),
            ],
            &dev,
        )?;
        self.opt.load(&dir.join("optim_d.safetensors"))?;
        Ok(())
    }
}
