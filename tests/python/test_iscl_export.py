"""An ISCL run's model through the exporter, checked with Python onnxruntime:

    ldct-train fit (method iscl) -> ldct-export -> ldct-export check

The run's model is one graph computing 0.5 * F(y) + 0.5 * (y - H(y)). Independent
references: onnx.checker; onnxruntime on the exported model against (a) Candle's
`ldct-train denoise` on the same slice, and (b) the formula evaluated by
onnxruntime from F and H exported on their own from the run's checkpoint.
"""

import json

import numpy as np
import onnx
import onnxruntime as ort

from conftest import run_bin, write_phantom_dataset

CONFIG = """
method = "iscl"
seed = 4
[data]
root = "{root}"
patch = 16
batch = 4
val_slices = 2
min_tissue = 0.0
[model]
generator = {{ kind = "resnet", ngf = 4, n_blocks = 1 }}
discriminator = {{ kind = "patchgan", ndf = 4, n_layers = 1, norm = "none" }}
init = {{ kind = "kaiming" }}
[optim]
lr = 0.003
beta1 = 0.9
[iscl]
gamma = 0.5
[schedule]
epochs = 2
steps_per_epoch = 5
decay_epochs = 1
"""


def dataset(root):
    write_phantom_dataset(root, seed=5, slices=6, train=4)


def session(model_dir):
    return ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])


def infer(sess, x):
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_iscl_run_exports_with_parity(tmp_path):
    data = tmp_path / "data"
    dataset(data)
    cfg = tmp_path / "iscl.toml"
    cfg.write_text(CONFIG.format(root=data))
    run = tmp_path / "run"
    run_bin("ldct-train", "fit", "--config", cfg, "--run", run, "--quiet")

    model = tmp_path / "model"
    out = run_bin("ldct-export", "--run", run, "--out", model, "--name", "iscl")
    report = json.loads(out.stdout)
    assert report["parity"]["max_abs_diff"] <= 1e-4, report
    run_bin("ldct-export", "check", "--model", model)
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["method"] == "iscl"

    proto = onnx.load(str(model / "model.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    inits = [i.name for i in proto.graph.initializer]
    assert any(n.startswith("f.") for n in inits), inits
    assert any(n.startswith("h.") for n in inits), inits

    # (a) onnxruntime vs Candle's `denoise` on a whole test slice (HU in, HU out).
    qd_path = data / "test" / "qd" / "0004.npy"
    qd = np.load(qd_path)
    out_npy = tmp_path / "denoised.npy"
    run_bin("ldct-train", "denoise", "--run", run, "--input", qd_path, "--out", out_npy)
    candle_hu = np.load(out_npy)
    x = ((np.clip(qd, -1000, 1000) + 1000) / 2000 * 2 - 1).astype(np.float32)[None, None]
    y = infer(session(model), x)[0, 0]
    ort_hu = (y + 1) / 2 * 2000 - 1000  # denoise converts back without clipping
    assert np.abs(ort_hu - candle_hu).max() < 0.5, np.abs(ort_hu - candle_hu).max()

    # (b) the composed graph equals 0.5 * F(y) + 0.5 * (y - H(y)) from F and H
    # exported on their own (the checkpoint's sub-folders are model folders).
    parts = {}
    for name in ("f_low2full", "h_noise"):
        part_run = tmp_path / f"{name}-run"
        part_run.mkdir()
        for f in ("arch.json", "weights.safetensors"):
            (part_run / f).write_bytes((run / "checkpoint" / name / f).read_bytes())
        (part_run / "train.toml").write_text((run / "train.toml").read_text())
        part_model = tmp_path / f"{name}-model"
        run_bin("ldct-export", "--run", part_run, "--out", part_model, "--name", name.replace("_", "-"))
        parts[name] = session(part_model)
    rng = np.random.default_rng(1)
    x = rng.normal(0, 0.5, (2, 1, 24, 20)).astype(np.float32)
    want = 0.5 * infer(parts["f_low2full"], x) + 0.5 * (x - infer(parts["h_noise"], x))
    got = infer(session(model), x)
    assert np.abs(got - want).max() < 1e-5, np.abs(got - want).max()
    # And it is neither part alone.
    assert np.abs(got - infer(parts["f_low2full"], x)).max() > 1e-4
