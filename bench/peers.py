"""Side by side with nginx (issue 13): pipgate against nginx serving the same pages.

Everything runs on 127.0.0.1 against one fake PyPI (``bench/upstream.py``), with four
servers up at once:

- **nginx-static**: nginx serving the pages as static files (JSON or HTML chosen by a
  ``map`` on ``Accept``, pre-gzipped copies by ``gzip_static``) and the wheels and their
  ``.metadata`` files from the same directory: the lower bound of what serving costs;
- **nginx-cache**: nginx as a caching proxy of the upstream (``proxy_cache`` keyed by
  URI, ``Accept`` and ``Accept-Encoding``, ``proxy_cache_lock on``, valid 10 min);
- **pipgate** with ``--workers 1`` and ``--workers 2`` (``<python> -m pipgate serve``).

Both nginx run ``worker_processes 2`` (pipgate's two workers; nginx's default is 1),
otherwise nginx defaults, ``access_log off``. Measured, interleaved across the servers
for ``--rounds`` rounds (medians reported): warm project pages with ``wrk`` (JSON and
HTML, 64 connections, the 200-file page of ``pages.py``) and the servers' CPU per 1,000
requests; cold ``uv pip install`` and ``pip install`` of a 30-distribution dependency
tree never seen before (a fresh tag per install), then warm installs of the same tree
(client caches off); a PyPI-sized ``/simple/`` (``--list-size`` names): pipgate's cold
build time and peak RSS, and its warm rate against nginx serving pipgate's own bytes as
a static file; pipgate's idle RSS and its peak RSS per process under these loads.

Run: ``python bench/peers.py [--duration 10] [--connections 64] [--rounds 3] [--json F]
[--markdown F] [--python PATH]``; ``--short`` is the CI smoke (seconds). Needs nginx,
wrk, uv and pip: ``bench/setup.sh`` installs them. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench import (
    HOST,
    BenchError,
    RssSampler,
    free_port,
    git_describe,
    log,
    memory_kib,
    output_arguments,
    pipgate_origin,
    process_tree,
    run_in_workdir,
    start_process,
    stop_process,
    tail,
    wait_healthy,
    write_report,
)
from load import SERVER_ENV, FakeUpstream, PipgateServer, log_problems
from pages import (
    ACCEPT,
    COMMON_HEADERS,
    WRK_SCRIPT,
    Load,
    Raw,
    check_page,
    cpu_seconds,
    run_wrk,
)
from upstream import TREE_SIZE, WheelMaker, gen_version, tree_project

MIB = 1 << 20
#: The page of the warm-page loads (``pages.py``'s mid-size project).
PAGE_PROJECT, PAGE_FILES = "midsize", 200
#: The version every tree install must end with (the newest of ``--gen-versions 4``).
TREE_VERSIONS = 4
TREE_VERSION = gen_version(TREE_VERSIONS - 1)
#: nginx workers: as many as pipgate's larger configuration (nginx's default is 1).
NGINX_WORKERS = 2
#: Also count nginx's cache result (``X-Cache-Status``) as the load's cache column.
PEER_WRK_SCRIPT = WRK_SCRIPT.replace(
    'or headers["x-pipgate-cache"] or "-"',
    'or headers["x-pipgate-cache"] or headers["X-Cache-Status"] or "-"',
)
#: For the big /simple/ list: no ``response()`` callback, which would make wrk buffer
#: every body in Lua; statuses >= 400 come back as ``errors.status``.
LIST_WRK_SCRIPT = """
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'PIPGATE-BENCH {"duration_us": %d, "requests": %d, "bytes": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"statuses": {}, "caches": {}}\\n',
    summary.duration, summary.requests, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean, e.connect, e.read, e.write, e.status, e.timeout))
end
"""
TARGETS = ("nginx-static", "nginx-cache", "pipgate-1", "pipgate-2")
#: The issue's goals (ratios to nginx-static unless said otherwise).
GOAL_PAGE_RATIO_W2 = 0.30
GOAL_COLD_INSTALL = 1.10
GOAL_WARM_INSTALL = 1.05
GOAL_IDLE_RSS_MIB = 60.0
GOAL_WORKER_RSS_MIB = 100.0
#: "Served at the same rate as a large static file", read as within 10 %.
GOAL_LIST_RATIO = 0.90


# --- nginx -----------------------------------------------------------------------------------

NGINX_CONF = """\
worker_processes {workers};
{user}
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    sendfile on;
    tcp_nopush on;
    types {{
        application/vnd.pypi.simple.v1+json json;
        text/html html;
    }}
    default_type application/octet-stream;
{http}
    server {{
        listen {host}:{port};
        location = /-/ping {{ return 200 "ok\\n"; }}
{server}
    }}
}}
"""

#: PEP 691: JSON for clients that ask for it (pip, uv), else HTML.
STATIC_HTTP = """\
    map $http_accept $pg_format {
        default html;
        "~application/vnd\\.pypi\\.simple\\.v1\\+json" json;
    }
