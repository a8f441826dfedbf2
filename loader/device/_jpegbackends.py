"""Batched JPEG decoders behind ``loader.device.decoder``: nvJPEG on CUDA, and its CPU stand-in.

A backend turns a list of 1-D uint8 CPU tensors (JPEG streams) into RGB uint8 ``[3, H, W]``
tensors on its device, all or nothing: like nvJPEG's batched decode, a stream it rejects fails
the whole call, and the caller re-decodes per image to find which one.

- ``CudaJpeg``: TorchCodec's ``decode_jpeg`` on the list with ``device="cuda"`` (nvJPEG), or
  ``torchvision.io.decode_jpeg`` where TorchCodec is missing. Both are imported when the first
  ``CudaJpeg`` is made, never at module import: the default install is CPU-only and has
  neither (``pip install 'shardfeed[gpu]'`` brings TorchCodec).
- ``CpuJpegStandIn``: OpenCV on the CPU with the same interface, so the byte batch, the routing
  and every fallback run on machines without a GPU. Beside what OpenCV cannot decode it refuses
  the streams its ``refuse`` predicate picks, as a GPU decoder refuses some streams the CPU
  decodes (tests use it to drive the re-decode and CPU fallback).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Protocol

import cv2
import numpy as np
import torch

from loader.decode import DecodeError

__all__ = ["CpuJpegStandIn", "CudaJpeg", "GpuDecodeUnavailable", "JpegBackend", "jpeg_backend"]

_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION


class GpuDecodeUnavailable(RuntimeError):
    """Neither TorchCodec nor a CUDA-capable torchvision can be imported here."""


class JpegBackend(Protocol):
    """Decodes a list of JPEG streams to RGB uint8 ``[3, H, W]`` tensors on ``device``; raises
    (``RuntimeError`` or ``ValueError``) when any stream fails, returning nothing."""

    name: str
    device: torch.device

    def decode(self, encoded: list[torch.Tensor]) -> list[torch.Tensor]: ...


class CpuJpegStandIn:
    """The CPU stand-in for nvJPEG: OpenCV decodes each stream in turn (pixels as stored, no
    EXIF rotation, like the GPU decoders); a stream OpenCV cannot read, or one ``refuse(bytes)``
    picks, fails the whole call with ``DecodeError``. Picklable when ``refuse`` is."""

    name = "cpu-standin"

    def __init__(
        self,
        device: torch.device | None = None,
        refuse: Callable[[bytes], bool] | None = None,
    ) -> None:
        self.device = device or torch.device("cpu")
        self.refuse = refuse

    def decode(self, encoded: list[torch.Tensor]) -> list[torch.Tensor]:
        images = []
        for i, stream in enumerate(encoded):
            raw = stream.numpy()
            refused = self.refuse is not None and self.refuse(raw.tobytes())
            image = cv2.imdecode(raw, _FLAGS) if raw.size and not refused else None
            if image is None:
                raise DecodeError(
                    f"expected JPEG streams the stand-in decodes, got one it rejects at "
                    f"position {i} of {len(encoded)} ({raw.size} bytes)"
                )
            rgb = np.ascontiguousarray(image[:, :, ::-1].transpose(2, 0, 1))
            images.append(torch.from_numpy(rgb).to(self.device))
        return images


class CudaJpeg:
    """nvJPEG batched decode through TorchCodec (preferred) or torchvision, on a CUDA device.

    Raises ``GpuDecodeUnavailable`` when made where neither imports. Decodes on the caller's
    current CUDA stream, as both libraries do.
    """

    def __init__(self, device: torch.device) -> None:
        if device.type != "cuda":
            raise ValueError(f"expected a CUDA device for nvJPEG, got device={device}")
        self.device = device
        self.name, self._decode, self._mode = _import_decode_jpeg()
        self.batched = True

    def decode(self, encoded: list[torch.Tensor]) -> list[torch.Tensor]:
        """One batched call; where the library takes no list (a ``TypeError``), one call per
        stream from then on (``batched`` turns false)."""
        if not encoded:
            return []
        decoded: Any = None
        if self.batched:
            try:
                decoded = self._decode(encoded, device=self.device, **self._mode)
            except TypeError:
                self.batched = False
        if not self.batched:
            decoded = [self._decode(e, device=self.device, **self._mode) for e in encoded]
        images = list(decoded) if isinstance(decoded, list | tuple) else [decoded]
        if len(images) != len(encoded):
            raise RuntimeError(
                f"expected {len(encoded)} images from {self.name}, got {len(images)}"
            )
        out = []
        for image in images:
            if image.dim() == 3 and image.shape[0] == 1:
                image = image.expand(3, -1, -1)
            if image.dim() != 3 or image.shape[0] != 3:
                shape = tuple(image.shape)
                raise RuntimeError(f"expected RGB [3, H, W] images from {self.name}, got {shape=}")
            out.append(image)
        return out


def _import_decode_jpeg() -> tuple[str, Callable[..., Any], dict[str, Any]]:
    """(library name, its ``decode_jpeg``, the keyword that asks it for RGB output)."""
    decode: Callable[..., Any]
    try:
        from torchcodec.decoders import decode_jpeg as codec_decode

        name, decode = "torchcodec", codec_decode
    except ImportError:
        try:
            from torchvision.io import decode_jpeg as vision_decode
        except ImportError:
            raise GpuDecodeUnavailable(
                "expected TorchCodec or torchvision for decode='device' on CUDA, got neither: "
                "pip install 'shardfeed[gpu]' (or decode on the CPU)"
            ) from None
        name, decode = "torchvision", vision_decode
    try:
        takes_mode = "mode" in inspect.signature(decode).parameters
    except (TypeError, ValueError):
        takes_mode = False
    return name, decode, {"mode": "RGB"} if takes_mode else {}


def jpeg_backend(device: torch.device, kind: str = "auto") -> JpegBackend:
    """The backend for ``device``: ``"auto"`` is nvJPEG on CUDA and the stand-in on the CPU;
    ``"cpu"`` is the stand-in on any device (its images then copied there)."""
    if kind == "cpu" or (kind == "auto" and device.type != "cuda"):
        return CpuJpegStandIn(device)
    if kind == "auto":
        return CudaJpeg(device)
    raise ValueError(f"expected a JPEG backend 'auto' or 'cpu', got backend={kind!r}")
