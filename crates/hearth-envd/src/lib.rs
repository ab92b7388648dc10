// SPDX-License-Identifier: Apache-2.0
//! `hearth-envd`: the E2B-compatible agent that runs inside every sandbox.
//!
//! It serves, on one HTTP/1.1 port (49983 by default):
//! - the Connect services `process.Process` and `filesystem.Filesystem` (JSON and
//!   binary protobuf codecs, unary and streaming), see [`process`] and [`filesystem`];
//! - the plain HTTP endpoints `/health`, `/envs`, `/metrics`, `/init`, `/files` and
//!   `/files/compose`, see [`http`].
//!
//! It is the only Hearth code inside a sandbox and must not depend on anything in the
//! image beyond a Linux kernel: it is linked statically and reads users from the
//! image's `/etc/passwd` and `/etc/group` itself. When it runs as PID 1 it also does
//! init's duties (mounting the API filesystems, reaping orphans, forwarding signals),
//! see [`init`].
//!
//! Trust: everything inside the sandbox may be hostile, but envd only serves its own
//! sandbox. Its callers are authenticated with the access token set by `/init`.

pub mod auth;
pub mod config;
pub mod error;
pub mod filesystem;
pub mod http;
pub mod init;
pub mod process;
pub mod reaper;
pub mod server;
pub mod state;
pub mod users;

pub use config::EnvdConfig;

use std::sync::Arc;

/// The protocol version envd implements; SDKs gate features on it.
pub const ENVD_VERSION: &str = "0.6.13";

/// Sets up `tracing` output to stderr at the configured level.
///
/// A failed log write is dropped silently: stderr is usually a file on the sandbox's
/// own disk, which the sandbox may fill, and tracing-subscriber would otherwise
/// report the failure with `eprintln!`, whose own failure panics (an abort: the
/// whole sandbox dies because its disk is full).
pub fn init_logging(config: &EnvdConfig) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .log_internal_errors(false)
        .init();
}

/// Runs envd until it is told to stop.
pub fn run(config: EnvdConfig) -> anyhow::Result<()> {
    let is_init = std::process::id() == 1;
    if is_init {
        init::prepare_system();
    } else if let Err(err) = hearth_sys::process::set_child_subreaper() {
        tracing::warn!(error = %err, "cannot become child subreaper; orphans go to PID 1");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads)
        .max_blocking_threads(64)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let state = Arc::new(state::Envd::new(config)?);
        reaper::spawn(state.children.clone());
        init::spawn_signal_handler(state.clone(), is_init);
        server::serve(state).await
    })
}
