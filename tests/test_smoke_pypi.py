"""Opt-in smoke test against the real PyPI: ``PIPGATE_SMOKE=1 bash scripts/test.sh -k smoke``.

Not part of the hermetic suite (it needs the internet); skipped, with that reason
printed, unless asked for.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.clients import installed, pip_install, uv_install
from tests.support.server import PipgateProcess

pytestmark = [
    pytest.mark.smoke,
    pytest.mark.skipif(
        os.environ.get("PIPGATE_SMOKE") != "1",
        reason="talks to the real PyPI; opt in with PIPGATE_SMOKE=1",
    ),
]


def test_pip_and_uv_install_from_real_pypi_through_pipgate(tmp_path: Path) -> None:
    with PipgateProcess(upstream="https://pypi.org/simple/", cache_dir=tmp_path / "c") as gate:
        first = pip_install(gate.index_url, tmp_path / "pip", "six==1.16.0")
        assert first.returncode == 0, first.stdout + first.stderr
        second = uv_install(gate.index_url, tmp_path / "uv", "six==1.16.0")
        assert second.returncode == 0, second.stdout + second.stderr
    assert installed(tmp_path / "pip")["six"] == "1.16.0"
    assert installed(tmp_path / "uv")["six"] == "1.16.0"
