"""Fast tar header scanning: members, samples and an in-memory index for shards without sidecar.

The scanner reads 512-byte headers and jumps over payloads; it never uses the ``tarfile``
module. It understands ustar (with the ``prefix`` field), GNU long names (``L``/``K``) and
POSIX PAX headers (``x`` per member, ``g`` global; ``path`` and ``size`` records are applied).
Only regular files are members, as ``tarfile`` decides (``_tarheader.is_regular``); a link,
directory, device or FIFO header has no payload whatever its size field says, as the tar
standard has it and ``tarfile`` reads it (``_tarheader.data_size``), so a foreign archive
cannot hide members from this scan that ``tarfile`` and webdataset see. Samples are grouped
the way webdataset groups them: adjacent members whose names share the key, i.e. the name up
to the first dot of its last path component (the directory part stays in the key).
"""

from __future__ import annotations

import mmap
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple

import numpy as np

from shards._tarheader import (
    ZERO_BLOCK,
    ShardFormatError,
    check_header,
    data_size,
    header_name,
    is_regular,
    member_name,
    number,
    pax_records,
)
from shards.format import BLOCK, INDEX_DTYPE

__all__ = [
    "IMAGE_SUFFIXES",
    "Buffer",
    "Member",
    "SampleGrouper",
    "SampleMembers",
    "ShardFormatError",
    "build_index",
    "group_samples",
    "header_name",
    "iter_members",
    "parse_label",
    "scan_buffer",
    "scan_members",
    "split_key",
]

IMAGE_SUFFIXES = frozenset({"jpg", "jpeg", "png", "webp"})
_KEY_RE = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_EXTENDED = frozenset(b"LKxg")
_SKIP_CHUNK = 1 << 20
_LABEL_MAX = int(np.iinfo(INDEX_DTYPE["label"]).max)
_LABEL_DIGITS = len(str(_LABEL_MAX))

Buffer = bytes | bytearray | memoryview | mmap.mmap


class Member(NamedTuple):
    """A regular file in a tar archive.

    ``offset`` is the first byte of its headers (of the first PAX/GNU extended header when it
    has one), ``data_offset`` the first byte of its payload, ``size`` the payload length.
    """

    name: str
    offset: int
    data_offset: int
    size: int


@dataclass(frozen=True, slots=True)
class SampleMembers:
    """Adjacent members sharing one key; ``image``/``cls``/``json`` are ``None`` when absent."""

    key: str
    members: tuple[Member, ...]
    image: Member | None
    cls: Member | None
    json: Member | None

    @property
    def offset(self) -> int:
        return self.members[0].offset

    @property
    def end(self) -> int:
        """One past the last byte (padding included) of the last member."""
        last = self.members[-1]
        return last.data_offset + last.size + (-last.size % BLOCK)


def split_key(name: str) -> tuple[str, str] | None:
    """``(key, suffix)`` of a member name as webdataset splits it, suffix lower-cased; ``None``
    for names webdataset ignores (no dot in the last component, or ``__meta__`` files)."""
    if "/" not in name and name.startswith("__") and name.endswith("__"):
        return None
    match = _KEY_RE.match(name)
    if match is None:
        return None
    return match.group(1), match.group(2).lower()


class _Reader:
    """Random access for the scanner: ``read_at`` returns fewer bytes only at the end of data;
    ``reaches(n)`` says whether the data is at least ``n`` bytes long."""

    def read_at(self, offset: int, n: int) -> bytes:
        raise NotImplementedError

    def reaches(self, n: int) -> bool:
        raise NotImplementedError


class _BufferReader(_Reader):
    def __init__(self, buf: Buffer) -> None:
        self._buf = buf
        self._size = len(buf)

    def read_at(self, offset: int, n: int) -> bytes:
        return bytes(self._buf[offset : offset + n])

    def reaches(self, n: int) -> bool:
        return n <= self._size


