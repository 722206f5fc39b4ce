//! ISCL, Interdependent Self-Cooperative Learning (Lee & Jeong, IEEE TMI 2021,
//! arXiv 2102.09858): unpaired denoising by a CycleGAN-style pair of generators
//! that cooperates with a self-supervised noise extractor.
//!
//! Networks (`y` a low-dose / noisy patch, `x` an unrelated full-dose / clean one):
//!
//! - `F`: noisy -> clean (a denoiser), `G`: clean -> noisy, both `model.generator`;
//! - `H`: noisy -> noise (the noise extractor), `iscl.extractor` (by default the
//!   generator preset without tanh and global residual: it predicts the noise,
//!   not an image);
//! - `D_full` (clean domain) and `D_low` (noisy domain), `model.discriminator`.
//!
//! One step is three updates, each with the other networks frozen:
//!
//! ```text
//! generators (F, G; Adam opt_g):
//!   adv    = (D_full(F(y)) - 1)^2 + (D_low(G(x)) - 1)^2                   (LSGAN)
//!   cycle  = |G(F(y)) - y| + |F(G(x)) - x|
//!   bypass = |F(y) - (y - H(y))| + |F(x + H(y)) - x|
//!   loss_g = adv + lambda_cycle * cycle + lambda_bypass * bypass
//! discriminators (opt_d), fakes of this step through the image pools:
//!   d_full = 0.5 * ((D_full(x) - 1)^2 + D_full(pool(F(y)))^2)
//!   d_low  = 0.5 * ((D_low(y) - 1)^2 + D_low(pool(G(x)))^2)
//!   boost  = 0.5 * (D_full(y - H(y))^2 + D_low(x + H(y))^2)
//!   loss_d = d_full + d_low + lambda_boost * boost
//! noise extractor (H; opt_h), targets detached:
//!   pseudo = |H(y) - (y - F(y))|           (pseudo noise label from F)
//!   noise  = |H(G(x)) - (G(x) - x)|        (noise consistency on G's pseudo pairs)
//!   loss_h = pseudo + noise
//! ```
//!
//! The deployed denoiser is `gamma * F(y) + (1 - gamma) * (y - H(y))` (gamma 0.5),
//! built as one [`Network`] ([`denoiser`]) whose graph holds F's and H's nodes
//! (prefixed `f.` and `h.`) and whose variables are F's and H's very variables, so
//! it always computes with the current weights and is saved, evaluated, exported
//! and served like any other model.
//!
//! Differences from the authors' TensorFlow code (facts from its `trainer.py`):
//! LSGAN losses instead of its hinge-style losses (`relu(1 - D(real)) +
//! relu(D(fake))`, generator `-D(fake)`), for consistency with ldct's CycleGAN;
//! Adam instead of RAdam with SWA (generators) and Lookahead (discriminators,
//! extractor); the generator step runs first and the discriminators see its fakes
//! (the code updates the discriminators first); H's targets use the F(y) and G(x)
//! of the generator step, from before its update (the code recomputes them
//! after it); the denoiser's output is not clipped to [-1, 1] (conversion to HU
//! clips); networks are ldct's presets, not the paper's (a 20-layer DnCNN-like
//! extractor, 3-block ResNet generators, a global discriminator). Weights
//! follow the code: lambda 30 on cycle and bypass, 1 on boosting and on both
//! extractor losses, gamma 0.5.

use std::path::Path;

use candle_core::{Result, Tensor};
use candle_nn::VarMap;
use ldct_proto::arch::{Arch, Node, Op, Preset, ARCH_SCHEMA_VERSION, INPUT};
use rand::rngs::StdRng;

use super::adam::Adam;
use super::config::TrainConfig;
use super::disc_view::DiscView;
use super::method::{
    l1, load_nets, load_pools, lsgan, lsgan_discriminator, named_trainable, save_nets, save_pools,
    scalar, Method,
};
use super::pool::ImagePool;
use crate::model::{Init, ModelError, Network};

/// Checkpoint sub-folders of the five networks.
pub const NETS: [&str; 5] = ["f_low2full", "g_full2low", "h_noise", "d_full", "d_low"];

/// Prefixes of F's and H's nodes (and so parameters) in the denoiser's graph.
pub const F_PREFIX: &str = "f";
pub const H_PREFIX: &str = "h";

pub struct Iscl {
    /// noisy -> clean.
    f: Network,
    /// clean -> noisy.
    g: Network,
    /// noisy -> noise.
    h: Network,
    d_full: Network,
    d_low: Network,
    /// `gamma * F(y) + (1 - gamma) * (y - H(y))` over F's and H's variables.
    denoiser: Network,
    opt_g: Adam,
    opt_d: Adam,
    opt_h: Adam,
    pool_full: ImagePool,
    pool_low: ImagePool,
    lambda_cycle: f64,
    lambda_bypass: f64,
    lambda_boost: f64,
    d_view: DiscView,
    highpass_gain: f64,
}

