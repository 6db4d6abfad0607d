"""Files through pipgate: verified before cached, served with exact HTTP semantics."""

from __future__ import annotations

import hashlib
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from pipgate.upstream import client as upstream_client
from pipgate.web.state import SERVICES
from tests.conftest import GateFactory
from tests.support.fake_pypi import FakePyPI
from tests.support.links import file_path
from tests.support.metrics import metric_value
from tests.support.packages import BuiltDist, build_wheel, sample_tree

JSON = "application/vnd.pypi.simple.v1+json"
ALPHA = "alpha-1.0-py3-none-any.whl"


def dist(filename: str) -> BuiltDist:
    return next(d for d in sample_tree() if d.filename == filename)


async def metric(gate: TestClient, name: str, **labels: str) -> float:
    return metric_value(await (await gate.get("/metrics")).text(), name, **labels)


async def test_file_urls_are_stable_content_addressed_and_end_in_filename(gate: TestClient) -> None:
    path = await file_path(gate, "alpha", ALPHA)
    assert path == f"/files/alpha/{dist(ALPHA).sha256}/{ALPHA}"


async def test_first_download_streams_then_cache_serves_without_upstream(
    gate: TestClient, upstream: FakePyPI
) -> None:
    path = await file_path(gate, "alpha", ALPHA)
    first = await gate.get(path)
    assert first.status == 200
    assert first.headers["X-Pipgate-Cache"] == "miss"
    assert await first.read() == dist(ALPHA).data
    second = await gate.get(path)
    assert second.headers["X-Pipgate-Cache"] == "hit"
    assert int(second.headers["Content-Length"]) == dist(ALPHA).size
    assert hashlib.sha256(await second.read()).hexdigest() == dist(ALPHA).sha256
    assert upstream.downloads(ALPHA) == 1


