"""Operations endpoints: health, readiness, metrics, failures and the status page.

These are open to anyone who can connect (probes and scrapes need no credentials), so
they say what is wrong only in words that name nothing inside: reasons, upstream
names, up or down. The same views with every detail (URLs, proxies, exception texts,
the cache path, projects) are the admin API's (:mod:`pipgate.web.admin`).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from aiohttp import web

from pipgate.failures import summary
from pipgate.redact import redact_url
from pipgate.web import status
from pipgate.web.state import Services, services

#: Failures ``/-/failures`` summarises (the whole kept list).
SUMMARY_LIMIT = 200


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.Response(text="ok\n")


async def readiness(svc: Services, *, full: bool) -> tuple[dict[str, Any], int]:
    """Readiness and its status: the cache is writable and at least one upstream is
    usable. Every upstream is listed with its state and last failure reason; ``full``
    adds its URL, the detail of that failure, its proxies and the cache path."""
    problems = []
    warnings = []
    writable = await asyncio.to_thread(os.access, svc.blobs.tmp, os.W_OK)
    if not writable:
        where = f" {svc.blobs.tmp}" if full else ""
        problems.append(f"cache directory{where} is not writable")
    upstreams = []
    for client in svc.upstreams:
        if client.is_down:
            warnings.append(f"upstream {client.name} is marked down after repeated failures")
        if not client.tls_verification:
            warnings.append(f"TLS verification is OFF for upstream {client.name} (verify = false)")
        last = client.last_error
        entry: dict[str, Any] = {
            "name": client.name,
            "up": not client.is_down,
            "last_error": {"reason": last.reason.value} if last else None,
            "proxies": [{"up": client.proxies.is_up(p)} for p in client.proxies.proxies],
        }
        if full:
            entry["url"] = redact_url(client.index_url)
            if last:
                entry["last_error"]["detail"] = last.detail
            entry["proxies"] = [
                {"proxy": proxy.label, "up": client.proxies.is_up(proxy)}
                for proxy in client.proxies.proxies
            ]
        upstreams.append(entry)
    down = [client.name for client in svc.upstreams if client.is_down]
    if svc.config.offline:
        warnings.append("offline: no upstream traffic; serving only what is cached")
    elif len(down) == len(upstreams):
        problems.append("every upstream is marked down after repeated failures: " + ", ".join(down))
    fleet = svc.fleet.readiness() if not svc.fleet.single else None
    if fleet is not None and not svc.fleet.coordinator.healthy:
        # Still serving (each replica fetches on its own), so a warning, not a problem.
        warnings.append("fleet coordination is down: duplicate upstream fetches possible")
    body = {
        "ready": not problems,
        "offline": svc.config.offline,
        "problems": problems,
        "warnings": warnings,
        "upstreams": upstreams,
        "unavailable": down,
    }
    if fleet is not None:
        body["fleet"] = fleet
    return body, 200 if not problems else 503


async def readyz(request: web.Request) -> web.Response:
    """``/readyz``: readiness for probes (JSON, nothing that names a host or a path)."""
    body, code = await readiness(services(request), full=False)
    return web.json_response(body, status=code)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition."""
    svc = services(request)
    body = svc.metrics.render()
    return web.Response(body=body, headers={"Content-Type": svc.metrics.content_type})


async def failures(request: web.Request) -> web.Response:
    """``/-/failures``: the recent failed fetches, newest first, as reasons and
    upstream names with their counts (the details: ``/-/admin/failures``)."""
    recent = await services(request).failures.recent(limit_param(request, SUMMARY_LIMIT))
    return web.json_response(summary(recent), headers={"Cache-Control": "no-store"})


def limit_param(request: web.Request, default: int, most: int = SUMMARY_LIMIT) -> int:
    """``?limit=N`` within 1..``most`` (anything unreadable: ``default``)."""
    try:
        return max(1, min(most, int(request.query.get("limit", str(default)))))
    except ValueError:
        return default


async def landing(request: web.Request) -> web.Response:
    """``/``: the status page for people who open pipgate in a browser (the summary;
    the full page is ``/-/admin/status``)."""
    return await status.status_page(request, full=False)
