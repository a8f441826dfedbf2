"""Remote reads against a server that fails on purpose (``tests.loader.faults_http``):
transient faults are retried (resuming short reads), permanent ones fail at once, and a spent
budget names the URL, the byte range and the last cause."""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loader._errors import MissingShardError
from loader.reader import ShardReader
from loader.remote.errors import RemoteReadError
from loader.remote.files import RemoteFile
from loader.remote.options import RemoteOptions
from loader.remote.retry import RetryPolicy, is_transient
from loader.sources import resolve_source
from loader.worker.reuse import Reuse
from tests.loader.faults_http import FaultyServer
from tests.loader.helpers import default_image_bytes, write_test_shards

FAST = RetryPolicy(attempts=4, budget_s=20, backoff_s=0.01, max_backoff_s=0.05, timeout_s=0.5)
TRANSIENT = ["503", "429", "500", "reset", "drop", "wrong_length", "truncate", "trickle"]


@pytest.fixture
def served(tmp_path: Path) -> tuple[FaultyServer, bytes]:
    data = bytes(range(256)) * 64
    (tmp_path / "blob.bin").write_bytes(data)
    server = FaultyServer(tmp_path, trickle_s=0.15)
    yield server, data  # type: ignore[misc]
    server.close()


@pytest.mark.parametrize("fault", TRANSIENT)
def test_transient_fault_is_retried(served: tuple[FaultyServer, bytes], fault: str) -> None:
    server, data = served
    remote = RemoteFile(server.url + "blob.bin", retry=FAST)
    assert remote.size() == len(data)
    server.script("blob.bin", [fault])
    before = remote.retries
    assert remote.fetch(1000, 9000) == data[1000:9000]
    ranges = [r for r in server.requests_for("blob.bin") if r]
    assert server.pending() == 0 and len(ranges) == 2
    # aiohttp itself resends a request whose reused connection was closed before any answer
    assert remote.retries - before == (0 if fault == "reset" else 1)
    if fault == "truncate":
        assert ranges == ["bytes=1000-8999", "bytes=5000-8999"]  # only the missing bytes
    else:
        assert ranges[-1] == "bytes=1000-8999"


def test_whole_file_read_is_retried(served: tuple[FaultyServer, bytes]) -> None:
    server, data = served
    server.script("blob.bin", ["503", "drop", "wrong_length"])
    remote = RemoteFile(server.url + "blob.bin", retry=FAST)
    assert remote.read_all() == data
    assert remote.retries == 3


def test_permanent_fault_fails_at_once(served: tuple[FaultyServer, bytes]) -> None:
    server, data = served
    remote = RemoteFile(server.url + "blob.bin", retry=FAST)
    remote.size()
    server.script("blob.bin", ["403", "403", "403"])
    with pytest.raises(RemoteReadError, match=r"blob\.bin.*bytes 10-19") as info:
        remote.fetch(10, 20)
    assert len(server.requests_for("blob.bin")) == 1 and remote.retries == 0
    assert info.value.url.endswith("blob.bin") and info.value.byte_range == (10, 19)


def test_not_found_is_not_retried(served: tuple[FaultyServer, bytes]) -> None:
    server, _ = served
    remote = RemoteFile(server.url + "nothing.bin", retry=FAST)
    with pytest.raises(FileNotFoundError):
        remote.size()
    assert remote.retries == 0
    assert not RemoteFile(server.url + "nothing.bin", retry=FAST).exists()


@pytest.mark.parametrize("fault", ["503", "429", "reset"])
def test_size_survives_faults_on_head_and_get(
    served: tuple[FaultyServer, bytes], fault: str
) -> None:
    """fsspec reports a failed size probe as "not found"; a 503 must not become that."""
    server, data = served
    server.script("blob.bin", [fault] * 4)
    remote = RemoteFile(server.url + "blob.bin", retry=FAST)
    assert remote.exists() and remote.size() == len(data) and remote.retries >= 1


def test_budget_spent_names_url_range_and_cause(served: tuple[FaultyServer, bytes]) -> None:
    server, _ = served
    remote = RemoteFile(server.url + "blob.bin", retry=FAST)
    remote.size()
    server.script("blob.bin", ["503"] * 10)
    with pytest.raises(RemoteReadError) as info:
        remote.fetch(100, 200)
    message = str(info.value)
    assert f"{server.url}blob.bin bytes 100-199" in message
    assert "after 4 attempts" in message and "503" in message
    assert info.value.attempts == 4 and "503" in info.value.cause
    assert len(server.requests_for("blob.bin")) == 4 and remote.retries == 3


def test_time_budget_bounds_the_retries(served: tuple[FaultyServer, bytes]) -> None:
    server, _ = served
    policy = RetryPolicy(attempts=100, budget_s=0.5, backoff_s=0.1, max_backoff_s=0.2)
    remote = RemoteFile(server.url + "blob.bin", retry=policy)
    server.script("blob.bin", ["503"] * 100)
    start = time.monotonic()
    with pytest.raises(RemoteReadError, match="retry budget"):
        remote.fetch(0, 10)
    assert time.monotonic() - start < 0.5 + 0.2 + 0.5  # budget + one backoff + one request
    assert server.pending() > 0


