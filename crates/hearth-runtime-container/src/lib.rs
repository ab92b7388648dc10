// SPDX-License-Identifier: Apache-2.0
//! Hearth's container runtime: launches, inspects, freezes and destroys one sandbox
//! made of Linux namespaces, an overlay root filesystem and cgroup limits.
//!
//! Contract:
//! - A sandbox is a process tree whose init (normally `hearth-envd`) is PID 1 of new
//!   user, mount, pid, uts, ipc and cgroup namespaces, born in a network namespace
//!   the caller provides.
//! - The sandbox's ids `0..65536` map onto a host range starting at an unprivileged
//!   uid, so root inside is nobody outside. The shared read-only layers are
//!   presented through idmapped mounts and never written; writes land in the
//!   sandbox's `upper/`, owned by its host range.
//! - The overlay exists only in the sandbox's mount namespace: nothing is mounted on
//!   the host, and everything vanishes with the sandbox's last process.
//! - Limits: cpu, memory (no swap), pids through cgroups (v2 where the host offers a
//!   controller there, v1 otherwise); disk through a btrfs qgroup on the state
//!   directory (see [`ensure_data_volume`]).
//! - Docker-equivalent hardening: seccomp allowlist, Docker's default capability
//!   bounding set, masked `/proc` and `/sys` paths. no_new_privs is deliberately not
//!   set so `sudo` works inside.
//!
//! Limits: x86_64 Linux >= 6.13 (overlayfs layers passed as fds); root on the host;
//! blocking calls (run them on a blocking thread). Networking is someone else's: the
//! runtime only joins the given network namespace.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use hearth_runtime_container::{ContainerSpec, IdRange, Launcher, LauncherConfig, Limits};
//! let launcher = Launcher::new(&LauncherConfig::default())?;
//! let mut container = launcher.launch(&ContainerSpec {
//!     id: "i1234".into(),
//!     layers: vec!["/var/lib/hearth/templates/base/rootfs".into()],
//!     state_dir: "/var/lib/hearth/sandboxes/i1234".into(),
//!     id_range: IdRange::new(1 << 20)?,
//!     netns: Some("/run/netns/hearth-slot-0".into()),
//!     address: Some("169.254.0.21".parse()?),
//!     hostname: "e2b".into(),
//!     nameservers: vec!["8.8.8.8".parse()?],
//!     limits: Limits::default(),
//!     init: "/usr/bin/hearth-envd".into(),
//!     args: vec!["hearth-envd".into()],
//!     env: vec![("E2B_SANDBOX".into(), "true".into())],
//!     output: None,
//! })?;
//! let saved = container.persisted().clone();
//! container.kill(true)?;
//! assert!(launcher.adopt(&saved)?.is_none());
//! # Ok(()) }
//! ```

mod cgroups;
mod container;
mod launcher;
mod plan;
mod rootfs;
mod runtime;
mod security;
mod snapshot;
mod spec;
mod volume;

pub use cgroups::CgroupError;
pub use container::{Container, ContainerStats, Exit, Persisted, remove_state_dir};
pub use launcher::{Launcher, LauncherConfig};
pub use rootfs::RootfsError;
pub use runtime::{ContainerRuntime, ENVD_PATH, MAX_ORDINAL};
pub use security::{DEFAULT_CAPABILITIES, SecurityError, seccomp_policy};
pub use snapshot::{SnapshotError, snapshot};
pub use spec::{ContainerSpec, IdRange, Limits, SpecError};
pub use volume::{DataVolume, VolumeError, ensure_data_volume, supports_disk_limits};

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong with a container.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The spec is invalid.
    #[error("invalid container spec")]
    Spec(#[from] SpecError),
    /// The launcher configuration is invalid.
    #[error("invalid launcher configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: &'static str,
    },
    /// A sandbox with this id already has cgroups.
    #[error("container {id} already exists")]
    Exists {
        /// The id.
        id: String,
    },
    /// Root filesystem preparation failed.
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    /// A cgroup operation failed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The disk limit or data volume failed.
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// The seccomp policy did not compile.
    #[error(transparent)]
    Security(#[from] SecurityError),
    /// The init program could not be built (a NUL in a path or string).
    #[error("failed to build the init program")]
    Program(#[source] io::Error),
    /// A file could not be opened.
    #[error("failed to open {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        err: io::Error,
    },
    /// The network namespace could not be joined.
    #[error("failed to enter network namespace {path}")]
    Netns {
        /// The namespace file.
        path: PathBuf,
        /// Why.
        #[source]
        err: io::Error,
    },
    /// The uid/gid maps could not be written.
    #[error("failed to write the id maps of process {pid}")]
    IdMap {
        /// Init's pid.
        pid: u32,
        /// Why.
        #[source]
        err: io::Error,
    },
    /// Init could not be cloned, or failed before exec.
    #[error("failed to start the container's init")]
    Start(#[source] hearth_sys::clone::CloneError),
    /// Signalling init failed.
    #[error("failed to signal process {pid}")]
    Signal {
        /// Init's pid.
        pid: u32,
        /// Why.
        #[source]
        err: io::Error,
    },
    /// Waiting for init (or stragglers) failed or timed out.
    #[error("failed to wait for process {pid}")]
    Wait {
        /// The pid.
        pid: u32,
        /// Why.
        #[source]
        err: io::Error,
    },
    /// `/proc/<pid>` could not be read.
    #[error("failed to inspect process {pid}")]
    Inspect {
        /// The pid.
        pid: u32,
        /// Why.
        #[source]
        err: io::Error,
    },
    /// A snapshot failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// Launch failed, and cleaning up after it failed as well.
    #[error("launch failed and so did its cleanup: {cleanup}")]
    LaunchCleanup {
        /// Why the launch failed.
        #[source]
        cause: Box<ContainerError>,
        /// Why the cleanup failed.
        cleanup: Box<ContainerError>,
    },
}
