// SPDX-License-Identifier: Apache-2.0
//! API keys: `e2b_` + 40 hex characters, stored as SHA-256 only.

use crate::ApiState;
use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hearth_store::{ApiKeyRecord, Store, StoreError};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// SHA-256 of a key, hex.
pub fn hash_key(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `key` has E2B's key shape.
pub fn is_valid_key_format(key: &str) -> bool {
    key.strip_prefix("e2b_").is_some_and(|h| {
        h.len() == 40
            && h.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    })
}

fn mask(key: &str) -> String {
    format!(
        "{}…{}",
        &key[..8.min(key.len())],
        &key[key.len().saturating_sub(4)..]
    )
}

/// Generates a new random key.
pub fn generate_key() -> String {
    let bytes: [u8; 20] = rand::random();
    format!(
        "e2b_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// Stores `key` under `name`; an existing identical key is left as it is.
pub fn register_key(store: &Store, key: &str, name: &str) -> Result<ApiKeyRecord, StoreError> {
    let hash = hash_key(key);
    if let Some(existing) = store.api_key_by_hash(&hash)? {
        return Ok(existing);
    }
    let record = ApiKeyRecord {
        id: hash[..12].to_owned(),
        hash,
        mask: mask(key),
        name: name.to_owned(),
        // The store keeps milliseconds; truncate so the returned record equals the stored one.
        created_at: {
            let now = OffsetDateTime::now_utc();
            now.replace_millisecond(now.millisecond()).unwrap_or(now)
        },
    };
    store.insert_api_key(&record)?;
    Ok(record)
}

/// Middleware: every route but `/health` needs a known `X-API-Key`.
pub async fn require_api_key(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    if req.uri().path() == "/health" {
        return next.run(req).await;
    }
    let Some(key) = req.headers().get("x-api-key").and_then(|v| v.to_str().ok()) else {
        return ApiError::Unauthenticated("missing API key (X-API-Key header)".into())
            .into_response();
    };
    match state.node.store().api_key_by_hash(&hash_key(key.trim())) {
        Ok(Some(_)) => next.run(req).await,
        Ok(None) => ApiError::Unauthenticated("invalid API key".into()).into_response(),
        Err(e) => ApiError::Internal {
            public: "failed to check the API key".into(),
            error_code: "internal_server_error",
            detail: hearth_types::ErrorChain(&e).to_string(),
        }
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_e2b_shape() {
        let k = generate_key();
        assert!(is_valid_key_format(&k), "{k}");
        assert!(!is_valid_key_format("e2b_xyz"));
    }

    #[test]
    fn register_is_idempotent_and_stores_only_the_hash() {
        let store = Store::open_in_memory().unwrap();
        let k = generate_key();
        let a = register_key(&store, &k, "a").unwrap();
        let b = register_key(&store, &k, "b").unwrap();
        assert_eq!(a, b);
        assert_ne!(a.hash, k);
        assert!(!a.mask.contains(&k[8..36]));
    }
}
