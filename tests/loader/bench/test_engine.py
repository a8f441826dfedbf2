"""Tests for the benchmark engine (loader/bench.py and its helpers ``loader._bench_*``).

``run_bench`` runs in this process on tiny shards written by the ``loader_kit`` (fake JPEG
payloads, so ``decode=False``): events and progress, cancellation, the config checks, the
limit's split, the figures' arithmetic, and the HTTP server the ``--http`` runs read from.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from loader.batch import Batch, BatchBuilder
from loader.bench import MODE_NAMES, BenchCancelled, BenchConfig, run_bench
from loader.bench.http_server import serve_http
from loader.bench.limit import LimitRunner, split_ranges
from loader.bench.measure import combine_rounds, measure_epoch, summarize_epochs
from loader.bench.noise import judge
from loader.decode import NoDecode
from loader.percentile import percentile
from loader.sources import resolve_source
from loader.tracker import DuplicateTracker
from tests.loader.helpers import write_test_shards

SIZES = [7, 5, 9]
TOTAL = sum(SIZES)


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    manifest: Path = write_test_shards(tmp_path / "shards", SIZES)
    return manifest.parent


def config(where: Path, **kw: Any) -> BenchConfig:
    options: dict[str, Any] = {
        "folder": None,
        "shards": str(where),
        "modes": ("tar-aware", "tar-naive"),
        "workers": 2,
        "batch_size": 4,
        "decode": False,
    }
    options.update(kw)
    return BenchConfig(**options)


def test_events_arrive_in_order_with_growing_progress(shards: Path) -> None:
    events: list[dict[str, Any]] = []
    doc = run_bench(config(shards, epochs=2, repeat=2), on_event=events.append)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert kinds.count("limit") == 2 * 3 and kinds.count("epoch") == 2 * 2 * 2
    assert kinds.count("mode_start") == kinds.count("mode_done") == 2 * 2
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress) and progress[0] == 0.0 and progress[-1] == 1.0
    assert events[-1]["result"] == doc
    first_round = kinds[: kinds.index("mode_done") + 1]
    assert first_round == [
        "start", "log", "limit", "mode_start", "epoch", "epoch", "limit", "mode_done",
    ]  # fmt: skip
    assert events[1]["message"].startswith("limit warm-up: ")
    epoch = next(e for e in events if e["type"] == "epoch")
    assert epoch["mode"] == "tar-aware" and epoch["round"] == 0 and epoch["samples"] == TOTAL
    assert all(not key.startswith("_") for key in epoch)
    aware, naive = doc["modes"]["tar-aware"], doc["modes"]["tar-naive"]
    assert (aware["samples"], aware["duplicates"], aware["missing"]) == (2 * TOTAL, 0, 0)
    assert (naive["samples"], naive["duplicates"]) == (4 * TOTAL, 2 * TOTAL)
    assert [r["round"] for r in aware["rounds"]] == [0, 1]
    assert aware["samples_per_s_min"] <= aware["samples_per_s"] <= aware["samples_per_s_max"]
    assert doc["limit"]["processes"] == 2 and len(doc["limit"]["runs"]) == 6
    runs = doc["limit"]["runs"]
    for result in (aware, naive):  # the limit shown is the one the ratio was taken against
        before, after = result["limit_runs_samples_per_s"]
        assert runs.index(after) == runs.index(before) + 1
        assert result["limit_samples_per_s"] == pytest.approx((before + after) / 2)
        (used,) = [r for r in result["rounds"] if r["ratio_to_limit"] == result["ratio_to_limit"]]
        assert used["samples_per_s"] / result["limit_samples_per_s"] == pytest.approx(
            result["ratio_to_limit"]
        )
        assert result["noisy"] == any(r["noisy"] for r in result["rounds"])
        verdicts = [
            judge(r["ratio_to_limit"], r["limit_runs_samples_per_s"]) for r in result["rounds"]
        ]
        assert [v["noisy"] for v in verdicts] == [r["noisy"] for r in result["rounds"]]


def test_workers_zero_runs_in_process_and_limit_uses_one(shards: Path) -> None:
    doc = run_bench(config(shards, workers=0, modes=("tar-aware", "tar-naive")))
    assert doc["limit"]["processes"] == 1 and doc["limit"]["samples"] == TOTAL
    assert doc["modes"]["tar-naive"]["duplicates"] == 0  # one reader: nothing read twice


@pytest.mark.parametrize("when", ["epoch", "limit", "start"])
def test_cancel_raises_and_leaves_no_process_behind(shards: Path, when: str) -> None:
    cancel = threading.Event()
    seen: list[str] = []

    def on_event(event: dict[str, Any]) -> None:
        seen.append(event["type"])
        if event["type"] == when:
            cancel.set()

    with pytest.raises(BenchCancelled):
        run_bench(config(shards, epochs=3), on_event=on_event, cancel=cancel)
    assert "done" not in seen
    assert multiprocessing.active_children() == []


def test_a_failing_mode_is_reported_and_the_others_still_run(shards: Path, tmp_path: Path) -> None:
    folder = tmp_path / "src" / "cls"
    folder.mkdir(parents=True)
    (folder / "a.jpg").write_bytes(b"not an image at all")
    doc = run_bench(
        config(shards, folder=str(tmp_path / "src"), modes=("map", "tar-aware"), workers=0)
    )
    failed = doc["modes"]["map"]
    assert failed["status"] == "failed" and "DecodeError" in failed["reason"]
    assert "\n" not in failed["reason"]
    assert doc["modes"]["tar-aware"]["status"] == "ok"


def test_map_without_folder_is_skipped_with_the_reason(shards: Path) -> None:
    doc = run_bench(config(shards, modes=("map", "tar-aware"), workers=1))
    assert doc["modes"]["map"] == {
        "status": "skipped",
        "reason": "map reads the source folder: give --folder",
    }
    assert len(doc["limit"]["runs"]) == 2


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("workers", -1, "expected workers between 0 and 64, got workers=-1"),
        ("workers", 65, "got workers=65"),
        ("workers", True, "got workers=True"),
        ("batch_size", 0, "got batch_size=0"),
        ("epochs", 2.0, "got epochs=2.0"),
        ("image_size", 0, "got image_size=0"),
        ("latency_ms", float("inf"), "got latency_ms=inf"),
        ("latency_ms", -0.5, "got latency_ms=-0.5"),
        ("repeat", 101, "got repeat=101"),
        ("seed", -3, "got seed=-3"),
        ("modes", (), "expected at least one mode"),
        ("modes", ("tar-aware", "nope"), "got mode='nope'"),
        ("modes", ("map", "map"), "expected each mode once"),
        ("shards", "", "got shards=''"),
        ("folder", "", "got folder=''"),
        ("decode", "yes", "got decode='yes'"),
        ("http", 1, "got http=1"),
    ],
)
def test_config_names_the_bad_field(field: str, value: Any, message: str, tmp_path: Path) -> None:
    bad = config(tmp_path, **{field: value})
    with pytest.raises(ValueError, match="expected") as info:
        bad.validate()
    assert message in str(info.value)
    with pytest.raises(ValueError, match="expected"):
        run_bench(bad)


def test_missing_shards_raise_before_anything_runs(tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []
    with pytest.raises(FileNotFoundError, match="shards="):
        run_bench(config(tmp_path / "none"), on_event=events.append)
    assert events == []


def test_default_modes_are_the_design_list() -> None:
    assert BenchConfig(folder=None, shards="x").modes == MODE_NAMES[:5]
    assert MODE_NAMES[5] == "litdata"


def test_split_ranges_cuts_contiguous_balanced_pieces() -> None:
    pieces = split_ranges([7, 5, 9], 2)
    assert pieces == [[(0, 0, 7), (1, 0, 3)], [(1, 3, 5), (2, 0, 9)]]
    flat = [
        (s, p) for piece in split_ranges([3, 0, 4], 3) for s, a, b in piece for p in range(a, b)
    ]
    assert flat == [(0, 0), (0, 1), (0, 2), (2, 0), (2, 1), (2, 2), (2, 3)]
    assert split_ranges([2], 4) == [[], [(0, 0, 1)], [], [(0, 1, 2)]]
    with pytest.raises(ValueError, match="parts >= 1"):
        split_ranges([1], 0)


def test_limit_keeps_its_processes_across_runs(shards: Path) -> None:
    runner = LimitRunner(
        resolve_source(str(shards)), 2, decode=False, image_size=0, batch_size=4, seed=0,
        latency_s=0.0,
    )  # fmt: skip
    with runner:
        first, second = runner.run(), runner.run()  # the second reuses processes and readers
        children = multiprocessing.active_children()
        assert len(children) == 2
    assert all(not c.is_alive() for c in children)
    for run in (first, second):
        assert run.samples >= TOTAL and run.nbytes > 0 and run.samples_per_s > 0
    with pytest.raises(ValueError, match="processes >= 1"):
        LimitRunner(resolve_source(str(shards)), 0, decode=False, image_size=0, batch_size=1,
                    seed=0, latency_s=0.0)  # fmt: skip


def test_limit_reports_a_child_failure(shards: Path) -> None:
    source = resolve_source(str(shards))  # an empty shard is refused while resolving
    (shards / "shard-000001.tar").write_bytes(b"")
    runner = LimitRunner(
        source, 2, decode=False, image_size=0, batch_size=4, seed=0, latency_s=0.0,
    )  # fmt: skip
    with pytest.raises(RuntimeError, match="limit process failed: ShardReadError"):
        runner.run()
    assert multiprocessing.active_children() == []


def _epoch(samples: int, steady: int, span: float, cpu: float, lat: list[float]) -> dict[str, Any]:
    return {
        "epoch": 0, "samples": samples, "unique": samples, "duplicates": 0, "missing": 0,
        "padded": 0, "bytes": 10 * samples, "seconds": span + 1, "steady_samples": steady,
        "steady_bytes": 10 * steady, "steady_s": span, "samples_per_s": steady / span,
        "mb_per_s": 10 * steady / 1e6 / span, "blocked_s": span, "main_cpu_s": cpu,
        "first_batch_s": 1.0, "p50_batch_ms": None, "p99_batch_ms": None, "_latencies": lat,
    }  # fmt: skip


def test_epochs_sum_and_rounds_take_medians() -> None:
    one = summarize_epochs(
        [_epoch(100, 90, 1.0, 0.5, [1, 2]), _epoch(100, 90, 2.0, 0.5, [3])], (60.0, 60.0)
    )
    assert one["samples"] == 200 and one["samples_per_s"] == pytest.approx(60.0)
    assert one["ratio_to_limit"] == pytest.approx(1.0)
    assert one["main_cpu_s_per_1k"] == pytest.approx(5.0)
    assert one["main_cpu_s_per_1k_unique"] == pytest.approx(5.0)
    assert one["p50_batch_ms"] == 2 and one["first_batch_s"] == 1.0
    assert [e["ratio_to_limit"] for e in one["epochs"]] == [pytest.approx(1.5), pytest.approx(0.75)]
    assert all("_latencies" not in e for e in one["epochs"])
    rounds = [summarize_epochs([_epoch(100, 90, s, 0.1, [s])], (90.0,)) for s in (1.0, 3.0, 2.0)]
    combined = combine_rounds(rounds)
    assert combined["samples_per_s"] == pytest.approx(45.0)
    assert (combined["samples_per_s_min"], combined["samples_per_s_max"]) == (30.0, 90.0)
    assert combined["epochs"] == rounds[2]["epochs"] and len(combined["rounds"]) == 3
    assert combined["samples"] == 100 and isinstance(combined["samples"], int)
    with pytest.raises(ValueError, match="at least one round"):
        combine_rounds([])
    assert percentile([], 50) is None and percentile([1.0, 3.0], 50) == 2.0


def test_http_server_serves_ranges_under_prefixes(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f.bin").write_bytes(bytes(range(100)))
    with serve_http({"data": tmp_path / "a"}) as base:
        assert base.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(base + "data/f.bin") as r:
            assert r.read() == bytes(range(100))
        request = urllib.request.Request(base + "data/f.bin", headers={"Range": "bytes=10-19"})
        with urllib.request.urlopen(request) as r:
            assert r.status == 206 and r.read() == bytes(range(10, 20))
            assert r.headers["Content-Range"] == "bytes 10-19/100"
        for path, code in (("data/../a/f.bin", 404), ("other/f.bin", 404), ("data/none", 404)):
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(base + path)
            assert info.value.code == code, path
        past = urllib.request.Request(base + "data/f.bin", headers={"Range": "bytes=100-"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(past)
        assert info.value.code == 416
    with pytest.raises(NotADirectoryError, match="missing="):
        with serve_http({"missing": tmp_path / "nope"}):
            pass
    with pytest.raises(ValueError, match="plain URL segment"):
        with serve_http({"a/b": tmp_path}):
            pass


def _batch(first: int, size: int) -> Batch:
    builder = BatchBuilder(size, 0, NoDecode())
    rng = np.random.default_rng(0)
    for gid in range(first, first + size):
        builder.add(b"\xff\xd8\xff\xe0", 0, gid, rng)
    return builder.finish()


class _ItemIterator:
    """Hands on ``groups`` batch by batch, counting items like ``ClosingDataLoader``'s."""

    def __init__(self, groups: list[list[Batch]], waits: list[float]) -> None:
        self._batches = [(i + 1, b) for i, group in enumerate(groups) for b in group]
        self._waits = waits
        self.items_received = 0

    def __iter__(self) -> _ItemIterator:
        return self

    def __next__(self) -> Batch:
        if not self._batches:
            raise StopIteration
        item, batch = self._batches.pop(0)
        if item != self.items_received:  # a new item: wait for it, then hand on its batches
            time.sleep(self._waits[item - 1])
        self.items_received = item
        return batch


