//! A no-reference noise estimate in HU: robust sigma of a high-pass residual over flat
//! regions.
//!
//! Method (Immerkaer 1996, "Fast noise variance estimation", with a robust MAD scale and
//! a Sobel flatness mask in the spirit of Tai & Yang 2008):
//!
//! 1. Residual `r = k * hu` with `k = [[1,-2,1],[-2,4,-2],[1,-2,1]]` at interior pixels.
//!    `k` is the outer product of two second differences, so it cancels anything
//!    locally linear along rows or columns (including axis-aligned steps); for white
//!    Gaussian noise of sigma `s`, `r` is Gaussian with sigma `||k||_2 * s = 6 s`.
//! 2. Valid pixels: every value of the 3x3 neighbourhood lies in
//!    `[-900, 3000)` HU ([`AIR_HU`], [`CLIP_HU`]), which drops air, the outside of the
//!    body, the fill outside the reconstruction circle (-1024, -2000, -3024 HU...) and
//!    saturated values (3071 HU and up).
//! 3. Flat pixels: Sobel gradient magnitude `g <= FLAT_K * sqrt(12) * s` ([`FLAT_K`] =
//!    2) where `s` is the current estimate (`sqrt(12) s` is the sigma of each Sobel
//!    component under white noise; both components and `r` are uncorrelated, hence independent for Gaussian
//!    noise, so the selection does not bias `r`). Starting from all valid pixels, the
//!    estimate and the mask are refined [`ITERATIONS`] times.
//! 4. `s = 1.4826 * median(|r|) / 6` over the flat pixels (MAD scale: robust to the
//!    few edge pixels that stay in the mask).
//!
//! CT noise is spatially correlated, so on reconstructed images the result is the sigma
//! of white noise with the same high-frequency power: a consistent quantity for
//! comparing the same kind of images (e.g. before and after denoising), not the pixel
//! standard deviation of a uniform region.

use ndarray::Array2;

/// Neighbourhoods with any value below this (HU) are air / outside the body: skipped.
pub const AIR_HU: f32 = -900.0;
/// Neighbourhoods with any value at or above this (HU) are treated as clipped: skipped.
pub const CLIP_HU: f32 = 3000.0;
/// Flatness threshold in units of the Sobel component's noise sigma.
pub const FLAT_K: f32 = 2.0;
/// Refinements of the estimate and flat mask.
pub const ITERATIONS: usize = 3;
/// Fewer flat pixels than this gives no estimate.
pub const MIN_PIXELS: usize = 64;

/// `||k||_2` of the Immerkaer kernel.
const KERNEL_NORM: f32 = 6.0;
/// `1 / Phi^-1(3/4)`: MAD -> sigma for a Gaussian.
const MAD_TO_SIGMA: f32 = 1.4826;

/// The estimate with how much of the image supported it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NoiseEstimate {
    /// Noise sigma in HU.
    pub sigma_hu: f32,
    /// Flat pixels the final estimate used.
    pub pixels: usize,
    /// `pixels` as a fraction of the image.
    pub fraction: f32,
}

/// The noise sigma in HU of a CT slice (see the module docs), or `None` when the image is
/// smaller than 3x3 or has fewer than [`MIN_PIXELS`] flat, in-body pixels.
pub fn estimate_noise_hu(hu: &Array2<f32>) -> Option<f32> {
    estimate_noise(hu).map(|e| e.sigma_hu)
}

/// [`estimate_noise_hu`] with the number of pixels used.
pub fn estimate_noise(hu: &Array2<f32>) -> Option<NoiseEstimate> {
    let (h, w) = hu.dim();
    if h < 3 || w < 3 {
        return None;
    }
    let img = hu.as_standard_layout();
    let v = img.as_slice()?;
    let samples = valid_samples(v, h, w);
    if samples.len() < MIN_PIXELS {
        return None;
    }
    let mut abs_r: Vec<f32> = samples.iter().map(|s| s.0).collect();
    let mut sigma = robust_sigma(&mut abs_r);
    let mut used = abs_r.len();
    let sobel_sigma = 12f32.sqrt();
    for _ in 0..ITERATIONS {
        let thr = FLAT_K * sobel_sigma * sigma;
        abs_r.clear();
        abs_r.extend(samples.iter().filter(|s| s.1 <= thr).map(|s| s.0));
        if abs_r.len() < MIN_PIXELS {
            return None;
        }
        used = abs_r.len();
        sigma = robust_sigma(&mut abs_r);
    }
    Some(NoiseEstimate {
        sigma_hu: sigma,
        pixels: used,
        fraction: used as f32 / (h * w) as f32,
    })
}

