"""Routing over several upstreams: the rule table, the router's fall-through rule, merged
pages and the union of project lists (with small in-memory page sources)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipgate.config import RouteConfig
from pipgate.config.values import parse_project_patterns
from pipgate.errors import Reason, UpstreamError
from pipgate.links import file_key
from pipgate.metrics import Metrics
from pipgate.pages import names_file
from pipgate.pages.merge import merge_pages
from pipgate.pages.router import Router
from pipgate.pages.routing import RoutingTable
from pipgate.simple.model import ProjectEntry, ProjectPage
from tests.support.metrics import metric_value
from tests.support.sources import StaticSource, dist

UPSTREAMS = ("internal", "pypi", "pytorch")


def rule(projects: list[str], upstreams: tuple[str, ...], merge: bool = False) -> RouteConfig:
    return RouteConfig(parse_project_patterns(projects), upstreams, merge)


TABLE = RoutingTable(
    UPSTREAMS,
    [
        rule(["Corp_*", "billing.client"], ("internal",)),
        rule(["torch", "torchvision", "torchaudio"], ("pytorch", "pypi")),
        rule(["corp-legacy"], ("pypi",)),  # never reached: the first rule matches first
        rule(["shared-*"], ("internal", "pypi"), merge=True),
    ],
)


@pytest.mark.parametrize(
    ("project", "upstreams", "number"),
    [
        ("corp-tool", ("internal",), 1),  # corp_* means corp-* (both sides normalised)
        ("corp-legacy", ("internal",), 1),  # first matching rule wins
        ("billing-client", ("internal",), 1),  # billing.client normalised
        ("torch", ("pytorch", "pypi"), 2),
        ("torchtext", UPSTREAMS, None),  # an exact name is not a prefix
        ("shared-lib", ("internal", "pypi"), 4),
        ("requests", UPSTREAMS, None),  # no rule: every upstream, in configured order
        ("acorp-tool", UPSTREAMS, None),  # globs match the whole name
    ],
)
def test_the_first_matching_rule_routes_a_project(
    project: str, upstreams: tuple[str, ...], number: int | None
) -> None:
    route = TABLE.route_for(project)
    assert route.upstreams == upstreams
    assert route.rule == number
    assert route.merge == (number == 4)


def router(*sources: StaticSource, table: RoutingTable | None = None, tmp: Path) -> Router:
    names = tuple(s.name for s in sources)
    return Router(
        {s.name: s for s in sources}, table or RoutingTable(names), tmp / "union", Metrics()
    )


async def test_a_project_comes_from_the_first_upstream_that_has_it(tmp_path: Path) -> None:
    internal = StaticSource("internal", {"corp-tool": [dist("corp_tool-1.0-py3-none-any.whl")]})
    pypi = StaticSource(
        "pypi",
        {
            "corp-tool": [dist("corp_tool-9.9-py3-none-any.whl")],
            "requests": [dist("requests-2.32.0-py3-none-any.whl")],
        },
    )
    routed = router(internal, pypi, tmp=tmp_path)
    view = await routed.project("corp-tool")
    assert view.upstream == "internal"
    assert [f.filename for f in view.page.files] == ["corp_tool-1.0-py3-none-any.whl"]
    assert pypi.calls == []  # the public index is not even asked
    view = await routed.project("requests")  # internal: definite "not found"
    assert view.upstream == "pypi"
    assert (await routed.project("nothing-anywhere")).page is None


@pytest.mark.parametrize(
    "reason", [Reason.TIMEOUT, Reason.TLS, Reason.HTTP_5XX, Reason.CONNECT, Reason.PROXY_AUTH]
)
async def test_a_failing_earlier_upstream_never_falls_through(
    reason: Reason, tmp_path: Path
) -> None:
    internal = StaticSource("internal", error=UpstreamError(reason, "no answer", status=None))
    pypi = StaticSource("pypi", {"corp-tool": [dist("corp_tool-9.9-py3-none-any.whl")]})
    routed = router(internal, pypi, tmp=tmp_path)
    with pytest.raises(UpstreamError) as caught:
        await routed.project("corp-tool")
    assert caught.value.reason is reason
    assert "later upstreams are not asked" in caught.value.detail
    assert pypi.calls == []
    with pytest.raises(UpstreamError):
        await routed.find_file("corp-tool", "k", "corp_tool-9.9-py3-none-any.whl")


async def test_a_route_limits_a_project_to_its_upstreams(tmp_path: Path) -> None:
    internal = StaticSource("internal")
    pypi = StaticSource("pypi", {"corp-tool": [dist("corp_tool-9.9-py3-none-any.whl")]})
    table = RoutingTable(("internal", "pypi"), [rule(["corp-*"], ("internal",))])
    routed = router(internal, pypi, table=table, tmp=tmp_path)
    assert (await routed.project("corp-tool")).page is None  # 404, not the public one
    assert pypi.calls == []


async def test_merged_pages_keep_the_first_file_of_a_name_and_count_conflicts(
    tmp_path: Path,
) -> None:
    metrics = Metrics()
    internal = StaticSource(
        "internal",
        {"shared-lib": [dist("shared_lib-1.0.tar.gz", "a" * 64), dist("shared_lib-1.1.tar.gz")]},
    )
    pypi = StaticSource(
        "pypi",
        {
            "shared-lib": [
                dist("shared_lib-1.0.tar.gz", "b" * 64),  # same name, other contents
                dist("shared_lib-1.1.tar.gz"),  # same name, same contents: not a conflict
                dist("shared_lib-2.0.tar.gz"),
            ]
        },
    )
    table = RoutingTable(("internal", "pypi"), [rule(["shared-*"], ("internal", "pypi"), True)])
    routed = Router({"internal": internal, "pypi": pypi}, table, tmp_path, metrics)
    view = await routed.project("shared-lib")
    files = {f.filename: f.sha256 for f in view.page.files}
    assert files["shared_lib-1.0.tar.gz"] == "a" * 64
    assert sorted(files) == [f"shared_lib-{v}.tar.gz" for v in ("1.0", "1.1", "2.0")]
    exposition = metrics.render().decode()
    assert metric_value(exposition, "pipgate_merge_conflicts_total", upstream="pypi") == 1
    # Each file is fetched from the upstream whose page offered it.
    newer = next(f for f in view.page.files if f.filename == "shared_lib-2.0.tar.gz")
    offer = await routed.find_file("shared-lib", file_key(newer), newer.filename)
    assert offer is not None and offer.upstream == "pypi"
    # The dropped file's URL key is not offered at all.
    assert await routed.find_file("shared-lib", "b" * 64, "shared_lib-1.0.tar.gz") is None


async def test_a_merge_fails_when_any_of_its_upstreams_fails(tmp_path: Path) -> None:
    internal = StaticSource("internal", error=UpstreamError(Reason.TIMEOUT, "slow"))
    pypi = StaticSource("pypi", {"shared-lib": [dist("shared_lib-1.0.tar.gz")]})
    table = RoutingTable(("internal", "pypi"), [rule(["shared-*"], ("internal", "pypi"), True)])
    routed = router(internal, pypi, table=table, tmp=tmp_path)
    with pytest.raises(UpstreamError):
        await routed.project("shared-lib")


def test_merge_pages_combines_versions_and_takes_the_strongest_status() -> None:
    first = ProjectPage(
        name="x",
        files=(dist("x-1.0.tar.gz"),),
        versions=("1.0",),
        api_version="1.1",
        project_status={"status": "archived"},
    )
    second = ProjectPage(
        name="x",
        files=(dist("x-2.0.tar.gz"),),
        versions=("2.0", "1.0"),
        api_version="1.4",
        project_status={"status": "quarantined", "reason": "malware"},
    )
    merged = merge_pages("x", [("a", first), ("b", second)])
    assert merged.page.versions == ("1.0", "2.0")
    assert merged.page.api_version == "1.1"  # what every upstream supports
    assert merged.page.quarantined
    assert merged.page.offered_files() == ()  # PEP 792 holds for merged pages too
    assert merged.origins == {"x-1.0.tar.gz": "a", "x-2.0.tar.gz": "b"}


def names(tmp: Path, name: str, entries: list[str]) -> Path:
    path = tmp / name
    names_file.write_sorted([ProjectEntry(e) for e in entries], path)
    return path


async def test_the_project_list_is_the_normalised_union_of_every_upstream(
    tmp_path: Path,
) -> None:
    internal = StaticSource(
        "internal", names_file=names(tmp_path, "a", ["Corp_Tool", "zeta", "Requests"])
    )
    pypi = StaticSource("pypi", names_file=names(tmp_path, "b", ["requests", "Django", "zeta"]))
    routed = router(internal, pypi, tmp=tmp_path)
    listing = await routed.project_list()
    listed = [e.name for e in names_file.read(listing.path)]
    # Sorted by normalised name, one entry per project, the first upstream's spelling.
    assert listed == ["Corp_Tool", "Django", "Requests", "zeta"]
    assert listing.count == 4
    again = await routed.project_list()
    assert again.digest == listing.digest


async def test_an_unreachable_upstream_leaves_its_projects_out_of_the_list_marked_stale(
    tmp_path: Path,
) -> None:
    internal = StaticSource("internal", error=UpstreamError(Reason.CONNECT, "refused"))
    pypi = StaticSource("pypi", names_file=names(tmp_path, "b", ["requests"]))
    listing = await router(internal, pypi, tmp=tmp_path).project_list()
    assert [e.name for e in names_file.read(listing.path)] == ["requests"]
    assert listing.result == "stale"
    everything_down = router(
        StaticSource("internal", error=UpstreamError(Reason.CONNECT, "refused")),
        StaticSource("pypi", error=UpstreamError(Reason.DNS, "no such host")),
        tmp=tmp_path,
    )
    with pytest.raises(UpstreamError):
        await everything_down.project_list()
