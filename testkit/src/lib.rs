//! Test-only helpers shared by the ldct crates' tests.
//!
//! The reference implementations our tests compare against (scikit-image,
//! pydicom, onnx, onnxruntime, ...) live in the project venv that
//! `scripts/setup.sh` creates. `make test` sets `LDCT_PYTHON`; without it the
//! venv at the workspace root is used. A missing venv is a test failure with a
//! clear message, never a silent skip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The venv's Python interpreter. Panics (fails the test) with setup advice when absent.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("LDCT_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let p = workspace_root().join(".venv/bin/python");
    assert!(
        p.exists(),
        "the project venv is missing ({}): run `make setup` (or `make test`, which runs it)",
        p.display()
    );
    p
}

/// Runs a Python snippet in the venv with the given arguments (`sys.argv[1:]`),
/// returns its stdout. Panics with stderr when it fails.
pub fn run_python(script: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot start python: {e}"));
    assert!(
        out.status.success(),
        "python failed ({}):\n--- stderr ---\n{}\n--- stdout ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The folders of DICOM test files shipped by the venv's packages, in this order:
/// pydicom's `pydicom/data/test_files` and pydicom-data's `data_store/data` (the latter
/// only when pydicom-data is installed). Found without importing pydicom-data and without
/// pydicom's `get_testdata_file(s)`, which may try to download (and hang offline).
pub fn dicom_test_dirs() -> Vec<PathBuf> {
    static DIRS: OnceLock<Vec<PathBuf>> = OnceLock::new();
    DIRS.get_or_init(|| {
        let out = run_python(DICOM_DIRS_SCRIPT, &[]);
        let dirs: Vec<PathBuf> = out
            .lines()
            .filter(|l| !l.is_empty())
            .map(PathBuf::from)
            .collect();
        assert!(
            !dirs.is_empty(),
            "pydicom's test_files folder was not found in the venv"
        );
        dirs
    })
    .clone()
}

const DICOM_DIRS_SCRIPT: &str = r#"
import importlib.util, os
import pydicom
dirs = [os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")]
spec = importlib.util.find_spec("data_store")  # pydicom-data; find_spec does not import it
if spec is not None and spec.submodule_search_locations:
    dirs.append(os.path.join(list(spec.submodule_search_locations)[0], "data"))
for d in dirs:
    if os.path.isdir(d):
        print(d)
"#;

/// A DICOM test file of pydicom or pydicom-data by file name (e.g. `CT_small.dcm`).
/// Panics (fails the test) when the venv does not have it.
pub fn dicom_test_file(name: &str) -> PathBuf {
    let dirs = dicom_test_dirs();
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is in none of {dirs:?}: is pydicom-data installed?"))
}

/// Every real CT image file in the venv's pydicom and pydicom-data test folders: files
/// whose Modality is CT and that have Pixel Data (pydicom decides), in folder then name
/// order. Includes single-frame slices (`CT_small.dcm`, pydicom-data's 512x512 `693_*`
/// slices in uncompressed and JPEG 2000 forms, `bad_sequence.dcm`, ...) and the Enhanced
/// CT `eCT_Supplemental.dcm` (2 frames); see [`real_ct_slice_files`] for single frames
/// only. Panics when none is found.
pub fn real_ct_files() -> Vec<PathBuf> {
    let files: Vec<PathBuf> = real_ct_listing().into_iter().map(|(p, _)| p).collect();
    assert!(
        !files.is_empty(),
        "no real CT files found in the venv's pydicom data"
    );
    files
}

/// The single-frame files of [`real_ct_files`].
pub fn real_ct_slice_files() -> Vec<PathBuf> {
    real_ct_listing()
        .into_iter()
        .filter(|(_, frames)| *frames == 1)
        .map(|(p, _)| p)
        .collect()
}

fn real_ct_listing() -> Vec<(PathBuf, u32)> {
    static LIST: OnceLock<Vec<(PathBuf, u32)>> = OnceLock::new();
    LIST.get_or_init(|| {
        let dirs: Vec<String> = dicom_test_dirs()
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        let args: Vec<&str> = dirs.iter().map(String::as_str).collect();
        run_python(REAL_CT_SCRIPT, &args)
            .lines()
            .filter_map(|l| {
                let (p, n) = l.split_once('\t')?;
                Some((PathBuf::from(p), n.trim().parse().ok()?))
            })
            .collect()
    })
    .clone()
}

/// Prints `path<TAB>frames` for every CT image file in the folders given as arguments.
pub const REAL_CT_SCRIPT: &str = r#"
import glob, os, sys, warnings
warnings.simplefilter("ignore")
import pydicom
for d in sys.argv[1:]:
    for p in sorted(glob.glob(os.path.join(d, "*.dcm"))):
        try:
            ds = pydicom.dcmread(p, defer_size=1024)
        except Exception:
            continue
        if ds.get("Modality") == "CT" and "PixelData" in ds:
            print(f"{p}\t{int(ds.get('NumberOfFrames', 1) or 1)}")
"#;

/// A path of a binary built by cargo for this workspace (same profile as the test).
pub fn cargo_bin(name: &str) -> PathBuf {
    // CARGO_BIN_EXE_* only exists for the crate's own binaries; the target dir of
    // the running test is two levels up from its executable (target/<profile>/deps).
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("unexpected test binary location {}", exe.display()));
    dir.join(name)
}

/// A fuzz target's entry point: the bytes in, whether they were accepted.
pub type FuzzEntry = fn(&[u8]) -> bool;

/// Replays every file under `root/<target>/` through its target's entry point (the
/// `untrusted` modules' `TARGETS`): each must return rather than panic (an abort takes
/// the test binary down with it), and files named `ok-*` must also be accepted (the
/// harness reads its inputs as intended). Fails when fewer than two files were found.
pub fn replay_fuzz_regressions(root: &Path, targets: &[(&str, FuzzEntry)]) {
    let mut replayed = 0;
    for &(name, read) in targets {
        let Ok(dir) = std::fs::read_dir(root.join(name)) else {
            continue;
        };
        for entry in dir {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let must_accept = path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("ok-");
            let accepted = std::panic::catch_unwind(|| read(&bytes));
            assert!(accepted.is_ok(), "{name}: {} panicked", path.display());
            if must_accept {
                assert_eq!(
                    accepted.ok(),
                    Some(true),
                    "{name}: {} refused",
                    path.display()
                );
            }
            replayed += 1;
        }
    }
    assert!(
        replayed >= 2,
        "the regression inputs are missing from {}",
        root.display()
    );
}
