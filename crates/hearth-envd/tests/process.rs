// SPDX-License-Identifier: Apache-2.0
//! The `process.Process` service end to end: a real envd on a loopback port, real
//! processes, and Connect (JSON and binary) over real HTTP/1.1.
//!
//! One envd serves the whole test binary, because its reaper waits for any child of
//! this process: two envds (or a test spawning its own children) would steal each
//! other's exit statuses. The sandbox user `user` maps to uid 65534 (nobody) when the
//! tests run as root, else to the current uid.

// Helpers outside `#[test]` functions panic on failure too: that is what fails a test.
#![allow(clippy::unwrap_used)]

use base64::Engine;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

const STEP: Duration = Duration::from_secs(20);
const ROOT_AUTH: (&str, &str) = ("authorization", "Basic cm9vdDo=");

struct Server {
    port: u16,
    root: PathBuf,
    user_uid: u32,
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Test roots are `<CARGO_TARGET_TMPDIR>/<ROOT_PREFIX><pid>`.
const ROOT_PREFIX: &str = "envd-process-tests-";

/// Removes the roots of earlier test processes that are gone (a static is never
/// dropped, so each process leaves its root behind).
fn remove_roots_of_dead_processes(base: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(ROOT_PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !PathBuf::from(format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        // One root per test process: nextest runs every test in a process of its own,
        // concurrently, and a shared root would be wiped under the others' feet.
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        remove_roots_of_dead_processes(&base);
        let root = base.join(format!("{ROOT_PREFIX}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let home = root.join("home/user");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(&home).unwrap();
        let user_uid = if is_root() {
            65534
        } else {
            nix::unistd::geteuid().as_raw()
        };
        if is_root() {
            std::os::unix::fs::chown(&home, Some(user_uid), Some(user_uid)).unwrap();
        }
        std::fs::write(
            root.join("etc/passwd"),
            format!(
                "root:x:0:0:root:/root:/bin/sh\nuser:x:{user_uid}:{user_uid}::{}:/bin/sh\n",
                home.display()
            ),
        )
        .unwrap();
        std::fs::write(
            root.join("etc/group"),
            format!("root:x:0:\nuser:x:{user_uid}:\ntty:x:5:user\n"),
        )
        .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let config_root = root.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let config = hearth_envd::EnvdConfig::parse_from([
                    "hearth-envd",
                    "--root",
                    config_root.to_str().unwrap(),
                    "--addr",
                    "127.0.0.1",
                    "--port",
                    "0",
                ]);
                let state = Arc::new(hearth_envd::state::Envd::new(config).unwrap());
                state
                    .env_vars
                    .write()
                    .unwrap()
                    .insert("SANDBOX_VAR".into(), "from-init".into());
                // Like envd itself: orphans of the processes it starts come back to this
                // process, and its reaper collects them.
                hearth_sys::process::set_child_subreaper().unwrap();
                hearth_envd::reaper::spawn(state.children.clone());
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap().port()).unwrap();
                hearth_envd::server::serve_listener(listener, hearth_envd::server::router(state))
                    .await
                    .unwrap();
            });
        });
        Server {
            port: rx.recv().unwrap(),
            root,
            user_uid,
        }
    })
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

fn envelope(flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 5);
    out.push(flags);
    out.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    out.extend_from_slice(payload);
    out
}

async fn post(
    method: &str,
    content_type: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> hyper::Response<Incoming> {
    let mut req = hyper::Request::post(format!(
        "http://127.0.0.1:{}/process.Process/{method}",
        server().port
    ))
    .header("content-type", content_type)
    .header("connect-protocol-version", "1");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body))).unwrap();
    tokio::time::timeout(STEP, client().request(req))
        .await
        .expect("request timed out")
        .expect("request failed")
}

