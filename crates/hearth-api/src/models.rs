// SPDX-License-Identifier: Apache-2.0
//! E2B's wire models, byte-exact field names per field (`sandboxID`, not `sandboxId`).
//!
//! Requests ignore unknown fields (newer SDKs send more than we know). Conversion from
//! node types happens here and nowhere else.

use hearth_node::{Sample, SandboxInfo};
use hearth_store::SandboxRecord;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Upstream returns this constant for the deprecated, still-required `clientID`.
pub const CLIENT_ID: &str = "6532622b";

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// `autoResume` in create requests.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AutoResume {
    /// Whether traffic resumes a paused sandbox.
    #[serde(default)]
    pub enabled: bool,
}

/// `network` in create requests (only what Hearth enforces is typed).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct NetworkConfig {
    /// Public traffic to non-envd ports without the traffic token.
    #[serde(
        rename = "allowPublicTraffic",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub allow_public_traffic: Option<bool>,
    /// Allowed destinations (beat `denyOut`).
    #[serde(rename = "allowOut", default, skip_serializing_if = "Option::is_none")]
    pub allow_out: Option<Vec<String>>,
    /// Denied destinations.
    #[serde(rename = "denyOut", default, skip_serializing_if = "Option::is_none")]
    pub deny_out: Option<Vec<String>>,
}

/// `lifecycle` in create requests (newer SDKs).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct LifecycleRequest {
    /// `kill` or `pause`.
    #[serde(rename = "onTimeout", default)]
    pub on_timeout: Option<String>,
    /// Resume on traffic.
    #[serde(rename = "autoResume", default)]
    pub auto_resume: Option<bool>,
}

/// `POST /sandboxes` and `POST /v2/sandboxes`.
#[derive(Debug, Clone, Deserialize)]
pub struct NewSandbox {
    /// Template id or name.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Lifetime in seconds.
    #[serde(default)]
    pub timeout: Option<i64>,
    /// Pause on timeout.
    #[serde(rename = "autoPause", default)]
    pub auto_pause: Option<bool>,
    /// Keep memory on auto-pause.
    #[serde(rename = "autoPauseMemory", default)]
    pub auto_pause_memory: Option<bool>,
    /// Resume on traffic.
    #[serde(rename = "autoResume", default)]
    pub auto_resume: Option<AutoResume>,
    /// Newer lifecycle form.
    #[serde(default)]
    pub lifecycle: Option<LifecycleRequest>,
    /// Internet on/off (snake_case on the wire).
    #[serde(default)]
    pub allow_internet_access: Option<bool>,
    /// Egress rules.
    #[serde(default)]
    pub network: Option<NetworkConfig>,
    /// User metadata.
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Env vars.
    #[serde(rename = "envVars", default)]
    pub env_vars: Option<BTreeMap<String, String>>,
    /// v1: return an access token.
    #[serde(default)]
    pub secure: Option<bool>,
}

/// `POST /sandboxes/{id}/timeout`.
#[derive(Debug, Clone, Deserialize)]
pub struct TimeoutRequest {
    /// New lifetime from now, seconds.
    pub timeout: i64,
}

/// `POST /sandboxes/{id}/refreshes`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RefreshRequest {
    /// Seconds to extend to (0..3600).
    #[serde(default)]
    pub duration: Option<i64>,
}

/// `POST /sandboxes/{id}/connect`, `/v2/.../connect`, `/resume`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ConnectRequest {
    /// Lifetime from now, seconds.
    #[serde(default)]
    pub timeout: Option<i64>,
    /// Resume with memory (default true).
    #[serde(default)]
    pub memory: Option<bool>,
    /// `/resume` only: pause again on timeout.
    #[serde(rename = "autoPause", default)]
    pub auto_pause: Option<bool>,
}

/// `POST /sandboxes/{id}/pause`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PauseRequest {
    /// Keep memory (default true).
    #[serde(default)]
    pub memory: Option<bool>,
}

/// `POST /sandboxes/{id}/snapshots`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SnapshotRequest {
    /// Snapshot name.
    #[serde(default)]
    pub name: Option<String>,
    /// Keep memory (default true).
    #[serde(default)]
    pub memory: Option<bool>,
}

