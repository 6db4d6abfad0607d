"""Project lists on disk: files of ``normalised<TAB>display name`` lines, sorted and
without duplicates, so several upstreams' lists merge in one streaming pass.

PyPI's list has ~930k names: sorting happens in bounded runs written to temporary
files and merged with :func:`heapq.merge`, so memory stays flat whatever the size.
All functions block (disk I/O): callers run them in a worker thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

from pipgate.simple.model import ProjectEntry
from pipgate.simple.names import normalize

#: Names sorted in memory at a time (about 20 MB of Python strings).
RUN_LENGTH = 200_000


def write_sorted(entries: Iterable[ProjectEntry], out: Path) -> tuple[str, int]:
    """Write ``entries`` to ``out`` sorted by normalised name, first display name of a
    normalised name kept; returns ``(sha256 of the file, number of names)``."""
    runs: list[Path] = []
    try:
        batch: list[str] = []
        for entry in entries:
            batch.append(f"{normalize(entry.name)}\t{entry.name}\n")
            if len(batch) >= RUN_LENGTH:
                runs.append(_write_run(batch, out.parent))
                batch = []
        if batch or not runs:
            runs.append(_write_run(batch, out.parent))
        return merge(runs, out)
    finally:
        for run in runs:
            run.unlink(missing_ok=True)


def merge(sources: Iterable[Path], out: Path) -> tuple[str, int]:
    """Merge sorted names files into ``out`` (first source wins on a normalised name);
    returns ``(sha256, count)``. ``out`` appears complete or not at all."""
    part = out.with_name(f"{out.name}.{uuid.uuid4().hex}.part")
    digest = hashlib.sha256()
    count = 0
    with contextlib.ExitStack() as stack:
        streams = [_keyed(stack.enter_context(_open(p)), n) for n, p in enumerate(sources)]
        try:
            with open(part, "w", encoding="utf-8") as target:
                previous = None
                for key, _n, _i, line in heapq.merge(*streams):
                    if key == previous:
                        continue
                    previous = key
                    target.write(line)
                    digest.update(line.encode())
                    count += 1
            os.replace(part, out)
        finally:
            part.unlink(missing_ok=True)
    return digest.hexdigest(), count


#: Names files of an earlier digest are kept this long (another worker may still be
#: rendering or merging one).
OLD_FILE_GRACE = 3600.0


def remove_old(directory: Path, keep: Path) -> None:
    """Remove the names files in ``directory`` other than ``keep`` once they are old."""
    now = time.time()
    for old in directory.glob("names-*"):
        if old == keep or old.name.endswith(".part"):
            continue
        with contextlib.suppress(OSError):
            if now - old.stat().st_mtime > OLD_FILE_GRACE:
                old.unlink()


def read(path: Path) -> Iterator[ProjectEntry]:
    """The display names of a names file, in order."""
    with open(path, encoding="utf-8") as names:
        for line in names:
            yield ProjectEntry(name=line.rstrip("\n").partition("\t")[2])


def _keyed(lines: TextIO, number: int) -> Iterator[tuple[str, int, int, str]]:
    """Lines keyed by (normalised name, source number, line number): the first wins."""
    for index, line in enumerate(lines):
        yield line.partition("\t")[0], number, index, line


def _write_run(lines: list[str], directory: Path) -> Path:
    lines.sort(key=lambda line: line.partition("\t")[0])
    path = directory / f"run-{uuid.uuid4().hex}.tmp"
    with open(path, "w", encoding="utf-8") as run:
        run.writelines(lines)
    return path


def _open(path: Path) -> TextIO:
    return open(path, encoding="utf-8")
