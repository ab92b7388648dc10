// SPDX-License-Identifier: Apache-2.0
//! One sandbox's cgroups: `<parent>/<id>` under every controller's hierarchy.
//!
//! On this project's hybrid hosts each controller has its own v1 hierarchy, so one
//! sandbox owns up to five directories; on a v2 host they collapse into one.

use crate::spec::Limits;
use hearth_sys::cgroup::{self, CgroupLayout, Controller, Hierarchy};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// CFS period for the CPU limit: 100 ms, the kernel default.
const CPU_PERIOD_US: u64 = 100_000;

/// How long removal waits for the kernel to finish with exited tasks.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long freezing may take before it is reported as stuck.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

/// A cgroup operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The hierarchies could not be read.
    #[error("failed to detect the cgroup layout")]
    Detect(#[source] io::Error),
    /// No hierarchy serves a controller the runtime needs.
    #[error("no cgroup hierarchy offers the {controller} controller")]
    MissingController {
        /// The controller's name.
        controller: &'static str,
    },
    /// A cgroup directory could not be created.
    #[error("failed to create cgroup {path}")]
    Create {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        err: io::Error,
    },
    /// A limit could not be written.
    #[error("failed to write {value:?} to {file} of cgroup {path}")]
    Configure {
        /// The cgroup.
        path: PathBuf,
        /// The control file.
        file: &'static str,
        /// The value.
        value: String,
        /// Why.
        #[source]
        err: io::Error,
    },
    /// The process could not be moved in.
    #[error("failed to move process {pid} into cgroup {path}")]
    Attach {
        /// The cgroup.
        path: PathBuf,
        /// The process.
        pid: u32,
        /// Why.
        #[source]
        err: io::Error,
    },
    /// A control file could not be read.
    #[error("failed to read {file} of cgroup {path}")]
    Read {
        /// The cgroup.
        path: PathBuf,
        /// The control file.
        file: &'static str,
        /// Why.
        #[source]
        err: io::Error,
    },
    /// The cgroup could not be removed.
    #[error("failed to remove cgroup {path}")]
    Remove {
        /// The cgroup.
        path: PathBuf,
        /// Why.
        #[source]
        err: io::Error,
    },
    /// Freezing did not complete in time.
    #[error("cgroup {path} did not freeze within {timeout:?}")]
    FreezeTimeout {
        /// The cgroup.
        path: PathBuf,
        /// How long we waited.
        timeout: Duration,
    },
}

/// Where each controller lives on this host, and the parent group (`hearth`).
#[derive(Debug, Clone)]
pub(crate) struct Controllers {
    parent: String,
    v2_root: Option<PathBuf>,
    cpu: Hierarchy,
    cpuacct: Hierarchy,
    memory: Hierarchy,
    pids: Hierarchy,
    freezer: Hierarchy,
}

impl Controllers {
    /// Detects the hierarchies and creates the parent group in each.
    pub(crate) fn detect(parent: &str) -> Result<Self, CgroupError> {
        let layout = CgroupLayout::detect().map_err(CgroupError::Detect)?;
        let need = |c: Controller| {
            layout.hierarchy(c).ok_or(CgroupError::MissingController {
                controller: c.name(),
            })
        };
        let this = Self {
            parent: parent.to_owned(),
            v2_root: layout.v2_root().map(Path::to_owned),
            cpu: need(Controller::Cpu)?,
            cpuacct: need(Controller::Cpuacct)?,
            memory: need(Controller::Memory)?,
            pids: need(Controller::Pids)?,
            freezer: need(Controller::Freezer)?,
        };
        for root in this.roots() {
            let dir = root.root().join(&this.parent);
            cgroup::create(&dir).map_err(|err| CgroupError::Create {
                path: dir.clone(),
                err,
            })?;
            if let Hierarchy::V2(v2) = root {
                // Children of the parent can only use controllers enabled here and
                // in every ancestor.
                let wanted: Vec<&str> = [
                    (&this.cpu, "+cpu"),
                    (&this.memory, "+memory"),
                    (&this.pids, "+pids"),
                ]
                .iter()
                .filter(|(h, _)| h.is_v2())
                .map(|(_, c)| *c)
                .collect();
                let value = wanted.join(" ");
                for dir in [v2.clone(), dir.clone()] {
                    configure(&dir, "cgroup.subtree_control", &value)?;
                }
            }
        }
        Ok(this)
    }

