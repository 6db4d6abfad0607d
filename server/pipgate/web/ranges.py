"""HTTP Range, If-Range and If-None-Match for files (RFC 9110 §13-14), as pure functions.

pipgate owns this logic because aiohttp's ``FileResponse`` replaces ETags, reads
``If-Range`` only as a date (pip resumes with an ETag) and answers multi-range
requests with 416.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: RFC 9110 §14.1.1: positions are 1*DIGIT, ASCII only (``str.isdigit`` also takes "²"
#: and "١", which ``int`` then refuses or reads as another number).
_DIGITS = re.compile(r"[0-9]+\Z")
#: Beyond any file's size; longer numbers are read as this, never converted (``int``
#: refuses more than 4300 digits, and a client may send 8000).
_HUGE = 10**18


@dataclass(frozen=True)
class ByteRange:
    """An inclusive byte range ``first``-``last`` of a representation of ``size`` bytes."""

    first: int
    last: int
    size: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    @property
    def content_range(self) -> str:
        return f"bytes {self.first}-{self.last}/{self.size}"


class Unsatisfiable:
    """Marker: the Range header is valid but no range overlaps the file (416)."""


UNSATISFIABLE = Unsatisfiable()


def parse_range(header: str | None, size: int) -> ByteRange | Unsatisfiable | None:
    """Interpret a ``Range`` header against a file of ``size`` bytes.

    ``None``: serve the whole file (no header, a syntax error or an unknown unit,
    which RFC 9110 says to ignore, or several ranges, which are answered with the whole
    file rather than multipart). A :class:`ByteRange`: answer 206. ``UNSATISFIABLE``:
    answer 416 with ``Content-Range: bytes */size``.
    """
    if not header:
        return None
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    parts = [p.strip() for p in spec.split(",")]
    if not parts or any(not p for p in parts):
        return None
    ranges: list[ByteRange] = []
    for part in parts:
        parsed = _parse_one(part, size)
        if parsed is None:
            return None  # syntax error anywhere: ignore the header
        if isinstance(parsed, ByteRange):
            ranges.append(parsed)
    if not ranges:
        return UNSATISFIABLE
    if len(parts) > 1:
        return None
    return ranges[0]


def _number(text: str) -> int | None:
    """A byte position or length: ASCII digits, however many; ``None`` if not one."""
    if not _DIGITS.match(text):
        return None
    return int(text) if len(text) <= 18 else _HUGE


def _parse_one(part: str, size: int) -> ByteRange | Unsatisfiable | None:
    first_text, dash, last_text = part.partition("-")
    if not dash:
        return None
    first_text, last_text = first_text.strip(), last_text.strip()
    if not first_text:
        # suffix range "-N": the last N bytes (poetry sends it first).
        suffix = _number(last_text)
        if suffix is None:
            return None
        if suffix == 0 or size == 0:
            return UNSATISFIABLE
        return ByteRange(max(0, size - suffix), size - 1, size)
    first = _number(first_text)
    last = _number(last_text) if last_text else size - 1
    if first is None or last is None:
        return None
    if last_text and last < first:
        return None
    if first >= size:
        return UNSATISFIABLE
    return ByteRange(first, min(last, size - 1), size)


def etag_matches(header: str | None, etag: str | None) -> bool:
    """``If-None-Match`` evaluation (weak comparison, ``*`` matches anything)."""
    if not header or not etag:
        return False
    if header.strip() == "*":
        return True
    wanted = _opaque(etag)
    return any(_opaque(tag) == wanted for tag in header.split(","))


def if_range_allows(header: str | None, etag: str | None) -> bool:
    """Whether a Range may be honoured given ``If-Range`` (strong comparison).

    A date, a weak tag or a different tag all fail: the client then gets the whole
    file with 200, which RFC 9110 §13.1.5 prescribes and pip handles by restarting.
    """
    if header is None:
        return True
    value = header.strip()
    return etag is not None and not value.startswith("W/") and value == etag


def _opaque(tag: str) -> str:
    tag = tag.strip()
    return tag[2:] if tag.startswith("W/") else tag
