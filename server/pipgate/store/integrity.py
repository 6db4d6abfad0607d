"""Cache integrity over time: re-hash stored blobs and remove the ones that rotted.

A blob's name is its sha256, so checking one needs nothing but its bytes: a blob whose
content hashes to anything else is corrupt (bit rot, a bad disk, a hand edit) and must
never be served again. Two entry points share the checking and removal logic:

- :func:`verify_cache`: one blocking pass over the whole cache (``pipgate verify``).
- :class:`Scrubber`: a throttled background pass while serving, one worker at a time
  (``locks/scrub.lock``), resuming after restarts from a cursor in ``scrub.json``.

Removal mirrors eviction: unlink the blob, then forget its catalog record and subtract
its size from the shared counters in one transaction. A blob being sent is removed all
the same (its readers keep the open inode), but the removal says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipgate.metrics import Metrics
from pipgate.store.blobs import BlobStore
from pipgate.store.catalog import BlobRecord, Catalog
from pipgate.store.locks import try_exclusive

log = logging.getLogger("pipgate.integrity")

#: Bytes read per hashing step.
CHUNK = 1 << 20
#: Seconds between the end of one background pass and the start of the next.
PASS_INTERVAL = 3600.0
#: Seconds between attempts to become the scrubbing worker.
LOCK_RETRY = 60.0
#: Seconds between saves of the background pass's resume cursor.
CURSOR_SAVE_INTERVAL = 30.0
#: How far (seconds of work) the throttle may fall behind before it forgives the debt,
#: so a stall (slow disk, suspended VM) is not followed by a full-speed burst.
MAX_DEBT = 1.0


@dataclass(frozen=True)
class CorruptBlob:
    """A blob that does not hash to its name, or could not be read at all."""

    sha256: str
    path: Path
    #: What the content hashes to (``None`` when it could not be read).
    actual: str | None
    #: Why it could not be read (``None`` when it was read).
    error: str | None
    #: The catalog record's project and filename, if there is a record.
    project: str | None
    filename: str | None
    removed: bool = False
    #: A client was being sent the blob when it was removed.
    in_use: bool = False

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        data = asdict(self)
        data["path"] = str(self.path)
        return data


@dataclass(frozen=True)
class UnverifiedBlob:
    """A blob upstream published no hash for: intact, but only checked against itself."""

    sha256: str
    path: Path
    project: str
    filename: str

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        data = asdict(self)
        data["path"] = str(self.path)
        return data


@dataclass
class VerifyReport:
    """The outcome of :func:`verify_cache`."""

    checked: int = 0
    bytes: int = 0
    ok: int = 0
    corrupt: list[CorruptBlob] = field(default_factory=list)
    unverified: list[UnverifiedBlob] = field(default_factory=list)
    #: Corrupt blobs removed (with ``repair=True``).
    repaired: int = 0
    #: Blobs on disk without an catalog record (start-up reconciliation adopts them).
    missing_records: int = 0

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``pipgate verify --json``)."""
        return {
            "checked": self.checked,
            "bytes": self.bytes,
            "ok": self.ok,
            "corrupt": [blob.to_json() for blob in self.corrupt],
            "unverified": [blob.to_json() for blob in self.unverified],
            "repaired": self.repaired,
            "missing_records": self.missing_records,
        }

    def lines(self) -> list[str]:
        """One line per problem, then a summary line."""
        out = []
        for bad in self.corrupt:
            name = _name(bad.project, bad.filename)
            if bad.actual is not None:
                what = f"corrupt {bad.sha256} {name}: content hashes to {bad.actual}"
            else:
                what = f"unreadable {bad.sha256} {name}: {bad.error}"
            if bad.removed:
                what += "; removed" + (" (it was being served)" if bad.in_use else "")
            out.append(what)
        for blob in self.unverified:
            out.append(
                f"unverified {blob.sha256} {_name(blob.project, blob.filename)}: "
                "upstream published no hash"
            )
        summary = (
            f"checked {self.checked} files ({human_size(self.bytes)}): {self.ok} ok, "
            f"{len(self.corrupt)} corrupt, {len(self.unverified)} unverified"
        )
        if self.repaired:
            summary += f", {self.repaired} removed"
        if self.missing_records:
            summary += f", {self.missing_records} without an catalog record"
        out.append(summary)
        return out


