# SPDX-License-Identifier: Apache-2.0
"""Bad input over raw HTTP: every request gets the protocol's own error shape, and
envd keeps serving other clients afterwards (the `serving` fixture checks that after
each test)."""

from __future__ import annotations

import http.client
import json
import select
import socket
import time
import urllib.parse

import httpx
import pytest
from e2b import NotEnoughSpaceException, Sandbox
from hearth_compat.connect import (
    assert_stream_error,
    assert_unary_error,
    envelope,
    stream_headers,
    unary_headers,
)

pytestmark = pytest.mark.usefixtures("serving")

START = "/process.Process/Start"
STAT = "/filesystem.Filesystem/Stat"
START_MSG = {"process": {"cmd": "/bin/true"}, "stdin": False}


def _post_stream(raw: httpx.Client, path: str, body: bytes, **headers) -> httpx.Response:
    return raw.post(path, content=body, headers=stream_headers(headers))


# --- malformed Connect frames --------------------------------------------------------


def test_stream_envelope_with_invalid_json(raw: httpx.Client):
    r = _post_stream(raw, START, envelope(b"{not json"))
    assert_stream_error(r, "invalid_argument")


def test_stream_envelope_with_wrong_message_shape(raw: httpx.Client):
    r = _post_stream(raw, START, envelope({"process": "should be an object"}))
    assert_stream_error(r, "invalid_argument")


def test_stream_envelope_claiming_compression_that_was_not_negotiated(raw: httpx.Client):
    r = _post_stream(raw, START, envelope(START_MSG, flags=0x01))
    assert_stream_error(r, {"invalid_argument", "internal"})


def test_truncated_envelope_payload(raw: httpx.Client):
    frame = envelope(START_MSG)
    r = _post_stream(raw, START, frame[:-7])
    assert_stream_error(r, {"invalid_argument", "internal"})


def test_truncated_envelope_header(raw: httpx.Client):
    r = _post_stream(raw, START, b"\x00\x00\x00")
    assert_stream_error(r, {"invalid_argument", "internal"})


def test_empty_stream_request_body(raw: httpx.Client):
    # A server-streaming call without its one request message is a cardinality
    # violation, which Connect (like gRPC) reports as unimplemented.
    r = _post_stream(raw, START, b"")
    assert_stream_error(r, {"unimplemented", "invalid_argument"})


def test_envelope_length_beyond_the_limit(raw: httpx.Client):
    # Claims 1 GiB; envd must refuse without waiting for (or allocating) it.
    r = _post_stream(raw, START, b"\x00\x40\x00\x00\x00" + b"{}")
    assert_stream_error(r, {"resource_exhausted", "invalid_argument", "internal"})


def test_unary_invalid_json(raw: httpx.Client):
    r = raw.post(STAT, content=b"{oops", headers=unary_headers())
    assert_unary_error(r, "invalid_argument")


def test_unknown_rpc_method(raw: httpx.Client):
    r = raw.post("/filesystem.Filesystem/Nope", content=b"{}", headers=unary_headers())
    assert r.status_code == 404


# --- wrong content types ---------------------------------------------------------------


def test_unary_with_unsupported_content_type_is_415(raw: httpx.Client):
    r = raw.post(
        STAT,
        content=json.dumps({"path": "/"}),
        headers={"Content-Type": "text/plain", "Connect-Protocol-Version": "1"},
    )
    assert r.status_code == 415


def test_streaming_rpc_called_with_unary_content_type_is_415(raw: httpx.Client):
    r = raw.post(START, content=json.dumps(START_MSG), headers=unary_headers())
    assert r.status_code == 415


def test_files_upload_with_unsupported_content_type(raw: httpx.Client):
    r = raw.post(
        "/files",
        params={"path": "/tmp/ct.txt"},
        content=b"hello",
        headers={"Content-Type": "text/plain"},
    )
    assert r.status_code == 400
    body = r.json()
    assert body["code"] == 400 and isinstance(body["message"], str)


