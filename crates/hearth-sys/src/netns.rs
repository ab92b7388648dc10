// SPDX-License-Identifier: Apache-2.0
//! Named network namespaces, pinned by a bind mount the way `ip netns` pins them.
//!
//! A namespace is created by a short-lived thread that calls `unshare(CLONE_NEWNET)` and
//! bind-mounts its own `/proc/thread-self/ns/net` onto `<dir>/<name>`; work that must
//! happen *inside* a namespace (sysctls under `/proc/sys/net`, opening netlink sockets,
//! creating tap devices, spawning `nft`) runs on such a thread too, so the calling
//! thread never changes namespace. Sockets opened inside stay bound to that namespace
//! after the thread ends.

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::stat::Mode;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Where `ip netns` keeps its namespaces; namespaces pinned here show up in `ip netns list`.
pub const RUN_DIR: &str = "/run/netns";

/// A failed namespace operation.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The directory holding pinned namespaces could not be prepared.
    #[error("failed to prepare netns directory {dir}")]
    PrepareDir {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        err: io::Error,
    },
    /// The pin file could not be created (it may already exist).
    #[error("failed to create netns pin file {path}")]
    CreatePin {
        /// The pin path.
        path: PathBuf,
        /// The cause.
        #[source]
        err: io::Error,
    },
    /// `unshare(CLONE_NEWNET)` failed.
    #[error("failed to unshare a new network namespace")]
    Unshare {
        /// The cause.
        #[source]
        err: io::Error,
    },
    /// The new namespace could not be bind-mounted onto its pin file.
    #[error("failed to pin network namespace at {path}")]
    Pin {
        /// The pin path.
        path: PathBuf,
        /// The cause.
        #[source]
        err: io::Error,
    },
    /// A pinned namespace could not be opened.
    #[error("failed to open network namespace {path}")]
    Open {
        /// The pin path.
        path: PathBuf,
        /// The cause.
        #[source]
        err: io::Error,
    },
    /// `setns` into a pinned namespace failed.
    #[error("failed to enter network namespace {path}")]
    Enter {
        /// The pin path.
        path: PathBuf,
        /// The cause.
        #[source]
        err: io::Error,
    },
    /// The pin could not be unmounted or removed.
    #[error("failed to remove network namespace pin {path}")]
    Remove {
        /// The pin path.
        path: PathBuf,
        /// The cause.
        #[source]
        err: io::Error,
    },
    /// The helper thread could not be started.
    #[error("failed to spawn a namespace thread")]
    Thread {
        /// The cause.
        #[source]
        err: io::Error,
    },
}

/// Makes `dir` exist and be a shared mount point, as `ip netns add` does, so pins made
/// here propagate to (and are removed from) mount namespaces created later.
pub fn prepare_dir(dir: &Path) -> Result<(), NetnsError> {
    let fail = |err: io::Error| NetnsError::PrepareDir {
        dir: dir.to_owned(),
        err,
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
    match mount(None::<&str>, dir, None::<&str>, shared, None::<&str>) {
        Ok(()) => return Ok(()),
        // EINVAL: `dir` is not a mount point yet; bind it onto itself first.
        Err(Errno::EINVAL) => {}
        Err(e) => return Err(fail(e.into())),
    }
    mount(
        Some(dir),
        dir,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| fail(e.into()))?;
    mount(None::<&str>, dir, None::<&str>, shared, None::<&str>).map_err(|e| fail(e.into()))
}

/// Creates a network namespace pinned at `path`, then runs `setup` inside it on a
/// dedicated thread and returns its result.
///
/// On an error before `setup` runs nothing is left behind. If `setup` itself reports a
/// failure through `R`, the namespace stays pinned and the caller removes it.
pub fn create<R, F>(path: &Path, setup: F) -> Result<R, NetnsError>
where
    R: Send,
    F: FnOnce() -> R + Send,
{
    // O_EXCL: two creators of the same name must not silently share one namespace.
    let pin = open(
        path,
        OFlag::O_RDONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| NetnsError::CreatePin {
        path: path.to_owned(),
        err: e.into(),
    })?;
    drop(pin);
    let outcome = on_thread(|| {
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| NetnsError::Unshare { err: e.into() })?;
        mount(
            Some("/proc/thread-self/ns/net"),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| NetnsError::Pin {
            path: path.to_owned(),
            err: e.into(),
        })?;
        Ok(setup())
    })
    .and_then(|r| r);
    if outcome.is_err() {
        // Not pinned (or the thread never ran): only the empty file is ours to remove.
        let _ = std::fs::remove_file(path);
    }
    outcome
}

