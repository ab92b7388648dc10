// SPDX-License-Identifier: Apache-2.0
//! A private network for booting a template VM when no slot is given, and reaching a
//! guest from inside a network namespace.
//!
//! The layout matches a `hearth-net` microVM slot on the guest side (`tap0` at
//! 169.254.0.22/30 with the fixed gateway MAC), so the guest's ARP entry for its
//! gateway, saved in the snapshot, stays valid in every real slot.

use hearth_sys::cmd::{CmdError, execute};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The guest's MAC address in every slot.
pub const GUEST_MAC: &str = "02:fc:00:00:00:01";
/// The gateway (tap) MAC address in every slot.
pub const GATEWAY_MAC: &str = "02:fc:00:00:00:02";
/// The tap's name inside a router namespace.
pub const TAP: &str = "tap0";

/// Setting up or using a private network failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// An `ip` command failed.
    #[error("failed to set up the private template network")]
    Setup(#[source] CmdError),
    /// Entering the namespace failed.
    #[error("failed to enter network namespace {path}")]
    Enter {
        /// The namespace.
        path: PathBuf,
        /// The cause.
        #[source]
        err: std::io::Error,
    },
    /// envd did not answer.
    #[error("envd did not answer at {addr} within {waited_ms} ms")]
    NotReady {
        /// Where it was asked.
        addr: SocketAddr,
        /// How long.
        waited_ms: u64,
    },
}

/// A throwaway router namespace with a tap, deleted on drop.
#[derive(Debug)]
pub struct PrivateNet {
    name: String,
}

impl PrivateNet {
    /// Creates `hearth-mv-<pid>-<n>` with `tap0` (gateway address and MAC) and `lo` up.
    pub fn create() -> Result<Self, NetnsError> {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "hearth-mv-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let ip = |args: &[&str]| {
            execute(Command::new("ip").args(args))
                .map(drop)
                .map_err(NetnsError::Setup)
        };
        ip(&["netns", "add", &name])?;
        let net = Self { name };
        let n = net.name.as_str();
        ip(&["-n", n, "tuntap", "add", TAP, "mode", "tap"])?;
        ip(&["-n", n, "link", "set", TAP, "address", GATEWAY_MAC])?;
        ip(&[
            "-n",
            n,
            "addr",
            "add",
            &format!(
                "{}/{}",
                crate::initramfs::GATEWAY_ADDR,
                crate::initramfs::GUEST_PREFIX
            ),
            "dev",
            TAP,
        ])?;
        ip(&["-n", n, "link", "set", TAP, "up"])?;
        ip(&["-n", n, "link", "set", "lo", "up"])?;
        Ok(net)
    }

    /// The namespace's path (for `nsenter --net=`).
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }
}

impl Drop for PrivateNet {
    fn drop(&mut self) {
        if let Err(err) = execute(Command::new("ip").args(["netns", "delete", &self.name])) {
            tracing::warn!(netns = %self.name, error = %err, "cannot delete private network namespace");
        }
    }
}

/// Runs `f` on a dedicated thread inside `netns` (see [`wait_envd_in`] for why a
/// dedicated thread).
pub async fn run_in<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetnsError> {
    let netns = netns.to_owned();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("hearth-netns".into())
        .spawn(move || {
            let entered = std::fs::File::open(&netns).and_then(|f| {
                nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            });
            let _ = tx.send(entered.map(|()| f()).map_err(|err| NetnsError::Enter {
                path: netns.clone(),
                err,
            }));
        })
        .map_err(|err| NetnsError::Enter {
            path: PathBuf::new(),
            err,
        })?;
    rx.await.unwrap_or_else(|_| {
        Err(NetnsError::Enter {
            path: PathBuf::new(),
            err: std::io::Error::other("namespace thread died"),
        })
    })
}

/// Polls envd's `/health` at `addr` from inside `netns` until it answers 204.
///
/// Runs on a dedicated thread: entering a namespace changes the calling thread, which
/// must never be one the async runtime reuses.
pub async fn wait_envd_in(
    netns: &Path,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(), NetnsError> {
    let netns = netns.to_owned();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("hearth-netns-probe".into())
        .spawn(move || {
            let _ = tx.send(probe_thread(&netns, addr, timeout));
        })
        .map_err(|err| NetnsError::Enter {
            path: PathBuf::new(),
            err,
        })?;
    rx.await
        .unwrap_or(Err(NetnsError::NotReady { addr, waited_ms: 0 }))
}

fn probe_thread(netns: &Path, addr: SocketAddr, timeout: Duration) -> Result<(), NetnsError> {
    let enter = |err| NetnsError::Enter {
        path: netns.to_owned(),
        err,
    };
    let f = std::fs::File::open(netns).map_err(enter)?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| enter(std::io::Error::from(e)))?;
    let start = Instant::now();
    while start.elapsed() < timeout {
        if health_once(addr) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Err(NetnsError::NotReady {
        addr,
        waited_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

fn health_once(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"GET /health HTTP/1.1\r\nHost: envd\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"HTTP/1.1 204"))
}
