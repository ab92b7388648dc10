# SPDX-License-Identifier: Apache-2.0
"""Looking at sandboxes from outside for the pause, snapshot and fork suites: what a
sandbox's detail says (`state`, `pauseMode`), which of its processes still exist, its
boot id, and markers for behaviour that differs between runtimes.

Runtime differences (docs/design.md, "What pause keeps"): a container's memory pause
freezes it in place and its boot id is the host's, so a fresh boot cannot be told
apart by boot id; a microVM's memory pause is a saved VM (same boot id on resume) and
its filesystem pause a cold boot (new boot id). Snapshots and forks of containers keep
files only; of microVMs, memory and processes too.
"""

from __future__ import annotations

import time

import pytest
from e2b import Sandbox, SandboxState

from .serve import RUNTIME, ServeServer

MICROVM = RUNTIME == "microvm"

microvm_only = pytest.mark.skipif(
    not MICROVM,
    reason="needs the microVM runtime (HEARTH_COMPAT_RUNTIME=microvm): a container's "
    "boot id is the host's, so a fresh boot of one does not change it",
)
container_only = pytest.mark.skipif(
    MICROVM, reason="container runtime behaviour (HEARTH_COMPAT_RUNTIME=container)"
)


def detail(server: ServeServer, sandbox_id: str) -> dict:
    """The raw `GET /sandboxes/{id}` body (the SDK does not expose `pauseMode`)."""
    with server.api() as api:
        r = api.get(f"/sandboxes/{sandbox_id}")
    assert r.status_code == 200, (r.status_code, r.text)
    return r.json()


def state_of(sandbox_id: str, **opts) -> SandboxState:
    return Sandbox.get_info(sandbox_id, **opts).state


def wait_state(sandbox_id: str, want: SandboxState, within: float, **opts) -> float:
    """Polls until the sandbox is in state `want`; returns the seconds it took."""
    start = time.monotonic()
    while (state := state_of(sandbox_id, **opts)) != want:
        assert time.monotonic() - start < within, (
            f"sandbox {sandbox_id} still {state} after {within}s (wanted {want})"
        )
        time.sleep(0.1)
    return time.monotonic() - start


def boot_id(sandbox: Sandbox) -> str:
    out = sandbox.commands.run("cat /proc/sys/kernel/random/boot_id").stdout.strip()
    assert len(out) == 36, out
    return out


def start_sleeper(sandbox: Sandbox, seconds: int) -> int:
    """Starts `sleep <seconds>` in the background; returns its pid in the sandbox.
    Distinct `seconds` per test make the process recognisable."""
    return sandbox.commands.run(f"sleep {seconds}", background=True).pid


def sleepers(sandbox: Sandbox, seconds: int) -> list[int]:
    """Pids of the sandbox's `sleep <seconds>` processes (from /proc: the image need
    not have procps)."""
    script = (
        "for p in /proc/[0-9]*; do "
        f'[ "$(tr "\\000" " " < $p/cmdline 2>/dev/null)" = "sleep {seconds} " ] '
        "&& echo ${p#/proc/}; done; true"
    )
    out = sandbox.commands.run(script, user="root").stdout
    return sorted(int(p) for p in out.split())


def write_files(sandbox: Sandbox, files: dict[str, str]) -> None:
    for path, content in files.items():
        sandbox.files.write(path, content)


def assert_files(sandbox: Sandbox, files: dict[str, str | None]) -> None:
    """Each path has the content given, or does not exist (None); read both through
    envd's file API and through a shell, which must agree."""
    for path, content in files.items():
        if content is None:
            assert not sandbox.files.exists(path), f"{path} exists (it was deleted)"
            r = sandbox.commands.run(f"test -e {path} && echo there || echo gone")
            assert r.stdout == "gone\n", path
        else:
            assert sandbox.files.read(path) == content, path
            assert sandbox.commands.run(f"cat {path}").stdout == content, path
