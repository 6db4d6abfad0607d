"""Load pipgate with a realistic mix of requests at several concurrency levels.

Everything runs on 127.0.0.1: ``bench/upstream.py`` serves generated projects (any
number of distinct, installable wheels with PEP 658 metadata), pipgate runs as a real
``python -m pipgate serve --workers 2`` process in front of it, and the load comes from
``wrk`` (a Lua script picks each request) or, without wrk, an aiohttp client. The mix:
project pages (JSON and HTML, ``Accept-Encoding: gzip``), ``.metadata`` files and wheels
of four sizes, about 90 % of them from a hot set cached before the measurement and the
rest never seen before (a new project's page, its metadata and a wheel). Per level it
reports throughput (req/s, MiB/s), p50/p99 latency and errors by kind, while a checker
verifies a sample of responses by sha256. Any error fails the run. See
``bench/README.md``.

Run: ``python bench/load.py [--levels 8,32,128] [--duration 20] [--short] [--json F]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import math
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import (
    HOST,
    JSON_TYPE,
    REPO,
    BenchError,
    Connection,
    HttpError,
    free_port,
    git_describe,
    machine,
    pipgate_origin,
    process_tree,
    run_in_workdir,
    wait_healthy,
)
from upstream import WheelMaker, gen_filename, gen_project, gen_version

HERE = Path(__file__).resolve().parent
MIB = 1 << 20
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: Headers of every request, as pip and uv send them.
COMMON_HEADERS = {"Accept-Encoding": "gzip", "User-Agent": "pipgate-bench-load"}
ACCEPT = {"json": JSON_TYPE, "html": "text/html"}
#: The longest any single request of the load may take (wrk's --timeout, aiohttp's).
REQUEST_TIMEOUT = 30.0
#: pipgate settings of every run (``--server-env`` adds or overrides). All clients share
#: 127.0.0.1, and the never-seen tenth of the mix asks for upstream pages faster than
#: the per-client and per-worker page fetch rates allow one address; those limits have
#: tests of their own, here they would turn the intended misses into 503s.
SERVER_ENV = {
    "PIPGATE_PAGE_FETCH_RATE": "0",
    "PIPGATE_CLIENT_PAGE_FETCH_RATE": "0",
    "PIPGATE_MAX_CLIENT_DOWNLOADS": "256",
    "PIPGATE_MAX_DOWNLOADS": "256",
}


def log(message: str, name: str = "load") -> None:
    """Progress on stderr, so stdout holds only the results."""
    print(f"[{name} {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the mix ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mix:
    """What the load asks for, and how often."""

    #: Wheel size (KiB) -> share of the file (and metadata) requests.
    sizes: Mapping[int, float] = field(
        default_factory=lambda: {10: 0.40, 100: 0.35, 1024: 0.20, 8192: 0.05}
    )
    #: Request kind -> share of the hot (cached) requests.
    kinds: Mapping[str, float] = field(
        default_factory=lambda: {"page": 0.35, "metadata": 0.25, "file": 0.40}
    )
    #: Share of JSON among page requests (the rest is HTML).
    json_share: float = 0.6
    #: Share of the requests that ask for something never asked before.
    miss: float = 0.10
    #: Hot projects per size and hot wheels per project.
    hot_projects: int = 8
    hot_versions: int = 2
    #: Wheels on each generated project's page (the upstream's --gen-versions).
    versions: int = 4


@dataclass(frozen=True)
class Req:
    """One request of the mix and what a correct answer is."""

    kind: str  # page, metadata, file
    path: str
    accept: str
    #: sha256 and size of the body (files, metadata).
    sha256: str = ""
    size: int = 0
    project: str = ""
    weight: float = 1.0
    #: For pages: (filename, sha256) of every wheel the page must list.
    listing: tuple[tuple[str, str], ...] = ()


def file_url(project: str, sha256: str, filename: str) -> str:
    """pipgate's path of a file (``/files/<project>/<sha256>/<filename>``, README)."""
    return f"/files/{project}/{sha256}/{filename}"


def wheel_requests(maker: WheelMaker, project: str, number: int) -> tuple[Req, Req]:
    """The ``.metadata`` and the wheel requests of a generated project's version."""
    wheel = maker.wheel(project, gen_version(number))
    path = file_url(project, wheel.sha256, gen_filename(project, wheel.version))
    metadata = Req(
        "metadata", path + ".metadata", "*/*", wheel.metadata_sha256, len(wheel.metadata), project
    )
    return metadata, Req("file", path, "*/*", wheel.sha256, wheel.size, project)


def page_request(maker: WheelMaker, project: str, fmt: str, versions: int) -> Req:
    """A project page request in ``fmt`` (json or html), with the wheels it must list."""
    listing = tuple(
        (gen_filename(project, gen_version(n)), maker.wheel(project, gen_version(n)).sha256)
        for n in range(versions)
    )
    return Req("page", f"/simple/{project}/", ACCEPT[fmt], project=project, listing=listing)


