//! HU windows, window/level and the network's normalisation.

use std::fmt;
use std::str::FromStr;

use ldct_proto::manifest::Normalisation;
use serde::{Deserialize, Serialize};

use crate::error::{ImagingError, Result};

/// A HU window `[lo, hi]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub lo: f32,
    pub hi: f32,
}

impl Window {
    /// `[-1000, 1000]` HU: the default metric window and network window.
    pub const FULL: Window = Window {
        lo: -1000.0,
        hi: 1000.0,
    };
    /// `[-160, 240]` HU: the abdomen (soft tissue) window, level 40 width 400.
    pub const ABDOMEN: Window = Window {
        lo: -160.0,
        hi: 240.0,
    };
    /// The windows every quality report states.
    pub const REPORT: [Window; 2] = [Window::FULL, Window::ABDOMEN];

    pub fn new(lo: f32, hi: f32) -> Result<Self> {
        if lo.is_finite() && hi.is_finite() && lo < hi {
            Ok(Self { lo, hi })
        } else {
            Err(ImagingError::InvalidWindow { lo, hi })
        }
    }

    /// From a radiologist's level (centre) and width.
    pub fn from_level_width(level: f32, width: f32) -> Result<Self> {
        Self::new(level - width / 2.0, level + width / 2.0)
    }

    pub fn width(&self) -> f32 {
        self.hi - self.lo
    }

    pub fn level(&self) -> f32 {
        (self.lo + self.hi) / 2.0
    }

    #[inline]
    pub fn clip(&self, hu: f32) -> f32 {
        hu.clamp(self.lo, self.hi)
    }

    /// `[0, 1]` display intensity of a HU value.
    #[inline]
    pub fn to_unit(&self, hu: f32) -> f32 {
        (self.clip(hu) - self.lo) / self.width()
    }

    /// A short label, e.g. `-1000_1000`, used in metric names.
    pub fn label(&self) -> String {
        format!("{}_{}", self.lo, self.hi)
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {}]", self.lo, self.hi)
    }
}

impl FromStr for Window {
    type Err = ImagingError;

    /// Parses `LO,HI` (e.g. `-160,240`).
    fn from_str(s: &str) -> Result<Self> {
        let (a, b) = s
            .split_once(',')
            .ok_or_else(|| ImagingError::Invalid(format!("window {s:?} must be LO,HI")))?;
        let parse = |t: &str| {
            t.trim()
                .parse::<f32>()
                .map_err(|_| ImagingError::Invalid(format!("window {s:?}: {t:?} is not a number")))
        };
        Window::new(parse(a)?, parse(b)?)
    }
}

/// HU <-> network range mapping (clip to a HU window, scale linearly to a range).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normaliser {
    pub window: Window,
    pub range_lo: f32,
    pub range_hi: f32,
}

impl Default for Normaliser {
    fn default() -> Self {
        Self {
            window: Window::FULL,
            range_lo: -1.0,
            range_hi: 1.0,
        }
    }
}

impl Normaliser {
    /// From the manifest contract.
    pub fn from_manifest(n: &Normalisation) -> Result<Self> {
        let window = Window::new(n.hu_window[0], n.hu_window[1])?;
        let [range_lo, range_hi] = n.range;
        if !(range_lo.is_finite() && range_hi.is_finite() && range_lo < range_hi) {
            return Err(ImagingError::Invalid(format!(
                "normalised range [{range_lo}, {range_hi}] must be finite with lo < hi"
            )));
        }
        Ok(Self {
            window,
            range_lo,
            range_hi,
        })
    }

    /// The manifest form.
    pub fn to_manifest(&self) -> Normalisation {
        Normalisation {
            hu_window: [self.window.lo, self.window.hi],
            range: [self.range_lo, self.range_hi],
        }
    }

    /// HU -> normalised (clipped to the window).
    #[inline]
    pub fn forward(&self, hu: f32) -> f32 {
        self.window.to_unit(hu) * (self.range_hi - self.range_lo) + self.range_lo
    }

    /// Normalised -> HU (no clipping: the inverse of the linear part).
    #[inline]
    pub fn inverse(&self, x: f32) -> f32 {
        (x - self.range_lo) / (self.range_hi - self.range_lo) * self.window.width() + self.window.lo
    }

    pub fn forward_inplace(&self, v: &mut [f32]) {
        v.iter_mut().for_each(|x| *x = self.forward(*x));
    }

    pub fn inverse_inplace(&self, v: &mut [f32]) {
        v.iter_mut().for_each(|x| *x = self.inverse(*x));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_and_describe() {
        let w: Window = "-160,240".parse().unwrap();
        assert_eq!(w, Window::ABDOMEN);
        assert_eq!(w.width(), 400.0);
        assert_eq!(w.level(), 40.0);
        assert_eq!(Window::from_level_width(40.0, 400.0).unwrap(), w);
        assert!("1,1".parse::<Window>().is_err());
        assert!("abc".parse::<Window>().is_err());
        assert!("nan,1".parse::<Window>().is_err());
        assert_eq!(Window::FULL.label(), "-1000_1000");
    }

    #[test]
    fn normalisation_maps_window_to_range_and_back() {
        let n = Normaliser::default();
        assert_eq!(n.forward(-1000.0), -1.0);
        assert_eq!(n.forward(1000.0), 1.0);
        assert_eq!(n.forward(0.0), 0.0);
        assert_eq!(n.forward(-3000.0), -1.0);
        assert_eq!(n.forward(3000.0), 1.0);
        for hu in [-1000.0_f32, -321.5, 0.0, 40.0, 999.0] {
            assert!((n.inverse(n.forward(hu)) - hu).abs() < 1e-3);
        }
        let m = Normaliser::from_manifest(&n.to_manifest()).unwrap();
        assert_eq!(m, n);
    }
}
