"""One decode step: image bytes in, a uint8 ``[S, S, 3]`` RGB crop written into a caller's array.

Decoding is a pluggable step (docs/architecture.md, "Loader"): the batch builder calls any
``Decoder`` with the sample's bytes, a view of its batch slot and the worker's random generator.
Two decoders:

- ``ImageDecoder`` decodes with OpenCV (which releases the GIL), crops and resizes straight into
  the slot. Training uses torchvision's ``RandomResizedCrop`` semantics plus a random horizontal
  flip; evaluation takes the standard ImageNet centre crop (shorter side to ``S / 0.875``, then
  the central ``S x S``), done as one crop-then-resize of the source.
- ``NoDecode`` (``--decode none``) only checks the magic bytes and touches every page of the
  buffer, so a benchmark measures the pipeline without decoding.

A decoder may also decode on the device (``decodes_on_device``; ``loader.device.decoder``): the
worker then only draws the crop (``ImageDecoder.draw``) and ships the bytes, and the device, or
its CPU fallback (``ImageDecoder.decode_crop``), decodes with that crop.

Pixels are taken as stored: EXIF orientation is ignored, as PIL and ``torchvision.io`` do by
default, so the header size is the decoded size and a future GPU decoder gives the same crop.
Given the generator's state, the output is deterministic.
"""

from __future__ import annotations

import os
from typing import Final, Protocol

import cv2
import numpy as np

from loader.crop import (
    CropBox,
    center_crop,
    check_range,
    decode_crop,
    random_resized_crop,
    rescale_box,
)
from loader.crop import available as jpeg_crop_available
from shards.format import sniff_image_format
from shards.imageinfo import image_info, pixel_bomb
from shards.jpegturbo import JpegError

__all__ = [
    "CropBox",
    "DecodeError",
    "Decoder",
    "ImageDecoder",
    "NoDecode",
    "center_crop",
    "decode_full",
    "eval_transform",
    "random_resized_crop",
    "rescale_box",
    "train_transform",
]


def _stop_opencv_threads_across_fork() -> None:
    """Make every ``fork`` of this process leave OpenCV's thread pool usable in the child.

    A child forked while the parent's pool has threads inherits a pool whose threads do not
    exist, and ``cv2.setNumThreads`` there (``WorkerInit``, the bench's limit processes) waits
    for them forever. So just before each fork the parent's pool is stopped (one thread), and
    just after it, in the parent, it is set back to its size. Runs once, when this module is
    first imported; the saved size lives in this closure, one entry per fork in progress.
    """
    saved: list[int] = []

    def before() -> None:
        saved.append(cv2.getNumThreads())
        cv2.setNumThreads(1)

    def after_in_parent() -> None:
        cv2.setNumThreads(saved.pop())

    def after_in_child() -> None:
        saved.clear()

    os.register_at_fork(
        before=before, after_in_parent=after_in_parent, after_in_child=after_in_child
    )


_stop_opencv_threads_across_fork()

_PAGE: Final = 4096
_JPEG_MAGIC: Final = b"\xff\xd8\xff"
_FULL_FLAGS: Final = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
_REDUCED_FLAGS: Final = (
    (8, cv2.IMREAD_REDUCED_COLOR_8 | cv2.IMREAD_IGNORE_ORIENTATION),
    (4, cv2.IMREAD_REDUCED_COLOR_4 | cv2.IMREAD_IGNORE_ORIENTATION),
    (2, cv2.IMREAD_REDUCED_COLOR_2 | cv2.IMREAD_IGNORE_ORIENTATION),
)


class DecodeError(ValueError):
    """The bytes are not an image this decoder can read."""


class Decoder(Protocol):
    """Writes one sample into ``out`` and returns the number of source bytes it consumed.

    ``image_size`` is the side of the square ``out`` it fills (0: it writes no pixels, and
    ``out`` may have any shape). On bytes it cannot read it raises ``DecodeError``; ``out`` and
    how much was drawn from ``rng`` are then unspecified (but the same for the same bytes and
    generator state). It must be safe to call from several threads with different ``out`` and
    ``rng``.
    """

    @property
    def image_size(self) -> int: ...

    def __call__(
        self, data: bytes | memoryview, out: np.ndarray, rng: np.random.Generator
    ) -> int: ...


