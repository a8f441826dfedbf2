"""The baselines, run through real DataLoader workers: what each access pattern delivers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from loader.bench.baselines import (
    FolderDataset,
    NaiveTarDataset,
    PerWorkerTarDataset,
    folder_loader,
)
from loader.dataloader import ClosingDataLoader
from loader.tracker import DuplicateTracker, EpochCounts
from shards.sample import make_sample
from tests.loader.helpers import jpeg_bytes, write_test_shards


def count(loader: Any, num_samples: int) -> tuple[EpochCounts, list[int]]:
    """One epoch's counts and the batch sizes."""
    tracker = DuplicateTracker(num_samples)
    sizes = []
    for batch in loader:
        tracker.update(batch.ids, batch.padded)
        sizes.append(len(batch.ids))
    return tracker.end_epoch(), sizes


def iterable_loader(dataset: Any, num_workers: int) -> ClosingDataLoader:
    """A plain DataLoader (batches come whole from the dataset) that stops its workers at once
    when one of them raises."""
    prefetch = 1 if num_workers else None
    return ClosingDataLoader(
        dataset, batch_size=None, num_workers=num_workers, prefetch_factor=prefetch
    )


@pytest.fixture(scope="module")
def tar_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tars")
    return write_test_shards(root, [8, 5, 7], image_bytes=jpeg_bytes)  # N = 20


@pytest.mark.parametrize("num_workers", [0, 1, 2, 3])
def test_naive_tar_delivers_every_sample_once_per_worker(
    tar_shards: Path, num_workers: int
) -> None:
    dataset = NaiveTarDataset(tar_shards, batch_size=6, image_size=8)
    counts, sizes = count(iterable_loader(dataset, num_workers), 20)
    workers = max(num_workers, 1)
    assert counts.delivered == workers * 20
    assert counts.duplicates == (workers - 1) * 20
    assert (counts.unique, counts.missing, counts.padded) == (20, 0, 0)
    assert sorted(sizes) == sorted([6, 6, 6, 2] * workers)


@pytest.mark.parametrize(("num_workers", "shards"), [(2, 3), (4, 3), (1, 3)])
def test_per_worker_tar_names_both_numbers_when_they_differ(
    tar_shards: Path, num_workers: int, shards: int
) -> None:
    dataset = PerWorkerTarDataset(tar_shards, batch_size=4, image_size=8)
    with pytest.raises(ValueError) as info:
        count(iterable_loader(dataset, num_workers), 20)
    message = str(info.value)
    assert "DataLoader worker process" in message
    assert f"num_workers={num_workers} and {shards} shards" in message


def test_per_worker_tar_in_the_main_process_needs_one_shard(
    tar_shards: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="num_workers=0 and 3 shards"):
        count(iterable_loader(PerWorkerTarDataset(tar_shards, image_size=0), 0), 20)
    single = write_test_shards(tmp_path, [6], image_bytes=jpeg_bytes)
    counts, _ = count(iterable_loader(PerWorkerTarDataset(single, batch_size=4), 0), 6)
    assert (counts.unique, counts.duplicates) == (6, 0)


def test_per_worker_tar_is_exactly_once_when_workers_match_shards(tar_shards: Path) -> None:
    dataset = PerWorkerTarDataset(tar_shards, batch_size=3, image_size=8)
    counts, sizes = count(iterable_loader(dataset, 3), 20)
    assert counts == EpochCounts(0, 20, 20, 0, 0, 0)
    assert sorted(sizes) == sorted([3, 3, 2] + [3, 2] + [3, 3, 1])
    with pytest.raises(ValueError, match="num_workers=2 and 3 shards"):
        dataset.check_workers(2)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("folder") / "src"
    make_sample(root, images=23, classes=3, seed=1, size="tiny")
    return root


@pytest.mark.parametrize("num_workers", [0, 2])
def test_folder_loader_is_exactly_once(folder: Path, num_workers: int) -> None:
    dataset = FolderDataset(folder, image_size=16)
    assert len(dataset) == 23 and len(dataset.classes) == 3
    loader = folder_loader(dataset, batch_size=5, num_workers=num_workers, prefetch_factor=1)
    orders = []
    for _ in range(2):
        tracker = DuplicateTracker(23)
        ids = []
        for batch in loader:
            tracker.update(batch.ids, batch.padded)
            assert batch.images.shape == (len(batch.ids), 16, 16, 3)
            assert batch.images.dtype == torch.uint8
            assert batch.labels.tolist() == [dataset.labels[i] for i in batch.ids.tolist()]
            ids.extend(batch.ids.tolist())
        assert tracker.end_epoch() == EpochCounts(0, 23, 23, 0, 0, 0)
        assert len(ids) == 23 and len(loader) == 5
        orders.append(ids)
    assert orders[0] != orders[1]


def test_folder_loader_in_order_without_shuffle(folder: Path) -> None:
    loader = folder_loader(
        FolderDataset(folder, decode=False), batch_size=10, num_workers=0, shuffle=False
    )
    batches = list(loader)
    assert [b.ids.tolist() for b in batches] == [list(range(10)), list(range(10, 20)), [20, 21, 22]]
    assert all(b.images.shape[1:] == (0, 0, 3) for b in batches)


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda m: NaiveTarDataset(m, batch_size=0), "batch_size=0"),
        (lambda m: PerWorkerTarDataset(m, image_size=-2), "image_size=-2"),
        (lambda m: NaiveTarDataset(m, seed=-1), "seed=-1"),
        (lambda m: NaiveTarDataset(m, latency_ms=-1), "latency_ms=-1"),
    ],
)
def test_tar_baselines_name_bad_arguments(tar_shards: Path, make: Any, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        make(tar_shards)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"batch_size": 0}, "batch_size=0"),
        ({"num_workers": -1}, "num_workers=-1"),
        ({"prefetch_factor": 0}, "prefetch_factor=0"),
    ],
)
def test_folder_loader_names_bad_arguments(
    folder: Path, kwargs: dict[str, Any], named: str
) -> None:
    options = {"batch_size": 4, "num_workers": 1, **kwargs}
    with pytest.raises(ValueError, match=named):
        folder_loader(FolderDataset(folder, decode=False), **options)


def test_folder_dataset_names_bad_arguments(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image_size=-1"):
        FolderDataset(folder, image_size=-1)
    with pytest.raises(FileNotFoundError, match="missing"):
        FolderDataset(tmp_path / "missing")
