"""Benchmark pipgate against a local upstream: warm throughput, a cold herd, memory.

Everything runs on 127.0.0.1: ``bench/upstream.py`` serves random wheel-named files,
pipgate runs as a real ``python -m pipgate serve`` process in front of it, and a
raw-socket HTTP/1.1 client (threads, blocking sockets, one reused buffer per connection)
measures both. See ``bench/README.md`` for what each figure means and the targets.

Run: ``python bench/bench.py [--sizes 1,100,500] [--clients 32] [--workers 1] [--python PATH]
[--json F]``
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast
from urllib.parse import urljoin, urlsplit

MIB = 1 << 20
BUF = 1 << 20
HOST = "127.0.0.1"
JSON_TYPE = "application/vnd.pypi.simple.v1+json"
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
#: Socket timeout of the benchmark client: the longest a single read may block.
IO_TIMEOUT = 120.0
#: A warm measurement stops after this long once it made at least MIN_REQUESTS.
MEASURE_CAP = 30.0
MIN_REQUESTS = 3
TARGET_RATIO = 0.8
TARGET_RSS_MIB = 150.0


def log(message: str) -> None:
    """Progress on stderr, so stdout holds only the results."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """The benchmark could not run (a process failed to start, a request failed)."""


# --- a small, fast HTTP/1.1 client ---------------------------------------------------------


class HttpError(BenchError):
    """A malformed, cut or unexpected HTTP response."""


@dataclass
class Fetch:
    """One GET: status, body size and digest, and its timeline (``perf_counter``)."""

    status: int
    nbytes: int
    sha256: str | None
    reason: str
    t_sent: float
    t_head: float
    t_body: float
    t_end: float
    #: Response headers, names in lowercase.
    headers: dict[str, str] = field(default_factory=dict, repr=False)


class Connection:
    """One keep-alive HTTP/1.1 connection; bodies stream through one reused buffer."""

    def __init__(self, host: str, port: int, timeout: float = IO_TIMEOUT) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._rfile: io.BufferedReader | None = None
        self._view = memoryview(bytearray(BUF))
        self._t_body = 0.0

    def connect(self) -> None:
        """Open the TCP connection (done before timing starts)."""
        self.close()
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._rfile = cast(io.BufferedReader, sock.makefile("rb", buffering=64 * 1024))

    def close(self) -> None:
        """Close the connection if open."""
        if self._rfile is not None:
            self._rfile.close()
        if self._sock is not None:
            self._sock.close()
        self._sock = self._rfile = None

    def get(
        self, path: str, *, hash_body: bool = False, headers: Mapping[str, str] | None = None
    ) -> Fetch:
        """GET ``path``; the body is counted (and hashed if asked), never kept.

        ``headers`` are added to (or replace) ``Accept-Encoding: identity`` and the
        User-Agent.
        """
        if self._sock is None:
            self.connect()
        assert self._sock is not None and self._rfile is not None
        fields = {"Accept-Encoding": "identity", "User-Agent": "pipgate-bench", **(headers or {})}
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            + "".join(f"{name}: {value}\r\n" for name, value in fields.items())
            + "\r\n"
        )
        t_sent = time.perf_counter()
        self._sock.sendall(request.encode())
        status_line = self._rfile.readline(65537)
        t_head = time.perf_counter()
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            self.close()
            raise HttpError(f"GET {path}: bad status line {status_line[:80]!r}")
        received: dict[str, str] = {}
        for _ in range(256):
            line = self._rfile.readline(65537)
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            received[name.strip().lower()] = value.strip()
        digest = hashlib.sha256() if hash_body else None
        self._t_body = 0.0
        try:
            if "chunked" in received.get("transfer-encoding", "").lower():
                nbytes = self._read_chunked(digest)
            elif "content-length" in received:
                nbytes = self._read_exact(int(received["content-length"]), digest)
            else:
                nbytes = self._read_to_eof(digest)
        except (HttpError, OSError):
            self.close()
            raise
        if received.get("connection", "").lower() == "close":
            self.close()
        return Fetch(
            status=int(parts[1]),
            nbytes=nbytes,
            sha256=digest.hexdigest() if digest else None,
            reason=received.get("x-pipgate-reason", ""),
            t_sent=t_sent,
            t_head=t_head,
            t_body=self._t_body or time.perf_counter(),
            t_end=time.perf_counter(),
            headers=received,
        )

    def _take(self, limit: int, digest: Any) -> int:
        """Read at most ``limit`` body bytes once; 0 at end of stream."""
        assert self._rfile is not None
        view = self._view[: min(limit, BUF)]
        got = self._rfile.readinto1(view)
        if got and not self._t_body:
            self._t_body = time.perf_counter()
        if got and digest is not None:
            digest.update(view[:got])
        return got or 0

    def _read_exact(self, length: int, digest: Any) -> int:
        remaining = length
        while remaining:
            got = self._take(remaining, digest)
            if not got:
                raise HttpError(f"body cut short: {remaining} of {length} bytes missing")
            remaining -= got
        return length

    def _read_to_eof(self, digest: Any) -> int:
        total = 0
        while got := self._take(BUF, digest):
            total += got
        self.close()
        return total

    def _read_chunked(self, digest: Any) -> int:
        assert self._rfile is not None
        total = 0
        while True:
            line = self._rfile.readline(1024)
            if not line:
                raise HttpError("chunked body cut short")
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                for _ in range(256):
                    if self._rfile.readline(65537) in (b"\r\n", b"\n", b""):
                        break
                return total
            total += self._read_exact(size, digest)
            if self._rfile.readline(3) not in (b"\r\n", b"\n"):
                raise HttpError("bad chunk terminator")


def http_json(url: str, *, method: str = "GET", accept: str = "application/json") -> Any:
    """A small control request (pages, stats) through urllib."""
    request = urllib.request.Request(url, method=method, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


# --- processes and memory ------------------------------------------------------------------


def free_port() -> int:
    """A currently free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def start_process(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own process group, output to ``log_path``."""
    with log_path.open("ab") as out:
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=REPO,
        )


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group we started (then SIGKILL after 10 s)."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # stray workers of an exited leader


def tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout: float) -> None:
    """Poll ``url`` until it answers 200; fail early if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{url}: process exited with {proc.returncode}\n{tail(log_path)}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.1)
    raise BenchError(f"{url}: not healthy after {timeout:.0f} s\n{tail(log_path)}")


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants, from /proc (children files, else ppid scan)."""
    if Path(f"/proc/{root}/task").exists() and any(Path(f"/proc/{root}/task").glob("*/children")):
        pids, todo = [], [root]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            for children in Path(f"/proc/{pid}/task").glob("*/children"):
                with contextlib.suppress(OSError):
                    todo.extend(int(c) for c in children.read_text().split())
        return pids
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(parents.get(pid, []))
    return pids


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB; (0, 0) if it is gone.

    PSS splits pages shared between processes (forked workers) among them, so its sum
    over a process tree does not count shared pages twice as the RSS sum does.
    """
    with contextlib.suppress(OSError, ValueError):
        rss = pss = 0
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
        return rss, pss
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
                return rss, rss
    return 0, 0