class ImageDecoder:
    """Decodes JPEG/PNG/WebP bytes with OpenCV into a uint8 ``[S, S, 3]`` RGB array.

    Any input comes out as 8-bit 3-channel RGB: grayscale and CMYK JPEGs are converted, PNG alpha
    is dropped, 16-bit PNGs are scaled to 8 bits, palettes are expanded. With ``reduced_decode``
    a JPEG whose crop is at least 2, 4 or 8 times the output side (in both dimensions) is decoded
    at 1/2, 1/4 or 1/8 scale by libjpeg's DCT scaling, which is faster and still downscales.
    With ``partial_decode`` too (and ``shards/_jpegturbo`` built), a JPEG is decoded at that
    same scale but only over the crop's rows and iMCU columns (``loader.crop``); the box
    is drawn from the header before either path runs, so it does not depend on which one does.
    It keeps no per-call state, so one instance may serve many threads.
    """

    def __init__(
        self,
        image_size: int,
        *,
        train: bool,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        interpolation: int = cv2.INTER_LINEAR,
        reduced_decode: bool = True,
        partial_decode: bool = True,
    ) -> None:
        if image_size < 1:
            raise ValueError(f"expected image_size >= 1, got image_size={image_size}")
        check_range("scale", scale, 1.0)
        check_range("ratio", ratio, None)
        self._size = image_size
        self.train = train
        self.scale = scale
        self.ratio = ratio
        self.interpolation = interpolation
        self.reduced_decode = reduced_decode
        self.partial_decode = partial_decode

    @property
    def image_size(self) -> int:
        return self._size

    def __repr__(self) -> str:
        mode = "train" if self.train else "eval"
        return (
            f"ImageDecoder({self._size}, {mode}, reduced_decode={self.reduced_decode}, "
            f"partial_decode={self.partial_decode})"
        )

    def _box(self, width: int, height: int, rng: np.random.Generator) -> CropBox:
        if self.train:
            return random_resized_crop(width, height, rng, self.scale, self.ratio)
        return center_crop(width, height, self._size)

    def __call__(self, data: bytes | memoryview, out: np.ndarray, rng: np.random.Generator) -> int:
        """Decode ``data`` into ``out`` (uint8 ``[S, S, 3]``, C-contiguous); return ``len(data)``.

        Draws from ``rng`` only in training mode: the crop, then one draw for the flip.
        Raises ``DecodeError`` when OpenCV cannot decode the bytes, or without decoding when
        a PNG or WebP header promises more than ``shards.imageinfo.MAX_PIXELS``.
        """
        s = self._size
        self._check_out(out)
        buf = np.frombuffer(data, np.uint8)
        size = _jpeg_size(data) if self.reduced_decode else None
        rgb: np.ndarray | None = None
        if size is not None:
            box = self._box(size[0], size[1], rng)
            rgb = self._partial(data, size, box)
            if rgb is None:
                flags = next(
                    (f for k, f in _REDUCED_FLAGS if min(box.height, box.width) >= k * s),
                    _FULL_FLAGS,
                )
                image = _imdecode(buf, flags)
                box = rescale_box(box, size, image.shape[1], image.shape[0])
        else:
            bomb = pixel_bomb(image_info(data))
            if bomb is not None:
                raise DecodeError(f"not decoded: {bomb}")
            image = _imdecode(buf, _FULL_FLAGS)
            box = self._box(image.shape[1], image.shape[0], rng)
        flip = self.train and rng.random() < 0.5
        if rgb is not None:
            cv2.resize(rgb, (s, s), dst=out, interpolation=self.interpolation)
            if flip:
                cv2.flip(out, 1, dst=out)
        else:
            self._crop_into(image, box, out, flip)
        return len(buf)

    def draw(self, width: int, height: int, rng: np.random.Generator) -> tuple[CropBox, bool]:
        """The crop box and flip that ``__call__`` draws for a ``width x height`` image: the
        same draws from ``rng`` in the same order, without decoding (a device decoder's worker
        half draws here and ships the result)."""
        return self._box(width, height, rng), self.train and rng.random() < 0.5

    def decode_crop(
        self, data: bytes | memoryview, out: np.ndarray, box: CropBox, flip: bool
    ) -> int:
        """Decode ``data`` into ``out`` with a given crop (``box`` in full-size source pixels, as
        ``draw`` gives it) and flip; draws nothing. Reduced decode applies as in ``__call__``.
        Raises ``DecodeError`` as ``__call__`` does, and ``ValueError`` for a box outside the
        image."""
        s = self._size
        self._check_out(out)
        buf = np.frombuffer(data, np.uint8)
        size = _jpeg_size(data) if self.reduced_decode else None
        flags = _FULL_FLAGS
        if size is not None:
            flags = next(
                (f for k, f in _REDUCED_FLAGS if min(box.height, box.width) >= k * s), _FULL_FLAGS
            )
        image = _imdecode(buf, flags)
        full = size or (image.shape[1], image.shape[0])
        if not (0 <= box.top and 0 <= box.left and 0 < box.height and 0 < box.width) or (
            box.top + box.height > full[1] or box.left + box.width > full[0]
        ):
            raise ValueError(f"expected a crop box inside the {full[0]}x{full[1]} image, got {box}")
        if size is not None:
            box = rescale_box(box, size, image.shape[1], image.shape[0])
        self._crop_into(image, box, out, flip)
        return len(buf)

    def _check_out(self, out: np.ndarray) -> None:
        s = self._size
        if out.shape != (s, s, 3) or out.dtype != np.uint8 or not out.flags.c_contiguous:
            raise ValueError(
                f"expected a C-contiguous uint8 out of shape {(s, s, 3)}, got shape={out.shape} "
                f"dtype={out.dtype} c_contiguous={out.flags.c_contiguous}"
            )

    def _crop_into(self, image: np.ndarray, box: CropBox, out: np.ndarray, flip: bool) -> None:
        """Resize ``box`` of the BGR ``image`` into ``out`` as RGB, mirrored when ``flip``."""
        s = self._size
        crop = image[box.top : box.top + box.height, box.left : box.left + box.width]
        cv2.resize(crop, (s, s), dst=out, interpolation=self.interpolation)
        cv2.cvtColor(out, cv2.COLOR_BGR2RGB, dst=out)
        if flip:
            cv2.flip(out, 1, dst=out)

    def _partial(
        self, data: bytes | memoryview, size: tuple[int, int], box: CropBox
    ) -> np.ndarray | None:
        """The crop's RGB pixels from ``loader.crop`` (same scale as the OpenCV path), or
        ``None`` when it is off, not built, or libjpeg declines (CMYK, damaged headers)."""
        if not self.partial_decode or not jpeg_crop_available():
            return None
        try:
            return decode_crop(data, size, box, self._size)
        except JpegError:
            return None


