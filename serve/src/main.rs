//! `ldct-serve`: loads ONNX Runtime and the model folders.
//!
//! The HTTP API (denoise, Open Inference Protocol v2, metrics) is built in the
//! server issue; until then this binary validates the runtime and the models it
//! would serve, then says clearly that serving is not available yet.

use anyhow::Context;
use clap::Parser;
use ldct_proto::model_dir::ModelDir;
use ldct_serve::config::Config;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = Config::parse();
    let rt = ldct_proto::runtime::init().context("loading ONNX Runtime")?;
    tracing::info!(library = %rt.library.display(), "ONNX Runtime ready");
    let dirs = if config.models.is_dir() {
        ModelDir::candidates(&config.models)?
    } else {
        Vec::new()
    };
    for dir in &dirs {
        match ModelDir::open(dir) {
            Ok(m) => tracing::info!(name = %m.manifest.name, version = %m.manifest.version, "model found"),
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "model folder rejected"),
        }
    }
    if dirs.is_empty() {
        tracing::warn!(models = %config.models.display(), "no model folders found");
    }
    anyhow::bail!(
        "the ldct HTTP server is not built yet (it arrives with the server issue); \
         ONNX Runtime and {} model folder(s) under {} were checked",
        dirs.len(),
        config.models.display()
    )
}
