// SPDX-License-Identifier: Apache-2.0
//! The node: owns the runtime, the network, the store and every sandbox's life cycle.
//!
//! Each sandbox is an [`Entry`] whose async mutex serialises its life-cycle
//! operations (create, kill, timeout, pause, resume) so they can never interleave on
//! one sandbox; different sandboxes proceed in parallel. The proxy never takes that
//! lock: it reads the entry's [`Route`], which operations update.
//!
//! Crash safety: a sandbox is written to the store as `starting` before the runtime
//! starts it and flipped to `running` after; at start-up every row is reconciled with
//! what really runs (adopted, cleaned up, or kept paused).

use crate::config::NodeConfig;
use crate::entry::{Entry, Live, Route, SandboxConfig, to_ms};
use crate::envd::{EnvdClient, InitBody};
use crate::error::NodeError;
use crate::metrics::Sample;
use crate::network::{EgressPolicy, Network};
use crate::token::TokenSeed;
use hearth_runtime::{Resources, Runtime, SandboxSpec};
use hearth_store::{
    SandboxFilter, SandboxPage, SandboxRecord, SandboxState, Store, TemplateRecord,
};
use hearth_types::{ErrorChain, SandboxId};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// The version of envd Hearth ships; SDKs gate features on it.
pub const ENVD_VERSION: &str = "0.6.13";

/// Hostname inside every sandbox (as E2B's).
const HOSTNAME: &str = "e2b.local";

/// A validated request to create a sandbox.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    /// Template id or name.
    pub template: String,
    /// Lifetime.
    pub timeout: Duration,
    /// User metadata.
    pub metadata: BTreeMap<String, String>,
    /// Env vars for every process.
    pub env_vars: BTreeMap<String, String>,
    /// Pause instead of kill on timeout.
    pub auto_pause: bool,
    /// Keep memory on auto-pause.
    pub auto_pause_memory: bool,
    /// Resume on traffic.
    pub auto_resume: bool,
    /// `allow_internet_access` as given.
    pub allow_internet_access: Option<bool>,
    /// The client's network config, echoed back.
    pub network: Option<serde_json::Value>,
    /// Egress policy derived from the two fields above.
    pub egress: EgressPolicy,
    /// Require the traffic token on non-envd ports.
    pub restrict_public_traffic: bool,
    /// Require envd's access token.
    pub secure: bool,
}

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
    runtime: Arc<dyn Runtime>,
    network: Arc<dyn Network>,
    seed: TokenSeed,
    envd: EnvdClient,
    entries: RwLock<HashMap<SandboxId, Arc<Entry>>>,
    shutting_down: AtomicBool,
    tasks: CancellationToken,
}

impl Node {
    /// Starts the node: reconciles stored sandboxes with reality, then starts the
    /// evictor and the metrics sampler.
    pub async fn start(
        config: NodeConfig,
        store: Store,
        runtime: Arc<dyn Runtime>,
        network: Arc<dyn Network>,
    ) -> Result<Self, NodeError> {
        std::fs::create_dir_all(config.sandboxes_dir())
            .map_err(|e| NodeError::internal("failed to create the sandboxes directory", e))?;
        let seed = TokenSeed::load_or_create(&config.home.join("seed"))
            .map_err(|e| NodeError::internal("failed to load the token seed", e))?;
        let node = Self {
            inner: Arc::new(Inner {
                config,
                store,
                runtime,
                network,
                seed,
                envd: EnvdClient::default(),
                entries: RwLock::new(HashMap::new()),
                shutting_down: AtomicBool::new(false),
                tasks: CancellationToken::new(),
            }),
        };
        node.reconcile().await?;
        node.spawn_evictor();
        node.spawn_sampler();
        Ok(node)
    }

