//! `dataset build`: one dataset from several full-dose CT volumes (anatomies, scanners),
//! with the reconstruction kernel and geometry varied per slice, a validation split,
//! and test sets at fixed noise levels.
//!
//! A recipe (TOML, see `configs/data/ct-multi.toml`) lists the sources, each with its
//! origin and licence. Per source, the slices are split into contiguous blocks: the test
//! block centred in the volume, a validation block centred in the larger remaining run,
//! `gap` unused slices on each side of both, training on the rest (the same rule as
//! `dataset import`, so a source's test block is the one `dataset import` would hold
//! out).
//!
//! Every slice gets one (kernel, geometry) pair drawn from the recipe's lists by its own
//! seed, and is simulated at the pool dose. Layout:
//!
//! ```text
//! OUT/dataset.json                     sources, licences, splits, every slice's settings
//! OUT/{train,val}/{fd,qd}/SRC_NNNN.npy the pool: fd and its partner at the pool dose
//! OUT/levels/NNhu/dataset.json         one test set per noise level ...
//! OUT/levels/NNhu/test/{fd,qd}/...     ... simulated (not rescaled) at the dose that
//!                                      gives NN HU of noise on that slice
//! OUT/preview_SRC.png                  a test slice of each source at each level
//! OUT/slices.json                      every slice's kernel, geometry, dose, noise
//! ```
//!
//! The trainer draws training noise levels by rescaling the pool's noise realisation
//! `qd - fd` (see `train::data`); the test sets are real simulations at their doses.
//! Noise level of a slice: the standard deviation of `qd - fd` over pixels with
//! `fd > NOISE_MASK_HU` (soft tissue and bone).
//!
//! Reproducible like `dataset import`: per-slice seeds, no timestamps; an up-to-date
//! dataset is left alone unless forced.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ldct_imaging::aapm::{self, Split};
use ldct_imaging::png::{self, Panel};
use ldct_imaging::{read, CtImage, Window};
use ndarray::Array2;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{noise_level_hu, SplitPlan, NOISE_MASK_HU};
use crate::simulate::batch::{clear_npy_dir, slice_progress, BatchError};
use crate::simulate::{
    self, derive_seed, pixel_spacing, DoseModel, Filter, GeometryKind, GeometrySpec, ImageGrid,
    SimConfig, Simulator,
};

type Result<T, E = BatchError> = std::result::Result<T, E>;

fn invalid(msg: impl Into<String>) -> BatchError {
    BatchError::Invalid(msg.into())
}

fn default_seed() -> u64 {
    1
}
fn default_i0() -> f64 {
    simulate::DEFAULT_I0
}
fn default_pool_dose() -> f64 {
    0.25
}
fn default_kernels() -> Vec<Filter> {
    vec![Filter::Ramp, Filter::SheppLogan, Filter::Hann]
}
fn default_geometries() -> Vec<GeometryKind> {
    vec![GeometryKind::Fan, GeometryKind::Parallel]
}
fn default_levels() -> Vec<f64> {
    vec![10.0, 30.0, 90.0]
}
fn default_test_fraction() -> f64 {
    0.2
}
fn default_val_fraction() -> f64 {
    0.1
}
fn default_gap() -> usize {
    3
}
fn one() -> usize {
    1
}

/// One full-dose source volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// Short name, the prefix of its slice files (letters, digits, `-`).
    pub name: String,
    /// Anything `ldct-train convert` reads: `.inv3`, `.nii(.gz)`, `.nrrd`, a DICOM
    /// series folder, `.npy`. Relative paths are relative to the recipe's folder's
    /// parent when they do not exist as given (so `data/...` works from the repository).
    pub path: PathBuf,
    /// Body region (`head`, `chest`, ...), for reports.
    pub anatomy: String,
    /// Where it comes from (package, file, original collection).
    pub origin: String,
    /// Its licence, as the package states it.
    pub licence: String,
    /// Use every k-th slice of the test block (neighbouring thin slices repeat each
    /// other; the test set stays a held-out contiguous block).
    #[serde(default = "one")]
    pub test_every: usize,
}

