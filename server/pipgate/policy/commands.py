"""``pipgate quarantine …``: the operator's side of the quarantine list.

Changes are written to the cache directory, where every worker of a running server
picks them up within a second (:mod:`.quarantine`); nothing here talks to a server.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from packaging.specifiers import SpecifierSet

from pipgate.config import Config
from pipgate.config.values import parse_specifier
from pipgate.policy.osv import read_osv
from pipgate.policy.quarantine import QuarantineStore
from pipgate.policy.rules import QuarantineEntry, file_version
from pipgate.simple.names import is_valid_name, normalize
from pipgate.store.blobs import BlobStore
from pipgate.store.catalog import Catalog
from pipgate.store.evict import remove_unused

_SPEC_START = re.compile(r"[<>=!~]")


def parse_target(text: str) -> tuple[str, str]:
    """``requests``, ``requests==2.31.0`` or ``requests>=2,<2.31`` -> (project, spec).

    Raises ``ValueError`` with what is wrong.
    """
    match = _SPEC_START.search(text)
    name, spec = (text[: match.start()], text[match.start() :]) if match else (text, "")
    name = name.strip()
    if not is_valid_name(name):
        raise ValueError(f"not a project name: {name!r}")
    return normalize(name), parse_specifier(spec) if spec.strip() else ""


@dataclass(frozen=True)
class Purged:
    """Cached files deleted because they are quarantined."""

    files: list[str]
    in_use: list[str]


def purge(config: Config, entries: Sequence[QuarantineEntry]) -> Purged:
    """Delete the cached files the entries cover (not those being sent right now)."""
    blobs = BlobStore(config.cache_dir)
    catalog = Catalog(config.cache_dir)
    removed: list[str] = []
    in_use: list[str] = []
    specs = [(e, SpecifierSet(e.versions) if e.versions else None) for e in entries]
    try:
        for sha, record, _atime in catalog.blob_entries():
            filename = record.filename.removesuffix(".metadata")
            if not record.project or not any(
                fnmatchcase(record.project, entry.project)
                and (
                    spec is None
                    or ((v := file_version(filename)) is not None and spec.contains(v, True))
                )
                for entry, spec in specs
            ):
                continue
            if remove_unused(blobs, catalog, sha, record.size):
                removed.append(record.filename)
            else:
                in_use.append(record.filename)
    finally:
        catalog.close()
    return Purged(removed, in_use)


def add(
    config: Config, target: str, reason: str, *, do_purge: bool, source: str = "cli"
) -> dict[str, object]:
    """Quarantine ``target`` (``source``: who asked, ``cli`` or ``admin-api``); returns
    what was done (for text or JSON output)."""
    project, spec = parse_target(target)
    entry = QuarantineEntry(project, spec, reason, source, time.time())
    added, entries = QuarantineStore(config.cache_dir).add([entry])
    result: dict[str, object] = {"added": added, "entry": asdict(entry), "total": len(entries)}
    if do_purge:
        result["purged"] = asdict(purge(config, [entry]))
    return result


def remove(config: Config, target: str) -> dict[str, object]:
    """Lift the quarantine of ``target`` (``PROJECT`` alone lifts all its entries)."""
    project, spec = parse_target(target)
    removed, entries = QuarantineStore(config.cache_dir).remove(project, spec or "*")
    return {"removed": removed, "total": len(entries)}


def listing(config: Config) -> list[QuarantineEntry]:
    """The current list."""
    return QuarantineStore(config.cache_dir).load()


def import_osv(config: Config, path: Path, *, do_purge: bool) -> dict[str, object]:
    """Quarantine what OSV records name; idempotent; withdrawn records are lifted."""
    found = read_osv(path, now=time.time())
    store = QuarantineStore(config.cache_dir)
    sources = {e.source for e in found.entries} | set(found.withdrawn)

    def edit(entries: list[QuarantineEntry]) -> list[QuarantineEntry]:
        # One record's entries replace its earlier ones as a whole.
        kept = [e for e in entries if e.source not in sources]
        known = {(e.project, e.versions, e.source): e for e in entries}
        fresh = [known.get((e.project, e.versions, e.source), e) for e in found.entries]
        return kept + _unique(fresh)

    before = {(e.project, e.versions, e.source) for e in store.load()}
    entries = store.change(edit)
    after = {(e.project, e.versions, e.source) for e in entries}
    result: dict[str, object] = {
        "records": found.records,
        "skipped": found.skipped,
        "withdrawn": sorted(found.withdrawn),
        "added": len(after - before),
        "removed": len(before - after),
        "total": len(entries),
    }
    if do_purge:
        result["purged"] = asdict(purge(config, found.entries))
    return result


def _unique(entries: list[QuarantineEntry]) -> list[QuarantineEntry]:
    seen: set[tuple[str, str, str]] = set()
    out = []
    for entry in entries:
        key = (entry.project, entry.versions, entry.source)
        if key not in seen:
            seen.add(key)
            out.append(entry)
    return out


def format_entries(entries: Sequence[QuarantineEntry]) -> str:
    """The list as aligned text lines (empty list: a sentence)."""
    if not entries:
        return "the quarantine list is empty"
    width = max(len(e.label) for e in entries)
    lines = []
    for e in entries:
        when = time.strftime("%Y-%m-%d", time.gmtime(e.added_at)) if e.added_at else "-"
        lines.append(f"{e.label:<{width}}  {when}  {e.source}  {e.reason}".rstrip())
    return "\n".join(lines)


def as_json(value: object) -> str:
    return json.dumps(value, indent=2, default=str)
