// SPDX-License-Identifier: Apache-2.0
//! Node configuration.

use std::path::PathBuf;
use std::time::Duration;

/// How the node runs sandboxes.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// `$HEARTH_HOME`: the store, sandboxes' state dirs and templates live here.
    pub home: PathBuf,
    /// Longest lifetime a client may ask for.
    pub max_timeout: Duration,
    /// How long `create` waits for envd.
    pub envd_ready_timeout: Duration,
    /// Default user envd runs commands as (when the template has it).
    pub default_user: String,
    /// How often usage is sampled for the metrics endpoint.
    pub metrics_interval: Duration,
    /// How many samples of history to keep per sandbox.
    pub metrics_history: usize,
    /// Leave running sandboxes alive when hearth exits (they are re-adopted on start).
    pub keep_sandboxes_on_exit: bool,
    /// Largest sandbox ordinal the runtime accepts (bounds how many sandboxes,
    /// running or paused, the node holds).
    pub max_ordinal: u32,
    /// PEM certificates every sandbox trusts in addition to its image's (e.g. the
    /// host's TLS-intercepting egress proxy), sent as `/init`'s `caBundle`.
    pub ca_bundle: Option<String>,
}

impl NodeConfig {
    /// Defaults for a home directory.
    pub fn new(home: PathBuf) -> Self {
        Self {
            home,
            max_timeout: Duration::from_secs(24 * 3600),
            envd_ready_timeout: Duration::from_secs(20),
            default_user: "user".to_owned(),
            metrics_interval: Duration::from_secs(5),
            metrics_history: 720,
            keep_sandboxes_on_exit: false,
            ca_bundle: None,
            max_ordinal: u32::MAX,
        }
    }

    /// The data volume: sandboxes' state and snapshots, on one filesystem so a
    /// snapshot can be a copy-on-write copy of a sandbox's state.
    pub fn data_dir(&self) -> PathBuf {
        self.home.join("data")
    }

    /// Where sandboxes keep their state.
    pub fn sandboxes_dir(&self) -> PathBuf {
        self.data_dir().join("sandboxes")
    }

    /// Where snapshot (and fork) artifacts live.
    pub fn snapshots_dir(&self) -> PathBuf {
        self.data_dir().join("snapshots")
    }

    /// The state dir of one sandbox.
    pub fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.sandboxes_dir().join(id)
    }
}
