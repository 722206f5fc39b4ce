//! The retraining gate: publish a candidate model only when its evaluation metric
//! does not regress against the serving model's.
//!
//! Both model folders hold a `manifest.json` whose `metrics` map carries the
//! evaluation results of the training run (e.g. `"psnr_-1000_1000": 38.2`). The metric
//! must be an image-quality metric (`ldct_proto::manifest::QualityMetric`: PSNR, SSIM,
//! RMSE in a window, or a validation figure), never a training loss or the learning
//! rate. The candidate is accepted when it is at least `min_improvement` better than
//! the serving model: `candidate >= serving + min_improvement` for PSNR and SSIM,
//! `candidate <= serving - min_improvement` for RMSE. With no serving model (first
//! deployment) the candidate is accepted with a note.

use std::path::{Path, PathBuf};

use ldct_proto::manifest::{Manifest, ManifestError, QualityMetric, MANIFEST_FILE};
use serde::Serialize;

/// The metric the gate compares by default: PSNR in the [-1000, 1000] HU window.
pub const DEFAULT_METRIC: &str = "psnr_-1000_1000";

/// What the gate compares.
#[derive(Debug, Clone)]
pub struct GateOptions {
    pub candidate: PathBuf,
    pub serving: PathBuf,
    pub metric: String,
    pub min_improvement: f64,
}

impl GateOptions {
    pub fn new(candidate: impl Into<PathBuf>, serving: impl Into<PathBuf>) -> Self {
        GateOptions {
            candidate: candidate.into(),
            serving: serving.into(),
            metric: DEFAULT_METRIC.to_owned(),
            min_improvement: 0.0,
        }
    }
}

/// The gate's decision (printed as JSON by `ldct-export gate`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub accepted: bool,
    pub metric: String,
    pub candidate: ModelScore,
    /// `None` when no serving model exists.
    pub serving: Option<ModelScore>,
    pub min_improvement: f64,
    /// `candidate - serving` (absent without a serving model).
    pub delta: Option<f64>,
    pub note: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelScore {
    pub dir: String,
    pub name: String,
    pub version: String,
    pub value: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("{which} model {dir}: {source}")]
    Manifest {
        which: &'static str,
        dir: String,
        #[source]
        source: ManifestError,
    },
    #[error(
        "{which} model {dir} ({model}) has no metric {metric:?} in its manifest \
         (metrics present: {present}); evaluate it first (ldct-train eval) or pick --metric"
    )]
    MissingMetric {
        which: &'static str,
        dir: String,
        /// "name version" of the manifest.
        model: String,
        metric: String,
        present: String,
    },
    #[error("{which} model {dir}: metric {metric:?} is not finite ({value})")]
    NonFinite {
        which: &'static str,
        dir: String,
        metric: String,
        value: f64,
    },
    #[error("--min-improvement {0} must be finite")]
    BadThreshold(f64),
    #[error(
        "--metric {0:?} is not an image-quality metric: the gate compares psnr_LO_HI, \
         ssim_LO_HI or rmse_hu_LO_HI (HU window, e.g. psnr_-1000_1000), their input./gain. \
         forms, or val_psnr / val_ssim / val_rmse_hu; never a loss or the learning rate"
    )]
    NotAQualityMetric(String),
}

