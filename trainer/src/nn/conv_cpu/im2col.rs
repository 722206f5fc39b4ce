//! The im2col + GEMM convolutions: [`forward`] `B_n = K · im2col(A_n)`, [`data_grad`]
//! `A_n = col2im(Kᵀ · B_n)`, [`weight_grad`] `K = Σ_n B_n · im2col(A_n)ᵀ`.
//!
//! `im2col` is cache-blocked: each task gathers the columns of a band of output
//! rows (a few hundred KiB; or of several whole samples when they are small)
//! into a buffer of its own, multiplies it with one GEMM and reuses the buffer for
//! its next band, so no full-size column matrix is ever allocated. Tasks (bands, or
//! sample x channel group for `col2im`, whose bands overlap) run on rayon's pool
//! with single-threaded GEMMs; when there are fewer tasks than threads the GEMM
//! itself runs in parallel. The weight gradient gives each thread a share of the
//! bands and its own accumulator. 1x1 convolutions with stride 1 and no padding
//! skip `im2col` and read the input.

use std::ops::Range;

use rayon::prelude::*;

use super::gemm::{matmul, Mat};
use super::geom::{sum_shares, Float, Geom, Plan, SharedMut, BAND_ELEMS};

/// The same for the weight gradient, whose GEMM reduces over the band (a longer
/// band amortises reading and writing the accumulator).
const WEIGHT_BAND_ELEMS: usize = 512 * 1024;
/// The fewest columns a forward or input-gradient GEMM takes where the output
/// allows (fewer make the kernel matrix's packing dominate).
const MIN_COLS: usize = 128;
/// The fewest columns (the reduction) of a weight-gradient GEMM: each reads and
/// writes the whole `c_out x c_in·kh·kw` accumulator.
const WEIGHT_MIN_COLS: usize = 512;

/// `dst = src[0], src[step], src[2·step], ...` (as many as `dst` holds).
#[inline]
fn gather<T: Float>(dst: &mut [T], src: &[T], step: usize) {
    if step == 1 {
        dst.copy_from_slice(&src[..dst.len()]);
    } else {
        for (d, s) in dst.iter_mut().zip(src.iter().step_by(step)) {
            *d = *s;
        }
    }
}

/// `dst[0] += src[0], dst[step] += src[1], ...` (as many as `src` holds).
#[inline]
fn scatter_add<T: Float>(dst: &mut [T], src: &[T], step: usize) {
    if step == 1 {
        for (d, s) in dst[..src.len()].iter_mut().zip(src) {
            *d += *s;
        }
    } else {
        for (d, s) in dst.iter_mut().step_by(step).zip(src) {
            *d += *s;
        }
    }
}

/// Gathers the receptive fields of output rows `oys` of one sample `a [c_in, h,
/// w]` into `col`: row `r` of the column matrix (`c_in·kh·kw` rows of
/// `oys.len()·wo` entries) starts at `col[r·ld]`.
fn im2col<T: Float>(g: &Geom, p: &Plan, a: &[T], oys: Range<usize>, col: &mut [T], ld: usize) {
    let len = oys.len() * g.wo;
    if len == 0 {
        return;
    }
    let hw = g.h * g.w;
    let mut rows = col.chunks_mut(ld.max(len));
    for ci in 0..g.c_in {
        let plane = &a[ci * hw..(ci + 1) * hw];
        for (ky, &(ylo, yhi)) in p.rows.iter().enumerate() {
            for (kx, &(xlo, xhi)) in p.cols.iter().enumerate() {
                let Some(dst) = rows.next() else { return };
                for (oy, d) in oys.clone().zip(dst[..len].chunks_exact_mut(g.wo)) {
                    if oy < ylo || oy >= yhi || xlo >= xhi {
                        d.fill(T::ZERO);
                        continue;
                    }
                    // Both differences are >= 0: (oy, xlo) lie in the valid ranges.
                    let iy = oy * g.stride + ky * g.dilation - g.padding;
                    let ix0 = xlo * g.stride + kx * g.dilation - g.padding;
                    let src = &plane[iy * g.w..(iy + 1) * g.w];
                    d[..xlo].fill(T::ZERO);
                    d[xhi..].fill(T::ZERO);
                    gather(&mut d[xlo..xhi], &src[ix0..], g.stride);
                }
            }
        }
    }
}

