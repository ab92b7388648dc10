// SPDX-License-Identifier: Apache-2.0
//! The runtime seam: how the node starts, inspects, pauses and stops sandboxes.
//!
//! Everything above the node talks to sandboxes through [`Runtime`] and [`Instance`].
//! Every runtime ends with the same fact: envd reachable at
//! [`Instance::envd_addr`], i.e. the slot's host-reachable address, port 49983.
//! A runtime never touches the store; it returns serialisable state
//! ([`Instance::state`], [`PausedState`]) that the node persists, and gets it back to
//! re-adopt a sandbox after a restart or to resume a paused one.
//!
//! Contract for every implementation:
//! - `create` returns only when envd answers `/health`; on failure nothing is left.
//! - `kill` is idempotent and exact: no process, mount, cgroup or file of the instance
//!   remains (the sandbox's state directory is removed by the node).
//! - `pause` either completes (returns a [`PausedState`] whose files are durable) or
//!   leaves the instance running; it never leaves a half-written pause that resumes
//!   wrong.

use async_trait::async_trait;
use hearth_types::SandboxId;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// The port envd listens on inside every sandbox.
pub const ENVD_PORT: u16 = 49983;

/// Which runtime runs a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// Linux namespaces + overlayfs + cgroups.
    Container,
    /// A QEMU microVM with its own kernel.
    Microvm,
}

impl RuntimeKind {
    /// The name used in flags, the store and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Container => "container",
            Self::Microvm => "microvm",
        }
    }

    /// Parses a runtime name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "container" => Some(Self::Container),
            "microvm" => Some(Self::Microvm),
            _ => None,
        }
    }
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// CPU, memory and disk of one sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// vCPUs (a CPU quota for containers).
    pub cpu_count: u32,
    /// Memory in MiB.
    pub memory_mb: u32,
    /// Writable disk in MiB.
    pub disk_mb: u32,
}

/// What a template (or snapshot) build provides for starting sandboxes.
///
/// Paths are absolute and read-only for runtimes: a template is never written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifacts {
    /// Root filesystem layers, upper-most first (overlayfs `lowerdir` order).
    #[serde(default)]
    pub layers: Vec<PathBuf>,
    /// Root disk image for microVMs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_image: Option<PathBuf>,
    /// Saved VM (memory + device state) to restore instead of booting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_state: Option<PathBuf>,
}

/// The network slot a sandbox runs in (see `hearth-net`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetSlot {
    /// Slot number.
    pub index: u32,
    /// Which runtime the slot is laid out for.
    pub kind: RuntimeKind,
    /// Address the host uses to reach the guest (`<addr>:49983` is envd).
    pub host_addr: Ipv4Addr,
    /// Network namespace for container sandboxes (guest side).
    pub guest_netns: Option<PathBuf>,
    /// Network namespace holding the tap for microVMs (router side).
    pub router_netns: PathBuf,
    /// Tap device name inside `router_netns` (microVM slots).
    pub tap: Option<String>,
    /// Guest MAC address.
    pub mac: String,
    /// Nameservers the sandbox may use.
    pub nameservers: Vec<Ipv4Addr>,
}

/// Everything a runtime needs to start one sandbox.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// Sandbox id.
    pub id: SandboxId,
    /// Template the sandbox starts from.
    pub template_id: String,
    /// The template build's artifacts.
    pub artifacts: Artifacts,
    /// Limits.
    pub resources: Resources,
    /// Network slot.
    pub slot: NetSlot,
    /// A number unique among the node's sandboxes (running or paused) and stable for
    /// the sandbox's whole life, pauses included (containers derive their host uid
    /// range from it, so kept files stay owned by the right ids).
    pub ordinal: u32,
    /// Directory owned by this sandbox (`$HEARTH_HOME/sandboxes/<id>`).
    pub state_dir: PathBuf,
    /// Hostname inside the sandbox.
    pub hostname: String,
}

/// Usage numbers of one sandbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// CPUs available.
    pub cpu_count: u32,
    /// Cumulative CPU time used, nanoseconds.
    pub cpu_time_ns: u64,
    /// Memory in use, bytes.
    pub mem_used: u64,
    /// Memory limit, bytes.
    pub mem_total: u64,
    /// Page cache, bytes.
    pub mem_cache: u64,
    /// Writable disk in use, bytes.
    pub disk_used: u64,
    /// Writable disk limit, bytes.
    pub disk_total: u64,
}

/// What a pause preserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PauseMode {
    /// Memory and processes were kept: resume continues every process.
    Full,
    /// Only the filesystem was kept: resume boots fresh.
    Filesystem,
}

