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
//! `im2col` is cache-blocked: each task gathers the columns of a band of output
//! rows (a few hundred KiB; or of several whole samples when they are small)
//! into a buffer of its own, multiplies it with one GEMM of the `gemm` crate
//! (the one Candle uses) and reuses the buffer for its next band, so no
//! full-size column matrix is ever allocated. Tasks (bands, or sample x channel
//! group for `col2im`, whose bands overlap) run on rayon's pool with
//! single-threaded GEMMs; when there are fewer tasks than threads the GEMM itself
//! runs in parallel. The weight gradient gives each thread a share of the bands
//! and its own accumulator. 1x1 convolutions with stride 1 and no padding skip
//! `im2col` and read the input.
//!
//! Two special cases: with at most [`DIRECT_MAX_OUT`] output channels (a
//! network's last layer) the primitives work directly on the images, one kernel
//! tap at a time, since gathering columns would cost more than the arithmetic;
//! 3x3 stride-1 layers with enough channels run the forward and the input
//! gradient through [`winograd`] F(2x2, 3x3).
//!
//! Output positions whose receptive field leaves the input read zeros (zero
//! padding), input positions no output reads get a zero gradient: any H, W,
//! stride, padding, dilation and output padding give correctly shaped results.

use std::ops::Range;

use candle_core::WithDType;
use gemm::Parallelism;
use rayon::prelude::*;

use super::winograd;

/// The element types the kernels run in: exactly those the `gemm` crate's
/// generic entry point accepts (it panics on any other type).
pub trait Float: WithDType {
    const ZERO: Self;
}

impl Float for f32 {
    const ZERO: Self = 0.0;
}

impl Float for f64 {
    const ZERO: Self = 0.0;
}

/// Elements of an `im2col` / `col2im` band buffer that the forward and input
/// gradient aim for (256 KiB in f32: half of this CPU's per-core L2).
const BAND_ELEMS: usize = 64 * 1024;
/// The same for the weight gradient, whose GEMM reduces over the band (a longer
/// band amortises reading and writing the accumulator).
const WEIGHT_BAND_ELEMS: usize = 512 * 1024;
/// The fewest columns a forward or input-gradient GEMM takes where the output
/// allows (fewer make the kernel matrix's packing dominate).
const MIN_COLS: usize = 128;
/// The fewest columns (the reduction) of a weight-gradient GEMM: each reads and
/// writes the whole `c_out x c_in·kh·kw` accumulator.
const WEIGHT_MIN_COLS: usize = 512;

/// A convolution from `A [n, c_in, h, w]` to `B [n, c_out, ho, wo]`:
/// `B[co, oy, ox] = Σ K[co, ci, ky, kx] · A[ci, oy·s + ky·d - p, ox·s + kx·d - p]`
/// (terms outside A are zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geom {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub ho: usize,
    pub wo: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
}

impl Geom {
    /// Elements of one sample of A.
    pub fn a_len(&self) -> usize {
        self.c_in * self.h * self.w
    }

    /// Elements of one sample of B.
    pub fn b_len(&self) -> usize {
        self.c_out * self.ho * self.wo
    }

    /// Columns of K (the forward GEMM's reduction length).
    pub fn k_len(&self) -> usize {
        self.c_in * self.kh * self.kw
    }

    fn kk(&self) -> usize {
        self.kh * self.kw
    }

    /// `im2col` is the identity: a 1x1 kernel, stride 1, no padding.
    fn pointwise(&self) -> bool {
        self.kh == 1
            && self.kw == 1
            && self.stride == 1
            && self.padding == 0
            && self.h == self.ho
            && self.w == self.wo
    }

    fn empty(&self) -> bool {
        self.n == 0 || self.c_in == 0 || self.c_out == 0 || self.ho == 0 || self.wo == 0
    }

    /// For each kernel offset `k` along an axis, the output positions
    /// `[lo, hi)` whose input position `o·s + k·d - p` lies in `[0, len)`.
    fn valid(&self, kernel: usize, len: usize, out: usize) -> Vec<(usize, usize)> {
        let (s, p) = (self.stride as i64, self.padding as i64);
        (0..kernel)
            .map(|k| {
                let off = k as i64 * self.dilation as i64 - p;
                // o·s + off >= 0  <=>  o >= ceil(-off / s)
                let lo = if off >= 0 { 0 } else { (-off + s - 1) / s };
                // o·s + off <= len - 1  <=>  o <= floor((len - 1 - off) / s)
                let top = len as i64 - 1 - off;
                let hi = if top < 0 { 0 } else { top / s + 1 };
                let hi = hi.clamp(0, out as i64) as usize;
                let lo = (lo.max(0) as usize).min(hi);
                (lo, hi)
            })
            .collect()
    }

    fn plan(&self) -> Plan {
        Plan {
            rows: self.valid(self.kh, self.h, self.ho),
            cols: self.valid(self.kw, self.w, self.wo),
        }
    }

    /// Output rows per band for a buffer of about `target` elements with
    /// `rows_len` rows of `band · wo` elements (at least one output row).
    fn band_rows(&self, rows_len: usize, target: usize) -> usize {
        (target / (rows_len * self.wo).max(1)).clamp(1, self.ho.max(1))
    }
}