def human_size(size: int) -> str:
    """``4.5 GB`` (units of 1024, like ``cache.max_size``)."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024:
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


def _name(project: str | None, filename: str | None) -> str:
    return f"{project}/{filename}" if filename else "(no catalog record)"


class BlobHash:
    """One blob being re-hashed step by step (blocking; the scrubber steps in a thread).

    The blob's inode is remembered so that removal never deletes a different file that
    was committed under the same name after the corrupt one was read. ``close`` waits
    for a running ``step``: a step abandoned by a cancelled task must not read from a
    descriptor number that was closed and reused meanwhile.
    """

    def __init__(self, path: Path) -> None:
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed in close()
        stat = os.fstat(self._file.fileno())
        self.identity = (stat.st_dev, stat.st_ino)
        self._digest = hashlib.sha256()
        self._lock = threading.Lock()
        self.size = 0

    def step(self, limit: int = CHUNK) -> int:
        """Hash up to ``limit`` more bytes; returns how many (0 at the end or once closed)."""
        with self._lock:
            if self._file.closed:
                return 0
            chunk = self._file.read(limit) or b""
            self._digest.update(chunk)
            self.size += len(chunk)
            return len(chunk)

    def hexdigest(self) -> str:
        """The sha256 of the bytes hashed so far."""
        return self._digest.hexdigest()

    def close(self) -> None:
        """Close the file (after a step running in another thread)."""
        with self._lock:
            self._file.close()

    @classmethod
    def whole(cls, path: Path) -> BlobHash:
        """Hash a whole file at full speed."""
        hashing = cls(path)
        try:
            while hashing.step():
                pass
        finally:
            hashing.close()
        return hashing


def remove_corrupt(
    blobs: BlobStore,
    catalog: Catalog,
    sha256: str,
    identity: tuple[int, int],
    record: BlobRecord | None,
) -> tuple[bool, bool]:
    """Remove a corrupt blob and its record (blocking); returns ``(removed, in_use)``.

    Nothing is removed when the file at the blob's path is no longer the inode that was
    found corrupt (eviction or another repair got there first, possibly followed by a
    fresh, verified download).
    """
    use = try_exclusive(blobs.use_lock_path(sha256))
    try:
        path = blobs.path(sha256)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return False, use is None
        if (stat.st_dev, stat.st_ino) != identity:
            return False, use is None
        path.unlink(missing_ok=True)
        catalog.forget_blob(sha256, record.size if record is not None else 0)
    finally:
        if use is not None:
            os.close(use)
    if use is not None:
        # As eviction does: the lock file of a blob that is gone is debris.
        with contextlib.suppress(FileNotFoundError):
            blobs.use_lock_path(sha256).unlink()
    return True, use is None


def verify_cache(
    cache_dir: Path,
    *,
    repair: bool = False,
    progress: Callable[[str], None] | None = None,
) -> VerifyReport:
    """Re-hash every blob in ``cache_dir`` (blocking); with ``repair``, remove corrupt ones.

    ``progress`` is called after each file with ``"<done>/<total> <sha256>"``. Safe while
    pipgate serves the same cache: blobs evicted meanwhile are skipped. Unreadable blobs
    are reported but never removed (a permissions mistake must not empty the cache).
    """
    if not cache_dir.is_dir():
        raise FileNotFoundError(f"no cache directory at {cache_dir}")
    blobs = BlobStore(cache_dir)
    catalog = Catalog(cache_dir)
    report = VerifyReport()
    try:
        records = {sha: record for sha, record, _atime in catalog.blob_entries()}
        on_disk = sorted(blobs.iter_blobs())
        for done, (sha, path) in enumerate(on_disk, 1):
            _verify_one(blobs, catalog, sha, path, records.get(sha), repair, report)
            if progress is not None:
                progress(f"{done}/{len(on_disk)} {sha}")
    finally:
        catalog.close()
    return report


def _verify_one(
    blobs: BlobStore,
    catalog: Catalog,
    sha: str,
    path: Path,
    record: BlobRecord | None,
    repair: bool,
    report: VerifyReport,
) -> None:
    project = record.project if record is not None else None
    filename = record.filename if record is not None else None
    try:
        hashing = BlobHash.whole(path)
    except FileNotFoundError:
        return  # evicted while we walked
    except OSError as exc:
        report.checked += 1
        error = exc.strerror or type(exc).__name__
        report.corrupt.append(CorruptBlob(sha, path, None, error, project, filename))
        return
    report.checked += 1
    report.bytes += hashing.size
    if record is None:
        report.missing_records += 1
    actual = hashing.hexdigest()
    if actual != sha:
        removed = in_use = False
        if repair:
            removed, in_use = remove_corrupt(blobs, catalog, sha, hashing.identity, record)
            report.repaired += removed
        report.corrupt.append(
            CorruptBlob(sha, path, actual, None, project, filename, removed, in_use)
        )
    elif record is not None and not record.verified:
        report.unverified.append(UnverifiedBlob(sha, path, record.project, record.filename))
    else:
        report.ok += 1


class Throttle:
    """Paces work to ``rate`` units per second on average (a leaky bucket).

    :meth:`delay` says how long to sleep after a unit of work so the average holds.
    """

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self._start = clock()
        self._done = 0.0

    def delay(self, amount: int) -> float:
        """Seconds to wait after ``amount`` more units of work."""
        self._done += amount
        now = self._clock()
        due = self._start + self._done / self.rate
        if due < now - MAX_DEBT:
            self._start, self._done = now, 0.0  # behind schedule: no catch-up burst
            return 0.0
        return max(0.0, due - now)


class Scrubber:
    """The background integrity pass of one worker (only one worker scrubs at a time)."""

    def __init__(
        self,
        cache_dir: Path,
        catalog: Catalog,
        blobs: BlobStore,
        metrics: Metrics,
        rate_bytes_per_second: int,
        *,
        pass_interval: float = PASS_INTERVAL,
        lock_retry: float = LOCK_RETRY,
    ) -> None:
        self._catalog = catalog
        self._blobs = blobs
        self._metrics = metrics
        self.rate = rate_bytes_per_second
        self._pass_interval = pass_interval
        self._lock_retry = lock_retry
        self._lock_path = blobs.locks / "scrub.lock"
        self._state_path = cache_dir / "scrub.json"

    async def run(self) -> None:
        """Scrub forever, one pass per ``pass_interval``; returns at once when disabled.

        Cancel it to stop. Per-file problems are logged and counted, never raised.
        """
        if self.rate <= 0:
            return
        guard = await self._become_scrubber()
        try:
            cursor, finished_at = await asyncio.to_thread(self._load_state)
            if not cursor:
                since = time.time() - finished_at
                if 0 <= since < self._pass_interval:
                    await asyncio.sleep(self._pass_interval - since)  # finished before restart
            while True:
                try:
                    await self.scrub_pass()
                except Exception:  # a pass-level failure (cache dir gone): try next time
                    log.exception("integrity scrub pass failed")
                await asyncio.sleep(self._pass_interval)
        finally:
            os.close(guard)

    async def _become_scrubber(self) -> int:
        """Wait until this worker holds ``locks/scrub.lock``; returns its descriptor."""
        while True:
            attempt = asyncio.ensure_future(asyncio.to_thread(try_exclusive, self._lock_path))
            try:
                guard = await asyncio.shield(attempt)
            except asyncio.CancelledError:
                attempt.add_done_callback(_close_acquired)  # don't keep a lock we never use
                raise
            except OSError:
                log.warning("cannot open %s; integrity scrub retries later", self._lock_path)
                guard = None
            if guard is not None:
                return guard
            await asyncio.sleep(self._lock_retry)

    async def scrub_pass(self) -> Counter[str]:
        """One throttled pass over every blob (resuming from the saved cursor).

        Returns how many files had each result (``ok``, ``corrupt``, ``unverified``,
        ``error``; ``removed`` counts corrupt blobs deleted).
        """
        started = time.monotonic()
        cursor, _finished_at = await asyncio.to_thread(self._load_state)
        on_disk = await asyncio.to_thread(lambda: sorted(self._blobs.iter_blobs()))
        throttle = Throttle(self.rate)
        results: Counter[str] = Counter()
        saved_at = time.monotonic()
        for sha, path in on_disk:
            if sha <= cursor:
                continue
            try:
                result = await self._scrub_one(sha, path, throttle)
            except Exception:
                log.warning("integrity check of blob %s failed", sha, exc_info=True)
                result = None
            if result is not None:
                label, removed = result
                results[label] += 1
                results["removed"] += removed
                self._metrics.integrity_checks.labels(result=label).inc()
            if time.monotonic() - saved_at >= CURSOR_SAVE_INTERVAL:
                await asyncio.to_thread(self._save_state, {"cursor": sha})
                saved_at = time.monotonic()
        await asyncio.to_thread(self._save_state, {"cursor": "", "finished_at": time.time()})
        log.info(
            "integrity scrub pass done in %.0fs: %d ok, %d corrupt (%d removed), "
            "%d unverified, %d unreadable",
            time.monotonic() - started,
            results["ok"],
            results["corrupt"],
            results["removed"],
            results["unverified"],
            results["error"],
        )
        return results

    async def _scrub_one(self, sha: str, path: Path, throttle: Throttle) -> tuple[str, bool] | None:
        """Check one blob: ``(result label, removed)``, or ``None`` if it vanished (evicted)."""
        record = await self._catalog.get_blob(sha)
        try:
            hashing = await asyncio.to_thread(BlobHash, path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("integrity: blob %s is unreadable: %s", sha, exc.strerror or exc)
            return "error", False
        try:
            while read := await asyncio.to_thread(hashing.step):
                pause = throttle.delay(read)
                if pause > 0:
                    await asyncio.sleep(pause)
        except OSError as exc:
            log.warning("integrity: blob %s is unreadable: %s", sha, exc.strerror or exc)
            return "error", False
        finally:
            _close_soon(hashing)
        actual = hashing.hexdigest()
        if actual == sha:
            unverified = record is not None and not record.verified
            return ("unverified" if unverified else "ok"), False
        removed, in_use = await asyncio.to_thread(
            remove_corrupt, self._blobs, self._catalog, sha, hashing.identity, record
        )
        if not removed:
            outcome = "already gone"
        else:
            outcome = "removed while being served" if in_use else "removed"
        log.warning(
            "integrity: blob %s (%s) is corrupt, its content hashes to %s; %s",
            sha,
            _name(record.project if record else None, record.filename if record else None),
            actual,
            outcome,
        )
        if removed:
            size, files = await self._catalog.totals()
            self._metrics.cache_size.set(size)
            self._metrics.cache_files.set(files)
        return "corrupt", removed

    def _load_state(self) -> tuple[str, float]:
        """``(cursor, finished_at)`` of the last pass; ``("", 0.0)`` if absent or garbled."""
        try:
            state = json.loads(self._state_path.read_text(encoding="utf-8"))
            return str(state.get("cursor") or ""), float(state.get("finished_at") or 0.0)
        except (OSError, ValueError, TypeError, AttributeError):
            return "", 0.0

    def _save_state(self, state: dict[str, Any]) -> None:
        """Write the state atomically; failing to is not worth stopping the scrub."""
        tmp = self._state_path.with_suffix(".json.tmp")
        try:
            tmp.write_text(json.dumps(state), encoding="utf-8")
            os.replace(tmp, self._state_path)
        except OSError as exc:
            log.debug("cannot save scrub state: %s", exc)


def _close_soon(hashing: BlobHash) -> None:
    """Close in a thread: after a cancellation, a step may still be reading in one."""
    try:
        asyncio.get_running_loop().run_in_executor(None, hashing.close)
    except RuntimeError:  # the executor is shutting down: no step can be running
        hashing.close()


def _close_acquired(attempt: asyncio.Future[int | None]) -> None:
    if not attempt.cancelled() and attempt.exception() is None:
        fd = attempt.result()
        if fd is not None:
            os.close(fd)
