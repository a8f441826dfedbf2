"""The one JSON policy (``loader.jsonsafe``) and the places that must use it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from loader import jsonsafe
from loader.bench import engine
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


@pytest.mark.parametrize(
    "module",
    ["loader.bench.engine", "loader.reporter", "server._bench_child", "server.app"],
)
def test_results_events_and_errors_use_the_one_policy(module: str) -> None:
    import importlib

    used = importlib.import_module(module)
    assert jsonsafe.json_safe in vars(used).values() or jsonsafe.dumps in vars(used).values()
    assert engine.json_safe is jsonsafe.json_safe
