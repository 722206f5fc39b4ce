//! FBP filters, applied in the frequency domain with zero padding.
//!
//! The ramp is not sampled as `|f|` directly: it is the FFT of the band-limited
//! ramp's spatial kernel (Kak & Slaney, "Principles of Computerized Tomographic
//! Imaging", ch. 3, eq. 61): `h[0] = 1/4`, `h[n] = -1/(pi n)^2` for odd `n`, `0` for
//! even `n` (in units of 1 / pitch^2). Its spectrum is `|f|` up to Nyquist, except near
//! DC where it stays slightly positive, which avoids the DC offset that a sampled
//! `|f|` gives. Apodisation windows multiply that spectrum (`f` in cycles per bin,
//! Nyquist 0.5): Shepp-Logan `sin(pi f) / (pi f)`, cosine `cos(pi f)`, Hann
//! `(1 + cos(2 pi f)) / 2`. These are the definitions of scikit-image's `iradon`.
//!
//! Each view is zero-padded to `P`, the smallest power of two >= `2 * bins` (and >= 64),
//! so the circular convolution equals the linear one over the detector. Two views are
//! filtered by one complex FFT (one as the real part, one as the imaginary part): the
//! filter is real and even, so the two never mix.

use std::f64::consts::PI;
use std::sync::Arc;

use ndarray::Array2;
use rayon::prelude::*;
use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};
use serde::{Deserialize, Serialize};

/// Apodisation of the ramp filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Filter {
    /// Plain ramp: sharpest, noisiest.
    #[default]
    Ramp,
    /// Ramp times `sinc`.
    SheppLogan,
    /// Ramp times `cos`.
    Cosine,
    /// Ramp times a Hann window: smoothest.
    Hann,
}

impl Filter {
    pub const ALL: [Filter; 4] = [
        Filter::Ramp,
        Filter::SheppLogan,
        Filter::Cosine,
        Filter::Hann,
    ];

    /// The window at frequency `f` (cycles per sample, |f| <= 0.5).
    pub fn window(self, f: f64) -> f64 {
        match self {
            Filter::Ramp => 1.0,
            Filter::SheppLogan => {
                let w = PI * f;
                if w.abs() < 1e-12 {
                    1.0
                } else {
                    w.sin() / w
                }
            }
            Filter::Cosine => (PI * f).cos(),
            Filter::Hann => 0.5 * (1.0 + (2.0 * PI * f).cos()),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Filter::Ramp => "ramp",
            Filter::SheppLogan => "shepp-logan",
            Filter::Cosine => "cosine",
            Filter::Hann => "hann",
        }
    }
}

impl std::str::FromStr for Filter {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Filter::ALL
            .into_iter()
            .find(|f| f.name() == s.to_ascii_lowercase().replace('_', "-"))
            .ok_or_else(|| format!("unknown filter {s:?} (ramp, shepp-logan, cosine, hann)"))
    }
}

/// Padded length for `bins` detector bins.
pub fn padded_len(bins: usize) -> usize {
    (2 * bins).next_power_of_two().max(64)
}

/// Signed index of circular position `m` in a length-`p` buffer.
fn signed(m: usize, p: usize) -> i64 {
    if m <= p / 2 {
        m as i64
    } else {
        m as i64 - p as i64
    }
}

/// The band-limited ramp kernel in circular order (unit pitch).
fn ramp_kernel(p: usize) -> Vec<f64> {
    (0..p)
        .map(|m| {
            let n = signed(m, p);
            if n == 0 {
                0.25
            } else if n & 1 == 1 {
                -1.0 / (PI * n as f64).powi(2)
            } else {
                0.0
            }
        })
        .collect()
}

fn fft_f64(data: &[f64], inverse: bool) -> Vec<Complex<f64>> {
    let mut planner = FftPlanner::<f64>::new();
    let fft = if inverse {
        planner.plan_fft_inverse(data.len())
    } else {
        planner.plan_fft_forward(data.len())
    };
    let mut buf: Vec<Complex<f64>> = data.iter().map(|&v| Complex::new(v, 0.0)).collect();
    fft.process(&mut buf);
    buf
}

/// A frequency response (length `P`, real) with its FFT plans.
pub struct FilterBank {
    bins: usize,
    response: Vec<f32>,
    forward: Arc<dyn Fft<f32>>,
    inverse: Arc<dyn Fft<f32>>,
}

impl std::fmt::Debug for FilterBank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilterBank")
            .field("bins", &self.bins)
            .field("padded", &self.response.len())
            .finish()
    }
}

impl FilterBank {
    /// `scale * (ramp * window)` for detector samples `pitch` apart (any unit: the
    /// result is per that unit).
    pub fn ramp(bins: usize, filter: Filter, pitch: f64, scale: f64) -> Self {
        let p = padded_len(bins);
        let spectrum = fft_f64(&ramp_kernel(p), false);
        let response = (0..p)
            .map(|m| {
                let f = signed(m, p) as f64 / p as f64;
                (spectrum[m].re * filter.window(f) * scale / pitch) as f32
            })
            .collect();
        Self::with_response(bins, response)
    }

