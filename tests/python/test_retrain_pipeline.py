"""The retraining pipeline of k8s/retrain (issue 9) and the trainer's evaluation
(issue 4), run for real on a small synthetic dataset:

    ldct-train fit -> ldct-train eval -> ldct-export -> ldct-export check -> ldct-export gate

Independent references: scikit-image computes the PSNR of `ldct-train denoise`'s
output (it must equal eval.csv's figure), and Python onnxruntime runs the exported
model (it must equal Candle's output).
"""

import csv
import json

import numpy as np
import onnxruntime as ort
import pytest
from skimage.metrics import peak_signal_noise_ratio

from conftest import run_bin, write_phantom_dataset

CONFIG = """
method = "supervised"
seed = 3
[data]
root = "{root}"
patch = 16
batch = 8
val_slices = 2
min_tissue = 0.0
[model]
generator = {{ kind = "unet", base = 8, depth = 2, norm = "none" }}
init = {{ kind = "kaiming" }}
[optim]
lr = 0.003
beta1 = 0.9
[schedule]
epochs = {epochs}
steps_per_epoch = 20
decay_epochs = 1
"""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("data"), seed=11, slices=10, train=7)


def train(tmp_path, dataset, name, epochs):
    cfg = tmp_path / f"{name}.toml"
    cfg.write_text(CONFIG.format(root=dataset, epochs=epochs))
    run = tmp_path / name
    run_bin("ldct-train", "fit", "--config", cfg, "--run", run, "--quiet")
    run_bin("ldct-train", "eval", "--run", run, "--data", dataset, "--quiet")
    model = tmp_path / "store" / f"{name}-model"
    run_bin("ldct-export", "--run", run, "--out", model, "--name", "default", "--version", name)
    run_bin("ldct-export", "check", "--model", model)
    return run, model


def test_fit_eval_export_gate(tmp_path, dataset):
    weak_run, weak = train(tmp_path, dataset, "weak", epochs=1)
    strong_run, strong = train(tmp_path, dataset, "strong", epochs=6)
    ev = {n: json.loads((r / "eval.json").read_text()) for n, r in (("weak", weak_run), ("strong", strong_run))}
    assert ev["strong"]["psnr_-1000_1000"] > ev["weak"]["psnr_-1000_1000"]
    assert ev["strong"]["gain"]["psnr_-1000_1000"] > 2.0, ev["strong"]

    # The exported manifests carry the eval metrics the gate compares.
    for name, model in (("weak", weak), ("strong", strong)):
        manifest = json.loads((model / "manifest.json").read_text())
        assert manifest["metrics"]["psnr_-1000_1000"] == pytest.approx(ev[name]["psnr_-1000_1000"])
        assert manifest["method"] == "supervised"

    # Better candidate over the serving model: accepted (exit 0).
    ok = run_bin("ldct-export", "gate", "--candidate", strong, "--serving", weak, check=False)
    assert ok.returncode == 0, ok.stderr
    # Worse candidate: refused (exit 1), naming both values.
    bad = run_bin("ldct-export", "gate", "--candidate", weak, "--serving", strong, check=False)
    assert bad.returncode == 1, bad.stderr
    assert f"{ev['weak']['psnr_-1000_1000']:.2f}"[:4] in bad.stderr + bad.stdout


def test_eval_and_denoise_match_independent_references(tmp_path, dataset):
    run, model = train(tmp_path, dataset, "ref", epochs=2)
    rows = {r["slice"]: r for r in csv.DictReader((run / "eval.csv").open())}
    assert sorted(rows) == ["0007", "0008", "0009"]
    sess = ort.InferenceSession(str(model / "model.onnx"), providers=["CPUExecutionProvider"])
    for name, row in rows.items():
        qd_path = dataset / "test" / "qd" / f"{name}.npy"
        fd = np.load(dataset / "test" / "fd" / f"{name}.npy")
        out = tmp_path / f"{name}-den.npy"
        run_bin("ldct-train", "denoise", "--run", run, "--input", qd_path, "--out", out)
        den = np.load(out)
        # scikit-image PSNR at [-1000, 1000] (clipped, data range 2000).
        clip = lambda a: np.clip(a.astype(np.float64), -1000, 1000)
        ref = peak_signal_noise_ratio(clip(fd), clip(den), data_range=2000)
        assert float(row["model_psnr_-1000_1000"]) == pytest.approx(ref, abs=1e-3)
        inp = peak_signal_noise_ratio(clip(fd), clip(np.load(qd_path)), data_range=2000)
        assert float(row["input_psnr_-1000_1000"]) == pytest.approx(inp, abs=1e-3)
        # onnxruntime on the exported model (32x32 is a multiple of 4: no padding).
        x = (np.clip(np.load(qd_path), -1000, 1000) / 1000.0).astype(np.float32)[None, None]
        (y,) = sess.run(["output"], {"input": x})
        assert np.abs(y[0, 0] * 1000.0 - den).max() < 0.05  # HU
