//! The model card of an export, filled from the run folder through its types
//! (`ldct_train::run_dir::RunDir`):
//!
//! - method: `run.json`'s (the method that trained it), else `train.toml`'s, else
//!   `--method`;
//! - training data, dose: `run.json` (the dose of the dataset's simulation, and for
//!   Noise2Score its own noise model);
//! - normalisation: `run.json`'s window and range, else `train.toml`'s window;
//! - metrics: quality metrics only (`ldct_proto::manifest::QualityMetric`): the last
//!   validation of `metrics.csv` and `eval.json` (which wins); never the learning rate
//!   or the losses;
//! - spatial multiple and minimum size: the architecture's (the pixel contract).

use std::collections::BTreeMap;
use std::path::Path;

use ldct_proto::arch::Arch;
use ldct_proto::contract::{NoiseMap, OutsideWindow};
use ldct_proto::manifest::{
    ArchSummary, Dose, Manifest, Method, Normalisation, OnnxInfo, Producer, TrainingData,
    MODEL_FILE, SCHEMA_VERSION,
};
use ldct_train::run_dir::{RunDir, RunDirError};

/// Placeholder for `onnx.sha256` in the copy of the manifest stored inside the
/// ONNX file (a file cannot hold its own digest); `manifest.json` has the real one.
pub const EMBEDDED_SHA256: &str =
    "0000000000000000000000000000000000000000000000000000000000000000";

/// What the run folder says about the training.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunInfo {
    pub method: Option<Method>,
    pub training_data: TrainingData,
    pub dose: Dose,
    pub normalisation: Option<Normalisation>,
    /// Quality metrics only.
    pub metrics: BTreeMap<String, f64>,
}

impl RunInfo {
    pub fn from_run_dir(run: &RunDir) -> Self {
        Self {
            method: run.method(),
            training_data: run.training_data(),
            dose: run.dose(),
            normalisation: run.normalisation(),
            metrics: run.metrics.clone(),
        }
    }
}

/// Reads what the run folder says. A folder that is not a run (no `arch.json`: an
/// in-memory network exported elsewhere) says nothing; a run whose records cannot be
/// read is an error (a manifest must not guess).
pub fn read_run_info(run: &Path) -> Result<RunInfo, RunDirError> {
    match RunDir::open(run) {
        Ok(r) => Ok(RunInfo::from_run_dir(&r)),
        Err(RunDirError::NotARun(_)) => Ok(RunInfo::default()),
        Err(e) => Err(e),
    }
}

/// Everything but the file digest.
#[derive(Debug, Clone)]
pub struct CardInput<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub arch: &'a Arch,
    pub run: &'a RunInfo,
    /// Used when the run folder does not say.
    pub method: Method,
    pub precision: &'a str,
    pub opset: i64,
    /// The manifest's `created`.
    pub created: chrono::DateTime<chrono::Utc>,
}

