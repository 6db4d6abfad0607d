"""Middlewares: turn every failure into a short, classified answer, and count requests."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from pipgate.errors import UpstreamError
from pipgate.web.http import text_error
from pipgate.web.state import services

log = logging.getLogger("pipgate.web")


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """No traceback ever reaches a client; upstream failures keep their cause."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.status != 405:
            return text_error(exc.status, exc.reason.lower())
        raise
    except UpstreamError as exc:
        return text_error(
            exc.client_status,
            f"upstream fetch failed: {exc.reason.value}: {exc.detail}",
            exc.reason,
        )
    except (ConnectionError, TimeoutError):
        raise
    except Exception:
        log.exception("internal error on %s %s", request.method, request.rel_url.path)
        return text_error(500, "internal error (logged)")


@web.middleware
async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
    """``pipgate_http_requests_total{route,method,status}`` with route templates."""
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        route = request.match_info.route.name or "other"
        method = request.method if request.method in ("GET", "HEAD") else "other"
        services(request).metrics.http_requests.labels(
            route=route, method=method, status=str(status)
        ).inc()
