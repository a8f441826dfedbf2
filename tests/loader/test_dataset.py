"""``ShardDataset`` end to end: sources (HTTP, foreign shards), bad samples, damaged shards,
explicit ranks, and argument checks. Errors raised in workers are checked as they reach the
main process through a real DataLoader."""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import webdataset as wds

from loader.dataloader import make_loader
from loader.dataset import ShardDataset
from loader.plan.ranks import rank_and_world
from loader.tracker import DuplicateTracker, EpochCounts
from shards.format import make_key
from tests.loader.helpers import (
    default_image_bytes,
    jpeg_bytes,
    loader_over,
    track,
    write_test_shards,
)

GARBAGE = b"\x00 this is not an image \x00" * 4


def with_bad(*bad: int) -> Callable[[int], bytes]:
    return lambda gid: GARBAGE if gid in bad else jpeg_bytes(gid)


# --- bad samples ---------------------------------------------------------------------------


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("bad", [0, 6, 13])
def test_skip_delivers_the_rest_and_keeps_the_batch_count(
    tmp_path: Path, num_workers: int, bad: int
) -> None:
    manifest = write_test_shards(tmp_path, [9, 5], image_bytes=with_bad(bad))
    loader = loader_over(manifest, num_workers)
    counts, batches = track(loader, 14)
    assert (counts.delivered, counts.unique, counts.duplicates) == (13, 13, 0)
    assert (counts.missing, counts.padded) == (1, 1)
    assert batches == len(loader) == 4


def test_skip_warns_with_shard_and_member(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    manifest = write_test_shards(tmp_path, [4, 6], image_bytes=with_bad(7))
    with caplog.at_level(logging.WARNING, logger="shardfeed.loader"):
        counts, _ = track(loader_over(manifest, 0), 10)
    assert counts.missing == 1
    [record] = [r for r in caplog.records if "skipping bad sample" in r.getMessage()]
    message = record.getMessage()
    assert str(tmp_path / "shard-000001.tar") in message
    assert f"member {make_key(7, 10)}.jpg" in message and "id 7" in message


def test_skip_budget_is_enforced(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path, [10], image_bytes=with_bad(2, 5, 8))
    assert track(loader_over(manifest, 0, skip_budget=3), 10)[0].missing == 3
    with pytest.raises(ValueError, match=r"more than skip_budget=2 bad samples") as info:
        track(loader_over(manifest, 1, skip_budget=2), 10)
    assert "shard-000000.tar" in str(info.value)


@pytest.mark.parametrize("with_index", [True, False])
def test_raise_names_shard_and_member(tmp_path: Path, with_index: bool) -> None:
    manifest = write_test_shards(tmp_path, [5, 8], image_bytes=with_bad(9), with_index=with_index)
    with pytest.raises(ValueError) as info:
        track(loader_over(manifest, 2, bad_samples="raise"), 13)
    message = str(info.value)
    assert "DataLoader worker process" in message
    assert f"shard {tmp_path / 'shard-000001.tar'} member {make_key(9, 13)}.jpg" in message
    assert "BadSampleError" in message


def test_a_worker_whose_samples_are_all_bad_says_so(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path, [3], image_bytes=with_bad(0, 1, 2))
    with pytest.raises(ValueError, match="every sample of this worker's range was bad"):
        track(loader_over(manifest, 0), 3)


def test_missing_label_is_a_bad_sample(tmp_path: Path) -> None:
    shards = tmp_path / "foreign-{000000..000000}.tar"
    _write_foreign(tmp_path, [6], drop_label=3)
    counts, batches = track(loader_over(str(shards), 0, batch_size=6), 6)
    assert (counts.missing, counts.padded, batches) == (1, 1, 1)
    with pytest.raises(ValueError, match=r"member \S*_0003\.jpg .* no class label"):
        track(loader_over(str(shards), 0, bad_samples="raise"), 6)


# --- damaged and missing shards ------------------------------------------------------------


@pytest.mark.parametrize("with_index", [True, False])
def test_a_truncated_shard_is_named(tmp_path: Path, with_index: bool) -> None:
    manifest = write_test_shards(tmp_path, [6, 7, 5], image_bytes=jpeg_bytes, with_index=with_index)
    loader = loader_over(manifest, 2)
    shard = tmp_path / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[:3000])
    with pytest.raises(ValueError, match="truncated") as info:
        track(loader, 18)
    assert str(shard) in str(info.value)


