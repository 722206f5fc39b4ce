//! Convolution backends side by side: `candle` (Candle's ops) and `fast`
//! (`ldct_train::nn::conv_cpu`).
//!
//! ```sh
//! cargo bench -p ldct-train --bench conv                 # everything below
//! cargo bench -p ldct-train --bench conv -- layers       # per-layer forward / backward
//! cargo bench -p ldct-train --bench conv -- layers --layer block --split --reps 9
//! cargo bench -p ldct-train --bench conv -- unet-layers --backend fast --split
//! cargo bench -p ldct-train --bench conv -- g512         # 512x512 generator forward
//! cargo bench -p ldct-train --bench conv -- wgrad        # weight gradient per 3x3 shape
//! cargo bench -p ldct-train --bench conv -- step --backend fast   # one backend per process,
//! cargo bench -p ldct-train --bench conv -- step --backend candle # for its peak RSS
//! ```
//!
//! `layers`: every convolution shape of a CycleGAN step (resnet generator ngf 32,
//! 6 blocks; PatchGAN ndf 64, 3 layers; batch 4, 64x64), f32, best of `--reps`
//! runs (default 5) after a warm-up, best rather than median as the machine may
//! be shared. The backward is `(y · r).sum().backward()` for the gradients a
//! training step needs (no input gradient for a first layer), less the same
//! loss's backward on a plain variable (autograd's own share); `--split` adds
//! the input-only and weights-only backward; `--layer S` keeps layers whose name
//! contains S.
//! `unet-layers`: the same for every convolution shape of the default model's
//! U-Net step (base 24, depth 4, noise-map input, batch 8 of 96x96).
//! `g512`: inference of the resnet generator ngf 64, 9 blocks on one 512x512
//! slice (`--reps`, default 2). `step`: two generators and two discriminators
//! through a CycleGAN-shaped generator step and discriminator step (forward and
//! backward, no optimiser), then the process's peak RSS. `wgrad`: the weight
//! gradient alone of the 3x3 stride-1 shapes of the bench steps (median of
//! `--reps`, default 15); run it with `CANDLE_NUM_THREADS=1
//! MALLOC_MMAP_THRESHOLD_=33554432` to match `ldct-train`'s settings (without them
//! fresh pages for every buffer dominate).

use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor, Var};
use ldct_proto::arch::{Arch, PatchganConfig, Preset, ResnetConfig};
use ldct_train::model::{Init, Network};
use ldct_train::nn::ConvBackend;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

fn randn(shape: &[usize], seed: u64) -> Result<Tensor> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// Best seconds of `reps` runs after one warm-up (the minimum: robust to other
/// load on the machine).
fn time(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let start = Instant::now();
        f()?;
        t.push(start.elapsed().as_secs_f64());
    }
    Ok(t.into_iter().fold(f64::INFINITY, f64::min))
}

#[derive(Clone, Copy)]
struct Layer {
    name: &'static str,
    transposed: bool,
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    padding: usize,
    output_padding: usize,
    /// Input size (after any reflection padding).
    size: usize,
    /// The input needs a gradient (not a network's first layer).
    input_grad: bool,
    /// Times the layer runs per generator or discriminator pass.
    count: usize,
}

#[allow(clippy::too_many_arguments)]
const fn conv(
    name: &'static str,
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    padding: usize,
    size: usize,
    input_grad: bool,
    count: usize,
) -> Layer {
    Layer {
        name,
        transposed: false,
        c_in,
        c_out,
        k,
        stride,
        padding,
        output_padding: 0,
        size,
        input_grad,
        count,
    }
}

const fn tconv(name: &'static str, c_in: usize, c_out: usize, size: usize) -> Layer {
    Layer {
        name,
        transposed: true,
        c_in,
        c_out,
        k: 3,
        stride: 2,
        padding: 1,
        output_padding: 1,
        size,
        input_grad: true,
        count: 1,
    }
}

