//! The three CPU convolution primitives, on contiguous NCHW slices.
//!
//! Every convolution and transposed convolution, forward and backward, is one of
//! three computations on a convolution [`Geom`]etry that maps an input `A
//! [n, c_in, h, w]` to an output `B [n, c_out, ho, wo]` with a kernel matrix
//! `K [c_out, c_in * kh * kw]` (the row-major layout of both a conv2d weight
//! `[c_out, c_in, kh, kw]` and a transposed-conv weight `[c_in', c_out', kh, kw]`
//! read with the roles of A and B swapped):
//!
//! - [`forward`]: `B_n = K · im2col(A_n)` (conv2d forward; transposed-conv input
//!   gradient);
//! - [`data_grad`]: `A_n = col2im(Kᵀ · B_n)` (conv2d input gradient;
//!   transposed-conv forward);
//! - [`weight_grad`]: `K = Σ_n B_n · im2col(A_n)ᵀ` (both weight gradients).
//!
//! This module picks the algorithm, each in a module of its own:
//!
//! - [`super::im2col`]: im2col / col2im + one GEMM per band (the general case);
//! - [`super::direct`]: with at most [`DIRECT_MAX_OUT`] output channels (a network's
//!   last layer), directly on the images, one kernel tap at a time;
//! - [`super::winograd`]: 3x3 stride-1 layers with enough channels, forward and input
//!   gradient by F(2x2, 3x3) or F(4x4, 3x3), weight gradient by F(2x2, 3x3) from 128
//!   channels.
//!
//! They share the geometry ([`super::geom`]) and the GEMM ([`super::gemm`]); Winograd
//! does not use the im2col module.
//!
//! Output positions whose receptive field leaves the input read zeros (zero
//! padding), input positions no output reads get a zero gradient: any H, W,
//! stride, padding, dilation and output padding give correctly shaped results.

use rayon::prelude::*;

use super::direct::{self, DIRECT_MAX_OUT};
pub use super::geom::{Float, Geom};
use super::{im2col, winograd};
use crate::nn::profile::{time, Op};

/// `B_n = K · im2col(A_n)` (+ bias per output channel) for every sample:
/// `a [n, c_in, h, w]`, `kmat [c_out, c_in·kh·kw]`, `bias [c_out]`; returns
/// `b [n, c_out, ho, wo]`.
pub fn forward<T: Float>(g: &Geom, a: &[T], kmat: &[T], bias: Option<&[T]>) -> Vec<T> {
    if g.empty() {
        return vec![T::ZERO; g.n * g.b_len()];
    }
    let plan = g.plan();
    if g.c_out <= DIRECT_MAX_OUT {
        return time(Op::ConvForwardDirect, || {
            direct::forward(g, &plan, a, kmat, bias)
        });
    }
    if winograd::applies(g) {
        return time(Op::ConvForwardWinograd, || {
            winograd::forward(g, a, kmat, bias)
        });
    }
    time(Op::ConvForwardIm2col, || {
        im2col::forward(g, &plan, a, kmat, bias)
    })
}

/// `A_n = col2im(Kᵀ · B_n)` (+ bias per channel of A) for every sample:
/// `b [n, c_out, ho, wo]`, `kmat [c_out, c_in·kh·kw]`, `bias [c_in]`; returns
/// `a [n, c_in, h, w]`. Tasks are (group of samples, group of input channels):
/// `col2im` of different bands overlaps, of different channels does not.
pub fn data_grad<T: Float>(g: &Geom, b: &[T], kmat: &[T], bias: Option<&[T]>) -> Vec<T> {
    let hw = g.h * g.w;
    if g.empty() || hw == 0 {
        let mut a = vec![T::ZERO; g.n * g.a_len()];
        if let (Some(bias), true) = (bias, hw > 0) {
            for (plane, &v) in a.chunks_exact_mut(hw).zip(bias.iter().cycle()) {
                plane.fill(v);
            }
        }
        return a;
    }
    if g.c_out <= DIRECT_MAX_OUT {
        return time(Op::ConvDataGradDirect, || {
            direct::data_grad(g, &g.plan(), b, kmat, bias)
        });
    }
    if winograd::applies_to_data_grad(g) {
        return time(Op::ConvDataGradWinograd, || {
            winograd::data_grad(g, b, kmat, bias)
        });
    }
    time(Op::ConvDataGradIm2col, || {
        im2col::data_grad(g, b, kmat, bias)
    })
}

/// `K = Σ_n B_n · im2col(A_n)ᵀ`: `a [n, c_in, h, w]`, `b [n, c_out, ho, wo]`;
/// returns `kmat [c_out, c_in·kh·kw]`. Bands (or several small samples) are
/// gathered side by side so that each GEMM reduces over at least
/// `WEIGHT_MIN_COLS` (in [`super::im2col`]) columns; each thread accumulates a share of them into its
/// own matrix, and the shares are summed at the end.
pub fn weight_grad<T: Float>(g: &Geom, a: &[T], b: &[T]) -> Vec<T> {
    let k_len = g.k_len();
    let size = g.c_out * k_len;
    if g.empty() {
        return vec![T::ZERO; size];
    }
    let plan = g.plan();
    if g.c_out <= DIRECT_MAX_OUT {
        return time(Op::ConvWeightGradDirect, || {
            direct::weight_grad(g, &plan, a, b)
        });
    }
    if winograd::applies_to_weight_grad(g) {
        return time(Op::ConvWeightGradWinograd, || {
            winograd::weight_grad(g, a, b)
        });
    }
    time(Op::ConvWeightGradIm2col, || {
        im2col::weight_grad(g, &plan, a, b)
    })
}

/// Per-channel sum of `g [n, c, plane]` over samples and positions (a bias
/// gradient): eight running sums over blocks of 1024 values, the blocks' sums
/// added in f64.
pub fn channel_sums<T: Float>(g: &[T], n: usize, c: usize, plane: usize) -> Vec<T> {
    time(Op::ConvBiasGrad, || channel_sums_untimed(g, n, c, plane))
}

fn channel_sums_untimed<T: Float>(g: &[T], n: usize, c: usize, plane: usize) -> Vec<T> {
    (0..c)
        .into_par_iter()
        .map(|ci| {
            let mut s = 0f64;
            for i in 0..n {
                let start = (i * c + ci) * plane;
                for block in g[start..start + plane].chunks(1024) {
                    let chunks = block.chunks_exact(8);
                    let tail = chunks.remainder().iter().fold(T::ZERO, |a, v| a + *v);
                    let mut acc = [T::ZERO; 8];
                    for chunk in chunks {
                        for (a, v) in acc.iter_mut().zip(chunk) {
                            *a += *v;
                        }
                    }
                    s += acc.iter().fold(tail, |a, v| a + *v).to_f64();
                }
            }
            T::from_f64(s)
        })
        .collect()
}
