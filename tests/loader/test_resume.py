"""Resume with real DataLoader worker processes: a loader stops with batches in flight, saves its
state (through ``torch.save``), and a new loader, of the same or another topology, delivers the
rest of the epoch: exactly once across the stop, the same batches in the same order when the
topology is the same, and later epochs as if nothing had happened."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as tmp

from loader.dataloader import ClosingDataLoader, make_loader
from loader.dataset import ShardDataset
from loader.resume.state import STATE_VERSION, ResumeError
from loader.tracker import DuplicateTracker
from tests.loader.helpers import write_test_shards

SIZES = [9, 7, 12, 5, 8]  # 41 samples in 5 shards
TOTAL = sum(SIZES)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_test_shards(tmp_path_factory.mktemp("resume") / "data", SIZES))


def loader_of(source: str, **options: Any) -> ClosingDataLoader:
    settings: dict[str, Any] = {
        "batch_size": 4,
        "num_workers": 3,
        "image_size": 0,
        "seed": 7,
        "prefetch_factor": 2,
        "multiprocessing_context": "fork",
        **options,
    }
    return make_loader(source, **settings)


def ids_of(batches: list[Any]) -> list[list[int]]:
    return [b.ids[~b.padded].tolist() for b in batches]


def flat(batches: list[list[int]]) -> list[int]:
    return [i for b in batches for i in b]


def saved(state: dict[str, Any], path: Path) -> Any:
    torch.save(state, path)
    return torch.load(path, weights_only=False)


def test_stop_in_flight_resume_with_other_workers_and_batch_size(
    manifest: str, tmp_path: Path
) -> None:
    first = loader_of(manifest)
    tracker = DuplicateTracker(TOTAL)
    it = iter(first)
    got = [next(it) for _ in range(7)]
    for batch in got:
        tracker.update(batch.ids, batch.padded)
    state = saved(first.state_dict(), tmp_path / "loader.pt")
    tracker_state = saved(tracker.state_dict(), tmp_path / "tracker.pt")
    assert state["samples_taken"] == 28 and state["epoch"] == 0
    it.close()

    second = loader_of(manifest, num_workers=2, batch_size=3)
    second.load_state_dict(state)
    resumed = DuplicateTracker(TOTAL)
    resumed.load_state_dict(tracker_state)
    rest = list(second)
    for batch in rest:
        resumed.update(batch.ids, batch.padded)
    before, after = flat(ids_of(got)), flat(ids_of(rest))
    assert not set(before) & set(after)
    assert sorted(before + after) == list(range(TOTAL))
    assert sum(len(b.ids) < 3 for b in rest) <= 1 and len(rest) == -(-(TOTAL - 28) // 3)
    counts = resumed.end_epoch()
    assert (counts.delivered, counts.duplicates, counts.missing) == (TOTAL, 0, 0)
    assert second.state_dict()["epoch"] == 1

    next_epoch = flat(ids_of(list(second)))
    assert sorted(next_epoch) == list(range(TOTAL))
    fresh = loader_of(manifest, num_workers=2, batch_size=3)
    assert next_epoch == flat(ids_of(list(_epoch(fresh, 1))))


def _epoch(loader: ClosingDataLoader, epoch: int) -> ClosingDataLoader:
    dataset = loader.dataset
    assert isinstance(dataset, ShardDataset)
    dataset.set_epoch(epoch)
    return loader


@pytest.mark.parametrize("stop", [0, 1, 7, 17, 39])
def test_same_topology_gives_the_same_batches_in_order(
    tmp_path: Path, stop: int, manifest_many: str
) -> None:
    """80 samples, batch 2, 3 workers: batches travel in groups, the stop falls inside one."""
    options = {"batch_size": 2, "num_workers": 3}
    whole = ids_of(list(loader_of(manifest_many, **options)))
    assert len(whole) == 40
    first = loader_of(manifest_many, **options)
    it = iter(first)
    got = [next(it) for _ in range(stop)]
    state = saved(first.state_dict(), tmp_path / "s.pt")
    it.close()
    second = loader_of(manifest_many, **options)
    second.load_state_dict(state)
    assert ids_of(got) + ids_of(list(second)) == whole


@pytest.fixture(scope="module")
def manifest_many(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_test_shards(tmp_path_factory.mktemp("many") / "data", [20, 30, 30]))


def test_persistent_workers_resume_mid_second_epoch(manifest: str, tmp_path: Path) -> None:
    uninterrupted = loader_of(manifest, persistent_workers=True)
    epochs = [ids_of(list(uninterrupted)) for _ in range(3)]
    first = loader_of(manifest, persistent_workers=True)
    list(first)
    it = iter(first)
    got = [next(it) for _ in range(5)]
    state = saved(first.state_dict(), tmp_path / "s.pt")
    assert state["epoch"] == 1
    second = loader_of(manifest, persistent_workers=True)
    second.load_state_dict(state)
    assert ids_of(got) + ids_of(list(second)) == epochs[1]
    assert ids_of(list(second)) == epochs[2]


def test_more_workers_than_shards(tmp_path: Path) -> None:
    manifest = str(write_test_shards(tmp_path / "two", [6, 5]))
    first = loader_of(manifest, num_workers=5, batch_size=4)  # workers 3 and 4 read nothing
    it = iter(first)
    got = [next(it) for _ in range(2)]
    state = first.state_dict()
    it.close()
    second = loader_of(manifest, num_workers=4, batch_size=1)
    second.load_state_dict(state)
    rest = ids_of(list(second))
    assert sorted(flat(ids_of(got)) + flat(rest)) == list(range(11))


def test_stop_in_the_last_batch_and_between_epochs(manifest: str, tmp_path: Path) -> None:
    whole = [ids_of(list(_epoch(loader_of(manifest), e))) for e in (0, 1)]
    first = loader_of(manifest)
    it = iter(first)
    got = [next(it) for _ in range(len(whole[0]) - 1)]
    before_last = first.state_dict()
    got.append(next(it))
    after_last = first.state_dict()
    assert after_last["epoch"] == 0 and after_last["samples_taken"] == TOTAL
    assert next(it, None) is None
    between = first.state_dict()
    assert between["epoch"] == 1 and between["samples_taken"] == 0

    one_left = loader_of(manifest)
    one_left.load_state_dict(before_last)
    assert ids_of(list(one_left)) == [whole[0][-1]]
    assert ids_of(list(one_left)) == whole[1]

    nothing_left = loader_of(manifest)
    nothing_left.load_state_dict(after_last)
    assert list(nothing_left) == []
    assert ids_of(list(nothing_left)) == whole[1]

    next_epoch = loader_of(manifest, num_workers=1)
    next_epoch.load_state_dict(saved(between, tmp_path / "b.pt"))
    fresh = _epoch(loader_of(manifest, num_workers=1), 1)
    assert ids_of(list(next_epoch)) == ids_of(list(fresh))


def test_ranks_from_env_resume_from_the_list_of_states(manifest: str) -> None:
    """Per-rank mode: two ranks (rank/world_size given, as from RANK/WORLD_SIZE) each save their
    own part; three ranks load the list of both and deliver the rest exactly once."""
    got: list[int] = []
    states = []
    for rank, stop in ((0, 2), (1, 3)):
        loader = loader_of(manifest, num_workers=1, rank=rank, world_size=2)
        it = iter(loader)
        got += flat(ids_of([next(it) for _ in range(stop)]))
        states.append(loader.state_dict())
        it.close()
    assert [s["ranks"] for s in states] == [[0], [1]]
    rest: list[int] = []
    for rank in range(3):
        loader = loader_of(manifest, num_workers=2, batch_size=3, rank=rank, world_size=3)
        loader.load_state_dict(states)
        rest += flat(ids_of(list(loader)))
    assert sorted(got + rest) == list(range(TOTAL))
    lone = loader_of(manifest, num_workers=1, rank=0, world_size=3)
    with pytest.raises(ResumeError, match=r"missing \[1\]"):
        lone.load_state_dict(states[0])


def test_wrong_states_are_refused_with_one_line(manifest: str, tmp_path: Path) -> None:
    loader = loader_of(manifest, num_workers=0)
    state = loader.state_dict()
    other = str(write_test_shards(tmp_path / "other", [9, 7, 12, 5, 9]))
    with pytest.raises(ResumeError, match="expected a state of this dataset") as info:
        loader_of(other, num_workers=0).load_state_dict(state)
    assert "\n" not in str(info.value)
    with pytest.raises(ResumeError, match="newer shardfeed"):
        loader_of(manifest, num_workers=0).load_state_dict({**state, "version": STATE_VERSION + 1})
    with pytest.raises(ResumeError, match="corrupt loader state: taken does not decompress"):
        loader_of(manifest, num_workers=0).load_state_dict({**state, "taken": state["taken"][:-3]})
    with pytest.raises(ResumeError, match="corrupt loader state: expected topology.even"):
        loader_of(manifest, num_workers=0).load_state_dict({**state, "topology": {}})
    with pytest.raises(ResumeError, match="construct the loader with seed=7"):
        loader_of(manifest, num_workers=0, seed=8).load_state_dict(state)
    with pytest.raises(ResumeError, match="expected a loader state"):
        loader_of(manifest, num_workers=0).load_state_dict({"model": 1})
    started = loader_of(manifest, num_workers=0)
    next(iter(started))
    with pytest.raises(ResumeError, match="after iteration began"):
        started.load_state_dict(state)


def test_a_consumer_that_holds_a_batch_records_it_on_hand_over(manifest: str) -> None:
    """What ``DevicePrefetcher`` does on CUDA: it takes batch k + 1 before its consumer gets
    batch k, and records each batch itself when it hands it over."""
    loader = loader_of(manifest, num_workers=2)
    it = iter(loader)
    received = it.defer_records()
    held = [next(it), next(it)]
    received(held[0])
    assert loader.state_dict()["samples_taken"] == 4
    rest = list(it)
    assert loader.state_dict()["epoch"] == 0
    for batch in held[1:] + rest:
        received(batch)
    assert loader.state_dict()["epoch"] == 1


def _gathering_rank(rank: int, manifest: str, init_file: str, out: str) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        os.environ.pop(name, None)
    warnings.filterwarnings("ignore", message=".*worker processes in total.*")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        loader = loader_of(manifest, num_workers=1)
        it = iter(loader)
        got = flat(ids_of([next(it) for _ in range(2 + rank)]))
        state = loader.state_dict()
        it.close()
        Path(f"{out}.{rank}").write_bytes(pickle.dumps({"state": state, "ids": got}))
    finally:
        dist.destroy_process_group()


def test_under_torch_distributed_every_rank_returns_the_gathered_state(
    manifest: str, tmp_path: Path
) -> None:
    out = tmp_path / "rank"
    tmp.spawn(
        _gathering_rank, args=(manifest, str(tmp_path / "init"), str(out)), nprocs=2, join=True
    )
    ranks = [pickle.loads(Path(f"{out}.{r}").read_bytes()) for r in (0, 1)]
    assert ranks[0]["state"] == ranks[1]["state"]
    state = ranks[0]["state"]
    got = ranks[0]["ids"] + ranks[1]["ids"]
    assert state["ranks"] == [0, 1] and state["samples_taken"] == len(got) == 20
    alone = loader_of(manifest, num_workers=3, batch_size=5)
    alone.load_state_dict(state)
    assert sorted(got + flat(ids_of(list(alone)))) == list(range(TOTAL))


def test_state_saves_and_loads_through_torch_distributed_checkpoint(
    manifest: str, tmp_path: Path
) -> None:
    first = loader_of(manifest, num_workers=0)
    it = iter(first)
    got = flat(ids_of([next(it) for _ in range(3)]))
    dcp.save({"loader": first.state_dict()}, checkpoint_id=str(tmp_path / "dcp"))
    second = loader_of(manifest, num_workers=2)
    target = {"loader": second.state_dict()}
    dcp.load(target, checkpoint_id=str(tmp_path / "dcp"))
    second.load_state_dict(target["loader"])
    assert sorted(got + flat(ids_of(list(second)))) == list(range(TOTAL))
