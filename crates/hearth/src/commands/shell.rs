// SPDX-License-Identifier: Apache-2.0
//! An interactive PTY session in a sandbox (`hearth sandbox shell`).

use hearth_client::{Envd, ProcessEvent};
use std::io::{Read, Write};
use std::os::fd::AsFd;

/// Runs a login shell on a PTY until it exits; returns its exit code.
pub async fn run(envd: Envd) -> anyhow::Result<i32> {
    let stdin = std::io::stdin();
    let (cols, rows) = hearth_sys::term::window_size(stdin.as_fd()).unwrap_or((80, 24));
    let mut stream = envd
        .start(serde_json::json!({
            "process": {
                "cmd": "/bin/bash",
                "args": ["-i", "-l"],
                "envs": {"TERM": std::env::var("TERM").unwrap_or_else(|_| "xterm-256color".into()),
                         "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
            },
            "pty": {"size": {"cols": cols, "rows": rows}},
        }))
        .await?;
    let pid = match stream.next().await? {
        Some(ProcessEvent::Start { pid }) => pid,
        other => anyhow::bail!("unexpected first event: {other:?}"),
    };
    let _raw = hearth_sys::term::RawMode::enter(stdin.as_fd()).ok();

    // Keystrokes: a blocking reader thread feeds a channel drained by an async task.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut input = std::io::stdin().lock();
        while let Ok(n) = input.read(&mut buf) {
            if n == 0 || tx.blocking_send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let sender = envd.clone();
    tokio::spawn(async move {
        while let Some(data) = rx.recv().await {
            if sender.send_input(pid, &data, true).await.is_err() {
                break;
            }
        }
    });
    let resizer = envd.clone();
    tokio::spawn(async move {
        let Ok(mut winch) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        else {
            return;
        };
        while winch.recv().await.is_some() {
            if let Ok((c, r)) = hearth_sys::term::window_size(std::io::stdin().as_fd()) {
                let _ = resizer.resize(pid, c, r).await;
            }
        }
    });

    let mut code = 0;
    let mut out = std::io::stdout();
    while let Some(ev) = stream.next().await? {
        match ev {
            ProcessEvent::Pty(b) | ProcessEvent::Stdout(b) | ProcessEvent::Stderr(b) => {
                out.write_all(&b)?;
                out.flush()?;
            }
            ProcessEvent::End { exit_code, .. } => code = exit_code,
            _ => {}
        }
    }
    Ok(code.clamp(0, 255))
}
