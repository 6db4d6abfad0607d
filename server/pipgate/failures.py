"""Failure reporting: the counter, the log line, and the recent-failures list.

Metric labels stay bounded (no project or file names); this log keeps the detail of the
last failures for the admin API (``/-/admin/failures``), the full status page and
``pipgate failures``: time, project, file, upstream, proxy, reason, detail. Anyone
else sees a :func:`summary` of them: reasons and upstream names, counted. The list
lives in the cache directory (a diskcache deque with a fixed length), so every worker
writes to, and reads, one shared list.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from diskcache import Deque

from pipgate.errors import UpstreamError
from pipgate.metrics import Metrics

log = logging.getLogger("pipgate.upstream")

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


def summary(failures: Sequence[Failure]) -> dict[str, Any]:
    """What anyone may see of ``failures``: when, why and which upstream, and counts
    of each; never a project, a file, a proxy or the detail (which may name hosts,
    paths and exception texts)."""
    return {
        "failures": [
            {"time": f.time, "reason": f.reason, "upstream": f.upstream} for f in failures
        ],
        "by_reason": dict(Counter(f.reason for f in failures).most_common()),
        "by_upstream": dict(Counter(f.upstream for f in failures).most_common()),
    }


class FailureLog:
    """A bounded, process-safe list of recent failures."""

    def __init__(self, cache_dir: Path, keep: int = KEEP) -> None:
        self._deque = Deque(directory=str(cache_dir / "failures"), maxlen=keep)

    async def record(self, failure: Failure) -> None:
        """Append a failure (off the event loop)."""
        await asyncio.to_thread(self._deque.append, asdict(failure))

    async def recent(self, limit: int = 50) -> list[Failure]:
        """The newest failures first."""
        return await asyncio.to_thread(self.recent_now, limit)

    def recent_now(self, limit: int = 50) -> list[Failure]:
        """Blocking :meth:`recent` (``pipgate failures``)."""
        items = list(self._deque)[-limit:] if limit > 0 else []
        return [Failure(**item) for item in reversed(items)]

    def close(self) -> None:
        """Close the underlying SQLite connection."""
        self._deque.cache.close()


class FailureReporter:
    """Reports a failure once, in every place it belongs: the counter by reason, one
    ``fetch_failed`` log line, and the shared list behind ``/-/failures``.

    Injected into whatever can fail (page sources, downloads, the file service), so
    each reports with the names it knows; metric labels stay bounded.
    """

    def __init__(self, metrics: Metrics, failures: FailureLog | None = None) -> None:
        self._metrics = metrics
        self._failures = failures
        self._pending: set[asyncio.Task[None]] = set()
        self._last: asyncio.Task[None] | None = None

    def report(
        self,
        error: UpstreamError,
        *,
        upstream: str,
        proxy: str | None = None,
        project: str | None = None,
        file: str | None = None,
    ) -> None:
        """Count, log and list one failure (``upstream`` is a configured name or ``-``)."""
        self._metrics.failure(upstream, error.reason)
        log.warning(
            "fetch failed: reason=%s upstream=%s proxy=%s project=%s file=%s detail=%s",
            error.reason.value,
            upstream,
            proxy or "-",
            project or "-",
            file or "-",
            error.detail,
            extra={
                "event": "fetch_failed",
                "reason": error.reason.value,
                "upstream": upstream,
                "proxy": proxy,
                "project": project,
                "file": file,
            },
        )
        if self._failures is None:
            return
        record = Failure(
            time=time.time(),
            reason=error.reason.value,
            detail=error.detail,
            upstream=upstream,
            project=project,
            file=file,
            proxy=proxy,
        )
        # Written off the loop, one after the other, so the list keeps their order.
        task = asyncio.get_running_loop().create_task(self._append(self._last, record))
        self._last = task
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _append(self, previous: asyncio.Task[None] | None, record: Failure) -> None:
        if previous is not None:
            with contextlib.suppress(Exception):
                await previous
        assert self._failures is not None
        try:
            await self._failures.record(record)
        except Exception:  # the list is a convenience: never let it break a request
            log.exception("could not record a failure for /-/failures")

    async def drain(self) -> None:
        """Wait for pending list writes (shutdown)."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
