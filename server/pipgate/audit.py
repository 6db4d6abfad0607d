"""The audit trail: every file and metadata response pipgate sent, for "did anyone here
download litellm 1.82.7, who and when?", long after the file left the cache.

Rows go to ``<cache>/audit.sqlite3`` (SQLite in WAL mode: every worker writes, the
``pipgate audit`` command reads, none blocks the others for long). The request path
only appends a row to a list in memory; a background task writes the list in one
transaction per second (or per :data:`BATCH` rows) in a worker thread, and prunes
rows older than ``audit_retention`` once an hour.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from packaging.specifiers import SpecifierSet

from pipgate.policy.rules import file_version

log = logging.getLogger("pipgate.audit")

#: Rows written in one transaction at most; more wake the writer at once.
BATCH = 500
#: Seconds between two writes of what accumulated.
FLUSH_INTERVAL = 1.0
#: Seconds between two prunes of old rows.
PRUNE_INTERVAL = 3600.0
#: Rows kept in memory when the database cannot be written (then the oldest go).
MAX_PENDING = 50_000


@dataclass(frozen=True)
class AuditRecord:
    """One response of a file or metadata URL."""

    time: float
    client: str
    installer: str
    installer_version: str | None
    python: str | None
    project: str
    filename: str
    #: ``file`` or ``metadata``.
    kind: str
    sha256: str | None
    upstream: str | None
    #: ``hit``, ``miss``, ``bypass``, or ``refused`` (policy, not found, upstream error).
    result: str
    status: int
    bytes: int
    #: Whether the client received the whole body it asked for.
    complete: bool
    #: The failure reason of a refused or failed response (``policy``, ``timeout``…).
    reason: str | None = None
    request_id: str | None = None
    #: Who the client authenticated as (``None``: reads are open, or an anonymous probe).
    user: str | None = None

    @property
    def version(self) -> str | None:
        found = file_version(self.filename.removesuffix(".metadata"))
        return str(found) if found is not None else None


_COLUMNS = [f.name for f in fields(AuditRecord)]
_SCHEMA = """
CREATE TABLE IF NOT EXISTS downloads (
    time REAL NOT NULL, client TEXT, installer TEXT, installer_version TEXT, python TEXT,
    project TEXT NOT NULL, filename TEXT NOT NULL, version TEXT, kind TEXT,
    sha256 TEXT, upstream TEXT, result TEXT, status INTEGER, bytes INTEGER,
    complete INTEGER, reason TEXT, request_id TEXT, user TEXT
);
CREATE INDEX IF NOT EXISTS downloads_project ON downloads (project, time);
CREATE INDEX IF NOT EXISTS downloads_sha256 ON downloads (sha256);
CREATE INDEX IF NOT EXISTS downloads_time ON downloads (time);
"""
#: Columns later versions added, with their SQL types: an older database gains them
#: when it is opened for writing (its old rows read as NULL).
_ADDED_COLUMNS = (("user", "TEXT"),)
_LATE_INDEXES = "CREATE INDEX IF NOT EXISTS downloads_user ON downloads (user, time);"


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(_SCHEMA)
    _migrate(db)
    db.executescript(_LATE_INDEXES)
    return db


def _columns(db: sqlite3.Connection) -> set[str]:
    return {row[1] for row in db.execute("PRAGMA table_info(downloads)")}


def _migrate(db: sqlite3.Connection) -> None:
    """Add the columns an older audit.sqlite3 lacks (every worker may try at once: a
    column another one just added is fine)."""
    for name, kind in _ADDED_COLUMNS:
        if name in _columns(db):
            continue
        try:
            db.execute(f"ALTER TABLE downloads ADD COLUMN {name} {kind}")
        except sqlite3.OperationalError:
            if name not in _columns(db):
                raise


class AuditLog:
    """Collects rows on the request path, writes them in batches off the loop."""

    def __init__(self, cache_dir: Path, retention: float) -> None:
        self.path = cache_dir / "audit.sqlite3"
        self._retention = retention
        self._pending: list[AuditRecord] = []
        self._wake = asyncio.Event()
        self._db: sqlite3.Connection | None = None
        self._last_prune = 0.0

    def record(self, row: AuditRecord) -> None:
        """Keep a row for the next write (no I/O: the hot path)."""
        self._pending.append(row)
        if len(self._pending) > MAX_PENDING:
            del self._pending[: len(self._pending) - MAX_PENDING]
        if len(self._pending) >= BATCH:
            self._wake.set()

    async def run(self) -> None:
        """Write what accumulated, every second, until cancelled."""
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), FLUSH_INTERVAL)
                self._wake.clear()
                await self.flush()
        finally:
            await self.flush()
            if self._db is not None:
                self._db.close()
                self._db = None

    async def flush(self) -> None:
        """Write the pending rows now (and prune when an hour has passed)."""
        rows, self._pending = self._pending, []
        now = time.time()
        prune = now - self._last_prune > PRUNE_INTERVAL
        if not rows and not prune:
            return
        try:
            await asyncio.to_thread(self._write, rows, now if prune else None)
        except (sqlite3.Error, OSError) as exc:
            log.error("audit trail not written (%d rows kept for the next try): %s", len(rows), exc)
            self._pending[:0] = rows
            return
        if prune:
            self._last_prune = now

    def _write(self, rows: Sequence[AuditRecord], prune_at: float | None) -> None:
        if self._db is None:
            self._db = _connect(self.path)
        db = self._db
        db.execute("BEGIN")
        try:
            db.executemany(
                f"INSERT INTO downloads ({', '.join(_COLUMNS)}, version) "
                f"VALUES ({', '.join('?' * len(_COLUMNS))}, ?)",
                [(*astuple(row), row.version) for row in rows],
            )
            if prune_at is not None:
                db.execute("DELETE FROM downloads WHERE time < ?", (prune_at - self._retention,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise


def astuple(row: AuditRecord) -> tuple[Any, ...]:
    return tuple(getattr(row, name) for name in _COLUMNS)


def prune(cache_dir: Path, retention: float, *, now: float | None = None) -> int:
    """Delete rows older than ``retention`` (blocking); returns how many went."""
    path = cache_dir / "audit.sqlite3"
    if not path.exists():
        return 0
    db = _connect(path)
    try:
        cursor = db.execute(
            "DELETE FROM downloads WHERE time < ?", ((now or time.time()) - retention,)
        )
        return cursor.rowcount
    finally:
        db.close()


def query(
    cache_dir: Path,
    *,
    project: str | None = None,
    versions: str | None = None,
    sha256: str | None = None,
    since: float | None = None,
    user: str | None = None,
    limit: int = 10_000,
) -> list[dict[str, Any]]:
    """The recorded responses that match, oldest first (blocking). A database from
    before the ``user`` column reads as if no request had a user."""
    path = cache_dir / "audit.sqlite3"
    if not path.exists():
        return []
    clauses: list[str] = []
    params: list[object] = []
    if project is not None:
        clauses.append("project = ?")
        params.append(project)
    if sha256 is not None:
        clauses.append("sha256 = ?")
        params.append(sha256.lower())
    if since is not None:
        clauses.append("time >= ?")
        params.append(since)
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)
    db.row_factory = sqlite3.Row
    try:
        missing = [name for name, _kind in _ADDED_COLUMNS if name not in _columns(db)]
        if user is not None:
            if "user" in missing:
                return []
            clauses.append("user = ?")
            params.append(user)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = [
            dict(row)
            for row in db.execute(
                f"SELECT * FROM downloads {where} ORDER BY time LIMIT ?", (*params, limit)
            )
        ]
    finally:
        db.close()
    if versions:
        spec = SpecifierSet(versions)
        rows = [r for r in rows if r["version"] is not None and spec.contains(r["version"], True)]
    for row in rows:
        row["complete"] = bool(row["complete"])
        for name in missing:
            row[name] = None
    return rows
