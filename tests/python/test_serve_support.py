"""Helpers for the ldct-serve integration tests (no tests here).

- `write_tiny_model`: a tiny real model folder (model.onnx written with the PyPI `onnx`
  package + manifest.json): y = x + tanh(mean3x3(x) - x), repeated `depth` times.
- `Server`: starts the real `ldct-serve` binary on 127.0.0.1 with a free port, waits
  until it is live, and stops it with SIGTERM (checking the graceful exit).
- `reference_hu`: the server's pipeline done independently with Python onnxruntime
  (and the pixel contract's composition with the input outside the window):
  HU -> clip to the window, scale to [-1, 1] -> numpy reflect pad to the spatial
  multiple -> run -> crop -> HU.
"""

import datetime
import hashlib
import http.client
import json
import os
import signal
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from conftest import ROOT, ldct_bin

WINDOW = (-1000.0, 1000.0)
RANGE = (-1.0, 1.0)


def tiny_model_bytes(depth: int = 1) -> bytes:
    io = ["N", 1, "H", "W"]
    nodes, inits = [], [
        numpy_helper.from_array(np.full((1, 1, 3, 3), 1.0 / 9.0, np.float32), "w"),
        numpy_helper.from_array(np.zeros(1, np.float32), "b"),
    ]
    x = "input"
    for i in range(depth):
        out = "output" if i == depth - 1 else f"y{i}"
        nodes += [
            helper.make_node("Conv", [x, "w", "b"], [f"s{i}"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            helper.make_node("Sub", [f"s{i}", x], [f"d{i}"]),
            helper.make_node("Tanh", [f"d{i}"], [f"t{i}"]),
            helper.make_node("Add", [x, f"t{i}"], [out]),
        ]
        x = out
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, io)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, io)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="ldct-test")
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def write_tiny_model(folder: Path, name="tiny", version="0.1.0", multiple=4, depth=1, onnx_bytes=None):
    folder.mkdir(parents=True, exist_ok=True)
    data = tiny_model_bytes(depth) if onnx_bytes is None else onnx_bytes
    (folder / "model.onnx").write_bytes(data)
    manifest = {
        "schema_version": 1,
        "name": name,
        "version": version,
        "created": datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc).isoformat(),
        "method": "supervised",
        "arch": {"preset": "test", "parameters": 10, "description": f"3x3 mean + tanh residual x{depth}"},
        "training_data": {"description": "none (test model)", "slices": 0},
        "normalisation": {"hu_window": list(WINDOW), "range": list(RANGE)},
        "dose": {},
        "spatial_multiple": multiple,
        "metrics": {},
        "onnx": {
            "file": "model.onnx",
            "sha256": hashlib.sha256(data).hexdigest(),
            "opset": 17,
            "ir_version": 10,
            "precision": "fp32",
        },
        "producer": {"name": "ldct-test", "version": "0"},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder / "model.onnx"


def session(model_path, threads=1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])


def normalise(hu):
    lo, hi = WINDOW
    return ((np.clip(hu, lo, hi) - lo) / (hi - lo) * (RANGE[1] - RANGE[0]) + RANGE[0]).astype(np.float32)


def denormalise(x):
    lo, hi = WINDOW
    return (x.astype(np.float64) - RANGE[0]) / (RANGE[1] - RANGE[0]) * (hi - lo) + lo


def outside_window_weight(hu, window=None):
    """The pixel contract's weight of the network's output at input value `hu`
    (DESIGN.md, proto::contract::OutsideWindow::for_window), written out again here:
    0 at or below lo - 500, smoothstep up to 1 at lo - 300, 1 up to hi - 200, smoothstep
    down to 0 at hi, 0 above."""
    lo, hi = window or WINDOW
    hu = np.asarray(hu, dtype=np.float64)

    def smooth(t):
        t = np.clip(t, 0.0, 1.0)
        return t * t * (3 - 2 * t)

    ramp = min(200.0, 0.5 * (hi - lo))
    w = np.ones_like(hu)
    below = hu < lo - 300
    w[below] = smooth((hu[below] - (lo - 500)) / 200.0)
    above = hu > hi - ramp
    w[above] = smooth((hi - hu[above]) / ramp)
    return w


def reference_hu(sess, hu, multiple=4, strength=1.0):
    hu = np.asarray(hu, dtype=np.float64)
    x = normalise(hu)
    h, w = x.shape
    xp = np.pad(x, ((0, -h % multiple), (0, -w % multiple)), mode="reflect")
    (y,) = sess.run(["output"], {"input": xp[None, None]})
    net = denormalise(y[0, 0, :h, :w])
    weight = strength * outside_window_weight(hu)
    return hu + weight * (net - hu)


def npy_bytes(arr) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def npy_load(data: bytes):
    import io

    return np.load(io.BytesIO(data), allow_pickle=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Response:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)

    def header(self, name):
        return self.headers.get(name.lower())


def self_signed_cert(folder: Path):
    """A certificate and key for 127.0.0.1 made by the openssl command: (cert, key)."""
    openssl = shutil.which("openssl")
    assert openssl, "the openssl command is needed to make a test certificate"
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


class Server:
    """The real binary on 127.0.0.1:<free port>; use as a context manager."""

    def __init__(self, models: Path, *args, log: Path = None, ca_cert: Path = None):
        """`ca_cert`: the server runs with --tls-cert (in `args`); requests go over
        HTTPS trusting this certificate. `models=None`: no --models flag (the caller's
        `args` or environment give it); the log then goes to `log`."""
        self.models, self.args = models, [str(a) for a in args]
        self.port = free_port()
        self.log_path = log or (models.parent / f"ldct-serve-{self.port}.log")
        self.env = {}
        self.ca_cert = ca_cert
        self.proc = None

    @property
    def base(self):
        return f"{'https' if self.ca_cert else 'http'}://127.0.0.1:{self.port}"

    def start(self):
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        env.update(self.env)
        self.log = open(self.log_path, "wb")
        models = [] if self.models is None else ["--models", str(self.models)]
        self.proc = subprocess.Popen(
            [str(ldct_bin("ldct-serve")), *models, "--bind",
             f"127.0.0.1:{self.port}", "--device", "cpu", *self.args],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
        )
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ldct-serve exited {self.proc.returncode}:\n{self.text_log()}")
            try:
                if self.request("GET", "/v2/health/live", timeout=2).status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"ldct-serve did not become live:\n{self.text_log()}")

    def text_log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def request(self, method, path, body=None, headers=None, timeout=60):
        if self.ca_cert:
            ctx = ssl.create_default_context(cafile=str(self.ca_cert))
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout, context=ctx)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        finally:
            conn.close()

    def stop(self, timeout=60):
        """SIGTERM, then the exit status (0 for a graceful stop)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"ldct-serve did not stop within {timeout}s:\n{self.text_log()}")
        finally:
            self.log.close()

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def metric_samples(text: str):
    """Samples of the exposition text, parsed by prometheus_client: a list of
    (name, labels dict, value)."""
    from prometheus_client.parser import text_string_to_metric_families

    return [
        (s.name, dict(s.labels), s.value)
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    ]


def metric_sum(text: str, metric: str, **labels) -> float:
    return sum(v for n, l, v in metric_samples(text) if n == metric and all(l.get(k) == w for k, w in labels.items()))
