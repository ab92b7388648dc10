// SPDX-License-Identifier: Apache-2.0
//! Start-up: make the store and reality agree.
//!
//! For every stored sandbox:
//! - `starting`: creation never completed (the client got no sandbox): clean up.
//! - `running`: adopt the instance if it still runs (thawing it if a crash left it
//!   frozen mid-pause); otherwise it died with the host or by hand: clean up.
//! - `pausing`: if the instance still runs, the pause did not happen: it is running.
//!   Otherwise the runtime either finished the pause (it is paused) or not (clean up).
//! - `resuming`: the pause it resumes from is intact: back to paused.
//! - `paused`: stays paused. A container frozen in place is re-adopted frozen if it
//!   still exists, and becomes a filesystem pause if not.
//!
//! Then everything nobody owns is removed: cgroups, state and snapshot directories.

use super::Node;
use crate::entry::{Entry, Live, Route, SandboxConfig};
use crate::error::NodeError;
use crate::network::EgressPolicy;
use hearth_runtime::{Instance, NetSlot, PauseMode, PausedState};
use hearth_store::{SandboxState, Store};
use hearth_types::{ErrorChain, SandboxId};
use std::sync::Arc;

impl Node {
    /// Slots (with their policies) of stored sandboxes that may still hold one: the
    /// network must be started with these adopted, before [`Node::start`].
    pub fn adoptable_slots(store: &Store) -> Result<Vec<(NetSlot, EgressPolicy)>, NodeError> {
        Ok(store
            .all_sandboxes()?
            .into_iter()
            .filter_map(|r| {
                let c: SandboxConfig = serde_json::from_value(r.config).ok()?;
                Some((c.slot?, c.egress))
            })
            .collect())
    }

    pub(super) async fn reconcile(&self) -> Result<(), NodeError> {
        for record in self.inner.store.all_sandboxes()? {
            let config: SandboxConfig =
                serde_json::from_value(record.config.clone()).unwrap_or_default();
            let id = record.id.clone();
            let mut live = Live {
                record,
                instance: None,
                config,
                removed: false,
            };
            let outcome = self.reconcile_one(&mut live).await;
            match outcome {
                Ok(Some(route)) => {
                    self.inner
                        .ordinals
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(live.config.ordinal);
                    if let Err(e) = self.save(&mut live) {
                        tracing::error!(sandbox_id = %id, error = %ErrorChain(&e), "store update failed");
                    }
                    let entry = Arc::new(Entry::new(live, route));
                    self.insert_entry(entry);
                }
                Ok(None) => {
                    self.discard(&mut live).await;
                }
                Err(e) => {
                    tracing::error!(sandbox_id = %id, error = %ErrorChain(&e), "cannot recover sandbox; removing it");
                    self.discard(&mut live).await;
                }
            }
        }
        let live: Vec<SandboxId> = self.all_entries().iter().map(|e| e.id.clone()).collect();
        if let Err(e) = self.inner.runtime.reclaim(&live).await {
            tracing::warn!(error = %ErrorChain(&e), "runtime reclaim failed");
        }
        self.remove_orphan_dirs(&live);
        self.gc_snapshots().await;
        Ok(())
    }

