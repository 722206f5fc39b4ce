//! Training: the configuration ([`config`]), the data pipeline ([`data`]), the
//! methods ([`supervised`], [`cyclegan`], [`iscl`], [`noise2score`] behind the [`Method`] trait), Adam
//! ([`adam`]), the weight average ([`ema`]), the image pool ([`pool`]), evaluation ([`eval`]), the loss plot
//! ([`plot`]) and the loop ([`run`], [`fit`]), which writes the run folder that
//! [`crate::run_dir`] defines (its files, `run.json`, how it is read back).

pub mod adam;
mod adam_cpu;
pub mod adversary;
pub mod config;
pub mod cyclegan;
pub mod data;
pub mod disc_view;
pub mod ema;
pub mod eval;
pub mod iscl;
pub mod method;
pub mod noise2score;
pub mod noise_correlation;
pub mod plot;
pub mod pool;
pub mod run;
pub mod supervised;

pub use config::TrainConfig;
pub use method::Method;
pub use run::{build_method, fit, load_generator, FitOptions, FitOutcome, TrainError};
