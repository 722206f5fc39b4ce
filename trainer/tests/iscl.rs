//! ISCL (`method = "iscl"`) end to end on a tiny synthetic dataset: its losses
//! fall, `--max-steps` + `--resume` reproduces an uninterrupted run bit for bit,
//! the deployed generator is exactly `gamma * F(y) + (1 - gamma) * (y - H(y))`
//! over F's and H's current weights (in memory and from the run folder, through
//! `eval`), and configuration errors name the field.

use crate::common;
use std::path::Path;

use crate::common::{
    assert_same_files, column, fit_resumed, fit_stopped, metrics_without_time, opts,
    synthetic_dataset,
};

use candle_core::{DType, Device, Tensor};
use ldct_proto::arch::{Arch, Preset, ResnetConfig, UnetConfig};
use ldct_proto::manifest::Method as MethodKind;
use ldct_train::model::{Init, Network};
use ldct_train::train::iscl::{bypass_ramp, denoiser, Iscl};
use ldct_train::train::{fit, load_generator, Method, TrainConfig};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

/// The shared tiny config with `method = "iscl"` and `extra` appended.
fn tiny_config(root: &Path, extra: &str) -> TrainConfig {
    common::tiny_config("iscl", root, extra)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn random_input(shape: (usize, usize, usize, usize), seed: u64) -> Tensor {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let d = Normal::new(0.0f32, 0.5).unwrap();
    let n = shape.0 * shape.1 * shape.2 * shape.3;
    let v: Vec<f32> = (0..n).map(|_| d.sample(&mut rng)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// `gamma * F(y) + (1 - gamma) * (y - H(y))` from the parts (inference mode).
fn from_parts(f: &Network, h: &Network, y: &Tensor, gamma: f64) -> Tensor {
    let fy = f.forward_any_size(y).unwrap();
    let hy = h.forward_any_size(y).unwrap();
    let bypass = (y - hy).unwrap();
    ((fy * gamma).unwrap() + (bypass * (1.0 - gamma)).unwrap()).unwrap()
}

#[test]
fn iscl_losses_fall_and_the_checkpoint_holds_every_network() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synthetic_dataset(&data);
    let run = tmp.path().join("run");
    let mut config = tiny_config(&data, "");
    config.schedule.epochs = 4;
    let out = fit(&config, &opts(&run)).unwrap();
    assert_eq!((out.steps_done, out.total_steps), (16, 16));
    for name in [
        "g_total", "cycle", "bypass", "d_full", "d_low", "h_pseudo", "h_noise",
    ] {
        let l = column(&run, name);
        assert_eq!(l.len(), 4, "{name}");
        assert!(l.iter().all(|v| v.is_finite()), "{name}: {l:?}");
        assert!(l[3] < l[0], "{name} did not fall: {l:?}");
    }
    // No identity term unless it is asked for.
    assert!(column(&run, "identity").iter().all(|v| *v == 0.0));
    for f in ["f_low2full", "g_full2low", "h_noise", "d_full", "d_low"] {
        assert!(
            run.join("checkpoint")
                .join(f)
                .join("weights.safetensors")
                .is_file(),
            "{f}"
        );
    }
    for f in ["optim_g", "optim_d", "optim_h"] {
        assert!(run
            .join("checkpoint")
            .join(format!("{f}.safetensors"))
            .is_file());
    }
    // The run's model is the composed denoiser, named as such.
    let arch = std::fs::read_to_string(run.join("arch.json")).unwrap();
    let arch = Arch::from_json(&arch).unwrap();
    assert!(arch.name.starts_with("iscl_"), "{}", arch.name);
    assert!(matches!(arch.preset, Preset::Custom));
    let back = TrainConfig::from_file(&run.join("train.toml")).unwrap();
    assert_eq!(back, config);
}

#[test]
fn iscl_resume_continues_exactly_where_it_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synthetic_dataset(&data);
    // A pool, so that its state has to survive the checkpoint too.
    let config = tiny_config(&data, "[iscl]\npool_size = 6\n");
    let whole = tmp.path().join("whole");
    fit(&config, &opts(&whole)).unwrap();
    let parts = tmp.path().join("parts");
    fit_stopped(&config, &parts, 6);
    // The pool was written (it is not empty after 6 steps).
    assert!(parts.join("checkpoint/pool_full.safetensors").is_file());
    fit_resumed(&parts, 12);
    assert_same_files(
        &whole,
        &parts,
        &[
            "weights.safetensors",
            "arch.json",
            "checkpoint/f_low2full/weights.safetensors",
            "checkpoint/g_full2low/weights.safetensors",
            "checkpoint/h_noise/weights.safetensors",
            "checkpoint/d_full/weights.safetensors",
            "checkpoint/d_low/weights.safetensors",
            "checkpoint/optim_g.safetensors",
            "checkpoint/optim_d.safetensors",
            "checkpoint/optim_h.safetensors",
            "checkpoint/pool_full.safetensors",
            "checkpoint/pool_low.safetensors",
        ],
    );
    assert_eq!(metrics_without_time(&whole), metrics_without_time(&parts));
}

fn random_net(preset: &Preset, seed: u64) -> Network {
    let net = Network::new(
        Arch::from_preset(preset).unwrap(),
        &Device::Cpu,
        DType::F32,
        Init::default(),
        seed,
    )
    .unwrap();
    net.randomise_for_testing(seed).unwrap();
    net
}

/// F (ResNet ngf 4, 1 block) and H (U-Net base 4, depth 2, no tanh or global
/// residual) with trained-looking weights, for the denoiser tests.
fn tiny_f_and_h() -> (Network, Network) {
    let g_preset = Preset::Resnet(ResnetConfig {
        ngf: 4,
        n_blocks: 1,
        ..ResnetConfig::default()
    });
    let h_preset = Preset::Unet(UnetConfig {
        base: 4,
        depth: 2,
        tanh: false,
        global_residual: false,
        ..UnetConfig::default()
    });
    (random_net(&g_preset, 11), random_net(&h_preset, 12))
}

#[test]
fn the_denoiser_is_the_weighted_sum_of_f_and_the_bypass_over_live_weights() {
    let (f, h) = tiny_f_and_h();
    let y = random_input((2, 1, 16, 16), 1);
    for gamma in [0.5, 0.3] {
        let d = denoiser(&f, &h, gamma).unwrap();
        assert_eq!(
            d.arch().parameter_count(),
            f.arch().parameter_count() + h.arch().parameter_count()
        );
        assert!(d
            .parameters()
            .all(|(s, _)| s.name.starts_with("f.") || s.name.starts_with("h.")));
        let got = d.forward_any_size(&y).unwrap();
        let want = from_parts(&f, &h, &y, gamma);
        let diff = max_abs_diff(&got, &want);
        assert!(diff < 1e-5, "gamma {gamma}: {diff}");
        // Not trivially F or the bypass alone.
        assert!(max_abs_diff(&got, &f.forward_any_size(&y).unwrap()) > 1e-3);
    }
    // The denoiser shares F's and H's variables: changing them changes it.
    let d = denoiser(&f, &h, 0.5).unwrap();
    let before = d.forward_any_size(&y).unwrap();
    let head = h.var("head.conv.bias").unwrap();
    head.set(&(head.as_tensor() + 0.25).unwrap()).unwrap();
    let after = d.forward_any_size(&y).unwrap();
    // (y - H) moves by -0.25, weighted 0.5.
    let shift = (&before - &after).unwrap().mean_all().unwrap();
    assert!((shift.to_scalar::<f32>().unwrap() - 0.125).abs() < 1e-5);
    assert!(max_abs_diff(&after, &from_parts(&f, &h, &y, 0.5)) < 1e-5);
    // Any input size (padded and cropped as every model).
    let odd = random_input((1, 1, 19, 22), 2);
    let diff = max_abs_diff(
        &d.forward_any_size(&odd).unwrap(),
        &from_parts(&f, &h, &odd, 0.5),
    );
    assert!(diff < 1e-5, "{diff}");
}

/// At gamma 1 the denoiser is F alone and at gamma 0 the bypass estimate alone: the
/// network with weight 0 is left out of the graph and its variables out of the model
/// (nothing to compute or ship for it), and the output is still the weighted sum.
#[test]
fn the_denoiser_leaves_out_the_network_weighted_zero() {
    let (f, h) = tiny_f_and_h();
    let y = random_input((2, 1, 16, 16), 1);
    for (gamma, kept, params) in [
        (1.0, "f.", f.arch().parameter_count()),
        (0.0, "h.", h.arch().parameter_count()),
    ] {
        let d = denoiser(&f, &h, gamma).unwrap();
        assert_eq!(d.arch().parameter_count(), params, "gamma {gamma}");
        assert!(d.parameters().all(|(s, _)| s.name.starts_with(kept)));
        assert!(d
            .arch()
            .nodes
            .iter()
            .all(|n| n.name.starts_with(kept) || n.name.starts_with("iscl.")));
        assert_eq!(d.arch().output_node(), "iscl.output");
        let diff = max_abs_diff(
            &d.forward_any_size(&y).unwrap(),
            &from_parts(&f, &h, &y, gamma),
        );
        assert!(diff < 1e-5, "gamma {gamma}: {diff}");
    }
}

#[test]
fn the_method_trains_what_the_generator_computes() {
    // After a step through the Method trait, the generator still equals the
    // parts (the step updates the shared variables in place).
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny_config(tmp.path(), "");
    let g_preset = config.model.generator.clone();
    let h_preset = config.iscl.extractor_preset(&g_preset).unwrap();
    let d_preset = config.model.discriminator.clone();
    let f = random_net(&g_preset, 1);
    let h = random_net(&h_preset, 3);
    let mut m = Iscl::new(
        f,
        random_net(&g_preset, 2),
        h,
        random_net(&d_preset, 4),
        random_net(&d_preset, 5),
        &config,
    )
    .unwrap();
    let y = random_input((1, 1, 16, 16), 9);
    let before = m.generator().forward_any_size(&y).unwrap();
    let low = random_input((4, 1, 16, 16), 7);
    let full = random_input((4, 1, 16, 16), 8);
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let losses = m.step(&low, &full, 1e-3, &mut rng).unwrap();
    assert_eq!(losses.len(), m.loss_names().len());
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    let after = m.generator().forward_any_size(&y).unwrap();
    assert!(
        max_abs_diff(&before, &after) > 1e-6,
        "the step changed nothing"
    );
    let want = from_parts(m.f(), m.h(), &y, 0.5);
    assert!(max_abs_diff(&after, &want) < 1e-5);
}

#[test]
fn the_run_folder_model_is_the_composed_denoiser_and_eval_reads_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synthetic_dataset(&data);
    let run = tmp.path().join("run");
    let mut config = tiny_config(&data, "[iscl]\ngamma = 0.4\n");
    config.schedule.epochs = 1;
    fit(&config, &opts(&run)).unwrap();
    let (net, _) = load_generator(&run).unwrap();
    let f = Network::load_dir(run.join("checkpoint/f_low2full"), &Device::Cpu, DType::F32).unwrap();
    let h = Network::load_dir(run.join("checkpoint/h_noise"), &Device::Cpu, DType::F32).unwrap();
    let y = random_input((1, 1, 24, 20), 4);
    let diff = max_abs_diff(
        &net.forward_any_size(&y).unwrap(),
        &from_parts(&f, &h, &y, 0.4),
    );
    assert!(diff < 1e-5, "{diff}");

    let bin = env!("CARGO_BIN_EXE_ldct-train");
    let out = std::process::Command::new(bin)
        .args(["eval", "--run", run.to_str().unwrap()])
        .args(["--data", data.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ev: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("eval.json")).unwrap()).unwrap();
    assert!(ev["psnr_-1000_1000"].as_f64().unwrap().is_finite(), "{ev}");
}

