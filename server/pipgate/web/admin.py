"""The admin API under ``/-/admin/``: JSON over HTTP for the operations of
:mod:`pipgate.admin` and :mod:`pipgate.policy.commands`, and the full views of the
status page, readiness and failures.

The routes exist only behind the admin token (checked, with the 404 when there is
none, by :mod:`pipgate.web.auth`). Reading is GET; changing is POST or DELETE, and a
POST must say ``Content-Type: application/json``: a form on another site cannot send
that without the browser asking first, so a browser logged in with the admin token
cannot be made to change anything (CSRF). A reload reaches every worker: the request
makes its own process, or with ``--workers`` the supervisor, take SIGHUP, which is
what ``kill -HUP`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from pipgate import admin
from pipgate.config import Config, ConfigError
from pipgate.policy import commands
from pipgate.policy.quarantine import QuarantineError
from pipgate.policy.rules import entries_as_json
from pipgate.web import ops, status
from pipgate.web.middleware import client_address
from pipgate.web.state import services

log = logging.getLogger("pipgate.admin")

#: From ``/-/admin/status`` back to the server's root, for the page's relative links.
STATUS_ROOT = "../../"


@dataclass
class AdminState:
    """What the admin handlers of one app need besides the services."""

    reload_config: Callable[[], Config] | None
    #: The process that takes SIGHUP for a reload (this one, or the supervisor).
    reload_pid: int
    #: Whether ``reload_pid`` is the supervisor (it must still be our parent).
    supervised: bool
    scrub: asyncio.Task[dict[str, Any]] | None = None
    stop_scrub: threading.Event = field(default_factory=threading.Event)


ADMIN = web.AppKey("admin_state", AdminState)


def install(
    app: web.Application,
    *,
    reload_config: Callable[[], Config] | None,
    supervised: bool,
) -> None:
    """The admin routes and their state on ``app``; a running scrub stops at shutdown."""
    state = AdminState(
        reload_config=reload_config,
        reload_pid=os.getppid() if supervised else os.getpid(),
        supervised=supervised,
    )
    app[ADMIN] = state
    r = app.router
    r.add_get("/-/admin/status", status_view, name="admin_status")
    r.add_get("/-/admin/readyz", readyz, name="admin_readyz")
    r.add_get("/-/admin/failures", failures, name="admin_failures")
    r.add_get("/-/admin/audit", audit, name="admin_audit")
    r.add_delete("/-/admin/pages/{project}", purge_pages, name="admin_pages")
    r.add_delete("/-/admin/files/{sha256}", remove_file, name="admin_file")
    r.add_delete("/-/admin/files/{project}/{filename}", remove_file, name="admin_file_by_name")
    r.add_get("/-/admin/scrub", scrub_state, name="admin_scrub")
    r.add_post("/-/admin/scrub", start_scrub, name="admin_scrub")
    r.add_post("/-/admin/reload", reload, name="admin_reload")
    r.add_get("/-/admin/quarantine", quarantine_list, name="admin_quarantine")
    r.add_post("/-/admin/quarantine", quarantine_add, name="admin_quarantine")
    r.add_delete("/-/admin/quarantine", quarantine_remove, name="admin_quarantine")

    async def stop_scrub(app: web.Application) -> AsyncIterator[None]:
        yield
        task = state.scrub
        if task is not None and not task.done():
            state.stop_scrub.set()  # the pass stops after the file it is hashing
            with contextlib.suppress(Exception):
                await task

    app.cleanup_ctx.append(stop_scrub)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _done(request: web.Request, what: str, **fields: object) -> None:
    """One log line per change made through the API (who and what, no secrets)."""
    client = client_address(request, services(request).config.trust_forwarded)
    details = " ".join(f"{k}={v}" for k, v in fields.items())
    log.info(
        "admin: %s client=%s %s", what, client, details, extra={"event": "admin", "what": what}
    )


async def _json_body(request: web.Request) -> dict[str, Any]:
    """The JSON object a POST carries (empty body: ``{}``); ``ValueError`` otherwise."""
    if request.content_type != "application/json":
        raise _Unsupported
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise ValueError("the body is not JSON") from None
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    return body


class _Unsupported(Exception):
    """A POST without ``Content-Type: application/json``."""


UNSUPPORTED = "a POST to the admin API takes Content-Type: application/json"


# --- views -----------------------------------------------------------------------------


async def status_view(request: web.Request) -> web.Response:
    """``GET /-/admin/status``: the full status page."""
    return await status.status_page(request, full=True, root=STATUS_ROOT)


async def readyz(request: web.Request) -> web.Response:
    """``GET /-/admin/readyz``: readiness with URLs, proxies, details, the cache path."""
    body, code = await ops.readiness(services(request), full=True)
    return web.json_response(body, status=code)


async def failures(request: web.Request) -> web.Response:
    """``GET /-/admin/failures?limit=N``: recent failures, newest first, every field."""
    recent = await services(request).failures.recent(ops.limit_param(request, 50))
    return web.json_response({"failures": [f.to_json() for f in recent]})


async def audit(request: web.Request) -> web.Response:
    """``GET /-/admin/audit?project=&version=&sha256=&since=&user=&limit=``."""
    q = request.query
    try:
        limit = int(q.get("limit", admin.AUDIT_LIMIT))
        rows = await asyncio.to_thread(
            admin.audit_rows,
            services(request).config,
            project=q.get("project"),
            versions=q.get("version"),
            sha256=q.get("sha256"),
            since=q.get("since"),
            user=q.get("user"),
            limit=limit,
        )
    except ValueError as exc:
        return _error(400, str(exc))
    return web.json_response({"downloads": rows})


# --- changes ---------------------------------------------------------------------------


async def purge_pages(request: web.Request) -> web.Response:
    """``DELETE /-/admin/pages/{project}``: forget its cached pages."""
    try:
        result = await asyncio.to_thread(
            admin.purge_pages, services(request).config, request.match_info["project"]
        )
    except ValueError as exc:
        return _error(400, str(exc))
    services(request).hot_pages.clear()
    _done(request, "purge pages", project=result["project"], upstreams=len(result["purged"]))
    return web.json_response(result)


async def remove_file(request: web.Request) -> web.Response:
    """``DELETE /-/admin/files/{sha256}`` or ``/-/admin/files/{project}/{filename}``:
    200 removed, 409 in use or too new (try again), 404 not cached."""
    info = request.match_info
    try:
        removal = await asyncio.to_thread(
            admin.remove_file,
            services(request).config,
            sha256=info.get("sha256"),
            project=info.get("project"),
            filename=info.get("filename"),
        )
    except ValueError as exc:
        return _error(400, str(exc))
    except admin.NoSuchFile as exc:
        return _error(404, str(exc))
    body = removal.to_json()
    if removal.removed:
        _done(request, "remove file", files=len(removal.removed))
        return web.json_response(body)
    why = "being sent right now" if removal.in_use else "stored less than a minute ago"
    return web.json_response({**body, "error": f"not removed: {why}; try again"}, status=409)


async def scrub_state(request: web.Request) -> web.Response:
    """``GET /-/admin/scrub``: how the last scrub went, or how far the running one is."""
    return web.json_response(await asyncio.to_thread(admin.scrub_state, services(request).config))


async def start_scrub(request: web.Request) -> web.Response:
    """``POST /-/admin/scrub``: start a pass of ``pipgate verify --repair`` in this
    worker (202), unless one is running (409)."""
    try:
        await _json_body(request)
    except _Unsupported:
        return _error(415, UNSUPPORTED)
    except ValueError as exc:
        return _error(400, str(exc))
    state = request.app[ADMIN]
    config = services(request).config
    if state.scrub is not None and not state.scrub.done():
        return _error(409, "a scrub of this cache is already running")
    try:
        lock = await asyncio.to_thread(admin.claim_scrub, config)
    except admin.ScrubBusy as exc:
        return _error(409, str(exc))
    except OSError as exc:
        return _error(503, f"cannot start a scrub: {exc.strerror or exc}")
    state.stop_scrub.clear()
    state.scrub = asyncio.create_task(_scrub(config, lock, state.stop_scrub), name="admin-scrub")
    _done(request, "scrub started")
    return web.json_response({"state": "running"}, status=202)


async def _scrub(config: Config, lock: int, stop: threading.Event) -> dict[str, Any]:
    try:
        result = await asyncio.to_thread(admin.run_scrub, config, lock, stop)
    except Exception:
        log.exception("admin scrub failed")
        raise
    log.info(
        "admin scrub %s: %s checked, %s removed",
        result["state"],
        result.get("checked", "-"),
        result.get("removed", "-"),
    )
    return result


async def reload(request: web.Request) -> web.Response:
    """``POST /-/admin/reload``: check the configuration file, then have every worker
    reload its policy (202); a file with an error is refused (400) and nothing changes."""
    try:
        await _json_body(request)
    except _Unsupported:
        return _error(415, UNSUPPORTED)
    except ValueError as exc:
        return _error(400, str(exc))
    state = request.app[ADMIN]
    if state.reload_config is None:
        return _error(409, "this server has no configuration to reload (it is embedded)")
    try:
        fresh = await asyncio.to_thread(state.reload_config)
    except ConfigError as exc:
        return _error(400, f"configuration not reloaded: {exc}")
    if state.supervised and os.getppid() != state.reload_pid:
        return _error(503, "the supervisor of this worker is gone; restart pipgate")
    os.kill(state.reload_pid, signal.SIGHUP)
    _done(request, "reload", rules=len(fresh.policy_rules))
    return web.json_response(
        {"reloading": True, "workers": fresh.workers, "rules": len(fresh.policy_rules)},
        status=202,
    )


async def quarantine_list(request: web.Request) -> web.Response:
    """``GET /-/admin/quarantine``: the quarantine list."""
    entries = await asyncio.to_thread(commands.listing, services(request).config)
    return web.json_response({"entries": entries_as_json(entries)})


async def quarantine_add(request: web.Request) -> web.Response:
    """``POST /-/admin/quarantine`` with ``{"target": "litellm==1.82.7", "reason": …,
    "purge": false}``: in force in every worker within a second."""
    try:
        body = await _json_body(request)
        target, reason = body.get("target"), body.get("reason")
        purge = body.get("purge", False)
        if not isinstance(target, str) or not isinstance(reason, str) or not reason.strip():
            raise ValueError('expected {"target": "PROJECT[SPEC]", "reason": "why"}')
        if not isinstance(purge, bool):
            raise ValueError('"purge" is true or false')
        result = await asyncio.to_thread(
            commands.add,
            services(request).config,
            target,
            reason,
            do_purge=purge,
            source="admin-api",
        )
    except _Unsupported:
        return _error(415, UNSUPPORTED)
    except (ValueError, QuarantineError) as exc:
        return _error(400, str(exc))
    _done(request, "quarantine add", target=target, purge=purge)
    return web.json_response(result, status=201 if result["added"] else 200)


async def quarantine_remove(request: web.Request) -> web.Response:
    """``DELETE /-/admin/quarantine?target=PROJECT[SPEC]``: lift it."""
    target = request.query.get("target", "")
    try:
        result = await asyncio.to_thread(commands.remove, services(request).config, target)
    except (ValueError, QuarantineError) as exc:
        return _error(400, str(exc))
    _done(request, "quarantine remove", target=target, removed=result["removed"])
    return web.json_response(result)
