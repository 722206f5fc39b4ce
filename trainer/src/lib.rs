//! ldct-train: the trainer library behind the `ldct-train` binary.
//!
//! - [`cli`]: the command-line interface, one module per subcommand.
//! - [`nn`]: tensor ops Candle lacks (reflection pad, instance norm), the conv backend switch.
//! - [`model`]: Candle networks built from `ldct_proto::arch`, weights as safetensors.
//! - [`train`]: configuration, data pipeline, methods, the training loop, evaluation.
//! - [`run_dir`]: the run folder's files and `run.json` ([`run_dir::RunRecord`]), read
//!   through types by [`run_dir::RunDir::open`] (what `ldct-export` reads).
//! - [`simulate`], [`dataset`]: low-dose simulation and dataset import.

pub mod cli;
pub mod dataset;
pub mod model;
pub mod nn;
pub mod run_dir;
pub mod simulate;
pub mod train;
