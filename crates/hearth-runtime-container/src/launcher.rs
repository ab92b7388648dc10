// SPDX-License-Identifier: Apache-2.0
//! Launching sandboxes, and finding them again after a restart.
//!
//! A launch, in order (see [`crate::plan`] for what init does on its side):
//!
//! 1. Validate the spec; with a disk limit, create the state directory as a btrfs
//!    subvolume with a qgroup limit.
//! 2. Create `upper/`, `work/`, `rootfs/` and the `/etc` files.
//! 3. Create the cgroups and write the limits.
//! 4. Clone init into new user, mount, pid, uts and ipc namespaces, from a short-lived
//!    thread that has joined the sandbox's network namespace, sharing the server's
//!    memory until exec (no copy, no copy-on-write faults); init waits.
//! 5. Write init's uid/gid maps and move it into the cgroups.
//! 6. Build the overlay with layers idmapped through init's user namespace, and the
//!    read-only `/sys` clone, both as detached mounts.
//! 7. Release init with both mount fds and wait for its exec (or its typed failure).
//!
//! Any failure kills init (if cloned) and removes the cgroups, and the state
//! directory (with its disk limit) if this launch created it.

use crate::cgroups::Controllers;
use crate::container::{self, Container, Persisted, proc_stat};
use crate::plan::{self, Prepared};
use crate::rootfs;
use crate::security;
use crate::spec::ContainerSpec;
use crate::{ContainerError, volume};
use hearth_sys::caps;
use hearth_sys::cgroup;
use hearth_sys::clone;
use hearth_sys::ns::{self, NsKind};
use hearth_sys::pidfd;
use hearth_sys::seccomp::SeccompProgram;
use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// The namespaces init is cloned into. The cgroup namespace comes later (init
/// unshares it once it sits in its cgroups) and the network namespace is joined.
const NAMESPACES: [NsKind; 5] = [
    NsKind::User,
    NsKind::Mount,
    NsKind::Pid,
    NsKind::Uts,
    NsKind::Ipc,
];

/// Settings fixed for the life of a [`Launcher`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LauncherConfig {
    /// The cgroup under each hierarchy's root that holds one group per sandbox.
    pub cgroup_parent: String,
    /// Set `favordynmods` on the unified cgroup hierarchy (host-wide) so that moving
    /// init into its cgroups does not wait for an RCU grace period: on this host a
    /// launch's five v1 migrations took 8.5 ms (median, busy machine) without it
    /// and 0.5 ms with it. Forks and exits pay an atomic operation in exchange.
    pub favor_dynamic_cgroups: bool,
}

impl Default for LauncherConfig {
    fn default() -> Self {
        Self {
            cgroup_parent: "hearth".into(),
            favor_dynamic_cgroups: true,
        }
    }
}

/// Launches container sandboxes. Holds what every launch reuses: the cgroup layout,
/// the compiled seccomp filter and the capability count. Cheap to share by
/// reference across threads; [`Launcher::launch`] blocks (call it from
/// `spawn_blocking`).
#[derive(Debug)]
pub struct Launcher {
    controllers: Controllers,
    seccomp: SeccompProgram,
    last_cap: u32,
    devnull: fs::File,
}

impl Launcher {
    /// Detects the cgroup hierarchies (creating the parent group in each),
    /// compiles the seccomp policy and opens `/dev/null`.
    pub fn new(config: &LauncherConfig) -> Result<Self, ContainerError> {
        if !crate::spec::valid_id(&config.cgroup_parent) {
            return Err(ContainerError::Config {
                reason: "cgroup parent must be a plain directory name",
            });
        }
        let controllers = Controllers::detect(&config.cgroup_parent)?;
        if config.favor_dynamic_cgroups
            && let Some(v2) = controllers.v2_root()
        {
            match cgroup::favor_dynamic_modifications(v2) {
                Ok(true) => tracing::info!(root = %v2.display(), "enabled cgroup favordynmods"),
                Ok(false) => {}
                Err(err) => tracing::warn!(
                    root = %v2.display(),
                    error = %err,
                    "cannot enable cgroup favordynmods; launches will be slower"
                ),
            }
        }
        let seccomp = security::seccomp_program()?;
        let last_cap = caps::last_cap().map_err(|err| ContainerError::Open {
            path: "/proc/sys/kernel/cap_last_cap".into(),
            err,
        })?;
        let devnull = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(|err| ContainerError::Open {
                path: "/dev/null".into(),
                err,
            })?;
        Ok(Self {
            controllers,
            seccomp,
            last_cap,
            devnull,
        })
    }

