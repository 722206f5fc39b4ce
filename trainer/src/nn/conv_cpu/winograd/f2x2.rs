//! F(2x2, 3x3): 2x2 output tiles from 4x4 patches, 16 transform positions
//! (`Bᵀ`, `G`, `Aᵀ` of Lavin & Gray's F(2, 3) with the points 0, ±1).

use super::kernel_transform::Arith;
use super::{copy_lanes, lanes, Columns, Lanes, Variant, LANES};
use crate::nn::conv_cpu::geom::{Float, Geom};

pub(super) struct F2x2;

impl Variant for F2x2 {
    const M: usize = 2;
    const XI: usize = 16;

    #[inline(always)]
    fn transform_kernel<N: Arith>(k: &[N; 9]) -> [N; 36] {
        let (zero, half) = (N::splat(0.0), N::splat(0.5));
        // G k: 4x3.
        let mut gk = [[zero; 3]; 4];
        for j in 0..3 {
            let (k0, k1, k2) = (k[j], k[3 + j], k[6 + j]);
            gk[0][j] = k0;
            gk[1][j] = (k0 + k1 + k2) * half;
            gk[2][j] = (k0 - k1 + k2) * half;
            gk[3][j] = k2;
        }
        // (G k) Gᵀ: 4x4.
        let mut u = [zero; 36];
        for (r, row) in gk.iter().enumerate() {
            let (a, b, c) = (row[0], row[1], row[2]);
            let vals = [a, (a + b + c) * half, (a - b + c) * half, c];
            for (col, v) in vals.into_iter().enumerate() {
                u[r * 4 + col] = v;
            }
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
                let y0 = 2 * ty as isize - p;
                for tx0 in (0..tw).step_by(LANES) {
                    let nl = (tw - tx0).min(LANES);
                    let x0 = 2 * tx0 as isize - p;
                    // d[dy][dx][j]: the patch of tile tx0 + j.
                    let mut d = [[[T::ZERO; LANES]; 4]; 4];
                    let inside_x = x0 >= 0 && x0 + 2 * nl as isize + 2 <= w;
                    // A run of 2·LANES + 2 pixels inside the row (a ragged last
                    // block reads past its tiles and keeps nl lanes): one load per
                    // row, split into the four strided lanes in registers.
                    let full = x0 >= 0 && x0 + 2 * LANES as isize + 2 <= w;
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
                    let base = ci * out.ch_stride + out.col0 + r * tw + tx0;
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
}
