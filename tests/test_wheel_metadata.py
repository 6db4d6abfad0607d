"""A wheel's METADATA, extracted for PEP 658: byte for byte, or refused with a reason.

Hostile wheels are built in each test with zipfile (and, where zipfile will not write
the lie, by patching header bytes) so the cause sits next to the refusal it causes.
"""

from __future__ import annotations

import hashlib
import io
import random
import struct
import tracemalloc
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from pipgate.files import wheel_metadata
from pipgate.files.wheel_metadata import (
    READ_CHUNK_BYTES,
    Extracted,
    _read_capped,
    _Refused,
    extract_metadata,
)
from tests.support.packages import build_wheel, core_metadata

MiB = 1024 * 1024
FOO = "foo_bar-1.0-py3-none-any.whl"
TORCH = "torch-2.0.0+cpu-cp311-cp311-linux_x86_64.whl"
WHEEL_FILE = b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"

#: Field offsets in a local file header and a central directory header (APPNOTE 4.3.7,
#: 4.3.12): flags, uncompressed size, name length, name.
HEADER_LAYOUTS = {
    b"PK\x03\x04": {"flags": 6, "file_size": 22, "name_length": 26, "name": 30},
    b"PK\x01\x02": {"flags": 8, "file_size": 24, "name_length": 28, "name": 46},
}


