//! A model folder: `model.onnx` + `manifest.json`, checked against each other.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::manifest::{Manifest, ManifestError, MANIFEST_FILE};

#[derive(Debug, thiserror::Error)]
pub enum ModelDirError {
    #[error("{0} is not a folder")]
    NotADir(String),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: SHA-256 {actual} does not match the manifest's {expected} (file changed after export?)")]
    Checksum {
        path: String,
        expected: String,
        actual: String,
    },
}

/// A verified model folder.
#[derive(Debug, Clone)]
pub struct ModelDir {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub onnx_path: PathBuf,
}

impl ModelDir {
    /// Reads the manifest, validates it and checks the ONNX file's SHA-256.
    pub fn open(dir: &Path) -> Result<Self, ModelDirError> {
        if !dir.is_dir() {
            return Err(ModelDirError::NotADir(dir.display().to_string()));
        }
        let manifest = Manifest::from_file(&dir.join(MANIFEST_FILE))?;
        if manifest.onnx.file.contains('/') || manifest.onnx.file.contains("..") {
            return Err(ModelDirError::Manifest(ManifestError::Invalid(format!(
                "onnx.file {:?} must be a plain file name inside the model folder",
                manifest.onnx.file
            ))));
        }
        let onnx_path = dir.join(&manifest.onnx.file);
        let actual = sha256_file(&onnx_path)?;
        if !actual.eq_ignore_ascii_case(&manifest.onnx.sha256) {
            return Err(ModelDirError::Checksum {
                path: onnx_path.display().to_string(),
                expected: manifest.onnx.sha256.clone(),
                actual,
            });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
            onnx_path,
        })
    }

    /// The model folders under `root`, sorted: `root` itself when it holds a
    /// `manifest.json` (a single model folder, as KServe mounts one at `/mnt/models`);
    /// else every sub-folder of `root` holding one, and every sub-folder of a
    /// sub-folder without one (`root/NAME/VERSION/`, versions side by side).
    pub fn candidates(root: &Path) -> Result<Vec<PathBuf>, ModelDirError> {
        if root.join(MANIFEST_FILE).is_file() {
            return Ok(vec![root.to_path_buf()]);
        }
        let subdirs = |dir: &Path| -> Result<Vec<PathBuf>, ModelDirError> {
            let rd = std::fs::read_dir(dir).map_err(|source| ModelDirError::Io {
                path: dir.display().to_string(),
                source,
            })?;
            Ok(rd
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect())
        };
        let mut dirs = Vec::new();
        for sub in subdirs(root)? {
            if sub.join(MANIFEST_FILE).is_file() {
                dirs.push(sub);
            } else if let Ok(versions) = subdirs(&sub) {
                dirs.extend(
                    versions
                        .into_iter()
                        .filter(|v| v.join(MANIFEST_FILE).is_file()),
                );
            }
        }
        dirs.sort();
        Ok(dirs)
    }
}

/// Lower-case hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> Result<String, ModelDirError> {
    let bytes = std::fs::read(path).map_err(|source| ModelDirError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok(sha256_hex(&bytes))
}

/// Lower-case hex SHA-256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
