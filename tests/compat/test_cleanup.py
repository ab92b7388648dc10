# SPDX-License-Identifier: Apache-2.0
"""Exact cleanup: 100 create+kill cycles through the SDK (20 of microVMs, which
TCG makes slow here) leave the host as it was.

The server keeps a warm pool of network slots, so "as it was" is the pool's steady
state, measured after a warm-up round at the same concurrency, not zero: namespaces,
host interfaces, routes, nftables rules and set elements, sandbox cgroups, mounts,
processes, state directories, and the server's own open files."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from e2b import Sandbox
from hearth_compat.serve import (
    RUNTIME,
    ServeServer,
    cgroup_children,
    mounts_mentioning,
    netns_of,
    nft_state,
    processes_in_netns,
    processes_of,
)

pytestmark = pytest.mark.serve_only

MICROVM = RUNTIME == "microvm"
CYCLES = 20 if MICROVM else 100
PARALLEL = 4


def host_state(server: ServeServer) -> dict[str, object]:
    """What must be exactly as before (the slot pool is checked separately)."""
    return {
        "nft": nft_state(server.instance),
        "cgroups": cgroup_children(server.instance),
        "mounts": len(mounts_mentioning(server.home)),
        "processes": sorted(processes_of(server.instance, server.home)),
        "state dirs": sorted(p.name for p in server.sandboxes_dir.iterdir()),
    }


def slots(server: ServeServer) -> dict[int, dict[str, bool]]:
    """Every slot index with any host object, and which of its objects exist: both
    namespaces, the host interface, the route to its address; and whether a process
    lives in its guest namespace (a slot in use). A microVM slot has no guest
    namespace: its QEMU lives in the router namespace, next to its tap."""
    prefix = server.ifname_prefix
    routes = os.popen("ip -4 route").read()
    links = {line.split(":")[1].strip().split("@")[0]
             for line in os.popen("ip -o link").read().splitlines()}
    found: dict[int, dict[str, bool]] = {}
    indexes = {int(n.rsplit("-", 1)[1][1:]) for n in netns_of(server.instance)}
    indexes |= {int(link[len(prefix):]) for link in links
                if link.startswith(prefix) and link[len(prefix):].isdigit()}
    for i in sorted(indexes):
        ns = Path(f"/run/netns/{server.instance}-g{i}")
        found[i] = {
            "router": Path(f"/run/netns/{server.instance}-r{i}").exists(),
            "guest": ns.exists(),
            "link": f"{prefix}{i}" in links,
            "route": f"{server.host_addr(i)} via " in routes,
            "busy": bool(
                processes_in_netns(
                    Path(f"/run/netns/{server.instance}-r{i}") if MICROVM else ns
                )
            ),
        }
    return found


def server_fds(server: ServeServer) -> int:
    return len(os.listdir(f"/proc/{server.pid}/fd"))


def server_fd_targets(server: ServeServer) -> list[str]:
    """What the server's descriptors point at (for a failure message)."""
    out = []
    for fd in os.listdir(f"/proc/{server.pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{server.pid}/fd/{fd}"))
        except OSError:
            continue
    return sorted(out)


def cycle(i: int) -> None:
    # Every fifth sandbox has no internet access: its slot carries nftables set
    # elements that must go with it.
    sandbox = Sandbox.create(
        timeout=60, metadata={"cycle": str(i)}, allow_internet_access=i % 5 != 0
    )
    assert sandbox.commands.run("echo $E2B_SANDBOX_ID").stdout == f"{sandbox.sandbox_id}\n"
    assert sandbox.kill()


def steady(server: ServeServer, timeout: float = 20) -> dict:
    """The host state once it stops changing (two equal snapshots 0.5 s apart)."""
    deadline = time.monotonic() + timeout
    last = host_state(server)
    while True:
        time.sleep(0.5)
        now = host_state(server)
        if now == last or time.monotonic() > deadline:
            return now
        last = now


def settle(server: ServeServer, want: dict, timeout: float = 20) -> dict:
    """Waits for the host state to return to `want` (slots are scrubbed and the pool
    refilled in the background); returns the last state seen."""
    deadline = time.monotonic() + timeout
    while True:
        now = host_state(server)
        if now == want or time.monotonic() > deadline:
            return now
        time.sleep(0.2)


def test_create_kill_cycles_leave_nothing(serve_server: ServeServer):
    # Sandboxes other modules still run (none, normally) must stay as they are.
    mine = {s.sandbox_id for s in Sandbox.list().next_items()}
    # Warm-up at the same concurrency, so the pool has grown to what it needs.
    with ThreadPoolExecutor(PARALLEL) as pool:
        list(pool.map(cycle, range(2 * PARALLEL)))
    baseline = steady(serve_server)
    pool_before = slots(serve_server)
    fds_before = server_fds(serve_server)

    start = time.monotonic()
    with ThreadPoolExecutor(PARALLEL) as pool:
        list(pool.map(cycle, range(CYCLES)))
    elapsed = time.monotonic() - start
    print(f"{CYCLES} create+command+kill cycles, {PARALLEL} in flight: {elapsed:.1f}s")

    after = settle(serve_server, baseline)
    diff = {k: (baseline[k], after[k]) for k in baseline if baseline[k] != after[k]}
    assert not diff, f"left behind (before, after): {diff}"
    # The pool keeps the slots it built (up to its high-water mark) for reuse: each
    # must be whole and idle, and their number bounded by the concurrency, not by
    # the number of cycles.
    pool = slots(serve_server)
    parts = ("router", "link", "route") if MICROVM else ("router", "guest", "link", "route")
    broken = {i: s for i, s in pool.items() if not all(s[k] for k in parts)}
    assert not broken, f"half-removed slots: {broken}"
    busy = [i for i, s in pool.items() if s["busy"]]
    assert len(busy) == len(mine), f"slots still in use: {busy}"
    assert len(pool) <= len(pool_before) + 2 * PARALLEL, (sorted(pool_before), sorted(pool))
    assert {s.sandbox_id for s in Sandbox.list().next_items()} == mine
    fds_after = server_fds(serve_server)
    assert fds_after <= fds_before + 4, (
        f"server descriptors {fds_before} -> {fds_after}: {server_fd_targets(serve_server)}"
    )
    # Every sandbox's state directory is gone; only live ones remain.
    dirs = set(serve_server.sandboxes_dir.iterdir())
    assert {d.name for d in dirs} == mine
