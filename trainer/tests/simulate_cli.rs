//! `ldct-train simulate` and `ldct-train dataset import` end to end: the files they
//! write, determinism (same bytes for the same seed, whatever the thread count), the
//! split and its gap, and the copy of an AAPM-layout folder.

use std::path::{Path, PathBuf};
use std::process::Command;

use ldct_imaging::aapm::{self, Split};
use ldct_imaging::npy;
use ndarray::{Array2, Array3};

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ldct-train"))
}

fn run(args: &[&str], threads: Option<usize>) {
    let mut cmd = Command::new(bin());
    cmd.args(args);
    if let Some(t) = threads {
        cmd.env("RAYON_NUM_THREADS", t.to_string());
    }
    let out = cmd.output().expect("run ldct-train");
    assert!(
        out.status.success(),
        "ldct-train {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A small head-like phantom: ellipse of soft tissue, a bone ring, a dark spot; the
/// slice index shifts it so slices differ.
fn phantom(n: usize, k: usize) -> Array2<f32> {
    let c = (n as f32 - 1.0) / 2.0;
    Array2::from_shape_fn((n, n), |(i, j)| {
        let y = (i as f32 - c) / (0.42 * n as f32);
        let x = (j as f32 - c + k as f32) / (0.36 * n as f32);
        let r = x.hypot(y);
        if r > 1.0 {
            -1000.0
        } else if r > 0.85 {
            900.0
        } else if (x - 0.3).hypot(y) < 0.15 {
            -300.0
        } else {
            40.0
        }
    })
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn simulate_writes_pairs_and_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let n = 48;
    let mut vol = Array3::<f32>::zeros((3, n, n));
    for k in 0..3 {
        vol.index_axis_mut(ndarray::Axis(0), k)
            .assign(&phantom(n, k));
    }
    let input = dir.path().join("vol.npy");
    npy::write_volume(&input, &vol).unwrap();
    let out = |name: &str| dir.path().join(name);
    let common = [
        "simulate",
        "--input",
        input.to_str().unwrap(),
        "--dose",
        "0.25",
        "--pixel-size",
        "2.0",
        "--views",
        "96",
    ];
    let with = |o: &Path, seed: &str| {
        let mut a: Vec<String> = common.iter().map(|s| s.to_string()).collect();
        a.extend([
            "--out".into(),
            o.to_str().unwrap().into(),
            "--seed".into(),
            seed.into(),
        ]);
        a
    };
    let a1 = with(&out("a"), "5");
    let a2 = with(&out("b"), "5");
    let a3 = with(&out("c"), "6");
    run(&a1.iter().map(String::as_str).collect::<Vec<_>>(), Some(2));
    run(&a2.iter().map(String::as_str).collect::<Vec<_>>(), Some(1));
    run(&a3.iter().map(String::as_str).collect::<Vec<_>>(), None);

    let fd = files(&out("a").join("fd"));
    let qd = files(&out("a").join("qd"));
    let names: Vec<&str> = fd.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["0000.npy", "0001.npy", "0002.npy"]);
    assert_eq!(qd.len(), 3);
    assert!(out("a").join("preview.png").is_file());
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out("a").join("simulation.json")).unwrap())
            .unwrap();
    assert_eq!(record["slices"], 3);
    assert_eq!(record["geometry"]["kind"], "fan");

    // Same seed, different thread counts: identical bytes.
    assert_eq!(fd, files(&out("b").join("fd")));
    assert_eq!(qd, files(&out("b").join("qd")));
    // Another seed: same full-dose image, other noise.
    assert_eq!(fd, files(&out("c").join("fd")));
    assert_ne!(qd, files(&out("c").join("qd")));

    // The pair differs by noise of zero mean, a few tens of HU at this size.
    let f = npy::read_image(&out("a").join("fd/0001.npy")).unwrap();
    let q = npy::read_image(&out("a").join("qd/0001.npy")).unwrap();
    assert_eq!(f.dim(), (n, n));
    let diff = &q - &f;
    let c = n / 2;
    let centre = diff.slice(ndarray::s![c - 6..c + 6, c - 6..c + 6]);
    let std = (centre.mapv(|v| v * v).mean().unwrap()).sqrt();
    assert!(std > 1.0 && std < 500.0, "qd - fd std {std} HU");
    // fd reproduces the phantom's soft tissue on average (hard edges ring a little).
    let truth = phantom(n, 1);
    let tissue: Vec<f32> = f
        .iter()
        .zip(truth.iter())
        .filter(|(_, &t)| t == 40.0)
        .map(|(&v, _)| v)
        .collect();
    let mean = tissue.iter().sum::<f32>() / tissue.len() as f32;
    assert!((mean - 40.0).abs() < 10.0, "fd soft tissue mean {mean} HU");
}

