//! The weight gradient of a 3x3 stride-1 convolution by Winograd F(2x2, 3x3).
//!
//! The forward computes every tile as `Aᵀ [Σ_ci U_ξ ⊙ V_ξ] A` with `U = G g Gᵀ`;
//! its adjoint with respect to the kernels is, per transform position ξ, one
//! GEMM reducing over tiles, `dU_ξ [c_out, c_in] = Σ_tiles dM_ξ · V_ξᵀ` with
//! `dM = A dY Aᵀ` of each output-gradient tile, and then `dg = Gᵀ dU G` per
//! kernel. F(2x2, 3x3) multiplies 4 values per output pixel and kernel against
//! im2col's 9, and its transforms (points 0, ±1) are exact apart from the halves
//! of `G`.
//!
//! Tiles of several samples sit side by side in one chunk (a small image has few
//! tiles: 64 at 16x16), chunks of up to [`CHUNK_ELEMS`] transformed values and at
//! least one per thread. Each thread takes a share of the chunks, transforms a
//! chunk's input patches and output gradients and reduces them at once (one GEMM
//! per ξ, still in its cache) into its own `dU`; the shares are summed at the
//! end. (Transforming every chunk first and then giving each thread whole ξ was
//! slower: the CycleGAN ngf 64 step 1.91-2.0 s against 1.73-1.78 s.)
//!
//! It runs where both channel counts are at least [`MIN_CHANNELS`]. Below that
//! the transforms' memory traffic outweighs the products saved and im2col's one
//! GEMM per band is faster (`cargo bench -p ldct-train --bench conv -- wgrad`,
//! 2 cores, AVX-512: 8 x 24 channels at 96x96 16 against 8 ms, 8 x 96 at 24x24 5
//! against 3 ms). From 128 channels it gains: the CycleGAN ngf 32 step's weight
//! gradients of its 128-channel 16x16 blocks take 65 ms against im2col's 93, the
//! ngf 64 step's (256 channels, 32x32) about 370 against 450.

use rayon::prelude::*;

use super::f2x2::F2x2;
use super::{
    budget_chunks, copy_lanes, gather_patches, lanes, needs_padding, xi_stride, Columns, Lanes,
    Variant, ISA, LANES,
};
use crate::nn::conv_cpu::gemm::{matmul, Mat};
use crate::nn::conv_cpu::geom::{sum_shares, Float, Geom};
use crate::nn::simd;

/// Transformed values (`ξ·(c_in + c_out)` per tile) of a chunk.
const CHUNK_ELEMS: usize = 1 << 21;

/// The fewest input and output channels the Winograd weight gradient runs on.
pub const MIN_CHANNELS: usize = 128;

/// Variants with a weight gradient: the output-gradient transform and the
/// kernel-gradient transform, the adjoints of `write_tiles` and
/// `transform_kernel`.
pub(super) trait WeightGrad: Variant {
    /// `dM_ξ = A dY Aᵀ` of every tile of tile rows `trows` of one sample's
    /// output gradient `b [c_out, ho, wo]` (zero past its edge), into `dm` at
    /// `out`.
    fn transform_output_grads<T: Float>(
        g: &Geom,
        b: &[T],
        trows: std::ops::Range<usize>,
        tw: usize,
        out: Columns,
        dm: &mut [T],
    );

    /// `Gᵀ dU G`: one kernel's 3x3 gradient (row-major) from its [`Variant::XI`]
    /// values of `dU`.
    fn kernel_grad<T: Float>(du: &[T]) -> [T; 9];
}

/// Whether the weight gradient of `g` runs here.
pub fn applies(g: &Geom) -> bool {
    super::applies(g) && g.c_in.min(g.c_out) >= MIN_CHANNELS
}

/// `K = Σ_n dB_n ⋆ A_n` for a geometry where [`applies`] holds: `a [n, c_in, h,
/// w]`, `b [n, c_out, ho, wo]`; returns `kmat [c_out, c_in·9]`.
pub fn weight_grad<T: Float>(g: &Geom, a: &[T], b: &[T]) -> Vec<T> {
    run::<T, F2x2>(g, a, b)
}

