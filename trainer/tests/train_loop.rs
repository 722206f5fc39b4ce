//! The training loop end to end on a tiny synthetic dataset: each method's loss
//! falls, `--max-steps` + `--resume` reproduces an uninterrupted run bit for bit,
//! the run folder holds its files, and the CLI's fit / eval / denoise work.

use crate::common;
use std::path::Path;

use crate::common::{
    assert_same_files, column, fit_resumed, fit_stopped, metrics_without_time, opts,
    synthetic_dataset,
};

use ldct_proto::manifest::Method;
use ldct_train::train::{fit, FitOptions, TrainConfig};

/// The shared tiny config of `method` with nothing appended.
fn tiny_config(method: Method, root: &Path) -> TrainConfig {
    common::tiny_config(method, root, "")
}

#[test]
fn supervised_loss_falls_and_the_run_folder_is_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synthetic_dataset(&data);
    let run = tmp.path().join("run");
    let out = fit(&tiny_config(Method::Supervised, &data), &opts(&run)).unwrap();
    assert_eq!(
        (out.steps_done, out.total_steps, out.interrupted),
        (12, 12, false)
    );
    let loss = column(&run, "loss");
    assert_eq!(loss.len(), 3);
    assert!(loss[2] < loss[0] * 0.8, "loss did not fall: {loss:?}");
    let val = column(&run, "val_psnr");
    assert_eq!(val.len(), 3);
    for f in [
        "train.toml",
        "run.json",
        "arch.json",
        "weights.safetensors",
        "metrics.csv",
        "loss.png",
        "train.log",
        "samples/epoch_0003.png",
        "checkpoint/state.json",
        "checkpoint/optim.safetensors",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    // The resolved configuration reproduces the run's configuration.
    let back = TrainConfig::from_file(&run.join("train.toml")).unwrap();
    assert_eq!(back, tiny_config(Method::Supervised, &data));
    // A second fit into the same folder is refused.
    let e = fit(&tiny_config(Method::Supervised, &data), &opts(&run)).unwrap_err();
    assert!(e.to_string().contains("--resume"), "{e}");
}

#[test]
fn cyclegan_losses_fall() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synthetic_dataset(&data);
    let run = tmp.path().join("run");
    let mut config = tiny_config(Method::Cyclegan, &data);
    config.schedule.epochs = 4;
    fit(&config, &opts(&run)).unwrap();
    for name in ["g_total", "d_full", "d_low"] {
        let l = column(&run, name);
        assert_eq!(l.len(), 4);
        assert!(l[3] < l[0], "{name} did not fall: {l:?}");
    }
    for f in ["g_low2full", "f_full2low", "d_full", "d_low"] {
        assert!(run
            .join("checkpoint")
            .join(f)
            .join("weights.safetensors")
            .is_file());
    }
}

#[test]
fn cyclegan_with_highpass_discriminators_trains_through_the_view() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synthetic_dataset(&data);
    let mut config = tiny_config(Method::Cyclegan, &data);
    config.schedule.epochs = 4;
    let image_run = tmp.path().join("image");
    fit(&config, &opts(&image_run)).unwrap();
    config.model.d_view = ldct_train::train::disc_view::DiscView::Highpass;
    let hp_run = tmp.path().join("highpass");
    fit(&config, &opts(&hp_run)).unwrap();
    for name in ["g_total", "d_full", "d_low"] {
        let l = column(&hp_run, name);
        assert!(l[3] < l[0], "{name} did not fall: {l:?}");
    }
    // Same seed and data: only the discriminators' input differs, so the losses must.
    assert_ne!(column(&hp_run, "d_full"), column(&image_run, "d_full"));
    // The view is recorded in the run's resolved configuration.
    let toml = std::fs::read_to_string(hp_run.join("train.toml")).unwrap();
    assert!(toml.contains("d_view = \"highpass\""), "{toml}");
}

#[test]
fn resume_continues_exactly_where_it_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synthetic_dataset(&data);
    for method in [Method::Supervised, Method::Cyclegan] {
        let config = tiny_config(method, &data);
        let whole = tmp.path().join(format!("{method}-whole"));
        fit(&config, &opts(&whole)).unwrap();
        // Stopped mid-epoch (step 6 of 12), then resumed.
        let parts = tmp.path().join(format!("{method}-parts"));
        fit_stopped(&config, &parts, 6);
        fit_resumed(&parts, 12);
        let mut files = vec!["weights.safetensors"];
        if method == Method::Cyclegan {
            files.extend([
                "checkpoint/f_full2low/weights.safetensors",
                "checkpoint/d_full/weights.safetensors",
                "checkpoint/optim_d.safetensors",
                "checkpoint/pool_full.safetensors",
            ]);
        } else {
            files.push("checkpoint/optim.safetensors");
        }
        assert_same_files(&whole, &parts, &files);
        assert_eq!(metrics_without_time(&whole), metrics_without_time(&parts));
    }
}

#[test]
fn resume_without_a_checkpoint_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let e = fit(
        &TrainConfig::default(),
        &FitOptions {
            resume: true,
            ..opts(tmp.path())
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("train.toml"), "{e}");
}