/// The deployable ISCL denoiser: one network computing
/// `gamma * F(y) + (1 - gamma) * (y - H(y))`. Its graph is F's nodes prefixed
/// `f.`, H's prefixed `h.` and four combining nodes (`iscl.*`); its variables
/// are F's and H's own (shared, not copied), named `f.{param}` and `h.{param}`.
/// It takes F's convolution backend.
pub fn denoiser(f: &Network, h: &Network, gamma: f64) -> std::result::Result<Network, ModelError> {
    let (fa, ha) = (f.arch(), h.arch());
    for (what, a) in [("F", fa), ("H", ha)] {
        if a.input_channels != 1 || a.output_channels != 1 {
            return Err(ModelError::Unsupported(format!(
                "ISCL's {what} ({}) must map 1 channel to 1 channel",
                a.name
            )));
        }
    }
    let f_out = format!("{F_PREFIX}.{}", fa.output_node());
    let h_out = format!("{H_PREFIX}.{}", ha.output_node());
    let mut nodes = fa.prefixed_nodes(F_PREFIX);
    nodes.extend(ha.prefixed_nodes(H_PREFIX));
    let mut push = |name: &str, op: Op, inputs: &[&str]| {
        nodes.push(Node {
            name: name.into(),
            op,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
        })
    };
    push(
        "iscl.neg_noise",
        Op::Affine {
            scale: -1.0,
            shift: 0.0,
        },
        &[&h_out],
    );
    push("iscl.bypass", Op::Add, &[INPUT, "iscl.neg_noise"]);
    push(
        "iscl.f_weighted",
        Op::Affine {
            scale: gamma,
            shift: 0.0,
        },
        &[&f_out],
    );
    push(
        "iscl.bypass_weighted",
        Op::Affine {
            scale: 1.0 - gamma,
            shift: 0.0,
        },
        &["iscl.bypass"],
    );
    push(
        "iscl.output",
        Op::Add,
        &["iscl.f_weighted", "iscl.bypass_weighted"],
    );
    let arch = Arch {
        schema_version: ARCH_SCHEMA_VERSION,
        name: format!("iscl_f-{}_h-{}", fa.name, ha.name),
        preset: Preset::Custom,
        input_channels: 1,
        output_channels: 1,
        nodes,
    };
    let map = VarMap::new();
    let expected = {
        let data = map.data();
        let mut data = data
            .lock()
            .map_err(|_| ModelError::Unsupported("the VarMap's lock is poisoned".into()))?;
        for (prefix, net) in [(F_PREFIX, f), (H_PREFIX, h)] {
            for (spec, var) in net.parameters() {
                data.insert(format!("{prefix}.{}", spec.name), var.clone());
            }
        }
        data.len()
    };
    let net = Network::from_varmap(arch, &map, f.device(), f.dtype(), Init::default(), 0)?;
    let created = net.parameters().count();
    if created != expected {
        // from_varmap made a variable F and H do not have: the graph is not theirs.
        return Err(ModelError::Unsupported(format!(
            "the ISCL denoiser has {created} parameters, F and H {expected}"
        )));
    }
    Ok(net.with_backend(f.backend()))
}

impl Iscl {
    pub fn new(
        f: Network,
        g: Network,
        h: Network,
        d_full: Network,
        d_low: Network,
        config: &TrainConfig,
    ) -> std::result::Result<Self, ModelError> {
        let o = &config.optim;
        let c = &config.iscl;
        let mut gen_vars = named_trainable("f", &f);
        gen_vars.extend(named_trainable("g", &g));
        let mut disc_vars = named_trainable("d_full", &d_full);
        disc_vars.extend(named_trainable("d_low", &d_low));
        let h_vars = named_trainable("h", &h);
        Ok(Self {
            denoiser: denoiser(&f, &h, c.gamma)?,
            opt_g: Adam::new(gen_vars, o.beta1, o.beta2, o.eps)?,
            opt_d: Adam::new(disc_vars, o.beta1, o.beta2, o.eps)?,
            opt_h: Adam::new(h_vars, o.beta1, o.beta2, o.eps)?,
            f,
            g,
            h,
            d_full,
            d_low,
            pool_full: ImagePool::new(c.pool_size),
            pool_low: ImagePool::new(c.pool_size),
            lambda_cycle: c.lambda_cycle,
            lambda_bypass: c.lambda_bypass,
            lambda_boost: c.lambda_boost,
            d_view: config.model.d_view,
            highpass_gain: config.model.d_highpass_gain,
        })
    }

    /// F: noisy -> clean.
    pub fn f(&self) -> &Network {
        &self.f
    }

