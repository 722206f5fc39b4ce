//! F(4x4, 3x3): 4x4 output tiles from 6x6 patches, 36 transform positions
//! (Lavin & Gray's F(4, 3) with the points 0, ±1, ±2):
//!
//! ```text
//! Bᵀ = [ 4  0 -5  0  1  0 ]   G = [  1/4     0     0  ]   Aᵀ = [ 1  1  1  1  1  0 ]
//!      [ 0 -4 -4  1  1  0 ]       [ -1/6  -1/6  -1/6  ]        [ 0  1 -1  2 -2  0 ]
//!      [ 0  4 -4 -1  1  0 ]       [ -1/6   1/6  -1/6  ]        [ 0  1  1  4  4  0 ]
//!      [ 0 -2 -1  2  1  0 ]       [ 1/24  1/12   1/6  ]        [ 0  1 -1  8 -8  1 ]
//!      [ 0  2 -1 -2  1  0 ]       [ 1/24 -1/12   1/6  ]
//!      [ 0  4  0 -5  0  1 ]       [    0     0     1  ]
//! ```

use super::kernel_transform::Arith;
use super::{copy_lanes, Columns, Lanes, Variant, LANES};
use crate::nn::conv_cpu::geom::{Float, Geom};

pub(super) struct F4x4;

// The transforms are written as plain loops over fixed-size arrays: nested
// `std::array::from_fn` closures over arrays this large are not all inlined
// into the vectorised caller (`simd::dispatch`), and what is not inlined runs
// at the baseline level.

/// `Bᵀ d` of six values, lane-wise.
#[inline(always)]
fn bt<T: Float>(d: &[Lanes<T>; 6]) -> [Lanes<T>; 6] {
    let (two, four, five) = (T::from_f64(2.0), T::from_f64(4.0), T::from_f64(5.0));
    let mut o = [[T::ZERO; LANES]; 6];
    for j in 0..LANES {
        let (d0, d1, d2, d3, d4, d5) = (d[0][j], d[1][j], d[2][j], d[3][j], d[4][j], d[5][j]);
        // Shared terms: d4 - 4 d2, d3 - 4 d1, d4 - d2, 2 (d3 - d1).
        let p = d4 - four * d2;
        let q = d3 - four * d1;
        let r = d4 - d2;
        let s = two * (d3 - d1);
        o[0][j] = four * d0 - five * d2 + d4;
        o[1][j] = p + q;
        o[2][j] = p - q;
        o[3][j] = r + s;
        o[4][j] = r - s;
        o[5][j] = four * d1 - five * d3 + d5;
    }
    o
}

/// `Aᵀ m` of six values, lane-wise.
#[inline(always)]
fn at<T: Float>(m: &[Lanes<T>; 6]) -> [Lanes<T>; 4] {
    let (two, four, eight) = (T::from_f64(2.0), T::from_f64(4.0), T::from_f64(8.0));
    let mut o = [[T::ZERO; LANES]; 4];
    for j in 0..LANES {
        let a = m[1][j] + m[2][j];
        let b = m[1][j] - m[2][j];
        let c = m[3][j] + m[4][j];
        let d = m[3][j] - m[4][j];
        o[0][j] = m[0][j] + a + c;
        o[1][j] = b + two * d;
        o[2][j] = a + four * c;
        o[3][j] = b + eight * d + m[5][j];
    }
    o
}

impl Variant for F4x4 {
    const M: usize = 4;
    const XI: usize = 36;

    #[inline(always)]
    fn transform_kernel<N: Arith>(k: &[N; 9]) -> [N; 36] {
        // G's rows applied to three values (`sixth` is -1/6).
        let g = |k0: N, k1: N, k2: N| -> [N; 6] {
            let (sixth, c24, c12) = (
                N::splat(-1.0 / 6.0),
                N::splat(1.0 / 24.0),
                N::splat(1.0 / 12.0),
            );
            [
                k0 * N::splat(0.25),
                (k0 + k1 + k2) * sixth,
                (k0 - k1 + k2) * sixth,
                k0 * c24 + k1 * c12 - k2 * sixth,
                k0 * c24 - k1 * c12 - k2 * sixth,
                k2,
            ]
        };
        // G k: 6x3, a column at a time.
        let cols: [[N; 6]; 3] = std::array::from_fn(|j| g(k[j], k[3 + j], k[6 + j]));
        // (G k) Gᵀ: 6x6, a row at a time.
        let mut u = [N::splat(0.0); 36];
        for r in 0..6 {
            let row = g(cols[0][r], cols[1][r], cols[2][r]);
            u[r * 6..r * 6 + 6].copy_from_slice(&row);
        }
        u
    }

