//! `ldct-train denoise`: whole-slice inference with a run's generator in Candle
//! (any size: reflection-padded to the network's multiple and cropped back), HU out.

use std::path::PathBuf;

use crate::train::{eval, load_generator};
use anyhow::{bail, Context};
use clap::Args;
use ldct_imaging::{npy, read};
use ndarray::Array3;

#[derive(Debug, Args)]
pub struct DenoiseArgs {
    /// Run folder (arch.json + weights.safetensors, train.toml).
    #[arg(long)]
    pub run: PathBuf,
    /// A slice or series: .npy (HU), a DICOM file or series folder.
    #[arg(long)]
    pub input: PathBuf,
    /// Output .npy (float32 HU): [H, W] for one slice, [N, H, W] for several.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: DenoiseArgs) -> anyhow::Result<()> {
    let (net, norm) = load_generator(&args.run)
        .with_context(|| format!("loading the generator of {}", args.run.display()))?;
    let slices =
        read::read_ct(&args.input).with_context(|| format!("reading {}", args.input.display()))?;
    if slices.is_empty() {
        bail!("{}: no slices", args.input.display());
    }
    let mut outs = Vec::with_capacity(slices.len());
    for s in &slices {
        s.check_finite()?;
        outs.push(eval::denoise_hu(&net, &norm, &s.hu)?);
    }
    if outs.len() == 1 {
        npy::write_image(&args.out, &outs[0])?;
    } else {
        let (h, w) = outs[0].dim();
        if outs.iter().any(|o| o.dim() != (h, w)) {
            bail!("the slices of {} differ in size", args.input.display());
        }
        let mut vol = Array3::<f32>::zeros((outs.len(), h, w));
        for (i, o) in outs.iter().enumerate() {
            vol.index_axis_mut(ndarray::Axis(0), i).assign(o);
        }
        npy::write_volume(&args.out, &vol)?;
    }
    eprintln!("{}: {} slice(s) denoised", args.out.display(), outs.len());
    Ok(())
}
