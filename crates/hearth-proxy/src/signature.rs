// SPDX-License-Identifier: Apache-2.0
//! Routing of signed `/files` URLs, which carry no sandbox id (§2.7, §3.3).
//!
//! The signature is `v1_` + base64(SHA-256("path:op:user:token[:exp]")) without
//! padding. Only the sandbox whose token produced it verifies, so recomputing it
//! against each live sandbox's token identifies the target. envd verifies the
//! signature again (and its expiry); this only chooses where to send the request.

use base64::Engine;
use hearth_node::Node;
use hearth_types::SandboxId;
use sha2::{Digest, Sha256};

/// Computes an E2B file-URL signature.
pub(crate) fn sign(path: &str, op: &str, user: &str, token: &str, exp: Option<&str>) -> String {
    let raw = match exp {
        Some(e) => format!("{path}:{op}:{user}:{token}:{e}"),
        None => format!("{path}:{op}:{user}:{token}"),
    };
    let digest = Sha256::digest(raw.as_bytes());
    format!(
        "v1_{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

/// Finds the sandbox a signed `/files` request is for.
pub(crate) fn find_sandbox(node: &Node, method: &http::Method, query: &str) -> Option<SandboxId> {
    let mut path = None;
    let mut user = String::new();
    let mut sig = None;
    let mut exp = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "path" => path = Some(v.into_owned()),
            "username" => user = v.into_owned(),
            "signature" => sig = Some(v.into_owned()),
            "signature_expiration" => exp = Some(v.into_owned()),
            _ => {}
        }
    }
    let (path, sig) = (path?, sig?);
    let op = if method == http::Method::GET {
        "read"
    } else {
        "write"
    };
    node.sandbox_for_token(|token| sign(&path, op, &user, token, exp.as_deref()) == sig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_vectors() {
        assert_eq!(
            sign("/home/user/a.txt", "read", "", "tok123", Some("1795901286")),
            "v1_gEJ2im0sPSRRrh1Ew62eIQRAkuE34/txANT7qeQ4VWk"
        );
        assert_eq!(
            sign("/home/user/a.txt", "read", "", "tok123", None),
            "v1_byj2OB/vujgbES/1KAKCaR27E+9eOrB6PzeTnIL8L6M"
        );
    }
}
