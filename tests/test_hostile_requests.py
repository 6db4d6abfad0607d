"""Hostile client requests, proven with hypothesis against a real pipgate.

Whatever a request says (its method, its path and query however encoded, any headers,
duplicated, oversized or garbage), pipgate

- never answers 500, never shows a traceback, never logs an internal error;
- reads and writes nothing outside its cache directory: an audit hook
  (``sys.addaudithook``) records every file, directory and socket operation of the
  process while the requests run, and sentinel files next to the cache must stay
  unread and unchanged;
- sends upstream only ``GET``s of the project list, of the page of a valid PEP 503
  normalised name, and of file URLs a page named, carrying nothing the client sent.

pipgate runs in a thread of this process (the audit hook sees its worker threads too)
and requests go over a raw socket, so no client library normalises them first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipgate.app import create_app
from pipgate.simple.names import is_valid_name, normalize
from tests.conftest import gate_config
from tests.support.fake_pypi import FakePyPI
from tests.support.packages import BuiltDist, sample_tree

#: Put into header values and queries: upstream must never see it.
MARK = "zqhostilezq"
#: Every example's answer comes well within this (the fake upstream is local and fast).
REQUEST_TIMEOUT = 20.0
#: Bounded: the whole file runs in well under a minute on two cores.
PROPERTY_SETTINGS = settings(
    max_examples=1000,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ---------------------------------------------------------------------------------------
# What the process touches: one audit hook for the whole test session (they cannot be
# removed), recording only while a gate of this module runs.

#: Events whose first argument (and second, for two-path events) is a path.
_PATH_EVENTS = frozenset(
    {
        "open",
        "os.listdir",
        "os.scandir",
        "os.mkdir",
        "os.rmdir",
        "os.remove",
        "os.rename",
        "os.link",
        "os.symlink",
        "os.truncate",
        "os.chmod",
        "os.chown",
        "os.utime",
        "os.chdir",
        "os.mkfifo",
        "os.mknod",
        "shutil.copyfile",
        "shutil.copymode",
        "shutil.copystat",
        "shutil.copytree",
        "shutil.move",
        "shutil.rmtree",
        "sqlite3.connect",
        "glob.glob",
    }
)
_TWO_PATHS = frozenset({"os.rename", "os.link", "os.symlink", "shutil.copyfile", "shutil.move"})
#: Events that have no business in a request at all.
_FORBIDDEN_EVENTS = frozenset(
    {"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork"}
)
_sink: list[tuple[str, tuple[Any, ...]]] | None = None
#: The test's own thread (hypothesis writes its caches from it): not recorded.
_test_thread: int | None = None
_hook_installed = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    sink = _sink
    if sink is not None and threading.get_ident() != _test_thread and (
        event in _PATH_EVENTS
        or event in _FORBIDDEN_EVENTS
        or event in ("socket.connect", "socket.getaddrinfo")
    ):
        sink.append((event, args))


def _start_recording() -> list[tuple[str, tuple[Any, ...]]]:
    """Record what every thread but this one (the test's) touches, from now on."""
    global _sink, _hook_installed, _test_thread
    _test_thread = threading.get_ident()
    if not _hook_installed:
        sys.addaudithook(_audit)
        _hook_installed = True
    _sink = []
    return _sink


def _stop_recording() -> None:
    global _sink
    _sink = None


def _as_path(value: object) -> str | None:
    if isinstance(value, bytes):
        value = os.fsdecode(value)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    return value if isinstance(value, str) else None  # an int is an open descriptor


def _is_write(event: str, args: tuple[Any, ...]) -> bool:
    if event == "open":
        mode, flags = (args[1] if len(args) > 1 else None), (args[2] if len(args) > 2 else 0)
        if isinstance(mode, str):
            return any(c in mode for c in "wax+")
        return bool(isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
    return event not in ("os.listdir", "os.scandir", "glob.glob", "os.chdir")


@dataclass
class Touches:
    """Decides whether a recorded operation stays within what pipgate may touch."""

    cache: str
    #: Where Python code lives: lazy imports and traceback formatting read it.
    code_roots: tuple[str, ...]
    #: (host, port) pipgate and the tests may connect to.
    sockets: set[tuple[str, int]] = field(default_factory=set)

    def _under(self, path: str, root: str) -> bool:
        return path == root or path.startswith(root.rstrip(os.sep) + os.sep)

    def violation(self, event: str, args: tuple[Any, ...]) -> str | None:
        """Why this operation breaks the rule, or ``None`` when it is allowed."""
        if event in _FORBIDDEN_EVENTS:
            return f"{event} {args[:2]!r}"
        if event == "socket.getaddrinfo":
            host = args[0].decode() if isinstance(args[0], bytes) else args[0]
            return None if host in ("127.0.0.1", "localhost", None) else f"dns {host!r}"
        if event == "socket.connect":
            address = args[1]
            if isinstance(address, tuple) and (address[0], address[1]) in self.sockets:
                return None
            return f"connect {address!r}"
        paths = [args[0], args[1]] if event in _TWO_PATHS else [args[0]] if args else []
        for raw in paths:
            path = _as_path(raw)
            if path is None or (path.startswith("<") and path.endswith(">")):
                continue  # a descriptor, or a pseudo file name ("<unknown>": compile())
            real = os.path.realpath(path)
            if self._under(real, self.cache):
                continue
            if not _is_write(event, args) and self._is_code(event, real):
                continue
            if not _is_write(event, args) and re.match(rf"/proc/(self|{os.getpid()})/", real):
                continue  # prometheus-client's process metrics on /metrics
            return f"{event} {path!r}"
        return None

    def _is_code(self, event: str, real: str) -> bool:
        if not any(self._under(real, root) for root in self.code_roots):
            return False
        return event in ("os.listdir", "os.scandir") or real.endswith((".py", ".pyc", ".so"))


def _code_roots(exclude: Path) -> tuple[str, ...]:
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix}
    roots.update(p for p in sys.path if p and os.path.isdir(p))
    ex = os.path.realpath(exclude)
    # A sys.path entry that contains the test directory would allow reading it.
    return tuple(
        sorted(
            real
            for r in roots
            if not ex.startswith((real := os.path.realpath(r)).rstrip(os.sep) + os.sep)
        )
    )


# ---------------------------------------------------------------------------------------
# pipgate in a thread, and a raw HTTP client


class GateThread:
    """pipgate's app served on loopback from its own event loop in a daemon thread."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self.port = 0

    def start(self) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            runner = web.AppRunner(
                self._app, access_log=None, handle_signals=False, shutdown_timeout=0.5
            )
            try:
                self._loop.run_until_complete(runner.setup())
                site = web.TCPSite(runner, "127.0.0.1", 0)
                self._loop.run_until_complete(site.start())
                self.port = runner.addresses[0][1]
            except BaseException as exc:
                failure.append(exc)
                self._loop.run_until_complete(runner.cleanup())
                self._loop.close()
                ready.set()
                return
            ready.set()
            try:
                self._loop.run_forever()
            finally:
                self._loop.run_until_complete(runner.cleanup())
                self._loop.close()

        self._thread = threading.Thread(target=run, name="pipgate", daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError("pipgate did not start within 30 s")
        if failure:
            raise failure[0]

    def idle(self, timeout: float = 10.0) -> None:
        """Wait until the background work the requests started (downloads) is done."""
        deadline = time.monotonic() + timeout

        async def busy() -> int:
            me = asyncio.current_task()
            return sum(1 for t in asyncio.all_tasks() if t is not me and not t.done())

        baseline = None
        while time.monotonic() < deadline:
            count = asyncio.run_coroutine_threadsafe(busy(), self._loop).result(5)
            if baseline is not None and count <= baseline:
                return
            baseline = count
            time.sleep(0.05)

    def stop(self) -> None:
        if self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def send_raw(port: int, data: bytes, timeout: float = REQUEST_TIMEOUT) -> Answer | None:
    """Send ``data`` as is; the final answer (``None`` if the server just closed)."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # the server may refuse an oversized request before reading it all
        with contextlib.suppress(OSError):
            sock.sendall(data)
        while True:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                chunk = sock.recv(1 << 16)
            except ConnectionResetError:
                break
            except TimeoutError:
                raise AssertionError(f"no complete answer within {timeout} s") from None
            if not chunk:
                break
            chunks.append(chunk)
    raw = b"".join(chunks)
    while raw.startswith(b"HTTP/1.1 1"):  # skip interim answers (100 Continue)
        raw = raw.partition(b"\r\n\r\n")[2]
    if not raw:
        return None
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(status_line.split()[1]), headers, body)


