// SPDX-License-Identifier: Apache-2.0
//! `hearth-builder`: a developer CLI over the layer builder, used by the test harness
//! until the `hearth` CLI exists.
//!
//! `hearth-builder layers --home DIR [--envd PATH]` builds what is missing and prints
//! the base template's layer directories, upper-most first, one per line.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use hearth_builder::{ConsoleProgress, base_template_layers, find_envd_binary};
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "hearth-builder",
    about = "Hearth layer builder (developer tool)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Ensure the base template layers exist and print them, upper-most first.
    Layers {
        /// Hearth home; layers are cached under <home>/layers.
        #[arg(long, env = "HEARTH_HOME", default_value = "/var/lib/hearth")]
        home: PathBuf,
        /// The static hearth-envd binary (default: found like `hearth serve` does).
        #[arg(long)]
        envd: Option<PathBuf>,
    },
    /// Print the envd binary `hearth serve` would use.
    FindEnvd,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HEARTH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("hearth-builder: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Layers { home, envd } => {
            let envd = match envd {
                Some(path) => path,
                None => find_envd_binary()?,
            };
            let progress = ConsoleProgress::new();
            let layers = base_template_layers(&home, &envd, &progress)
                .with_context(|| format!("failed to prepare base layers in {}", home.display()))?;
            for layer in layers {
                println!("{}", layer.display());
            }
        }
        Command::FindEnvd => println!("{}", find_envd_binary()?.display()),
    }
    Ok(())
}