/// The CycleGAN step's convolutions: generator ngf 32, 6 blocks; PatchGAN ndf
/// 64, 3 layers; 64x64 inputs.
const LAYERS: &[Layer] = &[
    conv("G stem 7x7 1->32", 1, 32, 7, 1, 0, 70, false, 1),
    conv("G down1 3x3/2 32->64", 32, 64, 3, 2, 1, 64, true, 1),
    conv("G down2 3x3/2 64->128", 64, 128, 3, 2, 1, 32, true, 1),
    conv("G block 3x3 128->128", 128, 128, 3, 1, 0, 18, true, 12),
    tconv("G up1 T3x3/2 128->64", 128, 64, 16),
    tconv("G up2 T3x3/2 64->32", 64, 32, 32),
    conv("G head 7x7 32->1", 32, 1, 7, 1, 0, 70, true, 1),
    conv("D l0 4x4/2 1->64", 1, 64, 4, 2, 1, 64, true, 1),
    conv("D l1 4x4/2 64->128", 64, 128, 4, 2, 1, 32, true, 1),
    conv("D l2 4x4/2 128->256", 128, 256, 4, 2, 1, 16, true, 1),
    conv("D l3 4x4 256->512", 256, 512, 4, 1, 1, 8, true, 1),
    conv("D head 4x4 512->1", 512, 1, 4, 1, 1, 7, true, 1),
];

const BATCH: usize = 4;

/// The default model's U-Net step (configs/default.toml: base 24, depth 4, a
/// noise-map channel, batch 8 of 96x96): encoder level l at 96 / 2^l pixels
/// with 24·2^l channels, a stride-2 down convolution into each level, a
/// transposed up convolution out of each and two 3x3 convolutions per level on
/// each side (the decoder's first on the concatenated skip).
const UNET_LAYERS: &[Layer] = &[
    conv("U enc0.conv1 2->24", 2, 24, 3, 1, 1, 96, false, 1),
    conv("U 3x3 24->24 @96", 24, 24, 3, 1, 1, 96, true, 2),
    conv("U dec1.conv1 48->24 @96", 48, 24, 3, 1, 1, 96, true, 1),
    conv("U down 3x3/2 24->48", 24, 48, 3, 2, 1, 96, true, 1),
    conv("U 3x3 48->48 @48", 48, 48, 3, 1, 1, 48, true, 2),
    conv("U dec2.conv1 96->48 @48", 96, 48, 3, 1, 1, 48, true, 1),
    conv("U down 3x3/2 48->96", 48, 96, 3, 2, 1, 48, true, 1),
    conv("U 3x3 96->96 @24", 96, 96, 3, 1, 1, 24, true, 2),
    conv("U dec3.conv1 192->96 @24", 192, 96, 3, 1, 1, 24, true, 1),
    conv("U down 3x3/2 96->192", 96, 192, 3, 2, 1, 24, true, 1),
    conv("U 3x3 192->192 @12", 192, 192, 3, 1, 1, 12, true, 2),
    conv("U dec4.conv1 384->192 @12", 384, 192, 3, 1, 1, 12, true, 1),
    conv("U down 3x3/2 192->384", 192, 384, 3, 2, 1, 12, true, 1),
    conv("U 3x3 384->384 @6", 384, 384, 3, 1, 1, 6, true, 1),
    tconv("U up T3x3/2 384->192", 384, 192, 6),
    tconv("U up T3x3/2 192->96", 192, 96, 12),
    tconv("U up T3x3/2 96->48", 96, 48, 24),
    tconv("U up T3x3/2 48->24", 48, 24, 48),
    conv("U head 1x1 24->1", 24, 1, 1, 1, 0, 96, true, 1),
];

const UNET_BATCH: usize = 8;

impl Layer {
    fn run(&self, backend: ConvBackend, x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        if self.transposed {
            backend.conv_transpose2d(
                x,
                w,
                Some(b),
                self.stride,
                self.padding,
                self.output_padding,
            )
        } else {
            backend.conv2d(x, w, Some(b), self.stride, self.padding, 1)
        }
    }