/// A `dataset build` recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Full-dose photons per ray.
    #[serde(default = "default_i0")]
    pub i0: f64,
    /// Dose fraction of the pool's low-dose partners.
    #[serde(default = "default_pool_dose")]
    pub pool_dose: f64,
    /// Reconstruction kernels drawn per slice.
    #[serde(default = "default_kernels")]
    pub kernels: Vec<Filter>,
    /// Geometries drawn per slice.
    #[serde(default = "default_geometries")]
    pub geometries: Vec<GeometryKind>,
    /// Noise levels (HU) of the test sets.
    #[serde(default = "default_levels")]
    pub test_levels_hu: Vec<f64>,
    #[serde(default = "default_test_fraction")]
    pub test_fraction: f64,
    #[serde(default = "default_val_fraction")]
    pub val_fraction: f64,
    #[serde(default = "default_gap")]
    pub gap: usize,
    #[serde(rename = "source")]
    pub sources: Vec<SourceSpec>,
}

impl Recipe {
    /// Reads and checks a recipe file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| BatchError::io(path, e))?;
        let recipe: Recipe =
            toml::from_str(&text).map_err(|e| invalid(format!("{}: {e}", path.display())))?;
        recipe.validate()?;
        Ok(recipe)
    }

    fn validate(&self) -> Result<()> {
        if self.sources.is_empty() {
            return Err(invalid("the recipe has no [[source]]"));
        }
        if self.kernels.is_empty() || self.geometries.is_empty() {
            return Err(invalid("kernels and geometries must not be empty"));
        }
        if !(self.pool_dose > 0.0 && self.i0 > 0.0) {
            return Err(invalid("pool_dose and i0 must be positive"));
        }
        if self
            .test_levels_hu
            .iter()
            .any(|l| !(l.is_finite() && *l > 0.0))
        {
            return Err(invalid("test_levels_hu must be positive"));
        }
        let mut names = std::collections::HashSet::new();
        for s in &self.sources {
            let ok = !s.name.is_empty()
                && s.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-');
            if !ok {
                return Err(invalid(format!(
                    "source name {:?}: use letters, digits and '-'",
                    s.name
                )));
            }
            if !names.insert(&s.name) {
                return Err(invalid(format!("source name {:?} appears twice", s.name)));
            }
            if s.test_every == 0 {
                return Err(invalid(format!(
                    "{}: test_every must be at least 1",
                    s.name
                )));
            }
            if s.licence.trim().is_empty() {
                return Err(invalid(format!("{}: state the source's licence", s.name)));
            }
        }
        Ok(())
    }
}

/// The split of one source: a test block, a validation block, training on the rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceSplit {
    pub slices: usize,
    pub train: Vec<[usize; 2]>,
    pub val: Vec<[usize; 2]>,
    pub test: Vec<[usize; 2]>,
    /// The test slices used (every `test_every`-th of the test block).
    pub test_used: Vec<usize>,
}

impl SourceSplit {
    /// The test block of [`SplitPlan`], then a validation block of
    /// `round(val_fraction * slices)` (at least 1) centred in the longest training run,
    /// with `gap` slices dropped on each side of it.
    pub fn plan(
        slices: usize,
        test_fraction: f64,
        val_fraction: f64,
        gap: usize,
        test_every: usize,
    ) -> Result<Self> {
        let plan =
            SplitPlan::new(slices, test_fraction, gap).map_err(|e| invalid(e.to_string()))?;
        let val_len = ((slices as f64 * val_fraction).round() as usize).max(1);
        let longest = plan
            .train
            .iter()
            .max_by_key(|r| r.len())
            .cloned()
            .ok_or_else(|| invalid("no training slices"))?;
        if longest.len() < val_len + 2 * gap + 1 {
            return Err(invalid(format!(
                "{slices} slices are too few for a validation block of {val_len} with a gap of \
                 {gap} (longest training run {longest:?})"
            )));
        }
        let start = longest.start + (longest.len() - val_len) / 2;
        let val = start..start + val_len;
        let mut train = Vec::new();
        for r in &plan.train {
            if *r == longest {
                for part in [r.start..val.start - gap, val.end + gap..r.end] {
                    if !part.is_empty() {
                        train.push(part);
                    }
                }
            } else {
                train.push(r.clone());
            }
        }
        let test_used = plan
            .test
            .iter()
            .flat_map(|r| r.clone())
            .step_by(test_every)
            .collect();
        let arr = |rs: &[std::ops::Range<usize>]| rs.iter().map(|r| [r.start, r.end]).collect();
        Ok(Self {
            slices,
            train: arr(&train),
            val: vec![[val.start, val.end]],
            test: arr(&plan.test),
            test_used,
        })
    }

