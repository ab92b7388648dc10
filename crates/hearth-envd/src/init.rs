// SPDX-License-Identifier: Apache-2.0
//! Duties of PID 1: the API filesystems, and forwarding termination to children.
//!
//! A runtime may make envd the sandbox's init. Containers arrive with `/proc`, `/dev`
//! and friends already mounted by the runtime; a microVM arrives with nothing. Each
//! mount is therefore done only when missing, and failures are logged, not fatal:
//! envd must come up to report what is wrong.

use crate::state::Envd;
use nix::mount::{MsFlags, mount};
use std::path::Path;
use std::sync::Arc;

struct Mount {
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
    /// A file that exists once the filesystem is mounted.
    probe: &'static str,
}

const MOUNTS: &[Mount] = &[
    Mount {
        target: "/proc",
        fstype: "proc",
        flags: MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        data: None,
        probe: "/proc/self/stat",
    },
    Mount {
        target: "/sys",
        fstype: "sysfs",
        flags: MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        data: None,
        probe: "/sys/kernel",
    },
    Mount {
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
        probe: "/dev/null",
    },
    Mount {
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
        probe: "/dev/pts/ptmx",
    },
    Mount {
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
        probe: "",
    },
    Mount {
        target: "/run",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=0755"),
        probe: "",
    },
];

fn is_mountpoint(target: &str) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(target))
}

/// Mounts whatever API filesystem is missing. Called only when envd is PID 1.
pub fn prepare_system() {
    for m in MOUNTS {
        let present = if m.probe.is_empty() {
            is_mountpoint(m.target)
        } else {
            Path::new(m.probe).exists()
        };
        if present {
            continue;
        }
        let _ = std::fs::create_dir_all(m.target);
        if let Err(err) = mount(Some(m.fstype), m.target, Some(m.fstype), m.flags, m.data) {
            tracing::warn!(target = m.target, error = %err, "cannot mount");
        }
    }
    if !Path::new("/dev/ptmx").exists() {
        let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
    }
}

/// Handles SIGTERM/SIGINT: forwards SIGTERM to every process envd started, gives them
/// a moment, kills what is left and exits.
pub fn spawn_signal_handler(state: Arc<Envd>, is_init: bool) {
    use tokio::signal::unix::{SignalKind, signal};
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!(is_init, "terminating: stopping processes");
        state
            .processes
            .signal_all(nix::sys::signal::Signal::SIGTERM);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        while state.processes.any_running() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        state
            .processes
            .signal_all(nix::sys::signal::Signal::SIGKILL);
        std::process::exit(0);
    });
}
