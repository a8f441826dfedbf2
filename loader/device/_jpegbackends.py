"""Batched JPEG decoders behind ``loader.device.decoder``: nvJPEG on CUDA, and its CPU stand-in.

A backend turns a list of 1-D uint8 CPU tensors (JPEG streams) into RGB uint8 ``[3, H, W]``
tensors on its device, all or nothing: like nvJPEG's batched decode, a stream it rejects fails
the whole call, and the caller re-decodes per image to find which one.

- ``CudaJpeg``: TorchCodec's ``decode_jpeg`` on the list with ``device="cuda"`` (nvJPEG), or
  ``torchvision.io.decode_jpeg`` where TorchCodec does not import. Both are imported when the
  first ``CudaJpeg`` is made, never at module import: the default install is CPU-only and has
  neither (``pip install 'shardfeed[gpu]'`` brings TorchCodec). A library that is installed but
  broken (``OSError``/``RuntimeError`` from its native parts) is logged once, with the reason,
  and the next one is tried.
- ``CpuJpegStandIn``: OpenCV on the CPU with the same interface, so the byte batch, the routing
  and every fallback run on machines without a GPU. Beside what OpenCV cannot decode it refuses
  the streams its ``refuse`` predicate picks, as a GPU decoder refuses some streams the CPU
  decodes (tests use it to drive the re-decode and CPU fallback).
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable
from typing import Any, Final, NamedTuple, Protocol

import cv2
import numpy as np
import torch

from loader.decode import DecodeError

__all__ = [
    "GPU_LIBRARIES",
    "CpuJpegStandIn",
    "CudaJpeg",
    "GpuDecodeUnavailable",
    "GpuLibrary",
    "JpegBackend",
    "StreamLike",
    "gpu_library_status",
    "jpeg_backend",
    "load_gpu_library",
]

log = logging.getLogger("shardfeed.loader")

_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
GPU_LIBRARIES: Final = (
    ("torchcodec", "torchcodec.decoders", "decode_jpeg"),
    ("torchvision", "torchvision.io", "decode_jpeg"),
)
"""(name, module, function) of each GPU JPEG library, in the order they are tried."""


class GpuDecodeUnavailable(RuntimeError):
    """Neither TorchCodec nor torchvision can be imported here (the message says why)."""


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


class StreamLike(Protocol):
    """What ``CudaJpeg`` needs of a CUDA stream (``torch.cuda.Stream``; tests pass fakes)."""

    def synchronize(self) -> None: ...


class CudaJpeg:
    """nvJPEG batched decode through TorchCodec (preferred) or torchvision, on a CUDA device.

    Raises ``GpuDecodeUnavailable`` when made where neither imports (see ``load_gpu_library``).
    ``library`` and ``current_stream`` default to the first GPU library that imports and
    ``torch.cuda.current_stream``; tests pass stand-ins.

    Stream order. TorchCodec 0.16 and torchvision 0.26 allocate their output on the caller's
    current stream, then let nvJPEG write it from a stream of their own that does not wait for
    the caller's: a block the caching allocator recycles from a tensor freed on the current
    stream may still be read by kernels queued there, and nvJPEG overwrites it first. So before
    each library call the current stream is synchronised: everything queued on it has run, and
    no recycled block is still in use. The libraries make the current stream wait for their own
    before returning, so the images are then safe to read there. ``DevicePrefetcher`` decodes in
    its own thread, so the wait never blocks the training loop's thread
    (docs/architecture.md, "Device decode").
    """

    def __init__(
        self,
        device: torch.device,
        *,
        library: GpuLibrary | None = None,
        current_stream: Callable[[torch.device], StreamLike] | None = None,
    ) -> None:
        if device.type != "cuda":
            raise ValueError(f"expected a CUDA device for nvJPEG, got device={device}")
        self.device = device
        self.library = library if library is not None else load_gpu_library()
        self.name = self.library.name
        self._current_stream = current_stream or torch.cuda.current_stream
        self.batched = True

    def _call(self, encoded: torch.Tensor | list[torch.Tensor]) -> Any:
        self._current_stream(self.device).synchronize()
        return self.library.decode(encoded, device=self.device, **self.library.mode)

    def decode(self, encoded: list[torch.Tensor]) -> list[torch.Tensor]:
        """One batched call; where the library takes no list (a ``TypeError``), one call per
        stream from then on (``batched`` turns false)."""
        if not encoded:
            return []
        decoded: Any = None
        if self.batched:
            try:
                decoded = self._call(encoded)
            except TypeError:
                self.batched = False
        if not self.batched:
            decoded = [self._call(e) for e in encoded]
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


class GpuLibrary(NamedTuple):
    """A GPU JPEG library that imported: its ``name``, its ``decode_jpeg`` and the keywords that
    ask it for RGB output."""

    name: str
    decode: Callable[..., Any]
    mode: dict[str, Any]


def _try_import(module: str, attribute: str) -> tuple[Callable[..., Any] | None, str | None]:
    """``(module.attribute, None)``, or ``(None, why)``: the exception's type and message. A
    library that is installed but cannot load its native parts raises ``OSError`` or
    ``RuntimeError`` (a missing ``libnvjpeg``, a torch it was not built for), not only
    ``ImportError``; any exception is caught so that a broken install never stops the caller."""
    try:
        return getattr(importlib.import_module(module), attribute), None
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"


def gpu_library_status() -> dict[str, str]:
    """For each GPU JPEG library, in the order ``CudaJpeg`` tries them: ``"available"`` or why
    not (``"ModuleNotFoundError: No module named 'torchcodec'"``). ``shardfeed doctor`` shows it."""
    return {
        name: "available" if why is None else why
        for name, (_, why) in ((name, _try_import(m, a)) for name, m, a in GPU_LIBRARIES)
    }


def load_gpu_library() -> GpuLibrary:
    """The first GPU JPEG library of ``GPU_LIBRARIES`` that imports. Each one that fails is
    logged once here, with the exception's type and message, before the next is tried; raises
    ``GpuDecodeUnavailable`` naming every failure when none imports."""
    failures = []
    for name, module, attribute in GPU_LIBRARIES:
        decode, why = _try_import(module, attribute)
        if decode is not None:
            return GpuLibrary(name, decode, {"mode": "RGB"} if _takes_mode(decode) else {})
        failures.append(f"{name}: {why}")
        missing = why is not None and why.startswith("ModuleNotFoundError")
        level = logging.INFO if missing else logging.WARNING
        log.log(
            level, "GPU JPEG decode: %s did not import (%s); trying the next library", name, why
        )
    raise GpuDecodeUnavailable(
        "expected TorchCodec or torchvision for decode='device' on CUDA, got "
        f"{'; '.join(failures)}: pip install 'shardfeed[gpu]' (or decode on the CPU)"
    )


def _takes_mode(decode: Callable[..., Any]) -> bool:
    try:
        return "mode" in inspect.signature(decode).parameters
    except (TypeError, ValueError):
        return False


def jpeg_backend(device: torch.device, kind: str = "auto") -> JpegBackend:
    """The backend for ``device``: ``"auto"`` is nvJPEG on CUDA and the stand-in on the CPU;
    ``"cpu"`` is the stand-in on any device (its images then copied there)."""
    if kind == "cpu" or (kind == "auto" and device.type != "cuda"):
        return CpuJpegStandIn(device)
    if kind == "auto":
        return CudaJpeg(device)
    raise ValueError(f"expected a JPEG backend 'auto' or 'cpu', got backend={kind!r}")