class RssSampler:
    """Samples the summed RSS and PSS of a process tree every ``interval`` s in a thread."""

    def __init__(self, root: int, interval: float = 0.05) -> None:
        self.root = root
        self.interval = interval
        self.peak_rss_kib = self.peak_pss_kib = self.peak_procs = self.samples = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)

    def sample(self) -> None:
        """Take one sample now."""
        pids = process_tree(self.root)
        usage = [memory_kib(pid) for pid in pids]
        rss, pss = sum(u[0] for u in usage), sum(u[1] for u in usage)
        with self._lock:
            self.samples += 1
            self.peak_rss_kib = max(self.peak_rss_kib, rss)
            self.peak_pss_kib = max(self.peak_pss_kib, pss)
            self.peak_procs = max(self.peak_procs, len(pids))

    def reset(self) -> None:
        """Start a new phase: forget the peaks."""
        with self._lock:
            self.peak_rss_kib = self.peak_pss_kib = self.peak_procs = self.samples = 0

    def peaks(self) -> dict[str, Any]:
        """Peaks since the last reset (one fresh sample included), sums in MiB."""
        self.sample()
        with self._lock:
            return {
                "rss_mib": round(self.peak_rss_kib / 1024, 1),
                "pss_mib": round(self.peak_pss_kib / 1024, 1),
                "procs": self.peak_procs,
                "samples": self.samples,
            }

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


# --- the setup -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchFile:
    """One generated distribution file."""

    size_mib: int
    project: str
    filename: str
    size: int
    sha256: str


