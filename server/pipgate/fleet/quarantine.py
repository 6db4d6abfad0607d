"""One quarantine list for the whole fleet.

Each replica keeps the list in its cache directory (``policy/quarantine.json``, which
its workers watch). A change there (``pipgate quarantine`` against that directory, the
admin API, an OSV import) is applied as a difference to the fleet's copy in the
coordinator and broadcast; every other replica writes the fleet's list into its own
file, which its watchers load within a quarter of a second. Applying differences, not
whole lists, keeps two changes made on two replicas at nearly the same time.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict

from pipgate.fleet.coordinator import Coordinator
from pipgate.policy.quarantine import QuarantineStore
from pipgate.policy.rules import QuarantineEntry

log = logging.getLogger("pipgate.fleet")

CHANNEL = "quarantine"
KEY = "quarantine"
#: The shared list lives as long as the fleet (ten years, renewed by every change).
LIFETIME = 10 * 365 * 86400.0

Keyed = dict[tuple[str, str, str], QuarantineEntry]


def _keyed(entries: Sequence[QuarantineEntry]) -> Keyed:
    return {(e.project, e.versions, e.source): e for e in entries}


class QuarantineSync:
    """Keeps this replica's quarantine file and the fleet's list equal."""

    def __init__(self, coordinator: Coordinator, store: QuarantineStore) -> None:
        self._coordinator = coordinator
        self._store = store
        #: The list as last agreed with the fleet (``None``: not yet).
        self._synced: Keyed | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self, local: Sequence[QuarantineEntry]) -> None:
        """Agree once at start: the fleet's list wins; with none yet, this one's."""
        self._loop = asyncio.get_running_loop()
        coordinator = self._coordinator
        coordinator.subscribe(CHANNEL, self._on_broadcast)
        shared = await self._shared()
        if shared is None:
            self._synced = _keyed(local)
            if local:
                await self._publish(self._synced)
        else:
            await self._adopt(shared)

    def local_changed(self, entries: Sequence[QuarantineEntry]) -> None:
        """The watcher's callback: this replica's file changed (maybe by us). Safe from
        a worker thread (the watcher's first load runs in one)."""
        assert self._loop is not None, "QuarantineSync.start() first"
        keyed = _keyed(entries)
        self._loop.call_soon_threadsafe(self._spawn, keyed)

    def _spawn(self, keyed: Keyed) -> None:
        task = asyncio.get_running_loop().create_task(self._push(keyed))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _push(self, local: Keyed) -> None:
        async with self._lock:
            before = self._synced if self._synced is not None else {}
            added = {k: v for k, v in local.items() if before.get(k) != v}
            removed = [k for k in before if k not in local]
            if not added and not removed:
                return
            fleet = await self._shared()
            merged = dict(fleet) if fleet is not None else dict(before)
            merged.update(added)
            for key in removed:
                merged.pop(key, None)
            self._synced = merged
            await self._publish(merged)
            log.info(
                "quarantine change shared with the fleet: %d added, %d removed",
                len(added),
                len(removed),
            )
            if merged != local:  # another replica's change arrived meanwhile
                await self._write(merged)

    async def _on_broadcast(self, _message: str) -> None:
        shared = await self._shared()
        if shared is not None:
            async with self._lock:
                await self._adopt(shared)

    async def _adopt(self, shared: Keyed) -> None:
        self._synced = shared
        local = _keyed(await asyncio.to_thread(self._store.load))
        if local != shared:
            await self._write(shared)
            log.info("quarantine list taken from the fleet: %d entries", len(shared))

    async def _write(self, entries: Keyed) -> None:
        listed = list(entries.values())
        await asyncio.to_thread(self._store.change, lambda _old: listed)

    async def _shared(self) -> Keyed | None:
        raw = await self._coordinator.get(KEY)
        if raw is None:
            return None
        try:
            return _keyed([QuarantineEntry(**item) for item in json.loads(raw)])
        except (ValueError, TypeError) as exc:
            log.error("the fleet's quarantine list is unreadable, ignored: %s", exc)
            return None

    async def _publish(self, entries: Keyed) -> None:
        body = json.dumps([asdict(e) for e in entries.values()], sort_keys=True).encode()
        await self._coordinator.put(KEY, body, LIFETIME)
        await self._coordinator.broadcast(CHANNEL, "changed")
