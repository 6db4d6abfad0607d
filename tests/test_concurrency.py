"""Many clients, one upstream download, bytes flowing before the download completes."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from pipgate.app import create_app
from pipgate.store import downloads
from pipgate.store.blobs import BlobStore
from tests.conftest import GateFactory, gate_config
from tests.support.fake_pypi import FakePyPI
from tests.support.links import file_path
from tests.support.packages import BuiltDist, build_wheel

JSON = "application/vnd.pypi.simple.v1+json"


async def test_twenty_clients_share_one_upstream_download_and_stream_early(
    gate: TestClient, upstream: FakePyPI, slow_big: BuiltDist, tmp_path: Path
) -> None:
    path = await file_path(gate, slow_big.project, slow_big.filename)
    blobs = BlobStore(tmp_path / "cache")
    committed_at_first_byte: list[bool] = []

    async def client() -> str:
        digest = hashlib.sha256()
        async with gate.session.get(gate.make_url(path)) as resp:
            assert resp.status == 200
            assert resp.content_length == slow_big.size
            first = True
            async for chunk in resp.content.iter_any():
                if first:
                    committed_at_first_byte.append(blobs.exists(slow_big.sha256))
                    first = False
                digest.update(chunk)
        return digest.hexdigest()

    results = await asyncio.gather(*(client() for _ in range(20)))
    assert results == [slow_big.sha256] * 20
    assert upstream.downloads(slow_big.filename) == 1
    # Every client had bytes while the file was still arriving from upstream.
    assert committed_at_first_byte == [False] * 20


async def test_late_joiner_reads_what_is_on_disk_then_follows(
    gate: TestClient, upstream: FakePyPI, slow_big: BuiltDist
) -> None:
    path = await file_path(gate, slow_big.project, slow_big.filename)
    async with gate.session.get(gate.make_url(path)) as early:
        await early.content.readexactly(1 << 20)  # the download is well under way
        late = await gate.get(path)
        assert late.headers["X-Pipgate-Cache"] == "miss"
        late_body = await late.read()
        rest = await early.read()
    assert late_body == slow_big.data
    assert len(rest) == slow_big.size - (1 << 20)
    assert upstream.downloads(slow_big.filename) == 1


@pytest.mark.parametrize(
    ("header", "expected_status", "window"),
    [("bytes=0-99", 206, slice(0, 100)), ("bytes=-100", 206, slice(-100, None))],
)
async def test_ranges_are_served_while_the_file_is_still_downloading(
    gate: TestClient,
    slow_big: BuiltDist,
    header: str,
    expected_status: int,
    window: slice,
) -> None:
    path = await file_path(gate, slow_big.project, slow_big.filename)
    async with gate.session.get(gate.make_url(path)) as first:
        await first.content.readexactly(1024)
        ranged = await gate.get(path, headers={"Range": header})
        assert ranged.status == expected_status
        n = slow_big.size
        start = window.start % n if window.start is not None else 0
        last = (window.stop - 1) if window.stop is not None else n - 1
        assert ranged.headers["Content-Range"] == f"bytes {start}-{last}/{n}"
        assert await ranged.read() == slow_big.data[window]
        await first.read()


async def test_corrupt_download_aborts_every_concurrent_reader(
    gate: TestClient, upstream: FakePyPI, slow_big: BuiltDist, tmp_path: Path
) -> None:
    upstream.corrupt.add(slow_big.filename)
    path = await file_path(gate, slow_big.project, slow_big.filename)

    async def client() -> int:
        received = 0
        async with gate.session.get(gate.make_url(path)) as resp:
            try:
                async for chunk in resp.content.iter_any():
                    received += len(chunk)
            except Exception:
                return received
        raise AssertionError(f"a client got a complete body ({received} bytes)")

    received = await asyncio.gather(*(client() for _ in range(5)))
    assert all(r < slow_big.size for r in received)
    assert not BlobStore(tmp_path / "cache").exists(slow_big.sha256)


async def test_cancelled_client_does_not_cancel_the_shared_download(
    make_gate: GateFactory, upstream: FakePyPI, slow_big: BuiltDist
) -> None:
    gate = await make_gate()
    path = await file_path(gate, slow_big.project, slow_big.filename)
    quitter = await gate.get(path)
    await quitter.content.readexactly(1024)
    quitter.close()  # goes away mid-body
    stayer = await gate.get(path)
    assert await stayer.read() == slow_big.data
    assert upstream.downloads(slow_big.filename) == 1


async def _two_gates(
    aiohttp_client: Any, upstream: FakePyPI, tmp_path: Path
) -> tuple[TestClient, TestClient]:
    """Two pipgate apps on one cache directory: the owner/follower path of workers.

    flock locks belong to open file descriptions, so two apps in one process contend
    exactly as two worker processes do.
    """
    cache = tmp_path / "shared-cache"
    first = await aiohttp_client(create_app(gate_config(cache, upstream)))
    second = await aiohttp_client(create_app(gate_config(cache, upstream)))
    return first, second


async def test_a_second_worker_follows_the_first_workers_download(
    aiohttp_client: Any, upstream: FakePyPI, slow_big: BuiltDist, tmp_path: Path
) -> None:
    first, second = await _two_gates(aiohttp_client, upstream, tmp_path)
    path = await file_path(first, slow_big.project, slow_big.filename)
    await file_path(second, slow_big.project, slow_big.filename)
    leader = await first.get(path)
    await leader.content.readexactly(1024)  # the first app owns the download now
    follower = await second.get(path)
    follower_body, leader_rest = await asyncio.gather(follower.read(), leader.read())
    assert follower_body == slow_big.data
    assert len(leader_rest) == slow_big.size - 1024
    assert upstream.downloads(slow_big.filename) == 1


async def test_followers_are_aborted_when_the_owners_download_fails(
    aiohttp_client: Any, upstream: FakePyPI, slow_big: BuiltDist, tmp_path: Path
) -> None:
    upstream.corrupt.add(slow_big.filename)
    first, second = await _two_gates(aiohttp_client, upstream, tmp_path)
    path = await file_path(first, slow_big.project, slow_big.filename)
    await file_path(second, slow_big.project, slow_big.filename)
    leader = await first.get(path)
    await leader.content.readexactly(1024)
    follower = await second.get(path)
    assert follower.status == 200
    for response in (leader, follower):
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    assert upstream.downloads(slow_big.filename) == 1


async def test_another_worker_follows_a_slow_small_download_from_its_start(
    make_gate: GateFactory, upstream: FakePyPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small file is held in memory until whole, so its temp file appears only at the
    end; the owner publishes its state when it claims the download, so another worker
    (here a second app on the same cache) follows it at once instead of timing out."""
    monkeypatch.setattr(downloads, "FOLLOW_START_TIMEOUT", 0.5)
    dist = build_wheel("slowsmall", "1.0", pad_to=150_000)  # within the memory tier
    upstream.add(dist, metadata=False)
    upstream.chunk_size = 16 * 1024
    upstream.file_delay = 0.12  # ~1.1 s in all: longer than the follower's start timeout
    owner, follower = await make_gate(), await make_gate()
    path = await file_path(owner, dist.project, dist.filename)

    async def fetch(gate: TestClient, delay: float) -> bytes:
        await asyncio.sleep(delay)
        resp = await gate.get(path)
        assert resp.status == 200, await resp.text()
        return await resp.read()

    first, second = await asyncio.wait_for(
        asyncio.gather(fetch(owner, 0), fetch(follower, 0.2)), timeout=20
    )
    assert first == second == dist.data
    assert upstream.downloads(dist.filename) == 1
