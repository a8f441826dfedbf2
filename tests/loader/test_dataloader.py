"""End-to-end tests of ``make_loader`` with real DataLoader worker processes.

Every test writes tiny shards of real JPEGs and checks what arrives in the main process: each
global id exactly once per epoch (``DuplicateTracker``), a new order every epoch, the batch count
``len(loader)`` promises, and the batch layout.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import psutil
import pytest
import torch
from torch.utils.data import DataLoader

from loader.batch import Batch, BatchGroup
from loader.dataloader import WorkerInit, make_loader, transfer_batches_for
from loader.dataset import ShardDataset
from loader.tracker import DuplicateTracker, EpochCounts
from tests.loader.helpers import jpeg_bytes, label_of, write_test_shards


def dataset_of(loader: DataLoader[Batch]) -> ShardDataset:
    dataset = loader.dataset
    assert isinstance(dataset, ShardDataset)
    return dataset


class EpochRun(NamedTuple):
    counts: EpochCounts
    ids: list[int]
    sizes: list[int]


def run_epochs(loader: Any, num_samples: int, epochs: int, *, set_epoch: bool) -> list[EpochRun]:
    """Iterate ``epochs`` epochs, tracking every id; ``set_epoch`` chooses the loop style."""
    tracker = DuplicateTracker(num_samples)
    runs = []
    for epoch in range(epochs):
        if set_epoch:
            dataset_of(loader).set_epoch(epoch)
        tracker.start_epoch(epoch)
        ids: list[int] = []
        sizes: list[int] = []
        for batch in loader:
            tracker.update(batch.ids, batch.padded)
            ids.extend(batch.ids.tolist())
            sizes.append(len(batch.ids))
        runs.append(EpochRun(tracker.end_epoch(), ids, sizes))
    return runs


# shard counts 1, 2, 3 and 7 with uneven sizes; batch sizes leave a partial batch
LAYOUTS = {
    1: ([47], 5),
    2: ([29, 18], 4),
    3: ([5, 31, 13], 6),
    7: ([9, 2, 11, 1, 8, 13, 6], 7),
}
GRID = [
    pytest.param(
        workers,
        shards,
        persistent,
        set_epoch,
        id=f"w{workers}-s{shards}-{'persistent' if persistent else 'fresh'}"
        f"-{'set_epoch' if set_epoch else 'no_set_epoch'}",
    )
    for workers in (0, 1, 2, 3, 5)
    for shards in sorted(LAYOUTS)
    for persistent in ((False,) if workers == 0 else (True, False))
    for set_epoch in (True, False)
]


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("layouts")
    return {
        n: write_test_shards(root / f"s{n}", sizes, image_bytes=jpeg_bytes)
        for n, (sizes, _) in LAYOUTS.items()
    }


@pytest.mark.parametrize(("num_workers", "num_shards", "persistent", "set_epoch"), GRID)
def test_every_id_exactly_once_per_epoch_in_a_new_order(
    layouts: dict[int, Path],
    num_workers: int,
    num_shards: int,
    persistent: bool,
    set_epoch: bool,
) -> None:
    sizes, batch_size = LAYOUTS[num_shards]
    total = sum(sizes)
    loader = make_loader(
        layouts[num_shards],
        batch_size=batch_size,
        num_workers=num_workers,
        image_size=16,
        shuffle_buffer=8,
        prefetch_factor=2,
        persistent_workers=persistent,
    )
    runs = run_epochs(loader, total, 2, set_epoch=set_epoch)
    for epoch, run in enumerate(runs):
        assert run.counts == EpochCounts(epoch, total, total, 0, 0, 0)
        assert len(run.sizes) == len(loader) == -(-total // batch_size)
        assert sum(s < batch_size for s in run.sizes) == 1
    assert sorted(runs[0].ids) == sorted(runs[1].ids) == list(range(total))
    assert runs[0].ids != runs[1].ids


def test_workers_outnumbering_batches_leave_some_idle(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path, [3, 4], image_bytes=jpeg_bytes)
    loader = make_loader(manifest, batch_size=4, num_workers=5, image_size=16, prefetch_factor=1)
    runs = run_epochs(loader, 7, 2, set_epoch=False)
    assert [r.counts.missing + r.counts.duplicates for r in runs] == [0, 0]
    assert [sorted(r.sizes) for r in runs] == [[3, 4], [3, 4]]


def test_set_epoch_replays_an_epoch_in_persistent_workers(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path, [11, 9, 14], image_bytes=jpeg_bytes)
    loader = make_loader(manifest, batch_size=4, num_workers=2, image_size=16, prefetch_factor=1)
    orders = []
    for epoch in (3, 4, 3):
        dataset_of(loader).set_epoch(epoch)
        orders.append([i for b in loader for i in b.ids.tolist()])
    assert orders[0] == orders[2] != orders[1]
    assert sorted(orders[1]) == list(range(34))


@pytest.mark.parametrize("persistent", [True, False])
def test_an_epoch_left_early_does_not_spoil_the_next(tmp_path: Path, persistent: bool) -> None:
    manifest = write_test_shards(tmp_path, [12, 15], image_bytes=jpeg_bytes)
    loader = make_loader(
        manifest,
        batch_size=3,
        num_workers=2,
        image_size=16,
        prefetch_factor=2,
        persistent_workers=persistent,
    )
    for _ in zip(range(2), loader, strict=False):
        pass
    runs = run_epochs(loader, 27, 2, set_epoch=False)
    assert [r.counts.unique for r in runs] == [27, 27]
    assert [r.counts.duplicates for r in runs] == [0, 0]
    assert runs[0].ids != runs[1].ids
    reference = make_loader(manifest, batch_size=3, num_workers=2, image_size=16)
    dataset_of(reference).set_epoch(1)
    assert [i for b in reference for i in b.ids.tolist()] == runs[0].ids


def test_a_look_in_the_main_process_does_not_split_the_workers(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path, [4, 7, 3, 5], image_bytes=jpeg_bytes)
    dataset = ShardDataset(manifest, batch_size=3, image_size=16)
    first = next(iter(dataset))
    assert first.images.shape == (3, 16, 16, 3)
    loader = make_loader(dataset, num_workers=2, prefetch_factor=1)
    runs = run_epochs(loader, 19, 2, set_epoch=False)
    assert [(r.counts.unique, r.counts.duplicates) for r in runs] == [(19, 0), (19, 0)]
    assert runs[0].ids != runs[1].ids


def test_epochs_advance_by_themselves_like_set_epoch(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path, [10, 13], image_bytes=jpeg_bytes)
    options: dict[str, Any] = {"batch_size": 3, "image_size": 16, "prefetch_factor": 1}
    free = make_loader(manifest, num_workers=2, **options)
    chosen = make_loader(manifest, num_workers=2, persistent_workers=False, **options)
    free_runs = run_epochs(free, 23, 3, set_epoch=False)
    chosen_runs = run_epochs(chosen, 23, 3, set_epoch=True)
    assert [r.ids for r in free_runs] == [r.ids for r in chosen_runs]
    assert dataset_of(free).next_epoch == 3


def test_batches_have_the_promised_layout(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path, [6, 7], image_bytes=jpeg_bytes)
    loader = make_loader(manifest, batch_size=4, num_workers=2, image_size=16, prefetch_factor=1)
    batches = list(loader)
    assert len(batches) == len(loader) == 4
    for batch in batches:
        assert isinstance(batch, Batch)
        n = len(batch.ids)
        assert batch.images.dtype == torch.uint8 and batch.images.shape == (n, 16, 16, 3)
        assert batch.labels.dtype == torch.int64 and batch.labels.shape == (n,)
        assert batch.ids.dtype == torch.int64
        assert batch.padded.dtype == torch.bool and not batch.padded.any()
        assert batch.labels.tolist() == [label_of(i) for i in batch.ids.tolist()]
        assert int(batch.images.float().std()) > 0


def test_eval_mode_is_deterministic(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path, [9, 8], image_bytes=jpeg_bytes)

    def images_by_id() -> dict[int, bytes]:
        loader = make_loader(
            manifest, batch_size=5, num_workers=2, image_size=16, train=False, prefetch_factor=1
        )
        seen: dict[int, bytes] = {}
        for epoch in range(2):
            for batch in loader:
                for i, image in zip(batch.ids.tolist(), batch.images, strict=True):
                    assert seen.setdefault(i, image.numpy().tobytes()) == image.numpy().tobytes()
            assert len(seen) == 17, epoch
        return seen

    assert images_by_id() == images_by_id()
    ordered = make_loader(manifest, batch_size=5, num_workers=0, image_size=16, train=False)
    a, b = ([i for x in ordered for i in x.ids.tolist()] for _ in range(2))
    dataset_of(ordered).set_epoch(0)
    assert [i for x in ordered for i in x.ids.tolist()] == a
    assert sorted(a) == sorted(b) == list(range(17))


def _record_threads(path: str, worker_id: int) -> None:
    with open(path, "a") as f:
        f.write(f"{worker_id} {cv2.getNumThreads()} {os.getpid()}\n")


class _Recorder:
    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __call__(self, worker_id: int) -> None:
        _record_threads(self.path, worker_id)


def test_workers_run_one_opencv_thread_and_the_user_init(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path / "d", [5, 5], image_bytes=jpeg_bytes)
    record = tmp_path / "init.txt"
    loader = make_loader(
        manifest,
        batch_size=4,
        num_workers=2,
        image_size=16,
        prefetch_factor=1,
        worker_init_fn=_Recorder(record),
    )
    assert len(list(loader)) == 3
    rows = sorted(line.split() for line in record.read_text().splitlines())
    assert [(w, t) for w, t, _ in rows] == [("0", "1"), ("1", "1")]
    assert {pid for _, _, pid in rows}.isdisjoint({str(os.getpid())})


def test_worker_init_is_picklable_and_composes() -> None:
    import pickle

    calls: list[int] = []
    init = WorkerInit(calls.append)
    before = cv2.getNumThreads()
    try:
        init(3)
        assert calls == [3] and cv2.getNumThreads() == 1
    finally:
        cv2.setNumThreads(before)
    assert pickle.loads(pickle.dumps(WorkerInit())).user_fn is None


def test_spawned_workers_follow_set_epoch(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path, [8, 9], image_bytes=jpeg_bytes)
    loader = make_loader(
        manifest,
        batch_size=4,
        num_workers=2,
        image_size=16,
        prefetch_factor=1,
        multiprocessing_context="spawn",
    )
    reference = make_loader(manifest, batch_size=4, num_workers=2, image_size=16)
    for epoch in (0, 5, 1):
        dataset_of(loader).set_epoch(epoch)
        dataset_of(reference).set_epoch(epoch)
        got = [i for b in loader for i in b.ids.tolist()]
        assert got == [i for b in reference for i in b.ids.tolist()]
        assert sorted(got) == list(range(17))


def test_a_ready_dataset_is_used_as_it_is(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path, [5, 6], image_bytes=jpeg_bytes)
    dataset = ShardDataset(manifest, batch_size=3, image_size=8)
    loader = make_loader(dataset, num_workers=0)
    assert loader.dataset is dataset
    assert [b.images.shape[1] for b in loader] == [8] * 4
    with pytest.raises(ValueError, match="shuffle_buffer"):
        make_loader(dataset, num_workers=0, shuffle_buffer=3)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"num_workers": -1}, "num_workers=-1"),
        ({"num_workers": 1.5}, "num_workers=1.5"),
        ({"prefetch_factor": 0}, "prefetch_factor=0"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"image_size": -3}, "image_size=-3"),
        ({"seed": -1}, "seed=-1"),
        ({"even": "spread"}, "even='spread'"),
        ({"bad_samples": "ignore"}, "bad_samples='ignore'"),
        ({"shuffle_buffer": -2}, "shuffle_buffer=-2"),
        ({"transfer_batches": 0}, "transfer_batches=0"),
        ({"transfer_batches": 2.5}, "transfer_batches=2.5"),
        ({"multiprocessing_context": "teleport", "num_workers": 1}, "teleport"),
    ],
)
def test_bad_arguments_are_named(tmp_path: Path, kwargs: dict[str, Any], named: str) -> None:
    manifest = write_test_shards(tmp_path, [4])
    with pytest.raises(ValueError, match=named.replace("[", r"\[").replace(".", r"\.")):
        make_loader(manifest, **kwargs)


def test_a_missing_source_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        make_loader(tmp_path / "nowhere" / "manifest.json", num_workers=0)


@pytest.mark.parametrize("persistent", [True, False])
def test_a_worker_error_stops_the_workers_at_once(tmp_path: Path, persistent: bool) -> None:
    def bad_at_9(gid: int) -> bytes:
        return b"not an image" if gid == 9 else jpeg_bytes(gid)

    manifest = write_test_shards(tmp_path, [6, 7], image_bytes=bad_at_9)
    loader = make_loader(
        manifest,
        batch_size=3,
        num_workers=2,
        image_size=16,
        prefetch_factor=1,
        persistent_workers=persistent,
        bad_samples="raise",
    )
    before = {p.pid for p in psutil.Process().children()}
    with pytest.raises(ValueError, match="bad sample in shard"):
        for _ in loader:
            pass
    assert {p.pid for p in psutil.Process().children() if p.is_running()} <= before
    assert loader._iterator is None
    with pytest.raises(ValueError, match="bad sample in shard"):
        list(loader)


@pytest.mark.parametrize(("transfer", "workers"), [(1, 2), (2, 2), (3, 3), (7, 2), (4, 5)])
def test_grouped_transfers_arrive_as_single_batches_exactly_once(
    layouts: dict[int, Path], transfer: int, workers: int
) -> None:
    sizes, batch_size = LAYOUTS[3]
    options: dict[str, Any] = {"batch_size": batch_size, "image_size": 16, "shuffle_buffer": 8}
    loader = make_loader(layouts[3], num_workers=workers, transfer_batches=transfer, **options)
    dataset = dataset_of(loader)
    assert dataset.transfer_batches == transfer
    iterator = iter(loader)
    batches = list(iterator)
    assert all(type(b) is Batch for b in batches)
    assert len(batches) == len(loader)
    assert sorted(i for b in batches for i in b.ids.tolist()) == list(range(sum(sizes)))
    plans = dataset.epoch_plan(0, workers)

    def items(n: int) -> int:  # the first batch alone, then groups of ``transfer``
        return n if transfer == 1 or n == 0 else 1 + -(-(n - 1) // transfer)

    assert iterator.items_received == sum(items(p.num_batches) for p in plans)  # type: ignore[attr-defined]
    single = make_loader(layouts[3], num_workers=workers, transfer_batches=1, **options)
    assert sorted(tuple(b.ids.tolist()) for b in single) == sorted(
        tuple(b.ids.tolist()) for b in batches
    )


@pytest.mark.parametrize(
    ("batch_size", "image_size", "decode", "expected"),
    [
        (64, 224, False, 16),
        (256, 224, False, 4),
        (2048, 224, False, 1),
        (1, 16, True, 16),
        (64, 0, True, 16),
        (64, 224, True, 3),
        (64, 64, True, 4),
        (256, 224, True, 1),
        (4096, 512, True, 1),
    ],
)
def test_transfer_batches_for_carries_many_samples_within_a_byte_budget(
    batch_size: int, image_size: int, decode: bool, expected: int
) -> None:
    assert transfer_batches_for(batch_size, image_size, decode) == expected


@pytest.mark.parametrize(
    ("decode", "worker_batches", "expected"),
    [(False, 31, 15), (False, 1000, 16), (False, 3, 1), (False, 0, 1), (True, 31, 3), (True, 4, 2)],
)
def test_transfer_batches_for_leaves_every_worker_two_items(
    decode: bool, worker_batches: int, expected: int
) -> None:
    assert transfer_batches_for(64, 224, decode, worker_batches=worker_batches) == expected


def test_transfer_batches_for_names_bad_arguments() -> None:
    with pytest.raises(ValueError, match="worker_batches=-1"):
        transfer_batches_for(64, 224, worker_batches=-1)
    with pytest.raises(ValueError, match="batch_size=0"):
        transfer_batches_for(0, 224)
    with pytest.raises(ValueError, match="image_size=-1"):
        transfer_batches_for(64, -1)


def test_grouping_settings_reach_the_dataloader(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path, [9, 8], image_bytes=jpeg_bytes)
    grouped = make_loader(manifest, batch_size=2, num_workers=1, decode=False, prefetch_factor=6)
    assert dataset_of(grouped).transfer_batches == 9 // 2  # at least two items per epoch
    assert grouped.prefetch_factor == 2
    single = make_loader(
        manifest, batch_size=2, num_workers=1, prefetch_factor=3, transfer_batches=1
    )
    assert single.prefetch_factor == 3
    assert dataset_of(make_loader(manifest, batch_size=2, num_workers=0)).transfer_batches == 1
    ready = ShardDataset(manifest, batch_size=2, image_size=8, transfer_batches=3)
    assert dataset_of(make_loader(ready, num_workers=1)).transfer_batches == 3
    with pytest.raises(ValueError, match="transfer_batches=0"):
        ShardDataset(manifest, transfer_batches=0)


def test_a_plain_dataloader_hands_over_the_groups(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path, [7, 6], image_bytes=jpeg_bytes)
    dataset = ShardDataset(manifest, batch_size=2, image_size=8, transfer_batches=3)
    items = list(DataLoader(dataset, batch_size=None, num_workers=2))
    assert [type(item) for item in items[:2]] == [Batch, Batch]  # each worker's first
    assert all(isinstance(item, BatchGroup) for item in items[2:]) and len(items) > 2
    batches = items[:2] + [b for item in items[2:] for b in item.batches]
    assert sorted(i for b in batches for i in b.ids.tolist()) == list(range(13))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs a CUDA device")
def test_grouped_batches_arrive_pinned(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path, [9, 8], image_bytes=jpeg_bytes)
    loader = make_loader(
        manifest, batch_size=2, num_workers=2, image_size=8, transfer_batches=3, pin_memory=True
    )
    batches = list(loader)
    assert sorted(i for b in batches for i in b.ids.tolist()) == list(range(17))
    assert all(t.is_pinned() for b in batches for t in b)


def test_stop_workers_ends_a_persistent_loaders_workers_between_epochs(tmp_path: Path) -> None:
    from loader.bench import engine
    from loader.dataloader import stop_workers

    assert engine.stop_workers is stop_workers
    manifest = write_test_shards(tmp_path, [5, 5])
    loader = make_loader(manifest, batch_size=2, num_workers=2, image_size=0)
    before = {p.pid for p in psutil.Process().children()}
    assert len([i for b in loader for i in b.ids.tolist()]) == 10
    workers = {p.pid for p in psutil.Process().children()} - before
    assert len(workers) == 2 and loader._iterator is not None
    stop_workers(loader)
    assert loader._iterator is None
    assert not any(
        psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in workers
    )
    stop_workers(loader)
    stop_workers(object())
    assert len([i for b in loader for i in b.ids.tolist()]) == 10


_AFTER_OPENCV_POOL = """
import sys, time
import cv2, numpy as np
from loader.dataloader import make_loader
cv2.GaussianBlur(np.zeros((2000, 2000, 3), np.uint8), (31, 31), 0)
time.sleep(0.2)
loader = make_loader(sys.argv[1], batch_size=4, num_workers=2, image_size=16)
print(sum(len(b.ids) for b in loader))
"""


def test_workers_start_after_the_main_process_used_opencvs_thread_pool(tmp_path: Path) -> None:
    """A fork while OpenCV's pool has threads used to leave ``WorkerInit`` waiting forever."""
    import subprocess
    import sys

    manifest = write_test_shards(tmp_path, [6, 6], image_bytes=jpeg_bytes)
    proc = subprocess.run(
        [sys.executable, "-c", _AFTER_OPENCV_POOL, str(manifest)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "12"
