// SPDX-License-Identifier: Apache-2.0
//! `ListDir`: a depth-limited, pre-order walk.
//!
//! As upstream: the requested path may be a symlink to a directory (its entries are
//! reported under the requested path), symlinks inside are never followed, each
//! directory's entries come in byte order with a directory's children right after
//! it, and depth 0 means 1.

use crate::error::EnvdError;
use crate::filesystem::entry::entry_from_metadata;
use crate::users::UserDb;
use hearth_envd_proto::filesystem::EntryInfo;
use std::io;
use std::path::Path;

/// Lists `path` down to `depth` levels (0 counts as 1).
pub fn list_dir(users: &UserDb, path: &Path, depth: u32) -> Result<Vec<EntryInfo>, EnvdError> {
    let depth = depth.max(1);
    let resolved = std::fs::canonicalize(path).map_err(|err| match err.raw_os_error() {
        Some(libc::ENOENT) => {
            EnvdError::NotFound(format!("directory not found: {}", path.display()))
        }
        Some(libc::ELOOP) => EnvdError::FailedPrecondition(format!(
            "cyclic symlink or chain >255 links at {}",
            path.display()
        )),
        _ => EnvdError::io(format!("error resolving {}", path.display()), err),
    })?;
    let meta = std::fs::metadata(&resolved).map_err(|err| {
        EnvdError::io(
            format!("error getting file info of {}", path.display()),
            err,
        )
    })?;
    if !meta.is_dir() {
        return Err(EnvdError::InvalidArgument(format!(
            "path is not a directory: {}",
            path.display()
        )));
    }
    let mut out = Vec::new();
    walk(users, path, 1, depth, &mut out)
        .map_err(|err| EnvdError::io(format!("error reading directory {}", path.display()), err))?;
    Ok(out)
}

fn walk(
    users: &UserDb,
    dir: &Path,
    level: u32,
    depth: u32,
    out: &mut Vec<EntryInfo>,
) -> io::Result<()> {
    let mut children: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    children.sort_unstable();
    for name in children {
        let path = dir.join(&name);
        // Entries can vanish between readdir and lstat; they are simply gone.
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        out.push(entry_from_metadata(users, &path, &meta));
        if level < depth
            && meta.is_dir()
            && let Err(err) = walk(users, &path, level + 1, depth, out)
        {
            // An unreadable subdirectory must not hide everything else.
            tracing::debug!(path = %path.display(), error = %err, "skipping unreadable directory");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(entries: &[EntryInfo], root: &Path) -> Vec<String> {
        entries
            .iter()
            .map(|e| {
                Path::new(&e.path)
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    }

    #[test]
    fn depth_limits_and_preorder() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("b/b1/b11")).unwrap();
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::write(root.join("a/f.txt"), "x").unwrap();
        std::fs::write(root.join("c.txt"), "x").unwrap();
        let users = UserDb::new(Path::new("/"));
        assert_eq!(
            names(&list_dir(&users, root, 0).unwrap(), root),
            ["a", "b", "c.txt"]
        );
        assert_eq!(
            names(&list_dir(&users, root, 2).unwrap(), root),
            ["a", "a/f.txt", "b", "b/b1", "c.txt"]
        );
        assert_eq!(
            names(&list_dir(&users, root, 9).unwrap(), root),
            ["a", "a/f.txt", "b", "b/b1", "b/b1/b11", "c.txt"]
        );
    }

    #[test]
    fn symlinked_root_is_listed_under_the_link_but_inner_links_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("real/inner")).unwrap();
        std::os::unix::fs::symlink(root.join("real"), root.join("link")).unwrap();
        let users = UserDb::new(Path::new("/"));
        let link = root.join("link");
        assert_eq!(
            names(&list_dir(&users, &link, 1).unwrap(), &link),
            ["inner"]
        );
        assert_eq!(
            names(&list_dir(&users, root, 3).unwrap(), root),
            ["link", "real", "real/inner"]
        );
    }

    #[test]
    fn errors_by_kind() {
        let dir = tempfile::tempdir().unwrap();
        let users = UserDb::new(Path::new("/"));
        let missing = list_dir(&users, &dir.path().join("nope"), 1).unwrap_err();
        assert!(matches!(missing, EnvdError::NotFound(_)));
        std::fs::write(dir.path().join("f"), "x").unwrap();
        let file = list_dir(&users, &dir.path().join("f"), 1).unwrap_err();
        assert!(matches!(file, EnvdError::InvalidArgument(_)));
        let cyc = dir.path().join("cyc");
        std::os::unix::fs::symlink(&cyc, &cyc).unwrap();
        let cyclic = list_dir(&users, &cyc, 1).unwrap_err();
        assert!(matches!(cyclic, EnvdError::FailedPrecondition(_)));
    }
}
