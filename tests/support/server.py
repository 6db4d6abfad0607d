"""Run pipgate as a real process on loopback, the way users run it."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.support.process import ServiceProcess


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PipgateProcess(ServiceProcess):
    """``python -m pipgate serve`` in a subprocess, its output captured to a log file."""

    def __init__(
        self,
        *,
        upstream: str | None,
        cache_dir: Path,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        #: ``None``: the upstreams come from a ``--config`` file in ``extra_args``.
        self.upstream = upstream
        self.cache_dir = cache_dir
        self.extra_args = extra_args
        self.env = env or {}
        #: For a pipgate serving HTTPS: a client context that trusts its certificate.
        self.ssl_context = ssl_context
        self.port = free_port()
        self.log_path = cache_dir.parent / f"pipgate-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def index_url(self) -> str:
        return f"{self.url}/simple/"

    def start(self, timeout: float = 30.0) -> PipgateProcess:
        """Start and wait until ``/healthz`` answers 200."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIPGATE_")}
        env.update(self.env)
        cmd = [
            sys.executable,
            "-m",
            "pipgate",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--cache-dir",
            str(self.cache_dir),
            *(("--upstream", self.upstream) if self.upstream else ()),
            *self.extra_args,
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process lifetime
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pipgate exited early:\n{self.log()}")
            try:
                probe = self.url + "/healthz"
                with urllib.request.urlopen(probe, timeout=1, context=self.ssl_context) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"pipgate did not become healthy:\n{self.log()}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL: no clean-up at all (crash tests)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log(self) -> str:
        """Everything the process printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
