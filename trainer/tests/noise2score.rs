//! Noise2Score: the Tweedie graphs against closed-form posteriors (and a numerical
//! posterior by quadrature), gradients through the composed graph, the AR-DAE loss
//! on a tiny run, the noise estimator, and bit-exact resume.

use std::path::Path;

use crate::common::{
    assert_same_files, column, fit_resumed, fit_stopped, metrics_without_time, opts,
    synthetic_dataset,
};

use candle_core::{DType, Device, Tensor, Var};
use ldct_proto::arch::{Arch, Node, Norm, Op, Preset, UnetConfig, ARCH_SCHEMA_VERSION, INPUT};
use ldct_proto::manifest::Method;
use ldct_train::model::{Init, Network};
use ldct_train::nn::gradcheck::check_gradients;
use ldct_train::train::config::SigmaSchedule;
use ldct_train::train::noise2score::{
    denoiser_for, denoiser_network, estimate_noise, Resolved, Tweedie,
};
use ldct_train::train::{fit, TrainConfig};
use ndarray::Array2;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

// ---------------------------------------------------------------------------
// Tweedie graphs against closed forms.

/// Digamma by recurrence up to 10 and the asymptotic series (|error| < 1e-13).
fn digamma(mut x: f64) -> f64 {
    let mut acc = 0.0;
    while x < 10.0 {
        acc -= 1.0 / x;
        x += 1.0;
    }
    let x2 = 1.0 / (x * x);
    acc + x.ln()
        - 0.5 / x
        - x2 * (1.0 / 12.0 - x2 * (1.0 / 120.0 - x2 * (1.0 / 252.0 - x2 * (1.0 / 240.0))))
}

/// A score "network" that is the piecewise-linear interpolant of `f` through the
/// knots (exact at the knots): `f(c_0) + sum_i w_i relu(y - c_i)` as two 1x1
/// convolutions around a ReLU.
fn interpolating_score(knots: &[f64], values: &[f64]) -> (Arch, Vec<(String, Vec<f64>)>) {
    let h = knots.len() - 1;
    let n = |name: &str, op: Op, inputs: &[&str]| Node {
        name: name.into(),
        op,
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
    };
    let conv = |cin, cout| Op::Conv2d {
        in_channels: cin,
        out_channels: cout,
        kernel: 1,
        stride: 1,
        padding: 0,
        dilation: 1,
        bias: true,
    };
    let arch = Arch {
        schema_version: ARCH_SCHEMA_VERSION,
        name: "interpolant".into(),
        preset: Preset::Custom,
        input_channels: 1,
        output_channels: 1,
        nodes: vec![
            n("hidden", conv(1, h), &[INPUT]),
            n("relu", Op::Relu, &["hidden"]),
            n("head", conv(h, 1), &["relu"]),
        ],
    };
    let slopes: Vec<f64> = (0..h)
        .map(|i| (values[i + 1] - values[i]) / (knots[i + 1] - knots[i]))
        .collect();
    let w: Vec<f64> = (0..h)
        .map(|i| {
            if i == 0 {
                slopes[0]
            } else {
                slopes[i] - slopes[i - 1]
            }
        })
        .collect();
    let params = vec![
        ("hidden.weight".to_string(), vec![1.0; h]),
        (
            "hidden.bias".to_string(),
            knots[..h].iter().map(|c| -c).collect(),
        ),
        ("head.weight".to_string(), w),
        ("head.bias".to_string(), vec![values[0]]),
    ];
    (arch, params)
}

