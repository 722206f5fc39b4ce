#!/usr/bin/env python3
"""Quality report (issue 10): ldct runs against classical denoisers on the test split.

    .venv/bin/python scripts/quality_report.py supervised=runs/supervised cyclegan=runs/cyclegan

Rows of the report:
  * the low-dose input itself;
  * scikit-image NL-means (fast mode) and TV (Chambolle), their parameters tuned to
    maximise the mean PSNR at [-1000, 1000] HU on a fixed subset of the TRAIN split;
  * BM3D (the `bm3d` package) if it imports in this venv (a comparison only: its
    licence is non-commercial), otherwise the report says it was not installed;
  * every ldct run given as NAME=RUN_DIR, denoised by `ldct-train denoise`.

Metrics (scikit-image, on the test split, per slice, then mean and std): PSNR and
SSIM (Gaussian 11x11 window, sigma 1.5, population covariance) with data range =
window width on images clipped to the window, RMSE in HU of the clipped images, at
the windows [-1000, 1000] and [-160, 240] -- the same definitions as
`ldct-train metrics` (tests/python/test_metrics_vs_skimage.py checks that).

Writes docs/QUALITY.md, docs/quality/results.json (every number), zoomed
comparison PNGs docs/quality/roi_*.png and each run's loss curve
docs/quality/loss_NAME.png. Run folders are only read: the generator is copied to
a temporary folder first, so a run still in training can be reported (marked as
unfinished, with the step its weights are from).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import skimage
from skimage.metrics import peak_signal_noise_ratio
from skimage.restoration import denoise_tv_chambolle

import quality_common as common
from quality_common import (NORM_HI, NORM_LO, NORM_SCALE, ROOT, WINDOWS, denoise_run,
                            denormalise, fingerprint, fmt, fmt_gain, md_escape, natural_key, nlm,
                            normalise, rel, run_info, sha256_file, slice_metrics, snapshot_run,
                            stats, window_key)

# Tuning objective: mean PSNR at this window on the tuning slices.
TUNE_WINDOW = (-1000.0, 1000.0)
# Classical denoisers run on (HU - NORM_LO) / (NORM_HI - NORM_LO) (quality_common).

# NL-means grid: h in HU (h / 2000 on the normalised image), then a 1-HU refinement
# of h around the best grid value for the best (patch_size, patch_distance).
NLM_PATCH_SIZES = [3, 5, 7]
NLM_PATCH_DISTANCES = [5, 8]
NLM_H_HU = [8.0, 12.0, 16.0, 20.0, 24.0, 28.0, 32.0, 40.0]
NLM_H_REFINE_HU = [-3.0, -2.0, -1.0, 1.0, 2.0, 3.0]
# TV (Chambolle) grid: weight on the normalised image, sqrt(2) steps, then
# 2^(+-1/4) refinement around the best.
TV_WEIGHTS = [round(0.002 * 2 ** (k / 2), 6) for k in range(11)]  # 0.002 .. 0.064
TV_REFINE_FACTORS = [2 ** -0.25, 2 ** 0.25]
# BM3D (only if installed): sigma_psd in HU on the normalised image.
BM3D_SIGMA_HU = [10.0, 15.0, 20.0, 25.0, 30.0, 40.0]

# Zoomed comparisons: default regions of interest (test slice name, top row, left col).
DEFAULT_ROIS = ["0054:48:80", "0043:118:80"]
ROI_SIZE = 96
ROI_SCALE = 3
# The difference row compares images clipped to the wide metric window, as the
# metrics do (a generator ending in tanh saturates near the [-1000, 1000] HU range
# it was trained on: bone above 1000 HU would otherwise dominate the row).
DIFF_CLIP = (-1000.0, 1000.0)
FIG_ROWS = [  # (label, window lo, window hi, difference to full dose?)
    ("soft tissue [-160, 240] HU", -160.0, 240.0, False),
    ("brain [0, 80] HU", 0.0, 80.0, False),
    ("minus full dose [-50, 50] HU", -50.0, 50.0, True),  # of images clipped to DIFF_CLIP
]


# ----------------------------------------------------------------------------- data




def load_split(root: Path, split: str):
    """(names, fd [N,H,W] float32 HU, qd [N,H,W] float32 HU), pairs by file name."""
    fd_dir, qd_dir = root / split / "fd", root / split / "qd"
    names = sorted((p.stem for p in qd_dir.glob("*.npy")), key=natural_key)
    if not names:
        sys.exit(f"error: no slices in {qd_dir} (run `make data`)")
    missing = [n for n in names if not (fd_dir / f"{n}.npy").exists()]
    if missing:
        sys.exit(f"error: {fd_dir} lacks {missing[:5]}")
    fd = np.stack([np.load(fd_dir / f"{n}.npy").astype(np.float32) for n in names])
    qd = np.stack([np.load(qd_dir / f"{n}.npy").astype(np.float32) for n in names])
    return names, fd, qd






# -------------------------------------------------------------------------- metrics








def volume_metrics(fd: np.ndarray, out: np.ndarray) -> dict:
    res = {}
    for lo, hi in WINDOWS:
        rows = np.array([slice_metrics(fd[i], out[i], lo, hi) for i in range(len(fd))])
        res[window_key(lo, hi)] = {
            "psnr": stats(rows[:, 0]), "ssim": stats(rows[:, 1]), "rmse_hu": stats(rows[:, 2]),
        }
    return res


def add_gains(metrics: dict, base: dict) -> None:
    """Per-slice differences to the low-dose input (mean, std)."""
    for key, m in metrics.items():
        b = base[key]
        for name, metric in [("psnr_db", "psnr"), ("ssim", "ssim"), ("rmse_hu", "rmse_hu")]:
            d = np.subtract(m[metric]["per_slice"], b[metric]["per_slice"])
            m.setdefault("gain", {})[name] = {"mean": float(d.mean()), "std": float(d.std())}


def mean_psnr(fd: np.ndarray, out: np.ndarray, window=TUNE_WINDOW) -> float:
    lo, hi = window
    r = np.clip(fd.astype(np.float64), lo, hi)
    t = np.clip(out.astype(np.float64), lo, hi)
    return float(np.mean([peak_signal_noise_ratio(r[i], t[i], data_range=hi - lo)
                          for i in range(len(r))]))


# ------------------------------------------------------------------ classical rows








def tv(hu: np.ndarray, weight: float) -> np.ndarray:
    return denormalise(denoise_tv_chambolle(normalise(hu), weight=weight))


def apply(fn, qd: np.ndarray, **params) -> np.ndarray:
    return np.stack([fn(qd[i], **params) for i in range(len(qd))])


def tune_nlm(fd, qd, log):
    trials = []

    def trial(ps, pd, h):
        psnr = mean_psnr(fd, apply(nlm, qd, h_hu=h, patch_size=ps, patch_distance=pd))
        trials.append({"patch_size": ps, "patch_distance": pd, "h_hu": h, "psnr": psnr})
        return psnr

    for ps in NLM_PATCH_SIZES:
        for pd in NLM_PATCH_DISTANCES:
            for h in NLM_H_HU:
                trial(ps, pd, h)
            best = max((t for t in trials if (t["patch_size"], t["patch_distance"]) == (ps, pd)),
                       key=lambda t: t["psnr"])
            log(f"  NL-means patch_size {ps} patch_distance {pd}: best h {best['h_hu']:g} HU "
                f"-> {best['psnr']:.3f} dB")
    best = max(trials, key=lambda t: t["psnr"])
    for dh in NLM_H_REFINE_HU:
        h = best["h_hu"] + dh
        if h > 0:
            trial(best["patch_size"], best["patch_distance"], h)
    best = dict(max(trials, key=lambda t: t["psnr"]))
    log(f"  NL-means best: patch_size {best['patch_size']} patch_distance "
        f"{best['patch_distance']} h {best['h_hu']:g} HU -> {best['psnr']:.3f} dB")
    return best, trials


def tune_tv(fd, qd, log):
    trials = []

    def trial(w):
        psnr = mean_psnr(fd, apply(tv, qd, weight=w))
        trials.append({"weight": w, "psnr": psnr})

    for w in TV_WEIGHTS:
        trial(w)
    centre = max(trials, key=lambda t: t["psnr"])["weight"]
    for f in TV_REFINE_FACTORS:
        trial(round(centre * f, 6))
    best = dict(max(trials, key=lambda t: t["psnr"]))
    log(f"  TV best: weight {best['weight']:g} -> {best['psnr']:.3f} dB")
    return best, sorted(trials, key=lambda t: t["weight"])


def bm3d_module():
    try:
        import bm3d  # noqa: PLC0415 (optional, non-commercial licence: comparison only)
    except Exception as e:  # ImportError or a broken install
        return None, f"{type(e).__name__}: {e}"
    return bm3d, None


def bm3d_fn(mod):
    def run(hu, sigma_hu):
        return denormalise(np.asarray(mod.bm3d(normalise(hu), sigma_psd=sigma_hu / NORM_SCALE)))
    return run


def tune_bm3d(mod, fd, qd, log):
    fn = bm3d_fn(mod)
    trials = [{"sigma_hu": s, "psnr": mean_psnr(fd, apply(fn, qd, sigma_hu=s))}
              for s in BM3D_SIGMA_HU]
    best = dict(max(trials, key=lambda t: t["psnr"]))
    log(f"  BM3D best: sigma_psd {best['sigma_hu']:g} HU -> {best['psnr']:.3f} dB")
    return best, trials


# ------------------------------------------------------------------------ ldct runs


# Row names of the report's own rows, not available to runs.
RESERVED = ("input", "nl-means", "tv", "bm3d", "full-dose")




















# ------------------------------------------------------------------------- figures






def roi_figure(path: Path, name: str, y0: int, x0: int, columns, fd: np.ndarray) -> None:
    """columns: [(label, slice HU)] without the full dose, which is appended."""
    common.roi_figure(path, name, y0, x0, columns, fd, size=ROI_SIZE, scale=ROI_SCALE,
                      rows=FIG_ROWS, diff_clip=DIFF_CLIP)


# -------------------------------------------------------------------------- report








def write_markdown(path: Path, res: dict) -> None:
    data, split, sim = res["data"], res["data"]["split"], res["data"]["simulation"]
    src = res["data"]["source"]
    L = []
    a = L.append
    q = res["quality_dir"]
    a("# Denoising quality on the simulated quarter-dose head CT (issue 10)")
    a("")
    a(f"Generated by `scripts/quality_report.py` on {res['generated']} "
      f"in {res['runtime_s']:.0f} s; every number below is in "
      f"[`{q}/results.json`]({q}/results.json) (per slice too). Rerun with the "
      "command under [Reproduce](#reproduce).")
    a("")
    unfinished = [r for r in res["runs"].values() if not r["finished"]]
    if unfinished:
        a("> **Unfinished runs.** " + "; ".join(
            f"`{r['name']}` ({r['dir']}) is reported at step {r['step']} of {r['total_steps']} "
            f"(epoch {r['epoch']} of {r['schedule'].get('epochs')})" for r in unfinished)
          + ": its numbers are from a checkpoint before the end of its schedule (a run still in training or one stopped early), not final.")
        a("")
    a("## Data")
    a("")
    g = sim.get("geometry", {})
    a(f"- **Source**: {data['name']}, built by `make data` ({src.get('kind')}: "
      f"`{src.get('path')}`, {src.get('slices')} slices of {src.get('rows')}x{src.get('cols')}, "
      f"pixel spacing {src.get('pixel_spacing_mm')} mm). The full-dose (fd) slice is the "
      "noise-free projection of the input reconstructed with the same FBP as the low-dose one, "
      "so the only difference between the pair is the simulated quantum noise.")
    a(f"- **Low dose** (qd): dose fraction {sim.get('dose')} of I0 = {sim.get('i0'):g} photons, "
      f"electronic noise {sim.get('electronic_noise')}, count floor {sim.get('count_floor')}, "
      f"{g.get('kind')}-beam geometry ({g.get('views')} views, {g.get('bins')} "
      f"{g.get('detector')} bins, SID {g.get('sid')} mm, SDD {g.get('sdd')} mm), "
      f"{sim.get('filter')}-filtered FBP, mu_water {sim.get('mu_water')}/mm, seed {sim.get('seed')}.")
    a(f"  Pair: {sim.get('pair')}.")
    n = data["noise"]
    a(f"- **Noise level** (test split, std of qd − fd): {n['body_std_hu']:.1f} HU inside the "
      f"head (fd > −500 HU), {n['all_std_hu']:.1f} HU over the whole slice. "
      f"{100 * n['fd_above_1000_hu_fraction']:.2f}% of the test fd pixels (bone, up to "
      f"{n['fd_max_hu']:.0f} HU) lie above 1000 HU, where both windows clip.")
    a(f"- **Split**: {split.get('rule')} (test fraction {split.get('test_fraction')}, gap "
      f"{split.get('gap')}). Train slices {split.get('train')} ({split.get('train_slices')}), "
      f"test slices {split.get('test')} ({split.get('test_slices')}), half-open index ranges "
      f"into the volume. Everything below is measured on the {len(data['test_names'])} test "
      f"slices ({data['test_names'][0]}–{data['test_names'][-1]}); data fingerprint "
      f"`{data['fingerprint']}` (sha256 of the test fd+qd arrays).")
    groups = {}
    for r in res["runs"].values():
        groups.setdefault((r["train"]["val_slices"], r["train"]["val_split"]), []).append(r["name"])
    a("- The ldct runs log a validation PSNR during training on "
      + "; ".join(f"{n} slices of the `{sp}` split ({', '.join(f'`{x}`' for x in names)})"
                  for (n, sp), names in groups.items())
      + ". It is logged only (no early stopping or checkpoint selection: the reported "
      "weights are the last checkpoint of a fixed schedule)."
      if res["runs"] else "- No ldct runs were given.")
    a("")
    a("## Metrics")
    a("")
    a("scikit-image " + res["environment"]["scikit-image"] + ", per test slice against the "
      "full-dose slice, then mean ± std over the slices: both images are clipped to the "
      "window; PSNR and SSIM use data range = window width; SSIM has a Gaussian window "
      "(sigma 1.5, 11x11), K1 0.01, K2 0.03, population covariance; RMSE is in HU of the "
      "clipped images. These are the definitions of `ldct-train metrics` (checked against "
      "scikit-image by `tests/python/test_metrics_vs_skimage.py`). "
      "Gains are per-slice differences to the low-dose input (mean ± std).")
    a("")
    for lo, hi in WINDOWS:
        key = window_key(lo, hi)
        a(f"### Window [{lo:g}, {hi:g}] HU")
        a("")
        a("| Row | PSNR (dB) | PSNR gain (dB) | SSIM | SSIM gain | RMSE (HU) | RMSE change (HU) |")
        a("|---|---:|---:|---:|---:|---:|---:|")
        for row in res["rows"]:
            m = row["metrics"][key]
            gain = m.get("gain")
            label = row["label"] + (" ⚠ unfinished" if row.get("unfinished") else "")
            a(f"| {md_escape(label)} | {fmt(m['psnr'], 2)} | "
              f"{fmt_gain(gain['psnr_db'], 2) if gain else '—'} | {fmt(m['ssim'], 4)} | "
              f"{fmt_gain(gain['ssim'], 4) if gain else '—'} | {fmt(m['rmse_hu'], 1)} | "
              f"{fmt_gain(gain['rmse_hu'], 1) if gain else '—'} |")
        a("")
    best = []
    for lo, hi in WINDOWS:
        key = window_key(lo, hi)
        for metric, name, sign in [("psnr", "PSNR", 1), ("ssim", "SSIM", 1), ("rmse_hu", "RMSE", -1)]:
            top = max(res["rows"], key=lambda r: sign * r["metrics"][key][metric]["mean"])
            best.append(f"{name} [{lo:g}, {hi:g}]: {top['label']}")
    a("Best mean per column — " + "; ".join(best) + ".")
    a("")
    a("Row details:")
    a("")
    for row in res["rows"]:
        lo_hu, hi_hu = row["output_range_hu"]
        a(f"- **{row['label']}**: {row['description']} Value range on the test split "
          f"[{lo_hu:.0f}, {hi_hu:.0f}] HU.")
    if res["bm3d"]["available"] is False:
        a(f"- **BM3D**: not reported — the `bm3d` package is not installed in the project "
          f"venv (`{res['bm3d']['reason']}`); it is deliberately not a dependency (its licence "
          "is non-commercial). With it installed, this script adds a BM3D row (comparison only).")
    a("")
    a("## Classical baselines: tuning")
    a("")
    t = res["tuning"]
    a(f"Parameters were chosen to maximise the mean PSNR at [{TUNE_WINDOW[0]:g}, "
      f"{TUNE_WINDOW[1]:g}] HU on {len(t['slices'])} evenly spaced **train** slices "
      f"({', '.join(t['slices'])}); the test split was not used. Both run on the image "
      f"normalised as (HU + 1000) / 2000 ([-1000, 1000] HU -> [0, 1], not clipped), their "
      "output mapped back to HU.")
    a("")
    nb = t["nlmeans"]["best"]
    a(f"- **NL-means** (`skimage.restoration.denoise_nl_means`, `fast_mode=True`, `sigma=0`): "
      f"grid patch_size {{{', '.join(map(str, NLM_PATCH_SIZES))}}} x patch_distance "
      f"{{{', '.join(map(str, NLM_PATCH_DISTANCES))}}} x h "
      f"{{{', '.join(f'{h:g}' for h in NLM_H_HU)}}} HU (h/2000 on the normalised image), then h ± "
      f"{{1, 2, 3}} HU around the best. **Chosen: patch_size {nb['patch_size']}, "
      f"patch_distance {nb['patch_distance']}, h = {nb['h_hu']:g} HU "
      f"({nb['h_hu'] / NORM_SCALE:.4g} normalised)**, tuning PSNR {nb['psnr']:.2f} dB. "
      "`estimate_sigma` (the usual way to set h ~ 0.6–0.8 sigma) needs PyWavelets, "
      + ("which is not in the venv, so h is tuned directly."
         if not res["environment"]["pywt"] else "available here, but h is tuned directly."))
    a("")
    a("  | patch_size \\ patch_distance | " + " | ".join(str(p) for p in NLM_PATCH_DISTANCES) + " |")
    a("  |---|" + "---:|" * len(NLM_PATCH_DISTANCES))
    for ps in NLM_PATCH_SIZES:
        cells = []
        for pd in NLM_PATCH_DISTANCES:
            b = max((x for x in t["nlmeans"]["trials"]
                     if x["patch_size"] == ps and x["patch_distance"] == pd), key=lambda x: x["psnr"])
            cells.append(f"{b['psnr']:.2f} dB (h {b['h_hu']:g})")
        a(f"  | {ps} | " + " | ".join(cells) + " |")
    a("")
    tb = t["tv"]["best"]
    a(f"- **TV** (`skimage.restoration.denoise_tv_chambolle`, default eps/max_num_iter): weight "
      f"grid {{{', '.join(f'{w:g}' for w in TV_WEIGHTS)}}} on the normalised image, then x 2^±1/4 around the "
      f"best. **Chosen: weight = {tb['weight']:g}** (= {tb['weight'] * NORM_SCALE:g} on the "
      f"HU image), tuning PSNR {tb['psnr']:.2f} dB.")
    a("")
    a("  | weight | " + " | ".join(f"{x['weight']:g}" for x in t["tv"]["trials"]) + " |")
    a("  |---|" + "---:|" * len(t["tv"]["trials"]))
    a("  | PSNR (dB) | " + " | ".join(f"{x['psnr']:.2f}" for x in t["tv"]["trials"]) + " |")
    a("")
    if res["bm3d"]["available"]:
        bb = t["bm3d"]["best"]
        a(f"- **BM3D** (`bm3d.bm3d`, non-commercial licence, comparison only): sigma_psd grid "
          f"{BM3D_SIGMA_HU} HU. **Chosen: sigma_psd = {bb['sigma_hu']:g} HU**, tuning PSNR "
          f"{bb['psnr']:.2f} dB.")
        a("")
    a(f"Tuning took {t['runtime_s']:.0f} s.")
    a("")
    a("## Zoomed comparisons")
    a("")
    a(f"{ROI_SIZE}x{ROI_SIZE} regions of test slices, upscaled {ROI_SCALE}x (nearest), red box "
      "in the overview column. Rows: soft-tissue window [-160, 240] HU, brain window [0, 80] HU, "
      "and the difference to full dose at [-50, 50] HU of the images clipped to [-1000, 1000] "
      "HU as in the metrics (grey = 0; structure visible there was removed or added by the "
      "denoiser).")
    a("")
    for f in res["figures"]:
        a(f"**Slice {f['slice']}**, rows {f['y0']}:{f['y0'] + ROI_SIZE}, columns "
          f"{f['x0']}:{f['x0'] + ROI_SIZE}:")
        a("")
        a(f"![slice {f['slice']}]({f['file']})")
        a("")
    if any(r["loss_png"] for r in res["runs"].values()):
        a("## Training curves")
        a("")
        for r in res["runs"].values():
            if r["loss_png"]:
                a(f"**{r['name']}** (`{r['dir']}/loss.png` at report time):")
                a("")
                a(f"![loss {r['name']}]({q}/loss_{r['name']}.png)")
                a("")
    a("## Runs")
    a("")
    if res["runs"]:
        a("| Run | Method | Generator | Params | Steps | Elapsed | Batch x patch | Optimiser | Device |")
        a("|---|---|---|---:|---:|---:|---|---|---|")
        for r in res["runs"].values():
            gen = r["generator"] or {}
            gen_s = ", ".join(f"{k} {json.dumps(v)}" for k, v in gen.items())
            opt = r["optim"] or {}
            sch = r["schedule"] or {}
            status = "" if r["finished"] else " (unfinished)"
            el = r["elapsed_s"]
            a(f"| `{r['name']}` (`{r['dir']}`) | {r['method']} | {gen_s} | "
              f"{r['generator_parameters']:,} | {r['step']} / {r['total_steps']}{status} | "
              f"{el / 60:.1f} min | {r['train']['batch']} x {r['train']['patch']}² | "
              f"Adam lr {opt.get('lr')} ({opt.get('beta1')}, {opt.get('beta2')}), "
              f"{sch.get('epochs')} epochs of {sch.get('steps_per_epoch')}, linear decay over "
              f"the last {sch.get('decay_epochs')} | {r['device']}, {r['conv_backend']} |"
              if el is not None else
              f"| `{r['name']}` | {r['method']} | {gen_s} | {r['generator_parameters']} | "
              f"{r['step']} / {r['total_steps']}{status} | ? | | | |")
        a("")
        a("Elapsed is wall time to the reported checkpoint (`elapsed_s` of metrics.csv), on a "
          "2-core CPU shared with other jobs. Full configurations: each run's `train.toml` "
          "(copied into results.json).")
        a("")
        for r in res["runs"].values():
            cc = r["config_check"]
            if not cc["exists"]:
                a(f"- `{r['name']}`: {cc['config']} does not exist.")
            elif cc["differences"]:
                a(f"- `{r['name']}`: the run's train.toml differs from {cc['config']} (edited "
                  "since?): " + "; ".join(f"`{d['key']}` config {d['config']} vs run {d['run']}"
                                          for d in cc["differences"]) + ".")
            else:
                a(f"- `{r['name']}`: every setting of `{cc['config']}` matches the run's train.toml.")
            ev = r.get("ldct_eval")
            row = next((x for x in res["rows"] if x.get("run") == r["name"]), None)
            if ev and row:
                parts = []
                for lo, hi in WINDOWS:
                    k = f"psnr_{lo:g}_{hi:g}"
                    if k in ev:
                        mine = row["metrics"][window_key(lo, hi)]["psnr"]["mean"]
                        parts.append(f"{ev[k]:.3f} vs {mine:.3f} dB at [{lo:g}, {hi:g}]")
                if parts:
                    a(f"  Cross-check: `{r['dir']}/eval.json` (`ldct-train eval`, Rust metrics, "
                      "newer than the weights) gives model PSNR " + ", ".join(parts)
                      + " here (scikit-image).")
        a("")
    a("## Reproduce")
    a("")
    a("```sh")
    a("cargo build --release -p ldct-train        # target/release/ldct-train")
    a("make data                                  # " + res["commands"]["data"])
    for r in res["runs"].values():
        a(r["fit_command"])
    a(res["commands"]["report"])
    a("```")
    a("")
    a("The dataset simulation and the trainer are seeded (seed 1); the weights measured here "
      "are identified by their sha256 (row details above, full hashes in results.json), so a "
      "retrained run can be checked against them. NL-means, TV and the metrics are "
      "deterministic. The script only reads the run folders (it copies the generator to a "
      "temporary folder first), so it can be run while a run is still training: such a run "
      "is marked unfinished with the step its weights are from.")
    a("")
    env = res["environment"]
    a(f"Environment: Python {env['python']}, numpy {env['numpy']}, scikit-image "
      f"{env['scikit-image']}, {env['ldct-train']}, {env['platform']}.")
    a("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(L))


# ---------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", metavar="NAME=RUN_DIR",
                    help="ldct run folders (from `ldct-train fit`), one report row each")
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "invesalius-quarter")
    ap.add_argument("--bin", type=Path, default=ROOT / "target" / "release" / "ldct-train")
    ap.add_argument("--md", type=Path, default=ROOT / "docs" / "QUALITY.md")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "docs" / "quality")
    ap.add_argument("--tune-slices", type=int, default=8,
                    help="evenly spaced train slices used for tuning (default 8)")
    ap.add_argument("--roi", action="append", metavar="SLICE:Y0:X0",
                    help=f"zoomed region (repeatable; default {' '.join(DEFAULT_ROIS)})")
    args = ap.parse_args(argv)

    t_start = time.time()

    def log(msg):
        print(f"[{time.time() - t_start:7.1f}s] {msg}", flush=True)

    runs = common.parse_runs(args.runs, RESERVED, args.bin)
    rois = []
    for spec in args.roi or DEFAULT_ROIS:
        m = re.fullmatch(r"([^:]+):(\d+):(\d+)", spec)
        if not m:
            sys.exit(f"error: --roi {spec!r} is not SLICE:Y0:X0")
        rois.append((m.group(1), int(m.group(2)), int(m.group(3))))

    dataset = json.loads((args.data / "dataset.json").read_text())
    test_names, fd, qd = load_split(args.data, "test")
    train_names, fd_tr, qd_tr = load_split(args.data, "train")
    log(f"data: {len(test_names)} test, {len(train_names)} train slices from {rel(args.data)}")
    for name, y0, x0 in rois:
        if name not in test_names:
            sys.exit(f"error: --roi slice {name} is not in the test split")
        if y0 + ROI_SIZE > fd.shape[1] or x0 + ROI_SIZE > fd.shape[2]:
            sys.exit(f"error: --roi {name}:{y0}:{x0} leaves the {fd.shape[1:]} slice")

    body = fd > -500.0
    noise = {"body_std_hu": float((qd - fd)[body].std()), "all_std_hu": float((qd - fd).std()),
             "fd_above_1000_hu_fraction": float((fd > 1000.0).mean()),
             "fd_max_hu": float(fd.max())}

    # ---- tuning on the train split
    t0 = time.time()
    k = min(args.tune_slices, len(train_names))
    idx = np.unique(np.round(np.linspace(0, len(train_names) - 1, k)).astype(int))
    tfd, tqd = fd_tr[idx], qd_tr[idx]
    log(f"tuning on train slices {[train_names[i] for i in idx]}")
    nlm_best, nlm_trials = tune_nlm(tfd, tqd, log)
    tv_best, tv_trials = tune_tv(tfd, tqd, log)
    bm3d, bm3d_reason = bm3d_module()
    tuning = {
        "window": list(TUNE_WINDOW), "objective": "mean PSNR",
        "slices": [train_names[i] for i in idx],
        "normalisation": {"lo": NORM_LO, "hi": NORM_HI},
        "nlmeans": {"grid": {"patch_size": NLM_PATCH_SIZES, "patch_distance": NLM_PATCH_DISTANCES,
                             "h_hu": NLM_H_HU, "h_refine_hu": NLM_H_REFINE_HU},
                    "best": nlm_best, "trials": nlm_trials},
        "tv": {"grid": {"weight": TV_WEIGHTS, "refine_factors": TV_REFINE_FACTORS},
               "best": tv_best, "trials": tv_trials},
    }
    if bm3d is not None:
        b_best, b_trials = tune_bm3d(bm3d, tfd, tqd, log)
        tuning["bm3d"] = {"grid": {"sigma_hu": BM3D_SIGMA_HU}, "best": b_best, "trials": b_trials}
    tuning["runtime_s"] = time.time() - t0
    log(f"tuning done in {tuning['runtime_s']:.0f} s")

    # ---- rows on the test split
    rows, outputs = [], {}

    def add_row(key, label, kind, description, out, seconds, **extra):
        t = time.time()
        metrics = volume_metrics(fd, out)
        rows.append({"key": key, "label": label, "kind": kind, "description": description,
                     "metrics": metrics, "denoise_s": seconds,
                     "output_range_hu": [float(out.min()), float(out.max())], **extra})
        outputs[key] = out
        m = metrics[window_key(*WINDOWS[0])]
        log(f"  {label}: PSNR {m['psnr']['mean']:.2f} dB SSIM {m['ssim']['mean']:.4f} "
            f"RMSE {m['rmse_hu']['mean']:.1f} HU ({seconds:.1f} s + metrics {time.time() - t:.1f} s)")

    log("test split:")
    add_row("input", "Low-dose input", "input",
            "the simulated quarter-dose slice (qd), no denoising.", qd, 0.0)
    t = time.time()
    out = apply(nlm, qd, h_hu=nlm_best["h_hu"], patch_size=nlm_best["patch_size"],
                patch_distance=nlm_best["patch_distance"])
    add_row("nlmeans", "NL-means (scikit-image)", "classical",
            f"`denoise_nl_means(fast_mode=True, h={nlm_best['h_hu']:g} HU, "
            f"patch_size={nlm_best['patch_size']}, patch_distance={nlm_best['patch_distance']})` "
            "on the normalised image, tuned on train slices.", out, time.time() - t,
            params={k: nlm_best[k] for k in ["h_hu", "patch_size", "patch_distance"]})
    t = time.time()
    out = apply(tv, qd, weight=tv_best["weight"])
    add_row("tv", "TV (scikit-image Chambolle)", "classical",
            f"`denoise_tv_chambolle(weight={tv_best['weight']:g})` on the normalised image, "
            "tuned on train slices.", out, time.time() - t, params={"weight": tv_best["weight"]})
    if bm3d is not None:
        t = time.time()
        out = apply(bm3d_fn(bm3d), qd, sigma_hu=tuning["bm3d"]["best"]["sigma_hu"])
        add_row("bm3d", "BM3D (non-commercial, comparison only)", "classical",
                f"`bm3d.bm3d(sigma_psd={tuning['bm3d']['best']['sigma_hu']:g} HU)` on the "
                "normalised image, tuned on train slices.", out, time.time() - t,
                params={"sigma_hu": tuning["bm3d"]["best"]["sigma_hu"]})

    infos, loss_png = {}, {}
    with tempfile.TemporaryDirectory(prefix="ldct-quality-") as tmp:
        for name, run in runs:
            snap = Path(tmp) / name
            step, elapsed = snapshot_run(run, snap, log)
            info = run_info(name, run, snap, step, elapsed)
            info["weights_sha256"] = sha256_file(snap / "weights.safetensors")
            t = time.time()
            vol = denoise_run(args.bin, snap, args.data / "test" / "qd", Path(tmp) / f"{name}.npy",
                              len(test_names))
            unfinished = not info["finished"]
            add_row(f"run:{name}", f"ldct {name}", "run",
                    f"`{info['dir']}` ({info['method']}, step {info['step']} of "
                    f"{info['total_steps']}{', UNFINISHED' if unfinished else ''}), whole slices "
                    f"through `ldct-train denoise`; weights sha256 "
                    f"`{info['weights_sha256'][:16]}`.", vol, time.time() - t,
                    run=name, unfinished=unfinished)
            infos[name] = info
            if (snap / "loss.png").exists():
                loss_png[name] = (snap / "loss.png").read_bytes()

    base = rows[0]["metrics"]
    for row in rows[1:]:
        add_gains(row["metrics"], base)

    # ---- files under docs/quality
    out_dir = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in list(out_dir.glob("roi_*.png")) + list(out_dir.glob("loss_*.png")):
        old.unlink()
    figures = []
    # docs/quality as seen from docs/QUALITY.md (links in the Markdown)
    qdir = Path(os.path.relpath(out_dir.resolve(), args.md.resolve().parent)).as_posix()
    columns_keys = [r["key"] for r in rows]
    short = {"input": "low dose", "nlmeans": "NL-means", "tv": "TV", "bm3d": "BM3D"}
    for name, y0, x0 in rois:
        i = test_names.index(name)
        cols = [(short.get(k, k.split(":", 1)[-1]), outputs[k][i]) for k in columns_keys]
        fname = f"roi_{name}.png"
        roi_figure(out_dir / fname, name, y0, x0, cols, fd[i])
        figures.append({"slice": name, "y0": y0, "x0": x0, "size": ROI_SIZE, "scale": ROI_SCALE,
                        "file": f"{qdir}/{fname}"})
    for name, png in loss_png.items():
        (out_dir / f"loss_{name}.png").write_bytes(png)
    log(f"figures: {[f['file'] for f in figures]}")

    try:
        version = subprocess.run([str(args.bin), "--version"], capture_output=True, text=True,
                                 check=True).stdout.strip()
    except Exception:
        version = "ldct-train (not found)"
    try:
        import pywt  # noqa: F401, PLC0415
        has_pywt = True
    except ImportError:
        has_pywt = False
    report_cmd = shlex.join([".venv/bin/python", "scripts/quality_report.py", *(argv if argv is not None
                                                                  else sys.argv[1:])])
    src = dataset.get("source", {})
    res = {
        "format": "ldct-quality/1",
        "generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "runtime_s": 0.0,
        "commands": {
            "report": report_cmd,
            "data": "target/debug/ldct-train dataset import --source invesalius "
                    f"--out {rel(args.data)} --dose {dataset.get('simulation', {}).get('dose')} "
                    f"--seed {dataset.get('simulation', {}).get('seed')}",
        },
        "environment": {"python": platform.python_version(), "numpy": np.__version__,
                        "scikit-image": skimage.__version__, "ldct-train": version,
                        "pywt": has_pywt, "platform": f"{platform.system()} {platform.machine()}, "
                                                     f"{os.cpu_count()} CPUs"},
        "data": {"root": rel(args.data), "name": rel(args.data),
                 "source": src, "simulation": dataset.get("simulation", {}),
                 "split": dataset.get("split", {}), "test_names": test_names,
                 "fingerprint": fingerprint(fd, qd), "noise": noise},
        "windows": [list(w) for w in WINDOWS],
        "metric_definitions": {
            "clip": "both images clipped to the window", "data_range": "window width",
            "ssim": {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False,
                     "K1": 0.01, "K2": 0.03},
            "rmse_hu": "sqrt(mean squared error) of the clipped images, HU",
            "aggregate": "mean and population std over test slices; gains are per-slice "
                         "differences to the input row"},
        "tuning": tuning,
        "bm3d": {"available": bm3d is not None, "reason": bm3d_reason},
        "rows": rows,
        "runs": infos,
        "figures": figures,
        "quality_dir": qdir,
    }
    res["runtime_s"] = time.time() - t_start
    (out_dir / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    write_markdown(args.md, res)
    log(f"wrote {rel(args.md)} and {rel(out_dir / 'results.json')} in {res['runtime_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
