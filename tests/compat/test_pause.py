# SPDX-License-Identifier: Apache-2.0
"""Pause and resume through `hearth serve` with the unmodified SDK (issue 5): memory
and filesystem pauses, resume by `connect`, listing by state, auto-pause on timeout,
auto-resume by traffic through the proxy, five cycles without losing a write, and
paused sandboxes across a restart and a crash of the server.

What a pause keeps differs per runtime (docs/design.md, hearth_compat/probe.py): the
assertions say which runtime expects what; tests that only make sense on one runtime
are skipped on the other with the reason. Restart and crash tests run on a server of
this module's own (hearth_compat/serve.py), which must stop clean at the end."""

from __future__ import annotations

import os
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from e2b import NotFoundException, Sandbox, SandboxQuery, SandboxState
from hearth_compat.probe import (
    MICROVM,
    assert_files,
    boot_id,
    detail,
    microvm_only,
    sleepers,
    start_sleeper,
    state_of,
    wait_state,
    write_files,
)
from hearth_compat.serve import CGROUP_ROOT, ServeServer, sandbox_init_pid

pytestmark = pytest.mark.serve_only

PAUSED = SandboxState.PAUSED
RUNNING = SandboxState.RUNNING

# A microVM's cold boot takes seconds under TCG; a container's milliseconds.
RESUME_WITHIN = 60 if MICROVM else 15
# A lifetime long enough for a test's few requests before the timeout pauses it (a
# request to a microVM costs tens of milliseconds more under TCG).
SHORT = 10 if MICROVM else 3


@pytest.fixture
def make(serve_server: ServeServer):
    """Creates sandboxes on the session's server for one test and kills what is left
    of them (running or paused) after it."""
    made: list[str] = []

    def create(**kwargs) -> Sandbox:
        kwargs.setdefault("timeout", 300)
        sandbox = Sandbox.create(**kwargs)
        made.append(sandbox.sandbox_id)
        return sandbox

    yield create
    for sandbox_id in made:
        Sandbox.kill(sandbox_id)


def proxy_get(server: ServeServer, sandbox_id: str, port: int, path: str, **kw):
    headers = {"E2b-Sandbox-Id": sandbox_id, "E2b-Sandbox-Port": str(port)}
    headers.update(kw.pop("headers", {}))
    return httpx.get(f"{server.url}{path}", headers=headers, timeout=kw.pop("timeout", 60), **kw)


def assert_proxy_not_found(server: ServeServer, sandbox_id: str) -> None:
    r = proxy_get(server, sandbox_id, 49983, "/health", timeout=10)
    assert r.status_code == 502, (r.status_code, r.text)
    body = r.json()
    assert body["code"] == 502 and "not found" in body["message"], body


# --- pause and resume ------------------------------------------------------------------


def test_memory_pause_keeps_files_and_processes(serve_server, make):
    sandbox = make()
    sid = sandbox.sandbox_id
    files = {"/home/user/work/notes.txt": "half-built project\n", "/tmp/scratch": "tmp data"}
    write_files(sandbox, files)
    pid = start_sleeper(sandbox, 4101)
    boot = boot_id(sandbox)

    assert sandbox.pause() is True
    assert sandbox.is_running() is False
    assert state_of(sid) == PAUSED
    d = detail(serve_server, sid)
    assert d["state"] == "paused" and d["pauseMode"] == "full", d
    # Pausing again is the SDK's "already paused" (the API's 409).
    assert sandbox.pause() is False
    assert Sandbox.pause(sid, mode="filesystem") is False
    assert detail(serve_server, sid)["pauseMode"] == "full"
    assert_proxy_not_found(serve_server, sid)

    again = Sandbox.connect(sid, timeout=300)
    assert again.sandbox_id == sid
    assert again.is_running()
    assert state_of(sid) == RUNNING
    d = detail(serve_server, sid)
    assert d["state"] == "running" and "pauseMode" not in d, d
    assert_files(again, files)
    assert sleepers(again, 4101) == [pid], "the background process did not survive"
    assert boot_id(again) == boot
    # The original handle works too: same id, same (deterministic) access token.
    assert sandbox.commands.run("echo $E2B_SANDBOX_ID").stdout == f"{sid}\n"
    sandbox.files.write("/home/user/work/after.txt", "after resume")
    assert again.files.read("/home/user/work/after.txt") == "after resume"


