"""The admin API (only behind the admin token), its operations from the shell, and the
open views that must not say what only an administrator may know (finding 10)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from pipgate import admin
from pipgate.store.blobs import BlobStore
from pipgate.store.catalog import Catalog
from pipgate.store.locks import acquire_shared, try_exclusive
from pipgate.web.state import SERVICES
from tests.conftest import GateFactory
from tests.support.fake_pypi import FakePyPI
from tests.support.links import file_path, file_url
from tests.support.metrics import metric_value
from tests.support.packages import sample_tree
from tests.support.server import PipgateProcess, free_port

ALPHA = next(d for d in sample_tree() if d.filename == "alpha-1.0-py3-none-any.whl")
TOKEN = "admin-token-for-the-tests-0123"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
JSON_POST = {**ADMIN, "Content-Type": "application/json"}
#: Every operation, with a method it answers to.
OPERATIONS = [
    ("GET", "/-/admin/status"),
    ("GET", "/-/admin/readyz"),
    ("GET", "/-/admin/failures"),
    ("GET", "/-/admin/audit"),
    ("DELETE", "/-/admin/pages/alpha"),
    ("DELETE", f"/-/admin/files/{ALPHA.sha256}"),
    ("DELETE", f"/-/admin/files/alpha/{ALPHA.filename}"),
    ("GET", "/-/admin/scrub"),
    ("POST", "/-/admin/scrub"),
    ("POST", "/-/admin/reload"),
    ("GET", "/-/admin/quarantine"),
    ("POST", "/-/admin/quarantine"),
    ("DELETE", "/-/admin/quarantine?target=alpha"),
    ("GET", "/-/admin/no-such-operation"),
    ("GET", "/-/admin"),
]


@pytest.fixture
async def gate(make_gate: GateFactory) -> TestClient:
    """pipgate in-process with the admin API."""
    return await make_gate(admin_token=TOKEN)


def basic(user: str, password: str) -> dict[str, str]:
    import base64

    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# --- who may use it --------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
async def test_without_an_admin_token_there_is_no_admin_api(
    make_gate: GateFactory, tmp_path: Path, method: str, path: str
) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("")
    gate = await make_gate(htpasswd=htpasswd)  # reads need credentials; no admin token
    for headers in ({}, ADMIN, basic("admin", TOKEN)):
        resp = await gate.request(method, path, headers=headers)
        assert resp.status == 404, (method, path, headers)
        assert "WWW-Authenticate" not in resp.headers


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
async def test_the_admin_api_needs_the_token_401_without_403_when_wrong(
    gate: TestClient, method: str, path: str
) -> None:
    missing = await gate.request(method, path)
    assert missing.status == 401
    assert missing.headers["WWW-Authenticate"] == 'Basic realm="pipgate admin"'
    for wrong in (
        {"Authorization": f"Bearer {TOKEN}x"},
        basic("admin", TOKEN[:-1]),
        {"Authorization": "Basic !!!"},
    ):
        assert (await gate.request(method, path, headers=wrong)).status == 403
    text = await (await gate.get("/metrics")).text()
    assert metric_value(text, "pipgate_auth_refusals_total", scope="admin", cause="missing") == 1
    assert metric_value(text, "pipgate_auth_refusals_total", scope="admin", cause="invalid") == 3


async def test_the_token_works_as_bearer_and_as_any_users_basic_password(
    gate: TestClient,
) -> None:
    for headers in (ADMIN, basic("admin", TOKEN), basic("", TOKEN), basic("anyone", TOKEN)):
        resp = await gate.get("/-/admin/readyz", headers=headers)
        assert resp.status == 200 and (await resp.json())["ready"] is True


async def test_nothing_of_the_admin_api_is_under_simple_or_files(gate: TestClient) -> None:
    for path in ("/simple/-/admin/failures", "/simple/-/admin/status", "/files/-/admin/failures"):
        resp = await gate.get(path, headers=ADMIN, allow_redirects=False)
        assert resp.status == 404, path
        assert resp.content_type == "text/plain"


async def test_the_admin_token_is_no_read_credential(
    make_gate: GateFactory, tmp_path: Path
) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("")
    gate = await make_gate(htpasswd=htpasswd, admin_token=TOKEN)
    assert (await gate.get("/simple/alpha/", headers=ADMIN)).status == 401
    assert (await gate.get("/-/admin/readyz", headers=ADMIN)).status == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/-/admin/reload"),
        ("GET", "/-/admin/pages/alpha"),
        ("GET", f"/-/admin/files/{ALPHA.sha256}"),
        ("PUT", "/-/admin/quarantine"),
    ],
)
async def test_changes_are_never_a_get(gate: TestClient, method: str, path: str) -> None:
    assert (await gate.request(method, path, headers=ADMIN)).status == 405


@pytest.mark.parametrize("path", ["/-/admin/reload", "/-/admin/scrub", "/-/admin/quarantine"])
async def test_a_post_without_json_is_refused_so_another_sites_form_cannot_post(
    gate: TestClient, path: str
) -> None:
    form = await gate.post(path, data={"target": "alpha", "reason": "x"}, headers=ADMIN)
    assert form.status == 415
    bad = await gate.post(path, data=b"{not json", headers=JSON_POST)
    assert bad.status == 400 and "error" in await bad.json()


# --- the operations --------------------------------------------------------------------


async def test_purging_a_project_makes_the_next_request_ask_upstream(
    gate: TestClient, upstream: FakePyPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("pipgate.pages.cache.RECORD_MEMO_SECONDS", 0.0)
    for _ in range(2):
        assert (await gate.get("/simple/alpha/")).status == 200
    assert upstream.count("/simple/alpha/") == 1  # cached
    purged = await gate.delete("/-/admin/pages/alpha", headers=ADMIN)
    name = gate.app[SERVICES].config.upstreams[0].name
    assert purged.status == 200 and await purged.json() == {"project": "alpha", "purged": [name]}
    again = await gate.get("/simple/alpha/")
    assert again.status == 200 and again.headers["X-Pipgate-Cache"] == "miss"
    assert upstream.count("/simple/alpha/") == 2
    nothing = await gate.delete("/-/admin/pages/Never_Cached", headers=ADMIN)
    assert await nothing.json() == {"project": "never-cached", "purged": []}
    bad = await gate.delete("/-/admin/pages/not%20a%20name", headers=ADMIN)
    assert bad.status == 400


async def cached_alpha(gate: TestClient) -> str:
    path = await file_path(gate, "alpha", ALPHA.filename)
    assert await (await gate.get(path)).read() == ALPHA.data
    await gate.app[SERVICES].files.idle()  # the METADATA extraction after the commit
    return path


async def test_removing_a_file_respects_the_rules_of_eviction(
    gate: TestClient, upstream: FakePyPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = await cached_alpha(gate)
    blobs = BlobStore(tmp_path / "cache")
    url = f"/-/admin/files/{ALPHA.sha256}"
    fresh = await gate.delete(url, headers=ADMIN)
    assert fresh.status == 409
    assert "stored less than a minute ago" in (await fresh.json())["error"]
    monkeypatch.setattr(admin, "MIN_AGE", 0.0)
    reading = await asyncio.to_thread(acquire_shared, blobs.use_lock_path(ALPHA.sha256))
    try:
        busy = await gate.delete(url, headers=ADMIN)
        assert busy.status == 409 and "being sent right now" in (await busy.json())["error"]
    finally:
        os.close(reading)
    assert blobs.exists(ALPHA.sha256)
    removed = await gate.delete(url, headers=ADMIN)
    assert removed.status == 200
    assert [e["sha256"] for e in (await removed.json())["removed"]] == [ALPHA.sha256]
    assert not blobs.exists(ALPHA.sha256)
    assert (await gate.delete(url, headers=ADMIN)).status == 404
    again = await gate.get(path)
    assert again.headers["X-Pipgate-Cache"] == "miss" and await again.read() == ALPHA.data
    assert upstream.downloads(ALPHA.filename) == 2
    for bad in ("/-/admin/files/XYZ", f"/-/admin/files/{'g' * 64}"):
        assert (await gate.delete(bad, headers=ADMIN)).status == 400


async def test_removing_by_name_takes_the_derived_metadata_too(
    gate: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admin, "MIN_AGE", 0.0)
    await cached_alpha(gate)
    resp = await gate.delete(f"/-/admin/files/Alpha/{ALPHA.filename}", headers=ADMIN)
    assert resp.status == 200
    gone = {e["filename"] for e in (await resp.json())["removed"]}
    assert gone == {ALPHA.filename, f"{ALPHA.filename}.metadata"}
    catalog = Catalog(tmp_path / "cache")
    try:
        assert [r.filename for _, r, _ in catalog.blob_entries()] == []
    finally:
        catalog.close()
    missing = await gate.delete("/-/admin/files/alpha/alpha-9.9-py3-none-any.whl", headers=ADMIN)
    assert missing.status == 404


async def wait_for_scrub(gate: TestClient) -> dict[str, Any]:
    for _ in range(500):
        state: dict[str, Any] = await (await gate.get("/-/admin/scrub", headers=ADMIN)).json()
        if state["state"] != "running":
            return state
        await asyncio.sleep(0.02)
    pytest.fail("the scrub did not finish within 10 s")


async def test_a_scrub_removes_a_rotten_file_and_says_so(
    gate: TestClient, upstream: FakePyPI, tmp_path: Path
) -> None:
    assert (await (await gate.get("/-/admin/scrub", headers=ADMIN)).json()) == {"state": "never"}
    path = await cached_alpha(gate)
    blob = BlobStore(tmp_path / "cache").path(ALPHA.sha256)
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF  # bit rot
    blob.write_bytes(bytes(data))
    started = await gate.post("/-/admin/scrub", headers=JSON_POST)
    assert started.status == 202
    state = await wait_for_scrub(gate)
    assert state["state"] == "done" and state["checked"] == 2  # the wheel and its metadata
    assert state["corrupt"] == [
        {"sha256": ALPHA.sha256, "project": "alpha", "filename": ALPHA.filename,
         "removed": True, "error": None},
    ]  # fmt: skip
    assert not blob.exists()
    again = await gate.get(path)
    assert again.headers["X-Pipgate-Cache"] == "miss" and await again.read() == ALPHA.data


async def test_one_scrub_at_a_time_per_cache(gate: TestClient, tmp_path: Path) -> None:
    held = try_exclusive(BlobStore(tmp_path / "cache").locks / admin.SCRUB_LOCK)
    assert held is not None  # as another worker running one holds it
    try:
        busy = await gate.post("/-/admin/scrub", headers=JSON_POST)
        assert busy.status == 409 and "already running" in (await busy.json())["error"]
    finally:
        os.close(held)


async def test_quarantine_through_the_api_is_in_force_within_a_second(
    gate: TestClient,
) -> None:
    path = await cached_alpha(gate)
    add = await gate.post(
        "/-/admin/quarantine",
        json={"target": "alpha==1.0", "reason": "MAL-2026-7: stealer", "purge": False},
        headers=ADMIN,
    )
    assert add.status == 201
    listed = await (await gate.get("/-/admin/quarantine", headers=ADMIN)).json()
    [entry] = listed["entries"]
    assert (entry["project"], entry["versions"], entry["source"]) == (
        "alpha",
        "==1.0",
        "admin-api",
    )
    for _ in range(50):
        refused = await gate.get(path)
        if refused.status == 403:
            break
        await asyncio.sleep(0.05)
    assert refused.status == 403 and "MAL-2026-7" in await refused.text()
    for bad in ({"target": "alpha"}, {"target": "not a name", "reason": "x"}, ["alpha"]):
        assert (await gate.post("/-/admin/quarantine", json=bad, headers=ADMIN)).status == 400
    lifted = await gate.delete("/-/admin/quarantine?target=alpha", headers=ADMIN)
    assert (await lifted.json())["removed"] == 1
    for _ in range(50):
        if (await gate.get(path)).status == 200:
            break
        await asyncio.sleep(0.05)
    assert (await gate.get(path)).status == 200


async def test_the_audit_trail_answers_with_the_filters_of_the_command(
    gate: TestClient,
) -> None:
    await cached_alpha(gate)
    rows: list[dict[str, Any]] = []
    for _ in range(100):
        await gate.app[SERVICES].audit.flush()
        resp = await gate.get("/-/admin/audit?project=Alpha&version===1.0", headers=ADMIN)
        rows = (await resp.json())["downloads"]
        if any(r["kind"] == "file" for r in rows):
            break
        await asyncio.sleep(0.01)
    assert [(r["filename"], r["status"], r["user"]) for r in rows if r["kind"] == "file"] == [
        (ALPHA.filename, 200, None)
    ]
    by_hash = await gate.get(f"/-/admin/audit?sha256={ALPHA.sha256.upper()}", headers=ADMIN)
    assert len((await by_hash.json())["downloads"]) == 1
    for bad in ("since=yesterday", "version=~~1", "sha256=abc", "project=a%20b"):
        resp = await gate.get(f"/-/admin/audit?{bad}", headers=ADMIN)
        assert resp.status == 400 and (await resp.json())["error"]


# --- finding 10: what the open views say, and what only the admin views say ------------


async def test_open_views_name_no_project_path_proxy_cache_or_exception(
    make_gate: GateFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead_proxy = f"127.0.0.1:{free_port()}"
    upstream_path = "/corp-secret-path/pypi-internal/simple/"
    gate = await make_gate(
        admin_token=TOKEN,
        url=f"http://index.corp.example{upstream_path}",
        name="corp",
        proxy=(f"http://{dead_proxy}",),
    )
    project = "secret-project-x"
    assert (await gate.get(f"/simple/{project}/")).status >= 500
    cache = str(tmp_path / "cache")
    real_access = os.access

    def access(path: Any, mode: int) -> bool:  # the cache as a full or read-only disk
        return False if str(path).startswith(cache) else real_access(path, mode)

    monkeypatch.setattr(os, "access", access)
    failures: list[dict[str, Any]] = []
    for _ in range(100):
        listed = await gate.get("/-/admin/failures", headers=ADMIN)
        failures = (await listed.json())["failures"]
        if failures:
            break
        await asyncio.sleep(0.02)
    detail = failures[0]["detail"]
    assert failures[0]["reason"] == "proxy_connect" and failures[0]["project"] == project
    revealing = (project, upstream_path, dead_proxy, cache, detail)

    open_views = {
        path: await (await gate.get(path)).text() for path in ("/", "/readyz", "/-/failures")
    }
    for path, text in open_views.items():
        for secret in revealing:
            assert secret not in text, (path, secret)
    ready = json.loads(open_views["/readyz"])
    assert ready["problems"] == ["cache directory is not writable"]
    assert ready["upstreams"] == [
        {
            "name": "corp",
            "up": True,
            "last_error": {"reason": "proxy_connect"},
            "proxies": [{"up": False}],
        }
    ]
    assert json.loads(open_views["/-/failures"])["by_reason"] == {"proxy_connect": 1}
    assert "proxy_connect" in open_views["/"] and "1 configured, 1 cooling down" in open_views["/"]

    admin_views = {
        path: await (await gate.get(path, headers=ADMIN)).text()
        for path in ("/-/admin/status", "/-/admin/readyz", "/-/admin/failures")
    }
    full_page = admin_views["/-/admin/status"]
    assert all(secret in full_page for secret in (project, upstream_path, dead_proxy))
    full_ready = admin_views["/-/admin/readyz"]
    assert all(secret in full_ready for secret in (upstream_path, dead_proxy, cache))
    assert all(s in admin_views["/-/admin/failures"] for s in (project, dead_proxy))


# --- reload, with several workers ------------------------------------------------------


def upstream_toml(fake: FakePyPI, extra: str = "") -> str:
    return f'[upstream]\nurl = "{fake.index_url}"\nretries = 0\n{extra}'


def call(
    gate: PipgateProcess, method: str, path: str, body: bytes | None = None
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    request = urllib.request.Request(gate.url + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not met in time")
        time.sleep(0.05)


def test_a_reload_through_the_api_reaches_every_worker(
    upstream: FakePyPI, tmp_path: Path
) -> None:
    config = tmp_path / "pipgate.toml"
    config.write_text(upstream_toml(upstream))
    env = {"PIPGATE_ADMIN_TOKEN_ENV": "TEST_ADMIN_TOKEN", "TEST_ADMIN_TOKEN": TOKEN}
    with PipgateProcess(
        upstream=None,
        cache_dir=tmp_path / "cache",
        extra_args=("--config", str(config), "--workers", "2"),
        env=env,
    ) as gate:
        url = file_url(gate.index_url, "alpha", ALPHA.filename)
        assert status_of(url) == 200
        assert status_of(gate.url + "/-/admin/reload") == 401
        bad = '[[policy.rule]]\naction = "deny"\nprojects = ["alpha"]\nversions = ">2,<1"\n'
        config.write_text(upstream_toml(upstream) + bad)
        status, body = call(gate, "POST", "/-/admin/reload", b"{}")
        assert status == 400 and "policy.rule[1].versions: no version can satisfy" in body["error"]
        deny = '[[policy.rule]]\nname = "no-alpha"\naction = "deny"\nprojects = ["alpha"]\n'
        config.write_text(upstream_toml(upstream) + deny)
        status, body = call(gate, "POST", "/-/admin/reload")
        assert status == 202 and body == {"reloading": True, "workers": 2, "rules": 1}
        wait_for(lambda: gate.log().count("policy reloaded: 1 rules") == 2)
        assert [status_of(url) for _ in range(20)] == [403] * 20  # new connections
        refused = [line for line in gate.log().splitlines() if '" 403 ' in line]
        assert len({line.rsplit("pid=", 1)[1].split()[0] for line in refused}) == 2
        assert gate.log().count("policy reloaded") == 2  # the bad file reloaded nothing
        assert "admin: reload" in gate.log() and TOKEN not in gate.log()


async def test_reload_in_an_embedded_server_is_a_409(gate: TestClient) -> None:
    """In-process apps (prefetch, tests) never send themselves a SIGHUP."""
    resp = await gate.post("/-/admin/reload", headers=JSON_POST)
    assert resp.status == 409 and "no configuration to reload" in (await resp.json())["error"]


# --- the same operations from the shell ------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPGATE_")}
    return subprocess.run(
        [sys.executable, "-m", "pipgate", *args],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip


async def acli(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(cli, *args)


async def test_purge_remove_and_failures_from_the_shell(
    gate: TestClient, upstream: FakePyPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("pipgate.pages.cache.RECORD_MEMO_SECONDS", 0.0)
    cache = str(tmp_path / "cache")
    path = await cached_alpha(gate)
    elsewhere = await acli("purge", "alpha", "--cache-dir", cache)  # pypi.org: not ours
    assert "no cached pages of alpha in upstreams pypi.org" in elsewhere.stdout
    purge = await acli("purge", "alpha", "--cache-dir", cache, "--upstream", upstream.index_url)
    assert purge.returncode == 0 and purge.stdout.startswith("purged the cached pages of alpha")
    assert (await gate.get("/simple/alpha/")).headers["X-Pipgate-Cache"] == "miss"

    fresh = await acli("remove", ALPHA.sha256, "--cache-dir", cache)
    assert fresh.returncode == 1 and "stored less than a minute ago" in fresh.stdout
    catalog = Catalog(tmp_path / "cache")
    try:  # as if it had been cached an hour ago
        for sha, record, _ in catalog.blob_entries():
            catalog.put_blob_record(sha, type(record)(**{**record.__dict__, "stored_at": 0.0}))
    finally:
        catalog.close()
    removed = await acli("remove", "alpha", ALPHA.filename, "--cache-dir", cache, "--json")
    assert removed.returncode == 0, removed.stderr
    assert {e["filename"] for e in json.loads(removed.stdout)["removed"]} == {
        ALPHA.filename,
        f"{ALPHA.filename}.metadata",
    }
    assert (await gate.get(path)).headers["X-Pipgate-Cache"] == "miss"
    unknown = ALPHA.sha256.replace("a", "b")
    for args, status in ((("XYZ",), 2), ((unknown,), 1), (("a", "b", "c"), 2)):
        result = await acli("remove", *args, "--cache-dir", cache)
        assert result.returncode == status, (args, result.stderr)
        assert result.stderr.startswith("pipgate: remove: ")

    upstream.page_status = 500
    assert (await gate.get("/simple/beta/")).status >= 500
    listed: list[dict[str, Any]] = []
    for _ in range(100):
        result = await acli("failures", "--json", "--cache-dir", cache)
        listed = json.loads(result.stdout)["failures"]
        if listed:
            break
    assert listed[0]["project"] == "beta" and listed[0]["reason"] == "http_5xx"
    text = await acli("failures", "--limit", "1", "--cache-dir", cache)
    assert text.stdout.count("\n") == 1 and "project=beta" in text.stdout
    empty = await acli("failures", "--cache-dir", str(tmp_path / "elsewhere"))
    assert empty.returncode == 0 and empty.stdout == "no failures recorded\n"
