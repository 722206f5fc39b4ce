//! `ldct-train`: simulate low-dose data, build datasets, train, evaluate, denoise.

use clap::Parser;
use ldct_train::cli::Cli;

/// glibc's malloc returns every block above its mmap threshold (128 KiB, rising
/// with use to at most 32 MiB) to the kernel when it is freed, so each training
/// step's activations and gradients, allocated and freed again every step, are
/// fresh pages that fault in and are zeroed by the kernel: 13% of the default
/// model's U-Net step (perf, 2 cores). Served from the heap and kept there on
/// free instead, a step reuses the previous step's memory; the peak resident
/// set is the same (one step's worth). All threads share that one heap.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // glibc's largest mmap threshold on 64-bit targets (HEAP_MAX_SIZE / 2).
    const MMAP_THRESHOLD: libc::c_int = 32 << 20;
    // SAFETY: mallopt only sets allocator parameters; called before any thread
    // exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
        // One arena for every thread: the training step runs on a rayon worker
        // (nn::pool), and a worker's own arena (heaps of at most 64 MiB, which a
        // step's large tensors fragment) made the U-Net step's peak resident set
        // 440 MiB instead of 250.
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

fn main() -> anyhow::Result<()> {
    keep_freed_memory();
    // Candle 0.11 runs element-wise ops on its own spin-waiting thread pool; on a
    // small CPU the spinning competes with the convolution threads (35-50% of a
    // training step's CPU time on 2 cores). One thread for those ops, unless the
    // user chose otherwise; convolutions still use every rayon thread.
    // Set before any thread exists.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    let cli = Cli::parse();
    ldct_train::cli::init_tracing(cli.verbose);
    cli.command.run()
}
