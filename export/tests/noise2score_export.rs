//! Noise2Score denoisers (score network + Tweedie nodes, one graph) export like any
//! generator: the exporter's own parity check (ONNX Runtime via the `ort` crate vs
//! Candle, CT slice and random inputs) passes, and Python `onnx.checker` (full
//! check) accepts the file and Python onnxruntime matches Candle within 1e-4, for
//! the Gaussian, Poisson and Gamma graphs (trained-looking random weights) and for
//! the run folder of a real (tiny) training run.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use ldct_export::{export_run, ExportOptions};
use ldct_imaging::aapm::{self, Split};
use ldct_imaging::npy;
use ldct_proto::arch::{Arch, Norm, Preset, UnetConfig};
use ldct_train::model::{Init, Network};
use ldct_train::train::noise2score::{denoiser_network, Tweedie};
use ldct_train::train::{fit, FitOptions, TrainConfig};
use ndarray::Array2;

const PY: &str = r#"
import sys
import numpy as np, onnx, onnxruntime as ort
model, inp, out = sys.argv[1:4]
m = onnx.load(model)
onnx.checker.check_model(m, full_check=True)
ops = sorted({n.op_type for n in m.graph.node})
sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
(y,) = sess.run(["output"], {"input": np.load(inp)})
np.save(out, y.astype(np.float32))
print(",".join(ops))
"#;

/// Exports the run folder, then checks it in Python against Candle; returns the
/// ONNX op types.
fn export_and_check(run: &Path, out: &Path, tmp: &Path, label: &str) -> String {
    let report = export_run(&ExportOptions {
        method: ldct_proto::manifest::Method::Noise2score,
        ..ExportOptions::new(run, out)
    })
    .unwrap();
    eprintln!(
        "{label}: exporter parity max abs diff {:.3e}",
        report.parity.max_abs_diff
    );
    assert!(report.parity.max_abs_diff <= 1e-4, "{label}");
    assert!(report.parity.cases.len() >= 2, "{label}");

    let net = ldct_export::export::load_run(run).unwrap();
    let (h, w) = (64, 48);
    let x: Vec<f32> = (0..h * w)
        .map(|i| {
            let (r, c) = ((i / w) as f32, (i % w) as f32);
            0.6 * (r / 7.0).sin() * (c / 5.0).cos() - 0.1
        })
        .collect();
    let inp = tmp.join(format!("{label}.in.npy"));
    let py_out = tmp.join(format!("{label}.out.npy"));
    std::fs::write(&inp, npy::encode_f32(&[1, 1, h, w], &x).unwrap()).unwrap();
    let ops = ldct_testkit::run_python(
        PY,
        &[
            report.onnx.to_str().unwrap(),
            inp.to_str().unwrap(),
            py_out.to_str().unwrap(),
        ],
    );
    let py: Vec<f32> = npy::read(&py_out)
        .unwrap()
        .into_dyn()
        .unwrap()
        .iter()
        .copied()
        .collect();
    let xt = Tensor::from_vec(x.clone(), (1, 1, h, w), &Device::Cpu).unwrap();
    let candle: Vec<f32> = net
        .forward_any_size(&xt)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(py.len(), candle.len());
    let d = py
        .iter()
        .zip(&candle)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let moved = x
        .iter()
        .zip(&candle)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("{label}: python ORT vs Candle {d:.3e}; output moved {moved:.3e}; ops {ops}");
    assert!(d <= 1e-4, "{label}: python ORT vs Candle {d}");
    assert!(moved > 1e-4, "{label}: the denoiser is the identity");
    ops.trim().to_string()
}

#[test]
fn tweedie_graphs_export_with_parity() {
    let tmp = tempfile::tempdir().unwrap();
    let score_arch = Arch::from_preset(&Preset::Unet(UnetConfig {
        base: 4,
        depth: 2,
        norm: Norm::Instance,
        tanh: false,
        global_residual: false,
        noise_map: false,
    }))
    .unwrap();
    let cases = [
        ("gaussian", Tweedie::Gaussian { sigma: 0.05 }, 0.05, "Add"),
        ("poisson", Tweedie::Poisson { eta: 0.01 }, 0.05, "Exp"),
        ("gamma", Tweedie::Gamma { k: 50.0 }, 0.5, "Div"),
        (
            "correlated",
            Tweedie::Correlated { sigma: 0.04 },
            0.03,
            "Add",
        ),
    ];
    for (i, (label, tweedie, scale, op)) in cases.into_iter().enumerate() {
        let score = Network::new(
            score_arch.clone(),
            &Device::Cpu,
            DType::F32,
            Init::default(),
            i as u64,
        )
        .unwrap();
        score.randomise_for_testing(40 + i as u64).unwrap();
        let den = denoiser_network(&score, &tweedie, scale).unwrap();
        let run = tmp.path().join(format!("{label}.run"));
        den.save_dir(&run).unwrap();
        let ops = export_and_check(&run, &tmp.path().join(label), tmp.path(), label);
        assert!(ops.split(',').any(|o| o == op), "{label}: {ops}");
    }
}

#[test]
fn a_trained_noise2score_run_exports_with_parity() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    for i in 0..4 {
        let full = Array2::from_shape_fn((32, 32), |(r, c)| {
            40.0 + 200.0 * ((r as f32 + i as f32) / 6.0).sin() * (c as f32 / 9.0).cos()
        });
        let low = full.mapv(|v| v + 30.0 * ((v * 12.9898).sin() * 43758.547).fract());
        let split = if i < 3 { Split::Train } else { Split::Test };
        aapm::write_pair(&data, split, &format!("{i:04}"), &full, &low).unwrap();
    }
    let config = TrainConfig::from_toml(&format!(
        r#"
method = "noise2score"
[data]
root = "{}"
patch = 16
batch = 2
val_slices = 1
min_tissue = 0.0
[model]
generator = {{ kind = "unet", base = 4, depth = 2 }}
[schedule]
epochs = 1
steps_per_epoch = 5
decay_epochs = 0
"#,
        data.display()
    ))
    .unwrap();
    let run = tmp.path().join("run");
    fit(
        &config,
        &FitOptions {
            run: run.clone(),
            ..FitOptions::default()
        },
    )
    .unwrap();
    let ops = export_and_check(&run, &tmp.path().join("model"), tmp.path(), "trained");
    assert!(ops.contains("Add") && ops.contains("Mul"), "{ops}");
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("model/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["method"], "noise2score");
}
