// SPDX-License-Identifier: Apache-2.0
//! Host-wide state shared by every pool: IPv4 forwarding.
//!
//! Slots need `net.ipv4.ip_forward = 1`. The first pool on a host records the value it
//! found in `<run_dir>/ip_forward.saved`; each pool registers itself under
//! `<run_dir>/users/<name>`; when the last registered pool shuts down, the saved value is
//! written back. While forwarding is on only because of Hearth, every pool's host table
//! drops forwarding between non-Hearth interfaces, so the host does not start routing
//! for anyone else. `run_dir` is on tmpfs (`/run`), so a reboot resets both the sysctl
//! and the bookkeeping; a crashed pool stays registered until it starts again and shuts
//! down.

use nix::fcntl::{Flock, FlockArg};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// A failed change to host-wide state.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// Reading or writing the bookkeeping or the sysctl failed.
    #[error("failed to update {path}")]
    Update {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        err: io::Error,
    },
    /// The bookkeeping lock could not be taken.
    #[error("failed to lock {path}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        err: io::Error,
    },
}

fn update<T>(path: &Path, r: io::Result<T>) -> Result<T, HostError> {
    r.map_err(|err| HostError::Update {
        path: path.to_owned(),
        err,
    })
}

fn lock(run_dir: &Path) -> Result<Flock<File>, HostError> {
    let path = run_dir.join("lock");
    update(run_dir, fs::create_dir_all(run_dir.join("users")))?;
    let file = update(
        &path,
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path),
    )?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| HostError::Lock {
        path,
        err: e.into(),
    })
}

/// Turns IPv4 forwarding on for pool `name`; returns whether the host forwarded before
/// any Hearth pool turned it on.
pub(crate) fn enable_forwarding(run_dir: &Path, name: &str) -> Result<bool, HostError> {
    let _guard = lock(run_dir)?;
    let saved = run_dir.join("ip_forward.saved");
    let before = match fs::read_to_string(&saved) {
        Ok(v) => v.trim() == "1",
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let now = update(Path::new(IP_FORWARD), fs::read_to_string(IP_FORWARD))?;
            let now = now.trim() == "1";
            update(&saved, fs::write(&saved, if now { "1\n" } else { "0\n" }))?;
            now
        }
        Err(err) => return Err(HostError::Update { path: saved, err }),
    };
    let user = run_dir.join("users").join(name);
    update(&user, fs::write(&user, b""))?;
    update(Path::new(IP_FORWARD), fs::write(IP_FORWARD, b"1\n"))?;
    Ok(before)
}

/// Unregisters pool `name`; the last pool out restores the saved forwarding value.
pub(crate) fn release_forwarding(run_dir: &Path, name: &str) -> Result<(), HostError> {
    let _guard = lock(run_dir)?;
    let user = run_dir.join("users").join(name);
    match fs::remove_file(&user) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(HostError::Update { path: user, err }),
    }
    let users = run_dir.join("users");
    let others = update(&users, fs::read_dir(&users))?.next().is_some();
    if others {
        return Ok(());
    }
    let saved = run_dir.join("ip_forward.saved");
    match fs::read_to_string(&saved) {
        Ok(v) => {
            let value = if v.trim() == "1" { "1\n" } else { "0\n" };
            update(Path::new(IP_FORWARD), fs::write(IP_FORWARD, value))?;
            update(&saved, fs::remove_file(&saved))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(HostError::Update { path: saved, err }),
    }
    Ok(())
}
