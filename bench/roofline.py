#!/usr/bin/env python3
"""A model's FLOPs against this machine's measured peak.

    make bench-roofline
    .venv/bin/python bench/roofline.py [--model models/default] [--size 512] [--repeat 10]

1. Peak: the best float32 GEMM rate numpy (its bundled OpenBLAS) reaches here, at
   one thread and at every thread (2048x2048 matrices, best of --repeat) — a
   measured ceiling for convolution arithmetic on this CPU, not the datasheet's.
2. Work: the model's multiply-adds at SIZE x SIZE, counted from model.onnx itself
   (onnx shape inference; Conv and ConvTranspose: output elements x in-channels /
   group x kernel area; element-wise ops ignored). FLOPs = 2 x MACs.
3. Achieved: Python onnxruntime running model.onnx on one SIZE x SIZE slice (batch
   1, GraphOptimizationLevel ALL, CPU), best and median of --repeat, at one intra-op
   thread and at every thread.

4. Baseline: the same for --baseline (default: bench/baseline/default-v1.0.0.onnx, the
   default model before the multi-anatomy one: a U-Net base 16, depth 3, instance
   norm), measured in the same run, and the ratio of the two ONNX Runtime times: the
   serving budget of the default model is at most 2x the baseline's time per slice.

Prints a table and one JSON line. Independent of the Rust code: only the ONNX file
is shared.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from machine import cpu_flags, cpu_name

GEMM_CHILD = r"""
import sys, time, numpy as np
n, repeat = int(sys.argv[1]), int(sys.argv[2])
a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
a @ b
best = float("inf")
for _ in range(repeat):
    t0 = time.perf_counter()
    a @ b
    best = min(best, time.perf_counter() - t0)
print(2.0 * n ** 3 / best / 1e9)
"""


def gemm_gflops(threads, n, repeat):
    """Best float32 GEMM GFLOP/s in a child process pinned to `threads` BLAS threads
    (the thread count must be set before numpy loads its BLAS)."""
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    out = subprocess.run([sys.executable, "-c", GEMM_CHILD, str(n), str(repeat)],
                         env=env, check=True, capture_output=True, text=True)
    return float(out.stdout.strip())


def conv_macs(model_path, size):
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(model_path))
    inp = model.graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    # Fix the batch to 1 and H, W to `size`, then infer every shape.
    channels = dims[1].dim_value or 1
    for d, value in zip(dims, (1, channels, size, size)):
        d.ClearField("dim_param")
        d.dim_value = value
    model = shape_inference.infer_shapes(model, strict_mode=True)
    shapes = {}
    for vi in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input):
        shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    inits = {t.name: list(t.dims) for t in model.graph.initializer}
    macs = 0
    convs = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose"):
            continue
        convs += 1
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        w = inits.get(node.input[1]) or shapes.get(node.input[1])
        if w is None:
            sys.exit(f"{node.name}: weight shape unknown")
        if node.op_type == "Conv":
            out = shapes[node.output[0]]
            # weight [out, in/group, kh, kw]: every output element needs in/group*kh*kw MACs.
            macs += int(np.prod(out)) * w[1] * w[2] * w[3]
        else:
            inp_shape = shapes[node.input[0]]
            # weight [in, out/group, kh, kw]: every input element scatters into
            # out/group*kh*kw outputs.
            macs += int(np.prod(inp_shape)) * w[1] * w[2] * w[3]
    return macs, convs


def ort_seconds(model_path, size, threads, repeat):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    name = inp.name
    channels = inp.shape[1] if isinstance(inp.shape[1], int) else 1
    x = np.random.default_rng(0).uniform(-1, 0.2, (1, 1, size, size)).astype(np.float32)
    if channels == 2:
        # A noise-conditioned model: the noise map plane (20 HU, normalised).
        x = np.concatenate([x, np.full_like(x, 0.02)], axis=1)
    sess.run(None, {name: x})
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        times.append(time.perf_counter() - t0)
    return min(times), float(np.median(times))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/default", help="model folder (model.onnx) or .onnx file")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--gemm-n", type=int, default=2048)
    ap.add_argument("--baseline", default=str(Path(__file__).resolve().parent / "baseline" / "default-v1.0.0.onnx"),
                    help="ONNX file timed beside the model ('' for none)")
    args = ap.parse_args()

    path = Path(args.model)
    if path.is_dir():
        path = path / "model.onnx"
    if not path.exists():
        sys.exit(f"{path}: no such ONNX file")
    cores = os.cpu_count() or 1
    print(f"# {cpu_name()} ({', '.join(cpu_flags()) or 'no AVX2/FMA flags'}), {cores} logical CPUs")

    macs, convs = conv_macs(path, args.size)
    gflop = 2 * macs / 1e9
    print(f"model {path}: {convs} conv layers, {macs / 1e9:.3f} GMAC = {gflop:.3f} GFLOP per {args.size}x{args.size} slice")

    rows = []
    for threads in sorted({1, cores}):
        peak = gemm_gflops(threads, args.gemm_n, max(3, args.repeat // 2))
        best, median = ort_seconds(path, args.size, threads, args.repeat)
        rows.append({
            "threads": threads,
            "gemm_peak_gflops": round(peak, 2),
            "ort_best_s": round(best, 4),
            "ort_median_s": round(median, 4),
            "achieved_gflops": round(gflop / best, 2),
            "fraction_of_peak": round(gflop / best / peak, 3),
        })
    print(f"{'threads':>7} {'GEMM peak GFLOP/s':>17} {'ORT best s':>10} {'median s':>9} {'achieved GFLOP/s':>16} {'of peak':>7}")
    for r in rows:
        print(f"{r['threads']:>7} {r['gemm_peak_gflops']:>17.1f} {r['ort_best_s']:>10.4f} {r['ort_median_s']:>9.4f} "
              f"{r['achieved_gflops']:>16.1f} {100 * r['fraction_of_peak']:>6.1f}%")
    baseline = None
    if args.baseline:
        bpath = Path(args.baseline)
        bmacs, _ = conv_macs(bpath, args.size)
        print(f"baseline {bpath}: {bmacs / 1e9:.3f} GMAC per slice")
        baseline = {"model": str(bpath), "gmac": round(bmacs / 1e9, 4), "rows": []}
        print(f"{'threads':>7} {'model best s':>12} {'baseline best s':>15} {'model / baseline':>16}")
        for threads in sorted({1, cores}):
            # Interleaved, best of both: the same minute for both models.
            m = b = float("inf")
            for _ in range(2):
                m = min(m, ort_seconds(path, args.size, threads, args.repeat)[0])
                b = min(b, ort_seconds(bpath, args.size, threads, args.repeat)[0])
            baseline["rows"].append({"threads": threads, "model_best_s": round(m, 4),
                                     "baseline_best_s": round(b, 4), "ratio": round(m / b, 3)})
            print(f"{threads:>7} {m:>12.4f} {b:>15.4f} {m / b:>16.2f}")
    print(json.dumps({"cpu": cpu_name(), "model": str(path), "size": args.size, "gmac": round(macs / 1e9, 4),
                      "gflop": round(gflop, 4), "rows": rows, "baseline": baseline}))


if __name__ == "__main__":
    main()
