//! Reflection padding and pad/crop to a size, differentiable.
//!
//! Padding is an `index_select` along W, then along H, with reflected indices;
//! Candle's autograd turns that into `index_add` on the way back, so gradients of
//! the border pixels accumulate correctly on every device.

use candle_core::{bail, Result, Tensor};

/// Index of the pixel that output position `i` (in `-before..n + after`) reads:
/// mirror at the first and last pixel without repeating them (ONNX `reflect`,
/// PyTorch `ReflectionPad2d`), repeated for pads longer than the image.
fn reflect(i: isize, n: usize) -> u32 {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let j = i.rem_euclid(period);
    (if j >= n as isize { period - j } else { j }) as u32
}

fn reflected_indices(n: usize, before: usize, after: usize) -> Vec<u32> {
    (-(before as isize)..(n + after) as isize)
        .map(|i| reflect(i, n))
        .collect()
}

fn pad_axis(x: &Tensor, dim: usize, before: usize, after: usize) -> Result<Tensor> {
    if before == 0 && after == 0 {
        return Ok(x.clone());
    }
    let n = x.dim(dim)?;
    let idx = reflected_indices(n, before, after);
    let len = idx.len();
    let idx = Tensor::from_vec(idx, len, x.device())?;
    x.index_select(&idx, dim)
}

/// Reflection padding of a `[N, C, H, W]` tensor by `[top, bottom, left, right]`
/// pixels. Each pad must be smaller than the padded axis (the ONNX and PyTorch
/// rule); see [`pad_to_size`] for longer pads.
pub fn reflection_pad2d(x: &Tensor, pads: [usize; 4]) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let [top, bottom, left, right] = pads;
    if top.max(bottom) >= h || left.max(right) >= w {
        bail!("reflection padding {pads:?} needs an input larger than the pads, got {h}x{w}")
    }
    let x = pad_axis(x, 3, left, right)?;
    pad_axis(&x, 2, top, bottom)
}

/// Zero padding of `pad` pixels on all four sides of a `[N, C, H, W]` tensor.
pub fn zero_pad2d(x: &Tensor, pad: usize) -> Result<Tensor> {
    if pad == 0 {
        return Ok(x.clone());
    }
    x.pad_with_zeros(3, pad, pad)?.pad_with_zeros(2, pad, pad)
}

/// Pads a `[N, C, H, W]` tensor to `h x w` by reflection at the bottom and the
/// right (pixel `(0, 0)` stays at the origin). Pads longer than the image reflect
/// back and forth. `h` and `w` must be at least the current size.
pub fn pad_to_size(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (_, _, xh, xw) = x.dims4()?;
    if h < xh || w < xw {
        bail!("cannot pad {xh}x{xw} to the smaller {h}x{w}")
    }
    let x = pad_axis(x, 3, 0, w - xw)?;
    pad_axis(&x, 2, 0, h - xh)
}

/// Pads a `[N, C, H, W]` tensor by reflection at the bottom and the right so that
/// H and W are multiples of `multiple`; returns the padded tensor and the original
/// `(H, W)` for [`crop`].
pub fn pad_to_multiple(x: &Tensor, multiple: usize) -> Result<(Tensor, (usize, usize))> {
    let (_, _, h, w) = x.dims4()?;
    let m = multiple.max(1);
    let padded = pad_to_size(x, h.div_ceil(m) * m, w.div_ceil(m) * m)?;
    Ok((padded, (h, w)))
}

/// The top-left `h x w` of a `[N, C, H, W]` tensor.
pub fn crop(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (_, _, xh, xw) = x.dims4()?;
    if h > xh || w > xw {
        bail!("cannot crop {xh}x{xw} to the larger {h}x{w}")
    }
    if (h, w) == (xh, xw) {
        return Ok(x.clone());
    }
    x.narrow(2, 0, h)?.narrow(3, 0, w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflected_indices_match_onnx_reflect() {
        // [a b c d] padded by 2 and 3: c b | a b c d | c b a
        assert_eq!(reflected_indices(4, 2, 3), vec![2, 1, 0, 1, 2, 3, 2, 1, 0]);
        // Longer than the image: keeps bouncing.
        assert_eq!(reflected_indices(2, 0, 4), vec![0, 1, 0, 1, 0, 1]);
        assert_eq!(reflected_indices(1, 0, 2), vec![0, 0, 0]);
    }
}
