"""The status page: what an operator wants to see at a glance, as plain HTML.

The handler gathers a :class:`StatusSnapshot` (upstream and proxy health from the client,
cache numbers from the metrics exposition so they cover every worker, recent failures
from the shared log); :func:`render_status` turns it into one self-contained page. The
page needs no JavaScript and loads nothing else (pipgate runs in air-gapped networks),
escapes every value and shows URLs only through :func:`redact_url`.

It comes in two views. ``/`` is for anyone who can connect: health, reasons, counts and
upstream names, nothing that names a project, a host, a path or an exception. The
full view (``full=True``, at ``/-/admin/status`` behind the admin token) adds upstream
URLs, proxies, error details, routes, rules, the quarantine list and the failures.
"""

from __future__ import annotations

import asyncio
import html
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from pipgate import __version__
from pipgate.config import Config
from pipgate.failures import Failure
from pipgate.incompatible import Incompatible
from pipgate.metrics import CACHE_KINDS, CACHE_RESULTS
from pipgate.policy.rules import QuarantineEntry
from pipgate.redact import redact_url
from pipgate.store.integrity import human_size
from pipgate.web.pages import link_base
from pipgate.web.state import services

#: Failures listed on the page (``/-/failures`` has more).
MAX_FAILURES = 20
#: Policy refusals listed on the page.
MAX_BLOCKS = 10
#: Incompatible installs listed on the page.
MAX_INCOMPATIBLE = 20


@dataclass(frozen=True)
class ProxyStatus:
    """One configured proxy: ``host:port`` and whether it is out of its cool-down."""

    label: str
    up: bool


@dataclass(frozen=True)
class UpstreamStatus:
    """The upstream index as this worker sees it."""

    name: str
    url: str
    up: bool
    tls_verification: bool = True
    last_error_reason: str | None = None
    last_error_detail: str | None = None
    #: Time of the newest failure logged for this upstream (the log has times; the
    #: client's ``last_error`` has none).
    last_failure_at: float | None = None
    proxies: tuple[ProxyStatus, ...] = ()


