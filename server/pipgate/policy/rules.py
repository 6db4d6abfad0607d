"""What the company's policy lets through: rules, release cooldown, quarantine. Pure.

A file is refused when (first match in this order, so the most specific reason is the
one a developer sees):
1. a quarantine entry matches its project and version (``pipgate quarantine``);
2. a deny rule matches its project, version and upstream (``[[policy.rule]]``, and
   ``[policy] deny``): deny always wins over allow;
3. the policy is an allow-list (``default = "deny"``) and no allow rule matches;
4. its upstream requires hashes and it has no sha256;
5. it is younger than the cooldown (``min_age``) or newer than ``exclude_newer``, and
   its project is not exempt.
Names and globs are PEP 503 normalised on both sides; versions are PEP 440.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from fnmatch import fnmatchcase

from packaging.specifiers import SpecifierSet
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from pipgate.config import Config, PolicyRule


class Kind(StrEnum):
    """Why a file or project is refused (the ``kind`` label of the block counter)."""

    DENY = "deny"
    ALLOWLIST = "allowlist"
    VERSION = "version"
    COOLDOWN = "cooldown"
    QUARANTINE = "quarantine"
    UNHASHED = "unhashed"


@dataclass(frozen=True)
class Block:
    """A refusal, with what a developer needs to understand it."""

    kind: Kind
    #: Which rule: ``rule old-requests``, ``quarantine MAL-2026-1``, ``cooldown``.
    rule: str
    #: One sentence, e.g. "requests 2.30.0 is denied by rule old-requests (CVE-…)".
    detail: str
    #: When the file becomes available (cooldown), as a Unix time.
    until: float | None = None


@dataclass(frozen=True)
class QuarantineEntry:
    """A project, or some of its versions, taken out of service."""

    project: str
    #: PEP 440 specifier text; empty: every version.
    versions: str = ""
    reason: str = ""
    #: Where it came from: ``cli`` or an OSV record id.
    source: str = "cli"
    added_at: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.project}{self.versions}" if self.versions else self.project


@dataclass(frozen=True)
class Cooldown:
    """Release cooldown for one file: how old it must be, and the newest allowed."""

    min_age: float = 0.0
    #: Unix time; files uploaded after it are held back. ``None``: no cut-off.
    exclude_newer: float | None = None


@dataclass(frozen=True)
class _Rule:
    name: str
    action: str | None
    patterns: tuple[str, ...]
    versions: SpecifierSet | None
    upstreams: frozenset[str]
    reason: str
    cooldown: Cooldown | None

    def matches_project(self, project: str, upstream: str | None) -> bool:
        if self.upstreams and upstream is not None and upstream not in self.upstreams:
            return False
        return any(fnmatchcase(project, p) for p in self.patterns)

    def matches(self, project: str, version: Version | None, upstream: str | None) -> bool:
        if not self.matches_project(project, upstream):
            return False
        if self.versions is None:
            return True
        return version is not None and self.versions.contains(version, prereleases=True)


@dataclass(frozen=True)
class _Quarantined:
    entry: QuarantineEntry
    versions: SpecifierSet | None


def file_version(filename: str) -> Version | None:
    """The version in a wheel or sdist filename, if it has a readable one."""
    try:
        if filename.endswith(".whl"):
            return parse_wheel_filename(filename)[1]
        return parse_sdist_filename(filename)[1]
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
        return None


class Policy:
    """One immutable policy: the configured rules plus the current quarantine list."""

    def __init__(
        self,
        config: Config,
        quarantine: Sequence[QuarantineEntry] = (),
    ) -> None:
        self.default = config.policy_default
        self._exempt = config.cooldown_exempt
        self._global = Cooldown(config.min_age, config.exclude_newer)
        #: Per upstream: (min_age or None, exclude_newer or None) overriding the global.
        self._upstream_cooldown = {u.name: (u.min_age, u.exclude_newer) for u in config.upstreams}
        self._require_hashes = {u.name: u.require_hashes for u in config.upstreams}
        rules = [_compile(rule) for rule in config.policy_rules]
        if config.deny:
            rules.insert(
                0,
                _Rule("policy.deny", "deny", config.deny, None, frozenset(), "", None),
            )
        self.rules: tuple[_Rule, ...] = tuple(rules)
        self.quarantine = tuple(
            _Quarantined(e, SpecifierSet(e.versions) if e.versions else None) for e in quarantine
        )
        self.fingerprint = _fingerprint(config, quarantine)

    @property
    def allow_list(self) -> bool:
        return self.default == "deny"

    # --- whole projects ------------------------------------------------------------------

    def project_block(self, project: str, upstream: str | None = None) -> Block | None:
        """A refusal of every version of ``project`` (from ``upstream``, when known)."""
        quarantined = self._quarantined(project, None, f"project {project}", whole=True)
        if quarantined is not None:
            return quarantined
        for rule in self.rules:
            # A rule scoped to upstreams refuses the whole project only once its owner
            # is known to be one of them.
            scoped_elsewhere = bool(rule.upstreams) and upstream is None
            if (
                rule.action == "deny"
                and rule.versions is None
                and not scoped_elsewhere
                and rule.matches_project(project, upstream)
            ):
                return Block(
                    Kind.DENY,
                    f"rule {rule.name}",
                    f"project {project} is denied by rule {rule.name}" + _because(rule),
                )
        if self.allow_list and not any(
            r.action == "allow" and r.matches_project(project, upstream) for r in self.rules
        ):
            return Block(
                Kind.ALLOWLIST,
                "policy.default",
                f"project {project} is not on this server's allow-list",
            )
        return None

    # --- single files --------------------------------------------------------------------

    def file_block(
        self,
        project: str,
        filename: str,
        *,
        upstream: str,
        uploaded: float | None,
        has_sha256: bool,
        now: float,
    ) -> Block | None:
        """Why the file may not be served, or ``None``."""
        version = file_version(filename)
        shown = f"{project} {version}" if version is not None else filename
        quarantined = self._quarantined(project, version, shown, whole=False)
        if quarantined is not None:
            return quarantined
        for rule in self.rules:
            if rule.action == "deny" and rule.matches(project, version, upstream):
                kind = Kind.VERSION if rule.versions is not None else Kind.DENY
                detail = f"{shown} is denied by rule {rule.name}" + _because(rule)
                return Block(kind, f"rule {rule.name}", detail)
        if self.allow_list and not any(
            r.action == "allow" and r.matches(project, version, upstream) for r in self.rules
        ):
            return Block(
                Kind.ALLOWLIST, "policy.default", f"{shown} is not on this server's allow-list"
            )
        if self._require_hashes.get(upstream) and not has_sha256:
            return Block(
                Kind.UNHASHED,
                f"upstream {upstream} require_hashes",
                f"{filename}: upstream {upstream} publishes no sha256 for it and "
                "require_hashes is set",
            )
        return self._cooldown_block(project, shown, upstream, version, uploaded, now)

    def _quarantined(
        self, project: str, version: Version | None, shown: str, *, whole: bool
    ) -> Block | None:
        """The first quarantine entry that covers the project (``whole``: all of it) or
        this version of it."""
        for q in self.quarantine:
            if not fnmatchcase(project, q.entry.project):
                continue
            if q.versions is None or (
                not whole and version is not None and q.versions.contains(version, prereleases=True)
            ):
                reason = f": {q.entry.reason}" if q.entry.reason else ""
                return Block(
                    Kind.QUARANTINE,
                    f"quarantine {q.entry.source}",
                    f"{shown} is quarantined on this server{reason}",
                )
        return None

    def cooldown_for(self, project: str, upstream: str, version: Version | None) -> Cooldown:
        """The cooldown that applies: the first rule that sets one, else the upstream's,
        else the global one (``min_age`` and ``exclude_newer`` each on its own)."""
        if any(fnmatchcase(project, p) for p in self._exempt):
            return Cooldown()
        min_age, exclude_newer = self._global.min_age, self._global.exclude_newer
        own_age, own_cut = self._upstream_cooldown.get(upstream, (None, None))
        if own_age is not None:
            min_age = own_age
        if own_cut is not None:
            exclude_newer = own_cut
        for rule in self.rules:
            if rule.cooldown is not None and rule.matches(project, version, upstream):
                return Cooldown(
                    rule.cooldown.min_age if rule.cooldown.min_age >= 0 else min_age,
                    rule.cooldown.exclude_newer
                    if rule.cooldown.exclude_newer is not None
                    else exclude_newer,
                )
        return Cooldown(min_age, exclude_newer)

    def _cooldown_block(
        self,
        project: str,
        shown: str,
        upstream: str,
        version: Version | None,
        uploaded: float | None,
        now: float,
    ) -> Block | None:
        cooldown = self.cooldown_for(project, upstream, version)
        if not cooldown.min_age and cooldown.exclude_newer is None:
            return None
        if uploaded is None:
            uploaded = now  # no time known at all: as new as it can be (the safe side)
        if cooldown.exclude_newer is not None and uploaded > cooldown.exclude_newer:
            return Block(
                Kind.COOLDOWN,
                "exclude_newer",
                f"{shown} was released {_utc(uploaded)}, after this server's cut-off "
                f"{_utc(cooldown.exclude_newer)} (exclude_newer)",
            )
        if cooldown.min_age and now - uploaded < cooldown.min_age:
            until = uploaded + cooldown.min_age
            return Block(
                Kind.COOLDOWN,
                "min_age",
                f"{shown} was released {_utc(uploaded)} and is held back until {_utc(until)} "
                f"(release cooldown of {_days(cooldown.min_age)})",
                until=until,
            )
        return None


def _compile(rule: PolicyRule) -> _Rule:
    cooldown = None
    if rule.min_age is not None or rule.exclude_newer is not None:
        cooldown = Cooldown(rule.min_age if rule.min_age is not None else -1.0, rule.exclude_newer)
    return _Rule(
        name=rule.name,
        action=rule.action,
        patterns=rule.projects,
        versions=SpecifierSet(rule.versions) if rule.versions else None,
        upstreams=frozenset(rule.upstreams),
        reason=rule.reason,
        cooldown=cooldown,
    )


def _because(rule: _Rule) -> str:
    return f" ({rule.reason})" if rule.reason else ""


def _utc(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(timestamp))


def _days(seconds: float) -> str:
    days = seconds / 86400
    if days >= 1 and days == int(days):
        return f"{int(days)} day" + ("s" if days != 1 else "")
    hours = seconds / 3600
    return f"{hours:g} hours" if hours >= 1 else f"{seconds:g} s"


def _fingerprint(config: Config, quarantine: Sequence[QuarantineEntry]) -> str:
    """Changes exactly when what the policy decides may change."""
    data = {
        "default": config.policy_default,
        "deny": config.deny,
        "exempt": config.cooldown_exempt,
        "min_age": config.min_age,
        "exclude_newer": config.exclude_newer,
        "rules": [asdict(r) for r in config.policy_rules],
        "upstreams": [
            (u.name, u.min_age, u.exclude_newer, u.require_hashes) for u in config.upstreams
        ],
        "quarantine": [asdict(q) for q in quarantine],
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def entries_as_json(entries: Sequence[QuarantineEntry]) -> list[dict[str, object]]:
    """The quarantine list as JSON-ready dicts."""
    return [asdict(e) for e in entries]


__all__ = [
    "Block",
    "Cooldown",
    "Kind",
    "Policy",
    "QuarantineEntry",
    "entries_as_json",
    "file_version",
]
