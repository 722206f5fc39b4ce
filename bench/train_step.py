#!/usr/bin/env python3
"""Training-step bench: seconds per step and peak RSS of the trainer's standard
configurations, one process each (so each peak is its own).

    make bench-train                     # builds ldct-train in release, runs this
    python3 bench/train_step.py --bin target/release/ldct-train [--backend candle fast]

Configurations (issue 4): CycleGAN ngf 32 / 6 blocks / batch 4 / 64x64, CycleGAN
ngf 64 / 9 blocks / batch 1 / 128x128, and the supervised step (ngf 32 / 6 blocks /
batch 4 / 64x64). Random patches: no dataset needed.
"""

import argparse
import json
import os
import subprocess
import sys

from machine import cpu_name

CONFIGS = [
    ("cyclegan", 32, 6, 4, 64),
    ("cyclegan", 64, 9, 1, 128),
    ("supervised", 32, 6, 4, 64),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/ldct-train")
    ap.add_argument("--backend", nargs="+", default=["candle"], help="convolution backends to compare")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()
    if not os.path.exists(args.bin):
        sys.exit(f"{args.bin} not found: build it with `cargo build --release -p ldct-train`")
    print(f"# {cpu_name()}, {os.cpu_count()} logical CPUs")
    print(f"{'method':<11} {'ngf':>4} {'blocks':>6} {'batch':>5} {'patch':>5} {'backend':<8} "
          f"{'s/step (median)':>15} {'min':>7} {'peak RSS MiB':>12}")
    rows = []
    for backend in args.backend:
        for method, ngf, blocks, batch, patch in CONFIGS:
            cmd = [args.bin, "bench-step", "--method", method, "--ngf", str(ngf), "--blocks", str(blocks),
                   "--batch", str(batch), "--patch", str(patch), "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--conv-backend", backend]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{method} {ngf}/{blocks} {backend}: failed: {out.stderr.strip()[-500:]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(r)
            print(f"{method:<11} {ngf:>4} {blocks:>6} {batch:>5} {patch:>5} {backend:<8} "
                  f"{r['s_per_step_median']:>15.3f} {r['s_per_step_min']:>7.3f} {r['peak_rss_mib']:>12.0f}",
                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
