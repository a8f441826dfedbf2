"""Tests for loader/reader.py: local (mmap) and HTTP (ranged) reads, with and without sidecar."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import webdataset as wds

from loader.reader import MissingShardError, RawSample, ShardReader, ShardReadError
from loader.sources import ShardSource, resolve_source
from shards.format import read_index
from tests.loader.helpers import default_image_bytes, label_of, write_test_shards


def _shards(tmp_path: Path, counts: list[int], **kw: Any) -> tuple[ShardSource, ...]:
    return resolve_source(write_test_shards(tmp_path, counts, **kw)).shards


def _check(samples: list[RawSample], gids: range, *, keys: bool) -> None:
    assert [s.gid for s in samples] == list(gids)
    for s in samples:
        assert bytes(s.data) == default_image_bytes(s.gid)
        assert s.label == label_of(s.gid)
        assert s.key == (f"{s.gid:09d}" if keys else "")


def test_local_sidecar_reads_all(tmp_path: Path) -> None:
    shards = _shards(tmp_path, [4, 6])
    reader = ShardReader(shards[1])
    samples = list(reader.read(0, 6))
    _check(samples, range(4, 10), keys=False)
    assert [s.position for s in samples] == list(range(6))
    assert all(isinstance(s.data, memoryview) and s.data.readonly for s in samples)
    index = reader.index()
    assert [s.offset for s in samples] == index["image_offset"].tolist()
    assert np.array_equal(index, read_index((tmp_path / "shard-000001.idx.npy").read_bytes()))
    assert reader.member_name(2) == "000000006.jpg"
    reader.close()


def test_sidecar_subrange_seeks_without_reading_what_comes_before(tmp_path: Path) -> None:
    shard = _shards(tmp_path, [8])[0]
    start = int(ShardReader(shard).index()["offset"][5])
    path = tmp_path / "shard-000000.tar"
    data = bytearray(path.read_bytes())
    data[:start] = b"\xaa" * start
    path.write_bytes(bytes(data))
    with ShardReader(shard) as reader:
        samples = list(reader.read(5, 7))
    _check(samples, range(5, 7), keys=False)
    assert [s.position for s in samples] == [5, 6]
    with pytest.raises(ShardReadError, match="bad tar header checksum at byte 0"):
        list(ShardReader(replace(shard, index_url=None)).read(5, 7))


def test_local_without_sidecar_scans(tmp_path: Path) -> None:
    with_index = _shards(tmp_path / "a", [7])[0]
    shard = _shards(tmp_path / "b", [7], with_index=False)[0]
    assert shard.index_url is None
    with ShardReader(shard) as reader:
        _check(list(reader.read(2, 7)), range(2, 7), keys=True)
        _check(list(reader.read(0, 1)), range(0, 1), keys=True)
        assert np.array_equal(reader.index(), ShardReader(with_index).index())
        assert reader.member_name(3) == "000000003.jpg"


def test_file_url(tmp_path: Path) -> None:
    shard = _shards(tmp_path, [5])[0]
    url = f"file://{shard.url}"
    for index_url in (f"file://{shard.index_url}", None):
        with ShardReader(replace(shard, url=url, index_url=index_url)) as reader:
            _check(list(reader.read(1, 5)), range(1, 5), keys=index_url is None)


def test_views_stay_valid_after_close(tmp_path: Path) -> None:
    shard = _shards(tmp_path, [3])[0]
    reader = ShardReader(shard)
    kept = list(reader.read(0, 3))
    reader.close()
    reader.close()
    _check(kept, range(3), keys=False)
    del kept
    _check(list(reader.read(0, 3)), range(3), keys=False)


def test_bad_ranges(tmp_path: Path) -> None:
    reader = ShardReader(_shards(tmp_path, [3])[0])
    for start, stop in ((-1, 2), (2, 1), (0, 4)):
        with pytest.raises(ValueError, match=f"got start={start} stop={stop}"):
            reader.read(start, stop)
    assert list(reader.read(3, 3)) == []
    with pytest.raises(ValueError, match="latency_s >= 0"):
        ShardReader(reader.shard, latency_s=-1)


def test_missing_shard(tmp_path: Path, http_server: Any) -> None:
    shard = _shards(tmp_path, [3])[0]
    (tmp_path / "shard-000000.tar").unlink()
    with pytest.raises(MissingShardError, match=r"shard .*shard-000000\.tar not found") as info:
        list(ShardReader(shard).read(0, 3))
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ShardReadError)
    base = http_server(tmp_path)
    remote = replace(shard, url=f"{base}shard-000000.tar")
    with pytest.raises(MissingShardError, match=r"shard http://.*shard-000000\.tar not found"):
        list(ShardReader(remote).read(0, 3))


def test_truncated_shard_local(tmp_path: Path) -> None:
    shard = _shards(tmp_path, [4])[0]
    path = tmp_path / "shard-000000.tar"
    path.write_bytes(path.read_bytes()[:-1500])
    with pytest.raises(ShardReadError, match=r"shard .*shard-000000\.tar is truncated.*sample 3"):
        list(ShardReader(shard).read(0, 1))
    with pytest.raises(ShardReadError, match=r"shard-000000\.tar: archive ends inside member"):
        list(ShardReader(replace(shard, index_url=None)).read(0, 1))
    path.write_bytes(b"")
    with pytest.raises(ShardReadError, match=r"shard-000000\.tar is empty"):
        ShardReader(shard).index()


def test_count_mismatch(tmp_path: Path) -> None:
    shard = _shards(tmp_path, [4])[0]
    with pytest.raises(
        ShardReadError, match=r"sidecar .*idx\.npy has 4 samples, expected nsamples=5"
    ):
        ShardReader(replace(shard, nsamples=5)).read(0, 1)
    with pytest.raises(ShardReadError, match="header scan has 4 samples, expected nsamples=3"):
        ShardReader(replace(shard, nsamples=3, index_url=None)).read(0, 1)


def test_bad_sidecar(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    shard = _shards(tmp_path, [4])[0]
    sidecar = tmp_path / "shard-000000.idx.npy"
    index = read_index(sidecar.read_bytes())
    index["offset"][2] = index["offset"][1]
    np.save(sidecar, index)
    with pytest.raises(ShardReadError, match=r"idx\.npy has sha256 .*expected index_sha256"):
        ShardReader(shard).index()
    unchecked = replace(shard, index_sha256=None)
    with pytest.raises(ShardReadError, match="inconsistent"):
        ShardReader(unchecked).index()
    sidecar.write_bytes(b"junk")
    with pytest.raises(ShardReadError, match=r"bad sidecar .*shard-000000\.idx\.npy"):
        ShardReader(unchecked).index()
    sidecar.unlink()
    with caplog.at_level(logging.WARNING, logger="loader.reader"):
        with ShardReader(shard) as reader:
            _check(list(reader.read(0, 4)), range(4), keys=True)
    assert "sidecar" in caplog.text and "missing" in caplog.text


def test_latency_is_paid_per_open_and_request(tmp_path: Path, http_server: Any) -> None:
    shard = _shards(tmp_path, [3])[0]
    t = time.perf_counter()
    with ShardReader(shard, latency_s=0.05) as reader:
        list(reader.read(0, 3))
    assert time.perf_counter() - t >= 0.1, "shard open + sidecar open"
    base = http_server(tmp_path)
    remote = resolve_source(f"{base}manifest.json").shards[0]
    t = time.perf_counter()
    with ShardReader(remote, latency_s=0.05, chunk_bytes=2048) as reader:
        list(reader.read(0, 3))
    gets = len(http_server.ranged_gets("shard-000000.tar"))
    assert gets >= 2
    assert time.perf_counter() - t >= 0.05 * (2 + gets), "size, sidecar and each range"


def test_http_with_sidecar_uses_few_contiguous_ranges(tmp_path: Path, http_server: Any) -> None:
    write_test_shards(tmp_path, [12])
    base = http_server(tmp_path)
    shard = resolve_source(f"{base}manifest.json").shards[0]
    with ShardReader(shard, chunk_bytes=4096) as reader:
        samples = list(reader.read(3, 11))
        index = reader.index()
    _check(samples, range(3, 11), keys=False)
    ranges = http_server.ranged_gets("shard-000000.tar")
    lo, hi = int(index["offset"][3]), int(index["end"][10])
    assert ranges[0][0] == lo and ranges[-1][1] == hi - 1
    assert all(b[0] == a[1] + 1 for a, b in zip(ranges, ranges[1:], strict=False))
    assert len(ranges) <= (hi - lo) // 4096 + 1
    with ShardReader(shard) as reader:
        _check(list(reader.read(0, 12)), range(12), keys=False)
    assert len(http_server.ranged_gets("shard-000000.tar")) == len(ranges) + 1


def test_http_without_sidecar_streams(tmp_path: Path, http_server: Any) -> None:
    write_test_shards(tmp_path, [12], with_index=False)
    base = http_server(tmp_path)
    shard = resolve_source(f"{base}shard-000000.tar").shards[0]
    http_server.requests.clear()
    size = shard.filesize
    assert size is not None
    with ShardReader(shard, chunk_bytes=2048) as reader:
        _check(list(reader.read(1, 3)), range(1, 3), keys=True)
        fetched = sum(b - a + 1 for a, b in http_server.ranged_gets(".tar"))
        assert fetched < size / 2, "an early range must not fetch the whole shard"
        _check(list(reader.read(5, 12)), range(5, 12), keys=True)
        index = reader.index()
        assert len(index) == 12 and index["label"].tolist() == [g % 3 for g in range(12)]
        assert reader.member_name(4) == "000000004.jpg"


def test_http_truncated(tmp_path: Path, http_server: Any) -> None:
    write_test_shards(tmp_path, [6])
    base = http_server(tmp_path)
    shard = resolve_source(f"{base}manifest.json").shards[0]
    path = tmp_path / "shard-000000.tar"
    path.write_bytes(path.read_bytes()[:-3000])
    with pytest.raises(ShardReadError, match=r"shard http://.*\.tar has \d+ bytes, its manifest"):
        ShardReader(shard).read(0, 1)  # the size does not match the manifest: not retried
    with pytest.raises(ShardReadError, match=r"shard http://.*shard-000000\.tar is truncated"):
        ShardReader(replace(shard, filesize=None)).read(0, 1)
    got: list[int] = []
    with pytest.raises(ShardReadError, match=r"http://.*shard-000000\.tar: archive ends"):
        for s in ShardReader(replace(shard, index_url=None, filesize=None)).read(0, 6):
            got.append(s.gid)
    assert got and got == list(range(len(got)))


def test_server_without_range_support(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A server that ignores Range: the shard is streamed front to back, with or without its
    sidecar, and the reader says once that seeking is off."""
    write_test_shards(tmp_path, [6])
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/"
        shard = resolve_source(f"{base}manifest.json").shards[0]
        with caplog.at_level(logging.WARNING, logger="loader.remote.files"):
            with ShardReader(shard) as reader:
                _check(list(reader.read(2, 4)), range(2, 4), keys=False)
                _check(list(reader.read(0, 6)), range(6), keys=False)
            with ShardReader(replace(shard, index_url=None)) as reader:
                _check(list(reader.read(1, 5)), range(1, 5), keys=True)
        assert "ignores HTTP Range requests" in caplog.text
    finally:
        server.shutdown()
        server.server_close()


