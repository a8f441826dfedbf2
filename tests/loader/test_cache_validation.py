"""The node-local cache against a source that changes under it (``loader.remote.cache``,
``loader.sources``): shards given as a list or brace pattern over HTTP, rebuilt at the same URLs
with the same sizes, are read as rebuilt (never the old cached copy or its old index), with
one HEAD per shard per run; and an evicted entry leaves no ``.lock`` or ``.use`` file."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from loader.dataloader import make_loader
from loader.reader import ShardReader
from loader.remote.cache import ShardCache
from loader.remote.errors import RemoteReadError
from loader.remote.files import RemoteFile
from loader.remote.options import RemoteOptions
from loader.remote.retry import RetryPolicy
from loader.sources import resolve_source
from shards.format import INDEX_DTYPE, index_name, shard_name
from tests.loader.faults_http import FaultyServer
from tests.loader.helpers import default_image_bytes, label_of, write_test_shards

SIZES = [12, 12, 12, 12]  # 48 samples, as in the report
POLICY = RetryPolicy(attempts=3, backoff_s=0.01, timeout_s=5)


def _rebuild(root: Path, shift: int) -> None:
    """Rewrite every shard and sidecar in place with the same sizes: labels ``+shift`` (mod 3)
    and image bytes in upper case, as a rebuild with other data at the same URLs would."""
    for number in range(len(SIZES)):
        tar_path = root / shard_name(number)
        data = bytearray(tar_path.read_bytes())
        with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tar:
            for member in tar.getmembers():
                lo, hi = member.offset_data, member.offset_data + member.size
                if member.name.endswith(".cls"):
                    data[lo:hi] = str((int(data[lo:hi]) + shift) % 3).encode()
                elif member.name.endswith(".jpg"):
                    data[lo + 4 : hi] = bytes(data[lo + 4 : hi]).upper()
        tar_path.write_bytes(bytes(data))
        idx_path = root / index_name(shard_name(number))
        rows = np.load(idx_path)
        rows["label"] = (rows["label"] + shift) % 3
        buf = io.BytesIO()
        np.save(buf, rows.astype(INDEX_DTYPE), allow_pickle=False)
        idx_path.write_bytes(buf.getvalue())


def _labels(source: Any, cache_dir: Path) -> dict[int, int]:
    loader = make_loader(
        source,
        batch_size=5,
        image_size=0,
        num_workers=2,
        retry=POLICY,
        cache_dir=cache_dir,
        multiprocessing_context="fork",
    )
    got: dict[int, int] = {}
    for batch in loader:
        for gid, label, pad in zip(batch.ids, batch.labels, batch.padded, strict=True):
            if not pad:
                assert int(gid) not in got
                got[int(gid)] = int(label)
    return got


@pytest.mark.parametrize("validators", [True, False], ids=["etag", "no-validators"])
@pytest.mark.parametrize("form", ["brace", "list"])
def test_rebuilt_shards_at_the_same_urls_are_read_anew(
    tmp_path: Path, validators: bool, form: str
) -> None:
    root = tmp_path / "data"
    write_test_shards(root, SIZES)
    cache = tmp_path / "cache"
    with FaultyServer(root, validators=validators) as server:
        names = [shard_name(i) for i in range(len(SIZES))]
        source: Any = (
            server.url + "shard-{000000..000003}.tar"
            if form == "brace"
            else [server.url + n for n in names]
        )
        total = sum(SIZES)
        assert _labels(source, cache) == {g: label_of(g) for g in range(total)}
        _rebuild(root, shift=1)
        assert _labels(source, cache) == {g: (label_of(g) + 1) % 3 for g in range(total)}
        # the shard bytes too, not only the index's labels
        dataset = resolve_source(source, retry=POLICY)
        options = RemoteOptions.build(
            retry=POLICY, cache_dir=cache, cache_limit=None, counters=None
        )
        for shard in dataset.shards:
            with ShardReader(shard, remote=options) as reader:
                for sample in reader.read(0, shard.nsamples):
                    assert bytes(sample.data) == default_image_bytes(sample.gid)[:4] + (
                        default_image_bytes(sample.gid)[4:].upper()
                    )
        if validators:  # a run whose copies are current costs one HEAD per shard, no GET
            server.log.clear()
            assert _labels(source, cache) == {g: (label_of(g) + 1) % 3 for g in range(total)}
            heads = [p for m, p, _, _ in server.log if m == "HEAD" and p.endswith(".tar")]
            assert sorted(heads) == sorted(f"/{n}" for n in names)
            assert not [p for m, p, _, _ in server.log if m == "GET" and p.endswith(".tar")]


def test_a_shard_rewritten_after_the_dataset_was_resolved_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_test_shards(root, SIZES)
    with FaultyServer(root) as server:
        source = resolve_source(server.url + "shard-{000000..000003}.tar", retry=POLICY)
        _rebuild(root, shift=2)
        os.utime(root / shard_name(0), ns=(1, 1))  # whatever the clock, a new Last-Modified
        for cache_dir in (None, tmp_path / "cache"):
            options = RemoteOptions.build(
                retry=POLICY, cache_dir=cache_dir, cache_limit=None, counters=None
            )
            with ShardReader(source.shards[0], remote=options) as reader:
                with pytest.raises(RemoteReadError, match="changed on the server"):
                    list(reader.read(0, 1))
        assert not [e for e in os.listdir(tmp_path / "cache") if not e.endswith((".use", ".lock"))]


def test_an_index_cached_without_checksum_goes_with_its_shard(tmp_path: Path) -> None:
    """A manifest without sha256s: the index is cached under its shard's validator."""
    root = tmp_path / "data"
    manifest = write_test_shards(root, SIZES)
    doc = json.loads(manifest.read_text())
    for entry in doc["shardlist"]:
        del entry["sha256"], entry["index_sha256"]
    manifest.write_text(json.dumps(doc))
    with FaultyServer(root) as server:
        assert _labels(server.url + "manifest.json", tmp_path / "cache") == {
            g: label_of(g) for g in range(sum(SIZES))
        }
        _rebuild(root, shift=1)
        assert _labels(server.url + "manifest.json", tmp_path / "cache") == {
            g: (label_of(g) + 1) % 3 for g in range(sum(SIZES))
        }


def test_eviction_removes_lock_and_use_files(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_test_shards(root, SIZES)
    sizes = [(root / shard_name(i)).stat().st_size for i in range(len(SIZES))]
    cache = ShardCache(str(tmp_path / "cache"), limit=max(sizes) + 1)
    with FaultyServer(root) as server:
        for number, size in enumerate(sizes):
            remote = RemoteFile(server.url + shard_name(number), retry=POLICY)
            cache.open(remote, size=size).close()
        left = sorted(os.listdir(cache.directory))
        last = cache.name(server.url + shard_name(len(sizes) - 1))
        assert [e for e in left if not e.startswith(".evict")] == [
            last, f"{last}.lock", f"{last}.ok", f"{last}.use"
        ]  # fmt: skip
        # an entry a reader holds open stays, whole
        held = cache.open(RemoteFile(server.url + shard_name(0), retry=POLICY), size=sizes[0])
        cache.open(RemoteFile(server.url + shard_name(1), retry=POLICY), size=sizes[1]).close()
        assert os.path.exists(held.path) and os.path.exists(held.path + ".use")
        held.close()
        cache.open(RemoteFile(server.url + shard_name(2), retry=POLICY), size=sizes[2]).close()
        names = {cache.name(server.url + shard_name(i)) for i in (0, 1)}
        assert not [e for e in os.listdir(cache.directory) if e.startswith(tuple(names))]
