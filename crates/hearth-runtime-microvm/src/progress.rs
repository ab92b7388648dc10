// SPDX-License-Identifier: Apache-2.0
//! Progress reporting for the slow first-use steps (downloads, image builds, boots).
//!
//! The trait has the same shape as the template builder's, so one reporter can serve
//! both.

/// Receives what a long operation is doing.
pub trait Progress: Send + Sync {
    /// A new phase began (e.g. "downloading the guest kernel").
    fn phase(&self, message: &str);
    /// A detail of the current phase (a tool's output line, a size).
    fn detail(&self, line: &str);
    /// The operation ended; `message` says how.
    fn finish(&self, message: &str);
}

/// Discards every report.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn phase(&self, _message: &str) {}
    fn detail(&self, _line: &str) {}
    fn finish(&self, _message: &str) {}
}

/// Reports through `tracing` at info level.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogProgress;

impl Progress for LogProgress {
    fn phase(&self, message: &str) {
        tracing::info!("{message}");
    }
    fn detail(&self, line: &str) {
        let line = line.trim();
        if !line.is_empty() {
            tracing::info!("  {line}");
        }
    }
    fn finish(&self, message: &str) {
        tracing::info!("{message}");
    }
}
