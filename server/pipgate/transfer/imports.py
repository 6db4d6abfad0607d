"""``pipgate import``: load an export into this cache, verifying everything.

Each file is checked three ways before it is committed: its bytes against the sha256 in
the manifest (through the store's own verified writer), and the manifest against the
project page that lists it (file hash, metadata hash). A file that fails is refused and
reported; the rest is imported. Pages become cached pages of one upstream (the first,
or ``--upstream-name``), served like pages fetched from it; in an air-gapped network,
run that pipgate with ``--offline``. Importing the same export twice changes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pipgate.config import Config
from pipgate.files.metadata import METADATA_SUFFIX, metadata_key
from pipgate.links import file_key, is_file_key, is_safe_filename
from pipgate.simple.model import DistFile, ProjectPage
from pipgate.simple.names import is_valid_name, normalize
from pipgate.simple.parse import PageParseError, parse_project_json
from pipgate.store.blobs import BlobStore, Committed, IntegrityError
from pipgate.store.catalog import BlobRecord, Catalog, PageRecord
from pipgate.transfer.export import FORMAT, MANIFEST

#: Pages and the manifest are read whole; larger ones are not ours.
MAX_DOCUMENT_BYTES = 256 << 20
CHUNK = 1 << 20


class ExportUnreadable(ValueError):
    """The export cannot be imported at all (no manifest, wrong format, unreadable)."""


@dataclass
class ImportReport:
    """What an import did."""

    pages: int = 0
    pages_unchanged: int = 0
    files: int = 0
    files_present: int = 0
    #: Files refused, with why (hash mismatch, not on its page, bad path).
    refused: list[str] = field(default_factory=list)
    #: Files an incremental export left out that this cache does not have.
    missing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.refused and not self.missing

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "pages": self.pages,
            "pages_unchanged": self.pages_unchanged,
            "files": self.files,
            "files_present": self.files_present,
            "refused": self.refused,
            "missing": self.missing,
        }


class _Source:
    """An export directory or tar file, read by member name only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tar: tarfile.TarFile | None = None
        if path.is_file():
            try:
                self._tar = tarfile.open(path, "r:*")  # noqa: SIM115 - closed by close()
            except tarfile.TarError as exc:
                raise ExportUnreadable(f"{path}: not an export archive ({exc})") from None
        elif not path.is_dir():
            raise ExportUnreadable(f"{path}: no such directory or archive")

    @property
    def base_url(self) -> str:
        """Where imported pages say their files are (``file:``; served from the cache)."""
        if self._tar is None:
            return self.path.resolve().as_uri() + "/"
        return "file:///pipgate-import/"

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        if self._tar is None:
            with open(self.path / name, "rb") as handle:
                yield handle
            return
        try:
            member = self._tar.getmember(name)
        except KeyError:
            raise FileNotFoundError(name) from None
        if not member.isfile():
            raise FileNotFoundError(f"{name} is not a regular file in the archive")
        stream = self._tar.extractfile(member)
        assert stream is not None
        with stream:
            yield stream

    def read(self, name: str) -> bytes:
        with self.open(name) as handle:
            data = handle.read(MAX_DOCUMENT_BYTES + 1)
        if len(data) > MAX_DOCUMENT_BYTES:
            raise ExportUnreadable(f"{name}: larger than {MAX_DOCUMENT_BYTES} bytes")
        return data

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()


def import_export(config: Config, path: Path, *, upstream: str | None = None) -> ImportReport:
    """Import the export at ``path`` into ``config``'s cache (blocking)."""
    source_name = upstream or config.upstreams[0].name
    if source_name not in {u.name for u in config.upstreams}:
        raise ExportUnreadable(f"no upstream is called {source_name!r}")
    source = _Source(path)
    blobs = BlobStore(config.cache_dir)
    blobs.ensure_dirs()
    catalog = Catalog(config.cache_dir)
    report = ImportReport()
    try:
        manifest = _manifest(source)
        by_project: dict[str, list[dict[str, Any]]] = {}
        for entry in manifest.get("files", []):
            if isinstance(entry, dict) and isinstance(entry.get("project"), str):
                by_project.setdefault(entry["project"], []).append(entry)
        created = float(manifest.get("created") or time.time())
        for name in manifest.get("projects", {}):
            if not (isinstance(name, str) and is_valid_name(name) and normalize(name) == name):
                report.refused.append(f"{name!r}: not a project name")
                continue
            page = _page(source, name)
            if page is None:
                report.refused.append(f"{name}: its page is missing or unreadable")
                continue
            for entry in by_project.get(name, []):
                _import_file(source, blobs, catalog, page, entry, report)
            _store_page(catalog, source_name, name, page, created, report)
    finally:
        catalog.close()
        source.close()
    return report


