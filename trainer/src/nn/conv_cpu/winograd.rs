//! Winograd F(2x2, 3x3) for 3x3, stride-1, undilated convolutions.
//!
//! Each 2x2 output tile is computed from the 4x4 input patch under it with 16
//! products instead of 36 (Lavin & Gray, "Fast Algorithms for Convolutional
//! Neural Networks", 2016): with `U = G g Gᵀ` for every 3x3 kernel `g` and
//! `V = Bᵀ d B` for every 4x4 patch `d`, the tile is `Aᵀ [Σ_ci U ⊙ V] A`, and the
//! sum over input channels is, for each of the 16 positions ξ of the 4x4
//! transform, one GEMM `M_ξ (c_out x tiles) = U_ξ (c_out x c_in) · V_ξ (c_in x tiles)`.
//! That is 2.25x fewer multiply-adds than im2col + GEMM, and the gathered data
//! (the patches' transforms) is 4x the input instead of 9x.
//!
//! Tasks take a block of tile rows of one sample (the transforms of a block take
//! a few MiB), transform its patches, run the 16 GEMMs and write its outputs;
//! outputs outside the image (odd sizes) are dropped, inputs outside it are the
//! zero padding. The same routine computes the input gradient of a stride-1
//! convolution: a convolution of the output gradient with the kernels flipped and
//! their channel axes swapped, with padding `2 - p`.

use rayon::prelude::*;

use super::gemm::{matmul, Mat};
use super::geom::{Float, Geom, SharedMut};
use crate::nn::simd;

/// Channels below which the transforms cost more than the products save.
const MIN_CHANNELS: usize = 16;
/// Elements of a task's transformed patches and products (`16·(c_in + c_out)`
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
/// from `B` to `A`, padding `2 - p`. Its kernel matrix is [`flip_kernels`].
pub fn transposed(g: &Geom) -> Geom {
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

/// `K'[ci, co, ky, kx] = K[co, ci, 2 - ky, 2 - kx]` for `kmat [c_out, c_in, 3, 3]`.
pub fn flip_kernels<T: Float>(kmat: &[T], c_out: usize, c_in: usize) -> Vec<T> {
    let mut out = vec![T::ZERO; kmat.len()];
    for co in 0..c_out {
        for ci in 0..c_in {
            let src = &kmat[(co * c_in + ci) * 9..(co * c_in + ci + 1) * 9];
            let dst = &mut out[(ci * c_out + co) * 9..(ci * c_out + co + 1) * 9];
            for (d, s) in dst.iter_mut().zip(src.iter().rev()) {
                *d = *s;
            }
        }
    }
    out
}

/// `U_ξ [c_out, c_in]` for ξ = 0..16: `G g Gᵀ` of every kernel.
fn transform_kernels<T: Float>(g: &Geom, kmat: &[T]) -> Vec<T> {
    let (c_in, c_out) = (g.c_in, g.c_out);
    let plane = c_out * c_in;
    let mut u = vec![T::ZERO; 16 * plane];
    let half = T::from_f64(0.5);
    for (pair, k) in kmat.chunks_exact(9).enumerate() {
        // G k: 4x3.
        let mut gk = [[T::ZERO; 3]; 4];
        for j in 0..3 {
            let (k0, k1, k2) = (k[j], k[3 + j], k[6 + j]);
            gk[0][j] = k0;
            gk[1][j] = (k0 + k1 + k2) * half;
            gk[2][j] = (k0 - k1 + k2) * half;
            gk[3][j] = k2;
        }
        // (G k) Gᵀ: 4x4.
        for (r, row) in gk.iter().enumerate() {
            let (a, b, c) = (row[0], row[1], row[2]);
            let vals = [a, (a + b + c) * half, (a - b + c) * half, c];
            for (col, v) in vals.into_iter().enumerate() {
                u[(r * 4 + col) * plane + pair] = v;
            }
        }
    }
    u
}

/// `B = conv(A, K) (+ bias)` for a geometry where [`applies`] holds.
pub fn forward<T: Float>(g: &Geom, a: &[T], kmat: &[T], bias: Option<&[T]>) -> Vec<T> {
    let mut b = vec![T::ZERO; g.n * g.b_len()];
    if g.n == 0 || g.ho == 0 || g.wo == 0 {
        return b;
    }
    let u = transform_kernels(g, kmat);
    let tw = g.wo.div_ceil(2);
    let tasks = tile_tasks(g, g.c_in + g.c_out);
    let parallel_gemm = tasks.len() < rayon::current_num_threads();
    let out = SharedMut::new(b.as_mut_ptr());
    tasks.par_iter().for_each_init(
        || (Vec::new(), Vec::new()),
        |(v, m): &mut (Vec<T>, Vec<T>), &(i, t0, t1)| {
            let tiles = (t1 - t0) * tw;
            v.resize(16 * g.c_in * tiles, T::ZERO);
            m.resize(16 * g.c_out * tiles, T::ZERO);
            let a_i = &a[i * g.a_len()..(i + 1) * g.a_len()];
            simd::dispatch(Patches {
                g,
                a: a_i,
                trows: t0..t1,
                tw,
                v,
            });
            for xi in 0..16 {
                let lhs = Mat {
                    ptr: u[xi * g.c_out * g.c_in..].as_ptr(),
                    rs: g.c_in,
                    cs: 1,
                };
                let rhs = Mat {
                    ptr: v[xi * g.c_in * tiles..].as_ptr(),
                    rs: tiles,
                    cs: 1,
                };
                // SAFETY: m holds 16 blocks of c_out x tiles; u holds 16 blocks
                // of c_out x c_in; v holds 16 blocks of c_in x tiles.
                unsafe {
                    matmul(
                        g.c_out,
                        tiles,
                        g.c_in,
                        m[xi * g.c_out * tiles..].as_mut_ptr(),
                        tiles,
                        false,
                        lhs,
                        rhs,
                        parallel_gemm,
                    )
                };
            }
            let b_i = out.get().wrapping_add(i * g.b_len());
            // SAFETY: `b` outlives the tasks, sample i starts at i·b_len, and
            // this task alone writes its output rows 2·t0 .. 2·t1 (blocks of tile
            // rows are disjoint).
            simd::dispatch(Tiles {
                g,
                m,
                trows: t0..t1,
                tw,
                bias,
                b: b_i,
            });
        },
    );
    b
}

/// [`transform_patches`] as a [`simd::Kernel`].
struct Patches<'a, T> {
    g: &'a Geom,
    a: &'a [T],
    trows: std::ops::Range<usize>,
    tw: usize,
    v: &'a mut [T],
}