def hot_set(mix: Mix, maker: WheelMaker) -> list[Req]:
    """The cached part of the mix, each request weighted by how often it is asked for."""
    reqs: list[Req] = []
    projects = [
        (size, gen_project(size, f"h{i}")) for size in mix.sizes for i in range(mix.hot_projects)
    ]
    page_weight = mix.kinds["page"] / len(projects)
    for _size, project in projects:
        for fmt, share in (("json", mix.json_share), ("html", 1 - mix.json_share)):
            page = page_request(maker, project, fmt, mix.versions)
            reqs.append(_weighted(page, page_weight * share))
    for size, project in projects:
        share = mix.sizes[size] / (mix.hot_projects * mix.hot_versions)
        for number in range(mix.hot_versions):
            metadata, wheel = wheel_requests(maker, project, number)
            reqs.append(_weighted(metadata, mix.kinds["metadata"] * share))
            reqs.append(_weighted(wheel, mix.kinds["file"] * share))
    return reqs


def _weighted(req: Req, weight: float) -> Req:
    return replace(req, weight=weight)


class MissStream:
    """Never-seen requests, in install order: a new project's page, a wheel's metadata,
    the wheel. Project names carry a run token and a counter, so none repeats."""

    def __init__(self, mix: Mix, maker: WheelMaker, token: str, seed: int = 1) -> None:
        self.mix = mix
        self.maker = maker
        self.token = token
        self.rng = random.Random(seed)
        self.count = 0

    def take(self, n: int) -> list[Req]:
        """At least ``n`` requests (whole triples)."""
        sizes, weights = list(self.mix.sizes), list(self.mix.sizes.values())
        reqs: list[Req] = []
        while len(reqs) < n:
            size = self.rng.choices(sizes, weights)[0]
            project = gen_project(size, f"{self.token}{self.count}")
            self.count += 1
            fmt = "json" if self.rng.random() < self.mix.json_share else "html"
            metadata, wheel = wheel_requests(
                self.maker, project, self.rng.randrange(self.mix.versions)
            )
            page = page_request(self.maker, project, fmt, self.mix.versions)
            reqs += [page, metadata, wheel]
        return reqs


def write_requests(path: Path, reqs: Iterable[Req]) -> None:
    """One ``weight<TAB>accept<TAB>path`` line per request (read by the Lua script)."""
    with path.open("w") as out:
        for req in reqs:
            out.write(f"{req.weight:.9g}\t{req.accept}\t{req.path}\n")


# --- processes -------------------------------------------------------------------------------


def _start(argv: list[str], log_path: Path, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own process group (so a kill reaches its children)."""
    with log_path.open("ab") as out:
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=REPO,
            env=dict(env),
        )


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def stop_group(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM the process group, SIGKILL after 10 s; then SIGKILL any straggler."""
    if proc is None:
        return
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        _signal_group(proc, sig)
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    _signal_group(proc, signal.SIGKILL)


def _http_json(url: str, method: str = "GET", timeout: float = 10.0) -> Any:
    request = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


class FakeUpstream:
    """``bench/upstream.py`` serving generated projects (and maybe faults)."""

    def __init__(self, workdir: Path, *, versions: int, extra: Iterable[str] = ()) -> None:
        self.port = free_port()
        self.base = f"http://{HOST}:{self.port}"
        self.log_path = workdir / "upstream.log"
        files = workdir / "upstream-files"
        files.mkdir(exist_ok=True)
        argv = [sys.executable, str(HERE / "upstream.py"), "--port", str(self.port)]
        argv += ["--dir", str(files), "--gen-versions", str(versions), *extra]
        self.proc = _start(argv, self.log_path, os.environ)
        wait_healthy(f"{self.base}/_stats", self.proc, self.log_path, 30)

    @property
    def index_url(self) -> str:
        return f"{self.base}/simple/"

    def stats(self) -> dict[str, Any]:
        """GETs of generated projects by target, and the faults injected."""
        return dict(_http_json(f"{self.base}/_stats"))

    def set_faults(self, rate: float) -> None:
        """Spoil this fraction of the later responses (0 = none)."""
        _http_json(f"{self.base}/_faults?rate={rate}", method="POST")

    def stop(self) -> None:
        stop_group(self.proc)


class PipgateServer:
    """``<python> -m pipgate serve`` as its own process group, restartable on its port."""

    def __init__(
        self,
        workdir: Path,
        upstream_url: str,
        *,
        workers: int,
        python: str,
        env: Mapping[str, str],
        name: str = "pipgate",
    ) -> None:
        self.port = free_port()
        self.base = f"http://{HOST}:{self.port}"
        self.cache_dir = workdir / f"cache-{name}"
        self.log_path = workdir / f"{name}.log"
        self.argv = [python, "-m", "pipgate", "serve", "--host", HOST, "--port", str(self.port)]
        self.argv += ["--cache-dir", str(self.cache_dir), "--upstream", upstream_url]
        if workers > 1:
            self.argv += ["--workers", str(workers)]
        self.workers = workers
        clean = {k: v for k, v in os.environ.items() if not k.startswith("PIPGATE_")}
        self.env = {**clean, **env}
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 60.0) -> None:
        """Start (or start again, on the same port and cache) and wait for /healthz and
        for every worker to be up."""
        self.proc = _start(self.argv, self.log_path, self.env)
        self.starts += 1
        wait_healthy(f"{self.base}/healthz", self.proc, self.log_path, timeout)
        self.wait_workers(timeout)

    def wait_workers(self, timeout: float) -> list[int]:
        """Wait until ``workers`` worker processes run; their pids."""
        deadline = time.monotonic() + timeout
        while True:
            workers = self.worker_pids()
            if self.workers <= 1 or len(workers) >= self.workers:
                return workers
            if time.monotonic() > deadline:
                raise BenchError(f"pipgate: {len(workers)} of {self.workers} workers up")
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def worker_pids(self) -> list[int]:
        """The workers (children of the supervisor), or [] with one process."""
        if self.proc is None or self.workers <= 1:
            return []
        return sorted(pid for pid in process_tree(self.proc.pid) if pid != self.proc.pid)

    def processes(self) -> dict[str, int]:
        """Role -> pid: ``supervisor`` and ``worker-<pid>`` (or ``server`` alone)."""
        if self.proc is None:
            return {}
        if self.workers <= 1:
            return {"server": self.proc.pid}
        roles = {"supervisor": self.proc.pid}
        roles.update({f"worker-{pid}": pid for pid in self.worker_pids()})
        return roles

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill_group(self) -> None:
        """SIGKILL the supervisor and every worker at once (no clean-up at all)."""
        if self.proc is not None:
            _signal_group(self.proc, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)

    def stop(self) -> None:
        stop_group(self.proc)

    def metrics(self) -> dict[tuple[str, str], float]:
        """Counters from /metrics: (name, labels) -> value (summed over the workers)."""
        with urllib.request.urlopen(f"{self.base}/metrics", timeout=10) as response:
            text = response.read().decode()
        values: dict[tuple[str, str], float] = {}
        for line in text.splitlines():
            match = re.match(r"^(pipgate_\w+_total)(?:\{(.*)\})? ([0-9.eE+-]+)$", line)
            if match:
                key = (match.group(1), match.group(2) or "")
                values[key] = values.get(key, 0.0) + float(match.group(3))
        return values

    def log_text(self, since: int = 0) -> str:
        """What pipgate logged after byte offset ``since``."""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(since)
                return fh.read().decode(errors="replace")
        except OSError:
            return ""

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0


