"""The on-disk format: names, tar headers, the offset sidecar (docs/architecture.md, "Format").

A shard is a plain POSIX (ustar) tar. A sample is three adjacent members sharing one key:
``KEY.<ext>`` (the image; ``ext`` sniffed from the bytes), ``KEY.cls`` (class index as ASCII
decimal) and ``KEY.json`` (metadata). Keys are zero-padded decimal plan positions: no dot, no
slash, unique across the dataset and sorted in sample order.

Every header has fixed mtime, uid, gid, owner names and mode, so the same input gives the same
bytes. Beside each shard ``shard-NNNNNN.tar`` lies ``shard-NNNNNN.idx.npy``: a NumPy structured
array (``INDEX_DTYPE``), one row per sample, that lets a reader slice the k-th sample's image out
of a memory map without parsing any tar header.
"""

from __future__ import annotations

import io
import tarfile
from tokenize import TokenError
from typing import Final

import numpy as np

__all__ = [
    "BLOCK",
    "IMAGE_EXTENSIONS",
    "INDEX_DTYPE",
    "MANIFEST_NAME",
    "MIN_SAMPLE_BYTES",
    "check_index_rows",
    "end_of_archive",
    "index_name",
    "make_key",
    "padding",
    "read_index",
    "read_index_rows",
    "shard_name",
    "sniff_image_format",
    "tar_member_header",
]

BLOCK: Final = 512
MANIFEST_NAME: Final = "manifest.json"
IMAGE_EXTENSIONS: Final = ("jpg", "png", "webp")
MTIME: Final = 0
MODE: Final = 0o444
KEY_WIDTH: Final = 9

INDEX_DTYPE: Final = np.dtype(
    [
        ("offset", "<i8"),  # first header byte of the sample's first member
        ("end", "<i8"),  # one past the last byte (padding included) of its last member
        ("image_offset", "<i8"),  # first byte of the image payload
        ("image_size", "<i8"),  # image payload length in bytes
        ("label", "<i8"),  # class index, as in KEY.cls
    ]
)


MIN_SAMPLE_BYTES: Final = 3 * BLOCK
"""The fewest bytes a sample of this format takes: three members, each at least a 512-byte
header. A shard of ``n`` bytes holds at most ``n // MIN_SAMPLE_BYTES`` samples."""


def shard_name(index: int) -> str:
    """File name of shard ``index`` (0-based)."""
    return f"shard-{index:06d}.tar"


def index_name(shard: str) -> str:
    """Sidecar index file name for a shard file name (``x.tar`` -> ``x.idx.npy``)."""
    stem = shard[: -len(".tar")] if shard.endswith(".tar") else shard
    return f"{stem}.idx.npy"


def make_key(position: int, total: int) -> str:
    """The key of the sample at plan ``position``: zero-padded, so keys sort in sample order."""
    if position < 0:
        raise ValueError(f"expected a non-negative position, got position={position}")
    width = max(KEY_WIDTH, len(str(max(total - 1, 0))))
    return f"{position:0{width}d}"


def sniff_image_format(head: bytes | memoryview) -> str | None:
    """The image format named by the magic bytes at the start of a file, else ``None``.

    Returns one of ``IMAGE_EXTENSIONS``; never looks at a file name.
    """
    if head[:3] == b"\xff\xd8\xff":
        return "jpg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def tar_member_header(name: str, size: int) -> bytes:
    """The 512-byte ustar header of a regular file member with reproducible metadata.

    Byte-identical to ``tarfile.TarInfo.tobuf(USTAR_FORMAT)`` for these fields, built directly
    because the builder writes one per member. Names longer than 100 bytes are refused (keys are
    short by construction).
    """
    raw = name.encode("utf-8")
    if len(raw) > 100:
        raise ValueError(f"expected a member name of at most 100 bytes, got name={name!r}")
    if not 0 <= size < 8**11:
        raise ValueError(f"expected a member size below 8 GiB, got size={size}")
    header = bytearray(_HEADER_TEMPLATE)
    header[0 : len(raw)] = raw
    header[124:136] = b"%011o\0" % size
    checksum = sum(header)
    header[148:156] = b"%06o\0 " % checksum
    return bytes(header)


def _header_template() -> bytes:
    info = tarfile.TarInfo("x")
    info.mtime, info.mode, info.uid, info.gid = MTIME, MODE, 0, 0
    info.uname = info.gname = ""
    template = bytearray(info.tobuf(format=tarfile.USTAR_FORMAT))
    template[0:100] = bytes(100)
    template[124:136] = b" " * 12
    template[148:156] = b" " * 8
    return bytes(template)


