"""Which versions of a project install in a client's environment, and why the others
do not. Pure.

pip and uv answer "no matching distribution" and stop; pipgate knows the client's
environment (from its User-Agent, :mod:`pipgate.useragent`, or given by hand) and the
whole project page, so it can say, for every version: installable (and by which file),
or not, and why: no wheel for these tags (with a summary of the tags the wheels do
have), ``requires-python`` excludes this Python, only an sdist (it installs only with a
build), yanked, refused by a policy rule (named), quarantined.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from pipgate.policy.rules import Block, Kind, file_version
from pipgate.simple.model import DistFile, ProjectPage
from pipgate.targets import Target, best_wheel
from pipgate.useragent import ClientInfo, parse_user_agent

_GLIBC = re.compile(r"^(\d+)\.(\d+)")
#: The CPU names installers report -> the architecture in Linux platform tags.
_LINUX_ARCH = {
    "x86_64": "x86_64",
    "amd64": "x86_64",
    "aarch64": "aarch64",
    "arm64": "aarch64",
    "i686": "i686",
    "armv7l": "armv7l",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
}
_WINDOWS = {"amd64": "win_amd64", "x86_64": "win_amd64", "x86": "win32", "arm64": "win_arm64"}


class State(StrEnum):
    """What a version is for an environment."""

    INSTALLABLE = "installable"
    #: Only an sdist: installs only with a build (and the build's own needs).
    SDIST_ONLY = "sdist_only"
    NO_WHEEL = "no_wheel"
    REQUIRES_PYTHON = "requires_python"
    YANKED = "yanked"
    POLICY = "policy"
    QUARANTINED = "quarantined"


@dataclass(frozen=True)
class Environment:
    """An installer's environment, as far as wheel selection goes."""

    target: Target
    #: The full Python version for ``requires-python`` (``3.13.1``; ``3.13.0`` if unknown).
    python_full: str
    installer: str = "other"
    installer_version: str | None = None

    @property
    def label(self) -> str:
        """``CPython 3.13 on manylinux_2_36_x86_64``."""
        return f"CPython {self.target.python} on {self.target.platform}"


def environment(python: str, platform: str, *, full: str | None = None) -> Environment:
    """An environment given by hand (``--python 3.13 --platform win_amd64``)."""
    return Environment(Target(python, platform), full or f"{python}.0")


def from_client(info: ClientInfo) -> Environment | None:
    """The environment a User-Agent describes, or ``None`` when it says too little
    (an installer that sends no JSON, another Python implementation)."""
    if info.python is None or info.implementation not in (None, "CPython"):
        return None
    platform = _platform(info)
    if platform is None:
        return None
    parts = info.python.split(".")
    try:
        target = Target(".".join(parts[:2]), platform)
    except ValueError:
        return None
    return Environment(target, info.python, info.installer, info.installer_version)


@functools.lru_cache(maxsize=1024)
def environment_of(user_agent: str | None) -> Environment | None:
    """The environment a User-Agent header describes (memoised: the same few strings
    arrive all day)."""
    return from_client(parse_user_agent(user_agent))


def _platform(info: ClientInfo) -> str | None:
    system = (info.system or "").lower()
    cpu = (info.cpu or "").lower()
    if system == "linux":
        arch = _LINUX_ARCH.get(cpu)
        match = _GLIBC.match(info.libc_version or "")
        if arch is None or match is None:
            return None
        major, minor = match.groups()
        kind = "musllinux" if (info.libc or "").lower() == "musl" else "manylinux"
        return f"{kind}_{major}_{minor}_{arch}"
    if system == "darwin":
        arch = "arm64" if cpu in ("arm64", "aarch64") else "x86_64" if cpu == "x86_64" else None
        match = _GLIBC.match(info.distro_version or "")
        if arch is None or match is None:
            return None
        major, minor = int(match.group(1)), int(match.group(2))
        return f"macosx_{major}_0_{arch}" if major >= 11 else f"macosx_10_{minor}_{arch}"
    if system == "windows":
        return _WINDOWS.get(cpu)
    return None


