//! Helpers shared by the training integration tests (train_loop, iscl, noise2score).

use std::path::Path;

use ldct_imaging::aapm::{self, Split};
use ldct_train::train::{fit, FitOptions, TrainConfig};
use ndarray::Array2;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

/// Smooth "anatomy" (a disk of soft tissue with brighter blobs in air) and a noisy
/// partner with 60 HU Gaussian noise.
pub fn synthetic_dataset(root: &Path) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let noise = Normal::new(0.0f32, 60.0).unwrap();
    for i in 0..6 {
        let n = 32;
        let full = Array2::from_shape_fn((n, n), |(r, c)| {
            let (y, x) = (r as f32 - 15.5, c as f32 - 15.5);
            let d = (x * x + y * y).sqrt();
            if d > 14.0 {
                -1000.0
            } else {
                let blob = ((x - 4.0 + i as f32).powi(2) + (y + 3.0).powi(2)).sqrt();
                40.0 + if blob < 5.0 { 300.0 } else { 0.0 } + 20.0 * (x / 5.0).sin()
            }
        });
        let low = full.mapv(|v| v + noise.sample(&mut rng));
        let split = if i < 4 { Split::Train } else { Split::Test };
        aapm::write_pair(root, split, &format!("{i:04}"), &full, &low).unwrap();
    }
}

pub fn opts(run: &Path) -> FitOptions {
    FitOptions {
        run: run.to_path_buf(),
        ..FitOptions::default()
    }
}

/// Trains `config` into `run` and stops after `stop` steps (as `--max-steps`).
pub fn fit_stopped(config: &TrainConfig, run: &Path, stop: u64) {
    let first = fit(
        config,
        &FitOptions {
            max_steps: Some(stop),
            ..opts(run)
        },
    )
    .unwrap();
    assert_eq!(first.steps_done, stop);
}

/// Resumes `run` (`--resume`) to the end of its schedule, `total` steps.
pub fn fit_resumed(run: &Path, total: u64) {
    let resumed = fit(
        &TrainConfig::default(), // ignored: the run's own train.toml is used
        &FitOptions {
            resume: true,
            ..opts(run)
        },
    )
    .unwrap();
    assert_eq!(resumed.steps_done, total);
}

/// metrics.csv column `name` as numbers (empty cells left out).
pub fn column(run: &Path, name: &str) -> Vec<f64> {
    let text = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let k = header
        .iter()
        .position(|h| *h == name)
        .unwrap_or_else(|| panic!("no {name} in {header:?}"));
    lines
        .filter_map(|l| l.split(',').nth(k).and_then(|v| v.parse().ok()))
        .collect()
}

pub fn assert_same_files(a: &Path, b: &Path, files: &[&str]) {
    for f in files {
        let (x, y) = (
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
        );
        assert!(
            x == y,
            "{f} differs between the uninterrupted ({}) and the resumed run ({})",
            a.display(),
            b.display()
        );
    }
}

pub fn metrics_without_time(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("metrics.csv"))
        .unwrap()
        .lines()
        .map(|l| {
            l.rsplit_once(',')
                .map(|(a, _)| a.to_string())
                .unwrap_or_default()
        })
        .collect()
}

/// A tiny run of `method` on the dataset at `root`: ResNet ngf 4 / 1 block and
/// PatchGAN ndf 4 / 1 layer, batch 4 of 16x16, 3 epochs of 4 steps (1 decaying);
/// `extra` is appended TOML (e.g. a method section).
pub fn tiny_config(method: impl std::fmt::Display, root: &Path, extra: &str) -> TrainConfig {
    let text = format!(
        r#"
method = "{method}"
seed = 5
[data]
root = "{}"
patch = 16
batch = 4
val_slices = 2
min_tissue = 0.0
prefetch = 2
[model]
generator = {{ kind = "resnet", ngf = 4, n_blocks = 1 }}
discriminator = {{ kind = "patchgan", ndf = 4, n_layers = 1 }}
[optim]
lr = 0.002
beta1 = 0.9
[schedule]
epochs = 3
steps_per_epoch = 4
decay_epochs = 1
{extra}
"#,
        root.display()
    );
    TrainConfig::from_toml(&text).unwrap()
}

/// Noise2Score's resolved parameters as a config would give them (every source
/// `Config`, no estimate, one annealing step), for tests of the Tweedie graph.
pub fn resolved_config(
    tweedie: ldct_train::train::noise2score::Tweedie,
    noise_scale: f64,
    smoothing: f64,
    correlation: Option<ldct_train::train::noise_correlation::NoiseCorrelation>,
) -> ldct_train::train::noise2score::Resolved {
    use ldct_train::train::noise2score::{Resolved, Source};
    Resolved {
        tweedie,
        parameter_source: Source::Config,
        noise_scale,
        noise_scale_source: Source::Config,
        estimate: None,
        sigma_hu: None,
        anneal_steps: 1,
        smoothing,
        correlation,
    }
}