def decode_full(data: bytes | memoryview) -> np.ndarray:
    """The whole image as a new uint8 ``[H, W, 3]`` RGB array, pixels as stored (for transforms
    that crop themselves: ``loader.transforms.FullImage``). Raises ``DecodeError`` as
    ``ImageDecoder.__call__`` does, a PNG or WebP pixel bomb included."""
    bomb = pixel_bomb(image_info(data))
    if bomb is not None:
        raise DecodeError(f"not decoded: {bomb}")
    image = _imdecode(np.frombuffer(data, np.uint8), _FULL_FLAGS)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _imdecode(buf: np.ndarray, flags: int) -> np.ndarray:
    image: np.ndarray | None
    try:
        image = cv2.imdecode(buf, flags) if buf.size else None
    except cv2.error:
        image = None
    if image is None:
        head = bytes(buf[:8])
        raise DecodeError(
            f"expected JPEG, PNG or WebP image bytes OpenCV can decode, "
            f"got {buf.size} bytes starting {head!r}"
        )
    return image


class NoDecode:
    """The ``--decode none`` step: checks the magic bytes, touches each 4 KiB page, decodes nothing.

    Touching a byte per page makes a memory-mapped buffer resident, as a decoder's read would,
    without the cost of decoding. ``out`` is left as it is (the batch builder passes a
    zero-sized view). Bytes that do not start like a JPEG, PNG or WebP raise ``DecodeError``, so
    the bad-sample policy still sees unreadable members; deeper corruption goes unnoticed.
    """

    @property
    def image_size(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "NoDecode()"

    def __call__(self, data: bytes | memoryview, out: np.ndarray, rng: np.random.Generator) -> int:
        """Return ``len(data)`` after touching its pages; draws nothing from ``rng``.

        Works on a flat byte ``memoryview`` (a strided copy of one byte per page), which costs
        a third of going through a NumPy array: this step is what ``--decode none`` measures.
        """
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        if view[:3] != _JPEG_MAGIC and sniff_image_format(bytes(view[:12])) is None:
            raise DecodeError(
                f"expected JPEG, PNG or WebP image bytes, got {view.nbytes} bytes "
                f"starting {bytes(view[:8])!r}"
            )
        bytes(view[::_PAGE])
        return view.nbytes


def train_transform(
    image_size: int,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    interpolation: int = cv2.INTER_LINEAR,
    reduced_decode: bool = True,
) -> ImageDecoder:
    """The training decoder: random resized crop to ``image_size``, then a random flip."""
    return ImageDecoder(
        image_size,
        train=True,
        scale=scale,
        ratio=ratio,
        interpolation=interpolation,
        reduced_decode=reduced_decode,
    )


def eval_transform(
    image_size: int, *, interpolation: int = cv2.INTER_LINEAR, reduced_decode: bool = True
) -> ImageDecoder:
    """The evaluation decoder: the ImageNet centre crop at ``image_size``; draws no randomness."""
    return ImageDecoder(
        image_size, train=False, interpolation=interpolation, reduced_decode=reduced_decode
    )


def _jpeg_size(data: bytes | memoryview) -> tuple[int, int] | None:
    info = image_info(data)
    return (info.width, info.height) if info is not None and info.format == "jpg" else None
