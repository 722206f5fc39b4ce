#!/usr/bin/env python3
"""PyTorch beside `ldct-train bench-step`: the same networks and steps, to compare
on the same machine (issue 11's reference).

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch numpy
    /tmp/torchvenv/bin/python bench/pytorch_step.py [--steps 3] [--threads N]

PyTorch is not a project dependency (the PyPI wheel is the CUDA build, several GB):
use a separate venv. What runs, matching `ldct-train bench-step` (trainer/src/cli/bench.rs,
trainer/src/train/{cyclegan,supervised}.rs):

- generator: CycleGAN's ResNet (reflection pad 3, conv 7x7 ngf, instance norm, ReLU;
  two stride-2 3x3 downsamplings; n residual blocks; two stride-2 transposed-conv
  upsamplings; reflection pad 3, conv 7x7 -> 1, tanh; + input), convolutions with
  biases, instance norm without affine parameters, N(0, 0.02) init;
- discriminator: the 70x70 PatchGAN, ndf 64, 3 layers, instance norm (not on the
  first layer), LeakyReLU 0.2;
- CycleGAN step: G step (LSGAN + 10 x L1 cycle + 5 x L1 identity, both directions,
  discriminators frozen), Adam 2e-4 (0.5, 0.999); D step on image-pool fakes (pool
  50), Adam; supervised step: L1, Adam;
- unet: the default model's U-Net (configs/default.toml: base 24, depth 4, no
  normalisation, a noise-map input channel; 3x3 convolutions with biases, stride-2
  3x3 downsampling, transposed-conv 3x3 stride-2 upsampling, skip concat, 1x1 head,
  tanh, + the image channel), supervised L1 step, Adam, batch 8 of 96x96;
- inputs: tanh of N(0, 0.3) patches (+ a constant noise-level channel per patch for
  the U-Net); timing: median and best of --steps after one
  warm-up step; peak RSS of the process (one process per configuration);
- g512: the ngf 64 / 9 blocks generator's inference on one 512x512 slice (best of 2).

Prints one line per configuration and a JSON line.
"""

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time

from train_configs import CONFIGS



