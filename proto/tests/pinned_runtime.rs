//! The ONNX Runtime version is pinned once, in `scripts/requirements.txt`: the CPU
//! Dockerfiles download the same wheel, the library `make setup` installed is that
//! version, and every pin is one the loader accepts.

use std::path::{Path, PathBuf};

use ldct_proto::runtime::{check_version, MIN_VERSION};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `name==VERSION` in scripts/requirements.txt.
fn pinned(name: &str) -> String {
    let text = std::fs::read_to_string(repo().join("scripts/requirements.txt")).unwrap();
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{name}==")))
        .unwrap_or_else(|| panic!("scripts/requirements.txt pins no exact {name} version"))
        .trim()
        .to_owned()
}

/// Every `ARG ORT_VERSION=...` of a Dockerfile (one per stage).
fn dockerfile_pins(file: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("docker").join(file)).unwrap();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("ARG ORT_VERSION="))
        .map(|v| v.trim().to_owned())
        .collect()
}

#[test]
fn the_cpu_images_pin_the_requirements_version_and_every_pin_loads() {
    let pin = pinned("onnxruntime");
    check_version(Path::new("scripts/requirements.txt"), &pin).unwrap();
    for file in [
        "serve-cpu.Dockerfile",
        "train-cpu.Dockerfile",
        "train-cuda.Dockerfile",
    ] {
        let pins = dockerfile_pins(file);
        assert!(!pins.is_empty(), "{file}: no ARG ORT_VERSION");
        assert!(pins.iter().all(|v| *v == pin), "{file}: {pins:?} != {pin}");
    }
    // onnxruntime-gpu is released separately (and later): its own exact pin, the same
    // in each stage, no older than the loader accepts.
    let gpu = dockerfile_pins("serve-gpu.Dockerfile");
    assert!(
        !gpu.is_empty() && gpu.iter().all(|v| *v == gpu[0]),
        "{gpu:?}"
    );
    check_version(Path::new("docker/serve-gpu.Dockerfile"), &gpu[0]).unwrap();
    assert!(MIN_VERSION >= (1, 24));
}

#[test]
fn the_loaded_library_is_the_pinned_version() {
    let rt = ldct_proto::runtime::init().expect("ONNX Runtime must load (make setup)");
    assert_eq!(
        rt.version,
        pinned("onnxruntime"),
        "{} is not the pinned onnxruntime: run `make setup`",
        rt.library.display()
    );
}
