// SPDX-License-Identifier: Apache-2.0
//! The node's client for envd's orchestrator-only endpoint, `/init`.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// The body of envd's `/init`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InitBody {
    /// Sandbox-wide env vars.
    pub env_vars: BTreeMap<String, String>,
    /// The access token envd must require (absent: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    /// Host time, so envd can step a restored clock.
    #[serde(with = "time::serde::rfc3339")]
    pub timestamp: time::OffsetDateTime,
    /// Default user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_user: Option<String>,
    /// Default working directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_workdir: Option<String>,
    /// Extra trusted certificates (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
    /// Fresh random bytes (base64) for the guest's generator: clones of one snapshot
    /// must not share its state.
    pub entropy: String,
}

/// An HTTP/1.1 client for envd's `/init`.
#[derive(Debug, Clone)]
pub struct EnvdClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for EnvdClient {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        Self {
            // No keep-alive: `/init` is sent once per start, and an idle connection
            // to a microVM outlives it (a VM that ends sends no FIN).
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build(connector),
        }
    }
}

impl EnvdClient {
    /// Sends `/init`, authenticating with the first of `held` (tokens envd may hold
    /// now) it accepts, retrying briefly because a just-restored guest may need a
    /// moment to answer.
    pub async fn init(
        &self,
        addr: SocketAddr,
        body: &InitBody,
        held: &[String],
        budget: Duration,
    ) -> Result<(), String> {
        let json = serde_json::to_vec(body).map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + budget;
        let mut last_err = String::new();
        let mut candidate = 0;
        while tokio::time::Instant::now() < deadline {
            let mut req = http::Request::post(format!("http://{addr}/init"))
                .header(http::header::CONTENT_TYPE, "application/json");
            if let Some(t) = held.get(candidate) {
                req = req.header("x-access-token", t);
            }
            let req = req
                .body(Full::new(Bytes::from(json.clone())))
                .map_err(|e| e.to_string())?;
            match tokio::time::timeout(Duration::from_secs(2), self.client.request(req)).await {
                Ok(Ok(resp)) if resp.status().is_success() => return Ok(()),
                Ok(Ok(resp)) => {
                    let status = resp.status();
                    let text = resp
                        .into_body()
                        .collect()
                        .await
                        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                        .unwrap_or_default();
                    // envd holds another of the tokens: try the next one.
                    if status == http::StatusCode::UNAUTHORIZED && candidate + 1 < held.len() {
                        candidate += 1;
                        continue;
                    }
                    // Any other 4xx is a real answer (bad user): retrying won't help.
                    if status.is_client_error() {
                        return Err(format!("{status}: {text}"));
                    }
                    last_err = format!("{status}: {text}");
                }
                Ok(Err(e)) => last_err = e.to_string(),
                Err(_) => last_err = "timed out".to_owned(),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Err(last_err)
    }
}
