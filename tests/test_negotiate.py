"""PEP 691 content negotiation (PyPI-compatible: ``?format=`` wins, never 406)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipgate.simple.negotiate import PageFormat, choose_format

HTML, HTML_V1, JSON_V1 = PageFormat.HTML, PageFormat.HTML_V1, PageFormat.JSON_V1
V1_JSON = "application/vnd.pypi.simple.v1+json"
V1_HTML = "application/vnd.pypi.simple.v1+html"

PIP = f"{V1_JSON}, {V1_HTML}; q=0.1, text/html; q=0.01"
UV = f"{V1_JSON}, {V1_HTML};q=0.2, text/html;q=0.01"
POETRY = f"{V1_JSON}, */*;q=0.1"
PDM = f"{V1_JSON}, {V1_HTML}; q=0.1, text/html; q=0.01"
PYPI_SIMPLE_ANY = f"{V1_JSON}, {V1_HTML}, text/html;q=0.01"
FIREFOX = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
CHROME = (
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"
)
JAVA = "text/html, image/gif, image/jpeg, *; q=.2, */*; q=.2"


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        # Real clients.
        (PIP, JSON_V1),
        (UV, JSON_V1),
        (POETRY, JSON_V1),
        (PDM, JSON_V1),
        ("text/html", HTML),  # pip < 22.2
        (FIREFOX, HTML),
        (CHROME, HTML),
        (JAVA, HTML),
        ("*/*", HTML),  # curl, wget
        # Equal q: tie order text/html, v1+html, v1+json (WebOb acceptable_offers).
        (PYPI_SIMPLE_ANY, HTML_V1),
        (f"{V1_JSON}, {V1_HTML}", HTML_V1),
        (f"{V1_JSON}, text/html", HTML),
        ("application/*", HTML_V1),  # what PyPI answers
        ("application/*, text/html;q=0.5", HTML_V1),
        ("text/*", HTML),
        # Missing or empty Accept means */*.
        (None, HTML),
        ("", HTML),
        ("   ", HTML),
        # latest maps to v1.
        ("application/vnd.pypi.simple.latest+json", JSON_V1),
        ("application/vnd.pypi.simple.latest+html", HTML_V1),
        ("application/vnd.pypi.simple.latest+json, text/html;q=0.5", JSON_V1),
        # Case-insensitive types and parameter names; whitespace tolerated.
        ("APPLICATION/VND.PYPI.SIMPLE.V1+JSON", JSON_V1),
        (f"{V1_JSON}; Q=0.5, text/html; q=0.4", JSON_V1),
        (f"  {V1_JSON} ;  q=0.5 ,text/html;q=0.4  ", JSON_V1),
        (f"{V1_JSON};charset=utf-8", JSON_V1),
        # Nothing acceptable -> text/html (PyPI's choice), never 406.
        ("application/json", HTML),
        ("image/png, application/xml", HTML),
        ("*/*;q=0", HTML),
        (f"{V1_JSON};q=0", HTML),
        (f"{V1_JSON};q=0, {V1_HTML};q=0.000, text/html;q=0", HTML),
        # The most specific range decides an offer's q.
        ("text/html;q=0, */*", HTML_V1),
        (f"text/html;q=0, {V1_HTML};q=0, */*;q=0.5", JSON_V1),
        (f"{V1_JSON};q=0.5, application/*;q=0.9", HTML_V1),
        (f"{V1_JSON};q=0, */*", HTML),
        (f"application/*;q=0.1, {V1_JSON}", JSON_V1),
        ("*/*;q=0.9, text/*;q=0.1", HTML_V1),
        # q edge cases: up to three decimals, 0..1; malformed q ignores that range.
        (f"{V1_JSON};q=0.001, text/html;q=0", JSON_V1),
        (f"{V1_JSON};q=1.000, text/html;q=0.999", JSON_V1),
        (f"{V1_JSON};q=1., text/html;q=0.5", JSON_V1),
        (f"{V1_JSON};q=0.0001", HTML),
        (f"{V1_JSON};q=1.001", HTML),
        (f"{V1_JSON};q=2", HTML),
        (f"{V1_JSON};q=-1", HTML),
        (f"{V1_JSON};q=.5", HTML),
        (f"{V1_JSON};q=abc", HTML),
        (f"{V1_JSON};q=", HTML),
        (f"{V1_JSON};q=abc, {V1_HTML};q=0.5", HTML_V1),
        (f"{V1_JSON};q=0.5;q=0.1, text/html;q=0.3", JSON_V1),  # first q counts
        # Garbage never raises and falls back to text/html.
        (";;;", HTML),
        (",,,", HTML),
        ("/", HTML),
        ("*/json", HTML),
        ("text/", HTML),
        ("\x00\xff\u2028", HTML),
        ("text/html;;;q=0.5;;", HTML),
        (f"{V1_JSON}" + ";" * 10_000, JSON_V1),
        ("a" * 100_000, HTML),
        (",".join(["x/y"] * 10_000) + f",{V1_JSON}", JSON_V1),
        ('text/html;foo="a,b", ' + V1_JSON + ";q=0.5", HTML),
    ],
)
def test_accept_table(accept: str | None, expected: PageFormat) -> None:
    assert choose_format(accept, None) is expected


@pytest.mark.parametrize(
    ("format_param", "accept", "expected"),
    [
        (V1_JSON, "text/html", JSON_V1),
        (V1_HTML, PIP, HTML_V1),
        ("text/html", PIP, HTML),
        ("application/vnd.pypi.simple.latest+json", None, JSON_V1),
        ("application/vnd.pypi.simple.latest+html", None, HTML_V1),
        # An unencoded "+" arrives as a space after query decoding.
        ("application/vnd.pypi.simple.v1 json", None, JSON_V1),
        (" Application/Vnd.Pypi.Simple.V1+Json ", None, JSON_V1),
        # Unknown or empty values fall back to Accept (PEP 691 allows that).
        ("application/json", PIP, JSON_V1),
        ("application/json", None, HTML),
        ("*/*", UV, JSON_V1),
        (f"{V1_JSON}, text/html", "text/html", HTML),  # lists are not allowed
        (f"{V1_JSON};q=1", "text/html", HTML),
        ("", PIP, JSON_V1),
        (None, PIP, JSON_V1),
    ],
)
def test_format_param_table(
    format_param: str | None, accept: str | None, expected: PageFormat
) -> None:
    assert choose_format(accept, format_param) is expected


@pytest.mark.parametrize(
    ("fmt", "content_type", "is_json", "variant"),
    [
        (HTML, "text/html; charset=utf-8", False, "html"),
        (HTML_V1, V1_HTML, False, "vhtml"),
        (JSON_V1, V1_JSON, True, "json"),
    ],
)
def test_page_format_properties(
    fmt: PageFormat, content_type: str, is_json: bool, variant: str
) -> None:
    assert fmt.content_type == content_type
    assert fmt.is_json is is_json
    assert fmt.variant == variant


def test_vnd_content_types_are_exact_for_uv() -> None:
    # uv compares the media type before ";" with its three known values exactly.
    for fmt in PageFormat:
        assert fmt.content_type.split(";")[0] in ("text/html", V1_HTML, V1_JSON)


_MEDIA = st.sampled_from(
    [
        "text/html",
        V1_HTML,
        V1_JSON,
        "application/vnd.pypi.simple.latest+json",
        "*/*",
        "application/*",
        "text/*",
        "application/json",
        "*",
        "",
    ]
)
_Q = st.one_of(
    st.just(""),
    st.sampled_from([";q=0", ";q=1", ";q=0.5", ";q=abc", ";q=2", "; q=0.01"]),
    st.text(max_size=8).map(lambda s: ";q=" + s),
)
_HEADER = st.lists(st.tuples(_MEDIA, _Q).map("".join), max_size=8).map(", ".join)


@given(accept=st.one_of(st.none(), st.text(), _HEADER), fmt=st.one_of(st.none(), st.text()))
def test_choose_format_never_raises(accept: str | None, fmt: str | None) -> None:
    assert isinstance(choose_format(accept, fmt), PageFormat)


@given(accept=_HEADER)
def test_order_inside_accept_does_not_matter(accept: str) -> None:
    # PEP 691: the server SHOULD treat all Accept entries as equal.
    reversed_header = ", ".join(reversed(accept.split(", ")))
    assert choose_format(accept, None) is choose_format(reversed_header, None)


@given(accept=_HEADER)
def test_json_only_when_json_is_acceptable(accept: str) -> None:
    if choose_format(accept, None) is JSON_V1:
        assert "json" in accept or "*" in accept
