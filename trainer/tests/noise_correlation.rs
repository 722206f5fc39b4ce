//! Noise2Score's `correlated` noise model: the Tweedie step against the closed-form
//! posterior mean of a Gaussian prior under correlated Gaussian noise (dense linear
//! algebra on a small torus), the AR-DAE loss's minimiser, the coloured sampler's
//! covariance, and the flat-region NPS estimate under anatomy-like structure.

use std::path::Path;

use crate::common::{self, column, opts};

use candle_core::{DType, Device, Tensor};
use ldct_imaging::aapm::{self, Split};
use ldct_proto::arch::{Arch, Node, Op, Preset, ARCH_SCHEMA_VERSION, INPUT};
use ldct_train::model::{Init, Network};
use ldct_train::train::noise2score::{
    denoiser_for, estimate_noise, Noise2Score, Resolved, Tweedie,
};
use ldct_train::train::noise_correlation::{estimate_correlation, ColoredNoise, NoiseCorrelation};
use ldct_train::train::{fit, TrainConfig};
use ndarray::Array2;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

/// Side of the torus the closed forms are computed on.
const T: usize = 8;
const NPIX: usize = T * T;

/// Noise filter taps `(dy, dx, h)`: correlated noise is `h * white` (circular).
const NOISE_TAPS: [(isize, isize, f64); 4] =
    [(0, 0, 1.0), (0, 1, -0.35), (1, 0, 0.15), (1, 1, 0.1)];

/// The correlation of `h * white` at lag `(dy, dx)` (unit at lag 0).
fn filtered_correlation(taps: &[(isize, isize, f64)], dy: isize, dx: isize) -> f64 {
    let norm: f64 = taps.iter().map(|t| t.2 * t.2).sum();
    let mut s = 0.0;
    for &(y1, x1, h1) in taps {
        for &(y2, x2, h2) in taps {
            if y2 - y1 == dy && x2 - x1 == dx {
                s += h1 * h2;
            }
        }
    }
    s / norm
}

fn correlation_record(sigma: f64, radius: usize) -> NoiseCorrelation {
    let side = 2 * radius + 1;
    let r = radius as isize;
    let mut correlation = vec![0.0; side * side];
    for dy in -r..=r {
        for dx in -r..=r {
            correlation[(dy + r) as usize * side + (dx + r) as usize] =
                filtered_correlation(&NOISE_TAPS, dy, dx);
        }
    }
    NoiseCorrelation {
        sigma,
        radius,
        correlation,
        blocks: 0,
        block: 0,
    }
}

/// A dense circulant matrix on the `T x T` torus: `M[i][j] = f(lag j - i)`.
fn circulant(f: impl Fn(isize, isize) -> f64) -> Vec<Vec<f64>> {
    let mut m = vec![vec![0.0; NPIX]; NPIX];
    for (i, row) in m.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            let dy = ((j / T) as isize - (i / T) as isize).rem_euclid(T as isize);
            let dx = ((j % T) as isize - (i % T) as isize).rem_euclid(T as isize);
            // The smallest representative of the lag on the torus.
            let wrap = |d: isize| {
                if d > T as isize / 2 {
                    d - T as isize
                } else {
                    d
                }
            };
            *v = f(wrap(dy), wrap(dx));
        }
    }
    m
}

fn matmul(a: &[Vec<f64>], b: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let n = a.len();
    let mut c = vec![vec![0.0; n]; n];
    for i in 0..n {
        for k in 0..n {
            for j in 0..n {
                c[i][j] += a[i][k] * b[k][j];
            }
        }
    }
    c
}

fn add(a: &[Vec<f64>], b: &[Vec<f64>], s: f64) -> Vec<Vec<f64>> {
    a.iter()
        .zip(b)
        .map(|(ra, rb)| ra.iter().zip(rb).map(|(x, y)| x + s * y).collect())
        .collect()
}

