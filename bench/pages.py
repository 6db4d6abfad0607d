"""Benchmark warm project pages: requests/s and latency of cached pages through pipgate.

Everything runs on 127.0.0.1: ``bench/upstream.py`` serves page-only projects of
synthetic files (a mid-size one of 200 files and a small one by default), pipgate runs
as a real ``<python> -m pipgate serve`` process in front of it, each page is fetched
once (the cold GET) and checked, then loaded with ``wrk`` (64 keep-alive connections,
10 s, ``Accept-Encoding: gzip`` as pip and uv send) in JSON and in HTML, for each
``--workers`` count. Every response must be a 200 and a cache hit. The same load on
the upstream (which serves prebuilt bytes) is the reference. Without ``wrk`` a Python
client (threads, raw sockets) stands in; it takes more of the CPUs pipgate runs on, so
compare only runs made with the same client. See ``bench/README.md``.

Run: ``python bench/pages.py [--workers 1,2] [--duration 10] [--python PATH] [--json F]``
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from bench import (
    HOST,
    JSON_TYPE,
    BenchError,
    Connection,
    HttpError,
    Pipgate,
    Upstream,
    git_describe,
    log,
    output_arguments,
    pipgate_origin,
    process_tree,
    run_in_workdir,
    stop_process,
)

#: What each format's load sends as ``Accept``.
ACCEPT = {"json": JSON_TYPE, "html": "text/html"}
#: The ``Content-Type`` pipgate must answer each format with.
CONTENT_TYPE = {"json": JSON_TYPE, "html": "text/html"}
#: Headers of every page request (pip and uv accept gzip).
COMMON_HEADERS = {"Accept-Encoding": "gzip", "User-Agent": "pipgate-bench"}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

#: Counts statuses and X-Pipgate-Cache values per wrk thread (cheap next to pipgate's
#: cost per request) and prints one JSON line with them and the latency percentiles.
WRK_SCRIPT = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {}; caches = {} end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  local c = headers["X-Pipgate-Cache"] or headers["x-pipgate-cache"] or "-"
  caches[c] = (caches[c] or 0) + 1
end
local function merge(into, from)
  for k, v in pairs(from) do into[tostring(k)] = (into[tostring(k)] or 0) + v end
end
local function object(t)
  local parts = {}
  for k, v in pairs(t) do table.insert(parts, string.format('"%s": %d', k, v)) end
  return "{" .. table.concat(parts, ", ") .. "}"
end
function done(summary, latency, requests)
  local statuses_all, caches_all = {}, {}
  for _, thread in ipairs(threads) do
    merge(statuses_all, thread:get("statuses"))
    merge(caches_all, thread:get("caches"))
  end
  local e = summary.errors
  io.write(string.format(
    'PIPGATE-BENCH {"duration_us": %d, "requests": %d, "bytes": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"statuses": %s, "caches": %s}\\n',
    summary.duration, summary.requests, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout,
    object(statuses_all), object(caches_all)))
end
"""


# --- load generators -----------------------------------------------------------------------


@dataclass
class Load:
    """One fixed-duration load on one page: throughput, latency, what came back."""

    target: str
    workers: int | None
    project: str
    files: int
    format: str
    client: str
    connections: int
    duration_s: float
    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    body_bytes: int
    statuses: dict[str, int]
    caches: dict[str, int]
    errors: dict[str, int] = field(default_factory=dict)
    #: CPU time pipgate (all its processes) spent per request, and the client's.
    server_cpu_us: float | None = None
    client_cpu_us: float | None = None

    @classmethod
    def measured(cls, raw: Raw, body_bytes: int, **run: Any) -> Load:
        """The figures of one ``raw`` load; ``run`` says what was loaded and how
        (target, workers, project, files, format, client, connections, CPU)."""
        return cls(
            **run,
            duration_s=round(raw.duration, 2),
            requests=raw.requests,
            rps=round(raw.requests / raw.duration, 1),
            p50_ms=round(raw.p50 * 1000, 2),
            p90_ms=round(raw.p90 * 1000, 2),
            p99_ms=round(raw.p99 * 1000, 2),
            max_ms=round(raw.max * 1000, 2),
            body_bytes=body_bytes,
            statuses=raw.statuses,
            caches=raw.caches,
            errors=raw.errors,
        )

    @property
    def ok(self) -> bool:
        """Every response a 200 (and, through pipgate, a cache hit); no socket errors."""
        hits = self.target != "pipgate" or self.caches == {"hit": self.requests}
        return (
            self.requests > 0
            and self.statuses == {"200": self.requests}
            and hits
            and not any(self.errors.values())
        )


