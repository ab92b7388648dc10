# SPDX-License-Identifier: Apache-2.0
"""`hearth serve` restarts: sandboxes outlive a server started with
--keep-sandboxes or killed with SIGKILL and are re-adopted (same id, still usable);
one that died meanwhile is cleaned up exactly; a plain SIGTERM kills them all.

Each test runs its own short-lived server (own instance, home, port and address
ranges) next to the session's, which must not notice."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from e2b import NotFoundException, Sandbox
from hearth_compat.serve import (
    CGROUP_ROOT,
    ServeServer,
    netns_of,
    processes_in_netns,
    sandbox_init_pid,
    sandbox_pids,
    sandbox_slot,
)

pytestmark = pytest.mark.serve_only


_suffixes = iter("abcdefghijklmnopqrstuvwxyz")


@pytest.fixture
def server():
    """A server of the test's own; whatever happens, it ends stopped with nothing of
    it left on the host."""
    s = ServeServer(f"hct{os.getpid()}{next(_suffixes)}", warm_slots=2, data_gb=4)
    yield s
    # Start it once more without --keep-sandboxes (it reconciles whatever is left)
    # and stop it: that must leave nothing.
    s.kill9()
    s.extra_args = ()
    s.start()
    s.stop_and_check()


@pytest.fixture
def neighbour(serve_server):
    """A sandbox of the session's server: restarts of other servers must not touch
    it."""
    sandbox = Sandbox.create(timeout=300)
    yield sandbox
    assert sandbox.commands.run("echo neighbour").stdout == "neighbour\n"
    sandbox.kill()


def listed(server: ServeServer) -> set[str]:
    return {s.sandbox_id for s in Sandbox.list(**server.sdk_opts()).next_items()}


def assert_usable(server: ServeServer, sandbox_id: str, marker: str) -> None:
    sandbox = Sandbox.connect(sandbox_id, **server.sdk_opts())
    assert sandbox.files.read("/home/user/marker.txt") == marker
    assert sandbox.commands.run("cat /tmp/marker").stdout == marker
    assert sandbox.commands.run("echo $E2B_SANDBOX_ID").stdout == f"{sandbox_id}\n"
    sandbox.files.write("/home/user/after.txt", "after restart")
    assert sandbox.files.read("/home/user/after.txt") == "after restart"


def make_marked(server: ServeServer, marker: str) -> Sandbox:
    sandbox = Sandbox.create(timeout=300, **server.sdk_opts())
    sandbox.files.write("/home/user/marker.txt", marker)
    sandbox.commands.run(f"printf %s {marker} > /tmp/marker")
    return sandbox


@pytest.mark.container_only  # finds sandbox processes through container cgroups
def test_keep_sandboxes_then_restart_readopts(server: ServeServer, neighbour):
    server.extra_args = ("--keep-sandboxes",)
    server.start()
    sandbox = make_marked(server, "kept")
    init = sandbox_init_pid(server.instance, sandbox.sandbox_id)
    assert server.stop() == 0
    # It outlived the server: same init, its slot and cgroups still there.
    assert sandbox_init_pid(server.instance, sandbox.sandbox_id) == init
    server.start()
    assert listed(server) == {sandbox.sandbox_id}
    assert_usable(server, sandbox.sandbox_id, "kept")
    assert sandbox_init_pid(server.instance, sandbox.sandbox_id) == init
    # The session's server did not notice any of this (the fixture checks its
    # sandbox once more at teardown).
    assert neighbour.commands.run("echo ok").stdout == "ok\n"


@pytest.mark.container_only  # finds sandbox processes through container cgroups
def test_sigkill_then_restart_readopts(server: ServeServer, neighbour):
    server.start()
    sandbox = make_marked(server, "survivor")
    init = sandbox_init_pid(server.instance, sandbox.sandbox_id)
    server.kill9()
    assert sandbox_init_pid(server.instance, sandbox.sandbox_id) == init
    server.start()
    assert listed(server) == {sandbox.sandbox_id}
    assert_usable(server, sandbox.sandbox_id, "survivor")
    # Re-adopted sandboxes keep their lifecycle: kill works and cleans up.
    assert Sandbox.kill(sandbox.sandbox_id, **server.sdk_opts())
    assert listed(server) == set()
    assert sandbox_pids(server.instance, sandbox.sandbox_id) == []


@pytest.mark.container_only  # finds sandbox processes through container cgroups
def test_sandbox_that_died_while_the_server_was_down_is_cleaned_up(server: ServeServer):
    server.start()
    doomed = make_marked(server, "doomed")
    kept = make_marked(server, "kept")
    slot = sandbox_slot(server.instance, doomed.sandbox_id)
    init = sandbox_init_pid(server.instance, doomed.sandbox_id)
    server.kill9()
    os.kill(init, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while sandbox_pids(server.instance, doomed.sandbox_id):
        assert time.monotonic() < deadline, "the sandbox's processes outlived its init"
        time.sleep(0.05)

    server.start()
    assert listed(server) == {kept.sandbox_id}
    with pytest.raises(NotFoundException):
        Sandbox.get_info(doomed.sandbox_id, **server.sdk_opts())
    # Nothing of it is left: cgroups, state directory, a slot in use.
    leftover_cgroups = [
        str(d) for d in CGROUP_ROOT.glob(f"*/{server.instance}/{doomed.sandbox_id}")
    ]
    assert leftover_cgroups == []
    assert not (server.sandboxes_dir / doomed.sandbox_id).exists()
    guest = Path(f"/run/netns/{server.instance}-g{slot}")
    assert processes_in_netns(guest) == [], f"slot {slot} is still in use"
    # The survivor is fine, and the freed slot is usable again.
    assert_usable(server, kept.sandbox_id, "kept")
    fresh = Sandbox.create(timeout=60, **server.sdk_opts())
    assert fresh.commands.run("echo fresh").stdout == "fresh\n"


@pytest.mark.container_only  # finds sandbox processes through container cgroups
def test_plain_sigterm_kills_everything_and_restart_lists_none(server: ServeServer):
    server.start()
    sandboxes = [make_marked(server, f"s{i}") for i in range(3)]
    inits = [sandbox_init_pid(server.instance, s.sandbox_id) for s in sandboxes]
    assert server.stop() == 0
    assert server.settled_leftovers() == []
    assert not any(Path(f"/proc/{pid}").exists() for pid in inits)
    assert netns_of(server.instance) == []
    server.start()
    assert listed(server) == set()
    for sandbox in sandboxes:
        with pytest.raises(NotFoundException):
            Sandbox.get_info(sandbox.sandbox_id, **server.sdk_opts())


def test_a_new_home_gets_a_saved_key_even_when_automation_brings_its_own(
    server: ServeServer,
):
    """The README's `$HEARTH_HOME/api-key` exists after the first start of a home,
    even when that start registered a key from HEARTH_API_KEY (as `hearth bench` and
    these tests do); restarts keep it, with or without HEARTH_API_KEY."""
    server.start()
    key_file = server.home / "api-key"
    key = key_file.read_text().strip()
    assert key.startswith("e2b_") and len(key) == 44, key
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    env_key = server.api_key

    def status(k: str) -> int:
        with httpx.Client(base_url=server.url, timeout=10) as api:
            return api.get("/sandboxes", headers={"X-API-Key": k}).status_code

    assert status(key) == 200 and status(env_key) == 200
    assert server.stop() == 0
    server.api_key = ""  # a plain start, without HEARTH_API_KEY
    server.start()
    assert key_file.read_text().strip() == key, "a restart must not replace the key"
    assert status(key) == 200 and status(env_key) == 200
    server.api_key = env_key
