// SPDX-License-Identifier: Apache-2.0
//! envd keeps serving when its log cannot be written (its stderr is a file on the
//! sandbox's disk, which the sandbox can fill).

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The status code of a bare HTTP/1.1 request, or None if envd does not answer.
fn status(port: u16, request: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(request.as_bytes()).ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

struct Envd(Child);

impl Drop for Envd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn envd_survives_a_log_it_cannot_write() {
    let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
        eprintln!("skipping: no /dev/full");
        return;
    };
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    std::fs::write(root.path().join("etc/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
    let port = free_port();
    let mut envd = Envd(
        Command::new(env!("CARGO_BIN_EXE_hearth-envd"))
            .args(["--addr", "127.0.0.1", "--port", &port.to_string()])
            .arg("--root")
            .arg(root.path())
            .args(["--log-level", "debug", "--default-user", "root"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(full)
            .spawn()
            .unwrap(),
    );
    let health = "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(port, health) != Some(204) {
        assert!(
            envd.0.try_wait().unwrap().is_none(),
            "envd died writing its first log line"
        );
        assert!(Instant::now() < deadline, "envd never answered");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A refused request logs at info level.
    let refused = "POST /filesystem.Filesystem/Stat HTTP/1.1\r\nHost: x\r\n\
                   Content-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
    for _ in 0..3 {
        assert!(status(port, refused).is_some());
    }
    assert_eq!(status(port, health), Some(204));
    assert!(envd.0.try_wait().unwrap().is_none(), "envd exited");
}
