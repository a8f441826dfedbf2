"""Crop geometry: RandomResizedCrop and ImageNet's eval crop as source boxes, their mapping onto
reduced-scale decodes, and the partial JPEG decode of just the crop (docs/architecture.md,
"Loader").

``RandomResizedCrop`` keeps a fraction of the image and scales it to ``S`` pixels, so a full
decode produces mostly pixels that are thrown away. ``decode_crop`` asks libjpeg-turbo
(``shards.jpegturbo``) for just the crop: at the coarsest DCT scale ``M/8`` (M = 1, 2, 4, 8)
that keeps the crop's shorter side at least ``S`` pixels, only the crop's rows (rows above skip
the IDCT, rows below are never read) and only the iMCU columns that cover it. The crop box is
drawn by the caller before this is called, from the header's size, so it does not depend on how
it is decoded.
"""

from __future__ import annotations

import math
from typing import Final, NamedTuple

import numpy as np

from shards.jpegturbo import JpegError, available, decode_region, scaled_size

__all__ = [
    "EVAL_CROP_FRACTION",
    "CropBox",
    "available",
    "center_crop",
    "check_range",
    "decode_crop",
    "pick_scale",
    "random_resized_crop",
    "rescale_box",
]

EVAL_CROP_FRACTION: Final = 0.875


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


class CropBox(NamedTuple):
    """A source-pixel rectangle: rows ``top:top+height``, columns ``left:left+width``."""

    top: int
    left: int
    height: int
    width: int


def random_resized_crop(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> CropBox:
    """torchvision's ``RandomResizedCrop.get_params``, drawing from ``rng``.

    Ten tries at an area fraction uniform in ``scale`` and an aspect ratio log-uniform in
    ``ratio``; if none fits, the largest centred crop whose aspect ratio lies in ``ratio``.
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return CropBox(top, left, h, w)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return CropBox((height - h) // 2, (width - w) // 2, max(h, 1), max(w, 1))


def center_crop(width: int, height: int, image_size: int) -> CropBox:
    """The source square that ImageNet evaluation keeps: ``Resize(int(S / 0.875))`` then
    ``CenterCrop(S)``, expressed as one crop of the source (exact up to sub-pixel placement)."""
    resize_to = int(image_size / EVAL_CROP_FRACTION)
    side = max(1, min(round(image_size * min(width, height) / resize_to), width, height))
    return CropBox(int(round((height - side) / 2)), int(round((width - side) / 2)), side, side)


def check_range(name: str, value: tuple[float, float], upper: float | None) -> None:
    lo, hi = value
    if not (0 < lo <= hi and (upper is None or hi <= upper)):
        bound = f" <= {upper}" if upper is not None else ""
        raise ValueError(f"expected 0 < {name}[0] <= {name}[1]{bound}, got {name}={value}")


def rescale_box(box: CropBox, size: tuple[int, int], width: int, height: int) -> CropBox:
    """Map a box in a ``size`` (width, height) image onto the same region of a ``width x height``
    image (a reduced-scale decode of it), at least one pixel each way."""
    sx, sy = width / size[0], height / size[1]
    top = min(int(round(box.top * sy)), height - 1)
    left = min(int(round(box.left * sx)), width - 1)
    bottom = min(max(int(round((box.top + box.height) * sy)), top + 1), height)
    right = min(max(int(round((box.left + box.width) * sx)), left + 1), width)
    return CropBox(top, left, bottom - top, right - left)
