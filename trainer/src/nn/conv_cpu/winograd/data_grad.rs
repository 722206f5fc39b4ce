//! The input gradient of a 3x3 stride-1 convolution `g` (and the forward of a
//! transposed one): the forward of [`transposed`]`(g)`, a convolution of `B`
//! with `g`'s kernels rotated by 180°, padding `2 - p`.
//!
//! Unpadded convolutions (the reflection-padded layers of a ResNet generator pad
//! outside the convolution) make that a "full" convolution whose output is two
//! pixels larger each way than `B`: 9 tiles per row of a 16-pixel `B`, which
//! takes two blocks of [`super::LANES`] tiles and the padded copy of every row
//! (a 16x16 ResNet block's input gradient took 2.3 times its forward). Here it
//! is split instead: the interior is the convolution of `B` with padding 1 (the
//! forward's own tile grid), and the one-pixel frame around it, where only one
//! row or column of each kernel reaches `B`, is 12 small GEMMs.

use rayon::prelude::*;

use super::{run_kernels, transposed, Kernels};
use crate::nn::conv_cpu::gemm::{matmul, Mat};
use crate::nn::conv_cpu::geom::{Float, Geom, SharedMut};

/// `A = conv_full(B, K)` (+ bias per channel of A): the input gradient of `g`
/// (where [`super::applies_to_data_grad`] holds) from `b [n, c_out, ho, wo]`
/// and `kmat [c_out, c_in, 3, 3]`; returns `a [n, c_in, h, w]`.
pub fn data_grad<T: Float>(g: &Geom, b: &[T], kmat: &[T], bias: Option<&[T]>) -> Vec<T> {
    if g.padding == 0 && g.ho > 0 && g.wo > 0 {
        unpadded(g, b, kmat, bias)
    } else {
        run_kernels(&transposed(g), b, Kernels::Flipped(kmat), bias)
    }
}

/// [`data_grad`] of an unpadded `g` (`h = ho + 2`, `w = wo + 2`): the interior
/// `[1, h - 1) x [1, w - 1)` by Winograd, then the frame ([`frame`]).
fn unpadded<T: Float>(g: &Geom, b: &[T], kmat: &[T], bias: Option<&[T]>) -> Vec<T> {
    let (h, w) = (g.h, g.w);
    debug_assert!(h == g.ho + 2 && w == g.wo + 2, "{g:?}");
    let inner = Geom {
        ho: g.ho,
        wo: g.wo,
        padding: 1,
        ..transposed(g)
    };
    let core = run_kernels(&inner, b, Kernels::Flipped(kmat), bias);
    // The interior and the frame write every element: no zeroing.
    let len = g.n * g.a_len();
    let mut a: Vec<T> = Vec::with_capacity(len);
    let out = SharedMut::new(a.as_mut_ptr());
    core.par_chunks_exact(g.ho * g.wo)
        .enumerate()
        .for_each(|(plane, src)| {
            for (y, row) in src.chunks_exact(g.wo).enumerate() {
                // SAFETY: row y + 1, columns 1 .. w - 1 of plane `plane` of
                // a's n·c_in planes of h x w; each task copies its own plane.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        row.as_ptr(),
                        out.get().add(plane * h * w + (y + 1) * w + 1),
                        g.wo,
                    )
                };
            }
        });
    frame(g, b, kmat, bias, out);
    // SAFETY: the interior (above) and the frame (rows 0 and h - 1, columns 0
    // and w - 1) are every element of the capacity.
    unsafe { a.set_len(len) };
    a
}

/// One side of the frame of an unpadded convolution's input gradient.
#[derive(Debug, Clone, Copy)]
enum Edge {
    /// Row 0 of A: B's row 0 through kernel row 0.
    Top,
    /// Row `h - 1`: B's row `ho - 1` through kernel row 2.
    Bottom,
    /// Column 0, rows `1 .. h - 1`: B's column 0 through kernel column 0.
    Left,
    /// Column `w - 1`, rows `1 .. h - 1`: B's column `wo - 1` through kernel
    /// column 2.
    Right,
}