@dataclass
class LogProblems:
    """WARNING and ERROR lines of a pipgate log, grouped by kind."""

    #: ``error: <exception or message>`` / ``warning: <message>`` -> count.
    kinds: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return sum(n for k, n in self.kinds.items() if k.startswith("error"))


#: Variable parts of a log message, blanked to group lines by kind (in this order).
_VARIABLE = (
    (re.compile(r"detail=([A-Za-z_]+).*"), r"detail=\1 …"),
    (re.compile(r"https?://\S+"), "URL"),
    (re.compile(r"gen[-_][0-9a-z_.-]+"), "NAME"),
    (re.compile(r"\b[0-9a-f]{8,}\b"), "HEX"),
    (re.compile(r"\d+"), "N"),
)


def _kind_of(message: str) -> str:
    for pattern, replacement in _VARIABLE:
        message = pattern.sub(replacement, message)
    return message[:140]


_LINE = re.compile(r"^\S+ \S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) (\S+) \[[^\]]*\] (.*)$")


def log_problems(text: str) -> LogProblems:
    """Group the WARNING/ERROR lines of a text log: an ERROR followed by a traceback is
    named by the exception that ends it, other lines by their message."""
    found = LogProblems()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        match = _LINE.match(line)
        if match is None or match.group(1) in ("DEBUG", "INFO"):
            continue
        level, logger, message = match.groups()
        what = f"{logger}: {_kind_of(message)}"
        if i + 1 < len(lines) and lines[i + 1].startswith("Traceback"):
            for follow in lines[i + 2 : i + 200]:
                if follow and not follow[0].isspace() and not follow.startswith("During"):
                    if _LINE.match(follow):
                        break
                    what = f"{logger}: {follow[:160]}"
        kind = f"{'warning' if level == 'WARNING' else 'error'}: {what}"
        found.kinds[kind] += 1
        if len(found.examples) < 10 and found.kinds[kind] == 1:
            found.examples.append(f"{line[:23]} {kind}"[:300])
    return found


def labels(text: str) -> dict[str, str]:
    """``kind="file",result="hit"`` -> a dict."""
    return dict(re.findall(r'(\w+)="([^"]*)"', text))


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU time of these processes so far."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


# --- correctness: what a right answer is -------------------------------------------------------


def page_error(req: Req, status: int, body: bytes) -> str | None:
    """Why this page answer is wrong (an error kind), or None: it must list exactly the
    project's wheels with their sha256."""
    if status != 200:
        return f"status_{status}"
    try:
        if req.accept == JSON_TYPE:
            page = json.loads(body)
            listed = {f["filename"]: f["hashes"]["sha256"] for f in page["files"]}
        else:
            text = body.decode()
            listed = dict(re.findall(r'href="[^"]*/([^/"#]+)#sha256=([0-9a-f]{64})"', text))
    except (ValueError, KeyError, TypeError):
        return "bad_page"
    return None if listed == dict(req.listing) else "wrong_page"


