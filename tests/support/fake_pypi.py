"""A fake PyPI upstream (simple API pages + files) with fault injection.

It plays the upstream index for pipgate's tests: PEP 503 HTML and PEP 691 JSON pages,
PEP 658 ``.metadata`` files, single byte ranges, validators and the ways a real
upstream misbehaves (down, 5xx, corrupt or truncated files, slow bodies, junk pages,
transient failures with Retry-After, connections reset mid-body, no Range support).
It is written from the specs, independently of pipgate's own parser/renderer, so the
two do not share bugs. Run it in the test's loop with `app()` or in a background
thread with `start()` / ``with FakePyPI(...) as up:``, over TLS with
``start(ssl_context=PrivateCA().server_context())``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import hashlib
import html
import json
import socket
import ssl
import struct
import sys
import termios
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any, Literal, NamedTuple

from aiohttp import web
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from tests.support.packages import BuiltDist, sample_tree

PageFormat = Literal["json", "html", "negotiate"]

JSON_TYPE = "application/vnd.pypi.simple.v1+json"
HTML_TYPE = "text/html"
DEFAULT_UPLOAD_TIME = "2024-01-02T03:04:05.000000Z"
#: Headers kept in `FakePyPI.requests` (lowercase names).
RECORDED_HEADERS = (
    "accept",
    "authorization",
    "accept-encoding",
    "cookie",
    "cache-control",
    "host",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "proxy-authorization",
    "range",
    "user-agent",
    "via",
)
#: Neither valid HTML nor JSON, but served under the page's normal content type.
GARBAGE = b"\x00\xff\xfe<<<{{ this is not a simple repository page ]]>\x00"


@dataclass
class _Entry:
    """One published file and how the index describes it (mutable: yanks change)."""

    dist: BuiltDist
    yanked: bool | str
    metadata: bool
    upload_time: str
    #: Whether the page publishes the file's sha256 (private indexes may not).
    hashed: bool = True


class Failure(NamedTuple):
    """Answer the next `times` requests with `status` (and ``Retry-After``, if given);
    `times` counts down as they are served. A plain ``(times, status, retry_after)``
    tuple works as well."""

    times: int
    status: int = 503
    retry_after: str | None = None


class Unsatisfiable(Exception):
    """The Range header is valid but selects no byte of the file (RFC 9110 → 416)."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Parse a single ``bytes=`` range into inclusive (start, end), clamped to `size`.

    None means "ignore the header and send 200" (absent, malformed or multi-range,
    all allowed by RFC 9110 §14.2); `Unsatisfiable` means answer 416.
    """
    if not header or not header.startswith("bytes="):
        return None
    spec = header[len("bytes=") :].strip()
    if "," in spec or "-" not in spec:
        return None
    first, _, last = (part.strip() for part in spec.partition("-"))
    if not (first.isdigit() or first == "") or not (last.isdigit() or last == ""):
        return None
    if first == "":
        if last == "":
            return None
        suffix = int(last)  # bytes=-n: the last n bytes
        if suffix == 0 or size == 0:
            raise Unsatisfiable
        return max(0, size - suffix), size - 1
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise Unsatisfiable
    return start, min(int(last), size - 1) if last else size - 1


def wants_json(accept: str | None) -> bool:
    """PEP 691 negotiation as this fake does it: JSON iff Accept offers it with q > 0."""
    for item in (accept or "").split(","):
        media, *params = (p.strip() for p in item.split(";"))
        if media.lower() not in (JSON_TYPE, "application/vnd.pypi.simple.latest+json"):
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > 0:
            return True
    return False


def _version_key(version: str) -> tuple[int, Version | str]:
    try:
        return (0, Version(version))
    except InvalidVersion:
        return (1, version)


class FakePyPI:
    """A hermetic PyPI: register `BuiltDist`s, flip fault attributes, count requests."""

    def __init__(
        self,
        dists: Iterable[BuiltDist] = (),
        *,
        page_format: PageFormat = "json",
        validators: bool = True,
    ) -> None:
        if page_format not in ("json", "html", "negotiate"):
            raise ValueError(f"unknown page_format {page_format!r}")
        self.page_format: PageFormat = page_format
        #: Strong ETag + Last-Modified on pages, and 304 for a matching If-None-Match.
        self.validators = validators
        # Fault injection: tests assign these at any time, from any thread.
        #: Drop every connection without answering.
        self.down = False
        #: Answer every page (root and project) with this status.
        self.page_status: int | None = None
        #: Answer every file (and .metadata) request with this status.
        self.file_status: int | None = None
        #: Served names (filename, or filename + ".metadata") sent with one byte flipped.
        self.corrupt: set[str] = set()
        #: Served name -> bytes of body sent before the connection is closed.
        self.truncate: dict[str, int] = {}
        #: Served name -> bytes of body (of each response: a 206 counts from its first
        #: byte) sent before the connection is reset (RST, not FIN), with the full
        #: Content-Length announced. Bytes are flushed to the client before the reset.
        self.reset_after: dict[str, int] = {}
        #: Served name -> how many more responses `reset_after` cuts (absent: every one).
        #: Counts down on each reset, so ``1`` lets the resume request succeed.
        self.reset_times: dict[str, int] = {}
        #: Served names for which Range/If-Range are ignored: always 200 with the whole
        #: file (an upstream or cache that cannot resume).
        self.no_ranges: set[str] = set()
        #: Project name (any spelling; "" for the /simple/ list) -> `Failure`: that many
        #: page requests fail before the page is served normally (retry tests).
        self.page_fail_times: dict[str, Failure | tuple[int, int, str | None]] = {}
        #: Served name -> `Failure`, for file and ``.metadata`` requests.
        self.file_fail_times: dict[str, Failure | tuple[int, int, str | None]] = {}
        #: Seconds to sleep between file chunks of `chunk_size` bytes.
        self.file_delay = 0.0
        self.chunk_size = 64 * 1024
        #: Seconds to sleep before answering a page: no status line or header is sent
        #: meanwhile, so this is also the "slow headers" fault.
        self.page_delay = 0.0
        #: Seconds to sleep before sending a file's status line and headers.
        self.file_header_delay = 0.0
        #: Project names whose page is 200 junk under the normal content type.
        self.garbage_pages: set[str] = set()
        #: Extra headers on every page / file response (e.g. Cache-Control).
        self.page_headers: dict[str, str] = {}
        self.file_headers: dict[str, str] = {}
        #: Base for file URLs on pages (another host, like files.pythonhosted.org).
        #: None: the origin the page request came to.
        self.files_url: str | None = None
        #: Filename -> base for that one file's link (a file on yet another host).
        self.file_bases: dict[str, str] = {}
        #: Served name (filename or filename + ".metadata") -> where its URL redirects
        #: (302; a relative location resolves against the request URL).
        self.redirects: dict[str, str] = {}
        #: (user, password) every request must carry as basic auth, else 401.
        self.auth: tuple[str, str] | None = None
        #: Whether JSON pages carry PEP 700 ``upload-time`` (Nexus, Artifactory and
        #: download.pytorch.org send none).
        self.upload_times = True
        #: Extra display names listed by the root page only (large-list tests).
        self.root_names: list[str] = []
        #: Every request seen: (method, path, selected lowercase headers).
        self.requests: list[tuple[str, str, dict[str, str]]] = []

        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._display: dict[str, str] = {}
        self._status: dict[str, tuple[str, str | None]] = {}
        self._serial = 0
        self._project_serial: dict[str, int] = {}
        self._last_modified = formatdate(time.time(), usegmt=True)

        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._port: int | None = None
        self._scheme = "http"

        for dist in dists:
            self.add(dist)

    @classmethod
    def with_sample_tree(cls, *, page_format: PageFormat = "json", **kwargs: Any) -> FakePyPI:
        """`sample_tree()` published with beta 2.0 yanked, as the client tests expect."""
        fake = cls(page_format=page_format, **kwargs)
        for dist in sample_tree():
            yanked = "broken release" if (dist.project, dist.version) == ("beta", "2.0") else False
            fake.add(dist, yanked=yanked)
        return fake

    # -- index contents -------------------------------------------------------------

    def add(
        self,
        dist: BuiltDist,
        *,
        yanked: bool | str = False,
        metadata: bool = True,
        upload_time: str | None = None,
        display_name: str | None = None,
        hashed: bool = True,
    ) -> None:
        """Publish `dist`; `metadata` advertises and serves PEP 658 (wheels only);
        `hashed=False` publishes no hash for it."""
        with self._lock:
            self._entries[dist.filename] = _Entry(
                dist=dist,
                yanked=yanked,
                metadata=metadata and dist.metadata is not None,
                upload_time=upload_time or DEFAULT_UPLOAD_TIME,
                hashed=hashed,
            )
            if display_name is not None or dist.project not in self._display:
                self._display[dist.project] = display_name or dist.name
            self._touch(dist.project)

    def remove(self, filename: str) -> None:
        """Unpublish one file (its project stays listed)."""
        with self._lock:
            entry = self._entries.pop(filename)
            self._touch(entry.dist.project)

    def set_yanked(self, filename: str, yanked: bool | str) -> None:
        """Yank or un-yank a published file (PEP 592: yank status is mutable)."""
        with self._lock:
            self._entries[filename].yanked = yanked
            self._touch(self._entries[filename].dist.project)

    def set_status(self, project: str, status: str | None, reason: str | None = None) -> None:
        """PEP 792 project status (None clears it); quarantined pages list no files."""
        name = canonicalize_name(project)
        with self._lock:
            if status is None:
                self._status.pop(name, None)
            else:
                self._status[name] = (status, reason)
            self._touch(name)

    def _touch(self, project: str) -> None:
        self._serial += 1
        self._project_serial[project] = self._serial
        self._last_modified = formatdate(time.time(), usegmt=True)

    def file_path(self, dist: BuiltDist) -> str:
        """The URL path PyPI-style: ``/packages/{sha[:2]}/{sha[2:4]}/{sha}/{filename}``."""
        sha = dist.sha256
        return f"/packages/{sha[:2]}/{sha[2:4]}/{sha}/{dist.filename}"

    def file_url(self, dist: BuiltDist) -> str:
        """Absolute URL of `dist` on the running thread server."""
        return self.url + self.file_path(dist)

    # -- observation ----------------------------------------------------------------

    def count(self, target: str, *, method: str | None = None) -> int:
        """Requests to `target`: an exact path, or every path under it if it ends in "/".

        A full URL is accepted too (its path is used). Note that a file path does not
        match its ``.metadata`` sibling; use `downloads()` for "how many times was the
        file fetched".
        """
        if "://" in target:
            target = "/" + target.split("://", 1)[1].partition("/")[2]
        prefix = target.endswith("/")
        return sum(
            1
            for m, path, _ in list(self.requests)
            if (method is None or m == method)
            and (path.startswith(target) if prefix else path == target)
        )

    def downloads(self, filename: str, *, method: str = "GET") -> int:
        """How many `method` requests hit the file itself (not its ``.metadata``)."""
        suffix = "/" + filename
        return sum(1 for m, path, _ in list(self.requests) if m == method and path.endswith(suffix))

    def headers_for(self, path: str) -> list[dict[str, str]]:
        """Recorded headers of every request to exactly `path`, oldest first."""
        return [headers for _, p, headers in list(self.requests) if p == path]

    def clear_requests(self) -> None:
        """Forget what was seen so far (e.g. after warming a cache)."""
        self.requests.clear()

    # -- aiohttp application ------------------------------------------------------

    def app(self) -> web.Application:
        """A fresh aiohttp app serving this fake's state (for in-loop test servers)."""
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/simple", self._slash_redirect)
        app.router.add_get("/simple/", self._root)
        app.router.add_get("/simple/{name}", self._slash_redirect)
        app.router.add_get("/simple/{name}/", self._project)
        app.router.add_get("/packages/{tail:.+}", self._file)
        return app

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        headers = {k: request.headers[k] for k in RECORDED_HEADERS if k in request.headers}
        self.requests.append((request.method, request.path, headers))
        if self.auth is not None:
            expected = "Basic " + base64.b64encode(":".join(self.auth).encode()).decode()
            if request.headers.get("Authorization") != expected:
                return web.Response(
                    status=401,
                    headers={"WWW-Authenticate": 'Basic realm="fake"'},
                    text="401 Unauthorized\n",
                )
        if self.down:
            # Closing before any byte is written looks like a dead upstream; the
            # Response returned here is never sent.
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=599)
        return await handler(request)

    async def _slash_redirect(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info.get("name")
        target = "/simple/" if name is None else f"/simple/{canonicalize_name(name)}/"
        raise web.HTTPMovedPermanently(target)

    def _choose_json(self, request: web.Request) -> bool:
        if self.page_format == "negotiate":
            return wants_json(request.headers.get("Accept"))
        return self.page_format == "json"

    async def _page_prelude(self, request: web.Request, name: str) -> web.StreamResponse | None:
        if self.page_delay:
            await asyncio.sleep(self.page_delay)
        if self.page_status is not None:
            return web.Response(status=self.page_status, text="fake upstream error\n")
        key = next((k for k in list(self.page_fail_times) if canonicalize_name(k) == name), None)
        return None if key is None else self._take_failure(self.page_fail_times, key)

    def _take_failure(
        self, table: dict[str, Failure | tuple[int, int, str | None]], key: str
    ) -> web.StreamResponse | None:
        """Count one failure down; the error response, or None once they are used up."""
        with self._lock:
            failure = table.get(key)
            if failure is None or failure[0] <= 0:
                return None
            failure = Failure(*failure)
            table[key] = failure._replace(times=failure.times - 1)
        headers = {} if failure.retry_after is None else {"Retry-After": failure.retry_after}
        return web.Response(status=failure.status, headers=headers, text="fake upstream error\n")

    def _page_response(
        self, request: web.Request, body: bytes, as_json: bool, serial: int
    ) -> web.StreamResponse:
        headers = {"X-PyPI-Last-Serial": str(serial), **self.page_headers}
        if self.page_format == "negotiate":
            headers["Vary"] = "Accept"
        if self.validators:
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            headers["ETag"] = etag
            headers["Last-Modified"] = self._last_modified
            if_none_match = request.headers.get("If-None-Match", "")
            candidates = {tag.strip() for tag in if_none_match.split(",")}
            if etag in candidates or "*" in candidates:
                return web.Response(status=304, headers=headers)
        if as_json:
            return web.Response(body=body, headers=headers, content_type=JSON_TYPE)
        return web.Response(body=body, headers=headers, content_type=HTML_TYPE, charset="utf-8")

    async def _root(self, request: web.Request) -> web.StreamResponse:
        early = await self._page_prelude(request, "")
        if early is not None:
            return early
        as_json = self._choose_json(request)
        with self._lock:
            projects = sorted(self._display.items())
            projects += [(canonicalize_name(n), n) for n in self.root_names]
            serial = self._serial
        if as_json:
            doc = {
                "meta": {"api-version": "1.1", "_last-serial": serial},
                "projects": [
                    {"name": display, "_last-serial": self._project_serial.get(norm, 0)}
                    for norm, display in projects
                ],
            }
            body = json.dumps(doc).encode()
        else:
            anchors = "".join(
                f'    <a href="/simple/{norm}/">{html.escape(display)}</a>\n'
                for norm, display in projects
            )
            body = (
                "<!DOCTYPE html>\n<html>\n  <head>\n"
                '    <meta name="pypi:repository-version" content="1.1">\n'
                "    <title>Simple index</title>\n  </head>\n  <body>\n"
                f"{anchors}  </body>\n</html>\n<!--SERIAL {serial}-->\n"
            ).encode()
        return self._page_response(request, body, as_json, serial)

    async def _project(self, request: web.Request) -> web.StreamResponse:
        raw = request.match_info["name"]
        name = canonicalize_name(raw)
        early = await self._page_prelude(request, name)
        if early is not None:
            return early
        if raw != name:
            raise web.HTTPMovedPermanently(f"/simple/{name}/")  # like PyPI
        with self._lock:
            if name not in self._display:
                raise web.HTTPNotFound(text="404 Not Found\n")
            status = self._status.get(name)
            entries = [
                _Entry(e.dist, e.yanked, e.metadata, e.upload_time, e.hashed)
                for e in self._entries.values()
                if e.dist.project == name
            ]
            serial = self._project_serial.get(name, 0)
        as_json = self._choose_json(request)
        if name in {canonicalize_name(p) for p in self.garbage_pages}:
            return web.Response(body=GARBAGE, content_type=JSON_TYPE if as_json else HTML_TYPE)
        if status is not None and status[0] == "quarantined":
            entries = []  # PEP 792: offer no distributions of a quarantined project
        entries.sort(key=lambda e: (_version_key(e.dist.version), e.dist.filename))
        base = self.files_url or str(request.url.origin())
        render = self._project_json if as_json else self._project_html
        body = render(name, entries, status, serial, base)
        return self._page_response(request, body, as_json, serial)

    def _provenance(self, dist: BuiltDist) -> str | None:
        # PEP 740: an absolute https URL (PyPI's integrity API); sdists get none here.
        if not dist.is_wheel:
            return None
        return (
            f"https://pypi.org/integrity/{dist.project}/{dist.version}/{dist.filename}/provenance"
        )

    def _project_json(
        self,
        name: str,
        entries: list[_Entry],
        status: tuple[str, str | None] | None,
        serial: int,
        base: str,
    ) -> bytes:
        files = []
        for e in entries:
            d = e.dist
            meta: dict[str, str] | bool = (
                {"sha256": d.metadata_sha256 or ""} if e.metadata else False
            )
            files.append(
                {
                    "filename": d.filename,
                    "url": self.file_bases.get(d.filename, base) + self.file_path(d),
                    "hashes": {"sha256": d.sha256} if e.hashed else {},
                    "requires-python": d.requires_python,
                    "core-metadata": meta,
                    # PyPI sends this deprecated alias too; "dist-info-metadata" never (PEP 714).
                    "data-dist-info-metadata": meta,
                    "yanked": e.yanked,
                    "size": d.size,
                    "upload-time": e.upload_time,
                    "provenance": self._provenance(d),
                }
            )
            if not self.upload_times:
                del files[-1]["upload-time"]
        doc: dict[str, Any] = {
            "meta": {"api-version": "1.4" if status else "1.1", "_last-serial": serial},
            "name": name,
            "versions": sorted({e.dist.version for e in entries}, key=_version_key),
            "files": files,
        }
        if status is not None:
            doc["project-status"] = {"status": status[0]}
            if status[1] is not None:
                doc["project-status"]["reason"] = status[1]
        return json.dumps(doc).encode()

    def _project_html(
        self,
        name: str,
        entries: list[_Entry],
        status: tuple[str, str | None] | None,
        serial: int,
        base: str,
    ) -> bytes:
        def attr(key: str, value: str) -> str:
            return f' {key}="{html.escape(value, quote=True)}"'

        metas = [f'<meta name="pypi:repository-version" content="{"1.4" if status else "1.1"}">']
        if status is not None:
            metas.append(f'<meta name="pypi:project-status"{attr("content", status[0])}>')
            if status[1] is not None:
                metas.append(
                    f'<meta name="pypi:project-status-reason"{attr("content", status[1])}>'
                )
        anchors = []
        for e in entries:
            d = e.dist
            fragment = f"#sha256={d.sha256}" if e.hashed else ""
            link_base = self.file_bases.get(d.filename, base)
            attrs = attr("href", f"{link_base}{self.file_path(d)}{fragment}")
            if d.requires_python is not None:
                attrs += attr("data-requires-python", d.requires_python)
            if e.yanked is not False:
                # A bare data-yanked reads as "not yanked" to pip's parser: always give a value.
                attrs += attr("data-yanked", "" if e.yanked is True else str(e.yanked))
            if e.metadata:
                value = f"sha256={d.metadata_sha256}"
                attrs += attr("data-core-metadata", value) + attr("data-dist-info-metadata", value)
            provenance = self._provenance(d)
            if provenance is not None:
                attrs += attr("data-provenance", provenance)
            anchors.append(f"    <a{attrs}>{html.escape(d.filename)}</a><br />\n")
        head = "".join(f"    {m}\n" for m in metas)
        return (
            f"<!DOCTYPE html>\n<html>\n  <head>\n{head}"
            f"    <title>Links for {html.escape(name)}</title>\n  </head>\n  <body>\n"
            f"    <h1>Links for {html.escape(name)}</h1>\n{''.join(anchors)}"
            f"  </body>\n</html>\n<!--SERIAL {serial}-->\n"
        ).encode()

    # -- files ----------------------------------------------------------------------

    async def _file(self, request: web.Request) -> web.StreamResponse:
        tail = request.match_info["tail"]
        served = tail.rsplit("/", 1)[-1]
        is_meta = served.endswith(".metadata") and served not in self._entries
        filename = served.removesuffix(".metadata") if is_meta else served
        location = self.redirects.get(served)
        if location is not None:
            raise web.HTTPFound(location)
        entry = self._entries.get(filename)
        if (
            entry is None
            or "/packages/" + tail.removesuffix(".metadata" if is_meta else "")
            != self.file_path(entry.dist)
            or (is_meta and not entry.metadata)
            or self._status.get(entry.dist.project, ("",))[0] == "quarantined"
        ):
            raise web.HTTPNotFound(text="404 Not Found\n")
        if self.file_status is not None:
            return web.Response(status=self.file_status, text="fake upstream error\n")
        failed = self._take_failure(self.file_fail_times, served)
        if failed is not None:
            return failed
        if self.file_header_delay:
            await asyncio.sleep(self.file_header_delay)

        data = entry.dist.metadata if is_meta else entry.dist.data
        assert data is not None  # is_meta implies entry.metadata implies a wheel
        if served in self.corrupt:
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]

        # Validators describe the stored bytes, whatever happens to them in transit.
        etag = f'"{entry.dist.metadata_sha256 if is_meta else entry.dist.sha256}"'
        last_modified = "Tue, 02 Jan 2024 03:04:05 GMT"
        headers = {
            "Accept-Ranges": "bytes",
            "ETag": etag,
            "Last-Modified": last_modified,
            "Content-Type": "application/octet-stream",
            **self.file_headers,
        }
        status, body = 200, data
        if_range = request.headers.get("If-Range")
        if served in self.no_ranges:
            pass  # RFC 9110 §14.2: a server may ignore Range and send the whole file
        elif if_range is None or if_range in (etag, last_modified):
            try:
                selected = parse_range(request.headers.get("Range"), len(data))
            except Unsatisfiable:
                headers["Content-Range"] = f"bytes */{len(data)}"
                return web.Response(status=416, headers=headers)
            if selected is not None:
                start, end = selected
                status, body = 206, data[start : end + 1]
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"

        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = len(body)
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        reset = self._reset_point(served, len(body))
        limit = reset if reset is not None else self.truncate.get(served)
        to_send = body if limit is None else body[:limit]
        for offset in range(0, len(to_send), self.chunk_size):
            if offset and self.file_delay:
                await asyncio.sleep(self.file_delay)
            await response.write(to_send[offset : offset + self.chunk_size])
        if reset is not None and request.transport is not None:
            await _reset_connection(request.transport)
            return response
        if limit is not None and limit < len(body):
            # Content-Length promised more: closing now is a truncated download.
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response

    def _reset_point(self, served: str, size: int) -> int | None:
        """Bytes to send before resetting this response, consuming one `reset_times`."""
        with self._lock:
            after = self.reset_after.get(served)
            if after is None or after >= size:
                return None  # the whole body fits: nothing to cut, no reset used up
            left = self.reset_times.get(served)
            if left is not None:
                if left <= 0:
                    return None
                self.reset_times[served] = left - 1
            return after

    # -- background-thread server ---------------------------------------------------

    @property
    def port(self) -> int:
        """The port of the thread server (kept after `stop()` so it can come back)."""
        if self._port is None:
            raise RuntimeError("FakePyPI was never started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL of the thread server, e.g. ``http://127.0.0.1:40123`` (``https://``
        when started with an SSL context)."""
        return f"{self._scheme}://127.0.0.1:{self.port}"

    @property
    def index_url(self) -> str:
        """The simple index URL to give clients."""
        return self.url + "/simple/"

    @property
    def running(self) -> bool:
        """True while the thread server accepts connections."""
        return self._thread is not None

    def start(self, port: int | None = None, ssl_context: ssl.SSLContext | None = None) -> str:
        """Serve on 127.0.0.1 in a daemon thread (port 0 = any); return the base URL.

        With `ssl_context` it serves HTTPS only (file links on pages are https too).
        """
        if self._thread is not None:
            raise RuntimeError("FakePyPI is already running")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            # stop() must cut in-flight downloads like a dead host. Not 0: aiohttp reads
            # a zero shutdown_timeout as "wait forever".
            runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.01)
            try:
                loop.run_until_complete(runner.setup())
                site = web.TCPSite(
                    runner, "127.0.0.1", port or 0, reuse_address=True, ssl_context=ssl_context
                )
                loop.run_until_complete(site.start())
                self._port = runner.addresses[0][1]
            except BaseException as exc:
                failure.append(exc)
                loop.run_until_complete(runner.cleanup())
                loop.close()
                ready.set()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(runner.cleanup())
                # Handlers still asleep (page_delay, file_delay…) were cancelled; let
                # them unwind before closing, or they die "destroyed but pending".
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.close()

        thread = threading.Thread(target=run, name="fake-pypi", daemon=True)
        thread.start()
        ready.wait()
        if failure:
            thread.join()
            raise failure[0]
        self._thread, self._loop = thread, loop
        self._scheme = "http" if ssl_context is None else "https"
        return self.url

    def stop(self) -> None:
        """Close the listener and every connection: clients now get connection refused."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        self._thread = self._loop = None
        with contextlib.suppress(RuntimeError):  # loop already closed
            loop.call_soon_threadsafe(loop.stop)
        thread.join()

    def __enter__(self) -> FakePyPI:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


