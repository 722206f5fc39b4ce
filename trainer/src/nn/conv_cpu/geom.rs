//! What every convolution kernel shares: the element types ([`Float`]), the
//! geometry of a convolution ([`Geom`]) with the valid output ranges of each kernel
//! tap ([`Plan`]), the pointer tasks writing disjoint parts of one buffer share
//! ([`SharedMut`]), and the sum of per-thread accumulators ([`sum_shares`]).

use candle_core::WithDType;
use rayon::prelude::*;

/// Elements of a band buffer that the kernels aim for (an `im2col` / `col2im` band of
/// the forward and input gradient, a band of the direct loops): 256 KiB in f32, half
/// of this CPU's per-core L2.
pub(super) const BAND_ELEMS: usize = 64 * 1024;

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

    pub(super) fn kk(&self) -> usize {
        self.kh * self.kw
    }

    /// `im2col` is the identity: a 1x1 kernel, stride 1, no padding.
    pub(super) fn pointwise(&self) -> bool {
        self.kh == 1
            && self.kw == 1
            && self.stride == 1
            && self.padding == 0
            && self.h == self.ho
            && self.w == self.wo
    }

    pub(super) fn empty(&self) -> bool {
        self.n == 0 || self.c_in == 0 || self.c_out == 0 || self.ho == 0 || self.wo == 0
    }

    /// For each kernel offset `k` along an axis, the output positions
    /// `[lo, hi)` whose input position `o·s + k·d - p` lies in `[0, len)`.
    pub(super) fn valid(&self, kernel: usize, len: usize, out: usize) -> Vec<(usize, usize)> {
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

    pub(super) fn plan(&self) -> Plan {
        Plan {
            rows: self.valid(self.kh, self.h, self.ho),
            cols: self.valid(self.kw, self.w, self.wo),
        }
    }

    /// Output rows per band for a buffer of about `target` elements with
    /// `rows_len` rows of `band · wo` elements (at least one output row).
    pub(super) fn band_rows(&self, rows_len: usize, target: usize) -> usize {
        (target / (rows_len * self.wo).max(1)).clamp(1, self.ho.max(1))
    }
}

/// Valid output ranges per kernel row and column offset.
pub(super) struct Plan {
    pub(super) rows: Vec<(usize, usize)>,
    pub(super) cols: Vec<(usize, usize)>,
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

/// The element-wise sum of the threads' accumulators of `len` values each (a
/// weight gradient's shares), into the first; zeros when there are none.
pub(super) fn sum_shares<T: Float>(shares: Vec<Vec<T>>, len: usize) -> Vec<T> {
    let mut shares = shares.into_iter();
    let mut sum = shares.next().unwrap_or_else(|| vec![T::ZERO; len]);
    for share in shares {
        sum.par_iter_mut()
            .zip(share.par_iter())
            .for_each(|(s, p)| *s += *p);
    }
    sum
}
