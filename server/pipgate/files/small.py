"""Small verified blobs kept in memory, so a warm ``.metadata`` file or a small wheel is
answered without a worker-thread hop, a lock file or a ``sendfile`` call.

An install asks for dozens of such files, each once; on disk each costs an open, a
shared lock and a sendfile (about 0.8 ms of CPU for a 16 KiB file, most of it thread
hand-offs and selector registration). In memory the same answer is one write.

Bytes are hashed when they are read from disk: a copy that does not match its sha256
is never kept or sent, and the caller learns the blob is corrupt (it is then removed and
fetched again). Content-addressed bytes never change under their name, so an entry
needs no expiry; the memo is bounded by total size (least recently used goes first).
The policy is unaffected: the file service asks the page pipeline for its offer before
any body is looked up.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections import OrderedDict
from pathlib import Path

from pipgate.store.locks import acquire_shared

#: Blobs up to this size are kept in memory (PEP 658 metadata, small pure wheels).
SMALL_BODY = 256 * 1024
#: Total bytes kept per worker.
SMALL_BODIES_BYTES = 16 * 1024 * 1024


class CorruptBody(Exception):
    """The bytes on disk do not hash to the blob's name."""

    def __init__(self, detail: str, identity: tuple[int, int]) -> None:
        super().__init__(detail)
        #: ``(st_dev, st_ino)`` of the file found corrupt (for a safe removal).
        self.identity = identity


def read_verified(path: Path, sha256: str, use_lock: Path) -> bytes:
    """The whole blob at ``path``, read under its use lock and checked against ``sha256``
    (blocking). Raises :class:`CorruptBody` or ``FileNotFoundError``."""
    use = None
    with contextlib.suppress(OSError):  # a read-only cache still serves
        use = acquire_shared(use_lock)
    try:
        with open(path, "rb") as handle:
            data = handle.read(SMALL_BODY + 1)
            stat = os.fstat(handle.fileno())
    finally:
        if use is not None:
            os.close(use)
    if hashlib.sha256(data).hexdigest() != sha256:
        raise CorruptBody(
            f"{path.name}: {len(data)} bytes on disk do not match their sha256",
            (stat.st_dev, stat.st_ino),
        )
    return data


class SmallBodies:
    """sha256 → verified bytes, least recently used first, bounded in bytes."""

    def __init__(self, limit: int = SMALL_BODIES_BYTES) -> None:
        self._limit = limit
        self._bytes = 0
        self._bodies: OrderedDict[str, bytes] = OrderedDict()

    def get(self, sha256: str) -> bytes | None:
        data = self._bodies.get(sha256)
        if data is not None:
            self._bodies.move_to_end(sha256)
        return data

    def put(self, sha256: str, data: bytes) -> None:
        if len(data) > SMALL_BODY or sha256 in self._bodies:
            return
        self._bodies[sha256] = data
        self._bytes += len(data)
        while self._bytes > self._limit:
            _, old = self._bodies.popitem(last=False)
            self._bytes -= len(old)

    def drop(self, sha256: str) -> None:
        data = self._bodies.pop(sha256, None)
        if data is not None:
            self._bytes -= len(data)

    def __len__(self) -> int:
        return len(self._bodies)

    @property
    def size(self) -> int:
        """Bytes held."""
        return self._bytes