    fn in_ranges(rs: &[[usize; 2]], i: usize) -> bool {
        rs.iter().any(|r| (r[0]..r[1]).contains(&i))
    }

    /// Where slice `i` goes: train, val, test (used) or nowhere.
    pub fn split_of(&self, i: usize) -> Option<Split> {
        if Self::in_ranges(&self.train, i) {
            Some(Split::Train)
        } else if Self::in_ranges(&self.val, i) {
            Some(Split::Val)
        } else if self.test_used.contains(&i) {
            Some(Split::Test)
        } else {
            None
        }
    }
}

/// The simulation settings of one slice.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SliceSettings {
    pub kernel: Filter,
    pub geometry: GeometryKind,
    pub seed: u64,
}

/// What `dataset.json` records per slice.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SliceRecord {
    pub name: String,
    pub source: String,
    pub index: usize,
    pub split: &'static str,
    pub kernel: Filter,
    pub geometry: GeometryKind,
    pub rows: usize,
    pub cols: usize,
    /// Pool dose (train, val) or each level's dose (test).
    pub dose: Vec<f64>,
    /// Measured noise level(s) in HU, as `dose`.
    pub noise_hu: Vec<f32>,
}

#[derive(Debug, Serialize)]
struct SourceRecord<'a> {
    #[serde(flatten)]
    spec: &'a SourceSpec,
    resolved_path: String,
    slices: usize,
    rows: usize,
    cols: usize,
    pixel_spacing_mm: [f64; 2],
    pixel_spacing_assumed: bool,
    split: &'a SourceSplit,
}

#[derive(Debug, Serialize)]
struct Manifest<'a> {
    format: &'static str,
    tool: String,
    layout: &'static str,
    units: &'static str,
    noise_level: &'static str,
    recipe: &'a Recipe,
    sources: Vec<SourceRecord<'a>>,
    simulation: SimulationNote,
}

#[derive(Debug, Serialize)]
struct SimulationNote {
    i0: f64,
    pool_dose: f64,
    pair: &'static str,
    seed_rule: &'static str,
    levels: &'static str,
}

const FORMAT: &str = "ldct-dataset/1";
const LAYOUT: &str = "{train,val}/{fd,qd}/SRC_NNNN.npy (pool at pool_dose) and \
     levels/NNhu/test/{fd,qd}/SRC_NNNN.npy (one test set per noise level); pairs by file name";
const NOISE_NOTE: &str = "std of qd - fd over pixels with fd > -500 HU";

/// Per-level test set record.
#[derive(Debug, Serialize)]
struct LevelManifest<'a> {
    format: &'static str,
    tool: String,
    layout: &'static str,
    units: &'static str,
    noise_level_hu: f64,
    noise_level: &'static str,
    parent: &'static str,
    slices: Vec<&'a SliceRecord>,
}

/// Settings of a build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub recipe: Recipe,
    /// Folder relative source paths are resolved against (tried after the path as
    /// given).
    pub base: PathBuf,
    pub out: PathBuf,
    pub force: bool,
}

/// What a build did.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildSummary {
    pub train: usize,
    pub val: usize,
    pub test: usize,
    pub levels: usize,
    pub up_to_date: bool,
    pub seconds: f64,
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.exists() || p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// The folder of one level's test set.
pub fn level_dir(out: &Path, level_hu: f64) -> PathBuf {
    out.join("levels")
        .join(format!("{}hu", level_hu.round() as i64))
}

/// The settings drawn for slice `index` of source `source` (0-based in the recipe).
pub fn slice_settings(recipe: &Recipe, source: usize, index: usize) -> SliceSettings {
    let seed = derive_seed(recipe.seed ^ ((source as u64 + 1) << 40), index as u64);
    let k = recipe.kernels.len() as u64;
    let g = recipe.geometries.len() as u64;
    let r = derive_seed(seed, 0x4b45_524e);
    SliceSettings {
        kernel: recipe.kernels[(r % k) as usize],
        geometry: recipe.geometries[((r / k) % g) as usize],
        seed,
    }
}

struct Job {
    source: usize,
    index: usize,
    split: Split,
    name: String,
    settings: SliceSettings,
}

