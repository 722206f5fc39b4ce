//! Hounsfield units <-> linear attenuation coefficients.
//!
//! `HU = 1000 * (mu - mu_water) / (mu_water - mu_air)`, with `mu_air = 0`:
//! `mu = mu_water * (1 + HU / 1000)`. The AAPM low-dose challenge `.npy` data store
//! mu with `mu_water = 0.0192` (per mm), the default here.

/// mu of water used by the AAPM challenge data (1/mm).
pub const MU_WATER_AAPM: f32 = 0.0192;

/// Conversion between HU and linear attenuation for a given mu of water.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Attenuation {
    /// Linear attenuation of water, in the unit mu is expressed in (1/mm by default).
    pub mu_water: f32,
}

impl Default for Attenuation {
    fn default() -> Self {
        Self {
            mu_water: MU_WATER_AAPM,
        }
    }
}

impl Attenuation {
    pub fn new(mu_water: f32) -> Self {
        Self { mu_water }
    }

    /// HU -> mu.
    #[inline]
    pub fn hu_to_mu(&self, hu: f32) -> f32 {
        self.mu_water * (1.0 + hu / 1000.0)
    }

    /// mu -> HU.
    #[inline]
    pub fn mu_to_hu(&self, mu: f32) -> f32 {
        1000.0 * (mu - self.mu_water) / self.mu_water
    }

    /// In place on a slice of values.
    pub fn hu_to_mu_inplace(&self, v: &mut [f32]) {
        v.iter_mut().for_each(|x| *x = self.hu_to_mu(*x));
    }

    /// In place on a slice of values.
    pub fn mu_to_hu_inplace(&self, v: &mut [f32]) {
        v.iter_mut().for_each(|x| *x = self.mu_to_hu(*x));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn water_air_and_round_trip() {
        let a = Attenuation::default();
        assert_eq!(a.hu_to_mu(0.0), MU_WATER_AAPM);
        assert_eq!(a.hu_to_mu(-1000.0), 0.0);
        assert!((a.mu_to_hu(0.0192) - 0.0).abs() < 1e-3);
        // The DESIGN.md formula: HU = 1000 (mu - 0.0192) / 0.0192.
        let mu = 0.025_f32;
        assert!((a.mu_to_hu(mu) - 1000.0 * (mu - 0.0192) / 0.0192).abs() < 1e-3);
        for hu in [-1000.0_f32, -500.0, 0.0, 40.0, 1000.0, 3000.0] {
            assert!((a.mu_to_hu(a.hu_to_mu(hu)) - hu).abs() < 1e-2);
        }
        let b = Attenuation::new(0.02);
        assert!((b.hu_to_mu(1000.0) - 0.04).abs() < 1e-7);
    }
}