"""
STATIC_SERVER = """\
        root {root};
        location /simple/ {{
            gzip_static on;
            add_header Vary "Accept, Accept-Encoding";
            try_files ${{uri}}index.$pg_format =404;
        }}
        location /files/ {{ }}
"""
CACHE_HTTP = """\
    upstream pg_upstream {{ server {upstream}; keepalive 32; }}
    proxy_cache_path {prefix}/cache levels=1:2 keys_zone=pg:32m max_size=4g inactive=60m
                     use_temp_path=off;
"""
CACHE_SERVER = """\
        location / {
            proxy_pass http://pg_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # The upstream writes absolute file URLs from Host: they lead back here.
            proxy_set_header Host $http_host;
            proxy_cache pg;
            proxy_cache_key "$request_uri|$http_accept|$http_accept_encoding";
            proxy_cache_valid 200 10m;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 60s;
            add_header X-Cache-Status $upstream_cache_status;
        }
"""


class Nginx:
    """``nginx -g 'daemon off;'`` on a private prefix (pid, logs, temp files, cache)."""

    def __init__(self, nginx: str, workdir: Path, name: str, http: str, server: str) -> None:
        self.name = name
        self.port = free_port()
        self.base = f"http://{HOST}:{self.port}"
        self.prefix = workdir / f"nginx-{name}"
        (self.prefix / "tmp").mkdir(parents=True)
        # As root, nginx's workers would switch to nobody, who cannot read the temp dir.
        user = "user root root;" if os.geteuid() == 0 else ""
        fields = {"prefix": self.prefix, "host": HOST, "port": self.port}
        conf = NGINX_CONF.format(
            workers=NGINX_WORKERS, user=user, http=http, server=server, **fields
        )
        self.conf = self.prefix / "nginx.conf"
        self.conf.write_text(conf)
        self.log_path = self.prefix / "stderr.log"
        argv = [nginx, "-p", str(self.prefix), "-c", str(self.conf), "-g", "daemon off;"]
        self.proc = start_process(argv, self.log_path)
        wait_healthy(f"{self.base}/-/ping", self.proc, self.log_path, 30)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def problems(self) -> list[str]:
        """What nginx logged at warn or above (the config's warnings included)."""
        text = tail(self.prefix / "error.log", 1000) + "\n" + tail(self.log_path, 1000)
        return [line for line in text.splitlines() if "[" in line and "]" in line][:20]

    def stop(self) -> None:
        stop_process(self.proc)


def static_nginx(nginx: str, workdir: Path, root: Path) -> Nginx:
    """nginx-static: pages and files from ``root``."""
    return Nginx(nginx, workdir, "static", STATIC_HTTP, STATIC_SERVER.format(root=root))


def cache_nginx(nginx: str, workdir: Path, upstream_port: int) -> Nginx:
    """nginx-cache: a caching proxy of the upstream."""
    prefix = workdir / "nginx-cache"
    http = CACHE_HTTP.format(upstream=f"{HOST}:{upstream_port}", prefix=prefix)
    return Nginx(nginx, workdir, "cache", http, CACHE_SERVER)


# --- the static copy -------------------------------------------------------------------------


def fetch(url: str, headers: dict[str, str], timeout: float = 60) -> tuple[bytes, str]:
    """GET ``url``: (body as sent, Content-Encoding)."""
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if response.status != 200:
            raise BenchError(f"{url}: status {response.status}")
        return response.read(), response.headers.get("Content-Encoding", "")


def write_page(root: Path, path: str, fmt: str, body: bytes) -> None:
    """``<root><path>index.<fmt>`` and its pre-gzipped copy (for ``gzip_static``)."""
    directory = root / path.lstrip("/")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"index.{fmt}").write_bytes(body)
    (directory / f"index.{fmt}.gz").write_bytes(gzip.compress(body, compresslevel=6, mtime=0))


def copy_project(upstream: str, static: Nginx, root: Path, project: str, files: bool) -> None:
    """The upstream's pages of ``project`` (both formats, file URLs on nginx-static) as
    static files, and (``files``) every file they list with its ``.metadata``."""
    host = {"Host": f"{HOST}:{static.port}"}
    path = f"/simple/{project}/"
    entries: list[dict[str, Any]] = []
    for fmt in ("json", "html"):
        body, _ = fetch(upstream + path, {**host, "Accept": ACCEPT[fmt]})
        write_page(root, path, fmt, body)
        if fmt == "json":
            entries = json.loads(body)["files"]
    if not files:
        return
    (root / "files").mkdir(exist_ok=True)
    for entry in entries:
        file_path = urlsplit(entry["url"]).path
        for suffix in ("", ".metadata"):
            data, _ = fetch(upstream + file_path + suffix, {})
            (root / file_path.lstrip("/")).with_name(entry["filename"] + suffix).write_bytes(data)


