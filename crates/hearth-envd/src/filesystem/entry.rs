// SPDX-License-Identifier: Apache-2.0
//! `EntryInfo`: what envd reports about one filesystem entry.
//!
//! Field semantics follow upstream envd (and E2B's own SDK tests):
//! - the entry is `lstat`ed, so `size`, `permissions` and `modified_time` describe a
//!   symlink itself;
//! - a symlink reports its target's type in `type` and the target's permission bits in
//!   `mode`, plus `symlink_target` = the fully resolved absolute target (or the link's
//!   own path when it cannot be resolved). A dangling symlink is `FILE_TYPE_SYMLINK`;
//!   upstream reports `FILE_TYPE_UNSPECIFIED`, which the SDKs silently drop from
//!   listings;
//! - `mode` is Go's `FileMode.Perm()` (the low nine bits: `0o644`), `permissions` is
//!   Go's `FileMode.String()` of the full mode (`-rw-r--r--`, `drwxr-xr-x`,
//!   `Lrwxrwxrwx`, `dtrwxrwxrwx` for a sticky directory);
//! - `metadata` holds the `user.e2b.*` xattrs with the prefix stripped.

use crate::error::EnvdError;
use crate::filesystem::metadata;
use crate::users::UserDb;
use buffa_types::google::protobuf::Timestamp;
use hearth_envd_proto::filesystem::{EntryInfo, FileType};
use std::fs::Metadata;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Go `os.FileMode` type and permission bits (see Go's `io/fs`).
pub mod go_mode {
    /// `d`: is a directory.
    pub const DIR: u32 = 1 << 31;
    /// `a`: append-only.
    pub const APPEND: u32 = 1 << 30;
    /// `l`: exclusive use.
    pub const EXCLUSIVE: u32 = 1 << 29;
    /// `T`: temporary file.
    pub const TEMPORARY: u32 = 1 << 28;
    /// `L`: symbolic link.
    pub const SYMLINK: u32 = 1 << 27;
    /// `D`: device file.
    pub const DEVICE: u32 = 1 << 26;
    /// `p`: named pipe.
    pub const NAMED_PIPE: u32 = 1 << 25;
    /// `S`: Unix domain socket.
    pub const SOCKET: u32 = 1 << 24;
    /// `u`: setuid.
    pub const SETUID: u32 = 1 << 23;
    /// `g`: setgid.
    pub const SETGID: u32 = 1 << 22;
    /// `c`: character device (with `DEVICE`).
    pub const CHAR_DEVICE: u32 = 1 << 21;
    /// `t`: sticky.
    pub const STICKY: u32 = 1 << 20;
    /// `?`: non-regular file of unknown kind.
    pub const IRREGULAR: u32 = 1 << 19;
    /// The nine permission bits (`FileMode.Perm()`).
    pub const PERM: u32 = 0o777;
}

/// Converts a Linux `st_mode` into Go's `os.FileMode` bits, as Go's `os.Lstat` does.
pub fn go_file_mode(st_mode: u32) -> u32 {
    let mut mode = st_mode & go_mode::PERM;
    mode |= match st_mode & libc::S_IFMT {
        libc::S_IFBLK => go_mode::DEVICE,
        libc::S_IFCHR => go_mode::DEVICE | go_mode::CHAR_DEVICE,
        libc::S_IFDIR => go_mode::DIR,
        libc::S_IFIFO => go_mode::NAMED_PIPE,
        libc::S_IFLNK => go_mode::SYMLINK,
        libc::S_IFSOCK => go_mode::SOCKET,
        _ => 0,
    };
    if st_mode & libc::S_ISGID != 0 {
        mode |= go_mode::SETGID;
    }
    if st_mode & libc::S_ISUID != 0 {
        mode |= go_mode::SETUID;
    }
    if st_mode & libc::S_ISVTX != 0 {
        mode |= go_mode::STICKY;
    }
    mode
}

/// Renders Go `FileMode.String()`: one letter per set type bit (or `-`), then `rwx`.
pub fn go_mode_string(mode: u32) -> String {
    const TYPE_LETTERS: &[u8] = b"dalTLDpSugct?";
    const RWX: &[u8] = b"rwxrwxrwx";
    let mut out = String::with_capacity(12);
    for (i, letter) in TYPE_LETTERS.iter().enumerate() {
        if mode & (1 << (31 - i)) != 0 {
            out.push(char::from(*letter));
        }
    }
    if out.is_empty() {
        out.push('-');
    }
    for (i, letter) in RWX.iter().enumerate() {
        out.push(if mode & (1 << (8 - i)) != 0 {
            char::from(*letter)
        } else {
            '-'
        });
    }
    out
}

fn file_type_of(meta: &Metadata) -> FileType {
    let ft = meta.file_type();
    if ft.is_dir() {
        FileType::FILE_TYPE_DIRECTORY
    } else if ft.is_symlink() {
        FileType::FILE_TYPE_SYMLINK
    } else {
        // Regular files and special files alike: upstream's `IsRegular` test would
        // drop FIFOs and devices from listings, which hides them from users.
        FileType::FILE_TYPE_FILE
    }
}

fn mtime(meta: &Metadata) -> Timestamp {
    let nanos = i32::try_from(meta.mtime_nsec()).unwrap_or(0);
    Timestamp::from_unix(meta.mtime(), nanos)
}

fn base_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string_lossy().into_owned())
}