/// Valid output ranges per kernel row and column offset.
struct Plan {
    rows: Vec<(usize, usize)>,
    cols: Vec<(usize, usize)>,
}

/// A raw pointer that tasks writing disjoint parts of one buffer share.
#[derive(Clone, Copy)]
pub(super) struct SharedMut<T>(*mut T);

// SAFETY: the pointer is only used by tasks that write disjoint elements of a
// buffer that outlives them (see `forward` and `winograd::forward`).
unsafe impl<T: Send> Send for SharedMut<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    pub(super) fn new(ptr: *mut T) -> Self {
        SharedMut(ptr)
    }

    // A method (not the field) so that closures capture the whole Sync wrapper.
    pub(super) fn get(self) -> *mut T {
        self.0
    }
}

/// A strided matrix operand: pointer, row stride, column stride (in elements).
#[derive(Clone, Copy)]
pub(super) struct Mat<T> {
    pub(super) ptr: *const T,
    pub(super) rs: usize,
    pub(super) cs: usize,
}

/// `dst (m x n) = lhs (m x k) · rhs (k x n)`, or `+=` when `accumulate`.
///
/// # Safety
///
/// Every operand must be valid for its `m`/`n`/`k` extent with its strides, and
/// `dst` must not alias `lhs` or `rhs` nor be written by anyone else meanwhile.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn matmul<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_rs: usize,
    accumulate: bool,
    lhs: Mat<T>,
    rhs: Mat<T>,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    let par = if parallel {
        Parallelism::Rayon(rayon::current_num_threads())
    } else {
        Parallelism::None
    };
    // Strides fit isize: they index allocations, which never exceed isize::MAX bytes.
    // SAFETY: forwarded from the caller; T is f32 or f64 (`Float`), which gemm takes.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs.ptr,
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.ptr,
            rhs.cs as isize,
            rhs.rs as isize,
            T::from_f64(1.0),
            T::from_f64(1.0),
            false,
            false,
            false,
            par,
        )
    }
}

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

/// `B_n = K · im2col(A_n)` (+ bias per output channel) for every sample:
/// `a [n, c_in, h, w]`, `kmat [c_out, c_in·kh·kw]`, `bias [c_out]`; returns
/// `b [n, c_out, ho, wo]`.
pub fn forward<T: Float>(g: &Geom, a: &[T], kmat: &[T], bias: Option<&[T]>) -> Vec<T> {
    if g.empty() {
        return vec![T::ZERO; g.n * g.b_len()];
    }
    let plan = g.plan();
    if g.c_out <= DIRECT_MAX_OUT {
        return forward_direct(g, &plan, a, kmat, bias);
    }
    if winograd::applies(g) {
        return winograd::forward(g, a, kmat, bias);
    }
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
            let (ptr, ld) = batch_columns(g, &plan, a, batch, pointwise, col);
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
        return data_grad_direct(g, &g.plan(), b, kmat, bias);
    }
    if winograd::applies_to_data_grad(g) {
        let flipped = winograd::flip_kernels(kmat, g.c_out, g.c_in);
        return winograd::forward(&winograd::transposed(g), b, &flipped, bias);
    }
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

/// `K = Σ_n B_n · im2col(A_n)ᵀ`: `a [n, c_in, h, w]`, `b [n, c_out, ho, wo]`;
/// returns `kmat [c_out, c_in·kh·kw]`. Bands (or several small samples) are
/// gathered side by side so that each GEMM reduces over at least
/// [`WEIGHT_MIN_COLS`] columns; each thread accumulates a share of them into its
/// own matrix, and the shares are summed at the end.
pub fn weight_grad<T: Float>(g: &Geom, a: &[T], b: &[T]) -> Vec<T> {
    let k_len = g.k_len();
    let size = g.c_out * k_len;
    if g.empty() {
        return vec![T::ZERO; size];
    }
    let plan = g.plan();
    if g.c_out <= DIRECT_MAX_OUT {
        return weight_grad_direct(g, &plan, a, b);
    }
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
                let (ptr, ld) = batch_columns(g, &plan, a, batch, pointwise, &mut col);
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
    let mut parts = partial.into_iter();
    let mut sum = parts.next().unwrap_or_else(|| vec![T::ZERO; size]);
    for part in parts {
        sum.par_iter_mut()
            .zip(part.par_iter())
            .for_each(|(s, p)| *s += *p);
    }
    sum
}

/// Per-channel sum of `g [n, c, plane]` over samples and positions (a bias
/// gradient): eight running sums over blocks of 1024 values, the blocks' sums
/// added in f64.
pub fn channel_sums<T: Float>(g: &[T], n: usize, c: usize, plane: usize) -> Vec<T> {
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

/// Output channels up to which [`forward`], [`data_grad`] and [`weight_grad`]
/// use the direct kernels below: with so few GEMM rows, gathering the columns
/// would cost more than the arithmetic.
const DIRECT_MAX_OUT: usize = 4;

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
fn forward_direct<T: Float>(g: &Geom, p: &Plan, a: &[T], kmat: &[T], bias: Option<&[T]>) -> Vec<T> {
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
fn data_grad_direct<T: Float>(
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
fn weight_grad_direct<T: Float>(g: &Geom, p: &Plan, a: &[T], b: &[T]) -> Vec<T> {
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