/// Gauss-Jordan inverse with partial pivoting.
fn inverse(a: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let n = a.len();
    let mut m: Vec<Vec<f64>> = a
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut row = r.clone();
            row.extend((0..n).map(|j| if i == j { 1.0 } else { 0.0 }));
            row
        })
        .collect();
    for col in 0..n {
        let p = (col..n)
            .max_by(|&x, &y| m[x][col].abs().total_cmp(&m[y][col].abs()))
            .unwrap();
        m.swap(col, p);
        let d = m[col][col];
        assert!(d.abs() > 1e-12, "singular");
        m[col].iter_mut().for_each(|v| *v /= d);
        for r in 0..n {
            if r != col {
                let f = m[r][col];
                if f != 0.0 {
                    let pivot = m[col].clone();
                    m[r].iter_mut().zip(&pivot).for_each(|(v, p)| *v -= f * p);
                }
            }
        }
    }
    m.into_iter().map(|r| r[n..].to_vec()).collect()
}

fn apply(m: &[Vec<f64>], v: &[f64]) -> Vec<f64> {
    m.iter()
        .map(|r| r.iter().zip(v).map(|(a, b)| a * b).sum())
        .collect()
}

/// The prior's 3x3 smoothing kernel `g`: (dy, dx, weight).
const SMOOTHING: [(isize, isize, f64); 5] = [
    (0, 0, 0.5),
    (0, 1, 0.25),
    (1, 0, 0.25),
    (0, -1, 0.25),
    (-1, 0, 0.25),
];

/// The prior covariance `P = tau^2 (g * g) + eps I` with a 3x3 smoothing `g`
/// (circulant, positive definite).
fn prior_covariance(tau: f64) -> Vec<Vec<f64>> {
    let g = SMOOTHING;
    let gg = |dy: isize, dx: isize| {
        let mut s = 0.0;
        for &(y1, x1, a) in &g {
            for &(y2, x2, b) in &g {
                if y2 - y1 == dy && x2 - x1 == dx {
                    s += a * b;
                }
            }
        }
        s
    };
    circulant(|dy, dx| {
        tau * tau * gg(dy, dx)
            + if (dy, dx) == (0, 0) {
                0.02 * tau * tau
            } else {
                0.0
            }
    })
}

/// A "score network" that is the linear map `r(y) = W y + b` with `W` circulant
/// on the torus: one 15x15 convolution with zero padding 7 represents any such map
/// exactly on an 8x8 image (each lag `j - i` in [-7, 7] has its own tap).
fn linear_score(w: &[Vec<f64>], b: f64) -> (Arch, Vec<f64>, f64) {
    let k = 2 * T - 1;
    let pad = T - 1;
    let arch = Arch {
        schema_version: ARCH_SCHEMA_VERSION,
        name: "linear_score".into(),
        preset: Preset::Custom,
        input_channels: 1,
        output_channels: 1,
        nodes: vec![Node {
            name: "conv".into(),
            op: Op::Conv2d {
                in_channels: 1,
                out_channels: 1,
                kernel: k,
                stride: 1,
                padding: pad,
                dilation: 1,
                bias: true,
            },
            inputs: vec![INPUT.into()],
        }],
    };
    // out(i) = sum_m K(m) in(i + m - pad): K(m) = W[0][(m - pad) mod T] per axis.
    let mut kernel = vec![0.0; k * k];
    for my in 0..k {
        for mx in 0..k {
            let dy = (my as isize - pad as isize).rem_euclid(T as isize) as usize;
            let dx = (mx as isize - pad as isize).rem_euclid(T as isize) as usize;
            kernel[my * k + mx] = w[0][dy * T + dx];
        }
    }
    (arch, kernel, b)
}

