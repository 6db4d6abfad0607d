"""``pipgate export``: the cache as a static simple repository, to carry across an air gap.

The export is exactly what an offline pipgate would serve (the same page pipeline, run
without a server: cached pages, cached files only, derived metadata, the policy), so
whatever the policy hides is not exported. Layout, relative links throughout, so it
works from any path, as ``pip|uv install --index-url file:///DIR/simple/`` and as a
pipgate upstream (``url = "file:///DIR/simple/"``)::

    simple/index.html, simple/index.json              the project list
    simple/<project>/index.html, index.json           each project page
    files/<project>/<key>/<filename>[.metadata]       files, as pipgate's own URLs
    manifest.json                                     every file's sha256 and size

``--since MANIFEST`` leaves out the bytes of files an earlier export already carried
(they stay listed, ``"included": false``), for incremental transfers; ``--archive``
writes one tar file instead of a directory.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from io import BytesIO
from pathlib import Path
from typing import Any, Protocol

from pipgate import __version__
from pipgate.config import Config
from pipgate.errors import UpstreamError
from pipgate.files.metadata import METADATA_SUFFIX, DerivedMetadata
from pipgate.links import LinkBuilder, file_key
from pipgate.pages.source import NotOffered, PageSource
from pipgate.simple.model import DistFile, ProjectEntry, ProjectPage
from pipgate.simple.render import (
    render_project_html,
    render_project_json,
    render_project_list_html,
    render_project_list_json,
)
from pipgate.store.blobs import BlobStore, is_sha256
from pipgate.store.catalog import Catalog

MANIFEST = "manifest.json"
FORMAT = "pipgate-export"
FORMAT_VERSION = 1


class Writer(Protocol):
    """Where an export goes: a directory or a tar file."""

    def add_bytes(self, name: str, data: bytes) -> None: ...
    def add_file(self, name: str, source: Path) -> None: ...
    def close(self) -> None: ...


class DirectoryWriter:
    """Writes the export under a directory (files are copied, never linked: an export
    that someone alters must not alter the cache)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def add_bytes(self, name: str, data: bytes) -> None:
        target = self.root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    def add_file(self, name: str, source: Path) -> None:
        target = self.root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)

    def close(self) -> None:
        pass


