//! The run folder: the one definition of what `ldct-train fit` writes and what
//! `ldct-train eval` / `denoise` and `ldct-export` read.
//!
//! | file | what | written by |
//! |---|---|---|
//! | `train.toml` ([`CONFIG_FILE`]) | the resolved configuration (every field) | `fit` |
//! | `run.json` ([`RUN_FILE`]) | the [`RunRecord`]: method, data, dose, window, seed, device | `fit` |
//! | `arch.json`, `weights.safetensors` ([`ARCH_FILE`], [`WEIGHTS_FILE`]) | the generator (low -> full dose) at the last checkpoint | `fit` |
//! | `checkpoint/` ([`CHECKPOINT_DIR`]) | every network, optimiser state and image pool, `state.json` ([`STATE_FILE`]) | `fit` |
//! | `metrics.csv` ([`METRICS_FILE`]) | per epoch: step, learning rate, mean losses, validation PSNR/SSIM/RMSE | `fit` |
//! | `loss.png` ([`LOSS_PNG`]) | the curves of `metrics.csv` | `fit` |
//! | `samples/epoch_NNNN.png` ([`SAMPLES_DIR`]) | low dose, model, full dose and difference of a validation slice | `fit` |
//! | `train.log` ([`LOG_FILE`]) | what happened (start, epochs, checkpoints, interruption) | `fit` |
//! | `eval.json` ([`EVAL_FILE`]), `eval.csv` | quality on a test split, per slice and on average | `eval` |
//!
//! [`RunDir::open`] reads a run folder through these types (as `ldct_proto::model_dir`
//! reads a model folder): what an exported model's manifest says comes from here, and
//! only from the run's own records — its [`RunRecord`] (the method that trained it, the
//! dose of the dataset it trained on) and its quality metrics
//! ([`ldct_proto::manifest::QualityMetric`]: never losses or learning rates).
//!
//! `run.json` is versioned ([`RUN_SCHEMA_VERSION`]); records written before the version
//! existed (version 0) are read too: their dose is `dose_fraction` / `i0` without a
//! noise description.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ldct_proto::arch::{Arch, ArchError};
use ldct_proto::manifest::{DataSource, Dose, Method, Normalisation, QualityMetric, TrainingData};
use serde::{Deserialize, Serialize};

use crate::train::config::TrainConfig;

pub use crate::model::{ARCH_FILE, WEIGHTS_FILE};

pub const CONFIG_FILE: &str = "train.toml";
pub const RUN_FILE: &str = "run.json";
pub const METRICS_FILE: &str = "metrics.csv";
pub const LOSS_PNG: &str = "loss.png";
pub const CHECKPOINT_DIR: &str = "checkpoint";
pub const STATE_FILE: &str = "state.json";
pub const LOG_FILE: &str = "train.log";
pub const SAMPLES_DIR: &str = "samples";
pub const EVAL_FILE: &str = "eval.json";
/// A dataset folder's description of itself (written by `ldct-train dataset`).
pub const DATASET_FILE: &str = "dataset.json";

/// Version of `run.json`; bumped on incompatible changes.
pub const RUN_SCHEMA_VERSION: u32 = 1;

/// `run.json`: what the run is, for people and for the exporter's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// [`RUN_SCHEMA_VERSION`] when written; 0 for records written before it existed.
    #[serde(default)]
    pub schema_version: u32,
    pub tool: String,
    pub method: Method,
    pub seed: u64,
    pub data: DataRecord,
    /// The dose and noise the model was trained for (schema 1 on).
    #[serde(default)]
    pub dose: Dose,
    /// Schema 0's dose fraction and photons per ray (read only).
    #[serde(default, rename = "dose_fraction", skip_serializing)]
    pub legacy_dose_fraction: Option<f64>,
    #[serde(default, rename = "i0", skip_serializing)]
    pub legacy_i0: Option<f64>,
    pub hu_window: [f32; 2],
    pub range: [f32; 2],
    pub device: String,
    pub conv_backend: String,
    pub total_steps: u64,
    pub generator_parameters: usize,
    /// What the method resolved before training (Noise2Score: the noise model, its
    /// parameter and where it came from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method_record: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataRecord {
    pub description: String,
    pub slices: usize,
    /// The dataset's sources and their licences (its `dataset.json`'s `sources`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<DataSource>,
}

