//! Every preset (tiny instances, trained-looking random weights, instance and
//! batch norm variants) exported to ONNX: Python `onnx.checker` (full check)
//! accepts the file, Python onnxruntime and the `ort` crate agree, and both match
//! the Candle forward within 1e-4 (fp32) or 1e-2 (fp16). Sizes 512x512, 256x384
//! and 101x130 round-trip with the manifest's padding contract (Python pads by
//! itself from `manifest.json`'s `spatial_multiple`).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use ldct_export::onnx_writer::{InstanceNormForm, Precision};
use ldct_export::parity::{self, max_abs_diff, random_input};
use ldct_export::{export_network, ExportOptions};
use ldct_imaging::npy;
use ldct_proto::arch::{
    Arch, Node, Norm, Op, Preset, RedcnnConfig, ResnetConfig, UnetConfig, UpsampleMode, Upsampling,
    INPUT,
};
use ldct_proto::manifest::{Manifest, ONNX_METADATA_KEY};
use ldct_proto::onnx;
use ldct_train::model::{Init, Network};
use ndarray::{Array4, Ix4};
use prost::Message;

fn resnet(norm: Norm) -> Arch {
    Arch::from_preset(&Preset::Resnet(ResnetConfig {
        ngf: 4,
        n_blocks: 2,
        norm,
        ..Default::default()
    }))
    .unwrap()
}

fn unet(norm: Norm) -> Arch {
    Arch::from_preset(&Preset::Unet(UnetConfig {
        base: 4,
        depth: 2,
        norm,
        ..Default::default()
    }))
    .unwrap()
}

fn redcnn() -> Arch {
    Arch::from_preset(&Preset::Redcnn(RedcnnConfig {
        filters: 4,
        kernel: 3,
    }))
    .unwrap()
}

/// The ops no generator preset uses: zero padding, leaky ReLU, nearest and
/// bilinear upsampling.
fn custom() -> Arch {
    let n = |name: &str, op: Op, inputs: &[&str]| Node {
        name: name.into(),
        op,
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
    };
    let conv = |i, o, k, s, p| Op::Conv2d {
        in_channels: i,
        out_channels: o,
        kernel: k,
        stride: s,
        padding: p,
        dilation: 1,
        bias: true,
    };
    let arch = Arch {
        schema_version: ldct_proto::arch::ARCH_SCHEMA_VERSION,
        name: "custom_upsample".into(),
        preset: Preset::Custom,
        input_channels: 1,
        output_channels: 1,
        nodes: vec![
            n("down", conv(1, 4, 3, 2, 1), &[INPUT]),
            n("lrelu", Op::LeakyRelu { slope: 0.2 }, &["down"]),
            n(
                "up_nearest",
                Op::Upsample {
                    scale: 2,
                    mode: UpsampleMode::Nearest,
                },
                &["lrelu"],
            ),
            n("zpad", Op::ZeroPad2d { pad: 1 }, &["up_nearest"]),
            n("conv_a", conv(4, 3, 3, 1, 0), &["zpad"]),
            n(
                "up_bilinear",
                Op::Upsample {
                    scale: 2,
                    mode: UpsampleMode::Bilinear,
                },
                &["lrelu"],
            ),
            n("cat", Op::Concat, &["conv_a", "up_bilinear", INPUT]),
            n("head", conv(8, 1, 1, 1, 0), &["cat"]),
            n("tanh", Op::Tanh, &["head"]),
        ],
    };
    arch.validate().unwrap();
    arch
}

/// Two networks (prefixed `a.` and `b.`) combined with every element-wise op:
/// `out = (a * e) / (0.5 e + 1) - 0.25 + input` with `e = exp(0.3 b)`, plus an
/// identity `Affine` (the graphs Noise2Score and ISCL deploy are built like this).
fn composed() -> Arch {
    let n = |name: &str, op: Op, inputs: &[&str]| Node {
        name: name.into(),
        op,
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
    };
    let net = Arch::from_preset(&Preset::Unet(UnetConfig {
        base: 4,
        depth: 2,
        norm: Norm::Instance,
        tanh: false,
        global_residual: false,
        noise_map: false,
    }))
    .unwrap();
    let mut nodes = net.prefixed_nodes("a");
    nodes.extend(net.prefixed_nodes("b"));
    let (a, b) = (
        format!("a.{}", net.output_node()),
        format!("b.{}", net.output_node()),
    );
    let affine = |scale, shift| Op::Affine { scale, shift };
    nodes.extend([
        n("b_scaled", affine(0.3, 0.0), &[&b]),
        n("e", Op::Exp, &["b_scaled"]),
        n("prod", Op::Mul, &[&a, "e"]),
        n("den", affine(0.5, 1.0), &["e"]),
        n("quot", Op::Div, &["prod", "den"]),
        n("shifted", affine(1.0, -0.25), &["quot"]),
        n("same", affine(1.0, 0.0), &["shifted"]),
        n("out", Op::Add, &["same", INPUT]),
    ]);
    let arch = Arch {
        schema_version: ldct_proto::arch::ARCH_SCHEMA_VERSION,
        name: "composed_elementwise".into(),
        preset: Preset::Custom,
        input_channels: 1,
        output_channels: 1,
        nodes,
    };
    arch.validate().unwrap();
    arch
}

