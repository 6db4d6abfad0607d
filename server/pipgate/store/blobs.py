"""Content-addressed, verified files on disk.

Layout: ``<cache>/blobs/ab/cd/<sha256>``. A blob is written to ``<cache>/tmp/``,
hashed while written, fsynced, checked against the published hash and only then
renamed into place (same filesystem, atomic), then the directory is fsynced (for a
download, just after its clients got their last byte).
So a blob path that exists is always complete and verified; a crash leaves at most a
temp file, which :meth:`BlobStore.clean_temp` removes at start-up.

All methods here block (disk I/O): callers run them in a worker thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from pipgate.store.locks import DownloadLock

#: Small temp files younger than this may belong to a live worker's write.
TEMP_GRACE = 600.0

_SHA256 = re.compile(r"^[0-9a-f]{64}$")

#: Hash algorithms pip accepts in a link fragment, strongest first. Every one upstream
#: publishes is verified (a page could pair a right md5 with a wrong sha256: both count).
VERIFIABLE = ("sha512", "sha384", "sha256", "sha224", "sha1", "md5")


class IntegrityError(Exception):
    """The bytes do not match what upstream published; nothing was stored."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        #: ``hash_mismatch`` or ``truncated`` (same names as :class:`pipgate.errors.Reason`).
        self.kind = kind


def check_bytes(data: bytes, expected: Mapping[str, str]) -> None:
    """Raise :class:`IntegrityError` unless ``data`` matches every published hash
    pipgate knows: a body verified in memory that could not be stored."""
    published = {k.lower(): v for k, v in expected.items()}
    for name in VERIFIABLE:
        want = published.get(name)
        if want and hashlib.new(name, data).hexdigest() != want.lower():
            raise IntegrityError("hash_mismatch", f"{name} of {len(data)} bytes != published")


def is_sha256(value: str) -> bool:
    """Whether ``value`` is a lowercase hex sha256 (the blob naming scheme)."""
    return bool(_SHA256.match(value))


@dataclass(frozen=True)
class Committed:
    """A blob now in the store."""

    sha256: str
    size: int
    path: Path
    #: False when upstream published no usable hash (stored as computed, unverified).
    verified: bool


class BlobStore:
    """The directory of verified blobs and its temp area."""

    def __init__(self, cache_dir: Path) -> None:
        self.root = cache_dir / "blobs"
        self.tmp = cache_dir / "tmp"
        self.locks = cache_dir / "locks"

    def ensure_dirs(self) -> None:
        """Create the directories (start-up)."""
        for directory in (self.root, self.tmp, self.locks):
            directory.mkdir(parents=True, exist_ok=True)

    def part_path(self, key: str) -> Path:
        """The well-known temp file of the download of ``key`` (followed across processes)."""
        return self.tmp / f"{key}.part"

    def download_lock_path(self, key: str) -> Path:
        """The lock file whose holder downloads ``key``."""
        return self.locks / f"{key}.lock"

    def use_lock_path(self, sha256: str) -> Path:
        """The lock file held (shared) while the blob is being sent."""
        return self.locks / f"{sha256}.use"

    def readers_path(self, key: str) -> Path:
        """Touched by workers that follow another's download of ``key`` and still send
        its bytes to a client."""
        return self.locks / f"{key}.readers"

    def free_bytes(self) -> int:
        """Free space on the cache's filesystem."""
        return shutil.disk_usage(self.tmp).free

    def free_and_reserved(self, key: str) -> tuple[int, int]:
        """Free space, and the bytes the downloads in flight (in every worker) still
        need to finish, except ``key``'s own: what a new download may count on is the
        difference."""
        reserved = 0
        with contextlib.suppress(OSError):
            for part in self.tmp.glob("*.part"):
                if part.stem == key:
                    continue
                state = DownloadLock.read_state(self.download_lock_path(part.stem)) or {}
                size = state.get("size")
                if state.get("state") == "running" and isinstance(size, int):
                    reserved += max(0, size - _size(part))
        return self.free_bytes(), reserved

    def path(self, sha256: str) -> Path:
        """Where the blob with this sha256 lives (whether or not it exists)."""
        if not is_sha256(sha256):
            raise ValueError("not a sha256 hex digest")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def exists(self, sha256: str) -> bool:
        """Whether a complete, verified blob is present."""
        return is_sha256(sha256) and self.path(sha256).is_file()

    def size(self, sha256: str) -> int | None:
        """The blob's size in bytes, or ``None`` when it is absent."""
        try:
            return self.path(sha256).stat().st_size
        except (OSError, ValueError):
            return None

    def writer(
        self,
        expected: Mapping[str, str],
        expected_size: int | None = None,
        path: Path | None = None,
    ) -> BlobWriter:
        """A writer for a new blob that must match ``expected`` hashes (name -> hex).

        ``path`` (default: a unique temp name) must be inside :attr:`tmp`.
        """
        return BlobWriter(self, expected, expected_size, path)

    def put_bytes(self, data: bytes, expected: Mapping[str, str]) -> Committed:
        """Store a small body whole (PEP 658 metadata), verified like any blob."""
        writer = self.writer(expected, len(data))
        try:
            writer.write(data)
            return writer.commit()
        finally:
            writer.discard()

    def remove(self, sha256: str) -> None:
        """Delete a blob if present."""
        with contextlib.suppress(FileNotFoundError):
            self.path(sha256).unlink()

    def clean_temp(self) -> int:
        """Remove temp files of interrupted writes; returns how many.

        A ``<key>.part`` whose download lock is held belongs to a live download in
        another worker and is kept; anything else in ``tmp/`` is debris of a crash.
        """
        removed = 0
        if not self.tmp.is_dir():
            return 0
        for entry in self.tmp.iterdir():
            if entry.suffix == ".part" and DownloadLock.is_held(
                self.download_lock_path(entry.stem)
            ):
                continue
            if entry.suffix != ".part" and time.time() - _mtime(entry) < TEMP_GRACE:
                continue  # a small write (metadata) of a live worker
            with contextlib.suppress(OSError):
                entry.unlink()
                removed += 1
        return removed

    def iter_blobs(self) -> Iterator[tuple[str, Path]]:
        """Every blob on disk as ``(sha256, path)``."""
        if not self.root.is_dir():
            return
        for first in self.root.iterdir():
            for second in first.iterdir() if first.is_dir() else ():
                for blob in second.iterdir() if second.is_dir() else ():
                    if is_sha256(blob.name):
                        yield blob.name, blob


