// SPDX-License-Identifier: Apache-2.0
//! The new mount API (open_tree, mount_setattr, fsopen/fsconfig/fsmount, move_mount).
//!
//! These calls build mounts as file descriptors that are not attached anywhere
//! ("detached" mounts). A detached mount disappears when its last fd closes, so a
//! crash half-way through leaves nothing in any mount table.

use crate::util::{check, path_cstring, str_cstring};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

/// Per-mount attributes (`MOUNT_ATTR_*`) for [`mount_setattr`] and [`FsContext::mount`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MountAttrFlags(u64);

impl MountAttrFlags {
    /// No attributes.
    pub const EMPTY: Self = Self(0);
    /// Read-only.
    pub const RDONLY: Self = Self(libc::MOUNT_ATTR_RDONLY);
    /// Ignore set-user-id and set-group-id bits.
    pub const NOSUID: Self = Self(libc::MOUNT_ATTR_NOSUID);
    /// Do not open device nodes.
    pub const NODEV: Self = Self(libc::MOUNT_ATTR_NODEV);
    /// Do not execute programs.
    pub const NOEXEC: Self = Self(libc::MOUNT_ATTR_NOEXEC);

    /// Both sets of attributes.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// The raw `MOUNT_ATTR_*` bits.
    pub const fn bits(self) -> u64 {
        self.0
    }
}

/// Clones the mount at `path` into a new detached mount (open_tree(2) with
/// `OPEN_TREE_CLONE`), recursively with its submounts if `recursive`.
pub fn open_tree_clone(path: &Path, recursive: bool) -> io::Result<OwnedFd> {
    let c_path = path_cstring(path)?;
    let mut flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: `c_path` is NUL-terminated and outlives the call; open_tree(2) takes a
    // dirfd, a path and flags and keeps no pointer after returning.
    let fd = check(unsafe {
        libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c_path.as_ptr(), flags)
    })?;
    // SAFETY: open_tree(2) returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Changes attributes of the detached or attached mount `mount` (mount_setattr(2)).
///
/// `set` attributes are added and `clear` ones removed. With `idmap`, the mount
/// becomes idmapped through that user namespace's uid/gid maps: a file owned by
/// host uid `k` appears as the uid that maps to `k` in the namespace, shifted onto
/// the namespace's host range. A mount can be idmapped only once, before it is attached.
pub fn mount_setattr(
    mount: BorrowedFd<'_>,
    set: MountAttrFlags,
    clear: MountAttrFlags,
    idmap: Option<BorrowedFd<'_>>,
    recursive: bool,
) -> io::Result<()> {
    let mut attr = libc::mount_attr {
        attr_set: set.bits(),
        attr_clr: clear.bits(),
        propagation: 0,
        userns_fd: 0,
    };
    if let Some(userns) = idmap {
        attr.attr_set |= libc::MOUNT_ATTR_IDMAP;
        attr.userns_fd = userns.as_raw_fd() as u64;
    }
    let mut flags = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: `attr` is a fully initialised mount_attr that lives across the call and
    // its size is passed; the empty path with AT_EMPTY_PATH makes the kernel act on
    // `mount` itself. Nothing is retained after return.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mount.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    })?;
    Ok(())
}

/// A filesystem configuration context (fsopen(2)) that becomes a detached mount.
#[derive(Debug)]
pub struct FsContext {
    fd: OwnedFd,
}