# --- installs --------------------------------------------------------------------------------


def client_env() -> dict[str, str]:
    """The environment of pip and uv: no user or site configuration (this machine's pip
    config adds find-links and extra indexes), no inherited index settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    env.update({"PIP_CONFIG_FILE": os.devnull, "UV_NO_CONFIG": "1", "PYTHONWARNINGS": "ignore"})
    return env


class TreeCheck:
    """What an install of a tree must leave in its target: 30 dist-infos at the newest
    version, each METADATA and payload as the upstream built them."""

    def __init__(self) -> None:
        self.maker = WheelMaker()

    def problems(self, target: Path, tag: str) -> list[str]:
        found: list[str] = []
        infos = sorted(p.name for p in target.glob("*.dist-info"))
        expected = sorted(
            f"{tree_project(tag, n).replace('-', '_')}-{TREE_VERSION}.dist-info"
            for n in range(TREE_SIZE)
        )
        if infos != expected:
            found.append(f"dist-infos: {len(infos)} found, {len(set(infos) & set(expected))} right")
            return found
        for node in range(TREE_SIZE):
            project = tree_project(tag, node)
            wheel = self.maker.wheel(project, TREE_VERSION)
            dist = project.replace("-", "_")
            metadata = target / f"{dist}-{TREE_VERSION}.dist-info" / "METADATA"
            if metadata.read_bytes() != wheel.metadata:
                found.append(f"{project}: METADATA differs")
            payload = (target / dist / "data.bin").read_bytes()
            if hashlib.sha256(payload).digest() != self._payload_digest(wheel.prefix):
                found.append(f"{project}: payload differs")
        return found

    @staticmethod
    def _payload_digest(prefix: bytes) -> bytes:
        # The payload is the wheel's first (stored) entry: the last 16 KiB of its prefix.
        return hashlib.sha256(prefix[-16 * 1024 :]).digest()


def install(
    tool: str, index_url: str, tag: str, workdir: Path, check: TreeCheck, args: argparse.Namespace
) -> dict[str, Any]:
    """One ``uv pip install`` or ``pip install`` of tree ``tag`` into a new target, no
    client cache: wall time and what was wrong."""
    target = Path(tempfile.mkdtemp(prefix=f"{tool}-", dir=workdir))
    root = tree_project(tag)
    if tool == "uv":
        argv = [args.uv, "pip", "install", "--quiet", "--no-cache", "--target", str(target)]
        argv += ["--python", sys.executable, "--index-url", index_url, root]
    else:
        argv = [sys.executable, "-m", "pip", "install", "--quiet", "--no-cache-dir"]
        argv += ["--disable-pip-version-check", "--no-input", "--root-user-action", "ignore"]
        argv += ["--target", str(target), "--index-url", index_url, root]
    start = time.perf_counter()
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=120, env=client_env(), check=False
        )
        wall = time.perf_counter() - start
        problems = [] if done.returncode == 0 else [f"exit {done.returncode}: {done.stderr[-400:]}"]
    except subprocess.TimeoutExpired:
        wall, problems = time.perf_counter() - start, ["timed out after 120 s"]
    if not problems:
        problems = check.problems(target, tag)
    shutil.rmtree(target, ignore_errors=True)
    return {"tool": tool, "tag": tag, "wall_s": round(wall, 3), "problems": problems}


# --- loads -----------------------------------------------------------------------------------


def page_load(
    target: str, port: int, pid: int, fmt: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Check the warm page, load it unmeasured, then measure one ``wrk`` load and the
    server's CPU time (every process of it) during it."""
    base = f"http://{HOST}:{port}"
    body = check_page(base, PAGE_PROJECT, fmt, PAGE_FILES, pipgate=True)
    headers = {**COMMON_HEADERS, "Accept": ACCEPT[fmt]}
    url = f"{base}/simple/{PAGE_PROJECT}/"
    raw, cpu = wrk_measured(url, headers, args, args.wrk_script, pid)
    load = Load.measured(
        raw,
        body,
        target=target,
        workers=None,
        project=PAGE_PROJECT,
        files=PAGE_FILES,
        format=fmt,
        client="wrk",
        connections=args.connections,
        server_cpu_us=round(cpu * 1e6 / max(1, raw.requests), 1),
    )
    # Every response a 200; through a cache, every one a hit.
    expected_cache = {"nginx-cache": "HIT", "pipgate-1": "hit", "pipgate-2": "hit"}.get(target)
    ok = (
        load.requests > 0
        and load.statuses == {"200": load.requests}
        and not any(load.errors.values())
        and (expected_cache is None or load.caches == {expected_cache: load.requests})
    )
    log(
        f"{target} {fmt}: {load.rps:.0f} req/s, p99 {load.p99_ms} ms, "
        f"{load.server_cpu_us:.0f} us CPU/req{'' if ok else '  CHECK FAILED'}"
    )
    return {**asdict(load), "ok": ok}


