//! Instance and batch normalisation with gradients.
//!
//! Instance norm on CPU (f32, f64) is one fused kernel per pass
//! ([`instance_cpu`]): the forward makes one read for the statistics and one
//! write, the backward one read for its two sums and one write,
//! `dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat))`.
//! [`instance_norm_rectified`] applies a ReLU or leaky ReLU in the same write, and
//! its slope to `g` inside the backward (the CycleGAN generators' and PatchGAN's
//! norm + activation pairs: no activation tensor, no second autograd node).
//! Every other device and dtype uses [`instance_norm_reference`], built from
//! Candle ops (autograd through them); the tests check the two agree.

mod instance_cpu;

use candle_core::{bail, Result, Tensor};

use super::rectifier::Rectifier;
use super::{conv_cpu, profile};
use instance_cpu::InstanceNormOp;

/// Instance normalisation of a `[N, C, H, W]` tensor: per sample and channel,
/// over H and W, `(x - mean) / sqrt(var + eps)` with the biased variance, then
/// `* weight + bias` per channel when `affine` is given (both `[C]`).
pub fn instance_norm(x: &Tensor, eps: f64, affine: Option<(&Tensor, &Tensor)>) -> Result<Tensor> {
    let y = normalise(x, eps, None)?;
    let c = x.dim(1)?;
    match affine {
        Some((weight, bias)) => y
            .broadcast_mul(&weight.reshape((1, c, 1, 1))?)?
            .broadcast_add(&bias.reshape((1, c, 1, 1))?),
        None => Ok(y),
    }
}

/// Instance normalisation (no affine) then a rectifier, as one op on f32 / f64 CPU
/// tensors: equal to [`instance_norm`] then [`crate::nn::rectifier::rectify`]
/// (the gradient's mask taken where the output is positive, see
/// [`crate::nn::rectifier`]); the two ops on any other.
pub fn instance_norm_rectified(x: &Tensor, eps: f64, r: Rectifier) -> Result<Tensor> {
    normalise(x, eps, Some(r))
}

/// Instance norm (no affine), then `act` when set: the fused CPU op where it runs
/// ([`crate::nn::conv_cpu::supports`]), else the reference ops and Candle's
/// rectifier.
fn normalise(x: &Tensor, eps: f64, act: Option<Rectifier>) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if h * w == 0 {
        bail!("instance norm of an empty {h}x{w} plane")
    }
    if !conv_cpu::supports(x) {
        let y = instance_norm_reference(x, eps)?;
        return match act {
            Some(r) => r.candle(&y),
            None => Ok(y),
        };
    }
    let x = x.contiguous()?;
    let op = InstanceNormOp::new(eps, h * w, act);
    profile::time(profile::Op::InstanceNorm, || x.apply_op1(op))
}

/// Instance normalisation (no affine) from Candle ops: runs on every device and
/// dtype; the reference for the fused CPU kernel.
pub fn instance_norm_reference(x: &Tensor, eps: f64) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let xf = x.reshape((n, c, h * w))?;
    let mean = xf.mean_keepdim(2)?;
    let xc = xf.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(2)?;
    xc.broadcast_div(&(var + eps)?.sqrt()?)?
        .reshape((n, c, h, w))
}

/// Per-channel mean and biased variance of a `[N, C, H, W]` tensor over N, H, W
/// (both `[C]`), differentiable.
pub fn batch_stats(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let c = x.dim(1)?;
    let xt = x.transpose(0, 1)?.contiguous()?.reshape((c, ()))?;
    let mean = xt.mean_keepdim(1)?;
    let var = xt.broadcast_sub(&mean)?.sqr()?.mean_keepdim(1)?;
    Ok((mean.squeeze(1)?, var.squeeze(1)?))
}

/// Batch normalisation of a `[N, C, H, W]` tensor with the given per-channel
/// statistics: `(x - mean) / sqrt(var + eps) * weight + bias` (all `[C]`).
pub fn batch_norm(
    x: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let c = x.dim(1)?;
    let r = |t: &Tensor| t.reshape((1, c, 1, 1));
    let scale = (weight / (var + eps)?.sqrt()?)?;
    x.broadcast_sub(&r(mean)?)?
        .broadcast_mul(&r(&scale)?)?
        .broadcast_add(&r(bias)?)
}
