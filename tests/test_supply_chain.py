"""Supply-chain defence end to end: release cooldown with real pip and uv, first-seen
times, quarantine from the command line against a running server, OSV imports, SIGHUP
reloads, and the audit trail."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from pipgate.app import create_app
from pipgate.config import Config
from pipgate.store.catalog import Catalog
from pipgate.web.state import SERVICES
from tests.conftest import upstream_config
from tests.support.clients import installed, pip_install, uv_install
from tests.support.fake_pypi import FakePyPI
from tests.support.links import JSON, file_path, file_url
from tests.support.packages import build_wheel, sample_tree
from tests.support.server import PipgateProcess

DAY = 86400
INSTALLERS = {"pip": pip_install, "uv": uv_install}
OLD = build_wheel("cool", "1.0")
NEW = build_wheel("cool", "2.0")
ALPHA = next(d for d in sample_tree() if d.filename == "alpha-1.0-py3-none-any.whl")


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.fixture
def releases() -> Iterator[FakePyPI]:
    """``cool`` 1.0 from last month and 2.0 from yesterday."""
    fake = FakePyPI()
    fake.add(OLD, upload_time=iso(time.time() - 30 * DAY))
    fake.add(NEW, upload_time=iso(time.time() - 1 * DAY))
    fake.start()
    yield fake
    fake.stop()


def serve(tmp_path: Path, name: str, toml: str, *args: str) -> PipgateProcess:
    config = tmp_path / f"{name}.toml"
    config.write_text(toml)
    return PipgateProcess(
        upstream=None, cache_dir=tmp_path / name, extra_args=("--config", str(config), *args)
    )


def upstream_toml(fake: FakePyPI, extra: str = "") -> str:
    return f'[upstream]\nurl = "{fake.index_url}"\nretries = 0\n{extra}'


@pytest.mark.clients
@pytest.mark.parametrize("installer", sorted(INSTALLERS))
def test_real_installers_honour_the_release_cooldown_and_its_exemptions(
    installer: str, releases: FakePyPI, tmp_path: Path
) -> None:
    install = INSTALLERS[installer]
    cut_off = iso(time.time() - 10 * DAY)
    cases = {
        "min-age": ('[policy]\nmin_age = "7d"\n', "1.0"),
        "exempt": ('[policy]\nmin_age = "7d"\ncooldown_exempt = ["Cool"]\n', "2.0"),
        "cut-off": (f'[policy]\nexclude_newer = "{cut_off}"\n', "1.0"),
        "none": ("", "2.0"),
    }
    for name, (policy, expected) in cases.items():
        with serve(tmp_path, name, policy + upstream_toml(releases)) as gate:
            result = install(gate.index_url, tmp_path / f"t-{name}", "cool")
            assert result.returncode == 0, result.stdout + result.stderr
            assert installed(tmp_path / f"t-{name}") == {"cool": expected}, name


@pytest.mark.clients
def test_a_pinned_held_back_version_fails_and_pip_says_why(
    releases: FakePyPI, tmp_path: Path
) -> None:
    with serve(tmp_path, "c", '[policy]\nmin_age = "7d"\n' + upstream_toml(releases)) as gate:
        result = pip_install(gate.index_url, tmp_path / "t", "cool==2.0")
        output = result.stdout + result.stderr
        assert result.returncode != 0, output
        until = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 6 * DAY))
        # The yank reason pip shows, and the 403 reason phrase of the download.
        assert "held back" in output and until in output, output
        assert "403" in output and "Forbidden by pipgate policy (min_age)" in output, output
        assert releases.downloads(NEW.filename) == 0  # never fetched, never cached


async def test_first_seen_times_stand_in_for_a_missing_upload_time(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    fake = FakePyPI([OLD, NEW])
    fake.upload_times = False  # like Nexus, Artifactory and download.pytorch.org
    fake.start()
    try:
        config = Config(
            cache_dir=tmp_path / "c",
            min_age=7 * DAY,
            upstreams=(upstream_config(fake.index_url, name="nexus"),),
        )
        gate: TestClient = await aiohttp_client(create_app(config))
        page = await (await gate.get("/simple/cool/", headers={"Accept": JSON})).json(
            content_type=None
        )
        # Both were first seen just now: both held back (the safe side), as yanked.
        assert all(isinstance(f["yanked"], str) for f in page["files"])
        assert "upload-time" not in page["files"][0]  # not invented unless asked
        catalog = Catalog(tmp_path / "c")
        seen = await catalog.first_seen("nexus", "cool", [], 0)
        assert sorted(seen) == [OLD.filename, NEW.filename]
        # Eight days later (the record rewritten as if): the old file is out of cooldown.
        catalog._cache.set(
            "seen/nexus/cool",
            {OLD.filename: time.time() - 8 * DAY, NEW.filename: seen[NEW.filename]},
        )
        catalog.close()
        later: TestClient = await aiohttp_client(create_app(config))
        files = (
            await (await later.get("/simple/cool/", headers={"Accept": JSON})).json(
                content_type=None
            )
        )["files"]
        yanked = {f["filename"]: f["yanked"] for f in files}
        assert yanked[OLD.filename] is False and isinstance(yanked[NEW.filename], str)
    finally:
        fake.stop()


def test_first_seen_times_are_written_once_and_then_read_without_a_write_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every load of a page without upload times asks for them: a page seen before
    must not queue behind other workers' writes for SQLite's write lock."""
    catalog = Catalog(tmp_path / "c")
    try:
        assert catalog.first_seen_now("nexus", "cool", ["a.whl"], 100.0) == {"a.whl": 100.0}
        with monkeypatch.context() as patched:
            patched.setattr(catalog._cache, "transact", lambda: pytest.fail("write lock"))
            assert catalog.first_seen_now("nexus", "cool", ["a.whl"], 200.0) == {"a.whl": 100.0}
        both = catalog.first_seen_now("nexus", "cool", ["a.whl", "b.whl"], 300.0)
        assert both == {"a.whl": 100.0, "b.whl": 300.0}  # a new file: its time, once
    finally:
        catalog.close()


