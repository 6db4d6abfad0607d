"""A tiny S3 (path-style) that ignores ``If-None-Match``: every PUT overwrites.

Enough of the API for aiobotocore to create a bucket and put, head, get and delete
objects; it ignores ``Authorization`` entirely. It stands for the S3-compatible stores
that accept a conditional header and silently drop it, which
:meth:`pipgate.store.s3.S3Blobs.start` must refuse.
"""

from __future__ import annotations

import email.utils
import hashlib
import time
from dataclasses import dataclass, field
from types import TracebackType

from aiohttp import web


@dataclass
class StoredObject:
    data: bytes
    etag: str
    mtime: float = field(default_factory=time.time)


def _error(status: int, code: str, message: str) -> web.Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    )
    return web.Response(status=status, text=body, content_type="application/xml")


def _decode_aws_chunked(raw: bytes) -> bytes:
    """``size[;chunk-signature=…]\\r\\n data \\r\\n … 0\\r\\n trailers``: the data."""
    out, pos = bytearray(), 0
    while True:
        eol = raw.index(b"\r\n", pos)
        size = int(raw[pos:eol].split(b";")[0], 16)
        pos = eol + 2
        if size == 0:
            return bytes(out)
        out += raw[pos : pos + size]
        pos += size + 2


class FakeS3:
    """The fake S3 on a free loopback port: ``async with FakeS3() as s3: s3.endpoint``."""

    def __init__(self) -> None:
        self.buckets: dict[str, dict[str, StoredObject]] = {}
        #: ``(method, path)`` of every request, for tests that look at what was asked.
        self.requests: list[tuple[str, str]] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{bucket}", self._bucket)
        app.router.add_route("*", "/{bucket}/", self._bucket)
        app.router.add_route("*", "/{bucket}/{key:.+}", self._object)
        return app

    async def start(self) -> FakeS3:
        self._runner = web.AppRunner(self.app())
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeS3:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _bucket(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["bucket"]
        self.requests.append((request.method, request.path))
        if request.method == "PUT":
            await request.read()
            self.buckets.setdefault(name, {})
            return web.Response(headers={"Location": f"/{name}"})
        if name not in self.buckets:
            if request.method == "HEAD":
                return web.Response(status=404)
            return _error(404, "NoSuchBucket", "The specified bucket does not exist.")
        if request.method == "HEAD":
            return web.Response(headers={"x-amz-bucket-region": "us-east-1"})
        return _error(501, "NotImplemented", "only HEAD and PUT of a bucket")

    async def _object(self, request: web.Request) -> web.StreamResponse:
        name, key = request.match_info["bucket"], request.match_info["key"]
        self.requests.append((request.method, request.path))
        objects = self.buckets.get(name)
        if objects is None:
            if request.method == "HEAD":
                return web.Response(status=404)
            return _error(404, "NoSuchBucket", "The specified bucket does not exist.")
        if request.method == "PUT":
            if request.query:  # ?uploadId=…&partNumber=… and friends
                return _error(501, "NotImplemented", "no multipart uploads here")
            raw = await request.read()
            if "aws-chunked" in request.headers.get("Content-Encoding", ""):
                raw = _decode_aws_chunked(raw)
            etag = f'"{hashlib.md5(raw).hexdigest()}"'
            objects[key] = StoredObject(raw, etag)  # If-None-Match: ignored, the point
            return web.Response(headers={"ETag": etag})
        if request.method == "POST":
            return _error(501, "NotImplemented", "no multipart uploads here")
        if request.method == "DELETE":
            objects.pop(key, None)
            return web.Response(status=204)
        stored = objects.get(key)
        if stored is None:
            if request.method == "HEAD":
                return web.Response(status=404)
            return _error(404, "NoSuchKey", "The specified key does not exist.")
        return self._send(request, stored)

    def _send(self, request: web.Request, stored: StoredObject) -> web.Response:
        data = stored.data
        headers = {
            "ETag": stored.etag,
            "Last-Modified": email.utils.formatdate(stored.mtime, usegmt=True),
            "Accept-Ranges": "bytes",
        }
        status, body = 200, data
        wanted = request.headers.get("Range", "")
        if wanted.startswith("bytes="):
            first, _, last = wanted[6:].partition("-")
            if first:
                start, end = int(first), int(last) if last else len(data) - 1
            else:
                start, end = max(0, len(data) - int(last)), len(data) - 1
            if start >= len(data):
                return _error(416, "InvalidRange", "The requested range is not satisfiable")
            end = min(end, len(data) - 1)
            status, body = 206, data[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(body))
            return web.Response(status=status, headers=headers)
        return web.Response(status=status, body=body, headers=headers)
