"""Soak pipgate: the load mix of ``load.py`` for ten minutes, watching every process.

The same stack as ``load.py`` (a fake upstream with generated projects, ``pipgate
serve --workers 2`` as a real process, wrk or an aiohttp client) runs the same mix in
segments of ``--segment`` seconds at one concurrency. The RSS and the open file
descriptors of the supervisor and of each worker (from ``/proc``) are recorded at
start, every few seconds under load, and in a quiet moment between segments. The run
fails on any error of the mix (as ``load.py`` counts them), when a process exits or is
replaced, or when a process grows past the bounds between the first quiet sample after
``--settle`` seconds of load and the last one: RSS by more than ``--rss-growth`` MiB,
descriptors other than upstream sockets by more than ``--fd-growth``, upstream sockets
beyond the pools' size, or any client socket left open when no client is connected.
See ``bench/README.md``.

Run: ``python bench/soak.py [--duration 600] [--segment 30] [--connections 32] [--short]``
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import git_describe, pipgate_origin
from load import Level, PipgateServer, Stack, add_common, level_table, log, machine, main_with

#: Upstream connections a worker may keep: ``page_connections`` + ``file_connections``
#: (README, defaults 16 + 64).
UPSTREAM_POOL = 16 + 64


def _tcp_table() -> dict[str, tuple[int, int, str]]:
    """Socket inode -> (local port, remote port, state) of every TCP socket."""
    table: dict[str, tuple[int, int, str]] = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(name).read_text().splitlines()[1:]:
                parts = line.split()
                local, remote, state, inode = parts[1], parts[2], parts[3], parts[9]
                ports = [int(address.rsplit(":", 1)[1], 16) for address in (local, remote)]
                table[inode] = (ports[0], ports[1], state)
    return table


def fd_kinds(pid: int, server_port: int, upstream_port: int) -> Counter[str]:
    """The open descriptors of ``pid`` by kind: file, pipe, anon, listen, client (a
    connection to pipgate's port), upstream (to the upstream's), socket (other)."""
    kinds: Counter[str] = Counter()
    table = _tcp_table()
    fd_dir = Path(f"/proc/{pid}/fd")
    with contextlib.suppress(OSError):
        for entry in fd_dir.iterdir():
            try:
                target = os.readlink(entry)
            except OSError:
                continue  # closed while we looked
            if target.startswith("socket:["):
                local, remote, state = table.get(target[8:-1], (0, 0, ""))
                if local == server_port:
                    kinds["listen" if state == "0A" else "client"] += 1
                elif remote == upstream_port:
                    kinds["upstream"] += 1
                else:
                    kinds["socket"] += 1
            elif target.startswith("pipe:"):
                kinds["pipe"] += 1
            elif target.startswith("anon_inode:"):
                kinds["anon"] += 1
            else:
                kinds["file"] += 1
    return kinds


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB (0 if it is gone)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@dataclass
class Sample:
    """One look at every pipgate process."""

    t: float
    phase: str  # start, load, quiet, end
    #: role -> RSS KiB, and role -> descriptors by kind.
    rss_kib: dict[str, int]
    fds: dict[str, dict[str, int]]

    def total_fds(self, role: str) -> int:
        return sum(self.fds[role].values())


def take_sample(server: PipgateServer, upstream_port: int, t0: float, phase: str) -> Sample:
    """RSS and descriptors of the supervisor and each worker now."""
    roles = server.processes()
    return Sample(
        t=round(time.monotonic() - t0, 1),
        phase=phase,
        rss_kib={role: rss_kib(pid) for role, pid in roles.items()},
        fds={role: dict(fd_kinds(pid, server.port, upstream_port)) for role, pid in roles.items()},
    )


class Sampler:
    """Samples every ``interval`` s in a thread while the load runs."""

    def __init__(
        self, server: PipgateServer, upstream_port: int, t0: float, interval: float
    ) -> None:
        self.server = server
        self.upstream_port = upstream_port
        self.t0 = t0
        self.interval = interval
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append(take_sample(self.server, self.upstream_port, self.t0, "load"))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


@dataclass
class Growth:
    """One process from the baseline (first quiet sample after settling) to the end."""

    role: str
    rss_start_mib: float
    rss_base_mib: float
    rss_end_mib: float
    rss_peak_mib: float
    fds_start: int
    fds_base: int
    fds_end: int
    fds_peak: int
    #: Descriptors other than upstream sockets, baseline and end.
    other_fds_base: int
    other_fds_end: int
    upstream_sockets_max: int
    client_sockets_end: int
    problems: list[str] = field(default_factory=list)


def growth(role: str, samples: list[Sample], base: Sample, args: argparse.Namespace) -> Growth:
    """Figures and bound checks for ``role``."""
    mine = [s for s in samples if role in s.rss_kib]
    start, end = mine[0], mine[-1]

    def other(s: Sample) -> int:
        return s.total_fds(role) - s.fds[role].get("upstream", 0)

    quiet = [s for s in mine if s.phase in ("quiet", "end") and s.t >= base.t]
    result = Growth(
        role=role,
        rss_start_mib=round(start.rss_kib[role] / 1024, 1),
        rss_base_mib=round(base.rss_kib[role] / 1024, 1),
        rss_end_mib=round(end.rss_kib[role] / 1024, 1),
        rss_peak_mib=round(max(s.rss_kib[role] for s in mine) / 1024, 1),
        fds_start=start.total_fds(role),
        fds_base=base.total_fds(role),
        fds_end=end.total_fds(role),
        fds_peak=max(s.total_fds(role) for s in mine),
        other_fds_base=other(base),
        other_fds_end=other(end),
        upstream_sockets_max=max(s.fds[role].get("upstream", 0) for s in mine),
        client_sockets_end=end.fds[role].get("client", 0),
    )
    rss_growth = result.rss_end_mib - result.rss_base_mib
    if rss_growth > args.rss_growth:
        result.problems.append(
            f"RSS grew {rss_growth:.1f} MiB (bound {args.rss_growth:g}) from "
            f"{result.rss_base_mib} to {result.rss_end_mib} MiB"
        )
    fd_growth = result.other_fds_end - result.other_fds_base
    if fd_growth > args.fd_growth:
        result.problems.append(
            f"descriptors other than upstream sockets grew by {fd_growth} (bound "
            f"{args.fd_growth}): {base.fds[role]} -> {end.fds[role]}"
        )
    if result.upstream_sockets_max > UPSTREAM_POOL:
        result.problems.append(
            f"{result.upstream_sockets_max} upstream sockets (the pools hold {UPSTREAM_POOL})"
        )
    lingering = [s.fds[role].get("client", 0) for s in quiet]
    if any(lingering):
        result.problems.append(f"client sockets open with no client connected: {lingering}")
    return result


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Start the stack, warm it, run the segments, watch the processes."""
    origin = pipgate_origin(args.python)
    stack = Stack(args, workdir, name="soak")
    log(f"pipgate from {origin}; load by {stack.client}; {args.duration} s", "soak")
    levels: list[Level] = []
    samples: list[Sample] = []
    problems: list[str] = []
    try:
        server = stack.start()
        assert stack.upstream is not None
        up_port = stack.upstream.port
        t0 = time.monotonic()
        roles = server.processes()
        samples.append(take_sample(server, up_port, t0, "start"))
        log(f"pipgate up: {roles}", "soak")
        stack.warm()
        base: Sample | None = None
        loaded = 0  # seconds of load so far
        with Sampler(server, up_port, t0, args.sample) as sampler:
            while loaded < args.duration:
                segment = min(args.segment, args.duration - loaded)
                level = stack.level(args.connections, segment)
                levels.append(level)
                loaded += segment
                time.sleep(args.quiet)
                quiet = take_sample(server, up_port, t0, "quiet")
                samples.append(quiet)
                if base is None and loaded >= args.settle:
                    base = quiet
                rss = ", ".join(f"{r} {k / 1024:.1f}" for r, k in quiet.rss_kib.items())
                log(
                    f"{loaded} s of load: {level.rps:.0f} req/s, errors "
                    f"{level.errors or 0}; RSS MiB {rss}; fds "
                    f"{[quiet.total_fds(r) for r in quiet.fds]}",
                    "soak",
                )
                if server.processes() != roles:
                    problems.append(f"processes changed: {roles} -> {server.processes()}")
                    break
        samples += sampler.samples
        samples.sort(key=lambda s: s.t)
        samples.append(take_sample(server, up_port, t0, "end"))
        if base is None:
            base = next(s for s in reversed(samples) if s.phase in ("quiet", "end"))
        growths = [growth(role, samples, base, args) for role in roles]
        command = " ".join(server.argv[1:]).replace(str(workdir), "$WORKDIR")
        env = {k: v for k, v in server.env.items() if k.startswith("PIPGATE_")}
    finally:
        stack.stop()
    errors: Counter[str] = Counter()
    for level in levels:
        errors.update(level.errors)
    for g in growths:
        problems += [f"{g.role}: {p}" for p in g.problems]
    requests = sum(x.requests for x in levels)
    seconds = sum(x.duration_s for x in levels)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "pipgate_command": command,
        "pipgate_env": env,
        "pipgate_module": origin,
        "git": git_describe(),
        "machine": machine(),
        "config": {
            "client": stack.client,
            "connections": args.connections,
            "duration_s": args.duration,
            "segment_s": args.segment,
            "settle_s": args.settle,
            "baseline_t": base.t,
            "bounds": {
                "rss_growth_mib": args.rss_growth,
                "fd_growth": args.fd_growth,
                "upstream_sockets": UPSTREAM_POOL,
            },
        },
        "totals": {
            "requests": requests,
            "seconds": round(seconds, 1),
            "rps": round(requests / seconds, 1) if seconds else 0.0,
            "checked": sum(x.checked for x in levels),
            "misses_sent": sum(x.misses_sent for x in levels),
            "upstream_gets": dict(
                sum((Counter(x.upstream_gets) for x in levels), Counter[str]())
            ),
        },
        "errors": dict(errors),
        "growth": [asdict(g) for g in growths],
        "problems": problems,
        "segments": [asdict(x) for x in levels],
        "samples": [asdict(s) for s in samples],
        "passed": bool(levels) and not errors and not problems,
    }


