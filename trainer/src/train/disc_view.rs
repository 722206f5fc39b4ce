//! What the discriminators of the adversarial methods look at.
//!
//! Quarter-dose noise is mild at the default [-1000, 1000] HU window (27 HU, about
//! 0.013 of the normalised range) next to the anatomy's edges, and a PatchGAN on
//! the image itself learns to tell noisy from clean patches only slowly: trained
//! alone on `data/invesalius-quarter` (LSGAN, ndf 32, batch 2, 64x64, Adam 2e-4)
//! its patch accuracy was 0.59 after 300 steps and 0.65 after 600. The
//! `highpass` view (the image minus its 3x3 mean, times a gain) keeps the texture
//! that differs between the domains and drops most of the anatomy: the same
//! discriminator reached 0.86 after 300 steps (`trainer/examples/d_probe.rs`).
//! The view is a fixed, differentiable layer in front of the discriminator, used
//! for real and fake images alike, so the generators get its gradients.

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::model::Network;
use crate::nn::reflection_pad2d;

/// The input view of a discriminator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiscView {
    /// The normalised image itself (the seeds' recipe).
    #[default]
    Image,
    /// `gain * (x - mean3x3(x))`, the 3x3 mean taken with reflection padding.
    Highpass,
}

impl DiscView {
    /// The view of `x` (`[B, C, H, W]`); `gain` scales the high-pass view.
    pub fn apply(self, x: &Tensor, gain: f64) -> Result<Tensor> {
        match self {
            DiscView::Image => Ok(x.clone()),
            DiscView::Highpass => {
                let (_, c, _, _) = x.dims4()?;
                let padded = reflection_pad2d(x, [1; 4])?;
                let mean = if c == 1 {
                    let k =
                        Tensor::full(1.0 / 9.0, (1, 1, 3, 3), x.device())?.to_dtype(x.dtype())?;
                    padded.conv2d(&k, 0, 1, 1, 1)?
                } else {
                    let k =
                        Tensor::full(1.0 / 9.0, (c, 1, 3, 3), x.device())?.to_dtype(x.dtype())?;
                    padded.conv2d(&k, 0, 1, 1, c)?
                };
                (x - mean)? * gain
            }
        }
    }

    /// The discriminator `d`'s scores of `x` seen through this view.
    pub fn score(self, d: &Network, x: &Tensor, gain: f64) -> Result<Tensor> {
        d.forward(&self.apply(x, gain)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn highpass_is_the_image_minus_its_reflected_3x3_mean() -> Result<()> {
        let dev = Device::Cpu;
        let (h, w) = (5usize, 6usize);
        let vals: Vec<f32> = (0..h * w).map(|i| ((i * 37) % 11) as f32 / 7.0).collect();
        let x = Tensor::from_vec(vals.clone(), (1, 1, h, w), &dev)?;
        let y = DiscView::Highpass
            .apply(&x, 10.0)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        // Reflection (PyTorch ReflectionPad2d): index -1 -> 1, index n -> n - 2.
        let refl = |i: isize, n: usize| -> usize {
            if i < 0 {
                (-i) as usize
            } else if i as usize >= n {
                2 * n - 2 - i as usize
            } else {
                i as usize
            }
        };
        for r in 0..h {
            for c in 0..w {
                let mut s = 0.0f32;
                for dr in -1..=1isize {
                    for dc in -1..=1isize {
                        s += vals[refl(r as isize + dr, h) * w + refl(c as isize + dc, w)];
                    }
                }
                let want = 10.0 * (vals[r * w + c] - s / 9.0);
                assert!(
                    (y[r * w + c] - want).abs() < 1e-5,
                    "({r},{c}): {} vs {want}",
                    y[r * w + c]
                );
            }
        }
        // A constant image has no high-pass content; the image view is the identity.
        let flat = Tensor::full(0.3f32, (2, 1, 8, 8), &dev)?;
        let hp = DiscView::Highpass
            .apply(&flat, 10.0)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(hp < 1e-6);
        let same = DiscView::Image.apply(&x, 10.0)?;
        assert_eq!(
            same.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
            vals
        );
        Ok(())
    }
}
