# SPDX-License-Identifier: Apache-2.0
"""Where the SDK's sandbox comes from: the seam between test bodies and modes.

Test bodies only see a `Backend`: `sandbox()` hands out an `e2b.Sandbox`, and
`envd_url` / `envd_headers()` let raw-HTTP tests reach the same envd the SDK uses.

Modes (HEARTH_COMPAT_MODE):
- `envd` (default): the real static hearth-envd as PID 1 of a fresh overlay root in
  its own mount/pid/uts namespaces; the SDK runs in debug mode (E2B_DEBUG=true) and
  talks to localhost:49983. One envd per test module; `restart()` gives a test a
  fresh one (the module continues with the fresh one afterwards).
- `serve`: one real `hearth serve` per session (hearth_compat/serve.py) on
  127.0.0.1:<free port>; the SDK uses E2B_API_URL=E2B_SANDBOX_URL=<that URL> and
  E2B_API_KEY, and each module gets a sandbox created through the API (`restart()`
  replaces it). Raw requests go to the same URL with the E2b-Sandbox-Id /
  E2b-Sandbox-Port headers and the sandbox's access token.
"""

from __future__ import annotations

import base64
import os

import e2b

from .envd import EnvdInstance
from .serve import ServeServer


class Backend:
    """What a test may ask of the sandbox provider, whatever the mode."""

    mode = "abstract"
    # The sandbox's hostname.
    hostname = "hearth"

    def sandbox(self) -> e2b.Sandbox:
        raise NotImplementedError

    @property
    def envd_url(self) -> str:
        raise NotImplementedError

    def envd_headers(self, user: str | None = None) -> dict[str, str]:
        """Headers for a raw request to envd: routing, access token and user."""
        headers = dict(self.routing_headers())
        if self.access_token:
            headers["X-Access-Token"] = self.access_token
        if user is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:".encode()).decode()
        return headers

    def routing_headers(self) -> dict[str, str]:
        return {}

    access_token: str | None = None

    def restart(self) -> None:
        """Replaces the current sandbox with a fresh one."""
        raise NotImplementedError

    def mount_tmpfs(self, sandbox_path: str, size: str) -> None:
        """Mounts a small tmpfs at `sandbox_path` inside the sandbox (harness access)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class EnvdBackend(Backend):
    """hearth-envd alone, driven by the SDK in debug mode."""

    mode = "envd"

    def __init__(self, layers: list[str]):
        self.layers = layers
        self.instance: EnvdInstance | None = None
        os.environ["E2B_DEBUG"] = "true"
        # Not used in debug mode, but the SDK refuses to run without one.
        os.environ.setdefault("E2B_API_KEY", "e2b_" + "0" * 40)
        self.start()

    def start(self) -> None:
        self.instance = EnvdInstance(self.layers)
        self.instance.start()
        self.access_token = None

    def sandbox(self) -> e2b.Sandbox:
        # Debug mode makes no API call: the handle points at localhost:49983.
        return e2b.Sandbox.create()

    @property
    def envd_url(self) -> str:
        assert self.instance is not None
        return self.instance.url

    def restart(self) -> None:
        self.close()
        self.start()

    def mount_tmpfs(self, sandbox_path: str, size: str) -> None:
        assert self.instance is not None
        self.instance.mount_tmpfs(sandbox_path, size)

    def close(self) -> None:
        if self.instance is not None:
            instance, self.instance = self.instance, None
            instance.stop(check=True)


class ServeBackend(Backend):
    """A real `hearth serve` (one per session, see hearth_compat/serve.py): each module
    gets a sandbox of its own, created through the API with the unmodified SDK; raw
    requests go through the server's proxy with the routing headers and the sandbox's
    access token."""

    mode = "serve"
    hostname = "e2b.local"

    def __init__(self, server: ServeServer):
        self.server = server
        self.current: e2b.Sandbox | None = None
        self.start()

    def start(self) -> None:
        # Long enough for any module; the module's teardown kills it.
        self.current = e2b.Sandbox.create(timeout=1800)
        self.access_token = self.current._envd_access_token

    def sandbox(self) -> e2b.Sandbox:
        assert self.current is not None
        return self.current

    @property
    def sandbox_id(self) -> str:
        assert self.current is not None
        return self.current.sandbox_id

    @property
    def envd_url(self) -> str:
        return self.server.url

    def routing_headers(self) -> dict[str, str]:
        return {"E2b-Sandbox-Id": self.sandbox_id, "E2b-Sandbox-Port": "49983"}

    def restart(self) -> None:
        self.close()
        self.start()

    def close(self) -> None:
        if self.current is not None:
            sandbox, self.current = self.current, None
            assert sandbox.kill(), f"sandbox {sandbox.sandbox_id} was already gone"


def make_backend(server: ServeServer | None = None) -> Backend:
    mode = os.environ.get("HEARTH_COMPAT_MODE", "envd")
    if mode == "envd":
        layers = [p for p in os.environ.get("HEARTH_COMPAT_LAYERS", "").split(":") if p]
        if not layers:
            raise RuntimeError("HEARTH_COMPAT_LAYERS is empty: run the suite with tests/compat/run")
        return EnvdBackend(layers)
    if mode == "serve":
        if server is None:
            raise RuntimeError("serve mode needs the session's server")
        return ServeBackend(server)
    raise RuntimeError(f"unknown HEARTH_COMPAT_MODE {mode!r} (envd or serve)")