fn network(arch: Arch, seed: u64) -> Network {
    let mut net = Network::new(arch, &Device::Cpu, DType::F32, Init::default(), seed).unwrap();
    net.randomise_for_testing(seed).unwrap();
    net.set_training(false);
    net
}

fn write_npy(path: &Path, x: &Array4<f32>) {
    let data: Vec<f32> = x.iter().copied().collect();
    std::fs::write(path, npy::encode_f32(x.shape(), &data).unwrap()).unwrap();
}

fn read_npy(path: &Path) -> Array4<f32> {
    npy::read(path)
        .unwrap()
        .into_dyn()
        .unwrap()
        .into_dimensionality::<Ix4>()
        .unwrap()
}

/// For each job `model_dir input.npy output.npy`: full ONNX check, metadata and
/// io checks, then onnxruntime on the input padded by reflection (bottom/right)
/// to the manifest's spatial multiple, output cropped back.
const PY: &str = r#"
import json, sys
import numpy as np, onnx, onnxruntime as ort
jobs = json.load(open(sys.argv[1]))
checked = {}
for model_dir, inp, out in jobs:
    path = model_dir + "/model.onnx"
    if path not in checked:
        m = onnx.load(path)
        onnx.checker.check_model(m, full_check=True)
        meta = {p.key: p.value for p in m.metadata_props}
        card = json.loads(meta["ldct.manifest"])
        dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        assert dims(m.graph.input[0]) == ["N", 1, "H", "W"], dims(m.graph.input[0])
        assert dims(m.graph.output[0]) == ["N", 1, "H", "W"], dims(m.graph.output[0])
        assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert m.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        manifest = json.load(open(model_dir + "/manifest.json"))
        checked[path] = {"ir_version": m.ir_version, "opset": m.opset_import[0].version,
                         "name": card["name"], "multiple": manifest["spatial_multiple"],
                         "initializers": sorted(t.name for t in m.graph.initializer),
                         "sess": ort.InferenceSession(path, providers=["CPUExecutionProvider"])}
    info = checked[path]
    x = np.load(inp)
    h, w = x.shape[2:]
    k = info["multiple"]
    ph, pw = -(-h // k) * k, -(-w // k) * k
    xp = np.pad(x, ((0, 0), (0, 0), (0, ph - h), (0, pw - w)), mode="reflect")
    (y,) = info["sess"].run(["output"], {"input": xp})
    np.save(out, y[:, :, :h, :w].astype(np.float32))
print(json.dumps({p: {k: v for k, v in i.items() if k != "sess"} for p, i in checked.items()}))
"#;

struct Case {
    label: String,
    net: Network,
    dir: PathBuf,
    precision: Precision,
    inputs: Vec<Array4<f32>>,
}

fn export_case(
    tmp: &Path,
    label: &str,
    net: Network,
    precision: Precision,
    sizes: &[(usize, usize)],
) -> Case {
    export_case_with(
        tmp,
        label,
        net,
        precision,
        InstanceNormForm::default(),
        sizes,
    )
}

fn export_case_with(
    tmp: &Path,
    label: &str,
    net: Network,
    precision: Precision,
    instance_norm: InstanceNormForm,
    sizes: &[(usize, usize)],
) -> Case {
    let dir = tmp.join(label);
    let run = tmp.join(format!("{label}.run"));
    net.save_dir(&run).unwrap();
    let opts = ExportOptions {
        name: Some(label.to_string()),
        precision,
        instance_norm,
        ..ExportOptions::new(&run, &dir)
    };
    let net = ldct_export::export::load_run(&run).unwrap();
    let report = export_network(&net, &opts).unwrap();
    eprintln!(
        "{label} ({precision}): exporter parity ort vs Candle max abs diff {:.3e} over {:?}",
        report.parity.max_abs_diff,
        report
            .parity
            .cases
            .iter()
            .map(|c| format!("{} {:.2e}", c.label, c.max_abs_diff))
            .collect::<Vec<_>>()
    );
    assert!(report.parity.max_abs_diff <= precision.tolerance());
    assert!(
        report
            .parity
            .cases
            .iter()
            .any(|c| c.label.contains("CT_small")),
        "the parity check must include the real CT slice"
    );
    let mut inputs = vec![
        parity::ct_slice_input(
            &parity::default_ct_slice().expect("pydicom CT_small.dcm in the venv"),
            &Default::default(),
            1,
        )
        .unwrap()
        .x,
    ];
    for (i, &(h, w)) in sizes.iter().enumerate() {
        inputs.push(random_input((1, 1, h, w), 77 + i as u64, -1.0, 1.0));
    }
    Case {
        label: label.to_string(),
        net,
        dir,
        precision,
        inputs,
    }
}

fn verify(cases: &[Case], tmp: &Path) {
    let mut jobs = Vec::new();
    for c in cases {
        for (i, x) in c.inputs.iter().enumerate() {
            let inp = tmp.join(format!("{}.{i}.in.npy", c.label));
            let out = tmp.join(format!("{}.{i}.py.npy", c.label));
            write_npy(&inp, x);
            jobs.push(serde_json::json!([c.dir, inp, out]));
        }
    }
    let jobs_path = tmp.join("jobs.json");
    std::fs::write(&jobs_path, serde_json::to_string(&jobs).unwrap()).unwrap();
    let report = ldct_testkit::run_python(PY, &[jobs_path.to_str().unwrap()]);
    let report: serde_json::Value = serde_json::from_str(report.trim()).unwrap();

    for c in cases {
        let onnx_path = c.dir.join("model.onnx");
        let info = &report[onnx_path.to_str().unwrap()];
        assert_eq!(info["ir_version"], 10, "{}", c.label);
        assert_eq!(info["opset"], 17, "{}", c.label);
        assert_eq!(info["name"], c.label.as_str());
        let manifest = Manifest::from_file(&c.dir.join("manifest.json")).unwrap();
        assert_eq!(
            manifest.spatial_multiple as usize,
            c.net.arch().spatial_multiple()
        );
        assert_eq!(manifest.onnx.precision, c.precision.as_str());
        // Every parameter is an initializer under its safetensors name.
        let inits: Vec<String> = info["initializers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        for p in c.net.arch().parameters() {
            assert!(
                inits.contains(&p.name),
                "{}: no initializer {}",
                c.label,
                p.name
            );
        }
        // The embedded manifest is the file's, bar the digest.
        let model =
            onnx::ModelProto::decode(std::fs::read(&onnx_path).unwrap().as_slice()).unwrap();
        let embedded = model
            .metadata_props
            .iter()
            .find(|p| p.key == ONNX_METADATA_KEY)
            .expect("manifest in metadata_props");
        let embedded: Manifest = serde_json::from_str(&embedded.value).unwrap();
        assert_eq!(embedded.name, manifest.name);
        assert_eq!(embedded.spatial_multiple, manifest.spatial_multiple);

        let mut session = parity::ort_session(&onnx_path).unwrap();
        let tol = c.precision.tolerance();
        for (i, x) in c.inputs.iter().enumerate() {
            let py = read_npy(
                &c.dir
                    .parent()
                    .unwrap()
                    .join(format!("{}.{i}.py.npy", c.label)),
            );
            let rs = parity::run_any_size(&mut session, c.net.arch(), x).unwrap();
            let candle = parity::candle_any_size(&c.net, x).unwrap();
            assert_eq!(rs.shape(), x.shape(), "{}: output shape", c.label);
            assert_eq!(py.shape(), x.shape(), "{}: python output shape", c.label);
            assert_eq!(
                candle.shape(),
                x.shape(),
                "{}: candle output shape",
                c.label
            );
            let d_py_rs = max_abs_diff(&py, &rs);
            let d_rs_candle = max_abs_diff(&rs, &candle);
            let d_py_candle = max_abs_diff(&py, &candle);
            eprintln!(
                "PARITY {:<22} {:>4} {:?}: ort-crate vs Candle {:.3e}, python ORT vs ort-crate {:.3e}, python ORT vs Candle {:.3e}",
                c.label,
                c.precision.as_str(),
                x.shape(),
                d_rs_candle,
                d_py_rs,
                d_py_candle
            );
            assert!(
                d_py_rs <= 1e-5,
                "{}: python ORT vs ort crate {d_py_rs}",
                c.label
            );
            assert!(
                d_rs_candle <= tol,
                "{}: ort vs Candle {d_rs_candle}",
                c.label
            );
            assert!(
                d_py_candle <= tol,
                "{}: python ORT vs Candle {d_py_candle}",
                c.label
            );
            // Not a trivial network: the output differs from the input.
            assert!(
                max_abs_diff(&rs, x) > 1e-3,
                "{}: output equals input",
                c.label
            );
        }
    }
}

#[test]
fn every_preset_exports_with_parity_in_python_and_rust() {
    let tmp = tempfile::tempdir().unwrap();
    let odd = [(37, 50)];
    let cases = vec![
        export_case(
            tmp.path(),
            "resnet_instance",
            network(resnet(Norm::Instance), 1),
            Precision::Fp32,
            &odd,
        ),
        export_case(
            tmp.path(),
            "resnet_affine",
            network(resnet(Norm::InstanceAffine), 2),
            Precision::Fp32,
            &odd,
        ),
        // Float64 statistics (the reference form of the float32 default).
        export_case_with(
            tmp.path(),
            "resnet_affine_f64",
            network(resnet(Norm::InstanceAffine), 2),
            Precision::Fp32,
            InstanceNormForm::Float64,
            &odd,
        ),
        // The InstanceNormalization op itself (ONNX Runtime's float32 kernel).
        export_case_with(
            tmp.path(),
            "resnet_affine_native",
            network(resnet(Norm::InstanceAffine), 2),
            Precision::Fp32,
            InstanceNormForm::Native,
            &odd,
        ),
        export_case(
            tmp.path(),
            "resnet_batch",
            network(resnet(Norm::Batch), 3),
            Precision::Fp32,
            &odd,
        ),
        export_case(
            tmp.path(),
            "unet_instance",
            network(unet(Norm::Instance), 4),
            Precision::Fp32,
            &odd,
        ),
        export_case(
            tmp.path(),
            "unet_batch",
            network(unet(Norm::Batch), 5),
            Precision::Fp32,
            &odd,
        ),
        export_case(
            tmp.path(),
            "redcnn",
            network(redcnn(), 6),
            Precision::Fp32,
            &odd,
        ),
        export_case(
            tmp.path(),
            "custom_upsample",
            network(custom(), 7),
            Precision::Fp32,
            &odd,
        ),
        export_case(
            tmp.path(),
            "composed_elementwise",
            network(composed(), 8),
            Precision::Fp32,
            &odd,
        ),
        export_case(
            tmp.path(),
            "composed_elementwise_fp16",
            network(composed(), 8),
            Precision::Fp16,
            &odd,
        ),
        export_case(
            tmp.path(),
            "resnet_instance_fp16",
            network(resnet(Norm::Instance), 1),
            Precision::Fp16,
            &odd,
        ),
        export_case(
            tmp.path(),
            "unet_batch_fp16",
            network(unet(Norm::Batch), 5),
            Precision::Fp16,
            &odd,
        ),
    ];
    verify(&cases, tmp.path());
}

#[test]
fn large_non_square_and_odd_sizes_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let tiny = Arch::from_preset(&Preset::Unet(UnetConfig {
        base: 2,
        depth: 2,
        norm: Norm::InstanceAffine,
        ..Default::default()
    }))
    .unwrap();
    let sizes = [(512, 512), (256, 384), (101, 130)];
    let cases = vec![
        export_case(
            tmp.path(),
            "unet_tiny_sizes",
            network(tiny, 11),
            Precision::Fp32,
            &sizes,
        ),
        export_case(
            tmp.path(),
            "resnet_sizes",
            network(
                Arch::from_preset(&Preset::Resnet(ResnetConfig {
                    ngf: 2,
                    n_blocks: 1,
                    norm: Norm::Instance,
                    ..Default::default()
                }))
                .unwrap(),
                12,
            ),
            Precision::Fp32,
            &[(101, 130), (256, 384)],
        ),
        export_case(
            tmp.path(),
            "resnet_resize_sizes",
            network(
                Arch::from_preset(&Preset::Resnet(ResnetConfig {
                    ngf: 2,
                    n_blocks: 1,
                    norm: Norm::Instance,
                    upsample: Upsampling::Resize,
                    ..Default::default()
                }))
                .unwrap(),
                13,
            ),
            Precision::Fp32,
            &[(101, 130), (256, 384)],
        ),
        // The sub-pixel way back: ONNX DepthToSpace (CRD) against the trainer's
        // pixel shuffle, with sub-pixel kernels that differ (trained-looking weights).
        export_case(
            tmp.path(),
            "resnet_pixelshuffle_sizes",
            network(
                Arch::from_preset(&Preset::Resnet(ResnetConfig {
                    ngf: 2,
                    n_blocks: 1,
                    norm: Norm::Instance,
                    upsample: Upsampling::PixelShuffle,
                    ..Default::default()
                }))
                .unwrap(),
                14,
            ),
            Precision::Fp32,
            &[(101, 130), (256, 384)],
        ),
        // The long skip (stem + last up stage) of configs/cyclegan-resnet.toml.
        export_case(
            tmp.path(),
            "resnet_long_skip_sizes",
            network(
                Arch::from_preset(&Preset::Resnet(ResnetConfig {
                    ngf: 2,
                    n_blocks: 1,
                    norm: Norm::Instance,
                    upsample: Upsampling::PixelShuffle,
                    long_skip: true,
                    ..Default::default()
                }))
                .unwrap(),
                15,
            ),
            Precision::Fp32,
            &[(101, 130), (256, 384)],
        ),
    ];
    // 101x130 is padded: 104x132 for unet depth 2 (multiple 4).
    let (ph, pw) = cases[0].net.arch().padded_size(101, 130).unwrap();
    assert_eq!((ph, pw), (104, 132));
    verify(&cases, tmp.path());
}

