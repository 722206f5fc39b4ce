//! Verifies a model folder the way the server will use it: the manifest is
//! valid, the ONNX file matches its checksum, ONNX Runtime loads it, its input
//! and output follow the pixel contract (float32 `[N, 1, H, W]` named `input` and
//! `output`) and it runs on a padded test input with finite output of the same shape.

use std::path::Path;

use ldct_proto::contract::{self, ContractError, Padding, INPUT_NAME, OUTPUT_NAME};
use ldct_proto::model_dir::{ModelDir, ModelDirError};
use ldct_proto::runtime::{self, RuntimeError};
use ndarray::Array4;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;
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
    Contract(#[from] ContractError),
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
    let channels = model.manifest.input_channels();
    contract::check_session(&session, channels)?;

    // The contract's smoke-test image, padded per the manifest.
    let (side, data) = contract::smoke_input(
        &Padding::of_manifest(&model.manifest),
        model.manifest.normalisation.range,
        channels,
    );
    let x = Array4::from_shape_vec((1, channels, side, side), data)
        .map_err(|e| session_error(path, e))?;
    let tensor = TensorRef::from_array_view(&x).map_err(|e| session_error(path, e))?;
    let outputs = session
        .run(ort::inputs![INPUT_NAME => tensor])
        .map_err(|e| session_error(path, e))?;
    let y = outputs[OUTPUT_NAME]
        .try_extract_array::<f32>()
        .map_err(|e| session_error(path, e))?;
    contract::check_output(x.shape(), y.shape(), y.iter().copied())?;
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
        test_shape: [1, channels, side, side],
        output_range: [mn, mx],
    })
}
