// SPDX-License-Identifier: Apache-2.0
//! The sandbox's root filesystem: an overlay of idmapped read-only layers under a
//! per-sandbox writable layer, built as a detached mount.
//!
//! 1. `upper/` and `work/` are created in the state directory and owned by the
//!    sandbox's root (host uid `host_start`); `/etc/hosts`, `/etc/hostname` and
//!    `/etc/resolv.conf` are written into `upper/` so the layers stay untouched.
//! 2. Each layer is cloned (open_tree) and idmapped through the sandbox's user
//!    namespace, so files owned by host root appear owned by the sandbox's root.
//! 3. overlayfs takes the layers and upper/work as file descriptors (fsconfig
//!    `lowerdir+`, kernel >= 6.13) and becomes a detached mount fd.
//!
//! The fd is handed to the sandbox's init, which attaches it in its own mount
//! namespace. The overlay is therefore never visible on the host, and it vanishes
//! with the sandbox's last process, even if the server crashes meanwhile.

use crate::spec::ContainerSpec;
use hearth_sys::mount::{self, FsContext, MountAttrFlags};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A root filesystem step that failed.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A state directory or file could not be created or owned.
    #[error("failed to prepare {path}")]
    Prepare {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        err: io::Error,
    },
    /// A layer could not be cloned or idmapped.
    #[error("failed to prepare layer {layer} as an idmapped mount")]
    Layer {
        /// The layer.
        layer: PathBuf,
        /// Why.
        #[source]
        err: io::Error,
    },
    /// overlayfs refused the configuration.
    #[error("failed to assemble the overlay ({stage})")]
    Overlay {
        /// Which fsconfig/fsmount stage.
        stage: &'static str,
        /// Why.
        #[source]
        err: io::Error,
    },
    /// The read-only sysfs view could not be made.
    #[error("failed to prepare the read-only /sys")]
    Sysfs(#[source] io::Error),
}

/// The paths inside a sandbox's state directory.
#[derive(Debug, Clone)]
pub(crate) struct StatePaths {
    pub(crate) upper: PathBuf,
    pub(crate) work: PathBuf,
    pub(crate) rootfs: PathBuf,
}

impl StatePaths {
    pub(crate) fn new(state_dir: &Path) -> Self {
        Self {
            upper: state_dir.join("upper"),
            work: state_dir.join("work"),
            rootfs: state_dir.join("rootfs"),
        }
    }
}

fn prepare_err(path: &Path) -> impl FnOnce(io::Error) -> RootfsError + '_ {
    move |err| RootfsError::Prepare {
        path: path.to_owned(),
        err,
    }
}

/// Creates `dir` (if missing) with `mode`, owned by host `owner` (uid and gid).
fn owned_dir(dir: &Path, mode: u32, owner: Option<u32>) -> Result<(), RootfsError> {
    match fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(prepare_err(dir)(e)),
    }
    if let Some(id) = owner {
        std::os::unix::fs::lchown(dir, Some(id), Some(id)).map_err(prepare_err(dir))?;
    }
    Ok(())
}

/// Creates the state directory layout (step 1 of the module docs).
pub(crate) fn prepare_state(spec: &ContainerSpec) -> Result<StatePaths, RootfsError> {
    let paths = StatePaths::new(&spec.state_dir);
    fs::create_dir_all(&spec.state_dir).map_err(prepare_err(&spec.state_dir))?;
    let root = spec.id_range.host_start();
    // The upper directory's attributes become those of the sandbox's "/".
    owned_dir(&paths.upper, 0o755, Some(root))?;
    owned_dir(&paths.work, 0o700, Some(root))?;
    owned_dir(&paths.rootfs, 0o700, None)?;
    write_etc(spec, &paths.upper)?;
    Ok(paths)
}

/// The mode of `/etc` in the upper-most layer that has it.
fn etc_mode(layers: &[PathBuf]) -> u32 {
    layers
        .iter()
        .find_map(|l| fs::metadata(l.join("etc")).ok())
        .map_or(0o755, |m| m.mode() & 0o7777)
}

/// Writes the files that name the sandbox into the writable layer.
///
/// `upper` may hold what an earlier run of the sandbox left (a resumed writable
/// layer), so nothing below it is trusted: every step is relative to a directory
/// fd and never follows a symlink, and an `etc` or file entry of the wrong type is
/// replaced. Otherwise a sandbox could plant `etc -> /etc` and have the host's own
/// files overwritten here.
fn write_etc(spec: &ContainerSpec, upper: &Path) -> Result<(), RootfsError> {
    let root = spec.id_range.host_start();
    let upper_fd = open_dir_nofollow(None, upper).map_err(prepare_err(upper))?;
    let etc = upper.join("etc");
    let etc_fd = owned_subdir(upper_fd.as_fd(), "etc", etc_mode(&spec.layers), root)
        .map_err(prepare_err(&etc))?;

    let name = &spec.hostname;
    let mut hosts =
        format!("127.0.0.1\tlocalhost {name}\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if let Some(addr) = spec.address {
        let _ = writeln!(hosts, "{addr}\t{name}");
    }
    let mut files = vec![("hosts", hosts), ("hostname", format!("{name}\n"))];
    if !spec.nameservers.is_empty() {
        let mut resolv = String::new();
        for ns in &spec.nameservers {
            let _ = writeln!(resolv, "nameserver {ns}");
        }
        files.push(("resolv.conf", resolv));
    }
    for (file, contents) in files {
        write_owned(etc_fd.as_fd(), file, contents.as_bytes(), root)
            .map_err(prepare_err(&etc.join(file)))?;
    }
    Ok(())
}

