"""``shardfeed train --val``: top-1 over a validation set after each epoch, exact over ranks.

The validation loader reads in eval order (``train=False``, centre crops) with the ``pad``
policy, so every rank runs the same number of forward passes; ``loader.eval.ExactEval`` drops
the padded rows and certifies, with one collective at the end, that every validation sample
was scored exactly once over all ranks before the figure is given (docs/architecture.md,
"Evaluation"). The counts it reduces are integers (correct predictions, samples), so the top-1
is the same for any number of ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from loader.dataloader import make_loader
from loader.device.prefetcher import DevicePrefetcher
from loader.eval import ExactEval

__all__ = ["ValResult", "evaluate", "val_loader"]


@dataclass(frozen=True)
class ValResult:
    """One validation pass: ``top1`` over ``samples`` samples (``correct`` of them right)."""

    epoch: int
    top1: float
    correct: int
    samples: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "top1": self.top1,
            "correct": self.correct,
            "samples": self.samples,
        }


def val_loader(
    shards: str,
    *,
    batch_size: int,
    num_workers: int,
    image_size: int,
    decode: str,
    seed: int,
    cache_dir: str | None = None,
) -> Any:
    """The validation loader: ``make_loader`` in eval order, padding to even the ranks."""
    return make_loader(
        shards,
        batch_size=batch_size,
        num_workers=num_workers,
        image_size=image_size,
        train=False,
        seed=seed,
        even="pad",
        decode=decode,
        cache_dir=cache_dir,
    )


def evaluate(model: nn.Module, loader: Any, device: torch.device, epoch: int) -> ValResult:
    """Top-1 of ``model`` over one whole epoch of ``loader`` (every rank calls it); raises
    ``EvalCertificateError`` rather than give a figure over a wrong set of samples."""
    exact = ExactEval(loader, rows=False)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in DevicePrefetcher(loader, device):
                logits = model(batch.images)
                exact.update(batch, (logits.argmax(1) == batch.labels).to(torch.int64))
        totals = exact.totals()
    finally:
        model.train(was_training)
    correct = int(totals.sums)
    return ValResult(epoch, correct / totals.count if totals.count else 0.0, correct, totals.count)
