//! Instance and batch normalisation with gradients.
//!
//! Instance norm on CPU (f32, f64) is one fused kernel per pass: the forward makes
//! one read for the statistics and one write, the backward recomputes the
//! statistics and applies `dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat))`.
//! Every other device and dtype uses [`instance_norm_reference`], built from
//! Candle ops (autograd through them); the tests check the two agree.

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType,
};
use rayon::prelude::*;

/// Instance normalisation of a `[N, C, H, W]` tensor: per sample and channel,
/// over H and W, `(x - mean) / sqrt(var + eps)` with the biased variance, then
/// `* weight + bias` per channel when `affine` is given (both `[C]`).
pub fn instance_norm(x: &Tensor, eps: f64, affine: Option<(&Tensor, &Tensor)>) -> Result<Tensor> {
    let (_, c, h, w) = x.dims4()?;
    if h * w == 0 {
        bail!("instance norm of an empty {h}x{w} plane")
    }
    let fused = x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64);
    let y = if fused {
        x.contiguous()?
            .apply_op1(InstanceNormOp { eps, plane: h * w })?
    } else {
        instance_norm_reference(x, eps)?
    };
    match affine {
        Some((weight, bias)) => y
            .broadcast_mul(&weight.reshape((1, c, 1, 1))?)?
            .broadcast_add(&bias.reshape((1, c, 1, 1))?),
        None => Ok(y),
    }
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

fn contiguous<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [T]> {
    super::storage::contiguous(s.as_slice::<T>()?, l, "instance norm", what)
}

/// Mean and `1 / sqrt(var + eps)` of one plane, accumulated in f64.
fn plane_stats<T: WithDType>(x: &[T], eps: f64) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().map(|v| v.to_f64()).sum::<f64>() / n;
    let var = x
        .iter()
        .map(|v| {
            let d = v.to_f64() - mean;
            d * d
        })
        .sum::<f64>()
        / n;
    (mean, 1.0 / (var + eps).sqrt())
}

fn forward<T: WithDType>(x: &[T], plane: usize, eps: f64) -> Vec<T> {
    let mut y = vec![T::zero(); x.len()];
    y.par_chunks_mut(plane)
        .zip(x.par_chunks(plane))
        .for_each(|(y, x)| {
            let (mean, rstd) = plane_stats(x, eps);
            for (y, x) in y.iter_mut().zip(x) {
                *y = T::from_f64((x.to_f64() - mean) * rstd);
            }
        });
    y
}

fn backward<T: WithDType>(x: &[T], xhat: &[T], g: &[T], plane: usize, eps: f64) -> Vec<T> {
    let mut dx = vec![T::zero(); x.len()];
    let n = plane as f64;
    dx.par_chunks_mut(plane)
        .zip(x.par_chunks(plane))
        .zip(xhat.par_chunks(plane).zip(g.par_chunks(plane)))
        .for_each(|((dx, x), (xhat, g))| {
            let (_, rstd) = plane_stats(x, eps);
            let (mut sg, mut sgx) = (0f64, 0f64);
            for (g, xh) in g.iter().zip(xhat) {
                sg += g.to_f64();
                sgx += g.to_f64() * xh.to_f64();
            }
            let (mg, mgx) = (sg / n, sgx / n);
            for ((dx, g), xh) in dx.iter_mut().zip(g).zip(xhat) {
                *dx = T::from_f64(rstd * (g.to_f64() - mg - xh.to_f64() * mgx));
            }
        });
    dx
}

/// Fused instance norm (no affine) over contiguous planes of `plane` values.
struct InstanceNormOp {
    eps: f64,
    plane: usize,
}

impl CustomOp1 for InstanceNormOp {
    fn name(&self) -> &'static str {
        "ldct-instance-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match s {
            CpuStorage::F32(_) => CpuStorage::F32(forward(
                contiguous::<f32>(s, l, "the input")?,
                self.plane,
                self.eps,
            )),
            CpuStorage::F64(_) => CpuStorage::F64(forward(
                contiguous::<f64>(s, l, "the input")?,
                self.plane,
                self.eps,
            )),
            _ => bail!("instance norm: the fused kernel takes f32 or f64"),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad_res.contiguous()?;
        let dx = arg.apply_op3_no_bwd(
            res,
            &grad,
            &InstanceNormBackward {
                eps: self.eps,
                plane: self.plane,
            },
        )?;
        Ok(Some(dx))
    }
}

/// Input gradient of [`InstanceNormOp`] from (input, output, output gradient).
struct InstanceNormBackward {
    eps: f64,
    plane: usize,
}

impl CustomOp3 for InstanceNormBackward {
    fn name(&self) -> &'static str {
        "ldct-instance-norm-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(backward(
                contiguous::<f32>(s1, l1, "the input")?,
                contiguous::<f32>(s2, l2, "the output")?,
                contiguous::<f32>(s3, l3, "the gradient")?,
                self.plane,
                self.eps,
            )),
            CpuStorage::F64(_) => CpuStorage::F64(backward(
                contiguous::<f64>(s1, l1, "the input")?,
                contiguous::<f64>(s2, l2, "the output")?,
                contiguous::<f64>(s3, l3, "the gradient")?,
                self.plane,
                self.eps,
            )),
            _ => bail!("instance norm backward: the fused kernel takes f32 or f64"),
        };
        Ok((out, l1.shape().clone()))
    }
}
