"""Which upstreams may serve a project, in which order: the ``[[route]]`` table.

Pure. Names and patterns are both PEP 503 normalised (``corp_*`` means ``corp-*``);
the first rule whose pattern matches wins, and a project no rule matches may come from
every upstream in configuration order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from pipgate.config import RouteConfig


@dataclass(frozen=True)
class Route:
    """The upstreams a project may come from, in order."""

    upstreams: tuple[str, ...]
    #: Combine their files instead of taking the first that has the project.
    merge: bool = False
    #: Number of the matching ``[[route]]`` (from 1), ``None`` for the default order.
    rule: int | None = None


class RoutingTable:
    """The configured rules, matched in order."""

    def __init__(self, upstreams: Sequence[str], routes: Sequence[RouteConfig] = ()) -> None:
        self.default = Route(tuple(upstreams))
        self._rules = tuple(
            (route.projects, Route(route.upstreams, route.merge, number))
            for number, route in enumerate(routes, 1)
        )

    def route_for(self, name: str) -> Route:
        """The route of normalised project ``name``."""
        for patterns, route in self._rules:
            if any(fnmatchcase(name, pattern) for pattern in patterns):
                return route
        return self.default
