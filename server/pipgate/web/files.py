"""Handlers that send file bodies: verified blobs, downloads in progress, rendered lists.

Range, If-Range, If-None-Match and HEAD are handled here (see :mod:`.ranges`) for
cached blobs and for downloads still in flight alike. A download that fails
verification is aborted before its last byte, so the client sees a broken transfer,
never a complete wrong file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from aiohttp import web

from pipgate.audit import AuditRecord
from pipgate.errors import UpstreamError
from pipgate.files.service import METADATA_SUFFIX, Served
from pipgate.limits import Limited
from pipgate.links import is_file_key, is_safe_filename
from pipgate.pages.source import NotOffered
from pipgate.simple.names import is_valid_name, normalize
from pipgate.store.blobs import BlobStore, is_sha256
from pipgate.store.downloads import Download
from pipgate.store.locks import acquire_shared
from pipgate.useragent import parse_user_agent
from pipgate.web.http import content_type_for, text_error, upstream_error
from pipgate.web.middleware import REQUEST_ID, USER, client_address, limited
from pipgate.web.ranges import (
    UNSATISFIABLE,
    ByteRange,
    etag_matches,
    if_range_allows,
    parse_range,
)
from pipgate.web.state import services

log = logging.getLogger("pipgate.web")

#: Files are immutable under their content-addressed URL.
IMMUTABLE = "public, max-age=31536000, immutable"
#: Bytes handed to the kernel per step of a body; each step must finish within
#: ``server.send_timeout`` (so the slowest client kept is ~1 MiB per send_timeout).
SEND_STEP = 1 << 20


async def file(request: web.Request) -> web.StreamResponse:
    """``GET|HEAD /files/<project>/<key>/<filename>`` (and ``<filename>.metadata``)."""
    project = request.match_info["project"]
    key = request.match_info["key"]
    filename = request.match_info["filename"]
    if not (
        is_valid_name(project)
        and normalize(project) == project
        and is_file_key(key)
        and is_safe_filename(filename)
    ):
        return text_error(404, "no such file")
    svc = services(request)
    is_metadata = filename.endswith(METADATA_SUFFIX)

    async def resolve() -> Served:
        if is_metadata:
            return await svc.files.metadata(project, key, filename[: -len(METADATA_SUFFIX)])
        return await svc.files.open(project, key, filename)

    sent = Sent()
    served: Served | None = None
    status, reason = 500, None
    try:
        try:
            served = await resolve()
            response = await send(request, served, sent)
        except FileNotFoundError:
            # Evicted (or repaired away) between look-up and open: now it is a miss.
            svc.files.forget(key, filename)
            served = await resolve()
            response = await send(request, served, sent)
        status = response.status
        return response
    except NotOffered as exc:
        status = 404
        return text_error(404, str(exc), phrase=f"Not Found: {exc}")
    except UpstreamError as exc:
        status, reason = exc.client_status, exc.reason.value
        return upstream_error(exc)
    except Limited as exc:
        status, reason = exc.status, exc.limit
        return limited(exc)
    finally:
        info = parse_user_agent(request.headers.get("User-Agent"))
        svc.audit.record(
            AuditRecord(
                time=time.time(),
                client=client_address(request, svc.config.trust_forwarded),
                installer=info.installer,
                installer_version=info.installer_version,
                python=info.python,
                project=project,
                filename=filename,
                kind="metadata" if is_metadata else "file",
                sha256=served.sha256 if served is not None else (key if is_sha256(key) else None),
                upstream=served.upstream if served is not None else None,
                result=served.result if served is not None else "refused",
                status=status,
                bytes=sent.bytes,
                complete=sent.complete,
                reason=reason or sent.reason,
                request_id=request.get(REQUEST_ID),
                user=request.get(USER),
            )
        )


@dataclass
class Sent:
    """How much of a body went out (for the audit trail)."""

    bytes: int = 0
    #: Whether the client got all it asked for (the range, for a range request).
    complete: bool = False
    #: Why the body was cut (``hash_mismatch``, ``truncated``…), if it was.
    reason: str | None = None


def _etag(served: Served) -> str | None:
    """The file's sha256 as its ETag: strong for a verified blob, weak for bytes still
    arriving.

    Bytes streamed from a download in flight are not yet verified. Should the download
    fail, the client holds wrong bytes under this tag; a strong tag would let it resume
    them with ``If-Range`` and join them to right ones into a complete, wrong file. A
    weak tag never satisfies ``If-Range`` (RFC 9110 §13.1.5), so such a resume gets the
    whole file again (``bench/chaos.py`` found this).
    """
    if not served.sha256:
        return None
    return f'"{served.sha256}"' if served.path is not None else f'W/"{served.sha256}"'


async def send(
    request: web.Request, served: Served, sent: Sent | None = None
) -> web.StreamResponse:
    """Answer ``request`` with ``served``, honouring conditional and range headers;
    ``sent`` learns how much of the body went out."""
    sent = sent if sent is not None else Sent()
    etag = _etag(served)
    headers = {
        "Content-Type": content_type_for(served.filename),
        "Accept-Ranges": "bytes",
        "X-Pipgate-Cache": "hit" if served.cached else "miss",
    }
    if etag:
        headers["ETag"] = etag
        headers["Cache-Control"] = IMMUTABLE
    if etag_matches(request.headers.get("If-None-Match"), etag):
        sent.complete = True
        return web.Response(status=304, headers=headers)

    size = served.size
    selected: ByteRange | None = None
    if_range = request.headers.get("If-Range")
    if served.ranges and size is not None and if_range_allows(if_range, etag):
        parsed = parse_range(request.headers.get("Range"), size)
        if parsed is UNSATISFIABLE:
            headers["Content-Range"] = f"bytes */{size}"
            return web.Response(status=416, headers=headers)
        if isinstance(parsed, ByteRange):
            selected = parsed
    if not served.ranges:
        headers["Accept-Ranges"] = "none"

    response = web.StreamResponse(status=206 if selected else 200, headers=headers)
    if selected is not None:
        response.headers["Content-Range"] = selected.content_range
        response.content_length = selected.length
    elif size is not None:
        response.content_length = size
    start = selected.first if selected else 0
    end = selected.last + 1 if selected else None
    try:
        return await _send_body(request, response, served, start, end, sent)
    except ConnectionError:
        return _client_left(request, response)


def _client_left(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """The client went away or stopped reading mid-body: the connection is cut and
    the response returned as it is, so aiohttp neither logs an error nor counts a 500."""
    _abort(request)
    return response


async def _send_body(
    request: web.Request,
    response: web.StreamResponse,
    served: Served,
    start: int,
    end: int | None,
    sent: Sent,
) -> web.StreamResponse:
    size = served.size
    if request.method == "HEAD":
        await response.prepare(request)
        await response.write_eof()
        sent.complete = True
        return response

    svc = services(request)
    data = await svc.files.small_body(served)
    if data is not None:
        count = (end if end is not None else len(data)) - start
        # A Response sends its headers and body in one write.
        body = data if count == len(data) else data[start : start + count]
        whole = web.Response(status=response.status, headers=response.headers, body=body)
        async with _send_deadline(request):
            await whole.prepare(request)
            await whole.write_eof()
        svc.metrics.bytes_served.labels(source="cache" if served.cached else "upstream").inc(count)
        sent.bytes, sent.complete = count, True
        return whole
    if served.path is not None:
        # The use lock is held while bytes are sent: eviction never removes a file
        # being read. Lock and open share one worker-thread hop (the hot path).
        use, handle = await _open_blob(svc.blobs, served.path, served.sha256)
        try:
            count = (end if end is not None else (size or 0)) - start
            await response.prepare(request)
            await _sendfile_range(request, response, handle, start, count)
            await response.write_eof()
        finally:
            handle.close()
            if use is not None:
                os.close(use)
        source = "cache" if served.cached else "upstream"
        svc.metrics.bytes_served.labels(source=source).inc(count)
        sent.bytes, sent.complete = count, True
        return response
    use = await _hold_use_lock(svc.blobs, served.sha256)
    try:
        return await _send_stream(request, response, served, start, end, sent)
    finally:
        if use is not None:
            os.close(use)


async def _open_blob(
    blobs: BlobStore, path: Path, sha256: str | None
) -> tuple[int | None, BinaryIO]:
    """Take the blob's use lock (shared) and open it, in one worker-thread hop."""

    def open_locked() -> tuple[int | None, BinaryIO]:
        use = None
        if sha256 is not None and is_sha256(sha256):
            with contextlib.suppress(OSError):  # a read-only cache still serves
                use = acquire_shared(blobs.use_lock_path(sha256))
        try:
            return use, open(path, "rb")
        except BaseException:
            if use is not None:
                os.close(use)
            raise

    task = asyncio.ensure_future(asyncio.to_thread(open_locked))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_close_opened)
        raise


