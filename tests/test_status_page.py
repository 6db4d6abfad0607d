"""The status page at ``/``: rendering tables, then a real headless Chromium looking at it."""

from __future__ import annotations

import asyncio
import platform
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from pipgate import __version__
from pipgate.app import create_app
from pipgate.config import Config, PolicyRule, RouteConfig
from pipgate.failures import Failure
from pipgate.incompatible import Incompatible
from pipgate.metrics import CACHE_RESULTS, Metrics
from pipgate.policy.rules import QuarantineEntry
from pipgate.web.state import SERVICES
from pipgate.web.status import (
    MAX_FAILURES,
    CacheStatus,
    PolicyStatus,
    ProxyStatus,
    QuarantineStatus,
    RouteStatus,
    RuleStatus,
    StatusSnapshot,
    UpstreamStatus,
    cache_numbers,
    format_ratio,
    hit_ratio,
    policy_status,
    render_status,
)
from tests.conftest import upstream_config
from tests.support.clients import pip_install
from tests.support.fake_pypi import FakePyPI
from tests.support.links import file_path
from tests.support.metrics import metric_value
from tests.support.packages import build_wheel

ALPHA = "alpha-1.0-py3-none-any.whl"
BETA = "beta-1.0-py3-none-any.whl"
GAMMA = "gamma-0.5.tar.gz"
HOSTILE = "<script>alert('pwned')</script>"
NOW = 1_704_164_645.0  # 2024-01-02 03:04:05 UTC
PYPI = UpstreamStatus(name="pypi.org", url="https://pypi.org/simple/", up=True)


def snapshot(
    *,
    upstream: UpstreamStatus | None = None,
    cache: CacheStatus | None = None,
    failures: tuple[Failure, ...] = (),
    index_url: str = "http://127.0.0.1:3141/simple/",
) -> StatusSnapshot:
    return StatusSnapshot(
        version="1.2.3",
        upstreams=(upstream or PYPI,),
        cache=cache or CacheStatus(),
        failures=failures,
        index_url=index_url,
        generated_at=NOW,
    )


def failure(**fields: object) -> Failure:
    values: dict[str, object] = {
        "time": NOW,
        "reason": "hash_mismatch",
        "detail": "sha256 differs",
        "upstream": "pypi.org",
        "project": "alpha",
        "file": ALPHA,
        "proxy": None,
    }
    values.update(fields)
    return Failure(**values)  # type: ignore[arg-type]


