//! `check_model_dir` accepts a model folder that follows the pixel contract and
//! rejects tampered, malformed or contract-breaking ones with clear errors.

use std::collections::BTreeMap;
use std::path::Path;

use ldct_export::check::{check_model_dir, CheckError};
use ldct_proto::manifest::*;
use ldct_proto::model_dir::sha256_hex;
use ldct_proto::onnx::{self, tensor_proto::DataType};
use prost::Message;

/// output = input * 0.5 (a "denoiser" that halves), with the given io names.
fn model(input: &str, output: &str, channels: i64) -> Vec<u8> {
    let ty = || {
        onnx::tensor_type(
            DataType::Float,
            &[Err("N"), Ok(channels), Err("H"), Err("W")],
        )
    };
    onnx::ModelProto {
        ir_version: onnx::IR_VERSION,
        opset_import: vec![onnx::default_opset(17)],
        producer_name: "test".into(),
        graph: Some(onnx::GraphProto {
            name: "half".into(),
            node: vec![onnx::node(
                "Mul",
                "mul",
                &[input, "half"],
                &[output],
                vec![],
            )],
            initializer: vec![onnx::f32_tensor("half", &[], &[0.5])],
            input: vec![onnx::value_info(input, ty())],
            output: vec![onnx::value_info(output, ty())],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

fn write_dir(dir: &Path, onnx_bytes: &[u8], sha: Option<String>) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(MODEL_FILE), onnx_bytes).unwrap();
    let manifest = Manifest {
        schema_version: SCHEMA_VERSION,
        name: "half".into(),
        version: "0.1.0".into(),
        created: chrono::Utc::now(),
        method: Method::Supervised,
        arch: ArchSummary {
            preset: "test".into(),
            parameters: 1,
            description: "multiply by 0.5".into(),
        },
        training_data: TrainingData::default(),
        normalisation: Normalisation::default(),
        dose: Dose::default(),
        spatial_multiple: 4,
        metrics: BTreeMap::new(),
        onnx: OnnxInfo {
            file: MODEL_FILE.into(),
            sha256: sha.unwrap_or_else(|| sha256_hex(onnx_bytes)),
            opset: 17,
            ir_version: onnx::IR_VERSION,
            precision: "fp32".into(),
        },
        producer: Producer::default(),
    };
    std::fs::write(dir.join(MANIFEST_FILE), manifest.to_json()).unwrap();
}

#[test]
fn a_valid_model_folder_passes_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("half");
    write_dir(&dir, &model("input", "output", 1), None);
    let report = check_model_dir(&dir).unwrap();
    assert_eq!(report.name, "half");
    assert_eq!(report.test_shape, [1, 1, 32, 32]);
    // The test input lies in [-0.5, 0.5]; halved, the output lies within [-0.25, 0.25].
    assert!(report.output_range[0] >= -0.25 - 1e-6 && report.output_range[1] <= 0.25 + 1e-6);
    assert!(report.output_range[1] > report.output_range[0]);
}

#[test]
fn broken_folders_are_rejected_with_reasons() {
    let tmp = tempfile::tempdir().unwrap();

    let dir = tmp.path().join("tampered");
    write_dir(&dir, &model("input", "output", 1), Some("0".repeat(64)));
    let e = check_model_dir(&dir).unwrap_err();
    assert!(matches!(e, CheckError::ModelDir(_)), "{e}");
    assert!(e.to_string().contains("SHA-256"), "{e}");

    let dir = tmp.path().join("names");
    write_dir(&dir, &model("x", "y", 1), None);
    let e = check_model_dir(&dir).unwrap_err();
    assert!(e.to_string().contains("\"input\""), "{e}");

    let dir = tmp.path().join("channels");
    write_dir(&dir, &model("input", "output", 3), None);
    let e = check_model_dir(&dir).unwrap_err();
    assert!(e.to_string().contains("channels"), "{e}");

    let dir = tmp.path().join("garbage");
    write_dir(&dir, b"this is not an onnx file", None);
    let e = check_model_dir(&dir).unwrap_err();
    assert!(matches!(e, CheckError::Session { .. }), "{e}");

    let e = check_model_dir(&tmp.path().join("missing")).unwrap_err();
    assert!(e.to_string().contains("not a folder"), "{e}");
}
