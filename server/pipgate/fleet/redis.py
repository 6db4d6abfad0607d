"""Fleet coordination through Redis: leases, shared entries, access records, broadcasts.

Every Redis call is best effort with a short timeout and no retry: while Redis is
unreachable this replica behaves like :class:`~pipgate.fleet.coordinator.LocalCoordinator`
(local leases, no shared entries) and a background task pings it back to health.
Duplicate fetches become possible while it is down; wrong bytes do not (every file is
verified before it is committed anywhere).

Keys, all under :attr:`RedisSettings.key_prefix`: ``lease:<key>`` (JSON holder record,
``PX`` the lease TTL), ``entry:<key>`` (shared entries), ``access`` (sorted set
sha256 → last access), ``sizes`` (hash sha256 → bytes), ``total`` (sum of ``sizes``),
and the pub/sub channels ``broadcast:<channel>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError

from pipgate.fleet.coordinator import Holder, Lease, Listener, LocalLease

log = logging.getLogger("pipgate.fleet")

#: While unhealthy, how often the background task pings Redis.
PROBE_INTERVAL = 1.0
#: While healthy, how often it pings anyway (so ``healthy`` turns false without traffic).
KEEPALIVE_INTERVAL = 5.0
#: Longest a pub/sub read waits: how soon a channel subscribed after start() is listened to.
READ_SLICE = 0.2

# Compare-and-act scripts: only the holder of the token may extend or delete a lease.
_ACQUIRE = """
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
local held = redis.call('get', KEYS[1])
if held == ARGV[1] then return false end
return held
"""
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
# The total counts a blob once however often (and however concurrently) it is touched.
_TOUCH = """
redis.call('zadd', KEYS[1], ARGV[3], ARGV[1])
if redis.call('hsetnx', KEYS[2], ARGV[1], ARGV[2]) == 1 then
  redis.call('incrby', KEYS[3], ARGV[2])
end
return 1
"""
_FORGET = """
redis.call('zrem', KEYS[1], ARGV[1])
local size = redis.call('hget', KEYS[2], ARGV[1])
if size then
  redis.call('hdel', KEYS[2], ARGV[1])
  redis.call('decrby', KEYS[3], size)
end
return 1
"""


def redacted(url: str) -> str:
    """``url`` with its password (userinfo or ``?password=``) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable url>"
    netloc = parts.netloc
    if password is not None:
        userinfo, _, hostinfo = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:***@{hostinfo}"
    # Only the password field changes: the other query pieces stay byte for byte.
    pieces = [
        "password=***" if piece.partition("=")[0].lower() == "password" else piece
        for piece in parts.query.split("&")
    ]
    query = "&".join(pieces)
    if netloc == parts.netloc and query == parts.query:
        return url
    text = f"{parts.scheme}://{netloc}{parts.path}"
    text += f"?{query}" if query else ""
    return text + (f"#{parts.fragment}" if parts.fragment else "")


class RedisConfigError(Exception):
    """Redis rejected this replica's credentials: a configuration error, not an outage."""


@dataclass(frozen=True, repr=False)
class RedisSettings:
    """Where Redis is and how this replica talks to it."""

    #: ``redis://host:6379/0``, or ``rediss://`` for TLS.
    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    key_prefix: str = "pipgate:"
    #: Seconds a lease lives without renewal (how long a dead holder blocks a takeover).
    lease_ttl: float = 15.0
    connect_timeout: float = 0.5
    op_timeout: float = 0.5

    def __repr__(self) -> str:
        return (
            f"RedisSettings(url={redacted(self.url)!r}, username={self.username!r}, "
            f"key_prefix={self.key_prefix!r}, lease_ttl={self.lease_ttl})"
        )

    def secrets(self) -> list[str]:
        """Every spelling of the password that could end up in a message."""
        found = [self.password] if self.password else []
        with contextlib.suppress(ValueError):
            parts = urlsplit(self.url)
            if parts.password:
                found += [parts.password, unquote(parts.password)]
            found += [v for n, v in parse_qsl(parts.query) if n.lower() == "password" and v]
        return sorted(set(found), key=len, reverse=True)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


