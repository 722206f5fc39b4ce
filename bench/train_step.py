#!/usr/bin/env python3
"""Training-step bench: seconds per step and peak RSS of the trainer's standard
configurations, one process each (so each peak is its own).

    make bench-train                     # builds ldct-train in release, runs this
    python3 bench/train_step.py --bin target/release/ldct-train [--backend candle fast]

Configurations: bench/train_configs.py (the CycleGAN and supervised ResNet steps of
issue 4 and the default model's U-Net step). Random patches: no dataset needed.
`--profile` adds each row's seconds per step by op type (`bench-step --profile`).
"""

import argparse
import json
import os
import subprocess
import sys

from machine import cpu_flags, cpu_name
from train_configs import CONFIGS, label, ldct_args


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/ldct-train")
    ap.add_argument("--backend", nargs="+", default=["candle"], help="convolution backends to compare")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--profile", action="store_true", help="print each row's time by op type")
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()
    if not os.path.exists(args.bin):
        sys.exit(f"{args.bin} not found: build it with `cargo build --release -p ldct-train`")
    print(f"# {cpu_name()} ({', '.join(cpu_flags()) or 'no AVX2'}), {os.cpu_count()} logical CPUs, "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"{'step':<52} {'backend':<8} {'isa':<8} {'s/step (median)':>15} {'min':>7} {'peak RSS MiB':>12}")
    rows = []
    for backend in args.backend:
        for cfg in CONFIGS:
            cmd = [args.bin, *ldct_args(cfg, args.steps, args.warmup, backend, args.profile)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{label(cfg)} {backend}: failed: {out.stderr.strip()[-500:]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(r)
            print(f"{label(cfg):<52} {backend:<8} {r['isa']:<8} {r['s_per_step_median']:>15.3f} "
                  f"{r['s_per_step_min']:>7.3f} {r['peak_rss_mib']:>12.0f}", flush=True)
            for op, secs in sorted((r.get("profile") or {}).items(), key=lambda kv: -kv[1]):
                print(f"    {secs * 1000:8.1f} ms  {op}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
