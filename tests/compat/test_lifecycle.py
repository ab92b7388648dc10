# SPDX-License-Identifier: Apache-2.0
"""Sandbox life cycle through `hearth serve` with the unmodified SDK (§1, §3): create,
list (metadata filter, pagination), info, kill, timeouts, connect, env vars, metrics,
the proxy's errors and user ports, and the REST error shapes."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from e2b import (
    NotFoundException,
    Sandbox,
    SandboxNotRunningException,
    SandboxQuery,
    SandboxState,
)
from hearth_compat.serve import ServeServer, sandbox_slot

pytestmark = pytest.mark.serve_only

# How late a sandbox may die after its deadline (the contract says within a second).
DEADLINE_SLACK = 1.0


@pytest.fixture
def make(serve_server: ServeServer):
    """Creates sandboxes for one test and kills whatever is left of them after it."""
    made: list[Sandbox] = []

    def create(**kwargs) -> Sandbox:
        sandbox = Sandbox.create(**kwargs)
        made.append(sandbox)
        return sandbox

    yield create
    for sandbox in made:
        Sandbox.kill(sandbox.sandbox_id)


def proxy_get(server: ServeServer, sandbox_id: str, port: int, path: str = "/", **kw):
    return httpx.get(
        f"{server.url}{path}",
        headers={"E2b-Sandbox-Id": sandbox_id, "E2b-Sandbox-Port": str(port)},
        timeout=kw.pop("timeout", 10),
        **kw,
    )


def assert_sandbox_not_found(server: ServeServer, sandbox_id: str) -> None:
    r = proxy_get(server, sandbox_id, 49983, "/health")
    assert r.status_code == 502, (r.status_code, r.text)
    body = r.json()
    assert body["code"] == 502 and "sandbox was not found" in body["message"], body


def close_to(when: datetime, expected: datetime, slack: float = 3.0) -> bool:
    return abs((when - expected).total_seconds()) <= slack


# --- create, info, list, kill ----------------------------------------------------------


def test_create_and_info(make):
    before = datetime.now(timezone.utc)
    sandbox = make(timeout=120, metadata={"purpose": "info"})
    info = sandbox.get_info()
    assert info.sandbox_id == sandbox.sandbox_id
    assert info.template_id == "base"
    assert info.metadata == {"purpose": "info"}
    assert info.state == SandboxState.RUNNING
    assert info.cpu_count >= 1 and info.memory_mb == 512
    assert info.envd_version
    assert close_to(info.started_at, before)
    assert close_to(info.end_at, info.started_at + timedelta(seconds=120), slack=1)
    assert sandbox.is_running()
    assert sandbox.commands.run("echo $((6 * 7))").stdout == "42\n"


def test_list_filters_by_metadata_and_paginates(make):
    tag = uuid.uuid4().hex
    with ThreadPoolExecutor(5) as pool:
        created = list(pool.map(lambda i: make(metadata={"suite": tag, "i": str(i)}), range(5)))
    want = {s.sandbox_id for s in created}
    other = make(metadata={"suite": "someone-else"})

    paginator = Sandbox.list(query=SandboxQuery(metadata={"suite": tag}), limit=2)
    seen: list[str] = []
    pages = 0
    while paginator.has_next:
        page = paginator.next_items()
        pages += 1
        assert len(page) <= 2, [s.sandbox_id for s in page]
        for info in page:
            assert info.metadata["suite"] == tag
            assert info.state == SandboxState.RUNNING
            seen.append(info.sandbox_id)
        assert pages <= 5, "pagination does not end"
    assert len(seen) == len(set(seen)), f"duplicates across pages: {seen}"
    assert set(seen) == want
    assert pages == 3
    assert other.sandbox_id not in seen

    # Two metadata pairs must both match.
    one = Sandbox.list(query=SandboxQuery(metadata={"suite": tag, "i": "3"})).next_items()
    assert [s.sandbox_id for s in one] == [created[3].sandbox_id]
    none = Sandbox.list(query=SandboxQuery(metadata={"suite": "no-" + tag})).next_items()
    assert none == []


def test_kill_twice(make):
    sandbox = make()
    assert sandbox.kill() is True
    assert Sandbox.kill(sandbox.sandbox_id) is False
    assert sandbox.is_running() is False
    with pytest.raises(NotFoundException):
        sandbox.get_info()


def test_is_running_is_false_after_kill_and_proxy_says_not_found(serve_server, make):
    sandbox = make()
    assert sandbox.is_running()
    Sandbox.kill(sandbox.sandbox_id)
    assert sandbox.is_running() is False
    assert_sandbox_not_found(serve_server, sandbox.sandbox_id)


# --- timeouts and connect --------------------------------------------------------------


def test_shortened_timeout_kills_within_a_second_of_the_deadline(serve_server, make):
    sandbox = make(timeout=300)
    start = time.monotonic()
    sandbox.set_timeout(3)
    deadline = start + 3
    time.sleep(1.5)
    assert sandbox.is_running(), "killed before its new deadline"
    while sandbox.is_running():
        assert time.monotonic() < deadline + DEADLINE_SLACK + 2, "never died"
        time.sleep(0.05)
    died = time.monotonic()
    # `died` is when the SDK first saw it gone; the kill was no later than that.
    assert died <= deadline + DEADLINE_SLACK + 0.3, f"died {died - deadline:.2f}s late"
    assert_sandbox_not_found(serve_server, sandbox.sandbox_id)
    with pytest.raises(NotFoundException):
        sandbox.get_info()


def test_extended_timeout_moves_the_end(make):
    sandbox = make(timeout=30)
    sandbox.set_timeout(600)
    info = sandbox.get_info()
    assert close_to(info.end_at, datetime.now(timezone.utc) + timedelta(seconds=600))
    # set_timeout may also shorten (unlike connect).
    sandbox.set_timeout(100)
    info = sandbox.get_info()
    assert close_to(info.end_at, datetime.now(timezone.utc) + timedelta(seconds=100))


def test_connect_extends_a_running_sandbox_but_never_shortens(make):
    sandbox = make(timeout=60)
    end = sandbox.get_info().end_at
    again = Sandbox.connect(sandbox.sandbox_id, timeout=400)
    extended = again.get_info().end_at
    assert close_to(extended, datetime.now(timezone.utc) + timedelta(seconds=400))
    assert extended > end
    Sandbox.connect(sandbox.sandbox_id, timeout=10)
    assert sandbox.get_info().end_at == extended
    # The connected handle works like the original.
    assert again.commands.run("echo connected").stdout == "connected\n"


def test_connect_to_a_killed_sandbox_is_not_found(make):
    sandbox = make()
    sandbox.kill()
    with pytest.raises(NotFoundException):
        Sandbox.connect(sandbox.sandbox_id)


# --- env vars, commands during kill, metrics ---------------------------------------


def test_create_time_env_vars_reach_commands(make):
    sandbox = make(envs={"HEARTH_E2E": "from-create", "SPACES": "a b  c"})
    out = sandbox.commands.run(
        'echo "$HEARTH_E2E|$SPACES|$E2B_SANDBOX|$E2B_SANDBOX_ID|$E2B_TEMPLATE_ID"'
    ).stdout
    assert out == f"from-create|a b  c|true|{sandbox.sandbox_id}|base\n"
    # Root gets them too.
    out = sandbox.commands.run('echo "$HEARTH_E2E"', user="root").stdout
    assert out == "from-create\n"


def test_command_running_when_the_sandbox_is_killed_fails_promptly(make):
    sandbox = make()
    killed = threading.Event()

    def kill_soon():
        time.sleep(1)
        assert Sandbox.kill(sandbox.sandbox_id)
        killed.set()

    threading.Thread(target=kill_soon, daemon=True).start()
    start = time.monotonic()
    with pytest.raises(Exception) as err:
        sandbox.commands.run("sleep 30", timeout=60)
    elapsed = time.monotonic() - start
    assert killed.wait(5)
    assert elapsed < 5, f"the SDK call took {elapsed:.1f}s after the sandbox died"
    # The proxy cuts the stream and the SDK reads that as "not running".
    assert isinstance(err.value, SandboxNotRunningException), repr(err.value)
    assert sandbox.is_running() is False


def test_metrics_report_the_sandbox_limits(make):
    sandbox = make()
    sandbox.commands.run("head -c 50000000 /dev/zero | sha256sum >/dev/null")
    info = sandbox.get_info()
    metrics = sandbox.get_metrics()
    assert metrics, "no samples"
    last = metrics[-1]
    assert last.cpu_count == info.cpu_count
    assert last.mem_total == info.memory_mb << 20
    assert 0 < last.mem_used <= last.mem_total
    assert last.disk_total == 2048 << 20
    assert 0 <= last.disk_used <= last.disk_total
    assert 0 <= last.cpu_used_pct <= 100 * info.cpu_count
    stamps = [m.timestamp for m in metrics]
    assert stamps == sorted(stamps)
    assert close_to(stamps[-1], datetime.now(timezone.utc), slack=10)


# --- the proxy -------------------------------------------------------------------------


def test_closed_port_is_502_port_not_open(serve_server, make):
    sandbox = make()
    r = proxy_get(serve_server, sandbox.sandbox_id, 8123)
    assert r.status_code == 502
    body = r.json()
    assert "port is not open" in body["message"], body
    assert body["sandboxId"] == sandbox.sandbox_id and body["port"] == 8123


def test_user_port_through_the_proxy(serve_server, make):
    sandbox = make()
    sandbox.files.write("/home/user/www/hello.txt", "hello through the proxy\n")
    sandbox.commands.run(
        "python3 -m http.server 8000", cwd="/home/user/www", background=True
    )
    deadline = time.monotonic() + 15
    while True:
        r = proxy_get(serve_server, sandbox.sandbox_id, 8000, "/hello.txt")
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert r.status_code == 200, r.text
    assert r.text == "hello through the proxy\n"
    # Host-based routing: <port>-<id>.<domain>, as a browser would send it.
    r = httpx.get(
        f"{serve_server.url}/hello.txt",
        headers={"Host": f"8000-{sandbox.sandbox_id}.localhost"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    assert r.text == "hello through the proxy\n"


def test_unknown_sandbox_through_the_proxy_is_not_found(serve_server):
    assert_sandbox_not_found(serve_server, "i" + "0" * 20)
    r = httpx.get(
        f"{serve_server.url}/", headers={"Host": "8000-nosuchsandbox.localhost"}, timeout=10
    )
    assert r.status_code == 502 and "not found" in r.json()["message"]


# --- REST error shapes -----------------------------------------------------------------


def assert_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) >= {"code", "message"}, body
    assert body["code"] == status and isinstance(body["message"], str) and body["message"]
    return body


def test_missing_or_wrong_api_key_is_401_json(serve_server):
    assert_error(httpx.get(f"{serve_server.url}/sandboxes", timeout=10), 401)
    assert_error(
        httpx.get(
            f"{serve_server.url}/v2/sandboxes",
            headers={"X-API-Key": "e2b_" + "f" * 40},
            timeout=10,
        ),
        401,
    )
    assert_error(
        httpx.post(f"{serve_server.url}/sandboxes", json={"templateID": "base"}, timeout=10),
        401,
    )


def test_unknown_sandbox_is_404_json(serve_server):
    with serve_server.api() as api:
        for req in (
            api.build_request("GET", "/sandboxes/i00000000000000000000"),
            api.build_request("DELETE", "/sandboxes/i00000000000000000000"),
            api.build_request(
                "POST", "/sandboxes/i00000000000000000000/timeout", json={"timeout": 5}
            ),
        ):
            assert_error(api.send(req), 404)


def test_malformed_json_body_is_400_json(serve_server):
    with serve_server.api() as api:
        r = api.post(
            "/sandboxes",
            content=b'{"templateID": "base",',
            headers={"Content-Type": "application/json"},
        )
        assert_error(r, 400)
        r = api.post("/sandboxes", json={"templateID": 42})
        assert r.status_code in (400, 422), r.text
        assert_error(r, r.status_code)
        assert_error(api.post("/sandboxes", json={"templateID": "no-such-template"}), 404)


@pytest.mark.container_only
def test_new_sandbox_on_a_reused_slot_is_reachable_at_once(make, serve_server):
    """Slots are reused: a sandbox landing on a killed sandbox's slot must never be
    sent over a keep-alive connection the proxy kept to its predecessor (the proxy
    pools connections per sandbox incarnation, not per address)."""
    first = make()
    assert first.commands.run("true").exit_code == 0  # leaves an idle pooled connection
    slot = sandbox_slot(serve_server.instance, first.sandbox_id)
    Sandbox.kill(first.sandbox_id)
    for _ in range(24):
        sandbox = make()
        landed = sandbox_slot(serve_server.instance, sandbox.sandbox_id)
        # Every new sandbox, on whatever slot, must answer on the first try.
        assert sandbox.commands.run("echo ok").stdout == "ok\n"
        if landed == slot:
            return
        Sandbox.kill(sandbox.sandbox_id)
    pytest.skip(f"no new sandbox landed on slot {slot} in 24 tries")
