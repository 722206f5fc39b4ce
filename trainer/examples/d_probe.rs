//! Diagnostic: can a PatchGAN tell quarter-dose from full-dose patches?
//! Trains one discriminator alone (LSGAN, full = 1, low = 0) on unpaired patches
//! with a choice of input view ([`ldct_train::train::disc_view`]) and prints the
//! loss and the patch accuracy every 50 steps. Needs `make data`.
//!
//!     cargo run --release --example d_probe -- image|highpass STEPS LR NDF N_LAYERS BATCH PATCH
//!     cargo run --release --example d_probe -- highpass 300 2e-4 32 3 2 64

use std::path::Path;

use candle_core::{DType, Tensor};
use ldct_proto::arch::{Arch, Norm, PatchganConfig, Preset};
use ldct_train::model::{default_device, Init, Network};
use ldct_train::nn::ConvBackend;
use ldct_train::train::adam::Adam;
use ldct_train::train::data::{normaliser, Sampler, SliceSet};
use ldct_train::train::disc_view::DiscView;
use ldct_train::train::method::{lsgan, named_trainable, scalar};

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let v = match a[1].as_str() {
        "image" => DiscView::Image,
        "highpass" => DiscView::Highpass,
        other => anyhow::bail!("view must be image or highpass, not {other}"),
    };
    let steps: u64 = a[2].parse()?;
    let lr: f64 = a[3].parse()?;
    let ndf: usize = a[4].parse()?;
    let n_layers: usize = a[5].parse()?;
    let batch: usize = a[6].parse()?;
    let patch: usize = a[7].parse()?;
    let norm = normaliser([-1000.0, 1000.0])?;
    let mut set = SliceSet::from_aapm(
        Path::new("data/invesalius-quarter"),
        ldct_imaging::aapm::Split::Train,
        &norm,
    )?;
    set.paired = false;
    let sampler = Sampler::new(patch, batch, true, 0.5, &norm, 7);
    let dev = default_device();
    let preset = Preset::Patchgan(PatchganConfig {
        ndf,
        n_layers,
        norm: Norm::None,
    });
    let d = Network::new(
        Arch::from_preset(&preset)?,
        &dev,
        DType::F32,
        Init::Kaiming,
        3,
    )?
    .with_backend(ConvBackend::Fast);
    let mut opt = Adam::new(named_trainable("d", &d), 0.5, 0.999, 1e-8)?;
    let (mut acc_l, mut acc_a, mut n) = (0.0, 0.0, 0.0);
    for s in 0..steps {
        let b = sampler.batch(&set, s)?;
        let shape = (b.batch, 1, b.patch, b.patch);
        let low = v.apply(&Tensor::from_vec(b.low, shape, &dev)?, 10.0)?;
        let full = v.apply(&Tensor::from_vec(b.full, shape, &dev)?, 10.0)?;
        let sf = d.forward(&full)?;
        let sl = d.forward(&low)?;
        let loss = ((lsgan(&sf, 1.0)? + lsgan(&sl, 0.0)?)? * 0.5)?;
        let acc = ((sf.gt(0.5)?.to_dtype(DType::F32)?.mean_all()?
            + sl.lt(0.5)?.to_dtype(DType::F32)?.mean_all()?)?
            * 0.5)?;
        let g = loss.backward()?;
        opt.step(&g, lr)?;
        acc_l += scalar(&loss)?;
        acc_a += scalar(&acc)?;
        n += 1.0;
        if (s + 1) % 50 == 0 {
            println!(
                "{v:?} step {:4} loss {:.4} acc {:.3}",
                s + 1,
                acc_l / n,
                acc_a / n
            );
            (acc_l, acc_a, n) = (0.0, 0.0, 0.0);
        }
    }
    Ok(())
}