fn run<T: Float, V: WeightGrad>(g: &Geom, a: &[T], b: &[T]) -> Vec<T> {
    let plane = g.c_out * g.c_in;
    if g.n == 0 || g.ho == 0 || g.wo == 0 {
        return vec![T::ZERO; plane * 9];
    }
    let (th, tw) = (g.ho.div_ceil(V::M), g.wo.div_ceil(V::M));
    let threads = rayon::current_num_threads();
    let chunks = budget_chunks(g, th, tw, V::XI, CHUNK_ELEMS);
    let shares = threads.min(chunks.len()).max(1);
    let pad = needs_padding(g, V::M);
    let parallel_gemm = shares < threads;
    let partial: Vec<Vec<T>> = chunks
        .par_chunks(chunks.len().div_ceil(shares))
        .map(|share| {
            let mut du = vec![T::ZERO; V::XI * plane];
            let (mut v, mut dm, mut padded) = (Vec::new(), Vec::new(), Vec::new());
            for chunk in share {
                let cols: usize = chunk.iter().map(|&(_, t0, t1)| (t1 - t0) * tw).sum();
                let (v_xi, m_xi) = (xi_stride(g.c_in * cols), xi_stride(g.c_out * cols));
                v.resize(V::XI * v_xi, T::ZERO);
                dm.resize(V::XI * m_xi, T::ZERO);
                let mut col0 = 0;
                for &(i, t0, t1) in chunk {
                    let at = |xi_stride: usize| Columns {
                        xi_stride,
                        ch_stride: cols,
                        col0,
                    };
                    let a_i = &a[i * g.a_len()..(i + 1) * g.a_len()];
                    let (out, v) = (at(v_xi), &mut v[..]);
                    gather_patches::<T, V>(g, a_i, t0..t1, tw, pad, &mut padded, out, v);
                    simd::dispatch_at_most(
                        ISA,
                        OutputGrads::<T, V> {
                            g,
                            b: &b[i * g.b_len()..(i + 1) * g.b_len()],
                            trows: t0..t1,
                            tw,
                            out: at(m_xi),
                            dm: &mut dm,
                            variant: std::marker::PhantomData,
                        },
                    );
                    col0 += (t1 - t0) * tw;
                }
                for xi in 0..V::XI {
                    let lhs = Mat {
                        ptr: dm[xi * m_xi..].as_ptr(),
                        rs: cols,
                        cs: 1,
                    };
                    // V_ξᵀ: cols x c_in.
                    let rhs = Mat {
                        ptr: v[xi * v_xi..].as_ptr(),
                        rs: 1,
                        cs: cols,
                    };
                    // SAFETY: du holds XI blocks of c_out x c_in (this share's
                    // own); dm XI blocks of c_out x cols (m_xi apart); v XI
                    // blocks of c_in x cols (v_xi apart).
                    unsafe {
                        matmul(
                            g.c_out,
                            g.c_in,
                            cols,
                            du[xi * plane..].as_mut_ptr(),
                            g.c_in,
                            true,
                            lhs,
                            rhs,
                            parallel_gemm,
                        )
                    };
                }
            }
            du
        })
        .collect();
    let du = sum_shares(partial, V::XI * plane);
    // Gᵀ dU G per kernel: gather its XI values (XI planes apart) and transform.
    let mut kmat = vec![T::ZERO; plane * 9];
    kmat.par_chunks_mut(9 * g.c_in)
        .enumerate()
        .for_each(|(co, row)| {
            let mut vals = [T::ZERO; 36];
            for (ci, k) in row.chunks_exact_mut(9).enumerate() {
                for (xi, v) in vals.iter_mut().take(V::XI).enumerate() {
                    *v = du[xi * plane + co * g.c_in + ci];
                }
                k.copy_from_slice(&V::kernel_grad(&vals[..V::XI]));
            }
        });
    kmat
}

/// [`WeightGrad::transform_output_grads`] as a [`simd::Kernel`].
struct OutputGrads<'a, T, V> {
    g: &'a Geom,
    b: &'a [T],
    trows: std::ops::Range<usize>,
    tw: usize,
    out: Columns,
    dm: &'a mut [T],
    variant: std::marker::PhantomData<V>,
}

impl<T: Float, V: WeightGrad> simd::Kernel for OutputGrads<'_, T, V> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        V::transform_output_grads(self.g, self.b, self.trows, self.tw, self.out, self.dm)
    }
}

