#!/usr/bin/env python3
"""Multi-anatomy, multi-dose quality report (issue 17): ldct runs against NL-means and
BM3D on the test sets of data/ct-multi at about 10, 30 and 90 HU of noise.

    .venv/bin/python scripts/quality_multi.py default=runs/default [NAME=RUN_DIR ...]

For every noise level L of data/ct-multi/levels/ (31 test slices from four real CT
sources, the same full-dose slices at every level):
  * the low-dose input itself;
  * scikit-image NL-means (fast mode), tuned per level on TRAIN slices: a fixed set of
    train pairs (two per source) whose noise is rescaled to the level,
    qd_L = fd + (L / sigma) * (qd - fd), sigma = the pair's noise level from
    slices.json -- the trainer's own way to draw a noise level; grid over patch size,
    patch distance and h, objective mean PSNR at [-1000, 1000] HU;
  * BM3D (PyPI `bm3d`, pinned, non-commercial licence: a comparison only), tuned the
    same way over sigma_psd. It runs in its own throwaway venv, .venv-bm3d, which this
    script creates (idempotent); it is never installed into .venv nor a dependency;
  * every ldct run given as NAME=RUN_DIR, whole slices through `ldct-train denoise`
    (the run's generator is copied to a temporary folder first, so a run that is still
    training can be evaluated).
Nothing is tuned or selected on the test sets. Tuning results are cached in
OUT_DIR/tuning.json, keyed by a fingerprint of the tuning data, the grids and the
package versions, so a rerun skips tuning (--retune forces it).

Figures per level and method: PSNR / SSIM / RMSE at [-1000, 1000] and [-160, 240] HU
(the definitions of scripts/quality_report.py and `ldct-train metrics`), mean and std
over slices and per source, gains over the input, and the slices where the output's
PSNR or SSIM (either window) is below the input's ("never worse"); noise reduction and
mean HU bias in flat regions, the noise power spectrum's mean frequency (input noise vs
residual noise) and the 10-90% edge width at the body/air boundary (output vs full
dose). The definitions are in the report and in the functions below
(tests/python/test_quality_metrics.py checks them on synthetic images).

Writes docs/QUALITY_MULTI.md, docs/quality/multi_results.json (every number, per
slice too), docs/quality/multi/*.png (a zoomed comparison strip per source and level)
and docs/quality/multi/tuning.json (the tuning cache and every trial). --quick runs a
small subset (2 test slices per source, 4 tuning slices, small grids) and writes under
target/quality-multi-quick/ unless told otherwise.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import hashlib
import json
import multiprocessing as mp
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality_common as common  # noqa: E402
from quality_common import (  # noqa: E402
    NORM_LO, NORM_SCALE, ROOT, WINDOWS, fingerprint, fmt, fmt_gain, md_escape, natural_key, nlm,
    rel, sha256_file, slice_metrics, window_key)

TUNE_WINDOW = (-1000.0, 1000.0)  # tuning objective: mean PSNR in this window
# Tuning images: a TUNE_CROP x TUNE_CROP block of each tuning pair centred on the body
# (a 256x256 head slice whole, the central quarter of a 512x512 chest slice): BM3D costs
# about 15 CPU s per 512x512 slice, so this keeps tuning to a few minutes on 2 cores.
TUNE_CROP = 256
RESERVED = ("input", "nl-means", "nlmeans", "bm3d", "full-dose", "fd", "qd")

# NL-means grid (per level L): patch size x patch distance x h = factor * L HU, then
# the grid extended at an edge optimum and refined around the best h.
NLM_PATCH_SIZES = [3, 5, 7]
NLM_PATCH_DISTANCES = [5, 8]
NLM_H_FACTORS = [0.5, 0.65, 0.8, 0.95, 1.1, 1.3]
# BM3D grid (per level L): sigma_psd = factor * L HU, extended at an edge optimum.
BM3D_SIGMA_FACTORS = [0.7, 0.85, 1.0, 1.2, 1.45]
QUICK_NLM = ([5], [5], [0.7, 0.95, 1.3])
QUICK_BM3D = [0.85, 1.2]
MAX_EXTEND = 3  # grid extensions past an edge optimum, each by the grid's end ratio

# BM3D's throwaway venv: exact pins (bm3d 4.0.3 and what it resolved to on Python 3.11).
BM3D_PINS = ["bm3d==4.0.3", "bm4d==4.2.5", "PyWavelets==1.9.0", "scipy==1.17.1", "numpy==2.4.6"]

# Flat (uniform) regions, from the full-dose slice only.
BODY_HU = -500.0          # the body: fd above this, holes filled, largest component
BODY_ERODE_PX = 5         # ... eroded by this many pixels (away from the skin)
FLAT_SIZE = 9             # local std of fd in a FLAT_SIZE x FLAT_SIZE window ...
FLAT_STD_HU = 20.0        # ... below this (no step > ~90 HU within 4 px)
FLAT_HU = (-200.0, 200.0)  # soft tissue, fat, fluid, brain (not lung, not bone)
# Noise power spectrum: square ROIs mostly inside the flat regions.
NPS_ROI = 32
NPS_MIN_FLAT = 0.9        # fraction of an ROI's pixels in the flat mask
NPS_STRIDE = 16           # candidate ROIs on a grid of this step (50% overlap allowed)
# Edge sharpness at the body/air boundary of the full-dose slice.
EDGE_HALF_LEN = 6         # parallel profiles at -6..6 px along the edge (13)
EDGE_REACH = 10.0         # each profile from -10 to +10 px along the normal
EDGE_STEP = 0.1           # profile sampling (px)
EDGE_ORDER = 3            # cubic-spline interpolation of the profiles
EDGE_PLATEAU = 5.0        # plateaus: |t| >= 5 px on either side
EDGE_MIN_SEP = 16         # px between segment centres
EDGE_MAX = 24             # segments per slice
EDGE_AIR_HU = (-1100.0, -850.0)
EDGE_MIN_STEP_HU = 700.0
EDGE_MAX_PLATEAU_STD = (50.0, 100.0)  # outside (air), inside (tissue), HU
EDGE_MAX_CURVE_PX = 0.3   # RMS of the 50% crossings about a straight line

# Zoomed strips.
FIG_DIFF_CLIP = (-1000.0, 1000.0)


def log_factory(t0):
    def log(msg):
        print(f"[{time.time() - t0:7.1f}s] {msg}", flush=True)
    return log


# ================================================================ physics metrics


def body_mask(fd: np.ndarray, threshold: float = BODY_HU) -> np.ndarray:
    """fd > threshold, holes filled, the largest connected component."""
    b = ndi.binary_fill_holes(fd > threshold)
    lab, n = ndi.label(b)
    if n > 1:
        sizes = ndi.sum(b, lab, range(1, n + 1))
        b = lab == (int(np.argmax(sizes)) + 1)
    return b


def local_std(img: np.ndarray, size: int = FLAT_SIZE) -> np.ndarray:
    x = img.astype(np.float64)
    m = ndi.uniform_filter(x, size, mode="reflect")
    m2 = ndi.uniform_filter(x * x, size, mode="reflect")
    return np.sqrt(np.maximum(m2 - m * m, 0.0))


def flat_mask(fd: np.ndarray, *, std_hu: float = FLAT_STD_HU, hu=FLAT_HU, size: int = FLAT_SIZE,
              erode_px: int = BODY_ERODE_PX) -> np.ndarray:
    """Uniform regions of a full-dose slice: inside the body eroded by erode_px pixels,
    fd within `hu`, and the local std of fd in a size x size window below std_hu HU."""
    inner = ndi.binary_erosion(body_mask(fd), iterations=erode_px) if erode_px else body_mask(fd)
    f = fd.astype(np.float64)
    return inner & (f >= hu[0]) & (f <= hu[1]) & (local_std(fd, size) < std_hu)


def nps_rois(mask: np.ndarray, size: int = NPS_ROI, min_fraction: float = NPS_MIN_FLAT,
             stride: int = NPS_STRIDE, inside: np.ndarray | None = None):
    """Top-left corners (y, x) of size x size ROIs on a grid of `stride` whose flat
    fraction is at least min_fraction (and wholly in `inside` when given)."""
    h, w = mask.shape
    out = []
    for y in range(0, h - size + 1, stride):
        for x in range(0, w - size + 1, stride):
            if mask[y:y + size, x:x + size].mean() < min_fraction:
                continue
            if inside is not None and not inside[y:y + size, x:x + size].all():
                continue
            out.append((y, x))
    return out


def nps_2d(noise: np.ndarray, rois, size: int, spacing_mm: float) -> np.ndarray:
    """The 2-D noise power spectrum (HU^2 mm^2), ensemble over the ROIs, each ROI
    mean-removed: NPS = dx dy / (Nx Ny) <|DFT(roi - mean)|^2>; fftshift-ed (DC centred)."""
    acc = np.zeros((size, size))
    for y, x in rois:
        r = noise[y:y + size, x:x + size].astype(np.float64)
        acc += np.abs(np.fft.fft2(r - r.mean())) ** 2
    acc /= max(len(rois), 1)
    return np.fft.fftshift(acc * spacing_mm * spacing_mm / (size * size))


def radial_nps(nps: np.ndarray, spacing_mm: float):
    """Radial average of a square, DC-centred 2-D NPS: bins of width df = 1/(N dx)
    centred on k df, k = 0 .. N/2 (the Nyquist frequency 1/(2 dx)). Returns (f mm^-1,
    NPS)."""
    n = nps.shape[0]
    df = 1.0 / (n * spacing_mm)
    k = np.fft.fftshift(np.fft.fftfreq(n, d=1.0 / n))  # integer frequency indices
    kr = np.hypot(k[:, None], k[None, :])
    b = np.round(kr).astype(int)
    nb = n // 2 + 1
    keep = b < nb
    sums = np.bincount(b[keep], weights=nps[keep], minlength=nb)
    counts = np.bincount(b[keep], minlength=nb)
    return np.arange(nb) * df, sums / np.maximum(counts, 1)


def nps_mean_frequency(f: np.ndarray, nps: np.ndarray) -> float:
    """f_av = sum f NPS(f) / sum NPS(f) over the radial NPS up to Nyquist (AAPM TG-233).
    For white noise (flat NPS, DC removed) with N-pixel ROIs: (N/2 + 1) / 2 * df,
    i.e. half the Nyquist frequency plus half a bin."""
    s = float(nps.sum())
    return float((f * nps).sum() / s) if s > 0 else float("nan")


def slice_nps(noise: np.ndarray, rois, spacing_mm: float, size: int = NPS_ROI) -> dict:
    f, p = radial_nps(nps_2d(noise, rois, size, spacing_mm), spacing_mm)
    return {"f_av": nps_mean_frequency(f, p), "f": f, "nps": p}


def noise_and_bias(residual: np.ndarray, mask: np.ndarray):
    """(std, mean) of residual = image - fd over the mask (HU)."""
    r = residual[mask].astype(np.float64)
    return float(r.std()), float(r.mean())


def esf_width_10_90(esf: np.ndarray, t: np.ndarray, plateau: float = EDGE_PLATEAU) -> float:
    """10-90% rise distance of an edge spread function sampled at positions t
    (increasing towards the bright side): levels lo / hi = means over t <= -plateau and
    t >= plateau; from the 50% crossing nearest t = 0, walk outward to the first 10%
    and 90% crossings (linear interpolation). NaN when there is no clean edge."""
    esf = np.asarray(esf, np.float64)
    lo, hi = esf[t <= -plateau].mean(), esf[t >= plateau].mean()
    if not hi > lo:
        return float("nan")
    z = (esf - lo) / (hi - lo)
    cross = np.nonzero((z[:-1] - 0.5) * (z[1:] - 0.5) <= 0)[0]
    cross = cross[z[cross] != z[cross + 1]]
    if len(cross) == 0:
        return float("nan")
    j = int(cross[np.argmin(np.abs(t[cross]))])

    def interp(i, level):  # crossing between samples i and i+1
        return t[i] + (level - z[i]) / (z[i + 1] - z[i]) * (t[i + 1] - t[i])

    k = j
    while k >= 0 and z[k] > 0.1:
        k -= 1
    if k < 0:
        return float("nan")
    x10 = interp(k, 0.1)
    k = j + 1
    while k < len(t) and z[k] < 0.9:
        k += 1
    if k >= len(t):
        return float("nan")
    x90 = interp(k - 1, 0.9)
    return float(x90 - x10)


def _crossing50(p: np.ndarray, t: np.ndarray, lo: float, hi: float):
    z = (p - lo) / (hi - lo)
    c = np.nonzero((z[:-1] - 0.5) * (z[1:] - 0.5) <= 0)[0]
    c = c[z[c] != z[c + 1]]
    if len(c) == 0:
        return None
    i = int(c[np.argmin(np.abs(t[c]))])
    return float(t[i] + (0.5 - z[i]) / (z[i + 1] - z[i]) * (t[i + 1] - t[i]))


EDGE_T = np.round(np.arange(-EDGE_REACH, EDGE_REACH + 1e-9, EDGE_STEP), 6)
EDGE_S = np.arange(-EDGE_HALF_LEN, EDGE_HALF_LEN + 1, dtype=np.float64)
EDGE_T_COMMON = EDGE_T[np.abs(EDGE_T) <= EDGE_REACH - 2.0 + 1e-9]


def edge_segments(fd: np.ndarray, *, max_segments: int = EDGE_MAX, min_sep: int = EDGE_MIN_SEP):
    """Straight, strong pieces of the body/air boundary of a full-dose slice.

    Candidates: pixels of the outer boundary of body_mask(fd), strongest gradient of
    the Gaussian-smoothed (sigma 1.5 px) fd first. At each, 13 parallel profiles (-6..6
    px along the edge), each sampled every 0.1 px from -10 to +10 px along the normal
    (cubic spline: bilinear would widen a 2-px edge by ~15%). Kept when: the air plateau (t <= -5 px) has a mean in [-1100, -850] HU
    and std < 50 HU, the tissue plateau (t >= 5 px) std < 100 HU, the step is > 700 HU,
    and the 13 profiles' 50% crossings lie on a straight line (RMS < 0.3 px); segment
    centres at least 16 px apart, at most 24 per slice. Each segment keeps its sample
    coordinates and the per-profile shifts that align the fd crossings at t = 0."""
    f = fd.astype(np.float64)
    coeffs = _spline(f)
    body = body_mask(fd)
    boundary = body & ~ndi.binary_erosion(body)
    sm = ndi.gaussian_filter(f, 1.5)
    gy, gx = np.gradient(sm)
    gm = np.hypot(gy, gx)
    ys, xs = np.nonzero(boundary & (gm > 0))
    order = np.lexsort((xs, ys, -gm[ys, xs]))
    h, w = fd.shape
    segs, centres = [], []
    for k in order:
        y, x = int(ys[k]), int(xs[k])
        if any((y - a) ** 2 + (x - b) ** 2 < min_sep ** 2 for a, b in centres):
            continue
        ny, nx = gy[y, x] / gm[y, x], gx[y, x] / gm[y, x]  # towards the body
        ty, tx = -nx, ny
        py = y + EDGE_S[:, None] * ty + EDGE_T[None, :] * ny
        px = x + EDGE_S[:, None] * tx + EDGE_T[None, :] * nx
        if py.min() < 0 or px.min() < 0 or py.max() > h - 1 or px.max() > w - 1:
            continue
        prof = ndi.map_coordinates(coeffs, [py, px], order=EDGE_ORDER, prefilter=False)
        air, tissue = prof[:, EDGE_T <= -EDGE_PLATEAU], prof[:, EDGE_T >= EDGE_PLATEAU]
        lo, hi = air.mean(), tissue.mean()
        if not (EDGE_AIR_HU[0] < lo < EDGE_AIR_HU[1] and hi - lo > EDGE_MIN_STEP_HU
                and air.std() < EDGE_MAX_PLATEAU_STD[0] and tissue.std() < EDGE_MAX_PLATEAU_STD[1]):
            continue
        x50 = [_crossing50(p, EDGE_T, lo, hi) for p in prof]
        if any(v is None for v in x50):
            continue
        x50 = np.asarray(x50)
        fit = np.polyval(np.polyfit(EDGE_S, x50, 1), EDGE_S)
        if np.sqrt(np.mean((x50 - fit) ** 2)) > EDGE_MAX_CURVE_PX or np.abs(x50).max() > 2.0:
            continue
        seg = {"y": y, "x": x, "normal": [float(ny), float(nx)], "py": py, "px": px,
               "shift": x50}
        seg["width_fd_px"] = esf_width_10_90(edge_esf(coeffs, seg, prefiltered=True),
                                             EDGE_T_COMMON)
        if not np.isfinite(seg["width_fd_px"]):
            continue
        segs.append(seg)
        centres.append((y, x))
        if len(segs) >= max_segments:
            break
    return segs


def _spline(img: np.ndarray) -> np.ndarray:
    """Cubic B-spline coefficients of an image, for map_coordinates(prefilter=False)."""
    return ndi.spline_filter(img.astype(np.float64), order=EDGE_ORDER)


def edge_esf(img: np.ndarray, seg: dict, prefiltered: bool = False) -> np.ndarray:
    """The segment's edge spread function in img: the parallel profiles (cubic-spline
    interpolated) shifted by the fd alignment (fd's 50% crossing at t = 0) and averaged,
    on EDGE_T_COMMON. prefiltered: img is already _spline(img)."""
    c = img if prefiltered else _spline(img)
    prof = ndi.map_coordinates(c, [seg["py"], seg["px"]], order=EDGE_ORDER, prefilter=False)
    return np.mean([np.interp(EDGE_T_COMMON + s, EDGE_T, p) for p, s in zip(prof, seg["shift"])],
                   axis=0)


def edge_widths(img: np.ndarray, segs, spacing_mm: float) -> np.ndarray:
    """10-90% edge widths (mm) of img at the segments."""
    c = _spline(img)
    return np.array([esf_width_10_90(edge_esf(c, s, prefiltered=True), EDGE_T_COMMON) * spacing_mm
                     for s in segs])


# ========================================================================== data


def tune_crop(fd: np.ndarray, size: int):
    """Top-left corner of a size x size block centred on the body's bounding box
    (clamped to the slice; the whole slice when it is no larger)."""
    h, w = fd.shape
    ys, xs = np.nonzero(body_mask(fd))
    cy = (ys.min() + ys.max()) // 2 if len(ys) else h // 2
    cx = (xs.min() + xs.max()) // 2 if len(xs) else w // 2
    y0 = int(np.clip(cy - size // 2, 0, max(h - size, 0)))
    x0 = int(np.clip(cx - size // 2, 0, max(w - size, 0)))
    return y0, x0


def load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        sys.exit(f"error: {path} is missing (run `make data`)")


class Data:
    """data/ct-multi: sources, the tuning (train) pairs and the test sets per level."""

    def __init__(self, root: Path, quick: bool, tune_per_source: int, log):
        self.root = root
        if not (root / "dataset.json").exists():
            sys.exit(f"error: {root}/dataset.json is missing: build the dataset with `make data`")
        self.dataset = load_json(root / "dataset.json")
        self.slices = load_json(root / "slices.json")
        self.sources = {s["name"]: s for s in self.dataset.get("sources", [])}
        if not self.sources:
            sys.exit(f"error: {root}/dataset.json lists no sources")
        lv_root = root / "levels"
        dirs = sorted((d for d in lv_root.glob("*hu") if (d / "test" / "qd").is_dir()),
                      key=lambda d: float(d.name[:-2]))
        if not dirs:
            sys.exit(f"error: no test levels under {lv_root} (run `make data`)")
        self.levels = []  # [(key "30hu", level HU, dataset.json of the level)]
        self.test_names = None
        self.fd = {}
        self.qd = {}  # level key -> {name: qd}
        self.meta = {}  # name -> per-slice metadata of the level dataset.json
        for d in dirs:
            key = d.name
            lj = load_json(d / "dataset.json")
            level = float(lj.get("noise_level_hu", float(key[:-2])))
            names = sorted((p.stem for p in (d / "test" / "qd").glob("*.npy")), key=natural_key)
            if quick:
                names = [n for s in self.sources
                         for n in [m for m in names if m.rsplit("_", 1)[0] == s][:2]]
            if self.test_names is None:
                self.test_names = names
            elif names != self.test_names:
                sys.exit(f"error: {d}/test/qd holds other slices than the first level")
            self.qd[key] = {}
            for n in names:
                fdp = d / "test" / "fd" / f"{n}.npy"
                if not fdp.exists():
                    sys.exit(f"error: {fdp} is missing (run `make data`)")
                fd = np.load(fdp).astype(np.float32)
                if n in self.fd and not np.array_equal(self.fd[n], fd):
                    sys.exit(f"error: {fdp} differs from the other levels' full dose")
                self.fd[n] = fd
                self.qd[key][n] = np.load(d / "test" / "qd" / f"{n}.npy").astype(np.float32)
                if self.qd[key][n].shape != fd.shape:
                    sys.exit(f"error: {n} at {key}: qd and fd differ in shape")
            for s in lj.get("slices", []):
                self.meta.setdefault(s["name"], {k: s.get(k) for k in
                                                  ["source", "index", "kernel", "geometry"]})
            self.levels.append((key, level, lj))
        for n in self.test_names:
            src = self.source_of(n)
            if src not in self.sources:
                sys.exit(f"error: test slice {n}: source {src!r} not in dataset.json")
        # tuning pairs: tune_per_source evenly spaced train slices of each source
        train = [s for s in self.slices if s.get("split") == "train"]
        self.tune = []
        for src in self.sources:
            mine = sorted((s for s in train if s["source"] == src), key=lambda s: s["index"])
            if not mine:
                continue
            m = min(tune_per_source, len(mine))
            picks = sorted({int(round((k + 1) * (len(mine) - 1) / (m + 1))) for k in range(m)})
            for i in picks:
                s = mine[i]
                fdp = root / "train" / "fd" / f"{s['name']}.npy"
                qdp = root / "train" / "qd" / f"{s['name']}.npy"
                if not fdp.exists() or not qdp.exists():
                    sys.exit(f"error: {fdp} or {qdp} is missing (run `make data`)")
                fd = np.load(fdp).astype(np.float32)
                qd = np.load(qdp).astype(np.float32)
                sigma = float(s["noise_hu"][0])
                body = fd > -500.0
                measured = float((qd - fd)[body].std())
                if abs(measured - sigma) > 0.02 * sigma:
                    log(f"warning: {s['name']}: slices.json noise {sigma:.2f} HU, measured "
                        f"{measured:.2f} HU")
                y0, x0 = tune_crop(fd, TUNE_CROP)
                box = (slice(y0, y0 + TUNE_CROP), slice(x0, x0 + TUNE_CROP))
                self.tune.append({"name": s["name"], "source": src, "fd": fd[box], "qd": qd[box],
                                  "crop": [y0, x0, min(TUNE_CROP, fd.shape[0]),
                                           min(TUNE_CROP, fd.shape[1])],
                                  "sigma_hu": sigma, "measured_sigma_hu": measured,
                                  "kernel": s.get("kernel"), "geometry": s.get("geometry")})
        if not self.tune:
            sys.exit(f"error: no train slices in {root}/slices.json")

    @staticmethod
    def source_of(name: str) -> str:
        return name.rsplit("_", 1)[0]

    def spacing(self, name: str) -> float:
        ps = self.sources[self.source_of(name)].get("pixel_spacing_mm") or [1.0, 1.0]
        return float(np.mean(ps))

    def tune_pairs(self, level: float):
        """The tuning pairs with their noise rescaled to `level` HU."""
        return [(t["fd"], (t["fd"] + (level / t["sigma_hu"]) * (t["qd"] - t["fd"])).astype(np.float32))
                for t in self.tune]

    def tune_fingerprint(self) -> str:
        arrs = []
        for t in self.tune:
            arrs += [t["fd"], t["qd"], np.float32([t["sigma_hu"]])]
        return fingerprint(*arrs)

    def test_fingerprint(self) -> str:
        arrs = [self.fd[n] for n in self.test_names]
        for key, _, _ in self.levels:
            arrs += [self.qd[key][n] for n in self.test_names]
        return fingerprint(*arrs)


# ======================================================================== tuning

_TUNE = {}  # set before a fork pool starts: level key -> [(fd, qd_L)]


def _psnr(fd, out, window=TUNE_WINDOW):
    from skimage.metrics import peak_signal_noise_ratio  # noqa: PLC0415
    lo, hi = window
    return float(peak_signal_noise_ratio(np.clip(fd.astype(np.float64), lo, hi),
                                         np.clip(out.astype(np.float64), lo, hi), data_range=hi - lo))


def _nlm_trial(args):
    key, ps, pd, h = args
    vals = [_psnr(fd, nlm(qd, h_hu=h, patch_size=ps, patch_distance=pd)) for fd, qd in _TUNE[key]]
    return key, ps, pd, h, float(np.mean(vals)), [float(v) for v in vals]


def _pool(jobs):
    return cf.ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("fork"))


def _extend(values, best, ratio_lo, ratio_hi):
    """The next grid value past an edge optimum, or None."""
    if best == min(values):
        return round(best * ratio_lo, 3)
    if best == max(values):
        return round(best * ratio_hi, 3)
    return None


def tune_nlm(data: Data, jobs: int, quick: bool, log) -> dict:
    sizes, dists, factors = QUICK_NLM if quick else (NLM_PATCH_SIZES, NLM_PATCH_DISTANCES,
                                                     NLM_H_FACTORS)
    out = {}
    for key, level, _ in data.levels:
        _TUNE[key] = data.tune_pairs(level)
    trials = {key: [] for key, _, _ in data.levels}

    def run(tasks, what):
        t0 = time.time()
        with _pool(jobs) as ex:
            for i, r in enumerate(ex.map(_nlm_trial, tasks), 1):
                key, ps, pd, h, psnr, per = r
                trials[key].append({"patch_size": ps, "patch_distance": pd, "h_hu": h,
                                    "psnr": psnr, "per_slice": per})
                if i % max(1, len(tasks) // 5) == 0 or i == len(tasks):
                    log(f"  NL-means {what}: {i}/{len(tasks)} trials ({time.time() - t0:.0f} s)")

    grid = {key: [round(f * level, 2) for f in factors] for key, level, _ in data.levels}
    run([(key, ps, pd, h) for key, _, _ in data.levels for ps in sizes for pd in dists
         for h in grid[key]], "grid")
    ratio_lo, ratio_hi = factors[0] / factors[1], factors[-1] / factors[-2]
    for _ in range(MAX_EXTEND):  # extend h past an edge optimum
        tasks = []
        for key, _, _ in data.levels:
            best = max(trials[key], key=lambda t: t["psnr"])
            hs = [t["h_hu"] for t in trials[key]
                  if (t["patch_size"], t["patch_distance"]) == (best["patch_size"], best["patch_distance"])]
            nxt = _extend(hs, best["h_hu"], ratio_lo, ratio_hi)
            if nxt is not None and nxt > 0:
                tasks.append((key, best["patch_size"], best["patch_distance"], nxt))
        if not tasks:
            break
        run(tasks, "edge extension")
    tasks = []
    for key, _, _ in data.levels:  # refine: geometric midpoints to the neighbours of best h
        best = max(trials[key], key=lambda t: t["psnr"])
        hs = sorted({t["h_hu"] for t in trials[key]
                     if (t["patch_size"], t["patch_distance"]) == (best["patch_size"], best["patch_distance"])})
        i = hs.index(best["h_hu"])
        for j in (i - 1, i + 1):
            if 0 <= j < len(hs):
                tasks.append((key, best["patch_size"], best["patch_distance"],
                              round(float(np.sqrt(hs[i] * hs[j])), 2)))
    if tasks:
        run(tasks, "refinement")
    for key, level, _ in data.levels:
        best = dict(max(trials[key], key=lambda t: t["psnr"]))
        log(f"  NL-means {key}: patch_size {best['patch_size']} patch_distance "
            f"{best['patch_distance']} h {best['h_hu']:g} HU -> {best['psnr']:.3f} dB")
        out[key] = {"level_hu": level, "best": best, "trials": trials[key],
                    "grid": {"patch_size": sizes, "patch_distance": dists,
                             "h_hu": grid[key], "h_factors": factors}}
    _TUNE.clear()
    return out


# -------------------------------------------------------------------------- BM3D

BM3D_WORKER = r"""
import json, os, sys, time
import concurrent.futures as cf
import numpy as np

def run(task):
    import bm3d
    x = np.load(task["in"]).astype(np.float64)
    t0 = time.process_time()
    y = np.asarray(bm3d.bm3d((x - task["lo"]) / task["scale"],
                             sigma_psd=task["sigma_hu"] / task["scale"]))
    np.save(task["out"], (y * task["scale"] + task["lo"]).astype(np.float32))
    return task["out"], time.process_time() - t0

if __name__ == "__main__":
    job = json.load(open(sys.argv[1]))
    with cf.ProcessPoolExecutor(max_workers=job["jobs"]) as ex:
        futs = [ex.submit(run, t) for t in job["tasks"]]
        for f in cf.as_completed(futs):
            out, cpu = f.result()
            print(json.dumps({"out": out, "cpu_s": cpu}), flush=True)
"""


def bm3d_python(venv: Path, log):
    """The python of the throwaway BM3D venv, created and pinned if needed (idempotent),
    or (None, reason)."""
    py = venv / "bin" / "python"
    stamp = venv / ".ldct-bm3d-pins"
    want = " ".join(BM3D_PINS)
    if py.exists() and stamp.exists() and stamp.read_text().strip() == want:
        return py, None
    log(f"installing {', '.join(BM3D_PINS)} into {rel(venv)} (BM3D, non-commercial licence: "
        "comparison only; not a project dependency)")
    try:
        if not py.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True,
                           capture_output=True, text=True)
        # keep the throwaway venv out of git without touching the repository's .gitignore
        (venv / ".gitignore").write_text("# created by scripts/quality_multi.py\n*\n")
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        *BM3D_PINS], check=True, capture_output=True, text=True)
        subprocess.run([str(py), "-c", "import bm3d"], check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as e:
        return None, (f"installing {' '.join(BM3D_PINS)} into {rel(venv)} failed: "
                      f"{(e.stderr or e.stdout or '').strip().splitlines()[-1:]}")
    stamp.write_text(want + "\n")
    return py, None


def bm3d_run(py: Path, tasks, jobs: int, tmp: Path, log, what: str) -> dict:
    """Runs BM3D tasks [{"in", "out", "sigma_hu"}] in the BM3D venv with a pool of `jobs`
    processes; returns {out path: CPU seconds}. Largest slices first."""
    tasks = sorted(tasks, key=lambda t: -os.path.getsize(t["in"]))
    for t in tasks:
        t.update(lo=NORM_LO, scale=NORM_SCALE)
    job = tmp / f"bm3d-job-{time.time_ns()}.json"
    job.write_text(json.dumps({"jobs": jobs, "tasks": tasks}))
    worker = tmp / "bm3d_worker.py"
    worker.write_text(BM3D_WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t0 = time.time()
    proc = subprocess.Popen([str(py), str(worker), str(job)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    cpu, done = {}, 0
    step = max(1, len(tasks) // 10)
    for line in proc.stdout:
        msg = json.loads(line)
        cpu[msg["out"]] = msg["cpu_s"]
        done += 1
        if done % step == 0 or done == len(tasks):
            el = time.time() - t0
            log(f"  BM3D {what}: {done}/{len(tasks)} slices ({el:.0f} s, about "
                f"{el / done * (len(tasks) - done):.0f} s left)")
    err = proc.stderr.read()
    if proc.wait() != 0 or done != len(tasks):
        sys.exit(f"error: BM3D worker failed ({proc.returncode}):\n{err[-3000:]}")
    return cpu


def tune_bm3d(data: Data, py: Path, jobs: int, quick: bool, tmp: Path, log) -> dict:
    factors = QUICK_BM3D if quick else BM3D_SIGMA_FACTORS
    tdir = tmp / "bm3d-tune"
    tdir.mkdir(parents=True, exist_ok=True)
    inputs = {}
    for key, level, _ in data.levels:
        for i, (_, qd) in enumerate(data.tune_pairs(level)):
            p = tdir / f"{key}_{i}.npy"
            np.save(p, qd)
            inputs[(key, i)] = p
    trials = {key: [] for key, _, _ in data.levels}
    cpu = 0.0

    def run(sig, what):  # sig: [(key, sigma)]
        nonlocal cpu
        tasks = [{"in": str(inputs[(key, i)]), "out": str(tdir / f"out_{key}_{i}_{s:g}.npy"),
                  "sigma_hu": s} for key, s in sig for i in range(len(data.tune))]
        cpu += sum(bm3d_run(py, tasks, jobs, tmp, log, what).values())
        for key, s in sig:
            per = [_psnr(data.tune[i]["fd"], np.load(tdir / f"out_{key}_{i}_{s:g}.npy"))
                   for i in range(len(data.tune))]
            trials[key].append({"sigma_hu": s, "psnr": float(np.mean(per)),
                                "per_slice": [float(v) for v in per]})

    grid = {key: [round(f * level, 2) for f in factors] for key, level, _ in data.levels}
    run([(key, s) for key, _, _ in data.levels for s in grid[key]], "tuning grid")
    ratio_lo, ratio_hi = factors[0] / factors[1], factors[-1] / factors[-2]
    for _ in range(MAX_EXTEND):
        sig = []
        for key, _, _ in data.levels:
            best = max(trials[key], key=lambda t: t["psnr"])
            nxt = _extend([t["sigma_hu"] for t in trials[key]], best["sigma_hu"], ratio_lo, ratio_hi)
            if nxt is not None:
                sig.append((key, nxt))
        if not sig:
            break
        run(sig, "tuning edge extension")
    out = {}
    for key, level, _ in data.levels:
        best = dict(max(trials[key], key=lambda t: t["psnr"]))
        log(f"  BM3D {key}: sigma_psd {best['sigma_hu']:g} HU -> {best['psnr']:.3f} dB")
        out[key] = {"level_hu": level, "best": best,
                    "trials": sorted(trials[key], key=lambda t: t["sigma_hu"]),
                    "grid": {"sigma_hu": grid[key], "sigma_factors": factors}}
    out["_cpu_s"] = cpu
    return out


# ================================================================ ldct runs


def denoise_level(binary: Path, snap: Path, data: Data, key: str, tmp: Path):
    """Denoises a level's test slices with `ldct-train denoise`, one call per slice size
    (it writes one [N, H, W] volume); returns {name: HU slice}."""
    groups = {}
    for n in data.test_names:
        groups.setdefault(data.fd[n].shape, []).append(n)
    out = {}
    for gi, (shape, names) in enumerate(sorted(groups.items())):
        d = tmp / f"in-{snap.name}-{key}-{gi}"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        for i, n in enumerate(names):
            np.save(d / f"{i:05d}.npy", data.qd[key][n])
        vol = common.denoise_run(binary, snap, d, tmp / f"out-{snap.name}-{key}-{gi}.npy", len(names))
        for i, n in enumerate(names):
            out[n] = vol[i]
        shutil.rmtree(d, ignore_errors=True)
    return out


# ================================================================ evaluation


class SliceRef:
    """What every method is measured against on one test slice (from fd only)."""

    def __init__(self, name: str, fd: np.ndarray, spacing: float):
        self.name, self.spacing = name, spacing
        self.flat = flat_mask(fd)
        inner = ndi.binary_erosion(body_mask(fd), iterations=BODY_ERODE_PX)
        self.rois = nps_rois(self.flat, inside=inner)
        self.segs = edge_segments(fd)
        self.edge_fd_mm = np.array([s["width_fd_px"] * spacing for s in self.segs])


def physics(ref: SliceRef, fd, qd, out) -> dict:
    """Flat-region noise, bias, NPS mean frequency and edge width of `out` (and of the
    input qd, for the comparison) on one slice."""
    r_in, r_out = qd.astype(np.float64) - fd, out.astype(np.float64) - fd
    res = {"flat_pixels": int(ref.flat.sum()), "nps_rois": len(ref.rois),
           "edge_segments": len(ref.segs)}
    if ref.flat.sum() >= 100:
        res["noise_in_hu"], res["bias_in_hu"] = noise_and_bias(r_in, ref.flat)
        res["noise_hu"], res["bias_hu"] = noise_and_bias(r_out, ref.flat)
        res["noise_reduction_pct"] = 100.0 * (1.0 - res["noise_hu"] / res["noise_in_hu"])
    if ref.rois:
        a = slice_nps(r_in, ref.rois, ref.spacing)
        b = slice_nps(r_out, ref.rois, ref.spacing)
        res["nps_f_av_in"], res["nps_f_av"] = a["f_av"], b["f_av"]
        res["nps_f_av_change_pct"] = 100.0 * (b["f_av"] / a["f_av"] - 1.0)
        res["nps_curve_in"] = [float(v) for v in a["nps"]]
        res["nps_curve"] = [float(v) for v in b["nps"]]
        res["nps_f"] = [float(v) for v in a["f"]]
    if ref.segs:
        w = edge_widths(out, ref.segs, ref.spacing)
        ok = np.isfinite(w)
        if ok.any():
            res["edge_width_mm"] = float(np.median(w[ok]))
            res["edge_width_fd_mm"] = float(np.median(ref.edge_fd_mm[ok]))
            res["edge_width_change_pct"] = float(np.median(100.0 * (w[ok] / ref.edge_fd_mm[ok] - 1)))
            res["edge_segments_measured"] = int(ok.sum())
    return res


def _metric_task(args):
    fd, qd, out = args
    return [list(slice_metrics(fd, out, lo, hi)) for lo, hi in WINDOWS]


def summarise(values) -> dict:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if len(v) == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std()), "n": int(len(v))}


def evaluate_row(data: Data, refs, key: str, outs: dict, jobs: int) -> dict:
    """Per-slice metrics (both windows) and physics of one method at one level."""
    names = data.test_names
    fd, qd = data.fd, data.qd[key]
    with _pool(jobs) as ex:
        m = list(ex.map(_metric_task, [(fd[n], qd[n], outs[n]) for n in names], chunksize=2))
    per = {}
    for n, mm in zip(names, m):
        per[n] = {"metrics": {window_key(lo, hi): {"psnr": v[0], "ssim": v[1], "rmse_hu": v[2]}
                              for (lo, hi), v in zip(WINDOWS, mm)},
                  "physics": physics(refs[n], fd[n], qd[n], outs[n]),
                  "source": data.source_of(n),
                  "range_hu": [float(outs[n].min()), float(outs[n].max())]}
    return per


def aggregate(data: Data, per: dict, base: dict | None) -> dict:
    """Means over slices and per source; gains over the input; never-worse list."""
    names = data.test_names
    agg = {"windows": {}, "per_source": {}, "physics": {}}
    for lo, hi in WINDOWS:
        wk = window_key(lo, hi)
        d = {}
        for metric in ["psnr", "ssim", "rmse_hu"]:
            v = [per[n]["metrics"][wk][metric] for n in names]
            d[metric] = {"mean": float(np.mean(v)), "std": float(np.std(v))}
            if base is not None:
                g = np.subtract(v, [base[n]["metrics"][wk][metric] for n in names])
                d.setdefault("gain", {})[metric] = {"mean": float(g.mean()), "std": float(g.std())}
        agg["windows"][wk] = d
    for src in data.sources:
        mine = [n for n in names if data.source_of(n) == src]
        if not mine:
            continue
        s = {"slices": len(mine)}
        for lo, hi in WINDOWS:
            wk = window_key(lo, hi)
            for metric in ["psnr", "ssim"]:
                v = [per[n]["metrics"][wk][metric] for n in mine]
                s[f"{metric}@{wk}"] = float(np.mean(v))
                if base is not None:
                    s[f"{metric}_gain@{wk}"] = float(np.mean(np.subtract(
                        v, [base[n]["metrics"][wk][metric] for n in mine])))
        agg["per_source"][src] = s
    keys = ["noise_in_hu", "noise_hu", "noise_reduction_pct", "bias_in_hu", "bias_hu",
            "nps_f_av_in", "nps_f_av", "nps_f_av_change_pct", "edge_width_mm",
            "edge_width_fd_mm", "edge_width_change_pct"]
    for k in keys:
        agg["physics"][k] = summarise([per[n]["physics"].get(k) for n in names])
    agg["physics"]["bias_abs_max_hu"] = max(
        (abs(per[n]["physics"]["bias_hu"]) for n in names if "bias_hu" in per[n]["physics"]),
        default=None)
    agg["physics"]["edge_segments"] = int(sum(per[n]["physics"].get("edge_segments_measured", 0)
                                              for n in names))
    agg["physics"]["nps_rois"] = int(sum(per[n]["physics"]["nps_rois"] for n in names))
    for src in data.sources:  # per-source physics (mean over that source's slices)
        mine = [n for n in names if data.source_of(n) == src]
        if mine:
            agg["per_source"][src]["physics"] = {
                k: summarise([per[n]["physics"].get(k) for n in mine])["mean"]
                for k in ["noise_reduction_pct", "bias_hu", "nps_f_av_change_pct",
                          "edge_width_change_pct"]}
    if base is not None:
        worse = []
        for n in names:
            bad = []
            for lo, hi in WINDOWS:
                wk = window_key(lo, hi)
                for metric in ["psnr", "ssim"]:
                    o, i = per[n]["metrics"][wk][metric], base[n]["metrics"][wk][metric]
                    if o < i:
                        bad.append({"metric": metric, "window": wk, "output": o, "input": i})
            if bad:
                worse.append({"slice": n, "source": data.source_of(n), "below_input": bad})
        agg["never_worse"] = {"slices_below_input": len(worse), "of": len(names), "list": worse}
    return agg


# ================================================================ figures


def choose_roi(fd: np.ndarray, size: int):
    """Top-left corner of the size x size region (inside the body) richest in
    soft-tissue structure: fd in [-160, 240] HU with a 9x9 local std above 20 HU."""
    body = body_mask(fd)
    score = (body & (fd >= -160) & (fd <= 240) & (local_std(fd) > FLAT_STD_HU)).astype(np.float64)
    s = ndi.uniform_filter(score, size, mode="constant")
    inside = ndi.uniform_filter(body.astype(np.float64), size, mode="constant") > 0.98
    h, w = fd.shape
    half = size // 2
    valid = np.zeros_like(inside)
    valid[half:h - size + half + 1, half:w - size + half + 1] = True
    s = np.where(valid & inside, s, -1.0)
    cy, cx = np.unravel_index(int(np.argmax(s)), s.shape)
    return int(cy - half), int(cx - half)


def figure_specs(data: Data):
    """One slice per source (the middle test slice) and its region of interest."""
    specs = []
    for src in data.sources:
        mine = [n for n in data.test_names if data.source_of(n) == src]
        if not mine:
            continue
        n = mine[len(mine) // 2]
        h, w = data.fd[n].shape
        size, scale = (96, 3) if max(h, w) <= 256 else (128, 2)
        y0, x0 = choose_roi(data.fd[n], size)
        specs.append({"source": src, "slice": n, "y0": y0, "x0": x0, "size": size, "scale": scale})
    return specs


def diff_range(level: float) -> float:
    return float(max(30.0, round(2.0 * level / 10.0) * 10.0))


# ================================================================ report


def fmt_opt(v, digits, sign=False):
    if v is None:
        return "—"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def fmt_ms(m, digits, sign=False):
    if m is None or m.get("mean") is None:
        return "—"
    mean = f"{m['mean']:+.{digits}f}" if sign else f"{m['mean']:.{digits}f}"
    return f"{mean} ± {m['std']:.{digits}f}"


def write_markdown(path: Path, res: dict) -> None:
    L = []
    a = L.append
    q = res["paths"]["results_from_md"]
    fig = res["paths"]["figures_from_md"]
    a("# Denoising quality on several anatomies at three doses (issue 17)")
    a("")
    a(f"Generated by `scripts/quality_multi.py` on {res['generated']} in "
      f"{res['runtime_s'] / 60:.1f} min ({res['environment']['platform']}); every number "
      f"below, per slice too, is in [`{q}`]({q}). Rerun with the command under "
      "[Reproduce](#reproduce).")
    if res["quick"]:
        a("")
        a("> **Quick run** (`--quick`): a subset of the test slices, fewer tuning slices and "
          "small tuning grids. For development only; not the report.")
    unfinished = [r for r in res["runs"].values() if not r["finished"]]
    if unfinished:
        a("")
        a("> **Unfinished runs.** " + "; ".join(
            f"`{r['name']}` ({r['dir']}) is reported at step {r['step']} of {r['total_steps']}"
            for r in unfinished) + ": numbers from a checkpoint before the end of the schedule.")
    if not res["bm3d"]["available"]:
        a("")
        a(f"> **BM3D not reported**: {res['bm3d']['reason']}")
    a("")
    methods = res["methods"]
    levels = res["levels"]
    wide, soft = window_key(*WINDOWS[0]), window_key(*WINDOWS[1])

    a("## Summary")
    a("")
    a(f"Mean over the {len(res['data']['test_names'])} test slices of each level; gains are "
      "per-slice differences to the low-dose input; *worse* counts the slices where the "
      "output's PSNR or SSIM, in either window, is below the input's.")
    a("")
    a(f"| Level | Method | PSNR [{WINDOWS[0][0]:g}, {WINDOWS[0][1]:g}] (dB) | gain (dB) | SSIM | "
      f"SSIM gain | PSNR gain [{WINDOWS[1][0]:g}, {WINDOWS[1][1]:g}] (dB) | worse |")
    a("|---|---|---:|---:|---:|---:|---:|---:|")
    for lv in levels:
        for mk in methods:
            ag = lv["rows"][mk]["aggregate"]
            w, ws = ag["windows"][wide], ag["windows"][soft]
            if mk == "input":
                a(f"| {lv['key']} | {md_escape(res['labels'][mk])} | {w['psnr']['mean']:.2f} | — | "
                  f"{w['ssim']['mean']:.4f} | — | — | — |")
                continue
            nw = ag["never_worse"]
            a(f"| {lv['key']} | {md_escape(res['labels'][mk])} | {w['psnr']['mean']:.2f} | "
              f"{w['gain']['psnr']['mean']:+.2f} | {w['ssim']['mean']:.4f} | "
              f"{w['gain']['ssim']['mean']:+.4f} | {ws['gain']['psnr']['mean']:+.2f} | "
              f"{nw['slices_below_input']}/{nw['of']} |")
    a("")
    a("| Level | Method | Noise reduction (flat regions) | Bias (HU) | NPS f_av vs input | "
      "Edge width vs full dose |")
    a("|---|---|---:|---:|---:|---:|")
    for lv in levels:
        for mk in methods:
            if mk == "input":
                continue
            ph = lv["rows"][mk]["aggregate"]["physics"]
            a(f"| {lv['key']} | {md_escape(res['labels'][mk])} | "
              f"{fmt_opt(ph['noise_reduction_pct']['mean'], 1)} % | "
              f"{fmt_opt(ph['bias_hu']['mean'], 2, True)} | "
              f"{fmt_opt(ph['nps_f_av_change_pct']['mean'], 1, True)} % | "
              f"{fmt_opt(ph['edge_width_change_pct']['mean'], 1, True)} % |")
    a("")
    a("Standard deviations, per-source means and the slices behind *worse* are under "
      "[Metrics per level](#metrics-per-level); noise, bias, NPS and edge figures under "
      "[Noise, bias, texture and sharpness](#noise-bias-texture-and-sharpness).")
    a("")

    a("## Data")
    a("")
    d = res["data"]
    a(f"`{d['root']}` (built by `make data` from `configs/data/ct-multi.toml`; test-set "
      f"fingerprint `{d['test_fingerprint']}`, sha256 of the fd and every level's qd). Test "
      "slices: held-out contiguous blocks of every source (a gap of slices to the train and "
      "validation blocks), every few slices (`test_every`); the same full-dose slices at every "
      "level, the low-dose partner simulated in the projection domain at the dose that gives "
      "the level's noise (std of qd − fd over fd > −500 HU).")
    a("")
    a("| Source | Anatomy | Slices (test) | Size | Pixel (mm) | Origin | Licence |")
    a("|---|---|---:|---|---:|---|---|")
    for s in d["sources"]:
        a(f"| {s['name']} | {s['anatomy']} | {s['test_slices']} | {s['rows']}x{s['cols']} | "
          f"{s['pixel_mm']:.3f} | {md_escape(s['origin'])} | {md_escape(s['licence'])} |")
    a("")
    a("| Level | Noise of the test inputs (HU): mean ± std over slices (min–max) | Kernels | Geometries |")
    a("|---|---|---|---|")
    for lv in levels:
        n = lv["input_noise"]
        a(f"| {lv['key']} | {n['mean']:.1f} ± {n['std']:.1f} ({n['min']:.1f}–{n['max']:.1f}) | "
          f"{lv['kernels']} | {lv['geometries']} |")
    a("")

    a("## Metrics per level")
    a("")
    a("Per test slice against the full-dose slice, then mean ± std over the slices: both "
      "images clipped to the window, PSNR and SSIM with data range = window width, SSIM with "
      "a Gaussian window (sigma 1.5, 11x11), K1 0.01, K2 0.03, population covariance; RMSE "
      f"in HU of the clipped images (scikit-image {res['environment']['scikit-image']}; the "
      "definitions of `docs/QUALITY.md` and `ldct-train metrics`).")
    a("")
    for lv in levels:
        a(f"### {lv['key']} (noise level {lv['level_hu']:g} HU)")
        a("")
        for lo, hi in WINDOWS:
            wk = window_key(lo, hi)
            a(f"Window [{lo:g}, {hi:g}] HU:")
            a("")
            a("| Method | PSNR (dB) | PSNR gain (dB) | SSIM | SSIM gain | RMSE (HU) | RMSE change (HU) |")
            a("|---|---:|---:|---:|---:|---:|---:|")
            for mk in methods:
                m = lv["rows"][mk]["aggregate"]["windows"][wk]
                g = m.get("gain")
                a(f"| {md_escape(res['labels'][mk])} | {fmt(m['psnr'], 2)} | "
                  f"{fmt_gain(g['psnr'], 2) if g else '—'} | {fmt(m['ssim'], 4)} | "
                  f"{fmt_gain(g['ssim'], 4) if g else '—'} | {fmt(m['rmse_hu'], 1)} | "
                  f"{fmt_gain(g['rmse_hu'], 1) if g else '—'} |")
            a("")
        a("Per source, mean PSNR gain (dB) at [-1000, 1000] / at [-160, 240] and SSIM gain at "
          "[-1000, 1000] HU over the input (input row: its mean PSNR / PSNR / SSIM):")
        a("")
        srcs = list(lv["rows"]["input"]["aggregate"]["per_source"])
        a("| Method | " + " | ".join(srcs) + " |")
        a("|---|" + "---:|" * len(srcs))
        for mk in methods:
            ps = lv["rows"][mk]["aggregate"]["per_source"]
            if mk == "input":
                cells = [f"{ps[s][f'psnr@{wide}']:.2f} / {ps[s][f'psnr@{soft}']:.2f} / "
                         f"{ps[s][f'ssim@{wide}']:.4f}" for s in srcs]
            else:
                cells = [f"{ps[s][f'psnr_gain@{wide}']:+.2f} / {ps[s][f'psnr_gain@{soft}']:+.2f} / "
                         f"{ps[s][f'ssim_gain@{wide}']:+.4f}" for s in srcs]
            a(f"| {md_escape(res['labels'][mk])} | " + " | ".join(cells) + " |")
        a("")
        a("Never worse (output PSNR or SSIM below the input's, either window):")
        a("")
        for mk in methods:
            if mk == "input":
                continue
            nw = lv["rows"][mk]["aggregate"]["never_worse"]
            if not nw["list"]:
                a(f"- {res['labels'][mk]}: none of {nw['of']} slices.")
            else:
                items = []
                for w in nw["list"]:
                    parts = ", ".join(
                        f"{b['metric'].upper()} [{b['window']}] {b['output']:.4g} < {b['input']:.4g}"
                        for b in w["below_input"])
                    items.append(f"`{w['slice']}` ({parts})")
                a(f"- {res['labels'][mk]}: **{nw['slices_below_input']} of {nw['of']}** — "
                  + "; ".join(items) + ".")
        a("")

    a("## Noise, bias, texture and sharpness")
    a("")
    p = res["physics_definitions"]
    a("All regions and edges are found on the full-dose slice alone, so every method is "
      "measured at the same pixels:")
    a("")
    a(f"- **Flat regions**: {p['flat']}")
    a(f"- **Noise** and **noise reduction**: {p['noise']}")
    a(f"- **Bias**: {p['bias']}")
    a(f"- **NPS mean frequency**: {p['nps']}")
    a(f"- **Edge width**: {p['edge']}")
    a("")
    for lv in levels:
        ph0 = lv["rows"]["input"]["aggregate"]["physics"]
        a(f"### {lv['key']}")
        a("")
        a(f"{ph0['noise_in_hu']['n']} slices with flat regions, {ph0['nps_f_av_in']['n']} with "
          f"NPS ROIs ({lv['rows']['input']['aggregate']['physics']['nps_rois']} ROIs), "
          f"{ph0['edge_width_mm']['n']} with edge segments "
          f"({lv['rows']['input']['aggregate']['physics']['edge_segments']} segments). "
          f"Input noise in the flat regions {fmt_ms(ph0['noise_in_hu'], 1)} HU; input NPS mean "
          f"frequency {fmt_ms(ph0['nps_f_av_in'], 3)} mm⁻¹; full-dose edge width "
          f"{fmt_ms(ph0['edge_width_fd_mm'], 2)} mm.")
        a("")
        a("| Method | Noise (HU) | Noise reduction | Bias (HU) | max \\|bias\\| (HU) | NPS f_av (mm⁻¹) | f_av change vs input | Edge width (mm) | vs full dose |")
        a("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for mk in methods:
            ph = lv["rows"][mk]["aggregate"]["physics"]
            a(f"| {md_escape(res['labels'][mk])} | {fmt_ms(ph['noise_hu'], 1)} | "
              f"{fmt_ms(ph['noise_reduction_pct'], 1)} % | {fmt_ms(ph['bias_hu'], 2, True)} | "
              f"{fmt_opt(ph['bias_abs_max_hu'], 2)} | {fmt_ms(ph['nps_f_av'], 3)} | "
              f"{fmt_ms(ph['nps_f_av_change_pct'], 1, True)} % | {fmt_ms(ph['edge_width_mm'], 2)} | "
              f"{fmt_ms(ph['edge_width_change_pct'], 1, True)} % |")
        a("")
        srcs = list(lv["rows"]["input"]["aggregate"]["per_source"])
        a("Per source: noise reduction % / f_av change % / edge width change %:")
        a("")
        a("| Method | " + " | ".join(srcs) + " |")
        a("|---|" + "---:|" * len(srcs))
        for mk in methods:
            if mk == "input":
                continue
            ps = lv["rows"][mk]["aggregate"]["per_source"]
            cells = []
            for s in srcs:
                ph = ps[s]["physics"]
                cells.append(f"{fmt_opt(ph['noise_reduction_pct'], 0)} / "
                             f"{fmt_opt(ph['nps_f_av_change_pct'], 0, True)} / "
                             f"{fmt_opt(ph['edge_width_change_pct'], 0, True)}")
            a(f"| {md_escape(res['labels'][mk])} | " + " | ".join(cells) + " |")
        a("")

    a("## Classical baselines: tuning")
    a("")
    t = res["tuning"]
    pairs = ", ".join("`{}` ({}, {}, {:.1f} HU)".format(s["name"], s["kernel"], s["geometry"],
                                                         s["sigma_hu"]) for s in t["slices"])
    a(f"Tuned per level on {len(t['slices'])} **train** pairs ({pairs}) "
      "with their noise rescaled to the level, qd_L = fd + (L / sigma) (qd − fd), sigma the "
      "pair's noise level in slices.json (how the trainer draws its noise levels), on a "
      f"{t['crop']}x{t['crop']} block of each pair centred on the body (the whole 256x256 head "
      "slices, the central part of the 512x512 chest slices; keeps BM3D's tuning affordable); "
      "objective: "
      f"mean PSNR at [{TUNE_WINDOW[0]:g}, {TUNE_WINDOW[1]:g}] HU. The test sets were not "
      "used. Both run on the image normalised as (HU + 1000) / 2000, output mapped back "
      f"to HU. Cache: `{t['cache']}` (tuning {'reused from the cache' if t['cached_all'] else 'run now'}"
      f"; {t['runtime_s']:.0f} s spent on tuning in this run).")
    a("")
    nl = t["nlmeans"]
    first = next(iter(nl.values()))
    a("- **NL-means** (`skimage.restoration.denoise_nl_means`, `fast_mode=True`, `sigma=0`): "
      f"patch_size {first['grid']['patch_size']} x patch_distance {first['grid']['patch_distance']} "
      f"x h = {first['grid']['h_factors']} x L, the h grid extended while the optimum is at its "
      "edge, then refined at the geometric midpoints to the best h's neighbours.")
    for lv in levels:
        b = nl[lv["key"]]["best"]
        a(f"  - {lv['key']}: **patch_size {b['patch_size']}, patch_distance {b['patch_distance']}, "
          f"h = {b['h_hu']:.4g} HU** ({b['h_hu'] / lv['level_hu']:.2f} L), tuning PSNR {b['psnr']:.2f} dB "
          f"({len(nl[lv['key']]['trials'])} trials).")
    if res["bm3d"]["available"]:
        bm = t["bm3d"]
        first = next(v for k, v in bm.items() if not k.startswith("_"))
        a(f"- **BM3D** (`bm3d.bm3d`, profile 'np', non-commercial licence, comparison only; "
          f"{res['bm3d']['pins']} in `{res['bm3d']['venv']}`): sigma_psd = "
          f"{first['grid']['sigma_factors']} x L, extended while the optimum is at the grid's edge.")
        for lv in levels:
            tr = bm[lv["key"]]
            cells = ", ".join(f"{x['sigma_hu']:.4g}: {x['psnr']:.2f}" for x in tr["trials"])
            a(f"  - {lv['key']}: **sigma_psd = {tr['best']['sigma_hu']:.4g} HU** "
              f"({tr['best']['sigma_hu'] / lv['level_hu']:.2f} L); tuning PSNR (dB) by sigma: {cells}.")
    a("")

    a("## Zoomed comparisons")
    a("")
    a("The middle test slice of each source; the region (inside the body) richest in "
      "soft-tissue structure, upscaled (nearest), red box in the overview. Rows: soft-tissue "
      "window [-160, 240] HU, and the difference to full dose of the images clipped to "
      "[-1000, 1000] HU (grey = 0; structure visible there was removed or added), displayed "
      "at ± max(30, 2 L) HU.")
    a("")
    for f in res["figures"]:
        a(f"**{f['source']}** ({f['anatomy']}), slice `{f['slice']}`, {f['level']}, rows "
          f"{f['y0']}:{f['y0'] + f['size']}, columns {f['x0']}:{f['x0'] + f['size']}, "
          f"difference at ±{f['diff_hu']:g} HU:")
        a("")
        a(f"![{f['source']} {f['level']}]({fig}/{Path(f['file']).name})")
        a("")

    a("## Methods and runs")
    a("")
    for mk in methods:
        a(f"- **{res['labels'][mk]}**: {res['descriptions'][mk]}")
    a("")
    if res["runs"]:
        a("| Run | Method | Generator | Params | Steps | Noise levels trained | Weights sha256 |")
        a("|---|---|---|---:|---:|---|---|")
        for r in res["runs"].values():
            gen = ", ".join(f"{k} {json.dumps(v)}" for k, v in (r["generator"] or {}).items())
            st = "" if r["finished"] else " (unfinished)"
            a(f"| `{r['name']}` (`{r['dir']}`) | {r['method']} | {md_escape(gen)} | "
              f"{r['generator_parameters'] or '?'} | {r['step']} / {r['total_steps']}{st} | "
              f"{r.get('noise_hu')} | `{r['weights_sha256'][:16]}` |")
        a("")

    a("## Runtime")
    a("")
    rt = res["timing"]
    a(f"Total {res['runtime_s']:.0f} s on {res['environment']['platform']} "
      f"(process pool of {res['jobs']}; the machine may have been shared with other jobs). "
      f"Tuning: NL-means {rt['tune_nlmeans_s']:.0f} s, BM3D {rt['tune_bm3d_s']:.0f} s "
      f"({'cached' if t['cached_all'] else 'computed'}). Denoising the test sets (all levels): "
      + ", ".join(f"{res['labels'][k]} {v:.0f} s" for k, v in rt["denoise_s"].items())
      + f". Metrics and physics: {rt['metrics_s']:.0f} s; figures: {rt['figures_s']:.0f} s.")
    if rt.get("bm3d_cpu_s_per_slice"):
        a("BM3D's cost per slice here: " + ", ".join(
            f"{k} {v['cpu_s_mean']:.1f} CPU s" for k, v in rt["bm3d_cpu_s_per_slice"].items())
          + " (single-threaded; the slices run in parallel).")
    a("")
    a("## Reproduce")
    a("")
    a("```sh")
    a("make data                                  # data/ct-multi (and data/invesalius-quarter)")
    a("cargo build --release -p ldct-train        # target/release/ldct-train")
    a(res["command"])
    a("```")
    a("")
    a("`make quality` runs this report after `scripts/quality_report.py`. The test sets are "
      "seeded; NL-means, BM3D and the metrics are deterministic; runs are identified by their "
      "weights' sha256. Delete the cache or pass `--retune` to tune again.")
    a("")
    env = res["environment"]
    a(f"Environment: Python {env['python']}, numpy {env['numpy']}, scipy {env['scipy']}, "
      f"scikit-image {env['scikit-image']}, BM3D venv: {env['bm3d']}, {env['ldct-train']}, "
      f"{env['platform']}.")
    a("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(L))


# ================================================================ main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", metavar="NAME=RUN_DIR",
                    help="ldct run folders (from `ldct-train fit`), one row each")
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "ct-multi",
                    help="the dataset (default data/ct-multi, built by `make data`)")
    ap.add_argument("--bin", type=Path, default=ROOT / "target" / "release" / "ldct-train",
                    help="ldct-train binary (default target/release/ldct-train; copied first)")
    ap.add_argument("--md", type=Path, help="default docs/QUALITY_MULTI.md")
    ap.add_argument("--out-dir", type=Path, help="figures and tuning cache (default docs/quality/multi)")
    ap.add_argument("--json", type=Path, help="default docs/quality/multi_results.json")
    ap.add_argument("--tune-per-source", type=int, default=2,
                    help="train slices per source for tuning (default 2)")
    ap.add_argument("--jobs", type=int, default=2, help="process pool size (default 2)")
    ap.add_argument("--bm3d-venv", type=Path, default=ROOT / ".venv-bm3d",
                    help="throwaway venv for the pinned bm3d (created if needed)")
    ap.add_argument("--no-bm3d", action="store_true", help="leave BM3D out")
    ap.add_argument("--retune", action="store_true", help="ignore the tuning cache")
    ap.add_argument("--quick", action="store_true",
                    help="2 test slices per source, 1 tuning slice per source, small grids; "
                         "writes under target/quality-multi-quick/ by default")
    args = ap.parse_args(argv)
    t_start = time.time()
    log = log_factory(t_start)
    if args.quick:
        qroot = ROOT / "target" / "quality-multi-quick"
        args.md = args.md or qroot / "QUALITY_MULTI.md"
        args.out_dir = args.out_dir or qroot / "multi"
        args.json = args.json or qroot / "multi_results.json"
        if args.tune_per_source == 2:
            args.tune_per_source = 1
    args.md = args.md or ROOT / "docs" / "QUALITY_MULTI.md"
    args.out_dir = args.out_dir or ROOT / "docs" / "quality" / "multi"
    args.json = args.json or ROOT / "docs" / "quality" / "multi_results.json"

    runs = common.parse_runs(args.runs, RESERVED, args.bin)

    data = Data(args.data, args.quick, args.tune_per_source, log)
    log(f"data: {len(data.test_names)} test slices x levels {[k for k, _, _ in data.levels]}, "
        f"{len(data.tune)} tuning pairs ({', '.join(t['name'] for t in data.tune)})")

    tmp_obj = tempfile.TemporaryDirectory(prefix="ldct-quality-multi-")
    tmp = Path(tmp_obj.name)
    timing = {"denoise_s": {}}
    try:
        binary = None
        if runs:  # a private copy: the release binary may be rebuilt while we run
            binary = tmp / "ldct-train"
            shutil.copy2(args.bin, binary)
        # ------------------------------------------------------------ tuning (cached)
        args.out_dir.mkdir(parents=True, exist_ok=True)
        cache_path = args.out_dir / "tuning.json"
        cache = {}
        if cache_path.exists() and not args.retune:
            try:
                cache = json.loads(cache_path.read_text())
            except json.JSONDecodeError:
                log(f"warning: {cache_path} is not JSON; tuning again")
        import skimage  # noqa: PLC0415
        tune_fp = data.tune_fingerprint()
        levels_sig = [[k, lv] for k, lv, _ in data.levels]
        nlm_key = hashlib.sha256(json.dumps(
            ["nlm", tune_fp, TUNE_CROP, levels_sig, args.quick, NLM_PATCH_SIZES, NLM_PATCH_DISTANCES,
             NLM_H_FACTORS, QUICK_NLM, MAX_EXTEND, TUNE_WINDOW, NORM_LO, NORM_SCALE,
             skimage.__version__]).encode()).hexdigest()[:16]
        t0 = time.time()
        if cache.get("nlmeans", {}).get("key") == nlm_key:
            nlm_tuning = cache["nlmeans"]["levels"]
            nlm_cached = True
            log("NL-means tuning: from the cache")
        else:
            log(f"NL-means tuning on {len(data.tune)} train pairs per level ({args.jobs} processes)")
            nlm_tuning = tune_nlm(data, args.jobs, args.quick, log)
            nlm_cached = False
            cache["nlmeans"] = {"key": nlm_key, "levels": nlm_tuning,
                                "runtime_s": time.time() - t0}
            cache_path.write_text(json.dumps(cache, indent=1) + "\n")
        timing["tune_nlmeans_s"] = time.time() - t0

        bm3d_py, bm3d_reason, bm3d_tuning, bm3d_cached = None, None, None, True
        t0 = time.time()
        if args.no_bm3d:
            bm3d_reason = "left out by `--no-bm3d`."
        else:
            bm3d_py, bm3d_reason = bm3d_python(args.bm3d_venv, log)
        if bm3d_py is not None:
            bm3d_key = hashlib.sha256(json.dumps(
                ["bm3d", tune_fp, TUNE_CROP, levels_sig, args.quick, BM3D_SIGMA_FACTORS, QUICK_BM3D,
                 MAX_EXTEND, TUNE_WINDOW, NORM_LO, NORM_SCALE, BM3D_PINS]).encode()).hexdigest()[:16]
            if cache.get("bm3d", {}).get("key") == bm3d_key:
                bm3d_tuning = cache["bm3d"]["levels"]
                log("BM3D tuning: from the cache")
            else:
                n_tasks = len(data.levels) * len(data.tune) * len(
                    QUICK_BM3D if args.quick else BM3D_SIGMA_FACTORS)
                log(f"BM3D tuning: {n_tasks} slice runs ({args.jobs} processes; slow)")
                bm3d_tuning = tune_bm3d(data, bm3d_py, args.jobs, args.quick, tmp, log)
                bm3d_cached = False
                cache["bm3d"] = {"key": bm3d_key, "levels": bm3d_tuning,
                                 "runtime_s": time.time() - t0}
                cache_path.write_text(json.dumps(cache, indent=1) + "\n")
        timing["tune_bm3d_s"] = time.time() - t0

        # ------------------------------------------------------------ references
        t0 = time.time()
        log("flat regions, NPS ROIs and edge segments of the full-dose slices")
        refs = {n: SliceRef(n, data.fd[n], data.spacing(n)) for n in data.test_names}
        timing["references_s"] = time.time() - t0

        # ------------------------------------------------------------ methods
        labels = {"input": "Low-dose input", "nlmeans": "NL-means (scikit-image)"}
        descriptions = {
            "input": "the simulated low-dose slice at the level, no denoising.",
            "nlmeans": "`denoise_nl_means(fast_mode=True)` with the per-level parameters "
                       "tuned on train pairs (below), on the normalised image."}
        outputs = {key: {"input": dict(data.qd[key])} for key, _, _ in data.levels}
        t0 = time.time()
        for key, _, _ in data.levels:
            b = nlm_tuning[key]["best"]
            names = data.test_names
            with _pool(args.jobs) as ex:
                res = ex.map(_nlm_apply, [(data.qd[key][n], b["h_hu"], b["patch_size"],
                                           b["patch_distance"]) for n in names], chunksize=2)
                outputs[key]["nlmeans"] = dict(zip(names, res))
        timing["denoise_s"]["nlmeans"] = time.time() - t0
        log(f"NL-means on the test sets: {timing['denoise_s']['nlmeans']:.0f} s")
        bm3d_cpu = {}
        if bm3d_tuning is not None:
            labels["bm3d"] = "BM3D (non-commercial, comparison only)"
            descriptions["bm3d"] = ("`bm3d.bm3d(sigma_psd)` (profile 'np') with the per-level "
                                    "sigma_psd tuned on train pairs, on the normalised image; "
                                    "run in the throwaway venv `" + rel(args.bm3d_venv) + "`.")
            t0 = time.time()
            bdir = tmp / "bm3d-test"
            bdir.mkdir(exist_ok=True)
            tasks = []
            for key, _, _ in data.levels:
                s = bm3d_tuning[key]["best"]["sigma_hu"]
                for n in data.test_names:
                    p = bdir / f"in_{key}_{n}.npy"
                    np.save(p, data.qd[key][n])
                    tasks.append({"in": str(p), "out": str(bdir / f"out_{key}_{n}.npy"),
                                  "sigma_hu": s})
            log(f"BM3D on the test sets: {len(tasks)} slices ({args.jobs} processes)")
            cpu = bm3d_run(bm3d_py, tasks, args.jobs, tmp, log, "test sets")
            for key, _, _ in data.levels:
                outputs[key]["bm3d"] = {n: np.load(bdir / f"out_{key}_{n}.npy")
                                        for n in data.test_names}
            timing["denoise_s"]["bm3d"] = time.time() - t0
            by_size = {}
            for key, _, _ in data.levels:
                for n in data.test_names:
                    h, w = data.fd[n].shape
                    by_size.setdefault(f"{h}x{w}", []).append(cpu[str(bdir / f"out_{key}_{n}.npy")])
            bm3d_cpu = {k: {"slices": len(v), "cpu_s_mean": float(np.mean(v))}
                        for k, v in by_size.items()}
            timing["bm3d_cpu_s_per_slice"] = bm3d_cpu
            log(f"BM3D on the test sets: {timing['denoise_s']['bm3d']:.0f} s wall, "
                f"{sum(cpu.values()):.0f} CPU s; per slice: "
                + ", ".join(f"{k} {v['cpu_s_mean']:.1f} CPU s" for k, v in bm3d_cpu.items()))
        infos = {}
        for name, run in runs:
            snap = tmp / "runs" / name
            step, elapsed = common.snapshot_run(run, snap, log)
            info = common.run_info(name, run, snap, step, elapsed)
            info["weights_sha256"] = sha256_file(snap / "weights.safetensors")
            info["noise_hu"] = (info.get("train_toml") or {}).get("data", {}).get("noise_hu")
            mk = f"run:{name}"
            labels[mk] = f"ldct {name}" + ("" if info["finished"] else " (unfinished)")
            descriptions[mk] = (f"`{info['dir']}` ({info['method']}, step {info['step']} of "
                                f"{info['total_steps']}{'' if info['finished'] else ', UNFINISHED'}), "
                                "whole slices through `ldct-train denoise` (composed with the "
                                f"input outside the model's window as served); weights sha256 "
                                f"`{info['weights_sha256'][:16]}`.")
            t0 = time.time()
            for key, _, _ in data.levels:
                log(f"ldct {name}: denoising {key}")
                outputs[key][mk] = denoise_level(binary, snap, data, key, tmp)
            timing["denoise_s"][mk] = time.time() - t0
            infos[name] = info
        methods = list(outputs[data.levels[0][0]].keys())

        # ------------------------------------------------------------ metrics
        t0 = time.time()
        levels = []
        for key, level, lj in data.levels:
            log(f"metrics and physics at {key}")
            rows = {}
            base = None
            for mk in methods:
                per = evaluate_row(data, refs, key, outputs[key][mk], args.jobs)
                if mk == "input":
                    base = per
                agg = aggregate(data, per, None if mk == "input" else base)
                rows[mk] = {"aggregate": agg, "per_slice": per}
                w = agg["windows"][window_key(*WINDOWS[0])]
                extra = ""
                if "gain" in w:
                    extra = (f" gain {w['gain']['psnr']['mean']:+.2f} dB, worse on "
                             f"{agg['never_worse']['slices_below_input']}/{len(data.test_names)}")
                ph = agg["physics"]
                log(f"  {labels[mk]}: PSNR {w['psnr']['mean']:.2f} dB SSIM {w['ssim']['mean']:.4f}"
                    f"{extra}; noise {fmt_opt(ph['noise_hu']['mean'], 1)} HU, bias "
                    f"{fmt_opt(ph['bias_hu']['mean'], 2, True)} HU, f_av "
                    f"{fmt_opt(ph['nps_f_av']['mean'], 3)} mm^-1, edge "
                    f"{fmt_opt(ph['edge_width_mm']['mean'], 2)} mm")
            noise = [float((data.qd[key][n] - data.fd[n])[data.fd[n] > -500].std())
                     for n in data.test_names]  # the dataset's definition of the level
            kinds = sorted({data.meta.get(n, {}).get("kernel") or "?" for n in data.test_names})
            geos = sorted({data.meta.get(n, {}).get("geometry") or "?" for n in data.test_names})
            levels.append({"key": key, "level_hu": level,
                           "input_noise": {"mean": float(np.mean(noise)), "std": float(np.std(noise)),
                                           "min": float(np.min(noise)), "max": float(np.max(noise)),
                                           "per_slice": [float(v) for v in noise]},
                           "kernels": ", ".join(kinds), "geometries": ", ".join(geos),
                           "rows": rows})
        timing["metrics_s"] = time.time() - t0

        # ------------------------------------------------------------ figures
        t0 = time.time()
        for old in args.out_dir.glob("*.png"):
            old.unlink()
        figures = []
        short = {"input": "low dose", "nlmeans": "NL-means", "bm3d": "BM3D"}
        for spec in figure_specs(data):
            n = spec["slice"]
            for key, level, _ in data.levels:
                dr = diff_range(level)
                rows_fig = [("soft tissue [-160, 240] HU", -160.0, 240.0, False),
                            (f"minus full dose [±{dr:g}] HU", -dr, dr, True)]
                cols = [(short.get(mk, mk.split(":", 1)[-1]), outputs[key][mk][n]) for mk in methods]
                fname = f"{spec['source']}_{key}.png"
                common.roi_figure(args.out_dir / fname, n, spec["y0"], spec["x0"], cols, data.fd[n],
                                  size=spec["size"], scale=spec["scale"], rows=rows_fig,
                                  diff_clip=FIG_DIFF_CLIP, title=f"{n} {key}")
                figures.append({**spec, "level": key, "diff_hu": dr, "file": rel(args.out_dir / fname),
                                "anatomy": data.sources[spec["source"]].get("anatomy")})
        timing["figures_s"] = time.time() - t0
        log(f"figures: {len(figures)} in {rel(args.out_dir)}")
    finally:
        tmp_obj.cleanup()

    # ---------------------------------------------------------------- results
    try:
        version = subprocess.run([str(args.bin), "--version"], capture_output=True, text=True,
                                 check=True).stdout.strip() if runs else "ldct-train (not used)"
    except Exception:
        version = "ldct-train (not found)"
    import scipy  # noqa: PLC0415
    import skimage  # noqa: PLC0415
    bm3d_env = "not used"
    if bm3d_py is not None:
        bm3d_env = ", ".join(BM3D_PINS)
    md_dir = args.md.resolve().parent
    cmd = [".venv/bin/python", "scripts/quality_multi.py",
           *(argv if argv is not None else sys.argv[1:])]
    src_rows = []
    for s in data.sources.values():
        src_rows.append({"name": s["name"], "anatomy": s.get("anatomy"),
                         "origin": s.get("origin", ""), "licence": s.get("licence", ""),
                         "rows": s.get("rows"), "cols": s.get("cols"),
                         "pixel_mm": float(np.mean(s.get("pixel_spacing_mm") or [1.0])),
                         "test_slices": sum(1 for n in data.test_names
                                            if data.source_of(n) == s["name"])})
    res = {
        "format": "ldct-quality-multi/1",
        "generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "runtime_s": time.time() - t_start,
        "quick": args.quick,
        "jobs": args.jobs,
        "command": shlex.join(cmd),
        "paths": {"results_from_md": Path(os.path.relpath(args.json.resolve(), md_dir)).as_posix(),
                  "figures_from_md": Path(os.path.relpath(args.out_dir.resolve(), md_dir)).as_posix()},
        "environment": {"python": platform.python_version(), "numpy": np.__version__,
                        "scipy": scipy.__version__, "scikit-image": skimage.__version__,
                        "bm3d": bm3d_env, "ldct-train": version,
                        "platform": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs"},
        "data": {"root": rel(args.data), "test_names": data.test_names,
                 "test_fingerprint": data.test_fingerprint(), "sources": src_rows,
                 "recipe": data.dataset.get("recipe"), "simulation": data.dataset.get("simulation")},
        "windows": [list(w) for w in WINDOWS],
        "physics_definitions": {
            "flat": (f"pixels inside the body (fd > {BODY_HU:g} HU, holes filled, largest "
                     f"component) eroded by {BODY_ERODE_PX} px, with fd in [{FLAT_HU[0]:g}, "
                     f"{FLAT_HU[1]:g}] HU and the std of fd in a {FLAT_SIZE}x{FLAT_SIZE} window "
                     f"below {FLAT_STD_HU:g} HU (so no step of more than about 90 HU within 4 px). Slices with fewer "
                     "than 100 such pixels are left out."),
            "noise": ("std of (image − fd) over the flat pixels of a slice, for the input (qd) "
                      "and the output; noise reduction = 1 − std_out / std_in, per slice, then "
                      "mean ± std over slices."),
            "bias": ("mean of (output − fd) over the flat pixels of a slice (HU); mean ± std "
                     "over slices and the largest |bias| of any slice."),
            "nps": (f"{NPS_ROI}x{NPS_ROI}-pixel ROIs on a {NPS_STRIDE}-px grid with at least "
                    f"{100 * NPS_MIN_FLAT:.0f}% flat pixels, wholly inside the eroded body (64x64 "
                    "ROIs rarely fit the chest slices' flat regions); each ROI's mean removed; 2-D "
                    "NPS = dx² / N² · mean over ROIs of |DFT|²; radial average in bins of "
                    "1/(N dx) up to the Nyquist frequency, with each slice's pixel spacing; mean "
                    "frequency f_av = Σ f NPS(f) / Σ NPS(f) (AAPM TG-233). Measured on the input "
                    "noise (qd − fd) and on the output's residual (output − fd); the change is "
                    "f_av(output) / f_av(input) − 1 per slice. (The full-dose image's own texture "
                    "is anatomy, not noise, so it has no NPS here.) A negative change means "
                    "coarser, blotchier residual noise."),
            "edge": (f"pieces of the outer body/air boundary of fd (the strongest, straightest "
                     f"high-contrast edge every slice has). At each boundary pixel, strongest "
                     f"gradient first, {2 * EDGE_HALF_LEN + 1} parallel profiles along the normal "
                     f"(±{EDGE_REACH:g} px, every {EDGE_STEP:g} px, cubic-spline interpolation); kept when the air "
                     f"side is air (mean in [{EDGE_AIR_HU[0]:g}, {EDGE_AIR_HU[1]:g}] HU, std < "
                     f"{EDGE_MAX_PLATEAU_STD[0]:g} HU), the tissue side is homogeneous (std < "
                     f"{EDGE_MAX_PLATEAU_STD[1]:g} HU), the step exceeds {EDGE_MIN_STEP_HU:g} HU "
                     f"and the profiles' 50% crossings lie on a straight line (RMS < "
                     f"{EDGE_MAX_CURVE_PX:g} px); at most {EDGE_MAX} segments {EDGE_MIN_SEP} px "
                     "apart per slice. The profiles are aligned on fd's 50% crossings and "
                     "averaged into an edge spread function (the same alignment for every "
                     "image); the 10-90% width is the distance between the 10% and 90% "
                     f"crossings around the 50% one, levels from the plateaus |t| ≥ "
                     f"{EDGE_PLATEAU:g} px, in mm with the slice's pixel spacing. Per slice the "
                     "median over segments; change = median of width / width(fd) − 1.")},
        "tuning": {
            "slices": [{k: t[k] for k in ["name", "source", "sigma_hu", "measured_sigma_hu",
                                           "kernel", "geometry", "crop"]} for t in data.tune],
            "crop": TUNE_CROP,
            "rescale": "qd_L = fd + (L / sigma) * (qd - fd)",
            "window": list(TUNE_WINDOW), "objective": "mean PSNR",
            "fingerprint": tune_fp, "cache": rel(cache_path),
            "cached_all": nlm_cached and bm3d_cached,
            "runtime_s": timing["tune_nlmeans_s"] + timing["tune_bm3d_s"],
            "nlmeans": nlm_tuning,
            "bm3d": {k: v for k, v in (bm3d_tuning or {}).items()},
        },
        "bm3d": {"available": bm3d_tuning is not None, "reason": bm3d_reason,
                 "pins": ", ".join(BM3D_PINS), "venv": rel(args.bm3d_venv)},
        "methods": methods,
        "labels": labels,
        "descriptions": descriptions,
        "levels": levels,
        "runs": infos,
        "figures": figures,
        "timing": timing,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=1, default=_json_default) + "\n")
    write_markdown(args.md, res)
    log(f"wrote {rel(args.md)} and {rel(args.json)} in {res['runtime_s']:.0f} s")
    headline(res, log)
    return 0


def _nlm_apply(args):
    qd, h, ps, pd = args
    return nlm(qd, h_hu=h, patch_size=ps, patch_distance=pd)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))


def headline(res: dict, log) -> None:
    wk = window_key(*WINDOWS[0])
    for lv in res["levels"]:
        parts = []
        for mk in res["methods"]:
            if mk == "input":
                continue
            a = lv["rows"][mk]["aggregate"]
            w = a["windows"][wk]
            ph = a["physics"]
            parts.append(f"{res['labels'][mk]} {w['psnr']['mean']:.2f} dB "
                         f"({w['gain']['psnr']['mean']:+.2f}) SSIM {w['ssim']['mean']:.4f}, worse "
                         f"{a['never_worse']['slices_below_input']}, noise -"
                         f"{fmt_opt(ph['noise_reduction_pct']['mean'], 0)}%, f_av "
                         f"{fmt_opt(ph['nps_f_av_change_pct']['mean'], 0, True)}%, edge "
                         f"{fmt_opt(ph['edge_width_change_pct']['mean'], 0, True)}%")
        inp = lv["rows"]["input"]["aggregate"]["windows"][wk]
        log(f"{lv['key']}: input {inp['psnr']['mean']:.2f} dB SSIM {inp['ssim']['mean']:.4f}; "
            + "; ".join(parts))


if __name__ == "__main__":
    sys.exit(main())