def test_webdataset_shards_local_and_http(tmp_path: Path, http_server: Any) -> None:
    with wds.ShardWriter(str(tmp_path / "w-%02d.tar"), maxcount=4, verbose=0) as sink:
        for i in range(6):
            sample: dict[str, Any] = {
                "__key__": f"k{i:03d}",
                "jpg": b"\xff\xd8\xff" + bytes([i]) * (700 * i),
            }
            if i != 4:
                sample["cls"] = i % 3
            sink.write(sample)
        sink.write({"__key__": "k006", "cls": 1, "json": b"{}"})
    base = http_server(tmp_path)
    for pattern in (str(tmp_path / "w-{00..01}.tar"), f"{base}w-{{00..01}}.tar"):
        src = resolve_source(pattern)
        samples = [s for sh in src.shards for s in ShardReader(sh).read(0, sh.nsamples)]
        assert [s.gid for s in samples] == list(range(7))
        assert [s.key for s in samples] == [f"k{i:03d}" for i in range(7)]
        assert [s.label for s in samples] == [0, 1, 2, 0, -1, 2, 1]
        assert [bytes(s.data) for s in samples[:6]] == [
            b"\xff\xd8\xff" + bytes([i]) * (700 * i) for i in range(6)
        ]
        assert bytes(samples[6].data) == b"" and samples[6].offset > 0