    /// Launches a sandbox as `spec` says and returns once its init has exec'd.
    pub fn launch(&self, spec: &ContainerSpec) -> Result<Container, ContainerError> {
        spec.validate()?;
        let t0 = Instant::now();
        let cgroups = self.controllers.sandbox(&spec.id);
        // Never touch (or, on failure, tear down) a sandbox that already exists.
        if cgroups.exists() {
            return Err(ContainerError::Exists {
                id: spec.id.clone(),
            });
        }
        let created_state = !spec.state_dir.exists();
        let state = Persisted {
            id: spec.id.clone(),
            pid: 0,
            start_time: 0,
            id_range: spec.id_range,
            state_dir: spec.state_dir.clone(),
            disk_limited: spec.limits.disk_bytes.is_some(),
        };
        let result = self.try_launch(spec, &cgroups, state.clone());
        match result {
            Ok(container) => {
                tracing::debug!(
                    id = %spec.id,
                    pid = container.pid(),
                    elapsed_us = t0.elapsed().as_micros() as u64,
                    "container launched"
                );
                Ok(container)
            }
            Err(cause) => {
                // Init, if it was cloned, is dead and reaped by now: the pending
                // child was dropped inside try_launch.
                let mut cleanup = container::teardown(&cgroups);
                if cleanup.is_ok() && created_state {
                    cleanup = container::remove_state_dir(&spec.state_dir);
                }
                match cleanup {
                    Ok(()) => Err(cause),
                    Err(cleanup) => Err(ContainerError::LaunchCleanup {
                        cause: Box::new(cause),
                        cleanup: Box::new(cleanup),
                    }),
                }
            }
        }
    }

    fn try_launch(
        &self,
        spec: &ContainerSpec,
        cgroups: &crate::cgroups::SandboxCgroups,
        mut state: Persisted,
    ) -> Result<Container, ContainerError> {
        // 1.
        if let Some(bytes) = spec.limits.disk_bytes {
            volume::create_limited(&spec.state_dir, bytes)?;
        }
        // 2.
        let paths = rootfs::prepare_state(spec)?;
        // 3.
        cgroups.create(&spec.limits)?;
        // 4.
        let program = Arc::new(
            plan::build(
                spec,
                &paths,
                &Prepared {
                    seccomp: &self.seccomp,
                    last_cap: self.last_cap,
                },
            )
            .map_err(ContainerError::Program)?,
        );
        let output = match &spec.output {
            Some(path) => Some(
                fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(path)
                    .map_err(|err| ContainerError::Open {
                        path: path.clone(),
                        err,
                    })?,
            ),
            None => None,
        };
        let out = output.as_ref().unwrap_or(&self.devnull);
        let stdio = [self.devnull.as_fd(), out.as_fd(), out.as_fd()];
        let netns = match &spec.netns {
            Some(path) => Some(ns::open_ns(path).map_err(|err| ContainerError::Netns {
                path: path.clone(),
                err,
            })?),
            None => None,
        };
        // The clone happens on a short-lived thread that joins `netns` first, so
        // init is born there while the caller's thread never changes namespace.
        let pending =
            clone::spawn(&program, &NAMESPACES, stdio, netns).map_err(ContainerError::Start)?;
        let pid = pending.pid();
        // 5.
        let map = spec.id_range.map_line();
        for file in ["uid_map", "gid_map"] {
            fs::write(format!("/proc/{pid}/{file}"), &map)
                .map_err(|err| ContainerError::IdMap { pid, err })?;
        }
        cgroups.attach(pid)?;
        // 6.
        let userns = ns::open_ns(Path::new(&format!("/proc/{pid}/ns/user"))).map_err(|err| {
            ContainerError::Open {
                path: format!("/proc/{pid}/ns/user").into(),
                err,
            }
        })?;
        let root = rootfs::assemble_overlay(&spec.layers, &paths, userns.as_fd())?;
        let sys = rootfs::sysfs_view()?;
        // 7.
        let spawned = pending
            .release(&[root.as_fd(), sys.as_fd()])
            .map_err(ContainerError::Start)?;
        drop((root, sys, userns));
        let (_, start_time) = proc_stat(pid).map_err(|err| ContainerError::Inspect { pid, err })?;
        state.pid = pid;
        state.start_time = start_time;
        Ok(Container::new(state, spawned.pidfd, true, cgroups.clone()))
    }