    #[inline(always)]
    fn transform_patches<T: Float>(
        g: &Geom,
        a: &[T],
        trows: std::ops::Range<usize>,
        tw: usize,
        out: Columns,
        v: &mut [T],
    ) {
        let stride_xi = out.xi_stride;
        let (h, w, p) = (g.h as isize, g.w as isize, g.padding as isize);
        for ci in 0..g.c_in {
            let plane = &a[ci * g.h * g.w..(ci + 1) * g.h * g.w];
            for (r, ty) in trows.clone().enumerate() {
                let y0 = 4 * ty as isize - p;
                for tx0 in (0..tw).step_by(LANES) {
                    let nl = (tw - tx0).min(LANES);
                    let x0 = 4 * tx0 as isize - p;
                    // d[dy][dx][j]: the patch of tile tx0 + j.
                    let mut d = [[[T::ZERO; LANES]; 6]; 6];
                    let inside_x = x0 >= 0 && x0 + 4 * nl as isize + 2 <= w;
                    // A run of 4·LANES + 2 pixels inside the row (a ragged last
                    // block reads past its tiles and keeps nl lanes): one load per
                    // row, split into the six strided lanes in registers.
                    let full = x0 >= 0 && x0 + 4 * LANES as isize + 2 <= w;
                    for (dy, drow) in d.iter_mut().enumerate() {
                        let y = y0 + dy as isize;
                        if y < 0 || y >= h {
                            continue;
                        }
                        let line = &plane[y as usize * g.w..(y as usize + 1) * g.w];
                        if full {
                            let run: &[T; 4 * LANES + 2] = line
                                [x0 as usize..x0 as usize + 4 * LANES + 2]
                                .try_into()
                                .expect("a slice of 4·LANES + 2");
                            for (dx, lane) in drow.iter_mut().enumerate() {
                                for (j, l) in lane.iter_mut().enumerate() {
                                    *l = run[4 * j + dx];
                                }
                            }
                            continue;
                        }
                        for (dx, lane) in drow.iter_mut().enumerate() {
                            if inside_x {
                                let src = &line[(x0 as usize + dx)..];
                                for (l, s) in lane[..nl].iter_mut().zip(src.iter().step_by(4)) {
                                    *l = *s;
                                }
                            } else {
                                for (j, l) in lane[..nl].iter_mut().enumerate() {
                                    let x = x0 + (4 * j + dx) as isize;
                                    if x >= 0 && x < w {
                                        *l = line[x as usize];
                                    }
                                }
                            }
                        }
                    }
                    // Bᵀ d: for each column dx, its six rows; e[row][dx].
                    let mut e = [[[T::ZERO; LANES]; 6]; 6];
                    for dx in 0..6 {
                        let col = [d[0][dx], d[1][dx], d[2][dx], d[3][dx], d[4][dx], d[5][dx]];
                        let t = bt(&col);
                        for (row, v) in t.iter().enumerate() {
                            e[row][dx] = *v;
                        }
                    }
                    let base = ci * out.ch_stride + out.col0 + r * tw + tx0;
                    for (row, er) in e.iter().enumerate() {
                        // (Bᵀ d) B: the row's six columns.
                        let vals = bt(er);
                        for (col, val) in vals.iter().enumerate() {
                            let at = (row * 6 + col) * stride_xi + base;
                            copy_lanes(&mut v[at..at + nl], val);
                        }
                    }
                }
            }
        }
    }

    #[inline(always)]
    unsafe fn write_tiles<T: Float>(
        g: &Geom,
        m: &[T],
        m_at: Columns,
        trows: std::ops::Range<usize>,
        tw: usize,
        bias: Option<&[T]>,
        b: *mut T,
    ) {
        let stride_xi = m_at.xi_stride;
        for co in 0..g.c_out {
            let beta = bias.map_or(T::ZERO, |b| b[co]);
            let plane = co * g.ho * g.wo;
            for (r, ty) in trows.clone().enumerate() {
                for tx0 in (0..tw).step_by(LANES) {
                    let nl = (tw - tx0).min(LANES);
                    let base = co * m_at.ch_stride + m_at.col0 + r * tw + tx0;
                    // e[col][row]: the products of the tiles' transform positions.
                    let mut e = [[[T::ZERO; LANES]; 6]; 6];
                    for (col, ec) in e.iter_mut().enumerate() {
                        for (row, l) in ec.iter_mut().enumerate() {
                            let at = (row * 6 + col) * stride_xi + base;
                            copy_lanes(&mut l[..nl], &m[at..at + nl]);
                        }
                    }
                    // Aᵀ e: for each column, its four rows; s[dy][col].
                    let mut s = [[[T::ZERO; LANES]; 6]; 4];
                    for (col, ec) in e.iter().enumerate() {
                        let t = at(ec);
                        for (dy, v) in t.iter().enumerate() {
                            s[dy][col] = *v;
                        }
                    }
                    for (dy, sr) in s.iter().enumerate() {
                        let y = 4 * ty + dy;
                        if y >= g.ho {
                            continue;
                        }
                        // (Aᵀ e) A: the row's four columns, plus the bias.
                        let mut out = at(sr);
                        for o in out.iter_mut() {
                            for v in o.iter_mut() {
                                *v += beta;
                            }
                        }
                        let row = plane + y * g.wo;
                        if nl == LANES && 4 * (tx0 + LANES) <= g.wo {
                            // A full block: the four columns interleaved in
                            // registers, one contiguous store of 4·LANES pixels.
                            let mut run = [T::ZERO; 4 * LANES];
                            for (k, v) in run.iter_mut().enumerate() {
                                *v = out[k % 4][k / 4];
                            }
                            // SAFETY: pixels 4·tx0 .. 4·tx0 + 4·LANES of row y are
                            // inside channel co's plane (checked above) and this
                            // task's (see the function's contract).
                            unsafe {
                                std::ptr::copy_nonoverlapping(
                                    run.as_ptr(),
                                    b.add(row + 4 * tx0),
                                    4 * LANES,
                                )
                            };
                            continue;
                        }
                        for j in 0..nl {
                            for (dx, o) in out.iter().enumerate() {
                                let x = 4 * (tx0 + j) + dx;
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
}