@dataclass(frozen=True)
class Raw:
    """What a load generator measured (times in seconds)."""

    duration: float
    requests: int
    p50: float
    p90: float
    p99: float
    max: float
    statuses: dict[str, int]
    caches: dict[str, int]
    errors: dict[str, int]


def run_wrk(
    wrk: str, url: str, headers: dict[str, str], args: argparse.Namespace, script: Path
) -> Raw:
    """``wrk`` on ``url`` for ``args.duration`` s; its Lua script reports the figures."""
    argv = [
        wrk,
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{args.duration}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
    ]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    done = subprocess.run(
        [*argv, url], capture_output=True, text=True, timeout=args.duration + 60, check=False
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("PIPGATE-BENCH ")), None)
    if done.returncode != 0 or line is None:
        output = (done.stderr + done.stdout).strip()[-500:]
        raise BenchError(f"wrk failed ({done.returncode}): {output}")
    got = json.loads(line.removeprefix("PIPGATE-BENCH "))
    return Raw(
        duration=got["duration_us"] / 1e6,
        requests=got["requests"],
        p50=got["p50_us"] / 1e6,
        p90=got["p90_us"] / 1e6,
        p99=got["p99_us"] / 1e6,
        max=got["max_us"] / 1e6,
        statuses=got["statuses"],
        caches=got["caches"],
        errors={k: v for k, v in got["errors"].items() if v},
    )


def run_threads(port: int, path: str, headers: dict[str, str], args: argparse.Namespace) -> Raw:
    """The fallback: one thread per connection, each GETting until told to stop."""
    n = args.connections
    latencies: list[list[float]] = [[] for _ in range(n)]
    statuses: list[Counter[str]] = [Counter() for _ in range(n)]
    caches: list[Counter[str]] = [Counter() for _ in range(n)]
    errors: list[Counter[str]] = [Counter() for _ in range(n)]
    barrier = threading.Barrier(n + 1)
    stop = threading.Event()

    def client(i: int) -> None:
        conn = Connection(HOST, port, timeout=10)
        try:
            conn.connect()
            barrier.wait(30)
            while not stop.is_set():
                fetch = conn.get(path, headers=headers)
                latencies[i].append(fetch.t_end - fetch.t_sent)
                statuses[i][str(fetch.status)] += 1
                caches[i][fetch.headers.get("x-pipgate-cache", "-")] += 1
        except (OSError, HttpError, threading.BrokenBarrierError) as exc:
            errors[i][type(exc).__name__] += 1
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(n)]
    for thread in threads:
        thread.start()
    barrier.wait(30)
    start = time.perf_counter()
    stop.wait(args.duration)
    stop.set()
    for thread in threads:
        thread.join(30)
    elapsed = time.perf_counter() - start
    every = sorted(x for per in latencies for x in per) or [float("nan")]

    def pick(q: float) -> float:
        return every[min(len(every) - 1, int(q * len(every)))]

    return Raw(
        duration=elapsed,
        requests=sum(len(per) for per in latencies),
        p50=pick(0.50),
        p90=pick(0.90),
        p99=pick(0.99),
        max=every[-1],
        statuses=dict(sum(statuses, Counter())),
        caches=dict(sum(caches, Counter())),
        errors=dict(sum(errors, Counter())),
    )


def cpu_seconds(root: int | None) -> float:
    """User + system CPU time of ``root`` and its descendants so far (0 without root)."""
    if root is None:
        return 0.0
    total = 0
    for pid in process_tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            continue
    return total / CLOCK_TICKS


