//! The padding half of the pixel contract (DESIGN.md): H and W are padded at the
//! bottom and right, by reflection, up to a multiple of the model's
//! `spatial_multiple`, and the output is cropped back.
//!
//! Reflection is numpy's `mode="reflect"` and ONNX `Pad` mode `reflect` (the edge
//! sample is not repeated: `[a b c d]` pads to `[a b c d c b]`), continued
//! periodically when the pad is longer than the axis. The server and the
//! exporter's parity check both pad with these functions.

/// `n` rounded up to a multiple of `m` (`m` of 0 counts as 1).
pub fn padded_len(n: usize, m: usize) -> usize {
    let m = m.max(1);
    n.div_ceil(m) * m
}

/// The source index of padded position `i` on an axis of length `n`.
pub fn reflect_index(i: usize, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let j = i % period;
    if j < n {
        j
    } else {
        period - j
    }
}