impl<T: Float> simd::Kernel for Patches<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        transform_patches(self.g, self.a, self.trows, self.tw, self.v)
    }
}

/// [`write_tiles`] as a [`simd::Kernel`]; `b` as [`write_tiles`] requires.
struct Tiles<'a, T> {
    g: &'a Geom,
    m: &'a [T],
    trows: std::ops::Range<usize>,
    tw: usize,
    bias: Option<&'a [T]>,
    b: *mut T,
}

impl<T: Float> simd::Kernel for Tiles<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        // SAFETY: the creator of a Tiles upholds write_tiles' contract for `b`.
        unsafe { write_tiles(self.g, self.m, self.trows, self.tw, self.bias, self.b) }
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

/// `V_ξ [c_in, tiles]`: `Bᵀ d B` of the 4x4 patch under every 2x2 output tile
/// of tile rows `trows` of one sample `a [c_in, h, w]`, [`LANES`] tiles of a
/// row at a time.
#[inline(always)]
fn transform_patches<T: Float>(
    g: &Geom,
    a: &[T],
    trows: std::ops::Range<usize>,
    tw: usize,
    v: &mut [T],
) {
    let tiles = trows.len() * tw;
    let stride_xi = g.c_in * tiles;
    let (h, w, p) = (g.h as isize, g.w as isize, g.padding as isize);
    for ci in 0..g.c_in {
        let plane = &a[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for (r, ty) in trows.clone().enumerate() {
            let y0 = 2 * ty as isize - p;
            for tx0 in (0..tw).step_by(LANES) {
                let nl = (tw - tx0).min(LANES);
                let x0 = 2 * tx0 as isize - p;
                // d[dy][dx][j]: the patch of tile tx0 + j.
                let mut d = [[[T::ZERO; LANES]; 4]; 4];
                let inside_x = x0 >= 0 && x0 + 2 * nl as isize + 2 <= w;
                // A full block inside the image: one contiguous run of 2·LANES + 2
                // pixels per row, split into the four strided lanes in registers.
                let full = inside_x && nl == LANES;
                for (dy, drow) in d.iter_mut().enumerate() {
                    let y = y0 + dy as isize;
                    if y < 0 || y >= h {
                        continue;
                    }
                    let line = &plane[y as usize * g.w..(y as usize + 1) * g.w];
                    if full {
                        let run: &[T; 2 * LANES + 2] = line
                            [x0 as usize..x0 as usize + 2 * LANES + 2]
                            .try_into()
                            .expect("a slice of 2·LANES + 2");
                        for (dx, lane) in drow.iter_mut().enumerate() {
                            *lane = lanes(|j| run[2 * j + dx]);
                        }
                        continue;
                    }
                    for (dx, lane) in drow.iter_mut().enumerate() {
                        if inside_x {
                            let src = &line[(x0 as usize + dx)..];
                            for (l, s) in lane[..nl].iter_mut().zip(src.iter().step_by(2)) {
                                *l = *s;
                            }
                        } else {
                            for (j, l) in lane[..nl].iter_mut().enumerate() {
                                let x = x0 + (2 * j + dx) as isize;
                                if x >= 0 && x < w {
                                    *l = line[x as usize];
                                }
                            }
                        }
                    }
                }
                // Bᵀ d: rows d0 - d2, d1 + d2, d2 - d1, d1 - d3 (for each dx).
                let e: [[Lanes<T>; 4]; 4] = [
                    std::array::from_fn(|c| lanes(|j| d[0][c][j] - d[2][c][j])),
                    std::array::from_fn(|c| lanes(|j| d[1][c][j] + d[2][c][j])),
                    std::array::from_fn(|c| lanes(|j| d[2][c][j] - d[1][c][j])),
                    std::array::from_fn(|c| lanes(|j| d[1][c][j] - d[3][c][j])),
                ];
                let base = ci * tiles + r * tw + tx0;
                for (row, er) in e.iter().enumerate() {
                    // (Bᵀ d) B: columns e0 - e2, e1 + e2, e2 - e1, e1 - e3.
                    let cols: [Lanes<T>; 4] = [
                        lanes(|j| er[0][j] - er[2][j]),
                        lanes(|j| er[1][j] + er[2][j]),
                        lanes(|j| er[2][j] - er[1][j]),
                        lanes(|j| er[1][j] - er[3][j]),
                    ];
                    for (col, vals) in cols.iter().enumerate() {
                        let at = (row * 4 + col) * stride_xi + base;
                        copy_lanes(&mut v[at..at + nl], vals);
                    }
                }
            }
        }
    }
}

/// `Aᵀ M A` of every tile of tile rows `trows` (+ bias) into one sample's
/// output `b [c_out, ho, wo]`, dropping the pixels past its edge.
///
/// # Safety
///
/// `b` must point to `c_out·ho·wo` writable elements whose rows `2·trows.start ..
/// 2·trows.end` of every channel no one else accesses meanwhile.
#[inline(always)]
unsafe fn write_tiles<T: Float>(
    g: &Geom,
    m: &[T],
    trows: std::ops::Range<usize>,
    tw: usize,
    bias: Option<&[T]>,
    b: *mut T,
) {
    let tiles = trows.len() * tw;
    let stride_xi = g.c_out * tiles;
    for co in 0..g.c_out {
        let beta = bias.map_or(T::ZERO, |b| b[co]);
        let plane = co * g.ho * g.wo;
        for (r, ty) in trows.clone().enumerate() {
            for tx0 in (0..tw).step_by(LANES) {
                let nl = (tw - tx0).min(LANES);
                let base = co * tiles + r * tw + tx0;
                let e: [[Lanes<T>; 4]; 4] = std::array::from_fn(|row| {
                    std::array::from_fn(|col| {
                        let at = (row * 4 + col) * stride_xi + base;
                        let mut l = [T::ZERO; LANES];
                        copy_lanes(&mut l[..nl], &m[at..at + nl]);
                        l
                    })
                });
                // Aᵀ e: rows e0 + e1 + e2, e1 - e2 - e3 (for each column).
                let s: [[Lanes<T>; 4]; 2] = [
                    std::array::from_fn(|c| lanes(|j| e[0][c][j] + e[1][c][j] + e[2][c][j])),
                    std::array::from_fn(|c| lanes(|j| e[1][c][j] - e[2][c][j] - e[3][c][j])),
                ];
                for (dy, sr) in s.iter().enumerate() {
                    let y = 2 * ty + dy;
                    if y >= g.ho {
                        continue;
                    }
                    // (Aᵀ e) A: columns s0 + s1 + s2, s1 - s2 - s3.
                    let out: [Lanes<T>; 2] = [
                        lanes(|j| sr[0][j] + sr[1][j] + sr[2][j] + beta),
                        lanes(|j| sr[1][j] - sr[2][j] - sr[3][j] + beta),
                    ];
                    let row = plane + y * g.wo;
                    if nl == LANES && 2 * (tx0 + LANES) <= g.wo {
                        // A full block: the two columns interleaved in registers,
                        // one contiguous store of 2·LANES pixels.
                        let run: [T; 2 * LANES] = std::array::from_fn(|k| out[k % 2][k / 2]);
                        // SAFETY: pixels 2·tx0 .. 2·tx0 + 2·LANES of row y are
                        // inside channel co's plane (checked above) and this
                        // task's (see the function's contract).
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                run.as_ptr(),
                                b.add(row + 2 * tx0),
                                2 * LANES,
                            )
                        };
                        continue;
                    }
                    for j in 0..nl {
                        for (dx, o) in out.iter().enumerate() {
                            let x = 2 * (tx0 + j) + dx;
                            if x < g.wo {
                                // SAFETY: inside channel co's plane, in row y of
                                // this task's rows (see the function's contract).
                                unsafe { *b.add(row + x) = o[j] };
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Tasks of tile rows: (sample, first tile row, end tile row), blocks of at most
/// [`BLOCK_ELEMS`] transformed elements, at least two tasks per thread where the
/// image allows.
fn tile_tasks(g: &Geom, channels: usize) -> Vec<(usize, usize, usize)> {
    let (th, tw) = (g.ho.div_ceil(2), g.wo.div_ceil(2));
    let threads = rayon::current_num_threads();
    let rows = (BLOCK_ELEMS / (16 * channels * tw).max(1))
        .clamp(1, th.max(1))
        .min((g.n * th).div_ceil(2 * threads).max(1));
    (0..g.n)
        .flat_map(|i| {
            (0..th)
                .step_by(rows)
                .map(move |t0| (i, t0, (t0 + rows).min(th)))
        })
        .collect()
}
