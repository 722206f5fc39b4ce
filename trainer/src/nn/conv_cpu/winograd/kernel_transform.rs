//! `U_ξ = (G g Gᵀ)_ξ` of every 3x3 kernel of a convolution, [`LANES`] kernels at
//! a time and blocks of kernels on every thread.
//!
//! The transforms are written once ([`Variant::transform_kernel`]) over [`Arith`]:
//! one value, or [`KLanes`], the same operations on eight kernels side by side
//! (each lane computes exactly what the scalar code computes, in the same order:
//! the results are the same bits).

use std::ops::{Add, Mul, Sub};

use rayon::prelude::*;

use super::{Variant, ISA, LANES};
use crate::nn::conv_cpu::geom::{Float, Geom, SharedMut};
use crate::nn::simd;

/// Kernels per task: transformed into a small buffer, then written as one
/// contiguous run per ξ (one kernel's values land in ξ planes MiBs apart).
const KERNEL_BLOCK: usize = 8 * LANES;

/// What the kernel transforms compute with.
pub(in crate::nn::conv_cpu) trait Arith:
    Copy + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self>
{
    /// A constant (as `Float::from_f64` rounds it).
    fn splat(v: f64) -> Self;
}

impl<T: Float> Arith for T {
    #[inline(always)]
    fn splat(v: f64) -> Self {
        T::from_f64(v)
    }
}

/// [`LANES`] values under one operation.
#[derive(Clone, Copy)]
pub(in crate::nn::conv_cpu) struct KLanes<T>([T; LANES]);

impl<T: Float> Add for KLanes<T> {
    type Output = Self;
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        KLanes(std::array::from_fn(|j| self.0[j] + o.0[j]))
    }
}

impl<T: Float> Sub for KLanes<T> {
    type Output = Self;
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        KLanes(std::array::from_fn(|j| self.0[j] - o.0[j]))
    }
}

impl<T: Float> Mul for KLanes<T> {
    type Output = Self;
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        KLanes(std::array::from_fn(|j| self.0[j] * o.0[j]))
    }
}

impl<T: Float> Arith for KLanes<T> {
    #[inline(always)]
    fn splat(v: f64) -> Self {
        KLanes([T::from_f64(v); LANES])
    }
}

/// How a kernel matrix holds the 3x3 kernels of the convolution being run.
#[derive(Clone, Copy)]
pub(super) enum Kernels<'a, T> {
    /// `[c_out, c_in, 3, 3]`: the convolution's own.
    Own(&'a [T]),
    /// `[c_in, c_out, 3, 3]`, each rotated by 180°: the kernels of the
    /// convolution whose input gradient this convolution computes
    /// ([`super::transposed`]).
    Flipped(&'a [T]),
}

impl<T: Float> Kernels<'_, T> {
    /// The 9 taps (row-major) of the kernels `first .. first + LANES` of `g`'s
    /// `[c_out, c_in]` (kernels past `last` repeat `last`).
    #[inline(always)]
    fn taps(&self, g: &Geom, first: usize, last: usize) -> [KLanes<T>; 9] {
        match *self {
            Kernels::Own(k) => std::array::from_fn(|t| {
                KLanes(std::array::from_fn(|j| k[(first + j).min(last) * 9 + t]))
            }),
            Kernels::Flipped(k) => {
                // Kernel (co, ci) of g is kernel (ci, co) of the original,
                // `[c_in, c_out]` of g's channels, rotated.
                let (co0, ci0) = (first / g.c_in, first % g.c_in);
                let at: [usize; LANES] = std::array::from_fn(|j| {
                    let (mut co, mut ci) = (co0, ci0 + j.min(last - first));
                    while ci >= g.c_in {
                        ci -= g.c_in;
                        co += 1;
                    }
                    (ci * g.c_out + co) * 9 + 8
                });
                std::array::from_fn(|t| KLanes(std::array::from_fn(|j| k[at[j] - t])))
            }
        }
    }
}

/// `U_ξ [c_out, c_in]` for every ξ of `V`, from `kernels` of `g`.
pub(super) fn transform_kernels<T: Float, V: Variant>(g: &Geom, kernels: Kernels<'_, T>) -> Vec<T> {
    let plane = g.c_out * g.c_in;
    // Every element is written below (the blocks cover each plane): no zeroing.
    let mut u: Vec<T> = Vec::with_capacity(V::XI * plane);
    let out = SharedMut::new(u.as_mut_ptr());
    // A few tasks per thread (a task per block costs more in scheduling than the
    // block's transforms).
    let blocks = plane.div_ceil(KERNEL_BLOCK);
    let per_task = blocks.div_ceil(4 * rayon::current_num_threads()).max(1);
    (0..blocks.div_ceil(per_task))
        .into_par_iter()
        .for_each(|task| {
            for blk in task * per_task..((task + 1) * per_task).min(blocks) {
                let first = blk * KERNEL_BLOCK;
                simd::dispatch_at_most(
                    ISA,
                    Block::<T, V> {
                        g,
                        kernels,
                        first,
                        count: KERNEL_BLOCK.min(plane - first),
                        u: out,
                        variant: std::marker::PhantomData,
                    },
                )
            }
        });
    // SAFETY: the blocks of 0 .. plane wrote all XI planes of the capacity.
    unsafe { u.set_len(V::XI * plane) };
    u
}

/// Kernels `first .. first + count` (row-major over `[c_out, c_in]`) of one
/// [`transform_kernels`] call, as a [`simd::Kernel`].
struct Block<'a, T, V> {
    g: &'a Geom,
    kernels: Kernels<'a, T>,
    first: usize,
    count: usize,
    /// `XI` planes of `c_out·c_in`; this block alone writes its run of each.
    u: SharedMut<T>,
    variant: std::marker::PhantomData<V>,
}

impl<T: Float, V: Variant> simd::Kernel for Block<'_, T, V> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let g = self.g;
        let mut block = [[T::ZERO; KERNEL_BLOCK]; 36];
        // (Lanes past the block repeat its last kernel; they are not written.)
        let last = self.first + self.count - 1;
        for l0 in (0..self.count).step_by(LANES) {
            let taps = self.kernels.taps(g, self.first + l0, last);
            let tr = V::transform_kernel(&taps);
            for (dst, src) in block.iter_mut().zip(&tr).take(V::XI) {
                dst[l0..l0 + LANES].copy_from_slice(&src.0);
            }
        }
        let plane = g.c_out * g.c_in;
        for (xi, row) in block.iter().enumerate().take(V::XI) {
            // SAFETY: u holds XI planes of c_out·c_in; this block's run of plane
            // xi, first .. first + count, is written by no other task.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    row.as_ptr(),
                    self.u.get().add(xi * plane + self.first),
                    self.count,
                )
            };
        }
    }
}