/// A unary JSON call: HTTP status and body.
async fn unary(method: &str, body: Value, headers: &[(&str, &str)]) -> (u16, Value) {
    let resp = post(
        method,
        "application/json",
        serde_json::to_vec(&body).unwrap(),
        headers,
    )
    .await;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

/// A unary JSON call that must succeed.
async fn ok(method: &str, body: Value) -> Value {
    let (status, v) = unary(method, body, &[]).await;
    assert_eq!(status, 200, "{method}: {v}");
    v
}

#[derive(Debug, Clone, PartialEq)]
enum Ev {
    Start(u32),
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Pty(Vec<u8>),
    Keepalive,
    End(Value),
    /// The end-of-stream frame: `{}` or `{"error":…}`.
    Eos(Value),
}

struct Events {
    body: Incoming,
    buf: BytesMut,
}

impl Events {
    async fn frame(&mut self) -> Option<(u8, Bytes)> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() >= 5 + len {
                    let flags = self.buf[0];
                    self.buf.advance(5);
                    return Some((flags, self.buf.split_to(len).freeze()));
                }
            }
            let frame = tokio::time::timeout(STEP, self.body.frame())
                .await
                .expect("stream stalled");
            match frame {
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        self.buf.put(data);
                    }
                }
                Some(Err(e)) => panic!("body error: {e}"),
                None => return None,
            }
        }
    }

    async fn next(&mut self) -> Option<Ev> {
        let (flags, payload) = self.frame().await?;
        let v: Value = serde_json::from_slice(&payload).unwrap();
        if flags & 2 != 0 {
            return Some(Ev::Eos(v));
        }
        let ev = &v["event"];
        let b64 = |s: &Value| {
            base64::engine::general_purpose::STANDARD
                .decode(s.as_str().unwrap())
                .unwrap()
        };
        Some(if let Some(s) = ev.get("start") {
            Ev::Start(s["pid"].as_u64().unwrap() as u32)
        } else if let Some(d) = ev.get("data") {
            if let Some(x) = d.get("stdout") {
                Ev::Stdout(b64(x))
            } else if let Some(x) = d.get("stderr") {
                Ev::Stderr(b64(x))
            } else {
                Ev::Pty(b64(&d["pty"]))
            }
        } else if ev.get("keepalive").is_some() {
            Ev::Keepalive
        } else if let Some(e) = ev.get("end") {
            Ev::End(e.clone())
        } else {
            panic!("unexpected event {v}")
        })
    }

    /// The `start` event, which must come first.
    async fn pid(&mut self) -> u32 {
        match self.next().await {
            Some(Ev::Start(pid)) => pid,
            other => panic!("expected start, got {other:?}"),
        }
    }

    /// Reads until `pred` holds on the accumulated pty/stdout text.
    async fn until_output(&mut self, needle: &str) -> String {
        let mut text = String::new();
        while !text.contains(needle) {
            match self.next().await {
                Some(Ev::Stdout(b) | Ev::Pty(b)) => text.push_str(&String::from_utf8_lossy(&b)),
                Some(Ev::Keepalive | Ev::Stderr(_)) => {}
                other => panic!("wanted {needle:?} in {text:?}, got {other:?}"),
            }
        }
        text
    }

    async fn finish(mut self) -> Outcome {
        let mut out = Outcome::default();
        while let Some(ev) = self.next().await {
            match ev {
                Ev::Start(pid) => out.pid = Some(pid),
                Ev::Stdout(b) => out.stdout.extend(b),
                Ev::Stderr(b) => out.stderr.extend(b),
                Ev::Pty(b) => out.pty.extend(b),
                Ev::Keepalive => out.keepalives += 1,
                Ev::End(e) => {
                    assert!(out.end.is_none(), "two end events");
                    out.end = Some(e);
                }
                Ev::Eos(e) => {
                    out.eos = Some(e);
                    assert!(self.next().await.is_none(), "data after end of stream");
                    break;
                }
            }
        }
        out
    }
}

#[derive(Debug, Default)]
struct Outcome {
    pid: Option<u32>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    pty: Vec<u8>,
    keepalives: usize,
    end: Option<Value>,
    eos: Option<Value>,
}

impl Outcome {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    fn exit_code(&self) -> i64 {
        let end = self.end.as_ref().expect("no end event");
        end.get("exitCode").and_then(Value::as_i64).unwrap_or(0)
    }
    fn status(&self) -> &str {
        self.end.as_ref().expect("no end event")["status"]
            .as_str()
            .unwrap()
    }
    fn error_code(&self) -> Option<&str> {
        self.eos.as_ref()?.get("error")?["code"].as_str()
    }
}

async fn stream(method: &str, body: Value, headers: &[(&str, &str)]) -> Events {
    let resp = post(
        method,
        "application/connect+json",
        envelope(0, &serde_json::to_vec(&body).unwrap()),
        headers,
    )
    .await;
    assert_eq!(resp.status(), 200);
    Events {
        body: resp.into_body(),
        buf: BytesMut::new(),
    }
}

async fn start(process: Value, extra: Value, headers: &[(&str, &str)]) -> Events {
    let mut body = json!({ "process": process, "stdin": false });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    stream("Start", body, headers).await
}