/// Runs the deployable denoiser graph (score nodes + Tweedie nodes, as training
/// builds it) with the interpolated true score `r(y) = noise_scale * s_y(y)` on the
/// knots, in f64.
fn tweedie_graph(tweedie: Tweedie, noise_scale: f64, ys: &[f64], score_y: &[f64]) -> Vec<f64> {
    let r: Vec<f64> = score_y.iter().map(|s| noise_scale * s).collect();
    let (arch, params) = interpolating_score(ys, &r);
    let (score, den) = denoiser_for(arch, &tweedie, noise_scale, &Device::Cpu, DType::F64).unwrap();
    for (name, v) in params {
        let var = score.var(&name).unwrap();
        let t = Tensor::from_vec(v, var.dims(), &Device::Cpu).unwrap();
        var.set(&t).unwrap();
    }
    // The denoiser shares the score network's variables.
    assert_eq!(den.arch().nodes[0].name, "score.hidden");
    let x = Tensor::from_vec(ys.to_vec(), (1, 1, 1, ys.len()), &Device::Cpu).unwrap();
    den.forward_t(&x, false)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

/// `E[g(z) | obs]` by the midpoint rule over `[lo, hi]` for a log posterior
/// (unnormalised) `log_post(z)`.
fn quadrature(log_post: impl Fn(f64) -> f64, g: impl Fn(f64) -> f64, lo: f64, hi: f64) -> f64 {
    let n = 200_000;
    let dz = (hi - lo) / n as f64;
    let zs: Vec<f64> = (0..n).map(|i| lo + (i as f64 + 0.5) * dz).collect();
    let lp: Vec<f64> = zs.iter().map(|&z| log_post(z)).collect();
    let m = lp.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (mut num, mut den) = (0.0, 0.0);
    for (z, l) in zs.iter().zip(&lp) {
        let w = (l - m).exp();
        num += w * g(*z);
        den += w;
    }
    num / den
}

/// `out[i]` is E[x | ys[i]] for x ~ N(mu, tau^2), y = x + N(0, v): the closed form
/// mu + tau^2 / (tau^2 + v) (y - mu) to 1e-10, itself checked independently against
/// the posterior mean by quadrature to 1e-8.
fn assert_gaussian_posterior_mean(ys: &[f64], out: &[f64], mu: f64, tau: f64, v: f64) {
    for (y, x) in ys.iter().zip(out) {
        let expected = mu + tau * tau / (tau * tau + v) * (y - mu);
        let numeric = quadrature(
            |x| -(x - mu).powi(2) / (2.0 * tau * tau) - (y - x).powi(2) / (2.0 * v),
            |x| x,
            -3.0,
            3.0,
        );
        assert!((x - expected).abs() < 1e-10, "y {y}: {x} vs {expected}");
        assert!(
            (numeric - expected).abs() < 1e-8,
            "closed form {expected} vs quadrature {numeric}"
        );
    }
}

#[test]
fn gaussian_tweedie_is_the_posterior_mean_of_a_gaussian_prior() {
    // x ~ N(mu, tau^2), y = x + N(0, sigma^2): y ~ N(mu, tau^2 + sigma^2) and
    // E[x | y] = mu + tau^2 / (tau^2 + sigma^2) (y - mu).
    let (mu, tau, sigma) = (0.1, 0.3, 0.05);
    let ys: Vec<f64> = (0..50).map(|i| -0.9 + 1.8 * i as f64 / 49.0).collect();
    let score: Vec<f64> = ys
        .iter()
        .map(|y| -(y - mu) / (tau * tau + sigma * sigma))
        .collect();
    // A noise scale unlike sigma: the graph must undo its own parametrisation.
    let out = tweedie_graph(Tweedie::Gaussian { sigma }, 0.07, &ys, &score);
    assert_gaussian_posterior_mean(&ys, &out, mu, tau, sigma * sigma);
    // Not the identity: the prior pulls towards mu.
    assert!((out[0] - ys[0]).abs() > 1e-3);
}

#[test]
fn gaussian_tweedie_with_the_ardae_smoothing_is_exact_for_the_smoothed_score() {
    // The AR-DAE at sigma a learns the score of y + N(0, a^2): for x ~ N(mu, tau^2),
    // y = x + N(0, sigma^2), that is the score of N(mu, tau^2 + sigma^2 + a^2).
    // The step (sigma^2 + a^2) s gives E[x | y] under noise of variance
    // sigma^2 + a^2: mu + tau^2 / (tau^2 + sigma^2 + a^2) (y - mu).
    let (mu, tau, sigma, noise_scale) = (0.1, 0.3, 0.05, 0.07);
    let a = 0.8 * noise_scale;
    let v = sigma * sigma + a * a;
    let ys: Vec<f64> = (0..50).map(|i| -0.9 + 1.8 * i as f64 / 49.0).collect();
    let score: Vec<f64> = ys.iter().map(|y| -(y - mu) / (tau * tau + v)).collect();
    let resolved =
        crate::common::resolved_config(Tweedie::Gaussian { sigma }, noise_scale, a, None);
    let out = tweedie_graph(resolved.denoiser_tweedie(), noise_scale, &ys, &score);
    assert_gaussian_posterior_mean(&ys, &out, mu, tau, v);
    // Without smoothing the record gives the textbook step; other noise models are
    // left as resolved.
    let plain = Resolved {
        smoothing: 0.0,
        ..resolved.clone()
    };
    assert_eq!(plain.denoiser_tweedie(), Tweedie::Gaussian { sigma });
    let poisson = Resolved {
        tweedie: Tweedie::Poisson { eta: 0.01 },
        ..resolved
    };
    assert_eq!(poisson.denoiser_tweedie(), Tweedie::Poisson { eta: 0.01 });
}

#[test]
fn poisson_tweedie_matches_the_gamma_prior_posterior() {
    // t = eta k, k ~ Poisson(lambda), lambda ~ Gamma(alpha, rate beta); x_t = eta lambda.
    // Marginal k ~ NegBin: s_t(t) = (psi(k + alpha) - psi(k + 1) - ln(1 + beta)) / eta
    // (continuous in k); posterior lambda | k ~ Gamma(alpha + k, beta + 1), so
    // exp(E[ln x_t | k]) = eta exp(psi(alpha + k)) / (beta + 1). The Tweedie formula
    // (t + eta/2) exp(eta s_t) is that with psi(k + 1) ~ ln(k + 1/2): relative error
    // below 1 / (24 (k + 1/2)^2).
    let (eta, alpha, beta): (f64, f64, f64) = (0.01, 20.0, 0.4);
    let ks: Vec<f64> = (1..=99).map(f64::from).collect();
    let ts: Vec<f64> = ks.iter().map(|k| eta * k).collect();
    let ys: Vec<f64> = ts.iter().map(|t| 2.0 * t - 1.0).collect();
    let s_t: Vec<f64> = ks
        .iter()
        .map(|k| (digamma(k + alpha) - digamma(k + 1.0) - (1.0 + beta).ln()) / eta)
        .collect();
    // p_y(y) = p_t((y + 1) / 2) / 2, so s_y = s_t / 2.
    let s_y: Vec<f64> = s_t.iter().map(|s| s / 2.0).collect();
    let out = tweedie_graph(Tweedie::Poisson { eta }, 0.03, &ys, &s_y);
    for (i, k) in ks.iter().enumerate() {
        let x_t = (out[i] + 1.0) / 2.0;
        let formula = (ts[i] + eta / 2.0) * (eta * s_t[i]).exp();
        assert!(
            (x_t - formula).abs() < 1e-10 * formula,
            "k {k}: graph {x_t} vs formula {formula}"
        );
        let geometric = eta * digamma(alpha + k).exp() / (beta + 1.0);
        let numeric = eta
            * quadrature(
                |l: f64| (alpha + k - 1.0) * l.ln() - (beta + 1.0) * l,
                f64::ln,
                1e-9,
                200.0,
            )
            .exp();
        assert!(
            (numeric - geometric).abs() < 1e-6 * geometric,
            "closed form {geometric} vs quadrature {numeric}"
        );
        let rel = (x_t - geometric).abs() / geometric;
        let bound = 1.0 / (24.0 * (k + 0.5).powi(2));
        assert!(
            rel <= bound,
            "k {k}: relative error {rel:.3e} > {bound:.3e}"
        );
    }
}

#[test]
fn gamma_tweedie_is_exact_for_an_inverse_gamma_prior() {
    // t = x_t z, z ~ Gamma(k, rate k); w = 1 / x_t ~ Gamma(a, rate b). Marginal
    // p(t) ~ t^(k-1) (b + k t)^-(a+k), s_t = (k-1)/t - k (a+k) / (b + k t), and
    // w | t ~ Gamma(a + k, b + k t): 1 / E[1/x_t | t] = (b + k t) / (a + k).
    let (k, a, b) = (30.0, 5.0, 2.0);
    let ts: Vec<f64> = (0..60).map(|i| 0.05 + 0.94 * i as f64 / 59.0).collect();
    let ys: Vec<f64> = ts.iter().map(|t| 2.0 * t - 1.0).collect();
    let s_y: Vec<f64> = ts
        .iter()
        .map(|t| ((k - 1.0) / t - k * (a + k) / (b + k * t)) / 2.0)
        .collect();
    let out = tweedie_graph(Tweedie::Gamma { k }, 0.02, &ys, &s_y);
    for (i, t) in ts.iter().enumerate() {
        let x_t = (out[i] + 1.0) / 2.0;
        let expected = (b + k * t) / (a + k);
        let numeric = 1.0
            / quadrature(
                |w: f64| (a + k - 1.0) * w.ln() - (b + k * t) * w,
                |w| w,
                1e-9,
                80.0,
            );
        assert!(
            (x_t - expected).abs() < 1e-10 * expected,
            "t {t}: graph {x_t} vs {expected}"
        );
        assert!(
            (numeric - expected).abs() < 1e-6 * expected,
            "closed form {expected} vs quadrature {numeric}"
        );
    }
}

#[test]
fn gradients_flow_through_every_tweedie_graph() {
    let score = Arch::from_preset(&Preset::Unet(UnetConfig {
        base: 2,
        depth: 1,
        norm: Norm::Instance,
        tanh: false,
        global_residual: false,
        noise_map: false,
    }))
    .unwrap();
    for tweedie in [
        Tweedie::Gaussian { sigma: 0.05 },
        Tweedie::Poisson { eta: 0.02 },
        Tweedie::Gamma { k: 20.0 },
    ] {
        let (s, den) =
            denoiser_for(score.clone(), &tweedie, 0.5, &Device::Cpu, DType::F64).unwrap();
        for (i, (spec, var)) in s.parameters().enumerate() {
            if spec.name.ends_with(".bias") {
                let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64);
                let d = Normal::new(0.0, 0.1).unwrap();
                let v: Vec<f64> = (0..var.elem_count()).map(|_| d.sample(&mut rng)).collect();
                var.set(&Tensor::from_vec(v, var.dims(), &Device::Cpu).unwrap())
                    .unwrap();
            }
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let d = Normal::new(0.0, 0.4).unwrap();
        let xv: Vec<f64> = (0..2 * 8 * 8).map(|_| d.sample(&mut rng)).collect();
        let x =
            Var::from_tensor(&Tensor::from_vec(xv, (2, 1, 8, 8), &Device::Cpu).unwrap()).unwrap();
        let rv: Vec<f64> = (0..2 * 8 * 8).map(|_| d.sample(&mut rng)).collect();
        let r = Tensor::from_vec(rv, (2, 1, 8, 8), &Device::Cpu).unwrap();
        let params: Vec<(String, Var)> = den
            .parameters()
            .filter(|(s, _)| s.trainable())
            .map(|(s, v)| (s.name.clone(), v.clone()))
            .collect();
        assert!(params.iter().all(|(n, _)| n.starts_with("score.")));
        let mut vars: Vec<(&str, &Var)> = params.iter().map(|(n, v)| (n.as_str(), v)).collect();
        vars.push(("input", &x));
        let check = check_gradients(
            &vars,
            || (den.forward_t(&x, true)? * &r)?.sum_all(),
            1e-6,
            16,
        )
        .unwrap();
        eprintln!("{tweedie:?}: {check}");
        assert!(check.checked() > 100);
        assert!(check.passes(1e-7, 1e-5), "{tweedie:?}: {check}");
    }
}

#[test]
fn the_denoiser_shares_the_score_networks_variables() {
    let score_arch = Arch::from_preset(&Preset::Unet(UnetConfig {
        base: 2,
        depth: 1,
        tanh: false,
        global_residual: false,
        noise_map: false,
        ..Default::default()
    }))
    .unwrap();
    let score = Network::new(score_arch, &Device::Cpu, DType::F32, Init::default(), 3).unwrap();
    let den = denoiser_network(&score, &Tweedie::Gaussian { sigma: 0.1 }, 0.1).unwrap();
    let x = Tensor::rand(-1f32, 1f32, (1, 1, 8, 8), &Device::Cpu).unwrap();
    let before = den.forward_t(&x, false).unwrap();
    // Changing the score network's variables changes the denoiser.
    score.randomise_for_testing(7).unwrap();
    let after = den.forward_t(&x, false).unwrap();
    let diff = (before - &after)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff > 1e-3, "{diff}");
    // x + 0.1^2 / 0.1 * r: the graph is the score output scaled and added.
    let r = score.forward_t(&x, false).unwrap();
    let expected = (x + (r * 0.1).unwrap()).unwrap();
    let d = (expected - after)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d < 1e-5, "{d}");
}

