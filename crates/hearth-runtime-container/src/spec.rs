// SPDX-License-Identifier: Apache-2.0
//! What to launch: the container's layers, identity, network, limits and init.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::PathBuf;

/// A host uid/gid range that the sandbox's ids `0..65536` map onto.
///
/// Ranges of live sandboxes must not overlap; the start doubles as the sandbox's
/// XFS project id for the disk limit, so it is unique among them too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct IdRange {
    host_start: u32,
}

impl TryFrom<u32> for IdRange {
    type Error = SpecError;

    fn try_from(host_start: u32) -> Result<Self, SpecError> {
        Self::new(host_start)
    }
}

impl From<IdRange> for u32 {
    fn from(range: IdRange) -> u32 {
        range.host_start
    }
}

impl IdRange {
    /// How many ids a sandbox gets.
    pub const LEN: u32 = 65536;

    /// The range `host_start..host_start + 65536`. It must lie above the host's own
    /// system and user ids (`host_start >= 65536`) and within 32 bits.
    pub fn new(host_start: u32) -> Result<Self, SpecError> {
        if host_start < Self::LEN || host_start.checked_add(Self::LEN).is_none() {
            return Err(SpecError::IdRange { host_start });
        }
        Ok(Self { host_start })
    }

    /// The host id that the sandbox's id 0 (root) maps to.
    pub fn host_start(self) -> u32 {
        self.host_start
    }

    /// The host id of sandbox id `id`.
    pub fn host_id(self, id: u32) -> u32 {
        self.host_start + id.min(Self::LEN - 1)
    }

    /// The line to write to `/proc/<pid>/uid_map` and `gid_map`.
    pub(crate) fn map_line(self) -> String {
        format!("0 {} {}\n", self.host_start, Self::LEN)
    }
}

/// Resource limits, enforced through cgroups and an XFS project quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// CPUs' worth of bandwidth (`cpuCount`); `None` leaves the CPU unlimited.
    pub cpu_count: Option<u32>,
    /// Memory in bytes, page cache and tmpfs included; swap is not allowed.
    pub memory_bytes: u64,
    /// Most processes and threads at once.
    pub pids_max: u32,
    /// Bytes the writable layer may hold; `None` leaves it unlimited (and the state
    /// directory may then live on any filesystem).
    pub disk_bytes: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            cpu_count: None,
            memory_bytes: 512 << 20,
            pids_max: 1024,
            disk_bytes: None,
        }
    }
}

/// Everything needed to launch one container sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Unique name: 1-64 of `[A-Za-z0-9_.-]`, not starting with a dot. Names the
    /// sandbox's cgroups.
    pub id: String,
    /// Read-only lower layers, upper-most first. Shared between sandboxes, never written.
    pub layers: Vec<PathBuf>,
    /// Per-sandbox directory; holds the writable layer (`upper/`, `work/`) and the
    /// mount point of the root (`rootfs/`). Created if missing.
    pub state_dir: PathBuf,
    /// The host ids the sandbox's ids map onto.
    pub id_range: IdRange,
    /// The network namespace to be born in (e.g. `/run/netns/<name>`); `None` keeps
    /// the caller's, which is only sensible in tests.
    pub netns: Option<PathBuf>,
    /// The sandbox's own address, listed in `/etc/hosts` for its hostname.
    pub address: Option<IpAddr>,
    /// Host name inside the sandbox.
    pub hostname: String,
    /// Name servers for `/etc/resolv.conf`; empty leaves the layers' file alone.
    pub nameservers: Vec<IpAddr>,
    /// Resource limits.
    pub limits: Limits,
    /// The init program (PID 1), as a path inside the root filesystem.
    pub init: PathBuf,
    /// Its arguments, argv\[0\] included.
    pub args: Vec<String>,
    /// Its complete environment (a default `PATH` is added when missing).
    pub env: Vec<(String, String)>,
    /// A host file that receives init's stdout and stderr (appended; created if
    /// missing); `None` discards them. Processes inside can reach init's fds
    /// (`/proc/1/fd/1`), so with a disk limit put the file inside `state_dir`,
    /// where the limit covers it; elsewhere a sandbox could fill the host's disk.
    pub output: Option<PathBuf>,
}

/// A spec that cannot be launched as given.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// The id is empty, too long or has characters unsafe in a path.
    #[error("container id {id:?} must be 1-64 of [A-Za-z0-9_.-] and not start with '.'")]
    Id {
        /// The offending id.
        id: String,
    },
    /// The id range overlaps the host's own ids or overflows.
    #[error("id range starting at {host_start} must start at 65536 or above and fit 32 bits")]
    IdRange {
        /// The offending start.
        host_start: u32,
    },
    /// No lower layer was given.
    #[error("at least one layer is required")]
    NoLayers,
    /// A path that must be absolute is not.
    #[error("{what} {path} must be an absolute path")]
    RelativePath {
        /// Which path.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// The host name is not a valid one.
    #[error("hostname {hostname:?} must be 1-63 of [A-Za-z0-9-] and dots")]
    Hostname {
        /// The offending name.
        hostname: String,
    },
    /// A limit is zero or absurd.
    #[error("limit {what} = {value} is out of range")]
    Limit {
        /// Which limit.
        what: &'static str,
        /// Its value.
        value: u64,
    },
    /// argv is empty, or argv or the environment contains a NUL or a bad key.
    #[error("init arguments or environment are malformed: {reason}")]
    Exec {
        /// What is wrong.
        reason: &'static str,
    },
}

