// SPDX-License-Identifier: Apache-2.0
//! The node: owns the runtime, the network, the store and every sandbox's life cycle.
//!
//! Each sandbox is an [`Entry`] whose async mutex serialises its life-cycle
//! operations (create, kill, timeout, pause, resume, snapshot) so they can never
//! interleave on one sandbox; different sandboxes proceed in parallel. The proxy never
//! takes that lock: it reads the entry's [`Route`], which operations update.
//!
//! One file per operation: [`create`], [`kill`], [`lifecycle`] (timeouts, connect,
//! network), [`pause`] (pause and resume), [`snapshot`] (snapshots, forks, their
//! files) and [`reconcile`] (start-up).
//!
//! Crash safety: every state change is written to the store *before* the step that
//! could leave a half-done state (`starting`, `pausing`, `resuming`), and start-up
//! reconciles each row with what really exists: adopted, completed, rolled back or
//! cleaned up — never a sandbox that claims more than it has.

mod create;
mod kill;
mod lifecycle;
mod pause;
mod reconcile;
mod snapshot;

pub use create::CreateRequest;

use crate::config::NodeConfig;
use crate::entry::{Entry, Live, Route, SandboxConfig, to_ms};
use crate::envd::EnvdClient;
use crate::error::NodeError;
use crate::metrics::Sample;
use crate::network::Network;
use crate::token::TokenSeed;
use hearth_runtime::{Artifacts, Instance, NetSlot, Resources, Runtime, SandboxSpec};
use hearth_store::{
    SandboxFilter, SandboxPage, SandboxRecord, SandboxState, Store, TemplateRecord,
};
use hearth_types::SandboxId;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// The version of envd Hearth ships; SDKs gate features on it.
pub const ENVD_VERSION: &str = "0.6.13";

/// Hostname inside every sandbox (as E2B's).
const HOSTNAME: &str = "e2b.local";

/// A sandbox as the API reports it.
#[derive(Debug, Clone)]
pub struct SandboxInfo {
    /// The stored record.
    pub record: SandboxRecord,
    /// Its settings.
    pub config: SandboxConfig,
    /// envd's access token (if secured).
    pub envd_token: Option<String>,
    /// Traffic token (if public traffic is restricted).
    pub traffic_token: Option<String>,
}

/// The node.
#[derive(Debug, Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: NodeConfig,
    store: Store,
    /// The runtimes sandboxes may run on; the first is the default.
    runtimes: Vec<Arc<dyn Runtime>>,
    network: Arc<dyn Network>,
    seed: TokenSeed,
    envd: EnvdClient,
    entries: RwLock<HashMap<SandboxId, Arc<Entry>>>,
    shutting_down: AtomicBool,
    tasks: CancellationToken,
    /// Serialises snapshot-file garbage collection with snapshot creation.
    snapshot_files: tokio::sync::Mutex<()>,
    /// Snapshot directories being set up, not yet referenced by the store.
    pending_snapshots: Mutex<HashSet<PathBuf>>,
    /// Ordinals held by sandboxes (see `SandboxSpec::ordinal`).
    ordinals: Mutex<std::collections::BTreeSet<u32>>,
}

impl Node {
    /// Starts the node over `runtimes` (the first is the default; a template may pin
    /// another): reconciles stored sandboxes with reality, then starts the evictor and
    /// the metrics sampler.
    pub async fn start(
        config: NodeConfig,
        store: Store,
        runtimes: Vec<Arc<dyn Runtime>>,
        network: Arc<dyn Network>,
    ) -> Result<Self, NodeError> {
        if runtimes.is_empty() {
            return Err(NodeError::InvalidRequest(
                "a node needs at least one runtime".into(),
            ));
        }
        for dir in [config.sandboxes_dir(), config.snapshots_dir()] {
            std::fs::create_dir_all(&dir).map_err(|e| {
                NodeError::internal(format!("failed to create {}", dir.display()), e)
            })?;
        }
        let seed = TokenSeed::load_or_create(&config.home.join("seed"))
            .map_err(|e| NodeError::internal("failed to load the token seed", e))?;
        let node = Self {
            inner: Arc::new(Inner {
                config,
                store,
                runtimes,
                network,
                seed,
                envd: EnvdClient::default(),
                entries: RwLock::new(HashMap::new()),
                shutting_down: AtomicBool::new(false),
                tasks: CancellationToken::new(),
                snapshot_files: tokio::sync::Mutex::new(()),
                pending_snapshots: Mutex::new(HashSet::new()),
                ordinals: Mutex::new(std::collections::BTreeSet::new()),
            }),
        };
        node.reconcile().await?;
        node.spawn_evictor();
        node.spawn_sampler();
        Ok(node)
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The default runtime.
    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.inner.runtimes[0]
    }

    /// The enabled runtime called `name` (`container`, `microvm`).
    fn runtime_named(&self, name: &str) -> Result<Arc<dyn Runtime>, NodeError> {
        self.inner
            .runtimes
            .iter()
            .find(|r| r.kind().as_str() == name)
            .cloned()
            .ok_or_else(|| {
                NodeError::Capacity(format!("the {name} runtime is not enabled on this server"))
            })
    }