// ---------------------------------------------------------------------------
// Estimator.

#[test]
fn haar_mad_estimates_recover_known_noise() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let clean = |r: usize, c: usize| {
        0.2 + 0.3 * ((r as f64 / 17.0).sin() * (c as f64 / 23.0).cos()) + 0.001 * c as f64
    };
    let n = 128;
    // Gaussian, sigma 0.05 (50 HU at [-1000, 1000]).
    let g = Normal::new(0.0, 0.05).unwrap();
    let slices: Vec<Array2<f32>> = (0..4)
        .map(|_| Array2::from_shape_fn((n, n), |(r, c)| (clean(r, c) + g.sample(&mut rng)) as f32))
        .collect();
    let e = estimate_noise(&slices, [-1000.0, 1000.0]).unwrap();
    assert!((e.sigma - 0.05).abs() < 0.05 * 0.05, "{e:?}");
    // Poisson on t = (y + 1) / 2 with eta 0.002.
    let eta = 0.002;
    let slices: Vec<Array2<f32>> = (0..4)
        .map(|_| {
            Array2::from_shape_fn((n, n), |(r, c)| {
                let t = (clean(r, c) + 1.0) / 2.0;
                let k = rand_distr::Poisson::new(t / eta).unwrap().sample(&mut rng);
                (2.0 * eta * k - 1.0) as f32
            })
        })
        .collect();
    let e = estimate_noise(&slices, [-1000.0, 1000.0]).unwrap();
    assert!((e.eta - eta).abs() < 0.08 * eta, "{e:?}");
    // Gamma on t with shape 400.
    let k = 400.0;
    let gamma = rand_distr::Gamma::new(k, 1.0 / k).unwrap();
    let slices: Vec<Array2<f32>> = (0..4)
        .map(|_| {
            Array2::from_shape_fn((n, n), |(r, c)| {
                let t = (clean(r, c) + 1.0) / 2.0 * gamma.sample(&mut rng);
                (2.0 * t - 1.0) as f32
            })
        })
        .collect();
    let e = estimate_noise(&slices, [-1000.0, 1000.0]).unwrap();
    assert!((e.k - k).abs() < 0.1 * k, "{e:?}");
    // Air and clipped pixels are left out: nothing usable, no estimate.
    let air = vec![Array2::from_elem((n, n), -1.0f32)];
    assert!(estimate_noise(&air, [-1000.0, 1000.0]).is_none());
}