class BlobWriter:
    """Writes one blob to a temp file while hashing it; commits only if it verifies."""

    def __init__(
        self,
        store: BlobStore,
        expected: Mapping[str, str],
        expected_size: int | None,
        path: Path | None = None,
    ) -> None:
        self._store = store
        self.expected = {k.lower(): v.lower() for k, v in expected.items()}
        self.expected_size = expected_size
        self.path = path or store.tmp / f"{uuid.uuid4().hex}.tmp"
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed in commit/discard
        # sha256 is always computed (blobs are named by it); every other published
        # algorithm pipgate knows is computed and checked too.
        self._sha256 = hashlib.sha256()
        self._checks = {
            name: hashlib.new(name)
            for name in VERIFIABLE
            if name in self.expected and name != "sha256"
        }
        self.written = 0

    def write(self, chunk: bytes) -> None:
        """Append and hash a chunk."""
        self._file.write(chunk)
        self._sha256.update(chunk)
        for check in self._checks.values():
            check.update(chunk)
        self.written += len(chunk)

    def flush(self) -> None:
        """Make written bytes visible to readers of the temp file."""
        self._file.flush()

    def commit(self, *, sync_dir: bool = True) -> Committed:
        """Verify, fsync and move into place. Raises :class:`IntegrityError` on mismatch.

        ``sync_dir=False``: the caller fsyncs the directory itself, later
        (:func:`sync_directory`), off its client's path: the rename is visible at once
        to every process, and until that fsync a power loss can only lose the blob
        whole, never leave it partial.
        """
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if self.expected_size is not None and self.written != self.expected_size:
            raise IntegrityError(
                "truncated", f"got {self.written} bytes, expected {self.expected_size}"
            )
        sha256 = self._sha256.hexdigest()
        verified = "sha256" in self.expected or bool(self._checks)
        if "sha256" in self.expected and sha256 != self.expected["sha256"]:
            raise IntegrityError("hash_mismatch", f"sha256 {sha256} != published")
        for name, check in self._checks.items():
            actual = check.hexdigest()
            if actual != self.expected[name]:
                raise IntegrityError("hash_mismatch", f"{name} {actual} != published")
        final = self._store.path(sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.path, final)
        if sync_dir:
            sync_directory(final.parent)
        return Committed(sha256=sha256, size=self.written, path=final, verified=verified)

    def discard(self) -> None:
        """Drop the temp file (no-op after a successful commit)."""
        if not self._file.closed:
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def sync_directory(path: Path) -> None:
    """fsync a directory: a rename into it is durable only once its entry is on disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
