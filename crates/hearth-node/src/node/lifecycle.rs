// SPDX-License-Identifier: Apache-2.0
//! Timeouts, connect, auto-resume and network policy updates.

use super::{Node, SandboxInfo};
use crate::entry::{Entry, to_ms};
use crate::error::NodeError;
use hearth_store::SandboxState;
use hearth_types::{ErrorChain, SandboxId};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

impl Node {
    /// Sets the end of life to now + `timeout` (may shorten).
    pub async fn set_timeout(&self, id: &SandboxId, timeout: Duration) -> Result<(), NodeError> {
        self.update_end(id, timeout, false).await.map(|_| ())
    }

    /// Extends the end of life to at least now + `timeout`.
    pub async fn extend(
        &self,
        id: &SandboxId,
        timeout: Duration,
    ) -> Result<SandboxInfo, NodeError> {
        self.update_end(id, timeout, true).await
    }

    async fn update_end(
        &self,
        id: &SandboxId,
        timeout: Duration,
        extend_only: bool,
    ) -> Result<SandboxInfo, NodeError> {
        if timeout > self.inner.config.max_timeout {
            return Err(NodeError::InvalidRequest(format!(
                "timeout must be at most {} seconds",
                self.inner.config.max_timeout.as_secs()
            )));
        }
        let (entry, mut live) = self.locked(id).await?;
        if live.record.state != SandboxState::Running {
            return Err(NodeError::Conflict(format!("sandbox {id} is not running")));
        }
        let new_end = OffsetDateTime::now_utc() + timeout;
        if !extend_only || new_end > live.record.end_at {
            live.record.end_at = new_end;
            self.save(&mut live)?;
            entry.set_end(new_end);
        }
        Ok(self.info(&live))
    }

    /// Ends a sandbox whose time is up: pauses it when it asked for that, else kills it.
    pub(crate) async fn expire(&self, entry: Arc<Entry>) {
        let mut live = entry.live.lock().await;
        // Re-check under the lock: a timeout change or kill may have won the race.
        if live.removed
            || live.record.state != SandboxState::Running
            || to_ms(live.record.end_at) > to_ms(OffsetDateTime::now_utc())
        {
            return;
        }
        let id = live.record.id.clone();
        if live.config.auto_pause {
            let memory = live.config.auto_pause_memory;
            match self.pause_locked(&entry, &mut live, memory).await {
                Ok(()) => {
                    tracing::info!(sandbox_id = %id, "sandbox timed out: paused");
                    return;
                }
                Err(err) => {
                    tracing::error!(sandbox_id = %id, error = %ErrorChain(&err), "auto-pause failed; killing");
                }
            }
        }
        self.destroy(&entry, &mut live).await;
        drop(live);
        self.remove_entry(&id);
        self.spawn_snapshot_gc();
        tracing::info!(sandbox_id = %id, "sandbox timed out: killed");
    }

    /// Connects to a sandbox: extends a running one (returns `false`); resumes a
    /// paused one (returns `true`), with its memory when `memory` and the pause kept
    /// it. `auto_pause` (deprecated `/resume`) replaces the pause-on-timeout setting.
    pub async fn connect(
        &self,
        id: &SandboxId,
        timeout: Duration,
        memory: bool,
        auto_pause: Option<bool>,
    ) -> Result<(SandboxInfo, bool), NodeError> {
        if timeout > self.inner.config.max_timeout {
            return Err(NodeError::InvalidRequest(format!(
                "timeout must be at most {} seconds",
                self.inner.config.max_timeout.as_secs()
            )));
        }
        let (entry, mut live) = self.locked(id).await?;
        if let Some(ap) = auto_pause {
            live.config.auto_pause = ap;
        }
        if live.record.state == SandboxState::Paused {
            self.resume_locked(&entry, &mut live, timeout, memory)
                .await?;
            return Ok((self.info(&live), true));
        }
        let new_end = OffsetDateTime::now_utc() + timeout;
        if new_end > live.record.end_at {
            live.record.end_at = new_end;
            entry.set_end(new_end);
        }
        self.save(&mut live)?;
        Ok((self.info(&live), false))
    }

    /// Resumes a paused sandbox because traffic arrived for it (its policy allows it),
    /// for its original lifetime.
    pub async fn auto_resume(&self, id: &SandboxId) -> Result<(), NodeError> {
        let (entry, mut live) = self.locked(id).await?;
        if live.record.state != SandboxState::Paused {
            return Ok(());
        }
        if !live.config.auto_resume {
            return Err(NodeError::Conflict(format!(
                "sandbox {id} does not resume on traffic"
            )));
        }
        let timeout = Duration::from_secs(live.config.timeout_secs.max(15));
        self.resume_locked(&entry, &mut live, timeout, true).await?;
        tracing::info!(sandbox_id = %id, "sandbox auto-resumed by traffic");
        Ok(())
    }

    /// Replaces a sandbox's egress allow/deny lists (applied now if it runs, at
    /// resume otherwise).
    pub async fn update_network(
        &self,
        id: &SandboxId,
        allow_out: Vec<String>,
        deny_out: Vec<String>,
    ) -> Result<(), NodeError> {
        let (_, mut live) = self.locked(id).await?;
        live.config.egress.allow_out = allow_out;
        live.config.egress.deny_out = deny_out;
        if let Some(slot) = &live.config.slot {
            self.inner
                .network
                .set_policy(slot, &live.config.egress)
                .await
                .map_err(|e| NodeError::internal("failed to apply the network policy", e))?;
        }
        self.save(&mut live)
    }
}
