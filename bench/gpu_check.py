#!/usr/bin/env python3
"""GPU readiness check: ldct-serve with `--device cuda` on a model and Candle `cuda`
training steps, each beside the same work on this machine's CPU.

    make gpu-check            # builds both binaries, installs onnxruntime-gpu, runs this
    python3 bench/gpu_check.py --serve-bin target/release/ldct-serve \\
        --train-bin target/cuda/release/ldct-train --ort-lib DIR/libonnxruntime.so.1.31.1

Needs an NVIDIA GPU and driver, an ONNX Runtime library with the CUDA execution
provider (onnxruntime-gpu's, with libonnxruntime_providers_cuda.so beside it), the
CUDA 13 libraries both load (cuBLAS, cuBLASLt, cuRAND, cudart, NVRTC, cuFFT, cuDNN 9:
from the system or from the nvidia-* wheels of this Python, found and put on
LD_LIBRARY_PATH for the children) and an ldct-train built with `--features cuda`.

Prints the GPU and CPU lines, then:
- bench/serve.py on each device: start to ready, the first request after ready,
  single-request p50/p99 and throughput at concurrency 1, 4 and 16 (512x512 .npy);
- `ldct-train bench-step` for bench/train_configs.py's steps on each device: seconds
  per step (median of --steps after --warmup).
A stage that fails is reported with its error and the others still run; the exit
status is non-zero when any failed.
"""

import argparse
import glob
import http.client
import io
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_flags, cpu_name  # noqa: E402
from train_configs import CONFIGS, label, ldct_args  # noqa: E402

import serve as serve_bench_mod  # noqa: E402  (bench/serve.py: its slice, ports, readiness)

ROOT = Path(__file__).resolve().parents[1]
CUDA_LIBS = ["libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10",
             "libnvrtc.so.13", "libcufft.so.12", "libcudnn.so.9"]


def gpu_line():
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    out = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def wheel_lib_dirs():
    """Library folders of the nvidia-* wheels installed in this Python (torch's or
    onnxruntime-gpu's CUDA libraries), as onnxruntime's own preload looks for them."""
    dirs = []
    for key in ("purelib", "platlib"):
        base = sysconfig.get_paths().get(key)
        if base:
            dirs += glob.glob(os.path.join(base, "nvidia", "*", "lib"))
            dirs += glob.glob(os.path.join(base, "nvidia", "*", "*", "lib"))
    return sorted({d for d in dirs if glob.glob(os.path.join(d, "lib*.so*"))})


def find_libs(dirs):
    """Where each CUDA library was found (None: only the system's loader may know)."""
    found = {}
    for lib in CUDA_LIBS:
        found[lib] = next((d for d in dirs if os.path.exists(os.path.join(d, lib))), None)
    return found


