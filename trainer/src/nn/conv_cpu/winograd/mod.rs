//! Winograd F(2x2, 3x3) and F(4x4, 3x3) for 3x3, stride-1, undilated
//! convolutions.
//!
//! Each m x m output tile is computed from the (m + 2) x (m + 2) input patch
//! under it (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks",
//! 2016): with `U = G g Gᵀ` for every 3x3 kernel `g` and `V = Bᵀ d B` for every
//! patch `d`, the tile is `Aᵀ [Σ_ci U ⊙ V] A`, and the sum over input channels is,
//! for each of the (m + 2)² positions ξ of the transform, one GEMM `M_ξ (c_out x
//! tiles) = U_ξ (c_out x c_in) · V_ξ (c_in x tiles)`.
//!
//! | variant      | module    | products per output | gathered data per input |
//! |--------------|-----------|--------------------:|------------------------:|
//! | im2col       |           | 9                   | 9x                      |
//! | F(2x2, 3x3)  | [`f2x2`]  | 4                   | 4x                      |
//! | F(4x4, 3x3)  | [`f4x4`]  | 2.25                | 2.25x                   |
//!
//! F(4x4, 3x3) runs where its larger tiles waste little of the output (see
//! [`Variant::choose`]); its transforms, with the points 0, ±1, ±2, lose about
//! one more decimal digit than F(2x2, 3x3)'s (relative error about 1e-6 in f32
//! against 1e-7), far inside the kernels' tolerance against Candle (1e-4).
//!
//! Tasks take a block of tile rows of one sample (the transforms of a block take
//! a few MiB), transform its patches, run the GEMMs and write its outputs;
//! outputs outside the image (sizes that are not a multiple of m) are dropped,
//! inputs outside it are the zero padding. The same routine computes the input
//! gradient of a stride-1 convolution: a convolution of the output gradient with
//! the kernels flipped and their channel axes swapped, with padding `2 - p`.

mod data_grad;
mod f2x2;
mod f4x4;
mod kernel_transform;
mod weight_grad;

pub use data_grad::data_grad;

pub use weight_grad::{applies as applies_to_weight_grad, weight_grad};

use std::marker::PhantomData;

use rayon::prelude::*;

use super::gemm::{matmul, Mat};
use super::geom::{Float, Geom, SharedMut};
use crate::nn::simd;
use kernel_transform::{transform_kernels, Arith, Kernels};

/// The widest level the transforms are compiled for. They work on arrays of
/// [`LANES`] = 8 tiles (256 bits of f32); built for AVX-512, LLVM turns their
/// strided loads into `vgatherdps` on zmm registers (its generic cost model),
/// which made the default model's U-Net step 14% slower and the CycleGAN ngf 64
/// step 10% slower than the AVX2 build on an AMD EPYC with AVX-512 (2 cores;
/// Winograd forward 58 against 40 ms, input gradient 56 against 41 ms; the AVX2
/// build uses shuffles). The GEMMs between them still use the CPU's widest level
/// (the `gemm` crate dispatches on its own).
pub(super) const ISA: simd::Isa = simd::Isa::Avx2;

/// Channels below which the transforms cost more than the products save.
const MIN_CHANNELS: usize = 16;
/// Elements of a task's transformed patches and products (`ξ·(c_in + c_out)`
/// per tile).
const BLOCK_ELEMS: usize = 1 << 20;

/// Whether the forward of `g` runs here.
pub fn applies(g: &Geom) -> bool {
    g.kh == 3
        && g.kw == 3
        && g.stride == 1
        && g.dilation == 1
        && g.c_in >= MIN_CHANNELS
        && g.c_out >= MIN_CHANNELS
}

/// Whether the input gradient of `g` runs here (as the forward of
/// [`transposed`]`(g)`).
pub fn applies_to_data_grad(g: &Geom) -> bool {
    applies(g) && g.padding <= 2
}

/// The convolution whose forward is the input gradient of `g` (stride 1, 3x3):
/// from `B` to `A`, padding `2 - p`, with `g`'s kernels rotated by 180° and
/// their channel axes swapped ([`Kernels::Flipped`]).
fn transposed(g: &Geom) -> Geom {
    Geom {
        n: g.n,
        c_in: g.c_out,
        h: g.ho,
        w: g.wo,
        c_out: g.c_in,
        ho: g.h,
        wo: g.w,
        kh: 3,
        kw: 3,
        stride: 1,
        padding: 2 - g.padding,
        dilation: 1,
    }
}

