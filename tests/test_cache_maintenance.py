"""Cache size limit (LRU eviction), start-up reconciliation, and a full or broken disk."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from pipgate.store.blobs import BlobStore, BlobWriter
from pipgate.store.catalog import BlobRecord, Catalog
from pipgate.store.locks import acquire_shared
from pipgate.store.reconcile import reconcile
from pipgate.web.state import SERVICES
from tests.conftest import GateFactory
from tests.support.clients import installed, pip_install
from tests.support.fake_pypi import FakePyPI
from tests.support.links import file_path
from tests.support.metrics import metric_value
from tests.support.packages import BuiltDist, build_wheel
from tests.support.server import PipgateProcess

JSON = "application/vnd.pypi.simple.v1+json"
MB = 1 << 20


async def fetch(gate: TestClient, dist: BuiltDist) -> bytes:
    path = await file_path(gate, dist.project, dist.filename)
    return await (await gate.get(path)).read()


async def metrics_text(gate: TestClient) -> str:
    return await (await gate.get("/metrics")).text()


@pytest.fixture
def three_wheels(upstream: FakePyPI) -> list[BuiltDist]:
    dists = [build_wheel(f"lru{i}", "1.0", pad_to=MB) for i in range(3)]
    for dist in dists:
        upstream.add(dist, metadata=False)
    return dists


async def test_least_recently_used_files_are_evicted_to_fit_max_size(
    make_gate: GateFactory, three_wheels: list[BuiltDist], tmp_path: Path
) -> None:
    gate = await make_gate(max_size=int(2.5 * MB))
    first, second, third = three_wheels
    for dist in (first, second):
        assert await fetch(gate, dist) == dist.data
    services = gate.app[SERVICES]
    index = Catalog(tmp_path / "cache")
    await index.touch(first.sha256, time.time() + 10)  # first is now the most recent
    assert await fetch(gate, third) == third.data
    await services.files.idle()  # the METADATA extractions that follow each commit

    # A background pass (started by the last commit) may hold the eviction lock for a
    # moment; poll, in a thread so the in-process server keeps running.
    evicted = 0
    deadline = time.monotonic() + 10
    while not evicted and time.monotonic() < deadline:
        result = await asyncio.to_thread(services.evictor.evict_now, now=time.time() + 3600)
        evicted = result.files
    blobs = BlobStore(tmp_path / "cache")
    assert not blobs.exists(second.sha256)  # the least recently used wheel
    assert blobs.exists(first.sha256) and blobs.exists(third.sha256)
    # What is left: the two wheels and some of the small METADATA files pipgate
    # extracted from them (older ones may have gone first: they are blobs too).
    remaining = [(sha, path.stat().st_size) for sha, path in blobs.iter_blobs()]
    wheels = {first.sha256, third.sha256}
    assert wheels <= {sha for sha, _ in remaining}
    assert all(size < 64 << 10 for sha, size in remaining if sha not in wheels)
    await services.evictor.update_gauges()
    text = await metrics_text(gate)
    assert metric_value(text, "pipgate_cache_evictions_total") == evicted
    assert metric_value(text, "pipgate_cache_size_bytes") == sum(size for _, size in remaining)
    assert metric_value(text, "pipgate_cache_files") == len(remaining)
    # An evicted file is simply downloaded again.
    assert await fetch(gate, second) == second.data
    index.close()


async def test_a_file_being_read_is_never_evicted(
    make_gate: GateFactory, three_wheels: list[BuiltDist], tmp_path: Path
) -> None:
    gate = await make_gate(max_size=MB)
    for dist in three_wheels:
        await fetch(gate, dist)
    blobs = BlobStore(tmp_path / "cache")
    readers = [acquire_shared(blobs.use_lock_path(d.sha256)) for d in three_wheels]
    try:
        evictor = gate.app[SERVICES].evictor
        await asyncio.to_thread(evictor.evict_now, now=time.time() + 3600)
        # Only what nobody reads may go (the small METADATA files extracted from them).
        assert all(blobs.exists(d.sha256) for d in three_wheels)
    finally:
        for fd in readers:
            os.close(fd)
    # Once nobody reads them, all go (90 % of 1 MiB holds none of these 1 MiB files).
    # The last response's handler may still hold its lock for a moment: poll (in a
    # thread, so the in-process server's handlers can finish meanwhile).
    deadline = time.monotonic() + 10
    while any(blobs.exists(d.sha256) for d in three_wheels) and time.monotonic() < deadline:
        await asyncio.to_thread(evictor.evict_now, now=time.time() + 3600)
    assert not any(blobs.exists(d.sha256) for d in three_wheels)


def _commit(blobs: BlobStore, data: bytes) -> str:
    writer = blobs.writer({"sha256": hashlib.sha256(data).hexdigest()}, len(data))
    writer.write(data)
    return writer.commit().sha256


def test_reconcile_drops_records_without_blobs_and_adopts_or_removes_orphans(
    tmp_path: Path,
) -> None:
    cache = tmp_path / "cache"
    blobs = BlobStore(cache)
    blobs.ensure_dirs()
    index = Catalog(cache)
    kept = _commit(blobs, b"kept")
    orphan = _commit(blobs, b"committed, then killed before the record was written")
    vanished = hashlib.sha256(b"vanished").hexdigest()
    now = time.time()
    for sha, size in ((kept, 4), (vanished, 8)):
        index.put_blob_record(sha, BlobRecord("p", f"{sha}.whl", size, True, now))
    bad = hashlib.sha256(b"expected").hexdigest()
    blobs.path(bad).parent.mkdir(parents=True, exist_ok=True)
    blobs.path(bad).write_bytes(b"not what the name says")
    (blobs.tmp / "leftover.part").write_bytes(b"partial")
    index.close()

    report = reconcile(cache)

    assert report.records_dropped == 1
    assert report.blobs_adopted == 1
    assert report.blobs_removed == 1
    assert report.temp_removed == 1
    assert sorted(sha for sha, _ in blobs.iter_blobs()) == sorted([kept, orphan])
    index = Catalog(cache)
    assert index.total_size_now() == blobs.size(kept) + blobs.size(orphan)  # type: ignore[operator]
    index.close()


def test_reconcile_keeps_the_part_file_of_a_live_download(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    blobs = BlobStore(cache)
    blobs.ensure_dirs()
    from pipgate.store.locks import DownloadLock

    key = "a" * 64
    lock = DownloadLock(blobs.download_lock_path(key))
    assert lock.try_acquire()
    blobs.part_path(key).write_bytes(b"in progress")
    try:
        reconcile(cache)
        assert blobs.part_path(key).exists()
    finally:
        lock.release()
    reconcile(cache)
    assert not blobs.part_path(key).exists()


async def test_disk_full_mid_download_is_counted_and_later_requests_pass_through(
    make_gate: GateFactory,
    upstream: FakePyPI,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    dist = build_wheel("fullpkg", "1.0", pad_to=2 * MB)
    upstream.add(dist, metadata=False)
    gate = await make_gate()
    original = BlobWriter.write

    def write_fails_after_1mb(self: BlobWriter, chunk: bytes) -> None:
        if self.written >= MB:
            raise OSError(errno.ENOSPC, "No space left on device")
        original(self, chunk)

    monkeypatch.setattr(BlobWriter, "write", write_fails_after_1mb)
    resp = await gate.get(await file_path(gate, dist.project, dist.filename))
    with pytest.raises(Exception):  # noqa: B017 - the body is cut short, as it must be
        await resp.read()
    text = await metrics_text(gate)
    assert metric_value(text, "pipgate_download_failures_total", reason="disk_full") == 1

    again = await gate.get(await file_path(gate, dist.project, dist.filename))
    assert again.headers["X-Pipgate-Cache"] == "miss"
    assert await again.read() == dist.data  # passed through, verified
    assert not BlobStore(tmp_path / "cache").exists(dist.sha256)
    assert (await gate.get("/healthz")).status == 200
    text = await metrics_text(gate)
    assert metric_value(text, "pipgate_cache_requests_total", kind="file", result="bypass") == 1


@pytest.mark.parametrize("corrupt", [False, True])
async def test_a_small_file_the_disk_cannot_take_is_still_served_whole_once_verified(
    make_gate: GateFactory,
    upstream: FakePyPI,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    corrupt: bool,
) -> None:
    """A small file is received whole in memory before it is written: when the disk
    refuses it, the bytes are verified in memory and its readers get them (as a
    pass-through would), or a clean 503 when they are wrong; nothing is cached."""
    dist = build_wheel("smallfull", "1.0", pad_to=50_000)
    upstream.add(dist, metadata=False)
    if corrupt:
        upstream.corrupt.add(dist.filename)
    gate = await make_gate()

    def disk_full(self: BlobWriter, chunk: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(BlobWriter, "write", disk_full)
    resp = await gate.get(await file_path(gate, dist.project, dist.filename))
    if corrupt:
        assert resp.status == 503
        assert resp.headers["X-Pipgate-Reason"] == "hash_mismatch"
    else:
        assert resp.status == 200
        assert await resp.read() == dist.data
    assert not BlobStore(tmp_path / "cache").exists(dist.sha256)
    text = await metrics_text(gate)
    reason = "hash_mismatch" if corrupt else "disk_full"
    assert metric_value(text, "pipgate_download_failures_total", reason=reason) == 1


@pytest.fixture
def tiny_filesystem(tmp_path: Path) -> Path:
    """A 2 MiB tmpfs (root can mount one here); the test explains itself if it cannot."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()}); "
                    "test_disk_full_mid_download_* covers disk-full by injection")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30)


def test_full_cache_disk_still_installs_through_pass_through(
    upstream: FakePyPI, tiny_filesystem: Path, tmp_path: Path
) -> None:
    big = build_wheel("bigone", "1.0", pad_to=4 * MB)  # larger than the whole filesystem
    upstream.add(big, metadata=False)
    with PipgateProcess(upstream=upstream.index_url, cache_dir=tiny_filesystem / "c") as gate:
        result = pip_install(gate.index_url, tmp_path / "target", "bigone")
        assert result.returncode == 0, result.stdout + result.stderr
        assert installed(tmp_path / "target") == {"bigone": "1.0"}
        metrics = gate.url + "/metrics"
        import urllib.request

        text = urllib.request.urlopen(metrics, timeout=10).read().decode()
    assert metric_value(text, "pipgate_download_failures_total", reason="disk_full") >= 1
    assert not BlobStore(tiny_filesystem / "c").exists(big.sha256)
    assert "pass-through" in gate.log()