/// Runs `f` on a dedicated thread that has joined the network namespace pinned at `path`.
pub fn enter<R, F>(path: &Path, f: F) -> Result<R, NetnsError>
where
    R: Send,
    F: FnOnce() -> R + Send,
{
    let ns = File::open(path).map_err(|err| NetnsError::Open {
        path: path.to_owned(),
        err,
    })?;
    on_thread(|| {
        setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| NetnsError::Enter {
            path: path.to_owned(),
            err: e.into(),
        })?;
        Ok(f())
    })
    .and_then(|r| r)
}

/// Unpins the namespace at `path` (lazy unmount, then unlink). A missing pin is not an
/// error, so removal is idempotent. The kernel frees the namespace once nothing else
/// (a process, an open fd, a socket) holds it.
pub fn remove(path: &Path) -> Result<(), NetnsError> {
    let fail = |err: io::Error| NetnsError::Remove {
        path: path.to_owned(),
        err,
    };
    match umount2(path, MntFlags::MNT_DETACH) {
        // EINVAL: not a mount point (a half-created pin); ENOENT: already gone.
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(fail(e.into())),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(fail(e)),
    }
}

/// Runs `f` on a fresh scoped thread, so namespace changes die with the thread.
fn on_thread<R, F>(f: F) -> Result<R, NetnsError>
where
    R: Send,
    F: FnOnce() -> R + Send,
{
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("hearth-netns".into())
            .spawn_scoped(s, f)
            .map_err(|err| NetnsError::Thread { err })?;
        match handle.join() {
            Ok(r) => Ok(r),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn create_enter_remove_round_trip() {
        if !is_root() {
            eprintln!("skipping: needs root");
            return;
        }
        let dir = Path::new(RUN_DIR);
        prepare_dir(dir).unwrap();
        let path = dir.join(format!("hearth-sys-test-{}", std::process::id()));
        let outer = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        let inner = create(&path, || {
            std::fs::read_link("/proc/thread-self/ns/net").unwrap()
        })
        .unwrap();
        assert_ne!(outer, inner, "setup must run inside the new namespace");
        let again = enter(&path, || {
            std::fs::read_link("/proc/thread-self/ns/net").unwrap()
        })
        .unwrap();
        assert_eq!(inner, again);
        assert_eq!(
            outer,
            std::fs::read_link("/proc/thread-self/ns/net").unwrap()
        );
        remove(&path).unwrap();
        assert!(!path.exists());
        remove(&path).unwrap();
    }

    #[test]
    fn create_of_existing_name_is_refused() {
        if !is_root() {
            eprintln!("skipping: needs root");
            return;
        }
        let dir = Path::new(RUN_DIR);
        prepare_dir(dir).unwrap();
        let path = dir.join(format!("hearth-sys-dup-{}", std::process::id()));
        create(&path, || ()).unwrap();
        let err = create(&path, || ()).unwrap_err();
        assert!(matches!(err, NetnsError::CreatePin { .. }), "{err}");
        remove(&path).unwrap();
    }

    #[test]
    fn enter_of_missing_namespace_is_open_error() {
        let err = enter(Path::new("/nonexistent/netns"), || ()).unwrap_err();
        assert!(matches!(err, NetnsError::Open { .. }));
    }
}
