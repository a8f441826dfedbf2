"""Per-image checks and the optional re-encode, as the shard writer applies them.

Levels (``--verify``): ``none`` sniffs the format from the bytes only; ``header`` also parses
the header and requires the file to be structurally complete; ``decode`` also decodes the image
once, as the loader will. A JPEG is decoded at 1/8 scale by ``shards.jpegturbo.scan_jpeg`` when
that helper is built: the entropy decoder still reads every block, so truncation and corrupt
data are found as by a full decode (the same libjpeg warnings, judged by the same rule), for a
fraction of its cost and without serialising threads on fd 2. Without the helper, and for PNG
and WebP, OpenCV decodes every pixel. At every level a PNG or WebP whose header promises
more than ``shards.imageinfo.MAX_PIXELS`` is refused before any decode.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from dataclasses import dataclass
from typing import BinaryIO, Final

import cv2
import numpy as np

from shards import jpegturbo
from shards.format import sniff_image_format
from shards.imageinfo import ImageInfo, image_info, is_complete, pixel_bomb

__all__ = ["VERIFY_LEVELS", "CheckedImage", "ImageRejected", "check_image", "reencode"]

VERIFY_LEVELS = ("decode", "header", "none")

# Pixels as stored: EXIF orientation would swap the sides and fail the size check.
_CHECK_FLAGS: Final = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
# fd 2 belongs to the whole process: one capture at a time (see _decode_jpeg).
_FD2_LOCK: Final = threading.Lock()
_LIBJPEG_CORRUPT: Final = re.compile(r"^Corrupt JPEG data: (.*)$", re.MULTILINE)
_TRAILING_JUNK: Final = re.compile(r"extraneous bytes before marker 0xd9", re.IGNORECASE)


class ImageRejected(ValueError):
    """An image that fails its check; the message is the reason recorded in ``skipped``."""


@dataclass(frozen=True)
class CheckedImage:
    """The bytes to store, their sniffed format and what the header says (``None`` if unread)."""

    data: bytes
    format: str
    info: ImageInfo | None


def check_image(data: bytes, verify: str, *, full_decode: bool = False) -> CheckedImage:
    """Check ``data`` at level ``verify``; raises ``ImageRejected`` with the reason.

    ``full_decode`` makes ``decode`` decode every pixel of a JPEG with OpenCV even when the
    1/8-scale scan is available: the reference the scan is tested against.
    """
    fmt = sniff_image_format(data[:16])
    if fmt is None:
        raise ImageRejected("not an image: content is not JPEG, PNG or WebP")
    info = image_info(data)
    bomb = pixel_bomb(info)
    if bomb is not None:
        raise ImageRejected(f"too many pixels: {bomb}")
    if verify == "none":
        return CheckedImage(data, fmt, info)
    if info is None:
        raise ImageRejected(f"corrupt {fmt.upper()} header")
    if not is_complete(data):
        raise ImageRejected(f"truncated {fmt.upper()}: the end-of-image marker is missing")
    if verify == "decode":
        if fmt == "jpg" and not full_decode and jpegturbo.available():
            _scan_jpeg(data, info)
            return CheckedImage(data, fmt, info)
        if fmt == "jpg":
            pixels, damage = _decode_jpeg(data)
            if damage:
                raise ImageRejected(f"corrupt JPG: {damage}")
        else:
            pixels = cv2.imdecode(np.frombuffer(data, np.uint8), _CHECK_FLAGS)
        if pixels is None:
            raise ImageRejected(f"undecodable {fmt.upper()}: OpenCV could not decode it")
        if pixels.shape[:2] != (info.height, info.width):
            raise ImageRejected(
                f"corrupt {fmt.upper()}: header says {info.width}x{info.height}, "
                f"decoded {pixels.shape[1]}x{pixels.shape[0]}"
            )
    return CheckedImage(data, fmt, info)


def _damage(first_warning: str) -> str | None:
    """libjpeg's first warning as damage (its text after "Corrupt JPEG data: "), or ``None``:
    leftover bytes before the end-of-image marker, after every pixel, are not damage."""
    found = _LIBJPEG_CORRUPT.match(first_warning)
    if found is None or _TRAILING_JUNK.search(found.group(1)):
        return None
    return found.group(1)


def _scan_jpeg(data: bytes, info: ImageInfo) -> None:
    """Reject ``data`` as the full decode would, from a 1/8-scale pass over every block."""
    try:
        scan = jpegturbo.scan_jpeg(data)
    except jpegturbo.JpegError:
        raise ImageRejected("undecodable JPG: libjpeg could not decode it") from None
    if scan.ran_out:
        raise ImageRejected("undecodable JPG: the data ends before the image does")
    damage = _damage(scan.first_warning) if scan.warnings else None
    if damage:
        raise ImageRejected(f"corrupt JPG: {damage}")
    expected = (jpegturbo.scaled_size(info.width, 1), jpegturbo.scaled_size(info.height, 1))
    if (scan.width, scan.height) != expected:
        raise ImageRejected(
            f"corrupt JPG: header says {info.width}x{info.height}, decoded "
            f"{scan.width}x{scan.height} at 1/8 scale"
        )


def _decode_jpeg(data: bytes) -> tuple[np.ndarray | None, str | None]:
    """Decode a JPEG with OpenCV; also returns libjpeg's damage warning, if any.

    libjpeg reports damaged scan data only as a warning on stderr and fills the missing pixels
    with grey, so its text is the only sign of the damage. For the call, fd 2 is redirected to
    an anonymous file under ``_FD2_LOCK`` (threads of this process are serialised; other
    output written to fd 2 meanwhile is copied back afterwards). Bytes left over before the
    end-of-image marker, after every pixel was decoded, are not damage.
    """
    with _FD2_LOCK, _anonymous_file() as capture:
        saved = os.dup(2)
        try:
            os.dup2(capture.fileno(), 2)
            pixels = cv2.imdecode(np.frombuffer(data, np.uint8), _CHECK_FLAGS)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        text = capture.read().decode("utf-8", "replace")
    damage = [m for m in _LIBJPEG_CORRUPT.findall(text) if not _TRAILING_JUNK.search(m)]
    rest = _LIBJPEG_CORRUPT.sub("", text).strip()
    if rest:
        os.write(2, (rest + "\n").encode())
    return pixels, damage[0] if damage else None


def _anonymous_file() -> BinaryIO:
    if hasattr(os, "memfd_create"):
        return open(os.memfd_create("shardfeed-fd2"), "w+b")
    return tempfile.TemporaryFile()


def reencode(data: bytes, max_side: int, quality: int) -> CheckedImage:
    """Decode, shrink so the longer side is at most ``max_side``, and re-encode as JPEG.

    Images already small enough are re-encoded too, so every stored image has one quality.
    Raises ``ImageRejected`` for bytes OpenCV cannot decode.
    """
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if pixels is None:
        raise ImageRejected("undecodable image: OpenCV could not decode it for re-encoding")
    height, width = pixels.shape[:2]
    scale = max_side / max(height, width)
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ImageRejected("re-encoding to JPEG failed")
    out = buf.tobytes()
    return CheckedImage(out, "jpg", ImageInfo("jpg", pixels.shape[1], pixels.shape[0], 3))
