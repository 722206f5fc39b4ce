//! The trainer draws noise levels by rescaling a pair's noise realisation
//! (`train::data`, `data.noise_hu`): `fd + s (qd - fd)` stands for the slice at dose
//! `dose / s^2`. Checked here against real simulations at those doses, on a real body
//! slice (pydicom's `CT_small.dcm`, a test fixture) with each kernel and both
//! geometries: the noise level, the noise power spectrum's shape (its mean frequency
//! and its power in four frequency bands) and the mean bias agree.

use ldct_train::dataset::noise_level_hu;
use ldct_train::simulate::{
    derive_seed, DoseModel, Filter, GeometrySpec, ImageGrid, SimConfig, Simulator,
};
use ndarray::Array2;
use rustfft::{num_complex::Complex, FftPlanner};

fn ct_small() -> (Array2<f32>, f64) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ct.npy");
    let spacing = ldct_testkit::run_python(
        r#"
import sys, numpy as np, pydicom
from pydicom.data import get_testdata_file
ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
np.save(sys.argv[1], hu.astype(np.float32))
print(float(ds.PixelSpacing[1]))
"#,
        &[out.to_str().unwrap()],
    );
    (
        ldct_imaging::npy::read_image(&out).unwrap(),
        spacing.trim().parse().unwrap(),
    )
}

/// Radially averaged noise power of `n` (mean removed) in `bands` equal bands of
/// radial frequency up to Nyquist, and the mean frequency (cycles / pixel).
fn nps_bands(n: &Array2<f32>, bands: usize) -> (Vec<f64>, f64) {
    let (h, w) = n.dim();
    let mean = n.iter().map(|&v| f64::from(v)).sum::<f64>() / n.len() as f64;
    let mut planner = FftPlanner::<f64>::new();
    let (fr, fc) = (planner.plan_fft_forward(w), planner.plan_fft_forward(h));
    let mut data: Vec<Complex<f64>> = n
        .iter()
        .map(|&v| Complex::new(f64::from(v) - mean, 0.0))
        .collect();
    for row in data.chunks_mut(w) {
        fr.process(row);
    }
    let mut col = vec![Complex::new(0.0, 0.0); h];
    for c in 0..w {
        for r in 0..h {
            col[r] = data[r * w + c];
        }
        fc.process(&mut col);
        for r in 0..h {
            data[r * w + c] = col[r];
        }
    }
    let mut power = vec![0f64; bands];
    let (mut sum_p, mut sum_fp) = (0f64, 0f64);
    for r in 0..h {
        for c in 0..w {
            let fy = (if r <= h / 2 {
                r as f64
            } else {
                r as f64 - h as f64
            }) / h as f64;
            let fx = (if c <= w / 2 {
                c as f64
            } else {
                c as f64 - w as f64
            }) / w as f64;
            let f = fx.hypot(fy);
            if f > 0.5 {
                continue;
            }
            let p = data[r * w + c].norm_sqr();
            power[((f / 0.5 * bands as f64) as usize).min(bands - 1)] += p;
            sum_p += p;
            sum_fp += f * p;
        }
    }
    let total: f64 = power.iter().sum();
    (power.iter().map(|p| p / total).collect(), sum_fp / sum_p)
}

#[test]
fn rescaled_noise_matches_real_simulations_at_lower_dose() {
    let (hu, spacing) = ct_small();
    let grid = ImageGrid::square(hu.nrows(), hu.ncols(), spacing).unwrap();
    let pool_dose = 0.25;
    for filter in [Filter::Ramp, Filter::SheppLogan, Filter::Hann] {
        for geometry in [GeometrySpec::default(), GeometrySpec::parallel()] {
            let config = SimConfig {
                geometry,
                dose_model: DoseModel::default(),
                dose: pool_dose,
                filter,
                mu_water: ldct_imaging::hu::MU_WATER_AAPM,
            };
            let sim = Simulator::new(config, grid).unwrap();
            let sino = sim.project(hu.view()).unwrap();
            let fd = sim.reconstruct(sino.view());
            let model = &sim.config().dose_model;
            let recon = |dose: f64, seed: u64| {
                sim.reconstruct(model.noisy(&sino, dose, seed).unwrap().view())
            };
            let pool = &recon(pool_dose, 1) - &fd;
            let sigma_pool = noise_level_hu(&fd, &(&fd + &pool)).unwrap();
            // 3x and 1/3 of the pool's noise: doses / 9 and x 9.
            for factor in [3.0f32, 1.0 / 3.0] {
                let dose = pool_dose / f64::from(factor * factor);
                // Average over realisations: one 128x128 slice is a small sample.
                let (mut real_sigma, mut real_bias) = (0f64, 0f64);
                let mut real_nps = vec![0f64; 4];
                let mut real_mean_f = 0f64;
                let k = 4;
                for seed in 0..k {
                    let q = recon(dose, derive_seed(99, seed));
                    let n = &q - &fd;
                    real_sigma += f64::from(noise_level_hu(&fd, &q).unwrap()) / k as f64;
                    real_bias += n.mean().map_or(0.0, f64::from) / k as f64;
                    let (b, f) = nps_bands(&n, 4);
                    for (a, v) in real_nps.iter_mut().zip(b) {
                        *a += v / k as f64;
                    }
                    real_mean_f += f / k as f64;
                }
                let scaled = pool.mapv(|v| v * factor);
                let scaled_sigma = f64::from(noise_level_hu(&fd, &(&fd + &scaled)).unwrap());
                let (scaled_nps, scaled_f) = nps_bands(&scaled, 4);
                let what = format!("{filter:?} {:?} x{factor:.2}", geometry.kind);
                let rel = scaled_sigma / real_sigma - 1.0;
                assert!(
                    rel.abs() < 0.08,
                    "{what}: rescaled noise {scaled_sigma:.2} HU vs real {real_sigma:.2} HU ({:+.1}%)",
                    rel * 100.0
                );
                assert!(
                    (scaled_f / real_mean_f - 1.0).abs() < 0.05,
                    "{what}: NPS mean frequency {scaled_f:.4} vs real {real_mean_f:.4}"
                );
                for (b, (s, r)) in scaled_nps.iter().zip(&real_nps).enumerate() {
                    assert!(
                        (s - r).abs() < 0.04,
                        "{what}: NPS band {b}: {s:.3} of the power vs real {r:.3}"
                    );
                }
                assert!(
                    real_bias.abs() < 0.1 * real_sigma,
                    "{what}: real low-dose bias {real_bias:.2} HU"
                );
                println!(
                    "{what}: sigma rescaled {scaled_sigma:.2} / real {real_sigma:.2} HU, NPS mean \
                     frequency {scaled_f:.4} / {real_mean_f:.4}, pool sigma {sigma_pool:.2}"
                );
            }
        }
    }
}