#[test]
fn parity_against_other_weights_fails_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let net = network(redcnn(), 21);
    let run = tmp.path().join("run");
    net.save_dir(&run).unwrap();
    // A different network (other weights) under the same architecture: the
    // written ONNX is exported from `other`, the reference is `net`.
    let other = network(redcnn(), 22);
    let out = tmp.path().join("broken");
    let opts = ExportOptions::new(&run, &out);
    let ok = export_network(&other, &opts).unwrap();
    assert!(ok.parity.max_abs_diff <= 1e-4);
    let report = parity::check_parity(
        &net,
        &out.join("model.onnx"),
        &parity::default_random_inputs(net.arch()).unwrap(),
        "fp32",
        1e-4,
    );
    let e = report.unwrap_err().to_string();
    assert!(
        e.contains("parity check FAILED") && e.contains("1e-4"),
        "{e}"
    );
}

#[test]
fn an_exported_model_initialises_a_network_with_its_weights() {
    // Fine-tuning starts from a model folder: the trainer reads the exported ONNX's
    // initializers back (pads and other constants left out) and gets the same weights.
    let tmp = tempfile::tempdir().unwrap();
    let net = network(unet(Norm::Instance), 31);
    let run = tmp.path().join("run");
    net.save_dir(&run).unwrap();
    let out = tmp.path().join("model");
    export_network(&net, &ExportOptions::new(&run, &out)).unwrap();
    let other = network(unet(Norm::Instance), 32);
    other.load_weights_from(&out).unwrap();
    let (want, got) = (net.state().unwrap(), other.state().unwrap());
    assert_eq!(want.len(), got.len());
    for ((n, a), (m, b)) in want.iter().zip(&got) {
        assert_eq!(n, m);
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{n}");
    }
    // Another architecture's model is refused with the names that do not fit.
    let red = network(redcnn(), 33);
    let e = red.load_weights_from(&out).unwrap_err().to_string();
    assert!(e.contains("do not match the architecture"), "{e}");
}

