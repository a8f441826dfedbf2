"""Real ranks: two processes joined by ``torch.distributed`` (gloo), each with two DataLoader
workers, share every epoch between them exactly once.

Forked workers inherit the process group; spawned workers (the default inside a process that
``torch.multiprocessing.spawn`` started) do not, and must get the rank from the pickled dataset.

The ranks gather their ids with ``all_gather_object``; ``DuplicateTracker.end_epoch()`` merges
the ranks' counts by itself; rank 0 writes what it saw to a JSON file that the test reads.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp

from loader.dataloader import make_loader
from loader.dataset import ShardDataset
from loader.tracker import DuplicateTracker
from tests.loader.helpers import write_test_shards

BATCH = 4
SIZES = [7, 11, 3, 4]  # 25 = 2 * BATCH * 3 + 1: shares of 13 and 12, and 12 % BATCH == 0
TOTAL = sum(SIZES)
EPOCHS = 2
WORLD = 2


def _rank_main(rank: int, manifest: str, init_file: str, out: str, policies: list[str]) -> None:
    """One rank: iterate every policy for ``EPOCHS`` epochs and report what arrived."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        os.environ.pop(name, None)
    warnings.filterwarnings("ignore", message=".*worker processes in total.*")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        report: dict[str, Any] = {}
        for policy in policies:
            report[policy] = _run_policy(manifest, policy)
        spawned = _run_spawned_workers(manifest)
        gathered: list[Any] = [None] * WORLD
        dist.all_gather_object(gathered, {"policies": report, "spawned": spawned, "rank": rank})
        if rank == 0:
            Path(out).write_text(json.dumps(gathered))
    finally:
        dist.destroy_process_group()


def _run_policy(manifest: str, policy: str) -> dict[str, Any]:
    loader = make_loader(
        manifest,
        batch_size=BATCH,
        num_workers=2,
        image_size=0,
        prefetch_factor=1,
        even=policy,
        multiprocessing_context="fork",
    )
    dataset = loader.dataset
    assert isinstance(dataset, ShardDataset)
    tracker = DuplicateTracker(TOTAL)
    epochs = []
    for epoch in range(EPOCHS):
        dataset.set_epoch(epoch)
        tracker.start_epoch(epoch)
        ids, padded, sizes = [], [], []
        for batch in loader:
            tracker.update(batch.ids, batch.padded)
            ids.extend(batch.ids.tolist())
            padded.extend(batch.padded.tolist())
            sizes.append(len(batch.ids))
        merged = tracker.end_epoch()  # under torch.distributed: over every rank
        epochs.append(
            {
                "ids": ids,
                "padded": padded,
                "sizes": sizes,
                "len": len(loader),
                "drop": sum(p.drop for p in dataset.epoch_plan(epoch, 2)),
                "merged": merged.to_dict(),
                "own": tracker.rank_history[-1].to_dict(),
            }
        )
    return {"epochs": epochs, "twice": _read_twice()}


def _read_twice() -> dict[str, Any]:
    """Both ranks receive ids 0..4 (rank 1 also 5): each rank alone sees no duplicate, the
    merged view sees five, and id 6.. missing."""
    tracker = DuplicateTracker(TOTAL)
    tracker.update(torch.arange(5 + dist.get_rank()))
    return tracker.end_epoch().to_dict()


def _run_spawned_workers(manifest: str) -> dict[str, Any]:
    """Spawned workers get no process group; the dataset must bring the rank with it."""
    dataset = ShardDataset(manifest, batch_size=BATCH, image_size=0, even="pad")
    copy = pickle.loads(pickle.dumps(dataset))
    loader = make_loader(dataset, num_workers=2, prefetch_factor=1, multiprocessing_context="spawn")
    ids = [i for batch in loader for i in batch.ids.tolist()]
    return {"ids": ids, "copy_len": len(copy)}


