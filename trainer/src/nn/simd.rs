//! The widest vector extension of the CPU the trainer runs on, chosen at run time.
//!
//! The build targets baseline x86-64 (SSE2), so that one binary runs on every
//! machine; the hot loops of the CPU kernels (Winograd transforms, direct
//! convolutions, im2col / col2im, the fused optimiser and element-wise ops) run
//! through [`dispatch`] as [`Kernel`]s, which it calls from a function compiled for AVX-512
//! (`avx512f`/`bw`/`dq`/`vl` + FMA) or AVX2 + FMA when the CPU has them, so the
//! compiler's vectoriser uses 16 or 8 f32 lanes there. GEMMs go through the `gemm`
//! crate, which dispatches the same way (its `x86-v4` feature).
//!
//! A kernel can cap its own level ([`dispatch_at_most`]): the Winograd transforms
//! run at AVX2 at most, where their AVX-512 build was slower (gathers; see
//! `conv_cpu::winograd::ISA`).
//!
//! `LDCT_SIMD=avx2|baseline` caps the choice (to measure or test a narrower path on
//! a wider machine); [`force`] does the same from a test.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// An instruction-set level the kernels are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// SSE2 (every x86-64), or any other architecture.
    Baseline = 1,
    /// AVX2 + FMA (x86-64-v3).
    Avx2 = 2,
    /// AVX-512 F/BW/DQ/VL + AVX2 + FMA (x86-64-v4).
    Avx512 = 3,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Baseline => "baseline",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    fn from_u8(v: u8) -> Option<Isa> {
        match v {
            1 => Some(Isa::Baseline),
            2 => Some(Isa::Avx2),
            3 => Some(Isa::Avx512),
            _ => None,
        }
    }

    /// The widest level this CPU supports (ignoring `LDCT_SIMD` and [`force`]).
    pub fn supported() -> Isa {
        static SUPPORTED: OnceLock<Isa> = OnceLock::new();
        *SUPPORTED.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                let v3 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
                let v4 = v3
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512dq")
                    && is_x86_feature_detected!("avx512vl");
                if v4 {
                    return Isa::Avx512;
                }
                if v3 {
                    return Isa::Avx2;
                }
            }
            Isa::Baseline
        })
    }

    /// The level the kernels run at: [`Isa::supported`], capped by `LDCT_SIMD`
    /// (read once) and by [`force`].
    pub fn detect() -> Isa {
        static CAP: OnceLock<Isa> = OnceLock::new();
        let cap = *CAP.get_or_init(|| match std::env::var("LDCT_SIMD").as_deref() {
            Ok("baseline") | Ok("sse2") => Isa::Baseline,
            Ok("avx2") => Isa::Avx2,
            _ => Isa::Avx512,
        });
        let forced = Isa::from_u8(FORCED.load(Ordering::Relaxed)).unwrap_or(Isa::Avx512);
        Isa::supported().min(cap).min(forced)
    }
}

static FORCED: AtomicU8 = AtomicU8::new(0);

/// Caps the level for the whole process (`None`: no cap). For tests that compare
/// the paths; every path computes the same results within rounding, so other
/// work running meanwhile stays correct.
pub fn force(isa: Option<Isa>) {
    FORCED.store(isa.map_or(0, |i| i as u8), Ordering::Relaxed);
}

/// A hot loop to compile for each level: [`Kernel::run`] and everything it calls
/// must be `#[inline(always)]`, so that the code lands inside [`dispatch`]'s
/// per-level functions and is vectorised for their features. (A closure would
/// not do: it stays a function of its own, compiled for the baseline.)
pub trait Kernel {
    type Output;
    fn run(self) -> Self::Output;
}

/// Runs `k` compiled for the widest level [`Isa::detect`] allows.
#[inline]
pub fn dispatch<K: Kernel>(k: K) -> K::Output {
    dispatch_at_most(Isa::Avx512, k)
}

/// [`dispatch`], at most at level `cap`: for kernels whose AVX-512 build is
/// slower than their AVX2 one (measured; see the caller).
#[inline]
pub fn dispatch_at_most<K: Kernel>(cap: Isa, k: K) -> K::Output {
    #[cfg(target_arch = "x86_64")]
    match Isa::detect().min(cap) {
        // SAFETY: the CPU has these features (Isa::supported checked them).
        Isa::Avx512 => return unsafe { run_avx512(k) },
        // SAFETY: as above.
        Isa::Avx2 => return unsafe { run_avx2(k) },
        Isa::Baseline => {}
    }
    k.run()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi1,bmi2,lzcnt,popcnt")]
unsafe fn run_avx512<K: Kernel>(k: K) -> K::Output {
    k.run()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,bmi1,bmi2,lzcnt,popcnt")]
unsafe fn run_avx2<K: Kernel>(k: K) -> K::Output {
    k.run()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sum(u32);

    impl Kernel for Sum {
        type Output = u32;
        #[inline(always)]
        fn run(self) -> u32 {
            (0..self.0).map(|v| v * 3).sum()
        }
    }

    #[test]
    fn the_level_follows_the_cpu_and_the_caps() {
        let cpu = Isa::supported();
        #[cfg(target_arch = "x86_64")]
        {
            let has512 = is_x86_feature_detected!("avx512f");
            let has2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            assert_eq!(
                cpu == Isa::Avx512,
                has512 && has2 && is_x86_feature_detected!("avx512vl")
            );
            assert!(cpu >= Isa::Avx2 || !has2);
        }
        // A cap never raises the level above the CPU's.
        for cap in [Isa::Baseline, Isa::Avx2, Isa::Avx512] {
            force(Some(cap));
            assert!(Isa::detect() <= cap && Isa::detect() <= cpu);
            assert_eq!(dispatch(Sum(100)), 14850);
        }
        force(None);
        assert!(Isa::detect() <= cpu);
    }
}
