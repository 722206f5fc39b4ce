//! The spatial correlation of CT noise, estimated from noisy slices alone, and a
//! sampler of Gaussian noise with that correlation (Noise2Score's `correlated`
//! noise model, [`crate::train::noise2score`]).
//!
//! # Estimate (low-dose slices only)
//!
//! Noise after filtered back-projection is stationary to a first approximation
//! within a region but not white: the ramp filter and the interpolations shape its
//! noise power spectrum (NPS), and neighbouring pixels are correlated. Anatomy
//! dominates the spectrum of real slices at all but the highest frequencies (on
//! the quarter-dose head, the median periodogram of all 32x32 blocks is 9 times
//! the noise's at a fifth of the sampling frequency), so the NPS is measured in
//! **flat regions** only:
//!
//! - the non-overlapping `block x block` squares whose pixels, and those of a ring
//!   of [`MARGIN`] pixels around them, all lie strictly inside the window and above
//!   -900 HU (nothing clipped, no air), each with its least-squares plane removed;
//! - ranked by the variance of the `BIN x BIN` means of that ring alone (the
//!   window detrended as a whole): averaging 16 pixels cuts the noise's part of
//!   that variance by about 16 while anatomy (low frequency) keeps its own, and
//!   leaving the block's own pixels out means the noise being measured plays no
//!   part in its selection (ranking by the block's own variance, or its own binned
//!   variance, kept the blocks whose noise happened to be low, and biased sigma and
//!   the lag-(1, 1) correlation down on a synthetic check);
//! - the flattest [`FLAT_FRACTION`] of them (at least [`MIN_NPS_BLOCKS`]) give the
//!   NPS as their mean periodogram `|DFT(block)|^2 / block^2`; the DC ordinate
//!   (zero after the detrend) takes the mean of its four neighbours;
//! - the pixel variance is `sigma^2 = mean_k S(k)` (Parseval) and the correlation
//!   `rho(l) = IDFT(S)(l) / sigma^2`, kept for lags `|lx|, |ly| <= radius`.
//!
//! On `data/invesalius-quarter`'s training slices (checked against the simulated
//! noise `qd - fd`, which the estimate never sees) this gives a pixel sigma of
//! 26.85 HU against the noise's 26.7 to 27.1 HU, and the lag-1 correlations
//! -0.098 / +0.012 against -0.100 / -0.004; the Haar estimate of white noise with
//! the same finest-scale power is 32.6 HU.
//!
//! The robust Haar estimate of [`crate::train::noise2score::estimate_noise`] gives
//! a check: for noise with correlation `rho`, the Haar diagonal detail has
//! variance `sigma^2 g` with `g = sum_ij h_i h_j rho(p_i - p_j)`
//! ([`NoiseCorrelation::haar_gain`]), so `sigma_haar / sqrt(g)` should be close to
//! `sigma` (both are recorded).
//!
//! # Sampler
//!
//! [`ColoredNoise`] draws zero-mean Gaussian patches of unit pixel variance whose
//! circular autocorrelation is `rho` (wrapped onto the patch): white noise filtered
//! in the Fourier domain by `sqrt(S_P)`, `S_P` the DFT of the wrapped `rho`
//! (negative ordinates from the truncation clamped to 0, then rescaled to unit
//! variance).

use std::sync::Arc;

use ndarray::Array2;
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};
use serde::{Deserialize, Serialize};

/// Side of the square blocks the NPS is estimated on.
pub const BLOCK: usize = 16;
/// Side of the bins whose means rank the blocks by anatomy.
pub const BIN: usize = 4;
/// Width of the ring around a block whose anatomy ranks it.
pub const MARGIN: usize = 8;
/// The flattest fraction of the usable blocks that the NPS is averaged over.
pub const FLAT_FRACTION: f64 = 0.1;
/// Largest lag kept in the correlation kernel.
pub const RADIUS: usize = 7;
/// Fewer usable blocks than this: no estimate.
pub const MIN_NPS_BLOCKS: usize = 32;

