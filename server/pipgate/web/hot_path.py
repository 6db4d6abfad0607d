"""Warm project pages answered before aiohttp routes the request.

A warm page is a memo look-up (:mod:`pipgate.web.hot_pages`), yet through the
application it also paid for the router, the middleware chain, the current-app fix-up
and the response-prepare signal: on a 2-core machine about a third of its CPU. Here a
plain ``GET /simple/<name>/`` whose answer the memo holds is answered straight from the
server's request handler, with everything the middleware gives every request (request
id, request metrics, page cache metric, access line) and the same bytes and headers as
the handler would send (``tests/test_hot_path.py`` compares them). Anything else (an
unknown or unnormalised name, a query, a revalidation, a cold page, any failure) goes
through the application as before. An app with a gate (logins, tokens, an admin token)
never takes this path: every request there must meet the gate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from pipgate.logs import new_request_id
from pipgate.simple.names import is_valid_name, normalize
from pipgate.web import middleware, pages
from pipgate.web.state import SERVICES, Services

log = logging.getLogger("pipgate.web")

#: Whether the app may answer warm pages before routing (``create_app`` sets it).
ENABLED = web.AppKey("hot_path", bool)
#: The route name its requests are counted and logged under (the handler's route).
ROUTE = "simple_project"

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class Runner(web.AppRunner):
    """An ``AppRunner`` whose server answers warm pages first (``serve`` and the tests
    run the app through it)."""

    async def setup(self) -> None:
        await super().setup()
        # Connections take the server's handler when they open: no site has started.
        server = self.server
        if server is not None and self.app.get(ENABLED, False):
            server.request_handler = wrap(server.request_handler, self.app[SERVICES])


def wrap(inner: Handler, svc: Services) -> Handler:
    """``inner`` with warm project pages answered first."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "GET":
            try:
                answer = _answer(request, svc)
            except Exception:  # never worse than the ordinary path
                log.exception("hot path failed on %s; answered by the app", request.path)
                answer = None
            if answer is not None:
                return answer
        return await inner(request)

    return handle


def _answer(request: web.BaseRequest, svc: Services) -> web.Response | None:
    path = request.path
    if not path.startswith("/simple/") or path[-1] != "/":
        return None
    name = path[8:-1]
    if not name or "/" in name or not is_valid_name(name) or normalize(name) != name:
        return None
    assert isinstance(request, web.Request)
    key = pages.hot_key(request, svc, name)
    if key is None:
        return None
    started = time.monotonic()
    answer = pages.hot_answer(request, svc, key)
    if answer is None:
        return None
    rid = new_request_id(request.headers.get("X-Request-ID"))
    request[middleware.REQUEST_ID] = rid
    # The app's response-prepare signal does not run for a request it did not route.
    answer.headers["X-Request-ID"] = rid
    middleware.account(request, svc, ROUTE, answer.status, time.monotonic() - started, rid)
    return answer
