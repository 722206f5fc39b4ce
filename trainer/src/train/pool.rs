//! CycleGAN's image pool (Shrivastava et al. 2017): the discriminators see a
//! mix of current and earlier generator outputs, which steadies training.

use std::path::Path;

use candle_core::{Result, Tensor};
use rand::rngs::StdRng;
use rand::Rng;

/// A pool of up to `size` fake images, each `[1, C, H, W]`.
#[derive(Debug, Clone)]
pub struct ImagePool {
    size: usize,
    images: Vec<Tensor>,
}

impl ImagePool {
    pub fn new(size: usize) -> Self {
        Self {
            size,
            images: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// For each image of the batch (detached): while the pool is not full, store
    /// it and return it; afterwards, with probability 1/2 return a random stored
    /// image and store the new one in its place, else return the new one.
    pub fn query(&mut self, fakes: &Tensor, rng: &mut StdRng) -> Result<Tensor> {
        let fakes = fakes.detach();
        if self.size == 0 {
            return Ok(fakes);
        }
        let n = fakes.dim(0)?;
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let img = fakes.narrow(0, i, 1)?;
            if self.images.len() < self.size {
                self.images.push(img.clone());
                out.push(img);
            } else if rng.random_bool(0.5) {
                let k = rng.random_range(0..self.size);
                out.push(std::mem::replace(&mut self.images[k], img));
            } else {
                out.push(img);
            }
        }
        Tensor::cat(&out, 0)
    }

    pub fn save(&self, path: &Path, name: &str) -> Result<()> {
        if self.images.is_empty() {
            // safetensors cannot hold an empty stack; an absent file is an empty pool.
            return match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e.into()),
            };
        }
        Tensor::cat(&self.images, 0)?.save_safetensors(name, path)
    }

    pub fn load(&mut self, path: &Path, name: &str, device: &candle_core::Device) -> Result<()> {
        self.images.clear();
        if !path.exists() {
            return Ok(());
        }
        let map = candle_core::safetensors::load(path, device)?;
        let t = map
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("{}: no `{name}`", path.display())))?;
        for i in 0..t.dim(0)? {
            self.images.push(t.narrow(0, i, 1)?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use rand::SeedableRng;

    #[test]
    fn fills_then_swaps() {
        let dev = Device::Cpu;
        let mut pool = ImagePool::new(3);
        let mut rng = StdRng::seed_from_u64(1);
        let batch = |v: f32| Tensor::full(v, (2, 1, 2, 2), &dev).unwrap();
        // The first images go in and come back unchanged.
        let out = pool.query(&batch(1.0), &mut rng).unwrap();
        assert_eq!(
            out.to_dtype(DType::F32)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            8.0
        );
        pool.query(&batch(2.0), &mut rng).unwrap();
        assert_eq!(pool.len(), 3);
        // Afterwards some outputs are older images.
        let mut older = 0;
        for k in 0..20 {
            let out = pool.query(&batch(10.0 + k as f32), &mut rng).unwrap();
            let v = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            older += v.iter().filter(|&&x| x < 10.0 + k as f32).count();
        }
        assert!(older > 0);
        assert_eq!(pool.len(), 3);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pool.safetensors");
        pool.save(&p, "pool").unwrap();
        let mut back = ImagePool::new(3);
        back.load(&p, "pool", &dev).unwrap();
        assert_eq!(back.len(), 3);
    }
}
