"""The policy as a page filter around the routed page source.

What a rule denies, what the allow-list leaves out, what is quarantined and what its
upstream may not serve unhashed disappears from the page (HTML and JSON alike, PEP 700
``versions`` included); a request for such a file's URL, from a lock file say, gets 403
with the rule in the body and in the HTTP reason phrase, which is what pip prints.

Files in their release cooldown stay on the page as **yanked** (PEP 592), with the date
they become available as the reason: installers pass over yanked files, so an unpinned
install takes the newest file out of cooldown, while an exact pin (``==``), which
installers still honour for yanked files, reaches pipgate and gets the 403 that says
when the version becomes available, instead of a bare "no matching distribution".

A filtered page is computed once per (upstream content, policy) and kept until the next
file leaves its cooldown, so a file appears on time, without a restart and without
waiting for the page TTL; the filtered page's digest (and so its ETags) changes with it.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from packaging.version import InvalidVersion, Version

from pipgate.config import Config
from pipgate.errors import Reason, UpstreamError
from pipgate.failures import FailureReporter
from pipgate.links import file_key
from pipgate.metrics import Metrics
from pipgate.pages.source import FileOffer, Offers, PageSource, PageView, ProjectList
from pipgate.policy.rules import Block, Kind, Policy, QuarantineEntry, file_version
from pipgate.simple.model import DistFile, ProjectPage

#: Filtered pages kept in memory.
FILTERED_CACHE_SIZE = 512
#: The ``upstream`` label of refusals no upstream was asked about.
NO_UPSTREAM = "-"


class PolicyState:
    """The policy in force in this worker: replaced whole when the configuration is
    reloaded (SIGHUP) or the quarantine list changes, never edited in place."""

    def __init__(self, config: Config, quarantine: Sequence[QuarantineEntry] = ()) -> None:
        self.config = config
        self.quarantine: tuple[QuarantineEntry, ...] = tuple(quarantine)
        self.policy = Policy(config, self.quarantine)
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever another policy comes into force."""
        self._listeners.append(listener)

    def set_quarantine(self, entries: Sequence[QuarantineEntry]) -> None:
        self.quarantine = tuple(entries)
        self._replace(Policy(self.config, self.quarantine))

    def set_config(self, config: Config) -> None:
        self.config = config
        self._replace(Policy(config, self.quarantine))

    def _replace(self, policy: Policy) -> None:
        self.policy = policy
        for listener in self._listeners:
            listener()


@dataclass(frozen=True)
class _Filtered:
    page: ProjectPage
    offers: Offers
    digest: str
    #: (URL key, filename) -> why it may not be downloaded, and its upstream.
    refused: dict[tuple[str, str], tuple[Block, str]]
    #: Unix time the result stops being right (a file leaves its cooldown).
    valid_until: float


