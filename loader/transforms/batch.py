"""Running a batch transform in the training process, seeded per batch
(docs/architecture.md, "Transforms").

``DevicePrefetcher(..., batch_transform=fn)`` calls ``fn(images, labels)`` on the device after
normalisation: ``images`` float32 ``[B, 3, H, W]``, ``labels`` int64 ``[B]``. ``fn`` returns
``(images, labels)``, each with ``B`` rows (labels may become soft ``[B, C]``: mixup,
cutmix). Around the call Python's, NumPy's and torch's generators (the CPU's and the device's)
are seeded from (seed, epoch, the batch's first sample id) and put back afterwards
(``seeded_batch``), so a batch is augmented the same way in every run, at any topology that
delivers it, and the training loop's own random streams are left as they were.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

import torch

from loader.transforms.errors import TransformError
from loader.transforms.seeding import batch_key, seeded_batch

__all__ = ["BatchTransform", "run_batch_transform"]

BatchTransform: TypeAlias = Callable[
    [torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]
]


def run_batch_transform(
    fn: BatchTransform,
    images: torch.Tensor,
    labels: torch.Tensor,
    ids: torch.Tensor,
    *,
    seed: int,
    epoch: int,
    device: torch.device,
    sources: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``fn(images, labels)`` seeded from (``seed``, ``epoch``, the first row's source and id:
    ``sources`` is a mix's per-row source, ``None`` for one dataset, whose source is 0);
    ``TransformError`` naming the batch when ``fn`` raises or returns anything but two tensors
    of ``B`` rows."""
    first = int(ids[0]) if len(ids) else 0
    source = int(sources[0]) if sources is not None and len(sources) else 0
    where = f"the batch of {len(ids)} samples starting with id {first} (epoch {epoch})"
    with seeded_batch(batch_key(seed, epoch, first, source), device):
        try:
            out = fn(images, labels)
        except Exception as exc:
            raise TransformError(
                f"batch transform {fn!r} raised {type(exc).__name__}: {exc} on {where}"
            ) from exc
    if not (
        isinstance(out, tuple)
        and len(out) == 2
        and all(isinstance(t, torch.Tensor) and t.dim() >= 1 for t in out)
    ):
        raise TransformError(
            f"expected batch transform {fn!r} to return (images, labels) tensors, got "
            f"{type(out).__name__} on {where}"
        )
    new_images, new_labels = out
    if new_images.shape[0] != len(images) or new_labels.shape[0] != len(images):
        raise TransformError(
            f"expected batch transform {fn!r} to keep the batch's {len(images)} rows, got "
            f"images shape={list(new_images.shape)} labels shape={list(new_labels.shape)} on "
            f"{where}"
        )
    return new_images, new_labels
