//! ReLU and leaky ReLU on the CPU in one pass each way (the `fast` backend's).
//!
//! A [`Rectifier`] is `x` where `x > 0`, else `slope * x`: ReLU is slope 0, the
//! PatchGAN's leaky ReLU slope 0.2. Candle's `relu` backward builds the mask
//! `x >= 0` from a zero tensor, converts it to the input's dtype and multiplies
//! (four passes and three temporaries per layer); `candle_nn::ops::leaky_relu` is
//! `maximum(x, 0) + minimum(x, 0) * slope`, five passes forward and more back.
//! [`rectify`] is one custom op whose backward is one pass, vectorised for the
//! CPU's widest level ([`crate::nn::simd`]) and split over the thread pool.
//!
//! The ops before a rectifier (a convolution, [`crate::nn::conv_cpu`]; an instance
//! norm, [`crate::nn::norm`]) can apply it where they write their output
//! ([`rectify_in_place`]) and mask their output gradient by that output
//! ([`grad_by_output`]): the rectifier then costs no tensor and no autograd node.

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, WithDType,
};
use rayon::prelude::*;

use super::conv_cpu;
use super::profile;
use super::simd::{self, Kernel};

/// Elements per parallel task.
const CHUNK: usize = 1 << 15;

/// `x` where `x > 0`, else `slope * x` (`slope` in `[0, 1)`): ReLU at 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rectifier {
    pub slope: f64,
}

impl Rectifier {
    pub const RELU: Rectifier = Rectifier { slope: 0.0 };

    /// A leaky ReLU of this negative slope.
    pub fn leaky(slope: f64) -> Rectifier {
        Rectifier { slope }
    }

    /// Whether this is ReLU (slope 0).
    pub fn is_relu(self) -> bool {
        self.slope == 0.0
    }

    /// The same on any device and dtype, from Candle's ops (the reference path).
    pub fn candle(self, x: &Tensor) -> Result<Tensor> {
        if self.is_relu() {
            x.relu()
        } else {
            candle_nn::ops::leaky_relu(x, self.slope)
        }
    }

    /// This rectifier in the element type `T`.
    pub(crate) fn in_type<T: WithDType>(self) -> Slope<T> {
        Slope {
            slope: T::from_f64(self.slope),
            relu: self.is_relu(),
        }
    }
}

/// A [`Rectifier`] in an element type: its slope, and whether it is ReLU (whose
/// output below 0 is 0, not `0 · x`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slope<T> {
    pub(crate) slope: T,
    pub(crate) relu: bool,
}

impl<T: WithDType> Slope<T> {
    /// `y` where `y > 0`, else 0 (ReLU) or `slope · y`.
    #[inline(always)]
    pub(crate) fn apply(self, y: T) -> T {
        if y > T::zero() {
            y
        } else if self.relu {
            T::zero()
        } else {
            y * self.slope
        }
    }
}

/// The rectifier with the one-pass backward on f32 / f64 CPU tensors; Candle's ops
/// on any other ([`Rectifier::candle`]).
pub fn rectify(x: &Tensor, r: Rectifier) -> Result<Tensor> {
    if !conv_cpu::supports(x) {
        return r.candle(x);
    }
    let x = x.contiguous()?;
    profile::time(profile::Op::Rectifier, || x.apply_op1(Rectify(r)))
}

struct Rectify(Rectifier);

/// The gradient through a rectifier, `(dy, v) -> dy` where it passes it on, else
/// `slope * dy`: with `v` its input, where `v >= 0` (Candle's `relu` rule); with
/// `v` its output (a rectifier fused into the op before it, which keeps only its
/// output), where `v > 0` (PyTorch's `threshold_backward`). For a slope above 0
/// the two differ only at exactly 0.
struct RectifierGrad {
    r: Rectifier,
    of_output: bool,
}

/// The rectifier in place, split over the thread pool.
pub(crate) fn rectify_in_place<T: WithDType + Send + Sync>(v: &mut [T], r: Rectifier) {
    let s = r.in_type::<T>();
    v.par_chunks_mut(CHUNK)
        .for_each(|chunk| simd::dispatch(InPlace { v: chunk, s }));
}

struct InPlace<'a, T> {
    v: &'a mut [T],
    s: Slope<T>,
}

impl<T: WithDType> Kernel for InPlace<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        for x in self.v.iter_mut() {
            *x = self.s.apply(*x);
        }
    }
}

