//! Locating and loading the ONNX Runtime shared library.
//!
//! ldct never downloads ONNX Runtime: the library comes from PyPI's `onnxruntime`
//! wheel, installed in the project venv by `scripts/setup.sh`
//! (`.venv/lib/python3.*/site-packages/onnxruntime/capi/libonnxruntime.so.1.*`;
//! the wheel has no plain `.so` symlink). The path is taken from `ORT_DYLIB_PATH`
//! (the Makefile sets it) or, failing that, discovered in a `.venv` of the
//! current directory or of an ancestor of the executable.
//!
//! The library's version is read before it is used ([`library_version`]): one older
//! than [`MIN_VERSION`] (the C API the `ort` crate is built against) is refused with
//! the version found and the one needed, and the version is logged and kept in
//! [`Runtime::version`]. The version the project installs is pinned in
//! `scripts/requirements.txt` and the Dockerfiles (a test keeps them equal).
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
    #[error(
        "{path} is ONNX Runtime {version}; ldct needs {}.{} or newer \
         (`make setup` installs the pinned version from scripts/requirements.txt)",
        MIN_VERSION.0, MIN_VERSION.1
    )]
    TooOld { path: String, version: String },
}

/// The oldest ONNX Runtime ldct runs on (major, minor): the C API version the `ort`
/// crate is built against (its `api-NN` feature).
pub const MIN_VERSION: (u32, u32) = (1, ort::MINOR_VERSION);

/// The loaded library and the process's ONNX Runtime environment (sessions are
/// built from it: `ort::session::Session::builder(&runtime.environment)`).
#[derive(Debug)]
pub struct Runtime {
    pub library: PathBuf,
    /// The library's own version string (e.g. `1.32.0`).
    pub version: String,
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

/// `major.minor` of a version string (`1.32.0` -> (1, 32)).
pub fn parse_version(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.trim().split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The version ONNX Runtime at `path` reports (`OrtGetApiBase()->GetVersionString()`).
pub fn library_version(path: &Path) -> Result<String, RuntimeError> {
    let load_err = |message: String| RuntimeError::Load {
        path: path.display().to_string(),
        message,
    };
    // SAFETY: loading runs the library's initialisers; this is the library `ort`
    // loads next (the same path), an ONNX Runtime build whose initialisers are safe.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| load_err(e.to_string()))?;
    // SAFETY: `OrtGetApiBase` has this signature in every ONNX Runtime release (the C
    // API's stable entry point); the symbol is only used while `lib` is alive.
    let get_base: libloading::Symbol<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase> =
        unsafe { lib.get(b"OrtGetApiBase\0") }
            .map_err(|_| load_err("it does not export OrtGetApiBase".into()))?;
    // SAFETY: the entry point takes no arguments and returns a static table.
    let base = unsafe { get_base() };
    if base.is_null() {
        return Err(load_err("OrtGetApiBase returned null".into()));
    }
    // SAFETY: `base` is the library's static, non-null OrtApiBase; GetVersionString
    // returns a static NUL-terminated string the caller must not free.
    let version = unsafe {
        let s = ((*base).GetVersionString)();
        if s.is_null() {
            return Err(load_err("GetVersionString returned null".into()));
        }
        std::ffi::CStr::from_ptr(s).to_string_lossy().into_owned()
    };
    Ok(version)
}

/// Refuses a version older than [`MIN_VERSION`] (or one that does not parse).
pub fn check_version(path: &Path, version: &str) -> Result<(), RuntimeError> {
    match parse_version(version) {
        Some(v) if v >= MIN_VERSION => Ok(()),
        _ => Err(RuntimeError::TooOld {
            path: path.display().to_string(),
            version: version.to_owned(),
        }),
    }
}

fn init_once() -> Result<Runtime, RuntimeError> {
    let library = locate()?;
    let version = library_version(&library)?;
    check_version(&library, &version)?;
    let builder = ort::init_from(&library).map_err(|e| RuntimeError::Load {
        path: library.display().to_string(),
        message: e.to_string(),
    })?;
    let environment = builder
        .with_name("ldct")
        .build()
        .map_err(|e| RuntimeError::Environment(e.to_string()))?;
    tracing::info!(library = %library.display(), %version, "ONNX Runtime loaded");
    Ok(Runtime {
        library,
        version,
        environment,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_older_than_the_c_api_are_refused() {
        let p = Path::new("/x/libonnxruntime.so");
        assert_eq!(parse_version("1.32.0"), Some((1, 32)));
        assert_eq!(parse_version("2.0"), Some((2, 0)));
        assert_eq!(parse_version("1"), None);
        assert!(check_version(p, "1.32.0").is_ok());
        assert!(check_version(p, &format!("1.{}.0", MIN_VERSION.1)).is_ok());
        assert!(check_version(p, "2.0.1").is_ok());
        let e = check_version(p, &format!("1.{}.9", MIN_VERSION.1 - 1)).unwrap_err();
        assert!(e.to_string().contains("or newer"), "{e}");
        assert!(check_version(p, "garbage").is_err());
    }
}
