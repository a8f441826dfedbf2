"""The bench never shows an impossible figure: the noise rule, and how the JSON and the CLI
table show it."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loader.bench.measure import combine_rounds, summarize_epochs
from loader.bench.noise import LIMIT_SPREAD, RATIO_CEILING, judge, limit_spread
from loader.bench.report import format_table


def test_a_ratio_within_the_ceiling_against_steady_limits_stands() -> None:
    assert judge(0.8, (100.0, 110.0)) == {
        "noisy": False,
        "limit_spread": pytest.approx(0.1),
        "noise": None,
    }


def test_a_ratio_above_the_ceiling_is_noise() -> None:
    verdict = judge(1.89, (100.0, 100.0))
    assert verdict["noisy"] and "ratio 1.89 above 1.05" in verdict["noise"]


def test_limit_runs_far_apart_are_noise_with_the_spread() -> None:
    verdict = judge(0.5, (100.0, 132.0))
    assert verdict["noisy"] and verdict["limit_spread"] == pytest.approx(0.32)
    assert "differ by 32%" in verdict["noise"]


def test_both_reasons_are_named_and_a_dead_limit_run_is_noise() -> None:
    assert judge(2.0, (100.0, 200.0))["noise"].count(";") == 1
    assert judge(0.5, (0.0, 100.0)) == {
        "noisy": True,
        "limit_spread": None,
        "noise": "a limit run read nothing",
    }
    assert limit_spread(()) is None and not judge(None, ())["noisy"]


@given(
    st.floats(0, 3, allow_nan=False),
    st.floats(1, 1e6, allow_nan=False),
    st.floats(1, 1e6, allow_nan=False),
)
def test_the_rule_is_exactly_the_two_thresholds(ratio: float, a: float, b: float) -> None:
    spread = (max(a, b) - min(a, b)) / min(a, b)
    verdict = judge(ratio, (a, b))
    assert verdict["noisy"] == (ratio > RATIO_CEILING or spread > LIMIT_SPREAD)
    assert verdict["limit_spread"] == pytest.approx(spread)


def _epoch(rate: float) -> dict[str, Any]:
    return {
        "epoch": 0, "samples": 100, "unique": 100, "duplicates": 0, "missing": 0, "padded": 0,
        "bytes": 1000, "seconds": 1.0, "steady_samples": rate, "steady_bytes": 10 * rate,
        "steady_s": 1.0, "samples_per_s": rate, "mb_per_s": 0.0, "blocked_s": 0.0,
        "main_cpu_s": 0.1, "first_batch_s": 0.1, "p50_batch_ms": 1.0, "p99_batch_ms": 2.0,
        "_latencies": [1.0],
    }  # fmt: skip


def test_the_mode_shows_the_limit_its_ratio_used_and_its_noise() -> None:
    quiet = combine_rounds([summarize_epochs([_epoch(50.0)], (100.0, 102.0))])
    assert quiet["limit_samples_per_s"] == 101.0
    assert quiet["limit_runs_samples_per_s"] == [100.0, 102.0]
    assert quiet["ratio_to_limit"] == pytest.approx(50 / 101) and not quiet["noisy"]
    busy = combine_rounds(
        [
            summarize_epochs([_epoch(90.0)], (100.0, 100.0)),
            summarize_epochs([_epoch(915.6)], (480.0, 480.0)),
            summarize_epochs([_epoch(80.0)], (100.0, 140.0)),
        ]
    )
    # The lower median ratio is round 0's (0.9 of 100): its limit is the one shown.
    assert busy["ratio_to_limit"] == pytest.approx(0.9) and busy["limit_samples_per_s"] == 100.0
    assert busy["noisy"] and busy["limit_spread"] == pytest.approx(0.4)
    assert "round 1: ratio 1.91" in busy["noise"] and "round 2:" in busy["noise"]
    assert [r["noisy"] for r in busy["rounds"]] == [False, True, True]


def _doc(**mode: Any) -> dict[str, Any]:
    figures = {"status": "ok", "samples": 100, "samples_per_s": 915.6, "ratio_to_limit": 1.89}
    return {
        "machine": {"cores": 2, "cpu": "test"},
        "config": {"workers": 2, "batch_size": 8, "epochs": 1, "repeat": 1, "decode": True,
                   "image_size": 32, "latency_ms": 0.0, "http": False},
        "limit": {"processes": 2, "decode": True, "samples_per_s": 720.5, "runs": [700, 741]},
        "modes": {"tar-aware": {**figures, **mode}},
    }  # fmt: skip


def test_the_table_shows_each_modes_limit_and_marks_noise() -> None:
    table = format_table(
        _doc(
            limit_samples_per_s=484.4,
            noisy=True,
            limit_spread=0.32,
            noise="ratio 1.89 above 1.05: the limit ran busier",
        )
    )
    header, _, row = table.splitlines()[:3]
    assert "limit/s" in header and "noise" in header
    assert "484" in row and "noisy ±32%" in row
    assert "tar-aware: noisy: ratio 1.89 above 1.05" in table
    assert "each mode's ratio is against the limit runs just before and after it" in table
    clean = format_table(_doc(limit_samples_per_s=900.0, noisy=False, limit_spread=0.02))
    assert "noisy ±" not in clean.splitlines()[2] and "tar-aware: noisy" not in clean
