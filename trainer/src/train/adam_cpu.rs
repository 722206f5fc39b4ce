//! Adam's update on the CPU in three in-place passes (first moment, second
//! moment, parameter), vectorised for the CPU's widest level
//! ([`crate::nn::simd`]) and split over the thread pool, instead of a dozen tensor
//! ops with a temporary each. The same formulas as the tensor path in
//! [`super::adam`]; f32 and f64.

use candle_core::{bail, CpuStorage, InplaceOp2, InplaceOp3, Layout, Result, Tensor, WithDType};
use rayon::prelude::*;

use crate::nn::simd::{self, Kernel};
use crate::nn::storage;

/// f32 and f64, with the square root the update needs.
pub trait Real: WithDType {
    fn sqrt(self) -> Self;
}

impl Real for f32 {
    #[inline(always)]
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
}

impl Real for f64 {
    #[inline(always)]
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
}

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// Whether [`update`] runs on this variable: a contiguous f32 / f64 CPU tensor.
pub fn applies(var: &Tensor) -> bool {
    var.device().is_cpu()
        && matches!(
            var.dtype(),
            candle_core::DType::F32 | candle_core::DType::F64
        )
        && var.is_contiguous()
}

/// The hyper-parameters of one update.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Bias corrections `1 - β^t`.
    pub c1: f64,
    pub c2: f64,
}

/// `m = β1 m + (1 - β1) g`, `v = β2 v + (1 - β2) g²`, `p -= lr (m / c1) / (√(v / c2)
/// + ε)`, in place; `p`, `m`, `v` and `g` of one shape and dtype.
pub fn update(p: &Tensor, m: &Tensor, v: &Tensor, g: &Tensor, s: Step) -> Result<()> {
    let g = g.contiguous()?;
    m.inplace_op2(
        &g,
        &Moment {
            beta: s.beta1,
            square: false,
        },
    )?;
    v.inplace_op2(
        &g,
        &Moment {
            beta: s.beta2,
            square: true,
        },
    )?;
    p.inplace_op3(m, v, &Apply(s))
}

fn slice_mut<'a, T>(s: &'a mut [T], l: &Layout) -> Result<&'a mut [T]> {
    storage::contiguous_mut(s, l, "ldct-adam", "the state")
}

fn slice<'a, T>(s: &'a [T], l: &Layout) -> Result<&'a [T]> {
    storage::contiguous(s, l, "ldct-adam", "the gradient")
}

/// A moment: `x = β x + (1 - β) g` (or `g²`).
struct Moment {
    beta: f64,
    square: bool,
}

struct MomentKernel<'a, T> {
    x: &'a mut [T],
    g: &'a [T],
    beta: T,
    rest: T,
    square: bool,
}

impl<T: WithDType> Kernel for MomentKernel<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let (beta, rest) = (self.beta, self.rest);
        if self.square {
            for (x, g) in self.x.iter_mut().zip(self.g) {
                *x = *x * beta + *g * *g * rest;
            }
        } else {
            for (x, g) in self.x.iter_mut().zip(self.g) {
                *x = *x * beta + *g * rest;
            }
        }
    }
}

impl Moment {
    fn run<T: WithDType>(&self, x: &mut [T], g: &[T]) -> Result<()> {
        if x.len() != g.len() {
            bail!("ldct-adam: {} state values, {} gradients", x.len(), g.len())
        }
        let (beta, rest) = (T::from_f64(self.beta), T::from_f64(1.0 - self.beta));
        let square = self.square;
        x.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .for_each(|(x, g)| {
                simd::dispatch(MomentKernel {
                    x,
                    g,
                    beta,
                    rest,
                    square,
                })
            });
        Ok(())
    }
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "ldct-adam-moment"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => self.run(slice_mut(x, l1)?, slice(g, l2)?),
            (CpuStorage::F64(x), CpuStorage::F64(g)) => self.run(slice_mut(x, l1)?, slice(g, l2)?),
            _ => bail!("ldct-adam: f32 or f64 state and gradient of one dtype"),
        }
    }
}

/// The parameter update from both moments.
struct Apply(Step);

struct ApplyKernel<'a, T> {
    p: &'a mut [T],
    m: &'a [T],
    v: &'a [T],
    lr: T,
    c1: T,
    c2: T,
    eps: T,
}

impl<T: Real> Kernel for ApplyKernel<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        for ((p, m), v) in self.p.iter_mut().zip(self.m).zip(self.v) {
            let update = (*m / self.c1) / ((*v / self.c2).sqrt() + self.eps);
            *p -= update * self.lr;
        }
    }
}

impl Apply {
    fn run<T: Real>(&self, p: &mut [T], m: &[T], v: &[T]) -> Result<()> {
        if p.len() != m.len() || p.len() != v.len() {
            bail!(
                "ldct-adam: {} parameters, {} and {} moments",
                p.len(),
                m.len(),
                v.len()
            )
        }
        let s = self.0;
        let (lr, c1, c2, eps) = (
            T::from_f64(s.lr),
            T::from_f64(s.c1),
            T::from_f64(s.c2),
            T::from_f64(s.eps),
        );
        p.par_chunks_mut(CHUNK)
            .zip(m.par_chunks(CHUNK))
            .zip(v.par_chunks(CHUNK))
            .for_each(|((p, m), v)| {
                simd::dispatch(ApplyKernel {
                    p,
                    m,
                    v,
                    lr,
                    c1,
                    c2,
                    eps,
                })
            });
        Ok(())
    }
}

impl InplaceOp3 for Apply {
    fn name(&self) -> &'static str {
        "ldct-adam-apply"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        m: &CpuStorage,
        ml: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> Result<()> {
        match (dst, m, v) {
            (CpuStorage::F32(p), CpuStorage::F32(m), CpuStorage::F32(v)) => {
                self.run(slice_mut(p, dst_l)?, slice(m, ml)?, slice(v, vl)?)
            }
            (CpuStorage::F64(p), CpuStorage::F64(m), CpuStorage::F64(v)) => {
                self.run(slice_mut(p, dst_l)?, slice(m, ml)?, slice(v, vl)?)
            }
            _ => bail!("ldct-adam: f32 or f64 parameters and moments of one dtype"),
        }
    }
}
