//! AAPM-layout datasets: `ROOT/{train,val,test}/{fd,qd}/NAME.npy`, full-dose (`fd`) and
//! quarter-dose (`qd`) slices paired by file name (`val`, a validation split for
//! monitoring and model selection, is optional).
//!
//! The AAPM low-dose challenge `.npy` data are often stored as linear attenuation mu
//! (mu_water = 0.0192 / mm) rather than HU; [`Units`] converts, and [`Units::detect`]
//! guesses from the values. Pairs are listed in natural order of their names
//! (`2.npy` before `10.npy`, see [`natural_cmp`]).

use std::cmp::Ordering;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ndarray::Array2;

use crate::error::{ImagingError, Result};
use crate::hu::Attenuation;
use crate::npy;

/// Full-dose folder name.
pub const FULL_DOSE_DIR: &str = "fd";
/// Quarter-dose folder name.
pub const QUARTER_DOSE_DIR: &str = "qd";

/// A dataset split: the `train`, `val` or `test` folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    /// Held out from training, used to monitor a run and to choose anything that
    /// must be chosen (never the test split).
    Val,
    Test,
}

impl Split {
    /// Every split, in folder order.
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    /// The folder name (`train` / `val` / `test`).
    pub fn dir_name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }

    /// `ROOT/<split>/<dose>` for `dose` = [`FULL_DOSE_DIR`] or [`QUARTER_DOSE_DIR`].
    pub fn dose_dir(self, root: &Path, dose: &str) -> PathBuf {
        root.join(self.dir_name()).join(dose)
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.dir_name())
    }
}

impl FromStr for Split {
    type Err = ImagingError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "train" => Ok(Split::Train),
            "val" => Ok(Split::Val),
            "test" => Ok(Split::Test),
            _ => Err(ImagingError::Invalid(format!(
                "split {s:?} must be train, val or test"
            ))),
        }
    }
}

/// A full-dose / quarter-dose pair of slices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AapmPair {
    /// The shared file stem (`12` for `12.npy`).
    pub name: String,
    pub fd: PathBuf,
    pub qd: PathBuf,
}

/// How stored values relate to HU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Units {
    /// Values are HU.
    Hu,
    /// Values are linear attenuation mu; `HU = 1000 (mu - mu_water) / mu_water`.
    Mu(Attenuation),
}

impl Units {
    /// Guesses the units: mu (with the AAPM mu_water 0.0192) when every finite value lies
    /// in `(-1, 1)` (mu of body tissue is about 0.02 / mm, bone below 0.1), HU otherwise.
    /// A HU slice has air near -1000 or tissue in the tens, so it never fits in `(-1, 1)`;
    /// an all-zero slice (a blank pad) counts as mu.
    pub fn detect(values: &Array2<f32>) -> Units {
        let in_unit = values
            .iter()
            .filter(|v| v.is_finite())
            .all(|&v| v > -1.0 && v < 1.0);
        if in_unit {
            Units::Mu(Attenuation::default())
        } else {
            Units::Hu
        }
    }

    /// Converts stored values to HU in place.
    pub fn to_hu_inplace(&self, values: &mut Array2<f32>) {
        if let Units::Mu(a) = self {
            values.mapv_inplace(|m| a.mu_to_hu(m));
        }
    }
}

/// Compares names in natural order: runs of ASCII digits compare as numbers
/// (`2 < 10`, leading zeros ignored), everything else character by character; names
/// equal by that rule fall back to plain string order so the order is total.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut x, mut y) = (a, b);
    loop {
        match (x.chars().next(), y.chars().next()) {
            (None, None) => return a.cmp(b),
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(cx), Some(cy)) if cx.is_ascii_digit() && cy.is_ascii_digit() => {
                let ex = x.find(|c: char| !c.is_ascii_digit()).unwrap_or(x.len());
                let ey = y.find(|c: char| !c.is_ascii_digit()).unwrap_or(y.len());
                let nx = x[..ex].trim_start_matches('0');
                let ny = y[..ey].trim_start_matches('0');
                let ord = nx.len().cmp(&ny.len()).then_with(|| nx.cmp(ny));
                if ord != Ordering::Equal {
                    return ord;
                }
                x = &x[ex..];
                y = &y[ey..];
            }
            (Some(cx), Some(cy)) => {
                if cx != cy {
                    return cx.cmp(&cy);
                }
                x = &x[cx.len_utf8()..];
                y = &y[cy.len_utf8()..];
            }
        }
    }
}