/// Residual magnitude and Sobel magnitude of every valid interior pixel (its whole 3x3
/// neighbourhood in `[AIR_HU, CLIP_HU)`), row-major. Validity is one pass over the
/// pixels, then a 3-wide AND along rows and one across rows, instead of nine checks
/// per pixel; the arithmetic is the same, so are the values.
fn valid_samples(v: &[f32], h: usize, w: usize) -> Vec<(f32, f32)> {
    let ok: Vec<bool> = v.iter().map(|p| (AIR_HU..CLIP_HU).contains(p)).collect();
    // okh[i]: the pixel and its left and right neighbours are in range.
    let mut okh = vec![false; h * w];
    for y in 0..h {
        let row = y * w;
        for x in 1..w - 1 {
            let i = row + x;
            okh[i] = ok[i - 1] & ok[i] & ok[i + 1];
        }
    }
    let mut samples: Vec<(f32, f32)> = Vec::with_capacity((h - 2) * (w - 2));
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            let i = y * w + x;
            if !(okh[i - w] & okh[i] & okh[i + w]) {
                continue;
            }
            let n = [
                [v[i - w - 1], v[i - w], v[i - w + 1]],
                [v[i - 1], v[i], v[i + 1]],
                [v[i + w - 1], v[i + w], v[i + w + 1]],
            ];
            samples.push(residual_and_gradient(&n));
        }
    }
    samples
}

/// The sample of a 3x3 neighbourhood: |Laplacian-like residual| (the noise) and the
/// Sobel gradient magnitude (to leave out edges).
fn residual_and_gradient(n: &[[f32; 3]; 3]) -> (f32, f32) {
    let r = n[0][0] + n[0][2] + n[2][0] + n[2][2] - 2.0 * (n[0][1] + n[1][0] + n[1][2] + n[2][1])
        + 4.0 * n[1][1];
    let gx = (n[0][2] + 2.0 * n[1][2] + n[2][2]) - (n[0][0] + 2.0 * n[1][0] + n[2][0]);
    let gy = (n[2][0] + 2.0 * n[2][1] + n[2][2]) - (n[0][0] + 2.0 * n[0][1] + n[0][2]);
    (r.abs(), (gx * gx + gy * gy).sqrt())
}

