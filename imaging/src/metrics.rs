//! Full-reference image quality in a stated HU window: PSNR, SSIM, RMSE.
//!
//! Papers disagree on windows and data ranges, so every figure here is tied to a
//! [`Window`]: both images are clipped to `[lo, hi]` HU and the data range is the
//! window width. The definitions follow scikit-image (`skimage.metrics`):
//!
//! - PSNR = 10 log10(range^2 / MSE) (`peak_signal_noise_ratio` with `data_range`);
//!   identical images give `+inf`.
//! - SSIM with an 11x11 Gaussian window (sigma 1.5, truncated at 3.5 sigma),
//!   K1 = 0.01, K2 = 0.03, population covariances, filtering with reflected
//!   (half-sample symmetric) borders, the mean taken over the image less a
//!   5-pixel border: `structural_similarity(gaussian_weights=True, sigma=1.5,
//!   use_sample_covariance=False, data_range=width)`.
//! - RMSE in HU of the clipped images.
//!
//! All arithmetic is in f64.

use ndarray::{Array2, Zip};
use serde::{Deserialize, Serialize};

use crate::error::{ImagingError, Result};
use crate::window::Window;

/// SSIM Gaussian sigma.
pub const SSIM_SIGMA: f64 = 1.5;
/// Gaussian truncation in sigmas (scikit-image's default): radius 5, window 11.
pub const SSIM_TRUNCATE: f64 = 3.5;
pub const SSIM_K1: f64 = 0.01;
pub const SSIM_K2: f64 = 0.03;

/// PSNR, SSIM and RMSE of one image against a reference in one window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    /// dB; `+inf` (serialised as `null`) for identical images.
    pub psnr: f64,
    pub ssim: f64,
    pub rmse_hu: f64,
    pub window: [f32; 2],
}

fn check_same(a: &Array2<f32>, b: &Array2<f32>) -> Result<()> {
    if a.dim() != b.dim() {
        return Err(ImagingError::SizeMismatch {
            a: a.dim(),
            b: b.dim(),
        });
    }
    if a.is_empty() {
        return Err(ImagingError::Invalid("cannot compare empty images".into()));
    }
    if !a.iter().chain(b.iter()).all(|v| v.is_finite()) {
        return Err(ImagingError::NonFinite);
    }
    Ok(())
}

fn clipped(a: &Array2<f32>, w: Window) -> Array2<f64> {
    a.mapv(|v| f64::from(w.clip(v)))
}

/// Mean squared error in HU^2 of the window-clipped images, optionally over a mask.
fn mse(
    reference: &Array2<f32>,
    test: &Array2<f32>,
    w: Window,
    mask: Option<&Array2<bool>>,
) -> Result<f64> {
    check_same(reference, test)?;
    let (mut sum, mut n) = (0.0f64, 0usize);
    match mask {
        Some(m) => {
            if m.dim() != reference.dim() {
                return Err(ImagingError::SizeMismatch {
                    a: reference.dim(),
                    b: m.dim(),
                });
            }
            Zip::from(reference)
                .and(test)
                .and(m)
                .for_each(|&r, &t, &keep| {
                    if keep {
                        let d = f64::from(w.clip(r)) - f64::from(w.clip(t));
                        sum += d * d;
                        n += 1;
                    }
                });
        }
        None => {
            Zip::from(reference).and(test).for_each(|&r, &t| {
                let d = f64::from(w.clip(r)) - f64::from(w.clip(t));
                sum += d * d;
            });
            n = reference.len();
        }
    }
    if n == 0 {
        return Err(ImagingError::Invalid("the mask selects no pixels".into()));
    }
    Ok(sum / n as f64)
}

fn psnr_from_mse(mse: f64, w: Window) -> f64 {
    let range = f64::from(w.width());
    10.0 * (range * range / mse).log10()
}

/// PSNR in dB of `test` against `reference`, both clipped to `window`, data range = window width.
pub fn psnr(reference: &Array2<f32>, test: &Array2<f32>, window: Window) -> Result<f64> {
    Ok(psnr_from_mse(mse(reference, test, window, None)?, window))
}

/// PSNR over the pixels where `mask` is true (e.g. inside a reconstruction circle).
pub fn psnr_masked(
    reference: &Array2<f32>,
    test: &Array2<f32>,
    window: Window,
    mask: &Array2<bool>,
) -> Result<f64> {
    Ok(psnr_from_mse(
        mse(reference, test, window, Some(mask))?,
        window,
    ))
}

/// Root mean squared error in HU of the window-clipped images.
pub fn rmse_hu(reference: &Array2<f32>, test: &Array2<f32>, window: Window) -> Result<f64> {
    Ok(mse(reference, test, window, None)?.sqrt())
}

/// The normalised 1-D Gaussian kernel (radius `int(truncate * sigma + 0.5)`).
pub fn gaussian_kernel(sigma: f64, truncate: f64) -> Vec<f64> {
    let radius = (truncate * sigma + 0.5) as i64;
    let mut k: Vec<f64> = (-radius..=radius)
        .map(|x| (-0.5 * (x * x) as f64 / (sigma * sigma)).exp())
        .collect();
    let s: f64 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= s);
    k
}

/// Index under half-sample symmetric reflection (`d c b a | a b c d | d c b a`).
#[inline]
fn reflect(i: i64, n: i64) -> usize {
    let period = 2 * n;
    let mut m = i.rem_euclid(period);
    if m >= n {
        m = period - 1 - m;
    }
    m as usize
}

