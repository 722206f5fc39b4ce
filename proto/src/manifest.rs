//! The model card: `manifest.json` beside every exported `model.onnx`.
//!
//! The manifest tells the server how to feed the network (HU window and the
//! normalised range, the spatial multiple H and W are padded to) and tells a
//! person what the model is (method, architecture, data, dose, metrics). The same
//! JSON is also stored in the ONNX file's `metadata_props` under the key
//! [`ONNX_METADATA_KEY`].

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Key of the manifest JSON inside the ONNX file's `metadata_props`.
pub const ONNX_METADATA_KEY: &str = "ldct.manifest";
/// File name of the manifest in a model folder.
pub const MANIFEST_FILE: &str = "manifest.json";
/// File name of the network in a model folder.
pub const MODEL_FILE: &str = "model.onnx";
/// Version of this manifest schema; bumped on incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifest {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("manifest {path} is not valid JSON for schema v{SCHEMA_VERSION}: {source}")]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("manifest is invalid: {0}")]
    Invalid(String),
}

/// Training method that produced a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Supervised,
    Cyclegan,
    Noise2score,
    Iscl,
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Supervised => "supervised",
            Method::Cyclegan => "cyclegan",
            Method::Noise2score => "noise2score",
            Method::Iscl => "iscl",
        })
    }
}

/// How HU values map to the network's input and output range.
///
/// `x_norm = (clamp(hu, lo, hi) - lo) / (hi - lo) * (range_hi - range_lo) + range_lo`
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Normalisation {
    /// HU window `[lo, hi]` that is clipped and scaled.
    pub hu_window: [f32; 2],
    /// The normalised range the window maps to, `[-1, 1]` for ldct's networks.
    pub range: [f32; 2],
}

impl Default for Normalisation {
    fn default() -> Self {
        Self {
            hu_window: [-1000.0, 1000.0],
            range: [-1.0, 1.0],
        }
    }
}

/// A short description of the network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchSummary {
    /// Preset name (`resnet`, `unet`, `redcnn`, ...).
    pub preset: String,
    /// Number of trainable parameters.
    pub parameters: u64,
    /// Human-readable one-liner, e.g. "ResNet generator ngf=32 blocks=6 instance norm".
    pub description: String,
}

/// What the model was trained on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainingData {
    pub description: String,
    /// Number of training slices (0 when unknown).
    #[serde(default)]
    pub slices: u64,
    /// The CT sources the training data came from, with their licences (as the
    /// dataset's `dataset.json` records them; empty when it records none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<DataSource>,
}

/// One source of training data.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DataSource {
    pub name: String,
    #[serde(default)]
    pub anatomy: String,
    #[serde(default)]
    pub origin: String,
    #[serde(default)]
    pub licence: String,
}

/// The dose or noise level a model was trained for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dose {
    /// Dose fraction of the low-dose input (0.25 = quarter dose), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<f32>,
    /// Incident photons per ray at full dose used by the simulator, when simulated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub i0: Option<f64>,
    /// Free-text noise description (e.g. "gaussian sigma=0.05 (normalised)").
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub noise: String,
    /// The range of noise levels (HU, std of the inserted noise) the model was trained
    /// on, when it was trained on a range (`data.noise_hu`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_hu: Option<[f32; 2]>,
}

/// Facts about the ONNX file itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnnxInfo {
    /// File name inside the model folder (normally `model.onnx`).
    pub file: String,
    /// Lower-case hex SHA-256 of the file.
    pub sha256: String,
    pub opset: i64,
    pub ir_version: i64,
    /// `fp32` or `fp16` (inputs and outputs are float32 either way).
    pub precision: String,
}

/// Who wrote the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Producer {
    pub name: String,
    pub version: String,
}

