// SPDX-License-Identifier: Apache-2.0
//! Disk images: a template's ext4 root image and each sandbox's copy-on-write overlay.
//!
//! The root image is made with `mkfs.ext4 -d` straight from the template's root
//! directory (several layers are flattened by a read-only overlayfs mount), so no loop
//! device is needed. Sandboxes never write it: each gets a qcow2 overlay whose backing
//! file is the image, and QEMU opens backing files read-only.

use hearth_sys::cmd::{CmdError, execute};
use nix::mount::{MntFlags, MsFlags};
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The path inside a root image where envd must be.
pub const ENVD_PATH: &str = "usr/bin/hearth-envd";

/// An image operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// No layers were given.
    #[error("a root image needs at least one layer")]
    NoLayers,
    /// A layer path cannot be used in an overlayfs mount option.
    #[error("layer path {path} contains ':' or ',' or is not absolute")]
    BadLayerPath {
        /// The layer.
        path: PathBuf,
    },
    /// The template's root has no envd.
    #[error("the template's root filesystem has no /{ENVD_PATH}")]
    NoEnvd,
    /// Flattening the layers failed.
    #[error("failed to mount the template's layers at {mountpoint}")]
    Mount {
        /// Where.
        mountpoint: PathBuf,
        /// The cause.
        #[source]
        err: nix::Error,
    },
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
    /// An external tool failed.
    #[error("failed to {what}")]
    Tool {
        /// What was attempted.
        what: &'static str,
        /// The cause.
        #[source]
        err: CmdError,
    },
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> ImageError + 'a {
    move |err| ImageError::Io {
        what,
        path: path.to_owned(),
        err,
    }
}

/// A read-only view of the layers, unmounted on drop.
struct Flattened {
    root: PathBuf,
    mounted: bool,
}

impl Flattened {
    fn new(layers: &[PathBuf], mountpoint: &Path) -> Result<Self, ImageError> {
        match layers {
            [] => Err(ImageError::NoLayers),
            [only] => Ok(Self {
                root: only.clone(),
                mounted: false,
            }),
            _ => {
                for l in layers {
                    let s = l.to_string_lossy();
                    if !l.is_absolute() || s.contains([':', ',']) {
                        return Err(ImageError::BadLayerPath { path: l.clone() });
                    }
                }
                fs::create_dir_all(mountpoint).map_err(io_err("create", mountpoint))?;
                let lower = layers
                    .iter()
                    .map(|l| l.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(":");
                nix::mount::mount(
                    Some("overlay"),
                    mountpoint,
                    Some("overlay"),
                    MsFlags::MS_RDONLY,
                    Some(format!("lowerdir={lower}").as_str()),
                )
                .map_err(|err| ImageError::Mount {
                    mountpoint: mountpoint.to_owned(),
                    err,
                })?;
                Ok(Self {
                    root: mountpoint.to_owned(),
                    mounted: true,
                })
            }
        }
    }
}

impl Drop for Flattened {
    fn drop(&mut self) {
        if self.mounted
            && let Err(err) = nix::mount::umount2(&self.root, MntFlags::MNT_DETACH)
        {
            tracing::warn!(mountpoint = %self.root.display(), error = %err, "cannot unmount flattened layers");
        }
    }
}

/// Bytes used by the files under `root` (apparent sizes, rounded up to 4 KiB blocks).
fn tree_size(root: &Path) -> std::io::Result<u64> {
    let mut total = 0u64;
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            total += meta.len().div_ceil(4096) * 4096 + 256;
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(total)
}

/// Builds a sparse ext4 image at `out` holding the flattened `layers` (upper-most
/// first), at least `size_mb` MiB and large enough for the content plus headroom.
/// `scratch` is a private directory for the overlay mountpoint.
pub fn build_root_image(
    layers: &[PathBuf],
    size_mb: u32,
    out: &Path,
    scratch: &Path,
) -> Result<u64, ImageError> {
    let flat = Flattened::new(layers, &scratch.join("flattened"))?;
    if !flat.root.join(ENVD_PATH).is_file() {
        return Err(ImageError::NoEnvd);
    }
    let content = tree_size(&flat.root).map_err(io_err("measure", &flat.root))?;
    // ext4 metadata (inode tables, journal) plus room for the sandbox to write.
    let needed = content + content / 4 + (256 << 20);
    let size = (u64::from(size_mb) << 20).max(needed).div_ceil(1 << 20) << 20;
    let file = fs::File::create(out).map_err(io_err("create", out))?;
    file.set_len(size).map_err(io_err("size", out))?;
    drop(file);
    execute(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "hearth-root", "-m", "0", "-b", "4096"])
            // Initialise everything now: a lazily initialised fs makes every guest's
            // first minutes write inode tables, dirtying each sandbox's overlay.
            .args(["-E", "lazy_itable_init=0,lazy_journal_init=0"])
            .arg("-d")
            .arg(&flat.root)
            .arg(out),
    )
    .map_err(|err| ImageError::Tool {
        what: "make the ext4 root image",
        err,
    })?;
    drop(flat);
    fs::File::open(out)
        .and_then(|f| f.sync_all())
        .map_err(io_err("sync", out))?;
    Ok(size)
}