fn set_params(net: &Network, kernel: &[f64], bias: f64, dtype: DType) {
    let k = 2 * T - 1;
    let var = net.var("conv.weight").unwrap();
    var.set(
        &Tensor::from_vec(kernel.to_vec(), (1, 1, k, k), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap(),
    )
    .unwrap();
    let var = net.var("conv.bias").unwrap();
    var.set(
        &Tensor::from_vec(vec![bias], 1, &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap(),
    )
    .unwrap();
}

/// `net` on `x` (f64), flattened.
fn forward_f64(net: &Network, x: &Tensor) -> Vec<f64> {
    net.forward_t(x, false)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

fn resolved(sigma: f64, noise_scale: f64, a: f64, corr: NoiseCorrelation) -> Resolved {
    common::resolved_config(Tweedie::Correlated { sigma }, noise_scale, a, Some(corr))
}

/// The closed-form quantities of the test model: `x ~ N(mu, P)`, `y = x + N(0,
/// sigma^2 C)`, AR-DAE smoothing `a` with the same correlation: `y~ ~ N(mu, P +
/// (sigma^2 + a^2) C)`.
struct Model {
    mu: f64,
    p: Vec<Vec<f64>>,
    c: Vec<Vec<f64>>,
    /// `(P + (sigma^2 + a^2) C)^-1`
    k_inv: Vec<Vec<f64>>,
}

impl Model {
    fn new(mu: f64, tau: f64, sigma: f64, a: f64) -> Self {
        let p = prior_covariance(tau);
        let c = circulant(|dy, dx| filtered_correlation(&NOISE_TAPS, dy, dx));
        let k_inv = inverse(&add(&p, &c, sigma * sigma + a * a));
        Self { mu, p, c, k_inv }
    }

    /// `r*(y) = c C grad log p(y) = -c C K^-1 (y - mu)` as `(W, b)`.
    fn preconditioned_score(&self, noise_scale: f64) -> (Vec<Vec<f64>>, f64) {
        let w: Vec<Vec<f64>> = matmul(&self.c, &self.k_inv)
            .into_iter()
            .map(|r| r.into_iter().map(|v| -noise_scale * v).collect())
            .collect();
        // Circulant: every row sums to the same value.
        let b = -self.mu * w[0].iter().sum::<f64>();
        (w, b)
    }

    /// `E[x | y] = mu + P K^-1 (y - mu)`.
    fn posterior_mean(&self, y: &[f64]) -> Vec<f64> {
        let centred: Vec<f64> = y.iter().map(|v| v - self.mu).collect();
        let g = apply(&matmul(&self.p, &self.k_inv), &centred);
        g.iter().map(|v| self.mu + v).collect()
    }
}

#[test]
fn correlated_tweedie_is_the_posterior_mean_under_correlated_noise() {
    let (mu, tau, sigma, noise_scale) = (0.05, 0.2, 0.06, 0.07);
    let a = 0.5 * noise_scale;
    let model = Model::new(mu, tau, sigma, a);
    let (w, b) = model.preconditioned_score(noise_scale);
    let (arch, kernel, bias) = linear_score(&w, b);
    let res = resolved(sigma, noise_scale, a, correlation_record(sigma, 2));
    let (score, den) = denoiser_for(
        arch,
        &res.denoiser_tweedie(),
        noise_scale,
        &Device::Cpu,
        DType::F64,
    )
    .unwrap();
    set_params(&score, &kernel, bias, DType::F64);
    assert!(den.arch().name.starts_with("noise2score_correlated"));
    let mut rng = StdRng::seed_from_u64(3);
    for _ in 0..4 {
        let y: Vec<f64> = (0..NPIX)
            .map(|_| mu + 0.3 * Distribution::<f64>::sample(&StandardNormal, &mut rng))
            .collect();
        // The score network reproduces the closed-form score.
        let t = Tensor::from_vec(y.clone(), (1, 1, T, T), &Device::Cpu).unwrap();
        let r = forward_f64(&score, &t);
        let r_ref: Vec<f64> = apply(&w, &y).iter().map(|v| v + b).collect();
        for (u, v) in r.iter().zip(&r_ref) {
            assert!((u - v).abs() < 1e-10, "score {u} vs {v}");
        }
        let out = forward_f64(&den, &t);
        let expected = model.posterior_mean(&y);
        let err = out
            .iter()
            .zip(&expected)
            .map(|(u, v)| (u - v).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-9, "max |Tweedie - posterior mean| = {err}");
        // Not the identity.
        let moved = out
            .iter()
            .zip(&y)
            .map(|(u, v)| (u - v).abs())
            .fold(0.0, f64::max);
        assert!(moved > 1e-3);
    }
    // The white-noise step with the same pixel sigma is not the posterior mean here.
    let (_, den_white) = denoiser_for(
        linear_score(&w, b).0,
        &Tweedie::Gaussian {
            sigma: sigma.hypot(a),
        },
        noise_scale,
        &Device::Cpu,
        DType::F64,
    )
    .unwrap();
    assert_eq!(den_white.arch().nodes.len(), den.arch().nodes.len());
}

/// The AR-DAE loss of `ardae_loss` on `batch` for the linear score `(w, b)`.
fn ardae_loss_of(w: &[Vec<f64>], b: f64, res: &Resolved, batch: &Tensor, seed: u64) -> f64 {
    let (arch, kernel, bias) = linear_score(w, b);
    let score = Network::new(arch, &Device::Cpu, DType::F64, Init::default(), 0).unwrap();
    set_params(&score, &kernel, bias, DType::F64);
    let mut config = TrainConfig::default();
    config.noise2score.antithetic = false;
    config.noise2score.sigma_max = 0.5;
    let n2s = Noise2Score::new(score, &config, res.clone()).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let (loss, rho) = n2s.ardae_loss(batch, 0, &mut rng).unwrap();
    assert_eq!(rho, 0.5);
    loss.to_scalar::<f64>().unwrap()
}

#[test]
fn ardae_loss_is_minimised_by_the_preconditioned_score() {
    // Low-dose images y = x + sigma C^{1/2} w; the AR-DAE perturbs them by
    // a C^{1/2} u (a = 0.5 c). Its loss E || rho r(y + a C^{1/2} u) + C^{1/2} u ||^2
    // is minimised by r* = c C grad log p_{y~} (what the correlated Tweedie step
    // expects), not by the white-noise AR-DAE's c grad log p_{y + a u}.
    let (mu, tau, sigma) = (0.05, 0.2, 0.06);
    let noise_scale = sigma;
    let a = 0.5 * noise_scale;
    let model = Model::new(mu, tau, sigma, a);
    let corr = correlation_record(sigma, 2);
    let res = resolved(sigma, noise_scale, a, corr.clone());
    // Samples of y: prior by P^{1/2} is awkward densely; use x = mu + tau (g * z) +
    // sqrt(0.02) tau z' (covariance P exactly) and noise from the sampler itself.
    let mut rng = StdRng::seed_from_u64(17);
    let count = 512;
    let g = SMOOTHING;
    let noise = ColoredNoise::new(&corr, T, T).sample(count, &mut rng);
    let mut ys = Vec::with_capacity(count * NPIX);
    for n in 0..count {
        let z: Vec<f64> = (0..NPIX).map(|_| StandardNormal.sample(&mut rng)).collect();
        for i in 0..NPIX {
            let (r, c) = ((i / T) as isize, (i % T) as isize);
            let mut smooth = 0.0;
            for &(dy, dx, h) in &g {
                let j = (r - dy).rem_euclid(T as isize) as usize * T
                    + (c - dx).rem_euclid(T as isize) as usize;
                smooth += h * z[j];
            }
            let nugget: f64 = StandardNormal.sample(&mut rng);
            let x = mu + tau * smooth + (0.02f64).sqrt() * tau * nugget;
            ys.push(x + sigma * f64::from(noise[n * NPIX + i]));
        }
    }
    let batch = Tensor::from_vec(ys, (count, 1, T, T), &Device::Cpu).unwrap();
    let (w_star, b_star) = model.preconditioned_score(noise_scale);
    let best = ardae_loss_of(&w_star, b_star, &res, &batch, 99);
    // The white-noise AR-DAE's minimiser: -c (P + sigma^2 C + a^2 I)^-1 (y~ - mu).
    let eye = circulant(|dy, dx| if (dy, dx) == (0, 0) { 1.0 } else { 0.0 });
    let k_white = inverse(&add(&add(&model.p, &model.c, sigma * sigma), &eye, a * a));
    let w_white: Vec<Vec<f64>> = k_white
        .iter()
        .map(|r| r.iter().map(|v| -noise_scale * v).collect())
        .collect();
    let b_white = -mu * w_white[0].iter().sum::<f64>();
    let white = ardae_loss_of(&w_white, b_white, &res, &batch, 99);
    assert!(
        best < white,
        "preconditioned {best} vs white-noise optimum {white}"
    );
    for s in [0.9, 1.1] {
        let w: Vec<Vec<f64>> = w_star
            .iter()
            .map(|r| r.iter().map(|v| s * v).collect())
            .collect();
        let other = ardae_loss_of(&w, s * b_star, &res, &batch, 99);
        assert!(best < other, "scale {s}: {other} vs {best}");
    }
}

#[test]
fn coloured_noise_has_the_requested_correlation() {
    let corr = correlation_record(1.0, 3);
    let (h, w) = (32, 24);
    let sampler = ColoredNoise::new(&corr, h, w);
    let mut rng = StdRng::seed_from_u64(5);
    let count = 400;
    let v = sampler.sample(count, &mut rng);
    assert_eq!(v.len(), count * h * w);
    let at = |n: usize, r: usize, c: usize| f64::from(v[n * h * w + (r % h) * w + (c % w)]);
    for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (1, -1), (2, 3)] {
        let mut s = 0.0;
        for n in 0..count {
            for r in 0..h {
                for c in 0..w {
                    let r2 = (r as isize + dy).rem_euclid(h as isize) as usize;
                    let c2 = (c as isize + dx).rem_euclid(w as isize) as usize;
                    s += at(n, r, c) * at(n, r2, c2);
                }
            }
        }
        let empirical = s / (count * h * w) as f64;
        let want = filtered_correlation(&NOISE_TAPS, dy, dx);
        assert!(
            (empirical - want).abs() < 0.015,
            "lag ({dy}, {dx}): {empirical} vs {want}"
        );
    }
}

/// A 128x128 head-like slice in HU: a soft-tissue disc with a bone ring, darker and
/// brighter inserts, a texture band and a gradient, plus correlated noise of pixel
/// sigma `sigma_hu` (the filter `NOISE_TAPS`, applied here by direct convolution).
fn anatomy_slice(seed: u64, sigma_hu: f64) -> Array2<f32> {
    let n = 128;
    let mut rng = StdRng::seed_from_u64(seed);
    let white: Vec<f64> = (0..(n + 2) * (n + 2))
        .map(|_| StandardNormal.sample(&mut rng))
        .collect();
    let norm = NOISE_TAPS.iter().map(|t| t.2 * t.2).sum::<f64>().sqrt();
    let shift = seed as f64;
    Array2::from_shape_fn((n, n), |(r, c)| {
        let (y, x) = (r as f64 - 63.5, c as f64 - 63.5);
        let d = (x * x + y * y).sqrt();
        let mut hu = 30.0 + 0.2 * x;
        if (54.0..60.0).contains(&d) {
            hu = 900.0;
        }
        if ((x - 15.0 - shift).powi(2) + (y + 10.0).powi(2)).sqrt() < 9.0 {
            hu = 5.0;
        }
        if ((x + 20.0).powi(2) + (y - 18.0 + shift).powi(2)).sqrt() < 6.0 {
            hu = 250.0;
        }
        if (-40.0..-25.0).contains(&y) {
            hu += 25.0 * (x / 3.0).sin();
        }
        let mut noise = 0.0;
        for &(dy, dx, h) in &NOISE_TAPS {
            let rr = (r as isize + 1 - dy) as usize;
            let cc = (c as isize + 1 - dx) as usize;
            noise += h * white[rr * (n + 2) + cc];
        }
        (hu + sigma_hu * noise / norm) as f32
    })
}

#[test]
fn flat_region_estimate_recovers_correlated_noise_under_anatomy() {
    let window = [-1400.0f32, 1400.0];
    let half = f64::from(window[1] - window[0]) / 2.0;
    let sigma_hu = 25.0;
    let slices: Vec<Array2<f32>> = (0..6)
        .map(|i| {
            anatomy_slice(i, sigma_hu)
                .mapv(|v| 2.0 * (v - window[0]) / (window[1] - window[0]) - 1.0)
        })
        .collect();
    let e = estimate_correlation(&slices, window, -900.0).unwrap();
    let sigma = e.sigma * half;
    assert!(
        (sigma - sigma_hu).abs() < 0.05 * sigma_hu,
        "sigma {sigma} HU vs {sigma_hu}"
    );
    for (dy, dx) in [(0, 1), (1, 0), (1, 1), (1, -1), (0, 2)] {
        let want = filtered_correlation(&NOISE_TAPS, dy, dx);
        let got = e.at(dy, dx);
        assert!(
            (got - want).abs() < 0.04,
            "lag ({dy}, {dx}): {got} vs {want}"
        );
    }
    assert!((e.at(0, 0) - 1.0).abs() < 1e-12);
    // The Haar MAD estimate is the sigma of white noise with the same finest-scale
    // power: off by more than 10 % here, within 10 % once divided by sqrt(gain)
    // (the ring's edges inflate its MAD a little).
    let haar = estimate_noise(&slices, window).unwrap().sigma * half;
    assert!((haar - sigma_hu).abs() > 0.1 * sigma_hu, "haar {haar}");
    let consistent = haar / e.haar_gain().sqrt();
    assert!(
        (consistent - sigma_hu).abs() < 0.1 * sigma_hu,
        "{consistent}"
    );
    // Nothing flat enough inside the window: no estimate.
    let air = vec![Array2::from_elem((64, 64), -1.0f32)];
    assert!(estimate_correlation(&air, window, -900.0).is_none());
}

fn correlated_dataset(root: &Path) {
    for i in 0..6u64 {
        let low = anatomy_slice(10 + i, 40.0);
        let full = anatomy_slice(10 + i, 0.0);
        let split = if i < 4 { Split::Train } else { Split::Test };
        aapm::write_pair(root, split, &format!("{i:04}"), &full, &low).unwrap();
    }
}

/// The shared tiny config with `noise = "correlated"`, at [-1400, 1400] HU (the
/// synthetic anatomy's noise is then never clipped).
fn correlated_config(root: &Path) -> TrainConfig {
    let mut config =
        common::tiny_config("noise2score", root, "[noise2score]\nnoise = \"correlated\"");
    config.data.window = [-1400.0, 1400.0];
    config.validate().unwrap();
    config
}

#[test]
fn a_correlated_run_records_its_estimate_and_exports_a_plain_graph() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    correlated_dataset(&data);
    // Too small a patch for the correlation's lags is refused up front.
    let config = correlated_config(&data);
    let mut small = config.clone();
    small.data.patch = 8;
    let err = small.validate().unwrap_err().to_string();
    assert!(err.contains("data.patch must be at least 15"), "{err}");
    let run = tmp.path().join("run");
    let out = fit(&config, &opts(&run)).unwrap();
    assert_eq!(out.steps_done, 12);
    assert!(column(&run, "ardae").iter().all(|v| v.is_finite()));
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
    let resolved: Resolved = serde_json::from_value(record["method_record"].clone()).unwrap();
    let corr = resolved.correlation.clone().expect("correlation recorded");
    let Tweedie::Correlated { sigma } = resolved.tweedie else {
        panic!("{:?}", resolved.tweedie)
    };
    // 40 HU at [-1400, 1400].
    let sigma_hu = sigma * 1400.0;
    assert!((sigma_hu - 40.0).abs() < 3.0, "{sigma_hu}");
    assert!((corr.at(0, 1) - filtered_correlation(&NOISE_TAPS, 0, 1)).abs() < 0.05);
    assert_eq!(resolved.noise_scale, sigma);
    assert!(
        record["dose"].to_string().contains("correlated"),
        "{}",
        record["dose"]
    );
    // The deployable graph holds only the ops every other denoiser uses.
    let arch: Arch =
        serde_json::from_str(&std::fs::read_to_string(run.join("arch.json")).unwrap()).unwrap();
    assert!(
        arch.name.starts_with("noise2score_correlated"),
        "{}",
        arch.name
    );
    assert!(arch.nodes.iter().any(|n| n.name == "tweedie.step"));
}
