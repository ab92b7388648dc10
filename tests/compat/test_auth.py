# SPDX-License-Identifier: Apache-2.0
"""Access token and signed file URLs (§2.7): once /init sets a token, every request
needs it, except /files which also accepts a valid, unexpired signature.

This module sets a token on its sandbox, so it runs on a sandbox of its own."""

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
def secured(backend):
    """The module's envd with an access token set through /init."""
    if backend.mode != "envd":
        pytest.skip("sets the token through envd's /init directly")
    r = httpx.post(f"{backend.envd_url}/init", json={"accessToken": TOKEN}, timeout=10)
    assert r.status_code == 204, r.text
    backend.access_token = TOKEN
    return backend


@pytest.fixture
def anon(secured):
    with httpx.Client(base_url=secured.envd_url, timeout=30) as client:
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


def test_rpc_with_token_works(anon: httpx.Client):
    r = anon.post(
        "/filesystem.Filesystem/Stat",
        json={"path": "/"},
        headers={**unary_headers(), "X-Access-Token": TOKEN},
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


def test_files_with_signature_for_another_path_is_401(anon: httpx.Client):
    sig = sign("/etc/passwd", "read", "", TOKEN)
    r = anon.get("/files", params={"path": "/etc/hostname", "signature": sig})
    assert r.status_code == 401


def test_files_with_valid_signature_reads(anon: httpx.Client):
    exp = int(time.time()) + 300
    sig = sign("/etc/hostname", "read", "", TOKEN, exp)
    r = anon.get(
        "/files",
        params={"path": "/etc/hostname", "signature": sig, "signature_expiration": exp},
    )
    assert r.status_code == 200, r.text
    assert r.text == "hearth\n"


def test_files_with_expired_signature_is_401_with_exact_body(anon: httpx.Client):
    exp = int(time.time()) - 60
    sig = sign("/etc/hostname", "read", "", TOKEN, exp)
    r = anon.get(
        "/files",
        params={"path": "/etc/hostname", "signature": sig, "signature_expiration": exp},
    )
    assert r.status_code == 401
    assert r.json() == {"code": 401, "message": "signature is already expired"}


def test_signed_upload_as_root(anon: httpx.Client):
    sig = sign("/tmp/signed.txt", "write", "root", TOKEN)
    r = anon.post(
        "/files",
        params={"path": "/tmp/signed.txt", "username": "root", "signature": sig},
        content=b"signed",
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    assert r.json()[0]["path"] == "/tmp/signed.txt"


def test_read_signature_does_not_allow_writes(anon: httpx.Client):
    sig = sign("/tmp/nope.txt", "read", "", TOKEN)
    r = anon.post(
        "/files",
        params={"path": "/tmp/nope.txt", "signature": sig},
        content=b"x",
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 401


def test_token_header_wins_over_signature(anon: httpx.Client):
    r = anon.get(
        "/files",
        params={"path": "/etc/hostname", "signature": "v1_bogus"},
        headers={"X-Access-Token": TOKEN},
    )
    assert r.status_code == 200


def test_init_with_wrong_token_cannot_change_it(anon: httpx.Client):
    r = anon.post("/init", json={"accessToken": "attacker"}, headers={"X-Access-Token": "nope"})
    assert r.status_code == 401
    ok = anon.post(
        "/filesystem.Filesystem/Stat",
        json={"path": "/"},
        headers={**unary_headers(), "X-Access-Token": TOKEN},
    )
    assert ok.status_code == 200