    /// The unified hierarchy's mount point, if mounted.
    pub(crate) fn v2_root(&self) -> Option<&Path> {
        self.v2_root.as_deref()
    }

    /// The distinct hierarchies in use.
    fn roots(&self) -> Vec<&Hierarchy> {
        let mut roots: Vec<&Hierarchy> = Vec::new();
        for h in [
            &self.cpu,
            &self.cpuacct,
            &self.memory,
            &self.pids,
            &self.freezer,
        ] {
            if !roots.contains(&h) {
                roots.push(h);
            }
        }
        roots
    }

    /// The parent group's directories, for finding leftovers.
    pub(crate) fn parent_dirs(&self) -> Vec<PathBuf> {
        self.roots()
            .into_iter()
            .map(|h| h.root().join(&self.parent))
            .collect()
    }

    /// Removes the parent group from every hierarchy. Fails (`EBUSY`) while a
    /// sandbox's group is still inside, so it never takes a running sandbox's
    /// limits away.
    pub(crate) fn remove_parent(&self) -> Result<(), CgroupError> {
        let mut first_err = None;
        for dir in self.parent_dirs() {
            if let Err(err) = cgroup::remove(&dir, REMOVE_TIMEOUT) {
                first_err.get_or_insert(CgroupError::Remove { path: dir, err });
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// The cgroups of sandbox `id` (not created).
    pub(crate) fn sandbox(&self, id: &str) -> SandboxCgroups {
        let dir = |h: &Hierarchy| CgroupDir {
            path: h.root().join(&self.parent).join(id),
            v2: h.is_v2(),
        };
        SandboxCgroups {
            cpu: dir(&self.cpu),
            cpuacct: dir(&self.cpuacct),
            memory: dir(&self.memory),
            pids: dir(&self.pids),
            freezer: dir(&self.freezer),
        }
    }

    /// The group of pids cgroup path suffix (`/<parent>/<id>`) as printed in
    /// `/proc/<pid>/cgroup`.
    pub(crate) fn membership_suffix(&self, id: &str) -> String {
        format!("/{}/{}", self.parent, id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct CgroupDir {
    path: PathBuf,
    v2: bool,
}

/// The cgroup directories of one sandbox.
#[derive(Debug, Clone)]
pub(crate) struct SandboxCgroups {
    cpu: CgroupDir,
    cpuacct: CgroupDir,
    memory: CgroupDir,
    pids: CgroupDir,
    freezer: CgroupDir,
}

fn configure(dir: &Path, file: &'static str, value: &str) -> Result<(), CgroupError> {
    cgroup::write(dir, file, value).map_err(|err| CgroupError::Configure {
        path: dir.to_owned(),
        file,
        value: value.to_owned(),
        err,
    })
}

fn read_u64(dir: &Path, file: &'static str) -> Result<u64, CgroupError> {
    cgroup::read_u64(dir, file).map_err(|err| CgroupError::Read {
        path: dir.to_owned(),
        file,
        err,
    })
}

fn read_keyed(dir: &Path, file: &'static str, key: &str) -> Result<Option<u64>, CgroupError> {
    cgroup::read_keyed(dir, file, key).map_err(|err| CgroupError::Read {
        path: dir.to_owned(),
        file,
        err,
    })
}

/// Usage numbers read from the cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct CgroupStats {
    pub(crate) cpu_usage_ns: u64,
    pub(crate) memory_usage_bytes: u64,
    pub(crate) memory_limit_bytes: u64,
    pub(crate) memory_cache_bytes: u64,
    pub(crate) pids: u64,
}

impl SandboxCgroups {
    /// The distinct directories (co-mounted or v2 controllers share one).
    fn dirs(&self) -> Vec<&CgroupDir> {
        let mut dirs: Vec<&CgroupDir> = Vec::new();
        for d in [
            &self.cpu,
            &self.cpuacct,
            &self.memory,
            &self.pids,
            &self.freezer,
        ] {
            if !dirs.contains(&d) {
                dirs.push(d);
            }
        }
        dirs
    }

    /// Creates the directories and writes the limits.
    pub(crate) fn create(&self, limits: &Limits) -> Result<(), CgroupError> {
        for d in self.dirs() {
            cgroup::create(&d.path).map_err(|err| CgroupError::Create {
                path: d.path.clone(),
                err,
            })?;
        }
        let mem = &self.memory;
        let bytes = limits.memory_bytes.to_string();
        if mem.v2 {
            configure(&mem.path, "memory.max", &bytes)?;
            configure(&mem.path, "memory.swap.max", "0")?;
        } else {
            configure(&mem.path, "memory.limit_in_bytes", &bytes)?;
            // memsw (memory + swap) exists only with swap accounting; equal to the
            // memory limit it forbids swapping.
            if mem.path.join("memory.memsw.limit_in_bytes").exists() {
                configure(&mem.path, "memory.memsw.limit_in_bytes", &bytes)?;
            }
        }
        let pids = limits.pids_max.to_string();
        configure(&self.pids.path, "pids.max", &pids)?;
        let cpu = &self.cpu;
        match (limits.cpu_count, cpu.v2) {
            (Some(n), true) => {
                let quota = u64::from(n) * CPU_PERIOD_US;
                configure(&cpu.path, "cpu.max", &format!("{quota} {CPU_PERIOD_US}"))?;
            }
            (Some(n), false) => {
                configure(&cpu.path, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
                let quota = u64::from(n) * CPU_PERIOD_US;
                configure(&cpu.path, "cpu.cfs_quota_us", &quota.to_string())?;
            }
            (None, _) => {}
        }
        Ok(())
    }

    /// Removes the memory and CPU limits (best effort). Called just before the
    /// sandbox is killed: a sandbox at its memory limit (a fork bomb, say) thrashes in
    /// reclaim and OOM kills, and its thousands of dying tasks then need minutes
    /// instead of milliseconds to exit. Nothing new can start in a dying sandbox, so
    /// the limits have nothing left to protect.
    pub(crate) fn lift_limits(&self) {
        let mem = &self.memory;
        let lifted = if mem.v2 {
            configure(&mem.path, "memory.max", "max")
        } else {
            // memsw must never be below the memory limit: raise it first.
            let memsw = if mem.path.join("memory.memsw.limit_in_bytes").exists() {
                configure(&mem.path, "memory.memsw.limit_in_bytes", "-1")
            } else {
                Ok(())
            };
            memsw.and_then(|()| configure(&mem.path, "memory.limit_in_bytes", "-1"))
        };
        let cpu = &self.cpu;
        let cpu_lifted = if cpu.v2 {
            configure(&cpu.path, "cpu.max", "max")
        } else {
            configure(&cpu.path, "cpu.cfs_quota_us", "-1")
        };
        for err in [lifted.err(), cpu_lifted.err()].into_iter().flatten() {
            tracing::debug!(error = %hearth_types::ErrorChain(&err), "limit not lifted before kill");
        }
    }

    /// Moves `pid` into every controller's group.
    pub(crate) fn attach(&self, pid: u32) -> Result<(), CgroupError> {
        for d in self.dirs() {
            cgroup::add_process(&d.path, pid).map_err(|err| CgroupError::Attach {
                path: d.path.clone(),
                pid,
                err,
            })?;
        }
        Ok(())
    }

    /// Every process still in any of the groups.
    pub(crate) fn processes(&self) -> Vec<u32> {
        let mut all: Vec<u32> = self
            .dirs()
            .iter()
            .filter_map(|d| cgroup::processes(&d.path).ok())
            .flatten()
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// Removes the directories (after the processes are gone).
    pub(crate) fn remove(&self) -> Result<(), CgroupError> {
        let mut first_err = None;
        for d in self.dirs() {
            if let Err(err) = cgroup::remove(&d.path, REMOVE_TIMEOUT) {
                first_err.get_or_insert(CgroupError::Remove {
                    path: d.path.clone(),
                    err,
                });
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Whether any of the directories still exists.
    pub(crate) fn exists(&self) -> bool {
        self.dirs().iter().any(|d| d.path.exists())
    }

    /// Freezes (`true`) or thaws every process and waits until the kernel is done.
    pub(crate) fn set_frozen(&self, frozen: bool) -> Result<(), CgroupError> {
        let d = &self.freezer;
        let deadline = Instant::now() + FREEZE_TIMEOUT;
        let mut pause = Duration::from_micros(100);
        if d.v2 {
            configure(&d.path, "cgroup.freeze", if frozen { "1" } else { "0" })?;
            let want = u64::from(frozen);
            loop {
                if read_keyed(&d.path, "cgroup.events", "frozen")? == Some(want) {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    break;
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(10));
            }
        } else {
            let want = if frozen { "FROZEN" } else { "THAWED" };
            loop {
                // v1 freezing can stall in FREEZING when a task is in an
                // uninterruptible sleep; writing again retries it.
                configure(&d.path, "freezer.state", want)?;
                let state =
                    cgroup::read(&d.path, "freezer.state").map_err(|err| CgroupError::Read {
                        path: d.path.clone(),
                        file: "freezer.state",
                        err,
                    })?;
                if state.trim() == want {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    break;
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(10));
            }
        }
        Err(CgroupError::FreezeTimeout {
            path: d.path.clone(),
            timeout: FREEZE_TIMEOUT,
        })
    }

    /// Whether the freezer reports the group frozen.
    pub(crate) fn is_frozen(&self) -> Result<bool, CgroupError> {
        let d = &self.freezer;
        if d.v2 {
            Ok(read_keyed(&d.path, "cgroup.events", "frozen")? == Some(1))
        } else {
            let state =
                cgroup::read(&d.path, "freezer.state").map_err(|err| CgroupError::Read {
                    path: d.path.clone(),
                    file: "freezer.state",
                    err,
                })?;
            Ok(state.trim() == "FROZEN")
        }
    }

    /// Reads usage counters.
    pub(crate) fn stats(&self) -> Result<CgroupStats, CgroupError> {
        let cpu_usage_ns = if self.cpuacct.v2 {
            read_keyed(&self.cpuacct.path, "cpu.stat", "usage_usec")?.unwrap_or(0) * 1000
        } else {
            read_u64(&self.cpuacct.path, "cpuacct.usage")?
        };
        let m = &self.memory;
        let (usage, limit, cache) = if m.v2 {
            (
                read_u64(&m.path, "memory.current")?,
                read_u64(&m.path, "memory.max")?,
                read_keyed(&m.path, "memory.stat", "file")?.unwrap_or(0),
            )
        } else {
            (
                read_u64(&m.path, "memory.usage_in_bytes")?,
                read_u64(&m.path, "memory.limit_in_bytes")?,
                read_keyed(&m.path, "memory.stat", "total_cache")?.unwrap_or(0),
            )
        };
        Ok(CgroupStats {
            cpu_usage_ns,
            memory_usage_bytes: usage,
            memory_limit_bytes: limit,
            memory_cache_bytes: cache,
            pids: read_u64(&self.pids.path, "pids.current")?,
        })
    }
}
