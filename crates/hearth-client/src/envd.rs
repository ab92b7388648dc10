// SPDX-License-Identifier: Apache-2.0
//! envd over Connect JSON.

use crate::{ClientError, Http, http_client};
use base64::Engine;
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// An event of a process stream.
#[derive(Debug, Clone, PartialEq)]
pub enum ProcessEvent {
    /// The process started.
    Start {
        /// Its pid.
        pid: u32,
    },
    /// Output on stdout.
    Stdout(Vec<u8>),
    /// Output on stderr.
    Stderr(Vec<u8>),
    /// Output on the PTY.
    Pty(Vec<u8>),
    /// Nothing happened for a while.
    Keepalive,
    /// The process ended.
    End {
        /// Exit code (-1 when killed by a signal).
        exit_code: i32,
        /// Go-style status text.
        status: String,
    },
}

/// What a finished command printed.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    /// Stdout bytes.
    pub stdout: Vec<u8>,
    /// Stderr bytes.
    pub stderr: Vec<u8>,
    /// Exit code.
    pub exit_code: i32,
}

/// A live server stream of process events.
#[derive(Debug)]
pub struct ProcessStream {
    body: Incoming,
    buf: BytesMut,
    done: bool,
}

impl ProcessStream {
    /// The next event, or `None` at the end of the stream.
    pub async fn next(&mut self) -> Result<Option<ProcessEvent>, ClientError> {
        loop {
            if self.done {
                return Ok(None);
            }
            if self.buf.len() >= 5 {
                let flags = self.buf[0];
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if self.buf.len() >= 5 + len {
                    self.buf.advance(5);
                    let payload = self.buf.split_to(len);
                    let v: serde_json::Value = serde_json::from_slice(&payload)
                        .map_err(|e| ClientError::Protocol(format!("bad frame: {e}")))?;
                    if flags & 0x02 != 0 {
                        self.done = true;
                        if let Some(err) = v.get("error") {
                            return Err(ClientError::Rpc {
                                code: err["code"].as_str().unwrap_or("unknown").to_owned(),
                                message: err["message"].as_str().unwrap_or_default().to_owned(),
                            });
                        }
                        return Ok(None);
                    }
                    return parse_event(&v).map(Some);
                }
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    return Err(ClientError::Transport {
                        url: "stream".into(),
                        err: e.into(),
                    });
                }
                None => {
                    self.done = true;
                    return Ok(None);
                }
            }
        }
    }
}

fn b64(v: &serde_json::Value) -> Result<Vec<u8>, ClientError> {
    B64.decode(v.as_str().unwrap_or_default())
        .map_err(|e| ClientError::Protocol(format!("bad base64: {e}")))
}

fn parse_event(v: &serde_json::Value) -> Result<ProcessEvent, ClientError> {
    let ev = &v["event"];
    if let Some(s) = ev.get("start") {
        return Ok(ProcessEvent::Start {
            pid: s["pid"].as_u64().unwrap_or(0) as u32,
        });
    }
    if let Some(d) = ev.get("data") {
        if let Some(x) = d.get("stdout") {
            return Ok(ProcessEvent::Stdout(b64(x)?));
        }
        if let Some(x) = d.get("stderr") {
            return Ok(ProcessEvent::Stderr(b64(x)?));
        }
        if let Some(x) = d.get("pty") {
            return Ok(ProcessEvent::Pty(b64(x)?));
        }
    }
    if ev.get("keepalive").is_some() {
        return Ok(ProcessEvent::Keepalive);
    }
    if let Some(e) = ev.get("end") {
        return Ok(ProcessEvent::End {
            exit_code: e["exitCode"].as_i64().unwrap_or(0) as i32,
            status: e["status"].as_str().unwrap_or_default().to_owned(),
        });
    }
    Err(ClientError::Protocol(format!("unknown event {v}")))
}

fn envelope(msg: &serde_json::Value) -> Bytes {
    let payload = msg.to_string();
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(0);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload.as_bytes());
    Bytes::from(out)
}

/// A client for one sandbox's envd.
#[derive(Debug, Clone)]
pub struct Envd {
    http: Http,
    base: String,
    sandbox: Option<String>,
    token: Option<String>,
    user: Option<String>,
}

impl Envd {
    /// envd reached directly at `base` (e.g. `http://127.0.0.1:49983`).
    pub fn direct(base: &str, token: Option<String>) -> Self {
        Self {
            http: http_client(),
            base: base.trim_end_matches('/').to_owned(),
            sandbox: None,
            token,
            user: None,
        }
    }

    /// envd reached through Hearth's proxy at `base`.
    pub fn via_proxy(base: &str, sandbox: &str, token: Option<String>) -> Self {
        Self {
            http: http_client(),
            base: base.trim_end_matches('/').to_owned(),
            sandbox: Some(sandbox.to_owned()),
            token,
            user: None,
        }
    }

    /// Runs requests as `user` (Basic auth) instead of the default user.
    pub fn as_user(mut self, user: &str) -> Self {
        self.user = Some(user.to_owned());
        self
    }