def make_file(directory: Path, size_mib: int, project: str | None = None) -> BenchFile:
    """Write a seeded-random wheel-named file of ``size_mib`` MiB; hash it while writing.
    Seeded by the size (``benchpkg<N>mb``), or by ``project`` when given (files of one
    size that must differ: same bytes would be one blob)."""
    rng = random.Random(project if project is not None else size_mib)
    project = project if project is not None else f"benchpkg{size_mib}mb"
    filename = f"{project}-1.0-py3-none-any.whl"
    digest = hashlib.sha256()
    size = size_mib * MIB
    with (directory / filename).open("wb") as out:
        left = size
        while left:
            block = rng.randbytes(min(left, 16 * MIB))
            digest.update(block)
            out.write(block)
            left -= len(block)
    return BenchFile(size_mib, project, filename, size, digest.hexdigest())


class Upstream:
    """``bench/upstream.py`` as a child process."""

    def __init__(
        self,
        directory: Path,
        workdir: Path,
        python: str,
        projects: Mapping[str, int] | None = None,
    ) -> None:
        self.port = free_port()
        self.base = f"http://{HOST}:{self.port}"
        self.log_path = workdir / "upstream.log"
        argv = [
            python,
            str(HERE / "upstream.py"),
            "--port",
            str(self.port),
            "--dir",
            str(directory),
        ]
        # Page-only projects with this many synthetic files each (pages.py).
        for name, count in (projects or {}).items():
            argv += ["--project", f"{name}:{count}"]
        self.proc = start_process(argv, self.log_path)
        wait_healthy(f"{self.base}/_stats", self.proc, self.log_path, 30)

    def gets(self) -> dict[str, int]:
        """GETs per filename so far."""
        return dict(http_json(f"{self.base}/_stats")["file_gets"])

    def set_rate(self, bytes_per_s: int) -> None:
        """Pace later file responses (0 = unlimited)."""
        http_json(f"{self.base}/_rate?bps={bytes_per_s}", method="POST")


class Pipgate:
    """A ``python -m pipgate serve`` process on a fresh cache directory."""

    def __init__(
        self, workdir: Path, name: str, upstream: Upstream, workers: int, python: str
    ) -> None:
        self.port = free_port()
        self.base = f"http://{HOST}:{self.port}"
        self.cache_dir = workdir / f"cache-{name}"
        self.log_path = workdir / f"pipgate-{name}.log"
        argv = [
            python,
            "-m",
            "pipgate",
            "serve",
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--cache-dir",
            str(self.cache_dir),
            "--upstream",
            f"{upstream.base}/simple/",
        ]
        if workers > 1:
            argv += ["--workers", str(workers)]
        self.argv = argv
        self.proc = start_process(argv, self.log_path)
        wait_healthy(f"{self.base}/healthz", self.proc, self.log_path, 60)

    def file_path(self, bench_file: BenchFile) -> str:
        """The path of ``bench_file`` on pipgate, from pipgate's own JSON project page."""
        page_url = f"{self.base}/simple/{bench_file.project}/"
        page = http_json(page_url, accept=JSON_TYPE)
        for entry in page.get("files", []):
            if entry.get("filename") == bench_file.filename:
                if entry.get("hashes", {}).get("sha256") != bench_file.sha256:
                    raise BenchError(f"{page_url}: wrong sha256 for {bench_file.filename}")
                url = urlsplit(urljoin(page_url, entry["url"]))
                if (url.hostname, url.port) != (HOST, self.port):
                    raise BenchError(f"{page_url}: file URL {entry['url']} is not on pipgate")
                return str(url.path)
        raise BenchError(f"{page_url}: no {bench_file.filename}")

    def log_problems(self) -> list[str]:
        """Log lines at WARNING or above (tracebacks included)."""
        return [
            line
            for line in tail(self.log_path, 100_000).splitlines()
            if any(w in line for w in (" WARNING ", " ERROR ", " CRITICAL ", "Traceback"))
        ]


# --- the measurements ----------------------------------------------------------------------


def timed_gets(port: int, path: str, size: int, count: int) -> tuple[float, int]:
    """``count`` sequential GETs on one keep-alive connection: (MiB/s, requests made)."""
    conn = Connection(HOST, port)
    conn.connect()
    try:
        start = time.perf_counter()
        done = 0
        while done < count:
            fetch = conn.get(path)
            if fetch.status != 200 or fetch.nbytes != size:
                raise HttpError(
                    f"GET :{port}{path}: status {fetch.status}, {fetch.nbytes} of {size} bytes"
                    f" {fetch.reason}"
                )
            done += 1
            if done >= MIN_REQUESTS and time.perf_counter() - start > MEASURE_CAP:
                break
        elapsed = time.perf_counter() - start
    finally:
        conn.close()
    return done * size / MIB / elapsed, done


