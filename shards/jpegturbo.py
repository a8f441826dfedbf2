"""A small binding to libjpeg-turbo's libjpeg API for what OpenCV cannot do: decode one region of
a JPEG at a DCT scale, and scan every block of one cheaply (docs/architecture.md, "Builds").

The C side is ``shards/_jpegturbo.c``, built with the package as ``shards/_jpegturbo*.so`` when
the libjpeg headers are there (``libjpeg62-turbo-dev`` on Debian) and loaded here with
``ctypes``, which releases the GIL for each call. The maintained Python bindings do not reach
this: simplejpeg only scales, and PyTurboJPEG 2.x needs libturbojpeg 3 (Debian 12 ships 2.1.5)
and does not expose ``tj3SetCroppingRegion``. When the library was not built, ``available()``
is false and every caller keeps its OpenCV path.

- ``decode_region``: rows ``top..top+height-1`` and (whole iMCUs covering) columns
  ``left..left+width-1`` of the image scaled by ``M/8``, as RGB. Rows above are skipped before
  the IDCT, rows below are never read.
- ``scan_jpeg``: the entropy decoder over every block at 1/8 scale (the IDCT keeps only the DC
  term), with libjpeg's warnings: the damage a full decode would report.

Each call owns its decompressor, so calls from several threads at once are safe.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
from pathlib import Path
from typing import Final, NamedTuple

import numpy as np

__all__ = ["JpegError", "ScanResult", "available", "decode_region", "scaled_size", "scan_jpeg"]

_MSG_LEN: Final = 200
# A decoded row covers the region plus at most one iMCU (<= 4 blocks of 8 pixels) each side.
_MARGIN: Final = 64
_U8P: Final = ctypes.POINTER(ctypes.c_ubyte)


class JpegError(ValueError):
    """libjpeg refused the bytes or the request (e.g. CMYK to RGB); the message is libjpeg's."""


class ScanResult(NamedTuple):
    """A 1/8-scale pass over every block: the output size, the number of libjpeg's warnings, the
    first one's text (the only one libjpeg's default handler prints), and whether libjpeg asked
    for bytes past the end of the data (where OpenCV's suspending source fails the decode)."""

    width: int
    height: int
    warnings: int
    first_warning: str
    ran_out: bool


@functools.cache
def _library() -> ctypes.CDLL | None:
    here = Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / f"_jpegturbo{suffix}"
        if path.is_file():
            lib = ctypes.CDLL(str(path))
            ints = ctypes.POINTER(ctypes.c_int)
            c_int, c_ulong, text = ctypes.c_int, ctypes.c_ulong, ctypes.c_char_p
            lib.sf_decode_crop.argtypes = [
                _U8P, c_ulong, c_int, c_int, c_int, c_int, c_int, _U8P, c_int, ints, text, c_int,
            ]  # fmt: skip
            lib.sf_decode_crop.restype = c_int
            lib.sf_scan.argtypes = [_U8P, c_ulong, ints, text, c_int]
            lib.sf_scan.restype = c_int
            return lib
    return None


def available() -> bool:
    """Whether ``shards/_jpegturbo`` was built with this package."""
    return _library() is not None


def _loaded() -> ctypes.CDLL:
    lib = _library()
    if lib is None:
        raise RuntimeError(
            "expected the libjpeg-turbo helper shards/_jpegturbo to be built; install the "
            "libjpeg headers (libjpeg62-turbo-dev) and reinstall shardfeed"
        )
    return lib


def scaled_size(size: int, m: int) -> int:
    """libjpeg's output size for a ``size``-pixel side decoded at scale ``m/8``."""
    return -(-size * m // 8)


def decode_region(
    data: bytes | memoryview, m: int, top: int, left: int, height: int, width: int
) -> np.ndarray:
    """RGB ``[height, width, 3]`` view of the image decoded at scale ``m/8`` (1..8), rows
    ``top:top+height`` and columns ``left:left+width`` of that scaled image. Raises
    ``JpegError`` with libjpeg's message when it cannot (corrupt headers, CMYK, a region
    outside the image) or warned (corrupt data, a truncation) in the rows it read; damage below
    the region goes unseen, since those rows are never read."""
    lib = _loaded()
    if not 1 <= m <= 8:
        raise ValueError(f"expected a scale numerator 1..8, got m={m}")
    out = np.empty((max(height, 1), max(width, 1) + _MARGIN, 3), np.uint8)
    geometry = (ctypes.c_int * 5)()
    msg = ctypes.create_string_buffer(_MSG_LEN)
    src = np.frombuffer(data, np.uint8)
    code = lib.sf_decode_crop(
        src.ctypes.data_as(_U8P), src.size, m, top, left, height, width,
        out.ctypes.data_as(_U8P), out.strides[0], geometry, msg, _MSG_LEN,
    )  # fmt: skip
    if code:
        raise JpegError(msg.value.decode("utf-8", "replace"))
    if geometry[4]:
        raise JpegError(f"libjpeg warned in the rows read: {msg.value.decode('utf-8', 'replace')}")
    first = left - geometry[2]
    return out[:, first : first + width]


def scan_jpeg(data: bytes | memoryview) -> ScanResult:
    """Run libjpeg over every block of ``data`` at 1/8 scale (see ``ScanResult``). Raises
    ``JpegError`` with libjpeg's message on a fatal error (bad markers, not a JPEG)."""
    lib = _loaded()
    geometry = (ctypes.c_int * 4)()
    msg = ctypes.create_string_buffer(_MSG_LEN)
    src = np.frombuffer(data, np.uint8)
    code = lib.sf_scan(src.ctypes.data_as(_U8P), src.size, geometry, msg, _MSG_LEN)
    text = msg.value.decode("utf-8", "replace")
    if code:
        raise JpegError(text)
    return ScanResult(geometry[0], geometry[1], geometry[2], text, bool(geometry[3]))
