// SPDX-License-Identifier: Apache-2.0
//! One module per subcommand.

mod apikey;
pub mod bench;
mod doctor;
mod sandbox;
mod serve;
mod shell;

use crate::cli::Command;

/// Runs a parsed command.
pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve::run(args).await,
        Command::Apikey { op, home } => apikey::run(op, &home),
        Command::Sandbox(args) => sandbox::run(args).await,
        Command::Doctor { home } => doctor::run(&home),
        Command::Bench { which } => match which {
            crate::cli::BenchOp::Envd(a) => bench::envd::run(a).await,
            crate::cli::BenchOp::Serve(a) => bench::serve::run(a).await,
            crate::cli::BenchOp::Pause(a) => bench::pause::run(a).await,
        },
    }
}
