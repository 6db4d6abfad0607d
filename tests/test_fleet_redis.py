"""RedisCoordinator against a real redis-server: leases, shared state, broadcasts, outages."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from pipgate.fleet.coordinator import Holder, LocalLease
from pipgate.fleet.redis import (
    RedisConfigError,
    RedisCoordinator,
    RedisLease,
    RedisSettings,
    redacted,
)
from tests.support.redis_server import RedisServer, redis_binary

pytestmark = pytest.mark.skipif(redis_binary() is None, reason="redis-server not installed")

PASSWORD = "s3cret-redis-pass-9f2c"
URL_A = "http://10.0.0.1:8080"
URL_B = "http://10.0.0.2:8080"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as server:
        yield server


def make(server: RedisServer, replica: str, advertise: str, **settings: object) -> RedisCoordinator:
    base: dict[str, object] = {"url": server.url, "lease_ttl": 15.0}
    base.update(settings)
    return RedisCoordinator(
        RedisSettings(**base),  # type: ignore[arg-type]
        replica=replica,
        advertise_url=advertise,
    )


@pytest.fixture
async def pair(
    redis_server: RedisServer,
) -> AsyncIterator[tuple[RedisCoordinator, RedisCoordinator]]:
    a = make(redis_server, "a", URL_A)
    b = make(redis_server, "b", URL_B)
    await a.start()
    await b.start()
    yield a, b
    await a.close()
    await b.close()


def raw_client(server: RedisServer) -> aioredis.Redis:
    return aioredis.Redis.from_url(server.url, password=server.requirepass)


async def eventually(check: Callable[[], bool], within: float) -> float:
    """Seconds until ``check()`` held; fails the test after ``within``."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > within:
            pytest.fail(f"not true within {within} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


# --- pure helpers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("redis://user:pw@host:6379/0", "redis://user:***@host:6379/0"),
        ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://u:p%40ss@host/1", "rediss://u:***@host/1"),
        ("redis://user@host:6379", "redis://user@host:6379"),
        ("redis://host/0?password=pw&db=1", "redis://host/0?password=***&db=1"),
        ("unix:///run/redis.sock?password=pw", "unix:///run/redis.sock?password=***"),
    ],
)
def test_redacted_hides_the_password_and_keeps_the_rest(url: str, shown: str) -> None:
    assert redacted(url) == shown


def test_settings_repr_never_shows_the_password() -> None:
    settings = RedisSettings(url=f"redis://u:{PASSWORD}@host/0", password=PASSWORD)
    assert PASSWORD not in repr(settings)
    assert "u:***@host" in repr(settings)


# --- leases ---------------------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_lease_held_by_a_names_a_to_b(
    pair: tuple[RedisCoordinator, RedisCoordinator],
) -> None:
    a, b = pair
    lease = await a.acquire("files/x.whl")
    assert isinstance(lease, RedisLease)
    assert await b.acquire("files/x.whl") == Holder("a", URL_A)
    # Another worker of host a (same replica name, other token) is told too.
    assert await a.acquire("files/x.whl") == Holder("a", URL_A)


@pytest.mark.timeout(30)
async def test_renew_extends_the_lease(redis_server: RedisServer) -> None:
    a = make(redis_server, "a", URL_A, lease_ttl=2.0)
    await a.start()
    try:
        lease = await a.acquire("k")
        assert isinstance(lease, RedisLease)
        await asyncio.sleep(0.5)
        async with raw_client(redis_server) as raw:
            before = await raw.pttl("pipgate:lease:k")
            assert await lease.renew() is True
            after = await raw.pttl("pipgate:lease:k")
        assert before <= 1600 < after <= 2000
    finally:
        await a.close()


@pytest.mark.timeout(30)
async def test_released_lease_can_be_taken_by_another_replica(
    pair: tuple[RedisCoordinator, RedisCoordinator],
) -> None:
    a, b = pair
    lease = await a.acquire("k")
    assert isinstance(lease, RedisLease)
    await lease.release()
    taken = await b.acquire("k")
    assert isinstance(taken, RedisLease)
    assert await a.acquire("k") == Holder("b", URL_B)


