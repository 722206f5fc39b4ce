//! The one GEMM entry point of the kernels: the `gemm` crate (the one Candle uses) on
//! strided operands ([`Mat`]).

use gemm::Parallelism;

use super::geom::Float;

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
