//! The training data pipeline: slices in memory (normalised to the network range),
//! random square crops with flips and 90-degree rotations, batches prepared on a
//! background thread.
//!
//! The batch of step `s` depends only on the seed and `s` (its random stream is
//! `derive_seed(seed, s)`), never on timing or on where a run was resumed, so a
//! resumed run sees exactly the batches an uninterrupted one would.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::JoinHandle;

use ldct_imaging::aapm::{self, Split};
use ldct_imaging::window::{Normaliser, Window};
use ndarray::{s, Array2};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::simulate::dose::derive_seed;

/// Errors loading training data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Imaging(#[from] ldct_imaging::ImagingError),
    #[error("{0}")]
    Invalid(String),
}

/// HU below which a pixel counts as air for [`Sampler`]'s tissue test.
pub const AIR_HU: f32 = -900.0;

/// Slices of one run, normalised to [-1, 1] by the run's window.
#[derive(Debug, Clone)]
pub struct SliceSet {
    /// Low-dose slices.
    pub low: Vec<Array2<f32>>,
    /// Full-dose slices; `paired` says whether `full[i]` is `low[i]`'s partner.
    pub full: Vec<Array2<f32>>,
    pub paired: bool,
    /// Slice names (the file stems of the low-dose slices).
    pub names: Vec<String>,
    /// A description for the run's records.
    pub description: String,
}

impl SliceSet {
    /// The pairs of one split of an AAPM-layout dataset.
    pub fn from_aapm(root: &Path, split: Split, norm: &Normaliser) -> Result<Self, DataError> {
        let pairs = aapm::list_pairs(root, split)?;
        let mut set = SliceSet {
            low: Vec::with_capacity(pairs.len()),
            full: Vec::with_capacity(pairs.len()),
            paired: true,
            names: Vec::with_capacity(pairs.len()),
            description: format!("{} ({split} split)", root.display()),
        };
        for p in &pairs {
            let (fd, qd) = aapm::load_pair(p, None)?;
            set.full.push(normalise(fd, norm, &p.fd)?);
            set.low.push(normalise(qd, norm, &p.qd)?);
            set.names.push(p.name.clone());
        }
        Ok(set)
    }

    /// Unpaired slices: any input the imaging crate reads (DICOM series folder,
    /// `.npy` file or folder, `.inv3`).
    pub fn unpaired(low: &Path, full: &Path, norm: &Normaliser) -> Result<Self, DataError> {
        let read = |p: &Path| -> Result<Vec<Array2<f32>>, DataError> {
            ldct_imaging::read::read_ct(p)?
                .into_iter()
                .map(|img| normalise(img.hu, norm, p))
                .collect()
        };
        let low_slices = read(low)?;
        let full_slices = read(full)?;
        Ok(SliceSet {
            names: (0..low_slices.len()).map(|i| format!("{i:04}")).collect(),
            low: low_slices,
            full: full_slices,
            paired: false,
            description: format!("low {}, full {} (unpaired)", low.display(), full.display()),
        })
    }

    pub fn len(&self) -> usize {
        self.low.len()
    }

    pub fn is_empty(&self) -> bool {
        self.low.is_empty()
    }

    /// Keeps at most `n` slices, evenly spaced (paired sets only).
    pub fn evenly_spaced(mut self, n: usize) -> Self {
        let len = self.len();
        if n == 0 || n >= len {
            return self;
        }
        let keep: Vec<usize> = (0..n).map(|i| i * len / n + len / (2 * n)).collect();
        let pick = |v: &mut Vec<Array2<f32>>| {
            *v = keep.iter().map(|&i| v[i].clone()).collect();
        };
        pick(&mut self.low);
        if self.paired {
            pick(&mut self.full);
        }
        self.names = keep.iter().map(|&i| self.names[i].clone()).collect();
        self
    }
}

fn normalise(
    mut hu: Array2<f32>,
    norm: &Normaliser,
    path: &Path,
) -> Result<Array2<f32>, DataError> {
    if hu.iter().any(|v| !v.is_finite()) {
        return Err(DataError::Invalid(format!(
            "{}: holds NaN or infinite values",
            path.display()
        )));
    }
    hu.mapv_inplace(|v| norm.forward(v));
    Ok(hu)
}

/// One batch: `[batch, 1, patch, patch]` row-major, normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub step: u64,
    pub low: Vec<f32>,
    pub full: Vec<f32>,
    pub batch: usize,
    pub patch: usize,
}

/// Draws the patches of a step.
#[derive(Debug, Clone)]
pub struct Sampler {
    pub patch: usize,
    pub batch: usize,
    pub augment: bool,
    pub min_tissue: f32,
    /// `min_tissue`'s threshold in the normalised range.
    air: f32,
    seed: u64,
}

impl Sampler {
    pub fn new(
        patch: usize,
        batch: usize,
        augment: bool,
        min_tissue: f32,
        norm: &Normaliser,
        seed: u64,
    ) -> Self {
        Self {
            patch,
            batch,
            augment,
            min_tissue,
            air: norm.forward(AIR_HU),
            seed,
        }
    }

