"""The quarantine list: projects or versions an operator took out of service.

Kept in ``<cache>/policy/quarantine.json`` (one small JSON document, written whole
through a temp file and a rename, under an ``flock`` so two commands never lose each
other's change). Every worker of a running server watches the file's modification
time and reloads it within :data:`WATCH_INTERVAL`, so ``pipgate quarantine add``
takes effect everywhere at once, without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

from pipgate.policy.rules import QuarantineEntry

log = logging.getLogger("pipgate.policy")

#: How often a running server looks for changes (the promise is "within a second").
WATCH_INTERVAL = 0.25


class QuarantineError(ValueError):
    """The quarantine file cannot be read (it is never half-written by pipgate)."""


class QuarantineStore:
    """Read and change the quarantine list of one cache directory."""

    def __init__(self, cache_dir: Path) -> None:
        self.dir = cache_dir / "policy"
        self.path = self.dir / "quarantine.json"

    def load(self) -> list[QuarantineEntry]:
        """The entries (none when there is no file yet)."""
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise QuarantineError(f"{self.path}: cannot read ({exc.strerror})") from None
        try:
            data = json.loads(raw)
            return [QuarantineEntry(**item) for item in data["entries"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise QuarantineError(f"{self.path}: not a quarantine list ({exc})") from None

    def stamp(self) -> tuple[int, int, int] | None:
        """What changes when the file does (every write is a new inode), or None."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        return (stat.st_ino, stat.st_mtime_ns, stat.st_size)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "quarantine.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def change(
        self, edit: Callable[[list[QuarantineEntry]], list[QuarantineEntry]]
    ) -> list[QuarantineEntry]:
        """Apply ``edit`` to the list under the lock and write the result atomically."""
        with self._locked():
            entries = edit(self.load())
            body = json.dumps({"version": 1, "entries": [asdict(e) for e in entries]}, indent=2)
            part = self.dir / f"quarantine.{uuid.uuid4().hex}.part"
            try:
                with open(part, "w", encoding="utf-8") as out:
                    out.write(body + "\n")
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(part, self.path)
            finally:
                part.unlink(missing_ok=True)
            return entries

    def add(self, new: Iterable[QuarantineEntry]) -> tuple[int, list[QuarantineEntry]]:
        """Add entries, replacing any with the same project, versions and source;
        returns how many were not there before, and the whole list."""
        fresh = list(new)
        added = 0

        def edit(entries: list[QuarantineEntry]) -> list[QuarantineEntry]:
            nonlocal added
            keys = {_key(e) for e in entries}
            added = sum(1 for e in fresh if _key(e) not in keys)
            replaced = {_key(e) for e in fresh}
            return [e for e in entries if _key(e) not in replaced] + fresh

        entries = self.change(edit)
        return added, entries

    def remove(self, project: str, versions: str = "") -> tuple[int, list[QuarantineEntry]]:
        """Remove the entries of ``project`` (with exactly these ``versions``, or all
        of the project's when ``versions`` is ``"*"``); returns how many went."""
        removed = 0

        def edit(entries: list[QuarantineEntry]) -> list[QuarantineEntry]:
            nonlocal removed
            kept = [
                e
                for e in entries
                if not (e.project == project and (versions == "*" or e.versions == versions))
            ]
            removed = len(entries) - len(kept)
            return kept

        entries = self.change(edit)
        return removed, entries


def _key(entry: QuarantineEntry) -> tuple[str, str, str]:
    return (entry.project, entry.versions, entry.source)


class QuarantineWatcher:
    """Reloads the list in a running server when the file changes."""

    def __init__(
        self, store: QuarantineStore, on_change: Callable[[Sequence[QuarantineEntry]], None]
    ) -> None:
        self._store = store
        self._on_change = on_change
        self._stamp: tuple[int, int, int] | None = None

    def load_now(self) -> None:
        """Read the list once (start-up; blocking)."""
        self._stamp = self._store.stamp()
        self._on_change(self._store.load())

    async def run(self) -> None:
        """Poll for changes until cancelled; a broken file keeps the previous list."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            stamp = await asyncio.to_thread(self._store.stamp)
            if stamp == self._stamp:
                continue
            try:
                entries = await asyncio.to_thread(self._store.load)
            except QuarantineError as exc:
                log.error("quarantine list not reloaded, the previous one stays: %s", exc)
                self._stamp = stamp
                continue
            self._stamp = stamp
            log.info("quarantine list reloaded: %d entries", len(entries))
            self._on_change(entries)


def now() -> float:
    """The time an entry is added (a seam for tests)."""
    return time.time()