/// The sources a dataset folder's `dataset.json` lists (`dataset build`); empty for
/// datasets that list none.
pub fn dataset_sources(root: &Path) -> Vec<DataSource> {
    #[derive(Deserialize)]
    struct Sources {
        #[serde(default)]
        sources: Vec<DataSource>,
    }
    std::fs::read_to_string(root.join(DATASET_FILE))
        .ok()
        .and_then(|t| serde_json::from_str::<Sources>(&t).ok())
        .map(|s| s.sources)
        .unwrap_or_default()
}

impl RunRecord {
    /// The dose, for any schema version.
    pub fn dose(&self) -> Dose {
        if self.schema_version >= 1 {
            self.dose.clone()
        } else {
            Dose {
                fraction: self.legacy_dose_fraction.map(|f| f as f32),
                i0: self.legacy_i0,
                noise: String::new(),
                noise_hu: None,
            }
        }
    }
}

/// What a dataset folder's `dataset.json` says about its simulated low dose (the part
/// of `ldct-train dataset`'s record a run needs; other fields are ignored).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct DatasetSimulation {
    /// `gaussian` for `dataset gaussian`; absent for `dataset import`'s projection-domain
    /// Poisson simulation.
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub dose: Option<f64>,
    #[serde(default)]
    pub i0: Option<f64>,
    #[serde(default)]
    pub electronic_noise: Option<f64>,
    #[serde(default)]
    pub sigma_hu: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct DatasetRecord {
    #[serde(default)]
    simulation: Option<DatasetSimulation>,
}

impl DatasetSimulation {
    /// The simulation recorded in `root/dataset.json`; `None` when the folder has none
    /// (real low-dose scans, or no `dataset.json`).
    pub fn read(root: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(root.join(DATASET_FILE)).ok()?;
        match serde_json::from_str::<DatasetRecord>(&text) {
            Ok(r) => r.simulation,
            Err(e) => {
                tracing::warn!("{}: {e}", root.join(DATASET_FILE).display());
                None
            }
        }
    }

    /// The dose and a description of the noise.
    pub fn dose(&self) -> Dose {
        let noise = match self.kind.as_deref() {
            Some("gaussian") => format!(
                "gaussian, image domain: white, sigma {} HU",
                self.sigma_hu.map_or("?".into(), |s| s.to_string())
            ),
            Some(other) => other.to_owned(),
            None if self.i0.is_some() => {
                let mut s = format!(
                    "poisson, projection domain (simulated): {} photons per ray at full dose",
                    self.i0.map_or("?".into(), |v| v.to_string())
                );
                if let Some(d) = self.dose {
                    s.push_str(&format!(", dose fraction {d}"));
                }
                if let Some(e) = self.electronic_noise.filter(|e| *e > 0.0) {
                    s.push_str(&format!(", electronic noise sigma {e}"));
                }
                s
            }
            None => String::new(),
        };
        Dose {
            fraction: self.dose.map(|d| d as f32),
            i0: self.i0,
            noise,
            noise_hu: None,
        }
    }
}

/// The dose a run trains for: the dataset's simulation (`dataset_root`'s
/// `dataset.json`), with the noise of the method's own model where it has one
/// (Noise2Score's Tweedie noise model, `noise_model`).
pub fn run_dose(dataset_root: Option<&Path>, noise_model: Option<String>) -> Dose {
    let mut dose = dataset_root
        .and_then(DatasetSimulation::read)
        .map(|s| s.dose())
        .unwrap_or_default();
    if let Some(n) = noise_model {
        dose.noise = if dose.noise.is_empty() {
            n
        } else {
            format!("{n} (data: {})", dose.noise)
        };
    }
    dose
}

#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error("{0} is not a run folder (no {ARCH_FILE})")]
    NotARun(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error(transparent)]
    Arch(#[from] ArchError),
}

/// A run folder, read through its types.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub dir: PathBuf,
    pub arch: Arch,
    /// `run.json` (absent in folders not made by `fit`, e.g. a saved network).
    pub record: Option<RunRecord>,
    /// `train.toml`, parsed without validation (a hand-written one may be partial).
    pub config: Option<TrainConfig>,
    /// Quality metrics: the last validation row of `metrics.csv`, then `eval.json`
    /// (which wins). Losses, learning rates and counts are left out.
    pub metrics: BTreeMap<String, f64>,
}

