#!/usr/bin/env python3
"""Benchmark ldct-serve on 512x512 slices against Python onnxruntime running the same
model directly with the same thread count.

    make bench-serve                       # builds the release binary, runs this
    python bench/serve.py --bin target/release/ldct-serve [--model DIR] [--threads N]

Without --model, a stand-in CNN (RED-CNN-like: 3x3 convs, 16 channels, 8 layers,
global residual; fixed random weights) is written to a temporary model folder; with
--model, that folder (model.onnx + manifest.json) is served and run.

Reports, for /v1/denoise with .npy float32 HU bodies (1 MiB each, keep-alive
connections, client on the same machine):
  - start to ready (model load, smoke test and the warmup of --warmup-sizes) and the
    first request after ready, against the steady-state p50; the same first request
    on a second server started with `--warmup-sizes none` (the cold start the warmup
    removes), unless --no-cold
  - single-request latency (sequential): mean, p50, p99
  - throughput at concurrency 1, 4 and 16: slices/s, p50, p99 latency
and for onnxruntime in-process (normalised input, batch 1 and batched like the
server): latency p50/p99 and slices/s. The ratios are the server's overhead
(HTTP, .npy coding, normalisation, padding, queueing).
"""

import argparse
import hashlib
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def standin_model(path: Path, channels=16, layers=8, seed=0):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    io_shape = ["N", 1, "H", "W"]
    nodes, inits, x = [], [], "input"
    for i in range(layers):
        cin = 1 if i == 0 else channels
        cout = 1 if i == layers - 1 else channels
        w = rng.normal(0, np.sqrt(2.0 / (9 * cin)), (cout, cin, 3, 3)).astype(np.float32)
        if i == layers - 1:
            w *= 0.05
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(cout, np.float32), f"b{i}")]
        out = f"c{i}"
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [out], kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        if i < layers - 1:
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"]))
            out = f"r{i}"
        x = out
    nodes.append(helper.make_node("Add", ["input", x], ["output"]))
    graph = helper.make_graph(
        nodes, "standin",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, io_shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, io_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="ldct-bench")
    model.ir_version = 10
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.onnx").write_bytes(data)
    manifest = {
        "schema_version": 1, "name": "bench", "version": "0.0.0", "created": "2026-01-01T00:00:00Z",
        "method": "supervised",
        "arch": {"preset": "bench", "parameters": int(sum(np.prod(numpy_helper.to_array(t).shape) for t in inits)),
                 "description": f"stand-in CNN {layers} x conv3x3 {channels} ch + residual"},
        "training_data": {"description": "none (random weights)", "slices": 0},
        "normalisation": {"hu_window": [-1000.0, 1000.0], "range": [-1.0, 1.0]},
        "dose": {}, "spatial_multiple": 4, "metrics": {},
        "onnx": {"file": "model.onnx", "sha256": hashlib.sha256(data).hexdigest(), "opset": 17,
                 "ir_version": 10, "precision": "fp32"},
        "producer": {"name": "ldct-bench", "version": "0"},
    }
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return path


def slice_512():
    """A real 512x512 CT slice from pydicom-data when installed, else a phantom."""
    try:
        import pydicom
        from pydicom.data import get_testdata_file

        p = get_testdata_file("693_UNCI.dcm", download=False)
        if p:
            ds = pydicom.dcmread(p)
            hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            if hu.shape == (512, 512):
                return hu, "pydicom-data 693_UNCI.dcm"
    except Exception:
        pass
    y, x = np.mgrid[:512, :512]
    hu = np.where((y - 256) ** 2 + (x - 256) ** 2 < 200 ** 2, 40.0, -1000.0)
    hu += np.random.default_rng(0).normal(0, 30, hu.shape)
    return hu.astype(np.float32), "synthetic phantom"


def npy(arr):
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def pct(v, q):
    return float(np.percentile(np.asarray(v) * 1000.0, q))


class Client:
    """One keep-alive connection; reconnects when the server closed an idle one."""

    def __init__(self, port):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)

    def denoise(self, body):
        for attempt in (0, 1):
            t = time.perf_counter()
            try:
                self.conn.request("POST", "/v1/denoise", body=body, headers={"Content-Type": "application/x-npy"})
                r = self.conn.getresponse()
                data = r.read()
            except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
                if attempt:
                    raise
                continue
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}: {data[:200]!r}")
            return time.perf_counter() - t


