"""Cache integrity over time: verify, repair and the background scrubber."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipgate.metrics import Metrics
from pipgate.store.blobs import BlobStore, Committed
from pipgate.store.catalog import BlobRecord, Catalog
from pipgate.store.integrity import Scrubber, Throttle, human_size, verify_cache
from pipgate.store.locks import DownloadLock, try_exclusive, use_lock
from tests.support.metrics import metric_value


@dataclass
class Cache:
    """A cache directory built by hand: three good blobs, one of them unverified."""

    dir: Path
    blobs: BlobStore
    index: Catalog
    good: Committed
    other: Committed
    unverified: Committed


async def commit(
    blobs: BlobStore, index: Catalog, data: bytes, filename: str, *, verified: bool = True
) -> Committed:
    """Store and record a blob as a download would (no published hash: unverified)."""
    expected = {"sha256": hashlib.sha256(data).hexdigest()} if verified else {}
    committed = await asyncio.to_thread(blobs.put_bytes, data, expected)
    record = BlobRecord("demo", filename, committed.size, committed.verified, time.time())
    await index.record_blob(committed.sha256, record)
    return committed


@pytest.fixture
async def cache(tmp_path: Path) -> AsyncIterator[Cache]:
    blobs = BlobStore(tmp_path)
    blobs.ensure_dirs()
    index = Catalog(tmp_path)
    good = await commit(blobs, index, b"good wheel " * 1000, "demo-1.0-py3-none-any.whl")
    other = await commit(blobs, index, b"other sdist " * 300, "demo-1.0.tar.gz")
    unverified = await commit(
        blobs, index, b"no hash upstream " * 50, "demo-0.9.tar.gz", verified=False
    )
    assert not unverified.verified
    yield Cache(tmp_path, blobs, index, good, other, unverified)
    index.close()


def flip_byte(path: Path, offset: int = 5) -> None:
    """Corrupt a stored blob in place (same inode, as bit rot would)."""
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x01]))


async def eventually(condition: Callable[[], bool], within: float = 3.0) -> None:
    """Poll ``condition`` until it holds, failing after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


# --- verify_cache ------------------------------------------------------------------------


async def test_verify_reports_exactly_the_flipped_blob_as_corrupt(cache: Cache) -> None:
    flip_byte(cache.good.path)

    report = await asyncio.to_thread(verify_cache, cache.dir)

    assert report.checked == 3
    assert report.ok == 1
    assert [bad.sha256 for bad in report.corrupt] == [cache.good.sha256]
    bad = report.corrupt[0]
    assert bad.actual == hashlib.sha256(cache.good.path.read_bytes()).hexdigest()
    assert (bad.project, bad.filename, bad.removed) == ("demo", "demo-1.0-py3-none-any.whl", False)
    assert cache.good.path.exists(), "verify without repair changes nothing"
    assert report.bytes == cache.good.size + cache.other.size + cache.unverified.size


async def test_repair_removes_the_corrupt_blob_its_record_and_its_size(cache: Cache) -> None:
    flip_byte(cache.good.path)
    size_before, files_before = await cache.index.totals()

    report = await asyncio.to_thread(verify_cache, cache.dir, repair=True)

    assert report.repaired == 1
    assert report.corrupt[0].removed and not report.corrupt[0].in_use
    assert not cache.good.path.exists()
    assert await cache.index.get_blob(cache.good.sha256) is None
    assert await cache.index.totals() == (size_before - cache.good.size, files_before - 1)
    assert cache.other.path.exists() and cache.unverified.path.exists()
    again = await asyncio.to_thread(verify_cache, cache.dir)
    assert (again.checked, again.corrupt) == (2, [])


async def test_repair_removes_a_blob_being_served_and_says_so(cache: Cache) -> None:
    flip_byte(cache.good.path)

    with use_lock(cache.blobs.use_lock_path(cache.good.sha256)):
        report = await asyncio.to_thread(verify_cache, cache.dir, repair=True)

    assert report.corrupt[0].removed and report.corrupt[0].in_use
    assert not cache.good.path.exists()
    assert "removed (it was being served)" in report.lines()[0]


async def test_blob_without_a_published_hash_is_listed_as_unverified(cache: Cache) -> None:
    report = await asyncio.to_thread(verify_cache, cache.dir)

    assert [blob.sha256 for blob in report.unverified] == [cache.unverified.sha256]
    assert report.unverified[0].filename == "demo-0.9.tar.gz"
    assert (report.ok, report.corrupt) == (2, [])