@dataclass(frozen=True)
class Verdict:
    """One version of a project for one environment."""

    version: str
    state: State
    #: The file that would install (INSTALLABLE), or the sdist (SDIST_ONLY).
    file: str | None = None
    #: Why not, in one sentence (``None`` when installable).
    reason: str | None = None

    @property
    def installable(self) -> bool:
        return self.state is State.INSTALLABLE


BlockOf = Callable[[DistFile], Block | None]


def verdicts(
    page: ProjectPage,
    env: Environment,
    *,
    block_of: BlockOf | None = None,
    spec: str | None = None,
) -> list[Verdict]:
    """Every version on ``page`` (newest first; only those in ``spec`` when given)."""
    wanted = SpecifierSet(spec) if spec else None
    by_version: dict[Version, list[DistFile]] = {}
    for dist in page.offered_files() if not page.quarantined else page.files:
        version = file_version(dist.filename)
        if version is None or (wanted is not None and not wanted.contains(version, True)):
            continue
        by_version.setdefault(version, []).append(dist)
    return [
        _verdict(str(version), files, env, block_of, page.quarantined)
        for version, files in sorted(by_version.items(), reverse=True)
    ]


def _verdict(
    version: str,
    files: list[DistFile],
    env: Environment,
    block_of: BlockOf | None,
    quarantined_upstream: bool,
) -> Verdict:
    if quarantined_upstream:
        return Verdict(version, State.QUARANTINED, reason="the project is quarantined upstream")
    blocks = [block_of(d) if block_of else None for d in files]
    allowed = [d for d, b in zip(files, blocks, strict=True) if b is None]
    if not allowed:
        block = next(b for b in blocks if b is not None)
        state = State.QUARANTINED if block.kind is Kind.QUARANTINE else State.POLICY
        return Verdict(version, state, reason=f"{block.detail} ({block.rule})")
    usable = [d for d in allowed if not d.yanked]
    if not usable:
        why = next((d.yanked for d in allowed if isinstance(d.yanked, str)), "")
        reason = "yanked" + (f": {why}" if why else "") + " (installs only with an exact ==pin)"
        return Verdict(version, State.YANKED, reason=reason)
    fitting = [d for d in usable if _python_fits(d, env)]
    if not fitting:
        bounds = sorted({d.requires_python for d in usable if d.requires_python})
        return Verdict(
            version,
            State.REQUIRES_PYTHON,
            reason=f"requires-python {' / '.join(bounds)} excludes Python {env.python_full}",
        )
    wheels = [d.filename for d in fitting if d.filename.endswith(".whl")]
    chosen = best_wheel(wheels, env.target)
    if chosen is not None:
        return Verdict(version, State.INSTALLABLE, file=chosen)
    sdists = [d.filename for d in fitting if not d.filename.endswith(".whl")]
    if sdists:
        return Verdict(
            version,
            State.SDIST_ONLY,
            file=sdists[0],
            reason="no wheel for this environment: only an sdist, which installs only with a "
            "build" + (f" (wheels: {summarise_tags(wheels)})" if wheels else ""),
        )
    return Verdict(
        version,
        State.NO_WHEEL,
        reason=f"no wheel for {env.label} (wheels: {summarise_tags(wheels)})",
    )


def _python_fits(dist: DistFile, env: Environment) -> bool:
    if not dist.requires_python:
        return True
    try:
        return SpecifierSet(dist.requires_python).contains(env.python_full, prereleases=True)
    except (InvalidSpecifier, InvalidVersion):
        return True  # an unreadable bound: installers ignore it too


