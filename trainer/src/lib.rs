//! ldct-train: the trainer library behind the `ldct-train` binary.
//!
//! - [`cli`]: the command-line interface, one module per subcommand.
//! - [`nn`]: tensor ops Candle lacks (reflection pad, instance norm), the conv backend switch.
//! - [`model`]: Candle networks built from `ldct_proto::arch`, weights as safetensors.

pub mod cli;
pub mod dataset;
pub mod model;
pub mod nn;
pub mod simulate;
