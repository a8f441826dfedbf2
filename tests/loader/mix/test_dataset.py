"""A mixed loader end to end: real DataLoader workers, two ranks, labels, bad samples, HTTP."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from loader import BadSampleError, MixError, ShardDataset, Source, make_loader
from loader.mix.dataset import MixedDataset
from loader.mix.tracker import MixTracker
from tests.loader.helpers import HttpServers, default_image_bytes, write_test_shards
from tests.loader.mix.helpers import planned, rows, write_sources

FAST = {"decode": False, "image_size": 0, "batch_size": 4}


@pytest.mark.parametrize("even", ["pad", "none"])
def test_two_ranks_with_workers_deliver_every_position_once(tmp_path: Path, even: str) -> None:
    a, b, c = write_sources(tmp_path, [[9, 5, 7], [4, 4], [3]])
    sources = [Source(a, weight=5, name="a"), Source(b, weight=3), Source(c, repeat=2)]
    loaders = [
        make_loader(
            sources,
            epoch_size=37,
            num_workers=2,
            rank=r,
            world_size=2,
            even=even,
            prefetch_factor=1,
            **FAST,
        )  # fmt: skip
        for r in range(2)
    ]
    dataset = loaders[0].dataset
    assert isinstance(dataset, MixedDataset)
    assert dataset.mix.quotas == [19, 12, 6]
    for epoch in range(2):
        got: Counter[tuple[int, int]] = Counter()
        counts = []
        for loader in loaders:
            real, _, batches = rows(loader)
            got.update(real)
            counts.append(len(batches))
        assert got == planned(dataset, epoch)
        if even == "pad":
            assert counts[0] == counts[1]


def test_spawned_workers_deliver_the_plan(tmp_path: Path) -> None:
    a, b = write_sources(tmp_path, [[6, 5], [4]])
    sources = [Source(a, weight=2), Source(b, weight=1)]
    loader = make_loader(sources, num_workers=1, multiprocessing_context="spawn", **FAST)
    real, _, batches = rows(loader)
    assert Counter(real) == planned(loader.dataset, 0)
    assert all(len(b.position) == len(b.ids) for b in batches)


def test_every_full_batch_holds_the_mix(tmp_path: Path) -> None:
    a, b, c = write_sources(tmp_path, [[40, 40], [30], [20]])
    sources = [Source(a, weight=6), Source(b, weight=3), Source(c, weight=1)]
    loader = make_loader(sources, epoch_size=100, num_workers=0, **{**FAST, "batch_size": 10})
    inter = loader.dataset.mix.interleave(0)
    for batch in rows(loader)[2]:
        counts = np.bincount(batch.source.numpy(), minlength=3)
        for s, share in enumerate([6, 3, 1]):
            assert abs(counts[s] - share) < inter.window_bound(s)


def test_a_list_of_manifests_is_a_mix_by_size(tmp_path: Path) -> None:
    a, b = write_sources(tmp_path, [[5, 3], [4]])
    loader = make_loader([str(a), str(b)], num_workers=0, **FAST)
    real, padded, _ = rows(loader)
    assert padded == 0
    assert Counter(real) == Counter([(0, i) for i in range(8)] + [(1, i) for i in range(4)])


def test_a_list_of_manifests_and_shards_points_to_source(tmp_path: Path) -> None:
    a, b = write_sources(tmp_path, [[5], [4]])
    with pytest.raises(MixError, match=r"pass \[Source\(location, weight=...\), ...\]"):
        make_loader([str(a), str(b.parent / "shard-000000.tar")], num_workers=0, **FAST)


def test_a_single_location_is_not_a_mix(tmp_path: Path) -> None:
    (a,) = write_sources(tmp_path, [[5, 3]])
    for source in (str(a), [str(a.parent / "shard-000000.tar")]):
        loader = make_loader(source, num_workers=0, **FAST)
        assert type(loader.dataset) is ShardDataset
        batch = next(iter(loader))
        assert not hasattr(batch, "source")


def test_label_offsets_and_class_maps_put_sources_in_one_head(tmp_path: Path) -> None:
    a, b, c = write_sources(tmp_path, [[6], [6], [6]])
    sources = [
        Source(a, samples=6),
        Source(b, samples=6, label_offset=3),
        Source(c, samples=6, class_map={"c0": 8, "c1": 7, "c2": 6}),
    ]
    loader = make_loader(sources, num_workers=0, **FAST)
    assert loader.dataset.classes == ("c0", "c1", "c2") * 2 + ("c2", "c1", "c0")
    for batch in rows(loader)[2]:
        for s, gid, label in zip(batch.source.tolist(), batch.ids.tolist(), batch.labels.tolist(),
                                 strict=True):  # fmt: skip
            assert label == [gid % 3, gid % 3 + 3, 8 - gid % 3][s]


def test_two_names_on_one_label_are_refused(tmp_path: Path) -> None:
    a, b = write_sources(tmp_path, [[3], [3]])
    sources = [Source(a, weight=1), Source(b, weight=1, class_map={"c0": 1, "c1": 0, "c2": 2})]
    with pytest.raises(MixError, match="label 1 for 'c1' of source .* and 'c0'"):
        make_loader(sources, num_workers=0, **FAST)
    with pytest.raises(MixError, match=r"no label for \['c2'\]"):
        make_loader([Source(a, weight=1, class_map={"c0": 0, "c1": 1})], num_workers=0, **FAST)


def _bad_at_2(gid: int) -> bytes:
    return b"not an image" if gid == 2 else default_image_bytes(gid)


def test_each_source_keeps_its_own_bad_sample_policy(tmp_path: Path) -> None:
    good = write_test_shards(tmp_path / "good", [6])
    bad = write_test_shards(tmp_path / "bad", [5], image_bytes=_bad_at_2)
    raising = [Source(good, weight=1), Source(bad, weight=1, name="web", bad_samples="raise")]
    with pytest.raises(BadSampleError, match=r"source 'web' shard .*shard-000000.tar member"):
        rows(make_loader(raising, num_workers=2, prefetch_factor=1, **FAST))
    skipping = [Source(good, weight=1, bad_samples="raise"), Source(bad, weight=1, name="web")]
    loader = make_loader(skipping, num_workers=0, **FAST)
    tracker = MixTracker(loader.dataset.mix)
    for batch in loader:
        tracker.update(batch.source, batch.ids, batch.padded)
    good_counts, web = tracker.end_epoch()
    assert (good_counts.delivered, good_counts.missing, good_counts.duplicates) == (6, 0, 0)
    assert (web.delivered, web.missing, web.duplicates) == (4, 1, 0)
    assert good_counts.padded + web.padded == 1  # the skipped row's filler


def test_local_and_http_sources_in_one_mix(tmp_path: Path, http_server: HttpServers) -> None:
    a, b = write_sources(tmp_path, [[7, 2], [5, 4]])
    url = http_server(b.parent) + "manifest.json"
    loader = make_loader([Source(a, weight=1), Source(url, weight=1)], num_workers=2,
                         prefetch_factor=1, **FAST)  # fmt: skip
    real, _, _ = rows(loader)
    assert Counter(real) == planned(loader.dataset, 0)
    assert any(path.endswith(".tar") for _, path, _ in http_server.requests)


def test_the_tracker_counts_each_source_against_its_quota(tmp_path: Path) -> None:
    a, b = write_sources(tmp_path, [[5], [3]])
    loader = make_loader([Source(a, repeat=2), Source(b, samples=5)], num_workers=0, **FAST)
    tracker = MixTracker(loader.dataset.mix)
    for _ in range(3):
        for batch in loader:
            tracker.update(batch.source, batch.ids, batch.padded)
        counts = tracker.end_epoch()
        assert [(c.quota, c.delivered, c.duplicates, c.missing) for c in counts] == [
            (10, 10, 0, 0),
            (5, 5, 0, 0),
        ]
    with pytest.raises(ValueError, match=r"sources in \[0, 2\)"):
        tracker.update(np.array([2]), np.array([0]), np.array([False]))


def test_a_stopping_mix_ends_where_the_first_source_runs_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = write_sources(tmp_path, [[20], [4]])
    sources = [Source(a, weight=1), Source(b, weight=1, name="small")]
    with caplog.at_level(logging.WARNING, "shardfeed.loader"):
        loader = make_loader(sources, epoch_size=20, exhaustion="stop", num_workers=0, **FAST)
    assert "source 'small' (4 samples) runs out first" in caplog.text
    for epoch in range(2):
        real, _, _ = rows(loader)
        assert Counter(real) == planned(loader.dataset, epoch)
        assert len(real) == 8 and len(set(real)) == 8


def test_device_decoding_of_a_mix_is_refused(tmp_path: Path) -> None:
    a, b = write_sources(tmp_path, [[3], [3]])
    with pytest.raises(MixError, match="decode on the CPU for a mix"):
        make_loader([Source(a, weight=1), Source(b, weight=1)], decode="device", num_workers=0)
    with pytest.raises(MixError, match="expected a non-empty list of loader.Source"):
        MixedDataset([])


def test_a_cached_http_source_beside_a_local_one(tmp_path: Path, http_server: HttpServers) -> None:
    a, b = write_sources(tmp_path, [[5, 4], [6, 3]])
    url = http_server(b.parent) + "manifest.json"
    sources = [Source(a, weight=1), Source(url, weight=1)]
    options = {"cache_dir": tmp_path / "cache", "cache_limit": 1 << 20, **FAST}
    loader = make_loader(sources, num_workers=2, prefetch_factor=1, **options)
    for epoch in range(2):
        real, _, _ = rows(loader)
        assert Counter(real) == planned(loader.dataset, epoch)
    assert any((tmp_path / "cache").rglob("*.tar"))
