# SPDX-License-Identifier: Apache-2.0
"""pty.*: create, input, resize (seen by `tput cols`), reconnect and kill."""

from __future__ import annotations

import threading
import time

from e2b import Sandbox
from e2b.sandbox.commands.command_handle import PtySize


def _collect(handle, sink: list[bytes]) -> threading.Thread:
    def run():
        try:
            for _, _, pty in handle:
                if pty is not None:
                    sink.append(pty)
        except Exception:  # noqa: BLE001 - the stream ends when the handle disconnects
            pass

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _read_until(handle, sink: list[bytes], needle: bytes) -> None:
    """Reads the handle's PTY output in this thread until `needle` appeared (the
    suite's timeout bounds it), so the handle can be disconnected afterwards."""
    for _, _, pty in handle:
        if pty is not None:
            sink.append(pty)
        if needle in b"".join(sink):
            return
    raise AssertionError(f"stream ended before {needle!r}: {b''.join(sink)!r}")


def _wait_for(sink: list[bytes], needle: bytes, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in b"".join(sink):
            return True
        time.sleep(0.02)
    return False


def test_pty_runs_input_and_exits(sandbox: Sandbox):
    terminal = sandbox.pty.create(PtySize(cols=80, rows=24))
    sandbox.pty.send_stdin(terminal.pid, b"echo pty-$((40+2))\nexit\n")
    out: list[bytes] = []
    result = terminal.wait(on_pty=out.append)
    assert result.exit_code == 0
    assert b"pty-42" in b"".join(out)


def test_pty_is_a_terminal_with_the_requested_environment(sandbox: Sandbox):
    terminal = sandbox.pty.create(PtySize(cols=80, rows=24), envs={"FOO": "bar"})
    sandbox.pty.send_stdin(terminal.pid, b'[ -t 0 ] && echo "tty:$TERM:$FOO"; exit\n')
    out: list[bytes] = []
    terminal.wait(on_pty=out.append)
    assert b"tty:xterm-256color:bar" in b"".join(out)


def test_tput_cols_before_and_after_resize(sandbox: Sandbox):
    terminal = sandbox.pty.create(PtySize(cols=80, rows=24))
    out: list[bytes] = []
    _collect(terminal, out)
    sandbox.pty.send_stdin(terminal.pid, b"echo cols=$(tput cols)\n")
    assert _wait_for(out, b"cols=80"), b"".join(out)
    sandbox.pty.resize(terminal.pid, PtySize(cols=123, rows=40))
    sandbox.pty.send_stdin(terminal.pid, b"echo size=$(tput cols)x$(tput lines)\n")
    assert _wait_for(out, b"size=123x40"), b"".join(out)
    sandbox.pty.kill(terminal.pid)


def test_pty_reconnect_keeps_the_session(sandbox: Sandbox):
    terminal = sandbox.pty.create(PtySize(cols=80, rows=24), envs={"FOO": "bar"})
    first: list[bytes] = []
    sandbox.pty.send_stdin(terminal.pid, b"export MARK=kept; echo one-$FOO\n")
    _read_until(terminal, first, b"one-bar")
    terminal.disconnect()

    again = sandbox.pty.connect(terminal.pid)
    assert again.pid == terminal.pid
    sandbox.pty.send_stdin(terminal.pid, b"echo two-$MARK\nexit\n")
    second: list[bytes] = []
    result = again.wait(on_pty=second.append)
    assert result.exit_code == 0
    assert b"two-kept" in b"".join(second)


def test_pty_kill(sandbox: Sandbox):
    terminal = sandbox.pty.create(PtySize(cols=80, rows=24))
    assert sandbox.pty.kill(terminal.pid) is True
    # The killed shell leaves the list once envd has reaped it.
    deadline = time.monotonic() + 5
    while terminal.pid in {p.pid for p in sandbox.commands.list()}:
        assert time.monotonic() < deadline, "killed PTY is still listed"
        time.sleep(0.05)
    assert sandbox.pty.kill(terminal.pid) is False


def test_pty_output_larger_than_a_chunk(sandbox: Sandbox):
    terminal = sandbox.pty.create(PtySize(cols=80, rows=24))
    sandbox.pty.send_stdin(terminal.pid, b"stty -echo; head -c 100000 /dev/zero | tr '\\0' y; echo; exit\n")
    out: list[bytes] = []
    terminal.wait(on_pty=out.append)
    assert b"".join(out).count(b"y") >= 100000
