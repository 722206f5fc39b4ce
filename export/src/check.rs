//! Verifies a model folder the way the server will use it: the manifest is
//! valid, the ONNX file matches its checksum, ONNX Runtime loads it, its input
//! and output follow the pixel contract (float32 `[N, 1, H, W]` named `input` and
//! `output`) and it runs on a padded test input with finite output of the same shape.

use std::path::Path;

use ldct_proto::model_dir::{ModelDir, ModelDirError};
use ldct_proto::runtime::{self, RuntimeError};
use ndarray::Array4;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::{TensorRef, ValueType};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    ModelDir(#[from] ModelDirError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("ONNX Runtime rejected {path}: {message}")]
    Session { path: String, message: String },
    #[error("model does not follow the pixel contract: {0}")]
    Contract(String),
}

/// What a successful check found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub name: String,
    pub version: String,
    pub onnx: String,
    pub sha256: String,
    pub ort_library: String,
    pub test_shape: [usize; 4],
    pub output_range: [f32; 2],
}

fn session_error(path: &Path, e: impl std::fmt::Display) -> CheckError {
    CheckError::Session {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn check_float4d(name: &str, ty: &ValueType) -> Result<(), CheckError> {
    match ty {
        ValueType::Tensor { ty, shape, .. } => {
            if *ty != ort::value::TensorElementType::Float32 {
                return Err(CheckError::Contract(format!(
                    "{name} is {ty:?}, not float32"
                )));
            }
            if shape.len() != 4 {
                return Err(CheckError::Contract(format!(
                    "{name} has rank {}, expected [N, 1, H, W]",
                    shape.len()
                )));
            }
            if shape[1] != 1 {
                return Err(CheckError::Contract(format!(
                    "{name} has {} channels, expected 1",
                    shape[1]
                )));
            }
            Ok(())
        }
        other => Err(CheckError::Contract(format!(
            "{name} is not a tensor: {other:?}"
        ))),
    }
}

/// Checks a model folder end to end.
pub fn check_model_dir(dir: &Path) -> Result<CheckReport, CheckError> {
    let model = ModelDir::open(dir)?;
    let rt = runtime::init()?;
    let path = &model.onnx_path;
    let mut session = Session::builder(&rt.environment)
        .map_err(|e| session_error(path, e))?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| session_error(path, e))?
        .commit_from_file(path)
        .map_err(|e| session_error(path, e))?;
    let input = session
        .inputs()
        .iter()
        .find(|i| i.name() == "input")
        .ok_or_else(|| CheckError::Contract("no graph input named \"input\"".into()))?;
    check_float4d("input", input.dtype())?;
    let output = session
        .outputs()
        .iter()
        .find(|o| o.name() == "output")
        .ok_or_else(|| CheckError::Contract("no graph output named \"output\"".into()))?;
    check_float4d("output", output.dtype())?;

    // A smooth test image in the normalised range, padded to the spatial multiple.
    let m = model.manifest.spatial_multiple as usize;
    let side = m * (32 / m).max(1);
    let [lo, hi] = model.manifest.normalisation.range;
    let x = Array4::from_shape_fn((1, 1, side, side), |(_, _, y, x)| {
        let t = ((y * 7 + x * 3) % side) as f32 / side as f32;
        lo + (hi - lo) * (0.25 + 0.5 * t)
    });
    let tensor = TensorRef::from_array_view(&x).map_err(|e| session_error(path, e))?;
    let outputs = session
        .run(ort::inputs!["input" => tensor])
        .map_err(|e| session_error(path, e))?;
    let y = outputs["output"]
        .try_extract_array::<f32>()
        .map_err(|e| session_error(path, e))?;
    if y.shape() != x.shape() {
        return Err(CheckError::Contract(format!(
            "output shape {:?} differs from input shape {:?}",
            y.shape(),
            x.shape()
        )));
    }
    if !y.iter().all(|v| v.is_finite()) {
        return Err(CheckError::Contract(
            "output has NaN or infinite values".into(),
        ));
    }
    let (mn, mx) = y
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    Ok(CheckReport {
        name: model.manifest.name.clone(),
        version: model.manifest.version.clone(),
        onnx: path.display().to_string(),
        sha256: model.manifest.onnx.sha256.clone(),
        ort_library: rt.library.display().to_string(),
        test_shape: [1, 1, side, side],
        output_range: [mn, mx],
    })
}
