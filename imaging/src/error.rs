//! Errors of the imaging crate.

use std::path::PathBuf;

pub type Result<T, E = ImagingError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum ImagingError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid .npy data: {0}")]
    Npy(String),
    #[error("unsupported .npy dtype {0:?} (expected float32, float64, int16 or uint16)")]
    NpyDtype(String),
    #[error("unsupported array shape {shape:?}: {expected}")]
    Shape { shape: Vec<usize>, expected: String },
    #[error("not a DICOM file: {0}")]
    NotDicom(String),
    #[error("DICOM file is truncated or corrupt: {0}")]
    DicomCorrupt(String),
    #[error("DICOM object has no image: {0}")]
    NotAnImage(String),
    #[error("unsupported DICOM image: {0}")]
    DicomUnsupported(String),
    #[error("cannot decode DICOM pixel data: {0}")]
    DicomDecode(String),
    #[error("cannot write DICOM: {0}")]
    DicomWrite(String),
    #[error("PNG: {0}")]
    Png(String),
    #[error("raw volume: {0}")]
    Raw(String),
    #[error("dataset folder: {0}")]
    Dataset(String),
    #[error("images differ in size: {a:?} vs {b:?}")]
    SizeMismatch {
        a: (usize, usize),
        b: (usize, usize),
    },
    #[error("invalid window [{lo}, {hi}]: need finite lo < hi")]
    InvalidWindow { lo: f32, hi: f32 },
    #[error("image contains non-finite values (NaN or infinity)")]
    NonFinite,
    #[error("{0}")]
    Invalid(String),
}

impl ImagingError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ImagingError::Io {
            path: path.into(),
            source,
        }
    }
}
