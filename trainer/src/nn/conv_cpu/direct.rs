//! The direct convolutions for layers with at most [`DIRECT_MAX_OUT`] output channels
//! (a network's last layer): they work on the images one kernel tap at a time, since
//! gathering im2col columns would cost more than the arithmetic.

use rayon::prelude::*;

use super::geom::{Float, Geom, Plan, BAND_ELEMS};

/// Output channels up to which [`super::kernels::forward`], `data_grad` and `weight_grad`
/// use the direct kernels below: with so few GEMM rows, gathering the columns
/// would cost more than the arithmetic.
pub(super) const DIRECT_MAX_OUT: usize = 4;

/// `y[j] += w · x[j·step]`.
#[inline]
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
#[inline]
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
#[inline]
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
    let plane = g.ho * g.wo;
    let (hw, k_len) = (g.h * g.w, g.k_len());
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
                let oy0 = bi * band;
                let oy1 = oy0 + yb.len() / g.wo;
                if let Some(bias) = bias {
                    yb.fill(bias[co]);
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
            });
    });
    b
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
    let (hw, plane, kk, k_len) = (g.h * g.w, g.ho * g.wo, g.kk(), g.k_len());
    let mut a = vec![T::ZERO; g.n * g.a_len()];
    if hw == 0 {
        return a;
    }
    a.par_chunks_mut(hw).enumerate().for_each(|(pi, x)| {
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
    });
    a
}

/// [`weight_grad`] for few output channels: each task computes the taps of
/// one (output, input) channel pair as dot products over every sample.
pub(super) fn weight_grad<T: Float>(g: &Geom, p: &Plan, a: &[T], b: &[T]) -> Vec<T> {
    let (hw, plane, kk) = (g.h * g.w, g.ho * g.wo, g.kk());
    let mut kmat = vec![T::ZERO; g.c_out * g.k_len()];
    kmat.par_chunks_mut(kk).enumerate().for_each(|(pi, taps)| {
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
    });
    kmat
}
