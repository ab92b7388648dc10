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
use std::sync::{Arc, Mutex, TryLockError};
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
        self.reap_some(true).unwrap_or_default()
    }

    /// Like [`Children::reap`], but gives up (returning `None`) as soon as the table is
    /// locked by a spawn in progress, so it can run on an async worker without blocking.
    pub fn try_reap(&self) -> Option<usize> {
        self.reap_some(false)
    }

    fn reap_some(&self, block: bool) -> Option<usize> {
        let mut n = 0;
        loop {
            // Lock before waiting so an exit cannot slip between spawn and registration.
            let mut waiting = match self.waiting.try_lock() {
                Ok(w) => w,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                Err(TryLockError::WouldBlock) if !block => return None,
                Err(TryLockError::WouldBlock) => {
                    self.waiting.lock().unwrap_or_else(|p| p.into_inner())
                }
            };
            match reap_any() {
                Ok(Some((pid, exit))) => {
                    n += 1;
                    if let Some(tx) = waiting.remove(&pid) {
                        let _ = tx.send(exit);
                    } else {
                        tracing::debug!(pid, ?exit, "reaped orphan");
                    }
                }
                Ok(None) => return Some(n),
                Err(err) => {
                    if err.raw_os_error() != Some(libc::ECHILD) {
                        tracing::warn!(error = %err, "waitpid failed");
                    }
                    return Some(n);
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
            // waitpid is non-blocking, so reap right here unless a spawn holds the lock
            // (across a fork and exec); only then wait for it on a blocking thread.
            if children.try_reap().is_none() {
                let children = children.clone();
                let _ = tokio::task::spawn_blocking(move || children.reap()).await;
            }
        }
    });
}
