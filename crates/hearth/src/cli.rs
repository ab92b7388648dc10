// SPDX-License-Identifier: Apache-2.0
//! Command-line flags.

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Self-hosted, E2B-compatible sandboxes for AI agents.
#[derive(Debug, Parser)]
#[command(name = "hearth", version, about)]
pub struct Cli {
    /// Log filter (error, warn, info, debug or a tracing filter); default from HEARTH_LOG.
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the API, the sandbox proxy and the node (as root).
    Serve(ServeArgs),
    /// Manage API keys (works on the local store; the server need not run).
    Apikey {
        /// Which key operation.
        #[command(subcommand)]
        op: ApikeyOp,
        /// Hearth's data directory.
        #[arg(long, env = "HEARTH_HOME", default_value = "/var/lib/hearth")]
        home: PathBuf,
    },
    /// Work with sandboxes of a running server.
    Sandbox(SandboxArgs),
    /// Check that this host can run Hearth and say which runtime it would use.
    Doctor {
        /// Hearth's data directory.
        #[arg(long, env = "HEARTH_HOME", default_value = "/var/lib/hearth")]
        home: PathBuf,
    },
    /// Measure Hearth against its targets and baselines.
    Bench {
        /// Which benchmark.
        #[command(subcommand)]
        which: BenchOp,
    },
}

/// `hearth bench` benchmarks.
#[derive(Debug, Clone, Subcommand)]
pub enum BenchOp {
    /// envd over loopback: command round trip, file I/O, idle memory.
    Envd(crate::commands::bench::envd::EnvdBenchArgs),
    /// A real server: create latency and throughput, memory per sandbox, proxy.
    Serve(crate::commands::bench::serve::ServeBenchArgs),
    /// Pause/resume latency, snapshot sizes and fork latency.
    Pause(crate::commands::bench::pause::PauseBenchArgs),
}

/// `hearth sandbox` flags.
#[derive(Debug, Clone, Args)]
pub struct SandboxArgs {
    /// The server's URL.
    #[arg(
        long,
        env = "E2B_API_URL",
        default_value = "http://127.0.0.1:3000",
        global = true
    )]
    pub api_url: String,
    /// API key (default: $HEARTH_HOME/api-key).
    #[arg(long, env = "E2B_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,
    /// Hearth's data directory (to find the API key).
    #[arg(
        long,
        env = "HEARTH_HOME",
        default_value = "/var/lib/hearth",
        global = true
    )]
    pub home: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub op: SandboxOp,
}