/// `POST /sandboxes/{id}/fork`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ForkRequest {
    /// Lifetime of each copy, seconds.
    #[serde(default)]
    pub timeout: Option<i64>,
    /// Number of copies (1–100).
    #[serde(default)]
    pub count: Option<i64>,
}

/// `PUT /sandboxes/{id}/network`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NetworkUpdate {
    /// Allowed destinations.
    #[serde(rename = "allowOut", default)]
    pub allow_out: Option<Vec<String>>,
    /// Denied destinations.
    #[serde(rename = "denyOut", default)]
    pub deny_out: Option<Vec<String>>,
}

/// The `Sandbox` response (create, connect, resume, fork).
#[derive(Debug, Clone, Serialize)]
pub struct Sandbox {
    /// Template id.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Sandbox id.
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    /// Constant.
    #[serde(rename = "clientID")]
    pub client_id: &'static str,
    /// envd version.
    #[serde(rename = "envdVersion")]
    pub envd_version: &'static str,
    /// Template name used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// envd access token.
    #[serde(rename = "envdAccessToken", skip_serializing_if = "Option::is_none")]
    pub envd_access_token: Option<String>,
    /// Traffic token (null unless public traffic is restricted).
    #[serde(rename = "trafficAccessToken")]
    pub traffic_access_token: Option<String>,
    /// Sandbox domain (null: the client's own).
    pub domain: Option<String>,
}

impl Sandbox {
    /// From node info; `with_token` is false for insecure v1 creates.
    pub fn from_info(info: &SandboxInfo, domain: Option<String>) -> Self {
        Self {
            template_id: info.record.template_id.clone(),
            sandbox_id: info.record.id.to_string(),
            client_id: CLIENT_ID,
            envd_version: hearth_node::ENVD_VERSION,
            alias: info.record.alias.clone(),
            envd_access_token: info.envd_token.clone(),
            traffic_access_token: info.traffic_token.clone(),
            domain,
        }
    }
}

/// `lifecycle` in the detail view.
#[derive(Debug, Clone, Serialize)]
pub struct Lifecycle {
    /// Resume on traffic.
    #[serde(rename = "autoResume")]
    pub auto_resume: bool,
    /// `kill` or `pause`.
    #[serde(rename = "onTimeout")]
    pub on_timeout: &'static str,
}

/// `GET /sandboxes/{id}`.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxDetail {
    /// Template id.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Sandbox id.
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    /// Constant.
    #[serde(rename = "clientID")]
    pub client_id: &'static str,
    /// Start time.
    #[serde(rename = "startedAt")]
    pub started_at: String,
    /// End time (pause time when paused).
    #[serde(rename = "endAt")]
    pub end_at: String,
    /// envd version.
    #[serde(rename = "envdVersion")]
    pub envd_version: &'static str,
    /// vCPUs.
    #[serde(rename = "cpuCount")]
    pub cpu_count: u32,
    /// Memory.
    #[serde(rename = "memoryMB")]
    pub memory_mb: u32,
    /// Disk.
    #[serde(rename = "diskSizeMB")]
    pub disk_size_mb: u32,
    /// `running` or `paused`.
    pub state: &'static str,
    /// Template name used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// envd token.
    #[serde(rename = "envdAccessToken", skip_serializing_if = "Option::is_none")]
    pub envd_access_token: Option<String>,
    /// As given at creation.
    #[serde(rename = "allowInternetAccess")]
    pub allow_internet_access: Option<bool>,
    /// Sandbox domain.
    pub domain: Option<String>,
    /// User metadata.
    pub metadata: BTreeMap<String, String>,
    /// Network config as given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<serde_json::Value>,
    /// Lifecycle settings.
    pub lifecycle: Lifecycle,
    /// `full` or `filesystem` while paused.
    #[serde(rename = "pauseMode", skip_serializing_if = "Option::is_none")]
    pub pause_mode: Option<&'static str>,
}