/// `grad` where `out > 0`, else `slope * grad` (`out` the rectifier's output), on
/// f32 / f64 CPU tensors of one shape.
pub(crate) fn grad_by_output(grad: &Tensor, out: &Tensor, r: Rectifier) -> Result<Tensor> {
    let (grad, out) = (grad.contiguous()?, out.contiguous()?);
    let op = RectifierGrad { r, of_output: true };
    profile::time(profile::Op::Rectifier, || grad.apply_op2_no_bwd(&out, &op))
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

fn contiguous<'a, T>(s: &'a [T], l: &Layout, op: &'static str) -> Result<&'a [T]> {
    super::storage::contiguous(s, l, op, "the operands")
}

impl Rectify {
    fn apply<T: WithDType + Send + Sync>(&self, x: &[T]) -> Vec<T> {
        let s = self.0.in_type::<T>();
        // Both operands are x: the rectifier as the two-operand map.
        map2(x, x, move |x, _| s.apply(x))
    }
}

impl CustomOp1 for Rectify {
    fn name(&self) -> &'static str {
        if self.0.is_relu() {
            "ldct-relu"
        } else {
            "ldct-leaky-relu"
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(self.apply(contiguous(v, l, "ldct-rectifier")?)),
            CpuStorage::F64(v) => CpuStorage::F64(self.apply(contiguous(v, l, "ldct-rectifier")?)),
            _ => bail!("{}: f32 or f64 only", self.name()),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (grad, arg) = (grad_res.contiguous()?, arg.contiguous()?);
        let op = RectifierGrad {
            r: self.0,
            of_output: false,
        };
        profile::time(profile::Op::Rectifier, || grad.apply_op2_no_bwd(&arg, &op)).map(Some)
    }
}

impl RectifierGrad {
    fn apply<T: WithDType + Send + Sync>(&self, g: &[T], v: &[T]) -> Vec<T> {
        let (zero, slope) = (T::zero(), T::from_f64(self.r.slope));
        match (self.of_output, self.r.is_relu()) {
            (true, true) => map2(g, v, move |g, v| if v > zero { g } else { zero }),
            (false, true) => map2(g, v, move |g, v| if v >= zero { g } else { zero }),
            (true, false) => map2(g, v, move |g, v| if v > zero { g } else { g * slope }),
            (false, false) => map2(g, v, move |g, v| if v >= zero { g } else { g * slope }),
        }
    }
}

impl CustomOp2 for RectifierGrad {
    fn name(&self) -> &'static str {
        "ldct-rectifier-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            bail!("ldct-rectifier-grad: {:?} vs {:?}", l1.shape(), l2.shape())
        }
        let op = "ldct-rectifier-grad";
        let out = match (s1, s2) {
            (CpuStorage::F32(g), CpuStorage::F32(v)) => {
                CpuStorage::F32(self.apply(contiguous(g, l1, op)?, contiguous(v, l2, op)?))
            }
            (CpuStorage::F64(g), CpuStorage::F64(v)) => {
                CpuStorage::F64(self.apply(contiguous(g, l1, op)?, contiguous(v, l2, op)?))
            }
            _ => bail!("ldct-rectifier-grad: f32 or f64 operands of one dtype"),
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

    /// Values and gradients equal Candle's `relu` and `leaky_relu` exactly (f32,
    /// f64) across chunk boundaries; for ReLU with exact zeros in the input, where
    /// `x >= 0` lets the gradient through (Candle's rule). A non-contiguous input.
    #[test]
    fn matches_candles_relu_and_leaky_relu_and_their_gradients() -> Result<()> {
        let dev = Device::Cpu;
        for r in [Rectifier::RELU, Rectifier::leaky(0.2)] {
            for dtype in [DType::F32, DType::F64] {
                let n = 3 * CHUNK + 17;
                let x = Tensor::randn(0f64, 1.0, (n,), &dev)?.to_dtype(dtype)?;
                // Exact zeros for ReLU (Candle's leaky ReLU splits the gradient
                // between its maximum and minimum there).
                let x = if r == Rectifier::RELU {
                    x.abs()?.ge(0.1)?.where_cond(&x, &x.zeros_like()?)?
                } else {
                    x
                };
                let var = Var::from_tensor(&x)?;
                let w = Tensor::randn(0f64, 1.0, (n,), &dev)?.to_dtype(dtype)?;
                let ours = rectify(var.as_tensor(), r)?;
                let theirs = r.candle(var.as_tensor())?;
                assert_eq!(f64s(&ours)?, f64s(&theirs)?, "{r:?} {dtype:?}");
                let g1 = (ours * &w)?.sum_all()?.backward()?;
                let g2 = (theirs * &w)?.sum_all()?.backward()?;
                let (g1, g2) = (
                    g1.get(var.as_tensor()).unwrap(),
                    g2.get(var.as_tensor()).unwrap(),
                );
                assert_eq!(f64s(g1)?, f64s(g2)?, "{r:?} {dtype:?}");
            }
            let x = Tensor::randn(0f32, 1.0, (40, 30), &dev)?.t()?;
            assert_eq!(
                rectify(&x, r)?.to_vec2::<f32>()?,
                r.candle(&x)?.to_vec2::<f32>()?
            );
        }
        Ok(())
    }

    /// The fused form: in place, and the gradient by the output, equal the op's,
    /// bit for bit; in place NaN, infinities and signed zeros included (one rule,
    /// `Slope::apply`: ReLU maps NaN to 0 as Candle's `relu` does).
    #[test]
    fn in_place_and_gradient_by_output_match_the_op() -> Result<()> {
        let dev = Device::Cpu;
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        for r in [Rectifier::RELU, Rectifier::leaky(0.2)] {
            let special = [f32::NAN, -0.0, 0.0, f32::INFINITY, f32::NEG_INFINITY];
            let mut v = Tensor::randn(0f32, 1.0, (CHUNK + 5,), &dev)?.to_vec1::<f32>()?;
            v[..special.len()].copy_from_slice(&special);
            let y = rectify(&Tensor::new(v.as_slice(), &dev)?, r)?;
            rectify_in_place(&mut v, r);
            assert_eq!(bits(&v), bits(&y.to_vec1::<f32>()?), "{r:?}");

            let x = Tensor::randn(0f32, 1.0, (CHUNK + 5,), &dev)?;
            let g = Tensor::randn(0f32, 1.0, (CHUNK + 5,), &dev)?;
            let y = rectify(&x, r)?;
            let var = Var::from_tensor(&x)?;
            let grads = (rectify(var.as_tensor(), r)? * &g)?.sum_all()?.backward()?;
            let by_output = grad_by_output(&g, &y, r)?;
            assert_eq!(
                by_output.to_vec1::<f32>()?,
                grads.get(var.as_tensor()).unwrap().to_vec1::<f32>()?
            );
        }
        Ok(())
    }
}
