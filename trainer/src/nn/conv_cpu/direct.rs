//! The direct convolutions for layers with at most [`DIRECT_MAX_OUT`] output channels
//! (a network's last layer): they work on the images one kernel tap at a time, since
//! gathering im2col columns would cost more than the arithmetic. Each task's
//! loops are compiled for the CPU's widest vector extension ([`simd::dispatch`]:
//! element-wise products and eight fixed partial sums, the same numbers at every
//! width).

use rayon::prelude::*;

use super::geom::{Float, Geom, Plan, BAND_ELEMS};
use crate::nn::simd;

/// Output channels up to which [`super::kernels::forward`], `data_grad` and `weight_grad`
/// use the direct kernels below: with so few GEMM rows, gathering the columns
/// would cost more than the arithmetic.
pub(super) const DIRECT_MAX_OUT: usize = 4;

/// `y[j] += w · x[j·step]`.
#[inline(always)]
fn axpy<T: Float>(y: &mut [T], w: T, x: &[T], step: usize) {
    if step == 1 {
        let n = y.len();
        for (y, x) in y.iter_mut().zip(&x[..n]) {
            *y += w * *x;
        }
    } else {
        for (y, x) in y.iter_mut().zip(x.iter().step_by(step)) {
            *y += w * *x;
        }
    }
}

/// `y[j·step] += w · x[j]`.
#[inline(always)]
fn axpy_scatter<T: Float>(y: &mut [T], w: T, x: &[T], step: usize) {
    if step == 1 {
        axpy(&mut y[..x.len()], w, x, 1);
    } else {
        for (y, x) in y.iter_mut().step_by(step).zip(x) {
            *y += w * *x;
        }
    }
}

/// `Σ x[j] · y[j·step]`, in eight independent partial sums (which vectorise; one
/// running sum would be a chain of dependent additions).
#[inline(always)]
fn dot<T: Float>(x: &[T], y: &[T], step: usize) -> T {
    let mut acc = [T::ZERO; 8];
    let mut tail = T::ZERO;
    if step == 1 {
        let y = &y[..x.len()];
        let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
        for (a, b) in xc.remainder().iter().zip(yc.remainder()) {
            tail += *a * *b;
        }
        for (a, b) in xc.zip(yc) {
            for ((s, a), b) in acc.iter_mut().zip(a).zip(b) {
                *s += *a * *b;
            }
        }
    } else {
        for (j, (a, b)) in x.iter().zip(y.iter().step_by(step)).enumerate() {
            acc[j % 8] += *a * *b;
        }
    }
    acc.iter().fold(tail, |s, v| s + *v)
}

/// [`forward`] for few output channels: each task accumulates a band of rows
/// of one output plane, one kernel tap at a time.
pub(super) fn forward<T: Float>(
    g: &Geom,
    p: &Plan,
    a: &[T],
    kmat: &[T],
    bias: Option<&[T]>,
) -> Vec<T> {
    let (plane, k_len) = (g.ho * g.wo, g.k_len());
    let mut b = vec![T::ZERO; g.n * g.b_len()];
    let threads = rayon::current_num_threads();
    let band = (g.n * g.c_out * g.ho)
        .div_ceil(2 * threads)
        .clamp(1, (BAND_ELEMS / 4 / g.wo).max(1));
    b.par_chunks_mut(plane).enumerate().for_each(|(pi, y)| {
        let (i, co) = (pi / g.c_out, pi % g.c_out);
        let a_i = &a[i * g.a_len()..(i + 1) * g.a_len()];
        let k_co = &kmat[co * k_len..(co + 1) * k_len];
        y.par_chunks_mut(band * g.wo)
            .enumerate()
            .for_each(|(bi, yb)| {
                simd::dispatch(ForwardBand {
                    g,
                    p,
                    x: a_i,
                    k_co,
                    beta: bias.map(|b| b[co]),
                    oy0: bi * band,
                    yb,
                })
            });
    });
    b
}

/// One band of output rows `oy0 ..` of one output plane (`yb`) of [`forward`]
/// from one sample's input `x` and its output channel's kernels `k_co`.
struct ForwardBand<'a, T> {
    g: &'a Geom,
    p: &'a Plan,
    x: &'a [T],
    k_co: &'a [T],
    beta: Option<T>,
    oy0: usize,
    yb: &'a mut [T],
}

impl<T: Float> simd::Kernel for ForwardBand<'_, T> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let ForwardBand {
            g,
            p,
            x: a_i,
            k_co,
            beta,
            oy0,
            yb,
        } = self;
        let hw = g.h * g.w;
        let oy1 = oy0 + yb.len() / g.wo;
        if let Some(v) = beta {
            yb.fill(v);
        }
        let mut taps = k_co.iter();
        for ci in 0..g.c_in {
            let x = &a_i[ci * hw..(ci + 1) * hw];
            for (ky, &(ylo, yhi)) in p.rows.iter().enumerate() {
                for (kx, &(xlo, xhi)) in p.cols.iter().enumerate() {
                    let Some(&w) = taps.next() else { return };
                    if xlo >= xhi {
                        continue;
                    }
                    let ix0 = xlo * g.stride + kx * g.dilation - g.padding;
                    for oy in oy0.max(ylo)..oy1.min(yhi) {
                        let iy = oy * g.stride + ky * g.dilation - g.padding;
                        let row = (oy - oy0) * g.wo;
                        axpy(
                            &mut yb[row + xlo..row + xhi],
                            w,
                            &x[iy * g.w + ix0..(iy + 1) * g.w],
                            g.stride,
                        );
                    }
                }
            }
        }
    }
}