impl SandboxDetail {
    /// From node info.
    pub fn from_info(info: &SandboxInfo, domain: Option<String>) -> Self {
        let r = &info.record;
        let c = &info.config;
        Self {
            template_id: r.template_id.clone(),
            sandbox_id: r.id.to_string(),
            client_id: CLIENT_ID,
            started_at: rfc3339(r.started_at),
            end_at: rfc3339(r.paused_at.unwrap_or(r.end_at)),
            envd_version: hearth_node::ENVD_VERSION,
            cpu_count: r.cpu_count,
            memory_mb: r.memory_mb,
            disk_size_mb: r.disk_mb,
            state: r.state.public(),
            alias: r.alias.clone(),
            envd_access_token: info.envd_token.clone(),
            allow_internet_access: c.allow_internet_access,
            domain,
            metadata: r.metadata.clone(),
            network: c.network.clone(),
            lifecycle: Lifecycle {
                auto_resume: c.auto_resume,
                on_timeout: if c.auto_pause { "pause" } else { "kill" },
            },
            pause_mode: c.paused.as_ref().map(|p| match p.mode {
                hearth_runtime::PauseMode::Full => "full",
                hearth_runtime::PauseMode::Filesystem => "filesystem",
            }),
        }
    }
}

/// An item of `GET /v2/sandboxes`.
#[derive(Debug, Clone, Serialize)]
pub struct ListedSandbox {
    /// Template id.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Sandbox id.
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    /// Constant.
    #[serde(rename = "clientID")]
    pub client_id: &'static str,
    /// Start time.
    #[serde(rename = "startedAt")]
    pub started_at: String,
    /// End time.
    #[serde(rename = "endAt")]
    pub end_at: String,
    /// vCPUs.
    #[serde(rename = "cpuCount")]
    pub cpu_count: u32,
    /// Memory.
    #[serde(rename = "memoryMB")]
    pub memory_mb: u32,
    /// Disk.
    #[serde(rename = "diskSizeMB")]
    pub disk_size_mb: u32,
    /// `running` or `paused`.
    pub state: &'static str,
    /// envd version.
    #[serde(rename = "envdVersion")]
    pub envd_version: &'static str,
    /// Template name used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// User metadata.
    pub metadata: BTreeMap<String, String>,
}

impl From<&SandboxRecord> for ListedSandbox {
    fn from(r: &SandboxRecord) -> Self {
        Self {
            template_id: r.template_id.clone(),
            sandbox_id: r.id.to_string(),
            client_id: CLIENT_ID,
            started_at: rfc3339(r.started_at),
            end_at: rfc3339(r.paused_at.unwrap_or(r.end_at)),
            cpu_count: r.cpu_count,
            memory_mb: r.memory_mb,
            disk_size_mb: r.disk_mb,
            state: r.state.public(),
            envd_version: hearth_node::ENVD_VERSION,
            alias: r.alias.clone(),
            metadata: r.metadata.clone(),
        }
    }
}

/// One metrics sample.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxMetric {
    /// RFC 3339 time (deprecated but required).
    pub timestamp: String,
    /// Unix seconds.
    #[serde(rename = "timestampUnix")]
    pub timestamp_unix: i64,
    /// vCPUs.
    #[serde(rename = "cpuCount")]
    pub cpu_count: u32,
    /// CPU use, percent.
    #[serde(rename = "cpuUsedPct")]
    pub cpu_used_pct: f64,
    /// Memory used, bytes.
    #[serde(rename = "memUsed")]
    pub mem_used: u64,
    /// Memory limit, bytes.
    #[serde(rename = "memTotal")]
    pub mem_total: u64,
    /// Page cache, bytes.
    #[serde(rename = "memCache")]
    pub mem_cache: u64,
    /// Disk used, bytes.
    #[serde(rename = "diskUsed")]
    pub disk_used: u64,
    /// Disk limit, bytes.
    #[serde(rename = "diskTotal")]
    pub disk_total: u64,
}

impl From<&Sample> for SandboxMetric {
    fn from(s: &Sample) -> Self {
        Self {
            timestamp: rfc3339(s.at),
            timestamp_unix: s.at.unix_timestamp(),
            cpu_count: s.cpu_count,
            cpu_used_pct: (s.cpu_used_pct * 100.0).round() / 100.0,
            mem_used: s.mem_used,
            mem_total: s.mem_total,
            mem_cache: s.mem_cache,
            disk_used: s.disk_used,
            disk_total: s.disk_total,
        }
    }
}

/// `SnapshotInfo`.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotInfo {
    /// Snapshot id (a template id).
    #[serde(rename = "snapshotID")]
    pub snapshot_id: String,
    /// Its names.
    pub names: Vec<String>,
}