def test_filesystem_pause_ends_processes_keeps_files(serve_server, make):
    sandbox = make(envs={"KEPT_ENV": "from-create"})
    sid = sandbox.sandbox_id
    files = {
        "/home/user/work/notes.txt": "kept\n",
        "/tmp/scratch": "tmp is on the disk too",
    }
    write_files(sandbox, files)
    sandbox.commands.run("echo root-owned > /opt/root.txt && rm -f /etc/motd", user="root")
    start_sleeper(sandbox, 4102)

    assert sandbox.pause(mode="filesystem") is True
    assert sandbox.is_running() is False
    d = detail(serve_server, sid)
    assert d["state"] == "paused" and d["pauseMode"] == "filesystem", d
    assert sandbox.pause() is False

    again = Sandbox.connect(sid)
    assert again.sandbox_id == sid
    assert state_of(sid) == RUNNING
    assert_files(again, {**files, "/opt/root.txt": "root-owned\n", "/etc/motd": None})
    assert sleepers(again, 4102) == [], "a filesystem pause must end every process"
    # A fresh boot, but the same sandbox: its env vars, user and new processes work.
    out = again.commands.run('echo "$KEPT_ENV $E2B_SANDBOX_ID $(whoami)"').stdout
    assert out == f"from-create {sid} user\n"
    start_sleeper(again, 4102)
    assert len(sleepers(again, 4102)) == 1


@microvm_only
def test_boot_id_survives_a_memory_pause_and_changes_on_a_filesystem_pause(make):
    sandbox = make()
    first = boot_id(sandbox)
    assert sandbox.pause() is True
    Sandbox.connect(sandbox.sandbox_id)
    assert boot_id(sandbox) == first, "a memory pause must continue the same boot"
    assert sandbox.pause(mode="filesystem") is True
    Sandbox.connect(sandbox.sandbox_id)
    second = boot_id(sandbox)
    assert second != first, "a filesystem pause must resume by a fresh boot"


def test_reboot_on_resume_of_a_memory_pause_boots_fresh_over_the_files(serve_server, make):
    sandbox = make()
    sandbox.files.write("/home/user/kept.txt", "kept")
    # The SDK's contract: a reboot starts from the disk, so only writes flushed
    # before the pause are sure to be there (a microVM's page cache is in the saved
    # memory this discards).
    sandbox.commands.run("sync")
    start_sleeper(sandbox, 4103)
    assert sandbox.pause() is True
    again = Sandbox.connect(sandbox.sandbox_id, on_resume="reboot")
    assert state_of(sandbox.sandbox_id) == RUNNING
    assert again.files.read("/home/user/kept.txt") == "kept"
    assert sleepers(again, 4103) == []


def test_pause_connect_and_resume_status_codes(serve_server, make):
    """The wire contract the SDK relies on: 204/409 for pause, 201 for a resume,
    200 for a connect to a running sandbox, 409 for v1 resume of a running one."""
    sandbox = make()
    sid = sandbox.sandbox_id
    with serve_server.api() as api:
        assert api.post(f"/sandboxes/{sid}/pause", json={}).status_code == 204
        r = api.post(f"/sandboxes/{sid}/pause", json={})
        assert r.status_code == 409 and r.json()["code"] == 409, r.text
        r = api.post(f"/v2/sandboxes/{sid}/connect", json={"timeout": 120})
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["sandboxID"] == sid
        assert body["envdAccessToken"] == sandbox._envd_access_token
        r = api.post(f"/v2/sandboxes/{sid}/connect", json={"timeout": 120})
        assert r.status_code == 200, r.text
        r = api.post(f"/sandboxes/{sid}/resume", json={})
        assert r.status_code == 409, r.text

        r = api.post(f"/sandboxes/{sid}/pause", json={"memory": False})
        assert r.status_code == 204, r.text
        assert api.get(f"/sandboxes/{sid}").json()["pauseMode"] == "filesystem"
        r = api.post(f"/sandboxes/{sid}/resume", json={"timeout": 120})
        assert r.status_code == 201, r.text
        assert r.json()["sandboxID"] == sid
        r = api.post(f"/sandboxes/{sid}/connect", json={"timeout": 120})
        assert r.status_code == 200, r.text

        missing = "i" + "0" * 20
        assert api.post(f"/sandboxes/{missing}/pause", json={}).status_code == 404
        assert api.post(f"/v2/sandboxes/{missing}/connect", json={}).status_code == 404
    assert sandbox.commands.run("echo back").stdout == "back\n"


