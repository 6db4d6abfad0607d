"""The recent failed downloads, with the names metrics may not carry.

Metric labels stay bounded (no project or file names); this log keeps the detail of the
last failures for ``/-/failures`` and the status page: time, project, file, upstream,
proxy, reason, detail. It lives in the cache directory (a diskcache deque with a fixed
length), so every worker writes to, and reads, one shared list.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from diskcache import Deque

#: How many failures are kept (oldest dropped first).
KEEP = 200


@dataclass(frozen=True)
class Failure:
    """One failed fetch, as an operator wants to see it."""

    time: float
    reason: str
    detail: str
    upstream: str
    project: str | None = None
    file: str | None = None
    proxy: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class FailureLog:
    """A bounded, process-safe list of recent failures."""

    def __init__(self, cache_dir: Path, keep: int = KEEP) -> None:
        self._deque = Deque(directory=str(cache_dir / "failures"), maxlen=keep)

    async def record(self, failure: Failure) -> None:
        """Append a failure (off the event loop)."""
        await asyncio.to_thread(self._deque.append, asdict(failure))

    async def recent(self, limit: int = 50) -> list[Failure]:
        """The newest failures first."""

        def read() -> list[Failure]:
            items = list(self._deque)[-limit:]
            return [Failure(**item) for item in reversed(items)]

        return await asyncio.to_thread(read)

    def close(self) -> None:
        """Close the underlying SQLite connection."""
        self._deque.cache.close()
