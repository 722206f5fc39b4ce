"""A noise-conditioned model (U-Net with `noise_map`) end to end: trained for a few
steps on a synthetic paired dataset drawn at noise levels, exported (the manifest says
`noise_map`, the graph takes [N, 2, H, W] and passes onnx.checker), and served: the
server's output equals Python onnxruntime run on the image plus a constant noise-map
plane made from the server's own noise estimate (x-ldct-noise-in-hu), as the pixel
contract states it (estimate x range / window), composed with the input."""

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort

from conftest import phantom, run_bin
from test_serve_support import Server, normalise, denormalise, npy_bytes, npy_load, outside_window_weight

CONFIG = """
method = "supervised"
seed = 5
[data]
root = "{root}"
patch = 32
batch = 4
val_split = ""
min_tissue = 0.0
noise_hu = [5.0, 150.0]
[model]
generator = {{ kind = "unet", base = 4, depth = 2, norm = "none", noise_map = true }}
init = {{ kind = "kaiming" }}
[optim]
lr = 0.003
beta1 = 0.9
[schedule]
epochs = 1
steps_per_epoch = 6
decay_epochs = 0
"""


def big_phantom(rng, n=96):
    return np.kron(phantom(rng, n // 2), np.ones((2, 2), np.float32))


def test_a_noise_conditioned_model_trains_exports_and_serves(tmp_path):
    rng = np.random.default_rng(8)
    root = tmp_path / "data"
    for i in range(4):
        fd = big_phantom(rng)
        qd = (fd + rng.normal(0, 40, fd.shape)).astype(np.float32)
        split = "train" if i < 3 else "test"
        for dose, img in (("fd", fd), ("qd", qd)):
            d = root / split / dose
            d.mkdir(parents=True, exist_ok=True)
            np.save(d / f"{i:04d}.npy", img)
    cfg = tmp_path / "map.toml"
    cfg.write_text(CONFIG.format(root=root))
    run = tmp_path / "run"
    run_bin("ldct-train", "fit", "--config", cfg, "--run", run, "--quiet")
    models = tmp_path / "models"
    run_bin("ldct-export", "--run", run, "--out", models / "map", "--name", "map", "--version", "0.1.0")
    run_bin("ldct-export", "check", "--model", models / "map")
    manifest = json.loads((models / "map" / "manifest.json").read_text())
    assert "estimate_noise_hu" in manifest["noise_map"]["estimator"]
    assert manifest["dose"]["noise_hu"] == [5.0, 150.0]
    graph = onnx.load(models / "map" / "model.onnx")
    onnx.checker.check_model(graph)
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert dims[1].dim_value == 2
    sess = ort.InferenceSession(str(models / "map" / "model.onnx"), providers=["CPUExecutionProvider"])

    hu = (big_phantom(rng) + rng.normal(0, 30, (96, 96))).astype(np.float32)
    hu[:4, :4] = -3024.0  # out-of-field padding passes unchanged
    with Server(models) as server:
        r = server.request("POST", "/v1/denoise?model=map", body=npy_bytes(hu),
                           headers={"Content-Type": "application/x-npy"})
        assert r.status == 200, r.body[:300]
        est = float(r.header("x-ldct-noise-in-hu"))
        out = npy_load(r.body)
    assert 15 < est < 60, est
    x = normalise(hu.astype(np.float64))
    m = np.full_like(x, est * 2.0 / 2000.0)
    (y,) = sess.run(["output"], {"input": np.stack([x, m])[None].astype(np.float32)})
    net = denormalise(y[0, 0])
    want = hu + outside_window_weight(hu) * (net - hu)
    np.testing.assert_allclose(out, want, atol=2e-3)
    np.testing.assert_array_equal(out[:4, :4], hu[:4, :4])
    # The map matters: another value gives another image.
    (y2,) = sess.run(["output"], {"input": np.stack([x, 3 * m])[None].astype(np.float32)})
    assert np.abs(y2 - y).max() > 1e-4
