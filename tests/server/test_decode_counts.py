"""Device-decode row counts from training jobs (``StatsReport.decode``): summed over ranks in
``/api/jobs``, with the share not decoded on the device, and exported on ``/metrics``."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families


def _post(client: TestClient, rank: int, decode: dict[str, int]) -> None:
    body = {"rank": rank, "samples": 100, "elapsed_s": 1.0, "decode": decode}
    assert client.post("/api/jobs/gpu-job/stats", json=body).status_code == 202


def test_rows_by_where_they_were_decoded_reach_the_api_and_metrics(client: TestClient) -> None:
    _post(client, 0, {"device": 97, "orientation": 2, "format": 1})
    _post(client, 1, {"device": 100, "error": 0})
    doc = client.get("/api/jobs/gpu-job").json()
    assert doc["decode"] == {"device": 197, "orientation": 2, "format": 1, "error": 0}
    assert doc["decode_fallback_fraction"] == 0.015
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for s in family.samples
    }
    job = ("job", "gpu-job")
    assert values[("shardfeed_job_decoded_rows_total", (job, ("where", "device")))] == 197
    assert values[("shardfeed_job_decoded_rows_total", (job, ("where", "orientation")))] == 2
    assert values[("shardfeed_job_decode_fallback_fraction", (job,))] == 0.015


def test_a_job_without_device_decode_has_no_fraction(client: TestClient) -> None:
    assert client.post("/api/jobs/cpu-job/stats", json={"samples": 5}).status_code == 202
    doc = client.get("/api/jobs/cpu-job").json()
    assert doc["decode"] == {} and doc["decode_fallback_fraction"] is None
    metrics = client.get("/metrics").text
    assert 'shardfeed_job_decode_fallback_fraction{job="cpu-job"}' not in metrics


def test_bad_decode_counts_are_refused(client: TestClient) -> None:
    for decode in ({"device": -1}, {"Bad Key": 1}, {f"k{i}": 1 for i in range(17)}):
        body = {"samples": 1, "decode": decode}
        assert client.post("/api/jobs/bad/stats", json=body).status_code == 422, decode
