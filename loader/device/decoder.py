"""Decoding on the device: ``DeviceDecoder`` plans in the worker, decodes on the GPU
(docs/architecture.md, section "Device decode").

One object, two halves:

- the worker half, ``plan``: reads the image header (``shards.imageinfo``), draws the crop box
  and flip from the worker's generator exactly as the CPU decoder would
  (``ImageDecoder.draw``), and flags what the GPU decoder cannot take or would decode to other
  pixels (``cpu_reason``: ``"format"`` for CMYK and other non-RGB JPEGs, 12-bit, progressive,
  PNG, WebP; ``"orientation"`` for a JPEG whose EXIF orientation is not 1, which TorchCodec
  rotates on CUDA while the CPU path and the shard builder keep the pixels as stored).
  ``ByteBatchBuilder`` calls it;
- the device half, ``decode_batch``: decodes a whole ``ByteBatch`` at once with a batched JPEG
  backend (nvJPEG on CUDA, an OpenCV stand-in on the CPU: ``loader.device._jpegbackends``), crops,
  resizes and flips each image on the device, and writes a uint8 ``[B, S, S, 3]`` batch there.
  ``DevicePrefetcher`` calls it, then normalises as for any batch.

Fallbacks, so nothing is lost: flagged samples, and any the backend rejects, are decoded on
the CPU with the same box and flip (``ImageDecoder.decode_crop``). A batch the backend rejects
is re-decoded image by image to find the culprits. Samples that fail there too come back as
``failures`` for the prefetcher's bad-sample policy. Every row is counted where it was decoded
(``DecodeCounts``): on the device, on the CPU by reason, or nowhere.

Resampling on the device is bilinear without antialiasing, as OpenCV's ``INTER_LINEAR`` on the
CPU path; where that path decodes at 1/2, 1/4 or 1/8 scale (a crop at least that many times the
output side), the device path box-averages the crop by the same factor first. The two paths
then differ only by codec rounding and sub-pixel placement.

It is also a plain ``Decoder`` (``__call__`` decodes on the CPU), so it works wherever one does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Protocol

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from loader.crop import CropBox, rescale_box
from loader.decode import DecodeError, ImageDecoder
from loader.device._jpegbackends import JpegBackend, jpeg_backend
from loader.device.bytebatch import ByteBatch, CropPlan, sample_bytes
from shards.imageinfo import image_info

if TYPE_CHECKING:
    from shards.imageinfo import ImageInfo

__all__ = [
    "ROW_COUNTS",
    "BatchDecoder",
    "DecodeCounts",
    "DecodedBatch",
    "DeviceDecoder",
    "cpu_reason",
    "crop_resize",
    "needs_cpu",
]

_REDUCTIONS: Final = (8, 4, 2)
_FULL_FLAGS: Final = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION


def cpu_reason(info: ImageInfo | None) -> str | None:
    """Why the header sends a sample to the CPU decoder, or ``None`` for the device: ``"format"``
    for anything but an 8-bit sequential (baseline or extended Huffman) JPEG with 1 or 3
    components, or a header that cannot be read; ``"orientation"`` for a JPEG whose EXIF
    orientation is not 1 (one sample, one set of pixels, whichever path decodes it)."""
    if info is None or info.format != "jpg":
        return "format"
    if info.progressive or info.bits != 8 or info.channels not in (1, 3):
        return "format"
    return "orientation" if info.orientation != 1 else None


def needs_cpu(info: ImageInfo | None) -> bool:
    """Whether ``cpu_reason`` sends the sample to the CPU decoder."""
    return cpu_reason(info) is not None


ROW_COUNTS: Final = ("device", "orientation", "format", "error", "failed")
"""The keys of ``DecodeCounts.rows()``: each row of a byte batch lands in exactly one."""


@dataclass
class DecodeCounts:
    """Where the rows of byte batches were decoded. Each row is counted once:

    ``device``: by the batched backend; ``orientation``, ``format``: sent to the CPU by their
    header (``cpu_reason``); ``error``: refused by the backend, then decoded on the CPU;
    ``failed``: decoded nowhere (handed to the bad-sample policy). ``retried_batches``: batches
    re-decoded image by image (not rows).
    """

    device: int = 0
    orientation: int = 0
    format: int = 0
    error: int = 0
    failed: int = 0
    retried_batches: int = 0

    @property
    def flagged(self) -> int:
        """Rows the header sent to the CPU."""
        return self.orientation + self.format

    @property
    def rejected(self) -> int:
        """Rows the backend refused that the CPU decoded."""
        return self.error

    def add(self, other: DecodeCounts) -> None:
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)

    def rows(self) -> dict[str, int]:
        """The row counts by where they were decoded (``ROW_COUNTS``)."""
        return {key: getattr(self, key) for key in ROW_COUNTS}

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class DecodedBatch(NamedTuple):
    """``images`` uint8 ``[B, S, S, 3]`` on the device; ``failures`` maps each row decoded
    nowhere to the reason (its pixels are unspecified); ``counts``: this batch's rows by where
    they were decoded."""

    images: torch.Tensor
    failures: dict[int, str]
    counts: DecodeCounts


class BatchDecoder(Protocol):
    """The device half of a decoder that decodes on the device (what ``DevicePrefetcher``
    calls for each ``ByteBatch``)."""

    def decode_batch(self, batch: ByteBatch, device: torch.device) -> DecodedBatch: ...


class DeviceDecoder:
    """Ships compressed bytes from the workers and decodes whole batches on the device.

    ``image_size``, ``train``, ``scale`` and ``ratio`` mean what they mean for ``ImageDecoder``
    (the same crops are drawn). ``backend``: ``"auto"`` (nvJPEG on a CUDA device, the CPU
    stand-in on the CPU), ``"cpu"`` (the stand-in everywhere) or a ``JpegBackend`` object used
    for every device. Picklable (a backend object must be): the backends made here and the
    counts stay in the process that made them. ``decode_batch`` is not thread-safe (one
    consuming thread, as ``DevicePrefetcher``).
    """

    decodes_on_device: Final = True

    def __init__(
        self,
        image_size: int,
        *,
        train: bool,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        backend: str | JpegBackend = "auto",
    ) -> None:
        if isinstance(backend, str) and backend not in ("auto", "cpu"):
            raise ValueError(
                f"expected backend 'auto', 'cpu' or a JpegBackend, got backend={backend!r}"
            )
        self._cpu = ImageDecoder(image_size, train=train, scale=scale, ratio=ratio)
        self.backend = backend
        self.counts = DecodeCounts()
        self._backends: dict[torch.device, JpegBackend] = {}

    @property
    def image_size(self) -> int:
        return self._cpu.image_size

    @property
    def train(self) -> bool:
        return self._cpu.train

    def __repr__(self) -> str:
        mode = "train" if self.train else "eval"
        return f"DeviceDecoder({self.image_size}, {mode}, backend={self.backend!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_backends"], state["counts"] = {}, DecodeCounts()
        return state

    def __call__(self, data: bytes | memoryview, out: np.ndarray, rng: np.random.Generator) -> int:
        """Decode one sample on the CPU (the ``Decoder`` protocol), as ``ImageDecoder`` does."""
        return self._cpu(data, out, rng)

    def plan(self, data: bytes | memoryview, rng: np.random.Generator) -> CropPlan:
        """The worker half: box, flip and route for ``data``, drawing what ``__call__`` would.

        A header the parser cannot read is decoded once here for its size (as the CPU path
        decodes before drawing); bytes OpenCV cannot decode either raise ``DecodeError``.
        """
        info = image_info(data)
        if info is not None:
            width, height = info.width, info.height
        else:
            raw = np.frombuffer(data, np.uint8)
            image = cv2.imdecode(raw, _FULL_FLAGS) if raw.size else None
            if image is None:
                raise DecodeError(
                    f"expected JPEG, PNG or WebP image bytes, got {raw.size} bytes starting "
                    f"{bytes(raw[:8])!r}"
                )
            height, width = image.shape[:2]
        box, flip = self._cpu.draw(width, height, rng)
        return CropPlan(box, flip, cpu_reason(info) is not None)

    def _backend(self, device: torch.device) -> JpegBackend:
        if not isinstance(self.backend, str):
            return self.backend
        backend = self._backends.get(device)
        if backend is None:
            backend = self._backends[device] = jpeg_backend(device, self.backend)
        return backend

    def decode_batch(self, batch: ByteBatch, device: torch.device) -> DecodedBatch:
        """The device half: every sample of ``batch`` decoded, cropped and resized into one
        uint8 ``[B, S, S, 3]`` tensor on ``device`` (on the current stream there). Never
        raises for a bad sample: it is reported in ``failures`` instead."""
        s = self.image_size
        n = len(batch.ids)
        out = torch.empty((n, s, s, 3), dtype=torch.uint8, device=device)
        flagged = batch.cpu.nonzero().flatten().tolist()
        on_device = (~batch.cpu).nonzero().flatten().tolist()
        counts = DecodeCounts()
        rejected = self._decode_on_device(batch, on_device, out, device, counts)
        failures: dict[int, str] = {}
        host = np.empty((s, s, 3), dtype=np.uint8)
        boxes, flips = batch.boxes.tolist(), batch.flips.tolist()
        refused = set(rejected)
        for row in flagged + rejected:
            data = sample_bytes(batch, row)
            try:
                self._cpu.decode_crop(data, host, CropBox(*boxes[row]), flips[row])
            except (DecodeError, ValueError) as exc:
                failures[row] = str(exc)
                counts.failed += 1
                continue
            out[row].copy_(torch.from_numpy(host))
            reason = "error" if row in refused else cpu_reason(image_info(data)) or "format"
            setattr(counts, reason, getattr(counts, reason) + 1)
        counts.device += len(on_device) - len(rejected)
        self.counts.add(counts)
        return DecodedBatch(out, failures, counts)

    def _decode_on_device(
        self,
        batch: ByteBatch,
        rows: list[int],
        out: torch.Tensor,
        device: torch.device,
        counts: DecodeCounts,
    ) -> list[int]:
        """Decode ``rows`` with the backend into ``out``; return the rows it could not do."""
        if not rows:
            return []
        backend = self._backend(device)
        encoded = [batch.data[int(a) : int(b)] for a, b in batch.spans[rows].tolist()]
        try:
            images: list[torch.Tensor | None] = list(backend.decode(encoded))
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, ValueError):
            counts.retried_batches += 1
            images = [_decode_one(backend, stream) for stream in encoded]
        rejected = []
        boxes, flips = batch.boxes.tolist(), batch.flips.tolist()
        for row, image in zip(rows, images, strict=True):
            box = CropBox(*boxes[row])
            if image is None or not _fits(box, image):
                rejected.append(row)
                continue
            out[row] = crop_resize(image.to(device), box, flips[row], self.image_size)
        return rejected


def _decode_one(backend: JpegBackend, stream: torch.Tensor) -> torch.Tensor | None:
    try:
        return backend.decode([stream])[0]
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, ValueError):
        return None


def _fits(box: CropBox, image: torch.Tensor) -> bool:
    _, height, width = image.shape
    return (
        0 <= box.top
        and 0 <= box.left
        and box.height > 0
        and box.width > 0
        and box.top + box.height <= height
        and box.left + box.width <= width
    )


def crop_resize(image: torch.Tensor, box: CropBox, flip: bool, size: int) -> torch.Tensor:
    """``box`` of an RGB uint8 ``[3, H, W]`` image resized to uint8 ``[size, size, 3]`` (HWC),
    mirrored when ``flip``, on the image's device. Where the CPU path would decode at 1/8, 1/4
    or 1/2 scale, the image is box-averaged by that factor (to the same ``ceil`` size) and the
    box mapped onto it as that path maps it (``rescale_box``); then bilinear (half-pixel
    centres, no antialiasing), rounded to the nearest level."""
    pixels = image.unsqueeze(0)
    k = next((k for k in _REDUCTIONS if min(box.height, box.width) >= k * size), 1)
    if k > 1:
        height, width = pixels.shape[-2:]
        pixels = F.avg_pool2d(pixels.float(), k, ceil_mode=True)
        box = rescale_box(box, (width, height), pixels.shape[-1], pixels.shape[-2])
    pixels = pixels[..., box.top : box.top + box.height, box.left : box.left + box.width].float()
    resized = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)
    result = resized[0].round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0)
    return result.flip(1) if flip else result
