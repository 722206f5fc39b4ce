//! Pre- and post-processing around the network (the pixel contract of DESIGN.md).
//!
//! HU -> the manifest's normalised range (clipped to its HU window) -> reflection
//! padding at the bottom and right up to a multiple of `spatial_multiple` and to at
//! least `min_size` -> network -> crop back to the original size -> HU (the inverse of
//! the linear map, not clipped) -> composed with the input at the request's strength,
//! the input passing unchanged outside the model's window
//! ([`ldct_proto::contract::compose`]).
//!
//! The reflection and the sizes are the pixel contract's ([`ldct_proto::contract`]:
//! numpy's `mode="reflect"`, shared with the exporter and the trainer).

use ldct_imaging::window::Normaliser;
use ldct_proto::contract::{self, reflect_index, OutsideWindow, Padding};
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

impl Prepared {
    /// Appends the constant noise-map plane of a noise-conditioned model (the pixel
    /// contract's second input channel), padded like the image.
    pub fn with_noise_map(mut self, value: Option<f32>) -> Self {
        if let Some(v) = value {
            let n = self.padded_h * self.padded_w;
            self.data.extend(std::iter::repeat_n(v, n));
        }
        self
    }
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
    padding: &Padding,
) -> Result<Prepared, ServeError> {
    let (h, w) = hu.dim();
    let contiguous = hu.as_standard_layout();
    let src = contiguous
        .as_slice()
        .ok_or_else(|| ServeError::Internal("image is not contiguous".into()))?;
    check_image(h, w, src)?;
    let normalised: Vec<f32> = src.iter().map(|&v| norm.forward(v)).collect();
    Ok(prepare_normalised(normalised, h, w, padding))
}

/// An already normalised slice -> padded network input.
pub fn prepare_normalised(data: Vec<f32>, h: usize, w: usize, padding: &Padding) -> Prepared {
    let (padded_h, padded_w) = padding.padded_size(h, w);
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

/// A request's strength: a number in [0, 1].
pub fn check_strength(v: f64) -> Result<f32, ServeError> {
    if v.is_finite() && (0.0..=1.0).contains(&v) {
        Ok(v as f32)
    } else {
        Err(ServeError::BadRequest(format!(
            "strength {v} must be a number from 0 (the input as it is) to 1 (the model's \
             full output)"
        )))
    }
}

/// How a model's output becomes the served image.
#[derive(Debug, Clone, Copy)]
pub struct Compose<'a> {
    pub norm: &'a Normaliser,
    pub outside: &'a OutsideWindow,
    pub strength: f32,
}

/// Network output (padded, normalised) -> HU image of the original size, composed
/// with `input` (HU, that size).
pub fn finish_hu(
    out: &[f32],
    p: &Prepared,
    input: &Array2<f32>,
    c: Compose<'_>,
) -> Result<Array2<f32>, ServeError> {
    let mut v = finish_normalised(out, p);
    c.norm.inverse_inplace(&mut v);
    let input = input.as_standard_layout();
    let src = input
        .as_slice()
        .filter(|s| s.len() == v.len())
        .ok_or_else(|| ServeError::Internal("input and output sizes differ".into()))?;
    contract::compose(src, &mut v, c.outside, c.strength);
    Array2::from_shape_vec((p.h, p.w), v).map_err(|e| ServeError::Internal(e.to_string()))
}

/// [`contract::compose`] for a normalised input and output (the weight is taken at the
/// input's HU value): strength 0 gives the input's values bit for bit.
pub fn compose_normalised(input: &[f32], out: &mut [f32], c: Compose<'_>) {
    let s = c.strength.clamp(0.0, 1.0);
    for (o, &x) in out.iter_mut().zip(input) {
        let w = s * c.outside.weight(c.norm.inverse(x));
        *o = if w == 0.0 {
            x
        } else if w == 1.0 {
            *o
        } else {
            x + w * (*o - x)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let p = prepare_hu(&hu, &norm, &Padding::new(4, 0)).unwrap();
        assert_eq!((p.padded_h, p.padded_w), (8, 8));
        assert!(p.data.iter().all(|v| (-1.0..=1.0).contains(v)));
        let c = Compose {
            norm: &norm,
            outside: &OutsideWindow::for_window(-1000.0, 1000.0),
            strength: 1.0,
        };
        let back = finish_hu(&p.data, &p, &hu, c).unwrap();
        for (a, b) in back.iter().zip(hu.iter()) {
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
    }

    #[test]
    fn bone_and_padding_pass_unchanged_and_strength_zero_is_the_input() {
        let norm = Normaliser::default();
        let outside = OutsideWindow::for_window(-1000.0, 1000.0);
        let hu = Array2::from_shape_vec((1, 4), vec![-3024.0, 40.0, 1218.0, 3071.0]).unwrap();
        let p = prepare_hu(&hu, &norm, &Padding::new(1, 0)).unwrap();
        // A "network" that outputs its (clipped) input minus 0.01.
        let net: Vec<f32> = p.data.iter().map(|v| v - 0.01).collect();
        let full = Compose {
            norm: &norm,
            outside: &outside,
            strength: 1.0,
        };
        let out = finish_hu(&net, &p, &hu, full).unwrap();
        assert_eq!(out[[0, 0]], -3024.0);
        assert!((out[[0, 1]] - 30.0).abs() < 1e-3);
        assert_eq!(out[[0, 2]], 1218.0);
        assert_eq!(out[[0, 3]], 3071.0);
        let zero = Compose {
            strength: 0.0,
            ..full
        };
        assert_eq!(finish_hu(&net, &p, &hu, zero).unwrap(), hu);
        let mut normalised = net.clone();
        compose_normalised(&p.data, &mut normalised, zero);
        assert_eq!(normalised, p.data);
        assert!(check_strength(0.5).is_ok());
        assert!(check_strength(1.5).is_err() && check_strength(f64::NAN).is_err());
    }

    #[test]
    fn a_small_image_is_padded_up_to_the_minimum_size_and_cropped_back() {
        // RED-CNN takes 21 px and more: a 16x16 slice runs as 21x21.
        let norm = Normaliser::default();
        let hu = Array2::from_shape_fn((16, 16), |(y, x)| -500.0 + 3.0 * (y * 16 + x) as f32);
        let p = prepare_hu(&hu, &norm, &Padding::new(1, 21)).unwrap();
        assert_eq!((p.padded_h, p.padded_w), (21, 21));
        // Row 16 reflects row 14 (numpy's mode="reflect").
        assert_eq!(p.data[16 * 21], p.data[14 * 21]);
        let c = Compose {
            norm: &norm,
            outside: &OutsideWindow::for_window(-1000.0, 1000.0),
            strength: 1.0,
        };
        let back = finish_hu(&p.data, &p, &hu, c).unwrap();
        assert_eq!(back.dim(), (16, 16));
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
            prepare_hu(&hu, &norm, &Padding::new(4, 0)),
            Err(ServeError::NonFinite)
        ));
        hu[[1, 2]] = f32::INFINITY;
        assert!(matches!(
            prepare_hu(&hu, &norm, &Padding::new(4, 0)),
            Err(ServeError::NonFinite)
        ));
        let empty = Array2::<f32>::zeros((0, 4));
        assert!(matches!(
            prepare_hu(&empty, &norm, &Padding::new(4, 0)),
            Err(ServeError::UnsupportedShape(_))
        ));
    }
}
