"""Against a real ``shardfeed serve`` (uvicorn) on 127.0.0.1 and a free port."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from loader.reporter import StatsReporter
from tests.server.helpers import LiveServer, ServedRun, TinyData, wait_for_status
from tests.server.rankjob import EPOCHS, FAST_WAIT_S, SLOW_WAIT_S, STEP_S, run_ranks

FINAL = {"done", "failed", "cancelled", "interrupted"}


def slow_body(tiny: TinyData) -> dict[str, Any]:
    return {
        "shards": str(tiny.shards),
        "modes": ["tar-naive", "tar-aware"],
        "workers": 2,
        "batch_size": 2,
        "epochs": 20,
        "image_size": 32,
        "latency_ms": 300.0,
    }


def bench_children(server: LiveServer) -> list[psutil.Process]:
    """The server's child processes except multiprocessing's resource tracker."""
    assert server.process is not None
    found = []
    for child in psutil.Process(server.process.pid).children(recursive=True):
        try:
            if "resource_tracker" not in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found


def wait_gone(processes: list[psutil.Process], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    for proc in processes:
        while True:
            try:
                if proc.status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            assert time.monotonic() < deadline, f"process {proc.pid} still alive"
            time.sleep(0.1)


def wait_going(url: str, run_id: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        doc = httpx.get(f"{url}/api/benchmarks/{run_id}", timeout=5).json()
        if doc["status"] == "running" and doc["last_event"] is not None:
            return doc
        assert doc["status"] in ("queued", "running"), doc
        assert time.monotonic() < deadline, doc
        time.sleep(0.1)


def test_naive_tar_duplicates_and_worker_aware_tar_is_exactly_once(
    served_run: ServedRun, tiny_data: TinyData
) -> None:
    run = served_run.run
    assert run["progress"] == 1.0 and run["error"] is None
    modes = run["result"]["modes"]
    naive, aware = modes["tar-naive"], modes["tar-aware"]
    workers = run["config"]["workers"]
    assert naive["duplicates"] == tiny_data.images * (workers - 1)
    assert aware["duplicates"] == 0 and aware["missing"] == 0
    assert aware["unique"] == tiny_data.images
    assert run["result"]["limit"]["samples_per_s"] > 0
    listing = httpx.get(f"{served_run.server.url}/api/benchmarks").json()
    summary = next(r for r in listing["runs"] if r["id"] == served_run.run_id)
    assert summary["modes"]["tar-naive"]["duplicates"] == naive["duplicates"]
    metrics = httpx.get(f"{served_run.server.url}/metrics").text
    label = f'mode="tar-aware",run="{served_run.run_id}"'
    assert f"shardfeed_benchmark_samples_per_second{{{label}}}" in metrics
    assert f"shardfeed_benchmark_ratio_to_limit{{{label}}}" in metrics
    assert f"shardfeed_benchmark_duplicates{{{label}}} 0.0" in metrics


def test_runs_queue_one_at_a_time_and_cancel_stops_the_child(
    served_run: ServedRun, tiny_data: TinyData
) -> None:
    server = served_run.server
    url, headers = server.url, server.headers()
    first = httpx.post(f"{url}/api/benchmarks", json=slow_body(tiny_data), headers=headers)
    second = httpx.post(f"{url}/api/benchmarks", json=slow_body(tiny_data), headers=headers)
    assert first.status_code == 202 and second.status_code == 202
    assert first.json()["status"] == "queued"
    first_id, second_id = first.json()["id"], second.json()["id"]
    wait_going(url, first_id)
    children = bench_children(server)
    assert children, "the run should be in a child process"
    assert httpx.get(f"{url}/api/benchmarks/{second_id}").json()["status"] == "queued"
    assert httpx.get(f"{url}/healthz").json()["current_run"] == first_id

    unauthorised = httpx.delete(f"{url}/api/benchmarks/{first_id}")
    assert unauthorised.status_code == 401
    gone = httpx.delete(f"{url}/api/benchmarks/{second_id}", headers=headers)
    assert gone.status_code == 202 and gone.json()["status"] == "cancelled"
    answer = httpx.delete(f"{url}/api/benchmarks/{first_id}", headers=headers)
    assert answer.status_code == 202 and answer.json()["cancel_requested"] is True
    doc = wait_for_status(url, first_id, FINAL, timeout=30)
    assert doc["status"] == "cancelled" and doc["result"] is None
    wait_gone(children)
    again = httpx.delete(f"{url}/api/benchmarks/{first_id}", headers=headers)
    assert again.status_code == 409


def test_stats_reporter_feeds_jobs_metrics_and_events(served_run: ServedRun) -> None:
    url = served_run.server.url
    events: list[dict[str, Any]] = []
    subscribed = threading.Event()

    def listen() -> None:
        with httpx.stream("GET", f"{url}/api/events?limit=3", timeout=30) as stream:
            for line in stream.iter_lines():
                subscribed.set()  # the stream's first line comes once the subscription exists
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))

    listener = threading.Thread(target=listen)
    listener.start()
    assert subscribed.wait(30), "the events stream never answered"
    with StatsReporter(url, "train-live", token="secret", interval_s=0.1) as reporter:
        for _ in range(8):
            reporter.record(
                samples=32,
                bytes=32_000,
                blocked_s=0.01,
                epoch=0,
                tracker_counts={"duplicates": 0, "missing": 8, "delivered": 256},
            )
            time.sleep(0.1)
    listener.join(30)
    assert reporter.failed_sends == 0 and reporter.sent >= 3

    jobs = {j["job"]: j for j in httpx.get(f"{url}/api/jobs").json()["jobs"]}
    job = jobs["train-live"]
    assert job["samples"] == 256 and job["bytes"] == 256_000
    assert (job["duplicates"], job["missing"], job["epoch"]) == (0, 8, 0)
    detail = httpx.get(f"{url}/api/jobs/train-live?window_s=30&bucket_s=0.5").json()
    assert sum(p["samples_per_s"] * detail["bucket_s"] for p in detail["series"]) > 0
    metrics = httpx.get(f"{url}/metrics").text
    assert 'shardfeed_job_samples_total{job="train-live"} 256.0' in metrics
    assert 'shardfeed_job_missing{job="train-live"} 8.0' in metrics
    assert 'shardfeed_job_duplicates{job="train-live"} 0.0' in metrics
    assert 'shardfeed_job_samples_per_second{job="train-live"}' in metrics
    assert [e["type"] for e in events] == ["job", "job", "job"]
    assert all(e["job"] == "train-live" for e in events)

    with StatsReporter(url, "intruder", token="wrong", interval_s=60.0) as bad:
        bad.record(samples=1)
    assert bad.sent == 0 and bad.failed_sends == 1 and "401" in (bad.last_error or "")
    assert "intruder" not in {j["job"] for j in httpx.get(f"{url}/api/jobs").json()["jobs"]}


def test_results_survive_a_restart_and_a_killed_run_is_interrupted(
    tmp_path: Path, tiny_data: TinyData
) -> None:
    db = tmp_path / "service.db"
    server = LiveServer(db, [tiny_data.root], tmp_path / "serve.log").start()
    try:
        cheap = {
            "shards": str(tiny_data.shards),
            "modes": ["tar-aware"],
            "workers": 0,
            "batch_size": 8,
            "image_size": 32,
        }
        done_id = httpx.post(f"{server.url}/api/benchmarks", json=cheap).json()["id"]
        done = wait_for_status(server.url, done_id, FINAL)
        assert done["status"] == "done", server.output()
        httpx.post(f"{server.url}/api/jobs/before-restart/stats", json={"samples": 9})
        slow_id = httpx.post(f"{server.url}/api/benchmarks", json=slow_body(tiny_data)).json()["id"]
        wait_going(server.url, slow_id)
        children = bench_children(server)
        server.kill()
        wait_gone(children)
    finally:
        server.kill()

    again = LiveServer(db, [tiny_data.root], tmp_path / "serve2.log")
    again.port = server.port
    again.url = server.url
    again.start()
    try:
        kept = httpx.get(f"{again.url}/api/benchmarks/{done_id}").json()
        assert kept["status"] == "done" and kept["result"] == done["result"]
        lost = httpx.get(f"{again.url}/api/benchmarks/{slow_id}").json()
        assert lost["status"] == "interrupted" and "stopped" in lost["error"]
        assert lost["result"] is None
        jobs = httpx.get(f"{again.url}/api/jobs").json()["jobs"]
        assert [j["samples"] for j in jobs if j["job"] == "before-restart"] == [9]
    finally:
        code = again.stop()
    assert code in (0, -15)
    assert "Application shutdown complete" in again.output()


@pytest.mark.parametrize("header", [None, "Bearer nope"])
def test_live_server_refuses_state_changes_without_the_token(
    served_run: ServedRun, tiny_data: TinyData, header: str | None
) -> None:
    headers = {} if header is None else {"Authorization": header}
    url = served_run.server.url
    body = {"shards": str(tiny_data.shards), "modes": ["tar-aware"]}
    assert httpx.post(f"{url}/api/benchmarks", json=body, headers=headers).status_code == 401
    assert (
        httpx.post(f"{url}/api/jobs/x/stats", json={"samples": 1}, headers=headers).status_code
        == 401
    )
    escape = httpx.post(
        f"{url}/api/benchmarks", json={"shards": "../../etc"}, headers=served_run.server.headers()
    )
    assert escape.status_code == 403 and "'..'" in escape.json()["detail"]


def test_the_api_names_the_rank_slowed_on_purpose(
    served_run: ServedRun, slow_rank_job: tuple[str, int]
) -> None:
    job, slow = slow_rank_job
    url = served_run.server.url
    doc = httpx.get(f"{url}/api/jobs/{job}").json()
    loading = doc["loading"]
    assert loading["slowest_rank"] == slow, loading
    rows = {r["rank"]: r for r in loading["ranks"]}
    steps = EPOCHS * 10 // 2  # 40 samples over 4 ranks, batches of 2
    assert sorted(rows) == [0, 1, 2, 3] and doc["samples"] == 4 * EPOCHS * 10
    assert all(rows[r]["steps"] == steps and rows[r]["queue_depth"] is not None for r in rows)
    # The waits are the step clock's, so the fractions are exact: wait / (wait + step).
    slow_share = SLOW_WAIT_S / (SLOW_WAIT_S + STEP_S)
    fast_share = FAST_WAIT_S / (FAST_WAIT_S + STEP_S)
    assert rows[slow]["exposed_fraction"] == pytest.approx(slow_share, rel=1e-4)
    others = [rows[r]["exposed_fraction"] for r in rows if r != slow]
    assert others == pytest.approx([fast_share] * 3, rel=1e-3)
    assert rows[slow]["blocked_p99_s"] == SLOW_WAIT_S
    spread = loading["spread"]
    assert spread["max"] == rows[slow]["exposed_fraction"] and spread["min"] == min(others)
    metrics = httpx.get(f"{url}/metrics").text
    assert f'shardfeed_job_slowest_rank{{job="{job}"}} {float(slow)}' in metrics


def _job_counts(url: str, job: str) -> tuple[dict[str, Any], str]:
    return httpx.get(f"{url}/api/jobs/{job}").json(), httpx.get(f"{url}/metrics").text


def test_an_exact_two_rank_job_shows_no_duplicates_and_none_missing(
    served_run: ServedRun, tiny_data: TinyData
) -> None:
    server = served_run.server
    run_ranks(server.url, server.token or "", "exact-two", tiny_data.shards, world=2)
    doc, metrics = _job_counts(server.url, "exact-two")
    assert len(doc["ranks"]) == 2 and all(r["tracker"] == {} for r in doc["ranks"])
    assert (doc["duplicates"], doc["missing"]) == (0, 0), doc["tracker"]
    assert doc["tracker"]["unique"] == tiny_data.images and doc["tracker"]["reporters"] == 2
    assert 'shardfeed_job_missing{job="exact-two"} 0.0' in metrics
    assert 'shardfeed_job_duplicates{job="exact-two"} 0.0' in metrics


def test_two_processes_claiming_rank_0_of_2_show_the_duplicates(
    served_run: ServedRun, tiny_data: TinyData
) -> None:
    server = served_run.server
    token = server.token or ""
    run_ranks(server.url, token, "rank-0-twice", tiny_data.shards, world=2, claims=[0, 0])
    doc, metrics = _job_counts(server.url, "rank-0-twice")
    half = tiny_data.images // 2
    assert [r["rank"] for r in doc["ranks"]] == [0, 0]  # two processes, both kept
    assert (doc["duplicates"], doc["missing"]) == (half, half), doc["tracker"]
    assert f'shardfeed_job_duplicates{{job="rank-0-twice"}} {float(half)}' in metrics
    assert f'shardfeed_job_missing{{job="rank-0-twice"}} {float(half)}' in metrics


def test_validation_top1_reaches_the_jobs_api_per_epoch(served_run: ServedRun) -> None:
    url = served_run.server.url
    for rank in (1, 0):
        with StatsReporter(url, "train-val", token="secret", interval_s=60.0, rank=rank) as r:
            r.record(samples=10, epoch=1)
            r.record_eval({"epoch": 0, "top1": 0.25, "samples": 599, "correct": 150})
            r.record_eval({"epoch": 1, "top1": 0.5 + rank / 10, "samples": 599})
            assert r.flush()
    detail = httpx.get(f"{url}/api/jobs/train-val").json()
    assert detail["evals"] == [
        {"epoch": 0, "top1": 0.25, "samples": 599},
        {"epoch": 1, "top1": 0.5, "samples": 599},  # the lowest rank's
    ]
