"""Photo-like synthetic images with a learnable per-class signature (private to shards.sample).

An image is two crossed sinusoid gratings (class orientation and frequency, per-image jitter,
smoothly modulated amplitude), mid-scale value noise and per-pixel grain, mildly blurred, laid
over a smooth colour layer (class palette, soft-edged regions, shading) and JPEG-encoded.

The bytes of an image are a pure function of ``(seed, image index, class style, size)``: nothing
depends on the process, the order of rendering or the scratch buffers reused. Byte identity is
promised on one machine with one set of library builds; NumPy and OpenCV pick SIMD kernels per
CPU, so float rounding may differ between CPUs.

Speed matters (ImageNet-size images at hundreds per second per core): full-size work is a few
vectorised passes into buffers reused across images, because page-faulting fresh buffers in
costs as much as the arithmetic.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from typing import Final

import cv2
import numpy as np

__all__ = [
    "SIZES",
    "Canvas",
    "ClassStyle",
    "class_style",
    "image_rng",
    "image_shape",
    "render_jpeg",
]

SIZES: Final = ("imagenet", "small", "tiny")
GOLDEN: Final = 0.6180339887498949
_IMAGE_STREAM: Final = 0
_CLASS_STREAM: Final = 1


@dataclass(frozen=True)
class ClassStyle:
    """What makes a class recognisable: palette and grating geometry."""

    base: tuple[float, float, float]  # BGR, 0-255: the dominant colour
    grating_colour: tuple[float, float, float]  # BGR: per-channel weight of the detail plane
    blob_colour: tuple[float, float, float]  # BGR: colour swing between regions
    angle: float  # radians, orientation of the first grating
    spread: float  # radians between the two gratings
    frequency: float  # cycles per pixel of the first grating
    ratio: float  # frequency of the second grating over the first


class Canvas:
    """Scratch buffers reused from image to image, grown on demand.

    Not thread-safe: one canvas per thread (or process). Arrays it hands out are views that the
    next ``take`` of the same name overwrites.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    def take(self, name: str, shape: tuple[int, ...], dtype: type[np.generic]) -> np.ndarray:
        """A C-contiguous uninitialised array of ``shape`` backed by buffer ``name``."""
        count = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.size < count or buf.dtype != dtype:
            buf = np.empty(count, dtype=dtype)
            self._buffers[name] = buf
        return buf[:count].reshape(shape)


def _bgr(hue: float, sat: float, val: float) -> tuple[float, float, float]:
    r, g, b = colorsys.hsv_to_rgb(float(hue) % 1.0, float(sat), float(val))
    return (b * 255.0, g * 255.0, r * 255.0)


def class_style(seed: int, index: int) -> ClassStyle:
    """The style of class ``index``: hues step by the golden ratio, so neighbours differ most."""
    offset = float(np.random.default_rng(np.random.SeedSequence([seed, _CLASS_STREAM])).random())
    u = np.random.default_rng(np.random.SeedSequence([seed, _CLASS_STREAM, index])).random(8)
    hue = offset + index * GOLDEN
    return ClassStyle(
        base=_bgr(hue, 0.45 + 0.35 * u[0], 0.35 + 0.25 * u[1]),
        grating_colour=_bgr(hue + 0.08 + 0.1 * u[2], 0.6, 0.45),
        blob_colour=_bgr(hue + 0.5 + 0.2 * (u[3] - 0.5), 0.7, 0.35),
        angle=float((index * GOLDEN * math.pi + u[4] * 0.3) % math.pi),
        spread=float(math.pi / 3 + u[5] * math.pi / 3),
        frequency=float(0.03 * 2.0 ** (3.0 * u[6])),
        ratio=float(1.5 + u[7]),
    )


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The generator that renders image ``index``; independent of every other image's."""
    return np.random.default_rng(np.random.SeedSequence([seed, _IMAGE_STREAM, index]))


def image_shape(rng: np.random.Generator, size: str) -> tuple[int, int]:
    """(height, width) drawn from the size family: the first draw of an image's generator
    (``image_rng``), so ``image_shape(image_rng(seed, i), size)`` is image ``i``'s shape."""
    if size == "imagenet":
        pick = rng.random()
        if pick < 0.55:
            return 375, 500
        if pick < 0.7:
            return 500, 375
        h, w = rng.integers(300, 601, size=2)
        return int(h), int(w)
    lo, hi = (64, 96) if size == "small" else (32, 48)
    h, w = rng.integers(lo, hi + 1, size=2)
    return int(h), int(w)