class _ErrorLog(logging.Handler):
    """Collects internal errors: pipgate's own and aiohttp's "Error handling request"
    for anything but a malformed request or a client that went away."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError | ConnectionError):
            return  # aiohttp's own 400s for what it cannot parse; a closed socket
        if record.name.startswith("aiohttp.server") or (
            record.name.startswith("pipgate") and "internal error" in record.getMessage()
        ):
            self.records.append(f"{record.name}: {record.getMessage()} ({exc!r})")


class Scene:
    """A running pipgate, its fake upstream, and what the rules allow."""

    def __init__(
        self,
        gate: GateThread,
        upstream: FakePyPI,
        touches: Touches,
        events: list[tuple[str, tuple[Any, ...]]],
        errors: _ErrorLog,
        outside: Path,
        sentinels: dict[Path, tuple[bytes, int]],
        outside_before: frozenset[str],
    ) -> None:
        self.gate, self.upstream, self.touches = gate, upstream, touches
        self.events, self.errors = events, errors
        self.outside, self.sentinels, self.outside_before = outside, sentinels, outside_before
        #: Upstream paths a page named (files and their PEP 658 metadata).
        named: set[str] = set()
        self.dists: dict[str, BuiltDist] = {}
        for entry in upstream._entries.values():
            self.dists[entry.dist.filename] = entry.dist
            named.add(upstream.file_path(entry.dist))
            if entry.metadata:
                named.add(upstream.file_path(entry.dist) + ".metadata")
        self.named_files = frozenset(named)
        self.checked_events = 0
        self.checked_upstream = 0
        self.checked_errors = 0

    def __repr__(self) -> str:  # hypothesis prints it with every falsifying example
        return f"Scene(pipgate on port {self.gate.port})"

    def check(self, context: str) -> None:
        """Everything recorded since the last check follows the rules."""
        events = self.events[self.checked_events :]
        self.checked_events += len(events)
        bad = [v for e, a in events if (v := self.touches.violation(e, a)) is not None]
        assert not bad, f"{context}: touched outside the cache: {bad[:5]}"
        requests = self.upstream.requests[self.checked_upstream :]
        self.checked_upstream += len(requests)
        for method, path, headers in requests:
            assert method == "GET", (context, method, path)
            assert _allowed_upstream_path(path, self.named_files), (context, path)
            leaked = [k for k, v in headers.items() if MARK in v]
            assert not leaked, (context, path, leaked)
        errors = self.errors.records[self.checked_errors :]
        self.checked_errors += len(errors)
        assert not errors, (context, errors[:3])

    def check_outside(self) -> None:
        for path, (content, mtime) in self.sentinels.items():
            assert path.read_bytes() == content, path
            assert path.stat().st_mtime_ns == mtime, path
        assert _listing(self.outside) == self.outside_before


def _allowed_upstream_path(path: str, named_files: frozenset[str]) -> bool:
    if path == "/simple/" or path in named_files:
        return True
    match = re.fullmatch(r"/simple/([^/]+)/", path)
    return match is not None and is_valid_name(match[1]) and normalize(match[1]) == match[1]


def _listing(root: Path) -> frozenset[str]:
    return frozenset(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if "cache" not in p.relative_to(root).parts
    )


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    outside = tmp_path_factory.mktemp("hostile")
    cache = outside / "cache"
    # Sentinels next to the cache, where "../" from it would land.
    sentinels: dict[Path, tuple[bytes, int]] = {}
    for rel in ("secret.txt", "cache-sibling/secret.txt", "etc/passwd"):
        path = outside / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"sentinel " + rel.encode())
        sentinels[path] = (path.read_bytes(), path.stat().st_mtime_ns)
    upstream = FakePyPI.with_sample_tree(page_format="json")
    upstream.start()
    config = gate_config(
        cache,
        upstream,
        trust_forwarded=True,  # the X-Forwarded-* headers are read, not ignored
        page_fetch_rate=0,
        client_page_fetch_rate=0,
    )
    outside_before = _listing(outside)
    errors = _ErrorLog()
    loggers = [logging.getLogger("pipgate"), logging.getLogger("aiohttp")]
    for logger in loggers:
        logger.addHandler(errors)
    events = _start_recording()
    gate = GateThread(create_app(config))
    gate.start()
    touches = Touches(
        cache=os.path.realpath(cache),
        code_roots=_code_roots(outside),
        sockets={("127.0.0.1", gate.port), ("127.0.0.1", upstream.port)},
    )
    scene = Scene(gate, upstream, touches, events, errors, outside, sentinels, outside_before)
    try:
        yield scene
        gate.idle()
        scene.check("after every request")
        scene.check_outside()
    finally:
        gate.stop()
        _stop_recording()
        upstream.stop()
        for logger in loggers:
            logger.removeHandler(errors)


# ---------------------------------------------------------------------------------------
# Requests, however encoded

_SHA = next(d.sha256 for d in sample_tree() if d.project == "alpha")
_SEGMENT_TOKENS = [
    b"..",
    b".",
    b"%2e%2e",
    b"%2E%2e",
    b".%2e",
    b"%252e%252e",
    b"%2f",
    b"%2F",
    b"%252f",
    b"%5c",
    b"..%5c..",
    b"%00",
    b"%c0%ae%c0%ae",  # overlong UTF-8 "."
    b"%c0%af",  # overlong UTF-8 "/"
    b"%e0%80%ae",
    b"%ef%bc%8e%ef%bc%8e",  # fullwidth "．．"
    b"%e2%84%aa",  # Kelvin sign: lowercases to "k"
    b"%c5%bf",  # long s: uppercases to "S"
    b"%ef%ac%81",  # the "fi" ligature
    b"%ef%bc%a1lpha",  # fullwidth "A"
    b"%ff%fe",
    b"%",
    b"%%",
    b"%zz",
    b";",
    b";jsessionid=1",
    b"?",
    b"#",
    b"alpha",
    b"Alpha",
    b"ALPHA",
    b"a_l.p-ha",
    b"zope.interface",
    b"beta",
    b"gamma",
    b"delta",
    b"-x-",
    b"nope",
    b"etc",
    b"passwd",
    b"secret.txt",
    b"cache",
    b"blobs",
    b"catalog",
    b"files",
    b"simple",
    _SHA.encode(),
    b"u" + b"0" * 40,
    b"alpha-1.0-py3-none-any.whl",
    b"alpha-1.0-py3-none-any.whl.metadata",
    b".metadata",
    b"gamma-0.5.tar.gz",
    b"~",
    b"$HOME",
    b"%24%7bjndi:x%7d",
    b"<script>",
    b"%0d%0aX-Injected:%201",
]
#: Raw bytes that are not allowed in a request target (aiohttp refuses them).
_RAW_TOKENS = [
    b"\\",
    b"\x00",
    b"\xc0\xae\xc0\xae",
    b"\xff",
    "\uff0e\uff0e".encode(),
    "\u212a".encode(),
    "Ａｌｐｈａ".encode(),
]
_NAME = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,12}[A-Za-z0-9])?", fullmatch=True)


def _segment(parsable: bool) -> st.SearchStrategy[bytes]:
    """Mostly the tokens above or a project name of any spelling, else any text
    percent-encoded, or a long segment; unless ``parsable``, raw bytes too."""
    choices = [
        *[st.sampled_from(_SEGMENT_TOKENS)] * 8,
        *[_NAME.map(str.encode)] * 3,
        *[st.text(max_size=6).map(lambda s: quote(s, safe="", errors="surrogatepass").encode())]
        * 2,
        st.integers(200, 1500).map(lambda n: b"a" * n),
    ]
    if not parsable:
        choices += [
            st.sampled_from(_RAW_TOKENS),
            st.text(st.characters(codec="utf-8"), max_size=6).map(lambda s: s.encode("utf-8")),
            st.just(b"a" * 9000),  # past aiohttp's request-line limit
        ]
    return st.one_of(*choices)


_PREFIXES = [
    b"/simple/",
    b"/simple",
    b"/files/",
    b"/files/alpha/",
    b"/files/alpha/" + _SHA.encode() + b"/",
    b"/",
    b"//",
    b"///simple/",
    b"/-/",
    b"/-/failures",
    b"/-/setup",
    b"/readyz",
    b"/healthz",
    b"/metrics",
    b"/-/admin/",
    b"http://127.0.0.1/simple/",
    b"http://evil.example/files/",
    b"",
]
_QUERY_TOKENS = [
    b"format=application/vnd.pypi.simple.v1+json",
    b"format=application/vnd.pypi.simple.v1%2Bjson",
    b"format=text/html",
    b"format=",
    b"format=%00",
    b"format=\xff",
    b"format=" + MARK.encode(),
    b"limit=-1",
    b"limit=abc",
    b"limit=" + b"9" * 30,
    b"limit=1e9",
    b"url=file:///etc/passwd",
    b"path=../../secret.txt",
    b"%zz=%zz",
    b"a[]=1",
    b"=",
    b"&&&",
    b"x=" + MARK.encode() + b"%0a",
]
_QUERY = st.one_of(
    st.just(b""),
    st.lists(st.sampled_from(_QUERY_TOKENS), min_size=1, max_size=4).map(
        lambda items: b"?" + b"&".join(items)
    ),
)


@st.composite
def _targets(draw: st.DrawFn, parsable: bool) -> bytes:
    prefix = draw(st.sampled_from(_PREFIXES))
    segments = draw(st.lists(_segment(parsable), max_size=5))
    slash = draw(st.sampled_from([b"", b"/"]))
    # Spaces and CR/LF would end the request line: they are left out (raw, they make
    # another request, which aiohttp's parser deals with).
    path = (prefix + b"/".join(segments) + slash).translate(None, b" \r\n\t") or b"/"
    query = draw(_QUERY)
    if parsable:
        path, query = path[:6000], bytes(c for c in query if 0x20 < c < 0x7F)
    return path + query


def _methods(parsable: bool) -> st.SearchStrategy[bytes]:
    choices = [
        *[st.sampled_from([b"GET", b"GET", b"GET", b"HEAD"])] * 6,
        st.sampled_from([b"POST", b"PUT", b"DELETE", b"OPTIONS", b"TRACE", b"PATCH", b"PROPFIND"]),
    ]
    if not parsable:
        choices.append(st.sampled_from([b"CONNECT", b"get", b"G\x00T", b"X" * 100]))
    return st.one_of(*choices)


_VALUES: dict[str, list[str]] = {
    "Range": [
        "bytes=0-",
        "bytes=0-0",
        "bytes=-1",
        "bytes=-0",
        "bytes=5-1",
        "bytes=1-2,3-4",
        "bytes=" + "9" * 40 + "-",
        "bytes=0-" + "9" * 5000,
        "bytes=-" + "9" * 5000,
        "bytes=\u00b2-",  # a digit to str.isdigit(), not to int()
        "bytes=\u0661-\u0662",  # Arabic-Indic digits
        "bytes=0x10-",
        "bytes=--1",
        "bytes=" + "0-0," * 1000,
        "items=0-1",
        "bytes",
        "bytes=",
    ],
    "If-Range": ['"' + _SHA + '"', 'W/"' + _SHA + '"', "", '"', "Mon, 01 Jan 1900 00:00:00 GMT"],
    "If-None-Match": ["*", '"' + _SHA + '"', "W/", '"', "," * 2000, 'W/"x", *'],
    "If-Modified-Since": ["yesterday", "Mon, 01 Jan 10000 00:00:00 GMT", "-1"],
    "Accept": [
        "application/vnd.pypi.simple.v1+json",
        "application/vnd.pypi.simple.latest+html;q=0.9, */*;q=0.1",
        "*/*;q=1e999",
        "*/*;q=nan",
        "text/html;q=" + "0" * 5000,
        ";" * 3000,
        "*",
    ],
    "Accept-Encoding": ["gzip", "gzip;q=nan", "gzip;q=inf", "gzip;q=1e400", "gzip;q=-1", "*"],
    "Cache-Control": ["no-cache", "max-age=0", "max-age=-1", "max-age=" + "9" * 5000, 'no-cache="'],
    "Pragma": ["no-cache", "\x80"],
    "User-Agent": [
        'pip/24.0 {"installer":{"name":"pip","version":"24.0"},"python":"3.11.7",'
        '"implementation":{"name":"CPython","version":"3.11.7"},"system":{"name":"Linux"},'
        '"cpu":"x86_64","distro":{"libc":{"lib":"glibc","version":"2.36"}}}',
        'pip/24.0 {"python": [1, 2], "implementation": 5, "cpu": null}',
        'uv/0.5.0 {"installer": {"name": "uv", "version": {}}, "python": "3.999.x"}',
        'pip/24.0 {"distro": {"libc": {"lib": "glibc", "version": "' + "9" * 5000 + '"}}}',
        "uv/0.5.0 " + "[" * 3000,
        "poetry/" + "9" * 5000,
        "pdm/\t",
    ],
    "X-Forwarded-For": ["10.0.0.1", "\u00e9", "," * 1000, "1.1.1.1, 2.2.2.2", "[::1]:80"],
    "X-Forwarded-Host": ["evil.example", "evil.example/x", "a@b", "[::1", "h" * 1000, ""],
    "X-Forwarded-Proto": ["https", "javascript", "http, https", "\u0130ttps"],
    "X-Forwarded-Prefix": ["/pypi", "/../..", "//evil.example", "/%2e%2e", "@evil", "/a?b#c"],
    "Authorization": [
        "Basic dXNlcjpwYXNz",
        "Basic \u00ff",
        "Basic !!!!",
        "Basic " + "A" * 5000,
        "Bearer ",
        "Bearer " + MARK,
        "Digest x",
    ],
    "X-Request-ID": ["abc", "a" * 1000, "\u0661\u0662", "../../etc"],
    "Cookie": ["a=" + MARK, ";" * 500],
}
_HOSTS = ["x", "evil.example", "[::1", "a" * 300, "127.0.0.1:0", "evil.example/../x", ""]
_HEADER_NAMES = sorted(_VALUES)
#: aiohttp refuses a second one of these (RFC 9110 singletons).
_SINGLETONS = frozenset({"User-Agent"})
#: Header bytes aiohttp lets through: printable ASCII, tab and obs-text (0x80-0xff).
_PARSABLE_GARBAGE = st.one_of(
    st.binary(max_size=40).map(lambda b: bytes(c for c in b if c >= 0x20 and c != 0x7F)),
    st.text(max_size=20).map(lambda s: (s + MARK).encode("utf-8", "surrogatepass")),
)
_GARBAGE = st.one_of(
    # Control characters, or a value past aiohttp's 8 KiB limit: refused by aiohttp.
    st.binary(min_size=1, max_size=10).map(lambda b: b.translate(None, b"\r\n") + b"\x01"),
    st.integers(6000, 9000).map(lambda n: b"x" * n),
)


def _value(name: str, parsable: bool) -> st.SearchStrategy[bytes]:
    """Mostly a value of the kind pipgate reads, sometimes marked, sometimes garbage."""
    known = st.sampled_from(_VALUES[name]).map(lambda v: v.encode("utf-8"))
    marked = known.map(lambda v: v + b" " + MARK.encode())
    choices = [*[known] * 6, *[marked] * 2, _PARSABLE_GARBAGE]
    return st.one_of(*choices) if parsable else st.one_of(*choices, _GARBAGE)


@st.composite
def _headers(draw: st.DrawFn, parsable: bool) -> tuple[tuple[bytes, bytes], ...]:
    # Each header pipgate reads is there or not on its own (a few at once, on average),
    # maybe twice; a Host of any kind; unless parsable, now and then a bad name.
    headers = []
    for name in _HEADER_NAMES:
        if draw(st.integers(0, 3)) == 0:
            value = draw(_value(name, parsable))
            headers.append((name.encode(), value))
            if (not parsable or name not in _SINGLETONS) and draw(st.integers(0, 5)) == 0:
                headers.append((name.encode(), draw(st.just(value) | _value(name, parsable))))
    if draw(st.integers(0, 7)) == 0:
        host = st.sampled_from(_HOSTS).map(str.encode) | _PARSABLE_GARBAGE
        headers.append((b"Host", draw(host if parsable else host | _GARBAGE)))
    if not parsable and draw(st.integers(0, 9)) == 0:
        odd = draw(st.sampled_from(["X-\x7fOdd", "Bad Name", "", "X-Unknown"]))
        headers.append((odd.encode(), draw(_GARBAGE)))
    return tuple(draw(st.permutations(headers)) if len(headers) > 1 else headers)


@dataclass(frozen=True)
class HostileRequest:
    method: bytes
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...]

    def __repr__(self) -> str:
        def short(value: bytes) -> str:
            text = repr(value)
            return text if len(text) <= 120 else f"{text[:100]}...<{len(value)} bytes>"

        headers = ", ".join(f"{short(k)}: {short(v)}" for k, v in self.headers)
        return f"HostileRequest({short(self.method)} {short(self.target)} [{headers}])"

    def encode(self) -> bytes:
        lines = [self.method + b" " + self.target + b" HTTP/1.1"]
        if not any(name.lower() == b"host" for name, _ in self.headers):
            lines.append(b"Host: 127.0.0.1")
        lines += [name + b": " + value for name, value in self.headers]
        lines.append(b"Connection: close")
        return b"\r\n".join(lines) + b"\r\n\r\n"


def _requests(parsable: bool) -> st.SearchStrategy[HostileRequest]:
    return st.builds(
        HostileRequest,
        method=_methods(parsable),
        target=_targets(parsable),
        headers=_headers(parsable),
    )


def _check_answer(request: HostileRequest, answer: Answer | None) -> None:
    if answer is None:
        return  # aiohttp closed a request it could not parse: not an answer, not a 500
    context = f"{request.method!r} {request.target[:200]!r} -> {answer.status}"
    assert answer.status != 500, f"{context}: {answer.body[:300]!r}"
    assert b"Traceback" not in answer.body, context
    assert b'File "' not in answer.body, context
    if answer.status >= 500:
        # The upstream is healthy: a 5xx must be a classified refusal (a limit), never
        # an unexplained failure.
        assert "x-pipgate-reason" in answer.headers, context


# ---------------------------------------------------------------------------------------
# The properties


@PROPERTY_SETTINGS
@given(request=_requests(parsable=True))
def test_no_request_gets_a_500_or_escapes_the_cache_or_steers_upstream(
    scene: Scene, request: HostileRequest
) -> None:
    # Requests aiohttp parses, so each reaches pipgate's handlers.
    answer = send_raw(scene.gate.port, request.encode())
    _check_answer(request, answer)
    scene.check(repr(request))


@settings(PROPERTY_SETTINGS, max_examples=300)
@given(request=_requests(parsable=False))
def test_malformed_http_is_refused_without_a_500_or_side_effects(
    scene: Scene, request: HostileRequest
) -> None:
    # Raw bytes, NULs, bad methods and names, oversized lines: most never reach pipgate.
    answer = send_raw(scene.gate.port, request.encode())
    _check_answer(request, answer)
    scene.check(repr(request))


@settings(PROPERTY_SETTINGS, max_examples=400)
@given(
    project=st.sampled_from(["alpha", "beta", "gamma", "delta", "zope-interface"]),
    metadata=st.booleans(),
    method=st.sampled_from([b"GET", b"GET", b"HEAD"]),
    headers=_headers(parsable=True),
)
def test_file_requests_with_hostile_headers_stay_in_the_cache(
    scene: Scene,
    project: str,
    metadata: bool,
    method: bytes,
    headers: tuple[tuple[bytes, bytes], ...],
) -> None:
    # Real file URLs (downloads, cache hits, ranges, metadata) under hostile headers.
    dist = next(d for d in scene.dists.values() if d.project == project)
    target = f"/files/{project}/{dist.sha256}/{dist.filename}" + (".metadata" * metadata)
    request = HostileRequest(method, target.encode(), headers)
    answer = send_raw(scene.gate.port, request.encode())
    _check_answer(request, answer)
    scene.check(repr(request))


def test_valid_requests_still_work_and_are_seen_by_the_audit_hook(scene: Scene) -> None:
    # The properties above prove nothing if pipgate refused everything, or if the
    # recorder saw nothing: pipgate still serves, and its blob writes were recorded.
    dist = scene.dists["beta-1.0-py3-none-any.whl"]
    page = send_raw(scene.gate.port, HostileRequest(b"GET", b"/simple/beta/", ()).encode())
    assert page is not None and page.status == 200, page
    target = f"/files/beta/{dist.sha256}/{dist.filename}".encode()
    answer = send_raw(scene.gate.port, HostileRequest(b"GET", target, ()).encode())
    assert answer is not None and answer.status == 200
    assert answer.body == dist.data
    ranged = send_raw(
        scene.gate.port, HostileRequest(b"GET", target, ((b"Range", b"bytes=1-3"),)).encode()
    )
    assert ranged is not None and ranged.status == 206 and ranged.body == dist.data[1:4]
    scene.gate.idle()
    blobs = os.path.join(scene.touches.cache, "blobs") + os.sep
    assert any(
        event in ("open", "os.rename") and (_as_path(args[0]) or "").startswith(blobs)
        for event, args in scene.events
    )
    assert scene.touches.violation("open", (str(scene.outside / "secret.txt"), "r", 0))
    assert scene.touches.violation("socket.connect", (None, ("10.0.0.1", 80)))
    scene.check("valid requests")
