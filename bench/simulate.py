#!/usr/bin/env python3
"""Seconds per 512x512 slice: `ldct-train simulate` beside scikit-image radon + iradon.

Run by `make bench-simulate` (release build):

    .venv/bin/python bench/simulate.py --bin target/release/ldct-train

The slice is pydicom-data's real 512x512 head CT (693_UNCR.dcm), dumped as HU .npy
with pydicom. Both sides use parallel beam, the same number of views (720 over 180
degrees) and detector bins (736):

- ldct-train simulate: projection (Joseph), Poisson noise, and two ramp-filtered FBPs
  (the noise-free full-dose partner and the low-dose image), all CPU threads;
- scikit-image: one `radon` and one `iradon` (ramp), single-threaded numpy (no noise,
  one reconstruction: less work than the simulate pipeline).

Each is timed `--repeat` times; the best time is reported (the least disturbed by
other load). Prints one line per side and a JSON summary line.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def load_slice(out_path):
    import pydicom
    from pydicom.data import get_testdata_file

    path = get_testdata_file("693_UNCR.dcm")
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    hu = hu.astype(np.float32)
    np.save(out_path, hu)
    spacing = float(ds.PixelSpacing[1])
    return hu, spacing, path


def time_simulate(binary, npy_path, spacing, views, bins, repeat, workdir):
    cmd = [
        binary, "simulate",
        "--input", npy_path,
        "--out", os.path.join(workdir, "sim"),
        "--geometry", "parallel",
        "--views", str(views),
        "--bins", str(bins),
        "--pixel-size", str(spacing),
        "--dose", "0.25",
        "--seed", "1",
    ]
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - t0)
    return best


def time_skimage(hu, views, repeat):
    from skimage.transform import iradon, radon

    mu = 0.0192 * (1.0 + np.maximum(hu.astype(np.float64), -1000.0) / 1000.0)
    theta = np.arange(views) * 180.0 / views
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        sino = radon(mu, theta=theta, circle=False)
        iradon(sino, theta=theta, filter_name="ramp", circle=False, output_size=mu.shape[0])
        best = min(best, time.perf_counter() - t0)
    return best, sino.shape[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/ldct-train", help="ldct-train binary")
    ap.add_argument("--views", type=int, default=720)
    ap.add_argument("--bins", type=int, default=736)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skimage-repeat", type=int, default=1)
    args = ap.parse_args()
    if not os.path.exists(args.bin):
        sys.exit(f"{args.bin} not found: build it with `cargo build --release -p ldct-train`")

    with tempfile.TemporaryDirectory() as work:
        npy_path = os.path.join(work, "slice.npy")
        hu, spacing, src = load_slice(npy_path)
        print(f"slice: {src} {hu.shape[0]}x{hu.shape[1]}, {spacing:.4f} mm pixels; "
              f"{args.views} views over 180 degrees, {args.bins} bins; {os.cpu_count()} CPUs")
        ours = time_simulate(args.bin, npy_path, spacing, args.views, args.bins, args.repeat, work)
        print(f"ldct-train simulate (project + noise + 2 FBP): {ours:.3f} s per slice")
        theirs, sk_bins = time_skimage(hu, args.views, args.skimage_repeat)
        print(f"skimage radon + iradon ({sk_bins} bins):          {theirs:.3f} s per slice")
        print(f"speed-up: {theirs / ours:.1f}x")
        print(json.dumps({
            "slice": [int(hu.shape[0]), int(hu.shape[1])],
            "views": args.views,
            "bins": args.bins,
            "cpus": os.cpu_count(),
            "ldct_simulate_s": round(ours, 4),
            "skimage_radon_iradon_s": round(theirs, 4),
        }))


if __name__ == "__main__":
    main()
