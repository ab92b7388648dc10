// SPDX-License-Identifier: Apache-2.0
//! The output pump: one task per process that reads its output, cuts it into chunks
//! and hands every chunk to every attached stream, then delivers the `end` event.
//!
//! Flow control follows a terminal: each subscriber has a bounded queue, and when a
//! connected subscriber's queue is full the pump waits, the pipe fills and the
//! process blocks on write. A subscriber whose stream was dropped (client gone)
//! fails its send at once and is forgotten, so it never holds anyone up. With no
//! subscribers at all, output is read and discarded and the process never blocks.
//!
//! The end comes from the reaper, not from end-of-file: once the process has exited,
//! what it wrote is already in the pipe (or terminal) buffer, so the pump reads what
//! is there without waiting and ends, even if a background descendant still holds
//! the pipes open.

use super::exit::{end_event, lost_event};
use super::pty::PtyMaster;
use super::spawn::Outputs;
use super::table::{Output, ProcHandle, ProcessTable};
use bytes::Bytes;
use hearth_sys::process::ChildExit;
use nix::sys::signal::Signal;
use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;
use tokio::net::unix::pipe;
use tokio::sync::mpsc::Sender;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Largest chunk of pipe output in one `data` event (as upstream).
pub(crate) const PIPE_CHUNK: usize = 32 * 1024;
/// Largest chunk of terminal output in one `data` event (as upstream).
pub(crate) const PTY_CHUNK: usize = 16 * 1024;

/// Most bytes read from one output after the process exited: what it left in the
/// buffer (a pipe holds at most `pipe-max-size`, 1 MiB by default), not what a
/// background descendant keeps writing.
const DRAIN_LIMIT: usize = 1 << 20;

type Exit = Result<ChildExit, oneshot::error::RecvError>;

/// Starts the pump of `handle`. At `deadline` (the process lifetime asked for by the
/// `Start` call) the process group is killed.
pub(crate) fn start(
    handle: Arc<ProcHandle>,
    outputs: Outputs,
    exit: oneshot::Receiver<ChildExit>,
    deadline: Option<Instant>,
    table: ProcessTable,
) {
    tokio::spawn(async move {
        // A separate timer, because the pump itself may be waiting on a subscriber.
        let timer = deadline.map(|at| {
            let handle = handle.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                kill_at_deadline(&handle);
            })
            .abort_handle()
        });
        let exit = match outputs {
            Outputs::Pipes { stdout, stderr } => pump_pipes(&handle, stdout, stderr, exit).await,
            Outputs::Pty(master) => pump_pty(&handle, &master, exit).await,
        };
        if let Some(timer) = timer {
            timer.abort();
        }
        let end = match exit {
            Ok(exit) => end_event(exit),
            Err(_) => lost_event("envd lost track of the process"),
        };
        tracing::info!(pid = handle.pid, status = %end.status, "process ended");
        let owed = table.finish(&handle, &end);
        let sends = owed.into_iter().map(|q| {
            let end = end.clone();
            async move {
                let _ = q.send(Output::End(end)).await;
            }
        });
        futures::future::join_all(sends).await;
    });
}

/// Kills the process group when the `Start` deadline passes.
pub(crate) fn kill_at_deadline(handle: &ProcHandle) {
    match handle.signal(Signal::SIGKILL) {
        Ok(()) => tracing::info!(pid = handle.pid, "process timeout elapsed: killed"),
        Err(err) => {
            tracing::debug!(pid = handle.pid, error = %err, "timeout kill found no process")
        }
    }
}

enum PipeEvent {
    Ready(usize, io::Result<()>),
    Exited(Exit),
}

async fn pump_pipes(
    handle: &ProcHandle,
    stdout: pipe::Receiver,
    stderr: pipe::Receiver,
    mut exit: oneshot::Receiver<ChildExit>,
) -> Exit {
    let pipes = [&stdout, &stderr];
    let wrap: [fn(Bytes) -> Output; 2] = [Output::Stdout, Output::Stderr];
    let mut open = [true, true];
    let mut buf = vec![0u8; PIPE_CHUNK];
    let mut scratch = Vec::new();
    let status = loop {
        let event = tokio::select! {
            r = stdout.readable(), if open[0] => PipeEvent::Ready(0, r),
            r = stderr.readable(), if open[1] => PipeEvent::Ready(1, r),
            r = &mut exit => PipeEvent::Exited(r),
        };
        match event {
            PipeEvent::Exited(status) => break status,
            PipeEvent::Ready(i, Err(_)) => open[i] = false,
            PipeEvent::Ready(i, Ok(())) => match pipes[i].try_read(&mut buf) {
                Ok(0) => open[i] = false,
                Ok(n) => fanout(handle, wrap[i](chunk(&buf[..n])), &mut scratch).await,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => open[i] = false,
            },
        }
    };
    for (i, pipe) in pipes.iter().enumerate() {
        if !open[i] {
            continue;
        }
        // Read the descriptor directly: the runtime may not have seen its readiness yet.
        let mut drained = 0;
        while drained < DRAIN_LIMIT {
            let Ok(n @ 1..) = nix::unistd::read(pipe.as_fd(), &mut buf) else {
                break;
            };
            drained += n;
            fanout(handle, wrap[i](chunk(&buf[..n])), &mut scratch).await;
        }
    }
    status
}

enum PtyEvent {
    Read(io::Result<usize>),
    Exited(Exit),
}

async fn pump_pty(
    handle: &ProcHandle,
    master: &PtyMaster,
    mut exit: oneshot::Receiver<ChildExit>,
) -> Exit {
    let mut open = true;
    let mut buf = vec![0u8; PTY_CHUNK];
    let mut scratch = Vec::new();
    let status = loop {
        let event = tokio::select! {
            r = master.read(&mut buf), if open => PtyEvent::Read(r),
            r = &mut exit => PtyEvent::Exited(r),
        };
        match event {
            PtyEvent::Exited(status) => break status,
            PtyEvent::Read(Ok(0) | Err(_)) => open = false,
            PtyEvent::Read(Ok(n)) => {
                fanout(handle, Output::Pty(chunk(&buf[..n])), &mut scratch).await
            }
        }
    };
    // The kernel flushes pending terminal input before a non-blocking read answers
    // EAGAIN, so this sees everything the process wrote before it exited.
    let mut drained = 0;
    while open && drained < DRAIN_LIMIT {
        let Some(Ok(n @ 1..)) = master.try_read(&mut buf) else {
            break;
        };
        drained += n;
        fanout(handle, Output::Pty(chunk(&buf[..n])), &mut scratch).await;
    }
    status
}

fn chunk(data: &[u8]) -> Bytes {
    Bytes::copy_from_slice(data)
}

/// Delivers `out` to every subscriber of `handle`, waiting for those whose queue is
/// full; `scratch` is reused between calls to avoid allocating per chunk.
async fn fanout(handle: &ProcHandle, out: Output, scratch: &mut Vec<Sender<Output>>) {
    handle.subscribers(scratch);
    let mut gone = false;
    let mut blocked = Vec::new();
    for q in scratch.drain(..) {
        match q.try_send(out.clone()) {
            Ok(()) => {}
            Err(TrySendError::Full(out)) => blocked.push((q, out)),
            Err(TrySendError::Closed(_)) => gone = true,
        }
    }
    if !blocked.is_empty() {
        let sends = blocked
            .into_iter()
            .map(|(q, out)| async move { q.send(out).await.is_err() });
        gone |= futures::future::join_all(sends)
            .await
            .into_iter()
            .any(|failed| failed);
    }
    if gone {
        handle.prune();
    }
}
