//! A folder of DICOM files as one series of slices.
//!
//! [`read_series_dir`] looks at the files directly in the folder (not in subfolders, so a
//! study folder with one subfolder per series is read by pointing at the subfolder).
//! Skipped with a debug log: files that do not sniff as DICOM (`is_dicom_file`), files
//! without the `DICM` marker that do not parse (the sniff was a guess), and DICOM objects
//! without pixel data (a DICOMDIR, a structure set, a report). The rest are parsed in
//! parallel, grouped by SeriesInstanceUID, and the selected series decoded in parallel.
//! Any other error (a corrupt or unsupported file in the series) fails the whole read,
//! naming the file.
//!
//! Slices (every frame of every file) are sorted by their position along the slice normal
//! ([`CtImage::slice_location`], ascending) when every slice has a position and an
//! orientation, otherwise by InstanceNumber; ties keep file-name and frame order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;
use dicom_object::DefaultDicomObject;
use rayon::prelude::*;

use super::parse::parse_dicom_bytes;
use super::read::{decode_owned, with_path};
use super::values::string;
use crate::error::{ImagingError, Result};
use crate::image::CtImage;

/// Reads the DICOM series in `dir` (non-recursive), sorted along the slice normal.
///
/// `series`: the SeriesInstanceUID to read. With `None` the folder must hold exactly one
/// series; when it holds several the error lists their UIDs.
pub fn read_series_dir(dir: &Path, series: Option<&str>) -> Result<Vec<CtImage>> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| ImagingError::io(dir, e))? {
        let path = entry.map_err(|e| ImagingError::io(dir, e))?.path();
        if !path.is_file() {
            continue;
        }
        if super::is_dicom_file(&path) {
            paths.push(path);
        } else {
            tracing::debug!(path = %path.display(), "skipping a file that is not DICOM");
        }
    }
    paths.sort();

    let parsed: Vec<(PathBuf, DefaultDicomObject)> = paths
        .into_par_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).map_err(|e| ImagingError::io(&path, e))?;
            match parse_dicom_bytes(&bytes) {
                Ok(obj) => Ok(Some((path, obj))),
                Err(ImagingError::NotDicom(m)) => {
                    tracing::debug!(path = %path.display(), "skipping: {m}");
                    Ok(None)
                }
                // Without the DICM marker the sniff was a guess: a file that does not parse
                // was probably never DICOM.
                Err(e) if !has_dicm(&bytes) => {
                    tracing::debug!(path = %path.display(), "skipping: {e}");
                    Ok(None)
                }
                Err(e) => Err(with_path(e, &path)),
            }
        })
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .filter(|(path, obj)| {
            let image = obj.get(tags::PIXEL_DATA).is_some();
            if !image {
                tracing::debug!(path = %path.display(), "skipping a DICOM object without pixel data");
            }
            image
        })
        .collect();

    let mut groups: BTreeMap<String, Vec<(PathBuf, DefaultDicomObject)>> = BTreeMap::new();
    for (path, obj) in parsed {
        let uid = string(&obj, tags::SERIES_INSTANCE_UID).unwrap_or_default();
        groups.entry(uid).or_default().push((path, obj));
    }
    let describe = |groups: &BTreeMap<String, Vec<_>>| {
        groups
            .iter()
            .map(|(uid, files)| {
                let uid = if uid.is_empty() {
                    "(no SeriesInstanceUID)"
                } else {
                    uid
                };
                format!("{uid} ({} files)", files.len())
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let selected = match series {
        Some(uid) => groups.remove(uid).ok_or_else(|| {
            ImagingError::Invalid(format!(
                "{}: no DICOM image of series {uid}; found: {}",
                dir.display(),
                if groups.is_empty() {
                    "none".into()
                } else {
                    describe(&groups)
                }
            ))
        })?,
        None if groups.len() > 1 => {
            return Err(ImagingError::Invalid(format!(
                "{}: the folder holds {} series, choose one: {}",
                dir.display(),
                groups.len(),
                describe(&groups)
            )))
        }
        None => groups.into_values().next().unwrap_or_default(),
    };
    if selected.is_empty() {
        return Err(ImagingError::Invalid(format!(
            "{}: no DICOM image found in the folder",
            dir.display()
        )));
    }

    let decoded = selected
        .into_par_iter()
        .map(|(path, obj)| decode_owned(obj).map_err(|e| with_path(e, &path)))
        .collect::<Result<Vec<_>>>()?;
    let mut slices: Vec<(Option<i64>, CtImage)> = decoded
        .into_iter()
        .flat_map(|d| {
            let n = d.meta.instance_number;
            d.frames.into_iter().map(move |f| (n, f))
        })
        .collect();
    if slices.iter().all(|(_, s)| s.slice_location().is_some()) {
        slices.sort_by(|a, b| {
            let (la, lb) = (a.1.slice_location(), b.1.slice_location());
            la.partial_cmp(&lb)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.0.cmp(&b.0))
        });
    } else {
        slices.sort_by_key(|(n, _)| *n);
    }
    Ok(slices.into_iter().map(|(_, s)| s).collect())
}

fn has_dicm(bytes: &[u8]) -> bool {
    bytes.get(128..132) == Some(b"DICM") || bytes.starts_with(b"DICM")
}
