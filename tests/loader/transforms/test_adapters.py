"""The adapters on their own: a pickled copy (what a spawned worker gets) draws what the
original draws for the same seeding; a kornia augmentation's batch of one is unwrapped."""

from __future__ import annotations

import pickle

import albumentations as A
import kornia.augmentation as K
import numpy as np
import pytest
import torch

from loader.transforms import Albumentations, ImagesOnly, TensorTransform
from loader.transforms.seeding import SampleSeeder

IMAGE = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)


def seeded(fn: object, gid: int) -> np.ndarray | torch.Tensor:
    SampleSeeder(2, 0).seed(gid)
    return fn(IMAGE.copy())  # type: ignore[operator, no-any-return]


def test_a_pickled_albumentations_adapter_draws_like_the_original() -> None:
    fn = Albumentations(A.Compose([A.ColorJitter(p=1.0), A.HorizontalFlip(p=0.5)]))
    copy = pickle.loads(pickle.dumps(fn))
    outputs = [seeded(fn, g) for g in range(6)]
    assert all(np.array_equal(a, seeded(copy, g)) for g, a in enumerate(outputs))
    assert len({a.tobytes() for a in outputs}) == 6


def test_a_tensor_transform_hands_chw_and_unwraps_kornias_batch_of_one() -> None:
    fn = TensorTransform(K.AugmentationSequential(K.ColorJiggle(0.4, 0.4, 0.4, p=1.0)), scale=True)
    out = seeded(fn, 3)
    assert isinstance(out, torch.Tensor) and out.shape == (3, 16, 16)
    assert torch.equal(out, seeded(pickle.loads(pickle.dumps(fn)), 3))
    chw = TensorTransform(torch.nn.Identity())(IMAGE)
    assert chw.dtype == torch.uint8 and torch.equal(chw, torch.from_numpy(IMAGE).permute(2, 0, 1))


@pytest.mark.parametrize("adapter", [Albumentations, TensorTransform, ImagesOnly])
def test_adapters_refuse_what_is_not_callable(adapter: type) -> None:
    with pytest.raises(TypeError, match="expected"):
        adapter(3)
