"""Bench modes that price per-sample transforms against the bare loader in the same run
(docs/architecture.md, "Transforms"): ``tar-aware-seeded`` is ``tar-aware`` with an identity
transform, so it differs only by the per-sample seeding (``loader.transforms.seeding``) and the
transform path's bookkeeping; ``tar-aware-recipe`` runs a typical CPU recipe, ``JitterErase``.

Run ``shardfeed bench --shards DIR --modes tar-aware,tar-aware-seeded,tar-aware-recipe`` and
compare each mode's samples/s (and ``ratio_to_limit``) with ``tar-aware``'s.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from loader.bench.builders import tar_aware_mode
from loader.bench.setup import BuiltMode, ModeSetup, ModeUnavailable
from loader.transforms.sample import SampleTransform

__all__ = ["JitterErase", "identity", "tar_aware_recipe_mode", "tar_aware_seeded_mode"]


def identity(image: np.ndarray) -> np.ndarray:
    """The transform that returns its input (written in place: no copy)."""
    return image


class JitterErase:
    """torchvision's ``ColorJitter(0.4, 0.4, 0.4)`` then timm's ``RandomErasing(0.25,
    mode="pixel")`` on a uint8 HWC crop, in OpenCV and NumPy, in place.

    Brightness, contrast and saturation factors are uniform in ``[1 - jitter, 1 + jitter]`` and
    applied in a random order; then, with probability ``erase_prob``, one box of 2% to 1/3 of
    the area (aspect ratio log-uniform in [0.3, 3.3], ten tries) is filled with random bytes.
    Draws come from NumPy's global generator, which the worker seeds per sample."""

    def __init__(self, jitter: float = 0.4, erase_prob: float = 0.25) -> None:
        if not 0 <= jitter < 1 or not 0 <= erase_prob <= 1:
            raise ValueError(
                f"expected 0 <= jitter < 1 and 0 <= erase_prob <= 1, got jitter={jitter} "
                f"erase_prob={erase_prob}"
            )
        self.jitter, self.erase_prob = jitter, erase_prob

    def __call__(self, image: np.ndarray) -> np.ndarray:
        factors = np.random.uniform(1 - self.jitter, 1 + self.jitter, 3)
        for op in np.random.permutation(3).tolist():
            f = float(factors[op])
            if op == 0:
                cv2.convertScaleAbs(image, dst=image, alpha=f)
            elif op == 1:
                mean = float(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).mean())
                cv2.addWeighted(image, f, image, 0.0, (1 - f) * mean, dst=image)
            else:
                gray = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
                cv2.addWeighted(image, f, gray, 1 - f, 0.0, dst=image)
        if np.random.rand() < self.erase_prob:
            self._erase(image)
        return image

    def _erase(self, image: np.ndarray) -> None:
        height, width = image.shape[:2]
        for _ in range(10):
            area = height * width * np.random.uniform(0.02, 1 / 3)
            ratio = math.exp(np.random.uniform(math.log(0.3), math.log(3.3)))
            h, w = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
            if 0 < h < height and 0 < w < width:
                top = int(np.random.randint(0, height - h + 1))
                left = int(np.random.randint(0, width - w + 1))
                image[top : top + h, left : left + w] = np.random.randint(
                    0, 256, (h, w, image.shape[2]), dtype=np.uint8
                )
                return

    def __repr__(self) -> str:
        return f"JitterErase(jitter={self.jitter}, erase_prob={self.erase_prob})"


def _with(setup: ModeSetup, transform: SampleTransform) -> BuiltMode:
    if not setup.decode:
        raise ModeUnavailable(
            "not_applicable", "a per-sample transform needs decoded images: drop --decode none"
        )
    return tar_aware_mode(setup, transform=transform)


def tar_aware_seeded_mode(setup: ModeSetup) -> BuiltMode:
    return _with(setup, identity)


def tar_aware_recipe_mode(setup: ModeSetup) -> BuiltMode:
    return _with(setup, JitterErase())
