"""The contracts between the trainer, the exporter and the server (issue 23), end to
end through the real binaries on a small simulated dataset:

- the run folder: a supervised run on a dataset made by `ldct-train dataset import`
  (projection-domain Poisson simulation) exports `dose.noise` of that simulation (not
  the "gaussian" of the config's unused `[noise2score]` section), and the manifest's
  metrics are quality metrics only (no learning rate, no loss);
- the retraining gate refuses `--metric lr` with a clear message;
- the pixel contract: a RED-CNN model (minimum size 21 px, spatial multiple 1) served
  on a 16x16 slice answers 200 with a 16x16 slice, equal to Python onnxruntime on the
  numpy-reflect-padded 21x21 input cropped back (the independent reference); the OIP
  route does the same.
"""

import json

import numpy as np
import onnxruntime as ort
import pytest

from conftest import run_bin
from test_serve_support import Server, npy_bytes, npy_load, outside_window_weight

CONFIG = """
method = "supervised"
seed = 5
[data]
root = "{root}"
patch = 24
batch = 4
val_slices = 1
min_tissue = 0.0
[model]
generator = {{ kind = "redcnn", filters = 4, kernel = 5 }}
[schedule]
epochs = 1
steps_per_epoch = 3
decay_epochs = 0
"""


def phantom_volume(slices=12, n=48):
    """A head-like phantom in HU: a water disc with a bone ring and soft-tissue blobs."""
    y, x = np.mgrid[0:n, 0:n] - (n - 1) / 2
    r = np.hypot(y, x)
    vol = np.full((slices, n, n), -1000.0, np.float32)
    for k in range(slices):
        img = np.where(r < 0.42 * n, 20.0, -1000.0)
        img = np.where((r >= 0.36 * n) & (r < 0.42 * n), 900.0, img)
        img += np.where(np.hypot(y - 4 - k % 3, x + 6) < 5, 60.0, 0.0)
        vol[k] = img
    return vol


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("contracts")
    np.save(tmp / "volume.npy", phantom_volume())
    data = tmp / "data"
    run_bin("ldct-train", "dataset", "import", "--source", "npy", "--input", tmp / "volume.npy",
            "--out", data, "--dose", "0.25", "--seed", "1", "--test-fraction", "0.2", "--gap", "1")
    assert "simulation" in json.loads((data / "dataset.json").read_text())
    cfg = tmp / "redcnn.toml"
    cfg.write_text(CONFIG.format(root=data))
    run = tmp / "run"
    run_bin("ldct-train", "fit", "--config", cfg, "--run", run, "--quiet")
    models = tmp / "models"
    run_bin("ldct-export", "--run", run, "--out", models / "redcnn", "--version", "0.1.0")
    return run, models


def test_a_supervised_run_exports_its_datasets_dose(exported):
    run, models = exported
    manifest = json.loads((models / "redcnn" / "manifest.json").read_text())
    assert manifest["method"] == "supervised"
    dose = manifest["dose"]
    assert dose["noise"].startswith("poisson"), dose
    assert dose["fraction"] == pytest.approx(0.25)
    assert dose["i0"] > 0
    # run.json records it, typed and versioned.
    record = json.loads((run / "run.json").read_text())
    assert record["schema_version"] == 1 and record["dose"] == dose
    # Quality metrics only: the validation of metrics.csv, no learning rate or loss.
    assert "lr" not in manifest["metrics"] and "loss" not in manifest["metrics"], manifest["metrics"]
    assert set(manifest["metrics"]) >= {"val_psnr", "val_ssim"}, manifest["metrics"]
    # The pixel contract's sizes.
    assert manifest["spatial_multiple"] == 1 and manifest["min_size"] == 21


def test_the_gate_refuses_a_training_figure(exported):
    _, models = exported
    proc = run_bin("ldct-export", "gate", "--candidate", models / "redcnn", "--serving",
                   models / "none", "--metric", "lr", check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "not an image-quality metric" in proc.stderr, proc.stderr
    ok = run_bin("ldct-export", "gate", "--candidate", models / "redcnn", "--serving",
                 models / "none", "--metric", "val_psnr", check=False)
    assert ok.returncode == 0, ok.stderr


def reference(onnx_path, hu, min_size=21):
    """The server's pipeline done with numpy and Python onnxruntime."""
    x = (np.clip(hu, -1000, 1000) / 1000.0).astype(np.float32)
    h, w = x.shape
    ph, pw = max(h, min_size), max(w, min_size)
    padded = np.pad(x, ((0, ph - h), (0, pw - w)), mode="reflect")
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (y,) = sess.run(["output"], {"input": padded[None, None]})
    net = y[0, 0, :h, :w].astype(np.float64) * 1000.0
    # Composed with the input outside the window, as the pixel contract does.
    weight = outside_window_weight(hu)
    return hu + weight * (net - hu)


def test_a_redcnn_model_serves_a_slice_smaller_than_its_minimum(exported, tmp_path):
    _, models = exported
    hu = (phantom_volume(1, 16)[0] + np.linspace(-30, 30, 256).reshape(16, 16)).astype(np.float32)
    with Server(models, log=tmp_path / "serve.log") as srv:
        r = srv.request("POST", "/v1/denoise?model=redcnn", body=npy_bytes(hu),
                        headers={"Content-Type": "application/x-npy"})
        assert r.status == 200, r.body[:500]
        out = npy_load(r.body)
        assert out.shape == (16, 16) and out.dtype == np.float32
        np.testing.assert_allclose(out, reference(models / "redcnn" / "model.onnx", hu), atol=1e-2)

        x = (np.clip(hu, -1000, 1000) / 1000.0).astype(np.float32)
        body = json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 16, 16], "datatype": "FP32",
                                       "data": x.ravel().tolist()}]})
        r = srv.request("POST", "/v2/models/redcnn/infer", body=body,
                        headers={"Content-Type": "application/json"})
        assert r.status == 200, r.body[:500]
        v = r.json()
        assert v["outputs"][0]["shape"] == [1, 1, 16, 16]
        y = np.array(v["outputs"][0]["data"], np.float32).reshape(16, 16) * 1000.0
        np.testing.assert_allclose(y, reference(models / "redcnn" / "model.onnx", hu), atol=1e-2)