fn sh(script: &str) -> Value {
    json!({ "cmd": "/bin/sh", "args": ["-c", script] })
}

async fn run(script: &str) -> Outcome {
    start(sh(script), json!({}), &[]).await.finish().await
}

async fn list() -> Vec<Value> {
    ok("List", json!({}))
        .await
        .get("processes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

async fn wait_gone(pid: u32) {
    let t = Instant::now();
    while list().await.iter().any(|p| p["pid"] == pid) {
        assert!(t.elapsed() < STEP, "process {pid} still listed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn start_streams_stdout_stderr_and_exit_code() {
    let out = run("echo hi; echo oops >&2; exit 3").await;
    assert!(out.pid.is_some());
    assert_eq!(out.stdout(), "hi\n");
    assert_eq!(out.stderr, b"oops\n");
    assert_eq!(out.exit_code(), 3);
    assert_eq!(out.status(), "exit status 3");
    let end = out.end.as_ref().unwrap();
    assert_eq!(end["exited"], true);
    assert_eq!(end["error"], "exit status 3");
    assert_eq!(out.eos, Some(json!({})));

    let out = run("true").await;
    assert_eq!(out.exit_code(), 0);
    assert_eq!(out.status(), "exit status 0");
    assert!(out.end.as_ref().unwrap().get("error").is_none());
}

#[tokio::test]
async fn start_event_comes_first_and_immediately() {
    let t = Instant::now();
    let mut ev = start(sh("sleep 2"), json!({}), &[]).await;
    let pid = ev.pid().await;
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(list().await.iter().any(|p| p["pid"] == pid));
    signal(json!({ "pid": pid }), "SIGNAL_SIGKILL").await;
    let out = ev.finish().await;
    assert_eq!(out.status(), "signal: killed");
}

#[tokio::test]
async fn process_dying_of_a_signal_reports_it_like_go() {
    let out = run("kill -TERM $$").await;
    assert_eq!(out.exit_code(), -1);
    assert_eq!(out.status(), "signal: terminated");
    // Proto3 JSON omits `false`.
    assert_eq!(out.end.as_ref().unwrap().get("exited"), None);
}

#[tokio::test]
async fn runs_as_the_selected_user_with_its_environment() {
    let srv = server();
    let home = srv.root.join("home/user");
    let out = run("id -u; echo $HOME $USER $LOGNAME; pwd; echo $PATH; echo $SANDBOX_VAR").await;
    let lines: Vec<String> = out.stdout().lines().map(str::to_owned).collect();
    assert_eq!(lines[0], srv.user_uid.to_string());
    assert_eq!(lines[1], format!("{} user user", home.display()));
    assert_eq!(lines[2], home.display().to_string());
    assert!(!lines[3].is_empty());
    assert_eq!(lines[4], "from-init");

    if is_root() {
        let out = start(sh("id -u; pwd"), json!({}), &[ROOT_AUTH])
            .await
            .finish()
            .await;
        assert_eq!(out.stdout(), "0\n/root\n");
    }

    let out = start(
        json!({ "cmd": "/bin/sh", "args": ["-c", "echo $A $SANDBOX_VAR; pwd"],
                "envs": { "A": "1", "SANDBOX_VAR": "override" }, "cwd": "/tmp" }),
        json!({}),
        &[],
    )
    .await
    .finish()
    .await;
    assert_eq!(out.stdout(), "1 override\n/tmp\n");
}

#[tokio::test]
async fn unknown_user_is_unauthenticated() {
    // base64("ghost:")
    let out = start(
        sh("true"),
        json!({}),
        &[("authorization", "Basic Z2hvc3Q6")],
    )
    .await
    .finish()
    .await;
    assert_eq!(out.error_code(), Some("unauthenticated"));
}

#[tokio::test]
async fn child_is_session_leader_with_raised_oom_score() {
    let out = run("echo $$ $(cut -d' ' -f6 /proc/$$/stat) $(cat /proc/$$/oom_score_adj)").await;
    let f: Vec<String> = out.stdout().split_whitespace().map(str::to_owned).collect();
    assert_eq!(f[0], f[1], "pid must equal session id: {f:?}");
    assert_eq!(out.pid.unwrap().to_string(), f[0]);
    assert_eq!(f[2], "100");
}

#[tokio::test]
async fn stdin_pipe_send_and_close() {
    let mut ev = start(sh("cat; echo done"), json!({ "stdin": true }), &[]).await;
    let pid = ev.pid().await;
    let b64 = base64::engine::general_purpose::STANDARD.encode("hello\n");
    ok(
        "SendInput",
        json!({ "process": { "pid": pid }, "input": { "stdin": b64 } }),
    )
    .await;
    assert_eq!(ev.until_output("hello\n").await, "hello\n");
    ok("CloseStdin", json!({ "process": { "pid": pid } })).await;
    let out = ev.finish().await;
    assert_eq!(out.stdout(), "done\n");
    assert_eq!(out.exit_code(), 0);
}

#[tokio::test]
async fn stdin_false_reads_dev_null_and_input_is_refused() {
    let out = run("cat; echo eof").await;
    assert_eq!(out.stdout(), "eof\n");

    let mut ev = start(sh("sleep 5"), json!({ "stdin": false }), &[]).await;
    let pid = ev.pid().await;
    let (status, v) = unary(
        "SendInput",
        json!({ "process": { "pid": pid }, "input": { "stdin": "eA==" } }),
        &[],
    )
    .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("failed_precondition"))
    );
    // pty input to a pipe process, and no input at all.
    let (status, v) = unary(
        "SendInput",
        json!({ "process": { "pid": pid }, "input": { "pty": "eA==" } }),
        &[],
    )
    .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("invalid_argument"))
    );
    let (status, _) = unary("SendInput", json!({ "process": { "pid": pid } }), &[]).await;
    assert_eq!(status, 400);
    signal(json!({ "pid": pid }), "SIGNAL_SIGKILL").await;
    ev.finish().await;
}

