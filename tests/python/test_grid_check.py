"""scripts/grid_check.py against closed forms: a pure checkerboard a * (-1)^(i+j) has
a checkerboard component a and all its power in the bin (N/2, N/2), which lies on the
Nyquist lines (2N - 1 of the N^2 bins); one smooth period of a sinusoid has none there; white
noise has about the mean power everywhere."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "grid_check.py"


def load():
    spec = importlib.util.spec_from_file_location("grid_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_checkerboard_smooth_and_white_noise():
    g = load()
    n = 64
    i, j = np.indices((n, n))
    checker = 3.0 * np.where((i + j) % 2 == 0, 1.0, -1.0)
    f = g.grid_figures(checker)
    assert abs(f["checkerboard_hu"] - 3.0) < 1e-9
    assert abs(f["rms_hu"] - 3.0) < 1e-9
    assert abs(f["nyquist_power_ratio"] - n * n / (2 * n - 1)) < 1e-6
    # periodic on the grid, so the FFT sees no edge (no leakage to Nyquist)
    smooth = np.sin(2 * np.pi * i / n) * np.cos(2 * np.pi * j / n) * 50.0
    f = g.grid_figures(smooth)
    assert f["checkerboard_hu"] < 1e-3
    assert f["nyquist_power_ratio"] < 1e-3
    white = np.random.default_rng(0).normal(0.0, 10.0, (256, 256))
    f = g.grid_figures(white)
    assert 0.8 < f["nyquist_power_ratio"] < 1.2


def test_cli_reads_three_slices_and_rejects_mismatched_shapes(tmp_path):
    rng = np.random.default_rng(1)
    full = rng.normal(0.0, 100.0, (32, 32)).astype(np.float32)
    low = full + rng.normal(0.0, 20.0, (32, 32)).astype(np.float32)
    paths = {}
    for name, a in [("low", low), ("full", full), ("out", full)]:
        paths[name] = tmp_path / f"{name}.npy"
        np.save(paths[name], a)
    args = [sys.executable, str(SCRIPT)] + [f"--{k}={v}" for k, v in paths.items()]
    r = subprocess.run(args, capture_output=True, text=True, check=True)
    got = json.loads(r.stdout)
    # out = full: the correction is -(true noise), the same figures.
    for key in ("rms_hu", "checkerboard_hu", "nyquist_power_ratio"):
        assert abs(got["correction"][key] - got["true_noise"][key]) < 1e-6
    np.save(paths["out"], np.zeros((16, 16), np.float32))
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 2 and "shapes differ" in r.stderr