def _close_opened(task: asyncio.Future[tuple[int | None, BinaryIO]]) -> None:
    if not task.cancelled() and task.exception() is None:
        use, handle = task.result()
        handle.close()
        if use is not None:
            os.close(use)


async def _send_stream(
    request: web.Request,
    response: web.StreamResponse,
    served: Served,
    start: int,
    end: int | None,
    sent_to: Sent,
) -> web.StreamResponse:
    """Send bytes still arriving; cut the connection if they fail verification."""
    assert served.stream is not None
    metrics = services(request).metrics
    await response.prepare(request)
    sent = 0
    try:
        if isinstance(served.stream, Download):
            # Disk-backed: each available range goes out with sendfile, no copies.
            async with contextlib.aclosing(served.stream.segments(start, end)) as segments:
                async for handle, offset, count in segments:
                    await _sendfile_range(request, response, handle, offset, count)
                    sent += count
        else:
            async for chunk in served.stream.read(start, end):
                await write_within_deadline(request, response, chunk)
                sent += len(chunk)
    except UpstreamError as exc:
        log.warning(
            "aborting response for %s after %d bytes: %s", served.filename, sent, exc.reason.value
        )
        sent_to.reason = exc.reason.value
        _abort(request)
        return response
    finally:
        metrics.bytes_served.labels(source="upstream").inc(sent)
        sent_to.bytes = sent
    await response.write_eof()
    sent_to.complete = True
    return response