def test_reader_retries_and_wraps(tmp_path: Path) -> None:
    """Through ``ShardReader``: faults on the sidecar and the shard within the budget read
    every sample; a shard that keeps failing raises ``RemoteReadError``, not aiohttp's."""
    write_test_shards(tmp_path, [6])
    with FaultyServer(tmp_path) as server:
        shard = resolve_source(server.url + "manifest.json").shards[0]
        server.script(".idx.npy", ["503", "reset"])
        server.script(".tar", ["drop", "503", "truncate"], every=1)
        options = RemoteOptions(retry=FAST)
        with ShardReader(shard, remote=options, chunk_bytes=2048) as reader:
            got = [bytes(s.data) for s in reader.read(0, 6)]
        assert got == [default_image_bytes(g) for g in range(6)]
        assert server.pending() == 0
        server.script(".tar", ["500"] * 20)
        with ShardReader(shard, remote=options) as reader:
            with pytest.raises(RemoteReadError, match=r"shard-000000\.tar.*last cause.*500"):
                list(reader.read(0, 6))
        gone = shard.__class__(**{**shard.__dict__, "url": server.url + "gone.tar"})
        with pytest.raises(MissingShardError):
            ShardReader(gone, remote=options).index()


def test_retry_policy_rejects_bad_values() -> None:
    for bad in ({"attempts": 0}, {"attempts": 1.5}, {"budget_s": -1}, {"timeout_s": 0}):
        with pytest.raises(ValueError, match="expected"):
            RetryPolicy(**bad)  # type: ignore[arg-type]


def _wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.01)


def test_readahead_fetches_one_chunk_ahead_and_no_more(tmp_path: Path) -> None:
    write_test_shards(tmp_path, [30])
    with FaultyServer(tmp_path) as server:
        shard = resolve_source(server.url + "manifest.json").shards[0]
        with ThreadPoolExecutor(2) as pool:
            reader = ShardReader(
                shard, remote=RemoteOptions(retry=FAST), chunk_bytes=4096, executor=pool
            )
            samples = reader.read(0, 30)
            first = next(samples)
            _wait_for(lambda: len([r for r in server.requests_for(".tar") if r]) >= 2)
            time.sleep(0.3)
            ranged = [r for r in server.requests_for(".tar") if r]
            assert len(ranged) == 2  # the chunk being read and the next: bounded
            rest = [first, *samples]
            assert [bytes(s.data) for s in rest] == [default_image_bytes(g) for g in range(30)]
            starts = [int(r.split("=")[1].split("-")[0]) for r in server.requests_for(".tar") if r]
            assert starts == sorted(set(starts))  # contiguous chunks, none fetched twice
            reader.close()


def test_prefetch_opens_the_next_shard_in_the_background(tmp_path: Path) -> None:
    write_test_shards(tmp_path, [5, 5])
    with FaultyServer(tmp_path) as server:
        a, b = resolve_source(server.url + "manifest.json").shards
        reuse = Reuse(remote=RemoteOptions(retry=FAST))
        got = list(reuse.reader(a).read(0, 5))
        reuse.prefetch(b, 1, 5)
        _wait_for(lambda: [r for r in server.requests_for("shard-000001.tar") if r])
        assert server.requests_for("shard-000001.idx.npy")  # index loaded ahead
        before = len(server.log)
        got += list(reuse.reader(b).read(1, 5))
        assert [s.gid for s in got] == [0, 1, 2, 3, 4, 6, 7, 8, 9]
        assert [bytes(s.data) for s in got[5:]] == [default_image_bytes(g) for g in range(6, 10)]
        assert len(server.log) == before  # everything b needed was already fetched
        reuse.close()


@settings(max_examples=200, deadline=None)
@given(
    attempt=st.integers(1, 60),
    backoff=st.floats(0, 5),
    cap=st.floats(0, 30),
    seed=st.integers(0, 2**32 - 1),
)
def test_backoff_is_full_jitter_within_the_cap(
    attempt: int, backoff: float, cap: float, seed: int
) -> None:
    policy = RetryPolicy(backoff_s=backoff, max_backoff_s=cap)
    delay = policy.delay(attempt, random.Random(seed))
    assert 0.0 <= delay <= min(cap, backoff * 2.0 ** (attempt - 1))


@pytest.mark.parametrize(
    ("status", "transient"),
    [(408, True), (425, True), (429, True), (500, True), (503, True), (599, True),
     (400, False), (403, False), (404, False), (416, False)],
)  # fmt: skip
def test_status_classification(status: int, transient: bool) -> None:
    import aiohttp

    exc = aiohttp.ClientResponseError(None, (), status=status)  # type: ignore[arg-type]
    assert is_transient(exc) is transient
    assert is_transient(ConnectionResetError()) and is_transient(TimeoutError())
    assert not is_transient(PermissionError()) and not is_transient(ValueError("bad"))