/// Adds the column matrix of output rows `oys` (`n_chans·kh·kw` rows starting
/// `ld` apart in `col`) back onto the input positions its entries were gathered
/// from, in `a [n_chans, h, w]` (the adjoint of [`im2col`]).
fn col2im<T: Float>(
    g: &Geom,
    p: &Plan,
    col: &[T],
    ld: usize,
    n_chans: usize,
    oys: Range<usize>,
    a: &mut [T],
) {
    let len = oys.len() * g.wo;
    if len == 0 {
        return;
    }
    let hw = g.h * g.w;
    let mut rows = col.chunks(ld.max(len));
    for ci in 0..n_chans {
        let plane = &mut a[ci * hw..(ci + 1) * hw];
        for (ky, &(ylo, yhi)) in p.rows.iter().enumerate() {
            for (kx, &(xlo, xhi)) in p.cols.iter().enumerate() {
                let Some(src) = rows.next() else { return };
                if xlo >= xhi {
                    continue;
                }
                for (oy, s) in oys.clone().zip(src[..len].chunks_exact(g.wo)) {
                    if oy < ylo || oy >= yhi {
                        continue;
                    }
                    let iy = oy * g.stride + ky * g.dilation - g.padding;
                    let ix0 = xlo * g.stride + kx * g.dilation - g.padding;
                    let dst = &mut plane[iy * g.w..(iy + 1) * g.w];
                    scatter_add(&mut dst[ix0..], &s[xlo..xhi], g.stride);
                }
            }
        }
    }
}

/// A band of output rows of one sample.
type Unit = (usize, Range<usize>);

/// Output-row bands of `band` rows covering every sample.
fn bands(g: &Geom, band: usize) -> Vec<Unit> {
    (0..g.n)
        .flat_map(|i| {
            (0..g.ho)
                .step_by(band.max(1))
                .map(move |oy0| (i, oy0..(oy0 + band).min(g.ho)))
        })
        .collect()
}

/// Groups of bands whose columns one GEMM takes together: bands of about `cols`
/// columns of one sample, or several whole samples when one has fewer columns;
/// smaller groups, down to `floor` columns, where that makes at least
/// `min_groups` of them.
fn batches(g: &Geom, cols: usize, floor: usize, min_groups: usize) -> Vec<Vec<Unit>> {
    let plane = g.ho * g.wo;
    let spread = (g.n * plane).div_ceil(min_groups.max(1));
    let cols = cols.min(spread.max(floor)).max(1);
    if plane > cols {
        let band = (cols / g.wo).clamp(1, g.ho);
        bands(g, band).into_iter().map(|u| vec![u]).collect()
    } else {
        let per = (cols / plane.max(1)).max(1);
        (0..g.n)
            .step_by(per)
            .map(|i0| (i0..(i0 + per).min(g.n)).map(|i| (i, 0..g.ho)).collect())
            .collect()
    }
}

fn columns(g: &Geom, batch: &[Unit]) -> usize {
    batch.iter().map(|(_, oys)| oys.len() * g.wo).sum()
}

/// The im2col matrix of `batch`: `k_len` rows, one column per output pixel. For
/// a pointwise convolution of one image's rows that is the input itself (no
/// copy); otherwise it is gathered into `col`. Returns its data and row stride
/// (the forward pass reads it as is, the weight gradient transposed).
fn batch_columns<T: Float>(
    g: &Geom,
    plan: &Plan,
    a: &[T],
    batch: &[Unit],
    pointwise: bool,
    col: &mut Vec<T>,
) -> (*const T, usize) {
    match batch {
        [(i, oys)] if pointwise => (a[i * g.a_len() + oys.start * g.wo..].as_ptr(), g.ho * g.wo),
        _ => {
            let (k_len, ncols) = (g.k_len(), columns(g, batch));
            grow(col, k_len * ncols);
            let mut off = 0;
            for (i, oys) in batch {
                let a_i = &a[i * g.a_len()..(i + 1) * g.a_len()];
                im2col(
                    g,
                    plan,
                    a_i,
                    oys.clone(),
                    &mut col[off..k_len * ncols],
                    ncols,
                );
                off += oys.len() * g.wo;
            }
            (col.as_ptr(), ncols)
        }
    }
}

