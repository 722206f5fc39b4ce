//! `ldct-train convert`: any CT input to float32 HU `.npy`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use ldct_imaging::{npy, read, CtVolume};

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// Input: .npy, .dcm (single or multi-frame), a DICOM series folder, a folder of
    /// .npy slices, or an InVesalius .inv3 project.
    #[arg(long)]
    pub input: PathBuf,
    /// Output .npy: [H, W] for one slice, [N, H, W] for several.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: ConvertArgs) -> anyhow::Result<()> {
    let slices =
        read::read_ct(&args.input).with_context(|| format!("reading {}", args.input.display()))?;
    if let [one] = slices.as_slice() {
        npy::write_image(&args.out, &one.hu)?;
    } else {
        let volume = CtVolume::from_slices(&slices)?;
        npy::write_volume(&args.out, &volume.hu)?;
    }
    tracing::info!(slices = slices.len(), out = %args.out.display(), "wrote HU");
    Ok(())
}