async def _hold_use_lock(blobs: BlobStore, sha256: str | None) -> int | None:
    if sha256 is None or not is_sha256(sha256):
        return None
    task = asyncio.ensure_future(asyncio.to_thread(acquire_shared, blobs.use_lock_path(sha256)))
    try:
        return await asyncio.shield(task)
    except OSError:
        return None  # a read-only cache still serves
    except asyncio.CancelledError:
        # The thread still takes the lock: release it when it does, or it would pin
        # the blob against eviction for the life of the process.
        task.add_done_callback(_close_acquired)
        raise


def _close_acquired(task: asyncio.Future[int]) -> None:
    if not task.cancelled() and task.exception() is None:
        os.close(task.result())


async def send_file_path(
    request: web.Request, path: Path, headers: dict[str, str], *, size: int | None = None
) -> web.StreamResponse:
    """Send a whole file from disk (the rendered project list) with sendfile; ``size``
    when the caller knows it (a rendered list never changes under its name)."""
    if size is None:
        size = await asyncio.to_thread(lambda: path.stat().st_size)
    response = web.StreamResponse(status=200, headers=headers)
    response.content_length = size
    if request.method == "HEAD":
        await response.prepare(request)
        await response.write_eof()
        return response
    try:
        await _sendfile(request, response, path, 0, size)
    except ConnectionError:
        return _client_left(request, response)
    return response


async def _sendfile(
    request: web.Request, response: web.StreamResponse, path: Path, offset: int, count: int
) -> None:
    handle = await asyncio.to_thread(open, path, "rb")
    try:
        await response.prepare(request)
        await _sendfile_range(request, response, handle, offset, count)
        await response.write_eof()
    finally:
        handle.close()


async def _sendfile_range(
    request: web.Request,
    response: web.StreamResponse,
    handle: BinaryIO,
    offset: int,
    count: int,
) -> None:
    """Send ``count`` bytes of ``handle`` from ``offset`` (zero-copy where possible),
    :data:`SEND_STEP` bytes at a time, each within ``server.send_timeout``: a client
    that stops reading is cut off instead of holding the file and its socket."""
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("client went away")
    loop = asyncio.get_running_loop()
    done = 0
    while done < count:
        step = min(SEND_STEP, count - done)
        async with _send_deadline(request):
            try:
                await loop.sendfile(transport, handle, offset + done, step)
            except NotImplementedError:
                chunk = await asyncio.to_thread(os.pread, handle.fileno(), step, offset + done)
                if not chunk:
                    raise ConnectionResetError("file shrank while sent") from None
                await response.write(chunk)
        done += step


async def write_within_deadline(
    request: web.Request, response: web.StreamResponse, chunk: bytes
) -> None:
    """``response.write`` bounded by ``server.send_timeout``."""
    async with _send_deadline(request):
        await response.write(chunk)


@contextlib.asynccontextmanager
async def _send_deadline(request: web.Request) -> AsyncIterator[None]:
    """Abort the connection when the block (one step of a body) outlasts
    ``server.send_timeout``; counted as limit ``send_timeout``."""
    svc = services(request)
    try:
        async with asyncio.timeout(svc.config.send_timeout):
            yield
    except TimeoutError:
        svc.metrics.limited.labels(limit="send_timeout").inc()
        log.warning(
            "client %s took no bytes for %.0f s: connection cut",
            request.remote,
            svc.config.send_timeout,
        )
        _abort(request)
        raise ConnectionResetError("client stopped reading") from None


def _abort(request: web.Request) -> None:
    """Cut the connection so the client sees an incomplete body, not a complete one."""
    transport = request.transport
    if transport is not None:
        transport.abort()
