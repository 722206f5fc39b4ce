//! The weight average (`optim.ema`, `train::ema`): the shadow weights follow the
//! exponential moving average written out by hand, buffers are copied, the run
//! deploys (validates, saves, samples) the average, and `--resume` continues it bit
//! for bit.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use ldct_proto::arch::{Arch, Norm, Preset, ResnetConfig};
use ldct_proto::manifest::Method;
use ldct_train::model::{Init, Network};
use ldct_train::train::ema::Ema;
use ldct_train::train::fit;

use crate::common::{
    assert_same_files, column, fit_resumed, fit_stopped, metrics_without_time, opts,
    synthetic_dataset, tiny_config,
};

fn set_all(net: &Network, value: f32) {
    for (spec, var) in net.parameters() {
        var.set(&Tensor::full(value, spec.shape.as_slice(), &Device::Cpu).unwrap())
            .unwrap();
    }
}

fn values(net: &Network) -> Vec<(bool, Vec<f32>)> {
    net.parameters()
        .map(|(spec, var)| {
            let v = var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            (spec.trainable(), v)
        })
        .collect()
}

#[test]
fn the_average_follows_the_moving_average_written_out() {
    // Batch norm, so the network has buffers (running statistics) as well.
    let arch = Arch::from_preset(&Preset::Resnet(ResnetConfig {
        ngf: 4,
        n_blocks: 1,
        norm: Norm::Batch,
        ..Default::default()
    }))
    .unwrap();
    let live = Network::new(arch, &Device::Cpu, DType::F32, Init::default(), 1).unwrap();
    set_all(&live, 2.0);
    // 0.5, so the 12 updates below cover the warm-up (t < 8) and the decay itself.
    let decay = 0.5;
    let mut ema = Ema::new(&live, decay, 0).unwrap();
    // A copy, not a share: changing the live weights leaves the average alone.
    set_all(&live, 7.0);
    assert!(values(ema.network())
        .iter()
        .all(|(_, v)| v.iter().all(|&x| x == 2.0)));

    // The live weights take the values 7, 3, -1, 5, ... before each update.
    let mut expected = 2.0f64;
    let sequence = [
        7.0, 3.0, -1.0, 5.0, 11.0, 0.5, -4.0, 8.0, 9.0, 1.0, 2.5, 6.0,
    ];
    for (t, &p) in sequence.iter().enumerate() {
        set_all(&live, p as f32);
        ema.update(&live).unwrap();
        let d = f64::min(decay, (1.0 + t as f64) / (10.0 + t as f64));
        expected = d * expected + (1.0 - d) * p;
        for (trainable, v) in values(ema.network()) {
            let want = if trainable { expected } else { p };
            for x in v {
                assert!(
                    (x as f64 - want).abs() < 1e-5,
                    "update {t}: {x} against {want} (trainable {trainable})"
                );
            }
        }
    }
    // After the warm-up the configured decay; a resumed average (updates already
    // done) starts where the warm-up has got to.
    assert_eq!(ema.current_decay(), decay);
    let resumed = Ema::new(&live, 0.999, 20).unwrap();
    assert_eq!(resumed.current_decay(), 21.0 / 30.0);
}

fn ema_config(data: &Path, ema: f64) -> ldct_train::train::TrainConfig {
    let mut c = tiny_config(Method::Supervised, data, "");
    c.optim.ema = ema;
    c
}

#[test]
fn a_run_with_the_average_deploys_it_and_resumes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synthetic_dataset(&data);

    let plain = tmp.path().join("plain");
    fit(&ema_config(&data, 0.0), &opts(&plain)).unwrap();
    assert!(!plain.join("checkpoint/ema").exists());

    let averaged = tmp.path().join("averaged");
    fit(&ema_config(&data, 0.9), &opts(&averaged)).unwrap();
    let weights = |run: &Path, f: &str| std::fs::read(run.join(f)).unwrap();
    // The run folder's weights are the average's, not the live network's...
    assert_eq!(
        weights(&averaged, "weights.safetensors"),
        weights(&averaged, "checkpoint/ema/weights.safetensors")
    );
    assert_ne!(
        weights(&averaged, "weights.safetensors"),
        weights(&averaged, "checkpoint/generator/weights.safetensors")
    );
    // ...while training itself is untouched: the live weights and the losses are
    // those of the run without the average (same seed and data).
    assert_eq!(
        weights(&averaged, "checkpoint/generator/weights.safetensors"),
        weights(&plain, "weights.safetensors")
    );
    assert_eq!(column(&averaged, "loss"), column(&plain, "loss"));
    // Validation runs the average.
    assert_ne!(column(&averaged, "val_psnr"), column(&plain, "val_psnr"));
    let toml = std::fs::read_to_string(averaged.join("train.toml")).unwrap();
    assert!(toml.contains("ema = 0.9"), "{toml}");

    // Stopped mid-epoch and resumed: the same average as the uninterrupted run.
    let parts = tmp.path().join("parts");
    fit_stopped(&ema_config(&data, 0.9), &parts, 6);
    fit_resumed(&parts, 12);
    assert_same_files(
        &averaged,
        &parts,
        &["weights.safetensors", "checkpoint/ema/weights.safetensors"],
    );
    assert_eq!(
        metrics_without_time(&averaged),
        metrics_without_time(&parts)
    );
}

#[test]
fn an_average_decay_outside_zero_to_one_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for bad in [1.0, -0.1, f64::NAN] {
        let e = ema_config(tmp.path(), bad).validate().unwrap_err();
        assert!(e.to_string().contains("optim.ema"), "{e}");
    }
}
