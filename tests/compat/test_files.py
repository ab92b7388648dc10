# SPDX-License-Identifier: Apache-2.0
"""files.*: read/write in every format, batches, metadata, list depth and order,
info, exists, make_dir, rename and remove, through the unmodified Python SDK."""

from __future__ import annotations

import gzip as gzip_mod
import io
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from e2b import (
    FileNotFoundException,
    FileType,
    NotFoundException,
    Sandbox,
    SandboxException,
)
from e2b.sandbox.filesystem.filesystem import WriteEntry


def test_text_round_trip_and_overwrite(sandbox: Sandbox, name: str):
    info = sandbox.files.write(f"{name}.txt", "héllo wörld\n")
    assert info.path == f"/home/user/{name}.txt"
    assert info.name == f"{name}.txt"
    assert info.type == FileType.FILE
    assert sandbox.files.read(f"{name}.txt") == "héllo wörld\n"
    sandbox.files.write(f"{name}.txt", "short")
    assert sandbox.files.read(f"/home/user/{name}.txt") == "short"


def test_bytes_round_trip(sandbox: Sandbox, name: str):
    data = bytes(range(256)) * 1000
    sandbox.files.write(f"/tmp/{name}.bin", data)
    got = sandbox.files.read(f"/tmp/{name}.bin", format="bytes")
    assert isinstance(got, bytearray)
    assert bytes(got) == data


def test_empty_file(sandbox: Sandbox, name: str):
    sandbox.files.write(f"/tmp/{name}", b"")
    assert sandbox.files.read(f"/tmp/{name}") == ""
    assert sandbox.files.get_info(f"/tmp/{name}").size == 0


def test_stream_write_and_stream_read(sandbox: Sandbox, name: str):
    chunks = [bytes([i]) * 65536 for i in range(40)]  # 2.5 MiB, streamed
    sandbox.files.write(f"/tmp/{name}", iter(chunks))
    with sandbox.files.read(f"/tmp/{name}", format="stream") as reader:
        got = b"".join(reader)
    assert got == b"".join(chunks)


def test_file_object_upload(sandbox: Sandbox, name: str):
    sandbox.files.write(f"/tmp/{name}", io.BytesIO(b"from a file object"))
    assert sandbox.files.read(f"/tmp/{name}") == "from a file object"


def test_gzip_upload_and_download(sandbox: Sandbox, name: str):
    text = "compress me " * 10000
    sandbox.files.write(f"/tmp/{name}", text, gzip=True)
    assert sandbox.files.read(f"/tmp/{name}") == text
    assert sandbox.files.read(f"/tmp/{name}", gzip=True) == text


def test_gzip_download_is_gzip_on_the_wire(sandbox: Sandbox, raw: httpx.Client, name: str):
    sandbox.files.write(f"/tmp/{name}", "zipped " * 1000)
    with raw.stream(
        "GET", "/files", params={"path": f"/tmp/{name}"}, headers={"Accept-Encoding": "gzip"}
    ) as r:
        assert r.status_code == 200
        assert r.headers.get("content-encoding") == "gzip"
        body = b"".join(r.iter_raw())
    assert body[:2] == b"\x1f\x8b"
    assert gzip_mod.decompress(body) == b"zipped " * 1000


def test_range_download(sandbox: Sandbox, raw: httpx.Client, name: str):
    sandbox.files.write(f"/tmp/{name}", "0123456789")
    r = raw.get("/files", params={"path": f"/tmp/{name}"}, headers={"Range": "bytes=2-5"})
    assert r.status_code == 206
    assert r.content == b"2345"


def test_write_creates_parent_directories(sandbox: Sandbox, name: str):
    sandbox.files.write(f"{name}/a/b/c.txt", "deep")
    assert sandbox.files.read(f"{name}/a/b/c.txt") == "deep"
    assert sandbox.files.get_info(f"{name}/a").type == FileType.DIR
    assert sandbox.files.get_info(f"{name}/a").owner == "user"


def test_write_files_batch(sandbox: Sandbox, name: str):
    entries = [
        WriteEntry(path=f"/tmp/{name}/one.txt", data="1"),
        WriteEntry(path=f"/tmp/{name}/sub/two.bin", data=b"\x00\x02"),
        WriteEntry(path=f"{name}/three.txt", data="3"),
    ]
    infos = sandbox.files.write_files(entries)
    assert [i.path for i in infos] == [
        f"/tmp/{name}/one.txt",
        f"/tmp/{name}/sub/two.bin",
        f"/home/user/{name}/three.txt",
    ]
    assert sandbox.files.read(f"/tmp/{name}/one.txt") == "1"
    assert bytes(sandbox.files.read(f"/tmp/{name}/sub/two.bin", format="bytes")) == b"\x00\x02"
    assert sandbox.files.read(f"{name}/three.txt") == "3"


def test_metadata_is_stored_and_listed(sandbox: Sandbox, name: str):
    info = sandbox.files.write(
        f"/tmp/{name}.txt", "m", metadata={"Owner-Team": "infra", "kind": "report"}
    )
    assert info.metadata == {"owner-team": "infra", "kind": "report"}
    stat = sandbox.files.get_info(f"/tmp/{name}.txt")
    assert stat.metadata == {"owner-team": "infra", "kind": "report"}
    # Each upload replaces the file's metadata set.
    sandbox.files.write(f"/tmp/{name}.txt", "m2", metadata={"kind": "draft"})
    assert sandbox.files.get_info(f"/tmp/{name}.txt").metadata == {"kind": "draft"}


def test_read_missing_file_is_file_not_found(sandbox: Sandbox, name: str):
    with pytest.raises(FileNotFoundException):
        sandbox.files.read(f"/tmp/{name}-missing")


