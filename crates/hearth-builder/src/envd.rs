// SPDX-License-Identifier: Apache-2.0
//! The envd layer: the static `hearth-envd` binary injected into every template.
//!
//! The layer holds `/usr/bin/hearth-envd` and the symlink `/usr/bin/envd` (the path
//! E2B images use) and nothing else. Its name is `envd-<hash>` with the hash of the
//! binary, so a rebuilt envd gets a new layer and running sandboxes keep the old one.
//!
//! envd runs inside images with any libc or none, so only a statically linked binary
//! (an ELF without a `PT_INTERP` program header) is accepted.

use crate::layer::{Layer, LayerCache, LayerError};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Environment variable naming the envd binary explicitly.
pub const ENVD_BINARY_ENV: &str = "HEARTH_ENVD_BINARY";

/// How to produce a usable envd binary, for error messages.
const BUILD_HINT: &str = "build it with scripts/build-envd \
     (cargo build --profile envd --target x86_64-unknown-linux-gnu -p hearth-envd \
     with RUSTFLAGS=\"-C target-feature=+crt-static\")";

/// Finding, checking or installing the envd binary failed.
#[derive(Debug, thiserror::Error)]
pub enum EnvdError {
    /// The layer cache failed.
    #[error(transparent)]
    Cache(#[from] LayerError),
    /// No candidate location holds the binary.
    #[error("hearth-envd not found (looked in {searched}); {hint}", hint = BUILD_HINT)]
    NotFound {
        /// The places looked at, comma-separated.
        searched: String,
    },
    /// The binary could not be read.
    #[error("failed to read {path}")]
    Read {
        /// The binary.
        path: PathBuf,
        /// The I/O error.
        #[source]
        err: io::Error,
    },
    /// The file is not a 64-bit ELF executable.
    #[error("{path} is not a 64-bit little-endian ELF executable")]
    NotElf {
        /// The file.
        path: PathBuf,
    },
    /// The binary is dynamically linked and would not run in foreign images.
    #[error("{path} is dynamically linked (it has a program interpreter); {hint}", hint = BUILD_HINT)]
    Dynamic {
        /// The binary.
        path: PathBuf,
    },
    /// The layer's files could not be written.
    #[error("failed to write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        err: io::Error,
    },
}

