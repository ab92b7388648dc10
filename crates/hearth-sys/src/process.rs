// SPDX-License-Identifier: Apache-2.0
//! Process-level primitives: child reaping and subreaper status.

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use std::io;

/// Marks the calling process as a child subreaper (prctl(PR_SET_CHILD_SUBREAPER)), so
/// orphaned descendants are re-parented to it instead of to PID 1.
pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes one integer argument and touches no memory
    // of ours; the unused arguments are zero as prctl(2) requires.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// How a reaped child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildExit {
    /// It called exit with this code.
    Exited(i32),
    /// A signal killed it.
    Signaled {
        /// The signal number.
        signal: i32,
        /// Whether it dumped core.
        core_dumped: bool,
    },
}

/// Reaps one exited child of any pid without blocking (waitpid(-1, WNOHANG)).
///
/// Returns `Ok(None)` when no child has exited, and `Err` with `ECHILD` when there are
/// no children at all.
pub fn reap_any() -> io::Result<Option<(u32, ChildExit)>> {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => {
                return Ok(Some((pid.as_raw().unsigned_abs(), ChildExit::Exited(code))));
            }
            Ok(WaitStatus::Signaled(pid, sig, core)) => {
                return Ok(Some((
                    pid.as_raw().unsigned_abs(),
                    ChildExit::Signaled {
                        signal: sig as i32,
                        core_dumped: core,
                    },
                )));
            }
            Ok(WaitStatus::StillAlive) => return Ok(None),
            // Stopped/continued children are still alive; keep looking for exits.
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(io::Error::from(e)),
        }
    }
}
