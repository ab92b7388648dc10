// SPDX-License-Identifier: Apache-2.0
//! The sandbox data plane: forwards HTTP from SDKs, browsers and `curl` to a port of a
//! sandbox.
//!
//! Routing (§3.3, §5.10): a request carrying `E2b-Sandbox-Id` (+ `E2b-Sandbox-Port`,
//! default 49983) goes to that sandbox; so does a request whose Host is
//! `<port>-<sandboxID>.<domain>`. Signed `/files` URLs carry no sandbox identity; they
//! are routed by finding the sandbox whose token verifies the signature.
//!
//! Errors are E2B's: 502 JSON with "The sandbox was not found" (the SDKs map it to
//! "not running") or "The sandbox is running but port is not open". envd's
//! orchestrator-only paths (`/init`, …) are 404 from outside. When a sandbox goes
//! away its in-flight responses are cut, so clients see the stream end instead of
//! hanging on a dead connection.

mod body;
mod pools;
mod resolve;
mod route;
mod signature;

pub use route::{ProxyTarget, target_of};

use axum::body::Body;
use body::Cancellable;
use hearth_node::{Node, Route};
use hearth_types::{ErrorChain, SandboxId};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// envd's port.
pub const ENVD_PORT: u16 = 49983;

/// Paths of envd only the node may call.
const ENVD_PRIVATE_PATHS: &[&str] = &[
    "/init",
    "/upgrade",
    "/freeze",
    "/unfreeze",
    "/fsfreeze",
    "/fsthaw",
    "/collapse",
];

/// How long a request waits for a sandbox that is changing state.
const BUSY_WAIT: Duration = Duration::from_secs(30);

/// The proxy.
#[derive(Debug, Clone)]
pub struct Proxy {
    node: Node,
    connector: HttpConnector<resolve::SandboxResolver>,
    /// Kept-alive connections, per running incarnation of each sandbox: a microVM
    /// that ends sends no FIN, so only dropping its pool closes its connections.
    pools: std::sync::Arc<pools::Pools<Client<HttpConnector<resolve::SandboxResolver>, Body>>>,
    domain: String,
}

impl Proxy {
    /// A proxy for `node`'s sandboxes; `domain` is the suffix of host-routed names.
    pub fn new(node: Node, domain: String) -> Self {
        let mut connector =
            HttpConnector::new_with_resolver(resolve::SandboxResolver { node: node.clone() });
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        Self {
            node,
            connector,
            pools: pools::Pools::new(),
            domain,
        }
    }

    /// The client (connection pool) of the sandbox incarnation whose route carries
    /// `ended`.
    fn client(
        &self,
        id: &SandboxId,
        ended: &tokio_util::sync::CancellationToken,
    ) -> Client<HttpConnector<resolve::SandboxResolver>, Body> {
        self.pools.get(id, ended, || {
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(64)
                .build(self.connector.clone())
        })
    }

    /// Whether this request is for a sandbox (as opposed to the API).
    pub fn wants(&self, req: &Request<Body>) -> Option<ProxyTarget> {
        if let Some(t) = target_of(req.headers(), &self.domain) {
            return Some(t);
        }
        // A signed file URL without sandbox identity.
        if req.uri().path() == "/files"
            && req.uri().query().is_some_and(|q| q.contains("signature="))
        {
            let id = signature::find_sandbox(
                &self.node,
                req.method(),
                req.uri().query().unwrap_or_default(),
            )?;
            return Some(ProxyTarget {
                id: id.to_string(),
                port: ENVD_PORT,
            });
        }
        None
    }

