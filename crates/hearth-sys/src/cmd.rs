// SPDX-License-Identifier: Apache-2.0
//! Running external tools with errors that say exactly what ran and what it printed.

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// An external command that could not run or did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// The program could not be started at all.
    #[error("failed to run {argv}")]
    Spawn {
        /// The command line, shell-quoted for reading.
        argv: String,
        /// Why it could not start.
        #[source]
        err: std::io::Error,
    },
    /// The program ran and exited unsuccessfully.
    #[error("{argv} failed ({status}): {stderr}")]
    Failed {
        /// The command line, shell-quoted for reading.
        argv: String,
        /// How it exited.
        status: std::process::ExitStatus,
        /// What it wrote to stdout.
        stdout: String,
        /// What it wrote to stderr (trimmed).
        stderr: String,
    },
}

fn render_argv(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts
        .iter()
        .map(|p| {
            if p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+".contains(c))
            {
                p.clone()
            } else {
                format!("'{}'", p.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` to completion, capturing output; a non-zero exit is an error.
pub fn execute(cmd: &mut Command) -> Result<Output, CmdError> {
    let output = cmd.output().map_err(|err| CmdError::Spawn {
        argv: render_argv(cmd),
        err,
    })?;
    if !output.status.success() {
        return Err(CmdError::Failed {
            argv: render_argv(cmd),
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(output)
}

/// How much of a streamed command's stderr is kept for its error.
const STDERR_TAIL: usize = 16 * 1024;

/// Runs `cmd` to completion like [`execute`], handing each line it writes to stderr to
/// `on_line` as it appears (for progress display of long-running tools).
///
/// Stdout is captured whole; only the last 16 KiB of stderr are kept for the error.
pub fn execute_streaming(
    cmd: &mut Command,
    mut on_line: impl FnMut(&str),
) -> Result<Output, CmdError> {
    use std::io::{BufRead, Read};

    let spawn_err = |cmd: &Command, err| CmdError::Spawn {
        argv: render_argv(cmd),
        err,
    };
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| spawn_err(cmd, err))?;
    let mut stdout = child
        .stdout
        .take()
        .expect("stdout was configured as a pipe");
    let stderr = child
        .stderr
        .take()
        .expect("stderr was configured as a pipe");
    // Stdout drains on its own thread so a chatty tool cannot block on a full pipe
    // while this thread waits for its next stderr line.
    let stdout_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let mut tail = Vec::new();
    let mut reader = std::io::BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        tail.extend_from_slice(&line);
        if tail.len() > 2 * STDERR_TAIL {
            tail.drain(..tail.len() - STDERR_TAIL);
        }
        let text = String::from_utf8_lossy(&line);
        on_line(text.trim_end_matches(['\n', '\r']));
    }
    let status = child.wait().map_err(|err| spawn_err(cmd, err))?;
    let stdout = stdout_reader.join().unwrap_or_default();
    if tail.len() > STDERR_TAIL {
        tail.drain(..tail.len() - STDERR_TAIL);
    }
    if !status.success() {
        return Err(CmdError::Failed {
            argv: render_argv(cmd),
            status,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&tail).trim().to_owned(),
        });
    }
    Ok(Output {
        status,
        stdout,
        stderr: tail,
    })
}

/// Runs `cmd` to completion with `input` on its stdin, capturing output; a non-zero exit
/// is an error. Used for tools that read a script (`nft -f -`) so the script needs no
/// temporary file and no argv length limit.
pub fn execute_with_stdin(cmd: &mut Command, input: &[u8]) -> Result<Output, CmdError> {
    let spawn_err = |cmd: &Command, err| CmdError::Spawn {
        argv: render_argv(cmd),
        err,
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| spawn_err(cmd, err))?;
    let mut stdin = child.stdin.take().expect("stdin was configured as piped");
    // A tool that exits early closes its stdin: that shows up as its exit status, not
    // as a write error here.
    let written = stdin.write_all(input);
    drop(stdin);
    let output = child
        .wait_with_output()
        .map_err(|err| spawn_err(cmd, err))?;
    if !output.status.success() {
        return Err(CmdError::Failed {
            argv: render_argv(cmd),
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    written.map_err(|err| spawn_err(cmd, err))?;
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_keeps_argv_and_stderr() {
        let err = execute(Command::new("sh").args(["-c", "echo oops >&2; exit 3"])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("sh -c 'echo oops >&2; exit 3'"), "{text}");
        assert!(text.contains("oops"), "{text}");
    }

    #[test]
    fn streaming_hands_over_each_stderr_line() {
        let mut lines = Vec::new();
        let out = execute_streaming(
            Command::new("sh").args(["-c", "echo out; echo one >&2; echo two >&2"]),
            |l| lines.push(l.to_owned()),
        )
        .unwrap();
        assert_eq!(lines, ["one", "two"]);
        assert_eq!(out.stdout, b"out\n");
    }

    #[test]
    fn streaming_failure_keeps_stderr() {
        let err = execute_streaming(
            Command::new("sh").args(["-c", "echo broken >&2; exit 2"]),
            |_| {},
        )
        .unwrap_err();
        assert!(err.to_string().contains("broken"), "{err}");
    }

    #[test]
    fn stdin_reaches_the_program() {
        let out = execute_with_stdin(&mut Command::new("cat"), b"hello").unwrap();
        assert_eq!(out.stdout, b"hello");
    }

    #[test]
    fn missing_program_is_spawn_error() {
        let err = execute(&mut Command::new("/nonexistent/prog")).unwrap_err();
        assert!(matches!(err, CmdError::Spawn { .. }));
    }
}
