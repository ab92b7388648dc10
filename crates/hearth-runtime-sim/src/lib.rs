// SPDX-License-Identifier: Apache-2.0
//! A simulated runtime and network for control-plane tests (style: omicron's `sim`).
//!
//! **Not isolation.** Each "sandbox" is a `hearth-envd` process on the host, listening
//! on a free loopback port, running commands as host users. It exists so the API,
//! proxy and node can be tested end to end without root, namespaces or templates; it
//! is never selectable by `hearth serve` users (the binary exposes it only behind a
//! hidden, explicitly unsafe flag).

use async_trait::async_trait;
use hearth_node::{EgressPolicy, Network, NetworkError};
use hearth_runtime::{
    Instance, MemoryPause, NetSlot, PausedState, Runtime, RuntimeError, RuntimeKind, SandboxSpec,
    Stats,
};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Runs envd binaries as host processes.
#[derive(Debug)]
pub struct SimRuntime {
    envd: PathBuf,
}

impl SimRuntime {
    /// A runtime starting `envd` (path to a `hearth-envd` binary).
    pub fn new(envd: PathBuf) -> Self {
        Self { envd }
    }
}

#[derive(Debug)]
struct SimInstance {
    id: hearth_types::SandboxId,
    child: tokio::process::Child,
    addr: SocketAddr,
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[async_trait]
impl Runtime for SimRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Container
    }

    fn memory_pause(&self) -> MemoryPause {
        MemoryPause::Freeze
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<Box<dyn Instance>, RuntimeError> {
        std::fs::create_dir_all(&spec.state_dir).map_err(|e| RuntimeError::create(&spec.id, e))?;
        let log = std::fs::File::create(spec.state_dir.join("envd.log"))
            .map_err(|e| RuntimeError::create(&spec.id, e))?;
        let port = free_port().map_err(|e| RuntimeError::create(&spec.id, e))?;
        let child = tokio::process::Command::new(&self.envd)
            .args([
                "--addr",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--default-user",
                "root",
            ])
            .stdin(std::process::Stdio::null())
            .stdout(
                log.try_clone()
                    .map_err(|e| RuntimeError::create(&spec.id, e))?,
            )
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| RuntimeError::create(&spec.id, e))?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut inst = SimInstance {
            id: spec.id.clone(),
            child,
            addr,
        };
        if let Err(e) = hearth_runtime::wait_for_envd(&spec.id, addr, Duration::from_secs(10)).await
        {
            let _ = inst.kill().await;
            return Err(e);
        }
        Ok(Box::new(inst))
    }

    async fn adopt(
        &self,
        _spec: &SandboxSpec,
        _state: &serde_json::Value,
    ) -> Result<Option<Box<dyn Instance>>, RuntimeError> {
        // Sim processes die with the test process (kill_on_drop); nothing survives.
        Ok(None)
    }

    async fn cleanup(
        &self,
        _spec: &SandboxSpec,
        _state: Option<&serde_json::Value>,
    ) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn resume(
        &self,
        _spec: &SandboxSpec,
        _paused: &PausedState,
    ) -> Result<Box<dyn Instance>, RuntimeError> {
        Err(RuntimeError::Unsupported {
            runtime: RuntimeKind::Container,
            op: "resume (sim)",
        })
    }
}

#[async_trait]
impl Instance for SimInstance {
    fn envd_addr(&self) -> SocketAddr {
        self.addr
    }

    fn state(&self) -> serde_json::Value {
        serde_json::json!({ "sim": true, "port": self.addr.port() })
    }

    fn is_alive(&self) -> bool {
        self.child.id().is_some()
    }

    async fn kill(&mut self) -> Result<(), RuntimeError> {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        Ok(())
    }

    async fn stats(&self) -> Result<Stats, RuntimeError> {
        Ok(Stats {
            cpu_count: 1,
            mem_total: 512 << 20,
            ..Default::default()
        })
    }

    async fn pause(&mut self, _memory: bool, _dir: &Path) -> Result<PausedState, RuntimeError> {
        Err(RuntimeError::Unsupported {
            runtime: RuntimeKind::Container,
            op: "pause (sim)",
        })
    }
}

impl Drop for SimInstance {
    fn drop(&mut self) {
        tracing::debug!(sandbox_id = %self.id, "sim instance dropped");
    }
}

/// A network that hands out loopback "slots" (no isolation, no policy).
#[derive(Debug, Default)]
pub struct SimNetwork {
    next: AtomicU32,
}

#[async_trait]
impl Network for SimNetwork {
    async fn acquire(
        &self,
        kind: RuntimeKind,
        _policy: &EgressPolicy,
    ) -> Result<NetSlot, NetworkError> {
        let index = self.next.fetch_add(1, Ordering::Relaxed);
        Ok(NetSlot {
            index,
            kind,
            host_addr: Ipv4Addr::LOCALHOST,
            guest_netns: None,
            router_netns: PathBuf::new(),
            tap: None,
            mac: String::new(),
            nameservers: vec![],
        })
    }
    async fn set_policy(
        &self,
        _slot: &NetSlot,
        _policy: &EgressPolicy,
    ) -> Result<(), NetworkError> {
        Ok(())
    }
    async fn release(&self, _slot: NetSlot) -> Result<(), NetworkError> {
        Ok(())
    }
    async fn shutdown(&self, _keep_in_use: bool) -> Result<(), NetworkError> {
        Ok(())
    }
}