@pytest.mark.timeout(30)
async def test_expired_lease_is_taken_over_and_the_old_holder_cannot_touch_it(
    redis_server: RedisServer,
) -> None:
    a = make(redis_server, "a", URL_A, lease_ttl=0.3)
    b = make(redis_server, "b", URL_B, lease_ttl=5.0)
    await a.start()
    await b.start()
    try:
        old = await a.acquire("k")
        assert isinstance(old, RedisLease)
        await asyncio.sleep(0.5)
        new = await b.acquire("k")
        assert isinstance(new, RedisLease)
        assert await old.renew() is False
        await old.release()
        assert await a.acquire("k") == Holder("b", URL_B)
        async with raw_client(redis_server) as raw:
            assert await raw.pttl("pipgate:lease:k") > 4000
    finally:
        await a.close()
        await b.close()


@pytest.mark.timeout(30)
async def test_concurrent_acquires_across_replicas_grant_exactly_one_lease(
    pair: tuple[RedisCoordinator, RedisCoordinator],
) -> None:
    a, b = pair
    results = await asyncio.gather(*(c.acquire("hot") for c in [a, b] * 8))
    leases = [r for r in results if isinstance(r, RedisLease)]
    holders = [r for r in results if isinstance(r, Holder)]
    assert len(leases) == 1
    assert len(holders) == 15
    owner = "a" if leases[0] in results[0::2] else "b"
    assert {h.replica for h in holders} == {owner}


# --- shared state ---------------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_shared_entries_are_seen_by_other_replicas_until_they_expire(
    pair: tuple[RedisCoordinator, RedisCoordinator],
) -> None:
    a, b = pair
    assert await b.get("page/numpy") is None
    await a.put("page/numpy", b"\x00page\xff", ttl=0.3)
    assert await b.get("page/numpy") == b"\x00page\xff"
    await asyncio.sleep(0.5)
    assert await b.get("page/numpy") is None


@pytest.mark.timeout(30)
async def test_access_records_order_by_last_access_and_count_each_blob_once(
    pair: tuple[RedisCoordinator, RedisCoordinator],
) -> None:
    a, b = pair
    s1, s2, s3 = "1" * 64, "2" * 64, "3" * 64
    await a.touch(s1, 10, 1000.0)
    await b.touch(s2, 20, 1001.0)
    await a.touch(s3, 30, 1002.0)
    # The same blob touched again, concurrently, from both replicas.
    await asyncio.gather(*(c.touch(s1, 10, 1003.0 + i) for i, c in enumerate([a, b] * 5)))
    assert await a.total_size() == 60
    assert await b.oldest(2) == [(s2, 20), (s3, 30)]
    await a.forget(s2)
    await b.forget(s2)  # forgetting twice takes its size off once
    assert await b.total_size() == 40
    assert await a.oldest(10) == [(s3, 30), (s1, 10)]
    assert await a.oldest(0) == []


# --- broadcasts -----------------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_broadcast_reaches_every_replica_once(redis_server: RedisServer) -> None:
    a = make(redis_server, "a", URL_A)
    b = make(redis_server, "b", URL_B)
    got_a: list[str] = []
    got_b: list[str] = []

    async def on_b(message: str) -> None:
        got_b.append(message)

    def broken(message: str) -> None:
        raise RuntimeError("listener bug")

    a.subscribe("policy", got_a.append)
    b.subscribe("policy", broken)  # its failure does not stop the next listener
    b.subscribe("policy", on_b)
    await a.start()
    await b.start()
    try:
        await eventually(lambda: b._subscribed == {"policy"}, within=2)
        await a.broadcast("policy", "reload")
        await eventually(lambda: got_b == ["reload"], within=1)
        await asyncio.sleep(0.2)  # a's own copy through Redis is not delivered twice
        assert got_a == ["reload"]
        assert got_b == ["reload"]
    finally:
        await a.close()
        await b.close()


@pytest.mark.timeout(30)
async def test_channels_subscribed_after_start_are_listened_to(
    pair: tuple[RedisCoordinator, RedisCoordinator],
) -> None:
    a, b = pair
    got: list[str] = []
    b.subscribe("quarantine", got.append)
    await eventually(lambda: "quarantine" in b._subscribed, within=1)
    await a.broadcast("quarantine", "evil-1.0")
    await eventually(lambda: got == ["evil-1.0"], within=1)


