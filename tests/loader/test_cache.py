"""The node-local shard cache (``loader.remote.cache``) with real processes: one download per shard
for 2 ranks x 2 workers, no shard bytes fetched in the second epoch, the limit kept, a killed
fill never trusted, a corrupted copy fetched again, and local sources read in place."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from loader.dataloader import make_loader
from loader.reader import ShardReader
from loader.remote.cache import ShardCache
from loader.remote.files import RemoteFile
from loader.remote.options import RemoteOptions
from loader.remote.retry import RetryPolicy
from loader.sources import resolve_source
from tests.loader.faults_http import FaultyServer
from tests.loader.helpers import default_image_bytes, write_test_shards

SIZES = [9, 6, 11, 5]
TOTAL = sum(SIZES)
POLICY = RetryPolicy(attempts=4, backoff_s=0.01, timeout_s=5)


def _run(url: str, cache_dir: str | None, epochs: int, **options: Any) -> dict[str, Any]:
    loader = make_loader(
        url,
        batch_size=4,
        image_size=0,
        retry=POLICY,
        cache_dir=cache_dir,
        multiprocessing_context="fork",
        **{"num_workers": 2, **options},
    )
    per_epoch = []
    for _ in range(epochs):
        ids: list[int] = []
        for batch in loader:
            ids.extend(int(g) for g, p in zip(batch.ids, batch.padded, strict=True) if not p)
        per_epoch.append(ids)
    return {"epochs": per_epoch, "net": loader.dataset.net.totals()}  # type: ignore[attr-defined]


def _rank_main(
    rank: int, url: str, cache_dir: str | None, out: str, workers: int = 2, epochs: int = 2
) -> None:
    os.environ["RANK"], os.environ["WORLD_SIZE"] = str(rank), "2"
    Path(out).write_text(json.dumps(_run(url, cache_dir, epochs, num_workers=workers)))


def _two_ranks(url: str, cache_dir: str | None, tmp: Path, **kw: Any) -> list[dict[str, Any]]:
    ctx = multiprocessing.get_context("spawn")
    outs = [str(tmp / f"rank{r}.json") for r in range(2)]
    procs = [
        ctx.Process(target=_rank_main, args=(r, url, cache_dir, outs[r]), kwargs=kw)
        for r in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    return [json.loads(Path(o).read_text()) for o in outs]


def _shard_bytes(server: FaultyServer) -> dict[str, int]:
    """Bytes asked for per shard path by ranged GETs (a GET without Range counts as -1)."""
    out: dict[str, int] = {}
    for method, path, rng, _ in server.log:
        if method == "GET" and path.endswith(".tar"):
            if rng is None:
                out[path] = -1
                continue
            first, last = rng.removeprefix("bytes=").split("-")
            out[path] = out.get(path, 0) + int(last) - int(first) + 1
    return out


def test_two_ranks_two_workers_download_each_shard_once(tmp_path: Path) -> None:
    write_test_shards(tmp_path / "ds", SIZES)
    sizes = {f"/ds/{p.name}": p.stat().st_size for p in (tmp_path / "ds").glob("*.tar")}
    cache = tmp_path / "cache"
    with FaultyServer(tmp_path) as server:
        url = server.url + "ds/manifest.json"
        ranks = _two_ranks(url, str(cache), tmp_path)
        for epoch in range(2):
            ids = sorted(ranks[0]["epochs"][epoch] + ranks[1]["epochs"][epoch])
            assert ids == list(range(TOTAL))
        assert _shard_bytes(server) == sizes  # each shard's bytes once, over both epochs
        index_gets = [p for m, p, _, _ in server.log if m == "GET" and p.endswith(".idx.npy")]
        assert sorted(index_gets) == sorted(p.replace(".tar", ".idx.npy") for p in sizes)
        fills = sum(r["net"]["cache_fills"] for r in ranks)
        assert fills == 2 * len(SIZES)  # shards and index files
        server.log.clear()
        again = _run(url, str(cache), 1)  # a new run on the node: all from the cache
        assert sorted(again["epochs"][0]) == list(range(TOTAL))
        assert not [p for m, p, _, _ in server.log if p.endswith((".tar", ".idx.npy"))]
        assert again["net"]["cache_fills"] == 0 and again["net"]["cache_hits"] > 0


def test_limit_is_kept_and_only_own_files_are_evicted(tmp_path: Path) -> None:
    write_test_shards(tmp_path / "ds", [8] * 5)
    shard_size = (tmp_path / "ds" / "shard-000000.tar").stat().st_size
    limit = int(shard_size * 2.5)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "mine.tar").write_bytes(b"x" * shard_size)  # not the cache's: never deleted
    with FaultyServer(tmp_path) as server:
        loader = make_loader(
            server.url + "ds/manifest.json",
            batch_size=4,
            num_workers=0,
            image_size=0,
            cache_dir=cache,
            cache_limit=limit,
        )
        own = ShardCache(str(cache), limit=limit)
        most = 0
        for epoch in range(2):
            ids = []
            for batch in loader:
                ids.extend(batch.ids.tolist())
                most = max(most, own.used_bytes())
            assert sorted(ids) == list(range(40)), epoch
        net = loader.dataset.net.totals()  # type: ignore[attr-defined]
    assert most <= limit + shard_size
    assert net["cache_evictions"] > 0
    assert (cache / "mine.tar").read_bytes() == b"x" * shard_size


def _fill_forever(url: str, cache_dir: str) -> None:
    _run(url, cache_dir, 1, num_workers=0)


def test_sigkill_during_fill_leaves_nothing_trusted(tmp_path: Path) -> None:
    write_test_shards(tmp_path / "ds", [40])
    cache = tmp_path / "cache"
    with FaultyServer(tmp_path, trickle_s=0.5) as server:
        url = server.url + "ds/manifest.json"
        server.script(".tar", ["trickle"] * 4, methods="GET")
        proc = multiprocessing.get_context("spawn").Process(
            target=_fill_forever, args=(url, str(cache))
        )
        proc.start()
        deadline = time.monotonic() + 60
        while not list(cache.glob("*.part")) and time.monotonic() < deadline:
            time.sleep(0.02)
        parts = list(cache.glob("*.part"))
        assert parts, "the fill never started"
        time.sleep(0.6)  # some bytes written
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        assert parts[0].exists() and not list(cache.glob("*shard-000000.tar"))
        server.hang.clear()
        result = _run(url, str(cache), 1, num_workers=0)
        assert sorted(result["epochs"][0]) == list(range(40))
        assert not list(cache.glob("*.part")) and result["net"]["cache_fills"] == 2


def test_corrupted_copy_is_detected_and_fetched_again(tmp_path: Path) -> None:
    write_test_shards(tmp_path / "ds", [6])
    cache = ShardCache(str(tmp_path / "cache"))
    with FaultyServer(tmp_path) as server:
        shard = resolve_source(server.url + "ds/manifest.json").shards[0]
        options = RemoteOptions(retry=POLICY, cache=cache)

        def read() -> list[bytes]:
            with ShardReader(shard, remote=options) as reader:
                return [bytes(s.data) for s in reader.read(0, 6)]

        expected = [default_image_bytes(g) for g in range(6)]
        assert read() == expected
        copy = Path(cache.directory) / cache.name(shard.url)
        gets = len(server.requests_for(".tar"))
        assert read() == expected and len(server.requests_for(".tar")) == gets  # a hit
        data = bytearray(copy.read_bytes())
        data[600:610] = b"0123456789"  # bit rot in the first image
        copy.write_bytes(bytes(data))
        assert read() == expected
        assert len(server.requests_for(".tar")) > gets  # detected by checksum, fetched again
        copy.write_bytes(b"garbage")  # what a killed run or a stray writer could leave
        assert read() == expected
        bad = replace(shard, url=shard.url, sha256="0" * 64)
        with pytest.raises(Exception, match="sha256.*manifest says 0{64}"):
            ShardReader(bad, remote=RemoteOptions(retry=POLICY, cache=ShardCache(
                str(tmp_path / "cache2")))).index()  # fmt: skip


def test_local_sources_are_read_in_place(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path / "ds", SIZES)
    cache = tmp_path / "cache"
    result = _run(str(manifest), str(cache), 1)
    assert sorted(result["epochs"][0]) == list(range(TOTAL))
    assert list(cache.iterdir()) == []


def test_bad_cache_options(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path / "ds", [4])
    with pytest.raises(ValueError, match="expected cache_dir with cache_limit"):
        make_loader(manifest, num_workers=0, cache_limit=10)
    for bad in (0, -5, 1.5, True):
        with pytest.raises(ValueError, match="expected cache_limit > 0"):
            make_loader(manifest, num_workers=0, cache_dir=tmp_path / "c", cache_limit=bad)


def _metadata_requests(server: FaultyServer) -> dict[str, int]:
    counts = {"manifest": 0, "index": 0, "shard_head": 0}
    for method, path, _, _ in server.log:
        if path.endswith("manifest.json"):
            counts["manifest"] += 1
        elif path.endswith(".idx.npy"):
            counts["index"] += 1
        elif path.endswith(".tar") and method == "HEAD":
            counts["shard_head"] += 1
    return counts


def test_metadata_once_per_node_two_ranks_three_workers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Without the cache every worker fetches the index of each shard it reads (and asks its
    size); with it each index is fetched once per node and no size is asked (the manifest
    has it). The manifest itself is read once per rank, by the rank's main process."""
    write_test_shards(tmp_path / "ds", SIZES)
    with FaultyServer(tmp_path) as server:
        url = server.url + "ds/manifest.json"
        _two_ranks(url, None, tmp_path, workers=3, epochs=1)
        before = _metadata_requests(server)
        server.log.clear()
        _two_ranks(url, str(tmp_path / "cache"), tmp_path, workers=3, epochs=1)
        after = _metadata_requests(server)
    logging.getLogger(__name__).info("metadata requests: without cache %s, with %s", before, after)
    assert after == {"manifest": 2, "index": len(SIZES), "shard_head": 0}
    assert before["manifest"] == 2 and before["index"] > len(SIZES) and before["shard_head"] > 0


def test_a_file_in_use_is_never_evicted(tmp_path: Path) -> None:
    write_test_shards(tmp_path / "ds", [8, 8, 8])
    shards = sorted((tmp_path / "ds").glob("*.tar"))
    size = shards[0].stat().st_size
    cache = ShardCache(str(tmp_path / "cache"), limit=int(size * 1.5))
    with FaultyServer(tmp_path) as server:

        def remote(i: int) -> RemoteFile:
            return RemoteFile(f"{server.url}ds/{shards[i].name}", retry=POLICY)

        held = cache.open(remote(0), size=size)
        with cache.open(remote(1), size=shards[1].stat().st_size) as second:
            assert Path(held.path).exists() and Path(second.path).exists()  # over: both in use
        with cache.open(remote(2), size=shards[2].stat().st_size):
            assert Path(held.path).read_bytes() == shards[0].read_bytes()  # still held
            assert not Path(cache.directory, cache.name(remote(1).url)).exists()  # evicted
        held.close()
        with cache.open(remote(1), size=shards[1].stat().st_size):
            assert not Path(held.path).exists()  # released, so evicted now
            assert cache.used_bytes() <= int(size * 1.5)
