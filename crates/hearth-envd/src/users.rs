// SPDX-License-Identifier: Apache-2.0
//! Users and groups, read from the image's own `/etc/passwd` and `/etc/group`.
//!
//! envd is linked statically and must not go through NSS, so it parses the files
//! itself. They are re-read when their size or mtime changes (a `useradd` inside the
//! sandbox takes effect on the next request).

use crate::error::EnvdError;
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// A user account in the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids (including the primary group).
    pub groups: Vec<u32>,
    /// Home directory.
    pub home: PathBuf,
    /// Login shell.
    pub shell: String,
}

#[derive(Debug, Default)]
struct Tables {
    users: Vec<User>,
    group_names: HashMap<u32, String>,
}

type Stamp = [(u64, Option<SystemTime>); 2];

/// The user database of one root filesystem, cached by file stamp.
#[derive(Debug)]
pub struct UserDb {
    passwd: PathBuf,
    group: PathBuf,
    cache: Mutex<Option<(Stamp, Arc<Tables>)>>,
}

impl UserDb {
    /// A database over `<root>/etc/passwd` and `<root>/etc/group`.
    pub fn new(root: &Path) -> Self {
        Self {
            passwd: root.join("etc/passwd"),
            group: root.join("etc/group"),
            cache: Mutex::new(None),
        }
    }

    fn stamp(path: &Path) -> (u64, Option<SystemTime>) {
        match std::fs::metadata(path) {
            Ok(m) => (m.len(), m.modified().ok()),
            Err(_) => (0, None),
        }
    }

    fn tables(&self) -> Arc<Tables> {
        let stamp = [Self::stamp(&self.passwd), Self::stamp(&self.group)];
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((s, t)) = cache.as_ref()
            && *s == stamp
        {
            return t.clone();
        }
        let passwd = std::fs::read_to_string(&self.passwd).unwrap_or_default();
        let group = std::fs::read_to_string(&self.group).unwrap_or_default();
        let tables = Arc::new(parse(&passwd, &group));
        *cache = Some((stamp, tables.clone()));
        tables
    }

    /// Looks a user up by name; an unknown name is `unauthenticated`, as upstream.
    pub fn lookup(&self, name: &str) -> Result<User, EnvdError> {
        self.tables()
            .users
            .iter()
            .find(|u| u.name == name)
            .cloned()
            .ok_or_else(|| EnvdError::Unauthenticated(format!("invalid username: '{name}'")))
    }

    /// Whether a user of this name exists.
    pub fn exists(&self, name: &str) -> bool {
        self.tables().users.iter().any(|u| u.name == name)
    }

    /// The name of uid `uid`, or the number as text.
    pub fn user_name(&self, uid: u32) -> String {
        self.tables()
            .users
            .iter()
            .find(|u| u.uid == uid)
            .map(|u| u.name.clone())
            .unwrap_or_else(|| uid.to_string())
    }

    /// The name of gid `gid`, or the number as text.
    pub fn group_name(&self, gid: u32) -> String {
        self.tables()
            .group_names
            .get(&gid)
            .cloned()
            .unwrap_or_else(|| gid.to_string())
    }
}

fn parse(passwd: &str, group: &str) -> Tables {
    let mut members: HashMap<&str, Vec<u32>> = HashMap::new();
    let mut group_names = HashMap::new();
    for line in group.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 || line.starts_with('#') {
            continue;
        }
        let Ok(gid) = f[2].parse::<u32>() else {
            continue;
        };
        group_names.entry(gid).or_insert_with(|| f[0].to_owned());
        for m in f[3].split(',').filter(|m| !m.is_empty()) {
            members.entry(m).or_default().push(gid);
        }
    }
    let mut users = Vec::new();
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 || line.starts_with('#') {
            continue;
        }
        let (Ok(uid), Ok(gid)) = (f[2].parse::<u32>(), f[3].parse::<u32>()) else {
            continue;
        };
        let mut groups = vec![gid];
        for g in members.get(f[0]).into_iter().flatten() {
            if !groups.contains(g) {
                groups.push(*g);
            }
        }
        users.push(User {
            name: f[0].to_owned(),
            uid,
            gid,
            groups,
            home: PathBuf::from(if f[5].is_empty() { "/" } else { f[5] }),
            shell: f[6].to_owned(),
        });
    }
    Tables { users, group_names }
}

/// Resolves a client path for `user`: `~` and `~/…` are the user's home, relative
/// paths are taken from `workdir` (else the home), and `.`/`..` are removed lexically.
///
/// A path with a NUL byte, or an empty path, is `invalid_argument`. Paths may point
/// anywhere inside the sandbox: the sandbox is the security boundary, not envd.
pub fn resolve_path(path: &str, user: &User, workdir: Option<&Path>) -> Result<PathBuf, EnvdError> {
    if path.contains('\0') {
        return Err(EnvdError::InvalidArgument(
            "path must not contain a NUL byte".to_owned(),
        ));
    }
    let base = workdir.unwrap_or(&user.home);
    let joined = if path == "~" {
        user.home.clone()
    } else if let Some(rest) = path.strip_prefix("~/") {
        user.home.join(rest)
    } else if path.starts_with('/') {
        PathBuf::from(path)
    } else if path.is_empty() {
        base.to_path_buf()
    } else {
        base.join(path)
    };
    Ok(clean(&joined))
}

/// Lexically normalises an absolute path (like Go's `filepath.Clean`).
pub fn clean(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/bash\n";
    const GROUP: &str = "root:x:0:\nsudo:x:27:user\nuser:x:1000:\n";

    fn user() -> User {
        parse(PASSWD, GROUP).users[1].clone()
    }

    #[test]
    fn parses_users_with_supplementary_groups() {
        let t = parse(PASSWD, GROUP);
        assert_eq!(t.users.len(), 2);
        assert_eq!(t.users[1].groups, vec![1000, 27]);
        assert_eq!(t.group_names[&27], "sudo");
    }

    #[test]
    fn resolves_home_relative_and_traversal() {
        let u = user();
        assert_eq!(
            resolve_path("~", &u, None).unwrap(),
            PathBuf::from("/home/user")
        );
        assert_eq!(
            resolve_path("~/a/b", &u, None).unwrap(),
            PathBuf::from("/home/user/a/b")
        );
        assert_eq!(
            resolve_path("x.txt", &u, None).unwrap(),
            PathBuf::from("/home/user/x.txt")
        );
        assert_eq!(
            resolve_path("x", &u, Some(Path::new("/work"))).unwrap(),
            PathBuf::from("/work/x")
        );
        assert_eq!(
            resolve_path("/../../etc/./passwd", &u, None).unwrap(),
            PathBuf::from("/etc/passwd")
        );
        assert_eq!(
            resolve_path("../../..", &u, None).unwrap(),
            PathBuf::from("/")
        );
        assert!(resolve_path("a\0b", &u, None).is_err());
    }
}
