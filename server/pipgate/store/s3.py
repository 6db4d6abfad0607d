"""The fleet's shared blobs in an S3-compatible bucket (``storage.kind = s3``).

Keys mirror the local layout: ``<prefix>blobs/ab/cd/<sha256>``. Every commit is a
create-only write (``If-None-Match: *`` on PutObject and CompleteMultipartUpload), so
two replicas committing the same blob cannot overwrite each other; :meth:`S3Blobs.start`
refuses a store that ignores that header (:class:`~pipgate.store.shared.Unsafe`).

Requests go through aiobotocore (botocore's signing and retries on aiohttp). Its
failures are turned into one-line :class:`~pipgate.store.shared.StorageError` messages
(HTTP status and S3 error code) here, once; nothing above this module sees botocore.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from pipgate.store.blobs import is_sha256
from pipgate.store.downloads import Body
from pipgate.store.shared import SharedBlob, SharedBlobs, StorageError, Unsafe

#: What a request to the store can fail with (botocore's are added below).
_FAILURES: tuple[type[BaseException], ...] = (aiohttp.ClientError, asyncio.TimeoutError, OSError)
try:
    from aiobotocore.session import get_session
    from botocore.config import Config as BotoConfig
    from botocore.exceptions import BotoCoreError, ClientError
except ImportError:  # pragma: no cover - the [scale] extra is not installed
    _HAVE_AIOBOTOCORE = False
else:
    _HAVE_AIOBOTOCORE = True
    _FAILURES = (ClientError, BotoCoreError, *_FAILURES)

MiB = 1 << 20
#: S3's smallest part (every part but the last) and most parts per upload.
MIN_PART_SIZE = 5 * MiB
MAX_PARTS = 10_000
#: Size of the chunks :meth:`S3Blobs.open` yields.
CHUNK = 256 * 1024
#: Attempts of a create-only write that met a concurrent one (409 ConditionalRequestConflict).
CONFLICT_ATTEMPTS = 3


@dataclass(frozen=True)
class S3Settings:
    """Where the bucket is and how to talk to it (built once from the config)."""

    bucket: str
    #: ``None``: AWS's own endpoint for :attr:`region`.
    endpoint_url: str | None = None
    #: ``""`` or ending in ``/`` (``team-a/``).
    prefix: str = ""
    region: str = "us-east-1"
    #: ``http://host/bucket/key`` rather than ``http://bucket.host/key`` (MinIO, SeaweedFS…).
    path_style: bool = True
    #: ``None``: botocore's usual chain (environment, ~/.aws, instance role).
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    verify_tls: bool = True
    ca_bundle: Path | None = None
    #: Files this large or larger are sent as a multipart upload.
    #: Uploads hold what they send in memory twice (botocore signs bytes; aiohttp copies
    #: the buffer it is given), so both sizes stay small: 2 × 2 × 8 MiB per upload.
    multipart_threshold: int = 8 * MiB
    part_size: int = 8 * MiB
    #: Parts of one upload in flight at once (each holds ``part_size`` in memory twice).
    part_concurrency: int = 2
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    #: HTTP connections kept to the endpoint (shared by every request of this replica).
    max_connections: int = 32
    #: botocore's attempts per request (throttling, 5xx, connection resets).
    max_attempts: int = 3

    def __post_init__(self) -> None:
        if self.prefix and not self.prefix.endswith("/"):
            raise ValueError("prefix must be empty or end with /")
        if self.part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} (S3's minimum)")
        if self.part_concurrency < 1 or self.max_connections < 1 or self.max_attempts < 1:
            raise ValueError("part_concurrency, max_connections, max_attempts must be >= 1")


class S3Blobs(SharedBlobs):
    """Verified blobs in a bucket, committed create-only."""

    def __init__(self, settings: S3Settings) -> None:
        if not _HAVE_AIOBOTOCORE:
            raise StorageError("storage.kind = s3 needs aiobotocore: pip install 'pipgate[scale]'")
        self.settings = settings
        self.label = f"s3://{settings.bucket}" + (f"/{settings.prefix}" if settings.prefix else "")
        self._blobs = f"{settings.prefix}blobs/"
        #: Uploads in flight by sha256 (one per blob in this process).
        self._putting: dict[str, asyncio.Future[bool]] = {}
        self._stack: AsyncExitStack | None = None
        self._client: Any = None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the client, check the bucket answers, and that it enforces create-only."""
        s = self.settings
        endpoint = s.endpoint_url or f"AWS {s.region}"
        if s.ca_bundle is not None and not await asyncio.to_thread(s.ca_bundle.is_file):
            raise StorageError(f"{self.label} at {endpoint}: ca_bundle {s.ca_bundle} is not a file")
        config = BotoConfig(
            region_name=s.region,
            s3={"addressing_style": "path" if s.path_style else "virtual"},
            retries={"max_attempts": s.max_attempts, "mode": "standard"},
            connect_timeout=s.connect_timeout,
            read_timeout=s.read_timeout,
            max_pool_connections=s.max_connections,
            # Checksums only where S3 demands one: the payload is already covered by the
            # SigV4 payload hash, and every blob was verified against its sha256 before.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        stack = AsyncExitStack()
        try:
            session = await _session()
            self._client = await stack.enter_async_context(
                session.create_client(
                    "s3",
                    endpoint_url=s.endpoint_url,
                    aws_access_key_id=s.access_key,
                    aws_secret_access_key=s.secret_key,
                    aws_session_token=s.session_token,
                    verify=str(s.ca_bundle) if s.ca_bundle else s.verify_tls,
                    config=config,
                )
            )
            self._stack = stack
            await self._check_bucket(endpoint)
            await self._probe_create_only()
        except BaseException:
            self._stack = None
            self._client = None
            await stack.aclose()
            raise

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def _check_bucket(self, endpoint: str) -> None:
        where = f"{self.label} at {endpoint}"
        try:
            await self._client.head_bucket(Bucket=self.settings.bucket)
        except _FAILURES as exc:
            status, bucket = _status(exc), self.settings.bucket
            if status == 404:
                raise StorageError(f"{where}: bucket {bucket!r} does not exist") from None
            if status == 403:
                raise StorageError(
                    f"{where}: access to bucket {bucket!r} denied (HTTP 403: check the"
                    " access key, secret key and bucket policy)"
                ) from None
            raise self._error(exc, f"bucket check at {endpoint}") from None

    async def _probe_create_only(self) -> None:
        """Write a probe twice, create-only: the second write must fail with 412.

        Both kinds of commit are probed: a store may honour ``If-None-Match`` on PutObject
        and not on CompleteMultipartUpload (blobs above the threshold). The multipart
        probe costs a few bytes, not 5 MiB: the minimum part size does not apply to the
        last part, and a one-part upload's only part is its last.
        """
        key = f"{self.settings.prefix}probe/{uuid.uuid4().hex}"
        client, bucket = self._client, self.settings.bucket
        try:
            try:
                await client.put_object(Bucket=bucket, Key=key, Body=b"probe", IfNoneMatch="*")
            except _FAILURES as exc:
                raise self._error(exc, f"probe write {key}") from None
            await self._expect_refusal(
                "PutObject",
                client.put_object(Bucket=bucket, Key=key, Body=b"again", IfNoneMatch="*"),
            )
            upload = await self._begin_multipart(key)
            try:
                try:
                    part = await client.upload_part(
                        Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"again"
                    )
                except _FAILURES as exc:
                    raise self._error(exc, f"probe upload {key}") from None
                await self._expect_refusal(
                    "CompleteMultipartUpload",
                    client.complete_multipart_upload(
                        Bucket=bucket,
                        Key=key,
                        UploadId=upload,
                        MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
                        IfNoneMatch="*",
                    ),
                )
            finally:
                await self._abort(key, upload)
        finally:
            with contextlib.suppress(*_FAILURES):
                await client.delete_object(Bucket=bucket, Key=key)

    async def _expect_refusal(self, operation: str, request: Awaitable[Any]) -> None:
        """A create-only write over an existing key must fail with 412, else :class:`Unsafe`."""
        try:
            await request
        except _FAILURES as exc:
            if _status(exc) == 412:
                return
            if _status(exc) not in (400, 501):  # 400/501: the header is not understood
                raise self._error(exc, f"create-only probe ({operation})") from None
            outcome = f"HTTP {_status(exc)} {_code(exc)}".strip()
        else:
            outcome = "a second create of the same key succeeded"
        raise Unsafe(
            f"{self.label}: the store ignored If-None-Match: * on {operation} ({outcome}),"
            " so replicas could overwrite each other's blobs; refusing storage.kind = s3"
        )

    # --- reads -----------------------------------------------------------------------------

    def _key(self, sha256: str) -> str:
        if not is_sha256(sha256):
            raise ValueError("not a sha256 hex digest")
        return f"{self._blobs}{sha256[:2]}/{sha256[2:4]}/{sha256}"

    async def stat(self, sha256: str) -> int | None:
        """The blob's size (HeadObject), ``None`` when absent."""
        key = self._key(sha256)
        try:
            head = await self._client.head_object(Bucket=self.settings.bucket, Key=key)
        except _FAILURES as exc:
            if _status(exc) == 404:
                return None
            raise self._error(exc, f"stat {sha256}") from None
        return int(head["ContentLength"])

    @contextlib.asynccontextmanager
    async def open(self, sha256: str, start: int = 0) -> AsyncIterator[Body]:
        """GetObject from ``start`` (a Range request); ``size`` is the whole object's."""
        key = self._key(sha256)
        if start < 0:
            raise ValueError("start must be >= 0")
        missing = FileNotFoundError(f"{self.label}: no blob {sha256}")
        extra = {"Range": f"bytes={start}-"} if start > 0 else {}
        try:
            response = await self._client.get_object(Bucket=self.settings.bucket, Key=key, **extra)
        except _FAILURES as exc:
            if _status(exc) == 404:
                raise missing from None
            if _status(exc) != 416:
                raise self._error(exc, f"read {sha256}") from None
            response = None  # start at or past the end: nothing to send
        if response is None:
            size = await self.stat(sha256)
            if size is None:
                raise missing
            yield _Empty(size)
            return
        async with response["Body"] as stream:  # releases the pooled connection
            yield _ObjectBody(
                _whole_size(response), stream, lambda exc: self._error(exc, f"read {sha256}")
            )

    async def iter(self) -> AsyncIterator[SharedBlob]:
        """Every blob under ``<prefix>blobs/`` (ListObjectsV2), other keys skipped."""
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            async for page in paginator.paginate(Bucket=self.settings.bucket, Prefix=self._blobs):
                for entry in page.get("Contents", ()):
                    sha256 = entry["Key"].rsplit("/", 1)[-1]
                    if is_sha256(sha256) and entry["Key"] == self._key(sha256):
                        yield SharedBlob(
                            sha256=sha256,
                            size=int(entry["Size"]),
                            mtime=entry["LastModified"].timestamp(),
                        )
        except _FAILURES as exc:
            raise self._error(exc, "list") from None

    # --- writes ----------------------------------------------------------------------------

    async def put(self, sha256: str, path: Path) -> bool:
        """Commit ``path`` create-only; ``False`` if the blob was already there.

        Concurrent puts of one blob in this process share one upload: besides the
        bandwidth, some stores (SeaweedFS) let two racing multipart completes both
        succeed despite ``If-None-Match``, so only one of them may say it created it.
        """
        running = self._putting.get(sha256)
        if running is not None:
            try:
                await asyncio.shield(running)
            except Exception:  # it failed: this put tries on its own
                pass
            else:
                return False
        task = asyncio.ensure_future(self._put(sha256, path))
        self._putting[sha256] = task

        def forget(done: asyncio.Future[bool]) -> None:
            if self._putting.get(sha256) is done:
                del self._putting[sha256]

        task.add_done_callback(forget)
        return await asyncio.shield(task)

    async def _put(self, sha256: str, path: Path) -> bool:
        key = self._key(sha256)
        size = (await asyncio.to_thread(os.stat, path)).st_size
        multipart = size > 0 and size >= self.settings.multipart_threshold
        # A large upload of a blob another replica committed meanwhile is wasted
        # bandwidth: one HeadObject first is cheap next to it.
        if multipart and await self.stat(sha256) is not None:
            return False
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            try:
                if multipart:
                    return await self._put_multipart(key, path, size)
                return await self._put_single(key, path)
            except _Conflict:
                # S3 (409 ConditionalRequestConflict): a concurrent write or delete of
                # the key was in progress. If a commit won, this is a success; else retry.
                if await self.stat(sha256) is not None:
                    return False
                await asyncio.sleep(0.1 * attempt)
        raise StorageError(f"{self.label}: write {sha256}: kept conflicting (HTTP 409)")

    async def _put_single(self, key: str, path: Path) -> bool:
        # botocore signs the payload's sha256 over plain http: it needs bytes (or a
        # seekable file it would read on the event loop), and the file is below the
        # multipart threshold.
        data = await asyncio.to_thread(path.read_bytes)
        try:
            await self._client.put_object(
                Bucket=self.settings.bucket, Key=key, Body=data, IfNoneMatch="*"
            )
        except _FAILURES as exc:
            return self._created_or_raise(exc, key)
        return True

    async def _put_multipart(self, key: str, path: Path, size: int) -> bool:
        part_size = max(self.settings.part_size, -(-size // MAX_PARTS))
        offsets = range(0, size, part_size)
        upload = await self._begin_multipart(key)
        try:
            etags = await self._upload_parts(key, upload, path, offsets, part_size)
            parts = [{"ETag": etag, "PartNumber": n} for n, etag in enumerate(etags, 1)]
            try:
                await self._client.complete_multipart_upload(
                    Bucket=self.settings.bucket,
                    Key=key,
                    UploadId=upload,
                    MultipartUpload={"Parts": parts},
                    IfNoneMatch="*",
                )
            except _FAILURES as exc:
                created = self._created_or_raise(exc, key)
                await self._abort(key, upload)
                return created
        except BaseException:
            await self._abort(key, upload)
            raise
        return True

    async def _begin_multipart(self, key: str) -> str:
        try:
            created = await self._client.create_multipart_upload(
                Bucket=self.settings.bucket, Key=key
            )
        except _FAILURES as exc:
            raise self._error(exc, f"start upload {key}") from None
        return str(created["UploadId"])

    async def _upload_parts(
        self, key: str, upload: str, path: Path, offsets: range, part_size: int
    ) -> list[str]:
        """UploadPart for every part, ``part_concurrency`` at a time; their ETags in order."""
        gate = asyncio.Semaphore(self.settings.part_concurrency)

        async def one(number: int, offset: int) -> str:
            async with gate:  # a part is read only once it may be sent: bounded memory
                data = await asyncio.to_thread(_read_part, path, offset, part_size)
                try:
                    sent = await self._client.upload_part(
                        Bucket=self.settings.bucket,
                        Key=key,
                        UploadId=upload,
                        PartNumber=number,
                        Body=data,
                    )
                except _FAILURES as exc:
                    raise self._error(exc, f"upload part {number} of {key}") from None
                return str(sent["ETag"])

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(n, offset)) for n, offset in enumerate(offsets, 1)]
        except BaseExceptionGroup as failed:
            # One part failed and the others were cancelled: report the first cause.
            raise failed.exceptions[0] from None
        return [task.result() for task in tasks]

    async def _abort(self, key: str, upload: str) -> None:
        """Drop an unfinished upload's parts (best effort: a lifecycle rule catches the rest)."""
        with contextlib.suppress(*_FAILURES):
            await self._client.abort_multipart_upload(
                Bucket=self.settings.bucket, Key=key, UploadId=upload
            )

    def _created_or_raise(self, exc: BaseException, key: str) -> bool:
        """A failed create-only write: ``False`` if the key existed (412), else raise."""
        status = _status(exc)
        if status == 412:
            return False
        if status == 409:
            raise _Conflict from None
        raise self._error(exc, f"write {key}") from None

    async def remove(self, sha256: str) -> None:
        """DeleteObject (S3 answers 204 for a missing key too)."""
        key = self._key(sha256)
        try:
            await self._client.delete_object(Bucket=self.settings.bucket, Key=key)
        except _FAILURES as exc:
            if _status(exc) == 404:
                return
            raise self._error(exc, f"remove {sha256}") from None

    # --- errors ----------------------------------------------------------------------------

    def _error(self, exc: BaseException, what: str) -> StorageError:
        """One line for a failed request: status and S3 code, or the transport failure."""
        if isinstance(exc, StorageError):
            return exc
        if isinstance(exc, ClientError):
            status, code = _status(exc), _code(exc)
            detail = f"HTTP {status}" + (f" {code}" if code and code != str(status) else "")
        else:  # the transport: connect, TLS, timeout, a cut body
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return StorageError(self._scrub(f"{self.label}: {what}: {detail}"))

    def _scrub(self, message: str) -> str:
        """One line, at most 300 characters, no credential (whatever a library put in)."""
        s = self.settings
        for secret in (s.secret_key, s.session_token):
            if secret:
                message = message.replace(secret, "***")
        message = " ".join(message.split())
        return message if len(message) <= 300 else message[:297] + "..."


class _Conflict(Exception):
    """409 ConditionalRequestConflict: another create-only write of the key was in flight."""


class _ObjectBody:
    """A GetObject response as a :class:`~pipgate.store.downloads.Body`."""

    def __init__(
        self, size: int, stream: Any, error: Callable[[BaseException], StorageError]
    ) -> None:
        self.size: int | None = size
        self._stream = stream
        self._error = error

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream.iter_chunks(CHUNK):
                yield chunk
        except _FAILURES as exc:  # ReadTimeoutError, ResponseStreamingError, IncompleteRead…
            raise self._error(exc) from None


class _Empty:
    """The body of a read that starts at the blob's end."""

    def __init__(self, size: int) -> None:
        self.size: int | None = size

    async def chunks(self) -> AsyncIterator[bytes]:
        return
        yield b""  # an async generator that yields nothing


def _whole_size(response: Mapping[str, Any]) -> int:
    """The object's size: from ``Content-Range: bytes a-b/total`` on a 206."""
    content_range = response.get("ContentRange")
    if content_range:
        total = str(content_range).rsplit("/", 1)[-1]
        if total.isdigit():
            return int(total)
    return int(response["ContentLength"])


_SESSION: Any = None


async def _session() -> Any:
    """One botocore session per process, its data files (S3's model, endpoints) read in
    a thread once: botocore reads them synchronously, ~0.2 s the event loop would stall."""
    global _SESSION
    if _SESSION is None:
        session = get_session()
        await asyncio.to_thread(session.warm_up_loader_caches, "s3")
        _SESSION = session
    return _SESSION


def _read_part(path: Path, offset: int, size: int) -> bytes:
    """One part of the file (its own descriptor: a cancelled upload may leave this
    thread running after the others are gone)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def _status(exc: BaseException) -> int | None:
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(status) if status is not None else None
    return None


def _code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""