    fn request(
        &self,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<http::Request<Full<Bytes>>, ClientError> {
        let mut req = http::Request::post(format!("{}{}", self.base, path))
            .header(http::header::CONTENT_TYPE, content_type)
            .header("connect-protocol-version", "1");
        if let Some(s) = &self.sandbox {
            req = req
                .header("e2b-sandbox-id", s)
                .header("e2b-sandbox-port", "49983");
        }
        if let Some(t) = &self.token {
            req = req.header("x-access-token", t);
        }
        if let Some(u) = &self.user {
            req = req.header(
                http::header::AUTHORIZATION,
                format!("Basic {}", B64.encode(format!("{u}:"))),
            );
        }
        req.body(Full::new(body))
            .map_err(|e| ClientError::Transport {
                url: path.into(),
                err: e.into(),
            })
    }

    async fn send(
        &self,
        req: http::Request<Full<Bytes>>,
    ) -> Result<http::Response<Incoming>, ClientError> {
        let url = req.uri().to_string();
        self.http
            .request(req)
            .await
            .map_err(|e| ClientError::Transport { url, err: e.into() })
    }

    /// A unary Connect call.
    pub async fn unary(
        &self,
        method: &str,
        msg: serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        let req = self.request(method, "application/json", Bytes::from(msg.to_string()))?;
        let resp = self.send(req).await?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Transport {
                url: method.into(),
                err: e.into(),
            })?
            .to_bytes();
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        if !status.is_success() {
            return Err(ClientError::Rpc {
                code: v["code"].as_str().unwrap_or("unknown").to_owned(),
                message: v["message"].as_str().unwrap_or_default().to_owned(),
            });
        }
        Ok(v)
    }

    /// Starts a process (`StartRequest` JSON) and returns its event stream.
    pub async fn start(&self, start: serde_json::Value) -> Result<ProcessStream, ClientError> {
        let req = self.request(
            "/process.Process/Start",
            "application/connect+json",
            envelope(&start),
        )?;
        let resp = self.send(req).await?;
        if !resp.status().is_success() {
            return Err(ClientError::Status {
                url: "/process.Process/Start".into(),
                status: resp.status().as_u16(),
                body: String::new(),
            });
        }
        Ok(ProcessStream {
            body: resp.into_body(),
            buf: BytesMut::new(),
            done: false,
        })
    }

    /// Runs `cmd args…` to completion.
    pub async fn exec(&self, cmd: &str, args: &[&str]) -> Result<ExecOutput, ClientError> {
        let mut stream = self
            .start(serde_json::json!({"process": {"cmd": cmd, "args": args}, "stdin": false}))
            .await?;
        let mut out = ExecOutput::default();
        while let Some(ev) = stream.next().await? {
            match ev {
                ProcessEvent::Stdout(b) | ProcessEvent::Pty(b) => out.stdout.extend(b),
                ProcessEvent::Stderr(b) => out.stderr.extend(b),
                ProcessEvent::End { exit_code, .. } => out.exit_code = exit_code,
                _ => {}
            }
        }
        Ok(out)
    }

    /// Sends input to a process (`pty` for PTY processes).
    pub async fn send_input(&self, pid: u32, data: &[u8], pty: bool) -> Result<(), ClientError> {
        let key = if pty { "pty" } else { "stdin" };
        self.unary(
            "/process.Process/SendInput",
            serde_json::json!({"process": {"pid": pid}, "input": {key: B64.encode(data)}}),
        )
        .await
        .map(|_| ())
    }

    /// Resizes a PTY.
    pub async fn resize(&self, pid: u32, cols: u16, rows: u16) -> Result<(), ClientError> {
        self.unary(
            "/process.Process/Update",
            serde_json::json!({"process": {"pid": pid}, "pty": {"size": {"cols": cols, "rows": rows}}}),
        )
        .await
        .map(|_| ())
    }

    /// Reads a file.
    pub async fn read_file(&self, path: &str) -> Result<Bytes, ClientError> {
        let mut req = http::Request::get(format!("{}/files?path={}", self.base, encode(path)));
        if let Some(s) = &self.sandbox {
            req = req
                .header("e2b-sandbox-id", s)
                .header("e2b-sandbox-port", "49983");
        }
        if let Some(t) = &self.token {
            req = req.header("x-access-token", t);
        }
        let req = req
            .body(Full::new(Bytes::new()))
            .map_err(|e| ClientError::Transport {
                url: path.into(),
                err: e.into(),
            })?;
        let resp = self.send(req).await?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Transport {
                url: path.into(),
                err: e.into(),
            })?
            .to_bytes();
        if !status.is_success() {
            return Err(ClientError::Status {
                url: path.into(),
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        Ok(bytes)
    }

    /// Writes a file (octet-stream upload).
    pub async fn write_file(&self, path: &str, data: Bytes) -> Result<(), ClientError> {
        let mut req = http::Request::post(format!("{}/files?path={}", self.base, encode(path)))
            .header(http::header::CONTENT_TYPE, "application/octet-stream");
        if let Some(s) = &self.sandbox {
            req = req
                .header("e2b-sandbox-id", s)
                .header("e2b-sandbox-port", "49983");
        }
        if let Some(t) = &self.token {
            req = req.header("x-access-token", t);
        }
        let req = req
            .body(Full::new(data))
            .map_err(|e| ClientError::Transport {
                url: path.into(),
                err: e.into(),
            })?;
        let resp = self.send(req).await?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Transport {
                url: path.into(),
                err: e.into(),
            })?
            .to_bytes();
        if !status.is_success() {
            return Err(ClientError::Status {
                url: path.into(),
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        Ok(())
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
