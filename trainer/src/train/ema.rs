//! An exponential moving average of the deployed network's weights (`optim.ema`):
//! Polyak averaging, which Yazıcı et al. (2019, "The unusual effectiveness of
//! averaging in GAN training") found to steady GAN generators whose iterates
//! circle the equilibrium instead of settling on it.
//!
//! After every optimisation step each trainable parameter `p` of
//! [`super::Method::generator`] updates its shadow `a` as `a <- d a + (1 - d) p`, with
//! the decay warmed up as `d_t = min(decay, (1 + t) / (10 + t))` for the `t`-th update
//! (so the first updates are not tied to the initial weights); buffers (batch norm
//! running statistics) are copied. With the average on, validation, the samples,
//! the run folder's weights (what `eval`, `denoise` and the exporter read) are the
//! average's; the optimisers keep training the live weights. The checkpoint holds the
//! average under `ema/`, so `--resume` continues it.

use std::path::Path;

use candle_core::Result;

use crate::model::{ModelError, Network};

/// Checkpoint sub-folder of the averaged weights.
pub const EMA_DIR: &str = "ema";

/// The shadow copy of a network and its decay.
pub struct Ema {
    net: Network,
    decay: f64,
    updates: u64,
}

impl Ema {
    /// A shadow network with a copy (not a share) of `source`'s current weights;
    /// `updates` is the number of steps already averaged (0 for a new run, the
    /// checkpoint's step on resume).
    pub fn new(
        source: &Network,
        decay: f64,
        updates: u64,
    ) -> std::result::Result<Self, ModelError> {
        let net = source.deep_copy()?;
        Ok(Self {
            net,
            decay,
            updates,
        })
    }

    /// The decay the next update uses.
    pub fn current_decay(&self) -> f64 {
        let t = self.updates as f64;
        self.decay.min((1.0 + t) / (10.0 + t))
    }

    /// Folds `source`'s current weights into the average.
    pub fn update(&mut self, source: &Network) -> Result<()> {
        let d = self.current_decay();
        for ((spec, live), (_, avg)) in source.parameters().zip(self.net.parameters()) {
            if spec.trainable() {
                let next = ((avg.as_tensor() * d)? + (live.as_tensor() * (1.0 - d))?)?;
                avg.set(&next)?;
            } else {
                avg.set(live.as_tensor())?;
            }
        }
        self.updates += 1;
        Ok(())
    }

    /// The averaged network.
    pub fn network(&self) -> &Network {
        &self.net
    }

    /// Writes the average into `checkpoint/ema/`.
    pub fn save(&self, checkpoint: &Path) -> std::result::Result<(), ModelError> {
        self.net.save_dir(checkpoint.join(EMA_DIR))
    }

    /// Restores what [`Ema::save`] wrote.
    pub fn load(&self, checkpoint: &Path) -> std::result::Result<(), ModelError> {
        self.net
            .load_safetensors(checkpoint.join(EMA_DIR).join(crate::model::WEIGHTS_FILE))
    }
}