def fetch_page(port: int, req: Req, timeout: float) -> tuple[int, bytes]:
    """GET a page whole (gunzipped): (status, body)."""
    headers = {**COMMON_HEADERS, "Accept": req.accept}
    request = urllib.request.Request(f"http://{HOST}:{port}{req.path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, body = response.status, response.read()
            encoding = response.headers.get("Content-Encoding")
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    return status, gzip.decompress(body) if encoding == "gzip" else body


def fetch_checked(conn: Connection, req: Req) -> tuple[int, str | None]:
    """GET ``req``: (bytes, error kind or None). File and metadata bodies are hashed
    while streaming on ``conn``; pages are read whole and compared with their listing."""
    try:
        if req.kind == "page":
            status, body = fetch_page(conn.port, req, conn.timeout)
            return len(body), page_error(req, status, body)
        headers = {**COMMON_HEADERS, "Accept": req.accept}
        fetch = conn.get(req.path, hash_body=True, headers=headers)
        if fetch.status != 200:
            return fetch.nbytes, f"status_{fetch.status}"
        if fetch.nbytes != req.size:
            return fetch.nbytes, "wrong_size"
        return fetch.nbytes, None if fetch.sha256 == req.sha256 else "wrong_sha256"
    except TimeoutError:
        return 0, "timeout"
    except HttpError:
        return 0, "short_body"
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        return 0, f"connection_{type(exc).__name__}"


class Checker:
    """Verifies a sample of the mix while the load runs: files and metadata by sha256,
    pages by the hashes they list. Sequential, on its own connection, at most
    ``rate`` requests a second."""

    def __init__(self, port: int, hot: list[Req], misses: list[Req], rate: float) -> None:
        self.port = port
        self.hot = [r for r in hot if r.kind != "page"] + [r for r in hot if r.kind == "page"]
        self.misses = misses
        self.rate = rate
        self.checked = 0
        self.errors: Counter[str] = Counter()
        self.examples: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="checker", daemon=True)
        self._rng = random.Random(7)

    def __enter__(self) -> Checker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(REQUEST_TIMEOUT + 5)

    def _next(self) -> Req:
        if self.misses and self._rng.random() < 0.3:
            return self.misses.pop()
        return self._rng.choice(self.hot)

    def _run(self) -> None:
        conn = Connection(HOST, self.port, timeout=REQUEST_TIMEOUT)
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                req = self._next()
                _, error = fetch_checked(conn, req)
                self.checked += 1
                if error is not None:
                    self.errors[error] += 1
                    conn.close()
                    if len(self.examples) < 10:
                        self.examples.append(f"{error}: GET {req.path}")
                self._stop.wait(max(0.0, 1 / self.rate - (time.monotonic() - started)))
        finally:
            conn.close()


# --- load generators ---------------------------------------------------------------------------

#: The wrk script: request() picks a hot request by weight, or (with probability MISS) the
#: next never-seen one of this thread's share; done() prints the figures as one JSON line.
WRK_SCRIPT = r"""
local threads = {}
local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local function format(accept, path)
  return wrk.format("GET", path, {
    ["Host"] = host, ["Accept"] = accept, ["Accept-Encoding"] = "gzip",
    ["User-Agent"] = "pipgate-bench-load"})
end

function init(args)
  host, fraction = args[1], tonumber(args[4])
  local nthreads = tonumber(args[5])
  math.randomseed(1000 + id)
  hot, cum, total = {}, {}, 0
  for line in io.lines(args[2]) do
    local w, accept, path = line:match("^(%S+)\t(%S+)\t(%S+)$")
    total = total + tonumber(w)
    hot[#hot + 1] = format(accept, path)
    cum[#cum + 1] = total
  end
  miss, taken, short, n = {}, 0, 0, 0
  for line in io.lines(args[3]) do
    if n % nthreads == id then
      local _, accept, path = line:match("^(%S+)\t(%S+)\t(%S+)$")
      miss[#miss + 1] = format(accept, path)
    end
    n = n + 1
  end
end

function request()
  if fraction > 0 and math.random() < fraction then
    if taken < #miss then
      taken = taken + 1
      return miss[taken]
    end
    short = short + 1
  end
  local x = math.random() * total
  local lo, hi = 1, #cum
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cum[mid] < x then lo = mid + 1 else hi = mid end
  end
  return hot[lo]
end

function done(summary, latency, requests)
  local taken_all, short_all = 0, 0
  for _, thread in ipairs(threads) do
    taken_all = taken_all + thread:get("taken")
    short_all = short_all + thread:get("short")
  end
  local e = summary.errors
  io.write(string.format(
    'PIPGATE-LOAD {"duration_us": %d, "requests": %d, "bytes": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"misses_sent": %d, "misses_short": %d}\n',
    summary.duration, summary.requests, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout, taken_all, short_all))
end
"""


