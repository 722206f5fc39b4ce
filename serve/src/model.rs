//! A loaded model: its verified folder, manifest, normalisation and ONNX Runtime
//! sessions (one per inference thread, so threads never wait on each other's session).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use ldct_imaging::window::Normaliser;
use ldct_proto::manifest::Manifest;
use ldct_proto::model_dir::ModelDir;
use ndarray::{Array4, ArrayD, Ix4};
use ort::session::Session;
use ort::value::{TensorElementType, TensorRef, ValueType};

use crate::batcher::Infer;
use crate::device::{Device, SessionFactory};
use crate::error::ServeError;

/// Graph input and output names of the pixel contract.
pub const INPUT_NAME: &str = "input";
pub const OUTPUT_NAME: &str = "output";

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub struct LoadedModel {
    /// Unique per load (a reloaded model gets a new id): batches never mix generations.
    pub id: u64,
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub normaliser: Normaliser,
    pub device: Device,
    sessions: Vec<Mutex<Session>>,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("id", &self.id)
            .field("name", &self.manifest.name)
            .field("version", &self.manifest.version)
            .field("device", &self.device)
            .finish()
    }
}

fn check_float4d(what: &str, ty: &ValueType) -> Result<(), String> {
    match ty {
        ValueType::Tensor { ty, shape, .. } => {
            if *ty != TensorElementType::Float32 {
                return Err(format!("{what} is {ty:?}, not float32"));
            }
            if shape.len() != 4 || shape[1] != 1 {
                return Err(format!("{what} has shape {shape:?}, expected [N, 1, H, W]"));
            }
            Ok(())
        }
        other => Err(format!("{what} is not a tensor: {other:?}")),
    }
}

impl LoadedModel {
    /// Opens a model folder (manifest + checksum), creates `sessions` sessions, checks
    /// the pixel contract and runs a smoke test: a model that fails any step is an `Err`.
    pub fn load(dir: &Path, factory: &SessionFactory, sessions: usize) -> Result<Self, String> {
        let md = ModelDir::open(dir).map_err(|e| e.to_string())?;
        Self::from_model_dir(md, factory, sessions)
    }

    pub fn from_model_dir(
        md: ModelDir,
        factory: &SessionFactory,
        sessions: usize,
    ) -> Result<Self, String> {
        let normaliser =
            Normaliser::from_manifest(&md.manifest.normalisation).map_err(|e| e.to_string())?;
        let mut built = Vec::with_capacity(sessions.max(1));
        let mut device = factory.device;
        for _ in 0..sessions.max(1) {
            let (s, d) = factory
                .session(&md.onnx_path)
                .map_err(|e| format!("ONNX Runtime rejected {}: {e}", md.onnx_path.display()))?;
            device = d;
            built.push(s);
        }
        let first = &built[0];
        let input = first
            .inputs()
            .iter()
            .find(|i| i.name() == INPUT_NAME)
            .ok_or("the graph has no input named \"input\"")?;
        check_float4d("input", input.dtype())?;
        let output = first
            .outputs()
            .iter()
            .find(|o| o.name() == OUTPUT_NAME)
            .ok_or("the graph has no output named \"output\"")?;
        check_float4d("output", output.dtype())?;
        let model = LoadedModel {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            dir: md.dir,
            manifest: md.manifest,
            normaliser,
            device,
            sessions: built.into_iter().map(Mutex::new).collect(),
        };
        model.smoke_test()?;
        Ok(model)
    }

    /// Runs every session once on a padded test slice: the output must have the input's
    /// shape and be finite.
    fn smoke_test(&self) -> Result<(), String> {
        let m = self.spatial_multiple();
        let side = m * (32 / m).max(1);
        let [lo, hi] = self.manifest.normalisation.range;
        let x = Array4::from_shape_fn((1, 1, side, side), |(_, _, y, x)| {
            let t = ((y * 7 + x * 3) % side) as f32 / side as f32;
            lo + (hi - lo) * (0.25 + 0.5 * t)
        });
        for worker in 0..self.sessions.len() {
            let y = self
                .run(worker, x.clone())
                .map_err(|e| format!("smoke test: {e}"))?;
            if !y.iter().all(|v| v.is_finite()) {
                return Err("smoke test: the output has NaN or infinite values".into());
            }
        }
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    pub fn version(&self) -> &str {
        &self.manifest.version
    }

    pub fn spatial_multiple(&self) -> usize {
        self.manifest.spatial_multiple.max(1) as usize
    }

    /// Runs one batch `[N, 1, H, W]` on the session of inference thread `worker`.
    pub fn run(&self, worker: usize, batch: Array4<f32>) -> Result<Array4<f32>, ServeError> {
        let slot = &self.sessions[worker % self.sessions.len()];
        // A poisoned lock only means an earlier run panicked (caught by the batcher);
        // the session itself holds no Rust state that could be left inconsistent.
        let mut session = slot.lock().unwrap_or_else(|p| p.into_inner());
        let shape = batch.shape().to_vec();
        let tensor =
            TensorRef::from_array_view(&batch).map_err(|e| ServeError::Inference(e.to_string()))?;
        let outputs = session
            .run(ort::inputs![INPUT_NAME => tensor])
            .map_err(|e| ServeError::Inference(e.to_string()))?;
        let y: ArrayD<f32> = outputs[OUTPUT_NAME]
            .try_extract_array::<f32>()
            .map_err(|e| ServeError::Inference(e.to_string()))?
            .to_owned();
        if y.shape() != shape.as_slice() {
            return Err(ServeError::Inference(format!(
                "output shape {:?} differs from input shape {shape:?}",
                y.shape()
            )));
        }
        y.into_dimensionality::<Ix4>()
            .map_err(|e| ServeError::Inference(e.to_string()))
    }
}

impl Infer for LoadedModel {
    fn id(&self) -> u64 {
        self.id
    }

    fn label(&self) -> &str {
        &self.manifest.name
    }

    fn infer(&self, worker: usize, batch: Array4<f32>) -> Result<Array4<f32>, ServeError> {
        self.run(worker, batch)
    }
}