#[tokio::test]
async fn stdin_absent_means_a_pipe() {
    let mut ev = stream("Start", json!({ "process": sh("head -n1") }), &[]).await;
    let pid = ev.pid().await;
    ok(
        "SendInput",
        json!({ "process": { "pid": pid }, "input": { "stdin": "b2sK" } }),
    )
    .await;
    assert_eq!(ev.finish().await.stdout(), "ok\n");
}

/// Splits a whole enveloped JSON body into `(flags, message)` frames.
fn split_frames(mut body: Bytes) -> Vec<(u8, Value)> {
    let mut out = Vec::new();
    while body.len() >= 5 {
        let flags = body.get_u8();
        let len = body.get_u32() as usize;
        out.push((flags, serde_json::from_slice(&body.split_to(len)).unwrap()));
    }
    assert!(body.is_empty(), "trailing bytes");
    out
}

#[tokio::test]
async fn stream_input_writes_each_message_in_order() {
    let mut ev = start(sh("cat"), json!({ "stdin": true }), &[]).await;
    let pid = ev.pid().await;
    let mut body = Vec::new();
    for msg in [
        json!({ "start": { "process": { "pid": pid } } }),
        json!({ "data": { "input": { "stdin": "b25lCg==" } } }),
        json!({ "keepalive": {} }),
        json!({ "data": { "input": { "stdin": "dHdvCg==" } } }),
    ] {
        body.extend(envelope(0, &serde_json::to_vec(&msg).unwrap()));
    }
    let resp = post("StreamInput", "application/connect+json", body, &[]).await;
    assert_eq!(resp.status(), 200);
    let frames = split_frames(resp.into_body().collect().await.unwrap().to_bytes());
    assert_eq!(frames, [(0, json!({})), (2, json!({}))]);
    ok("CloseStdin", json!({ "process": { "pid": pid } })).await;
    assert_eq!(ev.finish().await.stdout(), "one\ntwo\n");

    // Data before start is refused.
    let body = envelope(
        0,
        &serde_json::to_vec(&json!({ "data": { "input": { "stdin": "eA==" } } })).unwrap(),
    );
    let resp = post("StreamInput", "application/connect+json", body, &[]).await;
    let frames = split_frames(resp.into_body().collect().await.unwrap().to_bytes());
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].1["error"]["code"], "invalid_argument");
}

#[tokio::test]
async fn large_input_arrives_whole() {
    let mut ev = start(sh("wc -c"), json!({ "stdin": true }), &[]).await;
    let pid = ev.pid().await;
    let data = vec![b'x'; 3 << 20];
    let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
    ok(
        "SendInput",
        json!({ "process": { "pid": pid }, "input": { "stdin": b64 } }),
    )
    .await;
    ok("CloseStdin", json!({ "process": { "pid": pid } })).await;
    assert_eq!(ev.finish().await.stdout().trim(), (3 << 20).to_string());
}

