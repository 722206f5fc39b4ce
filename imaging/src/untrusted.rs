//! The readers of untrusted bytes, each called the way ldct's servers and tools call it:
//! what the fuzz targets (`fuzz/`, `make fuzz`) drive, and what the regression tests
//! replay the inputs they found against (`tests/fuzz-regressions/<target>/`, on stable in
//! `make test`). Each returns whether the bytes were accepted; every outcome but a panic
//! or an abort is a pass.

use crate::instance::decode_ct;
use crate::limits::SliceLimits;
use crate::{nifti, npy, nrrd};

/// The volume byte limit the NIfTI and NRRD targets read under (the trainer's readers
/// take one from their caller; 64 MiB keeps a fuzzer's memory bounded).
pub const VOLUME_LIMIT: usize = 64 << 20;

/// An entry point: the bytes in, whether they were accepted.
pub type Reader = fn(&[u8]) -> bool;

/// The targets, by the name of their fuzz target and regression folder.
pub const TARGETS: [(&str, Reader); 4] = [
    ("dicom", dicom),
    ("npy", npy),
    ("nifti", nifti),
    ("nrrd", nrrd),
];

/// The server's DICOM path: parse, header checks, decode one CT slice (CT limits).
pub fn dicom(data: &[u8]) -> bool {
    decode_ct(data, &SliceLimits::CT).is_ok()
}

/// The server's `.npy` path: the header, the 2-D shape and CT-size checks it makes before
/// decoding, then the array as an image.
pub fn npy(data: &[u8]) -> bool {
    if let Ok(h) = npy::header(data) {
        let &[rows, cols] = h.shape.as_slice() else {
            return false;
        };
        if SliceLimits::CT.check(rows, cols).is_err() {
            return false;
        }
    }
    npy::parse(data).and_then(|a| a.into_image()).is_ok()
}

/// The NIfTI-1 reader (`.nii`; gzip is undone by the caller).
pub fn nifti(data: &[u8]) -> bool {
    nifti::parse_nifti(data, VOLUME_LIMIT).is_ok()
}

/// The NRRD reader with the data attached (raw or gzip encoding).
pub fn nrrd(data: &[u8]) -> bool {
    nrrd::parse_nrrd(data, None, VOLUME_LIMIT).is_ok()
}

#[cfg(test)]
mod tests {
    use super::TARGETS;
    use std::path::Path;

    /// Every input a fuzzer once crashed a reader with (`tests/fuzz-regressions/<target>/`,
    /// copied there from `fuzz/artifacts/`) now comes back as a result, and the seed
    /// examples there named `ok-*` are accepted. An abort (as the openjp2 port's null
    /// deallocation was) takes this test binary down with it.
    #[test]
    fn fuzz_regressions_return_a_result() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions");
        ldct_testkit::replay_fuzz_regressions(&root, &TARGETS);
    }
}
