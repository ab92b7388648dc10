// SPDX-License-Identifier: Apache-2.0
//! A minimal blocking client for envd, enough to run one command: used to warm a
//! template up before its snapshot is taken.
//!
//! `POST /process.Process/Start` with a Connect JSON streaming envelope; the reply
//! is read to its end (HTTP/1.1, `Connection: close`, chunked or not) and scanned for
//! the process's end event.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Running a command through envd failed.
#[derive(Debug, thiserror::Error)]
pub enum EnvdError {
    /// The connection or the exchange failed.
    #[error("envd request to {addr} failed")]
    Io {
        /// envd's address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        err: std::io::Error,
    },
    /// envd answered with an error status.
    #[error("envd answered {status}: {body}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Start of the body.
        body: String,
    },
}

/// Runs `argv` (as envd's default user) and returns its exit code (`None` if the
/// stream ended without an end event).
pub fn run(addr: SocketAddr, argv: &[&str], timeout: Duration) -> Result<Option<i64>, EnvdError> {
    let io = |err| EnvdError::Io { addr, err };
    let (cmd, args) = argv.split_first().unwrap_or((&"/bin/true", &[]));
    let body = serde_json::json!({
        "process": {"cmd": cmd, "args": args},
        "stdin": false,
    })
    .to_string();
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let mut payload = Vec::with_capacity(body.len() + 5);
    payload.push(0);
    payload.extend_from_slice(&len.to_be_bytes());
    payload.extend_from_slice(body.as_bytes());
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(io)?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    let head = format!(
        "POST /process.Process/Start HTTP/1.1\r\nHost: envd\r\nConnection: close\r\n\
         Content-Type: application/connect+json\r\nConnect-Protocol-Version: 1\r\n\
         Content-Length: {}\r\n\r\n",
        payload.len()
    );
    s.write_all(head.as_bytes()).map_err(io)?;
    s.write_all(&payload).map_err(io)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(io)?;
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or(0);
    if status != 200 {
        return Err(EnvdError::Status {
            status,
            body: text.chars().take(300).collect(),
        });
    }
    Ok(exit_code(&text))
}

/// The `exitCode` of the stream's end event (0 when the event omits it).
fn exit_code(text: &str) -> Option<i64> {
    let at = text.find("\"end\"")?;
    let rest = &text[at..];
    let Some(code_at) = rest.find("\"exitCode\":") else {
        return Some(0);
    };
    let digits: String = rest[code_at + 11..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-')
        .collect();
    digits.parse().ok().or(Some(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_read_from_the_end_event() {
        assert_eq!(
            exit_code(r#"{"event":{"end":{"exitCode":3,"status":"exit status 3"}}}"#),
            Some(3)
        );
        assert_eq!(
            exit_code(r#"{"event":{"end":{"status":"exit status 0"}}}"#),
            Some(0)
        );
        assert_eq!(exit_code(r#"{"event":{"start":{"pid":1}}}"#), None);
    }
}