@dataclass
class WarmResult:
    """Warm throughput for one file size (medians over the rounds), and the cold GET."""

    size_mib: int
    requests: int
    rounds: int
    direct_mib_s: float
    pipgate_mib_s: float
    ratio: float
    cold_mib_s: float
    direct_ms_per_request: float
    pipgate_ms_per_request: float
    direct_all: list[float] = field(default_factory=list)
    pipgate_all: list[float] = field(default_factory=list)


def warm_phase(
    pipgate: Pipgate, upstream: Upstream, files: list[BenchFile], rounds: int, min_mib: int
) -> list[WarmResult]:
    """Fetch each file once (the cold GET), then time direct and pipgate GETs, alternating."""
    results = []
    for bench_file in files:
        path = pipgate.file_path(bench_file)
        conn = Connection(HOST, pipgate.port)
        try:
            conn.connect()
            fetch = conn.get(path, hash_body=True)
        finally:
            conn.close()
        cold = bench_file.size_mib / (fetch.t_end - fetch.t_sent)
        if fetch.status != 200 or fetch.sha256 != bench_file.sha256:
            raise HttpError(f"warm-up GET {path}: status {fetch.status} {fetch.reason}, bad body")
        count = max(MIN_REQUESTS, math.ceil(min_mib / bench_file.size_mib))
        direct_path = f"/direct/{bench_file.filename}"
        direct: list[float] = []
        proxied: list[float] = []
        made = 0
        for _ in range(rounds):
            rate, _ = timed_gets(upstream.port, direct_path, bench_file.size, count)
            direct.append(rate)
            rate, made = timed_gets(pipgate.port, path, bench_file.size, count)
            proxied.append(rate)
        d, p = statistics.median(direct), statistics.median(proxied)
        results.append(
            WarmResult(
                size_mib=bench_file.size_mib,
                requests=made,
                rounds=rounds,
                direct_mib_s=round(d),
                pipgate_mib_s=round(p),
                ratio=round(p / d, 2),
                cold_mib_s=round(cold),
                direct_ms_per_request=round(bench_file.size_mib / d * 1000, 2),
                pipgate_ms_per_request=round(bench_file.size_mib / p * 1000, 2),
                direct_all=[round(x) for x in direct],
                pipgate_all=[round(x) for x in proxied],
            )
        )
        log(f"warm {bench_file.size_mib} MiB: direct {d:.0f} MiB/s, pipgate {p:.0f} MiB/s")
    return results


@dataclass
class Crowd:
    """What simultaneous GETs of one file got: good bodies and errors."""

    ok: list[Fetch]
    errors: list[str]
    start: float

    def summary(self, size: int) -> dict[str, Any]:
        """Wall time and aggregate rate to all clients, in seconds and MiB/s."""
        if not self.ok:
            return {"wall_s": math.nan, "aggregate_mib_s": 0}
        wall = max(f.t_end for f in self.ok) - self.start
        return {
            "wall_s": round(wall, 2),
            "aggregate_mib_s": round(len(self.ok) * size / MIB / wall),
        }


def crowd_get(
    targets: list[tuple[int, str]], bench_file: BenchFile, clients: int
) -> tuple[Crowd, list[int]]:
    """``clients`` threads, client i on ``targets[i % len(targets)]`` (port, path), connect,
    meet at a barrier, then all GET and hash: the crowd and, per target, its correct
    bodies (one target: one server; several: a fleet's replicas)."""
    barrier = threading.Barrier(clients + 1)
    results: list[Fetch | BaseException | None] = [None] * clients

    def client(i: int) -> None:
        port, path = targets[i % len(targets)]
        conn = Connection(HOST, port)
        try:
            conn.connect()
            barrier.wait(30)
            results[i] = conn.get(path, hash_body=True)
        except BaseException as exc:
            results[i] = exc
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait(30)
    start = time.perf_counter()
    deadline = start + 4 * IO_TIMEOUT
    for thread in threads:
        thread.join(max(0.0, deadline - time.perf_counter()))
    expected = (200, bench_file.size, bench_file.sha256)
    ok: list[Fetch] = []
    per_target = [0] * len(targets)
    errors: list[str] = []
    for i, result in enumerate(results):
        where = f"client {i} on :{targets[i % len(targets)][0]}"
        if isinstance(result, Fetch) and (result.status, result.nbytes, result.sha256) == expected:
            ok.append(result)
            per_target[i % len(targets)] += 1
        elif isinstance(result, Fetch):
            digest = "ok" if result.sha256 == bench_file.sha256 else "WRONG"
            errors.append(
                f"{where}: status {result.status} {result.reason}, "
                f"{result.nbytes} of {bench_file.size} bytes, sha256 {digest}"
            )
        else:
            errors.append(f"{where}: {result!r}" if result else f"{where}: still running")
    return Crowd(ok, errors, start), per_target