/// Locates the static envd binary.
///
/// Looks, in order, at `$HEARTH_ENVD_BINARY`, `hearth-envd` next to the running
/// executable, the workspace's static build output (for development:
/// `target/x86_64-unknown-linux-gnu/envd/hearth-envd`, relative to the running
/// executable's `target/` and to this crate's workspace), and
/// `/usr/local/bin/hearth-envd`. The first static one wins; a dynamic one (a plain
/// `cargo build` puts one next to `hearth`) is skipped, and reported if no static
/// one exists. `$HEARTH_ENVD_BINARY`, when set, must be static.
pub fn find_envd_binary() -> Result<PathBuf, EnvdError> {
    let candidates = candidates();
    let mut first_err = None;
    for (i, path) in candidates.iter().enumerate() {
        if path.is_file() {
            match check_static(path) {
                Ok(()) => return Ok(path.clone()),
                Err(e) if i == 0 && std::env::var_os(ENVD_BINARY_ENV).is_some() => return Err(e),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    Err(EnvdError::NotFound {
        searched: candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

fn candidates() -> Vec<PathBuf> {
    let dev_output = Path::new("x86_64-unknown-linux-gnu/envd/hearth-envd");
    let mut out = Vec::new();
    if let Some(path) = std::env::var_os(ENVD_BINARY_ENV) {
        out.push(PathBuf::from(path));
    }
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_owned))
    {
        out.push(exe_dir.join("hearth-envd"));
        // target/<profile>/hearth → target/x86_64-unknown-linux-gnu/envd/hearth-envd
        if let Some(target_dir) = exe_dir.parent() {
            out.push(target_dir.join(dev_output));
        }
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    out.push(workspace.join("target").join(dev_output));
    out.push(PathBuf::from("/usr/local/bin/hearth-envd"));
    out
}

/// Checks that `path` is a statically linked 64-bit ELF (no `PT_INTERP` header).
pub fn check_static(path: &Path) -> Result<(), EnvdError> {
    let bytes = read_elf_headers(path)?;
    match has_interpreter(&bytes) {
        None => Err(EnvdError::NotElf {
            path: path.to_owned(),
        }),
        Some(true) => Err(EnvdError::Dynamic {
            path: path.to_owned(),
        }),
        Some(false) => Ok(()),
    }
}

/// Reads enough of the file to hold the ELF header and program header table.
fn read_elf_headers(path: &Path) -> Result<Vec<u8>, EnvdError> {
    let read_err = |err| EnvdError::Read {
        path: path.to_owned(),
        err,
    };
    let mut file = fs::File::open(path).map_err(read_err)?;
    // Program headers directly follow the ELF header in every linker's output; 64 KiB
    // covers hundreds of them.
    let mut buf = Vec::with_capacity(64 * 1024);
    file.by_ref()
        .take(64 * 1024)
        .read_to_end(&mut buf)
        .map_err(read_err)?;
    Ok(buf)
}

/// Whether an ELF64 little-endian image has a `PT_INTERP` program header; `None` if
/// `elf` is not such an image or its header table is out of range.
fn has_interpreter(elf: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let u16_at = |at: usize| Some(u16::from_le_bytes(elf.get(at..at + 2)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(elf.get(at..at + 8)?.try_into().ok()?));
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    if phentsize < 4 {
        return None;
    }
    for i in 0..phnum {
        let at = phoff.checked_add(i.checked_mul(phentsize)?)?;
        let p_type = u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?);
        if p_type == PT_INTERP {
            return Some(true);
        }
    }
    Some(false)
}

/// SHA-256 of a file, hex-encoded.
fn sha256_file(path: &Path) -> Result<String, EnvdError> {
    let read_err = |err| EnvdError::Read {
        path: path.to_owned(),
        err,
    };
    let mut file = fs::File::open(path).map_err(read_err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(crate::hex(&hasher.finalize()))
}

/// Returns the layer holding `envd_binary` under `home`, creating it if needed.
pub fn ensure_envd_layer(home: &Path, envd_binary: &Path) -> Result<Layer, EnvdError> {
    check_static(envd_binary)?;
    let digest = sha256_file(envd_binary)?;
    let name = format!("envd-{}", &digest[..16]);
    let cache = LayerCache::open(home)?;
    cache.ensure(&name, |staging| {
        let bin = staging.join("rootfs/usr/bin");
        let write_err = |path: &Path| {
            let path = path.to_owned();
            move |err| EnvdError::Write { path, err }
        };
        fs::create_dir_all(&bin).map_err(write_err(&bin))?;
        // Overlayfs shows the upper-most layer's directory attributes: these must
        // match Debian's or the merged /usr would change mode.
        for dir in [
            staging.join("rootfs"),
            staging.join("rootfs/usr"),
            bin.clone(),
        ] {
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
                .map_err(write_err(&dir))?;
        }
        let target = bin.join("hearth-envd");
        fs::copy(envd_binary, &target).map_err(write_err(&target))?;
        fs::set_permissions(&target, fs::Permissions::from_mode(0o755))
            .map_err(write_err(&target))?;
        let link = bin.join("envd");
        std::os::unix::fs::symlink("hearth-envd", &link).map_err(write_err(&link))?;
        let note = staging.join("recipe.txt");
        fs::write(&note, format!("hearth envd layer\nsha256: {digest}\n"))
            .map_err(write_err(&note))?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 header followed by `types` as program headers.
    fn fake_elf(types: &[u32]) -> Vec<u8> {
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&u16::try_from(types.len()).unwrap().to_le_bytes());
        for t in types {
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&t.to_le_bytes());
            elf.extend(ph);
        }
        elf
    }

    #[test]
    fn elf_with_interp_is_dynamic() {
        assert_eq!(has_interpreter(&fake_elf(&[6, 3, 1])), Some(true));
    }

    #[test]
    fn elf_without_interp_is_static() {
        assert_eq!(has_interpreter(&fake_elf(&[6, 1, 1, 2])), Some(false));
    }

    #[test]
    fn non_elf_and_truncated_tables_are_rejected() {
        assert_eq!(has_interpreter(b"#!/bin/sh\n"), None);
        let mut elf = fake_elf(&[1]);
        elf.truncate(66);
        assert_eq!(has_interpreter(&elf), None);
    }

    #[test]
    fn host_shell_is_dynamic() {
        // Debian's /bin/sh is dynamically linked; the check must say so.
        let err = check_static(Path::new("/bin/sh")).unwrap_err();
        assert!(matches!(err, EnvdError::Dynamic { .. }), "{err}");
        assert!(err.to_string().contains("scripts/build-envd"));
    }

    #[test]
    fn envd_layer_is_named_by_content_and_holds_binary_and_symlink() {
        let home = tempfile::tempdir().unwrap();
        let bin = home.path().join("hearth-envd");
        fs::write(&bin, fake_elf(&[1])).unwrap();
        let layer = ensure_envd_layer(home.path(), &bin).unwrap();
        let digest = sha256_file(&bin).unwrap();
        assert_eq!(layer.name(), format!("envd-{}", &digest[..16]));
        let installed = layer.rootfs().join("usr/bin/hearth-envd");
        assert_eq!(fs::read(&installed).unwrap(), fs::read(&bin).unwrap());
        let mode = fs::metadata(&installed).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            fs::read_link(layer.rootfs().join("usr/bin/envd")).unwrap(),
            PathBuf::from("hearth-envd")
        );

        // Different content, different layer; the old one stays.
        fs::write(&bin, fake_elf(&[1, 1])).unwrap();
        let second = ensure_envd_layer(home.path(), &bin).unwrap();
        assert_ne!(second.name(), layer.name());
        assert!(layer.rootfs().is_dir());
    }

    #[test]
    fn dynamic_binary_gets_no_layer() {
        let home = tempfile::tempdir().unwrap();
        let err = ensure_envd_layer(home.path(), Path::new("/bin/sh")).unwrap_err();
        assert!(matches!(err, EnvdError::Dynamic { .. }));
    }
}
