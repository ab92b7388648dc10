// SPDX-License-Identifier: Apache-2.0
//! The layer cache: content-addressed layer directories, installed atomically.
//!
//! A layer lives at `<home>/layers/<name>/` with its tree in `rootfs/`; `<name>` carries
//! a hash of what produced it, so a layer never changes once installed. A layer is
//! built in a staging directory `<home>/layers/.tmp-<name>-<pid>/` on the same
//! filesystem and renamed into place only when complete: a crash leaves a `.tmp-*`
//! directory, never a half layer under a valid name.
//!
//! Builders take an exclusive `flock` on `<home>/layers/.lock` for the whole build, so
//! concurrent callers wait for one build instead of racing, and any `.tmp-*` seen while
//! holding the lock belongs to a builder that died and is removed.

use crate::fsutil::{RemoveTreeError, remove_tree};
use nix::fcntl::{Flock, FlockArg};
use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

/// Name prefix of staging directories.
const STAGING_PREFIX: &str = ".tmp-";

/// A failure of the layer cache itself (not of what a layer's builder runs).
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The cache directory could not be created.
    #[error("failed to create layer cache {path}")]
    CreateCache {
        /// The cache directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        err: io::Error,
    },
    /// The cache lock could not be opened or taken.
    #[error("failed to lock layer cache {path}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        err: io::Error,
    },
    /// A stale staging directory or an invalid layer directory could not be removed.
    #[error("failed to remove an incomplete layer directory")]
    RemoveStaging(#[source] RemoveTreeError),
    /// The staging directory could not be created.
    #[error("failed to create staging directory {path}")]
    CreateStaging {
        /// The staging directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        err: io::Error,
    },
    /// The builder returned without producing `rootfs/`.
    #[error("layer {name} was built without a rootfs directory")]
    MissingRootfs {
        /// The layer.
        name: String,
    },
    /// Flushing the built layer to disk failed.
    #[error("failed to sync layer {name}")]
    Sync {
        /// The layer.
        name: String,
        /// The I/O error.
        #[source]
        err: io::Error,
    },
    /// The staging directory could not be renamed into place.
    #[error("failed to install layer {name} at {path}")]
    Install {
        /// The layer.
        name: String,
        /// The final location.
        path: PathBuf,
        /// The I/O error.
        #[source]
        err: io::Error,
    },
}

/// One installed, immutable layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    name: String,
    dir: PathBuf,
}

impl Layer {
    /// The layer's content-addressed name, e.g. `debian-0123456789abcdef`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The layer's directory (holds `rootfs/` and descriptive files).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The layer's file tree, usable as an overlayfs lower directory.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }
}

/// The layer cache under `<home>/layers`.
#[derive(Debug, Clone)]
pub struct LayerCache {
    root: PathBuf,
}

impl LayerCache {
    /// Opens (creating if needed) the cache under `home`.
    pub fn open(home: &Path) -> Result<Self, LayerError> {
        let root = home.join("layers");
        fs::create_dir_all(&root).map_err(|err| LayerError::CreateCache {
            path: root.clone(),
            err,
        })?;
        Ok(Self { root })
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The installed layer called `name`, if there is one.
    pub fn get(&self, name: &str) -> Option<Layer> {
        let dir = self.root.join(name);
        dir.join("rootfs").is_dir().then(|| Layer {
            name: name.to_owned(),
            dir,
        })
    }

    /// Returns layer `name`, building it first with `build` if it is not installed.
    ///
    /// `build` gets an empty staging directory and must create `rootfs/` in it (it may
    /// add other files beside it). On error the staging directory is removed.
    pub fn ensure<E>(
        &self,
        name: &str,
        build: impl FnOnce(&Path) -> Result<(), E>,
    ) -> Result<Layer, E>
    where
        E: From<LayerError>,
    {
        if let Some(layer) = self.get(name) {
            return Ok(layer);
        }
        let _lock = self.lock()?;
        // Another process may have finished the same layer while we waited.
        if let Some(layer) = self.get(name) {
            return Ok(layer);
        }
        self.remove_stale_staging()?;

        let staging = self
            .root
            .join(format!("{STAGING_PREFIX}{name}-{}", std::process::id()));
        fs::create_dir(&staging).map_err(|err| LayerError::CreateStaging {
            path: staging.clone(),
            err,
        })?;
        let result = build(&staging).and_then(|()| Ok(self.install(name, &staging)?));
        if result.is_err()
            && let Err(err) = remove_tree(&staging)
        {
            tracing::warn!(path = %staging.display(), error = %err, "cannot remove staging directory");
        }
        result
    }

    fn install(&self, name: &str, staging: &Path) -> Result<Layer, LayerError> {
        if !staging.join("rootfs").is_dir() {
            return Err(LayerError::MissingRootfs {
                name: name.to_owned(),
            });
        }
        // The rename must not become durable before the tree it names.
        let dir = fs::File::open(staging).map_err(|err| LayerError::Sync {
            name: name.to_owned(),
            err,
        })?;
        nix::unistd::syncfs(dir.as_fd()).map_err(|err| LayerError::Sync {
            name: name.to_owned(),
            err: err.into(),
        })?;
        let path = self.root.join(name);
        // A directory under the final name without `rootfs/` is no layer (see `get`);
        // it cannot come from this code, but must not block the install either.
        remove_tree(&path).map_err(LayerError::RemoveStaging)?;
        fs::rename(staging, &path).map_err(|err| LayerError::Install {
            name: name.to_owned(),
            path: path.clone(),
            err,
        })?;
        Ok(Layer {
            name: name.to_owned(),
            dir: path,
        })
    }

    fn lock(&self) -> Result<Flock<fs::File>, LayerError> {
        let path = self.root.join(".lock");
        let lock_err = |err| LayerError::Lock {
            path: path.clone(),
            err,
        };
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(lock_err)?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| lock_err(errno.into()))
    }

