"""One file's bytes in a fleet: from the shared store, from the replica downloading it,
or from upstream under this replica's lease, switching source mid-file if one fails.

The download that reads this body writes it to its own temp file and verifies it
against the page's hashes before anything commits it, so a switch between sources can
at worst fail a download, never complete a wrong file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import TYPE_CHECKING

from pipgate.errors import Reason, UpstreamError
from pipgate.fleet.coordinator import Holder
from pipgate.fleet.peers import PeerError
from pipgate.store.downloads import Body
from pipgate.store.shared import StorageError

if TYPE_CHECKING:
    from pipgate.fleet.fleet import Fleet

log = logging.getLogger("pipgate.fleet")

#: Opens the upstream file from a byte offset.
OpenUpstream = Callable[[int], AbstractAsyncContextManager[Body]]
#: How often a replica waiting for another's lease looks again.
WAIT_POLL = 0.25


class FleetBody:
    """A :class:`~pipgate.store.downloads.Body` over the fleet's sources."""

    def __init__(self, fleet: Fleet, key: str, sha256: str | None, upstream: OpenUpstream) -> None:
        self._fleet = fleet
        self._key = key
        self._sha256 = sha256
        self._upstream = upstream
        self.size: int | None = None
        #: Where the bytes come from now: ``shared``, ``peer`` or ``upstream``.
        self.source = ""
        self._pos = 0
        self._body: Body | None = None
        self._stack: AsyncExitStack | None = None
        self._switched = False

    async def open(self) -> None:
        await self._switch()

    async def close(self) -> None:
        stack, self._stack, self._body = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            assert self._body is not None
            try:
                async for chunk in self._body.chunks():
                    self._pos += len(chunk)
                    yield chunk
                return
            except (PeerError, StorageError) as exc:
                log.warning(
                    "%s stream of %s broke at byte %d (%s): switching source",
                    self.source,
                    self._key,
                    self._pos,
                    exc,
                )
                await self.close()
                self._switched = True
                await self._switch()

    async def _enter(self, opener: AbstractAsyncContextManager[Body], source: str) -> None:
        stack = AsyncExitStack()
        try:
            body = await stack.enter_async_context(opener)
        except BaseException:
            await stack.aclose()
            raise
        if self.size is None:
            self.size = body.size
        elif body.size is not None and body.size != self.size:
            await stack.aclose()
            raise UpstreamError(
                Reason.OTHER, f"{source} has {body.size} bytes of {self._key}, not {self.size}"
            )
        self._stack, self._body, self.source = stack, body, source

    async def _switch(self) -> None:
        """Open the best source from the current position; waits (bounded) while
        another replica holds the lease but cannot be streamed from."""
        fleet = self._fleet
        deadline = time.monotonic() + fleet.wait_limit
        waited = False
        while True:
            if await self._try_shared():
                return
            got = await fleet.acquire(self._key)
            if not isinstance(got, Holder):
                if self._switched or waited:
                    fleet.metrics.fleet_takeovers.inc()
                    log.warning("taking over the download of %s at byte %d", self._key, self._pos)
                await self._enter(self._upstream(self._pos), "upstream")
                return
            if got.url != fleet.advertise_url:
                try:
                    await self._enter(fleet.peers.open(got.url, self._key, self._pos), "peer")
                    return
                except PeerError as exc:
                    log.info("cannot stream %s from %s yet: %s", self._key, got.replica, exc)
            if time.monotonic() > deadline:
                raise UpstreamError(
                    Reason.TIMEOUT,
                    f"replica {got.replica} holds the download of {self._key} but does not "
                    f"serve it, and its lease did not expire within {fleet.wait_limit:.0f} s",
                )
            waited = True
            await asyncio.sleep(WAIT_POLL)

    async def _try_shared(self) -> bool:
        fleet = self._fleet
        if fleet.shared is None or self._sha256 is None:
            return False
        try:
            size = await fleet.shared.stat(self._sha256)
            if size is None:
                return False
            await self._enter(fleet.shared.open(self._sha256, self._pos), "shared")
        except (StorageError, FileNotFoundError) as exc:
            if isinstance(exc, StorageError):
                fleet.metrics.fleet_shared.labels(op="read", result="error").inc()
                log.warning("shared store read of %s failed: %s", self._key, exc)
            return False
        fleet.metrics.fleet_shared.labels(op="read", result="ok").inc()
        return True


@contextlib.asynccontextmanager
async def fleet_body(
    fleet: Fleet, key: str, sha256: str | None, upstream: OpenUpstream
) -> AsyncIterator[FleetBody]:
    body = FleetBody(fleet, key, sha256, upstream)
    try:
        await body.open()
        yield body
    finally:
        await body.close()