/// A durable paused sandbox, as returned by [`Instance::pause`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PausedState {
    /// What was preserved.
    pub mode: PauseMode,
    /// Runtime-specific description of the artifacts (paths under the state dir).
    pub data: serde_json::Value,
}

/// A snapshot of a running sandbox, taken by [`Instance::snapshot`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// What it preserved: `Full` includes memory and processes.
    pub mode: PauseMode,
    /// Its artifacts, relative to the sandbox's template: `layers` go on top of the
    /// template's layers; `disk_image` and `vm_state`, when set, replace the
    /// template's.
    pub artifacts: Artifacts,
}

impl Artifacts {
    /// These artifacts with a snapshot's on top (see [`Snapshot::artifacts`]).
    pub fn with_snapshot(&self, snap: &Artifacts) -> Artifacts {
        let mut layers = snap.layers.clone();
        layers.extend(self.layers.iter().cloned());
        Artifacts {
            layers,
            disk_image: snap.disk_image.clone().or_else(|| self.disk_image.clone()),
            vm_state: if snap.disk_image.is_some() || snap.vm_state.is_some() {
                snap.vm_state.clone()
            } else {
                self.vm_state.clone()
            },
        }
    }
}

/// A runtime failure.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The sandbox could not be started.
    #[error("failed to start sandbox {id}")]
    Create {
        /// Sandbox id.
        id: SandboxId,
        /// The cause.
        #[source]
        err: Box<dyn std::error::Error + Send + Sync>,
    },
    /// envd did not become ready in time.
    #[error("sandbox {id}: envd not ready after {waited_ms} ms")]
    EnvdNotReady {
        /// Sandbox id.
        id: SandboxId,
        /// How long we waited.
        waited_ms: u64,
    },
    /// An operation on a running sandbox failed.
    #[error("sandbox {id}: {op} failed")]
    Operation {
        /// Sandbox id.
        id: SandboxId,
        /// What was attempted.
        op: &'static str,
        /// The cause.
        #[source]
        err: Box<dyn std::error::Error + Send + Sync>,
    },
    /// This runtime cannot do that.
    #[error("the {runtime} runtime does not support {op}")]
    Unsupported {
        /// Runtime name.
        runtime: RuntimeKind,
        /// What was asked.
        op: &'static str,
    },
    /// The host cannot run this runtime (missing tool, kernel feature…).
    #[error("the {runtime} runtime is unavailable: {reason}")]
    Unavailable {
        /// Runtime name.
        runtime: RuntimeKind,
        /// Why.
        reason: String,
    },
}

impl RuntimeError {
    /// Wraps a cause as an operation failure.
    pub fn op(
        id: &SandboxId,
        op: &'static str,
        err: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Operation {
            id: id.clone(),
            op,
            err: err.into(),
        }
    }

    /// Wraps a cause as a creation failure.
    pub fn create(
        id: &SandboxId,
        err: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Create {
            id: id.clone(),
            err: err.into(),
        }
    }
}

/// What a runtime can preserve across a memory pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryPause {
    /// Memory is saved to disk and the sandbox's RAM is freed (VM snapshot, CRIU).
    Snapshot,
    /// Processes are frozen in place (cgroup freezer); RAM stays allocated and the
    /// pause does not survive a host reboot.
    Freeze,
}

/// A way of running sandboxes.
#[async_trait]
pub trait Runtime: Send + Sync + fmt::Debug + 'static {
    /// Which runtime this is.
    fn kind(&self) -> RuntimeKind;

    /// How a memory pause is implemented.
    fn memory_pause(&self) -> MemoryPause;

    /// Starts a sandbox; returns once envd answers `/health`.
    async fn create(&self, spec: &SandboxSpec) -> Result<Box<dyn Instance>, RuntimeError>;

    /// Re-attaches to a sandbox that outlived a restart of hearth; `None` if it is gone.
    async fn adopt(
        &self,
        spec: &SandboxSpec,
        state: &serde_json::Value,
    ) -> Result<Option<Box<dyn Instance>>, RuntimeError>;

    /// Removes what a dead (not adoptable) sandbox left behind, given its last state.
    async fn cleanup(
        &self,
        spec: &SandboxSpec,
        state: Option<&serde_json::Value>,
    ) -> Result<(), RuntimeError>;

    /// Starts a sandbox from a pause made by this runtime.
    async fn resume(
        &self,
        spec: &SandboxSpec,
        paused: &PausedState,
    ) -> Result<Box<dyn Instance>, RuntimeError>;

    /// A pause of this sandbox that completed on disk although the node never
    /// recorded it (hearth crashed at the end of a pause). `None`: there is none.
    fn recovered_pause(&self, spec: &SandboxSpec) -> Option<PausedState> {
        let _ = spec;
        None
    }

    /// Removes what sandboxes unknown to the node left behind (a crash between launch
    /// and the store write): `live` are the sandboxes the node keeps.
    async fn reclaim(&self, live: &[SandboxId]) -> Result<(), RuntimeError> {
        let _ = live;
        Ok(())
    }

    /// Deletes a sandbox's state directory (a runtime may keep it on a special
    /// filesystem, e.g. a btrfs subvolume). A missing directory is not an error.
    fn remove_state_dir(&self, dir: &Path) -> Result<(), RuntimeError> {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RuntimeError::Unavailable {
                runtime: self.kind(),
                reason: format!("cannot remove {}: {e}", dir.display()),
            }),
        }
    }
}