/// The estimated noise: pixel sigma and correlation kernel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoiseCorrelation {
    /// Pixel standard deviation of the noise (normalised range).
    pub sigma: f64,
    /// Largest lag: the kernel is `(2 radius + 1)^2`, row-major, lag `(0, 0)` at
    /// its centre, 1 there.
    pub radius: usize,
    pub correlation: Vec<f64>,
    /// Flat blocks (of `block x block`) the NPS was averaged over.
    pub blocks: usize,
    pub block: usize,
}

impl NoiseCorrelation {
    /// The correlation at lag `(dy, dx)`, 0 beyond `radius`.
    pub fn at(&self, dy: isize, dx: isize) -> f64 {
        let r = self.radius as isize;
        if dy.abs() > r || dx.abs() > r {
            return 0.0;
        }
        let n = 2 * self.radius + 1;
        self.correlation[(dy + r) as usize * n + (dx + r) as usize]
    }

    /// The variance of the Haar diagonal detail `(a - b - c + d) / 2` of noise with
    /// this correlation and unit pixel variance (1 for white noise).
    pub fn haar_gain(&self) -> f64 {
        let taps = [(0, 0, 0.5), (0, 1, -0.5), (1, 0, -0.5), (1, 1, 0.5)];
        let mut g = 0.0;
        for &(yi, xi, hi) in &taps {
            for &(yj, xj, hj) in &taps {
                g += hi * hj * self.at(yi - yj, xi - xj);
            }
        }
        g
    }
}

fn fft2(
    data: &mut [Complex<f64>],
    h: usize,
    w: usize,
    rows: &Arc<dyn Fft<f64>>,
    cols: &Arc<dyn Fft<f64>>,
) {
    for row in data.chunks_exact_mut(w) {
        rows.process(row);
    }
    let mut col = vec![Complex::new(0.0, 0.0); h];
    for x in 0..w {
        for y in 0..h {
            col[y] = data[y * w + x];
        }
        cols.process(&mut col);
        for y in 0..h {
            data[y * w + x] = col[y];
        }
    }
}

/// The open range `(lo, hi)` of normalised values a noise estimator may use at
/// `window` (HU): strictly inside the window (a clipped pixel has lost its noise)
/// and above `air_hu` (no air).
pub fn estimator_range(window: [f32; 2], air_hu: f32) -> (f32, f32) {
    let air = 2.0 * (air_hu - window[0]) / (window[1] - window[0]) - 1.0;
    (air.max(-1.0 + 1e-6), 1.0 - 1e-6)
}

/// Copies the `n x n` square of `img` at `(r, c)` into `out` with its
/// least-squares plane removed; false (and `out` unspecified) when a pixel lies
/// outside the open range `(lo, hi)`.
fn read_detrended(
    img: &Array2<f32>,
    (r, c): (usize, usize),
    n: usize,
    (lo, hi): (f32, f32),
    out: &mut [f64],
) -> bool {
    for y in 0..n {
        for x in 0..n {
            let v = img[(r + y, c + x)];
            if !(v > lo && v < hi) {
                return false;
            }
            out[y * n + x] = f64::from(v);
        }
    }
    detrend(out, n);
    true
}

/// Subtracts the least-squares plane `a + b x + c y` (x, y centred, so the three
/// regressors are orthogonal on a square block).
fn detrend(block: &mut [f64], n: usize) {
    let centre = (n as f64 - 1.0) / 2.0;
    let (mut s, mut sx, mut sy, mut xx) = (0.0, 0.0, 0.0, 0.0);
    for y in 0..n {
        for x in 0..n {
            let v = block[y * n + x];
            let (cx, cy) = (x as f64 - centre, y as f64 - centre);
            s += v;
            sx += v * cx;
            sy += v * cy;
            xx += cx * cx;
        }
    }
    let m = s / (n * n) as f64;
    let (bx, by) = (sx / xx, sy / xx);
    for y in 0..n {
        for x in 0..n {
            block[y * n + x] -= m + bx * (x as f64 - centre) + by * (y as f64 - centre);
        }
    }
}