def test_a_missing_shard_is_named(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path, [6, 7, 5], image_bytes=jpeg_bytes)
    loader = loader_over(manifest, 2)
    shard = tmp_path / "shard-000002.tar"
    shard.unlink()
    with pytest.raises(FileNotFoundError, match="not found") as info:
        track(loader, 18)
    assert f"shard {shard}" in str(info.value)
    with pytest.raises(FileNotFoundError, match="shard-000002.tar"):
        ShardDataset(manifest)


# --- sources -------------------------------------------------------------------------------


@pytest.mark.parametrize("with_index", [True, False])
def test_shards_served_over_http_load_exactly_once(
    tmp_path: Path, http_server: Any, with_index: bool
) -> None:
    write_test_shards(tmp_path, [7, 12, 4], image_bytes=jpeg_bytes, with_index=with_index)
    base = http_server(tmp_path)
    loader = loader_over(base + "manifest.json", 2, batch_size=5)
    assert loader.dataset.source.shards[0].url.startswith("http://127.0.0.1:")
    for epoch in range(2):
        counts, batches = track(loader, 23)
        assert counts == EpochCounts(0, 23, 23, 0, 0, 0), epoch
        assert batches == len(loader) == 5
    assert http_server.ranged_gets(".tar")


def test_shards_listed_by_url_pattern_over_http(tmp_path: Path, http_server: Any) -> None:
    write_test_shards(tmp_path, [5, 6], image_bytes=jpeg_bytes)
    base = http_server(tmp_path)
    loader = loader_over(base + "shard-{000000..000001}.tar", 2)
    counts, _ = track(loader, 11)
    assert (counts.unique, counts.duplicates, counts.missing) == (11, 0, 0)


def test_a_missing_shard_over_http_is_named(tmp_path: Path, http_server: Any) -> None:
    write_test_shards(tmp_path, [5, 6], image_bytes=jpeg_bytes)
    loader = loader_over(http_server(tmp_path) + "manifest.json", 1)
    (tmp_path / "shard-000000.tar").unlink()
    with pytest.raises(FileNotFoundError, match=r"shard http://127\.0\.0\.1:\d+/shard-000000\.tar"):
        track(loader, 11)


def _write_foreign(root: Path, sizes: list[int], drop_label: int | None = None) -> list[int]:
    """Shards written by webdataset's ``ShardWriter`` (PAX headers for the long names, ``.cls``
    before ``.jpg``); returns the labels in global-id order."""
    labels = []
    gid = 0
    for number, size in enumerate(sizes):
        with wds.TarWriter(str(root / f"foreign-{number:06d}.tar")) as sink:
            for _ in range(size):
                sample: dict[str, Any] = {
                    "__key__": f"{'a_rather_long_key_' * 6}{gid:04d}",
                    "jpg": jpeg_bytes(gid),
                    "cls": (gid * 5) % 4,
                }
                if gid == drop_label:
                    del sample["cls"]
                sink.write(sample)
                labels.append((gid * 5) % 4)
                gid += 1
    return labels


def test_foreign_shards_load_by_brace_pattern_exactly_once(tmp_path: Path) -> None:
    with wds.ShardWriter(str(tmp_path / "foreign-%06d.tar"), maxcount=9, verbose=0) as sink:
        for gid in range(25):
            sink.write({"__key__": f"{'k' * 110}{gid:04d}", "jpg": jpeg_bytes(gid), "cls": gid % 4})
    assert (tmp_path / "foreign-000000.tar").read_bytes()[156:157] == b"x"
    assert not list(tmp_path.glob("*.json")) and not list(tmp_path.glob("*.npy"))
    loader = loader_over(str(tmp_path / "foreign-{000000..000002}.tar"), 2, batch_size=4)
    assert [s.nsamples for s in loader.dataset.source.shards] == [9, 9, 7]
    tracker = DuplicateTracker(25)
    for batch in loader:
        tracker.update(batch.ids, batch.padded)
        assert batch.labels.tolist() == [i % 4 for i in batch.ids.tolist()]
    assert tracker.end_epoch() == EpochCounts(0, 25, 25, 0, 0, 0)


