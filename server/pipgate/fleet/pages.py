"""Project pages shared by the replicas: one upstream fetch per page for the fleet.

After a replica fetched a page from upstream it writes the record (status, validators,
fetch time) and the parsed model to the coordinator; another replica whose own copy is
missing or expired takes that one when it is fresher than its TTL, instead of asking
upstream, so every replica answers the same page. Best effort: with coordination down,
each replica fetches its own pages as on one host.
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import asdict

from pipgate.fleet.coordinator import Coordinator
from pipgate.store.catalog import PageRecord

log = logging.getLogger("pipgate.fleet")

#: Models larger than this stay per replica (a few giant projects; Redis values are
#: read whole).
MAX_SHARED_MODEL = 4 << 20


class SharedPages:
    """Page records and models in the coordinator's shared entries."""

    def __init__(self, coordinator: Coordinator, lifetime: float) -> None:
        self._coordinator = coordinator
        #: How long an entry lives (``cache.max_stale``: older is of no use to anyone).
        self._lifetime = max(1.0, lifetime)

    @staticmethod
    def _key(source: str, project: str) -> str:
        return f"page:{source}:{project}"

    async def get(self, source: str, project: str) -> tuple[PageRecord, bytes | None] | None:
        """The shared record and model of ``project`` in ``source``, if any."""
        raw = await self._coordinator.get(self._key(source, project))
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            record = PageRecord(**data["record"])
            model = base64.b64decode(data["model"]) if data.get("model") else None
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("ignoring an unreadable shared page of %s: %s", project, exc)
            return None
        if record.status == 200 and model is None:
            return None
        return record, model

    async def put(self, source: str, project: str, record: PageRecord, model: bytes | None) -> None:
        """Share what this replica just fetched (``model``: ``None`` for a 404)."""
        if model is not None and len(model) > MAX_SHARED_MODEL:
            return
        entry = {
            "record": asdict(record),
            "model": base64.b64encode(model).decode() if model is not None else None,
        }
        await self._coordinator.put(
            self._key(source, project), json.dumps(entry).encode(), self._lifetime
        )
