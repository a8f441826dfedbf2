"""What a per-sample transform is, what it receives, and when the loader refuses one
(docs/architecture.md, "Transforms").

A per-sample transform is any picklable callable ``fn(image) -> array``: ``image`` is one
decoded sample, uint8 ``[S, S, 3]`` RGB after the loader's own crop (so the crop-aware partial
decode stays), and the result a NumPy array or a CPU torch tensor of any shape and dtype, the
same for every sample of a batch. ``FullImage(fn)`` hands ``fn`` the whole decoded image
instead (uint8 ``[H, W, 3]`` RGB at its stored size) for recipes that crop themselves; the
loader's crop and partial decode are then not used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import torch

if TYPE_CHECKING:
    from loader.decode import Decoder

__all__ = ["FullImage", "SampleTransform", "check_sample_transform"]

SampleTransform: TypeAlias = Callable[[np.ndarray], "np.ndarray | torch.Tensor"]


class FullImage:
    """Marks ``fn`` as a transform of the whole decoded image: ``make_loader(...,
    transform=FullImage(fn))`` calls ``fn`` with uint8 ``[H, W, 3]`` RGB pixels as stored
    (EXIF orientation ignored, as the loader's own decode does) instead of the ``[S, S, 3]``
    crop. ``fn`` is seeded as any per-sample transform is; its outputs must still share one
    shape and dtype within a batch, so it usually ends with a fixed-size crop or resize."""

    def __init__(self, fn: SampleTransform) -> None:
        if not callable(fn):
            raise TypeError(f"expected a callable transform, got fn={fn!r}")
        self.fn = fn

    def __call__(self, image: np.ndarray) -> np.ndarray | torch.Tensor:
        return self.fn(image)

    def __repr__(self) -> str:
        return f"FullImage({self.fn!r})"


def check_sample_transform(transform: Any, decoder: Decoder) -> None:
    """Refuse a transform the loader cannot run: not callable, with ``decode="device"`` (the
    workers ship undecoded bytes), or with decoding off. ``ValueError`` saying what to do."""
    if transform is None:
        return
    if not callable(transform):
        raise ValueError(f"expected a callable transform or None, got transform={transform!r}")
    if getattr(decoder, "decodes_on_device", False):
        raise ValueError(
            f"expected no per-sample transform with decode='device', got transform={transform!r}:"
            " the workers ship undecoded bytes, so augment on the device instead with "
            "DevicePrefetcher(loader, device, batch_transform=fn)"
        )
    if decoder.image_size < 1:
        raise ValueError(
            f"expected decoded images for transform={transform!r}, got decoder={decoder!r} "
            "(decode=False or image_size=0): decode in the workers, or drop the transform"
        )
