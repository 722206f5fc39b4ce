"""Helpers shared by the quality reports (scripts/quality_report.py, the single-dataset
report of docs/QUALITY.md, and scripts/quality_multi.py, the multi-anatomy, multi-dose
report of docs/QUALITY_MULTI.md): metric definitions, the classical denoisers'
normalisation, reading and snapshotting trainer run folders, `ldct-train denoise`,
zoomed comparison figures and Markdown number formatting.

Metric definitions (both reports, and `ldct-train metrics`; checked against scikit-image
by tests/python/test_metrics_vs_skimage.py): both images clipped to the window, PSNR and
SSIM with data range = window width, SSIM with a Gaussian 11x11 window (sigma 1.5),
K1 0.01, K2 0.03, population covariance; RMSE in HU of the clipped images.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity
from skimage.restoration import denoise_nl_means

ROOT = Path(__file__).resolve().parents[1]

# Report windows (HU): the model's full range and a soft-tissue window.
WINDOWS = [(-1000.0, 1000.0), (-160.0, 240.0)]
# Classical denoisers run on (HU - NORM_LO) / (NORM_HI - NORM_LO), i.e. [-1000, 1000]
# HU -> [0, 1] (not clipped), and their output is mapped back to HU.
NORM_LO, NORM_HI = -1000.0, 1000.0
NORM_SCALE = NORM_HI - NORM_LO


def parse_run_arg(arg: str, reserved=()):
    """NAME=RUN_DIR -> (name, Path); names must be simple and not a built-in row's."""
    if "=" not in arg:
        sys.exit(f"error: run argument {arg!r} is not NAME=RUN_DIR")
    name, path = arg.split("=", 1)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        sys.exit(f"error: run name {name!r}: use letters, digits, '_', '-', '.'")
    if name.lower() in {r.lower() for r in reserved}:
        sys.exit(f"error: run name {name!r} is taken by a built-in row")
    return name, Path(path)


def parse_runs(args, reserved, bin_path: Path):
    """The NAME=RUN_DIR arguments of a report: parsed, names unique, folders present,
    and the ldct-train binary that denoises with them built."""
    runs = [parse_run_arg(a, reserved) for a in args]
    if len({n for n, _ in runs}) != len(runs):
        sys.exit("error: run names must be unique")
    for _, p in runs:
        if not p.is_dir():
            sys.exit(f"error: run folder {p} does not exist")
    if runs and not bin_path.exists():
        sys.exit(f"error: {bin_path} is missing: cargo build --release -p ldct-train "
                 "(or pass --bin)")
    return runs


def natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def fingerprint(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a, dtype="<f4").tobytes())
    return h.hexdigest()[:16]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def window_key(lo: float, hi: float) -> str:
    return f"{lo:g},{hi:g}"


def slice_metrics(ref: np.ndarray, test: np.ndarray, lo: float, hi: float):
    r = np.clip(ref.astype(np.float64), lo, hi)
    t = np.clip(test.astype(np.float64), lo, hi)
    rng = hi - lo
    return (
        float(peak_signal_noise_ratio(r, t, data_range=rng)),
        float(structural_similarity(r, t, data_range=rng, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, K1=0.01, K2=0.03)),
        float(np.sqrt(mean_squared_error(r, t))),
    )


def stats(values) -> dict:
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std()), "per_slice": [float(x) for x in v]}


def normalise(hu: np.ndarray) -> np.ndarray:
    return (hu.astype(np.float64) - NORM_LO) / NORM_SCALE


def denormalise(x: np.ndarray) -> np.ndarray:
    return (x * NORM_SCALE + NORM_LO).astype(np.float32)


def nlm(hu: np.ndarray, h_hu: float, patch_size: int, patch_distance: int) -> np.ndarray:
    return denormalise(denoise_nl_means(normalise(hu), h=h_hu / NORM_SCALE, patch_size=patch_size,
                                        patch_distance=patch_distance, fast_mode=True))


