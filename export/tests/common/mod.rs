//! Model folders for the export crate's integration tests: a tiny real ONNX model
//! (output = input * 0.5) and a manifest exactly as `ldct-export` writes it.

use std::collections::BTreeMap;
use std::path::Path;

use ldct_proto::manifest::*;
use ldct_proto::model_dir::sha256_hex;
use ldct_proto::onnx::{self, tensor_proto::DataType};
use prost::Message;

/// output = input * 0.5, float32 [N, channels, H, W] with the given io names.
pub fn half_model(input: &str, output: &str, channels: i64) -> Vec<u8> {
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

/// Writes `model.onnx` and `manifest.json` into `dir`; the manifest's SHA-256 is
/// the file's unless `sha` overrides it.
pub fn write_model_dir(
    dir: &Path,
    onnx_bytes: &[u8],
    version: &str,
    metrics: &[(&str, f64)],
    sha: Option<String>,
) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(MODEL_FILE), onnx_bytes).unwrap();
    let manifest = Manifest {
        schema_version: SCHEMA_VERSION,
        name: "half".into(),
        version: version.into(),
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
        min_size: None,
        outside_window: None,
        noise_map: None,
        metrics: metrics
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect::<BTreeMap<_, _>>(),
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
