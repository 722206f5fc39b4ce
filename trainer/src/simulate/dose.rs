//! The dose model: photon counts on the detector and the noisy log transform.
//!
//! For a ray with noise-free line integral `p`, at dose fraction `f` of the full-dose
//! incident photons `I0` per ray:
//!
//! ```text
//! counts  ~ Poisson(f * I0 * exp(-p)) + N(0, sigma_e^2)     (electronic noise)
//! counts  = max(counts, floor)                            (floor 0.1 by default)
//! p_noisy = -ln(counts / (f * I0))
//! ```
//!
//! Random numbers: one generator per view, seeded from the slice seed and the view
//! index (SplitMix64 mixing), so views run in parallel and the result depends on the
//! seed only, never on thread scheduling.

use ndarray::Array2;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Poisson, StandardNormal};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::SimError;

/// Default incident photons per ray (detector bin and view) at full dose.
///
/// Calibrated on a 30 cm water cylinder (512x512, 0.7 mm pixels, default fan beam):
/// the inserted noise (qd - fd) in its centre is about 40 HU at dose 1 and 80 HU at
/// dose 0.25 with the ramp filter, 15 HU and 30 HU with the Hann filter, the noise of
/// clinical body CT reconstructed with sharp and smooth kernels (quarter-dose AAPM
/// data: about 25-30 HU with a smooth kernel). Smaller objects (a head) get less.
/// Per-ray counts depend on the bin size: the default bins are half a pixel wide.
pub const DEFAULT_I0: f64 = 1e6;
/// Counts below this are set to it before the log (LoDoPaB-CT replaces zero counts by 0.1).
pub const DEFAULT_FLOOR: f64 = 0.1;
/// LoDoPaB-CT's photons per detector pixel.
pub const LODOPAB_N0: f64 = 4096.0;

/// Photon statistics of the scanner.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DoseModel {
    /// Incident photons per ray at full dose.
    pub i0: f64,
    /// Standard deviation of the additive electronic noise, in photon counts.
    pub electronic_noise: f64,
    /// Smallest count kept before the log.
    pub floor: f64,
}

impl Default for DoseModel {
    fn default() -> Self {
        Self {
            i0: DEFAULT_I0,
            electronic_noise: 0.0,
            floor: DEFAULT_FLOOR,
        }
    }
}

impl DoseModel {
    pub fn validate(&self) -> Result<(), SimError> {
        if !(self.i0.is_finite() && self.i0 > 0.0) {
            return Err(SimError::Dose(format!(
                "I0 must be positive, got {}",
                self.i0
            )));
        }
        if !(self.electronic_noise.is_finite() && self.electronic_noise >= 0.0) {
            return Err(SimError::Dose(format!(
                "electronic noise must be >= 0, got {}",
                self.electronic_noise
            )));
        }
        if !(self.floor.is_finite() && self.floor > 0.0) {
            return Err(SimError::Dose(format!(
                "count floor must be positive, got {}",
                self.floor
            )));
        }
        Ok(())
    }

    /// A noisy copy of a noise-free sinogram of line integrals at dose fraction `dose`.
    pub fn noisy(
        &self,
        clean: &Array2<f32>,
        dose: f64,
        seed: u64,
    ) -> Result<Array2<f32>, SimError> {
        self.validate()?;
        if !(dose.is_finite() && dose > 0.0) {
            return Err(SimError::Dose(format!(
                "dose fraction must be positive, got {dose}"
            )));
        }
        let bins = clean.ncols();
        let incident = dose * self.i0;
        let ln_incident = incident.ln();
        let mut out = clean.as_standard_layout().into_owned();
        out.as_slice_mut()
            .expect("standard layout")
            .par_chunks_mut(bins.max(1))
            .enumerate()
            .for_each(|(view, row)| {
                let mut rng = StdRng::seed_from_u64(derive_seed(seed, view as u64));
                for p in row.iter_mut() {
                    let mean = incident * (-(*p as f64)).exp();
                    let mut counts = if mean > 0.0 {
                        // Poisson::new fails only for non-finite or non-positive means.
                        Poisson::new(mean)
                            .map(|d| d.sample(&mut rng))
                            .unwrap_or(0.0)
                    } else {
                        0.0
                    };
                    if self.electronic_noise > 0.0 {
                        let z: f64 = StandardNormal.sample(&mut rng);
                        counts += self.electronic_noise * z;
                    }
                    let counts = counts.max(self.floor);
                    *p = (ln_incident - counts.ln()) as f32;
                }
            });
        Ok(out)
    }
}

/// SplitMix64 finaliser: a well-mixed 64-bit value.
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A child seed of `seed` for stream `index` (slice, view, ...).
pub fn derive_seed(seed: u64, index: u64) -> u64 {
    splitmix64(splitmix64(seed) ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_counts_are_unbiased_and_have_poisson_variance() {
        let p = 2.0f32;
        let clean = Array2::from_elem((200, 100), p);
        let model = DoseModel::default();
        for dose in [1.0, 0.25] {
            let noisy = model.noisy(&clean, dose, 7).unwrap();
            let n = noisy.len() as f64;
            let mean = noisy.iter().map(|&v| v as f64).sum::<f64>() / n;
            let var = noisy
                .iter()
                .map(|&v| (v as f64 - mean).powi(2))
                .sum::<f64>()
                / n;
            // Var(-ln N) ~ 1 / E[N].
            let want = 1.0 / (dose * model.i0 * (-(p as f64)).exp());
            assert!((mean - p as f64).abs() < 1e-3, "mean {mean}");
            assert!((var / want - 1.0).abs() < 0.05, "var {var} vs {want}");
        }
    }

    #[test]
    fn deterministic_and_seed_dependent() {
        let clean = Array2::from_shape_fn((16, 33), |(i, j)| (i + j) as f32 * 0.1);
        let model = DoseModel {
            electronic_noise: 5.0,
            ..DoseModel::default()
        };
        let a = model.noisy(&clean, 0.25, 3).unwrap();
        let b = model.noisy(&clean, 0.25, 3).unwrap();
        let c = model.noisy(&clean, 0.25, 4).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn zero_counts_hit_the_floor() {
        let clean = Array2::from_elem((2, 3), 40.0f32);
        let model = DoseModel {
            i0: LODOPAB_N0,
            ..DoseModel::default()
        };
        let noisy = model.noisy(&clean, 1.0, 1).unwrap();
        let want = -(0.1f64 / LODOPAB_N0).ln() as f32;
        assert!(noisy.iter().all(|&v| (v - want).abs() < 1e-5));
        assert!(model.noisy(&clean, 0.0, 1).is_err());
    }
}
