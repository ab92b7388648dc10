// SPDX-License-Identifier: Apache-2.0
//! Snapshots (templates made from a running sandbox), forks, and their files.
//!
//! A snapshot is the runtime's copy of a sandbox (its writable layer for containers;
//! disk and memory for microVMs) in `<data>/snapshots/<dir>`, stacked on the
//! sandbox's own artifacts, and registered as a template of kind `snapshot`: any
//! sandbox can start from it by id or name. A fork is an unregistered snapshot that
//! `count` new sandboxes start from at once.
//!
//! Files outlive their template rows when something still uses them: every sandbox
//! keeps a copy of the artifacts it started from, and a snapshot directory is deleted
//! only when no template and no sandbox (running or paused) refers to it.

use super::{Node, SandboxInfo};
use crate::error::NodeError;
use crate::node::create::CreateRequest;
use hearth_runtime::Artifacts;
use hearth_store::{SandboxState, TemplateKind, TemplateRecord};
use hearth_types::{ErrorChain, SandboxId, TemplateId};
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;
use time::OffsetDateTime;

fn short_id() -> String {
    let bytes: [u8; 6] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Node {
    /// Takes a snapshot of a running sandbox as a template (new, or a new build of the
    /// snapshot called `name`); the sandbox keeps running.
    pub async fn snapshot(
        &self,
        id: &SandboxId,
        name: Option<String>,
        memory: bool,
    ) -> Result<TemplateRecord, NodeError> {
        let existing = match &name {
            Some(n) => self
                .inner
                .store
                .template(n)?
                .filter(|t| t.names.iter().any(|x| x == n)),
            None => None,
        };
        if let Some(t) = &existing
            && t.kind != TemplateKind::Snapshot
        {
            return Err(NodeError::Conflict(format!(
                "{} names a template, not a snapshot",
                t.id
            )));
        }
        let (artifacts, source) = self.take_snapshot(id, memory).await?;
        let template_id = existing
            .as_ref()
            .map(|t| t.id.clone())
            .unwrap_or_else(|| TemplateId::generate().to_string());
        let record = TemplateRecord {
            id: template_id,
            kind: TemplateKind::Snapshot,
            build_id: short_id(),
            names: name.into_iter().collect(),
            runtime: Some(self.inner.runtime.kind().as_str().to_owned()),
            cpu_count: source.cpu_count,
            memory_mb: source.memory_mb,
            disk_mb: source.disk_mb,
            envd_version: super::ENVD_VERSION.to_owned(),
            artifacts: serde_json::to_value(&artifacts)
                .map_err(|e| NodeError::internal("failed to encode snapshot artifacts", e))?,
            source_sandbox: Some(id.to_string()),
            created_at: OffsetDateTime::now_utc(),
        };
        let stored = self.inner.store.upsert_template(&record);
        self.forget_pending(&artifacts);
        stored?;
        tracing::info!(sandbox_id = %id, snapshot = %record.id, "snapshot taken");
        if existing.is_some() {
            // The previous build's files go unless sandboxes still use them.
            self.spawn_snapshot_gc();
        }
        Ok(record)
    }

    /// Snapshots `id` into a fresh directory, returning the complete artifacts a new
    /// sandbox starts from and the source's record. The directory stays marked
    /// pending (safe from collection) until the caller has stored a reference.
    async fn take_snapshot(
        &self,
        id: &SandboxId,
        memory: bool,
    ) -> Result<(Artifacts, hearth_store::SandboxRecord), NodeError> {
        let (_, mut live) = self.locked(id).await?;
        if live.record.state != SandboxState::Running {
            return Err(NodeError::Conflict(format!("sandbox {id} is not running")));
        }
        let base = self.artifacts(&live)?;
        let dir = self
            .inner
            .config
            .snapshots_dir()
            .join(format!("{id}-{}", short_id()));
        let _files = self.inner.snapshot_files.lock().await;
        self.inner
            .pending_snapshots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(dir.clone());
        let instance = live
            .instance
            .as_mut()
            .ok_or_else(|| NodeError::Conflict(format!("sandbox {id} is not running")))?;
        match instance.snapshot(memory, &dir).await {
            Ok(snap) => Ok((base.with_snapshot(&snap.artifacts), live.record.clone())),
            Err(e) => {
                self.inner
                    .pending_snapshots
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&dir);
                let _ = self.inner.runtime.remove_state_dir(&dir);
                Err(e.into())
            }
        }
    }

    fn forget_pending(&self, artifacts: &Artifacts) {
        let mut pending = self
            .inner
            .pending_snapshots
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        pending.retain(|dir| {
            !referenced_paths(artifacts)
                .iter()
                .any(|p| p.starts_with(dir))
        });
    }

    /// Forks a running sandbox into `count` independent sandboxes that start from a
    /// snapshot of it taken now. Each result is a sandbox or the reason it failed.
    pub async fn fork(
        &self,
        id: &SandboxId,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<Result<SandboxInfo, NodeError>>, NodeError> {
        let (artifacts, source) = self.take_snapshot(id, true).await?;
        let req = {
            let entry = self
                .entry(id)
                .ok_or_else(|| NodeError::sandbox_not_found(id.as_str()))?;
            let live = entry.live.lock().await;
            CreateRequest::like(&live, timeout)
        };
        let template = TemplateRecord {
            id: source.template_id.clone(),
            kind: TemplateKind::Snapshot,
            build_id: String::new(),
            names: vec![],
            runtime: Some(self.inner.runtime.kind().as_str().to_owned()),
            cpu_count: source.cpu_count,
            memory_mb: source.memory_mb,
            disk_mb: source.disk_mb,
            envd_version: super::ENVD_VERSION.to_owned(),
            artifacts: serde_json::Value::Null,
            source_sandbox: Some(id.to_string()),
            created_at: OffsetDateTime::now_utc(),
        };
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..count {
            let (node, req, template, artifacts, alias) = (
                self.clone(),
                req.clone(),
                template.clone(),
                artifacts.clone(),
                source.alias.clone(),
            );
            tasks.spawn(
                async move { (i, node.create_from(req, &template, artifacts, alias).await) },
            );
        }
        let mut results: Vec<Option<Result<SandboxInfo, NodeError>>> =
            (0..count).map(|_| None).collect();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((i, r)) => results[i] = Some(r),
                Err(e) => tracing::error!(error = %e, "fork task failed"),
            }
        }
        // Every fork now refers to the files (or none succeeded): collection decides.
        self.forget_pending(&artifacts);
        self.spawn_snapshot_gc();
        tracing::info!(sandbox_id = %id, count, "sandbox forked");
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(NodeError::internal("fork failed", "task panicked"))))
            .collect())
    }

    /// Deletes a snapshot (a template made from a sandbox). Its files stay while
    /// sandboxes started from it exist.
    pub async fn delete_template(&self, id: &str) -> Result<(), NodeError> {
        let t = self
            .inner
            .store
            .template(id)?
            .filter(|t| t.id == id)
            .ok_or_else(|| NodeError::NotFound {
                kind: "template",
                id: id.to_owned(),
            })?;
        if t.kind != TemplateKind::Snapshot {
            return Err(NodeError::Conflict(format!(
                "template {id} is built by hearth and cannot be deleted through the API"
            )));
        }
        self.inner.store.delete_template(&t.id)?;
        tracing::info!(snapshot = %t.id, "snapshot deleted");
        self.gc_snapshots().await;
        Ok(())
    }

    pub(crate) fn spawn_snapshot_gc(&self) {
        let node = self.clone();
        tokio::spawn(async move { node.gc_snapshots().await });
    }

    /// Deletes snapshot directories that no template and no sandbox refers to.
    pub(crate) async fn gc_snapshots(&self) {
        let _files = self.inner.snapshot_files.lock().await;
        let mut referenced: HashSet<PathBuf> = HashSet::new();
        match self.inner.store.list_templates(None) {
            Ok(templates) => {
                for t in templates {
                    if let Ok(a) = serde_json::from_value::<Artifacts>(t.artifacts) {
                        referenced.extend(referenced_paths(&a));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %ErrorChain(&e), "snapshot collection skipped");
                return;
            }
        }
        match self.inner.store.all_sandboxes() {
            Ok(sandboxes) => {
                for s in sandboxes {
                    if let Ok(c) = serde_json::from_value::<crate::entry::SandboxConfig>(s.config)
                        && let Some(a) = c.artifacts
                    {
                        referenced.extend(referenced_paths(&a));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %ErrorChain(&e), "snapshot collection skipped");
                return;
            }
        }
        let pending = self
            .inner
            .pending_snapshots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Ok(dirs) = std::fs::read_dir(self.inner.config.snapshots_dir()) else {
            return;
        };
        for d in dirs.flatten() {
            let dir = d.path();
            if pending.contains(&dir) || referenced.iter().any(|p| p.starts_with(&dir)) {
                continue;
            }
            match self.inner.runtime.remove_state_dir(&dir) {
                Ok(()) => tracing::info!(dir = %dir.display(), "removed unused snapshot files"),
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %ErrorChain(&e), "snapshot files not removed")
                }
            }
        }
    }
}

/// Every path an artifacts description refers to.
fn referenced_paths(a: &Artifacts) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = a.layers.clone();
    out.extend(a.disk_image.iter().cloned());
    out.extend(a.vm_state.iter().cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn referenced_paths_cover_layers_and_images() {
        let a = Artifacts {
            layers: vec!["/s/a/upper".into(), "/l/debian".into()],
            disk_image: Some("/s/b/disk.qcow2".into()),
            vm_state: None,
        };
        let refs = referenced_paths(&a);
        assert!(refs.iter().any(|p| p.starts_with(Path::new("/s/a"))));
        assert!(refs.iter().any(|p| p.starts_with(Path::new("/s/b"))));
        assert!(!refs.iter().any(|p| p.starts_with(Path::new("/s/c"))));
    }
}