fn read_optional(path: &Path) -> Result<Option<String>, RunDirError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(RunDirError::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}

fn invalid(path: &Path, e: impl std::fmt::Display) -> RunDirError {
    RunDirError::Invalid {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

impl RunDir {
    /// Reads `arch.json` (required), `run.json`, `train.toml`, `metrics.csv` and
    /// `eval.json` (each when present; a present file that cannot be read is an error).
    pub fn open(dir: &Path) -> Result<Self, RunDirError> {
        let arch_path = dir.join(ARCH_FILE);
        let arch_text = read_optional(&arch_path)?
            .ok_or_else(|| RunDirError::NotARun(dir.display().to_string()))?;
        let arch = Arch::from_json(&arch_text)?;
        let record = match read_optional(&dir.join(RUN_FILE))? {
            Some(t) => Some(
                serde_json::from_str::<RunRecord>(&t)
                    .map_err(|e| invalid(&dir.join(RUN_FILE), e))?,
            ),
            None => None,
        };
        if let Some(r) = &record {
            if r.schema_version > RUN_SCHEMA_VERSION {
                return Err(invalid(
                    &dir.join(RUN_FILE),
                    format!(
                        "schema_version {} is newer than this tool's {RUN_SCHEMA_VERSION}",
                        r.schema_version
                    ),
                ));
            }
        }
        let config = match read_optional(&dir.join(CONFIG_FILE))? {
            Some(t) => Some(
                toml::from_str::<TrainConfig>(&t)
                    .map_err(|e| invalid(&dir.join(CONFIG_FILE), e))?,
            ),
            None => None,
        };
        let mut metrics = BTreeMap::new();
        if let Some(t) = read_optional(&dir.join(METRICS_FILE))? {
            metrics.extend(last_quality_row(&t));
        }
        if let Some(t) = read_optional(&dir.join(EVAL_FILE))? {
            let v: serde_json::Value =
                serde_json::from_str(&t).map_err(|e| invalid(&dir.join(EVAL_FILE), e))?;
            quality_numbers(&v, "", &mut metrics);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            arch,
            record,
            config,
            metrics,
        })
    }

    /// The method that trained the network: `run.json`, else `train.toml`.
    pub fn method(&self) -> Option<Method> {
        self.record
            .as_ref()
            .map(|r| r.method)
            .or_else(|| self.config.as_ref().map(|c| c.method))
    }

    /// The HU window and normalised range the network was trained with.
    pub fn normalisation(&self) -> Option<Normalisation> {
        match (&self.record, &self.config) {
            (Some(r), _) => Some(Normalisation {
                hu_window: r.hu_window,
                range: r.range,
            }),
            (None, Some(c)) => Some(Normalisation {
                hu_window: c.data.window,
                range: Normalisation::default().range,
            }),
            (None, None) => None,
        }
    }

    pub fn training_data(&self) -> TrainingData {
        self.record
            .as_ref()
            .map(|r| TrainingData {
                description: r.data.description.clone(),
                slices: r.data.slices as u64,
                sources: r.data.sources.clone(),
            })
            .unwrap_or_default()
    }

    pub fn dose(&self) -> Dose {
        self.record
            .as_ref()
            .map(RunRecord::dose)
            .unwrap_or_default()
    }
}

/// The quality columns of the last row of `metrics.csv` (rows without a validation
/// leave their cells empty: nothing is taken from them).
fn last_quality_row(text: &str) -> BTreeMap<String, f64> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let (Some(header), Some(last)) = (lines.next(), lines.next_back()) else {
        return BTreeMap::new();
    };
    header
        .split(',')
        .zip(last.split(','))
        .filter(|(k, _)| QualityMetric::parse(k.trim()).is_some())
        .filter_map(|(k, v)| {
            let f: f64 = v.trim().parse().ok()?;
            f.is_finite().then(|| (k.trim().to_owned(), f))
        })
        .collect()
}