fn score(which: &'static str, dir: &Path, metric: &str) -> Result<ModelScore, GateError> {
    let manifest =
        Manifest::from_file(&dir.join(MANIFEST_FILE)).map_err(|source| GateError::Manifest {
            which,
            dir: dir.display().to_string(),
            source,
        })?;
    let value = *manifest
        .metrics
        .get(metric)
        .ok_or_else(|| GateError::MissingMetric {
            which,
            dir: dir.display().to_string(),
            model: format!("{} {}", manifest.name, manifest.version),
            metric: metric.to_owned(),
            present: if manifest.metrics.is_empty() {
                "none".to_owned()
            } else {
                manifest
                    .metrics
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        })?;
    if !value.is_finite() {
        return Err(GateError::NonFinite {
            which,
            dir: dir.display().to_string(),
            metric: metric.to_owned(),
            value,
        });
    }
    Ok(ModelScore {
        dir: dir.display().to_string(),
        name: manifest.name,
        version: manifest.version,
        value,
    })
}

/// Compares the candidate with the serving model. `Ok` carries the verdict either
/// way (accepted or refused); `Err` means the gate could not decide (unreadable
/// candidate manifest, missing metric, ...), which a pipeline must treat as a refusal.
pub fn gate(opts: &GateOptions) -> Result<Verdict, GateError> {
    if !opts.min_improvement.is_finite() {
        return Err(GateError::BadThreshold(opts.min_improvement));
    }
    let quality = QualityMetric::parse(&opts.metric)
        .ok_or_else(|| GateError::NotAQualityMetric(opts.metric.clone()))?;
    let candidate = score("candidate", &opts.candidate, &opts.metric)?;
    if !opts.serving.join(MANIFEST_FILE).exists() {
        return Ok(Verdict {
            accepted: true,
            metric: opts.metric.clone(),
            note: format!(
                "no serving model at {} (no {MANIFEST_FILE}): accepting candidate {} {} \
                 ({} = {}) as the first model",
                opts.serving.display(),
                candidate.name,
                candidate.version,
                opts.metric,
                candidate.value
            ),
            candidate,
            serving: None,
            min_improvement: opts.min_improvement,
            delta: None,
        });
    }
    let serving = score("serving", &opts.serving, &opts.metric)?;
    let delta = candidate.value - serving.value;
    let (accepted, required, relation) = if quality.higher_is_better() {
        let required = serving.value + opts.min_improvement;
        (candidate.value >= required, required, (">=", "below", "+"))
    } else {
        let required = serving.value - opts.min_improvement;
        (candidate.value <= required, required, ("<=", "above", "-"))
    };
    let (cmp, worse, sign) = relation;
    let note = if accepted {
        format!(
            "accepted: candidate {} {} {} = {} {cmp} serving {} {} {} = {} {sign} min improvement {}",
            candidate.name,
            candidate.version,
            opts.metric,
            candidate.value,
            serving.name,
            serving.version,
            opts.metric,
            serving.value,
            opts.min_improvement
        )
    } else {
        format!(
            "REFUSED: candidate {} {} {} = {} is {worse} serving {} {} {} = {} {sign} min improvement {} \
             (needs {cmp} {required})",
            candidate.name,
            candidate.version,
            opts.metric,
            candidate.value,
            serving.name,
            serving.version,
            opts.metric,
            serving.value,
            opts.min_improvement
        )
    };
    Ok(Verdict {
        accepted,
        metric: opts.metric.clone(),
        candidate,
        serving: Some(serving),
        min_improvement: opts.min_improvement,
        delta: Some(delta),
        note,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ldct_proto::manifest::*;
    use std::collections::BTreeMap;

    fn write(dir: &Path, name: &str, metrics: &[(&str, f64)]) {
        std::fs::create_dir_all(dir).unwrap();
        let manifest = Manifest {
            schema_version: SCHEMA_VERSION,
            name: name.into(),
            version: "1.0.0".into(),
            created: chrono::Utc::now(),
            method: Method::Supervised,
            arch: ArchSummary {
                preset: "test".into(),
                parameters: 1,
                description: "gate test".into(),
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
                sha256: "a".repeat(64),
                opset: 17,
                ir_version: ldct_proto::onnx::IR_VERSION,
                precision: "fp32".into(),
            },
            producer: Producer::default(),
        };
        std::fs::write(dir.join(MANIFEST_FILE), manifest.to_json()).unwrap();
    }

    #[test]
    fn better_is_accepted_worse_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (c, s) = (tmp.path().join("c"), tmp.path().join("s"));
        write(&s, "serving", &[(DEFAULT_METRIC, 38.0)]);
        write(&c, "cand", &[(DEFAULT_METRIC, 38.5)]);
        let v = gate(&GateOptions::new(&c, &s)).unwrap();
        assert!(v.accepted, "{v:?}");
        assert!((v.delta.unwrap() - 0.5).abs() < 1e-12);

        let mut o = GateOptions::new(&c, &s);
        o.min_improvement = 1.0;
        let v = gate(&o).unwrap();
        assert!(
            !v.accepted && v.note.contains("38.5") && v.note.contains("38"),
            "{v:?}"
        );

        write(&c, "cand", &[(DEFAULT_METRIC, 37.0)]);
        let v = gate(&GateOptions::new(&c, &s)).unwrap();
        assert!(!v.accepted, "{v:?}");
        // Equal is not a regression.
        write(&c, "cand", &[(DEFAULT_METRIC, 38.0)]);
        assert!(gate(&GateOptions::new(&c, &s)).unwrap().accepted);
    }

    #[test]
    fn missing_metric_and_missing_serving() {
        let tmp = tempfile::tempdir().unwrap();
        let (c, s) = (tmp.path().join("c"), tmp.path().join("s"));
        write(&c, "cand", &[("ssim_-1000_1000", 0.9)]);
        let e = gate(&GateOptions::new(&c, &s)).unwrap_err();
        assert!(matches!(e, GateError::MissingMetric { .. }), "{e}");
        assert!(
            e.to_string().contains(DEFAULT_METRIC) && e.to_string().contains("ssim"),
            "{e}"
        );

        write(&c, "cand", &[(DEFAULT_METRIC, 30.0)]);
        let v = gate(&GateOptions::new(&c, &s)).unwrap();
        assert!(v.accepted && v.serving.is_none() && v.note.contains("no serving model"));

        let mut o = GateOptions::new(&c, &s);
        o.min_improvement = f64::NAN;
        assert!(matches!(gate(&o), Err(GateError::BadThreshold(_))));
    }

    #[test]
    fn a_training_figure_is_not_a_gate_metric() {
        let tmp = tempfile::tempdir().unwrap();
        let (c, s) = (tmp.path().join("c"), tmp.path().join("s"));
        // Old manifests carried the learning rate: the gate still refuses it.
        write(&c, "cand", &[("lr", 0.001), (DEFAULT_METRIC, 30.0)]);
        write(&s, "serving", &[("lr", 0.002), (DEFAULT_METRIC, 31.0)]);
        for metric in ["lr", "loss", "eval_slices"] {
            let o = GateOptions {
                metric: metric.into(),
                ..GateOptions::new(&c, &s)
            };
            let e = gate(&o).unwrap_err();
            assert!(matches!(e, GateError::NotAQualityMetric(_)), "{e}");
            assert!(e.to_string().contains("not an image-quality metric"), "{e}");
        }
    }

    #[test]
    fn lower_rmse_is_better() {
        let tmp = tempfile::tempdir().unwrap();
        let (c, s) = (tmp.path().join("c"), tmp.path().join("s"));
        let metric = "rmse_hu_-1000_1000";
        write(&s, "serving", &[(metric, 40.0)]);
        write(&c, "cand", &[(metric, 35.0)]);
        let o = GateOptions {
            metric: metric.into(),
            min_improvement: 2.0,
            ..GateOptions::new(&c, &s)
        };
        let v = gate(&o).unwrap();
        assert!(v.accepted, "{v:?}");
        write(&c, "cand", &[(metric, 39.0)]);
        let v = gate(&o).unwrap();
        assert!(!v.accepted && v.note.contains("needs <= 38"), "{v:?}");
    }
}
