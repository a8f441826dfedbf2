"""What a web page in the user's browser can do to a loopback service (docs/architecture.md,
section "Service"): nothing through DNS rebinding, nothing with a non-JSON body, and the API
docs load without any CDN."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.app import create_app
from tests.server.helpers import TestClient, TinyData, make_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def client(tmp_path: Path, tiny_data: TinyData) -> Iterator[TestClient]:
    settings = make_settings(
        tmp_path, [tiny_data.root], allowed_hosts=["testserver", "shardfeed.lan"]
    )
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.mark.parametrize("host", ["rebind.example", "rebind.example:8000", "127.0.0.1.nip.io"])
def test_a_foreign_host_header_is_refused(client: TestClient, host: str) -> None:
    for method, path in (("GET", "/api/info"), ("GET", "/"), ("POST", "/api/jobs/j/stats")):
        answer = client.request(method, path, headers={"Host": host}, json={"samples": 1})
        assert answer.status_code == 400, (method, path, answer.status_code)
    assert client.get("/api/jobs").json()["jobs"] == []


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost", "localhost:1234", "shardfeed.lan"])
def test_the_bound_host_localhost_and_configured_names_pass(client: TestClient, host: str) -> None:
    assert client.get("/api/info", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_json_routes_refuse_bodies_that_are_not_declared_json(
    client: TestClient, tiny_data: TinyData, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    body = b'{"samples": 5}'
    answer = client.post("/api/jobs/j/stats", content=body, headers=headers)
    assert answer.status_code == 422, answer.text
    bench = f'{{"shards": "{tiny_data.shards}", "modes": ["tar-aware"]}}'.encode()
    assert client.post("/api/benchmarks", content=bench, headers=headers).status_code == 422
    assert client.get("/api/jobs").json()["jobs"] == []
    assert client.get("/api/benchmarks").json()["runs"] == []


def test_the_fastapi_floor_refuses_json_without_a_json_content_type() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    [fastapi] = [d for d in deps if d.startswith("fastapi")]
    match = re.search(r">=\s*0\.(\d+)", fastapi)
    assert match is not None and int(match.group(1)) >= 132, fastapi


def test_the_api_docs_work_offline(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower() and "https://" not in page.text
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
    for asset in assets:
        assert asset.startswith("/"), asset
        assert client.get(asset).status_code == 200, asset
    assert client.get("/redoc").status_code == 404
