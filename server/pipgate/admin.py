"""The administrative operations, each written once for the CLI and the admin API.

Every operation works on the cache directory of a :class:`~pipgate.config.Config` and
blocks (the admin API runs them in a worker thread), so a shell on the server and any
worker of a running pipgate do exactly the same thing, through the same locks:

- :func:`purge_pages`: forget a project's cached pages; the next request asks upstream
  (workers notice within the few seconds they memoise a page record).
- :func:`remove_file`: delete a cached file, by sha256 or project and filename, under
  the rules of eviction: never a file being sent, never one stored in the last minute
  (its download may still have readers).
- :func:`audit_rows`: the audit trail, with the filters of ``pipgate audit``.
- :func:`recent_failures`: the failure list with every detail.
- :func:`claim_scrub` and :func:`run_scrub`: the pass of ``pipgate verify --repair``,
  one at a time per cache, with its progress and outcome in ``admin-scrub.json``.

The quarantine operations live in :mod:`pipgate.policy.commands`; the policy is reloaded
by SIGHUP (``kill -HUP``, ``systemctl reload``), which the admin API sends too.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from pipgate.audit import query
from pipgate.config import Config
from pipgate.config.values import parse_optional_timestamp, parse_specifier
from pipgate.failures import Failure, FailureLog
from pipgate.files.metadata import METADATA_SUFFIX
from pipgate.links import is_safe_filename
from pipgate.simple.names import is_valid_name, normalize
from pipgate.store.blobs import BlobStore
from pipgate.store.catalog import BlobRecord, Catalog
from pipgate.store.evict import MIN_AGE, remove_unused
from pipgate.store.integrity import verify_cache
from pipgate.store.locks import try_exclusive

#: Most audit rows one query returns.
AUDIT_LIMIT = 10_000
#: Where the last admin scrub tells how it went, and its lock (in ``locks/``).
SCRUB_STATE = "admin-scrub.json"
SCRUB_LOCK = "admin-scrub.lock"
#: Seconds between two progress writes of a running scrub.
SCRUB_PROGRESS_INTERVAL = 1.0

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def project_name(text: str) -> str:
    """A project name, PEP 503 normalised; ``ValueError`` when it is none."""
    if not is_valid_name(text):
        raise ValueError(f"not a project name: {text!r}")
    return normalize(text)


def sha256_of(text: str) -> str:
    """A sha256 as 64 hex digits, lowercased; ``ValueError`` otherwise."""
    if not _HEX64.fullmatch(text):
        raise ValueError("a sha256 is 64 hex digits")
    return text.lower()


# --- pages -----------------------------------------------------------------------------


def purge_pages(config: Config, project: str) -> dict[str, Any]:
    """Forget the cached pages (and remembered 404s) of ``project`` in every upstream."""
    name = project_name(project)
    catalog = Catalog(config.cache_dir)
    try:
        purged = [u.name for u in config.upstreams if catalog.forget_page_now(u.name, name)]
    finally:
        catalog.close()
    return {"project": name, "purged": purged}


# --- files -----------------------------------------------------------------------------


class NoSuchFile(LookupError):
    """Nothing in the cache matches (the message says what was looked for)."""


@dataclass
class Removal:
    """What :func:`remove_file` did with each matching blob."""

    removed: list[dict[str, Any]] = field(default_factory=list)
    #: Being sent right now (eviction would skip them too): try again later.
    in_use: list[dict[str, Any]] = field(default_factory=list)
    #: Stored less than a minute ago: their download may still have readers.
    too_new: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def remove_file(
    config: Config,
    *,
    sha256: str | None = None,
    project: str | None = None,
    filename: str | None = None,
    now: float | None = None,
) -> Removal:
    """Delete a cached file and its catalog record: by ``sha256``, or by ``project``
    and ``filename`` (then the PEP 658 metadata derived from it too). Raises
    ``ValueError`` for bad input and :class:`NoSuchFile` when nothing matches."""
    if sha256 is not None:
        sha256 = sha256_of(sha256)
    elif project is not None and filename is not None:
        project = project_name(project)
        if not is_safe_filename(filename):
            raise ValueError(f"not a file name: {filename!r}")
    else:
        raise ValueError("name a file by its sha256, or by project and filename")
    now = time.time() if now is None else now
    blobs = BlobStore(config.cache_dir)
    catalog = Catalog(config.cache_dir)
    try:
        targets: list[tuple[str, BlobRecord | None]]
        if sha256 is not None:
            record = catalog.blob_record(sha256)
            targets = [(sha256, record)] if record is not None or blobs.exists(sha256) else []
            wanted = f"sha256 {sha256}"
        else:
            names = {filename, f"{filename}{METADATA_SUFFIX}"}
            targets = [
                (sha, record)
                for sha, record, _atime in catalog.blob_entries()
                if record.project == project and record.filename in names
            ]
            wanted = f"{project} {filename}"
        if not targets:
            raise NoSuchFile(f"no cached file {wanted}")
        removal = Removal()
        for sha, record in targets:
            size = record.size if record is not None else (blobs.size(sha) or 0)
            entry = {
                "sha256": sha,
                "project": record.project if record else None,
                "filename": record.filename if record else None,
                "size": size,
            }
            if record is not None and now - record.stored_at < MIN_AGE:
                removal.too_new.append(entry)
            elif remove_unused(blobs, catalog, sha, size):
                removal.removed.append(entry)
            else:
                removal.in_use.append(entry)
        return removal
    finally:
        catalog.close()


# --- audit and failures ----------------------------------------------------------------


def audit_rows(
    config: Config,
    *,
    project: str | None = None,
    versions: str | None = None,
    sha256: str | None = None,
    since: str | None = None,
    user: str | None = None,
    limit: int = AUDIT_LIMIT,
) -> list[dict[str, Any]]:
    """The recorded downloads matching filters given as text (a command line, a query
    string); ``ValueError`` names the filter that is wrong."""
    try:
        since_at = parse_optional_timestamp(since) if since else None
    except ValueError as exc:
        raise ValueError(f"since: {exc}") from None
    spec = parse_specifier(versions) if versions else None
    return query(
        config.cache_dir,
        project=project_name(project) if project else None,
        versions=spec,
        sha256=sha256_of(sha256) if sha256 else None,
        since=since_at,
        user=user or None,
        limit=max(1, min(limit, AUDIT_LIMIT)),
    )


def recent_failures(config: Config, limit: int = 50) -> list[Failure]:
    """The newest failures first, with every detail."""
    if not (config.cache_dir / "failures").is_dir():
        return []
    failures = FailureLog(config.cache_dir)
    try:
        return failures.recent_now(limit)
    finally:
        failures.close()


# --- scrub -----------------------------------------------------------------------------


class ScrubBusy(RuntimeError):
    """Another scrub of this cache is running."""


class ScrubStopped(Exception):
    """The scrub was asked to stop (the server shuts down)."""


def claim_scrub(config: Config) -> int:
    """The lock of the one admin scrub of this cache (a descriptor to pass to
    :func:`run_scrub`); raises :class:`ScrubBusy` when another one holds it."""
    fd = try_exclusive(BlobStore(config.cache_dir).locks / SCRUB_LOCK)
    if fd is None:
        raise ScrubBusy("a scrub of this cache is already running")
    _write_state(config, {"state": "running", "started_at": time.time(), "pid": os.getpid()})
    return fd


def run_scrub(config: Config, lock: int, stop: threading.Event | None = None) -> dict[str, Any]:
    """Re-hash every blob and remove corrupt ones (what ``pipgate verify --repair``
    does), holding ``lock`` (closed at the end); returns the state it writes."""
    state: dict[str, Any] = {"state": "running", "started_at": time.time(), "pid": os.getpid()}
    written = 0.0

    def progress(line: str) -> None:
        nonlocal written
        if stop is not None and stop.is_set():
            raise ScrubStopped
        if time.monotonic() - written >= SCRUB_PROGRESS_INTERVAL:
            done, _, total = line.partition(" ")[0].partition("/")
            _write_state(config, {**state, "done": int(done), "total": int(total)})
            written = time.monotonic()

    try:
        report = verify_cache(config.cache_dir, repair=True, progress=progress)
    except ScrubStopped:
        state.update(state="stopped", finished_at=time.time())
        _write_state(config, state)
        return state
    except Exception as exc:
        state.update(state="failed", finished_at=time.time(), error=type(exc).__name__)
        _write_state(config, state)
        raise
    finally:
        os.close(lock)
    state.update(
        state="done",
        finished_at=time.time(),
        checked=report.checked,
        bytes=report.bytes,
        ok=report.ok,
        unverified=len(report.unverified),
        removed=report.repaired,
        corrupt=[
            {
                "sha256": c.sha256,
                "project": c.project,
                "filename": c.filename,
                "removed": c.removed,
                "error": c.error,
            }
            for c in report.corrupt
        ],
    )
    _write_state(config, state)
    return state


def scrub_state(config: Config) -> dict[str, Any]:
    """How the last admin scrub went (``never``, ``running``, ``done``, ``stopped``,
    ``failed``, or ``interrupted`` when its process died)."""
    try:
        state = json.loads((config.cache_dir / SCRUB_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"state": "never"}
    if not isinstance(state, dict):
        return {"state": "never"}
    if state.get("state") == "running":
        probe = try_exclusive(BlobStore(config.cache_dir).locks / SCRUB_LOCK)
        if probe is not None:  # nobody holds the lock: the process that ran it died
            os.close(probe)
            state["state"] = "interrupted"
    return state


def _write_state(config: Config, state: dict[str, Any]) -> None:
    path = config.cache_dir / SCRUB_STATE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(state), encoding="utf-8")
    os.replace(tmp, path)