#[tokio::test]
async fn keepalives_fill_idle_time() {
    let out = start(
        sh("sleep 2.3; echo late"),
        json!({}),
        &[("keepalive-ping-interval", "1")],
    )
    .await
    .finish()
    .await;
    assert_eq!(out.stdout(), "late\n");
    assert!(
        (1..=3).contains(&out.keepalives),
        "keepalives: {}",
        out.keepalives
    );
}

#[tokio::test]
async fn start_deadline_kills_the_process_group() {
    let t = Instant::now();
    let mut ev = start(
        sh("sleep 300 & echo $!; wait"),
        json!({}),
        &[("connect-timeout-ms", "700")],
    )
    .await;
    let pid = ev.pid().await;
    let child: u32 = ev.until_output("\n").await.trim().parse().unwrap();
    let out = ev.finish().await;
    assert_eq!(out.error_code(), Some("deadline_exceeded"));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    wait_gone(pid).await;
    assert!(
        !alive(child),
        "background child {child} survived the timeout"
    );
    // Its end is kept for a late Connect.
    let out = stream("Connect", json!({ "process": { "pid": pid } }), &[])
        .await
        .finish()
        .await;
    assert_eq!(out.pid, Some(pid));
    assert_eq!(out.status(), "signal: killed");
    assert_eq!(out.exit_code(), -1);
}

#[tokio::test]
async fn connect_deadline_ends_only_the_stream() {
    let mut ev = start(sh("sleep 30"), json!({}), &[]).await;
    let pid = ev.pid().await;
    let out = stream(
        "Connect",
        json!({ "process": { "pid": pid } }),
        &[("connect-timeout-ms", "300")],
    )
    .await
    .finish()
    .await;
    assert_eq!(out.pid, Some(pid));
    assert_eq!(out.error_code(), Some("deadline_exceeded"));
    assert!(
        list().await.iter().any(|p| p["pid"] == pid),
        "still running"
    );
    signal(json!({ "pid": pid }), "SIGNAL_SIGKILL").await;
    assert_eq!(ev.finish().await.status(), "signal: killed");
}

