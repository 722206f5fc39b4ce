//! CT slices and volumes in Hounsfield units.

use ndarray::{Array2, Array3, Axis};

use crate::error::{ImagingError, Result};

/// One CT slice in HU (float32, row-major `[rows, cols]`) with its geometry when known.
#[derive(Debug, Clone, PartialEq)]
pub struct CtImage {
    /// HU values, `[rows, columns]`.
    pub hu: Array2<f32>,
    /// Pixel spacing in mm, `[row spacing, column spacing]` (DICOM PixelSpacing order).
    pub pixel_spacing: Option<[f64; 2]>,
    /// Image position (patient) of the first pixel, mm.
    pub position: Option<[f64; 3]>,
    /// Image orientation (patient): row and column direction cosines.
    pub orientation: Option<[f64; 6]>,
}

impl CtImage {
    /// An image with no geometry.
    pub fn new(hu: Array2<f32>) -> Self {
        Self {
            hu,
            pixel_spacing: None,
            position: None,
            orientation: None,
        }
    }

    /// `(rows, cols)`.
    pub fn dim(&self) -> (usize, usize) {
        self.hu.dim()
    }

    /// Errors when any value is NaN or infinite.
    pub fn check_finite(&self) -> Result<()> {
        if self.hu.iter().all(|v| v.is_finite()) {
            Ok(())
        } else {
            Err(ImagingError::NonFinite)
        }
    }

    /// Position along the slice normal (for sorting a series), when geometry is known.
    pub fn slice_location(&self) -> Option<f64> {
        let p = self.position?;
        let o = self.orientation?;
        let n = [
            o[1] * o[5] - o[2] * o[4],
            o[2] * o[3] - o[0] * o[5],
            o[0] * o[4] - o[1] * o[3],
        ];
        Some(p[0] * n[0] + p[1] * n[1] + p[2] * n[2])
    }
}

/// A stack of slices of equal size, `[slices, rows, cols]`, in HU.
#[derive(Debug, Clone, PartialEq)]
pub struct CtVolume {
    pub hu: Array3<f32>,
    /// In-plane pixel spacing in mm, when known.
    pub pixel_spacing: Option<[f64; 2]>,
}

impl CtVolume {
    /// Stacks slices; all must have the same size.
    pub fn from_slices(slices: &[CtImage]) -> Result<Self> {
        let first = slices
            .first()
            .ok_or_else(|| ImagingError::Invalid("cannot build a volume from no slices".into()))?;
        let (r, c) = first.dim();
        let mut hu = Array3::<f32>::zeros((slices.len(), r, c));
        for (i, s) in slices.iter().enumerate() {
            if s.dim() != (r, c) {
                return Err(ImagingError::SizeMismatch {
                    a: (r, c),
                    b: s.dim(),
                });
            }
            hu.index_axis_mut(Axis(0), i).assign(&s.hu);
        }
        Ok(Self {
            hu,
            pixel_spacing: first.pixel_spacing,
        })
    }

    pub fn len(&self) -> usize {
        self.hu.len_of(Axis(0))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slice `i` as an image.
    pub fn slice(&self, i: usize) -> CtImage {
        CtImage {
            hu: self.hu.index_axis(Axis(0), i).to_owned(),
            pixel_spacing: self.pixel_spacing,
            position: None,
            orientation: None,
        }
    }

    /// All slices as images.
    pub fn slices(&self) -> impl Iterator<Item = CtImage> + '_ {
        (0..self.len()).map(|i| self.slice(i))
    }
}
