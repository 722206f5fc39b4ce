//! The fused CPU instance norm (f32, f64), optionally with a rectifier applied
//! where it writes: one read and one write of the tensor each way.
//!
//! Statistics are accumulated in f64 (sum and sum of squares in one pass, eight
//! accumulators so the loop vectorises; the f64 sums keep the one-pass variance
//! exact to far below f32 rounding for any activation whose mean is within
//! 10^4 standard deviations of 0). The forward keeps each plane's `(mean, rstd)`
//! for the backward, which makes one pass for `Σg` and `Σg·x_hat` and one for
//! `dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat))`. The loops run through
//! [`crate::nn::simd::dispatch`] (AVX-512 or AVX2 where the CPU has it).

use std::sync::OnceLock;

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor, WithDType,
};
use rayon::prelude::*;

use crate::nn::profile;
use crate::nn::rectifier::{Rectifier, Slope};
use crate::nn::simd::{self, Kernel};

/// Accumulators per sum (a vector of f64 at AVX-512).
const LANES: usize = 8;

/// Elements a parallel task should hold at least (planes are grouped up to it).
const TASK: usize = 1 << 14;

/// Fused instance norm (no affine) over contiguous planes of `plane` values,
/// followed by `act` when set.
pub(super) struct InstanceNormOp {
    eps: f64,
    plane: usize,
    act: Option<Rectifier>,
    /// Each plane's `(mean, rstd)`, kept by the forward for the backward.
    stats: OnceLock<Vec<(f64, f64)>>,
}

impl InstanceNormOp {
    pub(super) fn new(eps: f64, plane: usize, act: Option<Rectifier>) -> Self {
        InstanceNormOp {
            eps,
            plane,
            act,
            stats: OnceLock::new(),
        }
    }
}

/// `x_hat` rounded to `T` (as the separate op writes it).
#[inline(always)]
fn normalised<T: WithDType>(x: T, mean: f64, rstd: f64) -> T {
    T::from_f64((x.to_f64() - mean) * rstd)
}

/// `(mean, 1 / sqrt(var + eps))` of one plane, the biased variance.
#[inline(always)]
fn plane_stats<T: WithDType>(x: &[T], eps: f64) -> (f64, f64) {
    let (mut s, mut q) = ([0f64; LANES], [0f64; LANES]);
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..LANES {
            let v = c[k].to_f64();
            s[k] += v;
            q[k] += v * v;
        }
    }
    let (mut s, mut q) = (s.iter().sum::<f64>(), q.iter().sum::<f64>());
    for v in rest {
        let v = v.to_f64();
        s += v;
        q += v * v;
    }
    let n = x.len() as f64;
    let mean = s / n;
    let var = (q / n - mean * mean).max(0.0);
    (mean, 1.0 / (var + eps).sqrt())
}

/// The forward of a group of planes: statistics, then the normalised (and
/// rectified) output.
struct Forward<'a, T> {
    x: &'a [T],
    y: &'a mut [T],
    stats: &'a mut [(f64, f64)],
    plane: usize,
    eps: f64,
    act: Option<Slope<T>>,
}

impl<T: WithDType> Kernel for Forward<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let planes = self.x.chunks(self.plane).zip(self.y.chunks_mut(self.plane));
        for ((x, y), st) in planes.zip(self.stats.iter_mut()) {
            let (mean, rstd) = plane_stats(x, self.eps);
            *st = (mean, rstd);
            match self.act {
                None => {
                    for (y, x) in y.iter_mut().zip(x) {
                        *y = normalised(*x, mean, rstd);
                    }
                }
                Some(act) => {
                    for (y, x) in y.iter_mut().zip(x) {
                        *y = act.apply(normalised(*x, mean, rstd));
                    }
                }
            }
        }
    }
}

/// The backward of a group of planes from the input `x`, the op's output `out`
/// and its gradient `g`. Without a rectifier `out` is `x_hat`; with one, `x_hat`
/// is recomputed from `x` (as the forward rounded it) and `g` scaled by the
/// slope where `out <= 0`.
struct Backward<'a, T> {
    x: &'a [T],
    out: &'a [T],
    g: &'a [T],
    dx: &'a mut [T],
    stats: &'a [(f64, f64)],
    plane: usize,
    act: Option<Slope<T>>,
}

impl<T: WithDType> Backward<'_, T> {
    /// `(g after the rectifier, x_hat)` of element `i` of a plane, as f64.
    #[inline(always)]
    fn pair(act: Option<Slope<T>>, x: T, out: T, g: T, mean: f64, rstd: f64) -> (f64, f64) {
        match act {
            None => (g.to_f64(), out.to_f64()),
            Some(a) => {
                let g = if out > T::zero() { g } else { g * a.slope };
                (g.to_f64(), normalised(x, mean, rstd).to_f64())
            }
        }
    }
}