/// Whether `pid` runs (a zombie waiting for its reaper does not count).
fn alive(pid: u32) -> bool {
    let t = Instant::now();
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit(')').next().map(|r| r.trim().chars().next()))
            .flatten();
        match state {
            None | Some('Z') | Some('X') => return false,
            Some(_) if t.elapsed() > Duration::from_secs(2) => return true,
            Some(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[tokio::test]
async fn closing_the_stream_does_not_kill_and_connect_reattaches() {
    let mut ev = start(
        sh("read x; echo got $x; read y; echo got $y"),
        json!({ "stdin": true, "tag": "reattach" }),
        &[],
    )
    .await;
    let pid = ev.pid().await;
    drop(ev);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let listed = list().await;
    let me = listed
        .iter()
        .find(|p| p["pid"] == pid)
        .expect("still running");
    assert_eq!(me["tag"], "reattach");
    assert_eq!(me["config"]["cmd"], "/bin/sh");

    let mut by_tag = stream("Connect", json!({ "process": { "tag": "reattach" } }), &[]).await;
    assert_eq!(by_tag.pid().await, pid);
    let mut by_pid = stream("Connect", json!({ "process": { "pid": pid } }), &[]).await;
    assert_eq!(by_pid.pid().await, pid);
    ok(
        "SendInput",
        json!({ "process": { "tag": "reattach" }, "input": { "stdin": "YQpiCg==" } }),
    )
    .await;
    let a = by_tag.finish().await;
    let b = by_pid.finish().await;
    assert_eq!(a.stdout(), "got a\ngot b\n");
    assert_eq!(b.stdout(), a.stdout(), "every subscriber gets all output");
    assert_eq!(a.exit_code(), 0);
    assert_eq!(b.exit_code(), 0);

    // Late connects replay the end.
    for sel in [json!({ "pid": pid }), json!({ "tag": "reattach" })] {
        let out = stream("Connect", json!({ "process": sel }), &[])
            .await
            .finish()
            .await;
        assert_eq!(out.pid, Some(pid));
        assert_eq!(out.status(), "exit status 0");
        assert_eq!(out.eos, Some(json!({})));
    }
}

#[tokio::test]
async fn output_is_not_lost_for_slow_subscribers() {
    let n = 200_000u32;
    let expected: usize = (1..=n).map(|i| i.to_string().len() + 1).sum();
    let mut first = start(
        sh(&format!("read go; seq 1 {n}")),
        json!({ "stdin": true }),
        &[],
    )
    .await;
    let pid = first.pid().await;
    let mut second = stream("Connect", json!({ "process": { "pid": pid } }), &[]).await;
    assert_eq!(second.pid().await, pid);
    ok(
        "SendInput",
        json!({ "process": { "pid": pid }, "input": { "stdin": "Cg==" } }),
    )
    .await;
    // The second subscriber does not read for a while: the process must wait for it.
    let fast = first.finish();
    let slow = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        second.finish().await
    };
    let (a, b) = tokio::join!(fast, slow);
    assert_eq!(a.stdout.len(), expected);
    assert_eq!(b.stdout.len(), expected);
    assert_eq!(a.stdout, b.stdout);
    assert!(a.stdout.ends_with(format!("\n{n}\n").as_bytes()));
}

#[tokio::test]
async fn chunks_are_at_most_32_kib() {
    let mut ev = start(sh("head -c 300000 /dev/zero"), json!({}), &[]).await;
    ev.pid().await;
    let mut total = 0;
    loop {
        match ev.next().await.unwrap() {
            Ev::Stdout(b) => {
                assert!(b.len() <= 32 * 1024, "{}", b.len());
                total += b.len();
            }
            Ev::End(_) => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(total, 300_000);
}

#[tokio::test]
async fn unread_process_runs_to_completion() {
    let ev = start(sh("seq 1 300000"), json!({ "tag": "nobody-listens" }), &[]).await;
    let mut ev = ev;
    let pid = ev.pid().await;
    drop(ev);
    wait_gone(pid).await;
    let out = stream("Connect", json!({ "process": { "pid": pid } }), &[])
        .await
        .finish()
        .await;
    assert_eq!(out.exit_code(), 0);
}

#[tokio::test]
async fn stream_ends_when_the_process_exits_despite_background_holders() {
    let t = Instant::now();
    let out = run("echo before; sleep 30 & echo $!; echo after").await;
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let lines: Vec<String> = out.stdout().lines().map(str::to_owned).collect();
    assert_eq!((lines[0].as_str(), lines[2].as_str()), ("before", "after"));
    assert_eq!(out.exit_code(), 0);
    let orphan: i32 = lines[1].parse().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(orphan),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

#[tokio::test]
async fn stream_ends_even_if_a_descendant_floods_the_pipe() {
    let t = Instant::now();
    let out = run("yes & echo $! >&2").await;
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(out.exit_code(), 0);
    assert!(
        out.stdout.len() <= (1 << 20) + 64 * 1024 + 32 * 1024,
        "{}",
        out.stdout.len()
    );
    // With the pipe's read end gone, the flood dies of SIGPIPE; make sure anyway.
    let flood: i32 = String::from_utf8_lossy(&out.stderr).trim().parse().unwrap();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(flood),
        nix::sys::signal::Signal::SIGKILL,
    );
}

async fn signal(process: Value, sig: &str) {
    ok("SendSignal", json!({ "process": process, "signal": sig })).await;
}

#[tokio::test]
async fn sigterm_and_sigkill_by_pid_and_tag() {
    let mut ev = start(sh("sleep 60"), json!({ "tag": "term-me" }), &[]).await;
    ev.pid().await;
    signal(json!({ "tag": "term-me" }), "SIGNAL_SIGTERM").await;
    let out = ev.finish().await;
    assert_eq!(out.status(), "signal: terminated");
    assert_eq!(out.exit_code(), -1);

    let mut ev = start(sh("trap '' TERM; sleep 60"), json!({}), &[]).await;
    let pid = ev.pid().await;
    // Numeric enum values are accepted too.
    ok(
        "SendSignal",
        json!({ "process": { "pid": pid }, "signal": 9 }),
    )
    .await;
    assert_eq!(ev.finish().await.status(), "signal: killed");
}

#[tokio::test]
async fn bad_selectors_and_requests_get_connect_errors() {
    let (status, v) = unary(
        "SendSignal",
        json!({ "process": { "pid": 999_999 }, "signal": "SIGNAL_SIGKILL" }),
        &[],
    )
    .await;
    assert_eq!((status, v["code"].as_str()), (404, Some("not_found")));
    assert_eq!(v["message"], "process with pid 999999 not found");
    let (status, v) = unary(
        "SendSignal",
        json!({ "process": { "tag": "no-such-tag" }, "signal": "SIGNAL_SIGTERM" }),
        &[],
    )
    .await;
    assert_eq!((status, v["code"].as_str()), (404, Some("not_found")));
    let (status, v) = unary("SendSignal", json!({ "signal": "SIGNAL_SIGTERM" }), &[]).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("invalid_argument"))
    );
    let (status, v) = unary(
        "SendSignal",
        json!({ "process": { "pid": 1 }, "signal": "SIGNAL_UNSPECIFIED" }),
        &[],
    )
    .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("invalid_argument"))
    );
    for method in ["CloseStdin", "SendInput"] {
        let (status, v) = unary(method, json!({ "process": { "pid": 999_999 } }), &[]).await;
        assert_eq!(
            (status, v["code"].as_str()),
            (404, Some("not_found")),
            "{method}"
        );
    }
    let (status, _) = unary(
        "Update",
        json!({ "process": { "pid": 999_999 }, "pty": { "size": { "cols": 1, "rows": 1 } } }),
        &[],
    )
    .await;
    assert_eq!(status, 404);

    let out = stream("Connect", json!({ "process": { "pid": 999_999 } }), &[])
        .await
        .finish()
        .await;
    assert_eq!(out.error_code(), Some("not_found"));
    assert_eq!(out.pid, None);

    for (process, code) in [
        (json!({ "cmd": "" }), "invalid_argument"),
        (json!({ "cmd": "/nonexistent/binary" }), "not_found"),
        (
            json!({ "cmd": "no-such-command-anywhere", "envs": { "PATH": "/usr/bin:/bin" } }),
            "not_found",
        ),
        (
            json!({ "cmd": "/bin/true", "cwd": "/nonexistent/dir" }),
            "invalid_argument",
        ),
        (json!({ "cmd": "/etc/passwd" }), "permission_denied"),
        (
            json!({ "cmd": "/bin/true", "envs": { "A=B": "x" } }),
            "invalid_argument",
        ),
    ] {
        let out = start(process.clone(), json!({}), &[]).await.finish().await;
        assert_eq!(out.error_code(), Some(code), "{process}: {:?}", out.eos);
    }
    let out = start(
        json!({ "cmd": "/bin/true", "cwd": "/nonexistent/dir" }),
        json!({}),
        &[],
    )
    .await
    .finish()
    .await;
    assert_eq!(
        out.eos.unwrap()["error"]["message"],
        "cwd '/nonexistent/dir' does not exist"
    );
    let out = stream("Start", json!({}), &[]).await.finish().await;
    assert_eq!(out.error_code(), Some("invalid_argument"));

    // Still serving.
    assert_eq!(run("echo alive").await.stdout(), "alive\n");
}

