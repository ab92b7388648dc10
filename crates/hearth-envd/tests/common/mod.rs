// SPDX-License-Identifier: Apache-2.0
//! A real envd on an ephemeral loopback port, over a temporary root whose
//! `etc/passwd` maps `root` (0) and `user` (1000) to homes inside the temp dir.

#![allow(dead_code, clippy::unwrap_used)]

use bytes::Bytes;
use clap::Parser;
use hearth_envd::state::Envd;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// uid/gid of `user` in the test passwd.
pub const USER_ID: u32 = 1000;

/// One running envd.
pub struct TestEnvd {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub home: PathBuf,
    pub state: Arc<Envd>,
    client: Client<HttpConnector, Full<Bytes>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestEnvd {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A response with its body collected.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl TestEnvd {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    pub async fn start_with(extra_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let home = root.join("home/user");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("root")).unwrap();
        std::fs::create_dir_all(&home).unwrap();
        std::os::unix::fs::chown(&home, Some(USER_ID), Some(USER_ID)).unwrap();
        std::fs::write(
            root.join("etc/passwd"),
            format!(
                "root:x:0:0:root:{}/root:/bin/bash\nuser:x:{USER_ID}:{USER_ID}::{}:/bin/bash\n",
                root.display(),
                home.display()
            ),
        )
        .unwrap();
        std::fs::write(
            root.join("etc/group"),
            format!("root:x:0:\nuser:x:{USER_ID}:\n"),
        )
        .unwrap();
        let root_arg = root.to_str().unwrap().to_owned();
        let mut args = vec![
            "hearth-envd",
            "--root",
            &root_arg,
            "--addr",
            "127.0.0.1",
            "--port",
            "0",
            "--default-user",
            "user",
        ];
        args.extend_from_slice(extra_args);
        let config = hearth_envd::EnvdConfig::parse_from(args);
        let state = Arc::new(Envd::new(config).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = hearth_envd::server::router(state.clone());
        let task = tokio::spawn(async move {
            let _ = hearth_envd::server::serve_listener(listener, app).await;
        });
        let client = Client::builder(TokioExecutor::new()).build_http();
        Self {
            addr,
            dir,
            home,
            state,
            client,
            task,
        }
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    pub async fn send(&self, req: Request<Full<Bytes>>) -> hyper::Response<hyper::body::Incoming> {
        tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .expect("request timed out")
            .expect("request failed")
    }

    pub async fn request(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(self.url(path_and_query));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self.send(req.body(Full::new(body.into())).unwrap()).await;
        let (parts, body) = resp.into_parts();
        let body = tokio::time::timeout(Duration::from_secs(60), body.collect())
            .await
            .expect("body timed out")
            .expect("body failed")
            .to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// A unary Connect JSON call to `filesystem.Filesystem/<method>`.
    pub async fn rpc(&self, method: &str, body: Value) -> Reply {
        self.rpc_as(method, body, &[]).await
    }

    pub async fn rpc_as(&self, method: &str, body: Value, headers: &[(&str, &str)]) -> Reply {
        let mut all = vec![
            ("content-type", "application/json"),
            ("connect-protocol-version", "1"),
        ];
        all.extend_from_slice(headers);
        self.request(
            Method::POST,
            &format!("/filesystem.Filesystem/{method}"),
            &all,
            body.to_string(),
        )
        .await
    }

    /// Starts a server-streaming Connect call and returns a frame reader.
    pub async fn stream(&self, method: &str, body: Value, headers: &[(&str, &str)]) -> FrameReader {
        let payload = body.to_string();
        let mut envelope = vec![0u8];
        envelope.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
        envelope.extend_from_slice(payload.as_bytes());
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.url(&format!("/filesystem.Filesystem/{method}")))
            .header("content-type", "application/connect+json")
            .header("connect-protocol-version", "1");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self
            .send(req.body(Full::new(Bytes::from(envelope))).unwrap())
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        FrameReader {
            body: resp.into_body(),
            buf: Vec::new(),
        }
    }

    /// Uploads `data` to `path` as octet-stream.
    pub async fn put(&self, path: &str, data: impl Into<Bytes>) -> Reply {
        self.request(
            Method::POST,
            &format!("/files?path={}", enc(path)),
            &[("content-type", "application/octet-stream")],
            data,
        )
        .await
    }

    /// Files under the temp root whose name contains `needle` (leftover detector).
    pub fn find(&self, needle: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![self.dir.path().to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.file_name().unwrap().to_string_lossy().contains(needle) {
                    out.push(p.clone());
                }
                if e.file_type().unwrap().is_dir() {
                    stack.push(p);
                }
            }
        }
        out
    }
}

/// Percent-encodes a query value.
pub fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Reads Connect envelopes from a streaming response.
pub struct FrameReader {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
}

impl FrameReader {
    /// The next envelope `(flags, json)`, or `None` at the end of the body.
    pub async fn next(&mut self, wait: Duration) -> Option<(u8, Value)> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() >= 5 + len {
                    let flags = self.buf[0];
                    let json = serde_json::from_slice(&self.buf[5..5 + len]).unwrap();
                    self.buf.drain(..5 + len);
                    return Some((flags, json));
                }
            }
            let frame = tokio::time::timeout(wait, self.body.frame())
                .await
                .expect("no stream frame in time")?;
            if let Ok(data) = frame.unwrap().into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }
}

/// Builds a multipart body from `(field name, filename, content)` parts.
pub fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "hearthBoundary7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    for (name, filename, content) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match filename {
            Some(f) => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\n")
                    .as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n").as_bytes(),
            ),
        }
        body.extend_from_slice(b"Content-Type: application/octet-stream\r\n\r\n");
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}