impl Default for Producer {
    fn default() -> Self {
        Self {
            name: "ldct".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

/// What a quality metric measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    Psnr,
    Ssim,
    RmseHu,
}

/// An image-quality metric of the manifest's `metrics`, by name:
///
/// - `{psnr,ssim,rmse_hu}_{lo}_{hi}`: the model's output against full dose in the HU
///   window `[lo, hi]` (`ldct-train eval`'s `eval.json`);
/// - the same prefixed `input.` (the low-dose input) or `gain.` (output minus input);
/// - `val_psnr`, `val_ssim`, `val_rmse_hu`, `val_input_psnr`: the last validation of
///   training (`metrics.csv`), at the run's window.
///
/// Anything else (a learning rate, a loss, a count) is not a quality metric: the
/// exporter leaves it out of the manifest and the retraining gate refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QualityMetric {
    pub measure: Measure,
    /// A `gain.` metric (output minus input).
    pub gain: bool,
}

impl QualityMetric {
    /// The metric a name denotes, `None` when it is not a quality metric.
    pub fn parse(name: &str) -> Option<Self> {
        let (gain, rest) = match name.split_once('.') {
            Some(("gain", r)) => (true, r),
            Some(("input", r)) => (false, r),
            Some(_) => return None,
            None => (false, name),
        };
        let measure = match rest {
            "val_psnr" | "val_input_psnr" => return Some(Self::new(Measure::Psnr, gain)),
            "val_ssim" => return Some(Self::new(Measure::Ssim, gain)),
            "val_rmse_hu" => return Some(Self::new(Measure::RmseHu, gain)),
            _ => rest,
        };
        let (measure, window) = [
            ("psnr_", Measure::Psnr),
            ("ssim_", Measure::Ssim),
            ("rmse_hu_", Measure::RmseHu),
        ]
        .into_iter()
        .find_map(|(p, m)| measure.strip_prefix(p).map(|w| (m, w)))?;
        let (lo, hi) = window.split_once('_')?;
        let (lo, hi): (f64, f64) = (lo.parse().ok()?, hi.parse().ok()?);
        (lo < hi).then(|| Self::new(measure, gain))
    }

    fn new(measure: Measure, gain: bool) -> Self {
        Self { measure, gain }
    }

    /// Whether a larger value is a better model.
    pub fn higher_is_better(&self) -> bool {
        self.measure != Measure::RmseHu
    }
}

/// The model card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub schema_version: u32,
    pub name: String,
    pub version: String,
    /// RFC 3339 creation time.
    pub created: chrono::DateTime<chrono::Utc>,
    pub method: Method,
    pub arch: ArchSummary,
    pub training_data: TrainingData,
    pub normalisation: Normalisation,
    pub dose: Dose,
    /// H and W are padded (reflection) to a multiple of this before inference.
    pub spatial_multiple: u32,
    /// ... and to at least this many pixels (the smallest size the graph takes, a
    /// multiple of `spatial_multiple`; absent in manifests written before it existed,
    /// which means no minimum). See [`crate::contract::Padding`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_size: Option<u32>,
    /// Where the network's output is used and where the input passes unchanged (see
    /// [`crate::contract::compose`]); absent in manifests written before it existed,
    /// which then get [`crate::contract::OutsideWindow::for_window`] of their window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outside_window: Option<crate::contract::OutsideWindow>,
    /// Present for a noise-conditioned model: its input has a second channel, the
    /// slice's noise map ([`crate::contract::NoiseMap`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_map: Option<crate::contract::NoiseMap>,
    /// Image-quality metrics of the model ([`QualityMetric`] names), e.g.
    /// `"psnr_-1000_1000": 38.2`: never training losses or hyper-parameters.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    pub onnx: OnnxInfo,
    pub producer: Producer,
}

impl Manifest {
    /// Channels of the model's input: 1, or 2 with a noise map.
    pub fn input_channels(&self) -> usize {
        1 + usize::from(self.noise_map.is_some())
    }

    /// Where the network's output is used: the manifest's `outside_window`, else the
    /// rule for its HU window.
    pub fn outside_window(&self) -> crate::contract::OutsideWindow {
        self.outside_window.unwrap_or_else(|| {
            let [lo, hi] = self.normalisation.hu_window;
            crate::contract::OutsideWindow::for_window(lo, hi)
        })
    }

