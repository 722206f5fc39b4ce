//! A minimal ONNX model written with our `onnx.proto` types must be accepted by
//! the reference implementations: Python `onnx.checker.check_model(full_check=True)`
//! and Python onnxruntime, and run through the `ort` crate with the same output.

use ldct_proto::onnx::{self, attr, tensor_proto::DataType};
use ndarray::Array4;
use prost::Message;

const W: f32 = 2.5;
const B: f32 = -0.75;

/// y = Conv1x1(x; w = 2.5, b = -0.75), then Identity, float32 [N, 1, H, W] symbolic.
fn conv1x1_model() -> onnx::ModelProto {
    let io_type = || onnx::tensor_type(DataType::Float, &[Err("N"), Ok(1), Err("H"), Err("W")]);
    let graph = onnx::GraphProto {
        name: "conv1x1".into(),
        node: vec![
            onnx::node(
                "Conv",
                "conv",
                &["input", "conv.weight", "conv.bias"],
                &["conv_out"],
                vec![
                    attr::ints("kernel_shape", &[1, 1]),
                    attr::ints("pads", &[0, 0, 0, 0]),
                    attr::ints("strides", &[1, 1]),
                ],
            ),
            onnx::node("Identity", "identity", &["conv_out"], &["output"], vec![]),
        ],
        initializer: vec![
            onnx::f32_tensor("conv.weight", &[1, 1, 1, 1], &[W]),
            onnx::f32_tensor("conv.bias", &[1], &[B]),
        ],
        input: vec![onnx::value_info("input", io_type())],
        output: vec![onnx::value_info("output", io_type())],
        ..Default::default()
    };
    onnx::ModelProto {
        ir_version: onnx::IR_VERSION,
        opset_import: vec![onnx::default_opset(onnx::DEFAULT_OPSET)],
        producer_name: "ldct-proto-test".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(graph),
        metadata_props: vec![onnx::StringStringEntryProto {
            key: "ldct.test".into(),
            value: "{\"ok\": true}".into(),
        }],
        ..Default::default()
    }
}

fn input() -> Array4<f32> {
    Array4::from_shape_fn((2, 1, 5, 7), |(n, _, y, x)| {
        (n as f32 * 0.3) + (y as f32 * 0.1) - (x as f32 * 0.05)
    })
}

const PY_CHECK: &str = r#"
import sys, json, numpy as np, onnx, onnxruntime as ort
path, inp, out = sys.argv[1], sys.argv[2], sys.argv[3]
model = onnx.load(path)
onnx.checker.check_model(model, full_check=True)
meta = {p.key: p.value for p in model.metadata_props}
sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
x = np.load(inp)
(y,) = sess.run(["output"], {"input": x})
np.save(out, y.astype(np.float32))
shape = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
print(json.dumps({"ir_version": model.ir_version, "opset": model.opset_import[0].version,
                  "meta": meta, "input_shape": shape}))
"#;

#[test]
fn minimal_conv_model_passes_onnx_checker_and_runs_in_onnxruntime() {
    let dir = tempfile::tempdir().unwrap();
    let model_path = dir.path().join("conv1x1.onnx");
    std::fs::write(&model_path, conv1x1_model().encode_to_vec()).unwrap();
    let x = input();
    let in_path = dir.path().join("x.npy");
    let out_path = dir.path().join("y.npy");
    std::fs::write(&in_path, npy_f32(x.shape(), x.as_slice().unwrap())).unwrap();

    let report = ldct_testkit::run_python(
        PY_CHECK,
        &[
            model_path.to_str().unwrap(),
            in_path.to_str().unwrap(),
            out_path.to_str().unwrap(),
        ],
    );
    let report: serde_json::Value = serde_json::from_str(report.trim()).unwrap();
    assert_eq!(report["ir_version"], 10);
    assert_eq!(report["opset"], 17);
    assert_eq!(report["meta"]["ldct.test"], "{\"ok\": true}");
    assert_eq!(report["input_shape"], serde_json::json!(["N", 1, "H", "W"]));

    let y_py = read_npy_f32(&std::fs::read(&out_path).unwrap());
    assert_eq!(y_py.len(), x.len());
    for (yv, xv) in y_py.iter().zip(x.iter()) {
        assert!(
            (yv - (W * xv + B)).abs() < 1e-6,
            "onnxruntime {yv} vs expected {}",
            W * xv + B
        );
    }

    // The same file through the ort crate (libonnxruntime from ORT_DYLIB_PATH / .venv).
    let rt = ldct_proto::runtime::init().expect("ONNX Runtime must load (make setup)");
    assert!(rt.library.exists());
    let mut session = ort::session::Session::builder(&rt.environment)
        .unwrap()
        .with_optimization_level(ort::session::builder::GraphOptimizationLevel::All)
        .unwrap()
        .commit_from_file(&model_path)
        .unwrap();
    let outputs = session
        .run(ort::inputs!["input" => ort::value::TensorRef::from_array_view(&x).unwrap()])
        .unwrap();
    let y_rs = outputs["output"].try_extract_array::<f32>().unwrap();
    assert_eq!(y_rs.shape(), &[2, 1, 5, 7]);
    for (a, b) in y_rs.iter().zip(y_py.iter()) {
        assert!(
            (a - b).abs() < 1e-6,
            "ort crate {a} vs python onnxruntime {b}"
        );
    }
}

#[test]
fn encoded_model_decodes_back_identically() {
    let m = conv1x1_model();
    let bytes = m.encode_to_vec();
    let back = onnx::ModelProto::decode(bytes.as_slice()).unwrap();
    assert_eq!(back, m);
}

fn npy_f32(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}), }}",
        dims.join(", ")
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    data.iter()
        .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
    out
}

fn read_npy_f32(bytes: &[u8]) -> Vec<f32> {
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + hlen]).unwrap();
    assert!(header.contains("'<f4'"), "{header}");
    bytes[10 + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}
