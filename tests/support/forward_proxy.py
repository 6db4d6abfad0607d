"""A real HTTP forward proxy in its own process (proxy.py), for corporate-network tests.

pipgate must reach upstream through forward proxies: absolute-URI ``GET http://…`` for
http upstreams, ``CONNECT host:port`` tunnels for https ones, Basic proxy auth (407 when
wrong). `ForwardProxy` runs proxy.py as a separate OS process, so these tests exercise a
proxy implementation we did not write, and reports which requests went through it.

proxy.py logs one access line per *connection*, and only when it closes; a keep-alive
client would show nothing. So the proxy loads `RequestLogPlugin` (from this module, as
its ``--auth-plugin``), which logs every request as it arrives, before the auth verdict
is acted on.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

from proxy.http.exception import ProxyAuthenticationFailed
from proxy.http.parser import HttpParser
from proxy.http.proxy.auth import AuthPlugin

#: Marker of the plugin's log lines: ``forward-proxy allowed CONNECT 127.0.0.1:8443``.
_MARKER = "forward-proxy"
_LINE = re.compile(rf"{_MARKER} (allowed|denied) (.+)$")
_REPO_ROOT = Path(__file__).resolve().parents[2]
_START_TIMEOUT = 15.0
_STOP_TIMEOUT = 3.0

_log = logging.getLogger(__name__)
#: Proxies still running, stopped at interpreter exit: their own session keeps them
#: alive after a crashed or interrupted test run otherwise.
_RUNNING: weakref.WeakSet[ForwardProxy] = weakref.WeakSet()


def request_target(request: HttpParser) -> str:
    """The request line's method and target as the client sent it, e.g.
    ``GET http://127.0.0.1:5000/simple/`` or ``CONNECT 127.0.0.1:8443``."""
    method = (request.method or b"?").decode("latin-1")
    url = request._url  # the parsed request target; proxy.py keeps no raw request line
    if url is None:
        return method
    host = (url.hostname or b"").decode("latin-1")
    port = f":{url.port}" if url.port is not None else ""
    if request.is_https_tunnel:
        return f"{method} {host}{port}"
    if url.scheme is None:  # origin-form: a request for the proxy itself
        return f"{method} {(url.remainder or b'').decode('latin-1')}"
    rest = (url.remainder or b"").decode("latin-1")
    return f"{method} {url.scheme.decode('latin-1')}://{host}{port}{rest}"