/// The variance of the `BIN x BIN` means of a (detrended) `side x side` window
/// outside its central `side - 2 MARGIN` square.
fn ring_variance(window: &[f64], side: usize) -> f64 {
    let bins = side / BIN;
    let inner = MARGIN / BIN..(side - MARGIN) / BIN;
    let mut means = Vec::with_capacity(bins * bins);
    for by in 0..bins {
        for bx in 0..bins {
            if inner.contains(&by) && inner.contains(&bx) {
                continue;
            }
            let mut s = 0.0;
            for y in 0..BIN {
                for x in 0..BIN {
                    s += window[(by * BIN + y) * side + bx * BIN + x];
                }
            }
            means.push(s / (BIN * BIN) as f64);
        }
    }
    let m = means.iter().sum::<f64>() / means.len() as f64;
    means.iter().map(|v| (v - m).powi(2)).sum::<f64>() / means.len() as f64
}

/// Estimates the noise's pixel sigma and correlation from normalised slices
/// (values in `[-1, 1]`, window `[lo, hi]` HU); `None` with fewer than
/// [`MIN_NPS_BLOCKS`] usable blocks. See the module docs.
pub fn estimate_correlation(
    slices: &[Array2<f32>],
    window: [f32; 2],
    air_hu: f32,
) -> Option<NoiseCorrelation> {
    let n = BLOCK;
    let range = estimator_range(window, air_hu);
    let mut planner = FftPlanner::<f64>::new();
    let fft = planner.plan_fft_forward(n);
    let mut block = vec![0.0f64; n * n];
    // Pass 1: the anatomy score of every block whose surrounding ring of MARGIN
    // pixels is usable too: the variance of the BIN x BIN means of the ring alone
    // (the window detrended as a whole), so that the noise being measured takes no
    // part in the block's selection while anatomy next to it does.
    let side = n + 2 * MARGIN;
    let mut window_px = vec![0.0f64; side * side];
    let mut candidates: Vec<(f64, usize, usize, usize)> = Vec::new();
    for (s, img) in slices.iter().enumerate() {
        let (h, w) = img.dim();
        for r in (MARGIN..h.saturating_sub(n + MARGIN - 1)).step_by(n) {
            for c in (MARGIN..w.saturating_sub(n + MARGIN - 1)).step_by(n) {
                if !read_detrended(img, (r - MARGIN, c - MARGIN), side, range, &mut window_px) {
                    continue;
                }
                candidates.push((ring_variance(&window_px, side), s, r, c));
            }
        }
    }
    let usable = candidates.len();
    if usable < MIN_NPS_BLOCKS {
        return None;
    }
    let keep = ((usable as f64 * FLAT_FRACTION).ceil() as usize).clamp(MIN_NPS_BLOCKS, usable);
    candidates.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Pass 2: the mean periodogram of the flattest.
    let mut nps = vec![0.0f64; n * n];
    let mut buf = vec![Complex::new(0.0, 0.0); n * n];
    let norm = (n * n) as f64;
    for &(_, s, r, c) in &candidates[..keep] {
        // Inside a usable window, so usable itself.
        read_detrended(&slices[s], (r, c), n, range, &mut block);
        for (b, v) in buf.iter_mut().zip(&block) {
            *b = Complex::new(*v, 0.0);
        }
        fft2(&mut buf, n, n, &fft, &fft);
        for (acc, z) in nps.iter_mut().zip(&buf) {
            *acc += z.norm_sqr() / norm / keep as f64;
        }
    }
    nps[0] = (nps[1] + nps[n - 1] + nps[n] + nps[(n - 1) * n]) / 4.0;
    let variance = nps.iter().sum::<f64>() / (n * n) as f64;
    if !(variance > 0.0 && variance.is_finite()) {
        return None;
    }
    // Autocovariance: inverse DFT of the NPS (real and even).
    let inv = planner.plan_fft_inverse(n);
    let mut acf: Vec<Complex<f64>> = nps.iter().map(|&v| Complex::new(v, 0.0)).collect();
    fft2(&mut acf, n, n, &inv, &inv);
    let radius = RADIUS.min(n / 2 - 1);
    let side = 2 * radius + 1;
    let mut correlation = vec![0.0; side * side];
    let r = radius as isize;
    for dy in -r..=r {
        for dx in -r..=r {
            let y = dy.rem_euclid(n as isize) as usize;
            let x = dx.rem_euclid(n as isize) as usize;
            // The periodogram's circular autocorrelation pairs only
            // (n - |dy|)(n - |dx|) of the n^2 pixel pairs at this lag.
            let pairs = (1.0 - dy.unsigned_abs() as f64 / n as f64)
                * (1.0 - dx.unsigned_abs() as f64 / n as f64);
            let v = acf[y * n + x].re / (n * n) as f64 / variance / pairs;
            correlation[(dy + r) as usize * side + (dx + r) as usize] = v;
        }
    }
    Some(NoiseCorrelation {
        sigma: variance.sqrt(),
        radius,
        correlation,
        blocks: keep,
        block: n,
    })
}