def test_read_directory_is_an_error(sandbox: Sandbox):
    with pytest.raises(SandboxException):
        sandbox.files.read("/tmp")


def test_list_depth_one_to_three_lists_parents_before_children(sandbox: Sandbox, name: str):
    for d in ["sub1/sub1_1", "sub1/sub1_2", "sub2/sub2_1/deep"]:
        sandbox.files.make_dir(f"{name}/{d}")
    sandbox.files.write(f"{name}/file1.txt", "x")
    base = f"/home/user/{name}"

    one = sandbox.files.list(name)
    assert [e.name for e in one] == ["file1.txt", "sub1", "sub2"]
    assert [e.type for e in one] == [FileType.FILE, FileType.DIR, FileType.DIR]
    assert [e.path for e in one] == [f"{base}/file1.txt", f"{base}/sub1", f"{base}/sub2"]

    two = sandbox.files.list(name, depth=2)
    assert [e.path.removeprefix(base + "/") for e in two] == [
        "file1.txt",
        "sub1",
        "sub1/sub1_1",
        "sub1/sub1_2",
        "sub2",
        "sub2/sub2_1",
    ]
    three = sandbox.files.list(name, depth=3)
    assert [e.path.removeprefix(base + "/") for e in three] == [
        "file1.txt",
        "sub1",
        "sub1/sub1_1",
        "sub1/sub1_2",
        "sub2",
        "sub2/sub2_1",
        "sub2/sub2_1/deep",
    ]


def test_list_missing_dir_and_file_errors(sandbox: Sandbox, name: str):
    with pytest.raises(NotFoundException):
        sandbox.files.list(f"{name}-nope")
    sandbox.files.write(f"{name}.txt", "x")
    with pytest.raises(SandboxException):
        sandbox.files.list(f"{name}.txt")


def test_entry_info_details(sandbox: Sandbox, name: str):
    before = datetime.now(timezone.utc) - timedelta(seconds=5)
    sandbox.files.write(f"{name}/f.txt", "Hello, World!")
    f = sandbox.files.get_info(f"{name}/f.txt")
    assert f.name == "f.txt"
    assert f.path == f"/home/user/{name}/f.txt"
    assert f.type == FileType.FILE
    assert f.size == 13
    assert f.mode == 0o644
    assert f.permissions == "-rw-r--r--"
    assert (f.owner, f.group) == ("user", "user")
    assert f.modified_time >= before
    assert f.symlink_target is None

    d = sandbox.files.get_info(name)
    assert d.type == FileType.DIR
    assert d.mode & 0o777 == 0o755
    assert d.permissions == "drwxr-xr-x"


def test_symlink_entry(sandbox: Sandbox, name: str):
    sandbox.files.write(f"/tmp/{name}-target", "t")
    sandbox.commands.run(f"ln -s /tmp/{name}-target /tmp/{name}-link")
    entries = {e.name: e for e in sandbox.files.list("/tmp")}
    link = entries[f"{name}-link"]
    assert link.symlink_target == f"/tmp/{name}-target"


def test_exists(sandbox: Sandbox, name: str):
    assert sandbox.files.exists(f"{name}.txt") is False
    sandbox.files.write(f"{name}.txt", "x")
    assert sandbox.files.exists(f"{name}.txt") is True
    assert sandbox.files.exists("/etc") is True


def test_make_dir_twice(sandbox: Sandbox, name: str):
    assert sandbox.files.make_dir(f"{name}/a/b") is True
    assert sandbox.files.make_dir(f"{name}/a/b") is False
    info = sandbox.files.get_info(f"{name}/a/b")
    assert info.type == FileType.DIR
    assert info.owner == "user"


def test_make_dir_over_a_file_is_an_error(sandbox: Sandbox, name: str):
    sandbox.files.write(f"{name}.txt", "x")
    with pytest.raises(SandboxException):
        sandbox.files.make_dir(f"{name}.txt")


def test_rename_file_and_directory(sandbox: Sandbox, name: str):
    sandbox.files.write(f"{name}/old.txt", "moving")
    moved = sandbox.files.rename(f"{name}/old.txt", f"{name}/new.txt")
    assert moved.path == f"/home/user/{name}/new.txt"
    assert moved.name == "new.txt"
    assert sandbox.files.exists(f"{name}/old.txt") is False
    assert sandbox.files.read(f"{name}/new.txt") == "moving"
    sandbox.files.rename(name, f"{name}-dir")
    assert sandbox.files.read(f"{name}-dir/new.txt") == "moving"


def test_rename_missing_source_is_not_found(sandbox: Sandbox, name: str):
    with pytest.raises(NotFoundException):
        sandbox.files.rename(f"{name}-nope", f"{name}-other")


def test_remove_file_and_tree(sandbox: Sandbox, name: str):
    sandbox.files.write(f"{name}/x/y/z.txt", "z")
    sandbox.files.write(f"{name}.txt", "f")
    sandbox.files.remove(f"{name}.txt")
    assert sandbox.files.exists(f"{name}.txt") is False
    sandbox.files.remove(name)
    assert sandbox.files.exists(name) is False


def test_home_relative_and_tilde_paths_resolve_to_the_users_home(sandbox: Sandbox, name: str):
    sandbox.files.write(f"~/{name}.txt", "tilde")
    assert sandbox.files.read(f"/home/user/{name}.txt") == "tilde"
    assert sandbox.files.read(f"{name}.txt") == "tilde"
    root_info = sandbox.files.write(f"~/{name}.txt", "root's", user="root")
    assert root_info.path == f"/root/{name}.txt"
