"""Who fetches a file for the whole fleet, and the small shared state replicas agree on.

A :class:`Coordinator` hands out a lease per file key: the replica holding it fetches
the file from upstream; the others stream it from the holder (its :class:`Holder`
record says where) or wait for its commit to the shared store. It also carries the
small shared state: key/value entries with a lifetime (pages, the catalog), an access
record for fleet-wide LRU, and broadcasts (a policy or quarantine change).

:class:`LocalCoordinator` is the single-host one (every lease granted: the workers of
one host already agree through their cache directory's file locks).
:mod:`pipgate.fleet.redis` shares leases through Redis, and falls back to behaving
like the local one while Redis is unreachable: duplicate fetches become possible,
wrong bytes do not (every file is verified before it is committed anywhere).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Holder:
    """Another replica holds the lease: where to stream the file from."""

    replica: str
    #: Base URL of the holder's internal endpoints (``http://host:port``).
    url: str


class Lease(Protocol):
    """This replica fetches ``key`` for the fleet until it releases the lease."""

    key: str
    token: str

    async def renew(self) -> bool:
        """Extend the lease; ``False`` when it was lost (expired and taken)."""

    async def release(self) -> None:
        """Give it up (only if still ours)."""


Listener = Callable[[str], Awaitable[None] | None]


class Coordinator(Protocol):
    """Leases and shared state across replicas."""

    #: This replica's name (metrics label ``replica``, lease records).
    replica: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    @property
    def healthy(self) -> bool:
        """Whether coordination works now (``False``: each replica on its own)."""

    async def acquire(self, key: str) -> Lease | Holder:
        """The lease for ``key``, or who holds it."""

    async def get(self, key: str) -> bytes | None:
        """A shared entry (``None``: absent, expired or coordination down)."""

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        """Set a shared entry for ``ttl`` seconds (best effort)."""

    async def touch(self, sha256: str, size: int, when: float) -> None:
        """Record an access of a shared blob (fleet-wide LRU; best effort)."""

    async def oldest(self, count: int) -> list[tuple[str, int]]:
        """Up to ``count`` least recently used shared blobs, ``(sha256, size)``."""

    async def forget(self, sha256: str) -> None:
        """Drop a blob's access record (it was evicted)."""

    async def total_size(self) -> int:
        """Bytes of shared blobs the access records know."""

    async def broadcast(self, channel: str, message: str) -> None:
        """Tell every replica (this one included) ``message`` (best effort)."""

    def subscribe(self, channel: str, listener: Listener) -> None:
        """Call ``listener(message)`` for every broadcast on ``channel``."""


@dataclass
class LocalLease:
    key: str
    token: str

    async def renew(self) -> bool:
        return True

    async def release(self) -> None:
        return None


class LocalCoordinator:
    """One host: every lease is granted, shared state lives in this process."""

    def __init__(self, replica: str = "local") -> None:
        self.replica = replica
        self._entries: dict[str, tuple[bytes, float]] = {}
        self._access: dict[str, tuple[int, float]] = {}
        self._listeners: dict[str, list[Listener]] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    @property
    def healthy(self) -> bool:
        return True

    async def acquire(self, key: str) -> Lease | Holder:
        return LocalLease(key, uuid.uuid4().hex)

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None or entry[1] < time.monotonic():
            self._entries.pop(key, None)
            return None
        return entry[0]

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        self._entries[key] = (value, time.monotonic() + ttl)

    async def touch(self, sha256: str, size: int, when: float) -> None:
        self._access[sha256] = (size, when)

    async def oldest(self, count: int) -> list[tuple[str, int]]:
        ordered = sorted(self._access.items(), key=lambda item: item[1][1])
        return [(sha, size) for sha, (size, _) in ordered[:count]]

    async def forget(self, sha256: str) -> None:
        self._access.pop(sha256, None)

    async def total_size(self) -> int:
        return sum(size for size, _ in self._access.values())

    async def broadcast(self, channel: str, message: str) -> None:
        for listener in self._listeners.get(channel, []):
            result = listener(message)
            if asyncio.iscoroutine(result):
                await result

    def subscribe(self, channel: str, listener: Listener) -> None:
        self._listeners.setdefault(channel, []).append(listener)
