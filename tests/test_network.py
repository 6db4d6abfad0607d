"""Reaching upstream through corporate networks: a real forward proxy process, a private
CA, a fault-injecting upstream, and `pipgate doctor` naming what is broken."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from pipgate.app import create_app
from pipgate.config import Secrets
from tests.conftest import gate_config
from tests.support.fake_pypi import FakePyPI
from tests.support.forward_proxy import ForwardProxy
from tests.support.links import file_path
from tests.support.metrics import metric_value
from tests.support.packages import build_wheel, sample_tree
from tests.support.server import PipgateProcess
from tests.support.tls import PrivateCA

JSON = "application/vnd.pypi.simple.v1+json"
ALPHA = next(d for d in sample_tree() if d.filename == "alpha-1.0-py3-none-any.whl")


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy() as running:
        yield running


@pytest.fixture
def auth_proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy(auth=("builder", "pr0xy-Secret")) as running:
        yield running


@pytest.fixture
def ca() -> PrivateCA:
    return PrivateCA()


@pytest.fixture
def tls_upstream(ca: PrivateCA) -> Iterator[FakePyPI]:
    fake = FakePyPI.with_sample_tree(page_format="json")
    fake.start(ssl_context=ca.server_context())
    yield fake
    fake.stop()


async def gate_for(
    aiohttp_client: Any, upstream: FakePyPI, tmp_path: Path, **kw: Any
) -> TestClient:
    config = gate_config(tmp_path / "cache", upstream, **kw)
    client: TestClient = await aiohttp_client(create_app(config))
    return client


async def install_alpha(gate: TestClient) -> bytes:
    path = await file_path(gate, "alpha", ALPHA.filename)
    resp = await gate.get(path)
    assert resp.status == 200, await resp.text()
    return await resp.read()


async def metrics(gate: TestClient) -> str:
    return await (await gate.get("/metrics")).text()


# --- proxies ------------------------------------------------------------------------------


async def test_http_upstream_traffic_goes_through_the_configured_proxy(
    aiohttp_client: Any, upstream: FakePyPI, proxy: ForwardProxy, tmp_path: Path
) -> None:
    gate = await gate_for(aiohttp_client, upstream, tmp_path, proxy=(proxy.url,))
    assert await install_alpha(gate) == ALPHA.data
    assert await asyncio.to_thread(proxy.wait_for, f"{upstream.url}/simple/alpha/")
    assert proxy.count(ALPHA.filename) == 1


async def test_https_upstream_is_tunnelled_with_connect_and_trusts_the_ca_bundle(
    aiohttp_client: Any,
    tls_upstream: FakePyPI,
    proxy: ForwardProxy,
    ca: PrivateCA,
    tmp_path: Path,
) -> None:
    bundle = ca.ca_bundle(tmp_path / "corp-ca.pem")
    gate = await gate_for(
        aiohttp_client, tls_upstream, tmp_path, proxy=(proxy.url,), ca_bundle=bundle
    )
    assert await install_alpha(gate) == ALPHA.data
    assert await asyncio.to_thread(proxy.wait_for, f"CONNECT 127.0.0.1:{tls_upstream.port}")


async def test_private_ca_without_ca_bundle_is_a_clear_tls_error(
    aiohttp_client: Any, tls_upstream: FakePyPI, tmp_path: Path
) -> None:
    gate = await gate_for(aiohttp_client, tls_upstream, tmp_path)
    resp = await gate.get("/simple/alpha/")
    assert resp.status == 503
    assert resp.headers["X-Pipgate-Reason"] == "tls"
    assert metric_value(await metrics(gate), "pipgate_download_failures_total", reason="tls") >= 1


async def test_mutual_tls_with_a_client_certificate(
    aiohttp_client: Any, ca: PrivateCA, tmp_path: Path
) -> None:
    fake = FakePyPI.with_sample_tree(page_format="json")
    fake.start(ssl_context=ca.server_context(require_client_cert=True))
    try:
        bundle = ca.ca_bundle(tmp_path / "ca.pem")
        without = await gate_for(aiohttp_client, fake, tmp_path / "a", ca_bundle=bundle)
        assert (await without.get("/simple/alpha/")).status == 503
        cert, key = ca.client_cert(tmp_path / "client")
        with_cert = await gate_for(
            aiohttp_client, fake, tmp_path / "b", ca_bundle=bundle, client_cert=cert, client_key=key
        )
        assert await install_alpha(with_cert) == ALPHA.data
    finally:
        fake.stop()


async def test_wrong_proxy_password_is_reported_as_proxy_auth(
    aiohttp_client: Any,
    tls_upstream: FakePyPI,
    auth_proxy: ForwardProxy,
    ca: PrivateCA,
    tmp_path: Path,
) -> None:
    bundle = ca.ca_bundle(tmp_path / "ca.pem")
    wrong = await gate_for(
        aiohttp_client,
        tls_upstream,
        tmp_path / "w",
        proxy=(auth_proxy.url,),
        ca_bundle=bundle,
        secrets=Secrets(proxy_auth=("builder", "wrong")),
    )
    resp = await wrong.get("/simple/alpha/")
    assert resp.status == 502
    assert resp.headers["X-Pipgate-Reason"] == "proxy_auth"
    assert "proxy authentication required" in await resp.text()
    text = await metrics(wrong)
    assert metric_value(text, "pipgate_download_failures_total", reason="proxy_auth") == 1
    assert "wrong" not in text

    right = await gate_for(
        aiohttp_client,
        tls_upstream,
        tmp_path / "r",
        proxy=(auth_proxy.url,),
        ca_bundle=bundle,
        secrets=Secrets(proxy_auth=("builder", "pr0xy-Secret")),
    )
    assert await install_alpha(right) == ALPHA.data


async def test_http_upstream_through_an_authenticating_proxy(
    aiohttp_client: Any, upstream: FakePyPI, auth_proxy: ForwardProxy, tmp_path: Path
) -> None:
    gate = await gate_for(
        aiohttp_client,
        upstream,
        tmp_path,
        proxy=(auth_proxy.url,),
        secrets=Secrets(proxy_auth=("builder", "pr0xy-Secret")),
    )
    assert await install_alpha(gate) == ALPHA.data
    assert auth_proxy.count(ALPHA.filename) == 1


async def test_failover_to_the_second_proxy_when_the_first_is_down(
    aiohttp_client: Any, upstream: FakePyPI, tmp_path: Path
) -> None:
    with ForwardProxy() as first, ForwardProxy() as second:
        first_url = first.url
        first.stop()  # the first corporate proxy is gone
        gate = await gate_for(aiohttp_client, upstream, tmp_path, proxy=(first_url, second.url))
        assert await install_alpha(gate) == ALPHA.data
        assert second.count(ALPHA.filename) == 1
        text = await metrics(gate)
        label = first_url.split("://", 1)[1]
        assert metric_value(text, "pipgate_proxy_up", proxy=label) == 0
        assert metric_value(text, "pipgate_proxy_up", proxy=second.url.split("://", 1)[1]) == 1


async def test_environment_proxy_is_used_when_none_is_configured(
    aiohttp_client: Any, upstream: FakePyPI, proxy: ForwardProxy, tmp_path: Path
) -> None:
    via_env = await gate_for(
        aiohttp_client,
        upstream,
        tmp_path / "e",
        secrets=Secrets(env_proxies={"http_proxy": proxy.url}),
    )
    assert await install_alpha(via_env) == ALPHA.data
    assert proxy.count(ALPHA.filename) == 1
    bypassed = await gate_for(
        aiohttp_client,
        upstream,
        tmp_path / "b",
        secrets=Secrets(env_proxies={"http_proxy": proxy.url, "no_proxy": "127.0.0.0/8"}),
    )
    proxy.clear()
    await (await bypassed.get("/simple/beta/")).read()
    assert proxy.count("/simple/beta/") == 0


# --- resilience ---------------------------------------------------------------------------


async def test_connection_reset_mid_body_is_resumed_into_one_correct_body(
    aiohttp_client: Any, upstream: FakePyPI, tmp_path: Path
) -> None:
    big = build_wheel("resetpkg", "1.0", pad_to=3 << 20)
    upstream.add(big)
    upstream.reset_after[big.filename] = 1 << 20
    upstream.reset_times[big.filename] = 1
    gate = await gate_for(aiohttp_client, upstream, tmp_path)
    path = await file_path(gate, "resetpkg", big.filename)
    resp = await gate.get(path)
    assert await resp.read() == big.data
    ranged = [h for h in upstream.headers_for(upstream.file_path(big)) if "range" in h]
    assert len(ranged) == 1 and ranged[0]["range"].startswith("bytes=")
    assert metric_value(await metrics(gate), "pipgate_download_resumes_total") == 1


async def test_503_with_retry_after_is_retried(
    aiohttp_client: Any, upstream: FakePyPI, tmp_path: Path
) -> None:
    upstream.page_fail_times["alpha"] = (2, 503, "1")
    gate = await gate_for(aiohttp_client, upstream, tmp_path, retries=3)
    resp = await gate.get("/simple/alpha/")
    assert resp.status == 200
    assert upstream.count("/simple/alpha/") == 3


async def test_404_is_not_retried(aiohttp_client: Any, upstream: FakePyPI, tmp_path: Path) -> None:
    gate = await gate_for(aiohttp_client, upstream, tmp_path, retries=3)
    assert (await gate.get("/simple/absent/")).status == 404
    assert upstream.count("/simple/absent/") == 1


async def test_slow_headers_time_out_with_reason_timeout(
    aiohttp_client: Any, upstream: FakePyPI, tmp_path: Path
) -> None:
    upstream.page_delay = 3.0
    gate = await gate_for(aiohttp_client, upstream, tmp_path, page_timeout=0.5, read_timeout=0.5)
    resp = await gate.get("/simple/alpha/")
    assert resp.status == 503
    assert resp.headers["X-Pipgate-Reason"] == "timeout"


async def test_repeated_failures_mark_the_upstream_down_and_stale_pages_still_serve(
    aiohttp_client: Any, upstream: FakePyPI, tmp_path: Path
) -> None:
    gate = await gate_for(
        aiohttp_client, upstream, tmp_path, index_ttl=0, down_after=2, down_cooldown=60
    )
    assert (await gate.get("/simple/alpha/")).status == 200
    upstream.page_status = 503
    for _ in range(2):
        await gate.get("/simple/beta/")
    ready = await gate.get("/readyz")
    assert ready.status == 503
    body = json.loads(await ready.read())
    assert body["upstreams"][0]["up"] is False
    assert body["upstreams"][0]["last_error"]["reason"] == "http_5xx"
    stale = await gate.get("/simple/alpha/")
    assert stale.status == 200 and stale.headers["X-Pipgate-Cache"] == "stale"
    seen = upstream.count("/simple/alpha/")
    await gate.get("/simple/alpha/")
    assert upstream.count("/simple/alpha/") == seen  # down: not asked again
    assert metric_value(await metrics(gate), "pipgate_upstream_up") == 0


async def test_verify_false_is_loudly_reported(
    aiohttp_client: Any, tls_upstream: FakePyPI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gate = await gate_for(aiohttp_client, tls_upstream, tmp_path, verify=False)
    assert await install_alpha(gate) == ALPHA.data
    body = json.loads(await (await gate.get("/readyz")).read())
    assert any("TLS verification is OFF" in w for w in body["warnings"])
    assert "TLS VERIFICATION IS OFF" in caplog.text


# --- credentials never leak ----------------------------------------------------------------


def test_proxy_password_never_appears_in_logs_or_metrics(
    upstream: FakePyPI, auth_proxy: ForwardProxy, tmp_path: Path
) -> None:
    import urllib.request

    wrong = "Wr0ng-Passw0rd"
    url = auth_proxy.url.replace("http://", f"http://builder:{wrong}@")
    with PipgateProcess(
        upstream=upstream.index_url, cache_dir=tmp_path / "cache", extra_args=("--proxy", url)
    ) as gate:
        for path in ("/simple/alpha/", "/metrics", "/readyz"):
            try:
                urllib.request.urlopen(gate.url + path, timeout=30).read()
            except OSError as exc:
                body = getattr(exc, "read", lambda: b"")()
                assert wrong.encode() not in body
        text = urllib.request.urlopen(gate.url + "/metrics", timeout=10).read().decode()
    assert wrong not in gate.log()
    assert wrong not in text
    assert "proxy_auth" in gate.log()


# --- pipgate doctor -------------------------------------------------------------------------


def doctor(upstream: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pipgate",
            "doctor",
            "--upstream",
            upstream,
            "--cache-dir",
            str(tmp_path / "doctor-cache"),
            "--project",
            "alpha",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_doctor_passes_on_a_working_path(upstream: FakePyPI, tmp_path: Path) -> None:
    result = doctor(upstream.index_url, tmp_path, "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 0, result.stdout
    names = [s["name"] for s in report["steps"]]
    assert names[-2:] == ["index page alpha", "file download"]
    assert all(s["ok"] for s in report["steps"])


def test_doctor_names_the_unknown_issuer_and_points_at_ca_bundle(
    tls_upstream: FakePyPI, ca: PrivateCA, tmp_path: Path
) -> None:
    result = doctor(tls_upstream.index_url, tmp_path)
    assert result.returncode == 1
    assert "FAIL tls" in result.stdout
    assert ca.issuer_name in result.stdout
    assert "upstream.ca_bundle" in result.stdout


def test_doctor_through_a_proxy_with_wrong_credentials_hints_at_them(
    tls_upstream: FakePyPI, auth_proxy: ForwardProxy, ca: PrivateCA, tmp_path: Path
) -> None:
    bundle = ca.ca_bundle(tmp_path / "ca.pem")
    config = tmp_path / "pipgate.toml"
    config.write_text(f'[upstream]\nca_bundle = "{bundle}"\n')
    without = doctor(
        tls_upstream.index_url, tmp_path, "--proxy", auth_proxy.url, "--config", str(config)
    )
    assert without.returncode == 1
    assert "407" in without.stdout and "proxy_auth_env" in without.stdout
    good = auth_proxy.url.replace("http://", "http://builder:pr0xy-Secret@")
    ok = doctor(tls_upstream.index_url, tmp_path, "--proxy", good, "--config", str(config))
    assert ok.returncode == 0, ok.stdout
    assert "pr0xy-Secret" not in ok.stdout + ok.stderr


def test_doctor_reports_a_proxy_that_is_not_listening(upstream: FakePyPI, tmp_path: Path) -> None:
    result = doctor(upstream.index_url, tmp_path, "--proxy", "http://127.0.0.1:9")
    assert result.returncode == 1
    assert "FAIL tcp proxy" in result.stdout
    assert "check upstream.proxy" in result.stdout


@pytest.mark.parametrize(
    ("fault", "failed_step", "hint"),
    [
        ("page_503", "index page alpha", "try again later"),
        ("garbage", "index page alpha", "captive portal"),
        ("slow", "index page alpha", "timeouts"),
        ("corrupt", "file download", "alters files"),
        ("truncated", "file download", "see the detail"),
    ],
)
def test_doctor_names_the_failing_step_for_each_upstream_fault(
    upstream: FakePyPI, tmp_path: Path, fault: str, failed_step: str, hint: str
) -> None:
    smallest = min(
        (d for d in sample_tree() if d.project == "alpha"), key=lambda d: d.size
    ).filename
    if fault == "page_503":
        upstream.page_status = 503
    elif fault == "garbage":
        upstream.garbage_pages.add("alpha")
    elif fault == "slow":
        upstream.page_delay = 3.0
    elif fault == "corrupt":
        upstream.corrupt.add(smallest)
    else:
        upstream.truncate[smallest] = 100
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipgate",
            "doctor",
            "--upstream",
            upstream.index_url,
            "--cache-dir",
            str(tmp_path / "c"),
            "--project",
            "alpha",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={
            **os.environ,
            "PIPGATE_PAGE_TIMEOUT": "1",
            "PIPGATE_READ_TIMEOUT": "1",
            "PIPGATE_RETRIES": "0",
        },
    )
    assert result.returncode == 1, result.stdout
    steps = json.loads(result.stdout)["steps"]
    failed = [s for s in steps if not s["ok"]]
    assert [s["name"] for s in failed] == [failed_step]
    assert hint in failed[0]["hint"]


async def test_private_index_credentials_go_to_its_origin_only(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    index = FakePyPI.with_sample_tree(page_format="json")
    files = FakePyPI.with_sample_tree(page_format="json")  # a separate "CDN" origin
    index.start()
    files.start()
    index.files_url = files.url
    try:
        gate = await gate_for(
            aiohttp_client,
            index,
            tmp_path,
            secrets=Secrets(token="t0ken-Value"),
            file_hosts=(files.url,),
        )
        assert await install_alpha(gate) == ALPHA.data
        page_auth = index.headers_for("/simple/alpha/")[0].get("authorization")
        assert page_auth == "Bearer t0ken-Value"
        assert all("authorization" not in h for _, _, h in files.requests)
        basic = await gate_for(
            aiohttp_client,
            index,
            tmp_path / "basic",
            secrets=Secrets(basic_auth=("ci", "pa55")),
        )
        await (await basic.get("/simple/beta/")).read()
        assert index.headers_for("/simple/beta/")[0]["authorization"].startswith("Basic ")
    finally:
        index.stop()
        files.stop()


async def test_a_down_upstream_is_probed_again_after_its_cool_down(
    aiohttp_client: Any, upstream: FakePyPI, tmp_path: Path
) -> None:
    gate = await gate_for(aiohttp_client, upstream, tmp_path, down_after=1, down_cooldown=0.2)
    upstream.page_status = 503
    assert (await gate.get("/simple/alpha/")).status == 503
    assert (await gate.get("/readyz")).status == 503
    upstream.page_status = None
    await asyncio.sleep(0.3)  # the cool-down itself is what is being tested
    assert (await gate.get("/simple/alpha/")).status == 200
    assert (await gate.get("/readyz")).status == 200


def run_doctor_config(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipgate", "doctor", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("PIPGATE_")},
    )


def test_doctor_checks_each_upstream_in_turn_or_the_one_named(
    upstream: FakePyPI, tmp_path: Path
) -> None:
    config = tmp_path / "pipgate.toml"
    config.write_text(
        f'[cache]\ndir = "{tmp_path / "cache"}"\n'
        f'[[upstream]]\nname = "internal"\nurl = "http://127.0.0.1:9/simple/"\nretries = 0\n'
        f'[[upstream]]\nname = "pypi"\nurl = "{upstream.index_url}"\nretries = 0\n'
    )
    both = run_doctor_config(config, "--project", "alpha", "--json")
    assert both.returncode == 1, both.stdout
    steps = json.loads(both.stdout)["steps"]
    failed = [s["name"] for s in steps if not s["ok"]]
    assert failed == ["internal: tcp upstream"]
    assert [s["name"] for s in steps][-2:] == ["pypi: index page alpha", "pypi: file download"]
    one = run_doctor_config(config, "--project", "alpha", "--upstream-name", "pypi")
    assert one.returncode == 0, one.stdout
    assert "internal" not in one.stdout
    unknown = run_doctor_config(config, "--upstream-name", "nope")
    assert unknown.returncode == 1
    assert "no upstream is called 'nope'" in unknown.stdout and "internal, pypi" in unknown.stdout


def test_doctor_says_which_file_hosts_a_page_links_to_that_are_not_allowed(
    upstream: FakePyPI, tmp_path: Path
) -> None:
    cdn = FakePyPI.with_sample_tree()
    cdn.start()
    upstream.files_url = cdn.url
    try:
        result = doctor(upstream.index_url, tmp_path)
        assert result.returncode == 1
        assert f"point to {cdn.url}, which is not among this upstream's file hosts" in (
            result.stdout
        )
        assert "add it to file_hosts" in result.stdout
        config = tmp_path / "allowed.toml"
        config.write_text(
            f'[cache]\ndir = "{tmp_path / "c2"}"\n'
            f'[upstream]\nurl = "{upstream.index_url}"\nfile_hosts = ["{cdn.url}"]\n'
        )
        allowed = run_doctor_config(config, "--project", "alpha")
        assert allowed.returncode == 0, allowed.stdout
        # The probe download went to the files host, now allowed.
        assert any(path.startswith("/packages/") for _, path, _ in cdn.requests)
    finally:
        cdn.stop()
