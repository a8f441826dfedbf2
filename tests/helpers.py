"""Helpers every test folder may import: where the headless browser is, if anywhere, a
decompression bomb, a JPEG's EXIF orientation segment, the environment of a child process,
and the README's recipe blocks."""

from __future__ import annotations

import os
import re
import shutil
import struct
import zlib
from pathlib import Path

__all__ = [
    "CHROMEDRIVER",
    "CHROMIUM",
    "README",
    "child_env",
    "png_bomb",
    "recipe",
    "with_exif_orientation",
]

README = Path(__file__).resolve().parents[1] / "README.md"
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


def child_env() -> dict[str, str]:
    """The environment for a ``shardfeed`` child process a test starts: this one without
    ``RANK``/``WORLD_SIZE`` (a child that is no rank of a job must not think it is one) and
    with one OpenMP thread (the machine is shared)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def recipe(name: str) -> str:
    """The fenced block after ``<!-- recipe: NAME -->`` in the README: tests run the README's
    examples as written, so the two cannot drift apart."""
    text = README.read_text(encoding="utf-8")
    found = re.search(rf"<!-- recipe: {re.escape(name)} -->\n```\w*\n(.*?)```", text, re.S)
    assert found, f"README.md has no recipe block {name!r}"
    return found.group(1)


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
