// SPDX-License-Identifier: Apache-2.0
//! The blocking filesystem operations behind `MakeDir`, `Move` and `Remove`, and the
//! directory creation shared with uploads.
//!
//! Everything here blocks; callers run it on the blocking pool.

use crate::error::EnvdError;
use crate::filesystem::entry::{entry_info, stat_error};
use crate::users::{User, UserDb};
use hearth_envd_proto::filesystem::EntryInfo;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// Mode of directories envd creates (`0o777` less the usual umask `022`).
pub const DIR_MODE: u32 = 0o755;
/// Mode of files envd creates (`0o666` less the usual umask `022`).
pub const FILE_MODE: u32 = 0o644;

/// Creates `dir` and its missing parents, each owned by `uid:gid`.
///
/// Existing directories are left as they are, like upstream's `EnsureDirs`: only what
/// envd creates changes owner. Concurrent creators are tolerated.
pub fn ensure_dirs(dir: &Path, uid: u32, gid: u32) -> Result<(), EnvdError> {
    let mut missing: Vec<&Path> = Vec::new();
    for ancestor in dir.ancestors() {
        match std::fs::metadata(ancestor) {
            Ok(meta) if meta.is_dir() => break,
            Ok(_) => {
                return Err(EnvdError::InvalidArgument(format!(
                    "path is not a directory: {}",
                    ancestor.display()
                )));
            }
            // ENOTDIR: a file further up; the walk reports it when it gets there.
            Err(err)
                if err.kind() == io::ErrorKind::NotFound
                    || err.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                missing.push(ancestor)
            }
            Err(err) => {
                return Err(EnvdError::io(
                    format!("error checking directory {}", ancestor.display()),
                    err,
                ));
            }
        }
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.mode(DIR_MODE);
    for path in missing.into_iter().rev() {
        match builder.create(path) {
            Ok(()) => std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|err| {
                EnvdError::io(
                    format!("error changing ownership of {}", path.display()),
                    err,
                )
            })?,
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => {}
            Err(err) => {
                return Err(EnvdError::io(
                    format!("error creating directory {}", path.display()),
                    err,
                ));
            }
        }
    }
    Ok(())
}

/// `MakeDir`: creates `path` and its parents for `user`.
pub fn make_dir(users: &UserDb, user: &User, path: &Path) -> Result<EntryInfo, EnvdError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {
            return Err(EnvdError::AlreadyExists(format!(
                "directory already exists: {}",
                path.display()
            )));
        }
        Ok(_) => {
            return Err(EnvdError::InvalidArgument(format!(
                "path already exists but it is not a directory: {}",
                path.display()
            )));
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => {
            return Err(EnvdError::io(
                format!("error getting file info of {}", path.display()),
                err,
            ));
        }
    }
    ensure_dirs(path, user.uid, user.gid)?;
    entry_info(users, path)
}

/// `Move`: renames `source` to `destination`, creating the destination's parents.
pub fn rename(
    users: &UserDb,
    user: &User,
    source: &Path,
    destination: &Path,
) -> Result<EntryInfo, EnvdError> {
    std::fs::symlink_metadata(source).map_err(|err| match err.kind() {
        io::ErrorKind::NotFound => {
            EnvdError::NotFound(format!("source file not found: {}", source.display()))
        }
        _ => stat_error(source, err),
    })?;
    if let Some(parent) = destination.parent() {
        ensure_dirs(parent, user.uid, user.gid)?;
    }
    std::fs::rename(source, destination).map_err(|err| {
        EnvdError::io(
            format!(
                "error renaming {} to {}",
                source.display(),
                destination.display()
            ),
            err,
        )
    })?;
    entry_info(users, destination)
}

/// `Remove`: deletes a file, a symlink (not its target) or a whole directory tree.
pub fn remove(path: &Path) -> Result<(), EnvdError> {
    let meta = std::fs::symlink_metadata(path).map_err(|err| stat_error(path, err))?;
    let result = if meta.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    result.map_err(|err| EnvdError::io(format!("error removing {}", path.display()), err))
}

/// The parent directory of an absolute, cleaned path (`/` for `/x`).
pub fn parent_of(path: &Path) -> PathBuf {
    path.parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn ensure_dirs_creates_missing_parents_with_owner_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        ensure_dirs(&deep, 4242, 4343).unwrap();
        for p in [dir.path().join("a"), dir.path().join("a/b"), deep.clone()] {
            let m = std::fs::metadata(&p).unwrap();
            assert!(m.is_dir());
            assert_eq!(m.mode() & 0o777, 0o755);
            if nix::unistd::geteuid().is_root() {
                assert_eq!((m.uid(), m.gid()), (4242, 4343));
            }
        }
        // The pre-existing temp dir kept its owner.
        assert_eq!(
            std::fs::metadata(dir.path()).unwrap().uid(),
            nix::unistd::geteuid().as_raw()
        );
    }

    #[test]
    fn ensure_dirs_through_a_file_is_invalid() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), "x").unwrap();
        let err = ensure_dirs(&dir.path().join("f/sub"), 0, 0).unwrap_err();
        assert!(matches!(err, EnvdError::InvalidArgument(_)));
    }

    #[test]
    fn remove_of_missing_path_is_not_found() {
        let err = remove(Path::new("/no/such/hearth/path")).unwrap_err();
        assert!(matches!(err, EnvdError::NotFound(_)));
    }
}
