# SPDX-License-Identifier: Apache-2.0
"""Snapshots and forks through `hearth serve` with the unmodified SDK (issue 5):
sandboxes started from a snapshot (by id and by name) are independent copy-on-write
copies, snapshots are listed and deleted, copies outlive the deletion of their
snapshot (its files go only with the last copy), and forks are independent copies of
a running sandbox.

Snapshots and forks of containers keep files only; of microVMs, memory and processes
too (docs/design.md): the assertions on processes say which runtime expects what."""

from __future__ import annotations

import time
import uuid

import pytest
from e2b import (
    InvalidArgumentException,
    NotFoundException,
    Sandbox,
    SandboxException,
    SandboxQuery,
    SandboxState,
)
from hearth_compat.probe import (
    MICROVM,
    assert_files,
    sleepers,
    start_sleeper,
    write_files,
)
from hearth_compat.serve import ServeServer

pytestmark = pytest.mark.serve_only


@pytest.fixture
def make(serve_server: ServeServer):
    """Creates sandboxes for one test and kills what is left of them after it."""
    made: list[str] = []

    def create(**kwargs) -> Sandbox:
        kwargs.setdefault("timeout", 300)
        sandbox = Sandbox.create(**kwargs)
        made.append(sandbox.sandbox_id)
        return sandbox

    create.track = made.append  # type: ignore[attr-defined]
    yield create
    for sandbox_id in made:
        Sandbox.kill(sandbox_id)


@pytest.fixture
def snapshots():
    """Snapshot ids a test made; deleted after it (if the test did not)."""
    made: list[str] = []
    yield made
    for snapshot_id in made:
        Sandbox.delete_snapshot(snapshot_id)


def snapshot_dirs(server: ServeServer, source_id: str) -> list[str]:
    """The snapshot directories taken of sandbox `source_id` (named after it)."""
    d = server.home / "data" / "snapshots"
    return sorted(p.name for p in d.iterdir() if p.name.startswith(f"{source_id}-"))


