//! The training data pipeline: slices in memory (normalised to the network range),
//! random square crops with flips and 90-degree rotations, batches prepared on a
//! background thread.
//!
//! The batch of step `s` depends only on the seed and `s` (its random stream is
//! `derive_seed(seed, s)`), never on timing or on where a run was resumed, so a
//! resumed run sees exactly the batches an uninterrupted one would.
//!
//! **Noise levels** (`data.noise_hu`): a paired set can keep each pair's noise
//! realisation `n = qd - fd` (HU) and its level `sigma` ([`NoisePool`]); a patch is
//! then drawn at a level `L` log-uniform in the range, its low-dose partner being
//! `fd + (L / sigma) n` (or `- n`). Projection-domain noise has variance proportional
//! to 1 / dose and the reconstruction is linear, so this is the same slice at dose
//! `dose * (sigma / L)^2` as long as the counts stay high enough for the log to be
//! linear in the noise (checked against real simulations by
//! `tests/noise_rescaling.rs`).

use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::JoinHandle;

use ldct_imaging::aapm::{self, Split};
use ldct_imaging::window::{Normaliser, Window};
use ndarray::{s, Array2};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::dataset::noise_level_hu;
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
    /// The pairs' noise realisations, when the set is drawn at noise levels.
    pub noise: Option<NoisePool>,
}

/// The noise realisation of every pair of a paired set, in HU.
#[derive(Debug, Clone)]
pub struct NoisePool {
    /// Full-dose slices in HU (unclipped).
    pub fd_hu: Vec<Array2<f32>>,
    /// `qd - fd` in HU.
    pub noise_hu: Vec<Array2<f32>>,
    /// Each pair's noise level (see [`noise_level_hu`]).
    pub sigma_hu: Vec<f32>,
    /// For noise-conditioned networks, per pair: the no-reference noise estimate
    /// ([`ldct_imaging::noise`]) of `fd` (its own texture, `a`) and of the noise alone
    /// (`b`, from the estimate `c` of `qd` as `sqrt(c^2 - a^2)`), so that the estimate
    /// of `fd + s n` is `sqrt(a^2 + s^2 b^2)` without estimating every drawn image.
    /// Empty unless [`SliceSet::with_noise_estimates`] was called.
    pub estimate_hu: Vec<(f32, f32)>,
}

/// The noise map value (normalised units) of a noise estimate in HU: the pixel
/// contract's rule ([`ldct_proto::contract::noise_map_value`]), shared with the server.
pub fn noise_map_value(estimate_hu: f32, norm: &Normaliser) -> f32 {
    ldct_proto::contract::noise_map_value(
        Some(estimate_hu),
        [norm.window.lo, norm.window.hi],
        [norm.range_lo, norm.range_hi],
    )
}

impl NoisePool {
    /// The low-dose partner of pair `i` at noise level `level` HU (`sign` -1 flips the
    /// realisation), normalised.
    fn low_at(&self, i: usize, level: f32, sign: f32, norm: &Normaliser) -> Array2<f32> {
        let s = sign * level / self.sigma_hu[i];
        let mut out = self.fd_hu[i].clone();
        out.zip_mut_with(&self.noise_hu[i], |f, n| *f = norm.forward(*f + s * n));
        out
    }
}

impl SliceSet {
    /// The pairs of one split of an AAPM-layout dataset.
    pub fn from_aapm(root: &Path, split: Split, norm: &Normaliser) -> Result<Self, DataError> {
        Self::load_aapm(root, split, norm, false)
    }

    /// [`SliceSet::from_aapm`], keeping each pair's noise realisation when `noise`
    /// (for drawing patches at other noise levels).
    pub fn load_aapm(
        root: &Path,
        split: Split,
        norm: &Normaliser,
        noise: bool,
    ) -> Result<Self, DataError> {
        let pairs = aapm::list_pairs(root, split)?;
        let mut set = SliceSet {
            low: Vec::with_capacity(pairs.len()),
            full: Vec::with_capacity(pairs.len()),
            paired: true,
            names: Vec::with_capacity(pairs.len()),
            description: format!("{} ({split} split)", root.display()),
            noise: None,
        };
        let mut pool = NoisePool {
            fd_hu: Vec::new(),
            noise_hu: Vec::new(),
            sigma_hu: Vec::new(),
            estimate_hu: Vec::new(),
        };
        for p in &pairs {
            let (fd, qd) = aapm::load_pair(p, None)?;
            if noise {
                let sigma = noise_level_hu(&fd, &qd)
                    .filter(|s| *s > 0.0)
                    .ok_or_else(|| {
                        DataError::Invalid(format!(
                        "{}: no noise level (fewer than 100 pixels above -500 HU, or qd = fd): \
                         this pair cannot be rescaled to other noise levels",
                        p.qd.display()
                    ))
                    })?;
                pool.noise_hu.push(&qd - &fd);
                pool.fd_hu.push(fd.clone());
                pool.sigma_hu.push(sigma);
            }
            set.full.push(normalise(fd, norm, &p.fd)?);
            set.low.push(normalise(qd, norm, &p.qd)?);
            set.names.push(p.name.clone());
        }
        if noise {
            set.noise = Some(pool);
        }
        Ok(set)
    }

