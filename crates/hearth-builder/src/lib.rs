// SPDX-License-Identifier: Apache-2.0
//! Builds and caches the root filesystem layers Hearth templates are stacked from.
//!
//! A template's root filesystem is a stack of read-only overlayfs lower layers. The
//! base template is two of them:
//! - a Debian bookworm layer made with `mmdebstrap` from Debian's packages (see
//!   [`debian`]), named by a hash of its recipe;
//! - a tiny layer holding the static `hearth-envd` binary (see [`envd`]), named by
//!   the binary's hash.
//!
//! Layers live under `<home>/layers/<name>/rootfs` and are installed atomically (see
//! [`layer`]): they are either complete or absent, and never change once installed.
//! Building needs root (mmdebstrap in root mode, chroot) and network access to the
//! Debian archive; the first build takes minutes, later calls return at once.
//! Progress goes through the [`Progress`] trait so a server can show it.

pub mod debian;
pub mod envd;
pub mod fsutil;
pub mod layer;
pub mod progress;

pub use debian::{DebianError, DebianRecipe, ensure_debian_layer};
pub use envd::{EnvdError, check_static, ensure_envd_layer, find_envd_binary};
pub use layer::{Layer, LayerCache, LayerError};
pub use progress::{ConsoleProgress, NoProgress, Progress};

use std::path::{Path, PathBuf};

/// Making the base template's layers failed.
#[derive(Debug, thiserror::Error)]
pub enum BuilderError {
    /// The Debian layer failed.
    #[error(transparent)]
    Debian(#[from] DebianError),
    /// The envd layer failed.
    #[error(transparent)]
    Envd(#[from] EnvdError),
}

/// The base template's layer root filesystems, upper-most first (the order
/// overlayfs's `lowerdir=` option takes), building any that are missing.
pub fn base_template_layers(
    home: &Path,
    envd_binary: &Path,
    progress: &dyn Progress,
) -> Result<Vec<PathBuf>, BuilderError> {
    let envd = ensure_envd_layer(home, envd_binary)?;
    let debian = ensure_debian_layer(home, progress)?;
    Ok(vec![envd.rootfs(), debian.rootfs()])
}

/// Lower-case hex encoding.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase_and_padded() {
        assert_eq!(hex(&[0x00, 0x0f, 0xab]), "000fab");
    }
}
