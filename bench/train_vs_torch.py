#!/usr/bin/env python3
"""ldct's training step beside PyTorch's, row by row on the same machine in the same
minute: for each step of bench/train_configs.py, `ldct-train bench-step --conv-backend
fast` then the same network and step in PyTorch (bench/pytorch_step.py, same threads),
and the ratio of their median step times (ldct / PyTorch: below 1 is ldct faster).

    make bench-train-vs-torch    # builds ldct-train, makes .venv-torch, runs this
    python3 bench/train_vs_torch.py --bin target/release/ldct-train --torch-python .venv-torch/bin/python

The header names the CPU, its vector extensions, the level ldct's kernels dispatched
to (`LDCT_SIMD` caps it) and PyTorch's CPU capability, and the load average before
and after. `--profile` adds ldct's time by op type per row.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from machine import cpu_flags, cpu_name
from train_configs import CONFIGS, label, ldct_args

HERE = Path(__file__).resolve().parent


def run_json(cmd, env=None):
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed: {out.stderr.strip()[-800:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/ldct-train")
    ap.add_argument("--torch-python", default=".venv-torch/bin/python",
                    help="a Python with torch (scripts/torch_venv.sh makes .venv-torch)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per row (after one warm-up step)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="threads for both (RAYON_NUM_THREADS, torch.set_num_threads)")
    ap.add_argument("--profile", action="store_true", help="ldct's time by op type per row")
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()
    for path, hint in ((args.bin, "cargo build --release -p ldct-train"),
                       (args.torch_python, "scripts/torch_venv.sh")):
        if not os.path.exists(path):
            sys.exit(f"{path} not found: run `{hint}` (or `make bench-train-vs-torch`)")
    env = {**os.environ, "RAYON_NUM_THREADS": str(args.threads)}
    load0 = os.getloadavg()[0]
    rows = []
    header_done = False
    for cfg in CONFIGS:
        ours = run_json([args.bin, *ldct_args(cfg, args.steps, 1, "fast", args.profile)], env)
        method, generator, width, depth, batch, patch = cfg
        theirs = run_json([args.torch_python, str(HERE / "pytorch_step.py"), "--steps", str(args.steps),
                           "--threads", str(args.threads), "--child", method, generator, str(width),
                           str(depth), str(batch), str(patch)])
        if not header_done:
            print(f"# {cpu_name()} ({', '.join(cpu_flags()) or 'no AVX2'}), {os.cpu_count()} logical CPUs; "
                  f"{args.threads} threads each; ldct kernels: {ours['isa']}; torch {theirs['torch']} "
                  f"(CPU capability {theirs['cpu_capability']}); load {load0:.2f} before")
            print(f"{'step':<52} {'ldct s':>8} {'torch s':>8} {'ldct/torch':>10} "
                  f"{'ldct RSS':>9} {'torch RSS':>9}  (median of {args.steps}; RSS MiB)")
            header_done = True
        ratio = ours["s_per_step_median"] / theirs["s_per_step_median"]
        rows.append({"step": label(cfg), "ldct": ours, "torch": theirs, "ratio": ratio})
        print(f"{label(cfg):<52} {ours['s_per_step_median']:>8.3f} {theirs['s_per_step_median']:>8.3f} "
              f"{ratio:>10.2f} {ours['peak_rss_mib']:>9.0f} {theirs['peak_rss_mib']:>9.0f}", flush=True)
        for op, secs in sorted((ours.get("profile") or {}).items(), key=lambda kv: -kv[1]):
            print(f"    {secs * 1000:8.1f} ms  {op}")
    print(f"# load {os.getloadavg()[0]:.2f} after")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