/// The format QEMU must read a backing file with: `qcow2` if it has the magic, else
/// `raw`.
pub fn image_format(path: &Path) -> Result<&'static str, ImageError> {
    let mut magic = [0u8; 4];
    let mut f = fs::File::open(path).map_err(io_err("open", path))?;
    match f.read_exact(&mut magic) {
        Ok(()) if &magic == b"QFI\xfb" => Ok("qcow2"),
        Ok(()) => Ok("raw"),
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => Ok("raw"),
        Err(err) => Err(io_err("read", path)(err)),
    }
}

/// Creates a qcow2 overlay at `out` backed by `backing` (absolute path), same size.
pub fn create_overlay(qemu_img: &Path, backing: &Path, out: &Path) -> Result<(), ImageError> {
    let format = image_format(backing)?;
    execute(
        Command::new(qemu_img)
            .args(["create", "-q", "-f", "qcow2", "-F", format, "-b"])
            .arg(backing)
            .arg(out),
    )
    .map_err(|err| ImageError::Tool {
        what: "create the disk overlay",
        err,
    })?;
    Ok(())
}

/// Writes an overlay's changes into its backing file (template preparation only).
pub fn commit_overlay(qemu_img: &Path, overlay: &Path) -> Result<(), ImageError> {
    execute(Command::new(qemu_img).args(["commit", "-q"]).arg(overlay)).map_err(|err| {
        ImageError::Tool {
            what: "commit the template overlay",
            err,
        }
    })?;
    Ok(())
}

/// The virtual size of a qcow2 or raw image, bytes.
pub fn virtual_size(path: &Path) -> Result<u64, ImageError> {
    let mut f = fs::File::open(path).map_err(io_err("open", path))?;
    let mut header = [0u8; 32];
    if f.read_exact(&mut header).is_ok() && &header[..4] == b"QFI\xfb" {
        let bytes: [u8; 8] = header[24..32].try_into().expect("8 bytes");
        return Ok(u64::from_be_bytes(bytes));
    }
    Ok(f.metadata().map_err(io_err("stat", path))?.len())
}

/// Bytes a file occupies on disk (sparse-aware).
pub fn allocated_size(path: &Path) -> Result<u64, ImageError> {
    Ok(fs::metadata(path).map_err(io_err("stat", path))?.blocks() * 512)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hearth-image-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn root_image_requires_envd() {
        let d = scratch("noenvd");
        fs::create_dir_all(d.join("root/etc")).unwrap();
        let err = build_root_image(&[d.join("root")], 64, &d.join("img"), &d).unwrap_err();
        assert!(matches!(err, ImageError::NoEnvd), "{err}");
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn layer_paths_with_separators_are_rejected() {
        let d = scratch("badlayer");
        let err = build_root_image(
            &[PathBuf::from("/a:b"), PathBuf::from("/c")],
            64,
            &d.join("img"),
            &d,
        )
        .unwrap_err();
        assert!(matches!(err, ImageError::BadLayerPath { .. }), "{err}");
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn raw_and_qcow2_are_told_apart() {
        let d = scratch("format");
        fs::write(d.join("raw"), b"\0\0\0\0").unwrap();
        let mut q = b"QFI\xfb".to_vec();
        q.extend_from_slice(&[0; 20]);
        q.extend_from_slice(&(5u64 << 30).to_be_bytes());
        fs::write(d.join("q"), &q).unwrap();
        assert_eq!(image_format(&d.join("raw")).unwrap(), "raw");
        assert_eq!(image_format(&d.join("q")).unwrap(), "qcow2");
        assert_eq!(virtual_size(&d.join("q")).unwrap(), 5 << 30);
        fs::remove_dir_all(d).unwrap();
    }
}
