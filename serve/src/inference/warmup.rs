//! Warmup: the production shapes a model runs before it is published.
//!
//! ONNX Runtime pays a first-run cost per session and input shape (kernel selection,
//! memory planning; on CUDA, cuDNN autotuning and the arena's first growth). A model
//! folder is published to the registry — and `/v2/health/ready` says ready, and the
//! startup probe passes — only after every session of the model has run each warmup
//! shape: each `--warmup-sizes` side, padded by the model's rule, at batch 1 and at
//! the largest batch the batcher forms for it (`--max-batch`, bounded by
//! `--max-batch-pixels`). A model that fails its warmup is rejected like one that
//! fails its smoke test, so a shape that cannot run is found at load, not on the first
//! request.

use std::time::Duration;

use ldct_proto::contract::Padding;

use super::batcher::{slices_per_batch, BatchConfig};

/// Which shapes a model runs before it is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warmup {
    /// Slice sides (before padding); empty: no warmup.
    pub sides: Vec<usize>,
    pub max_batch: usize,
    pub max_batch_pixels: usize,
}

/// One warmup run: `batch` slices of `side x side` (padded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub batch: usize,
    pub side: usize,
}

/// What a warmup ran and how long it took.
#[derive(Debug, Clone, PartialEq)]
pub struct WarmupReport {
    pub shapes: Vec<Shape>,
    pub sessions: usize,
    pub duration: Duration,
}

impl Warmup {
    /// No warmup (tests and `--warmup-sizes none`).
    pub fn none() -> Self {
        Self {
            sides: Vec::new(),
            max_batch: 1,
            max_batch_pixels: usize::MAX,
        }
    }

    /// Warmup of `sides` with the batcher's batch limits.
    pub fn new(sides: Vec<usize>, batching: &BatchConfig) -> Self {
        Self {
            sides,
            max_batch: batching.max_batch,
            max_batch_pixels: batching.max_batch_pixels,
        }
    }

    pub fn is_off(&self) -> bool {
        self.sides.is_empty()
    }

    /// The runs for a model with `padding`: each side padded, at the batcher's largest
    /// batch for that padded shape and at batch 1, without repeats. The first side at
    /// batch 1 (a single production slice) runs last: ONNX Runtime's CUDA convolutions
    /// set up their cuDNN plans again whenever their input shape changes, so the last
    /// warmup shape is the one the first request finds in place (on an H200 a change
    /// cost the first request 80 ms, four times a warm run; docs/PERFORMANCE.md).
    pub fn plan(&self, padding: &Padding) -> Vec<Shape> {
        let mut shapes = Vec::new();
        for &side in &self.sides {
            let side = padding.padded_len(side);
            for batch in [
                slices_per_batch(self.max_batch, self.max_batch_pixels, side, side),
                1,
            ] {
                let shape = Shape { batch, side };
                if !shapes.contains(&shape) {
                    shapes.push(shape);
                }
            }
        }
        if let Some(&first) = self.sides.first() {
            let single = Shape {
                batch: 1,
                side: padding.padded_len(first),
            };
            if let Some(i) = shapes.iter().position(|s| *s == single) {
                let s = shapes.remove(i);
                shapes.push(s);
            }
        }
        shapes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_is_each_padded_side_at_batch_one_and_the_batchers_largest_batch() {
        let w = Warmup {
            sides: vec![500, 1024, 2048],
            max_batch: 8,
            max_batch_pixels: 8 * 512 * 512,
        };
        let shape = |batch, side| Shape { batch, side };
        // 500 pads to 512 (multiple 16): 8 slices fit; 1024: 2; 2048: only one. The
        // first side's single slice runs last.
        assert_eq!(
            w.plan(&Padding::new(16, 1)),
            vec![
                shape(8, 512),
                shape(2, 1024),
                shape(1, 1024),
                shape(1, 2048),
                shape(1, 512)
            ]
        );
        // --max-batch 1: one run per side.
        let one = Warmup {
            max_batch: 1,
            ..w.clone()
        };
        assert_eq!(one.plan(&Padding::new(1, 1)).len(), 3);
        assert!(Warmup::none().plan(&Padding::new(16, 1)).is_empty());
    }
}