def report(result: dict[str, Any]) -> str:
    """The results as text, ending with the verdict line."""
    config, totals = result["config"], result["totals"]
    lines = [
        f"pipgate soak {result['date']}  ({result['machine']['cpus']} CPUs; {config['client']}, "
        f"{config['connections']} connections, {config['duration_s']} s in "
        f"{config['segment_s']} s segments; baseline at t={config['baseline_t']} s)",
        f"pipgate from {result['pipgate_module']} ({result['git']})",
        f"{totals['requests']} requests in {totals['seconds']} s ({totals['rps']} req/s), "
        f"{totals['misses_sent']} never seen, upstream GETs {totals['upstream_gets']}, "
        f"{totals['checked']} sampled responses verified",
        "",
        f"{'process':<14} {'RSS MiB start':>13} {'base':>6} {'end':>6} {'peak':>6}  "
        f"{'fds start':>9} {'base':>5} {'end':>5} {'peak':>5}  {'non-upstream base/end':>21} "
        f"{'upstream max':>12}",
    ]
    for g in result["growth"]:
        lines.append(
            f"{g['role']:<14} {g['rss_start_mib']:>13} {g['rss_base_mib']:>6} "
            f"{g['rss_end_mib']:>6} {g['rss_peak_mib']:>6}  {g['fds_start']:>9} "
            f"{g['fds_base']:>5} {g['fds_end']:>5} {g['fds_peak']:>5}  "
            f"{g['other_fds_base']:>10}/{g['other_fds_end']:<10} {g['upstream_sockets_max']:>12}"
        )
    bounds = config["bounds"]
    lines += [
        f"bounds (baseline -> end): RSS +{bounds['rss_growth_mib']:g} MiB, descriptors other "
        f"than upstream sockets +{bounds['fd_growth']}, upstream sockets <= "
        f"{bounds['upstream_sockets']}, no client socket open between segments",
        "",
        "segments:",
        *level_table(Level(**x) for x in result["segments"]),
        "",
    ]
    lines += [f"problem: {p}" for p in result["problems"]]
    errors = sum(result["errors"].values())
    verdict = "PASS" if result["passed"] else "FAIL"
    lines.append(
        f"soak: {verdict} ({totals['seconds']:.0f} s, {errors} errors, {len(result['problems'])} "
        "growth problems)"
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=600, help="s of load in all (600)")
    parser.add_argument("--segment", type=int, default=30, help="s per load segment (30)")
    parser.add_argument("--connections", type=int, default=32, help="connections (32)")
    parser.add_argument(
        "--settle", type=int, default=60, help="s of load before the baseline sample (60)"
    )
    parser.add_argument("--sample", type=float, default=5.0, help="s between samples (5)")
    parser.add_argument(
        "--quiet", type=float, default=2.0, help="s without load before a quiet sample (2)"
    )
    parser.add_argument(
        "--rss-growth", type=float, default=40.0, help="MiB a process may grow (40)"
    )
    parser.add_argument(
        "--fd-growth", type=int, default=4, help="non-upstream descriptors a process may add (4)"
    )
    parser.add_argument(
        "--short", action="store_true", help="the CI form: 24 s in 8 s segments"
    )
    parser.add_argument("--timeout", type=float, default=1200, help="abort after this many s")
    add_common(parser)
    return parser


def main() -> int:
    """Parse the command line and run."""
    args = build_parser().parse_args()
    if args.short:
        args.duration, args.segment, args.settle, args.warmup, args.quiet = 24, 8, 8, 1, 1.0
    args.levels = [args.connections]
    return main_with("soak", args, run, report)


if __name__ == "__main__":
    sys.exit(main())