    /// Reads and validates a manifest file.
    pub fn from_file(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|source| ManifestError::Parse {
                path: path.display().to_string(),
                source,
            })?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Pretty JSON, as written to `manifest.json`.
    pub fn to_json(&self) -> String {
        // Serialising plain data structs with string keys cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks the invariants the server relies on.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let invalid = |m: String| Err(ManifestError::Invalid(m));
        if self.schema_version != SCHEMA_VERSION {
            return invalid(format!(
                "schema_version {} is not supported (expected {SCHEMA_VERSION})",
                self.schema_version
            ));
        }
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return invalid(format!(
                "name {:?} must be non-empty ASCII letters, digits, '-', '_' or '.'",
                self.name
            ));
        }
        if self.version.is_empty() {
            return invalid("version is empty".to_owned());
        }
        let [lo, hi] = self.normalisation.hu_window;
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return invalid(format!(
                "HU window [{lo}, {hi}] must be finite with lo < hi"
            ));
        }
        if let Some(o) = &self.outside_window {
            o.validate().or_else(invalid)?;
        }
        let [rlo, rhi] = self.normalisation.range;
        if !(rlo.is_finite() && rhi.is_finite() && rlo < rhi) {
            return invalid(format!("range [{rlo}, {rhi}] must be finite with lo < hi"));
        }
        if self.spatial_multiple == 0 {
            return invalid("spatial_multiple must be >= 1".to_owned());
        }
        if self.min_size == Some(0) {
            return invalid("min_size must be >= 1 when present".to_owned());
        }
        if self.onnx.sha256.len() != 64 || !self.onnx.sha256.chars().all(|c| c.is_ascii_hexdigit())
        {
            return invalid(format!(
                "onnx.sha256 {:?} is not a SHA-256 hex digest",
                self.onnx.sha256
            ));
        }
        if !matches!(self.onnx.precision.as_str(), "fp32" | "fp16") {
            return invalid(format!(
                "onnx.precision {:?} must be fp32 or fp16",
                self.onnx.precision
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            schema_version: SCHEMA_VERSION,
            name: "default".into(),
            version: "1.0.0".into(),
            created: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default(),
            method: Method::Supervised,
            arch: ArchSummary {
                preset: "redcnn".into(),
                parameters: 1234,
                description: "RED-CNN 96 filters".into(),
            },
            training_data: TrainingData {
                description: "invesalius head CT, simulated quarter dose".into(),
                slices: 80,
                sources: vec![],
            },
            normalisation: Normalisation::default(),
            dose: Dose {
                fraction: Some(0.25),
                i0: Some(1e5),
                noise: String::new(),
                noise_hu: None,
            },
            spatial_multiple: 4,
            min_size: Some(4),
            outside_window: None,
            noise_map: None,
            metrics: BTreeMap::from([("psnr_-1000_1000".to_owned(), 38.5)]),
            onnx: OnnxInfo {
                file: MODEL_FILE.into(),
                sha256: "ab".repeat(32),
                opset: 17,
                ir_version: 10,
                precision: "fp32".into(),
            },
            producer: Producer::default(),
        }
    }

    #[test]
    fn json_round_trip_keeps_every_field() {
        let m = sample();
        let back: Manifest = serde_json::from_str(&m.to_json()).unwrap();
        assert_eq!(back, m);
        back.validate().unwrap();
        assert!(m.to_json().contains("\"method\": \"supervised\""));
    }

    #[test]
    fn invalid_manifests_are_rejected_with_reasons() {
        let mut m = sample();
        m.normalisation.hu_window = [100.0, -100.0];
        assert!(m.validate().unwrap_err().to_string().contains("HU window"));
        let mut m = sample();
        m.spatial_multiple = 0;
        assert!(m
            .validate()
            .unwrap_err()
            .to_string()
            .contains("spatial_multiple"));
        let mut m = sample();
        m.name = "../etc".into();
        assert!(m.validate().unwrap_err().to_string().contains("name"));
        let mut m = sample();
        m.onnx.sha256 = "xyz".into();
        assert!(m.validate().unwrap_err().to_string().contains("sha256"));
    }

    #[test]
    fn quality_metrics_are_told_from_losses_and_hyper_parameters() {
        for name in [
            "psnr_-1000_1000",
            "ssim_-160_240",
            "rmse_hu_-1000_1000",
            "input.psnr_-160_240",
            "gain.ssim_-1000_1000",
            "val_psnr",
            "val_input_psnr",
            "val_rmse_hu",
        ] {
            assert!(QualityMetric::parse(name).is_some(), "{name}");
        }
        for name in [
            "lr",
            "loss",
            "g_loss",
            "eval_slices",
            "psnr",
            "psnr_1000_-1000",
            "x.psnr_0_1",
        ] {
            assert!(QualityMetric::parse(name).is_none(), "{name}");
        }
        assert!(QualityMetric::parse("psnr_-1000_1000")
            .unwrap()
            .higher_is_better());
        assert!(!QualityMetric::parse("rmse_hu_-160_240")
            .unwrap()
            .higher_is_better());
    }

    #[test]
    fn manifests_without_min_size_still_load() {
        let mut v: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        v.as_object_mut().unwrap().remove("min_size");
        let m: Manifest = serde_json::from_value(v).unwrap();
        assert_eq!(m.min_size, None);
        m.validate().unwrap();
        let mut m = sample();
        m.min_size = Some(0);
        assert!(m.validate().unwrap_err().to_string().contains("min_size"));
    }

    #[test]
    fn from_file_reports_path_on_error() {
        let dir = std::env::temp_dir().join(format!("ldct-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("manifest.json");
        std::fs::write(&p, "{ not json").unwrap();
        let e = Manifest::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("manifest.json"), "{e}");
        std::fs::write(&p, sample().to_json()).unwrap();
        assert_eq!(Manifest::from_file(&p).unwrap(), sample());
        std::fs::remove_dir_all(&dir).ok();
    }
}
