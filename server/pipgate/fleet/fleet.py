"""This replica's part in the fleet: which source a download reads, and what happens
after a file is committed locally (into the shared store, then the lease goes).

On a single host (``storage.kind = disk``, ``coordination.kind = local``) a download
reads upstream directly and nothing else happens: :meth:`Fleet.fetch` returns the
upstream opener unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from contextlib import AbstractAsyncContextManager

from pipgate.fleet.coordinator import Coordinator, Holder, Lease, LocalCoordinator
from pipgate.fleet.fetch import OpenUpstream, fleet_body
from pipgate.fleet.peers import PeerClient
from pipgate.metrics import Metrics
from pipgate.store.blobs import BlobStore, Committed, is_sha256
from pipgate.store.downloads import Body, Fetch
from pipgate.store.locks import acquire_shared
from pipgate.store.shared import SharedBlobs, StorageError

log = logging.getLogger("pipgate.fleet")

#: Commits to the shared store running at once in one process; more wait (the local
#: readers never do: the upload happens after their last byte).
UPLOADS = 2


class Fleet:
    """Sources and commits of downloads, for one replica."""

    def __init__(
        self,
        *,
        blobs: BlobStore,
        metrics: Metrics,
        coordinator: Coordinator | None = None,
        shared: SharedBlobs | None = None,
        peers: PeerClient | None = None,
        advertise_url: str = "",
        lease_ttl: float = 15.0,
    ) -> None:
        self.blobs = blobs
        self.metrics = metrics
        self.coordinator: Coordinator = coordinator or LocalCoordinator()
        self.shared = shared
        self._peers = peers
        self.advertise_url = advertise_url.rstrip("/")
        self.lease_ttl = lease_ttl
        #: How long a download waits for a lease holder that does not stream to it:
        #: long enough for a dead holder's lease to expire.
        self.wait_limit = 2 * lease_ttl + 5.0
        self.single = shared is None and peers is None
        #: Leases this process holds, by file key, with their renewal tasks.
        self._leases: dict[str, tuple[Lease, asyncio.Task[None]]] = {}
        #: Commits to the shared store running in the background, by file key.
        self._publishing: dict[str, asyncio.Task[None]] = {}
        self._watch: asyncio.Task[None] | None = None
        #: Uploads to the shared store at once (each holds some MiB in memory).
        self._uploads = asyncio.Semaphore(UPLOADS)

    @property
    def peers(self) -> PeerClient:
        assert self._peers is not None
        return self._peers

    async def start(self) -> None:
        if self._peers is not None:
            await self._peers.start()
        if self.shared is not None:
            await self.shared.start()
        await self.coordinator.start()
        self.metrics.fleet_coordination_up.set(1 if self.coordinator.healthy else 0)
        if not self.single:
            self._watch = asyncio.create_task(self._watch_health(), name="fleet-health")

    async def _watch_health(self) -> None:
        """Keep ``pipgate_fleet_coordination_up`` current without traffic."""
        while True:
            await asyncio.sleep(1.0)
            self.metrics.fleet_coordination_up.set(1 if self.coordinator.healthy else 0)

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._publishing:
            await asyncio.gather(*self._publishing.values(), return_exceptions=True)
        for key in list(self._leases):
            await self._release(key)
        await self.coordinator.close()
        if self.shared is not None:
            await self.shared.close()
        if self._peers is not None:
            await self._peers.close()

    # --- downloads -------------------------------------------------------------------

    def fetch(self, key: str, sha256: str | None, upstream: OpenUpstream) -> Fetch:
        """What a download of ``key`` reads (``sha256``: the published one, if any)."""
        if self.single:
            return lambda: upstream(0)
        sha = sha256 if sha256 and is_sha256(sha256) else None

        def open_body() -> AbstractAsyncContextManager[Body]:
            return fleet_body(self, key, sha, upstream)

        return open_body

    async def acquire(self, key: str) -> Lease | Holder:
        """The fleet lease for ``key`` (kept and renewed until the file is published
        or the download ends), or who holds it."""
        got = await self.coordinator.acquire(key)
        up = self.coordinator.healthy
        self.metrics.fleet_coordination_up.set(1 if up else 0)
        if isinstance(got, Holder):
            self.metrics.fleet_leases.labels(result="held_elsewhere").inc()
            return got
        self.metrics.fleet_leases.labels(result="taken" if up else "local").inc()
        old = self._leases.pop(key, None)
        if old is not None:
            old[1].cancel()
        self._leases[key] = (got, asyncio.create_task(self._renew(got), name=f"lease-{key}"))
        return got

    async def _renew(self, lease: Lease) -> None:
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            try:
                kept = await lease.renew()
            except Exception as exc:  # best effort: the download goes on regardless
                log.warning("lease renewal of %s failed: %s", lease.key, exc)
                continue
            if not kept:
                log.warning(
                    "the lease of %s was lost (another replica may fetch it too)", lease.key
                )
                return

    async def committed(self, key: str, committed: Committed) -> None:
        """A download of ``key`` was verified and committed here: put it in the shared
        store in the background (the local readers do not wait), then release the
        lease. Only the lease holder publishes: it fetched from upstream."""
        if key not in self._leases or self.shared is None:
            await self._release(key)
            return
        self._in_background(key, committed, lease=key)

    async def ended(self, key: str) -> None:
        """The download of ``key`` is over: a lease not kept for publishing goes now."""
        if key not in self._publishing:
            await self._release(key)

    def _in_background(self, name: str, committed: Committed, lease: str | None) -> None:
        task = asyncio.create_task(self._publish(committed, lease), name=f"publish-{name}")
        self._publishing[name] = task
        task.add_done_callback(lambda _t: self._publishing.pop(name, None))

    async def _publish(self, committed: Committed, lease: str | None) -> None:
        """Commit a local blob to the shared store (its use lock held, so local eviction
        leaves it meanwhile); then the ``lease`` it was fetched under goes."""
        assert self.shared is not None
        try:
            use = await asyncio.to_thread(_hold, self.blobs, committed.sha256)
            try:
                async with self._uploads:
                    created = await self.shared.put(committed.sha256, committed.path)
            finally:
                if use is not None:
                    os.close(use)
        except (StorageError, OSError) as exc:
            self.metrics.fleet_shared.labels(op="commit", result="error").inc()
            log.error("%s not committed to %s: %s", committed.sha256, self.shared.label, exc)
        else:
            result = "ok" if created else "exists"
            self.metrics.fleet_shared.labels(op="commit", result=result).inc()
            await self.coordinator.touch(committed.sha256, committed.size, time.time())
        finally:
            if lease is not None:
                await self._release(lease)

    async def _release(self, key: str) -> None:
        held = self._leases.pop(key, None)
        if held is None:
            return
        lease, renewal = held
        renewal.cancel()
        with contextlib.suppress(Exception):
            await lease.release()

    async def read_small(self, sha256: str | None, limit: int) -> bytes | None:
        """A small blob (PEP 658 metadata) from the shared store, if it has it: no lease
        for these (a duplicate fetch of a few KiB is cheaper than a lease round trip)."""
        if self.shared is None or not sha256 or not is_sha256(sha256):
            return None
        try:
            size = await self.shared.stat(sha256)
            if size is None or size > limit:
                return None
            data = bytearray()
            async with self.shared.open(sha256) as body:
                async for chunk in body.chunks():
                    data += chunk
        except (StorageError, FileNotFoundError) as exc:
            log.warning("shared store read of %s failed: %s", sha256, exc)
            return None
        self.metrics.fleet_shared.labels(op="read", result="ok").inc()
        return bytes(data)

    def publish_small(self, committed: Committed) -> None:
        """Put a small blob fetched from upstream into the shared store (background)."""
        if self.shared is not None:
            self._in_background(f"small:{committed.sha256}", committed, lease=None)

    async def touch(self, sha256: str, size: int, when: float) -> None:
        """A local hit: the shared copy is in use too (fleet-wide LRU of the store)."""
        if self.shared is not None:
            await self.coordinator.touch(sha256, size, when)

    # --- status ----------------------------------------------------------------------

    def readiness(self) -> dict[str, object]:
        """What ``/readyz`` says about the fleet."""
        self.metrics.fleet_coordination_up.set(1 if self.coordinator.healthy else 0)
        return {
            "replica": self.coordinator.replica,
            "coordination": "ok"
            if self.coordinator.healthy
            else "degraded (each replica on its own)",
            "shared_store": self.shared.label if self.shared is not None else None,
        }


def _hold(blobs: BlobStore, sha256: str) -> int | None:
    """The blob's use lock, so local eviction leaves it while it is uploaded."""
    try:
        return acquire_shared(blobs.use_lock_path(sha256))
    except OSError:
        return None
