"""The fleet's shared blobs in a directory every replica mounts (``storage.kind = directory``).

Layout: ``<root>/blobs/ab/cd/<sha256>``, the same as the local tier's. A commit copies
the verified file to ``<root>/tmp/``, fsyncs it, then ``link()``s it to its final name:
``link`` fails if the name exists, so the commit is create-only even between hosts
(``rename`` would silently replace). NFS implements it atomically on the server;
:meth:`SharedDirectory.start` refuses a mount where ``link`` does not work or does
not refuse an existing name (:class:`~pipgate.store.shared.Unsafe`).

Every blocking call runs in a worker thread (a network mount can stall for seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO

from pipgate.store.blobs import is_sha256, sync_directory
from pipgate.store.downloads import Body
from pipgate.store.shared import SharedBlob, SharedBlobs, StorageError, Unsafe

#: Chunks :meth:`SharedDirectory.open` reads and yields.
CHUNK = 1 << 20
#: A temp file untouched this long is debris of a replica that crashed mid-commit
#: (a live copy rewrites its temp file's mtime all the time).
TEMP_GRACE = 3600.0


class SharedDirectory(SharedBlobs):
    """Verified blobs in a shared directory, committed create-only with ``link()``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.label = str(root)
        self._blobs = root / "blobs"
        self._tmp = root / "tmp"

    def _path(self, sha256: str) -> Path:
        if not is_sha256(sha256):
            raise ValueError("not a sha256 hex digest")
        return self._blobs / sha256[:2] / sha256[2:4] / sha256

    def _error(self, exc: OSError, what: str) -> StorageError:
        reason = exc.strerror or type(exc).__name__
        return StorageError(f"{self.label}: {what}: {reason}")

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Check the directory is there, writable, and that ``link`` is create-only."""
        await asyncio.to_thread(self._check)

    def _check(self) -> None:
        if not self.root.is_dir():
            # Never create the root: on a replica whose mount is missing, that would
            # silently make a private directory look like the shared one.
            raise StorageError(f"{self.label}: not a directory (is the share mounted?)")
        probe = self._tmp / f"probe-{uuid.uuid4().hex}"
        # Linked into blobs/ as a commit would be (tmp/ and blobs/ on different mounts
        # fail here, not at the first commit); not a sha256 name, so never listed.
        linked = self._blobs / probe.name
        try:
            self._blobs.mkdir(exist_ok=True)
            self._tmp.mkdir(exist_ok=True)
            probe.write_bytes(b"probe")
        except OSError as exc:
            raise self._error(exc, "not writable") from None
        try:
            try:
                os.link(probe, linked)
            except OSError as exc:
                raise Unsafe(
                    f"{self.label}: link() does not work here ({exc.strerror}), so commits"
                    " cannot be create-only; refusing storage.kind = directory"
                ) from None
            try:
                os.link(probe, linked)
            except FileExistsError:
                pass
            else:
                raise Unsafe(
                    f"{self.label}: link() replaced an existing name, so replicas could"
                    " overwrite each other's blobs; refusing storage.kind = directory"
                )
        finally:
            for path in (probe, linked):
                with contextlib.suppress(OSError):
                    path.unlink()
        self._clean_temp()

    def _clean_temp(self) -> None:
        """Remove temp files of commits that a crash interrupted (long untouched)."""
        with contextlib.suppress(OSError):
            for entry in os.scandir(self._tmp):
                with contextlib.suppress(OSError):
                    if time.time() - entry.stat().st_mtime > TEMP_GRACE:
                        os.unlink(entry.path)

    async def close(self) -> None:
        return None

    # --- reads -----------------------------------------------------------------------------

    async def stat(self, sha256: str) -> int | None:
        """The blob file's size, ``None`` when absent."""
        path = self._path(sha256)
        try:
            return (await asyncio.to_thread(os.stat, path)).st_size
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._error(exc, f"stat {sha256}") from None

    @contextlib.asynccontextmanager
    async def open(self, sha256: str, start: int = 0) -> AsyncIterator[Body]:
        """The blob from ``start`` on, read in :data:`CHUNK` pieces."""
        path = self._path(sha256)
        if start < 0:
            raise ValueError("start must be >= 0")
        try:
            fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.label}: no blob {sha256}") from None
        except OSError as exc:
            raise self._error(exc, f"read {sha256}") from None
        try:
            size = (await asyncio.to_thread(os.fstat, fd)).st_size
            yield _FileBody(fd, size, start, lambda exc: self._error(exc, f"read {sha256}"))
        finally:
            os.close(fd)

    async def iter(self) -> AsyncIterator[SharedBlob]:
        """Every blob file, one ``blobs/ab`` directory listed per thread call."""
        try:
            firsts = await asyncio.to_thread(_subdirs, self._blobs)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._error(exc, "list") from None
        for first in firsts:
            try:
                found = await asyncio.to_thread(_scan, first)
            except OSError as exc:
                raise self._error(exc, "list") from None
            for blob in found:
                yield blob

    # --- writes ----------------------------------------------------------------------------

    async def put(self, sha256: str, path: Path) -> bool:
        """Copy ``path`` in and link it to its name; ``False`` if the name was taken."""
        final = self._path(sha256)
        # The local file's own errors (it is gone) are not the shared store's.
        source = await asyncio.to_thread(open, path, "rb")
        try:
            return await asyncio.to_thread(self._put, final, source)
        except OSError as exc:
            raise self._error(exc, f"write {sha256}") from None
        finally:
            source.close()

    def _put(self, final: Path, source: BinaryIO) -> bool:
        if final.exists():
            return False  # another replica committed it: no need to copy
        temp = self._tmp / f"{final.name}.{uuid.uuid4().hex}.tmp"
        try:
            with open(temp, "xb") as dst:
                shutil.copyfileobj(source, dst, CHUNK)
                dst.flush()
                os.fsync(dst.fileno())
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(temp, final)
            except FileExistsError:
                return False
            sync_directory(final.parent)
            return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()

    async def remove(self, sha256: str) -> None:
        """Unlink the blob (a reader that has it open keeps reading it)."""
        path = self._path(sha256)
        try:
            await asyncio.to_thread(path.unlink)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._error(exc, f"remove {sha256}") from None


class _FileBody:
    """An open blob file as a :class:`~pipgate.store.downloads.Body`."""

    def __init__(
        self, fd: int, size: int, start: int, error: Callable[[OSError], StorageError]
    ) -> None:
        self.size: int | None = size
        self._fd = fd
        self._start = start
        self._error = error

    async def chunks(self) -> AsyncIterator[bytes]:
        pos = self._start
        while True:
            try:
                chunk = await asyncio.to_thread(os.pread, self._fd, CHUNK, pos)
            except OSError as exc:
                raise self._error(exc) from None
            if not chunk:
                return
            pos += len(chunk)
            yield chunk


def _subdirs(path: Path) -> list[Path]:
    return sorted(Path(entry.path) for entry in os.scandir(path) if entry.is_dir())


def _scan(first: Path) -> list[SharedBlob]:
    """The blobs under one ``blobs/ab`` directory (names not of the layout skipped)."""
    found = []
    for second in _subdirs(first):
        for entry in os.scandir(second):
            name = entry.name
            if not (is_sha256(name) and name[:2] == first.name and name[2:4] == second.name):
                continue
            try:
                info = entry.stat()
            except FileNotFoundError:
                continue  # removed while listing
            found.append(SharedBlob(sha256=name, size=info.st_size, mtime=info.st_mtime))
    return found
