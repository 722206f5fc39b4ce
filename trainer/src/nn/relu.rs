//! ReLU on the CPU in one pass each way (the `fast` backend's).
//!
//! Candle's `relu` backward builds the mask `x >= 0` from a zero tensor, converts it
//! to the input's dtype and multiplies: four passes and three temporaries per layer.
//! [`relu`] is a custom op whose backward is one pass, `dx = dy` where `x >= 0`
//! (the same rule as Candle's), else 0, vectorised for the CPU's widest level
//! ([`crate::nn::simd`]) and split over the thread pool.

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, WithDType,
};
use rayon::prelude::*;

use super::conv_cpu;
use super::simd::{self, Kernel};

/// Elements per parallel task.
const CHUNK: usize = 1 << 15;

/// `max(x, 0)` with the one-pass backward on f32 / f64 CPU tensors; Candle's
/// `relu` on any other.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if !conv_cpu::supports(x) {
        return x.relu();
    }
    x.contiguous()?.apply_op1(Relu)
}

struct Relu;

/// The gradient through a ReLU, `(dy, v) -> dy` where the ReLU lets it through,
/// else 0: with `v` its input, where `v >= 0` (Candle's rule); with `v` its output
/// (a ReLU fused into the op before it, [`crate::nn::conv_cpu::conv2d_relu`],
/// which keeps only its output), where `v > 0` (PyTorch's `threshold_backward`).
struct ReluGrad {
    of_output: bool,
}

/// `max(v, 0)` in place, split over the thread pool.
pub(crate) fn relu_in_place<T: WithDType + Send + Sync>(v: &mut [T]) {
    v.par_chunks_mut(CHUNK)
        .for_each(|chunk| simd::dispatch(InPlace { v: chunk }));
}

struct InPlace<'a, T> {
    v: &'a mut [T],
}

impl<T: WithDType> Kernel for InPlace<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        for x in self.v.iter_mut() {
            if *x <= T::zero() {
                *x = T::zero();
            }
        }
    }
}

/// `grad` where `out > 0`, else 0 (`out` a ReLU's output), on f32 / f64 CPU
/// tensors of one shape.
pub(crate) fn grad_where_positive(grad: &Tensor, out: &Tensor) -> Result<Tensor> {
    grad.contiguous()?
        .apply_op2_no_bwd(&out.contiguous()?, &ReluGrad { of_output: true })
}

/// `out[i] = f(a[i], b[i])` over chunks, in parallel.
struct Map2<'a, T, F> {
    a: &'a [T],
    b: &'a [T],
    out: &'a mut [T],
    f: F,
}

impl<T: WithDType, F: Fn(T, T) -> T> Kernel for Map2<'_, T, F> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        for ((o, a), b) in self.out.iter_mut().zip(self.a).zip(self.b) {
            *o = (self.f)(*a, *b);
        }
    }
}

fn map2<T: WithDType + Send + Sync>(
    a: &[T],
    b: &[T],
    f: impl Fn(T, T) -> T + Copy + Send + Sync,
) -> Vec<T> {
    let mut out = vec![T::zero(); a.len()];
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK))
        .zip(b.par_chunks(CHUNK))
        .for_each(|((out, a), b)| simd::dispatch(Map2 { a, b, out, f }));
    out
}

fn contiguous<'a, T>(s: &'a [T], l: &Layout) -> Result<&'a [T]> {
    super::storage::contiguous(s, l, "ldct-relu", "the operands")
}

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "ldct-relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        // Both operands are x: max(x, 0) as the two-operand map.
        let out = match s {
            CpuStorage::F32(v) => {
                let x = contiguous(v, l)?;
                CpuStorage::F32(map2(x, x, |x, _| if x > 0.0 { x } else { 0.0 }))
            }
            CpuStorage::F64(v) => {
                let x = contiguous(v, l)?;
                CpuStorage::F64(map2(x, x, |x, _| if x > 0.0 { x } else { 0.0 }))
            }
            _ => bail!("ldct-relu: f32 or f64 only"),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad_res.contiguous()?;
        Ok(Some(grad.apply_op2_no_bwd(
            &arg.contiguous()?,
            &ReluGrad { of_output: false },
        )?))
    }
}

impl ReluGrad {
    fn apply<T: WithDType + Send + Sync>(&self, g: &[T], v: &[T]) -> Vec<T> {
        let zero = T::zero();
        if self.of_output {
            map2(g, v, move |g, v| if v > zero { g } else { zero })
        } else {
            map2(g, v, move |g, v| if v >= zero { g } else { zero })
        }
    }
}

impl CustomOp2 for ReluGrad {
    fn name(&self) -> &'static str {
        "ldct-relu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            bail!("ldct-relu-grad: {:?} vs {:?}", l1.shape(), l2.shape())
        }
        let out = match (s1, s2) {
            (CpuStorage::F32(g), CpuStorage::F32(v)) => {
                CpuStorage::F32(self.apply(contiguous(g, l1)?, contiguous(v, l2)?))
            }
            (CpuStorage::F64(g), CpuStorage::F64(v)) => {
                CpuStorage::F64(self.apply(contiguous(g, l1)?, contiguous(v, l2)?))
            }
            _ => bail!("ldct-relu-grad: f32 or f64 operands of one dtype"),
        };
        Ok((out, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn f64s(t: &Tensor) -> Result<Vec<f64>> {
        t.to_dtype(DType::F64)?.to_vec1::<f64>()
    }

    /// Values and gradients equal Candle's `relu` exactly (f32, f64), zeros and a
    /// non-contiguous input included, across chunk boundaries.
    #[test]
    fn matches_candles_relu_and_its_gradient() -> Result<()> {
        let dev = Device::Cpu;
        for dtype in [DType::F32, DType::F64] {
            let n = 3 * CHUNK + 17;
            let x = Tensor::randn(0f64, 1.0, (n,), &dev)?.to_dtype(dtype)?;
            // Exact zeros, where `x >= 0` lets the gradient through.
            let x = x.abs()?.ge(0.1)?.where_cond(&x, &x.zeros_like()?)?;
            let var = Var::from_tensor(&x)?;
            let w = Tensor::randn(0f64, 1.0, (n,), &dev)?.to_dtype(dtype)?;
            let ours = relu(var.as_tensor())?;
            let theirs = var.as_tensor().relu()?;
            assert_eq!(f64s(&ours)?, f64s(&theirs)?);
            let g1 = (ours * &w)?.sum_all()?.backward()?;
            let g2 = (theirs * &w)?.sum_all()?.backward()?;
            let (g1, g2) = (
                g1.get(var.as_tensor()).unwrap(),
                g2.get(var.as_tensor()).unwrap(),
            );
            assert_eq!(f64s(g1)?, f64s(g2)?, "{dtype:?}");
        }
        // A transposed (non-contiguous) input.
        let x = Tensor::randn(0f32, 1.0, (40, 30), &dev)?.t()?;
        assert_eq!(relu(&x)?.to_vec2::<f32>()?, x.relu()?.to_vec2::<f32>()?);
        Ok(())
    }
}
