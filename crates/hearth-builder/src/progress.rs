// SPDX-License-Identifier: Apache-2.0
//! Progress reporting for long builds.
//!
//! Building the Debian layer takes minutes on first use, so whoever triggers it (the
//! first `hearth serve`, the dev CLI, the test harness) must see what is happening.
//! Builders report through the [`Progress`] trait; [`ConsoleProgress`] draws a spinner
//! on a terminal and writes plain log lines otherwise, [`NoProgress`] discards all.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;

/// Receives what a builder is doing.
pub trait Progress: Send + Sync {
    /// A new phase began (e.g. "bootstrapping Debian bookworm").
    fn phase(&self, message: &str);
    /// A line of output from the tool doing the current phase.
    fn detail(&self, line: &str);
    /// The build ended; `message` says how.
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

/// Reports to stderr: a spinner with the phase and latest line on a terminal, and
/// `tracing` log lines when stderr is not a terminal (CI, log files).
#[derive(Debug)]
pub struct ConsoleProgress {
    bar: Option<ProgressBar>,
}

impl ConsoleProgress {
    /// Chooses the spinner or plain lines depending on whether stderr is a terminal.
    pub fn new() -> Self {
        if !std::io::stderr().is_terminal() {
            return Self { bar: None };
        }
        let bar = ProgressBar::new_spinner();
        let style = ProgressStyle::with_template("{spinner} [{elapsed}] {prefix}: {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(120));
        Self { bar: Some(bar) }
    }
}

impl Default for ConsoleProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress for ConsoleProgress {
    fn phase(&self, message: &str) {
        match &self.bar {
            Some(bar) => {
                bar.set_prefix(message.to_owned());
                bar.set_message("");
            }
            None => tracing::info!("{message}"),
        }
    }

    fn detail(&self, line: &str) {
        let line = line.trim();
        if line.is_empty() {
            return;
        }
        match &self.bar {
            Some(bar) => bar.set_message(line.to_owned()),
            None => tracing::info!("  {line}"),
        }
    }

    fn finish(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.finish_with_message(message.to_owned()),
            None => tracing::info!("{message}"),
        }
    }
}

impl Drop for ConsoleProgress {
    fn drop(&mut self) {
        // A spinner left ticking would keep redrawing over later output.
        if let Some(bar) = &self.bar
            && !bar.is_finished()
        {
            bar.abandon();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_progress_without_terminal_does_not_panic() {
        // Under `cargo test` stderr is captured, so this exercises the log-line path.
        let p = ConsoleProgress::new();
        p.phase("phase");
        p.detail("  line  ");
        p.detail("");
        p.finish("done");
    }
}
