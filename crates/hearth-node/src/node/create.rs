// SPDX-License-Identifier: Apache-2.0
//! Creating sandboxes (from templates, snapshots and forks) and provisioning envd.

use super::{Node, SandboxInfo, template_artifacts};
use crate::entry::{Entry, Live, Route, SandboxConfig};
use crate::envd::InitBody;
use crate::error::NodeError;
use crate::network::EgressPolicy;
use hearth_runtime::Artifacts;
use hearth_store::{SandboxRecord, SandboxState, TemplateRecord};
use hearth_types::{ErrorChain, SandboxId};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use time::OffsetDateTime;

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

impl CreateRequest {
    /// A request that re-creates `source`'s settings (for forks).
    pub(crate) fn like(source: &Live, timeout: Duration) -> Self {
        let c = &source.config;
        Self {
            template: source.record.template_id.clone(),
            timeout,
            metadata: source.record.metadata.clone(),
            env_vars: source.record.env_vars.clone(),
            auto_pause: c.auto_pause,
            auto_pause_memory: c.auto_pause_memory,
            auto_resume: c.auto_resume,
            allow_internet_access: c.allow_internet_access,
            network: c.network.clone(),
            egress: c.egress.clone(),
            restrict_public_traffic: c.restrict_public_traffic,
            secure: c.secure,
        }
    }
}

impl Node {
    /// Creates a sandbox from a template or snapshot and waits until it serves.
    pub async fn create(&self, req: CreateRequest) -> Result<SandboxInfo, NodeError> {
        let template =
            self.inner
                .store
                .template(&req.template)?
                .ok_or_else(|| NodeError::NotFound {
                    kind: "template",
                    id: req.template.clone(),
                })?;
        let artifacts = template_artifacts(&template)?;
        let alias = (req.template != template.id).then(|| req.template.clone());
        self.create_from(req, &template, artifacts, alias).await
    }

    /// Creates a sandbox with the resources of `template` starting from `artifacts`.
    pub(crate) async fn create_from(
        &self,
        req: CreateRequest,
        template: &TemplateRecord,
        artifacts: Artifacts,
        alias: Option<String>,
    ) -> Result<SandboxInfo, NodeError> {
        if self.inner.shutting_down.load(Ordering::Relaxed) {
            return Err(NodeError::ShuttingDown);
        }
        if req.timeout.is_zero() || req.timeout > self.inner.config.max_timeout {
            return Err(NodeError::InvalidRequest(format!(
                "timeout must be between 1 and {} seconds",
                self.inner.config.max_timeout.as_secs()
            )));
        }
        let runtime = match &template.runtime {
            Some(name) => self.runtime_named(name)?,
            None => self.runtime().clone(),
        };
        let now = OffsetDateTime::now_utc();
        let id = SandboxId::generate();
        let ordinal = self.allocate_ordinal()?;
        let config = SandboxConfig {
            ordinal,
            auto_pause: req.auto_pause,
            auto_pause_memory: req.auto_pause_memory,
            auto_resume: req.auto_resume,
            allow_internet_access: req.allow_internet_access,
            network: req.network,
            egress: req.egress,
            restrict_public_traffic: req.restrict_public_traffic,
            secure: req.secure,
            timeout_secs: req.timeout.as_secs(),
            slot: None,
            paused: None,
            artifacts: Some(artifacts),
            origin: template.source_sandbox.clone(),
        };
        let record = SandboxRecord {
            id: id.clone(),
            template_id: template.id.clone(),
            alias,
            state: SandboxState::Starting,
            started_at: now,
            end_at: now + req.timeout,
            cpu_count: template.cpu_count,
            memory_mb: template.memory_mb,
            disk_mb: template.disk_mb,
            metadata: req.metadata,
            env_vars: req.env_vars,
            config: serde_json::to_value(&config)
                .map_err(|e| NodeError::internal("failed to encode sandbox config", e))?,
            runtime: runtime.kind().as_str().to_owned(),
            runtime_state: None,
            paused_at: None,
        };
        // Written before anything is started: a crash from here on leaves a
        // `starting` row that start-up cleans up.
        if let Err(e) = self.inner.store.insert_sandbox(&record) {
            self.free_ordinal(ordinal);
            return Err(e.into());
        }
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
        match self.start_instance(&mut live, &entry).await {
            Ok(()) => {
                tracing::info!(sandbox_id = %id, template = %template.id, "sandbox created");
                Ok(self.info(&live))
            }
            Err(err) => {
                tracing::warn!(sandbox_id = %id, error = %ErrorChain(&err), "create failed");
                live.removed = true;
                entry.set_route(Route::Gone);
                let _ = self.inner.store.delete_sandbox(&id);
                self.free_ordinal(ordinal);
                drop(live);
                self.remove_entry(&id);
                Err(err)
            }
        }
    }