    /// The equi-angular fan-beam filter `g(n a) = 1/2 (n a / sin(n a))^2 h(n a)` (Kak &
    /// Slaney eq. 3.103) for fan-angle spacing `alpha` (rad), with `h` the windowed
    /// ramp, times `scale`.
    pub fn equiangular(bins: usize, filter: Filter, alpha: f64, scale: f64) -> Self {
        let p = padded_len(bins);
        let spectrum = fft_f64(&ramp_kernel(p), false);
        // Windowed ramp back in the spatial domain.
        let windowed: Vec<f64> = (0..p)
            .map(|m| spectrum[m].re * filter.window(signed(m, p) as f64 / p as f64))
            .collect();
        let kernel = fft_f64(&windowed, true);
        let g: Vec<f64> = (0..p)
            .map(|m| {
                let n = signed(m, p) as f64;
                let h = kernel[m].re / p as f64;
                let x = n * alpha;
                let weight = if n == 0.0 { 1.0 } else { (x / x.sin()).powi(2) };
                0.5 * weight * h
            })
            .collect();
        let spectrum = fft_f64(&g, false);
        let response = spectrum
            .iter()
            .map(|c| (c.re * scale / alpha) as f32)
            .collect();
        Self::with_response(bins, response)
    }

    fn with_response(bins: usize, response: Vec<f32>) -> Self {
        let mut planner = FftPlanner::<f32>::new();
        let forward = planner.plan_fft_forward(response.len());
        let inverse = planner.plan_fft_inverse(response.len());
        Self {
            bins,
            response,
            forward,
            inverse,
        }
    }

    pub fn padded(&self) -> usize {
        self.response.len()
    }

    /// The frequency response (FFT order, unnormalised: includes `1 / P` for the
    /// inverse FFT only when filtering).
    pub fn response(&self) -> &[f32] {
        &self.response
    }

    /// Filters every row (view) of `sino` (`[views, bins]`) in place, in parallel.
    pub fn apply(&self, sino: &mut Array2<f32>) {
        assert_eq!(
            sino.ncols(),
            self.bins,
            "sinogram width does not match the filter"
        );
        let bins = self.bins;
        let p = self.padded();
        let norm = 1.0 / p as f32;
        let scratch_len = self
            .forward
            .get_inplace_scratch_len()
            .max(self.inverse.get_inplace_scratch_len());
        sino.as_slice_mut()
            .expect("standard layout")
            .par_chunks_mut(2 * bins)
            .for_each_init(
                || {
                    (
                        vec![Complex::<f32>::default(); p],
                        vec![Complex::<f32>::default(); scratch_len],
                    )
                },
                |(buf, scratch), pair| {
                    let (a, b) = pair.split_at_mut(bins.min(pair.len()));
                    buf.fill(Complex::default());
                    for (k, v) in a.iter().enumerate() {
                        buf[k].re = *v;
                    }
                    for (k, v) in b.iter().enumerate() {
                        buf[k].im = *v;
                    }
                    self.forward.process_with_scratch(buf, scratch);
                    for (z, &h) in buf.iter_mut().zip(&self.response) {
                        *z *= h * norm;
                    }
                    self.inverse.process_with_scratch(buf, scratch);
                    for (k, v) in a.iter_mut().enumerate() {
                        *v = buf[k].re;
                    }
                    for (k, v) in b.iter_mut().enumerate() {
                        *v = buf[k].im;
                    }
                },
            );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramp_spectrum_is_abs_f_and_windows_shrink_it() {
        let bank = FilterBank::ramp(100, Filter::Ramp, 1.0, 1.0);
        let p = bank.padded();
        assert_eq!(p, 256);
        for m in [8usize, 40, 100, 128] {
            let f = m as f64 / p as f64;
            assert!((bank.response()[m] as f64 - f).abs() < 2e-3, "m {m}");
            assert!((bank.response()[p - m] - bank.response()[m]).abs() < 1e-6);
        }
        // DC is small but positive (the band-limited kernel).
        assert!(bank.response()[0] > 0.0 && bank.response()[0] < 1e-2);
        for f in [Filter::SheppLogan, Filter::Cosine, Filter::Hann] {
            let w = FilterBank::ramp(100, f, 1.0, 1.0);
            assert!(w.response()[100] < bank.response()[100]);
        }
        assert!(FilterBank::ramp(100, Filter::Hann, 1.0, 1.0).response()[128].abs() < 1e-6);
    }

    #[test]
    fn frequency_filtering_equals_spatial_convolution() {
        let bins = 37;
        let bank = FilterBank::ramp(bins, Filter::Ramp, 1.0, 1.0);
        let views = 3; // odd: the last view is filtered alone
        let mut sino = Array2::from_shape_fn((views, bins), |(v, b)| ((v * 7 + b * 3) % 11) as f32);
        let input = sino.clone();
        bank.apply(&mut sino);
        let h = |n: i64| {
            if n == 0 {
                0.25
            } else if n & 1 == 1 {
                -1.0 / (PI * n as f64).powi(2)
            } else {
                0.0
            }
        };
        for v in 0..views {
            for n in 0..bins {
                let want: f64 = (0..bins)
                    .map(|k| input[[v, k]] as f64 * h(n as i64 - k as i64))
                    .sum();
                assert!((sino[[v, n]] as f64 - want).abs() < 1e-4, "{v} {n}");
            }
        }
    }

    #[test]
    fn parses_names() {
        for f in Filter::ALL {
            assert_eq!(f.name().parse::<Filter>().unwrap(), f);
        }
        assert!("box".parse::<Filter>().is_err());
    }
}
