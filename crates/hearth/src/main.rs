// SPDX-License-Identifier: Apache-2.0
//! `hearth`: the one binary. `hearth serve` runs the API, the proxy and the node; the
//! other subcommands are the CLI. Each command lives in `commands/<verb>.rs`; this
//! file only parses flags and dispatches.

mod cli;
mod commands;
mod wiring;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    init_logging(cli.log_level.as_deref());
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(commands::run(cli.command)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // A closed stdout (`hearth sandbox ls | head`) is not a failure.
            if err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return std::process::ExitCode::SUCCESS;
            }
            eprintln!("hearth: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(level: Option<&str>) {
    let filter = level
        .map(str::to_owned)
        .or_else(|| std::env::var("HEARTH_LOG").ok())
        .unwrap_or_else(|| "info".to_owned());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
