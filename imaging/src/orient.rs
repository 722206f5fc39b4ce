//! The display orientation of axial slices.
//!
//! DICOM viewers show an axial CT slice with its columns running toward the patient's
//! left and its rows toward the posterior (the radiological convention; DICOM's LPS
//! patient axes `+x` and `+y`). Volumes from NIfTI and NRRD files store their voxel
//! axes in whatever direction the writer chose, and say so in their header as
//! direction vectors in patient coordinates. [`to_display`] flips (and, when the
//! in-plane axes are swapped, transposes) a volume so that every reader hands the
//! trainer and the server slices in the same orientation as a DICOM series.

use ndarray::{Array3, Axis};
use serde::Serialize;

/// What [`to_display`] did, for the records of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Reorientation {
    /// Rows and columns were swapped (the file's column axis ran anterior-posterior).
    pub transposed: bool,
    /// Row order reversed (after the transpose).
    pub flipped_rows: bool,
    /// Column order reversed (after the transpose).
    pub flipped_cols: bool,
    /// The slices are not axial (the slice normal is not closest to the
    /// superior-inferior axis): left as stored.
    pub not_axial: bool,
}

/// Directions of a volume's axes in patient LPS coordinates (need not be unit
/// vectors): `cols` is the fastest-varying in-plane axis (along a row of pixels),
/// `rows` the other in-plane axis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AxisDirections {
    pub cols: [f64; 3],
    pub rows: [f64; 3],
}

impl AxisDirections {
    /// From directions in RAS coordinates (NIfTI's): x and y negated.
    pub fn from_ras(cols: [f64; 3], rows: [f64; 3]) -> Self {
        Self {
            cols: [-cols[0], -cols[1], cols[2]],
            rows: [-rows[0], -rows[1], rows[2]],
        }
    }
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

/// Turns a `[slices, rows, cols]` volume to the display orientation (see the module
/// docs), with its pixel spacing `[row, col]` (mm) following any transpose. Slices
/// that are not axial, or directions that are not finite, are left as stored.
pub fn to_display(
    volume: Array3<f32>,
    spacing: [f64; 2],
    dirs: AxisDirections,
) -> (Array3<f32>, [f64; 2], Reorientation) {
    let finite = dirs.cols.iter().chain(&dirs.rows).all(|v| v.is_finite());
    let n = cross(dirs.cols, dirs.rows);
    let axial = finite && n[2].abs() > n[0].abs() && n[2].abs() > n[1].abs();
    if !axial {
        let r = Reorientation {
            not_axial: true,
            ..Default::default()
        };
        return (volume, spacing, r);
    }
    let mut r = Reorientation::default();
    let (mut volume, mut spacing, mut cols, mut rows) = (volume, spacing, dirs.cols, dirs.rows);
    // The column axis should be the one closer to left-right.
    if cols[0].abs() < rows[0].abs() {
        r.transposed = true;
        volume.swap_axes(1, 2);
        volume = volume.as_standard_layout().into_owned();
        spacing = [spacing[1], spacing[0]];
        std::mem::swap(&mut cols, &mut rows);
    }
    if cols[0] < 0.0 {
        r.flipped_cols = true;
        volume.invert_axis(Axis(2));
    }
    if rows[1] < 0.0 {
        r.flipped_rows = true;
        volume.invert_axis(Axis(1));
    }
    if r.flipped_cols || r.flipped_rows {
        volume = volume.as_standard_layout().into_owned();
    }
    (volume, spacing, r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol() -> Array3<f32> {
        Array3::from_shape_fn((2, 2, 3), |(s, r, c)| (s * 100 + r * 10 + c) as f32)
    }

    #[test]
    fn lps_aligned_volumes_are_kept() {
        let dirs = AxisDirections {
            cols: [0.7, 0.0, 0.0],
            rows: [0.0, 0.7, 0.0],
        };
        let (v, s, r) = to_display(vol(), [0.5, 0.7], dirs);
        assert_eq!(v, vol());
        assert_eq!(s, [0.5, 0.7]);
        assert_eq!(r, Reorientation::default());
    }

    #[test]
    fn ras_rows_are_flipped() {
        // NIfTI's usual axial layout: i toward patient left (-x RAS), j anterior (+y RAS).
        let dirs = AxisDirections::from_ras([-0.7, 0.0, 0.0], [0.0, 0.7, 0.0]);
        let (v, _, r) = to_display(vol(), [0.7, 0.7], dirs);
        assert!(r.flipped_rows && !r.flipped_cols && !r.transposed);
        assert_eq!(v[[1, 0, 2]], 112.0);
        assert_eq!(v[[1, 1, 0]], 100.0);
        assert!(v.is_standard_layout());
    }

    #[test]
    fn swapped_axes_are_transposed() {
        let dirs = AxisDirections {
            cols: [0.0, 1.0, 0.0],
            rows: [-2.0, 0.0, 0.0],
        };
        let (v, s, r) = to_display(vol(), [2.0, 1.0], dirs);
        assert!(r.transposed && r.flipped_cols && !r.flipped_rows);
        assert_eq!(v.dim(), (2, 3, 2));
        assert_eq!(s, [1.0, 2.0]);
        // Display (row y, col x) holds stored (row = 1 - x, col = y).
        for y in 0..3 {
            for x in 0..2 {
                assert_eq!(v[[0, y, x]], vol()[[0, 1 - x, y]]);
            }
        }
    }

    #[test]
    fn coronal_slices_are_left_alone() {
        let dirs = AxisDirections {
            cols: [1.0, 0.0, 0.0],
            rows: [0.0, 0.0, -1.0],
        };
        let (v, _, r) = to_display(vol(), [1.0, 1.0], dirs);
        assert!(r.not_axial);
        assert_eq!(v, vol());
    }
}
