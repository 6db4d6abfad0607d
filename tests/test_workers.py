"""Real ``pipgate serve`` processes: several workers, and SIGKILL at awkward moments."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from pipgate.store.blobs import BlobStore
from tests.support import links
from tests.support.fake_pypi import FakePyPI
from tests.support.packages import BuiltDist
from tests.support.server import PipgateProcess

JSON = "application/vnd.pypi.simple.v1+json"


def file_url(gate: PipgateProcess, dist: BuiltDist) -> str:
    return links.file_url(gate.index_url, dist.project, dist.filename)


def fetch_sha256(url: str) -> str:
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=60) as resp:
        while chunk := resp.read(1 << 16):
            digest.update(chunk)
    return digest.hexdigest()


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError("condition not reached in time")


def test_two_workers_download_each_file_once_for_all_clients(
    upstream: FakePyPI, slow_big: BuiltDist, tmp_path: Path
) -> None:
    with PipgateProcess(
        upstream=upstream.index_url, cache_dir=tmp_path / "cache", extra_args=("--workers", "2")
    ) as gate:
        url = file_url(gate, slow_big)
        results: list[str] = []
        threads = [
            threading.Thread(target=lambda: results.append(fetch_sha256(url))) for _ in range(16)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    log = gate.log()  # read after stopping: access lines are written after the body
    assert results == [slow_big.sha256] * 16
    assert upstream.downloads(slow_big.filename) == 1
    serving_pids = set(re.findall(r'"GET /files/\S+" 200 \S+ pid=(\d+)', log))
    assert len(serving_pids) == 2, "both workers should have answered file requests"


def test_killed_worker_is_replaced(upstream: FakePyPI, tmp_path: Path) -> None:
    with PipgateProcess(
        upstream=upstream.index_url, cache_dir=tmp_path / "cache", extra_args=("--workers", "2")
    ) as gate:
        assert gate.proc is not None
        supervisor = gate.proc.pid
        wait_for(lambda: len(_children(supervisor)) == 2)
        victim = _children(supervisor)[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(_children(supervisor)) == 2 and victim not in _children(supervisor))
        with urllib.request.urlopen(gate.url + "/healthz", timeout=10) as resp:
            assert resp.status == 200


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def test_sigkill_mid_download_leaves_nothing_partial(
    upstream: FakePyPI, slow_big: BuiltDist, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    gate = PipgateProcess(upstream=upstream.index_url, cache_dir=cache).start()
    url = file_url(gate, slow_big)
    part = BlobStore(cache).part_path(slow_big.sha256)
    reader = threading.Thread(target=lambda: _swallow(url), daemon=True)
    reader.start()
    wait_for(lambda: part.exists() and part.stat().st_size > 256 * 1024)
    gate.kill()
    reader.join(timeout=30)
    assert not BlobStore(cache).exists(slow_big.sha256)

    upstream.file_delay = 0.0
    restarted = PipgateProcess(upstream=upstream.index_url, cache_dir=cache).start()
    try:
        assert not any((cache / "tmp").iterdir()), "temp debris was not cleaned at start-up"
        assert fetch_sha256(file_url(restarted, slow_big)) == slow_big.sha256
        assert BlobStore(cache).exists(slow_big.sha256)
    finally:
        restarted.stop()


@pytest.mark.parametrize("kill_after", [0.05, 0.3, 0.6, 0.9, 1.1, 1.3, 1.5])
def test_sigkill_at_any_moment_leaves_only_verified_files(
    upstream: FakePyPI, slow_big: BuiltDist, tmp_path: Path, kill_after: float
) -> None:
    """Kill while downloading, around the end of the body and around the commit."""
    cache = tmp_path / "cache"
    gate = PipgateProcess(upstream=upstream.index_url, cache_dir=cache).start()
    url = file_url(gate, slow_big)
    threading.Thread(target=lambda: _swallow(url), daemon=True).start()
    time.sleep(kill_after)  # the moment of the crash is the variable under test
    gate.kill()
    for sha, path in BlobStore(cache).iter_blobs():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sha

    upstream.file_delay = 0.0
    restarted = PipgateProcess(upstream=upstream.index_url, cache_dir=cache).start()
    try:
        assert fetch_sha256(file_url(restarted, slow_big)) == slow_big.sha256
        second = urllib.request.urlopen(file_url(restarted, slow_big), timeout=30)
        assert second.headers["X-Pipgate-Cache"] == "hit"
        second.read()
    finally:
        restarted.stop()


def _swallow(url: str) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            while resp.read(1 << 16):
                pass
    except OSError:
        pass
