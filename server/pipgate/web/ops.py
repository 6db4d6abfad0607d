"""Operations endpoints: health, readiness, metrics, failures and the status page."""

from __future__ import annotations

import asyncio
import os

from aiohttp import web

from pipgate.redact import redact_url
from pipgate.web import status
from pipgate.web.state import services


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    """Readiness: the cache is writable and at least one upstream is usable; the JSON
    body lists every upstream with its state and says what is wrong (and warns when
    TLS verification is off)."""
    svc = services(request)
    problems = []
    warnings = []
    writable = await asyncio.to_thread(os.access, svc.blobs.tmp, os.W_OK)
    if not writable:
        problems.append(f"cache directory {svc.blobs.tmp} is not writable")
    upstreams = []
    for client in svc.upstreams:
        if client.is_down:
            warnings.append(f"upstream {client.name} is marked down after repeated failures")
        if not client.tls_verification:
            warnings.append(f"TLS verification is OFF for upstream {client.name} (verify = false)")
        last = client.last_error
        upstreams.append(
            {
                "name": client.name,
                "url": redact_url(client.index_url),
                "up": not client.is_down,
                "last_error": (
                    {"reason": last.reason.value, "detail": last.detail} if last else None
                ),
                "proxies": [
                    {"proxy": proxy.label, "up": client.proxies.is_up(proxy)}
                    for proxy in client.proxies.proxies
                ],
            }
        )
    down = [client.name for client in svc.upstreams if client.is_down]
    if svc.config.offline:
        warnings.append("offline: no upstream traffic; serving only what is cached")
    elif len(down) == len(upstreams):
        problems.append("every upstream is marked down after repeated failures: " + ", ".join(down))
    body = {
        "ready": not problems,
        "offline": svc.config.offline,
        "problems": problems,
        "warnings": warnings,
        "upstreams": upstreams,
        "unavailable": down,
    }
    return web.json_response(body, status=200 if not problems else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition."""
    svc = services(request)
    body = svc.metrics.render()
    return web.Response(body=body, headers={"Content-Type": svc.metrics.content_type})


async def failures(request: web.Request) -> web.Response:
    """``/-/failures``: the recent failed fetches, newest first (bounded list, JSON)."""
    svc = services(request)
    try:
        limit = max(1, min(200, int(request.query.get("limit", "50"))))
    except ValueError:
        limit = 50
    recent = await svc.failures.recent(limit)
    return web.json_response({"failures": [f.to_json() for f in recent]})


async def landing(request: web.Request) -> web.Response:
    """``/``: the status page for people who open pipgate in a browser."""
    return await status.status_page(request)
