# SPDX-License-Identifier: Apache-2.0
"""Access token and signed file URLs (§2.7): once /init sets a token, every request
needs it, except /files which also accepts a valid, unexpired signature.

In envd mode this module sets a token on its sandbox through /init, so it runs on a
sandbox of its own; in serve mode the sandbox already has the token `hearth serve`
gave it (the SDK's default `secure=True`), and requests go through the proxy."""

from __future__ import annotations

import base64
import hashlib
import time

import httpx
import pytest
from hearth_compat.connect import unary_headers

TOKEN = "tok-hearth-compat-123"


def sign(path: str, op: str, user: str, token: str, exp: int | None = None) -> str:
    raw = f"{path}:{op}:{user}:{token}" + (f":{exp}" if exp is not None else "")
    digest = hashlib.sha256(raw.encode()).digest()
    return "v1_" + base64.b64encode(digest).decode().rstrip("=")


def test_signature_matches_the_protocol_test_vector():
    assert sign("/home/user/a.txt", "read", "", "tok123", 1795901286) == (
        "v1_gEJ2im0sPSRRrh1Ew62eIQRAkuE34/txANT7qeQ4VWk"
    )
    assert sign("/home/user/a.txt", "read", "", "tok123") == (
        "v1_byj2OB/vujgbES/1KAKCaR27E+9eOrB6PzeTnIL8L6M"
    )


@pytest.fixture(scope="module")
def token(backend) -> str:
    """The module's envd access token: set through /init in envd mode, the one
    `hearth serve` provisioned in serve mode."""
    if backend.mode == "envd":
        r = httpx.post(f"{backend.envd_url}/init", json={"accessToken": TOKEN}, timeout=10)
        assert r.status_code == 204, r.text
        backend.access_token = TOKEN
    assert backend.access_token, "the sandbox has no access token"
    return backend.access_token


@pytest.fixture
def anon(backend, token):
    """A client that reaches the sandbox's envd without credentials."""
    with httpx.Client(
        base_url=backend.envd_url, headers=backend.routing_headers(), timeout=30
    ) as client:
        yield client


def test_rpc_without_token_is_401_json(anon: httpx.Client):
    r = anon.post("/filesystem.Filesystem/Stat", json={"path": "/"}, headers=unary_headers())
    assert r.status_code == 401
    assert r.json()["code"] == 401


def test_rpc_with_wrong_token_is_401(anon: httpx.Client):
    r = anon.post(
        "/filesystem.Filesystem/Stat",
        json={"path": "/"},
        headers={**unary_headers(), "X-Access-Token": "wrong"},
    )
    assert r.status_code == 401


def test_rpc_with_token_works(anon: httpx.Client, token: str):
    r = anon.post(
        "/filesystem.Filesystem/Stat",
        json={"path": "/"},
        headers={**unary_headers(), "X-Access-Token": token},
    )
    assert r.status_code == 200, r.text


def test_health_needs_no_token(anon: httpx.Client):
    assert anon.get("/health").status_code == 204


def test_files_without_token_or_signature_is_401(anon: httpx.Client):
    r = anon.get("/files", params={"path": "/etc/hostname"})
    assert r.status_code == 401
    assert r.json()["code"] == 401


def test_files_with_bad_signature_is_401(anon: httpx.Client):
    r = anon.get("/files", params={"path": "/etc/hostname", "signature": "v1_bogus"})
    assert r.status_code == 401
    assert r.json() == {"code": 401, "message": "invalid signature"}


def test_files_with_signature_for_another_path_is_401(anon: httpx.Client, token: str):
    sig = sign("/etc/passwd", "read", "", token)
    r = anon.get("/files", params={"path": "/etc/hostname", "signature": sig})
    assert r.status_code == 401


def test_files_with_valid_signature_reads(backend, anon: httpx.Client, token: str):
    exp = int(time.time()) + 300
    sig = sign("/etc/hostname", "read", "", token, exp)
    r = anon.get(
        "/files",
        params={"path": "/etc/hostname", "signature": sig, "signature_expiration": exp},
    )
    assert r.status_code == 200, r.text
    assert r.text == f"{backend.hostname}\n"


def test_files_with_expired_signature_is_401_with_exact_body(anon: httpx.Client, token: str):
    exp = int(time.time()) - 60
    sig = sign("/etc/hostname", "read", "", token, exp)
    r = anon.get(
        "/files",
        params={"path": "/etc/hostname", "signature": sig, "signature_expiration": exp},
    )
    assert r.status_code == 401
    assert r.json() == {"code": 401, "message": "signature is already expired"}


def test_signed_upload_as_root(anon: httpx.Client, token: str):
    sig = sign("/tmp/signed.txt", "write", "root", token)
    r = anon.post(
        "/files",
        params={"path": "/tmp/signed.txt", "username": "root", "signature": sig},
        content=b"signed",
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    assert r.json()[0]["path"] == "/tmp/signed.txt"


def test_read_signature_does_not_allow_writes(anon: httpx.Client, token: str):
    sig = sign("/tmp/nope.txt", "read", "", token)
    r = anon.post(
        "/files",
        params={"path": "/tmp/nope.txt", "signature": sig},
        content=b"x",
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 401


def test_token_header_wins_over_signature(anon: httpx.Client, token: str):
    r = anon.get(
        "/files",
        params={"path": "/etc/hostname", "signature": "v1_bogus"},
        headers={"X-Access-Token": token},
    )
    assert r.status_code == 200


def test_init_with_wrong_token_cannot_change_it(backend, anon: httpx.Client, token: str):
    r = anon.post("/init", json={"accessToken": "attacker"}, headers={"X-Access-Token": "nope"})
    # Through `hearth serve` the proxy does not even let /init reach envd.
    assert r.status_code == (401 if backend.mode == "envd" else 404)
    ok = anon.post(
        "/filesystem.Filesystem/Stat",
        json={"path": "/"},
        headers={**unary_headers(), "X-Access-Token": token},
    )
    assert ok.status_code == 200


@pytest.mark.serve_only
def test_sdk_signed_urls_work_without_routing_headers(backend, name: str):
    """The SDK's signed URLs carry no sandbox id: the proxy finds the sandbox whose
    token verifies the signature (what a browser or curl would do with them)."""
    sandbox = backend.sandbox()
    path = f"/home/user/{name}.txt"
    up = sandbox.upload_url(path, use_signature_expiration=120)
    r = httpx.post(up, files={"file": ("x", b"signed upload")}, timeout=30)
    assert r.status_code == 200, r.text
    assert sandbox.files.read(path) == "signed upload"
    down = sandbox.download_url(path, use_signature_expiration=120)
    r = httpx.get(down, timeout=30)
    assert r.status_code == 200, r.text
    assert r.content == b"signed upload"
    # A forged signature finds no sandbox: it never reaches an envd.
    forged = down.replace("signature=v1_", "signature=v1_x")
    assert httpx.get(forged, timeout=30).status_code in (401, 404)
