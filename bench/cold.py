"""What a cold distribution costs pipgate (issue 13): its page, ``.metadata`` and wheel,
never seen before, fetched in that order as an installer does.

Installs measured side by side (``peers.py``) move by ±30 % between identical runs on a
2-core machine; the CPU pipgate spends per cold distribution is steadier, and it is what
makes a cold install slow here (every cold request is work on a saturated machine). One
fake PyPI (``bench/upstream.py``, 16 KiB tree wheels) and one ``pipgate serve``; the
same chains (page → metadata → wheel of a fresh project, one keep-alive connection per
chain) go once straight to the upstream and once through pipgate, first one at a time
(``--concurrency 1``: the latency of each step), then ``--concurrency`` at once (the
throughput). Reported: wall time per chain, the median of each step, and the CPU of
pipgate's processes and of the upstream per chain. Every body is checked (the page
names its project, the metadata and the wheel hash to what the page publishes).

Run: ``python bench/cold.py [--chains 90] [--concurrency 10] [--workers 1] [--python
PATH] [--json F] [--markdown F]``; ``--short`` is the CI smoke (seconds).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import http.client
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from bench import (
    HOST,
    git_describe,
    log,
    machine,
    output_arguments,
    pipgate_origin,
    run_in_workdir,
    write_report,
)
from load import SERVER_ENV, FakeUpstream, PipgateServer
from pages import cpu_seconds
from upstream import TREE_SIZE, tree_project

JSON = "application/vnd.pypi.simple.v1+json"


class Chain:
    """One keep-alive connection asking for one fresh distribution, step by step."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection(HOST, port, timeout=60)

    def get(self, path: str, accept: str = "*/*") -> bytes:
        self.conn.request("GET", path, headers={"Accept": accept, "User-Agent": "bench-cold"})
        resp = self.conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise AssertionError(f"GET {path}: {resp.status} {body[:200]!r}")
        return body

    def run(self, project: str) -> tuple[float, float, float]:
        """Seconds for the page, the metadata and the wheel; raises on a wrong body."""
        start = time.perf_counter()
        page_path = f"/simple/{project}/"
        page = json.loads(self.get(page_path, JSON))
        if page.get("name") != project:
            raise AssertionError(f"page of {project} names {page.get('name')!r}")
        newest = page["files"][-1]
        url = urljoin(page_path, newest["url"])
        paged = time.perf_counter()
        metadata = self.get(url + ".metadata")
        published = (newest.get("core-metadata") or {}).get("sha256")
        if published and hashlib.sha256(metadata).hexdigest() != published:
            raise AssertionError(f"metadata of {project} does not match its sha256")
        described = time.perf_counter()
        wheel = self.get(url)
        if hashlib.sha256(wheel).hexdigest() != newest["hashes"]["sha256"]:
            raise AssertionError(f"wheel of {project} does not match its sha256")
        done = time.perf_counter()
        self.conn.close()
        return paged - start, described - paged, done - described