// ---------------------------------------------------------------------------
// Training.

fn config(root: &Path, epochs: usize, extra: &str) -> TrainConfig {
    let text = format!(
        r#"
method = "noise2score"
seed = 5
[data]
root = "{}"
patch = 16
batch = 4
val_slices = 2
min_tissue = 0.0
prefetch = 2
[model]
generator = {{ kind = "unet", base = 4, depth = 2 }}
[optim]
lr = 0.002
beta1 = 0.9
[schedule]
epochs = {epochs}
steps_per_epoch = 10
decay_epochs = 1
[noise2score]
{extra}
"#,
        root.display()
    );
    TrainConfig::from_toml(&text).unwrap()
}

#[test]
fn ardae_loss_falls_and_the_run_folder_holds_a_plain_denoiser() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synthetic_dataset(&data);
    let run = tmp.path().join("run");
    // A fixed AR-DAE sigma (rho = 1): on flat regions the optimum loss is about
    // 1 - rho^2 / (1 + rho^2) = 0.5.
    let c = config(&data, 6, "schedule = \"fixed\"\nsigma_max = 1.0");
    let out = fit(&c, &opts(&run)).unwrap();
    assert_eq!(out.steps_done, 60);
    let loss = column(&run, "ardae");
    eprintln!("ardae per epoch: {loss:?}");
    assert_eq!(loss.len(), 6);
    assert!(loss[0] > 0.95, "{loss:?}");
    assert!(
        loss[5] < loss[0] - 0.1,
        "the AR-DAE loss did not fall: {loss:?}"
    );
    assert_eq!(column(&run, "rho"), vec![1.0; 6]);

    // The noise estimate (60 HU white noise; air and clipped blocks left out).
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
    let r = &record["method_record"];
    eprintln!("{r}");
    assert_eq!(r["tweedie"]["noise"], "gaussian");
    assert_eq!(r["parameter_source"], "estimated");
    let sigma_hu = r["sigma_hu"].as_f64().unwrap();
    assert!((sigma_hu - 60.0).abs() < 10.0, "{sigma_hu}");
    // The smoothing of the fixed rho = 1 is one noise scale (= sigma here).
    let scale = r["noise_scale"].as_f64().unwrap();
    let sigma = r["tweedie"]["sigma"].as_f64().unwrap();
    assert_eq!(scale, sigma);
    assert!(
        (r["smoothing"].as_f64().unwrap() - scale).abs() < 1e-12,
        "{r}"
    );
    let log = std::fs::read_to_string(run.join("train.log")).unwrap();
    assert!(log.contains("noise2score: {"), "{log}");

    // arch.json is the composed graph; it loads and denoises as any generator.
    let net = Network::load_dir(&run, &Device::Cpu, DType::F32).unwrap();
    assert!(net.arch().name.starts_with("noise2score_gaussian_unet"));
    assert_eq!(net.arch().preset, Preset::Custom);
    assert!(net
        .arch()
        .parameters()
        .iter()
        .all(|p| p.name.starts_with("score.")));
    let kinds: Vec<&str> = net.arch().nodes.iter().map(|n| n.op.kind()).collect();
    assert_eq!(&kinds[kinds.len() - 2..], &["affine", "add"]);
    // x = y + (sigma^2 + a^2) s = y + ((sigma^2 + a^2) / c) r = y + 2 sigma r.
    let step = &net.arch().nodes[kinds.len() - 2];
    match step.op {
        Op::Affine { scale: k, shift } => {
            assert!((k - 2.0 * sigma).abs() < 1e-12 * sigma, "{k} vs {sigma}");
            assert_eq!(shift, 0.0);
        }
        ref other => panic!("{other:?}"),
    }
    assert!(run.join("checkpoint/score/weights.safetensors").is_file());
    assert!(run.join("checkpoint/noise2score.json").is_file());
    let val = column(&run, "val_psnr");
    let input = column(&run, "val_input_psnr");
    eprintln!("val psnr {val:?}, input {input:?}");
    assert!(val.iter().all(|v| v.is_finite()));
}

