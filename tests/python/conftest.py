"""Shared fixtures for the Python reference tests.

These tests run ldct's binaries (built by `make build`, found in LDCT_BIN_DIR,
default target/debug) and compare them against independent references in the
project venv: scikit-image, pydicom, onnx, onnxruntime, ...
"""

import glob
import os
import subprocess
from pathlib import Path

import numpy as np
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


def phantom(rng, n=32):
    """A disk of soft tissue (with a sine texture) in air and a bright blob, HU."""
    y, x = np.mgrid[0:n, 0:n] - (n - 1) / 2
    img = np.full((n, n), -1000.0, np.float32)
    body = x**2 + y**2 < (0.45 * n) ** 2
    img[body] = 40.0 + 15.0 * np.sin(x[body] / 4.0)
    cy, cx = rng.uniform(-6, 6, 2)
    img[(x - cx) ** 2 + (y - cy) ** 2 < 16] = 400.0
    return img


def write_phantom_dataset(root, seed, slices, train):
    """An AAPM-layout dataset under `root`: `slices` phantoms (fd) with 80 HU Gaussian
    noise (qd), the first `train` in train/, the rest in test/."""
    rng = np.random.default_rng(seed)
    for i in range(slices):
        fd = phantom(rng)
        qd = (fd + rng.normal(0, 80, fd.shape)).astype(np.float32)
        split = "train" if i < train else "test"
        for dose, img in (("fd", fd), ("qd", qd)):
            d = root / split / dose
            d.mkdir(parents=True, exist_ok=True)
            np.save(d / f"{i:04d}.npy", img)
    return root