def measure(
    port: int, server_pid: int, upstream_pid: int, tag: str, chains: int, concurrency: int
) -> dict[str, Any]:
    """``chains`` fresh distributions, ``concurrency`` at a time."""
    projects = [tree_project(f"{tag}{n // TREE_SIZE}", n % TREE_SIZE) for n in range(chains)]
    cpu, upstream_cpu, start = cpu_seconds(server_pid), cpu_seconds(upstream_pid), time.time()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        steps = list(pool.map(lambda p: Chain(port).run(p), projects))
    wall = time.time() - start
    cpu, upstream_cpu = cpu_seconds(server_pid) - cpu, cpu_seconds(upstream_pid) - upstream_cpu

    def ms(seconds: float) -> float:
        return round(seconds * 1000 / chains, 2)

    return {
        "concurrency": concurrency,
        "chains": chains,
        "wall_ms_per_chain": ms(wall),
        "median_ms": {
            step: round(statistics.median(s[i] for s in steps) * 1000, 2)
            for i, step in enumerate(("page", "metadata", "wheel"))
        },
        "server_cpu_ms_per_chain": ms(cpu),
        "upstream_cpu_ms_per_chain": ms(upstream_cpu),
    }


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    origin = pipgate_origin(args.python)
    log(f"pipgate from {origin}")
    upstream = FakeUpstream(workdir, versions=4)
    server = PipgateServer(
        workdir,
        upstream.index_url,
        workers=args.workers,
        python=args.python,
        env=SERVER_ENV,
        name="pipgate",
    )
    result: dict[str, Any] = {"runs": [], "problems": []}
    run_id = uuid.uuid4().hex[:6]
    try:
        server.start()
        measure(server.port, server.pid, upstream.proc.pid, f"w{run_id}", 6, 1)  # warm-up
        for concurrency in sorted({1, args.concurrency}):
            for target in ("upstream", "pipgate"):
                port = upstream.port if target == "upstream" else server.port
                pid = upstream.proc.pid if target == "upstream" else server.pid
                tag = f"{target[0]}{concurrency}{run_id}"
                try:
                    got = measure(port, pid, upstream.proc.pid, tag, args.chains, concurrency)
                except AssertionError as exc:
                    result["problems"].append(f"{target}, concurrency {concurrency}: {exc}")
                    continue
                result["runs"].append({"target": target, **got})
                log(f"{target} c={concurrency}: {got['wall_ms_per_chain']} ms/chain, "
                    f"CPU {got['server_cpu_ms_per_chain']} ms/chain")
    finally:
        server.stop()
        upstream.stop()
    result.update(
        {
            "git": git_describe(),
            "pipgate_module": origin,
            "machine": machine(),
            "config": {"chains": args.chains, "workers": args.workers, "short": args.short},
        }
    )
    expected = 2 * len({1, args.concurrency})  # both targets at each concurrency
    result["passed"] = not result["problems"] and len(result["runs"]) == expected
    return result


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"### A cold distribution through pipgate (`{result['git']}`)",
        "",
        f"{m['cpus']} CPUs, {m['platform']}, Python {m['python']}, load average "
        f"{m['loadavg'][0]}; {result['config']['chains']} fresh distributions per row "
        f"(page, `.metadata`, 16 KiB wheel), pipgate with {result['config']['workers']} "
        "worker(s).",
        "",
        "| target | at once | wall ms per distribution | median page / metadata / wheel ms "
        "| server CPU ms per distribution |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in result["runs"]:
        steps = " / ".join(f"{r['median_ms'][s]:.1f}" for s in ("page", "metadata", "wheel"))
        lines.append(
            f"| {r['target']} | {r['concurrency']} | {r['wall_ms_per_chain']:.1f} | {steps} "
            f"| {r['server_cpu_ms_per_chain']:.1f} |"
        )
    lines += ["", "Every body checked: " + ("PASS" if result["passed"] else "FAIL")]
    lines += [f"- {p}" for p in result["problems"]]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=90, help="distributions per row (90)")
    parser.add_argument("--concurrency", type=int, default=10, help="chains at once (10)")
    parser.add_argument("--workers", type=int, default=1, help="pipgate workers (1)")
    parser.add_argument("--python", default=sys.executable, help="interpreter of pipgate")
    parser.add_argument("--short", action="store_true", help="the CI smoke: seconds")
    output_arguments(parser, timeout=600, markdown=True)
    return parser


def main() -> int:
    """Run; exit 1 when a body was wrong, 2 when it cannot run."""
    parser = build_parser()
    args = parser.parse_args()
    if args.short:
        args.chains, args.concurrency = 6, 3
    if min(args.chains, args.concurrency, args.workers) < 1:
        parser.error("--chains, --concurrency and --workers must be >= 1")
    result, _ = run_in_workdir("cold", args, run)
    if result is None:
        return 2
    return write_report(args, result, markdown(result))


if __name__ == "__main__":
    sys.exit(main())
