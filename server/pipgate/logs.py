"""Logging: one access line per request and one event line per upstream fetch, as JSON
(for containers and log pipelines) or readable text, each with the request id that is
also returned to the client in ``X-Request-ID``."""

from __future__ import annotations

import contextvars
import json
import logging
import secrets
import time
from typing import Any

#: The id of the request being handled (``-`` outside requests).
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

#: Attributes every LogRecord has; anything else was passed with ``extra=`` and is data.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def new_request_id(offered: str | None) -> str:
    """The client's ``X-Request-ID`` when it is short and plain, else a fresh one."""
    if offered and len(offered) <= 64 and all(c.isalnum() or c in "-_.:" for c in offered):
        return offered
    return secrets.token_hex(8)


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


def setup(level: str, fmt: str) -> None:
    """Configure the root logger once, at start-up."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's own access log is replaced by pipgate's (with request ids and routes).
    logging.getLogger("aiohttp.access").disabled = True