/// Full-size default presets (CycleGAN resnet ngf 64 / 9 blocks, unet base 32 /
/// depth 4, RED-CNN 96 filters): the exporter's own parity check, the three instance
/// norm forms. Slow in debug builds: `cargo test -p ldct-export --release -- --ignored`.
#[test]
#[ignore]
fn full_size_presets_parity() {
    let tmp = tempfile::tempdir().unwrap();
    let presets = [
        ("resnet_full", Preset::Resnet(ResnetConfig::default())),
        ("unet_full", Preset::Unet(UnetConfig::default())),
        ("redcnn_full", Preset::Redcnn(RedcnnConfig::default())),
    ];
    for (label, preset) in presets {
        let net = network(Arch::from_preset(&preset).unwrap(), 31);
        for form in [
            InstanceNormForm::Float32,
            InstanceNormForm::Float64,
            InstanceNormForm::Native,
        ] {
            let opts = ExportOptions {
                instance_norm: form,
                parity_random: false,
                ..ExportOptions::new(tmp.path(), tmp.path().join(format!("{label}_{form:?}")))
            };
            let t = std::time::Instant::now();
            match export_network(&net, &opts) {
                Ok(r) => eprintln!(
                    "FULL {label} {form:?}: max abs diff {:.3e} ({:.1}s)",
                    r.parity.max_abs_diff,
                    t.elapsed().as_secs_f32()
                ),
                Err(e) => eprintln!("FULL {label} {form:?}: {e}"),
            }
        }
    }
}
