//! `ldct-train dataset gaussian`: a dataset with synthetic white Gaussian noise of a
//! known sigma on real CT, for methods whose noise model is Gaussian (Noise2Score's
//! `gaussian` Tweedie formula is exact there).
//!
//! From an AAPM-layout dataset `FROM`, every pair of both splits becomes
//! `fd = FROM's fd` (unchanged) and `qd = fd + N(0, sigma_hu^2)` in HU (no
//! clipping: the network's window clips). Slice `NAME` of split `S` gets the noise
//! stream `derive_seed(derive_seed(seed, S), index of NAME in S)`, so the bytes
//! depend only on the source, `sigma_hu` and the seed. `dataset.json` records the
//! source folder, the noise and the seed.

use std::path::{Path, PathBuf};

use ldct_imaging::aapm::{self, Split};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use serde_json::json;

use crate::simulate::dose::derive_seed;

/// Errors of making the dataset.
#[derive(Debug, thiserror::Error)]
pub enum GaussianError {
    #[error(transparent)]
    Imaging(#[from] ldct_imaging::ImagingError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// What to make.
#[derive(Debug, Clone)]
pub struct GaussianOptions {
    /// The source dataset (its `fd` slices are the clean images).
    pub from: PathBuf,
    pub out: PathBuf,
    /// Noise sigma in HU.
    pub sigma_hu: f64,
    pub seed: u64,
    /// Overwrite an existing `out`.
    pub force: bool,
}

/// Pairs written per split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GaussianSummary {
    pub train: usize,
    pub test: usize,
}

/// Writes the dataset (see the module docs).
pub fn make_gaussian(opts: &GaussianOptions) -> Result<GaussianSummary, GaussianError> {
    if !(opts.sigma_hu > 0.0 && opts.sigma_hu.is_finite()) {
        return Err(GaussianError::Invalid(format!(
            "--sigma-hu must be positive, got {}",
            opts.sigma_hu
        )));
    }
    if opts.out.join("dataset.json").exists() && !opts.force {
        return Err(GaussianError::Invalid(format!(
            "{} already holds a dataset: --force overwrites it",
            opts.out.display()
        )));
    }
    if same_path(&opts.from, &opts.out) {
        return Err(GaussianError::Invalid(
            "--out must differ from --from".into(),
        ));
    }
    let noise = Normal::new(0.0f64, opts.sigma_hu)
        .map_err(|e| GaussianError::Invalid(format!("noise: {e}")))?;
    let mut counts = [0usize; 2];
    for (si, split) in [Split::Train, Split::Test].into_iter().enumerate() {
        let pairs = match aapm::list_pairs(&opts.from, split) {
            Ok(p) => p,
            // A dataset may lack a test split.
            Err(_) if split == Split::Test => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        for (i, pair) in pairs.iter().enumerate() {
            let (fd, _) = aapm::load_pair(pair, None)?;
            let mut rng =
                StdRng::seed_from_u64(derive_seed(derive_seed(opts.seed, si as u64), i as u64));
            let qd = fd.mapv(|v| (f64::from(v) + noise.sample(&mut rng)) as f32);
            aapm::write_pair(&opts.out, split, &pair.name, &fd, &qd)?;
            counts[si] += 1;
        }
    }
    if counts[0] == 0 {
        return Err(GaussianError::Invalid(format!(
            "{}: no training pairs",
            opts.from.display()
        )));
    }
    let record = json!({
        "format": "ldct-dataset/1",
        "tool": format!("ldct-train {}", env!("CARGO_PKG_VERSION")),
        "layout": "{train,test}/{fd,qd}/NAME.npy, pairs by file name",
        "units": "HU, float32",
        "source": {"kind": "aapm", "path": opts.from.display().to_string()},
        "simulation": {
            "kind": "gaussian",
            "sigma_hu": opts.sigma_hu,
            "seed": opts.seed,
            "pairs": "fd = the source's fd; qd = fd + N(0, sigma_hu^2) per pixel, white, unclipped",
        },
        "split": {"train": counts[0], "test": counts[1]},
    });
    let path = opts.out.join("dataset.json");
    let text = serde_json::to_string_pretty(&record).unwrap_or_default() + "\n";
    std::fs::write(&path, text).map_err(|source| GaussianError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok(GaussianSummary {
        train: counts[0],
        test: counts[1],
    })
}

fn same_path(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}
