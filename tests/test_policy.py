"""The policy: rules, allow-list, release cooldown, quarantine and unhashed files, as
decisions (pure) and as the page filter around a source (in-memory sources)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipgate.config import Config, ConfigError, PolicyRule, UpstreamConfig, load_config
from pipgate.config.values import parse_project_patterns, parse_specifier
from pipgate.errors import Reason, UpstreamError
from pipgate.failures import FailureReporter
from pipgate.links import file_key
from pipgate.metrics import Metrics
from pipgate.policy.filter import PolicyFilter, PolicyState
from pipgate.policy.rules import Kind, Policy, QuarantineEntry
from pipgate.simple.model import DistFile
from tests.conftest import GateFactory
from tests.support.links import file_path
from tests.support.metrics import metric_value
from tests.support.packages import sample_tree
from tests.support.sources import StaticSource, dist

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC).timestamp()
DAY = 86400.0


def rule(name: str, projects: list[str], **fields: object) -> PolicyRule:
    return PolicyRule(name=name, projects=parse_project_patterns(projects), **fields)  # type: ignore[arg-type]


def policy(**fields: object) -> Policy:
    base = Config(upstreams=(UpstreamConfig(name="pypi"), UpstreamConfig(name="internal")))
    quarantine = fields.pop("quarantine", ())
    return Policy(replace(base, **fields), quarantine)  # type: ignore[arg-type]


def block(p: Policy, filename: str, *, upstream: str = "pypi", **kw: object) -> Kind | None:
    project = filename.split("-", 1)[0].replace("_", "-").lower()
    found = p.file_block(
        project,
        filename,
        upstream=upstream,
        uploaded=kw.get("uploaded", NOW - 30 * DAY),  # type: ignore[arg-type]
        has_sha256=bool(kw.get("has_sha256", True)),
        now=NOW,
    )
    return found.kind if found else None


OLD_REQUESTS = rule("old-requests", ["requests"], action="deny", versions="<2.31", reason="CVE")


@pytest.mark.parametrize(
    ("settings", "filename", "upstream", "expected"),
    [
        ({}, "requests-2.30.0-py3-none-any.whl", "pypi", None),
        (
            {"policy_rules": (OLD_REQUESTS,)},
            "requests-2.30.0-py3-none-any.whl",
            "pypi",
            Kind.VERSION,
        ),
        ({"policy_rules": (OLD_REQUESTS,)}, "requests-2.31.0-py3-none-any.whl", "pypi", None),
        ({"policy_rules": (OLD_REQUESTS,)}, "requests-2.30.0.tar.gz", "pypi", Kind.VERSION),
        # Globs are normalised: evil_* is evil-*.
        (
            {"policy_rules": (rule("e", ["evil_*"], action="deny"),)},
            "evil_pkg-1.0.tar.gz",
            "pypi",
            Kind.DENY,
        ),
        ({"deny": parse_project_patterns(["Evil.Pkg"])}, "evil_pkg-1.0.tar.gz", "pypi", Kind.DENY),
        # A rule limited to one upstream leaves the others alone.
        (
            {"policy_rules": (rule("r", ["corp-*"], action="deny", upstreams=("pypi",)),)},
            "corp_tool-1.0.tar.gz",
            "internal",
            None,
        ),
        (
            {"policy_rules": (rule("r", ["corp-*"], action="deny", upstreams=("pypi",)),)},
            "corp_tool-1.0.tar.gz",
            "pypi",
            Kind.DENY,
        ),
        # Allow-list: only what a rule allows, in the versions it allows.
        ({"policy_default": "deny"}, "numpy-2.0.0.tar.gz", "pypi", Kind.ALLOWLIST),
        (
            {"policy_default": "deny", "policy_rules": (rule("ok", ["numpy"], action="allow"),)},
            "numpy-2.0.0.tar.gz",
            "pypi",
            None,
        ),
        (
            {
                "policy_default": "deny",
                "policy_rules": (rule("ok", ["numpy"], action="allow", versions=">=2"),),
            },
            "numpy-1.26.0.tar.gz",
            "pypi",
            Kind.ALLOWLIST,
        ),
        # Deny wins over allow, whatever the order of the rules.
        (
            {
                "policy_default": "deny",
                "policy_rules": (rule("ok", ["requests"], action="allow"), OLD_REQUESTS),
            },
            "requests-2.30.0.tar.gz",
            "pypi",
            Kind.VERSION,
        ),
        # Quarantine comes first: it names the incident.
        (
            {
                "policy_rules": (OLD_REQUESTS,),
                "quarantine": (QuarantineEntry("requests", "==2.30.0"),),
            },
            "requests-2.30.0.tar.gz",
            "pypi",
            Kind.QUARANTINE,
        ),
    ],
)
def test_rules_decide_per_project_version_and_upstream(
    settings: dict[str, object], filename: str, upstream: str, expected: Kind | None
) -> None:
    assert block(policy(**settings), filename, upstream=upstream) is expected


def test_files_without_a_sha256_are_refused_when_the_upstream_requires_hashes() -> None:
    strict = Config(upstreams=(UpstreamConfig(name="pypi", require_hashes=True),))
    p = Policy(strict)
    assert block(p, "x-1.0.tar.gz", has_sha256=False) is Kind.UNHASHED
    assert block(p, "x-1.0.tar.gz", has_sha256=True) is None
    assert block(policy(), "x-1.0.tar.gz", has_sha256=False) is None


@pytest.mark.parametrize(
    ("settings", "uploaded", "expected"),
    [
        ({"min_age": 7 * DAY}, NOW - 1 * DAY, Kind.COOLDOWN),
        ({"min_age": 7 * DAY}, NOW - 8 * DAY, None),
        ({"min_age": 7 * DAY, "cooldown_exempt": ("x",)}, NOW - 1 * DAY, None),
        ({"min_age": 7 * DAY, "cooldown_exempt": parse_project_patterns(["X*"])}, NOW, None),
        ({"exclude_newer": NOW - 10 * DAY}, NOW - 11 * DAY, None),
        ({"exclude_newer": NOW - 10 * DAY}, NOW - 9 * DAY, Kind.COOLDOWN),
        # A rule's cooldown beats the global one for its projects.
        ({"min_age": 7 * DAY, "policy_rules": (rule("fast", ["x"], min_age=0.0),)}, NOW, None),
        ({"policy_rules": (rule("slow", ["x"], min_age=14 * DAY),)}, NOW - 8 * DAY, Kind.COOLDOWN),
        # No time known at all: as new as can be.
        ({"min_age": 7 * DAY}, None, Kind.COOLDOWN),
    ],
)
def test_release_cooldown(
    settings: dict[str, object], uploaded: float | None, expected: Kind | None
) -> None:
    assert block(policy(**settings), "x-1.0.tar.gz", uploaded=uploaded) is expected


def test_an_upstream_can_have_its_own_cooldown() -> None:
    config = Config(
        min_age=7 * DAY,
        upstreams=(UpstreamConfig(name="pypi"), UpstreamConfig(name="internal", min_age=0.0)),
    )
    p = Policy(config)
    assert block(p, "x-1.0.tar.gz", upstream="pypi", uploaded=NOW - DAY) is Kind.COOLDOWN
    assert block(p, "x-1.0.tar.gz", upstream="internal", uploaded=NOW - DAY) is None


def test_the_cooldown_says_when_a_file_becomes_available() -> None:
    found = policy(min_age=7 * DAY).file_block(
        "x", "x-1.0.tar.gz", upstream="pypi", uploaded=NOW - DAY, has_sha256=True, now=NOW
    )
    assert found is not None and found.until == NOW + 6 * DAY
    assert "held back until 2026-12-07 12:00 UTC" in found.detail
    assert "release cooldown of 7 days" in found.detail


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("<2.31", True),
        (">=1,<2", True),
        ("==1.*", True),
        ("~=1.4", True),
        ("!=1.0", True),
        (">2,<1", False),
        ("==1.0,==2.0", False),
        ("<0", False),
        ("not a spec", False),
    ],
)
def test_version_specifiers_must_be_valid_and_satisfiable(text: str, ok: bool) -> None:
    if ok:
        parse_specifier(text)
    else:
        with pytest.raises(ValueError):
            parse_specifier(text)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipgate.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        (
            '[[policy.rule]]\naction = "deny"\nprojects = ["x"]\nversions = ">2,<1"\n',
            "policy.rule[1].versions: no version can satisfy",
        ),
        (
            '[[policy.rule]]\naction = "deny"\nprojects = ["x"]\nversions = "bogus"\n',
            "policy.rule[1].versions: not a PEP 440",
        ),
        ('[[policy.rule]]\naction = "deny"\n', "policy.rule[1].projects: required"),
        ('[[policy.rule]]\nprojects = ["x"]\n', "policy.rule[1]: needs an action"),
        ('[[policy.rule]]\naction = "maybe"\nprojects = ["x"]\n', "policy.rule[1].action"),
        (
            '[[policy.rule]]\nname = "r"\naction = "allow"\nprojects = ["x"]\n',
            "policy.rule[r].action: allow has no effect",
        ),
        (
            '[[policy.rule]]\naction = "deny"\nprojects = ["x"]\nupstreams = ["nope"]\n',
            "policy.rule[1].upstreams: no upstream is called 'nope'",
        ),
        (
            '[[upstream]]\nname = "pypi"\n'
            '[[upstream]]\nname = "torch"\nurl = "https://t.example/"\n'
            '[[route]]\nprojects = ["torch"]\nupstreams = ["torch"]\n'
            '[[policy.rule]]\nname = "t"\naction = "deny"\nprojects = ["torch"]\n'
            'upstreams = ["pypi"]\n',
            "policy.rule[t]: can never match: torch comes only from torch",
        ),
        ("[policy]\nexclude_newer = 'yesterday'\n", "policy.exclude_newer"),
        ("[policy]\ndefault = 'sometimes'\n", "policy.default"),
        ("[policy]\nrule = 3\n", "expected [[policy.rule]] tables"),
    ],
)
def test_bad_rules_are_one_line_errors_naming_the_rule(
    tmp_path: Path, toml: str, needle: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(config_file=write(tmp_path, toml), env={})
    assert needle in str(caught.value)
    assert "\n" not in str(caught.value)


def test_rules_load_from_the_configuration_file(tmp_path: Path) -> None:
    config = load_config(
        config_file=write(
            tmp_path,
            '[policy]\ndefault = "deny"\nmin_age = "7d"\nexclude_newer = 2026-03-24T00:00:00Z\n'
            'cooldown_exempt = ["Corp_*"]\n'
            '[[policy.rule]]\nname = "ok"\naction = "allow"\nprojects = ["numpy", "corp-*"]\n'
            '[[policy.rule]]\naction = "deny"\nprojects = ["numpy"]\nversions = "<1.22"\n'
            'reason = "CVE-2021-41495"\n',
        ),
        env={},
    )
    assert config.policy_default == "deny" and config.min_age == 7 * DAY
    assert config.exclude_newer == datetime(2026, 3, 24, tzinfo=UTC).timestamp()
    assert config.cooldown_exempt == ("corp-*",)
    assert [r.name for r in config.policy_rules] == ["ok", "#2"]
    assert config.policy_rules[1].versions == "<1.22"


# --- the page filter ---------------------------------------------------------------------


def stamped(filename: str, uploaded: float, yanked: bool | str = False) -> DistFile:
    iso = datetime.fromtimestamp(uploaded, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return replace(dist(filename), upload_time=iso, yanked=yanked)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def filtered(source: StaticSource, config: Config, clock: Clock) -> tuple[PolicyFilter, Metrics]:
    metrics = Metrics()
    return PolicyFilter(
        source, PolicyState(config), FailureReporter(metrics), metrics, clock
    ), metrics


async def test_hidden_files_leave_the_page_and_their_urls_get_403_naming_the_rule() -> None:
    files = [stamped(f"requests-{v}.tar.gz", NOW - 90 * DAY) for v in ("2.30.0", "2.31.0")]
    source = StaticSource("pypi", {"requests": files})
    source_page = (await source.project("requests")).page
    assert source_page is not None
    gate, metrics = filtered(
        source,
        Config(policy_rules=(OLD_REQUESTS,), upstreams=(UpstreamConfig(name="pypi"),)),
        Clock(NOW),
    )
    view = await gate.project("requests")
    assert [f.filename for f in view.page.files] == ["requests-2.31.0.tar.gz"]
    hidden = files[0]
    with pytest.raises(UpstreamError) as caught:
        await gate.find_file("requests", file_key(hidden), hidden.filename)
    error = caught.value
    assert (error.reason, error.client_status) == (Reason.POLICY, 403)
    assert error.phrase is not None and "rule old-requests" in error.phrase
    assert "requests 2.30.0 is denied by rule old-requests (CVE)" in error.detail
    exposition = metrics.render().decode()
    assert metric_value(exposition, "pipgate_policy_blocks_total", kind="version") == 1
    assert (await gate.find_file("requests", file_key(files[1]), files[1].filename)) is not None


async def test_versions_list_only_versions_that_still_have_a_file() -> None:
    files = [dist("x-1.0.tar.gz"), dist("x-2.0.tar.gz")]
    source = StaticSource("pypi", {"x": files})
    real = source.project

    async def with_versions(name: str, *, revalidate: bool = False):  # type: ignore[no-untyped-def]
        view = await real(name, revalidate=revalidate)
        return replace(view, page=replace(view.page, versions=("1.0", "2.0", "3.0")))

    source.project = with_versions  # type: ignore[method-assign]
    deny_one = rule("no-2", ["x"], action="deny", versions="==2.0")
    gate, _ = filtered(
        source,
        Config(policy_rules=(deny_one,), upstreams=(UpstreamConfig(name="pypi"),)),
        Clock(NOW),
    )
    view = await gate.project("x")
    assert view.page.versions == ("1.0",)


async def test_a_file_in_cooldown_is_yanked_with_its_date_then_appears_on_time() -> None:
    old = stamped("x-1.0.tar.gz", NOW - 30 * DAY)
    new = stamped("x-2.0.tar.gz", NOW - 1 * DAY)
    clock = Clock(NOW)
    gate, metrics = filtered(
        StaticSource("pypi", {"x": [old, new]}),
        Config(min_age=7 * DAY, upstreams=(UpstreamConfig(name="pypi"),)),
        clock,
    )
    view = await gate.project("x")
    held = next(f for f in view.page.files if f.filename == new.filename)
    assert isinstance(held.yanked, str) and "held back until 2026-12-07 12:00 UTC" in held.yanked
    assert view.expires_in == pytest.approx(6 * DAY)
    with pytest.raises(UpstreamError) as caught:
        await gate.find_file("x", file_key(new), new.filename)
    assert "2026-12-07" in (caught.value.phrase or "")
    first_digest = view.digest
    clock.now = NOW + 6 * DAY + 1  # no restart, no TTL: the clock alone
    later = await gate.project("x")
    assert [f.yanked for f in later.page.files] == [False, False]
    assert later.digest != first_digest  # so every ETag changes
    assert (await gate.find_file("x", file_key(new), new.filename)) is not None
    assert (
        metric_value(metrics.render().decode(), "pipgate_policy_blocks_total", kind="cooldown") == 1
    )


async def test_a_denied_project_is_refused_before_any_upstream_is_asked() -> None:
    source = StaticSource("pypi", {"evil-pkg": [dist("evil_pkg-1.0.tar.gz")]})
    gate, _ = filtered(
        source, Config(deny=("evil-*",), upstreams=(UpstreamConfig(name="pypi"),)), Clock(NOW)
    )
    with pytest.raises(UpstreamError) as caught:
        await gate.project("evil-pkg")
    assert caught.value.client_status == 403
    assert source.calls == []


async def test_quarantine_changes_take_effect_without_a_new_filter() -> None:
    files = [dist("x-1.0.tar.gz"), dist("x-1.1.tar.gz")]
    source = StaticSource("pypi", {"x": files})
    state = PolicyState(Config(upstreams=(UpstreamConfig(name="pypi"),)))
    metrics = Metrics()
    gate = PolicyFilter(source, state, FailureReporter(metrics), metrics, Clock(NOW))
    assert len((await gate.project("x")).page.files) == 2
    state.set_quarantine([QuarantineEntry("x", "==1.1", "MAL-2026-1: bad", "MAL-2026-1")])
    assert [f.filename for f in (await gate.project("x")).page.files] == ["x-1.0.tar.gz"]
    with pytest.raises(UpstreamError) as caught:
        await gate.find_file("x", file_key(files[1]), files[1].filename)
    assert "quarantined on this server: MAL-2026-1: bad" in caught.value.detail
    state.set_quarantine([QuarantineEntry("x", "", "all of it")])
    with pytest.raises(UpstreamError):
        await gate.project("x")


# --- through a real app ------------------------------------------------------------------


async def test_denied_project_pages_and_cached_files_are_refused(make_gate: GateFactory) -> None:
    open_gate = await make_gate()
    beta = next(d for d in sample_tree() if d.filename == "beta-1.0-py3-none-any.whl")
    path = await file_path(open_gate, "beta", beta.filename)
    assert (await open_gate.get(path)).status == 200  # now cached
    gate = await make_gate(deny=("beta",))
    page = await gate.get("/simple/beta/")
    assert page.status == 403
    assert page.headers["X-Pipgate-Reason"] == "policy"
    assert "blocked" not in page.reason and "policy.deny" in page.reason
    cached = await gate.get(path)
    assert cached.status == 403
    assert "project beta is denied by rule policy.deny" in await cached.text()
    # The same cached file under another project's name is not a file of that project.
    other = path.replace("/files/beta/", "/files/alpha/")
    assert (await gate.get(other)).status == 404
    assert (await gate.get("/simple/alpha/")).status == 200
