// SPDX-License-Identifier: Apache-2.0
//! `POST /init`: the orchestrator provisions a sandbox right after boot or resume.
//!
//! It sets the sandbox-wide env vars, the access token, the default user and workdir,
//! and steps the clock when it lags by more than 50 ms or leads by more than 5 s
//! (a restored snapshot wakes up with the clock of the moment it was taken). A request
//! whose `timestamp` is older than one already applied is stale and ignored.

use crate::error::EnvdError;
use crate::state::Envd;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{StatusCode, header};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use time::OffsetDateTime;

/// The `/init` body; every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitRequest {
    /// Replaces the sandbox-wide env vars (`E2B_SANDBOX` stays).
    pub env_vars: Option<BTreeMap<String, String>>,
    /// New access token; empty or absent clears it.
    pub access_token: Option<String>,
    /// Host time when the request was made.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub timestamp: Option<OffsetDateTime>,
    /// Default user.
    pub default_user: Option<String>,
    /// Default working directory.
    pub default_workdir: Option<String>,
    /// PEM certificates to add to the system trust store.
    pub ca_bundle: Option<String>,
    /// Fresh random bytes (base64) to mix into the kernel's generator (Hearth's
    /// extension): sandboxes restored from one snapshot start with one generator
    /// state, and must not produce the same "random" numbers.
    pub entropy: Option<String>,
}

/// Debian's (and most distributions') system bundle, read by OpenSSL, curl, git, apt.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Adds the certificates of `pem` that `bundle` lacks to it, atomically.
///
/// Appending (rather than running `update-ca-certificates`) works in any image and
/// keeps repeated `/init` calls (every resume sends one) idempotent.
fn install_ca_bundle(bundle: &std::path::Path, pem: &str) -> Result<(), EnvdError> {
    let current = match std::fs::read_to_string(bundle) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(EnvdError::io(format!("read {}", bundle.display()), e)),
    };
    let mut added = String::new();
    for cert in pem.split_inclusive("-----END CERTIFICATE-----") {
        let Some(start) = cert.find("-----BEGIN CERTIFICATE-----") else {
            continue;
        };
        let cert = cert[start..].trim();
        if !cert.ends_with("-----END CERTIFICATE-----") {
            return Err(EnvdError::InvalidArgument(
                "caBundle holds a truncated certificate".into(),
            ));
        }
        if !current.contains(cert) && !added.contains(cert) {
            added.push_str(cert);
            added.push('\n');
        }
    }
    if added.is_empty() {
        return Ok(());
    }
    let mut text = current;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&added);
    let tmp = bundle.with_extension("crt.hearth-tmp");
    if let Some(dir) = bundle.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| EnvdError::io(format!("create {}", dir.display()), e))?;
    }
    std::fs::write(&tmp, text).map_err(|e| EnvdError::io(format!("write {}", tmp.display()), e))?;
    std::fs::rename(&tmp, bundle)
        .map_err(|e| EnvdError::io(format!("replace {}", bundle.display()), e))
}

/// Handles `POST /init`.
pub async fn init(State(state): State<Arc<Envd>>, body: Bytes) -> Response {
    match apply(&state, &body) {
        Ok(()) => (
            StatusCode::NO_CONTENT,
            [
                ("x-envd-version", crate::ENVD_VERSION),
                (header::CACHE_CONTROL.as_str(), "no-store"),
            ],
        )
            .into_response(),
        Err(err) => err.into_response(),
    }
}

fn apply(state: &Envd, body: &[u8]) -> Result<(), EnvdError> {
    let req: InitRequest = if body.iter().all(u8::is_ascii_whitespace) {
        InitRequest::default()
    } else {
        serde_json::from_slice(body)
            .map_err(|e| EnvdError::InvalidArgument(format!("invalid /init body: {e}")))?
    };
    if let Some(seed) = req.entropy.as_deref() {
        mix_entropy(seed)?;
    }
    if let Some(ts) = req.timestamp {
        let mut last = state.last_init.write().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|l| ts < l) {
            tracing::info!(%ts, "ignoring stale /init");
            return Ok(());
        }
        *last = Some(ts);
        step_clock(ts);
    }
    if let Some(user) = req.default_user.as_deref().filter(|u| !u.is_empty()) {
        // An unknown default user would make every later request fail: refuse it now.
        state.users.lookup(user)?;
        state
            .defaults
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .user = user.to_owned();
    }
    if let Some(dir) = req.default_workdir.as_deref().filter(|d| !d.is_empty()) {
        state
            .defaults
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .workdir = Some(crate::users::clean(&PathBuf::from(dir)));
    }
    if let Some(pem) = req.ca_bundle.as_deref().filter(|p| !p.trim().is_empty()) {
        install_ca_bundle(std::path::Path::new(SYSTEM_BUNDLE), pem)?;
    }
    if let Some(vars) = req.env_vars {
        let mut env = state.env_vars.write().unwrap_or_else(|p| p.into_inner());
        env.clear();
        env.insert("E2B_SANDBOX".to_owned(), "true".to_owned());
        env.extend(vars);
    }
    *state
        .access_token
        .write()
        .unwrap_or_else(|p| p.into_inner()) = req.access_token.filter(|t| !t.is_empty());
    Ok(())
}

/// Mixes the `/init` request's entropy into the kernel's generator and reseeds it.
fn mix_entropy(seed: &str) -> Result<(), EnvdError> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(seed)
        .map_err(|e| EnvdError::InvalidArgument(format!("invalid /init entropy: {e}")))?;
    match hearth_sys::random::mix_and_reseed(&bytes) {
        Ok(reseeded) => tracing::debug!(bytes = bytes.len(), reseeded, "mixed in entropy"),
        // Not worth failing `/init` over: the generator still reseeds on its own.
        Err(err) => tracing::warn!(error = %err, "cannot mix in entropy"),
    }
    Ok(())
}

fn step_clock(host: OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    let lag = host - now;
    if lag <= time::Duration::milliseconds(50) && lag >= time::Duration::seconds(-5) {
        return;
    }
    let nanos = host.unix_timestamp_nanos();
    let ts = nix::sys::time::TimeSpec::new(
        i64::try_from(nanos / 1_000_000_000).unwrap_or(i64::MAX),
        i64::try_from(nanos % 1_000_000_000).unwrap_or(0),
    );
    match nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts) {
        Ok(()) => tracing::info!(lag_ms = lag.whole_milliseconds(), "stepped the clock"),
        // Containers share the host clock and may not set it; that clock is right anyway.
        Err(err) => tracing::debug!(error = %err, "cannot step the clock"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    const B: &str = "-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n";

    #[test]
    fn ca_bundle_is_appended_once() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("ca.crt");
        std::fs::write(&bundle, A).unwrap();
        install_ca_bundle(&bundle, &format!("{A}{B}")).unwrap();
        install_ca_bundle(&bundle, B).unwrap();
        let text = std::fs::read_to_string(&bundle).unwrap();
        assert_eq!(text.matches("AAAA").count(), 1);
        assert_eq!(text.matches("BBBB").count(), 1);
    }

    #[test]
    fn truncated_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("ca.crt");
        assert!(install_ca_bundle(&bundle, "-----BEGIN CERTIFICATE-----\nAAAA").is_err());
        assert!(!bundle.exists());
    }
}