#[test]
fn dataset_import_splits_with_a_gap_reproducibly_and_copies_aapm_folders() {
    let dir = tempfile::tempdir().unwrap();
    let (slices, n) = (16usize, 40usize);
    // A raw int16 volume, like InVesalius' matrix.dat.
    let mut bytes = Vec::new();
    for k in 0..slices {
        for v in phantom(n, k % 5).iter() {
            bytes.extend_from_slice(&(v.round() as i16).to_le_bytes());
        }
    }
    let raw = dir.path().join("vol.raw");
    std::fs::write(&raw, bytes).unwrap();
    let shape = format!("{slices},{n},{n}");
    let build = |out: &Path, extra: &[&str]| {
        let mut a = vec![
            "dataset",
            "import",
            "--source",
            "raw",
            "--input",
            raw.to_str().unwrap(),
            "--shape",
            &shape,
            "--out",
            out.to_str().unwrap(),
            "--test-fraction",
            "0.25",
            "--gap",
            "1",
            "--seed",
            "1",
            "--geometry",
            "parallel",
            "--views",
            "60",
            "--pixel-size",
            "2",
        ];
        a.extend_from_slice(extra);
        run(&a, None);
    };
    let d1 = dir.path().join("d1");
    build(&d1, &[]);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d1.join("dataset.json")).unwrap()).unwrap();
    // 4 test slices centred: [6, 10); gaps 5 and 10; train the rest.
    assert_eq!(manifest["split"]["test"], serde_json::json!([[6, 10]]));
    assert_eq!(
        manifest["split"]["train"],
        serde_json::json!([[0, 5], [11, 16]])
    );
    assert_eq!(manifest["source"]["kind"], "raw");
    assert_eq!(manifest["simulation"]["dose"], 0.25);
    assert_eq!(manifest["simulation"]["seed"], 1);
    let test = aapm::list_pairs(&d1, Split::Test).unwrap();
    let train = aapm::list_pairs(&d1, Split::Train).unwrap();
    let names = |p: &[aapm::AapmPair]| p.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&test), ["0006", "0007", "0008", "0009"]);
    assert_eq!(train.len(), 10);
    assert!(!names(&train).iter().any(|n| n == "0005" || n == "0010"));
    assert!(d1.join("preview.png").is_file());

    // A second run with the same settings finds it up to date and leaves it alone.
    let before = std::fs::metadata(d1.join("test/qd/0006.npy"))
        .unwrap()
        .modified()
        .unwrap();
    build(&d1, &[]);
    let after = std::fs::metadata(d1.join("test/qd/0006.npy"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after);

    // Rebuilt elsewhere (forced, one thread): the same bytes.
    let d2 = dir.path().join("d2");
    run(
        &[
            "dataset",
            "import",
            "--source",
            "raw",
            "--input",
            raw.to_str().unwrap(),
            "--shape",
            &shape,
            "--out",
            d2.to_str().unwrap(),
            "--test-fraction",
            "0.25",
            "--gap",
            "1",
            "--seed",
            "1",
            "--geometry",
            "parallel",
            "--views",
            "60",
            "--pixel-size",
            "2",
            "--force",
        ],
        Some(1),
    );
    for split in ["train", "test"] {
        for dose in ["fd", "qd"] {
            assert_eq!(
                files(&d1.join(split).join(dose)),
                files(&d2.join(split).join(dose)),
                "{split}/{dose}"
            );
        }
    }

    // An AAPM-layout folder as npy source: copied as is, split kept.
    let d3 = dir.path().join("d3");
    run(
        &[
            "dataset",
            "import",
            "--source",
            "npy",
            "--input",
            d1.to_str().unwrap(),
            "--out",
            d3.to_str().unwrap(),
        ],
        None,
    );
    for split in ["train", "test"] {
        for dose in ["fd", "qd"] {
            assert_eq!(
                files(&d1.join(split).join(dose)),
                files(&d3.join(split).join(dose))
            );
        }
    }
    let copied: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d3.join("dataset.json")).unwrap()).unwrap();
    assert_eq!(copied["source"]["kind"], "npy-aapm");
    assert_eq!(copied["split"]["test_slices"], 4);
}