def wrk_measured(
    url: str, headers: dict[str, str], settings: argparse.Namespace, script: Path, pid: int
) -> tuple[Raw, float]:
    """``settings.warmup`` s of unmeasured ``wrk``, then one measured load: its figures
    and the CPU seconds the server (every process of it) spent during it."""
    if settings.warmup:
        warm = argparse.Namespace(**{**vars(settings), "duration": settings.warmup})
        run_wrk(settings.wrk, url, headers, warm, script)
    before = cpu_seconds(pid)
    raw = run_wrk(settings.wrk, url, headers, settings, script)
    return raw, cpu_seconds(pid) - before


def list_load(target: str, port: int, pid: int, size: int, args: argparse.Namespace) -> dict:
    """``wrk`` on the big ``/simple/`` (HTML, gzip accepted) with few connections."""
    headers = {**COMMON_HEADERS, "Accept": "text/html"}
    settings = argparse.Namespace(**{**vars(args), "connections": args.list_connections})
    url = f"http://{HOST}:{port}/simple/"
    raw, cpu = wrk_measured(url, headers, settings, args.list_script, pid)
    rps = raw.requests / raw.duration
    ok = raw.requests > 0 and not any(raw.errors.values())
    result = {
        "target": target,
        "connections": args.list_connections,
        "requests": raw.requests,
        "rps": round(rps, 1),
        "mib_s": round(rps * size / MIB, 1),
        "p50_ms": round(raw.p50 * 1000, 1),
        "p99_ms": round(raw.p99 * 1000, 1),
        "body_bytes": size,
        "server_cpu_ms": round(cpu * 1e3 / max(1, raw.requests), 2),
        "errors": raw.errors,
        "ok": ok,
    }
    log(f"{target} /simple/: {rps:.1f} req/s ({result['mib_s']} MiB/s){'' if ok else '  FAILED'}")
    return result


