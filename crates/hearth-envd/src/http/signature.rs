// SPDX-License-Identifier: Apache-2.0
//! Signed `/files` URLs (§2.7): `v1_` + unpadded standard base64 of
//! SHA-256(`path:op:username:token[:expiration]`).
//!
//! `path` and `username` are the query values exactly as the client signed them
//! (percent-decoded, not resolved); a missing username signs as `""`. The messages
//! of failures are upstream's, which clients may show to users.

use crate::auth::constant_time_eq;
use crate::error::EnvdError;
use base64::Engine;
use sha2::{Digest, Sha256};

/// What a signed URL may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `GET /files`.
    Read,
    /// `POST /files`.
    Write,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
        }
    }
}

/// Computes the signature of a URL for `token`.
pub fn sign(
    path: &str,
    op: Operation,
    username: &str,
    token: &str,
    expiration: Option<i64>,
) -> String {
    let mut hasher = Sha256::new();
    hasher.update(path.as_bytes());
    hasher.update(b":");
    hasher.update(op.as_str().as_bytes());
    hasher.update(b":");
    hasher.update(username.as_bytes());
    hasher.update(b":");
    hasher.update(token.as_bytes());
    if let Some(exp) = expiration {
        hasher.update(b":");
        hasher.update(exp.to_string().as_bytes());
    }
    let digest = hasher.finalize();
    format!(
        "v1_{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

/// Checks a URL's signature: it must match (compared in constant time), then not be
/// expired at `now_unix`. Every failure is `unauthenticated` (HTTP 401).
pub fn verify(
    token: &str,
    signature: Option<&str>,
    path: &str,
    op: Operation,
    username: &str,
    expiration: Option<i64>,
    now_unix: i64,
) -> Result<(), EnvdError> {
    let Some(given) = signature else {
        return Err(EnvdError::Unauthenticated(
            "missing signature query parameter".to_owned(),
        ));
    };
    let expected = sign(path, op, username, token, expiration);
    if !constant_time_eq(expected.as_bytes(), given.as_bytes()) {
        return Err(EnvdError::Unauthenticated("invalid signature".to_owned()));
    }
    if expiration.is_some_and(|exp| exp < now_unix) {
        return Err(EnvdError::Unauthenticated(
            "signature is already expired".to_owned(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors from the protocol reference (§2.7), computed with E2B's SDK code.
    const PATH: &str = "/home/user/a.txt";
    const TOKEN: &str = "tok123";
    const EXP: i64 = 1_795_901_286;

    #[test]
    fn reference_vector_with_expiration() {
        assert_eq!(
            sign(PATH, Operation::Read, "", TOKEN, Some(EXP)),
            "v1_gEJ2im0sPSRRrh1Ew62eIQRAkuE34/txANT7qeQ4VWk"
        );
    }

    #[test]
    fn reference_vector_without_expiration() {
        assert_eq!(
            sign(PATH, Operation::Read, "", TOKEN, None),
            "v1_byj2OB/vujgbES/1KAKCaR27E+9eOrB6PzeTnIL8L6M"
        );
    }

    #[test]
    fn operation_and_user_are_part_of_the_signature() {
        let read = sign(PATH, Operation::Read, "", TOKEN, None);
        assert_ne!(read, sign(PATH, Operation::Write, "", TOKEN, None));
        assert_ne!(read, sign(PATH, Operation::Read, "root", TOKEN, None));
    }

    #[test]
    fn valid_signature_verifies_until_it_expires() {
        let sig = sign(PATH, Operation::Write, "user", TOKEN, Some(EXP));
        let check = |now| {
            verify(
                TOKEN,
                Some(&sig),
                PATH,
                Operation::Write,
                "user",
                Some(EXP),
                now,
            )
        };
        assert!(check(EXP).is_ok());
        let err = check(EXP + 1).unwrap_err();
        assert_eq!(err.client_message(), "signature is already expired");
        assert!(matches!(err, EnvdError::Unauthenticated(_)));
    }

    #[test]
    fn wrong_or_missing_signature_is_unauthenticated() {
        let sig = sign(PATH, Operation::Read, "", TOKEN, None);
        let err = verify(TOKEN, Some(&sig), PATH, Operation::Write, "", None, 0).unwrap_err();
        assert_eq!(err.client_message(), "invalid signature");
        let err = verify(TOKEN, None, PATH, Operation::Read, "", None, 0).unwrap_err();
        assert_eq!(err.client_message(), "missing signature query parameter");
        // A tampered expiration invalidates the signature before expiry is looked at.
        let sig = sign(PATH, Operation::Read, "", TOKEN, Some(EXP));
        let err = verify(
            TOKEN,
            Some(&sig),
            PATH,
            Operation::Read,
            "",
            Some(EXP + 9),
            0,
        )
        .unwrap_err();
        assert_eq!(err.client_message(), "invalid signature");
    }
}