    /// The batch of `step` (deterministic in the seed and the step).
    pub fn batch(&self, set: &SliceSet, step: u64) -> Result<Batch, DataError> {
        let mut rng = StdRng::seed_from_u64(derive_seed(self.seed, step));
        let n = self.batch * self.patch * self.patch;
        let mut out = Batch {
            step,
            low: Vec::with_capacity(n),
            full: Vec::with_capacity(n),
            batch: self.batch,
            patch: self.patch,
        };
        for _ in 0..self.batch {
            let i = rng.random_range(0..set.low.len());
            if set.paired {
                let (y, x) = self.crop_origin(&mut rng, &set.full[i], &set.low[i])?;
                let t = self.transform(&mut rng);
                self.extend(&mut out.low, &set.low[i], y, x, t);
                self.extend(&mut out.full, &set.full[i], y, x, t);
            } else {
                let j = rng.random_range(0..set.full.len());
                let (y, x) = self.crop_origin(&mut rng, &set.low[i], &set.low[i])?;
                let t = self.transform(&mut rng);
                self.extend(&mut out.low, &set.low[i], y, x, t);
                let (y, x) = self.crop_origin(&mut rng, &set.full[j], &set.full[j])?;
                let t = self.transform(&mut rng);
                self.extend(&mut out.full, &set.full[j], y, x, t);
            }
        }
        Ok(out)
    }

    /// A crop origin whose patch is not mostly air (up to 20 draws).
    fn crop_origin(
        &self,
        rng: &mut StdRng,
        a: &Array2<f32>,
        b: &Array2<f32>,
    ) -> Result<(usize, usize), DataError> {
        let (h, w) = a.dim();
        let p = self.patch;
        if h < p || w < p {
            return Err(DataError::Invalid(format!(
                "a {h}x{w} slice is smaller than the {p}x{p} patch"
            )));
        }
        let mut best = (0, 0, -1.0f32);
        for _ in 0..20 {
            let y = rng.random_range(0..=h - p);
            let x = rng.random_range(0..=w - p);
            let tissue = |img: &Array2<f32>| {
                let v = img.slice(s![y..y + p, x..x + p]);
                v.iter().filter(|&&v| v > self.air).count() as f32 / (p * p) as f32
            };
            let t = tissue(a).min(tissue(b));
            if t >= self.min_tissue {
                return Ok((y, x));
            }
            if t > best.2 {
                best = (y, x, t);
            }
        }
        Ok((best.0, best.1))
    }

    /// (transpose, flip rows, flip columns): the 8 symmetries of the square.
    fn transform(&self, rng: &mut StdRng) -> (bool, bool, bool) {
        if !self.augment {
            return (false, false, false);
        }
        let k: u8 = rng.random_range(0..8);
        (k & 1 != 0, k & 2 != 0, k & 4 != 0)
    }

    fn extend(
        &self,
        out: &mut Vec<f32>,
        img: &Array2<f32>,
        y: usize,
        x: usize,
        t: (bool, bool, bool),
    ) {
        let p = self.patch;
        let (transpose, flip_r, flip_c) = t;
        for r in 0..p {
            for c in 0..p {
                let (mut rr, mut cc) = if transpose { (c, r) } else { (r, c) };
                if flip_r {
                    rr = p - 1 - rr;
                }
                if flip_c {
                    cc = p - 1 - cc;
                }
                out.push(img[(y + rr, x + cc)]);
            }
        }
    }
}

/// Batches of steps `start..end` made on a background thread, in order.
pub struct Prefetcher {
    rx: Receiver<Result<Batch, DataError>>,
    handle: Option<JoinHandle<()>>,
}

impl Prefetcher {
    pub fn start(
        set: std::sync::Arc<SliceSet>,
        sampler: Sampler,
        start: u64,
        end: u64,
        depth: usize,
    ) -> Self {
        let (tx, rx) = sync_channel(depth.max(1));
        let handle = std::thread::Builder::new()
            .name("ldct-prefetch".into())
            .spawn(move || {
                for step in start..end {
                    if tx.send(sampler.batch(&set, step)).is_err() {
                        return; // the trainer stopped
                    }
                }
            })
            .ok();
        Self { rx, handle }
    }

