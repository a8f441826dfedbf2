"""A sample's augmented pixels are a function of (seed, epoch, id): the same for 1 and 3 real
DataLoader workers, for 1 and 2 ranks, after a resume at another topology, and different in
the next epoch; with a NumPy transform, a real albumentations pipeline and a real kornia one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import albumentations as A
import kornia.augmentation as K
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loader.transforms import Albumentations, TensorTransform
from tests.loader.transforms.helpers import TOTAL, identity, jitter, loader_of, pixels_by_id, same


def albumentations_recipe() -> Albumentations:
    return Albumentations(
        A.Compose(
            [
                A.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.0, p=1.0),
                A.CoarseDropout(num_holes_range=(1, 2), hole_height_range=(2, 4), p=0.5),
            ]
        )
    )


def kornia_recipe() -> TensorTransform:
    return TensorTransform(
        K.AugmentationSequential(
            K.ColorJiggle(0.4, 0.4, 0.4, p=1.0), K.RandomErasing(p=0.5), K.RandomGrayscale(p=0.2)
        ),
        scale=True,
    )


RECIPES: dict[str, Callable[[], Any]] = {
    "numpy": lambda: jitter,
    "albumentations": albumentations_recipe,
    "kornia": kornia_recipe,
}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_same_pixels_for_1_and_3_workers_and_new_ones_next_epoch(
    manifest: str, recipe: str
) -> None:
    fn = RECIPES[recipe]()
    one = pixels_by_id(loader_of(manifest, 1, transform=fn), epoch=0)
    three = loader_of(manifest, 3, transform=fn)
    assert len(one) == TOTAL
    assert same(one, pixels_by_id(three, epoch=0))
    later = pixels_by_id(three, epoch=1)
    changed = sum(not torch.equal(one[g], later[g]) for g in one)
    assert changed >= TOTAL - 1, f"only {changed} of {TOTAL} samples changed between epochs"


def test_rerun_gives_the_same_pixels_and_a_different_seed_others(manifest: str) -> None:
    first = pixels_by_id(loader_of(manifest, 2, transform=jitter), epoch=2)
    again = pixels_by_id(loader_of(manifest, 2, transform=jitter), epoch=2)
    other = pixels_by_id(loader_of(manifest, 2, transform=jitter, seed=4), epoch=2)
    assert same(first, again)
    assert sum(not torch.equal(first[g], other[g]) for g in first) >= TOTAL - 1


@pytest.mark.parametrize("recipe", ["numpy", "albumentations"])
def test_same_pixels_for_1_and_2_ranks(manifest: str, recipe: str) -> None:
    fn = RECIPES[recipe]()
    alone = pixels_by_id(loader_of(manifest, 2, transform=fn, rank=0, world_size=1), epoch=1)
    ranks = [
        pixels_by_id(loader_of(manifest, 2, transform=fn, rank=r, world_size=2), epoch=1)
        for r in (0, 1)
    ]
    assert not ranks[0].keys() & ranks[1].keys()
    assert same(alone, {**ranks[0], **ranks[1]})


def test_same_pixels_after_a_resume_at_another_topology(manifest: str) -> None:
    whole = pixels_by_id(loader_of(manifest, 2, transform=jitter), epoch=1)
    first = loader_of(manifest, 2, transform=jitter)
    first.dataset.set_epoch(1)
    before: dict[int, torch.Tensor] = {}
    batches = iter(first)
    for _ in range(3):
        batch = next(batches)
        for row, gid in enumerate(batch.ids.tolist()):
            if not bool(batch.padded[row]):
                before[gid] = batch.images[row].clone()
    state = first.state_dict()
    del batches
    resumed = loader_of(manifest, 3, transform=jitter)
    resumed.load_state_dict(state)
    after = pixels_by_id(resumed)
    assert not before.keys() & after.keys()
    assert same(whole, {**before, **after})


def test_outputs_of_another_shape_and_dtype_are_stacked(manifest: str) -> None:
    pipeline = TensorTransform(K.AugmentationSequential(K.RandomGrayscale(p=0.5)), scale=True)
    batch = next(iter(loader_of(manifest, 2, transform=pipeline)))
    assert batch.images.dtype == torch.float32
    assert tuple(batch.images.shape) == (4, 3, 16, 16)
    assert float(batch.images.min()) >= 0.0 and float(batch.images.max()) <= 1.0


def test_albumentations_ending_in_a_tensor_gives_chw_batches(manifest: str) -> None:
    from albumentations.pytorch import ToTensorV2

    chw = pixels_by_id(loader_of(manifest, 1, transform=Albumentations(A.Compose([ToTensorV2()]))))
    hwc = pixels_by_id(loader_of(manifest, 1, transform=identity))
    assert {tuple(t.shape) for t in chw.values()} == {(3, 16, 16)}
    assert same(chw, {g: t.permute(2, 0, 1) for g, t in hwc.items()})


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    world=st.integers(1, 4),
    batch_size=st.integers(1, 6),
    shuffle=st.integers(0, 8),
    even=st.sampled_from(["pad", "drop"]),
)
def test_any_rank_count_batch_size_and_shuffle_give_each_sample_its_pixels(
    manifest: str, world: int, batch_size: int, shuffle: int, even: str
) -> None:
    reference = pixels_by_id(loader_of(manifest, 0, transform=jitter), epoch=0)
    got: dict[int, torch.Tensor] = {}
    for rank in range(world):
        loader = loader_of(
            manifest,
            0,
            transform=jitter,
            rank=rank,
            world_size=world,
            batch_size=batch_size,
            shuffle_buffer=shuffle,
            even=even,
        )
        got.update(pixels_by_id(loader, epoch=0))
    assert got.keys() <= reference.keys()
    assert all(torch.equal(reference[g], got[g]) for g in got)
    assert len(got) >= TOTAL - world
