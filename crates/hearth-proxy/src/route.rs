// SPDX-License-Identifier: Apache-2.0
//! Which sandbox and port a request is for.

use http::HeaderMap;

/// A sandbox port to forward to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyTarget {
    /// Sandbox id (validated later).
    pub id: String,
    /// Port inside the sandbox.
    pub port: u16,
}

/// Reads the target from `E2b-Sandbox-Id`/`-Port` headers, else from a Host of the
/// form `<port>-<sandboxID>.<domain>` (with or without `:port`).
pub fn target_of(headers: &HeaderMap, domain: &str) -> Option<ProxyTarget> {
    if let Some(id) = headers.get("e2b-sandbox-id").and_then(|v| v.to_str().ok()) {
        let port = headers
            .get("e2b-sandbox-port")
            .and_then(|v| v.to_str().ok())
            .and_then(|p| p.trim().parse::<u16>().ok())
            .unwrap_or(crate::ENVD_PORT);
        return Some(ProxyTarget {
            id: id.trim().to_owned(),
            port,
        });
    }
    let host = headers.get(http::header::HOST)?.to_str().ok()?;
    let host = host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let (label, rest) = host.split_once('.')?;
    if !rest.eq_ignore_ascii_case(domain) {
        return None;
    }
    let (port, id) = label.split_once('-')?;
    let port = port.parse::<u16>().ok()?;
    if id.is_empty() {
        return None;
    }
    Some(ProxyTarget {
        id: id.to_ascii_lowercase(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn headers_win_and_port_defaults_to_envd() {
        let t = target_of(&headers(&[("e2b-sandbox-id", "iabc")]), "localhost").unwrap();
        assert_eq!(
            t,
            ProxyTarget {
                id: "iabc".into(),
                port: 49983
            }
        );
        let t = target_of(
            &headers(&[("e2b-sandbox-id", "iabc"), ("e2b-sandbox-port", "8080")]),
            "x",
        )
        .unwrap();
        assert_eq!(t.port, 8080);
    }

    #[test]
    fn host_routing_needs_the_domain() {
        let t = target_of(
            &headers(&[("host", "8080-iabc.localhost:3000")]),
            "localhost",
        )
        .unwrap();
        assert_eq!(
            t,
            ProxyTarget {
                id: "iabc".into(),
                port: 8080
            }
        );
        assert!(target_of(&headers(&[("host", "8080-iabc.example.com")]), "localhost").is_none());
        assert!(target_of(&headers(&[("host", "localhost:3000")]), "localhost").is_none());
        assert!(target_of(&headers(&[("host", "abc-iabc.localhost")]), "localhost").is_none());
        assert!(target_of(&headers(&[("host", "127.0.0.1:3000")]), "localhost").is_none());
    }
}