    /// Adds the noise estimates a noise-conditioned network needs ([`NoisePool`]).
    pub fn with_noise_estimates(mut self) -> Result<Self, DataError> {
        let pool = self.noise.as_mut().ok_or_else(|| {
            DataError::Invalid("noise estimates need the pairs' noise (data.noise_hu)".into())
        })?;
        use rayon::prelude::*;
        pool.estimate_hu = (0..pool.fd_hu.len())
            .into_par_iter()
            .map(|i| {
                let fd = &pool.fd_hu[i];
                let a = ldct_imaging::noise::estimate_noise_hu(fd).unwrap_or(0.0);
                let c =
                    ldct_imaging::noise::estimate_noise_hu(&(fd + &pool.noise_hu[i])).unwrap_or(a);
                (a, (c * c - a * a).max(0.0).sqrt())
            })
            .collect();
        Ok(self)
    }

    /// Every pair at each of `levels` (HU), its noise rescaled as [`Sampler`] does
    /// (names get a `@NNhu` suffix). Needs a [`NoisePool`].
    pub fn at_levels(&self, levels: &[f32], norm: &Normaliser) -> Result<Self, DataError> {
        let pool = self.noise.as_ref().ok_or_else(|| {
            DataError::Invalid("noise levels need the pairs' noise (load with noise)".into())
        })?;
        let mut out = SliceSet {
            low: Vec::new(),
            full: Vec::new(),
            paired: true,
            names: Vec::new(),
            description: format!("{} at {levels:?} HU", self.description),
            noise: None,
        };
        for &level in levels {
            for i in 0..self.len() {
                out.low.push(pool.low_at(i, level, 1.0, norm));
                out.full.push(self.full[i].clone());
                out.names.push(format!("{}@{level:.0}hu", self.names[i]));
            }
        }
        Ok(out)
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
            noise: None,
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
        if let Some(pool) = &mut self.noise {
            pick(&mut pool.fd_hu);
            pick(&mut pool.noise_hu);
            pool.sigma_hu = keep.iter().map(|&i| pool.sigma_hu[i]).collect();
            if !pool.estimate_hu.is_empty() {
                pool.estimate_hu = keep.iter().map(|&i| pool.estimate_hu[i]).collect();
            }
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
    /// Per patch, the noise map value of a noise-conditioned network: the noise
    /// estimate of the patch's whole slice at its level, in the normalised range
    /// (empty unless the set has [`NoisePool`] estimates).
    pub noise_map: Vec<f32>,
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
    /// Noise levels `(lo, hi)` in HU to draw patches at (needs a [`NoisePool`]).
    noise_range: Option<(f32, f32)>,
    noise_flip: bool,
    norm: Normaliser,
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
            noise_range: None,
            noise_flip: false,
            norm: *norm,
        }
    }

