//! A loaded model: its verified folder, manifest, normalisation and ONNX Runtime
//! sessions (one per inference thread, so threads never wait on each other's session).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use ldct_imaging::window::Normaliser;
use ldct_proto::contract::{self, Padding, INPUT_NAME, OUTPUT_NAME};
use ldct_proto::manifest::Manifest;
use ldct_proto::model_dir::ModelDir;
use ndarray::{Array4, ArrayD, Ix4};
use ort::session::{RunOptions, Session};
use ort::value::TensorRef;

use super::batcher::Infer;
use super::device::{Device, SessionFactory};
use super::warmup::{Warmup, WarmupReport};
use crate::error::ServeError;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub struct LoadedModel {
    /// Unique per load (a reloaded model gets a new id): batches never mix generations.
    pub id: u64,
    /// The name requests use: the manifest's, or `--model-name`'s alias.
    served_name: String,
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub normaliser: Normaliser,
    /// Where the output is used and where the input passes (the manifest's rule).
    pub outside: ldct_proto::contract::OutsideWindow,
    pub device: Device,
    /// Batches above this many pixels shrink ONNX Runtime's CPU arena after they run.
    shrink_above: Option<usize>,
    /// What the warmup ran before the model was published (`None`: warmup off).
    pub warmup: Option<WarmupReport>,
    sessions: Vec<Mutex<Session>>,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("id", &self.id)
            .field("name", &self.served_name)
            .field("version", &self.manifest.version)
            .field("device", &self.device)
            .finish()
    }
}

