"""A sidecar index that is not its shard's is refused wherever it is loaded (``loader.reader``,
``loader._scanio``): a manifest's ``index_sha256`` is checked for local files, uncached HTTP
and the cache, and an ``index_url`` naming another shard's index (no checksum to compare with)
is an error naming the shard and the sidecar, never offsets into the wrong shard."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loader.dataloader import make_loader
from loader.reader import ShardReader
from loader.remote.options import RemoteOptions
from loader.remote.retry import RetryPolicy
from loader.sources import resolve_source
from tests.loader.faults_http import FaultyServer
from tests.loader.helpers import default_image_bytes, write_test_shards

POLICY = RetryPolicy(attempts=2, backoff_s=0.01, timeout_s=5)
SIZES = [8, 8, 8]


def _images(gid: int) -> bytes:
    """Shard 1's samples are 600 bytes longer: its size differs from shard 0's by less than
    a tar record, so only the bytes at the end tell the indexes apart."""
    return default_image_bytes(gid) + (b"x" * 600 if 8 <= gid < 16 else b"")


def _swap_index(manifest: Path, keep_sha: bool, into: int = 1, other: int = 0) -> None:
    doc = json.loads(manifest.read_text())
    entries = doc["shardlist"]
    entries[into]["index_url"] = entries[other]["index_url"]
    if not keep_sha:
        del entries[into]["index_sha256"]
    manifest.write_text(json.dumps(doc))


def _reader(source: str, cache_dir: Path | None, shard: int) -> ShardReader:
    options = RemoteOptions.build(
        retry=POLICY, cache_dir=cache_dir, cache_limit=None, counters=None
    )
    return ShardReader(resolve_source(source, retry=POLICY).shards[shard], remote=options)


@pytest.mark.parametrize("where", ["local", "http", "http-cache"])
@pytest.mark.parametrize("keep_sha", [True, False], ids=["sha256", "no-sha256"])
def test_another_shards_index_is_refused(tmp_path: Path, where: str, keep_sha: bool) -> None:
    manifest = write_test_shards(tmp_path / "data", SIZES, image_bytes=_images)
    _swap_index(manifest, keep_sha)
    cache = tmp_path / "cache" if where == "http-cache" else None
    with FaultyServer(tmp_path / "data") as server:
        source = str(manifest) if where == "local" else server.url + "manifest.json"
        shards = resolve_source(source, retry=POLICY).shards
        assert shards[1].index_url is not None and shards[1].index_url.endswith(
            "shard-000000.idx.npy"
        )
        with _reader(source, cache, 1) as reader:
            match = "sha256" if keep_sha else "does not fit"
            with pytest.raises(ValueError, match=rf"shard .*shard-000001\.tar.*{match}"):
                list(reader.read(0, 8))


def test_an_index_of_a_bigger_shard_is_refused_over_http(tmp_path: Path) -> None:
    """No checksum, uncached ranged HTTP: an index whose rows run past the shard, or end far
    before it, is refused by arithmetic alone."""
    manifest = write_test_shards(
        tmp_path / "data",
        SIZES,
        image_bytes=lambda g: default_image_bytes(g) * (40 if g >= 16 else 1),
    )
    doc = json.loads(manifest.read_text())
    entries = doc["shardlist"]
    entries[0]["index_url"], entries[2]["index_url"] = (
        entries[2]["index_url"],
        entries[0]["index_url"],
    )
    for entry in entries:
        del entry["index_sha256"]
    manifest.write_text(json.dumps(doc))
    with FaultyServer(tmp_path / "data") as server:
        for shard, match in ((0, "truncated"), (2, "does not fit")):
            with _reader(server.url + "manifest.json", None, shard) as reader:
                with pytest.raises(ValueError, match=match):
                    list(reader.read(0, 8))


def test_worker_error_names_shard_and_sidecar(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path / "data", SIZES, image_bytes=_images)
    _swap_index(manifest, keep_sha=True)
    loader: Any = make_loader(
        str(manifest), batch_size=4, image_size=0, num_workers=2, multiprocessing_context="fork"
    )
    with pytest.raises(ValueError, match=r"shard-000001\.tar: sidecar .*shard-000000\.idx\.npy"):
        for _ in loader:
            pass


def test_the_right_index_still_loads_everywhere(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path / "data", SIZES, image_bytes=_images)
    with FaultyServer(tmp_path / "data") as server:
        for source, cache in (
            (str(manifest), None),
            (server.url + "manifest.json", None),
            (server.url + "manifest.json", tmp_path / "cache"),
            (server.url + "shard-{000000..000002}.tar", tmp_path / "cache2"),
        ):
            for shard in range(len(SIZES)):
                with _reader(source, cache, shard) as reader:
                    got = [bytes(s.data) for s in reader.read(0, 8)]
                assert got == [_images(8 * shard + i) for i in range(8)]
