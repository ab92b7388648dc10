// SPDX-License-Identifier: Apache-2.0
//! A launched sandbox: signalling, freezing, statistics and teardown.

use crate::ContainerError;
use crate::cgroups::SandboxCgroups;
use crate::spec::IdRange;
use crate::volume;
use hearth_sys::pidfd;
use hearth_sys::process::ChildExit;
use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long teardown waits for init to exit after SIGKILL.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the caller stores to find a sandbox again after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persisted {
    /// The container id.
    pub id: String,
    /// Init's pid in the host's pid namespace.
    pub pid: u32,
    /// Init's start time (clock ticks after boot, `/proc/<pid>/stat` field 22), so
    /// that a recycled pid is never mistaken for the sandbox.
    pub start_time: u64,
    /// The host ids of the sandbox.
    pub id_range: IdRange,
    /// The state directory.
    pub state_dir: PathBuf,
    /// Whether the state directory is a subvolume with a disk limit.
    pub disk_limited: bool,
}

/// Resource usage of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStats {
    /// CPU time used by all its processes, in nanoseconds.
    pub cpu_usage_ns: u64,
    /// Memory charged to it (page cache and tmpfs included).
    pub memory_usage_bytes: u64,
    /// Its memory limit.
    pub memory_limit_bytes: u64,
    /// The page-cache part of the usage.
    pub memory_cache_bytes: u64,
    /// Processes and threads.
    pub pids: u64,
    /// Bytes its writable layer holds, when a disk limit is in force. btrfs updates
    /// the number at each transaction commit (up to 30 s late); the limit itself is
    /// enforced at once.
    pub disk_used_bytes: Option<u64>,
    /// The disk limit, when in force.
    pub disk_limit_bytes: Option<u64>,
}

/// A running (or exited but not yet torn down) sandbox.
///
/// Dropping the handle leaves the sandbox running, so that a restarted server can
/// [`crate::Launcher::adopt`] it; [`Container::kill`] tears it down. Init is a
/// child of the launching process: when it exits on its own it stays a zombie until
/// [`Container::try_wait`], [`Container::wait`] or [`Container::kill`] reaps it, so
/// a server should watch [`Container::pidfd`] (readable on exit).
#[derive(Debug)]
pub struct Container {
    state: Persisted,
    pidfd: OwnedFd,
    /// Whether init is our child (then we must reap it).
    is_child: bool,
    cgroups: SandboxCgroups,
    exit: Option<Exit>,
    torn_down: bool,
}

/// How init ended, as far as this process can know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Reaped by us with this status.
    Status(ChildExit),
    /// Gone, but reaped by someone else (an adopted sandbox).
    Unknown,
}

/// Reads `(ppid, start_time)` from `/proc/<pid>/stat`.
pub(crate) fn proc_stat(pid: u32) -> io::Result<(u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces and parentheses: parse after the
    // last ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): ppid is field 4, starttime field 22.
    let parse = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed stat"))
    };
    let ppid = u32::try_from(parse(1)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "malformed stat"))?;
    Ok((ppid, parse(19)?))
}

impl Container {
    pub(crate) fn new(
        state: Persisted,
        pidfd: OwnedFd,
        is_child: bool,
        cgroups: SandboxCgroups,
    ) -> Self {
        Self {
            state,
            pidfd,
            is_child,
            cgroups,
            exit: None,
            torn_down: false,
        }
    }

    /// The container id.
    pub fn id(&self) -> &str {
        &self.state.id
    }

    /// Init's pid in the host's pid namespace.
    pub fn pid(&self) -> u32 {
        self.state.pid
    }

    /// Init's pidfd: readable once init has exited (for async waiting).
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// What to store for [`crate::Launcher::adopt`].
    pub fn persisted(&self) -> &Persisted {
        &self.state
    }

