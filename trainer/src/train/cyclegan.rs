//! CycleGAN (Zhu et al. 2017) as the seeds train it for low-dose CT: generators
//! G (low -> full) and F (full -> low), PatchGAN discriminators D_full and D_low,
//! LSGAN adversarial losses, L1 cycle (`lambda_cycle`) and identity
//! (`lambda_identity`) losses, an image pool per discriminator, one Adam for
//! both generators and one for both discriminators.
//!
//! Generator step (discriminators frozen: gradients flow through them to the
//! fakes, none to their weights):
//!
//! ```text
//! loss_G = (D_full(G(low)) - 1)^2 + (D_low(F(full)) - 1)^2
//!        + lambda_cycle * (|F(G(low)) - low| + |G(F(full)) - full|)
//!        + lambda_identity * (|G(full) - full| + |F(low) - low|)
//! ```
//!
//! Every discriminator input goes through the configured view
//! ([`super::disc_view`], `model.d_view`).
//!
//! Discriminator step, with fakes from the pools:
//! `loss_D = 0.5 * ((D(real) - 1)^2 + D(pool(fake))^2)` for each domain.

use std::path::Path;

use candle_core::{Result, Tensor};
use rand::rngs::StdRng;

use super::adam::Adam;
use super::config::TrainConfig;
use super::disc_view::DiscView;
use super::method::{
    l1, load_nets, load_pools, lsgan, lsgan_discriminator, named_trainable, save_nets, save_pools,
    scalar, Method,
};
use super::pool::ImagePool;
use crate::model::{ModelError, Network};

pub struct CycleGan {
    /// low -> full (the denoiser).
    g: Network,
    /// full -> low.
    f: Network,
    d_full: Network,
    d_low: Network,
    opt_g: Adam,
    opt_d: Adam,
    pool_full: ImagePool,
    pool_low: ImagePool,
    lambda_cycle: f64,
    lambda_identity: f64,
    d_view: DiscView,
    highpass_gain: f64,
}

/// Checkpoint sub-folders of the four networks.
pub const NETS: [&str; 4] = ["g_low2full", "f_full2low", "d_full", "d_low"];

impl CycleGan {
    pub fn new(
        g: Network,
        f: Network,
        d_full: Network,
        d_low: Network,
        config: &TrainConfig,
    ) -> Result<Self> {
        let o = &config.optim;
        let mut gen_vars = named_trainable("g", &g);
        gen_vars.extend(named_trainable("f", &f));
        let mut disc_vars = named_trainable("d_full", &d_full);
        disc_vars.extend(named_trainable("d_low", &d_low));
        let c = &config.cyclegan;
        Ok(Self {
            opt_g: Adam::new(gen_vars, o.beta1, o.beta2, o.eps)?,
            opt_d: Adam::new(disc_vars, o.beta1, o.beta2, o.eps)?,
            g,
            f,
            d_full,
            d_low,
            pool_full: ImagePool::new(c.pool_size),
            pool_low: ImagePool::new(c.pool_size),
            lambda_cycle: c.lambda_cycle,
            lambda_identity: c.lambda_identity,
            d_view: config.model.d_view,
            highpass_gain: config.model.d_highpass_gain,
        })
    }

    /// A discriminator's score of `x`, through the configured view.
    fn score(&self, d: &Network, x: &Tensor) -> Result<Tensor> {
        self.d_view.score(d, x, self.highpass_gain)
    }

    fn nets(&self) -> [&Network; 4] {
        [&self.g, &self.f, &self.d_full, &self.d_low]
    }
}

impl Method for CycleGan {
    fn loss_names(&self) -> &'static [&'static str] {
        &["g_adv", "cycle", "identity", "g_total", "d_full", "d_low"]
    }

    fn step(&mut self, low: &Tensor, full: &Tensor, lr: f64, rng: &mut StdRng) -> Result<Vec<f64>> {
        // Generator step.
        self.d_full.set_frozen(true);
        self.d_low.set_frozen(true);
        let fake_full = self.g.forward(low)?;
        let fake_low = self.f.forward(full)?;
        let adv = (lsgan(&self.score(&self.d_full, &fake_full)?, 1.0)?
            + lsgan(&self.score(&self.d_low, &fake_low)?, 1.0)?)?;
        let cycle =
            (l1(&self.f.forward(&fake_full)?, low)? + l1(&self.g.forward(&fake_low)?, full)?)?;
        let loss_g = (&adv + (&cycle * self.lambda_cycle)?)?;
        let (identity, loss_g) = if self.lambda_identity > 0.0 {
            let idt = (l1(&self.g.forward(full)?, full)? + l1(&self.f.forward(low)?, low)?)?;
            let total = (loss_g + (&idt * self.lambda_identity)?)?;
            (scalar(&idt)?, total)
        } else {
            (0.0, loss_g)
        };
        let grads = loss_g.backward()?;
        self.opt_g.step(&grads, lr)?;
        drop(grads);

        // Discriminator step.
        self.d_full.set_frozen(false);
        self.d_low.set_frozen(false);
        let pooled_full = self.pool_full.query(&fake_full, rng)?;
        let pooled_low = self.pool_low.query(&fake_low, rng)?;
        let d_full = lsgan_discriminator(
            &self.score(&self.d_full, full)?,
            &self.score(&self.d_full, &pooled_full)?,
        )?;
        let d_low = lsgan_discriminator(
            &self.score(&self.d_low, low)?,
            &self.score(&self.d_low, &pooled_low)?,
        )?;
        let grads = (&d_full + &d_low)?.backward()?;
        self.opt_d.step(&grads, lr)?;
        Ok(vec![
            scalar(&adv)?,
            scalar(&cycle)?,
            identity,
            scalar(&loss_g)?,
            scalar(&d_full)?,
            scalar(&d_low)?,
        ])
    }

    fn generator(&self) -> &Network {
        &self.g
    }

    fn save_checkpoint(&self, dir: &Path) -> std::result::Result<(), ModelError> {
        save_nets(dir, &NETS.into_iter().zip(self.nets()).collect::<Vec<_>>())?;
        save_pools(
            dir,
            &[("pool_full", &self.pool_full), ("pool_low", &self.pool_low)],
        )?;
        self.opt_g.save(&dir.join("optim_g.safetensors"))?;
        self.opt_d.save(&dir.join("optim_d.safetensors"))?;
        Ok(())
    }

    fn load_checkpoint(&mut self, dir: &Path) -> std::result::Result<(), ModelError> {
        load_nets(dir, &NETS.into_iter().zip(self.nets()).collect::<Vec<_>>())?;
        let dev = self.g.device().clone();
        load_pools(
            dir,
            &mut [
                ("pool_full", &mut self.pool_full),
                ("pool_low", &mut self.pool_low),
            ],
            &dev,
        )?;
        self.opt_g.load(&dir.join("optim_g.safetensors"))?;
        self.opt_d.load(&dir.join("optim_d.safetensors"))?;
        Ok(())
    }
}
