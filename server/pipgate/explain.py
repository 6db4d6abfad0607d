"""``pipgate explain``: which versions of a project install in an environment, and why
the newer ones do not (the report pip's "no matching distribution" never gives)."""

from __future__ import annotations

from collections.abc import Sequence

from pipgate.app import standalone
from pipgate.compat import Environment, Explanation, verdicts
from pipgate.config import Config
from pipgate.errors import UpstreamError


async def explain(
    config: Config, project: str, environments: Sequence[Environment], spec: str | None = None
) -> list[Explanation]:
    """One explanation per environment, from the cache and, unless offline, upstream.

    Raises :class:`UpstreamError` when the page cannot be had at all.
    """
    pipeline = await standalone(config)
    try:
        view, block_of = await pipeline.pages.unfiltered(project)
        if view.page is None:
            raise UpstreamError.not_found(view.missing or f"project {project} not found upstream")
        page = view.page
        return [
            Explanation(project, env, tuple(verdicts(page, env, block_of=block_of, spec=spec)))
            for env in environments
        ]
    finally:
        await pipeline.close()
