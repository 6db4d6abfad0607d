"""Logging: one access line per request and one event line per upstream fetch, as JSON
(for containers and log pipelines) or readable text, each with the request id that is
also returned to the client in ``X-Request-ID``."""

from __future__ import annotations

import asyncio
import contextvars
import io
import itertools
import json
import logging
import os
import secrets
import time
from collections.abc import Callable
from typing import Any

#: The id of the request being handled (``-`` outside requests).
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

#: Attributes every LogRecord has; anything else was passed with ``extra=`` and is data.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


#: Fresh request ids: a random prefix per process and a counter, 16 hex digits. Unique
#: across workers and restarts like a random id, without a getrandom() call per request.
_ID_PREFIX = secrets.token_hex(4)
_id_counter = itertools.count(secrets.randbelow(1 << 24))


def new_request_id(offered: str | None) -> str:
    """The client's ``X-Request-ID`` when it is short and plain, else a fresh one."""
    if offered and len(offered) <= 64 and all(c.isalnum() or c in "-_.:" for c in offered):
        return offered
    return f"{_ID_PREFIX}{next(_id_counter) & 0xFFFFFFFF:08x}"


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """``time level logger [request id] message``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")


class BufferedHandler(logging.StreamHandler):
    """Writes to stderr through a 64 KiB buffer, flushed once per turn of the event
    loop: under load one write() carries the lines of many requests, instead of one
    system call per request (~10 % of a warm page request); when idle a line is out
    as soon as its request is done. A WARNING or worse, and any line logged outside
    the event loop's thread, is written at once.
    """

    def __init__(self) -> None:
        raw = io.FileIO(os.dup(2), "w")
        stream = io.TextIOWrapper(
            io.BufferedWriter(raw, 1 << 16), encoding="utf-8", errors="backslashreplace"
        )
        super().__init__(stream)
        self._scheduled = False
        # A forked worker must not inherit unwritten lines (they would appear twice).
        os.register_at_fork(before=self.flush)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + "\n")
            if record.levelno >= logging.WARNING:
                self.stream.flush()
            elif not self._scheduled:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:  # another thread, or no loop at all
                    self.stream.flush()
                    return
                self._scheduled = True
                loop.call_soon(self._flush_now)
        except Exception:
            self.handleError(record)

    def _flush_now(self) -> None:
        self._scheduled = False
        self.flush()  # under the handler's lock

    def write_line(self, line: str) -> None:
        """Write a finished INFO line (the access line's fast path), flushed with the
        others at the end of this turn of the event loop."""
        with self.lock:  # type: ignore[union-attr]
            self.stream.write(line)
            if not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._flush_now)


class AccessLine:
    """The access line of every request, written without a ``LogRecord`` when the log
    goes only to pipgate's buffered handler (``serve``): the record, its filters and its
    formatter cost a fifth of a warm page's throughput. The line is the one the
    configured formatter would write (``tests/test_observability.py`` compares them);
    anywhere else (tests, other handlers, another level) it goes through ``logging``.
    """

    def __init__(self) -> None:
        self.logger = logging.getLogger("pipgate.access")
        self._handler: BufferedHandler | None = None
        self._json = False
        self._second = -1
        self._stamp = ""

    def install(self, handler: logging.Handler, fmt: str) -> None:
        """Take the fast path through ``handler`` while nothing else needs the records."""
        self._handler = handler if isinstance(handler, BufferedHandler) else None
        self._json = fmt == "json"

    def _fast(self) -> BufferedHandler | None:
        handler = self._handler
        logger = self.logger
        handlers = logging.root.handlers
        if (
            handler is None
            or len(handlers) != 1
            or handlers[0] is not handler
            or logger.handlers
            or not logger.propagate
            or logger.disabled
            or not logger.isEnabledFor(logging.INFO)
            or handler.level > logging.INFO
        ):
            return None
        return handler

    def write(self, message: str, request_id: str, fields: Callable[[], dict[str, Any]]) -> None:
        """One access line: ``message``, and the structured ``fields`` (JSON), made only
        when a JSON line or a ``LogRecord`` needs them."""
        handler = self._fast()
        if handler is None:
            if self.logger.isEnabledFor(logging.INFO):
                self.logger.info("%s", message, extra=fields())
            return
        handler.write_line(self.line(time.time(), message, request_id, fields))

    def line(
        self, now: float, message: str, request_id: str, fields: Callable[[], dict[str, Any]]
    ) -> str:
        """The line as :class:`JsonFormatter` or :class:`TextFormatter` writes it."""
        second = int(now)
        millis = int((now - second) * 1000)
        if self._json:
            entry: dict[str, Any] = {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
                + f".{millis:03d}Z",
                "level": "info",
                "logger": self.logger.name,
                "message": message,
            }
            entry.update((k, v) for k, v in fields().items() if v is not None)
            return json.dumps(entry, default=str) + "\n"
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._stamp},{millis:03d} INFO {self.logger.name} [{request_id}] {message}\n"


#: The access line writer of this process (``setup`` points it at the handler).
access_line = AccessLine()


def setup(level: str, fmt: str, *, buffered: bool = False) -> None:
    """Configure the root logger once, at start-up (``buffered``: for ``serve``)."""
    handler = BufferedHandler() if buffered else logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    access_line.install(handler, fmt)
    # What no line of pipgate's shows, each record would look up (the logging HOWTO's
    # "Optimization"): the caller's source line (a stack walk), the thread and process
    # names.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root.setLevel(level.upper())
    # aiohttp's own access log is replaced by pipgate's (with request ids and routes).
    logging.getLogger("aiohttp.access").disabled = True
