//! The model card of an export, filled from the run folder.
//!
//! What a run folder may hold besides `arch.json` and `weights.safetensors`, all
//! optional and read leniently:
//!
//! - `train.toml` or `run.json`: `method` (top level or in a `[train]` /
//!   `[method]` table as `method` / `kind` / `name`), `data` / `training_data`
//!   description, `slices`, `dose_fraction`, `i0`, `noise`, `hu_window`, `range`.
//! - `metrics.csv`: the last row's numeric columns (apart from `epoch` / `step`)
//!   become metrics, e.g. `val_psnr`.
//! - `eval.json` / `metrics.json`: a flat object of numbers, merged into the metrics
//!   (these win over `metrics.csv`).

use std::collections::BTreeMap;
use std::path::Path;

use ldct_proto::arch::Arch;
use ldct_proto::manifest::{
    ArchSummary, Dose, Manifest, Method, Normalisation, OnnxInfo, Producer, TrainingData,
    MODEL_FILE, SCHEMA_VERSION,
};
use serde_json::Value;

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
    pub metrics: BTreeMap<String, f64>,
}

fn parse_method(s: &str) -> Option<Method> {
    serde_json::from_value(Value::String(s.to_ascii_lowercase())).ok()
}

/// Finds a key at the top level or one table down.
fn lookup<'a>(v: &'a Value, keys: &[&str]) -> Option<&'a Value> {
    let obj = v.as_object()?;
    for k in keys {
        if let Some(x) = obj.get(*k) {
            return Some(x);
        }
    }
    obj.values()
        .filter(|x| x.is_object())
        .find_map(|x| keys.iter().find_map(|k| x.as_object()?.get(*k)))
}

fn pair(v: Option<&Value>) -> Option<[f32; 2]> {
    let a = v?.as_array()?;
    match a.as_slice() {
        [lo, hi] => Some([lo.as_f64()? as f32, hi.as_f64()? as f32]),
        _ => None,
    }
}

fn apply_config(info: &mut RunInfo, v: &Value) {
    let method = lookup(v, &["method"]).and_then(|m| match m {
        Value::String(s) => parse_method(s),
        Value::Object(o) => ["kind", "name", "type"]
            .iter()
            .find_map(|k| o.get(*k)?.as_str().and_then(parse_method)),
        _ => None,
    });
    if method.is_some() {
        info.method = method;
    }
    if let Some(d) = lookup(v, &["training_data", "data"]) {
        match d {
            Value::String(s) => info.training_data.description = s.clone(),
            Value::Object(o) => {
                if let Some(s) = ["description", "path", "dir"]
                    .iter()
                    .find_map(|k| o.get(*k)?.as_str())
                {
                    info.training_data.description = s.to_string();
                }
                if let Some(n) = o.get("slices").and_then(Value::as_u64) {
                    info.training_data.slices = n;
                }
            }
            _ => {}
        }
    }
    if let Some(n) = lookup(v, &["slices"]).and_then(Value::as_u64) {
        info.training_data.slices = n;
    }
    if let Some(f) = lookup(v, &["dose_fraction", "dose"]).and_then(Value::as_f64) {
        info.dose.fraction = Some(f as f32);
    }
    if let Some(i0) = lookup(v, &["i0", "I0"]).and_then(Value::as_f64) {
        info.dose.i0 = Some(i0);
    }
    if let Some(n) = lookup(v, &["noise"]).and_then(Value::as_str) {
        info.dose.noise = n.to_string();
    }
    if let Some(w) = pair(lookup(v, &["hu_window", "window"])) {
        let range = pair(lookup(v, &["range"])).unwrap_or([-1.0, 1.0]);
        info.normalisation = Some(Normalisation {
            hu_window: w,
            range,
        });
    }
}

fn numbers(v: &Value, prefix: &str, out: &mut BTreeMap<String, f64>) {
    if let Some(o) = v.as_object() {
        for (k, x) in o {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match x {
                Value::Number(n) => {
                    if let Some(f) = n.as_f64().filter(|f| f.is_finite()) {
                        out.insert(key, f);
                    }
                }
                Value::Object(_) => numbers(x, &key, out),
                _ => {}
            }
        }
    }
}

