// SPDX-License-Identifier: Apache-2.0
//! The rows of the store, as typed values.

use hearth_types::SandboxId;
use std::collections::BTreeMap;
use time::OffsetDateTime;

/// An API key, stored by hash only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// Short id used by `hearth apikey rm`.
    pub id: String,
    /// SHA-256 of the key, hex.
    pub hash: String,
    /// A display form of the key (`e2b_12ab…89ef`).
    pub mask: String,
    /// Free-form name.
    pub name: String,
    /// Creation time.
    pub created_at: OffsetDateTime,
}

/// Where a sandbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SandboxState {
    /// Being created; not yet reachable.
    Starting,
    /// Running and reachable.
    Running,
    /// Being paused; its artifacts are not complete yet.
    Pausing,
    /// Paused: only its artifacts on disk remain.
    Paused,
    /// Being resumed from its artifacts.
    Resuming,
}

impl SandboxState {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Pausing => "pausing",
            Self::Paused => "paused",
            Self::Resuming => "resuming",
        }
    }

    /// Parses the stored text.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "starting" => Self::Starting,
            "running" => Self::Running,
            "pausing" => Self::Pausing,
            "paused" => Self::Paused,
            "resuming" => Self::Resuming,
            _ => return None,
        })
    }

    /// The state E2B clients see: `running` or `paused`.
    pub fn public(self) -> &'static str {
        match self {
            Self::Starting | Self::Running | Self::Pausing => "running",
            Self::Paused | Self::Resuming => "paused",
        }
    }
}

/// A sandbox, running or paused.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxRecord {
    /// Its id.
    pub id: SandboxId,
    /// The template (or snapshot) it was created from.
    pub template_id: String,
    /// The name the client used for the template, if it was a name.
    pub alias: Option<String>,
    /// Life-cycle state.
    pub state: SandboxState,
    /// When it was created.
    pub started_at: OffsetDateTime,
    /// When it times out (for a paused sandbox: when it was paused).
    pub end_at: OffsetDateTime,
    /// vCPUs.
    pub cpu_count: u32,
    /// Memory in MiB.
    pub memory_mb: u32,
    /// Writable disk in MiB.
    pub disk_mb: u32,
    /// User metadata.
    pub metadata: BTreeMap<String, String>,
    /// Env vars given at creation.
    pub env_vars: BTreeMap<String, String>,
    /// Everything else the node needs to re-create it (lifecycle, network policy…).
    pub config: serde_json::Value,
    /// Runtime name (`container`, `microvm`).
    pub runtime: String,
    /// What the runtime needs to re-adopt or resume it.
    pub runtime_state: Option<serde_json::Value>,
    /// When it was paused.
    pub paused_at: Option<OffsetDateTime>,
}

/// What a template row describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateKind {
    /// A template built by Hearth.
    Template,
    /// A snapshot of a sandbox, usable as a template.
    Snapshot,
}

impl TemplateKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Template => "template",
            Self::Snapshot => "snapshot",
        }
    }
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "template" => Some(Self::Template),
            "snapshot" => Some(Self::Snapshot),
            _ => None,
        }
    }
}

/// A template or snapshot, and the build artifacts sandboxes start from.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateRecord {
    /// Template id.
    pub id: String,
    /// Template or snapshot.
    pub kind: TemplateKind,
    /// Current build.
    pub build_id: String,
    /// Names (aliases) that resolve to it, e.g. `base` or `my-snap`.
    pub names: Vec<String>,
    /// Runtime the template must run on, if pinned.
    pub runtime: Option<String>,
    /// Default vCPUs.
    pub cpu_count: u32,
    /// Default memory in MiB.
    pub memory_mb: u32,
    /// Default writable disk in MiB.
    pub disk_mb: u32,
    /// envd version inside.
    pub envd_version: String,
    /// Runtime-specific build artifacts (layers, images, snapshot files).
    pub artifacts: serde_json::Value,
    /// For snapshots: the sandbox it was taken from.
    pub source_sandbox: Option<String>,
    /// Creation time.
    pub created_at: OffsetDateTime,
}

/// Sort order of sandbox listings (by start time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ListOrder {
    /// Oldest first.
    Asc,
    /// Newest first.
    #[default]
    Desc,
}

/// Which sandboxes to list.
#[derive(Debug, Clone, Default)]
pub struct SandboxFilter {
    /// Public states to include (`running`, `paused`); empty = all.
    pub states: Vec<String>,
    /// Every pair must be present in the sandbox's metadata.
    pub metadata: BTreeMap<String, String>,
    /// Only sandboxes started strictly after this time.
    pub started_after: Option<OffsetDateTime>,
    /// Only sandboxes of this template id or alias.
    pub template: Option<String>,
    /// Order by start time.
    pub order: ListOrder,
    /// Page size.
    pub limit: usize,
    /// Opaque cursor from the previous page.
    pub cursor: Option<String>,
}

/// One page of a sandbox listing.
#[derive(Debug, Clone, Default)]
pub struct SandboxPage {
    /// The sandboxes on this page.
    pub items: Vec<SandboxRecord>,
    /// Cursor for the next page, if there is one.
    pub next_cursor: Option<String>,
}