class _StreamReader(_Reader):
    """Forward-only reads from a binary stream; seeks when it can, else reads and discards."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._pos = 0
        self._size: int | None = None
        if _seekable(f):
            self._pos = f.tell()
            self._size = f.seek(0, 2)
            f.seek(self._pos)
        self._base = self._pos

    def _advance(self, target: int) -> bool:
        if self._size is not None:
            if target > self._size:
                return False
            if target != self._pos:
                self._f.seek(target)
            self._pos = target
            return True
        while self._pos < target:
            got = len(self._f.read(min(_SKIP_CHUNK, target - self._pos)))
            if not got:
                return False
            self._pos += got
        return True

    def read_at(self, offset: int, n: int) -> bytes:
        if not self._advance(self._base + offset):
            return b""
        data = self._f.read(n)
        self._pos += len(data)
        return data

    def reaches(self, n: int) -> bool:
        if self._size is not None:
            return self._base + n <= self._size
        return self._advance(self._base + n)


def _seekable(f: BinaryIO) -> bool:
    try:
        return bool(f.seekable())
    except (AttributeError, OSError):
        return False


def _walk(
    src: _Reader, url: str, want: Callable[[str], bool] | None
) -> Iterator[tuple[Member, bytes | None]]:
    # One header block at a time, never the payloads unless wanted: a local shard costs one
    # 512-byte read per member. Extended headers (GNU long name 'L', PAX 'x' and 'g') describe
    # the member after them, so their fields wait in ``long_name``/``local``/``global_``, and
    # ``first`` remembers where the member's first header began (its sample's byte offset).
    pos = 0
    long_name: str | None = None
    local: dict[str, str] = {}
    global_: dict[str, str] = {}
    first: int | None = None
    while True:
        block = src.read_at(pos, BLOCK)
        if len(block) < BLOCK:
            where = "inside a header" if block else "without the end-of-archive blocks"
            raise ShardFormatError(f"{url}: archive ends at byte {pos + len(block)} {where}")
        if block == ZERO_BLOCK:
            if first is not None:
                raise ShardFormatError(f"{url}: extended header at byte {first} has no member")
            return
        check_header(block, pos, url)
        kind = block[156]
        size = number(block[124:136], "size", pos, url)
        data_offset = pos + BLOCK
        following = data_offset + size + (-size % BLOCK)
        if kind in _EXTENDED:
            payload = src.read_at(data_offset, size)
            if len(payload) < size:
                raise ShardFormatError(
                    f"{url}: archive ends inside the extended header at byte {pos}"
                )
            if kind == 0x4C:  # 'L'
                long_name = payload.split(b"\0", 1)[0].decode("utf-8", "replace")
            elif kind == 0x78:  # 'x'
                local.update(pax_records(payload, pos, url))
            elif kind == 0x67:  # 'g'
                global_.update(pax_records(payload, pos, url))
            if kind != 0x67 and first is None:
                first = pos
            pos = following
            continue
        if kind == 0x53:  # 'S'
            raise ShardFormatError(f"{url}: unsupported GNU sparse member at byte {pos}")
        name = member_name(block)
        if long_name is not None:
            name = long_name
        records = {**global_, **local} if global_ else local
        if "path" in records:
            name = records["path"]
        if "size" in records:
            size = _pax_size(records["size"], pos, url)
        size = data_size(block, size)  # a link's payload is empty whatever its header says
        following = data_offset + size + (-size % BLOCK)
        start = pos if first is None else first
        if local:
            local = {}
        long_name = first = None
        is_file = is_regular(block)
        payload_bytes: bytes | None = None
        if is_file and want is not None and want(name):
            payload_bytes = src.read_at(data_offset, size)
        # Checked before yielding, so a reader never gets a member whose bytes are not all there.
        complete = src.reaches(following)
        if not complete:
            raise ShardFormatError(
                f"{url}: archive ends inside member {name!r} (header at byte {pos}, "
                f"{size} bytes from byte {data_offset})"
            )
        if is_file:
            yield Member(name, start, data_offset, size), payload_bytes
        if following <= pos:
            raise ShardFormatError(f"{url}: the tar header at byte {pos} does not move forward")
        pos = following


def _pax_size(text: str, pos: int, url: str) -> int:
    """A PAX ``size`` record as a byte count; negative or non-decimal values are refused (a
    negative size would point the next header backwards and loop the scan forever)."""
    digits = text.strip()
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 19:
        raise ShardFormatError(
            f"{url}: expected a PAX size >= 0 (decimal digits), got size={text[:40]!r} for "
            f"the member whose header is at byte {pos}"
        )
    return int(digits)


def iter_members(
    f: BinaryIO, url: str, *, want: Callable[[str], bool] | None = None
) -> Iterator[tuple[Member, bytes | None]]:
    """Regular-file members of the tar stream ``f`` in archive order, each with its payload when
    ``want(name)`` is true (else ``None``). Offsets are relative to where ``f`` stands now.

    Works on non-seekable streams (payloads that are not wanted are read and discarded).
    Raises ``ShardFormatError`` naming ``url`` and a byte offset for a truncated or corrupt
    archive; the error comes when the scan reaches the damage.
    """
    return _walk(_StreamReader(f), url, want)


def scan_members(f: BinaryIO, url: str) -> list[Member]:
    """All regular-file members of the tar stream ``f`` (see ``iter_members``)."""
    return [m for m, _ in _walk(_StreamReader(f), url, None)]


def scan_buffer(buf: Buffer, url: str) -> list[Member]:
    """All regular-file members of a tar archive held in memory or in an ``mmap``."""
    return [m for m, _ in _walk(_BufferReader(buf), url, None)]


class SampleGrouper:
    """Groups members into samples incrementally: ``push`` returns the sample that the new
    member completes (when its key differs from the previous member's), ``finish`` the last.

    Members that webdataset ignores (see ``split_key``) are dropped.
    """

    def __init__(self, url: str = "<tar>") -> None:
        self._url = url
        self._key: str | None = None
        self._members: list[Member] = []
        self._parts: dict[str, Member] = {}

    def push(self, member: Member) -> SampleMembers | None:
        split = split_key(member.name)
        if split is None:
            return None
        key, suffix = split
        done = None
        if key != self._key:
            done = self.finish()
            self._key = key
        if suffix in self._parts:
            raise ShardFormatError(
                f"{self._url}: sample {key!r} has two {suffix!r} members "
                f"(the second at byte {member.offset})"
            )
        self._parts[suffix] = member
        self._members.append(member)
        return done

    def finish(self) -> SampleMembers | None:
        if self._key is None:
            return None
        parts = self._parts
        image = next((m for s, m in parts.items() if s in IMAGE_SUFFIXES), None)
        sample = SampleMembers(
            self._key, tuple(self._members), image, parts.get("cls"), parts.get("json")
        )
        self._key, self._members, self._parts = None, [], {}
        return sample


def group_samples(members: Iterable[Member], *, url: str = "<tar>") -> list[SampleMembers]:
    """Adjacent members sharing a key, in archive order (webdataset's grouping)."""
    grouper = SampleGrouper(url)
    samples = [s for s in map(grouper.push, members) if s is not None]
    last = grouper.finish()
    if last is not None:
        samples.append(last)
    return samples


def parse_label(payload: bytes | memoryview) -> int:
    """The class index in a ``.cls`` payload (ASCII decimal, surrounding whitespace allowed);
    ``-1`` when it is not a non-negative integer that fits the index's int64 ``label`` column
    (2^63 or more is -1 too: a bad sample, never an overflow)."""
    text = bytes(payload).strip()
    if not text.isdigit():
        return -1
    digits = text.lstrip(b"0") or b"0"
    if len(digits) > _LABEL_DIGITS:
        return -1
    value = int(digits)
    return value if value <= _LABEL_MAX else -1


def build_index(samples: Sequence[SampleMembers], labels: Sequence[int]) -> np.ndarray:
    """The ``INDEX_DTYPE`` rows a sidecar would hold for these samples.

    A sample without an image member gets ``image_offset=-1`` and ``image_size=0``; pass
    ``-1`` as the label of a sample without (or with an unreadable) ``cls`` member.
    """
    if len(samples) != len(labels):
        raise ValueError(
            f"expected one label per sample, got samples={len(samples)} labels={len(labels)}"
        )
    index = np.zeros(len(samples), dtype=INDEX_DTYPE)
    if not samples:
        return index
    index["offset"] = [s.offset for s in samples]
    index["end"] = [s.end for s in samples]
    index["image_offset"] = [s.image.data_offset if s.image else -1 for s in samples]
    index["image_size"] = [s.image.size if s.image else 0 for s in samples]
    index["label"] = labels
    return index
