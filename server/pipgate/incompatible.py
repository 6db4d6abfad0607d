"""Installs that cannot work here: the ops team's view of "no matching distribution".

When an installer that says what it runs on (pip and uv do, in their User-Agent) fetches
a project page whose newest release has no file it can install, pipgate notes it: the
project, the environment, the newest version that would install. Kept per (project,
environment, installer) with a count and when it was last seen, in the cache directory
(every worker adds to one list), bounded; shown on the status page, newest first. That
is how "TensorFlow has no wheel for Python 3.14 yet: use 3.12" reaches the developers
before their tickets do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import diskcache

from pipgate.compat import Environment, Verdict, verdicts
from pipgate.metrics import Metrics
from pipgate.simple.model import ProjectPage
from pipgate.store.catalog import SQLITE_MEMORY

log = logging.getLogger("pipgate.incompatible")

#: Entries kept (the least recently seen go first).
KEEP = 200
#: (page digest, environment) answers remembered by a worker.
MEMO_ENTRIES = 4096


@dataclass(frozen=True)
class Incompatible:
    """One kind of install that cannot work, as the status page lists it."""

    project: str
    environment: str
    installer: str
    python: str
    newest: str
    #: The newest version that installs in that environment, if any.
    newest_installable: str | None
    reason: str
    count: int = 1
    first_seen: float = 0.0
    last_seen: float = 0.0


class IncompatibleLog:
    """Notes incompatible page fetches (off the event loop) and lists them."""

    def __init__(self, cache_dir: Path, metrics: Metrics) -> None:
        self._cache = diskcache.Cache(
            str(cache_dir / "incompatible"), size_limit=1 << 28, **SQLITE_MEMORY
        )
        self._metrics = metrics
        self._memo: OrderedDict[tuple[str, str], Incompatible | None] = OrderedDict()
        self._pending: set[asyncio.Task[None]] = set()

    def page_served(self, page: ProjectPage, digest: str, env: Environment) -> None:
        """A page went to an installer in ``env``: note it if its newest release cannot
        install there (the answer is computed once per page content and environment)."""
        memo_key = (digest, env.label)
        if memo_key in self._memo:
            found = self._memo[memo_key]
            self._memo.move_to_end(memo_key)
        else:
            found = _incompatible(page, env)
            self._memo[memo_key] = found
            while len(self._memo) > MEMO_ENTRIES:
                self._memo.popitem(last=False)
        if found is None:
            return
        self._metrics.incompatible_pages.labels(installer=env.installer).inc()
        task = asyncio.get_running_loop().create_task(asyncio.to_thread(self._note, found))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _note(self, found: Incompatible) -> None:
        key = f"{found.project}|{found.environment}|{found.installer}"
        now = time.time()
        try:
            with self._cache.transact():
                old = self._cache.get(key)
                count = old["count"] + 1 if old else 1
                first = old["first_seen"] if old else now
                self._cache.set(
                    key, {**asdict(found), "count": count, "first_seen": first, "last_seen": now}
                )
            if len(self._cache) > KEEP * 2:
                self._trim()
        except Exception:  # a convenience for ops: never let it break a request
            log.exception("could not note an incompatible install")

    def _trim(self) -> None:
        entries = sorted(
            ((self._cache.get(k) or {}).get("last_seen", 0.0), k) for k in list(self._cache)
        )
        for _, key in entries[: len(entries) - KEEP]:
            self._cache.delete(key)

    async def recent(self, limit: int = 20) -> list[Incompatible]:
        """The most recently seen, newest first."""

        def read() -> list[Incompatible]:
            items = [self._cache.get(k) for k in list(self._cache)]
            found = [Incompatible(**item) for item in items if isinstance(item, dict)]
            return sorted(found, key=lambda i: i.last_seen, reverse=True)[:limit]

        return await asyncio.to_thread(read)

    async def close(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        with contextlib.suppress(Exception):
            self._cache.close()


def _incompatible(page: ProjectPage, env: Environment) -> Incompatible | None:
    found: list[Verdict] = verdicts(page, env)
    if not found or found[0].installable:
        return None
    newest = found[0]
    best = next((v for v in found if v.installable), None)
    return Incompatible(
        project=page.name,
        environment=env.label,
        installer=env.installer,
        python=env.python_full,
        newest=newest.version,
        newest_installable=best.version if best else None,
        reason=newest.reason or newest.state.value,
    )


def as_json(entries: list[Incompatible]) -> list[dict[str, Any]]:
    return [asdict(e) for e in entries]