/// Opens directory `name` (relative to `dir`, or absolute) without following a
/// symlink in its last component.
fn open_dir_nofollow(dir: Option<BorrowedFd<'_>>, name: &Path) -> io::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = match dir {
        Some(dir) => nix::fcntl::openat(dir, name, flags, Mode::empty()),
        None => nix::fcntl::open(name, flags, Mode::empty()),
    };
    fd.map_err(io::Error::from)
}

/// Opens (creating if missing, replacing if not a directory) the subdirectory
/// `name` of `dir`, owned by host `owner`.
fn owned_subdir(dir: BorrowedFd<'_>, name: &str, mode: u32, owner: u32) -> io::Result<OwnedFd> {
    match nix::sys::stat::mkdirat(dir, name, Mode::from_bits_truncate(mode)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(e.into()),
    }
    let fd = match open_dir_nofollow(Some(dir), Path::new(name)) {
        Ok(fd) => fd,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
            nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir)?;
            nix::sys::stat::mkdirat(dir, name, Mode::from_bits_truncate(mode))?;
            open_dir_nofollow(Some(dir), Path::new(name))?
        }
        Err(e) => return Err(e),
    };
    nix::unistd::fchown(&fd, Some(owner.into()), Some(owner.into()))?;
    Ok(fd)
}

/// Writes `contents` to the regular file `name` in `dir`, owned by host `owner`;
/// a symlink, whiteout or other non-regular entry there is replaced.
fn write_owned(dir: BorrowedFd<'_>, name: &str, contents: &[u8], owner: u32) -> io::Result<()> {
    use std::io::Write as _;
    let flags = OFlag::O_WRONLY
        | OFlag::O_CREAT
        | OFlag::O_TRUNC
        | OFlag::O_NOFOLLOW
        | OFlag::O_NONBLOCK
        | OFlag::O_CLOEXEC;
    let mode = Mode::from_bits_truncate(0o644);
    let regular = nix::sys::stat::fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
        .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG);
    match regular {
        Ok(true) | Err(Errno::ENOENT) => {}
        Ok(false) => nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir)?,
        Err(e) => return Err(e.into()),
    }
    let fd = nix::fcntl::openat(dir, name, flags, mode)?;
    let mut file = fs::File::from(fd);
    file.write_all(contents)?;
    nix::unistd::fchown(&file, Some(owner.into()), Some(owner.into()))?;
    Ok(())
}

fn open_dir_path(path: &Path) -> Result<OwnedFd, RootfsError> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(path)
        .map(OwnedFd::from)
        .map_err(prepare_err(path))
}

/// Builds the overlay as a detached mount (steps 2 and 3 of the module docs).
///
/// `userns` must be the sandbox's user namespace (with its id maps written): the
/// layers are idmapped through it.
pub(crate) fn assemble_overlay(
    layers: &[PathBuf],
    paths: &StatePaths,
    userns: BorrowedFd<'_>,
) -> Result<OwnedFd, RootfsError> {
    let overlay = |stage| move |err| RootfsError::Overlay { stage, err };
    let ctx = FsContext::open("overlay").map_err(overlay("fsopen"))?;
    // The detached layer mounts must stay open until the superblock is created:
    // closing the last fd of a detached mount unmounts it, and overlayfs only
    // clones the layers at FSCONFIG_CMD_CREATE.
    let mut trees = Vec::with_capacity(layers.len());
    for layer in layers {
        let layer_err = |err| RootfsError::Layer {
            layer: layer.clone(),
            err,
        };
        let tree = mount::open_tree_clone(layer, false).map_err(layer_err)?;
        mount::mount_setattr(
            tree.as_fd(),
            MountAttrFlags::RDONLY,
            MountAttrFlags::EMPTY,
            Some(userns),
            false,
        )
        .map_err(layer_err)?;
        ctx.set_fd("lowerdir+", tree.as_fd())
            .map_err(overlay("lowerdir+"))?;
        trees.push(tree);
    }
    let upper = open_dir_path(&paths.upper)?;
    let work = open_dir_path(&paths.work)?;
    ctx.set_fd("upperdir", upper.as_fd())
        .map_err(overlay("upperdir"))?;
    ctx.set_fd("workdir", work.as_fd())
        .map_err(overlay("workdir"))?;
    ctx.create().map_err(overlay("create"))?;
    drop(trees);
    // nodev: a device node in a template must not open host devices; the sandbox's
    // /dev is a separate tmpfs. setuid stays on for sudo.
    ctx.mount(MountAttrFlags::NODEV).map_err(overlay("fsmount"))
}

/// A read-only, non-recursive clone of the host's `/sys`.
///
/// A fresh sysfs cannot be mounted inside: sysfs belongs to the network namespace,
/// which the host's user namespace owns. Inside the sandbox a non-recursive bind
/// would be refused (the host's submounts are locked), so the parent clones it.
/// Submounts such as `/sys/fs/cgroup` (which would name other sandboxes) are left
/// out, and the sandbox's root is an unprivileged host uid, so root-only files
/// stay unreadable.
pub(crate) fn sysfs_view() -> Result<OwnedFd, RootfsError> {
    let tree = mount::open_tree_clone(Path::new("/sys"), false).map_err(RootfsError::Sysfs)?;
    mount::mount_setattr(
        tree.as_fd(),
        MountAttrFlags::RDONLY
            .union(MountAttrFlags::NOSUID)
            .union(MountAttrFlags::NODEV)
            .union(MountAttrFlags::NOEXEC),
        MountAttrFlags::EMPTY,
        None,
        false,
    )
    .map_err(RootfsError::Sysfs)?;
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etc_mode_defaults_when_no_layer_has_etc() {
        assert_eq!(etc_mode(&[PathBuf::from("/nonexistent")]), 0o755);
    }
}
