"""Streaming a file from the replica that is downloading it.

The lease holder serves its download in progress under ``/-/fleet/blobs/<key>``
(:mod:`pipgate.web.fleet`): what reached its disk, then the rest as it arrives, its
last byte held back until it verified the file. The reader here treats those bytes
like any other source's: they go to its own temp file and are verified again.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp

from pipgate.metrics import Metrics

log = logging.getLogger("pipgate.fleet")

CHUNK = 256 * 1024
#: Header carrying the fleet secret (never logged; compared in constant time).
SECRET_HEADER = "X-Pipgate-Fleet-Secret"


class PeerError(Exception):
    """The other replica could not (or no longer) stream the file."""


class PeerBody:
    """The bytes of one file from another replica, from a start offset."""

    def __init__(self, resp: aiohttp.ClientResponse, start: int, metrics: Metrics) -> None:
        self._resp = resp
        self._metrics = metrics
        self.size: int | None = None
        self._skip = 0
        if resp.status == 206:
            total = resp.headers.get("Content-Range", "").rpartition("/")[2]
            self.size = int(total) if total.isdigit() else None
        elif resp.status == 200:
            self.size = resp.content_length
            self._skip = start  # the holder could not seek (size unknown yet)

    async def chunks(self) -> AsyncIterator[bytes]:
        received = self._metrics.fleet_peer_bytes.labels(direction="received")
        try:
            async for chunk in self._resp.content.iter_chunked(CHUNK):
                received.inc(len(chunk))
                if self._skip:
                    if len(chunk) <= self._skip:
                        self._skip -= len(chunk)
                        continue
                    chunk, self._skip = chunk[self._skip :], 0
                yield chunk
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise PeerError(f"stream broke: {type(exc).__name__}: {exc}") from exc
        if self._skip:
            raise PeerError("stream ended before the resume point")


class PeerClient:
    """One session to the other replicas (direct: never through an egress proxy)."""

    def __init__(self, secret: str, metrics: Metrics, *, read_timeout: float = 60.0) -> None:
        self._secret = secret
        self._metrics = metrics
        self._timeout = aiohttp.ClientTimeout(total=None, connect=3.0, sock_read=read_timeout)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=self._timeout, trust_env=False, auto_decompress=False
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @asynccontextmanager
    async def open(self, base_url: str, key: str, start: int = 0) -> AsyncIterator[PeerBody]:
        """The file ``key`` from the replica at ``base_url``; raises :class:`PeerError`
        when it does not serve it (it finished and forgot, or is gone)."""
        assert self._session is not None, "PeerClient.start() first"
        headers = {SECRET_HEADER: self._secret, "Accept-Encoding": "identity"}
        if start:
            headers["Range"] = f"bytes={start}-"
        url = f"{base_url.rstrip('/')}/-/fleet/blobs/{key}"
        try:
            resp = await self._session.get(url, headers=headers)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise PeerError(f"{base_url}: {type(exc).__name__}: {exc}") from exc
        try:
            if resp.status not in (200, 206):
                raise PeerError(f"{base_url} answered {resp.status} for {key}")
            yield PeerBody(resp, start, self._metrics)
        finally:
            resp.release()
