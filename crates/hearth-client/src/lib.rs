// SPDX-License-Identifier: Apache-2.0
//! A small client for Hearth's E2B-compatible API and for envd (Connect JSON over
//! HTTP/1.1), used by the CLI, `hearth bench` and Rust tests.
//!
//! It speaks exactly the wire protocol the SDKs speak (enveloped Connect streams,
//! `X-Access-Token`, `E2b-Sandbox-Id` routing) but only what those callers need.

mod envd;

pub use envd::{Envd, ExecOutput, ProcessEvent, ProcessStream};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// A client failure.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request could not be sent or the connection failed.
    #[error("request to {url} failed")]
    Transport {
        /// Target.
        url: String,
        /// Cause.
        #[source]
        err: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The server answered with an error.
    #[error("{url}: HTTP {status}: {body}")]
    Status {
        /// Target.
        url: String,
        /// HTTP status.
        status: u16,
        /// Response body.
        body: String,
    },
    /// A Connect stream ended with an error.
    #[error("{code}: {message}")]
    Rpc {
        /// Connect code.
        code: String,
        /// Message.
        message: String,
    },
    /// The response could not be understood.
    #[error("invalid response: {0}")]
    Protocol(String),
}

pub(crate) type Http = HyperClient<HttpConnector, Full<Bytes>>;

pub(crate) fn http_client() -> Http {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    c.set_connect_timeout(Some(Duration::from_secs(10)));
    HyperClient::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(c)
}

/// A sandbox just created.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Created {
    /// Sandbox id.
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    /// envd access token.
    #[serde(rename = "envdAccessToken", default)]
    pub envd_access_token: Option<String>,
    /// Template id.
    #[serde(rename = "templateID")]
    pub template_id: String,
}

/// The control-plane client.
#[derive(Debug, Clone)]
pub struct Api {
    http: Http,
    base: String,
    key: String,
}

impl Api {
    /// A client for the API at `base` (e.g. `http://127.0.0.1:3000`).
    pub fn new(base: impl Into<String>, key: impl Into<String>) -> Self {
        Self {
            http: http_client(),
            base: base.into().trim_end_matches('/').to_owned(),
            key: key.into(),
        }
    }

    async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, Bytes), ClientError> {
        let url = format!("{}{}", self.base, path);
        let mut req = http::Request::builder()
            .method(method)
            .uri(&url)
            .header("x-api-key", &self.key);
        let body = match body {
            Some(v) => {
                req = req.header(http::header::CONTENT_TYPE, "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(body))
            .map_err(|e| ClientError::Transport {
                url: url.clone(),
                err: e.into(),
            })?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| ClientError::Transport {
                url: url.clone(),
                err: e.into(),
            })?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Transport {
                url: url.clone(),
                err: e.into(),
            })?
            .to_bytes();
        if status >= 300 && status != 404 {
            return Err(ClientError::Status {
                url,
                status,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        Ok((status, bytes))
    }

    /// Creates a sandbox from `template` living `timeout` seconds.
    pub async fn create(&self, template: &str, timeout: u64) -> Result<Created, ClientError> {
        let body = serde_json::json!({"templateID": template, "timeout": timeout});
        let (status, bytes) = self
            .call(http::Method::POST, "/v2/sandboxes", Some(body))
            .await?;
        if status == 404 {
            return Err(ClientError::Status {
                url: "/v2/sandboxes".into(),
                status,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Kills a sandbox; `false` if it did not exist.
    pub async fn kill(&self, id: &str) -> Result<bool, ClientError> {
        let (status, _) = self
            .call(http::Method::DELETE, &format!("/sandboxes/{id}"), None)
            .await?;
        Ok(status != 404)
    }

    /// Deletes a snapshot (or template); `false` if it did not exist.
    pub async fn delete_snapshot(&self, id: &str) -> Result<bool, ClientError> {
        let (status, _) = self
            .call(http::Method::DELETE, &format!("/templates/{id}"), None)
            .await?;
        Ok(status != 404)
    }

    /// Lists sandboxes (first page, up to 100).
    pub async fn list(&self) -> Result<Vec<serde_json::Value>, ClientError> {
        let (_, bytes) = self.call(http::Method::GET, "/v2/sandboxes", None).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// A sandbox's detail.
    pub async fn get(&self, id: &str) -> Result<Option<serde_json::Value>, ClientError> {
        let (status, bytes) = self
            .call(http::Method::GET, &format!("/sandboxes/{id}"), None)
            .await?;
        if status == 404 {
            return Ok(None);
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Pauses a sandbox (`memory`: keep memory and processes).
    pub async fn pause(&self, id: &str, memory: bool) -> Result<(), ClientError> {
        let (status, bytes) = self
            .call(
                http::Method::POST,
                &format!("/sandboxes/{id}/pause"),
                Some(serde_json::json!({"memory": memory})),
            )
            .await?;
        if status == 404 {
            return Err(ClientError::Status {
                url: format!("/sandboxes/{id}/pause"),
                status,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        Ok(())
    }

    /// Connects to (and resumes, if paused) a sandbox for `timeout` seconds.
    pub async fn connect(&self, id: &str, timeout: u64) -> Result<(), ClientError> {
        let (status, bytes) = self
            .call(
                http::Method::POST,
                &format!("/v2/sandboxes/{id}/connect"),
                Some(serde_json::json!({"timeout": timeout})),
            )
            .await?;
        if status == 404 {
            return Err(ClientError::Status {
                url: format!("/v2/sandboxes/{id}/connect"),
                status,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        Ok(())
    }

    /// Snapshots a sandbox; returns the snapshot id.
    pub async fn snapshot(&self, id: &str) -> Result<String, ClientError> {
        let (status, bytes) = self
            .call(
                http::Method::POST,
                &format!("/sandboxes/{id}/snapshots"),
                Some(serde_json::json!({})),
            )
            .await?;
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if status == 404 {
            return Err(ClientError::Status {
                url: format!("/sandboxes/{id}/snapshots"),
                status,
                body: v.to_string(),
            });
        }
        Ok(v["snapshotID"].as_str().unwrap_or_default().to_owned())
    }

    /// Forks a sandbox into `count` copies; returns their ids.
    pub async fn fork(&self, id: &str, count: usize) -> Result<Vec<String>, ClientError> {
        let (status, bytes) = self
            .call(
                http::Method::POST,
                &format!("/sandboxes/{id}/fork"),
                Some(serde_json::json!({"count": count, "timeout": 300})),
            )
            .await?;
        let v: Vec<serde_json::Value> =
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if status == 404 {
            return Err(ClientError::Status {
                url: format!("/sandboxes/{id}/fork"),
                status,
                body: String::new(),
            });
        }
        Ok(v.iter()
            .filter_map(|r| r["sandbox"]["sandboxID"].as_str().map(str::to_owned))
            .collect())
    }

    /// The latest `memUsed` sample of a sandbox, if any.
    pub async fn latest_metric(&self, id: &str) -> Result<Option<u64>, ClientError> {
        let (status, bytes) = self
            .call(http::Method::GET, &format!("/sandboxes/{id}/metrics"), None)
            .await?;
        if status == 404 {
            return Ok(None);
        }
        let v: Vec<serde_json::Value> =
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok(v.last().and_then(|m| m["memUsed"].as_u64()))
    }

    /// An envd client for `sandbox`, through the API's sandbox proxy.
    pub fn envd(&self, sandbox: &Created) -> Envd {
        Envd::via_proxy(
            &self.base,
            &sandbox.sandbox_id,
            sandbox.envd_access_token.clone(),
        )
    }
}
