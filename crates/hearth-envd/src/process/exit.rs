// SPDX-License-Identifier: Apache-2.0
//! How a process ended, in the shape of upstream envd's `end` event.
//!
//! Upstream fills the event from Go's `os.ProcessState`, and SDKs show its text to
//! users, so the strings follow Go exactly: `status` is `ProcessState.String()`
//! (`"exit status 1"`, `"signal: killed"`, `"signal: segmentation fault (core
//! dumped)"`), `exit_code` is `ExitCode()` (−1 for a signal), and `error` is the text
//! of `Cmd.Wait`'s error, present whenever the process did not exit with 0.

use hearth_envd_proto::process::process_event::EndEvent;
use hearth_sys::process::ChildExit;
use std::borrow::Cow;

/// The `end` event for a child that ended with `exit`.
pub(crate) fn end_event(exit: ChildExit) -> EndEvent {
    let (exit_code, exited, status) = match exit {
        ChildExit::Exited(code) => (code, true, format!("exit status {code}")),
        ChildExit::Signaled {
            signal,
            core_dumped,
        } => {
            let core = if core_dumped { " (core dumped)" } else { "" };
            (-1, false, format!("signal: {}{core}", signal_name(signal)))
        }
    };
    let error = (exit != ChildExit::Exited(0)).then(|| status.clone());
    EndEvent {
        exit_code,
        exited,
        status,
        error,
        ..Default::default()
    }
}

/// The `end` event for a process whose exit status envd could not learn.
pub(crate) fn lost_event(reason: &str) -> EndEvent {
    EndEvent {
        exit_code: -1,
        exited: false,
        status: "unknown".to_owned(),
        error: Some(reason.to_owned()),
        ..Default::default()
    }
}

/// Go's name for signal `signal` (`syscall.Signal.String()` on Linux).
pub(crate) fn signal_name(signal: i32) -> Cow<'static, str> {
    const NAMES: [&str; 32] = [
        "",
        "hangup",
        "interrupt",
        "quit",
        "illegal instruction",
        "trace/breakpoint trap",
        "aborted",
        "bus error",
        "floating point exception",
        "killed",
        "user defined signal 1",
        "segmentation fault",
        "user defined signal 2",
        "broken pipe",
        "alarm clock",
        "terminated",
        "stack fault",
        "child exited",
        "continued",
        "stopped (signal)",
        "stopped",
        "stopped (tty input)",
        "stopped (tty output)",
        "urgent I/O condition",
        "CPU time limit exceeded",
        "file size limit exceeded",
        "virtual timer expired",
        "profiling timer expired",
        "window changed",
        "I/O possible",
        "power failure",
        "bad system call",
    ];
    match usize::try_from(signal).ok().and_then(|i| NAMES.get(i)) {
        Some(name) if !name.is_empty() => Cow::Borrowed(name),
        _ => Cow::Owned(format!("signal {signal}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_exit_has_no_error() {
        let e = end_event(ChildExit::Exited(0));
        assert_eq!((e.exit_code, e.exited), (0, true));
        assert_eq!(e.status, "exit status 0");
        assert_eq!(e.error, None);
    }

    #[test]
    fn failed_exit_repeats_status_as_error() {
        let e = end_event(ChildExit::Exited(3));
        assert_eq!((e.exit_code, e.exited), (3, true));
        assert_eq!(e.status, "exit status 3");
        assert_eq!(e.error.as_deref(), Some("exit status 3"));
    }

    #[test]
    fn signal_deaths_use_go_names_and_code_minus_one() {
        let kill = end_event(ChildExit::Signaled {
            signal: 9,
            core_dumped: false,
        });
        assert_eq!((kill.exit_code, kill.exited), (-1, false));
        assert_eq!(kill.status, "signal: killed");
        assert_eq!(kill.error.as_deref(), Some("signal: killed"));
        let term = end_event(ChildExit::Signaled {
            signal: 15,
            core_dumped: false,
        });
        assert_eq!(term.status, "signal: terminated");
        let segv = end_event(ChildExit::Signaled {
            signal: 11,
            core_dumped: true,
        });
        assert_eq!(segv.status, "signal: segmentation fault (core dumped)");
    }

    #[test]
    fn unknown_signals_are_numbered() {
        assert_eq!(signal_name(40), "signal 40");
        assert_eq!(signal_name(0), "signal 0");
        assert_eq!(signal_name(-3), "signal -3");
    }
}