    /// Removes every staging directory; only call while holding the lock.
    fn remove_stale_staging(&self) -> Result<(), LayerError> {
        let entries = fs::read_dir(&self.root).map_err(|err| LayerError::CreateCache {
            path: self.root.clone(),
            err,
        })?;
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(STAGING_PREFIX)
            {
                let path = entry.path();
                tracing::info!(path = %path.display(), "removing stale layer staging directory");
                remove_tree(&path).map_err(LayerError::RemoveStaging)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum TestError {
        #[error(transparent)]
        Layer(#[from] LayerError),
        #[error("builder failed")]
        Builder,
    }

    fn write_rootfs(staging: &Path) -> Result<(), TestError> {
        fs::create_dir(staging.join("rootfs")).unwrap();
        fs::write(staging.join("rootfs/hello"), "hi").unwrap();
        Ok(())
    }

    #[test]
    fn ensure_builds_once_and_then_reuses_the_layer() {
        let home = tempfile::tempdir().unwrap();
        let cache = LayerCache::open(home.path()).unwrap();
        let layer = cache.ensure("demo-1", write_rootfs).unwrap();
        assert_eq!(layer.rootfs(), home.path().join("layers/demo-1/rootfs"));
        assert_eq!(
            fs::read_to_string(layer.rootfs().join("hello")).unwrap(),
            "hi"
        );
        let again = cache
            .ensure("demo-1", |_| -> Result<(), TestError> {
                panic!("an installed layer must not be rebuilt")
            })
            .unwrap();
        assert_eq!(again, layer);
    }

    #[test]
    fn failed_build_leaves_no_layer_and_no_staging() {
        let home = tempfile::tempdir().unwrap();
        let cache = LayerCache::open(home.path()).unwrap();
        let err = cache
            .ensure("demo-2", |staging| {
                fs::create_dir(staging.join("rootfs")).unwrap();
                Err(TestError::Builder)
            })
            .unwrap_err();
        assert!(matches!(err, TestError::Builder));
        assert!(cache.get("demo-2").is_none());
        let left: Vec<_> = fs::read_dir(cache.root())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n != ".lock")
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    #[test]
    fn build_without_rootfs_is_rejected() {
        let home = tempfile::tempdir().unwrap();
        let cache = LayerCache::open(home.path()).unwrap();
        let err = cache
            .ensure("demo-3", |_| Ok::<(), TestError>(()))
            .unwrap_err();
        assert!(matches!(
            err,
            TestError::Layer(LayerError::MissingRootfs { .. })
        ));
        assert!(cache.get("demo-3").is_none());
    }

    #[test]
    fn stale_staging_from_a_crashed_build_is_removed_and_never_looks_valid() {
        let home = tempfile::tempdir().unwrap();
        let cache = LayerCache::open(home.path()).unwrap();
        // What a builder killed mid-way leaves behind.
        let stale = cache.root().join(".tmp-demo-4-999999");
        fs::create_dir_all(stale.join("rootfs/etc")).unwrap();
        assert!(cache.get("demo-4").is_none());
        cache.ensure("demo-4", write_rootfs).unwrap();
        assert!(!stale.exists());
    }

    #[test]
    fn a_directory_without_rootfs_is_not_a_layer() {
        let home = tempfile::tempdir().unwrap();
        let cache = LayerCache::open(home.path()).unwrap();
        fs::create_dir_all(cache.root().join("demo-5")).unwrap();
        assert!(cache.get("demo-5").is_none());
    }
}