    /// Draws every paired patch at a noise level log-uniform in `[lo, hi]` HU (see
    /// the module docs); `flip` uses the negated realisation for half of them.
    pub fn with_noise_levels(mut self, lo: f32, hi: f32, flip: bool) -> Self {
        self.noise_range = Some((lo, hi));
        self.noise_flip = flip;
        self
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
            noise_map: Vec::new(),
        };
        for _ in 0..self.batch {
            let i = rng.random_range(0..set.low.len());
            if set.paired {
                let (y, x) = self.crop_origin(&mut rng, &set.full[i], &set.low[i])?;
                let t = self.transform(&mut rng);
                match (self.noise_range, &set.noise) {
                    (Some((lo, hi)), Some(pool)) => {
                        let level = (lo.ln() + rng.random::<f32>() * (hi / lo).ln()).exp();
                        let sign = if self.noise_flip && rng.random::<bool>() {
                            -1.0
                        } else {
                            1.0
                        };
                        let s = sign * level / pool.sigma_hu[i];
                        if let Some(&(a, b)) = pool.estimate_hu.get(i) {
                            let est = (a * a + s * s * b * b).sqrt();
                            out.noise_map.push(noise_map_value(est, &self.norm));
                        }
                        let (fd, n) = (&pool.fd_hu[i], &pool.noise_hu[i]);
                        let norm = &self.norm;
                        self.extend_with(&mut out.low, y, x, t, |r, c| {
                            norm.forward(fd[(r, c)] + s * n[(r, c)])
                        });
                    }
                    (Some(_), None) => {
                        return Err(DataError::Invalid(
                            "noise levels need the pairs' noise (data.noise_hu with a set \
                             loaded without it)"
                                .into(),
                        ))
                    }
                    (None, _) => self.extend(&mut out.low, &set.low[i], y, x, t),
                }
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
        self.extend_with(out, y, x, t, |r, c| img[(r, c)]);
    }

    /// Appends the patch at `(y, x)` under transform `t`, pixel `(r, c)` of the source
    /// being `value(r, c)`.
    fn extend_with(
        &self,
        out: &mut Vec<f32>,
        y: usize,
        x: usize,
        t: (bool, bool, bool),
        value: impl Fn(usize, usize) -> f32,
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
                out.push(value(y + rr, x + cc));
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
    let rescale = config.data.noise_hu.is_some();
    let mut train = SliceSet::load_aapm(&root, Split::Train, &norm, rescale)?;
    if config.noise_conditioned() {
        train = train.with_noise_estimates()?;
    }
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
        let levels = &config.data.val_noise_hu;
        let set = SliceSet::load_aapm(&root, split, &norm, !levels.is_empty())?
            .evenly_spaced(config.data.val_slices);
        Some(if levels.is_empty() {
            set
        } else {
            set.at_levels(levels, &norm)?
        })
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
            noise: None,
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

    /// A paired set whose noise is +-10 HU in a checkerboard on 40 HU.
    fn noisy_set() -> (SliceSet, Normaliser) {
        let norm = Normaliser::default();
        let fd = Array2::from_elem((32, 32), 40.0f32);
        let n = Array2::from_shape_fn(
            (32, 32),
            |(r, c)| if (r + c) % 2 == 0 { 10.0 } else { -10.0 },
        );
        let qd = &fd + &n;
        let set = SliceSet {
            low: vec![qd.mapv(|v| norm.forward(v))],
            full: vec![fd.mapv(|v| norm.forward(v))],
            paired: true,
            names: vec!["a".into()],
            description: String::new(),
            noise: Some(NoisePool {
                fd_hu: vec![fd.clone()],
                noise_hu: vec![n],
                sigma_hu: vec![noise_level_hu(&fd, &qd).unwrap()],
                estimate_hu: Vec::new(),
            }),
        };
        (set, norm)
    }

    #[test]
    fn patches_are_drawn_at_log_uniform_noise_levels() {
        let (set, norm) = noisy_set();
        let s = Sampler::new(8, 1, true, 0.0, &norm, 3).with_noise_levels(5.0, 150.0, true);
        let (mut levels, mut signs) = (Vec::new(), [0usize; 2]);
        for step in 0..400 {
            let b = s.batch(&set, step).unwrap();
            let d: Vec<f32> = b
                .low
                .iter()
                .zip(&b.full)
                .map(|(l, f)| norm.inverse(*l) - norm.inverse(*f))
                .collect();
            // One level per patch: every pixel's |noise| is the level.
            let level = d[0].abs();
            assert!(d
                .iter()
                .all(|v| (v.abs() - level).abs() < 1e-2 * level.max(1.0)));
            assert!((5.0 - 1e-3..=150.0 + 1e-3).contains(&level), "{level}");
            levels.push(level);
            // The checkerboard's sign at (0, 0) after any square symmetry stays +1 for a
            // plain realisation (all 8 symmetries keep even parity at the corner).
            signs[usize::from(d[0] < 0.0)] += 1;
        }
        // Log-uniform: the median is near the geometric mean, sqrt(5 * 150) = 27.4.
        levels.sort_by(f32::total_cmp);
        let median = levels[levels.len() / 2];
        assert!((20.0..38.0).contains(&median), "median level {median}");
        assert!(levels[0] < 6.5 && levels[levels.len() - 1] > 120.0);
        assert!(signs[0] > 150 && signs[1] > 150, "signs {signs:?}");
        // Without the pool the sampler refuses instead of training on the wrong pairs.
        let mut plain = set.clone();
        plain.noise = None;
        assert!(s.batch(&plain, 0).is_err());
    }

    #[test]
    fn validation_sets_hold_each_level() {
        let (set, norm) = noisy_set();
        let v = set.at_levels(&[10.0, 30.0], &norm).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v.names, vec!["a@10hu", "a@30hu"]);
        for (k, level) in [10.0f32, 30.0].iter().enumerate() {
            let low = v.low[k].mapv(|x| norm.inverse(x));
            let full = v.full[k].mapv(|x| norm.inverse(x));
            let got = noise_level_hu(&full, &low).unwrap();
            assert!((got - level).abs() < 1e-2, "{got} vs {level}");
        }
    }

    #[test]
    fn small_slices_are_refused() {
        let norm = Normaliser::default();
        let s = Sampler::new(32, 1, false, 0.0, &norm, 1);
        let e = s.batch(&set(true), 0).unwrap_err();
        assert!(e.to_string().contains("smaller than the 32x32"), "{e}");
    }
}
