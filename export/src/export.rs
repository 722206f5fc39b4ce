//! A run folder (`arch.json` + `weights.safetensors`) to a model folder
//! (`model.onnx` + `manifest.json`), with the parity proof.
//!
//! Order of work: the ONNX file is written first (with the manifest, whose
//! `onnx.sha256` is a placeholder, in its `metadata_props`), then ONNX Runtime is
//! checked against Candle, and only when parity holds is `manifest.json` written.
//! A folder whose parity failed therefore has no manifest and is never served.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use ldct_imaging::window::Normaliser;
use ldct_proto::manifest::{Manifest, Method, MANIFEST_FILE, MODEL_FILE, ONNX_METADATA_KEY};
use ldct_proto::model_dir::sha256_hex;
use ldct_train::model::Network;
use prost::Message;
use serde::Serialize;

use crate::manifest::{build_manifest, read_run_info, CardInput, EMBEDDED_SHA256};
use crate::onnx_writer::{build_model, InstanceNormForm, Precision, WriterOptions};
use crate::parity::{self, ParityInput, ParityReport};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("loading the run {path}: {message}")]
    Run { path: String, message: String },
    #[error(transparent)]
    Writer(#[from] crate::onnx_writer::WriterError),
    #[error(transparent)]
    Parity(#[from] parity::ParityError),
    #[error(transparent)]
    Check(#[from] crate::check::CheckError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid manifest: {0}")]
    Manifest(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Run folder with `arch.json` and `weights.safetensors`.
    pub run: PathBuf,
    /// Model folder to write (created).
    pub out: PathBuf,
    /// Model name; the out folder's name when `None`.
    pub name: Option<String>,
    pub version: String,
    pub precision: Precision,
    /// Instance norm form of float32 graphs.
    pub instance_norm: InstanceNormForm,
    /// Method when the run folder does not name one.
    pub method: Method,
    pub opset: i64,
    /// The real CT slice of the parity check; pydicom's `CT_small.dcm` from the
    /// venv when `None` (skipped with a warning when that is missing too).
    pub parity_slice: Option<PathBuf>,
    /// Leave out the random inputs of the parity check (the CT slice still runs).
    pub parity_random: bool,
    /// The manifest's `created` (inside `model.onnx` too); the time of the export
    /// when `None`. A fixed time makes the same run export to the same bytes.
    pub created: Option<chrono::DateTime<chrono::Utc>>,
}

impl ExportOptions {
    pub fn new(run: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        Self {
            run: run.into(),
            out: out.into(),
            name: None,
            version: "1.0.0".into(),
            precision: Precision::Fp32,
            instance_norm: InstanceNormForm::default(),
            method: Method::Supervised,
            opset: ldct_proto::onnx::DEFAULT_OPSET,
            parity_slice: None,
            parity_random: true,
            created: None,
        }
    }
}

/// What an export wrote and proved.
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    pub out: PathBuf,
    pub onnx: PathBuf,
    pub manifest: PathBuf,
    pub sha256: String,
    pub bytes: usize,
    pub parity: ParityReport,
}

/// Loads a run folder's network (float32, CPU, inference mode).
pub fn load_run(run: &Path) -> Result<Network, ExportError> {
    let mut net =
        Network::load_dir(run, &Device::Cpu, DType::F32).map_err(|e| ExportError::Run {
            path: run.display().to_string(),
            message: e.to_string(),
        })?;
    net.set_training(false);
    Ok(net)
}

/// Every parameter of the network as float32 values by name.
pub fn network_weights(net: &Network) -> Result<HashMap<String, Vec<f32>>, ExportError> {
    let state = net.state().map_err(|e| ExportError::Run {
        path: net.arch().name.clone(),
        message: e.to_string(),
    })?;
    state
        .into_iter()
        .map(|(name, t)| {
            let v = t
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| ExportError::Run {
                    path: name.clone(),
                    message: e.to_string(),
                })?;
            Ok((name, v))
        })
        .collect()
}

/// Exports an in-memory network to `opts.out` (see [`export_run`]).
pub fn export_network(net: &Network, opts: &ExportOptions) -> Result<ExportReport, ExportError> {
    let arch = net.arch();
    let name = match &opts.name {
        Some(n) => n.clone(),
        None => opts
            .out
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into()),
    };
    let run_info = read_run_info(&opts.run).map_err(|e| ExportError::Run {
        path: opts.run.display().to_string(),
        message: e.to_string(),
    })?;
    let card = CardInput {
        name: &name,
        version: &opts.version,
        arch,
        run: &run_info,
        method: opts.method,
        precision: opts.precision.as_str(),
        opset: opts.opset,
        created: opts.created.unwrap_or_else(chrono::Utc::now),
    };
    let embedded = build_manifest(&card, EMBEDDED_SHA256);
    embedded
        .validate()
        .map_err(|e| ExportError::Manifest(e.to_string()))?;
    let normaliser = Normaliser::from_manifest(&embedded.normalisation)
        .map_err(|e| ExportError::Manifest(e.to_string()))?;

    let writer = WriterOptions {
        precision: opts.precision,
        instance_norm: opts.instance_norm,
        opset: opts.opset,
        metadata: vec![(ONNX_METADATA_KEY.to_string(), embedded.to_json())],
        doc_string: format!(
            "{name} {}: {}. Input/output float32 [N,1,H,W] in the normalised range; pad H and W \
             by reflection (bottom/right) to multiples of {} and at least {} and crop the \
             output back.",
            opts.version,
            arch.summary(),
            arch.spatial_multiple(),
            arch.min_size().unwrap_or(1)
        ),
        ..Default::default()
    };
    let model = build_model(arch, &network_weights(net)?, &writer)?;
    let bytes = model.encode_to_vec();

    std::fs::create_dir_all(&opts.out).map_err(io_err(&opts.out))?;
    let manifest_path = opts.out.join(MANIFEST_FILE);
    // A stale manifest must not vouch for the new file before parity holds.
    if manifest_path.exists() {
        std::fs::remove_file(&manifest_path).map_err(io_err(&manifest_path))?;
    }
    let onnx_path = opts.out.join(MODEL_FILE);
    std::fs::write(&onnx_path, &bytes).map_err(io_err(&onnx_path))?;
    let sha256 = sha256_hex(&bytes);

    // Parity: a real CT slice and random inputs of several sizes.
    let mut inputs: Vec<ParityInput> = Vec::new();
    match opts.parity_slice.clone().or_else(parity::default_ct_slice) {
        Some(p) => inputs.push(parity::ct_slice_input(
            &p,
            &normaliser,
            net.arch().input_channels,
        )?),
        None => tracing::warn!(
            "no CT slice for the parity check (pass --parity-slice): random inputs only"
        ),
    }
    if opts.parity_random || inputs.is_empty() {
        inputs.extend(parity::default_random_inputs(arch)?);
    }
    let report = parity::check_parity(
        net,
        &onnx_path,
        &inputs,
        opts.precision.as_str(),
        opts.precision.tolerance(),
    )?;

    let manifest: Manifest = Manifest {
        onnx: ldct_proto::manifest::OnnxInfo {
            sha256: sha256.clone(),
            ..embedded.onnx.clone()
        },
        ..embedded
    };
    std::fs::write(&manifest_path, manifest.to_json()).map_err(io_err(&manifest_path))?;
    crate::check::check_model_dir(&opts.out)?;
    Ok(ExportReport {
        out: opts.out.clone(),
        onnx: onnx_path,
        manifest: manifest_path,
        sha256,
        bytes: bytes.len(),
        parity: report,
    })
}

/// Exports a run folder: loads its network, writes `model.onnx`, proves parity
/// against Candle, writes `manifest.json`.
pub fn export_run(opts: &ExportOptions) -> Result<ExportReport, ExportError> {
    let net = load_run(&opts.run)?;
    export_network(&net, opts)
}