/// [`data_grad`] for few output channels: each task accumulates one input
/// plane from every output plane of its sample, one kernel tap at a time.
pub(super) fn data_grad<T: Float>(
    g: &Geom,
    p: &Plan,
    b: &[T],
    kmat: &[T],
    bias: Option<&[T]>,
) -> Vec<T> {
    let hw = g.h * g.w;
    let mut a = vec![T::ZERO; g.n * g.a_len()];
    if hw == 0 {
        return a;
    }
    a.par_chunks_mut(hw).enumerate().for_each(|(pi, x)| {
        simd::dispatch(DataGradPlane {
            g,
            p,
            b,
            kmat,
            bias,
            pi,
            x,
        })
    });
    a
}

/// Input plane `pi` (sample, channel) of [`data_grad`], into `x`.
struct DataGradPlane<'a, T> {
    g: &'a Geom,
    p: &'a Plan,
    b: &'a [T],
    kmat: &'a [T],
    bias: Option<&'a [T]>,
    pi: usize,
    x: &'a mut [T],
}

impl<T: Float> simd::Kernel for DataGradPlane<'_, T> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let DataGradPlane {
            g,
            p,
            b,
            kmat,
            bias,
            pi,
            x,
        } = self;
        let (plane, kk, k_len) = (g.ho * g.wo, g.kk(), g.k_len());
        let (i, ci) = (pi / g.c_in, pi % g.c_in);
        if let Some(bias) = bias {
            x.fill(bias[ci]);
        }
        for co in 0..g.c_out {
            let dy = &b[(i * g.c_out + co) * plane..(i * g.c_out + co + 1) * plane];
            let taps = &kmat[co * k_len + ci * kk..co * k_len + (ci + 1) * kk];
            for (ky, &(ylo, yhi)) in p.rows.iter().enumerate() {
                for (kx, &(xlo, xhi)) in p.cols.iter().enumerate() {
                    let w = taps[ky * g.kw + kx];
                    if xlo >= xhi {
                        continue;
                    }
                    let ix0 = xlo * g.stride + kx * g.dilation - g.padding;
                    for oy in ylo..yhi {
                        let iy = oy * g.stride + ky * g.dilation - g.padding;
                        axpy_scatter(
                            &mut x[iy * g.w + ix0..(iy + 1) * g.w],
                            w,
                            &dy[oy * g.wo + xlo..oy * g.wo + xhi],
                            g.stride,
                        );
                    }
                }
            }
        }
    }
}

/// [`weight_grad`] for few output channels: each task computes the taps of
/// one (output, input) channel pair as dot products over every sample.
pub(super) fn weight_grad<T: Float>(g: &Geom, p: &Plan, a: &[T], b: &[T]) -> Vec<T> {
    let mut kmat = vec![T::ZERO; g.c_out * g.k_len()];
    kmat.par_chunks_mut(g.kk())
        .enumerate()
        .for_each(|(pi, taps)| {
            simd::dispatch(WeightGradPair {
                g,
                p,
                a,
                b,
                pi,
                taps,
            })
        });
    kmat
}

/// The taps of (output, input) channel pair `pi` of [`weight_grad`], into `taps`.
struct WeightGradPair<'a, T> {
    g: &'a Geom,
    p: &'a Plan,
    a: &'a [T],
    b: &'a [T],
    pi: usize,
    taps: &'a mut [T],
}

impl<T: Float> simd::Kernel for WeightGradPair<'_, T> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let WeightGradPair {
            g,
            p,
            a,
            b,
            pi,
            taps,
        } = self;
        let (hw, plane) = (g.h * g.w, g.ho * g.wo);
        let (co, ci) = (pi / g.c_in, pi % g.c_in);
        for (ky, &(ylo, yhi)) in p.rows.iter().enumerate() {
            for (kx, &(xlo, xhi)) in p.cols.iter().enumerate() {
                if xlo >= xhi {
                    continue;
                }
                let ix0 = xlo * g.stride + kx * g.dilation - g.padding;
                let mut s = 0f64;
                for i in 0..g.n {
                    let x = &a[(i * g.c_in + ci) * hw..(i * g.c_in + ci + 1) * hw];
                    let dy = &b[(i * g.c_out + co) * plane..(i * g.c_out + co + 1) * plane];
                    for oy in ylo..yhi {
                        let iy = oy * g.stride + ky * g.dilation - g.padding;
                        s += dot(
                            &dy[oy * g.wo + xlo..oy * g.wo + xhi],
                            &x[iy * g.w + ix0..(iy + 1) * g.w],
                            g.stride,
                        )
                        .to_f64();
                    }
                }
                taps[ky * g.kw + kx] = T::from_f64(s);
            }
        }
    }
}
