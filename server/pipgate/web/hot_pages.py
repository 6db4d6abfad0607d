"""Warm project pages answered from memory, without the page pipeline.

A build farm asks for the same few hundred pages thousands of times a minute. Each
answer went through the policy filter, the router, the upstream source, the renderer
and header building: pure work whose result changes only when the page does. Here the
finished answer of each variant (project, format, gzip, link base) is kept for at most
:data:`HOT_SECONDS`, and never past the moment the page stops being fresh or changes by
itself (a file leaving its release cooldown). A policy change (reload, quarantine)
empties it at once; anything else that changes a page upstream or in another worker is
seen within :data:`HOT_SECONDS` more than before.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipgate.simple.model import ProjectPage

#: Longest an answer is reused.
HOT_SECONDS = 1.0
#: Bounds of the memo (entries live a second, so these are rarely reached).
MAX_ENTRIES = 4096
MAX_BYTES = 16 << 20
#: Oldest entries looked at for expiry on each ``put``.
SWEEP = 8

#: (project, format variant, gzip, link base).
Key = tuple[str, str, bool, str | None]


@dataclass(slots=True)
class HotPage:
    """One variant's finished answer."""

    body: bytes
    #: Every header but ``Age``.
    headers: dict[str, str]
    etag: str
    #: The page's age when the answer was made, and when that was (monotonic).
    age: float
    made: float
    #: Reused until then (monotonic).
    until: float
    #: What the answer was made from (the ops view of incompatible installs reads it).
    page: ProjectPage
    digest: str
    #: The status line and headers but the per-request ones, as sent (the hot path
    #: makes it on first use: :func:`pipgate.web.hot_path.wire_head`).
    head: bytes | None = None

    def age_at(self, now: float) -> str:
        return str(int(self.age + now - self.made))


class HotPages:
    """The memo of finished page answers, per worker."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[Key, HotPage] = {}
        self._bytes = 0

    def get(self, key: Key) -> tuple[HotPage, float] | None:
        """The answer for ``key`` if it may still be reused, and the time now."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        now = self._clock()
        if now >= entry.until:
            self._drop(key)
            return None
        return entry, now

    def put(
        self,
        key: Key,
        *,
        body: bytes,
        headers: dict[str, str],
        etag: str,
        age: float,
        fresh_for: float,
        page: ProjectPage,
        digest: str,
    ) -> None:
        """Keep an answer made now for a page that stays as it is for ``fresh_for`` s."""
        lifetime = min(HOT_SECONDS, fresh_for)
        if lifetime <= 0 or len(body) > MAX_BYTES // 16:
            return
        now = self._clock()
        self._drop(key)
        # Entries live a second at most: those made first that have expired go now (a
        # page asked for once, and never again, must not wait for the bounds).
        for old in list(itertools.islice(self._entries, SWEEP)):
            if self._entries[old].until > now:
                break
            self._drop(old)
        self._entries[key] = HotPage(body, headers, etag, age, now, now + lifetime, page, digest)
        self._bytes += len(body)
        while len(self._entries) > MAX_ENTRIES or self._bytes > MAX_BYTES:
            self._drop(next(iter(self._entries)))  # the oldest

    def clear(self) -> None:
        """Forget every answer (the policy changed, a page was purged)."""
        self._entries.clear()
        self._bytes = 0

    def _drop(self, key: Key) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= len(entry.body)


@dataclass(slots=True)
class HotFile:
    """A finished answer whose body is a rendered file (a project list variant)."""

    path: Path
    size: int
    #: Every header but ``Age``.
    headers: dict[str, str]
    etag: str
    age: float
    made: float
    until: float

    def age_at(self, now: float) -> str:
        return str(int(self.age + now - self.made))


class HotFiles:
    """The project list's answers, per variant, for up to :data:`HOT_SECONDS`: a warm
    ``/simple/`` then costs no catalog read and no file look-up before its sendfile."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[str, HotFile] = {}

    def get(self, variant: str) -> tuple[HotFile, float] | None:
        entry = self._entries.get(variant)
        if entry is None:
            return None
        now = self._clock()
        if now >= entry.until:
            del self._entries[variant]
            return None
        return entry, now

    def put(
        self,
        variant: str,
        *,
        path: Path,
        size: int,
        headers: dict[str, str],
        etag: str,
        age: float,
        fresh_for: float,
    ) -> None:
        lifetime = min(HOT_SECONDS, fresh_for)
        if lifetime > 0:
            now = self._clock()
            self._entries[variant] = HotFile(path, size, headers, etag, age, now, now + lifetime)

    def clear(self) -> None:
        self._entries.clear()