#[tokio::test]
async fn oversized_unary_request_is_refused() {
    let big = "A".repeat(17 << 20);
    let (status, v) = unary(
        "SendInput",
        json!({ "process": { "pid": 1 }, "input": { "stdin": big } }),
        &[],
    )
    .await;
    assert_eq!(v["code"], "resource_exhausted", "{status}");
}

#[tokio::test]
async fn pty_gets_a_controlling_terminal_and_resizes() {
    let script = "tty; stat -c %u $(tty); tput cols; tput lines; read x; tput cols; tput lines";
    let mut ev = start(
        json!({ "cmd": "/bin/bash", "args": ["-c", script], "envs": { "TERM": "xterm-256color" } }),
        json!({ "pty": { "size": { "cols": 100, "rows": 30 } } }),
        &[],
    )
    .await;
    let pid = ev.pid().await;
    let text = ev.until_output("30\r\n").await;
    assert!(text.contains("/dev/pts/"), "{text:?}");
    assert!(
        text.contains(&format!("\r\n{}\r\n", server().user_uid)),
        "the user owns the terminal: {text:?}"
    );
    assert!(text.contains("100\r\n30\r\n"), "{text:?}");
    ok(
        "Update",
        json!({ "process": { "pid": pid }, "pty": { "size": { "cols": 120, "rows": 40 } } }),
    )
    .await;
    // stdin to a PTY process is refused; pty input is typed.
    let (status, v) = unary(
        "SendInput",
        json!({ "process": { "pid": pid }, "input": { "stdin": "eAo=" } }),
        &[],
    )
    .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("invalid_argument"))
    );
    let (status, _) = unary("CloseStdin", json!({ "process": { "pid": pid } }), &[]).await;
    assert_eq!(status, 400);
    ok(
        "SendInput",
        json!({ "process": { "pid": pid }, "input": { "pty": "eAo=" } }),
    )
    .await;
    let out = ev.finish().await;
    let text = String::from_utf8_lossy(&out.pty);
    assert!(text.contains("120\r\n40\r\n"), "{text:?}");
    assert_eq!(out.exit_code(), 0);
    assert!(out.stdout.is_empty());
}