type SimKey = (usize, usize, u64, u64, Filter, GeometryKind);

/// Simulators per (size, spacing, kernel, geometry), shared by threads.
struct Simulators {
    i0: f64,
    pool_dose: f64,
    map: Mutex<HashMap<SimKey, Arc<Simulator>>>,
}

impl Simulators {
    fn get(&self, grid: ImageGrid, s: &SliceSettings) -> Result<Arc<Simulator>> {
        let key = (
            grid.rows,
            grid.cols,
            grid.dy.to_bits(),
            grid.dx.to_bits(),
            s.kernel,
            s.geometry,
        );
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sim) = map.get(&key) {
            return Ok(sim.clone());
        }
        let config = SimConfig {
            geometry: match s.geometry {
                GeometryKind::Parallel => GeometrySpec::parallel(),
                GeometryKind::Fan => GeometrySpec::default(),
            },
            dose_model: DoseModel {
                i0: self.i0,
                ..DoseModel::default()
            },
            dose: self.pool_dose,
            filter: s.kernel,
            mu_water: ldct_imaging::hu::MU_WATER_AAPM,
        };
        let sim = Arc::new(Simulator::new(config, grid)?);
        map.insert(key, sim.clone());
        Ok(sim)
    }
}

/// One source, loaded.
struct Loaded {
    slices: Vec<CtImage>,
    grid: ImageGrid,
    assumed: bool,
    resolved: PathBuf,
}

fn load_source(base: &Path, spec: &SourceSpec) -> Result<Loaded> {
    let resolved = resolve(base, &spec.path);
    if !resolved.exists() {
        return Err(invalid(format!(
            "source {}: {} does not exist (run `make data`, which fetches it)",
            spec.name,
            resolved.display()
        )));
    }
    let slices = read::read_ct(&resolved)?;
    let first = slices
        .first()
        .ok_or_else(|| invalid(format!("source {}: no slices", spec.name)))?;
    let (rows, cols) = first.dim();
    if let Some(bad) = slices.iter().position(|s| s.dim() != (rows, cols)) {
        return Err(invalid(format!(
            "source {}: slice {bad} is {:?} but slice 0 is {:?}",
            spec.name,
            slices[bad].dim(),
            (rows, cols)
        )));
    }
    let (spacing, assumed) = pixel_spacing(None, first.pixel_spacing, rows, cols);
    let grid = ImageGrid::new(rows, cols, spacing)?;
    Ok(Loaded {
        slices,
        grid,
        assumed,
        resolved,
    })
}

fn manifest_json(opts: &BuildOptions, loaded: &[Loaded], splits: &[SourceSplit]) -> Result<String> {
    let recipe = &opts.recipe;
    let sources = recipe
        .sources
        .iter()
        .zip(loaded)
        .zip(splits)
        .map(|((spec, l), split)| SourceRecord {
            spec,
            resolved_path: l.resolved.display().to_string(),
            slices: l.slices.len(),
            rows: l.grid.rows,
            cols: l.grid.cols,
            pixel_spacing_mm: [l.grid.dy, l.grid.dx],
            pixel_spacing_assumed: l.assumed,
            split,
        })
        .collect();
    let manifest = Manifest {
        format: FORMAT,
        tool: format!("ldct-train {}", env!("CARGO_PKG_VERSION")),
        layout: LAYOUT,
        units: "HU, float32",
        noise_level: NOISE_NOTE,
        recipe,
        sources,
        simulation: SimulationNote {
            i0: recipe.i0,
            pool_dose: recipe.pool_dose,
            pair: crate::simulate::batch::PAIR_NOTE,
            seed_rule: "slice i of source k: derive(seed ^ ((k + 1) << 40), i); its kernel and \
                        geometry from derive(that, 'KERN'); level j of a test slice uses \
                        derive(slice seed, j + 1)",
            levels: "per test slice: sigma_pool measured at pool_dose, then a simulation at \
                     dose pool_dose * (sigma_pool / level)^2 (noise variance is proportional \
                     to 1 / dose)",
        },
    };
    Ok(serde_json::to_string_pretty(&manifest)? + "\n")
}

/// One simulated slice: its job index, its record, and (test slices) the low-dose
/// images at each test level.
type BuiltSlice = (usize, SliceRecord, Option<Vec<Array2<f32>>>);