def summarise_tags(filenames: Iterable[str]) -> str:
    """What wheels there are, in a few words: ``cp39–cp312, manylinux x86_64 and
    aarch64, macOS arm64, win_amd64``."""
    pythons: set[str] = set()
    families: dict[str, set[str]] = {}
    for filename in filenames:
        try:
            _, _, _, tags = parse_wheel_filename(filename)
        except InvalidWheelFilename:
            continue
        for tag in tags:
            pythons.add(f"abi3:{tag.interpreter}" if tag.abi == "abi3" else tag.interpreter)
            family, arch = _family(tag.platform)
            families.setdefault(family, set()).add(arch)
    parts = [_pythons(pythons)] if pythons else []
    for family in ("manylinux", "musllinux", "macOS", "windows", "any", "other"):
        archs = families.get(family)
        if not archs:
            continue
        if family == "any":
            parts.append("any platform")
        elif family == "windows":
            parts.append(", ".join(sorted(archs)))
        else:
            parts.append(f"{family} {_and(sorted(a for a in archs if a))}".rstrip())
    return ", ".join(p for p in parts if p) or "none"


def _family(platform: str) -> tuple[str, str]:
    if platform == "any":
        return "any", ""
    if platform.startswith(("manylinux", "musllinux")):
        family = platform.split("_", 1)[0]
        family = "musllinux" if family == "musllinux" else "manylinux"
        arch = platform.rsplit("_", 1)[-1] if "x86_64" not in platform else "x86_64"
        return family, arch
    if platform.startswith("macosx"):
        arch = platform.rsplit("_", 1)[-1]
        return "macOS", "x86_64" if arch == "64" else arch
    if platform.startswith("win"):
        return "windows", platform
    return "other", platform


def _pythons(tags: set[str]) -> str:
    """``cp39–cp312, cp38+ (abi3), py3``."""
    cpython = sorted(int(t[2:]) for t in tags if _is_cpython(t))
    stable = sorted(int(t[7:]) for t in tags if t.startswith("abi3:cp") and t[7:].isdigit())
    other = sorted(t for t in tags if not _is_cpython(t) and not t.startswith("abi3:"))
    parts = []
    if cpython:
        low, high = cpython[0], cpython[-1]
        parts.append(f"cp{low}" if low == high else f"cp{low}–cp{high}")
    if stable:
        parts.append(f"cp{stable[0]}+ (abi3)")
    return ", ".join(parts + other)


def _is_cpython(tag: str) -> bool:
    return tag.startswith("cp") and tag[2:].isdigit()


def _and(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


@dataclass(frozen=True)
class Explanation:
    """The report ``pipgate explain`` prints."""

    project: str
    environment: Environment
    verdicts: tuple[Verdict, ...]

    @property
    def newest(self) -> Verdict | None:
        return self.verdicts[0] if self.verdicts else None

    @property
    def newest_installable(self) -> Verdict | None:
        return next((v for v in self.verdicts if v.installable), None)

    def newer_than_installable(self) -> list[Verdict]:
        """The versions newer than the newest installable one (or all, if none is)."""
        out = []
        for verdict in self.verdicts:
            if verdict.installable:
                break
            out.append(verdict)
        return out

    def lines(self) -> list[str]:
        env = self.environment
        if not self.verdicts:
            return [f"{self.project}: no versions on the page for these criteria"]
        best = self.newest_installable
        head = [
            f"{self.project} for {env.label}"
            + (f" ({env.installer} {env.installer_version})" if env.installer_version else ""),
            f"  newest version:     {self.verdicts[0].version}",
            f"  newest installable: {best.version} ({best.file})"
            if best is not None
            else "  newest installable: none",
        ]
        if best is not None and best is self.verdicts[0]:
            return head
        head.append("  why the newer ones do not install here:" if best else "  why not:")
        shown = self.newer_than_installable()
        for verdict in shown[:20]:
            head.append(f"    {verdict.version}: {verdict.reason}")
        if len(shown) > 20:
            head.append(f"    … and {len(shown) - 20} more")
        return head

    def to_json(self) -> dict[str, object]:
        best = self.newest_installable
        return {
            "project": self.project,
            "environment": {
                "python": self.environment.python_full,
                "platform": self.environment.target.platform,
                "installer": self.environment.installer,
                "installer_version": self.environment.installer_version,
            },
            "newest": self.verdicts[0].version if self.verdicts else None,
            "newest_installable": best.version if best else None,
            "newest_installable_file": best.file if best else None,
            "versions": [
                {"version": v.version, "state": v.state.value, "file": v.file, "reason": v.reason}
                for v in self.verdicts
            ],
        }