@dataclass(frozen=True)
class CacheStatus:
    """Cache size and look-up counts (``requests[kind][result]``)."""

    size: int = 0
    files: int = 0
    max_size: int = 0
    requests: Mapping[str, Mapping[str, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class RouteStatus:
    """One ``[[route]]`` rule as configured."""

    projects: tuple[str, ...]
    upstreams: tuple[str, ...]
    merge: bool = False


@dataclass(frozen=True)
class RuleStatus:
    """One policy rule as configured (texts for the page)."""

    name: str
    action: str
    projects: str
    versions: str = ""
    upstreams: str = ""
    cooldown: str = ""
    reason: str = ""


@dataclass(frozen=True)
class QuarantineStatus:
    """One quarantine entry."""

    label: str
    source: str
    reason: str
    added_at: float = 0.0


@dataclass(frozen=True)
class PolicyStatus:
    """The policy in force: mode, cooldown, rules, quarantine list."""

    default: str = "allow"
    cooldown: str = ""
    #: The cooldown without the exempt project names (for the summary view).
    hold_back: str = ""
    rules: tuple[RuleStatus, ...] = ()
    quarantine: tuple[QuarantineStatus, ...] = ()


@dataclass(frozen=True)
class StatusSnapshot:
    """Everything the page shows, gathered once so rendering is a pure function."""

    version: str
    #: Every upstream, in the default route order.
    upstreams: tuple[UpstreamStatus, ...]
    cache: CacheStatus
    failures: Sequence[Failure]
    #: This server's ``simple/`` URL as the client reached it (for the pip/uv lines).
    index_url: str
    generated_at: float
    routes: tuple[RouteStatus, ...] = ()
    policy: PolicyStatus = field(default_factory=PolicyStatus)
    offline: bool = False
    #: Installs that cannot work here, most recently seen first.
    incompatible: tuple[Incompatible, ...] = ()
    #: The way from the page to the server's root, for relative links ("" at ``/``).
    root: str = ""
    #: Whether the admin API (and so the full view) exists.
    admin: bool = False


# --- reading the metrics exposition --------------------------------------------------


def cache_numbers(exposition: str, max_size: int = 0) -> CacheStatus:
    """The cache figures from Prometheus text (the sum over workers in multiprocess mode)."""
    requests: dict[str, dict[str, int]] = {
        kind: dict.fromkeys(CACHE_RESULTS, 0) for kind in CACHE_KINDS
    }
    size = files = 0.0
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == "pipgate_cache_requests_total":
                kind, result = sample.labels.get("kind", ""), sample.labels.get("result", "")
                by_result = requests.setdefault(kind, dict.fromkeys(CACHE_RESULTS, 0))
                by_result[result] = by_result.get(result, 0) + int(sample.value)
            elif sample.name == "pipgate_cache_size_bytes":
                size = max(size, sample.value)
            elif sample.name == "pipgate_cache_files":
                files = max(files, sample.value)
    return CacheStatus(size=int(size), files=int(files), max_size=max_size, requests=requests)


def hit_ratio(counts: Mapping[str, int]) -> float | None:
    """Hits over all look-ups (None before the first look-up)."""
    total = sum(counts.values())
    return counts.get("hit", 0) / total if total else None


def format_ratio(ratio: float | None) -> str:
    """``66.7%``, or an em dash when nothing was looked up yet."""
    return "—" if ratio is None else f"{ratio * 100:.1f}%"


# --- rendering -----------------------------------------------------------------------

_CSS = """
:root{--fg:#1d2330;--muted:#5c6678;--line:#dfe3ea;--bg:#f5f7fa;--card:#fff;
--ok:#12784a;--okbg:#e3f5ec;--bad:#b42318;--badbg:#fde8e6;--warn:#8a5300;--warnbg:#fff3d6}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
header{background:#1d2330;color:#fff;padding:18px 32px;display:flex;align-items:baseline;
gap:16px;flex-wrap:wrap}
header h1{margin:0;font-size:24px}
header .version{color:#aeb8cc;font-size:15px}
header nav{margin-left:auto;display:flex;gap:18px}
header nav a{color:#cfe0ff;text-decoration:none}
header nav a:hover{text-decoration:underline}
main{max-width:1180px;margin:0 auto;padding:24px 32px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(380px,1fr));gap:20px}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;
padding:16px 20px;margin-bottom:20px}
h2{font-size:17px;margin:0 0 12px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid var(--line);vertical-align:top}
th{font-weight:600;color:var(--muted);font-size:13px}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tr:last-child td{border-bottom:0}
dl{display:grid;grid-template-columns:max-content 1fr;gap:6px 16px;margin:0}
dt{color:var(--muted)}
dd{margin:0;overflow-wrap:anywhere}
code,pre{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:13px}
pre{background:#f0f2f6;border:1px solid var(--line);border-radius:6px;padding:10px 12px;
margin:6px 0 12px;white-space:pre-wrap;overflow-wrap:anywhere}
.badge{display:inline-block;padding:1px 9px;border-radius:10px;font-size:13px;
font-weight:600}
.up{background:var(--okbg);color:var(--ok)}
.down{background:var(--badbg);color:var(--bad)}
.cooling{background:var(--warnbg);color:var(--warn)}
.alert{background:var(--badbg);color:var(--bad);border:1px solid #f4b8b1;
border-radius:6px;padding:8px 12px;margin:10px 0 0;font-weight:600}
.muted{color:var(--muted)}
.failures td{font-size:13px}
.failures td.time,.failures td.host{white-space:nowrap;font-variant-numeric:tabular-nums}
.failures td.detail{overflow-wrap:anywhere;max-width:420px}
.failures td.file{overflow-wrap:anywhere;min-width:180px;max-width:300px}
a{color:#2457c5}
h2 small{font-weight:400;font-size:14px;color:var(--muted)}
.reason{font-family:ui-monospace,"DejaVu Sans Mono",monospace;color:var(--bad)}
.big{font-size:26px;font-weight:600}
.figures{display:flex;gap:36px;margin-bottom:14px;flex-wrap:wrap}
.figures div span{display:block;color:var(--muted);font-size:13px}
.upstream+.upstream{border-top:1px solid var(--line);margin-top:14px;padding-top:12px}
h3{font-size:16px;margin:0 0 8px}
h4{font-size:14px;margin:14px 0 6px;color:var(--muted)}
.offline{background:var(--warnbg);color:var(--warn);border:1px solid #f0d48a;
border-radius:6px;padding:8px 12px;margin:0 0 16px;font-weight:600}
"""


def _e(value: object) -> str:
    """Escape any value for HTML text or a quoted attribute."""
    return html.escape(str(value), quote=True)


def _utc(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


def _or_dash(value: str | None) -> str:
    return _e(value) if value else '<span class="muted">—</span>'


def _badge(text: str, css: str) -> str:
    return f'<span class="badge {css}">{_e(text)}</span>'


def _upstreams_section(upstreams: Sequence[UpstreamStatus], full: bool) -> str:
    title = (
        "Upstream"
        if len(upstreams) == 1
        else f"Upstreams <small>{len(upstreams)}, in the default order</small>"
    )
    blocks = "".join(_upstream_block(up, full) for up in upstreams)
    return f'<section class="upstreams"><h2>{title}</h2>{blocks}</section>'


def _upstream_block(up: UpstreamStatus, full: bool) -> str:
    if up.up:
        state = _badge("up", "up")
    else:
        state = _badge("down", "down") + (
            ' <span class="muted">marked down after repeated failures; cached pages and '
            "files are still served</span>"
        )
    rows = [("name", _e(up.name))]
    if full:
        rows.append(("index", f"<code>{_e(redact_url(up.url))}</code>"))
    rows.append(("state", state))
    if up.last_error_reason:
        when = f" at {_e(_utc(up.last_failure_at))}" if up.last_failure_at else ""
        detail = f"<br>{_e(up.last_error_detail or '')}" if full else ""
        rows.append(
            ("last error", f'<span class="reason">{_e(up.last_error_reason)}</span>{when}{detail}')
        )
    rows.append(("TLS verification", "on" if up.tls_verification else "<strong>OFF</strong>"))
    body = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in rows)
    alert = (
        ""
        if up.tls_verification
        else '<p class="alert">TLS verification is OFF for this upstream '
        "(upstream.verify = false): anyone on the path can serve forged packages.</p>"
    )
    return (
        f'<div class="upstream" id="upstream-{_e(up.name)}"><h3>{_e(up.name)}</h3>'
        f"<dl>{body}</dl>{alert}{_proxies(up.proxies) if full else _proxy_count(up.proxies)}"
        "</div>"
    )


def _proxy_count(proxies: Sequence[ProxyStatus]) -> str:
    if not proxies:
        return '<h4>Proxies</h4><p class="muted">No proxy configured.</p>'
    cooling = sum(not p.up for p in proxies)
    state = f", {cooling} cooling down after a failure" if cooling else ", all up"
    return f"<h4>Proxies</h4><p>{len(proxies)} configured{state}.</p>"


def _routes_section(routes: Sequence[RouteStatus], full: bool) -> str:
    if not routes:
        return ""
    if not full:
        return (
            f"<section><h2>Routes</h2><p>{len(routes)} routing rules send projects to "
            "chosen upstreams.</p></section>"
        )
    rows = "".join(
        f"<tr><td>{_e(', '.join(r.projects))}</td><td>{_e(' → '.join(r.upstreams))}</td>"
        f"<td>{'merged' if r.merge else 'first that has it'}</td></tr>"
        for r in routes
    )
    return (
        "<section><h2>Routes <small>first matching rule wins; other projects come from the "
        "first upstream that has them, never past one that fails</small></h2>"
        f"<table><tr><th>projects</th><th>upstreams</th><th>pages</th></tr>{rows}</table>"
        "</section>"
    )


def _proxies(proxies: Sequence[ProxyStatus]) -> str:
    if not proxies:
        return (
            "<h4>Proxies</h4>"
            '<p class="muted">No proxy configured: pipgate connects directly '
            "(or through HTTP(S)_PROXY from its environment).</p>"
        )
    rows = "".join(
        f"<tr><td><code>{_e(p.label)}</code></td><td>"
        + (_badge("up", "up") if p.up else _badge("cooling down", "cooling"))
        + "</td></tr>"
        for p in proxies
    )
    return f"<h4>Proxies</h4><table><tr><th>proxy</th><th>state</th></tr>{rows}</table>"


def _cache_section(cache: CacheStatus) -> str:
    limit = human_size(cache.max_size) if cache.max_size else "unlimited"
    figures = (
        '<div class="figures">'
        f'<div><span>size</span><b class="big">{_e(human_size(cache.size))}</b></div>'
        f'<div><span>files</span><b class="big">{cache.files:,}</b></div>'
        f'<div><span>max size</span><b class="big">{_e(limit)}</b></div>'
        "</div>"
    )
    head = "".join(f'<th class="num">{_e(r)}</th>' for r in CACHE_RESULTS)
    rows = []
    totals = dict.fromkeys(CACHE_RESULTS, 0)
    for kind in CACHE_KINDS:
        counts = cache.requests.get(kind, {})
        for result in CACHE_RESULTS:
            totals[result] += counts.get(result, 0)
        rows.append(_ratio_row(kind, counts))
    rows.append(_ratio_row("all", totals, strong=True))
    table = (
        f'<table class="ratios"><tr><th>kind</th><th class="num">hit ratio</th>{head}</tr>'
        + "".join(rows)
        + "</table>"
    )
    return f"<section><h2>Cache</h2>{figures}{table}</section>"


def _ratio_row(kind: str, counts: Mapping[str, int], *, strong: bool = False) -> str:
    cells = "".join(f'<td class="num">{counts.get(r, 0):,}</td>' for r in CACHE_RESULTS)
    ratio = _e(format_ratio(hit_ratio({r: counts.get(r, 0) for r in CACHE_RESULTS})))
    if strong:
        return f'<tr><td><b>{_e(kind)}</b></td><td class="num"><b>{ratio}</b></td>{cells}</tr>'
    return f'<tr><td>{_e(kind)}</td><td class="num">{ratio}</td>{cells}</tr>'


def _policy_section(policy: PolicyStatus, failures: Sequence[Failure], full: bool) -> str:
    mode = (
        "allow-list: only what a rule allows is served"
        if policy.default == "deny"
        else "everything not denied is served"
    )
    cooldown = policy.cooldown if full else policy.hold_back
    facts = (
        f"<dt>mode</dt><dd>{_e(mode)}</dd>"
        f"<dt>release cooldown</dt><dd>{_or_dash(cooldown)}</dd>"
    )
    if not full:
        blocked = sum(f.reason == "policy" for f in failures)
        facts += (
            f"<dt>rules</dt><dd>{len(policy.rules)}</dd>"
            f"<dt>quarantine</dt><dd>{len(policy.quarantine)} entries</dd>"
            f"<dt>recent blocks</dt><dd>{blocked}</dd>"
        )
        return f'<section class="policy"><h2>Policy</h2><dl>{facts}</dl></section>'
    if policy.rules:
        rows = "".join(
            f"<tr><td>{_e(r.name)}</td><td>{_e(r.action)}</td><td>{_e(r.projects)}</td>"
            f"<td>{_or_dash(r.versions)}</td><td>{_or_dash(r.upstreams)}</td>"
            f"<td>{_or_dash(r.cooldown)}</td><td>{_or_dash(r.reason)}</td></tr>"
            for r in policy.rules
        )
        rules = (
            '<h4>Rules</h4><table class="rules"><tr><th>rule</th><th>action</th><th>projects</th>'
            f"<th>versions</th><th>upstreams</th><th>cooldown</th><th>reason</th></tr>{rows}</table>"
        )
    else:
        rules = '<h4>Rules</h4><p class="muted">No rules.</p>'
    if policy.quarantine:
        rows = "".join(
            f"<tr><td><code>{_e(q.label)}</code></td><td>{_e(q.source)}</td>"
            f'<td class="time">{_e(_utc(q.added_at)) if q.added_at else "—"}</td>'
            f"<td>{_or_dash(q.reason)}</td></tr>"
            for q in policy.quarantine
        )
        quarantine = (
            f"<h4>Quarantine <small>{len(policy.quarantine)} entries</small></h4>"
            '<table class="quarantine"><tr><th>project</th><th>source</th><th>added</th>'
            f"<th>reason</th></tr>{rows}</table>"
        )
    else:
        quarantine = '<h4>Quarantine</h4><p class="muted">Nothing is quarantined.</p>'
    blocks = [f for f in failures if f.reason == "policy"][:MAX_BLOCKS]
    if blocks:
        rows = "".join(
            f'<tr><td class="time">{_e(_utc(f.time))}</td><td>{_or_dash(f.project)}</td>'
            f'<td class="file">{_or_dash(f.file)}</td><td class="detail">{_e(f.detail)}</td></tr>'
            for f in blocks
        )
        recent = (
            '<h4>Recent blocks</h4><table class="blocks"><tr><th>time</th><th>project</th>'
            f"<th>file</th><th>why</th></tr>{rows}</table>"
        )
    else:
        recent = '<h4>Recent blocks</h4><p class="muted">Nothing was refused recently.</p>'
    return (
        f'<section class="policy"><h2>Policy</h2><dl>{facts}</dl>'
        f"{rules}{quarantine}{recent}</section>"
    )


def _failures_section(failures: Sequence[Failure], full: bool, root: str) -> str:
    shown = list(failures)[:MAX_FAILURES]
    if not shown:
        body = '<p class="muted">No failed fetches recorded.</p>'
    elif not full:
        counts = Counter((f.reason, f.upstream) for f in shown)
        rows = "".join(
            f'<tr><td class="reason">{_e(reason)}</td><td class="host">{_e(upstream)}</td>'
            f'<td class="num">{count}</td></tr>'
            for (reason, upstream), count in counts.most_common()
        )
        body = (
            '<table class="failures"><tr><th>reason</th><th>upstream</th>'
            f'<th class="num">count</th></tr>{rows}</table>'
        )
    else:
        head = "".join(
            f"<th>{h}</th>"
            for h in ("time", "reason", "project", "file", "upstream", "proxy", "detail")
        )
        rows = "".join(
            "<tr>"
            f'<td class="time">{_e(_utc(f.time))}</td>'
            f'<td class="reason">{_e(f.reason)}</td>'
            f"<td>{_or_dash(f.project)}</td>"
            f'<td class="file">{_or_dash(f.file)}</td>'
            f'<td class="host">{_e(f.upstream)}</td>'
            f'<td class="host">{_or_dash(f.proxy)}</td>'
            f'<td class="detail">{_e(f.detail)}</td>'
            "</tr>"
            for f in shown
        )
        body = f'<table class="failures"><tr>{head}</tr>{rows}</table>'
    listing = "-/admin/failures" if full else "-/failures"
    note = "newest first" if full else f"the last {len(shown)}, by reason"
    return (
        f"<section><h2>Recent failures <small>{note}; the list is at "
        f'<a href="{root}{listing}">{listing}</a></small></h2>{body}</section>'
    )


def _incompatible_section(entries: Sequence[Incompatible], full: bool) -> str:
    if entries and not full:
        body = (
            f"<p>{len(entries)} combinations of project, environment and installer seen "
            "recently (the list is on the full status page).</p>"
        )
    elif not entries:
        body = (
            '<p class="muted">None seen: every installer that said what it runs on found '
            "something to install in the newest release it asked about.</p>"
        )
    else:
        rows = "".join(
            f"<tr><td>{_e(i.project)}</td><td>{_e(i.environment)}</td>"
            f"<td>{_e(i.installer)}</td><td>{_e(i.newest)}</td>"
            f"<td>{_or_dash(i.newest_installable)}</td>"
            f'<td class="num">{i.count:,}</td><td class="time">{_e(_utc(i.last_seen))}</td>'
            f'<td class="detail">{_e(i.reason)}</td></tr>'
            for i in entries
        )
        body = (
            '<table class="incompatible"><tr><th>project</th><th>environment</th>'
            "<th>installer</th><th>newest</th><th>newest that installs there</th>"
            f'<th class="num">seen</th><th>last seen</th><th>why</th></tr>{rows}</table>'
        )
    return (
        "<section><h2>Installs that cannot work here <small>the newest release has no "
        "file for the installer's environment; newest first</small></h2>"
        f"{body}</section>"
    )


def _usage_section(index_url: str, root: str) -> str:
    url = redact_url(index_url)
    parts = urlsplit(url)
    host = parts.hostname or ""
    trusted = ""
    if parts.scheme == "http" and host not in ("localhost", "127.0.0.1", "::1"):
        # pip refuses plain-http indexes on other hosts unless they are trusted.
        trusted = f" --trusted-host {host}"
    return (
        f'<section><h2>Use it <small>all clients: <a href="{root}-/setup">-/setup</a></small></h2>'
        f"<pre>pip install --index-url {_e(url)}{_e(trusted)} PACKAGE</pre>"
        f"<pre>uv pip install --index-url {_e(url)} PACKAGE</pre>"
        f"<pre>export PIP_INDEX_URL={_e(url)}\nexport UV_DEFAULT_INDEX={_e(url)}</pre>"
        "</section>"
    )


def render_status(snapshot: StatusSnapshot, *, full: bool) -> str:
    """The status page for ``snapshot``, the full view or the summary anyone may see
    (pure; every value escaped, URLs redacted)."""
    # Relative links keep working behind a reverse proxy with a path prefix.
    links = ["simple/", "-/setup", "metrics", "readyz"]
    links.append("-/admin/failures" if full else "-/failures")
    if snapshot.admin and not full:
        links.append("-/admin/status")
    nav = "".join(f'<a href="{snapshot.root}{href}">{href}</a>' for href in links)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>pipgate {_e(snapshot.version)}</title><style>{_CSS}</style></head><body>"
        f'<header><h1>pipgate</h1><span class="version">version {_e(snapshot.version)}'
        f" · {_e(_utc(snapshot.generated_at))}</span><nav>{nav}</nav></header><main>"
        + (
            '<p class="offline">Offline: no upstream is asked; pages list only the files '
            "this cache holds.</p>"
            if snapshot.offline
            else ""
        )
        + '<div class="grid">'
        f"{_upstreams_section(snapshot.upstreams, full)}{_cache_section(snapshot.cache)}</div>"
        f"{_routes_section(snapshot.routes, full)}"
        f"{_policy_section(snapshot.policy, snapshot.failures, full)}"
        f"{_incompatible_section(snapshot.incompatible, full)}"
        f"{_failures_section(snapshot.failures, full, snapshot.root)}"
        f"{_usage_section(snapshot.index_url, snapshot.root)}"
        "</main></body></html>"
    )


# --- the handler ---------------------------------------------------------------------


async def snapshot(request: web.Request, *, root: str = "") -> StatusSnapshot:
    """Gather the page's data for the app serving ``request`` (``root``: the way back
    from the page to the server's root)."""
    svc = services(request)
    # Refresh this worker's size gauges so the page shows the size right now.
    await svc.evictor.update_gauges()
    # In multiprocess mode render() reads every worker's files: keep it off the loop.
    exposition = await asyncio.to_thread(svc.metrics.render)
    cache = cache_numbers(exposition.decode(), svc.config.max_size)
    failures = await svc.failures.recent(MAX_FAILURES)
    upstreams = []
    for client in svc.upstreams:
        last = client.last_error
        last_at = next((f.time for f in failures if f.upstream == client.name), None)
        upstreams.append(
            UpstreamStatus(
                name=client.name,
                url=client.index_url,
                up=not client.is_down,
                tls_verification=client.tls_verification,
                last_error_reason=last.reason.value if last else None,
                last_error_detail=last.detail if last else None,
                last_failure_at=last_at if last else None,
                proxies=tuple(
                    ProxyStatus(label=p.label, up=client.proxies.is_up(p))
                    for p in client.proxies.proxies
                ),
            )
        )
    routes = tuple(RouteStatus(r.projects, r.upstreams, r.merge) for r in svc.config.routes)
    policy = policy_status(svc.policy.config, svc.policy.quarantine)
    base = link_base(request) or f"{request.scheme}://{request.host}/"
    return StatusSnapshot(
        version=__version__,
        upstreams=tuple(upstreams),
        cache=cache,
        failures=failures,
        index_url=base + "simple/",
        generated_at=time.time(),
        routes=routes,
        policy=policy,
        offline=svc.config.offline,
        incompatible=tuple(await svc.incompatible.recent(MAX_INCOMPATIBLE)),
        root=root,
        admin=svc.config.admin_token is not None,
    )


def policy_status(config: Config, quarantine: Sequence[QuarantineEntry]) -> PolicyStatus:
    """What the page says of the policy in force."""
    parts = []
    if config.min_age:
        parts.append(f"files younger than {_duration(config.min_age)} held back")
    if config.exclude_newer is not None:
        parts.append(f"nothing uploaded after {_utc(config.exclude_newer)}")
    hold_back = "; ".join(parts)
    if parts and config.cooldown_exempt:
        parts.append(f"exempt: {', '.join(config.cooldown_exempt)}")
    rules = []
    if config.deny:
        rules.append(RuleStatus("policy.deny", "deny", ", ".join(config.deny)))
    for rule in config.policy_rules:
        cooldown = []
        if rule.min_age is not None:
            cooldown.append(f"min_age {_duration(rule.min_age)}")
        if rule.exclude_newer is not None:
            cooldown.append(f"exclude_newer {_utc(rule.exclude_newer)}")
        rules.append(
            RuleStatus(
                rule.name,
                rule.action or "cooldown",
                ", ".join(rule.projects),
                rule.versions or "",
                ", ".join(rule.upstreams),
                ", ".join(cooldown),
                rule.reason,
            )
        )
    return PolicyStatus(
        default=config.policy_default,
        cooldown="; ".join(parts),
        hold_back=hold_back,
        rules=tuple(rules),
        quarantine=tuple(
            QuarantineStatus(q.label, q.source, q.reason, q.added_at) for q in quarantine
        ),
    )


def _duration(seconds: float) -> str:
    if seconds >= 86400 and seconds % 86400 == 0:
        return f"{int(seconds // 86400)}d"
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    return f"{seconds:g}s"


async def status_page(request: web.Request, *, full: bool, root: str = "") -> web.Response:
    """The human status page, full or the summary (never cached: it is live state)."""
    page = render_status(await snapshot(request, root=root), full=full)
    return web.Response(
        body=page.encode(),
        headers={"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store"},
    )
