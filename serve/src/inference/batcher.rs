//! Dynamic batching on dedicated inference threads.
//!
//! Requests submit single slices (already normalised and padded). Slices of the same
//! model generation and padded shape are grouped: a batch runs as soon as `max_batch`
//! of them wait (fewer for large slices: a batch holds at most `max_batch_pixels`
//! pixels, and at least one slice), or when the oldest has waited `batch_timeout`. The queue is bounded:
//! a full queue is [`ServeError::QueueFull`] (503 + Retry-After). A slice whose
//! requester has gone (timed out, disconnected) is dropped before it runs. Inference
//! runs on the batcher's own threads, never on the HTTP workers; a panic in a model
//! run fails that batch only. [`Batcher::shutdown`] refuses new slices, lets the
//! threads drain the queue and joins them.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ndarray::Array4;
use tokio::sync::oneshot;

use crate::error::ServeError;
use crate::metrics::metrics;

/// Something the batcher can run: a loaded model (or a test double).
pub trait Infer: Send + Sync {
    /// Identity for grouping: slices of different ids never share a batch.
    fn id(&self) -> u64;
    /// Name used in metrics labels.
    fn label(&self) -> &str;
    /// Channels of the model's input (1, or 2 for a noise-conditioned model).
    fn input_channels(&self) -> usize {
        1
    }
    /// Runs `[N, C, H, W]` (`C` = [`Infer::input_channels`]), returns `[N, 1, H, W]`.
    fn infer(&self, worker: usize, batch: Array4<f32>) -> Result<Array4<f32>, ServeError>;
}

#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    pub max_batch: usize,
    /// Most pixels (slices x padded height x width) one batch runs: large slices run in
    /// smaller batches, so inference memory per batch stays bounded (at least one slice).
    pub max_batch_pixels: usize,
    pub batch_timeout: Duration,
    pub queue_capacity: usize,
    pub workers: usize,
}

pub type Reply = Result<Vec<f32>, ServeError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    model: u64,
    h: usize,
    w: usize,
}

impl BatchConfig {
    /// The most slices of `key`'s shape one batch runs.
    fn batch_limit(&self, key: Key) -> usize {
        slices_per_batch(self.max_batch, self.max_batch_pixels, key.h, key.w)
    }
}

/// The most slices of padded shape `h x w` one batch runs: `max_batch`, fewer when
/// `max_batch_pixels` says so, at least one.
pub fn slices_per_batch(max_batch: usize, max_batch_pixels: usize, h: usize, w: usize) -> usize {
    (max_batch_pixels / (h * w).max(1)).clamp(1, max_batch.max(1))
}

struct Job {
    key: Key,
    model: Arc<dyn Infer>,
    data: Vec<f32>,
    enqueued: Instant,
    reply: oneshot::Sender<Reply>,
}

