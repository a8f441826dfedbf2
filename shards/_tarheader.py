"""Decoding one 512-byte tar header block (ustar/GNU/v7) and PAX extended records."""

from __future__ import annotations

import struct
import zlib

from shards.format import BLOCK

__all__ = [
    "ZERO_BLOCK",
    "ShardFormatError",
    "check_header",
    "data_size",
    "header_name",
    "is_regular",
    "member_name",
    "number",
    "pax_records",
]

ZERO_BLOCK = bytes(BLOCK)
_SIGNED = struct.Struct("148b8x356b")
_REGULAR = frozenset(b"07\0")
_NO_DATA = frozenset(b"123456")
_AREGTYPE = 0


def _is_old_directory(block: bytes) -> bool:
    """A V7 directory: type byte NUL and a header name ending in a slash (tarfile looks at the
    name field itself, before any PAX or GNU long name replaces it)."""
    return block[156] == _AREGTYPE and block[:100].split(b"\0", 1)[0].endswith(b"/")


def is_regular(block: bytes) -> bool:
    """Whether the member of this (checked) header is a regular file, exactly as
    ``tarfile.TarInfo.isreg`` (and so webdataset) decides: types ``0``, NUL and ``7``, except a
    V7 directory. Links, directories, devices, FIFOs and unknown types are not."""
    return block[156] in _REGULAR and not _is_old_directory(block)


def data_size(block: bytes, size: int) -> int:
    """How many payload bytes follow this header (before padding): ``size`` as the header or a
    PAX record gives it, but 0 for links, directories, devices and FIFOs whatever the size
    field says, as the tar standard has it and ``tarfile`` reads it. Without this, a link
    header carrying a size would hide the members after it from our scan only."""
    if block[156] in _NO_DATA or _is_old_directory(block):
        return 0
    return size


class ShardFormatError(ValueError):
    """A tar archive that is truncated or corrupt; the message names the URL and byte offset."""


def number(field: bytes, what: str, offset: int, url: str) -> int:
    """A numeric header field: NUL/space-terminated octal, or GNU base-256 (high bit set)."""
    if field and field[0] & 0x80:
        if field[0] == 0xFF:
            raise ShardFormatError(f"{url}: negative {what} in the tar header at byte {offset}")
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip(b" ")
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise ShardFormatError(
            f"{url}: expected an octal {what} in the tar header at byte {offset}, got {text!r}"
        ) from None


def _byte_sum(data: bytes | memoryview) -> int:
    """Sum of the bytes of ``data`` (at most 256 of them, so that Adler-32's low half, which is
    1 + the byte sum modulo 65521, holds it exactly); runs in C."""
    return (zlib.adler32(data) & 0xFFFF) - 1


def check_header(block: bytes, offset: int, url: str) -> None:
    """Raise ``ShardFormatError`` unless the stored checksum matches (unsigned or signed sum)."""
    stored = number(block[148:156], "checksum", offset, url)
    view = memoryview(block)
    unsigned = _byte_sum(view[:256]) + _byte_sum(view[256:]) - sum(view[148:156]) + 256
    if stored != unsigned and stored != sum(_SIGNED.unpack(block)) + 256:
        raise ShardFormatError(
            f"{url}: bad tar header checksum at byte {offset} "
            f"(expected {unsigned}, got {stored}): not a tar file, or corrupt"
        )


def member_name(block: bytes) -> str:
    """The name in a (checked) header, with the POSIX ustar ``prefix`` when there is one."""
    name = block[:100].split(b"\0", 1)[0]
    if block[257:263] == b"ustar\x00":
        prefix = block[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", "replace")


def header_name(block: bytes) -> str | None:
    """The member name in one 512-byte tar header, or ``None`` when ``block`` is not a valid
    header (wrong length, all zeros, bad checksum). Extended (PAX/GNU) names are not seen."""
    if len(block) != BLOCK or block == ZERO_BLOCK:
        return None
    try:
        check_header(block, 0, "")
    except ShardFormatError:
        return None
    return member_name(block)


def pax_records(payload: bytes, offset: int, url: str) -> dict[str, str]:
    """The ``key=value`` records of a PAX extended header payload."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(payload) and payload[pos] != 0:
        space = payload.find(b" ", pos)
        try:
            length = int(payload[pos:space]) if space > pos else 0
        except ValueError:
            length = 0
        if length <= 0 or pos + length > len(payload) or payload[pos + length - 1] != 0x0A:
            raise ShardFormatError(f"{url}: malformed PAX record in the header at byte {offset}")
        key, _, value = payload[space + 1 : pos + length - 1].partition(b"=")
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        pos += length
    return records