impl Edge {
    /// Pixels of B along the edge.
    fn len(self, g: &Geom) -> usize {
        match self {
            Edge::Top | Edge::Bottom => g.wo,
            Edge::Left | Edge::Right => g.ho,
        }
    }

    /// Offset of the edge's pixel `t` in a plane of B.
    fn b_at(self, g: &Geom, t: usize) -> usize {
        match self {
            Edge::Top => t,
            Edge::Bottom => (g.ho - 1) * g.wo + t,
            Edge::Left => t * g.wo,
            Edge::Right => t * g.wo + g.wo - 1,
        }
    }

    /// The kernel tap (row-major) that carries B's pixel `t` to the edge's
    /// pixel `t + j` of A.
    fn tap(self, j: usize) -> usize {
        match self {
            Edge::Top => j,
            Edge::Bottom => 6 + j,
            Edge::Left => 3 * j,
            Edge::Right => 3 * j + 2,
        }
    }

    /// The edge's pixels of A that it writes (of 0 .. len + 2): the columns
    /// leave the corners to the rows.
    fn a_pixels(self, g: &Geom) -> std::ops::Range<usize> {
        match self {
            Edge::Top | Edge::Bottom => 0..g.w,
            Edge::Left | Edge::Right => 1..g.h - 1,
        }
    }

    /// Offset of the edge's pixel `p` in a plane of A.
    fn a_at(self, g: &Geom, p: usize) -> usize {
        match self {
            Edge::Top => p,
            Edge::Bottom => (g.h - 1) * g.w + p,
            Edge::Left => p * g.w,
            Edge::Right => p * g.w + g.w - 1,
        }
    }
}

