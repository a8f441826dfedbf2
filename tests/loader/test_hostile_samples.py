"""Hostile samples (docs/architecture.md, section "Loader"): decompression bombs and labels
outside the class count are bad samples; the training head follows the manifest's classes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from loader.decode import DecodeError, ImageDecoder
from shards.imageinfo import MAX_PIXELS, image_info
from tests.helpers import png_bomb
from tests.loader.helpers import jpeg_bytes, loader_over, track, write_test_shards


def test_the_bomb_is_small_and_above_the_limit_yet_below_opencvs() -> None:
    bomb = png_bomb()
    info = image_info(bomb)
    assert info is not None and info.width * info.height > MAX_PIXELS
    assert len(bomb) < 64 << 10 and MAX_PIXELS <= 1 << 27 < 1 << 30


@pytest.mark.parametrize("make", [png_bomb], ids=["png"])
def test_the_decoder_refuses_a_bomb_before_decoding(make: object) -> None:
    decoder = ImageDecoder(8, train=False)
    out = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(DecodeError, match=r"12000x12000 .*pixels.*limit"):
        decoder(png_bomb(), out, np.random.default_rng(0))


def test_a_bomb_in_a_shard_is_a_bad_sample(tmp_path: Path) -> None:
    manifest = write_test_shards(
        tmp_path, [6], image_bytes=lambda g: png_bomb() if g == 3 else jpeg_bytes(g)
    )
    counts, _ = track(loader_over(manifest, 0), 6)
    assert counts.missing == 1 and counts.delivered == 5
    with pytest.raises(ValueError, match="pixels"):
        track(loader_over(manifest, 0, bad_samples="raise"), 6)


def _fewer_classes(manifest: Path, classes: list[str]) -> None:
    """Set the manifest's classes, and its index checksums to the sidecars as they are now."""
    doc = json.loads(manifest.read_text())
    doc["classes"] = classes
    for entry in doc["shardlist"]:
        index = manifest.parent / entry["index_url"]
        entry["index_sha256"] = hashlib.sha256(index.read_bytes()).hexdigest()
    manifest.write_text(json.dumps(doc))


def test_labels_outside_the_class_count_are_bad_samples(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path, [9], image_bytes=jpeg_bytes)
    _fewer_classes(manifest, ["c0", "c1"])
    counts, _ = track(loader_over(manifest, 0, skip_budget=5), 9)
    assert counts.missing == 3, "ids 2, 5 and 8 have label 2 of 2 classes"
    with pytest.raises(ValueError, match=r"label 2 .*2 classes"):
        track(loader_over(manifest, 0, bad_samples="raise"), 9)


def test_the_training_head_is_sized_from_the_manifest(tmp_path: Path) -> None:
    from loader.train.loop import num_classes

    manifest = write_test_shards(tmp_path, [4, 4], image_bytes=jpeg_bytes)
    index = tmp_path / "shard-000000.idx.npy"
    rows = np.load(index)
    rows["label"][0] = 1_000_000
    np.save(index, rows)
    loader = loader_over(manifest, 0)
    assert num_classes(loader.dataset) == 3
    _fewer_classes(manifest, [])
    with pytest.raises(ValueError, match=r"label 1000000 .*shard-000000\.tar"):
        num_classes(loader_over(manifest, 0).dataset)
    rows["label"][0] = 2
    np.save(index, rows)
    _fewer_classes(manifest, [])
    assert num_classes(loader_over(manifest, 0).dataset) == 3, "largest label of every shard"
