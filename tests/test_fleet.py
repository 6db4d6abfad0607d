"""Several replicas as one cache (issue 14): real ``pipgate serve`` processes sharing a
SeaweedFS bucket and a Redis, in front of one fake PyPI; all on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.fake_pypi import FakePyPI
from tests.support.fake_s3 import FakeS3
from tests.support.packages import BuiltDist, build_wheel
from tests.support.redis_server import RedisServer, redis_binary
from tests.support.seaweed import SeaweedFS
from tests.support.server import PipgateProcess

pytestmark = pytest.mark.timeout(120)

JSON = "application/vnd.pypi.simple.v1+json"
SECRET = "fleet-secret-0123456789"
#: Short leases, so a dead holder is taken over within seconds.
LEASE_TTL = "2s"


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    if redis_binary() is None:
        reason = "redis-server not found: scripts/test.sh installs it with apt"
        print(reason)
        pytest.skip(reason)
    server = RedisServer(tmp_path / "redis")
    server.workdir.mkdir(parents=True, exist_ok=True)
    server.start()
    yield server
    server.stop()


class Fleet:
    """``n`` replicas sharing one bucket prefix and one Redis."""

    def __init__(
        self, upstream: FakePyPI, root: Path, seaweed: SeaweedFS, redis: RedisServer
    ) -> None:
        self.upstream = upstream
        self.root = root
        self.seaweed = seaweed
        self.redis = redis
        self.prefix = f"fleet-{uuid.uuid4().hex[:10]}/"
        self.replicas: list[PipgateProcess] = []

    def env(self, name: str, port: int) -> dict[str, str]:
        return {
            "PIPGATE_STORAGE": "s3",
            "PIPGATE_S3_ENDPOINT": self.seaweed.endpoint,
            "PIPGATE_S3_BUCKET": self.seaweed.bucket,
            "PIPGATE_S3_PREFIX": self.prefix,
            "PIPGATE_S3_ACCESS_KEY_ENV": "FLEET_TEST_AK",
            "PIPGATE_S3_SECRET_KEY_ENV": "FLEET_TEST_SK",
            "FLEET_TEST_AK": self.seaweed.access_key,
            "FLEET_TEST_SK": self.seaweed.secret_key,
            "PIPGATE_COORDINATION": "redis",
            "PIPGATE_REDIS_URL": self.redis.url,
            "PIPGATE_FLEET_SECRET_ENV": "FLEET_TEST_SECRET",
            "FLEET_TEST_SECRET": SECRET,
            "PIPGATE_REPLICA": name,
            "PIPGATE_ADVERTISE_URL": f"http://127.0.0.1:{port}",
            "PIPGATE_LEASE_TTL": LEASE_TTL,
            "PIPGATE_PAGE_FETCH_RATE": "0",
            "PIPGATE_CLIENT_PAGE_FETCH_RATE": "0",
            "PIPGATE_MAX_CLIENT_DOWNLOADS": "64",
        }

    def add(self) -> PipgateProcess:
        name = f"r{len(self.replicas) + 1}"
        proc = PipgateProcess(upstream=self.upstream.index_url, cache_dir=self.root / name)
        proc.env = self.env(name, proc.port)
        self.replicas.append(proc.start())
        return proc

    def stop(self) -> None:
        for proc in self.replicas:
            proc.stop()


@pytest.fixture
def fleet(
    upstream: FakePyPI, tmp_path: Path, seaweed: SeaweedFS, redis: RedisServer
) -> Iterator[Fleet]:
    group = Fleet(upstream, tmp_path, seaweed, redis)
    yield group
    group.stop()


def slow_wheel(
    upstream: FakePyPI, name: str, size: int = 4 << 20, delay: float = 0.02
) -> BuiltDist:
    dist = build_wheel(name, "1.0", pad_to=size)
    upstream.add(dist, metadata=False)
    upstream.file_delay = delay
    return dist


async def file_url(session: aiohttp.ClientSession, replica: PipgateProcess, dist: BuiltDist) -> str:
    async with session.get(
        f"{replica.url}/simple/{dist.project}/", headers={"Accept": JSON}
    ) as resp:
        assert resp.status == 200, await resp.text()
        page = await resp.json()
    (entry,) = [f for f in page["files"] if f["filename"] == dist.filename]
    url = entry["url"].split("#")[0]
    return url if "://" in url else f"{replica.url}/simple/{dist.project}/{url}"


def path_of(url: str) -> str:
    return "/" + url.split("://", 1)[1].partition("/")[2]


def local_blob(replica: PipgateProcess, sha256: str) -> Path:
    return replica.cache_dir / "blobs" / sha256[:2] / sha256[2:4] / sha256


def get_json(url: str) -> dict[str, object]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


async def fetch(
    session: aiohttp.ClientSession, url: str, on_first_byte: list[float] | None = None
) -> tuple[int, int | None, bytes]:
    """(status, Content-Length, body); a cut body raises."""
    async with session.get(url) as resp:
        body = bytearray()
        async for chunk in resp.content.iter_any():
            if not body and on_first_byte is not None:
                on_first_byte.append(time.monotonic())
            body += chunk
        return resp.status, resp.content_length, bytes(body)


async def test_a_herd_over_three_replicas_causes_one_upstream_get_and_streams_early(
    fleet: Fleet, upstream: FakePyPI
) -> None:
    dist = slow_wheel(upstream, "herdpkg")
    replicas = [fleet.add() for _ in range(3)]
    async with aiohttp.ClientSession() as session:
        urls = [await file_url(session, r, dist) for r in replicas]
        # One upstream page fetch for the fleet: the others took the shared page.
        assert upstream.count(f"/simple/{dist.project}/") == 1
        committed_at_first_byte: list[bool] = []

        async def client(n: int) -> str:
            replica = replicas[n % 3]
            async with session.get(urls[n % 3]) as resp:
                assert resp.status == 200
                digest = hashlib.sha256()
                first = True
                async for chunk in resp.content.iter_any():
                    if first:
                        committed_at_first_byte.append(
                            any(local_blob(r, dist.sha256).exists() for r in replicas)
                        )
                        first = False
                    digest.update(chunk)
                assert resp.content_length == dist.size, replica.url
                return digest.hexdigest()

        results = await asyncio.gather(*(client(n) for n in range(32)))
    assert results == [dist.sha256] * 32
    assert upstream.downloads(dist.filename) == 1
    # Every client had bytes before any replica had the verified file.
    assert committed_at_first_byte == [False] * 32


async def test_a_committed_file_reaches_a_new_replica_from_the_bucket(
    fleet: Fleet, upstream: FakePyPI
) -> None:
    dist = slow_wheel(upstream, "bucketpkg", size=1 << 20, delay=0)
    first = fleet.add()
    async with aiohttp.ClientSession() as session:
        url = await file_url(session, first, dist)
        status, _, body = await fetch(session, url)
        assert (status, hashlib.sha256(body).hexdigest()) == (200, dist.sha256)
        await in_bucket(fleet, dist.sha256)
        first.stop()
        second = fleet.add()  # nobody to stream from: the bucket has it
        url2 = await file_url(session, second, dist)
        status, _, body = await fetch(session, url2)
    assert (status, hashlib.sha256(body).hexdigest()) == (200, dist.sha256)
    assert upstream.downloads(dist.filename) == 1


async def test_killing_the_lease_holder_mid_download_never_completes_a_wrong_body(
    fleet: Fleet, upstream: FakePyPI
) -> None:
    dist = slow_wheel(upstream, "killpkg", delay=0.05)  # ~3 s from upstream
    holder, r2, r3 = (fleet.add() for _ in range(3))
    async with aiohttp.ClientSession() as session:
        urls = {r: await file_url(session, r, dist) for r in (holder, r2, r3)}
        async with session.get(urls[holder]) as lead:
            await lead.content.readexactly(256 << 10)  # the holder is downloading
            readers = [asyncio.create_task(fetch(session, urls[r])) for r in (r2, r3, r2, r3)]
            await asyncio.sleep(0.5)  # the readers stream from the holder now
            assert holder.proc is not None
            holder.proc.send_signal(signal.SIGKILL)
            holder.proc.wait(10)
        outcomes = await asyncio.gather(*readers, return_exceptions=True)
        complete = 0
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                continue  # an aborted body: allowed
            status, length, body = outcome
            if status == 200 and length == len(body):
                assert hashlib.sha256(body).hexdigest() == dist.sha256
                complete += 1
        # A takeover lets them finish: they do here (the holder's lease expires in 2 s).
        assert complete == len(outcomes)
        # And afterwards every replica serves it, the restarted one too.
        holder.start()
        for replica in (r2, r3, holder):
            status, _, body = await fetch(session, await file_url(session, replica, dist))
            assert (status, hashlib.sha256(body).hexdigest()) == (200, dist.sha256)
    takeovers = sum(metric(r, "pipgate_fleet_takeovers_total") for r in (r2, r3))
    assert takeovers >= 1
    assert upstream.downloads(dist.filename) <= 3  # the first, a takeover, at most one more


def metric(replica: PipgateProcess, name: str) -> float:
    with urllib.request.urlopen(replica.url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_with_redis_gone_replicas_serve_on_their_own_and_rejoin_when_it_returns(
    fleet: Fleet, upstream: FakePyPI
) -> None:
    alone = slow_wheel(upstream, "alonepkg", size=1 << 20, delay=0.005)
    together = build_wheel("togetherpkg", "1.0", pad_to=2 << 20)
    upstream.add(together, metadata=False)
    r1, r2 = fleet.add(), fleet.add()
    async with aiohttp.ClientSession() as session:
        fleet.redis.stop()
        urls = [await file_url(session, r, alone) for r in (r1, r2)]
        results = await asyncio.gather(*(fetch(session, u) for u in urls * 2))
        assert [hashlib.sha256(b).hexdigest() for _, _, b in results] == [alone.sha256] * 4
        assert 1 <= upstream.downloads(alone.filename) <= 2  # duplicates allowed
        ready = get_json(r1.url + "/readyz")
        assert ready["ready"] is True
        assert "degraded" in str(ready["fleet"])  # type: ignore[index]
        assert metric(r1, "pipgate_fleet_coordination_up") == 0

        fleet.redis.start()
        deadline = time.monotonic() + 15
        while "degraded" in str(get_json(r2.url + "/readyz").get("fleet")) or "degraded" in str(
            get_json(r1.url + "/readyz").get("fleet")
        ):
            assert time.monotonic() < deadline, "coordination did not come back"
            await asyncio.sleep(0.2)
        upstream.file_delay = 0.02
        urls = [await file_url(session, r, together) for r in (r1, r2)]
        results = await asyncio.gather(*(fetch(session, u) for u in urls * 4))
    assert [hashlib.sha256(b).hexdigest() for _, _, b in results] == [together.sha256] * 8
    assert upstream.downloads(together.filename) == 1  # one fetch for the fleet again


async def test_a_quarantine_on_one_replica_reaches_the_others_within_a_second(
    fleet: Fleet, upstream: FakePyPI
) -> None:
    dist = slow_wheel(upstream, "quarpkg", size=64 << 10, delay=0)
    r1, r2 = fleet.add(), fleet.add()
    async with aiohttp.ClientSession() as session:
        await file_url(session, r2, dist)  # visible everywhere first
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIPGATE_")}
        done = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "pipgate",
                "quarantine",
                "add",
                dist.project,
                "--reason",
                "test",
                "--cache-dir",
                str(r1.cache_dir),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        changed_at = time.monotonic()
        while True:
            async with session.get(
                f"{r2.url}/simple/{dist.project}/", headers={"Accept": JSON}
            ) as resp:
                files = (await resp.json())["files"] if resp.status == 200 else []
            if not files:
                break
            assert time.monotonic() - changed_at < 2.0, "quarantine not in force on r2"
            await asyncio.sleep(0.05)


async def test_the_fleet_endpoint_needs_the_secret(fleet: Fleet, upstream: FakePyPI) -> None:
    dist = slow_wheel(upstream, "secretpkg", size=64 << 10, delay=0)
    r1 = fleet.add()
    async with aiohttp.ClientSession() as session:
        url = await file_url(session, r1, dist)
        await fetch(session, url)
        blob = f"{r1.url}/-/fleet/blobs/{dist.sha256}"
        for headers in ({}, {"X-Pipgate-Fleet-Secret": "wrong-secret-wrong-secret"}):
            async with session.get(blob, headers=headers) as resp:
                assert resp.status == 403
        async with session.get(blob, headers={"X-Pipgate-Fleet-Secret": SECRET}) as resp:
            assert resp.status == 200
            assert hashlib.sha256(await resp.read()).hexdigest() == dist.sha256


async def test_a_bucket_that_ignores_conditional_writes_is_refused_at_start(
    tmp_path: Path,
) -> None:
    async with FakeS3() as fake:
        fake.buckets["pipgate"] = {}
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIPGATE_")}
        env.update(
            PIPGATE_STORAGE="s3",
            PIPGATE_S3_ENDPOINT=fake.endpoint,
            PIPGATE_S3_BUCKET="pipgate",
            PIPGATE_S3_ACCESS_KEY_ENV="FAKE_AK",
            PIPGATE_S3_SECRET_KEY_ENV="FAKE_SK",
            FAKE_AK="ak",
            FAKE_SK="sk-never-printed",
        )
        done = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "pipgate",
                "serve",
                "--port",
                "0",
                "--cache-dir",
                str(tmp_path / "cache"),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert "If-None-Match" in lines[-1] and "storage error" in lines[-1], done.stderr
    assert "Traceback" not in done.stderr
    assert "sk-never-printed" not in done.stderr


async def test_metadata_fetched_by_one_replica_is_read_by_another_from_the_bucket(
    fleet: Fleet, upstream: FakePyPI
) -> None:
    dist = build_wheel("metapkg", "1.0")
    upstream.add(dist)
    r1, r2 = fleet.add(), fleet.add()
    async with aiohttp.ClientSession() as session:
        status, _, body = await fetch(session, await file_url(session, r1, dist) + ".metadata")
        assert (status, body) == (200, dist.metadata)
        await in_bucket(fleet, hashlib.sha256(dist.metadata).hexdigest())
        status, _, body = await fetch(session, await file_url(session, r2, dist) + ".metadata")
        assert (status, body) == (200, dist.metadata)
    assert upstream.count(upstream.file_path(dist) + ".metadata") == 1


async def in_bucket(fleet: Fleet, sha256: str, within: float = 10.0) -> None:
    """Wait until the blob is committed to the bucket (replicas commit in the background)."""
    s3 = fleet.seaweed.client()
    key = f"{fleet.prefix}blobs/{sha256[:2]}/{sha256[2:4]}/{sha256}"
    deadline = time.monotonic() + within
    while True:
        try:
            await asyncio.to_thread(s3.head_object, Bucket=fleet.seaweed.bucket, Key=key)
            return
        except Exception:
            assert time.monotonic() < deadline, f"{sha256} never committed to the bucket"
            await asyncio.sleep(0.1)