fn grow<T: Float>(buf: &mut Vec<T>, len: usize) {
    if buf.len() < len {
        buf.resize(len, T::ZERO);
    }
}

/// The im2col + GEMM path of [`super::kernels::forward`] (`g` not empty).
pub(super) fn forward<T: Float>(
    g: &Geom,
    plan: &Plan,
    a: &[T],
    kmat: &[T],
    bias: Option<&[T]>,
) -> Vec<T> {
    let mut b = vec![T::ZERO; g.n * g.b_len()];
    let pointwise = g.pointwise();
    let k_len = g.k_len();
    let plane = g.ho * g.wo;
    let threads = rayon::current_num_threads();
    let tasks = batches(g, (BAND_ELEMS / k_len).max(MIN_COLS), MIN_COLS, 2 * threads);
    let parallel_gemm = tasks.len() < threads;
    let out = SharedMut::new(b.as_mut_ptr());
    tasks.par_iter().for_each_init(
        || (Vec::new(), Vec::new()),
        |(col, tmp): &mut (Vec<T>, Vec<T>), batch| {
            let ncols = columns(g, batch);
            let lhs = Mat {
                ptr: kmat.as_ptr(),
                rs: k_len,
                cs: 1,
            };
            let (ptr, ld) = batch_columns(g, plan, a, batch, pointwise, col);
            let rhs = Mat { ptr, rs: ld, cs: 1 };
            if let [(i, oys)] = batch.as_slice() {
                // SAFETY: `b` outlives the tasks, and this task alone touches
                // columns `oys.start·wo .. oys.end·wo` of the c_out rows (stride
                // `plane`) of sample i: the tasks' bands are disjoint.
                let dst = unsafe { out.get().add(i * g.b_len() + oys.start * g.wo) };
                if let Some(bias) = bias {
                    for (co, &v) in bias.iter().enumerate().take(g.c_out) {
                        // SAFETY: as above, one channel row's share of this band.
                        unsafe { std::slice::from_raw_parts_mut(dst.add(co * plane), ncols) }
                            .fill(v);
                    }
                }
                // SAFETY: dst holds c_out x ncols with row stride `plane`; kmat is
                // c_out x k_len; rhs is k_len x ncols (in `col` or `a`).
                unsafe {
                    matmul(
                        g.c_out,
                        ncols,
                        k_len,
                        dst,
                        plane,
                        bias.is_some(),
                        lhs,
                        rhs,
                        parallel_gemm,
                    )
                };
                return;
            }
            grow(tmp, g.c_out * ncols);
            // SAFETY: tmp holds c_out x ncols; lhs and rhs as above.
            unsafe {
                matmul(
                    g.c_out,
                    ncols,
                    k_len,
                    tmp.as_mut_ptr(),
                    ncols,
                    false,
                    lhs,
                    rhs,
                    parallel_gemm,
                )
            };
            let mut off = 0;
            for (i, oys) in batch {
                let len = oys.len() * g.wo;
                for co in 0..g.c_out {
                    // SAFETY: `b` outlives the tasks; this task alone writes the
                    // samples of its batch (whole samples: see `batches`).
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(
                            out.get().add(i * g.b_len() + co * plane + oys.start * g.wo),
                            len,
                        )
                    };
                    let src = &tmp[co * ncols + off..co * ncols + off + len];
                    match bias {
                        Some(bias) => {
                            for (d, s) in dst.iter_mut().zip(src) {
                                *d = *s + bias[co];
                            }
                        }
                        None => dst.copy_from_slice(src),
                    }
                }
                off += len;
            }
        },
    );
    b
}