class BlobWatch:
    """Notes when a blob appears in pipgate's cache (``blobs/ab/cd/<sha256>``), ±10 ms."""

    def __init__(self, cache_dir: Path, sha256: str) -> None:
        self.path = cache_dir / "blobs" / sha256[:2] / sha256[2:4] / sha256
        self.seen: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="blob", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            stopping = self._stop.wait(0.01)
            if self.path.exists():
                self.seen = time.perf_counter()
                return

    def stop(self) -> None:
        """Stop watching."""
        self._stop.set()
        self._thread.join(5)


@dataclass
class HerdResult:
    """The cold herd on one uncached file, and two baselines on the same file."""

    size_mib: int
    clients: int
    upstream_rate_mib_s: float
    upstream_downloads: int
    ok_bodies: int
    errors: list[str]
    ttfb_first_s: float
    ttfb_last_s: float
    headers_first_s: float
    headers_last_s: float
    done_first_s: float
    done_last_s: float
    blob_committed_s: float | None
    wall_s: float
    aggregate_mib_s: float
    cached: dict[str, Any] = field(default_factory=dict)
    direct: dict[str, Any] = field(default_factory=dict)


def herd_phase(
    pipgate: Pipgate, upstream: Upstream, bench_file: BenchFile, clients: int, rate_mib_s: float
) -> HerdResult:
    """All clients at once on the uncached file, the upstream paced to ``rate_mib_s``."""
    path = pipgate.file_path(bench_file)
    before = upstream.gets().get(bench_file.filename, 0)
    watch = BlobWatch(pipgate.cache_dir, bench_file.sha256)
    upstream.set_rate(int(rate_mib_s * MIB))
    try:
        crowd, _ = crowd_get([(pipgate.port, path)], bench_file, clients)
    finally:
        upstream.set_rate(0)
        watch.stop()
    downloads = upstream.gets().get(bench_file.filename, 0) - before
    ttfb = sorted(f.t_body - f.t_sent for f in crowd.ok) or [math.nan]
    heads = sorted(f.t_head - f.t_sent for f in crowd.ok) or [math.nan]
    done = sorted(f.t_end - crowd.start for f in crowd.ok) or [math.nan]
    summary = crowd.summary(bench_file.size)
    return HerdResult(
        size_mib=bench_file.size_mib,
        clients=clients,
        upstream_rate_mib_s=rate_mib_s,
        upstream_downloads=downloads,
        ok_bodies=len(crowd.ok),
        errors=crowd.errors,
        ttfb_first_s=round(ttfb[0], 3),
        ttfb_last_s=round(ttfb[-1], 3),
        headers_first_s=round(heads[0], 3),
        headers_last_s=round(heads[-1], 3),
        done_first_s=round(done[0], 2),
        done_last_s=round(done[-1], 2),
        blob_committed_s=None if watch.seen is None else round(watch.seen - crowd.start, 2),
        wall_s=summary["wall_s"],
        aggregate_mib_s=summary["aggregate_mib_s"],
    )


def herd_baseline(port: int, path: str, bench_file: BenchFile, clients: int) -> dict[str, Any]:
    """The same crowd on a file served with sendfile (pipgate's cache, or upstream)."""
    crowd, _ = crowd_get([(port, path)], bench_file, clients)
    return {"ok_bodies": len(crowd.ok), "errors": crowd.errors, **crowd.summary(bench_file.size)}


# --- reporting -----------------------------------------------------------------------------


def mark(ok: bool) -> str:
    """A target verdict."""
    return "ok" if ok else "MISS"


def memory_line(memory: dict[str, Any]) -> str:
    """Peak RSS (the target) with PSS, process count and the idle figure."""
    peak, idle = memory["peak"], memory["idle"]
    return (
        f"{peak['rss_mib']:>6} MiB  {mark(peak['rss_mib'] < TARGET_RSS_MIB)} (< {TARGET_RSS_MIB:g})"
        f"  [PSS {peak['pss_mib']} MiB, {peak['procs']} processes; idle RSS {idle['rss_mib']} MiB]"
    )