/// Where a transform writes its tiles: the value of transform position ξ,
/// channel c and tile t at `ξ·xi_stride + c·ch_stride + col0 + t`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Columns {
    pub(super) xi_stride: usize,
    pub(super) ch_stride: usize,
    pub(super) col0: usize,
}

/// One Winograd variant F(m x m, 3x3): its tile size and its three transforms.
pub(super) trait Variant {
    /// The output tile's side m.
    const M: usize;
    /// Transform positions ξ, (m + 2)²: the number of GEMMs.
    const XI: usize;

    /// `G g Gᵀ` of one 3x3 kernel (row-major `g`), its first [`Self::XI`]
    /// values (of one kernel, or of [`LANES`] side by side).
    fn transform_kernel<N: Arith>(k: &[N; 9]) -> [N; 36];

    /// `V_ξ [c_in, tiles]`: `Bᵀ d B` of the patch under every tile of tile rows
    /// `trows` of one sample `a [c_in, h, w]`, `tw` tiles per row, into `v` at
    /// `out` (several samples' tiles can sit side by side).
    fn transform_patches<T: Float>(
        g: &Geom,
        a: &[T],
        trows: std::ops::Range<usize>,
        tw: usize,
        out: Columns,
        v: &mut [T],
    );

    /// `Aᵀ M A` of every tile of tile rows `trows` (+ bias) into one sample's
    /// output `b [c_out, ho, wo]`, dropping the pixels past its edge; `m` holds
    /// them where `m_at` says (as [`Self::transform_patches`] writes its `out`).
    ///
    /// # Safety
    ///
    /// `b` must point to `c_out·ho·wo` writable elements whose rows `m·trows.start
    /// .. m·trows.end` of every channel no one else accesses meanwhile.
    #[allow(clippy::too_many_arguments)]
    unsafe fn write_tiles<T: Float>(
        g: &Geom,
        m: &[T],
        m_at: Columns,
        trows: std::ops::Range<usize>,
        tw: usize,
        bias: Option<&[T]>,
        b: *mut T,
    );
}

/// F(4x4, 3x3) where the output is at least [`F4X4_MIN_SIDE`] pixels each way
/// and its transform positions, `36·⌈ho/4⌉·⌈wo/4⌉`, are at most 0.8 of F(2x2,
/// 3x3)'s `16·⌈ho/2⌉·⌈wo/2⌉` (its transforms cost more per position).
fn use_f4x4(g: &Geom) -> bool {
    let f4 = 36 * g.ho.div_ceil(4) * g.wo.div_ceil(4);
    let f2 = 16 * g.ho.div_ceil(2) * g.wo.div_ceil(2);
    g.ho.min(g.wo) >= F4X4_MIN_SIDE && 5 * f4 <= 4 * f2
}

/// The smallest output side F(4x4, 3x3) runs on: a task's GEMMs have one
/// sample's tiles as columns, and below 6x6 tiles (a 24x24 output) F(4x4)'s
/// 36 narrow GEMMs cost more than F(2x2)'s 16 wider ones (default model's
/// U-Net step, 2 cores, AVX-512: F(4x4) from 24 pixels up 0.49 s, from 48 up
/// 0.50 s, F(2x2) only 0.52 s).
const F4X4_MIN_SIDE: usize = 24;

/// `B = conv(A, K) (+ bias)` for a geometry where [`applies`] holds.
pub fn forward<T: Float>(g: &Geom, a: &[T], kmat: &[T], bias: Option<&[T]>) -> Vec<T> {
    run_kernels(g, a, Kernels::Own(kmat), bias)
}

/// [`forward`] of `g` with its kernels as `kernels` holds them, in the variant
/// [`use_f4x4`] picks.
fn run_kernels<T: Float>(g: &Geom, a: &[T], kernels: Kernels<'_, T>, bias: Option<&[T]>) -> Vec<T> {
    if use_f4x4(g) {
        run::<T, f4x4::F4x4>(g, a, kernels, bias)
    } else {
        run::<T, f2x2::F2x2>(g, a, kernels, bias)
    }
}

