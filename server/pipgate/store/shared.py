"""The fleet's copy of the verified blobs: what several replicas read and commit to.

Each replica keeps its own cache directory (:class:`~pipgate.store.blobs.BlobStore`,
the local tier: sendfile, flock between its workers). A :class:`SharedBlobs` is the
store behind every replica's local tier: an S3-compatible bucket
(:mod:`pipgate.store.s3`) or a directory all replicas mount (:mod:`pipgate.store.shared_dir`).
Both hold content-addressed blobs that were verified before they were committed, and
commit with a create-only write: whichever replica commits first wins, and a second
commit of the same name is a success that changes nothing (the bytes are the same).

The contract every implementation passes is ``tests/test_storage_contract.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pipgate.store.downloads import Body


class StorageError(Exception):
    """The shared store could not do what was asked (unreachable, refused, misconfigured).

    The message is one line, names the store and never holds a credential.
    """


class Unsafe(StorageError):
    """The store does not enforce create-only writes: refusing to share it."""


@dataclass(frozen=True)
class SharedBlob:
    """One committed blob as a listing shows it."""

    sha256: str
    size: int
    #: When it was committed (seconds since the epoch).
    mtime: float


class SharedBlobs(Protocol):
    """Verified blobs every replica can read."""

    #: What logs and ``/readyz`` call it (``s3://bucket/prefix``): no credentials.
    label: str

    async def start(self) -> None:
        """Connect and check the store is usable and enforces create-only writes
        (raises :class:`StorageError`, :class:`Unsafe`)."""

    async def close(self) -> None: ...

    async def stat(self, sha256: str) -> int | None:
        """The blob's size, or ``None`` when it is not there."""

    def open(self, sha256: str, start: int = 0) -> AbstractAsyncContextManager[Body]:
        """The blob's bytes from ``start`` on; ``Body.size`` is the whole blob's size.
        Raises ``FileNotFoundError`` when it is not there, :class:`StorageError` else."""

    async def put(self, sha256: str, path: Path) -> bool:
        """Commit the verified file at ``path`` as blob ``sha256``, create-only.

        ``True``: this call created it; ``False``: it was there already (also a success).
        """

    async def remove(self, sha256: str) -> None:
        """Delete the blob (eviction); a missing one is fine."""

    def iter(self) -> AsyncIterator[SharedBlob]:
        """Every committed blob, in no particular order."""
