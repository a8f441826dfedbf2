"""Helpers every test folder may import: where the headless browser is, if anywhere, a
decompression bomb, and a JPEG's EXIF orientation segment."""

from __future__ import annotations

import shutil
import struct
import zlib

__all__ = ["CHROMEDRIVER", "CHROMIUM", "png_bomb", "with_exif_orientation"]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(width: int = 12_000, height: int = 12_000) -> bytes:
    """A complete PNG whose header promises ``width x height`` RGB pixels, in a few KB (its
    pixel data stops after the first rows: the header alone is the threat)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\0" * (1 + 3 * width) * 4, 9)
    idat, iend = _chunk(b"IDAT", rows), _chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + idat + iend


def with_exif_orientation(data: bytes, orientation: int, *, big_endian: bool = False) -> bytes:
    """``data`` (a JPEG) with an APP1 EXIF segment after SOI whose IFD0 holds one entry: the
    orientation tag (0x0112, SHORT) set to ``orientation``, in either TIFF byte order."""
    e = ">" if big_endian else "<"
    order = b"MM" if big_endian else b"II"
    value = struct.pack(e + "H", orientation) + b"\0\0"
    ifd = struct.pack(e + "H", 1) + struct.pack(e + "HHI", 0x0112, 3, 1) + value
    tiff = order + struct.pack(e + "HI", 42, 8) + ifd + struct.pack(e + "I", 0)
    payload = b"Exif\0\0" + tiff
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:]
