#!/usr/bin/env python3
"""Period-2 (checkerboard) texture in a denoiser's correction.

A stride-2 up-sampling stage that prints a grid leaves it in the correction the
network adds, `out - low`. This prints, for one slice:

- the correction's RMS (HU);
- its checkerboard component: |mean(correction * (-1)^(i+j))| (HU);
- the share of the correction's power spectrum on the Nyquist lines (kx = N/2 or
  ky = N/2), as a multiple of the mean power per frequency bin: a grid piles power
  there (well above 1), smooth corrections hold little;
- the same two figures for the true noise `low - full`, the reference texture.

    .venv/bin/python scripts/grid_check.py --low data/invesalius-quarter/test/qd/0054.npy \\
        --full data/invesalius-quarter/test/fd/0054.npy --out /tmp/0054-denoised.npy
"""

import argparse
import json
import sys

import numpy as np


def grid_figures(x: np.ndarray) -> dict:
    h, w = x.shape
    x = x - x.mean()
    sign = np.where((np.add.outer(np.arange(h), np.arange(w)) % 2) == 0, 1.0, -1.0)
    checker = abs(float((x * sign).mean()))
    power = np.abs(np.fft.fft2(x)) ** 2
    nyquist = np.zeros_like(power, dtype=bool)
    if h % 2 == 0:
        nyquist[h // 2, :] = True
    if w % 2 == 0:
        nyquist[:, w // 2] = True
    mean = power.mean()
    ratio = float(power[nyquist].mean() / mean) if nyquist.any() and mean > 0 else 0.0
    return {
        "rms_hu": float(np.sqrt((x**2).mean())),
        "checkerboard_hu": checker,
        "nyquist_power_ratio": ratio,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--low", required=True, help="low-dose slice, HU .npy")
    ap.add_argument("--full", required=True, help="full-dose slice, HU .npy")
    ap.add_argument("--out", required=True, help="denoised slice, HU .npy")
    a = ap.parse_args()
    low, full, out = (np.load(p).astype(np.float64) for p in (a.low, a.full, a.out))
    if not (low.shape == full.shape == out.shape) or low.ndim != 2:
        print(f"shapes differ or are not 2-D: {low.shape} {full.shape} {out.shape}",
              file=sys.stderr)
        return 2
    print(json.dumps({
        "correction": grid_figures(out - low),
        "true_noise": grid_figures(low - full),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
