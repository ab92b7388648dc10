// SPDX-License-Identifier: Apache-2.0
//! The data volume that holds sandboxes' writable layers, and their disk limits.
//!
//! A disk-limited sandbox's state directory is a btrfs subvolume whose qgroup has a
//! referenced-bytes limit: everything in it (the overlay's `upper/` and `work/`,
//! copy-ups included) counts, and writes past the limit fail with `EDQUOT`.
//! Creating and destroying a subvolume is one ioctl each; destruction of the data
//! continues in the background.
//!
//! Why not XFS or ext4 project quotas: this kernel has neither XFS quota support
//! (`CONFIG_XFS_QUOTA`) nor the quota format ext4 needs (`CONFIG_QFMT_V2`), and a
//! VFS quota would not bind the sandbox anyway: overlayfs writes the upper layer
//! with the credentials of whoever mounted it (host root), and `CAP_SYS_RESOURCE`
//! exempts a writer from VFS hard limits. btrfs qgroups exempt nobody.
//!
//! [`ensure_data_volume`] provides the btrfs filesystem: the directory itself if it
//! is a btrfs mount, otherwise a sparse image file loop-mounted on it.

use hearth_sys::btrfs;
use hearth_sys::cmd::{self, CmdError};
use std::fs;
use std::io::{self, Read, Seek};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A data volume or disk-limit operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A file or directory operation failed.
    #[error("failed to prepare {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        err: io::Error,
    },
    /// Something other than btrfs is mounted there.
    #[error("{path} is a mount of {fstype}, not btrfs")]
    NotBtrfs {
        /// The mount point.
        path: PathBuf,
        /// Its filesystem type.
        fstype: String,
    },
    /// A disk limit was asked for a state directory that cannot carry one.
    #[error("state directory {path} is not on a btrfs data volume (see ensure_data_volume)")]
    Unsupported {
        /// The state directory.
        path: PathBuf,
    },
    /// mkfs.btrfs or mount failed.
    #[error("failed to set up the data volume")]
    Tool(#[source] CmdError),
    /// A subvolume or qgroup operation failed.
    #[error("failed to {op} for {path}")]
    Btrfs {
        /// What was attempted.
        op: &'static str,
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        err: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> VolumeError + '_ {
    move |err| VolumeError::Io {
        path: path.to_owned(),
        err,
    }
}

fn btrfs_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> VolumeError + 'a {
    move |err| VolumeError::Btrfs {
        op,
        path: path.to_owned(),
        err,
    }
}

/// The filesystem type mounted exactly at `path`, if anything is.
fn mounted_at(path: &Path) -> io::Result<Option<String>> {
    let text = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?.replace("\\040", " ");
            let fstype = right.split(' ').next()?;
            (Path::new(&mount_point) == path).then(|| fstype.to_owned())
        })
        .next_back())
}

fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map(OwnedFd::from)
}

/// Whether `path` is on btrfs with quota groups enabled.
pub fn supports_disk_limits(path: &Path) -> Result<bool, VolumeError> {
    let fd = open_dir(path).map_err(io_err(path))?;
    if !btrfs::is_btrfs(fd.as_fd()).map_err(io_err(path))? {
        return Ok(false);
    }
    let uuid =
        btrfs::filesystem_uuid(fd.as_fd()).map_err(btrfs_err("read the filesystem uuid", path))?;
    let enabled = fs::read_to_string(format!("/sys/fs/btrfs/{uuid}/qgroups/enabled"))
        .map(|s| s.trim() == "1")
        .unwrap_or(false);
    Ok(enabled)
}

/// A btrfs filesystem with quota groups, ready for sandbox state directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataVolume {
    mount_point: PathBuf,
    image: Option<PathBuf>,
}

impl DataVolume {
    /// Where the volume is mounted.
    pub fn mount_point(&self) -> &Path {
        &self.mount_point
    }

    /// The image file behind it, if it is loop-mounted from one.
    pub fn image(&self) -> Option<&Path> {
        self.image.as_deref()
    }

    /// Unmounts a loop-mounted volume (the loop device frees itself); the image file
    /// stays for the next [`ensure_data_volume`].
    ///
    /// `EBUSY` is retried for a moment: a process being spawned elsewhere in this
    /// program holds a copy of every open fd (ours on the volume included) until it
    /// execs, a few milliseconds.
    pub fn unmount(&self) -> Result<(), VolumeError> {
        if self.image.is_none() {
            return Ok(());
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            match nix::mount::umount2(&self.mount_point, nix::mount::MntFlags::empty()) {
                Ok(()) => return Ok(()),
                Err(nix::errno::Errno::EBUSY) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => return Err(io_err(&self.mount_point)(e.into())),
            }
        }
    }
}