/// Fills the frame of `a` (pixels no interior output covers): along each edge,
/// `A[ci, p] = bias[ci] + Σ_j Σ_co K[co, ci, tap(j)] · B[co, p - j]`, one GEMM
/// `(c_in x c_out) · (c_out x n·len)` per tap `j`.
///
/// `out` points to `a [n, c_in, h, w]`, whose frame no one else writes meanwhile.
fn frame<T: Float>(g: &Geom, b: &[T], kmat: &[T], bias: Option<&[T]>, out: SharedMut<T>) {
    let (h, w) = (g.h, g.w);
    let plane_b = g.ho * g.wo;
    [Edge::Top, Edge::Bottom, Edge::Left, Edge::Right]
        .into_par_iter()
        .for_each(|edge| {
            let len = edge.len(g);
            let cols = g.n * len;
            // B along the edge, every sample side by side: [c_out, n·len].
            let mut line = vec![T::ZERO; g.c_out * cols];
            for (co, dst) in line.chunks_exact_mut(cols).enumerate() {
                for (i, d) in dst.chunks_exact_mut(len).enumerate() {
                    let plane = &b[i * g.b_len() + co * plane_b..][..plane_b];
                    for (t, v) in d.iter_mut().enumerate() {
                        *v = plane[edge.b_at(g, t)];
                    }
                }
            }
            // The edge's pixels of A for every (ci, sample): [c_in, n, len + 2].
            let span = len + 2;
            let mut sum = vec![T::ZERO; g.c_in * g.n * span];
            if let Some(bias) = bias {
                for (s, &v) in sum.chunks_exact_mut(g.n * span).zip(bias) {
                    s.fill(v);
                }
            }
            let mut prod = vec![T::ZERO; g.c_in * cols];
            for j in 0..3 {
                // Kernel tap j as a c_in x c_out matrix.
                let lhs = Mat {
                    ptr: kmat[edge.tap(j)..].as_ptr(),
                    rs: 9,
                    cs: g.c_in * 9,
                };
                let rhs = Mat {
                    ptr: line.as_ptr(),
                    rs: cols,
                    cs: 1,
                };
                // SAFETY: prod holds c_in x cols; lhs reads kmat [c_out, c_in, 9]
                // at tap + ci·9 + co·c_in·9; line holds c_out x cols.
                unsafe {
                    matmul(
                        g.c_in,
                        cols,
                        g.c_out,
                        prod.as_mut_ptr(),
                        cols,
                        false,
                        lhs,
                        rhs,
                        false,
                    )
                };
                for (s, p) in sum.chunks_exact_mut(span).zip(prod.chunks_exact(len)) {
                    for (d, v) in s[j..j + len].iter_mut().zip(p) {
                        *d += *v;
                    }
                }
            }
            let pixels = edge.a_pixels(g);
            for ci in 0..g.c_in {
                for i in 0..g.n {
                    let s = &sum[(ci * g.n + i) * span..][..span];
                    let base = (i * g.c_in + ci) * h * w;
                    for p in pixels.clone() {
                        // SAFETY: inside a (plane base of [n, c_in, h, w]); each
                        // edge writes its own pixels (the rows whole, the columns
                        // without the corners), nobody else writes the frame.
                        unsafe { *out.get().add(base + edge.a_at(g, p)) = s[p] };
                    }
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::super::tests::{geom, max_diff, values};
    use super::*;

    /// `A = conv_full(B, K) + bias` written out: A's pixel (y, x) sums
    /// K[co, ci, ky, kx]·B[co, y - ky, x - kx] (the input gradient of `g`).
    fn naive(g: &Geom, b: &[f64], k: &[f64], bias: &[f64]) -> Vec<f64> {
        let mut a = vec![0.0; g.n * g.a_len()];
        for i in 0..g.n {
            for ci in 0..g.c_in {
                for y in 0..g.h {
                    for x in 0..g.w {
                        let mut s = bias[ci];
                        for co in 0..g.c_out {
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let (by, bx) = (
                                        (y + g.padding) as isize - ky as isize,
                                        (x + g.padding) as isize - kx as isize,
                                    );
                                    if by < 0
                                        || bx < 0
                                        || by >= g.ho as isize
                                        || bx >= g.wo as isize
                                    {
                                        continue;
                                    }
                                    s += k[((co * g.c_in + ci) * 3 + ky) * 3 + kx]
                                        * b[((i * g.c_out + co) * g.ho + by as usize) * g.wo
                                            + bx as usize];
                                }
                            }
                        }
                        a[((i * g.c_in + ci) * g.h + y) * g.w + x] = s;
                    }
                }
            }
        }
        a
    }

    /// Unpadded (interior + frame) and padded geometries, square and not, 1 to
    /// 19 pixels, against the sum written out, f64 to rounding and f32 to 1e-5.
    #[test]
    fn the_input_gradient_matches_the_sum_written_out() {
        let shapes = [
            // (n, c_in, c_out, h, w, padding)
            (2, 3, 5, 18, 18, 0),
            (1, 4, 2, 3, 3, 0),
            (3, 2, 3, 5, 9, 0),
            (2, 5, 4, 21, 11, 0),
            (1, 3, 3, 34, 34, 0),
            (2, 3, 4, 13, 10, 1),
            (1, 2, 3, 7, 6, 2),
        ];
        for (s, &(n, c_in, c_out, h, w, p)) in shapes.iter().enumerate() {
            let g = geom(n, c_in, c_out, h, w, p);
            let b = values(n * g.b_len(), 5 * s as u64 + 1);
            let k = values(c_out * c_in * 9, 5 * s as u64 + 2);
            let bias = values(c_in, 5 * s as u64 + 3);
            let want = naive(&g, &b, &k, &bias);
            let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
            let got = data_grad(&g, &b, &k, Some(&bias));
            let d = max_diff(&got, &want);
            assert!(d <= 1e-12 * scale, "{g:?}: f64 differs by {d:e}");
            let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
            let got = data_grad(&g, &f(&b), &f(&k), None);
            let no_bias = naive(&g, &b, &k, &vec![0.0; c_in]);
            let d = max_diff(&got, &no_bias);
            assert!(d <= 1e-5 * scale, "{g:?}: f32 differs by {d:e}");
        }
    }
}
