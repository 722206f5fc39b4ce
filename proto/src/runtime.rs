//! Locating and loading the ONNX Runtime shared library.
//!
//! ldct never downloads ONNX Runtime: the library comes from PyPI's `onnxruntime`
//! wheel, installed in the project venv by `scripts/setup.sh`
//! (`.venv/lib/python3.*/site-packages/onnxruntime/capi/libonnxruntime.so.1.*`;
//! the wheel has no plain `.so` symlink). The path is taken from `ORT_DYLIB_PATH`
//! (the Makefile sets it) or, failing that, discovered in a `.venv` of the
//! current directory or of an ancestor of the executable.
//!
//! ONNX Runtime allows one environment per process: [`init`] creates it once and
//! later calls return the same result.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Environment variable naming the ONNX Runtime shared library.
pub const ORT_DYLIB_ENV: &str = "ORT_DYLIB_PATH";

#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime library not found: set {ORT_DYLIB_ENV} to libonnxruntime.so.1.* \
         (run `make setup` to install the onnxruntime wheel into .venv; the Makefile sets {ORT_DYLIB_ENV} for you). \
         Searched: {searched}"
    )]
    NotFound { searched: String },
    #[error("{ORT_DYLIB_ENV}={path} does not exist or is not a file")]
    Missing { path: String },
    #[error("cannot load ONNX Runtime from {path}: {message}")]
    Load { path: String, message: String },
    #[error("cannot create the ONNX Runtime environment: {0}")]
    Environment(String),
}

/// The loaded library and the process's ONNX Runtime environment (sessions are
/// built from it: `ort::session::Session::builder(&runtime.environment)`).
#[derive(Debug)]
pub struct Runtime {
    pub library: PathBuf,
    pub environment: ort::environment::Environment,
}

static RUNTIME: OnceLock<Result<Runtime, RuntimeError>> = OnceLock::new();

/// Finds the library: `ORT_DYLIB_PATH` if set (it must exist), else a project
/// venv next to the working directory or an ancestor of the executable.
pub fn locate() -> Result<PathBuf, RuntimeError> {
    if let Some(p) = std::env::var_os(ORT_DYLIB_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(p);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(RuntimeError::Missing {
                path: path.display().to_string(),
            })
        };
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    let mut searched = Vec::new();
    for root in roots {
        let venv = root.join(".venv");
        if let Some(found) = find_in_venv(&venv) {
            return Ok(found);
        }
        searched.push(venv.display().to_string());
    }
    searched.dedup();
    Err(RuntimeError::NotFound {
        searched: format!("${ORT_DYLIB_ENV} (unset), {}", searched.join(", ")),
    })
}

/// `VENV/lib/python3.*/site-packages/onnxruntime/capi/libonnxruntime.so.1.*`,
/// the newest when several match.
pub fn find_in_venv(venv: &Path) -> Option<PathBuf> {
    let lib = venv.join("lib");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&lib)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path().join("site-packages/onnxruntime/capi"))
        .filter_map(|capi| std::fs::read_dir(capi).ok())
        .flat_map(|rd| rd.filter_map(Result::ok).map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so.1"))
        })
        .collect();
    found.sort();
    found.pop()
}

/// Loads ONNX Runtime and creates the process's one environment (idempotent).
pub fn init() -> Result<&'static Runtime, RuntimeError> {
    match RUNTIME.get_or_init(init_once) {
        Ok(rt) => Ok(rt),
        Err(e) => Err(e.clone()),
    }
}

fn init_once() -> Result<Runtime, RuntimeError> {
    let library = locate()?;
    let builder = ort::init_from(&library).map_err(|e| RuntimeError::Load {
        path: library.display().to_string(),
        message: e.to_string(),
    })?;
    let environment = builder
        .with_name("ldct")
        .build()
        .map_err(|e| RuntimeError::Environment(e.to_string()))?;
    tracing::info!(library = %library.display(), "ONNX Runtime loaded");
    Ok(Runtime {
        library,
        environment,
    })
}
