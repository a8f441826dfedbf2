"""DevicePrefetcher over a mixed loader (two ``Source``s, real DataLoader workers), on the CPU
path and on the CUDA path (``overlapped``: helper thread, side stream, one batch ahead) run
with fake streams, and on a real GPU where there is one: every ``(source, id)`` of the plan once
per epoch, ``source`` and ``position`` on every ``DeviceBatch``, and a stop through the
prefetcher resumed at another topology with every planned position exactly once."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest
import torch

import loader.device.prefetcher as prefetcher_module
from loader import Source, make_loader
from loader.batch import Batch
from loader.dataloader import ClosingDataLoader, stop_workers
from loader.device.prefetcher import DeviceBatch, DevicePrefetcher
from loader.mix.batch import MixedBatch
from loader.mix.dataset import MixedDataset
from tests.loader.device.helpers import FakeStreams, Log
from tests.loader.mix.helpers import planned, write_sources

Row = tuple[int, int, int]
FAST = {"decode": False, "image_size": 0, "prefetch_factor": 1, "epoch_size": 30}
ON_GPU = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                       reason="needs a CUDA device"))  # fmt: skip


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> list[Source]:
    a, b = write_sources(tmp_path_factory.mktemp("mix"), [[7, 6], [5]])
    return [Source(a, weight=2, name="a"), Source(b, weight=1, name="b")]


def prefetching(
    loader: ClosingDataLoader, path: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[DevicePrefetcher, FakeStreams]:
    """A prefetcher over ``loader`` on the CPU (``path="cuda"``: on the GPU); for
    ``path="overlapped"`` on its CUDA path, with fake streams and without pinning (the two
    things that need a GPU)."""
    prefetcher = DevicePrefetcher(loader, device="cuda" if path == "cuda" else "cpu")
    streams = FakeStreams(Log())
    if path == "overlapped":
        monkeypatch.setattr(prefetcher_module, "_pinned", lambda tensor: tensor)
        prefetcher._overlap = True
        prefetcher._streams = streams
    return prefetcher, streams


def rows_of(batches: list[DeviceBatch]) -> list[Row]:
    """The ``(source, id, position)`` of every real row."""
    out: list[Row] = []
    for b in batches:
        assert b.source is not None and b.position is not None
        keep = ~b.padded.cpu()
        out += zip(b.source[keep].tolist(), b.ids[keep].tolist(), b.position[keep].tolist(),
                   strict=True)  # fmt: skip
    return out


def plan_rows(dataset: MixedDataset, epoch: int) -> Counter[Row]:
    source, ids = dataset.mix.lookup(epoch, np.arange(dataset.mix.epoch_size))
    return Counter(zip(source.tolist(), ids.tolist(), range(len(ids)), strict=True))


@pytest.mark.parametrize("path", ["cpu", "overlapped", ON_GPU])
def test_every_source_and_id_once_per_epoch_with_its_source(
    sources: list[Source], path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    loader = make_loader(sources, num_workers=2, batch_size=4, **FAST)
    dataset = loader.dataset
    assert isinstance(dataset, MixedDataset)
    prefetcher, streams = prefetching(loader, path, monkeypatch)
    for epoch in range(2):
        batches = list(prefetcher)
        for b in batches:
            assert isinstance(b, DeviceBatch) and b.source is not None
            assert b.source.dtype == b.position.dtype == torch.int64  # type: ignore[union-attr]
            assert b.source.device.type == "cpu" and len(b.source) == len(b.ids)
            assert b.images.shape[:2] == (len(b.ids), 3)
        got = rows_of(batches)
        assert Counter(got) == plan_rows(dataset, epoch)
        assert Counter((s, i) for s, i, _ in got) == planned(dataset, epoch)
        assert loader.state_dict()["epoch"] == epoch + 1  # every hand-over recorded
    assert streams.events == (2 * len(loader) if path == "overlapped" else 0)
    stop_workers(loader)


def stop(
    runs: list[ClosingDataLoader], count: int, path: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[Row], list[dict[str, Any]]]:
    """Each rank's loop receives ``count`` batches through a prefetcher, then saves its state."""
    received: list[Row] = []
    states = []
    for loader in runs:
        prefetcher, _ = prefetching(loader, path, monkeypatch)
        it = iter(prefetcher)
        received += rows_of([next(it) for _ in range(count)])
        it.close()
        states.append(loader.state_dict())
        stop_workers(loader)
    return received, states


@pytest.mark.parametrize(
    ("path", "before", "after"),
    [
        ("overlapped", (1, 3), (2, 2)),
        ("overlapped", (2, 2), (1, 3)),
        ("cpu", (1, 3), (2, 2)),
        pytest.param(*ON_GPU.values, (1, 3), (2, 2), marks=ON_GPU.marks),
    ],
)
def test_a_stop_through_the_prefetcher_resumes_at_another_topology_exactly_once(
    sources: list[Source],
    path: str,
    before: tuple[int, int],
    after: tuple[int, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def loaders(world: int, workers: int, batch: int) -> list[ClosingDataLoader]:
        return [
            make_loader(
                sources, rank=r, world_size=world, num_workers=workers, batch_size=batch, **FAST
            )  # fmt: skip
            for r in range(world)
        ]

    first = loaders(before[0], before[1], 3)
    received, states = stop(first, 3, path, monkeypatch)
    assert [s["samples_taken"] for s in states] == [3 * 3] * before[0]  # not the prefetched
    second = loaders(after[0], after[1], 4)
    for loader in second:
        loader.load_state_dict(states)
    rest: list[Row] = []
    for loader in second:
        prefetcher, _ = prefetching(loader, path, monkeypatch)
        rest += rows_of(list(prefetcher))
    dataset = second[0].dataset
    assert isinstance(dataset, MixedDataset)
    assert not set(received) & set(rest)
    assert Counter(received + rest) == plan_rows(dataset, 0)
    next_epoch: list[Row] = []
    for loader in second:
        prefetcher, _ = prefetching(loader, path, monkeypatch)
        next_epoch += rows_of(list(prefetcher))
        stop_workers(loader)
    assert Counter(next_epoch) == plan_rows(dataset, 1)


def test_single_source_batches_carry_no_source_and_mixed_ones_keep_theirs() -> None:
    images = torch.zeros((2, 4, 4, 3), dtype=torch.uint8)
    columns = [torch.tensor([1, 2]), torch.tensor([5, 6]), torch.tensor([False, True])]
    plain = Batch(images, *columns, torch.tensor([9, 0]))
    mixed = MixedBatch(*plain, torch.tensor([1, 0]), torch.tensor([40, 41]))
    one, two, three = DevicePrefetcher([plain, mixed, tuple(plain)], device="cpu")  # type: ignore[list-item]
    assert one.source is None and one.position is None and three.source is None
    assert len(one) == 7 and torch.equal(one[2], plain.ids)  # the first five keep their places
    assert two.source.tolist() == [1, 0] and two.position.tolist() == [40, 41]  # type: ignore[union-attr]
    assert torch.equal(two.ids, mixed.ids) and torch.equal(two.padded, mixed.padded)