async def test_corrupt_unverified_blob_is_corrupt_not_unverified(cache: Cache) -> None:
    flip_byte(cache.unverified.path)

    report = await asyncio.to_thread(verify_cache, cache.dir)

    assert [bad.sha256 for bad in report.corrupt] == [cache.unverified.sha256]
    assert report.unverified == []


async def test_blob_on_disk_without_index_record_is_counted(cache: Cache) -> None:
    await asyncio.to_thread(cache.index.drop_blob_record, cache.other.sha256)

    report = await asyncio.to_thread(verify_cache, cache.dir)

    assert report.missing_records == 1
    assert report.ok == 2  # still checked: its name is its hash


async def test_unreadable_blob_is_reported_but_never_removed(cache: Cache) -> None:
    # A directory where a blob should be: unreadable, whoever runs the test.
    cache.other.path.unlink()
    cache.other.path.mkdir()

    report = await asyncio.to_thread(verify_cache, cache.dir, repair=True)

    [bad] = report.corrupt
    assert bad.sha256 == cache.other.sha256
    assert bad.actual is None and bad.error
    assert not bad.removed and report.repaired == 0
    assert cache.other.path.is_dir()
    assert report.lines()[0].startswith(f"unreadable {cache.other.sha256} demo/demo-1.0.tar.gz:")


async def test_empty_cache_reports_nothing_checked(tmp_path: Path) -> None:
    report = await asyncio.to_thread(verify_cache, tmp_path)

    assert (report.checked, report.bytes, report.ok, report.corrupt) == (0, 0, 0, [])
    assert report.lines() == ["checked 0 files (0 B): 0 ok, 0 corrupt, 0 unverified"]


def test_missing_cache_dir_is_an_error_not_an_empty_cache(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        verify_cache(tmp_path / "typo")
    assert not (tmp_path / "typo").exists()


async def test_report_renders_a_line_per_problem_then_a_summary(cache: Cache) -> None:
    flip_byte(cache.good.path)
    progress: list[str] = []

    report = await asyncio.to_thread(verify_cache, cache.dir, repair=True, progress=progress.append)

    corrupt, unverified, summary = report.lines()
    assert corrupt.startswith(f"corrupt {cache.good.sha256} demo/demo-1.0-py3-none-any.whl: ")
    assert corrupt.endswith("; removed")
    assert unverified.startswith(f"unverified {cache.unverified.sha256} demo/demo-0.9.tar.gz")
    total = human_size(report.bytes)
    assert summary == f"checked 3 files ({total}): 1 ok, 1 corrupt, 1 unverified, 1 removed"
    data = json.loads(json.dumps(report.to_json()))
    assert data["corrupt"][0]["sha256"] == cache.good.sha256
    assert data["corrupt"][0]["path"] == str(cache.good.path)
    assert len(progress) == 3 and progress[-1].startswith("3/3 ")


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KB"), (5 << 20, "5.0 MB"), (9 << 40, "9.0 TB")],
)
def test_human_size(size: int, text: str) -> None:
    assert human_size(size) == text


# --- Throttle --------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("elapsed", "amount", "expected"),
    [
        (0.0, 1000, 1.0),  # 1000 units at 1000/s: wait a second
        (0.25, 1000, 0.75),  # part of the time already went into the work
        (1.0, 1000, 0.0),  # exactly on schedule
        (5.0, 1000, 0.0),  # far behind: forgiven, no wait
    ],
)
def test_throttle_paces_to_the_average_rate(elapsed: float, amount: int, expected: float) -> None:
    clock = FakeClock()
    throttle = Throttle(1000, clock)
    clock.now += elapsed
    assert throttle.delay(amount) == pytest.approx(expected)


def test_throttle_does_not_burst_after_a_stall() -> None:
    clock = FakeClock()
    throttle = Throttle(1000, clock)
    clock.now += 10.0  # stalled ten seconds on a slow disk
    assert throttle.delay(1000) == 0.0
    # The debt is forgiven: the next unit is paced from now, not allowed as catch-up.
    assert throttle.delay(1000) == pytest.approx(1.0)


# --- Scrubber --------------------------------------------------------------------------


def scrubber(cache: Cache, metrics: Metrics, rate: int, **options: float) -> Scrubber:
    return Scrubber(cache.dir, cache.index, cache.blobs, metrics, rate, **options)


def checks(metrics: Metrics, result: str) -> float:
    return metric_value(metrics.render().decode(), "pipgate_integrity_checks_total", result=result)


async def stop(task: asyncio.Task[None]) -> None:
    """Cancel the scrubber and require it to end within a second."""
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=1.0)


