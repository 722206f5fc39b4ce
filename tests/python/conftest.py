"""Shared fixtures for the Python reference tests.

These tests run ldct's binaries (built by `make build`, found in LDCT_BIN_DIR,
default target/debug) and compare them against independent references in the
project venv: scikit-image, pydicom, onnx, onnxruntime, ...
"""

import glob
import os
import subprocess
from pathlib import Path

import pydicom
import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("LDCT_BIN_DIR", ROOT / "target" / "debug"))


def ldct_bin(name: str) -> Path:
    path = BIN_DIR / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make build` (make test does it)")
    return path


def run_bin(name: str, *args, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(ldct_bin(name)), *map(str, args)], capture_output=True, text=True, timeout=600
    )
    if check and proc.returncode != 0:
        pytest.fail(f"{name} {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def _site_packages() -> Path:
    return Path(pydicom.__file__).resolve().parents[1]


def real_ct_files():
    """Real CT image files shipped by pydicom and pydicom-data (no downloads)."""
    sp = _site_packages()
    names = [
        sp / "pydicom" / "data" / "test_files" / "CT_small.dcm",
        *sorted((sp / "data_store" / "data").glob("693_UNC*.dcm")),
        *sorted((sp / "data_store" / "data").glob("693_J2KR.dcm")),
    ]
    files = [p for p in names if p.exists()]
    assert files, "no real CT files found: is pydicom-data installed (make setup)?"
    return files


def hu_of(path: Path):
    """pydicom's HU: pixel_array * RescaleSlope + RescaleIntercept, float64."""
    ds = pydicom.dcmread(path)
    return ds.pixel_array.astype("float64") * float(ds.get("RescaleSlope", 1)) + float(
        ds.get("RescaleIntercept", 0)
    )


@pytest.fixture
def tmp(tmp_path):
    return tmp_path
