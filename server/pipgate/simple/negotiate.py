"""PEP 691 content negotiation for simple-repository pages.

Follows what PyPI does (warehouse ``_select_content_type`` + its Fastly VCL): ``?format=``
overrides ``Accept``; ``Accept`` is matched with RFC 9110 rules over the offers
``text/html``, ``v1+html``, ``v1+json`` (in that tie order, like WebOb's
``acceptable_offers``); and when nothing is acceptable the answer is ``text/html``
rather than 406, so no client is ever locked out by an odd header.
"""

from __future__ import annotations

import enum
import functools
import re

_V1_HTML = "application/vnd.pypi.simple.v1+html"
_V1_JSON = "application/vnd.pypi.simple.v1+json"


class PageFormat(enum.Enum):
    """The three representations pipgate serves; the value is the media type."""

    HTML = "text/html"
    HTML_V1 = _V1_HTML
    JSON_V1 = _V1_JSON

    @property
    def content_type(self) -> str:
        """Exact ``Content-Type`` header value.

        uv compares the part before ``;`` exactly and pip/Poetry by prefix, so the vnd
        types are sent bare; ``text/html`` gets a charset for browsers.
        """
        if self is PageFormat.HTML:
            return "text/html; charset=utf-8"
        return self.value

    @property
    def is_json(self) -> bool:
        """Whether the body is PEP 691 JSON (else PEP 503 HTML)."""
        return self is PageFormat.JSON_V1

    @property
    def variant(self) -> str:
        """Short stable token for cache keys and ETags (never change these)."""
        return _VARIANTS[self]


_VARIANTS = {PageFormat.HTML: "html", PageFormat.HTML_V1: "vhtml", PageFormat.JSON_V1: "json"}

#: Offers in tie-break order (PyPI's order: text/html first).
_OFFERS: tuple[tuple[str, str, PageFormat], ...] = (
    ("text", "html", PageFormat.HTML),
    ("application", "vnd.pypi.simple.v1+html", PageFormat.HTML_V1),
    ("application", "vnd.pypi.simple.v1+json", PageFormat.JSON_V1),
)

# PEP 691 "Version + Format Selection": the ``latest`` meta version means v1 today.
_SUBTYPE_ALIASES = {
    "vnd.pypi.simple.latest+html": "vnd.pypi.simple.v1+html",
    "vnd.pypi.simple.latest+json": "vnd.pypi.simple.v1+json",
}

# PEP 691 "URL Parameter": a single content type, no wildcards or q. PyPI's VCL honours
# exactly these five values.
_FORMAT_PARAM = {
    "text/html": PageFormat.HTML,
    _V1_HTML: PageFormat.HTML_V1,
    _V1_JSON: PageFormat.JSON_V1,
    "application/vnd.pypi.simple.latest+html": PageFormat.HTML_V1,
    "application/vnd.pypi.simple.latest+json": PageFormat.JSON_V1,
}

# RFC 9110 §5.6.2 token and §12.4.2 qvalue (at most three decimals, 0..1).
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+\Z")
_QVALUE = re.compile(r"(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)\Z")

# Specificity of a media range when matched against an offer (RFC 9110 §12.5.1: the
# most specific range decides an offer's q).
_EXACT, _TYPE_WILDCARD, _ANY = 3, 2, 1


@functools.lru_cache(maxsize=512)  # a few header values arrive all day
def choose_format(accept: str | None, format_param: str | None) -> PageFormat:
    """Pick the representation for a request; never raises and never says 406."""
    if format_param:
        # A literal "+" in an unencoded query string arrives as a space once the query
        # is form-decoded (aiohttp/yarl do that), so accept both spellings.
        chosen = _FORMAT_PARAM.get(format_param.strip().lower().replace(" ", "+"))
        if chosen is not None:
            return chosen
        # PEP 691: an unsupported format value may fall back to Accept.
    # PEP 691: a missing Accept header means */*.
    ranges = _parse_accept(accept) if accept and accept.strip() else [("*", "*", 1.0)]
    best: PageFormat | None = None
    best_q = 0.0
    for otype, osub, fmt in _OFFERS:
        q = _offer_quality(ranges, otype, osub)
        if q > best_q:  # strict: equal q keeps the earlier offer
            best, best_q = fmt, q
    # PyPI answers text/html when nothing is acceptable; PEP 691 allows that default.
    return best if best is not None else PageFormat.HTML


def _offer_quality(ranges: list[tuple[str, str, float]], otype: str, osub: str) -> float:
    """q of the most specific range matching the offer; 0 when none matches."""
    best_spec = 0
    best_q = 0.0
    for rtype, rsub, q in ranges:
        if rtype == otype and rsub == osub:
            spec = _EXACT
        elif rtype == otype and rsub == "*":
            spec = _TYPE_WILDCARD
        elif rtype == "*" and rsub == "*":
            spec = _ANY
        else:
            continue
        # Duplicate ranges of equal specificity: the most generous one wins.
        if spec > best_spec or (spec == best_spec and q > best_q):
            best_spec, best_q = spec, q
    return best_q


def _parse_accept(header: str) -> list[tuple[str, str, float]]:
    """RFC 9110 §12.5.1 ``Accept`` -> ``[(type, subtype, q)]``; bad ranges are dropped."""
    ranges: list[tuple[str, str, float]] = []
    for item in header.split(","):
        media, *params = item.split(";")
        media = media.strip().lower()
        if media == "*":  # old Java clients send a bare "*"; read it as */*
            media = "*/*"
        mtype, slash, msub = media.partition("/")
        if not slash or not _TOKEN.match(mtype) or not _TOKEN.match(msub):
            continue
        if mtype == "*" and msub != "*":  # "*/json" is not a valid media range
            continue
        q = _quality(params)
        if q is None:
            continue
        ranges.append((mtype, _SUBTYPE_ALIASES.get(msub, msub), q))
    return ranges


def _quality(params: list[str]) -> float | None:
    """The ``q`` parameter (default 1); ``None`` if it is malformed."""
    for param in params:
        name, eq, value = param.partition("=")
        if eq and name.strip().lower() == "q":
            value = value.strip()
            return float(value) if _QVALUE.match(value) else None
    return 1.0
