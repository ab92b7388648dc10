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
  internals that only envd mode has (e.g. mounting a tiny tmpfs).
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


def pytest_configure(config):
    if os.environ.get("HEARTH_COMPAT_NETNS") != "1":
        pytest.exit(
            "run the compatibility suite through tests/compat/run "
            "(it sets up the venv, the layers and a private network namespace)",
            returncode=2,
        )


@pytest.fixture(scope="module")
def backend():
    b = make_backend()
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
