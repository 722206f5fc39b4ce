//! `ldct-serve`: the inference server. See the crate docs and serve/README.md.

use clap::Parser;
use ldct_serve::config::{Config, LogFormat};

fn main() -> anyhow::Result<()> {
    // glibc serves allocations below its mmap threshold from the heap and raises that
    // threshold (up to 32 MiB) as large blocks are freed, so a large slice's tensors
    // could stay resident after its batch. A fixed 4 MiB threshold maps every large
    // tensor on its own, and freeing it returns the memory to the system.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called once, before any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
    let config = Config::parse();
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_env_filter(filter())
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .with_env_filter(filter())
            .init(),
    }
    ldct_serve::server::run(config)
}
