"""Image dimensions read from the first bytes of a JPEG, PNG or WebP file, without decoding.

The decoder uses the JPEG size to choose a reduced (DCT-scaled) decode before it decodes; the
other formats are parsed for completeness. Every function here reads at most the header bytes
it needs and returns ``None`` rather than raising on anything it does not understand, so a
caller can always fall back to a full decode.
"""

from __future__ import annotations

__all__ = ["image_size", "jpeg_size", "png_size", "webp_size"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Start-of-frame markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field: TEM and RST0..RST7 (SOI is skipped before the loop).
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})


def jpeg_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """``(width, height)`` from a JPEG's start-of-frame header, or ``None``.

    Walks the marker segments by their length fields, so it reads a few dozen bytes plus
    nothing of large APPn (EXIF, ICC) payloads. The size is the stored frame size: EXIF
    orientation is not applied.
    """
    mv = memoryview(data)
    n = len(mv)
    if n < 4 or mv[0] != 0xFF or mv[1] != 0xD8:
        return None
    i = 2
    while i + 4 <= n:
        if mv[i] != 0xFF:
            return None
        marker = mv[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker in _STANDALONE_MARKERS:
            i += 2
            continue
        if marker in (0xD9, 0xDA):
            return None
        length = (mv[i + 2] << 8) | mv[i + 3]
        if length < 2:
            return None
        if marker in _SOF_MARKERS:
            if i + 9 > n:
                return None
            height = (mv[i + 5] << 8) | mv[i + 6]
            width = (mv[i + 7] << 8) | mv[i + 8]
            return (width, height) if width > 0 and height > 0 else None
        i += 2 + length
    return None


def png_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """``(width, height)`` from a PNG's IHDR chunk, or ``None``."""
    head = bytes(memoryview(data)[:24])
    if len(head) < 24 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    width = int.from_bytes(head[16:20], "big")
    height = int.from_bytes(head[20:24], "big")
    return (width, height) if width > 0 and height > 0 else None


def webp_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """``(width, height)`` of a lossy (VP8), lossless (VP8L) or extended (VP8X) WebP, or None."""
    head = bytes(memoryview(data)[:30])
    if len(head) < 30 or head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        return None
    chunk = head[12:16]
    if chunk == b"VP8 ":
        if head[23:26] != b"\x9d\x01\x2a":
            return None
        width = int.from_bytes(head[26:28], "little") & 0x3FFF
        height = int.from_bytes(head[28:30], "little") & 0x3FFF
    elif chunk == b"VP8L":
        if head[20] != 0x2F:
            return None
        bits = int.from_bytes(head[21:25], "little")
        width = (bits & 0x3FFF) + 1
        height = ((bits >> 14) & 0x3FFF) + 1
    elif chunk == b"VP8X":
        width = int.from_bytes(head[24:27], "little") + 1
        height = int.from_bytes(head[27:30], "little") + 1
    else:
        return None
    return (width, height) if width > 0 and height > 0 else None


def image_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """``(width, height)`` of a JPEG, PNG or WebP image from its header, or ``None``."""
    head = bytes(memoryview(data)[:4])
    if head[:3] == b"\xff\xd8\xff":
        return jpeg_size(data)
    if head == _PNG_SIGNATURE[:4]:
        return png_size(data)
    if head == b"RIFF":
        return webp_size(data)
    return None
