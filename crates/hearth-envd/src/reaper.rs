// SPDX-License-Identifier: Apache-2.0
//! The single place where envd waits for children.
//!
//! As PID 1 (or a child subreaper) envd inherits every orphan in the sandbox and must
//! reap them, but a blanket `waitpid(-1)` would also steal the exit status of the
//! processes it started itself. So nothing else in envd waits: every child is spawned
//! through [`Children::spawn`], which registers its pid while holding the table lock
//! (the reaper cannot see the exit before the registration), and the reaper task
//! delivers each exit to whoever registered it. Exits of unknown pids are orphans and
//! are dropped.

use hearth_sys::process::{ChildExit, reap_any};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Registered children waiting for their exit status.
#[derive(Debug, Default)]
pub struct Children {
    waiting: Mutex<HashMap<u32, oneshot::Sender<ChildExit>>>,
}

impl Children {
    /// Runs `spawn` (which starts one child and returns its pid) with the table locked,
    /// and returns a receiver for that child's exit.
    pub fn spawn<T>(
        &self,
        spawn: impl FnOnce() -> std::io::Result<(T, u32)>,
    ) -> std::io::Result<(T, u32, oneshot::Receiver<ChildExit>)> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let (value, pid) = spawn()?;
        let (tx, rx) = oneshot::channel();
        waiting.insert(pid, tx);
        Ok((value, pid, rx))
    }

    /// Runs `f` only if `pid` is a registered child that has not been reaped yet, and
    /// returns its result. While the reaper cannot run, the pid cannot be reused, so a
    /// signal sent from `f` reaches the intended process (or its zombie).
    pub fn while_unreaped<R>(&self, pid: u32, f: impl FnOnce() -> R) -> Option<R> {
        let waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting.contains_key(&pid).then(f)
    }

    /// Reaps every exited child and delivers the statuses; returns how many were reaped.
    pub fn reap(&self) -> usize {
        let mut n = 0;
        loop {
            // Lock before waiting so an exit cannot slip between spawn and registration.
            let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            match reap_any() {
                Ok(Some((pid, exit))) => {
                    n += 1;
                    if let Some(tx) = waiting.remove(&pid) {
                        let _ = tx.send(exit);
                    } else {
                        tracing::debug!(pid, ?exit, "reaped orphan");
                    }
                }
                Ok(None) => return n,
                Err(err) => {
                    if err.raw_os_error() != Some(libc::ECHILD) {
                        tracing::warn!(error = %err, "waitpid failed");
                    }
                    return n;
                }
            }
        }
    }
}

/// Starts the reaper task: it reaps on every SIGCHLD, and once a second as a backstop.
pub fn spawn(children: Arc<Children>) {
    tokio::spawn(async move {
        let mut sigchld = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
        {
            Ok(s) => Some(s),
            Err(err) => {
                tracing::error!(error = %err, "cannot watch SIGCHLD; polling for exits");
                None
            }
        };
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            match sigchld.as_mut() {
                Some(s) => {
                    tokio::select! {
                        _ = s.recv() => {}
                        _ = tick.tick() => {}
                    }
                }
                None => {
                    tick.tick().await;
                }
            }
            let children = children.clone();
            // waitpid is non-blocking here, but the lock may be held across a fork.
            let _ = tokio::task::spawn_blocking(move || children.reap()).await;
        }
    });
}
