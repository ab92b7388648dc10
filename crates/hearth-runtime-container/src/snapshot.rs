// SPDX-License-Identifier: Apache-2.0
//! Filesystem snapshots of a running container: its writable layer, frozen for an
//! instant, copied into a directory that new sandboxes can use as a lower layer.
//!
//! 1. Freeze the sandbox (unless already frozen) so no write is half-done, and flush
//!    the layer to disk (`syncfs`).
//! 2. Copy the state directory: one `BTRFS_IOC_SNAP_CREATE` when it is a subvolume
//!    (copy-on-write, constant time), else `cp -a --reflink=auto` of `upper/`.
//! 3. Thaw.
//! 4. Shift ownership back from the sandbox's host uid range to 0-based ids: a lower
//!    layer is presented through an idmapped mount with another sandbox's range, so it
//!    must be owned like the template's layers (by host root's ids).
//!
//! The copy keeps overlayfs's own markers (whiteouts, opaque directories), which
//! overlayfs honours in lower layers, so deletions made in the sandbox stay deleted.

use crate::container::Container;
use crate::{ContainerError, IdRange};
use hearth_sys::btrfs;
use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A snapshot step that failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The destination exists already.
    #[error("snapshot destination {0} exists")]
    Exists(PathBuf),
    /// Reading or changing a file failed.
    #[error("snapshot: failed to {op} {path}")]
    Io {
        /// What was done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why.
        #[source]
        err: io::Error,
    },
    /// Copying with `cp` failed.
    #[error("snapshot copy failed")]
    Copy(#[source] hearth_sys::cmd::CmdError),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SnapshotError + 'a {
    move |err| SnapshotError::Io {
        op,
        path: path.to_owned(),
        err,
    }
}

fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map(OwnedFd::from)
}

/// Snapshots `container`'s writable layer into `dest` (created here); the layer is
/// `dest/upper`. The container is running again when this returns (or stays frozen
/// if it was frozen before).
pub fn snapshot(container: &mut Container, dest: &Path) -> Result<PathBuf, ContainerError> {
    if dest.exists() {
        return Err(SnapshotError::Exists(dest.to_owned()).into());
    }
    let state = container.persisted().clone();
    let was_frozen = container.is_frozen()?;
    if !was_frozen {
        container.freeze()?;
    }
    let copied = copy_state(&state.state_dir, dest);
    if !was_frozen {
        container.thaw()?;
    }
    copied?;
    let upper = dest.join("upper");
    shift_to_zero(&upper, state.id_range).inspect_err(|_| {
        let _ = crate::remove_state_dir(dest);
    })?;
    Ok(upper)
}

fn copy_state(state_dir: &Path, dest: &Path) -> Result<(), SnapshotError> {
    let upper = state_dir.join("upper");
    let fd = open_dir(state_dir).map_err(io_err("open", state_dir))?;
    nix::unistd::syncfs(fd.as_fd()).map_err(|e| SnapshotError::Io {
        op: "sync",
        path: state_dir.to_owned(),
        err: e.into(),
    })?;
    let parent = dest.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(parent).map_err(io_err("create", parent))?;
    let subvolume = btrfs::is_subvolume(fd.as_fd()).map_err(io_err("inspect", state_dir))?;
    let pfd = open_dir(parent).map_err(io_err("open", parent))?;
    let same_fs = btrfs::is_btrfs(pfd.as_fd()).unwrap_or(false)
        && fs::metadata(parent).map(|m| m.dev()).ok()
            == fs::metadata(state_dir).map(|m| m.dev()).ok();
    if subvolume && same_fs {
        let name = dest
            .file_name()
            .ok_or_else(|| SnapshotError::Exists(dest.to_owned()))?;
        btrfs::snapshot_subvolume(fd.as_fd(), pfd.as_fd(), name)
            .map_err(io_err("snapshot", dest))?;
        // Only the writable layer is a layer; the rest is the source's bookkeeping.
        for extra in ["work", "rootfs", "envd.log"] {
            let p = dest.join(extra);
            match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => {
                    // overlayfs leaves work/work with mode 000; make it removable.
                    let _ = Command::new("chmod")
                        .arg("-R")
                        .arg("u+rwx")
                        .arg(&p)
                        .status();
                    fs::remove_dir_all(&p).map_err(io_err("remove", &p))?;
                }
                Ok(_) => fs::remove_file(&p).map_err(io_err("remove", &p))?,
                Err(_) => {}
            }
        }
        return Ok(());
    }
    fs::create_dir(dest).map_err(io_err("create", dest))?;
    hearth_sys::cmd::execute(
        Command::new("cp")
            .args(["-a", "--reflink=auto", "--no-target-directory"])
            .arg(&upper)
            .arg(dest.join("upper")),
    )
    .map(|_| ())
    .map_err(SnapshotError::Copy)
}

/// Changes every owner in `root` from the sandbox's host range back to 0-based ids.
fn shift_to_zero(root: &Path, range: IdRange) -> Result<(), SnapshotError> {
    let start = range.host_start();
    let shift = |id: u32| -> u32 {
        if id >= start && id - start < 65536 {
            id - start
        } else {
            id
        }
    };
    let mut stack = vec![root.to_owned()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path).map_err(io_err("stat", &path))?;
        let (uid, gid) = (shift(meta.uid()), shift(meta.gid()));
        if (uid, gid) != (meta.uid(), meta.gid()) {
            // lchown clears setuid/setgid bits on regular files; restore the mode.
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid))
                .map_err(io_err("chown", &path))?;
            if meta.is_file() && meta.mode() & 0o6000 != 0 {
                fs::set_permissions(
                    &path,
                    std::os::unix::fs::PermissionsExt::from_mode(meta.mode() & 0o7777),
                )
                .map_err(io_err("chmod", &path))?;
            }
        }
        if meta.is_dir() {
            for entry in fs::read_dir(&path).map_err(io_err("list", &path))? {
                stack.push(entry.map_err(io_err("list", &path))?.path());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_shifts_back_to_zero_based_ids() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("upper");
        fs::create_dir_all(root.join("home/user")).unwrap();
        fs::write(root.join("home/user/f"), b"x").unwrap();
        std::os::unix::fs::symlink("f", root.join("home/user/l")).unwrap();
        let range = IdRange::new(17 * 65536).unwrap();
        for p in ["", "home", "home/user", "home/user/l"] {
            std::os::unix::fs::lchown(root.join(p), Some(17 * 65536), Some(17 * 65536)).unwrap();
        }
        std::os::unix::fs::lchown(
            root.join("home/user/f"),
            Some(17 * 65536 + 1000),
            Some(17 * 65536 + 1000),
        )
        .unwrap();
        shift_to_zero(&root, range).unwrap();
        assert_eq!(fs::metadata(root.join("home/user/f")).unwrap().uid(), 1000);
        assert_eq!(
            fs::symlink_metadata(root.join("home/user/l"))
                .unwrap()
                .uid(),
            0
        );
        assert_eq!(fs::metadata(&root).unwrap().gid(), 0);
    }
}