async def _reset_connection(transport: asyncio.Transport) -> None:
    """Abort with a TCP RST once the bytes written so far have reached the peer.

    A plain close sends FIN (a clean end: see `FakePyPI.truncate`); SO_LINGER 0 makes the
    kernel send RST instead, as a dropped middlebox connection does. It would also
    discard unsent data, so first wait (at most ~5 s) until asyncio's buffers
    and the kernel's send queue are empty: the peer has acknowledged every byte.
    """
    # Under TLS the application transport writes through a raw socket transport.
    layers = [transport, getattr(getattr(transport, "_ssl_protocol", None), "_transport", None)]
    sock = transport.get_extra_info("socket")
    for _ in range(5000):  # polled: no event fires when the peer acknowledges data
        if not _unsent(layers, sock):
            break
        await asyncio.sleep(0.001)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _unsent(layers: list[Any], sock: Any) -> int:
    """Bytes written but not yet acknowledged by the peer (asyncio buffers + kernel)."""
    total = sum(
        layer.get_write_buffer_size()
        for layer in layers
        if isinstance(layer, asyncio.WriteTransport) and not layer.is_closing()
    )
    outq = getattr(termios, "TIOCOUTQ", None)  # == SIOCOUTQ on Linux: unacknowledged bytes
    if not total and sock is not None and sys.platform == "linux" and outq is not None:
        with contextlib.suppress(OSError):
            total = struct.unpack("i", fcntl.ioctl(sock.fileno(), outq, b"\0\0\0\0"))[0]
    return total