def report(result: dict[str, Any]) -> str:
    """The results as a plain-text table."""
    lines = [
        f"pipgate bench {result['date']}  ({result['machine']['cpus']} CPUs, "
        f"workers={result['config']['workers']}, clients, upstream and pipgate share the CPUs)",
        f"pipgate from {result['pipgate_module']}",
        "",
        "warm throughput, median of rounds (MiB = 2^20 bytes; ms = per request)",
        f"{'size':>9} {'requests':>8} {'direct MiB/s':>12} {'pipgate MiB/s':>13} {'ratio':>5} "
        f"{'direct ms':>10} {'pipgate ms':>10} {'cold MiB/s':>10}",
    ]
    for warm in result["warm"]:
        lines.append(
            f"{warm['size_mib']:>5} MiB {warm['requests']:>8} {warm['direct_mib_s']:>12} "
            f"{warm['pipgate_mib_s']:>13} {warm['ratio']:>5.2f} "
            f"{warm['direct_ms_per_request']:>10.2f} {warm['pipgate_ms_per_request']:>10.2f} "
            f"{warm['cold_mib_s']:>10}  {mark(warm['ratio'] >= TARGET_RATIO)} (>= {TARGET_RATIO})"
        )
    memory = result["memory"]
    lines += [
        f"warm peak RSS (all pipgate processes) {memory_line(memory['warm'])}",
        "",
    ]
    herd = result["herd"]
    rate = f"{herd['upstream_rate_mib_s']:g} MiB/s" if herd["upstream_rate_mib_s"] else "unlimited"
    lines += [
        f"cold herd: {herd['clients']} clients, {herd['size_mib']} MiB file, upstream paced "
        f"at {rate}",
        f"  upstream downloads      {herd['upstream_downloads']:>8}  "
        f"{mark(herd['upstream_downloads'] == 1)} (== 1)",
        f"  correct sha256 bodies   {herd['ok_bodies']:>5}/{herd['clients']:<2}  "
        f"{mark(herd['ok_bodies'] == herd['clients'])}",
        f"  TTFB first / last       {herd['ttfb_first_s']:.3f} / {herd['ttfb_last_s']:.3f} s "
        f"(headers {herd['headers_first_s']:.3f} / {herd['headers_last_s']:.3f} s)",
        f"  clients done first/last {herd['done_first_s']:.2f} / {herd['done_last_s']:.2f} s "
        f"(blob committed at {herd['blob_committed_s']} s)",
        f"  wall time               {herd['wall_s']:>8} s  "
        f"({herd['aggregate_mib_s']} MiB/s to all clients together)",
        f"  peak RSS                {memory_line(memory['herd'])}",
    ]
    if herd["cached"]:
        cached, direct = herd["cached"], herd["direct"]
        lines += [
            "  baselines, same crowd on a sendfile'd file:",
            f"    pipgate, now cached   {cached['wall_s']:>8} s  ({cached['aggregate_mib_s']}"
            f" MiB/s, {cached['ok_bodies']}/{herd['clients']} ok, peak RSS "
            f"{memory['herd']['cached_peak']['rss_mib']} MiB)",
            f"    upstream direct       {direct['wall_s']:>8} s  ({direct['aggregate_mib_s']}"
            f" MiB/s, {direct['ok_bodies']}/{herd['clients']} ok)",
        ]
        lines += [f"  error: {e}" for e in cached["errors"][:5] + direct["errors"][:5]]
    lines += [f"  error: {e}" for e in herd["errors"][:10]]
    if result["upstream_extra_gets"]:
        lines.append(f"upstream fetched some file more than once: {result['upstream_extra_gets']}")
    if result["pipgate_log_problems"]:
        lines.append(f"pipgate logged {len(result['pipgate_log_problems'])} warnings/errors:")
        lines += [f"  {line}" for line in result["pipgate_log_problems"][:10]]
    lines.append(f"correctness: {'PASS' if result['passed'] else 'FAIL'}")
    return "\n".join(lines)