def _wrote(result: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """``dst``, once sure an OpenCV call wrote into it rather than into a new array.

    OpenCV silently allocates a fresh output when ``dst`` has another shape or depth (a float64
    source, say), which would leave the canvas buffer stale and the image wrong.
    """
    if result is not dst:
        raise RuntimeError(
            f"expected OpenCV to write into a {dst.dtype}{dst.shape} buffer, got a new "
            f"{result.dtype}{result.shape} array"
        )
    return dst


def _grid(rng: np.random.Generator, h: int, w: int, cell: float, channels: int) -> np.ndarray:
    """Standard normal ``(rows, cols, channels)`` values on a lattice, a node every ``cell`` px."""
    shape = (max(2, math.ceil(h / cell) + 1), max(2, math.ceil(w / cell) + 1), channels)
    return rng.standard_normal(shape, dtype=np.float32)


def _profile(rng: np.random.Generator, n: int, cell: float) -> np.ndarray:
    """A smooth positive 1-d amplitude profile of length ``n``."""
    knots = rng.standard_normal(max(2, math.ceil(n / cell) + 1), dtype=np.float32)
    line = cv2.resize(knots[None, :], (n, 1), interpolation=cv2.INTER_LINEAR)[0]
    return 1.0 + 0.45 * line


def _gratings(
    style: ClassStyle, rng: np.random.Generator, j: np.ndarray, out: np.ndarray
) -> np.ndarray:
    """Two crossed gratings, each amplitude-modulated by smooth separable profiles, into ``out``.

    ``a(y) b(x) sin(kx x + ky y + p)`` is ``[a sin(ky y)] [b cos(kx x + p)] + [a cos(ky y)]
    [b sin(kx x + p)]``, so the whole field is one ``(h, 4) x (4, w)`` product.
    """
    h, w = out.shape
    ys = np.arange(h, dtype=np.float64)
    xs = np.arange(w, dtype=np.float64)
    left = np.empty((h, 4), dtype=np.float32)
    right = np.empty((4, w), dtype=np.float32)
    freq = style.frequency * (0.8 + 0.45 * j[1])
    waves = (
        (style.angle + (j[0] - 0.5) * 0.35, freq, j[2] * 2 * math.pi, 1.0),
        (style.angle + style.spread, freq * style.ratio, j[3] * 2 * math.pi, 0.7),
    )
    for i, (angle, f, phase, amp) in enumerate(waves):
        k = 2.0 * math.pi * f
        py = ys * (k * math.sin(angle))
        px = xs * (k * math.cos(angle)) + phase
        ay = amp * _profile(rng, h, 70.0)
        bx = _profile(rng, w, 70.0)
        left[:, 2 * i] = ay * np.sin(py)
        left[:, 2 * i + 1] = ay * np.cos(py)
        right[2 * i] = bx * np.cos(px)
        right[2 * i + 1] = bx * np.sin(px)
    return np.einsum("ik,kj->ij", left, right, out=out)


def _detail(
    style: ClassStyle, rng: np.random.Generator, j: np.ndarray, canvas: Canvas, h: int, w: int
) -> np.ndarray:
    """The full-size texture plane (roughly zero-mean, unit amplitude), in canvas ``"detail"``."""
    detail = _gratings(style, rng, j, canvas.take("detail", (h, w), np.float32))
    work = canvas.take("work", (h, w), np.float32)
    mid = _grid(rng, h, w, 3.0, 1)[..., 0]
    _wrote(cv2.resize(mid, (w, h), dst=work, interpolation=cv2.INTER_LINEAR), work)
    np.add(detail, work, out=detail)
    rng.random(out=work, dtype=np.float32)
    grain = 2.2 + 1.6 * float(j[10])
    _wrote(cv2.addWeighted(detail, 1.0, work, grain, -grain / 2, dst=detail), detail)
    _wrote(cv2.GaussianBlur(detail, (0, 0), 0.4 + 0.25 * float(j[11]), dst=work), work)
    np.copyto(detail, work)
    return detail


def _render(
    style: ClassStyle, rng: np.random.Generator, h: int, w: int, canvas: Canvas
) -> np.ndarray:
    """A ``(h, w, 3)`` uint8 BGR image of the class, varied by ``rng``, in canvas ``"image"``.

    The detail plane is added to every channel with a per-channel weight; colour (palette,
    regions with soft edges, shading) varies slowly, so it is built at quarter size and
    stretched linearly.
    """
    j = rng.random(13)
    detail = _detail(style, rng, j, canvas, h, w)

    quarter = (max(2, w // 4), max(2, h // 4))
    lattice = _grid(rng, h, w, max(h, w) * (0.08 + 0.12 * float(j[4])), 3)
    lattice = cv2.resize(lattice, quarter, interpolation=cv2.INTER_CUBIC)
    region = np.tanh(2.5 * lattice[..., 0])
    shade = lattice[..., 1] * (10.0 + 15.0 * float(j[12]))
    coarse = lattice[..., 2]
    contrast = 30.0 + 20.0 * float(j[5])
    peak = float(max(style.grating_colour))
    brightness = (float(j[6]) - 0.5) * 50.0
    smooth = canvas.take("smooth", (h, w), np.float32)
    planes = []
    for c in range(3):
        weight = contrast * (0.5 + 0.5 * float(style.grating_colour[c]) / peak)
        colour = region * np.float32(0.45 * style.blob_colour[c])
        colour += shade
        colour += coarse * np.float32(0.6 * weight)
        colour += np.float32(style.base[c] + brightness + (float(j[7 + c]) - 0.5) * 24.0)
        _wrote(cv2.resize(colour, (w, h), dst=smooth, interpolation=cv2.INTER_LINEAR), smooth)
        plane = canvas.take(f"plane{c}", (h, w), np.uint8)
        mixed = cv2.addWeighted(smooth, 1.0, detail, weight, 0.0, dst=plane, dtype=cv2.CV_8U)
        planes.append(_wrote(mixed, plane))
    image = canvas.take("image", (h, w, 3), np.uint8)
    return _wrote(cv2.merge(planes, dst=image), image)


def render_jpeg(
    seed: int, image_index: int, style: ClassStyle, size: str, canvas: Canvas | None = None
) -> bytes:
    """JPEG bytes of image ``image_index`` of a build with ``seed``; same inputs, same bytes.

    ``canvas`` only saves allocations; the bytes do not depend on it.
    """
    rng = image_rng(seed, image_index)
    h, w = image_shape(rng, size)
    quality = int(rng.integers(85, 96))
    image = _render(style, rng, h, w, canvas if canvas is not None else Canvas())
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"cv2.imencode failed for image_index={image_index} shape={image.shape}")
    return buf.tobytes()
