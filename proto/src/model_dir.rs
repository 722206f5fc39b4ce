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

    /// Every sub-folder of `root` holding a `manifest.json`, sorted by name.
    pub fn candidates(root: &Path) -> Result<Vec<PathBuf>, ModelDirError> {
        let rd = std::fs::read_dir(root).map_err(|source| ModelDirError::Io {
            path: root.display().to_string(),
            source,
        })?;
        let mut dirs: Vec<PathBuf> = rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.join(MANIFEST_FILE).is_file())
            .collect();
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