impl FsContext {
    /// Starts configuring a new superblock of filesystem type `fstype`.
    pub fn open(fstype: &str) -> io::Result<Self> {
        let name = str_cstring(fstype)?;
        // SAFETY: `name` is NUL-terminated and outlives the call; fsopen(2) keeps no
        // pointer after returning.
        let fd =
            check(unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), libc::FSOPEN_CLOEXEC) })?;
        // SAFETY: fsopen(2) returned a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
        Ok(Self { fd })
    }

    /// Opens the configuration of the filesystem mounted at `path` for
    /// reconfiguration (fspick(2)); see [`FsContext::reconfigure`].
    pub fn pick(path: &Path) -> io::Result<Self> {
        let c_path = path_cstring(path)?;
        // SAFETY: `c_path` is NUL-terminated and outlives the call; fspick(2) keeps
        // no pointer after returning.
        let fd = check(unsafe {
            libc::syscall(
                libc::SYS_fspick,
                libc::AT_FDCWD,
                c_path.as_ptr(),
                libc::FSPICK_CLOEXEC,
            )
        })?;
        // SAFETY: fspick(2) returned a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
        Ok(Self { fd })
    }

    fn config(
        &self,
        cmd: libc::c_uint,
        key: Option<&std::ffi::CStr>,
        value: Option<&std::ffi::CStr>,
        aux: libc::c_int,
    ) -> io::Result<()> {
        let key = key.map_or(std::ptr::null(), |k| k.as_ptr());
        let value = value.map_or(std::ptr::null(), |v| v.as_ptr());
        // SAFETY: `key` and `value` are null or NUL-terminated strings borrowed for the
        // call; fsconfig(2) copies what it needs and keeps no pointer.
        check(unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                self.fd.as_raw_fd(),
                cmd,
                key,
                value,
                aux,
            )
        })?;
        Ok(())
    }

    /// Sets a string option (`FSCONFIG_SET_STRING`), e.g. `("mode", "0755")`.
    pub fn set_string(&self, key: &str, value: &str) -> io::Result<()> {
        let (k, v) = (str_cstring(key)?, str_cstring(value)?);
        self.config(libc::FSCONFIG_SET_STRING, Some(&k), Some(&v), 0)
    }

    /// Sets a flag option (`FSCONFIG_SET_FLAG`), e.g. `"ro"`.
    pub fn set_flag(&self, key: &str) -> io::Result<()> {
        let k = str_cstring(key)?;
        self.config(libc::FSCONFIG_SET_FLAG, Some(&k), None, 0)
    }

    /// Passes an fd as an option (`FSCONFIG_SET_FD`); overlayfs takes its layers
    /// (`lowerdir+`, `upperdir`, `workdir`) this way, including detached mounts.
    pub fn set_fd(&self, key: &str, fd: BorrowedFd<'_>) -> io::Result<()> {
        let k = str_cstring(key)?;
        self.config(libc::FSCONFIG_SET_FD, Some(&k), None, fd.as_raw_fd())
    }

    /// Creates the superblock (`FSCONFIG_CMD_CREATE`).
    pub fn create(&self) -> io::Result<()> {
        self.config(libc::FSCONFIG_CMD_CREATE, None, None, 0)
    }

    /// Applies the options set so far to a picked superblock
    /// (`FSCONFIG_CMD_RECONFIGURE`). Mount flags are untouched; superblock options
    /// not set again may be reset, depending on the filesystem.
    pub fn reconfigure(&self) -> io::Result<()> {
        self.config(libc::FSCONFIG_CMD_RECONFIGURE, None, None, 0)
    }

    /// Turns the created superblock into a detached mount with `attrs` (fsmount(2)).
    pub fn mount(&self, attrs: MountAttrFlags) -> io::Result<OwnedFd> {
        // SAFETY: fsmount(2) takes the context fd and two integer flag words; it
        // touches no memory of ours.
        let fd = check(unsafe {
            libc::syscall(
                libc::SYS_fsmount,
                self.fd.as_raw_fd(),
                libc::FSMOUNT_CLOEXEC,
                attrs.bits(),
            )
        })?;
        // SAFETY: fsmount(2) returned a new fd that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
    }
}

/// Attaches the detached (or moves the attached) mount `mount` onto `target`
/// (move_mount(2) with `MOVE_MOUNT_F_EMPTY_PATH`).
pub fn move_mount(mount: BorrowedFd<'_>, target: &Path) -> io::Result<()> {
    let c_target = path_cstring(target)?;
    // SAFETY: both strings are NUL-terminated and live across the call; move_mount(2)
    // keeps no pointers after returning.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mount.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            c_target.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn tmpfs_context_becomes_a_detached_mount() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let ctx = FsContext::open("tmpfs").unwrap();
        ctx.set_string("mode", "0700").unwrap();
        ctx.create().unwrap();
        let mnt = ctx
            .mount(MountAttrFlags::NODEV.union(MountAttrFlags::NOSUID))
            .unwrap();
        // A detached mount is reachable through its fd only.
        let meta = std::fs::metadata(format!("/proc/self/fd/{}", mnt.as_raw_fd())).unwrap();
        assert!(meta.is_dir());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains("mode=700"),
            "detached tmpfs leaked: {mounts}"
        );
    }

    #[test]
    fn unknown_filesystem_type_is_rejected() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let err = FsContext::open("no-such-fs").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENODEV));
    }

    #[test]
    fn cloned_tree_can_be_made_read_only() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let tree = open_tree_clone(Path::new("/proc"), false).unwrap();
        mount_setattr(
            tree.as_fd(),
            MountAttrFlags::RDONLY,
            MountAttrFlags::EMPTY,
            None,
            false,
        )
        .unwrap();
    }
}
