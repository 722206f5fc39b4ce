//! `ldct-train`: simulate low-dose data, build datasets, train, evaluate, denoise.

use clap::Parser;
use ldct_train::cli::Cli;

fn main() -> anyhow::Result<()> {
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