#[test]
fn iscl_configuration_defaults_and_errors_name_the_field() {
    let c = TrainConfig::from_toml("method = \"iscl\"\n").unwrap();
    assert_eq!(c.method, MethodKind::Iscl);
    assert_eq!(
        (
            c.iscl.lambda_cycle,
            c.iscl.lambda_bypass,
            c.iscl.lambda_boost,
            c.iscl.gamma,
            c.iscl.pool_size
        ),
        (30.0, 30.0, 1.0, 0.5, 0)
    );
    assert!(c.iscl.extractor.is_none());
    assert_eq!(c.iscl.bypass_warmup, 0);
    assert_eq!(c.iscl.lambda_identity, 0.0);
    // The bypass ramp: 0 at the first step, linear, the full weight from `warmup` on.
    assert_eq!(bypass_ramp(30.0, 0, 0), 30.0);
    assert_eq!(bypass_ramp(30.0, 1000, 0), 0.0);
    assert_eq!(bypass_ramp(30.0, 1000, 250), 7.5);
    assert_eq!(bypass_ramp(30.0, 1000, 1000), 30.0);
    assert_eq!(bypass_ramp(30.0, 1000, 5000), 30.0);
    // The default extractor is the generator without tanh and global residual.
    match c.iscl.extractor_preset(&c.model.generator).unwrap() {
        Preset::Resnet(r) => {
            assert!(!r.tanh && !r.global_residual);
            assert_eq!((r.ngf, r.n_blocks), (32, 6));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(TrainConfig::from_toml(&c.to_toml()).unwrap(), c);
    let c = TrainConfig::from_toml(
        "method = \"iscl\"\n[iscl]\nextractor = { kind = \"unet\", base = 8, depth = 2, tanh = false, global_residual = false }\n",
    )
    .unwrap();
    assert!(matches!(c.iscl.extractor, Some(Preset::Unet(ref u)) if u.base == 8));
    assert_eq!(TrainConfig::from_toml(&c.to_toml()).unwrap(), c);

    for (toml, field) in [
        ("[iscl]\nlambda = 3.0\n", "lambda"),
        ("[iscl]\ngamma = 1.5\n", "iscl.gamma"),
        ("[iscl]\nlambda_bypass = -1.0\n", "iscl.lambda_bypass"),
        ("[iscl]\nlambda_cycle = nan\n", "iscl.lambda_cycle"),
        ("[iscl]\nlambda_identity = -5.0\n", "iscl.lambda_identity"),
        (
            "[iscl]\nextractor = { kind = \"resnet\", ngf = 4, n_blocks = 1 }\n",
            "iscl.extractor",
        ),
        (
            "[iscl]\nextractor = { kind = \"patchgan\" }\n",
            "iscl.extractor",
        ),
        (
            "[model]\ngenerator = { kind = \"redcnn\", filters = 4, kernel = 3 }\n",
            "iscl.extractor",
        ),
        (
            "[model]\ndiscriminator = { kind = \"unet\" }\n",
            "model.discriminator",
        ),
    ] {
        let e = TrainConfig::from_toml(&format!("method = \"iscl\"\n{toml}")).unwrap_err();
        assert!(e.to_string().contains(field), "{toml}: {e}");
    }
    // The ISCL fields are only checked for ISCL runs.
    assert!(TrainConfig::from_toml("[iscl]\ngamma = 1.5\n").is_ok());
}

#[test]
fn iscl_identity_term_is_trained_when_weighted() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synthetic_dataset(&data);
    let run = tmp.path().join("run");
    let mut config = tiny_config(&data, "[iscl]\nlambda_identity = 5.0\n");
    config.schedule.epochs = 4;
    fit(&config, &opts(&run)).unwrap();
    let l = column(&run, "identity");
    assert!(l.iter().all(|v| v.is_finite() && *v > 0.0), "{l:?}");
    assert!(l[3] < l[0], "identity did not fall: {l:?}");
}

/// Mean |F(y) - y| over the test slices for the F of a finished run, the slices
/// normalised as the run's data pipeline does.
fn f_moved(run: &Path, config: &TrainConfig) -> f32 {
    let f = Network::load_dir(run.join("checkpoint/f_low2full"), &Device::Cpu, DType::F32).unwrap();
    let norm = ldct_train::train::data::normaliser(config.data.window).unwrap();
    let mut total = 0.0;
    let mut n = 0;
    let pairs = ldct_imaging::aapm::list_pairs(
        config.data.root.as_deref().unwrap(),
        ldct_imaging::aapm::Split::Test,
    )
    .unwrap();
    for pair in &pairs {
        let (_full, low) = ldct_imaging::aapm::load_pair(pair, None).unwrap();
        let (h, w) = low.dim();
        let mut y = low.into_raw_vec_and_offset().0;
        norm.forward_inplace(&mut y);
        let y = Tensor::from_vec(y, (1, 1, h, w), &Device::Cpu).unwrap();
        let fy = f.forward_any_size(&y).unwrap();
        total += (fy - &y)
            .unwrap()
            .abs()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        n += 1;
    }
    total / n as f32
}

/// The bypass warm-up's reason to exist: with zero heads, F starts at the
/// identity and H at zero, where the bypass term `|F(y) - (y - H(y))|` is an L1
/// identity penalty of weight 30 on the noisy images, so F stays pinned there
/// (the first ISCL config's failure); ramping that weight in lets the
/// adversarial and cycle terms move F first.
#[test]
fn the_bypass_warmup_lets_f_leave_the_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synthetic_dataset(&data);
    let moved = |extra: &str, name: &str| {
        let mut config = tiny_config(&data, extra);
        config.model.zero_head = true;
        config.schedule.epochs = 6;
        let run = tmp.path().join(name);
        fit(&config, &opts(&run)).unwrap();
        f_moved(&run, &config)
    };
    let pinned = moved("", "pinned");
    let warm = moved("[iscl]\nbypass_warmup = 1000\n", "warm");
    eprintln!("mean |F(y) - y|: no warm-up {pinned}, warm-up {warm}");
    assert!(warm > 3.0 * pinned, "warm-up {warm} vs none {pinned}");
}
