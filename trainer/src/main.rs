//! `ldct-train`: simulate low-dose data, build datasets, train, evaluate, denoise.

use clap::Parser;
use ldct_train::cli::Cli;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    ldct_train::cli::init_tracing(cli.verbose);
    cli.command.run()
}
