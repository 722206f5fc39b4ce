//! The `ldct-export` binary: the top-level form, the `export` subcommand,
//! `check`, and a clear non-zero exit on a bad run folder.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device};
use ldct_proto::arch::{Arch, Preset, RedcnnConfig};
use ldct_proto::manifest::Manifest;
use ldct_train::model::{Init, Network};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ldct-export"))
}

/// A run folder `dir/run` of a tiny RED-CNN with random weights from `seed`.
fn redcnn_run(dir: &Path, seed: u64) -> PathBuf {
    let arch = Arch::from_preset(&Preset::Redcnn(RedcnnConfig {
        filters: 3,
        kernel: 3,
    }))
    .unwrap();
    let net = Network::new(arch, &Device::Cpu, DType::F32, Init::default(), seed).unwrap();
    net.randomise_for_testing(seed).unwrap();
    let run = dir.join("run");
    net.save_dir(&run).unwrap();
    run
}

#[test]
fn top_level_and_subcommand_forms_export_and_check() {
    let tmp = tempfile::tempdir().unwrap();
    let run = redcnn_run(tmp.path(), 5);
    std::fs::write(run.join("train.toml"), "method = \"noise2score\"\n").unwrap();
    std::fs::write(run.join("metrics.csv"), "epoch,val_psnr\n1,33.5\n").unwrap();

    let out = tmp.path().join("models/red");
    let o = bin()
        .args([
            "--run",
            run.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .args(["--version", "2.1.0"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(report["parity"]["max_abs_diff"].as_f64().unwrap() <= 1e-4);
    let m = Manifest::from_file(&out.join("manifest.json")).unwrap();
    assert_eq!(m.name, "red");
    assert_eq!(m.version, "2.1.0");
    assert_eq!(m.method.to_string(), "noise2score");
    assert_eq!(m.metrics["val_psnr"], 33.5);
    assert_eq!(m.onnx.precision, "fp32");

    let out16 = tmp.path().join("models/red16");
    let o = bin()
        .args([
            "export",
            "--run",
            run.to_str().unwrap(),
            "--out",
            out16.to_str().unwrap(),
        ])
        .args(["--name", "red-half", "--precision", "fp16"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m16 = Manifest::from_file(&out16.join("manifest.json")).unwrap();
    assert_eq!(m16.name, "red-half");
    assert_eq!(m16.onnx.precision, "fp16");

    let o = bin()
        .args(["check", "--model", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn a_missing_run_is_a_clear_non_zero_exit() {
    let tmp = tempfile::tempdir().unwrap();
    let o = bin()
        .args(["--run", tmp.path().join("nope").to_str().unwrap()])
        .args(["--out", tmp.path().join("m").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("nope") && err.contains("arch.json"), "{err}");
    let o = bin()
        .args(["--run", "x", "--out", "y", "--precision", "int8"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("int8"));
}

/// `SOURCE_DATE_EPOCH` (or `--source-date-epoch`) fixes the manifest's `created`,
/// so exporting the same run twice writes the same bytes (what `make model` relies
/// on to reproduce `models/default`); without it the two exports differ in
/// `created` only. A malformed value is a clear error.
#[test]
fn a_source_date_epoch_makes_the_export_byte_for_byte_reproducible() {
    let tmp = tempfile::tempdir().unwrap();
    let run = redcnn_run(tmp.path(), 8);
    let export = |out: &str, epoch: Option<&str>| {
        let out = tmp.path().join(out);
        let mut cmd = bin();
        cmd.args([
            "--run",
            run.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .args(["--name", "m"])
        .env_remove("SOURCE_DATE_EPOCH");
        if let Some(e) = epoch {
            cmd.env("SOURCE_DATE_EPOCH", e);
        }
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let read = |f: &str| std::fs::read(out.join(f)).unwrap();
        (read("model.onnx"), read("manifest.json"))
    };
    let a = export("a", Some("1764979200"));
    let b = export("b", Some("1764979200"));
    assert!(
        a.0 == b.0,
        "model.onnx differs between two exports of one run"
    );
    assert!(
        a.1 == b.1,
        "manifest.json differs between two exports of one run"
    );
    let m: serde_json::Value = serde_json::from_slice(&a.1).unwrap();
    assert_eq!(m["created"], "2025-12-06T00:00:00Z");

    // Unset: the time of the export (a different `created` inside model.onnx).
    let c = export("c", None);
    let m: serde_json::Value = serde_json::from_slice(&c.1).unwrap();
    assert_ne!(m["created"], "2025-12-06T00:00:00Z");
    assert!(c.0 != a.0);

    let o = bin()
        .args(["--run", run.to_str().unwrap()])
        .args(["--out", tmp.path().join("d").to_str().unwrap()])
        .env("SOURCE_DATE_EPOCH", "yesterday")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("yesterday") && err.contains("seconds"),
        "{err}"
    );
}
