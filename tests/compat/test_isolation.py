# SPDX-License-Identifier: Apache-2.0
"""Isolation of `hearth serve` sandboxes, checked from inside with the unmodified SDK
and from the host: the host's ports (the API included), other sandboxes and private
ranges are unreachable while the internet is not; memory, processes and disk are
limited without harming envd or the host; processes run as unprivileged host users.

Reachability is probed from inside with plain TCP connects (probe script below), and
every target that must be unreachable is first shown to be reachable from the host,
so "unreachable" always means "blocked", never "nothing there"."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
from e2b import CommandExitException, NotEnoughSpaceException, Sandbox
from hearth_compat.serve import (
    CGROUP_ROOT,
    RUNTIME,
    ServeServer,
    host_ipv4_addresses,
    sandbox_init_pid,
    sandbox_pids,
    sandbox_slot,
    term_with_parent,
)

pytestmark = pytest.mark.serve_only

PROBE = r"""
import concurrent.futures, errno, json, socket, sys
targets = json.loads(sys.argv[1])
def probe(t):
    s = socket.socket()
    s.settimeout(float(sys.argv[2]))
    try:
        s.connect((t[0], t[1]))
        return "open"
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    finally:
        s.close()
with concurrent.futures.ThreadPoolExecutor(64) as pool:
    print(json.dumps(dict(zip([f"{h}:{p}" for h, p in targets], pool.map(probe, targets)))))
