//! `dataset import`: read a full-dose source, split it, simulate the low-dose partners,
//! write the AAPM layout and `dataset.json`.
//!
//! Reproducible: the same source, settings and seed give the same bytes (per-slice
//! seeds, no timestamps in `dataset.json`). When `dataset.json` already says exactly
//! what a run would write and every slice file is there, the run does nothing (so
//! `make data` is quick the second time); `force` rebuilds.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use ldct_imaging::aapm::{self, Split};
use ldct_imaging::inv3;
use ldct_imaging::raw::{self, Endian, RawDtype};
use ldct_imaging::{png, read, CtImage, Window};
use rayon::prelude::*;
use serde::Serialize;

use super::SplitPlan;
use crate::simulate::batch::{
    clear_npy_dir, preview_panels, slice_name, slice_progress, BatchError, SimulatorCache,
    PAIR_NOTE,
};
use crate::simulate::{self, Geometry, Pair, SimConfig};

type Result<T, E = BatchError> = std::result::Result<T, E>;

fn invalid(msg: String) -> BatchError {
    BatchError::Invalid(msg)
}

/// Where the full-dose slices come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// An InVesalius `.inv3` project; `None`: Debian's `invesalius-examples` Cranium.
    Invesalius(Option<PathBuf>),
    /// A DICOM file or series folder.
    Dicom(PathBuf),
    /// A NIfTI-1/2 volume (`.nii`, `.nii.gz`).
    Nifti(PathBuf),
    /// A NRRD volume (`.nrrd`, `.nhdr`).
    Nrrd(PathBuf),
    /// A `.npy` file ([H,W] or [N,H,W] HU), a folder of `.npy` slices, or an existing
    /// AAPM-layout folder (copied, converted to HU float32, its split kept).
    Npy(PathBuf),
    /// A raw volume.
    Raw {
        path: PathBuf,
        shape: [usize; 3],
        dtype: RawDtype,
        endian: Endian,
        header_bytes: usize,
    },
}

impl Source {
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Invesalius(_) => "invesalius",
            Source::Dicom(_) => "dicom",
            Source::Nifti(_) => "nifti",
            Source::Nrrd(_) => "nrrd",
            Source::Npy(_) => "npy",
            Source::Raw { .. } => "raw",
        }
    }
}

/// Settings of an import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub source: Source,
    pub out: PathBuf,
    pub config: SimConfig,
    pub seed: u64,
    /// Overrides the source's pixel spacing (mm).
    pub pixel_size: Option<f64>,
    pub test_fraction: f64,
    pub gap: usize,
    pub preset: Option<&'static str>,
    /// Rebuild even when `dataset.json` is up to date.
    pub force: bool,
}

/// What an import did.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportSummary {
    pub train: usize,
    pub test: usize,
    /// True when the dataset was already up to date.
    pub up_to_date: bool,
    pub seconds: f64,
}

#[derive(Debug, Serialize)]
struct SourceRecord {
    kind: &'static str,
    path: String,
    slices: usize,
    rows: usize,
    cols: usize,
    /// `[row, col]` spacing used (mm); unknown for copied AAPM folders.
    pixel_spacing_mm: Option<[f64; 2]>,
    pixel_spacing_assumed: bool,
}

#[derive(Debug, Serialize)]
struct SimulationRecord<'a> {
    preset: Option<&'static str>,
    dose: f64,
    i0: f64,
    electronic_noise: f64,
    count_floor: f64,
    filter: simulate::Filter,
    mu_water: f32,
    geometry: Geometry,
    seed: u64,
    seed_rule: &'static str,
    pair: &'static str,
    config: &'a SimConfig,
}

#[derive(Debug, Serialize)]
struct SplitRecord {
    rule: &'static str,
    test_fraction: f64,
    gap: usize,
    /// Half-open `[start, end)` source slice ranges.
    train: Vec<[usize; 2]>,
    test: Vec<[usize; 2]>,
    train_slices: usize,
    test_slices: usize,
}

#[derive(Debug, Serialize)]
struct Manifest<'a> {
    format: &'static str,
    tool: String,
    layout: &'static str,
    units: &'static str,
    source: SourceRecord,
    #[serde(skip_serializing_if = "Option::is_none")]
    simulation: Option<SimulationRecord<'a>>,
    split: SplitRecord,
}

const FORMAT: &str = "ldct-dataset/1";
const LAYOUT: &str = "{train,test}/{fd,qd}/NAME.npy, pairs by file name";

fn ranges(rs: &[std::ops::Range<usize>]) -> Vec<[usize; 2]> {
    rs.iter().map(|r| [r.start, r.end]).collect()
}

