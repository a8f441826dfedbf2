"""What HTTP servers answer, checked (``loader.remote._http``, ``loader.remote.files``):

- a 206 from the wrong offset (a proxy answering from byte 0) is a server fault: retried, and
  past the budget a ``RemoteReadError`` naming the server's ``Content-Range``;
- a plain static server that ignores ``Range`` (``python -m http.server``, started here as a
  real process) serves the loader and ``shardfeed bench``: each shard is streamed front to back
  in one GET, with and without sidecars, with DataLoader workers.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from loader.reader import ShardReader
from loader.remote.errors import RemoteReadError
from loader.remote.files import RemoteFile
from loader.remote.options import RemoteOptions
from loader.remote.retry import RetryPolicy
from loader.sources import resolve_source
from tests.loader.faults_http import FaultyServer
from tests.loader.helpers import default_image_bytes, label_of, loader_over, write_test_shards

FAST = RetryPolicy(attempts=3, backoff_s=0.001, max_backoff_s=0.01, timeout_s=5)
SIZES = [9, 6, 11]
TOTAL = sum(SIZES)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def blob(tmp_path: Path) -> Iterator[tuple[FaultyServer, bytes]]:
    data = bytes(range(256)) * 40
    (tmp_path / "blob.bin").write_bytes(data)
    with FaultyServer(tmp_path) as server:
        yield server, data


@pytest.mark.parametrize("fault", ["from_zero", "overlong"])
def test_a_206_of_another_range_is_retried(blob: tuple[FaultyServer, bytes], fault: str) -> None:
    server, data = blob
    remote = RemoteFile(server.url + "blob.bin", retry=FAST)
    remote.size()
    server.script("blob.bin", [fault])
    assert remote.fetch(1000, 1100) == data[1000:1100]
    assert remote.retries == 1 and server.served(fault) == 1


def test_a_206_from_the_wrong_offset_past_the_budget_names_the_answer(
    blob: tuple[FaultyServer, bytes],
) -> None:
    server, data = blob
    remote = RemoteFile(server.url + "blob.bin", retry=FAST)
    server.script("blob.bin", ["from_zero"] * FAST.attempts)
    with pytest.raises(RemoteReadError, match=r"bytes 1000-1099.*Content-Range 'bytes 0-99/10240'"):
        remote.fetch(1000, 1100)
    assert server.served("from_zero") == FAST.attempts


def test_ranged_shard_reads_survive_a_proxy_answering_from_byte_zero(tmp_path: Path) -> None:
    """Every sample's bytes and label come back right, never blamed on the shard."""
    manifest = write_test_shards(tmp_path, SIZES)
    with FaultyServer(tmp_path) as server:
        server.script(".tar", ["from_zero"] * 6, every=2, methods="GET")
        source = resolve_source(server.url + manifest.name, retry=FAST)
        options = RemoteOptions(retry=FAST, readahead=False)
        for shard in source.shards:
            with ShardReader(shard, chunk_bytes=2048, remote=options) as reader:
                got = list(reader.read(1, shard.nsamples))
            assert [s.gid for s in got] == list(
                range(shard.first_index + 1, shard.first_index + shard.nsamples)
            )
            assert all(bytes(s.data) == default_image_bytes(s.gid) for s in got)
            assert all(s.label == label_of(s.gid) for s in got)
        assert server.served("from_zero") == 6


@pytest.fixture
def plain_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``python -m http.server`` on 127.0.0.1 serving ``tmp_path / "data"`` (no Range)."""
    root = tmp_path / "data"
    root.mkdir()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-u",
            "-m",
            "http.server",
            "0",
            "--bind",
            "127.0.0.1",
            "--directory",
            str(root),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"port (\d+)", line)
        assert match, f"http.server said {line!r}"
        yield f"http://127.0.0.1:{match[1]}/", root
    finally:
        proc.terminate()
        proc.wait(10)


def _epoch(source: object, **options: object) -> dict[int, int]:
    loader = loader_over(source, num_workers=2, image_size=0, retry=FAST, **options)
    got: dict[int, int] = {}
    for batch in loader:
        for gid, label, pad in zip(batch.ids, batch.labels, batch.padded, strict=True):
            if not pad:
                assert int(gid) not in got, f"id {int(gid)} twice"
                got[int(gid)] = int(label)
    return got


@pytest.mark.parametrize("with_index", [True, False], ids=["sidecar", "scan"])
def test_plain_http_server_serves_an_epoch_exactly_once(
    plain_server: tuple[str, Path], with_index: bool
) -> None:
    base, root = plain_server
    write_test_shards(root, SIZES, with_index=with_index)
    want = {g: label_of(g) for g in range(TOTAL)}
    assert _epoch(base + "shard-{000000..000002}.tar") == want
    assert _epoch(base + "manifest.json") == want
    cache = root.parent / "cache"  # the cache fills each shard with one GET too
    assert _epoch(base + "shard-{000000..000002}.tar", cache_dir=cache) == want
    assert _epoch(base + "manifest.json", cache_dir=cache) == want


def test_bench_over_a_plain_http_server(plain_server: tuple[str, Path], tmp_path: Path) -> None:
    base, root = plain_server
    write_test_shards(root, SIZES)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [
            sys.executable, "-m", "server.cli", "bench", "--shards", base + "manifest.json",
            "--modes", "tar-aware", "--workers", "1", "--batch-size", "4", "--image-size", "8",
            "--decode", "none", "--repeat", "1", "--json",
        ],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    doc = json.loads(run.stdout)
    mode = doc["modes"]["tar-aware"]
    assert (mode["status"], mode["unique"], mode["duplicates"], mode["missing"]) == (
        "ok", TOTAL, 0, 0
    )  # fmt: skip
    assert doc["limit"]
