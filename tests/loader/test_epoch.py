"""``SharedEpoch``: the epoch counter that reaches every worker, set or not, fork or spawn."""

from __future__ import annotations

import io
import multiprocessing
import pickle
from multiprocessing.reduction import ForkingPickler
from typing import Any

import pytest
import torch.multiprocessing  # noqa: F401  (registers the shared-memory reductions)

from loader.plan.epoch import MAX_READERS, SharedEpoch


def test_epochs_advance_per_reader_without_set_epoch() -> None:
    epoch = SharedEpoch()
    assert epoch.peek() == 0
    assert [epoch.begin(0), epoch.begin(1), epoch.begin(1), epoch.begin(0)] == [0, 0, 1, 1]
    assert epoch.peek() == 2


def test_set_epoch_restarts_every_reader_from_it() -> None:
    epoch = SharedEpoch()
    for reader in range(3):
        epoch.begin(reader)
    epoch.set(7)
    assert epoch.peek() == 7
    assert [epoch.begin(r) for r in (2, 0, 1)] == [7, 7, 7]
    assert epoch.begin(0) == 8
    epoch.set(7)
    assert epoch.begin(1) == 7 and epoch.begin(MAX_READERS - 1) == 7


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_bad_epochs_are_named(bad: Any) -> None:
    with pytest.raises(ValueError, match=f"epoch={bad!r}" if bad != -1 else "epoch=-1"):
        SharedEpoch().set(bad)


def test_the_main_process_counts_apart_from_worker_0() -> None:
    epoch = SharedEpoch()
    assert epoch.begin(SharedEpoch.MAIN) == 0
    assert epoch.peek() == 1
    assert [epoch.begin(0), epoch.begin(1)] == [0, 0]
    assert [epoch.begin(SharedEpoch.MAIN), epoch.begin(0), epoch.begin(1)] == [1, 1, 1]
    epoch.set(2)
    assert [epoch.begin(SharedEpoch.MAIN), epoch.begin(0)] == [2, 2]


@pytest.mark.parametrize("reader", [-2, MAX_READERS])
def test_reader_ids_outside_the_table_are_refused(reader: int) -> None:
    with pytest.raises(ValueError, match=f"worker id {reader}"):
        SharedEpoch().begin(reader)


def _begin_twice(epoch: SharedEpoch, reader: int) -> None:
    epoch.begin(reader)
    epoch.begin(reader)


def test_a_forked_reader_advances_the_parents_counter() -> None:
    epoch = SharedEpoch()
    epoch.set(3)
    child = multiprocessing.get_context("fork").Process(target=_begin_twice, args=(epoch, 0))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert epoch.peek() == 5
    assert epoch.begin(1) == 3


def test_the_pickle_a_spawned_worker_gets_shares_the_counter() -> None:
    epoch = SharedEpoch()
    buf = io.BytesIO()
    ForkingPickler(buf, pickle.HIGHEST_PROTOCOL).dump(epoch)
    copy = pickle.loads(buf.getvalue())
    epoch.set(4)
    assert copy.begin(0) == 4
    assert epoch.peek() == 5