def test_connect_to_a_killed_paused_sandbox_is_not_found(make):
    sandbox = make()
    assert sandbox.pause() is True
    assert sandbox.kill() is True
    with pytest.raises(NotFoundException):
        Sandbox.connect(sandbox.sandbox_id)
    with pytest.raises(NotFoundException):
        Sandbox.pause(sandbox.sandbox_id)


# --- listing ---------------------------------------------------------------------------


def listed(query: SandboxQuery, limit: int | None = None) -> tuple[list, int]:
    """Every sandbox of the listing (all pages) and the number of pages."""
    paginator = Sandbox.list(query=query, limit=limit)
    seen, pages = [], 0
    while paginator.has_next:
        page = paginator.next_items()
        pages += 1
        assert limit is None or len(page) <= limit
        seen.extend(page)
        assert pages <= 20, "pagination does not end"
    ids = [s.sandbox_id for s in seen]
    assert len(ids) == len(set(ids)), f"duplicates across pages: {ids}"
    return seen, pages


def test_list_filters_by_state_and_paginates_across_a_mix(make):
    tag = uuid.uuid4().hex
    sandboxes = [make(metadata={"suite": tag, "i": str(i)}) for i in range(5)]
    paused = {sandboxes[0].sandbox_id, sandboxes[2].sandbox_id, sandboxes[4].sandbox_id}
    running = {sandboxes[1].sandbox_id, sandboxes[3].sandbox_id}
    assert sandboxes[0].pause() is True
    assert sandboxes[2].pause(mode="filesystem") is True
    assert sandboxes[4].pause() is True

    mine = {"suite": tag}
    got, _ = listed(SandboxQuery(metadata=mine, state=[PAUSED]))
    assert {s.sandbox_id for s in got} == paused
    assert all(s.state == PAUSED for s in got)
    got, _ = listed(SandboxQuery(metadata=mine, state=[RUNNING]))
    assert {s.sandbox_id for s in got} == running
    assert all(s.state == RUNNING for s in got)

    got, pages = listed(SandboxQuery(metadata=mine), limit=2)
    assert pages == 3
    assert {s.sandbox_id: s.state for s in got} == {
        **{i: PAUSED for i in paused},
        **{i: RUNNING for i in running},
    }
    got, pages = listed(SandboxQuery(metadata=mine, state=[PAUSED, RUNNING]), limit=2)
    assert {s.sandbox_id for s in got} == paused | running and pages == 3
    got, pages = listed(SandboxQuery(metadata=mine, state=[PAUSED]), limit=2)
    assert {s.sandbox_id for s in got} == paused and pages == 2

    # Resumed, a sandbox moves from one list to the other.
    Sandbox.connect(sandboxes[0].sandbox_id)
    got, _ = listed(SandboxQuery(metadata=mine, state=[PAUSED]))
    assert {s.sandbox_id for s in got} == paused - {sandboxes[0].sandbox_id}


# --- auto-pause ------------------------------------------------------------------------