@pytest.fixture(scope="module")
def rank_reports(tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    root = tmp_path_factory.mktemp("ranks")
    manifest = write_test_shards(root / "data", SIZES)
    out = root / "report.json"
    tmp.spawn(
        _rank_main,
        args=(str(manifest), str(root / "init"), str(out), ["pad", "drop", "none"]),
        nprocs=WORLD,
        join=True,
    )
    reports = json.loads(out.read_text())
    assert [r["rank"] for r in reports] == [0, 1]
    return reports


@pytest.mark.parametrize("epoch", range(EPOCHS))
def test_pad_delivers_every_id_once_in_equal_batch_counts(
    rank_reports: list[Any], epoch: int
) -> None:
    runs = [r["policies"]["pad"]["epochs"][epoch] for r in rank_reports]
    assert [len(run["sizes"]) for run in runs] == [run["len"] for run in runs] == [4, 4]
    real = [i for run in runs for i, p in zip(run["ids"], run["padded"], strict=True) if not p]
    pads = [i for run in runs for i, p in zip(run["ids"], run["padded"], strict=True) if p]
    assert sorted(real) == list(range(TOTAL))
    assert len(pads) == 1 and pads[0] in runs[1]["ids"][:-1]
    assert set(runs[0]["ids"]).isdisjoint(runs[1]["ids"])
    assert (
        runs[0]["merged"]
        == runs[1]["merged"]
        == {
            "epoch": epoch,
            "delivered": TOTAL,
            "unique": TOTAL,
            "duplicates": 0,
            "missing": 0,
            "padded": 1,
            "ranks": WORLD,
        }
    )
    own = runs[0]["own"]
    assert own["ranks"] == 1 and own["delivered"] == 13 and own["missing"] == TOTAL - 13


def test_end_epoch_counts_a_sample_two_ranks_read_as_a_duplicate(
    rank_reports: list[Any],
) -> None:
    for report in rank_reports:
        twice = report["policies"]["pad"]["twice"]
        assert (twice["delivered"], twice["unique"], twice["duplicates"]) == (11, 6, 5)
        assert (twice["missing"], twice["ranks"]) == (TOTAL - 6, WORLD)


@pytest.mark.parametrize("epoch", range(EPOCHS))
def test_drop_evens_batch_counts_and_reports_the_dropped_sample(
    rank_reports: list[Any], epoch: int
) -> None:
    runs = [r["policies"]["drop"]["epochs"][epoch] for r in rank_reports]
    assert [len(run["sizes"]) for run in runs] == [run["len"] for run in runs] == [3, 3]
    assert [run["drop"] for run in runs] == [1, 0]
    ids = runs[0]["ids"] + runs[1]["ids"]
    assert len(ids) == len(set(ids)) == TOTAL - 1
    assert not any(p for run in runs for p in run["padded"])
    merged = runs[1]["merged"]
    assert (merged["missing"], merged["duplicates"], merged["padded"]) == (1, 0, 0)


@pytest.mark.parametrize("epoch", range(EPOCHS))
def test_none_is_exactly_once_with_counts_one_apart(rank_reports: list[Any], epoch: int) -> None:
    runs = [r["policies"]["none"]["epochs"][epoch] for r in rank_reports]
    assert [len(run["sizes"]) for run in runs] == [run["len"] for run in runs] == [4, 3]
    assert sorted(runs[0]["ids"] + runs[1]["ids"]) == list(range(TOTAL))


@pytest.mark.parametrize("policy", ["pad", "drop", "none"])
def test_each_rank_sees_a_new_order_every_epoch(rank_reports: list[Any], policy: str) -> None:
    for report in rank_reports:
        first, second = (e["ids"] for e in report["policies"][policy]["epochs"])
        assert first != second


def test_spawned_workers_keep_their_rank(rank_reports: list[Any]) -> None:
    ids = [r["spawned"]["ids"] for r in rank_reports]
    assert set(ids[0]).isdisjoint(ids[1])
    assert set(ids[0]) | set(ids[1]) == set(range(TOTAL))
    assert [r["spawned"]["copy_len"] for r in rank_reports] == [4, 4]
