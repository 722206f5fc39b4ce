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
//!   identity = |F(x) - x| + |G(y) - y|                   (only when lambda_identity > 0)
//!   loss_g = adv + lambda_cycle * cycle + lambda_bypass * ramp * bypass
//!            + lambda_identity * identity
//!            (ramp: 0 -> 1 over `bypass_warmup` steps; 1 when that is 0)
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
use ldct_proto::arch::{Arch, Node, Op, Preset, ARCH_SCHEMA_VERSION, INPUT};
use rand::rngs::StdRng;

use super::adam::Adam;
use super::adversary::Discriminators;
use super::config::TrainConfig;
use super::method::{
    l1, load_nets, lsgan, named_trainable, save_nets, scalar, with_identity, Method,
};
use crate::model::{shared_varmap, Init, ModelError, Network};

/// Checkpoint sub-folders of F, G and H (the discriminators' are
/// [`super::adversary::NETS`]).
pub const NETS: [&str; 3] = ["f_low2full", "g_full2low", "h_noise"];

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
    /// D_full, D_low, their pools and their Adam (opt_d).
    disc: Discriminators,
    /// `gamma * F(y) + (1 - gamma) * (y - H(y))` over F's and H's variables.
    denoiser: Network,
    opt_g: Adam,
    opt_h: Adam,
    lambda_cycle: f64,
    lambda_bypass: f64,
    bypass_warmup: u64,
    lambda_identity: f64,
    lambda_boost: f64,
}

/// The bypass weight after `done` generator steps: `lambda`, ramped linearly from
/// 0 over `warmup` steps (`warmup = 0`: `lambda` from the start).
pub fn bypass_ramp(lambda: f64, warmup: u64, done: u64) -> f64 {
    if warmup == 0 {
        return lambda;
    }
    lambda * (done as f64 / warmup as f64).min(1.0)
}

