// SPDX-License-Identifier: Apache-2.0
//! `hearth-envd`: the agent inside every sandbox. See the library crate for the design.

use clap::Parser;
use hearth_envd::EnvdConfig;

fn main() -> std::process::ExitCode {
    let config = EnvdConfig::parse();
    hearth_envd::init_logging(&config);
    match hearth_envd::run(config) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("hearth-envd: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