/// Reads the source's slices (not for AAPM-layout npy folders).
fn load(source: &Source) -> Result<(Vec<CtImage>, String)> {
    Ok(match source {
        Source::Invesalius(path) => {
            let path = match path {
                Some(p) => p.clone(),
                None => inv3::default_inv3_path().ok_or_else(|| {
                    invalid(format!(
                        "no InVesalius sample found (looked in {:?}); install the Debian package \
                         invesalius-examples (`make data` does) or pass --input",
                        inv3::INV3_PATHS
                    ))
                })?,
            };
            let volume = inv3::read_inv3(&path)?;
            (volume.slices().collect(), path.display().to_string())
        }
        Source::Dicom(path) | Source::Npy(path) | Source::Nifti(path) | Source::Nrrd(path) => {
            (read::read_ct(path)?, path.display().to_string())
        }
        Source::Raw {
            path,
            shape,
            dtype,
            endian,
            header_bytes,
        } => {
            let volume = raw::read_raw_volume(path, *shape, *dtype, *endian, *header_bytes)?;
            (volume.slices().collect(), path.display().to_string())
        }
    })
}

/// An AAPM-layout folder: has `train/fd` or `test/fd`.
fn is_aapm_root(path: &Path) -> bool {
    path.is_dir()
        && [Split::Train, Split::Test]
            .iter()
            .any(|s| s.dose_dir(path, aapm::FULL_DOSE_DIR).is_dir())
}

/// Empties the split folders of a previous build (refusing anything but .npy slices).
fn clear_splits(out: &Path) -> Result<()> {
    for split in [Split::Train, Split::Test] {
        for dose in [aapm::FULL_DOSE_DIR, aapm::QUARTER_DOSE_DIR] {
            clear_npy_dir(&split.dose_dir(out, dose))?;
        }
        let dir = out.join(split.dir_name());
        let empty = std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_none());
        if empty {
            std::fs::remove_dir(&dir).map_err(|e| BatchError::io(&dir, e))?;
        }
    }
    Ok(())
}

/// Creates `out`, removes its `dataset.json` and split folders; returns the
/// `dataset.json` path to write once every slice is there.
fn prepare_out(out: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(out).map_err(|e| BatchError::io(out, e))?;
    let manifest_path = out.join("dataset.json");
    if manifest_path.exists() {
        std::fs::remove_file(&manifest_path).map_err(|e| BatchError::io(&manifest_path, e))?;
    }
    clear_splits(out)?;
    Ok(manifest_path)
}

/// True when `out/dataset.json` equals `json` and every listed slice file exists.
fn up_to_date(out: &Path, json: &str, files: &[(Split, String)]) -> bool {
    let Ok(existing) = std::fs::read_to_string(out.join("dataset.json")) else {
        return false;
    };
    existing == json
        && files.iter().all(|(split, name)| {
            [aapm::FULL_DOSE_DIR, aapm::QUARTER_DOSE_DIR]
                .iter()
                .all(|d| split.dose_dir(out, d).join(format!("{name}.npy")).is_file())
        })
}

