//! `ldct-train dataset import`: build an AAPM-layout dataset from full-dose CT;
//! `ldct-train dataset gaussian`: the same with synthetic Gaussian noise;
//! `ldct-train dataset build`: several sources, kernels, geometries and noise levels
//! from a recipe.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use ldct_imaging::raw::{Endian, RawDtype};

use super::simulate::SimOptions;
use crate::dataset::multi::{build, BuildOptions, Recipe};
use crate::dataset::{import, make_gaussian, GaussianOptions, ImportOptions, Source};

#[derive(Debug, Subcommand)]
pub enum DatasetCommand {
    /// Read a full-dose source, split it by contiguous slice ranges, simulate the
    /// low-dose partners, write {train,test}/{fd,qd}/NNNN.npy (HU) and dataset.json.
    Import(ImportArgs),
    /// From an AAPM-layout dataset, write one whose qd slices are its fd slices
    /// plus white Gaussian noise of a known sigma in HU (both splits).
    Gaussian(GaussianArgs),
    /// Build a multi-source dataset from a recipe (configs/data/ct-multi.toml): per
    /// source a test, a validation and a training block; per slice a kernel and a
    /// geometry; {train,val}/{fd,qd} at the pool dose and levels/NNhu/test/{fd,qd}
    /// simulated at each test noise level.
    Build(BuildArgs),
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The recipe (TOML): sources with their origin and licence, kernels, geometries,
    /// test levels.
    #[arg(long)]
    pub recipe: PathBuf,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Folder that relative source paths are resolved against when they do not exist
    /// as given (default: the current folder).
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Rebuild even when dataset.json says the dataset is up to date.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct GaussianArgs {
    /// The source dataset ({train,test}/{fd,qd}/*.npy); only its fd slices are read.
    #[arg(long)]
    pub from: PathBuf,
    /// Noise sigma in HU.
    #[arg(long)]
    pub sigma_hu: f64,
    /// Seed of the noise.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Overwrite an existing dataset in --out.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SourceArg {
    /// An InVesalius .inv3 project (default: Debian's invesalius-examples head CT).
    Invesalius,
    /// A DICOM file or series folder.
    Dicom,
    /// A .npy volume or slice, a folder of .npy slices, or an AAPM-layout folder
    /// (copied and converted to HU, split kept).
    Npy,
    /// A NIfTI-1/2 volume (.nii, .nii.gz).
    Nifti,
    /// A NRRD volume (.nrrd, or .nhdr with its data file).
    Nrrd,
    /// A raw volume (needs --shape).
    Raw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DtypeArg {
    I16,
    U16,
    F32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EndianArg {
    Little,
    Big,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Kind of source.
    #[arg(long, value_enum)]
    pub source: SourceArg,
    /// The source path (optional for invesalius).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Raw volume shape: SLICES,ROWS,COLS.
    #[arg(long, value_delimiter = ',')]
    pub shape: Option<Vec<usize>>,
    /// Raw sample type.
    #[arg(long, value_enum, default_value = "i16")]
    pub dtype: DtypeArg,
    /// Raw byte order.
    #[arg(long, value_enum, default_value = "little")]
    pub endian: EndianArg,
    /// Raw header bytes to skip.
    #[arg(long, default_value_t = 0)]
    pub header_bytes: usize,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Fraction of the slices in the test block.
    #[arg(long, default_value_t = 0.2)]
    pub test_fraction: f64,
    /// Slices left out on each side of the test block.
    #[arg(long, default_value_t = 3)]
    pub gap: usize,
    /// Rebuild even when dataset.json says the dataset is up to date.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub sim: SimOptions,
}

pub fn run(cmd: DatasetCommand) -> anyhow::Result<()> {
    match cmd {
        DatasetCommand::Import(args) => run_import(args),
        DatasetCommand::Build(args) => {
            let recipe = Recipe::from_file(&args.recipe)?;
            let summary = build(&BuildOptions {
                recipe,
                base: args.base.unwrap_or_else(|| PathBuf::from(".")),
                out: args.out.clone(),
                force: args.force,
            })?;
            if summary.up_to_date {
                tracing::info!(
                    out = %args.out.display(),
                    "dataset already up to date (same recipe, sources and seed); --force rebuilds"
                );
            } else {
                tracing::info!(
                    out = %args.out.display(),
                    train = summary.train,
                    val = summary.val,
                    test = summary.test,
                    levels = summary.levels,
                    seconds = format!("{:.1}", summary.seconds),
                    "dataset written"
                );
            }
            Ok(())
        }
        DatasetCommand::Gaussian(args) => {
            let summary = make_gaussian(&GaussianOptions {
                from: args.from,
                out: args.out.clone(),
                sigma_hu: args.sigma_hu,
                seed: args.seed,
                force: args.force,
            })?;
            tracing::info!(
                out = %args.out.display(),
                train = summary.train,
                test = summary.test,
                sigma_hu = args.sigma_hu,
                "gaussian dataset written"
            );
            Ok(())
        }
    }
}

fn run_import(args: ImportArgs) -> anyhow::Result<()> {
    let need_input = |what: &str| {
        args.input
            .clone()
            .with_context(|| format!("--source {what} needs --input"))
    };
    let source = match args.source {
        SourceArg::Invesalius => Source::Invesalius(args.input.clone()),
        SourceArg::Dicom => Source::Dicom(need_input("dicom")?),
        SourceArg::Npy => Source::Npy(need_input("npy")?),
        SourceArg::Nifti => Source::Nifti(need_input("nifti")?),
        SourceArg::Nrrd => Source::Nrrd(need_input("nrrd")?),
        SourceArg::Raw => {
            let Some(shape) = args.shape.as_deref() else {
                bail!("--source raw needs --shape SLICES,ROWS,COLS");
            };
            let [s, r, c] = shape else {
                bail!("--shape takes three numbers: SLICES,ROWS,COLS");
            };
            Source::Raw {
                path: need_input("raw")?,
                shape: [*s, *r, *c],
                dtype: match args.dtype {
                    DtypeArg::I16 => RawDtype::I16,
                    DtypeArg::U16 => RawDtype::U16,
                    DtypeArg::F32 => RawDtype::F32,
                },
                endian: match args.endian {
                    EndianArg::Little => Endian::Little,
                    EndianArg::Big => Endian::Big,
                },
                header_bytes: args.header_bytes,
            }
        }
    };
    let opts = ImportOptions {
        source,
        out: args.out.clone(),
        config: args.sim.config()?,
        seed: args.sim.seed,
        pixel_size: args.sim.pixel_size,
        test_fraction: args.test_fraction,
        gap: args.gap,
        preset: args.sim.preset_name(),
        force: args.force,
    };
    let summary = import(&opts)?;
    if summary.up_to_date {
        tracing::info!(
            out = %args.out.display(),
            train = summary.train,
            test = summary.test,
            "dataset already up to date (same source, settings and seed); --force rebuilds"
        );
    } else {
        tracing::info!(
            out = %args.out.display(),
            train = summary.train,
            test = summary.test,
            seconds = format!("{:.1}", summary.seconds),
            "dataset written"
        );
    }
    Ok(())
}