/// [`forward`] with the variant `V`.
fn run<T: Float, V: Variant>(
    g: &Geom,
    a: &[T],
    kernels: Kernels<'_, T>,
    bias: Option<&[T]>,
) -> Vec<T> {
    let len = g.n * g.b_len();
    if g.n == 0 || g.ho == 0 || g.wo == 0 {
        return vec![T::ZERO; len];
    }
    // Every pixel is written below (the tasks cover every tile row of every
    // sample, the tiles every pixel): no zeroing (7 MB of the U-Net's first
    // layers is half a millisecond of memset before the threads start).
    let mut b: Vec<T> = Vec::with_capacity(len);
    let u = transform_kernels::<T, V>(g, kernels);
    let (th, tw) = (g.ho.div_ceil(V::M), g.wo.div_ceil(V::M));
    // Tasks of at most BLOCK_ELEMS transformed values, one per thread at least
    // where the tiles allow, and no more: every task's GEMMs pack all of U (9.4
    // MB for 256 channels in F(4x4)), and tasks of a sample's 16 tiles (two per
    // thread) made the CycleGAN ngf 64 step 1.26 s against 1.12 s. Small samples
    // share a task (their tiles side by side).
    let tasks = budget_chunks(g, th, tw, V::XI, BLOCK_ELEMS);
    let parallel_gemm = tasks.len() < rayon::current_num_threads();
    let out = SharedMut::new(b.as_mut_ptr());
    let pad = needs_padding(g, V::M);
    tasks.par_iter().for_each_init(
        || (Vec::new(), Vec::new(), Vec::new()),
        |(v, m, padded): &mut (Vec<T>, Vec<T>, Vec<T>), chunk| {
            let tiles: usize = chunk.iter().map(|&(_, t0, t1)| (t1 - t0) * tw).sum();
            let (v_xi, m_xi) = (xi_stride(g.c_in * tiles), xi_stride(g.c_out * tiles));
            v.resize(V::XI * v_xi, T::ZERO);
            m.resize(V::XI * m_xi, T::ZERO);
            // Each segment's tiles from column col0 of the task's columns.
            let at = |xi_stride: usize, col0: usize| Columns {
                xi_stride,
                ch_stride: tiles,
                col0,
            };
            let mut col0 = 0;
            for &(i, t0, t1) in chunk {
                let a_i = &a[i * g.a_len()..(i + 1) * g.a_len()];
                gather_patches::<T, V>(g, a_i, t0..t1, tw, pad, padded, at(v_xi, col0), v);
                col0 += (t1 - t0) * tw;
            }
            for xi in 0..V::XI {
                let lhs = Mat {
                    ptr: u[xi * g.c_out * g.c_in..].as_ptr(),
                    rs: g.c_in,
                    cs: 1,
                };
                let rhs = Mat {
                    ptr: v[xi * v_xi..].as_ptr(),
                    rs: tiles,
                    cs: 1,
                };
                // SAFETY: m holds XI blocks of c_out x tiles (m_xi apart); u
                // holds XI blocks of c_out x c_in; v holds XI blocks of c_in x
                // tiles (v_xi apart).
                unsafe {
                    matmul(
                        g.c_out,
                        tiles,
                        g.c_in,
                        m[xi * m_xi..].as_mut_ptr(),
                        tiles,
                        false,
                        lhs,
                        rhs,
                        parallel_gemm,
                    )
                };
            }
            let mut col0 = 0;
            for &(i, t0, t1) in chunk {
                // SAFETY: `b` outlives the tasks, sample i starts at i·b_len, and
                // this task alone writes its output rows m·t0 .. m·t1 (the
                // chunks' segments of tile rows are disjoint).
                simd::dispatch_at_most(
                    ISA,
                    Tiles::<T, V> {
                        g,
                        m,
                        m_at: at(m_xi, col0),
                        trows: t0..t1,
                        tw,
                        bias,
                        b: out.get().wrapping_add(i * g.b_len()),
                        variant: PhantomData,
                    },
                );
                col0 += (t1 - t0) * tw;
            }
        },
    );
    // SAFETY: every element of the capacity was written (see above).
    unsafe { b.set_len(len) };
    b
}

/// Whether the patches of `g`'s tiles (side `m`) reach past its input: zero
/// padding, or a tile grid that overhangs the image. Their gather then takes a
/// zero-padded copy ([`padded_rows`]) instead of the per-pixel bounds checks.
fn needs_padding(g: &Geom, m: usize) -> bool {
    let (th, tw) = (g.ho.div_ceil(m), g.wo.div_ceil(m));
    g.padding > 0 || th * m + 2 > g.h || tw.next_multiple_of(LANES) * m + 2 > g.w
}