def test_timeout_auto_pauses_and_connect_resumes_with_processes(serve_server, make):
    sandbox = make(timeout=SHORT, lifecycle={"on_timeout": "pause"})
    sid = sandbox.sandbox_id
    info = sandbox.get_info()
    assert info.lifecycle == {"on_timeout": "pause", "auto_resume": False}, info.lifecycle
    files = {"/home/user/project/main.py": "print('hi')\n"}
    write_files(sandbox, files)
    pid = start_sleeper(sandbox, 4104)

    wait_state(sid, PAUSED, within=SHORT + 10)
    d = detail(serve_server, sid)
    assert d["pauseMode"] == "full", d
    got, _ = listed(SandboxQuery(state=[PAUSED]))
    assert sid in {s.sandbox_id for s in got}

    # A short lifetime after resume: it pauses again (auto-pause is not one-shot).
    again = Sandbox.connect(sid, timeout=SHORT)
    assert_files(again, files)
    assert sleepers(again, 4104) == [pid]
    again.files.write("/home/user/project/second.txt", "second")
    wait_state(sid, PAUSED, within=SHORT + 10)

    before = datetime.now(timezone.utc)
    again = Sandbox.connect(sid, timeout=120)
    after = datetime.now(timezone.utc)
    assert_files(again, {**files, "/home/user/project/second.txt": "second"})
    assert sleepers(again, 4104) == [pid]
    # The new lifetime counts from the resume.
    end_at = again.get_info().end_at
    life = timedelta(seconds=120)
    assert before + life - timedelta(seconds=1) <= end_at <= after + life + timedelta(seconds=1)


def test_timeout_auto_pause_without_memory_is_a_filesystem_pause(serve_server, make):
    sandbox = make(timeout=3, lifecycle={"on_timeout": {"action": "pause", "mode": "filesystem"}})
    sid = sandbox.sandbox_id
    sandbox.files.write("/home/user/kept.txt", "kept")
    start_sleeper(sandbox, 4105)
    wait_state(sid, PAUSED, within=3 + 10)
    assert detail(serve_server, sid)["pauseMode"] == "filesystem"
    again = Sandbox.connect(sid, timeout=120)
    assert again.files.read("/home/user/kept.txt") == "kept"
    assert sleepers(again, 4105) == []


def test_timeout_without_auto_pause_still_kills(make):
    sandbox = make(timeout=2)
    deadline = time.monotonic() + 2 + 10
    while True:
        try:
            Sandbox.get_info(sandbox.sandbox_id)
        except NotFoundException:
            break
        assert time.monotonic() < deadline, "never killed"
        time.sleep(0.1)
    got, _ = listed(SandboxQuery(state=[PAUSED]))
    assert sandbox.sandbox_id not in {s.sandbox_id for s in got}


# --- auto-resume -----------------------------------------------------------------------


def serve_http(server: ServeServer, sandbox: Sandbox, port: int, text: str) -> None:
    """Starts a web server in the sandbox and waits until the proxy reaches it."""
    sandbox.files.write("/home/user/www/hello.txt", text)
    sandbox.commands.run(
        f"python3 -m http.server {port}", cwd="/home/user/www", background=True
    )
    deadline = time.monotonic() + 30
    while True:
        r = proxy_get(server, sandbox.sandbox_id, port, "/hello.txt", timeout=10)
        if r.status_code == 200:
            return
        assert time.monotonic() < deadline, r.text
        time.sleep(0.2)


def test_traffic_through_the_proxy_resumes_a_paused_sandbox(serve_server, make):
    sandbox = make(timeout=300, lifecycle={"on_timeout": "pause", "auto_resume": True})
    sid = sandbox.sandbox_id
    assert sandbox.get_info().lifecycle == {"on_timeout": "pause", "auto_resume": True}
    serve_http(serve_server, sandbox, 8000, "served after waking\n")
    pid = start_sleeper(sandbox, 4106)

    # A request to a user port wakes it and is served by the process that was
    # running when it paused.
    assert Sandbox.pause(sid) is True
    assert state_of(sid) == PAUSED
    r = proxy_get(serve_server, sid, 8000, "/hello.txt")
    assert r.status_code == 200, r.text
    assert r.text == "served after waking\n"
    assert state_of(sid) == RUNNING
    assert sleepers(sandbox, 4106) == [pid]

    # So does a request to envd (a file read with the sandbox's token).
    assert Sandbox.pause(sid) is True
    assert state_of(sid) == PAUSED
    r = proxy_get(
        serve_server,
        sid,
        49983,
        "/files",
        params={"path": "/home/user/www/hello.txt", "username": "user"},
        headers={"X-Access-Token": sandbox._envd_access_token},
    )
    assert r.status_code == 200, r.text
    assert r.text == "served after waking\n"
    assert state_of(sid) == RUNNING
    # It runs for its original lifetime again.
    end = sandbox.get_info().end_at
    assert abs((end - (datetime.now(timezone.utc) + timedelta(seconds=300))).total_seconds()) < 10


