// SPDX-License-Identifier: Apache-2.0
//! The Debian bookworm layer every base template starts from.
//!
//! `mmdebstrap` builds a minimal root filesystem from Debian's own packages; then the
//! layer is configured the way E2B's base image is: a user `user` (uid/gid 1000,
//! `/home/user`, bash, in `sudo`) with passwordless sudo, root without a password, a
//! hostname and `/etc/hosts`, and no apt lists or caches.
//!
//! The layer's name is `debian-<hash>` where the hash covers the whole recipe (suite,
//! mirrors, package list, every file this module writes and [`RECIPE_VERSION`]), so
//! changing any of them builds a new layer beside the old one.

use crate::layer::{Layer, LayerCache, LayerError};
use crate::progress::Progress;
use hearth_sys::cmd::{CmdError, execute, execute_streaming};
use sha2::{Digest, Sha256};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Bump when the build steps change in a way the recipe text does not show.
pub const RECIPE_VERSION: u32 = 1;

/// Packages on top of Debian's `minbase` variant (apt, essential and required).
pub const BASE_PACKAGES: &[&str] = &[
    "bash",
    "ca-certificates",
    "coreutils",
    "curl",
    "git",
    "iproute2",
    "ncurses-bin",
    "procps",
    "python-is-python3",
    "python3",
    "sudo",
];

const SUDOERS: &str = "user ALL=(ALL:ALL) NOPASSWD: ALL\n";
const HOSTNAME: &str = "hearth\n";
const HOSTS: &str = "\
127.0.0.1\tlocalhost
127.0.1.1\thearth
::1\tlocalhost ip6-localhost ip6-loopback
ff02::1\tip6-allnodes
ff02::2\tip6-allrouters
";

/// The runtime writes the sandbox's resolver configuration; the layer must not carry
/// the build host's.
const RESOLV_CONF: &str = "# written by the sandbox runtime\n";

/// Keeps documentation, manuals and translations out of the image (dpkg path filters).
const DPKG_OPTIONS: &[&str] = &[
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
];

/// Building or configuring the Debian layer failed.
#[derive(Debug, thiserror::Error)]
pub enum DebianError {
    /// The layer cache failed.
    #[error(transparent)]
    Cache(#[from] LayerError),
    /// `mmdebstrap` failed (or is not installed: `scripts/install-deps` installs it).
    #[error("failed to bootstrap Debian {suite} with mmdebstrap")]
    Bootstrap {
        /// The Debian suite.
        suite: String,
        /// The failed command.
        #[source]
        err: CmdError,
    },
    /// A configuration command inside the new root failed.
    #[error("failed to configure the Debian layer ({step})")]
    Configure {
        /// What was being done.
        step: &'static str,
        /// The failed command.
        #[source]
        err: CmdError,
    },
    /// A file of the new root could not be written or removed.
    #[error("failed to write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        err: io::Error,
    },
}

/// What goes into the Debian layer; its hash names the layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebianRecipe {
    /// Debian suite (`bookworm`).
    pub suite: String,
    /// apt source lines, one per archive.
    pub sources: Vec<String>,
    /// Packages installed on top of `minbase`.
    pub packages: Vec<String>,
}

impl Default for DebianRecipe {
    fn default() -> Self {
        let mirror = "http://deb.debian.org/debian";
        let security = "http://deb.debian.org/debian-security";
        Self {
            suite: "bookworm".to_owned(),
            sources: vec![
                format!("deb {mirror} bookworm main"),
                format!("deb {mirror} bookworm-updates main"),
                format!("deb {security} bookworm-security main"),
            ],
            packages: BASE_PACKAGES.iter().map(|p| (*p).to_owned()).collect(),
        }
    }
}

impl DebianRecipe {
    /// The canonical text the layer hash is computed from.
    pub fn canonical(&self) -> String {
        let mut packages = self.packages.clone();
        packages.sort();
        packages.dedup();
        let mut text = format!(
            "hearth debian layer\nrecipe-version: {RECIPE_VERSION}\nsuite: {}\nvariant: minbase\n",
            self.suite
        );
        for source in &self.sources {
            text.push_str(&format!("source: {source}\n"));
        }
        text.push_str(&format!("packages: {}\n", packages.join(" ")));
        for opt in DPKG_OPTIONS {
            text.push_str(&format!("dpkg: {opt}\n"));
        }
        text.push_str("user: user 1000:1000 /home/user /bin/bash +sudo\n");
        text.push_str(&format!("sudoers.d/user: {SUDOERS:?}\n"));
        text.push_str(&format!("hostname: {HOSTNAME:?}\nhosts: {HOSTS:?}\n"));
        text.push_str(&format!("resolv.conf: {RESOLV_CONF:?}\n"));
        text
    }

    /// The layer name, `debian-` plus 16 hex digits of the recipe's SHA-256.
    pub fn layer_name(&self) -> String {
        let digest = Sha256::digest(self.canonical().as_bytes());
        format!("debian-{}", &crate::hex(&digest)[..16])
    }
}

/// Returns the base Debian layer under `home`, building it first if needed.
pub fn ensure_debian_layer(home: &Path, progress: &dyn Progress) -> Result<Layer, DebianError> {
    ensure_debian_layer_with(home, &DebianRecipe::default(), progress)
}

/// Returns the Debian layer for `recipe` under `home`, building it first if needed.
pub fn ensure_debian_layer_with(
    home: &Path,
    recipe: &DebianRecipe,
    progress: &dyn Progress,
) -> Result<Layer, DebianError> {
    let cache = LayerCache::open(home)?;
    let name = recipe.layer_name();
    cache.ensure(&name, |staging| {
        let started = Instant::now();
        progress.phase(&format!("building base layer {name} (first run only)"));
        let result = build(recipe, staging, progress);
        match &result {
            Ok(()) => progress.finish(&format!(
                "built base layer {name} in {:.0?}",
                started.elapsed()
            )),
            Err(err) => progress.finish(&format!("building base layer {name} failed: {err}")),
        }
        result
    })
}

