"""Image facts from the bytes alone: format, size, channels, a JPEG's EXIF orientation, and
whether the file is complete.

Reads only headers (no pixel decode), so a build can check millions of files cheaply
(``--verify header``) and the loader can pick a reduced decode scale before decoding.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from shards.format import sniff_image_format

__all__ = [
    "MAX_PIXELS",
    "ImageInfo",
    "exif_orientation",
    "image_info",
    "is_complete",
    "pixel_bomb",
]

MAX_PIXELS = 1 << 26
"""Most pixels a PNG or WebP may have (67 M, e.g. 8192 x 8192): far below OpenCV's own limit
of 2^30, which lets a 875 KB PNG of 30000 x 30000 decode into 2.7 GB. Builder and loader both
refuse larger ones from the header alone, before any decode."""

_Buffer = bytes | memoryview

_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_SEQUENTIAL_HUFFMAN = {0xC0, 0xC1}
_APP1 = 0xE1
_EXIF = b"Exif\0\0"
_ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class ImageInfo:
    """What the header says: ``format`` is one of ``shards.format.IMAGE_EXTENSIONS``.

    ``progressive``: a JPEG whose frame is not sequential DCT (progressive, lossless or
    hierarchical; arithmetic-coded too), which batched GPU decoders reject. ``bits``: sample
    precision (JPEG 8 or 12, PNG bit depth; 8 for WebP). ``orientation``: a JPEG's EXIF
    orientation tag (1 to 8; 1, "as stored", when there is none or it cannot be read). Width and
    height are as stored, before any rotation the tag asks for.
    """

    format: str
    width: int
    height: int
    channels: int
    progressive: bool = False
    bits: int = 8
    orientation: int = 1


def image_info(data: bytes | memoryview) -> ImageInfo | None:
    """Parse the header of a JPEG, PNG or WebP; ``None`` when it is not one or is malformed.

    Reads only the header bytes it needs; a memoryview (say, into a memory-mapped shard) is
    parsed in place, without a copy.
    """
    buf: _Buffer = memoryview(data).cast("B") if isinstance(data, memoryview) else data
    fmt = sniff_image_format(buf[:16])
    if fmt == "jpg":
        return _jpeg_info(buf)
    if fmt == "png":
        return _png_info(buf)
    if fmt == "webp":
        return _webp_info(buf)
    return None


def pixel_bomb(info: ImageInfo | None) -> str | None:
    """Why an image must not be decoded (a PNG or WebP above ``MAX_PIXELS``), else ``None``.

    JPEGs are left to the decoders' reduced-size paths; their size is checked elsewhere.
    """
    if info is None or info.format == "jpg":
        return None
    pixels = info.width * info.height
    if pixels <= MAX_PIXELS:
        return None
    return (
        f"{info.format.upper()} of {info.width}x{info.height} = {pixels} pixels, above the "
        f"limit of {MAX_PIXELS} pixels (a decompression bomb?)"
    )


def is_complete(data: bytes | memoryview) -> bool:
    """Whether the file ends where its format says it must (JPEG EOI after the scan, PNG IEND).

    A truncated JPEG still decodes in OpenCV (the missing rows come out grey, with only a
    warning), so this structural check is what tells a cut-off download from a whole image.
    """
    mv = memoryview(data)
    fmt = sniff_image_format(bytes(mv[:16]))
    if fmt == "jpg":
        raw = bytes(mv)
        return raw.rfind(b"\xff\xd9") > raw.rfind(b"\xff\xda") >= 0
    if fmt == "png":
        return bytes(mv[-512:]).rfind(b"IEND") >= 0
    if fmt == "webp":
        if len(mv) < 12:
            return False
        (riff_size,) = struct.unpack_from("<I", mv, 4)
        return len(mv) >= riff_size + 8
    return False


def _jpeg_info(buf: _Buffer) -> ImageInfo | None:
    i, n = 2, len(buf)
    orientation = 1
    while i + 4 <= n:
        if buf[i] != 0xFF:
            return None
        marker = buf[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack_from(">H", buf, i + 2)
        if marker in _JPEG_SOF:
            if i + 10 > n:
                return None
            bits = buf[i + 4]
            height, width = struct.unpack_from(">HH", buf, i + 5)
            channels = buf[i + 9]
            if width == 0 or height == 0:
                return None
            progressive = marker not in _JPEG_SEQUENTIAL_HUFFMAN
            return ImageInfo("jpg", width, height, channels, progressive, bits, orientation)
        if marker in (0xDA, 0xD9):
            return None
        if marker == _APP1 and orientation == 1:
            orientation = exif_orientation(buf[i + 4 : min(i + 2 + length, n)])
        i += 2 + length
    return None


def exif_orientation(segment: _Buffer) -> int:
    """The orientation tag (0x0112) of IFD0 in a JPEG APP1 segment's payload (``Exif\\0\\0``
    then a TIFF header, either byte order); 1 when the segment is not EXIF, has no such tag, or
    is malformed or cut short (never raises), and for values outside 1..8."""
    if len(segment) < 14 or bytes(segment[:6]) != _EXIF:
        return 1
    tiff = segment[6:]
    order = bytes(tiff[:2])
    if order not in (b"II", b"MM"):
        return 1
    e = "<" if order == b"II" else ">"
    n = len(tiff)
    (magic, ifd) = struct.unpack_from(e + "HI", tiff, 2)
    if magic != 42 or ifd + 2 > n:
        return 1
    (entries,) = struct.unpack_from(e + "H", tiff, ifd)
    for k in range(entries):
        at = ifd + 2 + 12 * k
        if at + 12 > n:
            return 1
        tag, kind, count = struct.unpack_from(e + "HHI", tiff, at)
        if tag == _ORIENTATION_TAG:
            if kind != 3 or count < 1:  # SHORT
                return 1
            (value,) = struct.unpack_from(e + "H", tiff, at + 8)
            return value if 1 <= value <= 8 else 1
    return 1


def _png_info(buf: _Buffer) -> ImageInfo | None:
    if len(buf) < 26 or buf[12:16] != b"IHDR":
        return None
    width, height = struct.unpack_from(">II", buf, 16)
    bits, color_type = buf[24], buf[25]
    channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(color_type)
    if channels is None or width == 0 or height == 0:
        return None
    return ImageInfo("png", width, height, channels, bits=bits)


def _webp_info(buf: _Buffer) -> ImageInfo | None:
    if len(buf) < 30:
        return None
    chunk = buf[12:16]
    if chunk == b"VP8 ":
        if buf[23:26] != b"\x9d\x01\x2a":
            return None
        width, height = struct.unpack_from("<HH", buf, 26)
        if not width & 0x3FFF or not height & 0x3FFF:
            return None
        return ImageInfo("webp", width & 0x3FFF, height & 0x3FFF, 3)
    if chunk == b"VP8L":
        if buf[20] != 0x2F:
            return None
        bits = int.from_bytes(buf[21:25], "little")
        channels = 4 if bits >> 28 & 1 else 3
        return ImageInfo("webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, channels)
    if chunk == b"VP8X":
        width = int.from_bytes(buf[24:27], "little") + 1
        height = int.from_bytes(buf[27:30], "little") + 1
        return ImageInfo("webp", width, height, 4 if buf[20] & 0x10 else 3)
    return None