impl LoadedModel {
    /// How this model's output becomes the served image at `strength`.
    pub fn compose(&self, strength: f32) -> super::pixels::Compose<'_> {
        super::pixels::Compose {
            norm: &self.normaliser,
            outside: &self.outside,
            strength,
        }
    }

    /// Opens a model folder (manifest + checksum), creates `sessions` sessions, checks
    /// the pixel contract, runs a smoke test and then `warmup`: a model that fails any
    /// step is an `Err`.
    pub fn load(
        dir: &Path,
        factory: &SessionFactory,
        sessions: usize,
        warmup: &Warmup,
    ) -> Result<Self, String> {
        let md = ModelDir::open(dir).map_err(|e| e.to_string())?;
        Self::from_model_dir(md, factory, sessions, warmup)
    }

    pub fn from_model_dir(
        md: ModelDir,
        factory: &SessionFactory,
        sessions: usize,
        warmup: &Warmup,
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
        if let Some(first) = built.first() {
            contract::check_session(first, md.manifest.input_channels())
                .map_err(|e| e.to_string())?;
        }
        let mut model = LoadedModel {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            served_name: md.manifest.name.clone(),
            dir: md.dir,
            outside: md.manifest.outside_window(),
            manifest: md.manifest,
            normaliser,
            device,
            shrink_above: factory.shrink_above(device),
            warmup: None,
            sessions: built.into_iter().map(Mutex::new).collect(),
        };
        model.smoke_test()?;
        if !warmup.is_off() {
            model.warmup = Some(model.warm_up(warmup)?);
        }
        Ok(model)
    }

    /// Runs `warmup`'s plan on every session; the output must have the input's shape and
    /// be finite. An error names the shape that failed.
    fn warm_up(&self, warmup: &Warmup) -> Result<WarmupReport, String> {
        let started = Instant::now();
        let shapes = warmup.plan(&self.padding());
        let channels = self.manifest.input_channels();
        let range = self.manifest.normalisation.range;
        for shape in &shapes {
            let one = contract::pattern_input(shape.side, range, channels);
            let mut data = Vec::with_capacity(one.len() * shape.batch);
            for _ in 0..shape.batch {
                data.extend_from_slice(&one);
            }
            let x = Array4::from_shape_vec((shape.batch, channels, shape.side, shape.side), data)
                .map_err(|e| e.to_string())?;
            let what = |e: &dyn std::fmt::Display| {
                format!(
                    "warmup {}x{channels}x{}x{}: {e}",
                    shape.batch, shape.side, shape.side
                )
            };
            for worker in 0..self.sessions.len() {
                let y = self.run(worker, x.clone()).map_err(|e| what(&e))?;
                contract::check_output(x.shape(), y.shape(), y.iter().copied())
                    .map_err(|e| what(&e))?;
            }
        }
        Ok(WarmupReport {
            shapes,
            sessions: self.sessions.len(),
            duration: started.elapsed(),
        })
    }

    /// The model served under `name` instead of its manifest's name (`--model-name`).
    pub fn serve_as(mut self, name: &str) -> Self {
        self.served_name = name.to_owned();
        self
    }

    /// Sessions (one per inference thread).
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Runs every session once on the contract's smoke-test image: the output must have
    /// the input's shape and be finite.
    fn smoke_test(&self) -> Result<(), String> {
        let c = self.manifest.input_channels();
        let (side, data) =
            contract::smoke_input(&self.padding(), self.manifest.normalisation.range, c);
        let x = Array4::from_shape_vec((1, c, side, side), data).map_err(|e| e.to_string())?;
        for worker in 0..self.sessions.len() {
            let y = self
                .run(worker, x.clone())
                .map_err(|e| format!("smoke test: {e}"))?;
            contract::check_output(x.shape(), y.shape(), y.iter().copied())
                .map_err(|e| format!("smoke test: {e}"))?;
        }
        Ok(())
    }

    /// The name requests use (the manifest's, or the `--model-name` alias).
    pub fn name(&self) -> &str {
        &self.served_name
    }

    pub fn version(&self) -> &str {
        &self.manifest.version
    }

    /// The padding rule of the pixel contract: the manifest's spatial multiple and
    /// minimum size.
    pub fn padding(&self) -> Padding {
        Padding::of_manifest(&self.manifest)
    }

    /// The noise map value of a slice (HU), for a noise-conditioned model; `None` for a
    /// model without a noise map.
    pub fn noise_map_value(&self, hu: &ndarray::Array2<f32>) -> Option<f32> {
        self.manifest
            .noise_map
            .as_ref()
            .and_then(|_| self.noise_map_from(ldct_imaging::noise::estimate_noise_hu(hu)))
    }

    /// [`Self::noise_map_value`] from the slice's noise estimate already made
    /// (`ldct_imaging::noise::estimate_noise_hu`), for callers that need it anyway.
    pub fn noise_map_from(&self, noise_hu: Option<f32>) -> Option<f32> {
        self.manifest.noise_map.as_ref().map(|_| {
            let n = &self.manifest.normalisation;
            contract::noise_map_value(noise_hu, n.hu_window, n.range)
        })
    }

    /// Runs one batch `[N, C, H, W]` on the session of inference thread `worker`;
    /// returns `[N, 1, H, W]`.
    pub fn run(&self, worker: usize, batch: Array4<f32>) -> Result<Array4<f32>, ServeError> {
        let slot = &self.sessions[worker % self.sessions.len()];
        // A poisoned lock only means an earlier run panicked (caught by the batcher);
        // the session itself holds no Rust state that could be left inconsistent.
        let mut session = slot.lock().unwrap_or_else(|p| p.into_inner());
        let mut shape = batch.shape().to_vec();
        shape[1] = 1;
        let tensor =
            TensorRef::from_array_view(&batch).map_err(|e| ServeError::Inference(e.to_string()))?;
        let pixels = shape[0] * shape[2] * shape[3];
        // A batch larger than the production ones: its memory goes back to the system
        // once it has run.
        let shrink = match self.shrink_above.filter(|&keep| pixels > keep) {
            Some(_) => {
                let mut opts =
                    RunOptions::new().map_err(|e| ServeError::Inference(e.to_string()))?;
                opts.set("memory.enable_memory_arena_shrinkage", "cpu:0")
                    .map_err(|e| ServeError::Inference(e.to_string()))?;
                Some(opts)
            }
            None => None,
        };
        let outputs = match &shrink {
            Some(opts) => session.run_with_options(ort::inputs![INPUT_NAME => tensor], opts),
            None => session.run(ort::inputs![INPUT_NAME => tensor]),
        }
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
        &self.served_name
    }

    fn input_channels(&self) -> usize {
        self.manifest.input_channels()
    }

    fn infer(&self, worker: usize, batch: Array4<f32>) -> Result<Array4<f32>, ServeError> {
        self.run(worker, batch)
    }
}
