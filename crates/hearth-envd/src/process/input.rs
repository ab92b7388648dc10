// SPDX-License-Identifier: Apache-2.0
//! Input to a process: `stdin` bytes into its pipe, `pty` bytes into its terminal.
//!
//! The input kind must match how the process was started; writing `stdin` to a PTY
//! process (or `pty` to a pipe process) is `invalid_argument`. Writes wait while the
//! pipe is full, like a writer to a slow reader; the RPC's own deadline bounds that.

use super::table::{ProcHandle, ProcIo};
use crate::error::EnvdError;
use hearth_envd_proto::process::ProcessInput;
use hearth_envd_proto::process::process_input::Input;
use tokio::io::AsyncWriteExt;

/// Writes `input` to the process.
pub(crate) async fn write(
    handle: &ProcHandle,
    input: Option<&ProcessInput>,
) -> Result<(), EnvdError> {
    let pid = handle.pid;
    match (input.and_then(|i| i.input.as_ref()), &handle.io) {
        (Some(Input::Stdin(data)), ProcIo::Pipes { stdin }) => {
            let mut stdin = stdin.lock().await;
            let Some(pipe) = stdin.as_mut() else {
                return Err(EnvdError::FailedPrecondition(format!(
                    "stdin of process {pid} is closed or was not enabled"
                )));
            };
            pipe.write_all(data).await.map_err(|err| {
                if err.kind() == std::io::ErrorKind::BrokenPipe {
                    EnvdError::FailedPrecondition(format!("process {pid} closed its stdin"))
                } else {
                    EnvdError::io(format!("failed to write to stdin of process {pid}"), err)
                }
            })
        }
        (Some(Input::Pty(data)), ProcIo::Pty(master)) => {
            master.write_all(data).await.map_err(|err| {
                EnvdError::io(format!("failed to write to the pty of process {pid}"), err)
            })
        }
        (Some(Input::Stdin(_)), ProcIo::Pty(_)) => Err(EnvdError::InvalidArgument(format!(
            "process {pid} has a pty: send its input as pty, not stdin"
        ))),
        (Some(Input::Pty(_)), ProcIo::Pipes { .. }) => Err(EnvdError::InvalidArgument(format!(
            "process {pid} has no pty: send its input as stdin"
        ))),
        (None, _) => Err(EnvdError::InvalidArgument(
            "input (stdin or pty) is required".to_owned(),
        )),
    }
}

/// Closes the process's stdin pipe so it reads end-of-file; closing twice is fine.
pub(crate) async fn close_stdin(handle: &ProcHandle) -> Result<(), EnvdError> {
    match &handle.io {
        ProcIo::Pipes { stdin } => {
            drop(stdin.lock().await.take());
            Ok(())
        }
        ProcIo::Pty(_) => Err(EnvdError::InvalidArgument(format!(
            "process {} has a pty: send Ctrl-D (0x04) to end its input",
            handle.pid
        ))),
    }
}