/// Whether `id` is a safe container id.
pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

impl ContainerSpec {
    /// Checks everything that can be checked without touching the system.
    pub fn validate(&self) -> Result<(), SpecError> {
        if !valid_id(&self.id) {
            return Err(SpecError::Id {
                id: self.id.clone(),
            });
        }
        IdRange::new(self.id_range.host_start)?;
        if self.layers.is_empty() {
            return Err(SpecError::NoLayers);
        }
        for layer in &self.layers {
            absolute("layer", layer)?;
        }
        absolute("state directory", &self.state_dir)?;
        absolute("init", &self.init)?;
        if let Some(netns) = &self.netns {
            absolute("network namespace", netns)?;
        }
        if let Some(output) = &self.output {
            absolute("output file", output)?;
        }
        let h = &self.hostname;
        if h.is_empty()
            || h.len() > 63
            || h.starts_with(['-', '.'])
            || !h
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(SpecError::Hostname {
                hostname: h.clone(),
            });
        }
        let l = &self.limits;
        if l.cpu_count == Some(0) || l.cpu_count.is_some_and(|c| c > 4096) {
            return Err(SpecError::Limit {
                what: "cpu_count",
                value: l.cpu_count.map_or(0, u64::from),
            });
        }
        // Below a few MiB not even init starts; the kernel takes at most i64.
        if l.memory_bytes < (8 << 20) || l.memory_bytes > i64::MAX as u64 {
            return Err(SpecError::Limit {
                what: "memory_bytes",
                value: l.memory_bytes,
            });
        }
        if l.pids_max == 0 {
            return Err(SpecError::Limit {
                what: "pids_max",
                value: 0,
            });
        }
        if l.disk_bytes.is_some_and(|d| d < (1 << 20)) {
            return Err(SpecError::Limit {
                what: "disk_bytes",
                value: l.disk_bytes.unwrap_or(0),
            });
        }
        if self.args.is_empty() {
            return Err(SpecError::Exec {
                reason: "argv is empty",
            });
        }
        if self.args.iter().any(|a| a.contains('\0')) {
            return Err(SpecError::Exec {
                reason: "an argument contains NUL",
            });
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
                return Err(SpecError::Exec {
                    reason: "an environment variable has an empty key, '=' in its key, or a NUL",
                });
            }
        }
        Ok(())
    }
}

fn absolute(what: &'static str, path: &std::path::Path) -> Result<(), SpecError> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(SpecError::RelativePath {
            what,
            path: path.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> ContainerSpec {
        ContainerSpec {
            id: "sbx-1".into(),
            layers: vec!["/var/lib/hearth/templates/base/rootfs".into()],
            state_dir: "/var/lib/hearth/sandboxes/sbx-1".into(),
            id_range: IdRange::new(1 << 20).unwrap(),
            netns: None,
            address: None,
            hostname: "sbx-1".into(),
            nameservers: vec![],
            limits: Limits::default(),
            init: "/usr/bin/hearth-envd".into(),
            args: vec!["hearth-envd".into()],
            env: vec![],
            output: None,
        }
    }

    #[test]
    fn sample_spec_is_valid() {
        sample().validate().unwrap();
    }

    #[test]
    fn id_with_slash_is_rejected() {
        let mut spec = sample();
        spec.id = "../etc".into();
        assert!(matches!(spec.validate(), Err(SpecError::Id { .. })));
    }

    #[test]
    fn id_range_over_host_ids_is_rejected() {
        assert_eq!(
            IdRange::new(1000),
            Err(SpecError::IdRange { host_start: 1000 })
        );
        assert!(IdRange::new(u32::MAX - 10).is_err());
        assert_eq!(IdRange::new(65536).unwrap().host_id(1000), 66536);
    }

    #[test]
    fn relative_layer_is_rejected() {
        let mut spec = sample();
        spec.layers = vec!["rootfs".into()];
        assert!(matches!(
            spec.validate(),
            Err(SpecError::RelativePath { .. })
        ));
    }

    #[test]
    fn bad_hostname_is_rejected() {
        let mut spec = sample();
        spec.hostname = "a b".into();
        assert!(matches!(spec.validate(), Err(SpecError::Hostname { .. })));
    }

    #[test]
    fn tiny_memory_limit_is_rejected() {
        let mut spec = sample();
        spec.limits.memory_bytes = 4096;
        assert!(matches!(
            spec.validate(),
            Err(SpecError::Limit {
                what: "memory_bytes",
                ..
            })
        ));
    }

    #[test]
    fn environment_key_with_equals_is_rejected() {
        let mut spec = sample();
        spec.env = vec![("A=B".into(), "c".into())];
        assert!(matches!(spec.validate(), Err(SpecError::Exec { .. })));
    }

    #[test]
    fn id_range_deserializes_only_when_valid() {
        assert_eq!(
            serde_json::to_string(&IdRange::new(65536).unwrap()).unwrap(),
            "65536"
        );
        assert!(serde_json::from_str::<IdRange>("65536").is_ok());
        assert!(serde_json::from_str::<IdRange>("0").is_err());
    }

    #[test]
    fn map_line_covers_the_whole_range() {
        assert_eq!(
            IdRange::new(65536 * 3).unwrap().map_line(),
            "0 196608 65536\n"
        );
    }
}