/// Makes sure `mount_point` is a btrfs filesystem with quota groups. Idempotent and
/// cheap when already true; survives restarts of Hearth (the mount stays) and of the
/// host (the image is mounted again).
///
/// If a btrfs filesystem is mounted at `mount_point`, quotas are enabled on it.
/// Otherwise `image` (a sparse file of `size_bytes`, at least 128 MiB) is created
/// and formatted unless it already holds btrfs, then loop-mounted there. Another
/// filesystem mounted at `mount_point` is an error.
pub fn ensure_data_volume(
    mount_point: &Path,
    image: &Path,
    size_bytes: u64,
) -> Result<DataVolume, VolumeError> {
    fs::create_dir_all(mount_point).map_err(io_err(mount_point))?;
    let mounted = mounted_at(mount_point).map_err(io_err(Path::new("/proc/self/mountinfo")))?;
    let from_image = match mounted.as_deref() {
        Some("btrfs") => image.exists(),
        Some(other) => {
            return Err(VolumeError::NotBtrfs {
                path: mount_point.to_owned(),
                fstype: other.to_owned(),
            });
        }
        None => {
            if let Some(dir) = image.parent() {
                fs::create_dir_all(dir).map_err(io_err(dir))?;
            }
            if !holds_btrfs(image).map_err(io_err(image))? {
                let f = fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o600)
                    .open(image)
                    .map_err(io_err(image))?;
                f.set_len(size_bytes).map_err(io_err(image))?;
                drop(f);
                cmd::execute(Command::new("mkfs.btrfs").arg("-q").arg("-f").arg(image))
                    .map_err(VolumeError::Tool)?;
            }
            cmd::execute(
                Command::new("mount")
                    .args(["-t", "btrfs", "-o", "loop,noatime"])
                    .arg(image)
                    .arg(mount_point),
            )
            .map_err(VolumeError::Tool)?;
            true
        }
    };
    let fd = open_dir(mount_point).map_err(io_err(mount_point))?;
    btrfs::enable_quota(fd.as_fd()).map_err(btrfs_err("enable quota groups", mount_point))?;
    Ok(DataVolume {
        mount_point: mount_point.to_owned(),
        image: from_image.then(|| image.to_owned()),
    })
}

/// Whether `image` exists and holds a btrfs superblock (magic at 64 KiB + 64).
fn holds_btrfs(image: &Path) -> io::Result<bool> {
    let mut f = match fs::File::open(image) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut magic = [0u8; 8];
    f.seek(io::SeekFrom::Start(0x1_0040))?;
    match f.read_exact(&mut magic) {
        Ok(()) => Ok(&magic == b"_BHRfS_M"),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Creates `state_dir` as a subvolume (or reuses one) and limits it to `bytes`.
pub(crate) fn create_limited(state_dir: &Path, bytes: u64) -> Result<(), VolumeError> {
    let (Some(parent), Some(name)) = (state_dir.parent(), state_dir.file_name()) else {
        return Err(VolumeError::Unsupported {
            path: state_dir.to_owned(),
        });
    };
    fs::create_dir_all(parent).map_err(io_err(parent))?;
    match open_dir(state_dir) {
        Ok(fd) => {
            if !btrfs::is_subvolume(fd.as_fd()).map_err(io_err(state_dir))? {
                return Err(VolumeError::Unsupported {
                    path: state_dir.to_owned(),
                });
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let pfd = open_dir(parent).map_err(io_err(parent))?;
            if !btrfs::is_btrfs(pfd.as_fd()).map_err(io_err(parent))? {
                return Err(VolumeError::Unsupported {
                    path: state_dir.to_owned(),
                });
            }
            btrfs::create_subvolume(pfd.as_fd(), name)
                .map_err(btrfs_err("create a subvolume", state_dir))?;
        }
        Err(e) => return Err(io_err(state_dir)(e)),
    }
    let fd = open_dir(state_dir).map_err(io_err(state_dir))?;
    btrfs::set_referenced_limit(fd.as_fd(), bytes).map_err(|err| {
        // ENOENT/EINVAL here means quota groups are off on this filesystem.
        VolumeError::Btrfs {
            op: "limit the subvolume's qgroup",
            path: state_dir.to_owned(),
            err,
        }
    })
}

/// Bytes referenced by the subvolume `state_dir` and its limit.
pub(crate) fn usage(state_dir: &Path) -> Result<(u64, u64), VolumeError> {
    let fd = open_dir(state_dir).map_err(io_err(state_dir))?;
    let uuid = btrfs::filesystem_uuid(fd.as_fd())
        .map_err(btrfs_err("read the filesystem uuid", state_dir))?;
    let id =
        btrfs::subvolume_id(fd.as_fd()).map_err(btrfs_err("read the subvolume id", state_dir))?;
    btrfs::referenced(&uuid, id).map_err(btrfs_err("read the qgroup usage", state_dir))
}

/// Removes a state directory: one ioctl for a subvolume, a recursive delete
/// otherwise. A missing directory is fine.
pub(crate) fn remove_dir(state_dir: &Path) -> Result<(), VolumeError> {
    let fd = match open_dir(state_dir) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(state_dir)(e)),
    };
    let subvolume = btrfs::is_subvolume(fd.as_fd()).map_err(io_err(state_dir))?;
    drop(fd);
    match (subvolume, state_dir.parent(), state_dir.file_name()) {
        (true, Some(parent), Some(name)) => {
            let pfd = open_dir(parent).map_err(io_err(parent))?;
            btrfs::destroy_subvolume(pfd.as_fd(), name)
                .map_err(btrfs_err("destroy the subvolume", state_dir))
        }
        _ => match fs::remove_dir_all(state_dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(state_dir)(e)),
            _ => Ok(()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_image_holds_no_btrfs() {
        assert!(!holds_btrfs(Path::new("/nonexistent/image")).unwrap());
    }

    #[test]
    fn plain_directory_does_not_support_limits() {
        assert!(!supports_disk_limits(Path::new("/proc")).unwrap());
    }

    #[test]
    fn nothing_is_mounted_on_a_fresh_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(mounted_at(dir.path()).unwrap(), None);
    }
}
