//! Supervised training on paired patches: L1 or MSE between the network's output
//! for the low-dose patch and the full-dose patch.

use std::path::Path;

use candle_core::{Result, Tensor};
use rand::rngs::StdRng;

use super::adam::Adam;
use super::config::{Loss, TrainConfig};
use super::method::{l1, mse, named_trainable, scalar, Method};
use crate::model::{ModelError, Network};
use crate::nn::profile::{time, Op};

pub struct Supervised {
    net: Network,
    opt: Adam,
    loss: Loss,
}

const OPTIM_FILE: &str = "optim.safetensors";
const NET_DIR: &str = "generator";

impl Supervised {
    pub fn new(net: Network, config: &TrainConfig) -> Result<Self> {
        let o = &config.optim;
        let opt = Adam::new(named_trainable("g", &net), o.beta1, o.beta2, o.eps)?;
        Ok(Self {
            net,
            opt,
            loss: config.supervised.loss,
        })
    }
}

impl Method for Supervised {
    fn loss_names(&self) -> &'static [&'static str] {
        &["loss"]
    }

    fn step(
        &mut self,
        low: &Tensor,
        full: &Tensor,
        lr: f64,
        _rng: &mut StdRng,
    ) -> Result<Vec<f64>> {
        let out = time(Op::Forward, || self.net.forward(low))?;
        let loss = time(Op::Loss, || match self.loss {
            Loss::L1 => l1(&out, full),
            Loss::Mse => mse(&out, full),
        })?;
        let grads = time(Op::Backward, || loss.backward())?;
        self.opt.step(&grads, lr)?;
        Ok(vec![scalar(&loss)?])
    }

    fn generator(&self) -> &Network {
        &self.net
    }

    fn save_checkpoint(&self, dir: &Path) -> std::result::Result<(), ModelError> {
        self.net.save_dir(dir.join(NET_DIR))?;
        self.opt.save(&dir.join(OPTIM_FILE))?;
        Ok(())
    }

    fn load_checkpoint(&mut self, dir: &Path) -> std::result::Result<(), ModelError> {
        self.net
            .load_safetensors(dir.join(NET_DIR).join(crate::model::WEIGHTS_FILE))?;
        self.opt.load(&dir.join(OPTIM_FILE))?;
        Ok(())
    }
}