def git_describe() -> str:
    """The repository's commit, with ``-dirty`` when the tree has changes (best effort)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        rev = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return rev.stdout.strip()
    return "unknown"


def pipgate_origin(python: str) -> str:
    """Where ``python`` imports pipgate from (run in the directory pipgate is started in,
    so it tells which installation a run measured)."""
    try:
        found = subprocess.run(
            [python, "-c", "import pipgate; print(pipgate.__file__)"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
            cwd=REPO,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise BenchError(f"{python} cannot import pipgate: {exc}") from exc
    return str(Path(found.stdout.strip()).parent)


def parse_rate(text: str) -> float:
    """MiB/s from ``200``, ``200MB/s`` or ``200MiB/s`` (0 = unlimited)."""
    value = text.strip().lower()
    for suffix in ("mib/s", "mb/s", "mib", "mb", "m"):
        value = value.removesuffix(suffix)
    try:
        rate = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a rate like 200MB/s, got {text!r}") from None
    if rate < 0:
        raise argparse.ArgumentTypeError("the rate must be >= 0")
    return rate


def parse_sizes(text: str) -> list[int]:
    """Sizes in MiB from ``1,100,500``."""
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 1,100,500, got {text!r}") from None
    if not sizes or sizes[0] <= 0:
        raise argparse.ArgumentTypeError("sizes must be positive integers (MiB)")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=parse_sizes, default=[1, 100, 500], help="MiB, e.g. 1,100,500"
    )
    parser.add_argument("--clients", type=int, default=32, help="concurrent herd clients")
    parser.add_argument("--workers", type=int, default=1, help="pipgate --workers (if > 1)")
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter that runs `-m pipgate serve` (another venv's pipgate; default: this one)",
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--workdir", type=Path, help="parent of the temp dir (default: /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (files, logs)")
    parser.add_argument(
        "--herd-rate",
        type=parse_rate,
        default=200.0,
        help="upstream pace during the herd, MiB/s per connection (0 = unlimited; default 200)",
    )
    parser.add_argument("--herd-size", type=int, help="herd file MiB (default: largest size)")
    parser.add_argument("--rounds", type=int, default=5, help="warm rounds (median reported)")
    parser.add_argument(
        "--min-mib", type=int, default=1024, help="MiB per warm measurement (>= 3 requests)"
    )
    parser.add_argument(
        "--no-baselines",
        dest="baselines",
        action="store_false",
        help="skip the herd baselines (the same crowd on the cached file and direct)",
    )
    parser.add_argument("--timeout", type=float, default=900, help="abort after this many s")
    return parser


@contextlib.contextmanager
def watchdog(seconds: float) -> Iterator[None]:
    """Interrupt the main thread (so cleanup runs) if the run takes too long."""
    timer = threading.Timer(seconds, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Set up, measure, and return the results (processes are stopped on the way out)."""
    python = sys.executable
    origin = pipgate_origin(args.python)
    log(f"pipgate from {origin}")
    files_dir = workdir / "files"
    files_dir.mkdir()
    herd_size = args.herd_size or max(args.sizes)
    log(f"writing {sum(set(args.sizes) | {herd_size})} MiB of files to {files_dir}")
    files = {size: make_file(files_dir, size) for size in sorted(set(args.sizes) | {herd_size})}
    manifest = {f.filename: {"sha256": f.sha256, "size": f.size} for f in files.values()}
    (files_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))

    procs: list[subprocess.Popen[bytes]] = []
    problems: list[str] = []
    try:
        upstream = Upstream(files_dir, workdir, python)
        procs.append(upstream.proc)

        log("warm phase: starting pipgate")
        pipgate = Pipgate(workdir, "warm", upstream, args.workers, args.python)
        procs.append(pipgate.proc)
        with RssSampler(pipgate.proc.pid) as sampler:
            warm_memory = {"idle": sampler.peaks()}
            sampler.reset()
            warm = warm_phase(
                pipgate, upstream, [files[s] for s in args.sizes], args.rounds, args.min_mib
            )
            warm_memory["peak"] = sampler.peaks()
        problems += pipgate.log_problems()
        command = " ".join(pipgate.argv[1:]).replace(str(workdir), "$WORKDIR")
        stop_process(pipgate.proc)

        log(f"herd phase: fresh pipgate, {args.clients} clients on the {herd_size} MiB file")
        pipgate = Pipgate(workdir, "herd", upstream, args.workers, args.python)
        procs.append(pipgate.proc)
        with RssSampler(pipgate.proc.pid) as sampler:
            herd_memory = {"idle": sampler.peaks()}
            sampler.reset()
            herd = herd_phase(pipgate, upstream, files[herd_size], args.clients, args.herd_rate)
            herd_memory["peak"] = sampler.peaks()
            if args.baselines:
                log("herd baselines: the same crowd on the cached file, then direct")
                sampler.reset()
                path = pipgate.file_path(files[herd_size])
                herd.cached = herd_baseline(pipgate.port, path, files[herd_size], args.clients)
                herd_memory["cached_peak"] = sampler.peaks()
                direct_path = f"/direct/{files[herd_size].filename}"
                herd.direct = herd_baseline(
                    upstream.port, direct_path, files[herd_size], args.clients
                )
        problems += pipgate.log_problems()
        log(f"herd: {herd.ok_bodies}/{herd.clients} ok, {herd.upstream_downloads} download(s)")
        gets = upstream.gets()
    finally:
        for proc in reversed(procs):
            stop_process(proc)

    # each pipgate has its own cache: one fetch per phase that used the file
    expected = {files[s].filename: 1 for s in args.sizes}
    expected[files[herd_size].filename] = expected.get(files[herd_size].filename, 0) + 1
    extra = {name: n for name, n in gets.items() if n > expected.get(name, 0)}
    baselines_ok = all(not b or b["ok_bodies"] == args.clients for b in (herd.cached, herd.direct))
    passed = (
        herd.upstream_downloads == 1
        and herd.ok_bodies == args.clients
        and baselines_ok
        and not extra
    )
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "pipgate_command": command,
        "pipgate_python": args.python,
        "pipgate_module": origin,
        "git": git_describe(),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "config": {
            "sizes_mib": args.sizes,
            "clients": args.clients,
            "workers": args.workers,
            "rounds": args.rounds,
            "min_mib": args.min_mib,
            "herd_rate_mib_s": args.herd_rate,
        },
        "warm": [asdict(w) for w in warm],
        "herd": asdict(herd),
        "memory": {"warm": warm_memory, "herd": herd_memory},
        "upstream_file_gets": gets,
        "upstream_extra_gets": extra,
        "pipgate_log_problems": problems,
        "passed": passed,
        "targets": {"warm_ratio": TARGET_RATIO, "peak_rss_mib": TARGET_RSS_MIB},
        "rss_ok": all(m["peak"]["rss_mib"] < TARGET_RSS_MIB for m in (warm_memory, herd_memory)),
        "warm_ok": all(w.ratio >= TARGET_RATIO for w in warm),
    }