/// Builds the entry for `path` from its `lstat` result.
pub fn entry_from_metadata(users: &UserDb, path: &Path, meta: &Metadata) -> EntryInfo {
    let full_mode = go_file_mode(meta.mode());
    let mut info = EntryInfo {
        name: base_name(path),
        path: path.to_string_lossy().into_owned(),
        size: i64::try_from(meta.size()).unwrap_or(i64::MAX),
        permissions: go_mode_string(full_mode),
        owner: users.user_name(meta.uid()),
        group: users.group_name(meta.gid()),
        modified_time: mtime(meta).into(),
        metadata: metadata::read(path).into_iter().collect(),
        ..Default::default()
    };
    if meta.file_type().is_symlink() {
        // Upstream resolves the whole chain (filepath.EvalSymlinks) and describes the
        // final target; an unresolvable link keeps its own path as target.
        match std::fs::canonicalize(path).and_then(|t| std::fs::metadata(&t).map(|m| (t, m))) {
            Ok((target, target_meta)) => {
                info.r#type = file_type_of(&target_meta).into();
                info.mode = go_file_mode(target_meta.mode()) & go_mode::PERM;
                info.symlink_target = Some(target.to_string_lossy().into_owned());
            }
            Err(_) => {
                info.r#type = FileType::FILE_TYPE_SYMLINK.into();
                info.mode = full_mode & go_mode::PERM;
                info.symlink_target = Some(info.path.clone());
            }
        }
    } else {
        info.r#type = file_type_of(meta).into();
        info.mode = full_mode & go_mode::PERM;
    }
    info
}

/// `lstat`s `path` and builds its entry; a missing path is `not_found`.
pub fn entry_info(users: &UserDb, path: &Path) -> Result<EntryInfo, EnvdError> {
    let meta = std::fs::symlink_metadata(path).map_err(|err| stat_error(path, err))?;
    Ok(entry_from_metadata(users, path, &meta))
}

/// Maps a failed `stat` of `path`: missing ⇒ `not_found`, else the errno's code.
pub fn stat_error(path: &Path, err: io::Error) -> EnvdError {
    match err.kind() {
        io::ErrorKind::NotFound => {
            EnvdError::NotFound(format!("file not found: {}", path.display()))
        }
        _ => EnvdError::io(
            format!("error getting file info of {}", path.display()),
            err,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_file_mode_string_matches_go() {
        let mode = go_file_mode(libc::S_IFREG | 0o644);
        assert_eq!(mode, 0o644);
        assert_eq!(go_mode_string(mode), "-rw-r--r--");
    }

    #[test]
    fn directory_carries_the_dir_bit_and_letter() {
        let mode = go_file_mode(libc::S_IFDIR | 0o755);
        assert_eq!(mode, go_mode::DIR | 0o755);
        assert_eq!(mode & go_mode::PERM, 0o755);
        assert_eq!(go_mode_string(mode), "drwxr-xr-x");
    }

    #[test]
    fn symlink_is_capital_l() {
        let mode = go_file_mode(libc::S_IFLNK | 0o777);
        assert_eq!(mode, go_mode::SYMLINK | 0o777);
        assert_eq!(go_mode_string(mode), "Lrwxrwxrwx");
    }

    #[test]
    fn special_bits_are_prefix_letters_like_go() {
        assert_eq!(
            go_mode_string(go_file_mode(libc::S_IFDIR | libc::S_ISVTX | 0o777)),
            "dtrwxrwxrwx"
        );
        assert_eq!(
            go_mode_string(go_file_mode(libc::S_IFREG | libc::S_ISUID | 0o755)),
            "urwxr-xr-x"
        );
        assert_eq!(
            go_mode_string(go_file_mode(libc::S_IFREG | libc::S_ISGID | 0o2755)),
            "grwxr-xr-x"
        );
        assert_eq!(
            go_mode_string(go_file_mode(libc::S_IFCHR | 0o666)),
            "Dcrw-rw-rw-"
        );
        assert_eq!(
            go_mode_string(go_file_mode(libc::S_IFIFO | 0o600)),
            "prw-------"
        );
        assert_eq!(
            go_mode_string(go_file_mode(libc::S_IFSOCK | 0o755)),
            "Srwxr-xr-x"
        );
    }

    #[test]
    fn symlink_reports_target_type_and_resolved_path() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("t.txt");
        std::fs::write(&target, "hi").unwrap();
        let link = dir.path().join("l");
        std::os::unix::fs::symlink("t.txt", &link).unwrap();
        let users = UserDb::new(Path::new("/"));
        let e = entry_info(&users, &link).unwrap();
        assert_eq!(e.r#type, FileType::FILE_TYPE_FILE);
        assert_eq!(e.permissions, "Lrwxrwxrwx");
        let resolved = std::fs::canonicalize(&target).unwrap();
        assert_eq!(e.symlink_target.as_deref(), resolved.to_str());
        assert_eq!(e.name, "l");
    }

    #[test]
    fn dangling_symlink_is_a_symlink_entry() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("dangling");
        std::os::unix::fs::symlink("nowhere", &link).unwrap();
        let users = UserDb::new(Path::new("/"));
        let e = entry_info(&users, &link).unwrap();
        assert_eq!(e.r#type, FileType::FILE_TYPE_SYMLINK);
        assert_eq!(e.symlink_target.as_deref(), link.to_str());
    }

    #[test]
    fn missing_path_is_not_found() {
        let users = UserDb::new(Path::new("/"));
        let err = entry_info(&users, Path::new("/definitely/not/here")).unwrap_err();
        assert!(matches!(err, EnvdError::NotFound(_)));
    }
}