# --- outages --------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_redis_down_means_local_leases_and_back_means_exclusive_again(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pipgate.fleet")
    a = make(redis_server, "a", URL_A)
    b = make(redis_server, "b", URL_B)
    got_b: list[str] = []
    b.subscribe("policy", got_b.append)
    await a.start()
    await b.start()
    try:
        redis_server.stop()
        started = time.monotonic()
        lease = await a.acquire("k")
        assert time.monotonic() - started < 1.5
        assert isinstance(lease, LocalLease)
        assert isinstance(await a.acquire("k"), LocalLease)  # duplicates possible
        assert not a.healthy
        assert a.unhealthy_since is not None
        assert a.fallbacks == 2
        assert await a.get("x") is None
        await a.put("x", b"v", ttl=5)
        await a.touch("1" * 64, 1, 1.0)
        await a.forget("1" * 64)
        assert await a.oldest(5) == []
        assert await a.total_size() == 0
        await a.broadcast("policy", "lost")
        await eventually(lambda: not b.healthy, within=3)  # b notices without traffic
        await asyncio.sleep(1.5)  # a probe or two fail meanwhile: still no new warning
        lost = [r for r in caplog.records if "coordination lost" in r.getMessage()]
        assert len(lost) == 2  # one per replica and outage, not one per call
        assert {r.levelno for r in lost} == {logging.WARNING}
        assert all(redis_server.url in r.getMessage() for r in lost)

        redis_server.start()
        recovery = await eventually(lambda: a.healthy and b.healthy, within=3)
        assert a.unhealthy_since is None
        assert any("coordination restored" in r.getMessage() for r in caplog.records)
        taken = await a.acquire("k")
        assert isinstance(taken, RedisLease)
        assert await b.acquire("k") == Holder("a", URL_A)
        # b re-subscribed on its own: a's broadcasts reach it again.
        await eventually(lambda: b._subscribed == {"policy"}, within=2)
        await a.broadcast("policy", "back")
        await eventually(lambda: got_b == ["back"], within=1)
        print(f"recovered in {recovery:.2f} s")
    finally:
        await a.close()
        await b.close()


@pytest.mark.timeout(30)
async def test_a_hung_redis_costs_one_op_timeout_then_leases_are_local(
    redis_server: RedisServer,
) -> None:
    a = make(redis_server, "a", URL_A)
    await a.start()
    try:
        redis_server.freeze()
        started = time.monotonic()
        assert isinstance(await a.acquire("k"), LocalLease)
        assert time.monotonic() - started < 1.5
        started = time.monotonic()
        assert isinstance(await a.acquire("k2"), LocalLease)
        assert time.monotonic() - started < 0.1  # no second wait while unhealthy
        redis_server.thaw()
        await eventually(lambda: a.healthy, within=3)
    finally:
        redis_server.thaw()
        await a.close()


@pytest.mark.timeout(30)
async def test_start_with_redis_down_starts_alone_and_joins_when_it_comes_up(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path / "redis")
    a = make(server, "a", URL_A)
    await a.start()
    try:
        assert not a.healthy
        assert isinstance(await a.acquire("k"), LocalLease)
        server.start()
        await eventually(lambda: a.healthy, within=3)
        assert isinstance(await a.acquire("k"), RedisLease)
    finally:
        await a.close()
        server.stop()


# --- passwords ------------------------------------------------------------------------


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis", requirepass=PASSWORD) as server:
        yield server


@pytest.mark.timeout(30)
async def test_password_protected_redis_works_with_the_password(
    locked_redis: RedisServer,
) -> None:
    a = make(locked_redis, "a", URL_A, password=PASSWORD)
    b = make(locked_redis, "b", URL_B, password=PASSWORD)
    await a.start()
    await b.start()
    try:
        assert a.healthy
        assert isinstance(await a.acquire("k"), RedisLease)
        assert await b.acquire("k") == Holder("a", URL_A)
    finally:
        await a.close()
        await b.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["settings", "url", "none"])
async def test_a_wrong_password_fails_start_without_showing_it(
    locked_redis: RedisServer, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-pass-7d41e0"
    if how == "settings":
        a = make(locked_redis, "a", URL_A, password=wrong)
    elif how == "url":
        url = locked_redis.url.replace("redis://", f"redis://:{wrong}@")
        a = make(locked_redis, "a", URL_A, url=url)
    else:
        a = make(locked_redis, "a", URL_A)
    with pytest.raises(RedisConfigError) as raised:
        await a.start()
    message = str(raised.value)
    assert "\n" not in message
    assert "authentication failed" in message
    assert f"127.0.0.1:{locked_redis.port}/0" in message
    for secret in (wrong, PASSWORD):
        assert secret not in message
        assert secret not in caplog.text
    await a.close()
