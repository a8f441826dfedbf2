"""``ExactEval`` in one process: bad inputs, the certificate's arithmetic, and what a pass that
is not exactly once raises."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from loader import EvalCertificateError, ExactEval, make_loader
from loader.batch import Batch
from loader.dataset import ShardDataset
from loader.eval import id_checksum, planned_ids
from loader.plan.partition import plan_epoch
from tests.loader.helpers import write_test_shards

SIZES = [5, 9, 3]
TOTAL = sum(SIZES)


@pytest.fixture
def loader(tmp_path: Path) -> object:
    manifest = write_test_shards(tmp_path / "data", SIZES)
    return make_loader(manifest, batch_size=4, num_workers=0, image_size=0, train=False)


def _batch(ids: list[int], padded: list[bool] | None = None) -> Batch:
    n = len(ids)
    return Batch(
        torch.empty(n, 0, 0, 3, dtype=torch.uint8),
        torch.zeros(n, dtype=torch.int64),
        torch.tensor(ids, dtype=torch.int64),
        torch.tensor(padded or [False] * n),
        torch.zeros(n, dtype=torch.int64),
    )


def test_padded_rows_never_reach_the_result(loader: object) -> None:
    ev = ExactEval(loader)
    ev.update(_batch(list(range(10)), [False] * 10), torch.arange(10.0))
    ev.update(_batch([10, 11, 12, 3], [False, False, False, True]), torch.tensor([1.0] * 4))
    ev.update(_batch(list(range(13, TOTAL))), torch.zeros(TOTAL - 13))
    ids, values = ev.gather()
    assert ids.tolist() == list(range(TOTAL))
    assert values[3] == 3.0  # the padded repeat of id 3 (value 1.0) is gone
    totals = ev.totals()
    assert (totals.count, totals.padded) == (TOTAL, 1)
    assert totals.sums.item() == sum(range(10)) + 3.0


def test_a_whole_epoch_of_the_loader_is_certified(loader: object) -> None:
    ev = ExactEval(loader, rows=False)
    for batch in loader:  # type: ignore[attr-defined]
        ev.update(batch, torch.stack([batch.labels, torch.ones_like(batch.labels)], 1))
    totals = ev.totals()
    assert totals.count == ev.check() == TOTAL
    assert totals.sums.tolist() == [sum(i % 3 for i in range(TOTAL)), TOTAL]
    assert totals.mean().dtype == torch.float64
    with pytest.raises(ValueError, match="rows=True"):
        ev.gather()


def test_the_next_update_starts_a_new_pass(loader: object) -> None:
    ev = ExactEval(loader)
    for _ in range(2):
        ev.update(_batch(list(range(TOTAL))), torch.ones(TOTAL))
        assert ev.check() == TOTAL
    ev.update(_batch([0]), torch.ones(1))
    assert ev.batches == 1


@pytest.mark.parametrize(
    ("ids", "missing", "duplicated"),
    [
        (list(range(TOTAL - 2)), 2, 0),
        ([*range(TOTAL), 4, 4], 0, 2),
        ([0, 0, *range(2, TOTAL)], 1, 1),  # the right count, but id 0 twice and no id 1
    ],
)
def test_a_pass_not_exactly_once_raises_naming_the_counts(
    loader: object, ids: list[int], missing: int, duplicated: int
) -> None:
    ev = ExactEval(loader)
    ev.update(_batch(ids), torch.zeros(len(ids)))
    with pytest.raises(EvalCertificateError) as info:
        ev.totals()
    assert (info.value.missing, info.value.duplicated) == (missing, duplicated)
    assert f"{missing} missing" in str(info.value)
    assert f"{duplicated} duplicated" in str(info.value)


def test_bad_inputs_are_refused_naming_them(loader: object) -> None:
    with pytest.raises(TypeError, match="ShardDataset"):
        ExactEval([1, 2, 3])
    ev = ExactEval(loader)
    with pytest.raises(ValueError, match="before finishing"):
        ev.check()
    with pytest.raises(ValueError, match="one row per sample"):
        ev.update(_batch([0, 1]), torch.zeros(3))
    with pytest.raises(ValueError, match="one row per sample"):
        ev.update(_batch([0, 1]), torch.tensor(1.0))
    with pytest.raises(ValueError, match="as a tensor"):
        ev.update(_batch([0, 1]), [1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="real values"):
        ev.update(_batch([0]), torch.zeros(1, dtype=torch.complex64))
    ev.update(_batch([0, 1]), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        ev.update(_batch([2]), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="dtype"):
        ev.update(_batch([2]), torch.zeros(1, 3, dtype=torch.float64))


def test_a_loader_of_several_ranks_needs_the_process_group(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path / "data", SIZES)
    dataset = ShardDataset(manifest, batch_size=4, image_size=0, rank=0, world_size=2)
    ev = ExactEval(dataset)
    ev.update(_batch([0]), torch.zeros(1))
    with pytest.raises(ValueError, match="init_process_group"):
        ev.check()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 2**40), max_size=50),
    st.lists(st.integers(0, 2**40), max_size=50),
)
def test_the_checksum_is_order_free_and_adds_over_parts(a: list[int], b: list[int]) -> None:
    ids = np.array(a + b, dtype=np.int64)
    parts = id_checksum(np.array(a, dtype=np.int64)) + id_checksum(np.array(b, dtype=np.int64))
    assert id_checksum(ids[::-1]) == id_checksum(ids) == parts
    if a:
        assert id_checksum(np.array(a[1:], dtype=np.int64)) != id_checksum(np.array(a))


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 30), min_size=1, max_size=5),
    world=st.integers(1, 5),
    workers=st.integers(0, 3),
    batch=st.integers(1, 8),
    epoch=st.integers(0, 3),
)
def test_planned_ids_are_what_the_drop_plan_reads(
    tmp_path_factory: pytest.TempPathFactory,
    sizes: list[int],
    world: int,
    workers: int,
    batch: int,
    epoch: int,
) -> None:
    if world > sum(sizes):
        return
    manifest = write_test_shards(tmp_path_factory.mktemp("plan"), sizes)
    dataset = ShardDataset(
        manifest, batch_size=batch, image_size=0, even="drop", rank=0, world_size=world
    )
    plans = plan_epoch(
        sizes,
        seed=0,
        epoch=epoch,
        world_size=world,
        num_workers=workers,
        batch_size=batch,
        even="drop",
    )
    read = sorted(
        i
        for rank in plans
        for plan in rank
        for seg in plan.segments
        for i in range(seg.first_id, seg.first_id + len(seg))
    )
    dropped = sum(p.drop for rank in plans for p in rank)
    assert planned_ids(dataset, epoch, workers).tolist() == read
    assert len(read) == sum(sizes) - dropped


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 25), min_size=1, max_size=4),
    world=st.integers(1, 4),
    batch=st.integers(1, 6),
    even=st.sampled_from(["pad", "drop", "none"]),
    epoch=st.integers(0, 2),
)
def test_every_ranks_kept_rows_add_up_to_the_planned_certificate(
    tmp_path_factory: pytest.TempPathFactory,
    sizes: list[int],
    world: int,
    batch: int,
    even: str,
    epoch: int,
) -> None:
    """The certificate's arithmetic over ranks, without a process group: each rank's loader
    (rank pinned) read in turn; the rows left once padding is dropped add up, in count and
    checksum, to the epoch's planned ids."""
    if world > sum(sizes):
        return
    manifest = write_test_shards(tmp_path_factory.mktemp("ranks"), sizes)
    count = checksum = 0
    for rank in range(world):
        dataset = ShardDataset(
            manifest, batch_size=batch, image_size=0, even=even, rank=rank, world_size=world
        )
        dataset.set_epoch(epoch)
        kept = [int(i) for b in make_loader(dataset, num_workers=0) for i in b.ids[~b.padded]]
        count, checksum = count + len(kept), checksum + id_checksum(np.array(kept))
    planned = planned_ids(dataset, epoch, 0)
    assert (count, checksum) == (planned.size, id_checksum(planned))
