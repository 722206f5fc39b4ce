//! Test fixtures: a tiny real model folder and the in-process application.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ldct_proto::manifest::*;
use ldct_proto::model_dir::sha256_hex;
use ldct_proto::onnx::{self, attr, tensor_proto::DataType};
use ldct_serve::inference::batcher::{BatchConfig, Batcher};
use ldct_serve::inference::device::SessionFactory;
use ldct_serve::inference::registry::Registry;
use ldct_serve::state::{AppState, Limits};
use ndarray::Array2;
use prost::Message;

/// y = x + tanh(box3x3(x) - x): a 3x3 mean filter (zero padding) as a Conv, a tanh and a
/// global residual, float32 [N, 1, H, W] with symbolic N, H, W.
pub fn smoothing_model() -> Vec<u8> {
    let ty = || onnx::tensor_type(DataType::Float, &[Err("N"), Ok(1), Err("H"), Err("W")]);
    onnx::ModelProto {
        ir_version: onnx::IR_VERSION,
        opset_import: vec![onnx::default_opset(17)],
        producer_name: "ldct-serve-test".into(),
        graph: Some(onnx::GraphProto {
            name: "smooth".into(),
            node: vec![
                onnx::node(
                    "Conv",
                    "conv",
                    &["input", "w", "b"],
                    &["s"],
                    vec![
                        attr::ints("kernel_shape", &[3, 3]),
                        attr::ints("pads", &[1, 1, 1, 1]),
                    ],
                ),
                onnx::node("Sub", "sub", &["s", "input"], &["d"], vec![]),
                onnx::node("Tanh", "tanh", &["d"], &["t"], vec![]),
                onnx::node("Add", "add", &["input", "t"], &["output"], vec![]),
            ],
            initializer: vec![
                onnx::f32_tensor("w", &[1, 1, 3, 3], &[1.0 / 9.0; 9]),
                onnx::f32_tensor("b", &[1], &[0.0]),
            ],
            input: vec![onnx::value_info("input", ty())],
            output: vec![onnx::value_info("output", ty())],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// RED-CNN's shape in miniature: a 5x5 convolution without padding (the image shrinks
/// by 4), ReLU, a 5x5 transposed convolution (it grows back) and a global residual,
/// float32 [N, 1, H, W]. It takes images of 5x5 and more only.
pub fn shrink_grow_model() -> Vec<u8> {
    let ty = || onnx::tensor_type(DataType::Float, &[Err("N"), Ok(1), Err("H"), Err("W")]);
    let w1: Vec<f32> = (0..50)
        .map(|i| ((i * 7 % 11) as f32 - 5.0) / 40.0)
        .collect();
    let w2: Vec<f32> = (0..50)
        .map(|i| ((i * 5 % 13) as f32 - 6.0) / 60.0)
        .collect();
    onnx::ModelProto {
        ir_version: onnx::IR_VERSION,
        opset_import: vec![onnx::default_opset(17)],
        producer_name: "ldct-serve-test".into(),
        graph: Some(onnx::GraphProto {
            name: "shrink_grow".into(),
            node: vec![
                onnx::node(
                    "Conv",
                    "enc",
                    &["input", "w1", "b1"],
                    &["e"],
                    vec![attr::ints("kernel_shape", &[5, 5])],
                ),
                onnx::node("Relu", "relu", &["e"], &["r"], vec![]),
                onnx::node(
                    "ConvTranspose",
                    "dec",
                    &["r", "w2", "b2"],
                    &["d"],
                    vec![attr::ints("kernel_shape", &[5, 5])],
                ),
                onnx::node("Add", "add", &["input", "d"], &["output"], vec![]),
            ],
            initializer: vec![
                onnx::f32_tensor("w1", &[2, 1, 5, 5], &w1),
                onnx::f32_tensor("b1", &[2], &[0.05, -0.02]),
                onnx::f32_tensor("w2", &[2, 1, 5, 5], &w2),
                onnx::f32_tensor("b2", &[1], &[0.01]),
            ],
            input: vec![onnx::value_info("input", ty())],
            output: vec![onnx::value_info("output", ty())],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// A model exported with its batch fixed to one: `Reshape(input, [1, 1, -1, 0])` is the
/// identity on `[1, 1, H, W]` but turns `[N, 1, H, W]` into `[1, 1, N*H, W]`. The
/// smoke test (batch 1) passes it; a batch of several slices does not.
pub fn batch_of_one_model() -> Vec<u8> {
    let ty = || onnx::tensor_type(DataType::Float, &[Err("N"), Ok(1), Err("H"), Err("W")]);
    onnx::ModelProto {
        ir_version: onnx::IR_VERSION,
        opset_import: vec![onnx::default_opset(17)],
        producer_name: "ldct-serve-test".into(),
        graph: Some(onnx::GraphProto {
            name: "batch_of_one".into(),
            node: vec![onnx::node(
                "Reshape",
                "reshape",
                &["input", "shape"],
                &["output"],
                vec![],
            )],
            initializer: vec![onnx::i64_tensor("shape", &[4], &[1, 1, -1, 0])],
            input: vec![onnx::value_info("input", ty())],
            output: vec![onnx::value_info("output", ty())],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// The same network computed directly (reference for the tests).
pub fn smoothing_reference(x: &Array2<f32>) -> Array2<f32> {
    let (h, w) = x.dim();
    Array2::from_shape_fn((h, w), |(y, c)| {
        let mut s = 0.0f32;
        for dy in -1i64..=1 {
            for dx in -1i64..=1 {
                let (yy, xx) = (y as i64 + dy, c as i64 + dx);
                if yy >= 0 && xx >= 0 && (yy as usize) < h && (xx as usize) < w {
                    s += x[[yy as usize, xx as usize]];
                }
            }
        }
        let v = x[[y, c]];
        v + (s / 9.0 - v).tanh()
    })
}

pub fn write_model_dir(dir: &Path, name: &str, version: &str, onnx_bytes: &[u8], multiple: u32) {
    write_model_dir_sized(dir, name, version, onnx_bytes, multiple, None)
}

/// [`write_model_dir`] with the manifest's `min_size`.
pub fn write_model_dir_sized(
    dir: &Path,
    name: &str,
    version: &str,
    onnx_bytes: &[u8],
    multiple: u32,
    min_size: Option<u32>,
) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(MODEL_FILE), onnx_bytes).unwrap();
    let manifest = Manifest {
        schema_version: SCHEMA_VERSION,
        name: name.into(),
        version: version.into(),
        created: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        method: Method::Supervised,
        arch: ArchSummary {
            preset: "test".into(),
            parameters: 10,
            description: "3x3 mean filter + tanh + global residual".into(),
        },
        training_data: TrainingData::default(),
        normalisation: Normalisation::default(),
        dose: Dose::default(),
        spatial_multiple: multiple,
        min_size,
        outside_window: None,
        noise_map: None,
        metrics: BTreeMap::new(),
        onnx: OnnxInfo {
            file: MODEL_FILE.into(),
            sha256: sha256_hex(onnx_bytes),
            opset: 17,
            ir_version: onnx::IR_VERSION,
            precision: "fp32".into(),
        },
        producer: Producer::default(),
    };
    std::fs::write(dir.join(MANIFEST_FILE), manifest.to_json()).unwrap();
}

pub struct Options {
    pub queue_capacity: usize,
    pub max_batch: usize,
    pub max_body_bytes: usize,
    pub max_inflight_bytes: usize,
    pub token: Option<&'static str>,
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            queue_capacity: 64,
            max_batch: 4,
            max_body_bytes: 8 << 20,
            max_inflight_bytes: 64 << 20,
            token: None,
            timeout: Duration::from_secs(30),
        }
    }
}

pub fn state(models: &Path, o: Options) -> AppState {
    let registry = Arc::new(Registry::new(
        models.to_path_buf(),
        SessionFactory::cpu(1),
        1,
    ));
    registry.reload();
    let batcher = Arc::new(
        Batcher::start(BatchConfig {
            max_batch: o.max_batch,
            max_batch_pixels: usize::MAX,
            batch_timeout: Duration::from_millis(2),
            queue_capacity: o.queue_capacity,
            workers: 1,
        })
        .unwrap(),
    );
    AppState {
        derived: Arc::new(ldct_imaging::derived::SeriesLabels::default()),
        dicomweb: None,
        audit: None,
        registry,
        batcher,
        strength: 1.0,
        limits: Limits {
            max_body_bytes: o.max_body_bytes,
            body_timeout: std::time::Duration::from_secs(60),
            body_budget: ldct_serve::budget::ByteBudget::new(o.max_inflight_bytes),
            slice: ldct_imaging::limits::SliceLimits::CT,
            request_timeout: o.timeout,
            api_token: o.token.map(Arc::from),
        },
    }
}

/// A float32 .npy of a 2-D image.
pub fn npy(img: &Array2<f32>) -> Vec<u8> {
    let (h, w) = img.dim();
    ldct_imaging::npy::encode_f32(&[h, w], &img.iter().copied().collect::<Vec<_>>()).unwrap()
}

/// A CT-like test image in HU: a disc of soft tissue with a bright insert, in air.
pub fn phantom(h: usize, w: usize) -> Array2<f32> {
    Array2::from_shape_fn((h, w), |(y, x)| {
        let (cy, cx) = (h as f32 / 2.0, w as f32 / 2.0);
        let r = ((y as f32 - cy).powi(2) + (x as f32 - cx).powi(2)).sqrt();
        let base = if r < 0.4 * h.min(w) as f32 {
            40.0
        } else {
            -1000.0
        };
        let insert = if (y as f32 - cy).abs() < 3.0 && (x as f32 - cx).abs() < 3.0 {
            800.0
        } else {
            0.0
        };
        base + insert + 30.0 * (((y * 31 + x * 17) % 13) as f32 / 13.0 - 0.5)
    })
}

/// A response body as JSON (a panic naming the body when it is not).
pub async fn json_body(res: actix_web::dev::ServiceResponse) -> serde_json::Value {
    let bytes = actix_web::test::read_body(res).await;
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&bytes)))
}