class PeakPerProcess:
    """Peak RSS of each process of a tree, sampled in a thread (workers apart from the
    supervisor, which the summed figures of ``RssSampler`` cannot tell)."""

    def __init__(self, root: int, interval: float = 0.5) -> None:
        self.root = root
        self.interval = interval
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-peaks", daemon=True)
        self._thread.start()

    def sample(self) -> None:
        for pid in process_tree(self.root):
            rss = memory_kib(pid)[0]
            self.peaks[pid] = max(self.peaks.get(pid, 0), rss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> dict[str, float]:
        """Stop sampling; the peak of each process in MiB (``root`` as ``supervisor``)."""
        self._stop.set()
        self._thread.join(5)
        return {
            ("supervisor" if pid == self.root else f"pid-{pid}"): round(kib / 1024, 1)
            for pid, kib in sorted(self.peaks.items())
        }


def tree_rss_mib(root: int) -> dict[str, float]:
    """RSS of each process of the tree now, in MiB."""
    return {
        ("supervisor" if pid == root else f"pid-{pid}"): round(memory_kib(pid)[0] / 1024, 1)
        for pid in process_tree(root)
    }


# --- the run ---------------------------------------------------------------------------------


class Servers:
    """The upstream and the four servers, up together."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.static_root = workdir / "static"
        self.static_root.mkdir()
        self.upstream: FakeUpstream | None = None
        self.nginx: dict[str, Nginx] = {}
        self.pipgates: dict[str, PipgateServer] = {}

    def start(self) -> None:
        args = self.args
        extra = ["--project", f"{PAGE_PROJECT}:{PAGE_FILES}", "--list-size", str(args.list_size)]
        log(f"upstream with a {args.list_size}-name project list")
        self.upstream = FakeUpstream(self.workdir, versions=TREE_VERSIONS, extra=extra)
        self.nginx["nginx-static"] = static_nginx(args.nginx, self.workdir, self.static_root)
        self.nginx["nginx-cache"] = cache_nginx(args.nginx, self.workdir, self.upstream.port)
        for workers in (1, 2):
            server = PipgateServer(
                self.workdir,
                self.upstream.index_url,
                workers=workers,
                python=args.python,
                env=SERVER_ENV,
                name=f"pipgate-{workers}",
            )
            server.start()
            self.pipgates[f"pipgate-{workers}"] = server

    def port(self, target: str) -> int:
        return (self.nginx.get(target) or self.pipgates[target]).port

    def pid(self, target: str) -> int:
        return (self.nginx.get(target) or self.pipgates[target]).pid

    def index_url(self, target: str) -> str:
        return f"http://{HOST}:{self.port(target)}/simple/"

    def stop(self) -> None:
        for server in self.pipgates.values():
            server.stop()
        for nginx in self.nginx.values():
            nginx.stop()
        if self.upstream is not None:
            self.upstream.stop()


def cold_list(servers: Servers, target: str, args: argparse.Namespace) -> dict[str, Any]:
    """pipgate's first ``/simple/`` on an empty cache: time, peak RSS, and the body."""
    pid = servers.pid(target)
    url = servers.index_url(target)
    headers = {**COMMON_HEADERS, "Accept": "text/html"}
    with RssSampler(pid, interval=0.05) as sampler:
        sampler.reset()
        start = time.perf_counter()
        body, encoding = fetch(url, headers, timeout=600)  # pipgate's list_timeout
        elapsed = time.perf_counter() - start
        peak = sampler.peaks()
    text = gzip.decompress(body) if encoding == "gzip" else body
    names = text.count(b"<a ")
    ok = names >= args.list_size
    log(f"{target} cold /simple/: {elapsed:.1f} s, {names} names, peak RSS {peak['rss_mib']} MiB")
    if target == "pipgate-1":
        # nginx-static sends the same bytes: pipgate's gzip body (gzip_static), or its plain one.
        directory = servers.static_root / "simple"
        directory.mkdir(exist_ok=True)
        (directory / "index.html").write_bytes(text)
        if encoding == "gzip":
            (directory / "index.html.gz").write_bytes(body)
    return {
        "target": target,
        "seconds": round(elapsed, 2),
        "names": names,
        "body_bytes": len(body),
        "encoding": encoding or "identity",
        "peak_rss_mib": peak["rss_mib"],
        "peak_pss_mib": peak["pss_mib"],
        "ok": ok,
    }


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Start everything, measure in interleaved rounds, stop everything."""
    load_before = round(os.getloadavg()[0], 2)
    origin = pipgate_origin(args.python)
    log(f"pipgate from {origin}; nginx {nginx_version(args.nginx)}")
    args.wrk_script = workdir / "count.lua"
    args.wrk_script.write_text(PEER_WRK_SCRIPT)
    args.list_script = workdir / "list.lua"
    args.list_script.write_text(LIST_WRK_SCRIPT)
    servers = Servers(args, workdir)
    check = TreeCheck()
    run_id = uuid.uuid4().hex[:6]
    result: dict[str, Any] = {"pages": [], "installs": [], "lists": [], "cold_lists": []}
    peaks: dict[str, PeakPerProcess] = {}
    try:
        servers.start()
        assert servers.upstream is not None
        upstream = servers.upstream.base
        static = servers.nginx["nginx-static"]
        copy_project(upstream, static, servers.static_root, PAGE_PROJECT, files=False)
        time.sleep(1.0)  # let the pipgate workers settle before the idle figure
        result["idle_rss_mib"] = {t: tree_rss_mib(servers.pid(t)) for t in TARGETS}
        peaks = {t: PeakPerProcess(servers.pid(t)) for t in TARGETS}
        # The PyPI-sized list, on pipgate's empty caches first.
        for target in ("pipgate-1", "pipgate-2"):
            result["cold_lists"].append(cold_list(servers, target, args))
        list_size = result["cold_lists"][0]["body_bytes"]
        sizes = {"pipgate-1": list_size, "pipgate-2": list_size, "nginx-static": list_size}

        # nginx-static's trees, written before any measurement (no disk writes during one).
        def tag_of(number: int, target: str, tool: str) -> str:
            return f"{run_id}{number}{TARGETS.index(target)}{tool[0]}"

        for number in range(args.rounds):
            for tool in args.tools:
                for node in range(TREE_SIZE):
                    project = tree_project(tag_of(number, "nginx-static", tool), node)
                    copy_project(upstream, static, servers.static_root, project, files=True)
        os.sync()
        for number in range(args.rounds):
            order = TARGETS[number % 4 :] + TARGETS[: number % 4]  # rotate who goes first
            log(f"round {number + 1} of {args.rounds}: {', '.join(order)}")
            for target in order:
                for fmt in args.formats:
                    got = page_load(target, servers.port(target), servers.pid(target), fmt, args)
                    result["pages"].append({**got, "round": number})
            for target in order:
                for tool in args.tools:
                    tag = tag_of(number, target, tool)
                    got = install(tool, servers.index_url(target), tag, workdir, check, args)
                    result["installs"].append(
                        {**got, "target": target, "kind": "cold", "round": number}
                    )
                    line = f"{target} {tool}: cold {got['wall_s']} s"
                    if tool in args.warm_tools:
                        # The same tree again: every server's cache is warm, the client's off.
                        got = install(tool, servers.index_url(target), tag, workdir, check, args)
                        result["installs"].append(
                            {**got, "target": target, "kind": "warm", "round": number}
                        )
                        line += f", warm {got['wall_s']} s"
                    failed = any(x["problems"] for x in result["installs"][-2:])
                    log(line + ("  CHECK FAILED" if failed else ""))
            for target in [t for t in order if t in sizes]:
                got = list_load(target, servers.port(target), servers.pid(target), list_size, args)
                result["lists"].append({**got, "round": number})
        result["peak_rss_mib"] = {t: peaks.pop(t).stop() for t in TARGETS}
        result["log_problems"] = {
            name: log_problems(server.log_text()).examples
            for name, server in servers.pipgates.items()
        }
        result["nginx_problems"] = {name: n.problems() for name, n in servers.nginx.items()}
        result["pipgate_commands"] = {
            name: " ".join(server.argv[1:]).replace(str(workdir), "$WORKDIR")
            for name, server in servers.pipgates.items()
        }
        result["nginx_conf"] = {
            name: n.conf.read_text().replace(str(workdir), "$WORKDIR")
            for name, n in servers.nginx.items()
        }
    finally:
        for sampler in peaks.values():
            sampler.stop()
        servers.stop()
    result.update(
        {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "pipgate_python": args.python,
            "pipgate_module": origin,
            "pipgate_env": SERVER_ENV,
            "git": git_describe(),
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "nginx": nginx_version(args.nginx),
                "uv": tool_version([args.uv, "--version"]),
                "pip": tool_version([sys.executable, "-m", "pip", "--version"]).split(" from")[0],
                "loadavg": [load_before, round(os.getloadavg()[0], 2)],
            },
            "config": {
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "connections": args.connections,
                "list_connections": args.list_connections,
                "rounds": args.rounds,
                "list_size": args.list_size,
                "formats": args.formats,
                "tools": args.tools,
                "warm_tools": args.warm_tools,
                "nginx_workers": NGINX_WORKERS,
                "page": f"{PAGE_PROJECT} ({PAGE_FILES} files)",
                "tree": f"{TREE_SIZE} distributions, {TREE_VERSIONS} versions each, 16 KiB wheels",
                "short": args.short,
            },
        }
    )
    result["summary"] = summarise(result)
    result["passed"] = passed(result)
    return result


def nginx_version(nginx: str) -> str:
    return tool_version([nginx, "-v"]).removeprefix("nginx version: ")


def tool_version(argv: list[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        return (done.stdout + done.stderr).strip().splitlines()[0]
    return "unknown"


# --- the report ------------------------------------------------------------------------------


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Medians over the rounds, per target and measure, and the goals."""
    summary: dict[str, Any] = {"pages": {}, "installs": {}, "lists": {}}
    for target in TARGETS:
        for fmt in ("json", "html"):
            loads = [x for x in result["pages"] if x["target"] == target and x["format"] == fmt]
            if loads:
                summary["pages"][f"{target}/{fmt}"] = {
                    "rps": median([x["rps"] for x in loads]),
                    "p50_ms": median([x["p50_ms"] for x in loads]),
                    "p99_ms": median([x["p99_ms"] for x in loads]),
                    "cpu_ms_per_1000": median([x["server_cpu_us"] for x in loads]),
                    "body_bytes": loads[0]["body_bytes"],
                    "rounds": len(loads),
                }
        for tool in ("uv", "pip"):
            for kind in ("cold", "warm"):
                runs = [
                    x
                    for x in result["installs"]
                    if (x["target"], x["tool"], x["kind"]) == (target, tool, kind)
                ]
                if runs:
                    summary["installs"][f"{target}/{tool}/{kind}"] = {
                        "wall_s": median([x["wall_s"] for x in runs]),
                        "all_s": [x["wall_s"] for x in runs],
                    }
        loads = [x for x in result["lists"] if x["target"] == target]
        if loads:
            summary["lists"][target] = {
                "rps": median([x["rps"] for x in loads]),
                "mib_s": median([x["mib_s"] for x in loads]),
                "p99_ms": median([x["p99_ms"] for x in loads]),
                "cpu_ms_per_request": median([x["server_cpu_ms"] for x in loads]),
            }
    summary["goals"] = goals(result, summary)
    return summary


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def goals(result: dict[str, Any], summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with the figure that decides it."""
    pages, installs, out = summary["pages"], summary["installs"], []

    def goal(what: str, value: float | None, limit: float, *, at_most: bool) -> None:
        met = None if value is None else (value <= limit if at_most else value >= limit)
        sign = "<=" if at_most else ">="
        out.append({"goal": f"{what} {sign} {limit:g}", "value": value, "met": met})

    for fmt in ("json", "html"):
        static = (pages.get(f"nginx-static/{fmt}") or {}).get("rps")
        cache = pages.get(f"nginx-cache/{fmt}") or {}
        w1 = pages.get(f"pipgate-1/{fmt}") or {}
        w2 = pages.get(f"pipgate-2/{fmt}") or {}
        goal(
            f"warm page {fmt}, 2 workers, ratio to nginx-static",
            _ratio(w2.get("rps"), static),
            GOAL_PAGE_RATIO_W2,
            at_most=False,
        )
        goal(
            f"warm page {fmt}, 1 worker, ratio to nginx-cache",
            _ratio(w1.get("rps"), cache.get("rps")),
            1.0,
            at_most=False,
        )
        for name, got in (("1 worker", w1), ("2 workers", w2)):
            goal(
                f"warm page {fmt} p99, {name}, ratio to nginx-cache's",
                _ratio(got.get("p99_ms"), cache.get("p99_ms")),
                1.0,
                at_most=True,
            )
    for tool in ("uv", "pip"):
        for kind, limit in (("cold", GOAL_COLD_INSTALL), ("warm", GOAL_WARM_INSTALL)):
            static = (installs.get(f"nginx-static/{tool}/{kind}") or {}).get("wall_s")
            for target in ("pipgate-1", "pipgate-2"):
                got = (installs.get(f"{target}/{tool}/{kind}") or {}).get("wall_s")
                if got is not None:
                    goal(
                        f"{kind} {tool} install, {target}, ratio to nginx-static",
                        _ratio(got, static),
                        limit,
                        at_most=True,
                    )
    idle = sum(result.get("idle_rss_mib", {}).get("pipgate-1", {}).values()) or None
    goal("idle RSS, pipgate 1 worker, MiB", idle, GOAL_IDLE_RSS_MIB, at_most=True)
    workers = [
        mib
        for target in ("pipgate-1", "pipgate-2")
        for role, mib in result.get("peak_rss_mib", {}).get(target, {}).items()
        if target == "pipgate-1" or role != "supervisor"
    ]
    goal(
        "peak RSS per worker under these loads, MiB",
        max(workers) if workers else None,
        GOAL_WORKER_RSS_MIB,
        at_most=True,
    )
    lists = summary["lists"]
    static = (lists.get("nginx-static") or {}).get("rps")
    for target in ("pipgate-1", "pipgate-2"):
        goal(
            f"warm /simple/, {target}, ratio to nginx-static",
            _ratio((lists.get(target) or {}).get("rps"), static),
            GOAL_LIST_RATIO,
            at_most=False,
        )
    return out


def passed(result: dict[str, Any]) -> bool:
    """Every response checked was right: pages, loads, installs, lists."""
    return (
        bool(result["pages"])
        and all(x["ok"] for x in result["pages"])
        and bool(result["installs"])
        and all(not x["problems"] for x in result["installs"])
        and all(x["ok"] for x in result["lists"] + result["cold_lists"])
    )


def _fmt(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    """The report: the issue's table, the goals, the list and memory figures."""
    summary, config = result["summary"], result["config"]
    pages, installs = summary["pages"], summary["installs"]
    machine = result["machine"]
    lines = [
        f"### pipgate side by side with nginx ({result['date']}, `{result['git']}`)",
        "",
        f"{machine['cpus']} CPUs, {machine['platform']}, Python {machine['python']}, nginx "
        f"{machine['nginx']} ({config['nginx_workers']} workers), {machine['uv']}, "
        f"{machine['pip']}; load average {machine['loadavg'][0]} → {machine['loadavg'][1]}. "
        f"Medians of {config['rounds']} round(s); page loads: wrk, {config['connections']} "
        f"connections, {config['duration_s']} s, page {config['page']}; installs: a tree of "
        f"{config['tree']}, cold = never seen by the server, client caches off.",
        "",
        "| measure | " + " | ".join(TARGETS) + " |",
        "| --- |" + " --- |" * len(TARGETS),
    ]

    def row(label: str, cells: list[str]) -> None:
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    for fmt in config["formats"]:
        static = (pages.get(f"nginx-static/{fmt}") or {}).get("rps")
        cells = []
        for target in TARGETS:
            got = pages.get(f"{target}/{fmt}") or {}
            ratio = _ratio(got.get("rps"), static)
            cells.append(f"{_fmt(got.get('rps'))} ({_fmt(ratio, 2)}×)")
        row(f"warm page {fmt.upper()}, req/s (ratio to nginx-static)", cells)
        row(
            f"warm page {fmt.upper()}, p50 / p99 ms",
            [
                f"{_fmt((pages.get(f'{t}/{fmt}') or {}).get('p50_ms'), 1)} / "
                f"{_fmt((pages.get(f'{t}/{fmt}') or {}).get('p99_ms'), 1)}"
                for t in TARGETS
            ],
        )
        row(
            f"CPU ms per 1,000 warm {fmt.upper()} page requests",
            [_fmt((pages.get(f"{t}/{fmt}") or {}).get("cpu_ms_per_1000")) for t in TARGETS],
        )
    for tool, kind in (("uv", "cold"), ("pip", "cold"), ("uv", "warm"), ("pip", "warm")):
        if tool not in (config["warm_tools"] if kind == "warm" else config["tools"]):
            continue
        static = (installs.get(f"nginx-static/{tool}/{kind}") or {}).get("wall_s")
        cells = []
        for target in TARGETS:
            got = (installs.get(f"{target}/{tool}/{kind}") or {}).get("wall_s")
            cells.append(f"{_fmt(got, 2)} s ({_fmt(_ratio(got, static), 2)}×)")
        command = "uv pip install" if tool == "uv" else "pip install"
        row(f"{kind} `{command}` of {TREE_SIZE} distributions (ratio)", cells)
    idle = result.get("idle_rss_mib", {})
    peak = result.get("peak_rss_mib", {})
    row("idle RSS MiB (all processes)", [_fmt(sum(idle.get(t, {}).values()), 1) for t in TARGETS])
    row(
        "peak RSS MiB per process under the loads",
        [" / ".join(_fmt(v, 1) for v in peak.get(t, {}).values()) for t in TARGETS],
    )
    lines += ["", "PyPI-sized `/simple/` list:", ""]
    lines += ["| | cold build | names | body | peak RSS (PSS) | warm req/s | MiB/s | ratio |"]
    lines += ["| --- | --- | --- | --- | --- | --- | --- | --- |"]
    lists = summary["lists"]
    static = lists.get("nginx-static") or {}
    for cold in result["cold_lists"]:
        warm = lists.get(cold["target"]) or {}
        lines.append(
            f"| {cold['target']} | {cold['seconds']:.1f} s | {cold['names']:,} | "
            f"{cold['body_bytes'] / MIB:.1f} MiB {cold['encoding']} | {cold['peak_rss_mib']} "
            f"({cold['peak_pss_mib']}) MiB | {_fmt(warm.get('rps'), 1)} | "
            f"{_fmt(warm.get('mib_s'))} | {_fmt(_ratio(warm.get('rps'), static.get('rps')), 2)}× |"
        )
    lines.append(
        f"| nginx-static (pipgate-1's bytes as a file) | – | – | – | – | "
        f"{_fmt(static.get('rps'), 1)} | {_fmt(static.get('mib_s'))} | 1.00× |"
    )
    lines += ["", "| goal | value | met |", "| --- | --- | --- |"]
    for g in summary["goals"]:
        met = "–" if g["met"] is None else ("met" if g["met"] else "**not met**")
        lines.append(f"| {g['goal']} | {_fmt(g['value'], 2)} | {met} |")
    problems = {k: v for k, v in result.get("log_problems", {}).items() if v}
    for name, examples in problems.items():
        lines.append(f"\n{name} logged warnings/errors: " + "; ".join(examples[:3]))
    lines.append(
        "\nEvery response checked (pages, loads, installed files, lists): "
        + ("PASS" if result["passed"] else "FAIL")
    )
    return "\n".join(lines)


def parse_list(text: str, allowed: tuple[str, ...]) -> list[str]:
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items or any(item not in allowed for item in items):
        raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)}, got {text!r}")
    return items


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="s per measured page load")
    parser.add_argument("--warmup", type=int, default=1, help="s of unmeasured load first")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (pages)")
    parser.add_argument(
        "--list-connections", type=int, default=4, help="wrk connections on /simple/ (4)"
    )
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (medians reported)")
    parser.add_argument(
        "--list-size", type=int, default=930_000, help="names in the upstream's /simple/"
    )
    parser.add_argument(
        "--formats",
        type=lambda t: parse_list(t, ("json", "html")),
        default=["json", "html"],
        help="page formats (json,html)",
    )
    parser.add_argument(
        "--tools",
        type=lambda t: parse_list(t, ("uv", "pip")),
        default=["uv", "pip"],
        help="installers (uv,pip)",
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter that runs `-m pipgate serve` (another venv's pipgate; default: this one)",
    )
    parser.add_argument("--short", action="store_true", help="the CI smoke: seconds, not figures")
    output_arguments(parser, timeout=1800, markdown=True)
    return parser


def main() -> int:
    """Run; exit 1 when a check fails, 2 when it cannot run."""
    parser = build_parser()
    args = parser.parse_args()
    args.warm_tools = args.tools
    if args.short:
        args.duration, args.warmup, args.rounds = 1, 0, 1
        args.warm_tools = [t for t in args.tools if t == "uv"]  # pip is slow to start
        args.connections, args.list_size = min(args.connections, 16), min(args.list_size, 20_000)
    if min(args.duration, args.connections, args.rounds, args.list_connections) < 1:
        parser.error("--duration, --connections, --list-connections and --rounds must be >= 1")
    args.nginx = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    beside = Path(sys.executable).parent / "uv"  # a venv's uv, when not on PATH
    args.wrk = shutil.which("wrk")
    args.uv = shutil.which("uv") or (str(beside) if os.access(beside, os.X_OK) else None)
    missing = [n for n, p in (("nginx", args.nginx), ("wrk", args.wrk), ("uv", args.uv)) if not p]
    if missing:
        log(f"{' and '.join(missing)} not found: run `sudo bash bench/setup.sh` first")
        return 2
    result, _ = run_in_workdir("peers", args, run)
    if result is None:
        return 2
    return write_report(args, result, markdown(result))


if __name__ == "__main__":
    sys.exit(main())