class _GroupedLoader:
    def __init__(
        self, groups: list[list[Batch]], num_workers: int, waits: list[float] | None = None
    ) -> None:
        self.groups, self.num_workers = groups, num_workers
        self.waits = waits if waits is not None else [0.001] * len(groups)

    def __iter__(self) -> _ItemIterator:
        return _ItemIterator(self.groups, self.waits)


@pytest.mark.parametrize(
    ("workers", "steady", "window"),
    [(0, 4 + 4 + 2, 0.35), (1, 4 + 4 + 2, 0.35), (2, 4 + 2, 0.05)],
)
def test_steady_rate_starts_after_every_workers_first_item(
    workers: int, steady: int, window: float
) -> None:
    """Items take 0.3, 0.3, 0.02 and 0.03 s to arrive: the window holds only the waits of the
    items after the warm-up ones (``window``), not the start-up."""
    groups = [[_batch(0, 4), _batch(4, 4), _batch(8, 4)], [_batch(12, 4)], [_batch(16, 4)]]
    groups.append([_batch(20, 2)])
    loader = _GroupedLoader(groups, workers, waits=[0.3, 0.3, 0.02, 0.03])
    figures = measure_epoch(loader, DuplicateTracker(22), 0)
    assert figures["samples"] == figures["unique"] == 22
    assert figures["batches"] == 6 and figures["steady_samples"] == steady
    assert window <= figures["steady_s"] < window + 0.25
    assert figures["samples_per_s"] == pytest.approx(steady / figures["steady_s"])
    assert figures["first_batch_s"] >= 0.3


def test_steady_rate_counts_batches_as_items_without_a_counter() -> None:
    batches = [_batch(4 * i, 4) for i in range(5)]

    class Plain:
        num_workers = 3

        def __iter__(self) -> Iterator[Batch]:
            return iter(batches)

    figures = measure_epoch(Plain(), DuplicateTracker(20), 0)
    assert figures["steady_samples"] == 8
    single = measure_epoch(batches[:2], DuplicateTracker(20), 1)
    assert single["steady_samples"] == 4


def test_an_epoch_that_never_leaves_warm_up_is_timed_whole() -> None:
    loader = _GroupedLoader([[_batch(0, 3), _batch(3, 3)]], 2)
    figures = measure_epoch(loader, DuplicateTracker(6), 0)
    assert figures["steady_samples"] == 6
    assert figures["steady_s"] == pytest.approx(figures["seconds"])
