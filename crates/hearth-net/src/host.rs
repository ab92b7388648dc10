// SPDX-License-Identifier: Apache-2.0
//! Host-wide state shared by every pool: IPv4 forwarding and the neighbour table's
//! size.
//!
//! Slots need `net.ipv4.ip_forward = 1`. The first pool on a host records the value it
//! found in `<run_dir>/ip_forward.saved`; each pool registers itself under
//! `<run_dir>/users/<name>`; when the last registered pool shuts down, the saved value is
//! written back. While forwarding is on only because of Hearth, every pool's host table
//! drops forwarding between non-Hearth interfaces, so the host does not start routing
//! for anyone else. `run_dir` is on tmpfs (`/run`), so a reboot resets both the sysctl
//! and the bookkeeping; a crashed pool stays registered until it starts again and shuts
//! down.
//!
//! Every slot puts about four entries in the kernel's ARP table (host and router
//! see each other, router and guest too), and that table is one for all network
//! namespaces: at the default hard limit of 1024 entries a few hundred sandboxes fill
//! it and new ones cannot be reached ("neighbor table overflow"). Pools raise the
//! garbage-collection thresholds to fit the slots they may make, saved and restored
//! the same way as forwarding.

use nix::fcntl::{Flock, FlockArg};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// The ARP table's soft and hard garbage-collection limits, with the names of their
/// saved values.
const NEIGH_LIMITS: [(&str, &str); 2] = [
    (
        "/proc/sys/net/ipv4/neigh/default/gc_thresh2",
        "gc_thresh2.saved",
    ),
    (
        "/proc/sys/net/ipv4/neigh/default/gc_thresh3",
        "gc_thresh3.saved",
    ),
];
/// ARP entries a slot may need, and room for everything else on the host.
const NEIGH_PER_SLOT: u64 = 4;
const NEIGH_HEADROOM: u64 = 1024;
/// The most the limits are raised to (a limit, not an allocation).
const NEIGH_MAX: u64 = 1 << 20;

/// The ARP table limits (soft, hard) that fit `slots` slots besides the host's own
/// entries.
pub(crate) fn neigh_limits(slots: u32) -> (u64, u64) {
    let hard = (u64::from(slots) * NEIGH_PER_SLOT + NEIGH_HEADROOM).min(NEIGH_MAX);
    (hard / 2, hard)
}

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

/// Reads a numeric sysctl.
fn read_number(path: &Path) -> Result<u64, HostError> {
    let text = update(path, fs::read_to_string(path))?;
    text.trim().parse().map_err(|_| HostError::Update {
        path: path.to_owned(),
        err: io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not a number: {text:?}"),
        ),
    })
}

/// Raises the ARP table limits to at least `wanted` (soft, hard), saving the values
/// found first if no pool saved them yet. Limits already higher stay.
fn raise_neigh_limits(run_dir: &Path, wanted: (u64, u64)) -> Result<(), HostError> {
    for ((sysctl, saved), want) in NEIGH_LIMITS.iter().zip([wanted.0, wanted.1]) {
        let (sysctl, saved) = (Path::new(sysctl), run_dir.join(saved));
        let now = read_number(sysctl)?;
        if !saved.exists() {
            update(&saved, fs::write(&saved, format!("{now}\n")))?;
        }
        if now < want {
            update(sysctl, fs::write(sysctl, format!("{want}\n")))?;
        }
    }
    Ok(())
}

/// Writes back the ARP table limits saved by [`raise_neigh_limits`].
fn restore_neigh_limits(run_dir: &Path) -> Result<(), HostError> {
    for (sysctl, saved) in NEIGH_LIMITS {
        let saved = run_dir.join(saved);
        match fs::read_to_string(&saved) {
            Ok(v) => {
                update(Path::new(sysctl), fs::write(sysctl, v))?;
                update(&saved, fs::remove_file(&saved))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(HostError::Update { path: saved, err }),
        }
    }
    Ok(())
}

/// Turns IPv4 forwarding on for pool `name` and makes the ARP table fit `slots` more
/// slots; returns whether the host forwarded before any Hearth pool turned it on.
pub(crate) fn enable_forwarding(run_dir: &Path, name: &str, slots: u32) -> Result<bool, HostError> {
    let _guard = lock(run_dir)?;
    raise_neigh_limits(run_dir, neigh_limits(slots))?;
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

/// Unregisters pool `name`; the last pool out restores the saved forwarding value and
/// ARP table limits.
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
    restore_neigh_limits(run_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbour_limits_fit_every_slot_and_the_host() {
        assert_eq!(neigh_limits(0), (512, 1024));
        let (soft, hard) = neigh_limits(1000);
        assert!(hard >= 1000 * NEIGH_PER_SLOT + NEIGH_HEADROOM);
        assert_eq!(soft, hard / 2);
        assert_eq!(neigh_limits(u32::MAX).1, NEIGH_MAX);
    }
}