def run_json(cmd, env, timeout):
    """Runs `cmd`; returns (last stdout line parsed as JSON, None) or (None, error)."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout} s"
    if out.returncode != 0:
        return None, (out.stderr.strip() or out.stdout.strip())[-1500:]
    try:
        return json.loads(out.stdout.strip().splitlines()[-1]), None
    except (ValueError, IndexError):
        return None, f"no JSON line in the output: {out.stdout[-500:]!r}"


def serve_bench(args, device, env, tmp, extra=""):
    """bench/serve.py on `device` (`extra`: more server flags); its JSON figures."""
    tag = device + (" " + extra if extra else "")
    path = os.path.join(tmp, f"serve-{len(os.listdir(tmp))}.json")
    threads = args.threads or os.cpu_count() or 1
    cmd = [sys.executable, str(ROOT / "bench" / "serve.py"), "--bin", args.serve_bin, "--model", args.model,
           "--device", device, "--threads", str(threads), "--max-batch", str(args.max_batch),
           "--requests", str(args.requests), "--json", path] + (["--server-args", extra] if extra else [])
    t = time.time()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {args.timeout} s"
    print(f"## bench/serve.py --device {tag} ({time.time() - t:.0f} s)")
    print(out.stdout.rstrip())
    if out.returncode != 0:
        return None, out.stderr.strip()[-2000:]
    return json.loads(Path(path).read_text()), None


def denoise_once(args, device, env, body):
    """One /v1/denoise answer (float32 HU) from a server started with `--device`."""
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="ldct-gpu-check-") as tmp:
        models = Path(tmp) / "models"
        models.mkdir()
        (models / Path(args.model).resolve().name).symlink_to(Path(args.model).resolve())
        log = Path(tmp) / "serve.log"
        port = serve_bench_mod.free_port()
        proc = subprocess.Popen([args.serve_bin, "--models", str(models), "--bind", f"127.0.0.1:{port}",
                                 "--device", device, "--warmup-sizes", "none"],
                                stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env)
        try:
            serve_bench_mod.wait_ready(proc, port, log, 300)
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            c.request("POST", "/v1/denoise", body=body,
                      headers={"Content-Type": "application/x-npy", "Accept": "application/x-npy"})
            r = c.getresponse()
            data = r.read()
            if r.status != 200:
                raise RuntimeError(f"--device {device}: HTTP {r.status}: {data[:300]!r}")
            return np.load(io.BytesIO(data)).astype(np.float64)
        finally:
            serve_bench_mod.stop(proc)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve-bin", default=str(ROOT / "target" / "release" / "ldct-serve"))
    ap.add_argument("--train-bin", default=str(ROOT / "target" / "cuda" / "release" / "ldct-train"),
                    help="an ldct-train built with --features cuda")
    ap.add_argument("--ort-lib", default=os.environ.get("ORT_DYLIB_PATH"),
                    help="onnxruntime-gpu's libonnxruntime.so (default: $ORT_DYLIB_PATH)")
    ap.add_argument("--model", default=str(ROOT / "models" / "default"))
    ap.add_argument("--devices", nargs="+", default=["cuda", "cpu"], choices=["cuda", "cpu"])
    ap.add_argument("--cuda-libs", nargs="*", default=[], help="more folders holding the CUDA libraries")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--skip", nargs="*", default=[], choices=["serve", "compare", "train"])
    ap.add_argument("--cuda-variants", nargs="*", default=["--cudnn-conv-algo-search exhaustive"],
                    help="more server flag sets to bench on CUDA beside the defaults")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per stage")
    ap.add_argument("--json", help="also write every figure to this file")
    args = ap.parse_args()

    gpu = gpu_line()
    print(f"# CPU: {cpu_name()} ({', '.join(cpu_flags()) or 'no AVX2'}), {os.cpu_count()} logical CPUs, "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"# GPU: {gpu or 'none (nvidia-smi not found or no device)'}")
    if "cuda" in args.devices and not gpu:
        sys.exit("gpu-check: no NVIDIA GPU here (nvidia-smi finds none); `--devices cpu` runs the CPU half")
    stages = [s for s in ("serve", "compare", "train") if s not in args.skip]
    for stage, name, path in (("serve", "--serve-bin", args.serve_bin), ("train", "--train-bin", args.train_bin)):
        if stage in stages and not os.path.exists(path):
            sys.exit(f"gpu-check: {name} {path} not found (make gpu-check builds it)")
    env = dict(os.environ)
    if "serve" in stages or "compare" in stages:
        if not args.ort_lib or not os.path.exists(args.ort_lib):
            sys.exit("gpu-check: --ort-lib (or ORT_DYLIB_PATH) must name onnxruntime-gpu's libonnxruntime.so")
        ort_dir = os.path.dirname(os.path.abspath(args.ort_lib))
        if "cuda" in args.devices and not os.path.exists(os.path.join(ort_dir, "libonnxruntime_providers_cuda.so")):
            sys.exit(f"gpu-check: {ort_dir} has no libonnxruntime_providers_cuda.so: not a CUDA build of ONNX Runtime")
        env["ORT_DYLIB_PATH"] = os.path.abspath(args.ort_lib)

    lib_dirs = args.cuda_libs + wheel_lib_dirs()
    found = find_libs(lib_dirs)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(lib_dirs + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p])
    env.setdefault("RUST_LOG", "warn")
    print("# CUDA libraries: " + ", ".join(f"{k} {'in ' + v if v else 'from the system loader'}"
                                           for k, v in found.items()))
    if "serve" in stages or "compare" in stages:
        print(f"# ONNX Runtime: {args.ort_lib}")
    print()

    failed = []
    figures = {"cpu": cpu_name(), "gpu": gpu, "serve": {}, "train": []}
    with tempfile.TemporaryDirectory(prefix="ldct-gpu-check-") as tmp:
        if "serve" in stages:
            runs = [(d, "") for d in args.devices]
            if "cuda" in args.devices:
                runs[1:1] = [("cuda", v) for v in args.cuda_variants]
            for device, extra in runs:
                tag = device + (" " + extra if extra else "")
                res, err = serve_bench(args, device, env, tmp, extra)
                if err:
                    failed.append(f"serve --device {tag}")
                    print(f"serve --device {tag}: FAILED\n{err}\n")
                else:
                    figures["serve"][tag] = res
                print()
        if "compare" in stages and set(args.devices) == {"cuda", "cpu"}:
            # The same slice through both devices: the CUDA answer must be the CPU's
            # within float32 and cuDNN's algorithm differences (TF32 included).
            import numpy as np

            hu, source = serve_bench_mod.slice_512()
            body = serve_bench_mod.npy(hu)
            try:
                out = {d: denoise_once(args, d, env, body) for d in ("cuda", "cpu")}
                diff = np.abs(out["cuda"] - out["cpu"])
                changed = np.abs(out["cpu"] - hu)
                figures["compare"] = {"max_abs_hu": float(diff.max()), "mean_abs_hu": float(diff.mean()),
                                      "p999_abs_hu": float(np.percentile(diff, 99.9)),
                                      "cpu_mean_change_hu": float(changed.mean()), "source": source}
                print(f"## /v1/denoise on one 512x512 slice ({source}), CUDA against CPU: "
                      f"max |diff| {diff.max():.3f} HU, 99.9th percentile {np.percentile(diff, 99.9):.3f} HU, "
                      f"mean {diff.mean():.4f} HU (the denoiser changes pixels by {changed.mean():.1f} HU on average)")
            except Exception as e:  # noqa: BLE001 (reported, the other stages run)
                failed.append("compare")
                print(f"compare: FAILED: {e}")
            print()
        if "train" in stages:
            print(f"## ldct-train bench-step ({args.steps} steps after {args.warmup} warm-up, median s/step)")
            print(f"{'step':<52}" + "".join(f"{d:>10}" for d in args.devices) + (
                f"{'cpu/cuda':>10}" if set(args.devices) == {"cuda", "cpu"} else ""))
            for cfg in CONFIGS:
                row = {"step": label(cfg)}
                for device in args.devices:
                    # The fast CPU kernels on the CPU; Candle's own ops on CUDA.
                    backend = "fast" if device == "cpu" else "candle"
                    cmd = [args.train_bin, *ldct_args(cfg, args.steps, args.warmup, backend), "--device", device]
                    r, err = run_json(cmd, env, args.timeout)
                    if err:
                        failed.append(f"bench-step {label(cfg)} --device {device}")
                        print(f"{label(cfg)} --device {device}: FAILED: {err}")
                        continue
                    row[device] = r
                cells = "".join(f"{row[d]['s_per_step_median']:>10.4f}" if d in row else f"{'failed':>10}"
                                for d in args.devices)
                if "cuda" in row and "cpu" in row:
                    cells += f"{row['cpu']['s_per_step_median'] / row['cuda']['s_per_step_median']:>9.1f}x"
                print(f"{label(cfg):<52}{cells}", flush=True)
                figures["train"].append(row)
            print()

    serve = figures["serve"]
    if serve:
        print("## summary: ldct-serve, 512x512 slices")
        print(f"{'device':<42}{'ready s':>9}{'first ms':>10}{'p50 ms':>9}{'p99 ms':>9}"
              f"{'c1 sl/s':>9}{'c4 sl/s':>9}{'c16 sl/s':>10}{'c16 p99':>9}")
        for device, r in serve.items():
            s = r["server"]
            print(f"{device:<42}{s['start_to_ready_s']:>9.1f}{s['first_request_ms']:>10.1f}"
                  f"{s['single']['p50_ms']:>9.1f}{s['single']['p99_ms']:>9.1f}"
                  f"{s['c1']['slices_per_s']:>9.1f}{s['c4']['slices_per_s']:>9.1f}"
                  f"{s['c16']['slices_per_s']:>10.1f}{s['c16']['p99_ms']:>9.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    if failed:
        print("gpu-check: FAILED: " + "; ".join(failed))
        return 1
    print("gpu-check: all stages ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