#[test]
fn poisson_and_gamma_runs_use_their_graph_and_given_parameters() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synthetic_dataset(&data);
    for (extra, kinds) in [
        ("noise = \"poisson\"\neta = 0.001", ["mul", "affine"]),
        (
            "noise = \"gamma\"\nk = 300.0\nschedule = \"uniform\"",
            ["div", "affine"],
        ),
    ] {
        let run = tmp.path().join(extra.len().to_string());
        fit(&config(&data, 1, extra), &opts(&run)).unwrap();
        let record: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
        let r = &record["method_record"];
        assert_eq!(r["parameter_source"], "config", "{r}");
        // The scale still comes from the data.
        assert_eq!(r["noise_scale_source"], "estimated", "{r}");
        let net = Network::load_dir(&run, &Device::Cpu, DType::F32).unwrap();
        let k: Vec<&str> = net.arch().nodes.iter().map(|n| n.op.kind()).collect();
        assert_eq!(&k[k.len() - 2..], &kinds);
    }
}

#[test]
fn resume_continues_exactly_where_it_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synthetic_dataset(&data);
    for extra in [
        "schedule = \"annealed\"",
        "schedule = \"uniform\"\nantithetic = false",
    ] {
        let c = config(&data, 2, extra);
        let tag = extra.len();
        let whole = tmp.path().join(format!("whole{tag}"));
        fit(&c, &opts(&whole)).unwrap();
        let parts = tmp.path().join(format!("parts{tag}"));
        fit_stopped(&c, &parts, 7);
        fit_resumed(&parts, 20);
        assert_same_files(
            &whole,
            &parts,
            &[
                "weights.safetensors",
                "arch.json",
                "checkpoint/score/weights.safetensors",
                "checkpoint/optim.safetensors",
                "checkpoint/noise2score.json",
            ],
        );
        assert_eq!(metrics_without_time(&whole), metrics_without_time(&parts));
    }
}