def test_multipart_without_boundary(raw: httpx.Client):
    r = raw.post(
        "/files",
        params={"path": "/tmp/mp.txt"},
        content=b"--x\r\n",
        headers={"Content-Type": "multipart/form-data"},
    )
    assert r.status_code == 400
    assert r.json()["code"] == 400


# --- huge bodies -----------------------------------------------------------------------


def _send_huge_body(url: str, path: str, headers: dict[str, str], total: int):
    """Sends a request announcing `total` body bytes, streaming zeros until envd
    answers (or closes), and returns (status, body) of its response."""
    parsed = urllib.parse.urlparse(url)
    sock = socket.create_connection((parsed.hostname, parsed.port), timeout=30)
    head = f"POST {path} HTTP/1.1\r\nHost: {parsed.netloc}\r\nContent-Length: {total}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sock.sendall(head.encode())
    chunk = b"0" * (1 << 20)
    sent = 0
    try:
        try:
            while sent < total:
                # Stop sending as soon as envd has answered.
                readable, _, _ = select.select([sock], [], [], 0)
                if readable:
                    break
                sock.sendall(chunk[: min(len(chunk), total - sent)])
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # envd stopped reading; its answer is still in our receive buffer
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, response.read()
    finally:
        sock.close()


def test_100_mb_unary_body_is_refused_as_resource_exhausted(backend):
    status, body = _send_huge_body(
        backend.envd_url,
        STAT,
        {**backend.envd_headers(), **unary_headers()},
        100 * 1024 * 1024,
    )
    assert status == 429, body[:500]
    assert json.loads(body)["code"] == "resource_exhausted"


def test_slow_client_does_not_block_others(backend, sandbox: Sandbox):
    parsed = urllib.parse.urlparse(backend.envd_url)
    stuck = socket.create_connection((parsed.hostname, parsed.port))
    try:
        stuck.sendall(b"POST /filesystem.Filesystem/Stat HTTP/1.1\r\nHost: x\r\nContent-Le")
        started = time.monotonic()
        assert sandbox.commands.run("echo ok").stdout == "ok\n"
        assert sandbox.files.exists("/etc")
        assert time.monotonic() - started < 10
    finally:
        stuck.close()


# --- paths -----------------------------------------------------------------------------


def test_dot_dot_segments_resolve_lexically(raw: httpx.Client):
    r = raw.post(STAT, json={"path": "/home/user/../../etc/./hostname"}, headers=unary_headers())
    assert r.status_code == 200, r.text
    assert r.json()["entry"]["path"] == "/etc/hostname"


def test_dot_dot_cannot_climb_above_root(raw: httpx.Client):
    r = raw.post(STAT, json={"path": "../../../../../../etc"}, headers=unary_headers())
    assert r.status_code == 200, r.text
    assert r.json()["entry"]["path"] == "/etc"


def test_nul_in_rpc_path_is_invalid_argument(raw: httpx.Client):
    r = raw.post(STAT, json={"path": "/etc/host\u0000name"}, headers=unary_headers())
    assert_unary_error(r, "invalid_argument")