def test_paused_sandbox_without_auto_resume_is_not_found_through_the_proxy(
    serve_server, make
):
    sandbox = make(timeout=300, lifecycle={"on_timeout": "pause"})
    sid = sandbox.sandbox_id
    sandbox.files.write("/home/user/kept.txt", "kept")
    assert sandbox.pause() is True
    assert_proxy_not_found(serve_server, sid)
    r = proxy_get(serve_server, sid, 8000, "/", timeout=10)
    assert r.status_code == 502 and "not found" in r.json()["message"], r.text
    assert sandbox.is_running() is False
    assert state_of(sid) == PAUSED
    Sandbox.connect(sid)
    assert sandbox.files.read("/home/user/kept.txt") == "kept"


# --- no loss ---------------------------------------------------------------------------


def test_five_pause_resume_cycles_lose_no_write(make):
    sandbox = make()
    sid = sandbox.sandbox_id
    expected: dict[str, str | None] = {}
    # The writes between cycles: a new file, another, an overwrite, a delete plus a
    # new file, an append plus a nested file. Each is made by a shell with no sync,
    # right before the pause.
    steps = [
        ("printf one > /home/user/a.txt", {"/home/user/a.txt": "one"}),
        ("printf two > /home/user/b.txt", {"/home/user/b.txt": "two"}),
        ("printf overwritten > /home/user/a.txt", {"/home/user/a.txt": "overwritten"}),
        (
            "rm /home/user/b.txt && printf three > /home/user/c.txt",
            {"/home/user/b.txt": None, "/home/user/c.txt": "three"},
        ),
        (
            "printf +four >> /home/user/c.txt && mkdir -p /home/user/d/e "
            "&& printf five > /home/user/d/e/f.txt",
            {"/home/user/c.txt": "three+four", "/home/user/d/e/f.txt": "five"},
        ),
    ]
    sandbox.commands.run("head -c 3000000 /dev/urandom > /home/user/big.bin")
    big = sandbox.commands.run("sha256sum /home/user/big.bin").stdout
    for i, (command, change) in enumerate(steps):
        sandbox.commands.run(command)
        expected.update(change)
        mode = "full" if i % 2 == 0 else "filesystem"
        assert sandbox.pause(mode=mode) is True, f"cycle {i}"
        assert Sandbox.connect(sid).sandbox_id == sid
        assert_files(sandbox, expected)
        assert sandbox.commands.run("sha256sum /home/user/big.bin").stdout == big
    assert sorted(sandbox.commands.run("ls /home/user").stdout.split()) == [
        "a.txt",
        "big.bin",
        "c.txt",
        "d",
    ]


# --- restarts and crashes of the server ------------------------------------------------

# A microVM server builds its guest kernel and template on first start in a new home.
START_TIMEOUT = 400 if MICROVM else 60


@pytest.fixture(scope="module")
def own_server():
    """This module's own server, reused by the restart and crash tests (a new
    microVM home takes half a minute to prepare). At the end it must stop clean."""
    server = ServeServer(f"hct{os.getpid()}pause", warm_slots=2, data_gb=4)
    yield server
    server.kill9()
    server.extra_args = ()
    server.start(timeout=START_TIMEOUT)
    for sandbox_id in all_ids(server):
        Sandbox.kill(sandbox_id, **server.sdk_opts())
    server.stop_and_check()