class TarWriter:
    """Writes the export as one uncompressed tar file (wheels are compressed already)."""

    def __init__(self, path: Path) -> None:
        self._tar = tarfile.open(path, "w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        self._now = time.time()

    def add_bytes(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = int(self._now)
        self._tar.addfile(info, BytesIO(data))

    def add_file(self, name: str, source: Path) -> None:
        self._tar.add(str(source), arcname=name, recursive=False)

    def close(self) -> None:
        self._tar.close()


@dataclass
class ExportReport:
    """What an export wrote."""

    projects: int = 0
    files: int = 0
    bytes: int = 0
    #: Files listed but not written (an earlier export, ``--since``, carried them).
    skipped_known: int = 0
    #: Projects not exported, with why (policy, not cached).
    left_out: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "projects": self.projects,
            "files": self.files,
            "bytes": self.bytes,
            "skipped_known": self.skipped_known,
            "left_out": self.left_out,
        }


async def export_cache(
    config: Config,
    writer: Writer,
    *,
    projects: Sequence[str] = (),
    since: dict[str, Any] | None = None,
) -> ExportReport:
    """Write the export of ``config``'s cache (``projects``: only these)."""
    from pipgate.app import standalone

    pipeline = await standalone(replace(config, offline=True))
    pages, catalog, blobs, derived = (
        pipeline.pages,
        pipeline.catalog,
        pipeline.blobs,
        pipeline.derived,
    )
    known = {f["sha256"] for f in (since or {}).get("files", [])}
    report = ExportReport()
    manifest_files: list[dict[str, Any]] = []
    manifest_projects: dict[str, dict[str, Any]] = {}
    try:
        names = list(projects) or sorted(
            {n for u in config.upstreams for n in catalog.cached_projects(u.name)}
        )
        exported: list[str] = []
        for name in names:
            try:
                view = await pages.project(name)
            except UpstreamError as exc:
                report.left_out.append(f"{name}: {exc.detail}")
                continue
            if view.page is None:
                report.left_out.append(f"{name}: {view.missing or 'not cached'}")
                continue
            page, files = await _exportable(pages, view.page, blobs, catalog, derived)
            if not page.files:
                report.left_out.append(f"{name}: no file may be exported")
                continue
            for entry, source in files:
                entry["included"] = entry["sha256"] not in known
                manifest_files.append(entry)
                if entry["included"]:
                    await asyncio.to_thread(writer.add_file, entry["path"], source)
                    report.files += 1
                    report.bytes += entry["size"]
                else:
                    report.skipped_known += 1
            links = LinkBuilder(name)  # relative: ../../files/<project>/<key>/<filename>
            page_json = render_project_json(page, links)
            await asyncio.to_thread(writer.add_bytes, f"simple/{name}/index.json", page_json)
            await asyncio.to_thread(
                writer.add_bytes, f"simple/{name}/index.html", render_project_html(page, links)
            )
            manifest_projects[name] = {"files": len(page.files)}
            exported.append(name)
            report.projects += 1
        entries = [ProjectEntry(n) for n in exported]
        for kind, render in (
            ("html", render_project_list_html),
            ("json", render_project_list_json),
        ):
            body = b"".join(render(entries))
            await asyncio.to_thread(writer.add_bytes, f"simple/index.{kind}", body)
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "created": time.time(),
            "pipgate": __version__,
            "since": (since or {}).get("created"),
            "projects": manifest_projects,
            "files": manifest_files,
        }
        body = json.dumps(manifest, indent=1, sort_keys=True).encode()
        await asyncio.to_thread(writer.add_bytes, MANIFEST, body)
    finally:
        await pipeline.close()
        writer.close()
    return report


async def _exportable(
    pages: PageSource,
    page: ProjectPage,
    blobs: BlobStore,
    catalog: Catalog,
    derived: DerivedMetadata,
) -> tuple[ProjectPage, list[tuple[dict[str, Any], Path]]]:
    """The page with only the files the pipeline lets out, and those files (with their
    metadata) as manifest entries and where their bytes are."""
    kept: list[DistFile] = []
    files: list[tuple[dict[str, Any], Path]] = []
    for dist in page.files:
        key = file_key(dist)
        try:
            if await pages.find_file(page.name, key, dist.filename) is None:
                continue
        except (UpstreamError, NotOffered):  # policy, cooldown, not cached
            continue
        sha = dist.sha256 if dist.sha256 and is_sha256(dist.sha256) else catalog.sha256_for(key)
        if sha is None or not blobs.exists(sha):
            continue
        path = f"files/{page.name}/{key}/{dist.filename}"  # the links' target, unquoted
        files.append((_entry(page.name, dist.filename, path, sha, blobs, "file"), blobs.path(sha)))
        if dist.has_metadata:
            meta = await asyncio.to_thread(derived.cached, key) or await asyncio.to_thread(
                derived.derive, page.name, dist, key
            )
            if meta is None:
                dist = replace(dist, core_metadata=None)  # nothing to serve for it
            else:
                entry = _entry(
                    page.name, dist.filename, path + METADATA_SUFFIX, meta, blobs, "metadata"
                )
                files.append((entry, blobs.path(meta)))
        kept.append(dist)
    return replace(page, files=tuple(kept), versions=None), files


def _entry(
    project: str, filename: str, path: str, sha: str, blobs: BlobStore, kind: str
) -> dict[str, Any]:
    return {
        "path": path,
        "project": project,
        "filename": filename,
        "kind": kind,
        "sha256": sha,
        "size": blobs.size(sha) or 0,
    }
