//! Adam (Kingma & Ba) with its state as named tensors, so a checkpoint can save
//! and restore it exactly (`--resume` continues bit for bit).

use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

use super::adam_cpu;
use crate::nn::profile::{time, Op};

/// Adam over a fixed list of named variables.
#[derive(Debug)]
pub struct Adam {
    names: Vec<String>,
    vars: Vec<Var>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Updates done so far (bias correction).
    t: u64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    /// Update CPU variables with the fused in-place passes of [`super::adam_cpu`]
    /// (else with tensor ops, as on a GPU).
    fused: bool,
}

impl Adam {
    pub fn new(named: Vec<(String, Var)>, beta1: f64, beta2: f64, eps: f64) -> Result<Self> {
        let mut names = Vec::with_capacity(named.len());
        let mut vars = Vec::with_capacity(named.len());
        let mut m = Vec::with_capacity(named.len());
        let mut v = Vec::with_capacity(named.len());
        for (n, var) in named {
            m.push(var.as_tensor().zeros_like()?);
            v.push(var.as_tensor().zeros_like()?);
            names.push(n);
            vars.push(var);
        }
        Ok(Self {
            names,
            vars,
            m,
            v,
            t: 0,
            beta1,
            beta2,
            eps,
            fused: true,
        })
    }