@dataclass
class Raw:
    """What a load generator measured (times in seconds)."""

    duration: float
    requests: int
    bytes: int
    p50: float
    p90: float
    p99: float
    max: float
    errors: dict[str, int]
    misses_sent: int
    misses_short: int
    #: CPU seconds the load generator itself used (user + system).
    client_cpu: float = 0.0


def run_wrk(
    wrk: str,
    base: str,
    workdir: Path,
    hot: list[Req],
    misses: list[Req],
    *,
    miss: float,
    connections: int,
    duration: float,
    threads: int = 1,
) -> Raw:
    """``wrk`` for ``duration`` s with ``connections`` keep-alive connections."""
    hot_path, miss_path, script = workdir / "hot.tsv", workdir / "miss.tsv", workdir / "load.lua"
    write_requests(hot_path, hot)
    write_requests(miss_path, misses)
    script.write_text(WRK_SCRIPT)
    host = base.removeprefix("http://")
    # wrk takes whole seconds.
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, math.ceil(duration))}s"]
    argv += ["--timeout", f"{REQUEST_TIMEOUT:g}s", "-s", str(script), base + "/"]
    argv += ["--", host, str(hot_path), str(miss_path), f"{miss:g}", str(threads)]
    cpu_before = _children_cpu()
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=duration + REQUEST_TIMEOUT + 30, check=False
    )
    client_cpu = _children_cpu() - cpu_before
    line = next((x for x in done.stdout.splitlines() if x.startswith("PIPGATE-LOAD ")), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({done.returncode}): {(done.stderr + done.stdout)[-500:]}")
    got = json.loads(line.removeprefix("PIPGATE-LOAD "))
    return Raw(
        duration=got["duration_us"] / 1e6,
        requests=got["requests"],
        bytes=got["bytes"],
        p50=got["p50_us"] / 1e6,
        p90=got["p90_us"] / 1e6,
        p99=got["p99_us"] / 1e6,
        max=got["max_us"] / 1e6,
        errors={k: v for k, v in got["errors"].items() if v},
        misses_sent=got["misses_sent"],
        misses_short=got["misses_short"],
        client_cpu=client_cpu,
    )


def _children_cpu() -> float:
    """CPU time of the waited-for children (wrk) so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_python(
    base: str,
    hot: list[Req],
    misses: list[Req],
    *,
    miss: float,
    connections: int,
    duration: float,
) -> Raw:
    """The fallback without wrk: ``connections`` aiohttp tasks, each sending its next
    request when the previous answer is complete (as wrk does)."""
    before = time.process_time()
    raw = asyncio.run(_python_load(base, hot, misses, miss, connections, duration))
    # The process's CPU time includes the checker thread: a small overestimate.
    return replace(raw, client_cpu=time.process_time() - before)


async def _python_load(
    base: str, hot: list[Req], misses: list[Req], miss: float, connections: int, duration: float
) -> Raw:
    import aiohttp  # the client is optional: only this fallback needs it

    rng = random.Random(1000)
    weights = [r.weight for r in hot]
    queue = list(reversed(misses))
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    counts = {"bytes": 0, "sent": 0, "short": 0}
    loop = asyncio.get_running_loop()
    start = loop.time()
    end = start + duration
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    connector = aiohttp.TCPConnector(limit=connections)

    def pick() -> Req:
        if miss > 0 and rng.random() < miss:
            if queue:
                counts["sent"] += 1
                return queue.pop()
            counts["short"] += 1
        return rng.choices(hot, weights)[0]

    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False
    ) as session:

        async def client() -> None:
            while loop.time() < end:
                req = pick()
                sent = time.perf_counter()
                try:
                    headers = {**COMMON_HEADERS, "Accept": req.accept}
                    async with session.get(base + req.path, headers=headers) as response:
                        async for chunk in response.content.iter_chunked(1 << 20):
                            counts["bytes"] += len(chunk)
                        if response.status >= 400:
                            errors["status"] += 1
                except TimeoutError:
                    errors["timeout"] += 1
                except aiohttp.ClientConnectorError:
                    errors["connect"] += 1
                except aiohttp.ClientError:
                    errors["read"] += 1
                latencies.append(time.perf_counter() - sent)

        await asyncio.gather(*(client() for _ in range(connections)))
    elapsed = loop.time() - start
    every = sorted(latencies) or [math.nan]

    def pick_q(q: float) -> float:
        return every[min(len(every) - 1, int(q * len(every)))]

    return Raw(
        duration=elapsed,
        requests=len(latencies),
        bytes=counts["bytes"],
        p50=pick_q(0.50),
        p90=pick_q(0.90),
        p99=pick_q(0.99),
        max=every[-1],
        errors=dict(errors),
        misses_sent=counts["sent"],
        misses_short=counts["short"],
    )


# --- one level -------------------------------------------------------------------------------


@dataclass
class Level:
    """One measured load at one concurrency."""

    connections: int
    client: str
    duration_s: float
    requests: int
    rps: float
    mib_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    #: Cache look-ups by kind and result (pipgate's metrics), and the share from cache.
    cache: dict[str, int]
    cached_share: float
    #: Requests the upstream got for generated projects (page, metadata, file).
    upstream_gets: dict[str, int]
    misses_sent: int
    #: Responses pipgate answered with each status (its metrics).
    statuses: dict[str, int]
    limited: dict[str, int]
    checked: int
    errors: dict[str, int]
    error_examples: list[str] = field(default_factory=list)
    #: CPU time per request of all pipgate processes, and of the load generator.
    server_cpu_us: float | None = None
    client_cpu_us: float | None = None

    @property
    def ok(self) -> bool:
        return self.requests > 0 and not self.errors


def _delta(
    after: dict[tuple[str, str], float], before: dict[tuple[str, str], float], name: str
) -> Counter[str]:
    """Per label set, the increase of counter ``name``."""
    out: Counter[str] = Counter()
    for (metric, label_text), value in after.items():
        if metric == name:
            grown = round(value - before.get((metric, label_text), 0.0))
            if grown:
                out[label_text] += grown
    return out


class Stack:
    """A fake upstream and a pipgate in front of it, with the mix they serve."""

    def __init__(self, args: argparse.Namespace, workdir: Path, name: str = "load") -> None:
        self.args = args
        self.workdir = workdir
        self.name = name
        self.mix = Mix(miss=args.miss, versions=args.versions)
        self.maker = WheelMaker()
        self.hot = hot_set(self.mix, self.maker)
        token = "".join(random.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(4))
        self.misses = MissStream(self.mix, self.maker, "m" + token, seed=args.seed)
        self.check_misses = MissStream(self.mix, self.maker, "c" + token, seed=args.seed + 1)
        self.upstream: FakeUpstream | None = None
        self.server: PipgateServer | None = None
        self.wrk = None if args.client == "python" else shutil.which("wrk")
        if args.client == "wrk" and self.wrk is None:
            raise BenchError("wrk is not installed (Debian: apt-get install wrk)")
        self.best_rps = 0.0

    @property
    def client(self) -> str:
        return "wrk" if self.wrk else "python"

    def start(self) -> PipgateServer:
        """Start both processes; pipgate on an empty cache."""
        self.upstream = FakeUpstream(self.workdir, versions=self.args.versions)
        env = dict(SERVER_ENV)
        if self.args.max_size:
            env["PIPGATE_MAX_SIZE"] = self.args.max_size
        env.update(self.args.server_env)
        self.server = PipgateServer(
            self.workdir,
            self.upstream.index_url,
            workers=self.args.workers,
            python=self.args.python,
            env=env,
        )
        self.server.start()
        return self.server

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self.upstream is not None:
            self.upstream.stop()

    def warm(self) -> int:
        """Fetch the hot set once through pipgate (wheels before their metadata, so
        pipgate takes the metadata from the cached wheel), checking every answer; then
        load every worker with it unmeasured. Returns the number checked."""
        assert self.server is not None
        order = {"file": 0, "metadata": 1, "page": 2}
        conn = Connection(HOST, self.server.port, timeout=REQUEST_TIMEOUT)
        errors: list[str] = []
        try:
            for req in sorted(self.hot, key=lambda r: order[r.kind]):
                _, error = fetch_checked(conn, req)
                if error:
                    errors.append(f"{error}: GET {req.path}")
                    conn.close()
        finally:
            conn.close()
        if errors:
            raise BenchError("warm-up failed: " + "; ".join(errors[:5]))
        self.generate(max(self.args.levels), self.args.warmup, miss=0.0)
        return len(self.hot)

    def generate(self, connections: int, duration: float, miss: float) -> Raw:
        """One load (wrk or the Python client) with fresh never-seen requests."""
        assert self.server is not None
        estimate = max(self.best_rps * 2, 8000.0 if self.wrk else 3000.0)
        wanted = int(estimate * duration * miss * 1.2) + 300 if miss > 0 else 0
        misses = self.misses.take(wanted) if wanted else []
        if self.wrk:
            return run_wrk(
                self.wrk,
                self.server.base,
                self.workdir,
                self.hot,
                misses,
                miss=miss,
                connections=connections,
                duration=duration,
                threads=self.args.threads,
            )
        return run_python(
            self.server.base,
            self.hot,
            misses,
            miss=miss,
            connections=connections,
            duration=duration,
        )

    def _upstream_counts(self) -> Counter[str]:
        """The upstream's GETs by target (``refetch``: whole GETs of a wheel it served
        before)."""
        assert self.upstream is not None
        stats = self.upstream.stats()
        return Counter[str](stats["gen_gets"])

    def level(self, connections: int, duration: float) -> Level:
        """Measure one level: the load, the checker beside it, pipgate's own counts."""
        assert self.server is not None and self.upstream is not None
        server = self.server
        before, up_before = server.metrics(), self._upstream_counts()
        log_from = server.log_size()
        pids = list(server.processes().values())
        cpu_before = cpu_seconds(pids)
        checks = self.check_misses.take(max(30, int(duration * self.args.check_rate)))
        checks = [r for r in checks if r.kind != "page"]
        with Checker(server.port, self.hot, checks, self.args.check_rate) as checker:
            raw = self.generate(connections, duration, self.mix.miss)
        time.sleep(0.5)  # what the load's last requests still log and count is this level's
        cpu = cpu_seconds(pids) - cpu_before
        after, up_after = server.metrics(), self._upstream_counts()
        self.best_rps = max(self.best_rps, raw.requests / raw.duration)

        cache = _delta(after, before, "pipgate_cache_requests_total")
        by_kind_result = Counter[str]()
        for label_text, n in cache.items():
            got = labels(label_text)
            by_kind_result[f"{got.get('kind')}:{got.get('result')}"] += n
        statuses = Counter[str]()
        for label_text, n in _delta(after, before, "pipgate_http_requests_total").items():
            statuses[labels(label_text).get("status", "?")] += n
        limited = Counter[str]()
        for label_text, n in _delta(after, before, "pipgate_limited_total").items():
            limited[labels(label_text).get("limit", "?")] += n
        total = sum(by_kind_result.values())
        from_cache = sum(n for k, n in by_kind_result.items() if k.endswith(":hit"))
        errors: Counter[str] = Counter({f"load_{k}": v for k, v in raw.errors.items()})
        errors.update({f"check_{k}": v for k, v in checker.errors.items()})
        failed = {s: n for s, n in statuses.items() if not s.startswith(("1", "2", "3"))}
        errors.update({f"http_{s}": n for s, n in failed.items()})
        errors.update({f"limited_{k}": n for k, n in limited.items()})
        problems = log_problems(server.log_text(log_from))
        errors.update({f"log {k}": n for k, n in problems.kinds.items()})
        evictions = sum(_delta(after, before, "pipgate_cache_evictions_total").values())
        refetched = up_after["refetch"] - up_before["refetch"]
        if refetched and not evictions:
            errors["upstream_refetch_without_eviction"] += refetched
        if raw.misses_short:
            errors["setup_misses_ran_out"] += raw.misses_short
        if not server.alive():
            errors["server_exited"] += 1
        return Level(
            connections=connections,
            client=self.client,
            duration_s=round(raw.duration, 2),
            requests=raw.requests,
            rps=round(raw.requests / raw.duration, 1),
            mib_s=round(raw.bytes / MIB / raw.duration, 1),
            p50_ms=round(raw.p50 * 1000, 2),
            p90_ms=round(raw.p90 * 1000, 2),
            p99_ms=round(raw.p99 * 1000, 2),
            max_ms=round(raw.max * 1000, 1),
            cache=dict(sorted(by_kind_result.items())),
            cached_share=round(from_cache / total, 4) if total else 0.0,
            upstream_gets={
                k: int(up_after.get(k, 0) - up_before.get(k, 0))
                for k in ("page", "metadata", "file")
            },
            misses_sent=raw.misses_sent,
            statuses=dict(sorted(statuses.items())),
            limited=dict(limited),
            checked=checker.checked,
            errors=dict(errors),
            error_examples=checker.examples + problems.examples,
            server_cpu_us=round(cpu * 1e6 / max(1, raw.requests), 1),
            client_cpu_us=round(raw.client_cpu * 1e6 / max(1, raw.requests), 1),
        )


