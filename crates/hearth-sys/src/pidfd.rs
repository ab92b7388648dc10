// SPDX-License-Identifier: Apache-2.0
//! Process file descriptors: race-free signalling and waiting.
//!
//! A pidfd names one process for as long as the fd is open, even after its pid
//! number is recycled, so signalling through it can never hit an unrelated process.

use crate::process::ChildExit;
use crate::util::check;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// Opens a pidfd for `pid` (pidfd_open(2)); `ESRCH` if no such process exists.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: pidfd_open(2) takes a pid and flags (0 means close-on-exec since 5.3 is
    // implied for pidfds) and touches no memory of ours.
    let fd = check(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: pidfd_open(2) returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Sends `signal` to the process behind `pidfd` (pidfd_send_signal(2)).
///
/// `ESRCH` means the process has already exited.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: a null siginfo makes the kernel build a SI_USER info itself; no memory
    // of ours is read or written.
    check(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    })?;
    Ok(())
}

/// Waits until the process behind `pidfd` exits, at most `timeout` (`None`: forever).
///
/// Returns whether it has exited. Works for any process, child or not; it does not
/// reap a child (see [`reap`]).
pub fn wait_exit(pidfd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    loop {
        let mut pfd = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(std::time::Instant::now());
                libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX)
            }
        };
        // SAFETY: `pfd` is a valid pollfd array of length 1 that lives across the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc == -1 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if rc == 1 {
            return Ok(true);
        }
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            return Ok(false);
        }
    }
}

/// Reaps the child behind `pidfd` (waitid(2) with `P_PIDFD`): blocks until it exits
/// unless `nohang`, in which case `Ok(None)` means it is still running.
///
/// `ECHILD` means the process is not our child (or was reaped already).
pub fn reap(pidfd: BorrowedFd<'_>, nohang: bool) -> io::Result<Option<ChildExit>> {
    let mut flags = libc::WEXITED;
    if nohang {
        flags |= libc::WNOHANG;
    }
    loop {
        // SAFETY: siginfo_t is plain data for which all-zero bytes are valid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid siginfo_t that waitid(2) fills; the pidfd is open
        // for the duration of the borrow.
        let rc = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                flags,
            )
        };
        if rc == -1 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        // SAFETY: waitid(2) succeeded, so `info` holds a SIGCHLD siginfo (or all zeros
        // under WNOHANG with no exited child), whose pid and status fields are valid.
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if pid == 0 {
            return Ok(None);
        }
        let exit = if info.si_code == libc::CLD_EXITED {
            ChildExit::Exited(status)
        } else {
            ChildExit::Signaled {
                signal: status,
                core_dumped: info.si_code == libc::CLD_DUMPED,
            }
        };
        return Ok(Some(exit));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::process::Command;

    #[test]
    fn pidfd_of_missing_process_is_esrch() {
        // Pid numbers never reach i32::MAX - 1 on Linux (pid_max is at most 2^22).
        let err = pidfd_open(i32::MAX as u32 - 1).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH));
    }

    #[test]
    fn killing_through_pidfd_is_observed_by_wait() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let fd = pidfd_open(child.id()).unwrap();
        assert!(!wait_exit(fd.as_fd(), Some(Duration::from_millis(10))).unwrap());
        pidfd_send_signal(fd.as_fd(), libc::SIGKILL).unwrap();
        assert!(wait_exit(fd.as_fd(), Some(Duration::from_secs(5))).unwrap());
        let exit = reap(fd.as_fd(), false).unwrap();
        assert_eq!(
            exit,
            Some(ChildExit::Signaled {
                signal: libc::SIGKILL,
                core_dumped: false
            })
        );
        // Signalling a reaped process is ESRCH, never another process.
        let err = pidfd_send_signal(fd.as_fd(), libc::SIGKILL).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH));
        // Already reaped through the pidfd: std's wait sees no child.
        assert!(child.wait().is_err());
    }

    #[test]
    fn nohang_reap_of_running_child_is_none() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let fd = pidfd_open(child.id()).unwrap();
        assert_eq!(reap(fd.as_fd(), true).unwrap(), None);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