struct State {
    queue: VecDeque<Job>,
    closed: bool,
    /// When each inference thread started the batch it runs (`None`: idle).
    running: Vec<Option<Instant>>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    cfg: BatchConfig,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Only this module holds the lock and no code under it can panic: a poisoned
        // lock still holds a consistent queue.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct Batcher {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Batcher {
    /// Starts `cfg.workers` inference threads.
    pub fn start(cfg: BatchConfig) -> std::io::Result<Self> {
        let cfg = BatchConfig {
            max_batch: cfg.max_batch.max(1),
            queue_capacity: cfg.queue_capacity.max(1),
            workers: cfg.workers.max(1),
            ..cfg
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                closed: false,
                running: vec![None; cfg.workers],
            }),
            wake: Condvar::new(),
            cfg,
        });
        let mut threads = Vec::with_capacity(cfg.workers);
        for worker in 0..cfg.workers {
            let s = shared.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("ldct-infer-{worker}"))
                    .spawn(move || worker_loop(&s, worker))?,
            );
        }
        Ok(Self {
            shared,
            threads: Mutex::new(threads),
        })
    }

    pub fn config(&self) -> BatchConfig {
        self.shared.cfg
    }

    /// Queues one `h x w` slice (`model.input_channels()` planes of it) for `model`;
    /// the receiver gets its `h x w` output.
    pub fn submit(
        &self,
        model: Arc<dyn Infer>,
        h: usize,
        w: usize,
        data: Vec<f32>,
    ) -> Result<oneshot::Receiver<Reply>, ServeError> {
        let c = model.input_channels();
        if data.len() != c * h * w {
            return Err(ServeError::Internal(format!(
                "slice of {} values submitted as {c} x {h} x {w}",
                data.len()
            )));
        }
        let (tx, rx) = oneshot::channel();
        let mut st = self.shared.lock();
        if st.closed {
            return Err(ServeError::ShuttingDown);
        }
        if st.queue.len() >= self.shared.cfg.queue_capacity {
            return Err(ServeError::QueueFull {
                capacity: self.shared.cfg.queue_capacity,
            });
        }
        st.queue.push_back(Job {
            key: Key {
                model: model.id(),
                h,
                w,
            },
            model,
            data,
            enqueued: Instant::now(),
            reply: tx,
        });
        metrics().queue_depth.set(st.queue.len() as i64);
        drop(st);
        self.shared.wake.notify_all();
        Ok(rx)
    }

    /// Why inference is stalled, if it is: the oldest queued slice has waited longer
    /// than `limit`, or every inference thread has been running one batch for longer
    /// than `limit` (a model run that hangs). Readiness reports it, so an orchestrator
    /// stops sending requests that could only time out.
    pub fn stalled(&self, limit: Duration) -> Option<String> {
        let st = self.shared.lock();
        let now = Instant::now();
        if let Some(head) = st.queue.front() {
            let waited = now.saturating_duration_since(head.enqueued);
            if waited > limit {
                return Some(format!(
                    "the oldest queued slice has waited {:.1} s, longer than the request \
                     timeout of {:.1} s",
                    waited.as_secs_f64(),
                    limit.as_secs_f64()
                ));
            }
        }
        let busy: Vec<Duration> = st
            .running
            .iter()
            .map(|r| r.map(|t| now.saturating_duration_since(t)))
            .collect::<Option<_>>()?;
        let shortest = busy.into_iter().min()?;
        (shortest > limit).then(|| {
            format!(
                "every inference thread has been running one batch for over {:.1} s, longer \
                 than the request timeout of {:.1} s",
                shortest.as_secs_f64(),
                limit.as_secs_f64()
            )
        })
    }

    /// Slices waiting now.
    pub fn queue_len(&self) -> usize {
        self.shared.lock().queue.len()
    }

    /// Refuses new slices, runs what is queued and joins the threads (idempotent).
    pub fn shutdown(&self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_all();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            if t.join().is_err() {
                tracing::error!("an inference thread panicked during shutdown");
            }
        }
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Waits for the next batch to run (marking `worker` busy); `None` once closed and
/// drained.
fn next_batch(shared: &Shared, worker: usize) -> Option<Vec<Job>> {
    let cfg = shared.cfg;
    let mut st = shared.lock();
    loop {
        // Requesters that gave up (timeout, disconnect) do not need their slice run.
        let before = st.queue.len();
        st.queue.retain(|j| !j.reply.is_closed());
        if st.queue.len() != before {
            metrics().queue_depth.set(st.queue.len() as i64);
        }
        let Some(head) = st.queue.front() else {
            if st.closed {
                return None;
            }
            st = shared.wake.wait(st).unwrap_or_else(|p| p.into_inner());
            continue;
        };
        let key = head.key;
        let limit = cfg.batch_limit(key);
        let due = head.enqueued + cfg.batch_timeout;
        let same = st.queue.iter().filter(|j| j.key == key).take(limit).count();
        let now = Instant::now();
        if same >= limit || now >= due || st.closed {
            let mut batch = Vec::with_capacity(same);
            let mut rest = VecDeque::with_capacity(st.queue.len() - same);
            for job in st.queue.drain(..) {
                if job.key == key && batch.len() < limit {
                    batch.push(job);
                } else {
                    rest.push_back(job);
                }
            }
            st.queue = rest;
            metrics().queue_depth.set(st.queue.len() as i64);
            // Another thread may serve what is left while this one runs.
            if !st.queue.is_empty() {
                shared.wake.notify_one();
            }
            if let Some(r) = st.running.get_mut(worker) {
                *r = Some(now);
            }
            return Some(batch);
        }
        st = shared
            .wake
            .wait_timeout(st, due - now)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

fn worker_loop(shared: &Shared, worker: usize) {
    while let Some(batch) = next_batch(shared, worker) {
        run_batch(worker, batch);
        if let Some(r) = shared.lock().running.get_mut(worker) {
            *r = None;
        }
    }
}

fn run_batch(worker: usize, batch: Vec<Job>) {
    let Some(first) = batch.first() else { return };
    let model = first.model.clone();
    let Key { h, w, .. } = first.key;
    let n = batch.len();
    let c = model.input_channels();
    let mut input = Vec::with_capacity(n * c * h * w);
    let mut replies = Vec::with_capacity(n);
    for job in batch {
        input.extend_from_slice(&job.data);
        replies.push(job.reply);
    }
    let label = model.label().to_owned();
    let started = Instant::now();
    let result = Array4::from_shape_vec((n, c, h, w), input)
        .map_err(|e| ServeError::Internal(e.to_string()))
        .and_then(|x| {
            catch_unwind(AssertUnwindSafe(|| model.infer(worker, x))).unwrap_or_else(|p| {
                Err(ServeError::Inference(format!(
                    "the model run panicked: {}",
                    panic_text(&*p)
                )))
            })
        });
    let m = metrics();
    m.inference_duration
        .with_label_values(&[label.as_str()])
        .observe(started.elapsed().as_secs_f64());
    m.batch_size
        .with_label_values(&[label.as_str()])
        .observe(n as f64);
    match result {
        Ok(y) if y.shape() == [n, 1, h, w] => {
            for (slice, reply) in y.outer_iter().zip(replies) {
                // A requester that has gone away no longer listens: nothing to do.
                let _ = reply.send(Ok(slice.iter().copied().collect()));
            }
        }
        Ok(y) => {
            let e = ServeError::Inference(format!(
                "output shape {:?}, expected {:?}",
                y.shape(),
                [n, 1, h, w]
            ));
            replies.into_iter().for_each(|r| {
                let _ = r.send(Err(e.clone()));
            });
        }
        Err(e) => {
            tracing::error!(model = %label, batch = n, error = %e, "inference failed");
            replies.into_iter().for_each(|r| {
                let _ = r.send(Err(e.clone()));
            });
        }
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Doubles its input, records batch sizes, optionally sleeps or panics.
    struct Fake {
        id: u64,
        sizes: Mutex<Vec<usize>>,
        delay: Duration,
        panic: bool,
        calls: AtomicUsize,
    }

    impl Fake {
        fn new(id: u64, delay_ms: u64) -> Arc<Self> {
            Arc::new(Self {
                id,
                sizes: Mutex::new(Vec::new()),
                delay: Duration::from_millis(delay_ms),
                panic: false,
                calls: AtomicUsize::new(0),
            })
        }
    }

    impl Infer for Fake {
        fn id(&self) -> u64 {
            self.id
        }
        fn label(&self) -> &str {
            "fake"
        }
        fn infer(&self, _w: usize, x: Array4<f32>) -> Result<Array4<f32>, ServeError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.sizes.lock().unwrap().push(x.shape()[0]);
            std::thread::sleep(self.delay);
            if self.panic {
                panic!("fake model panics");
            }
            Ok(x * 2.0)
        }
    }

    fn cfg(max_batch: usize, timeout_ms: u64, capacity: usize) -> BatchConfig {
        BatchConfig {
            max_batch,
            max_batch_pixels: usize::MAX,
            batch_timeout: Duration::from_millis(timeout_ms),
            queue_capacity: capacity,
            workers: 1,
        }
    }

    fn block<T>(rx: oneshot::Receiver<T>) -> T {
        rx.blocking_recv().expect("reply")
    }

    #[test]
    fn a_hung_model_run_is_reported_as_stalled_then_clears() {
        let b = Batcher::start(cfg(1, 0, 8)).unwrap();
        let limit = Duration::from_millis(100);
        assert_eq!(b.stalled(limit), None);
        let slow = Fake::new(1, 600);
        let first = b.submit(slow.clone(), 1, 1, vec![1.0]).unwrap();
        let queued = b.submit(slow.clone(), 1, 1, vec![2.0]).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        // The only thread is in a 600 ms run, and the second slice waits behind it.
        let why = b.stalled(limit).expect("stalled");
        assert!(why.contains("waited") || why.contains("running"), "{why}");
        assert_eq!(block(first).unwrap(), vec![2.0]);
        assert_eq!(block(queued).unwrap(), vec![4.0]);
        // The thread marks itself idle just after replying.
        let deadline = Instant::now() + Duration::from_secs(5);
        while b.stalled(limit).is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(b.stalled(limit), None);
        // A short run is not a stall.
        let quick = Fake::new(2, 0);
        assert_eq!(
            block(b.submit(quick, 1, 1, vec![1.0]).unwrap()).unwrap(),
            vec![2.0]
        );
        assert_eq!(b.stalled(limit), None);
        b.shutdown();
    }

    #[test]
    fn same_shape_slices_are_batched_up_to_max_batch() {
        let b = Batcher::start(cfg(4, 200, 64)).unwrap();
        let m = Fake::new(1, 0);
        let rxs: Vec<_> = (0..8)
            .map(|i| b.submit(m.clone(), 2, 3, vec![i as f32; 6]).unwrap())
            .collect();
        for (i, rx) in rxs.into_iter().enumerate() {
            assert_eq!(block(rx).unwrap(), vec![2.0 * i as f32; 6]);
        }
        assert_eq!(*m.sizes.lock().unwrap(), vec![4, 4]);
    }

    #[test]
    fn large_slices_run_in_batches_within_the_pixel_budget() {
        // 20 pixels per batch: 2x3 slices 3 at a time, 4x5 slices one at a time.
        let b = Batcher::start(BatchConfig {
            max_batch_pixels: 20,
            ..cfg(8, 200, 64)
        })
        .unwrap();
        let m = Fake::new(1, 0);
        let small: Vec<_> = (0..6)
            .map(|i| b.submit(m.clone(), 2, 3, vec![i as f32; 6]).unwrap())
            .collect();
        for rx in small {
            block(rx).unwrap();
        }
        let large: Vec<_> = (0..2)
            .map(|_| b.submit(m.clone(), 4, 5, vec![1.0; 20]).unwrap())
            .collect();
        for rx in large {
            block(rx).unwrap();
        }
        assert_eq!(*m.sizes.lock().unwrap(), vec![3, 3, 1, 1]);
    }

    #[test]
    fn a_lone_slice_runs_after_the_batch_timeout() {
        let b = Batcher::start(cfg(8, 30, 64)).unwrap();
        let m = Fake::new(1, 0);
        let t = Instant::now();
        let out = block(b.submit(m.clone(), 1, 1, vec![1.5]).unwrap()).unwrap();
        assert_eq!(out, vec![3.0]);
        assert!(
            t.elapsed() >= Duration::from_millis(25),
            "{:?}",
            t.elapsed()
        );
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn different_shapes_and_models_never_share_a_batch() {
        let b = Batcher::start(cfg(8, 20, 64)).unwrap();
        let m1 = Fake::new(1, 0);
        let m2 = Fake::new(2, 0);
        let rxs = vec![
            b.submit(m1.clone(), 2, 2, vec![1.0; 4]).unwrap(),
            b.submit(m1.clone(), 4, 4, vec![1.0; 16]).unwrap(),
            b.submit(m2.clone(), 2, 2, vec![1.0; 4]).unwrap(),
            b.submit(m1.clone(), 2, 2, vec![1.0; 4]).unwrap(),
        ];
        for rx in rxs {
            assert!(block(rx).unwrap().iter().all(|&v| v == 2.0));
        }
        let mut s1 = m1.sizes.lock().unwrap().clone();
        s1.sort();
        assert_eq!(
            s1,
            vec![1, 2],
            "the two 2x2 slices of model 1 batch together"
        );
        assert_eq!(*m2.sizes.lock().unwrap(), vec![1]);
    }

    #[test]
    fn a_full_queue_is_refused_with_queue_full() {
        let b = Batcher::start(cfg(1, 0, 2)).unwrap();
        let slow = Fake::new(1, 300);
        // The first slice is taken by the worker, two more fill the queue.
        let first = b.submit(slow.clone(), 1, 1, vec![1.0]).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let _a = b.submit(slow.clone(), 1, 1, vec![1.0]).unwrap();
        let _b = b.submit(slow.clone(), 1, 1, vec![1.0]).unwrap();
        let e = b.submit(slow.clone(), 1, 1, vec![1.0]).unwrap_err();
        assert!(matches!(e, ServeError::QueueFull { capacity: 2 }), "{e}");
        assert_eq!(e.status().as_u16(), 503);
        assert!(block(first).is_ok());
    }

    #[test]
    fn abandoned_slices_are_not_run() {
        let b = Batcher::start(cfg(1, 0, 16)).unwrap();
        let slow = Fake::new(1, 200);
        let first = b.submit(slow.clone(), 1, 1, vec![1.0]).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        for _ in 0..5 {
            drop(b.submit(slow.clone(), 1, 1, vec![1.0]).unwrap());
        }
        assert!(block(first).is_ok());
        b.shutdown();
        assert_eq!(slow.calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_panicking_model_fails_its_batch_and_the_thread_lives_on() {
        let b = Batcher::start(cfg(4, 0, 16)).unwrap();
        let bad = Arc::new(Fake {
            id: 9,
            sizes: Mutex::new(Vec::new()),
            delay: Duration::ZERO,
            panic: true,
            calls: AtomicUsize::new(0),
        });
        let e = block(b.submit(bad, 1, 1, vec![1.0]).unwrap()).unwrap_err();
        assert!(matches!(e, ServeError::Inference(_)), "{e}");
        let good = Fake::new(1, 0);
        assert_eq!(
            block(b.submit(good, 1, 1, vec![2.0]).unwrap()).unwrap(),
            vec![4.0]
        );
    }

    #[test]
    fn shutdown_drains_the_queue_then_refuses() {
        let b = Batcher::start(cfg(2, 1000, 16)).unwrap();
        let m = Fake::new(1, 10);
        let rxs: Vec<_> = (0..5)
            .map(|_| b.submit(m.clone(), 1, 1, vec![1.0]).unwrap())
            .collect();
        b.shutdown();
        for rx in rxs {
            assert_eq!(block(rx).unwrap(), vec![2.0]);
        }
        let e = b.submit(m, 1, 1, vec![1.0]).unwrap_err();
        assert!(matches!(e, ServeError::ShuttingDown));
    }

    #[test]
    fn several_workers_share_the_queue() {
        let b = Batcher::start(BatchConfig {
            workers: 3,
            ..cfg(1, 0, 64)
        })
        .unwrap();
        let m = Fake::new(1, 50);
        let t = Instant::now();
        let rxs: Vec<_> = (0..6)
            .map(|_| b.submit(m.clone(), 1, 1, vec![1.0]).unwrap())
            .collect();
        for rx in rxs {
            assert!(block(rx).is_ok());
        }
        // 6 runs of 50 ms on 3 threads: about 100 ms, well under the 300 ms of one thread.
        assert!(
            t.elapsed() < Duration::from_millis(280),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn wrong_sized_data_is_an_internal_error() {
        let b = Batcher::start(cfg(1, 0, 4)).unwrap();
        assert!(matches!(
            b.submit(Fake::new(1, 0), 2, 2, vec![0.0; 3]),
            Err(ServeError::Internal(_))
        ));
    }
}