# --- the run -----------------------------------------------------------------------------------


def level_table(levels: Iterable[Level]) -> list[str]:
    """The per-level figures as text lines."""
    lines = [
        f"{'conns':>5} {'s':>5} {'requests':>8} {'req/s':>7} {'MiB/s':>7} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'max ms':>7} {'cached':>6} {'upstream p/m/f':>15} "
        f"{'CPU us/req srv/cli':>18} {'checked':>7}  errors"
    ]
    for x in levels:
        up = x.upstream_gets
        upstream = f"{up['page']}/{up['metadata']}/{up['file']}"
        errors = ", ".join(f"{k}={v}" for k, v in sorted(x.errors.items())) or "0"
        lines.append(
            f"{x.connections:>5} {x.duration_s:>5.1f} {x.requests:>8} {x.rps:>7.0f} "
            f"{x.mib_s:>7.1f} {x.p50_ms:>7.2f} {x.p99_ms:>7.2f} {x.max_ms:>7.1f} "
            f"{x.cached_share * 100:>5.1f}% {upstream:>15} "
            f"{f'{x.server_cpu_us or 0:.0f}/{x.client_cpu_us or 0:.0f}':>18} "
            f"{x.checked:>7}  {errors}"
        )
        lines += [f"      {example}" for example in x.error_examples[:5]]
    return lines


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Start the stack, warm the hot set, measure each level."""
    load_before = round(os.getloadavg()[0], 2)
    origin = pipgate_origin(args.python)
    stack = Stack(args, workdir)
    log(f"pipgate from {origin}; load by {stack.client}; levels {args.levels}")
    levels: list[Level] = []
    try:
        server = stack.start()
        log(f"pipgate up: {server.processes()}")
        warmed = stack.warm()
        log(f"warm: {warmed} hot requests fetched and checked")
        for connections in args.levels:
            level = stack.level(connections, args.duration)
            levels.append(level)
            log(
                f"{connections} connections: {level.rps:.0f} req/s, {level.mib_s:.0f} MiB/s, "
                f"p50 {level.p50_ms} ms, p99 {level.p99_ms} ms, cached "
                f"{level.cached_share * 100:.1f} %, errors {level.errors or 0}"
            )
        command = " ".join(server.argv[1:]).replace(str(workdir), "$WORKDIR")
        env = {k: v for k, v in server.env.items() if k.startswith("PIPGATE_")}
    finally:
        stack.stop()
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "pipgate_command": command,
        "pipgate_env": env,
        "pipgate_module": origin,
        "git": git_describe(),
        "machine": {**machine(), "loadavg_before": load_before},
        "config": {
            "client": stack.client,
            "levels": args.levels,
            "duration_s": args.duration,
            "workers": args.workers,
            "mix": asdict(stack.mix),
            "hot_requests": len(stack.hot),
        },
        "levels": [asdict(x) for x in levels],
        "passed": bool(levels) and all(x.ok for x in levels),
    }


def report(result: dict[str, Any]) -> str:
    """The results as text, ending with the verdict line."""
    config = result["config"]
    lines = [
        f"pipgate load {result['date']}  ({result['machine']['cpus']} CPUs, load average "
        f"{result['machine']['loadavg_before']} before; {config['client']}; workers="
        f"{config['workers']}; {config['duration_s']:g} s per level; the client, the upstream "
        "and pipgate share the CPUs)",
        f"pipgate from {result['pipgate_module']} ({result['git']})",
        "mix: pages 35 % (JSON 60 %, HTML 40 %), metadata 25 %, wheels 40 % (10 KiB 40 %, "
        "100 KiB 35 %, 1 MiB 20 %, 8 MiB 5 %); 10 % never seen (page, metadata, wheel of a "
        "new project)",
        "",
        *level_table(Level(**x) for x in result["levels"]),
        "",
    ]
    errors = sum(sum(x["errors"].values()) for x in result["levels"])
    checked = sum(x["checked"] for x in result["levels"])
    verdict = "PASS" if result["passed"] else "FAIL"
    lines.append(
        f"load: {verdict} ({len(result['levels'])} levels, {errors} errors, {checked} sampled "
        "responses verified by sha256)"
    )
    return "\n".join(lines)


def parse_counts(text: str) -> list[int]:
    """``8,32,128`` -> [8, 32, 128]."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected counts like 8,32,128, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("counts must be positive integers")
    return counts