    /// Forward seconds, and backward seconds net of autograd's own work on the
    /// loss `(y · r).sum()` (the backward of the same loss on a variable of y's
    /// shape, measured alongside and subtracted). With `split`, also the net
    /// backward with only the input, and with only the weights, tracked.
    fn bench(
        &self,
        backend: ConvBackend,
        batch: usize,
        reps: usize,
        split: bool,
    ) -> Result<(f64, f64)> {
        let x = randn(&[batch, self.c_in, self.size, self.size], 1)?;
        let wshape = if self.transposed {
            [self.c_in, self.c_out, self.k, self.k]
        } else {
            [self.c_out, self.c_in, self.k, self.k]
        };
        let w = Var::from_tensor(&(randn(&wshape, 2)? * 0.05)?)?;
        let b = Var::from_tensor(&randn(&[self.c_out], 3)?)?;
        let y = self.run(backend, &x, &w, &b)?;
        let r = randn(y.dims(), 4)?;
        let v = Var::from_tensor(&y)?;
        let base_loss = (v.as_tensor() * &r)?.sum_all()?;
        let baseline = time(reps, || base_loss.backward().map(drop))?;
        let net_backward = |x: &Tensor, w: &Tensor, b: &Tensor| -> Result<f64> {
            let loss = (self.run(backend, x, w, b)? * &r)?.sum_all()?;
            Ok((time(reps, || loss.backward().map(drop))? - baseline).max(0.0))
        };
        let fwd = time(reps, || self.run(backend, &x, &w, &b).map(drop))?;
        let xv = Var::from_tensor(&x)?;
        let tracked_x = if self.input_grad { xv.as_tensor() } else { &x };
        let bwd = net_backward(tracked_x, &w, &b)?;
        if split {
            let dw = net_backward(&x, &w, &b)?;
            let (wd, bd) = (w.as_tensor().detach(), b.as_tensor().detach());
            let dx = net_backward(xv.as_tensor(), &wd, &bd)?;
            println!(
                "  {:<24} {backend:>6}: input gradient only {:.2} ms, weight and bias only {:.2} ms",
                self.name,
                dx * 1e3,
                dw * 1e3
            );
        }
        Ok((fwd, bwd))
    }
}

fn ms(s: f64) -> String {
    format!("{:9.2}", s * 1e3)
}

fn layers(
    set: &[Layer],
    batch: usize,
    backends: &[ConvBackend],
    reps: usize,
    filter: Option<&str>,
    split: bool,
) -> Result<()> {
    println!(
        "per layer, batch {batch}, f32, best of {reps} (ms); bwd net of the loss's own backward; \
         x N = times per network pass"
    );
    let mut header = format!("{:<26} {:>4}", "layer", "N");
    for b in backends {
        header += &format!(" {:>9} {:>9}", format!("{b} fwd"), format!("{b} bwd"));
    }
    if backends.len() == 2 {
        header += &format!(" {:>8} {:>8}", "fwd x", "bwd x");
    }
    println!("{header}");
    let mut totals = vec![(0.0, 0.0); backends.len()];
    for layer in set
        .iter()
        .filter(|l| filter.is_none_or(|f| l.name.contains(f)))
    {
        let mut line = format!("{:<26} {:>4}", layer.name, layer.count);
        let mut res = Vec::new();
        for (i, b) in backends.iter().enumerate() {
            let (f, w) = layer.bench(*b, batch, reps, split)?;
            totals[i].0 += f * layer.count as f64;
            totals[i].1 += w * layer.count as f64;
            line += &format!(" {} {}", ms(f), ms(w));
            res.push((f, w));
        }
        if res.len() == 2 {
            line += &format!(" {:8.2} {:8.2}", res[0].0 / res[1].0, res[0].1 / res[1].1);
        }
        println!("{line}");
    }
    let mut line = format!("{:<26} {:>4}", "total (x N)", "");
    for t in &totals {
        line += &format!(" {} {}", ms(t.0), ms(t.1));
    }
    if totals.len() == 2 {
        line += &format!(
            " {:8.2} {:8.2}",
            totals[0].0 / totals[1].0,
            totals[0].1 / totals[1].1
        );
    }
    println!("{line}");
    Ok(())
}

