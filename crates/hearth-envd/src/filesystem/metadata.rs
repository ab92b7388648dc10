// SPDX-License-Identifier: Apache-2.0
//! User metadata on files: `user.e2b.<key>` extended attributes.
//!
//! Uploads carry it as `X-Metadata-<key>: <value>` headers; keys are lower-cased.
//! Limits keep every key a legal xattr name and the whole set within what ext4 stores
//! inline: keys and values are printable ASCII, a key is at most 246 bytes (255, the
//! xattr name limit, minus the `user.e2b.` prefix) and keys plus values total at most
//! 4096 bytes. Each upload replaces the file's whole metadata set.

use crate::error::EnvdError;
use std::collections::BTreeMap;
use std::os::fd::BorrowedFd;
use std::path::Path;

/// The xattr namespace envd owns.
pub const XATTR_PREFIX: &str = "user.e2b.";
/// The request-header prefix of metadata entries (header names are lower case).
pub const HEADER_PREFIX: &str = "x-metadata-";
/// Longest key in bytes.
pub const MAX_KEY_LEN: usize = 255 - XATTR_PREFIX.len();
/// Largest total of key and value bytes.
pub const MAX_TOTAL_LEN: usize = 4096;

/// Key → value, ordered for stable responses.
pub type Metadata = BTreeMap<String, String>;

fn printable(s: &[u8]) -> bool {
    s.iter().all(|b| (0x20..=0x7e).contains(b))
}

/// Extracts and validates the `X-Metadata-*` headers of an upload.
pub fn from_headers(headers: &http::HeaderMap) -> Result<Metadata, EnvdError> {
    let mut out = Metadata::new();
    let mut total = 0usize;
    for (name, value) in headers {
        let Some(key) = name.as_str().strip_prefix(HEADER_PREFIX) else {
            continue;
        };
        if key.is_empty() || out.contains_key(key) {
            continue;
        }
        let invalid = |why: &str| EnvdError::InvalidArgument(format!("invalid metadata: {why}"));
        if key.len() > MAX_KEY_LEN {
            return Err(invalid(&format!(
                "key '{key}' is longer than {MAX_KEY_LEN} bytes"
            )));
        }
        if !printable(key.as_bytes()) {
            return Err(invalid("keys must be printable ASCII"));
        }
        if !printable(value.as_bytes()) {
            return Err(invalid(&format!(
                "value of key '{key}' must be printable ASCII"
            )));
        }
        let value = value
            .to_str()
            .map_err(|_| invalid("values must be ASCII"))?;
        total += key.len() + value.len();
        if total > MAX_TOTAL_LEN {
            return Err(invalid(&format!(
                "keys and values exceed {MAX_TOTAL_LEN} bytes in total"
            )));
        }
        out.insert(key.to_owned(), value.to_owned());
    }
    Ok(out)
}

fn unsupported(err: &std::io::Error) -> bool {
    err.raw_os_error() == Some(libc::ENOTSUP)
}

/// Reads the `user.e2b.*` attributes of `path` (not following a symlink).
///
/// Filesystems without xattrs (procfs, some FUSE mounts) and unreadable attributes
/// simply yield no metadata: an entry listing must not fail over them.
pub fn read(path: &Path) -> Metadata {
    let mut out = Metadata::new();
    let names = match hearth_sys::fs::llistxattr(path) {
        Ok(n) => n,
        Err(_) => return out,
    };
    for name in names {
        let Some(key) = name.strip_prefix(XATTR_PREFIX.as_bytes()) else {
            continue;
        };
        let Ok(value) = hearth_sys::fs::lgetxattr(path, &name) else {
            continue;
        };
        out.insert(
            String::from_utf8_lossy(key).into_owned(),
            String::from_utf8_lossy(&value).into_owned(),
        );
    }
    out
}

/// Replaces the `user.e2b.*` set of the open file `fd` with `metadata`.
///
/// Only attributes that change are written, so an upload without metadata over a
/// file without metadata touches no xattr (and a watcher sees no extra event).
pub fn replace(fd: BorrowedFd<'_>, path: &Path, metadata: &Metadata) -> Result<(), EnvdError> {
    let fail = |err: std::io::Error| {
        EnvdError::io(
            format!("error writing file metadata of {}", path.display()),
            err,
        )
    };
    let existing = match hearth_sys::fs::flistxattr(fd) {
        Ok(n) => n,
        Err(err) if unsupported(&err) => {
            if !metadata.is_empty() {
                tracing::warn!(path = %path.display(), "filesystem has no xattrs; metadata not stored");
            }
            return Ok(());
        }
        Err(err) => return Err(fail(err)),
    };
    for name in existing {
        let Some(key) = name.strip_prefix(XATTR_PREFIX.as_bytes()) else {
            continue;
        };
        let keep = std::str::from_utf8(key).is_ok_and(|k| metadata.contains_key(k));
        if !keep {
            match hearth_sys::fs::fremovexattr(fd, &name) {
                Ok(()) => {}
                Err(err) if err.raw_os_error() == Some(libc::ENODATA) => {}
                Err(err) => return Err(fail(err)),
            }
        }
    }
    for (key, value) in metadata {
        let name = format!("{XATTR_PREFIX}{key}");
        match hearth_sys::fs::fsetxattr(fd, name.as_bytes(), value.as_bytes()) {
            Ok(()) => {}
            Err(err) if unsupported(&err) => {
                tracing::warn!(path = %path.display(), "filesystem has no xattrs; metadata not stored");
                return Ok(());
            }
            Err(err) => return Err(fail(err)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn keys_are_lowercased_and_prefix_stripped() {
        let m = from_headers(&headers(&[
            ("X-Metadata-Author", b"Ada"),
            ("Content-Type", b"x"),
        ]))
        .unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m["author"], "Ada");
    }

    #[test]
    fn non_printable_values_are_invalid() {
        let err = from_headers(&headers(&[("x-metadata-a", b"tab\there")])).unwrap_err();
        assert!(matches!(err, EnvdError::InvalidArgument(_)));
        let err = from_headers(&headers(&[("x-metadata-a", "é".as_bytes())])).unwrap_err();
        assert!(matches!(err, EnvdError::InvalidArgument(_)));
    }

    #[test]
    fn key_length_limit_is_246_bytes() {
        let ok = format!("x-metadata-{}", "k".repeat(246));
        assert!(from_headers(&headers(&[(&ok, b"v")])).is_ok());
        let long = format!("x-metadata-{}", "k".repeat(247));
        assert!(from_headers(&headers(&[(&long, b"v")])).is_err());
    }

    #[test]
    fn total_size_limit_is_4096_bytes() {
        let v = vec![b'v'; 2000];
        assert!(from_headers(&headers(&[("x-metadata-a", &v), ("x-metadata-b", &v)])).is_ok());
        let v = vec![b'v'; 2048];
        assert!(from_headers(&headers(&[("x-metadata-a", &v), ("x-metadata-b", &v)])).is_err());
    }
}
