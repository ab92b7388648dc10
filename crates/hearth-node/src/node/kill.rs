// SPDX-License-Identifier: Apache-2.0
//! Killing sandboxes, and shutting the node down.

use super::Node;
use crate::entry::{Entry, Live, Route};
use crate::error::NodeError;
use hearth_runtime::{MemoryPause, PauseMode, PausedState};
use hearth_store::SandboxState;
use hearth_types::{ErrorChain, SandboxId};
use std::sync::atomic::Ordering;

/// How often a kill is tried before the sandbox is given up on.
const KILL_ATTEMPTS: u32 = 3;

impl Node {
    /// Kills a sandbox (running or paused) and removes everything it had.
    pub async fn kill(&self, id: &SandboxId) -> Result<(), NodeError> {
        let (entry, mut live) = self.locked(id).await?;
        self.destroy(&entry, &mut live).await;
        drop(live);
        self.remove_entry(id);
        tracing::info!(sandbox_id = %id, "sandbox killed");
        self.spawn_snapshot_gc();
        Ok(())
    }

    /// Stops the instance, frees its slot and files, and deletes the record. Never
    /// fails: each step logs and continues, so one stuck resource cannot keep the
    /// others alive.
    pub(crate) async fn destroy(&self, entry: &Entry, live: &mut Live) {
        let id = live.record.id.clone();
        entry.set_route(Route::Gone);
        live.removed = true;
        let mut stopped = true;
        if let Some(mut instance) = live.instance.take() {
            // Kills are idempotent and retry what is left: a sandbox with thousands
            // of processes may need more than one runtime timeout to empty.
            for attempt in 1..=KILL_ATTEMPTS {
                match instance.kill().await {
                    Ok(()) => {
                        stopped = true;
                        break;
                    }
                    Err(err) => {
                        stopped = false;
                        tracing::error!(sandbox_id = %id, attempt, error = %ErrorChain(&err), "kill failed");
                    }
                }
            }
        }
        match live.config.slot.take() {
            // Processes that may still live in the slot's namespaces must never meet
            // the slot's next sandbox: the slot stays out of use (a restart reclaims
            // it with whatever is left).
            Some(slot) if !stopped => {
                tracing::error!(sandbox_id = %id, slot = slot.index, "slot kept out of use: the sandbox did not stop");
            }
            Some(slot) => {
                if let Err(err) = self.inner.network.release(slot).await {
                    tracing::error!(sandbox_id = %id, error = %ErrorChain(&err), "slot release failed");
                }
            }
            None => {}
        }
        let dir = self.inner.config.sandbox_dir(id.as_str());
        if let Err(err) = self.runtime_of(live).remove_state_dir(&dir) {
            tracing::error!(sandbox_id = %id, error = %ErrorChain(&err), "state dir removal failed");
        }
        if let Err(err) = self.inner.store.delete_sandbox(&id) {
            tracing::error!(sandbox_id = %id, error = %ErrorChain(&err), "store delete failed");
        }
        self.free_ordinal(live.config.ordinal);
    }

    /// Stops background tasks and, unless configured to keep them, kills every
    /// running sandbox and releases the network.
    ///
    /// Paused sandboxes are data and survive: a sandbox frozen in place (a container
    /// memory pause) is turned into a filesystem pause first — its processes end, its
    /// files stay, and its pause mode says so from then on.
    pub async fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::Relaxed);
        self.inner.tasks.cancel();
        if self.inner.config.keep_sandboxes_on_exit {
            tracing::info!("leaving running sandboxes for re-adoption");
            if let Err(e) = self.inner.network.shutdown(true).await {
                tracing::error!(error = %ErrorChain(&e), "network detach failed");
            }
            return;
        }
        let mut tasks = tokio::task::JoinSet::new();
        for entry in self.all_entries() {
            let node = self.clone();
            tasks.spawn(async move {
                let mut live = entry.live.lock().await;
                if live.removed || live.instance.is_none() {
                    return;
                }
                if live.record.state == SandboxState::Paused {
                    node.freeze_to_filesystem(&entry, &mut live).await;
                    return;
                }
                node.destroy(&entry, &mut live).await;
                drop(live);
                node.remove_entry(&entry.id);
            });
        }
        while tasks.join_next().await.is_some() {}
        if let Err(e) = self.inner.network.shutdown(false).await {
            tracing::error!(error = %ErrorChain(&e), "network shutdown failed");
        }
    }

    /// Turns a frozen (memory-paused in place) sandbox into a filesystem pause: its
    /// processes end, its writable layer stays.
    pub(crate) async fn freeze_to_filesystem(&self, entry: &Entry, live: &mut Live) {
        let id = live.record.id.clone();
        debug_assert_eq!(self.runtime_of(live).memory_pause(), MemoryPause::Freeze);
        if let Some(mut instance) = live.instance.take()
            && let Err(e) = instance.kill().await
        {
            tracing::error!(sandbox_id = %id, error = %ErrorChain(&e), "stopping a frozen sandbox failed");
        }
        if let Some(slot) = live.config.slot.take() {
            let _ = self.inner.network.release(slot).await;
        }
        live.config.paused = Some(PausedState {
            mode: PauseMode::Filesystem,
            data: serde_json::json!({}),
        });
        if let Err(e) = self.save(live) {
            tracing::error!(sandbox_id = %id, error = %ErrorChain(&e), "store update failed");
        }
        entry.set_route(Route::Paused {
            auto_resume: live.config.auto_resume,
        });
        tracing::info!(sandbox_id = %id, "frozen sandbox kept as a filesystem pause");
    }
}
