//! Datasets in the AAPM layout, `ROOT/{train,test}/{fd,qd}/NAME.npy` (float32 HU),
//! built from a full-dose volume by simulation, plus `ROOT/dataset.json`.
//!
//! Split: the test set is one contiguous block of slices in the middle of the volume
//! (the most representative anatomy; the ends of a scan are often mostly air or
//! skull cap), the training set is everything else except `gap` slices on each side
//! of the test block, so no test slice is a neighbour of a training slice (adjacent
//! CT slices share most of their anatomy). Files are named after the source slice
//! index (`0042.npy`), and slice `i`'s noise seed depends only on the run's seed and
//! `i`, so a slice gets the same noise whatever the split.

use std::ops::Range;

pub mod gaussian;
pub mod import;
pub mod multi;

pub use gaussian::{make_gaussian, GaussianOptions, GaussianSummary};
pub use import::{import, ImportOptions, ImportSummary, Source};

use ndarray::Array2;
use serde::{Deserialize, Serialize};

/// Pixels of the full-dose slice above this (HU) define a pair's noise level.
pub const NOISE_MASK_HU: f32 = -500.0;

/// The noise level of a pair in HU: the standard deviation of `qd - fd` over pixels
/// with `fd > NOISE_MASK_HU` (soft tissue and bone; air outside the body, where a
/// scanner's noise is lower, does not count). `None` when fewer than 100 pixels
/// qualify or the slices differ in size.
pub fn noise_level_hu(fd: &Array2<f32>, qd: &Array2<f32>) -> Option<f32> {
    if fd.dim() != qd.dim() {
        return None;
    }
    let (mut n, mut s, mut s2) = (0usize, 0f64, 0f64);
    for (&f, &q) in fd.iter().zip(qd) {
        if f > NOISE_MASK_HU {
            let d = f64::from(q - f);
            n += 1;
            s += d;
            s2 += d * d;
        }
    }
    (n >= 100).then(|| {
        let mean = s / n as f64;
        ((s2 / n as f64 - mean * mean).max(0.0)).sqrt() as f32
    })
}

/// Errors of the split planner.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SplitError {
    #[error("test fraction must be in [0, 1), got {0}")]
    Fraction(f64),
    #[error(
        "{slices} slices are too few for a test block of {test} with a gap of {gap} on each side \
         and at least one training slice"
    )]
    TooFew {
        slices: usize,
        test: usize,
        gap: usize,
    },
}

/// Which slices go where. Ranges are half-open `[start, end)` source slice indices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitPlan {
    pub slices: usize,
    pub gap: usize,
    pub train: Vec<Range<usize>>,
    /// Empty when the test fraction is 0.
    pub test: Vec<Range<usize>>,
}

impl SplitPlan {
    /// Plans a split of `slices` slices: a test block of `round(slices * test_fraction)`
    /// slices (at least 1 when the fraction is positive) centred in the volume, `gap`
    /// unused slices on each side of it, training on the rest.
    pub fn new(slices: usize, test_fraction: f64, gap: usize) -> Result<Self, SplitError> {
        if !(0.0..1.0).contains(&test_fraction) {
            return Err(SplitError::Fraction(test_fraction));
        }
        if test_fraction == 0.0 {
            if slices == 0 {
                return Err(SplitError::TooFew {
                    slices,
                    test: 0,
                    gap,
                });
            }
            return Ok(Self {
                slices,
                gap,
                train: std::iter::once(0..slices).collect(),
                test: vec![],
            });
        }
        let test = ((slices as f64 * test_fraction).round() as usize).max(1);
        let too_few = SplitError::TooFew { slices, test, gap };
        if test + 2 * gap >= slices {
            return Err(too_few);
        }
        let start = (slices - test) / 2;
        let end = start + test;
        let train: Vec<Range<usize>> = [
            0..start.saturating_sub(gap),
            (end + gap).min(slices)..slices,
        ]
        .into_iter()
        .filter(|r| !r.is_empty())
        .collect();
        if train.is_empty() {
            return Err(too_few);
        }
        Ok(Self {
            slices,
            gap,
            train,
            test: std::iter::once(start..end).collect(),
        })
    }

    /// The split of slice `i`, `None` for the gap slices.
    pub fn split_of(&self, i: usize) -> Option<ldct_imaging::aapm::Split> {
        if self.test.iter().any(|r| r.contains(&i)) {
            Some(ldct_imaging::aapm::Split::Test)
        } else if self.train.iter().any(|r| r.contains(&i)) {
            Some(ldct_imaging::aapm::Split::Train)
        } else {
            None
        }
    }

    pub fn train_len(&self) -> usize {
        self.train.iter().map(|r| r.len()).sum()
    }

    pub fn test_len(&self) -> usize {
        self.test.iter().map(|r| r.len()).sum()
    }

    /// Smallest distance in slices between a training and a test slice (`None` when
    /// either set is empty).
    pub fn min_distance(&self) -> Option<usize> {
        let mut best: Option<usize> = None;
        for a in &self.train {
            for b in &self.test {
                let d = if a.end <= b.start {
                    b.start - (a.end - 1)
                } else {
                    a.start - (b.end - 1)
                };
                best = Some(best.map_or(d, |x| x.min(d)));
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cranium_split() {
        let p = SplitPlan::new(108, 0.2, 3).unwrap();
        assert_eq!(p.test, vec![43..65]);
        assert_eq!(p.train, vec![0..40, 68..108]);
        assert_eq!(p.test_len(), 22);
        assert_eq!(p.train_len(), 80);
        assert_eq!(p.min_distance(), Some(4));
        for i in 40..43 {
            assert_eq!(p.split_of(i), None);
        }
    }

    #[test]
    fn every_slice_is_in_at_most_one_split_and_gaps_hold() {
        for n in 3..60 {
            for gap in 0..4 {
                for frac in [0.05, 0.2, 0.5] {
                    let Ok(p) = SplitPlan::new(n, frac, gap) else {
                        continue;
                    };
                    assert!(p.train_len() > 0 && p.test_len() > 0);
                    let assigned = (0..n).filter(|&i| p.split_of(i).is_some()).count();
                    assert_eq!(assigned, p.train_len() + p.test_len());
                    assert!(n - assigned <= 2 * gap);
                    assert!(p.min_distance().unwrap() > gap);
                }
            }
        }
        assert!(SplitPlan::new(5, 0.2, 2).is_err());
        assert!(SplitPlan::new(10, 1.0, 0).is_err());
        assert_eq!(SplitPlan::new(10, 0.0, 2).unwrap().train, vec![0..10]);
    }
}
