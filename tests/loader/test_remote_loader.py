"""Real DataLoader workers and two ranks read shards from a server that fails on purpose
(``tests.loader.faults_http``): exactly once with faults within the retry budget, a clear
error naming URL and byte range past it, and no hang longer than the configured timeouts."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import pytest

from loader._workers import WorkerTimeoutError
from loader.dataloader import make_loader
from loader.remote.errors import RemoteReadError
from loader.remote.retry import RetryPolicy
from tests.loader.faults_http import FaultyServer
from tests.loader.helpers import write_test_shards

SIZES = [9, 6, 11, 5]
TOTAL = sum(SIZES)
BATCH = 4
POLICY = RetryPolicy(attempts=6, budget_s=30, backoff_s=0.01, max_backoff_s=0.1, timeout_s=0.6)


def _epoch_ids(url: str, *, rank: int | None, world: int | None, **options: Any) -> dict[str, Any]:
    loader = make_loader(
        url,
        batch_size=BATCH,
        num_workers=2,
        image_size=0,
        rank=rank,
        world_size=world,
        retry=POLICY,
        timeout=60,
        multiprocessing_context="fork",
        **options,
    )
    ids: list[int] = []
    for batch in loader:
        ids.extend(int(g) for g, p in zip(batch.ids, batch.padded, strict=True) if not p)
    return {"ids": ids, "net": loader.dataset.net.totals()}  # type: ignore[attr-defined]


def _rank_main(rank: int, url: str, out: str) -> None:
    """One rank (a spawned process): one epoch over ``url``, ids and counters to ``out``."""
    os.environ["RANK"], os.environ["WORLD_SIZE"] = str(rank), "2"
    Path(out).write_text(json.dumps(_epoch_ids(url, rank=None, world=None)))


def _two_ranks(url: str, tmp_path: Path) -> list[dict[str, Any]]:
    ctx = multiprocessing.get_context("spawn")
    outs = [str(tmp_path / f"rank{r}.json") for r in range(2)]
    procs = [ctx.Process(target=_rank_main, args=(r, url, outs[r])) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0, f"rank process exited with {p.exitcode}"
    return [json.loads(Path(o).read_text()) for o in outs]


def test_two_ranks_two_workers_exactly_once_through_faults(tmp_path: Path) -> None:
    write_test_shards(tmp_path / "ds", SIZES)
    with FaultyServer(tmp_path, trickle_s=0.15) as server:
        body = ["503", "drop", "truncate", "wrong_length", "reset", "trickle", "429", "500"]
        server.script(".tar", body, every=2)
        server.script(".idx.npy", ["503", "reset", "drop"], every=2)
        ranks = _two_ranks(server.url + "ds/manifest.json", tmp_path)
        ids = sorted(ranks[0]["ids"] + ranks[1]["ids"])
        assert ids == list(range(TOTAL))  # 0 duplicates, 0 missing
        assert server.pending() == 0 and server.served() == len(body) + 3
        retries = sum(r["net"]["retries"] for r in ranks)
        # a fault on a HEAD is absorbed by fsspec's GET fallback, and aiohttp resends a
        # request whose reused connection was reset: neither is our retry
        ours = sum(1 for m, _, _, f in server.log if f and m == "GET" and f != "reset")
        assert ours <= retries <= server.served()


def test_over_budget_names_url_and_range(tmp_path: Path) -> None:
    write_test_shards(tmp_path / "ds", SIZES)
    with FaultyServer(tmp_path) as server:
        url = server.url + "ds/manifest.json"
        server.script(".tar", ["503"] * 500, methods="GET")
        start = time.monotonic()
        with pytest.raises(RemoteReadError) as info:
            _epoch_ids(url, rank=0, world=1)
        assert time.monotonic() - start < 30
        message = str(info.value)
        assert "ds/shard-00000" in message and "after 6 attempts" in message
        assert "503" in message and " bytes " in message


def test_hung_server_raises_naming_the_worker(tmp_path: Path) -> None:
    write_test_shards(tmp_path / "ds", SIZES)
    with FaultyServer(tmp_path) as server:
        loader = make_loader(
            server.url + "ds/manifest.json",
            batch_size=BATCH,
            num_workers=2,
            image_size=0,
            retry=RetryPolicy(timeout_s=60),
            timeout=1.5,
            multiprocessing_context="fork",
        )
        server.hang.set()
        start = time.monotonic()
        with pytest.raises(WorkerTimeoutError, match=r"worker [01] \(pid \d+\).*timeout=1\.5"):
            next(iter(loader))
        assert time.monotonic() - start < 10
        server.hang.clear()


def test_hung_server_times_out_within_the_retry_budget(tmp_path: Path) -> None:
    """Without a DataLoader timeout, each request's own timeout bounds the wait."""
    write_test_shards(tmp_path / "ds", SIZES)
    with FaultyServer(tmp_path) as server:
        url = server.url + "ds/manifest.json"
        policy = RetryPolicy(attempts=2, backoff_s=0.01, timeout_s=0.5)
        loader = make_loader(url, batch_size=BATCH, num_workers=0, image_size=0, retry=policy)
        server.hang.set()
        start = time.monotonic()
        with pytest.raises(RemoteReadError, match=r"after 2 attempts.*Timeout"):
            next(iter(loader))
        assert time.monotonic() - start < 2 * 0.5 + 3
        server.hang.clear()


def test_make_loader_rejects_bad_timeout(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path, [4])
    for bad in (-1, float("nan"), "3", True):
        with pytest.raises(ValueError, match=r"timeout >= 0, got timeout="):
            make_loader(manifest, num_workers=1, timeout=bad)  # type: ignore[arg-type]


def _build_and_read(url: str, out: str) -> None:
    loader = make_loader(url, batch_size=BATCH, num_workers=0, image_size=0, retry=POLICY)
    Path(out).write_text(json.dumps(sorted(int(g) for b in loader for g in b.ids)))


def test_a_process_forked_after_a_loader_ran_builds_its_own(tmp_path: Path) -> None:
    """Regression: the dataset's shared counters once made a forked child hang in torch's
    ``share_memory_()`` while it built its own dataset."""
    write_test_shards(tmp_path / "ds", SIZES)
    with FaultyServer(tmp_path) as server:
        url = server.url + "ds/manifest.json"
        assert len(_epoch_ids(url, rank=0, world=1)["ids"]) == TOTAL
        out = str(tmp_path / "child.json")
        child = multiprocessing.get_context("fork").Process(target=_build_and_read, args=(url, out))
        child.start()
        child.join(60)
        if child.exitcode is None:
            child.kill()
            child.join()
        assert child.exitcode == 0
        assert json.loads(Path(out).read_text())[-1] == TOTAL - 1