    /// Re-attaches to a sandbox launched earlier (by this or a previous server
    /// process). `Ok(None)` means it is gone: its init died, or the pid now belongs
    /// to another process. Then call [`Launcher::cleanup_stale`].
    pub fn adopt(&self, state: &Persisted) -> Result<Option<Container>, ContainerError> {
        let pid = state.pid;
        let fd = match pidfd::pidfd_open(pid) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
            Err(err) => return Err(ContainerError::Inspect { pid, err }),
        };
        // Read after opening the pidfd: if the start time still matches now, the
        // pidfd refers to the very process that was launched.
        let (ppid, start_time) = match proc_stat(pid) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(ContainerError::Inspect { pid, err }),
        };
        if start_time != state.start_time {
            return Ok(None);
        }
        let membership = match fs::read_to_string(format!("/proc/{pid}/cgroup")) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(ContainerError::Inspect { pid, err }),
        };
        let suffix = self.controllers.membership_suffix(&state.id);
        if !membership.lines().any(|l| l.ends_with(&suffix)) {
            return Ok(None);
        }
        let is_child = ppid == std::process::id();
        Ok(Some(Container::new(
            state.clone(),
            fd,
            is_child,
            self.controllers.sandbox(&state.id),
        )))
    }

    /// Removes what a dead sandbox left behind: stray processes in its cgroups, the
    /// cgroups, its disk limit, and with `remove_state` its state directory.
    pub fn cleanup_stale(
        &self,
        state: &Persisted,
        remove_state: bool,
    ) -> Result<(), ContainerError> {
        self.remove_leftovers(&state.id)?;
        if remove_state {
            container::remove_state_dir(&state.state_dir)?;
        }
        Ok(())
    }

    /// Kills whatever is left in sandbox `id`'s cgroups and removes them: what an
    /// instance left that ended without its teardown (hearth died while stopping it).
    /// Nothing there is fine.
    pub fn remove_leftovers(&self, id: &str) -> Result<(), ContainerError> {
        container::teardown(&self.controllers.sandbox(id))
    }

    /// Removes the parent cgroup [`Launcher::new`] created, in every hierarchy: the
    /// last step of a shutdown that killed every sandbox. Fails while any sandbox's
    /// cgroup is still there.
    pub fn remove_parent_cgroups(&self) -> Result<(), ContainerError> {
        Ok(self.controllers.remove_parent()?)
    }

    /// Tears down sandbox cgroups whose id `is_live` does not claim (leftovers of
    /// a crash before the caller could persist them), killing anything inside.
    /// Returns the ids removed.
    pub fn cleanup_orphans(
        &self,
        is_live: impl Fn(&str) -> bool,
    ) -> Result<Vec<String>, ContainerError> {
        let mut orphans: Vec<String> = Vec::new();
        for parent in self.controllers.parent_dirs() {
            let entries = fs::read_dir(&parent).map_err(|err| ContainerError::Open {
                path: parent.clone(),
                err,
            })?;
            for entry in entries.flatten() {
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let name = entry.file_name().to_string_lossy().into_owned();
                if !is_live(&name) && !orphans.contains(&name) {
                    orphans.push(name);
                }
            }
        }
        for id in &orphans {
            let cgroups = self.controllers.sandbox(id);
            if cgroups.exists() {
                container::teardown(&cgroups)?;
            }
        }
        Ok(orphans)
    }
}
