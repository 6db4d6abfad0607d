"""Command line: ``pipgate serve`` (more subcommands join here)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence

from aiohttp import web

from pipgate import __version__, logs
from pipgate.app import create_app
from pipgate.config import SETTINGS, Config, ConfigError, load_config
from pipgate.doctor import report, run_doctor, succeeded
from pipgate.redact import redact_url
from pipgate.store.integrity import verify_cache
from pipgate.workers import serve_workers

log = logging.getLogger("pipgate")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; every flag of a setting defaults to "not given"."""
    parser = argparse.ArgumentParser(prog="pipgate", description="A caching, verifying PyPI proxy.")
    parser.add_argument("--version", action="version", version=f"pipgate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the proxy in the foreground")
    _add_config_flags(serve)
    verify = commands.add_parser(
        "verify",
        help="re-hash every cached file and report corrupt ones",
        description="Exit status: 0 clean (unverified files alone are fine), 1 corrupt files "
        "found and removed by --repair, 2 configuration error or no cache, 3 corrupt or "
        "unreadable files remain.",
    )
    _add_config_flags(verify)
    verify.add_argument("--repair", action="store_true", help="remove corrupt files")
    verify.add_argument("--json", action="store_true", help="machine-readable report")
    doctor = commands.add_parser(
        "doctor",
        help="check each step of the path to upstream and say what to fix",
        description="Exit status 0 only when every step passes.",
    )
    _add_config_flags(doctor)
    doctor.add_argument("--json", action="store_true", help="machine-readable report")
    doctor.add_argument(
        "--project", default="pip", help="project whose page and smallest file are fetched"
    )
    doctor.add_argument(
        "--upstream-name",
        metavar="NAME",
        help="check only the upstream with this name (default: each in turn)",
    )
    return parser


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="TOML configuration file (env PIPGATE_CONFIG)"
    )
    for setting in SETTINGS:
        if setting.flag:
            parser.add_argument(
                setting.option,
                dest=setting.name,
                default=None,
                metavar=setting.metavar or setting.name.upper(),
                help=f"{setting.help} (env {setting.env_var}, toml {setting.toml_key})",
            )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pipgate`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        config = load_config(
            config_file=args.config,
            env=os.environ,
            flags={s.name: getattr(args, s.name, None) for s in SETTINGS if s.flag},
        )
    except ConfigError as exc:
        print(f"pipgate: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        return serve(config)
    if args.command == "verify":
        return verify(config, repair=args.repair, as_json=args.json)
    if args.command == "doctor":
        return doctor(
            config, project=args.project, upstream=args.upstream_name, as_json=args.json
        )
    return 2


def doctor(config: Config, *, project: str, upstream: str | None, as_json: bool) -> int:
    """``pipgate doctor``: 0 when every step of the path works, 1 otherwise."""
    steps = asyncio.run(run_doctor(config, project=project, upstream=upstream))
    if as_json:
        print(json.dumps({"ok": succeeded(steps), "steps": [s.to_json() for s in steps]}, indent=2))
    else:
        print(report(steps))
    return 0 if succeeded(steps) else 1


def verify(config: Config, *, repair: bool, as_json: bool) -> int:
    """``pipgate verify``: re-hash the cache (fsck-like exit status)."""
    interactive = sys.stderr.isatty()

    def progress(line: str) -> None:
        print(f"\r{line}", end="", file=sys.stderr, flush=True)

    try:
        report = verify_cache(
            config.cache_dir, repair=repair, progress=progress if interactive else None
        )
    except FileNotFoundError:
        print(f"pipgate: no cache directory at {config.cache_dir}", file=sys.stderr)
        return 2
    if interactive:
        print(file=sys.stderr)
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print("\n".join(report.lines()))
    remaining = [c for c in report.corrupt if not c.removed]
    if remaining:
        return 3
    return 1 if report.corrupt else 0


def serve(config: Config) -> int:
    """Run the server until interrupted."""
    logs.setup(config.log_level, config.log_format)
    try:
        config.cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"pipgate: cache.dir {config.cache_dir}: cannot create ({exc})", file=sys.stderr)
        return 2
    log.info(
        "pipgate %s on http://%s:%d/simple/ upstreams=%s cache=%s workers=%d",
        __version__,
        config.host,
        config.port,
        ", ".join(f"{u.name}={redact_url(u.url)}" for u in config.upstreams),
        config.cache_dir,
        config.workers,
    )
    try:
        if config.workers > 1:
            return serve_workers(config)
        web.run_app(
            create_app(config),
            host=config.host,
            port=config.port,
            print=None,
            access_log=None,
        )
    except OSError as exc:
        print(f"pipgate: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1
    return 0