    /// Sends `signal` to init. A sandbox that has exited is not an error.
    pub fn signal(&self, signal: i32) -> Result<(), ContainerError> {
        match pidfd::pidfd_send_signal(self.pidfd.as_fd(), signal) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            Err(err) => Err(ContainerError::Signal {
                pid: self.state.pid,
                err,
            }),
        }
    }

    /// Whether init has exited, reaping it if it is our child.
    pub fn try_wait(&mut self) -> Result<Option<Exit>, ContainerError> {
        if self.exit.is_some() {
            return Ok(self.exit);
        }
        let pid = self.state.pid;
        if self.is_child {
            if let Some(status) = pidfd::reap(self.pidfd.as_fd(), true)
                .map_err(|err| ContainerError::Wait { pid, err })?
            {
                self.exit = Some(Exit::Status(status));
            }
        } else if pidfd::wait_exit(self.pidfd.as_fd(), Some(Duration::ZERO))
            .map_err(|err| ContainerError::Wait { pid, err })?
        {
            self.exit = Some(Exit::Unknown);
        }
        Ok(self.exit)
    }

    /// Blocks until init has exited (at most `timeout`), reaping it if ours;
    /// `Ok(None)` means it is still running.
    pub fn wait(&mut self, timeout: Duration) -> Result<Option<Exit>, ContainerError> {
        let pid = self.state.pid;
        if self.exit.is_none()
            && !pidfd::wait_exit(self.pidfd.as_fd(), Some(timeout))
                .map_err(|err| ContainerError::Wait { pid, err })?
        {
            return Ok(None);
        }
        self.try_wait()
    }

    /// Freezes every process of the sandbox (cgroup freezer).
    pub fn freeze(&self) -> Result<(), ContainerError> {
        Ok(self.cgroups.set_frozen(true)?)
    }

    /// Thaws a frozen sandbox.
    pub fn thaw(&self) -> Result<(), ContainerError> {
        Ok(self.cgroups.set_frozen(false)?)
    }

    /// Whether the sandbox is frozen.
    pub fn is_frozen(&self) -> Result<bool, ContainerError> {
        Ok(self.cgroups.is_frozen()?)
    }

    /// Current resource usage.
    pub fn stats(&self) -> Result<ContainerStats, ContainerError> {
        let cg = self.cgroups.stats()?;
        let disk = if self.state.disk_limited {
            Some(volume::usage(&self.state.state_dir)?)
        } else {
            None
        };
        Ok(ContainerStats {
            cpu_usage_ns: cg.cpu_usage_ns,
            memory_usage_bytes: cg.memory_usage_bytes,
            memory_limit_bytes: cg.memory_limit_bytes,
            memory_cache_bytes: cg.memory_cache_bytes,
            pids: cg.pids,
            disk_used_bytes: disk.map(|(used, _)| used),
            disk_limit_bytes: disk.map(|(_, limit)| limit),
        })
    }

    /// Kills every process of the sandbox and removes its cgroups and disk limit;
    /// with `remove_state`, also its state directory. Idempotent: calling it again
    /// after success does nothing, after a failure retries what is left.
    pub fn kill(&mut self, remove_state: bool) -> Result<(), ContainerError> {
        if !self.torn_down {
            self.cgroups.lift_limits();
            self.signal(libc::SIGKILL)?;
            // A frozen (v1) task cannot act on SIGKILL until thawed.
            if self.cgroups.is_frozen().unwrap_or(false) {
                self.cgroups.set_frozen(false)?;
            }
            // Init's death makes the kernel kill the rest of its pid namespace
            // before the pidfd reports the exit, and the mount namespace (the
            // overlay with it) goes with the last process.
            if self.wait(EXIT_TIMEOUT)?.is_none() {
                return Err(ContainerError::Wait {
                    pid: self.state.pid,
                    err: io::Error::from(io::ErrorKind::TimedOut),
                });
            }
            teardown(&self.cgroups)?;
            self.torn_down = true;
        }
        if remove_state {
            remove_state_dir(&self.state.state_dir)?;
        }
        Ok(())
    }
}

/// Kills whatever is left in the cgroups, then removes them. (The disk limit
/// belongs to the state directory and goes with it.)
pub(crate) fn teardown(cgroups: &SandboxCgroups) -> Result<(), ContainerError> {
    kill_stragglers(cgroups)?;
    cgroups.remove()?;
    Ok(())
}

/// Kills processes still in the cgroups (none after a normal exit: the pid
/// namespace's death takes them) and waits for them to go.
fn kill_stragglers(cgroups: &SandboxCgroups) -> Result<(), ContainerError> {
    let deadline = std::time::Instant::now() + EXIT_TIMEOUT;
    let mut lifted = false;
    loop {
        let pids = cgroups.processes();
        if pids.is_empty() {
            return Ok(());
        }
        if !lifted {
            cgroups.lift_limits();
            lifted = true;
        }
        if cgroups.is_frozen().unwrap_or(false) {
            cgroups.set_frozen(false)?;
        }
        for pid in &pids {
            if let Ok(fd) = pidfd::pidfd_open(*pid) {
                let _ = pidfd::pidfd_send_signal(fd.as_fd(), libc::SIGKILL);
            }
        }
        if std::time::Instant::now() >= deadline {
            return Err(ContainerError::Wait {
                pid: pids[0],
                err: io::Error::from(io::ErrorKind::TimedOut),
            });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Removes a state directory and everything in it (a disk-limited one is a btrfs
/// subvolume: destroyed in one call); a missing one is fine.
pub fn remove_state_dir(dir: &Path) -> Result<(), ContainerError> {
    Ok(volume::remove_dir(dir)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_stat_parses() {
        let (ppid, start) = proc_stat(std::process::id()).unwrap();
        assert!(ppid > 0);
        assert!(start > 0);
    }

    #[test]
    fn missing_process_stat_is_not_found() {
        let err = proc_stat(i32::MAX as u32 - 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn persisted_state_round_trips_through_json() {
        let p = Persisted {
            id: "a".into(),
            pid: 42,
            start_time: 7,
            id_range: IdRange::new(65536).unwrap(),
            state_dir: "/s".into(),
            disk_limited: true,
        };
        let text = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Persisted>(&text).unwrap(), p);
    }
}
