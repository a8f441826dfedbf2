"""The runner with the real bench engine in real child processes (no HTTP)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from server.events import EventBus
from server.runner import Runner
from server.store import Store
from tests.server.helpers import TinyData, config, slow_config, wait_until


@pytest.fixture
def env(tmp_path: Path, tiny_data: TinyData) -> Iterator[tuple[Store, Runner]]:
    store = Store(tmp_path / "runs.db")
    runner = Runner(store, EventBus(), roots=[tiny_data.root], cancel_grace_s=3.0, poll_s=0.05)
    runner.start()
    yield store, runner
    runner.stop()
    store.close()


def group_alive(pgid: int) -> list[int]:
    alive = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return alive


def bench_going(store: Store, runner: Runner, run_id: str) -> int:
    """Wait until the bench reported an event; returns the child's pid."""
    wait_until(store, run_id, lambda r: r.status == "running" and r.last_event is not None)
    pid = runner.child_pid
    assert pid is not None
    return pid


def test_an_engine_error_fails_the_run_with_its_message(
    env: tuple[Store, Runner], tiny_data: TinyData
) -> None:
    store, runner = env
    bad = dict(config(tiny_data, modes=["tar-aware"]), workers=-1)
    run = store.create_run(bad)
    runner.wake()
    record = wait_until(store, run.id, lambda r: r.status not in ("queued", "running"))
    assert record.status == "failed"
    assert record.error is not None and "workers" in record.error
    assert record.result is None


def test_cancel_stops_the_child_with_its_workers_and_queued_runs_wait(
    env: tuple[Store, Runner], tiny_data: TinyData
) -> None:
    store, runner = env
    first = store.create_run(slow_config(tiny_data))
    second = store.create_run(config(tiny_data, modes=["tar-aware"], workers=0))
    runner.wake()
    pid = bench_going(store, runner, first.id)
    assert group_alive(pid), "the child should lead its own process group"
    waiting = store.get_run(second.id)
    assert waiting is not None and waiting.status == "queued"

    cancelled = runner.cancel(second.id)
    assert cancelled is not None and cancelled.status == "cancelled"
    assert cancelled.started_at is None

    started = time.monotonic()
    runner.cancel(first.id)
    record = wait_until(store, first.id, lambda r: r.status != "running", timeout=30)
    assert record.status == "cancelled" and record.cancel_requested
    assert record.result is None
    assert time.monotonic() - started < 3.0 + 5.0
    deadline = time.monotonic() + 10
    while group_alive(pid):
        assert time.monotonic() < deadline, f"left behind: {group_alive(pid)}"
        time.sleep(0.1)
    assert runner.current_run is None


def test_stopping_the_runner_interrupts_the_run_and_keeps_the_queue(
    env: tuple[Store, Runner], tiny_data: TinyData
) -> None:
    store, runner = env
    going = store.create_run(slow_config(tiny_data))
    queued = store.create_run(config(tiny_data, modes=["tar-aware"], workers=0))
    runner.wake()
    pid = bench_going(store, runner, going.id)
    runner.stop()
    record = store.get_run(going.id)
    assert record is not None and record.status == "interrupted"
    assert record.error == "the service stopped"
    later = store.get_run(queued.id)
    assert later is not None and later.status == "queued"
    deadline = time.monotonic() + 10
    while group_alive(pid):
        assert time.monotonic() < deadline
        time.sleep(0.1)


def _lying_copy(tiny: TinyData, name: str, change: Any) -> Path:
    """A copy of the tiny shards under the data root whose manifest ``change`` edits."""
    folder = tiny.root / f"lying-{name}"
    if not folder.exists():
        shutil.copytree(tiny.shards, folder)
    doc = json.loads((tiny.shards / "manifest.json").read_text())
    change(doc)
    (folder / "manifest.json").write_text(json.dumps(doc))
    return folder


def _claim(n: int) -> Any:
    def inflate(doc: dict[str, Any]) -> None:
        doc["num_samples"] += n - doc["shardlist"][1]["nsamples"]
        doc["shardlist"][1]["nsamples"] = n

    return inflate


def _repeat(doc: dict[str, Any]) -> None:
    """List shard 0 again at the end, with ids after the others (as a careless merge would)."""
    again = dict(doc["shardlist"][0], first_index=doc["num_samples"])
    doc["shardlist"].append(again)
    doc["num_samples"] += again["nsamples"]


@pytest.mark.parametrize(
    ("name", "change", "named"),
    [
        ("claim-1e12", _claim(10**12), r"shard-000001\.tar .*nsamples=1000000000000"),
        ("claim-2e9", _claim(2 * 10**9), r"shard-000001\.tar .*nsamples=2000000000"),
        ("null-classes", lambda doc: doc.update(classes=None), "got classes=None"),
        ("nan-size", lambda doc: doc["shardlist"][0].update(filesize=math.nan), "filesize=nan"),
        ("repeated", _repeat, r"url=shard-000000\.tar twice"),
    ],
)
def test_a_lying_manifest_fails_the_run_with_a_named_manifest_error(
    env: tuple[Store, Runner], tiny_data: TinyData, name: str, change: Any, named: str
) -> None:
    store, runner = env
    shards = _lying_copy(tiny_data, name, change)
    run = store.create_run(config(tiny_data, shards=str(shards), modes=["tar-aware"], workers=0))
    runner.wake()
    record = wait_until(store, run.id, lambda r: r.status not in ("queued", "running"))
    assert record.status == "failed" and record.result is None
    assert record.error is not None and record.error.startswith("ManifestError: ")
    assert re.search(named, record.error) and "\n" not in record.error, record.error
