//! Pre- and post-processing around the network (the pixel contract of DESIGN.md).
//!
//! HU -> the manifest's normalised range (clipped to its HU window) -> reflection
//! padding at the bottom and right up to a multiple of `spatial_multiple` -> network ->
//! crop back to the original size -> HU (the inverse of the linear map, not clipped).
//!
//! Reflection and the rounding to the multiple are `ldct_imaging::pad`'s (numpy's
//! `mode="reflect"`, shared with the exporter's parity check).

pub use ldct_imaging::pad::{padded_len, reflect_index};
use ldct_imaging::window::Normaliser;
use ndarray::Array2;

use crate::error::ServeError;

/// Pads a row-major `h x w` image to `ph x pw` (>= h, w) by reflection.
pub fn pad_reflect(src: &[f32], h: usize, w: usize, ph: usize, pw: usize) -> Vec<f32> {
    debug_assert_eq!(src.len(), h * w);
    if ph == h && pw == w {
        return src.to_vec();
    }
    let cols: Vec<usize> = (0..pw).map(|x| reflect_index(x, w)).collect();
    let mut out = Vec::with_capacity(ph * pw);
    for y in 0..ph {
        let row = &src[reflect_index(y, h) * w..][..w];
        out.extend(cols.iter().map(|&x| row[x]));
    }
    out
}

/// The top-left `h x w` block of a row-major `ph x pw` image.
pub fn crop(src: &[f32], pw: usize, h: usize, w: usize) -> Vec<f32> {
    if pw == w && src.len() == h * w {
        return src.to_vec();
    }
    let mut out = Vec::with_capacity(h * w);
    for y in 0..h {
        out.extend_from_slice(&src[y * pw..y * pw + w]);
    }
    out
}

/// One slice ready for the network: normalised, padded, with its original size.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// `padded_h x padded_w`, row-major, in the normalised range.
    pub data: Vec<f32>,
    pub h: usize,
    pub w: usize,
    pub padded_h: usize,
    pub padded_w: usize,
}

/// Checks an image's values (all finite) and size (non-empty).
pub fn check_image(h: usize, w: usize, data: &[f32]) -> Result<(), ServeError> {
    if h == 0 || w == 0 {
        return Err(ServeError::UnsupportedShape(format!(
            "[{h}, {w}]: the image is empty"
        )));
    }
    if !data.iter().all(|v| v.is_finite()) {
        return Err(ServeError::NonFinite);
    }
    Ok(())
}

/// HU image -> normalised, padded network input.
pub fn prepare_hu(
    hu: &Array2<f32>,
    norm: &Normaliser,
    multiple: usize,
) -> Result<Prepared, ServeError> {
    let (h, w) = hu.dim();
    let contiguous = hu.as_standard_layout();
    let src = contiguous
        .as_slice()
        .ok_or_else(|| ServeError::Internal("image is not contiguous".into()))?;
    check_image(h, w, src)?;
    let normalised: Vec<f32> = src.iter().map(|&v| norm.forward(v)).collect();
    Ok(prepare_normalised(normalised, h, w, multiple))
}

/// An already normalised slice -> padded network input.
pub fn prepare_normalised(data: Vec<f32>, h: usize, w: usize, multiple: usize) -> Prepared {
    let (padded_h, padded_w) = (padded_len(h, multiple), padded_len(w, multiple));
    let data = if (padded_h, padded_w) == (h, w) {
        data
    } else {
        pad_reflect(&data, h, w, padded_h, padded_w)
    };
    Prepared {
        data,
        h,
        w,
        padded_h,
        padded_w,
    }
}

/// Network output (padded, normalised) -> cropped, normalised.
pub fn finish_normalised(out: &[f32], p: &Prepared) -> Vec<f32> {
    crop(out, p.padded_w, p.h, p.w)
}

/// Network output (padded, normalised) -> HU image of the original size.
pub fn finish_hu(out: &[f32], p: &Prepared, norm: &Normaliser) -> Result<Array2<f32>, ServeError> {
    let mut v = finish_normalised(out, p);
    norm.inverse_inplace(&mut v);
    Array2::from_shape_vec((p.h, p.w), v).map_err(|e| ServeError::Internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_len_rounds_up() {
        assert_eq!(padded_len(512, 4), 512);
        assert_eq!(padded_len(61, 4), 64);
        assert_eq!(padded_len(1, 8), 8);
        assert_eq!(padded_len(7, 1), 7);
        assert_eq!(padded_len(7, 0), 7);
    }

    #[test]
    fn reflection_matches_numpy_reflect() {
        // np.pad([0,1,2,3], (0, 8), mode="reflect") -> 0 1 2 3 2 1 0 1 2 3 2 1
        let idx: Vec<usize> = (0..12).map(|i| reflect_index(i, 4)).collect();
        assert_eq!(idx, [0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1]);
        assert_eq!(reflect_index(5, 1), 0);
        // np.pad([0,1], (0, 3), mode="reflect") -> 0 1 0 1 0
        let idx: Vec<usize> = (0..5).map(|i| reflect_index(i, 2)).collect();
        assert_eq!(idx, [0, 1, 0, 1, 0]);
    }

    #[test]
    fn pad_then_crop_is_identity() {
        let (h, w) = (3, 5);
        let src: Vec<f32> = (0..h * w).map(|v| v as f32).collect();
        let padded = pad_reflect(&src, h, w, 4, 8);
        assert_eq!(padded.len(), 32);
        // Row 3 reflects row 1; column 5 reflects column 3, 6 -> 2, 7 -> 1.
        assert_eq!(&padded[0..8], &[0., 1., 2., 3., 4., 3., 2., 1.]);
        assert_eq!(&padded[24..32], &[5., 6., 7., 8., 9., 8., 7., 6.]);
        assert_eq!(crop(&padded, 8, h, w), src);
    }

    #[test]
    fn prepare_and_finish_round_trip_in_hu() {
        let norm = Normaliser::default();
        let hu =
            Array2::from_shape_fn((5, 7), |(y, x)| -900.0 + 100.0 * y as f32 + 13.0 * x as f32);
        let p = prepare_hu(&hu, &norm, 4).unwrap();
        assert_eq!((p.padded_h, p.padded_w), (8, 8));
        assert!(p.data.iter().all(|v| (-1.0..=1.0).contains(v)));
        let back = finish_hu(&p.data, &p, &norm).unwrap();
        for (a, b) in back.iter().zip(hu.iter()) {
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
    }

    #[test]
    fn non_finite_and_empty_images_are_rejected() {
        let norm = Normaliser::default();
        let mut hu = Array2::<f32>::zeros((4, 4));
        hu[[1, 2]] = f32::NAN;
        assert!(matches!(
            prepare_hu(&hu, &norm, 4),
            Err(ServeError::NonFinite)
        ));
        hu[[1, 2]] = f32::INFINITY;
        assert!(matches!(
            prepare_hu(&hu, &norm, 4),
            Err(ServeError::NonFinite)
        ));
        let empty = Array2::<f32>::zeros((0, 4));
        assert!(matches!(
            prepare_hu(&empty, &norm, 4),
            Err(ServeError::UnsupportedShape(_))
        ));
    }
}
