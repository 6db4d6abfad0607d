"""The middleware: a request id, an access line and metrics for every request, and a
short, classified answer for every failure."""

from __future__ import annotations

import logging
import os
import time
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from pipgate import limits
from pipgate.errors import UpstreamError
from pipgate.limits import Limited
from pipgate.logs import access_line, new_request_id, request_id
from pipgate.web.http import text_error, upstream_error
from pipgate.web.state import Services, services

log = logging.getLogger("pipgate.web")
#: Where the request id is kept on the request (responses are prepared after the
#: middleware returned, outside its context).
REQUEST_ID = web.RequestKey("request_id", str)
#: The user a request authenticated as (set by :mod:`pipgate.web.auth`; absent: anonymous).
USER = web.RequestKey("user", str)
#: This worker's pid, for access lines (a fork gets its own: see _after_fork).
_PID = os.getpid()


def _after_fork() -> None:
    global _PID
    _PID = os.getpid()


os.register_at_fork(after_in_child=_after_fork)


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, one access log line, the request counter and latency histogram
    (labelled by route template, never by raw path), and a short, classified answer
    for every failure. One middleware, not two: each layer costs every request."""
    rid = new_request_id(request.headers.get("X-Request-ID"))
    request[REQUEST_ID] = rid
    token = request_id.set(rid)
    svc = services(request)
    client = limits.client_address.set(client_address(request, svc.config.trust_forwarded))
    started = time.monotonic()
    status = 500
    try:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400 or exc.status == 405:
                status = exc.status
                raise
            response = text_error(exc.status, exc.reason.lower())
        except UpstreamError as exc:
            response = upstream_error(exc)
        except Limited as exc:
            response = limited(exc)
        except (ConnectionError, TimeoutError):
            raise
        except Exception:
            # No traceback ever reaches a client.
            log.exception("internal error on %s %s", request.method, request.rel_url.path)
            response = text_error(500, "internal error (logged)")
        status = response.status
        return response
    finally:
        route = request.match_info.route.name or "other"
        account(request, svc, route, status, time.monotonic() - started, rid)
        request_id.reset(token)
        limits.client_address.reset(client)


def account(
    request: web.Request,
    svc: Services,
    route: str,
    status: int,
    elapsed: float,
    rid: str,
    path: str | None = None,
) -> None:
    """The request counter and latency histogram, and the access line, of one request
    (here and on the hot path, :mod:`pipgate.web.hot_path`, which knows ``path``: the
    request's, without a query)."""
    method = request.method
    counted = method if method in ("GET", "HEAD") else "other"
    svc.metrics.request_done(route, counted, status, elapsed)
    if access_line.logger.isEnabledFor(logging.INFO):
        remote = request.remote
        shown = str(request.rel_url) if path is None else path

        def fields() -> dict[str, Any]:
            return {
                "event": "access",
                "remote": remote,
                "method": method,
                "path": shown,
                "route": route,
                "status": status,
                "duration": round(elapsed, 6),
                "user_agent": request.headers.get("User-Agent", "")[:200],
                "pid": _PID,
                "request_id": rid,
            }

        message = f'{remote} "{method} {shown}" {status} {elapsed:.3f}s pid={_PID}'
        access_line.write(message, rid, fields)


def client_address(request: web.Request, trust_forwarded: bool) -> str:
    """The client's address; behind a trusted reverse proxy, the first of
    ``X-Forwarded-For``."""
    if trust_forwarded:
        forwarded = request.headers.get("X-Forwarded-For", "").split(",")[0].strip()
        if (
            forwarded
            and len(forwarded) <= 64
            and all(c.isalnum() or c in ".:[]" for c in forwarded)
        ):
            return forwarded
    return request.remote or "-"


def limited(exc: Limited) -> web.Response:
    """The answer to a request a limit refused: its status, ``Retry-After`` and the
    cause in the body and the reason phrase (pip prints the phrase)."""
    response = text_error(
        exc.status, exc.detail, phrase=f"{HTTPStatus(exc.status).phrase}: pipgate: {exc.detail}"
    )
    response.headers["Retry-After"] = str(exc.retry_after)
    response.headers["X-Pipgate-Limit"] = exc.limit
    return response


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every response, streamed ones too, names its request."""
    response.headers["X-Request-ID"] = request.get(REQUEST_ID, "-")
