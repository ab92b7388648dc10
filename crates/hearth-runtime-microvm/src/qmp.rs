// SPDX-License-Identifier: Apache-2.0
//! A small asynchronous QMP (QEMU Machine Protocol) client.
//!
//! One client owns one socket and runs one command at a time: callers serialise
//! through `&mut self`. Asynchronous events that arrive while waiting for a reply are
//! queued and can be awaited with [`Qmp::wait_event`]. File descriptors are passed
//! with `SCM_RIGHTS` alongside a command (QMP's `getfd`), which is how a chrooted,
//! unprivileged QEMU gets a migration file it could not open itself.

use serde_json::{Map, Value, json};
use std::collections::VecDeque;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// A QMP failure.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be connected.
    #[error("failed to connect to QMP socket {path}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        err: std::io::Error,
    },
    /// Reading or writing the socket failed.
    #[error("QMP socket I/O failed")]
    Io(#[source] std::io::Error),
    /// QEMU closed the connection (it exited).
    #[error("QEMU closed the QMP connection")]
    Closed,
    /// QEMU sent something that is not QMP.
    #[error("unexpected QMP message: {0}")]
    Protocol(String),
    /// A command failed.
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        /// The command.
        command: String,
        /// QEMU's error class.
        class: String,
        /// QEMU's description.
        desc: String,
    },
    /// Waiting took too long.
    #[error("timed out after {waited_ms} ms waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        waited_ms: u64,
    },
    /// A migration ended in failure.
    #[error("migration {status}: {desc}")]
    Migration {
        /// Final status.
        status: String,
        /// QEMU's error description.
        desc: String,
    },
}

/// A connected, negotiated QMP session.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    events: VecDeque<Value>,
    next_id: u64,
    line: String,
}