/// [`Variant::transform_patches`] of tile rows `trows` of one sample `a_i` into
/// `v` at `out`, at most at [`ISA`]: from `a_i` itself, or when `pad` from its
/// rows' zero-padded copy in `buf` ([`padded_rows`]).
#[allow(clippy::too_many_arguments)]
fn gather_patches<T: Float, V: Variant>(
    g: &Geom,
    a_i: &[T],
    trows: std::ops::Range<usize>,
    tw: usize,
    pad: bool,
    buf: &mut Vec<T>,
    out: Columns,
    v: &mut [T],
) {
    let (ga, a_i, trows) = if pad {
        let rows = trows.len();
        (padded_rows(g, a_i, trows, tw, V::M, buf), &buf[..], 0..rows)
    } else {
        (*g, a_i, trows)
    };
    simd::dispatch_at_most(
        ISA,
        Patches::<T, V> {
            g: &ga,
            a: a_i,
            trows,
            tw,
            out,
            v,
            variant: PhantomData,
        },
    );
}

/// The input rows under tile rows `trows` of one sample `a [c_in, h, w]`, with
/// its zero padding made explicit and the width rounded up to whole blocks of
/// [`LANES`] tiles, into `buf`; returns the geometry of that copy (no padding),
/// whose tile rows are `0 .. trows.len()`.
fn padded_rows<T: Float>(
    g: &Geom,
    a: &[T],
    trows: std::ops::Range<usize>,
    tw: usize,
    m: usize,
    buf: &mut Vec<T>,
) -> Geom {
    let rows = trows.len() * m + 2;
    let width = tw.next_multiple_of(LANES) * m + 2;
    let (p, y0) = (g.padding, trows.start * m);
    buf.clear();
    buf.resize(g.c_in * rows * width, T::ZERO);
    for ci in 0..g.c_in {
        let plane = &a[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        let dst = &mut buf[ci * rows * width..(ci + 1) * rows * width];
        for r in 0..rows {
            // Input row y0 + r - p, at column offset p.
            let Some(y) = (y0 + r).checked_sub(p).filter(|&y| y < g.h) else {
                continue;
            };
            let len = g.w.min(width - p);
            dst[r * width + p..r * width + p + len].copy_from_slice(&plane[y * g.w..y * g.w + len]);
        }
    }
    Geom {
        h: rows,
        w: width,
        padding: 0,
        ..*g
    }
}

/// [`Variant::transform_patches`] as a [`simd::Kernel`].
struct Patches<'a, T, V> {
    g: &'a Geom,
    a: &'a [T],
    trows: std::ops::Range<usize>,
    tw: usize,
    out: Columns,
    v: &'a mut [T],
    variant: PhantomData<V>,
}

impl<T: Float, V: Variant> simd::Kernel for Patches<'_, T, V> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        V::transform_patches(self.g, self.a, self.trows, self.tw, self.out, self.v)
    }
}

/// [`Variant::write_tiles`] as a [`simd::Kernel`]; `b` as it requires.
struct Tiles<'a, T, V> {
    g: &'a Geom,
    m: &'a [T],
    m_at: Columns,
    trows: std::ops::Range<usize>,
    tw: usize,
    bias: Option<&'a [T]>,
    b: *mut T,
    variant: PhantomData<V>,
}

impl<T: Float, V: Variant> simd::Kernel for Tiles<'_, T, V> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        // SAFETY: the creator of a Tiles upholds write_tiles' contract for `b`.
        unsafe {
            V::write_tiles(
                self.g, self.m, self.m_at, self.trows, self.tw, self.bias, self.b,
            )
        }
    }
}

/// Tiles transformed together (lane-wise array arithmetic that vectorises).
const LANES: usize = 8;

type Lanes<T> = [T; LANES];

#[inline(always)]
fn lanes<T: Float>(f: impl FnMut(usize) -> T) -> Lanes<T> {
    std::array::from_fn(f)
}

/// `dst.copy_from_slice(&src[..dst.len()])`, as one fixed-size vector copy when
/// `dst` has all [`LANES`] (a copy of a run-time length is a call to memcpy).
#[inline(always)]
fn copy_lanes<T: Float>(dst: &mut [T], src: &[T]) {
    if let (Ok(d), Some(s)) = (
        <&mut Lanes<T>>::try_from(&mut *dst),
        src.get(..LANES).and_then(|s| <&Lanes<T>>::try_from(s).ok()),
    ) {
        *d = *s;
    } else {
        let n = dst.len();
        dst.copy_from_slice(&src[..n]);
    }
}

