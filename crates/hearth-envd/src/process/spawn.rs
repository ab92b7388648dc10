// SPDX-License-Identifier: Apache-2.0
//! Starting a process: the command, its identity, its stdio, and registration with
//! the reaper.
//!
//! The child is set up between fork and exec by [`hearth_sys::process::ChildSetup`]:
//! a new session (its pid is its process group, so signals reach everything it
//! starts), the controlling terminal for PTY processes, `oom_score_adj` 100 so user
//! processes die before envd under memory pressure, the user's uid/gid/groups, and
//! the working directory. No shell is involved. The spawn runs under the reaper's
//! lock ([`Children::spawn`]) so the exit cannot be reaped before it is registered.

use super::pty::PtyMaster;
use super::table::ProcIo;
use crate::error::EnvdError;
use crate::reaper::Children;
use crate::users::User;
use hearth_envd_proto::process::ProcessConfig;
use hearth_sys::process::{ChildExit, ChildSetup, Credentials, configure_child};
use hearth_sys::pty::{WindowSize, openpty};
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

/// OOM score adjustment of processes started for users (upstream uses the same).
const USER_OOM_SCORE_ADJ: i32 = 100;

/// Everything needed to start one process, resolved and validated.
#[derive(Debug)]
pub(crate) struct StartSpec<'a> {
    /// Command, arguments and requested environment.
    pub(crate) config: &'a ProcessConfig,
    /// Terminal size, for a PTY process.
    pub(crate) pty: Option<WindowSize>,
    /// Whether stdin is a pipe (else `/dev/null`); ignored for PTYs.
    pub(crate) stdin: bool,
    /// Who runs it.
    pub(crate) user: &'a User,
    /// Where it runs.
    pub(crate) cwd: PathBuf,
    /// Its whole environment.
    pub(crate) env: BTreeMap<String, String>,
}

/// Where a started process's output comes from.
#[derive(Debug)]
pub(crate) enum Outputs {
    /// Separate stdout and stderr pipes.
    Pipes {
        /// Read end of stdout.
        stdout: pipe::Receiver,
        /// Read end of stderr.
        stderr: pipe::Receiver,
    },
    /// The terminal master.
    Pty(Arc<PtyMaster>),
}

/// A started process.
#[derive(Debug)]
pub(crate) struct Spawned {
    /// Its pid.
    pub(crate) pid: u32,
    /// Its input side.
    pub(crate) io: ProcIo,
    /// Its output side.
    pub(crate) outputs: Outputs,
    /// Delivers its exit status (from the reaper).
    pub(crate) exit: oneshot::Receiver<ChildExit>,
}

/// Starts the process described by `spec`.
pub(crate) fn spawn(children: &Children, spec: StartSpec<'_>) -> Result<Spawned, EnvdError> {
    let config = spec.config;
    if config.cmd.is_empty() {
        return Err(EnvdError::InvalidArgument(
            "process.cmd must not be empty".to_owned(),
        ));
    }
    if config.cmd.contains('\0') || config.args.iter().any(|a| a.contains('\0')) {
        return Err(EnvdError::InvalidArgument(
            "process.cmd and process.args must not contain NUL bytes".to_owned(),
        ));
    }

    let mut cmd = Command::new(&config.cmd);
    cmd.args(&config.args).env_clear().envs(&spec.env);

    let pty = match spec.pty {
        Some(size) => {
            let pty = openpty(size)
                .map_err(|err| EnvdError::io("failed to open a pseudo-terminal", err))?;
            // Like login(1): the user owns their terminal, so tools that reopen it by
            // name (ttyname) work. Best effort; the inherited descriptors work anyway.
            if nix::unistd::geteuid().is_root() {
                let _ = nix::unistd::fchown(
                    &pty.slave,
                    Some(nix::unistd::Uid::from_raw(spec.user.uid)),
                    None,
                );
            }
            let dup = |fd: &OwnedFd| {
                fd.try_clone()
                    .map_err(|err| EnvdError::io("failed to duplicate the terminal", err))
            };
            cmd.stdin(Stdio::from(dup(&pty.slave)?))
                .stdout(Stdio::from(dup(&pty.slave)?))
                .stderr(Stdio::from(pty.slave));
            Some(pty.master)
        }
        None => {
            cmd.stdin(if spec.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
            None
        }
    };

    configure_child(
        &mut cmd,
        ChildSetup {
            new_session: true,
            controlling_tty: pty.is_some(),
            oom_score_adj: Some(USER_OOM_SCORE_ADJ),
            credentials: credentials(spec.user)?,
            cwd: Some(spec.cwd.clone()),
        },
    )
    .map_err(|err| EnvdError::io(format!("invalid working directory {:?}", spec.cwd), err))?;

    let (mut child, pid, exit) = children
        .spawn(|| {
            let child = cmd.spawn()?;
            let pid = child.id();
            Ok((child, pid))
        })
        .map_err(|err| {
            EnvdError::io(
                format!(
                    "failed to start '{}' in '{}'",
                    config.cmd,
                    spec.cwd.display()
                ),
                err,
            )
        })?;
    // The command holds our copies of the terminal slave; the master only sees a
    // hang-up once every copy outside the child is closed.
    drop(cmd);

    match attach(&mut child, pty) {
        Ok((io, outputs)) => Ok(Spawned {
            pid,
            io,
            outputs,
            exit,
        }),
        Err(err) => {
            // Nobody could ever read or stop it: do not leave it behind.
            if let Ok(pgrp) = i32::try_from(pid) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pgrp),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            Err(err)
        }
    }
}

/// Registers the parent's ends of the child's stdio with the runtime.
fn attach(
    child: &mut std::process::Child,
    pty: Option<OwnedFd>,
) -> Result<(ProcIo, Outputs), EnvdError> {
    Ok(match pty {
        Some(master) => {
            let master = Arc::new(
                PtyMaster::new(master)
                    .map_err(|err| EnvdError::io("failed to watch the terminal", err))?,
            );
            (ProcIo::Pty(master.clone()), Outputs::Pty(master))
        }
        None => {
            let stdin = child
                .stdin
                .take()
                .map(|s| pipe::Sender::from_owned_fd(OwnedFd::from(s)))
                .transpose()
                .map_err(|err| EnvdError::io("failed to watch stdin", err))?;
            let reader = |fd: Option<OwnedFd>| -> Result<pipe::Receiver, EnvdError> {
                let fd = fd.ok_or_else(|| EnvdError::Internal("missing output pipe".into()))?;
                pipe::Receiver::from_owned_fd(fd)
                    .map_err(|err| EnvdError::io("failed to watch output", err))
            };
            let stdout = reader(child.stdout.take().map(OwnedFd::from))?;
            let stderr = reader(child.stderr.take().map(OwnedFd::from))?;
            (
                ProcIo::Pipes {
                    stdin: tokio::sync::Mutex::new(stdin),
                },
                Outputs::Pipes { stdout, stderr },
            )
        }
    })
}

/// The identity to switch to: none when envd already is that user, which also lets
/// an unprivileged envd (development) run processes as itself.
fn credentials(user: &User) -> Result<Option<Credentials>, EnvdError> {
    let euid = nix::unistd::geteuid();
    if euid.is_root() {
        return Ok(Some(Credentials {
            uid: user.uid,
            gid: user.gid,
            groups: user.groups.clone(),
        }));
    }
    if euid.as_raw() == user.uid {
        return Ok(None);
    }
    Err(EnvdError::PermissionDenied(format!(
        "envd does not run as root and cannot start processes as '{}'",
        user.name
    )))
}