/// The col2im + GEMM path of [`super::kernels::data_grad`] (`g` and the input not
/// empty).
pub(super) fn data_grad<T: Float>(g: &Geom, b: &[T], kmat: &[T], bias: Option<&[T]>) -> Vec<T> {
    let hw = g.h * g.w;
    let mut a = vec![T::ZERO; g.n * g.a_len()];
    if let Some(bias) = bias {
        for (plane, &v) in a.chunks_exact_mut(hw).zip(bias.iter().cycle()) {
            plane.fill(v);
        }
    }
    let plan = g.plan();
    let pointwise = g.pointwise();
    let (kk, k_len, plane) = (g.kk(), g.k_len(), g.ho * g.wo);
    let threads = rayon::current_num_threads();
    let want = 2 * threads;
    let cg = g.c_in.div_ceil(want.div_ceil(g.n).clamp(1, g.c_in));
    let n_groups = g.c_in.div_ceil(cg);
    // Samples per task: several when a sample has few columns, keeping enough
    // tasks for the threads.
    let cols = (BAND_ELEMS / (cg * kk)).max(MIN_COLS);
    let mut per = (cols / plane).clamp(1, g.n);
    while per > 1 && n_groups * g.n.div_ceil(per) < threads && (per - 1) * plane >= MIN_COLS {
        per -= 1;
    }
    let band = g.band_rows(cg * kk, BAND_ELEMS).max(MIN_COLS / g.wo);
    // (channel group, [(sample, its block of the group's channels)]).
    let mut by_group: Vec<Vec<(usize, &mut [T])>> = (0..n_groups).map(|_| Vec::new()).collect();
    for (i, sample) in a.chunks_mut(g.a_len()).enumerate() {
        for (gi, block) in sample.chunks_mut(cg * hw).enumerate() {
            by_group[gi].push((i, block));
        }
    }
    let mut tasks = Vec::new();
    for (gi, blocks) in by_group.into_iter().enumerate() {
        let mut blocks = blocks.into_iter().peekable();
        while blocks.peek().is_some() {
            tasks.push((gi, blocks.by_ref().take(per).collect::<Vec<_>>()));
        }
    }
    let parallel_gemm = tasks.len() < threads;
    tasks.into_par_iter().for_each_init(
        || (Vec::new(), Vec::new()),
        |(col, packed): &mut (Vec<T>, Vec<T>), (gi, mut blocks)| {
            let c0 = gi * cg;
            let n_chans = blocks[0].1.len() / hw;
            let rows = n_chans * kk;
            // Kᵀ restricted to this group's columns of K.
            let lhs = Mat {
                ptr: kmat[c0 * kk..].as_ptr(),
                rs: 1,
                cs: k_len,
            };
            if blocks.len() == 1 {
                let (i, a_g) = &mut blocks[0];
                let b_i = &b[*i * g.b_len()..(*i + 1) * g.b_len()];
                for oy0 in (0..g.ho).step_by(band) {
                    let oys = oy0..(oy0 + band).min(g.ho);
                    let len = oys.len() * g.wo;
                    let rhs = Mat {
                        ptr: b_i[oy0 * g.wo..].as_ptr(),
                        rs: plane,
                        cs: 1,
                    };
                    if pointwise {
                        // SAFETY: a_g is this task's own [n_chans, h, w] block
                        // (h·w = ho·wo); rows x len at row stride hw fit in it.
                        unsafe {
                            matmul(
                                rows,
                                len,
                                g.c_out,
                                a_g[oy0 * g.wo..].as_mut_ptr(),
                                hw,
                                true,
                                lhs,
                                rhs,
                                parallel_gemm,
                            )
                        };
                    } else {
                        grow(col, rows * len);
                        // SAFETY: col holds rows x len; lhs is rows x c_out
                        // inside kmat; rhs is c_out x len inside b_i.
                        unsafe {
                            matmul(
                                rows,
                                len,
                                g.c_out,
                                col.as_mut_ptr(),
                                len,
                                false,
                                lhs,
                                rhs,
                                parallel_gemm,
                            )
                        };
                        col2im(g, &plan, &col[..rows * len], len, n_chans, oys, a_g);
                    }
                }
                return;
            }
            // Several whole samples: their output gradients side by side.
            let ncols = blocks.len() * plane;
            grow(packed, g.c_out * ncols);
            for (s, (i, _)) in blocks.iter().enumerate() {
                for co in 0..g.c_out {
                    let src = &b[i * g.b_len() + co * plane..i * g.b_len() + (co + 1) * plane];
                    packed[co * ncols + s * plane..co * ncols + (s + 1) * plane]
                        .copy_from_slice(src);
                }
            }
            grow(col, rows * ncols);
            let rhs = Mat {
                ptr: packed.as_ptr(),
                rs: ncols,
                cs: 1,
            };
            // SAFETY: col holds rows x ncols; lhs is rows x c_out inside kmat;
            // packed holds c_out x ncols.
            unsafe {
                matmul(
                    rows,
                    ncols,
                    g.c_out,
                    col.as_mut_ptr(),
                    ncols,
                    false,
                    lhs,
                    rhs,
                    parallel_gemm,
                )
            };
            for (s, (_, a_g)) in blocks.iter_mut().enumerate() {
                col2im(
                    g,
                    &plan,
                    &col[s * plane..rows * ncols],
                    ncols,
                    n_chans,
                    0..g.ho,
                    a_g,
                );
            }
        },
    );
    a
}

