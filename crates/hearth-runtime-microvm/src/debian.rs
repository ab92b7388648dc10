// SPDX-License-Identifier: Apache-2.0
//! Fetching and unpacking Debian packages without installing them on the host.
//!
//! `apt-get download` puts a package's `.deb` into a directory using the host's apt
//! sources (no other network access is needed), and `dpkg-deb -x` unpacks it
//! anywhere. Nothing here touches the host's package database.

use hearth_sys::cmd::{CmdError, execute};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Fetching or unpacking a package failed.
#[derive(Debug, thiserror::Error)]
pub enum DebianError {
    /// `apt-get download` failed (no apt sources? run `apt-get update`).
    #[error("failed to download Debian package {package} (is `apt-get update` done?)")]
    Download {
        /// The package.
        package: String,
        /// The cause.
        #[source]
        err: CmdError,
    },
    /// The download produced no `.deb` file.
    #[error("apt-get download of {package} left no .deb in {dir}")]
    NoDeb {
        /// The package.
        package: String,
        /// Where it was downloaded.
        dir: PathBuf,
    },
    /// `dpkg-deb` failed.
    #[error("failed to read Debian package {deb}")]
    Dpkg {
        /// The `.deb` file.
        deb: PathBuf,
        /// The cause.
        #[source]
        err: CmdError,
    },
    /// A metapackage does not name the package it stands for.
    #[error("metapackage {package} depends on no {prefix}* package (Depends: {depends:?})")]
    Metapackage {
        /// The metapackage.
        package: String,
        /// The prefix looked for.
        prefix: String,
        /// Its Depends field.
        depends: String,
    },
    /// The download directory could not be read.
    #[error("failed to list {dir}")]
    ListDir {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        err: std::io::Error,
    },
}

/// Downloads `package` (optionally `name=version`) into `dir`; returns the `.deb`.
pub fn download(package: &str, dir: &Path) -> Result<PathBuf, DebianError> {
    let before = debs_in(dir)?;
    execute(
        Command::new("apt-get")
            .arg("download")
            .arg("-q")
            // The target directory is root-only; apt's sandbox user could not write it.
            .args(["-o", "APT::Sandbox::User=root"])
            .arg(package)
            .current_dir(dir),
    )
    .map_err(|err| DebianError::Download {
        package: package.to_owned(),
        err,
    })?;
    debs_in(dir)?
        .into_iter()
        .find(|d| !before.contains(d))
        .ok_or_else(|| DebianError::NoDeb {
            package: package.to_owned(),
            dir: dir.to_owned(),
        })
}

fn debs_in(dir: &Path) -> Result<Vec<PathBuf>, DebianError> {
    let list_err = |err| DebianError::ListDir {
        dir: dir.to_owned(),
        err,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(list_err)? {
        let path = entry.map_err(list_err)?.path();
        if path.extension().is_some_and(|e| e == "deb") {
            out.push(path);
        }
    }
    Ok(out)
}

/// A control field of a `.deb` (e.g. `Depends`).
pub fn field(deb: &Path, name: &str) -> Result<String, DebianError> {
    let out = execute(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name)).map_err(|err| {
        DebianError::Dpkg {
            deb: deb.to_owned(),
            err,
        }
    })?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Unpacks a `.deb`'s files under `dir`.
pub fn extract(deb: &Path, dir: &Path) -> Result<(), DebianError> {
    execute(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dir)).map_err(|err| {
        DebianError::Dpkg {
            deb: deb.to_owned(),
            err,
        }
    })?;
    Ok(())
}

/// Downloads a metapackage and returns `name=version` of the dependency starting with
/// `prefix` (e.g. `linux-image-cloud-amd64` → `linux-image-6.1.0-56-cloud-amd64=6.1.192-2`).
pub fn resolve_metapackage(package: &str, prefix: &str, dir: &Path) -> Result<String, DebianError> {
    let deb = download(package, dir)?;
    let depends = field(&deb, "Depends")?;
    let _ = std::fs::remove_file(&deb);
    pick_dependency(&depends, prefix).ok_or_else(|| DebianError::Metapackage {
        package: package.to_owned(),
        prefix: prefix.to_owned(),
        depends,
    })
}

/// From a Depends field, the first `prefix*` package as `name=version` (or `name`).
fn pick_dependency(depends: &str, prefix: &str) -> Option<String> {
    depends
        .split(',')
        .flat_map(|alt| alt.split('|'))
        .map(str::trim)
        .find(|d| d.starts_with(prefix))
        .map(|d| match d.split_once('(') {
            Some((name, ver)) => {
                let ver = ver.trim_end_matches(')').trim();
                match ver.strip_prefix('=') {
                    Some(v) => format!("{}={}", name.trim(), v.trim()),
                    None => name.trim().to_owned(),
                }
            }
            None => d.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metapackage_dependency_keeps_exact_version() {
        assert_eq!(
            pick_dependency(
                "linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)",
                "linux-image-"
            )
            .as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64=6.1.192-2")
        );
        assert_eq!(
            pick_dependency("foo, linux-image-x (>= 1) | bar", "linux-image-").as_deref(),
            Some("linux-image-x")
        );
        assert_eq!(pick_dependency("foo", "linux-image-"), None);
    }
}
