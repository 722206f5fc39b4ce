//! Server configuration from flags and `LDCT_*` environment variables.

use std::path::PathBuf;

use clap::Parser;

#[derive(Debug, Clone, Parser)]
#[command(name = "ldct-serve", version, about = "ldct inference server")]
pub struct Config {
    /// Folder of model folders (each holds model.onnx + manifest.json).
    #[arg(long, env = "LDCT_MODELS", default_value = "models")]
    pub models: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "LDCT_BIND", default_value = "127.0.0.1:8080")]
    pub bind: String,
}
