"""The contract of :class:`pipgate.store.shared.SharedBlobs`, run against every store.

Each test runs on a shared directory (:class:`SharedDirectory` in a temp dir) and on an
S3 bucket (:class:`S3Blobs` on a real SeaweedFS, each test under its own key prefix).
A new store is correct when it passes these. The S3-only tests after them check what
``start()`` refuses: a store that ignores ``If-None-Match``, a missing bucket, a wrong
secret, an endpoint nobody answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from pipgate.store.s3 import MiB, S3Blobs, S3Settings
from pipgate.store.shared import SharedBlobs, StorageError, Unsafe
from pipgate.store.shared_dir import SharedDirectory
from tests.support.fake_s3 import FakeS3
from tests.support.seaweed import SeaweedFS
from tests.support.server import free_port

pytestmark = pytest.mark.timeout(60)

#: Small multipart settings so a 13 MiB blob goes up in three parts (5 + 5 + 3 MiB).
THRESHOLD = 6 * MiB
PART = 5 * MiB
LARGE = 13 * MiB


def s3_settings(seaweed: SeaweedFS, **overrides: Any) -> S3Settings:
    """Settings for the test server under a fresh prefix, failing fast."""
    base = S3Settings(
        bucket=seaweed.bucket,
        endpoint_url=seaweed.endpoint,
        prefix=f"t-{uuid.uuid4().hex[:12]}/",
        region=seaweed.region,
        access_key=seaweed.access_key,
        secret_key=seaweed.secret_key,
        multipart_threshold=THRESHOLD,
        part_size=PART,
        connect_timeout=2,
        read_timeout=20,
        max_attempts=2,
    )
    return replace(base, **overrides)


@dataclass
class Backend:
    """A started store, and a way to put raw bytes under its root behind its back."""

    store: SharedBlobs
    #: Writes bytes at a path relative to the store's root (``blobs/ab/cd/junk``).
    plant: Callable[[str, bytes], Awaitable[None]]
    #: Strings that must never appear in what the store shows (label, errors).
    secrets: tuple[str, ...] = ()


@pytest.fixture(params=["dir", "s3"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    store: SharedBlobs
    if request.param == "dir":
        root = tmp_path / "shared"
        root.mkdir()
        store = SharedDirectory(root)

        async def plant(relative: str, data: bytes) -> None:
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

        secrets: tuple[str, ...] = ()
    else:
        seaweed: SeaweedFS = request.getfixturevalue("seaweed")
        settings = s3_settings(seaweed)
        store = S3Blobs(settings)
        client = seaweed.client()
        request.addfinalizer(client.close)

        async def plant(relative: str, data: bytes) -> None:
            key = settings.prefix + relative
            await asyncio.to_thread(client.put_object, Bucket=settings.bucket, Key=key, Body=data)

        secrets = (seaweed.secret_key,)
    await store.start()
    try:
        yield Backend(store, plant, secrets)
    finally:
        await store.close()


def blob_file(directory: Path, data: bytes) -> tuple[str, Path]:
    """A verified file as the local tier hands it over: its sha256 and its path."""
    sha256 = hashlib.sha256(data).hexdigest()
    path = directory / f"{sha256}-{uuid.uuid4().hex[:6]}"
    path.write_bytes(data)
    return sha256, path


async def read(store: SharedBlobs, sha256: str, start: int = 0) -> tuple[int | None, bytes]:
    """``(Body.size, bytes from start)`` of a blob."""
    async with store.open(sha256, start) as body:
        return body.size, b"".join([chunk async for chunk in body.chunks()])


# --- the contract -------------------------------------------------------------------------


async def test_stat_of_a_missing_blob_is_none(backend: Backend) -> None:
    assert await backend.store.stat("0" * 64) is None


async def test_a_put_blob_reads_back_whole_and_from_an_offset(
    backend: Backend, tmp_path: Path
) -> None:
    data = os.urandom(300_000)
    sha256, path = blob_file(tmp_path, data)

    assert await backend.store.put(sha256, path) is True

    assert await backend.store.stat(sha256) == len(data)
    assert await read(backend.store, sha256) == (len(data), data)
    assert await read(backend.store, sha256, 123_457) == (len(data), data[123_457:])
    assert await read(backend.store, sha256, len(data) - 1) == (len(data), data[-1:])


async def test_a_read_from_the_end_is_empty(backend: Backend, tmp_path: Path) -> None:
    sha256, path = blob_file(tmp_path, b"twelve bytes")
    await backend.store.put(sha256, path)

    assert await read(backend.store, sha256, 12) == (12, b"")


async def test_a_second_put_is_create_only(backend: Backend, tmp_path: Path) -> None:
    sha256, first = blob_file(tmp_path, b"the committed bytes")
    # Never happens for real (same name, same bytes), but shows nothing was overwritten.
    second = tmp_path / "impostor"
    second.write_bytes(b"other bytes, same name")

    assert await backend.store.put(sha256, first) is True
    assert await backend.store.put(sha256, second) is False

    assert await read(backend.store, sha256) == (19, b"the committed bytes")


async def test_concurrent_puts_of_one_blob_create_it_once(backend: Backend, tmp_path: Path) -> None:
    sha256, path = blob_file(tmp_path, os.urandom(100_000))

    created = await asyncio.gather(*(backend.store.put(sha256, path) for _ in range(8)))

    assert sorted(created) == [False] * 7 + [True]
    assert await backend.store.stat(sha256) == 100_000


async def test_a_multipart_sized_blob_round_trips(backend: Backend, tmp_path: Path) -> None:
    data = os.urandom(LARGE)
    sha256, path = blob_file(tmp_path, data)

    assert await backend.store.put(sha256, path) is True

    size, back = await read(backend.store, sha256)
    assert size == LARGE
    assert hashlib.sha256(back).hexdigest() == sha256
    assert await read(backend.store, sha256, PART + 7) == (LARGE, data[PART + 7 :])


async def test_concurrent_multipart_puts_create_it_once(backend: Backend, tmp_path: Path) -> None:
    sha256, path = blob_file(tmp_path, os.urandom(LARGE))

    created = await asyncio.gather(*(backend.store.put(sha256, path) for _ in range(3)))

    assert sorted(created) == [False, False, True]
    assert await backend.store.stat(sha256) == LARGE


async def test_removed_blob_is_gone_and_removing_twice_is_fine(
    backend: Backend, tmp_path: Path
) -> None:
    sha256, path = blob_file(tmp_path, b"evict me")
    await backend.store.put(sha256, path)

    await backend.store.remove(sha256)
    assert await backend.store.stat(sha256) is None
    await backend.store.remove(sha256)
    assert await backend.store.put(sha256, path) is True  # and it can come back


async def test_opening_a_missing_blob_raises_file_not_found(backend: Backend) -> None:
    with pytest.raises(FileNotFoundError):
        await read(backend.store, "f" * 64)
    with pytest.raises(FileNotFoundError):
        await read(backend.store, "f" * 64, 10)


async def test_iter_lists_exactly_the_committed_blobs(backend: Backend, tmp_path: Path) -> None:
    before = time.time() - 120  # the store's clock may differ a little
    put = {}
    for size in (1, 1000, 70_000):
        sha256, path = blob_file(tmp_path, os.urandom(size))
        await backend.store.put(sha256, path)
        put[sha256] = size
    gone, path = blob_file(tmp_path, b"removed again")
    await backend.store.put(gone, path)
    await backend.store.remove(gone)
    # Names outside the layout are not blobs, whoever wrote them.
    stray = hashlib.sha256(b"stray").hexdigest()
    await backend.plant(f"blobs/{stray[:2]}/{stray[2:4]}/not-a-sha256", b"x")
    await backend.plant(f"blobs/00/00/{stray}", b"misplaced")
    await backend.plant(f"blobs/{stray[:2]}/{stray[2:4]}/{stray}.tmp", b"x")

    listed = [blob async for blob in backend.store.iter()]

    assert {blob.sha256: blob.size for blob in listed} == put
    assert len(listed) == len(put)
    assert all(before < blob.mtime < time.time() + 120 for blob in listed)


async def test_a_fresh_store_lists_nothing(backend: Backend) -> None:
    assert [blob async for blob in backend.store.iter()] == []


async def test_the_label_holds_no_secret(backend: Backend) -> None:
    assert backend.store.label
    for secret in backend.secrets:
        assert secret not in backend.store.label


async def test_a_name_that_is_not_a_sha256_is_refused(backend: Backend, tmp_path: Path) -> None:
    _, path = blob_file(tmp_path, b"x")
    with pytest.raises(ValueError):
        await backend.store.put("../../etc/passwd", path)
    with pytest.raises(ValueError):
        await backend.store.stat("ABC")


# --- what start() refuses -----------------------------------------------------------------


async def test_s3_refuses_a_store_that_ignores_if_none_match() -> None:
    async with FakeS3() as fake:
        fake.buckets["pipgate"] = {}
        store = S3Blobs(
            S3Settings(
                bucket="pipgate",
                endpoint_url=fake.endpoint,
                access_key="ak",
                secret_key="sk-do-not-print",
                max_attempts=1,
            )
        )
        with pytest.raises(Unsafe, match="If-None-Match") as refused:
            await store.start()
        await store.close()
        assert "s3://pipgate" in str(refused.value)
        assert "sk-do-not-print" not in str(refused.value)
        assert fake.buckets["pipgate"] == {}  # the probe was removed


async def test_s3_names_a_missing_bucket(seaweed: SeaweedFS) -> None:
    store = S3Blobs(s3_settings(seaweed, bucket="no-such-bucket-here"))
    with pytest.raises(StorageError, match="'no-such-bucket-here' does not exist") as failed:
        await store.start()
    assert not isinstance(failed.value, Unsafe)
    assert seaweed.endpoint in str(failed.value)


async def test_s3_wrong_secret_is_reported_without_it(seaweed: SeaweedFS) -> None:
    wrong = "wrong-secret-0123456789abcdef"
    settings = s3_settings(seaweed, secret_key=wrong)
    store = S3Blobs(settings)
    with pytest.raises(StorageError, match="403") as failed:
        await store.start()
    assert wrong not in str(failed.value)
    assert failed.value.__cause__ is None
    assert wrong not in repr(settings)
    assert "\n" not in str(failed.value)


async def test_s3_names_an_endpoint_nobody_answers() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    store = S3Blobs(
        S3Settings(
            bucket="pipgate",
            endpoint_url=endpoint,
            access_key="ak",
            secret_key="sk",
            connect_timeout=1,
            max_attempts=1,
        )
    )
    with pytest.raises(StorageError) as failed:
        await store.start()
    assert endpoint in str(failed.value)
    assert "\n" not in str(failed.value)


async def test_s3_leaves_no_unfinished_upload_behind(seaweed: SeaweedFS, tmp_path: Path) -> None:
    settings = s3_settings(seaweed)
    store = S3Blobs(settings)
    await store.start()
    try:
        sha256, path = blob_file(tmp_path, os.urandom(LARGE))
        created = await asyncio.gather(*(store.put(sha256, path) for _ in range(3)))
        assert sorted(created) == [False, False, True]
    finally:
        await store.close()
    client = seaweed.client()
    try:
        pending = client.list_multipart_uploads(Bucket=settings.bucket, Prefix=settings.prefix)
    finally:
        client.close()
    assert pending.get("Uploads", []) == []


async def test_directory_must_exist_already(tmp_path: Path) -> None:
    store = SharedDirectory(tmp_path / "not-mounted")
    with pytest.raises(StorageError, match="mounted"):
        await store.start()
    assert not (tmp_path / "not-mounted").exists()
