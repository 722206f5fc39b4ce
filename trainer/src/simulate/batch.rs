//! Simulating many slices: simulators shared per image geometry, output file names,
//! progress bars, previews. Used by `ldct-train simulate` and `dataset import`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use indicatif::{ProgressBar, ProgressStyle};
use ldct_imaging::png::Panel;
use ldct_imaging::{CtImage, ImagingError};

use super::{pixel_spacing, ImageGrid, Pair, SimConfig, SimError, Simulator};

/// Errors of batch simulation and dataset building.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error(transparent)]
    Imaging(#[from] ImagingError),
    #[error(transparent)]
    Sim(#[from] SimError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("slice {index}: {source}")]
    Slice {
        index: usize,
        #[source]
        source: Box<BatchError>,
    },
    #[error("{0}")]
    Invalid(String),
}

impl BatchError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        BatchError::Io {
            path: path.into(),
            source,
        }
    }

    /// This error, attributed to slice `index`.
    pub fn at_slice(self, index: usize) -> Self {
        BatchError::Slice {
            index,
            source: Box::new(self),
        }
    }
}

/// How the pair is made (recorded in the JSON files).
pub const PAIR_NOTE: &str = "fd: noise-free projection of the input, same FBP as qd; \
     qd: Poisson(dose * I0 * exp(-p)) + N(0, electronic_noise^2) counts, floored, log, FBP";

type CacheKey = (usize, usize, u64, u64);

/// Simulators per distinct (size, pixel spacing), built on first use and shared by
/// threads.
#[derive(Debug)]
pub struct SimulatorCache {
    config: SimConfig,
    pixel_size: Option<f64>,
    map: Mutex<HashMap<CacheKey, Arc<Simulator>>>,
}

impl SimulatorCache {
    /// `pixel_size` (mm) overrides the slices' own spacing.
    pub fn new(config: SimConfig, pixel_size: Option<f64>) -> Self {
        Self {
            config,
            pixel_size,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The simulator for a slice, and whether its pixel size was assumed (neither
    /// `pixel_size` nor the slice's spacing given).
    pub fn get(&self, slice: &CtImage) -> Result<(Arc<Simulator>, bool), BatchError> {
        let (rows, cols) = slice.dim();
        let (spacing, assumed) = pixel_spacing(self.pixel_size, slice.pixel_spacing, rows, cols);
        let key = (rows, cols, spacing[0].to_bits(), spacing[1].to_bits());
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = map.get(&key) {
            return Ok((s.clone(), assumed));
        }
        let grid = ImageGrid::new(rows, cols, spacing)?;
        let sim = Arc::new(Simulator::new(self.config, grid)?);
        map.insert(key, sim.clone());
        Ok((sim, assumed))
    }
}

/// A progress bar over `n` slices on stderr (drawn only on a terminal).
pub fn slice_progress(n: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(n as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} slices (eta {eta})",
        )
        .expect("valid template"),
    );
    pb.set_message(what.to_string());
    pb
}

/// Zero-padded file stem of slice `i` of `n` (at least 4 digits: `0000`).
pub fn slice_name(i: usize, n: usize) -> String {
    let width = n.saturating_sub(1).to_string().len().max(4);
    format!("{i:0width$}")
}

/// Removes a previous run's output folder, refusing when it holds anything but
/// `.npy` files.
pub fn clear_npy_dir(dir: &Path) -> Result<(), BatchError> {
    if !dir.exists() {
        return Ok(());
    }
    let entries = std::fs::read_dir(dir).map_err(|e| BatchError::io(dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| BatchError::io(dir, e))?.path();
        if !(path.is_file() && path.extension().is_some_and(|e| e == "npy")) {
            return Err(BatchError::Invalid(format!(
                "{} holds {}, which is not a .npy slice; refusing to overwrite it",
                dir.display(),
                path.display()
            )));
        }
    }
    std::fs::remove_dir_all(dir).map_err(|e| BatchError::io(dir, e))
}

/// The comparison strip of one pair: input | fd | qd | qd - fd.
pub fn preview_panels(input: &CtImage, pair: &Pair, dose: f64) -> Result<Vec<Panel>, BatchError> {
    Ok(vec![
        Panel::intensity("input", input.hu.clone()),
        Panel::intensity("fd (noise-free)", pair.fd.clone()),
        Panel::intensity(format!("qd (dose {dose})"), pair.qd.clone()),
        Panel::difference_of("qd - fd", &pair.qd, &pair.fd)?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_as_strings() {
        assert_eq!(slice_name(0, 1), "0000");
        assert_eq!(slice_name(42, 108), "0042");
        assert_eq!(slice_name(7, 12_000), "00007");
    }

    #[test]
    fn refuses_to_clear_foreign_folders() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("fd");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("0000.npy"), b"x").unwrap();
        clear_npy_dir(&d).unwrap();
        assert!(!d.exists());
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("notes.txt"), b"x").unwrap();
        assert!(clear_npy_dir(&d).is_err());
        assert!(d.join("notes.txt").exists());
    }
}