def children_cpu() -> float:
    """CPU time of the waited-for children (the load generator) so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- one target ----------------------------------------------------------------------------


def check_page(base: str, project: str, fmt: str, files: int, *, pipgate: bool) -> int:
    """GET one page as the load will, check it; returns the body size on the wire."""
    url = f"{base}/simple/{project}/"
    headers = {**COMMON_HEADERS, "Accept": ACCEPT[fmt]}
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        status, got = response.status, response.headers
        raw = response.read()
    body = gzip.decompress(raw) if got.get("Content-Encoding") == "gzip" else raw
    media = got.get("Content-Type", "").split(";")[0].strip()
    expected_type = CONTENT_TYPE[fmt] if pipgate else JSON_TYPE
    if status != 200 or media != expected_type:
        raise BenchError(f"{url} ({fmt}): status {status}, Content-Type {media!r}")
    if media == JSON_TYPE:
        links = [urljoin(url, f["url"]) for f in json.loads(body)["files"]]
    else:
        text = body.decode()
        links = [urljoin(url, part.split('"', 1)[0]) for part in text.split('href="')[1:]]
    if len(links) != files:
        raise BenchError(f"{url} ({fmt}): {len(links)} file links, expected {files}")
    origin = urlsplit(base)
    if any(
        (urlsplit(u).hostname, urlsplit(u).port) != (origin.hostname, origin.port) for u in links
    ):
        raise BenchError(f"{url} ({fmt}): a file link leaves {base}")
    return len(raw)


def load_page(
    target: str,
    port: int,
    project: str,
    files: int,
    fmt: str,
    args: argparse.Namespace,
    *,
    workers: int | None = None,
    server_pid: int | None = None,
) -> Load:
    """Check the page, warm every worker up unmeasured, then measure one load."""
    base = f"http://{HOST}:{port}"
    path = f"/simple/{project}/"
    body = check_page(base, project, fmt, files, pipgate=target == "pipgate")
    headers = {**COMMON_HEADERS, "Accept": ACCEPT[fmt]}

    def generate(duration: int) -> Raw:
        settings = argparse.Namespace(**{**vars(args), "duration": duration})
        if args.wrk:
            return run_wrk(args.wrk, base + path, headers, settings, args.wrk_script)
        return run_threads(port, path, headers, settings)

    if args.warmup > 0:
        generate(args.warmup)
    server_before, client_before = cpu_seconds(server_pid), children_cpu()
    raw = generate(args.duration)
    server_cpu = cpu_seconds(server_pid) - server_before
    client_cpu = children_cpu() - client_before
    per_request = 1e6 / max(1, raw.requests)
    result = Load.measured(
        raw,
        body,
        target=target,
        workers=workers,
        project=project,
        files=files,
        format=fmt,
        client="wrk" if args.wrk else "python",
        connections=args.connections,
        server_cpu_us=round(server_cpu * per_request, 1) if server_pid else None,
        client_cpu_us=round(client_cpu * per_request, 1) if args.wrk else None,
    )
    log(
        f"{target} w={workers or '-'} {project} {fmt}: {result.rps:.0f} req/s, "
        f"p50 {result.p50_ms} ms, p99 {result.p99_ms} ms{'' if result.ok else '  CHECK FAILED'}"
    )
    return result


def pipgate_loads(
    workdir: Path, upstream: Upstream, workers: int, args: argparse.Namespace
) -> tuple[list[Load], list[str], str]:
    """A fresh pipgate: the cold GET of each page, then every project x format load."""
    pipgate = Pipgate(workdir, f"w{workers}", upstream, workers, args.python)
    try:
        for project in args.projects:
            cold = time.perf_counter()
            check_page(pipgate.base, project, "json", args.projects[project], pipgate=True)
            log(f"cold GET of {project}: {(time.perf_counter() - cold) * 1000:.0f} ms")
        loads = [
            load_page(
                "pipgate",
                pipgate.port,
                project,
                files,
                fmt,
                args,
                workers=workers,
                server_pid=pipgate.proc.pid,
            )
            for project, files in args.projects.items()
            for fmt in args.formats
        ]
        problems = pipgate.log_problems()
        command = " ".join(pipgate.argv[1:]).replace(str(workdir), "$WORKDIR")
    finally:
        stop_process(pipgate.proc)
    return loads, problems, command


# --- the run -------------------------------------------------------------------------------


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Start the upstream, measure every pipgate configuration and the reference."""
    load_before = round(os.getloadavg()[0], 2)
    origin = pipgate_origin(args.python)
    log(f"pipgate from {origin}; load by {'wrk' if args.wrk else 'the Python client'}")
    files_dir = workdir / "files"
    files_dir.mkdir()
    args.wrk_script = workdir / "count.lua"
    args.wrk_script.write_text(WRK_SCRIPT)
    upstream = Upstream(files_dir, workdir, sys.executable, args.projects)
    loads: list[Load] = []
    problems: list[str] = []
    commands: list[str] = []
    try:
        for workers in args.workers:
            log(f"pipgate --workers {workers}")
            got, logged, command = pipgate_loads(workdir, upstream, workers, args)
            loads += got
            problems += logged
            commands.append(command)
        if args.reference:
            log("reference: the same load on the upstream directly (JSON, prebuilt bytes)")
            loads += [
                load_page("upstream", upstream.port, project, files, "json", args)
                for project, files in args.projects.items()
            ]
    finally:
        stop_process(upstream.proc)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "pipgate_commands": commands,
        "pipgate_python": args.python,
        "pipgate_module": origin,
        "git": git_describe(),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            # Other work on the machine skews every figure: 1-minute load before, after.
            "loadavg": [load_before, round(os.getloadavg()[0], 2)],
        },
        "config": {
            "client": "wrk" if args.wrk else "python",
            "threads": args.threads,
            "connections": args.connections,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "workers": args.workers,
            "projects": args.projects,
            "formats": args.formats,
        },
        "loads": [asdict(x) for x in loads],
        "pipgate_log_problems": problems,
        "passed": all(x.ok for x in loads),
    }