/// One running sandbox.
#[async_trait]
pub trait Instance: Send + Sync + fmt::Debug {
    /// Where envd listens, as seen from the host.
    fn envd_addr(&self) -> SocketAddr;

    /// What the node must persist to re-adopt this instance after a restart.
    fn state(&self) -> serde_json::Value;

    /// Whether the sandbox's processes are still alive.
    fn is_alive(&self) -> bool;

    /// Stops the sandbox and releases everything it holds. Idempotent.
    async fn kill(&mut self) -> Result<(), RuntimeError>;

    /// Current usage.
    async fn stats(&self) -> Result<Stats, RuntimeError>;

    /// Pauses into `dir`. On success the instance no longer runs (except for a
    /// [`MemoryPause::Freeze`] pause, which the node must keep as an instance) and the
    /// returned state resumes it; on failure it keeps running.
    async fn pause(&mut self, memory: bool, dir: &Path) -> Result<PausedState, RuntimeError>;

    /// Copies the sandbox's state into `dir` (which must not exist; the runtime creates
    /// it) as artifacts new sandboxes can start from. The sandbox keeps running.
    async fn snapshot(&mut self, memory: bool, dir: &Path) -> Result<Snapshot, RuntimeError> {
        let _ = (memory, dir);
        Err(RuntimeError::Unavailable {
            runtime: RuntimeKind::Container,
            reason: "this instance cannot be snapshotted".into(),
        })
    }

    /// Whether the instance is frozen in place (a [`MemoryPause::Freeze`] pause).
    fn is_frozen(&self) -> bool {
        false
    }

    /// Undoes a [`MemoryPause::Freeze`] pause: the processes continue.
    async fn unfreeze(&mut self) -> Result<(), RuntimeError> {
        Err(RuntimeError::Unavailable {
            runtime: RuntimeKind::Container,
            reason: "this instance cannot be frozen".into(),
        })
    }
}

/// Polls `http://<addr>/health` until it answers 204 or `timeout` passes.
pub async fn wait_for_envd(
    id: &SandboxId,
    addr: SocketAddr,
    timeout: std::time::Duration,
) -> Result<(), RuntimeError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let start = std::time::Instant::now();
    let mut delay = std::time::Duration::from_micros(200);
    loop {
        // A raw request keeps this dependency-free and costs one round trip.
        if let Ok(Ok(mut stream)) = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            let _ = stream.set_nodelay(true);
            let req = b"GET /health HTTP/1.1\r\nHost: envd\r\nConnection: close\r\n\r\n";
            let mut buf = [0u8; 32];
            let ok = async {
                stream.write_all(req).await?;
                let n = stream.read(&mut buf).await?;
                Ok::<_, std::io::Error>(buf[..n].starts_with(b"HTTP/1.1 204"))
            };
            if let Ok(Ok(true)) =
                tokio::time::timeout(std::time::Duration::from_millis(500), ok).await
            {
                return Ok(());
            }
        }
        if start.elapsed() >= timeout {
            return Err(RuntimeError::EnvdNotReady {
                id: id.clone(),
                waited_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
            });
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(std::time::Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_layers_go_on_top_and_images_replace() {
        let base = Artifacts {
            layers: vec!["/envd".into(), "/debian".into()],
            disk_image: Some("/base.ext4".into()),
            vm_state: Some("/base.vmstate".into()),
        };
        let container = base.with_snapshot(&Artifacts {
            layers: vec!["/snap".into()],
            ..Default::default()
        });
        assert_eq!(
            container.layers,
            vec![PathBuf::from("/snap"), "/envd".into(), "/debian".into()]
        );
        assert_eq!(container.vm_state, base.vm_state);
        let vm = base.with_snapshot(&Artifacts {
            layers: vec![],
            disk_image: Some("/snap.qcow2".into()),
            vm_state: None,
        });
        assert_eq!(vm.disk_image, Some("/snap.qcow2".into()));
        assert_eq!(vm.vm_state, None);
    }
}