impl WeightGrad for F2x2 {
    #[inline(always)]
    fn transform_output_grads<T: Float>(
        g: &Geom,
        b: &[T],
        trows: std::ops::Range<usize>,
        tw: usize,
        out: Columns,
        dm: &mut [T],
    ) {
        let stride_xi = out.xi_stride;
        let (ho, wo) = (g.ho, g.wo);
        for co in 0..g.c_out {
            let plane = &b[co * ho * wo..(co + 1) * ho * wo];
            for (r, ty) in trows.clone().enumerate() {
                for tx0 in (0..tw).step_by(LANES) {
                    let nl = (tw - tx0).min(LANES);
                    let x0 = 2 * tx0;
                    // dy[row][col][j]: the 2x2 gradient tile of tile tx0 + j.
                    let mut dy = [[[T::ZERO; LANES]; 2]; 2];
                    for (a, drow) in dy.iter_mut().enumerate() {
                        let y = 2 * ty + a;
                        if y >= ho {
                            continue;
                        }
                        let line = &plane[y * wo..(y + 1) * wo];
                        if nl == LANES && x0 + 2 * LANES <= wo {
                            let run: &[T; 2 * LANES] = line[x0..x0 + 2 * LANES]
                                .try_into()
                                .expect("a slice of 2·LANES");
                            for (c, lane) in drow.iter_mut().enumerate() {
                                *lane = lanes(|j| run[2 * j + c]);
                            }
                            continue;
                        }
                        for (c, lane) in drow.iter_mut().enumerate() {
                            for (j, l) in lane[..nl].iter_mut().enumerate() {
                                let x = x0 + 2 * j + c;
                                if x < wo {
                                    *l = line[x];
                                }
                            }
                        }
                    }
                    // A dy: rows y0, y0 + y1, y0 - y1, -y1 (for each column).
                    let z = T::ZERO;
                    let t: [[Lanes<T>; 2]; 4] = [
                        dy[0],
                        std::array::from_fn(|c| lanes(|j| dy[0][c][j] + dy[1][c][j])),
                        std::array::from_fn(|c| lanes(|j| dy[0][c][j] - dy[1][c][j])),
                        std::array::from_fn(|c| lanes(|j| z - dy[1][c][j])),
                    ];
                    let base = co * out.ch_stride + out.col0 + r * tw + tx0;
                    for (row, tr) in t.iter().enumerate() {
                        // (A dy) Aᵀ: columns t0, t0 + t1, t0 - t1, -t1.
                        let vals: [Lanes<T>; 4] = [
                            tr[0],
                            lanes(|j| tr[0][j] + tr[1][j]),
                            lanes(|j| tr[0][j] - tr[1][j]),
                            lanes(|j| z - tr[1][j]),
                        ];
                        for (col, v) in vals.iter().enumerate() {
                            let at = (row * 4 + col) * stride_xi + base;
                            copy_lanes(&mut dm[at..at + nl], v);
                        }
                    }
                }
            }
        }
    }

    #[inline(always)]
    fn kernel_grad<T: Float>(du: &[T]) -> [T; 9] {
        let half = T::from_f64(0.5);
        let d = |r: usize, c: usize| du[r * 4 + c];
        // Gᵀ dU: 3x4, rows u0 + (u1 + u2)/2, (u1 - u2)/2, (u1 + u2)/2 + u3.
        let s: [[T; 4]; 3] = [
            std::array::from_fn(|c| d(0, c) + (d(1, c) + d(2, c)) * half),
            std::array::from_fn(|c| (d(1, c) - d(2, c)) * half),
            std::array::from_fn(|c| (d(1, c) + d(2, c)) * half + d(3, c)),
        ];
        // (Gᵀ dU) G: columns the same.
        let mut k = [T::ZERO; 9];
        for (i, row) in s.iter().enumerate() {
            k[i * 3] = row[0] + (row[1] + row[2]) * half;
            k[i * 3 + 1] = (row[1] - row[2]) * half;
            k[i * 3 + 2] = (row[1] + row[2]) * half + row[3];
        }
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::conv_cpu::winograd::tests::{geom, max_diff, values, SHAPES};

    /// `K[co, ci, ky, kx] = Σ dB[co, oy, ox] · A[ci, oy + ky - p, ox + kx - p]`
    /// written out, in f64.
    fn naive(g: &Geom, a: &[f64], b: &[f64]) -> Vec<f64> {
        let mut k = vec![0.0; g.c_out * g.c_in * 9];
        for i in 0..g.n {
            for co in 0..g.c_out {
                for ci in 0..g.c_in {
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let mut s = 0.0;
                            for oy in 0..g.ho {
                                for ox in 0..g.wo {
                                    let y = (oy + ky) as isize - g.padding as isize;
                                    let x = (ox + kx) as isize - g.padding as isize;
                                    if y < 0 || x < 0 || y >= g.h as isize || x >= g.w as isize {
                                        continue;
                                    }
                                    s += b[((i * g.c_out + co) * g.ho + oy) * g.wo + ox]
                                        * a[((i * g.c_in + ci) * g.h + y as usize) * g.w
                                            + x as usize];
                                }
                            }
                            k[((co * g.c_in + ci) * 3 + ky) * 3 + kx] += s;
                        }
                    }
                }
            }
        }
        k
    }

    /// Against the gradient written out ([`SHAPES`]; several samples in a chunk),
    /// f64 (to rounding) and f32 (1e-5 of the largest value).
    #[test]
    fn matches_the_weight_gradient_written_out() {
        for (s, &(n, c_in, c_out, h, w, p)) in SHAPES.iter().enumerate() {
            let g = geom(n, c_in, c_out, h, w, p);
            let a = values(n * g.a_len(), 5 * s as u64 + 1);
            let b = values(n * g.b_len(), 5 * s as u64 + 2);
            let want = naive(&g, &a, &b);
            let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
            let got = run::<f64, F2x2>(&g, &a, &b);
            let d = max_diff(&got, &want);
            assert!(d <= 1e-12 * scale, "{g:?}: f64 differs by {d:e}");
            let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
            let got = run::<f32, F2x2>(&g, &f(&a), &f(&b));
            let d = max_diff(&got, &want);
            assert!(d <= 1e-5 * scale, "{g:?}: f32 differs by {d:e}");
        }
    }
}
