# SPDX-License-Identifier: Apache-2.0
"""files.watch_dir: the event sequence for a new file, names, recursion, stop, and
errors, through the unmodified Python SDK (which polls CreateWatcher /
GetWatcherEvents / RemoveWatcher)."""

from __future__ import annotations

import time

import pytest
from e2b import FilesystemEventType, NotFoundException, Sandbox, SandboxException


def _events_until(handle, count: int, timeout: float = 5.0, settle: float = 0.3):
    """Polls until at least `count` events arrived, then once more after `settle`
    seconds so that extra events would be seen too."""
    events = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(events) < count:
        events += handle.get_new_events()
        if len(events) < count:
            time.sleep(0.05)
    time.sleep(settle)
    events += handle.get_new_events()
    return events


def test_writing_a_new_file_gives_exactly_create_chmod_write(sandbox: Sandbox, name: str):
    sandbox.files.make_dir(name)
    handle = sandbox.files.watch_dir(name)
    sandbox.files.write(f"{name}/watched.txt", "This file will be watched.")
    events = _events_until(handle, 3)
    assert [(e.type, e.name) for e in events] == [
        (FilesystemEventType.CREATE, "watched.txt"),
        (FilesystemEventType.CHMOD, "watched.txt"),
        (FilesystemEventType.WRITE, "watched.txt"),
    ]
    handle.stop()


def test_events_are_cleared_once_read(sandbox: Sandbox, name: str):
    sandbox.files.make_dir(name)
    handle = sandbox.files.watch_dir(name)
    sandbox.files.write(f"{name}/a.txt", "1")
    _events_until(handle, 3)
    assert handle.get_new_events() == []
    sandbox.files.write(f"{name}/a.txt", "2")
    events = _events_until(handle, 1)
    assert any(e.type == FilesystemEventType.WRITE and e.name == "a.txt" for e in events)
    handle.stop()


def test_remove_and_rename_events(sandbox: Sandbox, name: str):
    sandbox.files.make_dir(name)
    sandbox.files.write(f"{name}/old.txt", "x")
    handle = sandbox.files.watch_dir(name)
    sandbox.files.rename(f"{name}/old.txt", f"{name}/new.txt")
    sandbox.files.remove(f"{name}/new.txt")
    events = _events_until(handle, 3)
    kinds = [(e.type, e.name) for e in events]
    assert (FilesystemEventType.RENAME, "old.txt") in kinds, kinds
    assert (FilesystemEventType.REMOVE, "new.txt") in kinds, kinds
    handle.stop()


def test_recursive_watch_names_are_relative_to_the_watched_dir(sandbox: Sandbox, name: str):
    sandbox.files.make_dir(f"{name}/nested")
    handle = sandbox.files.watch_dir(name, recursive=True)
    sandbox.files.write(f"{name}/nested/deep.txt", "x")
    events = _events_until(handle, 3)
    assert [(e.type, e.name) for e in events] == [
        (FilesystemEventType.CREATE, "nested/deep.txt"),
        (FilesystemEventType.CHMOD, "nested/deep.txt"),
        (FilesystemEventType.WRITE, "nested/deep.txt"),
    ]
    handle.stop()


def test_recursive_watch_follows_directories_created_later(sandbox: Sandbox, name: str):
    sandbox.files.make_dir(name)
    handle = sandbox.files.watch_dir(name, recursive=True)
    sandbox.files.make_dir(f"{name}/later")
    # Give the watcher a moment to add the new directory.
    time.sleep(0.2)
    sandbox.files.write(f"{name}/later/file.txt", "x")
    events = _events_until(handle, 4)
    assert (FilesystemEventType.CREATE, "later") in [(e.type, e.name) for e in events]
    assert any(
        e.type == FilesystemEventType.WRITE and e.name == "later/file.txt" for e in events
    ), events
    handle.stop()


def test_non_recursive_watch_ignores_subdirectories(sandbox: Sandbox, name: str):
    sandbox.files.make_dir(f"{name}/sub")
    handle = sandbox.files.watch_dir(name)
    sandbox.files.write(f"{name}/sub/file.txt", "x")
    events = _events_until(handle, 1, timeout=1.0)
    assert all("/" not in e.name for e in events), events
    handle.stop()


def test_include_entry_carries_entry_info(sandbox: Sandbox, name: str):
    sandbox.files.make_dir(name)
    handle = sandbox.files.watch_dir(name, include_entry=True)
    sandbox.files.write(f"{name}/e.txt", "12345")
    events = _events_until(handle, 3)
    writes = [e for e in events if e.type == FilesystemEventType.WRITE]
    assert writes and writes[-1].entry is not None
    assert writes[-1].entry.path == f"/home/user/{name}/e.txt"
    handle.stop()


def test_stopped_watcher_cannot_be_polled(sandbox: Sandbox, name: str):
    sandbox.files.make_dir(name)
    handle = sandbox.files.watch_dir(name)
    handle.stop()
    with pytest.raises(SandboxException):
        handle.get_new_events()


def test_watch_missing_directory_is_not_found(sandbox: Sandbox, name: str):
    with pytest.raises(NotFoundException):
        sandbox.files.watch_dir(f"{name}-missing")


def test_watch_a_file_is_an_error(sandbox: Sandbox, name: str):
    sandbox.files.write(f"{name}.txt", "x")
    with pytest.raises(SandboxException):
        sandbox.files.watch_dir(f"{name}.txt")


def test_watch_dir_stream_starts_then_streams_events_and_keepalives(
    sandbox: Sandbox, raw, name: str
):
    """The server-streaming WatchDir the JS SDK uses: `start` first, then events with
    names relative to the watched directory, keepalives when idle."""
    import json
    import struct
    import threading

    from hearth_compat.connect import envelope, stream_headers

    sandbox.files.make_dir(f"{name}/sub")
    frames: list[dict] = []
    body = envelope({"path": f"/home/user/{name}", "recursive": True})
    headers = stream_headers({"Keepalive-Ping-Interval": "1", "Connect-Timeout-Ms": "20000"})
    with raw.stream("POST", "/filesystem.Filesystem/WatchDir", content=body, headers=headers) as r:
        assert r.status_code == 200
        buf = b""
        wrote = False
        deadline = time.monotonic() + 15
        for chunk in r.iter_raw():
            buf += chunk
            while len(buf) >= 5:
                flags, length = struct.unpack(">BI", buf[:5])
                if len(buf) < 5 + length:
                    break
                frame = json.loads(buf[5 : 5 + length])
                buf = buf[5 + length :]
                assert not flags & 0x02, f"stream ended early: {frame}"
                frames.append(frame)
            if frames and not wrote:
                threading.Thread(
                    target=lambda: sandbox.files.write(f"{name}/sub/s.txt", "x"), daemon=True
                ).start()
                wrote = True
            names = [f.get("filesystem", {}).get("name") for f in frames]
            if "sub/s.txt" in names and frames[-1].get("keepalive") is not None:
                break
            assert time.monotonic() < deadline, frames
    assert frames[0] == {"start": {}}
    events = [f["filesystem"] for f in frames if "filesystem" in f]
    assert any(e["name"] == "sub/s.txt" and e["type"] == "EVENT_TYPE_CREATE" for e in events)
    assert any(e["name"] == "sub/s.txt" and e["type"] == "EVENT_TYPE_WRITE" for e in events)
    assert any("keepalive" in f for f in frames)