_HEADER_TEMPLATE: Final = _header_template()


def padding(size: int) -> bytes:
    """Zero bytes that pad a payload of ``size`` bytes to a whole tar block."""
    return b"\0" * (-size % BLOCK)


def end_of_archive() -> bytes:
    """The two zero blocks that end a tar archive."""
    return b"\0" * (2 * BLOCK)


def read_index(data: bytes | io.BufferedIOBase) -> np.ndarray:
    """Load a sidecar index from bytes or a binary file; checks its dtype.

    Any damage (truncation, a mangled ``.npy`` header, a shape larger than the data) is a
    ``ValueError``: the bytes are read first and parsed from memory, so a header that claims a
    huge shape cannot make NumPy allocate more than the file holds.
    """
    raw = data if isinstance(data, bytes) else data.read()
    try:
        arr = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, EOFError, SyntaxError, TokenError, TypeError, KeyError) as exc:
        raise ValueError(f"expected a .npy sidecar index, got unreadable bytes ({exc})") from None
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"expected a .npy sidecar index, got {type(arr).__name__}")
    if arr.dtype != INDEX_DTYPE or arr.ndim != 1:
        raise ValueError(
            f"expected a 1-d sidecar index of dtype {INDEX_DTYPE}, got dtype={arr.dtype} "
            f"ndim={arr.ndim}"
        )
    return arr


def read_index_rows(f: io.BufferedIOBase, nbytes: int) -> int:
    """The row count a sidecar index of ``nbytes`` bytes declares, read from its ``.npy`` header
    alone (the rows are not read); ``ValueError`` for a header that is not a 1-d
    ``INDEX_DTYPE`` array or that declares more rows than the file holds."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    except (ValueError, EOFError, SyntaxError, TokenError, TypeError, KeyError) as exc:
        raise ValueError(f"expected a .npy sidecar index, got unreadable bytes ({exc})") from None
    if dtype != INDEX_DTYPE or len(shape) != 1:
        raise ValueError(
            f"expected a 1-d sidecar index of dtype {INDEX_DTYPE}, got dtype={dtype} shape={shape}"
        )
    rows = int(shape[0])
    if rows * INDEX_DTYPE.itemsize > nbytes - f.tell():
        raise ValueError(
            f"expected at most {nbytes // INDEX_DTYPE.itemsize} rows in a sidecar of {nbytes} "
            f"bytes, got a header declaring rows={rows}: the file is truncated"
        )
    return rows


def check_index_rows(index: np.ndarray, size: int, url: str, what: str) -> None:
    """Refuse ``INDEX_DTYPE`` rows (a sidecar's or a scan's, ``what``) that do not describe a
    shard of ``size`` bytes at ``url``: a sample ending past the end (the shard is truncated),
    rows out of order or overlapping, an image outside its sample, a negative size, or a
    no-image row other than ``image_offset=-1, image_size=0``. Every comparison is done
    without sums, so an int64 overflow cannot pass it. Raises ``ValueError`` naming the shard
    and the first bad row; a reader then slices only what lies inside the shard."""
    if not len(index):
        return
    offset, end = index["offset"], index["end"]
    image, image_size = index["image_offset"], index["image_size"]
    past = np.flatnonzero(end > size)
    if past.size:
        p = int(past[0])
        raise ValueError(
            f"shard {url} is truncated: it has {size} bytes, but its {what} says sample {p} "
            f"ends at byte {int(end[p])}"
        )
    has_image = image >= 0
    no_image = (image == -1) & (image_size == 0)
    inside = (image >= offset) & (image <= end) & (image_size >= 0) & (image_size <= end - image)
    bad = (offset < 0) | (end <= offset) | ~np.where(has_image, inside, no_image)
    bad[1:] |= offset[1:] < end[:-1]
    rows = np.flatnonzero(bad)
    if rows.size:
        p = int(rows[0])
        fields = ("offset", "end", "image_offset", "image_size")
        shown = " ".join(f"{name}={int(index[name][p])}" for name in fields)
        raise ValueError(
            f"shard {url}: {what} is inconsistent at sample {p} ({shown}): expected rows in "
            "order, not overlapping, each image inside its sample (or image_offset=-1 and "
            "image_size=0 without one); rebuild the shard or its index"
        )
