// SPDX-License-Identifier: Apache-2.0
//! The guest kernel and initramfs, built from Debian's packages on first use.
//!
//! Layout under the microVM home (`<home>/microvm`):
//! ```text
//! guest.json                       which kernel + initramfs are current
//! kernel/<version>-<sha>/vmlinuz   Debian's cloud kernel (sha of its .deb)
//! initramfs/<sha>.cpio             our initramfs (sha of its bytes)
//! tmp/                             build directories, renamed into place when done
//! ```
//! Everything is content-addressed and installed by rename, so a crash mid-build
//! leaves at worst a stale directory under `tmp/`, and concurrent builders (other
//! processes) serialise on a lock file. Once `guest.json` exists no network is used.

use crate::debian::{self, DebianError};
use crate::fsutil::{self, FileLock};
use crate::initramfs;
use crate::kmod::{KmodError, ModuleTree};
use crate::progress::Progress;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

/// Debian's metapackage for the current cloud kernel (works with QEMU's microvm
/// machine when ACPI is on).
pub const KERNEL_PACKAGE: &str = "linux-image-cloud-amd64";
/// Debian's statically linked busybox.
pub const BUSYBOX_PACKAGE: &str = "busybox-static";
/// Drivers the guest needs; their dependencies are added, built-in ones skipped.
pub const GUEST_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_blk",
    "virtio_net",
    "virtio_rng",
    "ext4",
];

/// Building the guest artifacts failed.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// A file operation failed.
    #[error("failed to {what} {path}")]
    Io {
        /// What was attempted.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        err: std::io::Error,
    },
    /// A Debian package step failed.
    #[error("failed to fetch the guest's Debian packages")]
    Debian(#[source] DebianError),
    /// Kernel modules could not be resolved.
    #[error("failed to resolve the guest kernel's modules")]
    Modules(#[source] KmodError),
    /// The kernel package has an unexpected layout.
    #[error("kernel package {package} has no {what}")]
    KernelLayout {
        /// The package.
        package: String,
        /// What is missing.
        what: &'static str,
    },
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> GuestError + 'a {
    move |err| GuestError::Io {
        what,
        path: path.to_owned(),
        err,
    }
}

/// The kernel and initramfs every microVM boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestArtifacts {
    /// The kernel image (`bzImage`).
    pub kernel: PathBuf,
    /// Our initramfs.
    pub initramfs: PathBuf,
    /// The kernel's release string (`uname -r` in the guest).
    pub kernel_version: String,
    /// The Debian package the kernel came from (`name=version`).
    pub kernel_package: String,
    /// Identity of this kernel + initramfs pair; snapshots record it.
    pub id: String,
    /// The initramfs recipe it was built with ([`recipe`]); another one rebuilds.
    #[serde(default)]
    pub recipe: String,
}

impl GuestArtifacts {
    fn complete(&self) -> bool {
        self.kernel.is_file() && self.initramfs.is_file() && self.recipe == recipe()
    }
}

/// Identity of how this code builds the initramfs (its init script and module list):
/// a change rebuilds the guest artifacts on next use. Existing snapshots keep their
/// own (content-addressed) kernel and initramfs files.
pub fn recipe() -> String {
    let script = initramfs::init_script(&[]);
    fsutil::sha256(format!("{script}|{}", GUEST_MODULES.join(",")).as_bytes())[..16].to_owned()
}

/// Returns the guest artifacts under `root` (`<home>/microvm`), building them first
/// if missing. Blocking; takes seconds on first use (download + unpack), then reads
/// one small file.
pub fn ensure(root: &Path, progress: &dyn Progress) -> Result<GuestArtifacts, GuestError> {
    let index = root.join("guest.json");
    if let Some(g) = read_index(&index) {
        return Ok(g);
    }
    fs::create_dir_all(root.join("tmp")).map_err(io_err("create", root))?;
    let lock_path = root.join(".guest.lock");
    let _lock = FileLock::acquire(&lock_path).map_err(io_err("lock", &lock_path))?;
    if let Some(g) = read_index(&index) {
        return Ok(g);
    }
    let tmp = fsutil::temp_sibling(&root.join("tmp").join("guest"));
    fs::create_dir_all(&tmp).map_err(io_err("create", &tmp))?;
    let result = build(root, &tmp, progress);
    let _ = fs::remove_dir_all(&tmp);
    let g = result?;
    let json = serde_json::to_vec_pretty(&g).expect("guest artifacts serialise");
    fsutil::write_atomic(&index, &json).map_err(io_err("write", &index))?;
    progress.finish(&format!(
        "guest kernel {} and initramfs ready",
        g.kernel_version
    ));
    Ok(g)
}

