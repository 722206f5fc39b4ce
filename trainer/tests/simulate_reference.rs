//! The simulator against independent references: real CT slices read by pydicom,
//! scikit-image's `radon` / `iradon` run at test time in the project venv, and the
//! Poisson statistics of a water cylinder. No stored expected numbers.

use std::path::Path;

use ldct_imaging::metrics::psnr_masked;
use ldct_imaging::{npy, Window};
use ldct_train::simulate::{
    Detector, Fbp, Filter, Geometry, GeometrySpec, ImageGrid, ParallelGeometry, SimConfig,
    Simulator,
};
use ndarray::{s, Array2};

/// Dumps a pydicom test file as HU (`pixel_array * slope + intercept`), optionally
/// block-averaged by `factor`, and returns it with its pixel spacing (mm).
fn pydicom_hu(name: &str, factor: usize, dir: &Path) -> (Array2<f32>, f64) {
    let out = dir.join(format!("{name}.{factor}.npy"));
    let spacing = ldct_testkit::run_python(
        r#"
import sys, numpy as np, pydicom
from pydicom.data import get_testdata_file
name, factor, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ds = pydicom.dcmread(get_testdata_file(name))
hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
if factor > 1:
    hu = np.maximum(hu, -1000.0)
    r, c = hu.shape
    hu = hu.reshape(r // factor, factor, c // factor, factor).mean(axis=(1, 3))
np.save(out, hu.astype(np.float32))
print(float(ds.PixelSpacing[1]) * factor)
"#,
        &[name, &factor.to_string(), out.to_str().unwrap()],
    );
    let img = npy::read_image(&out).unwrap();
    (img, spacing.trim().parse().unwrap())
}

fn rel_l2(test: &Array2<f32>, reference: &Array2<f32>, mask: Option<&Array2<bool>>) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (idx, (&t, &r)) in test.indexed_iter().map(|(i, t)| (i, (t, &reference[i]))) {
        if mask.is_some_and(|m| !m[idx]) {
            continue;
        }
        num += ((t - r) as f64).powi(2);
        den += (r as f64).powi(2);
    }
    (num / den).sqrt()
}

#[test]
fn noise_free_round_trip_reproduces_real_ct_above_40_db() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        // pydicom's CT_small: 128x128 body slice (spine), 0.66 mm pixels.
        ("CT_small.dcm", 1usize),
        // pydicom-data's 512x512 head slice, averaged to 256x256 (0.96 mm).
        ("693_UNCR.dcm", 2usize),
    ];
    for (name, factor) in cases {
        let (hu, px) = pydicom_hu(name, factor, dir.path());
        let (rows, cols) = hu.dim();
        let grid = ImageGrid::square(rows, cols, px).unwrap();
        let mask = grid.circle_mask();
        let specs = [
            ("parallel", GeometrySpec::parallel()),
            ("fan equi-angular", GeometrySpec::fan(Detector::EquiAngular)),
            ("fan flat", GeometrySpec::fan(Detector::Flat)),
        ];
        for (label, spec) in specs {
            let config = SimConfig {
                geometry: spec,
                filter: Filter::Ramp,
                ..SimConfig::default()
            };
            let sim = Simulator::new(config, grid).unwrap();
            let fd = sim.round_trip(hu.view()).unwrap();
            let psnr = psnr_masked(&hu, &fd, Window::FULL, &mask).unwrap();
            println!(
                "{name} {rows}x{cols}, {label} ({} views, {} bins): PSNR {psnr:.2} dB in [-1000, 1000] HU inside the circle",
                sim.geometry().views(),
                sim.geometry().bins()
            );
            assert!(psnr >= 40.0, "{name} {label}: PSNR {psnr:.2} dB < 40 dB");
        }
    }
}

