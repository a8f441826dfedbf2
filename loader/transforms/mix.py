"""Mixup and CutMix as batch transforms, with the timm recipe's parameters
(docs/architecture.md, "Transforms").

``MixupCutmix`` is timm's ``Mixup`` in its ``"batch"`` mode: with probability ``prob`` a batch
is mixed with itself reversed along the batch; when both alphas are positive it is CutMix with
probability ``switch_prob`` and Mixup otherwise; the mixing weight ``lam`` comes from
``Beta(alpha, alpha)``; CutMix pastes one box of area ``1 - lam`` and, with ``correct_lam``,
sets ``lam`` to the share of pixels kept. Labels become soft ``[B, num_classes]`` float32
targets, smoothed by ``label_smoothing``. The defaults are timm's ImageNet training recipe
(``--mixup 0.8 --cutmix 1.0 --smoothing 0.1``). Draws come from NumPy's global generator, as
timm's do: ``DevicePrefetcher`` seeds it per batch from (seed, epoch, the batch's first id).

``mixup(num_classes)`` and ``cutmix(num_classes)`` are the two alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["MixupCutmix", "cutmix", "mixup"]


@dataclass(frozen=True)
class MixupCutmix:
    """``fn(images, labels) -> (mixed images, soft labels)``; pass it to ``DevicePrefetcher(...,
    batch_transform=...)``. ``images`` ``[B, C, H, W]`` (any float dtype, on any device),
    ``labels`` int64 ``[B]`` class indices or already soft ``[B, num_classes]``."""

    num_classes: int
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.1
    correct_lam: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ValueError(f"expected num_classes >= 1, got num_classes={self.num_classes!r}")
        for name in ("mixup_alpha", "cutmix_alpha"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"expected {name} >= 0, got {name}={getattr(self, name)!r}")
        for name in ("prob", "switch_prob", "label_smoothing"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"expected 0 <= {name} <= 1, got {name}={getattr(self, name)!r}")

    def draw(self) -> tuple[float, bool]:
        """``(lam, use_cutmix)`` for one batch, drawn as timm draws them."""
        if not (self.mixup_alpha > 0 or self.cutmix_alpha > 0) or np.random.rand() >= self.prob:
            return 1.0, False
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = bool(np.random.rand() < self.switch_prob)
        else:
            use_cutmix = self.cutmix_alpha > 0
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        return float(np.random.beta(alpha, alpha)), use_cutmix

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if images.dim() != 4 or not images.is_floating_point():
            raise ValueError(
                f"expected float images [B, C, H, W], got dtype={images.dtype} "
                f"shape={list(images.shape)}"
            )
        lam, use_cutmix = self.draw()
        if lam < 1.0:
            images = images.clone()
            if use_cutmix:
                top, bottom, left, right = _box(images.shape[-2], images.shape[-1], lam)
                images[:, :, top:bottom, left:right] = images.flip(0)[:, :, top:bottom, left:right]
                if self.correct_lam:
                    area = (bottom - top) * (right - left)
                    lam = 1.0 - area / float(images.shape[-2] * images.shape[-1])
            else:
                images = images.mul(lam).add_(images.flip(0).mul(1.0 - lam))
        return images, self.targets(labels, lam)

    def targets(self, labels: torch.Tensor, lam: float) -> torch.Tensor:
        """Smoothed one-hot ``labels`` mixed with their batch-reversed copy by ``lam``."""
        off = self.label_smoothing / self.num_classes
        on = 1.0 - self.label_smoothing + off
        if labels.dim() == 1:
            soft = F.one_hot(labels.long(), self.num_classes).to(torch.float32)
            soft = soft.mul_(on - off).add_(off)
        elif labels.dim() == 2 and labels.shape[1] == self.num_classes:
            soft = labels.to(torch.float32)
        else:
            raise ValueError(
                f"expected labels [B] or [B, {self.num_classes}], got shape={list(labels.shape)}"
            )
        return soft.mul(lam).add_(soft.flip(0).mul(1.0 - lam))


def _box(height: int, width: int, lam: float) -> tuple[int, int, int, int]:
    """timm's ``rand_bbox``: a box of sides ``sqrt(1 - lam)`` times the image's, centred on a
    uniform pixel and clipped to the image: ``(top, bottom, left, right)``."""
    ratio = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(np.random.randint(0, height)), int(np.random.randint(0, width))
    top, bottom = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, height).tolist()
    left, right = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, width).tolist()
    return int(top), int(bottom), int(left), int(right)


def mixup(num_classes: int, alpha: float = 0.8, **options: float) -> MixupCutmix:
    """Mixup alone (``Beta(alpha, alpha)`` weights), other parameters as ``MixupCutmix``."""
    return MixupCutmix(num_classes, mixup_alpha=alpha, cutmix_alpha=0.0, **options)  # type: ignore[arg-type]


def cutmix(num_classes: int, alpha: float = 1.0, **options: float) -> MixupCutmix:
    """CutMix alone (``Beta(alpha, alpha)`` box areas), other parameters as ``MixupCutmix``."""
    return MixupCutmix(num_classes, mixup_alpha=0.0, cutmix_alpha=alpha, **options)  # type: ignore[arg-type]
