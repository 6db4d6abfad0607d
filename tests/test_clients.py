"""Real pip and uv install through a real pipgate process (the product's main promise)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.clients import installed, pip_install, uv_install
from tests.support.fake_pypi import FakePyPI
from tests.support.packages import build_wheel, sample_tree
from tests.support.server import PipgateProcess

pytestmark = pytest.mark.clients

#: What ``alpha`` resolves to on Python 3.11 (beta 2.0 is yanked, delta 4.0 needs >=4).
EXPECTED = {"alpha": "1.0", "beta": "1.0", "gamma": "0.5", "delta": "3.0"}
INSTALLERS = {"pip": pip_install, "uv": uv_install}


def _start(upstream: FakePyPI, tmp_path: Path) -> PipgateProcess:
    return PipgateProcess(upstream=upstream.index_url, cache_dir=tmp_path / "cache").start()


@pytest.mark.parametrize("installer", sorted(INSTALLERS))
def test_installer_resolves_dependency_tree_through_pipgate(
    installer: str, any_upstream: FakePyPI, tmp_path: Path
) -> None:
    gate = _start(any_upstream, tmp_path)
    try:
        result = INSTALLERS[installer](gate.index_url, tmp_path / "target", "alpha")
        assert result.returncode == 0, result.stdout + result.stderr
        assert installed(tmp_path / "target") == EXPECTED
        # Every file came through pipgate: the upstream saw pipgate fetch each once.
        for name in ("alpha-1.0-py3-none-any.whl", "gamma-0.5.tar.gz"):
            assert any_upstream.downloads(name) == 1
    finally:
        gate.stop()


@pytest.mark.parametrize("installer", sorted(INSTALLERS))
def test_install_succeeds_from_warm_cache_when_upstream_is_down(
    installer: str, upstream: FakePyPI, tmp_path: Path
) -> None:
    gate = PipgateProcess(
        upstream=upstream.index_url,
        cache_dir=tmp_path / "cache",
        # Pages expire at once, so the second install must fall back to stale pages.
        extra_args=("--index-ttl", "0"),
    ).start()
    try:
        warm = INSTALLERS[installer](gate.index_url, tmp_path / "warm", "alpha")
        assert warm.returncode == 0, warm.stdout + warm.stderr
        upstream.stop()  # connection refused from now on
        cold = INSTALLERS[installer](gate.index_url, tmp_path / "offline", "alpha")
        assert cold.returncode == 0, cold.stdout + cold.stderr
        assert installed(tmp_path / "offline") == EXPECTED
    finally:
        gate.stop()


def test_corrupt_upstream_file_fails_pip_and_is_never_cached(
    upstream: FakePyPI, tmp_path: Path
) -> None:
    upstream.corrupt.add("alpha-1.0-py3-none-any.whl")
    gate = _start(upstream, tmp_path)
    try:
        result = pip_install(gate.index_url, tmp_path / "target", "alpha", extra=("--no-deps",))
        assert result.returncode != 0
        assert not (tmp_path / "target" / "alpha").exists()
        wheel = next(d for d in sample_tree() if d.filename == "alpha-1.0-py3-none-any.whl")
        stored = {p.name for p in (tmp_path / "cache" / "blobs").rglob("*") if p.is_file()}
        assert wheel.sha256 not in stored
        # The (correct) PEP 658 metadata may be cached; nothing else.
        assert stored <= {wheel.metadata_sha256}
        leftovers = list((tmp_path / "cache" / "tmp").iterdir())
        assert leftovers == []
    finally:
        gate.stop()


def test_uv_reads_wheel_metadata_with_head_and_ranges_when_no_pep658_file(
    upstream: FakePyPI, tmp_path: Path
) -> None:
    lazy = build_wheel("lazywheel", "1.0", requires=("beta>=1.0",), pad_to=256 * 1024)
    upstream.add(lazy, metadata=False)  # no .metadata: uv must use HEAD + Range
    gate = _start(upstream, tmp_path)
    try:
        result = uv_install(gate.index_url, tmp_path / "target", "lazywheel")
        assert result.returncode == 0, result.stdout + result.stderr
        assert installed(tmp_path / "target") == {"lazywheel": "1.0", "beta": "1.0"}
    finally:
        gate.stop()
    log = gate.log()
    assert f'"HEAD /files/lazywheel/{lazy.sha256}/{lazy.filename}" 200' in log
    assert re.search(rf'"GET /files/lazywheel/{lazy.sha256}/\S+" 206', log)
