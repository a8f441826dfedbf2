"""schemathesis against the app's own /openapi.json: no generated request gets a 5xx.

Positive and negative cases for every operation, a few examples each (kept small for CI
time); operations without any input have no negative cases. Driven through schemathesis'
strategies with plain hypothesis, because its pytest plugin (``from_fixture``) breaks on
pytest 9. The event stream is left out: without
``limit`` it is endless by design.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from server.app import create_app
from tests.server.helpers import TestClient, TinyData, make_settings

EXAMPLES = 25


@pytest.fixture(scope="module")
def operations(tmp_path_factory: pytest.TempPathFactory, tiny_data: TinyData) -> Iterator[Any]:
    home: Path = tmp_path_factory.mktemp("fuzz")
    app = create_app(make_settings(home, [tiny_data.root], max_queued=1000))
    with TestClient(app):
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        found = {}
        for result in schema.get_all_operations():
            operation = cast(Any, result).ok()
            found[f"{operation.method.upper()} {operation.path}"] = operation
        yield found


EXPECTED = [
    "DELETE /api/benchmarks/{run_id}",
    "GET /api/benchmarks",
    "GET /api/benchmarks/{run_id}",
    "GET /api/info",
    "GET /api/jobs",
    "GET /api/jobs/{job}",
    "GET /healthz",
    "GET /metrics",
    "POST /api/benchmarks",
    "POST /api/jobs/{job}/stats",
]


def test_the_schema_lists_every_operation(operations: dict[str, Any]) -> None:
    assert sorted(operations) == sorted([*EXPECTED, "GET /api/events"])


NO_INPUT = {"GET /api/info", "GET /api/jobs", "GET /healthz", "GET /metrics"}
CASES = [(name, GenerationMode.POSITIVE) for name in EXPECTED] + [
    (name, GenerationMode.NEGATIVE) for name in EXPECTED if name not in NO_INPUT
]


@pytest.mark.parametrize(("name", "mode"), CASES, ids=[f"{n}-{m.value}" for n, m in CASES])
def test_no_request_gets_a_server_error(
    operations: dict[str, Any], name: str, mode: GenerationMode
) -> None:
    seen: list[int] = []

    @given(case=operations[name].as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def check(case: Any) -> None:
        response = case.call()
        seen.append(response.status_code)
        assert response.status_code < 500, (case.method, case.formatted_path, response.text[:500])

    check()
    assert seen
    if mode is GenerationMode.NEGATIVE:
        assert any(400 <= code < 500 for code in seen), seen