/// The quality metrics of `eval.json`, flattened with `.` (`input.psnr_-160_240`).
fn quality_numbers(v: &serde_json::Value, prefix: &str, out: &mut BTreeMap<String, f64>) {
    let Some(o) = v.as_object() else {
        return;
    };
    for (k, x) in o {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match x {
            serde_json::Value::Object(_) => quality_numbers(x, &key, out),
            _ => {
                if let Some(f) = x.as_f64().filter(|f| f.is_finite()) {
                    if QualityMetric::parse(&key).is_some() {
                        out.insert(key, f);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(schema_version: u32) -> RunRecord {
        RunRecord {
            schema_version,
            tool: "ldct-train test".into(),
            method: Method::Supervised,
            seed: 1,
            data: DataRecord {
                description: "head CT".into(),
                slices: 80,
                sources: vec![],
            },
            dose: Dose {
                fraction: Some(0.25),
                i0: Some(1e5),
                noise: "poisson".into(),
                noise_hu: None,
            },
            legacy_dose_fraction: None,
            legacy_i0: None,
            hu_window: [-1000.0, 1000.0],
            range: [-1.0, 1.0],
            device: "Cpu".into(),
            conv_backend: "candle".into(),
            total_steps: 10,
            generator_parameters: 100,
            method_record: None,
        }
    }

    #[test]
    fn a_run_record_round_trips_and_schema_0_records_still_read() {
        let r = record(RUN_SCHEMA_VERSION);
        let back: RunRecord = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        let v0 = r#"{"tool": "ldct-train 0.1.0", "method": "cyclegan", "seed": 3,
            "data": {"description": "d", "slices": 4}, "dose_fraction": 0.25, "i0": 100000.0,
            "hu_window": [-1000.0, 1000.0], "range": [-1.0, 1.0], "device": "Cpu",
            "conv_backend": "fast", "total_steps": 5, "generator_parameters": 9}"#;
        let old: RunRecord = serde_json::from_str(v0).unwrap();
        assert_eq!(old.schema_version, 0);
        assert_eq!(
            old.dose(),
            Dose {
                fraction: Some(0.25),
                i0: Some(1e5),
                noise: String::new(),
                noise_hu: None,
            }
        );
    }

    #[test]
    fn the_dose_comes_from_the_datasets_simulation() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(run_dose(Some(dir.path()), None), Dose::default());
        std::fs::write(
            dir.path().join(DATASET_FILE),
            r#"{"format": "ldct-dataset/1", "simulation": {"preset": null, "dose": 0.25,
                "i0": 100000.0, "electronic_noise": 0.0, "count_floor": 0.1, "seed": 1}}"#,
        )
        .unwrap();
        let d = run_dose(Some(dir.path()), None);
        assert_eq!((d.fraction, d.i0), (Some(0.25), Some(1e5)));
        assert!(
            d.noise.starts_with("poisson, projection domain"),
            "{}",
            d.noise
        );
        let n2s = run_dose(
            Some(dir.path()),
            Some("noise2score gaussian sigma 0.02".into()),
        );
        assert!(n2s.noise.starts_with("noise2score gaussian") && n2s.noise.contains("poisson"));
        std::fs::write(
            dir.path().join(DATASET_FILE),
            r#"{"simulation": {"kind": "gaussian", "sigma_hu": 20.0, "seed": 1}}"#,
        )
        .unwrap();
        assert_eq!(
            run_dose(Some(dir.path()), None).noise,
            "gaussian, image domain: white, sigma 20 HU"
        );
    }

    #[test]
    fn only_quality_metrics_are_read() {
        let csv = "epoch,step,lr,loss,val_psnr,val_ssim,val_rmse_hu,val_input_psnr,elapsed_s\n\
                   1,10,0.001,0.5,30.0,0.8,40.0,28.0,1.0\n2,20,0.0005,0.4,31.5,0.85,35.0,28.0,2.0\n";
        let m = last_quality_row(csv);
        assert_eq!(
            m.keys().collect::<Vec<_>>(),
            ["val_input_psnr", "val_psnr", "val_rmse_hu", "val_ssim"]
        );
        assert_eq!(m["val_psnr"], 31.5);
        let eval: serde_json::Value = serde_json::from_str(
            r#"{"psnr_-1000_1000": 38.2, "eval_slices": 3, "eval_data": "x",
                "input": {"psnr_-1000_1000": 30.0}, "gain": {"psnr_-1000_1000": 8.2}}"#,
        )
        .unwrap();
        let mut out = BTreeMap::new();
        quality_numbers(&eval, "", &mut out);
        assert_eq!(
            out.keys().collect::<Vec<_>>(),
            [
                "gain.psnr_-1000_1000",
                "input.psnr_-1000_1000",
                "psnr_-1000_1000"
            ]
        );
    }
}