/// Builds the dataset (see the module docs).
pub fn import(opts: &ImportOptions) -> Result<ImportSummary> {
    if let Source::Npy(path) = &opts.source {
        if is_aapm_root(path) {
            return copy_aapm(path, opts);
        }
    }
    let started = Instant::now();
    let (slices, path) = load(&opts.source)?;
    let n = slices.len();
    if n == 0 {
        return Err(invalid(format!("{path} holds no slices")));
    }
    let (rows, cols) = slices[0].dim();
    if let Some(bad) = slices.iter().position(|s| s.dim() != (rows, cols)) {
        return Err(invalid(format!(
            "slice {bad} is {:?} but slice 0 is {:?}; a dataset needs one slice size",
            slices[bad].dim(),
            (rows, cols)
        )));
    }
    let plan =
        SplitPlan::new(n, opts.test_fraction, opts.gap).map_err(|e| invalid(e.to_string()))?;
    let cache = SimulatorCache::new(opts.config, opts.pixel_size);
    let (sim, assumed) = cache.get(&slices[0])?;
    if assumed {
        tracing::warn!(
            "no pixel spacing in the source and no --pixel-size: assuming {:.4} mm",
            sim.grid().dx
        );
    }
    let cfg = &opts.config;
    let manifest = Manifest {
        format: FORMAT,
        tool: format!("ldct-train {}", env!("CARGO_PKG_VERSION")),
        layout: LAYOUT,
        units: "HU, float32",
        source: SourceRecord {
            kind: opts.source.kind(),
            path,
            slices: n,
            rows,
            cols,
            pixel_spacing_mm: Some([sim.grid().dy, sim.grid().dx]),
            pixel_spacing_assumed: assumed,
        },
        simulation: Some(SimulationRecord {
            preset: opts.preset,
            dose: cfg.dose,
            i0: cfg.dose_model.i0,
            electronic_noise: cfg.dose_model.electronic_noise,
            count_floor: cfg.dose_model.floor,
            filter: cfg.filter,
            mu_water: cfg.mu_water,
            geometry: *sim.geometry(),
            seed: opts.seed,
            seed_rule: simulate::SEED_RULE,
            pair: PAIR_NOTE,
            config: cfg,
        }),
        split: SplitRecord {
            rule: "test: one contiguous block centred in the volume; train: the rest, \
                   minus `gap` slices on each side of the test block",
            test_fraction: opts.test_fraction,
            gap: opts.gap,
            train: ranges(&plan.train),
            test: ranges(&plan.test),
            train_slices: plan.train_len(),
            test_slices: plan.test_len(),
        },
    };
    let json = serde_json::to_string_pretty(&manifest)? + "\n";
    let jobs: Vec<(usize, Split, String)> = (0..n)
        .filter_map(|i| plan.split_of(i).map(|s| (i, s, slice_name(i, n))))
        .collect();
    let files: Vec<(Split, String)> = jobs.iter().map(|(_, s, name)| (*s, name.clone())).collect();
    if !opts.force && up_to_date(&opts.out, &json, &files) {
        return Ok(ImportSummary {
            train: plan.train_len(),
            test: plan.test_len(),
            up_to_date: true,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    // dataset.json goes last: an interrupted build never looks complete.
    let manifest_path = prepare_out(&opts.out)?;
    tracing::info!(
        slices = n,
        train = plan.train_len(),
        test = plan.test_len(),
        geometry = ?sim.geometry(),
        dose = cfg.dose,
        "simulating the dataset"
    );
    let preview_index = plan
        .test
        .first()
        .map(|r| (r.start + r.end) / 2)
        .unwrap_or(n / 2);
    let preview: Mutex<Option<Pair>> = Mutex::new(None);
    let pb = slice_progress(jobs.len(), "dataset");
    jobs.par_iter()
        .try_for_each(|(i, split, name)| -> Result<()> {
            let (sim, _) = cache.get(&slices[*i])?;
            let pair = sim
                .pair(slices[*i].hu.view(), simulate::slice_seed(opts.seed, *i))
                .map_err(|e| BatchError::from(e).at_slice(*i))?;
            aapm::write_pair(&opts.out, *split, name, &pair.fd, &pair.qd)?;
            if *i == preview_index {
                *preview.lock().expect("preview lock") = Some(pair);
            }
            pb.inc(1);
            Ok(())
        })?;
    pb.finish_and_clear();
    if let Some(pair) = preview.into_inner().expect("preview lock") {
        let panels = preview_panels(&slices[preview_index], &pair, cfg.dose)?;
        png::write_comparison(&opts.out.join("preview.png"), &panels, Window::FULL)?;
    }
    std::fs::write(&manifest_path, json).map_err(|e| BatchError::io(&manifest_path, e))?;
    Ok(ImportSummary {
        train: plan.train_len(),
        test: plan.test_len(),
        up_to_date: false,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Copies an AAPM-layout folder, converting slices to HU float32 and keeping its split.
fn copy_aapm(root: &Path, opts: &ImportOptions) -> Result<ImportSummary> {
    let started = Instant::now();
    if opts.out.exists() && root.canonicalize().ok() == opts.out.canonicalize().ok() {
        return Err(invalid("the input and output folders are the same".into()));
    }
    let mut pairs = Vec::new();
    for split in [Split::Train, Split::Test] {
        if split.dose_dir(root, aapm::FULL_DOSE_DIR).is_dir() {
            for p in aapm::list_pairs(root, split)? {
                pairs.push((split, p));
            }
        }
    }
    let count = |s: Split| pairs.iter().filter(|(x, _)| *x == s).count();
    let (train, test) = (count(Split::Train), count(Split::Test));
    let first = aapm::load_pair(&pairs[0].1, None)?;
    let (rows, cols) = first.0.dim();
    let manifest = Manifest {
        format: FORMAT,
        tool: format!("ldct-train {}", env!("CARGO_PKG_VERSION")),
        layout: LAYOUT,
        units: "HU, float32",
        source: SourceRecord {
            kind: "npy-aapm",
            path: root.display().to_string(),
            slices: pairs.len(),
            rows,
            cols,
            pixel_spacing_mm: None,
            pixel_spacing_assumed: false,
        },
        simulation: None,
        split: SplitRecord {
            rule: "kept from the source folder",
            test_fraction: test as f64 / (train + test) as f64,
            gap: 0,
            train: vec![],
            test: vec![],
            train_slices: train,
            test_slices: test,
        },
    };
    let json = serde_json::to_string_pretty(&manifest)? + "\n";
    let files: Vec<(Split, String)> = pairs.iter().map(|(s, p)| (*s, p.name.clone())).collect();
    if !opts.force && up_to_date(&opts.out, &json, &files) {
        return Ok(ImportSummary {
            train,
            test,
            up_to_date: true,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    let manifest_path = prepare_out(&opts.out)?;
    let pb = slice_progress(pairs.len(), "copy");
    pairs.par_iter().try_for_each(|(split, p)| -> Result<()> {
        let (fd, qd) = aapm::load_pair(p, None)?;
        aapm::write_pair(&opts.out, *split, &p.name, &fd, &qd)?;
        pb.inc(1);
        Ok(())
    })?;
    pb.finish_and_clear();
    std::fs::write(&manifest_path, json).map_err(|e| BatchError::io(&manifest_path, e))?;
    Ok(ImportSummary {
        train,
        test,
        up_to_date: false,
        seconds: started.elapsed().as_secs_f64(),
    })
}