class RequestLogPlugin(AuthPlugin):
    """Runs inside the proxy process: log each request when it arrives, then apply
    proxy.py's own Basic auth (a no-op without ``--basic-auth``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._first: HttpParser | None = None

    def before_upstream_connection(self, request: HttpParser) -> HttpParser | None:
        # Called once per client connection, for its first request (CONNECT included).
        self._first = request
        try:
            allowed = super().before_upstream_connection(request)
        except ProxyAuthenticationFailed:
            _log.info("%s denied %s", _MARKER, request_target(request))
            raise
        _log.info("%s allowed %s", _MARKER, request_target(request))
        return allowed

    def handle_client_request(self, request: HttpParser) -> HttpParser | None:
        # Also called for later requests on a kept-alive plain-http connection.
        if request is not self._first:
            _log.info("%s allowed %s", _MARKER, request_target(request))
        return request


class ForwardProxy:
    """proxy.py on 127.0.0.1 in its own process group; see what it handled with
    `requests()`, `denied()` and `count()`."""

    def __init__(self, *, auth: tuple[str, str] | None = None) -> None:
        self.auth = auth
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        #: Output of earlier runs (the log of a run is folded in here by `stop()`).
        self._past_output = ""
        self._skip_lines = 0

    # -- lifecycle ----------------------------------------------------------------

    def start(self, port: int | None = None) -> str:
        """Start proxy.py on `port` (None: any free one; give the old port to restart
        it) and wait until it accepts connections; return `url`."""
        if self._proc is not None:
            raise RuntimeError("ForwardProxy is already running")
        work = Path(tempfile.mkdtemp(prefix="forward-proxy-"))
        port_file = work / "port"
        cmd = [
            *(sys.executable, "-m", "proxy", "--hostname", "127.0.0.1"),
            *("--port", str(port or 0), "--port-file", str(port_file)),
            # One acceptor process, no worker pool: starts in ~0.3 s and stays small.
            *("--num-acceptors", "1", "--num-workers", "1"),
            # Keep proxy.py's state out of ~/.proxy.
            *("--data-dir", str(work), "--cache-dir", str(work / "cache")),
            *("--auth-plugin", f"{__name__}.{RequestLogPlugin.__name__}"),
        ]
        if self.auth is not None:
            cmd += ["--basic-auth", f"{self.auth[0]}:{self.auth[1]}"]
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_REPO_ROOT), env.get("PYTHONPATH")) if p
        )
        env["PYTHONUNBUFFERED"] = "1"
        with open(work / "proxy.log", "wb") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self._proc, self._dir = proc, work
        _RUNNING.add(self)
        try:
            self._port = self._wait_ready(port_file)
        except BaseException:
            self.stop()
            raise
        return self.url

    def _wait_ready(self, port_file: Path) -> int:
        assert self._proc is not None
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"proxy.py exited early:\n{self.log()}")
            text = port_file.read_text() if port_file.exists() else ""
            if text.strip().isdigit():
                port = int(text.strip())
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", port), timeout=0.5),
                ):
                    return port
            time.sleep(0.02)
        raise RuntimeError(f"proxy.py did not start within {_START_TIMEOUT} s:\n{self.log()}")

    def stop(self) -> None:
        """Stop the proxy and every process it forked (the whole process group): its
        port now refuses connections. The log so far stays readable."""
        proc, work = self._proc, self._dir
        if proc is None:
            return
        self._proc = self._dir = None
        _RUNNING.discard(self)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        # The acceptor processes are in the same group; none may outlive the proxy.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        if work is not None:
            self._past_output += self._read_log(work)
            shutil.rmtree(work, ignore_errors=True)

    @property
    def pid(self) -> int | None:
        """The proxy's main process id, which is also its process group id (None when
        stopped): `os.killpg(pid, signal.SIGKILL)` simulates a proxy crash."""
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        """True while the proxy process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> ForwardProxy:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- addresses ----------------------------------------------------------------

    @property
    def port(self) -> int:
        """The listening port (kept after `stop()`, so `start(port)` can bring it back)."""
        if self._port is None:
            raise RuntimeError("ForwardProxy was never started")
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``, without credentials."""
        return f"http://127.0.0.1:{self.port}"

    def url_with_auth(self, user: str | None = None, password: str | None = None) -> str:
        """The proxy URL with (percent-encoded) credentials, by default the configured
        ones: ``http://user:pass@127.0.0.1:PORT``."""
        default_user, default_password = self.auth or ("", "")
        user = default_user if user is None else user
        password = default_password if password is None else password
        return f"http://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{self.port}"

    # -- observation --------------------------------------------------------------

    def log(self) -> str:
        """Everything proxy.py printed, across restarts (for failure messages)."""
        current = self._read_log(self._dir) if self._dir is not None else ""
        return self._past_output + current

    def requests(self) -> list[str]:
        """Requests the proxy let through, oldest first: ``CONNECT 127.0.0.1:8443``,
        ``GET http://127.0.0.1:5000/simple/alpha/``. Each is logged before the proxy
        contacts the target, so a client that got an answer finds its request here."""
        return [target for verdict, target in self._entries() if verdict == "allowed"]

    def denied(self) -> list[str]:
        """Requests refused with 407 (missing or wrong proxy credentials)."""
        return [target for verdict, target in self._entries() if verdict == "denied"]

    def count(self, substring: str) -> int:
        """How many let-through requests contain `substring` (e.g. ``"CONNECT "``)."""
        return sum(substring in target for target in self.requests())

    def wait_for(self, substring: str, n: int = 1, timeout: float = 5.0) -> list[str]:
        """Poll until `count(substring) >= n` (e.g. for a request whose client gave up
        before the answer); raise `TimeoutError` with the log after `timeout` s.
        Blocking: from a coroutine, ``await asyncio.to_thread(proxy.wait_for, ...)``."""
        deadline = time.monotonic() + timeout
        while True:
            matches = [t for t in self.requests() if substring in t]
            if len(matches) >= n:
                return matches
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{n} x {substring!r} not seen by the proxy:\n{self.log()}")
            time.sleep(0.02)

    def clear(self) -> None:
        """Forget the requests seen so far (e.g. after a warm-up)."""
        self._skip_lines += len(self._entries())

    def _entries(self) -> list[tuple[str, str]]:
        entries = []
        for line in self.log().splitlines(keepends=True):
            # A line still being written has no newline yet: leave it for next time.
            match = _LINE.search(line.rstrip("\n")) if line.endswith("\n") else None
            if match is not None:
                entries.append((match[1], match[2]))
        return entries[self._skip_lines :]

    @staticmethod
    def _read_log(work: Path) -> str:
        try:
            return (work / "proxy.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""


@atexit.register
def _stop_all() -> None:
    for fwd in list(_RUNNING):
        fwd.stop()
