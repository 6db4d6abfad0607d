"""PEP 503 name normalisation and validation."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from packaging.utils import canonicalize_name

from pipgate.simple.names import MAX_NAME_LENGTH, is_valid_name, normalize


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("foo", "foo"),
        ("Foo", "foo"),
        ("Foo.Bar--_baz", "foo-bar-baz"),
        ("Zope_Interface", "zope-interface"),
        ("zope.interface", "zope-interface"),
        ("Django", "django"),
        ("PyYAML", "pyyaml"),
        ("jaraco.text", "jaraco-text"),
        ("a__b..c--d", "a-b-c-d"),
        ("A-_.-_.B", "a-b"),
        ("0", "0"),
        ("already-normal", "already-normal"),
    ],
)
def test_normalize_table(name: str, expected: str) -> None:
    assert normalize(name) == expected


@given(st.text())
def test_normalize_matches_pep503_regex_and_packaging(name: str) -> None:
    expected = re.sub(r"[-_.]+", "-", name).lower()
    assert normalize(name) == expected
    if is_valid_name(name):
        assert normalize(name) == canonicalize_name(name)


@given(st.text())
def test_normalize_is_idempotent(name: str) -> None:
    assert normalize(normalize(name)) == normalize(name)


@pytest.mark.parametrize(
    "name",
    ["a", "A", "0", "foo", "Foo.Bar--_baz", "zope.interface", "a-b", "x" * MAX_NAME_LENGTH],
)
def test_valid_names(name: str) -> None:
    assert is_valid_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "-foo",
        "foo-",
        "_foo",
        "foo.",
        "%2e%2e",
        "foo/bar",
        "../etc",
        "foo\\bar",
        "foo\x00",
        "foo bar",
        " foo",
        "foo\n",  # the living spec's \Z fix: "$" would accept this
        "foo\t",
        "fo%6f",
        "foo?x",
        "foo#x",
        "x" * (MAX_NAME_LENGTH + 1),
        # IGNORECASE alone makes [A-Z] match these non-ASCII letters in Python.
        "\u017fix",  # "ſix"
        "\u212aelvin",  # Kelvin sign
        "caf\u00e9",
    ],
)
def test_invalid_names(name: str) -> None:
    assert not is_valid_name(name)


@given(st.text())
def test_valid_names_are_url_and_path_safe(name: str) -> None:
    if is_valid_name(name):
        assert re.fullmatch(r"[A-Za-z0-9._-]+", name)
        assert name not in (".", "..")
        assert re.fullmatch(r"[a-z0-9-]+", normalize(name))
