"""A wheel's own METADATA file, read safely: PEP 658 metadata for upstreams that publish none.

Some indexes (Nexus, private indexes, old PyTorch pages) serve wheels without
``<wheel URL>.metadata``. pipgate can serve it from the cached wheel instead, by reading
the wheel's ``{distribution}-{version}.dist-info/METADATA`` member. The cache holds only
verified files, but verified only means "what upstream published": the zip itself can
still be hostile. So every step is bounded whatever the input (the central directory, the
number of entries, the member's declared and actual size, its compression ratio and
method) and bad input becomes a problem to log, never an exception.

The functions here block; callers run them in a worker thread.
"""

from __future__ import annotations

import os
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

#: Largest METADATA served: real ones take a few KB, a few hundred KB with a long README.
MAX_METADATA_BYTES = 16 * 1024 * 1024
#: Most central-directory entries in a wheel; the largest real wheels have tens of thousands.
MAX_ENTRIES = 100_000
#: Most bytes of central directory. zipfile reads all of it and builds an object per entry
#: before any entry can be counted, so this is what bounds the memory of opening a wheel.
#: An entry takes 46 bytes plus its name: 100_000 real entries fit in about 15 MB.
MAX_DIRECTORY_BYTES = 32 * 1024 * 1024
#: What else zipfile reads to open an archive: the end-of-central-directory record, an
#: archive comment of up to 64 KiB and the zip64 end records.
END_RECORDS_BYTES = 65 * 1024
#: Inflating more than this many times the compressed size is a zip bomb, not text…
MAX_COMPRESSION_RATIO = 200
#: …once the compressed member is big enough for the ratio to mean something.
RATIO_MIN_COMPRESSED_BYTES = 4096
#: Bytes inflated per read: memory stays under the limit plus one chunk.
READ_CHUNK_BYTES = 64 * 1024

# Zip APPNOTE 4.4.4: general purpose bit 0 marks an encrypted member.
_ENCRYPTED_FLAG = 0x1
# Deflate needs a 32 KiB window; bzip2 and lzma (whose dictionary size the member itself
# declares) are left out so decompression memory stays bounded. Wheels use deflate.
_COMPRESSIONS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})
# Wheel spec: the metadata is `{distribution}-{version}.dist-info/METADATA` at the top of
# the archive; a METADATA further down belongs to something else (a vendored copy).
_METADATA_PATH = re.compile(r"(?P<stem>[^/]+)\.dist-info/METADATA")
# What zipfile, zlib and the file system raise for a bad archive. RuntimeError covers
# NotImplementedError (unsupported zip versions and features); UnicodeDecodeError a member
# name flagged UTF-8 that is not.
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    struct.error,
    EOFError,
    OSError,
    UnicodeDecodeError,
    RuntimeError,
)


@dataclass(frozen=True)
class Extracted:
    """The METADATA bytes exactly as stored in the wheel, or None and why not."""

    data: bytes | None
    #: Why there is no data, one short sentence for a log line (None on success).
    problem: str | None = None


class _Refused(Exception):
    """A check failed; its message becomes the problem."""


def extract_metadata(
    path: Path, filename: str, *, max_bytes: int = MAX_METADATA_BYTES
) -> Extracted:
    """Read the METADATA of the wheel at `path`, published as `filename`, within the limits.

    Never raises for bad input: any refusal or read error comes back as a problem.
    """
    try:
        project, version, _build, _tags = parse_wheel_filename(filename)
    except InvalidWheelFilename:
        return Extracted(None, "not a valid wheel filename")
    try:
        with path.open("rb") as file:
            budgeted = _BudgetedFile(file, MAX_DIRECTORY_BYTES + END_RECORDS_BYTES)
            with zipfile.ZipFile(budgeted) as archive:
                budgeted.budget = None  # opened: the members are bounded one by one below
                entries = archive.infolist()
                if len(entries) > MAX_ENTRIES:
                    raise _Refused(f"too many zip entries ({len(entries)} > {MAX_ENTRIES})")
                member = _metadata_member(entries, project, version)
                _check_member(member, max_bytes)
                with archive.open(member) as stream:
                    data = _read_capped(stream, max_bytes)
    except _Refused as refusal:
        return Extracted(None, str(refusal))
    except _ZIP_ERRORS as exc:
        return Extracted(None, f"unreadable wheel: {str(exc) or type(exc).__name__}")
    if len(data) != member.file_size:
        # The CRC matched a shorter stream than the header declares: tools reading this
        # wheel could disagree on its bytes, so none are published.
        return Extracted(None, "METADATA is shorter than its zip header says")
    return Extracted(data)