fn read_index(index: &Path) -> Option<GuestArtifacts> {
    let bytes = fs::read(index).ok()?;
    let g: GuestArtifacts = serde_json::from_slice(&bytes).ok()?;
    g.complete().then_some(g)
}

fn build(root: &Path, tmp: &Path, progress: &dyn Progress) -> Result<GuestArtifacts, GuestError> {
    progress.phase("resolving the guest kernel package");
    let package = debian::resolve_metapackage(KERNEL_PACKAGE, "linux-image-", tmp)
        .map_err(GuestError::Debian)?;
    progress.detail(&package);
    progress.phase("downloading the guest kernel");
    let kdeb = debian::download(&package, tmp).map_err(GuestError::Debian)?;
    let ksha = fsutil::sha256_file(&kdeb).map_err(io_err("hash", &kdeb))?;
    progress.phase("unpacking the guest kernel");
    let kx = tmp.join("kernel-pkg");
    debian::extract(&kdeb, &kx).map_err(GuestError::Debian)?;
    let layout = |what| GuestError::KernelLayout {
        package: package.clone(),
        what,
    };
    let mods_root = kx.join("lib/modules");
    let version = fs::read_dir(&mods_root)
        .map_err(io_err("read", &mods_root))?
        .filter_map(Result::ok)
        .find_map(|e| e.file_name().to_str().map(str::to_owned))
        .ok_or_else(|| layout("lib/modules/<version>"))?;
    let vmlinuz = kx.join(format!("boot/vmlinuz-{version}"));
    if !vmlinuz.is_file() {
        return Err(layout("boot/vmlinuz-<version>"));
    }
    let tree = ModuleTree::open(&mods_root.join(&version)).map_err(GuestError::Modules)?;
    let order = tree
        .load_order(GUEST_MODULES)
        .map_err(GuestError::Modules)?;
    progress.detail(&format!(
        "modules to load: {}",
        order
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    ));
    let mut modules = Vec::with_capacity(order.len());
    for m in order {
        let data = fs::read(&m.path).map_err(io_err("read", &m.path))?;
        modules.push((m, data));
    }

    progress.phase("downloading busybox");
    let bdeb = debian::download(BUSYBOX_PACKAGE, tmp).map_err(GuestError::Debian)?;
    let bx = tmp.join("busybox-pkg");
    debian::extract(&bdeb, &bx).map_err(GuestError::Debian)?;
    let bb_path = bx.join("bin/busybox");
    let busybox = fs::read(&bb_path).map_err(io_err("read", &bb_path))?;

    progress.phase("writing the initramfs");
    let cpio = initramfs::build(&busybox, &modules).map_err(io_err("build", tmp))?;
    let isha = fsutil::sha256(&cpio);

    let kdir = root
        .join("kernel")
        .join(format!("{version}-{}", &ksha[..16]));
    let kernel = kdir.join("vmlinuz");
    if !kernel.is_file() {
        let staged = tmp.join("kernel-dir");
        fs::create_dir_all(&staged).map_err(io_err("create", &staged))?;
        fs::rename(&vmlinuz, staged.join("vmlinuz")).map_err(io_err("move", &vmlinuz))?;
        let config = kx.join(format!("boot/config-{version}"));
        if config.is_file() {
            fs::rename(&config, staged.join("config")).map_err(io_err("move", &config))?;
        }
        fs::create_dir_all(root.join("kernel")).map_err(io_err("create", root))?;
        let _ = fs::remove_dir_all(&kdir);
        fs::rename(&staged, &kdir).map_err(io_err("install", &kdir))?;
    }
    let idir = root.join("initramfs");
    fs::create_dir_all(&idir).map_err(io_err("create", &idir))?;
    let initramfs = idir.join(format!("{}.cpio", &isha[..16]));
    if !initramfs.is_file() {
        fsutil::write_atomic(&initramfs, &cpio).map_err(io_err("write", &initramfs))?;
    }
    fsutil::sync_dir(&kdir).map_err(io_err("sync", &kdir))?;
    let id = fsutil::sha256(format!("{ksha}:{isha}").as_bytes())[..16].to_owned();
    Ok(GuestArtifacts {
        kernel,
        initramfs,
        kernel_version: version,
        kernel_package: package,
        id,
        recipe: recipe(),
    })
}