    /// Slots (with their policies) of stored sandboxes that may still run: the network
    /// must be started with these adopted, before [`Node::start`].
    pub fn adoptable_slots(
        store: &Store,
    ) -> Result<Vec<(hearth_runtime::NetSlot, EgressPolicy)>, NodeError> {
        Ok(store
            .all_sandboxes()?
            .into_iter()
            .filter(|r| r.state != SandboxState::Paused)
            .filter_map(|r| {
                let c: SandboxConfig = serde_json::from_value(r.config).ok()?;
                Some((c.slot?, c.egress))
            })
            .collect())
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The runtime sandboxes run on.
    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.inner.runtime
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

    /// Number of sandboxes currently running.
    pub fn running_count(&self) -> usize {
        self.inner
            .entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
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

    fn spec(
        &self,
        record: &SandboxRecord,
        template: &TemplateRecord,
        slot: hearth_runtime::NetSlot,
    ) -> Result<SandboxSpec, NodeError> {
        let artifacts = serde_json::from_value(template.artifacts.clone()).map_err(|e| {
            NodeError::internal(
                format!("template {} has unreadable artifacts", template.id),
                e,
            )
        })?;
        Ok(SandboxSpec {
            id: record.id.clone(),
            template_id: template.id.clone(),
            artifacts,
            resources: Resources {
                cpu_count: record.cpu_count,
                memory_mb: record.memory_mb,
                disk_mb: record.disk_mb,
            },
            slot,
            state_dir: self.inner.config.sandbox_dir(record.id.as_str()),
            hostname: HOSTNAME.to_owned(),
        })
    }

    // ---- create ------------------------------------------------------------------

    /// Creates a sandbox and waits until it serves requests.
    pub async fn create(&self, req: CreateRequest) -> Result<SandboxInfo, NodeError> {
        if self.inner.shutting_down.load(Ordering::Relaxed) {
            return Err(NodeError::ShuttingDown);
        }
        if req.timeout.is_zero() || req.timeout > self.inner.config.max_timeout {
            return Err(NodeError::InvalidRequest(format!(
                "timeout must be between 1 and {} seconds",
                self.inner.config.max_timeout.as_secs()
            )));
        }
        let template =
            self.inner
                .store
                .template(&req.template)?
                .ok_or_else(|| NodeError::NotFound {
                    kind: "template",
                    id: req.template.clone(),
                })?;
        let now = OffsetDateTime::now_utc();
        let id = SandboxId::generate();
        let config = SandboxConfig {
            auto_pause: req.auto_pause,
            auto_pause_memory: req.auto_pause_memory,
            auto_resume: req.auto_resume,
            allow_internet_access: req.allow_internet_access,
            network: req.network.clone(),
            egress: req.egress.clone(),
            restrict_public_traffic: req.restrict_public_traffic,
            secure: req.secure,
            timeout_secs: req.timeout.as_secs(),
            slot: None,
            paused: None,
        };
        let mut env_vars = req.env_vars.clone();
        let record = SandboxRecord {
            id: id.clone(),
            template_id: template.id.clone(),
            alias: (req.template != template.id).then(|| req.template.clone()),
            state: SandboxState::Starting,
            started_at: now,
            end_at: now + req.timeout,
            cpu_count: template.cpu_count,
            memory_mb: template.memory_mb,
            disk_mb: template.disk_mb,
            metadata: req.metadata.clone(),
            env_vars: std::mem::take(&mut env_vars),
            config: serde_json::to_value(&config)
                .map_err(|e| NodeError::internal("failed to encode sandbox config", e))?,
            runtime: self.inner.runtime.kind().as_str().to_owned(),
            runtime_state: None,
            paused_at: None,
        };
        self.inner.store.insert_sandbox(&record)?;
        let entry = Arc::new(Entry::new(
            Live {
                record,
                instance: None,
                config,
                removed: false,
            },
            Route::Busy,
        ));
        self.insert_entry(entry.clone());
        let mut live = entry.live.lock().await;
        match self.start_instance(&mut live, &template, &entry).await {
            Ok(()) => {
                tracing::info!(sandbox_id = %id, template = %template.id, "sandbox created");
                Ok(self.info(&live))
            }
            Err(err) => {
                tracing::warn!(sandbox_id = %id, error = %ErrorChain(&err), "create failed");
                live.removed = true;
                entry.set_route(Route::Gone);
                let _ = self.inner.store.delete_sandbox(&id);
                drop(live);
                self.remove_entry(&id);
                Err(err)
            }
        }
    }

    /// Takes a slot, starts the runtime instance, provisions envd and marks the
    /// sandbox running. On failure everything it took is released again.
    async fn start_instance(
        &self,
        live: &mut Live,
        template: &TemplateRecord,
        entry: &Entry,
    ) -> Result<(), NodeError> {
        let id = live.record.id.clone();
        let slot = self
            .inner
            .network
            .acquire(self.inner.runtime.kind(), &live.config.egress)
            .await
            .map_err(|e| {
                NodeError::Capacity(format!("no network slot available: {}", ErrorChain(&e)))
            })?;
        let spec = match self.spec(&live.record, template, slot.clone()) {
            Ok(s) => s,
            Err(e) => {
                let _ = self.inner.network.release(slot).await;
                return Err(e);
            }
        };
        let mut instance = match self.inner.runtime.create(&spec).await {
            Ok(i) => i,
            Err(e) => {
                let _ = self.inner.network.release(slot).await;
                let _ = self.inner.runtime.remove_state_dir(&spec.state_dir);
                return Err(e.into());
            }
        };
        let result = async {
            self.provision_envd(live, instance.envd_addr(), None)
                .await?;
            live.config.slot = Some(slot.clone());
            live.record.state = SandboxState::Running;
            live.record.runtime_state = Some(instance.state());
            live.record.config = serde_json::to_value(&live.config)
                .map_err(|e| NodeError::internal("failed to encode sandbox config", e))?;
            self.inner.store.update_sandbox(&live.record)?;
            Ok::<_, NodeError>(())
        }
        .await;
        if let Err(err) = result {
            let _ = instance.kill().await;
            let _ = self.inner.network.release(slot).await;
            let _ = self.inner.runtime.remove_state_dir(&spec.state_dir);
            return Err(err);
        }
        entry.set_route(Route::Running {
            envd: instance.envd_addr(),
            host: instance.envd_addr().ip(),
            cancel: CancellationToken::new(),
            traffic_token: live
                .config
                .restrict_public_traffic
                .then(|| self.inner.seed.traffic_token(id.as_str())),
        });
        entry.set_end(live.record.end_at);
        live.instance = Some(instance);
        Ok(())
    }

    /// Sends envd its `/init`: env vars, token, default user and the host clock.
    async fn provision_envd(
        &self,
        live: &Live,
        addr: SocketAddr,
        current_token: Option<&str>,
    ) -> Result<(), NodeError> {
        let id = live.record.id.as_str();
        let mut env = BTreeMap::new();
        env.insert("E2B_SANDBOX".to_owned(), "true".to_owned());
        env.insert("E2B_SANDBOX_ID".to_owned(), id.to_owned());
        env.insert(
            "E2B_TEMPLATE_ID".to_owned(),
            live.record.template_id.clone(),
        );
        env.extend(live.record.env_vars.clone());
        let body = InitBody {
            env_vars: env,
            access_token: live.config.secure.then(|| self.inner.seed.envd_token(id)),
            timestamp: OffsetDateTime::now_utc(),
            default_user: Some(self.inner.config.default_user.clone()),
            default_workdir: None,
            ca_bundle: self.inner.config.ca_bundle.clone(),
        };
        self.inner
            .envd
            .init(addr, &body, current_token, Duration::from_secs(10))
            .await
            .map_err(|detail| NodeError::Envd {
                id: id.to_owned(),
                op: "/init",
                detail,
            })
    }

    // ---- read --------------------------------------------------------------------

    /// A sandbox's current info.
    pub async fn get(&self, id: &SandboxId) -> Result<SandboxInfo, NodeError> {
        let entry = self
            .entry(id)
            .ok_or_else(|| NodeError::sandbox_not_found(id.as_str()))?;
        let live = entry.live.lock().await;
        if live.removed {
            return Err(NodeError::sandbox_not_found(id.as_str()));
        }
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

    /// Sandboxes whose envd token equals `token` (signed URLs carry no sandbox id).
    pub fn sandbox_for_token(&self, matches: impl Fn(&str) -> bool) -> Option<SandboxId> {
        let entries = self.inner.entries.read().unwrap_or_else(|p| p.into_inner());
        entries
            .keys()
            .find(|id| matches(&self.inner.seed.envd_token(id.as_str())))
            .cloned()
    }

    /// The envd token a sandbox has (whether or not it is secured).
    pub fn envd_token(&self, id: &SandboxId) -> String {
        self.inner.seed.envd_token(id.as_str())
    }

    // ---- kill --------------------------------------------------------------------

    /// Kills a sandbox (running or paused) and removes everything it had.
    pub async fn kill(&self, id: &SandboxId) -> Result<(), NodeError> {
        let entry = self
            .entry(id)
            .ok_or_else(|| NodeError::sandbox_not_found(id.as_str()))?;
        let mut live = entry.live.lock().await;
        if live.removed {
            return Err(NodeError::sandbox_not_found(id.as_str()));
        }
        self.destroy(&entry, &mut live).await;
        drop(live);
        self.remove_entry(id);
        tracing::info!(sandbox_id = %id, "sandbox killed");
        Ok(())
    }

    /// Stops the instance, frees its slot and files, and deletes the record. Never
    /// fails: each step logs and continues, so one stuck resource cannot keep the
    /// others alive.
    async fn destroy(&self, entry: &Entry, live: &mut Live) {
        let id = live.record.id.clone();
        entry.set_route(Route::Gone);
        live.removed = true;
        if let Some(mut instance) = live.instance.take()
            && let Err(err) = instance.kill().await
        {
            tracing::error!(sandbox_id = %id, error = %ErrorChain(&err), "kill failed");
        }
        if let Some(slot) = live.config.slot.take()
            && let Err(err) = self.inner.network.release(slot).await
        {
            tracing::error!(sandbox_id = %id, error = %ErrorChain(&err), "slot release failed");
        }
        let dir = self.inner.config.sandbox_dir(id.as_str());
        if let Err(err) = self.inner.runtime.remove_state_dir(&dir) {
            tracing::error!(sandbox_id = %id, error = %ErrorChain(&err), "state dir removal failed");
        }
        if let Err(err) = self.inner.store.delete_sandbox(&id) {
            tracing::error!(sandbox_id = %id, error = %ErrorChain(&err), "store delete failed");
        }
    }

    // ---- timeouts ----------------------------------------------------------------

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
        let entry = self
            .entry(id)
            .ok_or_else(|| NodeError::sandbox_not_found(id.as_str()))?;
        let mut live = entry.live.lock().await;
        if live.removed {
            return Err(NodeError::sandbox_not_found(id.as_str()));
        }
        if live.record.state != SandboxState::Running {
            return Err(NodeError::sandbox_not_found(id.as_str()));
        }
        let new_end = OffsetDateTime::now_utc() + timeout;
        if !extend_only || new_end > live.record.end_at {
            live.record.end_at = new_end;
            self.inner.store.update_sandbox(&live.record)?;
            entry.set_end(new_end);
        }
        Ok(self.info(&live))
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
                let due: Vec<Arc<Entry>> = {
                    let entries = node.inner.entries.read().unwrap_or_else(|p| p.into_inner());
                    entries
                        .values()
                        .filter(|e| e.end_ms() <= now && matches!(e.route(), Route::Running { .. }))
                        .cloned()
                        .collect()
                };
                for entry in due {
                    let node = node.clone();
                    tokio::spawn(async move { node.expire(entry).await });
                }
            }
        });
    }

    async fn expire(&self, entry: Arc<Entry>) {
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
        tracing::info!(sandbox_id = %id, "sandbox timed out: killed");
    }

    // ---- pause / resume (runtime-dependent) --------------------------------------

    /// Pauses a running sandbox.
    pub async fn pause(&self, id: &SandboxId, memory: bool) -> Result<(), NodeError> {
        let entry = self
            .entry(id)
            .ok_or_else(|| NodeError::sandbox_not_found(id.as_str()))?;
        let mut live = entry.live.lock().await;
        if live.removed {
            return Err(NodeError::sandbox_not_found(id.as_str()));
        }
        if live.record.state == SandboxState::Paused {
            return Err(NodeError::Conflict(format!(
                "sandbox {id} is already paused"
            )));
        }
        self.pause_locked(&entry, &mut live, memory).await
    }

    async fn pause_locked(
        &self,
        _entry: &Entry,
        live: &mut Live,
        _memory: bool,
    ) -> Result<(), NodeError> {
        Err(NodeError::Runtime(
            hearth_runtime::RuntimeError::Unsupported {
                runtime: self.inner.runtime.kind(),
                op: if live.instance.is_some() {
                    "pause"
                } else {
                    "pause of a stopped sandbox"
                },
            },
        ))
    }

    /// Connects to a sandbox: extends a running one (returns `false`); resumes a
    /// paused one (returns `true`). `auto_pause` (deprecated `/resume`) replaces the
    /// sandbox's pause-on-timeout setting.
    pub async fn connect(
        &self,
        id: &SandboxId,
        timeout: Duration,
        memory: bool,
        auto_pause: Option<bool>,
    ) -> Result<(SandboxInfo, bool), NodeError> {
        let entry = self
            .entry(id)
            .ok_or_else(|| NodeError::sandbox_not_found(id.as_str()))?;
        let mut live = entry.live.lock().await;
        if live.removed {
            return Err(NodeError::sandbox_not_found(id.as_str()));
        }
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
        live.record.config = serde_json::to_value(&live.config)
            .map_err(|e| NodeError::internal("failed to encode sandbox config", e))?;
        self.inner.store.update_sandbox(&live.record)?;
        Ok((self.info(&live), false))
    }

    /// Resumes a paused sandbox because traffic arrived for it (its policy allows it),
    /// for its original lifetime.
    pub async fn auto_resume(&self, id: &SandboxId) -> Result<(), NodeError> {
        let entry = self
            .entry(id)
            .ok_or_else(|| NodeError::sandbox_not_found(id.as_str()))?;
        let mut live = entry.live.lock().await;
        if live.removed {
            return Err(NodeError::sandbox_not_found(id.as_str()));
        }
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

    async fn resume_locked(
        &self,
        _entry: &Entry,
        _live: &mut Live,
        _timeout: Duration,
        _memory: bool,
    ) -> Result<(), NodeError> {
        Err(NodeError::Runtime(
            hearth_runtime::RuntimeError::Unsupported {
                runtime: self.inner.runtime.kind(),
                op: "resume",
            },
        ))
    }

    /// Replaces a running sandbox's egress allow/deny lists.
    pub async fn update_network(
        &self,
        id: &SandboxId,
        allow_out: Vec<String>,
        deny_out: Vec<String>,
    ) -> Result<(), NodeError> {
        let entry = self
            .entry(id)
            .ok_or_else(|| NodeError::sandbox_not_found(id.as_str()))?;
        let mut live = entry.live.lock().await;
        if live.removed {
            return Err(NodeError::sandbox_not_found(id.as_str()));
        }
        live.config.egress.allow_out = allow_out;
        live.config.egress.deny_out = deny_out;
        if let Some(slot) = &live.config.slot {
            self.inner
                .network
                .set_policy(slot, &live.config.egress)
                .await
                .map_err(|e| NodeError::internal("failed to apply the network policy", e))?;
        }
        live.record.config = serde_json::to_value(&live.config)
            .map_err(|e| NodeError::internal("failed to encode sandbox config", e))?;
        self.inner.store.update_sandbox(&live.record)?;
        Ok(())
    }

    /// Takes a snapshot of a sandbox as a new template; the sandbox keeps running.
    pub async fn snapshot(
        &self,
        id: &SandboxId,
        _name: Option<String>,
        _memory: bool,
    ) -> Result<TemplateRecord, NodeError> {
        let _ = self
            .entry(id)
            .ok_or_else(|| NodeError::sandbox_not_found(id.as_str()))?;
        Err(NodeError::Runtime(
            hearth_runtime::RuntimeError::Unsupported {
                runtime: self.inner.runtime.kind(),
                op: "snapshot",
            },
        ))
    }

    /// Forks a sandbox into `count` independent copies.
    pub async fn fork(
        &self,
        id: &SandboxId,
        _count: usize,
        _timeout: Duration,
    ) -> Result<Vec<Result<SandboxInfo, NodeError>>, NodeError> {
        let _ = self
            .entry(id)
            .ok_or_else(|| NodeError::sandbox_not_found(id.as_str()))?;
        Err(NodeError::Runtime(
            hearth_runtime::RuntimeError::Unsupported {
                runtime: self.inner.runtime.kind(),
                op: "fork",
            },
        ))
    }

    /// Deletes a snapshot (a template made from a sandbox) and its files.
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
        if t.kind != hearth_store::TemplateKind::Snapshot {
            return Err(NodeError::Conflict(format!(
                "template {id} is built by hearth and cannot be deleted through the API"
            )));
        }
        self.inner.store.delete_template(&t.id)?;
        let dir = self.inner.config.home.join("snapshots").join(&t.id);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(template = %t.id, error = %e, "snapshot files not removed");
        }
        Ok(())
    }

    // ---- metrics -----------------------------------------------------------------

    /// Usage samples of a running sandbox within `[start, end]` (unix seconds), plus
    /// a fresh one when the range reaches now.
    pub async fn metrics(
        &self,
        id: &SandboxId,
        start: Option<i64>,
        end: Option<i64>,
    ) -> Result<Vec<Sample>, NodeError> {
        let entry = self
            .entry(id)
            .ok_or_else(|| NodeError::sandbox_not_found(id.as_str()))?;
        {
            let live = entry.live.lock().await;
            if live.removed {
                return Err(NodeError::sandbox_not_found(id.as_str()));
            }
        }
        self.sample(&entry).await;
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
                Some(i) => i.stats().await,
                None => return,
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
                let running: Vec<Arc<Entry>> = {
                    let entries = node.inner.entries.read().unwrap_or_else(|p| p.into_inner());
                    entries
                        .values()
                        .filter(|e| matches!(e.route(), Route::Running { .. }))
                        .cloned()
                        .collect()
                };
                for entry in running {
                    node.sample(&entry).await;
                }
            }
        });
    }

    /// The sandbox's log file (envd's output), for the logs endpoint.
    pub fn log_path(&self, id: &SandboxId) -> std::path::PathBuf {
        self.inner.config.sandbox_dir(id.as_str()).join("envd.log")
    }

    // ---- start-up and shut-down --------------------------------------------------

    /// Reconciles the store with what runs: adopts live sandboxes, cleans up dead
    /// ones, keeps paused ones, and frees every slot nobody holds.
    async fn reconcile(&self) -> Result<(), NodeError> {
        let records = self.inner.store.all_sandboxes()?;
        for record in records {
            let id = record.id.clone();
            let config: SandboxConfig =
                serde_json::from_value(record.config.clone()).unwrap_or_default();
            match record.state {
                SandboxState::Paused => {
                    let auto_resume = config.auto_resume;
                    self.insert_entry(Arc::new(Entry::new(
                        Live {
                            record,
                            instance: None,
                            config,
                            removed: false,
                        },
                        Route::Paused { auto_resume },
                    )));
                }
                _ => {
                    let adopted = self.adopt(&record, &config).await;
                    match adopted {
                        Some(instance) => {
                            let route = Route::Running {
                                envd: instance.envd_addr(),
                                host: instance.envd_addr().ip(),
                                cancel: CancellationToken::new(),
                                traffic_token: config
                                    .restrict_public_traffic
                                    .then(|| self.inner.seed.traffic_token(id.as_str())),
                            };
                            let mut record = record;
                            record.state = SandboxState::Running;
                            self.inner.store.update_sandbox(&record)?;
                            tracing::info!(sandbox_id = %id, "re-adopted running sandbox");
                            self.insert_entry(Arc::new(Entry::new(
                                Live {
                                    record,
                                    instance: Some(instance),
                                    config,
                                    removed: false,
                                },
                                route,
                            )));
                        }
                        None => {
                            tracing::info!(sandbox_id = %id, "sandbox did not survive; cleaning up");
                            if let Some(slot) = config.slot.clone()
                                && let Ok(Some(template)) =
                                    self.inner.store.template(&record.template_id)
                                && let Ok(spec) = self.spec(&record, &template, slot)
                                && let Err(e) = self
                                    .inner
                                    .runtime
                                    .cleanup(&spec, record.runtime_state.as_ref())
                                    .await
                            {
                                tracing::warn!(sandbox_id = %id, error = %ErrorChain(&e), "cleanup failed");
                            }
                            let _ = self
                                .inner
                                .runtime
                                .remove_state_dir(&self.inner.config.sandbox_dir(id.as_str()));
                            self.inner.store.delete_sandbox(&id)?;
                        }
                    }
                }
            }
        }
        let live: Vec<SandboxId> = self
            .inner
            .entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        if let Err(e) = self.inner.runtime.reclaim(&live).await {
            tracing::warn!(error = %ErrorChain(&e), "runtime reclaim failed");
        }
        self.remove_orphan_dirs();
        Ok(())
    }

    async fn adopt(
        &self,
        record: &SandboxRecord,
        config: &SandboxConfig,
    ) -> Option<Box<dyn hearth_runtime::Instance>> {
        let state = record.runtime_state.as_ref()?;
        let slot = config.slot.clone()?;
        let template = self.inner.store.template(&record.template_id).ok()??;
        let spec = self.spec(record, &template, slot.clone()).ok()?;
        match self.inner.runtime.adopt(&spec, state).await {
            Ok(Some(instance)) => Some(instance),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(sandbox_id = %record.id, error = %ErrorChain(&e), "adoption failed");
                None
            }
        }
    }

    /// Deletes sandbox directories that belong to no known sandbox.
    fn remove_orphan_dirs(&self) {
        let Ok(dir) = std::fs::read_dir(self.inner.config.sandboxes_dir()) else {
            return;
        };
        let known: Vec<String> = self
            .inner
            .entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .map(|k| k.as_str().to_owned())
            .collect();
        for d in dir.flatten() {
            let name = d.file_name().to_string_lossy().into_owned();
            if !known.contains(&name) {
                tracing::info!(dir = %d.path().display(), "removing orphaned sandbox directory");
                let _ = self.inner.runtime.remove_state_dir(&d.path());
            }
        }
    }

    /// Stops background tasks and, unless configured to keep them, kills every
    /// running sandbox and releases the network. Paused sandboxes stay on disk.
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
        let entries: Vec<Arc<Entry>> = self
            .inner
            .entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let mut tasks = tokio::task::JoinSet::new();
        for entry in entries {
            let node = self.clone();
            tasks.spawn(async move {
                let mut live = entry.live.lock().await;
                if live.removed || live.instance.is_none() {
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
}
