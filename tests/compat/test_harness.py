# SPDX-License-Identifier: Apache-2.0
"""Self-tests of the envd-mode harness: envd really is PID 1 of its own namespaces,
and neither a clean stop nor a crash leaves a process, mount or directory behind.

These start their own envd instead of using the module's (they do not request the
`backend` fixture), so they run with any envd that answers /health."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from hearth_compat.envd import (
    EnvdInstance,
    _mounts_below,
    _pid_alive,
    _processes_in_namespace,
)


@pytest.fixture
def instance():
    if os.environ.get("HEARTH_COMPAT_MODE", "envd") != "envd":
        pytest.skip("envd mode only")
    layers = [p for p in os.environ["HEARTH_COMPAT_LAYERS"].split(":") if p]
    inst = EnvdInstance(layers)
    inst.start()
    yield inst
    if inst.proc is not None:
        inst.stop(check=False)


def test_envd_is_pid_1_in_its_own_namespaces(instance: EnvdInstance):
    status = Path(f"/proc/{instance.envd_pid}/status").read_text()
    nspid = next(line for line in status.splitlines() if line.startswith("NSpid:"))
    assert nspid.split()[-1] == "1", nspid
    for kind in ("pid", "mnt", "uts"):
        assert os.readlink(f"/proc/{instance.envd_pid}/ns/{kind}") != os.readlink(
            f"/proc/self/ns/{kind}"
        ), kind
    # Same network namespace as the SDK: that is how debug mode reaches it.
    assert os.readlink(f"/proc/{instance.envd_pid}/ns/net") == os.readlink("/proc/self/ns/net")
    # The overlay is invisible outside envd's mount namespace.
    assert _mounts_below(instance.tmp) == []
    mounts = instance.nsenter("cat", "/proc/self/mountinfo").stdout
    assert str(instance.merged) in mounts


def test_clean_stop_leaves_nothing(instance: EnvdInstance):
    tmp = instance.tmp
    assert instance.stop(check=False) == []
    assert not tmp.exists()


def test_crash_with_running_children_leaves_nothing(instance: EnvdInstance):
    # A process inside the sandbox's pid namespace, as a command would be.
    subprocess.Popen(
        ["nsenter", "--target", str(instance.envd_pid), "--pid", "--mount", "--",
         "sleep", "1000"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 5
    while len(_processes_in_namespace(instance.pid_ns)) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    inside = _processes_in_namespace(instance.pid_ns)
    assert len(inside) >= 2
    os.kill(instance.envd_pid, signal.SIGKILL)
    tmp = instance.tmp
    assert instance.stop(check=False) == []
    assert [pid for pid in inside if _pid_alive(pid)] == []
    assert not tmp.exists()
