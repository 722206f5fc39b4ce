//! Training: the configuration ([`config`]), the data pipeline ([`data`]), the
//! methods ([`supervised`], [`cyclegan`], [`iscl`], [`noise2score`] behind the [`Method`] trait), Adam
//! ([`adam`]), the image pool ([`pool`]), evaluation ([`eval`]), the loss plot
//! ([`plot`]) and the run folder and loop ([`run`], [`fit`]).
//!
//! A run folder holds everything about a run:
//!
//! | file | what |
//! |---|---|
//! | `train.toml` | the resolved configuration (every field) |
//! | `run.json` | method, data description and size, dose, window, seed, device |
//! | `arch.json`, `weights.safetensors` | the generator (low -> full dose) at the last checkpoint: what `eval`, `denoise` and `ldct-export` read |
//! | `checkpoint/` | every network, optimiser state and image pool, `state.json` (step): what `--resume` reads |
//! | `metrics.csv` | per epoch: step, learning rate, mean losses, validation PSNR/SSIM/RMSE |
//! | `loss.png` | the curves of `metrics.csv` |
//! | `samples/epoch_NNNN.png` | low dose, model, full dose and difference of a validation slice |
//! | `train.log` | what happened (start, epochs, checkpoints, interruption) |

pub mod adam;
pub mod adversary;
pub mod config;
pub mod cyclegan;
pub mod data;
pub mod disc_view;
pub mod eval;
pub mod iscl;
pub mod method;
pub mod noise2score;
pub mod plot;
pub mod pool;
pub mod run;
pub mod supervised;

pub use config::TrainConfig;
pub use method::Method;
pub use run::{build_method, fit, load_generator, FitOptions, FitOutcome, TrainError};