    /// Decides one sandbox's fate; `None` means it is gone and must be discarded.
    async fn reconcile_one(&self, live: &mut Live) -> Result<Option<Route>, NodeError> {
        let id = live.record.id.clone();
        let paused_route = |live: &Live| Route::Paused {
            auto_resume: live.config.auto_resume,
        };
        match live.record.state {
            SandboxState::Starting => Ok(None),
            SandboxState::Paused => {
                let frozen = live.config.slot.is_some();
                if !frozen {
                    return Ok(Some(paused_route(live)));
                }
                match self.adopt(live).await {
                    Some(instance) if instance.is_frozen() => {
                        live.instance = Some(instance);
                        tracing::info!(sandbox_id = %id, "re-adopted frozen sandbox");
                        Ok(Some(paused_route(live)))
                    }
                    other => {
                        // The frozen processes are gone (or thawed by someone): keep
                        // the files as a filesystem pause, and say so.
                        if let Some(mut i) = other {
                            let _ = i.kill().await;
                        }
                        self.release_slot(live).await;
                        live.config.paused = Some(PausedState {
                            mode: PauseMode::Filesystem,
                            data: serde_json::json!({}),
                        });
                        tracing::warn!(sandbox_id = %id, "frozen sandbox did not survive; kept as a filesystem pause");
                        Ok(Some(paused_route(live)))
                    }
                }
            }
            SandboxState::Resuming => {
                if let Some(mut i) = self.adopt(live).await {
                    let _ = i.kill().await;
                }
                self.release_slot(live).await;
                live.record.state = SandboxState::Paused;
                Ok(Some(paused_route(live)))
            }
            SandboxState::Running | SandboxState::Pausing => {
                if let Some(mut instance) = self.adopt(live).await {
                    if instance.is_frozen() {
                        instance.unfreeze().await?;
                    }
                    live.record.state = SandboxState::Running;
                    live.config.paused = None;
                    let route = self.running_route(live, instance.as_ref());
                    live.instance = Some(instance);
                    tracing::info!(sandbox_id = %id, "re-adopted running sandbox");
                    return Ok(Some(route));
                }
                if live.record.state == SandboxState::Pausing {
                    let spec_slot = live.config.slot.clone().unwrap_or_else(placeholder_slot);
                    let recovered = self
                        .spec(live, spec_slot)
                        .ok()
                        .and_then(|spec| self.inner.runtime.recovered_pause(&spec));
                    if let Some(paused) = recovered {
                        self.release_slot(live).await;
                        live.config.paused = Some(paused);
                        live.record.state = SandboxState::Paused;
                        tracing::info!(sandbox_id = %id, "completed an interrupted pause");
                        return Ok(Some(paused_route(live)));
                    }
                }
                Ok(None)
            }
        }
    }

    async fn release_slot(&self, live: &mut Live) {
        if let Some(slot) = live.config.slot.take()
            && let Err(e) = self.inner.network.release(slot).await
        {
            tracing::warn!(sandbox_id = %live.record.id, error = %ErrorChain(&e), "slot release failed");
        }
    }

    /// Cleans up after a sandbox that did not survive and forgets it.
    async fn discard(&self, live: &mut Live) {
        let id = live.record.id.clone();
        tracing::info!(sandbox_id = %id, state = live.record.state.as_str(), "sandbox did not survive; cleaning up");
        if let Some(slot) = live.config.slot.clone()
            && let Ok(spec) = self.spec(live, slot)
            && let Err(e) = self
                .inner
                .runtime
                .cleanup(&spec, live.record.runtime_state.as_ref())
                .await
        {
            tracing::warn!(sandbox_id = %id, error = %ErrorChain(&e), "cleanup failed");
        }
        self.release_slot(live).await;
        let _ = self
            .inner
            .runtime
            .remove_state_dir(&self.inner.config.sandbox_dir(id.as_str()));
        if let Err(e) = self.inner.store.delete_sandbox(&id) {
            tracing::error!(sandbox_id = %id, error = %ErrorChain(&e), "store delete failed");
        }
    }

    async fn adopt(&self, live: &Live) -> Option<Box<dyn Instance>> {
        let state = live.record.runtime_state.as_ref()?;
        let slot = live.config.slot.clone()?;
        let spec = self.spec(live, slot).ok()?;
        match self.inner.runtime.adopt(&spec, state).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(sandbox_id = %live.record.id, error = %ErrorChain(&e), "adoption failed");
                None
            }
        }
    }

    /// Deletes sandbox directories that belong to no known sandbox.
    fn remove_orphan_dirs(&self, live: &[SandboxId]) {
        let Ok(dir) = std::fs::read_dir(self.inner.config.sandboxes_dir()) else {
            return;
        };
        for d in dir.flatten() {
            let name = d.file_name().to_string_lossy().into_owned();
            if !live.iter().any(|id| id.as_str() == name) {
                tracing::info!(dir = %d.path().display(), "removing orphaned sandbox directory");
                let _ = self.inner.runtime.remove_state_dir(&d.path());
            }
        }
    }
}

/// A slot stand-in for computing a spec of a sandbox that holds none (only its paths
/// and artifacts are used).
fn placeholder_slot() -> NetSlot {
    NetSlot {
        index: 0,
        kind: hearth_runtime::RuntimeKind::Container,
        host_addr: std::net::Ipv4Addr::UNSPECIFIED,
        guest_netns: None,
        router_netns: std::path::PathBuf::new(),
        tap: None,
        mac: String::new(),
        nameservers: vec![],
    }
}
