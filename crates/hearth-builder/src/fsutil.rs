// SPDX-License-Identifier: Apache-2.0
//! Removing half-built root filesystems without ever reaching outside them.
//!
//! A build that died may have left mounts (`/proc`, `/dev` bind mounts) inside its
//! staging tree. A plain recursive delete would then descend into the host's `/dev`
//! or `/proc`. [`remove_tree`] first detaches every mount below the tree and then
//! deletes only entries on the tree's own filesystem, refusing anything else.

use nix::mount::{MntFlags, umount2};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Removing a directory tree failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoveTreeError {
    /// `/proc/thread-self/mountinfo` could not be read.
    #[error("failed to read /proc/thread-self/mountinfo")]
    ReadMounts(#[source] io::Error),
    /// A mount below the tree could not be detached.
    #[error("failed to unmount {path}")]
    Unmount {
        /// The mount point.
        path: PathBuf,
        /// Why umount2 failed.
        #[source]
        err: nix::Error,
    },
    /// The tree still contains a directory from another filesystem.
    #[error("refusing to remove {path}: it is on another filesystem than {root}")]
    ForeignFilesystem {
        /// The directory that is on another filesystem.
        path: PathBuf,
        /// The tree being removed.
        root: PathBuf,
    },
    /// An entry could not be inspected or removed.
    #[error("failed to remove {path}")]
    Remove {
        /// The entry.
        path: PathBuf,
        /// The I/O error.
        #[source]
        err: io::Error,
    },
}

/// Decodes the octal escapes (`\040` for a space, …) the kernel uses in mountinfo.
fn unescape_mount_path(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(value) = u8::from_str_radix(digits, 8) {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points at or below `root`, deepest first, parsed from mountinfo text.
fn mounts_below(mountinfo: &str, root: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|raw| PathBuf::from(unescape_mount_path(raw)))
        .filter(|mount| mount.starts_with(root))
        .collect();
    // Stacked mounts on one point appear once each and need one umount each.
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

/// Detaches every mount at or below `root`.
pub fn unmount_below(root: &Path) -> Result<(), RemoveTreeError> {
    let mountinfo =
        fs::read_to_string("/proc/thread-self/mountinfo").map_err(RemoveTreeError::ReadMounts)?;
    for mount in mounts_below(&mountinfo, root) {
        match umount2(&mount, MntFlags::MNT_DETACH) {
            // Already gone (a parent's lazy detach took it along).
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(err) => return Err(RemoveTreeError::Unmount { path: mount, err }),
        }
    }
    Ok(())
}

/// Removes `root` and everything below it, staying on `root`'s filesystem.
///
/// A missing `root` is not an error.
pub fn remove_tree(root: &Path) -> Result<(), RemoveTreeError> {
    let meta = match fs::symlink_metadata(root) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => {
            return Err(RemoveTreeError::Remove {
                path: root.to_owned(),
                err,
            });
        }
    };
    if !meta.is_dir() {
        return fs::remove_file(root).map_err(|err| RemoveTreeError::Remove {
            path: root.to_owned(),
            err,
        });
    }
    unmount_below(root)?;
    remove_on_device(root, root, meta.dev())
}

fn remove_on_device(path: &Path, root: &Path, dev: u64) -> Result<(), RemoveTreeError> {
    let io_err = |err| RemoveTreeError::Remove {
        path: path.to_owned(),
        err,
    };
    let meta = fs::symlink_metadata(path).map_err(io_err)?;
    if !meta.is_dir() {
        return fs::remove_file(path).map_err(io_err);
    }
    if meta.dev() != dev {
        return Err(RemoveTreeError::ForeignFilesystem {
            path: path.to_owned(),
            root: root.to_owned(),
        });
    }
    for entry in fs::read_dir(path).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        remove_on_device(&entry.path(), root, dev)?;
    }
    fs::remove_dir(path).map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mount_path(r"/a\040b"), "/a b");
        assert_eq!(unescape_mount_path(r"/tab\011x\134"), "/tab\tx\\");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
    }

    #[test]
    fn mounts_below_are_listed_deepest_first() {
        let info = "\
22 1 8:1 / / rw - ext4 /dev/vda rw
30 22 0:5 / /x/.tmp-a/rootfs/proc rw - proc proc rw
31 22 0:6 / /x/.tmp-a/rootfs/dev rw - devtmpfs udev rw
32 31 0:7 / /x/.tmp-a/rootfs/dev/pts rw - devpts devpts rw
33 22 0:8 / /x/.tmp-ab rw - tmpfs tmpfs rw
";
        let found = mounts_below(info, Path::new("/x/.tmp-a"));
        assert_eq!(found[0], PathBuf::from("/x/.tmp-a/rootfs/dev/pts"));
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(!found.contains(&PathBuf::from("/x/.tmp-ab")));
    }

    #[test]
    fn remove_tree_deletes_nested_entries_and_symlinks_without_following() {
        let outside = tempfile::tempdir().unwrap();
        let keep = outside.path().join("keep");
        fs::write(&keep, "x").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        fs::create_dir_all(root.join("a/b/c")).unwrap();
        fs::write(root.join("a/b/c/f"), "data").unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("a/link")).unwrap();
        remove_tree(&root).unwrap();
        assert!(!root.exists());
        assert!(
            keep.exists(),
            "a symlink target outside the tree was touched"
        );
    }

    #[test]
    fn remove_tree_detaches_mounts_left_inside_instead_of_deleting_through_them() {
        use nix::mount::{MsFlags, mount};
        use nix::sched::{CloneFlags, unshare};
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: needs root to mount");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        let inner = root.join("rootfs/proc");
        fs::create_dir_all(&inner).unwrap();
        let root_for_thread = root.clone();
        // A private mount namespace for this thread only: nothing can leak to the host
        // even if an assertion fails half-way.
        std::thread::spawn(move || {
            unshare(CloneFlags::CLONE_NEWNS).unwrap();
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .unwrap();
            mount(
                Some("tmpfs"),
                &inner,
                Some("tmpfs"),
                MsFlags::empty(),
                None::<&str>,
            )
            .unwrap();
            fs::write(inner.join("on-the-mount"), "x").unwrap();
            remove_tree(&root_for_thread).unwrap();
            assert!(!root_for_thread.exists());
            let mountinfo = fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
            assert!(mounts_below(&mountinfo, &root_for_thread).is_empty());
        })
        .join()
        .unwrap();
        assert!(!root.exists());
    }

    #[test]
    fn remove_tree_of_missing_path_is_ok() {
        let dir = tempfile::tempdir().unwrap();
        remove_tree(&dir.path().join("nope")).unwrap();
    }
}
