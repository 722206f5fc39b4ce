//! `ldct-export gate`: the retraining gate refuses a candidate whose eval PSNR is
//! worse than the serving model's and accepts a better one. The model folders are
//! real ones (a valid ONNX file + a manifest with a matching SHA-256) so the
//! manifests are exactly what `ldct-export` writes and the server loads.

use std::path::Path;
use std::process::{Command, Output};

use ldct_proto::manifest::{Manifest, MANIFEST_FILE};

const PSNR: &str = "psnr_-1000_1000";

use crate::common;
fn write_dir(dir: &Path, version: &str, metrics: &[(&str, f64)]) {
    common::write_model_dir(
        dir,
        &common::half_model("input", "output", 1),
        version,
        metrics,
        None,
    );
    // The folder is a valid model folder by the shared contract.
    Manifest::from_file(&dir.join(MANIFEST_FILE)).unwrap();
    ldct_proto::model_dir::ModelDir::open(dir).unwrap();
}

fn gate(candidate: &Path, serving: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ldct-export"))
        .arg("gate")
        .arg("--candidate")
        .arg(candidate)
        .arg("--serving")
        .arg(serving)
        .args(extra)
        .output()
        .unwrap()
}

fn verdict(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not a JSON verdict ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn a_worse_model_is_refused_and_a_better_one_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let serving = tmp.path().join("default");
    let worse = tmp.path().join("worse");
    let better = tmp.path().join("better");
    write_dir(
        &serving,
        "1.0.0",
        &[(PSNR, 38.2), ("ssim_-1000_1000", 0.91)],
    );
    write_dir(&worse, "1.1.0", &[(PSNR, 37.9), ("ssim_-1000_1000", 0.95)]);
    write_dir(&better, "1.2.0", &[(PSNR, 38.6), ("ssim_-1000_1000", 0.90)]);

    let out = gate(&worse, &serving, &[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v = verdict(&out);
    assert_eq!(v["accepted"], false);
    assert_eq!(v["candidate"]["value"], 37.9);
    assert_eq!(v["serving"]["value"], 38.2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("REFUSED") && stderr.contains("37.9") && stderr.contains("38.2"),
        "{stderr}"
    );

    let out = gate(&better, &serving, &[]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v = verdict(&out);
    assert_eq!(v["accepted"], true);
    assert_eq!(v["metric"], PSNR);
    assert!((v["delta"].as_f64().unwrap() - 0.4).abs() < 1e-9, "{v}");

    // A required margin larger than the gain refuses the better model too.
    let out = gate(&better, &serving, &["--min-improvement", "0.5"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");

    // Another metric decides differently: the "worse" model has the better SSIM.
    let out = gate(&worse, &serving, &["--metric", "ssim_-1000_1000"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn missing_metric_is_an_error_and_no_serving_model_accepts() {
    let tmp = tempfile::tempdir().unwrap();
    let serving = tmp.path().join("default");
    let cand = tmp.path().join("candidate");
    write_dir(&serving, "1.0.0", &[(PSNR, 38.2)]);
    write_dir(&cand, "1.1.0", &[]);

    let out = gate(&cand, &serving, &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(PSNR) && stderr.contains("candidate"),
        "{stderr}"
    );

    write_dir(&cand, "1.1.0", &[(PSNR, 30.0)]);
    let out = gate(&cand, &tmp.path().join("nothing-here"), &[]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v = verdict(&out);
    assert_eq!(v["accepted"], true);
    assert!(v["serving"].is_null());
    assert!(
        v["note"].as_str().unwrap().contains("no serving model"),
        "{v}"
    );
}
