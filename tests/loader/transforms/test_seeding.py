"""Keys and seeding: a function of (seed, epoch, source, id) alone, distinct where they should
be, and ``seeded_batch`` leaves the generators as it found them."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from loader.transforms.seeding import SampleSeeder, batch_key, sample_key, seeded_batch

u64 = st.integers(0, 2**64 - 1)
small = st.integers(0, 2**20)


def draws(crop: np.random.Generator) -> tuple[float, ...]:
    return (random.random(), float(np.random.rand()), float(torch.rand(())), crop.random())


@given(seed=u64, epoch=small, gid=u64, source=small)
def test_keys_are_64_bit_and_differ_between_samples_epochs_and_batches(
    seed: int, epoch: int, gid: int, source: int
) -> None:
    key = sample_key(seed, epoch, gid, source)
    assert 0 <= key < 2**64
    assert key == sample_key(seed, epoch, gid, source)
    assert key != sample_key(seed, epoch + 1, gid, source)
    assert key != sample_key(seed, epoch, gid ^ 1, source)
    assert key != sample_key(seed, epoch, gid, source + 1)
    assert key != batch_key(seed, epoch, gid, source)


@pytest.mark.parametrize("bad", [-1, 2**64])
def test_keys_refuse_values_outside_64_bits(bad: int) -> None:
    with pytest.raises(ValueError, match=rf"expected seed in \[0, {2**64}\), got seed={bad}"):
        sample_key(bad, 0, 0)
    with pytest.raises(ValueError, match=rf"expected epoch in \[0, {2**64}\), got epoch={bad}"):
        SampleSeeder(0, bad)


@given(seed=small, epoch=small, gid=u64)
def test_the_seeder_replays_a_sample_whatever_ran_before(seed: int, epoch: int, gid: int) -> None:
    seeder = SampleSeeder(seed, epoch)
    first = draws(seeder.seed(gid))
    other = SampleSeeder(seed, epoch)
    other.seed(gid ^ 7)
    draws(other.crop_rng)
    assert draws(other.seed(gid)) == first


def test_neighbouring_samples_draw_differently() -> None:
    seeder = SampleSeeder(0, 0)
    values = {draws(seeder.seed(gid)) for gid in range(200)}
    assert len(values) == 200


def test_seeded_batch_is_reproducible_and_restores_the_generators() -> None:
    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    with seeded_batch(batch_key(1, 2, 3), torch.device("cpu")):
        inside = (random.random(), float(np.random.rand()), float(torch.rand(())))
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected
    with seeded_batch(batch_key(1, 2, 3)):
        assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == inside
