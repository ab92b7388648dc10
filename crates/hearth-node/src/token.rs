// SPDX-License-Identifier: Apache-2.0
//! Deterministic envd access tokens.
//!
//! A sandbox's token is HMAC-SHA256(node seed, sandbox id): the same sandbox gets the
//! same token after a pause, a resume or a restart of hearth, without storing secrets
//! per sandbox. The seed is 32 random bytes kept in `$HEARTH_HOME/seed` (mode 0600).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The secret every token derives from.
#[derive(Clone)]
pub struct TokenSeed([u8; 32]);

impl std::fmt::Debug for TokenSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSeed(..)")
    }
}

impl TokenSeed {
    /// Loads the seed from `path`, creating it on first use.
    pub fn load_or_create(path: &Path) -> std::io::Result<Self> {
        if let Ok(bytes) = std::fs::read(path)
            && let Ok(seed) = <[u8; 32]>::try_from(bytes.as_slice())
        {
            return Ok(Self(seed));
        }
        let seed: [u8; 32] = rand::random();
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&seed)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(Self(seed))
    }

    /// A seed from fixed bytes (tests).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The access token of sandbox `id`: 64 hex characters.
    pub fn envd_token(&self, id: &str) -> String {
        self.mac(b"envd-access-token", id)
    }

    /// The traffic token of sandbox `id` (for non-envd ports when public traffic is off).
    pub fn traffic_token(&self, id: &str) -> String {
        self.mac(b"traffic-access-token", id)
    }

    fn mac(&self, purpose: &[u8], id: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .expect("HMAC accepts keys of any length");
        mac.update(purpose);
        mac.update(b":");
        mac.update(id.as_bytes());
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_deterministic_and_distinct() {
        let seed = TokenSeed::from_bytes([7; 32]);
        assert_eq!(seed.envd_token("iabc"), seed.envd_token("iabc"));
        assert_ne!(seed.envd_token("iabc"), seed.envd_token("iabd"));
        assert_ne!(seed.envd_token("iabc"), seed.traffic_token("iabc"));
        assert_eq!(seed.envd_token("iabc").len(), 64);
    }

    #[test]
    fn seed_survives_reload() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("seed");
        let a = TokenSeed::load_or_create(&p).unwrap();
        let b = TokenSeed::load_or_create(&p).unwrap();
        assert_eq!(a.envd_token("x"), b.envd_token("x"));
    }
}