class PolicyFilter:
    """A :class:`~pipgate.pages.source.PageSource` that applies the policy."""

    def __init__(
        self,
        inner: PageSource,
        state: PolicyState,
        reporter: FailureReporter,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._inner = inner
        self.state = state
        self._reporter = reporter
        self._metrics = metrics
        self._clock = clock
        self._memo: OrderedDict[tuple[str, str], _Filtered] = OrderedDict()

    async def project(self, name: str, *, revalidate: bool = False) -> PageView:
        view, _ = await self._project(name, revalidate)
        return view

    async def project_list(self, *, revalidate: bool = False) -> ProjectList:
        return await self._inner.project_list(revalidate=revalidate)

    async def find_file(self, name: str, key: str, filename: str) -> FileOffer | None:
        view, filtered = await self._project(name, False)
        if filtered is not None:
            refused = filtered.refused.get((key, filename))
            if refused is not None:
                block, upstream = refused
                self._refuse(block, name, upstream, filename)
        if view.offer(key, filename) is None:
            # Not on the page: a stage below may say why (offline: not cached).
            await self._inner.find_file(name, key, filename)
            return None
        return view.offer(key, filename)

    async def close(self) -> None:
        await self._inner.close()

    async def unfiltered(self, name: str) -> tuple[PageView, Callable[[DistFile], Block | None]]:
        """The page as the stages below give it, and the policy's decision for each of
        its files (``pipgate explain`` says what is hidden and why)."""
        view = await self._inner.project(name)
        policy = self.state.policy
        now = self._clock()

        def block_of(dist: DistFile) -> Block | None:
            assert view.page is not None
            upstream = view.offers.upstream_of(dist.filename) if view.offers else NO_UPSTREAM
            return policy.project_block(name, view.upstream) or policy.file_block(
                name,
                dist.filename,
                upstream=upstream,
                uploaded=_uploaded(dist, view.first_seen),
                has_sha256=dist.sha256 is not None,
                now=now,
            )

        return view, block_of

    # --- the filter ----------------------------------------------------------------------

    async def _project(self, name: str, revalidate: bool) -> tuple[PageView, _Filtered | None]:
        policy = self.state.policy
        block = policy.project_block(name)
        if block is not None:
            self._refuse(block, name, NO_UPSTREAM)
        view = await self._inner.project(name, revalidate=revalidate)
        if view.page is None:
            return view, None
        block = policy.project_block(name, view.upstream)
        if block is not None:
            self._refuse(block, name, view.upstream or NO_UPSTREAM)
        now = self._clock()
        memo_key = (view.digest, policy.fingerprint)
        filtered = self._memo.get(memo_key)
        if filtered is None or now >= filtered.valid_until:
            filtered = _filter(view, policy, now)
            self._memo[memo_key] = filtered
            while len(self._memo) > FILTERED_CACHE_SIZE:
                self._memo.popitem(last=False)
        else:
            self._memo.move_to_end(memo_key)
        expires = filtered.valid_until - now if filtered.valid_until != float("inf") else None
        shown = replace(
            view,
            page=filtered.page,
            digest=filtered.digest,
            offers=filtered.offers,
            expires_in=_sooner(view.expires_in, expires),
        )
        return shown, filtered

    def _refuse(self, block: Block, project: str, upstream: str, file: str | None = None) -> None:
        """Count, report and raise a refusal (403, reason ``policy``)."""
        self._metrics.policy_blocks.labels(kind=block.kind.value).inc()
        error = UpstreamError(Reason.POLICY, f"refused by policy: {block.detail}", status=403)
        error.phrase = f"Forbidden by pipgate policy ({block.rule}): {block.detail}"
        self._reporter.report(error, upstream=upstream, project=project, file=file)
        raise error


def _filter(view: PageView, policy: Policy, now: float) -> _Filtered:
    """The page as the policy lets it be seen (pure but for the clock value)."""
    assert view.page is not None
    page = view.page
    offers = view.offers
    kept: list[DistFile] = []
    refused: dict[tuple[str, str], tuple[Block, str]] = {}
    valid_until = float("inf")
    for dist in page.offered_files():
        key = file_key(dist)
        upstream = offers.upstream_of(dist.filename) if offers is not None else NO_UPSTREAM
        block = policy.file_block(
            page.name,
            dist.filename,
            upstream=upstream,
            uploaded=_uploaded(dist, view.first_seen),
            has_sha256=dist.sha256 is not None,
            now=now,
        )
        if block is None:
            kept.append(dist)
            continue
        refused[(key, dist.filename)] = (block, upstream)
        if block.kind is Kind.COOLDOWN:
            if block.until is not None:
                valid_until = min(valid_until, block.until)
            # PEP 592: kept for exact pins, which then hear why (see the module doc).
            reason = f"held back by pipgate: {block.detail}"
            kept.append(dist if dist.yanked else replace(dist, yanked=reason))
    if refused:
        page = replace(page, files=tuple(kept), versions=_versions(page.versions, kept))
        marks = ",".join(f"{k[0]}:{b.kind.value}" for k, (b, _) in sorted(refused.items()))
        digest = hashlib.sha256(f"{view.digest}|{policy.fingerprint}|{marks}".encode())
        shown_digest = digest.hexdigest()
    else:
        shown_digest = view.digest
    if offers is None:
        offers = Offers(page, view.upstream or NO_UPSTREAM)
    elif refused:
        offers = offers.for_page(page)
    return _Filtered(
        page=page, offers=offers, digest=shown_digest, refused=refused, valid_until=valid_until
    )


def _uploaded(dist: DistFile, first_seen: dict[str, float] | None) -> float | None:
    """When the file appeared: PEP 700 ``upload-time``, else when pipgate first saw it."""
    if dist.upload_time:
        try:
            return datetime.fromisoformat(dist.upload_time).timestamp()
        except ValueError:
            pass
    return first_seen.get(dist.filename) if first_seen else None


def _versions(
    versions: tuple[str, ...] | None, files: Sequence[DistFile]
) -> tuple[str, ...] | None:
    """PEP 700 ``versions`` without the versions no file is left of."""
    if versions is None:
        return None
    left = {v for d in files if (v := file_version(d.filename)) is not None}
    kept = []
    for text in versions:
        try:
            if Version(text) in left:
                kept.append(text)
        except InvalidVersion:
            continue
    return tuple(kept)


def _sooner(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)
