// SPDX-License-Identifier: Apache-2.0
//! The container runtime behind Hearth's runtime seam (`hearth_runtime::Runtime`).
//!
//! Each sandbox: its network slot's guest namespace, a host uid range chosen by the
//! sandbox's ordinal (unique and stable for its life), the template's layers as the
//! overlay's lower layers, and `hearth-envd` as PID 1 logging into
//! `<state_dir>/envd.log`. Pause is filesystem-only (the writable layer stays in the
//! state directory and the next launch reuses it) or a freeze in place.

use crate::{Container, ContainerSpec, IdRange, Launcher, Limits, Persisted};
use async_trait::async_trait;
use hearth_runtime::{
    Artifacts, ENVD_PORT, Instance, MemoryPause, PauseMode, PausedState, Runtime, RuntimeError,
    RuntimeKind, SandboxSpec, Snapshot, Stats,
};
use hearth_types::SandboxId;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where envd lives inside every template (the builder puts it there).
pub const ENVD_PATH: &str = "/usr/bin/hearth-envd";

/// The range number of ordinal 0; ranges are 65536 ids each. Keeps clear of the
/// host's own users and of the usual `/etc/subuid` allocations (100000…).
const UID_BASE_RANGE: u32 = 16;

/// Sandbox ordinals whose uid range fits in `u32`.
pub const MAX_ORDINAL: u32 = u32::MAX / 65536 - UID_BASE_RANGE;

/// How long `create` waits for envd to answer.
const ENVD_READY: Duration = Duration::from_secs(20);

/// Most processes and threads in one sandbox (fork bombs stop here).
const PIDS_MAX: u32 = 4096;

/// Runs sandboxes as containers.
#[derive(Debug)]
pub struct ContainerRuntime {
    launcher: Arc<Launcher>,
    disk_limits: bool,
}

impl ContainerRuntime {
    /// A runtime over `launcher`; `disk_limits` says whether state directories live on
    /// a filesystem that enforces the writable layer's size (see `ensure_data_volume`).
    pub fn new(launcher: Launcher, disk_limits: bool) -> Self {
        Self {
            launcher: Arc::new(launcher),
            disk_limits,
        }
    }

    /// Removes what an earlier instance of sandbox `id` left (see
    /// [`Launcher::remove_leftovers`]).
    async fn remove_leftovers(&self, id: &SandboxId) -> Result<(), RuntimeError> {
        let launcher = self.launcher.clone();
        let name = id.to_string();
        tokio::task::spawn_blocking(move || launcher.remove_leftovers(&name))
            .await
            .map_err(|e| RuntimeError::op(id, "remove leftovers", e))?
            .map_err(|e| RuntimeError::op(id, "remove leftovers", e))
    }

    /// Removes the runtime's parent cgroups once every sandbox is gone (shutdown
    /// without `--keep-sandboxes`); see [`Launcher::remove_parent_cgroups`].
    pub fn remove_parent_cgroups(&self) -> Result<(), crate::ContainerError> {
        self.launcher.remove_parent_cgroups()
    }

    fn container_spec(&self, spec: &SandboxSpec) -> Result<ContainerSpec, RuntimeError> {
        // The range follows the sandbox (its ordinal), not the slot: a resumed sandbox
        // gets another slot but must see its kept files owned by the same ids.
        let first = UID_BASE_RANGE
            .checked_add(spec.ordinal)
            .and_then(|r| r.checked_mul(65536))
            .ok_or_else(|| {
                RuntimeError::create(
                    &spec.id,
                    format!("ordinal {} has no uid range", spec.ordinal),
                )
            })?;
        let id_range = IdRange::new(first).map_err(|e| RuntimeError::create(&spec.id, e))?;
        if spec.artifacts.layers.is_empty() {
            return Err(RuntimeError::create(
                &spec.id,
                "the template has no root filesystem layers",
            ));
        }
        Ok(ContainerSpec {
            id: spec.id.to_string(),
            layers: spec.artifacts.layers.clone(),
            state_dir: spec.state_dir.clone(),
            id_range,
            netns: spec.slot.guest_netns.clone(),
            address: Some(IpAddr::V4(Ipv4Addr::new(169, 254, 0, 21))),
            hostname: spec.hostname.clone(),
            nameservers: spec
                .slot
                .nameservers
                .iter()
                .map(|a| IpAddr::V4(*a))
                .collect(),
            limits: Limits {
                cpu_count: Some(spec.resources.cpu_count.max(1)),
                memory_bytes: u64::from(spec.resources.memory_mb.max(64)) << 20,
                pids_max: PIDS_MAX,
                disk_bytes: self
                    .disk_limits
                    .then(|| u64::from(spec.resources.disk_mb.max(64)) << 20),
            },
            init: PathBuf::from(ENVD_PATH),
            args: vec!["hearth-envd".to_owned()],
            env: vec![("HEARTH_ENVD_LOG".to_owned(), "info".to_owned())],
            output: Some(spec.state_dir.join("envd.log")),
        })
    }

