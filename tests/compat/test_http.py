# SPDX-License-Identifier: Apache-2.0
"""envd's plain HTTP endpoints: /health, /envs, /metrics and /init (§2.5)."""

from __future__ import annotations

import httpx
import pytest
from e2b import Sandbox


def test_health_is_204(raw: httpx.Client):
    r = raw.get("/health")
    assert r.status_code == 204
    assert r.content == b""


def test_metrics_reports_snake_case_numbers(raw: httpx.Client):
    r = raw.get("/metrics")
    assert r.status_code == 200
    m = r.json()
    for key in ("ts", "cpu_count", "cpu_used_pct", "mem_total", "mem_used", "disk_used", "disk_total"):
        assert isinstance(m[key], (int, float)), (key, m)
    assert m["mem_total"] > 0 and m["cpu_count"] >= 1


@pytest.mark.envd_only  # /init is the orchestrator's: `hearth serve` keeps it private
def test_init_env_vars_reach_commands_and_envs(backend, raw: httpx.Client, sandbox: Sandbox):
    r = raw.post("/init", json={"envVars": {"HEARTH_INIT_VAR": "from-init"}})
    assert r.status_code == 204
    assert r.headers.get("x-envd-version") == "0.6.13"
    envs = raw.get("/envs")
    assert envs.status_code == 200
    assert envs.json().get("HEARTH_INIT_VAR") == "from-init"
    result = sandbox.commands.run('echo "$HEARTH_INIT_VAR|$E2B_SANDBOX"')
    assert result.stdout == "from-init|true\n"
    # Request env vars win over sandbox-wide ones.
    result = sandbox.commands.run('echo "$HEARTH_INIT_VAR"', envs={"HEARTH_INIT_VAR": "mine"})
    assert result.stdout == "mine\n"


@pytest.mark.envd_only
def test_init_sets_default_user_and_workdir(raw: httpx.Client, sandbox: Sandbox):
    r = raw.post("/init", json={"defaultUser": "root", "defaultWorkdir": "/tmp"})
    assert r.status_code == 204
    try:
        assert sandbox.commands.run("whoami; pwd").stdout == "root\n/tmp\n"
    finally:
        raw.post("/init", json={"defaultUser": "user", "defaultWorkdir": "/home/user"})