def wait_gone(server: ServeServer, source_id: str, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while snapshot_dirs(server, source_id):
        assert time.monotonic() < deadline, (
            f"snapshot files of {source_id} outlived every user: "
            f"{snapshot_dirs(server, source_id)}"
        )
        time.sleep(0.1)


def all_snapshots(**kwargs) -> tuple[list[str], int]:
    """Snapshot ids of every page of a listing, and the number of pages."""
    paginator = Sandbox.list_snapshots(**kwargs)
    ids, pages = [], 0
    while paginator.has_next:
        ids.extend(s.snapshot_id for s in paginator.next_items())
        pages += 1
        assert pages <= 50, "pagination does not end"
    assert len(ids) == len(set(ids)), f"duplicates across pages: {ids}"
    return ids, pages


# --- snapshots -------------------------------------------------------------------------


def test_sandboxes_from_a_snapshot_are_independent_copies(serve_server, make, snapshots):
    src = make()
    files = {
        "/home/user/project/a.txt": "from the source",
        "/home/user/project/sub/b.txt": "nested",
    }
    write_files(src, files)
    src.commands.run("rm /etc/motd && echo root > /opt/root.txt", user="root")
    pid = start_sleeper(src, 4201)
    end = src.get_info().end_at

    name = f"snap-{uuid.uuid4().hex[:12]}"
    snap = src.create_snapshot(name=name)
    snapshots.append(snap.snapshot_id)
    assert snap.snapshot_id and snap.names == [name], snap
    # The source runs on, processes and lifetime untouched.
    assert src.get_info().state == SandboxState.RUNNING
    assert src.get_info().end_at == end
    assert sleepers(src, 4201) == [pid]
    # Its later writes are not in the snapshot.
    src.files.write("/home/user/project/a.txt", "source after the snapshot")
    src.files.write("/home/user/project/late.txt", "late")

    by_id = make(template=snap.snapshot_id)
    by_name = make(template=name)
    as_taken = {
        **files,
        "/opt/root.txt": "root\n",
        "/etc/motd": None,
        "/home/user/project/late.txt": None,
    }
    for copy in (by_id, by_name):
        assert copy.sandbox_id != src.sandbox_id
        assert copy.get_info().template_id == snap.snapshot_id
        assert_files(copy, as_taken)
        # A microVM snapshot keeps memory: copies continue the source's processes.
        assert sleepers(copy, 4201) == ([pid] if MICROVM else [])
        out = copy.commands.run('echo "$E2B_SANDBOX_ID $(whoami)"').stdout
        assert out == f"{copy.sandbox_id} user\n"
    # Restored from one memory image, the copies still draw different random
    # numbers: /init mixed fresh entropy into each one's kernel generator.
    draws = {
        copy.commands.run("head -c 16 /dev/urandom | od -An -tx1").stdout
        for copy in (by_id, by_name)
    }
    assert len(draws) == 2, draws

    # Copy-on-write: each one's writes are its own.
    by_id.files.write("/home/user/project/a.txt", "written by the first copy")
    by_id.files.write("/home/user/only-first.txt", "first")
    by_name.commands.run("rm /home/user/project/sub/b.txt")
    assert_files(
        by_id,
        {
            "/home/user/project/a.txt": "written by the first copy",
            "/home/user/only-first.txt": "first",
            "/home/user/project/sub/b.txt": "nested",
        },
    )
    assert_files(
        by_name,
        {
            "/home/user/project/a.txt": "from the source",
            "/home/user/only-first.txt": None,
            "/home/user/project/sub/b.txt": None,
        },
    )
    assert_files(
        src,
        {
            "/home/user/project/a.txt": "source after the snapshot",
            "/home/user/only-first.txt": None,
            "/home/user/project/sub/b.txt": "nested",
            "/home/user/project/late.txt": "late",
        },
    )

    # Listed by source and by name (and by id).
    assert all_snapshots(sandbox_id=src.sandbox_id)[0] == [snap.snapshot_id]
    assert [s.snapshot_id for s in src.list_snapshots().next_items()] == [snap.snapshot_id]
    assert all_snapshots(name=name)[0] == [snap.snapshot_id]
    assert all_snapshots(name=snap.snapshot_id)[0] == [snap.snapshot_id]
    assert len(snapshot_dirs(serve_server, src.sandbox_id)) == 1

    # Deleted: gone from the list and for new sandboxes...
    assert Sandbox.delete_snapshot(snap.snapshot_id) is True
    assert Sandbox.delete_snapshot(snap.snapshot_id) is False
    assert all_snapshots(sandbox_id=src.sandbox_id)[0] == []
    for template in (snap.snapshot_id, name):
        with pytest.raises(SandboxException) as err:
            Sandbox.create(template=template, timeout=60)
        assert err.value.status_code == 404, err.value
    # ...but its copies keep their files, across a pause that boots them fresh from
    # the files (the snapshot's layer is under theirs), and the source does not
    # matter any more.
    assert by_name.pause(mode="filesystem") is True
    Sandbox.connect(by_name.sandbox_id)
    assert_files(by_name, {"/home/user/project/a.txt": "from the source", "/etc/motd": None})
    assert src.kill() is True
    assert_files(by_id, {"/home/user/project/a.txt": "written by the first copy"})
    assert by_id.commands.run("cat /home/user/project/sub/b.txt").stdout == "nested"
    # The files go with the last sandbox that uses them, not before.
    assert by_id.kill() is True
    time.sleep(0.5)
    assert len(snapshot_dirs(serve_server, src.sandbox_id)) == 1
    assert by_name.files.read("/home/user/project/a.txt") == "from the source"
    assert by_name.kill() is True
    wait_gone(serve_server, src.sandbox_id)


def test_sandbox_from_a_filesystem_snapshot_boots_fresh(make, snapshots):
    src = make()
    src.files.write("/home/user/kept.txt", "kept")
    start_sleeper(src, 4202)
    snap = src.create_snapshot(mode="filesystem")
    snapshots.append(snap.snapshot_id)
    copy = make(template=snap.snapshot_id)
    assert copy.files.read("/home/user/kept.txt") == "kept"
    assert sleepers(copy, 4202) == []


def test_list_snapshots_by_sandbox_and_name_in_pages(serve_server, make, snapshots):
    src = make()
    other = make()
    taken = []
    for i in range(3):
        src.files.write("/home/user/n.txt", str(i))
        taken.append(src.create_snapshot().snapshot_id)
    snapshots.extend(taken)
    name = f"snap-{uuid.uuid4().hex[:12]}"
    other.files.write("/home/user/v.txt", "v1")
    named = other.create_snapshot(name=name)
    snapshots.append(named.snapshot_id)

    ids, pages = all_snapshots(sandbox_id=src.sandbox_id, limit=2)
    assert sorted(ids) == sorted(taken) and pages == 2
    ids, pages = all_snapshots(sandbox_id=src.sandbox_id, limit=1)
    assert sorted(ids) == sorted(taken) and pages == 3
    ids, _ = all_snapshots(limit=2)
    assert set(taken) | {named.snapshot_id} <= set(ids)
    assert all_snapshots(name=name)[0] == [named.snapshot_id]
    assert all_snapshots(name="no-such-snapshot")[0] == []

    # A snapshot under an existing name is a new build of the same snapshot.
    other.files.write("/home/user/v.txt", "v2")
    again = other.create_snapshot(name=name)
    assert again.snapshot_id == named.snapshot_id and again.names == [name]
    assert all_snapshots(name=name)[0] == [named.snapshot_id]
    copy = make(template=name)
    assert copy.files.read("/home/user/v.txt") == "v2"

    # Each of them starts sandboxes with the files as they were when it was taken.
    first = make(template=taken[0])
    assert first.files.read("/home/user/n.txt") == "0"

    for snapshot_id in taken:
        assert Sandbox.delete_snapshot(snapshot_id) is True
    assert all_snapshots(sandbox_id=src.sandbox_id)[0] == []
    assert first.files.read("/home/user/n.txt") == "0"


def test_snapshot_of_a_missing_sandbox_is_not_found(make):
    sandbox = make()
    sandbox.kill()
    with pytest.raises(NotFoundException):
        Sandbox.create_snapshot(sandbox.sandbox_id)


# --- forks -----------------------------------------------------------------------------


def test_fork_makes_independent_copies(serve_server, make):
    tag = uuid.uuid4().hex
    src = make(metadata={"suite": tag})
    files = {"/home/user/work/state.txt": "before the fork", "/tmp/scratch": "tmp"}
    write_files(src, files)
    pid = start_sleeper(src, 4203)
    end = src.get_info().end_at

    forks = src.fork(count=2, timeout=120)
    assert len(forks) == 2, forks
    for f in forks:
        assert isinstance(f, Sandbox), f
        make.track(f.sandbox_id)
    ids = {f.sandbox_id for f in forks}
    assert len(ids) == 2 and src.sandbox_id not in ids

    # The source was checkpointed in place: same id, lifetime and processes.
    info = src.get_info()
    assert info.state == SandboxState.RUNNING and info.end_at == end
    assert sleepers(src, 4203) == [pid]
    for f in forks:
        info = f.get_info()
        assert info.state == SandboxState.RUNNING
        assert_files(f, files)
        assert sleepers(f, 4203) == ([pid] if MICROVM else [])
        assert f.commands.run("echo $E2B_SANDBOX_ID").stdout == f"{f.sandbox_id}\n"

    forks[0].files.write("/home/user/work/state.txt", "first fork")
    forks[1].commands.run("rm /tmp/scratch")
    src.files.write("/home/user/work/late.txt", "source after the fork")
    assert_files(
        forks[0],
        {"/home/user/work/state.txt": "first fork", "/tmp/scratch": "tmp", "/home/user/work/late.txt": None},
    )
    assert_files(
        forks[1],
        {"/home/user/work/state.txt": "before the fork", "/tmp/scratch": None, "/home/user/work/late.txt": None},
    )
    assert_files(
        src,
        {"/home/user/work/state.txt": "before the fork", "/tmp/scratch": "tmp", "/home/user/work/late.txt": "source after the fork"},
    )
    # A fork is a sandbox like any other: it pauses and resumes with its files.
    assert forks[0].pause(mode="filesystem") is True
    Sandbox.connect(forks[0].sandbox_id)
    assert forks[0].files.read("/home/user/work/state.txt") == "first fork"

    # A fork's snapshot is no template: it is not listed, and its files go with the
    # last of the sandboxes (the forks) that use them.
    assert all_snapshots(sandbox_id=src.sandbox_id)[0] == []
    assert len(snapshot_dirs(serve_server, src.sandbox_id)) == 1
    assert src.kill() is True
    assert forks[0].kill() is True
    time.sleep(0.5)
    assert len(snapshot_dirs(serve_server, src.sandbox_id)) == 1
    assert forks[1].files.read("/home/user/work/state.txt") == "before the fork"
    assert forks[1].kill() is True
    wait_gone(serve_server, src.sandbox_id)


def test_fork_of_a_killed_sandbox_is_not_found(make):
    sandbox = make()
    assert sandbox.kill() is True
    with pytest.raises(NotFoundException):
        Sandbox.fork(sandbox.sandbox_id, count=1)
    with pytest.raises(NotFoundException):
        sandbox.fork(count=2)


def test_fork_count_out_of_range_is_refused(serve_server, make):
    tag = uuid.uuid4().hex
    src = make(metadata={"suite": tag})
    # The SDK refuses counts outside 1-20 itself...
    for bad in (0, -1, 21):
        with pytest.raises(InvalidArgumentException):
            src.fork(count=bad)
    # ...and the API outside 1-100, in its error shape.
    with serve_server.api() as api:
        for bad in (0, -3, 101, 1000):
            r = api.post(f"/sandboxes/{src.sandbox_id}/fork", json={"count": bad})
            assert r.status_code == 400, (bad, r.status_code, r.text)
            body = r.json()
            assert body["code"] == 400 and "count" in body["message"], body
    # Nothing was created by any of it.
    listed = Sandbox.list(query=SandboxQuery(metadata={"suite": tag})).next_items()
    assert [s.sandbox_id for s in listed] == [src.sandbox_id]
    assert snapshot_dirs(serve_server, src.sandbox_id) == []
    assert src.commands.run("echo fine").stdout == "fine\n"
