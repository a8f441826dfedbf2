"""StatsReporter against real local HTTP servers (recording, slow, refusing) and a closed port."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loader.mix.tracker import SourceCounts
from loader.percentile import percentile
from loader.reporter import StatsReporter, queue_depth
from loader.tracker import DuplicateTracker, unpack_seen
from tests.loader.helpers import write_test_shards


@dataclass
class FakeClock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Recorder:
    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    status: int = 202
    delay_s: float = 0.0

    def bodies(self) -> list[dict[str, Any]]:
        return [r["body"] for r in list(self.requests)]

    def wait_for(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            assert time.monotonic() < deadline, f"only {len(self.requests)} requests arrived"
            time.sleep(0.01)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    state = Recorder(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length))
            time.sleep(state.delay_s)
            state.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
            try:
                self.send_response(state.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")
            except (BrokenPipeError, ConnectionResetError):
                return  # the reporter gave up waiting (the slow-service test)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_snapshots_are_cumulative_and_sent_every_interval(recorder: Recorder) -> None:
    reporter = StatsReporter(recorder.url, "job-1", token="tok", interval_s=0.05, rank=3)
    try:
        reporter.record(samples=10, bytes=1000, blocked_s=0.25, epoch=0)
        recorder.wait_for(1)
        reporter.record(samples=5, bytes=500, blocked_s=0.25, epoch=1)
        first_count = len(recorder.requests)
        recorder.wait_for(first_count + 2)
    finally:
        reporter.close()
    request = recorder.requests[0]
    assert request["path"] == "/api/jobs/job-1/stats"
    assert request["headers"]["Authorization"] == "Bearer tok"
    assert request["headers"]["Content-Type"] == "application/json"
    last = recorder.bodies()[-1]
    assert (last["samples"], last["bytes"], last["blocked_s"], last["epoch"]) == (15, 1500, 0.5, 1)
    assert last["rank"] == 3 and last["failed_sends"] == 0
    elapsed = [b["elapsed_s"] for b in recorder.bodies()]
    assert elapsed == sorted(elapsed) and elapsed[0] > 0
    assert reporter.sent == len(recorder.requests) and reporter.failed_sends == 0


def test_close_flushes_the_last_figures_and_stops(recorder: Recorder) -> None:
    reporter = StatsReporter(recorder.url, "j", interval_s=60.0)
    reporter.record(samples=7)
    reporter.close()
    assert len(recorder.requests) == 1 and recorder.bodies()[0]["samples"] == 7
    assert not reporter._thread.is_alive()
    reporter.close()
    assert len(recorder.requests) == 1


def test_a_service_that_is_down_never_slows_or_breaks_training() -> None:
    reporter = StatsReporter(closed_port_url(), "j", interval_s=0.02, timeout_s=0.5)
    started = time.perf_counter()
    for _ in range(20_000):
        reporter.record(samples=1, bytes=10, blocked_s=0.0)
    record_s = time.perf_counter() - started
    deadline = time.monotonic() + 10
    while reporter.failed_sends < 3:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    closing = time.perf_counter()
    reporter.close()
    assert time.perf_counter() - closing < 2.0
    assert record_s < 1.0
    assert reporter.sent == 0 and reporter.failed_sends >= 4
    assert reporter.last_error is not None and "Connection" in reporter.last_error
    assert reporter.snapshot()["samples"] == 20_000
    assert reporter.snapshot()["failed_sends"] == reporter.failed_sends


def test_a_slow_service_times_out_without_blocking_record(recorder: Recorder) -> None:
    recorder.delay_s = 1.0
    reporter = StatsReporter(recorder.url, "j", interval_s=0.01, timeout_s=0.1)
    try:
        deadline = time.monotonic() + 10
        worst = 0.0
        while reporter.failed_sends < 1:
            assert time.monotonic() < deadline
            t0 = time.perf_counter()
            reporter.record(samples=1)
            worst = max(worst, time.perf_counter() - t0)
            time.sleep(0.001)
        assert worst < 0.05
        assert "timed out" in (reporter.last_error or "")
    finally:
        recorder.delay_s = 0.0
        reporter.close()


def test_a_refusing_service_counts_as_a_failed_send(recorder: Recorder) -> None:
    recorder.status = 401
    reporter = StatsReporter(recorder.url, "j", token="wrong", interval_s=60.0)
    assert reporter.flush() is False
    reporter.close()
    assert reporter.failed_sends == 2 and reporter.sent == 0
    assert "401" in (reporter.last_error or "")


def test_tracker_counts_are_taken_from_epoch_counts(recorder: Recorder) -> None:
    tracker = DuplicateTracker(10)
    tracker.start_epoch(2)
    tracker.update(np.array([0, 1, 1, 2]))
    with StatsReporter(recorder.url, "j", interval_s=60.0) as reporter:
        reporter.record(samples=4, tracker_counts=tracker.counts())
    body = recorder.bodies()[-1]
    assert body["epoch"] == 2
    assert body["tracker"] == {
        "delivered": 4,
        "unique": 3,
        "duplicates": 1,
        "missing": 7,
        "padded": 0,
    }
    with StatsReporter(recorder.url, "j", interval_s=60.0) as reporter:
        reporter.record(tracker_counts={"duplicates": 0, "missing": 3, "other": 9}, epoch=5)
    body = recorder.bodies()[-1]
    assert body["tracker"] == {"duplicates": 0, "missing": 3} and body["epoch"] == 5
    assert body["resumed_at_step"] is None


def test_a_mix_sends_its_counts_per_source(recorder: Recorder) -> None:
    web = SourceCounts(source=0, quota=6, delivered=4, unique=4, duplicates=0, missing=2, padded=1)
    with StatsReporter(recorder.url, "j", interval_s=60.0) as reporter:
        assert reporter.snapshot()["sources"] == {}
        reporter.record(source_counts={"web": web, "cur": {"delivered": 3, "other": 1}})
        with pytest.raises(ValueError, match="at most 64 sources"):
            reporter.record(source_counts={f"s{i}": {"delivered": 0} for i in range(65)})
        with pytest.raises(ValueError, match="without control characters, got name="):
            reporter.record(source_counts={"a\tb": {"delivered": 0}})
        with pytest.raises(ValueError, match="'delivered' in the counts of source 'web'"):
            reporter.record(source_counts={"web": {"quota": 1}})
        with pytest.raises(ValueError, match="counts >= 0 for source 'web'"):
            reporter.record(source_counts={"web": {"delivered": -1}})
        assert reporter.snapshot()["sources_scope"] == "rank"
    body = recorder.bodies()[-1]
    assert body["sources"] == {
        "web": {"quota": 6, "delivered": 4, "unique": 4, "duplicates": 0, "missing": 2,
                "padded": 1},
        "cur": {"delivered": 3},
    }  # fmt: skip
    assert body["sources_scope"] == "rank"
    with StatsReporter(recorder.url, "j", interval_s=60.0) as reporter:
        reporter.record(source_counts={"web": web}, sources_merged=True)
    assert recorder.bodies()[-1]["sources_scope"] == "merged"


def test_a_resumed_job_reports_the_step_it_went_on_from(recorder: Recorder) -> None:
    with StatsReporter(recorder.url, "j", interval_s=60.0) as reporter:
        reporter.record(samples=2, resumed_at_step=120)
        reporter.record(samples=2)
    assert recorder.bodies()[-1]["resumed_at_step"] == 120


def test_record_from_many_threads_loses_nothing(recorder: Recorder) -> None:
    with StatsReporter(recorder.url, "j", interval_s=0.01) as reporter:

        def hammer() -> None:
            for _ in range(5000):
                reporter.record(samples=1, bytes=2)

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    last = recorder.bodies()[-1]
    assert (last["samples"], last["bytes"]) == (20_000, 40_000)


def test_rank_defaults_to_torchruns_environment_variables(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "8")
    with StatsReporter(recorder.url, "j", interval_s=60.0) as reporter:
        assert reporter.snapshot()["rank"] == 5
        reporter.record(rank=2)
    assert recorder.bodies()[-1]["rank"] == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "ftp://host/", "job": "j"}, "http"),
        ({"url": "127.0.0.1:8000", "job": "j"}, "http"),
        ({"url": "http://127.0.0.1:1", "job": "a/b"}, "job"),
        ({"url": "http://127.0.0.1:1", "job": ""}, "job"),
        ({"url": "http://127.0.0.1:1", "job": "j", "interval_s": 0}, "interval_s"),
        ({"url": "http://127.0.0.1:1", "job": "j", "timeout_s": -1}, "timeout_s"),
        ({"url": "http://127.0.0.1:1", "job": "j", "window_s": 0}, "window_s"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StatsReporter(**kwargs)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=300))
def test_window_percentiles_are_the_one_percentile_over_the_steps(waits: list[float]) -> None:
    with StatsReporter(closed_port_url(), "j", interval_s=3600.0, window_s=3600.0) as reporter:
        for wait in waits:
            reporter.record(samples=1, blocked_s=wait)
        snap = reporter.snapshot()
    for q, key in ((50, "blocked_p50_s"), (95, "blocked_p95_s"), (99, "blocked_p99_s")):
        expected = percentile(waits, q)
        assert expected is not None and snap[key] == pytest.approx(expected, abs=1e-6)
    assert snap["blocked_p50_s"] <= snap["blocked_p95_s"] <= snap["blocked_p99_s"]
    assert snap["window_steps"] == len(waits)
    assert snap["window_blocked_s"] == pytest.approx(sum(waits), abs=1e-5)


def test_the_window_forgets_old_steps_and_sends_the_queue_depth(recorder: Recorder) -> None:
    clock = FakeClock()
    with StatsReporter(recorder.url, "j", interval_s=60.0, window_s=0.3, clock=clock) as reporter:
        assert reporter.snapshot()["blocked_p99_s"] is None
        reporter.record(samples=1, blocked_s=5.0, queue_depth=3)
        clock.now += 0.4
        reporter.record(samples=1, blocked_s=0.01)
        snap = reporter.snapshot()
        assert (snap["window_steps"], snap["blocked_p99_s"]) == (1, 0.01)
        assert snap["blocked_s"] == 5.01 and snap["queue_depth"] == 3
        assert snap["window_s"] == pytest.approx(0.3) and snap["elapsed_s"] == pytest.approx(0.4)
    assert recorder.bodies()[-1]["queue_depth"] == 3


def test_ids_go_out_as_this_epochs_bitmap_with_its_counts(recorder: Recorder) -> None:
    with StatsReporter(recorder.url, "j", interval_s=60.0, num_samples=10) as reporter:
        reporter.record(epoch=0, ids=np.array([0, 1]), padded=np.array([False, False]))
        reporter.record(epoch=1, ids=np.array([3, 3, 4]), padded=np.array([False, False, True]))
        snap = reporter.snapshot()
    coverage = snap["coverage"]
    assert {k: coverage[k] for k in ("epoch", "num_samples", "delivered", "padded")} == {
        "epoch": 1,
        "num_samples": 10,
        "delivered": 2,
        "padded": 1,
    }
    seen = unpack_seen(base64.b64decode(coverage["seen"]), 10)
    assert np.flatnonzero(seen).tolist() == [3]
    assert len(snap["reporter"]) == 16 and recorder.bodies()[-1]["coverage"]["epoch"] == 1


def test_a_resumed_reporter_starts_from_the_restored_tracker() -> None:
    tracker = DuplicateTracker(6)
    tracker.start_epoch(2)
    tracker.update(np.array([0, 5]))
    with StatsReporter(closed_port_url(), "j", interval_s=3600.0, num_samples=6) as reporter:
        reporter.resume_epoch(tracker)
        reporter.record(epoch=2, ids=np.array([1]))
        coverage = reporter.snapshot()["coverage"]
    assert coverage["delivered"] == 3 and coverage["epoch"] == 2
    assert np.flatnonzero(unpack_seen(base64.b64decode(coverage["seen"]), 6)).tolist() == [0, 1, 5]


def test_ids_need_num_samples_and_must_be_in_range() -> None:
    with StatsReporter(closed_port_url(), "j", interval_s=3600.0) as reporter:
        with pytest.raises(ValueError, match="num_samples"):
            reporter.record(ids=np.array([0]))
    with StatsReporter(closed_port_url(), "j", interval_s=3600.0, num_samples=3) as reporter:
        with pytest.raises(ValueError, match="expected ids in"):
            reporter.record(ids=np.array([3]))


def tiny_jpeg(gid: int) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", np.full((8, 8, 3), gid % 256, np.uint8))
    assert ok
    return bytes(buf.tobytes())


def test_queue_depth_counts_batches_a_real_loader_holds_ready(tmp_path: Path) -> None:
    from loader.dataloader import make_loader, stop_workers

    manifest = write_test_shards(tmp_path / "shards", [16, 16], image_bytes=tiny_jpeg)
    loader = make_loader(manifest, batch_size=2, num_workers=1, image_size=8, seed=0)
    try:
        assert queue_depth(loader) is None  # no iteration yet: nothing to measure
        it = iter(loader)
        next(it)
        deadline = time.monotonic() + 20
        depth = queue_depth(it)
        while (depth or 0) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
            depth = queue_depth(it)
        assert depth is not None and depth >= 1
        assert queue_depth(loader) is not None  # the loader keeps its persistent iterator
        for _ in it:
            pass
    finally:
        stop_workers(loader)


def test_device_decode_counts_are_sent_as_the_latest_totals(recorder: Recorder) -> None:
    with StatsReporter(recorder.url, "decode", interval_s=60.0) as reporter:
        assert reporter.snapshot()["decode"] == {}
        reporter.record(samples=4, decode_counts={"device": 3, "orientation": 1})
        reporter.record(samples=4, decode_counts={"device": 6, "orientation": 2})
    assert recorder.bodies()[-1]["decode"] == {"device": 6, "orientation": 2}


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_a_failed_send_and_is_never_followed(recorder: Recorder, status: int) -> None:
    """A service answering 3xx towards another origin (a second real server): the report is
    counted as failed, the other origin gets nothing (no token, no GET), and flush says so."""
    seen: list[tuple[str, str, dict[str, str]]] = []

    class Redirecting(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            seen.append((self.command, self.path, dict(self.headers)))
            self.send_response(status)
            self.send_header("Location", f"{recorder.url}/stolen")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirecting)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        reporter = StatsReporter(url, "job", token="s3cret", interval_s=3600)
        reporter.record(samples=5)
        assert reporter.flush() is False
        reporter.close()
        assert (reporter.sent, reporter.failed_sends) == (0, 2)
        assert reporter.last_error is not None and str(status) in reporter.last_error
        assert [(m, p) for m, p, _ in seen] == [("POST", "/api/jobs/job/stats")] * 2
        assert all(h.get("Authorization") == "Bearer s3cret" for _, _, h in seen)
        assert recorder.requests == []  # the other origin never heard of it
    finally:
        server.shutdown()
        server.server_close()


def test_credentials_in_the_service_url_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    url = closed_port_url().replace("http://", "http://user:pa55@") + "/?token=t0k"
    with caplog.at_level("WARNING", logger="loader.reporter"):
        reporter = StatsReporter(url, "job", interval_s=3600, timeout_s=0.5)
        assert reporter.flush() is False
        reporter.close()
    text = caplog.text + (reporter.last_error or "")
    assert "could not send stats" in text
    assert "pa55" not in text and "t0k" not in text