def run_concurrent(port, body, concurrency, total):
    """Throughput over the whole run (first request sent to last answer) and in steady
    state: the completions after the first `concurrency` and before the last
    `concurrency`, over the time between them (no ramp-up while the first batch forms,
    no tail of a last partial batch), and every request's latency."""
    local = threading.local()
    done = []

    def one(_):
        if not hasattr(local, "c"):
            local.c = Client(port)
        lat = local.c.denoise(body)
        done.append(time.perf_counter())
        return lat

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(concurrency)))  # warm the connections
        done.clear()
        t = time.perf_counter()
        lat = list(pool.map(one, range(total)))
        wall = time.perf_counter() - t
    done.sort()
    a, b = concurrency - 1, total - concurrency - 1
    steady = (b - a) / (done[b] - done[a]) if b > a else total / wall
    return total / wall, steady, lat


def stop(proc):
    """SIGTERM (the server drains and exits), then SIGKILL after 60 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc, port, log_path, timeout_s):
    """Waits until the server at `port` says ready; exits with its log when it stops or
    `timeout_s` passes first."""
    deadline = time.time() + timeout_s
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/v2/health/ready")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            raise SystemExit("ldct-serve did not start:\n" + Path(log_path).read_text()[-4000:])
        time.sleep(0.2)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "ldct-serve"))
    ap.add_argument("--model", help="model folder (model.onnx + manifest.json); default: a stand-in CNN")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="intra-op threads (server and direct)")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--batch-timeout-ms", type=int, default=2)
    ap.add_argument("--requests", type=int, default=48, help="requests per throughput run (x concurrency/4, min this)")
    ap.add_argument("--warmup-sizes", default="512", help="the server's --warmup-sizes (default 512)")
    ap.add_argument("--no-cold", action="store_true", help="skip the second server without warmup")
    ap.add_argument("--cpu-arena", action="store_true", help="start the server with --cpu-arena")
    ap.add_argument("--server-args", default="", help="more ldct-serve flags, space-separated")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="the server's --device; the in-process run uses onnxruntime's matching provider "
                         "(skipped for cuda when this Python's onnxruntime has no CUDA provider)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()

    import onnxruntime as ort

    tmp = tempfile.TemporaryDirectory(prefix="ldct-bench-")
    if args.model:
        model_dir = Path(args.model).resolve()
        models_root = Path(tmp.name) / "models"
        models_root.mkdir()
        (models_root / model_dir.name).symlink_to(model_dir)
    else:
        models_root = Path(tmp.name) / "models"
        model_dir = standin_model(models_root / "bench")
    manifest = json.loads((model_dir / "manifest.json").read_text())
    lo, hi = manifest["normalisation"]["hu_window"]
    rlo, rhi = manifest["normalisation"]["range"]
    hu, source = slice_512()
    body = npy(hu)

    def start(warmup_sizes):
        port = free_port()
        log_path = Path(tmp.name) / f"serve-{port}.log"
        cmd = [args.bin, "--models", str(models_root), "--bind", f"127.0.0.1:{port}", "--device", args.device,
               "--intra-threads", str(args.threads), "--max-batch", str(args.max_batch),
               "--batch-timeout-ms", str(args.batch_timeout_ms), "--queue-capacity", "1024",
               "--warmup-sizes", warmup_sizes] + (["--cpu-arena"] if args.cpu_arena else []) + args.server_args.split()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            wait_ready(proc, port, log_path, 600)
        except BaseException:
            stop(proc)
            raise
        return proc, port, time.perf_counter() - t0

    proc, port, startup_s = start(args.warmup_sizes)
    try:
        client = Client(port)
        first_ms = client.denoise(body) * 1000
        for _ in range(4):
            client.denoise(body)
        single = [client.denoise(body) for _ in range(30)]
        server = {"single": {"mean_ms": float(np.mean(single) * 1000), "p50_ms": pct(single, 50), "p99_ms": pct(single, 99)},
                  "start_to_ready_s": startup_s, "first_request_ms": first_ms, "warmup_sizes": args.warmup_sizes}
        for conc in (1, 4, 16):
            total = max(args.requests, conc * 6)
            tput, steady, lat = run_concurrent(port, body, conc, total)
            server[f"c{conc}"] = {"slices_per_s": tput, "steady_slices_per_s": steady,
                                  "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "requests": total}
    finally:
        stop(proc)
    if not args.no_cold:
        proc, port, cold_startup_s = start("none")
        try:
            server["cold"] = {"start_to_ready_s": cold_startup_s,
                              "first_request_ms": Client(port).denoise(body) * 1000}
        finally:
            stop(proc)

    # The same model in-process, same thread count and device.
    provider = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}[args.device]
    direct = {}
    if provider not in ort.get_available_providers():
        print(f"(this Python's onnxruntime {ort.__version__} has no {provider}: no in-process comparison)")
        sess = None
    else:
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(str(model_dir / "model.onnx"), so, providers=[provider])
    x = ((np.clip(hu, lo, hi) - lo) / (hi - lo) * (rhi - rlo) + rlo).astype(np.float32)[None, None]
    if sess is not None and sess.get_inputs()[0].shape[1] == 2:
        # A noise-conditioned model: a constant noise-map plane (the server computes it
        # per slice; its value does not change the cost).
        x = np.concatenate([x, np.full_like(x, 0.01 * (rhi - rlo))], axis=1)
    for batch in ((1, 4, args.max_batch) if sess is not None else ()):
        xb = np.repeat(x, batch, axis=0)
        for _ in range(3):
            sess.run(["output"], {"input": xb})
        lat = []
        for _ in range(max(6, 30 // batch)):
            t = time.perf_counter()
            sess.run(["output"], {"input": xb})
            lat.append(time.perf_counter() - t)
        direct[f"b{batch}"] = {"slices_per_s": batch / float(np.mean(lat)), "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99)}

    d1 = direct.get("b1")
    best_direct = max((v["slices_per_s"] for v in direct.values()), default=None)
    print(f"ldct-serve bench: 512x512 {source}, model {manifest['name']} {manifest['version']} "
          f"({manifest['arch']['description']}), {args.device.upper()}, {args.threads} intra-op thread(s), "
          f"max batch {args.max_batch}, batch timeout {args.batch_timeout_ms} ms, "
          f"CPU arena {'never shrinks (--cpu-arena)' if args.cpu_arena else 'keeps production batches'}, "
          f"machine {os.cpu_count()} cores")
    print()
    print(f"{'':34}{'slices/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    s = server["single"]
    print(f"{'server single request (seq.)':34}{1000 / s['mean_ms']:>10.1f}{s['p50_ms']:>10.1f}{s['p99_ms']:>10.1f}")
    for conc in (1, 4, 16):
        v = server[f"c{conc}"]
        print(f"{f'server concurrency {conc}':34}{v['slices_per_s']:>10.1f}{v['p50_ms']:>10.1f}{v['p99_ms']:>10.1f}")
    for k, v in direct.items():
        print(f"{f'onnxruntime direct batch {k[1:]}':34}{v['slices_per_s']:>10.1f}{v['p50_ms']:>10.1f}{v['p99_ms']:>10.1f}")
    print()
    p50 = s["p50_ms"]
    print(f"start to ready (--warmup-sizes {args.warmup_sizes}): {server['start_to_ready_s']:.1f} s; "
          f"first request after ready: {server['first_request_ms']:.1f} ms = "
          f"{server['first_request_ms'] / p50:.2f}x the steady-state p50 ({p50:.1f} ms)")
    if "cold" in server:
        c = server["cold"]
        print(f"without warmup (--warmup-sizes none): start to ready {c['start_to_ready_s']:.1f} s; "
              f"first request {c['first_request_ms']:.1f} ms = {c['first_request_ms'] / p50:.2f}x the p50")
    if d1 is None:
        conc_ratios = ()
    else:
        print(f"single-request latency / direct batch-1 latency (p50): {s['p50_ms'] / d1['p50_ms']:.2f}x "
              f"(+{s['p50_ms'] - d1['p50_ms']:.1f} ms of HTTP, .npy coding, pre/post-processing, queueing)")
        conc_ratios = (1, 4, 16)
    for conc in conc_ratios:
        v = server[f"c{conc}"]
        print(f"throughput at concurrency {conc:>2} / best direct throughput: {v['slices_per_s'] / best_direct:.2f} "
              f"whole run ({v['requests']} requests), {v['steady_slices_per_s'] / best_direct:.2f} steady state "
              f"(without the first and last {conc} answers)")
    if args.json:
        Path(args.json).write_text(json.dumps({"server": server, "direct": direct, "threads": args.threads, "device": args.device,
                                               "source": source, "model": manifest["name"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
