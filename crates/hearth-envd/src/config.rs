// SPDX-License-Identifier: Apache-2.0
//! Command-line configuration.

use std::net::IpAddr;
use std::path::PathBuf;

/// How envd is started; every flag has a default that works inside a sandbox.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "hearth-envd",
    version,
    about = "Hearth's in-sandbox agent (E2B envd protocol)"
)]
pub struct EnvdConfig {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0", env = "HEARTH_ENVD_ADDR")]
    pub addr: IpAddr,
    /// Port to listen on.
    #[arg(long, default_value_t = 49983, env = "HEARTH_ENVD_PORT")]
    pub port: u16,
    /// User for requests that name none, until `/init` sets `defaultUser`
    /// (default: `user` if the image has it, else `root`).
    #[arg(long)]
    pub default_user: Option<String>,
    /// Working directory for relative paths and new processes, until `/init` sets
    /// `defaultWorkdir` (default: the user's home).
    #[arg(long)]
    pub default_workdir: Option<PathBuf>,
    /// Access token required from the start (normally set later by `/init`).
    #[arg(long, env = "HEARTH_ENVD_ACCESS_TOKEN", hide_env_values = true)]
    pub access_token: Option<String>,
    /// Root of the filesystem whose `/etc/passwd` and `/etc/group` define users.
    #[arg(long, default_value = "/", hide = true)]
    pub root: PathBuf,
    /// Log filter (`error`, `warn`, `info`, `debug`, or a tracing filter).
    #[arg(long, default_value = "info", env = "HEARTH_ENVD_LOG")]
    pub log_level: String,
    /// Worker threads of the async runtime.
    #[arg(long, default_value_t = 2)]
    pub worker_threads: usize,
    /// Largest unary request body in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    pub max_unary_body: usize,
}