# --- ranks without torch.distributed ------------------------------------------------------


@pytest.mark.parametrize(("even", "sizes"), [("pad", [9, 4]), ("none", [9, 4]), ("drop", [9, 4])])
def test_explicit_ranks_split_the_epoch(tmp_path: Path, even: str, sizes: list[int]) -> None:
    manifest = write_test_shards(tmp_path, sizes, image_bytes=jpeg_bytes)
    total = sum(sizes)  # 13 = 2 * 3 * 2 + 1 with batch 3: one rank's share is 7, the other 6
    tracker = DuplicateTracker(total)
    batches = []
    drops = 0
    for rank in range(2):
        dataset = ShardDataset(
            manifest, batch_size=3, image_size=8, even=even, rank=rank, world_size=2
        )
        drops += sum(p.drop for p in dataset.epoch_plan(0, 2))
        loader = make_loader(dataset, num_workers=2, prefetch_factor=1)
        got = list(loader)
        assert len(got) == len(loader)
        batches.append(len(got))
        for batch in got:
            tracker.update(batch.ids, batch.padded)
    counts = tracker.end_epoch()
    expected = {
        "pad": ([3, 3], 0, 1, 0),
        "none": ([3, 2], 0, 0, 0),
        "drop": ([2, 2], 1, 0, 1),
    }[even]
    assert (batches, counts.missing, counts.padded, drops) == expected
    assert counts.duplicates == 0


def test_rank_and_world_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write_test_shards(tmp_path, [10], image_bytes=jpeg_bytes)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert rank_and_world() == (1, 2)
    dataset = ShardDataset(manifest, batch_size=2, image_size=0, shuffle_buffer=0)
    ids = sorted(i for b in dataset for i in b.ids.tolist())
    assert len(ids) == 5 and len(dataset) == 3
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(ValueError, match="RANK='one'"):
        rank_and_world()


def test_decode_false_yields_ids_without_pixels(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path, [5, 4])
    loader = loader_over(manifest, 2, decode=False, batch_size=4)
    batches = list(loader)
    assert [tuple(b.images.shape) for b in batches if len(b.ids) == 4] == [(4, 0, 0, 3)] * 2
    assert sorted(i for b in batches for i in b.ids.tolist()) == list(range(9))
    assert sum(int(b.nbytes.sum()) for b in batches) == sum(
        len(default_image_bytes(i)) for i in range(9)
    )


def test_pickled_copy_keeps_the_epoch_counter_shared(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path, [4])
    dataset = ShardDataset(manifest, batch_size=2, image_size=0)
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy._rank is None and copy.num_samples == 4
    assert os.fspath(copy.source.origin) == os.fspath(dataset.source.origin)


# --- arguments -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"batch_size": 0}, "batch_size=0"),
        ({"batch_size": 2.5}, "batch_size=2.5"),
        ({"image_size": -1}, "image_size=-1"),
        ({"seed": -4}, "seed=-4"),
        ({"shuffle_buffer": -1}, "shuffle_buffer=-1"),
        ({"even": "balanced"}, "even='balanced'"),
        ({"bad_samples": "warn"}, "bad_samples='warn'"),
        ({"skip_budget": -1}, "skip_budget=-1"),
        ({"latency_ms": -5.0}, "latency_ms=-5.0"),
        ({"rank": 1}, "rank=1 world_size=None"),
        ({"rank": 2, "world_size": 2}, "rank=2"),
        ({"rank": 0, "world_size": 0}, "world_size=0"),
        ({"rank": 0, "world_size": 9}, "world_size=9 is larger than the number of samples 6"),
    ],
)
def test_bad_arguments_are_named(tmp_path: Path, kwargs: dict[str, Any], named: str) -> None:
    manifest = write_test_shards(tmp_path, [6])
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        ShardDataset(manifest, **kwargs)


@pytest.mark.parametrize("source", ["", [], 17])
def test_bad_sources_are_refused(source: Any) -> None:
    with pytest.raises(ValueError, match="expected"):
        ShardDataset(source)