/// The im2col + GEMM path of [`super::kernels::weight_grad`] (`g` not empty).
pub(super) fn weight_grad<T: Float>(g: &Geom, plan: &Plan, a: &[T], b: &[T]) -> Vec<T> {
    let k_len = g.k_len();
    let size = g.c_out * k_len;
    let pointwise = g.pointwise();
    let plane = g.ho * g.wo;
    let threads = rayon::current_num_threads();
    // One group per thread at least (the GEMM crate's own threading does worse
    // than independent shares), each reducing over as many columns as allowed.
    let groups = batches(
        g,
        (WEIGHT_BAND_ELEMS / k_len).max(WEIGHT_MIN_COLS),
        MIN_COLS,
        threads,
    );
    let shares = threads.min(groups.len()).max(1);
    let parallel_gemm = shares < threads;
    let partial: Vec<Vec<T>> = groups
        .par_chunks(groups.len().div_ceil(shares))
        .map(|share| {
            let mut acc = vec![T::ZERO; size];
            let (mut col, mut packed) = (Vec::new(), Vec::new());
            for batch in share {
                let ncols = columns(g, batch);
                // im2col(A)ᵀ of the batch: ncols x k_len.
                let (ptr, ld) = batch_columns(g, plan, a, batch, pointwise, &mut col);
                let rhs = Mat { ptr, rs: 1, cs: ld };
                // B of the batch: c_out x ncols.
                let lhs = match batch.as_slice() {
                    [(i, oys)] => Mat {
                        ptr: b[i * g.b_len() + oys.start * g.wo..].as_ptr(),
                        rs: plane,
                        cs: 1,
                    },
                    _ => {
                        grow(&mut packed, g.c_out * ncols);
                        let mut off = 0;
                        for (i, oys) in batch {
                            let len = oys.len() * g.wo;
                            for co in 0..g.c_out {
                                let at = i * g.b_len() + co * plane + oys.start * g.wo;
                                packed[co * ncols + off..co * ncols + off + len]
                                    .copy_from_slice(&b[at..at + len]);
                            }
                            off += len;
                        }
                        Mat {
                            ptr: packed.as_ptr(),
                            rs: ncols,
                            cs: 1,
                        }
                    }
                };
                // SAFETY: acc is c_out x k_len (this share's own); lhs is c_out x
                // ncols; rhs is ncols x k_len (see above).
                unsafe {
                    matmul(
                        g.c_out,
                        k_len,
                        ncols,
                        acc.as_mut_ptr(),
                        k_len,
                        true,
                        lhs,
                        rhs,
                        parallel_gemm,
                    )
                };
            }
            acc
        })
        .collect();
    sum_shares(partial, size)
}
