"""``/-/fleet/blobs/<key>``: another replica streams a file from this one.

Only replicas call it, with the fleet secret; the load balancer does not route it. The
answer is the committed blob, or this host's download in progress (bytes as they reach
the disk, the last one held back until verified); never an upstream fetch of its own.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from pipgate.errors import UpstreamError
from pipgate.fleet.peers import SECRET_HEADER
from pipgate.links import is_file_key
from pipgate.web.files import Sent, send
from pipgate.web.http import text_error, upstream_error
from pipgate.web.state import services


async def blob(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    secret = svc.config.fleet_secret or ""
    given = request.headers.get(SECRET_HEADER, "")
    if not secret or not hmac.compare_digest(given.encode(), secret.encode()):
        return text_error(403, "fleet endpoint: wrong or missing fleet secret")
    key = request.match_info["key"]
    if not is_file_key(key):
        return text_error(404, "no such file")
    try:
        served = await svc.files.for_peer(key)
        if served is None:
            return text_error(404, "not committed or downloading here")
        sent = Sent()
        response = await send(request, served, sent)
    except UpstreamError as exc:
        return upstream_error(exc)
    svc.metrics.fleet_peer_bytes.labels(direction="sent").inc(sent.bytes)
    return response