impl Qmp {
    /// Connects to `path` and completes the capabilities handshake.
    pub async fn connect(path: &Path) -> Result<Self, QmpError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|err| QmpError::Connect {
                path: path.to_owned(),
                err,
            })?;
        let (r, w) = stream.into_split();
        let mut qmp = Self {
            reader: BufReader::new(r),
            writer: w,
            events: VecDeque::new(),
            next_id: 1,
            line: String::new(),
        };
        let greeting = qmp.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(greeting.to_string()));
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Connects, retrying until the socket exists and accepts or `timeout` passes.
    /// `alive` is checked between attempts so a QEMU that died fails fast.
    pub async fn connect_retry(
        path: &Path,
        timeout: Duration,
        mut alive: impl FnMut() -> bool,
    ) -> Result<Self, QmpError> {
        let start = Instant::now();
        let mut delay = Duration::from_micros(500);
        loop {
            match Self::connect(path).await {
                Ok(q) => return Ok(q),
                Err(QmpError::Connect { err, .. })
                    if matches!(
                        err.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    if !alive() {
                        return Err(QmpError::Closed);
                    }
                    if start.elapsed() >= timeout {
                        return Err(QmpError::Timeout {
                            what: format!("QMP socket {}", path.display()),
                            waited_ms: millis(start.elapsed()),
                        });
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(5));
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn read_message(&mut self) -> Result<Value, QmpError> {
        self.line.clear();
        let n = self
            .reader
            .read_line(&mut self.line)
            .await
            .map_err(QmpError::Io)?;
        if n == 0 {
            return Err(QmpError::Closed);
        }
        serde_json::from_str(&self.line).map_err(|_| QmpError::Protocol(self.line.clone()))
    }

    fn request(&mut self, command: &str, args: Option<Value>) -> (u64, Vec<u8>) {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = Map::new();
        msg.insert("execute".into(), Value::from(command));
        if let Some(a) = args {
            msg.insert("arguments".into(), a);
        }
        msg.insert("id".into(), Value::from(id));
        let mut bytes = serde_json::to_vec(&Value::Object(msg)).expect("QMP request serialises");
        bytes.push(b'\n');
        (id, bytes)
    }

    /// Runs `command` with `args` and returns its `return` value.
    pub async fn execute(&mut self, command: &str, args: Option<Value>) -> Result<Value, QmpError> {
        let (id, bytes) = self.request(command, args);
        self.writer.write_all(&bytes).await.map_err(QmpError::Io)?;
        self.reply(command, id).await
    }

    /// Runs `command` passing `fd` with it (`SCM_RIGHTS`), e.g. `getfd`.
    pub async fn execute_with_fd(
        &mut self,
        command: &str,
        args: Option<Value>,
        fd: BorrowedFd<'_>,
    ) -> Result<Value, QmpError> {
        use nix::sys::socket::{ControlMessage, MsgFlags, UnixAddr, sendmsg};
        let (id, bytes) = self.request(command, args);
        let stream: &UnixStream = self.writer.as_ref();
        let raw = [fd.as_raw_fd()];
        let mut sent = 0;
        // The descriptor rides on the first chunk; the rest is ordinary bytes.
        while sent == 0 {
            stream.writable().await.map_err(QmpError::Io)?;
            match stream.try_io(tokio::io::Interest::WRITABLE, || {
                sendmsg::<UnixAddr>(
                    stream.as_raw_fd(),
                    &[IoSlice::new(&bytes)],
                    &[ControlMessage::ScmRights(&raw)],
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(std::io::Error::from)
            }) {
                Ok(n) => sent = n,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(err) => return Err(QmpError::Io(err)),
            }
        }
        self.writer
            .write_all(&bytes[sent..])
            .await
            .map_err(QmpError::Io)?;
        self.reply(command, id).await
    }

    async fn reply(&mut self, command: &str, id: u64) -> Result<Value, QmpError> {
        loop {
            let mut msg = self.read_message().await?;
            if msg.get("event").is_some() {
                self.events.push_back(msg);
                continue;
            }
            if msg.get("id").and_then(Value::as_u64) != Some(id) {
                return Err(QmpError::Protocol(msg.to_string()));
            }
            if let Some(ret) = msg.get_mut("return") {
                return Ok(ret.take());
            }
            let err = msg.get("error").cloned().unwrap_or(Value::Null);
            let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
            return Err(QmpError::Command {
                command: command.to_owned(),
                class: field("class"),
                desc: field("desc"),
            });
        }
    }

    /// Waits for the next event named `name` (queued ones first).
    pub async fn wait_event(&mut self, name: &str, timeout: Duration) -> Result<Value, QmpError> {
        if let Some(pos) = self
            .events
            .iter()
            .position(|e| e.get("event").and_then(Value::as_str) == Some(name))
        {
            return Ok(self.events.remove(pos).expect("position is in range"));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.read_message())
                .await
                .map_err(|_| QmpError::Timeout {
                    what: format!("QMP event {name}"),
                    waited_ms: millis(timeout),
                })??;
            if msg.get("event").and_then(Value::as_str) == Some(name) {
                return Ok(msg);
            }
            if msg.get("event").is_some() {
                self.events.push_back(msg);
            }
        }
    }

    /// The VM's run state (`running`, `paused`, `inmigrate`, `postmigrate`…).
    pub async fn status(&mut self) -> Result<String, QmpError> {
        let v = self.execute("query-status", None).await?;
        Ok(v.get("status")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_owned())
    }

    /// Sets migration capabilities, e.g. `[("x-ignore-shared", true)]`.
    pub async fn set_capabilities(&mut self, caps: &[(&str, bool)]) -> Result<(), QmpError> {
        let list: Vec<Value> = caps
            .iter()
            .map(|(c, on)| json!({"capability": c, "state": on}))
            .collect();
        self.execute(
            "migrate-set-capabilities",
            Some(json!({ "capabilities": list })),
        )
        .await?;
        Ok(())
    }

    /// Polls `query-migrate` until the migration completes; returns its final info.
    pub async fn wait_migration(&mut self, timeout: Duration) -> Result<Value, QmpError> {
        let start = Instant::now();
        let mut delay = Duration::from_micros(500);
        loop {
            let info = self.execute("query-migrate", None).await?;
            let status = info
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("none")
                .to_owned();
            match status.as_str() {
                "completed" => return Ok(info),
                "failed" | "cancelled" => {
                    return Err(QmpError::Migration {
                        status,
                        desc: info
                            .get("error-desc")
                            .and_then(Value::as_str)
                            .unwrap_or("no description")
                            .to_owned(),
                    });
                }
                _ => {}
            }
            if start.elapsed() >= timeout {
                return Err(QmpError::Timeout {
                    what: "migration".into(),
                    waited_ms: millis(start.elapsed()),
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(5));
        }
    }

    /// Asks QEMU to exit; a closed connection counts as success.
    pub async fn quit(&mut self) -> Result<(), QmpError> {
        match self.execute("quit", None).await {
            Ok(_) | Err(QmpError::Closed) => Ok(()),
            Err(QmpError::Io(err)) if err.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
            Err(QmpError::Io(err)) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::UnixListener;

    /// A fake QEMU: greets, answers each request in order with `replies`, and sends
    /// an event before the second reply.
    async fn fake_qemu(path: PathBuf, replies: Vec<Value>) {
        let listener = UnixListener::bind(&path).unwrap();
        let (s, _) = listener.accept().await.unwrap();
        let (r, mut w) = s.into_split();
        let mut r = BufReader::new(r);
        w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
            .await
            .unwrap();
        let mut line = String::new();
        for (i, mut reply) in replies.into_iter().enumerate() {
            line.clear();
            if r.read_line(&mut line).await.unwrap() == 0 {
                return;
            }
            let req: Value = serde_json::from_str(&line).unwrap();
            reply["id"] = req["id"].clone();
            if i == 1 {
                w.write_all(b"{\"event\": \"STOP\", \"timestamp\": {}}\n")
                    .await
                    .unwrap();
            }
            w.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
        }
        let mut rest = Vec::new();
        let _ = r.read_to_end(&mut rest).await;
    }

    fn sock(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("hearth-qmp-{name}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    #[tokio::test]
    async fn replies_match_and_events_are_queued() {
        let path = sock("events");
        let server = tokio::spawn(fake_qemu(
            path.clone(),
            vec![
                json!({"return": {}}),
                json!({"return": {"status": "paused"}}),
                json!({"error": {"class": "GenericError", "desc": "nope"}}),
            ],
        ));
        let mut q = Qmp::connect_retry(&path, Duration::from_secs(5), || true)
            .await
            .unwrap();
        assert_eq!(q.status().await.unwrap(), "paused");
        let ev = q.wait_event("STOP", Duration::from_secs(1)).await.unwrap();
        assert_eq!(ev["event"], "STOP");
        let err = q.execute("cont", None).await.unwrap_err();
        assert!(
            matches!(&err, QmpError::Command { class, desc, .. } if class == "GenericError" && desc == "nope"),
            "{err}"
        );
        drop(q);
        server.await.unwrap();
        let _ = std::fs::remove_file(path);
    }

    #[tokio::test]
    async fn connect_gives_up_when_the_process_is_gone() {
        let path = sock("gone");
        let err = Qmp::connect_retry(&path, Duration::from_secs(5), || false)
            .await
            .unwrap_err();
        assert!(matches!(err, QmpError::Closed), "{err}");
    }

    #[tokio::test]
    async fn closed_connection_is_reported() {
        let path = sock("closed");
        let server = tokio::spawn(fake_qemu(path.clone(), vec![json!({"return": {}})]));
        let mut q = Qmp::connect(&path).await;
        while q.is_err() {
            tokio::time::sleep(Duration::from_millis(1)).await;
            q = Qmp::connect(&path).await;
        }
        let mut q = q.unwrap();
        server.abort();
        let _ = server.await;
        assert!(q.execute("query-status", None).await.is_err());
        let _ = std::fs::remove_file(path);
    }
}
