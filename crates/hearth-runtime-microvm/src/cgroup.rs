// SPDX-License-Identifier: Apache-2.0
//! cgroup v1 limits around one QEMU process: memory, cpu quota, pids, cpu accounting.
//!
//! This host has its useful controllers on cgroup v1 (`/sys/fs/cgroup/<controller>`);
//! each VM gets `<controller>/<parent>/<id>` in every controller that is mounted.
//! Missing controllers are skipped (and reported by [`VmCgroup::controllers`]), so a
//! host without, say, the pids controller still runs VMs.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The v1 controllers a VM is placed in.
pub const CONTROLLERS: &[&str] = &["memory", "cpu", "cpuacct", "pids"];

/// A cgroup operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Creating, configuring or joining a cgroup failed.
    #[error("failed to {what} {path}")]
    Io {
        /// What was attempted.
        what: &'static str,
        /// The cgroup file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        err: io::Error,
    },
    /// Processes were still inside when it had to be removed.
    #[error("cgroup {path} still has processes")]
    Busy {
        /// The cgroup.
        path: PathBuf,
    },
}

/// Limits for one VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Memory limit, bytes (guest RAM + QEMU's own overhead).
    pub memory_bytes: u64,
    /// CPUs worth of time per period.
    pub cpus: u32,
    /// Maximum tasks (threads).
    pub pids: u32,
}

/// One VM's cgroups.
#[derive(Debug, Clone)]
pub struct VmCgroup {
    dirs: Vec<(&'static str, PathBuf)>,
}

impl VmCgroup {
    /// The cgroups of VM `name` under `root`/`<controller>`/`parent` (not created).
    pub fn new(root: &Path, parent: &str, name: &str) -> Self {
        let dirs = CONTROLLERS
            .iter()
            .filter(|c| root.join(c).join("cgroup.procs").exists())
            .map(|c| (*c, root.join(c).join(parent).join(name)))
            .collect();
        Self { dirs }
    }

    /// Controllers in use.
    pub fn controllers(&self) -> Vec<&'static str> {
        self.dirs.iter().map(|(c, _)| *c).collect()
    }

    fn dir(&self, controller: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(c, _)| *c == controller)
            .map(|(_, d)| d.as_path())
    }

    /// Creates the cgroups and applies `limits`.
    pub fn create(&self, limits: Limits) -> Result<(), CgroupError> {
        for (_, dir) in &self.dirs {
            fs::create_dir_all(dir).map_err(|err| CgroupError::Io {
                what: "create",
                path: dir.clone(),
                err,
            })?;
        }
        if let Some(d) = self.dir("memory") {
            write(d, "memory.limit_in_bytes", &limits.memory_bytes.to_string())?;
            // Reclaim would stall the guest; an over-limit QEMU is better killed.
            let _ = write(d, "memory.swappiness", "0");
        }
        if let Some(d) = self.dir("cpu") {
            let period: u64 = 100_000;
            write(d, "cpu.cfs_period_us", &period.to_string())?;
            write(
                d,
                "cpu.cfs_quota_us",
                &(period * u64::from(limits.cpus.max(1))).to_string(),
            )?;
        }
        if let Some(d) = self.dir("pids") {
            write(d, "pids.max", &limits.pids.to_string())?;
        }
        Ok(())
    }

    /// The `cgroup.procs` files a process writes its pid to in order to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .map(|(_, d)| d.join("cgroup.procs"))
            .collect()
    }

    /// Pids in the VM's memory (or first) cgroup.
    pub fn pids(&self) -> Vec<u32> {
        let Some((_, dir)) = self
            .dirs
            .iter()
            .find(|(c, _)| *c == "memory")
            .or(self.dirs.first())
        else {
            return Vec::new();
        };
        fs::read_to_string(dir.join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Memory charged to the VM: (usage, page cache), bytes.
    pub fn memory(&self) -> (u64, u64) {
        let Some(d) = self.dir("memory") else {
            return (0, 0);
        };
        let usage = read_u64(&d.join("memory.usage_in_bytes")).unwrap_or(0);
        let cache = fs::read_to_string(d.join("memory.stat"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("cache ")?.trim().parse().ok())
            })
            .unwrap_or(0);
        (usage, cache)
    }

    /// CPU time used, nanoseconds.
    pub fn cpu_time_ns(&self) -> u64 {
        self.dir("cpuacct")
            .and_then(|d| read_u64(&d.join("cpuacct.usage")))
            .unwrap_or(0)
    }

    /// Removes the cgroups; waits up to `wait` for exiting tasks to leave. Idempotent.
    /// Whatever still runs inside (nothing should) is killed first: a VM's cgroup
    /// holds only that VM.
    pub async fn remove(&self, wait: Duration) -> Result<(), CgroupError> {
        for pid in self.pids() {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let deadline = tokio::time::Instant::now() + wait;
        for (_, dir) in &self.dirs {
            loop {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(err) if err.kind() == io::ErrorKind::NotFound => break,
                    // EBUSY: a task is still there (an exiting process lingers briefly).
                    Err(err) if err.raw_os_error() == Some(nix::libc::EBUSY) => {
                        if tokio::time::Instant::now() >= deadline {
                            return Err(CgroupError::Busy { path: dir.clone() });
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(err) => {
                        return Err(CgroupError::Io {
                            what: "remove",
                            path: dir.clone(),
                            err,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Removes the cgroups that are empty now, without waiting (best effort).
    pub fn remove_now(&self) {
        for (_, dir) in &self.dirs {
            let _ = fs::remove_dir(dir);
        }
    }

    /// Whether any of the cgroups still exists.
    pub fn exists(&self) -> bool {
        self.dirs.iter().any(|(_, d)| d.exists())
    }
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    fs::write(&path, value).map_err(|err| CgroupError::Io {
        what: "write",
        path,
        err,
    })
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_mounted_controllers_are_used() {
        let root = std::env::temp_dir().join(format!("hearth-cg-{}", std::process::id()));
        fs::create_dir_all(root.join("memory")).unwrap();
        fs::write(root.join("memory/cgroup.procs"), "").unwrap();
        let cg = VmCgroup::new(&root, "hearth", "vm1");
        assert_eq!(cg.controllers(), ["memory"]);
        assert_eq!(cg.dir("memory").unwrap(), root.join("memory/hearth/vm1"));
        fs::remove_dir_all(root).unwrap();
    }
}