def _metadata_member(
    entries: list[zipfile.ZipInfo], project: str, version: Version
) -> zipfile.ZipInfo:
    """The top-level `*.dist-info/METADATA` entry of this wheel.

    The one named for the wheel's project and version wins; failing that, a lone one
    will do. Anything else is refused: pip, too, refuses several .dist-info directories.
    """
    found = [(m["stem"], e) for e in entries if (m := _METADATA_PATH.fullmatch(e.filename))]
    named = [entry for stem, entry in found if _names_wheel(stem, project, version)]
    if len(named) == 1:
        return named[0]
    if not named and len(found) == 1:
        return found[0][1]
    if not found:
        raise _Refused("no top-level .dist-info/METADATA")
    raise _Refused(f"ambiguous dist-info: {len(found)} METADATA, {len(named)} named for the wheel")


def _names_wheel(stem: str, project: str, version: Version) -> bool:
    """Whether a dist-info stem, `{distribution}-{version}`, is this project and version.

    Real wheels vary in case and escaping (`Foo_Bar-1.0.0`, `foo.bar-1.0`), so names are
    compared PEP 503-normalised and versions as PEP 440 versions (1.0 == 1.0.0; a local
    label like +cpu must be the same on both sides).
    """
    name, _, raw_version = stem.rpartition("-")
    if canonicalize_name(name) != project:
        return False
    try:
        return Version(raw_version) == version
    except InvalidVersion:
        return False


def _check_member(member: zipfile.ZipInfo, max_bytes: int) -> None:
    """Refuse, before reading, a member whose header alone says it is unsafe to inflate."""
    if member.flag_bits & _ENCRYPTED_FLAG:
        raise _Refused("METADATA is encrypted")
    if member.compress_type not in _COMPRESSIONS:
        raise _Refused(f"METADATA uses unsupported compression method {member.compress_type}")
    if member.file_size > max_bytes:
        raise _Refused(f"METADATA declares {member.file_size} bytes, over {max_bytes}")
    if (
        member.compress_size > RATIO_MIN_COMPRESSED_BYTES
        and member.file_size > MAX_COMPRESSION_RATIO * member.compress_size
    ):
        raise _Refused(f"METADATA compression ratio is over {MAX_COMPRESSION_RATIO}:1")


def _read_capped(stream: IO[bytes], limit: int) -> bytes:
    """All of `stream`, refused as soon as it passes `limit` bytes, whatever its header said.

    Reading on to the end is what makes zipfile check the member's CRC. Memory stays
    under `limit` plus a chunk while reading (joining the chunks copies them once).
    """
    chunks: list[bytes] = []
    total = 0
    while chunk := stream.read(READ_CHUNK_BYTES):
        total += len(chunk)
        if total > limit:
            raise _Refused(f"METADATA inflates past {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class _BudgetedFile:
    """A binary file that refuses to read more than `budget` bytes in all, until unset.

    zipfile reads the central directory, and builds a ZipInfo per entry, while it opens
    an archive; this bounds that work without reimplementing zipfile's parsing.
    """

    def __init__(self, file: BinaryIO, budget: int) -> None:
        self._file = file
        self._size = file.seek(0, os.SEEK_END)
        file.seek(0)
        self.budget: int | None = budget

    def read(self, n: int = -1) -> bytes:
        if self.budget is None:
            return self._file.read(n)
        # Ask for no more than the file holds: a read allocates what it is asked for.
        remaining = max(self._size - self._file.tell(), 0)
        wanted = remaining if n < 0 else min(n, remaining)
        if wanted > self.budget:
            raise _Refused(f"central directory is over {MAX_DIRECTORY_BYTES} bytes")
        self.budget -= wanted
        return self._file.read(wanted)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def seekable(self) -> bool:
        return True
