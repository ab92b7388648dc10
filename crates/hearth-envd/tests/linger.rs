// SPDX-License-Identifier: Apache-2.0
//! A client that sends its whole request body before reading (as a proxy does)
//! still gets envd's answer when envd answers early without reading the body.

#![allow(clippy::unwrap_used)]

mod common;

use common::TestEnvd;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Sends a `len`-byte unary body in full, then reads the status line.
fn send_all_then_read(addr: std::net::SocketAddr, len: usize) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.set_write_timeout(Some(Duration::from_secs(20)))?;
    write!(
        s,
        "POST /filesystem.Filesystem/Stat HTTP/1.1\r\nHost: x\r\n\
         Content-Type: application/json\r\nConnect-Protocol-Version: 1\r\n\
         Content-Length: {len}\r\n\r\n"
    )?;
    let chunk = vec![b' '; 1 << 20];
    let mut sent = 0;
    while sent < len {
        let n = chunk.len().min(len - sent);
        s.write_all(&chunk[..n])?;
        sent += n;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    Ok(String::from_utf8_lossy(&head).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_answer_reaches_a_client_that_sends_everything_first() {
    let envd = TestEnvd::start_with(&["--max-unary-body", "1048576"]).await;
    let addr = envd.addr;
    for _ in 0..3 {
        let status = tokio::task::spawn_blocking(move || send_all_then_read(addr, 64 << 20))
            .await
            .unwrap();
        assert_eq!(status.unwrap(), "HTTP/1.1 429");
    }
}
