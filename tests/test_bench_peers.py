"""The short form of ``bench/peers.py`` (pipgate side by side with nginx) as a real
process: it must finish and every response it checked must be right. No timing is
asserted; the figures come from the long form (``bench/README.md``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
TARGETS = {"nginx-static", "nginx-cache", "pipgate-1", "pipgate-2"}

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="it reads /proc")


def _missing() -> list[str]:
    nginx = shutil.which("nginx") or os.access("/usr/sbin/nginx", os.X_OK)
    return [name for name, found in (("nginx", nginx), ("wrk", shutil.which("wrk"))) if not found]


@pytest.mark.clients
def test_peers_short_form_checks_every_page_load_and_install(tmp_path: Path) -> None:
    missing = _missing()
    if missing:
        # Where scripts/test.sh can install them (root with apt, or CI), a gap is a failure.
        installable = os.geteuid() == 0 and shutil.which("apt-get") is not None
        if installable or os.environ.get("CI"):
            pytest.fail(f"{', '.join(missing)} missing: scripts/test.sh installs them")
        pytest.skip(f"needs {', '.join(missing)}: run bench/setup.sh")
    out = tmp_path / "peers.json"
    argv = [sys.executable, str(BENCH / "peers.py"), "--short", "--json", str(out)]
    argv += ["--workdir", str(tmp_path), "--timeout", "80"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False)
    output = f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert out.exists(), f"peers.py wrote no results (exit {done.returncode}):\n{output}"
    result = json.loads(out.read_text())
    assert {x["target"] for x in result["pages"]} == TARGETS
    assert [x for x in result["pages"] if not x["ok"]] == [], output
    assert {(x["target"], x["tool"], x["kind"]) for x in result["installs"]} == {
        *((t, tool, "cold") for t in TARGETS for tool in ("uv", "pip")),
        *((t, "uv", "warm") for t in TARGETS),  # the short form skips warm pip installs
    }
    assert [x for x in result["installs"] if x["problems"]] == [], output
    assert all(x["ok"] for x in result["cold_lists"] + result["lists"]), output
    assert not any(result["log_problems"].values()), result["log_problems"]
    assert done.returncode == 0 and result["passed"], output