#[test]
fn parallel_beam_matches_skimage_radon_and_iradon() {
    let dir = tempfile::tempdir().unwrap();
    let (hu, px) = pydicom_hu("CT_small.dcm", 1, dir.path());
    // An odd size puts the centre on a pixel: (n - 1) / 2 == n // 2, the centre
    // scikit-image uses. Pad with air, keep only the inscribed circle (radon's
    // circle=True assumes zero outside it).
    let n = 129;
    let grid = ImageGrid::square(n, n, px).unwrap();
    let inside = grid.circle_mask();
    let mut mu = Array2::<f32>::zeros((n, n));
    mu.slice_mut(s![..128, ..128])
        .assign(&hu.mapv(|v| 0.0192 * (1.0 + v.max(-1000.0) / 1000.0)));
    mu.zip_mut_with(&inside, |v, &m| {
        if !m {
            *v = 0.0
        }
    });
    let views = 180;
    let geometry = Geometry::Parallel(ParallelGeometry {
        views,
        bins: n,
        pitch: px,
    });
    let sino = ldct_train::simulate::forward_project(mu.view(), &grid, &geometry);
    let fbp = Fbp::new(grid, geometry, Filter::Ramp);
    let recon = fbp.reconstruct(sino.view());

    let img_path = dir.path().join("mu.npy");
    let sino_path = dir.path().join("sino.npy");
    npy::write_image(&img_path, &mu).unwrap();
    npy::write_image(&sino_path, &sino).unwrap();
    let radon_path = dir.path().join("radon.npy");
    let iradon_path = dir.path().join("iradon.npy");
    ldct_testkit::run_python(
        r#"
import sys, numpy as np
from skimage.transform import radon, iradon
img, sino, views, px, radon_out, iradon_out = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5], sys.argv[6]
theta = np.arange(views) * 180.0 / views
image = np.load(img).astype(np.float64)
# radon works in pixel units: line integrals in mm are px times larger.
r = radon(image, theta=theta, circle=True) * px
np.save(radon_out, r.T.astype(np.float32))
ours = np.load(sino).astype(np.float64).T / px
rec = iradon(ours, theta=theta, filter_name="ramp", circle=True)
np.save(iradon_out, rec.astype(np.float32))
"#,
        &[
            img_path.to_str().unwrap(),
            sino_path.to_str().unwrap(),
            &views.to_string(),
            &px.to_string(),
            radon_path.to_str().unwrap(),
            iradon_path.to_str().unwrap(),
        ],
    );
    let sk_sino = npy::read_image(&radon_path).unwrap();
    assert_eq!(sk_sino.dim(), sino.dim());
    let e_sino = rel_l2(&sino, &sk_sino, None);
    // iradon zeroes pixels farther than n // 2 from the centre.
    let r = (n / 2) as f64;
    let c = (n as f64 - 1.0) / 2.0;
    let circle = Array2::from_shape_fn((n, n), |(i, j)| (i as f64 - c).hypot(j as f64 - c) <= r);
    let sk_rec = npy::read_image(&iradon_path).unwrap();
    let e_fbp = rel_l2(&recon, &sk_rec, Some(&circle));
    println!(
        "vs scikit-image ({views} views, {n} bins): sinogram relative L2 {e_sino:.2e}, ramp FBP relative L2 {e_fbp:.2e}"
    );
    assert!(e_sino < 0.01, "sinogram relative L2 {e_sino}");
    assert!(e_fbp < 0.01, "FBP relative L2 {e_fbp}");
}

#[test]
fn noise_std_doubles_at_quarter_dose_in_a_water_cylinder() {
    // 20 cm water cylinder in air, 128x128 at 1.8 mm.
    let n = 128;
    let px = 1.8;
    let grid = ImageGrid::square(n, n, px).unwrap();
    let c = (n as f64 - 1.0) / 2.0;
    let radius_at = |i: usize, j: usize| ((i as f64 - c) * px).hypot((j as f64 - c) * px);
    let phantom = Array2::from_shape_fn((n, n), |(i, j)| {
        if radius_at(i, j) <= 100.0 {
            0.0f32
        } else {
            -1000.0
        }
    });
    let roi = Array2::from_shape_fn((n, n), |(i, j)| radius_at(i, j) <= 60.0);
    let mut stds = Vec::new();
    for (dose, seed) in [(1.0, 11u64), (0.25, 12u64)] {
        let sim = Simulator::new(
            SimConfig {
                dose,
                ..SimConfig::default()
            },
            grid,
        )
        .unwrap();
        let pair = sim.pair(phantom.view(), seed).unwrap();
        let noise: Vec<f64> = pair
            .qd
            .indexed_iter()
            .filter(|(idx, _)| roi[*idx])
            .map(|(idx, &q)| (q - pair.fd[idx]) as f64)
            .collect();
        let mean = noise.iter().sum::<f64>() / noise.len() as f64;
        let std =
            (noise.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / noise.len() as f64).sqrt();
        println!("water cylinder, dose {dose}: noise std {std:.2} HU, mean {mean:.2} HU");
        assert!(mean.abs() < 0.2 * std, "noise is biased: mean {mean} HU");
        stds.push(std);
    }
    let ratio = stds[1] / stds[0];
    println!("noise std ratio dose 0.25 / dose 1: {ratio:.3} (expected 2)");
    assert!((ratio - 2.0).abs() <= 0.2, "ratio {ratio}");
}
