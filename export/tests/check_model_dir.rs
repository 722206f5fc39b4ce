//! `check_model_dir` accepts a model folder that follows the pixel contract and
//! rejects tampered, malformed or contract-breaking ones with clear errors.

use std::path::Path;

use ldct_export::check::{check_model_dir, CheckError};

use crate::common;
fn model(input: &str, output: &str, channels: i64) -> Vec<u8> {
    common::half_model(input, output, channels)
}

fn write_dir(dir: &Path, onnx_bytes: &[u8], sha: Option<String>) {
    common::write_model_dir(dir, onnx_bytes, "0.1.0", &[], sha);
}

#[test]
fn a_valid_model_folder_passes_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("half");
    write_dir(&dir, &model("input", "output", 1), None);
    let report = check_model_dir(&dir).unwrap();
    assert_eq!(report.name, "half");
    assert_eq!(report.test_shape, [1, 1, 32, 32]);
    // The test input lies in [-0.5, 0.5]; halved, the output lies within [-0.25, 0.25].
    assert!(report.output_range[0] >= -0.25 - 1e-6 && report.output_range[1] <= 0.25 + 1e-6);
    assert!(report.output_range[1] > report.output_range[0]);
}

#[test]
fn broken_folders_are_rejected_with_reasons() {
    let tmp = tempfile::tempdir().unwrap();

    let dir = tmp.path().join("tampered");
    write_dir(&dir, &model("input", "output", 1), Some("0".repeat(64)));
    let e = check_model_dir(&dir).unwrap_err();
    assert!(matches!(e, CheckError::ModelDir(_)), "{e}");
    assert!(e.to_string().contains("SHA-256"), "{e}");

    let dir = tmp.path().join("names");
    write_dir(&dir, &model("x", "y", 1), None);
    let e = check_model_dir(&dir).unwrap_err();
    assert!(e.to_string().contains("\"input\""), "{e}");

    let dir = tmp.path().join("channels");
    write_dir(&dir, &model("input", "output", 3), None);
    let e = check_model_dir(&dir).unwrap_err();
    assert!(e.to_string().contains("channels"), "{e}");

    let dir = tmp.path().join("garbage");
    write_dir(&dir, b"this is not an onnx file", None);
    let e = check_model_dir(&dir).unwrap_err();
    assert!(matches!(e, CheckError::Session { .. }), "{e}");

    let e = check_model_dir(&tmp.path().join("missing")).unwrap_err();
    assert!(e.to_string().contains("not a folder"), "{e}");
}