def _manifest(source: _Source) -> dict[str, Any]:
    try:
        manifest = json.loads(source.read(MANIFEST))
    except FileNotFoundError:
        raise ExportUnreadable(f"{source.path}: no {MANIFEST}: not a pipgate export") from None
    except ValueError:
        raise ExportUnreadable(f"{source.path}: {MANIFEST} is not JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ExportUnreadable(f"{source.path}: {MANIFEST} is not a pipgate export manifest")
    return manifest


def _page(source: _Source, name: str) -> ProjectPage | None:
    try:
        body = source.read(f"simple/{name}/index.json")
        return parse_project_json(body, f"{source.base_url}simple/{name}/", name)
    except (FileNotFoundError, PageParseError, ExportUnreadable):
        return None


def _import_file(
    source: _Source,
    blobs: BlobStore,
    catalog: Catalog,
    page: ProjectPage,
    entry: dict[str, Any],
    report: ImportReport,
) -> None:
    """Verify one manifest entry against its page and its bytes, and commit it."""
    path = str(entry.get("path", ""))
    sha = str(entry.get("sha256", "")).lower()
    dist, key, problem = _check_entry(page, entry)
    if problem is not None or dist is None:
        report.refused.append(f"{path}: {problem}")
        return
    is_metadata = entry.get("kind") == "metadata"
    if blobs.exists(sha):
        report.files_present += 1
    elif not entry.get("included", True):
        report.missing.append(f"{path}: left out of this (incremental) export, not cached here")
        return
    else:
        try:
            committed = _commit(source, blobs, path, sha, entry.get("size"))
        except FileNotFoundError:
            report.refused.append(f"{path}: listed in the manifest but not in the export")
            return
        except IntegrityError as exc:
            report.refused.append(f"{path}: {exc.kind}: {exc}")
            return
        catalog.record_blob_now(
            committed.sha256,
            BlobRecord(
                project=page.name,
                filename=dist.filename + (METADATA_SUFFIX if is_metadata else ""),
                size=committed.size,
                verified=True,
                stored_at=time.time(),
            ),
        )
        report.files += 1
    if is_metadata:
        catalog.put_alias_now(metadata_key(key), sha)
    elif key != sha:
        catalog.put_alias_now(key, sha)


def _check_entry(
    page: ProjectPage, entry: dict[str, Any]
) -> tuple[DistFile | None, str, str | None]:
    """The page's file for a manifest entry, its URL key, and what is wrong, if anything."""
    path = str(entry.get("path", ""))
    parts = path.split("/")
    kind = entry.get("kind")
    if kind == "metadata":
        parts[-1] = parts[-1].removesuffix(METADATA_SUFFIX)
    if (
        len(parts) != 4
        or parts[0] != "files"
        or parts[1] != page.name
        or not is_file_key(parts[2])
        or not is_safe_filename(parts[3])
    ):
        return None, "", "not a path of this export's layout"
    _, _, key, filename = parts
    dist = next((d for d in page.files if d.filename == filename and file_key(d) == key), None)
    if dist is None:
        return None, key, f"not a file on the page of {page.name}"
    sha = str(entry.get("sha256", "")).lower()
    published = dist.metadata_sha256 if kind == "metadata" else dist.sha256
    if published is not None and published != sha:
        return None, key, "the manifest's sha256 differs from the page's"
    if published is None and kind != "metadata" and key != sha and len(key) == 64:
        return None, key, "the manifest's sha256 differs from the file's URL"
    return dist, key, None


def _commit(source: _Source, blobs: BlobStore, path: str, sha: str, size: object) -> Committed:
    expected_size = size if isinstance(size, int) else None
    writer = blobs.writer({"sha256": sha}, expected_size)
    try:
        with source.open(path) as handle:
            while chunk := handle.read(CHUNK):
                writer.write(chunk)
        return writer.commit()
    finally:
        writer.discard()


def _store_page(
    catalog: Catalog,
    source_name: str,
    name: str,
    page: ProjectPage,
    created: float,
    report: ImportReport,
) -> None:
    model = page.to_json()
    digest = hashlib.sha256(model).hexdigest()
    old = catalog.get_page_now(source_name, name)
    if old is not None and old.status == 200 and old.digest == digest:
        report.pages_unchanged += 1
        return
    record = PageRecord(status=200, fetched_at=created, digest=digest, project_status=page.status)
    catalog.put_page_now(source_name, name, record, model)
    report.pages += 1