/// Separable correlation with `kernel` along both axes, reflected borders.
pub fn gaussian_filter(img: &Array2<f64>, kernel: &[f64]) -> Array2<f64> {
    let (h, w) = img.dim();
    let r = (kernel.len() / 2) as i64;
    let mut tmp = Array2::<f64>::zeros((h, w));
    for y in 0..h {
        for x in 0..w {
            let mut acc = 0.0;
            for (k, &kv) in kernel.iter().enumerate() {
                let xx = reflect(x as i64 + k as i64 - r, w as i64);
                acc += kv * img[[y, xx]];
            }
            tmp[[y, x]] = acc;
        }
    }
    let mut out = Array2::<f64>::zeros((h, w));
    for y in 0..h {
        for (k, &kv) in kernel.iter().enumerate() {
            let yy = reflect(y as i64 + k as i64 - r, h as i64);
            let row = tmp.row(yy);
            let mut orow = out.row_mut(y);
            orow.zip_mut_with(&row, |o, &v| *o += kv * v);
        }
    }
    out
}

/// Mean SSIM (scikit-image conventions, see the module docs).
pub fn ssim(reference: &Array2<f32>, test: &Array2<f32>, window: Window) -> Result<f64> {
    check_same(reference, test)?;
    let kernel = gaussian_kernel(SSIM_SIGMA, SSIM_TRUNCATE);
    let win = kernel.len();
    let (h, w) = reference.dim();
    if h < win || w < win {
        return Err(ImagingError::Invalid(format!(
            "SSIM needs images of at least {win}x{win} pixels, got {h}x{w}"
        )));
    }
    let x = clipped(reference, window);
    let y = clipped(test, window);
    let ux = gaussian_filter(&x, &kernel);
    let uy = gaussian_filter(&y, &kernel);
    let uxx = gaussian_filter(&(&x * &x), &kernel);
    let uyy = gaussian_filter(&(&y * &y), &kernel);
    let uxy = gaussian_filter(&(&x * &y), &kernel);
    let range = f64::from(window.width());
    let c1 = (SSIM_K1 * range).powi(2);
    let c2 = (SSIM_K2 * range).powi(2);
    let pad = (win - 1) / 2;
    let mut sum = 0.0;
    for i in pad..h - pad {
        for j in pad..w - pad {
            let (mx, my) = (ux[[i, j]], uy[[i, j]]);
            let vx = uxx[[i, j]] - mx * mx;
            let vy = uyy[[i, j]] - my * my;
            let vxy = uxy[[i, j]] - mx * my;
            let num = (2.0 * mx * my + c1) * (2.0 * vxy + c2);
            let den = (mx * mx + my * my + c1) * (vx + vy + c2);
            sum += num / den;
        }
    }
    Ok(sum / ((h - 2 * pad) * (w - 2 * pad)) as f64)
}

/// PSNR, SSIM and RMSE in one window.
pub fn quality(reference: &Array2<f32>, test: &Array2<f32>, window: Window) -> Result<Quality> {
    Ok(Quality {
        psnr: psnr(reference, test, window)?,
        ssim: ssim(reference, test, window)?,
        rmse_hu: rmse_hu(reference, test, window)?,
        window: [window.lo, window.hi],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_matches_scipy_shape() {
        let k = gaussian_kernel(1.5, 3.5);
        assert_eq!(k.len(), 11);
        assert!((k.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(k[5] > k[4] && k[4] > k[3]);
    }

    #[test]
    fn reflect_is_half_sample_symmetric() {
        let idx: Vec<usize> = (-3..7).map(|i| reflect(i, 4)).collect();
        assert_eq!(idx, vec![2, 1, 0, 0, 1, 2, 3, 3, 2, 1]);
    }

    #[test]
    fn identical_and_known_cases() {
        let a = Array2::from_shape_fn((32, 32), |(i, j)| {
            (i as f32 * 37.0 + j as f32 * 11.0) % 900.0 - 400.0
        });
        assert_eq!(psnr(&a, &a, Window::FULL).unwrap(), f64::INFINITY);
        assert!((ssim(&a, &a, Window::FULL).unwrap() - 1.0).abs() < 1e-12);
        // A constant 20 HU offset: MSE 400, range 2000 -> 10 log10(4e6 / 400) = 40 dB.
        let b = a.mapv(|v| v + 20.0);
        assert!((psnr(&a, &b, Window::FULL).unwrap() - 40.0).abs() < 1e-9);
        assert!((rmse_hu(&a, &b, Window::FULL).unwrap() - 20.0).abs() < 1e-9);
        // Clipping: values beyond the window do not count.
        let c = a.mapv(|v| if v > 200.0 { 5000.0 } else { v });
        let d = a.mapv(|v| if v > 200.0 { 9000.0 } else { v });
        assert_eq!(psnr(&c, &d, Window::FULL).unwrap(), f64::INFINITY);
    }

    #[test]
    fn errors_are_clear() {
        let a = Array2::<f32>::zeros((16, 16));
        let b = Array2::<f32>::zeros((16, 17));
        assert!(matches!(
            psnr(&a, &b, Window::FULL),
            Err(ImagingError::SizeMismatch { .. })
        ));
        let mut n = a.clone();
        n[[3, 3]] = f32::NAN;
        assert!(matches!(
            psnr(&a, &n, Window::FULL),
            Err(ImagingError::NonFinite)
        ));
        let s = Array2::<f32>::zeros((8, 8));
        assert!(ssim(&s, &s, Window::FULL)
            .unwrap_err()
            .to_string()
            .contains("11x11"));
    }
}
