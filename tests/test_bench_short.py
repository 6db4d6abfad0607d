"""The short forms of the load, soak and chaos scripts in ``bench/``, run as real
processes: their verdicts are the test (see ``bench/README.md`` for the long forms)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="they read /proc")


def run_short(script: str, tmp_path: Path, timeout: float, *extra: str) -> dict[str, Any]:
    """``python bench/<script> --short --json F``: its exit status must be 0 and its last
    line a PASS verdict; returns the JSON results."""
    out = tmp_path / "result.json"
    argv = [sys.executable, str(BENCH / script), "--short", "--json", str(out)]
    argv += ["--workdir", str(tmp_path), "--timeout", str(timeout - 10), *extra]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    verdict = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    problem = f"{script} wrote no results (exit {done.returncode}):\n{done.stderr[-3000:]}"
    assert out.exists(), problem
    result: dict[str, Any] = json.loads(out.read_text())
    result["_output"] = f"{verdict}\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}"
    result["_status"] = done.returncode
    return result


def test_load_short_form_has_no_errors_at_any_level(tmp_path: Path) -> None:
    result = run_short("load.py", tmp_path, timeout=90)
    levels = result["levels"]
    assert [x["connections"] for x in levels] == [8, 32, 128]
    errors = {x["connections"]: x["errors"] for x in levels if x["errors"]}
    assert not errors, f"errors by level and kind: {errors}\n{result['_output']}"
    assert all(x["requests"] > 0 and x["checked"] > 0 for x in levels)
    # About 90 % from the cache, and the rest really reached the upstream.
    assert all(0.8 <= x["cached_share"] <= 0.97 for x in levels), levels
    assert all(x["upstream_gets"]["file"] > 0 for x in levels)
    assert result["_status"] == 0 and result["passed"], result["_output"]


def test_soak_short_form_stays_within_its_growth_bounds(tmp_path: Path) -> None:
    result = run_short("soak.py", tmp_path, timeout=110)
    roles = [g["role"] for g in result["growth"]]
    assert "supervisor" in roles and sum(r.startswith("worker-") for r in roles) == 2, roles
    assert not result["problems"], f"{result['problems']}\n{result['_output']}"
    assert not result["errors"], f"errors by kind: {result['errors']}\n{result['_output']}"
    assert result["_status"] == 0 and result["passed"], result["_output"]


@pytest.mark.clients
def test_chaos_short_form_never_serves_a_wrong_file_nor_hangs(tmp_path: Path) -> None:
    result = run_short("chaos.py", tmp_path, timeout=110)
    clients = result["clients"]
    assert all(not c["wrong"] for c in clients.values()), result["_output"]
    assert all(not c["hangs"] for c in clients.values()), result["_output"]
    assert result["verify"]["status"] == 0 and not result["verify"]["corrupt"], result["verify"]
    assert {k["what"] for k in result["kills"]} == {"group", "worker"}
    assert all(k["ok"] for k in result["kills"]), result["kills"]
    assert sum(result["faults_injected"].values()) > 0
    assert all(c["succeeded"] > 0 for c in clients.values()), clients
    assert result["_status"] == 0 and result["passed"], result["_output"]


def test_cold_short_form_checks_every_body_through_pipgate_and_upstream(tmp_path: Path) -> None:
    result = run_short("cold.py", tmp_path, timeout=60)
    runs = {(r["target"], r["concurrency"]) for r in result["runs"]}
    assert runs == {("upstream", 1), ("pipgate", 1), ("upstream", 3), ("pipgate", 3)}, runs
    assert not result["problems"], result["_output"]
    assert all(r["server_cpu_ms_per_chain"] > 0 for r in result["runs"] if r["target"] == "pipgate")
    assert result["_status"] == 0 and result["passed"], result["_output"]