def parse_env(text: str) -> tuple[str, str]:
    """``PIPGATE_X=value``."""
    name, sep, value = text.partition("=")
    if not sep or not name.startswith("PIPGATE_"):
        raise argparse.ArgumentTypeError(f"expected PIPGATE_NAME=VALUE, got {text!r}")
    return name, value


def add_common(parser: argparse.ArgumentParser) -> None:
    """Options load.py and soak.py share."""
    parser.add_argument("--workers", type=int, default=2, help="pipgate --workers (default 2)")
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter that runs `-m pipgate serve` (default: this one)",
    )
    parser.add_argument(
        "--client",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="load generator (auto: wrk if installed, else aiohttp)",
    )
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--miss", type=float, default=0.10, help="never-seen share (0.10)")
    parser.add_argument("--versions", type=int, default=4, help="wheels per generated project")
    parser.add_argument(
        "--check-rate", type=float, default=10.0, help="sampled checks per second (10)"
    )
    parser.add_argument("--warmup", type=int, default=2, help="s of unmeasured hot load (2)")
    parser.add_argument(
        "--max-size",
        default="2GB",
        help="pipgate cache.max_size, so the misses cannot fill the disk (default 2GB; '' = none)",
    )
    parser.add_argument(
        "--server-env",
        type=parse_env,
        action="append",
        default=[],
        metavar="PIPGATE_X=V",
        help="extra pipgate setting (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the mix")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--workdir", type=Path, help="parent of the temp dir (default: /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, cache)")


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--levels", type=parse_counts, default=[8, 32, 128], help="connections (8,32,128)"
    )
    parser.add_argument("--duration", type=int, default=20, help="s per level (20)")
    parser.add_argument(
        "--short", action="store_true", help="the CI form: 3 s per level, 1 s warm-up"
    )
    parser.add_argument("--timeout", type=float, default=900, help="abort after this many s")
    add_common(parser)
    return parser


def main_with(
    name: str,
    args: argparse.Namespace,
    run_fn: Any,
    report_fn: Any,
) -> int:
    """Run ``run_fn(args, workdir)`` in a temp dir under a watchdog; print the report;
    exit 0 (pass), 1 (a check failed) or 2 (could not run)."""
    args.server_env = dict(args.server_env)
    result, problem = run_in_workdir(name, args, run_fn, lambda m: log(m, name))
    if result is None:
        print(f"{name}: FAIL ({problem})")
        return 2
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(report_fn(result))
    return 0 if result["passed"] else 1


def main() -> int:
    """Parse the command line and run."""
    args = build_parser().parse_args()
    if args.short:
        args.duration, args.warmup = 3, 1
    return main_with("load", args, run, report)


if __name__ == "__main__":
    sys.exit(main())
