"""PEP 503 project names: normalisation and validation.

Every lookup, cache key and URL is keyed by the normalised name, and every name that
reaches a filesystem path or an upstream URL must first pass :func:`is_valid_name`.
"""

from __future__ import annotations

import re

#: No real project name is anywhere near this long (PyPI's longest is < 100); the cap
#: bounds cache keys and log lines built from request paths.
MAX_NAME_LENGTH = 200

# PEP 503 / name-normalization.rst: runs of "-", "_" and "." are one separator.
_SEPARATORS = re.compile(r"[-_.]+")
# name-normalization.rst: the valid-name regex, with the 2025 ``\Z`` fix (``$`` would
# accept a trailing newline). re.ASCII matters: with IGNORECASE alone, Python matches
# "ſ" (U+017F) against [A-Z] and the Kelvin sign against "K".
_VALID_NAME = re.compile(r"([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])\Z", re.IGNORECASE | re.ASCII)


def normalize(name: str) -> str:
    """PEP 503 normalised form, e.g. ``Foo.Bar--_baz`` -> ``foo-bar-baz``."""
    return _SEPARATORS.sub("-", name).lower()


def is_valid_name(name: str) -> bool:
    """Whether ``name`` is a well-formed project name (safe for paths and URLs)."""
    return len(name) <= MAX_NAME_LENGTH and _VALID_NAME.match(name) is not None