    /// G: clean -> noisy.
    pub fn g(&self) -> &Network {
        &self.g
    }

    /// H: noisy -> noise.
    pub fn h(&self) -> &Network {
        &self.h
    }

    /// A discriminator's scores of `x`, through the configured view (`model.d_view`).
    fn score(&self, d: &Network, x: &Tensor) -> Result<Tensor> {
        self.d_view.score(d, x, self.highpass_gain)
    }

    fn nets(&self) -> [&Network; 5] {
        [&self.f, &self.g, &self.h, &self.d_full, &self.d_low]
    }
}

impl Method for Iscl {
    fn loss_names(&self) -> &'static [&'static str] {
        &[
            "g_adv", "cycle", "bypass", "g_total", "d_full", "d_low", "d_boost", "h_pseudo",
            "h_noise",
        ]
    }

    fn step(&mut self, low: &Tensor, full: &Tensor, lr: f64, rng: &mut StdRng) -> Result<Vec<f64>> {
        // Generator step: F and G train; H and the discriminators are frozen.
        self.d_full.set_frozen(true);
        self.d_low.set_frozen(true);
        self.h.set_frozen(true);
        let noise = self.h.forward(low)?.detach();
        // y - H(y): the bypass estimate of the clean image.
        let bypass_clean = (low - &noise)?;
        // x + H(y): a clean patch with the extracted noise of another patch.
        let pseudo_noisy = (full + &noise)?;
        let fake_full = self.f.forward(low)?;
        let fake_low = self.g.forward(full)?;
        let adv = (lsgan(&self.score(&self.d_full, &fake_full)?, 1.0)?
            + lsgan(&self.score(&self.d_low, &fake_low)?, 1.0)?)?;
        let cycle =
            (l1(&self.g.forward(&fake_full)?, low)? + l1(&self.f.forward(&fake_low)?, full)?)?;
        let bypass = (l1(&fake_full, &bypass_clean)? + l1(&self.f.forward(&pseudo_noisy)?, full)?)?;
        let loss_g = ((&adv + (&cycle * self.lambda_cycle)?)? + (&bypass * self.lambda_bypass)?)?;
        let grads = loss_g.backward()?;
        self.opt_g.step(&grads, lr)?;
        drop(grads);
        let fake_full = fake_full.detach();
        let fake_low = fake_low.detach();

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
        let (boost, loss_d) = if self.lambda_boost > 0.0 {
            let boost = ((lsgan(&self.score(&self.d_full, &bypass_clean)?, 0.0)?
                + lsgan(&self.score(&self.d_low, &pseudo_noisy)?, 0.0)?)?
                * 0.5)?;
            let total = ((&d_full + &d_low)? + (&boost * self.lambda_boost)?)?;
            (scalar(&boost)?, total)
        } else {
            (0.0, (&d_full + &d_low)?)
        };
        let grads = loss_d.backward()?;
        self.opt_d.step(&grads, lr)?;
        drop(grads);

        // Extractor step: H trains on pseudo noise labels.
        self.h.set_frozen(false);
        let pseudo = l1(&self.h.forward(low)?, &(low - &fake_full)?)?;
        let noise_consistency = l1(&self.h.forward(&fake_low)?, &(&fake_low - full)?)?;
        let loss_h = (&pseudo + &noise_consistency)?;
        let grads = loss_h.backward()?;
        self.opt_h.step(&grads, lr)?;
        Ok(vec![
            scalar(&adv)?,
            scalar(&cycle)?,
            scalar(&bypass)?,
            scalar(&loss_g)?,
            scalar(&d_full)?,
            scalar(&d_low)?,
            boost,
            scalar(&pseudo)?,
            scalar(&noise_consistency)?,
        ])
    }

    fn generator(&self) -> &Network {
        &self.denoiser
    }

    fn save_checkpoint(&self, dir: &Path) -> std::result::Result<(), ModelError> {
        save_nets(dir, &NETS.into_iter().zip(self.nets()).collect::<Vec<_>>())?;
        save_pools(
            dir,
            &[("pool_full", &self.pool_full), ("pool_low", &self.pool_low)],
        )?;
        self.opt_g.save(&dir.join("optim_g.safetensors"))?;
        self.opt_d.save(&dir.join("optim_d.safetensors"))?;
        self.opt_h.save(&dir.join("optim_h.safetensors"))?;
        Ok(())
    }

    fn load_checkpoint(&mut self, dir: &Path) -> std::result::Result<(), ModelError> {
        // The denoiser shares F's and H's variables: loading them updates it.
        load_nets(dir, &NETS.into_iter().zip(self.nets()).collect::<Vec<_>>())?;
        let dev = self.f.device().clone();
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
        self.opt_h.load(&dir.join("optim_h.safetensors"))?;
        Ok(())
    }
}