class _ShardsDataset(torch.utils.data.IterableDataset):
    """Each DataLoader worker reads every other shard with its own readers."""

    def __init__(self, shards: tuple[ShardSource, ...]) -> None:
        self.shards = shards

    def __iter__(self) -> Iterator[tuple[int, int, bytes]]:
        info = torch.utils.data.get_worker_info()
        assert info is not None
        for shard in self.shards[info.id :: info.num_workers]:
            with ShardReader(shard, chunk_bytes=4096) as reader:
                for s in reader.read(0, shard.nsamples):
                    yield s.gid, s.label, bytes(s.data)


def test_http_reads_in_dataloader_workers(tmp_path: Path, http_server: Any) -> None:
    write_test_shards(tmp_path, [5, 3, 4, 2])
    base = http_server(tmp_path)
    shards = resolve_source(f"{base}manifest.json").shards
    loader = torch.utils.data.DataLoader(
        _ShardsDataset(shards), batch_size=None, num_workers=2, multiprocessing_context="fork"
    )
    got = sorted(loader)
    assert [g for g, _, _ in got] == list(range(14))
    for gid, label, data in got:
        assert label == label_of(gid)
        assert data == default_image_bytes(gid)


def test_reopens_after_close(tmp_path: Path, http_server: Any) -> None:
    shard = _shards(tmp_path, [4])[0]
    base = http_server(tmp_path)
    remote = resolve_source(f"{base}manifest.json").shards[0]
    for source in (shard, remote, replace(shard, index_url=None)):
        reader = ShardReader(source)
        pending = reader.read(0, 4)
        first = next(pending)
        reader.close()
        rest = list(pending)
        _check([first, *rest], range(4), keys=source.index_url is None)
        assert reader.member_name(1) == "000000001.jpg"
        _check(list(reader.read(2, 4)), range(2, 4), keys=source.index_url is None)
        reader.close()