#[test]
fn cli_fit_eval_denoise() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synthetic_dataset(&data);
    let config = tmp.path().join("tiny.toml");
    std::fs::write(&config, tiny_config(Method::Supervised, &data).to_toml()).unwrap();
    let run = tmp.path().join("run");
    let bin = env!("CARGO_BIN_EXE_ldct-train");
    let ok = |args: &[&str]| {
        let out = std::process::Command::new(bin).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let run_s = run.to_str().unwrap();
    let data_s = data.to_str().unwrap();
    ok(&[
        "fit",
        "--config",
        config.to_str().unwrap(),
        "--run",
        run_s,
        "--quiet",
        "--max-steps",
        "5",
    ]);
    ok(&["fit", "--resume", "--run", run_s, "--quiet"]);
    let table = ok(&["eval", "--run", run_s, "--data", data_s, "--quiet"]);
    assert!(
        table.contains("| [-1000, 1000] | low-dose input |"),
        "{table}"
    );
    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("eval.json")).unwrap()).unwrap();
    assert!(eval["psnr_-1000_1000"].as_f64().unwrap().is_finite());
    assert!(eval["input"]["psnr_-160_240"].as_f64().unwrap().is_finite());
    assert_eq!(eval["eval_slices"], 2);
    let csv = std::fs::read_to_string(run.join("eval.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3);
    let out = tmp.path().join("den.npy");
    let input = data.join("test/qd/0004.npy");
    ok(&[
        "denoise",
        "--run",
        run_s,
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let den = ldct_imaging::npy::read_image(&out).unwrap();
    assert_eq!(den.dim(), (32, 32));
    assert!(den.iter().all(|v| v.is_finite()));
    // A bad configuration names its field.
    std::fs::write(&config, "[data]\npatch = 3\n").unwrap();
    let out = std::process::Command::new(bin)
        .args([
            "fit",
            "--config",
            config.to_str().unwrap(),
            "--run",
            tmp.path().join("r2").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("data.patch"));
}

#[test]
fn zero_head_starts_the_generator_at_the_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synthetic_dataset(&data);
    let run = tmp.path().join("run");
    let mut config = tiny_config(Method::Cyclegan, &data);
    config.model.zero_head = true;
    // Zero steps of training are impossible; one step with a tiny lr keeps the
    // generator within a hair of the identity, while the default init does not.
    config.optim.lr = 1e-9;
    config.schedule = ldct_train::train::config::ScheduleConfig {
        epochs: 1,
        steps_per_epoch: 1,
        decay_epochs: 0,
        checkpoint_every: 1,
    };
    fit(&config, &opts(&run)).unwrap();
    let val = column(&run, "val_psnr")[0];
    let input = column(&run, "val_input_psnr")[0];
    assert!((val - input).abs() < 0.01, "{val} vs {input}");
    let run2 = tmp.path().join("run2");
    config.model.zero_head = false;
    fit(&config, &opts(&run2)).unwrap();
    let val2 = column(&run2, "val_psnr")[0];
    assert!((val2 - input).abs() > 0.01, "{val2} vs {input}");
}

/// Why `configs/cyclegan-resnet.toml` sets `long_skip`: CycleGAN's ResNet generator
/// reaches the head only through its quarter-resolution trunk, and trained with
/// paired data (no adversary) from the zero-head identity it does not learn to
/// remove pixel-scale noise; the long skip (stem + last up stage) gives the head a
/// full-resolution path, and the same training then denoises.
#[test]
fn the_resnet_long_skip_lets_a_supervised_resnet_denoise() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synthetic_dataset(&data);
    let train = |long_skip: bool| {
        let mut config = tiny_config(Method::Supervised, &data);
        config.model.zero_head = true;
        config.model.generator = ldct_proto::arch::Preset::Resnet(ldct_proto::arch::ResnetConfig {
            ngf: 8,
            n_blocks: 1,
            long_skip,
            ..Default::default()
        });
        config.schedule.epochs = 10;
        config.schedule.steps_per_epoch = 20;
        config.schedule.decay_epochs = 5;
        let run = tmp.path().join(format!("skip-{long_skip}"));
        fit(&config, &opts(&run)).unwrap();
        let loss = column(&run, "loss");
        let val = column(&run, "val_psnr");
        let input = column(&run, "val_input_psnr");
        eprintln!("long_skip {long_skip}: loss by epoch {loss:?}, val PSNR {val:?}");
        (
            loss[loss.len() - 1],
            val[val.len() - 1] - input[input.len() - 1],
        )
    };
    let ((loss_without, gain_without), (loss_with, gain_with)) = (train(false), train(true));
    // Without: the L1 loss stalls at the noise's own (the identity), about 0.045.
    assert!(
        loss_with < 0.9 * loss_without,
        "loss with {loss_with} vs without {loss_without}"
    );
    assert!(
        gain_with > gain_without + 0.4,
        "val PSNR gain with {gain_with} vs without {gain_without}"
    );
}