impl<T: WithDType> Kernel for Backward<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let p = self.plane;
        let n = p as f64;
        for (k, dx) in self.dx.chunks_mut(p).enumerate() {
            let (x, out, g) = (
                &self.x[k * p..(k + 1) * p],
                &self.out[k * p..(k + 1) * p],
                &self.g[k * p..(k + 1) * p],
            );
            let (mean, rstd) = self.stats[k];
            let act = self.act;
            let (mut sg, mut sgx) = ([0f64; LANES], [0f64; LANES]);
            let whole = p - p % LANES;
            for i in (0..whole).step_by(LANES) {
                for l in 0..LANES {
                    let (g, xh) = Self::pair(act, x[i + l], out[i + l], g[i + l], mean, rstd);
                    sg[l] += g;
                    sgx[l] += g * xh;
                }
            }
            let (mut sg, mut sgx) = (sg.iter().sum::<f64>(), sgx.iter().sum::<f64>());
            for i in whole..p {
                let (g, xh) = Self::pair(act, x[i], out[i], g[i], mean, rstd);
                sg += g;
                sgx += g * xh;
            }
            let (mg, mgx) = (sg / n, sgx / n);
            for (i, dx) in dx.iter_mut().enumerate() {
                let (g, xh) = Self::pair(act, x[i], out[i], g[i], mean, rstd);
                *dx = T::from_f64(rstd * (g - mg - xh * mgx));
            }
        }
    }
}

/// Planes per parallel task.
fn planes_per_task(plane: usize) -> usize {
    (TASK / plane.max(1)).max(1)
}

fn forward<T: WithDType>(
    x: &[T],
    plane: usize,
    eps: f64,
    act: Option<Rectifier>,
) -> (Vec<T>, Vec<(f64, f64)>) {
    let mut y = vec![T::zero(); x.len()];
    let mut stats = vec![(0f64, 0f64); x.len() / plane];
    let per = planes_per_task(plane);
    let act = act.map(Rectifier::in_type::<T>);
    y.par_chunks_mut(per * plane)
        .zip(x.par_chunks(per * plane))
        .zip(stats.par_chunks_mut(per))
        .for_each(|((y, x), stats)| {
            simd::dispatch(Forward {
                x,
                y,
                stats,
                plane,
                eps,
                act,
            })
        });
    (y, stats)
}

fn backward<T: WithDType>(
    x: &[T],
    out: &[T],
    g: &[T],
    stats: &[(f64, f64)],
    plane: usize,
    act: Option<Rectifier>,
) -> Vec<T> {
    let mut dx = vec![T::zero(); x.len()];
    let per = planes_per_task(plane);
    let act = act.map(Rectifier::in_type::<T>);
    let chunk = per * plane;
    dx.par_chunks_mut(chunk)
        .zip(stats.par_chunks(per))
        .enumerate()
        .for_each(|(t, (dx, stats))| {
            let range = t * chunk..t * chunk + dx.len();
            simd::dispatch(Backward {
                x: &x[range.clone()],
                out: &out[range.clone()],
                g: &g[range],
                dx,
                stats,
                plane,
                act,
            })
        });
    dx
}

fn contiguous<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [T]> {
    crate::nn::storage::contiguous(s.as_slice::<T>()?, l, "instance norm", what)
}

impl CustomOp1 for InstanceNormOp {
    fn name(&self) -> &'static str {
        match self.act {
            None => "ldct-instance-norm",
            Some(_) => "ldct-instance-norm-rectified",
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (out, stats) = match s {
            CpuStorage::F32(_) => {
                let (y, st) = forward(
                    contiguous::<f32>(s, l, "the input")?,
                    self.plane,
                    self.eps,
                    self.act,
                );
                (CpuStorage::F32(y), st)
            }
            CpuStorage::F64(_) => {
                let (y, st) = forward(
                    contiguous::<f64>(s, l, "the input")?,
                    self.plane,
                    self.eps,
                    self.act,
                );
                (CpuStorage::F64(y), st)
            }
            _ => bail!("instance norm: the fused kernel takes f32 or f64"),
        };
        // One forward per op (Candle builds a new op for every call).
        let _ = self.stats.set(stats);
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let Some(stats) = self.stats.get() else {
            bail!("instance norm: backward before forward")
        };
        let grad = grad_res.contiguous()?;
        let op = InstanceNormBackward {
            plane: self.plane,
            act: self.act,
            stats: stats.clone(),
        };
        profile::time(profile::Op::InstanceNorm, || {
            arg.apply_op3_no_bwd(res, &grad, &op)
        })
        .map(Some)
    }
}

/// Input gradient of [`InstanceNormOp`] from (input, output, output gradient).
struct InstanceNormBackward {
    plane: usize,
    act: Option<Rectifier>,
    stats: Vec<(f64, f64)>,
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
        if l2.shape() != l1.shape() || l3.shape() != l1.shape() {
            bail!(
                "instance norm backward: input {:?}, output {:?}, gradient {:?}",
                l1.shape(),
                l2.shape(),
                l3.shape()
            )
        }
        let planes = l1.shape().elem_count() / self.plane.max(1);
        if planes != self.stats.len() {
            bail!(
                "instance norm backward: {planes} planes, {} statistics",
                self.stats.len()
            )
        }
        let out = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(backward(
                contiguous::<f32>(s1, l1, "the input")?,
                contiguous::<f32>(s2, l2, "the output")?,
                contiguous::<f32>(s3, l3, "the gradient")?,
                &self.stats,
                self.plane,
                self.act,
            )),
            CpuStorage::F64(_) => CpuStorage::F64(backward(
                contiguous::<f64>(s1, l1, "the input")?,
                contiguous::<f64>(s2, l2, "the output")?,
                contiguous::<f64>(s3, l3, "the gradient")?,
                &self.stats,
                self.plane,
                self.act,
            )),
            _ => bail!("instance norm backward: the fused kernel takes f32 or f64"),
        };
        Ok((out, l1.shape().clone()))
    }
}
