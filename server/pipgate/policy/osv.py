"""OSV records (the OSV and OpenSSF malicious-packages data sets) -> quarantine entries.

Pure, and offline by design: an air-gapped network imports a copied file, directory or
zip. Only ``PyPI`` packages count. Each affected version becomes an ``==`` entry and
each ``ECOSYSTEM`` range an interval (``introduced`` .. ``fixed``/``last_affected``);
the record id is the entry's source and reason, so importing the same data twice
changes nothing, and a withdrawn record lifts its entries.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from pipgate.policy.rules import QuarantineEntry
from pipgate.simple.names import normalize

#: A single record larger than this is not an OSV record.
MAX_RECORD_BYTES = 8 << 20


class OsvError(ValueError):
    """The input is not readable as OSV records."""


@dataclass(frozen=True)
class OsvImport:
    """What one input gave: the entries, the records withdrawn, what was skipped."""

    entries: tuple[QuarantineEntry, ...]
    withdrawn: frozenset[str]
    records: int
    skipped: int


def read_osv(path: Path, *, now: float) -> OsvImport:
    """Every PyPI entry in a JSON file, a directory of them, or a zip of them."""
    entries: list[QuarantineEntry] = []
    withdrawn: set[str] = set()
    records = skipped = 0
    for document in _documents(path):
        for record in document if isinstance(document, list) else [document]:
            if not isinstance(record, dict) or not isinstance(record.get("id"), str):
                skipped += 1
                continue
            records += 1
            if record.get("withdrawn"):
                withdrawn.add(record["id"])
                continue
            found = list(_entries(record, now))
            if not found:
                skipped += 1
            entries.extend(found)
    return OsvImport(tuple(entries), frozenset(withdrawn), records, skipped)


def _documents(path: Path) -> Iterator[Any]:
    if path.is_dir():
        for child in sorted(path.rglob("*.json")):
            yield _load(child.read_bytes(), str(child))
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.is_dir() or not info.filename.endswith(".json"):
                    continue
                if info.file_size > MAX_RECORD_BYTES:
                    raise OsvError(f"{info.filename}: larger than {MAX_RECORD_BYTES} bytes")
                yield _load(archive.read(info), info.filename)
    else:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise OsvError(f"{path}: cannot read ({exc.strerror})") from None
        yield _load(data, str(path))


def _load(data: bytes, where: str) -> Any:
    if len(data) > MAX_RECORD_BYTES * 64:
        raise OsvError(f"{where}: too large for a set of OSV records")
    try:
        return json.loads(data)
    except ValueError:
        raise OsvError(f"{where}: not JSON") from None


def _entries(record: dict[str, Any], now: float) -> Iterator[QuarantineEntry]:
    source = record["id"]
    summary = record.get("summary") or record.get("details") or ""
    reason = f"{source}: {summary}".strip().rstrip(":")[:300] if summary else source
    for affected in record.get("affected") or []:
        if not isinstance(affected, dict):
            continue
        package = affected.get("package") or {}
        if package.get("ecosystem") != "PyPI" or not isinstance(package.get("name"), str):
            continue
        project = normalize(package["name"])
        for version in affected.get("versions") or []:
            if isinstance(version, str) and version.strip():
                yield QuarantineEntry(project, _exact(version), reason, source, now)
        for spec in _ranges(affected.get("ranges") or []):
            yield QuarantineEntry(project, spec, reason, source, now)


def _exact(version: str) -> str:
    text = version.strip()
    try:
        Version(text)
    except InvalidVersion:
        return f"==={text}"  # PEP 440 arbitrary equality for legacy versions
    return f"=={text}"


def _ranges(ranges: list[Any]) -> Iterator[str]:
    """PEP 440 specifiers of ``ECOSYSTEM`` ranges (``""``: every version)."""
    for item in ranges:
        if not isinstance(item, dict) or item.get("type") != "ECOSYSTEM":
            continue
        start: str | None = None
        for event in item.get("events") or []:
            if not isinstance(event, dict):
                continue
            if "introduced" in event:
                start = str(event["introduced"])
            elif start is not None and ("fixed" in event or "last_affected" in event):
                upper = f"<{event['fixed']}" if "fixed" in event else f"<={event['last_affected']}"
                yield _interval(start, upper)
                start = None
        if start is not None:
            yield _interval(start, "")


def _interval(start: str, upper: str) -> str:
    lower = "" if start in ("0", "") else f">={start}"
    return ",".join(part for part in (lower, upper) if part)
