// SPDX-License-Identifier: Apache-2.0
//! One module per subcommand.

mod apikey;
mod serve;

use crate::cli::Command;

/// Runs a parsed command.
pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve::run(args).await,
        Command::Apikey { op, home } => apikey::run(op, &home),
    }
}
