"""Start-up reconciliation of the blobs on disk with the catalog.

After any crash (SIGKILL mid-download, mid-commit, mid-eviction) the invariant "a blob
path that exists is complete and verified" already holds thanks to the commit
protocol; what can drift is the catalog. This pass removes temp debris, drops records
whose blob is gone, adopts blobs that were committed but not recorded (after checking
that their content still hashes to their name) and resets the size counters.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from pipgate.store.blobs import BlobStore
from pipgate.store.catalog import BlobRecord, Catalog

log = logging.getLogger("pipgate.reconcile")


@dataclass(frozen=True)
class ReconcileReport:
    """What start-up reconciliation changed."""

    temp_removed: int
    records_dropped: int
    blobs_adopted: int
    blobs_removed: int
    files: int
    bytes: int


def reconcile(cache_dir: Path) -> ReconcileReport:
    """Bring ``cache_dir``'s catalog in line with its blobs (blocking)."""
    blobs = BlobStore(cache_dir)
    blobs.ensure_dirs()
    temp_removed = blobs.clean_temp()
    catalog = Catalog(cache_dir)
    try:
        records = {sha: record for sha, record, _ in catalog.blob_entries()}
        on_disk = {sha: path for sha, path in blobs.iter_blobs()}
        dropped = adopted = removed = 0
        for sha in records.keys() - on_disk.keys():
            catalog.drop_blob_record(sha)
            dropped += 1
        for sha in on_disk.keys() - records.keys():
            path = on_disk.pop(sha)
            if _sha256_of(path) == sha:
                stat = path.stat()
                catalog.put_blob_record(
                    sha,
                    BlobRecord(
                        project="",
                        filename="",
                        size=stat.st_size,
                        verified=True,
                        stored_at=stat.st_mtime,
                    ),
                )
                on_disk[sha] = path
                adopted += 1
            else:
                path.unlink(missing_ok=True)
                removed += 1
        total = sum(path.stat().st_size for path in on_disk.values())
        catalog.set_totals(total, len(on_disk))
        legacy = catalog.drop_legacy_keys()
        if legacy:
            log.info("dropped %d page records of the single-upstream layout", legacy)
    finally:
        catalog.close()
    report = ReconcileReport(temp_removed, dropped, adopted, removed, len(on_disk), total)
    if temp_removed or dropped or adopted or removed:
        log.info(
            "cache reconciled: %d temp files removed, %d stale records dropped, "
            "%d blobs adopted, %d bad blobs removed",
            temp_removed,
            dropped,
            adopted,
            removed,
        )
    return report


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