def report(result: dict[str, Any]) -> str:
    """The results as a plain-text table."""
    config = result["config"]
    lines = [
        f"pipgate pages {result['date']}  ({result['machine']['cpus']} CPUs; {config['client']}, "
        f"{config['connections']} connections, {config['duration_s']:g} s per load; "
        "client, upstream and pipgate share the CPUs)",
        f"pipgate from {result['pipgate_module']}; load average before/after "
        f"{result['machine']['loadavg'][0]} / {result['machine']['loadavg'][1]}",
        "",
        f"{'target':<9} {'workers':>7} {'project':<10} {'files':>5} {'format':<6} {'req/s':>8} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'body B':>7} {'CPU us/req':>10}  check",
    ]
    for x in result["loads"]:
        cpu = "" if x["server_cpu_us"] is None else f"{x['server_cpu_us']:.0f}"
        ok = Load(**x).ok
        check = "ok" if ok else f"FAIL statuses={x['statuses']} caches={x['caches']} {x['errors']}"
        lines.append(
            f"{x['target']:<9} {x['workers'] or '-':>7} {x['project']:<10} {x['files']:>5} "
            f"{x['format']:<6} {x['rps']:>8.0f} {x['p50_ms']:>7.2f} {x['p99_ms']:>7.2f} "
            f"{x['max_ms']:>7.1f} {x['body_bytes']:>7} {cpu:>10}  {check}"
        )
    if result["pipgate_log_problems"]:
        lines.append(f"pipgate logged {len(result['pipgate_log_problems'])} warnings/errors:")
        lines += [f"  {line}" for line in result["pipgate_log_problems"][:10]]
    lines.append(
        "every response 200 (and a pipgate cache hit): " + ("PASS" if result["passed"] else "FAIL")
    )
    return "\n".join(lines)


def parse_counts(text: str) -> list[int]:
    """``1,2`` -> [1, 2]."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected counts like 1,2, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("counts must be positive integers")
    return counts


def parse_projects(text: str) -> dict[str, int]:
    """``midsize:200,small:3`` -> {name: number of files}."""
    projects: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, count = part.rpartition(":")
        if not name or not count.isdigit() or int(count) < 1 or name != name.lower():
            raise argparse.ArgumentTypeError(f"expected name:files like midsize:200, got {part!r}")
        projects[name] = int(count)
    if not projects:
        raise argparse.ArgumentTypeError("at least one project")
    return projects


def parse_formats(text: str) -> list[str]:
    """``json,html``."""
    formats = [part.strip() for part in text.split(",") if part.strip()]
    if not formats or any(f not in ACCEPT for f in formats):
        raise argparse.ArgumentTypeError(f"formats are json and html, got {text!r}")
    return formats


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workers", type=parse_counts, default=[1, 2], help="pipgate --workers counts (1,2)"
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter that runs `-m pipgate serve` (another venv's pipgate; default: this one)",
    )
    parser.add_argument(
        "--projects",
        type=parse_projects,
        default={"midsize": 200, "small": 3},
        help="page-only projects, name:files (default midsize:200,small:3)",
    )
    parser.add_argument("--formats", type=parse_formats, default=["json", "html"], help="json,html")
    parser.add_argument("--duration", type=int, default=10, help="s per measured load")
    parser.add_argument(
        "--warmup", type=int, default=1, help="s of unmeasured load first (0 = none)"
    )
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument(
        "--client",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="load generator (auto: wrk if installed, else the Python client)",
    )
    parser.add_argument(
        "--no-reference",
        dest="reference",
        action="store_false",
        help="skip the same load on the upstream directly",
    )
    output_arguments(parser, timeout=900, markdown=False)
    return parser


def main() -> int:
    """Run the benchmark; exit 1 when a check fails, 2 when it cannot run."""
    parser = build_parser()
    args = parser.parse_args()
    if args.duration < 1 or args.warmup < 0 or args.connections < 1 or args.threads < 1:
        parser.error("--duration, --connections and --threads must be >= 1, --warmup >= 0")
    args.wrk = shutil.which("wrk") if args.client != "python" else None
    if args.wrk is None:
        if args.client == "wrk":
            log("wrk is not installed (Debian: apt-get install wrk)")
            return 2
        log(
            "wrk not found (Debian: apt-get install wrk): using the Python client, which "
            "takes more CPU from pipgate; compare only with runs of the same client"
        )
    result, _ = run_in_workdir("pages", args, run)
    if result is None:
        return 2
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