/// The deployable ISCL denoiser: one network computing
/// `gamma * F(y) + (1 - gamma) * (y - H(y))`. Its graph is F's nodes prefixed
/// `f.`, H's prefixed `h.` and the combining nodes (`iscl.*`, ending in
/// `iscl.output`); its variables are F's and H's own (shared, not copied), named
/// `f.{param}` and `h.{param}`. A network whose weight is 0 is left out (gamma 1:
/// F alone; gamma 0: the bypass estimate alone), so it costs nothing to serve.
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
    let (use_f, use_h) = (gamma != 0.0, gamma != 1.0);
    let f_out = format!("{F_PREFIX}.{}", fa.output_node());
    let h_out = format!("{H_PREFIX}.{}", ha.output_node());
    let mut nodes = Vec::new();
    if use_f {
        nodes.extend(fa.prefixed_nodes(F_PREFIX));
    }
    if use_h {
        nodes.extend(ha.prefixed_nodes(H_PREFIX));
    }
    let mut push = |name: &str, op: Op, inputs: &[&str]| {
        nodes.push(Node {
            name: name.into(),
            op,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
        })
    };
    let weighted = |scale: f64| Op::Affine { scale, shift: 0.0 };
    if use_h {
        push("iscl.neg_noise", weighted(-1.0), &[&h_out]);
        push("iscl.bypass", Op::Add, &[INPUT, "iscl.neg_noise"]);
    }
    match (use_f, use_h) {
        (true, true) => {
            push("iscl.f_weighted", weighted(gamma), &[&f_out]);
            push(
                "iscl.bypass_weighted",
                weighted(1.0 - gamma),
                &["iscl.bypass"],
            );
            push(
                "iscl.output",
                Op::Add,
                &["iscl.f_weighted", "iscl.bypass_weighted"],
            );
        }
        (true, false) => push("iscl.output", weighted(1.0), &[&f_out]),
        (false, _) => push("iscl.output", weighted(1.0), &["iscl.bypass"]),
    }
    let name = match (use_f, use_h) {
        (true, true) => format!("iscl_f-{}_h-{}", fa.name, ha.name),
        (true, false) => format!("iscl_f-{}", fa.name),
        (false, _) => format!("iscl_h-{}", ha.name),
    };
    let arch = Arch {
        schema_version: ARCH_SCHEMA_VERSION,
        name,
        preset: Preset::Custom,
        input_channels: 1,
        output_channels: 1,
        nodes,
    };
    let used = [(F_PREFIX, f, use_f), (H_PREFIX, h, use_h)]
        .into_iter()
        .filter(|&(_, _, used)| used);
    let map = shared_varmap(used.flat_map(|(prefix, net, _)| net.named_vars(Some(prefix))));
    let expected = map.all_vars().len();
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
    /// The bypass weight of the next generator step: `lambda_bypass`, ramped
    /// linearly from 0 over `bypass_warmup` steps.
    pub fn bypass_weight(&self) -> f64 {
        bypass_ramp(
            self.lambda_bypass,
            self.bypass_warmup,
            self.opt_g.steps_done(),
        )
    }

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
        let h_vars = named_trainable("h", &h);
        Ok(Self {
            denoiser: denoiser(&f, &h, c.gamma)?,
            opt_g: Adam::new(gen_vars, o.beta1, o.beta2, o.eps)?,
            opt_h: Adam::new(h_vars, o.beta1, o.beta2, o.eps)?,
            f,
            g,
            h,
            disc: Discriminators::new(d_full, d_low, config, c.pool_size)?,
            lambda_cycle: c.lambda_cycle,
            lambda_bypass: c.lambda_bypass,
            bypass_warmup: c.bypass_warmup,
            lambda_identity: c.lambda_identity,
            lambda_boost: c.lambda_boost,
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

    fn generators(&self) -> [(&'static str, &Network); 3] {
        [(NETS[0], &self.f), (NETS[1], &self.g), (NETS[2], &self.h)]
    }
}

impl Method for Iscl {
    fn loss_names(&self) -> &'static [&'static str] {
        &[
            "g_adv", "cycle", "bypass", "identity", "g_total", "d_full", "d_low", "d_boost",
            "h_pseudo", "h_noise",
        ]
    }

    fn step(&mut self, low: &Tensor, full: &Tensor, lr: f64, rng: &mut StdRng) -> Result<Vec<f64>> {
        // Generator step: F and G train; H and the discriminators are frozen.
        self.disc.set_frozen(true);
        self.h.set_frozen(true);
        let noise = self.h.forward(low)?.detach();
        // y - H(y): the bypass estimate of the clean image.
        let bypass_clean = (low - &noise)?;
        // x + H(y): a clean patch with the extracted noise of another patch.
        let pseudo_noisy = (full + &noise)?;
        let fake_full = self.f.forward(low)?;
        let fake_low = self.g.forward(full)?;
        let adv = self.disc.generator_loss(&fake_full, &fake_low)?;
        let cycle =
            (l1(&self.g.forward(&fake_full)?, low)? + l1(&self.f.forward(&fake_low)?, full)?)?;
        let bypass = (l1(&fake_full, &bypass_clean)? + l1(&self.f.forward(&pseudo_noisy)?, full)?)?;
        let loss_g = ((&adv + (&cycle * self.lambda_cycle)?)? + (&bypass * self.bypass_weight())?)?;
        let (identity, loss_g) =
            with_identity(loss_g, self.lambda_identity, &self.f, &self.g, low, full)?;
        let grads = loss_g.backward()?;
        self.opt_g.step(&grads, lr)?;
        drop(grads);
        let fake_full = fake_full.detach();
        let fake_low = fake_low.detach();

        // Discriminator step.
        self.disc.set_frozen(false);
        let (d_full, d_low) = self.disc.losses(full, low, &fake_full, &fake_low, rng)?;
        let (boost, loss_d) = if self.lambda_boost > 0.0 {
            let boost = ((lsgan(&self.disc.score_full(&bypass_clean)?, 0.0)?
                + lsgan(&self.disc.score_low(&pseudo_noisy)?, 0.0)?)?
                * 0.5)?;
            let total = ((&d_full + &d_low)? + (&boost * self.lambda_boost)?)?;
            (scalar(&boost)?, total)
        } else {
            (0.0, (&d_full + &d_low)?)
        };
        self.disc.step(&loss_d, lr)?;

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
            identity,
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
        save_nets(dir, &self.generators())?;
        self.disc.save(dir)?;
        self.opt_g.save(&dir.join("optim_g.safetensors"))?;
        self.opt_h.save(&dir.join("optim_h.safetensors"))?;
        Ok(())
    }

    fn load_checkpoint(&mut self, dir: &Path) -> std::result::Result<(), ModelError> {
        // The denoiser shares F's and H's variables: loading them updates it.
        load_nets(dir, &self.generators())?;
        self.disc.load(dir)?;
        self.opt_g.load(&dir.join("optim_g.safetensors"))?;
        self.opt_h.load(&dir.join("optim_h.safetensors"))?;
        Ok(())
    }
}