fn resnet(ngf: usize, n_blocks: usize) -> Arch {
    Arch::from_preset(&Preset::Resnet(ResnetConfig {
        ngf,
        n_blocks,
        ..Default::default()
    }))
    .expect("a valid preset")
}

fn patchgan(ndf: usize) -> Arch {
    Arch::from_preset(&Preset::Patchgan(PatchganConfig {
        ndf,
        ..Default::default()
    }))
    .expect("a valid preset")
}

fn network(arch: Arch, seed: u64, backend: ConvBackend) -> Network {
    let net =
        Network::new(arch, &Device::Cpu, DType::F32, Init::default(), seed).expect("a network");
    net.randomise_for_testing(seed).expect("random weights");
    net.with_backend(backend)
}

fn g512(backends: &[ConvBackend], reps: usize) -> Result<()> {
    let x = randn(&[1, 1, 512, 512], 5)?;
    let x = (x * 0.3)?.clamp(-1f32, 1f32)?;
    println!("resnet ngf 64, 9 blocks, one 512x512 slice, inference, best of {reps}");
    let mut outs = Vec::new();
    for &b in backends {
        let net = network(resnet(64, 9), 1, b);
        let mut y = None;
        let t = time(reps, || {
            y = Some(
                net.forward_any_size(&x)
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))?,
            );
            Ok(())
        })?;
        println!("  {b:<7} {:8.3} s", t);
        outs.extend(y);
    }
    if outs.len() == 2 {
        let d = (&outs[0] - &outs[1])?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        println!("  max |candle - fast| = {d:.2e}");
    }
    Ok(())
}

/// A CycleGAN-shaped step without the optimiser: the generator step (both
/// generators, cycle and identity terms, frozen discriminators) and the
/// discriminator step, each with its backward.
fn step(backend: ConvBackend, reps: usize) -> Result<()> {
    let g_a = network(resnet(32, 6), 1, backend);
    let g_b = network(resnet(32, 6), 2, backend);
    let d_a = network(patchgan(64), 3, backend);
    let d_b = network(patchgan(64), 4, backend);
    let real_a = (randn(&[BATCH, 1, 64, 64], 6)? * 0.3)?;
    let real_b = (randn(&[BATCH, 1, 64, 64], 7)? * 0.3)?;
    let mut frozen = (d_a.clone(), d_b.clone());
    frozen.0.set_frozen(true);
    frozen.1.set_frozen(true);
    let t = time(reps, || {
        // Generator step.
        let fake_b = g_a.forward(&real_a)?;
        let rec_a = g_b.forward(&fake_b)?;
        let fake_a = g_b.forward(&real_b)?;
        let rec_b = g_a.forward(&fake_a)?;
        let idt_a = g_a.forward(&real_b)?;
        let idt_b = g_b.forward(&real_a)?;
        let adv = (frozen.0.forward(&fake_b)?.sqr()?.mean_all()?
            + frozen.1.forward(&fake_a)?.sqr()?.mean_all()?)?;
        let cycle =
            ((rec_a - &real_a)?.abs()?.mean_all()? + (rec_b - &real_b)?.abs()?.mean_all()?)?;
        let idt =
            ((idt_a - &real_b)?.abs()?.mean_all()? + (idt_b - &real_a)?.abs()?.mean_all()?)?;
        let loss = ((adv + (cycle * 10.0)?)? + (idt * 5.0)?)?;
        loss.backward()?;
        // Discriminator step.
        let (fake_a, fake_b) = (fake_a.detach(), fake_b.detach());
        let d = ((d_a.forward(&real_b)? - 1.0)?.sqr()?.mean_all()?
            + d_a.forward(&fake_b)?.sqr()?.mean_all()?
            + (d_b.forward(&real_a)? - 1.0)?.sqr()?.mean_all()?
            + d_b.forward(&fake_a)?.sqr()?.mean_all()?)?;
        d.backward()?;
        Ok(())
    })?;
    println!(
        "CycleGAN-shaped step (G ngf 32 x6 blocks, D ndf 64, batch {BATCH}, 64x64), {backend}: \
         {t:.3} s (best of {reps}), peak RSS {}",
        peak_rss()
    );
    Ok(())
}