/// Builds the dataset (see the module docs).
pub fn build(opts: &BuildOptions) -> Result<BuildSummary> {
    let started = Instant::now();
    let recipe = &opts.recipe;
    recipe.validate()?;
    let mut loaded = Vec::new();
    let mut splits = Vec::new();
    for spec in &recipe.sources {
        let l = load_source(&opts.base, spec)?;
        if l.assumed {
            tracing::warn!(
                source = %spec.name,
                "no pixel spacing in the source: assuming {:.4} mm",
                l.grid.dx
            );
        }
        let split = SourceSplit::plan(
            l.slices.len(),
            recipe.test_fraction,
            recipe.val_fraction,
            recipe.gap,
            spec.test_every,
        )
        .map_err(|e| invalid(format!("source {}: {e}", spec.name)))?;
        loaded.push(l);
        splits.push(split);
    }
    let json = manifest_json(opts, &loaded, &splits)?;
    let mut jobs = Vec::new();
    for (k, (spec, split)) in recipe.sources.iter().zip(&splits).enumerate() {
        for i in 0..split.slices {
            if let Some(s) = split.split_of(i) {
                jobs.push(Job {
                    source: k,
                    index: i,
                    split: s,
                    name: format!("{}_{i:04}", spec.name),
                    settings: slice_settings(recipe, k, i),
                });
            }
        }
    }
    let count = |s: Split| jobs.iter().filter(|j| j.split == s).count();
    let summary = |up_to_date| BuildSummary {
        train: count(Split::Train),
        val: count(Split::Val),
        test: count(Split::Test),
        levels: recipe.test_levels_hu.len(),
        up_to_date,
        seconds: started.elapsed().as_secs_f64(),
    };
    // Slices skipped for want of tissue, as the last build recorded them.
    let skipped: std::collections::HashSet<String> =
        std::fs::read_to_string(opts.out.join("slices.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Vec<serde_json::Value>>(&t).ok())
            .unwrap_or_default()
            .iter()
            .filter(|r| {
                r["split"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("skipped"))
            })
            .filter_map(|r| r["name"].as_str().map(str::to_string))
            .collect();
    let files_there = || {
        jobs.iter().filter(|j| !skipped.contains(&j.name)).all(|j| {
            let roots: Vec<(PathBuf, Split)> = if j.split == Split::Test {
                recipe
                    .test_levels_hu
                    .iter()
                    .map(|&l| (level_dir(&opts.out, l), Split::Test))
                    .collect()
            } else {
                vec![(opts.out.clone(), j.split)]
            };
            roots.iter().all(|(root, split)| {
                [aapm::FULL_DOSE_DIR, aapm::QUARTER_DOSE_DIR]
                    .iter()
                    .all(|d| {
                        split
                            .dose_dir(root, d)
                            .join(format!("{}.npy", j.name))
                            .is_file()
                    })
            })
        })
    };
    let manifest_path = opts.out.join("dataset.json");
    if !opts.force
        && std::fs::read_to_string(&manifest_path).is_ok_and(|t| t == json)
        && files_there()
    {
        return Ok(summary(true));
    }
    // Start clean; dataset.json goes last so an interrupted build never looks complete.
    std::fs::create_dir_all(&opts.out).map_err(|e| BatchError::io(&opts.out, e))?;
    if manifest_path.exists() {
        std::fs::remove_file(&manifest_path).map_err(|e| BatchError::io(&manifest_path, e))?;
    }
    for split in [Split::Train, Split::Val] {
        for d in [aapm::FULL_DOSE_DIR, aapm::QUARTER_DOSE_DIR] {
            clear_npy_dir(&split.dose_dir(&opts.out, d))?;
        }
    }
    let levels_root = opts.out.join("levels");
    if levels_root.exists() {
        for entry in std::fs::read_dir(&levels_root).map_err(|e| BatchError::io(&levels_root, e))? {
            let dir = entry.map_err(|e| BatchError::io(&levels_root, e))?.path();
            for d in [aapm::FULL_DOSE_DIR, aapm::QUARTER_DOSE_DIR] {
                clear_npy_dir(&Split::Test.dose_dir(&dir, d))?;
            }
            let lm = dir.join("dataset.json");
            if lm.exists() {
                std::fs::remove_file(&lm).map_err(|e| BatchError::io(&lm, e))?;
            }
        }
    }
    let sims = Simulators {
        i0: recipe.i0,
        pool_dose: recipe.pool_dose,
        map: Mutex::new(HashMap::new()),
    };
    tracing::info!(
        train = count(Split::Train),
        val = count(Split::Val),
        test = count(Split::Test),
        levels = ?recipe.test_levels_hu,
        "simulating the multi-source dataset"
    );
    let pb = slice_progress(jobs.len(), "dataset build");
    // Test slices are the slowest (one projection, 1 + levels reconstructions): first.
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|&i| jobs[i].split != Split::Test);
    let records: Vec<BuiltSlice> = order
        .par_iter()
        .map(|&ji| -> Result<_> {
            let j = &jobs[ji];
            let l = &loaded[j.source];
            let hu = l.slices[j.index].hu.view();
            let sim = sims.get(l.grid, &j.settings)?;
            let at = |e: BatchError| e.at_slice(j.index);
            let sino = sim.project(hu).map_err(|e| at(e.into()))?;
            let model = &sim.config().dose_model;
            let fd = sim.reconstruct(sino.view());
            let noisy = model
                .noisy(&sino, recipe.pool_dose, j.settings.seed)
                .map_err(|e| at(e.into()))?;
            let qd = sim.reconstruct(noisy.view());
            let (rows, cols) = fd.dim();
            let Some(sigma) = noise_level_hu(&fd, &qd) else {
                // Almost no tissue (the ends of a scan): nothing to learn from, and no
                // noise level to rescale. Recorded, not written.
                if j.split == Split::Test {
                    return Err(invalid(format!(
                        "{}: test slice with fewer than 100 pixels above {NOISE_MASK_HU} HU",
                        j.name
                    )));
                }
                tracing::debug!(slice = %j.name, "skipped: no tissue");
                pb.inc(1);
                let rec = SliceRecord {
                    name: j.name.clone(),
                    source: recipe.sources[j.source].name.clone(),
                    index: j.index,
                    split: "skipped: fewer than 100 pixels above -500 HU",
                    kernel: j.settings.kernel,
                    geometry: j.settings.geometry,
                    rows,
                    cols,
                    dose: vec![],
                    noise_hu: vec![],
                };
                return Ok((ji, rec, None));
            };
            let mut rec = SliceRecord {
                name: j.name.clone(),
                source: recipe.sources[j.source].name.clone(),
                index: j.index,
                split: j.split.dir_name(),
                kernel: j.settings.kernel,
                geometry: j.settings.geometry,
                rows,
                cols,
                dose: vec![recipe.pool_dose],
                noise_hu: vec![sigma],
            };
            let mut preview = None;
            if j.split == Split::Test {
                rec.dose.clear();
                rec.noise_hu.clear();
                let mut qds = Vec::new();
                for (li, &level) in recipe.test_levels_hu.iter().enumerate() {
                    let dose = recipe.pool_dose * (f64::from(sigma) / level).powi(2);
                    let noisy = model
                        .noisy(&sino, dose, derive_seed(j.settings.seed, li as u64 + 1))
                        .map_err(|e| at(e.into()))?;
                    let q = sim.reconstruct(noisy.view());
                    rec.dose.push(dose);
                    rec.noise_hu
                        .push(noise_level_hu(&fd, &q).unwrap_or(f32::NAN));
                    aapm::write_pair(&level_dir(&opts.out, level), Split::Test, &j.name, &fd, &q)?;
                    qds.push(q);
                }
                // The middle slice of each source's used test slices goes in the preview.
                let used = &splits[j.source].test_used;
                if used.get(used.len() / 2) == Some(&j.index) {
                    qds.insert(0, fd.clone());
                    preview = Some(qds);
                }
            } else {
                aapm::write_pair(&opts.out, j.split, &j.name, &fd, &qd)?;
            }
            pb.inc(1);
            Ok((ji, rec, preview))
        })
        .collect::<Result<_>>()?;
    pb.finish_and_clear();
    let mut records = records;
    records.sort_by_key(|r| r.0);

    // Previews: per source, fd and each level of its middle used test slice.
    let soft = Window::new(-160.0, 240.0)?;
    for (_, rec, preview) in &records {
        if let Some(images) = preview {
            let panels: Vec<Panel> = images
                .iter()
                .enumerate()
                .map(|(k, img)| {
                    let label = if k == 0 {
                        format!("{} fd", rec.name)
                    } else {
                        format!("qd {:.0} HU", rec.noise_hu[k - 1])
                    };
                    Panel::intensity(label, img.clone())
                })
                .collect();
            let path = opts.out.join(format!("preview_{}.png", rec.source));
            png::write_comparison(&path, &panels, soft)?;
        }
    }
    for &level in &recipe.test_levels_hu {
        let slices: Vec<&SliceRecord> = records
            .iter()
            .filter(|r| r.1.split == Split::Test.dir_name())
            .map(|r| &r.1)
            .collect();
        let m = LevelManifest {
            format: FORMAT,
            tool: format!("ldct-train {}", env!("CARGO_PKG_VERSION")),
            layout: "test/{fd,qd}/SRC_NNNN.npy",
            units: "HU, float32",
            noise_level_hu: level,
            noise_level: NOISE_NOTE,
            parent: "../../dataset.json (sources, licences, recipe)",
            slices,
        };
        let path = level_dir(&opts.out, level).join("dataset.json");
        std::fs::write(&path, serde_json::to_string_pretty(&m)? + "\n")
            .map_err(|e| BatchError::io(&path, e))?;
    }
    let slices_path = opts.out.join("slices.json");
    let all: Vec<&SliceRecord> = records.iter().map(|r| &r.1).collect();
    std::fs::write(&slices_path, serde_json::to_string_pretty(&all)? + "\n")
        .map_err(|e| BatchError::io(&slices_path, e))?;
    std::fs::write(&manifest_path, json).map_err(|e| BatchError::io(&manifest_path, e))?;
    Ok(summary(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cranium_split_keeps_the_import_test_block() {
        let s = SourceSplit::plan(108, 0.2, 0.1, 3, 2).unwrap();
        assert_eq!(s.test, vec![[43, 65]]);
        // Validation centred in the longest training run (the later of the two equal
        // runs, [68, 108): max_by_key keeps the last maximum), gaps of 3 around it. This
        // is the split data/ct-multi was built with (dataset.json).
        assert_eq!(s.val, vec![[82, 93]]);
        assert_eq!(s.train, vec![[0, 40], [68, 79], [96, 108]]);
        assert_eq!(s.test_used, (43..65).step_by(2).collect::<Vec<_>>());
        assert_eq!(s.split_of(44), None);
        assert_eq!(s.split_of(43), Some(Split::Test));
        assert_eq!(s.split_of(80), None);
        // No training slice within `gap` of a val or test slice.
        for i in 0..108 {
            if s.split_of(i) == Some(Split::Train) {
                for j in 0..108 {
                    if matches!(s.split_of(j), Some(Split::Val | Split::Test)) {
                        assert!(i.abs_diff(j) > 3, "{i} {j}");
                    }
                }
            }
        }
        assert!(SourceSplit::plan(12, 0.2, 0.2, 3, 1).is_err());
    }

    #[test]
    fn settings_cover_every_kernel_and_geometry() {
        let recipe: Recipe = toml::from_str(
            r#"
            [[source]]
            name = "a"
            path = "x.nii"
            anatomy = "head"
            origin = "test"
            licence = "CC0"
            "#,
        )
        .unwrap();
        let mut seen = std::collections::HashSet::new();
        for i in 0..200 {
            let s = slice_settings(&recipe, 0, i);
            assert_eq!(s, slice_settings(&recipe, 0, i));
            seen.insert((format!("{:?}", s.kernel), format!("{:?}", s.geometry)));
        }
        assert_eq!(seen.len(), 6);
        assert_ne!(
            slice_settings(&recipe, 0, 3).seed,
            slice_settings(&recipe, 1, 3).seed
        );
    }

    #[test]
    fn noise_level_is_the_std_inside_the_mask() {
        let fd = Array2::from_shape_fn((20, 20), |(r, _)| if r < 10 { -1000.0 } else { 40.0 });
        let qd = Array2::from_shape_fn((20, 20), |(r, c)| {
            fd[(r, c)]
                + if (r + c) % 2 == 0 { 10.0 } else { -10.0 }
                + if r < 10 { 500.0 } else { 0.0 }
        });
        let s = noise_level_hu(&fd, &qd).unwrap();
        assert!((s - 10.0).abs() < 1e-4, "{s}");
    }
}
