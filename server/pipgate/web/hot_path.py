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
from typing import cast

from aiohttp import web
from aiohttp.helpers import rfc822_formatted_time  # aiohttp's own Date, cached per second
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11

from pipgate.logs import new_request_id
from pipgate.simple.names import is_valid_name, normalize
from pipgate.web import middleware, pages
from pipgate.web.hot_pages import HotPage
from pipgate.web.ranges import etag_matches
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


def _answer(request: web.BaseRequest, svc: Services) -> web.StreamResponse | None:
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
    hot = svc.hot_pages.get(key)
    if hot is None:
        return None
    entry, now = hot
    rid = new_request_id(request.headers.get("X-Request-ID"))
    request[middleware.REQUEST_ID] = rid
    answer: web.StreamResponse
    if _may_write(request, entry):
        pages.hot_served(request, svc, entry)
        answer = _written(entry, now, rid)
    else:  # a 304, a closing connection, HTTP/1.0: aiohttp's response decides
        answer = pages.answer_from(request, svc, entry, now)
        # The app's response-prepare signal does not run for a request it did not route.
        answer.headers["X-Request-ID"] = rid
    elapsed = time.monotonic() - started
    middleware.account(request, svc, ROUTE, answer.status, elapsed, rid, path)
    return answer


def _may_write(request: web.BaseRequest, entry: HotPage) -> bool:
    """Whether the answer is a 200 on a connection that stays open, so that aiohttp
    would add nothing but ``Date``, ``Content-Length`` and ``Server``."""
    if request.version != HttpVersion11 or not request.keep_alive:
        return False
    if etag_matches(request.headers.get("If-None-Match"), entry.etag):
        return False
    if entry.head is None:
        entry.head = wire_head(entry.headers, len(entry.body))
    return bool(entry.head)


def wire_head(headers: dict[str, str], length: int) -> bytes:
    """The status line and the fixed headers of a 200 with a body of ``length`` bytes,
    as aiohttp would send them (empty when a value could not be sent as it is)."""
    fixed = {**headers, "Content-Length": str(length)}
    fixed.setdefault("Server", SERVER_SOFTWARE)
    text = "".join(f"{name}: {value}\r\n" for name, value in fixed.items())
    if text.count("\r") != len(fixed) or text.count("\n") != len(fixed):
        return b""  # a CR or LF inside a name or value
    return ("HTTP/1.1 200 OK\r\n" + text).encode("latin-1", "replace")


def _written(entry: HotPage, now: float, rid: str) -> web.StreamResponse:
    assert entry.head is not None
    date = rfc822_formatted_time()
    tail = f"Age: {entry.age_at(now)}\r\nX-Request-ID: {rid}\r\nDate: {date}\r\n\r\n"
    data = b"".join((entry.head, tail.encode("latin-1", "replace"), entry.body))
    # aiohttp's connection loop uses only prepare, write_eof and keep_alive of what a
    # handler returns (and status, body_length, headers for its access logger).
    return cast(web.StreamResponse, WrittenAnswer(data, entry.headers, len(entry.body)))


class WrittenAnswer:
    """A warm page's whole 200 in one buffer, written with one ``transport.write``.

    aiohttp's ``Response`` builds a header multidict, negotiates keep-alive, formats
    ``Date`` and serialises every header for each request: about a third of a warm
    page's CPU. Here all but ``Age``, ``X-Request-ID`` and ``Date`` were serialised once
    per memo entry (:func:`wire_head`), so a hit is a join and a write.
    """

    __slots__ = ("_data", "body_length", "headers", "keep_alive", "status")

    def __init__(self, data: bytes, headers: dict[str, str], body_length: int) -> None:
        self._data = data
        self.status = 200
        self.keep_alive = True
        self.headers = headers
        self.body_length = body_length

    async def prepare(self, request: web.BaseRequest) -> None:
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client went away")  # aiohttp's "reset"
        transport.write(self._data)
        await request.writer.drain()  # waits only when the client reads slowly

    async def write_eof(self, data: bytes = b"") -> None:
        """Nothing more to send: the buffer held the whole answer."""