/// `hearth sandbox` operations.
#[derive(Debug, Clone, Subcommand)]
pub enum SandboxOp {
    /// Create a sandbox and print its id.
    Create {
        /// Template id or name.
        #[arg(long, short, default_value = "base")]
        template: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// List sandboxes.
    Ls,
    /// Run a command in a sandbox and stream its output.
    Exec {
        /// Sandbox id.
        id: String,
        /// Run as this user.
        #[arg(long, short)]
        user: Option<String>,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// Open an interactive shell in a sandbox.
    Shell {
        /// Sandbox id.
        id: String,
        /// Run as this user.
        #[arg(long, short)]
        user: Option<String>,
    },
    /// Kill sandboxes.
    Kill {
        /// Sandbox ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

/// `hearth serve` flags.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address for the API and the sandbox proxy.
    #[arg(long, default_value = "127.0.0.1:3000", env = "HEARTH_LISTEN")]
    pub listen: SocketAddr,
    /// Hearth's data directory (store, templates, sandboxes).
    #[arg(long, env = "HEARTH_HOME", default_value = "/var/lib/hearth")]
    pub home: PathBuf,
    /// Names this server's host objects (network namespaces, host interfaces,
    /// nftables table, cgroup parent) so that several servers (or tests) can share a
    /// host; each of them also needs its own --host-cidr and --transit-cidr.
    #[arg(long, env = "HEARTH_INSTANCE", default_value = "hearth", value_parser = parse_instance)]
    pub instance: String,
    /// Addresses the host reaches sandboxes at (one per sandbox). Must not overlap
    /// any network of the host or of another server.
    #[arg(long, env = "HEARTH_HOST_CIDR", default_value = "10.11.0.0/16")]
    pub host_cidr: hearth_net::Ipv4Cidr,
    /// Links between the host and each sandbox's router (a /31 per sandbox). Must not
    /// overlap any network of the host or of another server.
    #[arg(long, env = "HEARTH_TRANSIT_CIDR", default_value = "10.12.0.0/16")]
    pub transit_cidr: hearth_net::Ipv4Cidr,
    /// Domain for host-routed sandbox URLs `<port>-<sandboxID>.<domain>`.
    #[arg(long, default_value = "localhost", env = "HEARTH_DOMAIN")]
    pub domain: String,
    /// Domain reported to SDKs in API responses (default: none, clients use
    /// E2B_SANDBOX_URL).
    #[arg(long, env = "HEARTH_PUBLIC_DOMAIN")]
    pub public_domain: Option<String>,
    /// Leave running sandboxes alive when hearth exits; they are re-adopted on start.
    #[arg(long)]
    pub keep_sandboxes: bool,
    /// An API key to register at start (also: HEARTH_API_KEY).
    #[arg(long, env = "HEARTH_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Default sandbox runtime: `container`, `microvm` (a QEMU microVM per sandbox:
    /// KVM where usable, TCG otherwise), or `auto` (microvm only where `/dev/kvm` can
    /// boot a stock guest; see `hearth doctor`).
    #[arg(long, value_enum, default_value = "auto", env = "HEARTH_RUNTIME")]
    pub runtime: crate::wiring::microvm::RuntimeChoice,
    /// Also offer template NAME: the base template pinned to the microVM runtime
    /// (repeatable), whatever the default runtime.
    #[arg(long = "microvm-template", value_name = "NAME")]
    pub microvm_templates: Vec<String>,
    /// Network slots kept ready ahead of creates.
    #[arg(long, default_value_t = 16, env = "HEARTH_WARM_SLOTS")]
    pub warm_slots: usize,
    /// Size of the sandbox data volume (a sparse btrfs image enforcing per-sandbox
    /// disk limits), in GiB; 0 = 80% of the free space, at most 256.
    #[arg(long, default_value_t = 0, env = "HEARTH_DATA_GB")]
    pub data_gb: u64,
    /// Run without per-sandbox disk limits (no data volume).
    #[arg(long)]
    pub no_disk_limits: bool,
    /// PEM file of certificates sandboxes should trust (default: the host's locally
    /// added CAs in /usr/local/share/ca-certificates, e.g. an egress proxy's).
    #[arg(long, env = "HEARTH_CA_BUNDLE")]
    pub ca_bundle: Option<PathBuf>,
    /// Do not pass any extra CA certificates to sandboxes.
    #[arg(long)]
    pub no_host_cas: bool,
    /// Test-only: run sandboxes as unisolated host processes using this envd binary.
    /// Never use this with untrusted code.
    #[arg(long, hide = true)]
    pub unsafe_sim_runtime: Option<PathBuf>,
}

fn parse_instance(s: &str) -> Result<String, String> {
    let ok = (1..=16).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if ok {
        Ok(s.to_owned())
    } else {
        Err("an instance name is 1-16 characters of [a-z0-9], starting with a letter".into())
    }
}

/// `hearth apikey` operations.
#[derive(Debug, Subcommand)]
pub enum ApikeyOp {
    /// Create a key and print it (it is not shown again).
    Create {
        /// A name to recognise the key by.
        #[arg(long, default_value = "default")]
        name: String,
    },
    /// List keys (masked).
    Ls,
    /// Delete a key by id.
    Rm {
        /// Key id as shown by `hearth apikey ls`.
        id: String,
    },
}
