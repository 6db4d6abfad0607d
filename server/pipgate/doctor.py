"""``pipgate doctor``: walk the path a download takes and say which step breaks.

Each step prints one line, OK or FAIL, and on FAIL a hint that says what to change:
configuration, cache directory, DNS, TCP to the proxy, CONNECT through it (407 means
credentials), the TLS handshake (an unknown issuer is named, with a pointer to
``ca_bundle``), a real index page through the whole path, and one small file download
with its hash checked. The exit status is 0 only when every step passed.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import socket
import ssl
import tempfile
import time
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

from pipgate.config import Config, UpstreamConfig, origin_of
from pipgate.errors import Reason, UpstreamError
from pipgate.links import is_safe_filename
from pipgate.metrics import Metrics
from pipgate.redact import redact_url
from pipgate.simple.model import ProjectPage
from pipgate.simple.parse import PageParseError, parse_project_html, parse_project_json
from pipgate.upstream.client import UpstreamClient, build_ssl_context
from pipgate.upstream.origins import keep_allowed_files
from pipgate.upstream.proxy import Proxy

#: Below this much free space the cache cannot hold a typical large wheel.
MIN_FREE_BYTES = 1 << 30
#: Largest file the download check fetches (it picks the smallest on the page).
MAX_PROBE_FILE = 50 << 20


@dataclass
class Step:
    """The outcome of one check."""

    name: str
    ok: bool
    detail: str
    hint: str | None = None
    seconds: float = 0.0

    def line(self) -> str:
        """``OK   name: detail`` plus an indented hint line on failure."""
        text = f"{'OK  ' if self.ok else 'FAIL'} {self.name}: {self.detail}"
        if self.seconds >= 0.001:
            text += f" ({self.seconds * 1000:.0f} ms)"
        if self.hint and not self.ok:
            text += f"\n     hint: {self.hint}"
        return text

    def to_json(self) -> dict[str, object]:
        return asdict(self)


async def run_doctor(
    config: Config, *, project: str = "pip", upstream: str | None = None
) -> list[Step]:
    """Every check, in the order a download needs them, for each upstream in turn (or
    the one called ``upstream``); an upstream's checks stop early once its path is known
    to be broken (later checks would only repeat the failure)."""
    steps: list[Step] = [
        Step("config", True, f"loaded from {config.config_file or 'defaults and environment'}")
    ]
    steps.append(_check_cache(config))
    slices = [u for u in config.upstreams if upstream is None or u.name == upstream]
    if not slices:
        names = ", ".join(u.name for u in config.upstreams)
        steps.append(
            Step("upstream", False, f"no upstream is called {upstream!r}", f"configured: {names}")
        )
        return steps
    several = len(config.upstreams) > 1
    for one in slices:
        checks = await _check_upstream(one, project)
        if several:
            for step in checks:
                step.name = f"{one.name}: {step.name}"
        steps.extend(checks)
    return steps


async def _check_upstream(upstream: UpstreamConfig, project: str) -> list[Step]:
    steps: list[Step] = []
    if not upstream.verify:
        steps.append(
            Step(
                "tls verification",
                False,
                "verify = false: certificates are not checked",
                "remove verify = false and set ca_bundle to your CA instead",
            )
        )
    client = UpstreamClient(upstream, Metrics())
    parts = urlsplit(upstream.url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    proxy = client.proxies.for_url(upstream.url)[0]
    if proxy is None:
        steps.append(await _check_dns(host, port, "upstream"))
        if not steps[-1].ok:
            return steps
        steps.append(await asyncio.to_thread(_check_tcp, host, port, "upstream"))
        if not steps[-1].ok:
            return steps
        if parts.scheme == "https":
            steps.append(await asyncio.to_thread(_check_tls, upstream, host, port, None))
    else:
        proxy_parts = urlsplit(proxy.url)
        proxy_host = proxy_parts.hostname or ""
        proxy_port = proxy_parts.port or 3128
        steps.append(await _check_dns(proxy_host, proxy_port, f"proxy {proxy.label}"))
        if not steps[-1].ok:
            return steps
        upstream_dns = await _check_dns(host, port, "upstream")
        if not upstream_dns.ok:
            # Behind a proxy that is normal: the proxy resolves external names.
            upstream_dns = Step(
                "dns upstream", True, f"{host} does not resolve here; the proxy resolves it"
            )
        steps.append(upstream_dns)
        steps.append(await asyncio.to_thread(_check_tcp, proxy_host, proxy_port, "proxy"))
        if not steps[-1].ok:
            return steps
        if parts.scheme == "https":
            steps.append(await asyncio.to_thread(_check_tls, upstream, host, port, proxy))
    if steps and not steps[-1].ok:
        return steps
    await client.start()
    try:
        page_step, page = await _check_page(client, project)
        steps.append(page_step)
        if page is not None:
            steps.append(await _check_file(client, page))
    finally:
        await client.close()
    return steps


def _check_cache(config: Config) -> Step:
    directory = config.cache_dir
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".doctor-"):
            pass
    except OSError as exc:
        return Step(
            "cache directory",
            False,
            f"{directory}: {exc.strerror or exc}",
            "set cache.dir (--cache-dir, PIPGATE_CACHE_DIR) to a directory pipgate's user "
            "can write",
        )
    free = shutil.disk_usage(directory).free
    detail = f"{directory} writable, {free / (1 << 30):.1f} GiB free"
    if free < MIN_FREE_BYTES:
        return Step(
            "cache directory", False, detail, "free some space or point cache.dir elsewhere"
        )
    return Step("cache directory", True, detail)


async def _check_dns(host: str, port: int, what: str) -> Step:
    started = time.monotonic()
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return Step(
            f"dns {what}",
            False,
            f"{host} does not resolve ({exc.strerror})",
            "check the host name, or this machine's DNS; behind a proxy, set upstream.proxy "
            "so the proxy resolves external names",
            time.monotonic() - started,
        )
    address = infos[0][4][0]
    return Step(f"dns {what}", True, f"{host} -> {address}", None, time.monotonic() - started)


def _check_tcp(host: str, port: int, what: str) -> Step:
    started = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=10):
            pass
    except OSError as exc:
        hint = (
            "the proxy is not listening there: check upstream.proxy (host and port)"
            if what == "proxy"
            else "a firewall may block direct access: configure upstream.proxy"
        )
        return Step(
            f"tcp {what}",
            False,
            f"cannot connect to {host}:{port} ({exc.strerror or exc})",
            hint,
            time.monotonic() - started,
        )
    return Step(
        f"tcp {what}", True, f"{host}:{port} accepts connections", None, time.monotonic() - started
    )


def _check_tls(upstream: UpstreamConfig, host: str, port: int, proxy: Proxy | None) -> Step:
    """CONNECT through ``proxy`` when given, then a TLS handshake with verification."""
    started = time.monotonic()
    try:
        sock = (
            _connect_through(proxy, host, port)
            if proxy
            else socket.create_connection((host, port), timeout=10)
        )
    except _ProxyRefused as exc:
        return Step(
            f"connect via proxy {proxy.label if proxy else ''}",
            False,
            str(exc),
            exc.hint,
            time.monotonic() - started,
        )
    except OSError as exc:
        return Step(
            "tls", False, f"cannot reach {host}:{port}: {exc}", None, time.monotonic() - started
        )
    try:
        context = build_ssl_context(upstream)
        with context.wrap_socket(sock, server_hostname=host) as tls:
            version = tls.version()
    except ssl.SSLCertVerificationError as exc:
        issuer = _peer_issuer(proxy, host, port)
        return Step(
            "tls",
            False,
            f"certificate of {host} not trusted: {exc.verify_message} (issuer: {issuer})",
            f"if your network intercepts TLS, save the CA that issued it ({issuer}) as PEM "
            "and set upstream.ca_bundle (or SSL_CERT_FILE)",
            time.monotonic() - started,
        )
    except (ssl.SSLError, OSError) as exc:
        return Step(
            "tls",
            False,
            f"handshake with {host} failed: {exc}",
            "check upstream.client_cert/client_key if the server wants mutual TLS",
            time.monotonic() - started,
        )
    via = f" through proxy {proxy.label}" if proxy else ""
    return Step("tls", True, f"{host} verified ({version}){via}", None, time.monotonic() - started)


class _ProxyRefused(Exception):
    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


def _connect_through(proxy: Proxy, host: str, port: int) -> socket.socket:
    parts = urlsplit(proxy.url)
    sock = socket.create_connection((parts.hostname or "", parts.port or 3128), timeout=10)
    request = f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n"
    if proxy.authorization is not None:
        request += f"Proxy-Authorization: {proxy.authorization}\r\n"
    sock.sendall((request + "\r\n").encode())
    response = b""
    while b"\r\n\r\n" not in response and len(response) < 65536:
        chunk = sock.recv(4096)
        if not chunk:
            break
        response += chunk
    status_line = response.split(b"\r\n", 1)[0].decode("latin-1", "replace")
    fields = status_line.split(" ", 2)
    status = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 0
    if status == 200:
        return sock
    sock.close()
    if status == 407:
        hint = (
            "the proxy rejected the credentials: check upstream.proxy_auth_env/_file"
            if proxy.auth is not None
            else "the proxy wants credentials: set upstream.proxy_auth_env or "
            "upstream.proxy_auth_file (user:password)"
        )
        raise _ProxyRefused(f"proxy {proxy.label} answered 407 Proxy Authentication Required", hint)
    raise _ProxyRefused(
        f"proxy {proxy.label} refused CONNECT {host}:{port}: {status_line or 'no answer'}",
        "the proxy may not allow this host or port: ask for it to be allowed",
    )


def _peer_issuer(proxy: Proxy | None, host: str, port: int) -> str:
    """The issuer of the certificate the server (or an interceptor) presents."""
    try:
        sock = (
            _connect_through(proxy, host, port)
            if proxy
            else socket.create_connection((host, port), timeout=10)
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with context.wrap_socket(sock, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    except (OSError, _ProxyRefused):
        return "unknown"
    if not der:
        return "unknown"
    with tempfile.NamedTemporaryFile("w", suffix=".pem", delete=False) as handle:
        handle.write(ssl.DER_cert_to_PEM_cert(der))
    try:
        decoded = ssl._ssl._test_decode_cert(handle.name)  # type: ignore[attr-defined]
    except Exception:
        return "unknown"
    finally:
        os.unlink(handle.name)
    issuer = dict(item for rdn in decoded.get("issuer", ()) for item in rdn)
    return str(issuer.get("commonName") or issuer.get("organizationName") or "unknown")


async def _check_page(client: UpstreamClient, project: str) -> tuple[Step, ProjectPage | None]:
    url = client.project_url(project)
    started = time.monotonic()
    try:
        fetched = await client.fetch_page(url)
    except UpstreamError as exc:
        return Step(
            f"index page {project}",
            False,
            f"{exc.reason.value}: {exc.detail}",
            _hint_for(exc.reason),
            time.monotonic() - started,
        ), None
    elapsed = time.monotonic() - started
    if fetched.status == 404:
        return Step(
            f"index page {project}",
            False,
            f"{redact_url(url)} is 404",
            "the index has no such project: use --project NAME",
            elapsed,
        ), None
    try:
        media = fetched.content_type.split(";", 1)[0].strip().lower()
        parse = parse_project_json if media.endswith("+json") else parse_project_html
        page = parse(fetched.body, fetched.url, project)
    except PageParseError as exc:
        return Step(
            f"index page {project}",
            False,
            f"unreadable page: {exc}",
            "something on the path (a captive portal, an error page) answers instead",
            elapsed,
        ), None
    kept, dropped = keep_allowed_files(page, client.origins)
    if dropped:
        foreign = sorted({origin_of(f.url) for f in page.files} - set(client.config.file_origins))
        return Step(
            f"index page {project}",
            False,
            f"{dropped} of {len(page.files)} file links point to {', '.join(foreign)}, "
            "which is not among this upstream's file hosts; pipgate drops them",
            "if you trust that host, add it to file_hosts of this upstream",
            elapsed,
        ), (kept if kept.files else None)
    detail = f"{redact_url(url)}: {len(page.files)} files, {len(fetched.body)} bytes"
    return Step(f"index page {project}", True, detail, None, elapsed), page


async def _check_file(client: UpstreamClient, page: ProjectPage) -> Step:
    files = [
        f
        for f in page.files
        if f.sha256 and is_safe_filename(f.filename) and (f.size or 0) <= MAX_PROBE_FILE
    ]
    if not files:
        return Step(
            "file download",
            False,
            "no file with a sha256 to try",
            "use --project with a project that has files",
        )
    dist = min(files, key=lambda f: f.size or MAX_PROBE_FILE)
    started = time.monotonic()
    digest = hashlib.sha256()
    received = 0
    try:
        async with client.open_file(dist.url) as stream:
            async for chunk in stream.chunks():
                digest.update(chunk)
                received += len(chunk)
                if received > MAX_PROBE_FILE:
                    break
    except UpstreamError as exc:
        return Step(
            "file download",
            False,
            f"{dist.filename}: {exc.reason.value}: {exc.detail}",
            _hint_for(exc.reason),
            time.monotonic() - started,
        )
    elapsed = time.monotonic() - started
    if digest.hexdigest() != dist.sha256:
        return Step(
            "file download",
            False,
            f"{dist.filename}: sha256 differs from the index",
            "something on the path alters files (a proxy rewriting content?)",
            elapsed,
        )
    return Step(
        "file download", True, f"{dist.filename}: {received} bytes, sha256 ok", None, elapsed
    )


def _hint_for(reason: Reason) -> str:
    return {
        Reason.TIMEOUT: "upstream or proxy too slow: check the network, raise upstream timeouts",
        Reason.DNS: "the name does not resolve here: configure upstream.proxy",
        Reason.CONNECT: "cannot connect: a firewall may need upstream.proxy",
        Reason.TLS: "TLS failed: set upstream.ca_bundle to your network's CA",
        Reason.PROXY_CONNECT: "the proxy cannot be reached: check upstream.proxy",
        Reason.PROXY_AUTH: "the proxy wants (other) credentials: upstream.proxy_auth_env/_file",
        Reason.HTTP_4XX: "the index refuses: check upstream.url and its credentials",
        Reason.HTTP_5XX: "the index has trouble: try again later",
    }.get(reason, "see the detail above")


def report(steps: list[Step]) -> str:
    """All steps as text, one line each (hints indented below failures)."""
    return "\n".join(step.line() for step in steps)


def succeeded(steps: list[Step]) -> bool:
    """Whether every step passed."""
    return all(step.ok for step in steps)
