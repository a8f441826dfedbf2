"""Adapters that run the augmentation libraries people use as per-sample transforms
(docs/architecture.md, "Transforms").

- ``Albumentations(pipeline)``: an albumentations pipeline on the uint8 HWC crop. Albumentations
  2 draws from generators of its own, not the global ones, so the adapter hands the pipeline
  (``set_random_state``) Python's global ``random`` instance and one NumPy ``Generator`` that it
  re-seeds before every call from ``random``, which the worker has just seeded from the
  sample's key. Albumentations 1 draws from the global generators themselves.
- ``TensorTransform(pipeline)``: a tensor pipeline as its documentation writes it
  (``torchvision.transforms.v2.Compose``, ``kornia.augmentation.AugmentationSequential``), given
  the crop as a CHW tensor: uint8 (torchvision's convention) or, with ``scale=True``, float32
  in [0, 1] (kornia's). Both libraries draw from torch's generator, which the worker seeds.
- ``ImagesOnly(pipeline)``: a batch augmentation of images alone (``kornia.augmentation``
  on the device) as a batch transform: ``(pipeline(images), labels)``.

Both are picklable when their pipeline is (spawned workers pickle the transform).
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

__all__ = ["Albumentations", "ImagesOnly", "TensorTransform"]


class Albumentations:
    """``pipeline(image=crop)["image"]`` with the pipeline's randomness taken from the sample's
    seeding (see the module doc); the result is what the pipeline returns (a uint8 HWC array,
    or a CHW tensor when it ends with ``ToTensorV2``)."""

    def __init__(self, pipeline: Any) -> None:
        if not callable(pipeline):
            raise TypeError(f"expected an albumentations pipeline, got pipeline={pipeline!r}")
        self.pipeline = pipeline
        self._bits = np.random.PCG64(0)
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:
        return {"pipeline": self.pipeline, "_bits": np.random.PCG64(0), "_pid": -1}

    def _install(self) -> None:
        """Point the pipeline at this process's global ``random`` and this adapter's NumPy
        generator (once per process: a pickled or forked copy installs its own)."""
        install = getattr(self.pipeline, "set_random_state", None)
        if callable(install):
            install(np.random.Generator(self._bits), random.random.__self__)  # type: ignore[attr-defined]
        self._pid = os.getpid()

    def __call__(self, image: np.ndarray) -> Any:
        if self._pid != os.getpid():
            self._install()
        bits = random.getrandbits(192)
        self._bits.state = {
            "bit_generator": "PCG64",
            "state": {"state": bits >> 64, "inc": (bits & ((1 << 64) - 1)) << 1 | 1},
            "has_uint32": 0,
            "uinteger": 0,
        }
        return self.pipeline(image=image)["image"]

    def __repr__(self) -> str:
        return f"Albumentations({type(self.pipeline).__name__})"


class TensorTransform:
    """``pipeline(chw)`` on the crop as a CHW tensor (a view of the HWC pixels), uint8, or
    float32 in [0, 1] with ``scale=True``. A result with a leading batch dimension of one
    (kornia's augmentations return ``[1, C, H, W]`` for one image) loses that dimension."""

    def __init__(self, pipeline: Any, *, scale: bool = False) -> None:
        if not callable(pipeline):
            raise TypeError(f"expected a callable tensor pipeline, got pipeline={pipeline!r}")
        self.pipeline = pipeline
        self.scale = scale

    def __call__(self, image: np.ndarray) -> Any:
        chw = torch.from_numpy(image).permute(2, 0, 1)
        if self.scale:
            chw = chw.to(torch.float32).div_(255.0)
        out = self.pipeline(chw)
        if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[0] == 1:
            out = out[0]
        return out

    def __repr__(self) -> str:
        return f"TensorTransform({type(self.pipeline).__name__}, scale={self.scale})"


class ImagesOnly:
    """``fn(images, labels) -> (pipeline(images), labels)``: a batch transform for
    ``DevicePrefetcher(..., batch_transform=...)`` from a pipeline of images alone, such as a
    ``kornia.augmentation.AugmentationSequential`` moved to the device."""

    def __init__(self, pipeline: Any) -> None:
        if not callable(pipeline):
            raise TypeError(f"expected a callable image pipeline, got pipeline={pipeline!r}")
        self.pipeline = pipeline

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[Any, torch.Tensor]:
        return self.pipeline(images), labels

    def __repr__(self) -> str:
        return f"ImagesOnly({type(self.pipeline).__name__})"
