# SPDX-License-Identifier: Apache-2.0
"""The unmodified E2B JS SDK (npm `e2b`): tests/compat/js/smoke.mjs. In envd mode it
talks to the module's envd in debug mode; in serve mode it creates (and kills) its own
sandbox through the session's `hearth serve` (E2B_API_URL, E2B_SANDBOX_URL,
E2B_API_KEY).

Skipped unless tests/compat/js/node_modules exists (tests/compat/js/run installs it
with `npm ci` and then runs this file)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

JS_DIR = Path(__file__).parent / "js"


def test_js_sdk_smoke(backend):
    if not (JS_DIR / "node_modules" / "e2b").is_dir():
        pytest.skip("npm dependencies missing: run tests/compat/js/run")
    node = shutil.which("node")
    assert node, "node is not installed"
    env = dict(os.environ)
    if backend.mode == "envd":
        env["E2B_DEBUG"] = "true"
    proc = subprocess.run(
        [node, "smoke.mjs"], cwd=JS_DIR, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "js smoke: ok" in proc.stdout