"""

GATEWAY = "169.254.0.22"


def probe(sandbox: Sandbox, targets: list[tuple[str, int]], timeout: float = 2) -> dict:
    """{"addr:port": "open" | "timeout" | errno name} as seen from inside."""
    sandbox.files.write("/tmp/probe.py", PROBE)
    out = sandbox.commands.run(
        f"python3 /tmp/probe.py '{json.dumps(targets)}' {timeout}", timeout=60
    ).stdout
    return json.loads(out)


def reachable_from_host(addr: str, port: int) -> bool:
    try:
        socket.create_connection((addr, port), timeout=2).close()
        return True
    except OSError:
        return False


@pytest.fixture
def make(serve_server: ServeServer):
    made: list[Sandbox] = []

    def create(**kwargs) -> Sandbox:
        sandbox = Sandbox.create(**kwargs)
        made.append(sandbox)
        return sandbox

    yield create
    for sandbox in made:
        Sandbox.kill(sandbox.sandbox_id)


@pytest.fixture(scope="module")
def shared(serve_server: ServeServer):
    """One sandbox for the read-only network checks."""
    sandbox = Sandbox.create(timeout=600)
    yield sandbox
    sandbox.kill()


@pytest.fixture(scope="module")
def host_listener():
    """A TCP listener on every host address (0.0.0.0): what a service on the host
    looks like to a sandbox."""
    srv = socket.create_server(("0.0.0.0", 0))
    stop = threading.Event()

    def serve():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                conn.close()
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield srv.getsockname()[1]
    stop.set()
    thread.join()
    srv.close()


# Addresses of a fake LAN behind the host: each is reachable from the host through a
# veth into a namespace that serves on port 8080. The first is public (the control:
# sandboxes with internet access reach it), the rest are private ranges.
PUBLIC = "198.51.100.7"
PRIVATE = ["10.250.77.7", "172.16.77.7", "192.168.77.7", "100.64.77.7"]
LAN_PORT = 8080


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@pytest.fixture(scope="module")
def lan():
    ns = f"hctlan{os.getpid()}"
    veth = f"hl{os.getpid()}"
    link = ("198.18.77.1", "198.18.77.2")
    for addr in [PUBLIC, *PRIVATE]:
        out = subprocess.run(
            ["ip", "-4", "route", "show", "match", addr], capture_output=True, text=True
        ).stdout
        assert "default" in out and len(out.splitlines()) == 1, f"{addr} is routed here: {out}"
    www = Path(tempfile.mkdtemp(prefix="hearth-lan-"))
    (www / "index.html").write_text("lan\n")
    server = None
    try:
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "addr", "add", f"{link[0]}/30", "dev", veth)
        sh("ip", "link", "set", veth, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "addr", "add", f"{link[1]}/30", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "route", "add", "default", "via", link[0])
        for addr in [PUBLIC, *PRIVATE]:
            sh("ip", "-n", ns, "addr", "add", f"{addr}/32", "dev", "lo")
            sh("ip", "route", "add", f"{addr}/32", "via", link[1], "dev", veth)
        server = subprocess.Popen(
            ["ip", "netns", "exec", ns, "python3", "-m", "http.server", str(LAN_PORT),
             "--bind", "0.0.0.0", "--directory", str(www)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=term_with_parent,
        )
        deadline = time.monotonic() + 10
        while not all(reachable_from_host(a, LAN_PORT) for a in [PUBLIC, *PRIVATE]):
            assert time.monotonic() < deadline, "the fake LAN does not answer the host"
            time.sleep(0.05)
        yield
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "link", "del", veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(www, ignore_errors=True)


def assert_blocked(results: dict, keys: list[str]) -> None:
    opened = {k: results[k] for k in keys if results[k] == "open"}
    assert not opened, f"reachable from inside the sandbox: {opened} (all: {results})"


# --- network -------------------------------------------------------------------------


def test_host_ports_are_unreachable(serve_server, shared, host_listener):
    slot = sandbox_slot(serve_server.instance, shared.sandbox_id)
    own = serve_server.host_addr(slot)
    addresses = [a for a in host_ipv4_addresses() if not a.startswith("127.")]
    addresses += [GATEWAY, own]
    for addr in addresses:
        if addr != GATEWAY and addr != own:
            assert reachable_from_host(addr, host_listener), addr
    targets = [(a, p) for a in addresses for p in (serve_server.port, host_listener, 22)]
    results = probe(shared, targets)
    assert_blocked(results, [f"{a}:{p}" for a, p in targets])
    # The sandbox's own loopback is its own business.
    assert probe(shared, [("127.0.0.1", 49983)])["127.0.0.1:49983"] == "open"


def test_other_sandbox_is_unreachable_but_both_serve_through_the_proxy(serve_server, make):
    a, b = make(), make()
    b.commands.run("python3 -m http.server 8000", cwd="/tmp", background=True)
    b_slot = sandbox_slot(serve_server.instance, b.sandbox_id)
    b_addr = serve_server.host_addr(b_slot)
    deadline = time.monotonic() + 15
    while not reachable_from_host(b_addr, 8000):
        assert time.monotonic() < deadline, "B's server never came up"
        time.sleep(0.1)
    # B's router end of its transit link, too.
    transit = ipaddress.ip_network(serve_server.ranges[2])
    b_router = str(transit[2 * b_slot + 1])
    targets = [(b_addr, 8000), (b_addr, 49983), (b_router, 8000), (b_router, 49983)]
    results = probe(a, targets)
    assert_blocked(results, [f"{h}:{p}" for h, p in targets])
    r = httpx.get(
        serve_server.url,
        headers={"E2b-Sandbox-Id": b.sandbox_id, "E2b-Sandbox-Port": "8000"},
        timeout=10,
    )
    assert r.status_code == 200
    assert a.commands.run("echo a").stdout == "a\n"
    assert b.commands.run("echo b").stdout == "b\n"


def test_private_ranges_and_metadata_are_unreachable(shared, lan):
    metadata = ("169.254.169.254", 80)
    targets = [(a, LAN_PORT) for a in [PUBLIC, *PRIVATE]] + [metadata]
    results = probe(shared, targets)
    assert results[f"{PUBLIC}:{LAN_PORT}"] == "open", results
    assert_blocked(results, [f"{a}:{LAN_PORT}" for a in PRIVATE])
    if reachable_from_host(*metadata):
        assert results["169.254.169.254:80"] != "open", results
    else:
        pytest.fail("169.254.169.254:80 does not answer the host here; the check is void")


def test_dns_and_internet_egress_work(shared):
    assert shared.commands.run("getent hosts pypi.org").stdout.strip()
    r = shared.commands.run(
        "curl -sS -o /dev/null -w '%{http_code}' --max-time 20 https://pypi.org/simple/",
        timeout=30,
    )
    assert r.stdout == "200"


def test_without_internet_access_egress_is_blocked(make, lan):
    sandbox = make(allow_internet_access=False)
    assert sandbox.get_info().allow_internet_access is False
    results = probe(sandbox, [(PUBLIC, LAN_PORT)])
    assert results[f"{PUBLIC}:{LAN_PORT}"] != "open", results
    with pytest.raises(CommandExitException):
        sandbox.commands.run(
            "curl -sS -o /dev/null --max-time 5 https://pypi.org/simple/", timeout=30
        )
    # Commands, files and the proxy still work.
    assert sandbox.commands.run("echo offline").stdout == "offline\n"


def test_envd_private_paths_are_not_reachable_through_the_proxy(serve_server, shared):
    headers = {
        "E2b-Sandbox-Id": shared.sandbox_id,
        "X-Access-Token": shared._envd_access_token,
    }
    for path in ("/init", "/upgrade", "/freeze"):
        r = httpx.post(
            f"{serve_server.url}{path}",
            headers=headers,
            json={"envVars": {"HIJACKED": "1"}, "accessToken": "attacker"},
            timeout=10,
        )
        assert r.status_code == 404, (path, r.status_code, r.text)
    assert shared.commands.run('echo "[$HIJACKED]"').stdout == "[]\n"
    # The token did not change either: requests without it are refused.
    r = httpx.post(
        f"{serve_server.url}/filesystem.Filesystem/Stat",
        headers={"E2b-Sandbox-Id": shared.sandbox_id, "X-Access-Token": "attacker",
                 "Content-Type": "application/json", "Connect-Protocol-Version": "1"},
        json={"path": "/"},
        timeout=10,
    )
    assert r.status_code == 401


# --- resources -------------------------------------------------------------------------


def memory_cgroup(server: ServeServer, sandbox_id: str) -> Path:
    return CGROUP_ROOT / "memory" / server.instance / sandbox_id


@pytest.mark.container_only  # inspects the sandbox's processes on the host
def test_memory_hog_is_oom_killed_inside(serve_server, make):
    sandbox = make()
    init = sandbox_init_pid(serve_server.instance, sandbox.sandbox_id)
    host_before = int(Path("/proc/meminfo").read_text().split("MemAvailable:")[1].split()[0])
    with pytest.raises(CommandExitException) as err:
        # 2 GiB, every page touched, in a 512 MiB sandbox.
        sandbox.commands.run("python3 -c \"b = b'x' * (2 << 30)\"", timeout=60)
    # Killed by SIGKILL: envd reports it as E2B's does (exit code -1, "signal: killed").
    assert err.value.exit_code == -1 and "killed" in (err.value.error or ""), repr(err.value)
    cg = memory_cgroup(serve_server, sandbox.sandbox_id)
    oom = dict(line.split() for line in (cg / "memory.oom_control").read_text().splitlines())
    assert int(oom.get("oom_kill", "1")) >= 1, oom
    assert int((cg / "memory.max_usage_in_bytes").read_text()) <= 512 << 20
    # envd survived (same process) and serves; the host barely noticed.
    assert sandbox_init_pid(serve_server.instance, sandbox.sandbox_id) == init
    assert sandbox.commands.run("echo survived").stdout == "survived\n"
    sandbox.files.write("/tmp/after-oom", "ok")
    assert sandbox.files.read("/tmp/after-oom") == "ok"
    host_after = int(Path("/proc/meminfo").read_text().split("MemAvailable:")[1].split()[0])
    assert host_after > host_before - (1 << 20), "the host lost more than 1 GiB"
    assert httpx.get(f"{serve_server.url}/health", timeout=5).is_success


def host_process_count() -> int:
    return sum(1 for e in os.listdir("/proc") if e.isdigit())


@pytest.mark.container_only  # inspects the sandbox's processes on the host
def test_fork_bomb_is_contained(serve_server, make):
    sandbox = make()
    pids_cg = CGROUP_ROOT / "pids" / serve_server.instance / sandbox.sandbox_id
    limit = int((pids_cg / "pids.max").read_text())
    assert limit <= 4096, limit
    before = host_process_count()
    sandbox.commands.run("bash -c ':(){ :|:& };:'", background=True)
    peak = 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        peak = max(peak, int((pids_cg / "pids.current").read_text()))
        time.sleep(0.1)
    assert peak > 100, f"the bomb never took off ({peak} tasks)"
    assert int((pids_cg / "pids.current").read_text()) <= limit
    assert host_process_count() <= before + limit + 50
    # The server stays responsive and the sandbox killable.
    assert httpx.get(f"{serve_server.url}/health", timeout=5).is_success
    start = time.monotonic()
    assert Sandbox.kill(sandbox.sandbox_id)
    assert time.monotonic() - start < 15
    deadline = time.monotonic() + 15
    while host_process_count() > before + 20:
        assert time.monotonic() < deadline, f"{host_process_count()} processes, {before} before"
        time.sleep(0.1)
    assert not pids_cg.exists()


@pytest.mark.container_only  # inspects the sandbox's processes on the host
def test_processes_run_as_unprivileged_host_users(serve_server, make):
    sandbox = make()
    for user, inner in (("root", 0), ("user", 1000)):
        marker = f"hearth-uid-probe-{user}"
        sandbox.commands.run(f"exec -a {marker} sleep 300", user=user, background=True)
        deadline = time.monotonic() + 5
        found = None
        while found is None and time.monotonic() < deadline:
            for pid in sandbox_pids(serve_server.instance, sandbox.sandbox_id):
                try:
                    if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(marker.encode()):
                        found = pid
                except OSError:
                    continue
            time.sleep(0.05)
        assert found, f"{marker} not found"
        status = dict(
            line.split(":", 1) for line in Path(f"/proc/{found}/status").read_text().splitlines()
        )
        uids = [int(x) for x in status["Uid"].split()]
        gids = [int(x) for x in status["Gid"].split()]
        assert all(u >= 65536 for u in uids + gids), (user, uids, gids)
        # The sandbox's ids are a plain offset of the host's.
        base = uids[0] - inner
        assert uids == [base + inner] * 4, uids
        cap_eff = status["CapEff"].strip()
        if user == "user":
            assert int(cap_eff, 16) == 0, cap_eff
    # Inside, they are who they should be.
    assert sandbox.commands.run("id -u", user="root").stdout == "0\n"
    assert sandbox.commands.run("id -u").stdout == "1000\n"


def fill_disk(sandbox: Sandbox) -> None:
    """Writes past the sandbox's 2 GiB disk limit. A container's limit is a quota on
    its writable layer (EDQUOT, the whole 2 GiB is writable); a microVM's is the size
    of its root disk (ENOSPC, the template's files take part of it)."""
    with pytest.raises(CommandExitException) as err:
        sandbox.commands.run(
            "dd if=/dev/zero of=/home/user/fill bs=4M count=700 status=none", timeout=300
        )
    size = int(sandbox.commands.run("stat -c %s /home/user/fill").stdout)
    if RUNTIME == "microvm":
        assert "no space left on device" in err.value.stderr.lower(), err.value.stderr
        assert 1024 << 20 < size < 2048 << 20, size
    else:
        assert "disk quota exceeded" in err.value.stderr.lower(), err.value.stderr
        assert (2048 - 64) << 20 < size <= 2048 << 20, size


def test_writing_past_the_disk_limit_fails_and_the_sandbox_keeps_working(make):
    sandbox = make()
    fill_disk(sandbox)
    # envd (whose log is on the same disk) keeps serving; the SDK's own writes fail
    # with its not-enough-space error ...
    assert sandbox.commands.run("echo still-here").stdout == "still-here\n"
    with pytest.raises(NotEnoughSpaceException):
        sandbox.files.write("/home/user/more.bin", b"\0" * (1 << 20))
    # ... also uploads larger than the socket buffers: envd answers 507 before it has
    # read them, and the answer must still reach the SDK through the proxy (see
    # "Request bodies linger" in hearth-envd's server.rs).
    for _ in range(3):
        with pytest.raises(NotEnoughSpaceException):
            sandbox.files.write("/home/user/more.bin", b"\0" * (64 << 20))
    # Everything works again once space is freed.
    sandbox.commands.run("rm -f /home/user/fill /home/user/more.bin")
    sandbox.files.write("/home/user/small.txt", "fits")
    assert sandbox.files.read("/home/user/small.txt") == "fits"
    sandbox.files.write("/home/user/big.bin", b"\1" * (64 << 20))
    assert sandbox.commands.run("stat -c %s /home/user/big.bin").stdout == f"{64 << 20}\n"