def rel(p: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_check(run_toml: dict, config_path: Path):
    """Every key set in configs/METHOD.toml must equal the run's resolved train.toml."""
    if not config_path.exists():
        return {"config": rel(config_path), "exists": False, "differences": []}
    cfg = tomllib.loads(config_path.read_text())
    run_flat = flatten(run_toml)
    diffs = []
    for key, want in flatten(cfg).items():
        got = run_flat.get(key)
        same = got == want or (isinstance(got, (int, float)) and isinstance(want, (int, float))
                               and float(got) == float(want))
        if not same:
            diffs.append({"key": key, "config": want, "run": got})
    return {"config": rel(config_path), "exists": True, "differences": diffs}


def read_metrics_csv(path: Path):
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


SNAPSHOT_FILES = ["arch.json", "weights.safetensors", "train.toml", "run.json", "metrics.csv",
                  "loss.png"]


def _read(path: Path):
    try:
        return path.read_bytes()
    except OSError:
        return None


def snapshot_run(run: Path, dest: Path, log):
    """Copies the generator (arch.json, weights.safetensors), train.toml, run.json,
    metrics.csv, loss.png (and eval.json if newer than the weights) to dest, consistently
    even while the run is training or restarted; everything else reads the copy. Returns
    (step, elapsed_s) of checkpoint/state.json, or (None, None)."""
    weights, arch = run / "weights.safetensors", run / "arch.json"
    state_path = run / "checkpoint" / "state.json"

    def signature():
        st = weights.stat() if weights.exists() else None
        return (st and (st.st_mtime_ns, st.st_size), _read(state_path), _read(run / "run.json"),
                _read(run / "train.toml"))

    for attempt in range(20):
        if not weights.exists() or not arch.exists():
            sys.exit(f"error: {run} has no arch.json + weights.safetensors yet (no checkpoint)")
        before = signature()
        # The checkpoint folder is renamed into place first, the generator written at the
        # top of the run folder after it: weights older than state.json are being replaced.
        fresh = not state_path.exists() or weights.stat().st_mtime_ns >= state_path.stat().st_mtime_ns
        if fresh and time.time() - weights.stat().st_mtime > 2.0:
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            try:
                for name in SNAPSHOT_FILES:
                    if (run / name).exists():
                        shutil.copy2(run / name, dest / name)
                ev = run / "eval.json"
                if ev.exists() and ev.stat().st_mtime >= weights.stat().st_mtime:
                    shutil.copy2(ev, dest / "eval.json")
            except OSError as e:  # a file replaced under us: try again
                log(f"  {run}: {e}")
                before = None
            if before is not None and signature() == before:
                state = json.loads(before[1]) if before[1] else {}
                return state.get("step"), state.get("elapsed_s")
        log(f"  {run}: checkpoint being written, retrying ({attempt + 1})")
        time.sleep(3.0)
    sys.exit(f"error: could not take a consistent copy of {run}'s weights")


def run_info(name: str, run: Path, snap: Path, snap_step, snap_elapsed) -> dict:
    """What the report says about a run, read from its snapshot `snap` (the folder
    named is `run`)."""
    run_dir, run = run, snap
    run_json = json.loads((run / "run.json").read_text()) if (run / "run.json").exists() else {}
    train_toml = tomllib.loads((run / "train.toml").read_text()) if (run / "train.toml").exists() else {}
    method = run_json.get("method") or train_toml.get("method") or "?"
    rows = read_metrics_csv(run / "metrics.csv")
    total_steps = run_json.get("total_steps")
    schedule = train_toml.get("schedule", {})
    row = None
    if rows:
        row = next((r for r in rows if snap_step is not None and int(r["step"]) == snap_step), rows[-1])
    step = snap_step if snap_step is not None else (int(row["step"]) if row else None)
    elapsed = float(row["elapsed_s"]) if row and row.get("elapsed_s") else snap_elapsed
    finished = step is not None and total_steps is not None and step >= total_steps
    config_path = ROOT / "configs" / f"{method}.toml"
    fit = f"target/release/ldct-train fit --config {rel(config_path)} --run {rel(run_dir)}"
    if config_path.exists():  # the command documented in the config's header comment
        m = re.search(r"^#\s*(ldct-train fit .*)$", config_path.read_text(), re.M)
        if m and f"--config {rel(config_path)}" in m.group(1):
            fit = "target/release/" + re.sub(r"--run \S+", f"--run {rel(run_dir)}",
                                             m.group(1).strip())
    ldct_eval = json.loads((run / "eval.json").read_text()) if (run / "eval.json").exists() else None
    return {
        "name": name,
        "dir": rel(run_dir),
        "method": method,
        "seed": run_json.get("seed"),
        "device": run_json.get("device"),
        "conv_backend": run_json.get("conv_backend"),
        "generator_parameters": run_json.get("generator_parameters"),
        "generator": train_toml.get("model", {}).get("generator"),
        "train": {k: train_toml.get("data", {}).get(k) for k in ["patch", "batch", "val_split",
                                                                   "val_slices", "window"]},
        "schedule": schedule,
        "optim": train_toml.get("optim"),
        "method_config": train_toml.get(method),
        "step": step,
        "epoch": int(row["epoch"]) if row else None,
        "total_steps": total_steps,
        "finished": finished,
        "elapsed_s": elapsed,
        "last_metrics_row": row,
        "fit_command": fit,
        "config_check": config_check(train_toml, config_path),
        "loss_png": (run / "loss.png").exists(),
        "train_toml": train_toml,
        "ldct_eval": ldct_eval,
    }


def denoise_run(binary: Path, snap: Path, qd_dir: Path, out: Path, n: int) -> np.ndarray:
    cmd = [str(binary), "denoise", "--run", str(snap), "--input", str(qd_dir), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    vol = np.load(out).astype(np.float32)
    if vol.ndim == 2:
        vol = vol[None]
    if vol.shape[0] != n:
        sys.exit(f"error: {out} has {vol.shape[0]} slices, expected {n}")
    return vol


def _font(size=14):
    from PIL import ImageFont  # noqa: PLC0415 (Pillow: a dependency of scikit-image)
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def to_u8(img: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.round(np.clip((img.astype(np.float64) - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def fmt(m: dict, digits: int) -> str:
    return f"{m['mean']:.{digits}f} ± {m['std']:.{digits}f}"


def fmt_gain(m: dict, digits: int) -> str:
    return f"{m['mean']:+.{digits}f} ± {m['std']:.{digits}f}"


def md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def roi_figure(path: Path, name: str, y0: int, x0: int, columns, fd: np.ndarray, *,
               size: int, scale: int, rows, diff_clip, title: str | None = None,
               diff_label: str = "(reference)") -> None:
    """A zoomed comparison: one column per image, one row per display window.

    columns: [(label, slice HU)] without the full dose, which is appended (the first
    column is the overview, drawn from columns[0], normally the low-dose input). rows:
    [(label, window lo, window hi, difference to full dose?)]; a difference row shows
    clip(img, diff_clip) - clip(fd, diff_clip). A size x size region at (y0, x0) is
    upscaled `scale` times (nearest); the overview is the whole slice, shrunk by an
    integer factor when it does not fit a cell, with the region as a red box.

    An 8-bit palette PNG: indices 0..254 are a grey ramp (black .. white), 255 is the
    red of the region-of-interest box (a third of the size of an RGB PNG)."""
    from PIL import Image, ImageDraw  # noqa: PLC0415

    white, red = 254, 255
    cell = size * scale
    h, w = fd.shape
    shrink = max(1, -(-max(h, w) // cell))  # ceil: the overview fits a cell
    pad, head, left = 6, 22, 132
    cols = [("overview", None)] + list(columns) + [("full dose", fd)]
    width = left + len(cols) * (cell + pad)
    height = head + len(rows) * (cell + pad)
    canvas = Image.new("L", (width, height), white)
    draw = ImageDraw.Draw(canvas)
    font = _font(14)

    def grey(img, lo, hi):  # HU -> 0..254
        return np.minimum(to_u8(img, lo, hi), white)

    for c, (label, _) in enumerate(cols):
        x = left + c * (cell + pad)
        text = (title or f"slice {name}") if label == "overview" else label
        draw.text((x + 2, 3), text, fill=0, font=font)
    crop = (slice(y0, y0 + size), slice(x0, x0 + size))
    for r, (row_label, lo, hi, diff) in enumerate(rows):
        y = head + r * (cell + pad)
        words, lines = row_label.split(" "), [""]
        for word in words:  # wrap the row label into the left strip
            if len(lines[-1]) + len(word) > 14:
                lines.append("")
            lines[-1] = (lines[-1] + " " + word).strip()
        draw.multiline_text((4, y + 4), "\n".join(lines), fill=0, font=font)
        for c, (label, img) in enumerate(cols):
            x = left + c * (cell + pad)
            if label == "overview":
                src = cols[1][1]  # the low-dose input
                full = grey(np.clip(src, *diff_clip) - np.clip(fd, *diff_clip) if diff else src,
                            lo, hi)
                if shrink > 1:  # block means, then the box at the shrunk coordinates
                    hh, ww = h // shrink * shrink, w // shrink * shrink
                    full = np.round(full[:hh, :ww].reshape(hh // shrink, shrink, ww // shrink, shrink)
                                    .mean(axis=(1, 3))).astype(np.uint8)
                tile = Image.fromarray(full, "L")
                bx, by, bs = x0 // shrink, y0 // shrink, size // shrink
                ImageDraw.Draw(tile).rectangle([bx, by, bx + bs - 1, by + bs - 1], outline=red)
                th, tw = full.shape
                off = ((cell - tw) // 2, (cell - th) // 2)
                canvas.paste(tile, (x + max(off[0], 0), y + max(off[1], 0)))
                continue
            if diff and label == "full dose":
                draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=127)
                draw.text((x + 8, y + 8), diff_label, fill=white, font=font)
                continue
            part = (np.clip(img[crop], *diff_clip) - np.clip(fd[crop], *diff_clip) if diff
                    else img[crop])
            tile = np.kron(grey(part, lo, hi), np.ones((scale, scale), np.uint8))
            canvas.paste(Image.fromarray(tile, "L"), (x, y))
    out = Image.frombytes("P", canvas.size, canvas.tobytes())
    ramp = [round(i * 255 / white) for i in range(white + 1)]
    out.putpalette([v for g in ramp for v in (g, g, g)] + [255, 40, 40])
    path.parent.mkdir(parents=True, exist_ok=True)
    out.save(path, format="PNG", optimize=True)