@pytest.fixture
def own(own_server: ServeServer):
    """The module's server, running with default options; whatever the test leaves
    on it is killed afterwards."""
    s = own_server
    if s.running() and s.extra_args:
        s.stop()
    s.extra_args = ()
    if not s.running():
        s.start(timeout=START_TIMEOUT)
    yield s
    if not s.running() or s.extra_args:
        s.kill9()
        s.extra_args = ()
        s.start(timeout=START_TIMEOUT)
    for sandbox_id in all_ids(s):
        Sandbox.kill(sandbox_id, **s.sdk_opts())


def all_ids(server: ServeServer) -> set[str]:
    return {s.sandbox_id for s in listed_on(server)}


def listed_on(server: ServeServer, state: list[SandboxState] | None = None) -> list:
    paginator = Sandbox.list(query=SandboxQuery(state=state), **server.sdk_opts())
    out = []
    while paginator.has_next:
        out.extend(paginator.next_items())
    return out


def marked(server: ServeServer, marker: str, sleeper: int) -> tuple[Sandbox, int]:
    sandbox = Sandbox.create(timeout=600, **server.sdk_opts())
    sandbox.files.write("/home/user/marker.txt", marker)
    sandbox.commands.run(f"printf %s {marker} > /tmp/marker")
    return sandbox, start_sleeper(sandbox, sleeper)


def assert_marked(sandbox: Sandbox, marker: str) -> None:
    assert_files(sandbox, {"/home/user/marker.txt": marker, "/tmp/marker": marker})
    sandbox.files.write("/home/user/writable.txt", marker)
    assert sandbox.files.read("/home/user/writable.txt") == marker


def test_restart_keeps_paused_sandboxes(own: ServeServer):
    mem, mem_pid = marked(own, "memory", 4107)
    fs, _ = marked(own, "files", 4108)
    assert Sandbox.pause(mem.sandbox_id, **own.sdk_opts()) is True
    assert Sandbox.pause(fs.sandbox_id, mode="filesystem", **own.sdk_opts()) is True

    # A plain stop: no sandbox process survives it (nor any mount, cgroup or
    # network namespace); the paused sandboxes' files do (in the data volume).
    assert own.stop() == 0
    assert own.settled_leftovers() == []
    own.start(timeout=START_TIMEOUT)
    assert (own.sandboxes_dir / mem.sandbox_id).is_dir()
    assert (own.sandboxes_dir / fs.sandbox_id).is_dir()

    paused = {s.sandbox_id for s in listed_on(own, [PAUSED])}
    assert paused == {mem.sandbox_id, fs.sandbox_id}
    # A frozen container cannot outlive the server: it became a filesystem pause,
    # and says so. A microVM's memory pause is on disk and stays one.
    assert detail(own, mem.sandbox_id)["pauseMode"] == ("full" if MICROVM else "filesystem")
    assert detail(own, fs.sandbox_id)["pauseMode"] == "filesystem"

    mem_again = Sandbox.connect(mem.sandbox_id, **own.sdk_opts())
    fs_again = Sandbox.connect(fs.sandbox_id, **own.sdk_opts())
    assert_marked(mem_again, "memory")
    assert_marked(fs_again, "files")
    assert sleepers(mem_again, 4107) == ([mem_pid] if MICROVM else [])
    assert sleepers(fs_again, 4108) == []
    assert {s.sandbox_id for s in listed_on(own, [RUNNING])} == paused


