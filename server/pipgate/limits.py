"""Bounds on what clients can make pipgate do upstream: downloads at once, page fetches
per second, in total and per client address.

A request over a bound is refused with :class:`Limited`: 503 with ``Retry-After``,
which pip and uv both retry after the time it says (pip does not retry a 429), never
queued without end: a scan of random
project names, or a thousand CI jobs starting at once, costs the upstream (and the
company's egress) a bounded amount. What is already cached is never limited here.
The client address of the request being served travels in :data:`client_address`, so
the services need no web types to know whom a fetch is for.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from contextvars import ContextVar

from pipgate.metrics import Metrics

#: The address of the client the current request comes from ("-": none, e.g. a
#: background task started at start-up).
client_address: ContextVar[str] = ContextVar("client_address", default="-")

#: Seconds of the rate a bucket holds: bursts of this many seconds' worth pass at once.
BURST_SECONDS = 10.0
#: Client buckets kept; beyond it the full ones (idle clients) are dropped.
MAX_CLIENT_BUCKETS = 10_000


class Limited(Exception):
    """A request refused by a limit: not an upstream failure, and not counted as one."""

    def __init__(self, limit: str, detail: str, *, status: int, retry_after: float) -> None:
        super().__init__(detail)
        #: One of :data:`pipgate.metrics.LIMITS`.
        self.limit = limit
        self.detail = detail
        self.status = status
        self.retry_after = max(1, math.ceil(retry_after))


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at = time.monotonic()

    def _refill(self, now: float) -> None:
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def wait(self, now: float | None = None) -> float:
        """Seconds until a token is available (0: there is one now)."""
        self._refill(time.monotonic() if now is None else now)
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate

    def take(self) -> None:
        self._tokens -= 1

    @property
    def full(self) -> bool:
        self._refill(time.monotonic())
        return self._tokens >= self.burst


class PageFetchLimiter:
    """Upstream page fetches per second, for the worker and for each client address."""

    def __init__(self, rate: float, client_rate: float, metrics: Metrics) -> None:
        self._total = TokenBucket(rate, max(1.0, rate * BURST_SECONDS)) if rate else None
        self._client_rate = client_rate
        self._clients: dict[str, TokenBucket] = {}
        self._metrics = metrics

    def admit(self, what: str) -> None:
        """Count one upstream fetch for the current client, or raise :class:`Limited`."""
        client = client_address.get()
        bucket = self._client_bucket(client)
        if bucket is not None and (wait := bucket.wait()) > 0:
            self._refuse("client_page_rate", f"too many uncached pages from {client}", wait)
        if self._total is not None and (wait := self._total.wait()) > 0:
            self._refuse("page_rate", "too many uncached pages at once", wait)
        if bucket is not None:
            bucket.take()
        if self._total is not None:
            self._total.take()

    def _client_bucket(self, client: str) -> TokenBucket | None:
        if not self._client_rate or client == "-":
            return None
        bucket = self._clients.get(client)
        if bucket is None:
            if len(self._clients) >= MAX_CLIENT_BUCKETS:
                self._clients = {k: b for k, b in self._clients.items() if not b.full}
            burst = max(1.0, self._client_rate * BURST_SECONDS)
            bucket = self._clients[client] = TokenBucket(self._client_rate, burst)
        return bucket

    def _refuse(self, limit: str, detail: str, wait: float) -> None:
        self._metrics.limited.labels(limit=limit).inc()
        raise Limited(
            limit, f"{detail}; try again in {math.ceil(wait)} s", status=503, retry_after=wait
        )


class DownloadSlots:
    """Upstream downloads running at once: ``total`` in the worker, ``per_client`` for
    each client address; a download waits up to ``queue_timeout`` for a slot."""

    def __init__(
        self, total: int, per_client: int, queue_timeout: float, metrics: Metrics
    ) -> None:
        self.total = total
        self.per_client = per_client
        self._queue_timeout = queue_timeout
        self._running = 0
        self._by_client: dict[str, int] = {}
        self._changed = asyncio.Condition()
        self._metrics = metrics

    @property
    def running(self) -> int:
        return self._running

    def _free_for(self, client: str) -> bool:
        mine = self._by_client.get(client, 0)
        return self._running < self.total and (client == "-" or mine < self.per_client)

    async def acquire(self) -> str:
        """Take a slot for the current client (returned: pass it to :meth:`release`)."""
        client = client_address.get()
        async with self._changed:
            try:
                async with asyncio.timeout(self._queue_timeout):
                    await self._changed.wait_for(lambda: self._free_for(client))
            except TimeoutError:
                own = self._by_client.get(client, 0) >= self.per_client and client != "-"
                limit = "client_downloads" if own else "downloads"
                self._metrics.limited.labels(limit=limit).inc()
                detail = (
                    f"{client} already has {self.per_client} downloads from upstream running"
                    if own
                    else f"{self.total} downloads from upstream are running"
                )
                raise Limited(
                    limit, f"{detail}; try again shortly", status=503, retry_after=5
                ) from None
            self._running += 1
            self._by_client[client] = self._by_client.get(client, 0) + 1
        return client

    async def release(self, client: str) -> None:
        """Give back the slot ``acquire`` returned."""
        async with self._changed:
            self._running -= 1
            left = self._by_client.get(client, 1) - 1
            if left > 0:
                self._by_client[client] = left
            else:
                self._by_client.pop(client, None)
            self._changed.notify_all()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """A slot for the duration of the block."""
        client = await self.acquire()
        try:
            yield
        finally:
            await self.release(client)
