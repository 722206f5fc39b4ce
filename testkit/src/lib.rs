//! Test-only helpers shared by the ldct crates' tests.
//!
//! The reference implementations our tests compare against (scikit-image,
//! pydicom, onnx, onnxruntime, ...) live in the project venv that
//! `scripts/setup.sh` creates. `make test` sets `LDCT_PYTHON`; without it the
//! venv at the workspace root is used. A missing venv is a test failure with a
//! clear message, never a silent skip.

use std::path::{Path, PathBuf};
use std::process::Command;

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

/// Paths of real CT DICOM files from the venv's pydicom and pydicom-data
/// packages: pydicom's `CT_small.dcm` and pydicom-data's real 512x512 CT slices.
pub fn real_ct_files() -> Vec<PathBuf> {
    let out = run_python(REAL_CT_SCRIPT, &[]);
    let files: Vec<PathBuf> = out.lines().filter(|l| !l.is_empty()).map(PathBuf::from).collect();
    assert!(!files.is_empty(), "no real CT files found in the venv's pydicom data");
    files
}

/// Lists every CT image file shipped by pydicom / pydicom-data, one path a line.
/// Only files that exist locally (pydicom-data ships them in the wheel) are listed.
pub const REAL_CT_SCRIPT: &str = r#"
import os, pydicom
from pydicom.data import get_testdata_file
names = ["CT_small.dcm", "693_J2KR.dcm", "693_UNCI.dcm", "693_UNCR.dcm", "693_J2KI.dcm"]
seen = set()
for n in names:
    try:
        p = get_testdata_file(n, download=False)
    except TypeError:
        p = get_testdata_file(n)
    except Exception:
        p = None
    if p and os.path.exists(p) and p not in seen:
        seen.add(p)
        print(p)
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