#[tokio::test]
async fn interactive_pty_shell_echoes_and_exits() {
    let mut ev = start(
        json!({ "cmd": "/bin/bash", "args": ["-i", "-l"],
                "envs": { "TERM": "xterm-256color", "PS1": "$ " } }),
        json!({ "pty": { "size": { "cols": 80, "rows": 24 } } }),
        &[],
    )
    .await;
    let pid = ev.pid().await;
    let b64 = base64::engine::general_purpose::STANDARD.encode("echo pty-$((6*7))\n");
    ok(
        "SendInput",
        json!({ "process": { "pid": pid }, "input": { "pty": b64 } }),
    )
    .await;
    ev.until_output("pty-42").await;
    let (status, _) = unary(
        "Update",
        json!({ "process": { "pid": pid }, "pty": { "size": { "cols": 70000, "rows": 1 } } }),
        &[],
    )
    .await;
    assert_eq!(status, 400, "cols beyond u16 are invalid");
    let b64 = base64::engine::general_purpose::STANDARD.encode("exit 5\n");
    ok(
        "SendInput",
        json!({ "process": { "pid": pid }, "input": { "pty": b64 } }),
    )
    .await;
    let out = ev.finish().await;
    assert_eq!(out.exit_code(), 5);
}

#[tokio::test]
async fn update_of_pipe_process_is_invalid() {
    let mut ev = start(sh("sleep 5"), json!({}), &[]).await;
    let pid = ev.pid().await;
    let (status, v) = unary(
        "Update",
        json!({ "process": { "pid": pid }, "pty": { "size": { "cols": 10, "rows": 10 } } }),
        &[],
    )
    .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("invalid_argument"))
    );
    signal(json!({ "pid": pid }), "SIGNAL_SIGKILL").await;
    ev.finish().await;
}

#[tokio::test]
async fn binary_proto_codec_for_unary_and_streaming() {
    use buffa::Message;
    use hearth_envd_proto::process::*;

    let req = StartRequest {
        process: ProcessConfig {
            cmd: "/bin/sh".into(),
            args: vec!["-c".into(), "echo proto".into()],
            ..Default::default()
        }
        .into(),
        stdin: Some(false),
        tag: Some("proto".into()),
        ..Default::default()
    };
    let resp = post(
        "Start",
        "application/connect+proto",
        envelope(0, &req.encode_to_vec()),
        &[],
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/connect+proto");
    let mut events = Events {
        body: resp.into_body(),
        buf: BytesMut::new(),
    };
    let mut kinds = Vec::new();
    let mut stdout: Vec<u8> = Vec::new();
    while let Some((flags, payload)) = events.frame().await {
        if flags & 2 != 0 {
            kinds.push("eos");
            continue;
        }
        let msg = StartResponse::decode(&mut payload.clone()).unwrap();
        match msg.event.as_option().and_then(|e| e.event.as_ref()) {
            Some(process_event::Event::Start(_)) => kinds.push("start"),
            Some(process_event::Event::Data(d)) => {
                kinds.push("data");
                if let Some(process_event::data_event::Output::Stdout(b)) = &d.output {
                    stdout.extend(b);
                }
            }
            Some(process_event::Event::End(e)) => {
                kinds.push("end");
                assert_eq!(e.status, "exit status 0");
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(kinds, ["start", "data", "end", "eos"]);
    assert_eq!(stdout, b"proto\n");

    let resp = post(
        "List",
        "application/proto",
        ListRequest::default().encode_to_vec(),
        &[],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    ListResponse::decode(&mut bytes.clone()).unwrap();

    let resp = post(
        "SendSignal",
        "application/proto",
        SendSignalRequest {
            process: ProcessSelector {
                selector: Some(process_selector::Selector::Pid(999_999)),
                ..Default::default()
            }
            .into(),
            signal: Signal::SIGNAL_SIGKILL.into(),
            ..Default::default()
        }
        .encode_to_vec(),
        &[],
    )
    .await;
    assert_eq!(resp.status(), 404);
}
