// SPDX-License-Identifier: Apache-2.0
//! One sandbox known to the node, and the routing view the proxy reads.

use crate::metrics::Sample;
use hearth_runtime::{Artifacts, Instance, NetSlot, PausedState};
use hearth_store::SandboxRecord;
use hearth_types::SandboxId;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, RwLock};
use tokio_util::sync::CancellationToken;

use crate::network::EgressPolicy;

/// Settings of a sandbox kept in its record's `config` column.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SandboxConfig {
    /// Pause instead of kill on timeout.
    pub auto_pause: bool,
    /// Keep memory on auto-pause (false: filesystem only).
    pub auto_pause_memory: bool,
    /// Resume on proxied traffic while paused.
    pub auto_resume: bool,
    /// As given at creation (`allow_internet_access`).
    pub allow_internet_access: Option<bool>,
    /// The client's network config, echoed in the detail view.
    pub network: Option<serde_json::Value>,
    /// The egress policy applied to the slot.
    pub egress: EgressPolicy,
    /// Whether public traffic to non-envd ports needs the traffic token.
    pub restrict_public_traffic: bool,
    /// Whether envd requires the access token (always for v2 creates).
    pub secure: bool,
    /// Lifetime asked for at creation, in seconds (used when auto-resuming).
    pub timeout_secs: u64,
    /// The network slot while running.
    pub slot: Option<NetSlot>,
    /// The pause to resume from while paused.
    pub paused: Option<PausedState>,
    /// Unique among the node's sandboxes and stable for this one's life.
    pub ordinal: u32,
    /// What the sandbox starts from, resolved at creation (its template's or
    /// snapshot's artifacts), so deleting a template never strands it.
    pub artifacts: Option<Artifacts>,
    /// The sandbox whose saved state this one started from (a snapshot's or a
    /// fork's source): a restored envd holds that sandbox's access token until its
    /// first `/init` replaces it.
    pub origin: Option<String>,
}

/// How the proxy may reach a sandbox right now.
#[derive(Debug, Clone)]
pub enum Route {
    /// Running: forward to these addresses.
    Running {
        /// Which incarnation of the sandbox this is (new on every start or resume):
        /// connections to an earlier incarnation must never be reused.
        generation: u64,
        /// envd's address.
        envd: SocketAddr,
        /// Address for any other port.
        host: IpAddr,
        /// Cancelled when the sandbox goes away; proxied streams end with it.
        cancel: CancellationToken,
        /// Required `e2b-traffic-access-token` for non-envd ports, if any.
        traffic_token: Option<String>,
    },
    /// Paused; `auto_resume` says whether traffic may wake it.
    Paused {
        /// Whether traffic resumes it.
        auto_resume: bool,
    },
    /// Changing state (starting, pausing, resuming): retry shortly.
    Busy,
    /// Gone.
    Gone,
}

/// The live part of a sandbox, owned by whoever holds [`Entry::live`].
#[derive(Debug)]
pub(crate) struct Live {
    /// The persisted record (kept in sync with the store).
    pub record: SandboxRecord,
    /// The running instance, if running.
    pub instance: Option<Box<dyn Instance>>,
    /// Typed view of `record.config`.
    pub config: SandboxConfig,
    /// Set once killed: later operations answer not found.
    pub removed: bool,
}

/// A sandbox known to the node.
#[derive(Debug)]
pub(crate) struct Entry {
    pub id: SandboxId,
    /// Serialises life-cycle operations on this sandbox.
    pub live: std::sync::Arc<tokio::sync::Mutex<Live>>,
    /// What the proxy sees; updated by operations.
    pub route: RwLock<Route>,
    /// `end_at` in unix ms, readable by the evictor without the lock.
    pub end_ms: AtomicI64,
    /// Usage history for the metrics endpoint.
    pub samples: Mutex<VecDeque<Sample>>,
}

impl Entry {
    pub fn new(live: Live, route: Route) -> Self {
        let end_ms = to_ms(live.record.end_at);
        Self {
            id: live.record.id.clone(),
            live: std::sync::Arc::new(tokio::sync::Mutex::new(live)),
            route: RwLock::new(route),
            end_ms: AtomicI64::new(end_ms),
            samples: Mutex::new(VecDeque::new()),
        }
    }

    pub fn route(&self) -> Route {
        self.route.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_route(&self, route: Route) {
        let old = std::mem::replace(
            &mut *self.route.write().unwrap_or_else(|p| p.into_inner()),
            route,
        );
        // Whatever was proxied to the old incarnation ends now.
        if let Route::Running { cancel, .. } = old {
            cancel.cancel();
        }
    }

    pub fn set_end(&self, end: time::OffsetDateTime) {
        self.end_ms.store(to_ms(end), Ordering::Relaxed);
    }

    pub fn end_ms(&self) -> i64 {
        self.end_ms.load(Ordering::Relaxed)
    }
}

pub(crate) fn to_ms(t: time::OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}
