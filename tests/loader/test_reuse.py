"""Tests for loader/worker/reuse.py: readers kept open across epochs, per process, and image
pools."""

from __future__ import annotations

import functools
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
from torch.utils.data import DataLoader, IterableDataset

from loader.dataset import ShardDataset
from loader.sources import resolve_source
from loader.worker.reuse import Reuse
from tests.loader.helpers import write_test_shards


@pytest.fixture
def source(tmp_path: Path) -> Any:
    return resolve_source(str(write_test_shards(tmp_path / "s", [4, 3, 5])))


def test_readers_are_kept_reused_and_evicted_oldest_first(source: Any) -> None:
    reuse = Reuse(keep_open=2)
    first = reuse.reader(source.shards[0])
    assert reuse.reader(source.shards[0]) is first
    second = reuse.reader(source.shards[1])
    reuse.reader(source.shards[0])  # now the most recently used
    reuse.reader(source.shards[2])  # evicts shards[1]
    assert reuse.reader(source.shards[0]) is first
    assert reuse.reader(source.shards[1]) is not second
    assert [s.gid for s in first.read(0, 4)] == [0, 1, 2, 3]
    reuse.forget(source.shards[0])
    assert reuse.reader(source.shards[0]) is not first
    reuse.close()


def test_a_pickled_copy_starts_empty(source: Any) -> None:
    reuse = Reuse(latency_s=0.25, keep_open=3)
    kept = reuse.reader(source.shards[0])
    copy = pickle.loads(pickle.dumps(reuse))
    assert (copy.latency_s, copy.keep_open) == (0.25, 3)
    assert copy.reader(source.shards[0]) is not kept


def test_pools_exist_only_inside_workers() -> None:
    assert Reuse().pool(100) is None

    class Pools(IterableDataset[bool]):
        def __init__(self) -> None:
            self.reuse = Reuse()

        def __iter__(self) -> Any:
            a, b = self.reuse.pool(100), self.reuse.pool(100)
            yield a is not None and a is b and self.reuse.pool(0) is None

    assert list(DataLoader(Pools(), batch_size=None, num_workers=1)) == [True]


def test_a_pool_grows_to_the_largest_capacity_asked_for() -> None:
    class Capacities(IterableDataset[list[int]]):
        def __init__(self) -> None:
            self.reuse = Reuse()

        def __iter__(self) -> Any:
            pool = self.reuse.pool(100)
            assert pool is not None
            seen = [pool.capacity]
            for capacity in (64, 20):
                assert self.reuse.pool(100, capacity) is pool
                seen.append(pool.capacity)
            yield seen

    assert list(DataLoader(Capacities(), batch_size=None, num_workers=1)) == [[16, 64, 64]]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="keep_open >= 0"):
        Reuse(keep_open=-1)
    with pytest.raises(ValueError, match="latency_s >= 0"):
        Reuse(latency_s=-1)


def _note_pid(folder: Path, worker: int) -> None:
    (folder / f"worker-{worker}").write_text(str(os.getpid()))


def _shard_maps(pid: int) -> set[str]:
    """The memory maps of shard files in process ``pid``: address range and path."""
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {f"{line.split()[0]} {line.split()[-1]}" for line in lines if line.endswith(".tar")}


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc/<pid>/maps")
def test_persistent_workers_keep_shards_open_across_epochs(source: Any, tmp_path: Path) -> None:
    """A shard a worker mapped stays mapped in that worker, at the same address range, through
    the later epochs (each epoch may hand it other shards too): shards are not opened again."""
    dataset = ShardDataset(source, batch_size=2, decode=False, shuffle_buffer=0)
    pids = tmp_path / "pids"
    pids.mkdir()
    loader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=2,
        persistent_workers=True,
        worker_init_fn=functools.partial(_note_pid, pids),
    )
    seen: list[dict[int, set[str]]] = []
    for _ in range(3):
        ids = sorted(int(i) for batch in loader for i in batch.ids)
        assert ids == list(range(12))
        workers = [int(f.read_text()) for f in sorted(pids.iterdir())]
        assert len(workers) == 2, "persistent workers start once"
        seen.append({pid: _shard_maps(pid) for pid in workers})
    assert all(maps for maps in seen[0].values()), f"every worker maps a shard: {seen[0]}"
    for before, after in zip(seen, seen[1:], strict=False):
        for pid, maps in before.items():
            assert maps <= after[pid], f"worker {pid} dropped {maps - after[pid]}"
