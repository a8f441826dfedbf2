"""The one JSON policy (``loader.jsonsafe``) and the places that must use it."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from loader.jsonsafe import dumps, json_safe


def test_non_finite_numbers_become_null_at_any_depth() -> None:
    doc = {"a": math.nan, "b": [1.0, math.inf, (-math.inf, 2)], "c": {"d": np.float32("nan")}}
    assert json_safe(doc) == {"a": None, "b": [1.0, None, [None, 2]], "c": {"d": None}}


def test_numpy_scalars_are_unwrapped_and_keys_are_strings() -> None:
    out = json_safe({1: np.int64(7), "f": np.float64(0.5), "b": np.bool_(True)})
    assert out == {"1": 7, "f": 0.5, "b": True}
    assert type(out["1"]) is int and type(out["f"]) is float and type(out["b"]) is bool


def test_unknown_objects_are_their_text() -> None:
    assert json_safe({"x": object}) == {"x": str(object)}


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner),
        max_leaves=20,
    )
)
def test_dumps_always_writes_standard_json(value: object) -> None:
    text = dumps(value)
    json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard constant {name}"))


ROOT = Path(__file__).resolve().parents[2]
PRODUCERS = ["server", "loader/bench", "loader/train", "loader/reporter.py"]
"""Where the JSON users see is made: API bodies, events, the store, bench and train output,
the reporter's reports. (``shards`` cannot import the loader; its JSON holds no floats.)"""


# ``shardfeed doctor`` runs before torch loads (``loader`` imports torch, and a broken torch
# must not stop the command that diagnoses it); its report holds no floats.
EXEMPT = {"server/doctor.py"}


def _json_writes(path: Path) -> list[str]:
    if str(path.relative_to(ROOT)) in EXEMPT:
        return []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("dump", "dumps")
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "json"
        ):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_no_producer_writes_json_around_the_one_policy() -> None:
    files = [
        f
        for place in PRODUCERS
        for f in ([ROOT / place] if place.endswith(".py") else sorted((ROOT / place).rglob("*.py")))
    ]
    assert len(files) > 20
    assert [hit for f in files for hit in _json_writes(f)] == []


def test_the_store_keeps_nan_as_null() -> None:
    from server.store import Store

    store = Store(":memory:")
    run = store.create_run({"x": math.nan})
    store.claim_run(run.id)
    store.update_progress(run.id, 0.5, {"rate": math.inf})
    done = store.finish_run(run.id, "done", result={"modes": {"m": {"ratio": math.nan}}})
    assert done is not None and done.config == {"x": None}
    assert done.last_event == {"rate": None} and done.result == {"modes": {"m": {"ratio": None}}}


def test_api_bodies_hold_null_where_a_figure_is_nan(tmp_path: Path) -> None:
    from server.app import create_app
    from server.settings import Settings
    from tests.server.helpers import TestClient

    settings = Settings(db=tmp_path / "s.db", allowed_hosts=["testserver"])
    with TestClient(create_app(settings)) as client:
        store = client.app.state.service.store  # type: ignore[attr-defined]
        run = store.create_run({"folder": None, "shards": "x", "modes": ["tar-aware"]})
        store.claim_run(run.id)
        store.finish_run(run.id, "done", result={"limit": {"samples_per_s": math.nan}})
        answer = client.get(f"/api/benchmarks/{run.id}")
    assert answer.status_code == 200
    body = json.loads(answer.text, parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert body["result"] == {"limit": {"samples_per_s": None}}


def test_train_reports_have_no_nan_loss() -> None:
    from loader.train.options import EpochReport, format_loss

    report = EpochReport(0, 0, 1, 0, 0, 0.0, 0.0, None, 0.0, 0, 0, 0)
    assert format_loss(report.loss) == "-" and "NaN" not in dumps(report.__dict__)
