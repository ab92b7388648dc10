// SPDX-License-Identifier: Apache-2.0
//! Pause and resume.
//!
//! What a pause keeps depends on the runtime and is recorded in the sandbox's
//! `paused` state (and reported as `pauseMode`):
//! - `full`: memory and processes. A microVM saves its memory and device state to
//!   disk and frees its RAM; a container is frozen in place (cgroup freezer) — its
//!   RAM stays allocated, and if hearth stops or the host reboots it falls back to a
//!   filesystem pause, which its `pauseMode` then says.
//! - `filesystem`: the files only; resume boots fresh over them.
//!
//! Pausing to disk is written to the store as `pausing` before the instance stops;
//! start-up turns a `pausing` row into either the running sandbox (if it still runs)
//! or the completed pause (if the runtime finished it), so a crash mid-pause never
//! leaves a half-written pause that resumes wrong.

use super::Node;
use crate::entry::{Entry, Live, Route};
use crate::error::NodeError;
use hearth_runtime::{MemoryPause, PauseMode, PausedState};
use hearth_store::SandboxState;
use hearth_types::{ErrorChain, SandboxId};
use std::time::Duration;
use time::OffsetDateTime;

impl Node {
    /// Pauses a running sandbox; `memory` asks to keep memory and processes.
    pub async fn pause(&self, id: &SandboxId, memory: bool) -> Result<(), NodeError> {
        let (entry, mut live) = self.locked(id).await?;
        if live.record.state == SandboxState::Paused {
            return Err(NodeError::Conflict(format!(
                "sandbox {id} is already paused"
            )));
        }
        self.pause_locked(&entry, &mut live, memory).await
    }

    pub(crate) async fn pause_locked(
        &self,
        entry: &Entry,
        live: &mut Live,
        memory: bool,
    ) -> Result<(), NodeError> {
        let id = live.record.id.clone();
        if live.record.state != SandboxState::Running || live.instance.is_none() {
            return Err(NodeError::Conflict(format!("sandbox {id} is not running")));
        }
        let freeze = memory && self.inner.runtime.memory_pause() == MemoryPause::Freeze;
        let dir = self.inner.config.sandbox_dir(id.as_str()).join("pause");
        if !freeze {
            live.record.state = SandboxState::Pausing;
            self.save(live)?;
        }
        entry.set_route(Route::Busy);
        let result = match live.instance.as_mut() {
            Some(instance) => instance.pause(memory, &dir).await,
            None => unreachable!("checked above"),
        };
        let paused = match result {
            Ok(p) => p,
            Err(err) => {
                // The runtime left the instance running: so is the sandbox.
                live.record.state = SandboxState::Running;
                let _ = self.save(live);
                if let Some(instance) = live.instance.as_deref() {
                    entry.set_route(self.running_route(live, instance));
                }
                return Err(err.into());
            }
        };
        if !freeze {
            // The instance is gone; so is its network.
            live.instance = None;
            if let Some(slot) = live.config.slot.take() {
                let _ = self.inner.network.release(slot).await;
            }
        }
        let now = OffsetDateTime::now_utc();
        live.config.paused = Some(paused);
        live.record.state = SandboxState::Paused;
        live.record.paused_at = Some(now);
        self.save(live)?;
        entry.set_route(Route::Paused {
            auto_resume: live.config.auto_resume,
        });
        tracing::info!(sandbox_id = %id, mode = ?live.config.paused.as_ref().map(|p| p.mode), "sandbox paused");
        Ok(())
    }

    /// Resumes a paused sandbox under the same id and token, to live `timeout`.
    /// `memory: false` boots fresh from the files even when memory was kept.
    pub(crate) async fn resume_locked(
        &self,
        entry: &Entry,
        live: &mut Live,
        timeout: Duration,
        memory: bool,
    ) -> Result<(), NodeError> {
        let id = live.record.id.clone();
        let mut paused = live
            .config
            .paused
            .clone()
            .ok_or_else(|| NodeError::Conflict(format!("sandbox {id} is not paused")))?;
        if let Some(instance) = live.instance.as_mut() {
            // Frozen in place.
            if memory {
                instance.unfreeze().await?;
                let now = OffsetDateTime::now_utc();
                live.record.state = SandboxState::Running;
                live.record.end_at = now + timeout;
                live.record.paused_at = None;
                live.config.paused = None;
                self.save(live)?;
                if let Some(instance) = live.instance.as_deref() {
                    entry.set_route(self.running_route(live, instance));
                }
                entry.set_end(live.record.end_at);
                tracing::info!(sandbox_id = %id, "sandbox resumed (thawed)");
                return Ok(());
            }
            self.freeze_to_filesystem(entry, live).await;
            paused = live.config.paused.clone().unwrap_or(paused);
        }
        if !memory {
            paused.mode = PauseMode::Filesystem;
        }
        live.record.state = SandboxState::Resuming;
        self.save(live)?;
        entry.set_route(Route::Busy);
        match self.start_paused(live, &paused).await {
            Ok(instance) => {
                let now = OffsetDateTime::now_utc();
                live.record.state = SandboxState::Running;
                live.record.end_at = now + timeout;
                live.record.paused_at = None;
                live.record.runtime_state = Some(instance.state());
                live.config.paused = None;
                entry.set_route(self.running_route(live, instance.as_ref()));
                entry.set_end(live.record.end_at);
                live.instance = Some(instance);
                self.save(live)?;
                tracing::info!(sandbox_id = %id, mode = ?paused.mode, "sandbox resumed");
                Ok(())
            }
            Err(err) => {
                tracing::warn!(sandbox_id = %id, error = %ErrorChain(&err), "resume failed; still paused");
                live.record.state = SandboxState::Paused;
                let _ = self.save(live);
                entry.set_route(Route::Paused {
                    auto_resume: live.config.auto_resume,
                });
                Err(err)
            }
        }
    }

    /// Takes a slot and has the runtime start the sandbox from its pause.
    async fn start_paused(
        &self,
        live: &mut Live,
        paused: &PausedState,
    ) -> Result<Box<dyn hearth_runtime::Instance>, NodeError> {
        let slot = self
            .inner
            .network
            .acquire(self.inner.runtime.kind(), &live.config.egress)
            .await
            .map_err(|e| {
                NodeError::Capacity(format!("no network slot available: {}", ErrorChain(&e)))
            })?;
        let spec = match self.spec(live, slot.clone()) {
            Ok(s) => s,
            Err(e) => {
                let _ = self.inner.network.release(slot).await;
                return Err(e);
            }
        };
        let mut instance = match self.inner.runtime.resume(&spec, paused).await {
            Ok(i) => i,
            Err(e) => {
                let _ = self.inner.network.release(slot).await;
                return Err(e.into());
            }
        };
        if let Err(e) = self.provision_envd(live, instance.envd_addr()).await {
            let _ = instance.kill().await;
            let _ = self.inner.network.release(slot).await;
            return Err(e);
        }
        live.config.slot = Some(slot);
        Ok(instance)
    }
}