class _Balance(HTMLParser):
    """Fails on an end tag that closes something other than the open element."""

    VOID = frozenset({"meta", "br", "hr", "img", "input", "link"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.scripts += tag == "script"
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()


def parsed(page: str) -> _Balance:
    parser = _Balance()
    parser.feed(page)
    parser.close()
    assert parser.stack == [], f"unclosed elements: {parser.stack}"
    return parser


# --- render_status: a table of snapshots -------------------------------------------------

HOSTILE_SNAPSHOTS = {
    "failure detail": snapshot(failures=(failure(detail=HOSTILE),)),
    "project name": snapshot(failures=(failure(project=HOSTILE, file=HOSTILE + ".whl"),)),
    "proxy label": snapshot(
        upstream=UpstreamStatus(
            name="pypi.org",
            url="https://pypi.org/simple/",
            up=True,
            proxies=(ProxyStatus(label=HOSTILE, up=False),),
        )
    ),
    "last error detail": snapshot(
        upstream=UpstreamStatus(
            name=HOSTILE,
            url="https://pypi.org/simple/",
            up=False,
            last_error_reason="http_5xx",
            last_error_detail=HOSTILE,
        )
    ),
    "host header": snapshot(index_url=f"http://{HOSTILE}/simple/"),
    "policy texts": replace(
        snapshot(failures=(failure(reason="policy", detail=HOSTILE),)),
        policy=PolicyStatus(
            rules=(RuleStatus(HOSTILE, "deny", HOSTILE, "<1", HOSTILE, HOSTILE, HOSTILE),),
            quarantine=(QuarantineStatus(HOSTILE, HOSTILE, HOSTILE, NOW),),
        ),
    ),
}


def test_the_policy_section_shows_rules_quarantine_and_recent_blocks() -> None:
    config = Config(
        min_age=7 * 86400,
        cooldown_exempt=("corp-*",),
        deny=("evil-*",),
        policy_rules=(
            PolicyRule(
                "old-requests", ("requests",), "deny", "<2.31", reason="CVE-2023-32681"
            ),
        ),
    )
    quarantined = [QuarantineEntry("litellm", "==1.82.7", "MAL-2026-1: stealer", "MAL-2026-1")]
    block = failure(reason="policy", project="litellm", detail="litellm 1.82.7 is quarantined")
    page = render_status(
        replace(snapshot(failures=(block,)), policy=policy_status(config, quarantined)),
        full=True,
    )
    section = page.split("<h2>Policy</h2>", 1)[1].split("</section>", 1)[0]
    assert "files younger than 7d held back; exempt: corp-*" in section
    assert "<td>old-requests</td><td>deny</td><td>requests</td><td>&lt;2.31</td>" in section
    assert "<td>policy.deny</td><td>deny</td><td>evil-*</td>" in section
    assert "<code>litellm==1.82.7</code>" in section and "MAL-2026-1: stealer" in section
    assert "litellm 1.82.7 is quarantined" in section.split("Recent blocks", 1)[1]


@pytest.mark.parametrize("case", HOSTILE_SNAPSHOTS.values(), ids=HOSTILE_SNAPSHOTS.keys())
def test_hostile_values_are_escaped_everywhere(case: StatusSnapshot) -> None:
    page = render_status(case, full=True)
    assert "<script>" not in page
    assert "&lt;script&gt;" in page
    assert parsed(page).scripts == 0


@pytest.mark.parametrize("case", HOSTILE_SNAPSHOTS.values(), ids=HOSTILE_SNAPSHOTS.keys())
def test_hostile_values_never_become_markup_in_the_summary(case: StatusSnapshot) -> None:
    page = render_status(case, full=False)
    assert "<script>" not in page
    assert parsed(page).scripts == 0


def test_empty_failures_say_so() -> None:
    page = render_status(snapshot(), full=True)
    assert "No failed fetches recorded." in page
    assert 'class="failures"' not in page


def test_failures_are_listed_in_the_given_order_and_capped() -> None:
    many = tuple(failure(project=f"proj{i}", time=NOW - i) for i in range(MAX_FAILURES + 5))
    page = render_status(snapshot(failures=many), full=True)
    assert page.count('<td class="reason">') == MAX_FAILURES
    assert page.index("proj0<") < page.index("proj1<") < page.index("proj19<")
    assert "proj20<" not in page
    assert "2024-01-02 03:04:05 UTC" in page


def test_upstream_down_shows_the_last_error_and_when() -> None:
    down = UpstreamStatus(
        name="pypi.org",
        url="https://pypi.org/simple/",
        up=False,
        last_error_reason="timeout",
        last_error_detail="no response within 30s",
        last_failure_at=NOW,
    )
    page = render_status(snapshot(upstream=down), full=True)
    assert '<span class="badge down">down</span>' in page
    assert "timeout" in page and "no response within 30s" in page
    assert "at 2024-01-02 03:04:05 UTC" in page


def test_verify_off_is_a_loud_warning() -> None:
    insecure = UpstreamStatus(
        name="pypi.org", url="https://pypi.org/simple/", up=True, tls_verification=False
    )
    assert "TLS verification is OFF" in render_status(snapshot(upstream=insecure), full=True)
    assert "TLS verification is OFF" not in render_status(snapshot(), full=True)


def test_no_proxies_and_proxies_with_their_state() -> None:
    assert "No proxy configured" in render_status(snapshot(), full=True)
    with_proxies = UpstreamStatus(
        name="pypi.org",
        url="https://pypi.org/simple/",
        up=True,
        proxies=(ProxyStatus("proxy-a:3128", True), ProxyStatus("proxy-b:3128", False)),
    )
    page = render_status(snapshot(upstream=with_proxies), full=True)
    assert "No proxy configured" not in page
    assert page.index("proxy-a:3128") < page.index(">up<", page.index("proxy-a:3128"))
    assert ">cooling down<" in page.split("proxy-b:3128", 1)[1]


def test_credentials_in_urls_never_reach_the_page() -> None:
    secret = "s3cr3t-Pa55"
    page = render_status(
        snapshot(
            upstream=UpstreamStatus(
                name="index.corp", url=f"https://builder:{secret}@index.corp/simple/", up=True
            ),
            index_url=f"http://user:{secret}@pipgate.corp:3141/simple/",
        ),
        full=True,
    )
    assert secret not in page
    assert "https://***@index.corp/simple/" in page


def test_usage_lines_use_the_servers_own_url() -> None:
    local = render_status(snapshot(index_url="http://127.0.0.1:3141/simple/"), full=True)
    assert "pip install --index-url http://127.0.0.1:3141/simple/ PACKAGE" in local
    remote = render_status(snapshot(index_url="http://pipgate.corp:3141/simple/"), full=True)
    # pip refuses plain http to other hosts unless trusted.
    assert "--trusted-host pipgate.corp" in remote


def test_links_are_relative_so_a_path_prefix_works() -> None:
    page = render_status(replace(snapshot(), admin=True), full=False)
    for href in ("simple/", "metrics", "readyz", "-/failures", "-/admin/status"):
        assert f'href="{href}"' in page
    assert 'href="/' not in page and "src=" not in page  # nothing absolute, nothing loaded
    # The full page lives at /-/admin/status: its links climb back to the root.
    full = render_status(replace(snapshot(), root="../../"), full=True)
    for href in ("simple/", "-/setup", "metrics", "readyz", "-/admin/failures"):
        assert f'href="../../{href}"' in full
    assert 'href="/' not in full and 'href="-/' not in full


def test_the_summary_links_to_the_full_page_only_when_there_is_an_admin_api() -> None:
    assert "-/admin/status" not in render_status(snapshot(), full=False)
    assert "-/admin/status" in render_status(replace(snapshot(), admin=True), full=False)


# --- the summary anyone may see, and the full view -------------------------------------

#: What only the full view may show: a requested project and file, an upstream URL's
#: path, a proxy's host:port, an exception text, a cache path, configured project names.
SECRET_PROJECT = "corp-payroll-secret"
SECRET_FILE = "corp_payroll_secret-9.9-py3-none-any.whl"
UPSTREAM_PATH = "/artifactory/api/pypi/internal-only/simple/"
PROXY = "squid-7.corp.example:3128"
EXCEPTION = "ClientConnectorError: Cannot connect to host idx.corp.example:443 (errno 111)"
CACHE_PATH = "/var/cache/pipgate-tenant-42"
ROUTED = "corp-routed-*"
RULE_PROJECT = "evil-internal-name"


def revealing_snapshot() -> StatusSnapshot:
    blocked = failure(
        reason="policy", project=RULE_PROJECT, file=None, detail=f"{RULE_PROJECT} is denied"
    )
    failed = failure(
        reason="connect", project=SECRET_PROJECT, file=SECRET_FILE, proxy=PROXY, detail=EXCEPTION
    )
    disk = failure(reason="disk_full", project=None, file=None, detail=f"{CACHE_PATH}: ENOSPC")
    config = Config(
        min_age=86400, cooldown_exempt=("corp-exempt-*",), policy_rules=(
            PolicyRule("no-evil", (RULE_PROJECT,), "deny", reason="typosquat"),
        ),
    )  # fmt: skip
    return replace(
        snapshot(
            upstream=UpstreamStatus(
                name="internal",
                url=f"https://idx.corp.example{UPSTREAM_PATH}",
                up=False,
                last_error_reason="connect",
                last_error_detail=EXCEPTION,
                last_failure_at=NOW,
                proxies=(ProxyStatus(PROXY, False),),
            ),
            failures=(failed, blocked, disk),
        ),
        routes=(RouteStatus((ROUTED,), ("internal",)),),
        policy=policy_status(
            config, [QuarantineEntry("corp-quarantined", "==1.0", "MAL-1", "cli")]
        ),
        incompatible=(
            Incompatible(
                project=SECRET_PROJECT,
                environment="CPython 3.13 on linux",
                installer="pip",
                python="3.13",
                newest="9.9",
                newest_installable=None,
                reason="no wheel",
                count=3,
                last_seen=NOW,
            ),
        ),
    )


REVEALING = (
    SECRET_PROJECT, SECRET_FILE, UPSTREAM_PATH, PROXY, EXCEPTION, CACHE_PATH, ROUTED,
    RULE_PROJECT, "corp-quarantined", "corp-exempt-", "idx.corp.example",
)  # fmt: skip


def test_the_summary_names_no_project_host_path_or_exception() -> None:
    page = render_status(revealing_snapshot(), full=False)
    for text in REVEALING:
        assert text not in page, text
    # What it does say: health, reasons with their counts, upstream names, the cooldown.
    assert '<span class="badge down">down</span>' in page and 'id="upstream-internal"' in page
    for reason in ("connect", "policy", "disk_full"):
        assert f'<td class="reason">{reason}</td><td class="host">pypi.org</td>' in page
    assert "1 configured, 1 cooling down" in page
    assert "files younger than 1d held back" in page
    assert "<dt>rules</dt><dd>1</dd>" in page and "1 entries" in page


def test_the_full_view_shows_what_the_summary_leaves_out() -> None:
    page = render_status(revealing_snapshot(), full=True)
    for text in REVEALING:
        if text != CACHE_PATH:  # only in a failure detail, shown escaped as it is
            assert text in page, text
    assert f"{CACHE_PATH}: ENOSPC" in page


@pytest.mark.parametrize(
    ("counts", "text"),
    [
        ({}, "—"),
        ({"hit": 0, "miss": 0}, "—"),
        ({"hit": 2, "miss": 1}, "66.7%"),
        ({"hit": 1, "miss": 1, "stale": 1, "revalidated": 1, "bypass": 0}, "25.0%"),
        ({"hit": 5}, "100.0%"),
    ],
)
def test_hit_ratio_counts_every_other_result_as_a_miss(counts: dict[str, int], text: str) -> None:
    assert format_ratio(hit_ratio(counts)) == text


def test_cache_numbers_come_from_the_exposition() -> None:
    metrics = Metrics()
    metrics.initialise("pypi.org")
    for result in ("hit", "hit", "hit", "miss"):
        metrics.cache("file", result)
    metrics.cache("page", "stale")
    metrics.cache_size.set(3 << 20)
    metrics.cache_files.set(7)
    cache = cache_numbers(metrics.render().decode(), max_size=1 << 30)
    assert cache.requests["file"] == {**dict.fromkeys(CACHE_RESULTS, 0), "hit": 3, "miss": 1}
    assert cache.requests["page"]["stale"] == 1
    assert (cache.size, cache.files, cache.max_size) == (3 << 20, 7, 1 << 30)
    page = render_status(snapshot(cache=cache), full=True)
    assert "3.0 MB" in page and "1.0 GB" in page and "75.0%" in page


def test_cache_numbers_of_several_workers_are_summed() -> None:
    # What a multiprocess scrape looks like: counters already summed, gauges one series.
    text = (
        "# TYPE pipgate_cache_requests counter\n"
        'pipgate_cache_requests_total{kind="file",result="hit"} 4.0\n'
        'pipgate_cache_requests_total{kind="file",result="miss"} 4.0\n'
        "# TYPE pipgate_cache_files gauge\n"
        "pipgate_cache_files 12.0\n"
    )
    cache = cache_numbers(text)
    assert hit_ratio(cache.requests["file"]) == 0.5
    assert cache.files == 12


# --- the page served by pipgate ------------------------------------------------------------


async def test_status_page_is_live_html_never_cached(gate: TestClient) -> None:
    resp = await gate.get("/")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
    assert resp.headers["Cache-Control"] == "no-store"
    page = await resp.text()
    parsed(page)
    assert f"version {__version__}" in page
    assert f"pip install --index-url {gate.make_url('/simple/')} PACKAGE" in page


@pytest.mark.parametrize("host", ["<script>x</script>", "[::1", "a\"b'c:1"])
async def test_hostile_host_header_cannot_break_the_page(gate: TestClient, host: str) -> None:
    resp = await gate.get("/", headers={"Host": host})
    assert resp.status == 200
    assert parsed(await resp.text()).scripts == 0


# --- a real browser ----------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
ADMIN_TOKEN = "status-page-admin-token-0123"
WIDTH, HEIGHT = 1280, 1600


def chromium() -> Path:
    """Debian's chromium; missing is a failure (scripts/test.sh installs it), not a skip."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: run `bash scripts/test.sh`, which installs Debian's "
            "chromium package for the status-page browser test"
        )
    return CHROMIUM


async def run_chromium(url: str, profile: Path, *args: str) -> bytes:
    """Run headless Chromium on ``url`` (bounded) and return its stdout."""
    proc = await asyncio.create_subprocess_exec(
        str(chromium()),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        # Without these Chromium contacts Google's hosts (absent in air-gapped CI).
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--window-size={WIDTH},{HEIGHT}",
        *args,
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"chromium {' '.join(args)} did not finish within 60 s")
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {err.decode()[-2000:]}"
    return out


def png_rows(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and the (filtered) scanlines of a non-interlaced 8-bit PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, header, idat = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, payload = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = payload
        elif kind == b"IDAT":
            idat += payload
        pos += 12 + length
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert (depth, interlace) == (8, 0), "expected an 8-bit non-interlaced PNG"
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color]
    stride = 1 + width * channels
    raw = zlib.decompress(idat)
    assert len(raw) == height * stride, "pixel data does not match the IHDR size"
    return width, height, [raw[i : i + stride] for i in range(0, len(raw), stride)]


async def wait_for_failure(gate: TestClient, reason: str) -> None:
    """The failure log is written by a background task: wait (bounded) until it lands."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        listed = await (await gate.get("/-/failures")).json()
        if any(f["reason"] == reason for f in listed["failures"]):
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"no {reason} failure was logged")


@pytest.fixture
def internal() -> Iterator[FakePyPI]:
    fake = FakePyPI([build_wheel("corp-tool", "1.0")])
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def pytorch() -> Iterator[FakePyPI]:
    fake = FakePyPI([build_wheel("torch", "2.0")])
    fake.start()
    yield fake
    fake.stop()


async def test_headless_chromium_renders_the_status_page_with_its_data(
    aiohttp_client: Any,
    internal: FakePyPI,
    upstream: FakePyPI,
    pytorch: FakePyPI,
    tmp_path: Path,
) -> None:
    """Three upstreams (one of them down), routes, traffic and failures, as a browser
    shows them on the full page (logged in with the admin token) and on the summary at
    ``/``; /readyz and /metrics say the same."""
    chromium()
    config = Config(
        cache_dir=tmp_path / "cache",
        admin_token=ADMIN_TOKEN,
        upstreams=(
            upstream_config(internal.index_url, name="internal"),
            upstream_config(upstream.index_url, name="pypi"),
            upstream_config(pytorch.index_url, name="pytorch", down_after=1),
        ),
        routes=(RouteConfig(("torch",), ("pytorch",)),),
    )
    gate: TestClient = await aiohttp_client(create_app(config))
    pytorch.stop()
    assert (await gate.get("/simple/torch/")).status == 503  # now marked down
    # A real pip whose Python no wheel of the newest release fits: an install that
    # cannot work here, for the ops view.
    upstream.add(build_wheel("future-only", "1.0", tag="cp399-cp399-manylinux_2_17_x86_64"))
    refused = await asyncio.to_thread(
        pip_install, str(gate.make_url("/simple/")), tmp_path / "target", "future-only"
    )
    assert refused.returncode != 0 and "No matching distribution" in refused.stderr
    # Traffic: two files downloaded twice each (miss, then hit), one corrupt file.
    for project, filename in (("alpha", ALPHA), ("beta", BETA)):
        path = await file_path(gate, project, filename)
        for _ in range(2):
            assert (await (await gate.get(path)).read())[:2] == b"PK"
    upstream.corrupt.add(GAMMA)
    corrupt = await gate.get(await file_path(gate, "gamma", GAMMA))
    assert corrupt.status == 503  # a small file is refused whole when it fails
    await wait_for_failure(gate, "hash_mismatch")
    # A hostile value in the log must reach the browser as text, not as markup.
    svc = gate.app[SERVICES]
    await svc.files.idle()  # the METADATA extractions after each commit
    await svc.failures.record(
        Failure(time=time.time(), reason="http_5xx", detail=HOSTILE, upstream="internal")
    )
    exposition = await (await gate.get("/metrics")).text()
    hits = metric_value(exposition, "pipgate_cache_requests_total", kind="file", result="hit")
    lookups = metric_value(exposition, "pipgate_cache_requests_total", kind="file")
    assert (hits, lookups) == (2, 5)  # alpha, beta: miss + hit; gamma: miss

    # The browser logs in as any user with the admin token as the password.
    url = str(gate.make_url("/-/admin/status")).replace("://", f"://admin:{ADMIN_TOKEN}@", 1)
    png = tmp_path / "status.png"
    dom_bytes, _, summary_bytes = await asyncio.gather(
        run_chromium(url, tmp_path / "profile-dom", "--dump-dom"),
        run_chromium(url, tmp_path / "profile-shot", f"--screenshot={png}"),
        run_chromium(str(gate.make_url("/")), tmp_path / "profile-summary", "--dump-dom"),
    )

    dom = dom_bytes.decode()
    assert f"version {__version__}" in dom
    blocks = {
        name: dom.split(f'id="upstream-{name}"', 1)[1].split('class="upstream"', 1)[0]
        for name in ("internal", "pypi", "pytorch")
    }
    for name, fake in (("internal", internal), ("pypi", upstream), ("pytorch", pytorch)):
        assert f"127.0.0.1:{fake.port}/simple/" in blocks[name]
    assert '<span class="badge up">up</span>' in blocks["internal"]
    assert '<span class="badge up">up</span>' in blocks["pypi"]
    assert '<span class="badge down">down</span>' in blocks["pytorch"]
    assert "connect" in blocks["pytorch"]  # its last error
    routes = dom.split("<h2>Routes", 1)[1].split("</section>", 1)[0]
    assert "<td>torch</td><td>pytorch</td>" in routes
    assert "hash_mismatch" in dom and ">gamma<" in dom and GAMMA in dom
    # Files cached: alpha and beta and the METADATA extracted from each, never gamma.
    assert '<b class="big">4</b>' in dom
    file_row = dom.split("<td>file</td>", 1)[1].split("</tr>", 1)[0]
    assert f'<td class="num">{hits / lookups * 100:.1f}%</td>' in file_row  # 40.0%
    assert "<script>" not in dom and "&lt;script&gt;alert" in dom
    cannot = dom.split("Installs that cannot work here", 1)[1].split("</section>", 1)[0]
    major, minor, _ = platform.python_version_tuple()
    assert "<td>future-only</td>" in cannot and f"CPython {major}.{minor} on manylinux_" in cannot
    assert "<td>pip</td><td>1.0</td>" in cannot and "cp399" in cannot

    # The summary anyone sees: health and reasons, nothing that names a file or a host.
    summary = summary_bytes.decode()
    assert '<span class="badge down">down</span>' in summary and "hash_mismatch" in summary
    for hidden in (GAMMA, ">gamma<", "future-only", f"127.0.0.1:{upstream.port}", HOSTILE[1:]):
        assert hidden not in summary, hidden
    assert "&lt;script&gt;" not in summary  # the hostile detail is not shown at all

    width, height, rows = png_rows(png.read_bytes())
    assert (width, height) == (WIDTH, HEIGHT)
    # A blank page is a handful of identical scanlines; text and tables make hundreds.
    assert len(set(rows)) > 200, f"the screenshot looks blank ({len(set(rows))} distinct rows)"

    ready = await gate.get("/readyz")
    body = await ready.json()
    assert ready.status == 200  # two of three upstreams are usable
    assert [u["name"] for u in body["upstreams"]] == ["internal", "pypi", "pytorch"]
    assert [u["up"] for u in body["upstreams"]] == [True, True, False]
    assert body["unavailable"] == ["pytorch"]
    assert body["upstreams"][2]["last_error"]["reason"] == "connect"
    exposition = await (await gate.get("/metrics")).text()
    assert metric_value(exposition, "pipgate_incompatible_pages_total", installer="pip") >= 1
    for name, up in (("internal", 1), ("pypi", 1), ("pytorch", 0)):
        assert f'pipgate_upstream_up{{upstream="{name}"}} {up}.0' in exposition
        assert f'pipgate_download_failures_total{{reason="connect",upstream="{name}"}}' in (
            exposition
        )
