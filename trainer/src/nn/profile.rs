//! Where a training step's time goes: wall-clock timers per op type, off unless
//! [`enable`]d (`ldct-train bench-step --profile`; one relaxed atomic load per timed
//! call otherwise).
//!
//! The convolution timers are per kernel primitive and algorithm
//! ([`crate::nn::conv_cpu`]'s table maps conv2d and conv_transpose2d passes onto the
//! primitives: a conv2d's forward and a transposed conv's input gradient are both
//! `forward`); `forward` and `backward` are the whole network's passes (autograd
//! included), so what they hold beyond the convolutions is element-wise work, copies
//! and autograd bookkeeping. A timer on the calling thread covers the work it hands
//! to the thread pool.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// What a timer measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    ConvForwardWinograd,
    ConvForwardIm2col,
    ConvForwardDirect,
    ConvDataGradWinograd,
    ConvDataGradIm2col,
    ConvDataGradDirect,
    ConvWeightGradWinograd,
    ConvWeightGradIm2col,
    ConvWeightGradDirect,
    ConvBiasGrad,
    /// Instance norm, forward and backward (a rectifier fused into it included).
    InstanceNorm,
    /// ReLU and leaky ReLU as their own ops, and the gradient mask of one fused
    /// into the op before it.
    Rectifier,
    /// The network's forward pass (convolutions included).
    Forward,
    /// The loss.
    Loss,
    /// Autograd's backward pass (convolution gradients included).
    Backward,
    /// The optimiser's update.
    Adam,
    /// The whole step.
    Step,
}

impl Op {
    pub const ALL: [Op; 17] = [
        Op::ConvForwardWinograd,
        Op::ConvForwardIm2col,
        Op::ConvForwardDirect,
        Op::ConvDataGradWinograd,
        Op::ConvDataGradIm2col,
        Op::ConvDataGradDirect,
        Op::ConvWeightGradWinograd,
        Op::ConvWeightGradIm2col,
        Op::ConvWeightGradDirect,
        Op::ConvBiasGrad,
        Op::InstanceNorm,
        Op::Rectifier,
        Op::Forward,
        Op::Loss,
        Op::Backward,
        Op::Adam,
        Op::Step,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::ConvForwardWinograd => "conv forward: winograd",
            Op::ConvForwardIm2col => "conv forward: im2col+gemm",
            Op::ConvForwardDirect => "conv forward: direct",
            Op::ConvDataGradWinograd => "conv input grad: winograd",
            Op::ConvDataGradIm2col => "conv input grad: gemm+col2im",
            Op::ConvDataGradDirect => "conv input grad: direct",
            Op::ConvWeightGradWinograd => "conv weight grad: winograd",
            Op::ConvWeightGradIm2col => "conv weight grad: im2col+gemm",
            Op::ConvWeightGradDirect => "conv weight grad: direct",
            Op::ConvBiasGrad => "conv bias grad",
            Op::InstanceNorm => "instance norm (fwd + bwd)",
            Op::Rectifier => "relu / leaky relu (fwd + bwd)",
            Op::Forward => "network forward (all)",
            Op::Loss => "loss",
            Op::Backward => "backward (all)",
            Op::Adam => "adam",
            Op::Step => "step (all)",
        }
    }

    /// A convolution primitive (the rows that add up to the convolutions' time).
    pub fn is_conv(self) -> bool {
        (self as usize) <= Op::ConvBiasGrad as usize
    }
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; Op::ALL.len()] = [const { AtomicU64::new(0) }; Op::ALL.len()];
static CALLS: [AtomicU64; Op::ALL.len()] = [const { AtomicU64::new(0) }; Op::ALL.len()];

/// Starts timing (for the rest of the process).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Runs `f`, adding its wall time to `op`'s timer when timing is on.
#[inline]
pub fn time<R>(op: Op, f: impl FnOnce() -> R) -> R {
    if !ENABLED.load(Ordering::Relaxed) {
        return f();
    }
    let t = Instant::now();
    let r = f();
    NANOS[op as usize].fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
    CALLS[op as usize].fetch_add(1, Ordering::Relaxed);
    r
}

/// Every timer's (op, seconds, calls) since the last call, and resets them.
pub fn take() -> Vec<(Op, f64, u64)> {
    Op::ALL
        .iter()
        .map(|&op| {
            let ns = NANOS[op as usize].swap(0, Ordering::Relaxed);
            let calls = CALLS[op as usize].swap(0, Ordering::Relaxed);
            (op, ns as f64 * 1e-9, calls)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_count_only_when_enabled_and_reset_on_take() {
        // (Other tests may time too once enabled; only this op is asserted on.)
        let before = take();
        let _ = before;
        time(Op::Loss, || {
            std::thread::sleep(std::time::Duration::from_millis(2))
        });
        enable();
        time(Op::Loss, || {
            std::thread::sleep(std::time::Duration::from_millis(5))
        });
        let rows = take();
        let (_, secs, calls) = rows.iter().find(|r| r.0 == Op::Loss).copied().unwrap();
        assert!(calls >= 1 && secs >= 0.005, "{secs} s, {calls} calls");
        // Reset: the 5 ms are gone (a training test running alongside adds far less).
        let (_, secs, _) = take().into_iter().find(|r| r.0 == Op::Loss).unwrap();
        assert!(secs < 0.005, "{secs} s");
        assert!(Op::ConvBiasGrad.is_conv() && !Op::Forward.is_conv());
    }
}
