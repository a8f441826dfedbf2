"""Helpers of the transform tests: picklable transforms that draw from every seeded generator,
and a sample's pixels by id over one epoch."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from loader.dataloader import make_loader

SIZES = [7, 5, 9, 6]  # 27 samples in 4 shards
TOTAL = sum(SIZES)


def identity(image: np.ndarray) -> np.ndarray:
    return image


def jitter(image: np.ndarray) -> np.ndarray:
    """A uint8 transform drawing from Python's, NumPy's and torch's generators."""
    shift = random.randint(-40, 40) + int(np.random.randint(-9, 9)) + int(torch.randint(-5, 5, ()))
    return np.clip(image.astype(np.int16) + shift, 0, 255).astype(np.uint8)


def to_float_chw(image: np.ndarray) -> torch.Tensor:
    """A transform that changes shape and dtype: float32 CHW plus torch noise."""
    return torch.from_numpy(image).permute(2, 0, 1).float().div(255) + torch.rand(3, 1, 1)


def boom(image: np.ndarray) -> np.ndarray:
    raise ValueError("boom in the recipe")


def loader_of(source: Any, num_workers: int, **options: Any) -> Any:
    settings: dict[str, Any] = {
        "batch_size": 4,
        "image_size": 16,
        "shuffle_buffer": 4,
        "seed": 3,
        "multiprocessing_context": "fork",
        **options,
    }
    if num_workers:
        settings["prefetch_factor"] = 1
    return make_loader(source, num_workers=num_workers, **settings)


def pixels_by_id(loader: Any, epoch: int | None = None) -> dict[int, torch.Tensor]:
    """The delivered (not padded) rows of one epoch, by sample id."""
    if epoch is not None:
        loader.dataset.set_epoch(epoch)
    out: dict[int, torch.Tensor] = {}
    for batch in loader:
        for row, gid in enumerate(batch.ids.tolist()):
            if not bool(batch.padded[row]):
                out[gid] = batch.images[row].clone()
    return out


def same(a: dict[int, torch.Tensor], b: dict[int, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[g], b[g]) for g in a)
