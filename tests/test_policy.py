"""The deny-list: blocked projects get 403 with reason policy, pages and files alike."""

from __future__ import annotations

import pytest

from pipgate.config.values import parse_project_patterns
from pipgate.errors import Reason, UpstreamError
from pipgate.failures import FailureReporter
from pipgate.metrics import Metrics
from pipgate.pages.deny import DenyList
from tests.conftest import GateFactory
from tests.support.links import file_path
from tests.support.packages import sample_tree
from tests.support.sources import StaticSource, dist


@pytest.mark.parametrize(
    ("deny", "project", "denied"),
    [
        (("evil-pkg",), "evil-pkg", True),
        (("Evil_Pkg",), "evil-pkg", True),  # the list is normalised like requests
        (("evil_*",), "evil-thing", True),
        (("evil-*",), "not-evil", False),
        (("col?ur",), "colour", True),
        ((), "anything", False),
    ],
)
async def test_deny_list_matches_normalised_names_and_patterns(
    deny: tuple[str, ...], project: str, denied: bool
) -> None:
    inner = StaticSource("pypi", {project: [dist(f"{project}-1.0.tar.gz")]})
    source = DenyList(inner, parse_project_patterns(list(deny)), FailureReporter(Metrics()))
    if denied:
        with pytest.raises(UpstreamError) as caught:
            await source.project(project)
        assert caught.value.reason is Reason.POLICY
        assert caught.value.client_status == 403
        with pytest.raises(UpstreamError):
            await source.find_file(project, "k", f"{project}-1.0.tar.gz")
        assert inner.calls == []  # the source below never hears of it
    else:
        assert (await source.project(project)).page is not None


async def test_denied_project_pages_and_cached_files_are_refused(make_gate: GateFactory) -> None:
    open_gate = await make_gate()
    beta = next(d for d in sample_tree() if d.filename == "beta-1.0-py3-none-any.whl")
    path = await file_path(open_gate, "beta", beta.filename)
    assert (await open_gate.get(path)).status == 200  # now cached
    gate = await make_gate(deny=("beta",))
    page = await gate.get("/simple/beta/")
    assert page.status == 403
    assert page.headers["X-Pipgate-Reason"] == "policy"
    cached = await gate.get(path)
    assert cached.status == 403
    assert (await gate.get("/simple/alpha/")).status == 200
