# SPDX-License-Identifier: Apache-2.0
"""Fixtures of the E2B SDK compatibility suite.

Run the suite with `tests/compat/run` (it prepares the venv, the layers and the
private network namespace). Fixtures:

- `backend` (one per test module): the sandbox provider of the selected mode, see
  hearth_compat/backend.py. In envd mode that is one hearth-envd in a fresh root per
  module; its teardown fails the module if envd leaves a process, namespace, mount or
  temp file behind.
- `sandbox`: an `e2b.Sandbox` on the module's sandbox. Mark a test
  `@pytest.mark.fresh` to give it a freshly started sandbox instead (the rest of the
  module then continues on that fresh one).
- `raw`: an httpx client aimed at the same envd, with routing/token headers.
- `name`: a unique name for files and directories a test creates.
- Mark a test `@pytest.mark.envd_only` when it needs harness access to the sandbox
  internals that only envd mode has (e.g. mounting a tiny tmpfs);
  `@pytest.mark.serve_only` when it needs `hearth serve` (the API, the proxy, real
  isolation). A module can set `pytestmark` to either.
- `serve_server` (one per session, serve mode only, else None): the running
  `hearth serve` (hearth_compat/serve.py). At the end of the session it gets SIGTERM
  and must exit 0 leaving no namespace, nftables table, cgroup, mount or process.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from hearth_compat.backend import Backend, make_backend  # noqa: E402
from hearth_compat.serve import ServeServer, reap_stale  # noqa: E402

MODE = os.environ.get("HEARTH_COMPAT_MODE", "envd")


def pytest_configure(config):
    if os.environ.get("HEARTH_COMPAT_RUNNER") != "1" or (
        MODE == "envd" and os.environ.get("HEARTH_COMPAT_NETNS") != "1"
    ):
        pytest.exit(
            "run the compatibility suite through tests/compat/run "
            "(it sets up the venv, the layers, the binaries and, in envd mode, a "
            "private network namespace)",
            returncode=2,
        )


def pytest_runtest_setup(item):
    if item.get_closest_marker("envd_only") and MODE != "envd":
        pytest.skip("needs envd mode (harness access to the sandbox internals)")
    if item.get_closest_marker("serve_only") and MODE != "serve":
        pytest.skip("needs serve mode (HEARTH_COMPAT_MODE=serve)")
    runtime = os.environ.get("HEARTH_COMPAT_RUNTIME", "container")
    if item.get_closest_marker("container_only") and (MODE != "serve" or runtime != "container"):
        pytest.skip("needs container sandboxes (serve mode, HEARTH_COMPAT_RUNTIME=container)")
    if item.get_closest_marker("microvm_only") and (MODE != "serve" or runtime != "microvm"):
        pytest.skip("needs microVM sandboxes (serve mode, HEARTH_COMPAT_RUNTIME=microvm)")


@pytest.fixture(scope="session")
def serve_server():
    if MODE != "serve":
        yield None
        return
    reap_stale()
    server = ServeServer(f"hct{os.getpid()}")
    server.start()
    os.environ.pop("E2B_DEBUG", None)
    os.environ["E2B_API_URL"] = server.url
    os.environ["E2B_SANDBOX_URL"] = server.url
    os.environ["E2B_API_KEY"] = server.api_key
    yield server
    server.stop_and_check()


@pytest.fixture(scope="module")
def backend(serve_server):
    b = make_backend(serve_server)
    yield b
    b.close()


@pytest.fixture
def sandbox(backend: Backend, request):
    if request.node.get_closest_marker("envd_only") and backend.mode != "envd":
        pytest.skip("needs envd mode")
    if request.node.get_closest_marker("fresh"):
        backend.restart()
    return backend.sandbox()


@pytest.fixture
def raw(backend: Backend, request):
    if request.node.get_closest_marker("envd_only") and backend.mode != "envd":
        pytest.skip("needs envd mode")
    with httpx.Client(
        base_url=backend.envd_url, headers=backend.envd_headers(), timeout=30
    ) as client:
        yield client


@pytest.fixture
def name() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def assert_serving(backend: Backend) -> None:
    """envd still answers health checks and runs commands."""
    r = httpx.get(f"{backend.envd_url}/health", headers=backend.envd_headers(), timeout=10)
    assert r.status_code == 204, r
    result = backend.sandbox().commands.run("echo still-here", timeout=20)
    assert result.stdout == "still-here\n"


@pytest.fixture
def serving(backend: Backend):
    """Asserts after the test that envd still serves other clients."""
    yield
    assert_serving(backend)
