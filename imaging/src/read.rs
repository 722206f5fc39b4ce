//! Reading any CT input by path: the one entry point the CLIs and the trainer use.
//!
//! | path                                  | read as                                   |
//! |---------------------------------------|-------------------------------------------|
//! | `*.npy`                               | `[H, W]`, `[1, H, W]` or `[N, H, W]` HU   |
//! | `*.inv3`                              | an InVesalius project's volume            |
//! | `*.nii`, `*.nii.gz`                   | a NIfTI-1/2 volume, display orientation   |
//! | `*.nrrd`, `*.nhdr`                    | a NRRD volume, display orientation        |
//! | any other file that sniffs as DICOM   | its frames (CT or Enhanced CT), HU        |
//! | a folder holding DICOM files          | one series, sorted along the slice normal |
//! | a folder of `*.npy` (no DICOM)        | slices in natural name order              |
//!
//! A folder holding several DICOM series is an error naming them; choose one with
//! [`read_series`].

use std::path::{Path, PathBuf};

use crate::aapm::natural_cmp;
use crate::dicom;
use crate::error::{ImagingError, Result};
use crate::image::CtImage;
use crate::{inv3, nifti, npy, nrrd};

/// Every slice of a CT input, in order.
pub fn read_ct(path: &Path) -> Result<Vec<CtImage>> {
    read_series(path, None)
}

/// Like [`read_ct`], choosing one DICOM series (SeriesInstanceUID) in a folder.
pub fn read_series(path: &Path, series: Option<&str>) -> Result<Vec<CtImage>> {
    let meta = std::fs::metadata(path).map_err(|e| ImagingError::io(path, e))?;
    if meta.is_dir() {
        return read_dir(path, series);
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if name.ends_with(".nii.gz") {
        return Ok(nifti::read_nifti(path)?.0.slices().collect());
    }
    match extension(path).as_deref() {
        Some("npy") => read_npy_slices(path),
        Some("inv3") => Ok(inv3::read_inv3(path)?.slices().collect()),
        Some("nii") => Ok(nifti::read_nifti(path)?.0.slices().collect()),
        Some("nrrd" | "nhdr") => Ok(nrrd::read_nrrd(path)?.0.slices().collect()),
        _ => {
            if dicom::is_dicom_file(path) {
                Ok(dicom::read_dicom_file(path)?.frames)
            } else {
                Err(ImagingError::Invalid(format!(
                    "{}: unsupported input (expected .npy, .inv3, .nii, .nii.gz, .nrrd, .nhdr, a DICOM file \
                     or a folder)",
                    path.display()
                )))
            }
        }
    }
}

/// Exactly one slice (errors when the input holds several).
pub fn read_slice(path: &Path) -> Result<CtImage> {
    let mut slices = read_ct(path)?;
    if slices.len() != 1 {
        return Err(ImagingError::Invalid(format!(
            "{}: expected one slice, found {}",
            path.display(),
            slices.len()
        )));
    }
    Ok(slices.remove(0))
}

fn extension(path: &Path) -> Option<String> {
    path.extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
}

fn read_npy_slices(path: &Path) -> Result<Vec<CtImage>> {
    let vol = npy::read(path)?.into_volume()?;
    Ok(vol
        .outer_iter()
        .map(|s| CtImage::new(s.to_owned()))
        .collect())
}

fn read_dir(dir: &Path, series: Option<&str>) -> Result<Vec<CtImage>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| ImagingError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    if files.iter().any(|p| dicom::is_dicom_file(p)) {
        return dicom::read_series_dir(dir, series);
    }
    files.retain(|p| extension(p).as_deref() == Some("npy"));
    if files.is_empty() {
        return Err(ImagingError::Invalid(format!(
            "{}: no DICOM or .npy files in the folder",
            dir.display()
        )));
    }
    files.sort_by(|a, b| {
        natural_cmp(
            &a.file_name().unwrap_or_default().to_string_lossy(),
            &b.file_name().unwrap_or_default().to_string_lossy(),
        )
    });
    let mut out = Vec::with_capacity(files.len());
    for f in &files {
        out.extend(read_npy_slices(f)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn npy_files_and_folders_in_natural_order() {
        let dir = tempfile::tempdir().unwrap();
        for i in [10usize, 2, 1] {
            let img = Array2::from_elem((4, 5), i as f32);
            npy::write_image(&dir.path().join(format!("{i}.npy")), &img).unwrap();
        }
        std::fs::write(dir.path().join("notes.txt"), "not an image").unwrap();
        let slices = read_ct(dir.path()).unwrap();
        let firsts: Vec<f32> = slices.iter().map(|s| s.hu[[0, 0]]).collect();
        assert_eq!(firsts, vec![1.0, 2.0, 10.0]);
        assert_eq!(read_slice(&dir.path().join("2.npy")).unwrap().dim(), (4, 5));
        assert!(read_slice(dir.path())
            .unwrap_err()
            .to_string()
            .contains("found 3"));
    }

    #[test]
    fn unsupported_inputs_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let txt = dir.path().join("a.txt");
        std::fs::write(&txt, "hello").unwrap();
        assert!(read_ct(&txt)
            .unwrap_err()
            .to_string()
            .contains("unsupported input"));
        assert!(read_ct(&dir.path().join("missing.npy")).is_err());
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(read_ct(&empty)
            .unwrap_err()
            .to_string()
            .contains("no DICOM"));
    }
}