/// The distance between the ξ blocks of a task's buffers of `elems` values
/// each: rounded up to whole cache lines of f32, and one line more, so that the
/// 16 or 36 blocks a transform reads or writes side by side do not fall into
/// one L1 set (as blocks a multiple of 4 KiB apart do: 128 channels of 64
/// tiles are 32 KiB).
fn xi_stride(elems: usize) -> usize {
    elems.next_multiple_of(16) + 16
}

/// [`chunks`] of `g`'s tiles (`th` rows of `tw`) of at most `elems` transformed
/// values each (`xi·(c_in + c_out)` per tile), and at least one chunk per thread
/// where the tiles allow.
pub(super) fn budget_chunks(
    g: &Geom,
    th: usize,
    tw: usize,
    xi: usize,
    elems: usize,
) -> Vec<Vec<(usize, usize, usize)>> {
    let max_tiles = (elems / (xi * (g.c_in + g.c_out)).max(1))
        .min((g.n * th * tw).div_ceil(rayon::current_num_threads()))
        .max(tw);
    chunks(g.n, th, tw, max_tiles)
}

/// Chunks of (sample, first tile row, end tile row) whose tiles together are at
/// most `max_tiles` (at least one tile row each), the tiles of several small
/// samples in one chunk.
fn chunks(n: usize, th: usize, tw: usize, max_tiles: usize) -> Vec<Vec<(usize, usize, usize)>> {
    let rows = (max_tiles / tw.max(1)).clamp(1, th.max(1));
    let mut out: Vec<Vec<(usize, usize, usize)>> = Vec::new();
    let mut tiles = 0;
    for i in 0..n {
        for t0 in (0..th).step_by(rows) {
            let t1 = (t0 + rows).min(th);
            let seg = (t1 - t0) * tw;
            match out.last_mut() {
                Some(chunk) if tiles + seg <= max_tiles => {
                    chunk.push((i, t0, t1));
                    tiles += seg;
                }
                _ => {
                    out.push(vec![(i, t0, t1)]);
                    tiles = seg;
                }
            }
        }
    }
    out
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// `B = conv(A, K) + bias` written out (zero padding), in f64.
    fn naive(g: &Geom, a: &[f64], k: &[f64], bias: &[f64]) -> Vec<f64> {
        let mut b = vec![0.0; g.n * g.b_len()];
        for i in 0..g.n {
            for co in 0..g.c_out {
                for oy in 0..g.ho {
                    for ox in 0..g.wo {
                        let mut s = bias[co];
                        for ci in 0..g.c_in {
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let y = (oy + ky) as isize - g.padding as isize;
                                    let x = (ox + kx) as isize - g.padding as isize;
                                    if y < 0 || x < 0 || y >= g.h as isize || x >= g.w as isize {
                                        continue;
                                    }
                                    s += k[((co * g.c_in + ci) * 3 + ky) * 3 + kx]
                                        * a[((i * g.c_in + ci) * g.h + y as usize) * g.w
                                            + x as usize];
                                }
                            }
                        }
                        b[((i * g.c_out + co) * g.ho + oy) * g.wo + ox] = s;
                    }
                }
            }
        }
        b
    }

    /// The largest absolute difference between `got` (f32 or f64) and `want`.
    pub(super) fn max_diff<T: Float>(got: &[T], want: &[f64]) -> f64 {
        got.iter()
            .zip(want)
            .fold(0f64, |m, (x, y)| m.max((x.to_f64() - y).abs()))
    }

    /// A deterministic pseudo-random vector in [-1, 1).
    pub(super) fn values(n: usize, seed: u64) -> Vec<f64> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 11) as f64 / (1u64 << 52) as f64 - 1.0
            })
            .collect()
    }

    pub(super) fn geom(
        n: usize,
        c_in: usize,
        c_out: usize,
        h: usize,
        w: usize,
        padding: usize,
    ) -> Geom {
        Geom {
            n,
            c_in,
            h,
            w,
            c_out,
            ho: h + 2 * padding - 2,
            wo: w + 2 * padding - 2,
            kh: 3,
            kw: 3,
            stride: 1,
            padding,
            dilation: 1,
        }
    }

    /// (n, c_in, c_out, h, w, padding) of the tests against the convolution
    /// written out: sizes that are and are not multiples of the tiles, blocks of
    /// full and ragged lanes (over 8 tiles per row), paddings 0 to 2, several
    /// samples.
    pub(super) const SHAPES: [(usize, usize, usize, usize, usize, usize); 6] = [
        (2, 3, 5, 7, 9, 1),
        (1, 4, 2, 6, 6, 0),
        (2, 2, 3, 37, 35, 1),
        (1, 3, 4, 26, 45, 2),
        (3, 2, 2, 13, 4, 1),
        // No padding, F(2x2)'s tiles exactly on the input: no padded copy.
        (2, 3, 4, 10, 18, 0),
    ];

    /// Both variants against the convolution written out ([`SHAPES`]), in f64 (to
    /// rounding) and f32 (to 1e-5 of the largest output).
    #[test]
    fn both_variants_match_the_convolution_written_out() {
        for (s, &(n, c_in, c_out, h, w, p)) in SHAPES.iter().enumerate() {
            let g = geom(n, c_in, c_out, h, w, p);
            let a = values(n * g.a_len(), 3 * s as u64 + 1);
            let k = values(c_out * c_in * 9, 3 * s as u64 + 2);
            let bias = values(c_out, 3 * s as u64 + 3);
            let want = naive(&g, &a, &k, &bias);
            let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
            for (name, got) in [
                (
                    "F(2x2)",
                    run::<f64, f2x2::F2x2>(&g, &a, Kernels::Own(&k), Some(&bias)),
                ),
                (
                    "F(4x4)",
                    run::<f64, f4x4::F4x4>(&g, &a, Kernels::Own(&k), Some(&bias)),
                ),
            ] {
                let d = max_diff(&got, &want);
                assert!(d <= 1e-12 * scale, "{name} {g:?}: f64 differs by {d:e}");
            }
            let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
            let (a32, k32, b32) = (f(&a), f(&k), f(&bias));
            for (name, got) in [
                (
                    "F(2x2)",
                    run::<f32, f2x2::F2x2>(&g, &a32, Kernels::Own(&k32), Some(&b32)),
                ),
                (
                    "F(4x4)",
                    run::<f32, f4x4::F4x4>(&g, &a32, Kernels::Own(&k32), Some(&b32)),
                ),
            ] {
                let d = max_diff(&got, &want);
                assert!(d <= 1e-5 * scale, "{name} {g:?}: f32 differs by {d:e}");
            }
        }
    }

    #[test]
    fn f4x4_runs_on_outputs_from_24_pixels_where_it_saves_positions() {
        assert!(!use_f4x4(&geom(1, 16, 16, 6, 6, 1)));
        assert!(!use_f4x4(&geom(1, 16, 16, 12, 12, 1)));
        assert!(!use_f4x4(&geom(1, 16, 16, 23, 96, 1)));
        assert!(use_f4x4(&geom(1, 16, 16, 24, 24, 1)));
        assert!(use_f4x4(&geom(1, 16, 16, 96, 96, 1)));
        // 25 pixels: 7 tiles of 4 (3 outputs wasted) against 13 of 2; still fewer
        // positions (1764 against 2704).
        assert!(use_f4x4(&geom(1, 16, 16, 25, 25, 1)));
    }

    #[test]
    fn chunks_cover_every_tile_row_once_within_the_limit() {
        for (n, th, tw, max) in [
            (4, 8, 8, 256),
            (1, 50, 7, 20),
            (3, 2, 40, 10),
            (5, 3, 3, 1000),
        ] {
            let b = chunks(n, th, tw, max);
            let mut seen = vec![0; n * th];
            for batch in &b {
                let tiles: usize = batch.iter().map(|&(_, t0, t1)| (t1 - t0) * tw).sum();
                assert!(tiles <= max.max(tw), "{tiles} > {max}");
                for &(i, t0, t1) in batch {
                    for t in t0..t1 {
                        seen[i * th + t] += 1;
                    }
                }
            }
            assert!(
                seen.iter().all(|&c| c == 1),
                "{n} {th} {tw} {max}: {seen:?}"
            );
        }
        // Small samples share a batch.
        assert_eq!(chunks(4, 8, 8, 256).len(), 1);
    }
}
