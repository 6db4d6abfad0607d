"""Metrics, logs and the failure list tell the same story about every failed download
(the list's details behind the admin token, its reasons in the open /-/failures)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import threading
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from pipgate.app import create_app
from pipgate.config import Secrets
from pipgate.errors import Reason
from pipgate.store.blobs import BlobWriter
from tests.conftest import GateFactory, gate_config
from tests.support.fake_pypi import FakePyPI
from tests.support.links import file_path, file_url
from tests.support.metrics import metric_value
from tests.support.packages import BuiltDist, sample_tree
from tests.support.server import PipgateProcess

ALPHA = next(d for d in sample_tree() if d.filename == "alpha-1.0-py3-none-any.whl")


async def scrape(gate: TestClient) -> str:
    return await (await gate.get("/metrics")).text()


ADMIN_TOKEN = "observability-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def failures(gate: TestClient, at_least: int = 1, query: str = "") -> list[dict[str, Any]]:
    """The detailed failure list once it holds ``at_least`` entries (it is written off
    the loop); the gate must have ``admin_token=ADMIN_TOKEN``."""
    body: dict[str, Any] = {"failures": []}
    for _ in range(100):
        resp = await gate.get("/-/admin/failures" + query, headers=ADMIN)
        assert resp.status == 200
        body = json.loads(await resp.read())
        if len(body["failures"]) >= at_least:
            break
        await asyncio.sleep(0.02)
    return list(body["failures"])


async def summary(gate: TestClient) -> dict[str, Any]:
    """The open ``/-/failures``: reasons and upstream names only."""
    body: dict[str, Any] = json.loads(await (await gate.get("/-/failures")).read())
    return body


FAULTS = [
    "http_5xx",
    "http_4xx",
    "timeout",
    "connect",
    "bad_page",
    "hash_mismatch",
    "truncated",
    "too_large",
    "dns",
    "tls",
    "proxy_connect",
    "disk_full",
    "policy",
    "redirect",
]


def test_every_reason_of_the_closed_set_is_exercised() -> None:
    """Every reason is produced above, but proxy_auth (its own test below needs a real
    proxy) and other (the catch-all for what nothing else describes)."""
    assert set(FAULTS) | {"proxy_auth", "other"} == {r.value for r in Reason}


@pytest.mark.parametrize("reason", FAULTS)
async def test_every_failure_reason_shows_in_counter_log_and_failure_list(
    aiohttp_client: Any,
    upstream: FakePyPI,
    tmp_path: Path,
    reason: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO)
    overrides: dict[str, Any] = {}
    target = "/simple/alpha/"
    file_fault = False
    file_target = False
    if reason == "http_5xx":
        upstream.page_status = 502
    elif reason == "http_4xx":
        upstream.page_status = 403
    elif reason == "timeout":
        upstream.page_delay = 2.0
        overrides = {"page_timeout": 0.3, "read_timeout": 0.3}
    elif reason == "connect":
        overrides = {"url": "http://127.0.0.1:9/simple/"}
    elif reason == "bad_page":
        upstream.garbage_pages.add("alpha")
    elif reason == "hash_mismatch":
        upstream.corrupt.add(ALPHA.filename)
        file_fault = True
    elif reason == "truncated":
        upstream.truncate[ALPHA.filename] = 100
        upstream.no_ranges.add(ALPHA.filename)
        monkeypatch.setattr("pipgate.upstream.client.MAX_RESUMES", 0)
        file_fault = True
    elif reason == "too_large":
        overrides = {"max_page_size": 10}
    elif reason == "dns":
        overrides = {"url": "http://pipgate-test.invalid/simple/"}
    elif reason == "tls":
        overrides = {"url": upstream.index_url.replace("http://", "https://")}
    elif reason == "proxy_connect":
        overrides = {"proxy": ("http://127.0.0.1:9",)}
    elif reason == "policy":
        overrides = {"deny": ("alpha",)}
    elif reason == "redirect":
        # The file URL redirects off the upstream's origins.
        upstream.redirects[ALPHA.filename] = "http://files.invalid/alpha.whl"
        file_target = True
    elif reason == "disk_full":

        def no_space(self: BlobWriter, chunk: bytes) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(BlobWriter, "write", no_space)
        file_fault = True
    config = gate_config(tmp_path / "cache", upstream, admin_token=ADMIN_TOKEN, **overrides)
    gate: TestClient = await aiohttp_client(create_app(config))
    if file_fault:
        path = await file_path(gate, "alpha", ALPHA.filename)
        resp = await gate.get(path)
        with contextlib.suppress(aiohttp.ClientPayloadError):  # the body is cut short
            await resp.read()
    else:
        if file_target:
            target = await file_path(gate, "alpha", ALPHA.filename)
        resp = await gate.get(target)
        assert resp.status >= 500 or resp.status == (403 if reason == "policy" else 404)
        assert resp.headers.get("X-Pipgate-Reason") == reason

    text = await scrape(gate)
    assert metric_value(text, "pipgate_download_failures_total", reason=reason) >= 1
    assert any(f"reason={reason}" in r.getMessage() for r in caplog.records), reason
    listed = await failures(gate)
    assert listed and listed[0]["reason"] == reason
    assert listed[0]["project"] == "alpha"
    anyone = await summary(gate)
    assert anyone["by_reason"][reason] >= 1 and anyone["failures"][0]["reason"] == reason
    assert "alpha" not in json.dumps(anyone) and listed[0]["detail"] not in json.dumps(anyone)


async def test_proxy_auth_failures_are_listed_with_their_proxy(
    aiohttp_client: Any, upstream: FakePyPI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """proxy_auth has end-to-end tests elsewhere; here: /-/failures names the proxy."""
    from tests.support.forward_proxy import ForwardProxy

    with ForwardProxy(auth=("u", "right")) as proxy:
        config = gate_config(
            tmp_path / "c",
            upstream,
            proxy=(proxy.url,),
            secrets=Secrets(proxy_auth=("u", "no")),
            admin_token=ADMIN_TOKEN,
        )
        gate: TestClient = await aiohttp_client(create_app(config))
        resp = await gate.get("/simple/alpha/")
        assert resp.headers["X-Pipgate-Reason"] == "proxy_auth"
        listed = await failures(gate)
        assert listed[0]["reason"] == "proxy_auth"
        counted = metric_value(await scrape(gate), "pipgate_download_failures_total")
        assert counted >= 1
        assert metric_value(
            await scrape(gate), "pipgate_download_failures_total", reason="proxy_auth"
        ) == counted
        assert any("reason=proxy_auth" in r.getMessage() for r in caplog.records)
        assert listed[0]["proxy"] == proxy.url.split("://", 1)[1]
        assert "no" not in json.dumps(listed[0]["detail"]).split()
        assert proxy.url.split("://", 1)[1] not in json.dumps(await summary(gate))


async def test_failure_list_is_newest_first_and_bounded(
    make_gate: GateFactory, upstream: FakePyPI
) -> None:
    gate = await make_gate(admin_token=ADMIN_TOKEN)
    upstream.page_status = 500
    for name in ("alpha", "beta", "gamma"):
        await gate.get(f"/simple/{name}/")
    await failures(gate, at_least=3)
    listed = await failures(gate, at_least=2, query="?limit=2")
    assert [f["project"] for f in listed] == ["gamma", "beta"]
    assert (await summary(gate))["by_reason"] == {"http_5xx": 3}


async def test_every_response_carries_a_request_id_that_the_log_lines_share(
    make_gate: GateFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    gate = await make_gate()
    resp = await gate.get("/simple/alpha/", headers={"X-Request-ID": "ci-run-42"})
    assert resp.headers["X-Request-ID"] == "ci-run-42"
    generated = await gate.get("/simple/beta/")
    assert len(generated.headers["X-Request-ID"]) == 16
    hostile = await gate.get("/healthz", headers={"X-Request-ID": "x" * 500})
    assert len(hostile.headers["X-Request-ID"]) == 16
    lines = [r for r in caplog.records if getattr(r, "request_id", None) == "ci-run-42"]
    events = {getattr(r, "event", None) for r in lines}
    assert {"access", "upstream_fetch"} <= events


def test_json_log_lines_in_a_real_process(upstream: FakePyPI, tmp_path: Path) -> None:
    with PipgateProcess(
        upstream=upstream.index_url,
        cache_dir=tmp_path / "cache",
        extra_args=("--log-format", "json"),
    ) as gate, urllib.request.urlopen(gate.index_url + "alpha/", timeout=30) as resp:
        rid = resp.headers["X-Request-ID"]
    entries = [json.loads(line) for line in gate.log().splitlines() if line.startswith("{")]
    access = [e for e in entries if e.get("event") == "access" and e.get("request_id") == rid]
    fetch = [
        e for e in entries if e.get("event") == "upstream_fetch" and e.get("request_id") == rid
    ]
    assert access and access[0]["route"] == "simple_project" and access[0]["status"] == 200
    assert fetch and fetch[0]["kind"] == "page" and fetch[0]["outcome"] == "ok"


def test_one_scrape_sums_all_workers(upstream: FakePyPI, tmp_path: Path) -> None:
    with PipgateProcess(
        upstream=upstream.index_url, cache_dir=tmp_path / "cache", extra_args=("--workers", "2")
    ) as gate:
        for _ in range(40):
            urllib.request.urlopen(gate.url + "/healthz", timeout=10).read()
        log_pids = set()
        text = urllib.request.urlopen(gate.url + "/metrics", timeout=10).read().decode()
        for line in gate.log().splitlines():
            if '"GET /healthz"' in line:
                log_pids.add(line.rsplit("pid=", 1)[-1])
    assert len(log_pids) == 2, "both workers should have answered"
    served = metric_value(text, "pipgate_http_requests_total", route="healthz")
    assert served >= 40  # the start-up probe adds one or more


def test_a_scrape_during_a_herd_is_consistent_with_what_clients_received(
    upstream: FakePyPI, slow_big: BuiltDist, tmp_path: Path
) -> None:
    with PipgateProcess(upstream=upstream.index_url, cache_dir=tmp_path / "cache") as gate:
        url = file_url(gate.index_url, slow_big.project, slow_big.filename)
        received: list[int] = []
        digests: list[str] = []

        def client() -> None:
            digest = hashlib.sha256()
            count = 0
            with urllib.request.urlopen(url, timeout=60) as resp:
                while chunk := resp.read(1 << 16):
                    digest.update(chunk)
                    count += len(chunk)
            received.append(count)
            digests.append(digest.hexdigest())

        threads = [threading.Thread(target=client) for _ in range(32)]
        for thread in threads:
            thread.start()
        during = urllib.request.urlopen(gate.url + "/metrics", timeout=10).read().decode()
        for thread in threads:
            thread.join(timeout=120)
        after = urllib.request.urlopen(gate.url + "/metrics", timeout=10).read().decode()
    assert digests == [slow_big.sha256] * 32
    served_during = metric_value(during, "pipgate_bytes_served_total")
    assert 0 <= served_during <= sum(received)
    assert metric_value(during, "pipgate_inflight_downloads") <= 1
    assert metric_value(after, "pipgate_bytes_served_total") == sum(received)
    assert metric_value(after, "pipgate_bytes_fetched_total") == slow_big.size
    assert metric_value(after, "pipgate_inflight_downloads") == 0
    assert upstream.downloads(slow_big.filename) == 1


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_the_fast_access_line_is_the_line_the_formatter_writes(fmt: str) -> None:
    """``serve`` writes access lines without a LogRecord; they must read exactly as
    the configured formatter would have written them."""
    from pipgate import logs

    fields = {
        "event": "access",
        "remote": "10.0.0.7",
        "method": "GET",
        "path": "/simple/numpy/",
        "route": "simple_project",
        "status": 200,
        "duration": 0.001234,
        "user_agent": "uv/0.9",
        "pid": 4242,
        "request_id": "abc123",
    }
    message = '10.0.0.7 "GET /simple/numpy/" 200 0.001s pid=4242'
    now = 1_800_000_123.456
    writer = logs.AccessLine()
    writer.install(logs.BufferedHandler(), fmt)
    fast = writer.line(now, message, "abc123", lambda: fields)

    record = logging.LogRecord("pipgate.access", logging.INFO, __file__, 1, "%s", (message,), None)
    record.created, record.msecs = now, (now - int(now)) * 1000
    for key, value in fields.items():
        setattr(record, key, value)
    formatter = logs.JsonFormatter() if fmt == "json" else logs.TextFormatter()
    assert fast == formatter.format(record) + "\n"