/// The process's peak resident set (Linux `VmHWM`).
fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l["VmHWM:".len()..].trim().to_string())
        })
        .unwrap_or_else(|| "n/a".into())
}

/// The weight gradient alone (the input not tracked) of the 3x3 stride-1 shapes
/// of the bench steps, `fast` backend, median of `reps` after a warm-up:
/// (batch, channels in and out, output side).
fn wgrad(reps: usize) -> Result<()> {
    const SHAPES: &[(usize, usize, usize)] = &[
        (4, 128, 16),
        (1, 256, 32),
        (8, 24, 96),
        (8, 48, 48),
        (8, 96, 24),
        (8, 192, 12),
        (8, 384, 6),
        (4, 64, 32),
        (1, 64, 128),
    ];
    for &(n, c, size) in SHAPES {
        let x = randn(&[n, c, size + 2, size + 2], 1)?;
        let w = Var::from_tensor(&(randn(&[c, c, 3, 3], 2)? * 0.05)?)?;
        let r = randn(&[n, c, size, size], 3)?;
        let mut t = Vec::with_capacity(reps);
        for rep in 0..=reps {
            let start = Instant::now();
            let y = ConvBackend::Fast.conv2d(&x, w.as_tensor(), None, 1, 0, 1)?;
            let grads = (y * &r)?.sum_all()?.backward()?;
            std::hint::black_box(grads.get(w.as_tensor()));
            if rep > 0 {
                t.push(start.elapsed().as_secs_f64());
            }
        }
        // Less the forward alone.
        let mut f = Vec::with_capacity(reps);
        for _ in 0..reps {
            let start = Instant::now();
            let y = ConvBackend::Fast.conv2d(&x, w.as_tensor(), None, 1, 0, 1)?;
            std::hint::black_box(&y);
            f.push(start.elapsed().as_secs_f64());
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (all, fwd) = (median(t), median(f));
        println!(
            "weight grad {n} x {c}->{c} {size}x{size}: {:.3} ms (forward + backward {:.3}, forward {:.3})",
            (all - fwd) * 1e3,
            all * 1e3,
            fwd * 1e3
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let mut what = Vec::new();
    let mut backends = ConvBackend::ALL.to_vec();
    let mut reps = None;
    let mut filter = None;
    let mut split = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--backend" => {
                let b = args.next().unwrap_or_default();
                backends = vec![b.parse().map_err(candle_core::Error::Msg)?];
            }
            "--reps" => {
                reps = args.next().and_then(|r| r.parse().ok());
            }
            "--layer" => filter = args.next(),
            "--split" => split = true,
            // cargo bench passes --bench to every bench binary.
            s if s.starts_with("--") => {}
            s => what.push(s.to_string()),
        }
    }
    if what.is_empty() {
        what = vec!["layers".into(), "g512".into(), "step".into()];
    }
    println!("rayon threads: {}", rayon::current_num_threads());
    for w in &what {
        match w.as_str() {
            "layers" => layers(
                LAYERS,
                BATCH,
                &backends,
                reps.unwrap_or(5),
                filter.as_deref(),
                split,
            )?,
            "unet-layers" => layers(
                UNET_LAYERS,
                UNET_BATCH,
                &backends,
                reps.unwrap_or(5),
                filter.as_deref(),
                split,
            )?,
            "g512" => g512(&backends, reps.unwrap_or(2))?,
            "wgrad" => wgrad(reps.unwrap_or(15))?,
            "step" => {
                for &b in &backends {
                    step(b, reps.unwrap_or(3))?;
                }
                if backends.len() > 1 {
                    println!(
                        "(peak RSS is the process's: run one --backend per process to compare)"
                    );
                }
            }
            other => {
                return Err(candle_core::Error::Msg(format!(
                    "unknown bench `{other}` (layers, unet-layers, g512, step, wgrad)"
                )))
            }
        }
    }
    Ok(())
}
