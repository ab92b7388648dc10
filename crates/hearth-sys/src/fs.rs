// SPDX-License-Identifier: Apache-2.0
//! Extended attributes (xattr(7)), which neither std nor nix wrap.
//!
//! Path-based calls use the `l*` variants so a symlink's own attributes are read,
//! never its target's; fd-based calls act on an already opened file and so cannot
//! race with renames. Names are byte strings such as `user.e2b.author`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Converts the `ssize_t` result of an xattr call into a length or the errno.
fn check_len(rc: isize) -> io::Result<usize> {
    usize::try_from(rc).map_err(|_| io::Error::last_os_error())
}

/// Runs a size-then-fill xattr query, retrying when the value grows in between
/// (`ERANGE`), and returns the filled buffer.
fn read_sized(mut call: impl FnMut(&mut [u8]) -> io::Result<usize>) -> io::Result<Vec<u8>> {
    loop {
        let size = call(&mut [])?;
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size];
        match call(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(err) if err.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(err) => return Err(err),
        }
    }
}

fn split_names(list: &[u8]) -> Vec<Vec<u8>> {
    list.split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// Lists the attribute names of `path` itself, not following a symlink (llistxattr(2)).
pub fn llistxattr(path: &Path) -> io::Result<Vec<Vec<u8>>> {
    let cpath = cstring(path.as_os_str().as_bytes())?;
    let list = read_sized(|buf| {
        // SAFETY: `cpath` is a NUL-terminated string alive for the call; `buf` is a
        // writable slice whose exact length is passed, and a zero length with a
        // dangling pointer is the documented size query.
        let rc = unsafe { libc::llistxattr(cpath.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        check_len(rc)
    })?;
    Ok(split_names(&list))
}

/// Reads attribute `name` of `path` itself, not following a symlink (lgetxattr(2)).
pub fn lgetxattr(path: &Path, name: &[u8]) -> io::Result<Vec<u8>> {
    let cpath = cstring(path.as_os_str().as_bytes())?;
    let cname = cstring(name)?;
    read_sized(|buf| {
        // SAFETY: both strings are NUL-terminated and outlive the call; `buf` is a
        // writable slice whose exact length is passed (zero = size query).
        let rc = unsafe {
            libc::lgetxattr(
                cpath.as_ptr(),
                cname.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        check_len(rc)
    })
}

/// Lists the attribute names of the open file `fd` (flistxattr(2)).
pub fn flistxattr(fd: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    let list = read_sized(|buf| {
        // SAFETY: `fd` is open for the duration of the borrow; `buf` is a writable
        // slice whose exact length is passed (zero = size query).
        let rc = unsafe { libc::flistxattr(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        check_len(rc)
    })?;
    Ok(split_names(&list))
}

/// Sets attribute `name` of the open file `fd` to `value` (fsetxattr(2)).
pub fn fsetxattr(fd: BorrowedFd<'_>, name: &[u8], value: &[u8]) -> io::Result<()> {
    let cname = cstring(name)?;
    // SAFETY: `fd` is open for the duration of the borrow, `cname` is NUL-terminated,
    // and `value` is a readable slice whose exact length is passed.
    let rc = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            cname.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Removes attribute `name` from the open file `fd` (fremovexattr(2)).
pub fn fremovexattr(fd: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let cname = cstring(name)?;
    // SAFETY: `fd` is open for the duration of the borrow and `cname` is a
    // NUL-terminated string alive for the call.
    let rc = unsafe { libc::fremovexattr(fd.as_raw_fd(), cname.as_ptr()) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn set_list_get_and_remove_round_trip() {
        let dir = std::env::temp_dir().join(format!("hearth-sys-xattr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let file = std::fs::File::create(&path).unwrap();
        match fsetxattr(file.as_fd(), b"user.e2b.k", b"v") {
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => {
                eprintln!("skipping: {} does not support user xattrs", dir.display());
                std::fs::remove_dir_all(&dir).unwrap();
                return;
            }
            other => other.unwrap(),
        }
        assert!(llistxattr(&path).unwrap().contains(&b"user.e2b.k".to_vec()));
        assert!(
            flistxattr(file.as_fd())
                .unwrap()
                .contains(&b"user.e2b.k".to_vec())
        );
        assert_eq!(lgetxattr(&path, b"user.e2b.k").unwrap(), b"v");
        fremovexattr(file.as_fd(), b"user.e2b.k").unwrap();
        let err = lgetxattr(&path, b"user.e2b.k").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENODATA));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn names_with_nul_are_invalid() {
        let err = lgetxattr(Path::new("/"), b"user.a\0b").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    }
}
