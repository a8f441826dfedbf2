"""The byte-batch builder's buffer (loader/device/bytebatch.py): bytes are copied once into the
batch's buffer, a batch that outgrows it moves once and gives the old one back unlent, and the
next batch's buffer is sized from the last."""

from __future__ import annotations

import numpy as np

from loader.crop import CropBox
from loader.device.bytebatch import MIN_BUFFER, ByteBatchBuilder, CropPlan, sample_bytes
from loader.worker.pools import ImagePool, lease_of


class FixedPlanner:
    image_size = 8

    def plan(self, data: bytes | memoryview, rng: np.random.Generator) -> CropPlan:
        return CropPlan(CropBox(0, 0, 1, 1), False, False)


def test_a_batch_that_outgrows_its_pooled_buffer_moves_once_and_frees_the_old_one() -> None:
    pools: dict[int, ImagePool] = {}

    def pool(nbytes: int) -> ImagePool:
        return pools.setdefault(nbytes, ImagePool(nbytes, 4))

    builder = ByteBatchBuilder(3, FixedPlanner(), shared_memory=True, pools=pool)
    rng = np.random.default_rng(0)
    small, big = b"a" * 1000, bytes(range(256)) * (MIN_BUFFER // 256 + 10)
    builder.add(small, 0, 0, rng)
    builder.add(big, 0, 1, rng)
    builder.add(small, 0, 2, rng)
    batch = builder.finish()
    assert [bytes(sample_bytes(batch, r)) for r in range(3)] == [small, big, small]
    assert sorted(pools) == [MIN_BUFFER, 2 * MIN_BUFFER]
    assert pools[MIN_BUFFER].free_count() == 1  # given back, never lent
    assert pools[2 * MIN_BUFFER].free_count() == 0 and lease_of(batch.data) is not None
    assert batch.data.numel() == 2 * len(small) + len(big)
    builder.add(small, 0, 3, rng)  # sized from the last batch: no move this time
    second = builder.finish()
    assert bytes(sample_bytes(second, 0)) == small
    assert sorted(pools) == [MIN_BUFFER, 2 * MIN_BUFFER]  # the last batch's size, rounded up
    assert pools[2 * MIN_BUFFER].allocated == 2 and pools[MIN_BUFFER].allocated == 1


def test_without_shared_memory_the_buffer_is_private_and_exact() -> None:
    builder = ByteBatchBuilder(2, FixedPlanner(), shared_memory=False)
    rng = np.random.default_rng(0)
    builder.add(b"", 0, 0, rng)
    builder.repeat(0)
    batch = builder.finish()
    assert batch.data.numel() == 0 and batch.spans.tolist() == [[0, 0], [0, 0]]
    assert lease_of(batch.data) is None


def test_a_builder_dropped_mid_batch_gives_its_pooled_buffer_back() -> None:
    pool = ImagePool(MIN_BUFFER, 2)
    builder = ByteBatchBuilder(4, FixedPlanner(), shared_memory=True, pools=lambda n: pool)
    builder.add(b"x" * 100, 0, 0, np.random.default_rng(0))
    assert pool.free_count() == 0
    del builder
    assert pool.free_count() == 1 and pool.allocated == 1