def run_in_workdir(
    name: str,
    args: argparse.Namespace,
    run: Callable[[argparse.Namespace, Path], dict[str, Any]],
    say: Callable[[str], None] = log,
) -> tuple[dict[str, Any] | None, str | None]:
    """``run(args, workdir)`` in a fresh temp dir (removed after, unless ``--keep``)
    under the ``--timeout`` watchdog: the results, or ``None`` and why it could not run."""
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"pipgate-{name}-", dir=args.workdir))
    # A shell starts background jobs with SIGINT ignored; the watchdog (and Ctrl-C) need it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with watchdog(args.timeout):
            return run(args, workdir), None
    except (BenchError, OSError, subprocess.SubprocessError) as exc:
        say(f"failed: {exc}")
        return None, f"could not run: {str(exc).splitlines()[0][:200] if str(exc) else exc!r}"
    except KeyboardInterrupt:
        say("interrupted (or --timeout)")
        return None, f"interrupted or timed out after --timeout {args.timeout:g} s"
    finally:
        if args.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    """Run the benchmark; exit 1 when a correctness check fails, 2 when it cannot run."""
    args = build_parser().parse_args()
    result, _ = run_in_workdir("bench", args, run)
    if result is None:
        return 2
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["passed"] else 1


def output_arguments(parser: argparse.ArgumentParser, *, timeout: float, markdown: bool) -> None:
    """The options every report-writing script shares: where the JSON (and Markdown)
    go, the temp dir, and the watchdog (``run_in_workdir`` reads them)."""
    parser.add_argument("--json", type=Path, help="also write every figure as JSON here")
    if markdown:
        parser.add_argument("--markdown", type=Path, help="also write the report here")
    parser.add_argument("--workdir", type=Path, help="parent of the temp dir (default: /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, caches)")
    parser.add_argument(
        "--timeout", type=float, default=timeout, help="abort after this many s"
    )


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def write_report(args: argparse.Namespace, result: dict[str, Any], report: str) -> int:
    """Print the Markdown report, write it and the JSON where asked; the exit status."""
    print(report)
    if args.markdown:
        args.markdown.write_text(report + "\n")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