def test_nul_in_files_path_is_400(raw: httpx.Client):
    r = raw.get("/files", params={"path": "/etc/host\x00name"})
    assert r.status_code == 400
    assert r.json()["code"] == 400
    r = raw.post(
        "/files",
        params={"path": "/tmp/a\x00b"},
        content=b"x",
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 400
    assert r.json()["code"] == 400


def test_nul_in_command_argument_is_invalid_argument(raw: httpx.Client):
    msg = {"process": {"cmd": "/bin/echo", "args": ["a\u0000b"]}, "stdin": False}
    r = _post_stream(raw, START, envelope(msg))
    assert_stream_error(r, "invalid_argument")


def test_files_read_of_a_directory_is_400(raw: httpx.Client):
    r = raw.get("/files", params={"path": "/etc"})
    assert r.status_code == 400
    assert r.json()["code"] == 400


# --- unknown users ---------------------------------------------------------------------


def test_rpc_as_unknown_user_is_unauthenticated(backend, raw: httpx.Client):
    r = raw.post(
        STAT,
        json={"path": "/"},
        headers={**unary_headers(), **backend.envd_headers(user="ghost")},
    )
    assert_unary_error(r, "unauthenticated")


def test_stream_as_unknown_user_is_unauthenticated(backend, raw: httpx.Client):
    r = raw.post(
        START,
        content=envelope(START_MSG),
        headers={**stream_headers(), **backend.envd_headers(user="ghost")},
    )
    if r.status_code == 200:
        assert_stream_error(r, "unauthenticated")
    else:
        assert_unary_error(r, "unauthenticated")


def test_malformed_basic_auth_is_unauthenticated(raw: httpx.Client):
    r = raw.post(
        STAT,
        json={"path": "/"},
        headers={**unary_headers(), "Authorization": "Basic !!!not-base64"},
    )
    assert_unary_error(r, "unauthenticated")


def test_files_as_unknown_user_is_401(raw: httpx.Client):
    r = raw.get("/files", params={"path": "/etc/hostname", "username": "ghost"})
    assert r.status_code == 401
    assert r.json()["code"] == 401


def test_sdk_command_as_unknown_user_fails(sandbox: Sandbox):
    with pytest.raises(Exception):
        sandbox.commands.run("true", user="ghost")  # type: ignore[arg-type]


# --- unknown pids and watcher ids --------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "body"),
    [
        ("SendSignal", {"process": {"pid": 999999}, "signal": "SIGNAL_SIGKILL"}),
        ("SendInput", {"process": {"pid": 999999}, "input": {"stdin": "aGk="}}),
        ("CloseStdin", {"process": {"pid": 999999}}),
        ("Update", {"process": {"pid": 999999}, "pty": {"size": {"cols": 10, "rows": 10}}}),
        ("SendSignal", {"process": {"tag": "no-such-tag"}, "signal": "SIGNAL_SIGTERM"}),
    ],
)
def test_unary_process_calls_on_unknown_pid_are_not_found(raw: httpx.Client, method, body):
    r = raw.post(f"/process.Process/{method}", json=body, headers=unary_headers())
    assert_unary_error(r, "not_found")


def test_connect_to_unknown_pid_is_not_found(raw: httpx.Client):
    r = _post_stream(raw, "/process.Process/Connect", envelope({"process": {"pid": 999999}}))
    assert_stream_error(r, "not_found")


def test_stream_input_to_unknown_pid_is_not_found(raw: httpx.Client):
    body = envelope({"start": {"process": {"pid": 999999}}}) + envelope(
        {"data": {"input": {"stdin": "aGk="}}}
    )
    r = _post_stream(raw, "/process.Process/StreamInput", body)
    assert_stream_error(r, "not_found")


@pytest.mark.parametrize("method", ["GetWatcherEvents", "RemoveWatcher"])
def test_unknown_watcher_id_is_not_found(raw: httpx.Client, method: str):
    r = raw.post(
        f"/filesystem.Filesystem/{method}", json={"watcherId": "no-such-watcher"},
        headers=unary_headers(),
    )
    assert_unary_error(r, "not_found")


def test_sdk_kill_of_unknown_pid_is_false(sandbox: Sandbox):
    assert sandbox.commands.kill(999999) is False


# --- full disk -------------------------------------------------------------------------


@pytest.mark.envd_only
def test_full_disk_is_not_enough_space(backend, sandbox: Sandbox, raw: httpx.Client, name: str):
    backend.mount_tmpfs(f"/mnt/{name}", "1m")
    with pytest.raises(NotEnoughSpaceException):
        sandbox.files.write(f"/mnt/{name}/big.bin", b"\xab" * (3 << 20))
    r = raw.post(
        "/files",
        params={"path": f"/mnt/{name}/big2.bin"},
        content=b"\xcd" * (3 << 20),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 507
    assert r.json()["code"] == 507
    # Small files still fit once the space is freed again.
    sandbox.commands.run(f"rm -f /mnt/{name}/big.bin /mnt/{name}/big2.bin")
    sandbox.files.write(f"/mnt/{name}/small.txt", "fits")
    assert sandbox.files.read(f"/mnt/{name}/small.txt") == "fits"