fn build(
    recipe: &DebianRecipe,
    staging: &Path,
    progress: &dyn Progress,
) -> Result<(), DebianError> {
    let rootfs = staging.join("rootfs");
    write(&staging.join("recipe.txt"), &recipe.canonical(), 0o644)?;

    // 1. Bootstrap. mmdebstrap mounts /proc, /sys and /dev into the new root while it
    //    runs; a private mount namespace makes those mounts vanish with it even if it
    //    is killed, so a stale staging tree never holds a host mount.
    progress.phase(&format!("bootstrapping Debian {}", recipe.suite));
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "mmdebstrap"])
        .args(["--mode=root", "--variant=minbase", "--format=directory"])
        .arg(format!("--include={}", recipe.packages.join(",")))
        .arg("--aptopt=Acquire::Languages \"none\"")
        .args(DPKG_OPTIONS.iter().map(|o| format!("--dpkgopt={o}")))
        .arg(&recipe.suite)
        .arg(&rootfs)
        .args(&recipe.sources)
        .env("LC_ALL", "C.UTF-8");
    execute_streaming(&mut cmd, |line| progress.detail(line)).map_err(|err| {
        DebianError::Bootstrap {
            suite: recipe.suite.clone(),
            err,
        }
    })?;

    // 2. The default user, as E2B's base image has it.
    progress.phase("configuring users");
    chroot(
        &rootfs,
        "create user",
        &[
            "useradd",
            "--uid",
            "1000",
            "--user-group",
            "--groups",
            "sudo",
            "--create-home",
            "--home-dir",
            "/home/user",
            "--shell",
            "/bin/bash",
            "user",
        ],
    )?;
    chroot(
        &rootfs,
        "remove root password",
        &["passwd", "--delete", "root"],
    )?;
    write(&rootfs.join("etc/sudoers.d/user"), SUDOERS, 0o440)?;
    write(&rootfs.join("etc/hostname"), HOSTNAME, 0o644)?;
    write(&rootfs.join("etc/hosts"), HOSTS, 0o644)?;
    write(&rootfs.join("etc/resolv.conf"), RESOLV_CONF, 0o644)?;

    // 3. Size: apt can fetch fresh lists at run time; caches only cost space.
    progress.phase("cleaning up");
    for dir in ["var/lib/apt/lists", "var/cache/apt", "var/log"] {
        clean_dir(&rootfs.join(dir), &["lock", "partial", "archives"])?;
    }
    Ok(())
}

fn chroot(rootfs: &Path, step: &'static str, argv: &[&str]) -> Result<(), DebianError> {
    let mut cmd = Command::new("chroot");
    cmd.arg(rootfs).args(argv).env("LC_ALL", "C.UTF-8");
    execute(&mut cmd)
        .map(drop)
        .map_err(|err| DebianError::Configure { step, err })
}

fn write(path: &Path, contents: &str, mode: u32) -> Result<(), DebianError> {
    let write_err = |err| DebianError::Write {
        path: path.to_owned(),
        err,
    };
    // Replace rather than write through: a symlink left in the new root must not
    // redirect the write to a file of the host.
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(write_err(err)),
    }
    fs::write(path, contents).map_err(write_err)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(write_err)
}

/// Empties `dir` of regular files (recursively), keeping the directory skeleton and
/// the entries named in `keep` so that the tools which own them still work.
fn clean_dir(dir: &Path, keep: &[&str]) -> Result<(), DebianError> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let remove_err = |err| DebianError::Write {
            path: path.clone(),
            err,
        };
        let file_type = entry.file_type().map_err(remove_err)?;
        if file_type.is_dir() {
            clean_dir(&path, &[])?;
        } else if !keep.iter().any(|k| entry.file_name() == **k) {
            fs::remove_file(&path).map_err(remove_err)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_name_is_stable_and_ignores_package_order() {
        let a = DebianRecipe::default();
        let mut b = a.clone();
        b.packages.reverse();
        assert_eq!(a.layer_name(), b.layer_name());
        assert!(a.layer_name().starts_with("debian-"));
        assert_eq!(a.layer_name().len(), "debian-".len() + 16);
    }

    #[test]
    fn layer_name_changes_with_the_package_list() {
        let a = DebianRecipe::default();
        let mut b = a.clone();
        b.packages.push("vim".to_owned());
        assert_ne!(a.layer_name(), b.layer_name());
    }

    #[test]
    fn recipe_covers_what_the_issue_asks_for() {
        let text = DebianRecipe::default().canonical();
        for pkg in [
            "bash",
            "coreutils",
            "python3",
            "python-is-python3",
            "git",
            "curl",
            "ca-certificates",
            "sudo",
            "ncurses-bin",
            "procps",
            "iproute2",
        ] {
            assert!(text.contains(&format!(" {pkg}")), "{pkg} missing: {text}");
        }
    }

    #[test]
    fn clean_dir_keeps_skeleton_and_named_entries() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("partial")).unwrap();
        fs::write(root.join("partial/x.deb"), "x").unwrap();
        fs::write(root.join("lock"), "").unwrap();
        fs::write(root.join("Packages"), "p").unwrap();
        clean_dir(root, &["lock", "partial"]).unwrap();
        assert!(root.join("lock").exists());
        assert!(root.join("partial").is_dir());
        assert!(!root.join("partial/x.deb").exists());
        assert!(!root.join("Packages").exists());
    }
}
