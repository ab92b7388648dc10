// SPDX-License-Identifier: Apache-2.0
//! Linux namespaces: opening, joining and leaving them.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A kind of namespace, as named under `/proc/<pid>/ns/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NsKind {
    /// Network stack (`net`).
    Net,
    /// Mount table (`mnt`).
    Mount,
    /// User and group ids, capabilities (`user`).
    User,
    /// Process ids (`pid`).
    Pid,
    /// Host and domain name (`uts`).
    Uts,
    /// System V IPC and POSIX message queues (`ipc`).
    Ipc,
    /// Cgroup root (`cgroup`).
    Cgroup,
}

impl NsKind {
    /// The `CLONE_NEW*` flag that creates this kind of namespace.
    pub fn clone_flag(self) -> libc::c_int {
        match self {
            NsKind::Net => libc::CLONE_NEWNET,
            NsKind::Mount => libc::CLONE_NEWNS,
            NsKind::User => libc::CLONE_NEWUSER,
            NsKind::Pid => libc::CLONE_NEWPID,
            NsKind::Uts => libc::CLONE_NEWUTS,
            NsKind::Ipc => libc::CLONE_NEWIPC,
            NsKind::Cgroup => libc::CLONE_NEWCGROUP,
        }
    }

    /// The file name under `/proc/<pid>/ns/`.
    pub fn proc_name(self) -> &'static str {
        match self {
            NsKind::Net => "net",
            NsKind::Mount => "mnt",
            NsKind::User => "user",
            NsKind::Pid => "pid",
            NsKind::Uts => "uts",
            NsKind::Ipc => "ipc",
            NsKind::Cgroup => "cgroup",
        }
    }
}

/// Opens a namespace file (`/proc/<pid>/ns/<kind>` or a bind mount of one, such as
/// `/run/netns/<name>`) read-only and close-on-exec.
pub fn open_ns(path: &Path) -> io::Result<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c_path` is a valid NUL-terminated string for the duration of the call;
    // open(2) does not retain the pointer.
    let fd = unsafe { libc::open(c_path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open(2) just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens the calling thread's namespace of `kind` (`/proc/thread-self/ns/<kind>`).
pub fn open_current(kind: NsKind) -> io::Result<OwnedFd> {
    open_ns(&Path::new("/proc/thread-self/ns").join(kind.proc_name()))
}

/// Moves the calling thread into the namespace referred to by `ns` (setns(2)).
///
/// Only the calling thread moves; for a network namespace, sockets it creates
/// afterwards belong to `ns`, and so does any child it clones.
pub fn setns(ns: BorrowedFd<'_>, kind: NsKind) -> io::Result<()> {
    // SAFETY: `ns` is an open fd for the duration of the borrow and setns(2) keeps no
    // reference to it after returning.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), kind.clone_flag()) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether two namespace fds refer to the same namespace (same nsfs inode).
pub fn same_ns(a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> io::Result<bool> {
    let sa = nix::sys::stat::fstat(a).map_err(io::Error::from)?;
    let sb = nix::sys::stat::fstat(b).map_err(io::Error::from)?;
    Ok(sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn current_namespace_is_same_as_itself() {
        let a = open_current(NsKind::Net).unwrap();
        let b = open_ns(Path::new("/proc/self/ns/net")).unwrap();
        assert!(same_ns(a.as_fd(), b.as_fd()).unwrap());
    }

    #[test]
    fn different_kinds_are_different_namespaces() {
        let net = open_current(NsKind::Net).unwrap();
        let uts = open_current(NsKind::Uts).unwrap();
        assert!(!same_ns(net.as_fd(), uts.as_fd()).unwrap());
    }

    #[test]
    fn opening_missing_namespace_file_fails() {
        let err = open_ns(Path::new("/nonexistent/ns")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn rejoining_own_network_namespace_works() {
        let own = open_current(NsKind::Net).unwrap();
        setns(own.as_fd(), NsKind::Net).unwrap();
    }
}
