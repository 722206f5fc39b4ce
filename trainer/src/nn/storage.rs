//! The contiguous elements of a CPU storage under a layout, for the custom ops'
//! `cpu_fwd` (convolutions, instance norm, ReLU, Adam): one home for the check and
//! its error.

use candle_core::{bail, Layout, Result};

/// `s`'s elements under `l`, which must be contiguous; the error names the op and
/// the operand (`"{op}: {what} must be contiguous"`).
pub fn contiguous<'a, T>(s: &'a [T], l: &Layout, op: &str, what: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s[a..b]),
        None => bail!("{op}: {what} must be contiguous"),
    }
}

/// [`contiguous`] for an operand written in place.
pub fn contiguous_mut<'a, T>(
    s: &'a mut [T],
    l: &Layout,
    op: &str,
    what: &str,
) -> Result<&'a mut [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&mut s[a..b]),
        None => bail!("{op}: {what} must be contiguous"),
    }
}