    /// The next batch; `None` when the thread has produced all of them.
    pub fn next_batch(&self) -> Option<Result<Batch, DataError>> {
        self.rx.recv().ok()
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        // Unblock the producer (its send fails once the receiver is gone).
        let (_, dummy) = sync_channel(0);
        drop(std::mem::replace(&mut self.rx, dummy));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A run's data as the configuration describes it.
#[derive(Debug)]
pub struct RunData {
    pub train: SliceSet,
    pub val: Option<SliceSet>,
    pub root: Option<PathBuf>,
}

/// Loads the training (and validation) slices of a configuration.
pub fn load(config: &super::TrainConfig) -> Result<RunData, DataError> {
    let norm = normaliser(config.data.window)?;
    if let (Some(low), Some(full)) = (&config.data.low, &config.data.full) {
        let train = SliceSet::unpaired(low, full, &norm)?;
        check_sizes(&train, config.data.patch)?;
        return Ok(RunData {
            train,
            val: None,
            root: None,
        });
    }
    let root = config
        .data_root()
        .ok_or_else(|| DataError::Invalid("no training data configured".into()))?;
    if !root.is_dir() {
        return Err(DataError::Invalid(format!(
            "{}: no such dataset folder (build one with `make data` or `ldct-train dataset import`)",
            root.display()
        )));
    }
    let mut train = SliceSet::from_aapm(&root, Split::Train, &norm)?;
    if matches!(
        config.method,
        ldct_proto::manifest::Method::Cyclegan
            | ldct_proto::manifest::Method::Iscl
            | ldct_proto::manifest::Method::Noise2score
    ) {
        // Unpaired sampling: low- and full-dose slices are drawn independently
        // (Noise2Score's low-dose crops so never look at the full-dose slice).
        train.paired = false;
    }
    check_sizes(&train, config.data.patch)?;
    let val = if config.data.val_split.is_empty() {
        None
    } else {
        let split: Split = config
            .data
            .val_split
            .parse()
            .map_err(|e: ldct_imaging::ImagingError| DataError::Invalid(e.to_string()))?;
        Some(SliceSet::from_aapm(&root, split, &norm)?.evenly_spaced(config.data.val_slices))
    };
    Ok(RunData {
        train,
        val,
        root: Some(root),
    })
}

pub fn normaliser(window: [f32; 2]) -> Result<Normaliser, DataError> {
    Ok(Normaliser {
        window: Window::new(window[0], window[1])?,
        ..Normaliser::default()
    })
}

fn check_sizes(set: &SliceSet, patch: usize) -> Result<(), DataError> {
    if set.low.is_empty() || set.full.is_empty() {
        return Err(DataError::Invalid("the training set is empty".into()));
    }
    for img in set.low.iter().chain(&set.full) {
        let (h, w) = img.dim();
        if h < patch || w < patch {
            return Err(DataError::Invalid(format!(
                "a {h}x{w} training slice is smaller than the {patch}x{patch} patch (lower data.patch)"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(paired: bool) -> SliceSet {
        let img =
            |k: f32| Array2::from_shape_fn((20, 24), |(r, c)| k + (r * 24 + c) as f32 / 1000.0);
        SliceSet {
            low: vec![img(0.0), img(0.1)],
            full: vec![img(0.5), img(0.6)],
            paired,
            names: vec!["a".into(), "b".into()],
            description: String::new(),
        }
    }

    #[test]
    fn batches_depend_only_on_seed_and_step() {
        let norm = Normaliser::default();
        let s = Sampler::new(8, 3, true, 0.0, &norm, 7);
        let set = set(true);
        assert_eq!(s.batch(&set, 5).unwrap(), s.batch(&set, 5).unwrap());
        assert_ne!(s.batch(&set, 5).unwrap().low, s.batch(&set, 6).unwrap().low);
        let b = s.batch(&set, 5).unwrap();
        assert_eq!(b.low.len(), 3 * 64);
        // Paired crops: full = low + 0.5 pixel for pixel, whatever the transform.
        for (l, f) in b.low.iter().zip(&b.full) {
            assert!((f - l - 0.5).abs() < 1e-6);
        }
        // The prefetcher yields the same batches in order.
        let p = Prefetcher::start(std::sync::Arc::new(set.clone()), s.clone(), 3, 6, 2);
        for step in 3..6 {
            assert_eq!(
                p.next_batch().unwrap().unwrap(),
                s.batch(&set, step).unwrap()
            );
        }
        assert!(p.next_batch().is_none());
    }

    #[test]
    fn augmentations_are_the_square_symmetries() {
        let norm = Normaliser::default();
        let s = Sampler::new(4, 1, true, 0.0, &norm, 1);
        let img = Array2::from_shape_fn((4, 4), |(r, c)| (r * 4 + c) as f32);
        let mut seen = std::collections::BTreeSet::new();
        for k in 0..8u8 {
            let mut out = vec![];
            s.extend(&mut out, &img, 0, 0, (k & 1 != 0, k & 2 != 0, k & 4 != 0));
            let mut sorted = out.clone();
            sorted.sort_by(f32::total_cmp);
            assert_eq!(sorted, (0..16).map(|v| v as f32).collect::<Vec<_>>());
            seen.insert(out.iter().map(|v| *v as u8).collect::<Vec<_>>());
        }
        assert_eq!(seen.len(), 8);
    }

    #[test]
    fn small_slices_are_refused() {
        let norm = Normaliser::default();
        let s = Sampler::new(32, 1, false, 0.0, &norm, 1);
        let e = s.batch(&set(true), 0).unwrap_err();
        assert!(e.to_string().contains("smaller than the 32x32"), "{e}");
    }
}