/// `1.4826 * median(|r|) / 6` (reorders `abs_r`; must be non-empty).
fn robust_sigma(abs_r: &mut [f32]) -> f32 {
    let mid = abs_r.len() / 2;
    let (_, m, _) = abs_r.select_nth_unstable_by(mid, f32::total_cmp);
    MAD_TO_SIGMA * *m / KERNEL_NORM
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;

    /// The samples as first written: nine range checks per pixel (the reference for
    /// [`valid_samples`]).
    fn reference_samples(v: &[f32], h: usize, w: usize) -> Vec<(f32, f32)> {
        let mut samples = Vec::new();
        for y in 1..h - 1 {
            for x in 1..w - 1 {
                let at = |dy: usize, dx: usize| v[(y + dy - 1) * w + (x + dx - 1)];
                let n = [
                    [at(0, 0), at(0, 1), at(0, 2)],
                    [at(1, 0), at(1, 1), at(1, 2)],
                    [at(2, 0), at(2, 1), at(2, 2)],
                ];
                if n.iter().flatten().any(|&p| !(AIR_HU..CLIP_HU).contains(&p)) {
                    continue;
                }
                samples.push(residual_and_gradient(&n));
            }
        }
        samples
    }

    #[test]
    fn the_row_and_column_mask_gives_the_nine_check_samples_bit_for_bit() {
        let mut rng = StdRng::seed_from_u64(5);
        let noise = Normal::new(0.0f32, 25.0).unwrap();
        for (h, w) in [(3, 3), (3, 17), (17, 3), (64, 48), (131, 97)] {
            let mut img = phantom(h.max(w)).slice(ndarray::s![..h, ..w]).to_owned();
            img.mapv_inplace(|v| v + noise.sample(&mut rng));
            // Fill, saturation and NaN scattered through the body.
            for (k, v) in img.iter_mut().enumerate() {
                match k % 97 {
                    0 => *v = -2000.0,
                    1 => *v = 3071.0,
                    2 => *v = f32::NAN,
                    3 => *v = CLIP_HU,
                    4 => *v = AIR_HU,
                    _ => {}
                }
            }
            let v = img.as_slice().unwrap();
            let (a, b) = (valid_samples(v, h, w), reference_samples(v, h, w));
            assert_eq!(a.len(), b.len(), "{h}x{w}");
            for (x, y) in a.iter().zip(&b) {
                assert_eq!(
                    (x.0.to_bits(), x.1.to_bits()),
                    (y.0.to_bits(), y.1.to_bits())
                );
            }
        }
    }
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};

    /// Ellipses of soft tissue, fat, liver-like and bone HU inside a body on air.
    fn phantom(n: usize) -> Array2<f32> {
        // (centre x, centre y, semi-axis x, semi-axis y, HU), in units of n; later wins.
        let shapes = [
            (0.5, 0.5, 0.42, 0.33, 40.0),
            (0.35, 0.45, 0.10, 0.08, -100.0),
            (0.62, 0.55, 0.14, 0.10, 80.0),
            (0.50, 0.30, 0.05, 0.05, 700.0),
            (0.45, 0.66, 0.06, 0.04, 20.0),
            (0.70, 0.40, 0.03, 0.06, 1200.0),
        ];
        Array2::from_shape_fn((n, n), |(r, c)| {
            let (x, y) = ((c as f32 + 0.5) / n as f32, (r as f32 + 0.5) / n as f32);
            let mut v = -1000.0;
            for (cx, cy, ax, ay, hu) in shapes {
                let (dx, dy) = ((x - cx) / ax, (y - cy) / ay);
                if dx * dx + dy * dy <= 1.0 {
                    v = hu;
                }
            }
            v
        })
    }

    fn noisy(clean: &Array2<f32>, sigma: f32, seed: u64) -> Array2<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        let normal = Normal::new(0.0f32, sigma).unwrap();
        clean.mapv(|v| v + normal.sample(&mut rng))
    }

    #[test]
    fn noise_free_phantom_is_near_zero() {
        let clean = phantom(256);
        let e = estimate_noise(&clean).unwrap();
        assert!(e.sigma_hu < 1.0, "{e:?}");
        assert!(e.fraction > 0.2, "{e:?}");
    }

    #[test]
    fn recovers_known_sigma_within_ten_percent_and_is_monotone() {
        let clean = phantom(256);
        let mut last = 0.0;
        for (i, sigma) in [5.0f32, 10.0, 20.0, 40.0].into_iter().enumerate() {
            let est = estimate_noise_hu(&noisy(&clean, sigma, 7 + i as u64)).unwrap();
            let rel = (est - sigma).abs() / sigma;
            assert!(
                rel < 0.10,
                "sigma {sigma}: estimate {est} (rel err {rel:.3})"
            );
            assert!(est > last, "not monotone: {est} after {last}");
            last = est;
        }
    }

    #[test]
    fn real_head_ct_plus_known_noise() {
        // Cranium.inv3 (Debian invesalius-examples): a real 256x256 head CT.
        let path = crate::inv3::default_inv3_path().expect("Cranium.inv3 (invesalius-examples)");
        let vol = crate::inv3::read_inv3(&path).unwrap();
        let slice = vol.slice(54).hu;
        let base = estimate_noise(&slice).unwrap();
        assert!(base.sigma_hu > 0.5 && base.sigma_hu < 15.0, "{base:?}");
        for (i, sigma) in [10.0f32, 30.0].into_iter().enumerate() {
            let est = estimate_noise_hu(&noisy(&slice, sigma, 50 + i as u64)).unwrap();
            let want = (base.sigma_hu.powi(2) + sigma * sigma).sqrt();
            assert!(
                (est - want).abs() / want < 0.10,
                "+{sigma} HU: {est} vs {want}"
            );
        }
    }

    #[test]
    fn works_on_non_standard_layout_and_rejects_degenerate_images() {
        let img = noisy(&phantom(128), 10.0, 1);
        // A transposed (column-major) array gives the same as its row-major copy.
        let t = img.t().to_owned();
        let std = Array2::from_shape_vec(t.dim(), t.iter().copied().collect()).unwrap();
        assert!(std.is_standard_layout());
        let a = estimate_noise_hu(&t).unwrap();
        let b = estimate_noise_hu(&std).unwrap();
        assert_eq!(a, b);
        assert!((a - 10.0).abs() < 1.5, "{a}");
        assert_eq!(estimate_noise_hu(&Array2::zeros((2, 50))), None);
        assert_eq!(estimate_noise_hu(&Array2::zeros((6, 6))), None);
        // All air (or outside the reconstruction circle): nothing flat and in-body.
        assert_eq!(
            estimate_noise_hu(&Array2::from_elem((64, 64), -1024.0)),
            None
        );
        // Saturated values are skipped as well.
        assert_eq!(
            estimate_noise_hu(&Array2::from_elem((64, 64), 3071.0)),
            None
        );
    }
}