async def test_scrubber_removes_the_corrupt_blob_and_counts_every_file(cache: Cache) -> None:
    flip_byte(cache.good.path)
    metrics = Metrics()
    size_before, _ = await cache.index.totals()
    task = asyncio.create_task(scrubber(cache, metrics, 1 << 30).run())

    def pass_done() -> bool:
        return sum(checks(metrics, r) for r in ("ok", "corrupt", "unverified")) == 3

    await eventually(pass_done)
    await stop(task)

    assert (checks(metrics, "ok"), checks(metrics, "corrupt")) == (1, 1)
    assert checks(metrics, "unverified") == 1
    assert not cache.good.path.exists()
    assert await cache.index.get_blob(cache.good.sha256) is None
    assert await cache.index.total_size() == size_before - cache.good.size
    assert metric_value(metrics.render().decode(), "pipgate_cache_size_bytes") == (
        size_before - cache.good.size
    )
    assert cache.other.path.exists() and cache.unverified.path.exists()


async def test_scrubber_stops_promptly_while_throttled_and_releases_its_lock(
    cache: Cache,
) -> None:
    metrics = Metrics()
    # One byte per second: after the first chunk it would sleep for hours.
    task = asyncio.create_task(scrubber(cache, metrics, 1).run())

    def hashing_started() -> bool:
        return DownloadLock.is_held(cache.blobs.locks / "scrub.lock")

    await eventually(hashing_started)
    await stop(task)

    guard = try_exclusive(cache.blobs.locks / "scrub.lock")
    assert guard is not None, "the scrub lock is free again"
    os.close(guard)


async def test_only_the_worker_holding_the_scrub_lock_scrubs(cache: Cache) -> None:
    flip_byte(cache.good.path)
    metrics = Metrics()
    other_worker = try_exclusive(cache.blobs.locks / "scrub.lock")
    assert other_worker is not None
    task = asyncio.create_task(scrubber(cache, metrics, 1 << 30, lock_retry=0.01).run())
    try:
        await asyncio.sleep(0.1)  # several retries, all refused
        assert cache.good.path.exists() and checks(metrics, "corrupt") == 0
    finally:
        os.close(other_worker)  # the other worker exits

    def repaired() -> bool:
        return not cache.good.path.exists()

    await eventually(repaired)
    await stop(task)


async def test_scrub_pass_resumes_after_the_saved_cursor(cache: Cache) -> None:
    shas = sorted(blob.sha256 for blob in (cache.good, cache.other, cache.unverified))
    (cache.dir / "scrub.json").write_text(json.dumps({"cursor": shas[0]}))

    results = await scrubber(cache, Metrics(), 1 << 30).scrub_pass()

    assert sum(results[r] for r in ("ok", "unverified", "corrupt")) == 2
    state = json.loads((cache.dir / "scrub.json").read_text())
    assert state["cursor"] == "" and state["finished_at"] > 0


async def test_scrubber_waits_out_the_interval_after_a_recent_full_pass(cache: Cache) -> None:
    flip_byte(cache.good.path)
    (cache.dir / "scrub.json").write_text(json.dumps({"cursor": "", "finished_at": time.time()}))
    task = asyncio.create_task(scrubber(cache, Metrics(), 1 << 30).run())
    await asyncio.sleep(0.1)
    await stop(task)
    assert cache.good.path.exists(), "a restart does not start a new pass at once"


async def test_scrubber_with_rate_zero_is_disabled(cache: Cache) -> None:
    flip_byte(cache.good.path)

    await asyncio.wait_for(scrubber(cache, Metrics(), 0).run(), timeout=1.0)

    assert cache.good.path.exists()
    assert not (cache.blobs.locks / "scrub.lock").exists()


async def test_blob_evicted_during_a_pass_is_skipped(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    listed = list(cache.blobs.iter_blobs())
    gone = "f" * 64  # listed when the pass started, evicted before its turn
    monkeypatch.setattr(cache.blobs, "iter_blobs", lambda: iter([*listed, (gone, Path("/gone"))]))
    metrics = Metrics()

    results = await scrubber(cache, metrics, 1 << 30).scrub_pass()

    assert (results["ok"], results["unverified"], results["corrupt"]) == (2, 1, 0)
    assert sum(checks(metrics, r) for r in ("ok", "unverified", "corrupt", "error")) == 3


@pytest.mark.parametrize("state", ["", "not json", "[]", '{"cursor": 1, "finished_at": "x"}'])
async def test_garbled_scrub_state_means_a_full_pass(cache: Cache, state: str) -> None:
    (cache.dir / "scrub.json").write_text(state)

    results = await scrubber(cache, Metrics(), 1 << 30).scrub_pass()

    assert results["ok"] + results["unverified"] == 3