    /// One update with learning rate `lr`; variables without a gradient are left
    /// alone (their moments too).
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        time(Op::Adam, || self.step_untimed(grads, lr))
    }

    fn step_untimed(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.t += 1;
        let c1 = 1.0 - self.beta1.powi(self.t as i32);
        let c2 = 1.0 - self.beta2.powi(self.t as i32);
        for i in 0..self.vars.len() {
            let Some(g) = grads.get(self.vars[i].as_tensor()) else {
                continue;
            };
            // Detached: a gradient can carry the autograd graph of its step, and
            // moments built on it would keep every step's graph alive.
            let g = g.detach();
            let var = self.vars[i].as_tensor();
            if self.fused
                && adam_cpu::applies(var)
                && self.m[i].is_contiguous()
                && self.v[i].is_contiguous()
            {
                let s = adam_cpu::Step {
                    lr,
                    beta1: self.beta1,
                    beta2: self.beta2,
                    eps: self.eps,
                    c1,
                    c2,
                };
                adam_cpu::update(var, &self.m[i], &self.v[i], &g, s)?;
                continue;
            }
            let m = ((&self.m[i] * self.beta1)? + (&g * (1.0 - self.beta1))?)?.detach();
            let v = ((&self.v[i] * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?.detach();
            let update = ((&m / c1)? / ((&v / c2)?.sqrt()? + self.eps)?)?;
            let new = (self.vars[i].as_tensor().detach() - (update * lr)?)?;
            self.vars[i].set(&new)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    pub fn steps_done(&self) -> u64 {
        self.t
    }

    /// Saves the moments and the step count (a scalar tensor `t`).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut map: HashMap<String, Tensor> = HashMap::new();
        for (i, n) in self.names.iter().enumerate() {
            map.insert(format!("m.{n}"), self.m[i].clone());
            map.insert(format!("v.{n}"), self.v[i].clone());
        }
        let dev = self.vars.first().map(|v| v.device().clone());
        let dev = dev.unwrap_or(candle_core::Device::Cpu);
        map.insert("t".into(), Tensor::new(&[self.t as i64], &dev)?);
        candle_core::safetensors::save(&map, path)
    }

    /// Restores what [`Adam::save`] wrote (same variable names and shapes).
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let dev = self.vars.first().map(|v| v.device().clone());
        let dev = dev.unwrap_or(candle_core::Device::Cpu);
        let map = candle_core::safetensors::load(path, &dev)?;
        let get = |k: &str, like: &Tensor| -> Result<Tensor> {
            let t = map
                .get(k)
                .ok_or_else(|| candle_core::Error::Msg(format!("{}: no `{k}`", path.display())))?;
            if t.dims() != like.dims() {
                candle_core::bail!(
                    "{}: `{k}` has shape {:?}, expected {:?}",
                    path.display(),
                    t.dims(),
                    like.dims()
                )
            }
            t.to_dtype(like.dtype())
        };
        for i in 0..self.vars.len() {
            self.m[i] = get(&format!("m.{}", self.names[i]), self.vars[i].as_tensor())?;
            self.v[i] = get(&format!("v.{}", self.names[i]), self.vars[i].as_tensor())?;
        }
        let t = map
            .get("t")
            .ok_or_else(|| candle_core::Error::Msg(format!("{}: no `t`", path.display())))?;
        self.t = t.to_vec1::<i64>()?.first().copied().unwrap_or(0) as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// The fused CPU passes and the tensor ops give the same parameters and moments
    /// over several steps (f32, several parallel chunks, a non-contiguous gradient).
    #[test]
    fn the_fused_update_equals_the_tensor_ops() {
        let dev = Device::Cpu;
        let init = Tensor::randn(0f32, 1.0, (3, 40_000), &dev).unwrap();
        let run = |fused: bool| {
            let x = Var::from_tensor(&init.copy().unwrap()).unwrap();
            let mut opt = Adam::new(vec![("x".into(), x.clone())], 0.5, 0.999, 1e-8).unwrap();
            opt.fused = fused;
            for _ in 0..4 {
                // loss = sum(x^3 / 3 + x): grad x^2 + 1, taken through a transpose.
                let xt = x.as_tensor().t().unwrap();
                let loss = ((xt.powf(3.0).unwrap() / 3.0).unwrap() + &xt)
                    .unwrap()
                    .sum_all()
                    .unwrap();
                opt.step(&loss.backward().unwrap(), 1e-2).unwrap();
            }
            let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (v(x.as_tensor()), v(&opt.m[0]), v(&opt.v[0]))
        };
        let (a, b) = (run(true), run(false));
        for (name, x, y) in [("x", &a.0, &b.0), ("m", &a.1, &b.1), ("v", &a.2, &b.2)] {
            let worst = x
                .iter()
                .zip(y)
                .map(|(p, q)| (p - q).abs() / q.abs().max(1e-3))
                .fold(0f32, f32::max);
            assert!(worst < 1e-5, "{name}: relative difference {worst}");
        }
        assert!(a.0 != init.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }

    /// Reference values from the update rule written out by hand for a scalar.
    #[test]
    fn matches_the_update_rule_and_round_trips() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::new(&[1.0f64, -2.0], &dev).unwrap()).unwrap();
        let mut opt = Adam::new(vec![("x".into(), x.clone())], 0.9, 0.999, 1e-8).unwrap();
        // loss = sum(x^2): grad 2x.
        let (mut m, mut v, mut xr) = ([0.0f64; 2], [0.0f64; 2], [1.0f64, -2.0]);
        for t in 1..=3 {
            let loss = x.as_tensor().sqr().unwrap().sum_all().unwrap();
            opt.step(&loss.backward().unwrap(), 0.1).unwrap();
            for k in 0..2 {
                let g = 2.0 * xr[k];
                m[k] = 0.9 * m[k] + 0.1 * g;
                v[k] = 0.999 * v[k] + 0.001 * g * g;
                let mh = m[k] / (1.0 - 0.9f64.powi(t));
                let vh = v[k] / (1.0 - 0.999f64.powi(t));
                xr[k] -= 0.1 * mh / (vh.sqrt() + 1e-8);
            }
        }
        let got = x.as_tensor().to_vec1::<f64>().unwrap();
        for k in 0..2 {
            assert!((got[k] - xr[k]).abs() < 1e-12, "{got:?} vs {xr:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("adam.safetensors");
        opt.save(&p).unwrap();
        let y = Var::from_tensor(&Tensor::zeros(2, DType::F64, &dev).unwrap()).unwrap();
        let mut other = Adam::new(vec![("x".into(), y)], 0.9, 0.999, 1e-8).unwrap();
        other.load(&p).unwrap();
        assert_eq!(other.steps_done(), 3);
        assert_eq!(
            other.m[0].to_vec1::<f64>().unwrap(),
            opt.m[0].to_vec1::<f64>().unwrap()
        );
    }
}
