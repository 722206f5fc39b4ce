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
//! ([`super::disc_view`], `model.d_view`); the discriminators, their pools and
//! their Adam are a [`Discriminators`] pair.
//!
//! Discriminator step, with fakes from the pools:
//! `loss_D = 0.5 * ((D(real) - 1)^2 + D(pool(fake))^2)` for each domain.

use std::path::Path;

use candle_core::{Result, Tensor};
use rand::rngs::StdRng;

use super::adam::Adam;
use super::adversary::Discriminators;
use super::config::TrainConfig;
use super::method::{l1, load_nets, named_trainable, save_nets, scalar, with_identity, Method};
use crate::model::{ModelError, Network};

pub struct CycleGan {
    /// low -> full (the denoiser).
    g: Network,
    /// full -> low.
    f: Network,
    /// D_full, D_low, their pools and their Adam.
    disc: Discriminators,
    opt_g: Adam,
    lambda_cycle: f64,
    lambda_identity: f64,
}

/// Checkpoint sub-folders of the two generators (the discriminators' are
/// [`super::adversary::NETS`]).
pub const NETS: [&str; 2] = ["g_low2full", "f_full2low"];

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
        let c = &config.cyclegan;
        Ok(Self {
            opt_g: Adam::new(gen_vars, o.beta1, o.beta2, o.eps)?,
            disc: Discriminators::new(d_full, d_low, config, c.pool_size)?,
            g,
            f,
            lambda_cycle: c.lambda_cycle,
            lambda_identity: c.lambda_identity,
        })
    }

    fn generators(&self) -> [(&'static str, &Network); 2] {
        [(NETS[0], &self.g), (NETS[1], &self.f)]
    }
}

impl Method for CycleGan {
    fn loss_names(&self) -> &'static [&'static str] {
        &["g_adv", "cycle", "identity", "g_total", "d_full", "d_low"]
    }

    fn step(&mut self, low: &Tensor, full: &Tensor, lr: f64, rng: &mut StdRng) -> Result<Vec<f64>> {
        // Generator step.
        self.disc.set_frozen(true);
        let fake_full = self.g.forward(low)?;
        let fake_low = self.f.forward(full)?;
        let adv = self.disc.generator_loss(&fake_full, &fake_low)?;
        let cycle =
            (l1(&self.f.forward(&fake_full)?, low)? + l1(&self.g.forward(&fake_low)?, full)?)?;
        let loss_g = (&adv + (&cycle * self.lambda_cycle)?)?;
        let (identity, loss_g) =
            with_identity(loss_g, self.lambda_identity, &self.g, &self.f, low, full)?;
        let grads = loss_g.backward()?;
        self.opt_g.step(&grads, lr)?;
        drop(grads);

        // Discriminator step.
        self.disc.set_frozen(false);
        let (d_full, d_low) = self.disc.losses(full, low, &fake_full, &fake_low, rng)?;
        self.disc.step(&(&d_full + &d_low)?, lr)?;
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
        save_nets(dir, &self.generators())?;
        self.disc.save(dir)?;
        self.opt_g.save(&dir.join("optim_g.safetensors"))?;
        Ok(())
    }

    fn load_checkpoint(&mut self, dir: &Path) -> std::result::Result<(), ModelError> {
        load_nets(dir, &self.generators())?;
        self.disc.load(dir)?;
        self.opt_g.load(&dir.join("optim_g.safetensors"))?;
        Ok(())
    }
}
