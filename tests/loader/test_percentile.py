"""The one percentile definition (``loader.percentile``) and that it is the only one."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from loader.percentile import percentile

ROOT = Path(__file__).resolve().parents[2]
_OTHER_DEFINITIONS = re.compile(
    r"np\.(percentile|quantile|nanpercentile)|statistics\.quantiles|def \w*percentile"
)


def test_linear_interpolation_between_ranks() -> None:
    assert percentile([], 50) is None
    assert percentile([1.0, 3.0], 50) == 2.0
    assert percentile([0.0, 10.0], 99) == pytest.approx(9.9)
    assert percentile([5.0], 0) == percentile([5.0], 100) == 5.0


@pytest.mark.parametrize("q", [-1, 100.5, float("nan")])
def test_q_outside_0_to_100_is_refused(q: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 100"):
        percentile([1.0], q)


def test_a_nan_value_is_refused_not_averaged_in() -> None:
    with pytest.raises(ValueError, match="NaN"):
        percentile([1.0, float("nan")], 50)


@given(st.lists(st.floats(-1e9, 1e9, allow_nan=False), min_size=1), st.floats(0, 100))
def test_it_lies_between_its_neighbours(values: list[float], q: float) -> None:
    got = percentile(values, q)
    assert got is not None and min(values) <= got <= max(values)
    assert got == pytest.approx(float(np.percentile(values, q)))


def test_no_other_module_defines_a_percentile() -> None:
    others = [
        f"{path.relative_to(ROOT)}: {match.group(0)}"
        for folder in ("loader", "server")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path != ROOT / "loader" / "percentile.py"
        for match in _OTHER_DEFINITIONS.finditer(path.read_text(encoding="utf-8"))
    ]
    assert others == []