async def test_the_requests_right_after_a_download_write_no_access_time(
    gate: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blob committed a moment ago has its access time (the record set it): an
    install that follows a cold one (a CI herd, a second job) writes none."""
    path = await file_path(gate, "alpha", ALPHA)
    # Metadata first, as installers ask (after the wheel it would be derived from it).
    assert (await gate.get(path + ".metadata")).headers["X-Pipgate-Cache"] == "miss"
    assert (await gate.get(path)).headers["X-Pipgate-Cache"] == "miss"
    files = gate.server.app[SERVICES].files
    looked_up: list[str] = []
    monkeypatch.setattr(files._catalog, "touch", lambda *args: looked_up.append("touch"))
    wheel, metadata = await gate.get(path), await gate.get(path + ".metadata")
    assert wheel.headers["X-Pipgate-Cache"] == metadata.headers["X-Pipgate-Cache"] == "hit"
    assert await wheel.read() == dist(ALPHA).data
    assert hashlib.sha256(await metadata.read()).hexdigest() == dist(ALPHA).metadata_sha256
    assert looked_up == []


async def test_head_etag_and_conditional_get(gate: TestClient) -> None:
    path = await file_path(gate, "alpha", ALPHA)
    await (await gate.get(path)).read()
    head = await gate.head(path)
    assert head.status == 200
    assert head.headers["Content-Length"] == str(dist(ALPHA).size)
    assert head.headers["Accept-Ranges"] == "bytes"
    assert head.headers["ETag"] == f'"{dist(ALPHA).sha256}"'
    assert head.headers["Content-Type"] == "application/zip"
    assert "Content-Encoding" not in head.headers
    cond = await gate.get(path, headers={"If-None-Match": head.headers["ETag"]})
    assert cond.status == 304


@pytest.mark.parametrize(
    ("header", "status", "content_range", "slice_"),
    [
        ("bytes=0-9", 206, "bytes 0-9/{n}", slice(0, 10)),
        ("bytes=10-", 206, "bytes 10-{last}/{n}", slice(10, None)),
        ("bytes=-100", 206, "bytes {tail}-{last}/{n}", slice(-100, None)),
        ("bytes=0-99999999", 206, "bytes 0-{last}/{n}", slice(0, None)),
        ("bytes=99999999-", 416, "bytes */{n}", None),
        ("bytes=0-1,5-6", 200, None, slice(0, None)),
        ("items=0-1", 200, None, slice(0, None)),
        ("bytes=5-2", 200, None, slice(0, None)),
    ],
)
async def test_range_requests_on_cached_file(
    gate: TestClient,
    header: str,
    status: int,
    content_range: str | None,
    slice_: slice | None,
) -> None:
    path = await file_path(gate, "alpha", ALPHA)
    await (await gate.get(path)).read()
    data = dist(ALPHA).data
    n = len(data)
    resp = await gate.get(path, headers={"Range": header})
    assert resp.status == status
    if content_range:
        assert resp.headers["Content-Range"] == content_range.format(n=n, last=n - 1, tail=n - 100)
    if slice_ is not None:
        assert await resp.read() == data[slice_]


async def test_if_range_with_other_etag_gets_whole_file(gate: TestClient) -> None:
    path = await file_path(gate, "alpha", ALPHA)
    await (await gate.get(path)).read()
    etag = f'"{dist(ALPHA).sha256}"'
    resumed = await gate.get(path, headers={"Range": "bytes=100-", "If-Range": etag})
    assert resumed.status == 206
    changed = await gate.get(path, headers={"Range": "bytes=100-", "If-Range": '"other"'})
    assert changed.status == 200
    assert await changed.read() == dist(ALPHA).data


async def test_pep658_metadata_is_served_verified_and_cached(
    gate: TestClient, upstream: FakePyPI
) -> None:
    path = await file_path(gate, "alpha", ALPHA)
    for _ in range(2):
        resp = await gate.get(path + ".metadata")
        assert resp.status == 200
        assert await resp.read() == dist(ALPHA).metadata
    assert upstream.count(upstream.file_path(dist(ALPHA)) + ".metadata") == 1


async def test_corrupt_metadata_is_refused(gate: TestClient, upstream: FakePyPI) -> None:
    upstream.corrupt.add(ALPHA + ".metadata")
    path = await file_path(gate, "alpha", ALPHA)
    resp = await gate.get(path + ".metadata")
    assert resp.status == 503
    assert resp.headers["X-Pipgate-Reason"] == "hash_mismatch"


async def test_hash_mismatch_aborts_the_body_and_counts_the_failure(
    gate: TestClient, upstream: FakePyPI
) -> None:
    big = build_wheel("bigpkg", "1.0", pad_to=1 << 20)  # streamed: over the memory tier
    upstream.add(big)
    upstream.corrupt.add(big.filename)
    path = await file_path(gate, "bigpkg", big.filename)
    resp = await gate.get(path)
    assert resp.status == 200  # headers were sent while the bytes streamed
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    assert await metric(gate, "pipgate_download_failures_total", reason="hash_mismatch") == 1
    retry = await gate.get(path)
    assert retry.status == 503 and retry.headers["X-Pipgate-Reason"] == "hash_mismatch"
    assert upstream.downloads(big.filename) == 1


async def test_a_small_file_that_fails_verification_is_refused_whole(
    gate: TestClient, upstream: FakePyPI
) -> None:
    """A small file reaches its first readers whole once verified (from memory), so a
    bad one is a clean 503 with the cause: not one byte of it was sent."""
    upstream.corrupt.add(ALPHA)
    path = await file_path(gate, "alpha", ALPHA)
    resp = await gate.get(path)
    assert resp.status == 503
    assert resp.headers["X-Pipgate-Reason"] == "hash_mismatch"
    assert dist(ALPHA).data[:100] not in await resp.read()
    assert await metric(gate, "pipgate_download_failures_total", reason="hash_mismatch") == 1
    # An immediate retry is refused with the cause (in the reason phrase pip prints):
    # fetching the same bad bytes again helps nobody; nothing was cached.
    retry = await gate.get(path)
    assert retry.status == 503 and retry.headers["X-Pipgate-Reason"] == "hash_mismatch"
    assert "failed verification upstream (hash_mismatch)" in retry.reason
    assert upstream.downloads(ALPHA) == 1
    assert not any((Path(gate.app[SERVICES].config.cache_dir) / "blobs").rglob(dist(ALPHA).sha256))


async def test_bytes_not_yet_verified_carry_a_weak_etag_that_never_resumes(
    gate: TestClient,
) -> None:
    """A client cut off a download that then failed holds wrong bytes: its resume with
    ``If-Range`` must get the whole file, never the right tail joined to them."""
    path = await file_path(gate, "alpha", ALPHA)
    streamed = await gate.get(path)
    assert streamed.headers["X-Pipgate-Cache"] == "miss"
    weak = streamed.headers["ETag"]
    assert weak == f'W/"{dist(ALPHA).sha256}"'
    await streamed.read()
    resumed = await gate.get(path, headers={"Range": "bytes=100-", "If-Range": weak})
    assert resumed.status == 200 and resumed.headers["ETag"] == f'"{dist(ALPHA).sha256}"'
    assert await resumed.read() == dist(ALPHA).data
    # If-None-Match compares weakly: the weak tag still validates a cached copy.
    assert (await gate.get(path, headers={"If-None-Match": weak})).status == 304


async def test_broken_upstream_body_is_resumed_into_one_complete_response(
    gate: TestClient, upstream: FakePyPI
) -> None:
    big = build_wheel("bigpkg", "1.0", pad_to=2 << 20)
    upstream.add(big)
    upstream.truncate[big.filename] = 1 << 20  # every response breaks after 1 MiB
    path = await file_path(gate, "bigpkg", big.filename)
    resp = await gate.get(path)
    assert resp.status == 200
    assert await resp.read() == big.data  # one uninterrupted body for the client
    assert await metric(gate, "pipgate_download_resumes_total") >= 1
    resumed = [h for h in upstream.headers_for(upstream.file_path(big)) if "range" in h]
    assert resumed and all(h["range"].startswith("bytes=") for h in resumed)
    assert all(h.get("if-range") for h in resumed)  # guarded by the first response's ETag
    assert (await gate.get(path)).headers["X-Pipgate-Cache"] == "hit"


async def test_body_that_keeps_breaking_aborts_the_client_and_is_never_cached(
    gate: TestClient, upstream: FakePyPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upstream_client, "MAX_RESUMES", 1)
    big = build_wheel("bigpkg", "1.0", pad_to=2 << 20)
    upstream.add(big)
    upstream.truncate[big.filename] = 1 << 20
    upstream.no_ranges.add(big.filename)  # resuming yields no progress
    path = await file_path(gate, "bigpkg", big.filename)
    resp = await gate.get(path)
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    assert await metric(gate, "pipgate_download_failures_total", reason="truncated") == 1
    upstream.truncate.clear()
    ok = await gate.get(path)
    assert ok.headers["X-Pipgate-Cache"] == "miss"
    assert await ok.read() == big.data


@pytest.mark.parametrize(("status", "expected"), [(404, 404), (503, 503), (403, 502)])
async def test_upstream_file_errors_map_to_clear_statuses(
    gate: TestClient, upstream: FakePyPI, status: int, expected: int
) -> None:
    path = await file_path(gate, "alpha", ALPHA)
    upstream.file_status = status
    resp = await gate.get(path)
    assert resp.status == expected
    assert "Traceback" not in await resp.text()


async def test_cache_metrics_count_hits_and_misses(gate: TestClient) -> None:
    path = await file_path(gate, "alpha", ALPHA)
    await (await gate.get(path)).read()
    await (await gate.get(path)).read()
    assert await metric(gate, "pipgate_cache_requests_total", kind="file", result="miss") == 1
    assert await metric(gate, "pipgate_cache_requests_total", kind="file", result="hit") == 1
    assert await metric(gate, "pipgate_cache_requests_total", kind="page", result="miss") == 1


async def test_small_file_corrupted_on_disk_is_never_sent_and_is_fetched_again(
    make_gate: GateFactory, upstream: FakePyPI
) -> None:
    """Small blobs are answered from memory after one verified read: a blob that rotted
    on disk before that read is removed and downloaded again, not sent."""
    first = await make_gate()
    path = await file_path(first, "alpha", ALPHA)
    await (await first.get(path)).read()  # the miss: downloaded and committed
    blob = first.server.app[SERVICES].blobs.path(dist(ALPHA).sha256)
    good = blob.read_bytes()
    blob.write_bytes(bytes([good[0] ^ 0xFF]) + good[1:])  # bit rot, same length

    # Another worker of the same cache (the first keeps the bytes it downloaded).
    gate = await make_gate()
    again = await gate.get(path)
    assert again.status == 200
    assert await again.read() == dist(ALPHA).data
    assert upstream.downloads(ALPHA) == 2
    assert blob.read_bytes() == good  # the fresh download replaced the rotten blob
    assert await metric(gate, "pipgate_integrity_checks_total", result="corrupt") == 1


async def test_small_file_from_memory_keeps_range_head_and_etag(gate: TestClient) -> None:
    path = await file_path(gate, "alpha", ALPHA)
    await (await gate.get(path)).read()
    data = dist(ALPHA).data
    blob = gate.server.app[SERVICES].blobs.path(dist(ALPHA).sha256)
    for _ in range(2):  # the first hit reads the disk, the second is memory only
        whole = await gate.get(path)
        assert (whole.status, await whole.read()) == (200, data)
        assert whole.headers["ETag"] == f'"{dist(ALPHA).sha256}"'
        part = await gate.get(path, headers={"Range": "bytes=3-9"})
        assert (part.status, await part.read()) == (206, data[3:10])
        head = await gate.head(path)
        assert head.headers["Content-Length"] == str(len(data))
    blob.unlink()  # served from memory now: the disk copy is no longer read
    assert await (await gate.get(path)).read() == data
