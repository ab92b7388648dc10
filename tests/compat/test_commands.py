# SPDX-License-Identifier: Apache-2.0
"""commands.*: run, stdin, background + connect, kill, list, timeouts, env vars and
chunked output, through the unmodified Python SDK."""

from __future__ import annotations

import threading
import time

import pytest
from e2b import CommandExitException, Sandbox, TimeoutException


def test_run_returns_stdout_stderr_and_exit_code(sandbox: Sandbox):
    result = sandbox.commands.run("echo hello; echo oops >&2")
    assert result.exit_code == 0
    assert result.stdout == "hello\n"
    assert result.stderr == "oops\n"
    assert result.error is None


def test_nonzero_exit_raises_with_result(sandbox: Sandbox):
    with pytest.raises(CommandExitException) as exc:
        sandbox.commands.run("echo partial; exit 3")
    assert exc.value.exit_code == 3
    assert exc.value.stdout == "partial\n"


def test_streaming_callbacks_see_every_line_in_order(sandbox: Sandbox):
    lines: list[str] = []
    sandbox.commands.run(
        "for i in 1 2 3 4 5; do echo line$i; sleep 0.05; done",
        on_stdout=lines.append,
    )
    assert "".join(lines) == "".join(f"line{i}\n" for i in range(1, 6))


def test_output_is_delivered_while_the_command_runs(sandbox: Sandbox):
    seen = threading.Event()
    handle = sandbox.commands.run("echo first; sleep 30", background=True)
    start = time.monotonic()

    def read():
        for stdout, _, _ in handle:
            if stdout and "first" in stdout:
                seen.set()
                return

    threading.Thread(target=read, daemon=True).start()
    assert seen.wait(10), "the first line did not arrive while the command ran"
    assert time.monotonic() - start < 10
    handle.kill()


def test_env_vars_reach_the_command(sandbox: Sandbox):
    result = sandbox.commands.run(
        'echo "$FOO|$BAR"', envs={"FOO": "foo value", "BAR": "ünï"}
    )
    assert result.stdout == "foo value|ünï\n"


def test_standard_env_vars_describe_the_user(sandbox: Sandbox):
    result = sandbox.commands.run('echo "$HOME|$USER|$LOGNAME"', user="user")
    assert result.stdout == "/home/user|user|user\n"
    result = sandbox.commands.run('echo "$HOME|$USER"', user="root")
    assert result.stdout == "/root|root\n"


def test_cwd_is_honoured(sandbox: Sandbox):
    assert sandbox.commands.run("pwd", cwd="/tmp").stdout == "/tmp\n"


def test_utf8_character_split_across_output_chunks_is_decoded(sandbox: Sandbox):
    # 32767 ASCII bytes then a 3-byte character: the chunk boundary at 32 KiB falls
    # inside the character, which the SDK must still decode as one.
    script = "import sys; sys.stdout.write('a' * 32767 + '€' * 3 + 'end'); sys.stdout.flush()"
    result = sandbox.commands.run(f'python3 -c "{script}"')
    assert result.stdout == "a" * 32767 + "€€€end"
    assert "\ufffd" not in result.stdout


def test_large_output_arrives_complete(sandbox: Sandbox):
    result = sandbox.commands.run("head -c 3000000 /dev/zero | tr '\\0' x")
    assert len(result.stdout) == 3_000_000


def test_stdin_send_and_close(sandbox: Sandbox):
    handle = sandbox.commands.run("cat", background=True, stdin=True)
    sandbox.commands.send_stdin(handle.pid, "hello ")
    handle.send_stdin("world\n")
    sandbox.commands.close_stdin(handle.pid)
    result = handle.wait()
    assert result.exit_code == 0
    assert result.stdout == "hello world\n"


def test_stdin_off_reads_eof(sandbox: Sandbox):
    result = sandbox.commands.run("cat; echo done", timeout=10)
    assert result.stdout == "done\n"


def test_background_command_and_connect(sandbox: Sandbox):
    handle = sandbox.commands.run(
        "for i in 1 2 3; do echo tick$i; sleep 0.3; done", background=True
    )
    pid = handle.pid
    handle.disconnect()
    # Closing the first stream must not kill the process.
    again = sandbox.commands.connect(pid)
    result = again.wait()
    assert result.exit_code == 0
    assert "tick3\n" in result.stdout


def test_connect_to_just_exited_process_replays_its_end(sandbox: Sandbox):
    handle = sandbox.commands.run("echo bye", background=True)
    pid = handle.pid
    handle.wait()
    try:
        late = sandbox.commands.connect(pid)
    except Exception as err:  # noqa: BLE001 - the spec allows not_found after a while
        pytest.fail(f"connect right after exit failed: {err!r}")
    assert late.wait().exit_code == 0


def test_list_shows_running_commands_with_their_config(sandbox: Sandbox):
    handle = sandbox.commands.run("sleep 30", background=True, envs={"MARK": "listed"}, cwd="/tmp")
    try:
        procs = {p.pid: p for p in sandbox.commands.list()}
        assert handle.pid in procs
        info = procs[handle.pid]
        assert info.cmd == "/bin/bash"
        assert info.args[-1] == "sleep 30"
        assert info.envs.get("MARK") == "listed"
        assert info.cwd == "/tmp"
    finally:
        handle.kill()


def test_kill_stops_the_command_and_unknown_pid_is_false(sandbox: Sandbox):
    handle = sandbox.commands.run("sleep 60", background=True)
    assert sandbox.commands.kill(handle.pid) is True
    with pytest.raises(CommandExitException) as exc:
        handle.wait()
    assert exc.value.exit_code != 0
    assert handle.pid not in {p.pid for p in sandbox.commands.list()}
    assert sandbox.commands.kill(handle.pid) is False
    assert sandbox.commands.kill(999_999) is False


def test_timeout_raises_and_kills_the_process(sandbox: Sandbox):
    started = time.monotonic()
    with pytest.raises(TimeoutException):
        sandbox.commands.run("sleep 47.25", timeout=1)
    assert time.monotonic() - started < 10
    # envd kills the process at the deadline (Connect-Timeout-Ms), not just the client.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        # The bracket keeps pgrep from matching the shell running pgrep itself.
        left = sandbox.commands.run("pgrep -f 'sleep 47[.]25' || true", timeout=10).stdout
        if not left.strip():
            break
        time.sleep(0.1)
    assert not left.strip(), f"process survived its timeout: {left}"


def test_background_command_timeout_kills_it(sandbox: Sandbox):
    handle = sandbox.commands.run("sleep 48.5", background=True, timeout=1)
    time.sleep(2.5)
    assert handle.pid not in {p.pid for p in sandbox.commands.list()}
    left = sandbox.commands.run("pgrep -f 'sleep 48[.]5' || true").stdout
    assert not left.strip()


def test_many_concurrent_commands(sandbox: Sandbox):
    handles = [sandbox.commands.run(f"sleep 0.2; echo n{i}", background=True) for i in range(16)]
    outputs = sorted(h.wait().stdout for h in handles)
    assert outputs == sorted(f"n{i}\n" for i in range(16))
