# SPDX-License-Identifier: Apache-2.0
"""Raw Connect-protocol framing, for tests that must send what no SDK would."""

from __future__ import annotations

import json
import struct

CONNECT_CODES = {
    "canceled", "unknown", "invalid_argument", "deadline_exceeded", "not_found",
    "already_exists", "permission_denied", "resource_exhausted", "failed_precondition",
    "aborted", "out_of_range", "unimplemented", "internal", "unavailable", "data_loss",
    "unauthenticated",
}

# Connect's HTTP status for each code on unary calls.
HTTP_STATUS = {
    "canceled": 499, "unknown": 500, "invalid_argument": 400, "deadline_exceeded": 504,
    "not_found": 404, "already_exists": 409, "permission_denied": 403,
    "resource_exhausted": 429, "failed_precondition": 400, "aborted": 409,
    "out_of_range": 400, "unimplemented": 501, "internal": 500, "unavailable": 503,
    "data_loss": 500, "unauthenticated": 401,
}

END_STREAM = 0x02


def envelope(payload: bytes | dict, flags: int = 0) -> bytes:
    """One Connect envelope: flags byte, big-endian u32 length, payload."""
    if isinstance(payload, dict):
        payload = json.dumps(payload).encode()
    return struct.pack(">BI", flags, len(payload)) + payload


def parse_envelopes(body: bytes) -> list[tuple[int, bytes]]:
    """Splits a streaming response body into (flags, payload) pairs; asserts that the
    body holds whole envelopes only."""
    out = []
    i = 0
    while i < len(body):
        assert len(body) - i >= 5, f"truncated envelope header at {i}: {body[i:]!r}"
        flags, length = struct.unpack(">BI", body[i : i + 5])
        payload = body[i + 5 : i + 5 + length]
        assert len(payload) == length, f"truncated envelope at {i}"
        out.append((flags, payload))
        i += 5 + length
    return out


def stream_headers(extra: dict[str, str] | None = None) -> dict[str, str]:
    headers = {
        "Content-Type": "application/connect+json",
        "Connect-Protocol-Version": "1",
    }
    headers.update(extra or {})
    return headers


def unary_headers(extra: dict[str, str] | None = None) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Connect-Protocol-Version": "1"}
    headers.update(extra or {})
    return headers


def assert_unary_error(response, code: str) -> dict:
    """Asserts a unary Connect error of `code` with its HTTP status and JSON body."""
    assert response.headers.get("content-type", "").startswith("application/json"), (
        response.status_code,
        response.headers,
        response.content[:200],
    )
    body = response.json()
    assert body.get("code") == code, body
    assert isinstance(body.get("message", ""), str)
    assert response.status_code == HTTP_STATUS[code], (response.status_code, body)
    return body


def assert_stream_error(response, codes: set[str] | str) -> dict:
    """Asserts a streaming Connect response that ends in an error end-of-stream frame
    with one of `codes`; returns the error object."""
    if isinstance(codes, str):
        codes = {codes}
    assert response.status_code == 200, (response.status_code, response.content[:300])
    assert response.headers.get("content-type", "").startswith("application/connect+json")
    frames = parse_envelopes(response.content)
    assert frames, "no frames at all"
    flags, payload = frames[-1]
    assert flags & END_STREAM, f"last frame is not end-of-stream: {frames}"
    end = json.loads(payload)
    assert "error" in end, end
    assert end["error"]["code"] in codes, end
    assert end["error"]["code"] in CONNECT_CODES
    return end["error"]