@pytest.mark.clients
def test_synthesized_upload_times_let_uv_exclude_newer_work_on_such_an_index(
    tmp_path: Path,
) -> None:
    fake = FakePyPI([OLD])
    fake.upload_times = False
    fake.start()
    try:
        toml = upstream_toml(fake, "synthesize_upload_time = true\n")
        with serve(tmp_path, "s", toml) as gate:
            request = urllib.request.Request(gate.index_url + "cool/", headers={"Accept": JSON})
            with urllib.request.urlopen(request, timeout=30) as resp:
                page = json.load(resp)
            stamp = page["files"][0]["upload-time"]
            first_seen = datetime.fromisoformat(stamp).timestamp()
            assert abs(first_seen - time.time()) < 120
            future = iso(time.time() + DAY)
            ok = uv_install(
                gate.index_url, tmp_path / "ok", "cool", extra=("--exclude-newer", future)
            )
            assert ok.returncode == 0, ok.stdout + ok.stderr
            past = iso(time.time() - DAY)
            held = uv_install(
                gate.index_url, tmp_path / "no", "cool", extra=("--exclude-newer", past)
            )
            assert held.returncode != 0  # first seen after the cut-off: uv leaves it out
    finally:
        fake.stop()


# --- quarantine -----------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPGATE_")}
    return subprocess.run(
        [sys.executable, "-m", "pipgate", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


async def acli(*args: str) -> subprocess.CompletedProcess[str]:
    """:func:`cli` from an async test: the in-process server keeps running meanwhile."""
    return await asyncio.to_thread(cli, *args)


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_quarantine_from_the_cli_stops_every_worker_within_a_second(
    upstream: FakePyPI, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    with PipgateProcess(
        upstream=upstream.index_url, cache_dir=cache, extra_args=("--workers", "2")
    ) as gate:
        url = file_url(gate.index_url, "alpha", ALPHA.filename)
        assert status_of(url) == 200  # cached now
        added = cli(
            "quarantine", "add", "alpha==1.0", "--reason", "MAL-2026-1", "--cache-dir", str(cache)
        )
        done = time.monotonic()
        assert added.returncode == 0, added.stderr
        assert "quarantined alpha==1.0" in added.stdout
        time.sleep(max(0.0, 1.0 - (time.monotonic() - done)))  # one second, no more
        statuses = [status_of(url) for _ in range(30)]  # new connections: both workers
        assert statuses == [403] * 30
        refused = [line for line in gate.log().splitlines() if '" 403 ' in line]
        pids = {line.rsplit("pid=", 1)[1].split()[0] for line in refused}
        assert len(pids) == 2, f"both workers refused: {pids}"
        listing = cli("quarantine", "list", "--json", "--cache-dir", str(cache))
        assert json.loads(listing.stdout)[0]["versions"] == "==1.0"
        removed = cli("quarantine", "remove", "alpha", "--cache-dir", str(cache))
        assert removed.returncode == 0 and "removed 1" in removed.stdout
        time.sleep(0.6)
        assert [status_of(url) for _ in range(10)] == [200] * 10


def osv_record(record_id: str, name: str, **affected: Any) -> dict[str, Any]:
    return {
        "id": record_id,
        "summary": f"malicious code in {name}",
        "affected": [{"package": {"ecosystem": "PyPI", "name": name}, **affected}],
    }


async def test_an_osv_import_blocks_exactly_the_listed_versions(
    aiohttp_client: Any, upstream: FakePyPI, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    records = tmp_path / "osv"
    records.mkdir()
    (records / "MAL-1.json").write_text(json.dumps(osv_record("MAL-1", "Beta", versions=["2.0"])))
    (records / "MAL-2.json").write_text(
        json.dumps(
            osv_record(
                "MAL-2",
                "delta",
                ranges=[{"type": "ECOSYSTEM", "events": [{"introduced": "3.5"}, {"fixed": "4.1"}]}],
            )
        )
    )
    npm = {"id": "MAL-3", "affected": [{"package": {"ecosystem": "npm", "name": "alpha"}}]}
    (records / "MAL-3.json").write_text(json.dumps(npm))
    archive = tmp_path / "osv.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in records.iterdir():
            zf.write(path, f"osv/{path.name}")
    first = await acli(
        "quarantine", "import-osv", str(archive), "--json", "--cache-dir", str(cache)
    )
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["added"] == 2
    again = await acli(
        "quarantine", "import-osv", str(records), "--json", "--cache-dir", str(cache)
    )
    assert json.loads(again.stdout)["added"] == 0  # idempotent, from a directory too
    listing = await acli("quarantine", "list", "--json", "--cache-dir", str(cache))
    listed = json.loads(listing.stdout)
    assert sorted((e["project"], e["versions"], e["source"]) for e in listed) == [
        ("beta", "==2.0", "MAL-1"),
        ("delta", ">=3.5,<4.1", "MAL-2"),
    ]
    config = Config(cache_dir=cache, upstreams=(upstream_config(upstream.index_url),))
    gate: TestClient = await aiohttp_client(create_app(config))
    beta = await (await gate.get("/simple/beta/", headers={"Accept": JSON})).json(content_type=None)
    assert sorted(f["filename"] for f in beta["files"]) == ["beta-1.0-py3-none-any.whl"]
    delta = await (await gate.get("/simple/delta/", headers={"Accept": JSON})).json(
        content_type=None
    )
    assert "delta-3.0-py3-none-any.whl" in [f["filename"] for f in delta["files"]]
    assert "delta-4.0-py3-none-any.whl" not in [f["filename"] for f in delta["files"]]
    # A withdrawn record lifts its entries.
    withdrawn = {
        **osv_record("MAL-1", "beta", versions=["2.0"]),
        "withdrawn": "2026-11-30T00:00:00Z",
    }
    (tmp_path / "w.json").write_text(json.dumps(withdrawn))
    lifted = await acli(
        "quarantine", "import-osv", str(tmp_path / "w.json"), "--json", "--cache-dir", str(cache)
    )
    assert json.loads(lifted.stdout)["removed"] == 1


async def test_a_quarantined_projects_cached_file_is_refused_under_any_name_and_purged(
    aiohttp_client: Any, upstream: FakePyPI, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    config = Config(cache_dir=cache, upstreams=(upstream_config(upstream.index_url),))
    gate: TestClient = await aiohttp_client(create_app(config))
    beta = next(d for d in sample_tree() if d.filename == "beta-1.0-py3-none-any.whl")
    path = await file_path(gate, "beta", beta.filename)
    assert (await (await gate.get(path)).read()) == beta.data
    await gate.app[SERVICES].files.idle()  # its METADATA is extracted after the commit
    result = await acli(
        "quarantine", "add", "beta", "--reason", "takeover", "--purge", "--cache-dir", str(cache)
    )
    # The wheel, and the METADATA pipgate extracted from it.
    assert result.returncode == 0 and "purged 2 cached files" in result.stdout, result.stdout
    fresh: TestClient = await aiohttp_client(create_app(config))
    assert (await fresh.get(path)).status == 403
    assert (await fresh.get(path.replace("/files/beta/", "/files/alpha/"))).status == 404
    assert (await fresh.get("/simple/beta/")).status == 403
    assert not any((cache / "blobs").rglob(beta.sha256))


# --- configuration reloads -------------------------------------------------------------


def test_bad_rules_stop_the_server_at_start_and_every_worker_reloads_on_sighup(
    upstream: FakePyPI, tmp_path: Path
) -> None:
    bad = '[[policy.rule]]\naction = "deny"\nprojects = ["alpha"]\nversions = ">2,<1"\n'
    config = tmp_path / "pipgate.toml"
    config.write_text(upstream_toml(upstream) + bad)
    started = cli(
        "serve", "--config", str(config), "--cache-dir", str(tmp_path / "c"), "--port", "0"
    )
    assert started.returncode == 2
    assert started.stderr.strip().count("\n") == 0
    assert "policy.rule[1].versions: no version can satisfy" in started.stderr

    config.write_text(upstream_toml(upstream))
    proc = PipgateProcess(
        upstream=None,
        cache_dir=tmp_path / "c",
        extra_args=("--config", str(config), "--workers", "2"),
    )
    with proc as gate:
        url = file_url(gate.index_url, "alpha", ALPHA.filename)
        assert status_of(url) == 200
        config.write_text(upstream_toml(upstream) + bad)
        assert gate.proc is not None
        gate.proc.send_signal(signal.SIGHUP)  # the supervisor passes it on to each worker
        wait_for(lambda: gate.log().count("configuration not reloaded") == 2)
        assert "no version can satisfy" in gate.log()
        assert [status_of(url) for _ in range(10)] == [200] * 10  # the old policy stays
        deny = '[[policy.rule]]\nname = "no-alpha"\naction = "deny"\nprojects = ["alpha"]\n'
        config.write_text(upstream_toml(upstream) + deny)
        gate.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: gate.log().count("policy reloaded") == 2)
        assert [status_of(url) for _ in range(20)] == [403] * 20
        assert status_of(gate.index_url + "alpha/") == 403
        refused = [line for line in gate.log().splitlines() if '" 403 ' in line]
        assert len({line.rsplit("pid=", 1)[1].split()[0] for line in refused}) == 2


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not met in time")
        time.sleep(0.05)


# --- audit --------------------------------------------------------------------------------


@pytest.mark.clients
def test_the_audit_trail_says_who_downloaded_what_even_after_eviction(
    upstream: FakePyPI, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    with PipgateProcess(
        upstream=upstream.index_url, cache_dir=cache, extra_args=("--log-format", "json")
    ) as gate:
        for name, install in sorted(INSTALLERS.items()):
            result = install(gate.index_url, tmp_path / name, "alpha")
            assert result.returncode == 0, result.stdout + result.stderr
        time.sleep(1.5)  # rows are written once a second
    report = cli("audit", "--project", "alpha", "--json", "--cache-dir", str(cache))
    assert report.returncode == 0, report.stderr
    rows = json.loads(report.stdout)["downloads"]
    wheels = [r for r in rows if r["filename"] == ALPHA.filename and r["kind"] == "file"]
    installers = {r["installer"] for r in wheels}
    assert installers == {"pip", "uv"}, rows
    for row in wheels:
        assert (
            row["python"]
            == f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
        )
        assert row["installer_version"]
        assert row["sha256"] == ALPHA.sha256 and row["version"] == "1.0"
        assert row["client"] == "127.0.0.1" and row["complete"] is True
    assert {r["result"] for r in wheels} <= {"hit", "miss"}
    # The file leaves the cache (removed by hand here); the record stays.
    for blob in (cache / "blobs").rglob(ALPHA.sha256):
        blob.unlink()
    by_hash = json.loads(
        cli("audit", "--sha256", ALPHA.sha256, "--json", "--cache-dir", str(cache)).stdout
    )
    assert len(by_hash["downloads"]) == len(wheels)
    pinned = json.loads(
        cli(
            "audit", "--project", "alpha", "--version", "==1.0", "--json", "--cache-dir", str(cache)
        ).stdout
    )
    assert pinned["downloads"] and all(r["version"] == "1.0" for r in pinned["downloads"])
    text = cli("audit", "--project", "alpha", "--cache-dir", str(cache)).stdout
    assert "pip/" in text and "uv/" in text


def test_audit_retention_prunes_old_rows(tmp_path: Path) -> None:
    from pipgate.audit import AuditLog, AuditRecord, prune, query

    def row(at: float) -> AuditRecord:
        return AuditRecord(
            time=at,
            client="10.0.0.1",
            installer="pip",
            installer_version="26.3",
            python="3.11.7",
            project="x",
            filename="x-1.0.tar.gz",
            kind="file",
            sha256="a" * 64,
            upstream="pypi",
            result="hit",
            status=200,
            bytes=10,
            complete=True,
        )

    log = AuditLog(tmp_path, retention=90 * DAY)
    log.record(row(time.time() - 100 * DAY))
    log.record(row(time.time() - DAY))
    asyncio.run(log.flush())  # the first flush prunes too
    assert [round((time.time() - r["time"]) / DAY) for r in query(tmp_path)] == [1]
    assert prune(tmp_path, 0.0) == 1
    assert query(tmp_path) == []


async def test_hidden_files_leave_html_and_json_pages_and_their_urls_name_the_rule(
    aiohttp_client: Any, upstream: FakePyPI, tmp_path: Path
) -> None:
    from pipgate.config import PolicyRule

    open_gate: TestClient = await aiohttp_client(
        create_app(
            Config(cache_dir=tmp_path / "a", upstreams=(upstream_config(upstream.index_url),))
        )
    )
    old = next(d for d in sample_tree() if d.filename == "delta-3.0-py3-none-any.whl")
    lock_file_url = await file_path(open_gate, "delta", old.filename)  # as a lock file has it
    rule = PolicyRule("no-old-delta", ("delta",), "deny", "<4", reason="CVE-2026-0001")
    config = Config(
        cache_dir=tmp_path / "b",
        upstreams=(upstream_config(upstream.index_url),),
        policy_rules=(rule,),
        admin_token="supply-chain-admin-token",
    )
    admin = {"Authorization": "Bearer supply-chain-admin-token"}
    gate: TestClient = await aiohttp_client(create_app(config))
    page = await (await gate.get("/simple/delta/", headers={"Accept": JSON})).json(
        content_type=None
    )
    assert old.filename not in [f["filename"] for f in page["files"]]
    assert "3.0" not in page["versions"]
    html = await (await gate.get("/simple/delta/", headers={"Accept": "text/html"})).text()
    assert old.filename not in html and "delta-4.0" in html
    refused = await gate.get(lock_file_url)
    assert refused.status == 403
    assert refused.reason == (
        "Forbidden by pipgate policy (rule no-old-delta): delta 3.0 is denied by rule "
        "no-old-delta (CVE-2026-0001)"
    )
    assert "delta 3.0 is denied by rule no-old-delta" in await refused.text()
    listed = await (await gate.get("/-/admin/failures", headers=admin)).json()
    for _ in range(50):
        if listed["failures"]:
            break
        await asyncio.sleep(0.02)
        listed = await (await gate.get("/-/admin/failures", headers=admin)).json()
    assert listed["failures"][0]["reason"] == "policy"
    assert listed["failures"][0]["file"] == old.filename
    allow_list = Config(
        cache_dir=tmp_path / "c",
        upstreams=(upstream_config(upstream.index_url),),
        policy_default="deny",
        policy_rules=(PolicyRule("curated", ("alpha", "beta"), "allow"),),
    )
    curated: TestClient = await aiohttp_client(create_app(allow_list))
    assert (await curated.get("/simple/alpha/")).status == 200
    unlisted = await curated.get("/simple/delta/")
    assert unlisted.status == 403 and "not on this server's allow-list" in await unlisted.text()