def test_keep_sandboxes_restart_keeps_a_memory_pause(own: ServeServer):
    own.stop()
    own.extra_args = ("--keep-sandboxes",)
    own.start(timeout=START_TIMEOUT)
    sandbox, pid = marked(own, "kept", 4109)
    sid = sandbox.sandbox_id
    assert Sandbox.pause(sid, **own.sdk_opts()) is True
    if not MICROVM:
        init = sandbox_init_pid(own.instance, sid)
        freezer = CGROUP_ROOT / "freezer" / own.instance / sid / "freezer.state"
        assert freezer.read_text().strip() == "FROZEN"
    assert own.stop() == 0
    if not MICROVM:
        # It outlived the server, frozen.
        assert freezer.read_text().strip() == "FROZEN"
        assert sandbox_init_pid(own.instance, sid) == init
    own.start(timeout=START_TIMEOUT)
    if not MICROVM:
        assert freezer.read_text().strip() == "FROZEN"
    assert {s.sandbox_id for s in listed_on(own, [PAUSED])} == {sid}
    assert detail(own, sid)["pauseMode"] == "full"
    again = Sandbox.connect(sid, **own.sdk_opts())
    assert_marked(again, "kept")
    assert sleepers(again, 4109) == [pid]
    if not MICROVM:
        assert sandbox_init_pid(own.instance, sid) == init


# How long after starting a pause the server is killed: spread over the pause's own
# duration (milliseconds for a container, most of a second for a microVM).
CRASH_DELAYS = (
    [0.0, 0.15, 0.3, 0.45, 0.6, 0.8] if MICROVM else [0.0, 0.001, 0.002, 0.004, 0.008, 0.015, 0.03]
)


@pytest.mark.timeout(600 if MICROVM else 120)
def test_crash_during_a_pause_leaves_a_running_or_a_paused_sandbox(own: ServeServer):
    outcomes = []
    for i, delay in enumerate(CRASH_DELAYS):
        mode = "full" if i % 2 == 0 else "filesystem"
        sandbox, pid = marked(own, f"crash{i}", 4110 + i)
        sid = sandbox.sandbox_id
        result: list[object] = []

        def pause(sid=sid, mode=mode, result=result):
            try:
                result.append(Sandbox.pause(sid, mode=mode, **own.sdk_opts()))
            except Exception as e:  # the server dies under the request
                result.append(e)

        thread = threading.Thread(target=pause, daemon=True)
        thread.start()
        time.sleep(delay)
        own.kill9()
        thread.join(30)
        assert not thread.is_alive()
        own.start(timeout=START_TIMEOUT)

        listed_ids = [s.sandbox_id for s in listed_on(own)]
        assert listed_ids.count(sid) == 1, f"{mode} pause, crash after {delay}s: gone"
        d = detail(own, sid)
        state = d["state"]
        outcomes.append((mode, delay, state, d.get("pauseMode")))
        if state == "paused":
            # Complete: it resumes with its files; a memory pause that says so kept
            # its processes.
            assert d["pauseMode"] in ("full", "filesystem"), d
            if mode == "filesystem":
                assert d["pauseMode"] == "filesystem", d
            again = Sandbox.connect(sid, **own.sdk_opts())
            assert_marked(again, f"crash{i}")
            expect = [pid] if d["pauseMode"] == "full" else []
            assert sleepers(again, 4110 + i) == expect, (mode, delay, d)
        else:
            # Never happened: it runs on as before, processes and all.
            assert state == "running", d
            assert "pauseMode" not in d, d
            again = Sandbox.connect(sid, **own.sdk_opts())
            assert_marked(again, f"crash{i}")
            assert sleepers(again, 4110 + i) == [pid], (mode, delay)
        # Usable for the next operations: pause and resume work, kill cleans up.
        assert Sandbox.pause(sid, mode=mode, **own.sdk_opts()) is True
        assert Sandbox.connect(sid, **own.sdk_opts()).files.read("/tmp/marker") == f"crash{i}"
        assert Sandbox.kill(sid, **own.sdk_opts()) is True
    print("crash outcomes (mode, delay, state, pauseMode):", outcomes)

    # Nothing of any of them is left: no state directory, and after a clean stop
    # nothing on the host.
    assert all_ids(own) == set()
    assert sorted(p.name for p in own.sandboxes_dir.iterdir()) == []
    snapshots = own.home / "data" / "snapshots"
    assert not snapshots.exists() or list(snapshots.iterdir()) == []
    assert own.stop() == 0
    assert own.settled_leftovers() == []