#[test]
fn configuration_is_checked() {
    let bad = [
        "[noise2score]\nsigma = -1.0",
        "[noise2score]\nk = 1.0",
        "[noise2score]\nschedule = \"annealed\"\nsigma_min = 0.9",
        "[noise2score]\nschedule = \"fixed\"\nsigma_min = 0.0",
        "[noise2score]\nschedule = \"constant\"",
        "[noise2score]\nanneal_steps = 0",
        "[noise2score]\nsigmaa = 0.1",
        "[model]\ngenerator = { kind = \"redcnn\" }",
    ];
    for extra in bad {
        let text = format!("method = \"noise2score\"\n{extra}\n");
        assert!(TrainConfig::from_toml(&text).is_err(), "{extra} accepted");
    }
    let c = TrainConfig::from_toml("method = \"noise2score\"\n").unwrap();
    assert_eq!(c.method, Method::Noise2score);
    assert_eq!(c.noise2score.sigma_max, 0.5);
    assert_eq!(c.noise2score.sigma_min, 0.1);
    assert!(c.noise2score.antithetic);
    assert_eq!(c.noise2score.schedule, SigmaSchedule::Fixed);
    assert_eq!(TrainConfig::from_toml(&c.to_toml()).unwrap(), c);
    // fixed leaves sigma_min unused: it may exceed sigma_max.
    let f = TrainConfig::from_toml(
        "method = \"noise2score\"\n[noise2score]\nschedule = \"fixed\"\nsigma_max = 0.05\n",
    )
    .unwrap();
    assert_eq!(f.noise2score.schedule, SigmaSchedule::Fixed);
    assert_eq!(TrainConfig::from_toml(&f.to_toml()).unwrap(), f);
}
