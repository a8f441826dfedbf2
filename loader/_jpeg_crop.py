"""Partial JPEG decode for training crops (docs/architecture.md, "Loader").

``RandomResizedCrop`` keeps a fraction of the image and scales it to ``S`` pixels, so a full
decode produces mostly pixels that are thrown away. ``decode_crop`` asks libjpeg-turbo
(``shards.jpegturbo``) for just the crop: at the coarsest DCT scale ``M/8`` (M = 1, 2, 4, 8)
that keeps the crop's shorter side at least ``S`` pixels, only the crop's rows (rows above skip
the IDCT, rows below are never read) and only the iMCU columns that cover it. The crop box is
drawn by the caller before this is called, from the header's size, so it does not depend on how
it is decoded.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from shards.jpegturbo import JpegError, available, decode_region, scaled_size

__all__ = ["available", "decode_crop", "pick_scale"]


_SCALES: Final = (1, 2, 4)
# Bytes at the end searched for the end-of-image marker (writers may append a little padding).
_TAIL: Final = 64


def pick_scale(crop_height: int, crop_width: int, image_size: int) -> int:
    """The smallest ``M`` of 1, 2, 4 whose ``M/8`` scale keeps the crop's shorter side at least
    ``image_size`` pixels, else 8 (full size): the scale ``loader.decode`` picks for OpenCV.

    Only these scales have libjpeg-turbo's SIMD IDCT; the others (3/8, 5/8, ...) are plain C,
    and measured slower overall on the bench sample than decoding at the next power of two.
    """
    side = min(crop_height, crop_width)
    return next((m for m in _SCALES if side * m >= 8 * image_size), 8)


def decode_crop(
    data: bytes | memoryview, size: tuple[int, int], box: tuple[int, int, int, int], image_size: int
) -> np.ndarray:
    """RGB pixels of ``box`` (``top, left, height, width`` in the ``size = (width, height)``
    image) decoded at ``pick_scale``'s scale, as an ``[h, w, 3]`` view. The box maps onto the
    scaled image by rounding its edges, as ``loader.decode`` maps boxes onto OpenCV's reduced
    decodes. Raises ``shards.jpegturbo.JpegError`` when libjpeg cannot decode it to RGB, meets
    damage, or the bytes do not end with an end-of-image marker (a truncated file, whose missing
    rows may lie below the crop and so never be read)."""
    if bytes(memoryview(data)[-_TAIL:]).rfind(b"\xff\xd9") < 0:
        raise JpegError("truncated JPEG: no end-of-image marker near the end")
    top, left, height, width = box
    m = pick_scale(height, width, image_size)
    sw, sh = scaled_size(size[0], m), scaled_size(size[1], m)
    s_top = min(int(round(top * sh / size[1])), sh - 1)
    s_left = min(int(round(left * sw / size[0])), sw - 1)
    s_bottom = min(max(int(round((top + height) * sh / size[1])), s_top + 1), sh)
    s_right = min(max(int(round((left + width) * sw / size[0])), s_left + 1), sw)
    return decode_region(data, m, s_top, s_left, s_bottom - s_top, s_right - s_left)
