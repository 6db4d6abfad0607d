"""PEP 658 metadata derived from cached wheels.

A wheel's ``*.dist-info/METADATA`` is exactly what PEP 658 serves at
``<wheel URL>.metadata``, so for a cached wheel pipgate can produce it without asking
upstream: for an index that publishes none (Nexus, private indexes, older PyTorch
pages), and offline. Extracted bytes are stored as a blob like any other file, under
the alias ``meta:<file key>``, after a check against the hash upstream published for
its own metadata file, when it published one. Extraction is bounded
(:mod:`pipgate.files.wheel_metadata`): a wheel whose METADATA is missing, oversized or
hidden in a zip bomb simply gets none, and a log line.
"""

from __future__ import annotations

import hashlib
import logging
import time

from pipgate.files.wheel_metadata import extract_metadata
from pipgate.simple.model import DistFile
from pipgate.store.blobs import BlobStore, IntegrityError, is_sha256
from pipgate.store.catalog import BlobRecord, Catalog

log = logging.getLogger("pipgate.files")

METADATA_SUFFIX = ".metadata"


def metadata_key(key: str) -> str:
    """The alias under which the metadata of the file with URL key ``key`` is stored."""
    return f"meta:{key}"


class DerivedMetadata:
    """Finds, or makes from the cached wheel, the metadata blob of a wheel."""

    def __init__(self, blobs: BlobStore, catalog: Catalog) -> None:
        self._blobs = blobs
        self._catalog = catalog
        #: Bumped whenever this worker stores metadata (pages advertising it change).
        self.generation = 0

    def cached(self, key: str) -> str | None:
        """The sha256 of the stored metadata of file ``key``, if its blob is there
        (blocking)."""
        sha = self._catalog.sha256_for(metadata_key(key))
        return sha if sha is not None and self._blobs.exists(sha) else None

    def find(self, project: str, dist: DistFile, key: str) -> str | None:
        """The sha256 of the stored metadata of file ``key``, derived from the cached
        wheel when it is not stored yet (blocking: one hop for both look-ups)."""
        return self.cached(key) or self.derive(project, dist, key)

    def derive(self, project: str, dist: DistFile, key: str) -> str | None:
        """Extract, check and store the metadata of a cached wheel; its sha256, or
        ``None`` when the wheel is not cached or has no usable METADATA (blocking)."""
        if not dist.filename.endswith(".whl"):
            return None
        known = self.cached(key)
        if known is not None:
            # Fetched from upstream already (clients ask for metadata before the wheel).
            return known
        sha = dist.sha256 if dist.sha256 and is_sha256(dist.sha256) else None
        if sha is None:
            sha = self._catalog.sha256_for(key)
        if sha is None or not self._blobs.exists(sha):
            return None
        extracted = extract_metadata(self._blobs.path(sha), dist.filename)
        if extracted.data is None:
            log.warning("no metadata from %s: %s", dist.filename, extracted.problem)
            return None
        published = dist.metadata_sha256
        actual = hashlib.sha256(extracted.data).hexdigest()
        if published and actual != published:
            # Upstream's metadata file is not the wheel's: serve neither as the other.
            log.warning(
                "metadata of %s in the wheel differs from the one upstream publishes", dist.filename
            )
            return None
        try:
            committed = self._blobs.put_bytes(extracted.data, {"sha256": actual})
        except (IntegrityError, OSError) as exc:
            log.warning("could not store metadata of %s: %s", dist.filename, exc)
            return None
        self._catalog.record_blob_now(
            committed.sha256,
            BlobRecord(
                project=project,
                filename=dist.filename + METADATA_SUFFIX,
                size=committed.size,
                verified=True,
                stored_at=time.time(),
            ),
        )
        self._catalog.put_alias_now(metadata_key(key), committed.sha256)
        self.generation += 1
        return committed.sha256