def make_zip(members: dict[str, bytes], *, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip of `members` (archive path -> bytes), all compressed with `compression`."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def dist_infos(*stems: str, metadata: bytes = b"Metadata-Version: 2.1\n") -> dict[str, bytes]:
    """METADATA and WHEEL members for each `{distribution}-{version}` stem."""
    members: dict[str, bytes] = {}
    for stem in stems:
        members[f"{stem}.dist-info/METADATA"] = metadata + f"Stem: {stem}\n".encode()
        members[f"{stem}.dist-info/WHEEL"] = WHEEL_FILE
    return members


def on_disk(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "cached.whl"
    path.write_bytes(data)
    return path


def patch_headers(
    wheel: bytes,
    member: str,
    *,
    set_flags: int = 0,
    file_size: int | None = None,
    name: bytes | None = None,
) -> bytes:
    """`wheel` with `member`'s local and central headers rewritten, as no zip writer would."""
    out = bytearray(wheel)
    wanted = member.encode()
    patched = 0
    for signature, layout in HEADER_LAYOUTS.items():
        at = wheel.find(signature)
        while at >= 0:
            (length,) = struct.unpack_from("<H", wheel, at + layout["name_length"])
            start = at + layout["name"]
            if wheel[start : start + length] == wanted:
                (flags,) = struct.unpack_from("<H", wheel, at + layout["flags"])
                struct.pack_into("<H", out, at + layout["flags"], flags | set_flags)
                if file_size is not None:
                    struct.pack_into("<I", out, at + layout["file_size"], file_size)
                if name is not None:
                    assert len(name) == length
                    out[start : start + length] = name
                patched += 1
            at = wheel.find(signature, at + 1)
    assert patched == 2, "expected one local and one central header"
    return bytes(out)


def member_data_offset(wheel: bytes, member: str) -> int:
    """Where `member`'s (compressed) data starts, just after its local header."""
    with zipfile.ZipFile(io.BytesIO(wheel)) as archive:
        at = archive.getinfo(member).header_offset
    name_length, extra_length = struct.unpack_from("<HH", wheel, at + 26)
    return at + 30 + name_length + extra_length


def peak_memory(call: Callable[[], Extracted]) -> tuple[Extracted, int]:
    """What `call` returns and the most Python memory it held at once."""
    tracemalloc.start()
    try:
        result = call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def refused(result: Extracted, *words: str) -> bool:
    """No data, and a problem that mentions each of `words`."""
    return (
        result.data is None
        and result.problem is not None
        and all(word in result.problem for word in words)
    )


# -- the right METADATA, byte for byte ----------------------------------------------------


def test_metadata_is_byte_identical_with_the_sha256_a_pep658_client_expects(
    tmp_path: Path,
) -> None:
    wheel = build_wheel("Zope.Interface", "5.0", requires=["setuptools"], pad_to=64 * 1024)
    result = extract_metadata(on_disk(tmp_path, wheel.data), wheel.filename)
    assert result == Extracted(wheel.metadata)
    assert result.data is not None
    assert hashlib.sha256(result.data).hexdigest() == wheel.metadata_sha256


@pytest.mark.parametrize(
    "stem", ["Foo_Bar-1.0", "foo_bar-1.0.0", "foo.bar-1.0", "FOO-BAR-1.0", "foo__bar-1.0.0.0"]
)
def test_dist_info_in_another_case_or_escaping_is_recognised_among_others(
    tmp_path: Path, stem: str
) -> None:
    members = dist_infos("other-1.0", stem, "foo_bar-2.0")
    path = on_disk(tmp_path, make_zip(members))
    result = extract_metadata(path, FOO)
    assert result == Extracted(members[f"{stem}.dist-info/METADATA"])


def test_local_version_picks_the_dist_info_with_the_same_local_label(tmp_path: Path) -> None:
    members = dist_infos("torch-2.0.0+cu118", "torch-2.0.0+cpu", "torch-2.0.0")
    result = extract_metadata(on_disk(tmp_path, make_zip(members)), TORCH)
    assert result == Extracted(members["torch-2.0.0+cpu.dist-info/METADATA"])


def test_lone_dist_info_is_used_even_if_named_for_something_else(tmp_path: Path) -> None:
    members = dist_infos("renamed-9.9")
    result = extract_metadata(on_disk(tmp_path, make_zip(members)), FOO)
    assert result == Extracted(members["renamed-9.9.dist-info/METADATA"])


def test_metadata_exactly_at_the_limit_is_accepted(tmp_path: Path) -> None:
    metadata = core_metadata("foo_bar", "1.0").ljust(4096, b"x")
    path = on_disk(tmp_path, make_zip({"foo_bar-1.0.dist-info/METADATA": metadata}))
    assert extract_metadata(path, FOO, max_bytes=len(metadata)) == Extracted(metadata)


# -- which METADATA: missing, nested, ambiguous ------------------------------------------


def test_wheel_without_metadata_is_refused(tmp_path: Path) -> None:
    members = {"foo_bar/__init__.py": b"", "foo_bar-1.0.dist-info/WHEEL": WHEEL_FILE}
    result = extract_metadata(on_disk(tmp_path, make_zip(members)), FOO)
    assert refused(result, "no top-level .dist-info/METADATA")


@pytest.mark.parametrize(
    "nested", ["vendor/foo_bar-1.0.dist-info/METADATA", "foo_bar-1.0.dist-info/sub/METADATA"]
)
def test_metadata_in_a_nested_directory_does_not_count(tmp_path: Path, nested: str) -> None:
    alone = extract_metadata(on_disk(tmp_path, make_zip({nested: b"Name: foo_bar\n"})), FOO)
    assert refused(alone, "no top-level .dist-info/METADATA")
    # Next to a lone top-level one (named for another project), the nested copy still loses.
    members = {nested: b"Name: foo_bar\n", **dist_infos("renamed-9.9")}
    beside = extract_metadata(on_disk(tmp_path, make_zip(members)), FOO)
    assert beside == Extracted(members["renamed-9.9.dist-info/METADATA"])


def test_several_dist_info_none_named_for_the_wheel_are_refused(tmp_path: Path) -> None:
    members = dist_infos("other-1.0", "foo_bar-2.0")
    result = extract_metadata(on_disk(tmp_path, make_zip(members)), FOO)
    assert refused(result, "ambiguous dist-info")


def test_two_dist_info_named_for_the_wheel_are_refused(tmp_path: Path) -> None:
    members = dist_infos("foo_bar-1.0", "Foo.Bar-1.0.0")
    result = extract_metadata(on_disk(tmp_path, make_zip(members)), FOO)
    assert refused(result, "ambiguous dist-info")


def test_duplicate_metadata_entries_are_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        archive.writestr("foo_bar-1.0.dist-info/METADATA", b"Name: foo_bar\n")
        archive.writestr("foo_bar-1.0.dist-info/METADATA", b"Name: evil\n")
    result = extract_metadata(on_disk(tmp_path, buffer.getvalue()), FOO)
    assert refused(result, "ambiguous dist-info")


def test_invalid_wheel_filename_is_refused(tmp_path: Path) -> None:
    wheel = build_wheel("foo_bar", "1.0")
    result = extract_metadata(on_disk(tmp_path, wheel.data), "foo_bar-1.0.tar.gz")
    assert refused(result, "wheel filename")


# -- broken files ---------------------------------------------------------------------------


def test_missing_file_is_a_problem_not_an_exception(tmp_path: Path) -> None:
    assert refused(extract_metadata(tmp_path / "gone.whl", FOO), "unreadable wheel")


@pytest.mark.parametrize("data", [b"", b"PK", b"<html>not found</html>" * 10])
def test_file_that_is_not_a_zip_is_refused(tmp_path: Path, data: bytes) -> None:
    assert refused(extract_metadata(on_disk(tmp_path, data), FOO), "unreadable wheel")


def test_truncated_zip_is_refused(tmp_path: Path) -> None:
    wheel = build_wheel("foo_bar", "1.0")
    path = on_disk(tmp_path, wheel.data[: len(wheel.data) // 2])
    assert refused(extract_metadata(path, wheel.filename), "unreadable wheel")


def test_deflated_metadata_with_flipped_bytes_is_refused(tmp_path: Path) -> None:
    wheel = build_wheel("foo_bar", "1.0")
    data = bytearray(wheel.data)
    start = member_data_offset(wheel.data, "foo_bar-1.0.dist-info/METADATA")
    for at in range(start + 2, start + 6):
        data[at] ^= 0xFF
    result = extract_metadata(on_disk(tmp_path, bytes(data)), wheel.filename)
    assert refused(result, "unreadable wheel")


def test_stored_metadata_with_a_bad_crc_is_refused_once_read_to_the_end(tmp_path: Path) -> None:
    member = "foo_bar-1.0.dist-info/METADATA"
    metadata = core_metadata("foo_bar", "1.0")
    wheel = bytearray(make_zip({member: metadata}, compression=zipfile.ZIP_STORED))
    wheel[member_data_offset(bytes(wheel), member) + len(metadata) - 2] ^= 0x01  # last line
    result = extract_metadata(on_disk(tmp_path, bytes(wheel)), FOO)
    assert refused(result, "CRC")


def test_metadata_shorter_than_its_header_says_is_refused(tmp_path: Path) -> None:
    # Stored, so zipfile stops at the compressed size: the CRC matches, the length does not.
    member = "foo_bar-1.0.dist-info/METADATA"
    metadata = core_metadata("foo_bar", "1.0")
    wheel = make_zip({member: metadata}, compression=zipfile.ZIP_STORED)
    wheel = patch_headers(wheel, member, file_size=len(metadata) + 100)
    result = extract_metadata(on_disk(tmp_path, wheel), FOO)
    assert refused(result, "shorter than its zip header")


def test_member_name_that_is_not_the_utf8_it_claims_is_refused(tmp_path: Path) -> None:
    member = "foo_bar/caf\u00e9.py"  # non-ASCII: zipfile sets the UTF-8 flag
    wheel = make_zip({member: b"", **dist_infos("foo_bar-1.0")})
    wheel = patch_headers(wheel, member, name=b"foo_bar/caf\xff\xfe.py")
    assert refused(extract_metadata(on_disk(tmp_path, wheel), FOO), "unreadable wheel")


# -- limits ---------------------------------------------------------------------------------


def test_metadata_declared_over_the_limit_is_refused(tmp_path: Path) -> None:
    metadata = random.Random(1).randbytes(2048)
    path = on_disk(tmp_path, make_zip({"foo_bar-1.0.dist-info/METADATA": metadata}))
    result = extract_metadata(path, FOO, max_bytes=2047)
    assert refused(result, "declares 2048 bytes, over 2047")


def test_absurd_compression_ratio_is_refused_before_reading(tmp_path: Path) -> None:
    # 8 MiB of zeros deflate to about 8 KiB: under the size limit, but 1000:1.
    path = on_disk(tmp_path, make_zip({"foo_bar-1.0.dist-info/METADATA": bytes(8 * MiB)}))
    result, peak = peak_memory(lambda: extract_metadata(path, FOO))
    assert refused(result, "compression ratio")
    assert peak < MiB


BOMB_MEMBER = "bomb-1.0.dist-info/METADATA"
BOMB_BYTES = 200 * MiB


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """A wheel whose METADATA is 200 MiB of zeros, deflated to about 200 KB."""
    buffer = io.BytesIO()
    zeros = bytes(MiB)
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open(BOMB_MEMBER, "w") as member:
            for _ in range(BOMB_BYTES // MiB):
                member.write(zeros)
        archive.writestr("bomb-1.0.dist-info/WHEEL", WHEEL_FILE)
    return buffer.getvalue()


def test_zip_bomb_is_refused_from_its_header_with_bounded_memory(
    tmp_path: Path, bomb: bytes
) -> None:
    path = on_disk(tmp_path, bomb)
    result, peak = peak_memory(lambda: extract_metadata(path, "bomb-1.0-py3-none-any.whl"))
    assert refused(result, f"declares {BOMB_BYTES} bytes")
    assert peak < MiB


def test_zip_bomb_with_a_lying_header_is_refused_with_bounded_memory(
    tmp_path: Path, bomb: bytes
) -> None:
    # The headers claim exactly the limit, so no check before reading can tell. zipfile
    # stops inflating at the declared size and fails the CRC; the cap (next test) is what
    # holds if it did not.
    path = on_disk(tmp_path, patch_headers(bomb, BOMB_MEMBER, file_size=MiB))
    result, peak = peak_memory(
        lambda: extract_metadata(path, "bomb-1.0-py3-none-any.whl", max_bytes=MiB)
    )
    assert result.data is None and result.problem
    assert peak < 3 * MiB


class EndlessZeros(io.RawIOBase):
    """A stream that never ends: what a member inflates to when nothing stops it."""

    def readable(self) -> bool:
        return True

    ZEROS = bytes(READ_CHUNK_BYTES)

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        size = min(len(buffer), len(self.ZEROS))
        buffer[:size] = self.ZEROS[:size]
        return size


def test_capped_read_stops_an_endless_stream_at_the_limit_with_bounded_memory() -> None:
    # zipfile itself stops at the declared size today; the cap does not rely on it.
    tracemalloc.start()
    try:
        with pytest.raises(_Refused, match=f"inflates past {MiB} bytes"):
            _read_capped(EndlessZeros(), MiB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The megabyte kept, the chunk that crossed the limit, and the stream's own buffers.
    assert peak < MiB + 4 * READ_CHUNK_BYTES


def test_more_entries_than_the_limit_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    members = {f"foo_bar/m{i}.py": b"" for i in range(48)} | dist_infos("foo_bar-1.0")
    path = on_disk(tmp_path, make_zip(members))
    monkeypatch.setattr(wheel_metadata, "MAX_ENTRIES", 50)
    assert extract_metadata(path, FOO).data is not None
    monkeypatch.setattr(wheel_metadata, "MAX_ENTRIES", 49)
    assert refused(extract_metadata(path, FOO), "too many zip entries (50 > 49)")


def test_central_directory_over_its_budget_is_refused_while_opening(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    members = {f"foo_bar/{'long_name' * 20}{i}.py": b"" for i in range(1000)}
    path = on_disk(tmp_path, make_zip(members | dist_infos("foo_bar-1.0")))
    monkeypatch.setattr(wheel_metadata, "MAX_DIRECTORY_BYTES", 64 * 1024)
    assert refused(extract_metadata(path, FOO), "central directory is over 65536 bytes")


def test_encrypted_metadata_is_refused(tmp_path: Path) -> None:
    wheel = build_wheel("foo_bar", "1.0")
    data = patch_headers(wheel.data, "foo_bar-1.0.dist-info/METADATA", set_flags=0x1)
    assert refused(
        extract_metadata(on_disk(tmp_path, data), wheel.filename), "METADATA is encrypted"
    )


@pytest.mark.parametrize("compression", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_metadata_compressed_other_than_deflate_is_refused(
    tmp_path: Path, compression: int
) -> None:
    members = dist_infos("foo_bar-1.0")
    path = on_disk(tmp_path, make_zip(members, compression=compression))
    assert refused(extract_metadata(path, FOO), "unsupported compression")