    async fn launch(&self, spec: &SandboxSpec) -> Result<Box<dyn Instance>, RuntimeError> {
        let cspec = self.container_spec(spec)?;
        let launcher = self.launcher.clone();
        let id = spec.id.clone();
        let container = tokio::task::spawn_blocking(move || launcher.launch(&cspec))
            .await
            .map_err(|e| RuntimeError::create(&id, e))?
            .map_err(|e| RuntimeError::create(&id, e))?;
        let instance = ContainerInstance {
            id: spec.id.clone(),
            addr: SocketAddr::new(IpAddr::V4(spec.slot.host_addr), ENVD_PORT),
            container: Arc::new(Mutex::new(container)),
            cpu_count: spec.resources.cpu_count.max(1),
        };
        if let Err(e) = hearth_runtime::wait_for_envd(&spec.id, instance.addr, ENVD_READY).await {
            let mut instance = instance;
            let _ = instance.kill().await;
            return Err(e);
        }
        Ok(Box::new(instance))
    }
}

fn persisted(state: &serde_json::Value) -> Option<Persisted> {
    serde_json::from_value(state.clone()).ok()
}

#[async_trait]
impl Runtime for ContainerRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Container
    }

    fn memory_pause(&self) -> MemoryPause {
        MemoryPause::Freeze
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<Box<dyn Instance>, RuntimeError> {
        self.launch(spec).await
    }

    async fn adopt(
        &self,
        spec: &SandboxSpec,
        state: &serde_json::Value,
    ) -> Result<Option<Box<dyn Instance>>, RuntimeError> {
        let Some(p) = persisted(state) else {
            return Ok(None);
        };
        let launcher = self.launcher.clone();
        let found = tokio::task::spawn_blocking(move || launcher.adopt(&p))
            .await
            .map_err(|e| RuntimeError::op(&spec.id, "adopt", e))?
            .map_err(|e| RuntimeError::op(&spec.id, "adopt", e))?;
        Ok(found.map(|container| {
            Box::new(ContainerInstance {
                id: spec.id.clone(),
                addr: SocketAddr::new(IpAddr::V4(spec.slot.host_addr), ENVD_PORT),
                container: Arc::new(Mutex::new(container)),
                cpu_count: spec.resources.cpu_count.max(1),
            }) as Box<dyn Instance>
        }))
    }

    async fn cleanup(
        &self,
        spec: &SandboxSpec,
        state: Option<&serde_json::Value>,
    ) -> Result<(), RuntimeError> {
        let Some(p) = state.and_then(persisted) else {
            return Ok(());
        };
        let launcher = self.launcher.clone();
        tokio::task::spawn_blocking(move || launcher.cleanup_stale(&p, false))
            .await
            .map_err(|e| RuntimeError::op(&spec.id, "cleanup", e))?
            .map_err(|e| RuntimeError::op(&spec.id, "cleanup", e))
    }

    async fn resume(
        &self,
        spec: &SandboxSpec,
        paused: &PausedState,
    ) -> Result<Box<dyn Instance>, RuntimeError> {
        match paused.mode {
            // The writable layer is still in the state directory: a new launch picks it
            // up, which is a fresh boot over the kept files. A crash of hearth while
            // it stopped the previous instance (or started one from this pause) may
            // have left that instance's cgroups, or even its processes: they go
            // first, or the launch would refuse a sandbox that still exists.
            PauseMode::Filesystem => {
                self.remove_leftovers(&spec.id).await?;
                self.launch(spec).await
            }
            PauseMode::Full => Err(RuntimeError::Unsupported {
                runtime: RuntimeKind::Container,
                op: "resuming a memory pause from disk",
            }),
        }
    }

    /// A filesystem pause needs nothing beyond the writable layer, which stays in the
    /// state directory: if it is there, the sandbox can boot over it.
    ///
    /// The instance is gone, but hearth may have died between killing it and
    /// removing its cgroups: those go now (a failure is logged; resume retries).
    fn recovered_pause(&self, spec: &SandboxSpec) -> Option<PausedState> {
        if !spec.state_dir.join("upper").is_dir() {
            return None;
        }
        if let Err(e) = self.launcher.remove_leftovers(spec.id.as_str()) {
            tracing::warn!(sandbox_id = %spec.id, error = %hearth_types::ErrorChain(&e), "leftovers of an interrupted pause not removed");
        }
        Some(PausedState {
            mode: PauseMode::Filesystem,
            data: serde_json::json!({}),
        })
    }

    async fn reclaim(&self, live: &[SandboxId]) -> Result<(), RuntimeError> {
        let live: Vec<String> = live.iter().map(|id| id.to_string()).collect();
        let launcher = self.launcher.clone();
        let removed = tokio::task::spawn_blocking(move || {
            launcher.cleanup_orphans(|id| live.iter().any(|l| l == id))
        })
        .await
        .map_err(|e| RuntimeError::Unavailable {
            runtime: RuntimeKind::Container,
            reason: e.to_string(),
        })?
        .map_err(|e| RuntimeError::Unavailable {
            runtime: RuntimeKind::Container,
            reason: e.to_string(),
        })?;
        if !removed.is_empty() {
            tracing::info!(sandboxes = ?removed, "removed cgroups of sandboxes nobody knows");
        }
        Ok(())
    }

    fn remove_state_dir(&self, dir: &Path) -> Result<(), RuntimeError> {
        crate::remove_state_dir(dir).map_err(|e| RuntimeError::Operation {
            id: SandboxId::parse(
                &dir.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            )
            .unwrap_or_else(|_| SandboxId::generate()),
            op: "remove the state directory",
            err: Box::new(e),
        })
    }
}

