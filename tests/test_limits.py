"""The bounds that keep pipgate standing under hostile clients and upstreams (issue 12):
readers always learn of a failed download, capped project lists, file sizes, download
slots, separate connection pools, bounded negative cache and page-fetch rate, send
timeouts, connection cap, every published hash, file modes, no cookies."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import socket
import stat
import time
import tracemalloc
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from pipgate.app import create_app
from pipgate.config import Secrets
from pipgate.pages.project_list import _parse_list
from pipgate.store import downloads
from pipgate.store.catalog import Catalog, PageRecord
from pipgate.web.serving import StalledWrites
from pipgate.web.state import SERVICES
from tests.conftest import GateFactory, gate_config
from tests.support.fake_pypi import FakePyPI
from tests.support.packages import BuiltDist, build_wheel
from tests.support.server import PipgateProcess

JSON = "application/vnd.pypi.simple.v1+json"


async def file_path(gate: TestClient, project: str, filename: str) -> str:
    page = json.loads(
        await (await gate.get(f"/simple/{project}/", headers={"Accept": JSON})).read()
    )
    url = next(f["url"] for f in page["files"] if f["filename"] == filename)
    return "/files/" + url.split("/files/", 1)[1]


def sample(gate: TestClient, name: str) -> float:
    """A metric value of the in-process gate (0 when absent)."""
    metrics = gate.server.app[SERVICES].metrics
    value = metrics.registry.get_sample_value(name.split("{")[0], _labels(name))
    return value or 0.0


def _labels(name: str) -> dict[str, str]:
    if "{" not in name:
        return {}
    inner = name.split("{", 1)[1].rstrip("}")
    return dict(pair.split("=", 1) for pair in inner.replace('"', "").split(","))


# --- finding 1: a reader always learns of a failed download ----------------------------


async def test_every_reader_of_a_failing_download_learns_of_it_within_seconds(
    upstream: FakePyPI, make_gate: GateFactory
) -> None:
    """Many readers join corrupt downloads at random moments (before the first byte,
    mid-body, as verification fails); each one ends with a cut body or an error status
    within seconds, never a complete 200 body and never a hang. Files up to the memory
    tier reach their readers whole or not at all (an error status); larger ones stream
    (a cut body)."""
    rng = random.Random(1234)
    upstream.chunk_size = 16 * 1024
    upstream.file_delay = 0.002
    gate = await make_gate()
    outcomes: dict[str, int] = {}

    async def reader(path: str, delay: float) -> str:
        await asyncio.sleep(delay)
        resp = await gate.get(path)
        if resp.status != 200:
            return f"status {resp.status}"
        try:
            await resp.read()
        except aiohttp.ClientPayloadError:
            return "cut"
        return "complete"

    for number in range(30):
        size = rng.choice([20_000, 90_000, 200_000, 400_000, 600_000])
        dist = build_wheel(f"bad{number}", "1.0", pad_to=size)
        upstream.add(dist)
        upstream.corrupt.add(dist.filename)
        path = await file_path(gate, dist.project, dist.filename)
        readers = [reader(path, rng.uniform(0, 0.05)) for _ in range(4)]
        for outcome in await asyncio.wait_for(asyncio.gather(*readers), timeout=20):
            outcomes[outcome.split()[0]] = outcomes.get(outcome.split()[0], 0) + 1
            assert outcome != "complete", "a reader got a whole file that failed verification"
    assert sum(outcomes.values()) == 120
    assert outcomes.get("cut", 0) > 0, outcomes
    assert outcomes.get("status", 0) > 0, outcomes


# --- finding 2: the project list is capped and streamed --------------------------------


async def test_a_project_list_over_the_size_limit_is_refused(
    upstream: FakePyPI, make_gate: GateFactory
) -> None:
    upstream.root_names = [f"project-{n}" for n in range(5000)]
    gate = await make_gate(max_list_size=20_000)
    resp = await gate.get("/simple/")
    assert resp.status == 502
    assert resp.headers["X-Pipgate-Reason"] == "too_large"


async def test_a_project_list_that_takes_too_long_is_abandoned(
    upstream: FakePyPI, make_gate: GateFactory
) -> None:
    upstream.page_delay = 3.0
    gate = await make_gate(list_timeout=0.5, retries=0)
    started = time.monotonic()
    resp = await gate.get("/simple/")
    assert resp.status == 503
    assert resp.headers["X-Pipgate-Reason"] == "timeout"
    assert time.monotonic() - started < 2.5


def test_a_json_project_list_is_parsed_in_flat_memory(tmp_path: Path) -> None:
    names = [f"project-{n}" for n in range(300_000)]
    body = {"meta": {"api-version": "1.1"}, "projects": [{"name": n} for n in names]}
    path = tmp_path / "list.json"
    path.write_text(json.dumps(body))
    size = path.stat().st_size
    tracemalloc.start()
    try:
        count = sum(1 for _ in _parse_list(path, True))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == len(names)
    # The whole list as Python objects would take ~100 MB; streaming keeps it tiny.
    assert peak < 4 << 20 < size, (peak, size)


def test_a_json_project_list_of_an_unknown_major_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    path.write_text(json.dumps({"meta": {"api-version": "2.0"}, "projects": []}))
    with pytest.raises(Exception, match="api-version"):
        list(_parse_list(path, True))


# --- finding 3: file sizes, download slots, abandoned downloads, free space ------------


async def test_a_file_published_over_max_file_size_is_refused_without_fetching(
    upstream: FakePyPI, make_gate: GateFactory
) -> None:
    dist = build_wheel("hugepkg", "1.0", pad_to=300_000)
    upstream.add(dist)
    gate = await make_gate(max_file_size=100_000)
    resp = await gate.get(await file_path(gate, dist.project, dist.filename))
    assert resp.status == 502
    assert resp.headers["X-Pipgate-Reason"] == "too_large"
    assert "max_file_size" in await resp.text()
    assert upstream.downloads(dist.filename) == 0


def custom_index(page: dict[str, Any], files: dict[str, Any]) -> web.Application:
    """A minimal upstream: one JSON page per project, file handlers given as coroutines."""

    async def project(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in page:
            raise web.HTTPNotFound()
        return web.json_response(page[name], content_type=JSON)

    async def file(request: web.Request) -> web.StreamResponse:
        handler = files[request.match_info["filename"]]
        response: web.StreamResponse = await handler(request)
        return response

    app = web.Application()
    app.router.add_get("/simple/{name}/", project)
    app.router.add_get("/files/{filename}", file)
    return app


def json_page(name: str, filename: str, hashes: dict[str, str], size: int) -> dict[str, Any]:
    return {
        "meta": {"api-version": "1.1"},
        "name": name,
        "files": [
            {"filename": filename, "url": f"/files/{filename}", "hashes": hashes, "size": size}
        ],
        "versions": ["1.0"],
    }


async def gate_on(
    aiohttp_client: Any, app: web.Application, tmp_path: Path, **overrides: object
) -> tuple[TestClient, TestServer]:
    server = TestServer(app)
    await server.start_server()
    config = gate_config(tmp_path / "cache", str(server.make_url("/simple/")), **overrides)
    gate: TestClient = await aiohttp_client(create_app(config))
    return gate, server


async def test_a_body_running_past_its_published_size_is_cut(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    """No Content-Length (chunked), a page that says 1000 bytes, a body that goes on:
    pipgate stops at the published size instead of downloading without end."""
    data = os.urandom(1000)
    sent = 0

    async def endless(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            for _ in range(1000):
                await response.write(data)
                sent += len(data)
                await asyncio.sleep(0.001)
        return response

    name = "endless-1.0-py3-none-any.whl"
    page = {
        "endless": json_page("endless", name, {"sha256": hashlib.sha256(data).hexdigest()}, 1000)
    }
    gate, server = await gate_on(aiohttp_client, custom_index(page, {name: endless}), tmp_path)
    try:
        resp = await gate.get(await file_path(gate, "endless", name))
        with contextlib.suppress(aiohttp.ClientPayloadError):
            await resp.read()
        await asyncio.sleep(0.2)
        assert sent < 200_000, "pipgate kept reading past the published size"
        assert (
            sample(
                gate,
                f'pipgate_download_failures_total{{upstream="127.0.0.1:{server.port}",'
                'reason="too_large"}',
            )
            == 1
        )
        assert [p for p in (tmp_path / "cache" / "blobs").rglob("*") if p.is_file()] == []
    finally:
        await server.close()


@pytest.mark.parametrize(
    ("right", "wrong"),
    [("sha256", "md5"), ("sha256", "sha512"), ("sha512", "sha256")],
)
async def test_every_published_hash_is_verified(
    aiohttp_client: Any, tmp_path: Path, right: str, wrong: str
) -> None:
    data = os.urandom(5000)

    async def serve(request: web.Request) -> web.StreamResponse:
        return web.Response(body=data)

    name = "twohash-1.0-py3-none-any.whl"
    hashes = {
        right: hashlib.new(right, data).hexdigest(),
        wrong: hashlib.new(wrong, b"x").hexdigest(),
    }
    page = {"twohash": json_page("twohash", name, hashes, len(data))}
    gate, server = await gate_on(aiohttp_client, custom_index(page, {name: serve}), tmp_path)
    try:
        resp = await gate.get(await file_path(gate, "twohash", name))
        # A small file reaches its readers whole once verified: a bad one is refused.
        assert resp.status == 503
        assert resp.headers["X-Pipgate-Reason"] == "hash_mismatch"
        blobs = [p for p in (tmp_path / "cache" / "blobs").rglob("*") if p.is_file()]
        assert blobs == [], "a file with one wrong published hash was cached"
    finally:
        await server.close()


async def test_downloads_beyond_the_slots_wait_then_get_503_with_retry_after(
    upstream: FakePyPI, make_gate: GateFactory, slow_big: BuiltDist
) -> None:
    other = build_wheel("otherpkg", "1.0", pad_to=200_000)
    upstream.add(other)
    gate = await make_gate(max_downloads=1, queue_timeout=0.3)
    first = await gate.get(await file_path(gate, slow_big.project, slow_big.filename))
    assert first.status == 200
    second = await gate.get(await file_path(gate, other.project, other.filename))
    assert second.status == 503
    assert second.headers["Retry-After"].isdigit()
    assert second.headers["X-Pipgate-Limit"] == "downloads"
    assert "try again" in second.reason
    # Joining the download already running needs no slot.
    joined = await gate.get(await file_path(gate, slow_big.project, slow_big.filename))
    assert joined.status == 200
    assert hashlib.sha256(await first.read()).hexdigest() == slow_big.sha256
    assert hashlib.sha256(await joined.read()).hexdigest() == slow_big.sha256
    # The slot is free again.
    third = await gate.get(await file_path(gate, other.project, other.filename))
    assert third.status == 200 and hashlib.sha256(await third.read()).hexdigest() == other.sha256
    assert sample(gate, 'pipgate_limited_total{limit="downloads"}') == 1


async def test_one_client_cannot_take_every_download_slot(
    upstream: FakePyPI, make_gate: GateFactory, slow_big: BuiltDist
) -> None:
    other = build_wheel("otherpkg", "1.0", pad_to=200_000)
    upstream.add(other)
    gate = await make_gate(
        max_downloads=10, max_client_downloads=1, queue_timeout=0.3, trust_forwarded=True
    )
    me = {"X-Forwarded-For": "10.0.0.1"}
    first = await gate.get(await file_path(gate, slow_big.project, slow_big.filename), headers=me)
    assert first.status == 200
    path = await file_path(gate, other.project, other.filename)
    mine = await gate.get(path, headers=me)
    assert mine.status == 503 and mine.headers["X-Pipgate-Limit"] == "client_downloads"
    theirs = await gate.get(path, headers={"X-Forwarded-For": "10.0.0.2"})
    assert theirs.status == 200
    assert hashlib.sha256(await theirs.read()).hexdigest() == other.sha256
    await first.read()


async def test_a_download_nobody_reads_stops(
    upstream: FakePyPI, make_gate: GateFactory, slow_big: BuiltDist, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(downloads, "ABANDON_GRACE", 0.3)
    gate = await make_gate()
    resp = await gate.get(await file_path(gate, slow_big.project, slow_big.filename))
    await resp.content.read(1000)
    resp.close()  # the client gives up
    app = gate.server.app

    def stopped() -> bool:
        # The gauge drops first; the temp file goes in the clean-up just after.
        idle = app[SERVICES].metrics.inflight_downloads._value.get() == 0
        return idle and not list((tmp_dir(gate) / "tmp").glob("*.part"))

    for _ in range(100):
        await asyncio.sleep(0.05)
        if stopped():
            break
    assert app[SERVICES].metrics.inflight_downloads._value.get() == 0
    assert not list((tmp_dir(gate) / "tmp").glob("*.part"))
    assert not app[SERVICES].blobs.exists(slow_big.sha256), "the abandoned file was finished"


def tmp_dir(gate: TestClient) -> Path:
    return gate.server.app[SERVICES].config.cache_dir


def test_free_space_counts_what_downloads_in_flight_still_need(tmp_path: Path) -> None:
    from pipgate.store.blobs import BlobStore
    from pipgate.store.locks import DownloadLock

    store = BlobStore(tmp_path)
    store.ensure_dirs()
    for key, size, written in (("a" * 64, 10_000, 4_000), ("b" * 64, 5_000, 5_000)):
        store.part_path(key).write_bytes(b"x" * written)
        lock = DownloadLock(store.download_lock_path(key))
        assert lock.try_acquire()
        lock.write_state({"token": "t", "state": "running", "size": size})
    free, reserved = store.free_and_reserved("c" * 64)
    assert reserved == 6_000
    assert store.free_and_reserved("a" * 64)[1] == 0  # a download does not count itself
    assert free > 0


# --- finding 4: pages have a pool of their own -------------------------------------------


async def test_slow_downloads_do_not_starve_page_fetches(
    upstream: FakePyPI, make_gate: GateFactory, slow_big: BuiltDist
) -> None:
    upstream.file_delay = 0.2  # ~13 s for the whole file: it holds its connection
    gate = await make_gate(file_connections=1, page_timeout=2.0)
    download = await gate.get(await file_path(gate, slow_big.project, slow_big.filename))
    assert download.status == 200
    started = time.monotonic()
    page = await gate.get("/simple/alpha/", headers={"Accept": JSON})
    assert page.status == 200
    assert time.monotonic() - started < 1.5
    download.close()


async def test_waiting_for_a_page_connection_is_not_an_upstream_timeout(
    upstream: FakePyPI, make_gate: GateFactory
) -> None:
    """One page connection, a page timeout of 0.6 s and pages taking 0.25 s each: four at
    once wait for each other (about 1 s in all) and every one succeeds."""
    upstream.page_delay = 0.25
    gate = await make_gate(page_connections=1, page_timeout=0.6, retries=0)
    names = ["alpha", "beta", "gamma", "delta"]
    answers = await asyncio.gather(
        *(gate.get(f"/simple/{n}/", headers={"Accept": JSON}) for n in names)
    )
    assert [a.status for a in answers] == [200, 200, 200, 200]
    client = gate.server.app[SERVICES].upstreams.names[0]
    assert not gate.server.app[SERVICES].upstreams[client].is_down
    assert (
        sample(gate, f'pipgate_download_failures_total{{upstream="{client}",reason="timeout"}}')
        == 0
    )


# --- finding 5: negative cache and page-fetch rate ---------------------------------------


def test_remembered_404s_expire_and_are_bounded(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path, max_negative=5, negative_retention=0.3)
    try:
        for n in range(12):
            catalog.put_page_now(
                "pypi", f"nope-{n}", PageRecord(status=404, fetched_at=time.time()), None
            )
        assert catalog.negative_entries() <= 5
        remembered = [n for n in range(12) if catalog.get_page_now("pypi", f"nope-{n}")]
        assert len(remembered) <= 5
        time.sleep(0.4)
        assert all(catalog.get_page_now("pypi", f"nope-{n}") is None for n in range(12))
        # Pages that exist are untouched by either rule.
        catalog.put_page_now("pypi", "real", PageRecord(status=200, fetched_at=time.time()), b"{}")
        for n in range(20):
            catalog.put_page_now(
                "pypi", f"more-{n}", PageRecord(status=404, fetched_at=time.time()), None
            )
        assert catalog.get_page_now("pypi", "real") is not None
    finally:
        catalog.close()


async def test_uncached_page_fetches_are_rate_limited_and_cached_pages_are_not(
    make_gate: GateFactory,
) -> None:
    gate = await make_gate(page_fetch_rate=0.05, client_page_fetch_rate=0)
    first = await gate.get("/simple/alpha/", headers={"Accept": JSON})
    assert first.status == 200
    refused = await gate.get("/simple/beta/", headers={"Accept": JSON})
    assert refused.status == 503
    assert refused.headers["X-Pipgate-Limit"] == "page_rate"
    assert int(refused.headers["Retry-After"]) >= 1
    again = await gate.get("/simple/alpha/", headers={"Accept": JSON})
    assert again.status == 200
    random_names = await asyncio.gather(*(gate.get(f"/simple/nope-{n}/") for n in range(20)))
    assert {r.status for r in random_names} == {503}


async def test_one_client_address_has_its_own_page_fetch_budget(make_gate: GateFactory) -> None:
    gate = await make_gate(page_fetch_rate=0, client_page_fetch_rate=0.05, trust_forwarded=True)
    a, b = {"X-Forwarded-For": "10.0.0.1"}, {"X-Forwarded-For": "10.0.0.2"}
    assert (await gate.get("/simple/alpha/", headers=a)).status == 200
    limited = await gate.get("/simple/beta/", headers=a)
    assert limited.status == 503 and limited.headers["X-Pipgate-Limit"] == "client_page_rate"
    assert (await gate.get("/simple/beta/", headers=b)).status == 200


# --- finding 9: slow clients ----------------------------------------------------------


async def test_a_client_that_stops_reading_is_cut_off(
    upstream: FakePyPI, make_gate: GateFactory
) -> None:
    big = build_wheel("bigpkg", "1.0", pad_to=32 << 20)
    upstream.add(big)
    gate = await make_gate(send_timeout=0.5)
    path = await file_path(gate, big.project, big.filename)
    warm = await gate.get(path)
    assert hashlib.sha256(await warm.read()).hexdigest() == big.sha256
    reader, writer = await asyncio.open_connection(gate.host, gate.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    await asyncio.sleep(2.0)  # read nothing meanwhile
    assert sample(gate, 'pipgate_limited_total{limit="send_timeout"}') == 1
    received = 0
    with contextlib.suppress(ConnectionError):
        while chunk := await asyncio.wait_for(reader.read(1 << 20), timeout=5):
            received += len(chunk)
    assert received < big.size, "the stalled response was sent whole"
    writer.close()


def test_stalled_buffered_writes_are_cut_and_draining_ones_are_not() -> None:
    class Transport:
        def __init__(self, sizes: list[int]) -> None:
            self.sizes = sizes
            self.aborted = False

        def is_closing(self) -> bool:
            return self.aborted

        def get_write_buffer_size(self) -> int:
            return self.sizes.pop(0) if len(self.sizes) > 1 else self.sizes[0]

        def abort(self) -> None:
            self.aborted = True

    class Handler:
        def __init__(self, transport: Transport) -> None:
            self.transport = transport

    stuck, draining, idle = Transport([500]), Transport([900, 800, 700, 600, 500]), Transport([0])
    server: Any = type("S", (), {"connections": [Handler(stuck), Handler(draining), Handler(idle)]})
    cuts: list[int] = []
    sweeper = StalledWrites(server, 10.0, lambda: cuts.append(1))
    for now in (0.0, 5.0, 11.0, 16.0):
        sweeper.sweep(now)
    assert stuck.aborted and not draining.aborted and not idle.aborted
    assert cuts == [1]


def test_connections_over_the_cap_are_closed_and_slow_headers_time_out(
    upstream: FakePyPI, tmp_path: Path
) -> None:
    env = {"PIPGATE_MAX_CONNECTIONS": "3", "PIPGATE_KEEPALIVE_TIMEOUT": "1.5"}
    with PipgateProcess(upstream=upstream.index_url, cache_dir=tmp_path / "c", env=env) as gate:
        held = [socket.create_connection(("127.0.0.1", gate.port), timeout=5) for _ in range(3)]
        for sock in held:  # a request line, and then nothing (slow headers)
            sock.sendall(b"GET /simple/ HTTP/1.1\r\n")
        time.sleep(0.3)
        extra = socket.create_connection(("127.0.0.1", gate.port), timeout=5)
        extra.settimeout(5)
        with contextlib.suppress(ConnectionResetError):
            assert extra.recv(100) == b"", "a connection over the cap was served"
        started = time.monotonic()
        for sock in held:
            sock.settimeout(10)
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(100) == b""
        assert time.monotonic() - started < 5
        with urllib.request.urlopen(gate.url + "/metrics", timeout=10) as resp:
            text = resp.read().decode()
        assert 'pipgate_limited_total{limit="connections"} 1.0' in text
        for sock in (*held, extra):
            sock.close()


# --- findings 11 and 12: file modes, cookies, credentials in the clear ------------------


def test_the_cache_is_not_readable_by_other_users(upstream: FakePyPI, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o755)
    with PipgateProcess(upstream=upstream.index_url, cache_dir=cache) as gate:
        page = urllib.request.Request(gate.index_url + "alpha/", headers={"Accept": JSON})
        with urllib.request.urlopen(page, timeout=10) as resp:
            url = json.loads(resp.read())["files"][0]["url"]
        with urllib.request.urlopen(
            urllib.request.urljoin(gate.index_url + "alpha/", url), timeout=10
        ) as resp:
            resp.read()
    assert stat.S_IMODE(cache.stat().st_mode) == 0o750
    open_to_others = [str(p) for p in cache.rglob("*") if stat.S_IMODE(p.stat().st_mode) & 0o007]
    assert open_to_others == []
    assert any(p.is_file() for p in (cache / "blobs").rglob("*"))


async def test_upstream_cookies_are_never_sent_back(
    upstream: FakePyPI, make_gate: GateFactory
) -> None:
    upstream.page_headers = {"Set-Cookie": "tracker=abc; Path=/"}
    upstream.file_headers = {"Set-Cookie": "tracker2=def; Path=/"}
    gate = await make_gate()
    for name in ("alpha", "beta"):
        await gate.get(f"/simple/{name}/", headers={"Cache-Control": "no-cache"})
    path = await file_path(gate, "alpha", "alpha-1.0-py3-none-any.whl")
    await (await gate.get(path)).read()
    assert all("cookie" not in headers for _, _, headers in upstream.requests)


async def test_credentials_to_a_plain_http_upstream_are_warned_about(
    upstream: FakePyPI, make_gate: GateFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    upstream.auth = ("builder", "t0ken-Secret")
    gate = await make_gate(secrets=Secrets(basic_auth=("builder", "t0ken-Secret")))
    assert (await gate.get("/simple/alpha/")).status == 200
    assert any("plain http" in r.getMessage() for r in caplog.records)
    assert "t0ken-Secret" not in caplog.text