    /// Forwards `req` to `target`.
    pub async fn forward(&self, target: ProxyTarget, mut req: Request<Body>) -> Response<Body> {
        let Ok(id) = SandboxId::parse(&target.id) else {
            return not_found(&target.id);
        };
        let route = match self.resolve(&id).await {
            Some(r) => r,
            None => return not_found(&target.id),
        };
        let Route::Running {
            generation,
            cancel,
            traffic_token,
            ..
        } = route
        else {
            return not_found(&target.id);
        };
        if target.port == ENVD_PORT && ENVD_PRIVATE_PATHS.contains(&req.uri().path()) {
            return json_error(
                StatusCode::NOT_FOUND,
                serde_json::json!({
                    "code": 404, "message": "not found"
                }),
            );
        }
        if target.port != ENVD_PORT
            && let Some(expected) = traffic_token
        {
            let given = req
                .headers()
                .get("e2b-traffic-access-token")
                .and_then(|v| v.to_str().ok());
            if given != Some(expected.as_str()) {
                return json_error(
                    StatusCode::FORBIDDEN,
                    serde_json::json!({
                        "sandboxId": target.id, "code": 403,
                        "message": "missing or invalid traffic access token (e2b-traffic-access-token)"
                    }),
                );
            }
        }
        let upstream = format!(
            "{}:{}",
            resolve::upstream_host(&id, generation),
            target.port
        );
        let upgrade = is_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let out = match rewrite(req, &upstream, upgrade) {
            Ok(r) => r,
            Err(e) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({
                        "code": 400, "message": format!("bad request: {e}")
                    }),
                );
            }
        };
        let client = self.client(&id, &cancel);
        let resp = tokio::select! {
            r = client.request(out) => r,
            _ = cancel.cancelled() => return not_found(&target.id),
        };
        match resp {
            Ok(mut resp) => {
                if upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    let server_upgrade = hyper::upgrade::on(&mut resp);
                    if let Some(client_upgrade) = client_upgrade {
                        tokio::spawn(splice(client_upgrade, server_upgrade, cancel.clone()));
                    }
                    let (parts, _) = resp.into_parts();
                    return Response::from_parts(parts, Body::empty());
                }
                let (mut parts, incoming) = resp.into_parts();
                strip_hop_headers(&mut parts.headers, false);
                Response::from_parts(parts, Body::new(Cancellable::new(incoming, cancel)))
            }
            Err(err) => {
                let refused = is_connection_refused(&err);
                if refused {
                    json_error(
                        StatusCode::BAD_GATEWAY,
                        serde_json::json!({
                            "sandboxId": target.id,
                            "message": "The sandbox is running but port is not open",
                            "port": target.port,
                            "code": 502,
                        }),
                    )
                } else if matches!(self.node.route(&id), Route::Running { .. }) {
                    tracing::warn!(sandbox_id = %id, port = target.port, error = %ErrorChain(&err), "proxy request failed");
                    json_error(
                        StatusCode::BAD_GATEWAY,
                        serde_json::json!({
                            "sandboxId": target.id,
                            "message": format!("failed to reach the sandbox on port {}", target.port),
                            "code": 502,
                        }),
                    )
                } else {
                    not_found(&target.id)
                }
            }
        }
    }

    /// The sandbox's route, waiting out transitions and resuming a paused sandbox
    /// whose policy allows traffic to wake it.
    async fn resolve(&self, id: &SandboxId) -> Option<Route> {
        let deadline = tokio::time::Instant::now() + BUSY_WAIT;
        loop {
            match self.node.route(id) {
                r @ Route::Running { .. } => return Some(r),
                Route::Gone => return None,
                Route::Paused { auto_resume: false } => return None,
                Route::Paused { auto_resume: true } => {
                    if let Err(e) = self.node.auto_resume(id).await {
                        tracing::warn!(sandbox_id = %id, error = %ErrorChain(&e), "auto-resume failed");
                        return None;
                    }
                }
                Route::Busy => {
                    if tokio::time::Instant::now() >= deadline {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
}

fn rewrite(
    req: Request<Body>,
    upstream: &str,
    upgrade: bool,
) -> Result<Request<Body>, http::Error> {
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    // The client's Host header stays as it was (servers in the sandbox may use it);
    // the URI's authority only selects the pooled connection and the address.
    parts.uri = format!("http://{upstream}{path}").parse::<http::Uri>()?;
    parts.version = http::Version::HTTP_11;
    strip_hop_headers(&mut parts.headers, upgrade);
    parts.headers.remove("e2b-sandbox-id");
    parts.headers.remove("e2b-sandbox-port");
    Ok(Request::from_parts(parts, body))
}

fn is_upgrade(h: &HeaderMap) -> bool {
    h.get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
        && h.contains_key(header::UPGRADE)
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), keeping the upgrade pair for
/// protocol switches.
fn strip_hop_headers(h: &mut HeaderMap, keep_upgrade: bool) {
    let listed: Vec<String> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !(keep_upgrade && t == "upgrade"))
        .collect();
    for name in listed {
        h.remove(name.as_str());
    }
    for name in [
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
    ] {
        h.remove(name);
    }
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        h.remove(header::CONNECTION);
        h.remove(header::UPGRADE);
    }
}

async fn splice(
    client: hyper::upgrade::OnUpgrade,
    server: hyper::upgrade::OnUpgrade,
    cancel: tokio_util::sync::CancellationToken,
) {
    let (Ok(client), Ok(server)) = (client.await, server.await) else {
        return;
    };
    let mut client = hyper_util::rt::TokioIo::new(client);
    let mut server = hyper_util::rt::TokioIo::new(server);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = cancel.cancelled() => {}
    }
}

fn is_connection_refused(err: &hyper_util::client::legacy::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        source = e.source();
    }
    false
}

fn json_error(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// E2B's answer for a sandbox that does not exist (or no longer runs).
pub fn not_found(id: &str) -> Response<Body> {
    json_error(
        StatusCode::BAD_GATEWAY,
        serde_json::json!({
            "sandboxId": id,
            "message": "The sandbox was not found",
            "code": 502,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_headers_are_removed_but_underscored_ones_kept() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-drop"),
        );
        h.insert("x-drop", HeaderValue::from_static("1"));
        h.insert("lang_version", HeaderValue::from_static("3.11"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        strip_hop_headers(&mut h, false);
        assert!(h.get("x-drop").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert!(h.get(header::TRANSFER_ENCODING).is_none());
        assert_eq!(h.get("lang_version").unwrap(), "3.11");
    }

    #[test]
    fn upgrade_requests_keep_the_upgrade_pair() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        strip_hop_headers(&mut h, true);
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
    }

    #[test]
    fn not_found_has_the_sdk_phrase() {
        let r = not_found("iabc");
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    }
}