/// One running container sandbox.
#[derive(Debug)]
struct ContainerInstance {
    id: SandboxId,
    addr: SocketAddr,
    container: Arc<Mutex<Container>>,
    cpu_count: u32,
}

impl ContainerInstance {
    async fn with<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut Container) -> Result<T, crate::ContainerError> + Send + 'static,
    ) -> Result<T, RuntimeError> {
        let c = self.container.clone();
        let id = self.id.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = c.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| RuntimeError::op(&id, op, e))?
        .map_err(|e| RuntimeError::op(&self.id, op, e))
    }
}

#[async_trait]
impl Instance for ContainerInstance {
    fn envd_addr(&self) -> SocketAddr {
        self.addr
    }

    fn state(&self) -> serde_json::Value {
        let c = self.container.lock().unwrap_or_else(|p| p.into_inner());
        serde_json::to_value(c.persisted()).unwrap_or_default()
    }

    fn is_alive(&self) -> bool {
        let mut c = self.container.lock().unwrap_or_else(|p| p.into_inner());
        // try_wait also reaps an init that exited on its own (no zombie is left).
        matches!(c.try_wait(), Ok(None))
    }

    async fn kill(&mut self) -> Result<(), RuntimeError> {
        self.with("kill", |c| c.kill(false)).await
    }

    async fn stats(&self) -> Result<Stats, RuntimeError> {
        let cpu_count = self.cpu_count;
        let s = self.with("stats", |c| c.stats()).await?;
        Ok(Stats {
            cpu_count,
            cpu_time_ns: s.cpu_usage_ns,
            mem_used: s.memory_usage_bytes,
            mem_total: s.memory_limit_bytes,
            mem_cache: s.memory_cache_bytes,
            disk_used: s.disk_used_bytes.unwrap_or(0),
            disk_total: s.disk_limit_bytes.unwrap_or(0),
        })
    }

    async fn pause(&mut self, memory: bool, _dir: &Path) -> Result<PausedState, RuntimeError> {
        if memory {
            self.with("freeze", |c| c.freeze()).await?;
            return Ok(PausedState {
                mode: PauseMode::Full,
                data: serde_json::json!({ "frozen": true }),
            });
        }
        // Filesystem pause: stop every process; the writable layer stays on disk.
        self.with("stop", |c| c.kill(false)).await?;
        Ok(PausedState {
            mode: PauseMode::Filesystem,
            data: serde_json::json!({}),
        })
    }

    async fn unfreeze(&mut self) -> Result<(), RuntimeError> {
        self.with("thaw", |c| c.thaw()).await
    }

    fn is_frozen(&self) -> bool {
        let c = self.container.lock().unwrap_or_else(|p| p.into_inner());
        c.is_frozen().unwrap_or(false)
    }

    /// Containers snapshot their files only: memory and processes are not kept, and
    /// the mode says so.
    async fn snapshot(&mut self, _memory: bool, dir: &Path) -> Result<Snapshot, RuntimeError> {
        let dest = dir.to_owned();
        let layer = self
            .with("snapshot", move |c| crate::snapshot(c, &dest))
            .await?;
        Ok(Snapshot {
            mode: PauseMode::Filesystem,
            artifacts: Artifacts {
                layers: vec![layer],
                ..Default::default()
            },
        })
    }
}
