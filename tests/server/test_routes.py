"""API behaviour through FastAPI's TestClient (real app, real store, real runner thread)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.app import create_app
from server.store import SCHEMA_VERSION, Store
from tests.server.helpers import TestClient, TinyData, make_settings

DONE_RESULT = {
    "limit": {"samples_per_s": 100.0},
    "modes": {
        "tar-naive": {
            "status": "ok",
            "samples_per_s": 50.0,
            "ratio_to_limit": 0.5,
            "duplicates": 40,
            "missing": 0,
            "padded": 0,
            "samples": 80,
        },
    },
}


def open_client(settings: Any) -> TestClient:
    return TestClient(create_app(settings))


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    root = (tmp_path / "root").resolve()
    outside = (tmp_path / "outside").resolve()
    root.mkdir()
    outside.mkdir()
    (outside / "manifest.json").write_text(json.dumps({"shardlist": []}))
    (root / "escape").symlink_to(outside)
    return root, outside


@pytest.fixture
def guarded(tmp_path: Path, tiny_data: TinyData) -> Iterator[TestClient]:
    settings = make_settings(
        tmp_path, [tiny_data.root], token="s3cret", max_workers=4, max_epochs=3, max_body_bytes=2048
    )
    with open_client(settings) as c:
        yield c


def test_health_info_docs_and_openapi(client: TestClient, tiny_data: TinyData) -> None:
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["schema_version"] == SCHEMA_VERSION
    info = client.get("/api/info").json()
    assert info["data_roots"] == [str(tiny_data.root)] and info["token_required"] is False
    assert "tar-aware" in info["modes"]
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/api/benchmarks",
        "/api/benchmarks/{run_id}",
        "/api/jobs/{job}/stats",
        "/api/jobs",
        "/api/jobs/{job}",
        "/api/events",
        "/metrics",
        "/healthz",
    ):
        assert path in paths


def test_dashboard_is_served_without_any_cdn(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/jobs.js", "/static/style.css"):
        assert asset in page.text
        body = client.get(asset)
        assert body.status_code == 200
        assert "http://" not in body.text.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in body.text
    assert "https://" not in page.text


@pytest.mark.parametrize(
    ("shards", "reason"),
    [
        ("../outside", "climbs out of the data roots with '..'"),
        ("escape", "symlink that points outside"),
        ("OUTSIDE", "is outside the data roots"),
        ("http://127.0.0.1:1/manifest.json", "is a URL"),
    ],
)
def test_path_escapes_get_403_with_the_reason(
    tmp_path: Path, roots: tuple[Path, Path], shards: str, reason: str
) -> None:
    root, outside = roots
    shards = str(outside) if shards == "OUTSIDE" else shards
    with open_client(make_settings(tmp_path, [root])) as c:
        answer = c.post("/api/benchmarks", json={"shards": shards, "modes": ["tar-aware"]})
        assert answer.status_code == 403
        assert reason in answer.json()["detail"]
        folder = c.post("/api/benchmarks", json={"shards": "x", "folder": "../outside"})
        assert folder.status_code == 403 and folder.json()["detail"].startswith("folder:")
        assert c.get("/api/benchmarks").json()["runs"] == []


def test_no_data_roots_refuses_every_benchmark(tmp_path: Path, tiny_data: TinyData) -> None:
    with open_client(make_settings(tmp_path, [])) as c:
        answer = c.post("/api/benchmarks", json={"shards": str(tiny_data.shards)})
        assert answer.status_code == 403 and "--data-root" in answer.json()["detail"]


def loc(answer: Any) -> list[str]:
    return [".".join(str(p) for p in d["loc"]) for d in answer.json()["detail"]]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"workers": 5}, "body.workers"),
        ({"workers": 65}, "body.workers"),
        ({"workers": -1}, "body.workers"),
        ({"epochs": 4}, "body.epochs"),
        ({"epochs": 0}, "body.epochs"),
        ({"batch_size": 0}, "body.batch_size"),
        ({"image_size": 4}, "body.image_size"),
        ({"latency_ms": -1}, "body.latency_ms"),
        ({"modes": ["tar-aware", "tar-aware"]}, "body.modes"),
        ({"modes": ["fast"]}, "body.modes.0"),
        ({"modes": []}, "body.modes"),
        ({"repeat": 0}, "body.repeat"),
        ({"turbo": True}, "body.turbo"),
        ({"shards": ""}, "body.shards"),
        ({"folder": "src/absent"}, "body.folder"),
        ({"shards": "src"}, "body.shards"),
    ],
)
def test_bad_benchmark_bodies_get_422_naming_the_field(
    guarded: TestClient, change: dict[str, Any], field: str
) -> None:
    body = {"shards": "shards", "modes": ["tar-aware"], **change}
    answer = guarded.post("/api/benchmarks", json=body, headers={"Authorization": "Bearer s3cret"})
    assert answer.status_code == 422, answer.text
    assert field in loc(answer)


def test_non_finite_latency_is_422(guarded: TestClient) -> None:
    answer = guarded.post(
        "/api/benchmarks",
        content=b'{"shards": "shards", "latency_ms": 1e999}',
        headers={"Authorization": "Bearer s3cret", "Content-Type": "application/json"},
    )
    assert answer.status_code == 422 and "body.latency_ms" in loc(answer)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/benchmarks", {"shards": "shards"}),
        ("DELETE", "/api/benchmarks/abc123", None),
        ("POST", "/api/jobs/j/stats", {"samples": 1}),
    ],
)
@pytest.mark.parametrize(
    "auth", [None, "Bearer wrong", "Basic czNjcmV0", "Bearer s3cret2", "s3cret"]
)
def test_state_changes_need_the_token(
    guarded: TestClient, method: str, path: str, body: Any, auth: str | None
) -> None:
    headers = {} if auth is None else {"Authorization": auth}
    answer = guarded.request(method, path, json=body, headers=headers)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert guarded.get("/api/jobs").json() == {"jobs": []}


def test_reads_need_no_token_and_the_right_token_works(guarded: TestClient) -> None:
    for path in ("/api/benchmarks", "/api/jobs", "/metrics", "/healthz", "/"):
        assert guarded.get(path).status_code == 200
    answer = guarded.post(
        "/api/jobs/j/stats", json={"samples": 1}, headers={"Authorization": "Bearer s3cret"}
    )
    assert answer.status_code == 202
    assert (
        guarded.delete(
            "/api/benchmarks/abc123", headers={"Authorization": "Bearer s3cret"}
        ).status_code
        == 404
    )


def test_oversized_bodies_get_413(guarded: TestClient) -> None:
    big = {"samples": 1, "padding": "x" * 4096}
    headers = {"Authorization": "Bearer s3cret"}
    answer = guarded.post("/api/jobs/j/stats", json=big, headers=headers)
    assert answer.status_code == 413 and "max_body_bytes" in answer.json()["detail"]

    def chunks() -> Iterator[bytes]:
        yield b'{"samples": 1, "padding": "'
        for _ in range(10):
            yield b"x" * 500
        yield b'"}'

    streamed = guarded.post(
        "/api/jobs/j/stats",
        content=chunks(),
        headers={**headers, "Content-Type": "application/json"},
    )
    assert streamed.status_code == 413
    assert guarded.get("/api/jobs").json() == {"jobs": []}
    text = guarded.get("/metrics").text
    assert 'shardfeed_requests_rejected_total{reason="body_size"} 2.0' in text


def test_unknown_and_malformed_run_ids(client: TestClient) -> None:
    assert client.get("/api/benchmarks/0123456789ab").status_code == 404
    assert client.delete("/api/benchmarks/0123456789ab").status_code == 404
    assert client.get("/api/benchmarks/..%2F..%2Fetc").status_code in (404, 422)
    assert client.get("/api/benchmarks/NOT-HEX").status_code == 422


def test_stored_results_are_listed_and_returned(tmp_path: Path, tiny_data: TinyData) -> None:
    settings = make_settings(tmp_path, [tiny_data.root])
    store = Store(settings.db)
    run = store.create_run({"shards": str(tiny_data.shards), "modes": ["tar-naive"]})
    store.claim_run(run.id)
    store.finish_run(run.id, "done", result=DONE_RESULT)
    store.close()
    with open_client(settings) as c:
        doc = c.get(f"/api/benchmarks/{run.id}").json()
        assert doc["status"] == "done" and doc["progress"] == 1.0
        assert doc["result"] == DONE_RESULT and doc["error"] is None
        listing = c.get("/api/benchmarks").json()
        assert listing["counts"]["done"] == 1
        summary = listing["runs"][0]
        assert "result" not in summary
        assert summary["modes"]["tar-naive"]["duplicates"] == 40
        assert c.get("/api/benchmarks?status=queued").json()["runs"] == []
        assert c.get("/api/benchmarks?status=bogus").status_code == 422
        cancel = c.delete(f"/api/benchmarks/{run.id}")
        assert cancel.status_code == 409 and "already ended" in cancel.json()["detail"]
        metrics = c.get("/metrics").text
        assert f'shardfeed_benchmark_duplicates{{mode="tar-naive",run="{run.id}"}} 40.0' in metrics


def test_a_run_whose_inputs_vanished_fails_with_the_reason(
    tmp_path: Path, tiny_data: TinyData
) -> None:
    settings = make_settings(tmp_path, [tiny_data.root])
    with open_client(settings) as c:
        store = c.app.state.service.store  # type: ignore[attr-defined]
        run = store.create_run({"shards": str(tmp_path / "elsewhere"), "modes": ["tar-aware"]})
        c.app.state.service.runner.wake()  # type: ignore[attr-defined]
        deadline = time.monotonic() + 10
        while c.get(f"/api/benchmarks/{run.id}").json()["status"] == "queued":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        doc = c.get(f"/api/benchmarks/{run.id}").json()
        assert doc["status"] == "failed" and "outside the data roots" in doc["error"]


def test_job_stats_round_trip(client: TestClient) -> None:
    for i in range(1, 4):
        for rank in (0, 1):
            body = {
                "rank": rank,
                "samples": 100 * i,
                "bytes": 1000 * i,
                "blocked_s": 0.1 * i,
                "elapsed_s": float(i),
                "epoch": 0,
                "tracker": {"duplicates": rank, "missing": 10 - i},
                "resumed_at_step": 40 if rank else None,
            }
            answer = client.post("/api/jobs/train.1/stats", json=body)
            assert answer.status_code == 202, answer.text
    jobs = client.get("/api/jobs").json()["jobs"]
    assert [j["job"] for j in jobs] == ["train.1"]
    assert jobs[0]["samples"] == 600 and jobs[0]["samples_per_s"] == 200.0
    assert (jobs[0]["duplicates"], jobs[0]["missing"]) == (None, None)  # no id bitmaps sent
    assert jobs[0]["resumed_at_step"] == 40
    detail = client.get("/api/jobs/train.1?window_s=60&bucket_s=1").json()
    assert [r["rank"] for r in detail["ranks"]] == [0, 1]
    assert detail["bucket_s"] == 1 and len(detail["series"]) >= 59
    assert all(
        set(p) == {"t", "samples_per_s", "mb_per_s", "blocked_s_per_s"} for p in detail["series"]
    )
    assert client.get("/api/jobs/nobody").status_code == 404


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/jobs/-bad/stats", {"samples": 1}),
        ("/api/jobs/a%20b/stats", {"samples": 1}),
        ("/api/jobs/" + "x" * 200 + "/stats", {"samples": 1}),
        ("/api/jobs/j/stats", {"samples": -1}),
        ("/api/jobs/j/stats", {"samples": 2**63}),
        ("/api/jobs/j/stats", {}),
        ("/api/jobs/j/stats", {"samples": 1, "rank": -1}),
        ("/api/jobs/j/stats", {"samples": 1, "tracker": {"Bad Key": 1}}),
        ("/api/jobs/j/stats", {"samples": 1, "tracker": {"missing": -2}}),
        ("/api/jobs/j/stats", {"samples": 1, "tracker": {f"k{i}": 1 for i in range(40)}}),
    ],
)
def test_bad_stats_get_422(client: TestClient, path: str, body: dict[str, Any]) -> None:
    assert client.post(path, json=body).status_code == 422
    assert client.get("/api/jobs").json() == {"jobs": []}


def test_events_stream_carries_job_reports(client: TestClient) -> None:
    service = client.app.state.service  # type: ignore[attr-defined]

    def publish_later() -> None:
        while service.bus.subscribers == 0:
            time.sleep(0.01)
        client.post("/api/jobs/live/stats", json={"samples": 5})

    poster = threading.Thread(target=publish_later)
    poster.start()
    answer = client.get("/api/events?limit=1")
    poster.join(10)
    assert answer.headers["content-type"].startswith("text/event-stream")
    frames = [f for f in answer.text.split("\n\n") if f.startswith("id:")]
    assert len(frames) == 1
    lines = dict(line.split(": ", 1) for line in frames[0].splitlines())
    assert lines["event"] == "job"
    assert json.loads(lines["data"])["job"] == "live"
