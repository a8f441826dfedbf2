"""The README's API example runs as written against a real ``shardfeed serve``, and the API's
``decode`` takes the values of ``shardfeed bench --decode``."""

from __future__ import annotations

import json
import subprocess

import pytest

from loader.bench.modes import DECODES
from server.models import BenchmarkRequest, RunOut
from server.runs import FINISHED, STATUSES
from tests.helpers import recipe
from tests.server.helpers import ServedRun, TestClient, TinyData, wait_for_status

README_URL = "http://127.0.0.1:8000"
README_ROOT = "/data"


def json_documents(text: str) -> list[dict[str, object]]:
    """The JSON documents curl printed one after another (curl adds no newline)."""
    decoder, docs, at = json.JSONDecoder(), [], 0
    while at < len(text.strip()):
        doc, at = decoder.raw_decode(text, at)
        docs.append(doc)
        while at < len(text) and text[at].isspace():
            at += 1
    return docs


def test_the_readme_curl_starts_a_benchmark_that_finishes(
    served_run: ServedRun, tiny_data: TinyData
) -> None:
    server = served_run.server
    script = recipe("api-benchmark")
    assert README_URL in script and f"{README_ROOT}/shards" in script
    # Only where the service listens and where its data lies differ from the README.
    script = script.replace(README_URL, server.url).replace(README_ROOT, str(tiny_data.root))
    env = {"PATH": "/usr/bin:/bin", "SHARDFEED_TOKEN": server.token or ""}
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    created, listing = json_documents(proc.stdout)
    assert created["status"] == "queued", created
    assert listing["runs"][0]["id"] == created["id"]
    run = wait_for_status(server.url, created["id"], {"done", "failed", "cancelled"})
    assert run["status"] == "done", run
    assert run["config"]["decode"] is True
    assert run["result"]["modes"]["tar-aware"]["duplicates"] == 0


@pytest.mark.parametrize(
    ("decode", "decodes"), [("opencv", True), ("none", False), (True, True), (False, False)]
)
def test_decode_takes_the_cli_values_and_the_old_booleans(
    client: TestClient, tiny_data: TinyData, decode: object, decodes: bool
) -> None:
    body = {"shards": str(tiny_data.shards), "modes": ["tar-aware"], "decode": decode}
    answer = client.post("/api/benchmarks", json=body)
    assert answer.status_code == 202, answer.text
    run = client.get(f"/api/benchmarks/{answer.json()['id']}").json()
    assert run["config"]["decode"] is decodes


@pytest.mark.parametrize(
    ("decode", "hint"), [("device", "decodecompare"), ("gpu", "opencv or none"), (1, "opencv")]
)
def test_other_decode_values_are_422_naming_decode(
    client: TestClient, tiny_data: TinyData, decode: object, hint: str
) -> None:
    body = {"shards": str(tiny_data.shards), "modes": ["tar-aware"], "decode": decode}
    answer = client.post("/api/benchmarks", json=body)
    assert answer.status_code == 422
    (error,) = answer.json()["detail"]
    assert error["loc"] == ["body", "decode"] and hint in error["msg"]


def test_the_api_lists_the_same_decodes_as_the_cli() -> None:
    schema = BenchmarkRequest.model_json_schema()["properties"]["decode"]
    assert tuple(schema["enum"]) == DECODES


def test_info_gives_the_one_list_of_statuses_and_decodes(client: TestClient) -> None:
    info = client.get("/api/info").json()
    assert tuple(info["statuses"]) == STATUSES and tuple(info["decodes"]) == DECODES
    assert set(info["finished_statuses"]) == FINISHED
    enum = RunOut.model_json_schema()["properties"]["status"]["enum"]
    assert tuple(enum) == STATUSES