/// Draws `h x w` Gaussian noise patches with a given correlation and unit pixel
/// variance (see the module docs).
pub struct ColoredNoise {
    h: usize,
    w: usize,
    /// `sqrt(S_P)` per frequency, row-major.
    amplitude: Vec<f64>,
    rows: Arc<dyn Fft<f64>>,
    cols: Arc<dyn Fft<f64>>,
    rows_inv: Arc<dyn Fft<f64>>,
    cols_inv: Arc<dyn Fft<f64>>,
}

impl ColoredNoise {
    /// The sampler of `corr` on `h x w` patches (lags wrap around the patch).
    pub fn new(corr: &NoiseCorrelation, h: usize, w: usize) -> Self {
        let mut planner = FftPlanner::<f64>::new();
        let rows = planner.plan_fft_forward(w);
        let cols = planner.plan_fft_forward(h);
        let rows_inv = planner.plan_fft_inverse(w);
        let cols_inv = planner.plan_fft_inverse(h);
        let mut kernel = vec![Complex::new(0.0, 0.0); h * w];
        let r = corr.radius as isize;
        for dy in -r..=r {
            for dx in -r..=r {
                let y = dy.rem_euclid(h as isize) as usize;
                let x = dx.rem_euclid(w as isize) as usize;
                kernel[y * w + x].re += corr.at(dy, dx);
            }
        }
        fft2(&mut kernel, h, w, &rows, &cols);
        let mut spectrum: Vec<f64> = kernel.iter().map(|z| z.re.max(0.0)).collect();
        let mean = spectrum.iter().sum::<f64>() / (h * w) as f64;
        if mean > 0.0 {
            spectrum.iter_mut().for_each(|v| *v /= mean);
        } else {
            spectrum.iter_mut().for_each(|v| *v = 1.0);
        }
        Self {
            h,
            w,
            amplitude: spectrum.iter().map(|v| v.sqrt()).collect(),
            rows,
            cols,
            rows_inv,
            cols_inv,
        }
    }

    /// `count` patches, concatenated row-major (`count * h * w` values).
    pub fn sample(&self, count: usize, rng: &mut impl Rng) -> Vec<f32> {
        let (h, w) = (self.h, self.w);
        let mut out = Vec::with_capacity(count * h * w);
        let mut buf = vec![Complex::new(0.0, 0.0); h * w];
        let norm = (h * w) as f64;
        for _ in 0..count {
            for z in buf.iter_mut() {
                *z = Complex::new(StandardNormal.sample(rng), 0.0);
            }
            fft2(&mut buf, h, w, &self.rows, &self.cols);
            for (z, a) in buf.iter_mut().zip(&self.amplitude) {
                *z *= *a;
            }
            fft2(&mut buf, h, w, &self.rows_inv, &self.cols_inv);
            out.extend(buf.iter().map(|z| (z.re / norm) as f32));
        }
        out
    }
}