def child(method, generator, ngf, blocks, batch, patch, steps, threads):
    import torch
    from torch import nn

    torch.manual_seed(0)
    torch.set_num_threads(threads)

    def init(m):
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            nn.init.zeros_(m.bias)

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.body = nn.Sequential(
                nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c), nn.ReLU(True),
                nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c))

        def forward(self, x):
            return x + self.body(x)

    class Resnet(nn.Module):
        def __init__(self, ngf, n_blocks):
            super().__init__()
            layers = [nn.ReflectionPad2d(3), nn.Conv2d(1, ngf, 7), nn.InstanceNorm2d(ngf), nn.ReLU(True)]
            c = ngf
            for _ in range(2):
                layers += [nn.Conv2d(c, 2 * c, 3, 2, 1), nn.InstanceNorm2d(2 * c), nn.ReLU(True)]
                c *= 2
            layers += [Block(c) for _ in range(n_blocks)]
            for _ in range(2):
                layers += [nn.ConvTranspose2d(c, c // 2, 3, 2, 1, 1), nn.InstanceNorm2d(c // 2), nn.ReLU(True)]
                c //= 2
            layers += [nn.ReflectionPad2d(3), nn.Conv2d(c, 1, 7), nn.Tanh()]
            self.net = nn.Sequential(*layers)

        def forward(self, x):
            return x + self.net(x)

    class Unet(nn.Module):
        def __init__(self, base, depth, cin=2):
            super().__init__()
            relu = lambda: nn.ReLU(True)  # noqa: E731
            ch = [base << level for level in range(depth + 1)]
            self.enc = nn.ModuleList([nn.Sequential(
                nn.Conv2d(cin, ch[0], 3, 1, 1), relu(), nn.Conv2d(ch[0], ch[0], 3, 1, 1), relu())])
            for level in range(1, depth + 1):
                self.enc.append(nn.Sequential(
                    nn.Conv2d(ch[level - 1], ch[level], 3, 2, 1), relu(),
                    nn.Conv2d(ch[level], ch[level], 3, 1, 1), relu()))
            self.up = nn.ModuleList()
            self.dec = nn.ModuleList()
            for level in range(depth, 0, -1):
                self.up.append(nn.Sequential(nn.ConvTranspose2d(ch[level], ch[level - 1], 3, 2, 1, 1), relu()))
                self.dec.append(nn.Sequential(
                    nn.Conv2d(2 * ch[level - 1], ch[level - 1], 3, 1, 1), relu(),
                    nn.Conv2d(ch[level - 1], ch[level - 1], 3, 1, 1), relu()))
            self.head = nn.Conv2d(ch[0], 1, 1)

        def forward(self, x):
            skips, h = [], x
            for enc in self.enc:
                h = enc(h)
                skips.append(h)
            skips.pop()
            for up, dec in zip(self.up, self.dec):
                h = dec(torch.cat([up(h), skips.pop()], 1))
            return x[:, :1] + torch.tanh(self.head(h))

    def patchgan(ndf=64, n_layers=3):
        layers = [nn.Conv2d(1, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        c = ndf
        for i in range(1, n_layers + 1):
            out = ndf * min(2 ** i, 8)
            stride = 2 if i < n_layers else 1
            layers += [nn.Conv2d(c, out, 4, stride, 1), nn.InstanceNorm2d(out), nn.LeakyReLU(0.2, True)]
            c = out
        layers += [nn.Conv2d(c, 1, 4, 1, 1)]
        return nn.Sequential(*layers)

    def adam(params):
        return torch.optim.Adam(params, lr=2e-4, betas=(0.5, 0.999))

    class Pool:
        def __init__(self, size=50):
            self.size, self.items = size, []

        def query(self, images):
            out = []
            for img in images.detach():
                img = img.unsqueeze(0)
                if len(self.items) < self.size:
                    self.items.append(img)
                    out.append(img)
                elif random.random() > 0.5:
                    i = random.randrange(self.size)
                    out.append(self.items[i].clone())
                    self.items[i] = img
                else:
                    out.append(img)
            return torch.cat(out, 0)

    shape = (batch, 1, patch, patch)
    low = torch.tanh(torch.randn(shape) * 0.3)
    full = torch.tanh(torch.randn(shape) * 0.3)
    if generator == "unet":
        low = torch.cat([low, (torch.rand(batch, 1, 1, 1) * 0.2).expand(shape)], 1)
    mse, l1 = nn.MSELoss(), nn.L1Loss()

    if method == "cyclegan":
        g, f = Resnet(ngf, blocks), Resnet(ngf, blocks)
        d_full, d_low = patchgan(), patchgan()
        for m in (g, f, d_full, d_low):
            m.apply(init)
        opt_g = adam(list(g.parameters()) + list(f.parameters()))
        opt_d = adam(list(d_full.parameters()) + list(d_low.parameters()))
        pool_full, pool_low = Pool(), Pool()

        def step():
            for d in (d_full, d_low):
                d.requires_grad_(False)
            opt_g.zero_grad(set_to_none=True)
            fake_full, fake_low = g(low), f(full)
            sf, sl = d_full(fake_full), d_low(fake_low)
            adv = mse(sf, torch.ones_like(sf)) + mse(sl, torch.ones_like(sl))
            cycle = l1(f(fake_full), low) + l1(g(fake_low), full)
            idt = l1(g(full), full) + l1(f(low), low)
            (adv + 10 * cycle + 5 * idt).backward()
            opt_g.step()
            for d in (d_full, d_low):
                d.requires_grad_(True)
            opt_d.zero_grad(set_to_none=True)
            pf, pl = pool_full.query(fake_full), pool_low.query(fake_low)
            rf, rl, qf, ql = d_full(full), d_low(low), d_full(pf), d_low(pl)
            loss_d = 0.5 * (mse(rf, torch.ones_like(rf)) + mse(qf, torch.zeros_like(qf))) \
                + 0.5 * (mse(rl, torch.ones_like(rl)) + mse(ql, torch.zeros_like(ql)))
            loss_d.backward()
            opt_d.step()
    else:
        g = Unet(ngf, blocks) if generator == "unet" else Resnet(ngf, blocks)
        g.apply(init)
        opt = adam(g.parameters())

        def step():
            opt.zero_grad(set_to_none=True)
            l1(g(low), full).backward()
            opt.step()

    step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    times.sort()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"method": method, "generator": generator, "ngf": ngf, "blocks": blocks, "batch": batch, "patch": patch,
                      "torch": torch.__version__, "threads": threads,
                      "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                      "s_per_step_median": times[len(times) // 2], "s_per_step_min": times[0],
                      "peak_rss_mib": peak}))


def g512(threads):
    import torch

    from torch import nn

    torch.set_num_threads(threads)

    def block(c):
        return nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c), nn.ReLU(True),
                             nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c))

    class Res(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.b = block(c)

        def forward(self, x):
            return x + self.b(x)

    ngf, c = 64, 64
    layers = [nn.ReflectionPad2d(3), nn.Conv2d(1, ngf, 7), nn.InstanceNorm2d(ngf), nn.ReLU(True)]
    for _ in range(2):
        layers += [nn.Conv2d(c, 2 * c, 3, 2, 1), nn.InstanceNorm2d(2 * c), nn.ReLU(True)]
        c *= 2
    layers += [Res(c) for _ in range(9)]
    for _ in range(2):
        layers += [nn.ConvTranspose2d(c, c // 2, 3, 2, 1, 1), nn.InstanceNorm2d(c // 2), nn.ReLU(True)]
        c //= 2
    layers += [nn.ReflectionPad2d(3), nn.Conv2d(c, 1, 7), nn.Tanh()]
    net = nn.Sequential(*layers).eval()
    x = torch.tanh(torch.randn(1, 1, 512, 512) * 0.3)
    best = float("inf")
    with torch.no_grad():
        net(x)
        for _ in range(2):
            t0 = time.perf_counter()
            y = x + net(x)
            best = min(best, time.perf_counter() - t0)
    del y
    print(json.dumps({"g512_s": best, "threads": threads, "torch": torch.__version__}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: every CPU)")
    ap.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    ap.add_argument("--g512", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    threads = args.threads or os.cpu_count() or 1
    if args.child:
        m, gen, ngf, blocks, batch, patch = args.child
        child(m, gen, int(ngf), int(blocks), int(batch), int(patch), args.steps, threads)
        return
    if args.g512:
        g512(threads)
        return
    rows = []
    print(f"{'method':<11} {'net':<6} {'ngf':>4} {'blocks':>6} {'batch':>5} {'patch':>5} {'s/step (median)':>15} "
          f"{'min':>7} {'peak RSS MiB':>12}")
    for cfg in CONFIGS:
        out = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--threads", str(threads),
                              "--child", *map(str, cfg)], check=True, capture_output=True, text=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(f"{r['method']:<11} {r['generator']:<6} {r['ngf']:>4} {r['blocks']:>6} {r['batch']:>5} {r['patch']:>5} "
              f"{r['s_per_step_median']:>15.3f} {r['s_per_step_min']:>7.3f} {r['peak_rss_mib']:>12.0f}", flush=True)
    out = subprocess.run([sys.executable, __file__, "--threads", str(threads), "--g512"],
                         check=True, capture_output=True, text=True)
    g = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"resnet ngf 64 / 9 blocks, one 512x512 slice, inference: {g['g512_s']:.3f} s (best of 2)")
    print(json.dumps({"torch": rows[0]["torch"], "cpu_capability": rows[0]["cpu_capability"],
                      "threads": threads, "rows": rows, "g512_s": g["g512_s"]}))


if __name__ == "__main__":
    main()
