//! Running a training step on a thread of rayon's pool ([`on_pool`]).
//!
//! The kernels split each convolution over rayon's threads. Called from a thread
//! outside the pool (the program's main thread), every such split is a job handed
//! to the pool while the caller blocks: the workers, asleep after the
//! single-threaded element-wise work between two convolutions, must be woken
//! first (a futex wake and a reschedule each), and the caller's own core idles.
//! Run on a worker instead, the step starts every split on its own thread at
//! once and only the other workers are woken to steal from it; the numbers are
//! the same (the kernels' shares and their sums do not depend on which thread
//! computes them).

/// `f`, run on a worker thread of rayon's global pool while the calling thread
/// waits; directly when already on one.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    let job = AssertSend(f);
    rayon::scope(move |_| {
        let job = job;
        (job.0)()
    })
}

/// A closure moved to a pool thread for [`on_pool`].
struct AssertSend<F>(F);

// SAFETY: the closure runs on one pool thread while the thread that owns what it
// captures is blocked in `rayon::scope` until it returns (scope's join gives the
// happens-before both ways), so nothing it captures is used from two threads at
// once; and nothing the steps capture depends on which thread runs it (no
// thread-local state: Candle 0.11's CPU backend keeps none outside its
// quantized NEON kernels, ldct's kernels none).
unsafe impl<F> Send for AssertSend<F> {}
