"""The training steps the step benches time, shared by bench/train_step.py (ldct),
bench/pytorch_step.py (PyTorch) and bench/train_vs_torch.py (both, one after the
other per row).

(method, generator, width, blocks or depth, batch, patch):
- CycleGAN ngf 32 / 6 blocks / batch 4 / 64x64 and ngf 64 / 9 blocks / batch 1 /
  128x128, and the supervised ResNet step (issue 4's set);
- the default model's U-Net step (configs/default.toml: base 24, depth 4, no
  normalisation, noise-map channel, batch 8 of 96x96).
"""

CONFIGS = [
    ("cyclegan", "resnet", 32, 6, 4, 64),
    ("cyclegan", "resnet", 64, 9, 1, 128),
    ("supervised", "resnet", 32, 6, 4, 64),
    ("supervised", "unet", 24, 4, 8, 96),
]


def ldct_args(cfg, steps, warmup, backend="fast", profile=False):
    """`ldct-train bench-step` arguments for one row."""
    method, generator, width, depth, batch, patch = cfg
    args = ["bench-step", "--method", method, "--generator", generator, "--ngf", str(width),
            "--batch", str(batch), "--patch", str(patch), "--steps", str(steps),
            "--warmup", str(warmup), "--conv-backend", backend]
    if generator == "unet":
        args += ["--depth", str(depth), "--noise-map"]
    else:
        args += ["--blocks", str(depth)]
    if profile:
        args.append("--profile")
    return args


def label(cfg):
    method, generator, width, depth, batch, patch = cfg
    shape = f"depth {depth}" if generator == "unet" else f"{depth} blocks"
    return f"{method} {generator} {width} / {shape} / batch {batch} / {patch}x{patch}"