    /// The runtime a sandbox runs on (its record says which).
    fn runtime_of(&self, live: &Live) -> Arc<dyn Runtime> {
        self.runtime_named(&live.record.runtime)
            .unwrap_or_else(|_| self.inner.runtimes[0].clone())
    }

    /// Removes a directory that may belong to any runtime (orphans, snapshot files):
    /// each runtime knows its own kind of directory (a btrfs subvolume, say).
    fn remove_any_dir(&self, dir: &std::path::Path) -> Result<(), hearth_runtime::RuntimeError> {
        let mut last = Ok(());
        for r in &self.inner.runtimes {
            last = r.remove_state_dir(dir);
            if last.is_ok() {
                return last;
            }
        }
        last
    }

    /// Node configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// Registers (or replaces) a template.
    pub fn register_template(&self, t: &TemplateRecord) -> Result<(), NodeError> {
        Ok(self.inner.store.upsert_template(t)?)
    }

    fn entry(&self, id: &SandboxId) -> Option<Arc<Entry>> {
        self.inner
            .entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// The entry of `id` with its lock held, unless it does not exist (any more).
    async fn locked(
        &self,
        id: &SandboxId,
    ) -> Result<(Arc<Entry>, tokio::sync::OwnedMutexGuard<Live>), NodeError> {
        let entry = self
            .entry(id)
            .ok_or_else(|| NodeError::sandbox_not_found(id.as_str()))?;
        let live = entry.live.clone().lock_owned().await;
        if live.removed {
            return Err(NodeError::sandbox_not_found(id.as_str()));
        }
        Ok((entry, live))
    }

    fn insert_entry(&self, entry: Arc<Entry>) {
        self.inner
            .entries
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(entry.id.clone(), entry);
    }

    fn remove_entry(&self, id: &SandboxId) {
        self.inner
            .entries
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// The lowest ordinal no sandbox holds (ordinals start at 1).
    fn allocate_ordinal(&self) -> Result<u32, NodeError> {
        let mut used = self
            .inner
            .ordinals
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut n = 1;
        while used.contains(&n) {
            n += 1;
        }
        if n > self.inner.config.max_ordinal {
            return Err(NodeError::Capacity(
                "too many sandboxes on this node".into(),
            ));
        }
        used.insert(n);
        Ok(n)
    }

    fn free_ordinal(&self, n: u32) {
        self.inner
            .ordinals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&n);
    }

    fn all_entries(&self) -> Vec<Arc<Entry>> {
        self.inner
            .entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Number of sandboxes currently running.
    pub fn running_count(&self) -> usize {
        self.all_entries()
            .iter()
            .filter(|e| matches!(e.route(), Route::Running { .. } | Route::Busy))
            .count()
    }

    fn info(&self, live: &Live) -> SandboxInfo {
        let id = live.record.id.as_str();
        SandboxInfo {
            record: live.record.clone(),
            config: live.config.clone(),
            envd_token: live.config.secure.then(|| self.inner.seed.envd_token(id)),
            traffic_token: live
                .config
                .restrict_public_traffic
                .then(|| self.inner.seed.traffic_token(id)),
        }
    }

    /// Writes `live`'s record (with its config) to the store.
    fn save(&self, live: &mut Live) -> Result<(), NodeError> {
        live.record.config = serde_json::to_value(&live.config)
            .map_err(|e| NodeError::internal("failed to encode sandbox config", e))?;
        self.inner.store.update_sandbox(&live.record)?;
        Ok(())
    }

    /// The route of a running instance.
    fn running_route(&self, live: &Live, instance: &dyn Instance) -> Route {
        static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Route::Running {
            generation: GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            envd: instance.envd_addr(),
            host: instance.envd_addr().ip(),
            cancel: CancellationToken::new(),
            traffic_token: live
                .config
                .restrict_public_traffic
                .then(|| self.inner.seed.traffic_token(live.record.id.as_str())),
        }
    }

    /// The artifacts a sandbox starts from: its own copy (kept so a deleted template
    /// or snapshot cannot pull the files from under it), else its template's.
    fn artifacts(&self, live: &Live) -> Result<Artifacts, NodeError> {
        if let Some(a) = &live.config.artifacts {
            return Ok(a.clone());
        }
        let template = self
            .inner
            .store
            .template(&live.record.template_id)?
            .ok_or_else(|| NodeError::NotFound {
                kind: "template",
                id: live.record.template_id.clone(),
            })?;
        template_artifacts(&template)
    }

    fn spec(&self, live: &Live, slot: NetSlot) -> Result<SandboxSpec, NodeError> {
        Ok(SandboxSpec {
            id: live.record.id.clone(),
            template_id: live.record.template_id.clone(),
            artifacts: self.artifacts(live)?,
            resources: Resources {
                cpu_count: live.record.cpu_count,
                memory_mb: live.record.memory_mb,
                disk_mb: live.record.disk_mb,
            },
            slot,
            ordinal: live.config.ordinal,
            state_dir: self.inner.config.sandbox_dir(live.record.id.as_str()),
            hostname: HOSTNAME.to_owned(),
        })
    }

    // ---- read --------------------------------------------------------------------

    /// A sandbox's current info.
    pub async fn get(&self, id: &SandboxId) -> Result<SandboxInfo, NodeError> {
        let (_, live) = self.locked(id).await?;
        Ok(self.info(&live))
    }

    /// One page of the sandbox listing.
    pub fn list(&self, filter: &SandboxFilter) -> Result<SandboxPage, NodeError> {
        Ok(self.inner.store.list_sandboxes(filter)?)
    }

    /// Where the proxy should send traffic for `id`.
    pub fn route(&self, id: &SandboxId) -> Route {
        self.entry(id).map(|e| e.route()).unwrap_or(Route::Gone)
    }

    /// The running sandbox whose envd token satisfies `matches` (signed URLs carry
    /// no sandbox id).
    pub fn sandbox_for_token(&self, matches: impl Fn(&str) -> bool) -> Option<SandboxId> {
        self.all_entries()
            .iter()
            .filter(|e| matches!(e.route(), Route::Running { .. }))
            .find(|e| matches(&self.inner.seed.envd_token(e.id.as_str())))
            .map(|e| e.id.clone())
    }

    /// The envd token a sandbox has (whether or not it is secured).
    pub fn envd_token(&self, id: &SandboxId) -> String {
        self.inner.seed.envd_token(id.as_str())
    }

    /// The sandbox's log file (envd's output), for the logs endpoint.
    pub fn log_path(&self, id: &SandboxId) -> PathBuf {
        self.inner.config.sandbox_dir(id.as_str()).join("envd.log")
    }

    // ---- metrics -----------------------------------------------------------------

    /// Usage samples of a sandbox within `[start, end]` (unix seconds), plus a fresh
    /// one when it runs.
    pub async fn metrics(
        &self,
        id: &SandboxId,
        start: Option<i64>,
        end: Option<i64>,
    ) -> Result<Vec<Sample>, NodeError> {
        let entry = self
            .entry(id)
            .ok_or_else(|| NodeError::sandbox_not_found(id.as_str()))?;
        self.sample(&entry).await;
        if entry.live.lock().await.removed {
            return Err(NodeError::sandbox_not_found(id.as_str()));
        }
        let samples = entry.samples.lock().unwrap_or_else(|p| p.into_inner());
        Ok(samples
            .iter()
            .filter(|s| start.is_none_or(|st| s.at.unix_timestamp() >= st))
            .filter(|s| end.is_none_or(|en| s.at.unix_timestamp() <= en))
            .copied()
            .collect())
    }

    async fn sample(&self, entry: &Entry) {
        let stats = {
            let mut live = entry.live.lock().await;
            let alive = match live.instance.as_ref() {
                Some(i) => i.is_alive(),
                None => return,
            };
            if !alive && live.record.state == SandboxState::Running && !live.removed {
                // Its init died without being asked to (a crash, an OOM of envd):
                // nothing can be served any more, so free everything it held.
                tracing::warn!(sandbox_id = %entry.id, "sandbox exited unexpectedly; removing it");
                self.destroy(entry, &mut live).await;
                drop(live);
                self.remove_entry(&entry.id);
                return;
            }
            match live.instance.as_ref() {
                Some(i) if live.record.state == SandboxState::Running => i.stats().await,
                _ => return,
            }
        };
        let Ok(stats) = stats else { return };
        let now = OffsetDateTime::now_utc();
        let mut samples = entry.samples.lock().unwrap_or_else(|p| p.into_inner());
        let sample = Sample::from_stats(&stats, now, samples.back());
        samples.push_back(sample);
        while samples.len() > self.inner.config.metrics_history {
            samples.pop_front();
        }
    }

    fn spawn_sampler(&self) {
        let node = self.clone();
        let stop = self.inner.tasks.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(node.inner.config.metrics_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                for entry in node.all_entries() {
                    if matches!(entry.route(), Route::Running { .. }) {
                        node.sample(&entry).await;
                    }
                }
            }
        });
    }

    fn spawn_evictor(&self) {
        let node = self.clone();
        let stop = self.inner.tasks.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let now = to_ms(OffsetDateTime::now_utc());
                for entry in node.all_entries() {
                    if entry.end_ms() <= now && matches!(entry.route(), Route::Running { .. }) {
                        let node = node.clone();
                        tokio::spawn(async move { node.expire(entry).await });
                    }
                }
            }
        });
    }
}

/// A template's artifacts, decoded.
fn template_artifacts(t: &TemplateRecord) -> Result<Artifacts, NodeError> {
    serde_json::from_value(t.artifacts.clone())
        .map_err(|e| NodeError::internal(format!("template {} has unreadable artifacts", t.id), e))
}
