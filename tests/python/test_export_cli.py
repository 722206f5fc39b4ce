"""`ldct-export --run RUN --out DIR` on a run folder written here by hand (arch.json +
weights.safetensors, no Rust involved), checked against independent references:
onnx.checker (full check), onnxruntime, and a NumPy forward of the same graph.
"""

import json
import struct

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from conftest import run_bin

RNG = np.random.default_rng(7)


def conv(x, w, b, pad):
    """NCHW cross-correlation, stride 1, zero padding `pad` (float64)."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, c, h, wd = x.shape
    o, _, k, _ = w.shape
    oh, ow = h - k + 1, wd - k + 1
    y = np.zeros((n, o, oh, ow))
    for dy in range(k):
        for dx in range(k):
            patch = x[:, :, dy : dy + oh, dx : dx + ow]
            y += np.einsum("nchw,oc->nohw", patch, w[:, :, dy, dx])
    return y + b[None, :, None, None]


def numpy_forward(x, p):
    x = x.astype(np.float64)
    h = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    h = conv(h, p["conv1.weight"], p["conv1.bias"], 0)
    mean = h.mean(axis=(2, 3), keepdims=True)
    var = h.var(axis=(2, 3), keepdims=True)
    h = (h - mean) / np.sqrt(var + 1e-5)
    h = h * p["norm.weight"][None, :, None, None] + p["norm.bias"][None, :, None, None]
    h = np.maximum(h, 0)
    h = conv(h, p["conv2.weight"], p["conv2.bias"], 1)
    return x + np.tanh(h)


ARCH = {
    "schema_version": 1,
    "name": "pytest_tiny",
    "preset": {"kind": "custom"},
    "input_channels": 1,
    "output_channels": 1,
    "nodes": [
        {"name": "pad", "op": {"type": "reflection_pad2d", "pad": 1}, "inputs": ["input"]},
        {
            "name": "conv1",
            "op": {"type": "conv2d", "in_channels": 1, "out_channels": 3, "kernel": 3,
                   "stride": 1, "padding": 0, "dilation": 1, "bias": True},
            "inputs": ["pad"],
        },
        {"name": "norm", "op": {"type": "instance_norm", "channels": 3, "eps": 1e-5,
                                "affine": True}, "inputs": ["conv1"]},
        {"name": "relu", "op": {"type": "relu"}, "inputs": ["norm"]},
        {
            "name": "conv2",
            "op": {"type": "conv2d", "in_channels": 3, "out_channels": 1, "kernel": 3,
                   "stride": 1, "padding": 1, "dilation": 1, "bias": True},
            "inputs": ["relu"],
        },
        {"name": "tanh", "op": {"type": "tanh"}, "inputs": ["conv2"]},
        {"name": "residual", "op": {"type": "add"}, "inputs": ["input", "tanh"]},
    ],
}


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, a in tensors.items():
        b = np.ascontiguousarray(a, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "arch.json").write_text(json.dumps(ARCH))
    params = {
        "conv1.weight": RNG.normal(0, 0.5, (3, 1, 3, 3)),
        "conv1.bias": RNG.normal(0, 0.1, 3),
        "norm.weight": 1 + RNG.normal(0, 0.2, 3),
        "norm.bias": RNG.normal(0, 0.2, 3),
        "conv2.weight": RNG.normal(0, 0.3, (1, 3, 3, 3)),
        "conv2.bias": RNG.normal(0, 0.1, 1),
    }
    params = {k: v.astype(np.float32) for k, v in params.items()}
    write_safetensors(run / "weights.safetensors", params)
    (run / "train.toml").write_text('method = "cyclegan"\n')
    return run, params


@pytest.mark.parametrize("precision,tol", [("fp32", 1e-4), ("fp16", 1e-2)])
def test_export_matches_numpy_reference(run_dir, tmp_path, precision, tol):
    run, params = run_dir
    out = tmp_path / f"model_{precision}"
    proc = run_bin("ldct-export", "--run", run, "--out", out, "--precision", precision)
    report = json.loads(proc.stdout)
    assert report["parity"]["max_abs_diff"] <= tol

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["name"] == out.name
    assert manifest["method"] == "cyclegan"
    assert manifest["spatial_multiple"] == 1
    assert manifest["onnx"]["precision"] == precision
    assert manifest["onnx"]["opset"] == 17 and manifest["onnx"]["ir_version"] == 10

    model = onnx.load(out / "model.onnx")
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["ldct.manifest"])["name"] == out.name
    inits = {t.name for t in model.graph.initializer}
    assert set(params) <= inits

    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    for shape in [(1, 1, 17, 23), (2, 1, 64, 40)]:
        x = RNG.uniform(-1, 1, shape).astype(np.float32)
        (y,) = sess.run(["output"], {"input": x})
        ref = numpy_forward(x, {k: v.astype(np.float64) for k, v in params.items()})
        assert y.shape == x.shape
        assert np.abs(y - ref).max() <= tol, np.abs(y - ref).max()


def test_bad_precision_is_rejected(run_dir, tmp_path):
    run, _ = run_dir
    proc = run_bin("ldct-export", "--run", run, "--out", tmp_path / "m", "--precision", "int8",
                   check=False)
    assert proc.returncode != 0
    assert "int8" in proc.stderr