@dataclass
class RedisLease:
    """A lease held in Redis under :attr:`token`."""

    key: str
    token: str
    _coordinator: RedisCoordinator = field(repr=False)

    async def renew(self) -> bool:
        """Extend by the lease TTL; ``True`` while Redis is down (we cannot know)."""
        return await self._coordinator._renew(self)

    async def release(self) -> None:
        """Delete the lease if it is still ours (best effort; it expires anyway)."""
        await self._coordinator._release(self)


class RedisCoordinator:
    """Leases and shared state for the fleet, kept in one Redis."""

    def __init__(self, settings: RedisSettings, *, replica: str, advertise_url: str) -> None:
        self.settings = settings
        self.replica = replica
        #: Base URL other replicas stream a file from while this one fetches it.
        self.advertise_url = advertise_url.rstrip("/")
        #: Leases granted locally because Redis was unreachable.
        self.fallbacks = 0
        #: Redis calls that failed (connection, timeout, or an error reply).
        self.errors = 0
        #: ``time.monotonic()`` when coordination was lost; ``None`` while healthy
        #: (and before :meth:`start`).
        self.unhealthy_since: float | None = None
        self._healthy = False
        self._logged_down = False
        self._secrets = settings.secrets()
        self._where = redacted(settings.url)
        prefix = settings.key_prefix
        self._prefix = prefix
        self._access = f"{prefix}access"
        self._sizes = f"{prefix}sizes"
        self._total = f"{prefix}total"
        # Tells our own broadcasts apart from other processes' (one per process).
        self._instance = uuid.uuid4().hex
        self._client: Any = aioredis.Redis.from_url(
            settings.url,
            username=settings.username,
            password=settings.password,
            # redis-py retries ten times by default: seconds per call on a dead server.
            # One immediate retry on a broken connection only: after a Redis restart
            # each pooled connection fails once ("closed by server"), and that must not
            # count as Redis being down. (A retried acquire that did run the first time
            # finds its own record: the script grants it again.)
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            socket_connect_timeout=settings.connect_timeout,
            socket_timeout=settings.op_timeout,
        )
        self._acquire_script = self._client.register_script(_ACQUIRE)
        self._renew_script = self._client.register_script(_RENEW)
        self._release_script = self._client.register_script(_RELEASE)
        self._touch_script = self._client.register_script(_TOUCH)
        self._forget_script = self._client.register_script(_FORGET)
        self._listeners: dict[str, list[Listener]] = {}
        self._pubsub: PubSub | None = None
        self._subscribed: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- life cycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Ping Redis and start the background task; raise :class:`RedisConfigError`
        when Redis rejects the credentials. Unreachable: start unhealthy (and retry)."""
        try:
            await self._client.ping()
        except AuthenticationError as exc:
            await self._client.aclose()
            raise RedisConfigError(
                f"redis at {self._where}: authentication failed: {self._scrub(exc)}"
            ) from None
        except (RedisError, OSError) as exc:
            self._failed(exc)
        else:
            self._mark_healthy()
        self._task = asyncio.create_task(self._run(), name=f"redis-coordinator-{self.replica}")

    async def close(self) -> None:
        """Stop the background task and close the connections."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._drop_pubsub()
        with contextlib.suppress(RedisError, OSError):
            await self._client.aclose()

    @property
    def healthy(self) -> bool:
        """Whether Redis answered the last call (``False``: this replica is on its own)."""
        return self._healthy

    # --- leases ----------------------------------------------------------------------

    async def acquire(self, key: str) -> Lease | Holder:
        """The fleet lease for ``key``, or who holds it; a local lease while Redis is down.

        A holder that is this replica under another token (another worker process of
        this host) is returned as a :class:`Holder` too: the caller decides."""
        if self._healthy:
            token = uuid.uuid4().hex
            record = self._record(token)
            try:
                held = await self._acquire_script(
                    keys=[self._lease_key(key)], args=[record, _ms(self.settings.lease_ttl)]
                )
            except (RedisError, OSError) as exc:
                self._failed(exc)
            else:
                if held is None:
                    return RedisLease(key, token, self)
                return _holder(held)
        self.fallbacks += 1
        return LocalLease(key, uuid.uuid4().hex)

    async def _renew(self, lease: RedisLease) -> bool:
        if not self._healthy:
            return True
        try:
            kept = await self._renew_script(
                keys=[self._lease_key(lease.key)],
                args=[self._record(lease.token), _ms(self.settings.lease_ttl)],
            )
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return True
        return bool(kept)

    async def _release(self, lease: RedisLease) -> None:
        if not self._healthy:
            return
        try:
            await self._release_script(
                keys=[self._lease_key(lease.key)], args=[self._record(lease.token)]
            )
        except (RedisError, OSError) as exc:
            self._failed(exc)

    def _lease_key(self, key: str) -> str:
        return f"{self._prefix}lease:{key}"

    def _record(self, token: str) -> str:
        """A lease's value; renew and release compare all of it (fixed for a token)."""
        return json.dumps({"token": token, "replica": self.replica, "url": self.advertise_url})

    # --- shared entries --------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        """A shared entry; ``None`` when absent, expired or Redis is down."""
        if not self._healthy:
            return None
        try:
            value = await self._client.get(f"{self._prefix}entry:{key}")
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return None
        return bytes(value) if value is not None else None

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        """Set a shared entry for ``ttl`` seconds (best effort)."""
        if not self._healthy:
            return
        try:
            await self._client.set(f"{self._prefix}entry:{key}", value, px=_ms(ttl))
        except (RedisError, OSError) as exc:
            self._failed(exc)

    # --- access records (fleet-wide LRU) ---------------------------------------------

    async def touch(self, sha256: str, size: int, when: float) -> None:
        """Record an access at ``when`` (wall-clock seconds: replicas compare them)."""
        if not self._healthy:
            return
        try:
            await self._touch_script(
                keys=[self._access, self._sizes, self._total], args=[sha256, size, repr(when)]
            )
        except (RedisError, OSError) as exc:
            self._failed(exc)

    async def oldest(self, count: int) -> list[tuple[str, int]]:
        """Up to ``count`` least recently used blobs (``[]`` while Redis is down)."""
        if not self._healthy or count <= 0:
            return []
        try:
            shas = await self._client.zrange(self._access, 0, count - 1)
            sizes = await self._client.hmget(self._sizes, shas) if shas else []
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return []
        # A blob forgotten between the two calls has no size any more: skip it.
        return [(sha.decode(), int(size)) for sha, size in zip(shas, sizes, strict=True) if size]

    async def forget(self, sha256: str) -> None:
        """Drop a blob's access record and its size from the total."""
        if not self._healthy:
            return
        try:
            await self._forget_script(keys=[self._access, self._sizes, self._total], args=[sha256])
        except (RedisError, OSError) as exc:
            self._failed(exc)

    async def total_size(self) -> int:
        """Bytes of the blobs with an access record (0 while Redis is down: evict nothing)."""
        if not self._healthy:
            return 0
        try:
            total = await self._client.get(self._total)
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return 0
        return int(total) if total is not None else 0

    # --- broadcasts ------------------------------------------------------------------

    async def broadcast(self, channel: str, message: str) -> None:
        """Tell every replica: this process's listeners directly, the others through
        PUBLISH (best effort: lost for them while Redis is down)."""
        if self._healthy:
            envelope = json.dumps({"from": self._instance, "message": message})
            try:
                await self._client.publish(self._channel(channel), envelope)
            except (RedisError, OSError) as exc:
                self._failed(exc)
        await self._deliver(channel, message)

    def subscribe(self, channel: str, listener: Listener) -> None:
        """Call ``listener(message)`` for every broadcast on ``channel`` (sync or async;
        its exceptions are logged). Listeners run one at a time: keep them short."""
        self._listeners.setdefault(channel, []).append(listener)
        self._wake.set()

    def _channel(self, channel: str) -> str:
        return f"{self._prefix}broadcast:{channel}"

    async def _deliver(self, channel: str, message: str) -> None:
        for listener in list(self._listeners.get(channel, [])):
            try:
                result = listener(message)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("a listener of broadcast channel %s failed", channel)

    async def _dispatch(self, raw: dict[str, Any]) -> None:
        if raw.get("type") != "message":
            return
        name = _text(raw.get("channel"))
        channel = name.removeprefix(f"{self._prefix}broadcast:")
        data = _text(raw.get("data"))
        try:
            envelope = json.loads(data)
            sender, message = envelope["from"], str(envelope["message"])
        except (ValueError, KeyError, TypeError):
            sender, message = None, data  # published by something else: pass it on
        if sender != self._instance:
            await self._deliver(channel, message)

    # --- health and the background task ----------------------------------------------

    def _failed(self, exc: BaseException) -> None:
        """A Redis call failed (unreachable, timed out, or an error reply): count it,
        and go on alone until a ping answers."""
        self.errors += 1
        self._healthy = False
        if self._logged_down:
            return  # one warning per outage, not one per call
        self._logged_down = True
        self.unhealthy_since = time.monotonic()
        log.warning(
            "coordination lost: redis at %s: %s: %s (leases are per host until it answers)",
            self._where,
            type(exc).__name__,
            self._scrub(exc),
        )

    def _mark_healthy(self) -> None:
        if self._logged_down:
            log.info("coordination restored: redis at %s answers", self._where)
        self._healthy = True
        self._logged_down = False
        self.unhealthy_since = None

    def _scrub(self, exc: BaseException) -> str:
        text = str(exc)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    async def _run(self) -> None:
        """Ping while unhealthy (or every few seconds), keep the subscriptions, read them."""
        last_probe = time.monotonic()
        while True:
            try:
                interval = KEEPALIVE_INTERVAL if self._healthy else PROBE_INTERVAL
                if time.monotonic() - last_probe >= interval:
                    last_probe = time.monotonic()
                    await self._probe()
                if self._healthy and set(self._listeners) - self._subscribed:
                    await self._sync_subscriptions()
                if self._pubsub is not None:
                    await self._read()
                else:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), READ_SLICE)
            except Exception:  # a bug here must not end recovery for the process's life
                log.exception("redis coordination task failed; going on")
                await self._drop_pubsub()
                await asyncio.sleep(PROBE_INTERVAL)

    async def _probe(self) -> None:
        try:
            await self._client.ping()
        except (RedisError, OSError) as exc:
            self._failed(exc)
        else:
            self._mark_healthy()

    async def _sync_subscriptions(self) -> None:
        missing = set(self._listeners) - self._subscribed
        try:
            if self._pubsub is None:
                self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            await self._pubsub.subscribe(*(self._channel(c) for c in sorted(missing)))
        except (RedisError, OSError) as exc:
            await self._drop_pubsub()
            self._failed(exc)
            return
        self._subscribed |= missing

    async def _read(self) -> None:
        assert self._pubsub is not None
        try:
            raw = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=READ_SLICE)
        except (RedisError, OSError) as exc:
            # A new pub/sub (all channels again) once Redis answers a ping.
            await self._drop_pubsub()
            self._failed(exc)
            return
        if raw is not None:
            await self._dispatch(raw)

    async def _drop_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        self._subscribed = set()
        if pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _holder(raw: bytes) -> Holder:
    """The holder record of a lease; an unreadable one names nobody to stream from."""
    try:
        record = json.loads(raw)
        return Holder(replica=str(record["replica"]), url=str(record["url"]))
    except (ValueError, KeyError, TypeError):
        return Holder(replica="unknown", url="")