/// The `.npy` files of a folder as `stem -> path`, sorted by stem.
fn npy_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    if !dir.is_dir() {
        return Err(ImagingError::Dataset(format!(
            "{} is missing (expected ROOT/{{train,test}}/{{fd,qd}}/*.npy)",
            dir.display()
        )));
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| ImagingError::io(dir, e))? {
        let path = entry.map_err(|e| ImagingError::io(dir, e))?.path();
        let is_npy = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("npy"));
        if !is_npy || !path.is_file() {
            continue;
        }
        if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
            files.push((stem.to_string(), path.clone()));
        } else {
            return Err(ImagingError::Dataset(format!(
                "{} has a name that is not UTF-8",
                path.display()
            )));
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

/// Lists the pairs of `ROOT/<split>/{fd,qd}`, in natural order of their names. Errors
/// when a folder is missing or holds no `.npy` file, and name the first file whose
/// partner is missing.
pub fn list_pairs(root: &Path, split: Split) -> Result<Vec<AapmPair>> {
    let fd_dir = split.dose_dir(root, FULL_DOSE_DIR);
    let qd_dir = split.dose_dir(root, QUARTER_DOSE_DIR);
    let fd = npy_files(&fd_dir)?;
    let qd = npy_files(&qd_dir)?;
    for (files, dir) in [(&fd, &fd_dir), (&qd, &qd_dir)] {
        if files.is_empty() {
            return Err(ImagingError::Dataset(format!(
                "{} is empty (no .npy files)",
                dir.display()
            )));
        }
    }
    let find = |files: &[(String, PathBuf)], name: &str| {
        files
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()
            .map(|i| files[i].1.clone())
    };
    let mut pairs = Vec::with_capacity(fd.len());
    for (name, fd_path) in &fd {
        let qd_path = find(&qd, name).ok_or_else(|| {
            ImagingError::Dataset(format!(
                "{} has no quarter-dose partner {}",
                fd_path.display(),
                qd_dir.join(format!("{name}.npy")).display()
            ))
        })?;
        pairs.push(AapmPair {
            name: name.clone(),
            fd: fd_path.clone(),
            qd: qd_path,
        });
    }
    if let Some((name, qd_path)) = qd.iter().find(|(n, _)| find(&fd, n).is_none()) {
        return Err(ImagingError::Dataset(format!(
            "{} has no full-dose partner {}",
            qd_path.display(),
            fd_dir.join(format!("{name}.npy")).display()
        )));
    }
    pairs.sort_by(|a, b| natural_cmp(&a.name, &b.name));
    Ok(pairs)
}

/// Loads a pair as HU `(full dose, quarter dose)`. `units` = `None` detects them from
/// both slices together ([`Units::detect`] on each; they must agree).
pub fn load_pair(pair: &AapmPair, units: Option<Units>) -> Result<(Array2<f32>, Array2<f32>)> {
    let mut fd = npy::read_image(&pair.fd)?;
    let mut qd = npy::read_image(&pair.qd)?;
    if fd.dim() != qd.dim() {
        return Err(ImagingError::Dataset(format!(
            "pair {}: {} is {:?} but {} is {:?}",
            pair.name,
            pair.fd.display(),
            fd.dim(),
            pair.qd.display(),
            qd.dim()
        )));
    }
    let units = match units {
        Some(u) => u,
        None => {
            let (a, b) = (Units::detect(&fd), Units::detect(&qd));
            if a != b {
                return Err(ImagingError::Dataset(format!(
                    "pair {}: cannot tell the units, {} looks like {a:?} but {} like {b:?}; \
                     state them",
                    pair.name,
                    pair.fd.display(),
                    pair.qd.display()
                )));
            }
            a
        }
    };
    units.to_hu_inplace(&mut fd);
    units.to_hu_inplace(&mut qd);
    Ok((fd, qd))
}

/// Writes a pair of HU slices as float32 `.npy` to `ROOT/<split>/{fd,qd}/<name>.npy`,
/// creating the folders. `name` may end in `.npy`. Returns the pair's paths.
pub fn write_pair(
    root: &Path,
    split: Split,
    name: &str,
    fd: &Array2<f32>,
    qd: &Array2<f32>,
) -> Result<AapmPair> {
    let stem = name.strip_suffix(".npy").unwrap_or(name);
    if stem.is_empty() || stem.contains(['/', '\\']) || stem == "." || stem == ".." {
        return Err(ImagingError::Invalid(format!(
            "pair name {name:?} must be a plain file name"
        )));
    }
    if fd.dim() != qd.dim() {
        return Err(ImagingError::SizeMismatch {
            a: fd.dim(),
            b: qd.dim(),
        });
    }
    let write = |dose: &str, image: &Array2<f32>| -> Result<PathBuf> {
        let dir = split.dose_dir(root, dose);
        std::fs::create_dir_all(&dir).map_err(|e| ImagingError::io(&dir, e))?;
        let path = dir.join(format!("{stem}.npy"));
        npy::write_image(&path, image)?;
        Ok(path)
    };
    Ok(AapmPair {
        fd: write(FULL_DOSE_DIR, fd)?,
        qd: write(QUARTER_DOSE_DIR, qd)?,
        name: stem.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(v: f32) -> Array2<f32> {
        Array2::from_shape_fn((4, 3), |(r, c)| v + (r * 3 + c) as f32)
    }

    #[test]
    fn natural_order() {
        let mut names = vec![
            "10", "2", "1", "a10", "a2", "b", "002", "a", "L067_3", "L067_12",
        ];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            names,
            ["1", "002", "2", "10", "L067_3", "L067_12", "a", "a2", "a10", "b"]
        );
        assert_eq!(natural_cmp("x", "x"), Ordering::Equal);
    }

    #[test]
    fn writes_lists_and_loads_pairs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for i in [10, 2, 1] {
            let p = write_pair(
                root,
                Split::Train,
                &format!("{i}.npy"),
                &img(i as f32 * 100.0),
                &img(-5.0),
            )
            .unwrap();
            assert_eq!(p.name, i.to_string());
            assert!(p.fd.ends_with(format!("train/fd/{i}.npy")));
            assert!(p.qd.ends_with(format!("train/qd/{i}.npy")));
        }
        // Other files are ignored.
        std::fs::write(root.join("train/fd/notes.txt"), "x").unwrap();
        let pairs = list_pairs(root, Split::Train).unwrap();
        let names: Vec<_> = pairs.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["1", "2", "10"]);
        let (fd, qd) = load_pair(&pairs[2], Some(Units::Hu)).unwrap();
        assert_eq!(fd, img(1000.0));
        assert_eq!(qd, img(-5.0));
        // Detected as HU.
        assert_eq!(load_pair(&pairs[2], None).unwrap().0, img(1000.0));
        // The test split is separate and missing.
        let err = list_pairs(root, Split::Test).unwrap_err().to_string();
        assert!(err.contains("test") && err.contains("missing"), "{err}");
        assert!(write_pair(root, Split::Test, "../x", &img(0.0), &img(0.0)).is_err());
        assert!(matches!(
            write_pair(root, Split::Test, "x", &img(0.0), &Array2::zeros((2, 2))),
            Err(ImagingError::SizeMismatch { .. })
        ));
        assert_eq!("test".parse::<Split>().unwrap(), Split::Test);
        assert!("valid".parse::<Split>().is_err());
        assert_eq!("val".parse::<Split>().unwrap(), Split::Val);
    }

    #[test]
    fn mu_data_are_detected_and_converted() {
        let dir = tempfile::tempdir().unwrap();
        let a = Attenuation::default();
        let hu = Array2::from_shape_vec((2, 3), vec![-1000.0, 0.0, 40.0, 1000.0, -500.0, 3000.0])
            .unwrap();
        let mu = hu.mapv(|h| a.hu_to_mu(h));
        assert_eq!(Units::detect(&mu), Units::Mu(a));
        assert_eq!(Units::detect(&hu), Units::Hu);
        assert_eq!(
            Units::detect(&Array2::from_elem((2, 2), -1000.0)),
            Units::Hu
        );
        let p = write_pair(dir.path(), Split::Test, "s", &mu, &mu).unwrap();
        for units in [None, Some(Units::Mu(a))] {
            let (fd, qd) = load_pair(&p, units).unwrap();
            for (got, want) in fd.iter().chain(qd.iter()).zip(hu.iter().chain(hu.iter())) {
                assert!((got - want).abs() < 0.05, "{got} vs {want}");
            }
        }
        // Disagreeing detections are an error, not a silent guess.
        let p = write_pair(dir.path(), Split::Test, "t", &mu, &hu).unwrap();
        let err = load_pair(&p, None).unwrap_err().to_string();
        assert!(err.contains("units"), "{err}");
        assert!(load_pair(&p, Some(Units::Hu)).is_ok());
    }

    #[test]
    fn errors_name_the_unpaired_file_and_empty_folders() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("train/fd")).unwrap();
        std::fs::create_dir_all(root.join("train/qd")).unwrap();
        let err = list_pairs(root, Split::Train).unwrap_err().to_string();
        assert!(err.contains("empty") && err.contains("fd"), "{err}");

        write_pair(root, Split::Train, "1", &img(0.0), &img(0.0)).unwrap();
        npy::write_image(&root.join("train/fd/7.npy"), &img(0.0)).unwrap();
        let err = list_pairs(root, Split::Train).unwrap_err().to_string();
        assert!(
            err.contains("fd/7.npy") && err.contains("no quarter-dose partner"),
            "{err}"
        );
        assert!(err.contains("qd/7.npy"), "{err}");

        std::fs::remove_file(root.join("train/fd/7.npy")).unwrap();
        npy::write_image(&root.join("train/qd/8.npy"), &img(0.0)).unwrap();
        let err = list_pairs(root, Split::Train).unwrap_err().to_string();
        assert!(
            err.contains("qd/8.npy") && err.contains("no full-dose partner"),
            "{err}"
        );

        // A pair of different sizes fails to load with both shapes named.
        std::fs::remove_file(root.join("train/qd/8.npy")).unwrap();
        npy::write_image(&root.join("train/qd/1.npy"), &Array2::zeros((2, 2))).unwrap();
        let pairs = list_pairs(root, Split::Train).unwrap();
        let err = load_pair(&pairs[0], None).unwrap_err().to_string();
        assert!(err.contains("(4, 3)") && err.contains("(2, 2)"), "{err}");
    }
}
