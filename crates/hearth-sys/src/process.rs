// SPDX-License-Identifier: Apache-2.0
//! Process-level primitives: child reaping, subreaper status, and the set-up a
//! spawned child does between fork and exec.

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

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

/// The identity a child switches to before exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids.
    pub groups: Vec<u32>,
}

/// What a spawned child does between fork and exec, in this order:
///
/// 1. `setsid(2)`, if `new_session`: the child leads a new session and process group
///    (its pgid is its pid), so a signal to the group reaches all it starts;
/// 2. `ioctl(0, TIOCSCTTY)`, if `controlling_tty`: its stdin (a terminal slave)
///    becomes the session's controlling terminal (needs step 1);
/// 3. writes `/proc/self/oom_score_adj`, if asked; best effort, done while still
///    privileged because a process that changed uid may not write its own proc files;
/// 4. `setgroups(2)`, `setgid(2)`, `setuid(2)`, if `credentials` are given;
/// 5. `chdir(2)`, if `cwd` is given, as the new user so its permissions apply.
#[derive(Debug, Clone, Default)]
pub struct ChildSetup {
    /// Start a new session.
    pub new_session: bool,
    /// Make stdin the controlling terminal.
    pub controlling_tty: bool,
    /// The child's OOM score adjustment (-1000..=1000).
    pub oom_score_adj: Option<i32>,
    /// Switch to this user and groups.
    pub credentials: Option<Credentials>,
    /// Change to this directory.
    pub cwd: Option<PathBuf>,
}

/// Makes `cmd`'s children run `setup` between fork and exec (see [`ChildSetup`]).
///
/// Everything the child needs is prepared here, so the child itself only makes
/// async-signal-safe system calls and never allocates. A failed step (except the
/// OOM score) makes `Command::spawn` fail with that step's errno.
pub fn configure_child(cmd: &mut Command, setup: ChildSetup) -> io::Result<()> {
    let cwd = setup
        .cwd
        .map(|p| CString::new(p.as_os_str().as_bytes()))
        .transpose()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let oom = setup.oom_score_adj.map(format_i32);
    let creds = setup.credentials.map(|c| {
        let groups: Vec<libc::gid_t> = c.groups.into_iter().collect();
        (c.uid, c.gid, groups)
    });
    let new_session = setup.new_session;
    let controlling_tty = setup.controlling_tty;
    let child = move || -> io::Result<()> {
        if new_session {
            // SAFETY: setsid(2) takes no arguments and is async-signal-safe.
            if unsafe { libc::setsid() } == -1 {
                return Err(io::Error::last_os_error());
            }
        }
        if controlling_tty {
            // SAFETY: TIOCSCTTY on fd 0 takes an integer argument (0: do not steal a
            // terminal owned by another session) and touches no memory of ours.
            if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } == -1 {
                return Err(io::Error::last_os_error());
            }
        }
        if let Some((buf, len)) = &oom {
            write_oom_score_adj(&buf[..*len]);
        }
        if let Some((uid, gid, groups)) = &creds {
            // SAFETY: the pointer and length describe the live `groups` vector, which
            // setgroups(2) only reads.
            if unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } == -1 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: setgid(2) takes an integer and touches no memory of ours.
            if unsafe { libc::setgid(*gid) } == -1 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: setuid(2) takes an integer and touches no memory of ours.
            if unsafe { libc::setuid(*uid) } == -1 {
                return Err(io::Error::last_os_error());
            }
        }
        if let Some(dir) = &cwd {
            // SAFETY: `dir` is a live NUL-terminated string that chdir(2) only reads.
            if unsafe { libc::chdir(dir.as_ptr()) } == -1 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: `child` runs in the forked child before exec. It only calls
    // async-signal-safe functions (setsid, ioctl, open, write, close, setgroups,
    // setgid, setuid, chdir) on data prepared before the fork, and never allocates,
    // locks or touches state shared with other threads of the parent.
    unsafe {
        cmd.pre_exec(child);
    }
    Ok(())
}

/// Formats `n` in decimal without allocating (for use after fork).
fn format_i32(n: i32) -> ([u8; 12], usize) {
    let mut out = [0u8; 12];
    let mut digits = [0u8; 11];
    let mut v = i64::from(n).unsigned_abs();
    let mut i = 0;
    loop {
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        i += 1;
        if v == 0 {
            break;
        }
    }
    let mut len = 0;
    if n < 0 {
        out[0] = b'-';
        len = 1;
    }
    while i > 0 {
        i -= 1;
        out[len] = digits[i];
        len += 1;
    }
    (out, len)
}

/// Writes `value` to `/proc/self/oom_score_adj`, ignoring failure (async-signal-safe).
fn write_oom_score_adj(value: &[u8]) {
    const PATH: &std::ffi::CStr = c"/proc/self/oom_score_adj";
    // SAFETY: PATH is a NUL-terminated static string that open(2) only reads.
    let fd = unsafe { libc::open(PATH.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd == -1 {
        return;
    }
    // SAFETY: `fd` was just opened by us; the pointer and length describe `value`,
    // which write(2) only reads.
    let _ = unsafe { libc::write(fd, value.as_ptr().cast(), value.len()) };
    // SAFETY: `fd` was opened above and is closed exactly once.
    let _ = unsafe { libc::close(fd) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;

    #[test]
    fn format_i32_handles_sign_and_extremes() {
        for n in [0, 7, 100, -1000, 1000, i32::MIN, i32::MAX] {
            let (buf, len) = format_i32(n);
            assert_eq!(std::str::from_utf8(&buf[..len]).unwrap(), n.to_string());
        }
    }

    #[test]
    fn child_gets_new_session_oom_score_and_cwd() {
        let mut cmd = Command::new("/bin/sh");
        cmd.args([
            "-c",
            "echo $$ $(cut -d' ' -f6 /proc/$$/stat) $(cat /proc/self/oom_score_adj) $(pwd)",
        ])
        .stdout(Stdio::piped());
        configure_child(
            &mut cmd,
            ChildSetup {
                new_session: true,
                oom_score_adj: Some(100),
                cwd: Some(PathBuf::from("/tmp")),
                ..Default::default()
            },
        )
        .unwrap();
        let out = cmd.output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let f: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(f[0], f[1], "the child must be its session leader: {text}");
        assert_eq!(f[2], "100", "{text}");
        assert_eq!(f[3], "/tmp", "{text}");
    }

    #[test]
    fn missing_cwd_fails_the_spawn_with_its_errno() {
        let mut cmd = Command::new("/bin/true");
        configure_child(
            &mut cmd,
            ChildSetup {
                cwd: Some(PathBuf::from("/nonexistent/dir")),
                ..Default::default()
            },
        )
        .unwrap();
        let err = cmd.spawn().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn credentials_switch_user_and_groups() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: needs root");
            return;
        }
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "id -u; id -g; id -G"])
            .stdout(Stdio::piped());
        configure_child(
            &mut cmd,
            ChildSetup {
                credentials: Some(Credentials {
                    uid: 65534,
                    gid: 65534,
                    groups: vec![65534, 4],
                }),
                ..Default::default()
            },
        )
        .unwrap();
        let out = cmd.output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "65534");
        assert_eq!(lines[1], "65534");
        assert!(lines[2].split(' ').any(|g| g == "4"), "{text}");
    }
}