fn last_csv_row(text: &str) -> BTreeMap<String, f64> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let Some(header) = lines.next() else {
        return BTreeMap::new();
    };
    let Some(last) = lines.next_back() else {
        return BTreeMap::new();
    };
    header
        .split(',')
        .zip(last.split(','))
        .filter(|(k, _)| !matches!(k.trim(), "epoch" | "step" | "iter" | "time" | "elapsed_s"))
        .filter_map(|(k, v)| {
            let f: f64 = v.trim().parse().ok()?;
            f.is_finite().then(|| (k.trim().to_string(), f))
        })
        .collect()
}

/// Reads what the run folder says (missing files are fine; unreadable ones are
/// skipped with a warning).
pub fn read_run_info(run: &Path) -> RunInfo {
    let mut info = RunInfo::default();
    if let Ok(text) = std::fs::read_to_string(run.join("train.toml")) {
        match toml::from_str::<toml::Value>(&text) {
            Ok(t) => match serde_json::to_value(t) {
                Ok(v) => apply_config(&mut info, &v),
                Err(e) => tracing::warn!("train.toml: {e}"),
            },
            Err(e) => tracing::warn!("train.toml is not valid TOML: {e}"),
        }
    }
    if let Ok(text) = std::fs::read_to_string(run.join("run.json")) {
        match serde_json::from_str::<Value>(&text) {
            Ok(v) => apply_config(&mut info, &v),
            Err(e) => tracing::warn!("run.json is not valid JSON: {e}"),
        }
    }
    if let Ok(text) = std::fs::read_to_string(run.join("metrics.csv")) {
        info.metrics.extend(last_csv_row(&text));
    }
    for f in ["eval.json", "metrics.json"] {
        if let Ok(text) = std::fs::read_to_string(run.join(f)) {
            match serde_json::from_str::<Value>(&text) {
                Ok(v) => numbers(&v, "", &mut info.metrics),
                Err(e) => tracing::warn!("{f} is not valid JSON: {e}"),
            }
        }
    }
    info
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
}

/// The manifest, with `sha256` (use [`EMBEDDED_SHA256`] for the copy inside the file).
pub fn build_manifest(input: &CardInput<'_>, sha256: &str) -> Manifest {
    let arch = input.arch;
    Manifest {
        schema_version: SCHEMA_VERSION,
        name: input.name.to_string(),
        version: input.version.to_string(),
        created: chrono::Utc::now(),
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

    #[test]
    fn run_folder_files_fill_method_data_dose_and_metrics() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("train.toml"),
            "method = \"cyclegan\"\n[data]\ndescription = \"head CT\"\nslices = 80\n\
             [simulate]\ndose_fraction = 0.25\ni0 = 100000.0\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("metrics.csv"),
            "epoch,loss,val_psnr\n1,0.5,30.0\n2,0.4,31.5\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("eval.json"), "{\"psnr_-1000_1000\": 38.2}").unwrap();
        let info = read_run_info(dir.path());
        assert_eq!(info.method, Some(Method::Cyclegan));
        assert_eq!(info.training_data.description, "head CT");
        assert_eq!(info.training_data.slices, 80);
        assert_eq!(info.dose.fraction, Some(0.25));
        assert_eq!(info.dose.i0, Some(1e5));
        assert_eq!(info.metrics["val_psnr"], 31.5);
        assert_eq!(info.metrics["loss"], 0.4);
        assert_eq!(info.metrics["psnr_-1000_1000"], 38.2);
        assert!(!info.metrics.contains_key("epoch"));
    }

    #[test]
    fn an_empty_run_folder_gives_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let info = read_run_info(dir.path());
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
            },
            EMBEDDED_SHA256,
        );
        m.validate().unwrap();
        assert_eq!(m.method, Method::Supervised);
        assert_eq!(m.spatial_multiple, 1);
        assert_eq!(m.normalisation, Normalisation::default());
    }
}