    /// Takes a slot, starts the runtime instance, provisions envd and marks the
    /// sandbox running. On failure everything it took is released again.
    async fn start_instance(&self, live: &mut Live, entry: &Entry) -> Result<(), NodeError> {
        let runtime = self.runtime_of(live);
        let slot = self
            .inner
            .network
            .acquire(runtime.kind(), &live.config.egress)
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
        let started = std::time::Instant::now();
        let mut instance = match runtime.create(&spec).await {
            Ok(i) => i,
            Err(e) => {
                let _ = self.inner.network.release(slot).await;
                let _ = runtime.remove_state_dir(&spec.state_dir);
                return Err(e.into());
            }
        };
        let result = async {
            let created = started.elapsed();
            self.provision_envd(live, instance.envd_addr()).await?;
            tracing::debug!(
                sandbox_id = %live.record.id,
                instance_ms = created.as_secs_f64() * 1e3,
                init_ms = (started.elapsed() - created).as_secs_f64() * 1e3,
                "instance started and envd provisioned"
            );
            live.config.slot = Some(slot.clone());
            live.record.state = SandboxState::Running;
            live.record.runtime_state = Some(instance.state());
            self.save(live)
        }
        .await;
        if let Err(err) = result {
            let _ = instance.kill().await;
            let _ = self.inner.network.release(slot).await;
            let _ = runtime.remove_state_dir(&spec.state_dir);
            return Err(err);
        }
        entry.set_route(self.running_route(live, instance.as_ref()));
        entry.set_end(live.record.end_at);
        live.instance = Some(instance);
        Ok(())
    }

    /// Sends envd its `/init`: env vars, token, default user, extra CAs and the host
    /// clock (a restored VM wakes with the clock of its snapshot). The request is
    /// authenticated with the token envd may hold already: the sandbox's own (a
    /// resumed envd), else its origin's (a VM restored from another sandbox's
    /// memory, before its first `/init`).
    pub(crate) async fn provision_envd(
        &self,
        live: &Live,
        addr: SocketAddr,
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
        let token = self.inner.seed.envd_token(id);
        let mut held = vec![token.clone()];
        held.extend(
            live.config
                .origin
                .as_deref()
                .map(|o| self.inner.seed.envd_token(o)),
        );
        let body = InitBody {
            env_vars: env,
            access_token: live.config.secure.then(|| token.clone()),
            timestamp: OffsetDateTime::now_utc(),
            default_user: Some(self.inner.config.default_user.clone()),
            default_workdir: None,
            ca_bundle: self.inner.config.ca_bundle.clone(),
            entropy: {
                use base64::Engine as _;
                let seed: [u8; 64] = rand::random();
                base64::engine::general_purpose::STANDARD.encode(seed)
            },
        };
        self.inner
            .envd
            .init(addr, &body, &held, Duration::from_secs(10))
            .await
            .map_err(|detail| NodeError::Envd {
                id: id.to_owned(),
                op: "/init",
                detail,
            })
    }
}