/// The manifest, with `sha256` (use [`EMBEDDED_SHA256`] for the copy inside the file).
pub fn build_manifest(input: &CardInput<'_>, sha256: &str) -> Manifest {
    let arch = input.arch;
    Manifest {
        schema_version: SCHEMA_VERSION,
        name: input.name.to_string(),
        version: input.version.to_string(),
        created: input.created,
        method: input.run.method.unwrap_or(input.method),
        arch: ArchSummary {
            preset: arch.preset.kind().to_string(),
            parameters: arch.parameter_count() as u64,
            description: arch.summary(),
        },
        training_data: input.run.training_data.clone(),
        normalisation: input.run.normalisation.unwrap_or_default(),
        dose: input.run.dose.clone(),
        spatial_multiple: arch.spatial_multiple() as u32,
        min_size: arch.min_size().map(|m| m as u32),
        outside_window: {
            let [lo, hi] = input.run.normalisation.unwrap_or_default().hu_window;
            Some(OutsideWindow::for_window(lo, hi))
        },
        noise_map: (arch.input_channels == 2).then(NoiseMap::default),
        metrics: input.run.metrics.clone(),
        onnx: OnnxInfo {
            file: MODEL_FILE.to_string(),
            sha256: sha256.to_string(),
            opset: input.opset,
            ir_version: ldct_proto::onnx::IR_VERSION,
            precision: input.precision.to_string(),
        },
        producer: Producer {
            name: "ldct-export".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ldct_proto::arch::{Preset, RedcnnConfig};
    use ldct_train::run_dir::{DataRecord, RunRecord, RUN_SCHEMA_VERSION};

    fn run_folder(dir: &Path) {
        let arch = Arch::from_preset(&Preset::Redcnn(RedcnnConfig::default())).unwrap();
        std::fs::write(dir.join("arch.json"), arch.to_json()).unwrap();
    }

    #[test]
    fn the_run_record_fills_method_data_dose_and_quality_metrics() {
        let dir = tempfile::tempdir().unwrap();
        run_folder(dir.path());
        let record = RunRecord {
            schema_version: RUN_SCHEMA_VERSION,
            tool: "ldct-train test".into(),
            method: Method::Cyclegan,
            seed: 1,
            data: DataRecord {
                description: "head CT".into(),
                slices: 80,
                sources: vec![],
            },
            dose: Dose {
                fraction: Some(0.25),
                i0: Some(1e5),
                noise: "poisson, projection domain (simulated)".into(),
                noise_hu: None,
            },
            legacy_dose_fraction: None,
            legacy_i0: None,
            hu_window: [-160.0, 240.0],
            range: [-1.0, 1.0],
            device: "Cpu".into(),
            conv_backend: "candle".into(),
            total_steps: 10,
            generator_parameters: 1,
            method_record: None,
        };
        std::fs::write(
            dir.path().join("run.json"),
            serde_json::to_string(&record).unwrap(),
        )
        .unwrap();
        // A train.toml as fit writes it: every section, Noise2Score's included.
        std::fs::write(
            dir.path().join("train.toml"),
            "method = \"cyclegan\"\n[noise2score]\nnoise = \"gaussian\"\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("metrics.csv"),
            "epoch,step,lr,loss,val_psnr\n1,5,0.001,0.5,30.0\n2,10,0.0005,0.4,31.5\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("eval.json"),
            "{\"psnr_-1000_1000\": 38.2, \"eval_slices\": 3}",
        )
        .unwrap();
        let info = read_run_info(dir.path()).unwrap();
        assert_eq!(info.method, Some(Method::Cyclegan));
        assert_eq!(info.training_data.description, "head CT");
        assert_eq!(info.training_data.slices, 80);
        assert_eq!(info.dose, record.dose);
        assert_eq!(info.normalisation.unwrap().hu_window, [-160.0, 240.0]);
        assert_eq!(
            info.metrics,
            BTreeMap::from([
                ("psnr_-1000_1000".to_owned(), 38.2),
                ("val_psnr".to_owned(), 31.5)
            ])
        );
    }

    #[test]
    fn a_broken_run_record_is_an_error_not_a_guess() {
        let dir = tempfile::tempdir().unwrap();
        run_folder(dir.path());
        std::fs::write(dir.path().join("run.json"), "{ not json").unwrap();
        let e = read_run_info(dir.path()).unwrap_err().to_string();
        assert!(e.contains("run.json"), "{e}");
    }

    #[test]
    fn an_empty_run_folder_gives_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let info = read_run_info(dir.path()).unwrap();
        assert_eq!(info, RunInfo::default());
        let arch =
            Arch::from_preset(&ldct_proto::arch::Preset::Redcnn(Default::default())).unwrap();
        let m = build_manifest(
            &CardInput {
                name: "m",
                version: "1",
                arch: &arch,
                run: &info,
                method: Method::Supervised,
                precision: "fp32",
                opset: 17,
                created: chrono::Utc::now(),
            },
            EMBEDDED_SHA256,
        );
        m.validate().unwrap();
        assert_eq!(m.method, Method::Supervised);
        assert_eq!(m.spatial_multiple, 1);
        assert_eq!(m.min_size, Some(21));
        assert_eq!(m.normalisation, Normalisation::default());
    }
}
